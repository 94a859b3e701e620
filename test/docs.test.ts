// The OpenAPI document at /docs/json: generated from the route schemas,
// clean under a standard linter, and true to what the service answers.
import { createConfig, lintFromString } from '@redocly/openapi-core'
import type { FastifyInstance, InjectOptions } from 'fastify'
import t from 'tap'
import { buildApp } from '../src/app.js'
import { buildTestApp, createTestDatabase, createUser, testConfig } from './helper.js'

type Operation = {
  operationId?: string
  deprecated?: boolean
  parameters?: Array<{ in: string, name: string }>
  responses: Record<string, { headers?: Record<string, unknown>, content?: Record<string, { schema: { required?: string[] } }> }>
}
type Document = { openapi: string, paths: Record<string, Record<string, Operation>> }

async function documentOf (app: FastifyInstance): Promise<Document> {
  const response = await app.inject({ url: '/docs/json' })
  if (response.statusCode !== 200) throw new Error(`GET /docs/json: ${response.statusCode}`)
  return response.json()
}

const OPERATIONS = [
  ['post', '/api/users'], ['get', '/api/users'], ['get', '/api/users/{id}'], ['patch', '/api/users/{id}'],
  ['delete', '/api/users/{id}'], ['post', '/api/user'], ['get', '/api/user'],
  ['get', '/health/live'], ['get', '/health/ready'], ['get', '/metrics']
] as const

t.test('the document lists every route, and a standard linter finds no errors', async (t) => {
  const { app } = await buildTestApp(t)
  const document = await documentOf(app)
  t.equal(document.openapi, '3.1.0')
  for (const [method, path] of OPERATIONS) {
    t.ok(document.paths[path]?.[method], `${method.toUpperCase()} ${path} is documented`)
    t.ok(document.paths[path]?.[method]?.operationId, `${method.toUpperCase()} ${path} has an operationId`)
  }
  t.equal(Object.values(document.paths).flatMap((item) => Object.keys(item)).length, OPERATIONS.length, 'and nothing else')

  const problems = await lintFromString({
    source: JSON.stringify(document),
    absoluteRef: '/docs/json',
    config: await createConfig({ extends: ['recommended'] })
  })
  const errors = problems.filter((problem) => problem.severity === 'error')
  t.same(errors.map((problem) => `${problem.ruleId}: ${problem.message}`), [], 'no lint errors')
  // Probes and metrics have no 4xx answer to document; nothing else is warned of.
  const warnings = problems.filter((problem) => problem.severity === 'warn')
  t.same([...new Set(warnings.map((problem) => problem.ruleId))], ['operation-4xx-response'])
})

t.test('the legacy routes are deprecated; headers and required fields are declared', async (t) => {
  const { app } = await buildTestApp(t)
  const { paths } = await documentOf(app)
  t.equal(paths['/api/user']?.post?.deprecated, true)
  t.equal(paths['/api/user']?.get?.deprecated, true)
  t.notOk(paths['/api/users']?.post?.deprecated)

  const parameters = (path: string, method: string) =>
    (paths[path]?.[method]?.parameters ?? []).filter((p) => p.in === 'header').map((p) => p.name)
  // Spelt as the RFCs do: generated clients take these names as they are.
  t.same(parameters('/api/users', 'post'), ['Idempotency-Key'])
  t.same(parameters('/api/user', 'post'), ['Idempotency-Key'])
  t.same(parameters('/api/users/{id}', 'get'), ['If-None-Match'])
  t.same(parameters('/api/users/{id}', 'patch'), ['If-Match'])
  t.same(parameters('/api/users/{id}', 'delete'), ['If-Match'])

  const created = paths['/api/users']?.post?.responses['201']
  t.same(Object.keys(created?.headers ?? {}).sort(), ['ETag', 'Idempotent-Replayed', 'Location'])
  t.same(Object.keys(paths['/api/user']?.post?.responses['201']?.headers ?? {}).sort(), ['Idempotent-Replayed', 'Location'])
  t.same(Object.keys(paths['/api/users']?.post?.responses['503']?.headers ?? {}), ['Retry-After'])
  t.same(created?.content?.['application/json']?.schema.required?.sort(), ['createdAt', 'email', 'id', 'name', 'updatedAt'],
    'every field the service always sends is required')
  t.ok(paths['/api/users/{id}']?.get?.responses['200']?.headers?.ETag)
  t.same(paths['/api/users/{id}']?.get?.responses['404']?.content?.['application/json']?.schema.required?.sort(),
    ['error', 'message', 'statusCode'])
})

t.test('every status the service answers is declared on its route', async (t) => {
  const { app } = await buildTestApp(t)
  const { paths } = await documentOf(app)
  const user = await createUser(app, { name: 'Ada', email: 'ada@example.com' })
  const json = { 'content-type': 'application/json' }
  const requests: Array<[string, string, InjectOptions]> = [
    ['post', '/api/users', { method: 'POST', url: '/api/users', payload: { name: 'B' } }],
    ['post', '/api/users', { method: 'POST', url: '/api/users', payload: {} }],
    ['post', '/api/users', { method: 'POST', url: '/api/users', payload: { name: 'C', email: 'ADA@example.com' } }],
    ['post', '/api/users', { method: 'POST', url: '/api/users', headers: { 'content-type': 'text/plain' }, payload: 'x' }],
    ['post', '/api/users', { method: 'POST', url: '/api/users', headers: json, payload: JSON.stringify({ name: 'x'.repeat(20_000) }) }],
    ['post', '/api/users', { method: 'POST', url: '/api/users', headers: { 'idempotency-key': 'k' }, payload: { name: 'D' } }],
    ['post', '/api/users', { method: 'POST', url: '/api/users', headers: { 'idempotency-key': 'k' }, payload: { name: 'E' } }],
    ['get', '/api/users', { url: '/api/users?limit=2' }],
    ['get', '/api/users', { url: '/api/users?limit=0' }],
    ['get', '/api/users/{id}', { url: `/api/users/${user.id}` }],
    ['get', '/api/users/{id}', { url: `/api/users/${user.id}`, headers: { 'if-none-match': '*' } }],
    ['get', '/api/users/{id}', { url: '/api/users/999999' }],
    ['get', '/api/users/{id}', { url: '/api/users/abc' }],
    ['patch', '/api/users/{id}', { method: 'PATCH', url: `/api/users/${user.id}`, payload: { name: 'Ada L' } }],
    ['patch', '/api/users/{id}', { method: 'PATCH', url: `/api/users/${user.id}`, headers: { 'if-match': '"0"' }, payload: { name: 'x' } }],
    ['delete', '/api/users/{id}', { method: 'DELETE', url: `/api/users/${user.id}`, headers: { 'if-match': '"0"' } }],
    ['delete', '/api/users/{id}', { method: 'DELETE', url: `/api/users/${user.id}` }],
    ['delete', '/api/users/{id}', { method: 'DELETE', url: `/api/users/${user.id}` }],
    ['post', '/api/user', { method: 'POST', url: '/api/user', payload: { name: 'F' } }],
    ['post', '/api/user', { method: 'POST', url: '/api/user', payload: { name: '' } }],
    ['get', '/api/user', { url: '/api/user' }],
    ['get', '/health/live', { url: '/health/live' }],
    ['get', '/health/ready', { url: '/health/ready' }],
    ['get', '/metrics', { url: '/metrics' }]
  ]
  const seen = new Set<string>()
  for (const [method, path, request] of requests) {
    const response = await app.inject(request)
    const status = String(response.statusCode)
    seen.add(status)
    t.ok(paths[path]?.[method]?.responses[status], `${method.toUpperCase()} ${path} declares the ${status} it answered`)
  }
  t.same([...seen].sort(), ['200', '201', '204', '304', '400', '404', '409', '412', '413', '415', '422'], 'the requests covered these statuses')
})

t.test('the docs page is served, and both docs and metrics can be turned off', async (t) => {
  const { app } = await buildTestApp(t)
  const page = await app.inject({ url: '/docs/' })
  t.equal(page.statusCode, 200)
  t.match(page.headers['content-type'], /text\/html/)

  const databaseUrl = await createTestDatabase(t)
  const bare = await buildApp(testConfig(databaseUrl, { DOCS_ENABLED: 'false', METRICS_ENABLED: 'false' }), { logger: false })
  t.teardown(() => bare.close())
  for (const url of ['/docs', '/docs/json', '/metrics']) {
    t.equal((await bare.inject({ url })).statusCode, 404, `${url} is off`)
  }
  t.equal((await bare.inject({ url: '/health/live' })).statusCode, 200)
})
