// `npm test`: one PostgreSQL server for the whole run and one migrated
// template database; each test file then copies the template (CREATE
// DATABASE … TEMPLATE) instead of migrating a database of its own.
//
// The server is DATABASE_URL's when it is set, else a throwaway embedded
// PostgreSQL (fsync off) that lives exactly as long as the run.
// Arguments go to tap: `npm test -- test/users.test.ts`.
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { rm } from 'node:fs/promises'
import { join } from 'node:path'
import pg from 'pg'
import { makeThrowawayFolder, startEmbeddedPostgres } from '../dist/db/embedded.js'
import { runMigrations } from '../dist/db/migrations.js'
import { ensurePrerequisites } from './prerequisites.js'

async function admin (url, sql) {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    await client.query(sql)
  } finally {
    await client.end()
  }
}

function withDatabase (url, database) {
  const copy = new URL(url)
  copy.pathname = `/${database}`
  return copy.toString()
}

// Redis, RabbitMQ, PgBouncer and kubectl, started or installed when they can be.
await ensurePrerequisites()

let serverUrl = process.env.DATABASE_URL
let embedded
let scratch
if (serverUrl === undefined || serverUrl === '') {
  const started = Date.now()
  // Where PostgreSQL's user can reach it: run as root, PostgreSQL runs as
  // the user postgres, and TMPDIR (like the project) may be private to root.
  scratch = await makeThrowawayFolder('users-service-test-')
  embedded = await startEmbeddedPostgres({ dataDir: join(scratch, 'data'), persistent: false, fast: true })
  serverUrl = embedded.url
  console.log(`# npm test: no DATABASE_URL, so a throwaway embedded PostgreSQL on port ${embedded.port} in ${scratch} (started in ${Date.now() - started} ms)`)
} else {
  console.log(`# npm test: databases on DATABASE_URL's server (${new URL(serverUrl).host})`)
}

const template = `users_template_${randomBytes(4).toString('hex')}`
let exitCode = 1
try {
  await admin(serverUrl, `CREATE DATABASE ${template}`)
  await runMigrations({ connectionString: withDatabase(serverUrl, template), timeoutMs: 60_000, connectTimeoutMs: 5_000 })

  const tap = spawn('tap', process.argv.slice(2), {
    stdio: 'inherit',
    env: { ...process.env, DATABASE_URL: serverUrl, TEST_TEMPLATE_DATABASE: template }
  })
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => tap.kill(signal))
  const [code, signal] = await once(tap, 'exit')
  exitCode = code ?? (signal === null ? 1 : 128)
} finally {
  await admin(serverUrl, `DROP DATABASE IF EXISTS ${template} WITH (FORCE)`).catch((error) => {
    console.error(`# could not drop ${template}: ${error.message}`)
  })
  await embedded?.stop()
  if (scratch !== undefined) await rm(scratch, { recursive: true, force: true })
}
process.exit(exitCode)
