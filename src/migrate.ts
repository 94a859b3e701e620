// `npm run migrate`: applies pending migrations to MIGRATIONS_DATABASE_URL,
// else DATABASE_URL (or, in development without either, to the embedded
// PostgreSQL) and exits, 0 on
// success, 1 with the reason. The step a CI pipeline or a Kubernetes Job
// runs before the new version starts.
import { ConfigError, loadConfig, type Config } from './config.js'
import { resolveDatabase } from './db/database-url.js'
import { EmbeddedDatabaseError } from './db/embedded.js'
import { runMigrations } from './db/migrations.js'
import { createLogger } from './logger.js'
import { migrateOptions } from './startup.js'

try {
  const config = requireDirectUrl(loadConfig())
  const database = await resolveDatabase(config, createLogger(config))
  try {
    const { applied } = await runMigrations(migrateOptions(config, database.url))
    console.log(applied.length === 0
      ? 'migrations: the database is up to date'
      : `migrations: applied ${applied.join(', ')}`)
  } finally {
    await database.stop()
  }
} catch (error) {
  const known = error instanceof ConfigError || error instanceof EmbeddedDatabaseError
  console.error(known ? (error as Error).message : `migrations failed: ${(error as Error).message}`)
  process.exitCode = 1
}

/** Behind a transaction pooler, the migration lock needs a direct connection (config.ts says why). */
function requireDirectUrl (config: Config): Config {
  if (config.database.pooler === 'transaction' && config.migrationsDatabaseUrl === undefined) {
    throw new ConfigError('MIGRATIONS_DATABASE_URL is required when DATABASE_POOLER=transaction: ' +
      'set it to a URL that reaches PostgreSQL directly (migrations take a session lock a transaction pooler cannot keep)')
  }
  return config
}
