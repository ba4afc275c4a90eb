-- Batch take + lease, atomically: pop up to `limit` waiting commands of a lane
-- into a new batch, and lease it. (The bodies are read at begin, right before
-- sending: a command cancelled in between is dropped there.)
-- Adaptive batching, the way Nagle's algorithm and Kafka's producer do it: a
-- full batch is taken whenever the lane may have another call in flight; a
-- partial one only while fewer than eager_inflight of the lane's calls are
-- in flight (an idle lane sends a lone purchase now), or once its oldest
-- command has waited flush_ms (the longest a command waits). While a call is
-- in flight, arrivals accumulate, so batches fill up under load by themselves.
-- Oldest lanes first; bounded by max_inflight leases overall, and by the
-- lane's call budget (a lane at its budget accumulates instead of calling).
-- ARGV: prefix, retention, max_inflight, flush_ms, lease_ms, max_batches, scan_lanes,
--       limits (JSON lane or kind -> batch limit), default_limit, max_inflight_per_lane,
--       eager_inflight, budgets (JSON: see budget_spec below; {} for none)
-- The per-lane cap keeps one project (say, rate limited and backing off) from
-- holding every in-flight slot while the others wait.
-- Lanes an operator paused (grants lanes pause, {p}:lanes:paused) are skipped:
-- their commands wait in their buffers until resumed. The scan reaches past
-- them, so paused lanes never crowd the others out of it.
-- Each batch keeps 'old', the received time of its oldest command (the
-- lane's score when it was taken): how long its commands have waited, for
-- grants results stats, without reading their records.
-- Returns the new batch ids.
local max_inflight = tonumber(ARGV[3])
local flush_ms = tonumber(ARGV[4])
local lease_ms = tonumber(ARGV[5])
local max_batches = tonumber(ARGV[6])
local scan = tonumber(ARGV[7])
local limits = cjson.decode(ARGV[8])
local default_limit = tonumber(ARGV[9])
local lane_cap = tonumber(ARGV[10])
local eager = tonumber(ARGV[11])
local budgets = cjson.decode(ARGV[12])

-- A lane's budget spec (as budget_wait takes it) from the budgets table:
-- {"rates": {project: [rate, burst]}, "default": [rate, burst]?, "family":
-- {kind: backend or "" for the project's own}, "backends": {project:
-- backend}, "default_backend": name}.
local function budget_spec(kind, pid)
  if not budgets.family then return '' end
  local rb = (budgets.rates or {})[pid] or budgets.default
  if not rb then return '' end
  local backend = budgets.family[kind]
  if not backend or backend == '' then backend = (budgets.backends or {})[pid] or budgets.default_backend end
  return backend .. ':' .. pid .. '|' .. rb[1] .. '|' .. rb[2]
end

local taken = {}
local inflight = redis.call('ZCARD', LEASES)
if inflight >= max_inflight then return taken end
local now = now_ms()
-- Batches in flight per lane, read off the leased ids ("b17|grant:44056"
-- names its lane): no read of the batches themselves on this hot path.
local per_lane = {}
for _, id in ipairs(redis.call('ZRANGE', LEASES, 0, -1)) do
  local l = string.match(id, '|(.+)$')
  if l then per_lane[l] = (per_lane[l] or 0) + 1 end
end
-- Lanes backing off as a whole are skipped until their time; expired holds go.
local held = {}
local holds = redis.call('HGETALL', HOLDS)
for i = 1, #holds, 2 do
  if tonumber(holds[i + 1]) > now then held[holds[i]] = true else redis.call('HDEL', HOLDS, holds[i]) end
end
local paused, npaused = {}, 0
for _, l in ipairs(redis.call('HKEYS', P .. ':lanes:paused')) do
  paused[l], npaused = true, npaused + 1
end
local lanes = redis.call('ZRANGE', LANES, 0, scan + npaused - 1, 'WITHSCORES')
for i = 1, #lanes, 2 do
  local lane, oldest = lanes[i], tonumber(lanes[i + 1])
  local kind, pid = string.match(lane, '^([^:]+):(.+)$')
  local limit = tonumber(limits[lane]) or tonumber(limits[kind]) or default_limit
  local buf = P .. ':buf:' .. lane
  while not held[lane] and not paused[lane] and #taken < max_batches and inflight < max_inflight and (per_lane[lane] or 0) < lane_cap do
    local n = redis.call('LLEN', buf)
    if n == 0 then break end
    if n < limit and now - oldest < flush_ms and (per_lane[lane] or 0) >= eager then break end
    -- The batch's first call is paid for here; no token, no batch (yet).
    if budget_wait(budget_spec(kind, pid), now, true) > 0 then break end
    local members = {}
    for _, epid in ipairs(redis.call('LPOP', buf, limit)) do
      -- Skip commands that left 'pending' while waiting (cancelled).
      if rec_status(rec_key(kind, pid, epid)) == 'pending' then
        members[#members + 1] = epid
      end
    end
    if #members > 0 then
      local id = new_batch_id(lane)
      redis.call('HSET', batch_key(id), 'lane', lane, 'kind', kind, 'pid', pid, 'n', #members,
        'members', cjson.encode(members), 'st', 'leased', 'att', 0, 'begun', 0, 'created', now, 'paid', 1,
        'old', oldest)
      redis.call('ZADD', LEASES, now + lease_ms, id)
      inflight = inflight + 1
      per_lane[lane] = (per_lane[lane] or 0) + 1
      taken[#taken + 1] = id
    end
    local head = redis.call('LINDEX', buf, 0)
    if not head then
      redis.call('ZREM', LANES, lane)
      break
    end
    local hdr = rec_read(rec_key(kind, pid, head))
    oldest = (hdr and waiting_since(hdr)) or now
    redis.call('ZADD', LANES, oldest, lane)
  end
  if #taken >= max_batches or inflight >= max_inflight then break end
end
return taken
