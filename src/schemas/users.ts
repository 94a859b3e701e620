import { Type, type Static } from '@sinclair/typebox'
import { pattern } from './patterns.js'

// Schemas compile with the `u` flag, so `\s` is Unicode white space and the
// class below matches a lone surrogate only (pairs are one code point).
// PostgreSQL cannot store NUL, nor text that is not valid UTF-8.
const NAME_PATTERN = pattern(
  '^(?!\\s*$)[^\\u0000\\uD800-\\uDFFF]+$',
  'must contain a character other than white space, and no NUL or unpaired surrogate'
)

export const UserId = Type.Integer({
  minimum: 1,
  // ids are bigint in PostgreSQL and numbers in JSON; past this a JSON number
  // no longer names one id.
  maximum: Number.MAX_SAFE_INTEGER,
  description: 'The user\'s id, assigned by the database',
  examples: [42]
})

export const UserName = Type.String({
  minLength: 1,
  maxLength: 50,
  pattern: NAME_PATTERN,
  description: '1 to 50 Unicode code points, not only white space, stored exactly as sent',
  examples: ['Ada']
})

// What makes a plausible address, wherever one is given (bodies and the email query).
const EMAIL_RULES = { format: 'email', maxLength: 254 } as const

export const UserEmail = Type.String({
  ...EMAIL_RULES,
  description: 'Unique across users, compared case-insensitively, stored as sent',
  examples: ['ada@example.com']
})

const Timestamp = Type.String({ format: 'date-time', examples: ['2026-11-27T10:00:00.000Z'] })

// Response fields that may be null are a list of types rather than a union:
// fast-json-stringify serializes `anyOf` by validating each value at run
// time, a type list by a typeof check. (Request bodies keep unions: Ajv
// reports their errors better.)
const nullable = <T>(type: 'string' | 'integer', options: object = {}) =>
  Type.Unsafe<T | null>({ type: [type, 'null'], ...options })

export const UserSchema = Type.Object({
  id: UserId,
  name: Type.String(),
  email: nullable<string>('string', { examples: ['ada@example.com'] }),
  createdAt: Timestamp,
  updatedAt: Timestamp
})
export type User = Static<typeof UserSchema>

export const UserParams = Type.Object({ id: UserId }, { additionalProperties: false })

export const CreateUserBody = Type.Object({
  name: UserName,
  email: Type.Optional(Type.Union([UserEmail, Type.Null()]))
}, { additionalProperties: false })

export const UpdateUserBody = Type.Object({
  name: Type.Optional(UserName),
  email: Type.Optional(Type.Union([UserEmail, Type.Null()], { description: 'null clears the email' }))
}, { additionalProperties: false, minProperties: 1 })

export const ListUsersQuery = Type.Object({
  limit: Type.Integer({ minimum: 1, maximum: 1000, default: 50 }),
  after: Type.Integer({
    minimum: 0,
    maximum: Number.MAX_SAFE_INTEGER,
    default: 0,
    description: 'The id of the last user already seen'
  }),
  email: Type.Optional(Type.String({
    ...EMAIL_RULES,
    description: 'Only the user with this address, compared case-insensitively (a page of zero or one)',
    examples: ['ada@example.com']
  }))
}, { additionalProperties: false })

export const UserPage = Type.Object({
  items: Type.Array(UserSchema),
  nextCursor: nullable<number>('integer', {
    minimum: 1,
    description: 'The last item\'s id when more may follow, else null',
    examples: [42]
  })
})

// The seed-compatible routes of the original Flask service.
export const LegacyCreateUserBody = Type.Object({ name: UserName }, { additionalProperties: false })

export const LegacyUserSchema = Type.Object({ id: UserId, name: Type.String() })
export type LegacyUser = Static<typeof LegacyUserSchema>

export const LegacyCreatedUser = Type.Object({
  id: UserId,
  name: Type.String(),
  message: Type.String({ examples: ['User Ada created.'] })
})
