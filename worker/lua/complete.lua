-- Outcome + release, atomically: write each command's final outcome, then drop
-- the batch and its lease. Fencing: if the batch is no longer ours (the
-- sweeper declared it lost), only commands it marked in_doubt from this very
-- batch take the answer (a late but definite answer resolves the doubt).
-- ARGV: prefix, batch_id, token, project_id, ttl_ms, stream_maxlen,
--       then per command: epid, status, result_json, error
-- Returns {'ok'|'fenced', commands written}
local id, token, pid = ARGV[2], ARGV[3], ARGV[4]
local ttl, maxlen = tonumber(ARGV[5]), tonumber(ARGV[6])
local bk = batch_key(id)
local b = redis.call('HMGET', bk, 'st', 'tok')
local owned = b[1] == 'sending' and b[2] == token
local now = now_ms()
local written = 0
for i = 7, #ARGV, 4 do
  local epid, st, res, err = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local rk = rec_key(pid, epid)
  local cur = redis.call('HMGET', rk, 'st', 'bat')
  if cur[2] == id and ((owned and cur[1] == 'sending') or
                       (not owned and cur[1] == 'in_doubt' and st ~= 'in_doubt')) then
    finalize(rk, pid, epid, cur[1], st, res, err, now, ttl, maxlen)
    written = written + 1
  end
end
if owned then
  redis.call('DEL', bk)
  redis.call('ZREM', LEASES, id)
  return {'ok', written}
end
return {'fenced', written}
