import { pino, type DestinationStream, type Logger, type LoggerOptions } from 'pino'
import type { Config } from './config.js'

type LoggerConfig = Pick<Config, 'logLevel' | 'logPretty'> & { databaseUrl?: string | undefined }

// user:password@ in any URL a log line may quote (a driver's error, a
// config dump): the password is replaced, the rest kept for debugging.
const URL_PASSWORD = /(\b[a-z][a-z0-9+.-]*:\/\/[^:/?#@\s"]*:)[^@/\s"]+@/gi
const REDACTED = '[redacted]'

/**
 * pino JSON lines, written through a filter that takes passwords out: any
 * URL's, and the database password itself wherever it appears, so no
 * secret reaches the logs whatever a library puts in an error. (pino-pretty,
 * for development only, runs in a worker and is not filtered.)
 */
export function loggerOptions (config: LoggerConfig): LoggerOptions & { stream?: DestinationStream } {
  if (config.logPretty) return { level: config.logLevel, transport: { target: 'pino-pretty' } }
  return { level: config.logLevel, stream: redactingStream(secretsOf(config.databaseUrl)) }
}

export function createLogger (config: LoggerConfig): Logger {
  const { stream, ...options } = loggerOptions(config)
  return stream === undefined ? pino(options) : pino(options, stream)
}

/** The database password, as written in the URL and decoded. */
function secretsOf (databaseUrl: string | undefined): string[] {
  if (databaseUrl === undefined) return []
  try {
    const password = new URL(databaseUrl).password
    if (password === '') return []
    return [...new Set([password, decodeURIComponent(password)])]
  } catch {
    return []
  }
}

/** A log line with every URL's password and every given secret replaced. */
export function redact (line: string, secrets: readonly string[]): string {
  let safe = line.includes('://') ? line.replace(URL_PASSWORD, `$1${REDACTED}@`) : line
  for (const secret of secrets) {
    if (safe.includes(secret)) safe = safe.replaceAll(secret, REDACTED)
  }
  return safe
}

function redactingStream (secrets: string[]): DestinationStream {
  // pino's own destination (standard output, synchronous, as by default).
  const out = pino.destination({ dest: 1, sync: true })
  return { write: (line: string) => out.write(redact(line, secrets)) }
}
