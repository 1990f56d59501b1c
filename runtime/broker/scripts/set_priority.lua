--[[
  Change the priority of a job that has not started (the priority extension's update).

  State transition: none. An available job moves within its queue's order; it keeps its enqueue
  sequence, so among jobs of equal priority it keeps its FIFO place.
  Pre-conditions:
    - the job exists                                   else status 1
    - state is available or scheduled                  else status 2 (conflict), with the state

  KEYS[1] prefix (derived keys: job:<id>, queue:<q>:available|suspects)

  ARGV[1] now_ms
  ARGV[2] events_maxlen   0 disables events
  ARGV[3] job id
  ARGV[4] new priority (an integer in the envelope's range, checked by the caller)

  Returns {OK, previous priority} | {NOT_FOUND} | {CONFLICT, state}
]]
local T = context(KEYS[1], ARGV[1], ARGV[2])
local id, priority = ARGV[3], tonumber(ARGV[4])
local key = job_key(T, id)
local f = rcall("HMGET", key, "state", "queue", "priority", "type")
if not f[1] then return {S.NOT_FOUND} end
if f[1] ~= "available" and f[1] ~= "scheduled" then return {S.CONFLICT, f[1]} end
local previous = tonumber(f[3]) or 0
rcall("HSET", key, "priority", priority)
if f[1] == "available" then
  for _, part in ipairs({"available", "suspects"}) do
    local index = queue_key(T, f[2], part)
    local score = tonumber(rcall("ZSCORE", index, id))
    if score then
      local seq = score - (100 - previous) * 1e13
      rcall("ZADD", index, string.format("%.0f", (100 - priority) * 1e13 + seq), id)
    end
  end
end
emit(T, "priority.changed", id, {job_id = id, job_type = f[4], queue = f[2], previous_priority = previous,
  new_priority = priority})
return {S.OK, previous}
