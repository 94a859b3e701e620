// `npm run migrate`: applies pending migrations to DATABASE_URL (or, in
// development without one, to the embedded PostgreSQL) and exits, 0 on
// success, 1 with the reason. The step a CI pipeline or a Kubernetes Job
// runs before the new version starts.
import { ConfigError, loadConfig } from './config.js'
import { resolveDatabase } from './db/database-url.js'
import { EmbeddedDatabaseError } from './db/embedded.js'
import { runMigrations } from './db/migrations.js'
import { createLogger } from './logger.js'

try {
  const config = loadConfig()
  const database = await resolveDatabase(config, createLogger(config))
  try {
    const { applied } = await runMigrations({
      connectionString: database.url,
      timeoutMs: config.migrationsTimeoutMs,
      connectTimeoutMs: config.database.connectTimeoutMs
    })
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
