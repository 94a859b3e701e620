import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { AppConfig } from './config.js'
import { latestMigrationId } from './db/migrations.js'
import { clientErrorHandler, routingErrorHandler } from './http/client-error.js'
import { loggerOptions } from './logger.js'
import { currentTraceparent } from './tracing/context.js'
import database from './plugins/database.js'
import docs from './plugins/docs.js'
import earlyAnswers from './plugins/early-answers.js'
import errors from './plugins/errors.js'
import gracefulClose from './plugins/graceful-close.js'
import idempotency from './plugins/idempotency.js'
import jsonBodies from './plugins/json-bodies.js'
import loadShedding from './plugins/load-shedding.js'
import metrics from './plugins/metrics.js'
import requestId, { OneLinePerRequest, requestIdOf } from './plugins/request-log.js'
import routerRefusals from './plugins/router-refusals.js'
import health from './routes/health.js'
import legacyUser from './routes/legacy-user.js'
import users from './routes/users.js'
import { describeValidationErrors, validatorCompiler } from './validation.js'

/** Users' bodies are a name and an email: anything near this is not one. */
export const BODY_LIMIT_BYTES = 16 * 1024
const READY_TIMEOUT_MS = 1_000
// A client gets this long to send its headers, then its whole request
// (slow-loris defence); a connection with a request under way is closed
// after this long without any traffic. Idle keep-alive connections are
// governed by Fastify's keepAliveTimeout.
const HEADERS_TIMEOUT_MS = 10_000
const REQUEST_TIMEOUT_MS = 30_000
const CONNECTION_TIMEOUT_MS = 60_000
// Node enforces the first two only when it checks its connections, every
// 30 s by default: a limit of 10 s held as 10 to 40. Once a second, it holds.
const CONNECTIONS_CHECK_INTERVAL_MS = 1_000
const IDEMPOTENCY_PURGE_INTERVAL_MS = 5 * 60_000
const AUTH_OFF_IN_DEVELOPMENT = 'authentication is off: no AUTH_JWKS_URL or AUTH_PUBLIC_KEY is set ' +
  '(development only; NODE_ENV=production refuses to start so)'

export interface AppOverrides {
  /** Replaces the logger options built from the config (tests pass `false`). */
  logger?: FastifyServerOptions['logger']
  /** A logger the caller already uses (the server's, from before the app). */
  loggerInstance?: FastifyBaseLogger
}

/**
 * Builds the whole service from its configuration, without listening, so
 * the server and the tests run the very same app.
 */
export async function buildApp (config: AppConfig, overrides: AppOverrides = {}): Promise<FastifyInstance> {
  const app = Fastify({
    ...(overrides.loggerInstance !== undefined
      ? { loggerInstance: overrides.loggerInstance }
      : { logger: overrides.logger ?? loggerOptions(config) }),
    genReqId: requestIdOf,
    requestIdHeader: false,
    logController: new OneLinePerRequest(),
    bodyLimit: BODY_LIMIT_BYTES,
    requestTimeout: REQUEST_TIMEOUT_MS,
    connectionTimeout: CONNECTION_TIMEOUT_MS,
    // Options Node reads only when the server is created.
    http: { headersTimeout: HEADERS_TIMEOUT_MS, connectionsCheckingInterval: CONNECTIONS_CHECK_INTERVAL_MS },
    routerOptions: {
      // Collections are routed without a trailing slash; /api/users/ still works.
      ignoreTrailingSlash: true,
      // A long id reaches validation, which names it ("params/id must be
      // <= …"); only a path segment past this is refused by the router.
      maxParamLength: 1_024
    },
    frameworkErrors: routingErrorHandler,
    // Requests during shutdown get real answers (readiness: 503 with our
    // reason and request id), not Fastify's bare 503; see graceful-close.
    return503OnClosing: false,
    schemaErrorFormatter: (errors, dataVar) => new Error(describeValidationErrors(errors, dataVar)),
    clientErrorHandler,
    trustProxy: config.trustProxy
  }).withTypeProvider<TypeBoxTypeProvider>()

  app.setValidatorCompiler(validatorCompiler)

  // First, so each request's span covers all the rest; imported only when on.
  if (config.tracing !== undefined) await app.register(import('./plugins/tracing.js'), config.tracing)
  await app.register(routerRefusals)
  await app.register(requestId)
  await app.register(gracefulClose)
  await app.register(earlyAnswers)
  await app.register(errors)
  await app.register(jsonBodies)
  await app.register(database, {
    connectionString: config.databaseUrl,
    pooler: config.database.pooler,
    poolerKeepsPreparedStatements: config.database.poolerKeepsPreparedStatements,
    poolMax: config.database.poolMax,
    connectTimeoutMs: config.database.connectTimeoutMs,
    statementTimeoutMs: config.database.statementTimeoutMs,
    readPipelineConnections: config.database.readPipelineConnections,
    readUrls: config.database.readUrls,
    readMaxLagMs: config.database.readMaxLagMs
  })

  await app.register(loadShedding, config.loadShedding)

  // Imported only when on. Before the docs and the routes: it adds each
  // /api route's check and OpenAPI security.
  if (config.auth.mode === 'jwt') await app.register((await import('./plugins/auth.js')).default, { ...config.auth, production: config.production })
  else app.log.warn(config.auth.explicit ? 'authentication is off (AUTH_MODE=none)' : AUTH_OFF_IN_DEVELOPMENT)
  if (config.docsEnabled) await app.register(docs, { bearerAuth: config.auth.mode === 'jwt' })
  if (config.metricsEnabled) await app.register(metrics)
  // After auth (it keys on the token's sub) and metrics (it counts Redis failures).
  if (config.rateLimit !== undefined) await app.register((await import('./plugins/rate-limit.js')).default, config.rateLimit)
  // Off: no module of it is loaded, no outbox row written.
  if (config.events !== undefined) {
    const { default: events } = await import('./plugins/events.js')
    await app.register(events, {
      ...config.events,
      connectionString: config.databaseUrl,
      connectTimeoutMs: config.database.connectTimeoutMs,
      statementTimeoutMs: config.database.statementTimeoutMs,
      pooler: config.database.pooler,
      poolerKeepsPreparedStatements: config.database.poolerKeepsPreparedStatements,
      // Each event carries the trace of the request that caused it.
      ...(config.tracing === undefined ? {} : { traceparentOf: currentTraceparent })
    })
  }
  await app.register(idempotency, {
    ttlSeconds: config.idempotencyKeyTtlSeconds,
    purgeIntervalMs: IDEMPOTENCY_PURGE_INTERVAL_MS,
    behindPooler: config.database.pooler === 'transaction'
  })

  await app.register(health, {
    prefix: '/health',
    latestMigrationId: await latestMigrationId(),
    readyTimeoutMs: READY_TIMEOUT_MS
  })
  await app.register(users, { prefix: '/api/users' })
  await app.register(legacyUser, { prefix: '/api/user' })

  return app
}
