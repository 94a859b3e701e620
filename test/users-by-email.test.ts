// GET /api/users?email=ADDRESS: a client finds a user by address without
// walking every page (issue 16).
import type { QueryConfig } from 'pg'
import t from 'tap'
import { findUsersByEmailAfter } from '../src/db/users.js'
import { buildTestApp, createUser } from './helper.js'

const lookUp = (email: string, more = '') => `/api/users?email=${encodeURIComponent(email)}${more}`

t.test('finds the one user with an address, whatever its case, as a page', async (t) => {
  const { app } = await buildTestApp(t)
  await createUser(app, { name: 'Grace', email: 'grace@example.com' })
  const ada = await createUser(app, { name: 'Ada', email: 'Ada.Lovelace@Example.com' })
  await createUser(app, { name: 'No mail' })

  for (const asked of ['Ada.Lovelace@Example.com', 'ada.lovelace@example.com', 'ADA.LOVELACE@EXAMPLE.COM']) {
    const response = await app.inject({ url: lookUp(asked) })
    t.equal(response.statusCode, 200, asked)
    t.same(response.json(), { items: [ada], nextCursor: null }, `${asked}: the user as stored, and no next page`)
  }

  const missing = await app.inject({ url: lookUp('nobody@example.com') })
  t.equal(missing.statusCode, 200)
  t.same(missing.json(), { items: [], nextCursor: null }, 'no match is an empty page, not a 404')
})

t.test('the address is compared as text, never as a pattern', async (t) => {
  const { app } = await buildTestApp(t)
  await createUser(app, { name: 'Ada', email: 'ada@example.com' })
  await createUser(app, { name: 'Percent', email: 'a%b@example.com' })
  for (const pattern of ['%@example.com', 'a_a@example.com', 'ad%@example.com']) {
    const response = await app.inject({ url: lookUp(pattern) })
    t.same(response.json(), { items: [], nextCursor: null }, `${pattern} matches nobody`)
  }
  t.equal((await app.inject({ url: lookUp('A%B@example.com') })).json().items[0]?.name, 'Percent', 'a literal % is just a character')
})

t.test('limit and after keep their meaning beside email', async (t) => {
  const { app } = await buildTestApp(t)
  const ada = await createUser(app, { name: 'Ada', email: 'ada@example.com' })
  t.same((await app.inject({ url: lookUp('ada@example.com', '&limit=1') })).json(), { items: [ada], nextCursor: null })
  t.same((await app.inject({ url: lookUp('ada@example.com', `&after=${ada.id - 1}`) })).json(), { items: [ada], nextCursor: null })
  t.same((await app.inject({ url: lookUp('ada@example.com', `&after=${ada.id}`) })).json(), { items: [], nextCursor: null },
    'a cursor at or past the user: it was on an earlier page')
  for (const more of ['&limit=0', '&limit=1001', '&after=-1', '&after=abc']) {
    const response = await app.inject({ url: lookUp('ada@example.com', more) })
    t.equal(response.statusCode, 400, more)
    t.match(response.json().message, /querystring\/(limit|after)/)
  }
})

t.test('an address POST would refuse is a 400 naming email', async (t) => {
  const { app } = await buildTestApp(t)
  const implausible = ['', 'not-an-address', 'ada@', '@example.com', 'ada @example.com', `${'a'.repeat(250)}@x.io`]
  for (const email of implausible) {
    const response = await app.inject({ url: lookUp(email) })
    t.equal(response.statusCode, 400, JSON.stringify(email))
    t.same(Object.keys(response.json()).sort(), ['error', 'message', 'statusCode'])
    t.match(response.json(), { statusCode: 400, error: 'Bad Request', message: /querystring\/email/ })
    const post = await app.inject({ method: 'POST', url: '/api/users', payload: { name: 'Ada', email } })
    t.equal(post.statusCode, 400, `POST refuses ${JSON.stringify(email)} too`)
  }
  const twice = await app.inject({ url: '/api/users?email=a@example.com&email=b@example.com' })
  t.equal(twice.statusCode, 400, 'one address at a time')
  t.match(twice.json().message, /querystring\/email/)
})

t.test('the lookup is an index scan on lower(email), not a sequential scan', async (t) => {
  const { app, db } = await buildTestApp(t)
  await db.query(`INSERT INTO users (name, email)
    SELECT 'user ' || n, 'user' || n || '@example.com' FROM generate_series(1, 20000) AS n`)
  await db.query('ANALYZE users')
  const ada = await createUser(app, { name: 'Ada', email: 'Ada@Example.com' })

  // The very statement and values the route sends.
  let sent: QueryConfig | undefined
  const found = await findUsersByEmailAfter({
    query: async (config) => {
      sent = config
      return await db.query(config)
    }
  }, 'ADA@example.com', 0)
  t.same(found.map((user) => user.id), [ada.id])
  if (sent === undefined) throw new Error('no statement was sent')

  const client = await db.connect()
  t.teardown(() => client.release())
  // A named statement ends up with a generic plan after a few runs: both plans.
  for (const mode of ['force_custom_plan', 'force_generic_plan']) {
    await client.query(`SET plan_cache_mode = ${mode}`)
    const { rows } = await client.query({ text: `EXPLAIN (FORMAT JSON) ${sent.text}`, values: sent.values })
    const plan = JSON.stringify(rows[0]['QUERY PLAN'])
    t.match(plan, /"Index Name":"users_email_lower_key"/, `${mode}: through the unique index`)
    t.notMatch(plan, /Seq Scan/, `${mode}: no sequential scan`)
  }
})

t.test('the OpenAPI document shows the email query, with an example', async (t) => {
  const { app } = await buildTestApp(t)
  const document = (await app.inject({ url: '/docs/json' })).json()
  const parameters: Array<Record<string, any>> = document.paths['/api/users'].get.parameters
  const email = parameters.find((parameter) => parameter.in === 'query' && parameter.name === 'email')
  t.ok(email, 'GET /api/users takes email')
  t.notOk(email?.required, 'optional: without it, the list as before')
  t.match(email?.schema, { type: 'string', format: 'email', maxLength: 254 })
  t.match(JSON.stringify(email), /ada@example\.com/, 'with an example address')
  t.match(email?.description ?? email?.schema?.description, /case-insensitively/)
})
