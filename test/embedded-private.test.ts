// The README's two commands, run from a copy of the project inside a folder
// only its owner can enter (mode 0700: root's home, a `mktemp -d` folder),
// as containers and CI runners do as root every day. Run as root, the
// embedded PostgreSQL runs as the user postgres, who cannot enter that
// folder: not its data, not the binaries under node_modules, not TMPDIR.
import { execFile } from 'node:child_process'
import { access, cp, mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir, userInfo } from 'node:os'
import { dirname, join, relative, sep } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'
import { spawnDist, within, type LogLine, type Spawned } from './spawn.js'

const projectDir = fileURLToPath(new URL('..', import.meta.url))
const LISTENING = /^Server listening at (http:\/\/127\.0\.0\.1:\d+)$/
const DATA_IN = /with its data in (.+?)(?: \((not in the project: .*)\))?; set DATABASE_URL/
/** The folder of one checkout's own, outside it, where root's data goes. */
const CHECKOUT_FOLDER = /users-service-[0-9a-f]{12}$/
const asRoot = userInfo().uid === 0
const run = promisify(execFile)

/**
 * A copy of the project in a fresh 0700 folder: what the tests and the
 * server need, and node_modules as hard links (the same files, as cheap as
 * can be, but reached only through the private folder).
 */
async function privateCopy (t: Test): Promise<{ root: string, project: string }> {
  const root = await mkdtemp(join(tmpdir(), 'users-service-private-'))
  t.equal((await stat(root)).mode & 0o777, 0o700, 'the folder is private (0700)')
  t.teardown(() => rm(root, { recursive: true, force: true }))
  const project = join(root, 'users-service')
  await mkdir(project)
  for (const entry of ['dist', 'migrations', 'src', 'test', 'package.json', '.taprc', 'tsconfig.json']) {
    await cp(join(projectDir, entry), join(project, entry), { recursive: true })
  }
  await run('cp', ['-al', join(projectDir, 'node_modules'), join(project, 'node_modules')])
    .catch(() => run('cp', ['-a', join(projectDir, 'node_modules'), join(project, 'node_modules')]))
  return { root, project }
}

function isInside (folder: string, path: string): boolean {
  const inside = relative(folder, path)
  return inside !== '' && !inside.startsWith('..') && !inside.startsWith(sep)
}

/** Whether every folder from `path` up can be entered by other users. */
async function othersCanReach (path: string): Promise<boolean> {
  for (let current = path; ; current = dirname(current)) {
    if (((await stat(current)).mode & 0o001) === 0) return false
    if (dirname(current) === current) return true
  }
}

async function stopLeftover (dataDir: string): Promise<void> {
  const text = await readFile(join(dataDir, 'postmaster.pid'), 'utf8').catch(() => undefined)
  const pid = Number(text?.split('\n')[0])
  if (Number.isInteger(pid) && pid > 0) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {}
  }
}

async function start (t: Test, project: string): Promise<Spawned & { baseUrl: string, dataDir: string, why: string | undefined }> {
  const server = spawnDist(t, 'server.js', { HOST: '127.0.0.1', PORT: '0' }, { project })
  const line = await server.waitForLine((l: LogLine) => LISTENING.test(String(l.msg)), 'the listening line', 40_000)
  const notice = server.lines.find((l) => DATA_IN.test(String(l.msg)))
  const [, named = '', why] = DATA_IN.exec(String(notice?.msg)) ?? []
  return Object.assign(server, {
    baseUrl: LISTENING.exec(String(line.msg))?.[1] ?? '',
    dataDir: named.startsWith(sep) ? named : join(project, named),
    why
  })
}

async function stopWith (server: Spawned, signal: NodeJS.Signals): Promise<number | null> {
  server.child.kill(signal)
  return (await server.exitWithin(15_000)).code
}

t.test('npm start from a private folder: the embedded PostgreSQL keeps its data where it can, and says where', { timeout: 120_000 }, async (t) => {
  const { root, project } = await privateCopy(t)
  const first = await start(t, project)
  const dataDir = first.dataDir
  t.teardown(async () => {
    await stopLeftover(dataDir)
    // As root the data lives outside the copy, in a folder of this checkout's own.
    if (!isInside(root, dataDir) && CHECKOUT_FOLDER.test(dirname(dataDir))) await rm(dirname(dataDir), { recursive: true, force: true })
  })
  if (asRoot) {
    t.notOk(isInside(root, dataDir), `as root, the data is outside the private folder: ${dataDir}`)
    t.ok(await othersCanReach(dirname(dataDir)), 'in a folder the postgres user can reach')
    t.equal((await stat(dataDir)).mode & 0o777, 0o700, 'the data folder itself is private to PostgreSQL')
    t.match(dirname(dataDir), CHECKOUT_FOLDER, 'in a folder named for this checkout')
    t.equal(first.why, `not in the project: the user postgres cannot enter ${root}`, 'and the line says why')
  } else {
    t.equal(dataDir, join(project, '.data', 'postgres'), 'not root: the data stays in the project')
    t.equal(first.why, undefined)
  }

  t.equal((await fetch(`${first.baseUrl}/health/ready`)).status, 200, 'ready')
  const created = await fetch(`${first.baseUrl}/api/users`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'Kept' })
  })
  t.equal(created.status, 201)
  const user = await created.json()
  t.equal(await stopWith(first, 'SIGTERM'), 0, 'SIGTERM: exit 0')

  const second = await start(t, project)
  t.equal(second.dataDir, dataDir, 'a restart finds the same folder')
  const read = await fetch(`${second.baseUrl}/api/users/${user.id}`)
  t.same(await read.json(), user, 'and the user is still there')
  t.equal(await stopWith(second, 'SIGTERM'), 0)
})

t.test('npm test from a private folder, with a private TMPDIR: the throwaway cluster lives where it can, and goes', { timeout: 120_000 }, async (t) => {
  const { root, project } = await privateCopy(t)
  const privateTmp = join(root, 'tmp')
  await mkdir(privateTmp, { mode: 0o700 })
  // test/run.js as `npm test` runs it, on one small test file.
  const child = execFile(process.execPath, ['test/run.js', '--disable-coverage', 'test/config.test.ts'], {
    cwd: project,
    env: { PATH: `${join(project, 'node_modules', '.bin')}:${process.env.PATH ?? ''}`, TMPDIR: privateTmp, HOME: root },
    maxBuffer: 16 * 1024 * 1024
  })
  let output = ''
  child.stdout?.on('data', (chunk: string) => { output += chunk })
  child.stderr?.on('data', (chunk: string) => { output += chunk })
  t.teardown(() => { child.kill('SIGKILL') })
  const code = await within(new Promise<number | null>((resolve) => child.once('close', resolve)), 100_000, () => `test/run.js to finish\n${output}`)
  t.equal(code, 0, `exits 0\n${code === 0 ? '' : output}`)
  const started = /a throwaway embedded PostgreSQL on port \d+ in (\S+) \(started/.exec(output)
  t.ok(started, 'it started the throwaway PostgreSQL')
  t.match(output, /^ok 1 - test\/config\.test\.ts/m, 'and the test file passed on it')
  const scratch = started?.[1] ?? ''
  if (asRoot) t.notOk(isInside(root, scratch), `as root, outside the private folder: ${scratch}`)
  await t.rejects(access(scratch), 'the throwaway cluster is gone afterwards')
})
