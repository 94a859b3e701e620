// `npm run bench` (its `prebench` builds dist/ first; by hand:
// `npm run build && node bench/run.js`): the service's throughput against
// the HTTP ceiling, on this machine, in one bounded run.
//
//  1. a throwaway database: on DATABASE_URL's server when it is set, else in
//     a throwaway embedded PostgreSQL (fsync off); migrated;
//  2. seeded with SQL: 100,000 users for W1–W3, and a second database of
//     100 users for W4 (which reads the whole table);
//  3. the production build, `node dist/server.js`, as its own process;
//  4. W1–W4 with wrk (1 thread, 64 connections, BENCH_DURATION seconds,
//     default 10, after a 2 s warm-up), sampling the service's RSS;
//  5. the same load against bench/ceiling.js, a bare Fastify answering the
//     same bytes from memory: the ceiling each figure is a share of;
//  6. GET /api/user over 1,000,000 users, to see that it streams in flat memory;
//  7. a table, and everything as JSON in bench/results/.
//
// Everything it starts (processes, databases, the embedded cluster) is
// stopped or dropped at the end, also on failure or Ctrl-C.
import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import http from 'node:http'
import { createServer } from 'node:net'
import os from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import pg from 'pg'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const BENCH_DIR = join(ROOT, 'bench')
const WRK_DIR = join(BENCH_DIR, 'wrk')
const RESULTS_DIR = join(BENCH_DIR, 'results')
const SERVER_JS = join(ROOT, 'dist', 'server.js')

// The issue's settings: light on 2 cores, and how the Express baseline was measured.
const THREADS = 1
const CONNECTIONS = 64
const WARMUP_SECONDS = 2
const DURATION_SECONDS = positiveInteger('BENCH_DURATION', 10)
const MAIN_USERS = 100_000
const SMALL_USERS = 100
const STREAM_USERS = 1_000_000
const RSS_INTERVAL_MS = 200
const STREAM_RSS_INTERVAL_MS = 100
// Two runs of each workload (service and ceiling), each after a warm-up,
// plus a generous allowance for set-up, seeding and the streaming check.
const DEADLINE_SECONDS = 300 + 8 * (WARMUP_SECONDS + DURATION_SECONDS)

// target: the issue's goal as a share of the ceiling; express: what the
// issue's Express 5 + pg implementation reached.
const WORKLOADS = [
  {
    id: 'W1',
    name: 'GET /api/users/{id}',
    script: 'w1-get-user.lua',
    database: 'main',
    sample: { method: 'GET', path: '/api/users/50000', status: 200 },
    route: '/api/users/:id',
    target: 0.23,
    express: 0.076
  },
  {
    id: 'W2',
    name: 'GET /api/users?limit=50&after=',
    script: 'w2-list-users.lua',
    database: 'main',
    sample: { method: 'GET', path: '/api/users?limit=50&after=50000', status: 200 },
    route: '/api/users',
    target: 0.30,
    express: 0.10
  },
  {
    id: 'W3',
    name: 'POST /api/users',
    script: 'w3-create-user.lua',
    database: 'main',
    sample: { method: 'POST', path: '/api/users', body: '{"name":"bench sample"}', status: 201 },
    route: '/api/users',
    target: 0.15,
    express: 0.073
  },
  {
    id: 'W4',
    name: 'GET /api/user (100 users)',
    script: 'w4-legacy-list.lua',
    database: 'small',
    sample: { method: 'GET', path: '/api/user', status: 200 },
    route: '/api/user',
    target: 0.25,
    express: 0.12
  }
]

// ---------------------------------------------------------------------------
// Children and clean-up: every process is tracked so that nothing outlives
// the run, and clean-ups run last-in first-out, once.

const children = new Set()
const cleanups = []
let stopping = false

function track (child) {
  if (stopping) {
    child.kill('SIGKILL')
    throw new Error('stopping')
  }
  children.add(child)
  child.once('exit', () => children.delete(child))
  return child
}

/** SIGTERM (a graceful stop), then SIGKILL after `graceMs`. */
async function stopChild (child, graceMs = 15_000) {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = once(child, 'exit')
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
  await exited
  clearTimeout(timer)
}

async function cleanUp () {
  stopping = true
  await Promise.all([...children].map((child) => stopChild(child, 5_000)))
  while (cleanups.length > 0) {
    const cleanup = cleanups.pop()
    await cleanup().catch((error) => console.error(`bench: clean-up: ${error.message}`))
  }
}

// Ctrl-C reaches every process of the group (wrk, the service, an embedded
// PostgreSQL) as well as this one; a second one stops waiting for them.
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    console.error(`\nbench: ${signal}, cleaning up (again to force)`)
    process.once(signal, () => process.exit(130))
    cleanUp().finally(() => process.exit(130))
  })
}
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL')
})

// ---------------------------------------------------------------------------
// Small helpers.

function positiveInteger (name, fallback) {
  const text = process.env[name]
  if (text === undefined || text === '') return fallback
  if (!/^\d+$/.test(text) || Number(text) < 1 || Number(text) > 600) {
    console.error(`bench: ${name} must be a whole number of seconds from 1 to 600 (got ${JSON.stringify(text)})`)
    process.exit(1)
  }
  return Number(text)
}

/** A failure the run explains in its message: no stack trace needed. */
class BenchError extends Error {}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const seconds = (since) => (Date.now() - since) / 1000
const mb = (kb) => kb / 1024

const steps = []
/** Runs one step, printing its name and duration. */
async function step (name, fn) {
  const started = Date.now()
  console.log(`\n> ${name}`)
  const result = await fn()
  const took = seconds(started)
  steps.push({ name, seconds: Number(took.toFixed(1)) })
  console.log(`  done in ${took.toFixed(1)} s`)
  return result
}

function freeLoopbackPort () {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/** One HTTP request on a connection of its own; the body as a Buffer. */
function request (url, { method = 'GET', headers = {}, body, timeoutMs = 5_000 } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent: false, timeout: timeoutMs }, (res) => {
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

function rssKb (pid) {
  try {
    const match = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return match === null ? undefined : Number(match[1])
  } catch {
    return undefined // gone
  }
}

function processTree (pid) {
  try {
    const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim()
    return [pid, ...(kids === '' ? [] : kids.split(' ').map(Number))]
  } catch {
    return [pid]
  }
}

/** Samples every `intervalMs` until stop(); reports the largest process's peak. */
function sampleRss (pid, intervalMs) {
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

function round (value, digits) {
  const factor = 10 ** digits
  return Math.round(value * factor) / factor
}

// ---------------------------------------------------------------------------
// wrk.

function wrkVersion () {
  const result = spawnSync('wrk', ['-v'], { encoding: 'utf8' })
  if (result.error !== undefined) return undefined
  return `${result.stdout}${result.stderr}`.split('\n')[0].replace(/ Copyright.*$/, '').trim()
}

/** wrk, from Debian's packages: installed here when missing and running as root. */
function ensureWrk () {
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

/** One wrk run; its numbers come from the `done()` of bench/wrk/common.lua. */
async function runWrk (script, baseUrl, durationSeconds, tag) {
  const args = [
    '-t', String(THREADS), '-c', String(CONNECTIONS), '-d', `${durationSeconds}s`,
    '-s', join(WRK_DIR, script), baseUrl, '--', tag
  ]
  const child = track(spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'] }))
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk) => { stdout += chunk })
  child.stderr.on('data', (chunk) => { stderr += chunk })
  // wrk ends by itself; this is only in case it hangs.
  const killer = setTimeout(() => child.kill('SIGKILL'), (durationSeconds + 30) * 1000)
  const [code, signal] = await once(child, 'close')
  clearTimeout(killer)
  const line = stdout.split('\n').find((each) => each.startsWith('BENCH_RESULT '))
  if (code !== 0 || line === undefined) {
    throw new Error(`wrk ${script} failed (${code ?? signal}): ${(stderr || stdout).trim()}`)
  }
  const { errors, non2xx3xx, ...result } = JSON.parse(line.slice('BENCH_RESULT '.length))
  return {
    requestsPerSecond: Math.round(result.requests / (result.durationUs / 1e6)),
    p50Ms: round(result.latencyUs.p50 / 1000, 2),
    p99Ms: round(result.latencyUs.p99 / 1000, 2),
    // Socket errors (connect, read, write) and timeouts; statuses above 399 are non2xx.
    errors: Object.values(errors).reduce((sum, count) => sum + count, 0),
    errorsByKind: errors,
    non2xx: non2xx3xx,
    ...result,
    wrkOutput: stdout.split('\n').filter((each) => !each.startsWith('BENCH_RESULT ')).join('\n').trim()
  }
}

// ---------------------------------------------------------------------------
// The database.

async function sql (url, text, values) {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return await client.query(text, values)
  } finally {
    await client.end()
  }
}

function withDatabase (url, database) {
  const copy = new URL(url)
  copy.pathname = `/${database}`
  return copy.toString()
}

/** A PostgreSQL server to create databases on: DATABASE_URL's, or an embedded one. */
async function prepareServer (scratch) {
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

async function createDatabase (serverUrl, name) {
  const { runMigrations } = await import('../dist/db/migrations.js')
  await sql(serverUrl, `CREATE DATABASE ${name}`)
  cleanups.push(() => sql(serverUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`))
  const url = withDatabase(serverUrl, name)
  await runMigrations({ connectionString: url, timeoutMs: 60_000, connectTimeoutMs: 5_000 })
  return url
}

/**
 * Users `from`..`to` in one INSERT: ids follow n on a fresh table, names
 * are 'user N', and every other user has an email. VACUUM ANALYZE then, so
 * that autovacuum does not start in the middle of a measured run and reads
 * do not set hint bits.
 */
async function seed (url, from, to) {
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
 * defaults) except the two that are the point of comparing runs.
 */
async function startService (databaseUrl, label) {
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
    DATABASE_URL: databaseUrl,
    MIGRATE_ON_START: 'false',
    // As the image runs it (Dockerfile), unless the caller says otherwise.
    NODE_OPTIONS: process.env.NODE_OPTIONS ?? '--max-semi-space-size=4'
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
  return { url, pid: child.pid, logs, stop: () => stopChild(child) }
}

/**
 * The service logs at warn: a line is news (a 5xx, a pool error). Counted
 * by level and message so a run can say what it logged, and its last lines
 * kept for a start that fails.
 */
function collectLogs (child) {
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
async function statusCounts (url) {
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

function difference (after, before) {
  if (after === undefined || before === undefined) return undefined
  const grown = {}
  for (const [status, count] of Object.entries(after)) {
    const more = count - (before[status] ?? 0)
    if (more > 0) grown[status] = more
  }
  return grown
}

/** The workload's sample request: the bytes the ceiling will answer with. */
async function takeSample (url, workload) {
  const { method, path, body, status } = workload.sample
  const headers = body === undefined ? {} : { 'content-type': 'application/json' }
  const answer = await request(`${url}${path}`, { method, headers, body })
  if (answer.status !== status) {
    throw new Error(`${workload.id}: ${method} ${path} answered ${answer.status}, not ${status}: ${answer.body.toString('utf8').slice(0, 300)}`)
  }
  return {
    method,
    route: workload.route,
    status: answer.status,
    contentType: answer.headers['content-type'],
    body: answer.body.toString('utf8'),
    bytes: answer.body.length,
    headers: answer.headers
  }
}

/** The ceiling must answer exactly what the service did. */
async function checkCeiling (ceiling, workload, sample) {
  const answer = await takeSample(ceiling.url, workload)
  if (answer.body !== sample.body || answer.contentType !== sample.contentType) {
    throw new Error(`${workload.id}: the ceiling's answer differs from the service's: ` +
      `${answer.contentType} ${answer.body.slice(0, 200)} | ${sample.contentType} ${sample.body.slice(0, 200)}`)
  }
}

async function startCeiling (sample, scratch) {
  const file = join(scratch, `ceiling-${randomBytes(4).toString('hex')}.json`)
  await writeFile(file, JSON.stringify([sample]))
  const child = track(spawn(process.execPath, [join(BENCH_DIR, 'ceiling.js'), file], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] }))
  const lines = createInterface({ input: child.stdout })
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the ceiling server did not start within 15 s')), 15_000)
    lines.on('line', (line) => {
      const match = /^listening (\d+)$/.exec(line)
      if (match !== null) {
        clearTimeout(timer)
        resolve(Number(match[1]))
      }
    })
    child.once('exit', (code) => reject(new Error(`the ceiling server exited (${code})`)))
  })
  return { url: `http://127.0.0.1:${port}`, pid: child.pid, stop: () => stopChild(child) }
}

/**
 * The share of the machine's CPU time that was busy over `ms`, while this
 * run had nothing running: other work (a test run, a build) takes cores from
 * the service and the ceiling unevenly, and makes a run's figures suspect.
 */
async function otherCpuUse (ms) {
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

function warnIfBusy (busy, when) {
  if (busy > 0.15) console.warn(`bench: warning: the CPUs were ${percent(busy)} busy ${when}, with nothing of this run going: other work on this machine skews the figures`)
}

/** A warm-up run, then the measured one while sampling RSS. */
async function measure (workload, target, tag) {
  const busyBefore = await otherCpuUse(500)
  warnIfBusy(busyBefore, `before ${workload.id}`)
  await runWrk(workload.script, `${target.url}/`, WARMUP_SECONDS, `${tag}w`)
  const logsBefore = target.logs?.snapshot()
  const statusesBefore = target.logs === undefined ? undefined : await statusCounts(target.url)
  const rss = sampleRss(target.pid, RSS_INTERVAL_MS)
  const result = await runWrk(workload.script, `${target.url}/`, DURATION_SECONDS, `${tag}m`)
  const memory = rss.stop()
  const statusesAfter = target.logs === undefined ? undefined : await statusCounts(target.url)
  return {
    ...result,
    ...memory,
    cpuBusyBefore: round(busyBefore, 3),
    statuses: difference(statusesAfter, statusesBefore),
    logged: target.logs?.since(logsBefore)
  }
}

function describeRun (label, run) {
  const statuses = run.statuses === undefined ? '' : `, statuses ${JSON.stringify(run.statuses)}`
  const logged = run.logged === undefined || Object.keys(run.logged).length === 0 ? '' : `, logged ${JSON.stringify(run.logged)}`
  console.log(`  ${label}: ${run.requestsPerSecond} req/s, p50 ${run.p50Ms} ms, p99 ${run.p99Ms} ms, ` +
    `${run.errors} errors${run.errors > 0 ? ` ${JSON.stringify(run.errorsByKind)}` : ''}, ${run.non2xx} non-2xx, ` +
    `max RSS ${run.maxRssMb} MB${statuses}${logged}`)
}

async function runWorkload (workload, service, scratch, runTag) {
  return await step(`${workload.id} ${workload.name}: service, then ceiling (${WARMUP_SECONDS} s + ${DURATION_SECONDS} s each)`, async () => {
    const sample = await takeSample(service.url, workload)
    const real = await measure(workload, service, `${runTag}-${workload.id}s`)
    describeRun('service', real)
    const ceilingServer = await startCeiling(sample, scratch)
    let ceiling
    try {
      await checkCeiling(ceilingServer, workload, sample)
      ceiling = await measure(workload, ceilingServer, `${runTag}-${workload.id}c`)
    } finally {
      await ceilingServer.stop()
    }
    describeRun('ceiling', ceiling)
    // The body is in the service's answer; its size and headers are enough here.
    const { body, ...shown } = sample
    return {
      id: workload.id,
      name: workload.name,
      target: workload.target,
      express: workload.express,
      sample: shown,
      service: real,
      ceiling,
      ratio: round(real.requestsPerSecond / ceiling.requestsPerSecond, 4)
    }
  })
}

// ---------------------------------------------------------------------------
// Streaming: GET /api/user over a million users, in flat memory.

/** Downloads `url`, counting bytes and rows ('{"id"' starts each one) as they pass. */
function download (url) {
  const needle = Buffer.from('{"id"')
  return new Promise((resolve, reject) => {
    const started = Date.now()
    const req = http.get(url, { agent: false, timeout: 60_000 }, (res) => {
      let bytes = 0
      let rows = 0
      let first
      let last
      let carry = Buffer.alloc(0)
      res.on('data', (chunk) => {
        bytes += chunk.length
        first ??= chunk[0]
        last = chunk[chunk.length - 1]
        // A row's start may straddle two chunks: keep the tail of this one.
        const buffer = carry.length === 0 ? chunk : Buffer.concat([carry, chunk])
        for (let at = buffer.indexOf(needle); at !== -1; at = buffer.indexOf(needle, at + needle.length)) rows++
        carry = buffer.subarray(Math.max(0, buffer.length - needle.length + 1))
      })
      res.on('end', () => resolve({
        status: res.statusCode,
        transferEncoding: res.headers['transfer-encoding'],
        bytes,
        rows,
        wellFormed: first === 0x5b && last === 0x5d, // [ … ]
        seconds: seconds(started)
      }))
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(new Error('GET /api/user: nothing for 60 s')))
    req.on('error', reject)
  })
}

async function streamingCheck (url) {
  const service = await startService(url, `${STREAM_USERS.toLocaleString('en-US')} users`)
  try {
    // Let start-up's garbage settle before taking the baseline.
    await sleep(1_000)
    const before = Object.fromEntries(processTree(service.pid).map((pid) => [pid, rssKb(pid) ?? 0]))
    const rssBeforeKb = Math.max(...Object.values(before))
    const rss = sampleRss(service.pid, STREAM_RSS_INTERVAL_MS)
    const result = await download(`${service.url}/api/user`)
    const memory = rss.stop()
    // The largest growth of any one process (with a cluster, one worker serves it).
    const growthKb = Math.max(0, ...Object.entries(memory.peaksKb).map(([pid, peak]) => peak - (before[pid] ?? peak)))
    const streaming = {
      ...result,
      expectedRows: STREAM_USERS,
      mb: round(result.bytes / 1024 / 1024, 1),
      seconds: round(result.seconds, 2),
      rssBeforeMb: round(mb(rssBeforeKb), 1),
      maxRssMb: memory.maxRssMb,
      rssGrowthMb: round(mb(growthKb), 1),
      growthTargetMb: 50,
      samples: memory.samples
    }
    console.log(`  ${streaming.rows} rows, ${streaming.mb} MB in ${streaming.seconds} s (status ${streaming.status}, ${streaming.transferEncoding ?? 'no'} transfer-encoding); ` +
      `RSS ${streaming.rssBeforeMb} MB before, ${streaming.maxRssMb} MB at most, growth ${streaming.rssGrowthMb} MB`)
    return streaming
  } finally {
    await service.stop()
  }
}

// ---------------------------------------------------------------------------
// The report.

function percent (ratio) {
  return `${(ratio * 100).toFixed(1)}%`
}

function printTable (workloads, streaming) {
  const header = ['workload', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'non-2xx', 'max RSS MB',
    'ceiling req/s', 'ratio', 'target', 'met', 'Express ratio']
  const rows = workloads.map((each) => [
    `${each.id} ${each.name}`,
    each.service.requestsPerSecond.toLocaleString('en-US'),
    each.service.p50Ms.toFixed(2),
    each.service.p99Ms.toFixed(2),
    String(each.service.errors),
    String(each.service.non2xx),
    each.service.maxRssMb.toFixed(1),
    each.ceiling.requestsPerSecond.toLocaleString('en-US'),
    percent(each.ratio),
    percent(each.target),
    each.ratio >= each.target ? 'yes' : 'no',
    percent(each.express)
  ])
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column].length)))
  const line = (cells) => '| ' + cells.map((cell, column) => column === 0 ? cell.padEnd(widths[column]) : cell.padStart(widths[column])).join(' | ') + ' |'
  console.log('')
  console.log(line(header))
  console.log('|' + widths.map((width, column) => column === 0 ? ` ${'-'.repeat(width)} ` : ` ${'-'.repeat(width - 1)}: `).join('|') + '|')
  for (const row of rows) console.log(line(row))
  console.log(`\nStreaming GET /api/user over ${streaming.expectedRows.toLocaleString('en-US')} users: ${streaming.rows.toLocaleString('en-US')} rows, ` +
    `${streaming.mb} MB in ${streaming.seconds} s; RSS ${streaming.rssBeforeMb} MB before, +${streaming.rssGrowthMb} MB at most ` +
    `(target < ${streaming.growthTargetMb} MB: ${streaming.rssGrowthMb < streaming.growthTargetMb ? 'met' : 'not met'})`)
}

function commandOutput (command, args) {
  const result = spawnSync(command, args, { cwd: ROOT, encoding: 'utf8' })
  return result.status === 0 ? result.stdout.trim() : undefined
}

async function machineInfo (serverUrl, wrk) {
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

/** dist/ older than src/ means the service measured is not the code in src/. */
function warnIfStale () {
  const built = statSync(SERVER_JS).mtimeMs
  const newer = readdirSync(join(ROOT, 'src'), { recursive: true })
    .filter((file) => statSync(join(ROOT, 'src', file)).mtimeMs > built)
  if (newer.length > 0) {
    console.warn(`bench: warning: dist/ is older than src/ (${newer.slice(0, 3).join(', ')}…): run \`npm run build\` (npm run bench does)`)
  }
}

// ---------------------------------------------------------------------------

async function main () {
  const started = Date.now()
  const startedAt = new Date()
  if (!existsSync(SERVER_JS)) {
    throw new BenchError('dist/ is missing: run `npm run build` first (`npm run bench` does)')
  }
  warnIfStale()
  const runTag = randomBytes(4).toString('hex')
  const busyAtStart = await otherCpuUse(1_000)
  console.log(`bench: wrk, ${THREADS} thread, ${CONNECTIONS} connections, ${DURATION_SECONDS} s runs after ${WARMUP_SECONDS} s warm-ups; ` +
    `service WEB_CONCURRENCY=${process.env.WEB_CONCURRENCY || '(default)'}, DATABASE_POOL_MAX=${process.env.DATABASE_POOL_MAX || '(default)'}, DATABASE_READ_PIPELINES=${process.env.DATABASE_READ_PIPELINES || '(default)'}; ` +
    `${os.availableParallelism()} cores, ${percent(busyAtStart)} busy before the start`)
  warnIfBusy(busyAtStart, 'before the start')

  const wrk = await step('load tool', () => {
    const version = ensureWrk()
    console.log(`  ${version}`)
    return version
  })

  const scratch = await mkdtemp(join(os.tmpdir(), 'users-service-bench-'))
  // Run as root, an embedded PostgreSQL runs as the postgres user, who must enter it.
  await chmod(scratch, 0o755)
  cleanups.push(() => rm(scratch, { recursive: true, force: true }))

  const { server, databases } = await step('database: create and migrate', async () => {
    const server = await prepareServer(scratch)
    const name = `users_bench_${runTag}`
    return {
      server,
      databases: {
        main: await createDatabase(server.url, name),
        small: await createDatabase(server.url, `${name}_small`)
      }
    }
  })

  await step(`seed: ${MAIN_USERS.toLocaleString('en-US')} users, and ${SMALL_USERS} in a second database for W4`, async () => {
    await seed(databases.main, 1, MAIN_USERS)
    await seed(databases.small, 1, SMALL_USERS)
  })

  const workloads = []
  for (const database of ['main', 'small']) {
    const service = await step(`start the service on the ${database === 'main' ? `${MAIN_USERS.toLocaleString('en-US')}-user` : `${SMALL_USERS}-user`} database`,
      () => startService(databases[database], database))
    try {
      for (const workload of WORKLOADS.filter((each) => each.database === database)) {
        workloads.push(await runWorkload(workload, service, scratch, runTag))
      }
    } finally {
      await service.stop()
    }
  }

  // The 100-user database grows to a million, and a fresh service reads it.
  await step(`seed: ${STREAM_USERS.toLocaleString('en-US')} users (the W4 database, topped up)`,
    () => seed(databases.small, SMALL_USERS + 1, STREAM_USERS))
  const streaming = await step('streaming: GET /api/user once, sampling RSS every 100 ms', () => streamingCheck(databases.small))

  const machine = await machineInfo(server.url, wrk)
  printTable(workloads, streaming)

  const totalSeconds = round(seconds(started), 1)
  const results = {
    startedAt: startedAt.toISOString(),
    totalSeconds,
    settings: {
      tool: wrk,
      threads: THREADS,
      connections: CONNECTIONS,
      durationSeconds: DURATION_SECONDS,
      warmupSeconds: WARMUP_SECONDS,
      database: server.kind,
      webConcurrency: process.env.WEB_CONCURRENCY || null,
      databasePoolMax: process.env.DATABASE_POOL_MAX || null,
      databaseReadPipelines: process.env.DATABASE_READ_PIPELINES || null
    },
    machine,
    cpuBusyAtStart: round(busyAtStart, 3),
    steps,
    workloads,
    streaming
  }
  await mkdir(RESULTS_DIR, { recursive: true })
  // ISO 8601's basic format: no colons in a file name.
  const file = join(RESULTS_DIR, `${startedAt.toISOString().replace(/[-:]|\.\d+/g, '')}.json`)
  await writeFile(file, JSON.stringify(results, null, 2) + '\n')
  console.log(`\nresults: ${file.slice(ROOT.length)}`)
  console.log(`total: ${totalSeconds} s (${wrk}; ${machine.nproc} × ${machine.cpuModel}; node ${machine.node}; PostgreSQL ${machine.postgresqlSettings.server_version}, ${server.kind})`)
}

const deadline = setTimeout(() => {
  console.error(`bench: still running after ${DEADLINE_SECONDS} s: stopping`)
  cleanUp().finally(() => process.exit(1))
}, DEADLINE_SECONDS * 1000)
deadline.unref()

let exitCode = 0
try {
  await main()
} catch (error) {
  if (!stopping) {
    console.error(`\nbench: ${error instanceof BenchError ? error.message : (error.stack ?? error)}`)
    exitCode = 1
  }
}
// Once a signal or the deadline has started the clean-up, it exits when done.
if (!stopping) {
  await cleanUp()
  process.exit(exitCode)
}
