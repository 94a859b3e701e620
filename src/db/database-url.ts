import { isAbsolute, relative } from 'node:path'
import type { Logger } from 'pino'
import { ConfigError, type Config } from '../config.js'
import { startEmbeddedPostgres } from './embedded.js'

export interface Database {
  url: string
  /** Stops what was started for this process (the embedded cluster), if anything. */
  stop: () => Promise<void>
}

/**
 * The database to use: DATABASE_URL when set; otherwise, outside
 * production, an embedded PostgreSQL whose data lives in the project.
 */
export async function resolveDatabase (config: Config, log: Logger): Promise<Database> {
  if (config.databaseUrl !== undefined) return { url: config.databaseUrl, stop: async () => {} }
  if (config.production) {
    throw new ConfigError('DATABASE_URL is required when NODE_ENV=production: the embedded PostgreSQL is for development only')
  }
  const embedded = await startEmbeddedPostgres({
    dataDir: config.embeddedPostgresDir,
    persistent: true,
    log: (line) => log.debug({ postgres: line }, 'embedded PostgreSQL'),
    notify: (message) => log.warn(message)
  })
  const inside = relative(process.cwd(), config.embeddedPostgresDir)
  const shown = inside !== '' && !inside.startsWith('..') && !isAbsolute(inside) ? inside : config.embeddedPostgresDir
  log.info(`no DATABASE_URL: using an embedded PostgreSQL on 127.0.0.1:${embedded.port} with its data in ${shown}; ` +
    // No password inside the example URL: the log filter would redact it.
    'set DATABASE_URL=postgres://user@host:5432/database (user:password@ if the server wants one) to use a real server')
  return { url: embedded.url, stop: embedded.stop }
}
