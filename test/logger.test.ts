import t from 'tap'
import { loggerOptions, redact } from '../src/logger.js'

t.test('a URL\'s password is taken out of a log line, the rest kept', async (t) => {
  const line = '{"msg":"connect failed","url":"postgres://app:p%40ss:w0rd@db.internal:5432/users"}'
  t.equal(redact(line, []), '{"msg":"connect failed","url":"postgres://app:[redacted]@db.internal:5432/users"}')
  t.equal(redact('see https://user:hunter22@example.com/x and postgresql://u:v@h/d', []),
    'see https://user:[redacted]@example.com/x and postgresql://u:[redacted]@h/d')
  t.equal(redact('postgres://app@db:5432/users and postgres://db/users', []), 'postgres://app@db:5432/users and postgres://db/users', 'no password, nothing changed')
})

t.test('the database password is taken out wherever it appears', async (t) => {
  t.equal(redact('{"err":{"message":"bad password S3cret!Pw given"}}', ['S3cret!Pw']), '{"err":{"message":"bad password [redacted] given"}}')
})

t.test('the logger is built with the database password to hide, encoded and decoded', async (t) => {
  const options = loggerOptions({ logLevel: 'info', logPretty: false, databaseUrl: 'postgres://app:a%2Fb%40c@db/users' })
  t.ok(options.stream !== undefined, 'JSON lines go through the redacting stream')
  t.same(loggerOptions({ logLevel: 'info', logPretty: true }).transport, { target: 'pino-pretty' }, 'pretty output for development')
})
