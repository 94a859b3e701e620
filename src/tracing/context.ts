// The one thing the rest of the service asks of tracing: the current
// request's trace context. This module loads nothing of OpenTelemetry: the
// set-up (./start.ts, imported only when tracing is on) plugs a reader in.

export interface TraceContextReader {
  /** The active span's W3C traceparent, if a sampled or unsampled span is active. */
  traceparent: () => string | undefined
}

let reader: TraceContextReader | undefined

/**
 * The W3C `traceparent` of the span being handled (for example, to put on an
 * event a request causes: CloudEvents' distributed tracing extension), or
 * undefined when tracing is off or no span is active.
 */
export function currentTraceparent (): string | undefined {
  return reader?.traceparent()
}

export function useTraceContextReader (next: TraceContextReader | undefined): void {
  reader = next
}
