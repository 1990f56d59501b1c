--[[
  Cancel a job that has not reached a terminal state.

  State transition: scheduled | available | pending | active | retryable -> cancelled
  An active job is cancelled at once (attempt and started_at are kept); its worker learns it from
  the next heartbeat, and its late ack or nack gets a conflict.
  Pre-conditions:
    - the job exists                          else status 1
    - the state is not terminal               else status 2 (conflict)

  KEYS[1] prefix (derived keys: queue:<q>:available, queue:<q>:counts, worker:<id>:jobs)
  KEYS[2] job:<id>  (hash)
  KEYS[3] active    (zset)
  KEYS[4] delayed   (zset)
  KEYS[5] expiring  (zset)
  KEYS[6] events    (stream)

  ARGV[1] now_ms
  ARGV[2] events_maxlen   0 disables events
  ARGV[3] job id

  Returns: {status, state}  state = the previous state on success, the current one on conflict
]]
local rcall = redis.call
local prefix, job_key = KEYS[1], KEYS[2]
local active_key, delayed_key, expiring_key, events_key = KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now, maxlen, id = ARGV[1], tonumber(ARGV[2]), ARGV[3]

local f = rcall("HMGET", job_key, "state", "queue", "type", "worker_id")
local state, queue = f[1], f[2]
if not state then
  return {1, ""}
end
if state == "completed" or state == "cancelled" or state == "discarded" then
  return {2, state}
end
rcall("ZREM", prefix .. "queue:" .. queue .. ":available", id)
rcall("ZREM", active_key, id)
rcall("ZREM", delayed_key, id)
rcall("ZREM", expiring_key, id)
if f[4] then rcall("SREM", prefix .. "worker:" .. f[4] .. ":jobs", id) end
rcall("HSET", job_key, "state", "cancelled", "cancelled_at", now, "previous_state", state)
rcall("HDEL", job_key, "visible_until", "exec_deadline", "next_attempt_at")
local counts = prefix .. "queue:" .. queue .. ":counts"
rcall("HINCRBY", counts, state, -1)
rcall("HINCRBY", counts, "cancelled", 1)
if maxlen > 0 then
  rcall("XADD", events_key, "MAXLEN", "~", maxlen, "*", "type", "job.cancelled", "subject", id,
    "time", now, "data", cjson.encode({job_id = id, job_type = f[3], queue = queue,
      state = "cancelled", previous_state = state}))
end
return {0, state}
