--[[
  Put a dead-lettered job back to work, same id, a fresh attempt budget.

  State transition: discarded (in the dead letter set) -> available
  attempt = 0, new enqueued_at; error, completed_at, discarded_at, retry_delay_ms,
  next_attempt_at and the worker-loss count cleared; the error history and the retry policy are kept.
  Pre-conditions:
    - the job is in the dead letter set and exists    else status 1

  KEYS[1] prefix (derived keys: queue:<q>:available, queue:<q>:counts, queue:<q>:dlq)
  KEYS[2] job:<id>  (hash)
  KEYS[3] dlq       (zset)
  KEYS[4] events    (stream)
  KEYS[5] expiring  (zset; a job with expires_at must still expire)

  ARGV[1] now_ms
  ARGV[2] events_maxlen   0 disables events
  ARGV[3] job id

  Returns: {status}
]]
local rcall = redis.call
local prefix, job_key, dlq_key, events_key, expiring_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, maxlen, id = ARGV[1], tonumber(ARGV[2]), ARGV[3]

local f = rcall("HMGET", job_key, "state", "queue", "priority", "type", "expires_ms")
if rcall("ZSCORE", dlq_key, id) == false or f[1] ~= "discarded" then
  return {1}
end
rcall("ZREM", dlq_key, id)
rcall("ZREM", prefix .. "queue:" .. f[2] .. ":dlq", id)
if f[5] then rcall("ZADD", expiring_key, f[5], id) end
rcall("HSET", job_key, "state", "available", "attempt", 0, "enqueued_at", now, "re_enqueued_at", now)
rcall("HDEL", job_key, "error", "completed_at", "discarded_at", "retry_delay_ms", "next_attempt_at",
  "started_at", "worker_id", "dead_lettered", "lost")
local counts = prefix .. "queue:" .. f[2] .. ":counts"
rcall("HINCRBY", counts, "discarded", -1)
rcall("HINCRBY", counts, "available", 1)
local seq = rcall("INCR", prefix .. "seq")
rcall("ZADD", prefix .. "queue:" .. f[2] .. ":available",
  string.format("%.0f", (100 - tonumber(f[3])) * 1e13 + seq), id)
rcall("PUBLISH", prefix .. "notify:" .. f[2], "1")
if maxlen > 0 then
  rcall("XADD", events_key, "MAXLEN", "~", maxlen, "*", "type", "job.enqueued", "subject", id,
    "time", now, "data", cjson.encode({job_id = id, job_type = f[4], queue = f[2],
      state = "available", source = "dead_letter_retry"}))
end
return {0}
