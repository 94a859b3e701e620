// WEB_CONCURRENCY > 1: a primary process that migrates once, then runs that
// many workers sharing the port (node:cluster), for a single machine with
// several cores. In Kubernetes, scale by replicas instead and keep it at 1.
import cluster, { type Worker } from 'node:cluster'
import type { Logger } from 'pino'
import type { Config } from './config.js'
import { migrate, openDatabaseOrExit } from './startup.js'

export async function runPrimary (config: Config, log: Logger): Promise<void> {
  const database = await openDatabaseOrExit(config, log)
  if (config.migrateOnStart && !(await migrate(config, database.url, log))) {
    await database.stop()
    process.exit(1)
  }

  // Workers get the resolved database (an embedded one included) and do not
  // migrate again.
  const workerEnv = { DATABASE_URL: database.url, MIGRATE_ON_START: 'false' }
  let shuttingDown = false
  let failures = 0

  const fork = (): Worker => cluster.fork(workerEnv)
  cluster.on('exit', (worker, code, signal) => {
    if (code !== 0) failures++
    if (shuttingDown) return
    // A worker that dies on its own is replaced, not mourned.
    log.error({ pid: worker.process.pid, code, signal }, 'a worker exited; starting another')
    fork()
  })
  for (let i = 0; i < config.webConcurrency; i++) fork()
  log.info({ workers: config.webConcurrency }, 'cluster started')

  const shutDown = (signal: NodeJS.Signals): void => {
    if (shuttingDown) return
    shuttingDown = true
    log.info({ signal }, 'shutting down the workers')
    const workers = Object.values(cluster.workers ?? {}).filter((worker): worker is Worker => worker !== undefined)
    for (const worker of workers) worker.process.kill('SIGTERM')
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
      process.exit(failures === 0 ? 0 : 1)
    }, () => process.exit(1))
  }
  process.on('SIGTERM', shutDown)
  process.on('SIGINT', shutDown)
}
