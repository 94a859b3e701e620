// `npm run migrate` (node dist/migrate.js) as a deploy step runs it, and
// runMigrations itself: a failed migration changes nothing, a held lock
// fails within the timeout, and the latest id is read from the folder.
import { copyFile, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import t, { type Test } from 'tap'
import { latestMigrationId, migrationsDir, runMigrations } from '../src/db/migrations.js'
import { createTestDatabase } from './helper.js'
import { spawnDist, within, type Exit, type Spawned } from './spawn.js'

const UNREACHABLE_DATABASE = 'postgres://postgres@127.0.0.1:1/nothing'
/** postgres-migrations' advisory lock key, held for the whole of a run. */
const MIGRATION_LOCK = '-8525285245963000605'
/** No case may take longer than this, whatever goes wrong (a fresh object: tap writes into it). */
const CASE = () => ({ timeout: 15_000 })

interface Run extends Exit {
  stdout: string
  stderr: string
}

async function migrateCli (t: Test, env: Record<string, string>): Promise<Run> {
  const run: Spawned = spawnDist(t, 'migrate.js', env)
  const exit = await run.exitWithin(10_000)
  return { ...exit, stdout: run.stdout(), stderr: run.stderr() }
}

/** Runs one query on a connection of its own. */
async function query<Row extends pg.QueryResultRow> (databaseUrl: string, sql: string): Promise<Row[]> {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  try {
    return (await client.query<Row>(sql)).rows
  } finally {
    await client.end()
  }
}

async function tableExists (databaseUrl: string, table: string): Promise<boolean> {
  const [row] = await query<{ found: boolean }>(databaseUrl, `SELECT to_regclass('public.${table}') IS NOT NULL AS found`)
  return row?.found === true
}

async function appliedMigrations (databaseUrl: string): Promise<Array<{ id: number, name: string }>> {
  return await query(databaseUrl, 'SELECT id, name FROM migrations ORDER BY id')
}

/** The ids of the migrations this build ships (the number each file name starts with). */
async function shippedMigrationIds (): Promise<number[]> {
  const ids: number[] = []
  for (const file of await readdir(migrationsDir)) {
    const id = /^(\d+)[-_].*\.sql$/.exec(file)?.[1]
    if (id !== undefined) ids.push(Number(id))
  }
  return ids
}

t.test('on a fresh database it applies the migrations, and then says it is up to date', CASE(), async (t) => {
  const databaseUrl = await createTestDatabase(t, { migrated: false })

  const first = await migrateCli(t, { DATABASE_URL: databaseUrl })
  t.equal(first.code, 0, 'exits 0')
  t.match(first.stdout, /^migrations: applied .*\b1_create-users\.sql\b/m, 'says which migrations it applied')
  t.equal(first.stderr, '', 'prints nothing on stderr')
  t.ok(await tableExists(databaseUrl, 'users'), 'the users table exists')
  t.ok(await tableExists(databaseUrl, 'migrations'), 'the migrations table exists')

  const second = await migrateCli(t, { DATABASE_URL: databaseUrl })
  t.equal(second.code, 0, 'running it again exits 0')
  t.match(second.stdout, /up to date/, 'and says the database is up to date')
  t.notMatch(second.stdout, /applied/, 'applying nothing')
})

t.test('two runs at once on one fresh database both succeed and apply each migration once', CASE(), async (t) => {
  const databaseUrl = await createTestDatabase(t, { migrated: false })
  const runs = await Promise.all([
    migrateCli(t, { DATABASE_URL: databaseUrl }),
    migrateCli(t, { DATABASE_URL: databaseUrl })
  ])
  t.same(runs.map((run) => run.code), [0, 0], 'both exit 0')
  t.same(runs.map((run) => run.stderr), ['', ''], 'neither prints an error')
  const reported = runs.filter((run) => /1_create-users\.sql/.test(run.stdout))
  t.equal(reported.length, 1, 'one of them reports applying the users migration')

  const recorded = (await appliedMigrations(databaseUrl)).map((row) => row.id)
  // Id 0 is postgres-migrations' own: the creation of the migrations table.
  const shipped = [0, ...(await shippedMigrationIds())].sort((a, b) => a - b)
  t.same(recorded, shipped, 'the migrations table records each migration exactly once')
  t.ok(await tableExists(databaseUrl, 'users'), 'the users table exists')
})

t.test('an unreachable database fails with a non-zero exit that says why', CASE(), async (t) => {
  const run = await migrateCli(t, { DATABASE_URL: UNREACHABLE_DATABASE, DATABASE_CONNECT_TIMEOUT_MS: '1000' })
  t.not(run.code, 0, 'a non-zero exit')
  t.match(run.stderr, /migrations failed/, 'stderr says the migrations failed')
})

t.test('a missing DATABASE_URL in production exits 1 with the configuration line', CASE(), async (t) => {
  const run = await migrateCli(t, { NODE_ENV: 'production' })
  t.equal(run.code, 1, 'exit code 1')
  const lines = run.stderr.split('\n').filter((line) => line !== '')
  t.equal(lines.length, 1, 'one line on stderr')
  t.match(lines[0], /DATABASE_URL is required when NODE_ENV=production/, 'naming the variable')
})

t.test('runMigrations: a failing migration changes nothing, and a fixed one applies later', CASE(), async (t) => {
  const databaseUrl = await createTestDatabase(t, { migrated: false })
  const directory = await mkdtemp(join(tmpdir(), 'users-migrations-'))
  t.teardown(() => rm(directory, { recursive: true, force: true }))
  await copyFile(join(migrationsDir, '1_create-users.sql'), join(directory, '1_create-users.sql'))
  await writeFile(join(directory, '2_broken.sql'), 'CREATE TABLE half_done (id int);\nSELECT * FROM no_such_table;\n')
  const options = { connectionString: databaseUrl, directory, timeoutMs: 10_000, connectTimeoutMs: 5_000 }

  await t.rejects(runMigrations(options), /no_such_table/, 'the run fails, naming the problem')
  t.notOk(await tableExists(databaseUrl, 'half_done'), 'the failing migration left nothing behind')
  t.ok(await tableExists(databaseUrl, 'users'), 'the migration before it stays applied')
  t.same((await appliedMigrations(databaseUrl)).map((row) => row.id), [0, 1], 'migration 1 is recorded, 2 is not')

  await rm(join(directory, '2_broken.sql'))
  await writeFile(join(directory, '2_half-done.sql'), 'CREATE TABLE half_done (id int);\n')
  const { applied } = await runMigrations(options)
  t.same(applied, ['2_half-done.sql'], 'a later run applies the fixed migration only')
  t.ok(await tableExists(databaseUrl, 'half_done'), 'its table exists')
  t.same((await appliedMigrations(databaseUrl)).map((row) => row.id), [0, 1, 2], 'and records it')
})

t.test('runMigrations: a lock held elsewhere fails the run at the timeout', CASE(), async (t) => {
  const databaseUrl = await createTestDatabase(t, { migrated: false })
  const holder = new pg.Client({ connectionString: databaseUrl })
  await holder.connect()
  t.teardown(() => holder.end().catch(() => {}))
  await holder.query(`SELECT pg_advisory_lock(${MIGRATION_LOCK})`)

  const started = Date.now()
  const run = runMigrations({ connectionString: databaseUrl, timeoutMs: 1_500, connectTimeoutMs: 5_000 })
  await t.rejects(within(run, 5_000, 'runMigrations to give up'), /MIGRATIONS_TIMEOUT_MS/,
    'rejects, naming the setting')
  const elapsed = Date.now() - started
  t.ok(elapsed < 3_500, `within about 3 s (took ${elapsed} ms)`)
  t.notOk(await tableExists(databaseUrl, 'users'), 'and applied nothing')
})

t.test('latestMigrationId is the highest number among the migration files', CASE(), async (t) => {
  const ids = await shippedMigrationIds()
  t.ok(ids.length > 0, 'the build ships migrations')
  t.equal(await latestMigrationId(), Math.max(...ids), 'for the shipped migrations')

  // Numbers, not names: 10 comes after 9; and files that are not migrations do not count.
  const directory = await mkdtemp(join(tmpdir(), 'users-migrations-'))
  t.teardown(() => rm(directory, { recursive: true, force: true }))
  for (const file of ['1_a.sql', '9_b.sql', '10_c.sql', '99_notes.txt', 'README.md']) {
    await writeFile(join(directory, file), '')
  }
  t.equal(await latestMigrationId(directory), 10, 'compared as numbers')
})
