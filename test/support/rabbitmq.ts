// The machine's RabbitMQ (127.0.0.1:5672, guest/guest) for the events
// tests: an exchange of each test's own, and a consumer bound to it.
import { randomBytes } from 'node:crypto'
import amqp, { type ConsumeMessage } from 'amqplib'
import type { Test } from 'tap'
import { within } from '../spawn.js'

export const BROKER = { host: '127.0.0.1', port: 5672 }
export const brokerUrl = (port = BROKER.port): string => `amqp://guest:guest@127.0.0.1:${port}`
/** A bound on waiting for events, not a speed check. */
export const ARRIVAL_WAIT_MS = 30_000

export interface Received {
  routingKey: string
  properties: ConsumeMessage['properties']
  event: Record<string, any>
}

export interface Consumer {
  exchange: string
  received: Received[]
  /** Resolves once `count` events have arrived (more may follow). */
  waitFor: (count: number) => Promise<Received[]>
}

/**
 * An exchange of the test's own and a consumer bound to all its events,
 * both gone when the test ends.
 */
export async function consume (t: Test, exchange = `users_test_${randomBytes(6).toString('hex')}`): Promise<Consumer> {
  const connection = await amqp.connect(brokerUrl())
  const channel = await connection.createChannel()
  await channel.assertExchange(exchange, 'topic', { durable: true })
  const { queue } = await channel.assertQueue('', { exclusive: true, autoDelete: true })
  await channel.bindQueue(queue, exchange, 'user.*')
  const received: Received[] = []
  await channel.consume(queue, (message) => {
    if (message === null) return
    received.push({ routingKey: message.fields.routingKey, properties: message.properties, event: JSON.parse(message.content.toString('utf8')) })
  }, { noAck: true })
  t.teardown(async () => {
    await channel.deleteExchange(exchange)
    await connection.close()
  })
  async function waitFor (count: number): Promise<Received[]> {
    await within((async () => {
      while (received.length < count) await new Promise((resolve) => setTimeout(resolve, 20))
    })(), ARRIVAL_WAIT_MS, () => `${count} events (${received.length} arrived)`)
    return received
  }
  return { exchange, received, waitFor }
}
