// Breaking the database on purpose while clients keep calling: the link cut
// (every connection reset), the link stalled (connections open, no bytes
// move), and a real PostgreSQL stopped and started again. Through all of
// them, over real HTTP, every request gets an answer within a bound (2xx or
// a 503 a client can act on, never a 500, never silence), liveness stays
// 200, readiness is 503, and the same app recovers by itself once the
// database is back. Creates sent across a fault (half of them with an
// Idempotency-Key) are then checked against the table: a 201 made its user,
// an answered failure made none, a closed connection is "outcome unknown",
// and a keyed create retried with its key ends with exactly one user.
// Last, writes whose connections are checked out and busy are cut: nothing
// may escape as an uncaught exception (in the server, that is a shutdown).
import { randomBytes } from 'node:crypto'
import { rm } from 'node:fs/promises'
import net from 'node:net'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import type { FastifyInstance } from 'fastify'
import pg from 'pg'
import t, { type Test } from 'tap'
import { buildApp } from '../src/app.js'
import { makeThrowawayFolder, startEmbeddedPostgres, type EmbeddedDatabase } from '../src/db/embedded.js'
import { runMigrations } from '../src/db/migrations.js'
import { createTestDatabase, testConfig } from './helper.js'
import { sleep } from './spawn.js'
import { TcpProxy } from './support/tcp-proxy.js'

const CONNECT_TIMEOUT_MS = 500
const STATEMENT_TIMEOUT_MS = 1_000
/** Every answer, even while the database is away: the waits the service bounds, plus slack for a loaded machine. */
const ANSWER_BOUND_MS = CONNECT_TIMEOUT_MS + STATEMENT_TIMEOUT_MS + 2_000
/**
 * A keyed create whose COMMIT was lost with its connection first settles
 * what happened (ends that backend, reads the key's record): up to two more
 * bounded statements, each a connection and a client-side read timeout.
 */
const KEYED_CREATE_BOUND_MS = ANSWER_BOUND_MS + 2 * (CONNECT_TIMEOUT_MS + STATEMENT_TIMEOUT_MS + 1_000)
/** A client gives up here; a request still unanswered by then hung. */
const CLIENT_TIMEOUT_MS = KEYED_CREATE_BOUND_MS + 2_000
/** From the database being back to every route kind answering 2xx again. */
const RECOVERY_BOUND_MS = 5_000
const LOAD_LOOPS = 4
const PAUSE_BETWEEN_REQUESTS_MS = 15

const APP_ENV = {
  DATABASE_CONNECT_TIMEOUT_MS: String(CONNECT_TIMEOUT_MS),
  DATABASE_STATEMENT_TIMEOUT_MS: String(STATEMENT_TIMEOUT_MS),
  // Fewer connections than concurrent requests: waiting for a connection is exercised too.
  DATABASE_POOL_MAX: '4',
  DATABASE_READ_PIPELINES: '2'
}

// Whatever a fault makes go wrong inside the process must not escape as an
// unhandled rejection or an uncaught exception.
const unhandled: string[] = []
/** Where the run is, for the record of anything unhandled. */
let stage = 'start'
const record = (what: string, error: unknown): void => {
  const stack = error instanceof Error ? (error.stack ?? '').split('\n').slice(1, 6).map((line) => line.trim()).join(' | ') : ''
  unhandled.push(`${what} during ${stage}: ${describeError(error)}${stack === '' ? '' : ` at ${stack}`}`)
}
const onUnhandledRejection = (reason: unknown): void => record('unhandledRejection', reason)
const onUncaughtException = (error: Error): void => record('uncaughtException', error)
process.on('unhandledRejection', onUnhandledRejection)
process.on('uncaughtException', onUncaughtException)
t.teardown(() => {
  process.removeListener('unhandledRejection', onUnhandledRejection)
  process.removeListener('uncaughtException', onUncaughtException)
})

function describeError (error: unknown): string {
  if (!(error instanceof Error)) return String(error)
  const cause = (error as { cause?: unknown }).cause
  const code = (error as { code?: unknown }).code
  return `${error.name}: ${error.message}${typeof code === 'string' ? ` (${code})` : ''}${cause !== undefined ? ` <- ${describeError(cause)}` : ''}`
}

// --- load --------------------------------------------------------------

type RouteKind = 'get' | 'list' | 'create' | 'legacy-list'
const ROUTE_KINDS: RouteKind[] = ['get', 'list', 'create', 'legacy-list']
type Phase = 'before' | 'fault' | 'recovering' | 'after'

interface Outcome {
  kind: RouteKind
  phase: Phase
  /** Milliseconds from sending to the whole answer (or to the failure). */
  ms: number
  status?: number
  retryAfter?: string | null
  contentType?: string | null
  body?: string
  /** No HTTP answer: what the client saw instead. */
  error?: string
  /** The client gave up waiting (CLIENT_TIMEOUT_MS): a hung request. */
  timedOut?: boolean
  /** For creates: the unique name sent. */
  name?: string
  /** For creates: sent with an Idempotency-Key (the name). */
  keyed?: boolean
}

/** Real HTTP against a listening app, several loops of mixed requests, each answer recorded. */
class Load {
  phase: Phase = 'before'
  readonly outcomes: Outcome[] = []
  private running = false
  private loops: Array<Promise<void>> = []
  private sequence = 0
  private creates = 0

  constructor (private readonly base: string, private readonly ids: number[], private readonly tag: string) {}

  start (): void {
    this.running = true
    this.loops = Array.from({ length: LOAD_LOOPS }, (_, loop) => this.loop(loop))
  }

  async stop (): Promise<void> {
    this.running = false
    await Promise.all(this.loops)
  }

  private async loop (loop: number): Promise<void> {
    for (let turn = loop; this.running; turn++) {
      await this.send(ROUTE_KINDS[turn % ROUTE_KINDS.length] as RouteKind)
      await sleep(PAUSE_BETWEEN_REQUESTS_MS)
    }
  }

  /** Sends one request of `kind` and records its outcome. */
  async send (kind: RouteKind): Promise<Outcome> {
    const phase = this.phase
    const outcome: Outcome = { kind, phase, ms: 0 }
    let url = `${this.base}/api/users?limit=10`
    const init: RequestInit = { signal: AbortSignal.timeout(CLIENT_TIMEOUT_MS) }
    if (kind === 'get') {
      url = `${this.base}/api/users/${this.ids[this.sequence % this.ids.length] ?? 1}`
    } else if (kind === 'legacy-list') {
      url = `${this.base}/api/user`
    } else if (kind === 'create') {
      url = `${this.base}/api/users`
      outcome.name = `${this.tag}-${phase}-${++this.sequence}`
      // Every other create carries an Idempotency-Key, so both write paths
      // (a lone INSERT, and the keyed transaction) cross the fault.
      outcome.keyed = this.creates++ % 2 === 1
      init.method = 'POST'
      init.headers = { 'content-type': 'application/json', ...(outcome.keyed ? { 'idempotency-key': outcome.name } : {}) }
      init.body = JSON.stringify({ name: outcome.name })
    }
    this.sequence++
    const started = performance.now()
    try {
      const response = await fetch(url, init)
      outcome.body = await response.text()
      outcome.status = response.status
      outcome.retryAfter = response.headers.get('retry-after')
      outcome.contentType = response.headers.get('content-type')
    } catch (error) {
      outcome.error = describeError(error)
      outcome.timedOut = error instanceof Error && (error.name === 'TimeoutError' || error.name === 'AbortError')
    }
    outcome.ms = Math.round(performance.now() - started)
    this.outcomes.push(outcome)
    return outcome
  }
}

/** Why an outcome breaks the rules that hold at every moment, or undefined. */
function violation (outcome: Outcome): string | undefined {
  const what = `${outcome.phase} ${outcome.kind}${outcome.keyed === true ? ' with a key' : ''}${outcome.name !== undefined ? ` (${outcome.name})` : ''}`
  if (outcome.timedOut === true) return `${what}: no answer within ${CLIENT_TIMEOUT_MS} ms (hung)`
  const bound = outcome.keyed === true ? KEYED_CREATE_BOUND_MS : ANSWER_BOUND_MS
  if (outcome.ms > bound) return `${what}: took ${outcome.ms} ms, over ${bound} ms`
  if (outcome.status === undefined) {
    // A create whose outcome the service cannot know may close the
    // connection instead of answering (counted as outcome unknown); any
    // other request must be answered.
    return outcome.kind === 'create' ? undefined : `${what}: connection closed without an answer: ${outcome.error ?? ''}`
  }
  if (outcome.status >= 200 && outcome.status < 300) return undefined
  if (outcome.status !== 503) return `${what}: status ${outcome.status}: ${outcome.body ?? ''}`
  if (!/^[1-9]\d*$/.test(outcome.retryAfter ?? '')) return `${what}: 503 without a Retry-After (${String(outcome.retryAfter)})`
  if (!/^application\/json/.test(outcome.contentType ?? '')) return `${what}: 503 not JSON (${String(outcome.contentType)})`
  let body: unknown
  try {
    body = JSON.parse(outcome.body ?? '')
  } catch {
    return `${what}: 503 body is not JSON: ${outcome.body ?? ''}`
  }
  if (!isErrorBody(body, 503)) return `${what}: 503 body is not {statusCode, error, message}: ${outcome.body ?? ''}`
  return undefined
}

function isErrorBody (body: unknown, statusCode: number): boolean {
  if (typeof body !== 'object' || body === null) return false
  const record = body as Record<string, unknown>
  return Object.keys(record).sort().join() === 'error,message,statusCode' &&
    record.statusCode === statusCode &&
    record.error === 'Service Unavailable' &&
    typeof record.message === 'string' && record.message.length > 0
}

function countBy<T> (items: T[], key: (item: T) => string): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const item of items) counts[key(item)] = (counts[key(item)] ?? 0) + 1
  return counts
}

const answerOf = (outcome: Outcome): string => outcome.status === undefined ? 'no answer' : String(outcome.status)

// --- one fault, start to end --------------------------------------------

interface Scenario {
  /** Short, for the unique names of the users created. */
  tag: string
  /** The database as the app reaches it (through the proxy, or the cluster itself). */
  appDatabaseUrl: string
  /** The same database, reached directly, to look behind the API. */
  directDatabaseUrl: string
  /** Breaks the database; resolves once it is broken. */
  breakIt: () => Promise<void>
  /** How long the fault lasts before repair begins. */
  faultMs: number
  /** Repairs it; resolves once the database is back (the recovery clock starts then). */
  repair: () => Promise<void>
  /** Figures of the fault's own (connections seen, …). */
  extraFigures?: () => string
}

interface Probe {
  path: string
  status: number | undefined
  ms: number
  body: string
}

async function probe (base: string, path: string): Promise<Probe> {
  const started = performance.now()
  try {
    const response = await fetch(`${base}${path}`, { signal: AbortSignal.timeout(CLIENT_TIMEOUT_MS) })
    const body = await response.text()
    return { path, status: response.status, ms: Math.round(performance.now() - started), body }
  } catch (error) {
    return { path, status: undefined, ms: Math.round(performance.now() - started), body: describeError(error) }
  }
}

/** Creates a few users straight in the table, for the GETs to find. */
async function seed (databaseUrl: string, tag: string): Promise<number[]> {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  try {
    const names = Array.from({ length: 10 }, (_, i) => `${tag}-seed-${i}`)
    const { rows } = await client.query<{ id: string }>('INSERT INTO users (name) SELECT unnest($1::text[]) RETURNING id', [names])
    return rows.map((row) => Number(row.id))
  } finally {
    await client.end()
  }
}

async function listen (t: Test, databaseUrl: string): Promise<{ app: FastifyInstance, base: string }> {
  const app = await buildApp(testConfig(databaseUrl, APP_ENV), { logger: false })
  t.teardown(() => app.close())
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as net.AddressInfo
  return { app, base: `http://127.0.0.1:${port}` }
}

/** Totals of every fault, for the last test's summary. */
const totals = { creates: 0, created: 0, failedWithRow: 0, unknown: 0, unknownWithRow: 0 }

async function runScenario (t: Test, scenario: Scenario): Promise<void> {
  const ids = await seed(scenario.directDatabaseUrl, scenario.tag)
  const { base } = await listen(t, scenario.appDatabaseUrl)
  t.equal((await probe(base, '/health/ready')).status, 200, 'ready before the fault')

  const load = new Load(base, ids, scenario.tag)
  stage = `${scenario.tag} before`
  load.start()
  let loadStopped = false
  t.teardown(async () => { if (!loadStopped) await load.stop() })

  // Warm up: connections in the pool and the read pipelines, in use when the fault hits.
  await sleep(700)

  load.phase = 'fault'
  stage = `${scenario.tag} fault`
  await scenario.breakIt()
  const faultStarted = performance.now()
  // The probes, while the fault lasts: liveness never asks the database, readiness does.
  await sleep(300)
  const during: Probe[] = []
  while (performance.now() - faultStarted < scenario.faultMs - 1_000) {
    during.push(...await Promise.all([probe(base, '/health/live'), probe(base, '/health/ready')]))
    await sleep(200)
  }
  const remaining = scenario.faultMs - (performance.now() - faultStarted)
  if (remaining > 0) await sleep(remaining)

  load.phase = 'recovering'
  stage = `${scenario.tag} recovering`
  await scenario.repair()
  const repaired = performance.now()
  // Recovered: every route kind answers 2xx and readiness 200 in one round.
  let recoveryMs: number | undefined
  while (performance.now() - repaired < RECOVERY_BOUND_MS * 3) {
    const round = await Promise.all([
      ...ROUTE_KINDS.map((kind) => load.send(kind)),
      probe(base, '/health/ready')
    ])
    const ok = round.every((answer) => 'path' in answer ? answer.status === 200 : (answer.status ?? 0) >= 200 && (answer.status ?? 0) < 300)
    if (ok) {
      recoveryMs = Math.round(performance.now() - repaired)
      break
    }
    await sleep(50)
  }

  load.phase = 'after'
  stage = `${scenario.tag} after`
  await sleep(1_000)
  await load.stop()
  loadStopped = true

  // Every answer, in every phase: bounded, 2xx or a proper 503, never a 500.
  const broken = load.outcomes.map(violation).filter((problem): problem is string => problem !== undefined)
  t.same(broken.slice(0, 15), [], `every one of ${load.outcomes.length} requests answered within ${ANSWER_BOUND_MS} ms (keyed creates ${KEYED_CREATE_BOUND_MS} ms) with 2xx or a proper 503 (${broken.length} did not)`)

  const fault = load.outcomes.filter((outcome) => outcome.phase === 'fault')
  t.ok(fault.length >= LOAD_LOOPS * 2, `load kept running during the fault (${fault.length} requests)`)
  t.ok(fault.some((outcome) => outcome.status === 503), 'the fault was felt: some requests answered 503')
  const faultGets = fault.filter((outcome) => outcome.kind !== 'create')
  t.equal(faultGets.filter((outcome) => outcome.status === undefined).length, 0, 'every read during the fault got an answer')

  t.ok(during.length >= 2, `probed ${during.length / 2} times during the fault`)
  const live = during.filter((answer) => answer.path === '/health/live')
  const ready = during.filter((answer) => answer.path === '/health/ready')
  t.same(live.filter((answer) => answer.status !== 200 || answer.ms > 1_000).map((a) => `${a.status ?? 'no answer'} in ${a.ms} ms`), [],
    'live: 200 within 1 s throughout the fault')
  t.same(ready.filter((answer) => answer.status !== 503 || answer.ms > ANSWER_BOUND_MS).map((a) => `${a.status ?? 'no answer'} in ${a.ms} ms`), [],
    'ready: 503 within the bound throughout the fault')
  t.same(ready.filter((answer) => !isErrorBody(safeJson(answer.body), 503)).map((a) => a.body), [], 'ready: the error shape')

  t.not(recoveryMs, undefined, 'recovered without restarting the app')
  t.ok((recoveryMs ?? Infinity) <= RECOVERY_BOUND_MS, `recovered ${recoveryMs ?? 'never'} ms after the database was back (bound ${RECOVERY_BOUND_MS} ms)`)
  const after = load.outcomes.filter((outcome) => outcome.phase === 'after')
  t.ok(after.length >= 20, `load after recovery (${after.length} requests)`)
  t.same(after.filter((outcome) => outcome.status === undefined || outcome.status >= 300).map((o) => `${o.kind}: ${answerOf(o)} ${o.body ?? o.error ?? ''}`).slice(0, 10), [],
    'after recovery every request succeeds')
  t.equal((await probe(base, '/health/ready')).status, 200, 'ready after recovery')

  const slowest = Math.max(0, ...fault.map((outcome) => outcome.ms))
  const slowestKeyed = Math.max(0, ...load.outcomes.filter((outcome) => outcome.keyed === true).map((outcome) => outcome.ms))
  t.comment(`${scenario.tag}: during the fault ${fault.length} requests sent; answers ${JSON.stringify(countBy(fault, answerOf))}; ` +
    `by route ${JSON.stringify(countBy(fault, (o) => `${o.kind} ${answerOf(o)}`))}`)
  t.comment(`${scenario.tag}: answered with no response during the fault: ${fault.filter((o) => o.status === undefined).length} ` +
    `(whole run: ${load.outcomes.filter((o) => o.status === undefined).length}); slowest answer during the fault ${slowest} ms ` +
    `(whole run ${Math.max(0, ...load.outcomes.map((o) => o.ms))} ms, keyed creates ${slowestKeyed} ms); probes ready ${JSON.stringify(countBy(ready, (a) => String(a.status)))} ` +
    `slowest ${Math.max(0, ...ready.map((a) => a.ms))} ms, live ${JSON.stringify(countBy(live, (a) => String(a.status)))} slowest ${Math.max(0, ...live.map((a) => a.ms))} ms`)
  t.comment(`${scenario.tag}: recovery ${recoveryMs ?? 'never'} ms; whole run ${load.outcomes.length} requests, ` +
    `${JSON.stringify(countBy(load.outcomes, (o) => `${o.phase} ${answerOf(o)}`))}` +
    `${scenario.extraFigures !== undefined ? `; ${scenario.extraFigures()}` : ''}`)

  stage = `${scenario.tag} checks`
  await t.test('4. creates across the fault: a 201 made its user, an answered failure made none', async (t) => {
    await checkCreates(t, scenario, base, load.outcomes.filter((outcome) => outcome.kind === 'create'))
  })
}

function safeJson (text: string): unknown {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/** The ids of the users with these names, by name, straight from the table. */
async function rowsByName (databaseUrl: string, names: string[]): Promise<Map<string, number[]>> {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  try {
    const { rows } = await client.query<{ id: string, name: string }>('SELECT id, name FROM users WHERE name = ANY($1::text[])', [names])
    const byName = new Map<string, number[]>()
    for (const row of rows) byName.set(row.name, [...(byName.get(row.name) ?? []), Number(row.id)])
    return byName
  } finally {
    await client.end()
  }
}

async function checkCreates (t: Test, scenario: Scenario, base: string, creates: Outcome[]): Promise<void> {
  const names = creates.map((create) => create.name as string)
  const byName = await rowsByName(scenario.directDatabaseUrl, names)
  const created = creates.filter((create) => create.status === 201)
  const answeredFailure = creates.filter((create) => create.status !== undefined && create.status !== 201)
  const unknown = creates.filter((create) => create.status === undefined)

  const missing = created.filter((create) => {
    const id = (safeJson(create.body ?? '') as { id?: unknown } | undefined)?.id
    return !(byName.get(create.name as string) ?? []).includes(Number(id))
  })
  const failedWithRow = answeredFailure.filter((create) => byName.has(create.name as string))
  const unknownWithRow = unknown.filter((create) => byName.has(create.name as string))
  const duplicated = [...byName.entries()].filter(([, found]) => found.length > 1)

  t.same(missing.map((create) => create.name), [], `every one of ${created.length} creates answered 201 has its row`)
  t.same(duplicated.map(([name]) => name), [], 'no create made two rows')
  t.same(failedWithRow.map((create) => `${create.name ?? ''} (${create.keyed === true ? 'keyed' : 'no key'}): ${answerOf(create)} ${create.body ?? ''}`), [],
    `every one of ${answeredFailure.length} creates answered with a failure left no row (${failedWithRow.length} did)`)

  // A keyed create that did not get its 201 is retried with the same key
  // and body, as a client would: it must end with a 201 and one user, the
  // first attempt's if it did take effect (replayed), else a new one.
  const retried = creates.filter((create) => create.keyed === true && create.status !== 201)
  const retries = await Promise.all(retried.map(async (create) => {
    const response = await fetch(`${base}/api/users`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'idempotency-key': create.name as string },
      body: JSON.stringify({ name: create.name }),
      signal: AbortSignal.timeout(CLIENT_TIMEOUT_MS)
    })
    const body = await response.text()
    return { create, status: response.status, replayed: response.headers.get('idempotent-replayed') === 'true', body }
  }))
  t.same(retries.filter((retry) => retry.status !== 201).map((retry) => `${retry.create.name ?? ''}: ${retry.status} ${retry.body}`), [],
    `every one of ${retries.length} keyed creates without a 201 gets one when retried with its key`)
  const wrongReplay = retries.filter((retry) => retry.replayed !== byName.has(retry.create.name as string))
  t.same(wrongReplay.map((retry) => `${retry.create.name ?? ''}: replayed ${String(retry.replayed)}, row before the retry ${String(byName.has(retry.create.name as string))}`), [],
    'a retry replays exactly when the first attempt had made the user')
  const keyedNames = creates.filter((create) => create.keyed === true).map((create) => create.name as string)
  const afterRetries = await rowsByName(scenario.directDatabaseUrl, keyedNames)
  t.same(keyedNames.filter((name) => afterRetries.get(name)?.length !== 1), [], `each of ${keyedNames.length} keyed creates made exactly one user`)

  const kind = (create: Outcome): string => create.keyed === true ? 'keyed' : 'no key'
  t.comment(`${scenario.tag}: rows checked ${creates.length} (creates sent: ${JSON.stringify(countBy(creates, kind))}); ` +
    `201 ${created.length}, all present: ${missing.length === 0}; ` +
    `answered failure ${answeredFailure.length} ${JSON.stringify(countBy(answeredFailure, (o) => `${kind(o)} ${answerOf(o)}`))}, ` +
    `of which with a row ${failedWithRow.length} ${JSON.stringify(countBy(failedWithRow, (o) => `${o.phase} ${kind(o)} ${answerOf(o)}`))}; ` +
    `outcome unknown (no answer) ${unknown.length} ${JSON.stringify(countBy(unknown, kind))}, of which with a row ${unknownWithRow.length}; ` +
    `keyed retries ${retries.length}: replayed ${retries.filter((r) => r.replayed).length}, created anew ${retries.filter((r) => r.status === 201 && !r.replayed).length}`)
  totals.creates += creates.length
  totals.created += created.length
  totals.failedWithRow += failedWithRow.length
  totals.unknown += unknown.length
  totals.unknownWithRow += unknownWithRow.length
}

// --- the faults -----------------------------------------------------------

t.test('1. the link to the database is cut (every connection reset) under load', async (t) => {
  const databaseUrl = await createTestDatabase(t)
  const proxy = await TcpProxy.forUrl(databaseUrl)
  t.teardown(() => proxy.close())
  let seenAtRepair = 0
  await runScenario(t, {
    tag: `cut-${randomBytes(3).toString('hex')}`,
    appDatabaseUrl: proxy.url(databaseUrl),
    directDatabaseUrl: databaseUrl,
    breakIt: async () => { proxy.cut() },
    faultMs: 2_500,
    repair: async () => {
      seenAtRepair = proxy.connectionsSeen
      proxy.restore()
    },
    extraFigures: () => `proxy: ${proxy.connectionsSeen} connections seen, ${proxy.connectionsReset} reset, ` +
      `${proxy.connectionsSeen - seenAtRepair} opened after restore`
  })
})

t.test('2. the link to the database stalls (connections open, nothing moves) under load', async (t) => {
  const databaseUrl = await createTestDatabase(t)
  const proxy = await TcpProxy.forUrl(databaseUrl)
  t.teardown(() => proxy.close())
  let seenAtStall = 0
  let seenAtRepair = 0
  await runScenario(t, {
    tag: `stall-${randomBytes(3).toString('hex')}`,
    appDatabaseUrl: proxy.url(databaseUrl),
    directDatabaseUrl: databaseUrl,
    breakIt: async () => {
      seenAtStall = proxy.connectionsSeen
      proxy.stall()
    },
    // Longer than the client-side statement timeout, so stalled statements give up.
    faultMs: 4_000,
    repair: async () => {
      seenAtRepair = proxy.connectionsSeen
      proxy.restore()
    },
    extraFigures: () => `proxy: ${seenAtRepair - seenAtStall} connections opened while stalled, ` +
      `${proxy.connectionsSeen - seenAtRepair} after restore, ${proxy.openConnections} open at the end`
  })
})

async function freePort (): Promise<number> {
  const server = net.createServer()
  server.listen(0, '127.0.0.1')
  await new Promise((resolve) => server.once('listening', resolve))
  const { port } = server.address() as net.AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

t.test('3. PostgreSQL itself is stopped under load and started again on the same port and data', async (t) => {
  const scratch = await makeThrowawayFolder('users-service-faults-')
  const dataDir = join(scratch, 'data')
  const port = await freePort()
  // The same data folder and port each time, as a database server's restart keeps them.
  const cluster = (): Promise<EmbeddedDatabase> => startEmbeddedPostgres({ dataDir, port, persistent: true, fast: true })
  const booted = performance.now()
  let running = await cluster()
  // Teardowns run last-registered first: the app (and its pool) closes
  // before this stops the cluster and deletes its folder.
  t.teardown(async () => {
    await running.stop().catch(() => {})
    await rm(scratch, { recursive: true, force: true })
  })
  const serverUrl = `postgres://postgres:postgres@127.0.0.1:${port}/postgres`
  const admin = new pg.Client({ connectionString: serverUrl })
  await admin.connect()
  await admin.query('CREATE DATABASE faults')
  await admin.end()
  const databaseUrl = `postgres://postgres:postgres@127.0.0.1:${port}/faults`
  await runMigrations({ connectionString: databaseUrl, timeoutMs: 30_000, connectTimeoutMs: 5_000 })
  t.comment(`restart: own cluster on port ${port} initialised, started and migrated in ${Math.round(performance.now() - booted)} ms`)

  let stopMs = 0
  let startMs = 0
  await runScenario(t, {
    tag: `restart-${randomBytes(3).toString('hex')}`,
    appDatabaseUrl: databaseUrl,
    directDatabaseUrl: databaseUrl,
    breakIt: async () => {
      const stopping = performance.now()
      // A fast shutdown (SIGINT), as an orchestrator's stop or a failover does.
      await running.stop()
      stopMs = Math.round(performance.now() - stopping)
    },
    faultMs: 3_000,
    repair: async () => {
      const starting = performance.now()
      running = await cluster()
      startMs = Math.round(performance.now() - starting)
    },
    extraFigures: () => `cluster stopped in ${stopMs} ms, started again in ${startMs} ms (recovery counted from started)`
  })
})

t.test('5. a cut while writes hold their connections (waiting on a lock)', async (t) => {
  // Deterministic: each write has its own connection checked out of the
  // pool, its statement sent and waiting, when every connection is reset.
  const databaseUrl = await createTestDatabase(t)
  const proxy = await TcpProxy.forUrl(databaseUrl)
  t.teardown(() => proxy.close())
  const tag = `held-${randomBytes(3).toString('hex')}`
  const [patchId, deleteId] = await seed(databaseUrl, tag)
  const { base } = await listen(t, proxy.url(databaseUrl))
  const database = new URL(databaseUrl).pathname.slice(1)

  const locker = new pg.Client({ connectionString: databaseUrl })
  await locker.connect()
  let locked = true
  t.teardown(async () => {
    if (locked) await locker.query('ROLLBACK').catch(() => {})
    await locker.end()
  })
  await locker.query('BEGIN')
  await locker.query('LOCK TABLE users IN ACCESS EXCLUSIVE MODE')

  const json = { 'content-type': 'application/json' }
  const writes = [
    { what: 'POST /api/users', method: 'POST', path: '/api/users', headers: json, body: { name: `${tag}-plain` } },
    { what: 'POST /api/users with a key', method: 'POST', path: '/api/users', headers: { ...json, 'idempotency-key': `${tag}-keyed` }, body: { name: `${tag}-keyed` } },
    { what: 'PATCH /api/users/{id}', method: 'PATCH', path: `/api/users/${patchId ?? 0}`, headers: json, body: { name: `${tag}-patched` } },
    { what: 'DELETE /api/users/{id}', method: 'DELETE', path: `/api/users/${deleteId ?? 0}`, headers: {}, body: undefined }
  ]
  const unhandledBefore = unhandled.length
  stage = `${tag} writes held`
  const answers = writes.map(async (write) => {
    const started = performance.now()
    try {
      const response = await fetch(`${base}${write.path}`, {
        method: write.method,
        headers: write.headers,
        ...(write.body === undefined ? {} : { body: JSON.stringify(write.body) }),
        signal: AbortSignal.timeout(CLIENT_TIMEOUT_MS)
      })
      const body = await response.text()
      return { ...write, status: response.status as number | undefined, body, ms: Math.round(performance.now() - started) }
    } catch (error) {
      return { ...write, status: undefined, body: describeError(error), ms: Math.round(performance.now() - started) }
    }
  })

  // Wait until all four statements are blocked on the lock.
  const observer = new pg.Client({ connectionString: databaseUrl })
  await observer.connect()
  t.teardown(() => observer.end())
  let waiting = 0
  for (let i = 0; i < 150 && waiting < writes.length; i++) {
    const { rows } = await observer.query<{ waiting: number }>(`SELECT count(*)::int AS waiting FROM pg_stat_activity
      WHERE datname = $1 AND application_name = 'users-service' AND wait_event_type = 'Lock'`, [database])
    waiting = rows[0]?.waiting ?? 0
    if (waiting < writes.length) await sleep(20)
  }
  t.equal(waiting, writes.length, 'every write is waiting on the lock, its connection checked out')

  proxy.cut()
  const results = await Promise.all(answers)
  await sleep(200)
  const escaped = unhandled.slice(unhandledBefore)
  t.same(escaped, [], 'no error escaped when the connections of writes in flight were reset ' +
    '(an uncaught exception ends the server: close-with-grace shuts it down)')
  for (const result of results) {
    t.ok(result.ms <= ANSWER_BOUND_MS, `${result.what}: answered in ${result.ms} ms`)
    t.ok(result.status === undefined || result.status === 503, `${result.what}: a 503 or the connection closed (outcome unknown): ${result.status ?? 'no answer'} ${result.body}`)
  }

  await locker.query('ROLLBACK')
  locked = false
  proxy.restore()
  stage = `${tag} after`
  let recovered = false
  for (let i = 0; i < 100 && !recovered; i++) {
    recovered = (await probe(base, '/health/ready')).status === 200 && (await probe(base, `/api/users/${patchId ?? 0}`)).status === 200
    if (!recovered) await sleep(50)
  }
  t.ok(recovered, 'the app answers again once the link is back')

  // What the writes did, once their backends could go on.
  await sleep(300)
  const keyed = results[1]
  const { rows } = await observer.query<{ name: string }>('SELECT name FROM users WHERE name = ANY($1::text[])', [[`${tag}-plain`, `${tag}-keyed`, `${tag}-patched`]])
  const deleted = (await observer.query('SELECT 1 FROM users WHERE id = $1', [deleteId])).rowCount === 0
  const present = new Set(rows.map((row) => row.name))
  if (keyed?.status === 503) t.notOk(present.has(`${tag}-keyed`), 'the keyed create answered 503 made no user')
  for (const [index, name] of [[0, `${tag}-plain`], [2, `${tag}-patched`]] as const) {
    const result = results[index]
    if (result?.status === 503) t.notOk(present.has(name), `${result.what} answered 503 and did not take effect`)
  }
  if (results[3]?.status === 503) t.notOk(deleted, 'DELETE answered 503 and did not take effect')
  t.comment(`${tag}: answers ${results.map((r) => `${r.what} ${r.status ?? 'no answer'} in ${r.ms} ms`).join('; ')}; ` +
    `afterwards: plain create ${present.has(`${tag}-plain`) ? 'made' : 'not made'}, keyed create ${present.has(`${tag}-keyed`) ? 'made' : 'not made'}, ` +
    `patch ${present.has(`${tag}-patched`) ? 'applied' : 'not applied'}, delete ${deleted ? 'applied' : 'not applied'}; ` +
    `errors escaped: ${escaped.length}`)
})

t.test('no unhandled rejection or uncaught exception during any fault', async (t) => {
  t.comment(`creates across all faults: ${totals.creates} sent, ${totals.created} answered 201, ` +
    `${totals.failedWithRow} answered a failure yet made a row, ${totals.unknown} outcome unknown (${totals.unknownWithRow} with a row)`)
  t.same(unhandled, [])
})
