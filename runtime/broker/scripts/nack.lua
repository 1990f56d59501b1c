--[[
  Fail one or more active jobs: requeue, schedule a retry, or discard (and dead-letter).

  State transitions:
    active -> available   verdict requeue (no backoff, attempt kept); release (a draining
                          worker hands the job back: the attempt is given back too); lease_expired
                          with attempts left; worker_lost with attempts left and fewer than
                          `lost_cap` losses (a job that keeps killing its worker is dead-lettered)
    active -> retryable   verdict retry with attempts left; due at now + backoff
    active -> discarded   verdict discard (never dead-lettered), dead_letter (always), or
                          nonretryable / retry / lease_expired once attempts are spent (dead-lettered
                          when the job's on_exhaustion is dead_letter)
  Pre-conditions (per job; a failing job does not stop the others):
    - the job exists                                   else status 1
    - state = active                                   else status 2 (conflict)
    - the claim matches: the worker id and the attempt, when both sides know them
                                                       else status 3 (stale claim)
  The caller decides the verdict from the error (handler codes, retryable flag,
  non_retryable_errors); this script owns everything that depends on the job's stored state.

  KEYS[1] prefix (derived keys: queue:<q>:available|counts|dlq, worker-jobs:<id>, unique:<fp>,
                 workflow:advance)
  KEYS[2] active    (zset)
  KEYS[3] delayed   (zset)
  KEYS[4] expiring  (zset)
  KEYS[5] dlq       (zset)
  KEYS[6] events    (stream)
  KEYS[7..] job:<id> of each job, in ARGV order

  ARGV[1] now_ms
  ARGV[2] events_maxlen   0 disables events
  ARGV[3] lost_cap        worker losses after which a job is dead-lettered
  then per job (6 values): verdict, error JSON object|"", worker_id|"", attempt|"",
                           jitter factor in [0.5, 1.5) (used only when the policy has jitter),
                           delay_ms|"" (a handler's own retry delay, instead of the backoff)

  Returns: one entry per job: {status, state, attempt, max_attempts, retry_delay_ms, next_attempt_ms,
           workflow (1 when the job's workflow was queued for advance.lua)}
]]
local rcall = redis.call
local prefix = KEYS[1]
local active_key, delayed_key, expiring_key, dlq_key, events_key = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now = tonumber(ARGV[1])
local maxlen = tonumber(ARGV[2])
local lost_cap = tonumber(ARGV[3])
local HISTORY = 20

-- Ending a job: release its unique lock unless the policy still counts the new state, and queue
-- its workflow (if any) for advance.lua (the outbox is written in this same atomic step).
local function on_end(job_key, id, state)
  local u = rcall("HMGET", job_key, "unique_key", "unique_states", "workflow_id")
  if u[1] and not string.find("," .. (u[2] or "") .. ",", "," .. state .. ",", 1, true) then
    local lock = prefix .. "unique:" .. u[1]
    if rcall("GET", lock) == id then rcall("DEL", lock) end
  end
  if u[3] then
    rcall("RPUSH", prefix .. "workflow:advance", id)
    return 1
  end
  return 0
end

local function emit(etype, subject, data)
  if maxlen > 0 then
    rcall("XADD", events_key, "MAXLEN", "~", maxlen, "*",
      "type", etype, "subject", subject, "time", ARGV[1], "data", cjson.encode(data))
  end
end

local function backoff_ms(p, attempt, jitter_factor)
  local initial = tonumber(p[1]) or 1000
  local coef = tonumber(p[2]) or 2
  local max_ms = tonumber(p[3]) or 300000
  local strategy = p[4] or "exponential"
  local raw
  if strategy == "linear" then
    raw = initial * attempt
  elseif strategy == "constant" or strategy == "none" then
    raw = initial
  elseif strategy == "polynomial" then
    raw = initial * attempt ^ coef
  else
    raw = initial * coef ^ (attempt - 1)
  end
  local delay = math.min(raw, max_ms)
  if p[5] == "1" then
    delay = math.min(delay * jitter_factor, max_ms)
  end
  return math.floor(delay + 0.5)
end

local function record_error(job_key, err, attempt)
  if err == "" then return end
  local rec = '{"attempt":' .. attempt .. ',' .. string.sub(err, 2)
  local k = rcall("HINCRBY", job_key, "nerr", 1)
  rcall("HSET", job_key, "error", rec, "e" .. k, rec)
  if k > HISTORY then rcall("HDEL", job_key, "e" .. (k - HISTORY)) end
end

local function leave_active(job_key, id, queue, to_state)
  local holder = rcall("HGET", job_key, "worker_id")
  if holder then rcall("SREM", prefix .. "worker-jobs:" .. holder, id) end
  rcall("ZREM", active_key, id)
  rcall("HDEL", job_key, "visible_until", "exec_deadline")
  local counts = prefix .. "queue:" .. queue .. ":counts"
  rcall("HINCRBY", counts, "active", -1)
  rcall("HINCRBY", counts, to_state, 1)
end

-- A job handed back must still expire on time (fetch.lua drops active jobs from `expiring`).
local function keep_expiry(job_key, id)
  local expires = rcall("HGET", job_key, "expires_ms")
  if expires then rcall("ZADD", expiring_key, expires, id) end
end

local function to_available(job_key, id, f)
  leave_active(job_key, id, f.queue, "available")
  keep_expiry(job_key, id)
  rcall("HSET", job_key, "state", "available", "enqueued_at", ARGV[1])
  rcall("HDEL", job_key, "started_at", "worker_id")
  local seq = rcall("INCR", prefix .. "seq")
  rcall("ZADD", prefix .. "queue:" .. f.queue .. ":available",
    string.format("%.0f", (100 - f.priority) * 1e13 + seq), id)
  rcall("PUBLISH", prefix .. "notify:" .. f.queue, "1")
  return {0, "available", f.attempt, f.max_attempts, "", "", 0}
end

local function to_discarded(job_key, id, f, dead_letter, last_error)
  leave_active(job_key, id, f.queue, "discarded")
  rcall("ZREM", expiring_key, id)
  rcall("HSET", job_key, "state", "discarded", "discarded_at", ARGV[1], "completed_at", ARGV[1])
  if dead_letter then
    rcall("ZADD", dlq_key, ARGV[1], id)
    rcall("ZADD", prefix .. "queue:" .. f.queue .. ":dlq", ARGV[1], id)
    rcall("HSET", job_key, "dead_lettered", "1")
  end
  emit("job.discarded", id, {job_id = id, job_type = f.type, queue = f.queue, state = "discarded",
    total_attempts = f.attempt, dead_letter = dead_letter, last_error = last_error})
  return {0, "discarded", f.attempt, f.max_attempts, "", "", on_end(job_key, id, "discarded")}
end

local function to_retryable(job_key, id, f, jitter_factor, delay_override)
  local delay = delay_override
  if not delay then
    local policy = rcall("HMGET", job_key, "r_initial_ms", "r_coef", "r_max_ms", "r_strategy", "r_jitter")
    delay = backoff_ms(policy, f.attempt, jitter_factor)
  end
  local due = now + delay
  leave_active(job_key, id, f.queue, "retryable")
  keep_expiry(job_key, id)
  rcall("HSET", job_key, "state", "retryable", "retry_delay_ms", delay, "next_attempt_at", due)
  rcall("ZADD", delayed_key, due, id)
  emit("job.retrying", id, {job_id = id, job_type = f.type, queue = f.queue, state = "retryable",
    attempt = f.attempt, max_attempts = f.max_attempts, next_retry_at = due, retry_delay_ms = delay})
  return {0, "retryable", f.attempt, f.max_attempts, delay, due, 0}
end

local out = {}
for j = 7, #KEYS do
  local job_key = KEYS[j]
  local a = 4 + (j - 7) * 6
  local verdict, err, worker_id, guard = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local jitter_factor = tonumber(ARGV[a + 4]) or 1
  local delay_override = tonumber(ARGV[a + 5])
  local r = rcall("HMGET", job_key, "state", "worker_id", "attempt", "queue", "type", "priority",
    "max_attempts", "on_exhaustion", "id")
  if not r[1] then
    out[#out + 1] = {1, "", "", "", "", "", 0}
  elseif r[1] ~= "active" then
    out[#out + 1] = {2, r[1], "", "", "", "", 0}
  elseif (worker_id ~= "" and r[2] and r[2] ~= worker_id) or (guard ~= "" and guard ~= r[3]) then
    out[#out + 1] = {3, r[1], "", "", "", "", 0}
  else
    local f = {attempt = tonumber(r[3]), queue = r[4], type = r[5], priority = tonumber(r[6]),
               max_attempts = tonumber(r[7]), dlq = r[8] == "dead_letter"}
    local id = r[9]
    record_error(job_key, err, f.attempt)
    local last_error = nil
    if err ~= "" then
      local ok, decoded = pcall(cjson.decode, err)
      if ok then last_error = {code = decoded.code, message = decoded.message, type = decoded.type} end
      emit("job.failed", id, {job_id = id, job_type = f.type, queue = f.queue, attempt = f.attempt,
        error = last_error})
    end
    local exhausted = f.attempt >= f.max_attempts
    if verdict == "worker_lost" then
      local lost = rcall("HINCRBY", job_key, "lost", 1)
      if lost >= lost_cap then verdict = "dead_letter" else verdict = "lease_expired" end
    end
    if verdict == "release" then
      f.attempt = rcall("HINCRBY", job_key, "attempt", -1)
      out[#out + 1] = to_available(job_key, id, f)
    elseif verdict == "requeue" or (verdict == "lease_expired" and not exhausted) then
      out[#out + 1] = to_available(job_key, id, f)
    elseif verdict == "discard" then
      out[#out + 1] = to_discarded(job_key, id, f, false, last_error)
    elseif verdict == "dead_letter" then
      out[#out + 1] = to_discarded(job_key, id, f, true, last_error)
    elseif verdict == "retry" and not exhausted then
      out[#out + 1] = to_retryable(job_key, id, f, jitter_factor, delay_override)
    else
      out[#out + 1] = to_discarded(job_key, id, f, f.dlq, last_error)
    end
  end
end
return out
