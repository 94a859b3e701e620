import fastifyPostgres from '@fastify/postgres'
import fp from 'fastify-plugin'
import { databaseTypes } from '../db/types.js'

export interface DatabaseOptions {
  connectionString: string
  poolMax: number
  connectTimeoutMs: number
  statementTimeoutMs: number
}

/**
 * The connection pool, as `fastify.pg`. Every wait is bounded, so a database
 * that is down or stalled turns into a quick 503 rather than a hung request.
 */
export default fp<DatabaseOptions>(async function database (fastify, options) {
  await fastify.register(fastifyPostgres, {
    connectionString: options.connectionString,
    max: options.poolMax,
    // node-postgres would wait forever for a free client by default.
    connectionTimeoutMillis: options.connectTimeoutMs,
    idleTimeoutMillis: 30_000,
    // The server cancels a slow statement; the client gives up a little
    // later in case the server itself is what stopped answering.
    statement_timeout: options.statementTimeoutMs,
    query_timeout: options.statementTimeoutMs + 1_000,
    keepAlive: true,
    application_name: 'users-service',
    types: databaseTypes
  })

  // @fastify/postgres adds no listener: an idle client dropped by a database
  // restart would otherwise crash the process. The pool replaces it.
  fastify.pg.pool.on('error', (error) => {
    fastify.log.warn({ err: error }, 'an idle database connection failed; the pool will open another')
  })
}, { name: 'database' })
