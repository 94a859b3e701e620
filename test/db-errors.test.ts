import t from 'tap'
import pg from 'pg'
import { classifyDatabaseError, isLostConnection } from '../src/db/errors.js'

function systemError (code: string, syscall = 'write'): Error {
  return Object.assign(new Error(`${syscall} ${code}`), { code, errno: -32, syscall })
}

function answered (code: string): Error {
  const error = new pg.DatabaseError('answered by PostgreSQL', 0, 'error')
  error.code = code
  return error
}

t.test('a connection that failed under a statement is lost, and the database unavailable', async (t) => {
  // EPIPE is five capital letters, like a SQLSTATE: seen as a 500 while
  // PostgreSQL restarted, before errors were told apart by their class.
  for (const error of [systemError('EPIPE'), systemError('ECONNRESET', 'read'), new Error('Connection terminated unexpectedly'), new Error('Query read timeout')]) {
    t.equal(isLostConnection(error), true, `${error.message}: lost`)
    t.equal(classifyDatabaseError(error), 'unavailable', `${error.message}: unavailable`)
  }
})

t.test('an error PostgreSQL answered is not a lost connection', async (t) => {
  t.equal(isLostConnection(answered('57P01')), false, 'admin shutdown: answered')
  t.equal(classifyDatabaseError(answered('57P01')), 'unavailable')
  t.equal(classifyDatabaseError(answered('57014')), 'unavailable', 'statement timeout')
  t.equal(classifyDatabaseError(answered('23505')), 'unique-violation')
  t.equal(classifyDatabaseError(answered('22021')), 'invalid-text')
  t.equal(classifyDatabaseError(answered('40P01')), 'aborted-for-concurrency', 'deadlock detected')
  t.equal(classifyDatabaseError(answered('40001')), 'aborted-for-concurrency', 'serialization failure')
  t.equal(classifyDatabaseError(answered('42P01')), undefined, 'a bug of ours stays a 500')
})

t.test('anything else is neither', async (t) => {
  t.equal(isLostConnection(new Error('boom')), false)
  t.equal(classifyDatabaseError(new Error('boom')), undefined)
  t.equal(classifyDatabaseError('not an error'), undefined)
})
