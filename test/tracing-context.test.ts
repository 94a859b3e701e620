// currentTraceparent(): what another part of the service (the outbox) puts
// on what a request causes, so the trace follows it (issue 16). In this
// process, tracing starts when the app is built (the server starts it
// earlier, before pg is imported: test/tracing.test.ts).
import { randomBytes } from 'node:crypto'
import t from 'tap'
import { buildApp } from '../src/app.js'
import { currentTraceparent } from '../src/tracing/context.js'
import { createTestDatabase, testConfig } from './helper.js'

t.test('undefined while tracing is off', async (t) => {
  t.equal(currentTraceparent(), undefined)
})

t.test('inside a traced request: the request\'s own trace context', async (t) => {
  const databaseUrl = await createTestDatabase(t)
  // A receiver that is never there: nothing here waits for the export.
  const app = await buildApp(testConfig(databaseUrl, { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9' }), { logger: false })
  let closed = false
  t.teardown(async () => {
    if (!closed) await app.close()
  })
  app.get('/test/traceparent', async () => ({ traceparent: currentTraceparent() ?? null }))

  const traceId = randomBytes(16).toString('hex')
  const parent = randomBytes(8).toString('hex')
  const response = await app.inject({ url: '/test/traceparent', headers: { traceparent: `00-${traceId}-${parent}-01` } })
  const { traceparent } = response.json()
  const match = /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/.exec(traceparent)
  t.ok(match, `a W3C traceparent: ${traceparent}`)
  t.equal(match?.[1], traceId, 'the caller\'s trace')
  t.not(match?.[2], parent, 'this request\'s span, not the caller\'s')

  const fresh = (await app.inject({ url: '/test/traceparent' })).json().traceparent
  t.match(fresh, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/, 'a new trace without a caller')
  t.notMatch(fresh, traceId)
  t.equal(currentTraceparent(), undefined, 'and nothing outside a request')

  await app.close()
  closed = true
  t.pass('the app closes although its spans cannot be sent')
})

t.test('OTEL_TRACES_SAMPLER picks the SDK\'s sampler, with its ratio', async (t) => {
  const { samplerOf } = await import('../src/tracing/start.js')
  const { loadConfig } = await import('../src/config.js')
  const described = (env: NodeJS.ProcessEnv) => {
    const tracing = loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', ...env }).tracing
    if (tracing === undefined) throw new Error('tracing is off')
    return samplerOf(tracing).toString()
  }
  t.match(described({}), /^ParentBased\{root=AlwaysOnSampler/, 'by default, the caller decides, else every request')
  t.equal(described({ OTEL_TRACES_SAMPLER: 'always_on' }), 'AlwaysOnSampler')
  t.equal(described({ OTEL_TRACES_SAMPLER: 'always_off' }), 'AlwaysOffSampler')
  t.equal(described({ OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.25' }), 'TraceIdRatioBased{0.25}')
  t.match(described({ OTEL_TRACES_SAMPLER: 'parentbased_always_off' }), /^ParentBased\{root=AlwaysOffSampler/)
  t.match(described({ OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.1' }), /^ParentBased\{root=TraceIdRatioBased\{0.1\}/)
})
