import fp from 'fastify-plugin'
import type { TracingConfig } from '../config.js'
import { bindToRequestLog } from '../logger.js'
import { startTracing } from '../tracing/start.js'

/**
 * Each request a server span (@fastify/otel), and its log lines carrying
 * trace_id and span_id so logs and traces join. Registered, and imported,
 * only when tracing is on.
 */
export default fp<TracingConfig>(async function tracing (fastify, config) {
  // Already started by the server before `pg` was imported; a test's app starts it here.
  const { fastify: instrumentation, flush } = startTracing(config)
  await fastify.register(instrumentation.plugin())

  fastify.addHook('onRequest', async (request, reply) => {
    const span = request.opentelemetry().span
    // An unsampled request's ids lead to no trace: its lines stay as they are.
    if (span == null || !span.isRecording()) return
    const { traceId, spanId } = span.spanContext()
    bindToRequestLog(request, reply, { trace_id: traceId, span_id: spanId })
  })
  // The last spans, sent before the process exits; a collector that is down
  // must not fail the shutdown.
  fastify.addHook('onClose', async () => {
    await flush().catch((error: unknown) => fastify.log.warn({ err: error }, 'could not send the last spans'))
  })
}, { name: 'tracing' })
