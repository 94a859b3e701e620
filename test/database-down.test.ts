// A database that is down, silent or stalled: every route answers a quick
// 503 a client can act on, never a 500, a stack trace or a hung request.
import { once } from 'node:events'
import net from 'node:net'
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify'
import pg from 'pg'
import t, { type Test } from 'tap'
import { buildApp } from '../src/app.js'
import { buildTestApp, testConfig } from './helper.js'

const json = { 'content-type': 'application/json' }

/** Every route that needs the database, with a body it would accept. */
const DATABASE_ROUTES: InjectOptions[] = [
  { method: 'POST', url: '/api/users', headers: json, payload: { name: 'Ada', email: 'ada@example.com' } },
  { method: 'GET', url: '/api/users' },
  { method: 'GET', url: '/api/users?limit=10&after=5' },
  { method: 'GET', url: '/api/users/1' },
  { method: 'PATCH', url: '/api/users/1', headers: json, payload: { name: 'Grace' } },
  { method: 'DELETE', url: '/api/users/1' },
  { method: 'POST', url: '/api/user', headers: json, payload: { name: 'Ada' } },
  { method: 'GET', url: '/api/user' }
]

function describe (request: InjectOptions): string {
  return `${request.method} ${request.url}`
}

/** The body says nothing of the internals. */
function revealsNothing (t: Test, response: LightMyRequestResponse, what: string): void {
  t.notMatch(response.body, /\n/, `${what}: one line`)
  t.notMatch(response.body, /ECONNREFUSED|ETIMEDOUT|SELECT|INSERT|UPDATE|DELETE FROM|users_|node_modules|\.[jt]s:\d/,
    `${what}: no SQL, error codes or files`)
  t.notMatch(response.body, /\bat \S+ \(|\bat .*:\d+:\d+/, `${what}: no stack frames`)
}

/** Sends the request and checks it is a quick 503 the client can retry. */
async function expectUnavailable (t: Test, app: FastifyInstance, request: InjectOptions, withinMs: number): Promise<void> {
  const what = describe(request)
  const started = Date.now()
  const response = await app.inject(request)
  const elapsed = Date.now() - started
  t.equal(response.statusCode, 503, `${what}: 503 (${response.body})`)
  t.ok(elapsed < withinMs, `${what}: answered in ${elapsed} ms`)
  t.match(response.headers['content-type'], /^application\/json/, `${what}: JSON`)
  const retryAfter = String(response.headers['retry-after'])
  t.match(retryAfter, /^[1-9]\d*$/, `${what}: Retry-After is a number of seconds`)
  const body = response.json()
  t.same(Object.keys(body).sort(), ['error', 'message', 'statusCode'], `${what}: the error shape`)
  t.equal(body.statusCode, 503)
  t.equal(body.error, 'Service Unavailable')
  t.type(body.message, 'string')
  t.ok(body.message.length > 0, `${what}: a message`)
  revealsNothing(t, response, what)
}

/** An app whose database is at `url`, closed when the test ends. */
async function appOn (t: Test, url: string): Promise<FastifyInstance> {
  const app = await buildApp(testConfig(url, { DATABASE_CONNECT_TIMEOUT_MS: '500' }), { logger: false })
  t.teardown(() => app.close())
  return app
}

async function probes (t: Test, app: FastifyInstance): Promise<void> {
  const live = await app.inject({ method: 'GET', url: '/health/live' })
  t.equal(live.statusCode, 200, 'live: the process itself is fine')
  t.strictSame(live.json(), { status: 'ok' })

  const started = Date.now()
  const ready = await app.inject({ method: 'GET', url: '/health/ready' })
  const elapsed = Date.now() - started
  t.equal(ready.statusCode, 503, 'not ready')
  t.ok(elapsed < 2_000, `ready answered in ${elapsed} ms`)
  const body = ready.json()
  t.equal(body.statusCode, 503)
  t.equal(body.error, 'Service Unavailable')
  t.match(body.message, /database/, 'the message says what is wrong')
  revealsNothing(t, ready, 'ready')
}

t.test('nothing listens where the database should be', async (t) => {
  const app = await appOn(t, 'postgres://postgres@127.0.0.1:1/nothing')

  t.test('every database route is a quick 503 with Retry-After', async (t) => {
    for (const request of DATABASE_ROUTES) await expectUnavailable(t, app, request, 2_000)
  })

  t.test('and stays so: the pool does not wedge', async (t) => {
    // More requests than the pool holds, at once.
    const started = Date.now()
    const responses = await Promise.all(Array.from({ length: 25 }, () => app.inject({ method: 'GET', url: '/api/users/1' })))
    t.same(responses.map((response) => response.statusCode), responses.map(() => 503))
    t.ok(Date.now() - started < 3_000, `answered in ${Date.now() - started} ms`)
  })

  t.test('probes: live 200, ready 503', (t) => probes(t, app))

  t.test('a bad request is still a 400, not a 503', async (t) => {
    const response = await app.inject({ method: 'POST', url: '/api/users', headers: json, payload: { name: '' } })
    t.equal(response.statusCode, 400)
    t.match(response.json().message, /name/)
    const id = await app.inject({ method: 'GET', url: '/api/users/abc' })
    t.equal(id.statusCode, 400)
  })
})

t.test('the database accepts connections but never answers', async (t) => {
  // A server that takes the connection and says nothing: the connect
  // timeout is what saves the request.
  const sockets = new Set<net.Socket>()
  const silent = net.createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => {})
  })
  silent.listen(0, '127.0.0.1')
  await once(silent, 'listening')
  t.teardown(() => {
    for (const socket of sockets) socket.destroy()
    silent.close()
  })
  const { port } = silent.address() as net.AddressInfo
  const app = await appOn(t, `postgres://postgres@127.0.0.1:${port}/silent`)

  // At once, as clients would: each waits out the connect timeout alone.
  await Promise.all(DATABASE_ROUTES.map((request) => expectUnavailable(t, app, request, 2_000)))
  await t.test('probes: live 200, ready 503', (t) => probes(t, app))
})

t.test('a stalled database: statements time out into a 503', async (t) => {
  const { app, databaseUrl, db } = await buildTestApp(t, { DATABASE_STATEMENT_TIMEOUT_MS: '300' })
  const user = (await app.inject({ method: 'POST', url: '/api/users', headers: json, payload: { name: 'Ada' } })).json()
  t.ok(user.id > 0, 'a user exists')

  const locker = new pg.Client({ connectionString: databaseUrl })
  await locker.connect()
  t.teardown(() => locker.end())
  await locker.query('BEGIN')
  await locker.query('LOCK TABLE users IN ACCESS EXCLUSIVE MODE')
  try {
    await expectUnavailable(t, app, { method: 'GET', url: '/api/users/1' }, 2_000)
    await expectUnavailable(t, app, { method: 'GET', url: `/api/users/${user.id}` }, 2_000)
    await expectUnavailable(t, app, { method: 'POST', url: '/api/users', headers: json, payload: { name: 'Grace' } }, 2_000)
    await expectUnavailable(t, app, { method: 'GET', url: '/api/user' }, 2_000)
    await expectUnavailable(t, app, { method: 'GET', url: '/api/users' }, 2_000)
  } finally {
    await locker.query('ROLLBACK')
  }

  const missing = await app.inject({ method: 'GET', url: '/api/users/999999' })
  t.equal(missing.statusCode, 404, 'after the lock, a missing user is a 404 again')
  const found = await app.inject({ method: 'GET', url: `/api/users/${user.id}` })
  t.equal(found.statusCode, 200, 'and a present one is a 200')
  t.equal(found.json().name, 'Ada')
  const list = await app.inject({ method: 'GET', url: '/api/user' })
  t.equal(list.statusCode, 200)
  t.strictSame(list.json(), [{ id: user.id, name: 'Ada' }])
  const { rows } = await db.query<{ count: string }>('SELECT count(*) AS count FROM users')
  t.equal(Number(rows[0]?.count), 1, 'the timed-out insert left nothing behind')
})
