-- W5: GET /api/users?email={address}: one of the 50,000 seeded addresses
-- (every even user has one), in upper case half the time, since the match
-- ignores case.
dofile(debug.getinfo(1, 'S').source:match('^@(.*/)') .. 'common.lua')

function request ()
  local n = 2 * math.random(1, 50000)
  local address = 'user' .. n .. '@bench.example'
  if math.random(0, 1) == 1 then address = string.upper(address) end
  return wrk.format('GET', '/api/users?email=' .. address)
end
