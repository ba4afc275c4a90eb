-- Prelude shared by every script; worker/ledger.py puts it in front of each.
-- ARGV[1] is always the key prefix (worker/keys.py documents every key).

-- Redis 6 replicates scripts verbatim unless told otherwise, and then refuses
-- writes after TIME. Redis 7 always replicates effects; the call is a no-op.
if redis.replicate_commands then redis.replicate_commands() end

local P = ARGV[1]
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
local function release_waiting_revoke(pid, epid, grant_status, now, ttl, maxlen)
  local vk = rec_key('revoke', pid, epid)
  if redis.call('HGET', vk, 'st') ~= 'waiting' then return end
  redis.call('ZREM', idx_key('revoke', 'waiting'), pid .. ':' .. epid)
  if grant_status == 'granted' then
    redis.call('HSET', vk, 'st', 'pending', 'rcv', now)
    enqueue('revoke', pid, epid, now)
  elseif grant_status == 'in_doubt' then
    finalize('revoke', pid, epid, 'waiting', 'in_doubt', '',
      'the grant is in doubt: check the inventory, then replay the grant or revoke by hand', now, ttl, maxlen)
  else
    finalize('revoke', pid, epid, 'waiting', 'noop', '', 'nothing to revoke: the grant ended ' .. grant_status,
      now, ttl, maxlen)
  end
end

-- Write a final outcome: status, answer, error, the status index, retention,
-- and the stream entry the purchase pipeline follows. Always together.
finalize = function(kind, pid, epid, old, new, res, err, now, ttl, maxlen)
  local rk = rec_key(kind, pid, epid)
  local m = pid .. ':' .. epid
  if INDEXED[old] then redis.call('ZREM', idx_key(kind, old), m) end
  redis.call('ZADD', idx_key(kind, new), now, m)
  redis.call('HSET', rk, 'st', new, 'cpl', now, 'res', res, 'err', err)
  redis.call('PEXPIRE', rk, ttl)
  redis.call('XADD', P .. ':outcomes', 'MAXLEN', '~', maxlen, '*',
    'project_id', pid, 'external_purchase_id', epid, 'kind', kind, 'status', new, 'at', now)
  if kind == 'grant' and any_revoke_waiting() then release_waiting_revoke(pid, epid, new, now, ttl, maxlen) end
end

-- Finalize every member of a batch that is still 'sending'.
local function finalize_members(kind, pid, members, new, err, now, ttl, maxlen)
  for _, epid in ipairs(members) do
    if redis.call('HGET', rec_key(kind, pid, epid), 'st') == 'sending' then
      finalize(kind, pid, epid, 'sending', new, '', err, now, ttl, maxlen)
    end
  end
end
