--[[
  Run the due scheduler step, then claim up to `count` jobs from the given queues.

  State transitions:
    scheduled | retryable -> available      (due; also run with count 0 by the scheduler loop)
    available | scheduled | retryable | pending -> discarded   (expires_at passed; no completed_at)
    available -> active                     (the claim: attempt + 1, started_at, lease, and a new
                                             fencing token `claim`, never reused)
  Queues are tried in the order given (strict priority between queues); within a queue the
  highest job priority first, then FIFO by enqueue sequence. Paused queues are skipped. A worker
  that reported itself quiet or draining gets nothing.

  KEYS[1] prefix (derived keys: job:<id>, queue:<q>:available|paused|counts|config|ratelog,
                 worker:<id>, worker-jobs:<id>, unique:<fp>, workflow:advance, claims)
  KEYS[2] delayed   (zset)
  KEYS[3] active    (zset)
  KEYS[4] expiring  (zset)
  KEYS[5] events    (stream)
  KEYS[6] dlq       (zset; unused here, listed so every transition script sees the same set)

  ARGV[1] now_ms
  ARGV[2] events_maxlen          0 disables events
  ARGV[3] count                  jobs to claim (0: scheduler step only)
  ARGV[4] worker_id              "" when anonymous
  ARGV[5] default_visibility_ms
  ARGV[6] request_visibility_ms  "" when not given
  ARGV[7] step_limit             max due entries handled per step
  ARGV[8] now_iso                now as RFC 3339, for error records
  ARGV[9] queue count N
  ARGV[10 .. 9+N]     queue names, in preference order
  ARGV[10+N .. 9+2N]  per-queue quota for the first pass (weighted selection); a second pass
                      fills what is left of `count` from the queues in order, so an empty queue
                      gives its share to the others ("" where none: the count)
  ARGV[10+2N]         exec grace ms ("" or absent: 0), added to the execution deadline of this
                      call's claims: a pool may hold a claimed job briefly before its handler
                      starts, and gives a sync handler past its timeout a grace; the broker's
                      backstop must not reap it sooner. HTTP workers pass none.
  ARGV[11+2N]         number M of job types with a room limit (absent: 0)
  ARGV[12+2N ..]      M pairs: job type, room. At most `room` jobs of that type are claimed by
                      this call; the others stay in place in their queue (a pool's per-type
                      concurrency: it must not claim what it cannot start). With M > 0 each queue
                      is scanned from its head over at most ROOM_SCAN entries.

  Returns: an array with one flat HGETALL array per claimed job, in claim order.
]]
local rcall = redis.call
local prefix = KEYS[1]
local delayed_key, active_key, expiring_key, events_key = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = tonumber(ARGV[1])
local maxlen = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local worker_id = ARGV[4]
local default_vis = tonumber(ARGV[5])
local request_vis = tonumber(ARGV[6])
local step_limit = tonumber(ARGV[7])
local nq = tonumber(ARGV[9])
local exec_grace = tonumber(ARGV[10 + 2 * nq]) or 0
local room = nil  -- job type -> claims this call may still make; nil: no type is limited
for t = 1, tonumber(ARGV[11 + 2 * nq]) or 0 do
  room = room or {}
  room[ARGV[10 + 2 * nq + 2 * t]] = tonumber(ARGV[11 + 2 * nq + 2 * t])
end
local ROOM_SCAN = 256

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

local function move_count(queue, from, to)
  local counts = prefix .. "queue:" .. queue .. ":counts"
  rcall("HINCRBY", counts, from, -1)
  rcall("HINCRBY", counts, to, 1)
end

local function make_available(job_key, id, queue, priority)
  local seq = rcall("INCR", prefix .. "seq")
  rcall("ZADD", prefix .. "queue:" .. queue .. ":available",
    string.format("%.0f", (100 - priority) * 1e13 + seq), id)
  rcall("PUBLISH", prefix .. "notify:" .. queue, "1")
end

local function promote_due()
  local due = rcall("ZRANGEBYSCORE", delayed_key, "-inf", now, "LIMIT", 0, step_limit)
  for _, id in ipairs(due) do
    rcall("ZREM", delayed_key, id)
    local job_key = prefix .. "job:" .. id
    local f = rcall("HMGET", job_key, "state", "queue", "priority")
    if f[1] == "scheduled" or f[1] == "retryable" then
      rcall("HSET", job_key, "state", "available", "enqueued_at", ARGV[1])
      rcall("HDEL", job_key, "next_attempt_at")
      move_count(f[2], f[1], "available")
      make_available(job_key, id, f[2], tonumber(f[3]))
    end
  end
end

local EXPIRABLE = {available = true, scheduled = true, retryable = true, pending = true}

-- TTL passed: the job never starts. An active job is left alone (it started in time); nack.lua
-- puts it back in `expiring` if it is handed back, so it cannot start again after its expiry.
local function expire_job(id)
  local job_key = prefix .. "job:" .. id
  local f = rcall("HMGET", job_key, "state", "queue", "type", "created_at", "expires_ms")
  if not EXPIRABLE[f[1]] then return end
  rcall("ZREM", prefix .. "queue:" .. f[2] .. ":available", id)
  rcall("ZREM", delayed_key, id)
  rcall("ZREM", expiring_key, id)
  local err = cjson.encode({code = "expired", type = "expired", retryable = false,
    message = "Job expired before it could start", occurred_at = ARGV[8], timestamp = ARGV[8]})
  rcall("HSET", job_key, "state", "discarded", "discarded_at", ARGV[1], "expired_at", ARGV[1],
    "previous_state", f[1], "error", err)
  move_count(f[2], f[1], "discarded")
  on_end(job_key, id, "discarded")
  emit("job.expired", id, {job_id = id, job_type = f[3], queue = f[2], state = "discarded",
    created_at = tonumber(f[4]), expired_at = now, ttl_ms = tonumber(f[5]) - tonumber(f[4])})
end

local function expire_due()
  local due = rcall("ZRANGEBYSCORE", expiring_key, "-inf", now, "LIMIT", 0, step_limit)
  for _, id in ipairs(due) do
    rcall("ZREM", expiring_key, id)
    expire_job(id)
  end
end

local claimed_per_queue = {}

-- Fencing tokens: one INCRBY per call reserves a block of tokens (an unused rest is simply
-- skipped), so every claim of every job gets a number no earlier claim had.
local next_token, last_token = 0, -1
local function new_token()
  if next_token > last_token then
    last_token = rcall("INCRBY", prefix .. "claims", count)
    next_token = last_token - count + 1
  end
  next_token = next_token + 1
  return next_token - 1
end

local function claim(id, queue)
  local job_key = prefix .. "job:" .. id
  local f = rcall("HMGET", job_key, "state", "type", "visibility_timeout_ms", "timeout_ms", "expires_ms",
    "attempt", "worker_id", "exec_deadline", "progress", "progress_at")
  if f[1] ~= "available" then
    return nil -- a stale index entry (the job was flushed or moved): drop it
  end
  if f[5] and tonumber(f[5]) <= now then
    -- Past its TTL but not yet reached by expire_due (more were due than one step handles).
    expire_job(id)
    return nil
  end
  local vis = tonumber(f[3]) or request_vis or default_vis
  local visible_until = now + vis
  local deadline = visible_until
  -- One HSET (attempt included) and, only when an earlier attempt left something, one HDEL.
  local attempt = (tonumber(f[6]) or 0) + 1
  local set = {"state", "active", "started_at", ARGV[1], "visible_until", visible_until, "attempt", attempt,
               "claim", new_token()}
  local drop = {}
  if f[9] or f[10] then  -- the previous attempt's progress
    drop = {"progress", "progress_message", "progress_data", "progress_at"}
  end
  if worker_id ~= "" then
    set[#set + 1] = "worker_id"
    set[#set + 1] = worker_id
    rcall("SADD", prefix .. "worker-jobs:" .. worker_id, id)
  elseif f[7] then
    drop[#drop + 1] = "worker_id"
  end
  local timeout = tonumber(f[4])
  if timeout then
    local exec_deadline = now + timeout + exec_grace
    set[#set + 1] = "exec_deadline"
    set[#set + 1] = exec_deadline
    if exec_deadline < deadline then deadline = exec_deadline end
  elseif f[8] then
    drop[#drop + 1] = "exec_deadline"
  end
  rcall("HSET", job_key, unpack(set))
  if #drop > 0 then rcall("HDEL", job_key, unpack(drop)) end
  rcall("ZADD", active_key, deadline, id)
  claimed_per_queue[queue] = (claimed_per_queue[queue] or 0) + 1
  emit("job.started", id, {job_id = id, job_type = f[2], queue = queue, state = "active",
    worker_id = worker_id, attempt = attempt})
  return rcall("HGETALL", job_key)
end

promote_due()
expire_due()

local claimed = {}
if count <= 0 then
  return claimed
end
if worker_id ~= "" then
  local wstate = rcall("HGET", prefix .. "worker:" .. worker_id, "state")
  if wstate == "quiet" or wstate == "terminate" or wstate == "drain" or wstate == "draining" then
    return claimed
  end
end

-- Queue rate limit (sliding window log): at most rl_max claims per rl_window_ms per queue,
-- across every worker and host, because the check and the claim are one script.
local function rate_budget(queue)
  local cfg = rcall("HMGET", prefix .. "queue:" .. queue .. ":config", "rl_max", "rl_window_ms")
  local max = tonumber(cfg[1])
  if not max then return nil end
  local log = prefix .. "queue:" .. queue .. ":ratelog"
  local window = tonumber(cfg[2])
  rcall("ZREMRANGEBYSCORE", log, "-inf", now - window)
  return math.max(0, max - rcall("ZCARD", log)), log, window
end

-- With per-type room: the queue's head, in order, skipping (and leaving in place) the jobs of a
-- type without room; only what is claimed leaves the queue.
local function claim_with_room(queue, available_key, limit, log, window)
  local taken = 0
  for _, id in ipairs(rcall("ZRANGE", available_key, 0, ROOM_SCAN - 1)) do
    if #claimed >= count or taken >= limit then return end
    local job_type = rcall("HGET", prefix .. "job:" .. id, "type")
    local left = job_type and room[job_type]
    if not left or left > 0 then
      rcall("ZREM", available_key, id)
      local job = claim(id, queue)  -- nil for a stale entry: dropped
      if job then
        claimed[#claimed + 1] = job
        taken = taken + 1
        if left then room[job_type] = left - 1 end
        if log then
          rcall("ZADD", log, now, id)
          rcall("PEXPIRE", log, window)
        end
      end
    end
  end
end

local function claim_from(queue, limit)
  if rcall("EXISTS", prefix .. "queue:" .. queue .. ":paused") == 1 then return end
  local budget, log, window = rate_budget(queue)
  if budget then limit = math.min(limit, budget) end
  local available_key = prefix .. "queue:" .. queue .. ":available"
  if room then return claim_with_room(queue, available_key, limit, log, window) end
  local taken = 0
  -- Pop as many as may be claimed in one call; a stale entry among them (dropped by claim) is
  -- made up for by the next round.
  while #claimed < count and taken < limit do
    local heads = rcall("ZPOPMIN", available_key, math.min(count - #claimed, limit - taken))
    if #heads == 0 then return end
    for h = 1, #heads, 2 do
      local job = claim(heads[h], queue)
      if job then
        claimed[#claimed + 1] = job
        taken = taken + 1
        if log then
          rcall("ZADD", log, now, heads[h])
          rcall("PEXPIRE", log, window)
        end
      end
    end
  end
end

for q = 1, nq do
  claim_from(ARGV[9 + q], tonumber(ARGV[9 + nq + q]) or count)
end
for q = 1, nq do
  if #claimed >= count then break end
  claim_from(ARGV[9 + q], count)
end
for queue, n in pairs(claimed_per_queue) do
  local counts = prefix .. "queue:" .. queue .. ":counts"
  rcall("HINCRBY", counts, "available", -n)
  rcall("HINCRBY", counts, "active", n)
end
return claimed
