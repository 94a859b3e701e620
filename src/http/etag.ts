// Entity tags for users (RFC 9110 section 8.8.3): a strong tag per version.

/** The ETag of a user at `version`. */
export function etagOf (version: number): string {
  return `"${version}"`
}

/** An If-Match or If-None-Match value: any current representation, or some tags. */
export type TagCondition = { any: true } | { any: false, tags: Array<{ weak: boolean, opaque: string }> }

/** A list of entity tags, or `*` (what the headers' schema accepts). */
export const ENTITY_TAG_LIST_PATTERN = '^\\s*(\\*|(W/)?"[\\x21\\x23-\\x7e]*"(\\s*,\\s*(W/)?"[\\x21\\x23-\\x7e]*")*)\\s*$'

export function parseTagCondition (header: string): TagCondition {
  if (header.trim() === '*') return { any: true }
  const tags = [...header.matchAll(/(W\/)?"([^"]*)"/g)].map((match) => ({ weak: match[1] !== undefined, opaque: match[2] ?? '' }))
  return { any: false, tags }
}

/**
 * The versions an If-Match header accepts, by strong comparison (a weak tag
 * never matches), or null for no header or `*`: any version of an existing user.
 */
export function versionsAllowedBy (ifMatch: string | undefined): number[] | null {
  if (ifMatch === undefined) return null
  const condition = parseTagCondition(ifMatch)
  if (condition.any) return null
  return condition.tags
    .filter((tag) => !tag.weak && /^[1-9]\d{0,15}$/.test(tag.opaque))
    .map((tag) => Number(tag.opaque))
}

/** If-None-Match by weak comparison: does it name the current version? */
export function noneMatchHits (condition: TagCondition, version: number): boolean {
  return condition.any || condition.tags.some((tag) => tag.opaque === String(version))
}
