--[[
  Change the priority of a job that has not started (the priority extension's update).

  State transition: none. An available job moves within its queue's order; it keeps its enqueue
  sequence, so among jobs of equal priority it keeps its FIFO place. A tenant's job instead takes
  a new fair-queuing tag in its new band (lib.lua next_tag): its old tag was its turn among the
  tenants of the old band, and would put it behind the other tenants' backlog in the new one.
  Pre-conditions:
    - the job exists                                   else status 1
    - state is available or scheduled                  else status 2 (conflict), with the state

  KEYS[1] prefix (derived keys: job:<id>, queue:<q>:available|suspects|tenant-tags, seq)

  ARGV[1] now_ms
  ARGV[2] events_maxlen   0 disables events
  ARGV[3] job id
  ARGV[4] new priority (an integer in the envelope's range, checked by the caller)

  Returns {OK, previous priority} | {NOT_FOUND} | {CONFLICT, state}
]]
local T = context(KEYS[1], ARGV[1], ARGV[2])
local id, priority = ARGV[3], tonumber(ARGV[4])
local key = job_key(T, id)
local f = rcall("HMGET", key, "state", "queue", "priority", "type", "tenant")
if not f[1] then return {S.NOT_FOUND} end
if f[1] ~= "available" and f[1] ~= "scheduled" then return {S.CONFLICT, f[1]} end
local previous = tonumber(f[3]) or 0
rcall("HSET", key, "priority", priority)
if f[1] == "available" then
  local score = tonumber(rcall("ZSCORE", queue_key(T, f[2], "available"), id))
  if score then
    local seq
    if f[5] then  -- a tenant's job joins its tenant's share of the new band (a fair-queuing tag)
      local tags = new_tags()
      seq = next_tag(T, tags, f[2], priority, f[5], 1)
      save_tags(T, tags)
    else
      seq = score - (100 - previous) * 1e13
    end
    for _, part in ipairs({"available", "suspects"}) do
      local index = queue_key(T, f[2], part)
      if rcall("ZSCORE", index, id) then rcall("ZADD", index, queue_score(priority, seq), id) end
    end
  end
end
emit(T, "priority.changed", id, {job_id = id, job_type = f[4], queue = f[2], previous_priority = previous,
  new_priority = priority})
return {S.OK, previous}
