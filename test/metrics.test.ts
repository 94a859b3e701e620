import t from 'tap'
import { buildTestApp, createUser } from './helper.js'

t.test('GET /metrics: Prometheus text with requests by route template, the pool and the process', async (t) => {
  const { app } = await buildTestApp(t)
  const user = await createUser(app, { name: 'Ada' })
  await app.inject({ url: `/api/users/${user.id}` })
  await app.inject({ url: '/api/users/999999' })
  await app.inject({ url: '/api/users/999999' })

  const response = await app.inject({ url: '/metrics' })
  t.equal(response.statusCode, 200)
  t.match(response.headers['content-type'], /^text\/plain; version=0\.0\.4/)
  const text = response.body
  const value = (series: string): number | undefined => {
    const line = text.split('\n').find((l) => l.startsWith(`${series} `))
    return line === undefined ? undefined : Number(line.slice(series.length + 1))
  }

  t.equal(value('http_requests_total{method="POST",route="/api/users",status_code="201"}'), 1)
  t.equal(value('http_requests_total{method="GET",route="/api/users/:id",status_code="200"}'), 1)
  t.equal(value('http_requests_total{method="GET",route="/api/users/:id",status_code="404"}'), 2, 'by template and status')
  t.notMatch(text, /route="\/api\/users\/\d/, 'never the raw URL')
  t.equal(value('http_request_duration_seconds_count{method="GET",route="/api/users/:id",status_code="404"}'), 2)
  t.equal(value('http_requests_in_flight'), 1, 'this request itself')
  t.ok((value('db_pool_connections{state="total"}') ?? 0) >= 1, 'the pool has a connection')
  t.type(value('db_pool_connections{state="idle"}'), 'number')
  t.equal(value('db_pool_connections{state="waiting"}'), 0)
  for (const series of ['process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds', 'nodejs_heap_size_used_bytes']) {
    t.ok((value(series) ?? -1) >= 0, series)
  }

  await app.inject({ url: '/nothing/here' })
  const after = (await app.inject({ url: '/metrics' })).body
  t.match(after, /http_requests_total\{method="GET",route="\(unmatched\)",status_code="404"\} 1/, 'unknown URLs share one series')
})

t.test('requests the router refuses are counted, under the unmatched route', async (t) => {
  const { app } = await buildTestApp(t)
  await app.inject({ url: '/api/users/%zz' })
  await app.inject({ url: '/api/users/%zz' })
  await app.inject({ method: 'PATCH', url: `/api/users/${'1'.repeat(2_000)}` })

  const text = (await app.inject({ url: '/metrics' })).body
  t.match(text, /\nhttp_requests_total\{method="GET",route="\(unmatched\)",status_code="400"\} 2\n/)
  t.match(text, /\nhttp_requests_total\{method="PATCH",route="\(unmatched\)",status_code="414"\} 1\n/)
  t.match(text, /\nhttp_request_duration_seconds_count\{method="GET",route="\(unmatched\)",status_code="400"\} 2\n/)
})
