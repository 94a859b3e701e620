import { createPublicKey } from 'node:crypto'
import { isIP } from 'node:net'
import { Type, type Static, type TSchema } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import { usableCpus } from './cpus.js'

// Each variable's `description` is what start-up prints when the value is
// missing or wrong, so it reads as "VARIABLE must be <description>".
const integer = (minimum: number, maximum: number, fallback: number) =>
  Type.Integer({ minimum, maximum, default: fallback, description: `an integer from ${minimum} to ${maximum}` })

const boolean = (fallback: boolean) =>
  Type.Boolean({ default: fallback, description: 'true or false' })

function otlpUrl (description: string) {
  return Type.String({ pattern: '^https?://[^\\s]+$', description })
}

export const OTLP_PROTOCOLS = ['http/protobuf', 'http/json'] as const
export const TRACE_SAMPLERS = [
  'always_on', 'always_off', 'traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio'
] as const

export const ConfigSchema = Type.Object({
  // Absent: a development start runs an embedded PostgreSQL instead.
  DATABASE_URL: Type.Optional(Type.String({
    pattern: '^postgres(ql)?://',
    description: 'a PostgreSQL URL such as postgres://user:password@host:5432/database',
    secret: true
  })),
  // Where `npm run migrate` and the migrate-on-start step connect. Absent:
  // DATABASE_URL. Behind a transaction pooler it must reach PostgreSQL
  // directly: the migration lock is a session lock a pooler cannot keep.
  MIGRATIONS_DATABASE_URL: Type.Optional(Type.String({
    pattern: '^postgres(ql)?://',
    description: 'a PostgreSQL URL such as postgres://user:password@host:5432/database',
    secret: true
  })),
  // Hot standbys for reads, comma-separated. Absent: every read on DATABASE_URL.
  DATABASE_READ_URL: Type.Optional(Type.String({
    pattern: '^postgres(ql)?://[^,]+(,postgres(ql)?://[^,]+)*$',
    description: 'one or more PostgreSQL URLs, comma-separated',
    secret: true
  })),
  DATABASE_READ_MAX_LAG_MS: integer(0, 3_600_000, 1_000),
  // transaction: DATABASE_URL is a transaction-mode pooler such as PgBouncer
  // (README: "Behind PgBouncer").
  DATABASE_POOLER: Type.Union([Type.Literal('none'), Type.Literal('transaction')], {
    default: 'none', description: 'none or transaction'
  }),
  // PgBouncer >= 1.21 with max_prepared_statements keeps named statements.
  DATABASE_POOLER_PREPARED_STATEMENTS: boolean(false),
  // Absent: .data/postgres in the project (src/db/embedded.ts says where else, and why).
  EMBEDDED_POSTGRES_DIR: Type.Optional(Type.String({
    minLength: 1,
    description: 'a folder for the embedded PostgreSQL\'s data'
  })),
  NODE_ENV: Type.String({ default: 'development', description: 'the environment name' }),
  HOST: Type.String({ minLength: 1, default: '0.0.0.0', description: 'a host name or IP address to listen on' }),
  PORT: integer(0, 65535, 3000),
  LOG_LEVEL: Type.Union(
    ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((level) => Type.Literal(level)),
    { default: 'info', description: 'one of fatal, error, warn, info, debug, trace, silent' }
  ),
  LOG_PRETTY: boolean(false),
  DATABASE_POOL_MAX: integer(1, 1000, 10),
  DATABASE_CONNECT_TIMEOUT_MS: integer(100, 60_000, 2_000),
  DATABASE_STATEMENT_TIMEOUT_MS: integer(100, 600_000, 5_000),
  // Measured by npm run bench: two pipelined connections for reads took
  // W1 from 7,900 to 12,400 req/s and W2 from 2,600 to 3,700 (BENCHMARKS.md).
  DATABASE_READ_PIPELINES: integer(0, 16, 2),
  // Load shedding: past these, /api requests get 503 + Retry-After at once
  // instead of queueing (0 turns a check off).
  DATABASE_QUEUE_MAX: integer(0, 100_000, 128),
  EVENT_LOOP_DELAY_MAX_MS: integer(0, 60_000, 250),
  MIGRATE_ON_START: boolean(true),
  MIGRATIONS_TIMEOUT_MS: integer(1_000, 3_600_000, 60_000),
  SHUTDOWN_GRACE_MS: integer(100, 600_000, 10_000),
  // Worker processes on one machine (node:cluster); Kubernetes scales by
  // replicas. auto: as many as the CPUs the process may use (src/cpus.ts).
  WEB_CONCURRENCY: Type.Union([Type.Literal('auto'), Type.Integer({ minimum: 1, maximum: 64 })], {
    default: 1,
    description: 'an integer from 1 to 64, or auto (one process per CPU this process may use, the container\'s CPU limit included)'
  }),
  METRICS_ENABLED: boolean(true),
  DOCS_ENABLED: boolean(true),
  // The contract keeps keys at least 24 hours.
  IDEMPOTENCY_KEY_TTL_SECONDS: integer(86_400, 30 * 86_400, 86_400),
  // Authentication (src/plugins/auth.ts): on when a key source is set.
  AUTH_MODE: Type.Optional(Type.Union([Type.Literal('jwt'), Type.Literal('none')], {
    description: 'jwt or none'
  })),
  AUTH_JWKS_URL: Type.Optional(Type.String({
    pattern: '^https?://',
    description: 'an http(s) URL of a JSON Web Key Set, such as https://issuer.example/.well-known/jwks.json'
  })),
  AUTH_PUBLIC_KEY: Type.Optional(Type.String({
    minLength: 1,
    description: 'one PEM public key (-----BEGIN PUBLIC KEY-----): RSA, EC P-256 or Ed25519'
  })),
  AUTH_ISSUER: Type.Optional(Type.String({ minLength: 1, description: 'the tokens\' issuer (their iss claim)' })),
  AUTH_AUDIENCE: Type.Optional(Type.String({ minLength: 1, description: 'this service\'s name in the tokens\' aud claim' })),
  // Rate limits (src/plugins/rate-limit.ts): off unless RATE_LIMIT_MAX is set.
  RATE_LIMIT_MAX: Type.Optional(Type.Integer({ minimum: 1, maximum: 1_000_000_000, description: 'an integer from 1 to 1000000000' })),
  RATE_LIMIT_WINDOW_MS: integer(1_000, 86_400_000, 60_000),
  REDIS_URL: Type.Optional(Type.String({
    pattern: '^rediss?://',
    description: 'a Redis URL such as redis://redis:6379',
    secret: true
  })),
  // Keys of the shared counters in Redis: KEY_PREFIX + sub:… or ip:….
  RATE_LIMIT_REDIS_PREFIX: Type.String({ minLength: 1, default: 'users-service:rate-limit:', description: 'a Redis key prefix' }),
  // Which proxies' X-Forwarded-For to believe (Fastify's trustProxy).
  TRUST_PROXY: Type.Optional(Type.String({
    pattern: '^(true|false|\\d{1,2}|[0-9A-Fa-f.:/]+(,\\s*[0-9A-Fa-f.:/]+)*)$',
    description: 'true, false, a number of proxy hops, or comma-separated proxy addresses or CIDR ranges'
  })),
  // User events (transactional outbox to RabbitMQ): on only with a broker URL.
  EVENTS_AMQP_URL: Type.Optional(Type.String({
    pattern: '^amqps?://',
    description: 'an AMQP URL such as amqp://user:password@host:5672',
    secret: true
  })),
  EVENTS_EXCHANGE: Type.String({
    minLength: 1,
    maxLength: 255,
    default: 'users',
    description: 'an exchange name of 1 to 255 characters'
  }),
  EVENTS_SOURCE: Type.String({
    minLength: 1,
    default: '/users-service',
    description: 'a CloudEvents source (a URI reference such as /users-service)'
  }),
  // Sent events are kept this long (for looking into), then pruned.
  EVENTS_RETENTION_SECONDS: integer(0, 30 * 86_400, 86_400),
  // How often the relay looks for events other replicas wrote; its own it sends at once.
  EVENTS_POLL_INTERVAL_MS: integer(10, 60_000, 500),
  // Tracing (OpenTelemetry's own variables): on when an endpoint is set.
  OTEL_EXPORTER_OTLP_ENDPOINT: Type.Optional(otlpUrl('an http:// or https:// URL of an OTLP/HTTP receiver, such as http://collector:4318')),
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: Type.Optional(otlpUrl('an http:// or https:// URL that receives traces, such as http://collector:4318/v1/traces')),
  OTEL_EXPORTER_OTLP_PROTOCOL: Type.Union(
    OTLP_PROTOCOLS.map((protocol) => Type.Literal(protocol)),
    { default: 'http/protobuf', description: `one of ${OTLP_PROTOCOLS.join(', ')} (grpc is not supported)` }
  ),
  OTEL_SERVICE_NAME: Type.Optional(Type.String({ minLength: 1, description: 'a service name' })),
  OTEL_TRACES_SAMPLER: Type.Union(
    TRACE_SAMPLERS.map((sampler) => Type.Literal(sampler)),
    { default: 'parentbased_always_on', description: `one of ${TRACE_SAMPLERS.join(', ')}` }
  ),
  OTEL_TRACES_SAMPLER_ARG: Type.Optional(Type.String({
    pattern: '^(0(\\.\\d+)?|1(\\.0+)?)$',
    description: 'a sampling ratio from 0 to 1, such as 0.25'
  })),
  // key=value pairs, comma-separated, values percent-encoded (the SDK reads them).
  OTEL_RESOURCE_ATTRIBUTES: Type.Optional(Type.String({
    pattern: '^[^=,\\s]+=[^,]*(,[^=,\\s]+=[^,]*)*$',
    description: 'comma-separated key=value pairs, such as deployment.environment=production,service.namespace=users'
  }))
})

type Env = Static<typeof ConfigSchema>

export interface Config {
  /** Absent in development means: start the embedded PostgreSQL. */
  databaseUrl: string | undefined
  /** Absent: the project's own place (src/db/embedded.ts: projectDataDir). */
  embeddedPostgresDir: string | undefined
  production: boolean
  host: string
  port: number
  logLevel: Env['LOG_LEVEL']
  logPretty: boolean
  /** Where migrations run; DATABASE_URL's database when absent. */
  migrationsDatabaseUrl: string | undefined
  database: {
    /** 'transaction': DATABASE_URL is a transaction-mode pooler (src/db/pooler.ts). */
    pooler: 'none' | 'transaction'
    /** Behind a pooler: it keeps named prepared statements (PgBouncer >= 1.21, max_prepared_statements). */
    poolerKeepsPreparedStatements: boolean
    /** Hot standbys to read from (empty: none). */
    readUrls: string[]
    readMaxLagMs: number
    poolMax: number
    connectTimeoutMs: number
    statementTimeoutMs: number
    readPipelineConnections: number
  }
  loadShedding: {
    /** Requests waiting for a pool client, or reads in flight, before new ones get 503. */
    maxDatabaseQueue: number
    /** Mean event-loop delay, in ms, before new requests get 503. */
    maxEventLoopDelayMs: number
  }
  migrateOnStart: boolean
  migrationsTimeoutMs: number
  shutdownGraceMs: number
  idempotencyKeyTtlSeconds: number
  /** Worker processes; 1 serves from this process. */
  webConcurrency: number
  /** Serve GET /metrics. */
  metricsEnabled: boolean
  /** Serve GET /docs and /docs/json. */
  docsEnabled: boolean
  auth: AuthConfig
  /** Absent: no rate limits. */
  rateLimit: RateLimitConfig | undefined
  /** Fastify's trustProxy: whose X-Forwarded-For gives the client address. */
  trustProxy: boolean | string[] | ((address: string, hop: number) => boolean)
  /** User events through the outbox; absent when EVENTS_AMQP_URL is not set. */
  events: EventsConfig | undefined
  /** OpenTelemetry tracing; undefined (off) unless an OTLP endpoint is set. */
  tracing: TracingConfig | undefined
}

/** Bearer tokens checked with a JWKS endpoint's keys or one public key; or no checks. */
export type AuthConfig =
  | { mode: 'jwt', keys: { jwksUrl: string } | { publicKey: string }, issuer: string, audience: string }
  /** `explicit`: AUTH_MODE=none was set, rather than nothing at all. */
  | { mode: 'none', explicit: boolean }

export interface RateLimitConfig {
  max: number
  windowMs: number
  /** Absent: each process counts on its own. */
  redisUrl: string | undefined
  redisKeyPrefix: string
}

export interface EventsConfig {
  amqpUrl: string
  exchange: string
  source: string
  retentionSeconds: number
  pollIntervalMs: number
}

export interface TracingConfig {
  /** Where spans are posted (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as is, or OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces). */
  tracesUrl: string
  protocol: typeof OTLP_PROTOCOLS[number]
  /** OTEL_SERVICE_NAME; absent: service.name from OTEL_RESOURCE_ATTRIBUTES, else users-service. */
  serviceName: string | undefined
  sampler: typeof TRACE_SAMPLERS[number]
  /** The ratio of the traceidratio samplers (default 1). */
  samplerRatio: number
  /** OTEL_RESOURCE_ATTRIBUTES, as given. */
  resourceAttributes: string | undefined
}

export class ConfigError extends Error {
  override name = 'ConfigError'
}

/** The configuration once the database is known. */
export type AppConfig = Config & { databaseUrl: string }

/**
 * Reads the configuration from an environment once. Throws a ConfigError
 * whose message is one line naming the first bad variable and what it expects.
 */
export function loadConfig (env: NodeJS.ProcessEnv = process.env): Config {
  const raw: Record<string, unknown> = {}
  for (const name of Object.keys(ConfigSchema.properties)) {
    const value = env[name]
    // An empty variable (`PORT=`) means "not set", as in most shells' habits.
    if (value !== undefined && value !== '') raw[name] = value
  }

  const parsed = Value.Default(ConfigSchema, fromText(raw))
  const error = Value.Errors(ConfigSchema, parsed).First()
  if (error !== undefined) {
    const name = error.path.split('/')[1] ?? ''
    throw new ConfigError(describeProblem(name, raw[name]))
  }

  const valid = parsed as Env
  // The pattern only sees the scheme; node-postgres needs a URL that parses
  // (a password with a raw "/" or "@", a port past 65535 do not).
  if (valid.DATABASE_URL !== undefined && !URL.canParse(valid.DATABASE_URL)) {
    throw new ConfigError(`${describeProblem('DATABASE_URL', valid.DATABASE_URL)}; this one does not parse as a URL ` +
      '(percent-encode special characters in the user name and password)')
  }
  for (const name of ['MIGRATIONS_DATABASE_URL', 'DATABASE_READ_URL'] as const) {
    const unparsable = valid[name]?.split(',').find((url) => !URL.canParse(url))
    if (unparsable !== undefined) {
      throw new ConfigError(`${describeProblem(name, unparsable)}; this one does not parse as a URL ` +
        '(percent-encode special characters in the user name and password)')
    }
  }
  // postgres-migrations holds a session advisory lock for the whole run: a
  // transaction pooler would hand its statements to different sessions.
  if (valid.DATABASE_POOLER === 'transaction' && valid.MIGRATE_ON_START && valid.MIGRATIONS_DATABASE_URL === undefined) {
    throw new ConfigError('MIGRATIONS_DATABASE_URL is required when DATABASE_POOLER=transaction and MIGRATE_ON_START=true: ' +
      'set it to a URL that reaches PostgreSQL directly (migrations take a session lock a transaction pooler cannot keep), ' +
      'or set MIGRATE_ON_START=false')
  }
  // Caught here, before anything starts; whether the host is one of this
  // machine's and the port is free is known only by binding (startup.ts).
  if (!isHostName(valid.HOST) && isIP(valid.HOST) === 0) throw new ConfigError(describeProblem('HOST', valid.HOST))
  if (valid.AUTH_JWKS_URL !== undefined && !URL.canParse(valid.AUTH_JWKS_URL)) {
    throw new ConfigError(describeProblem('AUTH_JWKS_URL', valid.AUTH_JWKS_URL))
  }
  if (valid.EVENTS_AMQP_URL !== undefined && !URL.canParse(valid.EVENTS_AMQP_URL)) {
    throw new ConfigError(`${describeProblem('EVENTS_AMQP_URL', valid.EVENTS_AMQP_URL)}; this one does not parse as a URL ` +
      '(percent-encode special characters in the user name and password)')
  }
  return {
    databaseUrl: valid.DATABASE_URL,
    embeddedPostgresDir: valid.EMBEDDED_POSTGRES_DIR,
    production: valid.NODE_ENV === 'production',
    host: valid.HOST,
    port: valid.PORT,
    logLevel: valid.LOG_LEVEL,
    logPretty: valid.LOG_PRETTY,
    migrationsDatabaseUrl: valid.MIGRATIONS_DATABASE_URL,
    database: {
      pooler: valid.DATABASE_POOLER,
      poolerKeepsPreparedStatements: valid.DATABASE_POOLER_PREPARED_STATEMENTS,
      readUrls: valid.DATABASE_READ_URL?.split(',') ?? [],
      readMaxLagMs: valid.DATABASE_READ_MAX_LAG_MS,
      poolMax: valid.DATABASE_POOL_MAX,
      connectTimeoutMs: valid.DATABASE_CONNECT_TIMEOUT_MS,
      statementTimeoutMs: valid.DATABASE_STATEMENT_TIMEOUT_MS,
      readPipelineConnections: valid.DATABASE_READ_PIPELINES
    },
    loadShedding: {
      maxDatabaseQueue: valid.DATABASE_QUEUE_MAX,
      maxEventLoopDelayMs: valid.EVENT_LOOP_DELAY_MAX_MS
    },
    migrateOnStart: valid.MIGRATE_ON_START,
    migrationsTimeoutMs: valid.MIGRATIONS_TIMEOUT_MS,
    shutdownGraceMs: valid.SHUTDOWN_GRACE_MS,
    idempotencyKeyTtlSeconds: valid.IDEMPOTENCY_KEY_TTL_SECONDS,
    webConcurrency: valid.WEB_CONCURRENCY === 'auto' ? usableCpus() : valid.WEB_CONCURRENCY,
    metricsEnabled: valid.METRICS_ENABLED,
    docsEnabled: valid.DOCS_ENABLED,
    auth: authConfig(valid),
    rateLimit: valid.RATE_LIMIT_MAX === undefined
      ? undefined
      : { max: valid.RATE_LIMIT_MAX, windowMs: valid.RATE_LIMIT_WINDOW_MS, redisUrl: valid.REDIS_URL, redisKeyPrefix: valid.RATE_LIMIT_REDIS_PREFIX },
    trustProxy: trustProxyOf(valid.TRUST_PROXY),
    events: valid.EVENTS_AMQP_URL === undefined
      ? undefined
      : {
          amqpUrl: valid.EVENTS_AMQP_URL,
          exchange: valid.EVENTS_EXCHANGE,
          source: valid.EVENTS_SOURCE,
          retentionSeconds: valid.EVENTS_RETENTION_SECONDS,
          pollIntervalMs: valid.EVENTS_POLL_INTERVAL_MS
        },
    tracing: tracingOf(valid)
  }
}

function tracingOf (valid: Env): TracingConfig | undefined {
  const traces = valid.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
  const base = valid.OTEL_EXPORTER_OTLP_ENDPOINT
  for (const [name, url] of [['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', traces], ['OTEL_EXPORTER_OTLP_ENDPOINT', base]] as const) {
    if (url !== undefined && !URL.canParse(url)) throw new ConfigError(`${describeProblem(name, url)}; this one does not parse as a URL`)
  }
  if (traces === undefined && base === undefined) return undefined
  return {
    // The specification's rule: the signal's own endpoint is used as it is;
    // the general one gets the signal's path appended.
    tracesUrl: traces ?? `${(base as string).replace(/\/+$/, '')}/v1/traces`,
    protocol: valid.OTEL_EXPORTER_OTLP_PROTOCOL,
    serviceName: valid.OTEL_SERVICE_NAME,
    sampler: valid.OTEL_TRACES_SAMPLER,
    samplerRatio: valid.OTEL_TRACES_SAMPLER_ARG === undefined ? 1 : Number(valid.OTEL_TRACES_SAMPLER_ARG),
    resourceAttributes: valid.OTEL_RESOURCE_ATTRIBUTES
  }
}

/**
 * What the service needs to serve, beyond what loadConfig checks (which
 * `npm run migrate` shares): in production, an explicit word on who may call.
 */
export function checkServingConfig (config: Config): void {
  if (config.production && config.auth.mode === 'none' && !config.auth.explicit) {
    throw new ConfigError('AUTH_JWKS_URL or AUTH_PUBLIC_KEY (with AUTH_ISSUER and AUTH_AUDIENCE) is required when ' +
      'NODE_ENV=production; set AUTH_MODE=none to serve without authentication')
  }
}

/** Any AUTH_ setting but AUTH_MODE=none asks for tokens, so it must be whole. */
function authConfig (valid: Env): AuthConfig {
  if (valid.AUTH_MODE === 'none') return { mode: 'none', explicit: true }
  const { AUTH_JWKS_URL: jwksUrl, AUTH_PUBLIC_KEY: publicKey, AUTH_ISSUER: issuer, AUTH_AUDIENCE: audience } = valid
  const anySet = [jwksUrl, publicKey, issuer, audience].some((value) => value !== undefined)
  if (valid.AUTH_MODE === undefined && !anySet) return { mode: 'none', explicit: false }
  if (jwksUrl !== undefined && publicKey !== undefined) {
    throw new ConfigError('AUTH_JWKS_URL and AUTH_PUBLIC_KEY are both set: set only one key source')
  }
  if (jwksUrl === undefined && publicKey === undefined) {
    throw new ConfigError('AUTH_JWKS_URL or AUTH_PUBLIC_KEY is required for bearer tokens (or set AUTH_MODE=none)')
  }
  if (issuer === undefined) throw new ConfigError(describeProblem('AUTH_ISSUER', undefined))
  if (audience === undefined) throw new ConfigError(describeProblem('AUTH_AUDIENCE', undefined))
  const keys = jwksUrl !== undefined ? { jwksUrl } : { publicKey: publicKeyPem(publicKey ?? '') }
  return { mode: 'jwt', keys, issuer, audience }
}

/** The PEM text (`\n` escapes allowed, as one-line env files need), once Node reads it as a key we take. */
function publicKeyPem (given: string): string {
  const pem = given.replaceAll('\\n', '\n').trim()
  let details: { type: string | undefined, curve: string | undefined } | undefined
  try {
    const key = createPublicKey(pem)
    details = { type: key.asymmetricKeyType, curve: key.asymmetricKeyDetails?.namedCurve }
  } catch {}
  // ES256 is P-256's only algorithm; RS256 and EdDSA take any RSA or Ed25519 key.
  const accepted = pem.startsWith('-----BEGIN PUBLIC KEY-----') && details !== undefined && (details.type === 'rsa' || details.type === 'ed25519' ||
    (details.type === 'ec' && details.curve === 'prime256v1'))
  // The key is not echoed: it spans lines, and start-up's answer is one.
  if (!accepted) throw new ConfigError(`AUTH_PUBLIC_KEY must be ${String(ConfigSchema.properties.AUTH_PUBLIC_KEY.description)}`)
  return pem
}

function trustProxyOf (value: string | undefined): Config['trustProxy'] {
  if (value === undefined || value === 'false') return false
  if (value === 'true') return true
  // N hops: the Nth address from the right of X-Forwarded-For is the client's.
  if (/^\d+$/.test(value)) return (_address, hop) => hop < Number(value)
  return value.split(',').map((address) => address.trim())
}

/**
 * Turns the text of integer and boolean variables into their types, and only
 * text that is exactly one (TypeBox's own Convert would read "80.5" as 80).
 */
function fromText (raw: Record<string, unknown>): Record<string, unknown> {
  const typed: Record<string, unknown> = { ...raw }
  for (const [name, value] of Object.entries(raw)) {
    const schema = (ConfigSchema.properties as Record<string, TSchema>)[name]
    // An integer, or one of a few words (WEB_CONCURRENCY=auto).
    const type = schema?.anyOf?.some((each: TSchema) => each.type === 'integer') === true ? 'integer' : schema?.type
    // No minus sign: no setting takes a negative number, and "-0" is not 0.
    if (type === 'integer' && /^\+?\d{1,15}$/.test(String(value))) typed[name] = Number(value)
    if (type === 'boolean' && (value === 'true' || value === 'false')) typed[name] = value === 'true'
  }
  return typed
}

/**
 * A DNS name: labels of letters, digits, hyphens (and underscores, which
 * container networks use in service names), at most 63 characters each and
 * 253 in all, with an optional final dot.
 */
function isHostName (host: string): boolean {
  const name = host.endsWith('.') ? host.slice(0, -1) : host
  return name.length > 0 && name.length <= 253 &&
    name.split('.').every((label) => /^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$/.test(label))
}

function describeProblem (name: string, given: unknown): string {
  const schema: TSchema | undefined = (ConfigSchema.properties as Record<string, TSchema>)[name]
  const expected = String(schema?.description ?? 'valid')
  if (given === undefined) return `${name} is required: set it to ${expected}`
  // Secrets (the database password lives in DATABASE_URL) are never echoed.
  const shown = schema?.secret === true ? '' : ` (got ${JSON.stringify(given)})`
  return `${name} must be ${expected}${shown}`
}
