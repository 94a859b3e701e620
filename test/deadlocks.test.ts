// Deadlocks and serialization failures are PostgreSQL's way of saying
// "not now", not bugs: a statement or transaction it aborted for them is
// retried, and if it still cannot go through, the client gets 503 with
// Retry-After, never 500.
import { setTimeout as sleep } from 'node:timers/promises'
import type { LightMyRequestResponse } from 'fastify'
import pg from 'pg'
import t, { type Test } from 'tap'
import { buildApp } from '../src/app.js'
import { writeInTransaction, writeOnce } from '../src/db/writes.js'
import { buildTestApp, createTestDatabase, createUser, testConfig } from './helper.js'

/** Deadlocks PostgreSQL detected in the current database so far. */
async function deadlocksSoFar (db: pg.Pool): Promise<number> {
  const { rows } = await db.query<{ deadlocks: number }>('SELECT deadlocks::int AS deadlocks FROM pg_stat_database WHERE datname = current_database()')
  return rows[0]?.deadlocks ?? 0
}

t.test('PATCHes swapping two users\' emails at once: never a 500, and nothing changes', async (t) => {
  const { app, db, databaseUrl } = await buildTestApp(t)
  // PostgreSQL looks for a deadlock after this wait (1 s by default); the
  // app's connections, opened after this, find theirs quickly.
  await db.query(`ALTER DATABASE ${new URL(databaseUrl).pathname.slice(1)} SET deadlock_timeout = '20ms'`)
  // Each round, every pair swaps its emails with two PATCHes sent at once.
  // Both fail with 409 (each email is the other's), unless both updates
  // went in before either checked the unique index: then they deadlock.
  // That window is narrow, hence the many pairs and rounds.
  const PAIRS = 4
  const ROUNDS = 500
  const pairs = []
  for (let pair = 0; pair < PAIRS; pair++) {
    pairs.push([
      await createUser(app, { name: 'Ada', email: `ada${pair}@example.com` }),
      await createUser(app, { name: 'Bob', email: `bob${pair}@example.com` })
    ] as const)
  }

  const statuses = new Map<number, number>()
  const unexpected: string[] = []
  const patch = (id: number, email: string): Promise<LightMyRequestResponse> =>
    app.inject({ method: 'PATCH', url: `/api/users/${id}`, payload: { email } })
  const started = Date.now()
  for (let round = 0; round < ROUNDS; round++) {
    const answers = await Promise.all(pairs.flatMap(([ada, bob]) => [patch(ada.id, bob.email), patch(bob.id, ada.email)]))
    for (const answer of answers) {
      statuses.set(answer.statusCode, (statuses.get(answer.statusCode) ?? 0) + 1)
      if (answer.statusCode !== 409 && !(answer.statusCode === 503 && answer.headers['retry-after'] !== undefined)) {
        unexpected.push(`${answer.statusCode} ${answer.body}`)
      }
    }
  }
  t.comment(`${ROUNDS} rounds of ${PAIRS} swaps in ${Date.now() - started} ms: ${JSON.stringify(Object.fromEntries(statuses))}`)
  t.same(unexpected.slice(0, 5), [], 'every answer is a 409 (the email is taken), or a 503 with Retry-After')

  const { rows } = await db.query('SELECT id, email, version FROM users ORDER BY id')
  t.same(rows, pairs.flatMap((pair) => pair.map(({ id, email }) => ({ id, email, version: 1 }))),
    'no swap went through, and no email is held twice')

  // The swaps did deadlock (PostgreSQL counts them a moment after).
  let deadlocks = 0
  for (const deadline = Date.now() + 5_000; deadlocks === 0 && Date.now() < deadline; await sleep(100)) {
    deadlocks = await deadlocksSoFar(db)
  }
  t.ok(deadlocks > 0, `PostgreSQL detected ${deadlocks} deadlocks among the swaps`)
})

/**
 * A deadlock the test makes for sure, between advisory locks 1 and 2: the
 * test's own transaction holds lock 1 and, once `victim` (on `pool`) holds
 * lock 2 and waits for lock 1, asks for lock 2. PostgreSQL then aborts
 * `victim`, whose connections look for deadlocks sooner than the test's.
 */
async function deadlockWith<T> (t: Test, victim: (pool: pg.Pool) => Promise<T>): Promise<T> {
  const databaseUrl = await createTestDatabase(t)
  const pool = new pg.Pool({ connectionString: databaseUrl, options: '-c deadlock_timeout=200' })
  const holder = new pg.Client({ connectionString: databaseUrl, options: '-c deadlock_timeout=10000' })
  await holder.connect()
  t.teardown(async () => {
    await holder.end()
    await pool.end()
  })
  await holder.query('BEGIN')
  await holder.query('SELECT pg_advisory_xact_lock(1)')
  const outcome = victim(pool)
  const deadline = Date.now() + 5_000
  for (;;) {
    const { rows } = await holder.query<{ waiting: boolean }>(`SELECT pg_stat_clear_snapshot(),
      EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND objid = 1 AND NOT granted) AS waiting`)
    if (rows[0]?.waiting === true) break
    if (Date.now() > deadline) throw new Error('the victim never waited for lock 1')
    await sleep(10)
  }
  await holder.query('SELECT pg_advisory_xact_lock(2)')
  await holder.query('COMMIT')
  return await outcome
}

t.test('a transaction PostgreSQL aborted to break a deadlock runs again from its start', async (t) => {
  let runs = 0
  const result = await deadlockWith(t, (pool) => writeInTransaction(pool, async (client) => {
    runs++
    await client.query('SELECT pg_advisory_xact_lock(2)')
    await client.query('SELECT pg_advisory_xact_lock(1)')
    return runs
  }))
  t.equal(result, 2, 'the second run went through')
})

t.test('an autocommit statement PostgreSQL aborted to break a deadlock runs again', async (t) => {
  let runs = 0
  const result = await deadlockWith(t, (pool) => writeOnce(pool, async (client) => {
    runs++
    await client.query({ text: 'SELECT pg_advisory_xact_lock(2), pg_advisory_xact_lock(1)' })
    return runs
  }))
  t.equal(result, 2, 'the second run went through')
})

/** An error as PostgreSQL answers it. */
function answered (code: string): pg.DatabaseError {
  const error = new pg.DatabaseError(`answered with ${code}`, 0, 'error')
  error.code = code
  return error
}

t.test('a write aborted every time is tried a few times, then answered 503 with Retry-After', async (t) => {
  const databaseUrl = await createTestDatabase(t)
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 1 })
  t.teardown(() => pool.end())
  for (const code of ['40P01', '40001']) {
    let statements = 0
    let transactions = 0
    await t.rejects(writeOnce(pool, async () => { statements++; throw answered(code) }), { code }, `${code}: the error, in the end`)
    await t.rejects(writeInTransaction(pool, async () => { transactions++; throw answered(code) }), { code })
    t.equal(statements, 3, `${code}: the statement was tried 3 times`)
    t.equal(transactions, 3, `${code}: the transaction was tried 3 times`)
  }
  let runs = 0
  await t.rejects(writeOnce(pool, async () => { runs++; throw answered('23505') }), { code: '23505' })
  t.equal(runs, 1, 'any other error is not retried')

  const app = await buildApp(testConfig(databaseUrl), { logger: false })
  t.teardown(() => app.close())
  app.get('/collide', async () => { throw answered('40P01') })
  const response = await app.inject({ url: '/collide' })
  t.equal(response.statusCode, 503)
  t.equal(response.headers['retry-after'], '1')
  t.match(response.json(), { statusCode: 503, error: 'Service Unavailable', message: /try again/ })
})
