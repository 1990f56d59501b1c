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
  Keyed rate limits (the job's rl_key, rl_policy; runtime/broker/rate_limits.py): a job its
  limit holds is skipped and the next one tried; on_limit wait leaves it available in its place,
  reschedule makes it scheduled (available -> scheduled, due when the limit should allow it),
  drop discards it (available -> discarded, error rate_limited). A queue's config max_active
  bounds its active jobs.
  Suspects (jobs that were running when their process died, see nack.lua) are skipped, and stay
  where they are; only an idle caller (`idle` = 1, or a worker that holds no job, or one without
  a worker id) gets one, first and alone: the call then claims that job and nothing else.

  KEYS[1] prefix (derived keys: job:<id>, queue:<q>:available|paused|counts|config|ratelog,
                 worker:<id>, worker-jobs:<id>, unique:<fp>, queue:<q>:suspects,
                 rl:<key>, rl-active:<key>, rl-starts:<key>, rl-jobs:<key>, claims and the
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
  ARGV[14+2N+2M+5V]   tenant ("" or absent: any): only that tenant's jobs are claimed (the
                      multi-tenancy extension's X-OJS-Tenant). Another tenant's job is held like
                      one its rate limit holds: left in its place, put back at the end of the
                      call. The held jobs share the RL_SCAN bound: once RL_SCAN jobs of other
                      tenants (or held by their rate limits) were passed over in a queue, this
                      call looks no further in it (beyond one further look from a cursor), and
                      may claim fewer than `count` although the tenant has jobs deeper down. The
                      fair tags of enqueue.lua interleave the tenants, so a tenant's next job is
                      normally within a few entries per queued tenant of the head.
  ARGV[15+2N+2M+5V]   reply ("" or absent: full): "lean" for the reply a pool reads (below)

  Returns: an array with one entry per claimed job, in claim order: the job's flat HGETALL array;
           with reply "lean", the values (nil when absent) of the fields LEAN_FIELDS names, in
           that order (runtime/broker/claim_reply.py decodes it), followed by the flat HGETALL
           array when the hash holds what those fields cannot show (an error history, unknown
           fields: nerr or extra set).
]]
-- Built once, when the library loads (the part of this file above the per-call line): what
-- every call only reads. Building the two name maps in each call cost 44k instructions a call.

-- What a claim reads of its job. An absent field costs HMGET a scan of the whole hash, so two
-- fields are read only by the callers that use them: worker_id by an anonymous caller (whose
-- claim drops an earlier one), tenant by a tenant's fetch. (A lean claim reads them from the
-- whole hash: read_whole.) One layout per kind of caller, each with its map name -> position.
local CLAIM_BASE = {"state", "type", "visibility_timeout_ms", "timeout_ms", "expires_ms", "attempt",
  "exec_deadline", "progress", "progress_at", "suspect", "enqueued_at", "rl_key"}
-- (While the library loads, Redis offers no global functions, ipairs and unpack among them:
-- plain loops here.)
local function claim_layout(anonymous, by_tenant)
  local fields = {}
  for i = 1, #CLAIM_BASE do fields[i] = CLAIM_BASE[i] end
  local at_worker, at_tenant = nil, nil
  if anonymous then
    fields[#fields + 1] = "worker_id"
    at_worker = #fields
  end
  if by_tenant then
    fields[#fields + 1] = "tenant"
    at_tenant = #fields
  end
  local at = {}
  for i = 1, #fields do at[fields[i]] = i end
  return {fields = fields, at = at, at_worker = at_worker, at_tenant = at_tenant}
end
local CLAIM_LAYOUTS = {  -- [anonymous][by tenant]
  [true] = {[true] = claim_layout(true, true), [false] = claim_layout(true, false)},
  [false] = {[true] = claim_layout(false, true), [false] = claim_layout(false, false)},
}
-- The fields of a lean reply, in this order (runtime/broker/claim_reply.py's), and their map.
local LEAN_FIELDS = {"id", "queue", "args", "meta", "priority", "max_attempts", "retry", "tags", "created_at",
  "scheduled_at", "error", "nerr", "workflow_id", "parent_results", "version", "extra", "checkpoint", "wf_index",
  "step_traces", "state", "type", "attempt", "started_at", "claim", "visibility_timeout_ms", "timeout_ms",
  "enqueued_at", "suspect"}
local LEAN_AT = {}
for i = 1, #LEAN_FIELDS do LEAN_AT[LEAN_FIELDS[i]] = i end

---- per call ----
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
local nversions = tonumber(ARGV[13 + 2 * nq + 2 * nroom]) or 0
local tenant = ARGV[14 + 2 * nq + 2 * nroom + 5 * nversions]
if tenant == "" then tenant = nil end
local lean = ARGV[15 + 2 * nq + 2 * nroom + 5 * nversions] == "lean"
local layout = CLAIM_LAYOUTS[worker_id == ""][tenant ~= nil]
local CLAIM_FIELDS, CLAIM_AT, AT_WORKER, AT_TENANT = layout.fields, layout.at, layout.at_worker, layout.at_tenant

-- Maintenance mode (the admin API): nothing is claimed, anywhere; enqueues go on.
if rcall("EXISTS", T.maintenance) == 1 then return {} end

promote_due(T, tonumber(ARGV[7]))
expire_due(T, tonumber(ARGV[7]), ARGV[9])

local claimed_per_queue = {}
local waited_per_queue = {}  -- ms from enqueue (or promotion) to this claim, summed: the history's wait
local SKIPPED = {}  -- claim's answer for a suspect the caller may not run
local skipped = {}  -- {id, score, queue} of the suspects popped and skipped: put back at the end

-- Fencing tokens: one INCRBY per call reserves a block of tokens (an unused rest is simply
-- skipped), so every claim of every job gets a number no earlier claim had. The block starts no
-- lower than the caller's clock in microseconds: after a failover the promoted replica's counter
-- can be behind tokens the lost primary handed out, and the seconds a failover takes put the
-- clock past them. Tokens are formatted as integers (Lua's own number format would round them).
local next_token, last_token = 0, -1
local function new_token()
  if next_token > last_token then
    last_token = rcall("INCRBY", T.claims, int_arg(count))
    local floor = tonumber(ARGV[1]) * 1000 + count
    if last_token < floor then
      last_token = floor
      rcall("SET", T.claims, string.format("%.0f", floor))
    end
    next_token = last_token - count + 1
  end
  next_token = next_token + 1
  return string.format("%.0f", next_token - 1)
end

-- Keyed rate limits (runtime/broker/rate_limits.py). A job's own policy (rl_policy:
-- "concurrency,rate limit,rate window ms,throttle interval ms,on_limit") is checked against the
-- counters its key shares with every job of that key, here in the claim's own script: the check,
-- the claim and the count are one step. A job held by its limit stays where it is (put back in
-- its place at the end of the call, like a skipped suspect), and the next job is tried; at most
-- RL_SCAN held jobs per queue per call (held, rescheduled or dropped), so a long run of held
-- jobs costs a bounded scan.
local HELD = {}      -- claim's answer for a job its rate limit holds (on_limit wait)
local held = {}      -- {id, score, queue} of the held jobs: put back at the end
local held_in = {}   -- queue -> held jobs met by this call
local RL_SCAN = 256
local HEAL_EVERY_MS = 5000
local limiters = {}  -- key -> the key's counters, read once per call
local policies = {}  -- policy text -> parsed
local verdicts = {}  -- key .. policy -> why it is held (limits cannot loosen within one call)

local function policy_of(text)
  local p = policies[text]
  if p then return p end
  local c, rm, rw, th, on = string.match(text, "^([^,]*),([^,]*),([^,]*),([^,]*),([^,]*)$")
  p = {conc = tonumber(c), rate_max = tonumber(rm), rate_ms = tonumber(rw), throttle_ms = tonumber(th),
       on_limit = on or "wait"}
  policies[text] = p
  return p
end

local function limiter(key)
  local l = limiters[key]
  if l then return l end
  local hash = prefix .. "rl:" .. key
  local f = rcall("HMGET", hash, "ov_conc", "ov_until", "next_at", "until", "healed_at", "blocked", "ov_rate",
    "ov_rate_ms", "win")
  l = {key = key, hash = hash, active_key = prefix .. "rl-active:" .. key,
       starts_key = prefix .. "rl-starts:" .. key, next_at = tonumber(f[3]) or 0, until_ms = tonumber(f[4]) or 0,
       healed_at = tonumber(f[5]) or 0, blocked = f[6] ~= false, blocked_in = f[6] or "", win = tonumber(f[9])}
  if f[2] and tonumber(f[2]) > now then  -- an override (PUT /rate-limits/{key}) until ov_until
    l.ov_conc = tonumber(f[1])
    l.ov_rate, l.ov_rate_ms = tonumber(f[7]), tonumber(f[8])
  end
  l.active = rcall("SCARD", l.active_key)
  limiters[key] = l
  return l
end

-- The key is full: drop members that hold no slot any more, at most every HEAL_EVERY_MS: a job
-- cancelled while running whose run must be over (its cancelled_run_until passed; lib.lua
-- rl_leave), and any a missed release left (the set, unlike a counter, makes this possible).
local function heal(l)
  for _, jid in ipairs(rcall("SMEMBERS", l.active_key)) do
    local s = rcall("HMGET", prefix .. "job:" .. jid, "state", "rl_key", "cancelled_run_until")
    local running = s[1] == "active" or (s[1] == "cancelled" and (tonumber(s[3]) or 0) > now)
    if not running or s[2] ~= l.key then rcall("SREM", l.active_key, jid) end
  end
  l.healed_at = now
  rcall("HSET", l.hash, "healed_at", now)
  l.active = rcall("SCARD", l.active_key)
end

-- When a full key's slot may free (on_limit reschedule): a run usually ends well before its
-- lease, so not later than RESCHEDULE_MAX_MS from now, sooner when a lease of the key's running
-- jobs (the first few looked at) ends sooner; at least a second from now.
local RESCHEDULE_MAX_MS = 5000
local function slot_expected(l)
  local soonest = now + RESCHEDULE_MAX_MS
  for _, jid in ipairs(rcall("SRANDMEMBER", l.active_key, 16)) do
    local deadline = tonumber(rcall("ZSCORE", T.active, jid))
    if deadline and deadline < soonest then soonest = deadline end
  end
  return math.max(now + 1000, soonest)
end

-- The window that holds: an override's, else the job's own policy's (limit, ms; nil: none).
local function window_of(l, p)
  if l.ov_rate then return l.ov_rate, l.ov_rate_ms end
  return p.rate_max, p.rate_ms
end

-- nil when a job of policy p may start now; else the strategy that holds it, its limit, the
-- current count, and when it should allow a start (for on_limit reschedule).
local function held_by(l, p)
  if l.until_ms > now then return "dynamic", 0, 0, l.until_ms end
  local conc = p.conc
  if l.ov_conc and (not conc or l.ov_conc < conc) then conc = l.ov_conc end
  if conc and l.active >= conc and now - l.healed_at >= HEAL_EVERY_MS then heal(l) end
  if conc and l.active >= conc then return "concurrency", conc, l.active, slot_expected(l) end
  local rate_max, rate_ms = window_of(l, p)
  if rate_max then
    local started = rcall("ZCOUNT", l.starts_key, "(" .. (now - rate_ms), "+inf")
    if started >= rate_max then
      local first = rcall("ZRANGEBYSCORE", l.starts_key, "(" .. (now - rate_ms), "+inf", "WITHSCORES",
        "LIMIT", 0, 1)
      return "rate", rate_max, started, (tonumber(first[2]) or now) + rate_ms
    end
  end
  if p.throttle_ms and l.next_at > now then return "throttle", 1, 1, l.next_at end
  return nil
end

local function rl_admit(l, p, id, token)
  rcall("SADD", l.active_key, id)
  l.active = l.active + 1
  -- Every start of a key that has a window is logged (a job without a window of its own still
  -- counts against its neighbours' windows), kept for the key's longest window.
  local _, rate_ms = window_of(l, p)
  local keep = math.max(rate_ms or 0, l.win or 0)
  if keep > 0 then
    rcall("ZADD", l.starts_key, now, id .. ":" .. token)
    rcall("ZREMRANGEBYSCORE", l.starts_key, "-inf", now - keep)
    rcall("PEXPIRE", l.starts_key, keep)
  end
  if p.throttle_ms then
    l.next_at = now + p.throttle_ms
    rcall("HSET", l.hash, "next_at", l.next_at)
  end
  if l.blocked then
    l.blocked, l.blocked_in = false, ""
    rcall("HDEL", l.hash, "blocked")
    emit(T, "rate_limit.released", id, {key = l.key, job_id = id})
  end
end

-- The job's limit holds it: on_limit says what becomes of it. Returns HELD (it stays available,
-- put back in its place) or nil (it left the available set: rescheduled or dropped).
local function rl_hold(l, p, id, queue, job_type, strategy, limit, current, allowed_at, suspect)
  local verdict_key = l.key .. "|" .. strategy
  if not verdicts[verdict_key] then
    verdicts[verdict_key] = true
    emit(T, "rate_limit.exceeded", l.key, {key = l.key, strategy = strategy, limit = limit, current = current})
  end
  -- `blocked` names the queues whose jobs the key holds (lib.lua rl_leave wakes each of them
  -- when a slot frees); "1", as an earlier version wrote it, names none.
  l.blocked = true
  if not string.find(" " .. l.blocked_in .. " ", " " .. queue .. " ", 1, true) then
    l.blocked_in = (l.blocked_in == "" or l.blocked_in == "1") and queue or (l.blocked_in .. " " .. queue)
    rcall("HSET", l.hash, "blocked", l.blocked_in)
  end
  local job_key = prefix .. "job:" .. id
  held_in[queue] = (held_in[queue] or 0) + 1  -- held, rescheduled or dropped: the scan's bound
  if suspect then return HELD end
  if p.on_limit == "reschedule" then
    rcall("HSET", job_key, "state", "scheduled", "next_attempt_at", allowed_at, "scheduled_at", iso_ms(allowed_at))
    rcall("HDEL", job_key, "enqueued_at")
    rcall("ZADD", T.delayed, allowed_at, id)
    move_count(T, queue, "available", "scheduled")
    emit(T, "job.scheduled", id, {job_id = id, job_type = job_type, queue = queue, state = "scheduled",
      scheduled_at = allowed_at, reason = "rate_limited"})
    return nil
  elseif p.on_limit == "drop" then
    unindex(T, job_key, id, queue, nil)
    local err = cjson.encode({code = "rate_limited", type = "rate_limited", retryable = false,
      message = "Dropped by its rate limit '" .. l.key .. "' (" .. strategy .. ")", occurred_at = ARGV[9],
      timestamp = ARGV[9]})
    rcall("HSET", job_key, "state", "discarded", "discarded_at", now, "previous_state", "available", "error", err)
    move_count(T, queue, "available", "discarded")
    index_ended(T, id, queue, "discarded")
    count_stat(T, "discarded", queue, 1)
    on_end(T, job_key, id, "discarded")
    emit(T, "rate_limit.dropped", id, {key = l.key, job_id = id, job_type = job_type})
    emit(T, "job.discarded", id, {job_id = id, job_type = job_type, queue = queue, state = "discarded",
      total_attempts = 0, last_error = {code = "rate_limited", message = "Dropped by its rate limit"}})
    return nil
  end
  return HELD
end

-- A lean claim reads its job's whole hash once, for the claim's checks and for the reply (an
-- HMGET of the fields a pool reads costs more: each absent one is a scan of the whole hash). One
-- pass over it fills the claim's fields (CLAIM_FIELDS order) and the reply's (LEAN_FIELDS order),
-- false where absent; a table by name would cost more than the pass.
-- The two tables are written out at their sizes (14: CLAIM_FIELDS at its longest, 28: LEAN_FIELDS),
-- which measured 6k instructions a job cheaper than making them from a template.
if lean and #LEAN_FIELDS ~= 28 then error("fetch.lua: the lean reply's table is not the size of LEAN_FIELDS") end
local function read_whole(job_key)
  local f = {false, false, false, false, false, false, false, false, false, false, false, false, false, false}
  local r = {false, false, false, false, false, false, false, false, false, false, false, false, false, false,
             false, false, false, false, false, false, false, false, false, false, false, false, false, false}
  local all = rcall("HGETALL", job_key)
  for i = 1, #all, 2 do
    local name = all[i]
    local at = CLAIM_AT[name]
    if at then f[at] = all[i + 1] end
    at = LEAN_AT[name]
    if at then r[at] = all[i + 1] end
  end
  return f, r
end

-- The lean reply of a claimed job: what read_whole found (r), with the claim's writes applied.
local function lean_reply(job_key, r, set, drop)
  if r[LEAN_AT.nerr] or r[LEAN_AT.extra] then  -- what these fields cannot show: the whole hash follows
    for _, v in ipairs(rcall("HGETALL", job_key)) do r[#r + 1] = v end
  end
  for i = 1, #set, 2 do
    local at = LEAN_AT[set[i]]
    if at then
      -- A value left for Redis to format (not an integer) is read back as Redis wrote it.
      r[at] = type(set[i + 1]) == "string" and set[i + 1] or rcall("HGET", job_key, set[i])
    end
  end
  for _, name in ipairs(drop) do
    local at = LEAN_AT[name]
    if at then r[at] = false end
  end
  return r
end

local function claim(id, queue, alone)
  local job_key = prefix .. "job:" .. id
  local f, r
  if lean then
    f, r = read_whole(job_key)
  else
    f = rcall("HMGET", job_key, unpack(CLAIM_FIELDS))
  end
  if f[1] ~= "available" then
    return nil -- a stale index entry (the job was flushed or moved): drop it
  end
  if tenant and f[AT_TENANT] ~= tenant then
    held_in[queue] = (held_in[queue] or 0) + 1  -- the scan's bound, as for rate-limit holds
    return HELD  -- another tenant's job: before any check with an effect (expiry, rate limits)
  end
  if f[10] and not alone then
    return SKIPPED
  end
  if f[5] and tonumber(f[5]) <= now then
    -- Past its TTL but not yet reached by expire_due (more were due than one step handles).
    expire_job(T, id, ARGV[9])
    return nil
  end
  local l, p
  if f[12] then
    -- The policy is read only for a job that has a key: the common claim reads one field more.
    l, p = limiter(f[12]), policy_of(rcall("HGET", job_key, "rl_policy") or ",,,,wait")
    local strategy, limit, current, allowed_at = held_by(l, p)
    if strategy then
      -- A suspect stays in its two indexes whatever its on_limit says (it must still run alone).
      return rl_hold(l, p, id, queue, f[2], strategy, limit, current, allowed_at, f[10] ~= false)
    end
  end
  local vis = tonumber(f[3]) or request_vis or default_vis
  local visible_until = now + vis
  local deadline = visible_until
  -- One HSET (attempt included) and, only when an earlier attempt left something, one HDEL.
  local attempt = (tonumber(f[6]) or 0) + 1
  local attempt_arg = int_arg(attempt)
  local set = {"state", "active", "started_at", ARGV[1], "visible_until", int_arg(visible_until),
               "attempt", attempt_arg, "claim", new_token()}
  local drop = {}
  if f[8] or f[9] then  -- the previous attempt's progress
    drop = {"progress", "progress_message", "progress_data", "progress_at"}
  end
  if worker_id ~= "" then
    set[#set + 1] = "worker_id"
    set[#set + 1] = worker_id
    rcall("SADD", prefix .. "worker-jobs:" .. worker_id, id)
  elseif f[AT_WORKER] then
    drop[#drop + 1] = "worker_id"
  end
  local timeout = tonumber(f[4])
  if timeout then
    local exec_deadline = now + timeout + exec_grace
    set[#set + 1] = "exec_deadline"
    set[#set + 1] = int_arg(exec_deadline)
    if exec_deadline < deadline then deadline = exec_deadline end
  elseif f[7] then
    drop[#drop + 1] = "exec_deadline"
  end
  if l then rl_admit(l, p, id, set[10]) end
  rcall("HSET", job_key, unpack(set))
  if #drop > 0 then rcall("HDEL", job_key, unpack(drop)) end
  rcall("ZADD", T.active, int_arg(deadline), id)
  claimed_per_queue[queue] = (claimed_per_queue[queue] or 0) + 1
  waited_per_queue[queue] = (waited_per_queue[queue] or 0) + math.max(0, now - (tonumber(f[11]) or now))
  emit(T, "job.started", id, {job_id = id, job_type = f[2], queue = queue, state = "active",
    worker_id = worker_id, attempt = attempt})
  if lean then return lean_reply(job_key, r, set, drop) end
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
-- A queue's concurrency (config max_active): at most that many of its jobs active at once, read
-- from its exact per-state counts (this call's claims are counted at its end, so added here).
local function rate_budget(queue)
  local cfg = rcall("HMGET", prefix .. "queue:" .. queue .. ":config", "rl_max", "rl_window_ms", "max_active")
  local budget = nil
  local max_active = tonumber(cfg[3])
  if max_active then
    local active = tonumber(rcall("HGET", prefix .. "queue:" .. queue .. ":counts", "active")) or 0
    budget = math.max(0, max_active - active - (claimed_per_queue[queue] or 0))
  end
  local max = tonumber(cfg[1])
  if not max then return budget end
  local log = prefix .. "queue:" .. queue .. ":ratelog"
  local window = tonumber(cfg[2])
  rcall("ZREMRANGEBYSCORE", log, "-inf", now - window)
  local left = math.max(0, max - rcall("ZCARD", log))
  return budget and math.min(budget, left) or left, log, window
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
  if job == HELD then
    held[#held + 1] = {id, score, queue}
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

-- One entry of a queue, claimed or left in place. With per-type room or version ranges, a job
-- of a type without room, or of a version the caller does not take, stays where it is; any
-- other leaves the set and is taken (held ones are put back at the end). Returns true when
-- claimed.
-- Whether the caller may take this job: room for its type and a version it takes (when it gave
-- either). Also returns the job's type and its room when that counts.
local function fits(id)
  if not (room or ranges) then return true end
  local job_type, order
  if ranges then
    local f = rcall("HMGET", prefix .. "job:" .. id, "type", "version_order")
    job_type, order = f[1], f[2]
  else
    job_type = rcall("HGET", prefix .. "job:" .. id, "type")
  end
  local left = job_type and room and room[job_type]
  if (left and left <= 0) or (ranges and job_type and not version_fits(job_type, order)) then return false end
  return true, job_type, left
end

local function consider(queue, available_key, id, score, log, window)
  local ok, job_type, left = fits(id)
  if not ok then return false end
  rcall("ZREM", available_key, id)
  if not take(id, score, queue, log, window) then return false end
  if left then room[job_type] = left - 1 end
  return true
end

-- Past the head: look RL_SCAN entries further (after `after`, the last head entry looked at and
-- left in place, if any), from where the last such look in this queue stopped
-- (queue:<q>:rl-cursor, a score; from the head again once it reaches the end), so an eligible
-- job behind any run of held (or unfit) ones is reached within a few calls, at a bounded cost
-- per call.
local function claim_past_held(queue, available_key, limit, taken, log, window, after)
  local cursor_key = queue_key(T, queue, "rl-cursor")
  local from = rcall("GET", cursor_key)
  if after and (not from or tonumber(after) > tonumber(from)) then from = after end
  local range = rcall("ZRANGEBYSCORE", available_key, from and ("(" .. from) or "-inf", "+inf", "WITHSCORES",
    "LIMIT", 0, RL_SCAN)
  local last = nil
  for h = 1, #range, 2 do
    if #claimed >= count or taken >= limit then break end
    last = range[h + 1]
    if consider(queue, available_key, range[h], range[h + 1], log, window) then taken = taken + 1 end
  end
  if last and #range == 2 * RL_SCAN then
    rcall("SET", cursor_key, last, "PX", 60000)
  else
    rcall("DEL", cursor_key)
  end
end

-- With per-type room or version ranges: the queue's head, in order, over at most ROOM_SCAN
-- entries, then one look further (claim_past_held).
local function claim_with_room(queue, available_key, limit, log, window)
  local taken = 0
  local head = rcall("ZRANGE", available_key, 0, ROOM_SCAN - 1, "WITHSCORES")
  local after = nil
  for h = 1, #head, 2 do
    if #claimed >= count or taken >= limit then return end
    if (held_in[queue] or 0) >= RL_SCAN then break end
    if consider(queue, available_key, head[h], head[h + 1], log, window) then taken = taken + 1 end
    after = head[h + 1]
  end
  if #head == 2 * ROOM_SCAN or (held_in[queue] or 0) >= RL_SCAN then
    claim_past_held(queue, available_key, limit, taken, log, window, after)
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
  while #claimed < count and taken < limit and (held_in[queue] or 0) < RL_SCAN do
    local heads = rcall("ZPOPMIN", available_key, int_arg(math.min(count - #claimed, limit - taken)))
    if #heads == 0 then return end
    for h = 1, #heads, 2 do
      if take(heads[h], heads[h + 1], queue, log, window) then taken = taken + 1 end
    end
  end
  if #claimed < count and taken < limit then claim_past_held(queue, available_key, limit, taken, log, window, nil) end
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
        if not fits(head[1]) then
          skipped[#skipped + 1] = {head[1], head[2], queue}  -- left for a worker that takes it
        elseif rcall("ZREM", queue_key(T, queue, "available"), head[1]) == 1 then
          local job = claim(head[1], queue, true)
          if job == HELD then
            skipped[#skipped + 1] = {head[1], head[2], queue}  -- back to both indexes
            job = nil
          end
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
for _, h in ipairs(held) do
  rcall("ZADD", queue_key(T, h[3], "available"), h[2], h[1])
end
for _, s in ipairs(skipped) do
  rcall("ZADD", queue_key(T, s[3], "available"), s[2], s[1])
  rcall("ZADD", queue_key(T, s[3], "suspects"), s[2], s[1])
end
for queue, n in pairs(claimed_per_queue) do
  local counts = prefix .. "queue:" .. queue .. ":counts"
  rcall("HINCRBY", counts, "available", int_arg(-n))
  rcall("HINCRBY", counts, "active", int_arg(n))
  count_stat(T, "started", queue, n)
  count_stat(T, "wait_ms", queue, waited_per_queue[queue])
end
return claimed
