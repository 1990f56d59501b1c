--[[
  List active jobs whose lease or execution deadline has passed, with what the caller needs to fail
  them (through nack.lua, guarded by the attempt it reads here). Entries whose job is no longer
  active are removed from the active set on the way.

  State transition: none (read, plus cleanup of stale index entries)

  KEYS[1] prefix (derived keys: job:<id>)
  KEYS[2] active (zset)

  ARGV[1] now_ms
  ARGV[2] limit

  Returns: flat array of {id, attempt, worker_id|"", reason, timeout_ms|"", claim|""} per job, where reason is
           "timeout" (execution deadline passed) or "lease" (visibility deadline passed)
]]
local prefix, active_key = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])

local out = {}
local due = rcall("ZRANGEBYSCORE", active_key, "-inf", now, "LIMIT", 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  local f = rcall("HMGET", prefix .. "job:" .. id, "state", "attempt", "worker_id", "exec_deadline",
    "timeout_ms", "claim")
  if f[1] ~= "active" then
    rcall("ZREM", active_key, id)
  else
    local exec_deadline = tonumber(f[4])
    local reason = (exec_deadline and exec_deadline <= now) and "timeout" or "lease"
    out[#out + 1] = {id, f[2], f[3] or "", reason, f[5] or "", f[6] or ""}
  end
end
return out
