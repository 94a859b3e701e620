// Several service processes behind one PgBouncer whose server pool is
// smaller than their pools added up (3 processes × 4 connections against
// 3 server connections), under a short mixed load: zero errors.
import t from 'tap'
import { createTestDatabase, serverUrl } from './helper.js'
import { spawnDist, type LogLine } from './spawn.js'
import { startPgBouncer } from './support/pgbouncer.js'

const PROCESSES = 3
const POOL_MAX = 4
const SERVER_POOL = 3
const CLIENTS_PER_PROCESS = 6
const REQUESTS_PER_CLIENT = 30
const LISTENING = /^Server listening at (http:\/\/127\.0\.0\.1:\d+)$/
const json = { 'content-type': 'application/json' }

t.test('service processes sharing one small PgBouncer pool answer a mixed load without an error', async (t) => {
  const bouncer = await startPgBouncer(t, serverUrl, { poolSize: SERVER_POOL })
  const direct = await createTestDatabase(t)
  t.teardown(() => bouncer.release(direct))
  const env = {
    HOST: '127.0.0.1',
    PORT: '0',
    DATABASE_URL: bouncer.url(direct),
    DATABASE_POOLER: 'transaction',
    // Migrated already, as by the Kubernetes Job on the direct URL.
    MIGRATE_ON_START: 'false',
    DATABASE_POOL_MAX: String(POOL_MAX)
  }
  const bases = await Promise.all(Array.from({ length: PROCESSES }, async (_, i) => {
    const server = spawnDist(t, 'server.js', env)
    const line = await server.waitForLine((l: LogLine) => LISTENING.test(String(l.msg)), `server ${i} listening`)
    return LISTENING.exec(String(line.msg))?.[1] ?? ''
  }))

  const unexpected: string[] = []
  let answered = 0
  async function client (base: string, id: number): Promise<void> {
    let mine: number | undefined
    for (let i = 0; i < REQUESTS_PER_CLIENT; i++) {
      const kind = i % 5
      let response: Response
      if (kind === 0 || mine === undefined) {
        response = await fetch(`${base}/api/users`, { method: 'POST', headers: { ...json, 'idempotency-key': `c${id}-${i}` }, body: JSON.stringify({ name: `c${id}-${i}` }) })
        if (response.status === 201) mine = (await response.clone().json() as { id: number }).id
      } else if (kind === 1) {
        response = await fetch(`${base}/api/users/${mine}`, { method: 'PATCH', headers: json, body: JSON.stringify({ name: `c${id}-${i}` }) })
      } else if (kind === 2) {
        response = await fetch(`${base}/api/users?limit=20`)
      } else {
        response = await fetch(`${base}/api/users/${mine}`)
      }
      const body = await response.text()
      answered++
      if (response.status >= 300) unexpected.push(`${response.status} ${body}`)
    }
  }
  await Promise.all(bases.flatMap((base, p) => Array.from({ length: CLIENTS_PER_PROCESS }, (_, c) => client(base, p * 100 + c))))

  t.equal(answered, PROCESSES * CLIENTS_PER_PROCESS * REQUESTS_PER_CLIENT, 'every request answered')
  t.strictSame(unexpected, [], 'zero errors')
  for (const base of bases) t.equal((await fetch(`${base}/health/ready`)).status, 200, 'each process ready')
})
