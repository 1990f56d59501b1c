--[[
  Roll closed minutes of the statistics history into hours, and give both their retention.

  Transitions write stats:m:<minute ms> (hash, field <metric>:<queue>) as they run (lib.lua,
  count_stat, which gives a new key a 2-day expiry of its own). This script, run by the
  scheduler, takes each minute that closed more than a minute ago and was not rolled yet, in
  order: adds its counts into stats:h:<hour ms>, and sets the minute to expire
  `minute retention` after it began and the hour `hour retention` after it began. A minute is
  rolled exactly once (stats:rolled holds the last one rolled), so a crash between two runs
  neither loses nor doubles a count; several schedulers share the work the same way.

  KEYS[1] prefix (derived keys: stats:m:<ms>, stats:h:<ms>, and the fixed key stats:rolled)

  ARGV[1] now_ms
  ARGV[2] minute retention (ms)
  ARGV[3] hour retention (ms)
  ARGV[4] most minutes rolled by this call

  Returns: the number of minutes rolled
]]
local T = context(KEYS[1], ARGV[1], "0")
local MINUTE, HOUR = 60000, 3600000
local keep_minutes, keep_hours = tonumber(ARGV[2]), tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
-- The open minute and the one before it are not rolled: a transition whose clock reads a little
-- behind this one's (another server, a call in flight) may still count into the one before.
local current = T.now_ms - T.now_ms % MINUTE - MINUTE
local rolled = tonumber(rcall("GET", T.stats_rolled) or "")
if not rolled then
  rolled = current - keep_minutes - MINUTE  -- the first run: every minute that may be kept
end
local done = 0
local minute = rolled + MINUTE
while minute < current and done < limit do
  local key = T.prefix .. "stats:m:" .. string.format("%d", minute)
  local flat = rcall("HGETALL", key)
  if #flat > 0 then
    local hour = minute - minute % HOUR
    local hour_key = T.prefix .. "stats:h:" .. string.format("%d", hour)
    for i = 1, #flat, 2 do
      rcall("HINCRBY", hour_key, flat[i], flat[i + 1])
    end
    rcall("PEXPIREAT", key, string.format("%d", minute + keep_minutes))  -- replaces count_stat's
    rcall("PEXPIREAT", hour_key, string.format("%d", hour + keep_hours))
  end
  rolled = minute
  minute = minute + MINUTE
  done = done + 1
end
rcall("SET", T.stats_rolled, string.format("%d", rolled))
return done
