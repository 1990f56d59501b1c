--[[
  Record that a reaper reached Redis, on Redis' own clock, and say whether lease expiry must wait.

  A gap longer than ARGV[1] since the previous call of any reaper means that Redis was away (or
  stalled, or every reaper was): the pools could not renew their leases either, so a lease that ran
  out meanwhile says nothing about its pool. Lease expiry then waits ARGV[2] ms from this call, so
  that live pools heartbeat first; the jobs of pools that do not come back are reaped after that.
  Redis' clock, not the caller's: every server running a reaper judges the same gap, whatever the
  skew between their clocks. A clock that went back counts as a gap.

  State transition: none (the reaper bookkeeping hash only)

  KEYS[1] reaper (hash: last_step_ms, resume_at_ms)

  ARGV[1] gap_ms    a longer pause between two reaper calls is an outage
  ARGV[2] grace_ms  how long lease expiry waits after an outage

  Returns: {wait_ms, gap_ms}: wait_ms > 0 while lease expiry waits; gap_ms is the outage this
           call found (0 when none), so that exactly one reaper reports it
]]
local rcall = redis.call
local t = rcall("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gap_limit, grace = tonumber(ARGV[1]), tonumber(ARGV[2])

local f = rcall("HMGET", KEYS[1], "last_step_ms", "resume_at_ms")
local last, resume_at = tonumber(f[1]), tonumber(f[2]) or 0
local gap = 0
if last and (now - last > gap_limit or now < last) then
  gap = now - last
  resume_at = now + grace
end
resume_at = math.min(resume_at, now + grace)  -- never wait longer than one grace from now

rcall("HSET", KEYS[1], "last_step_ms", string.format("%.0f", now),
  "resume_at_ms", string.format("%.0f", resume_at))
return {math.max(0, resume_at - now), gap}
