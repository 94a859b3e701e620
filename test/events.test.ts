// User events through the transactional outbox, on the machine's RabbitMQ
// (test/support/rabbitmq.ts): each test publishes to an exchange of its
// own, which a consumer of the test binds a queue to before any write.
import { randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { Ajv } from 'ajv'
import addFormats from 'ajv-formats'
import amqp from 'amqplib'
import type { FastifyInstance } from 'fastify'
import type pg from 'pg'
import { pino } from 'pino'
import t from 'tap'
import { parse } from 'yaml'
import { buildApp } from '../src/app.js'
import { insertUser } from '../src/db/users.js'
import { buildTestApp, createTestDatabase, testConfig } from './helper.js'
import { within } from './spawn.js'
import { ARRIVAL_WAIT_MS, BROKER, brokerUrl, consume, type Consumer } from './support/rabbitmq.js'
import { TcpProxy } from './support/tcp-proxy.js'

function eventsEnv (consumer: Consumer, url = brokerUrl()): NodeJS.ProcessEnv {
  return { EVENTS_AMQP_URL: url, EVENTS_EXCHANGE: consumer.exchange, EVENTS_POLL_INTERVAL_MS: '50' }
}

/** What the outbox holds, in the order it was written. */
async function outboxRows (db: pg.Pool): Promise<Array<{ eventId: string, type: string, sent: boolean }>> {
  const { rows } = await db.query('SELECT event_id AS "eventId", type, sent_at IS NOT NULL AS sent FROM event_outbox ORDER BY id')
  return rows
}

async function post (app: FastifyInstance, url: string, payload: object, headers: Record<string, string> = {}): Promise<{ status: number, body: any, headers: Record<string, unknown> }> {
  const response = await app.inject({ method: 'POST', url, payload, headers })
  return { status: response.statusCode, body: response.json(), headers: response.headers }
}

/** The AsyncAPI document's payload schema of each event type. */
async function payloadSchemas (): Promise<Record<string, (event: unknown) => boolean>> {
  const document = parse(await readFile(new URL('../docs/asyncapi.yaml', import.meta.url), 'utf8'))
  // The document is more than a schema: unknown keywords are its other parts.
  const ajv = addFormats.default(new Ajv({ strict: false, allErrors: true }), ['uuid', 'date-time'])
  ajv.addSchema(document, 'asyncapi')
  const messages = document.components.messages as Record<string, { name: string }>
  return Object.fromEntries(Object.entries(messages).map(([key, message]) => [
    message.name,
    ajv.compile({ $ref: `asyncapi#/components/messages/${key}/payload` })
  ]))
}

/** A user as its event carries it: the API's user plus its version (from the ETag). */
function withVersion (body: Record<string, unknown>, etag: unknown): Record<string, unknown> {
  return { ...body, version: Number(String(etag).replaceAll('"', '')) }
}

t.test('the events received are exactly the committed changes, in version order per user, once each', async (t) => {
  const consumer = await consume(t)
  // Two replicas on one database, both relaying.
  const { app, databaseUrl, db } = await buildTestApp(t, eventsEnv(consumer))
  const replica = await buildApp(testConfig(databaseUrl, eventsEnv(consumer)), { logger: false })
  t.teardown(() => replica.close())
  await Promise.all([app.ready(), replica.ready()])

  // What a consumer should see: one event per committed write, with the user after it.
  const expected: Array<{ type: string, subject: string, version: number, data: Record<string, unknown> }> = []
  const created = (body: any, etag: unknown): void => {
    expected.push({ type: 'user.created', subject: String(body.id), version: withVersion(body, etag).version as number, data: withVersion(body, etag) })
  }

  for (let i = 0; i < 6; i++) {
    const target = i % 2 === 0 ? app : replica
    const answer = await post(target, '/api/users', { name: `user ${i}`, email: `user${i}@example.com` })
    t.equal(answer.status, 201)
    created(answer.body, answer.headers.etag)
  }
  const ids = expected.map((each) => Number(each.subject))

  // Writes that fail emit nothing: a taken email, a stale If-Match, a missing user.
  t.equal((await post(app, '/api/users', { name: 'copy', email: 'USER0@example.com' })).status, 409)
  t.equal((await app.inject({ method: 'PATCH', url: `/api/users/${ids[0]}`, headers: { 'if-match': '"99"' }, payload: { name: 'x' } })).statusCode, 412)
  t.equal((await app.inject({ method: 'DELETE', url: '/api/users/999999' })).statusCode, 404)

  // A keyed create and its replay: one user, one event.
  const keyed = await post(app, '/api/users', { name: 'keyed' }, { 'idempotency-key': 'events-key-1' })
  const replayed = await post(replica, '/api/users', { name: 'keyed' }, { 'idempotency-key': 'events-key-1' })
  t.equal(replayed.headers['idempotent-replayed'], 'true')
  created(keyed.body, keyed.headers.etag)

  // The seed's create emits user.created like the new route.
  const seed = await post(app, '/api/user', { name: 'seeded' })
  t.equal(seed.status, 201)
  const seeded = await app.inject({ method: 'GET', url: `/api/users/${seed.body.id}` })
  created(seeded.json(), seeded.headers.etag)

  // Updates, several per user, at once from both replicas (both relaying
  // meanwhile), then deletes.
  for (let round = 0; round < 3; round++) {
    const patches = ids.slice(0, 4).flatMap((id, index) => [app, replica].map(async (target, which) => {
      const response = await target.inject({ method: 'PATCH', url: `/api/users/${id}`, payload: { name: `user ${index} r${round}.${which}` } })
      t.equal(response.statusCode, 200)
      expected.push({ type: 'user.updated', subject: String(id), version: Number(JSON.parse(response.headers.etag as string)), data: withVersion(response.json(), response.headers.etag) })
    }))
    await Promise.all(patches)
  }
  for (const id of ids.slice(3, 5)) {
    const before = Number(JSON.parse((await app.inject({ method: 'GET', url: `/api/users/${id}` })).headers.etag as string))
    t.equal((await replica.inject({ method: 'DELETE', url: `/api/users/${id}` })).statusCode, 204)
    expected.push({ type: 'user.deleted', subject: String(id), version: before + 1, data: { id } })
  }

  const received = await consumer.waitFor(expected.length)
  // Nothing more comes once the outbox is all sent.
  await within((async () => {
    while ((await outboxRows(db)).some((row) => !row.sent)) await new Promise((resolve) => setTimeout(resolve, 20))
  })(), ARRIVAL_WAIT_MS, 'every outbox row marked sent')
  t.equal(received.length, expected.length, 'one event per committed change, none for failed writes or replays')

  const eventIds = received.map(({ event }) => event.id)
  t.equal(new Set(eventIds).size, eventIds.length, 'no event id twice')
  t.same(new Set(eventIds), new Set((await outboxRows(db)).map((row) => row.eventId)), 'the events are the outbox\'s rows')

  const byKey = (each: { type: string, subject: string, version: number }): string => `${each.type} ${each.subject} v${each.version}`
  t.same(
    received.map(({ event }) => byKey({ type: event.type, subject: event.subject, version: event.userversion })).sort(),
    expected.map(byKey).sort(),
    'each committed change, and nothing else'
  )
  for (const want of expected) {
    const got = received.find(({ event }) => byKey({ type: event.type, subject: event.subject, version: event.userversion }) === byKey(want))
    t.same(got?.event.data, want.data, `${byKey(want)} carries the user after the change`)
  }

  // Per user, the versions arrive in increasing order.
  const versionsBySubject = new Map<string, number[]>()
  for (const { event } of received) versionsBySubject.set(event.subject, [...(versionsBySubject.get(event.subject) ?? []), event.userversion])
  for (const [subject, versions] of versionsBySubject) {
    t.same(versions, [...versions].sort((a, b) => a - b), `user ${subject}'s events in version order`)
  }

  // The last event of each user says what the database holds now.
  const { rows: users } = await db.query('SELECT id, version FROM users')
  for (const id of ids) {
    const last = received.filter(({ event }) => event.subject === String(id)).at(-1)?.event
    const row = users.find((user) => user.id === String(id))
    if (row === undefined) t.equal(last?.type, 'user.deleted', `user ${id} is gone, and its last event says so`)
    else t.equal(last?.data.version, Number(row.version), `user ${id}'s last event has its current version`)
  }

  // CloudEvents 1.0, structured JSON, as AMQP messages.
  const sample = received.find(({ event }) => event.type === 'user.created')
  t.match(sample?.event, {
    specversion: '1.0',
    id: /^[0-9a-f-]{36}$/,
    source: '/users-service',
    type: 'user.created',
    time: /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$/,
    subject: /^\d+$/,
    datacontenttype: 'application/json'
  })
  t.notOk('traceparent' in (sample?.event ?? {}), 'no traceparent without tracing')
  const schemas = await payloadSchemas()
  t.same(Object.keys(schemas).sort(), ['user.created', 'user.deleted', 'user.updated'], 'docs/asyncapi.yaml describes each type')
  for (const { event } of received) t.ok(schemas[event.type]?.(event), `${event.type} ${event.subject} v${event.userversion} is as docs/asyncapi.yaml says`)
  const { data: { version: _dropped, ...withoutVersion }, ...rest } = sample?.event ?? {}
  t.notOk(schemas['user.created']?.({ ...rest, data: withoutVersion }), 'and the schema tells a wrong event apart')
  for (const { routingKey, properties, event } of received) {
    t.equal(routingKey, event.type)
    t.equal(properties.messageId, event.id)
    t.equal(properties.contentType, 'application/cloudevents+json')
    t.equal(properties.deliveryMode, 2, 'persistent')
  }

  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /^events_outbox_backlog 0$/m)
  t.match(metrics, /^events_outbox_oldest_unsent_age_seconds 0$/m)
  t.match(metrics, /^events_published_total \d+$/m)
})

t.test('without EVENTS_AMQP_URL nothing is written to the outbox', async (t) => {
  const { app, db } = await buildTestApp(t)
  const created = await post(app, '/api/users', { name: 'quiet' })
  await app.inject({ method: 'PATCH', url: `/api/users/${created.body.id}`, payload: { name: 'still quiet' } })
  await app.inject({ method: 'DELETE', url: `/api/users/${created.body.id}` })
  await post(app, '/api/user', { name: 'seeded' })
  t.same(await outboxRows(db), [])
  t.equal(app.outbox, undefined)
  t.notMatch((await app.inject({ method: 'GET', url: '/metrics' })).body, /events_/)
})

t.test('with the broker cut off, writes and readiness go on; the events follow once it is back', async (t) => {
  const consumer = await consume(t)
  const proxy = await TcpProxy.start(BROKER)
  t.teardown(() => proxy.close())
  const { app } = await buildTestApp(t, eventsEnv(consumer, brokerUrl(proxy.port)))
  await app.ready()

  const first = await post(app, '/api/users', { name: 'before the cut' })
  await consumer.waitFor(1)

  proxy.cut()
  const ids: number[] = [first.body.id]
  for (let i = 0; i < 5; i++) {
    const answer = await post(app, '/api/users', { name: `during the cut ${i}` })
    t.equal(answer.status, 201, 'a write does not wait for the broker')
    ids.push(answer.body.id)
    t.equal((await app.inject({ method: 'PATCH', url: `/api/users/${answer.body.id}`, payload: { name: `changed ${i}` } })).statusCode, 200)
  }
  t.equal((await app.inject({ method: 'GET', url: '/health/ready' })).statusCode, 200, 'ready without the broker')
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /^events_outbox_backlog [1-9]\d*$/m, 'the backlog shows')
  t.notMatch(metrics, /^events_outbox_oldest_unsent_age_seconds 0$/m, 'and its age')

  proxy.restore()
  const received = await consumer.waitFor(11)
  t.same(received.map(({ event }) => `${event.type} ${event.subject}`).sort(), [
    `user.created ${ids[0]}`,
    ...ids.slice(1).flatMap((id) => [`user.created ${id}`, `user.updated ${id}`])
  ].sort(), 'every event, once')
  for (const id of ids.slice(1)) {
    const mine = received.filter(({ event }) => event.subject === String(id)).map(({ event }) => event.type)
    t.same(mine, ['user.created', 'user.updated'], `user ${id}'s events in order`)
  }
})

t.test('a broker that stops confirming counts as a publish failure; the events go again', async (t) => {
  const consumer = await consume(t)
  const proxy = await TcpProxy.start(BROKER)
  t.teardown(() => proxy.close())
  const { app } = await buildTestApp(t, eventsEnv(consumer, brokerUrl(proxy.port)))
  await app.ready()
  await post(app, '/api/users', { name: 'confirmed' })
  await consumer.waitFor(1)

  proxy.stall()
  const stalled = await post(app, '/api/users', { name: 'unconfirmed' })
  t.equal(stalled.status, 201)
  await within((async () => {
    while (!/^events_publish_failures_total [1-9]/m.test((await app.inject({ method: 'GET', url: '/metrics' })).body)) {
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  })(), ARRIVAL_WAIT_MS, 'a publish failure counted')
  proxy.restore()
  const received = await consumer.waitFor(2)
  t.ok(received.some(({ event }) => event.subject === String(stalled.body.id)), 'the unconfirmed event arrives')
})

t.test('an exchange the broker refuses holds the events back, not the writes; once fixed they go', async (t) => {
  // Taken by another kind of exchange: declaring ours as a topic fails.
  const exchange = `users_test_${randomBytes(6).toString('hex')}`
  const admin = await amqp.connect(brokerUrl())
  t.teardown(() => admin.close())
  const channel = await admin.createChannel()
  await channel.assertExchange(exchange, 'fanout', { durable: false })

  const lines: Array<{ msg?: string, err?: { message?: string } }> = []
  const loggerInstance = pino({ level: 'info' }, { write: (line: string) => { lines.push(JSON.parse(line)) } })
  const databaseUrl = await createTestDatabase(t)
  const app = await buildApp(testConfig(databaseUrl, { EVENTS_AMQP_URL: brokerUrl(), EVENTS_EXCHANGE: exchange }), { loggerInstance })
  t.teardown(() => app.close())
  await app.ready()

  const created = await post(app, '/api/users', { name: 'held back' })
  t.equal(created.status, 201)
  await within((async () => {
    while (!lines.some((line) => line.msg === 'relaying events failed; they wait in the outbox' && /cannot use exchange/.test(line.err?.message ?? ''))) {
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  })(), ARRIVAL_WAIT_MS, 'the refusal logged')
  t.equal((await app.inject({ method: 'GET', url: '/health/ready' })).statusCode, 200, 'still ready')

  await channel.deleteExchange(exchange)
  const consumer = await consume(t, exchange)
  const [received] = await consumer.waitFor(1)
  t.equal(received?.event.subject, String(created.body.id))
})

t.test('sent events are pruned after their retention', async (t) => {
  const consumer = await consume(t)
  const { app, db } = await buildTestApp(t, { ...eventsEnv(consumer), EVENTS_RETENTION_SECONDS: '0' })
  await app.ready()
  await post(app, '/api/users', { name: 'fleeting' })
  await consumer.waitFor(1)
  await within((async () => {
    while ((await outboxRows(db)).length > 0) await new Promise((resolve) => setTimeout(resolve, 50))
  })(), ARRIVAL_WAIT_MS, 'the sent event pruned')
  t.pass('pruned')
})

t.test('an event carries the traceparent of the write that made it', async (t) => {
  const consumer = await consume(t)
  const { app, db } = await buildTestApp(t, eventsEnv(consumer))
  await app.ready()
  // What a traced request passes (issue 16's helper gives the request's own).
  const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
  const user = await insertUser(db, 'traced', null, { traceparent })
  const [received] = await consumer.waitFor(1)
  t.equal(received?.event.subject, String(user.id))
  t.equal(received?.event.traceparent, traceparent)
  t.ok((await payloadSchemas())['user.created']?.(received?.event), 'as docs/asyncapi.yaml says')
})

t.test('a write answered just before shutdown is published before the app is closed', async (t) => {
  const consumer = await consume(t)
  const { app } = await buildTestApp(t, { ...eventsEnv(consumer), EVENTS_POLL_INTERVAL_MS: '60000' })
  await app.ready()
  const created = await post(app, '/api/users', { name: 'last one' })
  await app.close()
  // Closed: whatever the consumer gets now was published before close() returned.
  const [received] = await consumer.waitFor(1)
  t.equal(received?.event.subject, String(created.body.id))
})
