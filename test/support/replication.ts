// A primary PostgreSQL cluster and a hot standby streaming from it, made by
// a test with the machine's PostgreSQL 15 binaries (Debian's, in
// /usr/lib/postgresql/15/bin): initdb, then pg_basebackup -R. Both on free
// loopback ports, quick (small shared_buffers, fsync off), run as the user
// postgres when the test runs as root, and removed when the test ends.
import { execFile } from 'node:child_process'
import { chown, mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import type { Test } from 'tap'
import { freeLoopbackPort, makeThrowawayFolder, postgresAccount, type Account } from '../../src/db/embedded.js'
import { sleep, within } from '../spawn.js'

const BIN = '/usr/lib/postgresql/15/bin'
const run = promisify(execFile)
/** Quick, throwaway clusters: durability is not what these tests are about. */
const FAST = ['-c', 'shared_buffers=16MB', '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off',
  '-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories=', '-c', 'max_connections=50']

export interface Cluster {
  port: number
  /** A URL for its `postgres` database. */
  url: string
  start: () => Promise<void>
  stop: () => Promise<void>
}

export interface Replication {
  primary: Cluster
  standby: Cluster & {
    pauseReplay: () => Promise<void>
    resumeReplay: () => Promise<void>
    /** Waits until the standby has streamed and replayed everything the primary has written so far. */
    caughtUp: () => Promise<void>
    /** Makes the standby a primary of its own (it takes writes, and follows the primary no more). */
    promote: () => Promise<void>
  }
}

async function as (account: Account | undefined, command: string, args: string[], cwd: string): Promise<void> {
  await run(join(BIN, command), args, { cwd, ...(account === undefined ? {} : { uid: account.uid, gid: account.gid }) })
}

function cluster (account: Account | undefined, folder: string, dataDir: string, port: number): Cluster {
  const ctl = (args: string[]) => as(account, 'pg_ctl', ['-D', dataDir, '-w', '-t', '60', ...args], folder)
  return {
    port,
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    start: () => ctl(['-l', `${dataDir}.log`, '-o', [`-p ${port}`, ...FAST].join(' '), 'start']),
    stop: () => ctl(['-m', 'immediate', 'stop'])
  }
}

async function query (url: string, text: string): Promise<pg.QueryResultRow[]> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return (await client.query(text)).rows
  } finally {
    await client.end()
  }
}

/** Starts a primary and a standby of it; both stop and go when the test ends. */
export async function startReplication (t: Test): Promise<Replication> {
  const account = await postgresAccount()
  const folder = await makeThrowawayFolder('users-service-replication-')
  if (account !== undefined) await chown(folder, account.uid, account.gid)
  const primaryDir = join(folder, 'primary')
  const standbyDir = join(folder, 'standby')
  const [primaryPort, standbyPort] = [await freeLoopbackPort(), await freeLoopbackPort()]
  const primary = cluster(account, folder, primaryDir, primaryPort)
  const standby = cluster(account, folder, standbyDir, standbyPort)
  t.teardown(async () => {
    await standby.stop().catch(() => {})
    await primary.stop().catch(() => {})
    await rm(folder, { recursive: true, force: true })
  })

  // initdb's default pg_hba trusts local and loopback connections, replication included.
  await as(account, 'initdb', ['-D', primaryDir, '-U', 'postgres', '--auth=trust', '--encoding=UTF8', '--lc-messages=C', '--no-sync'], folder)
  await primary.start()
  await mkdir(standbyDir, { mode: 0o700 })
  if (account !== undefined) await chown(standbyDir, account.uid, account.gid)
  await as(account, 'pg_basebackup', ['-h', '127.0.0.1', '-p', String(primaryPort), '-U', 'postgres', '-D', standbyDir, '-R', '-X', 'stream', '--no-sync'], folder)
  await standby.start()

  const caughtUp = async (): Promise<void> => {
    // The insert position: with synchronous_commit off, a commit may still
    // sit in WAL buffers, past the write position, for up to wal_writer_delay.
    const [row] = await query(primary.url, 'SELECT pg_current_wal_insert_lsn()::text AS lsn')
    await within((async () => {
      for (;;) {
        // Streamed, not only replayed from its own WAL (as after a restart,
        // before the WAL receiver is back): the service reads only from a
        // standby that streams.
        const [replayed] = await query(standby.url, `SELECT coalesce(pg_last_wal_receive_lsn() >= '${String(row?.lsn)}'::pg_lsn
          AND pg_last_wal_replay_lsn() >= '${String(row?.lsn)}'::pg_lsn, false) AS done`)
        if (replayed?.done === true) return
        await sleep(20)
      }
    })(), 20_000, 'the standby to catch up')
  }
  await caughtUp()
  return {
    primary,
    standby: {
      ...standby,
      pauseReplay: async () => { await query(standby.url, 'SELECT pg_wal_replay_pause()') },
      resumeReplay: async () => { await query(standby.url, 'SELECT pg_wal_replay_resume()') },
      caughtUp,
      promote: () => as(account, 'pg_ctl', ['-D', standbyDir, '-w', '-t', '60', 'promote'], folder)
    }
  }
}
