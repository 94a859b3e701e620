// The database password never leaves the process: not on standard output
// (pino's JSON lines, at the chattiest levels), not on standard error, not in
// any answer. The built server (dist/server.js) runs as a container runs it,
// with a DATABASE_URL that carries a password, in the situations where
// libraries like to quote their connection string: a normal start, a
// database that cannot be reached (with and without migrating on start),
// and configurations that are wrong.
//
// The password is a role's own (created for this file), with characters that
// must be percent-encoded in a URL, so that a leak shows in either spelling.
import { randomBytes } from 'node:crypto'
import { createServer, type AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { adminQuery, serverUrl } from './helper.js'
import { spawnDist, type Spawned } from './spawn.js'

const LISTENING = /^Server listening at http:\/\/127\.0\.0\.1:(\d+)$/
const CASE = () => ({ timeout: 30_000 })

/** A password no other text would contain, with characters a URL must encode. */
const core = `Zq${randomBytes(6).toString('hex')}`
const password = `S3cret/P@ss:${core}%w0rd`
const encoded = encodeURIComponent(password)
const role = `secrets_${randomBytes(4).toString('hex')}`
const database = `secrets_${randomBytes(4).toString('hex')}`

/** serverUrl with this file's role and password, on `host:port/db`. */
function urlWithPassword (host: string, port: number | string, db: string): string {
  return `postgres://${role}:${encoded}@${host}:${port}/${db}`
}

/** Every line of `text` that carries the password in any spelling (raw, percent-encoded, or just its random core). */
function leakingLines (text: string): string[] {
  return text.split('\n').filter((line) => line.includes(password) || line.includes(encoded) || line.includes(core))
}

function checkNoLeak (t: Test, run: Spawned, what: string): void {
  const leaks = [...leakingLines(run.stdout()).map((line) => `stdout: ${line}`), ...leakingLines(run.stderr()).map((line) => `stderr: ${line}`)]
  t.same(leaks, [], `${what}: no output line carries the password`)
}

/** A TCP port nothing listens on (taken, then freed). */
async function closedPort (): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

async function start (t: Test, env: Record<string, string>): Promise<{ run: Spawned, baseUrl: string }> {
  const run = spawnDist(t, 'server.js', { HOST: '127.0.0.1', PORT: '0', LOG_LEVEL: 'trace', ...env })
  const line = await run.waitForLine((line) => typeof line.msg === 'string' && LISTENING.test(line.msg), 'the "Server listening at" line', 20_000)
  return { run, baseUrl: `http://127.0.0.1:${LISTENING.exec(line.msg ?? '')?.[1] ?? ''}` }
}

interface Answer {
  status: number
  text: string
}

async function ask (url: string, init: { method?: string, body?: string, type?: string } = {}): Promise<Answer> {
  const response = await fetch(url, {
    method: init.method ?? 'GET',
    ...(init.body === undefined ? {} : { body: init.body, headers: { 'content-type': init.type ?? 'application/json' } }),
    signal: AbortSignal.timeout(10_000)
  })
  // The headers are part of the answer too.
  return { status: response.status, text: `${JSON.stringify([...response.headers])}\n${await response.text()}` }
}

async function stop (t: Test, run: Spawned, what: string): Promise<void> {
  run.child.kill('SIGTERM')
  const exit = await run.exitWithin(15_000)
  t.equal(exit.code, 0, `${what}: exits 0 on SIGTERM`)
}

t.before(async () => {
  // The role's password is the secret; trust or password authentication alike accept it.
  await adminQuery(`CREATE ROLE ${role} LOGIN PASSWORD '${password}'`)
  await adminQuery(`CREATE DATABASE ${database} OWNER ${role}`)
})

t.teardown(async () => {
  await adminQuery(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`)
  await adminQuery(`DROP ROLE IF EXISTS ${role}`)
})

t.test('a normal start, requests of every kind, and a shutdown, at LOG_LEVEL=trace', CASE(), async (t) => {
  const host = new URL(serverUrl)
  const { run, baseUrl } = await start(t, { DATABASE_URL: urlWithPassword(host.hostname, host.port || 5432, database) })
  t.ok(run.lines.some((line) => line.msg === 'migrations applied'), 'the server migrated its database as the role')

  const answers: Array<[string, Answer]> = []
  const record = async (what: string, answer: Promise<Answer>): Promise<Answer> => {
    const got = await answer
    answers.push([what, got])
    return got
  }
  t.equal((await record('ready', ask(`${baseUrl}/health/ready`))).status, 200, 'ready: the password works')
  t.equal((await record('create', ask(`${baseUrl}/api/users`, { method: 'POST', body: JSON.stringify({ name: 'Ada', email: 'ada@example.com' }) }))).status, 201)
  t.equal((await record('taken', ask(`${baseUrl}/api/users`, { method: 'POST', body: JSON.stringify({ name: 'Ada', email: 'ADA@example.com' }) }))).status, 409)
  t.equal((await record('invalid', ask(`${baseUrl}/api/users`, { method: 'POST', body: '{"name":' }))).status, 400)
  t.equal((await record('not JSON', ask(`${baseUrl}/api/users`, { method: 'POST', body: 'name=Ada', type: 'text/plain' }))).status, 415)
  t.equal((await record('too large', ask(`${baseUrl}/api/users`, { method: 'POST', body: JSON.stringify({ name: 'x'.repeat(20_000) }) }))).status, 413)
  t.equal((await record('list', ask(`${baseUrl}/api/users?limit=5`))).status, 200)
  t.equal((await record('legacy list', ask(`${baseUrl}/api/user`))).status, 200)
  t.equal((await record('bad id', ask(`${baseUrl}/api/users/abc`))).status, 400)
  t.equal((await record('missing', ask(`${baseUrl}/api/users/999999`))).status, 404)
  t.equal((await record('no route', ask(`${baseUrl}/nothing`))).status, 404)
  t.equal((await record('metrics', ask(`${baseUrl}/metrics`))).status, 200)
  t.equal((await record('docs', ask(`${baseUrl}/docs/json`))).status, 200)
  for (const [what, answer] of answers) t.same(leakingLines(answer.text), [], `${what}: the answer does not carry the password`)

  await stop(t, run, 'normal start')
  t.ok(run.lines.length > answers.length, `${run.lines.length} log lines written`)
  t.same(run.lines.filter((line) => line.raw !== undefined), [], 'every stdout line is a pino JSON line')
  checkNoLeak(t, run, 'normal start')
})

t.test('the database unreachable, MIGRATE_ON_START=false: 503s that name no host, port or password', CASE(), async (t) => {
  const port = await closedPort()
  const { run, baseUrl } = await start(t, {
    DATABASE_URL: urlWithPassword('127.0.0.1', port, 'unreachable_db'),
    MIGRATE_ON_START: 'false',
    DATABASE_CONNECT_TIMEOUT_MS: '500'
  })
  const requests: Array<[string, string, { method?: string, body?: string }]> = [
    ['ready', '/health/ready', {}],
    ['create', '/api/users', { method: 'POST', body: JSON.stringify({ name: 'Ada' }) }],
    ['legacy create', '/api/user', { method: 'POST', body: JSON.stringify({ name: 'Ada' }) }],
    ['read', '/api/users/1', {}],
    ['change', '/api/users/1', { method: 'PATCH', body: JSON.stringify({ name: 'Grace' }) }],
    ['delete', '/api/users/1', { method: 'DELETE' }],
    ['list', '/api/users', {}],
    ['legacy list', '/api/user', {}]
  ]
  for (const [what, path, init] of requests) {
    const answer = await ask(baseUrl + path, init)
    t.equal(answer.status, 503, `${what}: 503`)
    t.same(leakingLines(answer.text), [], `${what}: no password in the answer`)
    const body = answer.text.slice(answer.text.indexOf('\n') + 1)
    const named = ['127.0.0.1', String(port), 'unreachable_db', role, 'ECONNREFUSED', 'postgres'].filter((internal) => body.includes(internal))
    t.same(named, [], `${what}: the answer names no host, port, database, user or driver error: ${body}`)
  }
  const live = await ask(`${baseUrl}/health/live`)
  t.equal(live.status, 200, 'still live')
  await stop(t, run, 'unreachable, not migrating')
  t.ok(run.lines.some((line) => /ECONNREFUSED/.test(JSON.stringify(line))), 'the connection failures were logged (the logs were not empty of them)')
  checkNoLeak(t, run, 'unreachable, not migrating')
})

t.test('the database unreachable, MIGRATE_ON_START=true: exit 1, with no password said', CASE(), async (t) => {
  const port = await closedPort()
  const run = spawnDist(t, 'server.js', {
    DATABASE_URL: urlWithPassword('127.0.0.1', port, 'unreachable_db'),
    HOST: '127.0.0.1',
    PORT: '0',
    LOG_LEVEL: 'trace',
    DATABASE_CONNECT_TIMEOUT_MS: '500'
  })
  const exit = await run.exitWithin(15_000)
  t.not(exit.code, 0, 'exits non-zero')
  t.ok(run.lines.some((line) => /migrations failed/.test(line.msg ?? '')), 'says the migrations failed')
  checkNoLeak(t, run, 'unreachable, migrating')
})

t.test('bad configuration values: the line naming the variable carries no password', CASE(), async (t) => {
  const port = await closedPort()
  const good = urlWithPassword('127.0.0.1', port, 'db')
  const cases: Array<[string, Record<string, string>, RegExp]> = [
    ['PORT=abc', { DATABASE_URL: good, PORT: 'abc' }, /PORT/],
    ['LOG_LEVEL=loud', { DATABASE_URL: good, LOG_LEVEL: 'loud' }, /LOG_LEVEL/],
    ['DATABASE_POOL_MAX=0', { DATABASE_URL: good, DATABASE_POOL_MAX: '0' }, /DATABASE_POOL_MAX/],
    ['MIGRATE_ON_START=maybe', { DATABASE_URL: good, MIGRATE_ON_START: 'maybe' }, /MIGRATE_ON_START/],
    ['a DATABASE_URL that is not PostgreSQL\'s', { DATABASE_URL: good.replace(/^postgres:/, 'mysql:') }, /DATABASE_URL/],
    ['a DATABASE_URL with its password not percent-encoded', { DATABASE_URL: `postgres://${role}:${password}@127.0.0.1:${port}/db` }, /DATABASE_URL/],
    ['a DATABASE_URL with a port out of range', { DATABASE_URL: urlWithPassword('127.0.0.1', 99_999, 'db') }, /DATABASE_URL/],
    ['the same, without migrating on start', { DATABASE_URL: urlWithPassword('127.0.0.1', 99_999, 'db'), MIGRATE_ON_START: 'false' }, /DATABASE_URL/]
  ]
  const runs = cases.map(([, env]) => spawnDist(t, 'server.js', { HOST: '127.0.0.1', PORT: '0', LOG_LEVEL: 'trace', DATABASE_CONNECT_TIMEOUT_MS: '500', ...env }))
  for (const [index, [what, , names]] of cases.entries()) {
    const run = runs[index] as Spawned
    // A bad value stops start-up (API.md, Operations); a server that got as far as listening is stopped here.
    // Generous: eight servers start at once, on a machine that may be busy with other test files.
    const listening = run.waitForLine((line) => typeof line.msg === 'string' && LISTENING.test(line.msg), 'listening', 20_000).then(() => undefined, () => undefined)
    const exit = await Promise.race([run.exited, listening])
    if (exit === undefined) {
      run.child.kill('SIGTERM')
      await run.exitWithin(10_000).catch(() => undefined)
    }
    t.ok(exit !== undefined && exit.code !== 0, `${what}: start-up stops with a non-zero exit`)
    const said = `${run.stderr()}\n${run.stdout()}`
    t.ok(names.test(said), `${what}: a line names the variable\n${said.slice(0, 600)}`)
    checkNoLeak(t, run, what)
  }
})

t.test('a short password that is also everyday text: log lines are still pino JSON', CASE(), async (t) => {
  // Hiding the password must not rewrite the rest of each line: with the
  // password "0", every level, time, address and id holds one.
  let port = await closedPort()
  while (String(port).includes('0')) port = await closedPort()
  const databasePort = await closedPort()
  const run = spawnDist(t, 'server.js', {
    DATABASE_URL: `postgres://app:0@127.0.0.1:${databasePort}/db`,
    HOST: '127.0.0.1',
    PORT: String(port),
    LOG_LEVEL: 'debug',
    MIGRATE_ON_START: 'false',
    DATABASE_CONNECT_TIMEOUT_MS: '500'
  })
  await run.waitForLine((line) => /Server listening at/.test(line.msg ?? line.raw ?? ''), 'the listening line', 20_000)
  t.equal((await ask(`http://127.0.0.1:${port}/health/ready`)).status, 503, 'not ready: the database is away')
  await stop(t, run, 'short password')
  const broken = run.stdout().split('\n').filter((line) => {
    try {
      const parsed: unknown = JSON.parse(line)
      const { level, time } = parsed as { level?: unknown, time?: unknown }
      return typeof level !== 'number' || typeof time !== 'number'
    } catch {
      return true
    }
  })
  t.same(broken, [], 'every stdout line is a JSON object with a numeric level and time')
})

t.test('the leak detector finds the password in every spelling', async (t) => {
  t.equal(leakingLines(`{"msg":"x","url":${JSON.stringify(`postgres://${role}:${password}@h/d`)}}`).length, 1, 'raw, in a JSON line')
  t.equal(leakingLines(`connect to postgres://${role}:${encoded}@h/d failed`).length, 1, 'percent-encoded')
  t.equal(leakingLines(`a\nredacted: ***${core}***\nb`).length, 1, 'its random core alone')
  t.same(leakingLines(`postgres://${role}:[redacted]@h/d`), [], 'nothing once redacted')
})
