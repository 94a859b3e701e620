-- W2: GET /api/users?limit=50&after={random}: a full page of 50 anywhere
-- among the 100,000 seeded users.
dofile(debug.getinfo(1, 'S').source:match('^@(.*/)') .. 'common.lua')

function request ()
  return wrk.format('GET', '/api/users?limit=50&after=' .. math.random(0, 99950))
end
