import { connect, type AddressInfo } from 'node:net'
import { Writable } from 'node:stream'
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib'
import t from 'tap'
import { BODY_LIMIT_BYTES, buildApp } from '../src/app.js'
import { buildTestApp, createTestDatabase, testConfig } from './helper.js'

const ERROR_KEYS = ['error', 'message', 'statusCode']

t.test('bodies that are not JSON are a 415, whatever the route', async (t) => {
  const { app, db } = await buildTestApp(t)
  const requests = [
    { method: 'POST' as const, url: '/api/users' },
    { method: 'POST' as const, url: '/api/user' },
    { method: 'PATCH' as const, url: '/api/users/1' }
  ]
  const bodies = [
    { headers: { 'content-type': 'text/plain' }, payload: '{"name":"Ada"}' },
    { headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: 'name=Ada' },
    { headers: { 'content-type': 'multipart/form-data; boundary=x' }, payload: '--x--' },
    { headers: {}, payload: undefined },
    { headers: {}, payload: '{"name":"Ada"}' }
  ]
  for (const request of requests) {
    for (const body of bodies) {
      const response = await app.inject({ ...request, ...body })
      const label = `${request.method} ${request.url} ${JSON.stringify(body.headers)}`
      t.equal(response.statusCode, 415, label)
      t.same(response.json(), {
        statusCode: 415,
        error: 'Unsupported Media Type',
        message: 'Content-Type must be application/json'
      }, label)
    }
  }
  const { rows } = await db.query('SELECT count(*)::int AS count FROM users')
  t.equal(rows[0].count, 0)
})

t.test('a body in a content coding we do not decode is a 415 naming Content-Encoding', async (t) => {
  const { app, db } = await buildTestApp(t)
  const json = JSON.stringify({ name: 'Ada' })
  const codings: Array<[string, Buffer]> = [
    ['gzip', gzipSync(json)],
    ['deflate', deflateSync(json)],
    ['br', brotliCompressSync(json)],
    ['GZIP', gzipSync(json)],
    ['gzip, identity', gzipSync(json)],
    ['x-unheard-of', Buffer.from(json)]
  ]
  for (const [method, url] of [['POST', '/api/users'], ['POST', '/api/user'], ['PATCH', '/api/users/1']] as const) {
    for (const [coding, payload] of codings) {
      const label = `${method} ${url}, Content-Encoding: ${coding}`
      const response = await app.inject({
        method, url, payload, headers: { 'content-type': 'application/json', 'content-encoding': coding }
      })
      t.equal(response.statusCode, 415, label)
      t.match(response.json(), { statusCode: 415, error: 'Unsupported Media Type', message: /^Content-Encoding / }, label)
      t.same(Object.keys(response.json()).sort(), ERROR_KEYS)
      t.equal(response.headers['accept-encoding'], 'identity', `${label}: says what it takes (RFC 9110)`)
    }
  }
  const { rows } = await db.query('SELECT count(*)::int AS count FROM users')
  t.equal(rows[0].count, 0, 'nothing was created')

  const identity = await app.inject({
    method: 'POST', url: '/api/users', payload: json, headers: { 'content-type': 'application/json', 'content-encoding': 'identity' }
  })
  t.equal(identity.statusCode, 201, 'identity is no coding at all')
})

t.test('JSON with a charset is JSON', async (t) => {
  const { app } = await buildTestApp(t)
  const response = await app.inject({
    method: 'POST',
    url: '/api/users',
    headers: { 'content-type': 'application/json; charset=utf-8' },
    payload: '{"name":"Ada"}'
  })
  t.equal(response.statusCode, 201)
})

t.test('malformed, empty and poisoned JSON are a 400', async (t) => {
  const { app } = await buildTestApp(t)
  const payloads = ['{"name":', '{name: "Ada"}', '', '   ', 'null', '{"name":"Ada"}{', '{"__proto__":{"admin":true},"name":"Ada"}', '{"constructor":{"prototype":{"admin":true}},"name":"Ada"}']
  for (const payload of payloads) {
    const response = await app.inject({
      method: 'POST', url: '/api/users', headers: { 'content-type': 'application/json' }, payload
    })
    t.equal(response.statusCode, 400, JSON.stringify(payload))
    t.same(Object.keys(response.json()).sort(), ERROR_KEYS)
    t.equal(response.json().error, 'Bad Request')
  }
})

t.test('a body over the limit is a 413 the client can read', async (t) => {
  const { app } = await buildTestApp(t)
  const response = await app.inject({
    method: 'POST',
    url: '/api/users',
    headers: { 'content-type': 'application/json' },
    payload: JSON.stringify({ name: 'x'.repeat(BODY_LIMIT_BYTES) })
  })
  t.equal(response.statusCode, 413)
  t.match(response.json(), { statusCode: 413, error: 'Payload Too Large', message: /large/ })
})

t.test('unknown routes are a JSON 404', async (t) => {
  const { app } = await buildTestApp(t)
  for (const [method, url] of [['GET', '/'], ['GET', '/api/nothing'], ['PUT', '/api/users/1'], ['POST', '/api/users/1']] as const) {
    const response = await app.inject({ method, url })
    t.equal(response.statusCode, 404, `${method} ${url}`)
    t.match(response.headers['content-type'], /^application\/json/)
    t.match(response.json(), { statusCode: 404, error: 'Not Found', message: /not found/ })
  }
})

t.test('a true bug is a 500 that tells nothing of the internals', async (t) => {
  const databaseUrl = await createTestDatabase(t)
  const app = await buildApp(testConfig(databaseUrl), { logger: false })
  t.teardown(() => app.close())
  app.get('/boom', async () => {
    throw new Error('SELECT secret FROM internals at /srv/app.js:1:1')
  })
  const response = await app.inject({ url: '/boom' })
  t.equal(response.statusCode, 500)
  t.same(Object.keys(response.json()).sort(), ERROR_KEYS)
  t.match(response.json(), { statusCode: 500, error: 'Internal Server Error' })
  t.notMatch(response.body, /SELECT|secret|\.js|at /)
})

t.test('every request is logged once, with its id, and the id is echoed', async (t) => {
  const databaseUrl = await createTestDatabase(t)
  const lines: Array<Record<string, unknown>> = []
  const stream = new Writable({
    write (chunk, _encoding, done) {
      lines.push(JSON.parse(String(chunk)))
      done()
    }
  })
  const app = await buildApp(testConfig(databaseUrl), { logger: { level: 'info', stream } })
  t.teardown(() => app.close())

  const response = await app.inject({ url: '/api/users/123', headers: { 'x-request-id': 'trace-abc.123' } })
  t.equal(response.headers['x-request-id'], 'trace-abc.123')
  const logged = lines.filter((line) => line.reqId === 'trace-abc.123')
  t.equal(logged.length, 1, 'one line')
  t.match(logged[0], { msg: 'request completed', method: 'GET', url: '/api/users/123', statusCode: 404 })
  t.type(logged[0]?.responseTime, 'number')

  const generated = await app.inject({ url: '/health/live' })
  t.match(generated.headers['x-request-id'], /^[0-9a-f-]{36}$/, 'a fresh id when none is given')
  t.notMatch(JSON.stringify(lines), /postgres:\/\//, 'the database URL is not logged')
})

t.test('requests the router refuses are logged once, like every other request', async (t) => {
  const databaseUrl = await createTestDatabase(t)
  const lines: Array<Record<string, unknown>> = []
  const stream = new Writable({
    write (chunk, _encoding, done) {
      lines.push(JSON.parse(String(chunk)))
      done()
    }
  })
  const app = await buildApp(testConfig(databaseUrl), { logger: { level: 'info', stream } })
  t.teardown(() => app.close())

  const refused = [
    ['GET', '/api/users/%zz', 400, 'bad-percent'],
    ['DELETE', `/api/users/${'1'.repeat(2_000)}`, 414, 'long-segment']
  ] as const
  for (const [method, url, statusCode, id] of refused) {
    const response = await app.inject({ method, url, headers: { 'x-request-id': id } })
    t.equal(response.statusCode, statusCode, url.slice(0, 20))
    const logged = lines.filter((line) => line.reqId === id)
    t.equal(logged.length, 1, `${statusCode}: one line`)
    t.match(logged[0], { msg: 'request completed', method, url, statusCode })
    t.type(logged[0]?.responseTime, 'number')
  }
})

t.test('requests Node cannot parse still get a JSON error in the contract\'s shape', async (t) => {
  const { app } = await buildTestApp(t)
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as AddressInfo

  async function raw (request: string): Promise<{ status: number, body: Record<string, unknown> }> {
    const socket = connect(port, '127.0.0.1')
    socket.setTimeout(5_000, () => socket.destroy())
    socket.end(request)
    let text = ''
    for await (const chunk of socket) text += String(chunk)
    const [head = '', body = ''] = text.split('\r\n\r\n')
    return { status: Number(head.split(' ')[1]), body: JSON.parse(body) }
  }

  const garbage = await raw('NOT HTTP AT ALL\r\n\r\n')
  t.equal(garbage.status, 400)
  t.same(Object.keys(garbage.body).sort(), ERROR_KEYS)

  const controlCharacter = await raw('GET /health/live HTTP/1.1\r\nHost: x\r\nX-Trace: a\u0001b\r\n\r\n')
  t.equal(controlCharacter.status, 400)
  t.match(controlCharacter.body.message, /headers\/x-trace/, 'names the header at fault')

  const huge = await raw(`GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`)
  t.equal(huge.status, 431)
  t.match(huge.body, { statusCode: 431, error: 'Request Header Fields Too Large' })
})
