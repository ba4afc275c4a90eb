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
--     project_id, record id, payload_hash, stored command (schemas/commands.py
--     stored()), enqueued_at]
--     (one argument instead of six per command: packing thousands of
--     arguments cost the client more than cjson costs Redis).
--   dead: a JSON array of [source, raw, reason, external_purchase_id, size,
--     truncated] for the entries that are not valid commands: dead letters,
--     in the same step.
-- Returns {'ok', one code per row...} | {'moved', position}. Codes:
--   grant:  new | dup | conflict | revoked (refunded before it came)
--   revoke: new (queued) | waiting (grant being sent) | cancelled (grant was
--           still waiting: never sent) | noop | in_doubt | rejected (past the
--           refund window) | dup
-- A record gets its retention TTL with its outcome: a command that never
-- finishes stays visible instead of expiring unseen. Its claim outlives it.
local now = now_ms()

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
  redis.call('HINCRBY', TOTALS, 'dead', 1)
  redis.call('XADD', P .. ':outcomes', 'MAXLEN', '~', MAXLEN, '*', 'project_id', '', 'external_purchase_id', epid,
    'status', 'dead', 'at', now, 'dead_letter', source)
end

local function count_repeat(kind, pid, epid)
  local rk = rec_key(kind, pid, epid)
  local hdr, body = rec_read(rk)
  if hdr then
    hdr.dup = (hdr.dup or 0) + 1
    rec_write(rk, hdr, body, 'keep')
  end
end

local function refuse_conflict(kind, pid, epid, h, cmd, original)
  -- Same id, different payload: refuse the repeat, keep the original.
  local ck = P .. ':conflict:' .. (kind == 'grant' and '' or kind .. ':') .. pid .. ':' .. epid
  redis.call('HSET', ck, 'pid', pid, 'epid', epid, 'h', h, 'cmd', cmd, 'at', now,
    'err', 'external_purchase_id already used with a different payload (original hash ' .. original .. ')')
  redis.call('HINCRBY', ck, 'n', 1)
  redis.call('PEXPIRE', ck, TTL)
  redis.call('ZADD', idx_key(kind, 'conflict'), now, pid .. ':' .. epid)
  return 'conflict'
end

-- A new record, waiting for its batch; and its claim.
local function admit(kind, pid, epid, h, cmd, enq, ck, cf)
  rec_write(rec_key(kind, pid, epid), {st = 'pending', rcv = now, enq = tonumber(enq) or 0}, cmd, nil)
  claim_put(kind, pid, epid, {h = h, st = '', at = now, key = ck, field = cf})
end

-- Grants, and every kind identified by the producer's own id (Backpack and
-- PlayFab deletes): claim, or count a repeat, or refuse a conflicting one.
local function ingest_claim(kind, pid, epid, h, cmd, enq)
  local c, ck, cf = claim_get(kind, pid, epid, now)
  if not c then
    admit(kind, pid, epid, h, cmd, enq, ck, cf)
    enqueue(kind, pid, epid, now)
    return 'new'
  elseif c.st == 'cancelled' then
    -- Refunded before (or while) it waited: never to be sent.
    count_repeat(kind, pid, epid)
    return 'revoked'
  elseif c.h == h or string.sub(c.h, 1, 16) == h then
    -- (claims of earlier versions hold the digest's 32 characters)
    count_repeat(kind, pid, epid)
    return 'dup'
  end
  return refuse_conflict(kind, pid, epid, h, cmd, c.h)
end

local function past_window(pid, epid, done)
  local days = math.floor((now - done) / 86400000)
  finalize('revoke', pid, epid, 'rejected', '', '',
    'the grant was applied ' .. days .. ' days ago, past the refund window (GRANTS_REFUND_WINDOW_DAYS): '
    .. 'nothing was sent; take the items back by hand in the backend, or raise the window and publish the '
    .. 'revoke again', now)
  return 'rejected'
end

local function ingest_revoke(pid, epid, h, cmd, enq)
  local seen, ck, cf = claim_get('revoke', pid, epid, now)
  if seen then
    -- A purchase is revoked once; a repeat (any reason text) is that revoke.
    count_repeat('revoke', pid, epid)
    return 'dup'
  end
  admit('revoke', pid, epid, h, cmd, enq, ck, cf)
  local g = claim_get('grant', pid, epid, now)
  if not g then
    -- Never seen: a tombstone (record and claim), so a grant arriving later is never sent.
    rec_write(rec_key('grant', pid, epid), {st = 'new', rcv = now}, 'null', nil)
    claim_put('grant', pid, epid, {h = '', st = '', at = now})
    finalize('grant', pid, epid, 'cancelled', '', '', 'revoked before the grant arrived', now)
    finalize('revoke', pid, epid, 'noop', '', '', 'nothing to revoke: the purchase was never granted', now)
    return 'noop'
  end
  local st = g.st
  if st == '' then st = rec_status(rec_key('grant', pid, epid)) or '' end
  if st == 'pending' then
    -- Still in its buffer: cancel it (the take script skips it) and be done.
    finalize('grant', pid, epid, 'cancelled', '', '', 'cancelled by a revoke before it was sent', now)
    finalize('revoke', pid, epid, 'noop', '', '', 'the grant was cancelled before it was sent', now)
    return 'cancelled'
  elseif st == 'sending' then
    -- On the wire: wait for its outcome (finalize of the grant releases it).
    local vk = rec_key('revoke', pid, epid)
    local hdr, body = rec_read(vk)
    hdr.st = 'waiting'
    rec_write(vk, hdr, body, nil)
    redis.call('ZADD', idx_key('revoke', 'waiting'), now, pid .. ':' .. epid)
    revokes_waiting = true
    return 'waiting'
  elseif st == 'granted' then
    -- Expiry of the record is not "never seen": the claim keeps the refund
    -- data for the refund window; past it, refused with a reason.
    if g.done > 0 and now - g.done > REFUND_TTL then return past_window(pid, epid, g.done) end
    if g.refund == '' then
      finalize('revoke', pid, epid, 'rejected', '', '',
        'nothing was kept of the grant to revoke it with (its backend recorded no refund data)', now)
      return 'rejected'
    end
    enqueue('revoke', pid, epid, now)
    return 'new'
  elseif st == 'in_doubt' then
    finalize('revoke', pid, epid, 'in_doubt', '', '',
      'the grant is in doubt: check the inventory, then replay the grant or revoke by hand', now)
    return 'in_doubt'
  end
  finalize('revoke', pid, epid, 'noop', '', '', 'nothing to revoke: the grant ended ' .. st, now)
  return 'noop'
end

local out = {'ok'}
for _, c in ipairs(rows) do
  if c[1] == 'revoke' then
    out[#out + 1] = ingest_revoke(c[2], c[3], c[4], c[5], c[6])
  else
    out[#out + 1] = ingest_claim(c[1], c[2], c[3], c[4], c[5], c[6])
  end
end
return done(out)
