-- Claim + buffer, for a chunk of commands, atomically.
-- ARGV: prefix, ttl_ms, stream_maxlen, rows: a JSON array with, per command, an
--       array of strings [kind, project_id, external_purchase_id, payload_hash,
--       command_json, enqueued_at, source]. source is the broker message id +
--       position: the same message delivered again is not a repeat of the
--       purchase, but a second copy inside it is. (One argument instead of
--       seven per command: packing thousands of arguments cost the client more
--       than cjson costs Redis.)
-- Returns one code per command:
--   grant:  new | dup | redelivered | conflict | revoked (refunded before it came)
--   revoke: new (queued) | waiting (grant being sent) | cancelled (grant was
--           still waiting: never sent) | noop | in_doubt | dup | redelivered
-- A record gets its retention TTL with its outcome: a command that never
-- finishes stays visible instead of expiring unseen.
local ttl, maxlen = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()

-- Grants, and every kind identified by the producer's own id (Backpack and
-- PlayFab deletes): claim, or count a repeat, or refuse a conflicting one.
local function ingest_claim(kind, pid, epid, h, cmd, enq, src)
  local rk = rec_key(kind, pid, epid)
  local cur = redis.call('HMGET', rk, 'h', 'src', 'st')
  if not cur[1] then
    -- First sight: the record is the dedupe claim, kept as long as the outcome.
    redis.call('HSET', rk, 'st', 'pending', 'pid', pid, 'epid', epid, 'h', h, 'cmd', cmd,
      'rcv', now, 'enq', enq, 'src', src)
    enqueue(kind, pid, epid, now)
    return 'new'
  elseif cur[3] == 'cancelled' then
    -- Refunded before (or while) it waited: never to be sent.
    redis.call('HINCRBY', rk, 'dup', 1)
    return 'revoked'
  elseif cur[1] == h then
    if cur[2] == src then return 'redelivered' end
    redis.call('HINCRBY', rk, 'dup', 1)
    return 'dup'
  end
  -- Same purchase id, different payload: refuse the repeat, keep the original.
  local ck = P .. ':conflict:' .. (kind == 'grant' and '' or kind .. ':') .. pid .. ':' .. epid
  redis.call('HSET', ck, 'pid', pid, 'epid', epid, 'h', h, 'cmd', cmd, 'at', now,
    'err', 'external_purchase_id already used with a different payload (original hash ' .. cur[1] .. ')')
  redis.call('HINCRBY', ck, 'n', 1)
  redis.call('PEXPIRE', ck, ttl)
  redis.call('ZADD', idx_key(kind, 'conflict'), now, pid .. ':' .. epid)
  return 'conflict'
end

local function ingest_revoke(pid, epid, h, cmd, enq, src)
  local vk = rec_key('revoke', pid, epid)
  local cur = redis.call('HMGET', vk, 'h', 'src')
  if cur[1] then
    -- A purchase is revoked once; a repeat (any reason text) is that revoke.
    if cur[2] == src then return 'redelivered' end
    redis.call('HINCRBY', vk, 'dup', 1)
    return 'dup'
  end
  redis.call('HSET', vk, 'pid', pid, 'epid', epid, 'h', h, 'rq', cmd, 'rcv', now, 'enq', enq, 'src', src)
  local rk = rec_key('grant', pid, epid)
  local gst = redis.call('HGET', rk, 'st')
  if not gst then
    -- Never seen: a tombstone, so a grant arriving later is never sent.
    redis.call('HSET', rk, 'pid', pid, 'epid', epid, 'h', '', 'rcv', now, 'enq', 0, 'src', src)
    finalize('grant', pid, epid, nil, 'cancelled', '', 'revoked before the grant arrived', now, ttl, maxlen)
    finalize('revoke', pid, epid, nil, 'noop', '', 'nothing to revoke: the purchase was never granted', now, ttl, maxlen)
    return 'noop'
  elseif gst == 'pending' then
    -- Still in its buffer: cancel it (the take script skips it) and be done.
    finalize('grant', pid, epid, 'pending', 'cancelled', '', 'cancelled by a revoke before it was sent', now, ttl, maxlen)
    finalize('revoke', pid, epid, nil, 'noop', '', 'the grant was cancelled before it was sent', now, ttl, maxlen)
    return 'cancelled'
  elseif gst == 'sending' then
    -- On the wire: wait for its outcome (finalize of the grant releases it).
    redis.call('HSET', vk, 'st', 'waiting')
    redis.call('ZADD', idx_key('revoke', 'waiting'), now, pid .. ':' .. epid)
    revokes_waiting = true
    return 'waiting'
  elseif gst == 'granted' then
    redis.call('HSET', vk, 'st', 'pending')
    enqueue('revoke', pid, epid, now)
    return 'new'
  elseif gst == 'in_doubt' then
    finalize('revoke', pid, epid, nil, 'in_doubt', '',
      'the grant is in doubt: check the inventory, then replay the grant or revoke by hand', now, ttl, maxlen)
    return 'in_doubt'
  end
  finalize('revoke', pid, epid, nil, 'noop', '', 'nothing to revoke: the grant ended ' .. gst, now, ttl, maxlen)
  return 'noop'
end

local out = {}
for _, c in ipairs(cjson.decode(ARGV[4])) do
  if c[1] == 'revoke' then
    out[#out + 1] = ingest_revoke(c[2], c[3], c[4], c[5], c[6], c[7])
  elseif NS[c[1]] then
    out[#out + 1] = ingest_claim(c[1], c[2], c[3], c[4], c[5], c[6], c[7])
  else
    error('unknown command kind ' .. tostring(c[1]))
  end
end
return out
