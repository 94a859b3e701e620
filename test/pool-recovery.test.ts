import t from 'tap'
import { adminQuery, buildTestApp, createUser } from './helper.js'

// A database restart or failover drops the pool's idle connections. Without
// an 'error' listener on the pool that event would crash the process.
t.test('idle connections dropped by the server are replaced, not fatal', async (t) => {
  const { app, databaseUrl } = await buildTestApp(t)
  const user = await createUser(app, { name: 'Ada' })
  const database = new URL(databaseUrl).pathname.slice(1)

  await adminQuery(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
    WHERE datname = '${database}' AND application_name = 'users-service'`)
  // Let the pool notice its connections are gone.
  await new Promise((resolve) => setTimeout(resolve, 200))

  const read = await app.inject({ url: `/api/users/${user.id}` })
  t.equal(read.statusCode, 200)
  t.equal(read.json().name, 'Ada')
})

t.test('a connection killed in the middle of a statement is a 503, then service resumes', async (t) => {
  const { app, databaseUrl, db } = await buildTestApp(t)
  const database = new URL(databaseUrl).pathname.slice(1)
  const lock = await db.connect()
  t.teardown(() => lock.release())
  await lock.query('BEGIN')
  await lock.query('LOCK TABLE users IN ACCESS EXCLUSIVE MODE')

  const pending = app.inject({ url: '/api/users/1' })
  // Wait until the request's statement is blocked on the lock, then kill it.
  for (let i = 0; i < 50; i++) {
    const { rows } = await db.query(`SELECT count(*)::int AS waiting FROM pg_stat_activity
      WHERE datname = $1 AND application_name = 'users-service' AND wait_event_type = 'Lock'`, [database])
    if (rows[0].waiting > 0) break
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  await adminQuery(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
    WHERE datname = '${database}' AND application_name = 'users-service' AND wait_event_type = 'Lock'`)
  const response = await pending
  t.equal(response.statusCode, 503)
  t.match(response.json(), { statusCode: 503, error: 'Service Unavailable' })
  t.equal(response.headers['retry-after'], '1')

  await lock.query('ROLLBACK')
  t.equal((await app.inject({ url: '/api/users/1' })).statusCode, 404, 'answers again')
})
