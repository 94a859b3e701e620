// Connecting through a transaction-mode pooler (PgBouncer, pool_mode =
// transaction): each transaction, or each statement outside one, may run on
// a different server session. So nothing may rely on a session:
//
// - Startup parameters: PgBouncer refuses statement_timeout and
//   idle_in_transaction_session_timeout ("unsupported startup parameter").
//   The timeouts become the app role's defaults in its database instead
//   (ALTER ROLE … IN DATABASE … SET), set by the migrate step on its direct
//   connection (sessionDefaultsFor). Every server session PgBouncer opens
//   then starts with them, at no cost per request: a SET LOCAL would cost a
//   round trip per transaction, and turn each single-statement read into a
//   three-statement transaction.
// - Named prepared statements: prepared on one session, used on another
//   ("prepared statement does not exist"). Statements go unnamed (parsed
//   each time: the cost of a parse per statement) unless the pooler keeps
//   them (PgBouncer >= 1.21 with max_prepared_statements).
// - The backend pid a client learns at connect is the pooler's, not a
//   server's: writes.ts asks for the real one inside each transaction.
import pg from 'pg'
import { databaseTypes } from './types.js'

export type Pooler = 'none' | 'transaction'

export interface SessionTimeouts {
  statementTimeoutMs: number
}

/**
 * The timeouts each connection asks for at start-up, where it may: none
 * behind a transaction pooler (the role's defaults hold them there).
 */
export function startupTimeouts (pooler: Pooler, { statementTimeoutMs }: SessionTimeouts): Pick<pg.ClientConfig, 'statement_timeout' | 'idle_in_transaction_session_timeout'> {
  if (pooler === 'transaction') return {}
  return {
    statement_timeout: statementTimeoutMs,
    // A transaction whose connection went silent (a partition, a stalled
    // client) is aborted by the server rather than holding its locks.
    idle_in_transaction_session_timeout: statementTimeoutMs
  }
}

/** The client class for connections: one that never names a statement, where names would not survive. */
export function clientClassFor (pooler: Pooler, poolerKeepsPreparedStatements: boolean): typeof pg.Client {
  return pooler === 'transaction' && !poolerKeepsPreparedStatements ? UnnamedStatementsClient : pg.Client
}

/**
 * A pg.Client that sends every statement unnamed: PostgreSQL parses it
 * each time instead of once per connection, and nothing is left behind on
 * a server session that the next statement may not get.
 */
class UnnamedStatementsClient extends pg.Client {
  constructor (config?: string | pg.ClientConfig) {
    super(config)
    const query = this.query.bind(this) as (...args: unknown[]) => unknown
    this.query = ((config: unknown, ...rest: unknown[]) => query(withoutName(config), ...rest)) as pg.Client['query']
  }
}

function withoutName (config: unknown): unknown {
  if (typeof config !== 'object' || config === null || !('name' in config)) return config
  const { name: _name, ...unnamed } = config as Record<string, unknown>
  return unnamed
}

export interface PoolSettings extends SessionTimeouts {
  poolMax: number
  connectTimeoutMs: number
  pooler: Pooler
  poolerKeepsPreparedStatements: boolean
}

/**
 * The pool configuration every pool of requests uses (the primary's and
 * each replica's): every wait bounded, so a database that is down or
 * stalled turns into a quick 503 rather than a hung request.
 */
export function poolConfig (connectionString: string, settings: PoolSettings): pg.PoolConfig {
  return {
    connectionString,
    max: settings.poolMax,
    // node-postgres would wait forever for a free client by default.
    connectionTimeoutMillis: settings.connectTimeoutMs,
    idleTimeoutMillis: 30_000,
    // The server cancels a slow statement; the client gives up a little
    // later in case the server itself is what stopped answering.
    ...startupTimeouts(settings.pooler, settings),
    query_timeout: settings.statementTimeoutMs + 1_000,
    Client: clientClassFor(settings.pooler, settings.poolerKeepsPreparedStatements),
    keepAlive: true,
    application_name: 'users-service',
    types: databaseTypes
  }
}

/**
 * Makes the timeouts the service's sessions need the defaults of the role
 * DATABASE_URL logs in as, in this database, so that a pooler's server
 * sessions start with them. Run on the migrations' direct connection; the
 * role needs to be that connection's own, or it needs CREATEROLE.
 * Sessions opened before keep their old values until the pooler replaces
 * them (PgBouncer: server_lifetime). Run after the migrations, which
 * create the function it calls.
 */
export async function setSessionDefaults (client: pg.Client, role: string | undefined, { statementTimeoutMs }: SessionTimeouts): Promise<void> {
  // ALTER ROLE takes no parameters: the function (migrations/4_…) builds it.
  await client.query({
    text: 'SELECT users_service_set_session_timeouts(coalesce($1::text, current_user), $2::text)',
    values: [role ?? null, `${statementTimeoutMs}ms`]
  })
}

/** The role a database URL names; undefined: the migrations' own (current_user). */
export function roleOf (databaseUrl: string): string | undefined {
  const user = decodeURIComponent(new URL(databaseUrl).username)
  return user === '' ? undefined : user
}
