import type { FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'

/** Called once a refusal's answer is sent, with the time it took to answer. */
export type RefusalListener = (request: FastifyRequest, reply: FastifyReply, elapsedMs: number) => void

/**
 * Requests Fastify's router refuses before any route (a malformed
 * percent-encoding, a path segment past its limit) are answered by
 * `routingErrorHandler`, and Fastify runs no hook for them: no onSend, no
 * onResponse, no log line. The plugins that follow every answer (the
 * request log, the metrics) listen here as well.
 */
export class RouterRefusals {
  readonly #listeners: RefusalListener[] = []

  onAnswered (listener: RefusalListener): void {
    this.#listeners.push(listener)
  }

  answered (request: FastifyRequest, reply: FastifyReply, elapsedMs: number): void {
    for (const listener of this.#listeners) listener(request, reply, elapsedMs)
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    routerRefusals: RouterRefusals
  }
}

export default fp(async function routerRefusals (fastify) {
  fastify.decorate('routerRefusals', new RouterRefusals())
}, { name: 'router-refusals' })
