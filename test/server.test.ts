// The built server (`node dist/server.js`) as a container runs it: start-up
// order, graceful shutdown on a signal, and the exits a bad configuration or
// an absent database cause. Each case runs a real child process.
import { get } from 'node:http'
import net from 'node:net'
import pg from 'pg'
import t, { type Test } from 'tap'
import { createTestDatabase, urlFor } from './helper.js'
import { sleep, spawnDist, within, type LogLine, type Spawned } from './spawn.js'

const LISTENING = /^Server listening at http:\/\/127\.0\.0\.1:(\d+)$/
const UNREACHABLE_DATABASE = 'postgres://postgres@127.0.0.1:1/nothing'
/** No case may take longer than this, whatever goes wrong (a fresh object: tap writes into it). */
const CASE = () => ({ timeout: 15_000 })

interface Server extends Spawned {
  baseUrl: string
}

interface Answer {
  status: number
  body: any
}

const isListening = (line: LogLine): boolean => typeof line.msg === 'string' && LISTENING.test(line.msg)

/** Starts the server and resolves once it logs where it listens. */
async function startServer (t: Test, env: Record<string, string>): Promise<Server> {
  const spawned = spawnDist(t, 'server.js', { HOST: '127.0.0.1', PORT: '0', LOG_LEVEL: 'info', ...env })
  const line = await spawned.waitForLine(isListening, 'the "Server listening at" line')
  const port = LISTENING.exec(line.msg ?? '')?.[1]
  return Object.assign(spawned, { baseUrl: `http://127.0.0.1:${port}` })
}

/** One HTTP request over a real socket, bounded in time; JSON bodies parsed. */
async function request (url: string, init: { method?: string, json?: unknown } = {}): Promise<Answer> {
  const response = await fetch(url, {
    method: init.method ?? 'GET',
    ...(init.json === undefined
      ? {}
      : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(init.json) }),
    signal: AbortSignal.timeout(10_000)
  })
  const text = await response.text()
  let body: unknown = text
  try {
    body = JSON.parse(text)
  } catch {}
  return { status: response.status, body }
}

/**
 * A GET on a connection of its own that the client closes after the answer
 * (`Connection: close`), unlike fetch, which keeps its connections alive.
 */
async function getOnce (url: string): Promise<Answer> {
  return await within(new Promise<Answer>((resolve, reject) => {
    get(url, { agent: false }, (response) => {
      let text = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => { text += chunk })
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body: JSON.parse(text) }))
      response.on('error', reject)
    }).on('error', reject)
  }), 10_000, `GET ${url}`)
}

/** Sends a signal and resolves with the exit, bounded in time. */
async function stop (server: Spawned, signal: NodeJS.Signals = 'SIGTERM') {
  server.child.kill(signal)
  return await server.exitWithin(10_000)
}

t.test('migrations run before the server listens, so it is ready at once', CASE(), async (t) => {
  const databaseUrl = await createTestDatabase(t, { migrated: false })
  const server = await startServer(t, { DATABASE_URL: databaseUrl })

  const migrated = server.lines.findIndex((line) => line.msg === 'migrations applied')
  const listening = server.lines.findIndex(isListening)
  t.ok(migrated >= 0, 'a log line says the migrations were applied')
  t.ok(migrated < listening, 'and it comes before the listening line')
  t.match(server.lines[migrated], { applied: Array }, 'naming what was applied')
  t.ok((server.lines[migrated]?.applied as string[]).includes('1_create-users.sql'), 'the users migration among them')

  const ready = await request(`${server.baseUrl}/health/ready`)
  t.equal(ready.status, 200, 'ready right after listening')
  t.same(ready.body, { status: 'ok' })

  const created = await request(`${server.baseUrl}/api/users`, { method: 'POST', json: { name: 'Ada' } })
  t.equal(created.status, 201, 'the users table exists')
  t.match(created.body, { id: Number, name: 'Ada' })

  const exit = await stop(server)
  t.equal(exit.code, 0, 'exits 0 on SIGTERM')
})

// The same drain, from a client that keeps its connection alive (fetch, as
// most HTTP clients and proxies do) and from one that closes it.
const drainClients: Array<[string, (url: string) => Promise<Answer>]> = [
  ['a keep-alive client (fetch)', (url) => request(url)],
  ['a Connection: close client', getOnce]
]
for (const [client, get] of drainClients) {
  t.test(`SIGTERM lets an in-flight request of ${client} finish, then exits 0`, CASE(), async (t) => {
    const databaseUrl = await createTestDatabase(t, { migrated: false })
    const server = await startServer(t, {
      DATABASE_URL: databaseUrl,
      SHUTDOWN_GRACE_MS: '5000',
      DATABASE_STATEMENT_TIMEOUT_MS: '10000'
    })
    const created = await request(`${server.baseUrl}/api/users`, { method: 'POST', json: { name: 'Ada' } })
    t.equal(created.status, 201)
    const user = created.body as { id: number }

    // One connection holds the users table so the server's read has to wait;
    // another watches pg_stat_activity (whose view is frozen inside a transaction).
    const locker = new pg.Client({ connectionString: databaseUrl })
    const observer = new pg.Client({ connectionString: urlFor('postgres') })
    await locker.connect()
    t.teardown(() => locker.end().catch(() => {}))
    await observer.connect()
    t.teardown(() => observer.end().catch(() => {}))
    await locker.query('BEGIN')
    await locker.query('LOCK TABLE users IN ACCESS EXCLUSIVE MODE')

    const inFlight = get(`${server.baseUrl}/api/users/${user.id}`)
    inFlight.catch(() => {}) // awaited below; this only keeps an early failure from going unhandled

    const database = new URL(databaseUrl).pathname.slice(1)
    const blocked = await within((async () => {
      for (;;) {
        const { rows } = await observer.query<{ waiting: number }>(
          `SELECT count(*)::int AS waiting FROM pg_stat_activity
           WHERE datname = $1 AND application_name = 'users-service' AND wait_event_type = 'Lock'`,
          [database]
        )
        if ((rows[0]?.waiting ?? 0) > 0) return true
        await sleep(25)
      }
    })(), 5_000, "the server's query to wait for the lock")
    t.ok(blocked, "the server's query waits for the lock")

    const signalledAt = Date.now()
    server.child.kill('SIGTERM')
    const shuttingDown = await server.waitForLine((line) => line.msg === 'shutting down', 'the "shutting down" line', 5_000)
    t.equal(shuttingDown.signal, 'SIGTERM', 'a log line says it is shutting down on SIGTERM')
    await sleep(300)
    t.equal(server.child.exitCode, null, 'still running while the request is in flight')

    await locker.query('ROLLBACK')
    const answer = await inFlight
    t.equal(answer.status, 200, 'the in-flight request is answered')
    t.same(answer.body, created.body, "with the user's body")

    const exit = await server.exitWithin(10_000)
    t.equal(exit.code, 0, 'then the process exits 0')
    t.ok(Date.now() - signalledAt < 5_000, 'within the shutdown grace')
    t.notOk(server.lines.some((line) => /killed by timeout/.test(line.msg ?? '')), 'without being killed at the end of the grace')
  })
}

t.test('SIGINT also shuts down with exit code 0', CASE(), async (t) => {
  const databaseUrl = await createTestDatabase(t, { migrated: false })
  const server = await startServer(t, { DATABASE_URL: databaseUrl })
  const exit = await stop(server, 'SIGINT')
  t.equal(exit.code, 0)
  t.match(server.lines.find((line) => line.msg === 'shutting down'), { signal: 'SIGINT' }, 'after saying so')
})

t.test('a bad configuration exits 1 with one line on stderr naming the variable', CASE(), async (t) => {
  const cases: Array<[string, Record<string, string>, RegExp]> = [
    ['PORT=abc', { DATABASE_URL: UNREACHABLE_DATABASE, HOST: '127.0.0.1', PORT: 'abc' }, /PORT must be an integer/],
    ['no DATABASE_URL in production', { NODE_ENV: 'production', AUTH_MODE: 'none', HOST: '127.0.0.1', PORT: '0' }, /DATABASE_URL is required when NODE_ENV=production/],
    ['no key source in production', { NODE_ENV: 'production', DATABASE_URL: UNREACHABLE_DATABASE, HOST: '127.0.0.1', PORT: '0' },
      /AUTH_JWKS_URL or AUTH_PUBLIC_KEY .*required when NODE_ENV=production; set AUTH_MODE=none/],
    ['AUTH_ISSUER without a key source', { DATABASE_URL: UNREACHABLE_DATABASE, AUTH_ISSUER: 'https://issuer.example', HOST: '127.0.0.1', PORT: '0' },
      /AUTH_JWKS_URL or AUTH_PUBLIC_KEY is required/]
  ]
  const runs = cases.map(([, env]) => spawnDist(t, 'server.js', env))
  for (const [index, [name, , expected]] of cases.entries()) {
    const run = runs[index] as Spawned
    const exit = await run.exitWithin(10_000)
    t.equal(exit.code, 1, `${name}: exit code 1`)
    const lines = run.stderr().split('\n').filter((line) => line !== '')
    t.equal(lines.length, 1, `${name}: one line on stderr`)
    t.match(lines[0], expected, `${name}: naming the variable`)
    t.notOk(run.lines.some(isListening), `${name}: never listens`)
  }
})

/** Whether the database was touched: the migrations table exists once a run began. */
async function wasMigrated (databaseUrl: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  try {
    const { rows } = await client.query<{ table: string | null }>("SELECT to_regclass('migrations')::text AS table")
    return rows[0]?.table !== null
  } finally {
    await client.end()
  }
}

/** A port some other socket holds on 127.0.0.1 until the test ends. */
async function takenPort (t: Test): Promise<number> {
  const holder = net.createServer()
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => holder.close(resolve)))
  return (holder.address() as net.AddressInfo).port
}

t.test('a HOST or PORT it cannot listen on stops it before it migrates, with one line naming the variable', { timeout: 60_000 }, async (t) => {
  const port = await takenPort(t)
  const cases: Array<[string, Record<string, string>, RegExp]> = [
    ['HOST="not a host!"', { HOST: 'not a host!' }, /^invalid configuration: HOST must be a host name or IP address to listen on \(got "not a host!"\)$/],
    ['an address not on this machine', { HOST: '192.0.2.1' }, /^cannot start: HOST 192\.0\.2\.1 is not an address of this machine$/],
    ['a name that does not resolve', { HOST: 'nothing.invalid' }, /^cannot start: HOST nothing\.invalid does not resolve to an address \(/],
    ['a port in use', { PORT: String(port) }, new RegExp(`^cannot start: PORT ${port} is already in use on 127\\.0\\.0\\.1$`)],
    // A cluster's primary checks before it forks: its workers would fail one after another.
    ['a port in use, WEB_CONCURRENCY=2', { PORT: String(port), WEB_CONCURRENCY: '2' }, new RegExp(`^cannot start: PORT ${port} is already in use`)]
  ]
  // One after another: five servers starting at once load a shared machine more than this needs.
  for (const [name, env, expected] of cases) {
    const databaseUrl = await createTestDatabase(t, { migrated: false })
    const run = spawnDist(t, 'server.js', { DATABASE_URL: databaseUrl, HOST: '127.0.0.1', PORT: '0', ...env })
    const exit = await run.exitWithin(20_000)
    t.equal(exit.code, 1, `${name}: exit code 1`)
    const lines = run.stderr().split('\n').filter((line) => line !== '')
    t.equal(lines.length, 1, `${name}: one line on stderr`)
    t.match(lines[0], expected, `${name}: naming the variable`)
    t.same(run.lines, [], `${name}: nothing logged: no worker started, nothing migrated`)
    t.equal(await wasMigrated(databaseUrl), false, `${name}: the database was not touched`)
  }
})

t.test('without migrating on start, a database that is down leaves the server live but not ready', CASE(), async (t) => {
  const server = await startServer(t, {
    DATABASE_URL: UNREACHABLE_DATABASE,
    MIGRATE_ON_START: 'false',
    DATABASE_CONNECT_TIMEOUT_MS: '1000'
  })

  const live = await request(`${server.baseUrl}/health/live`)
  t.equal(live.status, 200, 'live')
  t.same(live.body, { status: 'ok' })

  const ready = await request(`${server.baseUrl}/health/ready`)
  t.equal(ready.status, 503, 'not ready')
  t.match(ready.body, { statusCode: 503, error: 'Service Unavailable', message: String }, 'with the error body')
  t.same(Object.keys(ready.body as object).sort(), ['error', 'message', 'statusCode'], 'and nothing else')

  const exit = await stop(server)
  t.equal(exit.code, 0, 'still shuts down cleanly')
})

t.test('migrating on start against a database that is down exits 1', CASE(), async (t) => {
  const run = spawnDist(t, 'server.js', {
    DATABASE_URL: UNREACHABLE_DATABASE,
    HOST: '127.0.0.1',
    PORT: '0',
    LOG_LEVEL: 'info',
    DATABASE_CONNECT_TIMEOUT_MS: '1000'
  })
  const exit = await run.exitWithin(10_000)
  t.equal(exit.code, 1)
  t.ok(run.lines.some((line) => /migrations failed/.test(line.msg ?? '')), 'a log line says the migrations failed')
  t.notOk(run.lines.some(isListening), 'it never listens')
})

t.test('WEB_CONCURRENCY=2: a primary migrates once, two workers share the port, SIGTERM stops all with 0', CASE(), async (t) => {
  const databaseUrl = await createTestDatabase(t, { migrated: false })
  const server = await startServer(t, { DATABASE_URL: databaseUrl, WEB_CONCURRENCY: '2' })
  await server.waitForLine((line) => isListening(line) && server.lines.filter(isListening).length === 2, 'both workers listening')
  t.equal(server.lines.filter((line) => line.msg === 'migrations applied').length, 1, 'migrated once, by the primary')
  t.match(server.lines.find((line) => line.msg === 'cluster started'), { workers: 2 })
  const pids = new Set(server.lines.filter(isListening).map((line) => line.pid))
  t.equal(pids.size, 2, 'two worker processes')

  const created = await request(`${server.baseUrl}/api/users`, { method: 'POST', json: { name: 'Clustered' } })
  t.equal(created.status, 201)
  const read = await request(`${server.baseUrl}/api/users/${(created.body as { id: number }).id}`)
  t.equal(read.status, 200)

  const exit = await stop(server)
  t.equal(exit.code, 0)
  t.equal(server.lines.filter((line) => line.msg === 'shutting down').length, 2, 'each worker drained')
})

t.test('WEB_CONCURRENCY=2: a worker that crashes in service is replaced, and SIGTERM still exits 0', CASE(), async (t) => {
  const databaseUrl = await createTestDatabase(t)
  const server = await startServer(t, { DATABASE_URL: databaseUrl, WEB_CONCURRENCY: '2', MIGRATE_ON_START: 'false' })
  await server.waitForLine(() => server.lines.filter(isListening).length === 2, 'both workers listening')
  const victim = server.lines.find(isListening)?.pid as number
  process.kill(victim, 'SIGKILL')

  const replaced = await server.waitForLine((line) => line.msg === 'a worker exited; starting another', 'the replacement line')
  t.match(replaced, { workerPid: victim, signal: 'SIGKILL', restartInMs: Number }, 'it names the worker that died, and when the next starts')
  t.equal(replaced.pid, server.child.pid, 'pid stays the primary\'s own')
  await server.waitForLine(() => server.lines.filter(isListening).length === 3, 'the new worker listening')
  t.equal((await request(`${server.baseUrl}/health/ready`)).status, 200, 'still serving')

  const exit = await stop(server)
  t.equal(exit.code, 0, 'a clean SIGTERM exits 0, whatever happened before')
  t.equal(server.lines.filter((line) => line.msg === 'shutting down').length, 2, 'both live workers drained')
})
