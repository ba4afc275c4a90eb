-- Outcome + release, atomically: write each command's final outcome, then drop
-- the batch and its lease. Fencing: if the batch is no longer ours (the
-- sweeper declared it lost), only commands it marked in_doubt from this very
-- batch take the answer (a late but definite answer resolves the doubt).
-- ARGV: prefix, batch_id, token, project_id, kind, ttl_ms, stream_maxlen,
--       then per command: epid, status, result_json, error
-- Returns {'ok'|'fenced', commands written}
local id, token, pid, kind = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ttl, maxlen = tonumber(ARGV[6]), tonumber(ARGV[7])
local bk = batch_key(id)
local b = redis.call('HMGET', bk, 'st', 'tok')
local owned = b[1] == 'sending' and b[2] == token
local now = now_ms()
local written = 0
for i = 8, #ARGV, 4 do
  local epid, st, res, err = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local cur = redis.call('HMGET', rec_key(kind, pid, epid), 'st', 'bat')
  if cur[2] == id and ((owned and cur[1] == 'sending') or
                       (not owned and cur[1] == 'in_doubt' and st ~= 'in_doubt')) then
    finalize(kind, pid, epid, cur[1], st, res, err, now, ttl, maxlen)
    written = written + 1
  end
end
if owned then
  redis.call('DEL', bk)
  redis.call('ZREM', LEASES, id)
  return {'ok', written}
end
return {'fenced', written}
