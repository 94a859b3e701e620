import { createHash } from 'node:crypto'
import { setImmediate as nextTurn, setTimeout as sleep } from 'node:timers/promises'
import type { FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { claimKey, findKey, purgeExpiredKeys, saveAnswer, type StoredAnswer } from '../db/idempotency-keys.js'
import type { QueryRunner } from '../db/read-pipeline.js'
import { endBackend, writeInTransaction, writeOnce, WriteOutcomeUnknownError } from '../db/writes.js'
import { sendError } from './errors.js'

export type { StoredAnswer }

export interface IdempotencyOptions {
  /** How long a key's answer is kept (the contract promises at least 24 h). */
  ttlSeconds: number
  /** The pause between two purges of expired keys (each goes on until none is left). */
  purgeIntervalMs: number
  /**
   * Behind a transaction pooler: the backend to end when settling is learnt
   * inside each keyed transaction (writes.ts), not from the connection.
   */
  behindPooler: boolean
}

/** Performs a create on `db` and returns the answer to send (and keep). */
export type Create = (db: QueryRunner) => Promise<StoredAnswer>

declare module 'fastify' {
  interface FastifyInstance {
    idempotency: {
      /**
       * Runs `create` once per Idempotency-Key: a repeat with the same
       * request replays the first answer; with another request it is a 422.
       * Without the header, `create` simply runs.
       */
      handle: (request: FastifyRequest, reply: FastifyReply, create: Create) => Promise<FastifyReply>
      purgeExpired: () => Promise<number>
    }
  }
}

type Outcome =
  | { kind: 'performed' | 'replayed', answer: StoredAnswer }
  | { kind: 'different-request' | 'in-progress' }

const IDEMPOTENCY_KEY_HEADER = 'idempotency-key'
const PURGE_BATCH = 1_000
/** While requests wait for a connection: the pause after a batch, in multiples of the time it took. */
const PURGE_PAUSE_PER_BATCH_TIME = 3
/** How long settling a lost transaction may wait for its backend to end. */
const SETTLE_TIMEOUT_MS = 1_000

/**
 * Idempotency-Key for creates. The key is claimed and the create performed
 * in one transaction, and the answer is stored before it commits: a repeat
 * that arrives while the first is running waits on the key's row lock, then
 * replays the committed answer (or, if the first failed and rolled back,
 * performs the create itself). So one key makes at most one user, on every
 * replica, and a key is never stored without the user it made.
 */
export default fp<IdempotencyOptions>(async function idempotency (fastify, options) {
  const pool = fastify.pg.pool

  async function handle (request: FastifyRequest, reply: FastifyReply, create: Create): Promise<FastifyReply> {
    // Node joins a repeated header's values with ", ": "k2, k3" would pass
    // for one key, and a later request sending that single value replay it.
    const copies = timesSent(request, IDEMPOTENCY_KEY_HEADER)
    if (copies > 1) return sendError(reply, 400, `headers/${IDEMPOTENCY_KEY_HEADER} must be sent once, not ${copies} times`)
    const key = request.headers[IDEMPOTENCY_KEY_HEADER]
    if (typeof key !== 'string') return send(reply, await writeOnce(pool, create))

    const fingerprint = fingerprintOf(request)
    let outcome: Outcome
    try {
      // Decided and committed first, sent after: a client never sees a 201
      // whose transaction could still fail.
      outcome = await writeInTransaction(pool, async (client): Promise<Outcome> => {
        if (await claimKey(client, key, fingerprint, options.ttlSeconds)) {
          const answer = await create(client)
          await saveAnswer(client, key, answer)
          return { kind: 'performed', answer }
        }
        return recordedOutcome(await findKey(client, key), fingerprint)
      }, { backendPerTransaction: options.behindPooler })
    } catch (error) {
      if (!(error instanceof WriteOutcomeUnknownError)) throw error
      outcome = await settle(key, fingerprint, error)
    }

    switch (outcome.kind) {
      case 'performed':
        return send(reply, outcome.answer)
      case 'replayed':
        reply.header('idempotent-replayed', 'true')
        return send(reply, outcome.answer)
      case 'different-request':
        return sendError(reply, 422, 'Idempotency-Key was already used with a different request')
      case 'in-progress':
        reply.header('retry-after', '1')
        return sendError(reply, 409, 'a request with this Idempotency-Key is still in progress')
    }
  }

  /**
   * The connection broke while COMMIT was on its way. The key tells what
   * happened, once the transaction is settled for good: its backend is
   * ended first, so a COMMIT still in flight cannot land after the look.
   * Committed: the stored answer. Not: a 503, which is then the truth. If
   * the database cannot be asked, the outcome stays unknown (and the
   * client's connection is closed without an answer; see errors.ts).
   */
  async function settle (key: string, fingerprint: string, lost: WriteOutcomeUnknownError): Promise<Outcome> {
    const gone = await endBackend(pool, lost.backend, SETTLE_TIMEOUT_MS).catch(() => false)
    if (!gone) throw lost
    const record = await findKey(pool, key).catch(() => { throw lost })
    if (record === undefined) throw lost.cause
    const outcome = recordedOutcome(record, fingerprint)
    return outcome.kind === 'replayed' ? { kind: 'performed', answer: outcome.answer } : outcome
  }

  let closing = false

  /**
   * Deletes expired keys a batch at a time until none is left, however many
   * there are, so the purge keeps up with any rate of keyed creates (a
   * batch of 1,000 takes milliseconds; a create, a transaction of its own).
   * Requests come first: while any waits for a connection, the purge pauses
   * for three times as long as its last batch took, so it holds a connection
   * at most a quarter of the time (still over 10,000 keys a second) and a
   * waiting request waits at most one batch.
   */
  async function purgeExpired (): Promise<number> {
    let purged = 0
    // `closing` turns true in onClose, while this awaits.
    for (;;) {
      if (closing) break
      const started = performance.now()
      const deleted = await purgeExpiredKeys(pool, PURGE_BATCH)
      purged += deleted
      if (deleted < PURGE_BATCH) break
      if (pool.waitingCount > 0) await sleep(PURGE_PAUSE_PER_BATCH_TIME * (performance.now() - started))
      else await nextTurn()
    }
    return purged
  }

  fastify.decorate('idempotency', { handle, purgeExpired })

  // One purge at a time, each purgeIntervalMs after the last one ended.
  let timer: NodeJS.Timeout | undefined
  let running: Promise<void> = Promise.resolve()
  function schedulePurge (): void {
    timer = setTimeout(() => {
      running = purgeExpired().then(
        (purged) => { if (purged > 0) fastify.log.info({ purged }, 'purged expired idempotency keys') },
        (error: unknown) => fastify.log.warn({ err: error }, 'purging expired idempotency keys failed; will retry')
      ).finally(() => { if (!closing) schedulePurge() })
    }, options.purgeIntervalMs)
    timer.unref()
  }
  fastify.addHook('onReady', async () => schedulePurge())
  fastify.addHook('onClose', async () => {
    closing = true
    clearTimeout(timer)
    // A purge under way stops after its batch, before the pool closes.
    await running
  })
}, { name: 'idempotency', dependencies: ['database', 'errors'] })

type KeyRecord = Awaited<ReturnType<typeof findKey>>

/** What a key's stored record means for a request with this fingerprint. */
function recordedOutcome (record: KeyRecord, fingerprint: string): Outcome {
  // Not reachable while records are written in one transaction; kept so
  // that a record from an interrupted write is never replayed as empty.
  if (record === undefined || record.statusCode === null || record.body === null) return { kind: 'in-progress' }
  if (record.fingerprint !== fingerprint) return { kind: 'different-request' }
  return { kind: 'replayed', answer: { statusCode: record.statusCode, headers: record.headers ?? {}, body: record.body } }
}

/** How many times the request carried the header `name` (lower case), as sent on the wire. */
function timesSent (request: FastifyRequest, name: string): number {
  const raw = request.raw.rawHeaders
  let times = 0
  // Name, value, name, value...
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]?.toLowerCase() === name) times++
  }
  return times
}

/** An answer serialized by the route's response schema for `statusCode`. */
export function answerOf (reply: FastifyReply, statusCode: number, headers: Record<string, string>, payload: unknown): StoredAnswer {
  return { statusCode, headers, body: String(reply.code(statusCode).serialize(payload)) }
}

function send (reply: FastifyReply, answer: StoredAnswer): FastifyReply {
  return reply.code(answer.statusCode).headers(answer.headers).type('application/json; charset=utf-8').send(answer.body)
}

/**
 * What makes two requests "the same": the route and the body. Bodies are
 * flat objects (validated by their schemas), so sorting the top-level keys
 * makes the text independent of the order the client sent them in, and a
 * null property means what its absence means (`email: null` is no email).
 */
function fingerprintOf (request: FastifyRequest): string {
  const body = request.body as Record<string, unknown>
  const present = Object.keys(body).filter((name) => body[name] !== null).sort()
  const canonical = JSON.stringify(body, present)
  return createHash('sha256').update(`${request.method} ${request.routeOptions.url ?? ''}\n${canonical}`).digest('hex')
}
