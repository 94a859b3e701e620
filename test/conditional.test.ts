// ETag, If-None-Match and If-Match on /api/users/{id}, as HTTP says.
import t from 'tap'
import { buildTestApp, createUser } from './helper.js'

const STRONG_TAG = /^"[^"]+"$/

t.test('every answer with one user carries its ETag, which changes with every change', async (t) => {
  const { app } = await buildTestApp(t)
  const created = await app.inject({ method: 'POST', url: '/api/users', payload: { name: 'Ada' } })
  const id = created.json().id
  const createdTag = created.headers.etag as string
  t.match(createdTag, STRONG_TAG, 'create answers with a strong ETag')

  const read = await app.inject({ url: `/api/users/${id}` })
  t.equal(read.headers.etag, createdTag, 'a read gives the same tag for the same user')

  const patched = await app.inject({ method: 'PATCH', url: `/api/users/${id}`, payload: { name: 'Ada L' } })
  t.match(patched.headers.etag, STRONG_TAG)
  t.not(patched.headers.etag, createdTag, 'a change gives a new tag')

  // Even a change to the same value is a change: the tag still moves.
  const again = await app.inject({ method: 'PATCH', url: `/api/users/${id}`, payload: { name: 'Ada L' } })
  t.not(again.headers.etag, patched.headers.etag)
  t.equal((await app.inject({ url: `/api/users/${id}` })).headers.etag, again.headers.etag)
})

t.test('If-None-Match with the current tag is a 304 with no body', async (t) => {
  const { app } = await buildTestApp(t)
  const user = await createUser(app, { name: 'Ada' })
  const { etag } = (await app.inject({ url: `/api/users/${user.id}` })).headers

  const notModified = await app.inject({ url: `/api/users/${user.id}`, headers: { 'if-none-match': etag as string } })
  t.equal(notModified.statusCode, 304)
  t.equal(notModified.body, '')
  // A Content-Length other than the 200's would make clients wait for bytes
  // that never come (wrk's connections hung on "4", the length of null).
  t.equal(notModified.headers['content-length'], undefined, 'no Content-Length a client would wait on')
  t.equal(notModified.headers.etag, etag)

  for (const header of [`"0", ${etag}`, `W/${etag}`, '*']) {
    t.equal((await app.inject({ url: `/api/users/${user.id}`, headers: { 'if-none-match': header } })).statusCode, 304, header)
  }

  const stale = await app.inject({ url: `/api/users/${user.id}`, headers: { 'if-none-match': '"0"' } })
  t.equal(stale.statusCode, 200, 'another tag: the user, in full')
  t.same(stale.json(), user)

  await app.inject({ method: 'PATCH', url: `/api/users/${user.id}`, payload: { name: 'Changed' } })
  const changed = await app.inject({ url: `/api/users/${user.id}`, headers: { 'if-none-match': etag as string } })
  t.equal(changed.statusCode, 200, 'after a change the old tag no longer matches')
  t.equal(changed.json().name, 'Changed')

  const missing = await app.inject({ url: '/api/users/999999', headers: { 'if-none-match': '*' } })
  t.equal(missing.statusCode, 404)
})

t.test('If-Match on PATCH: the current tag applies the change, a stale one is a 412 that changes nothing', async (t) => {
  const { app } = await buildTestApp(t)
  const created = await app.inject({ method: 'POST', url: '/api/users', payload: { name: 'Ada' } })
  const id = created.json().id
  const firstTag = created.headers.etag as string

  const ok = await app.inject({ method: 'PATCH', url: `/api/users/${id}`, headers: { 'if-match': firstTag }, payload: { name: 'Ada L' } })
  t.equal(ok.statusCode, 200)
  t.equal(ok.json().name, 'Ada L')

  const stale = await app.inject({ method: 'PATCH', url: `/api/users/${id}`, headers: { 'if-match': firstTag }, payload: { name: 'Lost update' } })
  t.equal(stale.statusCode, 412)
  t.match(stale.json(), { statusCode: 412, error: 'Precondition Failed', message: /If-Match/ })
  t.equal((await app.inject({ url: `/api/users/${id}` })).json().name, 'Ada L', 'nothing changed')

  const list = await app.inject({ method: 'PATCH', url: `/api/users/${id}`, headers: { 'if-match': `"0", ${ok.headers.etag as string}` }, payload: { name: 'From a list' } })
  t.equal(list.statusCode, 200, 'any tag of a list may match')

  const weak = await app.inject({ method: 'PATCH', url: `/api/users/${id}`, headers: { 'if-match': `W/${list.headers.etag as string}` }, payload: { name: 'Weak' } })
  t.equal(weak.statusCode, 412, 'a weak tag never matches If-Match (strong comparison)')

  const any = await app.inject({ method: 'PATCH', url: `/api/users/${id}`, headers: { 'if-match': '*' }, payload: { name: 'Star' } })
  t.equal(any.statusCode, 200, 'If-Match: * matches any current user')

  const gone = await app.inject({ method: 'PATCH', url: '/api/users/999999', headers: { 'if-match': '*' }, payload: { name: 'x' } })
  t.equal(gone.statusCode, 412, 'If-Match: * on a user that does not exist fails the precondition')
  const goneTagged = await app.inject({ method: 'PATCH', url: '/api/users/999999', headers: { 'if-match': '"1"' }, payload: { name: 'x' } })
  t.equal(goneTagged.statusCode, 412)
})

t.test('If-Match on DELETE: a stale tag is a 412 and the user stays', async (t) => {
  const { app } = await buildTestApp(t)
  const created = await app.inject({ method: 'POST', url: '/api/users', payload: { name: 'Ada' } })
  const id = created.json().id
  const staleTag = created.headers.etag as string
  await app.inject({ method: 'PATCH', url: `/api/users/${id}`, payload: { email: 'ada@example.com' } })

  const stale = await app.inject({ method: 'DELETE', url: `/api/users/${id}`, headers: { 'if-match': staleTag } })
  t.equal(stale.statusCode, 412)
  t.equal((await app.inject({ url: `/api/users/${id}` })).statusCode, 200, 'still there')

  const current = (await app.inject({ url: `/api/users/${id}` })).headers.etag as string
  const deleted = await app.inject({ method: 'DELETE', url: `/api/users/${id}`, headers: { 'if-match': current } })
  t.equal(deleted.statusCode, 204)
  t.equal((await app.inject({ method: 'DELETE', url: `/api/users/${id}`, headers: { 'if-match': '*' } })).statusCode, 412)
  t.equal((await app.inject({ method: 'DELETE', url: `/api/users/${id}` })).statusCode, 404, 'without If-Match: 404')
})

t.test('malformed conditional headers are a 400 naming the header', async (t) => {
  const { app } = await buildTestApp(t)
  const user = await createUser(app, { name: 'Ada' })
  for (const value of ['3', 'abc', '"unterminated', '"a" "b"']) {
    const patch = await app.inject({ method: 'PATCH', url: `/api/users/${user.id}`, headers: { 'if-match': value }, payload: { name: 'x' } })
    t.equal(patch.statusCode, 400, `If-Match: ${value}`)
    t.match(patch.json().message, /headers\/if-match/)
    const read = await app.inject({ url: `/api/users/${user.id}`, headers: { 'if-none-match': value } })
    t.equal(read.statusCode, 400, `If-None-Match: ${value}`)
  }
  t.equal((await app.inject({ url: `/api/users/${user.id}` })).json().name, 'Ada')
})

t.test('parallel PATCHes with the same If-Match: exactly one wins, the rest are 412', async (t) => {
  const { app } = await buildTestApp(t)
  const created = await app.inject({ method: 'POST', url: '/api/users', payload: { name: 'Contended' } })
  const id = created.json().id
  const etag = created.headers.etag as string
  const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => app.inject({
    method: 'PATCH', url: `/api/users/${id}`, headers: { 'if-match': etag }, payload: { name: `writer ${i}` }
  })))
  const statuses = answers.map((answer) => answer.statusCode)
  t.equal(statuses.filter((s) => s === 200).length, 1, 'one 200')
  t.equal(statuses.filter((s) => s === 412).length, 19, 'nineteen 412s')
  const winner = answers.find((answer) => answer.statusCode === 200)?.json()
  t.same((await app.inject({ url: `/api/users/${id}` })).json(), winner, 'the stored user is the winner\'s')
})
