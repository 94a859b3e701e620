// Runs the built entry points (dist/server.js, dist/migrate.js) as child
// processes, the way a container or a CI step starts them, and reads what
// they print. Every wait here is bounded so a test can never hang.
import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import type { Test } from 'tap'

const distDir = fileURLToPath(new URL('../dist/', import.meta.url))

/**
 * Event-loop load shedding answers 503 whenever the test machine itself is
 * busy (two test files in parallel on two cores, or a CI neighbour), which
 * no test but the load-shedding one is about: off unless a test sets it.
 */
export const QUIET_MACHINE_NOT_ASSUMED = { EVENT_LOOP_DELAY_MAX_MS: '0' }
/**
 * How long a spawned process gets to print an awaited line: a bound, not a
 * speed check. Start-up takes about a second here, but several times that
 * when both cores are busy with the rest of the suite.
 */
const LINE_WAIT_MS = 30_000

/** One line of the server's stdout: a pino JSON line, or `{ raw }` if not JSON. */
export interface LogLine {
  level?: number
  msg?: string
  raw?: string
  [key: string]: unknown
}

export interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
  /** Milliseconds from the spawn to the exit. */
  at: number
}

export interface Spawned {
  child: ChildProcess
  /** Every stdout line so far, in order. */
  lines: LogLine[]
  stdout: () => string
  stderr: () => string
  /** Settles once the process has exited and its output is fully read. */
  exited: Promise<Exit>
  /** The first line (already printed or yet to come) that matches. */
  waitForLine: (predicate: (line: LogLine) => boolean, what: string, ms?: number) => Promise<LogLine>
  /** The exit, or a rejection if the process is still running after `ms`. */
  exitWithin: (ms: number) => Promise<Exit>
}

/**
 * Rejects with a message naming `what` when `work` takes longer than `ms`
 * (`what` may be a function, to describe the state at the time it gives up).
 */
export async function within<T> (work: Promise<T>, ms: number, what: string | (() => string)): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => {
      reject(new Error(`not within ${ms} ms: ${typeof what === 'function' ? what() : what}`))
    }, ms)
  })
  try {
    return await Promise.race([work, timeout])
  } finally {
    clearTimeout(timer)
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

export interface SpawnOptions {
  /** Another copy of the project to run, from its own folder (default: this one's dist/). */
  project?: string
}

/**
 * Starts `node dist/<script>` with exactly `env` (plus PATH): nothing of the
 * test runner's environment leaks in, DATABASE_URL and NODE_OPTIONS included;
 * load shedding is off unless `env` sets it (QUIET_MACHINE_NOT_ASSUMED).
 * The child is killed when the test ends if it is still running.
 */
export function spawnDist (t: Test, script: 'server.js' | 'migrate.js' | 'healthcheck.js', env: Record<string, string>, options: SpawnOptions = {}): Spawned {
  const started = Date.now()
  const child = spawn(process.execPath, [options.project === undefined ? distDir + script : join(options.project, 'dist', script)], {
    env: { PATH: process.env.PATH ?? '', ...QUIET_MACHINE_NOT_ASSUMED, ...env },
    ...(options.project === undefined ? {} : { cwd: options.project }),
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const lines: LogLine[] = []
  const rawOut: string[] = []
  let err = ''
  let closed = false
  const listeners = new Set<(line: LogLine) => void>()
  const closeListeners = new Set<() => void>()

  child.stderr?.setEncoding('utf8')
  child.stderr?.on('data', (chunk: string) => { err += chunk })
  if (child.stdout !== null) {
    createInterface({ input: child.stdout }).on('line', (text) => {
      rawOut.push(text)
      let line: LogLine
      try {
        const parsed: unknown = JSON.parse(text)
        line = typeof parsed === 'object' && parsed !== null ? parsed as LogLine : { raw: text }
      } catch {
        line = { raw: text }
      }
      lines.push(line)
      for (const listener of listeners) listener(line)
    })
  }

  const exited = new Promise<Exit>((resolve, reject) => {
    child.once('error', reject)
    child.once('close', (code, signal) => {
      closed = true
      for (const listener of closeListeners) listener()
      resolve({ code, signal, at: Date.now() - started })
    })
  })
  // Failures surface through `exitWithin` or `waitForLine`; never unhandled.
  exited.catch(() => {})

  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL')
      await within(exited, 5_000, 'the killed child to exit').catch(() => {})
    }
  })

  const stdout = (): string => rawOut.join('\n')
  const stderr = (): string => err

  function waitForLine (predicate: (line: LogLine) => boolean, what: string, ms = LINE_WAIT_MS): Promise<LogLine> {
    const found = lines.find(predicate)
    if (found !== undefined) return Promise.resolve(found)
    let onLine: ((line: LogLine) => void) | undefined
    let onClose: (() => void) | undefined
    const waiting = new Promise<LogLine>((resolve, reject) => {
      onLine = (line) => { if (predicate(line)) resolve(line) }
      onClose = () => reject(new Error(`the process exited before ${what}\nstdout:\n${stdout()}\nstderr:\n${stderr()}`))
      if (closed) onClose()
      listeners.add(onLine)
      closeListeners.add(onClose)
    })
    return within(waiting, ms, () => `${what}\nstdout so far:\n${stdout()}\nstderr so far:\n${stderr()}`).finally(() => {
      if (onLine !== undefined) listeners.delete(onLine)
      if (onClose !== undefined) closeListeners.delete(onClose)
    })
  }

  return {
    child,
    lines,
    stdout,
    stderr,
    exited,
    waitForLine,
    exitWithin: (ms) => within(exited, ms, `the ${script} process to exit`)
  }
}
