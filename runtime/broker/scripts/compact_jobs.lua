--[[
  Rewrite job hashes stored by an earlier version, which copied the retry policy into every job,
  to the current layout: a `retry` display that is the default policy's (ARGV[1]) and every
  retry scalar (max_attempts, r_*, on_exhaustion) that holds its default (the prelude's table D)
  are left out, as a new enqueue leaves them out. What a reader sees is unchanged: readers apply
  the defaults. The hash is written anew (DEL, then HSET of what is kept, its TTL kept), because
  Redis never turns a hashtable back into a listpack: a rewritten common job takes the compact
  encoding again. Idempotent, and atomic per call (a job is read and rewritten
  in one step), so it can run beside live transitions and be repeated after a crash.

  State transition: none

  KEYS[1] prefix (derived keys: job:<id>)
  ARGV[1] the default policy's display JSON (the `retry` field a default job held)
  ARGV[2..] job ids

  Returns: how many job hashes were rewritten
]]
local T = context(KEYS[1], "0", "0")
local default_display = ARGV[1]
local rewritten = 0
for a = 2, #ARGV do
  local key = job_key(T, ARGV[a])
  local h = rcall("HGETALL", key)
  local kept, dropped = {}, 0
  for f = 1, #h, 2 do
    local name, value = h[f], h[f + 1]
    if (name == "retry" and value == default_display) or D[name] == value then
      dropped = dropped + 1
    else
      kept[#kept + 1] = name
      kept[#kept + 1] = value
    end
  end
  if dropped > 0 and #kept > 0 then
    local ttl = rcall("PTTL", key)
    rcall("DEL", key)
    rcall("HSET", key, unpack(kept))
    if ttl > 0 then rcall("PEXPIRE", key, ttl) end
    rewritten = rewritten + 1
  end
end
return rewritten
