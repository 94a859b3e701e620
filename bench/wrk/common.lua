-- Shared by every workload script (loaded with dofile from each one).
-- wrk runs each script once per thread, plus once more in a main state
-- that calls setup() and done().

-- Runs with auth on (bench/features.js) send the run's bearer token with every
-- request: wrk.format uses wrk.headers when a script passes none.
local token = os.getenv('BENCH_TOKEN')
if token ~= nil and token ~= '' then
  wrk.headers['Authorization'] = 'Bearer ' .. token
end

-- setup() runs in the main state once per thread, before init(): it hands
-- each thread a number of its own, so request bodies can be unique.
local threads = 0
function setup (thread)
  threads = threads + 1
  thread:set('thread_id', threads)
end

-- init() runs in each thread's state. args are what follows `--` on wrk's
-- command line: bench/run.js passes a tag unique to the run.
function init (args)
  run_tag = args[1] or tostring(os.time())
  math.randomseed(os.time() + (thread_id or 0))
end

-- One machine-readable line for bench/run.js, after wrk's own summary.
-- Times are in microseconds. wrk counts a response as a status error only
-- when its status is above 399 (its "Non-2xx or 3xx responses" line), so
-- 201 and 304 count as successes.
function done (summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"durationUs":%d,"bytes":%d,' ..
    '"latencyUs":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},"non2xx3xx":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.timeout, e.status))
end
