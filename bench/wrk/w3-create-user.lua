-- W3: POST /api/users with a name unique to each request: the run's tag,
-- the thread's number and a counter ("bench 1a2b3c4d-1-17").
dofile(debug.getinfo(1, 'S').source:match('^@(.*/)') .. 'common.lua')

-- Set on wrk.headers, which also hold the Host header wrk adds (Node
-- answers a request without one with a 400).
wrk.method = 'POST'
wrk.path = '/api/users'
wrk.headers['Content-Type'] = 'application/json'
local counter = 0

function request ()
  counter = counter + 1
  return wrk.format(nil, nil, nil, '{"name":"bench ' .. run_tag .. '-' .. (thread_id or 0) .. '-' .. counter .. '"}')
end
