// The cluster primary's supervision, with stand-in workers: which exits are
// replaced, after what delay, and which end the cluster.
import { EventEmitter } from 'node:events'
import { pino } from 'pino'
import t from 'tap'
import { superviseWorkers, type RestartPolicy } from '../src/workers.js'
import { sleep, within } from './spawn.js'

class FakeWorker extends EventEmitter {
  static nextPid = 1000
  readonly process = { pid: FakeWorker.nextPid++ }
  connected = true
  isConnected (): boolean {
    return this.connected
  }

  /** Exits the way a real worker's process does: the exit, then the channel closes. */
  exit (code: number | null, signal: string | null = null): void {
    this.emit('exit', code, signal)
    setImmediate(() => {
      this.connected = false
      this.emit('disconnect')
    })
  }
}

/** Delays short enough for a test, the same shape as the real policy. */
const QUICK: RestartPolicy = { firstDelayMs: 20, maxDelayMs: 80, maxCrashes: 3, windowMs: 60_000 }

/** A supervisor over stand-in workers, with what it forked, logged and gave up on. */
function supervise (count: number, policy = QUICK) {
  const workers: FakeWorker[] = []
  const logged: Array<Record<string, unknown>> = []
  const log = pino({ level: 'info' }, { write: (line: string) => { logged.push(JSON.parse(line)) } })
  let failure: string | undefined
  let onFailure: (reason: string) => void = () => {}
  const failed = new Promise<string>((resolve) => { onFailure = resolve })
  const supervisor = superviseWorkers({
    count,
    policy,
    log,
    fork: () => {
      const worker = new FakeWorker()
      workers.push(worker)
      return worker
    },
    onFailure: (reason) => {
      failure = reason
      onFailure(reason)
    }
  })
  return { workers, logged, failed, failure: () => failure, supervisor }
}

t.test('a worker that exits before it ever listened ends the cluster with its reason, and is not replaced', async (t) => {
  const cluster = supervise(2)
  t.equal(cluster.workers.length, 2, 'two workers forked')
  const [first] = cluster.workers as [FakeWorker]
  first.emit('message', { type: 'startup-failed', reason: 'PORT 3000 is already in use on 0.0.0.0' })
  first.exit(1)
  const reason = await within(cluster.failed, 2_000, 'the cluster to give up')
  t.equal(reason, 'a worker could not start: PORT 3000 is already in use on 0.0.0.0')
  await sleep(200)
  t.equal(cluster.workers.length, 2, 'no worker was started in its place')
  t.same(cluster.logged, [], 'and none was announced')
})

t.test('its last message counts even when the exit is seen first', async (t) => {
  const cluster = supervise(1)
  const [worker] = cluster.workers as [FakeWorker]
  worker.emit('exit', 1, null)
  worker.emit('message', { type: 'startup-failed', reason: 'HOST db.internal is not an address of this machine' })
  worker.connected = false
  worker.emit('disconnect')
  t.equal(await within(cluster.failed, 2_000, 'the cluster to give up'), 'a worker could not start: HOST db.internal is not an address of this machine')
})

t.test('a worker that dies before listening without a word is reported by its exit', async (t) => {
  const cluster = supervise(2)
  ;(cluster.workers[1] as FakeWorker).exit(null, 'SIGKILL')
  t.equal(await within(cluster.failed, 2_000, 'the cluster to give up'), 'a worker could not start: it exited with SIGKILL before listening')
})

t.test('a crash in service is replaced after a delay that doubles with each recent crash', async (t) => {
  const cluster = supervise(2)
  for (const worker of cluster.workers) worker.emit('listening')
  for (let crash = 1; crash <= 3; crash++) {
    const before = cluster.workers.length
    const victim = cluster.workers[before - 1] as FakeWorker
    victim.emit('listening')
    victim.exit(null, 'SIGKILL')
    const line = cluster.logged.at(-1)
    t.match(line, { msg: 'a worker exited; starting another', workerPid: victim.process.pid, signal: 'SIGKILL', restartInMs: Math.min(20 * 2 ** (crash - 1), 80) }, `crash ${crash}`)
    t.not(line?.pid, victim.process.pid, 'pino\'s own pid stays the primary\'s')
    t.equal(cluster.workers.length, before, 'not replaced at once')
    await within((async () => { while (cluster.workers.length === before) await sleep(5) })(), 2_000, 'the replacement')
  }
  t.equal(cluster.failure(), undefined, 'three crashes are within the limit')
})

t.test('more crashes than the limit within the window end the cluster', async (t) => {
  const cluster = supervise(1, { ...QUICK, firstDelayMs: 1, maxDelayMs: 1 })
  for (let crash = 1; crash <= 4; crash++) {
    const worker = cluster.workers.at(-1) as FakeWorker
    worker.emit('listening')
    worker.exit(1)
    if (crash < 4) await within((async () => { while (cluster.workers.length === crash) await sleep(2) })(), 2_000, 'the replacement')
  }
  t.equal(await within(cluster.failed, 2_000, 'the cluster to give up'), 'workers crashed 4 times within 60 s')
  await sleep(50)
  t.equal(cluster.workers.length, 4, 'no fifth worker')
})

t.test('after stop, exits are expected: nothing is replaced or reported', async (t) => {
  const cluster = supervise(2)
  const [first, second] = cluster.workers as [FakeWorker, FakeWorker]
  first.emit('listening')
  first.exit(null, 'SIGKILL')
  cluster.supervisor.stop()
  second.exit(0)
  await sleep(100)
  t.equal(cluster.workers.length, 2, 'the pending restart was cancelled')
  t.equal(cluster.failure(), undefined, 'a worker that stopped before listening is no failure then')
})
