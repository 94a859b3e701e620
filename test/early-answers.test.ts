// Answers given before a request's body has arrived (413 for a body over the
// limit, 415, a URL the router refuses), seen the way clients fail on them:
// real sockets, bodies of megabytes, and a client that writes the whole body
// before it reads, as Python's http.client (and so `requests`) does.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { connect, type AddressInfo, type Socket } from 'node:net'
import t, { type Test } from 'tap'
import { buildTestApp } from './helper.js'
import { within } from './spawn.js'

const MIB = 1024 * 1024
/** A JSON body far over the limit: `{"name":"xxx…"}`, 8 MiB of name. */
const hugeJson = Buffer.from(JSON.stringify({ name: 'x'.repeat(8 * MIB) }))
const WRITE_CHUNK = 64 * 1024

type Framing = 'content-length' | 'chunked'

interface Exchange {
  /** The answer's status, if one was read. */
  status?: number
  head: string
  body: string
  /** What went wrong: a write that failed, or a read cut off. */
  error?: string
  /** Body bytes the client managed to write. */
  written: number
}

function chunksOf (body: Buffer, framing: Framing): Buffer[] {
  const chunks: Buffer[] = []
  for (let at = 0; at < body.length; at += WRITE_CHUNK) {
    const piece = body.subarray(at, at + WRITE_CHUNK)
    chunks.push(framing === 'chunked'
      ? Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n')])
      : piece)
  }
  if (framing === 'chunked') chunks.push(Buffer.from('0\r\n\r\n'))
  return chunks
}

function write (socket: Socket, chunk: Buffer | string): Promise<void> {
  return new Promise((resolve, reject) => socket.write(chunk, (error) => { if (error) reject(error); else resolve() }))
}

function parse (text: string): Pick<Exchange, 'status' | 'head' | 'body'> {
  const split = text.indexOf('\r\n\r\n')
  const head = split < 0 ? text : text.slice(0, split)
  const status = /^HTTP\/1\.1 (\d{3})/.exec(head)?.[1]
  return { status: status === undefined ? undefined : Number(status), head, body: split < 0 ? '' : text.slice(split + 4) }
}

/** Has `text` one whole answer, by its Content-Length? */
function answered (text: string): boolean {
  const { head, body } = parse(text)
  const length = /\r\ncontent-length: *(\d+)/i.exec(head)?.[1]
  return length !== undefined && Buffer.byteLength(body, 'latin1') >= Number(length)
}

/**
 * Sends one request on a fresh connection, writing all of its body before
 * reading anything, then reads until the server closes. A write that fails
 * (the server reset the connection) ends the exchange there, as it does for
 * such clients: whatever answer the server had sent is never read.
 */
async function writeThenRead (port: number, method: string, path: string, body: Buffer, framing: Framing,
  headers = 'Content-Type: application/json\r\n'): Promise<Exchange> {
  const socket = connect(port, '127.0.0.1')
  socket.setTimeout(10_000, () => socket.destroy(new Error('no progress for 10 s')))
  // Failures surface through the writes' callbacks and the read below.
  socket.on('error', () => {})
  let written = 0
  try {
    await once(socket, 'connect')
    const length = framing === 'chunked' ? 'Transfer-Encoding: chunked' : `Content-Length: ${body.length}`
    await write(socket, `${method} ${path} HTTP/1.1\r\nHost: localhost\r\n${headers}${length}\r\n\r\n`)
    for (const chunk of chunksOf(body, framing)) {
      await write(socket, chunk)
      written += chunk.length
    }
  } catch (error) {
    socket.destroy()
    return { head: '', body: '', error: `write: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, written }
  }
  let text = ''
  try {
    for await (const chunk of socket) {
      text += (chunk as Buffer).toString('latin1')
      if (answered(text)) break
    }
  } catch (error) {
    return { ...parse(text), error: `read: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, written }
  }
  socket.destroy()
  return { ...parse(text), written }
}

// Python's http.client sends the whole body, then reads the answer.
const PYTHON_CLIENT = `
import http.client, json, sys
port, method, path, framing, size = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
body = b'{"name":"' + b'x' * size + b'"}'
connection = http.client.HTTPConnection('127.0.0.1', int(port), timeout=10)
headers = {'Content-Type': 'application/json'}
try:
    if framing == 'chunked':
        pieces = (body[at:at + 65536] for at in range(0, len(body), 65536))
        connection.request(method, path, body=pieces, headers=headers, encode_chunked=True)
    else:
        connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    print(json.dumps({'status': response.status, 'body': response.read().decode('utf-8')}))
except Exception as error:
    print(json.dumps({'error': type(error).__name__ + ': ' + str(error)}))
`

async function pythonRequest (port: number, method: string, path: string, framing: Framing): Promise<{ status?: number, body?: string, error?: string }> {
  const child = spawn('python3', ['-c', PYTHON_CLIENT, String(port), method, path, framing, String(8 * MIB)], {
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let out = ''
  let err = ''
  child.stdout.on('data', (chunk: Buffer) => { out += String(chunk) })
  child.stderr.on('data', (chunk: Buffer) => { err += String(chunk) })
  try {
    await within(once(child, 'close'), 20_000, `python3 ${method} ${path} ${framing} to finish`)
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  }
  try {
    return JSON.parse(out)
  } catch {
    return { error: `python3 printed ${JSON.stringify(out)}, stderr ${JSON.stringify(err)}` }
  }
}

const ROUTES = [['POST', '/api/users'], ['PATCH', '/api/users/1'], ['POST', '/api/user']] as const
const FRAMINGS: Framing[] = ['content-length', 'chunked']

async function listeningApp (t: Test): Promise<number> {
  const { app } = await buildTestApp(t)
  await app.listen({ host: '127.0.0.1', port: 0 })
  return (app.server.address() as AddressInfo).port
}

t.test('a body over the limit gets a 413 that a client writing its whole body first can read', async (t) => {
  const port = await listeningApp(t)
  for (const [method, path] of ROUTES) {
    for (const framing of FRAMINGS) {
      const label = `${method} ${path}, ${framing}`
      const exchange = await writeThenRead(port, method, path, hugeJson, framing)
      t.equal(exchange.error, undefined, `${label}: no reset`)
      t.equal(exchange.status, 413, label)
      t.match(exchange.head, /\r\nconnection: close/i, `${label}: the server says it closes`)
      t.match(JSON.parse(exchange.body || '{}'), { statusCode: 413, error: 'Payload Too Large' }, label)
    }
  }
})

t.test('Python\'s http.client sees the 413, not a BrokenPipeError', async (t) => {
  const port = await listeningApp(t)
  for (const [method, path] of ROUTES) {
    for (const framing of FRAMINGS) {
      const label = `${method} ${path}, ${framing}`
      const result = await pythonRequest(port, method, path, framing)
      t.equal(result.error, undefined, `${label}: no error`)
      t.equal(result.status, 413, label)
      t.match(JSON.parse(result.body ?? '{}'), { statusCode: 413, error: 'Payload Too Large' }, label)
    }
  }
})

t.test('other answers given before a large body arrives are readable too', async (t) => {
  const port = await listeningApp(t)
  for (const framing of FRAMINGS) {
    const notJson = await writeThenRead(port, 'POST', '/api/users', hugeJson, framing, 'Content-Type: text/plain\r\n')
    t.equal(notJson.error, undefined, `415, ${framing}: no reset`)
    t.equal(notJson.status, 415, `text/plain, ${framing}`)
    t.match(JSON.parse(notJson.body || '{}'), { statusCode: 415, message: /Content-Type/ })

    const gzipped = await writeThenRead(port, 'POST', '/api/users', hugeJson, framing,
      'Content-Type: application/json\r\nContent-Encoding: gzip\r\n')
    t.equal(gzipped.error, undefined, `415 for gzip, ${framing}: no reset`)
    t.equal(gzipped.status, 415, `Content-Encoding: gzip, ${framing}`)
    t.match(JSON.parse(gzipped.body || '{}'), { statusCode: 415, message: /Content-Encoding/ })

    const badUrl = await writeThenRead(port, 'PATCH', '/api/users/%zz', hugeJson, framing)
    t.equal(badUrl.error, undefined, `router 400, ${framing}: no reset`)
    t.equal(badUrl.status, 400, `malformed URL, ${framing}`)
    t.match(JSON.parse(badUrl.body || '{}'), { statusCode: 400, message: /percent-encoding/ })
  }
})

t.test('a client that keeps sending after the answer is cut off, in bytes and in time', async (t) => {
  const port = await listeningApp(t)

  // Far more than the server discards: the connection must end long before.
  const endless = Buffer.alloc(128 * MIB, 'x')
  const flood = await within(writeThenRead(port, 'POST', '/api/users', endless, 'content-length'), 30_000, 'the flood to be cut off')
  t.match(flood.error, /^write: /, 'the server stopped reading')
  t.ok(flood.written < 64 * MIB, `cut off after ${(flood.written / MIB).toFixed(1)} MiB`)

  // A trickle that never ends, and goes on after the server has ended its
  // side: it gets the answer at once, and the connection is closed a few
  // seconds later.
  const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true })
  socket.on('error', () => {})
  await once(socket, 'connect')
  const started = Date.now()
  let received = ''
  socket.on('data', (chunk: Buffer) => { received += chunk.toString('latin1') })
  socket.write(`POST /api/users HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${MIB}\r\n\r\n{"name":"`)
  const trickle = setInterval(() => { if (socket.writable) socket.write('x'.repeat(100)) }, 100)
  t.teardown(() => { clearInterval(trickle); socket.destroy() })
  // (Not events.once: the writes that fail once it is closed emit 'error'.)
  await within(new Promise((resolve) => socket.once('close', resolve)), 20_000, 'the trickling connection to be closed')
  clearInterval(trickle)
  const seconds = (Date.now() - started) / 1000
  t.equal(parse(received).status, 413, 'the answer came')
  t.ok(seconds < 12, `closed after ${seconds.toFixed(1)} s`)
})

t.test('a body within the limit keeps its connection open for the next request', async (t) => {
  const port = await listeningApp(t)
  const socket = connect(port, '127.0.0.1')
  socket.setTimeout(5_000, () => socket.destroy(new Error('no answer within 5 s')))
  await once(socket, 'connect')
  const body = JSON.stringify({ name: 'Ada' })
  const request = `POST /api/users HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`
  let received = ''
  socket.on('data', (chunk: Buffer) => { received += chunk.toString('latin1') })
  socket.write(request + request.replace('Ada', 'Bob'))
  await within(new Promise<void>((resolve) => {
    const check = (): void => { if ((received.match(/HTTP\/1\.1 201/g) ?? []).length === 2) resolve() }
    socket.on('data', check)
  }), 5_000, 'two answers on one connection')
  t.notMatch(received, /connection: close/i)
  t.notOk(socket.destroyed, 'the connection is still open')
  socket.destroy()
})
