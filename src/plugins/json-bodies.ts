import fp from 'fastify-plugin'
import { sendError, UNSUPPORTED_MEDIA_TYPE } from './errors.js'

/**
 * Request bodies are JSON and nothing else: Fastify would also parse
 * text/plain, and without a Content-Type it would read no body at all and
 * answer a confusing validation error. Both become a 415.
 */
export default fp(async function jsonBodies (fastify) {
  fastify.removeContentTypeParser('text/plain')

  fastify.addHook('preValidation', async (request, reply) => {
    if (request.routeOptions.schema?.body !== undefined && request.headers['content-type'] === undefined) {
      return sendError(reply, 415, UNSUPPORTED_MEDIA_TYPE)
    }
  })
}, { name: 'json-bodies', dependencies: ['errors'] })
