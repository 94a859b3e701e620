import { STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import type { ConnectionError, FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { bodyStillArriving, closeAfterDiscardingBody } from './lingering-close.js'

/**
 * The name of the first header whose value holds a control character other
 * than tab: what makes Node's parser reject a request before any route.
 */
function headerWithControlCharacter (raw: string): string | undefined {
  for (const line of raw.split('\r\n').slice(1)) {
    const colon = line.indexOf(':')
    if (colon <= 0) continue
    const value = line.slice(colon + 1)
    for (let i = 0; i < value.length; i++) {
      const code = value.charCodeAt(i)
      if ((code < 0x20 && code !== 0x09) || code === 0x7f) return line.slice(0, colon).trim()
    }
  }
  return undefined
}

/**
 * Answers requests Node's HTTP parser refused, in the contract's error
 * shape, naming the header at fault where it can be found (a control
 * character in an Idempotency-Key, say). Fastify's default says only
 * "Client Error".
 */
export function clientErrorHandler (this: FastifyInstance, error: ConnectionError, socket: Socket): void {
  if (error.code === 'ECONNRESET' || socket.destroyed) return
  let statusCode = 400
  let message = 'the request is not valid HTTP'
  if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    statusCode = 408
    message = 'the request took too long to arrive'
  } else if (error.code === 'HPE_HEADER_OVERFLOW') {
    statusCode = 431
    message = 'the request headers are too large'
  } else {
    // Typed as JSON by Fastify, but a Buffer at run time (Node's clientError).
    const raw: unknown = error.rawPacket
    const headerName = headerWithControlCharacter(Buffer.isBuffer(raw) ? raw.toString('latin1') : '')
    if (headerName !== undefined) message = `headers/${headerName.toLowerCase()} has characters that are not allowed`
  }
  // Not the error itself: its rawPacket holds the request's bytes, headers
  // (Authorization, say) included.
  this.log.debug({ code: error.code, reason: error.message }, 'client error')
  const body = JSON.stringify({ statusCode, error: STATUS_CODES[statusCode], message })
  if (socket.writable) {
    socket.write(`HTTP/1.1 ${statusCode} ${STATUS_CODES[statusCode] ?? ''}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
      `Content-Type: application/json; charset=utf-8\r\nConnection: close\r\n\r\n${body}`)
  }
  socket.destroy()
}

/**
 * Requests the router refuses before any hook runs (a malformed
 * percent-encoding, a path parameter past the router's limit), answered in
 * the contract's shape with the request id echoed, like every other answer.
 * No hook runs for them, so this does what hooks do for other answers: a
 * lingering close if the body is still coming, and the log line and the
 * metrics once sent (through `routerRefusals`).
 */
export function routingErrorHandler (error: FastifyError, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const started = performance.now()
  const [statusCode, message] = error.code === 'FST_ERR_MAX_PARAM_LENGTH'
    ? [414, 'a path segment of the URL is too long']
    : [400, 'the URL has malformed percent-encoding']
  if (bodyStillArriving(request.raw)) closeAfterDiscardingBody(request.raw, reply.raw)
  reply.raw.once('finish', () => request.server.routerRefusals.answered(request, reply, performance.now() - started))
  return reply.code(statusCode).header('x-request-id', request.id).type('application/json; charset=utf-8')
    .send({ statusCode, error: STATUS_CODES[statusCode], message })
}
