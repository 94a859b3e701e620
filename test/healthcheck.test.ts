// dist/healthcheck.js, the image's HEALTHCHECK: exit 0 only when
// /health/live answers 200 on PORT.
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { spawnDist } from './spawn.js'

async function serve (t: Test, status: number): Promise<number> {
  const server: Server = createServer((request, response) => {
    response.statusCode = request.url === '/health/live' ? status : 404
    response.end('{}')
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => server.close(resolve)))
  return (server.address() as AddressInfo).port
}

t.test('healthy when /health/live answers 200', async (t) => {
  const port = await serve(t, 200)
  const exit = await spawnDist(t, 'healthcheck.js', { PORT: String(port) }).exitWithin(5_000)
  t.equal(exit.code, 0)
})

t.test('unhealthy, with the reason, when it answers otherwise or not at all', async (t) => {
  const failing = await serve(t, 503)
  const unhealthy = spawnDist(t, 'healthcheck.js', { PORT: String(failing) })
  t.equal((await unhealthy.exitWithin(5_000)).code, 1)
  t.match(unhealthy.stderr(), /503/)

  // A port that was just free: nothing listens there.
  const probe = createServer()
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve))
  const freePort = (probe.address() as AddressInfo).port
  await new Promise((resolve) => probe.close(resolve))
  const nobody = spawnDist(t, 'healthcheck.js', { PORT: String(freePort) })
  t.equal((await nobody.exitWithin(5_000)).code, 1, 'nothing listening')
  t.match(nobody.stderr(), /ECONNREFUSED/)
})
