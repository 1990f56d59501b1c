--[[
  Index ended jobs stored before the ended-job indexes existed (a store written by an earlier
  version): each completed, cancelled or discarded job joins its queue's index of that state,
  scored by the time it ended. Idempotent (ZADD NX), and atomic per call, so it can run beside
  live transitions and be repeated after a crash.

  State transition: none

  KEYS[1] prefix (derived keys: job:<id>, queue:<q>:completed|cancelled|discarded)
  ARGV[1..] job ids

  Returns: how many jobs were added to an index
]]
local T = context(KEYS[1], "0", "0")
local ENDED_AT = {completed = 3, cancelled = 4, discarded = 5}
local added = 0
for _, id in ipairs(ARGV) do
  local f = rcall("HMGET", job_key(T, id), "state", "queue", "completed_at", "cancelled_at", "discarded_at",
    "created_at")
  local at = ENDED_AT[f[1]]
  if at and f[2] then
    if rcall("ZADD", queue_key(T, f[2], f[1]), "NX", f[at] or f[6] or "0", id) == 1 then added = added + 1 end
  end
end
return added
