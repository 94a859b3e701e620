// A TCP proxy for tests that break the database connection on purpose.
// It sits between the app and PostgreSQL and can, at any moment:
//   cut()     reset every open connection at once, and reset new ones
//   stall()   keep every connection open but forward nothing either way
//   restore() forward normally again (stalled bytes then flow)
// Every socket has an 'error' listener: a fault the test made never turns
// into an unhandled 'error' event in the test process.
import { once } from 'node:events'
import net from 'node:net'

export type ProxyMode = 'forwarding' | 'cut' | 'stalled'

export interface ProxyTarget {
  host: string
  port: number
}

/** One client connection and its connection to the target. */
interface Pair {
  client: net.Socket
  upstream: net.Socket
  /** A direction waiting for 'drain' on its destination before it reads again. */
  blocked: { toUpstream: boolean, toClient: boolean }
}

export class TcpProxy {
  private readonly server: net.Server
  private readonly pairs = new Set<Pair>()
  private mode: ProxyMode = 'forwarding'
  private closed = false
  /** Connections accepted since the proxy started (reset ones included). */
  connectionsSeen = 0
  /** Connections reset because the proxy was cut. */
  connectionsReset = 0

  private constructor (private readonly target: ProxyTarget) {
    this.server = net.createServer((socket) => this.accept(socket))
    this.server.on('error', () => {})
  }

  /** A proxy listening on 127.0.0.1 (a free port) that forwards to `target`. */
  static async start (target: ProxyTarget): Promise<TcpProxy> {
    const proxy = new TcpProxy(target)
    proxy.server.listen(0, '127.0.0.1')
    await once(proxy.server, 'listening')
    return proxy
  }

  /** A proxy in front of the server of a libpq URL (`postgres://…@host:port/db`). */
  static async forUrl (databaseUrl: string): Promise<TcpProxy> {
    const url = new URL(databaseUrl)
    return await TcpProxy.start({ host: url.hostname, port: Number(url.port === '' ? 5432 : url.port) })
  }

  get port (): number {
    return (this.server.address() as net.AddressInfo).port
  }

  /** `databaseUrl` (same user, password, database) reached through the proxy. */
  url (databaseUrl: string): string {
    const url = new URL(databaseUrl)
    url.hostname = '127.0.0.1'
    url.port = String(this.port)
    return url.toString()
  }

  get state (): ProxyMode {
    return this.mode
  }

  /** Client connections currently open through the proxy. */
  get openConnections (): number {
    return this.pairs.size
  }

  /** Resets every open connection pair, and every new connection until restore(). */
  cut (): void {
    this.mode = 'cut'
    for (const pair of [...this.pairs]) this.drop(pair)
  }

  /** Forwards nothing either way until restore(); new connections are accepted and held. */
  stall (): void {
    if (this.mode === 'cut') return
    this.mode = 'stalled'
    for (const pair of this.pairs) {
      pair.client.pause()
      pair.upstream.pause()
    }
  }

  /** Forwards again; stalled pairs resume where they stopped. */
  restore (): void {
    this.mode = 'forwarding'
    for (const pair of this.pairs) this.resume(pair)
  }

  /** Stops listening and destroys every connection. Safe to call twice. */
  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.mode = 'cut'
    for (const pair of [...this.pairs]) this.drop(pair)
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }

  private accept (client: net.Socket): void {
    this.connectionsSeen++
    client.on('error', () => {})
    if (this.mode === 'cut' || this.closed) {
      this.connectionsReset++
      reset(client)
      return
    }
    const upstream = net.connect(this.target.port, this.target.host)
    upstream.on('error', () => {})
    const pair: Pair = { client, upstream, blocked: { toUpstream: false, toClient: false } }
    this.pairs.add(pair)

    if (this.mode === 'stalled') {
      client.pause()
      upstream.pause()
    }
    this.forward(pair, client, upstream, 'toUpstream')
    this.forward(pair, upstream, client, 'toClient')

    // A FIN is passed on as a FIN (bytes already written still arrive), an
    // error as a reset; the pair is forgotten once both sides are closed.
    client.once('end', () => upstream.end())
    upstream.once('end', () => client.end())
    const onClose = (other: net.Socket) => (hadError: boolean): void => {
      if (hadError) reset(other)
      else other.end()
      if (client.destroyed && upstream.destroyed) this.pairs.delete(pair)
    }
    client.once('close', onClose(upstream))
    upstream.once('close', onClose(client))
  }

  /** Copies `from` into `to`, pausing `from` while `to` is full or the proxy is stalled. */
  private forward (pair: Pair, from: net.Socket, to: net.Socket, direction: keyof Pair['blocked']): void {
    from.on('data', (chunk: Buffer) => {
      if (to.destroyed) return
      if (!to.write(chunk)) {
        pair.blocked[direction] = true
        from.pause()
        to.once('drain', () => {
          pair.blocked[direction] = false
          if (this.mode === 'forwarding') from.resume()
        })
      }
    })
  }

  private resume (pair: Pair): void {
    if (!pair.blocked.toUpstream) pair.client.resume()
    if (!pair.blocked.toClient) pair.upstream.resume()
  }

  private drop (pair: Pair): void {
    this.pairs.delete(pair)
    this.connectionsReset++
    reset(pair.client)
    reset(pair.upstream)
  }
}

/** Closes a socket with a TCP RST (as a cut cable or a killed host looks), else destroys it. */
function reset (socket: net.Socket): void {
  try {
    if (socket.connecting || socket.destroyed) socket.destroy()
    else socket.resetAndDestroy()
  } catch {
    socket.destroy()
  }
}
