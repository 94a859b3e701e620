// Reads on hot standbys (DATABASE_READ_URL), each used only while its
// replay lag is known to be under DATABASE_READ_MAX_LAG_MS; otherwise, and
// whenever a replica fails, reads go to the primary. Loaded only when
// replicas are configured (plugins/database.ts).
import pg from 'pg'
import type { QueryRunner } from './read-pipeline.js'
import { poolConfig, type Pooler } from './pooler.js'
import type { ReadSource, Readers } from './readers.js'

export interface ReplicaOptions {
  urls: string[]
  maxLagMs: number
  pooler: Pooler
  poolerKeepsPreparedStatements: boolean
  poolMax: number
  connectTimeoutMs: number
  statementTimeoutMs: number
  onError: (error: Error, replica: string) => void
}

// Replay lag: 0 when the standby has replayed all it received (an idle
// primary sends nothing new, and the last replayed commit grows old
// without any lag), else the age of the last transaction it replayed.
// NULL: not streaming (no WAL received), so its lag is unknown.
const LAG_SQL = `SELECT pg_is_in_recovery() AS standby,
  CASE WHEN pg_last_wal_receive_lsn() IS NULL THEN NULL
       WHEN pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0
       ELSE (extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::float8
  END AS "lagMs"`

interface Replica {
  /** host:port/database: no credentials, for logs and metrics. */
  name: string
  pool: pg.Pool
  /** Replay lag at the last check, or undefined when the check failed or it is no standby. */
  lagMs: number | undefined
  checkedAt: number
}

/**
 * Replicas with their lag, checked every quarter of the lag bound (at most
 * every second, at least every 100 ms). A replica is used while its lag at
 * the last check plus the time since stays within the bound: replay cannot
 * fall further behind than the time that passed.
 */
export class ReplicaReaders implements Readers {
  private readonly replicas: Replica[]
  private readonly timer: NodeJS.Timeout
  private turn = 0
  private checking: Promise<void> = Promise.resolve()
  readonly readsBySource: Record<ReadSource, number> = { primary: 0, replica: 0 }

  constructor (private readonly primary: QueryRunner, private readonly options: ReplicaOptions) {
    this.replicas = options.urls.map((url) => {
      const parsed = new URL(url)
      const name = `${parsed.hostname}:${parsed.port === '' ? '5432' : parsed.port}${parsed.pathname}`
      const pool = new pg.Pool(poolConfig(url, options))
      pool.on('error', (error) => options.onError(error, name))
      // A checked-out client's socket error would otherwise end the process.
      pool.on('connect', (client) => client.on('error', () => {}))
      return { name, pool, lagMs: undefined, checkedAt: 0 }
    })
    const interval = Math.min(1_000, Math.max(100, options.maxLagMs / 4))
    this.timer = setInterval(() => { this.checkLag().catch(() => {}) }, interval)
    this.timer.unref()
  }

  /** Checks every replica's lag now (the timer does it too). */
  async checkLag (): Promise<void> {
    this.checking = this.checking.then(() => Promise.all(this.replicas.map(async (replica) => {
      try {
        const { rows } = await replica.pool.query<{ standby: boolean, lagMs: number | null }>(LAG_SQL)
        const row = rows[0]
        // A promoted standby takes writes of its own: never read from it.
        replica.lagMs = row?.standby === true && row.lagMs !== null ? Math.max(0, row.lagMs) : undefined
      } catch (error) {
        // Said once when it stops answering, not at every check.
        if (replica.lagMs !== undefined || replica.checkedAt === 0) this.options.onError(error as Error, replica.name)
        replica.lagMs = undefined
      }
      replica.checkedAt = performance.now()
    })).then(() => {}))
    await this.checking
  }

  async read<T> (read: (db: QueryRunner) => Promise<T>, confirmOnPrimary: (result: T) => boolean): Promise<T> {
    const replica = this.usableReplica()
    if (replica !== undefined) {
      try {
        const result = await read(replica.pool)
        if (!confirmOnPrimary(result)) {
          this.readsBySource.replica++
          return result
        }
      } catch (error) {
        // Down, or a statement cancelled by replay: the primary answers.
        replica.lagMs = undefined
        this.options.onError(error as Error, replica.name)
      }
    }
    this.readsBySource.primary++
    return await read(this.primary)
  }

  /** Each replica's lag in ms at its last check; undefined: not usable (down, not a standby, or not streaming). */
  lags (): Array<{ replica: string, lagMs: number | undefined }> {
    return this.replicas.map(({ name, lagMs }) => ({ replica: name, lagMs }))
  }

  async end (): Promise<void> {
    clearInterval(this.timer)
    await this.checking.catch(() => {})
    await Promise.all(this.replicas.map((replica) => replica.pool.end().catch(() => {})))
  }

  /** The next replica, in turn, whose lag is within the bound. */
  private usableReplica (): Replica | undefined {
    const now = performance.now()
    for (let tried = 0; tried < this.replicas.length; tried++) {
      const replica = this.replicas[this.turn] as Replica
      this.turn = (this.turn + 1) % this.replicas.length
      if (replica.lagMs !== undefined && replica.lagMs + (now - replica.checkedAt) <= this.options.maxLagMs) return replica
    }
    return undefined
  }
}
