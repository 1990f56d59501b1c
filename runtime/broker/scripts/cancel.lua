--[[
  Cancel jobs that have not reached a terminal state; optionally cancel their workflow first.

  State transitions:
    scheduled | available | pending | active | retryable -> cancelled
    waiting (a workflow step not enqueued yet) -> cancelled
    workflow running -> cancelled (when a workflow key is given)
  An active job is cancelled at once (attempt and started_at are kept); its worker learns it from
  the next heartbeat, and its late ack or nack gets a conflict. A cancelled workflow no longer
  advances, so steps still running cannot start the next ones.
  Pre-conditions (per job; a failing job does not stop the others):
    - the job exists                          else status 1
    - the state is not terminal               else status 2 (conflict)
  Workflow pre-condition: it exists and is running, else nothing at all is changed and the reply
  is {{1}} (not found) or {{2, state}} (conflict).

  KEYS[1] prefix (derived keys: queue:<q>:available|counts, worker-jobs:<id>, unique:<fp>,
                 outbox)
  KEYS[2] active    (zset)
  KEYS[3] delayed   (zset)
  KEYS[4] expiring  (zset)
  KEYS[5] events    (stream)
  KEYS[6] workflow:<id> (hash) or the prefix itself when no workflow is cancelled
  KEYS[7..] job:<id> of each job

  ARGV[1] now_ms
  ARGV[2] events_maxlen   0 disables events
  ARGV[3] "1" when KEYS[6] is a workflow to cancel, else "0"
  ARGV[4..] job ids, in KEYS order

  Returns: one entry per job: {status, state, workflow}; state = the previous state on success, the
           current one on conflict; workflow = 1 when the job's workflow was queued for advance.lua
]]
local T = context(KEYS[1], ARGV[1], ARGV[2])
local wf_key = KEYS[6]

if ARGV[3] == "1" then
  local w = rcall("HMGET", wf_key, "state", "id", "name")
  if not w[1] then return {{S.NOT_FOUND}} end
  if w[1] ~= "running" then return {{S.CONFLICT, w[1]}} end
  rcall("HSET", wf_key, "state", "cancelled", "cancelled_at", T.now)
  emit(T, "workflow.cancelled", w[2], {workflow_id = w[2], workflow_name = w[3]})
end

local out = {}
for j = 7, #KEYS do
  local key, id = KEYS[j], ARGV[j - 3]
  local state = rcall("HGET", key, "state")
  if not state then
    out[#out + 1] = {S.NOT_FOUND, "", 0}
  elseif TERMINAL[state] then
    out[#out + 1] = {S.CONFLICT, state, 0}
  else
    out[#out + 1] = {S.OK, state, cancel_job(T, key, id, state, nil)}
  end
end
return out
