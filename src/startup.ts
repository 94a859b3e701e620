// Start-up steps shared by a single process and a cluster's primary.
import { createServer } from 'node:net'
import type { Logger } from 'pino'
import { ConfigError, type Config } from './config.js'
import { resolveDatabase, type Database } from './db/database-url.js'
import { EmbeddedDatabaseError } from './db/embedded.js'
import { runMigrations, type MigrateOptions } from './db/migrations.js'
import { roleOf } from './db/pooler.js'

/**
 * Binds HOST:PORT once and lets go, before anything with side effects (the
 * embedded database, migrations): whether the host is one of this machine's
 * and the port is free is only known by binding. On failure, exit 1 with one
 * line naming the variable. (A port taken in the moment between this and the
 * real listen still fails there, in the same words.)
 */
export async function checkCanListenOrExit (config: Pick<Config, 'host' | 'port'>): Promise<void> {
  const probe = createServer()
  try {
    await new Promise<void>((resolve, reject) => {
      probe.once('error', reject)
      probe.listen({ host: config.host, port: config.port }, resolve)
    })
  } catch (error) {
    console.error(`cannot start: ${whyCannotListen(error, config)}`)
    process.exit(1)
  }
  await new Promise((resolve) => probe.close(resolve))
}

/** Why listening failed, naming the variable to change. */
export function whyCannotListen (error: unknown, { host, port }: Pick<Config, 'host' | 'port'>): string {
  const code = (error as { code?: unknown }).code
  switch (code) {
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EAI_NONAME':
    case 'EAI_FAIL':
      return `HOST ${host} does not resolve to an address (${code})`
    case 'EADDRNOTAVAIL':
      return `HOST ${host} is not an address of this machine`
    case 'EADDRINUSE':
      return `PORT ${port} is already in use on ${host}`
    case 'EACCES':
      return `PORT ${port} needs privileges this process does not have (EACCES)`
    default:
      return `cannot listen on HOST ${host}, PORT ${port}: ${(error as Error).message}`
  }
}

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

/**
 * How migrations run for a service whose database is `databaseUrl`: on
 * MIGRATIONS_DATABASE_URL when set, and behind a transaction pooler setting
 * the service role's timeouts (src/db/pooler.ts).
 */
export function migrateOptions (config: Config, databaseUrl: string): MigrateOptions {
  return {
    connectionString: config.migrationsDatabaseUrl ?? databaseUrl,
    timeoutMs: config.migrationsTimeoutMs,
    connectTimeoutMs: config.database.connectTimeoutMs,
    ...(config.database.pooler === 'transaction'
      ? { sessionDefaults: { role: roleOf(databaseUrl), statementTimeoutMs: config.database.statementTimeoutMs } }
      : {})
  }
}

/** Applies pending migrations; false (after logging why) when they failed. */
export async function migrate (config: Config, databaseUrl: string, log: Logger): Promise<boolean> {
  try {
    const { applied } = await runMigrations(migrateOptions(config, databaseUrl))
    log.info({ applied }, applied.length === 0 ? 'migrations: up to date' : 'migrations applied')
    return true
  } catch (error) {
    log.fatal({ err: error }, `migrations failed, not starting: ${(error as Error).message}`)
    return false
  }
}
