import { createHash } from 'node:crypto'
import type { FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { claimKey, findKey, purgeExpiredKeys, saveAnswer, type StoredAnswer } from '../db/idempotency-keys.js'
import type { QueryRunner } from '../db/read-pipeline.js'
import { sendError } from './errors.js'

export type { StoredAnswer }

export interface IdempotencyOptions {
  /** How long a key's answer is kept (the contract promises at least 24 h). */
  ttlSeconds: number
  /** How often expired keys are purged, in batches. */
  purgeIntervalMs: number
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
const PURGE_MAX_BATCHES = 20

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
    const key = request.headers[IDEMPOTENCY_KEY_HEADER]
    if (typeof key !== 'string') return send(reply, await create(pool))

    const fingerprint = fingerprintOf(request)
    // Decided and committed first, sent after: a client never sees a 201
    // whose transaction could still fail.
    const outcome = await fastify.pg.transact(async (client): Promise<Outcome> => {
      if (await claimKey(client, key, fingerprint, options.ttlSeconds)) {
        const answer = await create(client)
        await saveAnswer(client, key, answer)
        return { kind: 'performed', answer }
      }
      const record = await findKey(client, key)
      // Not reachable while records are written in one transaction; kept so
      // that a record from an interrupted write is never replayed as empty.
      if (record === undefined || record.statusCode === null || record.body === null) return { kind: 'in-progress' }
      if (record.fingerprint !== fingerprint) return { kind: 'different-request' }
      return { kind: 'replayed', answer: { statusCode: record.statusCode, headers: record.headers ?? {}, body: record.body } }
    })

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

  async function purgeExpired (): Promise<number> {
    let purged = 0
    for (let batch = 0; batch < PURGE_MAX_BATCHES; batch++) {
      // Requests come first: a busy pool is left alone until the next round.
      if (pool.waitingCount > 0) break
      const deleted = await purgeExpiredKeys(pool, PURGE_BATCH)
      purged += deleted
      if (deleted < PURGE_BATCH) break
    }
    return purged
  }

  fastify.decorate('idempotency', { handle, purgeExpired })

  let timer: NodeJS.Timeout | undefined
  fastify.addHook('onReady', async () => {
    timer = setInterval(() => {
      purgeExpired().then(
        (purged) => { if (purged > 0) fastify.log.info({ purged }, 'purged expired idempotency keys') },
        (error: unknown) => fastify.log.warn({ err: error }, 'purging expired idempotency keys failed; will retry')
      )
    }, options.purgeIntervalMs)
    timer.unref()
  })
  fastify.addHook('onClose', async () => clearInterval(timer))
}, { name: 'idempotency', dependencies: ['database', 'errors'] })

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
