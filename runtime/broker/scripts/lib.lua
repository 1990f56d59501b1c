--[[
  The pieces every transition shares, defined once. The loader (runtime/broker/scripts.py) puts
  this file at the top of the one function library, after two generated tables:

    S  status codes (runtime.broker.scripts.Status): S.OK, S.NOT_FOUND, S.CONFLICT, ...
    K  key suffixes (runtime.broker.keys.SUFFIXES): the fixed keys of a namespace

  then each transition file as the body of `function(KEYS, ARGV)`. A transition makes its
  context once, `local T = context(KEYS[1], ARGV[1], ARGV[2])`, and passes it to the helpers.
]]
-- redis.call does not exist while a library loads: each function sets this first (see the
-- loader), and the helpers below see it as an upvalue.
local rcall

-- Every fixed key of the namespace (T.active, T.events, ...), now (ms, as given and as a
-- number) and the event cap. A key's name is made the first time a call uses it: making all of
-- them on every call cost more than some short transitions' own work.
local CONTEXT = {__index = function(T, name)
  local suffix = K[name]
  if suffix == nil then return nil end
  local key = rawget(T, "prefix") .. suffix
  rawset(T, name, key)
  return key
end}

local function context(prefix, now, maxlen)
  return setmetatable({prefix = prefix, now = now, now_ms = tonumber(now), maxlen = tonumber(maxlen) or 0},
    CONTEXT)
end

local function job_key(T, id) return T.prefix .. "job:" .. id end
local function queue_key(T, queue, part) return T.prefix .. "queue:" .. queue .. ":" .. part end

-- A number for redis.call, formatted here: Redis formats a Lua number argument with %.17g, which
-- costs more than string.format's %d. For an integer below 1e15 (every time in ms, attempt and
-- count these scripts pass) both give the same digits; anything else (a fraction, -0) is left
-- to Redis.
local function int_arg(x)
  if x == math.floor(x) and x > -1e15 and x < 1e15 and (x ~= 0 or 1 / x > 0) then
    return string.format("%d", x)
  end
  return x
end

-- Lifecycle event (capped stream); maxlen 0 disables events.
local function emit(T, etype, subject, data)
  if T.maxlen > 0 then
    local maxlen = T.maxlen_arg
    if not maxlen then
      maxlen = int_arg(T.maxlen)
      T.maxlen_arg = maxlen  -- once per call: a call emits one event per job or more
    end
    rcall("XADD", T.events, "MAXLEN", "~", maxlen, "*",
      "type", etype, "subject", subject, "time", T.now, "data", cjson.encode(data))
  end
end

-- The available-set score: higher priority first, then FIFO by enqueue sequence. Each priority
-- is a band of BAND scores.
local BAND = 1e13
local function queue_score(priority, seq)
  return string.format("%.0f", (100 - priority) * BAND + seq)
end

-- The sequence number of the first job of a priority band, nil when the band is empty.
local function band_head(T, queue, priority)
  local low = (100 - priority) * BAND
  local head = rcall("ZRANGEBYSCORE", queue_key(T, queue, "available"), string.format("%.0f", low),
    "(" .. string.format("%.0f", low + BAND), "WITHSCORES", "LIMIT", 0, 1)
  if head[2] then return tonumber(head[2]) - low end
  return nil
end

-- Per-minute statistics, the admin API's history: one hash per minute (stats:m:<minute ms>),
-- field <metric>:<queue>, written by the transition itself (no round trip of its own). The
-- scheduler's rollup (stats_rollup.lua) adds each closed minute into its hour's hash and gives
-- both their retention.
local STATS_FIRST_TTL_MS = 172800000  -- until the rollup sets the retention: no key lives for ever
local function count_stat(T, metric, queue, n)
  local minute = T.now_ms - T.now_ms % 60000
  local key = T.prefix .. "stats:m:" .. string.format("%d", minute)
  if rcall("HINCRBY", key, metric .. ":" .. queue, int_arg(n)) == n then  -- a new field, maybe a new key
    rcall("PEXPIREAT", key, string.format("%d", minute + STATS_FIRST_TTL_MS), "NX")
  end
end

local function move_count(T, queue, from, to)
  local counts = queue_key(T, queue, "counts")
  if from then rcall("HINCRBY", counts, from, -1) end
  if to then rcall("HINCRBY", counts, to, 1) end
end

-- Fair selection between the tenants of one queue (runtime/broker/tenants.py): start-time fair
-- queuing on the available set itself. A tenant's job takes, in place of the global sequence,
-- the tag max(V, last) + 1 where V is the sequence part of the head of its priority band
-- (nothing queued there: the band's highest tag so far, or the global sequence if larger) and
-- last the tenant's previous tag in that band (queue:<q>:tenant-tags, field <priority>|<tenant>;
-- field *<priority> holds the band's highest tag). A tenant with a deep backlog holds tags far
-- ahead, one arriving later starts at the head: they interleave. The priority part of the score
-- still comes first. `tags` caches what one call read and wrote; save_tags writes it back.
local function new_tags() return {v = {}, last = {}, dirty = {}} end

-- `own`: how many of the tenant's unfinished jobs are this call's own (the jobs being placed,
-- already counted in tenant-jobs:<t>).
local function next_tag(T, tags, queue, priority, tenant, own)
  local band = queue .. "\0" .. priority
  local tags_key = queue_key(T, queue, "tenant-tags")
  local v = tags.v[band]
  if not v then
    v = band_head(T, queue, priority)
    if not v then  -- an empty band: every tenant of it starts afresh, none behind a tag handed out earlier
      v = math.max(tonumber(rcall("GET", T.seq)) or 0, tonumber(rcall("HGET", tags_key, "*" .. priority)) or 0)
    end
    tags.v[band] = v
  end
  local field = priority .. "|" .. tenant
  local last = tags.last[queue .. "\0" .. field]
  if last == nil then
    last = tonumber(rcall("HGET", tags_key, field)) or 0
    -- A tenant with no unfinished job left (but this call's) starts afresh: its tags ahead of
    -- the head belong to jobs that left without being claimed (a cancelled or purged backlog),
    -- and would put its next job behind the others' backlogs for turns it never had. (With
    -- jobs left, its tags stay, so its own jobs keep their order.)
    if last > v and rcall("SCARD", T.prefix .. "tenant-jobs:" .. tenant) <= own then last = v end
  end
  local tag = math.max(v, last) + 1
  tags.last[queue .. "\0" .. field] = tag
  local entry = tags.dirty[tags_key] or {}
  tags.dirty[tags_key] = entry
  entry[field] = tag
  if tag > (entry["*" .. priority] or 0) then entry["*" .. priority] = tag end
  return tag
end

local function save_tags(T, tags)
  for tags_key, entry in pairs(tags.dirty) do
    local args = {}
    for field, tag in pairs(entry) do
      if string.sub(field, 1, 1) == "*" then
        local stored = tonumber(rcall("HGET", tags_key, field)) or 0
        if stored > tag then tag = stored end
      end
      args[#args + 1] = field
      args[#args + 1] = string.format("%.0f", tag)
    end
    rcall("HSET", tags_key, unpack(args))
  end
end

-- Index a job in its queue's available set and wake the idle workers of that queue. A tenant's
-- job (a retry, a requeue, a workflow step, a promoted job) is tagged anew, like an enqueue: it
-- joins the end of its tenant's share, so failures earn a tenant no extra turns.
local function index_available(T, id, queue, priority, tenant)
  local seq
  if tenant then
    local tags = new_tags()
    seq = next_tag(T, tags, queue, priority, tenant, 1)
    save_tags(T, tags)
  else
    seq = rcall("INCR", T.seq)
  end
  rcall("ZADD", queue_key(T, queue, "available"), queue_score(priority, seq), id)
  rcall("PUBLISH", T.prefix .. "notify:" .. queue, "1")
end

-- Index jobs at the head of their priority band, in the order given, and wake the
-- queue's idle workers: jobs handed back through no doing of their own (see nack.lua). They go
-- before the band's first job, never below sequence number 0 (equal scores fall back to id
-- order); in an empty band they are numbered in turn, as enqueues would be.
local function index_available_first(T, queue, priority, ids)
  local head = band_head(T, queue, priority)
  local key = queue_key(T, queue, "available")
  for i, id in ipairs(ids) do
    local seq
    if head then seq = math.max(0, head - #ids + i - 1) else seq = rcall("INCR", T.seq) end
    rcall("ZADD", key, queue_score(priority, seq), id)
  end
  rcall("PUBLISH", T.prefix .. "notify:" .. queue, "1")
end

local TERMINAL = {completed = true, cancelled = true, discarded = true}

-- The ended-job indexes, queue:<q>:completed|cancelled|discarded, scored by the time the job
-- reached that state: the admin listing, purge and retention read these, never a scan of all
-- jobs. Every way into a terminal state adds the job; every way out (retry, delete) removes it.
local function index_ended(T, id, queue, state)
  rcall("ZADD", queue_key(T, queue, state), T.now, id)
end

local function unindex_ended(T, id, queue, state)
  if TERMINAL[state] then rcall("ZREM", queue_key(T, queue, state), id) end
end

local function in_csv(csv, value)
  return string.find("," .. (csv or "") .. ",", "," .. value .. ",", 1, true) ~= nil
end

-- A job has reached `state`: release its unique lock unless the policy still counts that state,
-- and queue its workflow (if any) for the advance step (the outbox is written in this same
-- atomic step). Returns 1 when the workflow was queued.
local function release_unique(T, id, fingerprint, states, state)
  if fingerprint and not in_csv(states, state) then
    local lock = T.prefix .. "unique:" .. fingerprint
    if rcall("GET", lock) == id then rcall("DEL", lock) end
  end
end

-- An epoch-ms time as RFC 3339 in UTC with milliseconds (timefmt.format_ms's form), for the
-- times a script sets itself (days to civil date: the proleptic Gregorian calendar).
local function iso_ms(ms)
  ms = math.floor(ms)
  local s = math.floor(ms / 1000)
  local days = math.floor(s / 86400)
  local rem = s - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format("%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", y, m, d, math.floor(rem / 3600),
    math.floor(rem % 3600 / 60), rem % 60, ms % 1000)
end

-- Keyed rate limits (runtime/broker/rate_limits.py): a job of key `rl_key` left `active`, so its
-- concurrency slot is free; when a fetch found the key at its limit, the idle workers of every
-- queue whose jobs it held (the key's `blocked`, fetch.lua rl_hold) are woken to claim what
-- waits. A job cancelled while running keeps its slot: its run may go on until its worker hears
-- of the cancel, at the latest until cancelled_run_until, and the fetch that finds the key full
-- frees the slot after that (heal in fetch.lua).
local function rl_leave(T, id, rl_key, queue)
  if not rl_key then return end
  if rcall("SREM", T.prefix .. "rl-active:" .. rl_key, id) == 1 then
    local blocked = rcall("HGET", T.prefix .. "rl:" .. rl_key, "blocked")
    if blocked == "1" then  -- as an earlier version wrote it: no queue named
      rcall("PUBLISH", T.prefix .. "notify:" .. queue, "1")
    elseif blocked then
      for held_in in string.gmatch(blocked, "%S+") do rcall("PUBLISH", T.prefix .. "notify:" .. held_in, "1") end
    end
  end
end

-- A job ended (`state`): it leaves its rate-limit key's and its tenant's unfinished jobs, and
-- its tenant counts it as ended.
local function end_partitions(T, id, rl_key, tenant, state)
  if rl_key then rcall("SREM", T.prefix .. "rl-jobs:" .. rl_key, id) end
  if tenant then
    rcall("SREM", T.prefix .. "tenant-jobs:" .. tenant, id)
    rcall("HINCRBY", T.prefix .. "tenant:" .. tenant, state, 1)
  end
end

local function on_end(T, key, id, state)
  local u = rcall("HMGET", key, "unique_key", "unique_states", "workflow_id", "rl_key", "tenant")
  release_unique(T, id, u[1], u[2], state)
  end_partitions(T, id, u[4], u[5], state)
  if u[3] then
    rcall("RPUSH", T.outbox, id)
    return 1
  end
  return 0
end

-- Take a job out of every index of a live state (available, delayed, active, expiring, its
-- holder's set) and clear the per-attempt deadlines.
local function unindex(T, key, id, queue, holder)
  rcall("ZREM", queue_key(T, queue, "available"), id)
  rcall("ZREM", queue_key(T, queue, "suspects"), id)
  rcall("ZREM", T.active, id)
  rcall("ZREM", T.delayed, id)
  rcall("ZREM", T.expiring, id)
  if holder then rcall("SREM", T.prefix .. "worker-jobs:" .. holder, id) end
  rcall("HDEL", key, "visible_until", "exec_deadline", "next_attempt_at")
end

-- Cancel a job in a live state (or `waiting`, a workflow step never indexed or counted).
-- Returns on_end's workflow flag.
local function cancel_job(T, key, id, state, reason)
  local f = rcall("HMGET", key, "queue", "type", "worker_id")
  -- A run cancelled while active goes on until its worker hears of it (its next heartbeat), at
  -- the latest until its lease or execution deadline: no retry puts the job back to work before.
  local run_until = state == "active" and rcall("ZSCORE", T.active, id)
  if state ~= "waiting" then
    unindex(T, key, id, f[1], f[3])
    move_count(T, f[1], state, "cancelled")
  else
    move_count(T, f[1], nil, "cancelled")
  end
  rcall("HSET", key, "state", "cancelled", "cancelled_at", T.now, "previous_state", state)
  if run_until then rcall("HSET", key, "cancelled_run_until", run_until) end
  index_ended(T, id, f[1], "cancelled")
  count_stat(T, "cancelled", f[1], 1)
  emit(T, "job.cancelled", id, {job_id = id, job_type = f[2], queue = f[1], state = "cancelled",
    previous_state = state, reason = reason})
  return on_end(T, key, id, "cancelled")
end

local EXPIRABLE = {available = true, scheduled = true, retryable = true, pending = true}

-- TTL passed: the job never starts. An active job is left alone (it started in time); a job
-- handed back keeps its `expiring` entry, so it cannot start again after its expiry.
local function expire_job(T, id, now_iso)
  local key = job_key(T, id)
  local f = rcall("HMGET", key, "state", "queue", "type", "created_at", "expires_ms")
  if not EXPIRABLE[f[1]] then return end
  unindex(T, key, id, f[2], nil)
  local err = cjson.encode({code = "expired", type = "expired", retryable = false,
    message = "Job expired before it could start", occurred_at = now_iso, timestamp = now_iso})
  rcall("HSET", key, "state", "discarded", "discarded_at", T.now, "expired_at", T.now,
    "previous_state", f[1], "error", err)
  move_count(T, f[2], f[1], "discarded")
  index_ended(T, id, f[2], "discarded")
  count_stat(T, "discarded", f[2], 1)
  on_end(T, key, id, "discarded")
  emit(T, "job.expired", id, {job_id = id, job_type = f[3], queue = f[2], state = "discarded",
    created_at = tonumber(f[4]), expired_at = T.now_ms, ttl_ms = tonumber(f[5]) - tonumber(f[4])})
end

-- A job that leaves `active` for another live state keeps its expiry (claims drop it).
local function keep_expiry(T, key, id)
  local expires = rcall("HGET", key, "expires_ms")
  if expires then rcall("ZADD", T.expiring, expires, id) end
end

-- Dead letter set membership: the global set (oldest first) and one set per queue, so listing
-- one queue's dead letters reads only that queue's entries.
local function dead_letter_add(T, id, queue)
  rcall("ZADD", T.dlq, T.now, id)
  rcall("ZADD", queue_key(T, queue, "dlq"), T.now, id)
end

local function dead_letter_remove(T, id, queue)
  local removed = rcall("ZREM", T.dlq, id)
  if queue then rcall("ZREM", queue_key(T, queue, "dlq"), id) end
  return removed
end

-- The scheduler's two duties, `limit` due entries each: promote scheduled and retryable jobs
-- whose time has come, and expire jobs whose TTL passed. Run by the scheduler step and, lazily,
-- by every claim (a due job is claimable at once, not a scheduler interval later).
local function promote_due(T, limit)
  local promoted = 0
  for _, id in ipairs(rcall("ZRANGEBYSCORE", T.delayed, "-inf", int_arg(T.now_ms), "LIMIT", "0", int_arg(limit))) do
    rcall("ZREM", T.delayed, id)
    local key = job_key(T, id)
    local f = rcall("HMGET", key, "state", "queue", "priority", "tenant")
    if f[1] == "scheduled" or f[1] == "retryable" then
      rcall("HSET", key, "state", "available", "enqueued_at", T.now)
      rcall("HDEL", key, "next_attempt_at")
      move_count(T, f[2], f[1], "available")
      index_available(T, id, f[2], tonumber(f[3]), f[4])
      promoted = promoted + 1
    end
  end
  return promoted
end

local function expire_due(T, limit, now_iso)
  local due = rcall("ZRANGEBYSCORE", T.expiring, "-inf", int_arg(T.now_ms), "LIMIT", "0", int_arg(limit))
  for _, id in ipairs(due) do
    rcall("ZREM", T.expiring, id)
    expire_job(T, id, now_iso)
  end
  return #due
end
