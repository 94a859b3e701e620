import fastifyRateLimit, { type FastifyRateLimitStore } from '@fastify/rate-limit'
import RedisStore from '@fastify/rate-limit/store/RedisStore.js'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Redis } from 'ioredis'
import { Counter } from 'prom-client'

/** Redis answers within this, or the request goes on unlimited. */
const REDIS_COMMAND_TIMEOUT_MS = 250
const REDIS_CONNECT_TIMEOUT_MS = 1_000

export interface RateLimitOptions {
  max: number
  windowMs: number
  /** Counters shared by every replica; absent: each process counts alone. */
  redisUrl: string | undefined
  /** Where the counters live in Redis (tests use their own). */
  redisKeyPrefix: string
}

/**
 * `max` requests per window per caller (the token's sub, else the client
 * address) on /api routes; probes and /metrics are never limited. Over
 * the limit: 429 in the error shape with Retry-After and the RateLimit-*
 * headers. With Redis, counters are shared; Redis down or slow lets
 * requests through unlimited (after at most REDIS_COMMAND_TIMEOUT_MS),
 * with one warning line and a metric, until it answers again.
 */
export default fp<RateLimitOptions>(async function rateLimit (fastify, options) {
  const shared = options.redisUrl === undefined ? undefined : await sharedStore(fastify, options)
  await fastify.register(fastifyRateLimit, {
    max: options.max,
    timeWindow: options.windowMs,
    // After the token check (an onRequest hook of each route), so sub is known.
    hook: 'preParsing',
    keyGenerator: (request) => request.callerSub !== undefined ? `sub:${request.callerSub}` : `ip:${request.ip}`,
    allowList: (request) => !isLimited(request),
    // RateLimit-Limit, -Remaining, -Reset and Retry-After.
    enableDraftSpec: true,
    errorResponseBuilder: (_request, context) => Object.assign(
      new Error(`too many requests: at most ${context.max} per ${options.windowMs / 1000} s; retry in ${context.after}`),
      { statusCode: context.statusCode }
    ),
    ...(shared === undefined ? {} : { store: shared.Store, skipOnError: true })
  })
  if (shared !== undefined) fastify.addHook('onClose', async () => { shared.redis.disconnect() })
}, { name: 'rate-limit', dependencies: ['errors'] })

/** A Redis store that reports when Redis stops answering, and when it is back, once each. */
async function sharedStore (fastify: FastifyInstance, options: RateLimitOptions) {
  const log = fastify.log
  const redis = new Redis(options.redisUrl ?? '', {
    commandTimeout: REDIS_COMMAND_TIMEOUT_MS,
    connectTimeout: REDIS_CONNECT_TIMEOUT_MS,
    // No queue while disconnected: a command fails at once and the request goes on.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    lazyConnect: false
  })
  const failures = new Counter({
    name: 'rate_limit_redis_failures_total',
    help: 'Rate-limit counts Redis did not answer in time; those requests went on unlimited',
    registers: fastify.hasDecorator('metricsRegistry') ? [fastify.metricsRegistry] : []
  })
  let down = false
  // ioredis reconnects by itself; its own error events would otherwise be unhandled.
  redis.on('error', () => {})
  // The first requests find the connection ready, unless Redis is away:
  // then the service starts all the same, unlimited until Redis answers.
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, REDIS_CONNECT_TIMEOUT_MS)
    const settle = () => { clearTimeout(timer); resolve() }
    redis.once('ready', settle)
    redis.once('error', settle)
  })

  function watched (inner: FastifyRateLimitStore): FastifyRateLimitStore {
    return {
      incr (key, callback, ...rest: unknown[]) {
        (inner.incr as (...args: unknown[]) => void)(key, (error: Error | null, result?: { current: number, ttl: number }) => {
          if (error !== null && error !== undefined) {
            failures.inc()
            if (!down) log.warn({ err: error }, 'rate limits off: Redis does not answer; requests go on unlimited until it does')
            down = true
          } else if (down) {
            down = false
            log.info('rate limits back: Redis answers again')
          }
          callback(error, result)
        }, ...rest)
      },
      child: (routeOptions) => watched(inner.child(routeOptions))
    }
  }
  const store = watched(new RedisStore(false, false, redis, options.redisKeyPrefix))
  return {
    redis,
    Store: class { constructor () { return store } } as unknown as new () => FastifyRateLimitStore
  }
}

function isLimited (request: FastifyRequest): boolean {
  return request.routeOptions.url?.startsWith('/api/') === true
}
