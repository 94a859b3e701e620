import fp from 'fastify-plugin'

/**
 * Once shutdown begins, Fastify answers new requests 503 (readiness
 * included) and closes idle connections, but a keep-alive connection that
 * was busy then would go idle afterwards and hold the server open until its
 * keep-alive timeout. Answers sent while closing ask the client to hang up.
 */
export default fp(async function gracefulClose (fastify) {
  let closing = false
  fastify.addHook('preClose', async () => { closing = true })
  fastify.addHook('onSend', (_request, reply, payload, done) => {
    if (closing) reply.header('connection', 'close')
    done(null, payload)
  })
}, { name: 'graceful-close' })
