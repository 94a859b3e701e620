-- GET /api/user for bench/soak.js, beside bench/wrk/soak-mix.lua: every
-- user's id and name (about 4 MB over the soak's 100,000 users), on one
-- connection of its own, pausing between requests. Argument after `--`:
-- the pause in milliseconds.
--
-- Kept out of the mix on purpose: while wrk (Debian's 4.1.0) reads a long
-- streamed answer, its latency histogram gains hundreds of samples that
-- answer no request, and the mix's p99 would be about them. With no
-- response() here, wrk does not copy the bodies either. Its statuses come
-- from the service's /metrics; its errors and latency from this done().

local pause_ms = 1000

function init (args)
  pause_ms = tonumber(args[1]) or pause_ms
end

wrk.method = 'GET'
wrk.path = '/api/user'

function delay ()
  return pause_ms
end

function done (summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'SOAK_RESULT {"requests":%d,"durationUs":%d,"bytes":%d,' ..
    '"latencyUs":{"p50":%d,"p99":%d,"max":%d},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},"non2xx3xx":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.timeout, e.status))
end
