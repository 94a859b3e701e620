// WEB_CONCURRENCY > 1: a primary process that migrates once, then runs that
// many workers sharing the port (node:cluster), for a single machine with
// several cores. In Kubernetes, scale by replicas instead and keep it at 1.
import cluster, { type Worker } from 'node:cluster'
import type { Logger } from 'pino'
import type { Config } from './config.js'
import { migrate, openDatabaseOrExit } from './startup.js'
import { superviseWorkers } from './workers.js'

export async function runPrimary (config: Config, log: Logger): Promise<void> {
  const database = await openDatabaseOrExit(config, log)
  if (config.migrateOnStart && !(await migrate(config, database.url, log))) {
    await database.stop()
    process.exit(1)
  }

  // Workers get the resolved database (an embedded one included) and do not
  // migrate again.
  const workerEnv = { DATABASE_URL: database.url, MIGRATE_ON_START: 'false' }
  let stopping = false

  /**
   * Stops every worker (each drains within the grace), then the database,
   * and exits: `exitCode`, or 1 if a worker failed its drain.
   */
  const stopAll = (exitCode: number): void => {
    if (stopping) return
    stopping = true
    supervisor.stop()
    const workers = Object.values(cluster.workers ?? {}).filter((worker): worker is Worker => worker !== undefined)
    let failedDrains = 0
    for (const worker of workers) {
      worker.once('exit', (code: number | null) => { if (code !== 0) failedDrains++ })
      worker.process.kill('SIGTERM')
    }
    // Each worker drains within the grace; this bounds the primary too.
    const deadline = setTimeout(() => {
      log.error('workers did not stop within the grace; exiting')
      process.exit(1)
    }, config.shutdownGraceMs + 1_000)
    deadline.unref()
    Promise.all(workers.map((worker) => new Promise((resolve) => {
      if (worker.isDead()) resolve(undefined)
      else worker.once('exit', resolve)
    }))).then(async () => {
      await database.stop()
      process.exit(failedDrains === 0 ? exitCode : 1)
    }, () => process.exit(1))
  }

  const supervisor = superviseWorkers({
    count: config.webConcurrency,
    fork: () => cluster.fork(workerEnv),
    log,
    onFailure: (reason) => {
      log.fatal(`${reason}; stopping`)
      stopAll(1)
    }
  })
  log.info({ workers: config.webConcurrency }, 'cluster started')

  const shutDown = (signal: NodeJS.Signals): void => {
    if (stopping) return
    log.info({ signal }, 'shutting down the workers')
    stopAll(0)
  }
  process.on('SIGTERM', shutDown)
  process.on('SIGINT', shutDown)
}
