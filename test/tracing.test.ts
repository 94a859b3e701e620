// Tracing with OpenTelemetry (issue 16): the built server, spawned as in
// production, exports its spans over OTLP/HTTP to a receiver served here,
// which decodes them (protobuf and JSON) so the tests can check names,
// parents, attributes and the trace a caller started.
import { randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { adminQuery, createTestDatabase } from './helper.js'
import { startOtlpSink, type OtlpSink, type ReceivedSpan } from './support/otlp-sink.js'
import { brokerUrl, consume } from './support/rabbitmq.js'
import { spawnDist, type Spawned } from './spawn.js'

const LISTENING = /^Server listening at (http:\/\/127\.0\.0\.1:\d+)$/
const SERVER = 2
const PASSWORD = 'Tr4cingS3cretPassw0rd'
const RECORD_IMPORTS = fileURLToPath(new URL('./support/record-imports.mjs', import.meta.url))

/**
 * The test's database, as a role of the test's own whose password is
 * PASSWORD: a server that checks passwords (the embedded PostgreSQL) takes
 * it, and none of the default names ('postgres') can hide in a span.
 */
async function databaseWithPassword (t: Test): Promise<string> {
  const url = new URL(await createTestDatabase(t))
  const role = `tracing_${randomBytes(4).toString('hex')}`
  await adminQuery(`CREATE ROLE ${role} LOGIN SUPERUSER PASSWORD '${PASSWORD}'`)
  t.teardown(() => adminQuery(`DROP ROLE IF EXISTS ${role}`))
  url.username = role
  url.password = PASSWORD
  return url.toString()
}

async function startServer (t: Test, env: Record<string, string>): Promise<Spawned & { baseUrl: string, importsFile: string }> {
  const importsFile = join(tmpdir(), `tracing-imports-${randomBytes(6).toString('hex')}.txt`)
  const server = spawnDist(t, 'server.js', {
    DATABASE_URL: await databaseWithPassword(t),
    HOST: '127.0.0.1',
    PORT: '0',
    LOG_LEVEL: 'info',
    // Spans leave within 100 ms rather than the default 5 s.
    OTEL_BSP_SCHEDULE_DELAY: '100',
    NODE_OPTIONS: `--import=${RECORD_IMPORTS}`,
    RECORD_IMPORTS_TO: importsFile,
    ...env
  })
  const line = await server.waitForLine((each) => LISTENING.test(each.msg ?? ''), 'the listening line')
  return Object.assign(server, { baseUrl: LISTENING.exec(line.msg ?? '')?.[1] ?? '', importsFile })
}

async function sink (t: Test): Promise<OtlpSink> {
  const started = await startOtlpSink()
  t.teardown(() => started.close())
  return started
}

async function call (url: string, init: RequestInit = {}): Promise<{ status: number, body: any }> {
  const response = await fetch(url, init)
  const text = await response.text()
  return { status: response.status, body: text === '' ? undefined : JSON.parse(text) }
}

const statementOf = (span: ReceivedSpan): string => String(span.attributes['db.query.text'] ?? '')

const childrenOf = (spans: ReceivedSpan[], parent: ReceivedSpan) =>
  spans.filter((span) => span.traceId === parent.traceId && span.parentSpanId === parent.spanId)

t.test('http/protobuf: a request continues the caller\'s trace; each SQL statement is a child span', async (t) => {
  const otlp = await sink(t)
  const server = await startServer(t, {
    OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url,
    OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment=test,service.namespace=users'
  })

  const created = await call(`${server.baseUrl}/api/users`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'Ada Secretname', email: 'ada.secret@example.com' })
  })
  t.equal(created.status, 201)
  const id: number = created.body.id

  const callerTrace = randomBytes(16).toString('hex')
  const callerSpan = randomBytes(8).toString('hex')
  const read = await call(`${server.baseUrl}/api/users/${id}`, { headers: { traceparent: `00-${callerTrace}-${callerSpan}-01` } })
  t.equal(read.status, 200)
  const found = await call(`${server.baseUrl}/api/users?email=${encodeURIComponent('ADA.secret@example.com')}`)
  t.equal(found.body.items.length, 1)

  const get = await otlp.waitForSpan((span) => span.name === 'GET /api/users/:id', 'GET /api/users/:id')
  t.equal(get.path, '/v1/traces', 'posted to the endpoint\'s /v1/traces')
  t.match(get.contentType, /^application\/x-protobuf/, 'as protobuf by default')
  t.equal(get.kind, SERVER, 'a server span')
  t.equal(get.traceId, callerTrace, 'in the caller\'s trace')
  t.equal(get.parentSpanId, callerSpan, 'under the caller\'s span')
  t.match(get.attributes, {
    'http.request.method': 'GET',
    'http.route': '/api/users/:id',
    'http.response.status_code': 200,
    'url.path': `/api/users/${id}`
  }, 'HTTP semantic-convention attributes')
  t.match(get.resource, { 'service.name': 'users-service', 'deployment.environment': 'test', 'service.namespace': 'users' })

  const sql = await otlp.waitForSpan((span) => span.parentSpanId === get.spanId && statementOf(span) !== '', 'a statement under GET /api/users/:id')
  t.equal(sql.traceId, callerTrace)
  t.match(sql.attributes, { 'db.system.name': 'postgresql' })
  t.match(statementOf(sql), /FROM users WHERE id = \$1$/, 'the statement\'s text, with its placeholder')
  t.notOk(Object.keys(sql.attributes).some((key) => /values|parameters/.test(key)), 'and no parameter values')

  const post = await otlp.waitForSpan((span) => span.name === 'POST /api/users', 'POST /api/users')
  t.equal(post.parentSpanId, '', 'without traceparent, a new trace starts')
  t.not(post.traceId, callerTrace)
  await otlp.waitForSpan((span) => span.parentSpanId === post.spanId && /INSERT INTO users/.test(statementOf(span)), 'the INSERT under POST')
  const lookup = await otlp.waitForSpan((span) => span.name === 'GET /api/users', 'GET /api/users')
  t.equal(lookup.attributes['url.path'], '/api/users', 'the query string (an email) is left out')
  await otlp.waitForSpan((span) => span.parentSpanId === lookup.spanId && /lower\(email\)/.test(statementOf(span)), 'the lookup under GET')

  // Nothing personal or secret in any attribute of any span (or resource).
  const everything = JSON.stringify(otlp.spans.map((span) => [span.name, span.attributes, span.resource]))
  for (const secret of ['ada.secret', 'Secretname', PASSWORD]) t.notMatch(everything, secret, `${secret} appears nowhere`)
  t.ok(childrenOf(otlp.spans, get).length >= 1)

  // The request's log line joins its trace.
  const logged = await server.waitForLine((line) => line.msg === 'request completed' && line.url === `/api/users/${id}`, 'the GET\'s log line')
  t.equal(logged.trace_id, callerTrace, 'the log line carries trace_id')
  t.equal(logged.span_id, get.spanId, 'and the server span\'s span_id')

  const imports = await readFile(server.importsFile, 'utf8')
  t.match(imports, /@opentelemetry\/sdk-trace-node/, 'the SDK is loaded when tracing is on')
})

t.test('with events on, each event carries the trace of the request that caused it', async (t) => {
  // A consumer of the test's own exchange on the machine's RabbitMQ.
  const { exchange, waitFor } = await consume(t, `users_tracing_${randomBytes(6).toString('hex')}`)
  const otlp = await sink(t)
  const server = await startServer(t, {
    OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url,
    EVENTS_AMQP_URL: brokerUrl(),
    EVENTS_EXCHANGE: exchange
  })

  const callerTrace = randomBytes(16).toString('hex')
  const created = await call(`${server.baseUrl}/api/users`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', traceparent: `00-${callerTrace}-${randomBytes(8).toString('hex')}-01` },
    body: JSON.stringify({ name: 'Traced' })
  })
  t.equal(created.status, 201)
  const post = await otlp.waitForSpan((span) => span.name === 'POST /api/users', 'POST /api/users')
  const [event] = (await waitFor(1)).map((received) => received.event)
  t.equal(event?.type, 'user.created')
  t.equal(event?.subject, String(created.body.id))
  t.match(event?.traceparent, new RegExp(`^00-${callerTrace}-[0-9a-f]{16}-01$`), 'the traceparent of the caller\'s trace (CloudEvents distributed tracing)')
  t.equal(post.traceId, callerTrace)
})

t.test('http/json, a traces endpoint of its own, OTEL_SERVICE_NAME; a 404 is traced too', async (t) => {
  const otlp = await sink(t)
  const server = await startServer(t, {
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${otlp.url}/custom/traces`,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
    OTEL_SERVICE_NAME: 'users-under-test',
    OTEL_RESOURCE_ATTRIBUTES: 'service.name=overridden'
  })
  t.equal((await call(`${server.baseUrl}/api/users/999999`)).status, 404)
  const get = await otlp.waitForSpan((span) => span.name === 'GET /api/users/:id', 'GET /api/users/:id')
  t.equal(get.path, '/custom/traces', 'the traces endpoint is used as it is')
  t.match(get.contentType, /^application\/json/)
  t.equal(get.parentSpanId, '')
  t.match(get.traceId, /^[0-9a-f]{32}$/)
  t.equal(get.attributes['http.response.status_code'], 404)
  t.equal(get.resource['service.name'], 'users-under-test', 'OTEL_SERVICE_NAME wins')
  await otlp.waitForSpan((span) => span.parentSpanId === get.spanId && /WHERE id = \$1/.test(statementOf(span)), 'the SELECT under it')
})

t.test('the sampler is honoured: always_off exports nothing, and the service still answers', async (t) => {
  const otlp = await sink(t)
  const server = await startServer(t, { OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url, OTEL_TRACES_SAMPLER: 'always_off' })
  t.equal((await call(`${server.baseUrl}/api/users`)).status, 200)
  // A sampled caller's trace is not followed either: always_off ignores the parent.
  t.equal((await call(`${server.baseUrl}/api/users`, { headers: { traceparent: `00-${randomBytes(16).toString('hex')}-${randomBytes(8).toString('hex')}-01` } })).status, 200)
  const logged = await server.waitForLine((line) => line.msg === 'request completed', 'a request log line')
  t.equal(logged.trace_id, undefined, 'no trace id on an unsampled request\'s line')
  // Then a clean shutdown flushes what there is: nothing.
  server.child.kill('SIGTERM')
  t.equal((await server.exitWithin(20_000)).code, 0)
  t.same(otlp.spans, [], 'no span was exported')
})

t.test('off by default: nothing of OpenTelemetry is loaded, and logs carry no trace ids', async (t) => {
  const server = await startServer(t, {})
  t.equal((await call(`${server.baseUrl}/api/users`)).status, 200)
  const logged = await server.waitForLine((line) => line.msg === 'request completed', 'a request log line')
  t.notOk('trace_id' in logged)
  server.child.kill('SIGTERM')
  await server.exitWithin(20_000)
  const imports = await readFile(server.importsFile, 'utf8')
  t.match(imports, /node_modules\/pg\//, 'the record of imports works (pg is in it)')
  t.notMatch(imports, /@opentelemetry|@fastify\/otel|import-in-the-middle|\/tracing\/start\.js|plugins\/tracing\.js/, 'no OpenTelemetry module')
})
