// The optional features' cost, measured in the same run as the service
// without them (issue 18): BENCH_FEATURES=auth,events,tracing (or all)
// runs some workloads again on a service with that one feature on.
//
// Each feature: the workloads it reruns, and start(), which makes what the
// feature needs for the run (a key and a token, an exchange, an OTLP
// receiver) and gives the service's environment, a header wrk sends with
// every request (through BENCH_TOKEN, which bench/wrk/common.lua reads),
// what to report after each run, and stop().
import http from 'node:http'
import { mb, request } from './lib.js'

export const FEATURES = {
  // Issue 14: a bearer token checked on every /api request (ES256, a key made for the run).
  auth: {
    suffix: '+auth',
    workloads: ['W1', 'W3'],
    async start () {
      const { SignJWT, exportSPKI, generateKeyPair } = await import('jose')
      const alg = process.env.BENCH_AUTH_ALG || 'ES256'
      const { privateKey, publicKey } = await generateKeyPair(alg)
      const issuer = 'https://bench.invalid'
      const audience = 'users-service'
      const token = await new SignJWT({ scope: 'users:read users:write' })
        .setProtectedHeader({ alg }).setIssuer(issuer).setAudience(audience).setSubject('bench')
        .setIssuedAt().setExpirationTime('4h').sign(privateKey)
      return {
        describe: `a bearer token (${alg}) checked on every request`,
        env: { AUTH_MODE: 'jwt', AUTH_PUBLIC_KEY: await exportSPKI(publicKey), AUTH_ISSUER: issuer, AUTH_AUDIENCE: audience },
        token,
        stop: async () => {}
      }
    }
  },
  // Issue 15: each write also records its event, and the relay publishes it.
  events: {
    suffix: '+events',
    workloads: ['W3'],
    async start ({ runTag }) {
      const amqpUrl = process.env.BENCH_AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672'
      const exchange = `users_bench_${runTag}`
      return {
        describe: `user events on, to RabbitMQ (${new URL(amqpUrl).host}), exchange ${exchange}`,
        env: { EVENTS_AMQP_URL: amqpUrl, EVENTS_EXCHANGE: exchange },
        after: async (serviceUrl) => {
          const counts = await eventCounts(serviceUrl)
          console.log(`  events: ${counts.published} confirmed by the broker, ${counts.backlog} still in the outbox`)
          return counts
        },
        stop: () => deleteExchange(amqpUrl, exchange)
      }
    }
  },
  // Issue 16: every request sampled, spans sent as protobuf to a local receiver.
  tracing: {
    suffix: '+tracing',
    workloads: ['W1', 'W3'],
    async start () {
      const sink = await startOtlpSink()
      let before = sink.received()
      return {
        describe: `tracing on, every request sampled, OTLP/HTTP protobuf to a local receiver at ${sink.url}`,
        env: { OTEL_EXPORTER_OTLP_ENDPOINT: sink.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf', OTEL_TRACES_SAMPLER: 'always_on' },
        after: async () => {
          const now = sink.received()
          const exported = { posts: now.posts - before.posts, bytes: now.bytes - before.bytes }
          before = now
          console.log(`  exported: ${exported.posts} posts, ${mb(exported.bytes / 1024).toFixed(1)} MB`)
          return exported
        },
        stop: () => sink.stop()
      }
    }
  }
}

/** BENCH_FEATURES: a comma-separated list of FEATURES' names, or all; none when unset. */
export function selectedFeatures (text = process.env.BENCH_FEATURES) {
  if (text === undefined || text === '') return []
  const names = text === 'all' ? Object.keys(FEATURES) : text.split(',').map((name) => name.trim())
  const unknown = names.filter((name) => !(name in FEATURES))
  if (unknown.length > 0) {
    console.error(`bench: BENCH_FEATURES must be all or a comma-separated list of ${Object.keys(FEATURES).join(', ')} (got ${JSON.stringify(text)})`)
    process.exit(1)
  }
  return names
}

/** What the service's /metrics says of its events: confirmed, and still waiting. */
async function eventCounts (url) {
  const text = (await request(`${url}/metrics`)).body.toString('utf8')
  const value = (name) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN)
  return { published: value('events_published_total'), backlog: value('events_outbox_backlog') }
}

/** The run's exchange, gone with the run. */
async function deleteExchange (amqpUrl, exchange) {
  const { default: amqp } = await import('amqplib')
  const connection = await amqp.connect(amqpUrl)
  try {
    const channel = await connection.createChannel()
    await channel.deleteExchange(exchange)
  } finally {
    await connection.close()
  }
}

/**
 * Answers every POST as a collector would (200, an empty export response)
 * and counts what came, so the traced runs pay for building, batching,
 * encoding and sending every span, and nothing for a backend's work.
 */
async function startOtlpSink () {
  let posts = 0
  let bytes = 0
  const server = http.createServer((incoming, response) => {
    incoming.on('data', (chunk) => { bytes += chunk.length })
    incoming.on('end', () => {
      posts++
      response.writeHead(200, { 'content-type': 'application/x-protobuf' }).end()
    })
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    received: () => ({ posts, bytes }),
    stop: () => new Promise((resolve) => {
      server.closeAllConnections()
      server.close(resolve)
    })
  }
}
