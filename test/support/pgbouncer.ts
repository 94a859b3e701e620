// A real PgBouncer (the machine's, from Debian: `apt-get install pgbouncer`)
// in transaction mode, started by a test in front of a PostgreSQL server on
// a free port, stopped when the test ends. Run as root, it runs as the user
// postgres (it refuses root), from a throwaway folder that user can enter.
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { chown, readFile, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import { join } from 'node:path'
import pg from 'pg'
import type { Test } from 'tap'
import { freeLoopbackPort, makeThrowawayFolder, postgresAccount } from '../../src/db/embedded.js'
import { sleep, within } from '../spawn.js'

export interface PgBouncerOptions {
  /** Server connections per database and user pair (PgBouncer's default_pool_size). */
  poolSize?: number
  maxClientConnections?: number
}

export interface PgBouncer {
  port: number
  /** `databaseUrl` (same database) reached through PgBouncer. */
  url: (databaseUrl: string) => string
  /** PgBouncer's log so far. */
  log: () => Promise<string>
  /** Closes PgBouncer's server connections to the database of `databaseUrl` (so that it can be dropped at once). */
  release: (databaseUrl: string) => Promise<void>
}

/** Starts PgBouncer in transaction mode in front of the server of `serverUrl`. */
export async function startPgBouncer (t: Test, serverUrl: string, options: PgBouncerOptions = {}): Promise<PgBouncer> {
  const server = new URL(serverUrl)
  const folder = await makeThrowawayFolder('users-service-pgbouncer-')
  t.teardown(() => rm(folder, { recursive: true, force: true }))
  const port = await freeLoopbackPort()
  const user = decodeURIComponent(server.username) || 'postgres'
  const password = decodeURIComponent(server.password)
  const logFile = join(folder, 'pgbouncer.log')
  const files = {
    'pgbouncer.ini': [
      '[databases]',
      // Any database name a client asks for, on the server, as this user.
      `* = host=${server.hostname} port=${server.port === '' ? 5432 : server.port} user=${user}${password === '' ? '' : ` password=${password}`}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'pool_mode = transaction',
      `default_pool_size = ${options.poolSize ?? 10}`,
      `max_client_conn = ${options.maxClientConnections ?? 200}`,
      'auth_type = trust',
      `auth_file = ${join(folder, 'users.txt')}`,
      `logfile = ${logFile}`,
      // Nothing extra is ignored: the service must send no startup parameter PgBouncer refuses.
      'ignore_startup_parameters =',
      `admin_users = ${user}`
    ].join('\n') + '\n',
    'users.txt': `"${user}" ""\n`
  }
  const account = await postgresAccount()
  // Its log goes in the folder too.
  if (account !== undefined) await chown(folder, account.uid, account.gid)
  for (const [name, text] of Object.entries(files)) {
    await writeFile(join(folder, name), text)
    if (account !== undefined) await chown(join(folder, name), account.uid, account.gid)
  }

  // Debian puts it in /usr/sbin, which a non-root PATH may lack.
  const binary = existsSync('/usr/sbin/pgbouncer') ? '/usr/sbin/pgbouncer' : 'pgbouncer'
  const child = spawn(binary, [join(folder, 'pgbouncer.ini')], {
    cwd: folder,
    stdio: ['ignore', 'ignore', 'pipe'],
    ...(account === undefined ? {} : { uid: account.uid, gid: account.gid })
  })
  let stderr = ''
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  t.teardown(async () => {
    child.kill('SIGTERM') // immediate; SIGINT would wait for clients
    await within(exited, 5_000, 'PgBouncer to stop').catch(() => child.kill('SIGKILL'))
  })
  const log = async (): Promise<string> => await readFile(logFile, 'utf8').catch(() => '')
  await within((async () => {
    while (!(await accepts(port))) {
      if (child.exitCode !== null) throw new Error(`PgBouncer exited: ${stderr}${await log()}`)
      await sleep(50)
    }
  })(), 10_000, () => `PgBouncer to listen on ${port}: ${stderr}`)

  return {
    port,
    url: (databaseUrl) => {
      const url = new URL(databaseUrl)
      url.hostname = '127.0.0.1'
      url.port = String(port)
      url.password = ''
      return url.toString()
    },
    log,
    release: async (databaseUrl) => {
      const admin = new pg.Client({ host: '127.0.0.1', port, user, database: 'pgbouncer' })
      await admin.connect()
      try {
        // The console takes no parameters; test database names are [a-z0-9_].
        await admin.query(`KILL ${new URL(databaseUrl).pathname.slice(1)}`)
      } finally {
        await admin.end()
      }
    }
  }
}

function accepts (port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1')
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => resolve(false))
  })
}
