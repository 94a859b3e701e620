-- The soak's mix of every route, for bench/soak.js, which runs it in
-- consecutive slices of 10 to 15 s. Arguments after `--` on wrk's command
-- line:
--   1. the run's tag, unique to the run (names, emails and keys carry it);
--   2. the slice's number (so each slice's names are new as well);
--   3. how many users were seeded (ids 1..N, never deleted);
--   4. a state file: the ids of the users the soak created and has not
--      deleted yet, read at the start of a slice and written at its end;
--   5. the mix: "kind=weight,…" (bench/soak.js holds the weights).
-- GET /api/user is not in it: bench/wrk/soak-legacy-list.lua says why.
--
-- wrk cannot tell which request a response answers, so what the mix learns
-- it learns from the responses themselves: a 201 with a Location (and no
-- Idempotency-Replayed) is a user the soak created, to delete later; an
-- ETag with a user's body is that user's current tag, for If-Match and
-- If-None-Match.
--
-- done() prints one line, SOAK_RESULT {json}, for bench/soak.js.

local threads = {}

-- In the main state, once per thread, before init().
function setup (thread)
  table.insert(threads, thread)
  thread:set('thread_id', #threads)
end

-- Thread state ----------------------------------------------------------------

local JSON = { ['Content-Type'] = 'application/json' }
local kinds = {}          -- { { name, cumulative weight } … }
local total_weight = 0
local seeded = 100000
local prefix = 'soak'     -- "<tag>-<slice>-<thread>": unique to this thread and slice
local counter = 0

-- The users created and not yet deleted: an array, and each id's place in it.
pool = {}
local pool_index = {}
-- Recently deleted ids, to delete again now and then (404, or 412 with If-Match).
local deleted = {}
-- Last seen ETag by user id, and a ring of those ids to pick from.
local etags = {}
local etag_ring = {}
local etag_next = 1
local ETAG_RING_SIZE = 4096
-- Recent Idempotency-Keys and what was sent with them, to repeat.
local keys = {}
local key_next = 1
local KEY_RING_SIZE = 64

-- What was sent, by kind (and variant); what came back, by status.
sent = {}
statuses = {}
replayed = 0

local function count (name)
  sent[name] = (sent[name] or 0) + 1
end

local function pool_add (id)
  if pool_index[id] == nil then
    table.insert(pool, id)
    pool_index[id] = #pool
  end
end

-- Takes a random created user out of the pool (nil when it is empty).
local function pool_take ()
  local size = #pool
  if size == 0 then return nil end
  local at = math.random(size)
  local id = pool[at]
  pool[at] = pool[size]
  pool_index[pool[at]] = at
  pool[size] = nil
  pool_index[id] = nil
  return id
end

local function remember_etag (id, etag)
  if etags[id] == nil then
    local old = etag_ring[etag_next]
    if old ~= nil then etags[old] = nil end
    etag_ring[etag_next] = id
    etag_next = etag_next % ETAG_RING_SIZE + 1
  end
  etags[id] = etag
end

local function random_tagged_id ()
  local size = #etag_ring
  if size == 0 then return nil end
  return etag_ring[math.random(size)]
end

local function unique ()
  counter = counter + 1
  return prefix .. '-' .. counter
end

local function remember_key (key, path, body)
  keys[key_next] = { key = key, path = path, body = body }
  key_next = key_next % KEY_RING_SIZE + 1
end

local function recent_key ()
  local size = #keys
  if size == 0 then return nil end
  return keys[math.random(size)]
end

function init (args)
  local tag = args[1] or tostring(os.time())
  local slice = args[2] or '0'
  seeded = tonumber(args[3]) or seeded
  state_file = args[4]
  local mix = args[5] or 'get=1'
  prefix = tag .. '-' .. slice .. '-' .. (thread_id or 1)
  math.randomseed(os.time() * 1000 + tonumber(slice) * 10 + (thread_id or 0))
  for name, weight in mix:gmatch('(%w+)=(%d+)') do
    total_weight = total_weight + tonumber(weight)
    table.insert(kinds, { name, total_weight })
  end
  if state_file ~= nil then
    local file = io.open(state_file, 'r')
    if file ~= nil then
      for line in file:lines() do
        local id = tonumber(line)
        if id ~= nil then pool_add(id) end
      end
      file:close()
    end
  end
end

-- The requests, by kind ---------------------------------------------------------

local make = {}

-- GET /api/users/{id}: a seeded user; now and then an id that does not
-- exist (404).
function make.get ()
  if math.random(100) <= 3 then
    count('get_missing')
    return wrk.format('GET', '/api/users/' .. (seeded * 100 + math.random(1000000)))
  end
  count('get')
  return wrk.format('GET', '/api/users/' .. math.random(seeded))
end

-- GET /api/users/{id} with If-None-Match: the last tag seen for a user
-- (304 when it is still current, else 200).
function make.conditional ()
  local id = random_tagged_id()
  if id == nil then return make.get() end
  count('conditional')
  return wrk.format('GET', '/api/users/' .. id, { ['If-None-Match'] = etags[id] })
end

-- GET /api/users?limit=50&after=…: a page anywhere among the seeded users.
function make.list ()
  count('list')
  return wrk.format('GET', '/api/users?limit=50&after=' .. math.random(0, seeded - 50))
end

-- POST /api/users: a new name (a third with a new email); a quarter with a
-- new Idempotency-Key, a tenth repeating a recent key with its body (a
-- replay), and a few of each: a recent key with another body (422), an
-- email the seed already has (409).
function make.create ()
  local r = math.random(100)
  local name = unique()
  local body
  if math.random(3) == 1 then
    body = '{"name":"soak ' .. name .. '","email":"soak.' .. name .. '@soak.example"}'
  else
    body = '{"name":"soak ' .. name .. '"}'
  end
  if r <= 60 then
    count('create')
    return wrk.format('POST', '/api/users', JSON, body)
  elseif r <= 85 then
    count('create_key')
    local key = 'soak-' .. name
    remember_key(key, '/api/users', body)
    return wrk.format('POST', '/api/users', { ['Content-Type'] = 'application/json', ['Idempotency-Key'] = key }, body)
  elseif r <= 95 then
    local recent = recent_key()
    if recent ~= nil then
      count('create_replay')
      return wrk.format('POST', recent.path, { ['Content-Type'] = 'application/json', ['Idempotency-Key'] = recent.key }, recent.body)
    end
    count('create')
    return wrk.format('POST', '/api/users', JSON, body)
  elseif r <= 97 then
    local recent = recent_key()
    if recent ~= nil then
      count('create_key_reused')
      return wrk.format('POST', recent.path, { ['Content-Type'] = 'application/json', ['Idempotency-Key'] = recent.key }, '{"name":"soak other ' .. name .. '"}')
    end
    count('create')
    return wrk.format('POST', '/api/users', JSON, body)
  end
  count('create_email_taken')
  local taken = 2 * math.random(seeded / 2)
  return wrk.format('POST', '/api/users', JSON, '{"name":"soak ' .. name .. '","email":"user' .. taken .. '@bench.example"}')
end

-- POST /api/user (legacy): a new name; a fifth with a new key, a tenth
-- repeating a recent one.
function make.legacycreate ()
  local r = math.random(100)
  local body = '{"name":"soak legacy ' .. unique() .. '"}'
  if r <= 70 then
    count('legacycreate')
    return wrk.format('POST', '/api/user', JSON, body)
  elseif r <= 90 then
    count('legacycreate_key')
    local key = 'soak-legacy-' .. prefix .. '-' .. counter
    remember_key(key, '/api/user', body)
    return wrk.format('POST', '/api/user', { ['Content-Type'] = 'application/json', ['Idempotency-Key'] = key }, body)
  end
  local recent = recent_key()
  if recent ~= nil then
    count('create_replay')
    return wrk.format('POST', recent.path, { ['Content-Type'] = 'application/json', ['Idempotency-Key'] = recent.key }, recent.body)
  end
  count('legacycreate')
  return wrk.format('POST', '/api/user', JSON, body)
end

-- PATCH /api/users/{id}: a seeded user (or, a third of the time, one the
-- soak created); a new name, a new email or none; half with If-Match, the
-- last tag seen for that user (412 when it has changed since).
function make.patch ()
  local id
  if math.random(3) == 1 and #pool > 0 then
    id = pool[math.random(#pool)]
  else
    id = math.random(seeded)
  end
  local r = math.random(10)
  local body
  if r <= 7 then
    body = '{"name":"soak patched ' .. unique() .. '"}'
  elseif r <= 9 then
    body = '{"email":"soak.p.' .. unique() .. '@soak.example"}'
  else
    body = '{"email":null}'
  end
  if math.random(2) == 1 then
    count('patch_if_match')
    return wrk.format('PATCH', '/api/users/' .. id,
      { ['Content-Type'] = 'application/json', ['If-Match'] = etags[id] or '"1"' }, body)
  end
  count('patch')
  return wrk.format('PATCH', '/api/users/' .. id, JSON, body)
end

-- DELETE /api/users/{id}: a user the soak created; a third with If-Match
-- when its tag is known. With none left, one deleted already (404 or 412).
function make.delete ()
  local id = pool_take()
  if id == nil then
    if #deleted == 0 then return make.get() end
    count('delete_again')
    return wrk.format('DELETE', '/api/users/' .. deleted[math.random(#deleted)])
  end
  deleted[(#deleted % 256) + 1] = id
  if etags[id] ~= nil and math.random(3) == 1 then
    count('delete_if_match')
    return wrk.format('DELETE', '/api/users/' .. id, { ['If-Match'] = etags[id] })
  end
  count('delete')
  return wrk.format('DELETE', '/api/users/' .. id)
end

function make.ready ()
  count('ready')
  return wrk.format('GET', '/health/ready')
end

function make.live ()
  count('live')
  return wrk.format('GET', '/health/live')
end

function make.metrics ()
  count('metrics')
  return wrk.format('GET', '/metrics')
end

function request ()
  local r = math.random(total_weight)
  for _, kind in ipairs(kinds) do
    if r <= kind[2] then return make[kind[1]]() end
  end
  return make.get()
end

function response (status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local is_replay = headers['idempotent-replayed'] or headers['Idempotent-Replayed']
  if is_replay ~= nil then replayed = replayed + 1 end
  if status == 201 and is_replay == nil then
    local location = headers['location'] or headers['Location']
    local id = location ~= nil and tonumber(location:match('/(%d+)$')) or nil
    if id ~= nil then pool_add(id) end
  end
  local etag = headers['etag'] or headers['ETag']
  if etag ~= nil then
    local id = tonumber(body:match('^{"id":(%d+)') or '')
    if id ~= nil then remember_etag(id, etag) end
  end
end

-- The report, in the main state -----------------------------------------------

local function json_counts (counts)
  local parts = {}
  for name, value in pairs(counts) do
    table.insert(parts, string.format('"%s":%d', tostring(name), value))
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

local function add_counts (into, from)
  for name, value in pairs(from or {}) do
    into[name] = (into[name] or 0) + value
  end
end

-- The latency (µs) at each percentile of a grid, for bench/soak.js to merge
-- the slices' into the whole soak's. (Reading wrk's histogram value by value
-- takes seconds: each lookup walks it from the start.)
local GRID = {}
for p = 1, 99 do table.insert(GRID, p) end
for _, p in ipairs({ 99.1, 99.2, 99.3, 99.4, 99.5, 99.6, 99.7, 99.8, 99.9, 99.95, 99.99 }) do table.insert(GRID, p) end

local function quantiles (latency)
  local parts = {}
  for _, p in ipairs(GRID) do
    table.insert(parts, string.format('[%s,%d]', tostring(p), latency:percentile(p)))
  end
  table.insert(parts, string.format('[100,%d]', latency.max))
  return '[' .. table.concat(parts, ',') .. ']'
end

function done (summary, latency, requests)
  local all_sent, all_statuses, all_replayed, ids = {}, {}, 0, {}
  for _, thread in ipairs(threads) do
    add_counts(all_sent, thread:get('sent'))
    add_counts(all_statuses, thread:get('statuses'))
    all_replayed = all_replayed + (thread:get('replayed') or 0)
    for _, id in ipairs(thread:get('pool') or {}) do table.insert(ids, id) end
  end
  local path = threads[1] and threads[1]:get('state_file')
  if path ~= nil then
    local file = assert(io.open(path, 'w'))
    for _, id in ipairs(ids) do file:write(string.format('%d\n', id)) end
    file:close()
  end
  local e = summary.errors
  io.write(string.format(
    'SOAK_RESULT {"requests":%d,"durationUs":%d,"bytes":%d,' ..
    '"latencyUs":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},"non2xx3xx":%d,' ..
    '"statuses":%s,"sent":%s,"replayed":%d,"createdLeft":%d,"quantilesUs":%s}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean,
    e.connect, e.read, e.write, e.timeout, e.status,
    json_counts(all_statuses), json_counts(all_sent), all_replayed, #ids, quantiles(latency)))
end
