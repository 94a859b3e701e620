import { isAbsolute, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Logger } from 'pino'
import { ConfigError, type Config } from '../config.js'
import { projectDataDir, startEmbeddedPostgres } from './embedded.js'

const projectDir = fileURLToPath(new URL('../..', import.meta.url))

export interface Database {
  url: string
  /** Stops what was started for this process (the embedded cluster), if anything. */
  stop: () => Promise<void>
}

/**
 * The database to use: DATABASE_URL when set; otherwise, outside
 * production, an embedded PostgreSQL whose data lives in EMBEDDED_POSTGRES_DIR,
 * or in the project (or, when the project is out of PostgreSQL's reach, in a
 * folder of its own that the log line names).
 */
export async function resolveDatabase (config: Config, log: Logger): Promise<Database> {
  if (config.databaseUrl !== undefined) return { url: config.databaseUrl, stop: async () => {} }
  if (config.production) {
    throw new ConfigError('DATABASE_URL is required when NODE_ENV=production: the embedded PostgreSQL is for development only')
  }
  const { dataDir, movedBecause } = config.embeddedPostgresDir === undefined
    ? await projectDataDir(projectDir)
    : { dataDir: config.embeddedPostgresDir, movedBecause: undefined }
  const embedded = await startEmbeddedPostgres({
    dataDir,
    persistent: true,
    log: (line) => log.debug({ postgres: line }, 'embedded PostgreSQL'),
    notify: (message) => log.warn(message)
  })
  const inside = relative(process.cwd(), dataDir)
  const shown = inside !== '' && !inside.startsWith('..') && !isAbsolute(inside) ? inside : dataDir
  log.info(`no DATABASE_URL: using an embedded PostgreSQL on 127.0.0.1:${embedded.port} with its data in ${shown}` +
    `${movedBecause === undefined ? '' : ` (${movedBecause})`}; ` +
    // No password inside the example URL: the log filter would redact it.
    'set DATABASE_URL=postgres://user@host:5432/database (user:password@ if the server wants one) to use a real server')
  return { url: embedded.url, stop: embedded.stop }
}
