// Hostile input, generated (fast-check, through app.inject): every route,
// under arbitrary bodies, content types, query strings, ids in the path and
// headers. Whatever comes in, the answer is never a 5xx; an error is the
// contract's `{statusCode, error, message}` and tells nothing of the
// internals; a success has the route's documented shape. Beside those
// universal properties, a model of the users the API has accepted predicts
// each answer where the contract decides it (201 or 400, 200 or 412 ...), and
// at the end the database must hold exactly the model's users, every one of
// them valid and stored exactly as sent.
//
// Runs are reproducible: PROPERTY_SEED (default below) seeds every property,
// and a failure prints the seed, the path and the shrunk counterexample.
import { Buffer } from 'node:buffer'
import { STATUS_CODES } from 'node:http'
import { connect, type AddressInfo } from 'node:net'
import type { LightMyRequestResponse } from 'fastify'
import fc from 'fast-check'
import type pg from 'pg'
import t, { type Test } from 'tap'
import { BODY_LIMIT_BYTES } from '../src/app.js'
import { buildTestApp } from './helper.js'

const SEED = Number(process.env.PROPERTY_SEED ?? 20261128)
const runs = (numRuns: number) => ({ seed: SEED, numRuns })

const MAX_ID = Number.MAX_SAFE_INTEGER
const ISO_MS_Z = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const ACCEPTED_REQUEST_ID = /^[\x21-\x7e]{1,128}$/
const ERROR_KEYS = ['error', 'message', 'statusCode']
const USER_KEYS = ['createdAt', 'email', 'id', 'name', 'updatedAt']
/** What an error body must never show: stack frames, files, SQL errors, connection strings, framework codes. */
const INTERNALS = /\n\s+at |\bat \S+ \(|\.(?:[cm]?js|ts):\d+:\d+|node_modules|postgres(?:ql)?:\/\/|SQLSTATE|duplicate key|violates \S+ constraint|syntax error at or near|FST_ERR/

// ---------------------------------------------------------------------------
// Checking answers

/** Throws (so fast-check can shrink the case) rather than adding a tap assertion per run. */
function expect (condition: boolean, message: string): asserts condition {
  if (!condition) throw new Error(message)
}

function isRecord (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function sameKeys (value: Record<string, unknown>, keys: string[]): boolean {
  return JSON.stringify(Object.keys(value).sort()) === JSON.stringify(keys)
}

type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE' | 'OPTIONS'

/** A request exactly as sent to the app. */
interface Sent {
  method: Method
  url: string
  headers: Record<string, string>
  payload?: Buffer | undefined
}

function describeSent (sent: Sent): string {
  const body = sent.payload === undefined ? '(no body)' : JSON.stringify(sent.payload.toString('utf8').slice(0, 300))
  return `${sent.method} ${JSON.stringify(sent.url.slice(0, 300))} headers ${JSON.stringify(sent.headers).slice(0, 600)} body ${body}`
}

function describeExchange (sent: Sent, response: LightMyRequestResponse): string {
  return `${describeSent(sent)}\n  -> ${response.statusCode} ${JSON.stringify(response.headers)} ${response.body.slice(0, 400)}`
}

function parseJson (text: string): unknown {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/** The contract's error body; returns its message. */
function checkErrorBody (response: LightMyRequestResponse, where: string): string {
  expect(/^application\/json/.test(String(response.headers['content-type'])), `an error is JSON: ${where}`)
  const body = parseJson(response.body)
  expect(isRecord(body) && sameKeys(body, ERROR_KEYS), `an error is exactly {statusCode, error, message}: ${where}`)
  expect(body.statusCode === response.statusCode, `statusCode equals the status: ${where}`)
  expect(body.error === STATUS_CODES[response.statusCode], `error is the status' reason phrase: ${where}`)
  expect(typeof body.message === 'string' && body.message.length > 0, `a message: ${where}`)
  expect(!INTERNALS.test(response.body), `no stack trace or internals: ${where}`)
  return body.message as string
}

/** What holds for every answer, whatever the route. */
function checkCommon (sent: Sent, response: LightMyRequestResponse, where: string): void {
  expect(response.statusCode >= 200 && response.statusCode < 500, `never a 5xx: ${where}`)
  const given = sent.headers['x-request-id']
  const echoed = response.headers['x-request-id']
  if (given !== undefined && ACCEPTED_REQUEST_ID.test(given)) {
    expect(echoed === given, `x-request-id is honoured and echoed: ${where}`)
  } else {
    expect(typeof echoed === 'string' && UUID.test(echoed), `a fresh request id is echoed: ${where}`)
  }
  if (response.statusCode >= 400) checkErrorBody(response, where)
}

interface ApiUser {
  id: number
  name: string
  email: string | null
  createdAt: string
  updatedAt: string
}

function checkTimestamp (value: unknown, where: string): void {
  expect(typeof value === 'string' && ISO_MS_Z.test(value) && new Date(value).toISOString() === value,
    `timestamps are ISO-8601 UTC with milliseconds: ${where}`)
}

function checkUser (value: unknown, where: string): ApiUser {
  expect(isRecord(value) && sameKeys(value, USER_KEYS), `a user is exactly {id, name, email, createdAt, updatedAt}: ${where}`)
  expect(Number.isSafeInteger(value.id) && (value.id as number) > 0, `a positive integer id: ${where}`)
  expect(typeof value.name === 'string', `a string name: ${where}`)
  expect(value.email === null || typeof value.email === 'string', `email a string or null: ${where}`)
  checkTimestamp(value.createdAt, where)
  checkTimestamp(value.updatedAt, where)
  expect((value.createdAt as string) <= (value.updatedAt as string), `createdAt <= updatedAt: ${where}`)
  return value as unknown as ApiUser
}

function etagVersion (response: LightMyRequestResponse, where: string): number {
  const etag = response.headers.etag
  const match = typeof etag === 'string' ? /^"([1-9]\d*)"$/.exec(etag) : null
  expect(match !== null, `a strong ETag: ${where}`)
  return Number(match[1])
}

// ---------------------------------------------------------------------------
// The contract's rules, written independently of the implementation.

type Verdict = 'valid' | 'invalid' | 'unknown'

const LONE_SURROGATE = /\p{Cs}/u

function nameVerdict (name: unknown): Verdict {
  if (typeof name !== 'string') return 'invalid'
  const codePoints = [...name].length
  if (codePoints < 1 || codePoints > 50) return 'invalid'
  if (/^\s*$/u.test(name)) return 'invalid'
  if (name.includes('\0') || LONE_SURROGATE.test(name)) return 'invalid'
  return 'valid'
}

/** Addresses anyone would call plausible; others may go either way. */
const PLAIN_EMAIL = /^[a-z0-9_+-]+(?:\.[a-z0-9_+-]+)*@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}$/i

function emailVerdict (email: unknown): Verdict {
  if (email === null) return 'valid'
  if (typeof email !== 'string') return 'invalid'
  if ([...email].length > 254 || email === '' || !email.includes('@') || email.includes('\0') || LONE_SURROGATE.test(email)) return 'invalid'
  const local = email.slice(0, email.lastIndexOf('@'))
  if (email.length <= 254 && local.length <= 64 && PLAIN_EMAIL.test(email)) return 'valid'
  return 'unknown'
}

type BodyRoute = 'create' | 'legacy' | 'patch'

function bodyVerdict (route: BodyRoute, body: unknown): Verdict {
  if (!isRecord(body)) return 'invalid'
  const keys = Object.keys(body)
  const allowed = route === 'legacy' ? ['name'] : ['name', 'email']
  if (keys.some((key) => !allowed.includes(key))) return 'invalid'
  if (route === 'patch' ? keys.length === 0 : !keys.includes('name')) return 'invalid'
  const verdicts: Verdict[] = []
  if (keys.includes('name')) verdicts.push(nameVerdict(body.name))
  if (keys.includes('email')) verdicts.push(emailVerdict(body.email))
  if (verdicts.includes('invalid')) return 'invalid'
  return verdicts.includes('unknown') ? 'unknown' : 'valid'
}

/**
 * An integer in a query string or path: `valid` in canonical decimal form,
 * `invalid` when it is no integer or out of range, `lenient` for forms a
 * parser may read either way (`1e3`, `0x10`, ` 5`, `+5`, `05`, `5.0`):
 * those must be a 400 or read as `value`.
 */
type NumberVerdict = { kind: 'valid' | 'lenient', value: number } | { kind: 'invalid' }

function numberVerdict (text: string, min: number, max: number): NumberVerdict {
  if (text === '') return { kind: 'invalid' }
  const decimal = /^\s*[+-]?(\d*)(?:\.(\d*))?\s*$/.exec(text)
  if (decimal !== null && /[1-9]/.test(decimal[2] ?? '')) return { kind: 'invalid' } // a fraction, exactly
  if (decimal !== null && (decimal[1] ?? '') === '' && (decimal[2] ?? '') === '' && text.trim() !== '') return { kind: 'invalid' }
  const value = Number(text)
  if (!Number.isInteger(value) || value < min || value > max) return { kind: 'invalid' }
  if (decimal !== null && /^\d+$/.test(text) && BigInt(text) > BigInt(max)) return { kind: 'invalid' }
  if (/^(?:0|[1-9]\d*)$/.test(text)) return { kind: 'valid', value }
  return { kind: 'lenient', value }
}

/** If-Match / If-None-Match as RFC 9110 reads them, or `malformed`. */
type Condition = { kind: 'any' } | { kind: 'tags', tags: Array<{ weak: boolean, opaque: string }> } | { kind: 'malformed' }

const ENTITY_TAG_LIST = /^(?:\*|(?:W\/)?"[\x21\x23-\x7e]*"(?:[ \t]*,[ \t]*(?:W\/)?"[\x21\x23-\x7e]*")*)$/

function readCondition (value: string): Condition {
  if (!ENTITY_TAG_LIST.test(value)) return { kind: 'malformed' }
  if (value === '*') return { kind: 'any' }
  return { kind: 'tags', tags: [...value.matchAll(/(W\/)?"([^"]*)"/g)].map((m) => ({ weak: m[1] !== undefined, opaque: m[2] ?? '' })) }
}

const ifMatchHolds = (condition: Condition, version: number): boolean => condition.kind === 'any' ||
  (condition.kind === 'tags' && condition.tags.some((tag) => !tag.weak && tag.opaque === String(version)))
const ifNoneMatchHits = (condition: Condition, version: number): boolean => condition.kind === 'any' ||
  (condition.kind === 'tags' && condition.tags.some((tag) => tag.opaque === String(version)))

const keyValid = (key: string): boolean => key.length >= 1 && key.length <= 255 && /^[\x20-\x7e]+$/.test(key)

/** How the service's JSON parser must read a body, byte for byte. */
type ParsedBody = { kind: 'none' } | { kind: 'not-utf8' } | { kind: 'not-json' } | { kind: 'json', value: unknown, bom: boolean }

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

function parseBody (payload: Buffer | undefined): ParsedBody {
  if (payload === undefined || payload.length === 0) return { kind: 'none' }
  let text: string
  try {
    text = strictUtf8.decode(payload)
  } catch {
    return { kind: 'not-utf8' }
  }
  const bom = text.startsWith('\ufeff')
  const value = parseJson(bom ? text.slice(1) : text)
  // JSON.parse gives undefined only on failure here (no reviver). Prototype
  // poisoning is refused by the parser as malformed JSON is.
  if (value === undefined || poisoned(value)) return { kind: 'not-json' }
  return { kind: 'json', value, bom }
}

/** A `__proto__` member, or a `constructor` member holding a `prototype`, anywhere. */
function poisoned (value: unknown): boolean {
  const pending = [value]
  for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
    if (typeof next !== 'object' || next === null) continue
    if (Object.hasOwn(next, '__proto__')) return true
    const constructor = (next as Record<string, unknown>).constructor
    if (Object.hasOwn(next, 'constructor') && typeof constructor === 'object' && constructor !== null && Object.hasOwn(constructor, 'prototype')) return true
    pending.push(...Object.values(next))
  }
  return false
}

// Content types: exactly JSON, clearly not JSON, or anything (either way).
const JSON_TYPES = ['application/json', 'application/json; charset=utf-8', 'application/json;charset=UTF-8', 'Application/JSON']
const NOT_JSON_TYPES = [
  'text/plain', 'text/plain; charset=utf-8', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x',
  'application/xml', 'text/json', 'application/octet-stream', 'text/html', 'application/merge-patch+json'
]
type ContentKind = 'absent' | 'json' | 'not-json' | 'unknown'

function contentKind (contentType: string | undefined): ContentKind {
  if (contentType === undefined) return 'absent'
  if (JSON_TYPES.includes(contentType)) return 'json'
  if (NOT_JSON_TYPES.includes(contentType)) return 'not-json'
  return 'unknown'
}

/**
 * What the app receives when a client sends `value` as a header: its UTF-8
 * bytes, which Node reads back as Latin-1, without control characters (Node's
 * parser refuses those before the app: the raw-socket property covers them),
 * and without the white space around it that the parser trims.
 */
function onTheWire (value: string): string {
  const latin1 = Buffer.from(value, 'utf8').toString('latin1')
  let kept = ''
  for (const char of latin1) {
    const code = char.charCodeAt(0)
    if (code === 0x09 || (code >= 0x20 && code !== 0x7f)) kept += char
  }
  return kept.replace(/^[ \t]+|[ \t]+$/g, '')
}

/** Percent-encodes every byte of `text` but the unreserved ones: a well-formed path segment. */
function percentEncode (text: string): string {
  let encoded = ''
  for (const byte of Buffer.from(text, 'utf8')) {
    const char = String.fromCharCode(byte)
    encoded += /[A-Za-z0-9._~-]/.test(char) ? char : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`
  }
  return encoded
}

/** What a well-formed, percent-encoded segment decodes to (lone surrogates were sent as U+FFFD). */
const decodedAs = (text: string): string => Buffer.from(text, 'utf8').toString('utf8')

// ---------------------------------------------------------------------------
// The model: the users the API accepted, and the Idempotency-Keys it kept.

interface ModelUser {
  name: string
  email: string | null
  version: number
  createdAt: string
  updatedAt: string
}

interface KeptAnswer {
  fingerprint: string
  statusCode: number
  body: string
  location: string | undefined
}

class Model {
  readonly users = new Map<number, ModelUser>()
  readonly gone: number[] = []
  readonly keys = new Map<string, KeptAnswer>()
  highestId = 0

  ids (): number[] {
    return [...this.users.keys()].sort((a, b) => a - b)
  }

  emailTaken (email: string | null | undefined, except?: number): boolean {
    if (typeof email !== 'string') return false
    const lower = email.toLowerCase()
    for (const [id, user] of this.users) {
      if (id !== except && user.email?.toLowerCase() === lower) return true
    }
    return false
  }
}

/** The route and the body, as the contract's "same request" for a key: key order and null members do not count. */
function fingerprintOf (route: string, body: Record<string, unknown>): string {
  const present = Object.keys(body).filter((key) => body[key] !== null).sort()
  return `${route}\n${JSON.stringify(body, present)}`
}

// ---------------------------------------------------------------------------
// Arbitraries

/** Every Unicode white space JavaScript's \s knows. */
const WHITE_SPACE = [
  '\t', '\n', '\v', '\f', '\r', ' ', '\u00a0', '\u1680', '\u2000', '\u2001', '\u2002', '\u2003', '\u2004', '\u2005',
  '\u2006', '\u2007', '\u2008', '\u2009', '\u200a', '\u2028', '\u2029', '\u202f', '\u205f', '\u3000', '\ufeff'
]
/** Invisible, but not white space: a name of only these is a name. */
const NOT_WHITE_SPACE = ['\u200b', '\u180e', '\u2060', '\u00ad', '\u034f', '\u3164', '\u0085']
const COMBINING = ['\u0301', '\u0300', '\u0308', '\u20dd', '\u0489']
const ASTRAL = ['😀', '𝔸', '\u{10FFFF}', '\u{E0001}', '\u{1F468}']
const LONE_SURROGATES = ['\ud800', '\udbff', '\udc00', '\udfff']
const AWKWARD = ['\0', '"', '\\', '/', '<', '>', '&', '\'', '\u007f', '\u0001', '\u001f', '\ufffd', '\ufffe', '\uffff', '%', '$1', '\';--', '${', '\u202e']

const oneChar = fc.oneof(
  { arbitrary: fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 1 }), weight: 6 },
  { arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }), weight: 3 },
  { arbitrary: fc.constantFrom(...WHITE_SPACE), weight: 2 },
  { arbitrary: fc.constantFrom(...NOT_WHITE_SPACE, ...COMBINING, ...ASTRAL), weight: 2 },
  { arbitrary: fc.constantFrom(...AWKWARD), weight: 1 },
  { arbitrary: fc.constantFrom(...LONE_SURROGATES), weight: 1 }
)
/** Single code points for counting: 50 of them is a name, 51 is not. */
const oneCodePoint = fc.constantFrom('a', 'Z', '😀', '𝔸', '\u0301', '\u00e9', '\u200b', '\u3164', '\u00a0', '-')

const anyString = fc.string({ unit: oneChar, maxLength: 60 })
const nonString = fc.oneof(
  fc.integer(), fc.double(), fc.boolean(), fc.constant(null),
  fc.array(fc.string({ maxLength: 5 }), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 5 }), fc.string({ maxLength: 5 }), { maxKeys: 2 })
)

const nameArb: fc.Arbitrary<unknown> = fc.oneof(
  { arbitrary: fc.string({ unit: 'grapheme', minLength: 1, maxLength: 20 }), weight: 6 },
  { arbitrary: anyString, weight: 6 },
  { arbitrary: fc.string({ unit: fc.constantFrom(...WHITE_SPACE), maxLength: 8 }), weight: 2 },
  { arbitrary: fc.tuple(fc.string({ unit: fc.constantFrom(...WHITE_SPACE), maxLength: 3 }), fc.constantFrom(...NOT_WHITE_SPACE, 'x')).map(([a, b]) => a + b + a), weight: 1 },
  { arbitrary: fc.array(oneCodePoint, { minLength: 48, maxLength: 52 }).map((chars) => chars.join('')), weight: 3 },
  { arbitrary: fc.tuple(fc.integer({ min: 23, max: 27 }), fc.constantFrom('e\u0301', '😀\u0308')).map(([n, pair]) => pair.repeat(n)), weight: 1 },
  { arbitrary: fc.tuple(fc.string({ maxLength: 10 }), fc.constantFrom('\0', ...LONE_SURROGATES), fc.string({ maxLength: 10 })).map(([a, b, c]) => a + b + c), weight: 2 },
  { arbitrary: fc.tuple(fc.integer({ min: 51, max: 9_000 }), fc.constantFrom('x', 'é', '😀', ' ')).map(([n, c]) => c.repeat(n)), weight: 1 },
  { arbitrary: nonString, weight: 2 }
)

/** A few addresses reused with their case changed, so that emails collide. */
const EMAILS = ['ada@example.com', 'grace.hopper@navy.example.mil', 'alan+turing@bletchley.example.uk', 'x_y-z@sub.example.org']

const mixCase = (text: string, flips: boolean[]): string =>
  [...text].map((char, i) => (flips[i % flips.length] === true ? char.toUpperCase() : char)).join('')

/** A plausible address of exactly `length` characters (a 60-character local part and labels of up to 60). */
function emailOfLength (length: number): string {
  const local = 'a'.repeat(60)
  let domain = 'com'
  while (local.length + 1 + domain.length < length) {
    const room = length - local.length - 1 - domain.length - 1
    domain = `${'b'.repeat(Math.max(1, Math.min(60, room)))}.${domain}`
  }
  return `${local}@${domain}`.slice(0, length)
}

const plainEmail = fc.tuple(
  fc.stringMatching(/^[a-z0-9_+-]{1,10}(?:\.[a-z0-9_+-]{1,8}){0,2}$/),
  fc.array(fc.stringMatching(/^[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?$/), { minLength: 1, maxLength: 3 }),
  fc.stringMatching(/^[a-z]{2,6}$/),
  fc.array(fc.boolean(), { minLength: 1, maxLength: 8 })
).map(([local, labels, top, flips]) => mixCase(`${local}@${[...labels, top].join('.')}`, flips))

const emailArb: fc.Arbitrary<unknown> = fc.oneof(
  { arbitrary: fc.constant(null), weight: 2 },
  { arbitrary: plainEmail, weight: 5 },
  { arbitrary: fc.tuple(fc.constantFrom(...EMAILS), fc.array(fc.boolean(), { minLength: 1, maxLength: 8 })).map(([email, flips]) => mixCase(email, flips)), weight: 3 },
  { arbitrary: fc.integer({ min: 250, max: 256 }).map(emailOfLength), weight: 1 },
  {
    arbitrary: fc.constantFrom('', ' ', '@', 'a@', '@example.com', 'a@b', 'a b@example.com', 'ada@example.com ', ' ada@example.com',
      'ada@example.com\0', 'ada@exa mple.com', 'ada@@example.com', 'ada@example..com', 'ädä@example.com', '"a b"@example.com',
      'ada@\ud800.com', 'ada@example.com\n', `${'a'.repeat(65)}@example.com`),
    weight: 2
  },
  { arbitrary: fc.tuple(anyString, anyString).map(([a, b]) => `${a}@${b}`), weight: 2 },
  { arbitrary: anyString, weight: 1 },
  { arbitrary: nonString.filter((value) => value !== null), weight: 1 }
)

const extraKey = fc.oneof(
  fc.constantFrom('id', 'admin', 'createdAt', 'version', 'Name', 'NAME', 'name ', 'e-mail', '', '__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty'),
  fc.string({ maxLength: 6 })
)
const extraValue = fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.constant({ prototype: { admin: true } }), fc.constant({ admin: true }))

type Entry = [string, unknown]

/** The JSON text of an object with these members, in this order, duplicates kept. */
const objectText = (entries: Entry[], space = ''): string =>
  `{${entries.map(([key, value]) => `${JSON.stringify(key)}:${space}${JSON.stringify(value)}`).join(`,${space}`)}}`

/** Every non-ASCII UTF-16 unit written as a \u escape, and the keys' first letter too: the same JSON value. */
const escapeAll = (text: string): string =>
  text.replace(/[^\x20-\x7e]/g, (char) => `\\u${char.charCodeAt(0).toString(16).padStart(4, '0')}`)
    .replace(/"(name|email)":/g, (_match, key: string) => `"\\u${key.charCodeAt(0).toString(16).padStart(4, '0')}${key.slice(1)}":`)

/** `arbitrary`'s values one time in `oneIn`, else undefined. */
const sometimes = <T>(arbitrary: fc.Arbitrary<T>, oneIn: number): fc.Arbitrary<T | undefined> =>
  fc.oneof({ weight: oneIn - 1, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary })

/** Members for a body: name and email (each maybe absent), extra members, a duplicate of either. */
const entriesArb = (withEmail: boolean): fc.Arbitrary<Entry[]> => fc.tuple(
  fc.option(nameArb, { nil: undefined, freq: 8 }),
  withEmail ? fc.option(emailArb, { nil: undefined, freq: 2 }) : fc.constant(undefined),
  sometimes(fc.array(fc.tuple(extraKey, extraValue), { minLength: 1, maxLength: 2 }), 6),
  sometimes(fc.tuple(fc.constantFrom('name', 'email'), fc.oneof(nameArb, emailArb), fc.boolean()), 8),
  fc.boolean()
).map(([name, email, extras, duplicate, emailFirst]) => {
  const entries: Entry[] = []
  if (name !== undefined) entries.push(['name', name])
  if (email !== undefined) entries[emailFirst ? 'unshift' : 'push'](['email', email])
  if (extras !== undefined) entries.push(...extras)
  if (duplicate !== undefined) entries[duplicate[2] ? 'unshift' : 'push']([duplicate[0], duplicate[1]])
  return entries
})

/** A JSON body as text (UTF-8 once sent): well-formed or not, in many spellings. */
const bodyTextArb = (withEmail: boolean): fc.Arbitrary<string | undefined> => fc.oneof(
  {
    weight: 14,
    arbitrary: fc.tuple(entriesArb(withEmail), fc.constantFrom('plain', 'plain', 'plain', 'plain', 'plain', 'plain', 'pretty', 'escaped', 'bom', 'garbage', 'truncated'), fc.nat())
      .map(([entries, style, cut]) => {
        const text = objectText(entries)
        switch (style) {
          case 'pretty': return `\n\t ${objectText(entries, '\n  ')} \r\n`
          case 'escaped': return escapeAll(text)
          case 'bom': return `\ufeff${text}`
          case 'garbage': return text + ['{', ',', 'x', 'null', '}', ']', '"', '\0'][cut % 8]
          case 'truncated': return text.slice(0, cut % text.length)
          default: return text
        }
      })
  },
  { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 3 }).map((value) => JSON.stringify(value)) },
  { weight: 2, arbitrary: anyString },
  { weight: 1, arbitrary: fc.constantFrom('', ' ', '\n', 'null', '{}', '[]', '"Ada"', '{"name":"Ada"', '{name:"Ada"}', '{\'name\':\'Ada\'}', '{"name":"Ada",}', '{"name":"Ada"}{"name":"Ada"}', 'NaN', '{"name":"Ada" /* */}') },
  {
    weight: 1,
    arbitrary: fc.tuple(fc.integer({ min: 1, max: 6_000 }), fc.constantFrom('array', 'object', 'poisoned')).map(([depth, kind]) => {
      if (kind === 'array') return `{"name":"Ada","x":${'['.repeat(depth)}${']'.repeat(depth)}}`
      if (kind === 'object') return `${'{"name":'.repeat(depth)}"Ada"${'}'.repeat(depth)}`
      return `{"name":"Ada","x":${'{"a":'.repeat(depth)}{"__proto__":{"admin":true}}${'}'.repeat(depth)}}`
    })
  },
  { weight: 1, arbitrary: fc.constant(undefined) }
)

/** Header values of every kind: printable, Latin-1, any Unicode, long. */
const headerText = fc.oneof(
  { weight: 4, arbitrary: fc.string({ unit: 'grapheme-ascii', maxLength: 40 }) },
  { weight: 2, arbitrary: anyString },
  { weight: 1, arbitrary: fc.string({ unit: fc.integer({ min: 0x80, max: 0xff }).map((c) => String.fromCharCode(c)), minLength: 1, maxLength: 5 }) },
  { weight: 1, arbitrary: fc.integer({ min: 120, max: 300 }).map((n) => 'k'.repeat(n)) }
)

const requestIdArb = fc.option(fc.oneof(
  headerText,
  fc.constantFrom('trace-abc.123', '', ' ', 'a b', 'x'.repeat(128), 'x'.repeat(129), '"quoted"', '\u00e9t\u00e9', '{"injected":true}')
), { nil: undefined, freq: 3 })

const contentTypeArb = fc.oneof(
  { weight: 24, arbitrary: fc.constantFrom(...JSON_TYPES) },
  { weight: 3, arbitrary: fc.constantFrom(...NOT_JSON_TYPES) },
  { weight: 2, arbitrary: fc.constant(undefined) },
  { weight: 1, arbitrary: fc.constantFrom('', 'application/json, text/plain', 'application/jsonx', 'application/json; charset=', ';', '*/*', 'application/json; charset=latin1', 'application/json; boundary="x"') },
  { weight: 1, arbitrary: headerText }
)

/** Texts for integers in paths and query strings, most of them at an edge. */
const numericText = fc.oneof(
  { weight: 3, arbitrary: fc.integer({ min: 1, max: 2_000 }).map(String) },
  { weight: 2, arbitrary: fc.bigInt({ min: -10n, max: 2n ** 70n }).map(String) },
  {
    weight: 3,
    // (Infinities: see the edge property.)
    arbitrary: fc.constantFrom('0', '-0', '-1', '+1', '01', '1.0', '1.5', '.5', '5.', '1e3', '1E2', '1e-7', '0x10', '0b1', '0o7',
      ' 1', '1 ', '\t1', ' ', 'NaN', 'null', 'true', '1_000', '1,5', '\u0661', '\uff11', '1n', '9007199254740991',
      '9007199254740992', '9007199254740993', '9223372036854775807', '9223372036854775808', '18446744073709551616', '1000', '1001')
  },
  { weight: 2, arbitrary: fc.tuple(fc.integer({ min: 0, max: 1_000_000 }), fc.integer({ min: 1, max: 999 })).map(([i, f]) => `${i}.${f}`) },
  { weight: 2, arbitrary: fc.string({ unit: oneChar, maxLength: 8 }) }
)

// ---------------------------------------------------------------------------
// The app under test, its model, and a first few users.

const { app, db } = await buildTestApp(t)
const model = new Model()

async function send (sent: Sent): Promise<LightMyRequestResponse> {
  try {
    return await app.inject({ method: sent.method, url: sent.url, headers: sent.headers, ...(sent.payload === undefined ? {} : { payload: sent.payload }) })
  } catch (error) {
    throw new Error(`inject refused the request: ${(error as Error).message}: ${describeSent(sent)}`)
  }
}

function withRequestId (headers: Record<string, string>, requestId: string | undefined): Record<string, string> {
  if (requestId !== undefined) headers['x-request-id'] = onTheWire(requestId)
  return headers
}

async function storedRow (id: number): Promise<{ name: string, email: string | null, version: number } | undefined> {
  const { rows } = await db.query<{ name: string, email: string | null, version: string }>('SELECT name, email, version FROM users WHERE id = $1', [id])
  const row = rows[0]
  return row === undefined ? undefined : { name: row.name, email: row.email, version: Number(row.version) }
}

/** The row behind `id` is what the model says (or absent when the model has no such user). */
async function checkStored (id: number, where: string): Promise<void> {
  const row = await storedRow(id)
  const expected = model.users.get(id)
  if (expected === undefined) {
    expect(row === undefined, `user ${id} is not in the database: ${where}`)
    return
  }
  expect(row !== undefined, `user ${id} is in the database: ${where}`)
  expect(row.name === expected.name, `stored name ${JSON.stringify(row.name)} is ${JSON.stringify(expected.name)}: ${where}`)
  expect(row.email === expected.email, `stored email ${JSON.stringify(row.email)} is ${JSON.stringify(expected.email)}: ${where}`)
  expect(row.version === expected.version, `stored version ${row.version} is ${expected.version}: ${where}`)
}

for (const [name, email] of [['Ada', EMAILS[0]], ['Grace', EMAILS[1]], ['Alan', null], ['Barbara', EMAILS[3]]] as const) {
  const response = await app.inject({ method: 'POST', url: '/api/users', payload: { name, email } })
  const user = checkUser(response.json(), 'seeding')
  model.users.set(user.id, { name, email: email ?? null, version: 1, createdAt: user.createdAt, updatedAt: user.updatedAt })
  model.highestId = Math.max(model.highestId, user.id)
}

/** Status counts per property, shown as a comment so a run shows what it reached. */
function tally (): { count: (status: number) => void, show: (t: Test) => void } {
  const counts = new Map<number, number>()
  return {
    count: (status) => { counts.set(status, (counts.get(status) ?? 0) + 1) },
    show: (t) => { t.comment(`statuses: ${[...counts].sort((a, b) => a[0] - b[0]).map(([s, n]) => `${s}×${n}`).join(' ')}`) }
  }
}

// ---------------------------------------------------------------------------
// The creates: POST /api/users and the seed-compatible POST /api/user.

type CreateRoute = '/api/users' | '/api/users/' | '/api/user'

interface CreateSpec {
  route: CreateRoute
  body: string | undefined
  contentType: string | undefined
  idempotencyKey: string | undefined
  requestId: string | undefined
}

/** The statuses the contract allows for a request that failed before its handler, or undefined when it got there. */
function beforeHandler (content: ContentKind, size: number, parsed: ParsedBody, verdict: Verdict | undefined): number[] | undefined {
  if (content === 'absent' || content === 'not-json') return size > BODY_LIMIT_BYTES ? [413, 415] : [415]
  if (content === 'json') {
    if (size > BODY_LIMIT_BYTES) return [413]
    if (parsed.kind !== 'json') return [400]
    if (verdict === 'invalid') return [400]
  }
  return undefined
}

async function checkCreate (spec: CreateSpec, counted: (status: number) => void): Promise<void> {
  const legacy = spec.route === '/api/user'
  const route = legacy ? '/api/user' : '/api/users'
  const contentType = spec.contentType === undefined ? undefined : onTheWire(spec.contentType)
  const key = spec.idempotencyKey === undefined ? undefined : onTheWire(spec.idempotencyKey)
  const headers = withRequestId({}, spec.requestId)
  if (contentType !== undefined) headers['content-type'] = contentType
  if (key !== undefined) headers['idempotency-key'] = key
  const payload = spec.body === undefined ? undefined : Buffer.from(spec.body, 'utf8')
  const sent: Sent = { method: 'POST', url: spec.route, headers, payload }
  const response = await send(sent)
  const where = describeExchange(sent, response)
  counted(response.statusCode)
  checkCommon(sent, response, where)

  const content = contentKind(contentType)
  const parsed = parseBody(payload)
  const body = parsed.kind === 'json' && isRecord(parsed.value) ? parsed.value : undefined
  const verdict = parsed.kind === 'json' ? bodyVerdict(legacy ? 'legacy' : 'create', parsed.value) : undefined
  const kept = key !== undefined && keyValid(key) ? model.keys.get(key) : undefined
  // Only a body that passed validation is flat enough to have a fingerprint.
  const fingerprint = body === undefined || verdict === 'invalid' ? '' : fingerprintOf(route, body)

  let allowed = beforeHandler(content, payload?.length ?? 0, parsed, verdict)
  if (allowed === undefined) {
    if (content === 'unknown') {
      allowed = [201, 400, 409, 413, 415, 422]
    } else if (key !== undefined && !keyValid(key)) {
      allowed = [400]
    } else if (kept !== undefined) {
      allowed = kept.fingerprint === fingerprint ? [kept.statusCode] : [422]
    } else {
      allowed = model.emailTaken(body?.email as string | undefined) ? [409] : [201]
    }
    if (verdict === 'unknown') allowed = [...allowed, 400]
    if (parsed.kind === 'json' && parsed.bom) allowed = [...allowed, 400]
  }
  expect(allowed.includes(response.statusCode), `expected ${allowed.join(' or ')}: ${where}`)

  if (response.statusCode >= 400) {
    const message = checkErrorBody(response, where)
    if (response.statusCode === 400 && verdict !== 'invalid' && key !== undefined && !keyValid(key)) {
      const names = verdict === 'valid' ? /idempotency-key/i : /idempotency-key|body/i
      expect(names.test(message), `the message names the Idempotency-Key: ${where}`)
    } else if (response.statusCode === 400 && content === 'json') {
      expect(/body/i.test(message), `the message names the body: ${where}`)
    }
    if (response.statusCode === 415) expect(/application\/json/.test(message), `a 415 says what it takes: ${where}`)
    return
  }

  expect(response.statusCode === 201 && body !== undefined, `a 201 only for a JSON object: ${where}`)
  const replayed = response.headers['idempotent-replayed']
  if (kept !== undefined && content !== 'unknown') {
    expect(replayed === 'true', `a replay says so: ${where}`)
    expect(response.body === kept.body && response.headers.location === kept.location, `a replay is the first answer: ${where}`)
    return
  }
  expect(replayed === undefined, `a first answer is no replay: ${where}`)
  const answer = parseJson(response.body)
  expect(isRecord(answer) && Number.isSafeInteger(answer.id) && (answer.id as number) > 0, `a positive integer id: ${where}`)
  const id = answer.id as number
  // The model takes what was sent first, so that a failed check below leaves it in step with the database.
  const stored = await storedRow(id)
  const timestamps = legacy ? (await app.inject({ url: `/api/users/${id}` })).json() as ApiUser : answer as unknown as ApiUser
  const sentName = body.name as string
  const sentEmail = (body.email ?? null) as string | null
  model.users.set(id, { name: sentName, email: sentEmail, version: stored?.version ?? 1, createdAt: timestamps.createdAt, updatedAt: timestamps.updatedAt })
  if (key !== undefined) model.keys.set(key, { fingerprint, statusCode: 201, body: response.body, location: response.headers.location })
  const highest = model.highestId
  model.highestId = Math.max(model.highestId, id)

  if (legacy) {
    expect(sameKeys(answer, ['id', 'message', 'name']), `POST /api/user answers {id, name, message}: ${where}`)
    expect(answer.name === sentName, `the name as sent: ${where}`)
    expect(answer.message === `User ${sentName} created.`, `the seed's message: ${where}`)
  } else {
    const user = checkUser(answer, where)
    expect(user.name === sentName, `the name as sent: ${where}`)
    expect(user.email === sentEmail, `the email as sent: ${where}`)
    expect(user.createdAt === user.updatedAt, `a new user's updatedAt is its createdAt: ${where}`)
    expect(etagVersion(response, where) === 1, `a new user's ETag: ${where}`)
  }
  expect(response.headers.location === `/api/users/${id}`, `Location names the new user: ${where}`)
  expect(id > highest, `ids are new, never reused: ${where}`)
  expect(stored !== undefined && stored.name === sentName, `stored name ${JSON.stringify(stored?.name)} is exactly the name sent: ${where}`)
  expect(stored.email === sentEmail, `stored email is exactly the email sent: ${where}`)
  expect(stored.version === 1, `a new user is at version 1: ${where}`)
}

const nameOnly = (name: unknown): string => JSON.stringify({ name })
const createExamples: CreateSpec[] = [
  // The contract's own cases: names.
  ...['', ' ', ' \t\n\u00a0\u2003\u3000\ufeff', 'x'.repeat(51), '😀'.repeat(51), 'e\u0301'.repeat(25) + 'e', 'a\u0000b', 'lone \ud800 surrogate', 'lone \udfff']
    .map((name) => ({ route: '/api/users' as const, body: JSON.stringify({ name }), contentType: 'application/json', idempotencyKey: undefined, requestId: undefined })),
  ...['x'.repeat(50), '😀'.repeat(50), 'e\u0301'.repeat(25), '  padded  ', 'MiXeD', '\u200b', '\u180e', 'a\u0301']
    .map((name) => ({ route: '/api/users' as const, body: nameOnly(name), contentType: 'application/json', idempotencyKey: undefined, requestId: undefined })),
  // Emails: "" is no address, null and absent are none, 254 is the limit, case-insensitively unique.
  ...['', null, emailOfLength(254), emailOfLength(255), 'ADA@EXAMPLE.COM', 'not-an-address', 42]
    .map((email) => ({ route: '/api/users' as const, body: JSON.stringify({ name: 'Mail', email }), contentType: 'application/json', idempotencyKey: undefined, requestId: undefined })),
  // Not JSON, malformed, empty, huge, poisoned, extra properties.
  { route: '/api/users', body: nameOnly('Ada'), contentType: 'text/plain', idempotencyKey: undefined, requestId: undefined },
  { route: '/api/users', body: 'name=Ada', contentType: 'application/x-www-form-urlencoded', idempotencyKey: undefined, requestId: undefined },
  { route: '/api/users', body: nameOnly('Ada'), contentType: undefined, idempotencyKey: undefined, requestId: undefined },
  { route: '/api/users', body: undefined, contentType: undefined, idempotencyKey: undefined, requestId: undefined },
  { route: '/api/users', body: undefined, contentType: 'application/json', idempotencyKey: undefined, requestId: undefined },
  { route: '/api/users', body: '{"name":', contentType: 'application/json', idempotencyKey: undefined, requestId: undefined },
  { route: '/api/users', body: nameOnly('x'.repeat(BODY_LIMIT_BYTES)), contentType: 'application/json', idempotencyKey: undefined, requestId: undefined },
  { route: '/api/users', body: '{"__proto__":{"admin":true},"name":"Ada"}', contentType: 'application/json', idempotencyKey: undefined, requestId: undefined },
  { route: '/api/users', body: '{"constructor":{"prototype":{"admin":true}},"name":"Ada"}', contentType: 'application/json', idempotencyKey: undefined, requestId: undefined },
  { route: '/api/users', body: '{"name":"Ada","admin":true}', contentType: 'application/json', idempotencyKey: undefined, requestId: undefined },
  { route: '/api/users', body: '{"name":"first","name":"second"}', contentType: 'application/json', idempotencyKey: undefined, requestId: undefined },
  { route: '/api/user', body: '{"name":"Ada","email":"ada@example.com"}', contentType: 'application/json', idempotencyKey: undefined, requestId: undefined },
  // Idempotency-Key: empty, over 255, exactly 255, repeated with the same and another body.
  { route: '/api/users', body: nameOnly('Keyed'), contentType: 'application/json', idempotencyKey: '', requestId: undefined },
  { route: '/api/users', body: nameOnly('Keyed'), contentType: 'application/json', idempotencyKey: 'k'.repeat(256), requestId: undefined },
  { route: '/api/users', body: nameOnly('Keyed'), contentType: 'application/json', idempotencyKey: 'k'.repeat(255), requestId: undefined },
  { route: '/api/users', body: nameOnly('Keyed'), contentType: 'application/json', idempotencyKey: 'k'.repeat(255), requestId: undefined },
  { route: '/api/users', body: '{"email":null,"name":"Keyed"}', contentType: 'application/json', idempotencyKey: 'k'.repeat(255), requestId: undefined },
  { route: '/api/users', body: nameOnly('Other'), contentType: 'application/json', idempotencyKey: 'k'.repeat(255), requestId: undefined },
  { route: '/api/user', body: nameOnly('Keyed'), contentType: 'application/json', idempotencyKey: 'k'.repeat(255), requestId: undefined }
]

t.test('creates: hostile bodies, content types, keys and request ids', async (t) => {
  const statuses = tally()
  await fc.assert(fc.asyncProperty(fc.record({
    route: fc.constantFrom<CreateRoute>('/api/users', '/api/users', '/api/users/', '/api/user'),
    body: bodyTextArb(true),
    contentType: contentTypeArb,
    idempotencyKey: fc.option(fc.oneof(fc.constantFrom('retry-1', 'retry-2', 'k'), headerText), { nil: undefined, freq: 3 }),
    requestId: requestIdArb
  }), (spec) => checkCreate(spec, statuses.count)), { ...runs(2000), examples: createExamples.map((spec) => [spec]) })
  statuses.show(t)
})

// ---------------------------------------------------------------------------
// One user: GET, PATCH and DELETE /api/users/{id}.

type IdSpec = { kind: 'live' | 'gone', index: number } | { kind: 'text', text: string }
type TagSpec = { weak: boolean, opaque: 'current' | 'stale' | 'next' | string }
type ConditionSpec = { kind: 'absent' } | { kind: 'any' } | { kind: 'tags', tags: TagSpec[], separator: string } | { kind: 'raw', value: string }

interface IdRouteSpec {
  method: 'GET' | 'PATCH' | 'DELETE'
  id: IdSpec
  trailingSlash: boolean
  body: string | undefined
  contentType: string | undefined
  condition: ConditionSpec
  requestId: string | undefined
}

/** The id as the path carries it, and the user it names when it is a canonical id. */
function pathId (spec: IdSpec): { segment: string, decoded: string } {
  const ids = model.ids()
  if (spec.kind === 'live' && ids.length > 0) {
    const id = String(ids[spec.index % ids.length])
    return { segment: id, decoded: id }
  }
  if (spec.kind !== 'text') {
    const id = String(model.gone.length > 0 ? model.gone[spec.index % model.gone.length] : model.highestId + 1 + (spec.index % 1000))
    return { segment: id, decoded: id }
  }
  return { segment: percentEncode(spec.text), decoded: decodedAs(spec.text) }
}

function renderCondition (spec: ConditionSpec, version: number): string | undefined {
  switch (spec.kind) {
    case 'absent': return undefined
    case 'any': return '*'
    case 'raw': return spec.value
    case 'tags': return spec.tags.map((tag) => {
      const opaque = tag.opaque === 'current' ? String(version) : tag.opaque === 'stale' ? String(version - 1) : tag.opaque === 'next' ? String(version + 1) : tag.opaque
      return `${tag.weak ? 'W/' : ''}"${opaque}"`
    }).join(spec.separator)
  }
}

async function checkIdRoute (spec: IdRouteSpec, counted: (status: number) => void): Promise<void> {
  const { segment, decoded } = pathId(spec.id)
  const idVerdict = /^[./]*$/.test(decoded) ? { kind: 'unknown' as const } : numberVerdict(decoded, 1, MAX_ID)
  const target = idVerdict.kind === 'valid' || idVerdict.kind === 'lenient' ? idVerdict.value : undefined
  const before = target === undefined ? undefined : model.users.get(target)
  const conditionHeader = spec.method === 'GET' ? 'if-none-match' : 'if-match'
  const conditionText = renderCondition(spec.condition, before?.version ?? 1)
  const condition = conditionText === undefined ? undefined : onTheWire(conditionText)
  const hasBody = spec.method === 'PATCH' || spec.body !== undefined
  const contentType = !hasBody || spec.contentType === undefined ? undefined : onTheWire(spec.contentType)
  const headers = withRequestId({}, spec.requestId)
  if (condition !== undefined) headers[conditionHeader] = condition
  if (contentType !== undefined) headers['content-type'] = contentType
  const payload = hasBody && spec.body !== undefined ? Buffer.from(spec.body, 'utf8') : undefined
  const sent: Sent = { method: spec.method, url: `/api/users/${segment}${spec.trailingSlash ? '/' : ''}`, headers, payload }
  const response = await send(sent)
  const where = describeExchange(sent, response)
  counted(response.statusCode)
  checkCommon(sent, response, where)

  const parsed = parseBody(payload)
  const content = contentKind(contentType)
  const verdict = spec.method === 'PATCH' && parsed.kind === 'json' ? bodyVerdict('patch', parsed.value) : undefined
  const changes = parsed.kind === 'json' && isRecord(parsed.value) ? parsed.value : {}
  const read = condition === undefined ? undefined : readCondition(condition)

  // What the handler would answer for `target`, once everything before it passed.
  function handled (): number[] {
    if (target === undefined) return []
    const user = model.users.get(target)
    if (spec.method === 'GET') {
      // A malformed header may be refused before the user is looked up.
      if (read?.kind === 'malformed') return [400, user === undefined ? 404 : 200]
      if (user === undefined) return [404]
      return read !== undefined && ifNoneMatchHits(read, user.version) ? [304] : [200]
    }
    if (read?.kind === 'malformed') return user === undefined ? [400, 404, 412] : [400, 412]
    if (read === undefined ? user === undefined : user === undefined || !ifMatchHolds(read, user.version)) {
      return [read === undefined ? 404 : 412]
    }
    if (spec.method === 'DELETE') return [204]
    return model.emailTaken(changes.email as string | undefined, target) ? [409] : [200]
  }

  let allowed: number[]
  if (spec.method === 'PATCH') {
    allowed = beforeHandler(content, payload?.length ?? 0, parsed, undefined) ?? []
    if (allowed.length === 0) {
      if (content === 'unknown') allowed = [200, 400, 404, 409, 412, 413, 415]
      else if (idVerdict.kind === 'invalid' || verdict === 'invalid') allowed = [400]
      else allowed = [...handled(), ...(idVerdict.kind === 'valid' ? [] : [400]), ...(verdict === 'unknown' ? [400] : [])]
      if (parsed.kind === 'json' && parsed.bom) allowed.push(400)
    }
  } else if (payload !== undefined) {
    // A body on GET or DELETE means nothing; it may be refused, never a 5xx.
    allowed = [...handled(), 400, 404, 413, 415]
  } else {
    allowed = idVerdict.kind === 'invalid' ? [400] : [...handled(), ...(idVerdict.kind === 'valid' ? [] : [400])]
  }
  expect(allowed.includes(response.statusCode), `expected ${allowed.join(' or ')}: ${where}`)

  if (response.statusCode >= 400) {
    const message = checkErrorBody(response, where)
    const reachedValidation = spec.method === 'PATCH' ? content === 'json' && parsed.kind === 'json' && (payload?.length ?? 0) <= BODY_LIMIT_BYTES : payload === undefined
    if (response.statusCode === 400 && idVerdict.kind === 'invalid' && reachedValidation) {
      expect(/params\/id/.test(message), `the message names the id: ${where}`)
    }
    if (target !== undefined && Number.isSafeInteger(target)) await checkStored(target, `a ${response.statusCode} changes nothing: ${where}`)
    return
  }
  expect(target !== undefined, `a success only for an id: ${where}`)
  const user = model.users.get(target)
  expect(user !== undefined, `a success only for a user that exists: ${where}`)
  switch (response.statusCode) {
    case 304:
      expect(response.body === '', `a 304 has no body: ${where}`)
      expect(etagVersion(response, where) === user.version, `a 304 carries the current ETag: ${where}`)
      return
    case 204:
      model.users.delete(target)
      model.gone.push(target)
      expect(response.body === '', `a 204 has no body: ${where}`)
      break
    case 200: {
      if (spec.method === 'PATCH') {
        // The model takes the change first, so that a failed check leaves it in step with the database.
        const name = 'name' in changes ? changes.name as string : user.name
        const email = 'email' in changes ? changes.email as string | null : user.email
        const answered = parseJson(response.body)
        const updatedAt = isRecord(answered) && typeof answered.updatedAt === 'string' ? answered.updatedAt : user.updatedAt
        model.users.set(target, { ...user, name, email, version: user.version + 1, updatedAt })
      }
      const answer = checkUser(response.json(), where)
      const now = model.users.get(target) as ModelUser
      expect(answer.id === target, `the user asked for: ${where}`)
      expect(answer.createdAt === user.createdAt, `createdAt never changes: ${where}`)
      expect(answer.name === now.name && answer.email === now.email, `the user as stored, with the changes sent and nothing else: ${where}`)
      expect(etagVersion(response, where) === now.version, `the ETag of the current version: ${where}`)
      if (spec.method === 'GET') {
        expect(answer.updatedAt === user.updatedAt, `updatedAt as stored: ${where}`)
        return
      }
      expect(answer.updatedAt >= user.updatedAt, `updatedAt moves forward: ${where}`)
      break
    }
    default:
      expect(false, `no other success: ${where}`)
  }
  await checkStored(target, where)
}

const tagArb: fc.Arbitrary<TagSpec> = fc.record({
  weak: fc.boolean(),
  opaque: fc.oneof(fc.constantFrom('current', 'current', 'stale', 'next', '', '0', '01', '*', '99999999999999999', 'abc'), fc.stringMatching(/^[\x21\x23-\x7e]{0,6}$/))
})

const conditionArb: fc.Arbitrary<ConditionSpec> = fc.oneof(
  { weight: 4, arbitrary: fc.constant({ kind: 'absent' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'any' as const }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('tags' as const), tags: fc.array(tagArb, { minLength: 1, maxLength: 3 }), separator: fc.constantFrom(',', ', ', ' ,', ' , ', ',\t') }) },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('raw' as const),
      value: fc.oneof(headerText, fc.constantFrom('', '1', '"1', 'W/', 'W/"1"', '*, "1"', '"1",', ',"1"', '"1" "2"', '"\u00e9"', 'w/"1"', '**'))
    })
  }
)

const idSpecArb: fc.Arbitrary<IdSpec> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('live' as const), index: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('gone' as const), index: fc.nat() }) },
  {
    weight: 4,
    arbitrary: fc.record({ kind: fc.constant('text' as const), text: fc.oneof(numericText, anyString) })
      // Empty ids route elsewhere; segments past 100 bytes, see the malformed-URL property.
      .filter((spec) => spec.text !== '' && percentEncode(spec.text).length <= 100)
  }
)

const idText = (text: string): IdSpec => ({ kind: 'text', text })
const idExamples: IdRouteSpec[] = [
  ...['abc', '0', '-1', '1.5', '99999999999999999999', '9223372036854775808', '9007199254740992', '\0', '1 OR 1=1', '1;DROP TABLE users']
    .flatMap((text) => (['GET', 'DELETE'] as const).map((method) => ({
      method, id: idText(text), trailingSlash: false, body: undefined, contentType: undefined, condition: { kind: 'absent' as const }, requestId: undefined
    }))),
  // Conditional requests: the current tag gives 304; a stale one 412 and no change.
  { method: 'GET', id: { kind: 'live', index: 0 }, trailingSlash: false, body: undefined, contentType: undefined, condition: { kind: 'tags', tags: [{ weak: false, opaque: 'current' }], separator: ',' }, requestId: undefined },
  { method: 'GET', id: { kind: 'live', index: 0 }, trailingSlash: false, body: undefined, contentType: undefined, condition: { kind: 'tags', tags: [{ weak: true, opaque: 'current' }], separator: ',' }, requestId: undefined },
  { method: 'PATCH', id: { kind: 'live', index: 0 }, trailingSlash: false, body: nameOnly('Stale'), contentType: 'application/json', condition: { kind: 'tags', tags: [{ weak: false, opaque: 'stale' }], separator: ',' }, requestId: undefined },
  { method: 'PATCH', id: { kind: 'live', index: 0 }, trailingSlash: false, body: nameOnly('Weak'), contentType: 'application/json', condition: { kind: 'tags', tags: [{ weak: true, opaque: 'current' }], separator: ',' }, requestId: undefined },
  { method: 'PATCH', id: { kind: 'live', index: 0 }, trailingSlash: false, body: nameOnly('Fresh'), contentType: 'application/json', condition: { kind: 'tags', tags: [{ weak: false, opaque: 'stale' }, { weak: false, opaque: 'current' }], separator: ', ' }, requestId: undefined },
  { method: 'DELETE', id: { kind: 'live', index: 1 }, trailingSlash: false, body: undefined, contentType: undefined, condition: { kind: 'tags', tags: [{ weak: false, opaque: 'next' }], separator: ',' }, requestId: undefined },
  { method: 'DELETE', id: { kind: 'gone', index: 0 }, trailingSlash: false, body: undefined, contentType: undefined, condition: { kind: 'any' }, requestId: undefined },
  // PATCH bodies: nothing to change, null name, email null clears, unknown member, not JSON.
  ...['{}', '{"name":null}', '{"email":null}', '{"email":""}', '{"nickname":"x"}', '{"name":"  "}', `{"email":"${EMAILS[0]?.toUpperCase() ?? ''}"}`]
    .map((body) => ({ method: 'PATCH' as const, id: { kind: 'live' as const, index: 2 }, trailingSlash: false, body, contentType: 'application/json', condition: { kind: 'absent' as const }, requestId: undefined })),
  { method: 'PATCH', id: { kind: 'live', index: 2 }, trailingSlash: false, body: nameOnly('Plain'), contentType: 'text/plain', condition: { kind: 'absent' }, requestId: undefined },
  { method: 'PATCH', id: { kind: 'live', index: 2 }, trailingSlash: false, body: undefined, contentType: undefined, condition: { kind: 'absent' }, requestId: undefined }
]

t.test('one user: hostile ids, bodies and conditional headers', async (t) => {
  const statuses = tally()
  await fc.assert(fc.asyncProperty(fc.record({
    method: fc.constantFrom('GET', 'GET', 'PATCH', 'PATCH', 'PATCH', 'DELETE'),
    id: idSpecArb,
    trailingSlash: fc.boolean(),
    body: fc.option(bodyTextArb(true), { nil: undefined, freq: 10 }),
    contentType: contentTypeArb,
    condition: conditionArb,
    requestId: requestIdArb
  }), async (spec) => {
    // Bodies go with PATCH; on GET and DELETE only now and then.
    await checkIdRoute({ ...spec, body: spec.method === 'PATCH' || spec.trailingSlash ? spec.body : undefined }, statuses.count)
  }), { ...runs(2000), examples: idExamples.map((spec) => [spec]) })
  statuses.show(t)
})

// ---------------------------------------------------------------------------
// Pages: GET /api/users?limit&after

interface ListSpec {
  parts: Array<[string, string | undefined]>
  encoded: boolean
  garbage: string
  requestId: string | undefined
}

async function checkList (spec: ListSpec, counted: (status: number) => void): Promise<void> {
  const encode = (text: string): string => (spec.encoded ? percentEncode(text) : text.replace(/[#\s]/g, ''))
  const query = spec.parts.map(([key, value]) => (value === undefined ? encode(key) : `${encode(key)}=${encode(value)}`)).join('&') + spec.garbage
  const sent: Sent = { method: 'GET', url: `/api/users${query === '' ? '' : '?'}${query}`, headers: withRequestId({}, spec.requestId) }
  const response = await send(sent)
  const where = describeExchange(sent, response)
  counted(response.statusCode)
  checkCommon(sent, response, where)

  // The contract decides only for a well-formed query.
  let expected: { status: 400 } | { status: 200, limit: number, after: number } | undefined
  let strict = true
  if (spec.encoded && spec.garbage === '') {
    // A bare empty key renders as nothing at all.
    const parts = spec.parts.filter(([key, value]) => key !== '' || value !== undefined)
    const keys = parts.map(([key]) => key)
    if (keys.some((key) => key !== 'limit' && key !== 'after') || new Set(keys).size < keys.length) {
      expected = { status: 400 }
    } else {
      const value = (name: string): string | undefined => {
        const part = parts.find(([key]) => key === name)
        return part === undefined ? undefined : part[1] ?? ''
      }
      const limitText = value('limit')
      const afterText = value('after')
      const limit = limitText === undefined ? { kind: 'valid' as const, value: 50 } : numberVerdict(limitText, 1, 1000)
      const after = afterText === undefined ? { kind: 'valid' as const, value: 0 } : numberVerdict(afterText, 0, MAX_ID)
      if (limit.kind === 'invalid' || after.kind === 'invalid') {
        expected = { status: 400 }
      } else {
        expected = { status: 200, limit: limit.value, after: after.value }
        strict = limit.kind === 'valid' && after.kind === 'valid'
      }
    }
  }
  if (expected !== undefined) {
    const allowed = strict ? [expected.status] : [expected.status, 400]
    expect(allowed.includes(response.statusCode), `expected ${allowed.join(' or ')}: ${where}`)
  } else {
    expect([200, 400].includes(response.statusCode), `200 or 400: ${where}`)
  }
  if (response.statusCode === 400) {
    expect(/querystring/.test(checkErrorBody(response, where)), `the message names the query: ${where}`)
    return
  }
  expect(response.statusCode === 200, `a page or a 400: ${where}`)
  const page = parseJson(response.body)
  expect(isRecord(page) && sameKeys(page, ['items', 'nextCursor']) && Array.isArray(page.items), `a page is {items, nextCursor}: ${where}`)
  const items = (page.items as unknown[]).map((item) => checkUser(item, where))
  expect(items.length <= 1000, `at most 1000 items: ${where}`)
  expect(items.every((item, i) => i === 0 || (items[i - 1]?.id ?? 0) < item.id), `ascending ids: ${where}`)
  expect(page.nextCursor === null || page.nextCursor === items.at(-1)?.id, `nextCursor is null or the last id: ${where}`)
  for (const item of items) {
    const user = model.users.get(item.id)
    expect(user !== undefined && user.name === item.name && user.email === item.email && user.updatedAt === item.updatedAt, `items as stored: ${where}`)
  }
  if (expected?.status === 200) {
    const ids = model.ids().filter((id) => id > expected.after)
    expect(JSON.stringify(items.map((item) => item.id)) === JSON.stringify(ids.slice(0, expected.limit)), `the first ${expected.limit} users after ${expected.after}: ${where}`)
    const next = ids.length > expected.limit ? ids[expected.limit - 1] : null
    expect(page.nextCursor === next, `nextCursor ${String(next)}: ${where}`)
  }
}

const queryKey = fc.oneof(
  { weight: 10, arbitrary: fc.constantFrom('limit', 'after') },
  { weight: 2, arbitrary: fc.constantFrom('LIMIT', 'Limit', 'page', 'offset', '__proto__', 'constructor', 'toString', '', 'limit[]', 'after ', ' limit', 'after.x') },
  { weight: 1, arbitrary: anyString }
)

const listExamples: ListSpec[] = [
  ...['limit=0', 'limit=1001', 'limit=1000', 'limit=1', 'limit=abc', 'limit=1.5', 'after=-1', 'after=abc', 'after=9007199254740991', 'after=9007199254740992', 'page=2']
    .map((pair) => ({ parts: [pair.split('=') as [string, string]], encoded: true, garbage: '', requestId: undefined })),
  { parts: [['limit', '1'], ['limit', '2']], encoded: true, garbage: '', requestId: undefined },
  { parts: [['limit', '2'], ['after', '1']], encoded: true, garbage: '', requestId: undefined },
  { parts: [['limit', undefined]], encoded: true, garbage: '', requestId: undefined }
]

t.test('pages: hostile query strings', async (t) => {
  const statuses = tally()
  await fc.assert(fc.asyncProperty(fc.record({
    parts: fc.array(fc.tuple(queryKey, fc.option(numericText, { nil: undefined, freq: 12 })), { maxLength: 3 }),
    encoded: fc.boolean(),
    garbage: fc.oneof({ weight: 6, arbitrary: fc.constant('') }, { weight: 1, arbitrary: fc.constantFrom('&', '&&', '=', '+', '&=', '&limit', '%', '%zz', '%E0%A4%A', '%00', '%C0%80', '%ED%A0%80', '&limit=%FF') }),
    requestId: requestIdArb
  }), (spec) => checkList(spec, statuses.count)), { ...runs(1000), examples: listExamples.map((spec) => [spec]) })
  statuses.show(t)
})

// ---------------------------------------------------------------------------
// The other routes, and methods no route has.

interface OtherSpec {
  method: Method
  path: string
  trailingSlash: boolean
  query: string
  body: string | undefined
  contentType: string | undefined
  requestId: string | undefined
}

const OTHER_PATHS = ['/health/live', '/health/ready', '/metrics', '/docs/json', '/docs', '/api/user', '/api/users', '/api/users/1', '/', '/api', '/nothing']
const ROUTES = new Set(['GET /health/live', 'GET /health/ready', 'GET /metrics', 'GET /docs/json', 'GET /docs', 'GET /api/user', 'GET /api/users',
  'POST /api/user', 'POST /api/users', 'GET /api/users/1', 'PATCH /api/users/1', 'DELETE /api/users/1'])

async function checkOther (spec: OtherSpec, counted: (status: number) => void): Promise<void> {
  const contentType = spec.contentType === undefined ? undefined : onTheWire(spec.contentType)
  const headers = withRequestId({}, spec.requestId)
  if (contentType !== undefined) headers['content-type'] = contentType
  const payload = spec.body === undefined ? undefined : Buffer.from(spec.body, 'utf8')
  const path = spec.path + (spec.trailingSlash && spec.path !== '/' ? '/' : '')
  const sent: Sent = { method: spec.method, url: `${path}${spec.query === '' ? '' : '?'}${spec.query}`, headers, payload }
  const response = await send(sent)
  const where = describeExchange(sent, response)
  counted(response.statusCode)
  checkCommon(sent, response, where)

  if (!ROUTES.has(`${spec.method} ${spec.path}`)) {
    // A body is read before the route is known to be missing (even an unknown route parses it).
    const allowed = spec.method === 'GET' || (payload === undefined && contentType === undefined) ? [404] : [404, 400, 413, 415]
    expect(allowed.includes(response.statusCode), `no such route: ${allowed.join(' or ')}: ${where}`)
    if (response.statusCode === 404) expect(/not found/.test(checkErrorBody(response, where)), `a 404 says so: ${where}`)
    return
  }
  // GET routes read no body: whatever is sent along is ignored, or refused.
  const refused = payload === undefined ? [] : [400, 413, 415]
  const body = parseJson(response.body)
  switch (spec.path) {
    case '/health/live':
    case '/health/ready':
      expect([200, ...refused].includes(response.statusCode), `expected 200: ${where}`)
      if (response.statusCode === 200) expect(JSON.stringify(body) === '{"status":"ok"}', `{status: "ok"}: ${where}`)
      return
    case '/metrics':
      expect([200, ...refused].includes(response.statusCode), `expected 200: ${where}`)
      if (response.statusCode === 200) {
        expect(/^text\/plain/.test(String(response.headers['content-type'])) && /^# (?:HELP|TYPE) /m.test(response.body), `Prometheus text: ${where}`)
        expect(!/\?|%/.test(/^http_requests_total\{.*$/m.exec(response.body)?.[0] ?? ''), `metrics name route templates, not raw URLs: ${where}`)
      }
      return
    case '/docs/json':
      expect([200, ...refused].includes(response.statusCode), `expected 200: ${where}`)
      if (response.statusCode === 200) expect(isRecord(body) && /^3\./.test(String(body.openapi)) && isRecord(body.paths) && '/api/users/{id}' in body.paths, `an OpenAPI 3 document: ${where}`)
      return
    case '/docs':
      expect([200, 302, ...refused].includes(response.statusCode), `the docs page: ${where}`)
      return
    case '/api/user': {
      const ids = model.ids()
      const allowed = [ids.length === 0 ? 404 : 200, ...refused]
      expect(allowed.includes(response.statusCode), `expected ${allowed.join(' or ')}: ${where}`)
      if (response.statusCode === 404) expect(body !== undefined && (body as { message?: unknown }).message === 'Users not found.', `"Users not found.": ${where}`)
      if (response.statusCode === 200) {
        const expected = ids.map((id) => ({ id, name: model.users.get(id)?.name }))
        expect(JSON.stringify(body) === JSON.stringify(expected), `every user's {id, name}, by id: ${where}`)
      }
      return
    }
    default:
      // The users routes themselves have properties of their own; here only the universal checks.
      expect(response.statusCode < 500, `never a 5xx: ${where}`)
  }
}

t.test('the other routes and methods: anything in the query, headers and body', async (t) => {
  const statuses = tally()
  await fc.assert(fc.asyncProperty(fc.record({
    method: fc.constantFrom<Method>('GET', 'GET', 'GET', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'),
    path: fc.constantFrom(...OTHER_PATHS),
    trailingSlash: fc.boolean(),
    query: fc.oneof(fc.constant(''), fc.string({ unit: 'grapheme-ascii', maxLength: 20 }).map((text) => text.replace(/[#\s]/g, '')), anyString.map(percentEncode)),
    body: fc.option(bodyTextArb(true), { nil: undefined, freq: 3 }),
    contentType: contentTypeArb,
    requestId: requestIdArb
  }).filter((spec) => !(spec.method !== 'GET' && spec.path.startsWith('/api/users'))), (spec) => checkOther(spec, statuses.count)), runs(800))
  statuses.show(t)
})

// ---------------------------------------------------------------------------
// URLs a router or a number parser gets wrong: malformed percent-encoding,
// segments past the router's length limit, numbers a double cannot hold
// (infinities, fractions it rounds away). Each is a 4xx in the contract's
// shape, and where the text is no integer id, limit or cursor, a 400.

interface EdgeSpec {
  method: 'GET' | 'PATCH' | 'DELETE'
  prefix: string
  segment: string
}

const NUMBER_PREFIXES = ['/api/users/', '/api/users?limit=', '/api/users?after=', '/api/users?limit=5&after=']
const OTHER_PREFIXES = ['/api/user/', '/health/', '/docs/', '/']

/** Requests whose URL ends in `segment`: a 4xx in the contract's shape, and a 400 where `noInteger` says the text is no integer. */
async function edgeProperty (t: Test, segment: fc.Arbitrary<string>, prefixes: string[], noInteger: boolean, numRuns: number): Promise<void> {
  const statuses = tally()
  await fc.assert(fc.asyncProperty(fc.record({
    method: fc.constantFrom('GET', 'PATCH', 'DELETE'),
    prefix: fc.constantFrom(...prefixes),
    segment
  }), async (spec: EdgeSpec) => {
    const method = spec.prefix === '/api/users/' ? spec.method : 'GET'
    const headers: Record<string, string> = method === 'PATCH' ? { 'content-type': 'application/json' } : {}
    const sent: Sent = { method, url: spec.prefix + spec.segment, headers, payload: method === 'PATCH' ? Buffer.from(nameOnly('Edge')) : undefined }
    const response = await send(sent)
    const where = describeExchange(sent, response)
    statuses.count(response.statusCode)
    checkCommon(sent, response, where)
    expect(response.statusCode >= 400, `a 4xx: ${where}`)
    if (noInteger && NUMBER_PREFIXES.includes(spec.prefix)) expect(response.statusCode === 400, `no integer: 400: ${where}`)
  }), runs(numRuns))
  statuses.show(t)
}

const BAD_PERCENT = ['%', '%%', '%zz', '%0', '%E0%A4%A', '%u0041', '%C0%80', '%ED%A0%80', '%FF', '1%', '%%31']

t.test('edges: malformed percent-encoding is a 400 in the contract\'s shape', (t) => edgeProperty(t, fc.oneof(
  fc.constantFrom(...BAD_PERCENT),
  fc.tuple(fc.string({ unit: 'grapheme-ascii', maxLength: 4 }).map(percentEncode), fc.constantFrom(...BAD_PERCENT)).map(([a, b]) => a + b)
), [...NUMBER_PREFIXES.slice(0, 1), ...OTHER_PREFIXES], false, 40))

t.test('edges: ids past the router\'s length limit are a 4xx in the contract\'s shape', (t) => edgeProperty(t,
  fc.tuple(fc.integer({ min: 101, max: 2_000 }), fc.constantFrom('1', '9', 'a', '%31', '-')).map(([n, c]) => c.repeat(Math.ceil(n / c.length))),
  ['/api/users/', '/api/users?after=', '/docs/static/'], false, 40))

t.test('edges: numbers a double cannot hold as an integer are a 400', (t) => edgeProperty(t, fc.oneof(
  fc.constantFrom('Infinity', '-Infinity', '+Infinity', '1e400', '-1e400', '1E999', '9e9999', '%20Infinity', 'Infinity%20'),
  // Between 2^52 and 2^53 a double has no halves: 4503599627370497.5 reads as an integer.
  fc.bigInt({ min: 2n ** 52n, max: 2n ** 53n - 2n }).map((n) => `${n}.5`),
  fc.bigInt({ min: 2n ** 53n, max: 2n ** 60n }).map((n) => `${n}.25`)
), NUMBER_PREFIXES, true, 40))

// ---------------------------------------------------------------------------
// Bodies that are not UTF-8: JSON text must be, and a name must be stored as sent.

t.test('bodies that are not UTF-8 are a 400 and store nothing', async (t) => {
  const statuses = tally()
  const invalid = fc.constantFrom('ff', 'fe', 'c0', 'c080', 'c1bf', '80', 'bf', 'e282', 'f09f98', 'eda080', 'edbfbf', 'f4908080', 'f8888080', 'e080af')
  await fc.assert(fc.asyncProperty(fc.record({
    route: fc.constantFrom('POST /api/users', 'POST /api/user', 'PATCH /api/users/{id}'),
    before: fc.string({ unit: 'grapheme-ascii', maxLength: 5 }).map((text) => text.replace(/["\\]/g, '')),
    bytes: invalid,
    after: fc.string({ unit: 'grapheme-ascii', maxLength: 5 }).map((text) => text.replace(/["\\]/g, '')),
    inKey: fc.boolean()
  }), async (spec) => {
    const ids = model.ids()
    const target = ids[0]
    const [method, path] = spec.route.split(' ') as ['POST' | 'PATCH', string]
    const url = path.replace('{id}', String(target ?? 1))
    const name = Buffer.concat([Buffer.from(spec.before), Buffer.from(spec.bytes, 'hex'), Buffer.from(spec.after)])
    const payload = spec.inKey
      ? Buffer.concat([Buffer.from('{"name":"Ada","'), name, Buffer.from('":null}')])
      : Buffer.concat([Buffer.from('{"name":"'), name, Buffer.from('"}')])
    const sent: Sent = { method, url, headers: { 'content-type': 'application/json' }, payload }
    const count = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM users')
    const response = await send(sent)
    const where = describeExchange(sent, response)
    statuses.count(response.statusCode)
    // Whatever was accepted joins the model as stored: this property, not the final check, reports it.
    const answered = parseJson(response.body)
    if (response.statusCode < 300 && isRecord(answered) && typeof answered.id === 'number') {
      const id = answered.id
      const row = await storedRow(id)
      const { rows: [times] } = await db.query<{ createdAt: string, updatedAt: string }>(`SELECT
          to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "createdAt",
          to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "updatedAt" FROM users WHERE id = $1`, [id])
      if (row !== undefined && times !== undefined) model.users.set(id, { ...row, ...times })
      model.highestId = Math.max(model.highestId, id)
    }
    checkCommon(sent, response, where)
    expect(response.statusCode === 400, `not UTF-8: 400: ${where}`)
    const after = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM users')
    expect(after.rows[0]?.n === count.rows[0]?.n, `nothing created: ${where}`)
    if (target !== undefined) await checkStored(target, `nothing changed: ${where}`)
  }), runs(40))
  statuses.show(t)
})

// ---------------------------------------------------------------------------
// Headers as bytes on a real socket: Node's parser refuses some before the
// app (control characters); the client must still get a readable answer.

interface RawAnswer {
  status: number
  headers: Record<string, string>
  body: string
}

async function rawRequest (port: number, request: Buffer): Promise<RawAnswer> {
  const socket = connect(port, '127.0.0.1')
  socket.setTimeout(5_000, () => socket.destroy())
  socket.on('error', () => {})
  // Written, not ended: a client that half-closes first gets no answer from Node, whatever the app does.
  socket.write(request)
  const chunks: Buffer[] = []
  for await (const chunk of socket) chunks.push(chunk as Buffer)
  const text = Buffer.concat(chunks).toString('latin1')
  const end = text.indexOf('\r\n\r\n')
  const [statusLine = '', ...lines] = text.slice(0, end < 0 ? text.length : end).split('\r\n')
  const headers: Record<string, string> = {}
  for (const line of lines) {
    const colon = line.indexOf(':')
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim()
  }
  const length = Number(headers['content-length'] ?? Number.NaN)
  const rest = Buffer.from(end < 0 ? '' : text.slice(end + 4), 'latin1')
  const body = Number.isNaN(length) ? rest.toString('utf8') : rest.subarray(0, length).toString('utf8')
  return { status: Number(statusLine.split(' ')[1]), headers, body }
}

t.test('header bytes on a real socket: parser refusals are 400s naming the header', async (t) => {
  // An app and database of their own: requests here may create users the model does not follow.
  const own = await buildTestApp(t)
  await own.app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = own.app.server.address() as AddressInfo
  const user = (await own.app.inject({ method: 'POST', url: '/api/users', payload: { name: 'Socket' } })).json() as ApiUser
  const statuses = tally()
  const byte = fc.oneof(
    { weight: 6, arbitrary: fc.integer({ min: 0x20, max: 0x7e }) },
    { weight: 2, arbitrary: fc.integer({ min: 0x00, max: 0x1f }).filter((b) => b !== 0x0a) },
    { weight: 1, arbitrary: fc.constantFrom(0x7f, 0x09) },
    { weight: 2, arbitrary: fc.integer({ min: 0x80, max: 0xff }) }
  )
  await fc.assert(fc.asyncProperty(fc.record({
    header: fc.constantFrom('Idempotency-Key', 'If-Match', 'If-None-Match', 'X-Request-Id'),
    value: fc.array(byte, { maxLength: 40 })
  }), async ({ header, value }) => {
    const bytes = Buffer.from(value)
    const body = header === 'Idempotency-Key' ? JSON.stringify({ name: `raw ${bytes.toString('hex')}` }) : header === 'If-Match' ? nameOnly('raw') : ''
    const start = header === 'Idempotency-Key' ? 'POST /api/users' : header === 'If-Match' ? `PATCH /api/users/${user.id}` : header === 'If-None-Match' ? `GET /api/users/${user.id}` : 'GET /health/live'
    const request = Buffer.concat([
      Buffer.from(`${start} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n`),
      ...(body === '' ? [] : [Buffer.from(`Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n`)]),
      Buffer.from(`${header}: `), bytes, Buffer.from(`\r\n\r\n${body}`)
    ])
    const answer = await rawRequest(port, request)
    const where = `${JSON.stringify(request.toString('latin1'))}\n  -> ${answer.status} ${JSON.stringify(answer.headers)} ${answer.body}`
    statuses.count(answer.status)
    expect(answer.status >= 200 && answer.status < 500, `an answer, never a 5xx or a dropped connection: ${where}`)
    const wire = bytes.toString('latin1').replace(/^[ \t]+|[ \t]+$/g, '')
    const refused = [...wire].some((char) => (char.charCodeAt(0) < 0x20 && char !== '\t') || char === '\x7f')
    if (answer.status >= 400) {
      expect(/^application\/json/.test(answer.headers['content-type'] ?? ''), `JSON: ${where}`)
      const error = parseJson(answer.body)
      expect(isRecord(error) && sameKeys(error, ERROR_KEYS) && error.statusCode === answer.status && error.error === STATUS_CODES[answer.status],
        `the contract's error shape: ${where}`)
      expect(!INTERNALS.test(answer.body), `no internals: ${where}`)
      if (refused || header === 'Idempotency-Key') {
        expect(String(error.message).includes(`headers/${header.toLowerCase()}`), `the message names the header: ${where}`)
      }
    }
    if (refused) {
      expect(answer.status === 400, `a control character in a header is a 400: ${where}`)
      return
    }
    if (header === 'X-Request-Id') {
      expect(answer.status === 200, `live: ${where}`)
      expect(ACCEPTED_REQUEST_ID.test(wire) ? answer.headers['x-request-id'] === wire : UUID.test(answer.headers['x-request-id'] ?? ''), `the request id: ${where}`)
    }
    if (header === 'Idempotency-Key') expect(answer.status === (keyValid(wire) ? 201 : 400), `a key of printable characters: ${where}`)
  }), runs(100))
  statuses.show(t)
  await checkDatabase(t, own.db)
})

// ---------------------------------------------------------------------------
// Afterwards: only valid rows, and exactly the model's.

async function checkDatabase (t: Test, pool: pg.Pool): Promise<void> {
  const { rows: [counts] } = await pool.query<Record<string, number>>(`SELECT
      count(*)::int AS users,
      count(*) FILTER (WHERE char_length(name) NOT BETWEEN 1 AND 50)::int AS "name length",
      count(*) FILTER (WHERE name ~ '^[[:space:]]*$')::int AS "blank name",
      count(*) FILTER (WHERE email IS NOT NULL AND (char_length(email) > 254 OR email !~ '^[^@[:space:]]+@[^@[:space:]]+$'))::int AS "implausible email",
      count(*) FILTER (WHERE created_at > updated_at)::int AS "created after updated",
      count(*) FILTER (WHERE updated_at > now())::int AS "from the future",
      count(*) FILTER (WHERE version < 1)::int AS "version below 1",
      (SELECT count(*) FROM (SELECT lower(email) FROM users WHERE email IS NOT NULL GROUP BY 1 HAVING count(*) > 1) twice)::int AS "email twice"
    FROM users`)
  for (const [what, count] of Object.entries(counts ?? {})) {
    if (what !== 'users') t.equal(count, 0, `no user with ${what}`)
  }
  const { rows } = await pool.query<{ id: string, name: string, email: string | null }>('SELECT id, name, email FROM users ORDER BY id')
  const badNames = rows.filter((row) => nameVerdict(row.name) !== 'valid')
  t.same(badNames, [], 'every stored name: 1 to 50 code points, not only white space, no NUL, no lone surrogate')
  const badEmails = rows.filter((row) => row.email !== null && emailVerdict(row.email) === 'invalid')
  t.same(badEmails, [], 'every stored email plausible')

  const { rows: keys } = await pool.query<{ key: string, fingerprint: string, statusCode: number | null, body: string | null, ttl: number }>(`SELECT key,
      fingerprint, status_code AS "statusCode", response_body AS body, extract(epoch FROM expires_at - created_at)::float8 AS ttl
    FROM idempotency_keys`)
  const badKeys = keys.filter((row) => !keyValid(row.key) || !/^[0-9a-f]{64}$/.test(row.fingerprint) || row.statusCode !== 201 ||
    !isRecord(parseJson(row.body ?? '')) || row.ttl < 86_400)
  t.same(badKeys, [], 'every Idempotency-Key record: a printable key, its 201 answer, kept 24 hours')
  t.comment(`${counts?.users ?? 0} users, ${keys.length} idempotency keys`)
}

t.test('afterwards the database holds only valid users, exactly those the API accepted', async (t) => {
  await checkDatabase(t, db)
  const { rows } = await db.query<{ id: string, name: string, email: string | null, version: string }>('SELECT id, name, email, version FROM users ORDER BY id')
  const stored = rows.map((row) => ({ id: Number(row.id), name: row.name, email: row.email, version: Number(row.version) }))
  const expected = model.ids().map((id) => {
    const user = model.users.get(id) as ModelUser
    return { id, name: user.name, email: user.email, version: user.version }
  })
  t.same(stored, expected, 'the stored users are the model\'s: every accepted create, change and delete, nothing else')
  t.same([...model.keys.keys()].sort(), (await db.query<{ key: string }>('SELECT key FROM idempotency_keys ORDER BY key')).rows.map((row) => row.key).sort(),
    'an Idempotency-Key is kept for each create that used one, and none for a create that failed')

  // The API agrees with the table: a page walk and the seed-compatible list.
  const walked: ApiUser[] = []
  for (let after = 0, pages = 0; pages < 1_000; pages++) {
    const page = (await app.inject({ url: `/api/users?limit=7&after=${after}` })).json() as { items: ApiUser[], nextCursor: number | null }
    walked.push(...page.items)
    if (page.nextCursor === null) break
    after = page.nextCursor
  }
  t.same(walked.map((user) => ({ id: user.id, name: user.name, email: user.email })), expected.map(({ id, name, email }) => ({ id, name, email })), 'a page walk sees every user once')
  const legacy = await app.inject({ url: '/api/user' })
  t.same(legacy.json(), expected.map(({ id, name }) => ({ id, name })), 'GET /api/user lists every user\'s id and name as stored')
})
