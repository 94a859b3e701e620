import underPressure from '@fastify/under-pressure'
import type { FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { sendUnavailable } from './errors.js'

export interface LoadSheddingOptions {
  /** Requests waiting for a pool client, or reads in flight, past which /api requests get 503; 0: off. */
  maxDatabaseQueue: number
  /** Mean event-loop delay (ms, over the last second) past which /api requests get 503; 0: off. */
  maxEventLoopDelayMs: number
}

/**
 * Sheds load: when the process is behind (event-loop delay) or the
 * database queue is long, new /api requests are answered 503 with
 * Retry-After at once, so latency stays bounded and the work already
 * admitted finishes. Probes and /metrics are never shed: an overloaded pod
 * is still alive, and its metrics are what shows the overload.
 */
export default fp<LoadSheddingOptions>(async function loadShedding (fastify, options) {
  if (options.maxEventLoopDelayMs > 0) {
    await fastify.register(underPressure, {
      maxEventLoopDelay: options.maxEventLoopDelayMs,
      // A request not answered here goes on; Fastify stops one that was.
      pressureHandler: (request, reply) => {
        if (isSheddable(request)) sendUnavailable(reply, 'the service is overloaded; try again shortly')
      }
    })
  }

  if (options.maxDatabaseQueue > 0) {
    const pool = fastify.pg.pool
    const reads = fastify.reads
    fastify.addHook('onRequest', async (request, reply) => {
      if (!isSheddable(request)) return
      if (pool.waitingCount >= options.maxDatabaseQueue || reads.waitingCount >= options.maxDatabaseQueue) {
        return sendUnavailable(reply, 'the database queue is full; try again shortly')
      }
    })
  }
}, { name: 'load-shedding', dependencies: ['database', 'errors'] })

function isSheddable (request: FastifyRequest): boolean {
  return request.routeOptions.url?.startsWith('/api/') === true
}
