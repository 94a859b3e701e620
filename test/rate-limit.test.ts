// Rate limits: per process, and shared through the machine's Redis
// (127.0.0.1:6379, under a key prefix of this run's own), which a proxy cuts.
import { randomBytes } from 'node:crypto'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { buildApp } from '../src/app.js'
import { buildTestApp, createTestDatabase, testConfig } from './helper.js'
import { sleep, spawnDist, within } from './spawn.js'
import { AUDIENCE, ISSUER, signingKey, tokenFor } from './support/issuer.js'
import { TcpProxy } from './support/tcp-proxy.js'

const REDIS = { host: '127.0.0.1', port: 6379 }
const REDIS_URL = `redis://${REDIS.host}:${REDIS.port}`

/** A key prefix of this test's own, whose keys are deleted when it ends. */
async function redisPrefix (t: Test): Promise<string> {
  const prefix = `users-service-test:${randomBytes(6).toString('hex')}:`
  t.teardown(async () => {
    const redis = new Redis(REDIS_URL)
    const keys = await redis.keys(`${prefix}*`)
    if (keys.length > 0) await redis.del(...keys)
    redis.disconnect()
  })
  return prefix
}

const list = async (app: FastifyInstance, headers: Record<string, string> = {}, remoteAddress?: string): Promise<LightMyRequestResponse> =>
  await app.inject({ method: 'GET', url: '/api/users', headers, ...(remoteAddress === undefined ? {} : { remoteAddress }) })

t.test('off unless RATE_LIMIT_MAX is set: no limit, no headers', async (t) => {
  const { app } = await buildTestApp(t)
  t.notOk(app.hasPlugin('rate-limit'))
  for (let i = 0; i < 5; i++) t.equal((await list(app)).headers['ratelimit-limit'], undefined)
})

t.test('over RATE_LIMIT_MAX in the window: 429 in the error shape, with Retry-After and RateLimit-* headers', async (t) => {
  const { app } = await buildTestApp(t, { RATE_LIMIT_MAX: '3', RATE_LIMIT_WINDOW_MS: '60000' })
  for (const remaining of [2, 1, 0]) {
    const response = await list(app)
    t.equal(response.statusCode, 200)
    t.equal(response.headers['ratelimit-limit'], '3')
    t.equal(response.headers['ratelimit-remaining'], String(remaining))
    t.ok(Number(response.headers['ratelimit-reset']) > 0, 'RateLimit-Reset: seconds to the window\'s end')
  }
  const over = await app.inject({ method: 'POST', url: '/api/users', payload: { name: 'Ada' } })
  t.equal(over.statusCode, 429, 'writes count with reads: one budget per caller')
  t.match(over.json(), { statusCode: 429, error: 'Too Many Requests', message: /^too many requests: at most 3 per 60 s; retry in / })
  t.ok(Number(over.headers['retry-after']) > 0 && Number(over.headers['retry-after']) <= 60, 'Retry-After in seconds')
  t.equal(over.headers['ratelimit-remaining'], '0')
  t.ok(over.headers['x-request-id'])

  for (const url of ['/health/live', '/health/ready', '/metrics', '/metrics', '/health/live']) {
    const response = await app.inject({ method: 'GET', url })
    t.equal(response.statusCode, 200, `${url} is never limited`)
    t.equal(response.headers['ratelimit-limit'], undefined)
  }
  t.equal((await list(app, {}, '10.1.2.3')).statusCode, 200, 'another client address has its own budget')
})

t.test('the caller is the token\'s sub, else the client address (X-Forwarded-For only with TRUST_PROXY)', async (t) => {
  const key = await signingKey('ES256', 'k1')
  const { app } = await buildTestApp(t, {
    RATE_LIMIT_MAX: '1', AUTH_PUBLIC_KEY: key.publicPem, AUTH_ISSUER: ISSUER, AUTH_AUDIENCE: AUDIENCE
  })
  const alice = { authorization: `Bearer ${await tokenFor(key, { sub: 'alice' })}` }
  const bob = { authorization: `Bearer ${await tokenFor(key, { sub: 'bob' })}` }
  t.equal((await list(app, alice)).statusCode, 200)
  t.equal((await list(app, alice, '10.0.0.9')).statusCode, 429, 'alice from anywhere is alice')
  t.equal((await list(app, bob)).statusCode, 200, 'bob, from the same address, has his own budget')

  const behindProxy = await buildTestApp(t, { RATE_LIMIT_MAX: '1', TRUST_PROXY: '127.0.0.1' })
  const from = (client: string) => ({ 'x-forwarded-for': client })
  t.equal((await list(behindProxy.app, from('203.0.113.1'))).statusCode, 200)
  t.equal((await list(behindProxy.app, from('203.0.113.2'))).statusCode, 200, 'each client behind the trusted proxy counts alone')
  t.equal((await list(behindProxy.app, from('203.0.113.1'))).statusCode, 429)

  const untrusted = await buildTestApp(t, { RATE_LIMIT_MAX: '1' })
  t.equal((await list(untrusted.app, from('203.0.113.1'))).statusCode, 200)
  t.equal((await list(untrusted.app, from('203.0.113.2'))).statusCode, 429, 'without TRUST_PROXY, X-Forwarded-For is not believed')
})

t.test('two service processes sharing REDIS_URL share one limit', async (t) => {
  const databaseUrl = await createTestDatabase(t)
  const prefix = await redisPrefix(t)
  const env = {
    DATABASE_URL: databaseUrl,
    HOST: '127.0.0.1',
    PORT: '0',
    LOG_LEVEL: 'info',
    RATE_LIMIT_MAX: '4',
    RATE_LIMIT_WINDOW_MS: '60000',
    REDIS_URL,
    RATE_LIMIT_REDIS_PREFIX: prefix
  }
  const listening = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/
  const servers = await Promise.all([0, 1].map(async () => {
    const server = spawnDist(t, 'server.js', env)
    const line = await server.waitForLine((candidate) => listening.test(String(candidate.msg)), 'listening')
    return listening.exec(String(line.msg))?.[1] ?? ''
  }))
  const statuses: number[] = []
  for (let i = 0; i < 6; i++) {
    const response = await fetch(`${servers[i % 2] ?? ''}/api/users`, { signal: AbortSignal.timeout(10_000) })
    statuses.push(response.status)
    await response.arrayBuffer()
  }
  t.same(statuses, [200, 200, 200, 200, 429, 429], 'four in all, whichever process answers')
})

t.test('Redis cut or stalled: requests go on unlimited, one warning, a metric; the limits come back by themselves', async (t) => {
  const prefix = await redisPrefix(t)
  const proxy = await TcpProxy.start(REDIS)
  t.teardown(() => proxy.close())
  const databaseUrl = await createTestDatabase(t)
  const lines: Array<Record<string, unknown>> = []
  const app = await buildApp(testConfig(databaseUrl, {
    RATE_LIMIT_MAX: '2', RATE_LIMIT_WINDOW_MS: '600000', REDIS_URL: `redis://127.0.0.1:${proxy.port}`, RATE_LIMIT_REDIS_PREFIX: prefix
  }), { logger: { level: 'info', stream: { write: (line: string) => { lines.push(JSON.parse(line)) } } } })
  t.teardown(() => app.close())
  const warnings = (): unknown[] => lines.filter((line) => /rate limits off/.test(String(line.msg)))

  // ioredis connects in the background; the first requests may find it not yet ready.
  await within((async () => { while ((await list(app)).headers['ratelimit-remaining'] !== '1') await sleep(50) })(), 10_000, 'a count in Redis')
  t.equal((await list(app)).headers['ratelimit-remaining'], '0')
  t.equal((await list(app)).statusCode, 429, 'the limit holds while Redis answers')

  proxy.cut()
  for (let i = 0; i < 5; i++) t.equal((await list(app)).statusCode, 200, 'Redis cut: the request goes on')
  proxy.stall()
  for (let i = 0; i < 3; i++) t.equal((await list(app)).statusCode, 200, 'Redis not answering: the request goes on after a bounded wait')
  t.equal(warnings().length, 1, 'one warning line, not one per request')
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.ok(Number(/^rate_limit_redis_failures_total (\d+)/m.exec(metrics)?.[1]) >= 8, 'each unlimited request counted in the metric')

  proxy.restore()
  await within((async () => { while ((await list(app)).statusCode !== 429) await sleep(100) })(), 15_000, 'the limit to return')
  t.ok(lines.some((line) => /rate limits back/.test(String(line.msg))), 'and a line saying so')
  t.equal(warnings().length, 1)
})
