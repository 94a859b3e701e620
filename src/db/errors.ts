// How a failure of the database reads to a client of the API.
import pg from 'pg'

// SQLSTATE classes and codes: https://www.postgresql.org/docs/current/errcodes-appendix.html
const UNIQUE_VIOLATION = '23505'
const UNAVAILABLE_CLASSES = ['08', '53', '57'] // connection, resources, operator intervention (shutdown, cancel)
const INVALID_TEXT_CODES = ['22021', '22P05'] // invalid byte sequence, untranslatable character
// PostgreSQL aborted the statement (and its transaction) to break a deadlock
// or to keep transactions serializable: nothing of it took effect.
const ABORTED_FOR_CONCURRENCY_CODES = ['40001', '40P01'] // serialization failure, deadlock detected

// node-postgres reports lost or refused connections as plain errors.
const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN'])
const NETWORK_MESSAGES = /^(Connection terminated|timeout exceeded when trying to connect|timeout expired$|Query read timeout|Client has encountered a connection error|Cannot use a pool after calling end)/

export type DatabaseFailure = 'unavailable' | 'unique-violation' | 'invalid-text' | 'aborted-for-concurrency'

/**
 * Whether the connection itself failed (lost, reset, or silent past the
 * client's read timeout), as opposed to PostgreSQL answering with an error.
 * After an answered error the statement surely did not take effect; after a
 * lost connection, a statement already sent may or may not have.
 */
export function isLostConnection (error: unknown): boolean {
  if (!(error instanceof Error)) return false
  const code = sqlStateOf(error)
  if (code !== undefined) return false
  const errno = (error as { code?: unknown }).code
  return (typeof errno === 'string' && NETWORK_CODES.has(errno)) || NETWORK_MESSAGES.test(error.message)
}

/**
 * Whether PostgreSQL aborted the work to break a deadlock or a serialization
 * conflict with other transactions. It rolled the work back, so running it
 * again (the statement, or the transaction from its start) is safe, and
 * likely to succeed once the other transaction is done.
 */
export function isAbortedForConcurrency (error: unknown): boolean {
  if (!(error instanceof Error)) return false
  const code = sqlStateOf(error)
  return code !== undefined && ABORTED_FOR_CONCURRENCY_CODES.includes(code)
}

export function classifyDatabaseError (error: unknown): DatabaseFailure | undefined {
  if (!(error instanceof Error)) return undefined
  const code = sqlStateOf(error)
  if (code === UNIQUE_VIOLATION) return 'unique-violation'
  if (isAbortedForConcurrency(error)) return 'aborted-for-concurrency'
  if (code !== undefined && INVALID_TEXT_CODES.includes(code)) return 'invalid-text'
  if (code !== undefined && UNAVAILABLE_CLASSES.includes(code.slice(0, 2))) return 'unavailable'
  if (isLostConnection(error)) return 'unavailable'
  return undefined
}

/**
 * The SQLSTATE PostgreSQL answered with, if the error is such an answer.
 * Told by its class, not its code's shape: node's EPIPE is five capitals too.
 */
function sqlStateOf (error: Error): string | undefined {
  return error instanceof pg.DatabaseError ? error.code : undefined
}
