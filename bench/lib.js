// What bench/run.js (`npm run bench`) and bench/soak.js (`npm run soak`)
// share: tracking and stopping what they start, a throwaway database
// (DATABASE_URL's server or an embedded PostgreSQL) seeded with SQL, the
// production build started as its own process, wrk, and sampling memory.
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { chmod, mkdtemp, rm } from 'node:fs/promises'
import http from 'node:http'
import { createServer } from 'node:net'
import os from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import pg from 'pg'

export const ROOT = fileURLToPath(new URL('..', import.meta.url))
export const BENCH_DIR = join(ROOT, 'bench')
export const WRK_DIR = join(BENCH_DIR, 'wrk')
export const RESULTS_DIR = join(BENCH_DIR, 'results')
export const SERVER_JS = join(ROOT, 'dist', 'server.js')

/** The name messages start with, and the npm script that runs the program. */
const program = { name: 'bench' }
export function setProgramName (name) {
  program.name = name
}

// ---------------------------------------------------------------------------
// Children and clean-up: every process is tracked so that nothing outlives
// the run, and clean-ups run last-in first-out, once.

const children = new Set()
export const cleanups = []
let stopping = false

export function track (child) {
  if (stopping) {
    child.kill('SIGKILL')
    throw new Error('stopping')
  }
  children.add(child)
  child.once('exit', () => children.delete(child))
  return child
}

/** SIGTERM (a graceful stop), then SIGKILL after `graceMs`. */
export async function stopChild (child, graceMs = 15_000) {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = once(child, 'exit')
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
  await exited
  clearTimeout(timer)
}

export async function cleanUp () {
  stopping = true
  await Promise.all([...children].map((child) => stopChild(child, 5_000)))
  while (cleanups.length > 0) {
    const cleanup = cleanups.pop()
    await cleanup().catch((error) => console.error(`${program.name}: clean-up: ${error.message}`))
  }
}

// Ctrl-C reaches every process of the group (wrk, the service, an embedded
// PostgreSQL) as well as this one; a second one stops waiting for them.
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    console.error(`\n${program.name}: ${signal}, cleaning up (again to force)`)
    process.once(signal, () => process.exit(130))
    cleanUp().finally(() => process.exit(130))
  })
}
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL')
})

// ---------------------------------------------------------------------------
// Small helpers.

/**
 * A whole number of seconds from the environment variable `name`, from 1 to
 * `max`, or `fallback` when it is unset; anything else stops the run.
 */
export function positiveInteger (name, fallback, max = 600) {
  const text = process.env[name]
  if (text === undefined || text === '') return fallback
  if (!/^\d+$/.test(text) || Number(text) < 1 || Number(text) > max) {
    console.error(`${program.name}: ${name} must be a whole number of seconds from 1 to ${max} (got ${JSON.stringify(text)})`)
    process.exit(1)
  }
  return Number(text)
}

/** A failure the run explains in its message: no stack trace needed. */
export class BenchError extends Error {}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
export const seconds = (since) => (Date.now() - since) / 1000
export const mb = (kb) => kb / 1024

export const steps = []
/** Runs one step, printing its name and duration. */
export async function step (name, fn) {
  const started = Date.now()
  console.log(`\n> ${name}`)
  const result = await fn()
  const took = seconds(started)
  steps.push({ name, seconds: Number(took.toFixed(1)) })
  console.log(`  done in ${took.toFixed(1)} s`)
  return result
}

export function freeLoopbackPort () {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/** The run's bearer token, while a run with auth on (bench/features.js) has one. */
function authorization () {
  const token = process.env.BENCH_TOKEN
  return token === undefined || token === '' ? {} : { authorization: `Bearer ${token}` }
}

/** One HTTP request on a connection of its own; the body as a Buffer. */
export function request (url, { method = 'GET', headers = {}, body, timeoutMs = 5_000 } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers: { ...authorization(), ...headers }, agent: false, timeout: timeoutMs }, (res) => {
      const chunks = []
      res.on('data', (chunk) => chunks.push(chunk))
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }))
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(new Error(`${method} ${url}: no answer within ${timeoutMs} ms`)))
    req.on('error', reject)
    req.end(body)
  })
}

// ---------------------------------------------------------------------------
// Memory: VmRSS from /proc, for a process and its children (the workers of
// a cluster, WEB_CONCURRENCY > 1).

export function rssKb (pid) {
  try {
    const match = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return match === null ? undefined : Number(match[1])
  } catch {
    return undefined // gone
  }
}

export function processTree (pid) {
  try {
    const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim()
    return [pid, ...(kids === '' ? [] : kids.split(' ').map(Number))]
  } catch {
    return [pid]
  }
}

/** Samples every `intervalMs` until stop(); reports the largest process's peak. */
export function sampleRss (pid, intervalMs) {
  const peaks = new Map()
  let peakSum = 0
  let samples = 0
  const take = () => {
    let sum = 0
    for (const each of processTree(pid)) {
      const kb = rssKb(each)
      if (kb === undefined) continue
      sum += kb
      peaks.set(each, Math.max(peaks.get(each) ?? 0, kb))
    }
    peakSum = Math.max(peakSum, sum)
    samples++
  }
  take()
  const timer = setInterval(take, intervalMs)
  return {
    stop () {
      clearInterval(timer)
      take()
      return {
        maxRssMb: round(mb(Math.max(0, ...peaks.values())), 1),
        maxRssSumMb: round(mb(peakSum), 1),
        processes: peaks.size,
        samples,
        peaksKb: Object.fromEntries(peaks)
      }
    }
  }
}

export function round (value, digits) {
  const factor = 10 ** digits
  return Math.round(value * factor) / factor
}

// ---------------------------------------------------------------------------
// wrk.

export function wrkVersion () {
  const result = spawnSync('wrk', ['-v'], { encoding: 'utf8' })
  if (result.error !== undefined) return undefined
  return `${result.stdout}${result.stderr}`.split('\n')[0].replace(/ Copyright.*$/, '').trim()
}

/** wrk, from Debian's packages: installed here when missing and running as root. */
export function ensureWrk () {
  const found = wrkVersion()
  if (found !== undefined) return found
  const howTo = 'install it (Debian, Ubuntu: `sudo apt-get install wrk`; macOS: `brew install wrk`) and run again'
  if (process.getuid?.() !== 0 || spawnSync('apt-get', ['--version']).error !== undefined) {
    throw new BenchError(`wrk is not installed: ${howTo}`)
  }
  const apt = (args) => {
    console.log(`  apt-get ${args.join(' ')}`)
    return spawnSync('apt-get', args, {
      encoding: 'utf8',
      timeout: 300_000,
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
    })
  }
  let install = apt(['install', '-y', 'wrk'])
  // A fresh machine may have no package lists yet.
  if (install.status !== 0) {
    apt(['update'])
    install = apt(['install', '-y', 'wrk'])
  }
  const version = wrkVersion()
  if (install.status !== 0 || version === undefined) {
    throw new BenchError(`apt-get install wrk failed: ${howTo}\n${install.stderr?.trim() ?? ''}`)
  }
  return version
}

// ---------------------------------------------------------------------------
// The database.

export async function sql (url, text, values) {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return await client.query(text, values)
  } finally {
    await client.end()
  }
}

export function withDatabase (url, database) {
  const copy = new URL(url)
  copy.pathname = `/${database}`
  return copy.toString()
}

/** A PostgreSQL server to create databases on: DATABASE_URL's, or an embedded one. */
export async function prepareServer (scratch) {
  const topology = await import('./topology.js')
  if (topology.withReadReplica) {
    // The bench's own primary, whose databases the standby replicates.
    const replication = await topology.startReplication(scratch)
    route.replication = replication
    if (topology.viaPgBouncer) route.pgBouncer = await topology.startPgBouncer(replication.primaryUrl, scratch)
    return { url: replication.primaryUrl, kind: `a primary and its standby (fsync off)${topology.viaPgBouncer ? ', through PgBouncer' : ''}` }
  }
  const server = await prepareDatabaseServer(scratch)
  if (!topology.viaPgBouncer) return server
  route.pgBouncer = await topology.startPgBouncer(server.url, scratch)
  return { ...server, kind: `${server.kind}, through PgBouncer` }
}

/** BENCH_PGBOUNCER / BENCH_READ_REPLICA (bench/topology.js): how the service reaches the database. */
const route = { pgBouncer: undefined, replication: undefined }

/** The database settings of the service for `databaseUrl`, after the switches. */
async function databaseEnv (databaseUrl) {
  const env = { DATABASE_URL: databaseUrl }
  if (route.pgBouncer !== undefined) Object.assign(env, { DATABASE_URL: route.pgBouncer.url(databaseUrl), DATABASE_POOLER: 'transaction' })
  if (route.replication !== undefined) {
    await route.replication.caughtUp()
    env.DATABASE_READ_URL = route.replication.readUrl(databaseUrl)
  }
  return env
}

async function prepareDatabaseServer (scratch) {
  const given = process.env.DATABASE_URL
  if (given !== undefined && given !== '') {
    console.log(`  DATABASE_URL's server (${new URL(given).host})`)
    return { url: given, kind: `DATABASE_URL (${new URL(given).host})` }
  }
  const { startEmbeddedPostgres } = await import('../dist/db/embedded.js')
  const dataDir = join(scratch, 'data')
  const embedded = await startEmbeddedPostgres({ dataDir, persistent: false, fast: true })
  // A Ctrl-C has already stopped the cluster (it is in our process group),
  // and stop() would then wait for an exit that has happened: bounded.
  cleanups.push(() => Promise.race([embedded.stop(), sleep(5_000)]))
  console.log(`  no DATABASE_URL: a throwaway embedded PostgreSQL on port ${embedded.port} (fsync off)`)
  return { url: embedded.url, kind: 'embedded (fsync off)' }
}

export async function createDatabase (serverUrl, name) {
  const { runMigrations } = await import('../dist/db/migrations.js')
  await sql(serverUrl, `CREATE DATABASE ${name}`)
  cleanups.push(() => sql(serverUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`))
  const url = withDatabase(serverUrl, name)
  await runMigrations({
    connectionString: url,
    timeoutMs: 60_000,
    connectTimeoutMs: 5_000,
    // Behind PgBouncer, the service's timeouts become its role's defaults, as `npm run migrate` does.
    ...(route.pgBouncer === undefined ? {} : { sessionDefaults: { role: undefined, statementTimeoutMs: 5_000 } })
  })
  return url
}

/**
 * Users `from`..`to` in one INSERT: ids follow n on a fresh table, names
 * are 'user N', and every other user has an email. VACUUM ANALYZE then, so
 * that autovacuum does not start in the middle of a measured run and reads
 * do not set hint bits.
 */
export async function seed (url, from, to) {
  await sql(url, `INSERT INTO users (name, email)
    SELECT 'user ' || n, CASE WHEN n % 2 = 0 THEN 'user' || n || '@bench.example' END
    FROM generate_series($1::int, $2::int) AS n`, [from, to])
  await sql(url, 'VACUUM (ANALYZE) users')
}

// ---------------------------------------------------------------------------
// The service and the ceiling, each a process of its own.

/**
 * `node dist/server.js` as production runs it. Any configuration variable
 * in our environment is dropped (METRICS_ENABLED, DOCS_ENABLED… keep their
 * defaults) except the few that are the point of comparing runs, and
 * `extraEnv`, the run's own (a feature's settings, bench/features.js).
 */
export async function startService (databaseUrl, label, extraEnv = {}) {
  const { ConfigSchema } = await import('../dist/config.js')
  const port = await freeLoopbackPort()
  const env = { ...process.env }
  for (const name of Object.keys(ConfigSchema.properties)) delete env[name]
  for (const name of ['WEB_CONCURRENCY', 'DATABASE_POOL_MAX', 'DATABASE_READ_PIPELINES']) {
    if (process.env[name] !== undefined && process.env[name] !== '') env[name] = process.env[name]
  }
  Object.assign(env, {
    NODE_ENV: 'production',
    LOG_LEVEL: 'warn',
    HOST: '127.0.0.1',
    PORT: String(port),
    ...await databaseEnv(databaseUrl),
    MIGRATE_ON_START: 'false',
    // Open, unless a run with auth on (bench/features.js) says otherwise.
    AUTH_MODE: 'none',
    // As the image runs it (Dockerfile), unless the caller says otherwise.
    NODE_OPTIONS: process.env.NODE_OPTIONS ?? '--max-semi-space-size=4',
    ...extraEnv
  })
  const child = track(spawn(process.execPath, [SERVER_JS], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] }))
  const logs = collectLogs(child)
  const url = `http://127.0.0.1:${port}`
  const deadline = Date.now() + 30_000
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`the service (${label}) exited before it was ready:\n${logs.tail().join('\n')}`)
    }
    const ready = await request(`${url}/health/ready`, { timeoutMs: 1_000 }).catch(() => undefined)
    if (ready?.status === 200) break
    if (Date.now() > deadline) throw new Error(`the service (${label}) was not ready within 30 s:\n${logs.tail().join('\n')}`)
    await sleep(100)
  }
  console.log(`  the service (${label}) is ready on port ${port}, pid ${child.pid}`)
  return { url, pid: child.pid, child, logs, stop: () => stopChild(child) }
}

/**
 * The service logs at warn: a line is news (a 5xx, a pool error). Counted
 * by level and message so a run can say what it logged, and its last lines
 * kept for a start that fails.
 */
export function collectLogs (child) {
  const counts = new Map()
  const last = []
  const levels = { 30: 'info', 40: 'warn', 50: 'error', 60: 'fatal' }
  const onLine = (line) => {
    last.push(line)
    if (last.length > 20) last.shift()
    let key
    try {
      const entry = JSON.parse(line)
      key = `${levels[entry.level] ?? entry.level}: ${entry.msg ?? ''}${entry.err?.message !== undefined ? ` (${entry.err.message})` : ''}`
    } catch {
      key = `text: ${line}`
    }
    if (!counts.has(key) && counts.size >= 50) key = 'other lines'
    counts.set(key, (counts.get(key) ?? 0) + 1)
  }
  createInterface({ input: child.stdout }).on('line', onLine)
  createInterface({ input: child.stderr }).on('line', onLine)
  return {
    snapshot: () => new Map(counts),
    since (before) {
      const grown = {}
      for (const [key, count] of counts) {
        const more = count - (before.get(key) ?? 0)
        if (more > 0) grown[key] = more
      }
      return grown
    },
    tail: () => [...last]
  }
}

/** Answers by status from the service's own /metrics (exact with one process only). */
export async function statusCounts (url) {
  if (Number(process.env.WEB_CONCURRENCY ?? 1) > 1) return undefined
  const answer = await request(`${url}/metrics`).catch(() => undefined)
  if (answer?.status !== 200) return undefined
  const counts = {}
  for (const line of answer.body.toString('utf8').split('\n')) {
    const match = /^http_requests_total\{(.*)\} (\d+)$/.exec(line)
    if (match === null) continue
    const labels = Object.fromEntries([...match[1].matchAll(/(\w+)="([^"]*)"/g)].map((each) => [each[1], each[2]]))
    if (labels.route === '/metrics' || labels.route?.startsWith('/health')) continue
    counts[labels.status_code] = (counts[labels.status_code] ?? 0) + Number(match[2])
  }
  return counts
}

export function difference (after, before) {
  if (after === undefined || before === undefined) return undefined
  const grown = {}
  for (const [status, count] of Object.entries(after)) {
    const more = count - (before[status] ?? 0)
    if (more > 0) grown[status] = more
  }
  return grown
}

/**
 * The share of the machine's CPU time that was busy over `ms`, while this
 * run had nothing running: other work (a test run, a build) takes cores from
 * the service and the ceiling unevenly, and makes a run's figures suspect.
 */
export async function otherCpuUse (ms) {
  const times = () => {
    const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
    return { idle: fields[3] + fields[4], total: fields.reduce((sum, each) => sum + each, 0) }
  }
  try {
    const before = times()
    await sleep(ms)
    const after = times()
    return after.total === before.total ? 0 : 1 - (after.idle - before.idle) / (after.total - before.total)
  } catch {
    return 0 // no /proc/stat
  }
}

export function warnIfBusy (busy, when) {
  if (busy > 0.15) console.warn(`${program.name}: warning: the CPUs were ${percent(busy)} busy ${when}, with nothing of this run going: other work on this machine skews the figures`)
}

// ---------------------------------------------------------------------------
// The report.

export function percent (ratio) {
  return `${(ratio * 100).toFixed(1)}%`
}

export function commandOutput (command, args) {
  const result = spawnSync(command, args, { cwd: ROOT, encoding: 'utf8' })
  return result.status === 0 ? result.stdout.trim() : undefined
}

export async function machineInfo (serverUrl, wrk) {
  const settings = await sql(serverUrl, `SELECT name, setting FROM pg_settings
    WHERE name IN ('server_version', 'fsync', 'synchronous_commit', 'shared_buffers', 'max_connections')`)
  return {
    nproc: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model,
    memoryGb: round(os.totalmem() / 1024 ** 3, 1),
    kernel: os.release(),
    node: process.version,
    postgresql: (await sql(serverUrl, 'SELECT version()')).rows[0].version,
    postgresqlSettings: Object.fromEntries(settings.rows.map((row) => [row.name, row.setting])),
    wrk,
    fastify: JSON.parse(readFileSync(join(ROOT, 'node_modules', 'fastify', 'package.json'), 'utf8')).version,
    pg: JSON.parse(readFileSync(join(ROOT, 'node_modules', 'pg', 'package.json'), 'utf8')).version,
    git: commandOutput('git', ['describe', '--always', '--dirty'])
  }
}

/** Stops unless dist/ is built, and warns when it is older than src/. */
export function requireBuild () {
  if (!existsSync(SERVER_JS)) {
    throw new BenchError(`dist/ is missing: run \`npm run build\` first (\`npm run ${program.name}\` does)`)
  }
  warnIfStale()
}

/** The service settings passed on from the environment, for the opening line. */
export function serviceSettings () {
  return `service WEB_CONCURRENCY=${process.env.WEB_CONCURRENCY || '(default)'}, DATABASE_POOL_MAX=${process.env.DATABASE_POOL_MAX || '(default)'}, ` +
    `DATABASE_READ_PIPELINES=${process.env.DATABASE_READ_PIPELINES || '(default)'}` +
    `${process.env.BENCH_PGBOUNCER === '1' ? ', through PgBouncer' : ''}${process.env.BENCH_READ_REPLICA === '1' ? ', reads on a replica' : ''}`
}

/** The load tool, installed if need be, as a step: its version. */
export async function loadTool () {
  return await step('load tool', () => {
    const version = ensureWrk()
    console.log(`  ${version}`)
    return version
  })
}

/** A temporary folder of the run's own, removed at the end. */
export async function scratchFolder () {
  const scratch = await mkdtemp(join(os.tmpdir(), `users-service-${program.name}-`))
  // Run as root, an embedded PostgreSQL runs as the postgres user, who must enter it.
  await chmod(scratch, 0o755)
  cleanups.push(() => rm(scratch, { recursive: true, force: true }))
  return scratch
}

/** dist/ older than src/ means the service measured is not the code in src/. */
function warnIfStale () {
  const built = statSync(SERVER_JS).mtimeMs
  const newer = readdirSync(join(ROOT, 'src'), { recursive: true })
    .filter((file) => statSync(join(ROOT, 'src', file)).mtimeMs > built)
  if (newer.length > 0) {
    console.warn(`${program.name}: warning: dist/ is older than src/ (${newer.slice(0, 3).join(', ')}…): run \`npm run build\` (npm run ${program.name} does)`)
  }
}

// ---------------------------------------------------------------------------
// wrk and the run as a whole.

/**
 * Runs wrk with `args` to the end, killing it if it outlives its duration
 * by 30 s; its exit and output.
 */
export async function runWrkProcess (args, durationSeconds) {
  const child = track(spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'] }))
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk) => { stdout += chunk })
  child.stderr.on('data', (chunk) => { stderr += chunk })
  // wrk ends by itself; this is only in case it hangs.
  const killer = setTimeout(() => child.kill('SIGKILL'), (durationSeconds + 30) * 1000)
  const [code, signal] = await once(child, 'close')
  clearTimeout(killer)
  return { code, signal, stdout, stderr }
}

/**
 * Runs `main` within `deadlineSeconds`, then cleans up and exits: 1 on a
 * failure (a BenchError's message, any other error's stack), else the exit
 * code `main` returns, or 0.
 */
export async function runMain (main, deadlineSeconds) {
  const deadline = setTimeout(() => {
    console.error(`${program.name}: still running after ${deadlineSeconds} s: stopping`)
    cleanUp().finally(() => process.exit(1))
  }, deadlineSeconds * 1000)
  deadline.unref()

  let exitCode = 0
  try {
    exitCode = (await main()) ?? 0
  } catch (error) {
    if (!stopping) {
      console.error(`\n${program.name}: ${error instanceof BenchError ? error.message : (error.stack ?? error)}`)
      exitCode = 1
    }
  }
  // Once a signal or the deadline has started the clean-up, it exits when done.
  if (!stopping) {
    await cleanUp()
    process.exit(exitCode)
  }
}
