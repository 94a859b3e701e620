// The SQL of Idempotency-Key records (migrations/3_create-idempotency-keys.sql).
import type { Pool, PoolClient } from 'pg'
import type { QueryRunner } from './read-pipeline.js'

const SQL = {
  // Takes the key for this request: a new key, or one whose record has
  // expired. A concurrent request holding the same key (uncommitted) makes
  // this wait until that one commits or rolls back.
  claim: `INSERT INTO idempotency_keys (key, fingerprint, expires_at)
    VALUES ($1, $2, now() + make_interval(secs => $3))
    ON CONFLICT (key) DO UPDATE
      SET fingerprint = EXCLUDED.fingerprint, status_code = NULL, response_headers = NULL,
          response_body = NULL, created_at = now(), expires_at = EXCLUDED.expires_at
      WHERE idempotency_keys.expires_at <= now()
    RETURNING key`,
  find: `SELECT fingerprint, status_code AS "statusCode", response_headers AS headers, response_body AS body
    FROM idempotency_keys WHERE key = $1`,
  saveAnswer: `UPDATE idempotency_keys
    SET status_code = $2, response_headers = $3, response_body = $4
    WHERE key = $1`,
  // Expired records, a batch at a time, skipping any a request holds.
  purgeExpired: `DELETE FROM idempotency_keys WHERE key IN (
    SELECT key FROM idempotency_keys WHERE expires_at <= now()
    ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)`
} as const

export interface StoredAnswer {
  statusCode: number
  headers: Record<string, string>
  body: string
}

export interface KeyRecord {
  fingerprint: string
  /** Null only while the request that claimed the key has not committed. */
  statusCode: number | null
  headers: Record<string, string> | null
  body: string | null
}

/** Whether this transaction now owns the key (new, or expired before). */
export async function claimKey (client: PoolClient, key: string, fingerprint: string, ttlSeconds: number): Promise<boolean> {
  const { rowCount } = await client.query({ name: 'idempotency.claim', text: SQL.claim, values: [key, fingerprint, ttlSeconds] })
  return rowCount === 1
}

export async function findKey (client: QueryRunner, key: string): Promise<KeyRecord | undefined> {
  const { rows } = await client.query<KeyRecord>({ name: 'idempotency.find', text: SQL.find, values: [key] })
  return rows[0]
}

export async function saveAnswer (client: PoolClient, key: string, answer: StoredAnswer): Promise<void> {
  await client.query({
    name: 'idempotency.save-answer',
    text: SQL.saveAnswer,
    values: [key, answer.statusCode, answer.headers, answer.body]
  })
}

/** Deletes up to `limit` expired records; returns how many. */
export async function purgeExpiredKeys (db: Pool, limit: number): Promise<number> {
  const { rowCount } = await db.query({ name: 'idempotency.purge', text: SQL.purgeExpired, values: [limit] })
  return rowCount ?? 0
}
