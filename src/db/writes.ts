// Writes that never claim an outcome they do not know. A write whose
// statement (or COMMIT) was sent when the connection broke may or may not
// have taken effect; it is reported as such, never as "nothing happened".
import { setTimeout as sleep } from 'node:timers/promises'
import type pg from 'pg'
import { isAbortedForConcurrency, isLostConnection } from './errors.js'
import type { QueryRunner } from './read-pipeline.js'

/**
 * Tries at a write PostgreSQL keeps aborting to break deadlocks or
 * serialization conflicts; past them, its error goes to the client (a 503).
 */
const ATTEMPTS_WHEN_ABORTED = 3
/** The longest pause before another try, times the tries so far (randomized, so two victims part ways). */
const RETRY_PAUSE_MAX_MS = 10

/** The PostgreSQL backend that ran a write, and (where known) its transaction. */
export interface Backend {
  pid: number
  /** txid_current() of the write's transaction: known when learnt inside it. */
  transactionId?: string
}

export interface TransactionOptions {
  /**
   * Learn the backend from inside the transaction (one statement sent with
   * BEGIN, so no extra round trip). Behind a transaction pooler the pid a
   * client got at connect is the pooler's own, and the server session it
   * lands on changes with every transaction.
   */
  backendPerTransaction?: boolean
}

/** The connection broke after a write was sent: it may or may not have happened. */
export class WriteOutcomeUnknownError extends Error {
  constructor (cause: unknown, readonly backend: Backend) {
    super('the database connection broke after a write was sent, before its outcome came back', { cause })
    this.name = 'WriteOutcomeUnknownError'
  }
}

/**
 * Runs one autocommit write statement on a client of its own. A failure to
 * get a connection sent nothing and is thrown as it is; a connection lost
 * once the statement went out is a WriteOutcomeUnknownError. A statement
 * PostgreSQL aborted for a deadlock or a serialization conflict was rolled
 * back, so it is run again, a few times at most.
 */
export async function writeOnce<T> (pool: pg.Pool, statement: (client: QueryRunner) => Promise<T>): Promise<T> {
  return await retriedWhileAborted(() => writeOnceNow(pool, statement))
}

async function writeOnceNow<T> (pool: pg.Pool, statement: (client: QueryRunner) => Promise<T>): Promise<T> {
  const client = await pool.connect()
  try {
    const result = await statement(client)
    client.release()
    return result
  } catch (error) {
    const lost = isLostConnection(error)
    client.release(lost)
    throw lost ? new WriteOutcomeUnknownError(error, { pid: backendPidOf(client) }) : error
  }
}

/**
 * Runs `work` in a transaction. A failure before COMMIT is sent leaves
 * nothing: the transaction is rolled back, or dies with its connection (the
 * pool destroys a broken client, and PostgreSQL aborts an open transaction
 * when its connection goes). Only a connection lost once COMMIT was sent is
 * a WriteOutcomeUnknownError. A transaction PostgreSQL aborted for a
 * deadlock or a serialization conflict is run again from its start, a few
 * times at most: `work` must do nothing outside the transaction.
 */
export async function writeInTransaction<T> (pool: pg.Pool, work: (client: pg.PoolClient) => Promise<T>, options: TransactionOptions = {}): Promise<T> {
  return await retriedWhileAborted(() => writeInTransactionNow(pool, work, options))
}

async function writeInTransactionNow<T> (pool: pg.Pool, work: (client: pg.PoolClient) => Promise<T>, options: TransactionOptions): Promise<T> {
  const client = await pool.connect()
  let commitSent = false
  let backend: Backend = { pid: backendPidOf(client) }
  try {
    if (options.backendPerTransaction === true) {
      // Two statements in one simple query: one round trip, as BEGIN alone.
      const results = await client.query(BEGIN_AND_BACKEND) as unknown as Array<pg.QueryResult<Required<Backend>>>
      backend = results[1]?.rows[0] ?? backend
    } else {
      await client.query('BEGIN')
    }
    const result = await work(client)
    commitSent = true
    await client.query('COMMIT')
    client.release()
    return result
  } catch (error) {
    if (isLostConnection(error)) {
      client.release(true)
      throw commitSent ? new WriteOutcomeUnknownError(error, backend) : error
    }
    // PostgreSQL answered with an error: the transaction is aborted (or, for
    // an error answering COMMIT, rolled back already).
    const rolledBack = commitSent || await client.query('ROLLBACK').then(() => true, () => false)
    client.release(!rolledBack)
    throw error
  }
}

const BEGIN_AND_BACKEND = 'BEGIN; SELECT pg_backend_pid() AS pid, txid_current()::text AS "transactionId"'

/** Runs `write` again while PostgreSQL aborts it for concurrency, up to ATTEMPTS_WHEN_ABORTED tries. */
async function retriedWhileAborted<T> (write: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await write()
    } catch (error) {
      if (attempt >= ATTEMPTS_WHEN_ABORTED || !isAbortedForConcurrency(error)) throw error
      await sleep(Math.random() * RETRY_PAUSE_MAX_MS * attempt)
    }
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
 * in `timeoutMs` (then the outcome is still unknown). With the transaction
 * known, the backend is ended only while it is still in that transaction:
 * behind a pooler, a backend that finished it may already serve another
 * client, and the transaction is settled anyway.
 */
export async function endBackend (db: QueryRunner, backend: Backend, timeoutMs: number): Promise<boolean> {
  if (backend.transactionId !== undefined) {
    const { rows } = await db.query<{ gone: boolean }>({
      name: 'writes.end-backend-in-transaction',
      // backend_xid is the 32-bit xid; txid_current() adds the epoch above it.
      text: `SELECT coalesce(
          (SELECT pg_terminate_backend(pid, $3) FROM pg_stat_activity
            WHERE pid = $1 AND backend_xid::text::bigint = $2::bigint % 4294967296),
          true) AS gone`,
      values: [backend.pid, backend.transactionId, timeoutMs]
    })
    return rows[0]?.gone === true
  }
  const { rows } = await db.query<{ gone: boolean }>({
    name: 'writes.end-backend',
    // No row in pg_stat_activity: that backend has already exited.
    text: `SELECT coalesce(
        (SELECT pg_terminate_backend(pid, $2) FROM pg_stat_activity WHERE pid = $1),
        true) AS gone`,
    values: [backend.pid, timeoutMs]
  })
  return rows[0]?.gone === true
}
