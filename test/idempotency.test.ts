// Idempotency-Key on the two creates, POST /api/users and POST /api/user:
// what a client retrying sees, and what the database holds afterwards.
import { connect, type AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import pg from 'pg'
import t, { type Test } from 'tap'
import { buildApp } from '../src/app.js'
import { buildTestApp, testConfig } from './helper.js'

const REPLAYED = 'idempotent-replayed'
const ERROR_KEYS = ['error', 'message', 'statusCode']

type Payload = Record<string, unknown>

/** A JSON POST, with the Idempotency-Key header when `key` is given. */
function post (app: FastifyInstance, url: string, payload: Payload, key?: string): Promise<LightMyRequestResponse> {
  const headers: Record<string, string> = { 'content-type': 'application/json' }
  if (key !== undefined) headers['idempotency-key'] = key
  return app.inject({ method: 'POST', url, headers, payload: JSON.stringify(payload) })
}

async function count (db: pg.Pool, table: 'users' | 'idempotency_keys'): Promise<number> {
  const { rows } = await db.query<{ count: number }>(`SELECT count(*)::int AS count FROM ${table}`)
  return rows[0]?.count ?? Number.NaN
}

interface KeyRow {
  key: string
  statusCode: number | null
  headers: Record<string, string> | null
  body: string | null
  ttl: number
  fresh: boolean
}

async function keyRows (db: pg.Pool): Promise<KeyRow[]> {
  const { rows } = await db.query<KeyRow>(`SELECT key, status_code AS "statusCode", response_headers AS headers,
      response_body AS body, extract(epoch FROM expires_at - created_at)::float8 AS ttl, expires_at > now() AS fresh
    FROM idempotency_keys ORDER BY key`)
  return rows
}

async function expireKeys (db: pg.Pool, keys: string[]): Promise<void> {
  await db.query('UPDATE idempotency_keys SET expires_at = now() - interval \'1 second\' WHERE key = ANY ($1)', [keys])
}

/** Checks the contract's error body and returns its message. */
function errorMessage (t: Test, response: LightMyRequestResponse, statusCode: number, error: string, what = ''): string {
  t.equal(response.statusCode, statusCode, `${what} status ${statusCode}: ${response.body}`)
  t.match(response.headers['content-type'], /^application\/json/)
  const body = response.json()
  t.same(Object.keys(body).sort(), ERROR_KEYS, 'exactly statusCode, error and message')
  t.match(body, { statusCode, error })
  t.type(body.message, 'string')
  t.notOk(response.headers[REPLAYED], 'not a replay')
  return body.message
}

/** Polls `check` every 20 ms until it holds; throws after `timeoutMs`. */
async function waitUntil (what: string, check: () => Promise<boolean>, timeoutMs = 3_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`)
    await sleep(20)
  }
}

/** The locks the app's own connections to this database are waiting for. */
async function appLockWaits (db: pg.Pool): Promise<string[]> {
  const { rows } = await db.query<{ wait: string }>(`SELECT l.locktype || coalesce(':' || l.relation::regclass::text, '') AS wait
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE NOT l.granted AND a.datname = current_database() AND a.application_name = 'users-service'
    ORDER BY 1`)
  return rows.map((row) => row.wait)
}

/** Waits until the app has exactly `n` connections waiting on locks; returns what they wait for. */
async function untilWaiting (db: pg.Pool, n: number): Promise<string[]> {
  let waits: string[] = []
  await waitUntil(`${n} requests wait on locks`, async () => (waits = await appLockWaits(db)).length === n)
  return waits
}

/**
 * A transaction of another client holding `LOCK TABLE users IN SHARE ROW
 * EXCLUSIVE MODE`, so every insert into users waits until `commit()`.
 */
async function lockUsers (t: Test, databaseUrl: string, sqlInLock?: string) {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  let open = true
  t.teardown(async () => {
    if (open) await client.query('ROLLBACK').catch(() => {})
    await client.end()
  })
  await client.query('BEGIN')
  await client.query('LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE')
  if (sqlInLock !== undefined) await client.query(sqlInLock)
  return {
    async commit () {
      open = false
      await client.query('COMMIT')
    }
  }
}

/**
 * A POST /api/users over a real socket whose Idempotency-Key value is the
 * given bytes, exactly as a client put them on the wire.
 */
async function rawPost (port: number, key: Buffer): Promise<{ statusCode: number, body: string }> {
  const body = '{"name":"Wire"}'
  const request = Buffer.concat([
    Buffer.from(`POST /api/users HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\nIdempotency-Key: `, 'latin1'),
    key,
    Buffer.from(`\r\n\r\n${body}`, 'latin1')
  ])
  const text = await new Promise<string>((resolve, reject) => {
    let received = ''
    const socket = connect(port, '127.0.0.1', () => socket.write(request))
    socket.setTimeout(3_000, () => socket.destroy(new Error('no answer within 3 s')))
    socket.on('data', (chunk: Buffer) => { received += chunk.toString('latin1') })
    socket.on('error', reject)
    socket.on('close', () => resolve(received))
  })
  const statusCode = Number(/^HTTP\/1\.1 (\d{3}) /.exec(text)?.[1])
  return { statusCode, body: text.slice(text.indexOf('\r\n\r\n') + 4) }
}

/** A request in flight, and whether it has answered yet. */
function inFlight (request: Promise<LightMyRequestResponse>) {
  const state = { settled: false, response: request }
  request.then(() => { state.settled = true }, () => { state.settled = true })
  return state
}

t.test('the same key and body twice: one user, the first answer replayed', async (t) => {
  const { app, db } = await buildTestApp(t)
  const first = await post(app, '/api/users', { name: 'Ada', email: 'ada@example.com' }, 'key-1')
  t.equal(first.statusCode, 201, first.body)
  t.notOk(first.headers[REPLAYED], 'the first answer is not a replay')
  const user = first.json()
  t.match(user, { name: 'Ada', email: 'ada@example.com' })
  t.equal(first.headers.location, `/api/users/${user.id}`)
  t.equal(first.headers.etag, '"1"')

  // The same request with its members in another order.
  const second = await post(app, '/api/users', { email: 'ada@example.com', name: 'Ada' }, 'key-1')
  t.equal(second.statusCode, 201, second.body)
  t.equal(second.headers[REPLAYED], 'true')
  t.equal(second.body, first.body, 'the very same body text')
  t.same(second.json(), user)
  t.equal(second.headers.location, first.headers.location)
  t.equal(second.headers.etag, first.headers.etag)
  t.match(second.headers['content-type'], /^application\/json/)

  const third = await post(app, '/api/users', { name: 'Ada', email: 'ada@example.com' }, 'key-1')
  t.equal(third.statusCode, 201)
  t.equal(third.headers[REPLAYED], 'true')
  t.equal(third.body, first.body)

  t.equal(await count(db, 'users'), 1, 'exactly one user')
  const rows = await keyRows(db)
  t.equal(rows.length, 1)
  t.match(rows[0], {
    key: 'key-1',
    statusCode: 201,
    headers: { location: first.headers.location, etag: first.headers.etag },
    body: first.body,
    fresh: true
  }, 'the answer is stored with its key')
  t.equal(rows[0]?.ttl, 86_400, 'kept 24 hours by default')

  // The user replayed is the user stored.
  const read = await app.inject({ url: `/api/users/${user.id}` })
  t.same(read.json(), user)
})

t.test('POST /api/user replays the same way', async (t) => {
  const { app, db } = await buildTestApp(t)
  const first = await post(app, '/api/user', { name: 'Grace' }, 'legacy-key')
  t.equal(first.statusCode, 201, first.body)
  t.notOk(first.headers[REPLAYED])
  const created = first.json()
  t.strictSame(created, { id: created.id, name: 'Grace', message: 'User Grace created.' })
  t.equal(first.headers.location, `/api/users/${created.id}`)

  const second = await post(app, '/api/user', { name: 'Grace' }, 'legacy-key')
  t.equal(second.statusCode, 201)
  t.equal(second.headers[REPLAYED], 'true')
  t.equal(second.body, first.body)
  t.equal(second.headers.location, first.headers.location)
  t.equal(await count(db, 'users'), 1)
  t.equal(await count(db, 'idempotency_keys'), 1)
})

t.test('20 parallel requests with one key make one user and get one answer', async (t) => {
  const { app, db } = await buildTestApp(t)
  const N = 20
  const cases: Array<[string, Payload]> = [
    ['/api/users', { name: 'Parallel', email: 'parallel@example.com' }],
    ['/api/user', { name: 'Legacy parallel' }]
  ]
  for (const [url, payload] of cases) {
    const key = `parallel ${url}`
    const responses = await Promise.all(Array.from({ length: N }, () => post(app, url, payload, key)))
    t.same(responses.map((r) => r.statusCode), Array(N).fill(201), `${url}: all 201`)
    const bodies = new Set(responses.map((r) => r.body))
    t.equal(bodies.size, 1, `${url}: ${N} identical bodies`)
    t.equal(new Set(responses.map((r) => r.headers.location)).size, 1, `${url}: one Location`)
    t.equal(responses.filter((r) => r.headers[REPLAYED] === 'true').length, N - 1, `${url}: all but one replayed`)
    t.match(responses[0]?.json(), payload)
  }
  t.equal(await count(db, 'users'), 2, 'one user per key')
  t.equal(await count(db, 'idempotency_keys'), 2)
})

t.test('a repeat that arrives while the first is running waits for it, then replays', async (t) => {
  const { app, databaseUrl, db } = await buildTestApp(t)
  const lock = await lockUsers(t, databaseUrl)
  const payload = { name: 'Patient', email: 'patient@example.com' }
  const requests = Array.from({ length: 5 }, () => inFlight(post(app, '/api/users', payload, 'in-flight')))

  // One request holds the key and waits to insert; the other four wait on
  // the key that request holds.
  const waits = await untilWaiting(db, 5)
  t.same(waits, ['relation:users', 'transactionid', 'transactionid', 'transactionid', 'transactionid'])
  await sleep(300)
  t.equal(requests.filter((r) => r.settled).length, 0, 'all five still waiting, none gave up')
  t.same(await appLockWaits(db), waits)
  t.equal(await count(db, 'idempotency_keys'), 0, 'the claim is not visible before it commits')

  await lock.commit()
  const responses = await Promise.all(requests.map((r) => r.response))
  t.same(responses.map((r) => r.statusCode), [201, 201, 201, 201, 201])
  const ids = new Set(responses.map((r) => r.json().id))
  t.equal(ids.size, 1, 'all five name the same user')
  t.equal(new Set(responses.map((r) => r.body)).size, 1, 'identical bodies')
  t.equal(responses.filter((r) => r.headers[REPLAYED] === 'true').length, 4)
  t.equal(await count(db, 'users'), 1)
  t.equal(await count(db, 'idempotency_keys'), 1)
})

t.test('a waiting repeat with another body gets 422 once the first commits', async (t) => {
  const { app, databaseUrl, db } = await buildTestApp(t)
  const lock = await lockUsers(t, databaseUrl)
  const first = inFlight(post(app, '/api/users', { name: 'First' }, 'shared'))
  t.same(await untilWaiting(db, 1), ['relation:users'], 'the first holds the key')
  const same = inFlight(post(app, '/api/users', { name: 'First' }, 'shared'))
  const other = inFlight(post(app, '/api/users', { name: 'Second' }, 'shared'))
  const legacy = inFlight(post(app, '/api/user', { name: 'First' }, 'shared'))
  await untilWaiting(db, 4)
  t.notOk(first.settled || same.settled || other.settled || legacy.settled, 'all wait')

  await lock.commit()
  const created = await first.response
  t.equal(created.statusCode, 201)
  const replay = await same.response
  t.equal(replay.statusCode, 201)
  t.equal(replay.headers[REPLAYED], 'true')
  t.equal(replay.body, created.body)
  t.match(errorMessage(t, await other.response, 422, 'Unprocessable Entity'), /idempotency-key/i)
  t.match(errorMessage(t, await legacy.response, 422, 'Unprocessable Entity'), /idempotency-key/i)
  t.equal(await count(db, 'users'), 1)
})

t.test('the same key with another request is a 422 and creates nothing', async (t) => {
  const { app, db } = await buildTestApp(t)
  const first = await post(app, '/api/users', { name: 'Ada', email: 'ada@example.com' }, 'key-422')
  t.equal(first.statusCode, 201)

  const different: Payload[] = [
    { name: 'Ada', email: 'other@example.com' },
    { name: 'Ada Lovelace', email: 'ada@example.com' },
    { name: 'Ada' }
  ]
  for (const payload of different) {
    const response = await post(app, '/api/users', payload, 'key-422')
    const message = errorMessage(t, response, 422, 'Unprocessable Entity', JSON.stringify(payload))
    t.match(message, /idempotency-key/i, 'the message names the header')
  }
  // The other route, with a body it accepts, is another request too.
  const legacy = await post(app, '/api/user', { name: 'Ada' }, 'key-422')
  t.match(errorMessage(t, legacy, 422, 'Unprocessable Entity', 'POST /api/user'), /idempotency-key/i)

  t.equal(await count(db, 'users'), 1, 'no second user')
  const rows = await keyRows(db)
  t.equal(rows.length, 1)
  t.equal(rows[0]?.body, first.body, 'the stored answer is untouched')
  const replay = await post(app, '/api/users', { name: 'Ada', email: 'ada@example.com' }, 'key-422')
  t.equal(replay.statusCode, 201)
  t.equal(replay.body, first.body, 'the original request still replays')

  // And the other way round: a key first used on /api/user.
  const seed = await post(app, '/api/user', { name: 'Grace' }, 'key-legacy')
  t.equal(seed.statusCode, 201)
  const modern = await post(app, '/api/users', { name: 'Grace' }, 'key-legacy')
  t.match(errorMessage(t, modern, 422, 'Unprocessable Entity', 'POST /api/users'), /idempotency-key/i)
  t.equal(await count(db, 'users'), 2)
})

t.test('an invalid key is a 400 naming the header, and stores nothing', async (t) => {
  const { app, db } = await buildTestApp(t)
  const keys: Array<[string, string]> = [
    ['empty', ''],
    ['256 characters', 'k'.repeat(256)],
    ['a control character', 'bad\u0001key'],
    ['DEL', 'bad\u007fkey'],
    ['a tab', 'bad\tkey'],
    ['a non-ASCII character', 'café'],
    ['a non-BMP character', 'key-😀']
  ]
  for (const [what, key] of keys) {
    for (const [url, payload] of [['/api/users', { name: 'Ada' }], ['/api/user', { name: 'Ada' }]] as const) {
      const response = await post(app, url, payload, key)
      t.match(errorMessage(t, response, 400, 'Bad Request', `${url}, ${what}`), /idempotency-key/i, `${url}: ${what}`)
    }
  }
  t.equal(await count(db, 'users'), 0, 'no user')
  t.equal(await count(db, 'idempotency_keys'), 0, 'no key')

  const longest = '~'.repeat(254) + ' '
  const accepted = await post(app, '/api/users', { name: 'Ada' }, longest)
  t.equal(accepted.statusCode, 201, '255 printable characters are a key')
  const shortest = await post(app, '/api/user', { name: 'Ada' }, '!')
  t.equal(shortest.statusCode, 201, 'so is one')
  t.same((await keyRows(db)).map((row) => row.key.length).sort(), [1, 255])
  const replay = await post(app, '/api/users', { name: 'Ada' }, longest)
  t.equal(replay.headers[REPLAYED], 'true')
  t.equal(replay.body, accepted.body)
})

t.test('a create that fails does not use up its key', async (t) => {
  const { app, db } = await buildTestApp(t)
  const holder = await post(app, '/api/users', { name: 'Holder', email: 'taken@example.com' })
  t.equal(holder.statusCode, 201)
  const payload = { name: 'Newcomer', email: 'TAKEN@example.com' }

  const conflict = await post(app, '/api/users', payload, 'key-409')
  t.match(errorMessage(t, conflict, 409, 'Conflict'), /email/)
  t.equal(await count(db, 'idempotency_keys'), 0, 'no key stored with the 409')
  const again = await post(app, '/api/users', payload, 'key-409')
  t.equal(again.statusCode, 409, 'a retry tries again (and fails again)')
  t.notOk(again.headers[REPLAYED])

  const removed = await app.inject({ method: 'DELETE', url: `/api/users/${holder.json().id}` })
  t.equal(removed.statusCode, 204)
  const created = await post(app, '/api/users', payload, 'key-409')
  t.equal(created.statusCode, 201, created.body)
  t.notOk(created.headers[REPLAYED], 'created now, not replayed')
  t.match(created.json(), payload)
  const replay = await post(app, '/api/users', payload, 'key-409')
  t.equal(replay.headers[REPLAYED], 'true')
  t.equal(replay.body, created.body)

  // A body that fails validation never reaches the key.
  const invalid = await post(app, '/api/users', { name: '' }, 'key-400')
  t.match(errorMessage(t, invalid, 400, 'Bad Request'), /body\/name/)
  const unknown = await post(app, '/api/user', { name: 'Ada', email: 'ada@example.com' }, 'key-400')
  t.match(errorMessage(t, unknown, 400, 'Bad Request'), /body\/email/)
  t.same((await keyRows(db)).map((row) => row.key), ['key-409'])
  const valid = await post(app, '/api/users', { name: 'Valid' }, 'key-400')
  t.equal(valid.statusCode, 201, 'the key is still free: 201, not 422')
  t.notOk(valid.headers[REPLAYED])
  t.equal(await count(db, 'users'), 2)
})

t.test('a repeat waiting on a first request that fails makes its own attempt', async (t) => {
  const { app, databaseUrl, db } = await buildTestApp(t)
  // The lock's transaction takes the email the first request will ask for.
  const lock = await lockUsers(t, databaseUrl, "INSERT INTO users (name, email) VALUES ('Holder', 'race@example.com')")
  const first = inFlight(post(app, '/api/users', { name: 'First', email: 'race@example.com' }, 'doomed'))
  t.same(await untilWaiting(db, 1), ['relation:users'])
  const second = inFlight(post(app, '/api/users', { name: 'Second' }, 'doomed'))
  t.same(await untilWaiting(db, 2), ['relation:users', 'transactionid'])
  t.notOk(first.settled || second.settled)

  await lock.commit()
  t.match(errorMessage(t, await first.response, 409, 'Conflict'), /email/)
  const created = await second.response
  t.equal(created.statusCode, 201, `the key was free once the first rolled back: ${created.body}`)
  t.notOk(created.headers[REPLAYED])
  t.match(created.json(), { name: 'Second', email: null })
  t.equal(await count(db, 'users'), 2, 'the holder and the second')
  const rows = await keyRows(db)
  t.equal(rows.length, 1)
  t.equal(rows[0]?.body, created.body, 'the key holds the second request\'s answer')
})

t.test('an expired key is a new key', async (t) => {
  const { app, db } = await buildTestApp(t)
  const payload = { name: 'Ada' }
  const first = await post(app, '/api/users', payload, 'old-key')
  t.equal(first.statusCode, 201)
  await expireKeys(db, ['old-key'])

  const second = await post(app, '/api/users', payload, 'old-key')
  t.equal(second.statusCode, 201)
  t.notOk(second.headers[REPLAYED], 'not a replay')
  t.not(second.json().id, first.json().id, 'a new user')
  t.equal(await count(db, 'users'), 2)
  let rows = await keyRows(db)
  t.equal(rows.length, 1)
  t.match(rows[0], { body: second.body, fresh: true, ttl: 86_400 }, 'the record now holds the new answer, for a full TTL')
  const replay = await post(app, '/api/users', payload, 'old-key')
  t.equal(replay.body, second.body, 'and replays it')

  await expireKeys(db, ['old-key'])
  const other = await post(app, '/api/users', { name: 'Someone else', email: 'else@example.com' }, 'old-key')
  t.equal(other.statusCode, 201, 'another body is no 422 once the key has expired')
  t.notOk(other.headers[REPLAYED])
  t.match(other.json(), { name: 'Someone else' })
  t.equal(await count(db, 'users'), 3)
  rows = await keyRows(db)
  t.equal(rows[0]?.body, other.body)
})

t.test('purgeExpired() deletes expired keys and keeps fresh ones', async (t) => {
  const { app, db } = await buildTestApp(t)
  for (const key of ['a', 'b', 'c', 'd']) {
    t.equal((await post(app, '/api/user', { name: `User ${key}` }, key)).statusCode, 201)
  }
  t.equal(await app.idempotency.purgeExpired(), 0, 'nothing expired yet')
  await expireKeys(db, ['a', 'c'])
  t.equal(await app.idempotency.purgeExpired(), 2)
  t.same((await keyRows(db)).map((row) => row.key), ['b', 'd'])
  t.equal(await app.idempotency.purgeExpired(), 0, 'a second purge finds nothing')
  t.equal(await count(db, 'users'), 4, 'users are not touched')

  // A purged key is a new key.
  const again = await post(app, '/api/user', { name: 'User a' }, 'a')
  t.equal(again.statusCode, 201)
  t.notOk(again.headers[REPLAYED])
  t.equal(await count(db, 'users'), 5)
})

t.test('one purge clears a backlog of 50,000 expired keys, while requests go on', async (t) => {
  // Two connections and four clients: requests wait for a connection all along.
  const { app, db } = await buildTestApp(t, { DATABASE_POOL_MAX: '2' })
  const EXPIRED = 50_000
  await db.query(`INSERT INTO idempotency_keys (key, fingerprint, status_code, response_headers, response_body, expires_at)
    SELECT 'expired-' || n, md5(n::text), 201, '{"location":"/api/users/1"}', '{"id":1,"name":"Ada"}', now() - interval '1 hour'
    FROM generate_series(1, $1::int) AS n`, [EXPIRED])
  t.equal((await post(app, '/api/users', { name: 'Fresh' }, 'fresh')).statusCode, 201)

  const load = { purging: true }
  const latencies: number[] = []
  const statuses = new Set<number>()
  const client = async (index: number): Promise<void> => {
    for (let n = 0; load.purging; n++) {
      const started = performance.now()
      const response = await post(app, '/api/users', { name: `Client ${index}` }, `client-${index}-${n}`)
      latencies.push(performance.now() - started)
      statuses.add(response.statusCode)
    }
  }
  const clients = [0, 1, 2, 3].map(client)
  const purged = await app.idempotency.purgeExpired().finally(() => { load.purging = false })
  await Promise.all(clients)

  t.equal(purged, EXPIRED, 'every expired key purged in one pass')
  const { rows } = await db.query<{ expired: number, fresh: number }>(`SELECT count(*) FILTER (WHERE expires_at <= now())::int AS expired,
    count(*) FILTER (WHERE expires_at > now())::int AS fresh FROM idempotency_keys`)
  t.equal(rows[0]?.expired, 0, 'no expired key left')
  t.equal(rows[0]?.fresh, latencies.length + 1, 'every fresh key kept')
  t.same([...statuses], [201], 'every request meanwhile created its user')
  t.ok(latencies.length >= 4, `${latencies.length} requests answered during the purge`)
  const slowest = Math.max(...latencies)
  t.ok(slowest < 1_000, `no request held up: the slowest took ${Math.round(slowest)} ms`)
})

t.test('IDEMPOTENCY_KEY_TTL_SECONDS sets how long keys are kept', async (t) => {
  const { app, db } = await buildTestApp(t, { IDEMPOTENCY_KEY_TTL_SECONDS: '172800' })
  t.equal((await post(app, '/api/users', { name: 'Ada' }, 'ttl-1')).statusCode, 201)
  t.equal((await post(app, '/api/user', { name: 'Grace' }, 'ttl-2')).statusCode, 201)
  t.same((await keyRows(db)).map((row) => [row.key, row.ttl]), [['ttl-1', 172800], ['ttl-2', 172800]])
})

t.test('a replay survives a restart: another app on the same database replays', async (t) => {
  const { app, databaseUrl, db } = await buildTestApp(t)
  const payload = { name: 'Ada', email: 'ada@example.com' }
  const first = await post(app, '/api/users', payload, 'restart-key')
  t.equal(first.statusCode, 201)

  const restarted = await buildApp(testConfig(databaseUrl), { logger: false })
  t.teardown(() => restarted.close())
  const replay = await post(restarted, '/api/users', payload, 'restart-key')
  t.equal(replay.statusCode, 201)
  t.equal(replay.headers[REPLAYED], 'true')
  t.equal(replay.body, first.body)
  t.equal(replay.json().id, first.json().id)
  t.equal(replay.headers.location, first.headers.location)
  t.equal(replay.headers.etag, first.headers.etag)
  const other = await post(restarted, '/api/users', { name: 'Ada' }, 'restart-key')
  t.match(errorMessage(t, other, 422, 'Unprocessable Entity'), /idempotency-key/i)
  t.equal(await count(db, 'users'), 1)
})

t.test('without the header, each POST creates a user', async (t) => {
  const { app, db } = await buildTestApp(t)
  for (const url of ['/api/users', '/api/user']) {
    const first = await post(app, url, { name: 'Twice' })
    const second = await post(app, url, { name: 'Twice' })
    t.equal(first.statusCode, 201)
    t.equal(second.statusCode, 201)
    t.notOk(first.headers[REPLAYED])
    t.notOk(second.headers[REPLAYED])
    t.not(second.json().id, first.json().id, `${url}: two users`)
  }
  t.equal(await count(db, 'users'), 4)
  t.equal(await count(db, 'idempotency_keys'), 0, 'nothing stored without a key')

  // Keys are compared exactly: another case is another key.
  t.equal((await post(app, '/api/users', { name: 'Cased' }, 'Key')).statusCode, 201)
  const lower = await post(app, '/api/users', { name: 'Cased' }, 'key')
  t.equal(lower.statusCode, 201)
  t.notOk(lower.headers[REPLAYED])
  t.equal(await count(db, 'users'), 6)
})

t.test('over a real connection, bad keys are still a 400 that stores nothing', async (t) => {
  const { app, db } = await buildTestApp(t)
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as AddressInfo

  // UTF-8 on the wire reaches the app as Latin-1 text ("cafÃ©"): not printable ASCII.
  const utf8 = await rawPost(port, Buffer.from('café', 'utf8'))
  t.equal(utf8.statusCode, 400)
  t.match(JSON.parse(utf8.body), { statusCode: 400, error: 'Bad Request', message: /idempotency-key/i })

  // Control characters never reach the app: Node's HTTP parser refuses the
  // request first, and the app's clientErrorHandler answers for it.
  for (const key of ['bad\u0001key', 'bad\u007fkey']) {
    const response = await rawPost(port, Buffer.from(key, 'latin1'))
    t.equal(response.statusCode, 400, JSON.stringify(key))
    const body = JSON.parse(response.body)
    t.match(body, { statusCode: 400, error: 'Bad Request' })
    t.match(body.message, /idempotency-key/i, `${JSON.stringify(key)}: the message names the header`)
  }
  t.equal(await count(db, 'users'), 0)
  t.equal(await count(db, 'idempotency_keys'), 0)

  // A good key still works over the wire (surrounding spaces are not part of it).
  const good = await rawPost(port, Buffer.from('  wire-key  ', 'latin1'))
  t.equal(good.statusCode, 201, good.body)
  t.same((await keyRows(db)).map((row) => row.key), ['wire-key'])
})

t.test('an Idempotency-Key header sent twice is a 400, not the two keys joined into one', async (t) => {
  const { app, db } = await buildTestApp(t)
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as AddressInfo
  // Node joins repeated headers with ", ": "k2, k3", a valid key of its own.
  const repeats: Array<[string, string]> = [
    ['two keys', 'k2\r\nIdempotency-Key: k3'],
    ['two keys, the second in lower case', 'k2\r\nidempotency-key: k3'],
    ['one key twice', 'k2\r\nIdempotency-Key: k2']
  ]
  for (const [what, twice] of repeats) {
    const response = await rawPost(port, Buffer.from(twice, 'latin1'))
    t.equal(response.statusCode, 400, `${what}: ${response.body}`)
    t.match(JSON.parse(response.body), { statusCode: 400, error: 'Bad Request', message: /^headers\/idempotency-key must be sent once/ }, `${what}: the message names the header`)
  }
  t.equal(await count(db, 'users'), 0, 'no user')
  t.equal(await count(db, 'idempotency_keys'), 0, 'no key')

  // The single key "k2, k3" is a key like any other; the two headers never become it.
  const joined = await rawPost(port, Buffer.from('k2, k3', 'latin1'))
  t.equal(joined.statusCode, 201, joined.body)
  const twiceAfter = await rawPost(port, Buffer.from('k2\r\nIdempotency-Key: k3', 'latin1'))
  t.equal(twiceAfter.statusCode, 400, 'the two headers do not replay the key "k2, k3"')
  t.same((await keyRows(db)).map((row) => row.key), ['k2, k3'])

  // The legacy create alike (light-my-request sends an array as repeated headers).
  const legacy = await app.inject({ method: 'POST', url: '/api/user', headers: { 'idempotency-key': ['k4', 'k5'] }, payload: { name: 'Ada' } })
  t.match(errorMessage(t, legacy, 400, 'Bad Request', 'POST /api/user'), /^headers\/idempotency-key must be sent once/)
  t.equal(await count(db, 'users'), 1, 'only the user of "k2, k3"')
})

t.test('an email of null and no email are the same request', async (t) => {
  const { app, db } = await buildTestApp(t)
  const first = await post(app, '/api/users', { name: 'Ada' }, 'null-email')
  const second = await post(app, '/api/users', { name: 'Ada', email: null }, 'null-email')
  t.equal(second.statusCode, 201)
  t.equal(second.headers[REPLAYED], 'true')
  t.equal(second.body, first.body)
  t.equal(await count(db, 'users'), 1)
})
