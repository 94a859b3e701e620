import { Type, type TSchema } from '@sinclair/typebox'
import { ENTITY_TAG_LIST_PATTERN } from '../http/etag.js'
import { pattern } from './patterns.js'

const entityTags = (description: string) => Type.Optional(Type.String({
  pattern: pattern(ENTITY_TAG_LIST_PATTERN, 'must be * or a list of entity tags such as "3"'),
  description,
  examples: ['"3"']
}))

// Request headers are declared as the RFCs spell them, since the OpenAPI
// document's names become the property names of generated clients (an
// openapi-typescript client would refuse 'If-Match' for 'if-match').
// The validator compiler (src/validation.ts) lower-cases a headers schema's
// names, so matching stays case-insensitive and errors name the header in
// lower case ("headers/if-match …"). Handlers read
// request.headers['if-match'], the name Node gives: the capitalised key the
// type provider also offers is never set.

export const IdempotencyKeyHeaders = Type.Object({
  'Idempotency-Key': Type.Optional(Type.String({
    minLength: 1,
    maxLength: 255,
    pattern: pattern('^[\\x20-\\x7e]+$', 'must be printable characters only'),
    description: 'Makes the create safe to retry: a repeat with the same key and body replays the first answer',
    examples: ['5f0c7a3e-4c1b-4f5e-9a57-2d1f0c8b9e61']
  }))
})

export const IfNoneMatchHeaders = Type.Object({
  'If-None-Match': entityTags('304 Not Modified when it names the current ETag (or is *)')
})

export const IfMatchHeaders = Type.Object({
  'If-Match': entityTags('412 Precondition Failed, and no change, unless it names the current ETag (or is * and the user exists)')
})

/** Response headers the service sends, each under the name the RFCs spell it with. */
const responseHeaders = {
  location: ['Location', { type: 'string', description: 'The user\'s URL: /api/users/{id}' }],
  etag: ['ETag', { type: 'string', description: 'The user\'s entity tag, which changes with every change', examples: ['"3"'] }],
  'idempotent-replayed': ['Idempotent-Replayed', {
    type: 'string',
    enum: ['true'],
    description: 'Sent when this answer replays an earlier request with the same Idempotency-Key'
  }]
} as const

/** `schema` described as a response that carries `headers` (named in lower case here, as sent). */
export function respondsWith<T extends TSchema> (schema: T, description: string, headers: Array<keyof typeof responseHeaders> = []): T {
  const declared = Object.fromEntries(headers.map((name) => responseHeaders[name]))
  return { ...schema, description, ...(headers.length > 0 ? { headers: declared } : {}) }
}
