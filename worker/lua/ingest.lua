-- Claim + buffer, for a chunk of commands, atomically.
-- ARGV: prefix, ttl_ms, commands: a JSON array with, per command, an array of
--       strings [lane, project_id, external_purchase_id, payload_hash,
--       command_json, enqueued_at, source]; source is the broker message id +
--       position: the same message delivered again is not a repeat of the
--       purchase, but a second copy inside it is. (One argument instead of
--       seven per command: packing thousands of arguments cost the client more
--       than cjson costs Redis.)
-- Returns one code per command: new | dup | redelivered | conflict
-- The record gets its retention TTL with its outcome: a command that never
-- finishes stays visible instead of expiring unseen.
local ttl = tonumber(ARGV[2])
local now = now_ms()
local out = {}
for _, c in ipairs(cjson.decode(ARGV[3])) do
  local lane, pid, epid, h, cmd, enq, src = c[1], c[2], c[3], c[4], c[5], c[6], c[7]
  local rk = rec_key(pid, epid)
  local cur = redis.call('HMGET', rk, 'h', 'src')
  if not cur[1] then
    -- First sight: the record is the dedupe claim, kept as long as the outcome.
    redis.call('HSET', rk, 'st', 'pending', 'pid', pid, 'epid', epid, 'h', h, 'cmd', cmd,
      'rcv', now, 'enq', enq, 'src', src)
    if redis.call('RPUSH', P .. ':buf:' .. lane, epid) == 1 then
      redis.call('ZADD', LANES, now, lane)
    end
    out[#out + 1] = 'new'
  elseif cur[1] == h then
    if cur[2] == src then
      -- The same broker message delivered again (worker died before its ack).
      out[#out + 1] = 'redelivered'
    else
      redis.call('HINCRBY', rk, 'dup', 1)
      out[#out + 1] = 'dup'
    end
  else
    -- Same purchase id, different payload: refuse the repeat, keep the original.
    local ck = P .. ':conflict:' .. pid .. ':' .. epid
    redis.call('HSET', ck, 'pid', pid, 'epid', epid, 'h', h, 'cmd', cmd, 'at', now,
      'err', 'external_purchase_id already used with a different payload (original hash ' .. cur[1] .. ')')
    redis.call('HINCRBY', ck, 'n', 1)
    redis.call('PEXPIRE', ck, ttl)
    redis.call('ZADD', idx_key('conflict'), now, pid .. ':' .. epid)
    out[#out + 1] = 'conflict'
  end
end
return out
