import fastifyPostgres from '@fastify/postgres'
import fp from 'fastify-plugin'
import { poolConfig, type Pooler } from '../db/pooler.js'
import { ReadPipeline, type QueryRunner } from '../db/read-pipeline.js'
import { primaryReaders, type Readers } from '../db/readers.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Where single-statement reads go: the read pipeline when on, else the pool. */
    reads: QueryRunner & { readonly waitingCount: number }
    /** Reads that a replica may answer (src/db/readers.ts): the primary's `reads` without replicas. */
    readers: Readers
  }
}

export interface DatabaseOptions {
  connectionString: string
  /** 'transaction': connectionString is a transaction-mode pooler (src/db/pooler.ts). */
  pooler: Pooler
  poolerKeepsPreparedStatements: boolean
  poolMax: number
  connectTimeoutMs: number
  statementTimeoutMs: number
  /** Pipelined connections for reads; 0 sends reads through the pool. */
  readPipelineConnections: number
  /** Hot standbys for reads (empty: none). */
  readUrls: string[]
  readMaxLagMs: number
}

/**
 * The connection pool, as `fastify.pg`. Every wait is bounded, so a database
 * that is down or stalled turns into a quick 503 rather than a hung request.
 */
export default fp<DatabaseOptions>(async function database (fastify, options) {
  await fastify.register(fastifyPostgres, poolConfig(options.connectionString, options))

  // @fastify/postgres adds no listener: an idle client dropped by a database
  // restart would otherwise crash the process. The pool replaces it.
  fastify.pg.pool.on('error', (error) => {
    fastify.log.warn({ err: error }, 'an idle database connection failed; the pool will open another')
  })
  // While a client is checked out, the pool listens to it no more: a socket
  // reset then would be an 'error' with no listener, which ends the process.
  // The query under way fails on its own (and answers 503 or outcome unknown).
  fastify.pg.pool.on('connect', (client) => {
    client.on('error', (error) => {
      fastify.log.warn({ err: error }, 'a database connection in use failed')
    })
  })

  // Behind a transaction pooler, reads go through the pool: a pipelined
  // connection keeps queries in flight back to back, so the pooler could
  // never hand its server session to another client between them (PgBouncer
  // before 1.21 does not follow a pipeline's statements either). There the
  // pooler's own pool is what spares PostgreSQL connections.
  if (options.readPipelineConnections === 0 || options.pooler === 'transaction') {
    fastify.decorate('reads', fastify.pg.pool)
  } else {
    const pipeline = new ReadPipeline({
      connectionString: options.connectionString,
      connections: options.readPipelineConnections,
      connectTimeoutMs: options.connectTimeoutMs,
      statementTimeoutMs: options.statementTimeoutMs,
      onError: (error) => fastify.log.warn({ err: error }, 'a pipelined read connection failed; the next read opens another')
    })
    fastify.decorate('reads', pipeline)
    fastify.addHook('onClose', () => pipeline.end())
  }

  if (options.readUrls.length === 0) {
    fastify.decorate('readers', primaryReaders(fastify.reads))
    return
  }
  // Loaded only with replicas: nothing of them costs anything without.
  const { ReplicaReaders } = await import('../db/replicas.js')
  const replicas = new ReplicaReaders(fastify.reads, {
    ...options,
    urls: options.readUrls,
    maxLagMs: options.readMaxLagMs,
    onError: (error, replica) => fastify.log.warn({ err: error, replica }, 'a read replica failed; reads go to the primary until it answers')
  })
  await replicas.checkLag()
  fastify.decorate('readers', replicas)
  fastify.addHook('onClose', () => replicas.end())
}, { name: 'database' })
