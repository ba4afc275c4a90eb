-- Prelude shared by every script; worker/ledger.py puts it in front of each.
-- ARGV[1] is always the key prefix (worker/keys.py documents every key), and
-- ARGV[2] the retention of what the scripts write, the same for every script:
-- "result_ttl_ms:refund_ttl_ms:claim_ttl_ms:outcome_stream_maxlen".

-- Redis 6 replicates scripts verbatim unless told otherwise, and then refuses
-- writes after TIME. Redis 7 always replicates effects; the call is a no-op.
if redis.replicate_commands then redis.replicate_commands() end

local P = ARGV[1]
local TTL, REFUND_TTL, CLAIM_TTL, MAXLEN
do
  local a, b, c, d = string.match(ARGV[2], '^(%d+):(%d+):(%d+):(%d+)$')
  TTL, REFUND_TTL, CLAIM_TTL, MAXLEN = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
end
local LEASES = P .. ':leases'
local LANES = P .. ':lanes'
-- Lanes backing off as a whole (429, a wrong endpoint): lane -> until (ms).
local HOLDS = P .. ':lanes:hold'
-- Only outcomes (and conflicts) are indexed per command. 'pending' and
-- 'sending' are read off the buffers and batches, which saves two index
-- writes per command on the hot path.
local INDEXED = {granted = true, rejected = true, failed = true, in_doubt = true,
                 revoked = true, cancelled = true, noop = true, waiting = true}
-- Record namespaces per command kind (worker/keys.py: RECORD_NAMESPACES).
local NS = {grant = 'rec', revoke = 'rvk', ['backpack.create'] = 'bpc', ['backpack.delete'] = 'bpd',
            ['playfab.delete'] = 'pfd'}

-- Server time, so that leases written by one machine and read by another
-- never depend on their clocks agreeing.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function rec_key(kind, pid, id) return P .. ':' .. NS[kind] .. ':' .. pid .. ':' .. id end
-- The dedupe claim, "<payload hash>|<final status>": it outlives the record
-- (CLAIM_TTL), so a purchase republished after its record expired is known.
local function claim_key(kind, pid, id) return P .. ':clm:' .. NS[kind] .. ':' .. pid .. ':' .. id end
-- What a refund needs of a granted purchase (its command and answer), kept for
-- the refund window (REFUND_TTL) whatever the record's retention.
local function refund_key(pid, id) return P .. ':rfd:' .. pid .. ':' .. id end
local function batch_key(id) return P .. ':batch:' .. id end
-- Batch ids carry their lane ("b17|grant:44056"), so a sender knows the
-- project and kind (its backend) without a round trip.
local function new_batch_id(lane) return 'b' .. redis.call('INCR', P .. ':seq:batch') .. '|' .. lane end
-- Grants keep the short index names; other kinds are indexed under their kind.
local function idx_key(kind, st)
  if kind == 'grant' then return P .. ':idx:' .. st end
  return P .. ':idx:' .. kind .. ':' .. st
end
local function lane_of(kind, pid) return kind .. ':' .. pid end

-- Queue a record into its lane's buffer (the batching path of every command).
local function enqueue(kind, pid, id, now)
  local lane = lane_of(kind, pid)
  if redis.call('RPUSH', P .. ':buf:' .. lane, id) == 1 then
    redis.call('ZADD', LANES, now, lane)
  end
end

-- What a revoke sends: the revoke request together with the grant it undoes
-- (its operation, and its result, for backends that revoke by instance id).
-- Built when the revoke is taken, so it reflects the grant's final answer.
local function revoke_body(pid, epid, rq)
  local g = redis.call('HMGET', rec_key('grant', pid, epid), 'cmd', 'res')
  if not g[1] then g = redis.call('HMGET', refund_key(pid, epid), 'cmd', 'res') end
  local res = g[2]
  if not res or res == '' then res = 'null' end
  return '{"kind":"revoke","request":' .. (rq or 'null') .. ',"grant":' .. (g[1] or 'null')
    .. ',"grant_result":' .. res .. '}'
end

local finalize

-- Whether any revoke waits for its grant at all: checked once per script, so
-- the common case (none) costs one ZCARD instead of a read per outcome.
local revokes_waiting = nil
local function any_revoke_waiting()
  if revokes_waiting == nil then
    revokes_waiting = redis.call('ZCARD', idx_key('revoke', 'waiting')) > 0
  end
  return revokes_waiting
end

-- A revoke waiting for its grant's outcome goes on accordingly: sent if the
-- grant was applied, nothing to do if it certainly was not, in doubt with it.
local function release_waiting_revoke(pid, epid, grant_status, now)
  local vk = rec_key('revoke', pid, epid)
  if redis.call('HGET', vk, 'st') ~= 'waiting' then return end
  redis.call('ZREM', idx_key('revoke', 'waiting'), pid .. ':' .. epid)
  if grant_status == 'granted' then
    redis.call('HSET', vk, 'st', 'pending', 'rcv', now)
    enqueue('revoke', pid, epid, now)
  elseif grant_status == 'in_doubt' then
    finalize('revoke', pid, epid, 'waiting', 'in_doubt', '',
      'the grant is in doubt: check the inventory, then replay the grant or revoke by hand', now)
  else
    finalize('revoke', pid, epid, 'waiting', 'noop', '', 'nothing to revoke: the grant ended ' .. grant_status,
      now)
  end
end

-- Write a final outcome: status, answer, error, the status index, retention,
-- the claim's final status, what a refund needs (of a granted purchase), and
-- the stream entry the purchase pipeline follows. Always together.
finalize = function(kind, pid, epid, old, new, res, err, now)
  local rk = rec_key(kind, pid, epid)
  local m = pid .. ':' .. epid
  if INDEXED[old] then redis.call('ZREM', idx_key(kind, old), m) end
  redis.call('ZADD', idx_key(kind, new), now, m)
  redis.call('HSET', rk, 'st', new, 'cpl', now, 'res', res, 'err', err)
  redis.call('PEXPIRE', rk, TTL)
  local r = redis.call('HMGET', rk, 'h', 'cmd')
  redis.call('SET', claim_key(kind, pid, epid), (r[1] or '') .. '|' .. new, 'PX', CLAIM_TTL)
  if kind == 'grant' and new == 'granted' then
    local fk = refund_key(pid, epid)
    redis.call('HSET', fk, 'cmd', r[2] or '', 'res', res, 'cpl', now)
    redis.call('PEXPIRE', fk, REFUND_TTL)
  elseif kind == 'revoke' and new == 'revoked' and redis.call('EXISTS', refund_key(pid, epid)) == 1 then
    redis.call('HSET', refund_key(pid, epid), 'revoked', now)
  end
  redis.call('XADD', P .. ':outcomes', 'MAXLEN', '~', MAXLEN, '*',
    'project_id', pid, 'external_purchase_id', epid, 'kind', kind, 'status', new, 'at', now)
  if kind == 'grant' and any_revoke_waiting() then release_waiting_revoke(pid, epid, new, now) end
end

-- Finalize every member of a batch that is still 'sending'.
local function finalize_members(kind, pid, members, new, err, now)
  for _, epid in ipairs(members) do
    if redis.call('HGET', rec_key(kind, pid, epid), 'st') == 'sending' then
      finalize(kind, pid, epid, 'sending', new, '', err, now)
    end
  end
end
