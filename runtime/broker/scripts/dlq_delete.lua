--[[
  Delete a dead-lettered job for good (the job record goes with it).

  State transition: discarded (in the dead letter set) -> (deleted)
  Pre-conditions:
    - the job is in the dead letter set     else status 1

  KEYS[1] prefix (derived keys: queue:<q>:counts, queue:<q>:dlq)
  KEYS[2] job:<id>  (hash)
  KEYS[3] dlq       (zset)
  KEYS[4] expiring  (zset)

  ARGV[1] job id

  Returns: {status}
]]
local rcall = redis.call
local prefix, job_key, dlq_key, expiring_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id = ARGV[1]

if rcall("ZREM", dlq_key, id) == 0 then
  return {1}
end
local f = rcall("HMGET", job_key, "state", "queue")
if f[1] then
  rcall("HINCRBY", prefix .. "queue:" .. f[2] .. ":counts", f[1], -1)
  rcall("ZREM", prefix .. "queue:" .. f[2] .. ":dlq", id)
end
rcall("DEL", job_key)
rcall("ZREM", expiring_key, id)
return {0}
