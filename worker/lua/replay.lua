-- Replay: put failed / in_doubt commands of one kind back into their lane's
-- buffer, the same path a new command takes, with the decision and the
-- history entry in the same atomic step (two operators replaying at once
-- replay once).
-- ARGV: prefix, retention, actor, allow_in_doubt (1/0), kind, then per command:
--       project_id, record id (external_purchase_id, or the operation id)
-- Returns one code per command:
--   replayed | missing | granted | revoked | rejected | noop (applied, refused
--   or with nothing to do: never again) | refunded (a grant with a revoke:
--   never again) | needs_force | busy (pending/sending/waiting)
local actor, allow_in_doubt, kind = ARGV[3], ARGV[4] == '1', ARGV[5]
local now = now_ms()
local out = {}
for i = 6, #ARGV, 2 do
  local pid, epid = ARGV[i], ARGV[i + 1]
  local rk = rec_key(kind, pid, epid)
  local hdr, body = rec_read(rk)
  local st = hdr and hdr.st
  if not st then
    out[#out + 1] = 'missing'
  elseif st == 'granted' or st == 'revoked' or st == 'rejected' or st == 'noop' then
    out[#out + 1] = st
  elseif kind == 'grant' and claim_get('revoke', pid, epid, now) then
    out[#out + 1] = 'refunded'
  elseif st == 'in_doubt' and not allow_in_doubt then
    out[#out + 1] = 'needs_force'
  elseif st ~= 'failed' and st ~= 'in_doubt' then
    out[#out + 1] = 'busy'
  else
    local hist = hdr.hist or {}
    hist[#hist + 1] = {event = 'replay', by = actor, at = now, from_status = st,
                       attempts_before = hdr.att or 0, last_error = hdr.err or ''}
    redis.call('ZREM', idx_key(kind, st), pid .. ':' .. epid)
    hdr.st, hdr.hist, hdr.err, hdr.cpl, hdr.rq = 'pending', hist, nil, nil, now
    -- Waiting again: no expiry until the new outcome sets the retention.
    rec_write(rk, hdr, command_of(body), nil)
    local c = claim_get(kind, pid, epid, now)
    if c then c.st = ''; claim_put(kind, pid, epid, c) end
    enqueue(kind, pid, epid, now)
    -- Operator actions are counted for ever (grants_replays_total).
    redis.call('HINCRBY', P .. ':ops', 'replay|' .. kind .. '|' .. pid .. '|' .. st, 1)
    out[#out + 1] = 'replayed'
  end
end
return out
