--[[
  Fail one or more active jobs: requeue, schedule a retry, or discard (and dead-letter).

  State transitions:
    active -> available   verdict requeue (no backoff, attempt kept); outcome_lost (its handler
                          returned, the outcome was lost with its process: attempt kept; after
                          2 x `lost_cap` of these and worker_lost_shared, dead-lettered instead);
                          release (a draining worker hands the job back: the attempt is given
                          back too); lease_expired with attempts left; worker_lost with attempts
                          left and fewer than `lost_cap` losses (a job that keeps killing its
                          worker is dead-lettered); worker_lost_shared (attempt kept: it did
                          start; no loss counted, and never exhausted by it, so `attempt` may
                          pass max_attempts this way).
                          A requeue and a worker_lost join the end of the job's priority band in
                          its queue (a tenant's job: its tenant's next turn, lib.lua); every other
                          way here puts it at the head (TO_FRONT), a tenant's job too: its turn
                          gave it nothing.
    active -> retryable   verdict retry (or timed_out, the reaper's) with attempts left; due at
                          now + backoff
    active -> discarded   verdict discard (never dead-lettered), dead_letter (always), or
                          nonretryable / retry / lease_expired once attempts are spent (dead-lettered
                          when the job's on_exhaustion is dead_letter)
  The reaper's verdicts (lease_expired, timed_out) also need the job's deadline, its `active`
  score, to have passed still: a lease renewed after the reaper listed the job is left alone
  (status 3).
  Pre-conditions (per job; a failing job does not stop the others):
    - the job exists                                   else status 1
    - state = active                                   else status 2 (conflict), but status 0
      when this very failure is found applied already (a re-sent nack whose first reply was
      lost): the claim given is still the job's, and either the verdict was release and the
      attempt was given back, or the error recorded is this one
    - the claim matches: the fencing token (when given) is the job's current `claim`; the
      worker id and the attempt, when both sides know them     else status 3 (stale claim)
  The caller decides the verdict from the error (handler codes, retryable flag,
  non_retryable_errors); this script owns everything that depends on the job's stored state.

  Process deaths. worker_lost: the job's handler ran alone in its process when the process died;
  the loss is the job's own and counts (`lost`). worker_lost_shared: it ran beside other jobs; any
  of them may have caused the death, so no loss is counted (its attempt, a start, stays). Either
  way the job becomes a suspect (field `suspect`, indexed in queue:<q>:suspects): fetch.lua gives
  a suspect only to an idle pool, which runs it alone, so only deaths it alone can have caused
  reach the cap. A suspect that ends its attempt with an outcome of its own (retry,
  nonretryable, discard, dead_letter) is cleared.

  KEYS[1] prefix (derived keys: queue:<q>:available|counts|dlq|suspects, worker-jobs:<id>,
                 unique:<fp>, and the fixed keys active, delayed, expiring, dlq, events, outbox)
  KEYS[2..] job:<id> of each job, in ARGV order

  ARGV[1] now_ms
  ARGV[2] events_maxlen   0 disables events
  ARGV[3] lost_cap        worker losses after which a job is dead-lettered
  then per job (8 values): verdict, error JSON object|"", worker_id|"", attempt|"", claim token|"",
                           jitter factor in [0.5, 1.5) (used only when the policy has jitter),
                           delay_ms|"" (a handler's own retry delay, instead of the backoff),
                           min_delay_ms|"" (a floor under a retry's delay, whichever it is: a
                           handler stuck past its timeout still runs until its process ends, and
                           its retry must not start beside it)

  Returns: one entry per job: {status, state, attempt, max_attempts, retry_delay_ms, next_attempt_ms,
           workflow (1 when the job's workflow was queued for advance.lua)}
]]
local T = context(KEYS[1], ARGV[1], ARGV[2])
local prefix, now = T.prefix, T.now_ms
local lost_cap = tonumber(ARGV[3])
local HISTORY = 20

-- A job hash holds only the retry fields that differ from the default policy: D has the rest.
local function backoff_ms(p, attempt, jitter_factor)
  local initial = tonumber(p[1] or D.r_initial_ms)
  local coef = tonumber(p[2] or D.r_coef)
  local max_ms = tonumber(p[3] or D.r_max_ms)
  local strategy = p[4] or D.r_strategy
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
  if (p[5] or D.r_jitter) == "1" then
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
  local h = rcall("HMGET", job_key, "worker_id", "rl_key")
  local holder = h[1]
  if holder then rcall("SREM", prefix .. "worker-jobs:" .. holder, id) end
  rl_leave(T, id, h[2], queue)
  rcall("ZREM", T.active, id)
  rcall("HDEL", job_key, "visible_until", "exec_deadline")
  move_count(T, queue, "active", to_state)
end

-- The jobs of this call that go back to the head of their band, one group per band in the order
-- first seen: placed together at the end (index_available_first), so that they keep the order
-- they were given in (one by one, each before the last, they would come back in reverse).
local firsts, first_of_band = {}, {}

local function to_available(job_key, id, f)
  leave_active(job_key, id, f.queue, "available")
  keep_expiry(T, job_key, id)
  rcall("HSET", job_key, "state", "available", "enqueued_at", T.now)
  rcall("HDEL", job_key, "started_at", "worker_id")
  if f.front then
    local band = f.queue .. "\0" .. f.priority
    local group = first_of_band[band]
    if not group then
      group = {queue = f.queue, priority = f.priority, ids = {}}
      first_of_band[band] = group
      firsts[#firsts + 1] = group
    end
    group.ids[#group.ids + 1] = id
  else
    index_available(T, id, f.queue, f.priority, f.tenant)
  end
  return {S.OK, "available", f.attempt, f.max_attempts, "", "", 0}
end

local function to_discarded(job_key, id, f, dead_letter, last_error)
  leave_active(job_key, id, f.queue, "discarded")
  rcall("ZREM", T.expiring, id)
  rcall("HSET", job_key, "state", "discarded", "discarded_at", T.now, "completed_at", T.now)
  index_ended(T, id, f.queue, "discarded")
  count_stat(T, "discarded", f.queue, 1)
  if dead_letter then
    dead_letter_add(T, id, f.queue)
    rcall("HSET", job_key, "dead_lettered", "1")
  end
  emit(T, "job.discarded", id, {job_id = id, job_type = f.type, queue = f.queue, state = "discarded",
    total_attempts = f.attempt, dead_letter = dead_letter, last_error = last_error})
  return {S.OK, "discarded", f.attempt, f.max_attempts, "", "", on_end(T, job_key, id, "discarded")}
end

local function to_retryable(job_key, id, f, jitter_factor, delay_override, min_delay)
  local delay = delay_override
  if not delay then
    local policy = rcall("HMGET", job_key, "r_initial_ms", "r_coef", "r_max_ms", "r_strategy", "r_jitter")
    delay = backoff_ms(policy, f.attempt, jitter_factor)
  end
  if min_delay and delay < min_delay then delay = min_delay end
  local due = now + delay
  leave_active(job_key, id, f.queue, "retryable")
  keep_expiry(T, job_key, id)
  rcall("HSET", job_key, "state", "retryable", "retry_delay_ms", delay, "next_attempt_at", due)
  rcall("ZADD", T.delayed, due, id)
  emit(T, "job.retrying", id, {job_id = id, job_type = f.type, queue = f.queue, state = "retryable",
    attempt = f.attempt, max_attempts = f.max_attempts, next_retry_at = due, retry_delay_ms = delay})
  return {S.OK, "retryable", f.attempt, f.max_attempts, delay, due, 0}
end

-- A suspect waits in the available set like any job (fetch.lua skips it), and in the queue's
-- suspects index, where an idle pool finds it.
local function index_suspect(job_key, id, queue)
  rcall("HSET", job_key, "suspect", "1")
  local score = rcall("ZSCORE", queue_key(T, queue, "available"), id)
  rcall("ZADD", queue_key(T, queue, "suspects"), score, id)
end

-- Dynamic rate limiting: a handler that reports its downstream's limit (the error's
-- rate_limit_until) stops its job's key until then, for every job of that key.
local function pause_key(job_key, id, decoded)
  local key = rcall("HGET", job_key, "rl_key")
  local until_ms = tonumber(decoded.rate_limit_until_ms)
  if not key or not until_ms or until_ms <= now then return end
  local hash = prefix .. "rl:" .. key
  if until_ms > (tonumber(rcall("HGET", hash, "until")) or 0) then
    rcall("HSET", hash, "until", string.format("%d", until_ms))
    emit(T, "rate_limit.dynamic_adjusted", key, {key = key, ["until"] = decoded.rate_limit_until,
      reason = decoded.message, job_id = id})
  end
end

local OWN_OUTCOME = {retry = true, nonretryable = true, discard = true, dead_letter = true}
-- Hand-backs through no doing of the job's own: it had waited its turn already and was taken, so
-- it goes back to the head of its band, not behind the whole backlog (a worker's death must not
-- delay its jobs by a queue's length; a lapsed lease is how a vanished host's jobs come back).
-- Its own outcomes join the end: a requeue a worker asks for (a job that keeps requeueing
-- itself cannot starve the others), and worker_lost, a process it alone can have killed.
local TO_FRONT = {release = true, lease_expired = true, worker_lost_shared = true, outcome_lost = true}
-- The reaper's verdicts: they hold only while the job's deadline (its active score) has passed.
local REAPED = {lease_expired = true, timed_out = true}

-- A failure of this claim applied already (see the pre-conditions); r is the HMGET below.
local function applied_already(job_key, r, verdict, err, guard, token)
  if token == "" or token ~= r[10] or r[1] == "active" then return false end
  if verdict == "release" then
    return r[1] == "available" and guard ~= "" and tonumber(r[3]) == tonumber(guard) - 1
  end
  return err ~= "" and rcall("HGET", job_key, "error") == '{"attempt":' .. r[3] .. ',' .. string.sub(err, 2)
end

local out = {}
local suspects = {}  -- {job key, id, queue} of the jobs that become suspects
for j = 2, #KEYS do
  local job_key = KEYS[j]
  local a = 4 + (j - 2) * 8
  local verdict, err, worker_id, guard, token = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local jitter_factor = tonumber(ARGV[a + 5]) or 1
  local delay_override = tonumber(ARGV[a + 6])
  local min_delay = tonumber(ARGV[a + 7])
  local r = rcall("HMGET", job_key, "state", "worker_id", "attempt", "queue", "type", "priority",
    "max_attempts", "on_exhaustion", "id", "claim", "suspect", "tenant")
  if not r[1] then
    out[#out + 1] = {S.NOT_FOUND, "", "", "", "", "", 0}
  elseif applied_already(job_key, r, verdict, err, guard, token) then
    local later = rcall("HMGET", job_key, "retry_delay_ms", "next_attempt_at")
    if r[1] ~= "retryable" then later = {"", ""} end
    out[#out + 1] = {S.OK, r[1], r[3], r[7] or D.max_attempts, later[1] or "", later[2] or "", 0}
  elseif r[1] ~= "active" then
    out[#out + 1] = {S.CONFLICT, r[1], "", "", "", "", 0}
  elseif (token ~= "" and token ~= r[10]) or (worker_id ~= "" and r[2] and r[2] ~= worker_id)
      or (guard ~= "" and guard ~= r[3]) then
    out[#out + 1] = {S.STALE_CLAIM, r[1], "", "", "", "", 0}
  elseif REAPED[verdict] and (tonumber(rcall("ZSCORE", T.active, r[9])) or now + 1) > now then
    -- The reaper read this job as overdue, then its worker renewed the lease (a heartbeat
    -- between the listing and this call): the claim is alive, and is left to run.
    out[#out + 1] = {S.STALE_CLAIM, r[1], "", "", "", "", 0}
  else
    if verdict == "timed_out" then verdict = "retry" end
    local f = {attempt = tonumber(r[3]), queue = r[4], type = r[5], priority = tonumber(r[6]),
               max_attempts = tonumber(r[7] or D.max_attempts), dlq = (r[8] or D.on_exhaustion) == "dead_letter",
               tenant = r[12], front = TO_FRONT[verdict]}
    local id = r[9]
    record_error(job_key, err, f.attempt)
    local last_error = nil
    if err ~= "" then
      local ok, decoded = pcall(cjson.decode, err)
      if ok then last_error = {code = decoded.code, message = decoded.message, type = decoded.type} end
      if ok and decoded.rate_limit_until_ms then pause_key(job_key, id, decoded) end
      emit(T, "job.failed", id, {job_id = id, job_type = f.type, queue = f.queue, attempt = f.attempt,
        error = last_error})
      count_stat(T, "failed", f.queue, 1)
    end
    local exhausted = f.attempt >= f.max_attempts
    local suspect = r[11] ~= false
    if verdict == "worker_lost" then
      suspect = true
      local lost = rcall("HINCRBY", job_key, "lost", 1)
      if lost >= lost_cap then verdict = "dead_letter" else verdict = "lease_expired" end
    elseif verdict == "worker_lost_shared" then
      suspect = true
      -- Someone else's crash may have ended this run: no loss of its own, and never exhausted
      -- by it. A backstop all the same: a job lost beside others twice the cap times (it never
      -- got to run alone) is dead-lettered rather than re-run for ever.
      if rcall("HINCRBY", job_key, "shared_lost", 1) >= 2 * lost_cap then
        verdict = "dead_letter"
      else
        verdict = "requeue"
      end
    elseif verdict == "outcome_lost" then
      -- Its handler had returned: whatever killed the process, the run was done. The same
      -- backstop: a job whose outcome keeps dying with its process is dead-lettered, not re-run
      -- for ever.
      if rcall("HINCRBY", job_key, "shared_lost", 1) >= 2 * lost_cap then verdict = "dead_letter" end
    elseif suspect and OWN_OUTCOME[verdict] then
      suspect = false
      rcall("HDEL", job_key, "suspect")
    end
    if verdict == "release" then
      f.attempt = rcall("HINCRBY", job_key, "attempt", -1)
      out[#out + 1] = to_available(job_key, id, f)
    elseif verdict == "requeue" or verdict == "outcome_lost" or (verdict == "lease_expired" and not exhausted) then
      out[#out + 1] = to_available(job_key, id, f)
    elseif verdict == "discard" then
      out[#out + 1] = to_discarded(job_key, id, f, false, last_error)
    elseif verdict == "dead_letter" then
      out[#out + 1] = to_discarded(job_key, id, f, true, last_error)
    elseif verdict == "retry" and not exhausted then
      out[#out + 1] = to_retryable(job_key, id, f, jitter_factor, delay_override, min_delay)
    else
      out[#out + 1] = to_discarded(job_key, id, f, f.dlq, last_error)
    end
    if suspect and out[#out][2] == "available" then suspects[#suspects + 1] = {job_key, id, f.queue} end
  end
end
for _, group in ipairs(firsts) do
  index_available_first(T, group.queue, group.priority, group.ids)
end
for _, s in ipairs(suspects) do  -- once every job has its place: the index copies its score
  index_suspect(s[1], s[2], s[3])
end
return out
