import fp from 'fastify-plugin'

declare module 'fastify' {
  interface FastifyInstance {
    /** `closing` turns true the moment shutdown begins. */
    lifecycle: { closing: boolean }
  }
}

/**
 * Shutdown, as clients see it. Once close() begins, readiness answers 503
 * (the health route reads `lifecycle.closing`) while requests that still
 * arrive on open connections are served. Their answers ask the client to
 * hang up: a keep-alive connection that went idle after shutdown began would
 * otherwise hold the server open until its keep-alive timeout.
 */
export default fp(async function gracefulClose (fastify) {
  const lifecycle = { closing: false }
  fastify.decorate('lifecycle', lifecycle)
  fastify.addHook('preClose', async () => { lifecycle.closing = true })
  fastify.addHook('onSend', (_request, reply, payload, done) => {
    if (lifecycle.closing) reply.header('connection', 'close')
    done(null, payload)
  })
}, { name: 'graceful-close' })
