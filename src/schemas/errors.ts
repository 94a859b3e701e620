import { Type, type Static } from '@sinclair/typebox'

/** The body of every error the service answers, whatever the route. */
export const ErrorResponse = Type.Object({
  statusCode: Type.Integer({ examples: [400] }),
  error: Type.String({ examples: ['Bad Request'] }),
  message: Type.String({ examples: ['body/name is required'] })
}, { description: 'An error' })

export type ErrorBody = Static<typeof ErrorResponse>

/** Declares the error statuses a route can answer, each with the error body. */
export function errorResponses<Status extends number> (...statuses: Status[]): Record<Status, typeof ErrorResponse> {
  return Object.fromEntries(statuses.map((status) => [status, ErrorResponse])) as Record<Status, typeof ErrorResponse>
}
