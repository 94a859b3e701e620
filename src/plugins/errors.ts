import { STATUS_CODES } from 'node:http'
import type { FastifyError, FastifyReply } from 'fastify'
import fp from 'fastify-plugin'
import { classifyDatabaseError } from '../db/errors.js'
import { WriteOutcomeUnknownError } from '../db/writes.js'
import type { ErrorBody } from '../schemas/errors.js'

/** Seconds a client should wait before retrying when the database is away. */
const RETRY_AFTER_SECONDS = 1

export const UNSUPPORTED_MEDIA_TYPE = 'Content-Type must be application/json'

export function sendError (reply: FastifyReply, statusCode: number, message: string): FastifyReply {
  const body: ErrorBody = { statusCode, error: STATUS_CODES[statusCode] ?? 'Error', message }
  return reply.code(statusCode).type('application/json; charset=utf-8').send(body)
}

/** A 503 with Retry-After: nothing was done, and trying again shortly may work. */
export function sendUnavailable (reply: FastifyReply, message: string): FastifyReply {
  return sendError(reply.header('retry-after', String(RETRY_AFTER_SECONDS)), 503, message)
}

/**
 * Turns every failure into the contract's error body. Client mistakes keep
 * their status and message; database trouble becomes 409, 400 or 503; and
 * anything else is a 500 that says nothing of the internals.
 */
export default fp(async function errors (fastify) {
  fastify.setErrorHandler(function handleError (error: FastifyError, request, reply) {
    if (error instanceof WriteOutcomeUnknownError) {
      // Neither 503 ("nothing happened, retry") nor 2xx would be true. A
      // connection closed without an answer is what HTTP says for "outcome
      // unknown"; a retry with the same Idempotency-Key learns the outcome.
      request.log.warn({ err: error }, 'write outcome unknown; closing the connection without an answer')
      reply.hijack()
      reply.raw.destroy()
      return
    }
    const failure = classifyDatabaseError(error)
    if (failure === 'unique-violation') {
      return sendError(reply, 409, 'body/email is already taken by another user')
    }
    if (failure === 'invalid-text') {
      return sendError(reply, 400, 'body has text that cannot be stored')
    }
    if (failure === 'aborted-for-concurrency') {
      // Retried already (db/writes.ts); rolled back each time, so nothing was written.
      request.log.warn({ err: error }, 'write aborted for concurrency, every try')
      return sendUnavailable(reply, 'the change collided with concurrent changes; try again shortly')
    }
    if (failure === 'unavailable') {
      request.log.warn({ err: error }, 'database unavailable')
      return sendUnavailable(reply, 'the database is unavailable; try again shortly')
    }

    const status = error.statusCode ?? 500
    if (status >= 400 && status < 500) {
      return sendError(reply, status, clientErrorMessage(error))
    }
    request.log.error({ err: error }, 'request failed')
    return sendError(reply, 500, 'something went wrong on our side')
  })

  fastify.setNotFoundHandler(function notFound (request, reply) {
    return sendError(reply, 404, `Route ${request.method} ${request.url} not found`)
  })
}, { name: 'errors' })

function clientErrorMessage (error: FastifyError): string {
  // Fastify's own words name the type it got ("Unsupported Media Type:
  // text/plain"); say what it takes instead.
  if (error.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return UNSUPPORTED_MEDIA_TYPE
  return error.message
}
