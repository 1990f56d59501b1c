--[[
  Record a job's progress; also counts as a heartbeat for that job's lease.

  State transition: none (active stays active). Progress is clamped to [0, 1] by the caller and
  is monotonic within an attempt: a lower value than the stored one keeps the stored one. For a
  job that is not active nothing changes and the stored values are returned (not an error).

  KEYS[1] job:<id>  (hash)
  KEYS[2] active    (zset)
  KEYS[3] events    (stream)

  ARGV[1] now_ms
  ARGV[2] events_maxlen          0 disables events
  ARGV[3] job id
  ARGV[4] progress in [0, 1]     "" to leave it
  ARGV[5] message                "" to leave it
  ARGV[6] data JSON              "" to leave it
  ARGV[7] checkpoint JSON        "" to leave it
  ARGV[8] default visibility_ms
  ARGV[9] claim token            "" when not known (an HTTP client); when given and not the job's
                                 current claim, nothing is written (status 3: stale claim)

  Returns: {status, state, progress|"", message|"", data|"", updated_at|""}  status 1: not found
]]
local job_key, active_key, events_key = KEYS[1], KEYS[2], KEYS[3]
local now, maxlen, id = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]

local f = rcall("HMGET", job_key, "state", "progress", "visibility_timeout_ms", "exec_deadline",
  "queue", "type", "worker_id", "attempt", "visible_until", "claim")
if not f[1] then
  return {S.NOT_FOUND, "", "", "", "", ""}
end
if ARGV[9] ~= "" and f[1] == "active" and ARGV[9] ~= f[10] then
  return {S.STALE_CLAIM, f[1], "", "", "", ""}
end
if f[1] == "active" then
  local value = tonumber(ARGV[4])
  local current = tonumber(f[2])
  if value and (not current or value > current) then
    rcall("HSET", job_key, "progress", ARGV[4])
  end
  if ARGV[5] ~= "" then rcall("HSET", job_key, "progress_message", ARGV[5]) end
  if ARGV[6] ~= "" then rcall("HSET", job_key, "progress_data", ARGV[6]) end
  if ARGV[7] ~= "" then rcall("HSET", job_key, "checkpoint", ARGV[7]) end
  rcall("HSET", job_key, "progress_at", ARGV[1])
  local visible_until = now + (tonumber(f[3]) or tonumber(ARGV[8]))
  local current = tonumber(f[9])
  if current and current > visible_until then visible_until = current end  -- only extends
  local deadline = visible_until
  local exec_deadline = tonumber(f[4])
  if exec_deadline and exec_deadline < deadline then deadline = exec_deadline end
  rcall("HSET", job_key, "visible_until", visible_until)
  rcall("ZADD", active_key, deadline, id)
  if maxlen > 0 then
    local stored = tonumber(rcall("HGET", job_key, "progress"))
    rcall("XADD", events_key, "MAXLEN", "~", maxlen, "*", "type", "job.progress", "subject", id,
      "time", ARGV[1], "data", cjson.encode({job_id = id, job_type = f[6], queue = f[5],
        worker_id = f[7], attempt = tonumber(f[8]),
        progress_percent = stored and stored * 100 or nil,
        progress_message = ARGV[5] ~= "" and ARGV[5] or nil}))
  end
end
local r = rcall("HMGET", job_key, "state", "progress", "progress_message", "progress_data", "progress_at")
return {S.OK, r[1], r[2] or "", r[3] or "", r[4] or "", r[5] or ""}
