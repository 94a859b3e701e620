// The slow-client limits the README promises, on real sockets and at their
// real values: a request's headers within 10 s, the whole request within
// 30 s. The three clients run side by side, so the file takes about 31 s.
import { connect, type AddressInfo } from 'node:net'
import t from 'tap'
import { buildTestApp } from './helper.js'
import { within } from './spawn.js'

const HEADERS_LIMIT_S = 10
const REQUEST_LIMIT_S = 30
/** How late past its limit a connection may be closed. */
const SLACK_S = 2

interface Outcome {
  /** Seconds from the first byte sent to the server's close. */
  closedAfter: number
  received: string
}

/**
 * Opens a connection, sends `first`, then `drip` every `everyMs` (forever,
 * or until `drip` is empty), and reports when the server closes it.
 */
async function slowClient (port: number, first: string, drip: string, everyMs: number): Promise<Outcome> {
  const socket = connect(port, '127.0.0.1')
  socket.on('error', () => {})
  await new Promise((resolve) => socket.once('connect', resolve))
  const started = Date.now()
  let received = ''
  socket.on('data', (chunk: Buffer) => { received += chunk.toString('latin1') })
  socket.write(first)
  const timer = drip === '' ? undefined : setInterval(() => { if (socket.writable) socket.write(drip) }, everyMs)
  try {
    await within(new Promise((resolve) => socket.once('close', resolve)), (REQUEST_LIMIT_S + 10) * 1000, 'the server to close a slow connection')
  } finally {
    clearInterval(timer)
    socket.destroy()
  }
  return { closedAfter: (Date.now() - started) / 1000, received }
}

t.test('slow clients are cut off at the promised limits, and told so', async (t) => {
  const { app } = await buildTestApp(t)
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as AddressInfo

  const body = JSON.stringify({ name: 'x'.repeat(200) })
  const [byteByByte, silent, slowBody] = await Promise.all([
    // Headers that never end, a byte at a time.
    slowClient(port, 'GET /health/live HTTP/1.1\r\nHost: localhost\r\nX-Slow: ', 'a', 500),
    // A request line, then nothing.
    slowClient(port, 'GET /health/live HTTP/1.1\r\n', '', 0),
    // Headers at once, then a body at a few bytes a second.
    slowClient(port,
      `POST /api/users HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`,
      'x', 500)
  ])

  for (const [label, outcome, limit] of [
    ['headers sent byte by byte', byteByByte, HEADERS_LIMIT_S],
    ['silent after the request line', silent, HEADERS_LIMIT_S],
    ['a body trickled slowly', slowBody, REQUEST_LIMIT_S]
  ] as const) {
    t.ok(outcome.closedAfter >= limit - 1 && outcome.closedAfter <= limit + SLACK_S,
      `${label}: closed after ${outcome.closedAfter.toFixed(1)} s (limit ${limit} s)`)
    t.match(outcome.received, /^HTTP\/1\.1 408 /, `${label}: answered 408`)
    t.match(outcome.received, /"statusCode":408/, `${label}: in the contract's shape`)
  }
})
