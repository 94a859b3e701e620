import fp from 'fastify-plugin'
import { bodyStillArriving, closeAfterDiscardingBody } from '../http/lingering-close.js'

/**
 * An answer sent before the request's body has all arrived (a 413, a 415,
 * a 503 from load shedding) closes the connection without resetting it, so
 * the client can read it: see lingering-close. Requests whose body was read
 * (every one that reaches a handler) are untouched.
 */
export default fp(async function earlyAnswers (fastify) {
  fastify.addHook('onSend', (request, reply, payload, done) => {
    if (bodyStillArriving(request.raw)) closeAfterDiscardingBody(request.raw, reply.raw)
    done(null, payload)
  })
}, { name: 'early-answers' })
