-- W1: GET /api/users/{id}, a random id among the 100,000 seeded users.
dofile(debug.getinfo(1, 'S').source:match('^@(.*/)') .. 'common.lua')

function request ()
  return wrk.format('GET', '/api/users/' .. math.random(1, 100000))
end
