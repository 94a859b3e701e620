// startEmbeddedPostgres in-process: the folders it refuses, and a stale
// postmaster.pid it gets past.
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir, userInfo } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import t, { type Test } from 'tap'
import { startEmbeddedPostgres } from '../src/db/embedded.js'

async function scratchFolder (t: Test, mode = 0o755): Promise<string> {
  const folder = await mkdtemp(join(tmpdir(), 'users-service-cluster-'))
  await chmod(folder, mode)
  t.teardown(() => rm(folder, { recursive: true, force: true }))
  return folder
}

t.test('a folder that holds something else is never used, nor cleared', async (t) => {
  const folder = await scratchFolder(t)
  const dataDir = join(folder, 'data')
  await mkdir(dataDir)
  await writeFile(join(dataDir, 'notes.txt'), 'mine')
  await t.rejects(startEmbeddedPostgres({ dataDir, persistent: true }), {
    name: 'EmbeddedDatabaseError',
    message: /is not empty and holds no PostgreSQL data/
  })
})

t.test('as root, a folder the postgres user cannot enter is refused with the reason', async (t) => {
  const folder = await scratchFolder(t, 0o700)
  const dataDir = join(folder, 'data')
  if (userInfo().uid === 0) {
    await t.rejects(startEmbeddedPostgres({ dataDir, persistent: false }), {
      name: 'EmbeddedDatabaseError',
      message: /runs as the user postgres, which cannot enter .* \(mode 700\)/
    })
  } else {
    // Not root: PostgreSQL runs as this user, who can enter the folder.
    const cluster = await startEmbeddedPostgres({ dataDir, persistent: false, fast: true })
    await cluster.stop()
    t.pass('started and stopped')
  }
})

t.test('a postmaster.pid naming some other live process is stale, not fatal', async (t) => {
  const folder = await scratchFolder(t)
  const dataDir = join(folder, 'data')
  const first = await startEmbeddedPostgres({ dataDir, persistent: true, fast: true })
  await first.stop()

  // This test's own pid: alive, but not a PostgreSQL of this folder.
  await writeFile(join(dataDir, 'postmaster.pid'), `${process.pid}\n${dataDir}\n`)
  const notices: string[] = []
  const second = await startEmbeddedPostgres({ dataDir, persistent: true, fast: true, notify: (m) => notices.push(m) })
  t.teardown(() => second.stop())
  const client = new pg.Client({ connectionString: second.url })
  await client.connect()
  const { rows } = await client.query('SELECT 1 AS answer')
  await client.end()
  t.same(rows, [{ answer: 1 }], 'the cluster answers')
  t.same(notices, [], 'nothing was stopped')
})
