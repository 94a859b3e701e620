// Switches that put the service behind PgBouncer or give it a read replica
// for a bench run (BENCH_PGBOUNCER=1, BENCH_READ_REPLICA=1). Each starts
// what it needs from the machine's Debian packages (pgbouncer, PostgreSQL
// 15 in /usr/lib/postgresql/15/bin), run as the user postgres when the
// bench runs as root, in the run's scratch folder, stopped at the end.
import { execFile, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { chown, mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import { cleanups, freeLoopbackPort, sleep, track } from './lib.js'

const BIN = '/usr/lib/postgresql/15/bin'
const run = promisify(execFile)

export const viaPgBouncer = process.env.BENCH_PGBOUNCER === '1'
export const withReadReplica = process.env.BENCH_READ_REPLICA === '1'

/** The PostgreSQL user's ids when run as root (both refuse root), else nothing. */
async function account () {
  const { postgresAccount } = await import('../dist/db/embedded.js')
  return await postgresAccount()
}

async function give (path, who) {
  if (who !== undefined) await chown(path, who.uid, who.gid)
}

async function waitFor (what, check, ms = 30_000) {
  const deadline = Date.now() + ms
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`${what} within ${ms / 1000} s`)
    await sleep(50)
  }
}

async function answers (url) {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  await client.end()
  return true
}

/** PgBouncer in transaction mode in front of `serverUrl`; `url(databaseUrl)` goes through it. */
export async function startPgBouncer (serverUrl, scratch) {
  const who = await account()
  const folder = join(scratch, 'pgbouncer')
  await mkdir(folder)
  await give(folder, who)
  const server = new URL(serverUrl)
  const user = decodeURIComponent(server.username) || 'postgres'
  const password = decodeURIComponent(server.password)
  const port = await freeLoopbackPort()
  await writeFile(join(folder, 'pgbouncer.ini'), [
    '[databases]',
    `* = host=${server.hostname} port=${server.port || 5432} user=${user}${password === '' ? '' : ` password=${password}`}`,
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    `listen_port = ${port}`,
    'unix_socket_dir =',
    'pool_mode = transaction',
    `default_pool_size = ${process.env.BENCH_PGBOUNCER_POOL ?? 20}`,
    'max_client_conn = 1000',
    'auth_type = trust',
    `auth_file = ${join(folder, 'users.txt')}`,
    `logfile = ${join(folder, 'pgbouncer.log')}`
  ].join('\n') + '\n')
  await writeFile(join(folder, 'users.txt'), `"${user}" ""\n`)
  for (const file of ['pgbouncer.ini', 'users.txt']) await give(join(folder, file), who)
  const binary = existsSync('/usr/sbin/pgbouncer') ? '/usr/sbin/pgbouncer' : 'pgbouncer'
  track(spawn(binary, [join(folder, 'pgbouncer.ini')], {
    cwd: folder, stdio: 'ignore', ...(who === undefined ? {} : { uid: who.uid, gid: who.gid })
  }))
  const url = (databaseUrl) => {
    const through = new URL(databaseUrl)
    through.hostname = '127.0.0.1'
    through.port = String(port)
    through.password = ''
    return through.toString()
  }
  await waitFor('PgBouncer to answer', () => answers(url(serverUrl)))
  console.log(`  PgBouncer ${port} (transaction mode, ${process.env.BENCH_PGBOUNCER_POOL ?? 20} server connections) in front of ${server.host}`)
  return { url }
}

/**
 * A primary cluster and a hot standby of it (pg_basebackup -R), fsync off:
 * the bench's databases live on the primary and are replicated to the standby.
 */
export async function startReplication (scratch) {
  const who = await account()
  const folder = join(scratch, 'replication')
  await mkdir(folder)
  await give(folder, who)
  const as = (command, args) => run(join(BIN, command), args, { cwd: folder, ...(who === undefined ? {} : { uid: who.uid, gid: who.gid }) })
  const options = (port) => [`-p ${port}`, '-c listen_addresses=127.0.0.1', '-c unix_socket_directories=', '-c fsync=off',
    '-c synchronous_commit=off', '-c full_page_writes=off', '-c max_connections=200', '-c shared_buffers=128MB'].join(' ')
  const [primaryPort, standbyPort] = [await freeLoopbackPort(), await freeLoopbackPort()]
  const primaryDir = join(folder, 'primary')
  const standbyDir = join(folder, 'standby')
  await as('initdb', ['-D', primaryDir, '-U', 'postgres', '--auth=trust', '--encoding=UTF8', '--lc-messages=C', '--no-sync'])
  await as('pg_ctl', ['-D', primaryDir, '-w', '-l', `${primaryDir}.log`, '-o', options(primaryPort), 'start'])
  cleanups.push(() => as('pg_ctl', ['-D', primaryDir, '-m', 'immediate', 'stop']))
  await as('pg_basebackup', ['-h', '127.0.0.1', '-p', String(primaryPort), '-U', 'postgres', '-D', standbyDir, '-R', '-X', 'stream', '--no-sync'])
  await as('pg_ctl', ['-D', standbyDir, '-w', '-l', `${standbyDir}.log`, '-o', options(standbyPort), 'start'])
  cleanups.push(() => as('pg_ctl', ['-D', standbyDir, '-m', 'immediate', 'stop']))
  const primaryUrl = `postgres://postgres@127.0.0.1:${primaryPort}/postgres`
  const standbyUrl = `postgres://postgres@127.0.0.1:${standbyPort}/postgres`
  console.log(`  a primary on ${primaryPort} and its standby on ${standbyPort} (fsync off)`)
  return {
    primaryUrl,
    /** `databaseUrl`'s database on the standby. */
    readUrl: (databaseUrl) => {
      const standby = new URL(databaseUrl)
      standby.port = String(standbyPort)
      return standby.toString()
    },
    /** Waits until the standby has replayed all the primary wrote (the seed). */
    caughtUp: async () => {
      const primary = new pg.Client({ connectionString: primaryUrl })
      await primary.connect()
      const { rows } = await primary.query('SELECT pg_current_wal_insert_lsn()::text AS lsn')
      await primary.end()
      await waitFor('the standby to catch up', async () => {
        const standby = new pg.Client({ connectionString: standbyUrl })
        await standby.connect()
        try {
          const result = await standby.query('SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS done', [rows[0].lsn])
          return result.rows[0].done === true
        } finally {
          await standby.end()
        }
      }, 120_000)
    }
  }
}
