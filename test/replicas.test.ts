// Reads on a real hot standby (DATABASE_READ_URL): a primary and a
// pg_basebackup -R standby started by the test (test/support/replication.ts).
// Reads come from the replica while its lag is within the bound, never go
// back in time for a client that shows what it has seen, and fall back to
// the primary when the replica lags or is down, readiness unharmed.
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import { buildApp } from '../src/app.js'
import { runMigrations } from '../src/db/migrations.js'
import type { ReplicaReaders } from '../src/db/replicas.js'
import { testConfig } from './helper.js'
import { sleep, within } from './spawn.js'
import { startReplication } from './support/replication.js'

const json = { 'content-type': 'application/json' }

const replication = await startReplication(t)
const { primary, standby } = replication
await runMigrations({ connectionString: primary.url, timeoutMs: 30_000, connectTimeoutMs: 5_000 })
await standby.caughtUp()

async function appWithReplica (t: Test, maxLagMs: number): Promise<{ app: FastifyInstance, replicas: ReplicaReaders }> {
  const app = await buildApp(testConfig(primary.url, {
    DATABASE_READ_URL: standby.url,
    DATABASE_READ_MAX_LAG_MS: String(maxLagMs),
    DATABASE_CONNECT_TIMEOUT_MS: '500'
  }), { logger: false })
  t.teardown(() => app.close())
  return { app, replicas: app.readers as ReplicaReaders }
}

async function create (app: FastifyInstance, name: string): Promise<{ id: number, version: number }> {
  const response = await app.inject({ method: 'POST', url: '/api/users', headers: json, payload: { name } })
  if (response.statusCode !== 201) throw new Error(`create: ${response.statusCode} ${response.body}`)
  return response.json()
}

/**
 * Once the standby has caught up, the replicas' next check finds it so
 * (a check in the middle of a replay may find it behind, for a moment).
 */
async function replicaCaughtUp (replicas: ReplicaReaders): Promise<void> {
  await standby.caughtUp()
  await within((async () => {
    for (;;) {
      await replicas.checkLag()
      if (replicas.lags()[0]?.lagMs === 0) return
      await sleep(20)
    }
  })(), 10_000, 'the replicas to find the standby caught up')
}

/** How many reads each source answered while `work` ran. */
async function readsDuring (replicas: ReplicaReaders, work: () => Promise<void>): Promise<{ primary: number, replica: number }> {
  const before = { ...replicas.readsBySource }
  await work()
  return { primary: replicas.readsBySource.primary - before.primary, replica: replicas.readsBySource.replica - before.replica }
}

t.test('reads come from the replica; a user is readable the moment its create is answered', async (t) => {
  const { app, replicas } = await appWithReplica(t, 60_000)
  const ada = await create(app, 'Ada')
  await replicaCaughtUp(replicas)

  t.strictSame(await readsDuring(replicas, async () => {
    t.equal((await app.inject({ url: `/api/users/${ada.id}` })).statusCode, 200)
    t.equal((await app.inject({ url: '/api/users' })).statusCode, 200)
    t.equal((await app.inject({ url: '/api/user' })).statusCode, 200)
    t.equal((await app.inject({ method: 'HEAD', url: '/api/user' })).statusCode, 200)
  }), { primary: 0, replica: 4 }, 'all four reads on the replica')

  await standby.pauseReplay()
  t.teardown(() => standby.resumeReplay())
  const grace = await create(app, 'Grace')
  t.strictSame(await readsDuring(replicas, async () => {
    const read = await app.inject({ url: `/api/users/${grace.id}` })
    t.equal(read.statusCode, 200, 'a 404 on the replica is looked up on the primary')
    t.equal(read.json().name, 'Grace')
    t.equal((await app.inject({ url: '/api/users/999999' })).statusCode, 404, 'and a user nowhere is a 404')
  }), { primary: 2, replica: 0 })

  // A client that just changed a user never gets the older one back.
  const changed = await app.inject({ method: 'PATCH', url: `/api/users/${ada.id}`, headers: json, payload: { name: 'Ada L.' } })
  const etag = String(changed.headers.etag)
  t.strictSame(await readsDuring(replicas, async () => {
    const old = await app.inject({ url: `/api/users/${ada.id}` })
    t.equal(old.json().name, 'Ada', 'without If-None-Match the replica answers, within its lag bound')
    const seen = await app.inject({ url: `/api/users/${ada.id}`, headers: { 'if-none-match': etag } })
    t.equal(seen.statusCode, 304, 'If-None-Match naming the newer version: the primary answers, 304')
  }), { primary: 1, replica: 1 })
  await standby.resumeReplay()
  await standby.caughtUp()
})

t.test('a replica lagging past the bound costs only a fallback to the primary', async (t) => {
  const { app, replicas } = await appWithReplica(t, 200)
  const user = await create(app, 'Lagged')
  await replicaCaughtUp(replicas)
  t.strictSame(await readsDuring(replicas, async () => {
    t.equal((await app.inject({ url: `/api/users/${user.id}` })).statusCode, 200)
  }), { primary: 0, replica: 1 }, 'caught up: the replica')

  await standby.pauseReplay()
  t.teardown(() => standby.resumeReplay())
  await create(app, 'Unreplayed')
  await within((async () => {
    for (;;) {
      await replicas.checkLag()
      const lag = replicas.lags()[0]?.lagMs
      if (lag !== undefined && lag > 200) return
      await sleep(50)
    }
  })(), 10_000, 'the replica to lag past 200 ms')
  t.strictSame(await readsDuring(replicas, async () => {
    t.equal((await app.inject({ url: `/api/users/${user.id}` })).statusCode, 200)
  }), { primary: 1, replica: 0 }, 'lagging: the primary')
  t.equal((await app.inject({ url: '/health/ready' })).statusCode, 200, 'ready')
  const metrics = (await app.inject({ url: '/metrics' })).body
  t.match(metrics, /db_reads_total\{source="primary"\} 1\n/)
  t.match(metrics, /db_reads_total\{source="replica"\} 1\n/)
  t.match(metrics, new RegExp(`db_replica_lag_seconds\\{replica="127.0.0.1:${standby.port}/postgres"\\} [0-9.]+\\n`))

  await standby.resumeReplay()
  await replicaCaughtUp(replicas)
  t.strictSame(await readsDuring(replicas, async () => {
    t.equal((await app.inject({ url: `/api/users/${user.id}` })).statusCode, 200)
  }), { primary: 0, replica: 1 }, 'caught up again: the replica')
})

t.test('a replica that is down costs only a fallback to the primary', async (t) => {
  const { app, replicas } = await appWithReplica(t, 60_000)
  const user = await create(app, 'Stays')
  await standby.caughtUp()
  t.equal((await app.inject({ url: `/api/users/${user.id}` })).statusCode, 200, 'a connection to the replica is open')

  await standby.stop()
  t.teardown(() => standby.start())
  // Before any lag check has noticed: the read fails there and is answered by the primary.
  t.strictSame(await readsDuring(replicas, async () => {
    t.equal((await app.inject({ url: `/api/users/${user.id}` })).statusCode, 200)
  }), { primary: 1, replica: 0 })
  await replicas.checkLag()
  t.equal(replicas.lags()[0]?.lagMs, undefined, 'the check marks it unusable')
  t.equal((await app.inject({ url: '/api/users' })).statusCode, 200)
  t.equal((await app.inject({ url: '/health/ready' })).statusCode, 200, 'ready stays 200 while the primary answers')
  t.match((await app.inject({ url: '/metrics' })).body, /db_replica_lag_seconds\{replica="[^"]+"\} -1\n/)
})

// Last: a promoted standby is a replica no more.
t.test('a promoted replica is read from no more', async (t) => {
  const { app, replicas } = await appWithReplica(t, 60_000)
  const user = await create(app, 'Promoted')
  await replicaCaughtUp(replicas)
  t.strictSame(await readsDuring(replicas, async () => {
    t.equal((await app.inject({ url: `/api/users/${user.id}` })).statusCode, 200)
  }), { primary: 0, replica: 1 }, 'a standby: the replica')

  await standby.promote()
  await replicas.checkLag()
  t.equal(replicas.lags()[0]?.lagMs, undefined, 'out of recovery: not usable')
  t.strictSame(await readsDuring(replicas, async () => {
    t.equal((await app.inject({ url: `/api/users/${user.id}` })).statusCode, 200)
  }), { primary: 1, replica: 0 }, 'promoted: the primary')
  t.equal((await app.inject({ url: '/health/ready' })).statusCode, 200, 'ready')
})
