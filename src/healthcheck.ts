// The image's HEALTHCHECK: `node dist/healthcheck.js` asks this container's
// own service for its liveness and exits 0 on a 200, 1 otherwise, so the
// image needs no curl. Liveness, not readiness: a database outage must not
// mark every container unhealthy (see src/routes/health.ts).
// The service listens on 0.0.0.0 (HOST's default), so loopback reaches it.
const port = process.env.PORT !== undefined && process.env.PORT !== '' ? process.env.PORT : '3000'
const url = `http://127.0.0.1:${port}/health/live`

try {
  const response = await fetch(url, { signal: AbortSignal.timeout(2_000) })
  if (response.status !== 200) console.error(`healthcheck: ${url} answered ${response.status}`)
  process.exitCode = response.status === 200 ? 0 : 1
} catch (error) {
  // Refused (fetch's own message is only "fetch failed": the code is in its
  // cause), no answer within 2 s, or a PORT that makes no URL.
  const { message, cause } = error as Error & { cause?: { code?: string } }
  console.error(`healthcheck: ${url}: ${cause?.code ?? message}`)
  process.exitCode = 1
}
