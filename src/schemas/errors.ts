import { STATUS_CODES } from 'node:http'
import { Type, type Static, type TObject } from '@sinclair/typebox'

/** The body of every error the service answers, whatever the route. */
export const ErrorResponse = Type.Object({
  statusCode: Type.Integer({ examples: [400] }),
  error: Type.String({ examples: ['Bad Request'] }),
  message: Type.String({ examples: ['body/name is required'] })
}, { description: 'An error' })

export type ErrorBody = Static<typeof ErrorResponse>

// What each status means here, for the OpenAPI document.
const meanings: Record<number, string> = {
  400: 'Invalid input; the message names the field or header at fault',
  401: 'No bearer token, or one that is not valid (see WWW-Authenticate)',
  403: 'The bearer token lacks the scope this operation needs (see WWW-Authenticate)',
  404: 'No such user',
  409: 'The email is taken by another user (or, rarely, an Idempotency-Key is still in progress)',
  412: 'If-Match does not name the user\'s current ETag; nothing changed',
  413: 'The body is over 16 KiB',
  415: 'The body is not application/json',
  422: 'The Idempotency-Key was already used with a different request',
  429: 'Over the rate limit; retry after Retry-After seconds',
  500: 'A bug; the message says nothing of the internals',
  503: 'The database is unavailable, the change kept colliding with concurrent changes, the service is shutting down, or a token\'s signing key cannot be fetched; nothing was written; retry after Retry-After seconds'
}

function errorResponse (status: number): TObject {
  const schema: TObject = { ...ErrorResponse, description: `${STATUS_CODES[status] ?? 'Error'}: ${meanings[status] ?? ''}` }
  if (status === 503 || status === 429) {
    Object.assign(schema, { headers: { 'Retry-After': { type: 'string', description: 'Seconds to wait before retrying' } } })
  }
  if (status === 401 || status === 403) {
    Object.assign(schema, { headers: { 'WWW-Authenticate': { type: 'string', description: 'Bearer realm="users", with error= and a description or the scope needed' } } })
  }
  return schema
}

/**
 * Declares the error statuses a route can answer, each with the error body;
 * 500 (a true bug) can come from any route, so it is always included.
 */
export function errorResponses<Status extends number> (...statuses: Status[]): Record<Status | 500, typeof ErrorResponse> {
  return Object.fromEntries([...statuses, 500].map((status) => [status, errorResponse(status)])) as Record<Status | 500, typeof ErrorResponse>
}
