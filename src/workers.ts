// Keeps a cluster's workers running: a worker that crashes in service is
// replaced after a growing delay; a worker that never got as far as
// listening, or crashes that come too often, end the cluster instead, since
// a new worker would fail the same way.
import { once } from 'node:events'
import type { Logger } from 'pino'

/** What the primary needs of a worker (node:cluster's Worker has it all). */
export interface SupervisedWorker {
  readonly process: { readonly pid?: number | undefined }
  on: (event: 'listening' | 'message' | 'exit' | 'disconnect', listener: (...args: any[]) => void) => unknown
  isConnected: () => boolean
}

export interface RestartPolicy {
  /** Delay before the first replacement; it doubles with each recent crash. */
  firstDelayMs: number
  maxDelayMs: number
  /** More crashes than this within `windowMs` end the cluster. */
  maxCrashes: number
  windowMs: number
}

export const RESTART_POLICY: RestartPolicy = { firstDelayMs: 100, maxDelayMs: 10_000, maxCrashes: 5, windowMs: 60_000 }

/** How long the primary waits for a failed worker's last message once it has exited. */
const LAST_MESSAGE_WAIT_MS = 1_000

export interface SupervisorOptions {
  count: number
  fork: () => SupervisedWorker
  log: Logger
  /** Called once, when the workers cannot be kept running, with why. */
  onFailure: (reason: string) => void
  policy?: RestartPolicy
}

export interface Supervisor {
  /** Shutting down: exits from now on are expected, and nothing is replaced. */
  stop: () => void
}

interface StartupFailure {
  type: 'startup-failed'
  reason: string
}

/**
 * In a worker: tells the primary why this worker cannot start, before it
 * exits (the primary's log line then carries the reason).
 */
export async function reportStartupFailure (reason: string): Promise<void> {
  const message: StartupFailure = { type: 'startup-failed', reason }
  await new Promise<void>((resolve) => {
    if (process.send === undefined) resolve()
    else process.send(message, undefined, {}, () => resolve())
  })
}

function isStartupFailure (message: unknown): message is StartupFailure {
  return typeof message === 'object' && message !== null &&
    (message as StartupFailure).type === 'startup-failed' && typeof (message as StartupFailure).reason === 'string'
}

export function superviseWorkers (options: SupervisorOptions): Supervisor {
  const policy = options.policy ?? RESTART_POLICY
  let stopped = false
  let crashes: number[] = []
  const pendingRestarts = new Set<NodeJS.Timeout>()

  const fail = (reason: string): void => {
    if (stopped) return
    stopped = true
    for (const timer of pendingRestarts) clearTimeout(timer)
    options.onFailure(reason)
  }

  const start = (): void => {
    const worker = options.fork()
    let listened = false
    let reported: string | undefined
    worker.on('listening', () => { listened = true })
    worker.on('message', (message: unknown) => {
      if (isStartupFailure(message)) reported = message.reason
    })
    worker.on('exit', (code: number | null, signal: string | null) => {
      if (stopped) return
      const workerPid = worker.process.pid
      if (!listened) {
        // Its last message is read before the channel closes: wait for that.
        const closed = worker.isConnected() ? once(worker as unknown as NodeJS.EventEmitter, 'disconnect') : Promise.resolve()
        const waited = new Promise((resolve) => setTimeout(resolve, LAST_MESSAGE_WAIT_MS).unref())
        const giveUp = (): void => {
          fail(`a worker could not start: ${reported ?? `it exited with ${signal ?? `code ${code}`} before listening`}`)
        }
        Promise.race([closed, waited]).then(giveUp, giveUp)
        return
      }
      const now = Date.now()
      crashes = [...crashes.filter((at) => at > now - policy.windowMs), now]
      if (crashes.length > policy.maxCrashes) {
        fail(`workers crashed ${crashes.length} times within ${policy.windowMs / 1000} s`)
        return
      }
      const restartInMs = Math.min(policy.firstDelayMs * 2 ** (crashes.length - 1), policy.maxDelayMs)
      options.log.error({ workerPid, code, signal, restartInMs }, 'a worker exited; starting another')
      const timer = setTimeout(() => {
        pendingRestarts.delete(timer)
        if (!stopped) start()
      }, restartInMs)
      pendingRestarts.add(timer)
    })
  }

  for (let i = 0; i < options.count; i++) start()
  return {
    stop: () => {
      stopped = true
      for (const timer of pendingRestarts) clearTimeout(timer)
    }
  }
}
