import { readdir } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { migrate } from 'postgres-migrations'
import { setSessionDefaults, type SessionTimeouts } from './pooler.js'

/** The folder of numbered SQL migrations, beside `src/` and `dist/` alike. */
export const migrationsDir = fileURLToPath(new URL('../../migrations/', import.meta.url))

export interface MigrationResult {
  applied: string[]
}

export interface MigrateOptions {
  connectionString: string
  directory?: string
  timeoutMs: number
  connectTimeoutMs: number
  log?: (message: string) => void
  /**
   * Behind a transaction pooler: the timeouts the service's role gets as
   * its defaults in this database (src/db/pooler.ts), since its sessions
   * cannot ask for them at start-up. `role`: DATABASE_URL's user.
   */
  sessionDefaults?: SessionTimeouts & { role: string | undefined }
}

/**
 * Applies every pending migration on one dedicated connection.
 *
 * postgres-migrations holds a session-level advisory lock for the whole run
 * (so two instances migrating at once take turns) and waits for that lock
 * without limit; the timeout here ends the connection so a stuck run fails
 * instead of hanging a deploy.
 */
export async function runMigrations (options: MigrateOptions): Promise<MigrationResult> {
  const client = new pg.Client({
    connectionString: options.connectionString,
    connectionTimeoutMillis: options.connectTimeoutMs,
    application_name: 'users-service-migrate'
  })
  let timedOut = false
  // A dropped connection is reported through the pending query; without a
  // listener the 'error' event would crash the process instead.
  client.on('error', () => {})
  const timer = setTimeout(() => {
    timedOut = true
    client.end().catch(() => {})
  }, options.timeoutMs)

  try {
    await client.connect()
    if (options.sessionDefaults !== undefined) {
      // The role may be this connection's own: a migration is not bound by
      // the service's statement timeout, whatever the role's defaults.
      await client.query('SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0')
    }
    const done = await migrate({ client }, options.directory ?? migrationsDir, {
      logger: options.log
    })
    if (options.sessionDefaults !== undefined) await setSessionDefaults(client, options.sessionDefaults.role, options.sessionDefaults)
    return { applied: done.map((migration) => migration.fileName) }
  } catch (error) {
    if (timedOut) {
      throw new Error(`migrations did not finish within ${options.timeoutMs} ms (MIGRATIONS_TIMEOUT_MS); another instance may hold the migration lock`)
    }
    throw error
  } finally {
    clearTimeout(timer)
    await client.end().catch(() => {})
  }
}

/** The highest migration id in the folder: what "fully migrated" means. */
export async function latestMigrationId (directory = migrationsDir): Promise<number> {
  let latest = 0
  for (const file of await readdir(directory)) {
    const match = /^(\d+)[-_].*\.sql$/.exec(file)
    if (match?.[1] !== undefined) latest = Math.max(latest, Number(match[1]))
  }
  return latest
}
