/** Patterns the schemas use, with the words a client reads when one fails. */
export const patternMessages = new Map<string, string>()

/** Registers a schema pattern together with its human-readable failure. */
export function pattern (regex: string, message: string): string {
  patternMessages.set(regex, message)
  return regex
}
