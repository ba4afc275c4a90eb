-- Prelude shared by every script; worker/ledger.py puts it in front of each,
-- after a generated line defining NS (record namespace per command kind),
-- INDEXED (statuses kept in an index per command), CLAIM_BUCKETS and
-- LATENCY_BUCKETS_MS (schemas/kinds.py, schemas/records.py, worker/keys.py).
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
-- Outcome counts per kind, project and status, for ever (what ops and the
-- metrics read; the happy path has no index per command, see INDEXED).
local TOTALS = P .. ':totals'
local LATENCY = P .. ':latency'

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

-- Records. One string per command: "<header JSON>\n<command JSON>[\n<answer
-- JSON>]". The header holds only flat fields (st, rcv, enq, snt, cpl, att,
-- dup, bat, err, hist), so cjson never re-encodes the command or the answer
-- (it would round numbers to 14 digits); one string costs a third of the
-- memory a hash of the same fields does.
--
-- The times after rcv are stored as offsets from it, under one letter each
-- (e: enq, s: snt, c: cpl): 35 bytes less in every record. Readers see the
-- usual absolute fields (schemas/records.py reads them the same way).
local OFFSETS = {enq = 'e', snt = 's', cpl = 'c'}

local function rec_read(key)
  local v = redis.call('GET', key)
  if not v then return nil, nil end
  local nl = string.find(v, '\n', 1, true)
  local hdr = cjson.decode(string.sub(v, 1, nl - 1))
  local r = tonumber(hdr.rcv)
  for long, short in pairs(OFFSETS) do
    if hdr[short] then
      hdr[long], hdr[short] = r + hdr[short], nil
    end
  end
  return hdr, string.sub(v, nl + 1)
end

-- The record's command part (its body without the answer).
local function command_of(body)
  local nl = string.find(body, '\n', 1, true)
  if nl then return string.sub(body, 1, nl - 1) end
  return body
end

-- ttl: a number sets it, 'keep' keeps it, nil leaves the record without one
-- (a command in flight never expires unseen).
local function rec_write(key, header, body, ttl)
  local r, stored = tonumber(header.rcv), header
  if r then
    stored = {}
    for k, x in pairs(header) do stored[k] = x end
    for long, short in pairs(OFFSETS) do
      local t = tonumber(stored[long])
      if t and t > 0 then stored[short], stored[long] = t - r, nil end
    end
  end
  local v = cjson.encode(stored) .. '\n' .. body
  if ttl == 'keep' then
    redis.call('SET', key, v, 'KEEPTTL')
  elseif ttl then
    redis.call('SET', key, v, 'PX', ttl)
  else
    redis.call('SET', key, v)
  end
end

-- The status alone, without decoding the header (take reads it per member).
local function rec_status(key)
  local v = redis.call('GET', key)
  if not v then return nil end
  return string.match(string.sub(v, 1, string.find(v, '\n', 1, true)), '"st":"([%a_]*)"')
end

-- Claims: the dedupe memory of every command, kept CLAIM_TTL (longer than
-- the records), in CLAIM_BUCKETS hashes (a field in a small hash costs a
-- fraction of a key). Field "ns:project:id"; value
-- "<payload hash>|<status>|<first seen ms>|+<ms from first to final>|<refund
-- data>" (claims of earlier versions hold the final time itself): the
-- status is '' while in flight; a granted purchase's refund data (what its
-- revoke needs, kept for the refund window) is its last part.
local function claim_loc(kind, pid, id)
  local field = NS[kind] .. ':' .. pid .. ':' .. id
  local bucket = tonumber(string.sub(redis.sha1hex(field), 1, 4), 16) % CLAIM_BUCKETS
  return P .. ':claims:' .. bucket, field
end

-- The claim, or nil (none, or past the dedupe retention: then forgotten).
-- It carries its own location, for claim_put.
local function claim_get(kind, pid, id, now)
  local key, field = claim_loc(kind, pid, id)
  local v = redis.call('HGET', key, field)
  if not v then return nil, key, field end
  local h, st, at, plus, done, refund = string.match(v, '^([^|]*)|([^|]*)|(%d+)|(%+?)(%d*)|(.*)$')
  at = tonumber(at)
  if now - at > CLAIM_TTL then
    redis.call('HDEL', key, field)
    return nil, key, field
  end
  done = tonumber(done) or 0
  if plus == '+' then done = at + done end
  if refund ~= '' and done > 0 and now - done > REFUND_TTL then refund = '' end
  return {h = h, st = st, at = at, done = done, refund = refund, key = key, field = field}
end

local function claim_put(kind, pid, id, c)
  local key, field = c.key, c.field
  if not key then key, field = claim_loc(kind, pid, id) end
  -- The final time as an offset from the first ('+<ms>'): 10 bytes less.
  local done = tonumber(c.done) or 0
  done = done > 0 and ('+' .. (done - c.at)) or '0'
  redis.call('HSET', key, field, c.h .. '|' .. c.st .. '|' .. c.at .. '|' .. done .. '|' .. (c.refund or ''))
end

-- Outcome counts and the publish -> outcome latency histogram (buckets in ms,
-- not cumulative: the exporter sums them up). Tallied in the script and
-- written once per field when it ends (done): a batch of 50 grants costs 3
-- increments, not 150.
local tally_totals, tally_latency = {}, {}
local function observe(kind, pid, st, enq, now)
  local f = kind .. '|' .. pid .. '|' .. st
  tally_totals[f] = (tally_totals[f] or 0) + 1
  if enq and enq > 0 then
    local waited = now - enq
    local le = '+Inf'
    for _, b in ipairs(LATENCY_BUCKETS_MS) do
      if waited <= b then le = b; break end
    end
    local lf = kind .. '|' .. pid .. '|' .. le
    tally_latency[lf] = (tally_latency[lf] or 0) + 1
    local sf = kind .. '|' .. pid .. '|sum_ms'
    tally_latency[sf] = (tally_latency[sf] or 0) + waited
  end
end

-- Every script that may finalize returns through this.
local function done(reply)
  for f, n in pairs(tally_totals) do redis.call('HINCRBY', TOTALS, f, n) end
  for f, n in pairs(tally_latency) do redis.call('HINCRBY', LATENCY, f, n) end
  return reply
end

-- Queue a record into its lane's buffer (the batching path of every command).
-- Since when a command waits in its buffer: its arrival, or when an operator
-- put it back (replay: 'rq'), not the purchase's age (the backlog's age and
-- the flush interval are about the wait, not the purchase).
local function waiting_since(hdr)
  return tonumber(hdr.rq) or tonumber(hdr.rcv)
end

local function enqueue(kind, pid, id, now)
  local lane = lane_of(kind, pid)
  if redis.call('RPUSH', P .. ':buf:' .. lane, id) == 1 then
    redis.call('ZADD', LANES, now, lane)
  end
end

-- Call budgets: a token bucket per backend and project, shared by every
-- worker. spec is "key|rate per s|burst" or "" (no budget). A call spends
-- one token; with none left the caller waits (the reply says how long).
local function budget_wait(spec, now, spend)
  if not spec or spec == '' then return 0 end
  local key, rate, burst = string.match(spec, '^(.+)|([%d.]+)|([%d.]+)$')
  rate, burst = tonumber(rate), tonumber(burst)
  local bk = P .. ':budget:' .. key
  local b = redis.call('HMGET', bk, 't', 'ts')
  local tokens, ts = tonumber(b[1]) or burst, tonumber(b[2]) or now
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  local wait = 0
  if tokens < 1 then
    wait = math.ceil((1 - tokens) * 1000 / rate)
  elseif spend then
    tokens = tokens - 1
  end
  redis.call('HSET', bk, 't', tokens, 'ts', now)
  -- Gone once it would be full again anyway.
  redis.call('PEXPIRE', bk, math.ceil(burst * 1000 / rate) + 1000)
  return wait
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

-- The same for revokes in doubt with their grant.
local revokes_doubted = nil
local function any_revoke_doubted()
  if revokes_doubted == nil then
    revokes_doubted = redis.call('ZCARD', idx_key('revoke', 'in_doubt')) > 0
  end
  return revokes_doubted
end

-- A revoke waiting for its grant's outcome goes on accordingly: sent if the
-- grant was applied, nothing to do if it certainly was not, in doubt with it.
local function release_waiting_revoke(pid, epid, grant_status, now)
  local vk = rec_key('revoke', pid, epid)
  local hdr, body = rec_read(vk)
  if not hdr or hdr.st ~= 'waiting' then return end
  if grant_status == 'granted' then
    redis.call('ZREM', idx_key('revoke', 'waiting'), pid .. ':' .. epid)
    hdr.st = 'pending'
    rec_write(vk, hdr, body, nil)
    enqueue('revoke', pid, epid, now)
  elseif grant_status == 'in_doubt' then
    finalize('revoke', pid, epid, 'in_doubt', '', '',
      'the grant is in doubt: check the inventory, then replay the grant or revoke by hand', now)
  else
    finalize('revoke', pid, epid, 'noop', '', '', 'nothing to revoke: the grant ended ' .. grant_status, now)
  end
end

-- Who settles an in_doubt grant, when an operator does (resolve.lua sets it):
-- named in what its refund's record says.
local resolved_by = nil

-- A refund that arrived while its grant was in doubt was never sent (in doubt
-- with it, no call made). Once the grant leaves in_doubt (a late answer, a
-- read-back, an operator's resolve) the refund goes on as it would have, had
-- the grant's answer come: granted, it is sent now (the claim has the refund
-- data); anything else, there is nothing to revoke. A revoke that was sent
-- and lost its own answer stays the operator's (att > 0).
local function release_doubted_revoke(pid, epid, grant_status, now)
  local m = pid .. ':' .. epid
  if not redis.call('ZSCORE', idx_key('revoke', 'in_doubt'), m) then return end
  local vk = rec_key('revoke', pid, epid)
  local vh, vbody = rec_read(vk)
  if not vh or vh.st ~= 'in_doubt' or (tonumber(vh.att) or 0) > 0 then return end
  local by = resolved_by and (' by ' .. resolved_by) or ''
  local grant_claim = claim_get('grant', pid, epid, now)
  if grant_status == 'granted' and not (grant_claim and grant_claim.refund ~= '') then
    -- Nothing to send it with (past the refund window): said, as ingest says it.
    finalize('revoke', pid, epid, 'rejected', '', '',
      'its grant was settled granted' .. by .. ', but what a refund needs of it is gone (past the refund window?): '
      .. 'take the items back by hand', now, vh, vbody)
  elseif grant_status == 'granted' then
    local hist = vh.hist or {}
    hist[#hist + 1] = {event = 'release', by = resolved_by, at = now, from_status = 'in_doubt', as = 'pending',
                       note = 'its grant was settled granted' .. by .. ': sent'}
    redis.call('ZREM', idx_key('revoke', 'in_doubt'), m)
    vh.st, vh.hist, vh.err, vh.cpl, vh.rq = 'pending', hist, nil, nil, now
    rec_write(vk, vh, command_of(vbody), nil)
    local c = claim_get('revoke', pid, epid, now)
    if c then c.st = ''; claim_put('revoke', pid, epid, c) end
    enqueue('revoke', pid, epid, now)
  else
    finalize('revoke', pid, epid, 'noop', '', '',
      'nothing to revoke: the grant was ' .. (resolved_by and 'resolved ' or 'settled ') .. grant_status .. by, now, vh, vbody)
  end
end

-- Write a final outcome: the record (status, answer, error, retention), its
-- index if the status has one, the counts and latency, the claim's final
-- status (with a granted purchase's refund data), and the stream entry the
-- purchase pipeline follows. Always together.
finalize = function(kind, pid, epid, new, res, refund, err, now, hdr, body, slim)
  local rk = rec_key(kind, pid, epid)
  if not hdr then hdr, body = rec_read(rk) end
  local old = hdr.st
  local m = pid .. ':' .. epid
  if INDEXED[old] then redis.call('ZREM', idx_key(kind, old), m) end
  if INDEXED[new] then redis.call('ZADD', idx_key(kind, new), now, m) end
  hdr.st, hdr.cpl = new, now
  if err ~= '' then hdr.err = err else hdr.err = nil end
  -- Only an in_doubt record is ever matched to its batch again (a late
  -- answer); the others keep the batch's number alone (its lane is the
  -- record's kind and project: results.py puts it back).
  if new ~= 'in_doubt' and hdr.bat then hdr.bat = string.match(hdr.bat, '^[^|]*') end
  -- A granted command's record may keep it without what its claim's refund
  -- data repeats (slim: schemas/commands.py stored()).
  local cmd = (slim and slim ~= '') and slim or command_of(body)
  rec_write(rk, hdr, res ~= '' and (cmd .. '\n' .. res) or cmd, TTL)
  observe(kind, pid, new, hdr.enq, now)
  local c, ck, cf = claim_get(kind, pid, epid, now)
  c = c or {h = '', at = now, key = ck, field = cf}
  c.st, c.done, c.refund = new, now, refund
  claim_put(kind, pid, epid, c)
  -- (A revoked grant keeps its refund data: its record may need it to be
  -- shown, and the revoke's own claim makes any repeat of the revoke a dup.)
  redis.call('XADD', P .. ':outcomes', 'MAXLEN', '~', MAXLEN, '*',
    'project_id', pid, 'external_purchase_id', epid, 'kind', kind, 'status', new, 'at', now)
  if kind == 'grant' and any_revoke_waiting() then release_waiting_revoke(pid, epid, new, now) end
  -- Granted (a late answer, a read-back, a replay of it), or an operator's
  -- finding: the refund follows. A late answer that only proves its own
  -- attempt did nothing ('failed') says nothing of the others: the refund
  -- stays in doubt with what is left to settle.
  if kind == 'grant' and (new == 'granted' or (resolved_by and new ~= 'in_doubt')) and any_revoke_doubted() then
    release_doubted_revoke(pid, epid, new, now)
  end
end

-- Finalize every member of a batch that is still 'sending' (in it).
local function finalize_members(kind, pid, batch_id, members, new, err, now)
  for _, epid in ipairs(members) do
    local hdr, body = rec_read(rec_key(kind, pid, epid))
    if hdr and hdr.st == 'sending' and hdr.bat == batch_id then
      finalize(kind, pid, epid, new, '', '', err, now, hdr, body)
    end
  end
end
