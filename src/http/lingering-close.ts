import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'

// An early answer's connection keeps being read, and what arrives thrown
// away, for at most this long and this much; then it is closed whatever the
// client still sends. 16 MiB is a thousand times the body limit: room for a
// client that sends a file by mistake, little for one that means harm.
const LINGER_MAX_MS = 5_000
const LINGER_MAX_BYTES = 16 * 1024 * 1024

/** Has the request announced a body that has not all been read yet? */
export function bodyStillArriving (request: IncomingMessage): boolean {
  // `complete`: Node's parser has it all; `readableEnded`: it was all read
  // (what an injected request, which has no parser, can tell).
  if (request.complete || request.readableEnded) return false
  return request.headers['transfer-encoding'] !== undefined || Number(request.headers['content-length']) > 0
}

/**
 * Answers given while the body is still arriving (a 413, a 415, a URL the
 * router refuses) close the connection: keeping it would mean reading the
 * rest of the body, however long, before the next request. Closing at once
 * would lose the answer: the kernel resets a connection closed with unread
 * bytes, and the reset throws away the answer waiting in the client's
 * buffer, before a client that writes its whole body first (such as
 * Python's http.client) has read it.
 *
 * So the connection closes as nginx's "lingering close" does: the answer,
 * then our end of the connection (FIN), then reading and discarding
 * whatever the client still sends until it closes its end (having read the
 * answer), or LINGER_MAX_MS or LINGER_MAX_BYTES run out.
 *
 * Call it before the answer is sent; it marks the answer `Connection: close`.
 */
export function closeAfterDiscardingBody (request: IncomingMessage, response: ServerResponse): void {
  const socket = request.socket
  if (!response.headersSent) response.setHeader('connection', 'close')
  // Reading the body ourselves keeps bytes flowing and counts them.
  let discarded = 0
  request.on('data', (chunk: Buffer) => {
    discarded += chunk.length
    if (discarded > LINGER_MAX_BYTES) socket.destroy()
  })
  // Node's server ends a connection whose last answer is sent by calling
  // its destroySoon(), which would drop the unread bytes. This one socket
  // lingers instead, for the length of this answer.
  socket.destroySoon = () => linger(socket)
  response.once('finish', () => {
    // Node has called it by now, if it was going to.
    delete (socket as Partial<Socket>).destroySoon
  })
}

/** Ends our side after the answer, and destroys the socket once the client ends its side, or at the deadline. */
function linger (socket: Socket): void {
  socket.end()
  const deadline = setTimeout(() => socket.destroy(), LINGER_MAX_MS)
  socket.once('close', () => clearTimeout(deadline))
}
