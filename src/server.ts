// The service's entry point: configuration, migrations, listen, and a
// graceful shutdown on SIGTERM or SIGINT.
import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.js'
import { ConfigError, loadConfig, type Config } from './config.js'
import { runMigrations } from './db/migrations.js'

let config: Config
try {
  config = loadConfig()
} catch (error) {
  if (!(error instanceof ConfigError)) throw error
  console.error(`invalid configuration: ${error.message}`)
  process.exit(1)
}

const app = await buildApp(config)

if (config.migrateOnStart) {
  try {
    const { applied } = await runMigrations({
      connectionString: config.databaseUrl,
      timeoutMs: config.migrationsTimeoutMs,
      connectTimeoutMs: config.database.connectTimeoutMs
    })
    app.log.info({ applied }, applied.length === 0 ? 'migrations: up to date' : 'migrations applied')
  } catch (error) {
    app.log.fatal({ err: error }, `migrations failed, not starting: ${(error as Error).message}`)
    await app.close()
    process.exit(1)
  }
}

// Readiness turns 503 first (the preClose hook), then in-flight requests
// finish, the pool closes, and the process exits 0; past the grace, exit 1.
closeWithGrace({ delay: config.shutdownGraceMs, logger: app.log }, async ({ signal, err }) => {
  if (err !== undefined) app.log.error({ err }, 'shutting down after an unexpected error')
  else app.log.info({ signal }, 'shutting down')
  await app.close()
})

try {
  await app.listen({ host: config.host, port: config.port })
} catch (error) {
  app.log.fatal({ err: error }, `cannot listen on ${config.host}:${config.port}`)
  process.exit(1)
}
