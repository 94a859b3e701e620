// `npm run soak` (its `presoak` builds dist/ first; by hand:
// `npm run build && node bench/soak.js`): the production build under a
// steady mix of every route for SOAK_SECONDS (default 180, at most 1800),
// watching for what a short benchmark cannot see: memory that keeps
// growing, latency that drifts, errors that appear after a while.
//
//  1. a throwaway database, as bench/run.js makes it (bench/lib.js): on
//     DATABASE_URL's server when it is set, else a throwaway embedded
//     PostgreSQL (fsync off); migrated, and 100,000 users seeded with SQL;
//  2. the production build, `node dist/server.js`, as its own process, and
//     a check that its 304s are something wrk can read;
//  3. wrk (1 thread, 32 connections) with bench/wrk/soak-mix.lua, a mix of
//     every route, in consecutive slices of 10 to 15 s after a 5 s warm-up:
//     each slice's latency percentiles and statuses come from its done();
//     beside it, GET /api/user on a connection of its own
//     (bench/wrk/soak-legacy-list.lua);
//  4. every second meanwhile: the service's RSS (and CPU time) from /proc,
//     a GET /health/live of our own, timed (no database: its time is the
//     event loop's and the queue's), and `ss` for hung connections;
//  5. at each slice's end: the service's /metrics (requests by route and
//     status, durations, heap, handles, pool);
//  6. at the end, the database: no user created twice by one
//     Idempotency-Key;
//  7. a report, a pass/fail line (and exit code), and everything as JSON in
//     bench/results/soak-<time>.json.
//
// Everything it starts is stopped or dropped at the end, also on failure or
// Ctrl-C, and it stops itself SOAK_SECONDS + 300 s after its start.
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import http from 'node:http'
import os from 'node:os'
import { join, relative } from 'node:path'
import {
  BenchError, RESULTS_DIR, ROOT, WRK_DIR, createDatabase, loadTool, machineInfo, otherCpuUse,
  percent, positiveInteger, prepareServer, processTree, requireBuild, round, rssKb, request, runMain,
  runWrkProcess, scratchFolder, seconds, seed, serviceSettings, setProgramName, sql, startService,
  step, steps, warnIfBusy
} from './lib.js'

setProgramName('soak')

const SOAK_SECONDS = positiveInteger('SOAK_SECONDS', 180, 1800)
const THREADS = 1
const CONNECTIONS = 32
const WARMUP_SECONDS = 5
// Slices of at most this long, and at least 3 of them when the soak is 30 s or more.
const SLICE_SECONDS = 15
// wrk's --timeout: an answer slower than this is a socket error (timeout).
const TIMEOUT_SECONDS = 5
const USERS = 100_000
const SAMPLE_INTERVAL_MS = 1_000
const LIVE_PROBE_TIMEOUT_MS = 2_000
// Set-up (a first wrk install, the embedded PostgreSQL, seeding), the
// warm-up and the report: the soak stops itself past SOAK_SECONDS + this.
const MARGIN_SECONDS = 300
const DEADLINE_SECONDS = SOAK_SECONDS + MARGIN_SECONDS
const SCRIPT = join(WRK_DIR, 'soak-mix.lua')

// GET /api/user, which reads every user (3 to 4 MB), runs beside the mix
// on a connection of its own, pausing this long between requests (so at
// most one a second, about one in 2,000 requests): in the mix, wrk's
// latency histogram would be about its long answers (soak-legacy-list.lua).
const LEGACY_LIST_SCRIPT = join(WRK_DIR, 'soak-legacy-list.lua')
const LEGACY_LIST_PAUSE_MS = 1_000
const LEGACY_LIST_TIMEOUT_SECONDS = 10

// The mix, in requests per 1000 (bench/wrk/soak-mix.lua makes each kind's
// variants: If-None-Match, missing ids, Idempotency-Key replays…). Creates
// and deletes about balance, so the table stays near its seeded size and
// GET /api/user, which reads all of it, costs the same at the end as at
// the start. Weights sum to 1000.
const MIX = {
  get: 580, // GET /api/users/{id}
  conditional: 20, // GET /api/users/{id} with If-None-Match: the last ETag seen
  list: 110, // GET /api/users?limit=50&after=
  create: 80, // POST /api/users
  legacycreate: 30, // POST /api/user
  patch: 60, // PATCH /api/users/{id}
  delete: 100, // DELETE /api/users/{id}, of users the soak created
  ready: 10, // GET /health/ready
  live: 5, // GET /health/live
  metrics: 4 // GET /metrics
}

// The pass/fail line.
const P99_DRIFT_LIMIT = 2
const RSS_GROWTH_LIMIT_MB = 50
// wrk counts no error for a request that never gets a complete answer: the
// connection just waits. So every second, `ss` lists the connections to the
// service, and one with no byte either way for longer than wrk's timeout
// is hung.
const HUNG_AFTER_MS = TIMEOUT_SECONDS * 1000

// ---------------------------------------------------------------------------
// Helpers.

const toMb = (bytes) => round(bytes / 1024 / 1024, 1)

/** Slices of SLICE_SECONDS at most, at least 3 from 30 s on, lengths within 1 s of each other. */
function slicePlan (total) {
  let count = Math.ceil(total / SLICE_SECONDS)
  if (total >= 30) count = Math.max(count, 3)
  const base = Math.floor(total / count)
  return Array.from({ length: count }, (_, index) => base + (index < total % count ? 1 : 0))
}

function median (values) {
  if (values.length === 0) return undefined
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

/**
 * The value at percentile `p` of the slices together, from each slice's
 * grid of [percentile, value] (bench/wrk/soak-mix.lua): each step of a
 * slice's grid stands for its share of that slice's requests at the
 * step's upper value, so the result errs high, by less than a grid step.
 */
function mergedPercentile (slices, p) {
  const points = []
  for (const slice of slices) {
    let previous = 0
    for (const [percentile, value] of slice.quantilesUs) {
      const weight = (slice.requests * (percentile - previous)) / 100
      if (weight > 0) points.push([value, weight])
      previous = percentile
    }
  }
  if (points.length === 0) return undefined
  points.sort((a, b) => a[0] - b[0])
  const rank = (p / 100) * points.reduce((sum, [, weight]) => sum + weight, 0)
  let seen = 0
  for (const [value, weight] of points) {
    seen += weight
    if (seen >= rank - 1e-9) return value
  }
  return points.at(-1)[0]
}

function addCounts (into, from) {
  for (const [key, value] of Object.entries(from ?? {})) into[key] = (into[key] ?? 0) + value
  return into
}

const sumOf = (counts, test) => Object.entries(counts).filter(([key]) => test(Number(key))).reduce((sum, [, n]) => sum + n, 0)

/** The least-squares slope of `points` ([x, y]…), per unit of x. */
function slope (points) {
  if (points.length < 2) return 0
  const n = points.length
  const meanX = points.reduce((sum, [x]) => sum + x, 0) / n
  const meanY = points.reduce((sum, [, y]) => sum + y, 0) / n
  let num = 0
  let den = 0
  for (const [x, y] of points) {
    num += (x - meanX) * (y - meanY)
    den += (x - meanX) ** 2
  }
  return den === 0 ? 0 : num / den
}

// ---------------------------------------------------------------------------
// Sampling every second: RSS and CPU time from /proc, and a timed
// GET /health/live on a connection of its own.

const CLOCK_TICKS = 100 // USER_HZ on Linux

function cpuTicks (pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return Number(fields[11]) + Number(fields[12]) // utime, stime
  } catch {
    return 0
  }
}

/**
 * The connections to `port` (wrk's, and the probe's) with how long each has
 * been silent; undefined without `ss` (iproute2).
 */
function connectionsTo (port) {
  return new Promise((resolve) => {
    execFile('ss', ['-tinH', 'state', 'established', '(', 'dport', '=', `:${port}`, ')'], { timeout: 2_000 }, (error, stdout) => {
      if (error !== null) return resolve(undefined)
      const silentMs = []
      for (const line of stdout.split('\n')) {
        if (/^\S/.test(line)) silentMs.push(0)
        else if (silentMs.length > 0) {
          // ss shows lastsnd and lastrcv only when they are not 0.
          const sent = Number(/lastsnd:(\d+)/.exec(line)?.[1] ?? 0)
          const received = Number(/lastrcv:(\d+)/.exec(line)?.[1] ?? 0)
          silentMs[silentMs.length - 1] = Math.min(sent, received)
        }
      }
      resolve(silentMs)
    })
  })
}

function startSampler (service, since) {
  const samples = []
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  let busy = false
  const probe = () => new Promise((resolve) => {
    const started = process.hrtime.bigint()
    const req = http.get(`${service.url}/health/live`, { agent, timeout: LIVE_PROBE_TIMEOUT_MS }, (res) => {
      res.resume()
      res.on('end', () => resolve({ status: res.statusCode, ms: Number(process.hrtime.bigint() - started) / 1e6 }))
      res.on('error', () => resolve({ status: 0, ms: undefined }))
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', () => resolve({ status: 0, ms: undefined }))
  })
  const take = async () => {
    if (busy) return // the last probe is still waiting: that shows in its own sample
    busy = true
    try {
      const pids = processTree(service.pid)
      let rss = 0
      let maxRss = 0
      let ticks = 0
      for (const pid of pids) {
        const kb = rssKb(pid) ?? 0
        rss += kb
        maxRss = Math.max(maxRss, kb)
        ticks += cpuTicks(pid)
      }
      const t = seconds(since)
      const [live, silentMs] = await Promise.all([probe(), connectionsTo(new URL(service.url).port)])
      samples.push({
        t: round(t, 2),
        rssKb: rss,
        maxProcessRssKb: maxRss,
        cpuTicks: ticks,
        liveMs: live.ms === undefined ? null : round(live.ms, 2),
        liveStatus: live.status,
        connections: silentMs?.length ?? null,
        hungConnections: silentMs === undefined ? null : silentMs.filter((ms) => ms > HUNG_AFTER_MS).length,
        longestSilenceMs: silentMs === undefined ? null : Math.max(0, ...silentMs)
      })
    } finally {
      busy = false
    }
  }
  take()
  const timer = setInterval(take, SAMPLE_INTERVAL_MS)
  return {
    samples,
    stop () {
      clearInterval(timer)
      agent.destroy()
    }
  }
}

// ---------------------------------------------------------------------------
// The service's /metrics: requests by route and status, their durations
// (as histogram buckets), and a few gauges, at each slice's end.

const GAUGES = [
  'process_resident_memory_bytes', 'nodejs_heap_size_used_bytes', 'nodejs_heap_size_total_bytes',
  'nodejs_external_memory_bytes', 'nodejs_active_handles_total', 'nodejs_active_requests_total',
  'http_requests_in_flight', 'db_pool_connections', 'process_open_fds'
]

async function scrapeMetrics (url) {
  const answer = await new Promise((resolve) => {
    const req = http.get(`${url}/metrics`, { agent: false, timeout: 5_000 }, (res) => {
      const chunks = []
      res.on('data', (chunk) => chunks.push(chunk))
      res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString('utf8') }))
      res.on('error', () => resolve(undefined))
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', () => resolve(undefined))
  })
  if (answer?.status !== 200) return undefined
  const routes = {}
  const gauges = {}
  const route = (labels) => {
    const key = `${labels.method} ${labels.route}`
    routes[key] ??= { statuses: {}, buckets: {}, sumSeconds: 0 }
    return routes[key]
  }
  for (const line of answer.text.split('\n')) {
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (match === null) continue
    const [, name, labelText, valueText] = match
    const labels = Object.fromEntries([...(labelText ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((each) => [each[1], each[2]]))
    const value = Number(valueText)
    if (name === 'http_requests_total') {
      const entry = route(labels)
      entry.statuses[labels.status_code] = (entry.statuses[labels.status_code] ?? 0) + value
    } else if (name === 'http_request_duration_seconds_bucket') {
      const entry = route(labels)
      entry.buckets[labels.le] = (entry.buckets[labels.le] ?? 0) + value
    } else if (name === 'http_request_duration_seconds_sum') {
      route(labels).sumSeconds += value
    } else if (GAUGES.includes(name)) {
      gauges[labels.state === undefined ? name : `${name}_${labels.state}`] = value
    }
  }
  return { routes, gauges }
}

/** What each route answered between two scrapes: counts, statuses, mean and p99 (a bucket's bound). */
function routeDifference (after, before) {
  if (after === undefined || before === undefined) return undefined
  const result = {}
  for (const [key, now] of Object.entries(after.routes)) {
    const then = before.routes[key] ?? { statuses: {}, buckets: {}, sumSeconds: 0 }
    const statuses = {}
    for (const [status, count] of Object.entries(now.statuses)) {
      const more = count - (then.statuses[status] ?? 0)
      if (more > 0) statuses[status] = more
    }
    const count = Object.values(statuses).reduce((sum, n) => sum + n, 0)
    if (count === 0) continue
    const bounds = Object.keys(now.buckets).filter((le) => le !== '+Inf').map(Number).sort((a, b) => a - b)
    const p99 = bounds.find((le) => now.buckets[String(le)] - (then.buckets[String(le)] ?? 0) >= 0.99 * count)
    result[key] = {
      count,
      statuses,
      meanMs: round(((now.sumSeconds - then.sumSeconds) / count) * 1000, 2),
      // The upper bound of the bucket holding the 99th percentile (null: above the last).
      p99AtMostMs: p99 === undefined ? null : p99 * 1000
    }
  }
  return result
}

function mergeRoutes (slices) {
  const merged = {}
  for (const slice of slices) {
    for (const [key, entry] of Object.entries(slice.serviceRoutes ?? {})) {
      merged[key] ??= { count: 0, statuses: {}, totalMs: 0, worstSliceP99AtMostMs: 0 }
      merged[key].count += entry.count
      addCounts(merged[key].statuses, entry.statuses)
      merged[key].totalMs += entry.meanMs * entry.count
      merged[key].worstSliceP99AtMostMs = entry.p99AtMostMs === null || merged[key].worstSliceP99AtMostMs === null
        ? null
        : Math.max(merged[key].worstSliceP99AtMostMs, entry.p99AtMostMs)
    }
  }
  return Object.fromEntries(Object.entries(merged).sort((a, b) => b[1].count - a[1].count).map(([key, entry]) => [key, {
    count: entry.count,
    statuses: entry.statuses,
    meanMs: round(entry.totalMs / entry.count, 2),
    worstSliceP99AtMostMs: entry.worstSliceP99AtMostMs
  }]))
}

// ---------------------------------------------------------------------------
// Before the soak: what the mix can send.

/**
 * A 304 must come without a body, and may carry a Content-Length only if it
 * is the 200's (RFC 9110, 8.6). wrk's parser (http-parser) takes any
 * Content-Length above 0 on a 304 as a body to wait for: the connection
 * hangs, uncounted. When the service sends one, the mix leaves its
 * conditional GETs out, and the report says why.
 */
async function checkNotModified (url) {
  const full = await request(`${url}/api/users/1`)
  const etag = full.headers.etag
  if (full.status !== 200 || etag === undefined) {
    return { ok: false, finding: `GET /api/users/1 answered ${full.status}${etag === undefined ? ' without an ETag' : ''}` }
  }
  const answer = await request(`${url}/api/users/1`, { headers: { 'if-none-match': etag } })
  const length = answer.headers['content-length']
  const found = {
    status: answer.status,
    contentLength: length ?? null,
    fullContentLength: full.headers['content-length'] ?? String(full.body.length)
  }
  if (answer.status !== 304) return { ok: false, ...found, finding: `GET /api/users/1 with If-None-Match: ${etag} answered ${answer.status}, not 304` }
  if (length === undefined || length === '0') return { ok: true, ...found }
  const rfc = length === found.fullContentLength
    ? 'as RFC 9110 8.6 allows (the 200\'s length)'
    : `where RFC 9110 8.6 allows only the 200's length (${found.fullContentLength}) or none`
  return {
    ok: false,
    ...found,
    finding: `a 304 Not Modified carries Content-Length: ${length} and no body, ${rfc}; ` +
      'wrk (http-parser) waits for those bytes and the connection hangs, so this soak sends no If-None-Match'
  }
}

// ---------------------------------------------------------------------------
// wrk, one slice at a time.

function wrkArgs (url, durationSeconds, tag, slice, stateFile, mix) {
  return [
    '-t', String(THREADS), '-c', String(CONNECTIONS), '-d', `${durationSeconds}s`, '--timeout', `${TIMEOUT_SECONDS}s`,
    '-s', SCRIPT, `${url}/`, '--', tag, String(slice), String(USERS), stateFile,
    Object.entries(mix).map(([kind, weight]) => `${kind}=${weight}`).join(',')
  ]
}

function legacyListArgs (url, durationSeconds) {
  return [
    '-t', '1', '-c', '1', '-d', `${durationSeconds}s`, '--timeout', `${LEGACY_LIST_TIMEOUT_SECONDS}s`,
    '-s', LEGACY_LIST_SCRIPT, `${url}/`, '--', String(LEGACY_LIST_PAUSE_MS)
  ]
}

async function wrkResult (args, durationSeconds, what) {
  const { code, signal, stdout, stderr } = await runWrkProcess(args, durationSeconds)
  const line = stdout.split('\n').find((each) => each.startsWith('SOAK_RESULT '))
  if (code !== 0 || line === undefined) {
    throw new Error(`wrk (${what}) failed (${code ?? signal}): ${(stderr || stdout).trim()}`)
  }
  return {
    ...JSON.parse(line.slice('SOAK_RESULT '.length)),
    wrkStderr: stderr.trim() || undefined,
    wrkOutput: stdout.split('\n').filter((each) => !each.startsWith('SOAK_RESULT ')).join('\n').trim()
  }
}

const errorCount = (errors) => Object.values(errors).reduce((sum, n) => sum + n, 0)

/** The mix and GET /api/user side by side for `durationSeconds`. */
async function runSlice (url, durationSeconds, tag, slice, stateFile, mix) {
  const [result, legacy] = await Promise.all([
    wrkResult(wrkArgs(url, durationSeconds, tag, slice, stateFile, mix), durationSeconds, `slice ${slice}`),
    wrkResult(legacyListArgs(url, durationSeconds), durationSeconds, `slice ${slice}, GET /api/user`)
  ])
  return {
    requestsPerSecond: Math.round(result.requests / (result.durationUs / 1e6)),
    p50Ms: round(result.latencyUs.p50 / 1000, 2),
    p90Ms: round(result.latencyUs.p90 / 1000, 2),
    p99Ms: round(result.latencyUs.p99 / 1000, 2),
    p999Ms: round(result.latencyUs.p999 / 1000, 2),
    maxMs: round(result.latencyUs.max / 1000, 2),
    socketErrors: errorCount(result.errors) + errorCount(legacy.errors),
    ...result,
    legacyList: {
      requests: legacy.requests,
      bytes: legacy.bytes,
      // Statuses above 399 (wrk counts no others without a response()).
      non2xx3xx: legacy.non2xx3xx,
      errors: legacy.errors,
      p50Ms: round(legacy.latencyUs.p50 / 1000, 1),
      maxMs: round(legacy.latencyUs.max / 1000, 1),
      wrkOutput: legacy.wrkOutput
    }
  }
}

// ---------------------------------------------------------------------------
// A slice's figures, and the whole soak's.

function sliceFigures (number, duration, from, to, result, inSlice, before, after, logged) {
  const last = inSlice.at(-1)
  const ticks = inSlice.length >= 2 ? last.cpuTicks - inSlice[0].cpuTicks : 0
  const span = inSlice.length >= 2 ? last.t - inSlice[0].t : 0
  const liveTimes = inSlice.map((sample) => sample.liveMs).filter((ms) => ms !== null)
  const routes = routeDifference(after, before)
  const service5xx = routes === undefined
    ? null
    : Object.values(routes).reduce((sum, route) => sum + sumOf(route.statuses, (status) => status >= 500), 0)
  return {
    slice: number,
    seconds: duration,
    fromSecond: Math.round(from),
    toSecond: Math.round(to),
    ...result,
    // The mix's from wrk, GET /api/user's from the service (wrk, without a
    // response(), only counts statuses above 399 there).
    status5xx: sumOf(result.statuses, (status) => status >= 500) + sumOf(routes?.['GET /api/user']?.statuses ?? {}, (status) => status >= 500),
    service5xx,
    rssEndMb: round((last?.rssKb ?? 0) / 1024, 1),
    rssMaxMb: round(Math.max(0, ...inSlice.map((sample) => sample.rssKb)) / 1024, 1),
    heapUsedMb: after?.gauges.nodejs_heap_size_used_bytes === undefined ? undefined : toMb(after.gauges.nodejs_heap_size_used_bytes),
    serviceCpuPercent: span > 0 ? Math.round((ticks / CLOCK_TICKS / span) * 100) : 0,
    hungConnections: inSlice.some((sample) => sample.hungConnections === null) ? null : Math.max(0, ...inSlice.map((sample) => sample.hungConnections)),
    longestSilenceMs: inSlice.some((sample) => sample.longestSilenceMs === null) ? null : Math.max(0, ...inSlice.map((sample) => sample.longestSilenceMs)),
    liveProbe: {
      samples: inSlice.length,
      failures: inSlice.filter((sample) => sample.liveStatus !== 200).length,
      medianMs: liveTimes.length > 0 ? round(median(liveTimes), 2) : undefined,
      maxMs: liveTimes.length > 0 ? round(Math.max(...liveTimes), 2) : undefined
    },
    gauges: after?.gauges,
    serviceRoutes: routes,
    logged
  }
}

function hungCheck (slices) {
  if (slices.some((slice) => slice.hungConnections === null)) {
    return { name: 'hung connections', passed: true, description: 'no hung connections: not checked (no `ss`, from iproute2)' }
  }
  const worst = slices.reduce((most, slice) => slice.hungConnections > most.hungConnections ? slice : most)
  return {
    name: 'hung connections',
    passed: worst.hungConnections === 0,
    description: `no hung connections (silent for over ${TIMEOUT_SECONDS} s, which wrk does not count): ` +
      (worst.hungConnections === 0 ? '0' : `${worst.hungConnections} of ${CONNECTIONS} in slice ${worst.slice}`)
  }
}

function summarize ({ slices, samples, serviceExit, readyAtEnd, database, findings }) {
  if (slices.length === 0) throw new BenchError('no slice finished')
  const seconds = slices.reduce((sum, slice) => sum + slice.durationUs / 1e6, 0)
  const requests = slices.reduce((sum, slice) => sum + slice.requests, 0)
  const statuses = slices.reduce((all, slice) => addCounts(all, slice.statuses), {})
  const errorsByKind = slices.reduce((all, slice) => addCounts(addCounts(all, slice.errors), slice.legacyList.errors), {})
  const totals = {
    requests,
    seconds: round(seconds, 1),
    requestsPerSecond: Math.round(requests / seconds),
    statuses,
    status5xx: slices.reduce((sum, slice) => sum + slice.status5xx, 0),
    // The service's own count, from /metrics (null when it could not be read).
    service5xx: slices.some((slice) => slice.service5xx === null) ? null : slices.reduce((sum, slice) => sum + slice.service5xx, 0),
    socketErrors: errorCount(errorsByKind),
    errorsByKind,
    legacyList: {
      requests: slices.reduce((sum, slice) => sum + slice.legacyList.requests, 0),
      mb: toMb(slices.reduce((sum, slice) => sum + slice.legacyList.bytes, 0)),
      non2xx3xx: slices.reduce((sum, slice) => sum + slice.legacyList.non2xx3xx, 0),
      maxMs: Math.max(...slices.map((slice) => slice.legacyList.maxMs))
    },
    replayed: slices.reduce((sum, slice) => sum + slice.replayed, 0),
    sent: slices.reduce((all, slice) => addCounts(all, slice.sent), {}),
    liveProbeFailures: samples.filter((sample) => sample.liveStatus !== 200).length,
    createdLeft: slices.at(-1).createdLeft
  }
  const first = slices[0]
  const last = slices.at(-1)
  const latency = {
    p50Ms: round(mergedPercentile(slices, 50) / 1000, 2),
    p90Ms: round(mergedPercentile(slices, 90) / 1000, 2),
    p99Ms: round(mergedPercentile(slices, 99) / 1000, 2),
    p999Ms: round(mergedPercentile(slices, 99.9) / 1000, 2),
    maxMs: Math.max(...slices.map((slice) => slice.maxMs)),
    firstSliceP99Ms: first.p99Ms,
    lastSliceP99Ms: last.p99Ms,
    p99Drift: round(last.p99Ms / first.p99Ms, 2)
  }

  // Leak signal: the median RSS of the first and the last minute (a third
  // of a shorter soak each), so that one collection's peak does not count.
  const end = samples.at(-1)?.t ?? 0
  const windowSeconds = Math.min(60, Math.max(1, Math.round(end / 3)))
  const firstWindow = samples.filter((sample) => sample.t <= windowSeconds).map((sample) => sample.rssKb)
  const lastWindow = samples.filter((sample) => sample.t >= end - windowSeconds).map((sample) => sample.rssKb)
  const memory = {
    startMb: round((samples[0]?.rssKb ?? 0) / 1024, 1),
    maxMb: round(Math.max(0, ...samples.map((sample) => sample.rssKb)) / 1024, 1),
    endMb: round((samples.at(-1)?.rssKb ?? 0) / 1024, 1),
    windowSeconds,
    firstWindowMb: round(median(firstWindow) / 1024, 1),
    lastWindowMb: round(median(lastWindow) / 1024, 1),
    growthMb: round((median(lastWindow) - median(firstWindow)) / 1024, 1),
    slopeMbPerMinute: round(slope(samples.map((sample) => [sample.t / 60, sample.rssKb / 1024])), 2),
    samples: samples.length
  }
  const heaps = slices.map((slice) => slice.heapUsedMb).filter((mb) => mb !== undefined)
  const heap = heaps.length === 0 ? undefined : { firstMb: heaps[0], lastMb: heaps.at(-1), maxMb: Math.max(...heaps) }

  const checks = [
    {
      name: '5xx',
      passed: totals.status5xx === 0 && !(totals.service5xx > 0),
      description: `no 5xx: ${totals.status5xx} seen by wrk, ${totals.service5xx ?? '?'} counted by the service`
    },
    { name: 'socket errors', passed: totals.socketErrors === 0, description: `no socket errors (connect, read, write, timeout > ${TIMEOUT_SECONDS} s): ${totals.socketErrors}` },
    hungCheck(slices),
    {
      name: 'p99 drift',
      passed: last.p99Ms <= P99_DRIFT_LIMIT * first.p99Ms,
      description: `p99 of the last slice at most ${P99_DRIFT_LIMIT} × the first's: ${last.p99Ms} ms against ${first.p99Ms} ms (×${latency.p99Drift})`
    },
    {
      name: 'RSS growth',
      passed: memory.growthMb < RSS_GROWTH_LIMIT_MB,
      description: `RSS growth under ${RSS_GROWTH_LIMIT_MB} MB (median of the last ${windowSeconds} s − the first ${windowSeconds} s): ${memory.growthMb} MB`
    },
    {
      name: 'idempotency',
      passed: database.namesTwice === 0,
      description: `one user per Idempotency-Key (${totals.replayed} replays): ${database.namesTwice} names created twice`
    },
    { name: 'service alive', passed: serviceExit === undefined && readyAtEnd === 200, description: `the service up and ready at the end: ${serviceExit === undefined ? `/health/ready ${readyAtEnd}` : `exited (${serviceExit})`}` }
  ]
  const logged = slices.reduce((all, slice) => addCounts(all, slice.logged), {})
  return {
    passed: checks.every((check) => check.passed),
    checks,
    findings,
    totals,
    latency,
    memory,
    heap,
    database,
    logged,
    routes: mergeRoutes(slices),
    slices
  }
}

// ---------------------------------------------------------------------------
// The report.

function describeSlice (slice) {
  const statuses = Object.entries(slice.statuses).map(([status, n]) => `${status}:${n}`).join(' ')
  const errors = slice.socketErrors > 0 ? ` socket errors ${JSON.stringify(slice.errors)}` : ''
  const logged = Object.keys(slice.logged ?? {}).length > 0 ? ` logged ${JSON.stringify(slice.logged)}` : ''
  console.log(`  slice ${String(slice.slice).padStart(2)} (${slice.fromSecond}–${slice.toSecond} s): ` +
    `${slice.requests} requests (+${slice.legacyList.requests} GET /api/user), ${slice.requestsPerSecond} req/s, p50 ${slice.p50Ms} ms, p99 ${slice.p99Ms} ms, max ${slice.maxMs} ms; ` +
    `${statuses}; 5xx ${slice.status5xx}, socket errors ${slice.socketErrors}${errors}, hung connections ${slice.hungConnections ?? '?'}; ` +
    `RSS ${slice.rssEndMb} MB, heap ${slice.heapUsedMb ?? '?'} MB, handles ${slice.gauges?.nodejs_active_handles_total ?? '?'}, ` +
    `CPU ${slice.serviceCpuPercent}%, live probe max ${slice.liveProbe.maxMs ?? '?'} ms${logged}`)
}

function printReport (report) {
  const { totals, latency, memory, checks } = report
  const header = ['slice', 'seconds', 'requests', 'req/s', 'p50 ms', 'p99 ms', 'max ms', '5xx', 'socket err', 'hung', 'RSS MB', 'heap MB', 'CPU %', 'live max ms']
  const rows = report.slices.map((slice) => [
    String(slice.slice), `${slice.fromSecond}–${slice.toSecond}`, slice.requests.toLocaleString('en-US'),
    slice.requestsPerSecond.toLocaleString('en-US'), slice.p50Ms.toFixed(2), slice.p99Ms.toFixed(2), slice.maxMs.toFixed(1),
    String(slice.status5xx), String(slice.socketErrors), String(slice.hungConnections ?? '?'), slice.rssEndMb.toFixed(1), String(slice.heapUsedMb ?? '?'),
    String(slice.serviceCpuPercent), String(slice.liveProbe.maxMs ?? '?')
  ])
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column].length)))
  const line = (cells) => '| ' + cells.map((cell, column) => cell.padStart(widths[column])).join(' | ') + ' |'
  console.log('')
  console.log(line(header))
  console.log('|' + widths.map((width) => ` ${'-'.repeat(width - 1)}: `).join('|') + '|')
  for (const row of rows) console.log(line(row))

  console.log(`\nrequests: ${totals.requests.toLocaleString('en-US')} in ${totals.seconds} s, ${totals.requestsPerSecond.toLocaleString('en-US')} req/s; ` +
    `${totals.replayed.toLocaleString('en-US')} Idempotency-Key replays`)
  console.log(`statuses: ${Object.entries(totals.statuses).map(([status, n]) => `${status} ${n.toLocaleString('en-US')}`).join(', ')}`)
  console.log(`GET /api/user beside the mix: ${totals.legacyList.requests} requests, ${totals.legacyList.mb} MB, ${totals.legacyList.non2xx3xx} statuses above 399, ` +
    `slowest ${totals.legacyList.maxMs} ms (wrk)`)
  console.log(`errors: ${totals.status5xx} 5xx (the service counted ${totals.service5xx ?? '?'}), ${totals.socketErrors} socket errors ${JSON.stringify(totals.errorsByKind)}` +
    `${totals.liveProbeFailures > 0 ? `; ${totals.liveProbeFailures} live probes unanswered` : ''}`)
  console.log(`latency (wrk, every request of the mix but GET /api/user): p50 ${latency.p50Ms} ms, p99 ${latency.p99Ms} ms overall; ` +
    `p99 ${latency.firstSliceP99Ms} ms in the first slice, ${latency.lastSliceP99Ms} ms in the last (×${latency.p99Drift})`)
  console.log(`RSS: ${memory.startMb} MB at the start, ${memory.maxMb} MB at most, ${memory.endMb} MB at the end; ` +
    `median ${memory.firstWindowMb} MB over the first ${memory.windowSeconds} s, ${memory.lastWindowMb} MB over the last: ` +
    `${memory.growthMb >= 0 ? '+' : ''}${memory.growthMb} MB (trend ${memory.slopeMbPerMinute >= 0 ? '+' : ''}${memory.slopeMbPerMinute} MB/min)`)
  if (report.heap !== undefined) {
    console.log(`heap used (the service's /metrics at each slice's end): ${report.heap.firstMb} MB after the first slice, ${report.heap.lastMb} MB after the last, ${report.heap.maxMb} MB at most`)
  }
  const logged = Object.entries(report.logged)
  if (logged.length > 0) console.log(`the service logged: ${logged.map(([key, n]) => `${n} × ${key}`).join('; ')}`)

  console.log('\nby route (the service\'s /metrics; p99 is a histogram bucket\'s bound):')
  for (const [route, entry] of Object.entries(report.routes)) {
    const statuses = Object.entries(entry.statuses).map(([status, n]) => `${status}:${n}`).join(' ')
    const p99 = entry.worstSliceP99AtMostMs === null ? '> 5000' : `≤ ${entry.worstSliceP99AtMostMs}`
    console.log(`  ${route.padEnd(28)} ${String(entry.count).padStart(9)}  mean ${entry.meanMs.toFixed(2).padStart(7)} ms  p99 ${p99.padStart(6)} ms (worst slice)  ${statuses}`)
  }

  for (const finding of report.findings) console.log(`\nfinding: ${finding}`)

  console.log('')
  for (const check of checks) console.log(`  ${check.passed ? 'ok  ' : 'FAIL'} ${check.description}`)
  console.log(`\n${report.passed ? 'PASS' : 'FAIL'}: ${checks.filter((check) => !check.passed).map((check) => check.name).join(', ') || 'every check passed'}`)
}

// ---------------------------------------------------------------------------

function commandLine () {
  const shown = ['SOAK_SECONDS', 'DATABASE_URL', 'WEB_CONCURRENCY', 'DATABASE_POOL_MAX', 'DATABASE_READ_PIPELINES', 'NODE_OPTIONS']
    .filter((name) => process.env[name] !== undefined && process.env[name] !== '')
    .map((name) => {
      let value = process.env[name]
      if (name === 'DATABASE_URL') {
        const url = new URL(value)
        if (url.password !== '') url.password = '***'
        value = url.toString()
      }
      return `${name}=${value}`
    })
  return [...shown, 'node', relative(ROOT, process.argv[1]) || process.argv[1], ...process.argv.slice(2)].join(' ')
}

async function main () {
  const started = Date.now()
  const startedAt = new Date()
  requireBuild()
  const runTag = randomBytes(4).toString('hex')
  const plan = slicePlan(SOAK_SECONDS)
  const busyAtStart = await otherCpuUse(1_000)
  console.log(`soak: ${commandLine()}`)
  console.log(`soak: ${SOAK_SECONDS} s in ${plan.length} slices (${[...new Set(plan)].join(' or ')} s) after a ${WARMUP_SECONDS} s warm-up; ` +
    `wrk, ${THREADS} thread, ${CONNECTIONS} connections, --timeout ${TIMEOUT_SECONDS}s; ${USERS.toLocaleString('en-US')} users seeded; ` +
    `RSS and a GET /health/live every ${SAMPLE_INTERVAL_MS / 1000} s; stops itself after ${DEADLINE_SECONDS} s`)
  console.log(`soak: the mix per 1000 requests: ${Object.entries(MIX).map(([kind, weight]) => `${kind} ${weight}`).join(', ')}; ` +
    `and beside it GET /api/user on 1 connection, ${LEGACY_LIST_PAUSE_MS} ms between requests, --timeout ${LEGACY_LIST_TIMEOUT_SECONDS}s`)
  console.log(`soak: ${serviceSettings()}; ${os.availableParallelism()} cores, ${percent(busyAtStart)} busy before the start`)
  warnIfBusy(busyAtStart, 'before the start')

  const wrk = await loadTool()
  const scratch = await scratchFolder()

  const { server, databaseUrl } = await step('database: create and migrate', async () => {
    const server = await prepareServer(scratch)
    return { server, databaseUrl: await createDatabase(server.url, `users_soak_${runTag}`) }
  })
  await step(`seed: ${USERS.toLocaleString('en-US')} users`, () => seed(databaseUrl, 1, USERS))

  const service = await step('start the service', () => startService(databaseUrl, 'soak'))
  const stateFile = join(scratch, 'created-users.txt')
  const rssAtReadyKb = processTree(service.pid).reduce((sum, pid) => sum + (rssKb(pid) ?? 0), 0)

  const mix = { ...MIX }
  const notModified = await step('check: a 304 wrk can read', async () => {
    const check = await checkNotModified(service.url)
    if (check.ok) {
      console.log(`  304 with ${check.contentLength === null ? 'no Content-Length' : `Content-Length: ${check.contentLength}`}: conditional GETs stay in the mix`)
    } else {
      console.warn(`soak: finding: ${check.finding}`)
      mix.get += mix.conditional
      mix.conditional = 0
    }
    return check
  })

  const warmup = await step(`warm-up: ${WARMUP_SECONDS} s of the mix`, async () => {
    const warmup = await runSlice(service.url, WARMUP_SECONDS, runTag, 0, stateFile, mix)
    console.log(`  ${warmup.requests} requests, ${warmup.requestsPerSecond} req/s, p99 ${warmup.p99Ms} ms, ` +
      `5xx ${sumOf(warmup.statuses, (status) => status >= 500)}, socket errors ${warmup.socketErrors}`)
    return warmup
  })

  const slices = []
  let serviceExit
  const samples = await step(`soak: ${SOAK_SECONDS} s`, async () => {
    const shown = (args) => `wrk ${args.map((arg) => arg.startsWith(ROOT) ? relative(ROOT, arg) : arg).join(' ')}`
    console.log(`  ${shown(wrkArgs(service.url, plan[0], runTag, 1, stateFile, mix))}`)
    console.log(`  ${shown(legacyListArgs(service.url, plan[0]))}`)
    const soakStarted = Date.now()
    const sampler = startSampler(service, soakStarted)
    let before = await scrapeMetrics(service.url)
    let logsBefore = service.logs.snapshot()
    try {
      for (const [index, duration] of plan.entries()) {
        const from = seconds(soakStarted)
        const firstSample = sampler.samples.length
        const result = await runSlice(service.url, duration, runTag, index + 1, stateFile, mix)
        const after = await scrapeMetrics(service.url)
        const to = seconds(soakStarted)
        slices.push(sliceFigures(index + 1, duration, from, to, result, sampler.samples.slice(firstSample), before, after, service.logs.since(logsBefore)))
        describeSlice(slices.at(-1))
        before = after
        logsBefore = service.logs.snapshot()
        if (service.child.exitCode !== null || service.child.signalCode !== null) {
          serviceExit = service.child.exitCode ?? service.child.signalCode
          console.error(`soak: the service exited (${serviceExit}) during slice ${index + 1}: stopping\n${service.logs.tail().join('\n')}`)
          break
        }
      }
    } finally {
      sampler.stop()
    }
    return sampler.samples
  })
  const readyAtEnd = serviceExit === undefined ? await request(`${service.url}/health/ready`).then((answer) => answer.status, () => 0) : 0
  await service.stop()

  // Names are unique to each request, and a replay repeats its first
  // request's body: a name twice is an Idempotency-Key that made two users.
  const database = await step('check: the database after the soak', async () => {
    const { rows } = await sql(databaseUrl, `SELECT
      (SELECT count(*) FROM users)::int AS users,
      (SELECT count(*) FROM idempotency_keys)::int AS "idempotencyKeys",
      (SELECT count(*) FROM (SELECT name FROM users GROUP BY name HAVING count(*) > 1) AS twice)::int AS "namesTwice"`)
    console.log(`  ${rows[0].users} users (${USERS} seeded), ${rows[0].idempotencyKeys} Idempotency-Keys kept, ${rows[0].namesTwice} names twice`)
    return rows[0]
  })

  const report = summarize({ slices, samples, serviceExit, readyAtEnd, database, findings: notModified.ok ? [] : [notModified.finding] })
  const machine = await machineInfo(server.url, wrk)
  printReport(report)

  const totalSeconds = round(seconds(started), 1)
  const results = {
    startedAt: startedAt.toISOString(),
    totalSeconds,
    command: commandLine(),
    settings: {
      tool: wrk,
      soakSeconds: SOAK_SECONDS,
      slices: plan,
      warmupSeconds: WARMUP_SECONDS,
      threads: THREADS,
      connections: CONNECTIONS,
      timeoutSeconds: TIMEOUT_SECONDS,
      users: USERS,
      mixPer1000: mix,
      sampleIntervalMs: SAMPLE_INTERVAL_MS,
      database: server.kind,
      webConcurrency: process.env.WEB_CONCURRENCY || null,
      databasePoolMax: process.env.DATABASE_POOL_MAX || null,
      databaseReadPipelines: process.env.DATABASE_READ_PIPELINES || null,
      limits: { p99Drift: P99_DRIFT_LIMIT, rssGrowthMb: RSS_GROWTH_LIMIT_MB }
    },
    machine,
    cpuBusyAtStart: round(busyAtStart, 3),
    rssAtReadyMb: round(rssAtReadyKb / 1024, 1),
    warmup,
    steps,
    ...report,
    samples
  }
  await mkdir(RESULTS_DIR, { recursive: true })
  // ISO 8601's basic format: no colons in a file name.
  const file = join(RESULTS_DIR, `soak-${startedAt.toISOString().replace(/[-:]|\.\d+/g, '')}.json`)
  await writeFile(file, JSON.stringify(results, null, 2) + '\n')
  console.log(`\nresults: ${file.slice(ROOT.length)}`)
  console.log(`total: ${totalSeconds} s (${wrk}; ${machine.nproc} × ${machine.cpuModel}; node ${machine.node}; PostgreSQL ${machine.postgresqlSettings.server_version}, ${server.kind})`)
  return report.passed ? 0 : 1
}

await runMain(main, DEADLINE_SECONDS)
