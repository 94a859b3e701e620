// The seed-compatible routes, POST and GET /api/user, as a client of the
// original Flask service sees them.
import { get } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { LightMyRequestResponse } from 'fastify'
import t, { type Test } from 'tap'
import { buildApp } from '../src/app.js'
import { buildTestApp, testConfig } from './helper.js'

// A small pool: a connection the routes forgot to release would soon show.
const { app, databaseUrl, db } = await buildTestApp(t, { DATABASE_POOL_MAX: '2' })

const ERROR_KEYS = ['error', 'message', 'statusCode']

async function countUsers (): Promise<number> {
  const { rows } = await db.query<{ count: string }>('SELECT count(*) AS count FROM users')
  return Number(rows[0]?.count)
}

async function usersInDatabase (): Promise<Array<{ id: number, name: string }>> {
  const { rows } = await db.query<{ id: string, name: string }>('SELECT id, name FROM users ORDER BY id')
  return rows.map((row) => ({ id: Number(row.id), name: row.name }))
}

function postJson (url: string, payload: unknown, headers: Record<string, string> = {}) {
  return app.inject({
    method: 'POST',
    url,
    headers: { 'content-type': 'application/json', ...headers },
    payload: JSON.stringify(payload)
  })
}

/** Checks the contract's error body and returns its message. */
function errorMessage (t: Test, response: LightMyRequestResponse, statusCode: number, error: string, what = ''): string {
  t.equal(response.statusCode, statusCode, `${what} status ${statusCode}: ${response.body}`)
  t.match(response.headers['content-type'], /^application\/json/)
  const body = response.json()
  t.same(Object.keys(body).sort(), ERROR_KEYS, 'exactly statusCode, error and message')
  t.equal(body.statusCode, statusCode)
  t.equal(body.error, error)
  t.type(body.message, 'string')
  t.notMatch(response.body, /\n\s+at /, 'no stack trace')
  return body.message
}

t.test('GET /api/user with no users is a 404', async (t) => {
  // More requests than the pool has connections: each gives its own back.
  for (let i = 0; i < 4; i++) {
    const response = await app.inject({ method: 'GET', url: '/api/user' })
    t.equal(response.statusCode, 404)
    t.match(response.headers['content-type'], /^application\/json/)
    t.strictSame(response.json(), { statusCode: 404, error: 'Not Found', message: 'Users not found.' })
  }
})

t.test('POST /api/user creates a user and answers the seed\'s shape', async (t) => {
  const response = await postJson('/api/user', { name: 'Ada' })
  t.equal(response.statusCode, 201, 'created')
  t.match(response.headers['content-type'], /^application\/json/)
  const body = response.json()
  t.ok(Number.isSafeInteger(body.id) && body.id > 0, 'id is a positive integer')
  t.strictSame(body, { id: body.id, name: 'Ada', message: 'User Ada created.' })
  t.equal(response.headers.location, `/api/users/${body.id}`)

  const read = await app.inject({ method: 'GET', url: `/api/users/${body.id}` })
  t.equal(read.statusCode, 200)
  const user = read.json()
  t.equal(user.id, body.id)
  t.equal(user.name, 'Ada')
  t.equal(user.email, null)

  for (let i = 0; i < 4; i++) {
    const list = await app.inject({ method: 'GET', url: '/api/user' })
    t.equal(list.statusCode, 200)
    t.strictSame(list.json(), [{ id: body.id, name: 'Ada' }], 'a single user is a one-item array')
  }
})

t.test('POST /api/user accepts 50 code points, even when each is two UTF-16 units', async (t) => {
  const name = '😀'.repeat(50)
  t.equal(name.length, 100, 'the name is 100 UTF-16 units')
  const response = await postJson('/api/user', { name })
  t.equal(response.statusCode, 201, 'created')
  const body = response.json()
  t.equal(body.name, name)
  t.equal(body.message, `User ${name} created.`)
  const read = await app.inject({ method: 'GET', url: `/api/users/${body.id}` })
  t.equal(read.json().name, name)
})

t.test('a name with quotes, backslashes, control characters and unicode round-trips exactly', async (t) => {
  const name = 'Zoë "Q" O\'Brien \\ \\n /\u0001\t😀 e\u0301 \u2028中文'
  t.ok([...name].length <= 50, 'the name is at most 50 code points')
  const response = await postJson('/api/user', { name })
  t.equal(response.statusCode, 201, 'created')
  const body = response.json()
  t.equal(body.name, name)
  t.equal(body.message, `User ${name} created.`)

  const read = await app.inject({ method: 'GET', url: `/api/users/${body.id}` })
  t.equal(read.json().name, name, 'GET /api/users/{id} gives it back as sent')
  const list = await app.inject({ method: 'GET', url: '/api/user' })
  t.equal(list.statusCode, 200)
  const listed = (list.json() as Array<{ id: number, name: string }>).find((user) => user.id === body.id)
  t.equal(listed?.name, name, 'GET /api/user gives it back as sent')
  const stored = await db.query<{ name: string }>('SELECT name FROM users WHERE id = $1', [body.id])
  t.equal(stored.rows[0]?.name, name, 'stored exactly as sent')
})

t.test('POST /api/user rejects what POST /api/users rejects', async (t) => {
  const before = await countUsers()
  const invalid: Array<[string, unknown]> = [
    ['missing name', {}],
    ['empty name', { name: '' }],
    ['white space only', { name: ' \t\n\u00a0\u3000' }],
    ['51 code points', { name: 'a'.repeat(51) }],
    ['51 emoji', { name: '😀'.repeat(51) }],
    ['a NUL character', { name: 'Ada\u0000Lovelace' }],
    ['a lone surrogate', { name: 'Ada \ud800' }],
    ['a lone low surrogate', { name: '\udc00' }],
    ['a number', { name: 5 }],
    ['null', { name: null }],
    ['an unknown property', { name: 'Ada', nickname: 'A' }]
  ]
  for (const [what, payload] of invalid) {
    for (const url of ['/api/users', '/api/user']) {
      const message = errorMessage(t, await postJson(url, payload), 400, 'Bad Request', `${url}, ${what}:`)
      const field = what === 'an unknown property' ? /nickname/ : /name/
      t.match(message, field, `${url}, ${what}: the message names the field (${message})`)
    }
  }
  t.equal(await countUsers(), before, 'nothing was created')
})

t.test('POST /api/user does not take an email', async (t) => {
  const before = await countUsers()
  const message = errorMessage(t, await postJson('/api/user', { name: 'Ada', email: 'ada@example.com' }), 400, 'Bad Request')
  t.match(message, /email/)
  t.equal(await countUsers(), before, 'nothing was created')
})

t.test('POST /api/user wants JSON', async (t) => {
  const before = await countUsers()
  const bodies: Array<[string, Record<string, string>, string]> = [
    ['text/plain', { 'content-type': 'text/plain' }, '{"name":"Ada"}'],
    ['a form', { 'content-type': 'application/x-www-form-urlencoded' }, 'name=Ada'],
    ['no content type', {}, '{"name":"Ada"}']
  ]
  for (const [what, headers, payload] of bodies) {
    const response = await app.inject({ method: 'POST', url: '/api/user', headers, payload })
    errorMessage(t, response, 415, 'Unsupported Media Type', what)
  }
  const malformed = await app.inject({
    method: 'POST', url: '/api/user', headers: { 'content-type': 'application/json' }, payload: '{"name":'
  })
  errorMessage(t, malformed, 400, 'Bad Request', 'malformed JSON')
  t.equal(await countUsers(), before, 'nothing was created')
})

t.test('GET /api/user lists every user as {id, name}, by id', async (t) => {
  await postJson('/api/user', { name: 'Grace' })
  await postJson('/api/users', { name: 'Linus', email: 'linus@example.com' })
  const response = await app.inject({ method: 'GET', url: '/api/user' })
  t.equal(response.statusCode, 200)
  t.match(response.headers['content-type'], /^application\/json/)
  const expected = await usersInDatabase()
  t.ok(expected.length >= 5, 'several users exist')
  t.strictSame(response.json(), expected)
  // PostgreSQL writes this body; it is byte for byte what JSON.stringify
  // writes, the earlier test's quotes, control characters and emoji included.
  t.equal(response.body, JSON.stringify(expected), 'compact JSON, escaped as JSON.stringify escapes')
})

t.test('GET /api/user streams a large table whole and in order', async (t) => {
  const before = await usersInDatabase()
  await db.query('INSERT INTO users (name) SELECT \'user \' || g FROM generate_series(1, 20000) g ORDER BY g')
  const response = await app.inject({ method: 'GET', url: '/api/user' })
  t.equal(response.statusCode, 200)
  t.match(response.headers['content-type'], /^application\/json/)
  t.ok(response.body.length > 64 * 1024, 'the body spans many chunks')

  let users: unknown
  try {
    users = JSON.parse(response.body)
  } catch (error) {
    t.fail(`the body is not JSON: ${(error as Error).message}`)
    return
  }
  t.ok(Array.isArray(users), 'an array')
  const list = users as Array<Record<string, unknown>>
  t.equal(list.length, before.length + 20_000, 'every user')

  const expected = await usersInDatabase()
  let misplaced = 0
  let badShape = 0
  let previousId = 0
  for (const [index, user] of list.entries()) {
    const keys = Object.keys(user).sort().join(',')
    if (keys !== 'id,name' || typeof user.id !== 'number' || typeof user.name !== 'string') badShape++
    if ((user.id as number) <= previousId) misplaced++
    previousId = user.id as number
    if (user.id !== expected[index]?.id || user.name !== expected[index]?.name) misplaced++
  }
  t.equal(badShape, 0, 'each item is exactly {id, name}')
  t.equal(misplaced, 0, 'ids ascend and match the table, row for row')
  t.same(list.slice(0, before.length), before, 'the earlier users come first')
  t.same(list.at(-1), { id: expected.at(-1)?.id, name: 'user 20000' }, 'the last row is there')

  // The streaming connection went back to the pool of two.
  for (let i = 0; i < 3; i++) {
    const again = await app.inject({ method: 'GET', url: `/api/users/${expected[0]?.id}` })
    t.equal(again.statusCode, 200, 'the pool still serves requests')
  }
})

t.test('a client slow to read still gets every user', async (t) => {
  // The statement timeout bounds a stalled database, not how long a client
  // takes to download the list. A short one and a client that waits a second
  // before reading show it; the table is bigger than the sockets' buffers,
  // so the stream must wait on the client.
  const slowApp = await buildApp(testConfig(databaseUrl, { DATABASE_STATEMENT_TIMEOUT_MS: '300' }), { logger: false })
  t.teardown(() => slowApp.close())
  await db.query(`INSERT INTO users (name) SELECT repeat('x', 44) || lpad(g::text, 6, '0')
    FROM generate_series(1, 130000) g ORDER BY g`)
  const { rows } = await db.query<{ count: string }>('SELECT count(*) AS count FROM users')
  const total = Number(rows[0]?.count)
  await slowApp.listen({ host: '127.0.0.1', port: 0 })
  const { port } = slowApp.server.address() as AddressInfo

  const answer = await new Promise<{ status: number, complete: boolean, body: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no full answer within 20 s')), 20_000)
    get({ host: '127.0.0.1', port, path: '/api/user', agent: false }, (response) => {
      response.pause()
      const chunks: Buffer[] = []
      response.on('data', (chunk: Buffer) => chunks.push(chunk))
      response.on('close', () => {
        clearTimeout(timer)
        resolve({ status: response.statusCode ?? 0, complete: response.complete, body: Buffer.concat(chunks).toString('utf8') })
      })
      setTimeout(() => response.resume(), 1_000)
    }).on('error', (error) => {
      clearTimeout(timer)
      reject(error)
    })
  })
  t.equal(answer.status, 200)
  t.ok(answer.complete, `the answer is complete (${answer.body.length} characters received)`)
  let users: Array<{ id: number, name: string }> = []
  try {
    users = JSON.parse(answer.body)
  } catch (error) {
    t.fail(`the body is not JSON: ${(error as Error).message}`)
  }
  t.equal(users.length, total, 'every user')
})

t.test('HEAD /api/user answers as GET would, without reading every user', async (t) => {
  const { app: headApp, db: headDb } = await buildTestApp(t)
  const empty = await headApp.inject({ method: 'HEAD', url: '/api/user' })
  t.equal(empty.statusCode, 404, 'no users: 404, as GET')
  t.match(empty.headers['content-type'], /^application\/json/)
  t.equal(empty.body, '')

  await headDb.query('INSERT INTO users (name) SELECT \'user \' || g FROM generate_series(1, 2500) g')
  const statements: string[] = []
  const reads = headApp.reads
  const query = reads.query.bind(reads)
  reads.query = (config) => {
    statements.push(config.name ?? config.text)
    return query(config)
  }
  const head = await headApp.inject({ method: 'HEAD', url: '/api/user' })
  t.equal(head.statusCode, 200, 'users: 200, as GET')
  t.match(head.headers['content-type'], /^application\/json/)
  t.equal(head.body, '')
  t.equal(statements.length, 1, `one statement, not a batch per thousand users (${statements.join(', ')})`)
  t.notMatch(statements.join(' '), /ids-and-names/, 'no user is read')

  const get = await headApp.inject({ method: 'GET', url: '/api/user' })
  t.equal(get.headers['content-type'], head.headers['content-type'], 'the same Content-Type as GET')
})
