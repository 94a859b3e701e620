import t from 'tap'
import { buildTestApp, createUser } from './helper.js'

const ISO_UTC = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/
const json = { 'content-type': 'application/json' }

t.test('POST /api/users creates a user and says where it lives', async (t) => {
  const { app } = await buildTestApp(t)
  const response = await app.inject({ method: 'POST', url: '/api/users', payload: { name: 'Ada', email: 'Ada@Example.com' } })
  t.equal(response.statusCode, 201)
  const user = response.json()
  t.match(user, { name: 'Ada', email: 'Ada@Example.com' }, 'stored as sent')
  t.ok(Number.isInteger(user.id) && user.id > 0, 'a positive integer id')
  t.match(user.createdAt, ISO_UTC)
  t.equal(user.updatedAt, user.createdAt)
  t.same(Object.keys(user).sort(), ['createdAt', 'email', 'id', 'name', 'updatedAt'])
  t.equal(response.headers.location, `/api/users/${user.id}`)
  t.match(response.headers['content-type'], /^application\/json/)

  const read = await app.inject({ url: `/api/users/${user.id}` })
  t.equal(read.statusCode, 200)
  t.same(read.json(), user)
})

t.test('email is optional; null and absent both mean none', async (t) => {
  const { app } = await buildTestApp(t)
  t.equal((await createUser(app, { name: 'No mail' })).email, null)
  t.equal((await createUser(app, { name: 'Null mail', email: null })).email, null)
})

t.test('names are stored exactly as sent', async (t) => {
  const { app } = await buildTestApp(t)
  const names = [
    '  padded  ',
    'MiXeD case',
    'e\u0301', // e + combining accent: two code points, kept apart
    '😀'.repeat(50), // 50 code points, 100 UTF-16 units
    'quote " backslash \\ slash /',
    'x'.repeat(50)
  ]
  for (const name of names) {
    const created = await createUser(app, { name })
    t.equal(created.name, name)
    const read = await app.inject({ url: `/api/users/${created.id}` })
    t.equal(read.json().name, name, `${JSON.stringify(name)} round-trips`)
  }
})

t.test('invalid bodies are a 400 naming the field, and store nothing', async (t) => {
  const { app, db } = await buildTestApp(t)
  const cases: Array<[unknown, RegExp]> = [
    [{}, /body\/name is required/],
    [{ name: '' }, /body\/name/],
    [{ name: ' \t\n\u00a0\u2003' }, /body\/name/],
    [{ name: 'x'.repeat(51) }, /body\/name/],
    [{ name: '😀'.repeat(51) }, /body\/name/],
    [{ name: 'a\u0000b' }, /body\/name/],
    [{ name: 'lone \ud800 surrogate' }, /body\/name/],
    [{ name: 5 }, /body\/name must be string/],
    [{ name: null }, /body\/name/],
    [{ name: ['Ada'] }, /body\/name/],
    [{ name: 'Ada', email: '' }, /body\/email/],
    [{ name: 'Ada', email: 'not-an-address' }, /body\/email/],
    [{ name: 'Ada', email: `${'a'.repeat(250)}@x.io` }, /body\/email/],
    [{ name: 'Ada', email: 42 }, /body\/email/],
    [{ name: 'Ada', admin: true }, /body\/admin is not an allowed property/],
    [{ name: 'Ada', id: 7 }, /body\/id/],
    [[{ name: 'Ada' }], /body/],
    ['Ada', /body/]
  ]
  for (const [payload, message] of cases) {
    const response = await app.inject({ method: 'POST', url: '/api/users', headers: json, payload: JSON.stringify(payload) })
    t.equal(response.statusCode, 400, JSON.stringify(payload))
    t.same(Object.keys(response.json()).sort(), ['error', 'message', 'statusCode'])
    t.match(response.json(), { statusCode: 400, error: 'Bad Request', message })
  }
  const { rows } = await db.query('SELECT count(*)::int AS count FROM users')
  t.equal(rows[0].count, 0, 'nothing was stored')
})

t.test('emails are unique without regard to case: 409', async (t) => {
  const { app, db } = await buildTestApp(t)
  await createUser(app, { name: 'Ada', email: 'ada@example.com' })
  const taken = await app.inject({ method: 'POST', url: '/api/users', payload: { name: 'Other', email: 'ADA@example.COM' } })
  t.equal(taken.statusCode, 409)
  t.match(taken.json(), { statusCode: 409, error: 'Conflict', message: /email/ })

  const second = await createUser(app, { name: 'Grace', email: 'grace@example.com' })
  const patch = await app.inject({ method: 'PATCH', url: `/api/users/${second.id}`, payload: { email: 'Ada@Example.com' } })
  t.equal(patch.statusCode, 409)

  // The database enforces it too, whatever writes to it.
  await t.rejects(db.query("INSERT INTO users (name, email) VALUES ('x', 'ADA@EXAMPLE.COM')"), { code: '23505' })
})

t.test('GET /api/users/{id}: 404 for a missing user, 400 for an id that is not one', async (t) => {
  const { app } = await buildTestApp(t)
  const missing = await app.inject({ url: '/api/users/999999' })
  t.equal(missing.statusCode, 404)
  t.match(missing.json(), { statusCode: 404, error: 'Not Found', message: /999999/ })

  for (const id of ['abc', '0', '-1', '1.5', '99999999999999999999', '9223372036854775808', '%00']) {
    const response = await app.inject({ url: `/api/users/${id}` })
    t.equal(response.statusCode, 400, `id ${id}`)
    t.match(response.json(), { statusCode: 400, error: 'Bad Request', message: /params\/id/ })
  }
})

t.test('PATCH changes only what it is given; email null clears it', async (t) => {
  const { app } = await buildTestApp(t)
  const user = await createUser(app, { name: 'Ada', email: 'ada@example.com' })

  const renamed = await app.inject({ method: 'PATCH', url: `/api/users/${user.id}`, payload: { name: 'Ada Lovelace' } })
  t.equal(renamed.statusCode, 200)
  t.match(renamed.json(), { id: user.id, name: 'Ada Lovelace', email: 'ada@example.com', createdAt: user.createdAt })
  t.ok(renamed.json().updatedAt >= user.updatedAt, 'updatedAt moves forward')

  const cleared = await app.inject({ method: 'PATCH', url: `/api/users/${user.id}`, payload: { email: null } })
  t.match(cleared.json(), { name: 'Ada Lovelace', email: null })

  const both = await app.inject({ method: 'PATCH', url: `/api/users/${user.id}`, payload: { name: 'A', email: 'a@example.com' } })
  t.match(both.json(), { name: 'A', email: 'a@example.com' })

  const read = await app.inject({ url: `/api/users/${user.id}` })
  t.same(read.json(), both.json(), 'the change is stored')
})

t.test('PATCH rejects what POST rejects, an empty change and a missing user', async (t) => {
  const { app } = await buildTestApp(t)
  const user = await createUser(app, { name: 'Ada' })
  const cases: Array<[unknown, RegExp]> = [
    [{}, /body/],
    [{ name: '' }, /body\/name/],
    [{ name: null }, /body\/name/],
    [{ email: '' }, /body\/email/],
    [{ nickname: 'x' }, /body\/nickname/]
  ]
  for (const [payload, message] of cases) {
    const response = await app.inject({ method: 'PATCH', url: `/api/users/${user.id}`, payload: payload as object })
    t.equal(response.statusCode, 400, JSON.stringify(payload))
    t.match(response.json().message, message)
  }
  const missing = await app.inject({ method: 'PATCH', url: '/api/users/999999', payload: { name: 'x' } })
  t.equal(missing.statusCode, 404)
  t.equal((await app.inject({ url: `/api/users/${user.id}` })).json().name, 'Ada', 'unchanged')
})

t.test('DELETE answers 204 with no body, then 404', async (t) => {
  const { app } = await buildTestApp(t)
  const user = await createUser(app, { name: 'Ada', email: 'ada@example.com' })
  const deleted = await app.inject({ method: 'DELETE', url: `/api/users/${user.id}` })
  t.equal(deleted.statusCode, 204)
  t.equal(deleted.body, '')
  t.equal((await app.inject({ url: `/api/users/${user.id}` })).statusCode, 404)
  const again = await app.inject({ method: 'DELETE', url: `/api/users/${user.id}` })
  t.equal(again.statusCode, 404)
  t.match(again.json(), { statusCode: 404, error: 'Not Found' })

  // Its email is free again, and its id is never reused.
  const next = await createUser(app, { name: 'Ada again', email: 'ada@example.com' })
  t.ok(next.id > user.id)
})

t.test('GET /api/users pages through everyone in ascending id order', async (t) => {
  const { app } = await buildTestApp(t)
  const created = []
  for (let i = 0; i < 7; i++) created.push(await createUser(app, { name: `user ${i}` }))

  const first = await app.inject({ url: '/api/users?limit=3' })
  t.equal(first.statusCode, 200)
  t.same(first.json().items, created.slice(0, 3))
  t.equal(first.json().nextCursor, created[2]?.id)

  const seen = []
  let after = 0
  for (let pages = 0; pages < 10; pages++) {
    const page = (await app.inject({ url: `/api/users?limit=3&after=${after}` })).json()
    seen.push(...page.items)
    if (page.nextCursor === null) break
    after = page.nextCursor
  }
  t.same(seen, created, 'every user once, in order')

  const exact = (await app.inject({ url: '/api/users?limit=7' })).json()
  t.equal(exact.items.length, 7)
  t.equal(exact.nextCursor, null, 'no cursor when nothing follows')

  const defaults = (await app.inject({ url: '/api/users' })).json()
  t.equal(defaults.items.length, 7, 'limit defaults to 50')

  const empty = await app.inject({ url: `/api/users?after=${created[6]?.id}` })
  t.same(empty.json(), { items: [], nextCursor: null })
})

t.test('a page is the JSON a serializer would write, whatever the names hold', async (t) => {
  const { app } = await buildTestApp(t)
  const names = ['quote " backslash \\ slash /', 'tab\there, line\u2028sep', '😀 e\u0301', '</script>', 'plain']
  const created = []
  for (const [index, name] of names.entries()) {
    created.push(await createUser(app, { name, email: index % 2 === 0 ? `u${index}@example.com` : null }))
  }
  const page = await app.inject({ url: '/api/users?limit=4' })
  t.equal(page.statusCode, 200)
  t.equal(page.headers['content-type'], 'application/json; charset=utf-8')
  t.equal(page.body, JSON.stringify({ items: created.slice(0, 4), nextCursor: created[3]?.id }), 'byte for byte')
  const last = await app.inject({ url: `/api/users?after=${created[3]?.id}` })
  t.equal(last.body, JSON.stringify({ items: created.slice(4), nextCursor: null }))
})

t.test('a page walk sees every user that existed throughout it exactly once', async (t) => {
  const { app } = await buildTestApp(t)
  const initial = []
  for (let i = 0; i < 6; i++) initial.push(await createUser(app, { name: `user ${i}` }))

  const seen: number[] = []
  let after = 0
  for (let pages = 0; pages < 20; pages++) {
    const page = (await app.inject({ url: `/api/users?limit=2&after=${after}` })).json()
    seen.push(...page.items.map((user: { id: number }) => user.id))
    // Writes between pages: a deletion behind the walk, one ahead, a creation.
    if (pages === 0) {
      await app.inject({ method: 'DELETE', url: `/api/users/${initial[0]?.id}` })
      await app.inject({ method: 'DELETE', url: `/api/users/${initial[4]?.id}` })
      await createUser(app, { name: 'newcomer' })
    }
    if (page.nextCursor === null) break
    after = page.nextCursor
  }
  const survivors = initial.filter((_, i) => i !== 0 && i !== 4).map((user) => user.id)
  for (const id of survivors) t.equal(seen.filter((x) => x === id).length, 1, `user ${id} seen once`)
  t.equal(new Set(seen).size, seen.length, 'no user twice')
})

t.test('bad paging queries are a 400 naming the parameter', async (t) => {
  const { app } = await buildTestApp(t)
  for (const query of ['limit=0', 'limit=1001', 'limit=abc', 'limit=1.5', 'after=-1', 'after=abc', 'limit=1&limit=2', 'page=2']) {
    const response = await app.inject({ url: `/api/users?${query}` })
    t.equal(response.statusCode, 400, query)
    t.match(response.json(), { statusCode: 400, error: 'Bad Request', message: /querystring/ })
  }
  t.equal((await app.inject({ url: '/api/users?limit=1000' })).statusCode, 200)
})
