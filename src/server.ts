// The service's entry point: read the configuration once, then serve in this
// process, or, with WEB_CONCURRENCY > 1, as the primary of a cluster.
import cluster from 'node:cluster'
import { checkServingConfig, ConfigError, loadConfig, type Config } from './config.js'
import { createLogger } from './logger.js'
import { runPrimary } from './primary.js'
import { serve } from './serve.js'
import { checkCanListenOrExit } from './startup.js'

let config: Config
try {
  config = loadConfig()
  checkServingConfig(config)
} catch (error) {
  if (!(error instanceof ConfigError)) throw error
  console.error(`invalid configuration: ${error.message}`)
  process.exit(1)
}

// The primary binds for its workers too, so it checks for them; before
// anything starts a database or migrates one.
if (cluster.isPrimary) await checkCanListenOrExit(config)

const log = createLogger(config)
if (cluster.isPrimary && config.webConcurrency > 1) await runPrimary(config, log)
else await serve(config, log, { worker: cluster.isWorker })
