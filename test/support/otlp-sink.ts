// An OTLP/HTTP trace receiver for the tests: it accepts what an exporter
// posts (protobuf or JSON), decodes it with the OTLP definitions, and keeps
// every span in one simple shape, whichever protocol brought it.
import { once } from 'node:events'
import { createServer, type IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import { createRequire } from 'node:module'

// The OTLP protobuf messages, generated from opentelemetry-proto (protobufjs,
// shipped by @opentelemetry/otlp-transformer before it encoded by itself).
const require = createRequire(import.meta.url)
const { opentelemetry } = require('otlp-transformer-with-decoders/build/src/generated/root.js')
const ExportTraceServiceRequest = opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest

export interface ReceivedSpan {
  name: string
  /** OTLP's enum: 2 is SERVER, 3 CLIENT, 1 INTERNAL. */
  kind: number
  traceId: string
  spanId: string
  /** '' for a root span. */
  parentSpanId: string
  attributes: Record<string, unknown>
  resource: Record<string, unknown>
  /** How it came: the request's content type. */
  contentType: string
  path: string
}

export interface OtlpSink {
  /** The receiver's base URL (http://127.0.0.1:PORT), for OTEL_EXPORTER_OTLP_ENDPOINT. */
  url: string
  spans: ReceivedSpan[]
  /** Resolves once some received span matches. */
  waitForSpan: (predicate: (span: ReceivedSpan) => boolean, what: string) => Promise<ReceivedSpan>
  close: () => Promise<void>
}

export async function startOtlpSink (): Promise<OtlpSink> {
  const spans: ReceivedSpan[] = []
  const waiters = new Set<() => void>()
  const server = createServer((request, response) => {
    read(request).then((body) => {
      const contentType = request.headers['content-type'] ?? ''
      const decoded = contentType.startsWith('application/x-protobuf') ? fromProtobuf(body) : JSON.parse(body.toString('utf8'))
      spans.push(...spansOf(decoded, contentType, request.url ?? ''))
      for (const wake of waiters) wake()
      response.writeHead(200, { 'content-type': contentType }).end(contentType.includes('json') ? '{}' : undefined)
    }).catch((error: Error) => {
      response.writeHead(400).end(error.message)
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')

  function waitForSpan (predicate: (span: ReceivedSpan) => boolean, what: string): Promise<ReceivedSpan> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        waiters.delete(check)
        reject(new Error(`no span ${what} within 20 s; received: ${spans.map((span) => span.name).join(', ')}`))
      }, 20_000)
      function check (): void {
        const found = spans.find(predicate)
        if (found === undefined) return
        clearTimeout(timer)
        waiters.delete(check)
        resolve(found)
      }
      waiters.add(check)
      check()
    })
  }

  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    spans,
    waitForSpan,
    close: () => new Promise((resolve) => {
      server.closeAllConnections()
      server.close(() => resolve())
    })
  }
}

async function read (request: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of request) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks)
}

/** Protobuf to OTLP's JSON mapping (64-bit numbers as strings; ids, base64 here, become hex below). */
function fromProtobuf (body: Buffer): unknown {
  const message = ExportTraceServiceRequest.decode(body)
  return ExportTraceServiceRequest.toObject(message, { longs: String, bytes: String })
}

interface AnyValue { stringValue?: string, intValue?: string | number, boolValue?: boolean, doubleValue?: number, arrayValue?: { values?: AnyValue[] } }
interface KeyValue { key: string, value?: AnyValue }

function valueOf (value: AnyValue | undefined): unknown {
  if (value?.arrayValue != null) return (value.arrayValue.values ?? []).map(valueOf)
  if (value?.intValue != null) return Number(value.intValue)
  return value?.stringValue ?? value?.boolValue ?? value?.doubleValue
}

function attributesOf (list: KeyValue[] | undefined): Record<string, unknown> {
  return Object.fromEntries((list ?? []).map(({ key, value }) => [key, valueOf(value)]))
}

function spansOf (request: any, contentType: string, path: string): ReceivedSpan[] {
  const spans: ReceivedSpan[] = []
  for (const resourceSpans of request.resourceSpans ?? []) {
    const resource = attributesOf(resourceSpans.resource?.attributes)
    for (const scopeSpans of resourceSpans.scopeSpans ?? []) {
      for (const span of scopeSpans.spans ?? []) {
        spans.push({
          name: span.name,
          kind: span.kind,
          traceId: hexOf(span.traceId, contentType),
          spanId: hexOf(span.spanId, contentType),
          parentSpanId: hexOf(span.parentSpanId, contentType),
          attributes: attributesOf(span.attributes),
          resource,
          contentType,
          path
        })
      }
    }
  }
  return spans
}

/** Ids are hex in OTLP/JSON, bytes (here base64) in protobuf. */
function hexOf (id: string | undefined, contentType: string): string {
  if (id === undefined || id === '') return ''
  return contentType.includes('json') ? id.toLowerCase() : Buffer.from(id, 'base64').toString('hex')
}
