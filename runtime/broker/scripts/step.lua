--[[
  The scheduler step: promote due jobs and expire those whose TTL passed.

  State transitions:
    scheduled | retryable -> available      (due)
    available | scheduled | retryable | pending -> discarded   (expires_at passed; no completed_at)

  KEYS[1] prefix (derived keys: job:<id>, queue:<q>:available|counts, unique:<fp> and the fixed
                 keys: delayed, expiring, events, outbox)

  ARGV[1] now_ms
  ARGV[2] events_maxlen   0 disables events
  ARGV[3] step_limit      max due entries handled per step, of each kind
  ARGV[4] now_iso         now as RFC 3339, for error records

  Returns: {promoted, expired, workflow} counts; workflow = 1 when an expiry queued a workflow
           for the advance step.
]]
local T = context(KEYS[1], ARGV[1], ARGV[2])
local limit = tonumber(ARGV[3])

-- Entries a server of the previous version queued under the outbox's old name (it shared the
-- workflow namespace) move to the outbox, so a rolling upgrade strands no workflow.
for _ = 1, limit do
  if not rcall("RPOPLPUSH", T.prefix .. "workflow:advance", T.outbox) then break end
end
local outbox_before = rcall("LLEN", T.outbox)
local promoted = promote_due(T, limit)
local expired = expire_due(T, limit, ARGV[4])
return {promoted, expired, rcall("LLEN", T.outbox) > outbox_before and 1 or 0}
