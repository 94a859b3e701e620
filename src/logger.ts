import type { FastifyBaseLogger, FastifyReply, FastifyRequest } from 'fastify'
import { pino, type Bindings, type DestinationStream, type Logger, type LoggerOptions } from 'pino'
import type { Config } from './config.js'

type LoggerConfig = Pick<Config, 'logLevel' | 'logPretty'> & {
  databaseUrl?: string | undefined
  /** The events broker's URL holds a password too. */
  events?: { amqpUrl: string } | undefined
}

// user:password@ after any "://" a log line may quote (a driver's error, a
// config dump): the password is replaced, the rest kept for debugging. No
// scheme is asked for before "://" (a scheme pattern there backtracked
// through every word boundary of a client's URL: quadratic), and the match
// stays linear in the line: each class stops at the character that follows
// it, and every "://" holds a "/", which ends the scan of the one before.
const URL_PASSWORD = /(:\/\/[^:/?#@\s"]*:)[^@/\s"]+@/g
const REDACTED = '[redacted]'
// A bare password is looked for only when it is long enough not to turn up
// by chance, and only as a whole word: replacing "0" or "y" anywhere would
// break every line ("level":3[redacted]) and hide nothing. Short ones are
// still taken out of URLs by URL_PASSWORD.
const MIN_BARE_SECRET_LENGTH = 8

/**
 * Patterns for the database password wherever a log line could hold it:
 * as written in the URL, decoded, and escaped inside a JSON string. Each is
 * a literal between two one-character lookarounds: at most the password's
 * length of work per character of the line, whatever the line holds.
 */
export function secretsOf (databaseUrl: string | undefined): RegExp[] {
  if (databaseUrl === undefined || !URL.canParse(databaseUrl)) return []
  const written = new URL(databaseUrl).password
  let decoded = written
  try {
    decoded = decodeURIComponent(written)
  } catch {}
  const forms = new Set([written, decoded, JSON.stringify(decoded).slice(1, -1)])
  return [...forms]
    .filter((secret) => secret.length >= MIN_BARE_SECRET_LENGTH)
    .map((secret) => new RegExp(`(?<![A-Za-z0-9])${escapeRegExp(secret)}(?![A-Za-z0-9])`, 'g'))
}

/** A log line with every URL's password and the given secrets replaced. */
export function redact (line: string, secrets: readonly RegExp[]): string {
  let safe = line.includes('://') ? line.replace(URL_PASSWORD, `$1${REDACTED}@`) : line
  for (const secret of secrets) safe = safe.replace(secret, REDACTED)
  return safe
}

/**
 * pino JSON lines, written through a filter that takes passwords out: any
 * URL's, and the database password itself wherever it appears, so no
 * secret reaches the logs whatever a library puts in an error. (pino-pretty,
 * for development only, runs in a worker and is not filtered.)
 */
export function loggerOptions (config: LoggerConfig): LoggerOptions & { stream?: DestinationStream } {
  if (config.logPretty) return { level: config.logLevel, transport: { target: 'pino-pretty' } }
  return { level: config.logLevel, stream: redactingStream([...secretsOf(config.databaseUrl), ...secretsOf(config.events?.amqpUrl)]) }
}

export function createLogger (config: LoggerConfig): Logger {
  const { stream, ...options } = loggerOptions(config)
  return stream === undefined ? pino(options) : pino(options, stream)
}

function escapeRegExp (text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

function redactingStream (secrets: RegExp[]): DestinationStream {
  // pino's own destination (standard output, synchronous, as by default).
  const out = pino.destination({ dest: 1, sync: true })
  return { write: (line: string) => out.write(redact(line, secrets)) }
}

/**
 * Adds fields to every log line of one request, its answer's line
 * included (written through reply.log). The request's logger is its own
 * (Fastify makes one per request), so they are bound to it in place: one
 * more child logger per request cost 6% of node's CPU on W1. A logger
 * without setBindings gets a child instead.
 */
export function bindToRequestLog (request: FastifyRequest, reply: FastifyReply, bindings: Bindings): void {
  const log = request.log as FastifyBaseLogger & Partial<Pick<Logger, 'setBindings'>>
  if (typeof log.setBindings === 'function') {
    log.setBindings(bindings)
  } else {
    const child = log.child(bindings)
    request.log = child
    reply.log = child
  }
}
