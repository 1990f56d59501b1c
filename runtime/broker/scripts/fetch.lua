--[[
  Claim up to `count` jobs from the given queues.

  State transitions:
    available -> active                     (the claim: attempt + 1, started_at, lease, and a new
                                             fencing token `claim`, never reused)
    available -> discarded                  (expires_at passed before the scheduler step saw it)
  Queues are tried in the order given (strict priority between queues); within a queue the
  highest job priority first, then FIFO by enqueue sequence. Paused queues are skipped, and
  every queue while maintenance mode is on (the key `maintenance` exists). A worker
  that reported itself quiet or draining gets nothing. Before claiming, the due part of the
  scheduler step runs (promote_due, expire_due: the same helpers step.lua runs), so a job whose
  time has come is claimable at once.
  Suspects (jobs that were running when their process died, see nack.lua) are skipped, and stay
  where they are; only an idle caller (`idle` = 1, or a worker that holds no job, or one without
  a worker id) gets one, first and alone: the call then claims that job and nothing else.

  KEYS[1] prefix (derived keys: job:<id>, queue:<q>:available|paused|counts|config|ratelog,
                 worker:<id>, worker-jobs:<id>, unique:<fp>, queue:<q>:suspects, claims and the
                 fixed keys)

  ARGV[1] now_ms
  ARGV[2] events_maxlen          0 disables events
  ARGV[3] count                  jobs to claim
  ARGV[4] worker_id              "" when anonymous
  ARGV[5] default_visibility_ms
  ARGV[6] request_visibility_ms  "" when not given
  ARGV[7] step_limit             max due entries promoted and expired first, of each kind
  ARGV[8] exec_grace_ms          added to the execution deadline of these claims ("" or 0: none;
                                 a pool that enforces the timeout itself, from its handler start)
  ARGV[9] now_iso                now as RFC 3339, for error records
  ARGV[10] queue count N
  ARGV[11 .. 10+N]    queue names, in preference order
  ARGV[11+N .. 10+2N] per-queue quota for the first pass (weighted selection); a second pass
                      fills what is left of `count` from the queues in order, so an empty queue
                      gives its share to the others ("" each when not weighted)
  ARGV[11+2N]         idle: "1" when the caller runs and holds no job (it may get a suspect), "0"
                      when it runs something, "" when it cannot say (then: it holds no job, and
                      the broker keeps it from claiming beside a suspect it runs)
  ARGV[12+2N]         number M of job types with a room limit ("" or absent: 0)
  ARGV[13+2N ..]      M pairs: job type, room. At most `room` jobs of that type are claimed by
                      this call; the others stay in place in their queue (a pool's per-type
                      concurrency: it must not claim what it cannot start). With M > 0 each queue
                      is scanned from its head over at most ROOM_SCAN entries.
  ARGV[13+2N+2M]      number V of job types the caller takes only some versions of ("" or
                      absent: 0; the job-versioning extension)
  ARGV[14+2N+2M ..]   V groups of 5: job type, lowest version, ">=" or ">", highest version,
                      "<=" or "<" (versions as their `version_order` keys, "" for no bound). A
                      versioned job of such a type outside its range stays in place (held for a
                      compatible worker); unversioned jobs are taken. As with M > 0, each queue is
                      then scanned from its head over at most ROOM_SCAN entries.

  Returns: an array with one flat HGETALL array per claimed job, in claim order.
]]
local T = context(KEYS[1], ARGV[1], ARGV[2])
local prefix, now = T.prefix, T.now_ms
local count = tonumber(ARGV[3])
local worker_id = ARGV[4]
local default_vis = tonumber(ARGV[5])
local request_vis = tonumber(ARGV[6])
local exec_grace = tonumber(ARGV[8]) or 0
local nq = tonumber(ARGV[10])
local said_idle = ARGV[11 + 2 * nq] or ""  -- "1", "0", or "" when the caller cannot say
local room = nil  -- job type -> claims this call may still make; nil: no type is limited
for t = 1, tonumber(ARGV[12 + 2 * nq]) or 0 do
  room = room or {}
  room[ARGV[11 + 2 * nq + 2 * t]] = tonumber(ARGV[12 + 2 * nq + 2 * t])
end
local ROOM_SCAN = 256
local ranges = nil  -- job type -> {lo, lo_op, hi, hi_op}; nil: every version of every type
local nroom = tonumber(ARGV[12 + 2 * nq]) or 0
for v = 1, tonumber(ARGV[13 + 2 * nq + 2 * nroom]) or 0 do
  local at = 13 + 2 * nq + 2 * nroom + 5 * (v - 1)
  ranges = ranges or {}
  ranges[ARGV[at + 1]] = {ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], ARGV[at + 5]}
end
local function version_fits(job_type, order)
  local r = ranges[job_type]
  if not r or not order then return true end
  if r[1] ~= "" and (order < r[1] or (order == r[1] and r[2] == ">")) then return false end
  if r[3] ~= "" and (order > r[3] or (order == r[3] and r[4] == "<")) then return false end
  return true
end

-- Maintenance mode (the admin API): nothing is claimed, anywhere; enqueues go on.
if rcall("EXISTS", T.maintenance) == 1 then return {} end

promote_due(T, tonumber(ARGV[7]))
expire_due(T, tonumber(ARGV[7]), ARGV[9])

local claimed_per_queue = {}
local waited_per_queue = {}  -- ms from enqueue (or promotion) to this claim, summed: the history's wait
local SKIPPED = {}  -- claim's answer for a suspect the caller may not run
local skipped = {}  -- {id, score, queue} of the suspects popped and skipped: put back at the end

-- Fencing tokens: one INCRBY per call reserves a block of tokens (an unused rest is simply
-- skipped), so every claim of every job gets a number no earlier claim had.
local next_token, last_token = 0, -1
local function new_token()
  if next_token > last_token then
    last_token = rcall("INCRBY", T.claims, count)
    next_token = last_token - count + 1
  end
  next_token = next_token + 1
  return next_token - 1
end

local function claim(id, queue, alone)
  local job_key = prefix .. "job:" .. id
  local f = rcall("HMGET", job_key, "state", "type", "visibility_timeout_ms", "timeout_ms", "expires_ms",
    "attempt", "worker_id", "exec_deadline", "progress", "progress_at", "suspect", "enqueued_at")
  if f[1] ~= "available" then
    return nil -- a stale index entry (the job was flushed or moved): drop it
  end
  if f[11] and not alone then
    return SKIPPED
  end
  if f[5] and tonumber(f[5]) <= now then
    -- Past its TTL but not yet reached by expire_due (more were due than one step handles).
    expire_job(T, id, ARGV[9])
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
  rcall("ZADD", T.active, deadline, id)
  claimed_per_queue[queue] = (claimed_per_queue[queue] or 0) + 1
  waited_per_queue[queue] = (waited_per_queue[queue] or 0) + math.max(0, now - (tonumber(f[12]) or now))
  emit(T, "job.started", id, {job_id = id, job_type = f[2], queue = queue, state = "active",
    worker_id = worker_id, attempt = attempt})
  return rcall("HGETALL", job_key)
end

local claimed = {}
if count <= 0 then
  return claimed
end
if worker_id ~= "" then
  local wstate = rcall("HGET", prefix .. "worker:" .. worker_id, "state")
  if wstate == "quiet" or wstate == "terminate" or wstate == "drain" or wstate == "draining" then
    return claimed
  end
  -- A worker running a suspect runs nothing beside it. One that cannot say whether it is idle
  -- (an HTTP worker) has the isolation enforced here; one that says it (a pool) keeps it itself
  -- (it claims nothing while its suspect runs), so its fetches skip the read. The marker lapses
  -- with the claim.
  local alone = said_idle == "" and rcall("GET", prefix .. "worker-alone:" .. worker_id)
  if alone then
    local a = rcall("HMGET", prefix .. "job:" .. alone, "state", "worker_id")
    if a[1] == "active" and a[2] == worker_id then return claimed end
    rcall("DEL", prefix .. "worker-alone:" .. worker_id)
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

-- Claim one popped index entry: a suspect the caller may not run is kept aside (put back at the
-- end), a stale entry is dropped; a claim counts against the queue's rate-limit window.
-- Returns true when the job was claimed.
local function take(id, score, queue, log, window)
  local job = claim(id, queue)
  if job == SKIPPED then
    skipped[#skipped + 1] = {id, score, queue}
    return false
  end
  if not job then return false end
  claimed[#claimed + 1] = job
  if log then
    rcall("ZADD", log, now, id)
    rcall("PEXPIRE", log, window)
  end
  return true
end

-- With per-type room or version ranges: the queue's head, in order, skipping (and leaving in
-- place) the jobs of a type without room and those of a version the caller does not take; only
-- what is claimed leaves the queue.
local function claim_with_room(queue, available_key, limit, log, window)
  local taken = 0
  local head = rcall("ZRANGE", available_key, 0, ROOM_SCAN - 1, "WITHSCORES")
  for h = 1, #head, 2 do
    if #claimed >= count or taken >= limit then return end
    local id = head[h]
    local job_type, order
    if ranges then
      local f = rcall("HMGET", prefix .. "job:" .. id, "type", "version_order")
      job_type, order = f[1], f[2]
    else
      job_type = rcall("HGET", prefix .. "job:" .. id, "type")
    end
    local left = job_type and room and room[job_type]
    if (not left or left > 0) and (not ranges or not job_type or version_fits(job_type, order)) then
      rcall("ZREM", available_key, id)
      if take(id, head[h + 1], queue, log, window) then
        taken = taken + 1
        if left then room[job_type] = left - 1 end
      end
    end
  end
end

local function claim_from(queue, limit)
  if rcall("EXISTS", prefix .. "queue:" .. queue .. ":paused") == 1 then return end
  local budget, log, window = rate_budget(queue)
  if budget then limit = math.min(limit, budget) end
  local available_key = prefix .. "queue:" .. queue .. ":available"
  if room or ranges then return claim_with_room(queue, available_key, limit, log, window) end
  local taken = 0
  -- Pop as many as may be claimed in one call; a stale entry among them (dropped by claim) is
  -- made up for by the next round.
  while #claimed < count and taken < limit do
    local heads = rcall("ZPOPMIN", available_key, math.min(count - #claimed, limit - taken))
    if #heads == 0 then return end
    for h = 1, #heads, 2 do
      if take(heads[h], heads[h + 1], queue, log, window) then taken = taken + 1 end
    end
  end
end

-- An idle caller's suspect, from the queues' suspects index (an entry whose job has left the
-- available set meanwhile is stale and dropped).
local function claim_suspect()
  for q = 1, nq do
    local queue = ARGV[10 + q]
    local index = queue_key(T, queue, "suspects")
    if rcall("ZCARD", index) > 0 and rcall("EXISTS", queue_key(T, queue, "paused")) == 0 then
      local budget, log, window = rate_budget(queue)
      while not budget or budget > 0 do
        local head = rcall("ZPOPMIN", index)
        if #head == 0 then break end
        if rcall("ZREM", queue_key(T, queue, "available"), head[1]) == 1 then
          local job = claim(head[1], queue, true)
          if job then
            if worker_id ~= "" then
              local lease = rcall("ZSCORE", T.active, head[1])
              rcall("SET", prefix .. "worker-alone:" .. worker_id, head[1], "PX",
                math.max(1, math.floor(tonumber(lease) - now)))
            end
            if log then
              rcall("ZADD", log, now, head[1])
              rcall("PEXPIRE", log, window)
            end
            return job
          end
        end
      end
    end
  end
  return nil
end

-- Idle: the caller said so, or it holds nothing (an HTTP worker, which cannot say; a caller
-- without a worker id is taken as idle, as nothing tells otherwise). Read only when a suspect
-- waits, so the common path pays nothing.
local function caller_is_idle()
  if said_idle ~= "" then return said_idle == "1" end
  if worker_id == "" then return true end
  return rcall("SCARD", prefix .. "worker-jobs:" .. worker_id) == 0
end

local suspect = nil
if said_idle ~= "0" then  -- a caller that says it runs something cannot take a suspect
  for q = 1, nq do
    if rcall("ZCARD", queue_key(T, ARGV[10 + q], "suspects")) > 0 then
      if caller_is_idle() then suspect = claim_suspect() end
      break
    end
  end
end
if suspect then
  claimed[1] = suspect  -- and nothing else: the caller runs it alone
else
  for q = 1, nq do
    claim_from(ARGV[10 + q], tonumber(ARGV[10 + nq + q]) or count)
  end
  for q = 1, nq do
    if #claimed >= count then break end
    claim_from(ARGV[10 + q], count)
  end
end
for _, s in ipairs(skipped) do
  rcall("ZADD", queue_key(T, s[3], "available"), s[2], s[1])
  rcall("ZADD", queue_key(T, s[3], "suspects"), s[2], s[1])
end
for queue, n in pairs(claimed_per_queue) do
  local counts = prefix .. "queue:" .. queue .. ":counts"
  rcall("HINCRBY", counts, "available", -n)
  rcall("HINCRBY", counts, "active", n)
  count_stat(T, "started", queue, n)
  count_stat(T, "wait_ms", queue, waited_per_queue[queue])
end
return claimed
