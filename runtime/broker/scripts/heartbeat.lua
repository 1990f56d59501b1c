--[[
  Record a worker's heartbeat and extend the leases of its active jobs, all in one call.

  State transition: none (active jobs stay active; their lease deadline moves forward)
  For each listed job that is active, held by this worker when both sides name one, and whose
  current claim is the listed fencing token when one is given: visible_until = now + visibility
  (the request's, else the job's, else the default), never earlier than it already was (a beat
  only extends a lease); the job's place in the active set becomes the earlier of that and its
  execution deadline. Listed jobs that were cancelled are reported so the worker can stop them.

  Directive, first match wins: an operator directive stored on the worker; the conformance-suite
  hook (a listed active job carrying a test_directive, taken from meta.test_directive at enqueue);
  else "running".

  KEYS[1] prefix (derived keys: job:<id>)
  KEYS[2] worker:<id>  (hash)
  KEYS[3] workers      (zset)
  KEYS[4] active       (zset)

  ARGV[1] now_ms
  ARGV[2] worker_id
  ARGV[3] reported state ("" when not given)
  ARGV[4] request visibility_ms ("" when not given)
  ARGV[5] default visibility_ms
  ARGV[6] reported active job count ("" to use the number of listed ids)
  ARGV[7] the worker's heartbeat interval in ms ("" when not reported; dead-worker detection
          then assumes the server's)
  ARGV[8] number of listed jobs N
  ARGV[9 .. 8+N]    active job ids
  ARGV[9+N .. 8+2N] their claim tokens ("" where unknown: any claim of this worker is extended)

  Returns: {directive, {extended ids}, {cancelled ids}}
]]
local prefix, worker_key, workers_key, active_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = tonumber(ARGV[1])
local worker_id, reported = ARGV[2], ARGV[3]
local request_vis, default_vis = tonumber(ARGV[4]), tonumber(ARGV[5])

local n = tonumber(ARGV[8])
local extended, cancelled = {}, {}
local hook_directive = nil
for a = 9, 8 + n do
  local id, token = ARGV[a], ARGV[a + n]
  local job_key = prefix .. "job:" .. id
  local f = rcall("HMGET", job_key, "state", "worker_id", "visibility_timeout_ms", "exec_deadline",
    "test_directive", "visible_until", "claim")
  if f[1] == "active" and (not f[2] or f[2] == worker_id) and (token == "" or token == f[7]) then
    local visible_until = now + (request_vis or tonumber(f[3]) or default_vis)
    local current = tonumber(f[6])
    if current and current > visible_until then visible_until = current end
    local deadline = visible_until
    local exec_deadline = tonumber(f[4])
    if exec_deadline and exec_deadline < deadline then deadline = exec_deadline end
    rcall("HSET", job_key, "visible_until", visible_until)
    rcall("ZADD", active_key, deadline, id)
    extended[#extended + 1] = id
    if f[5] and not hook_directive then hook_directive = f[5] end
  elseif f[1] == "cancelled" then
    cancelled[#cancelled + 1] = id
  end
end

local active_count = ARGV[6] ~= "" and ARGV[6] or tostring(n)
rcall("HSET", worker_key, "id", worker_id, "last_heartbeat_at", ARGV[1], "active_jobs", active_count)
if ARGV[7] ~= "" then
  rcall("HSET", worker_key, "heartbeat_interval_ms", ARGV[7])
end
if reported ~= "" then
  rcall("HSET", worker_key, "state", reported)
end
rcall("HSETNX", worker_key, "started_at", ARGV[1])
rcall("ZADD", workers_key, ARGV[1], worker_id)

local directive = rcall("HGET", worker_key, "directive") or hook_directive or "running"
return {directive, extended, cancelled}
