// OpenTelemetry's set-up, imported only when tracing is configured (so none
// of the SDK is loaded otherwise). The server imports it before anything
// that imports `pg`: the service is ESM, and an ES module import of `pg`
// is seen only by the module hook registered here, not by the require hooks
// instrumentations use for CommonJS.
import { register } from 'node:module'
import { context, propagation, trace } from '@opentelemetry/api'
import { FastifyOtelInstrumentation } from '@fastify/otel'
import { OTLPTraceExporter as OTLPJsonTraceExporter } from '@opentelemetry/exporter-trace-otlp-http'
import { OTLPTraceExporter as OTLPProtobufTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto'
import { registerInstrumentations } from '@opentelemetry/instrumentation'
import { PgInstrumentation } from '@opentelemetry/instrumentation-pg'
import { defaultResource, detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources'
import {
  AlwaysOffSampler, AlwaysOnSampler, BatchSpanProcessor, NodeTracerProvider, ParentBasedSampler, TraceIdRatioBasedSampler,
  type Sampler
} from '@opentelemetry/sdk-trace-node'
import type { TracingConfig } from '../config.js'
import { useTraceContextReader } from './context.js'

const DEFAULT_SERVICE_NAME = 'users-service'

export interface Tracing {
  /** Fastify's instrumentation: its plugin makes each request a server span. */
  fastify: FastifyOtelInstrumentation
  /** Sends the spans still buffered. */
  flush: () => Promise<void>
}

let started: Tracing | undefined

/** Starts tracing once per process (later calls get the same instance). */
export function startTracing (config: TracingConfig): Tracing {
  if (started !== undefined) return started
  // Only `pg` goes through the module hook: wrapping every module costs start-up time.
  register('@opentelemetry/instrumentation/hook.mjs', import.meta.url, { data: { include: ['pg'] } })

  const provider = new NodeTracerProvider({
    resource: resourceOf(config),
    sampler: samplerOf(config),
    spanProcessors: [new BatchSpanProcessor(exporterOf(config))]
  })
  // The global tracer provider, W3C Trace Context propagation, and an
  // AsyncLocalStorage context manager.
  provider.register()

  const fastify = new FastifyOtelInstrumentation({
    // One server span per request; a span per hook would multiply the cost.
    instrumentHooks: false,
    instrumentHandler: false,
    requestHook: nameAndDescribe
  })
  registerInstrumentations({
    instrumentations: [
      // Statement text only: parameter values (names, emails) are never recorded.
      new PgInstrumentation({ requireParentSpan: true, enhancedDatabaseReporting: false }),
      fastify
    ]
  })
  useTraceContextReader({ traceparent })
  started = { fastify, flush: () => provider.forceFlush() }
  return started
}

function exporterOf (config: TracingConfig) {
  const options = { url: config.tracesUrl }
  return config.protocol === 'http/json' ? new OTLPJsonTraceExporter(options) : new OTLPProtobufTraceExporter(options)
}

/** The sampler OTEL_TRACES_SAMPLER names, with OTEL_TRACES_SAMPLER_ARG as its ratio. */
export function samplerOf ({ sampler, samplerRatio }: TracingConfig): Sampler {
  const ratio = new TraceIdRatioBasedSampler(samplerRatio)
  switch (sampler) {
    case 'always_on': return new AlwaysOnSampler()
    case 'always_off': return new AlwaysOffSampler()
    case 'traceidratio': return ratio
    case 'parentbased_always_off': return new ParentBasedSampler({ root: new AlwaysOffSampler() })
    case 'parentbased_traceidratio': return new ParentBasedSampler({ root: ratio })
    default: return new ParentBasedSampler({ root: new AlwaysOnSampler() })
  }
}

/**
 * users-service, unless OTEL_RESOURCE_ATTRIBUTES names a service.name, and
 * OTEL_SERVICE_NAME over both (the SDK's environment detector reads both
 * variables, with that precedence).
 */
function resourceOf (config: TracingConfig) {
  return defaultResource()
    .merge(resourceFromAttributes({ 'service.name': DEFAULT_SERVICE_NAME }))
    .merge(detectResources({ detectors: [envDetector] }))
    .merge(config.serviceName === undefined ? null : resourceFromAttributes({ 'service.name': config.serviceName }))
}

interface RequestSeen {
  method: string
  url: string
  routeOptions: { url?: string | undefined }
  raw: { httpVersion: string }
}

/**
 * Names the server span by its route template (GET /api/users/:id), and
 * keeps the query string out: it can hold an email address.
 */
function nameAndDescribe (span: { updateName: (name: string) => unknown, setAttributes: (attributes: Record<string, string>) => unknown }, request: RequestSeen): void {
  const route = request.routeOptions.url
  span.updateName(route === undefined ? request.method : `${request.method} ${route}`)
  const query = request.url.indexOf('?')
  span.setAttributes({
    'url.path': query === -1 ? request.url : request.url.slice(0, query),
    'url.scheme': 'http',
    'network.protocol.version': request.raw.httpVersion
  })
}

function traceparent (): string | undefined {
  if (trace.getActiveSpan() === undefined) return undefined
  const carrier: Record<string, string> = {}
  propagation.inject(context.active(), carrier)
  return carrier.traceparent
}
