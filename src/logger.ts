import { pino, type Logger, type LoggerOptions } from 'pino'
import type { Config } from './config.js'

/** pino JSON lines; pino-pretty (a development dependency) on request. */
export function loggerOptions (config: Pick<Config, 'logLevel' | 'logPretty'>): LoggerOptions {
  return {
    level: config.logLevel,
    ...(config.logPretty ? { transport: { target: 'pino-pretty' } } : {})
  }
}

export function createLogger (config: Pick<Config, 'logLevel' | 'logPretty'>): Logger {
  return pino(loggerOptions(config))
}
