// The outbox relay: takes committed events from the outbox and publishes
// them to RabbitMQ, marking each sent only once the broker confirmed it.
// Delivery is at least once (an event whose confirm was lost goes again,
// with the same id); consumers deduplicate by the CloudEvents id.
//
// Behind a transaction-mode PgBouncer too: no session state (no advisory
// lock, no LISTEN). Each round is one transaction that claims a batch with
// FOR UPDATE SKIP LOCKED, so relays of several replicas share the work
// without sending an event twice in normal operation.
import { setTimeout as sleep } from 'node:timers/promises'
import amqp, { type ChannelModel, type ConfirmChannel } from 'amqplib'
import type pg from 'pg'
import { claimEvents, markSent, pruneSent, type OutboxEvent } from './outbox.js'

export interface RelayOptions {
  /** The relay's own connections: never the requests' pool. */
  pool: pg.Pool
  amqpUrl: string
  exchange: string
  /** The CloudEvents `source` of every event. */
  source: string
  pollIntervalMs: number
  retentionSeconds: number
  log: RelayLog
  /** Counts for /metrics (published, failed). */
  onPublished?: (count: number) => void
  onPublishFailed?: (count: number) => void
}

export interface RelayLog {
  info: (details: Record<string, unknown>, message: string) => void
  warn: (details: Record<string, unknown>, message: string) => void
}

/** Events claimed per round (a user's at most one: see outbox.ts's claim). */
const BATCH_SIZE = 100
/** A publish the broker has not confirmed by then counts as failed (it may still arrive: at least once). */
export const CONFIRM_TIMEOUT_MS = 2_000
/** Bounds opening the broker connection, so a black-holed broker is a failure, not a hang. */
const CONNECT_TIMEOUT_MS = 2_000
/** After a failure the relay waits this long, doubled each time up to the maximum. */
const BACKOFF_FIRST_MS = 100
const BACKOFF_MAX_MS = 5_000
/** Pruning runs every tenth of the retention, at least every minute and at most every second. */
const PRUNE_INTERVAL_MIN_MS = 1_000
const PRUNE_INTERVAL_MAX_MS = 60_000
const PRUNE_BATCH = 1_000
/** How long stopping may go on publishing what is left. */
const FLUSH_TIMEOUT_MS = 2_000
const CONTENT_TYPE = 'application/cloudevents+json'

/** The broker failed (as opposed to the database): the connection is dropped and opened anew. */
class BrokerError extends Error {
  override name = 'BrokerError'
}

/** A CloudEvents 1.0 event in structured JSON mode. */
export interface CloudEvent {
  specversion: '1.0'
  id: string
  source: string
  type: string
  time: string
  subject: string
  datacontenttype: 'application/json'
  /** The user's version after the change: consumers order a user's events by it and drop stale ones. */
  userversion: number
  traceparent?: string
  data: Record<string, unknown>
}

export function cloudEventOf (event: OutboxEvent, source: string): CloudEvent {
  return {
    specversion: '1.0',
    id: event.eventId,
    source,
    type: event.type,
    time: event.time,
    subject: String(event.userId),
    datacontenttype: 'application/json',
    userversion: event.userVersion,
    ...(event.traceparent === null ? {} : { traceparent: event.traceparent }),
    data: event.data
  }
}

/** The URL with its password replaced, for log lines. */
export function redactedUrl (url: string): string {
  const parsed = new URL(url)
  if (parsed.password !== '') parsed.password = '***'
  return parsed.toString()
}

export class OutboxRelay {
  private connection: ChannelModel | undefined
  private channel: ConfirmChannel | undefined
  private stopping = false
  private loop: Promise<void> | undefined
  private wakeUp: (() => void) | undefined
  private wokenEarly = false
  private lastPrune = 0
  /** Whether the last round failed: a failure is logged once per outage, recovery once. */
  private failing = false

  constructor (private readonly options: RelayOptions) {}

  start (): void {
    this.loop ??= this.run()
  }

  /** Something was committed here: look now rather than at the next poll. */
  wake (): void {
    this.wokenEarly = true
    this.wakeUp?.()
  }

  /**
   * Stops the loop, then publishes what is left for a short while (the
   * events of requests answered just before), and closes the connection.
   * What cannot go now stays in the outbox for the next start or replica.
   */
  async stop (): Promise<void> {
    this.stopping = true
    this.wakeUp?.()
    await this.loop
    const deadline = Date.now() + FLUSH_TIMEOUT_MS
    try {
      while (this.channel !== undefined && Date.now() < deadline) {
        if (await this.relayBatch(this.channel) === 0) break
      }
    } catch (error) {
      this.options.log.warn({ err: error }, 'events left in the outbox at shutdown; the next relay sends them')
    }
    await this.disconnect()
  }

  private async run (): Promise<void> {
    let backoffMs = BACKOFF_FIRST_MS
    while (!this.stopping) {
      let sent: number
      try {
        sent = await this.relayBatch(await this.connected())
        await this.pruneNow()
      } catch (error) {
        this.options.log.warn({ err: error, retryInMs: backoffMs }, this.failing
          ? 'relaying events still fails; they wait in the outbox'
          : 'relaying events failed; they wait in the outbox')
        this.failing = true
        if (error instanceof BrokerError || this.channel === undefined) await this.disconnect()
        // A commit does not cut the pause short: a broker that is down is not hammered.
        await this.pause(backoffMs, false)
        backoffMs = Math.min(backoffMs * 2, BACKOFF_MAX_MS)
        continue
      }
      if (this.failing) this.options.log.info({ exchange: this.options.exchange }, 'relaying events again')
      this.failing = false
      backoffMs = BACKOFF_FIRST_MS
      // After a batch, look again at once: a user's next event became
      // claimable only now, and more may be waiting.
      if (sent === 0) await this.pause(this.options.pollIntervalMs, true)
    }
  }

  /** Waits `ms`, or less if stopping (or, when `wakeable`, a commit) comes first. */
  private async pause (ms: number, wakeable: boolean): Promise<void> {
    if (this.stopping) return
    if (wakeable && this.wokenEarly) {
      this.wokenEarly = false
      return
    }
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer)
        resolve()
      }
      const timer = setTimeout(done, ms)
      this.wakeUp = () => { if (wakeable || this.stopping) done() }
    })
    this.wakeUp = undefined
    if (wakeable) this.wokenEarly = false
  }

  private async connected (): Promise<ConfirmChannel> {
    if (this.channel !== undefined) return this.channel
    let connection: ChannelModel
    try {
      connection = await amqp.connect(this.options.amqpUrl, { timeout: CONNECT_TIMEOUT_MS })
    } catch (error) {
      throw new BrokerError(`cannot connect to ${redactedUrl(this.options.amqpUrl)}`, { cause: error })
    }
    // Without listeners these would end the process; the next round reconnects.
    connection.on('error', () => {})
    connection.on('close', () => {
      if (this.connection === connection) this.forget()
    })
    this.connection = connection
    try {
      const channel = await connection.createConfirmChannel()
      channel.on('error', () => {})
      channel.on('close', () => {
        if (this.channel === channel) this.forget()
      })
      await channel.assertExchange(this.options.exchange, 'topic', { durable: true })
      this.channel = channel
      this.options.log.info({ broker: redactedUrl(this.options.amqpUrl), exchange: this.options.exchange }, 'connected to the events broker')
      return channel
    } catch (error) {
      throw new BrokerError(`cannot use exchange ${this.options.exchange}`, { cause: error })
    }
  }

  private forget (): void {
    this.channel = undefined
    const connection = this.connection
    this.connection = undefined
    connection?.close().catch(() => {})
  }

  private async disconnect (): Promise<void> {
    const connection = this.connection
    this.channel = undefined
    this.connection = undefined
    if (connection === undefined) return
    // A stalled broker would never answer the close: bounded, then the socket goes.
    const closed = await Promise.race([connection.close().then(() => true, () => true), sleep(CONNECT_TIMEOUT_MS, false)])
    if (!closed) (connection.connection as unknown as { stream?: { destroy: () => void } }).stream?.destroy()
  }

  /**
   * One round: claims a batch, publishes it, and marks sent what the broker
   * confirmed, all in one transaction (the claimed rows stay locked until
   * it ends). Returns how many events were claimed.
   */
  private async relayBatch (channel: ConfirmChannel): Promise<number> {
    const client = await this.options.pool.connect()
    let broken = false
    try {
      await client.query('BEGIN')
      const events = await claimEvents(client, BATCH_SIZE)
      if (events.length === 0) {
        await client.query('COMMIT')
        return 0
      }
      const outcomes = await this.publish(channel, events)
      const confirmed = events.filter((_event, index) => outcomes[index] === true).map((event) => event.id)
      if (confirmed.length > 0) await markSent(client, confirmed)
      await client.query('COMMIT')
      if (confirmed.length > 0) this.options.onPublished?.(confirmed.length)
      const failed = events.length - confirmed.length
      if (failed > 0) {
        this.options.onPublishFailed?.(failed)
        throw new BrokerError(`the broker did not confirm ${failed} of ${events.length} events`)
      }
      return events.length
    } catch (error) {
      if (!(error instanceof BrokerError)) {
        broken = await client.query('ROLLBACK').then(() => false, () => true)
      }
      throw error
    } finally {
      client.release(broken)
    }
  }

  /** Publishes every event; resolves with which ones the broker confirmed in time. */
  private async publish (channel: ConfirmChannel, events: OutboxEvent[]): Promise<boolean[]> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<false>((resolve) => { timer = setTimeout(() => resolve(false), CONFIRM_TIMEOUT_MS) })
    const confirms = events.map((event) => new Promise<boolean>((resolve) => {
      const cloudEvent = cloudEventOf(event, this.options.source)
      try {
        channel.publish(this.options.exchange, event.type, Buffer.from(JSON.stringify(cloudEvent)), {
          persistent: true,
          messageId: cloudEvent.id,
          contentType: CONTENT_TYPE,
          type: event.type,
          timestamp: Math.floor(Date.parse(event.time) / 1000)
        }, (error) => resolve(error === null || error === undefined))
      } catch {
        // The channel closed under us.
        resolve(false)
      }
    }))
    try {
      return await Promise.all(confirms.map((confirm) => Promise.race([confirm, timeout])))
    } finally {
      clearTimeout(timer)
    }
  }

  private async pruneNow (): Promise<void> {
    const interval = Math.min(Math.max(this.options.retentionSeconds * 100, PRUNE_INTERVAL_MIN_MS), PRUNE_INTERVAL_MAX_MS)
    if (Date.now() - this.lastPrune < interval) return
    this.lastPrune = Date.now()
    let pruned = 0
    for (let deleted = PRUNE_BATCH; deleted === PRUNE_BATCH && !this.stopping;) {
      deleted = await pruneSent(this.options.pool, this.options.retentionSeconds, PRUNE_BATCH)
      pruned += deleted
    }
    if (pruned > 0) this.options.log.info({ pruned }, 'pruned sent events past their retention')
  }
}
