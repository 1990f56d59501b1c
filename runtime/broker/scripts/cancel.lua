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
                 workflow:advance)
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
local rcall = redis.call
local prefix = KEYS[1]
local active_key, delayed_key, expiring_key, events_key, wf_key = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now, maxlen = ARGV[1], tonumber(ARGV[2])

-- Ending a job: release its unique lock unless the policy still counts the new state, and queue
-- its workflow (if any) for advance.lua (the outbox is written in this same atomic step).
local function on_end(job_key, id, state)
  local u = rcall("HMGET", job_key, "unique_key", "unique_states", "workflow_id")
  if u[1] and not string.find("," .. (u[2] or "") .. ",", "," .. state .. ",", 1, true) then
    local lock = prefix .. "unique:" .. u[1]
    if rcall("GET", lock) == id then rcall("DEL", lock) end
  end
  if u[3] then
    rcall("RPUSH", prefix .. "workflow:advance", id)
    return 1
  end
  return 0
end

if ARGV[3] == "1" then
  local wf_state = rcall("HGET", wf_key, "state")
  if not wf_state then return {{1}} end
  if wf_state ~= "running" then return {{2, wf_state}} end
  rcall("HSET", wf_key, "state", "cancelled", "cancelled_at", now)
  if maxlen > 0 then
    rcall("XADD", events_key, "MAXLEN", "~", maxlen, "*", "type", "workflow.cancelled",
      "subject", rcall("HGET", wf_key, "id"), "time", now, "data",
      cjson.encode({workflow_id = rcall("HGET", wf_key, "id"), workflow_name = rcall("HGET", wf_key, "name")}))
  end
end

local out = {}
for j = 7, #KEYS do
  local job_key, id = KEYS[j], ARGV[j - 3]
  local f = rcall("HMGET", job_key, "state", "queue", "type", "worker_id")
  local state, queue = f[1], f[2]
  if not state then
    out[#out + 1] = {1, "", 0}
  elseif state == "completed" or state == "cancelled" or state == "discarded" then
    out[#out + 1] = {2, state, 0}
  else
    local counts = prefix .. "queue:" .. queue .. ":counts"
    if state ~= "waiting" then
      rcall("ZREM", prefix .. "queue:" .. queue .. ":available", id)
      rcall("ZREM", active_key, id)
      rcall("ZREM", delayed_key, id)
      rcall("ZREM", expiring_key, id)
      if f[4] then rcall("SREM", prefix .. "worker-jobs:" .. f[4], id) end
      rcall("HINCRBY", counts, state, -1)
    end
    rcall("HINCRBY", counts, "cancelled", 1)
    rcall("HSET", job_key, "state", "cancelled", "cancelled_at", now, "previous_state", state)
    rcall("HDEL", job_key, "visible_until", "exec_deadline", "next_attempt_at")
    if maxlen > 0 then
      rcall("XADD", events_key, "MAXLEN", "~", maxlen, "*", "type", "job.cancelled", "subject", id,
        "time", now, "data", cjson.encode({job_id = id, job_type = f[3], queue = queue,
          state = "cancelled", previous_state = state}))
    end
    out[#out + 1] = {0, state, on_end(job_key, id, "cancelled")}
  end
end
return out
