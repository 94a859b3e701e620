import t from 'tap'
import { ConfigError, loadConfig } from '../src/config.js'
import { usableCpus } from '../src/cpus.js'

const url = 'postgres://app:s3cret@db.internal:5432/users'

t.test('defaults fill everything but DATABASE_URL', async (t) => {
  const config = loadConfig({ DATABASE_URL: url })
  t.equal(config.databaseUrl, url)
  t.equal(config.host, '0.0.0.0')
  t.equal(config.port, 3000)
  t.equal(config.logLevel, 'info')
  t.equal(config.logPretty, false)
  t.equal(config.migrateOnStart, true)
  t.equal(config.database.poolMax, 10)
  t.ok(config.database.connectTimeoutMs > 0, 'connection waits are bounded')
  t.ok(config.database.statementTimeoutMs > 0, 'statements are bounded')
})

t.test('without DATABASE_URL the embedded PostgreSQL is used, in a folder of its own choosing unless told', async (t) => {
  const config = loadConfig({})
  t.equal(config.databaseUrl, undefined)
  t.equal(config.embeddedPostgresDir, undefined, 'src/db/embedded.ts chooses (the project\'s .data/postgres when it can)')
  t.equal(config.production, false)
  t.equal(loadConfig({ NODE_ENV: 'production' }).production, true)
  t.equal(loadConfig({ EMBEDDED_POSTGRES_DIR: '/tmp/pg' }).embeddedPostgresDir, '/tmp/pg')
})

t.test('values are read from text', async (t) => {
  const config = loadConfig({
    DATABASE_URL: url,
    HOST: '127.0.0.1',
    PORT: '8080',
    LOG_LEVEL: 'debug',
    DATABASE_POOL_MAX: '4',
    MIGRATE_ON_START: 'false',
    SHUTDOWN_GRACE_MS: '2500'
  })
  t.equal(config.host, '127.0.0.1')
  t.equal(config.port, 8080)
  t.equal(config.logLevel, 'debug')
  t.equal(config.database.poolMax, 4)
  t.equal(config.migrateOnStart, false)
  t.equal(config.shutdownGraceMs, 2500)
})

t.test('WEB_CONCURRENCY is a number of processes, or auto for one per usable CPU', async (t) => {
  t.equal(loadConfig({ DATABASE_URL: url }).webConcurrency, 1, 'one process unless told')
  t.equal(loadConfig({ DATABASE_URL: url, WEB_CONCURRENCY: '3' }).webConcurrency, 3)
  t.equal(loadConfig({ DATABASE_URL: url, WEB_CONCURRENCY: 'auto' }).webConcurrency, usableCpus())
})

t.test('HOST takes IP addresses and host names', async (t) => {
  for (const host of ['0.0.0.0', '127.0.0.1', '::', '::1', 'fe80::1%lo', 'localhost', 'api.internal', 'my_service', 'xn--bcher-kva.example.']) {
    t.equal(loadConfig({ DATABASE_URL: url, HOST: host }).host, host, host)
  }
})

t.test('an empty variable counts as unset', async (t) => {
  t.equal(loadConfig({ DATABASE_URL: url, PORT: '' }).port, 3000)
})

t.test('a missing or bad value is one line naming the variable and what it expects', async (t) => {
  const cases: Array<[NodeJS.ProcessEnv, RegExp]> = [
    [{ DATABASE_URL: 'mysql://root@localhost/db' }, /^DATABASE_URL must be a PostgreSQL URL/],
    [{ DATABASE_URL: url, PORT: 'abc' }, /^PORT must be an integer from 0 to 65535 \(got "abc"\)$/],
    [{ DATABASE_URL: url, PORT: '70000' }, /^PORT must be an integer from 0 to 65535/],
    [{ DATABASE_URL: url, PORT: '80.5' }, /^PORT must be an integer/],
    [{ DATABASE_URL: url, LOG_LEVEL: 'loud' }, /^LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent/],
    [{ DATABASE_URL: url, MIGRATE_ON_START: 'maybe' }, /^MIGRATE_ON_START must be true or false/],
    [{ DATABASE_URL: url, DATABASE_POOL_MAX: '0' }, /^DATABASE_POOL_MAX must be an integer from 1/],
    [{ DATABASE_URL: 'postgres://app:pa/ss@127.0.0.1:5432/db' }, /^DATABASE_URL must be a PostgreSQL URL .*does not parse as a URL \(percent-encode/],
    [{ DATABASE_URL: 'postgres://app@127.0.0.1:99999/db' }, /^DATABASE_URL must be .*does not parse as a URL/],
    [{ DATABASE_URL: url, DATABASE_QUEUE_MAX: '-1' }, /^DATABASE_QUEUE_MAX must be an integer from 0/],
    [{ DATABASE_URL: url, EVENT_LOOP_DELAY_MAX_MS: 'fast' }, /^EVENT_LOOP_DELAY_MAX_MS must be an integer from 0/],
    // A minus sign is no part of any valid value: "-0" is not 0.
    [{ DATABASE_URL: url, PORT: '-0' }, /^PORT must be an integer from 0 to 65535 \(got "-0"\)$/],
    [{ DATABASE_URL: url, WEB_CONCURRENCY: 'many' }, /^WEB_CONCURRENCY must be an integer from 1 to 64, or auto .* \(got "many"\)$/],
    [{ DATABASE_URL: url, WEB_CONCURRENCY: '0' }, /^WEB_CONCURRENCY must be an integer from 1 to 64, or auto/],
    [{ DATABASE_URL: url, HOST: 'not a host!' }, /^HOST must be a host name or IP address to listen on \(got "not a host!"\)$/],
    [{ DATABASE_URL: url, HOST: 'http://example.com' }, /^HOST must be a host name or IP address/],
    [{ DATABASE_URL: url, HOST: '[::1]' }, /^HOST must be a host name or IP address/],
    [{ DATABASE_URL: url, HOST: `${'a'.repeat(64)}.example` }, /^HOST must be a host name or IP address/]
  ]
  for (const [env, expected] of cases) {
    t.throws(() => loadConfig(env), ConfigError)
    try {
      loadConfig(env)
    } catch (error) {
      const message = (error as Error).message
      t.match(message, expected, JSON.stringify(env))
      t.notMatch(message, /\n/, 'one line')
    }
  }
})

t.test('the database password is never echoed', async (t) => {
  try {
    loadConfig({ DATABASE_URL: 'mysql://app:hunter2@db/users' })
    t.fail('should have thrown')
  } catch (error) {
    t.notMatch((error as Error).message, /hunter2/)
  }
  try {
    loadConfig({ DATABASE_URL: 'postgres://app:hunter2/x@db/users' })
    t.fail('should have thrown')
  } catch (error) {
    t.notMatch((error as Error).message, /hunter2/, 'nor when the URL does not parse')
  }
})
