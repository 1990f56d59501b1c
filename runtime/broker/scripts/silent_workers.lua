--[[
  Find the workers whose heartbeats stopped, forget them, and list the jobs they still hold.

  State transition: none for jobs: the caller fails each listed job through nack.lua (verdict
  worker_lost), guarded by the claim read here (its fencing token), so a job settled or
  claimed again in between is left alone. The worker's registry entry goes in this same step, so
  one silence is acted on once, whichever of several servers gets there first.
  A worker is silent when  now - max(last heartbeat, since) > missed * max(its interval, default):
  its own reported heartbeat interval, never less than the server's.

  KEYS[1] prefix (derived keys: worker:<id>, worker-jobs:<id>, job:<id>)
  KEYS[2] workers (zset: worker id -> last heartbeat, ms)

  ARGV[1] now_ms
  ARGV[2] since_ms           silence counts from no earlier than this (when the caller last
                             regained the store: workers could not beat while it was away)
  ARGV[3] missed             heartbeat intervals without a beat after which a worker is dead
  ARGV[4] default_interval_ms
  ARGV[5] limit              candidates examined per call
  ARGV[6] worker id          optional: judge this worker only (an operator's deregister)

  Returns: flat array: worker id, then {job id, attempt, claim, ...} of the jobs it held, per
           silent worker
]]
local prefix, workers_key = KEYS[1], KEYS[2]
local now, since = tonumber(ARGV[1]), tonumber(ARGV[2])
local missed, default_interval = tonumber(ARGV[3]), tonumber(ARGV[4])

local out = {}
local cutoff = now - missed * default_interval  -- no worker is dead before this much silence
if since > cutoff then return out end
local candidates
if ARGV[6] and ARGV[6] ~= "" then
  local beat = tonumber(rcall("ZSCORE", workers_key, ARGV[6]))
  candidates = (beat and beat <= cutoff) and {ARGV[6]} or {}
else
  candidates = rcall("ZRANGEBYSCORE", workers_key, "-inf", cutoff, "LIMIT", 0, tonumber(ARGV[5]))
end
for _, worker_id in ipairs(candidates) do
  local worker_key = prefix .. "worker:" .. worker_id
  local w = rcall("HMGET", worker_key, "last_heartbeat_at", "heartbeat_interval_ms")
  local last = tonumber(w[1]) or tonumber(rcall("ZSCORE", workers_key, worker_id)) or 0
  local interval = math.max(tonumber(w[2]) or 0, default_interval)
  if now - math.max(last, since) > missed * interval then
    local held = {}
    for _, id in ipairs(rcall("SMEMBERS", prefix .. "worker-jobs:" .. worker_id)) do
      local f = rcall("HMGET", prefix .. "job:" .. id, "state", "worker_id", "attempt", "claim")
      if f[1] == "active" and f[2] == worker_id then
        held[#held + 1] = id
        held[#held + 1] = f[3]
        held[#held + 1] = f[4] or ""
      end
    end
    rcall("DEL", worker_key)
    rcall("ZREM", workers_key, worker_id)
    out[#out + 1] = worker_id
    out[#out + 1] = held
  end
end
return out
