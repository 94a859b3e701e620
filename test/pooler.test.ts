// The service behind a real PgBouncer 1.18 in transaction mode
// (DATABASE_POOLER=transaction): every route, the timeouts, a keyed create
// whose outcome is unknown, and migrations on their direct connection.
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import t, { type Test } from 'tap'
import { buildApp } from '../src/app.js'
import { loadConfig } from '../src/config.js'
import { runMigrations } from '../src/db/migrations.js'
import { migrateOptions } from '../src/startup.js'
import { createTestDatabase, serverUrl, testConfig } from './helper.js'
import { sleep, spawnDist, within } from './spawn.js'
import { startPgBouncer, type PgBouncer } from './support/pgbouncer.js'
import { brokerUrl, consume } from './support/rabbitmq.js'
import { TcpProxy } from './support/tcp-proxy.js'

const json = { 'content-type': 'application/json' }

/** The service's env behind `bouncer`, migrating on `direct`. */
function pooledEnv (bouncer: PgBouncer, direct: string, env: Record<string, string> = {}): Record<string, string> {
  return { DATABASE_URL: bouncer.url(direct), DATABASE_POOLER: 'transaction', MIGRATIONS_DATABASE_URL: direct, ...env }
}

/**
 * A migrated database and the app on it behind PgBouncer, migrated the way
 * the service migrates (so its role's timeouts are set); `throughProxy`: with
 * a proxy between the app and PgBouncer that can cut the link.
 */
async function pooledApp (t: Test, bouncer: PgBouncer, env: Record<string, string> = {}, throughProxy = false) {
  const direct = await createTestDatabase(t)
  // Teardowns run last first: this before the database is dropped.
  t.teardown(() => bouncer.release(direct))
  const serviceEnv = pooledEnv(bouncer, direct, env)
  const pooled = serviceEnv.DATABASE_URL as string
  await runMigrations(migrateOptions(loadConfig(serviceEnv), pooled))
  const proxy = throughProxy ? await TcpProxy.start({ host: '127.0.0.1', port: bouncer.port }) : undefined
  if (proxy !== undefined) t.teardown(() => proxy.close())
  const url = proxy?.url(pooled) ?? pooled
  const app = await buildApp(testConfig(url, { ...serviceEnv, DATABASE_URL: url }), { logger: false })
  t.teardown(() => app.close())
  return { app, direct, pooled, proxy }
}

/** A direct connection as the service's role, free of the timeouts that role now has by default. */
async function untimedClient (t: Test, url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  t.teardown(() => client.end())
  await client.query('SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0')
  return client
}

async function directQuery<R extends pg.QueryResultRow> (url: string, text: string, values: unknown[] = []): Promise<R[]> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return (await client.query<R>(text, values)).rows
  } finally {
    await client.end()
  }
}

t.test('every route works through PgBouncer in transaction mode, on server sessions that change under it', async (t) => {
  // Two server sessions for ten service connections: consecutive statements
  // land on different sessions, so a named statement would be missing.
  const bouncer = await startPgBouncer(t, serverUrl, { poolSize: 2 })
  const { app } = await pooledApp(t, bouncer)

  t.equal((await app.inject({ url: '/health/ready' })).statusCode, 200, 'ready')
  for (let round = 0; round < 3; round++) {
    const answers = await Promise.all(Array.from({ length: 8 }, async (_, i) => {
      const created = await app.inject({ method: 'POST', url: '/api/users', headers: json, payload: { name: `u${round}-${i}` } })
      const keyed = await app.inject({ method: 'POST', url: '/api/users', headers: { ...json, 'idempotency-key': `k-${round}-${i}` }, payload: { name: `k${round}-${i}` } })
      const replay = await app.inject({ method: 'POST', url: '/api/users', headers: { ...json, 'idempotency-key': `k-${round}-${i}` }, payload: { name: `k${round}-${i}` } })
      const user = created.json()
      const read = await app.inject({ url: `/api/users/${user.id}` })
      const notModified = await app.inject({ url: `/api/users/${user.id}`, headers: { 'if-none-match': String(read.headers.etag) } })
      const patched = await app.inject({ method: 'PATCH', url: `/api/users/${user.id}`, headers: { ...json, 'if-match': String(read.headers.etag) }, payload: { name: `v${round}-${i}` } })
      const list = await app.inject({ url: '/api/users?limit=5' })
      const legacy = await app.inject({ method: 'POST', url: '/api/user', headers: json, payload: { name: `l${round}-${i}` } })
      const legacyList = await app.inject({ url: '/api/user' })
      const head = await app.inject({ method: 'HEAD', url: '/api/user' })
      const deleted = await app.inject({ method: 'DELETE', url: `/api/users/${user.id}` })
      const gone = await app.inject({ url: `/api/users/${user.id}` })
      return [created.statusCode, keyed.statusCode, replay.statusCode, replay.headers['idempotent-replayed'], read.statusCode,
        notModified.statusCode, patched.statusCode, list.statusCode, legacy.statusCode, legacyList.statusCode, head.statusCode,
        deleted.statusCode, gone.statusCode]
    }))
    for (const answer of answers) t.strictSame(answer, [201, 201, 201, 'true', 200, 304, 200, 200, 201, 200, 200, 204, 404], `round ${round}`)
  }
  t.equal((await app.inject({ url: '/metrics' })).statusCode, 200, 'metrics')
  t.notMatch(await bouncer.log(), /unsupported startup parameter|prepared statement/i, 'PgBouncer refused nothing')
})

t.test('behind the pooler, writes record their events and the relay publishes them', async (t) => {
  const { exchange, waitFor } = await consume(t, `users_pooler_${randomBytes(6).toString('hex')}`)
  // Two server sessions: the relay's claims and marks land on changing ones.
  const bouncer = await startPgBouncer(t, serverUrl, { poolSize: 2 })
  const { app } = await pooledApp(t, bouncer, { EVENTS_AMQP_URL: brokerUrl(), EVENTS_EXCHANGE: exchange, EVENTS_POLL_INTERVAL_MS: '50' })
  for (let i = 0; i < 5; i++) {
    const created = await app.inject({ method: 'POST', url: '/api/users', headers: json, payload: { name: `e${i}`, email: `e${i}@example.com` } })
    t.equal(created.statusCode, 201)
    const patched = await app.inject({ method: 'PATCH', url: `/api/users/${created.json().id}`, headers: json, payload: { name: `f${i}` } })
    t.equal(patched.statusCode, 200)
  }
  const found = await app.inject({ url: '/api/users?email=E3@EXAMPLE.COM' })
  t.equal(found.json().items[0]?.name, 'f3', 'the email lookup works through the pooler too')
  const received = (await waitFor(10)).map((event) => event.routingKey)
  t.equal(received.filter((key) => key === 'user.created').length, 5)
  t.equal(received.filter((key) => key === 'user.updated').length, 5)
  t.notMatch(await bouncer.log(), /unsupported startup parameter|prepared statement/i, 'PgBouncer refused nothing')
})

t.test('timeouts hold behind the pooler: the server cancels a slow statement (503), and strands no transaction', async (t) => {
  const bouncer = await startPgBouncer(t, serverUrl, { poolSize: 2 })
  const { app, direct, pooled } = await pooledApp(t, bouncer, { DATABASE_STATEMENT_TIMEOUT_MS: '300' })
  const user = (await app.inject({ method: 'POST', url: '/api/users', headers: json, payload: { name: 'Ada' } })).json()

  // Every server session PgBouncer opens for the service's role starts with them.
  const settings = await directQuery<{ statement: string, idle: string }>(pooled,
    'SELECT current_setting(\'statement_timeout\') AS statement, current_setting(\'idle_in_transaction_session_timeout\') AS idle')
  t.strictSame(settings, [{ statement: '300ms', idle: '300ms' }])

  const locker = await untimedClient(t, direct)
  await locker.query('BEGIN')
  await locker.query('LOCK TABLE users IN ACCESS EXCLUSIVE MODE')
  try {
    for (const request of [{ url: `/api/users/${user.id}` }, { url: '/api/users' }, { method: 'PATCH' as const, url: `/api/users/${user.id}`, headers: json, payload: { name: 'B' } }]) {
      const answer = await within(app.inject(request), 3_000, 'an answer past the statement timeout')
      t.equal(answer.statusCode, 503, `${request.method ?? 'GET'} ${request.url}: 503`)
      t.equal(answer.json().message, 'the database is unavailable; try again shortly')
    }
    // The server's cancel, not the client's read timeout, ended them: that
    // one drops the connection, this one leaves it to the pool.
    const { rows } = await locker.query<{ cancelled: number }>(
      'SELECT count(*)::int AS cancelled FROM pg_stat_activity WHERE datname = current_database() AND application_name = \'users-service\' AND state = \'active\'')
    t.equal(rows[0]?.cancelled, 0, 'no statement of the service still waits on the lock')
  } finally {
    await locker.query('ROLLBACK')
  }
  t.equal((await app.inject({ url: `/api/users/${user.id}` })).statusCode, 200, 'after the lock, reads answer again')
})

t.test('a keyed create whose COMMIT is lost behind the pooler is settled on the real server session', async (t) => {
  const bouncer = await startPgBouncer(t, serverUrl, { poolSize: 4 })
  const { app, direct, proxy } = await pooledApp(t, bouncer, {}, true)
  if (proxy === undefined) throw new Error('a proxy was asked for')

  // A COMMIT of a key named blocked-… waits for a lock the test holds.
  const lockKey = 4242
  await directQuery(direct, `CREATE FUNCTION wait_for_test () RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_advisory_xact_lock(${lockKey}); RETURN NULL; END $$`)
  await directQuery(direct, `CREATE CONSTRAINT TRIGGER commit_waits AFTER INSERT ON idempotency_keys
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.key LIKE 'blocked-%') EXECUTE FUNCTION wait_for_test()`)
  const holder = await untimedClient(t, direct)
  await holder.query('SELECT pg_advisory_lock($1)', [lockKey])

  const key = `blocked-${randomBytes(4).toString('hex')}`
  const request = { method: 'POST' as const, url: '/api/users', headers: { ...json, 'idempotency-key': key }, payload: { name: 'Unsure' } }
  const answering = app.inject(request)
  await within((async () => {
    for (;;) {
      const { rows } = await holder.query('SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND query = \'COMMIT\' AND wait_event_type = \'Lock\'')
      if (rows.length > 0) return
      await sleep(20)
    }
  })(), 10_000, 'the COMMIT to wait on the test\'s lock')
  // The link breaks with COMMIT sent; new connections (the settling) go
  // through. PgBouncer then drops its server session, but the backend,
  // blocked, does not notice: only ending it by its real pid settles it.
  proxy.cut()
  proxy.restore()

  const answer = await within(answering, 10_000, 'the answer')
  t.equal(answer.statusCode, 503, 'settled as not committed: 503, which is then the truth')
  const waiting = await holder.query('SELECT count(*)::int AS n FROM pg_locks WHERE locktype = \'advisory\' AND NOT granted')
  t.equal(waiting.rows[0].n, 0, 'the transaction\'s real server session was ended: nothing can commit later')
  await holder.query('SELECT pg_advisory_unlock($1)', [lockKey])

  const retry = await app.inject(request)
  t.equal(retry.statusCode, 201, 'a retry with the key creates the user')
  t.not(retry.headers['idempotent-replayed'], 'true', 'as a fresh create, not a replay')
  const rows = await directQuery<{ n: number }>(direct, 'SELECT count(*)::int AS n FROM users WHERE name = \'Unsure\'')
  t.equal(rows[0]?.n, 1, 'exactly one user')
})

t.test('migrations run on MIGRATIONS_DATABASE_URL beside a service behind the pooler', async (t) => {
  const bouncer = await startPgBouncer(t, serverUrl)
  const direct = await createTestDatabase(t, { migrated: false })
  t.teardown(() => bouncer.release(direct))
  const env = { ...pooledEnv(bouncer, direct), HOST: '127.0.0.1', PORT: '0' }

  const migrated = spawnDist(t, 'migrate.js', env)
  const exit = await migrated.exitWithin(30_000)
  t.equal(exit.code, 0, migrated.stderr())
  t.match(migrated.stdout(), /migrations: applied/)

  const server = spawnDist(t, 'server.js', env)
  const line = await server.waitForLine((l) => /^Server listening at /.test(String(l.msg)), 'listening')
  const base = String(line.msg).replace('Server listening at ', '')
  t.ok(server.lines.some((l) => l.msg === 'migrations: up to date'), 'migrate-on-start found the database migrated')
  const ready = await fetch(`${base}/health/ready`)
  t.equal(ready.status, 200, 'ready behind the pooler')
  const created = await fetch(`${base}/api/users`, { method: 'POST', headers: json, body: JSON.stringify({ name: 'Ada' }) })
  t.equal(created.status, 201)
  server.child.kill('SIGTERM')
  t.equal((await server.exitWithin(10_000)).code, 0)

  const withoutDirect = spawnDist(t, 'migrate.js', { ...env, MIGRATIONS_DATABASE_URL: '' })
  t.equal((await withoutDirect.exitWithin(30_000)).code, 1)
  t.match(withoutDirect.stderr(), /^MIGRATIONS_DATABASE_URL is required when DATABASE_POOLER=transaction/)
})
