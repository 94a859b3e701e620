// Reads through pipelined connections (DATABASE_READ_PIPELINES): the same
// answers as through the pool, under concurrency, faults and recovery.
import t from 'tap'
import { buildApp } from '../src/app.js'
import { adminQuery, buildTestApp, createUser, testConfig } from './helper.js'

t.test('many concurrent reads on two pipelined connections each get their own answer', async (t) => {
  const { app } = await buildTestApp(t, { DATABASE_READ_PIPELINES: '2' })
  const users: Array<Record<string, any>> = []
  for (let i = 0; i < 20; i++) users.push(await createUser(app, { name: `user ${i}` }))
  const ids = Array.from({ length: 200 }, (_, i) => users[i % users.length]?.id as number)
  const answers = await Promise.all(ids.map((id) => app.inject({ url: `/api/users/${id}` })))
  t.same(answers.map((answer) => answer.json().id), ids, 'every answer is for the id asked')
  t.ok(answers.every((answer) => answer.statusCode === 200))

  const pages = await Promise.all([0, 5, 10, 15].map((after) => app.inject({ url: `/api/users?limit=5&after=${users[after - 1]?.id ?? 0}` })))
  t.same(pages.map((page) => page.json().items.map((u: { name: string }) => u.name)), [
    ['user 0', 'user 1', 'user 2', 'user 3', 'user 4'],
    ['user 5', 'user 6', 'user 7', 'user 8', 'user 9'],
    ['user 10', 'user 11', 'user 12', 'user 13', 'user 14'],
    ['user 15', 'user 16', 'user 17', 'user 18', 'user 19']
  ])
  const missing = await Promise.all([999998, 999999].map((id) => app.inject({ url: `/api/users/${id}` })))
  t.same(missing.map((answer) => answer.statusCode), [404, 404])
})

t.test('pipelined connections killed by the server: those reads are 503, the next ones recover', async (t) => {
  const { app, databaseUrl } = await buildTestApp(t, { DATABASE_READ_PIPELINES: '2' })
  const user = await createUser(app, { name: 'Ada' })
  await Promise.all([app.inject({ url: `/api/users/${user.id}` }), app.inject({ url: `/api/users/${user.id}` })])

  const database = new URL(databaseUrl).pathname.slice(1)
  await adminQuery(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
    WHERE datname = '${database}' AND application_name = 'users-service'`)
  await new Promise((resolve) => setTimeout(resolve, 100))

  const statuses: number[] = []
  for (let i = 0; i < 4; i++) statuses.push((await app.inject({ url: `/api/users/${user.id}` })).statusCode)
  t.ok(statuses.every((status) => status === 200 || status === 503), `only 200 or 503: ${statuses.join(',')}`)
  t.equal(statuses.at(-1), 200, 'service resumes without a restart')
})

t.test('with the database unreachable, pipelined reads are a quick 503', async (t) => {
  const app = await buildApp(testConfig('postgres://postgres@127.0.0.1:1/nothing', {
    DATABASE_READ_PIPELINES: '2', DATABASE_CONNECT_TIMEOUT_MS: '500'
  }), { logger: false })
  t.teardown(() => app.close())
  const started = Date.now()
  const answers = await Promise.all([app.inject({ url: '/api/users/1' }), app.inject({ url: '/api/users?limit=5' })])
  t.same(answers.map((answer) => answer.statusCode), [503, 503])
  t.match(answers[0]?.json(), { statusCode: 503, error: 'Service Unavailable' })
  t.ok(Date.now() - started < 2_000, 'quickly')
})
