// The service's entry point: read the configuration once, then serve in this
// process, or, with WEB_CONCURRENCY > 1, as the primary of a cluster.
//
// Everything that imports `pg` is imported dynamically, after tracing (when
// configured) has registered its module hook: an ES module import is
// instrumented only if the hook was there first.
import cluster from 'node:cluster'
import { checkServingConfig, ConfigError, loadConfig, type Config } from './config.js'
import { createLogger } from './logger.js'

let config: Config
try {
  config = loadConfig()
  checkServingConfig(config)
} catch (error) {
  if (!(error instanceof ConfigError)) throw error
  console.error(`invalid configuration: ${error.message}`)
  process.exit(1)
}

// Only a process that serves requests traces them (not a cluster's primary).
const serves = !(cluster.isPrimary && config.webConcurrency > 1)
if (serves && config.tracing !== undefined) (await import('./tracing/start.js')).startTracing(config.tracing)

const { checkCanListenOrExit } = await import('./startup.js')
// The primary binds for its workers too, so it checks for them; before
// anything starts a database or migrates one.
if (cluster.isPrimary) await checkCanListenOrExit(config)

const log = createLogger(config)
if (serves) {
  const { serve } = await import('./serve.js')
  await serve(config, log, { worker: cluster.isWorker })
} else {
  const { runPrimary } = await import('./primary.js')
  await runPrimary(config, log)
}
