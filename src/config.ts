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

export const ConfigSchema = Type.Object({
  // Absent: a development start runs an embedded PostgreSQL instead.
  DATABASE_URL: Type.Optional(Type.String({
    pattern: '^postgres(ql)?://',
    description: 'a PostgreSQL URL such as postgres://user:password@host:5432/database',
    secret: true
  })),
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
  IDEMPOTENCY_KEY_TTL_SECONDS: integer(86_400, 30 * 86_400, 86_400)
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
  database: {
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
  // Caught here, before anything starts; whether the host is one of this
  // machine's and the port is free is known only by binding (startup.ts).
  if (!isHostName(valid.HOST) && isIP(valid.HOST) === 0) throw new ConfigError(describeProblem('HOST', valid.HOST))
  return {
    databaseUrl: valid.DATABASE_URL,
    embeddedPostgresDir: valid.EMBEDDED_POSTGRES_DIR,
    production: valid.NODE_ENV === 'production',
    host: valid.HOST,
    port: valid.PORT,
    logLevel: valid.LOG_LEVEL,
    logPretty: valid.LOG_PRETTY,
    database: {
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
    docsEnabled: valid.DOCS_ENABLED
  }
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
