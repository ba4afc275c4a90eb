-- Resolve: an operator's finding about in_doubt commands of one kind, written
-- as their outcome. 'granted' (the kind's applied status) closes it, with the
-- refund data a later revoke needs in its claim; 'failed' says it certainly
-- did not apply, so `grants replay` may send it again. Only from in_doubt,
-- decided here at the last moment: a command replayed, resolved or answered
-- late in the meantime is left as it is (an operator racing a replay, or
-- another operator, resolves or replays once).
-- ARGV: prefix, retention, actor, status to write (the kind's applied status
--       or 'failed'), kind, note, then per command: project_id, record id,
--       refund data ('' for none), the command as the record keeps it from
--       now on ('' to keep it), the answer to keep ('' to keep the one the
--       record has), when the in_doubt planned for was written (ms)
-- Returns one code per command: resolved | missing | changed (in doubt
-- again since the plan: a forced replay) | the status it has (never
-- changed: only an in_doubt command is resolved)
local actor, new, kind, note = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local now = now_ms()

-- A refund that arrived while its grant was in doubt follows the resolution
-- (_lib.lua release_doubted_revoke, from finalize), naming who resolved it.
resolved_by = actor
local out = {}
for i = 7, #ARGV, 6 do
  local pid, epid, refund, slim, answer = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local doubted_at = tonumber(ARGV[i + 5]) or 0
  local rk = rec_key(kind, pid, epid)
  local hdr, body = rec_read(rk)
  local st = hdr and hdr.st
  if not st then
    out[#out + 1] = 'missing'
  elseif st ~= 'in_doubt' then
    out[#out + 1] = st
  elseif doubted_at > 0 and (tonumber(hdr.cpl) or 0) ~= doubted_at then
    out[#out + 1] = 'changed'
  else
    local hist = hdr.hist or {}
    hist[#hist + 1] = {event = 'resolve', by = actor, at = now, from_status = st, as = new,
                       note = note, attempts_before = hdr.att or 0, last_error = hdr.err or ''}
    hdr.hist = hist
    if answer == '' then
      local nl = string.find(body, '\n', 1, true)
      if nl then answer = string.sub(body, nl + 1) end
    end
    local err = ''
    if new == 'failed' then
      err = 'resolved failed by ' .. actor .. (note ~= '' and (': ' .. note) or '') ..
        ' (not applied: safe to replay)'
    end
    finalize(kind, pid, epid, new, answer, new == 'failed' and '' or refund, err, now, hdr, body, slim)
    -- Operator actions are counted for ever (grants_resolutions_total).
    redis.call('HINCRBY', P .. ':ops', 'resolve|' .. kind .. '|' .. pid .. '|' .. new, 1)
    out[#out + 1] = 'resolved'
  end
end
-- The outcome is counted in the totals; the publish -> outcome latency is
-- not observed again: the in_doubt outcome was, and an operator's finding
-- days later says nothing about the pipeline's latency.
for f in pairs(tally_latency) do tally_latency[f] = nil end
return done(out)
