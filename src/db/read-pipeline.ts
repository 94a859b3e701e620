import type { Writable } from 'node:stream'
import pg, { type QueryArrayConfig, type QueryConfig, type QueryResult, type QueryResultRow } from 'pg'
import { databaseTypes } from './types.js'

/** What a statement needs: a pool, a checked-out client, or (reads only) a read pipeline. */
export interface QueryRunner {
  query: <R extends QueryResultRow>(config: QueryConfig | QueryArrayConfig) => Promise<QueryResult<R>>
}

export interface ReadPipelineOptions {
  connectionString: string
  /** Pipelined connections, each shared by every concurrent read. */
  connections: number
  connectTimeoutMs: number
  statementTimeoutMs: number
  onError: (error: Error) => void
}

/**
 * Single-statement reads on a few connections in node-postgres' pipeline
 * mode: each query is written as soon as it is asked, without waiting for
 * the one before, so one connection carries many concurrent reads and
 * PostgreSQL answers them back to back. No transaction ever runs here (they
 * would interleave); writes and transactions use the pool.
 *
 * A connection that fails or stalls (past the read timeout pg destroys it)
 * fails the reads on it, which answer 503, and the next read opens another.
 *
 * The reads asked in one turn of the event loop go out in one write per
 * connection: pg writes each query as it comes (one writev system call,
 * which on W1 was 28% of node's CPU), so the connection's socket is corked
 * at the first read of a turn and uncorked at setImmediate, once the turn's
 * I/O callbacks have run. W1's node CPU per request fell by a quarter and
 * PostgreSQL's by 40% (BENCHMARKS.md).
 */
export class ReadPipeline implements QueryRunner {
  private readonly clients: Array<Promise<pg.Client> | undefined>
  private turn = 0
  private closed = false
  private inFlight = 0
  /** Sockets corked in this turn of the event loop. */
  private readonly corked = new Set<Writable>()

  constructor (private readonly options: ReadPipelineOptions) {
    this.clients = new Array(options.connections).fill(undefined)
  }

  async query<R extends QueryResultRow> (config: QueryConfig | QueryArrayConfig): Promise<QueryResult<R>> {
    const slot = this.turn
    this.turn = (this.turn + 1) % this.clients.length
    this.inFlight++
    try {
      const client = await (this.clients[slot] ??= this.open(slot))
      this.corkForThisTurn(client)
      return await client.query<R>(config)
    } finally {
      this.inFlight--
    }
  }

  /** Holds the client's writes until the turn's other reads have joined them. */
  private corkForThisTurn (client: pg.Client): void {
    // pg's socket is not part of its typed API; without one, reads go out one by one.
    const socket = (client as unknown as { connection?: { stream?: Writable } }).connection?.stream
    if (socket === undefined || typeof socket.cork !== 'function' || this.corked.has(socket)) return
    socket.cork()
    this.corked.add(socket)
    setImmediate(() => {
      this.corked.delete(socket)
      socket.uncork()
    })
  }

  /** Reads sent or waiting to be, not answered yet. */
  get waitingCount (): number {
    return this.inFlight
  }

  async end (): Promise<void> {
    this.closed = true
    await Promise.all(this.clients.map(async (opening) => {
      const client = await opening?.catch(() => undefined)
      await client?.end().catch(() => {})
    }))
  }

  /** Connects a pipelined client for `slot`; the slot forgets it when it fails. */
  private open (slot: number): Promise<pg.Client> {
    if (this.closed) return Promise.reject(new Error('Cannot use a pool after calling end on the pool'))
    const client = new pg.Client({
      connectionString: this.options.connectionString,
      pipeline: true,
      connectionTimeoutMillis: this.options.connectTimeoutMs,
      statement_timeout: this.options.statementTimeoutMs,
      query_timeout: this.options.statementTimeoutMs + 1_000,
      keepAlive: true,
      application_name: 'users-service',
      types: databaseTypes
    })
    const opening = client.connect().then(() => client)
    const forget = () => { if (this.clients[slot] === opening) this.clients[slot] = undefined }
    client.on('error', (error) => {
      forget()
      this.options.onError(error)
    })
    client.on('end', forget)
    opening.catch(forget)
    return opening
  }
}
