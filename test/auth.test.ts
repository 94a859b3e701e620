// Bearer tokens, against a JWKS endpoint the test serves with keys it generates.
import { createConfig, lintFromString } from '@redocly/openapi-core'
import type { FastifyInstance, InjectOptions } from 'fastify'
import t, { type Test } from 'tap'
import { buildApp } from '../src/app.js'
import { createTestDatabase, testConfig } from './helper.js'
import { spawnDist } from './spawn.js'
import {
  AUDIENCE, hmacWithPublicKey, ISSUER, JwksServer, signingKey, tokenFor, unsignedToken
} from './support/issuer.js'

const rsa = await signingKey('RS256', 'rsa-1')
const ec = await signingKey('ES256', 'ec-1')
const ed = await signingKey('EdDSA', 'ed-1')

interface LoggedApp {
  app: FastifyInstance
  /** Every log line so far, parsed. */
  logs: () => Array<Record<string, unknown>>
  /** Every log line so far, as written. */
  rawLogs: string[]
}

/** The real app with these settings on a migrated database of its own, its log lines kept. */
async function authApp (t: Test, env: NodeJS.ProcessEnv): Promise<LoggedApp> {
  const databaseUrl = await createTestDatabase(t)
  const rawLogs: string[] = []
  const app = await buildApp(testConfig(databaseUrl, env), {
    logger: { level: 'info', stream: { write: (line: string) => { rawLogs.push(line) } } }
  })
  t.teardown(() => app.close())
  return { app, rawLogs, logs: () => rawLogs.map((line) => JSON.parse(line)) }
}

const jwksEnv = (jwks: JwksServer): NodeJS.ProcessEnv => ({ AUTH_JWKS_URL: jwks.url, AUTH_ISSUER: ISSUER, AUTH_AUDIENCE: AUDIENCE })

async function withToken (app: FastifyInstance, token: string, request: InjectOptions = { method: 'GET', url: '/api/users' }) {
  return await app.inject({ ...request, headers: { ...request.headers, authorization: `Bearer ${token}` } })
}

/** Moves this process's clock forward (jose and the service read Date.now), until the test ends. */
const realNow = Date.now.bind(Date)
let clockOffsetMs = 0
function advanceClock (t: Test, ms: number): void {
  if (clockOffsetMs === 0) {
    Date.now = () => realNow() + clockOffsetMs
    t.teardown(() => { Date.now = realNow; clockOffsetMs = 0 })
  }
  clockOffsetMs += ms
}

t.test('no token: 401 with WWW-Authenticate Bearer realm="users", in the error shape', async (t) => {
  const jwks = await JwksServer.start([rsa])
  t.teardown(() => jwks.stop())
  const { app } = await authApp(t, jwksEnv(jwks))
  for (const authorization of [undefined, 'Basic dXNlcjpwYXNz']) {
    const response = await app.inject({ method: 'GET', url: '/api/users', headers: authorization === undefined ? {} : { authorization } })
    t.equal(response.statusCode, 401, `Authorization: ${authorization}`)
    t.equal(response.headers['www-authenticate'], 'Bearer realm="users"', 'no error code when no token came')
    t.same(response.json(), { statusCode: 401, error: 'Unauthorized', message: 'a bearer token is required (Authorization: Bearer <token>)' })
    t.ok(response.headers['x-request-id'], 'the request id is still echoed')
  }
  t.equal(jwks.fetches, 0, 'no token, no key fetched')
})

t.test('valid tokens signed with RS256, ES256 and EdDSA keys from the JWKS are accepted', async (t) => {
  const jwks = await JwksServer.start([rsa, ec, ed])
  t.teardown(() => jwks.stop())
  const { app } = await authApp(t, jwksEnv(jwks))
  for (const key of [rsa, ec, ed]) {
    const created = await withToken(app, await tokenFor(key), { method: 'POST', url: '/api/users', payload: { name: `by ${key.alg}` } })
    t.equal(created.statusCode, 201, `${key.alg}: create`)
    const read = await withToken(app, await tokenFor(key), { method: 'GET', url: `/api/users/${created.json().id as number}` })
    t.equal(read.statusCode, 200, `${key.alg}: read`)
  }
  t.equal(jwks.fetches, 1, 'the key set was fetched once and cached')
  const lowercase = await app.inject({ method: 'GET', url: '/api/users', headers: { authorization: `bearer ${await tokenFor(ec)}` } })
  t.equal(lowercase.statusCode, 200, 'the scheme name is case-insensitive')
})

t.test('bad tokens: 401 with error="invalid_token" and a description that says why', async (t) => {
  const jwks = await JwksServer.start([rsa, ec])
  t.teardown(() => jwks.stop())
  const { app, rawLogs } = await authApp(t, jwksEnv(jwks))
  const stranger = await signingKey('ES256', 'ec-1') // same kid, another key
  const cases: Array<[string, string, string]> = [
    ['expired', await tokenFor(rsa, { expiresIn: -120 }), 'the token has expired'],
    ['without exp', await tokenFor(rsa, { expiresIn: null }), 'the token\'s exp claim is missing or invalid'],
    ['not valid yet', await tokenFor(rsa, { notBeforeIn: 300 }), 'the token is not valid yet'],
    ['wrong issuer', await tokenFor(rsa, { issuer: 'https://evil.test' }), 'the token\'s issuer is not accepted'],
    ['wrong audience', await tokenFor(rsa, { audience: 'billing' }), 'the token\'s audience is not this service'],
    ['alg none', unsignedToken(), 'the token\'s signing algorithm is not accepted'],
    ['HS256 signed with the public key', hmacWithPublicKey(rsa), 'the token\'s signing algorithm is not accepted'],
    ['signed by another key with a known kid', await tokenFor(stranger), 'the token\'s signature does not verify'],
    ['not a JWT', 'abc.def', 'the token is malformed'],
    ['empty', '', 'the token is malformed']
  ]
  for (const [what, token, description] of cases) {
    const response = await withToken(app, token)
    t.equal(response.statusCode, 401, what)
    t.equal(response.headers['www-authenticate'], `Bearer realm="users", error="invalid_token", error_description="${description}"`, what)
    t.same(response.json(), { statusCode: 401, error: 'Unauthorized', message: `the bearer token is not valid: ${description}` }, what)
    if (token !== '') t.notOk(rawLogs.some((line) => line.includes(token)), `${what}: the token is never logged`)
  }
  const skewed = await withToken(app, await tokenFor(rsa, { expiresIn: -10 }))
  t.equal(skewed.statusCode, 200, 'a token expired seconds ago passes: clocks drift (30 s tolerance)')
})

t.test('scopes: users:read for GET and HEAD, users:write for POST, PATCH and DELETE, seed routes included', async (t) => {
  const jwks = await JwksServer.start([ec])
  t.teardown(() => jwks.stop())
  const { app } = await authApp(t, jwksEnv(jwks))
  const reader = await tokenFor(ec, { claims: { scope: 'profile users:read' } })
  const writer = await tokenFor(ec, { claims: { scp: ['users:write'] } })
  const both = await tokenFor(ec, { claims: { scp: ['users:read', 'users:write'] } })
  const created = await withToken(app, both, { method: 'POST', url: '/api/users', payload: { name: 'Ada' } })
  t.equal(created.statusCode, 201, 'scp as an array')
  const id = created.json().id as number

  const writes: InjectOptions[] = [
    { method: 'POST', url: '/api/users', payload: { name: 'Bob' } },
    { method: 'PATCH', url: `/api/users/${id}`, payload: { name: 'Ada L.' } },
    { method: 'DELETE', url: `/api/users/${id}` },
    { method: 'POST', url: '/api/user', payload: { name: 'Cy' } }
  ]
  const reads: InjectOptions[] = [
    { method: 'GET', url: '/api/users' },
    { method: 'GET', url: `/api/users/${id}` },
    { method: 'HEAD', url: `/api/users/${id}` },
    { method: 'GET', url: '/api/user' }
  ]
  for (const [needed, token, requests] of [['users:write', reader, writes], ['users:read', writer, reads]] as const) {
    for (const request of requests) {
      const response = await withToken(app, token, request)
      const what = `${request.method ?? ''} ${request.url as string} without ${needed}`
      t.equal(response.statusCode, 403, what)
      t.equal(response.headers['www-authenticate'], `Bearer realm="users", error="insufficient_scope", scope="${needed}"`, what)
      if (request.method !== 'HEAD') t.same(response.json(), { statusCode: 403, error: 'Forbidden', message: `the token lacks the scope ${needed}` }, what)
    }
  }
  t.equal((await withToken(app, reader, { method: 'GET', url: `/api/users/${id}` })).json().name, 'Ada', 'nothing changed')
  t.equal((await withToken(app, writer, { method: 'DELETE', url: `/api/users/${id}` })).statusCode, 204, 'the writer deletes')
  const scpString = await tokenFor(ec, { claims: { scp: 'users:read' } })
  t.equal((await withToken(app, scpString, { method: 'GET', url: '/api/users' })).statusCode, 200, 'scp as a space-separated string')
})

t.test('probes, /metrics and /docs stay open; the OpenAPI document declares the bearer scheme and each scope', async (t) => {
  const jwks = await JwksServer.start([ec])
  t.teardown(() => jwks.stop())
  const { app } = await authApp(t, jwksEnv(jwks))
  for (const url of ['/health/live', '/health/ready', '/metrics', '/docs/json', '/docs']) {
    const response = await app.inject({ method: 'GET', url })
    t.ok([200, 302].includes(response.statusCode), `${url}: ${response.statusCode}`)
  }
  const doc = (await app.inject({ method: 'GET', url: '/docs/json' })).json()
  t.match(doc.components.securitySchemes.bearer, { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' })
  t.same(doc.paths['/api/users'].get.security, [{ bearer: ['users:read'] }])
  t.same(doc.paths['/api/users'].post.security, [{ bearer: ['users:write'] }])
  t.same(doc.paths['/api/users/{id}'].patch.security, [{ bearer: ['users:write'] }])
  t.same(doc.paths['/api/users/{id}'].delete.security, [{ bearer: ['users:write'] }])
  t.same(doc.paths['/api/user'].post.security, [{ bearer: ['users:write'] }])
  t.same(doc.paths['/api/user'].get.security, [{ bearer: ['users:read'] }])
  t.ok(doc.paths['/api/users'].get.responses['401'], '401 is a documented answer')
  t.ok(doc.paths['/api/users'].post.responses['403'], '403 is a documented answer')
  t.same(doc.paths['/health/live'].get.security, [], 'probes need no token')
  t.same(doc.paths['/metrics'].get.security, [], 'nor metrics')

  const problems = await lintFromString({ source: JSON.stringify(doc), absoluteRef: '/docs/json', config: await createConfig({ extends: ['recommended'] }) })
  const errors = problems.filter((problem) => problem.severity === 'error')
  t.same(errors.map((problem) => `${problem.ruleId}: ${problem.message}`), [], 'a standard linter finds no errors')
})

t.test('the request\'s log line names the caller\'s sub, never the token', async (t) => {
  const jwks = await JwksServer.start([ed])
  t.teardown(() => jwks.stop())
  const { app, logs, rawLogs } = await authApp(t, jwksEnv(jwks))
  const token = await tokenFor(ed, { sub: 'service-account:billing' })
  await withToken(app, token)
  await withToken(app, await tokenFor(ed, { sub: 'reader', claims: { scope: 'users:write' } }))
  await app.close() // each request's line is written once its answer is out
  const lines = logs().filter((line) => line.msg === 'request completed')
  t.match(lines, [{ sub: 'service-account:billing', statusCode: 200 }, { sub: 'reader', statusCode: 403 }])
  t.notOk(rawLogs.some((line) => line.includes(token) || line.includes(token.split('.')[2] ?? '-')), 'no log line holds the token or its signature')
})

t.test('an unknown kid refetches the key set at most every 30 s, so a rotated key is taken once it is published', async (t) => {
  const jwks = await JwksServer.start([rsa])
  t.teardown(() => jwks.stop())
  const { app } = await authApp(t, jwksEnv(jwks))
  const next = await signingKey('ES256', 'ec-next')
  t.equal((await withToken(app, await tokenFor(rsa))).statusCode, 200)
  t.equal(jwks.fetches, 1)

  const early = await withToken(app, await tokenFor(next))
  t.equal(early.statusCode, 401, 'a kid the issuer has not published')
  t.match(early.headers['www-authenticate'], /error_description="no known key matches the token"/)
  jwks.serve([rsa, next])
  t.equal((await withToken(app, await tokenFor(next))).statusCode, 401, 'published, but within 30 s of the last fetch: still unknown')
  t.equal(jwks.fetches, 1, 'unknown kids did not refetch within the cooldown')

  advanceClock(t, 31_000)
  t.equal((await withToken(app, await tokenFor(next))).statusCode, 200, '30 s on, the unknown kid refetches and finds the rotated key')
  t.equal(jwks.fetches, 2)
  t.equal((await withToken(app, await tokenFor(rsa))).statusCode, 200, 'the old key still works while published')
})

t.test('a verified token is remembered with its scopes, never past its exp, and only for the same bytes', async (t) => {
  const jwks = await JwksServer.start([ec])
  t.teardown(() => jwks.stop())
  const { app } = await authApp(t, jwksEnv(jwks))
  const reader = await tokenFor(ec, { claims: { scope: 'users:read' }, expiresIn: 20 })
  for (let request = 1; request <= 3; request++) {
    t.equal((await withToken(app, reader)).statusCode, 200, `request ${request} with the same token`)
  }
  const write = await withToken(app, reader, { method: 'POST', url: '/api/users', payload: { name: 'no' } })
  t.equal(write.statusCode, 403, 'the remembered caller has only the scopes its token gave')

  const signatureStart = reader.lastIndexOf('.') + 1
  const flipped = reader[signatureStart + 5] === 'A' ? 'B' : 'A'
  const tampered = `${reader.slice(0, signatureStart + 5)}${flipped}${reader.slice(signatureStart + 6)}`
  const forged = await withToken(app, tampered)
  t.equal(forged.statusCode, 401, 'one changed byte of a remembered token is another token, verified on its own')
  t.match(forged.headers['www-authenticate'], /error_description="the token's signature does not verify"/)

  advanceClock(t, (20 + 31) * 1_000) // within the 60 s a token is remembered
  const expired = await withToken(app, reader)
  t.equal(expired.statusCode, 401, 'past its exp (and the 30 s tolerance) the remembered token is refused')
  t.match(expired.headers['www-authenticate'], /error_description="the token has expired"/)
})

t.test('a token whose key left the key set stops working when the key set is next refetched, remembered or not', async (t) => {
  const jwks = await JwksServer.start([rsa, ec])
  t.teardown(() => jwks.stop())
  const { app } = await authApp(t, jwksEnv(jwks))
  const token = await tokenFor(ec, { expiresIn: 3600 })
  t.equal((await withToken(app, token)).statusCode, 200, 'verified, and remembered')
  jwks.serve([rsa])
  advanceClock(t, 10 * 60_000 + 1_000)
  const dropped = await withToken(app, token)
  t.equal(dropped.statusCode, 401, '10 min on, the key set is refetched without the key, though the token has 50 min left')
  t.match(dropped.headers['www-authenticate'], /error_description="no known key matches the token"/)
  t.equal(jwks.fetches, 2)
})

t.test('the JWKS endpoint down: cached keys keep working; a key never fetched gives 503 with Retry-After', async (t) => {
  const jwks = await JwksServer.start([rsa])
  t.teardown(() => jwks.stop())
  const { app, logs } = await authApp(t, jwksEnv(jwks))
  t.equal((await withToken(app, await tokenFor(rsa))).statusCode, 200, 'key fetched while the endpoint was up')
  await jwks.stop()

  t.equal((await withToken(app, await tokenFor(rsa))).statusCode, 200, 'cached key, endpoint down')
  advanceClock(t, 11 * 60_000)
  t.equal((await withToken(app, await tokenFor(rsa))).statusCode, 200, 'cached key past its refresh age, endpoint still down')

  const unknown = await withToken(app, await tokenFor(ec))
  t.equal(unknown.statusCode, 503, 'a key that cannot be fetched is not the caller\'s fault')
  t.ok(Number(unknown.headers['retry-after']) > 0, 'with Retry-After')
  t.same(unknown.json(), { statusCode: 503, error: 'Service Unavailable', message: 'the token\'s signing key cannot be fetched now; try again shortly' })
  t.ok(logs().some((line) => line.msg === 'token key unavailable'), 'and a warning line')

  await jwks.restart()
  jwks.serve([rsa, ec])
  advanceClock(t, 6_000)
  t.equal((await withToken(app, await tokenFor(ec))).statusCode, 200, 'once the endpoint is back, the new key is fetched')
})

t.test('the JWKS endpoint down from the start: 503 with Retry-After, not 401', async (t) => {
  const jwks = await JwksServer.start([rsa])
  await jwks.stop()
  const { app } = await authApp(t, jwksEnv(jwks))
  const response = await withToken(app, await tokenFor(rsa))
  t.equal(response.statusCode, 503)
  t.equal(response.headers['retry-after'], '5')
})

t.test('AUTH_PUBLIC_KEY: one key, for the one algorithm its kind signs with', async (t) => {
  const { app } = await authApp(t, { AUTH_PUBLIC_KEY: ed.publicPem, AUTH_ISSUER: ISSUER, AUTH_AUDIENCE: AUDIENCE })
  t.equal((await withToken(app, await tokenFor(ed))).statusCode, 200)
  t.equal((await withToken(app, await tokenFor(rsa))).statusCode, 401, 'another algorithm')
  t.equal((await withToken(app, await tokenFor(await signingKey('EdDSA', 'other')))).statusCode, 401, 'another Ed25519 key')
  t.equal((await withToken(app, unsignedToken())).statusCode, 401, 'alg none')
  const rsaApp = await authApp(t, { AUTH_PUBLIC_KEY: rsa.publicPem, AUTH_ISSUER: ISSUER, AUTH_AUDIENCE: AUDIENCE })
  t.equal((await withToken(rsaApp.app, await tokenFor(rsa))).statusCode, 200, 'an RSA key: RS256')
  t.equal((await withToken(rsaApp.app, hmacWithPublicKey(rsa))).statusCode, 401, 'HS256 over the PEM is refused')
})

t.test('off: AUTH_MODE=none adds nothing to the request path, and development with nothing set says it is open', async (t) => {
  const none = await authApp(t, { AUTH_MODE: 'none' })
  t.notOk(none.app.hasPlugin('auth'), 'the auth plugin is not registered')
  t.equal((await none.app.inject({ method: 'GET', url: '/api/users' })).statusCode, 200)
  t.same((await none.app.inject({ method: 'GET', url: '/docs/json' })).json().security, [], 'the document declares no scheme')
  t.equal(none.logs().filter((line) => /authentication is off/.test(String(line.msg))).length, 1)

  const unset = await authApp(t, {})
  t.equal((await unset.app.inject({ method: 'GET', url: '/api/users' })).statusCode, 200)
  t.match(unset.logs().filter((line) => /authentication is off/.test(String(line.msg))),
    [{ level: 40, msg: /no AUTH_JWKS_URL or AUTH_PUBLIC_KEY is set/ }], 'one warning line')
})

t.test('an http: JWKS URL is accepted, with a warning when NODE_ENV=production', async (t) => {
  const jwks = await JwksServer.start([rsa])
  t.teardown(() => jwks.stop())
  const production = await authApp(t, { ...jwksEnv(jwks), NODE_ENV: 'production' })
  t.match(production.logs().filter((line) => line.level === 40), [{ msg: /AUTH_JWKS_URL is http/ }])
  t.equal((await withToken(production.app, await tokenFor(rsa))).statusCode, 200)
  const development = await authApp(t, jwksEnv(jwks))
  t.notOk(development.logs().some((line) => /AUTH_JWKS_URL is http/.test(String(line.msg))), 'no warning in development')
})

t.test('the built server in production: tokens checked, probes open, the http: JWKS URL warned of', async (t) => {
  const jwks = await JwksServer.start([ed])
  t.teardown(() => jwks.stop())
  const server = spawnDist(t, 'server.js', {
    NODE_ENV: 'production', DATABASE_URL: await createTestDatabase(t), HOST: '127.0.0.1', PORT: '0', ...jwksEnv(jwks) as Record<string, string>
  })
  const listening = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/
  const line = await server.waitForLine((candidate) => listening.test(String(candidate.msg)), 'listening')
  const base = listening.exec(String(line.msg))?.[1] ?? ''
  const get = async (path: string, headers: Record<string, string> = {}) =>
    (await fetch(`${base}${path}`, { headers, signal: AbortSignal.timeout(10_000) })).status
  t.equal(await get('/api/users'), 401)
  t.equal(await get('/api/users', { authorization: `Bearer ${await tokenFor(ed)}` }), 200)
  t.equal(await get('/health/ready'), 200)
  t.ok(server.lines.some((each) => each.level === 40 && /AUTH_JWKS_URL is http/.test(String(each.msg))), 'one warning line')
})
