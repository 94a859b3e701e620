import { isIP } from 'node:net'
import { Type, type Static, type TSchema } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'

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
  // Worker processes on one machine (node:cluster); Kubernetes scales by replicas.
  WEB_CONCURRENCY: integer(1, 64, 1),
  METRICS_ENABLED: boolean(true),
  DOCS_ENABLED: boolean(true),
  // The contract keeps keys at least 24 hours.
  IDEMPOTENCY_KEY_TTL_SECONDS: integer(86_400, 30 * 86_400, 86_400),
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
  /** OpenTelemetry tracing; undefined (off) unless an OTLP endpoint is set. */
  tracing: TracingConfig | undefined
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
    webConcurrency: valid.WEB_CONCURRENCY,
    metricsEnabled: valid.METRICS_ENABLED,
    docsEnabled: valid.DOCS_ENABLED,
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
 * Turns the text of integer and boolean variables into their types, and only
 * text that is exactly one (TypeBox's own Convert would read "80.5" as 80).
 */
function fromText (raw: Record<string, unknown>): Record<string, unknown> {
  const typed: Record<string, unknown> = { ...raw }
  for (const [name, value] of Object.entries(raw)) {
    const type = (ConfigSchema.properties as Record<string, TSchema>)[name]?.type
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
