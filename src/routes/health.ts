import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { errorResponses } from '../schemas/errors.js'
import { respondsWith } from '../schemas/headers.js'
import { sendError } from '../plugins/errors.js'

export interface HealthOptions {
  /** The highest migration id this build ships: ready means "at least this". */
  latestMigrationId: number
  /** How long readiness waits for the database before answering 503. */
  readyTimeoutMs: number
}

const Ok = Type.Object({ status: Type.Literal('ok') })

/**
 * Kubernetes probes. Liveness never touches the database: a database outage
 * must not get every pod restarted. Readiness does, and answers 503 from
 * the moment shutdown begins so traffic moves away while requests finish.
 */
const health: FastifyPluginAsyncTypebox<HealthOptions> = async (fastify, options) => {
  fastify.get('/live', {
    schema: {
      tags: ['operations'],
      operationId: 'getLiveness',
      summary: 'Liveness: the process answers (the database is not consulted)',
      response: { 200: respondsWith(Ok, 'Alive'), ...errorResponses() }
    }
  }, async () => ({ status: 'ok' as const }))

  fastify.get('/ready', {
    schema: {
      tags: ['operations'],
      operationId: 'getReadiness',
      summary: 'Readiness: the database answers and every migration is applied; 503 once shutdown begins',
      response: { 200: respondsWith(Ok, 'Ready'), ...errorResponses(503) }
    }
  }, async (request, reply) => {
    if (fastify.lifecycle.closing) return sendError(reply, 503, 'shutting down')
    let applied: number
    try {
      applied = await withTimeout(appliedMigrationId(), options.readyTimeoutMs)
    } catch (error) {
      request.log.warn({ err: error }, 'readiness check failed')
      const message = (error as { code?: string }).code === '42P01'
        ? 'the database has no migrations applied'
        : 'the database is not answering'
      return sendError(reply, 503, message)
    }
    if (applied < options.latestMigrationId) {
      return sendError(reply, 503, `migrations pending: the database is at ${applied}, this version needs ${options.latestMigrationId}`)
    }
    return { status: 'ok' as const }
  })

  async function appliedMigrationId (): Promise<number> {
    const query = {
      // The table postgres-migrations keeps; its id 0 is the table itself.
      text: 'SELECT max(id) AS applied FROM migrations',
      // Past this the connection is dropped rather than held by a stalled
      // probe until the statement timeout.
      query_timeout: options.readyTimeoutMs
    }
    const { rows } = await fastify.pg.query<{ applied: number | null }>(query)
    return rows[0]?.applied ?? 0
  }
}

function withTimeout<T> (work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms)
  })
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer))
}

export default health
