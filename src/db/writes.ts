// Writes that never claim an outcome they do not know. A write whose
// statement (or COMMIT) was sent when the connection broke may or may not
// have taken effect; it is reported as such, never as "nothing happened".
import type pg from 'pg'
import { isLostConnection } from './errors.js'
import type { QueryRunner } from './read-pipeline.js'

/** The connection broke after a write was sent: it may or may not have happened. */
export class WriteOutcomeUnknownError extends Error {
  constructor (cause: unknown, readonly backendPid: number) {
    super('the database connection broke after a write was sent, before its outcome came back', { cause })
    this.name = 'WriteOutcomeUnknownError'
  }
}

/**
 * Runs one autocommit write statement on a client of its own. A failure to
 * get a connection sent nothing and is thrown as it is; a connection lost
 * once the statement went out is a WriteOutcomeUnknownError.
 */
export async function writeOnce<T> (pool: pg.Pool, statement: (client: QueryRunner) => Promise<T>): Promise<T> {
  const client = await pool.connect()
  try {
    const result = await statement(client)
    client.release()
    return result
  } catch (error) {
    const lost = isLostConnection(error)
    client.release(lost)
    throw lost ? new WriteOutcomeUnknownError(error, backendPidOf(client)) : error
  }
}

/**
 * Runs `work` in a transaction. A failure before COMMIT is sent leaves
 * nothing: the transaction is rolled back, or dies with its connection (the
 * pool destroys a broken client, and PostgreSQL aborts an open transaction
 * when its connection goes). Only a connection lost once COMMIT was sent is
 * a WriteOutcomeUnknownError.
 */
export async function writeInTransaction<T> (pool: pg.Pool, work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect()
  let commitSent = false
  try {
    await client.query('BEGIN')
    const result = await work(client)
    commitSent = true
    await client.query('COMMIT')
    client.release()
    return result
  } catch (error) {
    if (isLostConnection(error)) {
      client.release(true)
      throw commitSent ? new WriteOutcomeUnknownError(error, backendPidOf(client)) : error
    }
    // PostgreSQL answered with an error: the transaction is aborted (or, for
    // an error answering COMMIT, rolled back already).
    const rolledBack = commitSent || await client.query('ROLLBACK').then(() => true, () => false)
    client.release(!rolledBack)
    throw error
  }
}

/** The PostgreSQL backend serving a client (pg sets it at connect, untyped). */
function backendPidOf (client: pg.PoolClient): number {
  return (client as unknown as { processID: number }).processID
}

/**
 * Ends the backend that ran a write of unknown outcome, so that its
 * transaction is settled for good (committed, or aborted by the ending).
 * Resolves true once that backend is gone; false if it could not be ended
 * in `timeoutMs` (then the outcome is still unknown).
 */
export async function endBackend (db: QueryRunner, backendPid: number, timeoutMs: number): Promise<boolean> {
  const { rows } = await db.query<{ gone: boolean }>({
    name: 'writes.end-backend',
    // No row in pg_stat_activity: that backend has already exited.
    text: `SELECT coalesce(
        (SELECT pg_terminate_backend(pid, $2) FROM pg_stat_activity WHERE pid = $1),
        true) AS gone`,
    values: [backendPid, timeoutMs]
  })
  return rows[0]?.gone === true
}
