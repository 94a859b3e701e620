// One place that gives each test file a real PostgreSQL database of its own
// and an app built exactly as the server builds it.
import { randomBytes } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import pg from 'pg'
import type { Test } from 'tap'
import { buildApp } from '../src/app.js'
import { loadConfig, type AppConfig } from '../src/config.js'
import { runMigrations } from '../src/db/migrations.js'
import { QUIET_MACHINE_NOT_ASSUMED } from './spawn.js'

/** The server the tests create their databases on. */
export const serverUrl = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

/** `serverUrl` with another database name. */
export function urlFor (database: string): string {
  const url = new URL(serverUrl)
  url.pathname = `/${database}`
  return url.toString()
}

/** Runs SQL as the server's administrator, outside any test database. */
export async function adminQuery (sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl })
  await client.connect()
  try {
    await client.query(sql)
  } finally {
    await client.end()
  }
}

/**
 * Drops a test's database once the connections the test closed are gone:
 * FORCE would otherwise kill a connection still saying goodbye, and its
 * client would report that as an error after the test.
 */
async function dropDatabase (name: string): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl })
  await client.connect()
  try {
    for (let i = 0; i < 100; i++) {
      const { rows } = await client.query('SELECT count(*)::int AS open FROM pg_stat_activity WHERE datname = $1', [name])
      if (rows[0].open === 0) break
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
    await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
  } finally {
    await client.end()
  }
}

/** The migrated template `npm test` prepares once for the whole run (test/run.js). */
const template = process.env.TEST_TEMPLATE_DATABASE

/**
 * Creates a database of the test's own, dropped when the test ends:
 * migrated (a copy of the run's template, when there is one), or with
 * `migrated: false` empty.
 */
export async function createTestDatabase (t: Test, { migrated = true } = {}): Promise<string> {
  const name = `users_test_${randomBytes(6).toString('hex')}`
  const copyTemplate = migrated && template !== undefined
  await adminQuery(copyTemplate ? `CREATE DATABASE ${name} TEMPLATE ${template}` : `CREATE DATABASE ${name}`)
  t.teardown(() => dropDatabase(name))
  const url = urlFor(name)
  if (migrated && !copyTemplate) await runMigrations({ connectionString: url, timeoutMs: 30_000, connectTimeoutMs: 5_000 })
  return url
}

/** The configuration the server would read, for a given database. */
export function testConfig (databaseUrl: string, env: NodeJS.ProcessEnv = {}): AppConfig {
  return { ...loadConfig({ DATABASE_URL: databaseUrl, LOG_LEVEL: 'silent', ...QUIET_MACHINE_NOT_ASSUMED, ...env }), databaseUrl }
}

export interface TestApp {
  app: FastifyInstance
  databaseUrl: string
  /** A connection to the app's database, for looking behind the API. */
  db: pg.Pool
}

/** The real app on a fresh migrated database, closed when the test ends. */
export async function buildTestApp (t: Test, env: NodeJS.ProcessEnv = {}): Promise<TestApp> {
  const databaseUrl = await createTestDatabase(t)
  const app = await buildApp(testConfig(databaseUrl, env), { logger: false })
  const db = new pg.Pool({ connectionString: databaseUrl, max: 2 })
  // Tests cut connections on purpose; an idle one of this observer pool
  // dropping with them is not a failure of the test.
  db.on('error', () => {})
  t.teardown(async () => {
    await app.close()
    await db.end()
  })
  return { app, databaseUrl, db }
}

/** Creates a user through the API and returns the answer's body. */
export async function createUser (app: FastifyInstance, body: Record<string, unknown>): Promise<Record<string, any>> {
  const response = await app.inject({ method: 'POST', url: '/api/users', payload: body })
  if (response.statusCode !== 201) throw new Error(`create failed: ${response.statusCode} ${response.body}`)
  return response.json()
}
