// The OTEL_* settings (issue 16): tracing is off unless an endpoint is set,
// and a bad value stops start-up with one line naming the variable.
import t from 'tap'
import { ConfigError, loadConfig } from '../src/config.js'

const url = 'postgres://app@db.internal:5432/users'

t.test('off unless an OTLP endpoint is set', async (t) => {
  t.equal(loadConfig({ DATABASE_URL: url }).tracing, undefined)
  t.equal(loadConfig({ DATABASE_URL: url, OTEL_SERVICE_NAME: 'x', OTEL_TRACES_SAMPLER: 'always_on' }).tracing, undefined,
    'other OTEL_* variables alone turn nothing on')
  t.same(loadConfig({ DATABASE_URL: url, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' }).tracing, {
    tracesUrl: 'http://collector:4318/v1/traces',
    protocol: 'http/protobuf',
    serviceName: undefined,
    sampler: 'parentbased_always_on',
    samplerRatio: 1,
    resourceAttributes: undefined
  }, 'the defaults: protobuf, every request sampled unless the caller said not to')
})

t.test('the traces endpoint is used as it is; the general one gets /v1/traces', async (t) => {
  const tracesUrl = (env: NodeJS.ProcessEnv) => loadConfig({ DATABASE_URL: url, ...env }).tracing?.tracesUrl
  t.equal(tracesUrl({ OTEL_EXPORTER_OTLP_ENDPOINT: 'https://collector.example/otlp/' }), 'https://collector.example/otlp/v1/traces')
  t.equal(tracesUrl({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://collector:4318/custom' }), 'http://collector:4318/custom')
  t.equal(tracesUrl({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://a:4318', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://b:4318/t' }), 'http://b:4318/t',
    'the signal\'s own endpoint wins')
})

t.test('protocol, service name, sampler and its ratio, resource attributes', async (t) => {
  const tracing = loadConfig({
    DATABASE_URL: url,
    OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318',
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
    OTEL_SERVICE_NAME: 'users-eu',
    OTEL_TRACES_SAMPLER: 'parentbased_traceidratio',
    OTEL_TRACES_SAMPLER_ARG: '0.25',
    OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment=production,service.namespace=users'
  }).tracing
  t.match(tracing, {
    protocol: 'http/json',
    serviceName: 'users-eu',
    sampler: 'parentbased_traceidratio',
    samplerRatio: 0.25,
    resourceAttributes: 'deployment.environment=production,service.namespace=users'
  })
})

t.test('a bad OTEL_* value is one line naming the variable', async (t) => {
  const on = { DATABASE_URL: url, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' }
  const cases: Array<[NodeJS.ProcessEnv, RegExp]> = [
    [{ DATABASE_URL: url, OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' }, /^OTEL_EXPORTER_OTLP_ENDPOINT must be an http:\/\/ or https:\/\/ URL/],
    [{ DATABASE_URL: url, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'grpc://collector:4317' }, /^OTEL_EXPORTER_OTLP_TRACES_ENDPOINT must be an http/],
    [{ DATABASE_URL: url, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://[bad' }, /^OTEL_EXPORTER_OTLP_ENDPOINT must be .*does not parse as a URL/],
    [{ ...on, OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }, /^OTEL_EXPORTER_OTLP_PROTOCOL must be one of http\/protobuf, http\/json \(grpc is not supported\)/],
    [{ ...on, OTEL_TRACES_SAMPLER: 'sometimes' }, /^OTEL_TRACES_SAMPLER must be one of always_on, always_off, traceidratio/],
    [{ ...on, OTEL_TRACES_SAMPLER_ARG: '1.5' }, /^OTEL_TRACES_SAMPLER_ARG must be a sampling ratio from 0 to 1/],
    [{ ...on, OTEL_TRACES_SAMPLER_ARG: 'half' }, /^OTEL_TRACES_SAMPLER_ARG must be a sampling ratio/],
    [{ ...on, OTEL_RESOURCE_ATTRIBUTES: 'no pairs here' }, /^OTEL_RESOURCE_ATTRIBUTES must be comma-separated key=value pairs/]
  ]
  for (const [env, expected] of cases) {
    t.throws(() => loadConfig(env), ConfigError)
    try {
      loadConfig(env)
    } catch (error) {
      t.match((error as Error).message, expected, JSON.stringify(env))
      t.notMatch((error as Error).message, /\n/, 'one line')
    }
  }
})
