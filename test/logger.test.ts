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
