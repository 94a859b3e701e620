import fc from 'fast-check'
import t from 'tap'
import { loggerOptions, redact, secretsOf } from '../src/logger.js'

t.test('a URL\'s password is taken out of a log line, the rest kept', async (t) => {
  const line = '{"msg":"connect failed","url":"postgres://app:p%40ss:w0rd@db.internal:5432/users"}'
  t.equal(redact(line, []), '{"msg":"connect failed","url":"postgres://app:[redacted]@db.internal:5432/users"}')
  t.equal(redact('see https://user:hunter22@example.com/x and postgresql://u:v@h/d', []),
    'see https://user:[redacted]@example.com/x and postgresql://u:[redacted]@h/d')
  t.equal(redact('postgres://app@db:5432/users and postgres://db/users', []), 'postgres://app@db:5432/users and postgres://db/users', 'no password, nothing changed')
})

t.test('the database password is taken out wherever it appears: written, decoded, JSON-escaped', async (t) => {
  const secrets = secretsOf('postgres://app:S3cret%2FP%40ss%22word@db/users')
  t.equal(redact('{"err":{"message":"bad S3cret/P@ss\\"word given"}}', secrets), '{"err":{"message":"bad [redacted] given"}}', 'escaped in JSON')
  t.equal(redact('{"msg":"tried S3cret%2FP%40ss%22word"}', secrets), '{"msg":"tried [redacted]"}', 'as written in the URL')
})

t.test('a short or common password does not break the JSON lines', async (t) => {
  for (const password of ['0', 'y', 'secret1']) {
    const line = '{"level":30,"time":1795829854810,"type":"x","msg":"Server listening at http://127.0.0.1:3000"}'
    t.equal(redact(line, secretsOf(`postgres://app:${password}@db/users`)), line, `password ${JSON.stringify(password)}`)
  }
  const secrets = secretsOf('postgres://app:12345678@db/users')
  t.equal(redact('{"time":1234567890,"msg":"12345678"}', secrets), '{"time":1234567890,"msg":"[redacted]"}', 'only as a whole word')
})

t.test('no secrets without a password or a URL that parses', async (t) => {
  t.same(secretsOf(undefined), [])
  t.same(secretsOf('postgres://app@db/users'), [])
  t.same(secretsOf('postgres://app:a/b@db:99999/x'), [])
})

t.test('JSON lines go through the filter; pretty output is for development', async (t) => {
  t.ok(loggerOptions({ logLevel: 'info', logPretty: false }).stream !== undefined, 'a redacting stream')
  t.same(loggerOptions({ logLevel: 'info', logPretty: true }).transport, { target: 'pino-pretty' })
})

// Every request's log line passes the filter, synchronously: a line a client
// shaped must not cost more than a line of its length should. Node refuses
// request headers over 16 KiB; a line may quote the URL and a header and
// escape them in JSON, so 64 KiB is past the largest line a request
// can make. Before the filter was linear, 16 KiB of "a." before a "://" took
// 155 ms, and this much over 2 s.
t.test('redaction takes time linear in the line, whatever a client puts in it', async (t) => {
  const LINE_CHARS = 64 * 1024
  const BOUND_MS = 250
  const fill = (unit: string, around: (filled: string) => string = (filled) => filled): string =>
    around(unit.repeat(Math.ceil(LINE_CHARS / unit.length)).slice(0, LINE_CHARS))
  const shapes: Record<string, string> = {
    'runs of word boundaries before a "://"': fill('a.', (run) => `GET /api/users?q=${run}&r=http://`),
    'hyphens, pluses and digits before a "://"': fill('a-1+b.', (run) => `${run}://u:p`),
    'many "://"': fill('://'),
    'many schemes': fill('a://'),
    'many user: without @': fill('a://u:'),
    'many colons after one user': fill(':', (run) => `x://u${run}`),
    'many "p:" after one user, no @': fill('p:', (run) => `x://u:${run}`),
    'many @': fill('@', (run) => `x://u:${run}`),
    'a long password with no @': fill('p', (run) => `x://u:${run}`),
    'a long user with no colon': fill('u', (run) => `x://${run}@h`),
    'many passwords to redact': fill('x://u:p@h '),
    'JSON-escaped quotes': fill('\\"a.', (run) => `{"url":"${run}http://u:`),
    'white space after a user': fill(' ', (run) => `x://u:${run}@`)
  }
  const secrets = secretsOf(`postgres://app:${'a'.repeat(63)}b@db/users`)
  t.equal(secrets.length, 1, 'a bare secret is looked for too')
  shapes['the secret\'s first 63 characters, over and over'] = fill('a')

  for (const [shape, line] of Object.entries(shapes)) {
    const started = performance.now()
    redact(line, secrets)
    const elapsed = performance.now() - started
    t.ok(elapsed < BOUND_MS, `${shape}: ${Math.round(elapsed)} ms for ${line.length} characters (bound ${BOUND_MS} ms)`)
  }
})

t.test('redaction stays fast on lines of URL-like pieces fast-check puts together', async (t) => {
  const BOUND_MS = 250
  // Pieces of URLs: a short pattern of them, repeated to 64 KiB, then a few more.
  const piece = fc.constantFrom('a', 'Z', '1', '.', '-', '+', '_', ':', '/', '//', '://', '@', '?', '#', ' ', '"', '\\"', '%40', 'http://', 'u:p@')
  const pieces = (maxLength: number) => fc.array(piece, { minLength: 1, maxLength }).map((chosen) => chosen.join(''))
  let slowest = 0
  fc.assert(fc.property(pieces(6), pieces(4), (unit, tail) => {
    const line = unit.repeat(Math.ceil(64 * 1024 / unit.length)) + tail
    const started = performance.now()
    redact(line, [])
    slowest = Math.max(slowest, performance.now() - started)
    return true
  }), { seed: 20261128, numRuns: 300 })
  t.ok(slowest < BOUND_MS, `the slowest line took ${Math.round(slowest)} ms (bound ${BOUND_MS} ms)`)
})

t.test('passwords are still taken out of URLs among hostile text', async (t) => {
  t.equal(redact(`${'a.'.repeat(100)}http://u:secret@h`, []), `${'a.'.repeat(100)}http://u:[redacted]@h`)
  t.equal(redact('x://a:b@c://d:e@f', []), 'x://a:[redacted]@c://d:[redacted]@f', 'one after the other')
  t.equal(redact('s://://u:p@h', []), 's://://u:[redacted]@h', 'after a doubled "://"')
  t.equal(redact('x://u::p:q@h', []), 'x://u:[redacted]@h', 'colons in the password')
  t.equal(redact('{"url":"x://u:p\\"@h"}', []), '{"url":"x://u:p\\"@h"}', 'a quote ends the URL')
})
