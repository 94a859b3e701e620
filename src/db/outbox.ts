// The SQL of the event outbox (migrations/5_create-event-outbox.sql) that
// the relay reads, marks and prunes. Writes record their events in their
// own statements (src/db/users.ts). Nothing here talks to the broker
// (outbox-relay.ts does).
import type { QueryRunner } from './read-pipeline.js'

export type UserEventType = 'user.created' | 'user.updated' | 'user.deleted'

/** A write that records its event: what the request adds to it. */
export interface EventContext {
  /** W3C trace context of the request, carried by the event when present. */
  traceparent: string | null
}

/** An event the relay has claimed, as the outbox holds it. */
export interface OutboxEvent {
  id: number
  eventId: string
  type: UserEventType
  userId: number
  userVersion: number
  data: Record<string, unknown>
  traceparent: string | null
  /** When the change committed, ISO-8601 UTC. */
  time: string
}

const SQL = {
  // Unsent events in order, skipping those another relay holds, and per
  // user only the oldest unsent one: a later event of a user whose earlier
  // one is unsent (or held by another relay) waits for it, so each user's
  // events go out in version order whichever replica sends them.
  claim: `SELECT o.id, o.event_id AS "eventId", o.type, o.user_id AS "userId", o.user_version AS "userVersion",
      o.data, o.traceparent,
      to_char(o.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS time
    FROM event_outbox o
    WHERE o.sent_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM event_outbox earlier
        WHERE earlier.user_id = o.user_id AND earlier.sent_at IS NULL AND earlier.id < o.id)
    ORDER BY o.id
    LIMIT $1
    FOR UPDATE OF o SKIP LOCKED`,
  markSent: 'UPDATE event_outbox SET sent_at = now() WHERE id = ANY ($1::bigint[])',
  prune: `DELETE FROM event_outbox WHERE id IN (
    SELECT id FROM event_outbox WHERE sent_at < now() - make_interval(secs => $1)
    ORDER BY sent_at LIMIT $2 FOR UPDATE SKIP LOCKED)`,
  backlog: `SELECT count(*)::int AS events,
      coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS "oldestAgeSeconds"
    FROM event_outbox WHERE sent_at IS NULL`
} as const

/** Up to `limit` events to publish, locked by this transaction until it ends. */
export async function claimEvents (db: QueryRunner, limit: number): Promise<OutboxEvent[]> {
  const { rows } = await db.query<OutboxEvent>({ name: 'outbox.claim', text: SQL.claim, values: [limit] })
  return rows
}

export async function markSent (db: QueryRunner, ids: number[]): Promise<void> {
  await db.query({ name: 'outbox.mark-sent', text: SQL.markSent, values: [ids] })
}

/** Deletes up to `limit` events sent more than `retentionSeconds` ago; returns how many. */
export async function pruneSent (db: QueryRunner, retentionSeconds: number, limit: number): Promise<number> {
  const { rowCount } = await db.query({ name: 'outbox.prune', text: SQL.prune, values: [retentionSeconds, limit] })
  return rowCount ?? 0
}

export interface Backlog {
  /** Events not yet confirmed by the broker. */
  events: number
  /** Seconds since the oldest of them was written; 0 when there is none. */
  oldestAgeSeconds: number
}

export async function outboxBacklog (db: QueryRunner): Promise<Backlog> {
  const { rows } = await db.query<Backlog>({ name: 'outbox.backlog', text: SQL.backlog })
  return rows[0] as Backlog
}
