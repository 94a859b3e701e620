// Every SQL statement of the users resource, hand-written and parameterized.
// Hot statements are named, so each connection prepares them once.
import type { User } from '../schemas/users.js'
import type { EventContext } from './outbox.js'
import type { QueryRunner } from './read-pipeline.js'

/** A user as the API shows it, plus the version its ETag comes from. */
export type UserRow = User & { version: number }

// The API's user shape, with timestamps formatted by PostgreSQL as
// ISO-8601 UTC with milliseconds ("2026-11-27T10:00:00.000Z").
const API_COLUMNS = `id, name, email,
  to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "createdAt",
  to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "updatedAt"`
// Plus the version, where the answer carries an ETag.
const USER_COLUMNS = `${API_COLUMNS}, version`

const INSERT = `INSERT INTO users (name, email) VALUES ($1, $2) RETURNING ${USER_COLUMNS}`
// $5: the versions an If-Match header accepts, or null for any. The check
// and the write are one statement: a concurrent change cannot slip between.
const UPDATE = `UPDATE users
    SET name = coalesce($2, name),
        email = CASE WHEN $3::boolean THEN $4 ELSE email END,
        updated_at = now(),
        version = version + 1
    WHERE id = $1 AND ($5::bigint[] IS NULL OR version = ANY ($5::bigint[]))
    RETURNING ${USER_COLUMNS}`
const DELETE = 'DELETE FROM users WHERE id = $1 AND ($2::bigint[] IS NULL OR version = ANY ($2::bigint[]))'

// With events on, each write also records its event in the outbox, in the
// same statement (so in the same transaction, and still one round trip):
// the user after the change, as the API shows it, with its version. A
// delete's event is {id}, at one version past the user's last. The last
// parameter is the request's traceparent.
const USER_EVENT_DATA = `jsonb_build_object('id', id, 'name', name, 'email', email,
  'createdAt', "createdAt", 'updatedAt', "updatedAt", 'version', version)`
const WITH_EVENT = {
  insert: `WITH changed AS (${INSERT}),
    event AS (INSERT INTO event_outbox (type, user_id, user_version, data, traceparent)
      SELECT 'user.created', id, version, ${USER_EVENT_DATA}, $3::text FROM changed)
    SELECT * FROM changed`,
  update: `WITH changed AS (${UPDATE}),
    event AS (INSERT INTO event_outbox (type, user_id, user_version, data, traceparent)
      SELECT 'user.updated', id, version, ${USER_EVENT_DATA}, $6::text FROM changed)
    SELECT * FROM changed`,
  delete: `WITH changed AS (${DELETE} RETURNING id, version),
    event AS (INSERT INTO event_outbox (type, user_id, user_version, data, traceparent)
      SELECT 'user.deleted', id, version + 1, jsonb_build_object('id', id), $3::text FROM changed)
    SELECT id FROM changed`
} as const

const SQL = {
  insert: INSERT,
  findById: `SELECT ${USER_COLUMNS} FROM users WHERE id = $1`,
  // Keyset paging: ascending ids after the cursor, so a walk sees every user
  // that existed throughout it exactly once, whatever is written meanwhile.
  listAfter: `SELECT ${API_COLUMNS} FROM users WHERE id > $1 ORDER BY id LIMIT $2`,
  // lower(email) on both sides: the unique index on lower(email) answers it,
  // and an address is compared as text, never as a LIKE pattern. At most one
  // row (the index is unique); $2 keeps the page's cursor meaning.
  findByEmailAfter: `SELECT ${API_COLUMNS} FROM users WHERE lower(email) = lower($1) AND id > $2`,
  update: UPDATE,
  delete: DELETE,
  // Keyset batches: each is a statement of its own on any connection, so
  // the statement timeout bounds every batch rather than the download, and
  // no connection is held while a slow client reads. PostgreSQL writes each
  // batch as JSON text ({"id":…,"name":…} joined by commas; to_json escapes
  // the name as JSON.stringify would), so a batch is one string to send,
  // not a thousand objects to build and serialize again.
  idsAndNamesJsonAfter: `SELECT string_agg('{"id":' || id || ',"name":' || to_json(name) || '}', ',' ORDER BY id) AS json,
      count(*)::int AS count, max(id) AS "lastId"
    FROM (SELECT id, name FROM users WHERE id > $1 ORDER BY id LIMIT $2) batch`,
  anyExists: 'SELECT EXISTS (SELECT 1 FROM users) AS "exists"'
} as const
const BATCH_SIZE = 1_000

/**
 * Each write takes `event`: absent, it runs as it always did; given (events
 * on), the same statement also writes the change's event to the outbox.
 */
export async function insertUser (db: QueryRunner, name: string, email: string | null, event?: EventContext): Promise<UserRow> {
  const { rows } = event === undefined
    ? await db.query<UserRow>({ name: 'users.insert', text: SQL.insert, values: [name, email] })
    : await db.query<UserRow>({ name: 'users.insert-with-event', text: WITH_EVENT.insert, values: [name, email, event.traceparent] })
  return rows[0] as UserRow
}

export async function findUserById (db: QueryRunner, id: number): Promise<UserRow | undefined> {
  const { rows } = await db.query<UserRow>({ name: 'users.find-by-id', text: SQL.findById, values: [id] })
  return rows[0]
}

/** A user's API columns as a row of values, in the order the API shows them. */
export type UserTuple = [id: number, name: string, email: string | null, createdAt: string, updatedAt: string]

/**
 * Up to `limit` users with ids above `after`, in ascending id order. Rows
 * come as arrays (pg's rowMode "array"): a page is 51 rows, and an object
 * with five keys for each is garbage that the page's JSON never needed.
 */
export async function listUsersAfter (db: QueryRunner, after: number, limit: number): Promise<UserTuple[]> {
  const { rows } = await db.query<UserTuple>({ name: 'users.list-after', text: SQL.listAfter, values: [after, limit], rowMode: 'array' })
  return rows
}

/** The user with this email, compared case-insensitively, if its id is above `after`. */
export async function findUsersByEmailAfter (db: QueryRunner, email: string, after: number): Promise<User[]> {
  const { rows } = await db.query<User>({ name: 'users.find-by-email-after', text: SQL.findByEmailAfter, values: [email, after] })
  return rows
}

export interface UserChanges {
  name?: string | undefined
  /** `null` clears the email; `undefined` leaves it as it is. */
  email?: string | null | undefined
}

/**
 * Applies the changes if the user exists and, when `versions` is given, is
 * at one of them. Returns the changed user, or undefined for neither.
 */
export async function updateUser (db: QueryRunner, id: number, changes: UserChanges, versions: number[] | null, event?: EventContext): Promise<UserRow | undefined> {
  const values = [id, changes.name ?? null, changes.email !== undefined, changes.email ?? null, versions]
  const { rows } = event === undefined
    ? await db.query<UserRow>({ name: 'users.update', text: SQL.update, values })
    : await db.query<UserRow>({ name: 'users.update-with-event', text: WITH_EVENT.update, values: [...values, event.traceparent] })
  return rows[0]
}

/** Whether a user was deleted (it existed and, given `versions`, was at one of them). */
export async function deleteUser (db: QueryRunner, id: number, versions: number[] | null, event?: EventContext): Promise<boolean> {
  const { rowCount } = event === undefined
    ? await db.query({ name: 'users.delete', text: SQL.delete, values: [id, versions] })
    : await db.query({ name: 'users.delete-with-event', text: WITH_EVENT.delete, values: [id, versions, event.traceparent] })
  return rowCount === 1
}

/** Some users' `{"id","name"}` objects as JSON text, joined by commas. */
export interface JsonBatch {
  json: string
  count: number
  lastId: number
}

/**
 * Every user's id and name, by id, a batch at a time as the caller asks
 * for them, so a large table never sits in memory at once. Each user comes
 * once, in id order; one created meanwhile with a higher id comes too.
 */
export async function * readAllIdsAndNamesAsJson (db: QueryRunner): AsyncGenerator<JsonBatch> {
  for (let after = 0; ;) {
    const { rows } = await db.query<JsonBatch>({
      name: 'users.ids-and-names-json-after',
      text: SQL.idsAndNamesJsonAfter,
      values: [after, BATCH_SIZE]
    })
    const batch = rows[0] as JsonBatch
    if (batch.count > 0) yield batch
    if (batch.count < BATCH_SIZE) return
    after = batch.lastId
  }
}

/** Whether there is any user at all (what HEAD /api/user needs to know, without reading them). */
export async function anyUserExists (db: QueryRunner): Promise<boolean> {
  const { rows } = await db.query<{ exists: boolean }>({ name: 'users.any-exists', text: SQL.anyExists })
  return rows[0]?.exists === true
}
