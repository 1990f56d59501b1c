--[[
  Put a dead-lettered job (or, for an operator, any discarded or cancelled job) back to work,
  same id, a fresh attempt budget.

  State transition: discarded (in the dead letter set) -> available; with ARGV[4] = "ended" also
  discarded (dead-lettered or not) and cancelled -> available
  attempt = 0, new enqueued_at; error, completed_at, discarded_at, retry_delay_ms,
  next_attempt_at and the worker-loss count cleared; the error history and the retry policy are
  kept. A unique job takes its lock again.
  Pre-conditions:
    - the job is in the dead letter set and exists          else NOT_FOUND
      (mode "ended": the job is discarded or cancelled)     else NOT_FOUND
    - a unique job: no other job holds its lock in one of the policy's states
                                                            else UNIQUE_CONFLICT (nothing changed)
    - a workflow member: its workflow has ended (while it runs, the member was resolved as failed
      and its dependents acted on that; running it again would count it twice)
                                                            else CONFLICT (nothing changed)

  KEYS[1] prefix (derived keys: job:<id>, queue:<q>:available|counts|dlq, unique:<fp>,
                 workflow:<id> and the fixed keys)
  KEYS[2] job:<id>  (hash)

  ARGV[1] now_ms
  ARGV[2] events_maxlen   0 disables events
  ARGV[3] job id
  ARGV[4] "dead_letter" (the data plane's retry) | "ended" (the admin API's)

  Returns: {OK} | {NOT_FOUND} | {UNIQUE_CONFLICT, holder id, holder state} | {CONFLICT, workflow id}
           | {CONFLICT, "", state} (mode "ended": the job is live)
           | {CONFLICT, "", "cancelled_running", until ms} (mode "ended": it was cancelled while
             running, and that run may go on until its lease or execution deadline)
]]
local T = context(KEYS[1], ARGV[1], ARGV[2])
local key, id = KEYS[2], ARGV[3]

local f = rcall("HMGET", key, "state", "queue", "priority", "type", "expires_ms", "unique_key",
  "unique_states", "workflow_id", "tenant")
local state = f[1]
if ARGV[4] == "ended" then
  if not state then return {S.NOT_FOUND} end
  if state ~= "discarded" and state ~= "cancelled" then return {S.CONFLICT, "", state} end
  local run_until = tonumber(rcall("HGET", key, "cancelled_run_until"))
  if state == "cancelled" and run_until and run_until > T.now_ms then
    return {S.CONFLICT, "", "cancelled_running", run_until}  -- its cancelled run may still go on
  end
elseif rcall("ZSCORE", T.dlq, id) == false or state ~= "discarded" then
  return {S.NOT_FOUND}
end
if f[8] and rcall("HGET", T.prefix .. "workflow:" .. f[8], "state") == "running" then
  return {S.CONFLICT, f[8]}
end
local lock = f[6] and (T.prefix .. "unique:" .. f[6])
if lock then
  local holder = rcall("GET", lock)
  if holder and holder ~= id then
    local holder_state = rcall("HGET", job_key(T, holder), "state")
    -- A waiting workflow step holds its lock as the job it will become (as in enqueue.lua)
    local counted = holder_state == "waiting" and "available" or holder_state
    if holder_state and in_csv(f[7], counted) then
      return {S.UNIQUE_CONFLICT, holder, holder_state}
    end
  end
  -- No period on a retried job's lock: it is held while the job is live, and released when it ends.
  rcall("SET", lock, id)
end
dead_letter_remove(T, id, f[2])
unindex_ended(T, id, f[2], state)
if f[5] then rcall("ZADD", T.expiring, f[5], id) end
rcall("HSET", key, "state", "available", "attempt", 0, "enqueued_at", T.now, "re_enqueued_at", T.now)
-- The last run's claim goes too: a late release or nack of that claim must find no claim to match
-- (nack.lua's applied_already would take it for its own first send, with the attempt reset to 0).
rcall("HDEL", key, "error", "completed_at", "discarded_at", "cancelled_at", "retry_delay_ms",
  "next_attempt_at", "started_at", "worker_id", "dead_lettered", "lost", "shared_lost", "suspect",
  "cancelled_run_until", "claim")
move_count(T, f[2], state, "available")
local rl_key = rcall("HGET", key, "rl_key")
if rl_key then  -- unfinished again; a slot its cancelled run kept is free (that run is over)
  rcall("SADD", T.prefix .. "rl-jobs:" .. rl_key, id)
  rcall("SREM", T.prefix .. "rl-active:" .. rl_key, id)
end
if f[9] then rcall("SADD", T.prefix .. "tenant-jobs:" .. f[9], id) end
index_available(T, id, f[2], tonumber(f[3]), f[9])
emit(T, "job.enqueued", id, {job_id = id, job_type = f[4], queue = f[2], state = "available",
  source = ARGV[4] == "ended" and "admin_retry" or "dead_letter_retry"})
return {S.OK}
