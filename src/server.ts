// The service's entry point: configuration, database, migrations, listen,
// and a graceful shutdown on SIGTERM or SIGINT.
import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.js'
import { ConfigError, loadConfig, type Config } from './config.js'
import { resolveDatabase, type Database } from './db/database-url.js'
import { EmbeddedDatabaseError } from './db/embedded.js'
import { runMigrations } from './db/migrations.js'
import { createLogger } from './logger.js'

let config: Config
try {
  config = loadConfig()
} catch (error) {
  if (!(error instanceof ConfigError)) throw error
  console.error(`invalid configuration: ${error.message}`)
  process.exit(1)
}

const log = createLogger(config)

let database: Database
try {
  database = await resolveDatabase(config, log)
} catch (error) {
  if (!(error instanceof ConfigError) && !(error instanceof EmbeddedDatabaseError)) throw error
  console.error(`cannot start: ${error.message}`)
  process.exit(1)
}

const app = await buildApp({ ...config, databaseUrl: database.url }, { loggerInstance: log })

async function stop (exitCode: number): Promise<never> {
  await app.close()
  await database.stop()
  process.exit(exitCode)
}

if (config.migrateOnStart) {
  try {
    const { applied } = await runMigrations({
      connectionString: database.url,
      timeoutMs: config.migrationsTimeoutMs,
      connectTimeoutMs: config.database.connectTimeoutMs
    })
    app.log.info({ applied }, applied.length === 0 ? 'migrations: up to date' : 'migrations applied')
  } catch (error) {
    app.log.fatal({ err: error }, `migrations failed, not starting: ${(error as Error).message}`)
    await stop(1)
  }
}

// Readiness turns 503 first (the preClose hook), then in-flight requests
// finish, the pool closes, an embedded database stops, and the process
// exits 0; past the grace, exit 1.
closeWithGrace({ delay: config.shutdownGraceMs, logger: app.log }, async ({ signal, err }) => {
  if (err !== undefined) app.log.error({ err }, 'shutting down after an unexpected error')
  else app.log.info({ signal }, 'shutting down')
  await app.close()
  await database.stop()
})

try {
  await app.listen({ host: config.host, port: config.port })
} catch (error) {
  app.log.fatal({ err: error }, `cannot listen on ${config.host}:${config.port}`)
  await stop(1)
}
