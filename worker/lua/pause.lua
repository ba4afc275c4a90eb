-- Pause lanes (grants lanes pause): take skips a paused lane, so its commands
-- keep accumulating in its buffer (nothing is lost; resume makes them flow).
-- Batches of the lane taken but never sent (state 'leased', not begun) go
-- back to the front of the buffer, in their order: their commands are still
-- 'pending', and a sender that begins such a batch afterwards finds it gone.
-- A call in progress and the retries of a call already made go on (stopping
-- them would leave their outcome unknown); lanes list counts them.
-- ARGV: prefix, retention, actor, note, then the lanes ("kind:project")
-- Returns per lane: {lane, 'paused' | 'already', batches returned to the buffer}
local actor, note = ARGV[3], ARGV[4]
local now = now_ms()
local PAUSED = P .. ':lanes:paused'
local out = {}
-- In the order they were taken (their sequence number, "b17|..."), not by
-- lease deadline: begin and recover move deadlines.
local leased = redis.call('ZRANGE', LEASES, 0, -1)
local function seq(id) return tonumber(string.match(id, '^b(%d+)|')) or 0 end
table.sort(leased, function(a, b) return seq(a) < seq(b) end)
for i = 5, #ARGV do
  local lane = ARGV[i]
  local verdict = 'already'
  if redis.call('HSETNX', PAUSED, lane, cjson.encode({since = now, actor = actor, note = note})) == 1 then
    verdict = 'paused'
  end
  local returned = 0
  local buf = P .. ':buf:' .. lane
  -- Newest batch first, each pushed to the front: the oldest ends up first.
  for j = #leased, 1, -1 do
    local id = leased[j]
    if string.match(id, '|(.+)$') == lane then
      local bk = batch_key(id)
      local b = redis.call('HMGET', bk, 'st', 'begun', 'members', 'old')
      if b[1] == 'leased' and b[2] ~= '1' and b[3] then
        local members = cjson.decode(b[3])
        for k = #members, 1, -1 do redis.call('LPUSH', buf, members[k]) end
        local oldest = tonumber(b[4]) or now
        local score = tonumber(redis.call('ZSCORE', LANES, lane))
        if not score or oldest < score then redis.call('ZADD', LANES, oldest, lane) end
        redis.call('DEL', bk)
        redis.call('ZREM', LEASES, id)
        returned = returned + 1
      end
    end
  end
  out[#out + 1] = {lane, verdict, returned}
end
return out
