// Start-up steps shared by a single process and a cluster's primary.
import type { Logger } from 'pino'
import { ConfigError, type Config } from './config.js'
import { resolveDatabase, type Database } from './db/database-url.js'
import { EmbeddedDatabaseError } from './db/embedded.js'
import { runMigrations } from './db/migrations.js'

/** The database to use, or exit 1 with one line saying why there is none. */
export async function openDatabaseOrExit (config: Config, log: Logger): Promise<Database> {
  try {
    return await resolveDatabase(config, log)
  } catch (error) {
    if (!(error instanceof ConfigError) && !(error instanceof EmbeddedDatabaseError)) throw error
    console.error(`cannot start: ${error.message}`)
    process.exit(1)
  }
}

/** Applies pending migrations; false (after logging why) when they failed. */
export async function migrate (config: Config, databaseUrl: string, log: Logger): Promise<boolean> {
  try {
    const { applied } = await runMigrations({
      connectionString: databaseUrl,
      timeoutMs: config.migrationsTimeoutMs,
      connectTimeoutMs: config.database.connectTimeoutMs
    })
    log.info({ applied }, applied.length === 0 ? 'migrations: up to date' : 'migrations applied')
    return true
  } catch (error) {
    log.fatal({ err: error }, `migrations failed, not starting: ${(error as Error).message}`)
    return false
  }
}
