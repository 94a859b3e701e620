// @fastify/rate-limit's own Redis store (its Lua script counts atomically),
// which the package ships without types; rate-limit.ts wraps it.
declare module '@fastify/rate-limit/store/RedisStore.js' {
  import type { FastifyRateLimitStore } from '@fastify/rate-limit'
  import type { Redis } from 'ioredis'

  class RedisStore implements FastifyRateLimitStore {
    constructor (continueExceeding: boolean, exponentialBackoff: boolean, redis: Redis, key?: string)
    incr: FastifyRateLimitStore['incr']
    child: FastifyRateLimitStore['child']
  }
  export default RedisStore
}
