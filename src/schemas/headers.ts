import { Type, type TSchema } from '@sinclair/typebox'
import { ENTITY_TAG_LIST_PATTERN } from '../http/etag.js'
import { pattern } from './patterns.js'

const entityTags = (description: string) => Type.Optional(Type.String({
  pattern: pattern(ENTITY_TAG_LIST_PATTERN, 'must be * or a list of entity tags such as "3"'),
  description,
  examples: ['"3"']
}))

export const IdempotencyKeyHeaders = Type.Object({
  'idempotency-key': Type.Optional(Type.String({
    minLength: 1,
    maxLength: 255,
    pattern: pattern('^[\\x20-\\x7e]+$', 'must be printable characters only'),
    description: 'Makes the create safe to retry: a repeat with the same key and body replays the first answer',
    examples: ['5f0c7a3e-4c1b-4f5e-9a57-2d1f0c8b9e61']
  }))
})

export const IfNoneMatchHeaders = Type.Object({
  'if-none-match': entityTags('304 Not Modified when it names the current ETag (or is *)')
})

export const IfMatchHeaders = Type.Object({
  'if-match': entityTags('412 Precondition Failed, and no change, unless it names the current ETag (or is * and the user exists)')
})

/** Response headers the service sends, as the OpenAPI document names them. */
const responseHeaders = {
  location: { type: 'string', description: 'The user\'s URL: /api/users/{id}' },
  etag: { type: 'string', description: 'The user\'s entity tag, which changes with every change', examples: ['"3"'] },
  'idempotent-replayed': {
    type: 'string',
    enum: ['true'],
    description: 'Sent when this answer replays an earlier request with the same Idempotency-Key'
  }
} as const

/** `schema` described as a response that carries `headers`. */
export function respondsWith<T extends TSchema> (schema: T, description: string, headers: Array<keyof typeof responseHeaders> = []): T {
  const declared = Object.fromEntries(headers.map((name) => [name, responseHeaders[name]]))
  return { ...schema, description, ...(headers.length > 0 ? { headers: declared } : {}) }
}
