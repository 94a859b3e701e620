import { isUtf8 } from 'node:buffer'
import type { FastifyError } from 'fastify'
import fp from 'fastify-plugin'
import { sendError, UNSUPPORTED_MEDIA_TYPE } from './errors.js'

/** Whether a Content-Encoding header names a coding other than identity. */
function isEncoded (contentEncoding: string | undefined): contentEncoding is string {
  if (contentEncoding === undefined) return false
  return contentEncoding.split(',').some((coding) => !['', 'identity'].includes(coding.trim().toLowerCase()))
}

/**
 * Request bodies are JSON and nothing else: Fastify would also parse
 * text/plain, and without a Content-Type it would read no body at all and
 * answer a confusing validation error. Both become a 415. And the JSON must
 * be UTF-8: Fastify's parser decodes bytes that are not (a lone surrogate
 * written raw, a stray 0xFF) as U+FFFD, which would store a name other
 * than the one sent; such a body is a 400.
 *
 * Bodies are not decompressed (they are tiny): a Content-Encoding other
 * than identity is a 415 with Accept-Encoding: identity (RFC 9110, 15.5.16),
 * answered before the body is read rather than as bytes that are not UTF-8.
 */
export default fp(async function jsonBodies (fastify) {
  // A callback rather than an async hook: it runs on every request.
  fastify.addHook('preParsing', (request, reply, payload, done) => {
    const contentEncoding = request.headers['content-encoding']
    if (request.routeOptions.schema?.body !== undefined && isEncoded(contentEncoding)) {
      reply.header('accept-encoding', 'identity')
      sendError(reply, 415, `Content-Encoding ${JSON.stringify(contentEncoding)} is not supported; send the body uncompressed`)
      return
    }
    done(null, payload)
  })

  fastify.removeContentTypeParser('text/plain')

  // Fastify's own parser (its proto- and constructor-poisoning checks and
  // its messages), after a UTF-8 check of the raw bytes.
  const parseJson = fastify.getDefaultJsonParser('error', 'error')
  fastify.removeContentTypeParser('application/json')
  fastify.addContentTypeParser('application/json', { parseAs: 'buffer' }, (request, body, done) => {
    const bytes = body as Buffer
    if (!isUtf8(bytes)) {
      const error = new Error('body is not valid UTF-8') as FastifyError
      error.statusCode = 400
      done(error, undefined)
      return
    }
    parseJson(request, bytes.toString('utf8'), done)
  })

  fastify.addHook('preValidation', async (request, reply) => {
    if (request.routeOptions.schema?.body !== undefined && request.headers['content-type'] === undefined) {
      return sendError(reply, 415, UNSUPPORTED_MEDIA_TYPE)
    }
  })
}, { name: 'json-bodies', dependencies: ['errors'] })
