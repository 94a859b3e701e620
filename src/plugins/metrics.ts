import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'

declare module 'fastify' {
  interface FastifyInstance {
    /** Where other plugins add their metrics (present when METRICS_ENABLED). */
    metricsRegistry: Registry
  }
}

/**
 * `GET /metrics` in Prometheus text format, through prom-client: requests
 * by route template (never the raw URL, which would make a series per id)
 * and status, their duration, requests in flight, the connection pool, and
 * the process (event-loop lag, heap, RSS, GC).
 */
const metrics: FastifyPluginAsyncTypebox = async (fastify) => {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  // Plugins registered later add their own series (rate-limit.ts).
  fastify.decorate('metricsRegistry', registry)

  const labelNames = ['method', 'route', 'status_code'] as const
  const requests = new Counter({
    name: 'http_requests_total',
    help: 'HTTP requests answered, by method, route template and status',
    labelNames,
    registers: [registry]
  })
  const duration = new Histogram({
    name: 'http_request_duration_seconds',
    help: 'Time to answer HTTP requests, by method, route template and status',
    labelNames,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [registry]
  })
  const inFlight = new Gauge({
    name: 'http_requests_in_flight',
    help: 'HTTP requests received and not yet answered',
    registers: [registry]
  })
  const pool = fastify.pg.pool
  const connections = new Gauge({
    name: 'db_pool_connections',
    help: 'Database pool connections: total open, idle, and requests waiting for one',
    labelNames: ['state'],
    registers: [registry],
    collect () {
      connections.set({ state: 'total' }, pool.totalCount)
      connections.set({ state: 'idle' }, pool.idleCount)
      connections.set({ state: 'waiting' }, pool.waitingCount)
    }
  })

  const readers = fastify.readers
  if (readers.readsBySource !== undefined) {
    const bySource = readers.readsBySource
    const lags = () => readers.lags?.() ?? []
    const reads = new Counter({
      name: 'db_reads_total',
      help: 'Reads that a replica may answer, by where they were answered from (primary or replica)',
      labelNames: ['source'],
      registers: [registry],
      collect () {
        reads.reset()
        reads.inc({ source: 'primary' }, bySource.primary)
        reads.inc({ source: 'replica' }, bySource.replica)
      }
    })
    const lag = new Gauge({
      name: 'db_replica_lag_seconds',
      help: 'Each read replica\'s replay lag at its last check; -1 while it is not usable (down, lagging past reach, promoted)',
      labelNames: ['replica'],
      registers: [registry],
      collect () {
        for (const { replica, lagMs } of lags()) lag.set({ replica }, lagMs === undefined ? -1 : lagMs / 1000)
      }
    })
  }

  fastify.addHook('onRequest', async (_request, reply) => {
    inFlight.inc()
    // 'close' comes once whether the answer was sent or the client left.
    reply.raw.once('close', () => inFlight.dec())
  })
  function countAnswer (request: FastifyRequest, reply: FastifyReply, elapsedMs: number): void {
    const labels = {
      method: request.method,
      route: request.routeOptions.url ?? '(unmatched)',
      status_code: String(reply.statusCode)
    }
    requests.inc(labels)
    duration.observe(labels, elapsedMs / 1000)
  }
  fastify.addHook('onResponse', async (request, reply) => countAnswer(request, reply, reply.elapsedTime))
  // Answers the router gives before any route run no hook.
  fastify.routerRefusals.onAnswered(countAnswer)

  fastify.get('/metrics', {
    schema: {
      tags: ['operations'],
      operationId: 'getMetrics',
      summary: 'Prometheus metrics',
      response: {
        200: {
          description: 'Prometheus text exposition format',
          content: { 'text/plain': { schema: Type.String() } }
        }
      }
    }
  }, async (_request, reply) => {
    return reply.type(registry.contentType).send(await registry.metrics())
  })
}

export default fp(metrics, { name: 'metrics', dependencies: ['database', 'router-refusals'] })
