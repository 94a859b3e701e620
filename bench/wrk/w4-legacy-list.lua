-- W4: GET /api/user, the legacy route that streams every user (the run
-- points it at a database of 100 users). The same request every time, so
-- wrk builds it once.
dofile(debug.getinfo(1, 'S').source:match('^@(.*/)') .. 'common.lua')

wrk.method = 'GET'
wrk.path = '/api/user'
