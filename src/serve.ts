// One serving process: the whole service, or one worker of a cluster.
import closeWithGrace from 'close-with-grace'
import type { Logger } from 'pino'
import { buildApp } from './app.js'
import type { Config } from './config.js'
import { migrate, openDatabaseOrExit, whyCannotListen } from './startup.js'
import { reportStartupFailure } from './workers.js'

export interface ServeOptions {
  /**
   * A cluster worker: its primary forwards SIGTERM, which can then arrive
   * after a terminal's own SIGINT; that second signal must not cut the drain.
   */
  worker?: boolean
}

export async function serve (config: Config, log: Logger, options: ServeOptions = {}): Promise<void> {
  const database = await openDatabaseOrExit(config, log)
  const app = await buildApp({ ...config, databaseUrl: database.url }, { loggerInstance: log })

  async function stop (exitCode: number): Promise<never> {
    await app.close()
    await database.stop()
    process.exit(exitCode)
  }

  if (config.migrateOnStart && !(await migrate(config, database.url, log))) await stop(1)

  // Readiness turns 503 first (the preClose hook), then in-flight requests
  // finish, the pool closes, an embedded database stops, and the process
  // exits 0; past the grace, exit 1.
  closeWithGrace({
    delay: config.shutdownGraceMs,
    logger: app.log,
    ...(options.worker === true ? { onSecondSignal: (signal: string) => app.log.debug({ signal }, 'already shutting down') } : {})
  }, async ({ signal, err }) => {
    if (err !== undefined) app.log.error({ err }, 'shutting down after an unexpected error')
    else app.log.info({ signal }, 'shutting down')
    await app.close()
    await database.stop()
  })

  try {
    await app.listen({ host: config.host, port: config.port })
  } catch (error) {
    const reason = whyCannotListen(error, config)
    app.log.fatal({ code: (error as { code?: unknown }).code }, `cannot start: ${reason}`)
    if (options.worker === true) await reportStartupFailure(reason)
    await stop(1)
  }
}
