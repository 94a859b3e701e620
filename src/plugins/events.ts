import type { FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import pg from 'pg'
import { Counter, Gauge, type Registry } from 'prom-client'
import type { EventsConfig } from '../config.js'
import { outboxBacklog, type EventContext } from '../db/outbox.js'
import { CONFIRM_TIMEOUT_MS, OutboxRelay } from '../db/outbox-relay.js'
import { poolConfig, type Pooler } from '../db/pooler.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Present only with events on (EVENTS_AMQP_URL): what a write passes to record its event. */
    outbox?: {
      eventFor: (request: FastifyRequest) => EventContext
    }
  }
}

export interface EventsOptions extends EventsConfig {
  connectionString: string
  connectTimeoutMs: number
  statementTimeoutMs: number
  /** As for the requests' pool (src/db/pooler.ts): the relay runs behind the same pooler. */
  pooler: Pooler
  poolerKeepsPreparedStatements: boolean
  /** The request's W3C traceparent, when tracing is on (issue 16 wires its helper here). */
  traceparentOf?: (request: FastifyRequest) => string | undefined
}

/** Events go out after these answered with success (a write committed). */
const WRITE_METHODS = new Set(['POST', 'PATCH', 'DELETE'])

/**
 * User events: writes record them in the outbox (src/db/users.ts, through
 * `fastify.outbox`), and a relay in this process publishes them to
 * RabbitMQ. The broker is never on the request path: a request only writes
 * a row; the relay, on its own database connections, does the rest.
 * Registered only when EVENTS_AMQP_URL is set.
 */
export default fp<EventsOptions>(async function events (fastify, options) {
  // The relay's own connections: a slow broker never holds one the requests
  // need. Configured as the requests' pools are (src/db/pooler.ts: the
  // pooler's mode, timeouts, client class, types), but for what follows.
  const { connectTimeoutMs, statementTimeoutMs, pooler, poolerKeepsPreparedStatements } = options
  const pool = new pg.Pool({
    ...poolConfig(options.connectionString, { poolMax: 2, connectTimeoutMs, statementTimeoutMs, pooler, poolerKeepsPreparedStatements }),
    // pg's default: the relay's connections have always been let go after 10 s idle.
    idleTimeoutMillis: 10_000,
    // Behind a transaction pooler no startup parameter: the role's defaults
    // hold the timeouts there (src/db/pooler.ts).
    ...(options.pooler === 'transaction'
      ? {}
      : {
          // A round's transaction waits for the broker's confirms: not cut short by a short statement timeout.
          idle_in_transaction_session_timeout: Math.max(options.statementTimeoutMs, 2 * CONFIRM_TIMEOUT_MS)
        }),
    // Its own name, so the requests' connections can be told from its.
    application_name: 'users-service-outbox-relay'
  })
  pool.on('error', (error) => fastify.log.warn({ err: error }, 'an idle outbox relay connection failed'))
  pool.on('connect', (client) => client.on('error', () => {}))

  const counts = fastify.hasDecorator('metricsRegistry') ? eventMetrics(fastify.metricsRegistry, pool) : undefined
  const relay = new OutboxRelay({
    pool,
    amqpUrl: options.amqpUrl,
    exchange: options.exchange,
    source: options.source,
    pollIntervalMs: options.pollIntervalMs,
    retentionSeconds: options.retentionSeconds,
    log: fastify.log,
    onPublished: (count) => counts?.published.inc(count),
    onPublishFailed: (count) => counts?.failures.inc(count)
  })

  const traceparentOf = options.traceparentOf ?? (() => undefined)
  fastify.decorate('outbox', {
    eventFor: (request: FastifyRequest): EventContext => ({ traceparent: traceparentOf(request) ?? null })
  })

  // The write committed before its answer went: the relay can send it now.
  fastify.addHook('onResponse', (request, reply, done) => {
    if (reply.statusCode < 300 && WRITE_METHODS.has(request.method)) relay.wake()
    done()
  })
  fastify.addHook('onReady', async () => relay.start())
  fastify.addHook('onClose', async () => {
    await relay.stop()
    await pool.end()
  })
}, { name: 'events', dependencies: ['database'] })

function eventMetrics (registry: Registry, pool: pg.Pool): { published: Counter, failures: Counter } {
  const published = new Counter({
    name: 'events_published_total',
    help: 'User events the broker confirmed',
    registers: [registry]
  })
  const failures = new Counter({
    name: 'events_publish_failures_total',
    help: 'User events the broker refused or did not confirm in time (they are sent again)',
    registers: [registry]
  })
  const backlog = new Gauge({
    name: 'events_outbox_backlog',
    help: 'User events in the outbox not yet confirmed by the broker',
    registers: [registry],
    collect: readBacklogOnce
  })
  const oldestAge = new Gauge({
    name: 'events_outbox_oldest_unsent_age_seconds',
    help: 'Age of the oldest user event not yet confirmed by the broker (0: none)',
    registers: [registry],
    collect: readBacklogOnce
  })
  // One query serves both gauges of a scrape; a database that does not
  // answer leaves the last values.
  let reading: Promise<void> | undefined
  function readBacklogOnce (): Promise<void> {
    reading ??= outboxBacklog(pool).then(({ events, oldestAgeSeconds }) => {
      backlog.set(events)
      oldestAge.set(oldestAgeSeconds)
    }, () => {}).finally(() => { reading = undefined })
    return reading
  }
  return { published, failures }
}
