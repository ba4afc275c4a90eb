-- Hand a batch back for a later attempt (the call certainly did not apply, or
-- the backend is idempotent): state 'leased' with the lease ending at the retry
-- time, so the sweeper dispatches it then. Past max attempts, every command
-- fails (certainly not applied: safe to replay).
-- ARGV: prefix, retention, batch_id, token, delay_ms, error, max_attempts,
--       final status past max attempts ('failed' when nothing can have applied,
--       'in_doubt' when the last answer was lost), reconcile first (1/0: the
--       answer was lost and the backend can be read back), lane-wide (1/0: the
--       refusal concerns the whole lane, as a 429 or a wrong endpoint does, so
--       no new batch of the lane is taken before the retry time either),
--       unknown (1/0: this attempt's answer was lost)
-- An attempt whose answer was lost is remembered on the batch ('unk'): past
-- max attempts such a batch is in_doubt, never 'failed', even when its last
-- answer proved that attempt did nothing (an earlier one may have applied).
-- Returns {'retry'|'failed'|'in_doubt'|'fenced'}
local id, token, delay_ms, err = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local max_attempts = tonumber(ARGV[7])
local final, reconcile, lane_wide = ARGV[8], ARGV[9] or '0', ARGV[10] == '1'
local unknown = ARGV[11] == '1'
local bk = batch_key(id)
local b = redis.call('HMGET', bk, 'st', 'tok', 'pid', 'members', 'att', 'kind', 'lane', 'unk')
if not (b[1] == 'sending' and b[2] == token) then return {'fenced'} end
local now = now_ms()
if final == 'failed' and (unknown or b[8] == '1') then
  final = 'in_doubt'
  err = err .. ' (an earlier attempt of this batch lost its answer: it may have applied)'
end
if unknown then redis.call('HSET', bk, 'unk', 1) end
if tonumber(b[5]) >= max_attempts then
  finalize_members(b[6], b[3], id, cjson.decode(b[4]), final, err, now)
  redis.call('DEL', bk)
  redis.call('ZREM', LEASES, id)
  return done({final})
end
-- The last error lives on the batch; `grants results get` shows it. 'nbf'
-- (not before) keeps a duplicate dispatch from cutting the backoff short.
redis.call('HSET', bk, 'st', 'leased', 'tok', '', 'err', err, 'nbf', now + delay_ms, 'rec', reconcile)
redis.call('ZADD', LEASES, now + delay_ms, id)
if lane_wide and (tonumber(redis.call('HGET', HOLDS, b[7])) or 0) < now + delay_ms then
  redis.call('HSET', HOLDS, b[7], now + delay_ms)
end
return {'retry'}
