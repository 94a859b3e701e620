// Where a route's reads go: `fastify.readers.read(read, confirmOnPrimary)`.
// Without replicas, straight to the primary's reads; with them
// (src/db/replicas.ts), to a replica within the lag bound, and to the
// primary whenever the replica's answer may be older than what the client
// has seen. The rules below are that "may be older".
import { parseTagCondition } from '../http/etag.js'
import type { QueryRunner } from './read-pipeline.js'

export type ReadSource = 'primary' | 'replica'

export interface Readers {
  /**
   * Runs `read` on a replica whose lag is within the bound, else on the
   * primary; and again on the primary when `confirmOnPrimary` says the
   * replica's result may be behind.
   */
  read: <T>(read: (db: QueryRunner) => Promise<T>, confirmOnPrimary: (result: T) => boolean) => Promise<T>
  /** With replicas: reads so far by where they were answered from. */
  readonly readsBySource?: Record<ReadSource, number>
  /** With replicas: each one's lag at its last check (undefined: not usable). */
  lags?: () => Array<{ replica: string, lagMs: number | undefined }>
  end?: () => Promise<void>
}

/** No replicas: every read on the primary, at the cost of one call. */
export function primaryReaders (primary: QueryRunner): Readers {
  return { read: async (read) => await read(primary) }
}

/**
 * Nothing found (a 404, an empty page): a replica may not have it yet, so
 * a user is readable the moment its create was answered.
 */
export function missingOrEmpty (result: unknown): boolean {
  return result === undefined || (Array.isArray(result) && result.length === 0)
}

/**
 * A user missing, or older than a version the client names in
 * If-None-Match (it has seen that one, so a replica behind it would send
 * it back in time).
 */
export function missingOrOlderThanSeen (ifNoneMatch: string | undefined): (user: { version: number } | undefined) => boolean {
  if (ifNoneMatch === undefined) return missingOrEmpty
  const condition = parseTagCondition(ifNoneMatch)
  const seen = condition.any ? 0 : Math.max(0, ...condition.tags.map((tag) => /^\d{1,15}$/.test(tag.opaque) ? Number(tag.opaque) : 0))
  return (user) => user === undefined || user.version < seen
}
