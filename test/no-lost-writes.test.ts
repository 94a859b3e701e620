// No acknowledged write is ever lost, and no failed answer hides a write.
//
// The built server (`node dist/server.js`) runs behind a TCP proxy in front
// of its database while several loops create users over real HTTP, each
// create with a name and an Idempotency-Key of its own. Meanwhile the
// database link is cut, then stalled, and the server is stopped with
// SIGTERM and replaced by a new one, which the loops switch to. Every
// request is recorded: a status with its body, or no answer (its outcome
// unknown). Requests of unknown outcome are then retried with the same key
// until they get an answer, and the table is checked against every answer:
//   - a 201 has exactly its row (same id, same name);
//   - a 503 (or any error) left no row, unless a retry of its key made one,
//     and then that retry is a fresh 201, never a replay (a replay would
//     mean the 503 hid a write);
//   - a request of unknown outcome ends, after its retries, with exactly
//     one row, which its retry's 201 names;
//   - no name has more than one row, and no row is one nobody asked for.
//
// A second case breaks the link at exactly the moment that makes an outcome
// unknown: a proxy that reads the PostgreSQL wire protocol lets COMMIT (or
// an autocommit write) through, or not, and resets the service's side of
// the connection before the answer can come back.
import { randomBytes } from 'node:crypto'
import http from 'node:http'
import net from 'node:net'
import { performance } from 'node:perf_hooks'
import pg from 'pg'
import t, { type Test } from 'tap'
import { createTestDatabase } from './helper.js'
import { sleep, spawnDist, within, type LogLine, type Spawned } from './spawn.js'
import { TcpProxy } from './support/tcp-proxy.js'

const CONNECT_TIMEOUT_MS = 500
const STATEMENT_TIMEOUT_MS = 1_000
const SHUTDOWN_GRACE_MS = 4_000
/** A client gives up here: far past every wait the service bounds (connect, statement, read timeout, settling). */
const CLIENT_TIMEOUT_MS = 10_000
const LOOPS = 6
const PAUSE_BETWEEN_REQUESTS_MS = 15
/** How long a request of unknown outcome is retried, at most. */
const RETRY_FOR_MS = 15_000

const SERVER_ENV = {
  HOST: '127.0.0.1',
  PORT: '0',
  LOG_LEVEL: 'info',
  DATABASE_CONNECT_TIMEOUT_MS: String(CONNECT_TIMEOUT_MS),
  DATABASE_STATEMENT_TIMEOUT_MS: String(STATEMENT_TIMEOUT_MS),
  SHUTDOWN_GRACE_MS: String(SHUTDOWN_GRACE_MS),
  // Fewer connections than loops: waiting for a connection is exercised too.
  DATABASE_POOL_MAX: '4'
}

const LISTENING = /^Server listening at (http:\/\/127\.0\.0\.1:\d+)$/
const UNKNOWN_LOGGED = 'write outcome unknown; closing the connection without an answer'
/** What close-with-grace logs when an uncaught exception or rejection takes the process down. */
const isCrash = (line: LogLine): boolean => line.msg === 'shutting down after an unexpected error'
const REPLAYED = 'idempotent-replayed'
const ERROR_KEYS = ['error', 'message', 'statusCode']

interface Server extends Spawned {
  base: string
  label: string
}

async function startServer (t: Test, label: string, databaseUrl: string): Promise<Server> {
  const spawned = spawnDist(t, 'server.js', { ...SERVER_ENV, DATABASE_URL: databaseUrl })
  const line = await spawned.waitForLine((l: LogLine) => LISTENING.test(String(l.msg)), `server ${label} listening`, 20_000)
  return Object.assign(spawned, { base: LISTENING.exec(String(line.msg))?.[1] ?? '', label })
}

// ---------------------------------------------------------------------------
// HTTP, with every way of not getting an answer told apart from an answer.

interface Answer {
  kind: 'answer'
  status: number
  replayed: boolean
  retryAfter: string | undefined
  text: string
  body: any
}

interface NoAnswer {
  kind: 'none'
  reason: string
  /** Sent on a kept-alive connection (which the server may be closing as idle at that very moment). */
  reusedSocket: boolean
  /** The connection was refused: the request provably never reached a server. */
  refused: boolean
}

type Outcome = Answer | NoAnswer

interface Attempt {
  server: string
  /** Milliseconds since the load began. */
  sentAt: number
  doneAt: number
  outcome: Outcome
}

function send (base: string, method: string, path: string, body: unknown, headers: Record<string, string>, agent: http.Agent | false): Promise<Outcome> {
  return new Promise((resolve) => {
    let settled = false
    const done = (outcome: Outcome): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      resolve(outcome)
    }
    const none = (error: Error & { code?: string }): void => {
      done({ kind: 'none', reason: error.code ?? error.message, reusedSocket: request.reusedSocket, refused: error.code === 'ECONNREFUSED' })
    }
    const payload = JSON.stringify(body)
    const request = http.request(base + path, {
      method,
      agent,
      headers: { ...headers, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(payload)) }
    }, (response) => {
      let text = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => { text += chunk })
      response.on('error', none)
      response.on('close', () => { if (!response.complete) none(new Error('answer cut short')) })
      response.on('end', () => {
        let parsed: unknown
        try {
          parsed = JSON.parse(text)
        } catch {}
        const retryAfter = response.headers['retry-after']
        done({
          kind: 'answer',
          status: response.statusCode ?? 0,
          replayed: response.headers[REPLAYED] === 'true',
          retryAfter: typeof retryAfter === 'string' ? retryAfter : undefined,
          text,
          body: parsed
        })
      })
    })
    request.on('error', none)
    const timer = setTimeout(() => request.destroy(Object.assign(new Error('client timeout'), { code: 'CLIENT_TIMEOUT' })), CLIENT_TIMEOUT_MS)
    request.end(payload)
  })
}

const isAnswer = (outcome: Outcome | undefined, status?: number): outcome is Answer =>
  outcome?.kind === 'answer' && (status === undefined || outcome.status === status)

const describe = (outcome: Outcome | undefined): string =>
  outcome === undefined ? 'nothing' : outcome.kind === 'none' ? `no answer (${outcome.reason})` : `${outcome.status} ${outcome.text.slice(0, 200)}`

// ---------------------------------------------------------------------------

type Route = '/api/users' | '/api/user'

interface Create {
  route: Route
  key: string
  name: string
  first: Attempt
  retries: Attempt[]
}

const lastAnswer = (create: Create): Outcome | undefined => create.retries.at(-1)?.outcome
const isUnknown = (attempt: Attempt): boolean => attempt.outcome.kind === 'none' && !attempt.outcome.refused

t.test('under a cut, a stall and a restart, every create is answered truly or retried to exactly one row', { timeout: 90_000 }, async (t) => {
  const databaseUrl = await createTestDatabase(t)
  const proxy = await TcpProxy.forUrl(databaseUrl)
  t.teardown(() => proxy.close())
  const observer = new pg.Pool({ connectionString: databaseUrl, max: 2 })
  observer.on('error', () => {})
  t.teardown(() => observer.end())
  const agent = new http.Agent({ keepAlive: true, maxSockets: LOOPS })
  t.teardown(() => agent.destroy())

  const serverUrl = proxy.url(databaseUrl)
  const servers: Server[] = [await startServer(t, 'A', serverUrl)]
  const state = { target: servers[0] as Server, stop: false }
  const creates: Create[] = []
  const marks: Record<string, number> = {}
  const crashes: string[] = []
  const began = performance.now()
  const now = (): number => Math.round(performance.now() - began)

  async function attempt (server: Server, create: Pick<Create, 'route' | 'key' | 'name'>): Promise<Attempt> {
    const sentAt = now()
    const outcome = await send(server.base, 'POST', create.route, { name: create.name }, { 'idempotency-key': create.key }, agent)
    return { server: server.label, sentAt, doneAt: now(), outcome }
  }

  async function loop (n: number): Promise<void> {
    for (let seq = 0; !state.stop; seq++) {
      const server = state.target
      const id = `${n}-${seq}-${randomBytes(4).toString('hex')}`
      const create = { route: ((n + seq) % 2 === 0 ? '/api/users' : '/api/user') as Route, key: `nlw-${id}`, name: `nlw ${id}` }
      const made = await attempt(server, create)
      creates.push({ ...create, first: made, retries: [] })
      // Refused: that server is gone; wait a moment for the loop's next target.
      await sleep(made.outcome.kind === 'none' && made.outcome.refused ? 50 : PAUSE_BETWEEN_REQUESTS_MS)
    }
  }

  /** Starts the next server and points the loops at it. */
  async function replace (): Promise<Server> {
    const next = await startServer(t, String.fromCharCode(65 + servers.length), serverUrl)
    servers.push(next)
    state.target = next
    return next
  }

  /**
   * A server that went down by itself (as a supervisor would): noted, and
   * replaced, so that the load goes on and every other check still runs.
   */
  async function replaceIfCrashed (fault: string): Promise<void> {
    await sleep(200)
    const crash = state.target.lines.find(isCrash)
    if (crash === undefined && state.target.child.exitCode === null) return
    crashes.push(`server ${state.target.label} went down after the ${fault}: ${JSON.stringify(crash ?? state.target.stderr())}`)
    marks[`replacedAfter${fault}`] = now()
    await replace()
  }

  const loops = Array.from({ length: LOOPS }, (_, n) => loop(n))

  // 1. The link stalls: nothing moves, connections stay open.
  await sleep(1_500)
  marks.stall = now()
  proxy.stall()
  await sleep(2_500)
  proxy.restore()
  marks.stallRestored = now()
  await replaceIfCrashed('Stall')

  // 2. The link is cut (every connection reset), with queries surely in
  // flight: it stalls for a moment first, so requests are waiting on it.
  await sleep(1_500)
  marks.cutStall = now()
  proxy.stall()
  await sleep(300)
  marks.cut = now()
  proxy.cut()
  await sleep(1_500)
  proxy.restore()
  marks.cutRestored = now()
  await replaceIfCrashed('Cut')

  // 3. A rolling restart: SIGTERM to the running server while the load
  // goes on, and a new one (a new port) that the loops switch to.
  await sleep(2_000)
  const stopped = state.target
  marks.sigterm = now()
  stopped.child.kill('SIGTERM')
  const last = await replace()
  marks.switched = now()
  const stoppedExit = await stopped.exitWithin(SHUTDOWN_GRACE_MS + 5_000)
  marks.stoppedExited = now()
  await sleep(2_000)
  state.stop = true
  await within(Promise.all(loops), CLIENT_TIMEOUT_MS + 5_000, 'the load loops to finish')
  marks.loadEnded = now()

  t.same(crashes, [], 'no server went down when the database link stalled or was cut')
  t.equal(stoppedExit.code, 0, `server ${stopped.label} exits 0 on SIGTERM, under load`)
  t.notOk(stopped.lines.some((line) => /killed by timeout/.test(String(line.msg))), 'within its shutdown grace')

  // Retry every request of unknown outcome, and every other 503 (a 503 must
  // mean nothing happened: its retry creates, and replays nothing).
  let nth503 = 0
  const retried = creates.filter((create) => isUnknown(create.first) || (isAnswer(create.first.outcome, 503) && nth503++ % 2 === 0))
  await Promise.all(retried.map(async (create) => {
    const deadline = performance.now() + RETRY_FOR_MS
    for (;;) {
      const made = await attempt(last, create)
      create.retries.push(made)
      const outcome = made.outcome
      // 503: the retry did nothing; 409: the key is still held. Ask again.
      if (isAnswer(outcome) && outcome.status !== 503 && outcome.status !== 409) return
      if (performance.now() > deadline) return
      await sleep(isAnswer(outcome) ? 1_000 * Number(outcome.retryAfter ?? 0.25) : 250)
    }
  }))
  marks.retriesEnded = now()

  // What the database holds.
  const { rows: userRows } = await observer.query<{ id: string, name: string }>('SELECT id::text, name FROM users ORDER BY id')
  const { rows: keyRows } = await observer.query<{ key: string, status: number | null, body: string | null }>(
    'SELECT key, status_code AS status, response_body AS body FROM idempotency_keys')
  const rowsByName = new Map<string, Array<{ id: string, name: string }>>()
  for (const row of userRows) rowsByName.set(row.name, [...(rowsByName.get(row.name) ?? []), row])
  const keys = new Map(keyRows.map((row) => [row.key, row]))
  const rowsOf = (name: string): Array<{ id: string, name: string }> => rowsByName.get(name) ?? []

  const problems: Record<string, string[]> = {
    unexpectedStatus: [],
    badErrorBody: [],
    acknowledgedLost: [],
    failedButWritten: [],
    retried503Replayed: [],
    unknownUnresolved: [],
    duplicateNames: [],
    phantomRows: []
  }
  const note = (kind: string, create: Create, what: string): void => {
    problems[kind]?.push(`${create.route} key=${create.key} name=${JSON.stringify(create.name)} first=${describe(create.first.outcome)} ` +
      `retries=[${create.retries.map((r) => describe(r.outcome)).join(' | ')}]: ${what}`)
  }

  /** The create's one row, checked against a 201's body and the key's record. */
  function checkCreated (create: Create, answer: Answer, kind: string): void {
    const rows = rowsOf(create.name)
    const id = String(answer.body?.id)
    if (rows.length !== 1 || rows[0]?.id !== id) note(kind, create, `201 with id ${id}, rows ${JSON.stringify(rows)}`)
    if (answer.body?.name !== create.name) note(kind, create, `201 names ${JSON.stringify(answer.body?.name)}`)
    const record = keys.get(create.key)
    const recordedId = record?.body === null || record?.body === undefined ? undefined : String(JSON.parse(record.body).id)
    if (record?.status !== 201 || recordedId !== id) note(kind, create, `key record ${JSON.stringify(record)}`)
  }

  let rowsChecked = 0
  for (const create of creates) {
    const firstOutcome = create.first.outcome
    if (isAnswer(firstOutcome) && firstOutcome.status !== 201 && firstOutcome.status !== 503) {
      note('unexpectedStatus', create, 'only 201 or 503 may answer a create here')
    }
    if (isAnswer(firstOutcome) && firstOutcome.status >= 400) {
      const body = firstOutcome.body
      if (typeof body !== 'object' || body === null || Object.keys(body).sort().join() !== ERROR_KEYS.join() || body.statusCode !== firstOutcome.status) {
        note('badErrorBody', create, 'not the contract\'s error body')
      }
    }
    const final = lastAnswer(create)
    if (isAnswer(firstOutcome, 201)) {
      checkCreated(create, firstOutcome, 'acknowledgedLost')
      rowsChecked++
    } else if (isAnswer(firstOutcome) || (firstOutcome.kind === 'none' && firstOutcome.refused)) {
      // An answered failure (or a refused connection): nothing happened.
      if (create.retries.length === 0) {
        if (rowsOf(create.name).length !== 0 || keys.has(create.key)) note('failedButWritten', create, `rows ${JSON.stringify(rowsOf(create.name))}, key ${JSON.stringify(keys.get(create.key))}`)
      } else if (!isAnswer(final, 201)) {
        note('failedButWritten', create, 'its retry did not create')
      } else {
        if (final.replayed) note('retried503Replayed', create, 'the retry replayed a create the 503 said did not happen')
        checkCreated(create, final, 'failedButWritten')
      }
      rowsChecked++
    } else {
      // Unknown outcome: after its retries, exactly one row, named by the retry's 201.
      if (!isAnswer(final, 201)) note('unknownUnresolved', create, 'retries ended without a 201')
      else checkCreated(create, final, 'unknownUnresolved')
      rowsChecked++
    }
  }
  const namesAsked = new Set(creates.map((create) => create.name))
  for (const [name, rows] of rowsByName) {
    if (rows.length > 1) problems.duplicateNames?.push(`${JSON.stringify(name)}: ${rows.length} rows`)
    if (!namesAsked.has(name)) problems.phantomRows?.push(`${JSON.stringify(name)}: nobody asked for it`)
  }
  for (const [kind, list] of Object.entries(problems)) {
    t.same(list.slice(0, 20), [], `${kind}: none (${list.length})`)
  }

  // Figures.
  const statusCounts = new Map<string, number>()
  const count = (map: Map<string, number>, key: string): void => { map.set(key, (map.get(key) ?? 0) + 1) }
  for (const create of creates) {
    const outcome = create.first.outcome
    count(statusCounts, outcome.kind === 'answer' ? String(outcome.status) : outcome.refused ? 'refused' : `no answer (${outcome.reason})`)
  }
  const retryResults = new Map<string, number>()
  for (const create of retried) {
    const final = lastAnswer(create)
    const why = isUnknown(create.first) ? 'unknown' : '503'
    count(retryResults, `${why} -> ${final === undefined ? 'nothing' : final.kind === 'none' ? 'no answer' : `${final.status}${final.replayed ? ' replayed' : ' fresh'}`}`)
  }
  const firstCreatedAfter = (from: number, server?: string): number | undefined => creates
    .filter((c) => c.first.sentAt >= from && isAnswer(c.first.outcome, 201) && (server === undefined || c.first.server === server))
    .map((c) => c.first.doneAt)
    .sort((a, b) => a - b)[0]
  const since = (at: number | undefined, from: number | undefined): string =>
    at === undefined || from === undefined ? 'never' : `${at - from} ms`
  const unknowns = creates.filter((c) => isUnknown(c.first))
  const inFlightDuring = (from: number, to: number): number => unknowns.filter((c) => c.first.sentAt < to && c.first.doneAt >= from).length
  const unknownDetails = unknowns.slice(0, 12).map((c) => {
    const outcome = c.first.outcome as NoAnswer
    return `${c.first.server} sent@${c.first.sentAt} +${c.first.doneAt - c.first.sentAt}ms ${outcome.reason}${outcome.reusedSocket ? ' (kept-alive socket)' : ''}`
  })
  const loggedUnknown = servers.map((server) => `${server.lines.filter((line) => line.msg === UNKNOWN_LOGGED).length} (${server.label})`).join(' + ')
  const retryAttempts = retried.reduce((sum, c) => sum + c.retries.length, 0)
  const answered503 = creates.filter((c) => isAnswer(c.first.outcome, 503))

  t.comment(`requests sent: ${creates.length} creates by ${LOOPS} loops over ${marks.loadEnded} ms (${creates.filter((c) => c.route === '/api/users').length} POST /api/users, ${creates.filter((c) => c.route === '/api/user').length} POST /api/user)`)
  t.comment(`answers by status: ${[...statusCounts].map(([k, v]) => `${k}: ${v}`).join(', ')}`)
  t.comment(`503s with Retry-After: ${answered503.filter((c) => (c.first.outcome as Answer).retryAfter !== undefined).length} of ${answered503.length}`)
  t.comment(`unknown outcomes: ${unknowns.length} (in flight during the cut ${inFlightDuring(marks.cutStall ?? 0, marks.cutRestored ?? 0)}, ` +
    `during the stall ${inFlightDuring(marks.stall ?? 0, marks.stallRestored ?? 0)}, around the restart ${inFlightDuring(marks.sigterm ?? 0, marks.stoppedExited ?? 0)}); ` +
    `server logs say ${loggedUnknown} connections closed for an unknown outcome`)
  if (unknownDetails.length > 0) t.comment(`unknown outcomes in detail: ${unknownDetails.join('; ')}`)
  t.comment(`retries: ${retried.length} requests retried (${retryAttempts} attempts): ${[...retryResults].map(([k, v]) => `${k}: ${v}`).join(', ')}`)
  t.comment(`rows checked: ${rowsChecked} requests against ${userRows.length} user rows and ${keyRows.length} key records`)
  t.comment(`answering again: first 201 after the cut was restored in ${since(firstCreatedAfter(marks.cutRestored ?? 0), marks.cutRestored)}, ` +
    `after the stall in ${since(firstCreatedAfter(marks.stallRestored ?? 0), marks.stallRestored)}, ` +
    `after SIGTERM (new server) in ${since(firstCreatedAfter(marks.sigterm ?? 0, last.label), marks.sigterm)} ` +
    `(${last.label} listening after ${since(marks.switched, marks.sigterm)}, ${stopped.label} exited after ${since(marks.stoppedExited, marks.sigterm)})`)
  t.comment(`servers: ${servers.map((server) => server.label).join(', ')}; crashes: ${crashes.length === 0 ? 'none' : crashes.join('; ')}`)
  t.comment(`timeline (ms): ${Object.entries(marks).map(([k, v]) => `${k} ${v}`).join(', ')}`)

  t.ok(creates.filter((c) => isAnswer(c.first.outcome, 201)).length > 100, 'the load did create users')
  t.ok(firstCreatedAfter(marks.cutRestored ?? 0) !== undefined, 'creates succeed again after the cut')
  t.ok(firstCreatedAfter(marks.sigterm ?? 0, last.label) !== undefined, 'and on the new server')
  last.child.kill('SIGTERM')
  t.equal((await last.exitWithin(SHUTDOWN_GRACE_MS + 5_000)).code, 0, `server ${last.label} exits 0 too`)
})

// ---------------------------------------------------------------------------
// A proxy that reads what the service sends PostgreSQL (the frontend side of
// the wire protocol: https://www.postgresql.org/docs/current/protocol-message-formats.html)
// and, once armed, breaks the link at one chosen message.

interface FrontendMessage {
  /** The message's type byte ('Q' simple query, 'P' parse, 'B' bind, 'S' sync…). */
  type: string
  sql?: string | undefined
  statement?: string | undefined
}

interface Trap {
  match: (message: FrontendMessage) => boolean
  /** Whether the matching message still reaches PostgreSQL. */
  deliver: boolean
  /** New connections are reset for this long once the trap springs (the service cannot look). */
  refuseNewForMs: number
  spring: () => void
}

function decode (bytes: Buffer): FrontendMessage {
  const type = String.fromCharCode(bytes[0] ?? 0)
  const strings: string[] = []
  for (let at = 5; strings.length < 2 && at < bytes.length;) {
    const end = bytes.indexOf(0, at)
    if (end < 0) break
    strings.push(bytes.toString('utf8', at, end))
    at = end + 1
  }
  if (type === 'Q') return { type, sql: strings[0] }
  if (type === 'P') return { type, statement: strings[0], sql: strings[1] }
  if (type === 'B') return { type, statement: strings[1] }
  return { type }
}

const isCommit = (message: FrontendMessage): boolean => message.type === 'Q' && message.sql?.trim().toUpperCase() === 'COMMIT'
const runs = (statement: string) => (message: FrontendMessage): boolean =>
  (message.type === 'P' || message.type === 'B') && message.statement === statement

class WireTrapProxy {
  private readonly sockets = new Set<net.Socket>()
  private trap: Trap | undefined
  private refuseUntil = 0

  private constructor (private readonly server: net.Server, private readonly target: { host: string, port: number }) {
    server.on('connection', (socket) => this.accept(socket))
    server.on('error', () => {})
  }

  static async start (databaseUrl: string): Promise<WireTrapProxy> {
    const url = new URL(databaseUrl)
    const server = net.createServer()
    const proxy = new WireTrapProxy(server, { host: url.hostname, port: Number(url.port === '' ? 5432 : url.port) })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    return proxy
  }

  url (databaseUrl: string): string {
    const url = new URL(databaseUrl)
    url.hostname = '127.0.0.1'
    url.port = String((this.server.address() as net.AddressInfo).port)
    return url.toString()
  }

  /**
   * The next message that matches springs the trap: it is delivered (or
   * not), and then (a simple query at once, an extended one after its Sync)
   * the service's side of that connection is reset, before any answer.
   * Resolves when it has sprung.
   */
  arm (match: Trap['match'], { deliver, refuseNewForMs = 0 }: { deliver: boolean, refuseNewForMs?: number }): Promise<void> {
    return new Promise((resolve) => { this.trap = { match, deliver, refuseNewForMs, spring: resolve } })
  }

  async close (): Promise<void> {
    for (const socket of this.sockets) socket.destroy()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }

  private accept (client: net.Socket): void {
    client.on('error', () => {})
    if (performance.now() < this.refuseUntil) {
      client.resetAndDestroy()
      return
    }
    const upstream = net.connect(this.target.port, this.target.host)
    upstream.on('error', () => {})
    this.sockets.add(client)
    this.sockets.add(upstream)
    let pending = Buffer.alloc(0)
    let started = false
    let cutAtSync = false
    let cut = false
    const cutClient = (): void => {
      cut = true
      // The backend stays connected: whatever it was sent, it finishes.
      client.resetAndDestroy()
    }

    client.on('data', (chunk: Buffer) => {
      if (cut) return
      pending = Buffer.concat([pending, chunk])
      for (;;) {
        // The startup message has no type byte; every later one has.
        const headerLength = started ? 5 : 4
        if (pending.length < headerLength) return
        const total = started ? 1 + pending.readInt32BE(1) : pending.readInt32BE(0)
        if (pending.length < total) return
        const bytes = pending.subarray(0, total)
        pending = pending.subarray(total)
        const message = started ? decode(bytes) : undefined
        started = true
        if (cutAtSync) {
          upstream.write(bytes)
          if (message?.type === 'S') return cutClient()
          continue
        }
        const trap = this.trap
        if (trap !== undefined && message !== undefined && trap.match(message)) {
          this.trap = undefined
          if (trap.deliver) upstream.write(bytes)
          if (trap.refuseNewForMs > 0) this.refuseUntil = performance.now() + trap.refuseNewForMs
          trap.spring()
          if (message.type === 'Q' || message.type === 'S') return cutClient()
          cutAtSync = true
          continue
        }
        upstream.write(bytes)
      }
    })
    upstream.on('data', (chunk: Buffer) => { if (!client.destroyed) client.write(chunk) })
    client.on('close', () => {
      this.sockets.delete(client)
      if (!cut) upstream.end()
    })
    upstream.on('close', () => {
      this.sockets.delete(upstream)
      if (!client.destroyed) client.destroy()
    })
  }
}

t.test('a link broken right after COMMIT or a write was sent: settled truly, or closed without an answer', { timeout: 60_000 }, async (t) => {
  const databaseUrl = await createTestDatabase(t)
  const proxy = await WireTrapProxy.start(databaseUrl)
  t.teardown(() => proxy.close())
  const observer = new pg.Pool({ connectionString: databaseUrl, max: 2 })
  observer.on('error', () => {})
  t.teardown(() => observer.end())
  const parent = t
  const service = { server: await startServer(t, 'C1', proxy.url(databaseUrl)), started: 1 }

  const post = (route: Route, name: string, key?: string): Promise<Outcome> =>
    send(service.server.base, 'POST', route, { name }, key === undefined ? {} : { 'idempotency-key': key }, false)
  const rowsNamed = async (name: string): Promise<Array<{ id: string, version: string }>> =>
    (await observer.query<{ id: string, version: string }>('SELECT id::text, version::text FROM users WHERE name = $1', [name])).rows
  const keyRecord = async (key: string): Promise<{ status: number, body: string } | undefined> =>
    (await observer.query<{ status: number, body: string }>('SELECT status_code AS status, response_body AS body FROM idempotency_keys WHERE key = $1', [key])).rows[0]
  /**
   * What `read` finds once `done` holds (or after 2 s): PostgreSQL runs what
   * the proxy let through on its own time, after the service has given up.
   */
  async function eventually<T> (t: Test, read: () => Promise<T>, done: (value: T) => boolean): Promise<T> {
    const started = performance.now()
    for (;;) {
      const value = await read()
      if (done(value) || performance.now() - started > 2_000) {
        t.comment(`in the database after ${Math.round(performance.now() - started)} ms`)
        return value
      }
      await sleep(25)
    }
  }
  const unknownLogged = (): number => service.server.lines.filter((line) => line.msg === UNKNOWN_LOGGED).length

  /**
   * The service must live through a broken link. If it went down, that is
   * a failure, and a new one is started so that the next case still runs.
   */
  async function survives (t: Test): Promise<void> {
    await sleep(200)
    const crash = service.server.lines.find(isCrash)
    const down = crash !== undefined || service.server.child.exitCode !== null
    t.notOk(down, `the service lives on (it logged: ${JSON.stringify(crash?.err ?? null)})`)
    if (!down) return
    const exit = await service.server.exitWithin(SHUTDOWN_GRACE_MS + 5_000)
    t.comment(`server ${service.server.label} went down, exit code ${String(exit.code)}; starting another`)
    service.server = await startServer(parent, `C${++service.started}`, proxy.url(databaseUrl))
  }

  const warm = await post('/api/users', 'warm-up', 'warm-up')
  t.equal(isAnswer(warm) && warm.status, 201, 'the service creates normally through the proxy')

  for (const route of ['/api/users', '/api/user'] as const) {
    await t.test(`${route}: COMMIT reaches PostgreSQL, the answer cannot come back: settled as committed, a 201`, async (t) => {
      const name = `committed ${route}`
      const key = `committed-${route}`
      const sprung = proxy.arm(isCommit, { deliver: true })
      const logged = unknownLogged()
      const answer = await post(route, name, key)
      await within(sprung, 1_000, 'the trap to spring')
      t.equal(isAnswer(answer) && answer.status, 201, `a 201: ${describe(answer)}`)
      t.equal(unknownLogged(), logged, 'settled: no connection closed for an unknown outcome')
      await survives(t)
      if (!isAnswer(answer)) return
      t.notOk(answer.replayed, 'the first answer, not a replay')
      t.equal(answer.body?.name, name)
      const rows = await rowsNamed(name)
      t.same(rows.map((row) => row.id), [String(answer.body?.id)], 'exactly the row the 201 names')
      const record = await keyRecord(key)
      t.equal(record?.status, 201, 'the key recorded the 201')
      t.equal(String(JSON.parse(record?.body ?? '{}').id), String(answer.body?.id), 'with the same user')
      const again = await post(route, name, key)
      t.ok(isAnswer(again, 201) && again.replayed && String(again.body?.id) === String(answer.body?.id), `a retry replays it: ${describe(again)}`)
    })
  }

  await t.test('COMMIT never reaches PostgreSQL: settled as aborted, a 503, and no row', async (t) => {
    const name = 'aborted'
    const key = 'aborted'
    const sprung = proxy.arm(isCommit, { deliver: false })
    const answer = await post('/api/users', name, key)
    await within(sprung, 1_000, 'the trap to spring')
    t.equal(isAnswer(answer) && answer.status, 503, `a 503: ${describe(answer)}`)
    if (isAnswer(answer)) {
      t.same(Object.keys(answer.body ?? {}).sort(), ERROR_KEYS, 'the contract\'s error body')
      t.ok(answer.retryAfter, 'with Retry-After')
    }
    await survives(t)
    t.same(await rowsNamed(name), [], 'no row')
    t.equal(await keyRecord(key), undefined, 'no key record')
    const again = await post('/api/users', name, key)
    t.ok(isAnswer(again, 201) && !again.replayed, `a retry creates, fresh: ${describe(again)}`)
    t.same((await rowsNamed(name)).map((row) => row.id), [String(isAnswer(again) && again.body?.id)], 'one row, the retry\'s')
  })

  await t.test('COMMIT reaches PostgreSQL but the service cannot look: no answer, and a retry learns the 201', async (t) => {
    const name = 'unsettled'
    const key = 'unsettled'
    const sprung = proxy.arm(isCommit, { deliver: true, refuseNewForMs: 2_000 })
    const logged = unknownLogged()
    const sentAt = performance.now()
    const answer = await post('/api/users', name, key)
    await within(sprung, 1_000, 'the trap to spring')
    t.equal(answer.kind, 'none', `the connection is closed without an answer: ${describe(answer)}`)
    await service.server.waitForLine(() => unknownLogged() > logged, 'the unknown outcome logged', 2_000)
      .then(() => t.pass('the service logs the unknown outcome'), (error: Error) => t.fail(error.message))
    const rows = await eventually(t, () => rowsNamed(name), (found) => found.length > 0)
    t.equal(rows.length, 1, 'the create did happen')
    await sleep(Math.max(0, 2_200 - (performance.now() - sentAt)))
    await survives(t)
    const again = await post('/api/users', name, key)
    t.ok(isAnswer(again, 201) && again.replayed, `a retry with the key replays the 201: ${describe(again)}`)
    t.equal(String(isAnswer(again) && again.body?.id), rows[0]?.id, 'naming that row')
    t.equal((await rowsNamed(name)).length, 1, 'and creates nothing more')
  })

  await t.test('an unkeyed PATCH whose UPDATE reached PostgreSQL: no answer, and the change happened', async (t) => {
    const created = await post('/api/users', 'before patch')
    t.ok(isAnswer(created, 201), describe(created))
    const id = String(isAnswer(created) && created.body?.id)
    const logged = unknownLogged()
    const sprung = proxy.arm(runs('users.update'), { deliver: true })
    const answer = await send(service.server.base, 'PATCH', `/api/users/${id}`, { name: 'after patch' }, {}, false)
    await within(sprung, 1_000, 'the trap to spring')
    t.equal(answer.kind, 'none', `the connection is closed without an answer: ${describe(answer)}`)
    await service.server.waitForLine(() => unknownLogged() > logged, 'the unknown outcome logged', 2_000)
      .then(() => t.pass('the service logs the unknown outcome'), (error: Error) => t.fail(error.message))
    t.same(await eventually(t, () => rowsNamed('after patch'), (rows) => rows.length > 0), [{ id, version: '2' }], 'the user was changed')
    await survives(t)
  })

  await t.test('an unkeyed create whose INSERT reached PostgreSQL: no answer, and the row exists', async (t) => {
    const sprung = proxy.arm(runs('users.insert'), { deliver: true })
    const answer = await post('/api/user', 'unkeyed')
    await within(sprung, 1_000, 'the trap to spring')
    t.equal(answer.kind, 'none', `the connection is closed without an answer: ${describe(answer)}`)
    t.equal((await eventually(t, () => rowsNamed('unkeyed'), (rows) => rows.length > 0)).length, 1, 'the row exists')
    await survives(t)
  })

  const after = await post('/api/users', 'still fine', 'still-fine')
  t.ok(isAnswer(after, 201), `the service goes on creating: ${describe(after)}`)
  t.equal(service.started, 1, 'one server process served every case')
  service.server.child.kill('SIGTERM')
  t.equal((await service.server.exitWithin(SHUTDOWN_GRACE_MS + 5_000)).code, 0, 'and exits 0 on SIGTERM')
})
