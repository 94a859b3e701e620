// The HTTP ceiling: a bare Fastify server (the service's own Fastify, from
// node_modules) that answers a workload's method and path shape with the
// same bytes the real service returned for one sample request, from memory,
// with no database, no schemas, no hooks and no logging. What the service
// reaches is reported as a share of what this reaches under the same load,
// in the same run, so the figures survive the machine's drift between runs.
//
// The sample is kept as a parsed object, and Fastify's default serializer
// (JSON.stringify) writes it for every request, as a bare route that
// returns an object does. That is the ceiling the issue measured (W2: about
// 18,000 req/s; sending the stored bytes as they are reaches 50,000, which
// no route that serializes anything can approach), so its targets and the
// Express figures stay comparable. bench/run.js checks that the bytes are
// the same as the service's.
//
//   node bench/ceiling.js SAMPLES.json
//
// SAMPLES.json: [{ method, route, status, contentType, body }], route being
// a Fastify path ("/api/users/:id"). Prints "listening PORT" once it listens
// on a free loopback port; stops on SIGTERM or SIGINT.
import { readFileSync } from 'node:fs'
import Fastify from 'fastify'

const samples = JSON.parse(readFileSync(process.argv[2], 'utf8'))
const app = Fastify({ logger: false })

for (const sample of samples) {
  const payload = JSON.parse(sample.body)
  app.route({
    method: sample.method,
    url: sample.route,
    handler: (request, reply) => {
      reply.code(sample.status).header('content-type', sample.contentType).send(payload)
    }
  })
}

await app.listen({ host: '127.0.0.1', port: 0 })
console.log(`listening ${app.server.address().port}`)

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.once(signal, () => {
    app.close().then(() => process.exit(0), () => process.exit(1))
  })
}
