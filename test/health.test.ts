// Kubernetes probes and request ids, as a probe or a client sees them.
import { once } from 'node:events'
import { get } from 'node:http'
import net from 'node:net'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import pg from 'pg'
import t, { type Test } from 'tap'
import { buildApp } from '../src/app.js'
import { buildTestApp, createTestDatabase, testConfig } from './helper.js'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

/** Checks a 503 in the contract's error shape and returns its message. */
function unavailable (t: Test, response: LightMyRequestResponse): string {
  t.equal(response.statusCode, 503, `503: ${response.body}`)
  t.match(response.headers['content-type'], /^application\/json/)
  const body = response.json()
  t.same(Object.keys(body).sort(), ['error', 'message', 'statusCode'])
  t.equal(body.statusCode, 503)
  t.equal(body.error, 'Service Unavailable')
  t.type(body.message, 'string')
  t.notMatch(response.body, /\n\s+at |SELECT|relation/, 'nothing of the internals')
  return body.message
}

/** An app on a database that exists but was never migrated. */
async function unmigratedApp (t: Test): Promise<FastifyInstance> {
  const url = await createTestDatabase(t, { migrated: false })
  const app = await buildApp(testConfig(url), { logger: false })
  t.teardown(() => app.close())
  return app
}

t.test('GET /health/live is 200 {status: ok}', async (t) => {
  const { app } = await buildTestApp(t)
  const response = await app.inject({ method: 'GET', url: '/health/live' })
  t.equal(response.statusCode, 200)
  t.match(response.headers['content-type'], /^application\/json/)
  t.strictSame(response.json(), { status: 'ok' })
})

t.test('GET /health/ready on a migrated database is 200, and 503 while a migration is pending', async (t) => {
  const { app, db } = await buildTestApp(t)
  const ready = await app.inject({ method: 'GET', url: '/health/ready' })
  t.equal(ready.statusCode, 200)
  t.match(ready.headers['content-type'], /^application\/json/)
  t.strictSame(ready.json(), { status: 'ok' })

  const { rows } = await db.query('DELETE FROM migrations WHERE id = (SELECT max(id) FROM migrations) RETURNING *')
  t.equal(rows.length, 1, 'the latest migration is forgotten')
  const pending = await app.inject({ method: 'GET', url: '/health/ready' })
  t.match(unavailable(t, pending), /pending/)

  const live = await app.inject({ method: 'GET', url: '/health/live' })
  t.equal(live.statusCode, 200, 'liveness does not care')

  // Once the migration is back, readiness returns by itself.
  const row = rows[0]
  await db.query('INSERT INTO migrations (id, name, hash, executed_at) VALUES ($1, $2, $3, $4)',
    [row.id, row.name, row.hash, row.executed_at])
  const again = await app.inject({ method: 'GET', url: '/health/ready' })
  t.equal(again.statusCode, 200)
  t.strictSame(again.json(), { status: 'ok' })
})

t.test('GET /health/ready on a database never migrated is 503 and says so', async (t) => {
  const app = await unmigratedApp(t)
  const response = await app.inject({ method: 'GET', url: '/health/ready' })
  t.match(unavailable(t, response), /migrations/)

  const live = await app.inject({ method: 'GET', url: '/health/live' })
  t.equal(live.statusCode, 200)
  t.strictSame(live.json(), { status: 'ok' })
})

t.test('GET /health/ready answers 503 within its bound when the database stalls', async (t) => {
  const { app, databaseUrl } = await buildTestApp(t)
  const locker = new pg.Client({ connectionString: databaseUrl })
  await locker.connect()
  t.teardown(() => locker.end())
  await locker.query('BEGIN')
  await locker.query('LOCK TABLE migrations IN ACCESS EXCLUSIVE MODE')
  try {
    const started = Date.now()
    const response = await app.inject({ method: 'GET', url: '/health/ready' })
    const elapsed = Date.now() - started
    unavailable(t, response)
    t.ok(elapsed < 2_500, `answered in ${elapsed} ms`)
  } finally {
    await locker.query('ROLLBACK')
  }
  const ready = await app.inject({ method: 'GET', url: '/health/ready' })
  t.equal(ready.statusCode, 200, 'ready again once the lock is gone')
})

t.test('once shutdown begins, readiness is 503 and in-flight requests finish', async (t) => {
  // A real server. Shutdown is held in its first step (a preClose hook of
  // the test's own) so a probe can be sent inside that window.
  const databaseUrl = await createTestDatabase(t)
  const app = await buildApp(testConfig(databaseUrl), { logger: false })
  let enterShutdown: () => void = () => {}
  const shutdownEntered = new Promise<void>((resolve) => { enterShutdown = resolve })
  let releaseShutdown: () => void = () => {}
  const shutdownReleased = new Promise<void>((resolve) => { releaseShutdown = resolve })
  app.addHook('preClose', async () => {
    enterShutdown()
    await bounded(shutdownReleased, 5_000, 'the test lets shutdown go on').catch(() => {})
  })
  let closing: Promise<undefined> | undefined
  const close = () => (closing ??= app.close())
  t.teardown(() => {
    releaseShutdown()
    return close()
  })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as net.AddressInfo

  // The in-flight request waits on a lock held elsewhere.
  const locker = new pg.Client({ connectionString: databaseUrl })
  await locker.connect()
  t.teardown(() => locker.end())
  await locker.query('BEGIN')
  await locker.query('LOCK TABLE users IN ACCESS EXCLUSIVE MODE')
  const inFlight = httpGet(port, '/api/users/1')
  await waitFor(async () => await lockWaiters(locker) > 0, 'the request waits on the lock')

  const ready = await httpGet(port, '/health/ready')
  t.equal(ready.status, 200, 'ready before shutdown')

  const closed = close()
  await bounded(shutdownEntered, 2_000, 'shutdown begins')

  const probe = await httpGet(port, '/health/ready', { 'x-request-id': 'probe-at-shutdown' })
  t.equal(probe.status, 503, 'readiness is 503 at once')
  t.match(probe.headers['content-type'], /^application\/json/)
  t.match(probe.json(), { statusCode: 503, error: 'Service Unavailable', message: String })
  t.same(Object.keys(probe.json()).sort(), ['error', 'message', 'statusCode'])
  // The contract: every request's id is echoed, and a 503 from readiness
  // says what is wrong, as every other error message does.
  t.equal(probe.headers['x-request-id'], 'probe-at-shutdown', 'the request id is echoed at shutdown too')
  t.not(probe.json().message, 'Service Unavailable', 'the message says why, not only the status text')

  // Shutdown goes on: the listener closes and refuses new connections,
  // while the request in flight is still answered.
  releaseShutdown()
  await waitFor(async () => await connectionRefused(port), 'new connections are refused')
  await locker.query('ROLLBACK')
  const answer = await bounded(inFlight, 5_000, 'the in-flight request is answered')
  t.equal(answer.status, 404, 'the in-flight request finished normally')
  t.match(answer.json(), { statusCode: 404, error: 'Not Found', message: 'user 1 not found' })
  await bounded(closed, 5_000, 'the app closes')
})

t.test('x-request-id', async (t) => {
  const { app } = await buildTestApp(t)
  const idOf = async (headers: Record<string, string>, url = '/health/live') => {
    const response = await app.inject({ method: 'GET', url, headers })
    return response.headers['x-request-id']
  }

  t.test('a sane incoming id is echoed', async (t) => {
    t.equal(await idOf({ 'x-request-id': 'abc-123' }), 'abc-123')
    t.equal(await idOf({ 'x-request-id': 'req_1:2/3.4~!' }), 'req_1:2/3.4~!')
    const long = 'x'.repeat(128)
    t.equal(await idOf({ 'x-request-id': long }), long, '128 characters is still fine')
    t.equal(await idOf({ 'x-request-id': 'on-a-404' }, '/nowhere'), 'on-a-404', 'on errors too')
    t.equal(await idOf({ 'x-request-id': 'on-ready' }, '/health/ready'), 'on-ready')
  })

  t.test('a missing id gets a fresh uuid', async (t) => {
    const first = await idOf({})
    const second = await idOf({})
    t.match(first, UUID)
    t.match(second, UUID)
    t.not(first, second, 'one per request')
  })

  t.test('an unacceptable id is replaced by a fresh uuid', async (t) => {
    const unacceptable = ['x'.repeat(300), 'x'.repeat(129), 'has a space', 'tab\there', '']
    for (const given of unacceptable) {
      const id = await idOf({ 'x-request-id': given })
      t.match(id, UUID, `${JSON.stringify(given.slice(0, 20))} is replaced`)
      t.not(id, given)
    }
  })
})

interface HttpAnswer {
  status: number
  headers: Record<string, string | string[] | undefined>
  json: () => any
}

/** A GET over a real connection of its own, bounded in time. */
async function httpGet (port: number, path: string, headers: Record<string, string> = {}): Promise<HttpAnswer> {
  return await bounded(new Promise<HttpAnswer>((resolve, reject) => {
    get({ host: '127.0.0.1', port, path, headers, agent: false }, (response) => {
      let text = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => { text += chunk })
      response.on('end', () => resolve({ status: response.statusCode ?? 0, headers: response.headers, json: () => JSON.parse(text) }))
      response.on('error', reject)
    }).on('error', reject)
  }), 10_000, `GET ${path} is answered`)
}

/** How many of the app's connections to this database wait on a lock. */
async function lockWaiters (client: pg.Client): Promise<number> {
  // Inside a transaction the activity view is a snapshot unless cleared.
  await client.query('SELECT pg_stat_clear_snapshot()')
  const { rows } = await client.query<{ waiting: string }>(`SELECT count(*) AS waiting FROM pg_stat_activity
    WHERE datname = current_database() AND application_name = 'users-service' AND wait_event_type = 'Lock'`)
  return Number(rows[0]?.waiting)
}

async function connectionRefused (port: number): Promise<boolean> {
  const socket = net.connect(port, '127.0.0.1')
  try {
    await once(socket, 'connect')
    return false
  } catch {
    return true
  } finally {
    socket.destroy()
  }
}

/** Polls `check` every 20 ms, failing after two seconds. */
async function waitFor (check: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 2_000
  while (!await check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

async function bounded<T> (work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting until ${what}`)), ms)
  })
  try {
    return await Promise.race([work, timeout])
  } finally {
    clearTimeout(timer)
  }
}
