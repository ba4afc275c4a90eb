-- Forget what claims no longer need to keep, one slice of one claim bucket
-- per call; the sweeper calls it in turn, so every bucket is walked again and
-- again (HSCAN: a claim written meanwhile may be seen twice, never missed).
-- A claim past the dedupe retention is deleted (a claim read is checked too,
-- in claim_get, but one never read again would stay for ever); refund data
-- past the refund window is dropped from its claim.
-- ARGV: prefix, retention, count (claims looked at, about)
-- Returns {bucket, cursor (where the next call goes on), deleted, stripped}
local count = tonumber(ARGV[3])
local pos_key = P .. ':prune:claims'
local pos = redis.call('HMGET', pos_key, 'bucket', 'cursor')
local bucket, cursor = (tonumber(pos[1]) or 0) % CLAIM_BUCKETS, pos[2] or '0'
local key = P .. ':claims:' .. bucket
local now = now_ms()
local reply = redis.call('HSCAN', key, cursor, 'COUNT', count)
local fields = reply[2]
local deleted, stripped = 0, 0
for i = 1, #fields, 2 do
  local v = fields[i + 1]
  local kept, at, plus, done, refund = string.match(v, '^([^|]*|[^|]*|(%d+)|(%+?)(%d*)|)(.*)$')
  at = tonumber(at)
  if at and now - at > CLAIM_TTL then
    redis.call('HDEL', key, fields[i])
    deleted = deleted + 1
  elseif at and refund ~= '' then
    done = tonumber(done) or 0
    if plus == '+' then done = at + done end
    if done > 0 and now - done > REFUND_TTL then
      redis.call('HSET', key, fields[i], kept)
      stripped = stripped + 1
    end
  end
end
cursor = reply[1]
if cursor == '0' then bucket = (bucket + 1) % CLAIM_BUCKETS end
redis.call('HSET', pos_key, 'bucket', bucket, 'cursor', cursor)
return {bucket, cursor, deleted, stripped}
