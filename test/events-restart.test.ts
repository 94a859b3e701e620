// A service killed between a commit and its publish: the event waits in
// the outbox, and the next start publishes it. Spawned servers, so a file
// of its own (the in-process events tests are test/events.test.ts).
import t from 'tap'
import { createTestDatabase } from './helper.js'
import { spawnDist, type LogLine } from './spawn.js'
import { BROKER, brokerUrl, consume } from './support/rabbitmq.js'
import { TcpProxy } from './support/tcp-proxy.js'

t.test('a service killed between a commit and its publish sends the event on its next start', async (t) => {
  const consumer = await consume(t)
  const proxy = await TcpProxy.start(BROKER)
  t.teardown(() => proxy.close())
  const databaseUrl = await createTestDatabase(t)
  const env = {
    HOST: '127.0.0.1',
    PORT: '0',
    DATABASE_URL: databaseUrl,
    EVENTS_AMQP_URL: brokerUrl(proxy.port),
    EVENTS_EXCHANGE: consumer.exchange
  }
  const listening = (line: LogLine): boolean => /^Server listening at /.test(String(line.msg))

  // The broker unreachable: the commit happens, its publish cannot.
  proxy.cut()
  const first = spawnDist(t, 'server.js', env)
  const base = String((await first.waitForLine(listening, 'the first server listening')).msg).replace('Server listening at ', '')
  const response = await fetch(`${base}/api/users`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'survivor' })
  })
  t.equal(response.status, 201)
  const user = await response.json() as { id: number }
  first.child.kill('SIGKILL')
  await first.exitWithin(10_000)
  t.equal(consumer.received.length, 0, 'nothing was published before the kill')

  proxy.restore()
  const second = spawnDist(t, 'server.js', env)
  await second.waitForLine(listening, 'the second server listening')
  const [received] = await consumer.waitFor(1)
  t.match(received?.event, { type: 'user.created', subject: String(user.id), data: { id: user.id, name: 'survivor', version: 1 } })
  await second.waitForLine((line) => line.msg === 'connected to the events broker', 'the connection logged')
  t.notMatch(first.stdout() + second.stdout(), /guest:guest@/, 'the broker password is never logged')
  t.match(second.stdout(), /amqp:\/\/guest:\[redacted\]@127\.0\.0\.1/)
  second.child.kill('SIGTERM')
  t.equal((await second.exitWithin(20_000)).code, 0)
})
