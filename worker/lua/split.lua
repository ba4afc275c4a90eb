-- Split a batch the backend refused as a whole (4xx) into two halves, each a
-- new leased batch, so the good commands are not sunk with the bad one.
-- Nothing was applied, so attempts start again (each record counts the
-- splits it went through apart from its calls: 'spl').
-- ARGV: prefix, retention, batch_id, token, lease_ms, reconcile (1/0: an answer of this
--       batch was lost, so each half is read back before it is sent)
-- Returns {'fenced'} | {'single'} | {'ok', id1, id2}
local id, token, lease_ms, reconcile = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6] or '0'
local bk = batch_key(id)
local b = redis.call('HMGET', bk, 'st', 'tok', 'pid', 'members', 'lane', 'kind', 'unk')
if not (b[1] == 'sending' and b[2] == token) then return {'fenced'} end
local members = cjson.decode(b[4])
if #members < 2 then return {'single'} end
local pid = b[3]
local now = now_ms()
local half = math.ceil(#members / 2)
local out = {'ok'}
for part = 0, 1 do
  local chunk = {}
  for j = part * half + 1, math.min(#members, (part + 1) * half) do
    chunk[#chunk + 1] = members[j]
  end
  local child = new_batch_id(b[5])
  redis.call('HSET', batch_key(child), 'lane', b[5], 'kind', b[6], 'pid', pid, 'n', #chunk,
    'members', cjson.encode(chunk), 'st', 'leased', 'att', 0, 'begun', 1, 'created', now, 'parent', id,
    'rec', reconcile)
  -- An earlier attempt's lost answer is remembered by both halves (release.lua).
  if b[7] == '1' then redis.call('HSET', batch_key(child), 'unk', 1) end
  redis.call('ZADD', LEASES, now + lease_ms, child)
  -- The child owns these commands now (begin and complete check it); it keeps
  -- the received time of its oldest, as take does ('old': the backlog's age).
  local oldest
  for _, epid in ipairs(chunk) do
    local rk = rec_key(b[6], pid, epid)
    local hdr, body = rec_read(rk)
    hdr.bat, hdr.spl = child, (hdr.spl or 0) + 1
    rec_write(rk, hdr, body, nil)
    local rcv = waiting_since(hdr)
    if rcv and (not oldest or rcv < oldest) then oldest = rcv end
  end
  if oldest then redis.call('HSET', batch_key(child), 'old', oldest) end
  out[#out + 1] = child
end
redis.call('DEL', bk)
redis.call('ZREM', LEASES, id)
return out
