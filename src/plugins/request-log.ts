import { randomUUID } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import { LogController, type FastifyReply, type FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'

const REQUEST_ID_HEADER = 'x-request-id'
// A caller's id is trusted only when it is short, printable ASCII.
const ACCEPTABLE_REQUEST_ID = /^[\x21-\x7e]{1,128}$/

/** Uses the caller's `x-request-id` when it is sane, else a fresh UUID. */
export function requestIdOf (request: IncomingMessage): string {
  const given = request.headers[REQUEST_ID_HEADER]
  return typeof given === 'string' && ACCEPTABLE_REQUEST_ID.test(given) ? given : randomUUID()
}

/** Logs each request once, when it is answered, instead of Fastify's two lines. */
export class OneLinePerRequest extends LogController {
  override incomingRequest (): void {}

  override requestCompleted (error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply): void {
    logAnswer(error, request, reply, reply.elapsedTime)
  }
}

function logAnswer (error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply, elapsedMs: number): void {
  const line = {
    method: request.method,
    url: request.url,
    statusCode: reply.statusCode,
    responseTime: Math.round(elapsedMs * 10) / 10
  }
  if (error) reply.log.error({ ...line, err: error }, 'request errored')
  else reply.log.info(line, 'request completed')
}

/**
 * Echoes the request id on every answer, errors and 404s included, and
 * logs the answers the router gives before any route, which Fastify's log
 * controller never hears of.
 */
export default fp(async function requestId (fastify) {
  fastify.addHook('onRequest', async (request, reply) => {
    reply.header(REQUEST_ID_HEADER, request.id)
  })
  fastify.routerRefusals.onAnswered((request, reply, elapsedMs) => logAnswer(null, request, reply, elapsedMs))
}, { name: 'request-id', dependencies: ['router-refusals'] })
