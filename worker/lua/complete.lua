-- Outcome + release, atomically: write each command's final outcome, then drop
-- the batch and its lease. Fencing: if the batch is no longer ours (the
-- sweeper declared it lost), only commands it marked in_doubt from this very
-- batch take the answer (a late but definite answer resolves the doubt).
-- With `partial` set, the batch stays (its lease too) and only the given
-- members leave it: what a read-back proved applied is final at once,
-- whatever later happens to the rest of the batch.
-- ARGV: prefix, retention, batch_id, token, project_id, kind, partial (1/0),
--       then per command: id, status, answer JSON ('' for none), refund data
--       ('' for none: what a revoke of a granted purchase needs), error, the
--       command as the record keeps it from now on ('' to keep it as it is)
-- Returns {'ok'|'fenced', commands written}
local id, token, pid, kind = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local partial = ARGV[7] == '1'
local bk = batch_key(id)
local b = redis.call('HMGET', bk, 'st', 'tok', 'members')
local owned = b[1] == 'sending' and b[2] == token
local now = now_ms()
local written = 0
local settled = {}
for i = 8, #ARGV, 6 do
  local epid, st, res, refund, err, slim = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local hdr, body = rec_read(rec_key(kind, pid, epid))
  if hdr and hdr.bat == id and ((owned and hdr.st == 'sending') or
                                (not owned and hdr.st == 'in_doubt' and st ~= 'in_doubt')) then
    finalize(kind, pid, epid, st, res, refund, err, now, hdr, body, slim)
    written = written + 1
  end
  settled[epid] = true
end
if not owned then return done({'fenced', written}) end
if partial then
  local rest = {}
  for _, epid in ipairs(cjson.decode(b[3])) do
    if not settled[epid] then rest[#rest + 1] = epid end
  end
  if #rest > 0 then
    redis.call('HSET', bk, 'members', cjson.encode(rest), 'n', #rest)
    return done({'ok', written})
  end
end
redis.call('DEL', bk)
redis.call('ZREM', LEASES, id)
return done({'ok', written})
