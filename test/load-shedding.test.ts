import t from 'tap'
import type { FastifyInstance } from 'fastify'
import type pg from 'pg'
import type { Test } from 'tap'
import { buildTestApp, createUser } from './helper.js'
import { sleep, within } from './spawn.js'

// Overload is answered at once with 503 + Retry-After, in the error shape,
// while probes and metrics keep answering; admitted work still finishes.

async function holdUsersTable (db: pg.Pool): Promise<() => Promise<void>> {
  const locker = await db.connect()
  await locker.query('BEGIN')
  await locker.query('LOCK TABLE users IN ACCESS EXCLUSIVE MODE')
  return async () => {
    await locker.query('COMMIT')
    locker.release()
  }
}

function assertShed (t: Test, response: { statusCode: number, headers: Record<string, unknown>, json: () => unknown }, message: RegExp): void {
  t.equal(response.statusCode, 503, 'shed with 503')
  t.equal(response.headers['retry-after'], '1', 'with Retry-After')
  t.match(response.json(), { statusCode: 503, error: 'Service Unavailable', message }, 'in the error shape')
}

async function waitForWaiting (app: FastifyInstance, count: number): Promise<void> {
  await within((async () => {
    while (app.pg.pool.waitingCount + app.reads.waitingCount < count) await sleep(10)
  })(), 5_000, `${count} requests waiting for the database`)
}

t.test('a full pool queue sheds new /api requests; probes and metrics still answer', async (t) => {
  const { app, db } = await buildTestApp(t, {
    DATABASE_POOL_MAX: '1', DATABASE_READ_PIPELINES: '0', DATABASE_QUEUE_MAX: '2'
  })
  const user = await createUser(app, { name: 'Ada' })
  const release = await holdUsersTable(db)

  // One request holds the only client (blocked on the lock), two wait for it.
  const admitted = [1, 2, 3].map(() => app.inject({ method: 'GET', url: `/api/users/${user.id}` }))
  await waitForWaiting(app, 2)

  const started = Date.now()
  assertShed(t, await app.inject({ method: 'GET', url: `/api/users/${user.id}` }), /database queue is full/)
  assertShed(t, await app.inject({ method: 'POST', url: '/api/users', payload: { name: 'Bob' } }), /database queue is full/)
  t.ok(Date.now() - started < 1_000, 'at once, without waiting for a client')
  t.equal((await app.inject({ method: 'GET', url: '/health/live' })).statusCode, 200, 'liveness still answers')
  t.equal((await app.inject({ method: 'GET', url: '/metrics' })).statusCode, 200, 'metrics still answer')

  await release()
  const answers = await Promise.all(admitted)
  t.same(answers.map((answer) => answer.statusCode), [200, 200, 200], 'the admitted requests finish')
  t.equal((await app.inject({ method: 'POST', url: '/api/users', payload: { name: 'Bob' } })).statusCode, 201, 'served again once the queue drains')
  const bobs = await db.query('SELECT count(*)::int AS n FROM users WHERE name = $1', ['Bob'])
  t.equal(bobs.rows[0].n, 1, 'the shed create wrote nothing')
})

t.test('reads waiting on the read pipeline count too', async (t) => {
  const { app, db } = await buildTestApp(t, { DATABASE_READ_PIPELINES: '1', DATABASE_QUEUE_MAX: '3' })
  const user = await createUser(app, { name: 'Ada' })
  const release = await holdUsersTable(db)
  const admitted = [1, 2, 3].map(() => app.inject({ method: 'GET', url: '/api/users?limit=5' }))
  await waitForWaiting(app, 3)
  assertShed(t, await app.inject({ method: 'GET', url: `/api/users/${user.id}` }), /database queue is full/)
  await release()
  t.same((await Promise.all(admitted)).map((answer) => answer.statusCode), [200, 200, 200], 'the admitted reads finish')
  t.equal((await app.inject({ method: 'GET', url: `/api/users/${user.id}` })).statusCode, 200, 'served again')
})

t.test('a lagging event loop sheds /api requests until it recovers', async (t) => {
  const { app } = await buildTestApp(t, { EVENT_LOOP_DELAY_MAX_MS: '50' })
  await app.ready()
  const user = await createUser(app, { name: 'Ada' })

  // Keep the loop lagging, as a CPU-bound bug or a GC storm would: every
  // turn is held 200 ms. (One long block is a single sample among a
  // second's many and can leave the mean under the limit.)
  const lag = setInterval(() => {
    const until = Date.now() + 200
    while (Date.now() < until) { /* busy */ }
  }, 1)
  t.teardown(() => clearInterval(lag))

  // The delay is sampled once a second; shedding starts at the next sample.
  let shed: Awaited<ReturnType<typeof app.inject>> | undefined
  await within((async () => {
    for (;;) {
      const answer = await app.inject({ method: 'GET', url: `/api/users/${user.id}` })
      if (answer.statusCode === 503) { shed = answer; return }
      await sleep(50)
    }
  })(), 5_000, 'a 503 while the loop lags')
  if (shed !== undefined) assertShed(t, shed, /overloaded/)
  t.equal((await app.inject({ method: 'GET', url: '/health/live' })).statusCode, 200, 'liveness still answers')
  clearInterval(lag)

  await within((async () => {
    while ((await app.inject({ method: 'GET', url: `/api/users/${user.id}` })).statusCode !== 200) await sleep(100)
  })(), 5_000, 'served again once the loop keeps up')
  t.pass('served again once the loop keeps up')
})

t.test('request and connection timeouts are set on the server', async (t) => {
  const { app } = await buildTestApp(t)
  await app.ready()
  t.equal(app.server.requestTimeout, 30_000, 'a whole request must arrive within 30 s')
  t.equal(app.server.timeout, 60_000, 'a connection silent for 60 s mid-request is closed')
  t.equal(app.server.headersTimeout, 10_000, 'headers must arrive within 10 s')
})
