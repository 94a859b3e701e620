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
//  5. the same load against bench/peers/express.js, a plain Express 5 + pg
//     service on the same database (the "× Express" column), and against
//     bench/ceiling.js, a bare Fastify answering the same bytes from
//     memory: the ceiling each figure is a share of;
//  6. GET /api/user over 1,000,000 users, to see that it streams in flat memory;
//  7. a table, and everything as JSON in bench/results/.
//
// Everything it starts (processes, databases, the embedded cluster) is
// stopped or dropped at the end, also on failure or Ctrl-C. What it shares
// with bench/soak.js (`npm run soak`) is in bench/lib.js.
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, writeFile } from 'node:fs/promises'
import http from 'node:http'
import os from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import {
  BENCH_DIR, RESULTS_DIR, ROOT, WRK_DIR, createDatabase, difference,
  loadTool, machineInfo, mb, otherCpuUse, percent, positiveInteger, prepareServer, processTree, request,
  requireBuild, round, rssKb, runMain, runWrkProcess, sampleRss, scratchFolder, seconds, seed,
  serviceSettings, sleep, startService, statusCounts, step, steps, stopChild, track, warnIfBusy
} from './lib.js'
import { FEATURES, selectedFeatures } from './features.js'

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
const DEADLINE_SECONDS = 300 + 20 * (WARMUP_SECONDS + DURATION_SECONDS)
// BENCH_FEATURES=auth,events,tracing (or all): some workloads again with each on (bench/features.js).
const FEATURE_NAMES = selectedFeatures()

// target: the goal as a share of the ceiling, from issue 6.
const WORKLOADS = [
  {
    id: 'W1',
    name: 'GET /api/users/{id}',
    script: 'w1-get-user.lua',
    database: 'main',
    sample: { method: 'GET', path: '/api/users/50000', status: 200 },
    route: '/api/users/:id',
    target: 0.23
  },
  {
    id: 'W2',
    name: 'GET /api/users?limit=50&after=',
    script: 'w2-list-users.lua',
    database: 'main',
    sample: { method: 'GET', path: '/api/users?limit=50&after=50000', status: 200 },
    route: '/api/users',
    target: 0.30
  },
  {
    id: 'W3',
    name: 'POST /api/users',
    script: 'w3-create-user.lua',
    database: 'main',
    sample: { method: 'POST', path: '/api/users', body: '{"name":"bench sample"}', status: 201 },
    route: '/api/users',
    target: 0.15
  },
  {
    id: 'W4',
    name: 'GET /api/user (100 users)',
    script: 'w4-legacy-list.lua',
    database: 'small',
    sample: { method: 'GET', path: '/api/user', status: 200 },
    route: '/api/user',
    target: 0.25
  },
  {
    id: 'W5',
    name: 'GET /api/users?email=',
    script: 'w5-find-by-email.lua',
    database: 'main',
    sample: { method: 'GET', path: '/api/users?email=USER50000@bench.example', status: 200 },
    route: '/api/users',
    // Issue 16 sets no goal: W1's, a lookup of one row by a unique index,
    // as a yardstick.
    target: 0.23
  }
]

/**
 * BENCH_WORKLOADS=W1,W5 runs only those (a quick check of one workload);
 * unset, every workload and the streaming check.
 */
function selectedWorkloads () {
  const text = process.env.BENCH_WORKLOADS
  if (text === undefined || text === '') return { workloads: WORKLOADS, all: true }
  const ids = text.split(',').map((id) => id.trim().toUpperCase())
  const unknown = ids.filter((id) => !WORKLOADS.some((each) => each.id === id))
  if (unknown.length > 0) {
    console.error(`bench: BENCH_WORKLOADS must be a comma-separated list of ${WORKLOADS.map((each) => each.id).join(', ')} (got ${JSON.stringify(text)})`)
    process.exit(1)
  }
  return { workloads: WORKLOADS.filter((each) => ids.includes(each.id)), all: false }
}
const SELECTED = selectedWorkloads()

// ---------------------------------------------------------------------------
// wrk.

/** One wrk run; its numbers come from the `done()` of bench/wrk/common.lua. */
async function runWrk (script, baseUrl, durationSeconds, tag) {
  const args = [
    '-t', String(THREADS), '-c', String(CONNECTIONS), '-d', `${durationSeconds}s`,
    '-s', join(WRK_DIR, script), baseUrl, '--', tag
  ]
  const { code, signal, stdout, stderr } = await runWrkProcess(args, durationSeconds)
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
// The ceiling.

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

/** A bench server of ours (the ceiling, the Express peer): it prints "listening PORT" once it does. */
async function startListening (label, args, env = process.env) {
  const child = track(spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'inherit'] }))
  const lines = createInterface({ input: child.stdout })
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${label} did not start within 15 s`)), 15_000)
    lines.on('line', (line) => {
      const match = /^listening (\d+)$/.exec(line)
      if (match !== null) {
        clearTimeout(timer)
        resolve(Number(match[1]))
      }
    })
    child.once('exit', (code) => reject(new Error(`${label} exited (${code})`)))
  })
  return { url: `http://127.0.0.1:${port}`, pid: child.pid, stop: () => stopChild(child) }
}

async function startCeiling (sample, scratch) {
  const file = join(scratch, `ceiling-${randomBytes(4).toString('hex')}.json`)
  await writeFile(file, JSON.stringify([sample]))
  return await startListening('the ceiling server', [join(BENCH_DIR, 'ceiling.js'), file])
}

/** bench/peers/express.js on the same database: the Express 5 + pg peer. */
async function startExpress (databaseUrl) {
  return await startListening('the Express peer', [join(BENCH_DIR, 'peers', 'express.js')],
    { ...process.env, DATABASE_URL: databaseUrl, PORT: '0', NODE_ENV: 'production' })
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

/** The service, then (given a peer) Express, then the ceiling, on one workload. */
async function runWorkload (workload, service, peer, scratch, runTag) {
  return await step(`${workload.id} ${workload.name}: service, ${peer === undefined ? '' : 'Express, '}then ceiling (${WARMUP_SECONDS} s + ${DURATION_SECONDS} s each)`, async () => {
    const sample = await takeSample(service.url, workload)
    const real = await measure(workload, service, `${runTag}-${workload.id}s`)
    describeRun('service', real)
    let express
    if (peer !== undefined) {
      await takeSample(peer.url, workload)
      express = await measure(workload, peer, `${runTag}-${workload.id}e`)
      describeRun('Express', express)
    }
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
      sample: shown,
      service: real,
      express,
      ceiling,
      ratio: round(real.requestsPerSecond / ceiling.requestsPerSecond, 4),
      timesExpress: express === undefined ? undefined : round(real.requestsPerSecond / express.requestsPerSecond, 2)
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

function printTable (workloads, streaming) {
  const header = ['workload', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'non-2xx', 'max RSS MB',
    'ceiling req/s', 'ratio', 'target', 'met', 'Express req/s', '× Express', 'feature on / off']
  // A feature's run beside the same workload with it off.
  const offOf = (each) => workloads.find((other) => other.id === each.feature?.off)
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
    each.express === undefined ? '-' : each.express.requestsPerSecond.toLocaleString('en-US'),
    each.timesExpress === undefined ? '-' : each.timesExpress.toFixed(2),
    offOf(each) === undefined ? '-' : percent(each.service.requestsPerSecond / offOf(each).service.requestsPerSecond)
  ])
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column].length)))
  const line = (cells) => '| ' + cells.map((cell, column) => column === 0 ? cell.padEnd(widths[column]) : cell.padStart(widths[column])).join(' | ') + ' |'
  console.log('')
  console.log(line(header))
  console.log('|' + widths.map((width, column) => column === 0 ? ` ${'-'.repeat(width)} ` : ` ${'-'.repeat(width - 1)}: `).join('|') + '|')
  for (const row of rows) console.log(line(row))
  if (streaming === undefined) return
  console.log(`\nStreaming GET /api/user over ${streaming.expectedRows.toLocaleString('en-US')} users: ${streaming.rows.toLocaleString('en-US')} rows, ` +
    `${streaming.mb} MB in ${streaming.seconds} s; RSS ${streaming.rssBeforeMb} MB before, +${streaming.rssGrowthMb} MB at most ` +
    `(target < ${streaming.growthTargetMb} MB: ${streaming.rssGrowthMb < streaming.growthTargetMb ? 'met' : 'not met'})`)
}

// ---------------------------------------------------------------------------

async function main () {
  const started = Date.now()
  const startedAt = new Date()
  requireBuild()
  const runTag = randomBytes(4).toString('hex')
  const busyAtStart = await otherCpuUse(1_000)
  console.log(`bench: wrk, ${THREADS} thread, ${CONNECTIONS} connections, ${DURATION_SECONDS} s runs after ${WARMUP_SECONDS} s warm-ups; ` +
    `${serviceSettings()}${FEATURE_NAMES.length > 0 ? `; then with ${FEATURE_NAMES.join(', ')} on` : ''}; ${os.availableParallelism()} cores, ${percent(busyAtStart)} busy before the start`)
  warnIfBusy(busyAtStart, 'before the start')

  const wrk = await loadTool()
  const scratch = await scratchFolder()

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
    const chosen = SELECTED.workloads.filter((each) => each.database === database)
    if (chosen.length === 0) continue
    const service = await step(`start the service on the ${database === 'main' ? `${MAIN_USERS.toLocaleString('en-US')}-user` : `${SMALL_USERS}-user`} database`,
      () => startService(databases[database], database))
    let peer
    try {
      peer = await startExpress(databases[database])
      for (const workload of chosen) {
        workloads.push(await runWorkload(workload, service, peer, scratch, runTag))
      }
    } finally {
      await peer?.stop()
      await service.stop()
    }
  }

  // Each feature on, alone, on the workloads it costs something on: set
  // against the same workloads above, from this same run.
  for (const name of FEATURE_NAMES) {
    const feature = FEATURES[name]
    const rerun = SELECTED.workloads.filter((each) => feature.workloads.includes(each.id))
    if (rerun.length === 0) continue
    const on = await feature.start({ runTag })
    try {
      const service = await step(`start the service with ${on.describe}`,
        () => startService(databases.main, `main, ${name}`, on.env))
      if (on.token !== undefined) process.env.BENCH_TOKEN = on.token
      try {
        for (const workload of rerun) {
          const result = await runWorkload({ ...workload, id: `${workload.id}${feature.suffix}`, name: `${workload.name} (${name} on)` }, service, undefined, scratch, runTag)
          result.feature = { name, off: workload.id, ...(on.after === undefined ? {} : { measured: await on.after(service.url) }) }
          workloads.push(result)
        }
      } finally {
        delete process.env.BENCH_TOKEN
        await service.stop()
      }
    } finally {
      await on.stop()
    }
  }

  // The 100-user database grows to a million, and a fresh service reads it.
  let streaming
  if (SELECTED.all) {
    await step(`seed: ${STREAM_USERS.toLocaleString('en-US')} users (the W4 database, topped up)`,
      () => seed(databases.small, SMALL_USERS + 1, STREAM_USERS))
    streaming = await step('streaming: GET /api/user once, sampling RSS every 100 ms', () => streamingCheck(databases.small))
  }

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
      databaseReadPipelines: process.env.DATABASE_READ_PIPELINES || null,
      workloads: SELECTED.workloads.map((each) => each.id),
      features: FEATURE_NAMES,
      pgBouncer: process.env.BENCH_PGBOUNCER === '1',
      readReplica: process.env.BENCH_READ_REPLICA === '1'
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

await runMain(main, DEADLINE_SECONDS)
