// `npm run migrate`: applies pending migrations to DATABASE_URL and exits,
// 0 on success, 1 with the reason. The step a CI pipeline or a Kubernetes
// Job runs before the new version starts.
import { ConfigError, loadConfig } from './config.js'
import { runMigrations } from './db/migrations.js'

try {
  const config = loadConfig()
  const { applied } = await runMigrations({
    connectionString: config.databaseUrl,
    timeoutMs: config.migrationsTimeoutMs,
    connectTimeoutMs: config.database.connectTimeoutMs
  })
  console.log(applied.length === 0
    ? 'migrations: the database is up to date'
    : `migrations: applied ${applied.join(', ')}`)
} catch (error) {
  const reason = error instanceof ConfigError ? error.message : `migrations failed: ${(error as Error).message}`
  console.error(reason)
  process.exitCode = 1
}
