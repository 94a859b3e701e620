import t from 'tap'
import { generateKeyPairSync } from 'node:crypto'
import { checkServingConfig, ConfigError, loadConfig } from '../src/config.js'
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
    [{ DATABASE_URL: url, HOST: `${'a'.repeat(64)}.example` }, /^HOST must be a host name or IP address/],
    [{ DATABASE_URL: url, DATABASE_POOLER: 'session' }, /^DATABASE_POOLER must be none or transaction \(got "session"\)$/],
    [{ DATABASE_URL: url, DATABASE_POOLER: 'transaction' }, /^MIGRATIONS_DATABASE_URL is required when DATABASE_POOLER=transaction and MIGRATE_ON_START=true/],
    [{ DATABASE_URL: url, MIGRATIONS_DATABASE_URL: 'mysql://db/users' }, /^MIGRATIONS_DATABASE_URL must be a PostgreSQL URL/],
    [{ DATABASE_URL: url, MIGRATIONS_DATABASE_URL: 'postgres://app:pa/ss@db/users' }, /^MIGRATIONS_DATABASE_URL must be .*does not parse as a URL/],
    [{ DATABASE_URL: url, DATABASE_READ_URL: 'postgres://r1/users,mysql://r2/users' }, /^DATABASE_READ_URL must be one or more PostgreSQL URLs, comma-separated$/],
    [{ DATABASE_URL: url, DATABASE_READ_URL: 'postgres://r1/users,postgres://app@r2:99999/users' }, /^DATABASE_READ_URL must be .*does not parse as a URL/],
    [{ DATABASE_URL: url, DATABASE_READ_MAX_LAG_MS: 'soon' }, /^DATABASE_READ_MAX_LAG_MS must be an integer from 0/]
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

t.test('a pooler, a direct URL for migrations, and read replicas', async (t) => {
  const plain = loadConfig({ DATABASE_URL: url })
  t.equal(plain.database.pooler, 'none', 'no pooler unless told')
  t.equal(plain.migrationsDatabaseUrl, undefined, 'migrations on DATABASE_URL unless told')
  t.strictSame(plain.database.readUrls, [], 'no replicas unless told')
  t.equal(plain.database.readMaxLagMs, 1_000)

  const direct = 'postgres://owner@db.internal:5432/users'
  const pooled = loadConfig({ DATABASE_URL: 'postgres://app@pgbouncer:6432/users', DATABASE_POOLER: 'transaction', MIGRATIONS_DATABASE_URL: direct })
  t.equal(pooled.database.pooler, 'transaction')
  t.equal(pooled.database.poolerKeepsPreparedStatements, false, 'statements unnamed unless the pooler keeps them')
  t.equal(pooled.migrationsDatabaseUrl, direct)
  t.equal(loadConfig({ DATABASE_URL: url, DATABASE_POOLER: 'transaction', MIGRATE_ON_START: 'false' }).database.pooler, 'transaction',
    'without migrate-on-start, no direct URL is needed')

  const replicas = loadConfig({ DATABASE_URL: url, DATABASE_READ_URL: 'postgres://app@r1/users,postgres://app@r2:5433/users', DATABASE_READ_MAX_LAG_MS: '250' })
  t.strictSame(replicas.database.readUrls, ['postgres://app@r1/users', 'postgres://app@r2:5433/users'])
  t.equal(replicas.database.readMaxLagMs, 250)
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

t.test('authentication: off in development when nothing is set, on with a key source, issuer and audience', async (t) => {
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const pem = publicKey.export({ type: 'spki', format: 'pem' }).toString()
  t.same(loadConfig({ DATABASE_URL: url }).auth, { mode: 'none', explicit: false })
  t.same(loadConfig({ DATABASE_URL: url, AUTH_MODE: 'none', AUTH_ISSUER: 'x' }).auth, { mode: 'none', explicit: true }, 'AUTH_MODE=none wins')
  const jwks = { AUTH_JWKS_URL: 'https://issuer.example/jwks', AUTH_ISSUER: 'https://issuer.example', AUTH_AUDIENCE: 'users' }
  t.same(loadConfig({ DATABASE_URL: url, ...jwks }).auth,
    { mode: 'jwt', keys: { jwksUrl: 'https://issuer.example/jwks' }, issuer: 'https://issuer.example', audience: 'users' })
  const key = { AUTH_PUBLIC_KEY: pem.replaceAll('\n', '\\n'), AUTH_ISSUER: 'i', AUTH_AUDIENCE: 'a' }
  t.same(loadConfig({ DATABASE_URL: url, ...key }).auth, { mode: 'jwt', keys: { publicKey: pem.trim() }, issuer: 'i', audience: 'a' },
    'a PEM key with \\n escapes, as one-line env files hold it')
})

t.test('production needs a key source or AUTH_MODE=none to serve, but not to migrate', async (t) => {
  const production = { NODE_ENV: 'production', DATABASE_URL: url }
  t.doesNotThrow(() => loadConfig(production), 'npm run migrate reads the same settings and needs no issuer')
  t.throws(() => checkServingConfig(loadConfig(production)),
    new ConfigError('AUTH_JWKS_URL or AUTH_PUBLIC_KEY (with AUTH_ISSUER and AUTH_AUDIENCE) is required when NODE_ENV=production; ' +
      'set AUTH_MODE=none to serve without authentication'))
  t.doesNotThrow(() => checkServingConfig(loadConfig({ ...production, AUTH_MODE: 'none' })))
  t.doesNotThrow(() => checkServingConfig(loadConfig({ ...production, AUTH_JWKS_URL: 'https://i/jwks', AUTH_ISSUER: 'i', AUTH_AUDIENCE: 'a' })))
  t.doesNotThrow(() => checkServingConfig(loadConfig({ DATABASE_URL: url })), 'development runs open')
})

t.test('a bad authentication or rate-limit setting is one line naming the variable', async (t) => {
  const { publicKey: rsa } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const { publicKey: p384 } = generateKeyPairSync('ec', { namedCurve: 'P-384' })
  const { privateKey } = generateKeyPairSync('ed25519')
  const full = { AUTH_ISSUER: 'i', AUTH_AUDIENCE: 'a' }
  const cases: Array<[NodeJS.ProcessEnv, RegExp]> = [
    [{ AUTH_MODE: 'off' }, /^AUTH_MODE must be jwt or none \(got "off"\)$/],
    [{ AUTH_MODE: 'jwt' }, /^AUTH_JWKS_URL or AUTH_PUBLIC_KEY is required/],
    [{ AUTH_AUDIENCE: 'a' }, /^AUTH_JWKS_URL or AUTH_PUBLIC_KEY is required/],
    [{ AUTH_JWKS_URL: 'ftp://issuer/jwks', ...full }, /^AUTH_JWKS_URL must be an http\(s\) URL/],
    [{ AUTH_JWKS_URL: 'https://issuer:99999/jwks', ...full }, /^AUTH_JWKS_URL must be an http\(s\) URL/],
    [{ AUTH_JWKS_URL: 'https://issuer/jwks', AUTH_AUDIENCE: 'a' }, /^AUTH_ISSUER is required/],
    [{ AUTH_JWKS_URL: 'https://issuer/jwks', AUTH_ISSUER: 'i' }, /^AUTH_AUDIENCE is required/],
    [{ AUTH_JWKS_URL: 'https://issuer/jwks', AUTH_PUBLIC_KEY: rsa.export({ type: 'spki', format: 'pem' }).toString(), ...full },
      /^AUTH_JWKS_URL and AUTH_PUBLIC_KEY are both set/],
    [{ AUTH_PUBLIC_KEY: 'not a key', ...full }, /^AUTH_PUBLIC_KEY must be one PEM public key/],
    [{ AUTH_PUBLIC_KEY: p384.export({ type: 'spki', format: 'pem' }).toString(), ...full }, /^AUTH_PUBLIC_KEY must be .*EC P-256/],
    [{ AUTH_PUBLIC_KEY: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), ...full }, /^AUTH_PUBLIC_KEY must be one PEM public key/],
    [{ RATE_LIMIT_MAX: '0' }, /^RATE_LIMIT_MAX must be an integer from 1/],
    [{ RATE_LIMIT_MAX: '10', RATE_LIMIT_WINDOW_MS: '10' }, /^RATE_LIMIT_WINDOW_MS must be an integer from 1000/],
    [{ REDIS_URL: 'http://redis:6379' }, /^REDIS_URL must be a Redis URL/],
    [{ TRUST_PROXY: 'yes' }, /^TRUST_PROXY must be true, false, a number of proxy hops/]
  ]
  for (const [env, expected] of cases) {
    try {
      loadConfig({ DATABASE_URL: url, ...env })
      t.fail(`should have thrown: ${JSON.stringify(env)}`)
    } catch (error) {
      t.type(error, ConfigError)
      t.match((error as Error).message, expected, JSON.stringify(env))
      t.notMatch((error as Error).message, /\n/, 'one line')
    }
  }
})

t.test('rate limits are off unless RATE_LIMIT_MAX is set; TRUST_PROXY reads as Fastify takes it', async (t) => {
  t.equal(loadConfig({ DATABASE_URL: url }).rateLimit, undefined)
  t.same(loadConfig({ DATABASE_URL: url, RATE_LIMIT_MAX: '100' }).rateLimit, { max: 100, windowMs: 60_000, redisUrl: undefined, redisKeyPrefix: 'users-service:rate-limit:' })
  t.same(loadConfig({ DATABASE_URL: url, RATE_LIMIT_MAX: '5', RATE_LIMIT_WINDOW_MS: '1000', REDIS_URL: 'redis://r:6379' }).rateLimit,
    { max: 5, windowMs: 1000, redisUrl: 'redis://r:6379', redisKeyPrefix: 'users-service:rate-limit:' })
  t.equal(loadConfig({ DATABASE_URL: url }).trustProxy, false)
  t.equal(loadConfig({ DATABASE_URL: url, TRUST_PROXY: 'true' }).trustProxy, true)
  t.same(loadConfig({ DATABASE_URL: url, TRUST_PROXY: '10.0.0.0/8, 127.0.0.1' }).trustProxy, ['10.0.0.0/8', '127.0.0.1'])
  const hops = loadConfig({ DATABASE_URL: url, TRUST_PROXY: '1' }).trustProxy as (address: string, hop: number) => boolean
  t.same([hops('10.0.0.1', 0), hops('10.0.0.2', 1)], [true, false], 'one hop: the nearest proxy is trusted, no further')
})

t.test('events are off without EVENTS_AMQP_URL, and on with it, with their defaults', async (t) => {
  t.equal(loadConfig({ DATABASE_URL: url }).events, undefined, 'off unless a broker is named')
  t.same(loadConfig({ DATABASE_URL: url, EVENTS_AMQP_URL: 'amqp://guest:guest@127.0.0.1:5672' }).events, {
    amqpUrl: 'amqp://guest:guest@127.0.0.1:5672',
    exchange: 'users',
    source: '/users-service',
    retentionSeconds: 86_400,
    pollIntervalMs: 500
  })
  const events = loadConfig({
    DATABASE_URL: url,
    EVENTS_AMQP_URL: 'amqps://app:pw@mq.internal/prod',
    EVENTS_EXCHANGE: 'accounts',
    EVENTS_SOURCE: 'https://users.example/',
    EVENTS_RETENTION_SECONDS: '3600',
    EVENTS_POLL_INTERVAL_MS: '250'
  }).events
  t.match(events, { exchange: 'accounts', source: 'https://users.example/', retentionSeconds: 3600, pollIntervalMs: 250 })
})

t.test('a bad events setting stops start-up naming it, never echoing the broker password', async (t) => {
  const cases: Array<[NodeJS.ProcessEnv, RegExp]> = [
    [{ EVENTS_AMQP_URL: 'http://guest:hunter2@127.0.0.1:5672' }, /^EVENTS_AMQP_URL must be an AMQP URL such as amqp:\/\/user:password@host:5672$/],
    [{ EVENTS_AMQP_URL: 'amqp://guest:hunter2@127.0.0.1:99999' }, /^EVENTS_AMQP_URL must be an AMQP URL .*does not parse as a URL/],
    [{ EVENTS_AMQP_URL: 'amqp://127.0.0.1', EVENTS_EXCHANGE: 'x'.repeat(256) }, /^EVENTS_EXCHANGE must be an exchange name of 1 to 255 characters/],
    [{ EVENTS_AMQP_URL: 'amqp://127.0.0.1', EVENTS_POLL_INTERVAL_MS: '0' }, /^EVENTS_POLL_INTERVAL_MS must be an integer from 10/],
    [{ EVENTS_AMQP_URL: 'amqp://127.0.0.1', EVENTS_RETENTION_SECONDS: 'forever' }, /^EVENTS_RETENTION_SECONDS must be an integer from 0/]
  ]
  for (const [env, expected] of cases) {
    try {
      loadConfig({ DATABASE_URL: url, ...env })
      t.fail(`should have thrown for ${JSON.stringify(env)}`)
    } catch (error) {
      t.type(error, ConfigError)
      t.match((error as Error).message, expected)
      t.notMatch((error as Error).message, /hunter2/)
    }
  }
})
