// startEmbeddedPostgres in-process: the folders it refuses, a stale
// postmaster.pid it gets past, and where a project's data goes.
import { chmod, mkdir, rm, stat, writeFile } from 'node:fs/promises'
import { userInfo } from 'node:os'
import { dirname, join } from 'node:path'
import pg from 'pg'
import t, { type Test } from 'tap'
import { makeThrowawayFolder, projectDataDir, startEmbeddedPostgres } from '../src/db/embedded.js'

async function scratchFolder (t: Test, mode = 0o755): Promise<string> {
  const folder = await makeThrowawayFolder('users-service-cluster-')
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

t.test('a project keeps its data in .data/postgres, unless PostgreSQL\'s user cannot enter it', async (t) => {
  const open = await scratchFolder(t, 0o755)
  t.same(await projectDataDir(open), { dataDir: join(open, '.data', 'postgres') }, 'a folder anyone can enter: in the project')

  const closed = await scratchFolder(t, 0o700)
  const project = join(closed, 'users-service')
  await mkdir(project)
  const chosen = await projectDataDir(project)
  if (userInfo().uid !== 0) {
    t.same(chosen, { dataDir: join(project, '.data', 'postgres') }, 'not root: PostgreSQL runs as this user, who can enter it')
    return
  }
  const home = dirname(chosen.dataDir)
  t.teardown(() => rm(home, { recursive: true, force: true }))
  t.match(chosen, { dataDir: /^\/var\/lib\/users-service\/users-service-[0-9a-f]{12}\/postgres$/, movedBecause: `not in the project: the user postgres cannot enter ${closed}` },
    'as root, behind a 0700 folder: a folder of its own, and why')
  const { mode, uid } = await stat(home)
  t.equal(uid, 0, 'owned by root')
  t.equal(mode & 0o777, 0o755, 'which only root can write, and PostgreSQL\'s user can enter')
  t.same(await projectDataDir(project), chosen, 'the same on every start')

  const other = join(closed, 'users-service-2')
  await mkdir(other)
  const otherHome = dirname((await projectDataDir(other)).dataDir)
  t.teardown(() => rm(otherHome, { recursive: true, force: true }))
  t.not(otherHome, home, 'another checkout gets another')
})
