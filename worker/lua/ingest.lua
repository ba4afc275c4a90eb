-- Claim + buffer a range of commands, and advance the ingestion position
-- past them, atomically: each command is ingested exactly once and in publish
-- order, however many workers race (compare-and-set on the position), and a
-- worker killed between reading and claiming leaves nothing half done.
-- ARGV: prefix, retention, guard, a, b, rows, dead
--   guard 'stream': a = the position the caller read from ('' for none), b =
--     the id of the last entry it read. If the position is no longer a,
--     another worker ingested the range: nothing changes, {'moved', position}.
--     Else the position becomes b, and the stream is trimmed up to it.
--   guard 'list': a = a list of an older version's broker messages, b = its
--     oldest message as read; ingested (and popped) only if still the oldest.
--   guard 'none': no position to keep (tests, tools that hand in commands).
--   rows: a JSON array with, per command, an array of strings [kind,
--     project_id, external_purchase_id, payload_hash, command_json,
--     enqueued_at, source]; source is the entry id (one argument instead of
--     seven per command: packing thousands of arguments cost the client more
--     than cjson costs Redis).
--   dead: a JSON array of [source, raw, reason, external_purchase_id] for the
--     entries that are not valid commands: dead letters, in the same step.
-- Returns {'ok', one code per row...} | {'moved', position}. Codes:
--   grant:  new | dup | redelivered | conflict | revoked (refunded before it came)
--   revoke: new (queued) | waiting (grant being sent) | cancelled (grant was
--           still waiting: never sent) | noop | in_doubt | rejected (past the
--           refund window) | dup | redelivered
-- A record gets its retention TTL with its outcome: a command that never
-- finishes stays visible instead of expiring unseen. Its claim (the payload
-- hash) outlives it, for the dedupe retention.
local now = now_ms()

-- "<hash>|<final status>" of a claim whose record has expired, or nil.
local function expired_claim(kind, pid, epid)
  local claim = redis.call('GET', claim_key(kind, pid, epid))
  if not claim then return nil end
  local h, st = string.match(claim, '^([^|]*)|(.*)$')
  return {h = h, st = st}
end

local function refuse_conflict(kind, pid, epid, h, cmd, original)
  -- Same purchase id, different payload: refuse the repeat, keep the original.
  local ck = P .. ':conflict:' .. (kind == 'grant' and '' or kind .. ':') .. pid .. ':' .. epid
  redis.call('HSET', ck, 'pid', pid, 'epid', epid, 'h', h, 'cmd', cmd, 'at', now,
    'err', 'external_purchase_id already used with a different payload (original hash ' .. original .. ')')
  redis.call('HINCRBY', ck, 'n', 1)
  redis.call('PEXPIRE', ck, TTL)
  redis.call('ZADD', idx_key(kind, 'conflict'), now, pid .. ':' .. epid)
  return 'conflict'
end

-- Grants, and every kind identified by the producer's own id (Backpack and
-- PlayFab deletes): claim, or count a repeat, or refuse a conflicting one.
local function ingest_claim(kind, pid, epid, h, cmd, enq, src)
  local rk = rec_key(kind, pid, epid)
  local cur = redis.call('HMGET', rk, 'h', 'src', 'st')
  if not cur[1] then
    local old = expired_claim(kind, pid, epid)
    if old then
      -- Seen before, its record gone with the results retention: a repeat.
      if old.st == 'cancelled' then return 'revoked' end
      if old.h == h then return 'dup' end
      return refuse_conflict(kind, pid, epid, h, cmd, old.h)
    end
    -- First sight: the record, and its claim for the dedupe retention.
    redis.call('HSET', rk, 'st', 'pending', 'pid', pid, 'epid', epid, 'h', h, 'cmd', cmd,
      'rcv', now, 'enq', enq, 'src', src)
    redis.call('SET', claim_key(kind, pid, epid), h .. '|', 'PX', CLAIM_TTL)
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
  return refuse_conflict(kind, pid, epid, h, cmd, cur[1])
end

local PAST_WINDOW = 'the grant was applied %d days ago, past the refund window (GRANTS_REFUND_WINDOW_DAYS): '
  .. 'nothing was sent; take the items back by hand in the backend, or raise the window and publish the revoke again'

local function revoke_grant(pid, epid, gst, gcpl)
  -- What to do with the revoke of a purchase whose grant is in state gst.
  local vk = rec_key('revoke', pid, epid)
  if gst == 'pending' then
    -- Still in its buffer: cancel it (the take script skips it) and be done.
    finalize('grant', pid, epid, 'pending', 'cancelled', '', 'cancelled by a revoke before it was sent', now)
    finalize('revoke', pid, epid, nil, 'noop', '', 'the grant was cancelled before it was sent', now)
    return 'cancelled'
  elseif gst == 'sending' then
    -- On the wire: wait for its outcome (finalize of the grant releases it).
    redis.call('HSET', vk, 'st', 'waiting')
    redis.call('ZADD', idx_key('revoke', 'waiting'), now, pid .. ':' .. epid)
    revokes_waiting = true
    return 'waiting'
  elseif gst == 'granted' then
    if gcpl and now - gcpl > REFUND_TTL then
      finalize('revoke', pid, epid, nil, 'rejected', '', string.format(PAST_WINDOW, math.floor((now - gcpl) / 86400000)), now)
      return 'rejected'
    end
    redis.call('HSET', vk, 'st', 'pending')
    enqueue('revoke', pid, epid, now)
    return 'new'
  elseif gst == 'in_doubt' then
    finalize('revoke', pid, epid, nil, 'in_doubt', '',
      'the grant is in doubt: check the inventory, then replay the grant or revoke by hand', now)
    return 'in_doubt'
  end
  finalize('revoke', pid, epid, nil, 'noop', '', 'nothing to revoke: the grant ended ' .. gst, now)
  return 'noop'
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
  if expired_claim('revoke', pid, epid) then return 'dup' end
  redis.call('HSET', vk, 'pid', pid, 'epid', epid, 'h', h, 'rq', cmd, 'rcv', now, 'enq', enq, 'src', src)
  redis.call('SET', claim_key('revoke', pid, epid), h .. '|', 'PX', CLAIM_TTL)
  local g = redis.call('HMGET', rec_key('grant', pid, epid), 'st', 'cpl')
  if g[1] then return revoke_grant(pid, epid, g[1], tonumber(g[2])) end
  -- The grant's record is gone (its retention passed): expiry is not "never
  -- seen". Within the refund window its refund data stands in for it.
  local fk = refund_key(pid, epid)
  local refund = redis.call('HMGET', fk, 'cpl', 'revoked')
  if refund[2] then
    finalize('revoke', pid, epid, nil, 'noop', '', 'already revoked', now)
    return 'noop'
  elseif refund[1] then
    return revoke_grant(pid, epid, 'granted', tonumber(refund[1]))
  end
  local old = expired_claim('grant', pid, epid)
  if old and old.st == 'granted' then
    finalize('revoke', pid, epid, nil, 'rejected', '',
      'the grant was applied longer ago than the refund window (GRANTS_REFUND_WINDOW_DAYS): nothing was '
      .. 'sent; take the items back by hand in the backend', now)
    return 'rejected'
  elseif old and old.st ~= '' then
    return revoke_grant(pid, epid, old.st, nil)
  end
  -- Never seen: a tombstone (record and claim), so a grant arriving later is never sent.
  redis.call('HSET', rec_key('grant', pid, epid), 'pid', pid, 'epid', epid, 'h', '', 'rcv', now, 'enq', 0, 'src', src)
  finalize('grant', pid, epid, nil, 'cancelled', '', 'revoked before the grant arrived', now)
  finalize('revoke', pid, epid, nil, 'noop', '', 'nothing to revoke: the purchase was never granted', now)
  return 'noop'
end

local guard, ga, gb = ARGV[3], ARGV[4], ARGV[5]
local rows, dead = cjson.decode(ARGV[6]), cjson.decode(ARGV[7])
-- Everything checked before the first write: a script that fails half-way
-- keeps what it wrote.
for _, c in ipairs(rows) do
  if not NS[c[1]] then error('unknown command kind ' .. tostring(c[1])) end
end
if guard == 'stream' then
  local pos = redis.call('GET', P .. ':ingest:pos') or ''
  if pos ~= ga then return {'moved', pos} end
  redis.call('SET', P .. ':ingest:pos', gb)
  -- Entries before the next id are ingested: they go (exact MINID trim).
  local ms, seq = string.match(gb, '^(%d+)-(%d+)$')
  redis.call('XTRIM', P .. ':commands', 'MINID', ms .. '-' .. string.format('%d', tonumber(seq) + 1))
  redis.call('INCRBY', P .. ':ingest:count', #rows + #dead)
elseif guard == 'list' then
  if redis.call('LINDEX', ga, -1) ~= gb then return {'moved', ''} end
  redis.call('RPOP', ga)
elseif guard ~= 'none' then
  error('unknown guard ' .. tostring(guard))
end

for _, d in ipairs(dead) do
  local source, raw, reason, epid = d[1], d[2], d[3], d[4]
  local dk = P .. ':dead:' .. source
  redis.call('HSET', dk, 'id', source, 'raw', raw, 'size', d[5] or #raw, 'truncated', d[6] or 0,
    'reason', reason, 'src', source, 'epid', epid, 'at', now)
  redis.call('PEXPIRE', dk, TTL)
  redis.call('ZADD', idx_key('grant', 'dead'), now, source)
  redis.call('XADD', P .. ':outcomes', 'MAXLEN', '~', MAXLEN, '*', 'project_id', '', 'external_purchase_id', epid,
    'status', 'dead', 'at', now, 'dead_letter', source)
end

local out = {'ok'}
for _, c in ipairs(rows) do
  if c[1] == 'revoke' then
    out[#out + 1] = ingest_revoke(c[2], c[3], c[4], c[5], c[6], c[7])
  else
    out[#out + 1] = ingest_claim(c[1], c[2], c[3], c[4], c[5], c[6], c[7])
  end
end
return out
