--[[
  Insert new jobs, all or nothing; checks unique-job locks in the same step (no window for two
  duplicates); optionally as the firing of one cron tick.

  State transition: (new) -> available | scheduled | pending | waiting (a workflow step that
                    advance.lua enqueues later: stored, not indexed, not counted)
                    a duplicate under on_conflict=replace: its holder -> cancelled
  Pre-conditions:
    - no job of the batch exists yet (client-chosen ids may collide)
    - unique jobs: no job holds the lock in one of the policy's states within the period, unless
      on_conflict is ignore (that job is not created; the holder is returned instead), replace
      (the holder is cancelled) or replace_except_schedule (the same, and a scheduled holder's
      due time is kept by its replacement). In a workflow every member must be created, so
      there an ignore conflict is refused like reject.
    - cron guard given: the cron's next fire time is still the tick being fired (the per-tick
      claim: of several servers firing the same tick, exactly one passes); only then does the
      overlap policy act (skip: the tick is consumed while the previous job is live;
      cancel_previous: the previous job, if live, is cancelled, which also frees its unique
      lock). The claim comes before the unique check: a tick whose job meets a unique holder
      (reject or ignore) is a skipped tick, consumed and recorded like an overlap skip, never an
      error that stalls the cron.

  KEYS[1] prefix (derived keys: job:<id>, queue:<q>:available|counts|config|paused|tenant-tags,
                  tenant:<t>, tenant-jobs:<t>, tenants,
                  unique:<fingerprint>, cron:state:<name>, workflow:<id>, outbox)
  KEYS[2] seq         (string, INCR)
  KEYS[3] delayed     (zset)
  KEYS[4] expiring    (zset)
  KEYS[5] events      (stream)
  KEYS[6] queues      (hash)
  KEYS[7] cron:next   (zset)
  KEYS[8] active      (zset; a replaced active holder leaves it)

  ARGV[1] now_ms
  ARGV[2] events_maxlen        0 disables events
  ARGV[3] job count N
  ARGV[4] cron name            "" when not a cron firing
  ARGV[5] cron tick_ms         the fire time being claimed
  ARGV[6] cron next_ms         the fire time after it
  ARGV[7] cron overlap policy  skip | allow | cancel_previous
  ARGV[8] cron expression      for the event
  ARGV[8 + j] job j, one msgpack array of strings: id, queue, state, priority, due_ms|"",
    expires_ms|"", unique fingerprint|"", unique states (comma-separated), unique period_ms|"",
    on_conflict (reject|ignore|replace|replace_except_schedule)|"", client id "1"|"" (only a client-chosen id can
    collide, so only those are checked), then field/value pairs written to the job hash as they
    are (a `rl_max`/`rl_window_ms` pair also sets the queue's rate limit; `rl_key`/`rl_policy`
    register the job with its rate-limit partition, rl:<key>, rl-jobs:<key>, rate-limits; a
    `tenant` is the job's tenant: it is counted in tenant:<t>, tenant-jobs:<t>, tenants, and an
    available one is placed by its tenant's fair-queuing tag, queue:<q>:tenant-tags, in place of
    the global seq)
  ARGV[9 + N] the schema registry generation the jobs' args were checked against ("" for an
    empty registry), or "*" for jobs that are not checked (cron firings)
  ARGV[10 + N] optional workflow record: one msgpack array of field/value pairs for workflow:<id>
    (its `id` field names the workflow)

  Publishes "1" on channel <prefix>notify:<q> once per queue that received available jobs.

  Returns (status names from the one status table, S):
    {OK, id1, id2, ...}         done; an id written "=<id>" is an existing job returned in place of
                                a duplicate (on_conflict ignore)
    {DUPLICATE_ID, index}       the job at 1-based index already exists (same id)
    {CRON_CLAIMED}              cron tick already claimed by another server (nothing written)
    {CRON_SKIPPED, existing_id, reason}  cron tick skipped (tick consumed; cron:state:<name>
                                records it): reason overlap_skip (previous instance not finished)
                                or unique_conflict (existing_id holds the template's unique lock)
    {UNIQUE_CONFLICT, index, existing_id, existing_state, fingerprint}   unique conflict refused
    {QUEUE_FULL, queue, depth, max_depth}   a bounded queue has no room for this call's jobs
    {SCHEMAS_CHANGED, generation}   the schema registry changed since the args were checked
                                (nothing written): check them again against this generation
  After the ids of an OK reply, one more entry {queue, depth, max_depth} when a bounded queue
  is past its warning threshold (config bp_warn, default 0.8) once this call's jobs are in.
]]
local T = context(KEYS[1], ARGV[1], ARGV[2])
local prefix, now, now_ms = T.prefix, T.now, T.now_ms
local RL_RETENTION_MS = 30 * 86400000  -- a rate-limit key unused this long is forgotten
local n = tonumber(ARGV[3])
local cron_name, cron_tick, cron_next = ARGV[4], ARGV[5], ARGV[6]
local cron_policy, cron_expr = ARGV[7], ARGV[8]

-- Decode the per-job blocks once (each is one msgpack array, to keep ARGV short).
local jobs = {}
for j = 1, n do
  local t = cmsgpack.unpack(ARGV[8 + j])
  local job = {id = t[1], queue = t[2], state = t[3], priority = tonumber(t[4]), due = t[5],
               expires = t[6], ukey = t[7], ustates = t[8], uperiod = tonumber(t[9]),
               on_conflict = t[10], client_id = t[11] == "1", t = t}
  for f = 12, #t, 2 do
    local name = t[f]
    if name == "type" then job.type = t[f + 1]
    elseif name == "rl_key" then job.rl_key = t[f + 1]
    elseif name == "rl_policy" then job.rl_policy = t[f + 1]
    elseif name == "rl_max" then job.rl_max = t[f + 1]
    elseif name == "rl_window_ms" then job.rl_window = t[f + 1]
    elseif name == "tenant" then job.tenant = t[f + 1] end
  end
  jobs[j] = job
end
-- The schema registry: the caller checked the args against a snapshot of it (one GET here
-- instead of a read before every enqueue); a registry changed since refuses the call.
local checked_gen = ARGV[9 + n]
if checked_gen ~= "*" then
  local gen = rcall("GET", T.schemas_gen) or ""
  if gen ~= checked_gen then return {S.SCHEMAS_CHANGED, gen} end
end
local wf_fields = ARGV[10 + n] and cmsgpack.unpack(ARGV[10 + n]) or nil
local wf_id = ""
if wf_fields then
  for f = 1, #wf_fields, 2 do
    if wf_fields[f] == "id" then wf_id = wf_fields[f + 1] end
  end
end

local seen_ids = {}
for j = 1, n do
  local id = jobs[j].id
  if seen_ids[id] or (jobs[j].client_id and rcall("EXISTS", prefix .. "job:" .. id) == 1) then
    return {S.DUPLICATE_ID, j}
  end
  seen_ids[id] = true
end

-- A queue's bound (the backpressure extension): nil when unbounded, else its depth now (available,
-- scheduled, retryable and pending jobs), max_depth and warning ratio.
local DEPTH_STATES = {available = true, scheduled = true, retryable = true, pending = true}
local function queue_bound(queue)
  local bound = rcall("HMGET", prefix .. "queue:" .. queue .. ":config", "max_depth", "bp_warn")
  local max_depth = tonumber(bound[1])
  if not max_depth or max_depth <= 0 then return nil end
  local c = rcall("HMGET", prefix .. "queue:" .. queue .. ":counts", "available", "scheduled", "retryable", "pending")
  local depth = (tonumber(c[1]) or 0) + (tonumber(c[2]) or 0) + (tonumber(c[3]) or 0) + (tonumber(c[4]) or 0)
  return depth, max_depth, tonumber(bound[2]) or 0.8
end

-- A cron firing: claim the tick first, so that whatever stops this tick's job consumes the tick;
-- the overlap policy acts only for the server that holds the tick.
local cron_state = prefix .. "cron:state:" .. cron_name
local function skip_tick(reason, existing_id)
  rcall("HSET", cron_state, "last_skipped_at", now, "last_skip_reason", reason)
  rcall("HINCRBY", cron_state, "skipped_count", 1)
  emit(T, "cron.skipped", cron_name, {cron_name = cron_name, cron_expr = cron_expr,
    job_type = jobs[1].type, reason = reason, existing_job_id = existing_id})
  return {S.CRON_SKIPPED, existing_id, reason}
end
-- Unique locks: find the holder of each fingerprint that still counts as a duplicate.
local function holder_of(job)
  if job.ukey == "" then return nil end
  local holder = rcall("GET", prefix .. "unique:" .. job.ukey)
  if not holder then return nil end
  local h = rcall("HMGET", prefix .. "job:" .. holder, "state", "created_at")
  if not h[1] then return nil end
  -- A waiting workflow step holds its lock as the job it will become (available).
  local counted = h[1] == "waiting" and "available" or h[1]
  if not in_csv(job.ustates, counted) then return nil end
  if job.uperiod and now_ms >= tonumber(h[2]) + job.uperiod then return nil end
  return holder, h[1]
end

if cron_name ~= "" then
  if rcall("ZSCORE", T.cron_next, cron_name) ~= cron_tick then
    return {S.CRON_CLAIMED}
  end
  rcall("ZADD", T.cron_next, cron_next, cron_name)
  local last_id = rcall("HGET", cron_state, "last_job_id")
  local last = last_id and rcall("HMGET", prefix .. "job:" .. last_id, "state", "queue") or {}
  local last_state = last[1]
  -- A full queue consumes the tick before the overlap policy acts: a tick that creates nothing
  -- must not cancel the previous job either (unless that job's leaving makes the room).
  local depth, max_depth = queue_bound(jobs[1].queue)
  if depth then
    local leaving = (cron_policy == "cancel_previous" and DEPTH_STATES[last_state] and last[2] == jobs[1].queue) and 1 or 0
    if depth + 1 - leaving > max_depth then return skip_tick("queue_full", "") end
  end
  if last_state and not TERMINAL[last_state] then
    if cron_policy == "skip" then
      return skip_tick("overlap_skip", last_id)
    elseif cron_policy == "cancel_previous" then
      -- Nor must a tick that another job's unique lock turns into nothing (reject: a skip;
      -- ignore: that job returned): checked before the cancel. The previous job's own lock goes
      -- with it, so it is no obstacle.
      local holder = holder_of(jobs[1])
      local replaces = jobs[1].on_conflict == "replace" or jobs[1].on_conflict == "replace_except_schedule"
      if holder and holder ~= last_id and not replaces then
        return skip_tick("unique_conflict", holder)
      end
      cancel_job(T, prefix .. "job:" .. last_id, last_id, last_state, "cron_overlap")
    end
  end
end

-- Twins inside the batch count too: a later job with the fingerprint of an earlier one meets
-- that earlier job as its holder (reject: 409; ignore: the earlier one is returned; replace:
-- the later one is created instead of the earlier one).
local batch_holder = {}  -- fingerprint -> index of the batch job that will hold it
local cancelled_holders = {}
for j = 1, n do
  local job = jobs[j]
  local earlier = job.ukey ~= "" and batch_holder[job.ukey]
  if earlier then
    -- In a workflow every member must be created: two members of one kind are refused whatever
    -- the policy (replace would leave the earlier one uncreated).
    if job.on_conflict == "reject" or wf_id ~= "" then
      return {S.UNIQUE_CONFLICT, j, jobs[earlier].id, jobs[earlier].state, job.ukey}
    elseif job.on_conflict == "ignore" then
      job.twin_of = earlier
    else
      jobs[earlier].replaced_by = j
      job.holder, job.holder_state = jobs[earlier].holder, jobs[earlier].holder_state
      batch_holder[job.ukey] = j
    end
  else
    local holder, holder_state = holder_of(job)
    if holder then
      if job.on_conflict == "reject" and cron_name ~= "" then
        return skip_tick("unique_conflict", holder)
      end
      if job.on_conflict == "reject" or (job.on_conflict == "ignore" and wf_id ~= "") then
        return {S.UNIQUE_CONFLICT, j, holder, holder_state, job.ukey}
      end
      job.holder, job.holder_state = holder, holder_state
      if job.on_conflict == "replace_except_schedule" and holder_state == "scheduled"
          and job.state ~= "waiting" then
        -- The replacement fires when the holder would have.
        job.state = "scheduled"
        job.due = rcall("ZSCORE", T.delayed, holder)
        job.keep_schedule = rcall("HGET", prefix .. "job:" .. holder, "scheduled_at") or iso_ms(tonumber(job.due))
      end
    end
    if job.ukey ~= "" then batch_holder[job.ukey] = j end
  end
end

local function skipped(job)
  return (job.holder and job.on_conflict == "ignore") or job.twin_of or job.replaced_by
end

-- Queue bounds (the backpressure extension): a queue whose config sets max_depth takes no job
-- past it; depth counts its available, scheduled, retryable and pending jobs. The whole call
-- is refused (all or nothing, as always: nothing is written before this point, but for a cron
-- firing its tick claim and overlap policy, which come after the same check; a cron tick that
-- finds its queue full is consumed as a skip). A queue past its warning threshold is reported.
local arriving = {}  -- queue -> jobs of this call that would count towards its depth
for j = 1, n do
  local job = jobs[j]
  if job.state ~= "waiting" and not skipped(job) then
    arriving[job.queue] = (arriving[job.queue] or 0) + 1
  end
end
local pressure = nil
for queue, count in pairs(arriving) do
  local depth, max_depth, warn = queue_bound(queue)
  if depth then
    if depth + count > max_depth then
      if cron_name ~= "" then return skip_tick("queue_full", "") end
      return {S.QUEUE_FULL, queue, depth, max_depth}
    end
    local after = depth + count
    if after / max_depth >= warn and (not pressure or after / max_depth > pressure[2] / pressure[3]) then
      pressure = {queue, after, max_depth}
    end
  end
end

if cron_name ~= "" then
  if jobs[1].holder and jobs[1].on_conflict == "ignore" then  -- nothing would be created
    return skip_tick("unique_conflict", jobs[1].holder)
  end
  rcall("HSET", cron_state, "last_job_id", jobs[1].id, "last_run_at", now)
  rcall("HINCRBY", cron_state, "run_count", 1)
end

-- Insert. Per job only the hash write (and its event) is a call of its own; counters, queue
-- registration, the sequence and the index writes are gathered and done once per queue.
local ids = {S.OK}
local per_queue = {}   -- queue -> {counts = {state -> n}, available = {score, id, ...}}
local n_available = 0
for j = 1, n do
  if jobs[j].state == "available" and not skipped(jobs[j]) and not jobs[j].tenant then
    n_available = n_available + 1
  end
end
local tags = new_tags()   -- the tenants' fair-queuing tags (lib.lua next_tag), saved once at the end
local per_tenant = {}     -- tenant -> jobs created for it by this call
local seq = n_available > 0 and (rcall("INCRBY", T.seq, n_available) - n_available) or 0

local function queue_batch(queue)
  local b = per_queue[queue]
  if not b then
    b = {counts = {}, available = {}}
    per_queue[queue] = b
  end
  return b
end

for j = 1, n do
  local job = jobs[j]
  if job.holder and job.on_conflict == "ignore" then
    ids[#ids + 1] = "=" .. job.holder
  elseif job.twin_of then
    ids[#ids + 1] = "=" .. jobs[job.twin_of].id
  elseif job.replaced_by then
    local last = job.replaced_by
    while jobs[last].replaced_by do last = jobs[last].replaced_by end
    ids[#ids + 1] = "=" .. jobs[last].id
  else
    if job.holder and not cancelled_holders[job.holder] then
      cancelled_holders[job.holder] = true
      cancel_job(T, prefix .. "job:" .. job.holder, job.holder, job.holder_state, "unique_replace")
    end
    rcall("HSET", prefix .. "job:" .. job.id, unpack(job.t, 12))
    if job.rl_key then  -- a keyed rate limit: the partition's latest policy and its unfinished jobs
      local hash = prefix .. "rl:" .. job.rl_key
      rcall("HSET", hash, "policy", job.rl_policy)
      -- The key's start log serves its longest window (policies of one key may differ).
      local window = tonumber(string.match(job.rl_policy, "^[^,]*,[^,]*,([^,]*),"))
      if window and window > (tonumber(rcall("HGET", hash, "win")) or 0) then rcall("HSET", hash, "win", window) end
      rcall("PEXPIRE", hash, RL_RETENTION_MS)
      rcall("SADD", prefix .. "rl-jobs:" .. job.rl_key, job.id)
      rcall("ZADD", T.rate_limits, now, job.rl_key)
      rcall("ZREMRANGEBYSCORE", T.rate_limits, "-inf", now_ms - RL_RETENTION_MS)
    end
    if job.tenant then  -- its tenant's unfinished jobs (on_end removes it), and the tenant's count
      rcall("SADD", prefix .. "tenant-jobs:" .. job.tenant, job.id)
      per_tenant[job.tenant] = (per_tenant[job.tenant] or 0) + 1
    end
    if job.ukey ~= "" then
      local lock = prefix .. "unique:" .. job.ukey
      if job.uperiod then
        rcall("SET", lock, job.id, "PX", job.uperiod)
      else
        rcall("SET", lock, job.id)
      end
    end
  end
  if skipped(job) or job.state == "waiting" then
    -- stored (a waiting step), not indexed or counted: advance.lua enqueues it later. Its queue
    -- is known from now on (listings and bulk actions over every queue see its jobs).
    if job.state == "waiting" and not skipped(job) then
      ids[#ids + 1] = job.id
      rcall("HSETNX", T.queues, job.queue, now)
    end
  else
    if job.keep_schedule then
      rcall("HSET", prefix .. "job:" .. job.id, "state", "scheduled", "scheduled_at", job.keep_schedule)
      rcall("HDEL", prefix .. "job:" .. job.id, "enqueued_at")
    end
    local b = queue_batch(job.queue)
    b.counts[job.state] = (b.counts[job.state] or 0) + 1
    if job.rl_max then
      rcall("HSET", prefix .. "queue:" .. job.queue .. ":config", "rl_max", job.rl_max,
        "rl_window_ms", job.rl_window)
    end
    if job.state == "available" and job.tenant then
      b.available[#b.available + 1] = queue_score(job.priority, next_tag(T, tags, job.queue, job.priority, job.tenant,
        per_tenant[job.tenant]))
      b.available[#b.available + 1] = job.id
    elseif job.state == "available" then
      seq = seq + 1
      b.available[#b.available + 1] = queue_score(job.priority, seq)
      b.available[#b.available + 1] = job.id
    elseif job.state == "scheduled" then
      rcall("ZADD", T.delayed, job.due, job.id)
    end
    if job.expires ~= "" then
      rcall("ZADD", T.expiring, job.expires, job.id)
    end
    if job.state == "scheduled" then
      emit(T, "job.scheduled", job.id, {job_id = job.id, job_type = job.type, queue = job.queue,
        state = job.state, scheduled_at = tonumber(job.due)})
    else
      emit(T, "job.enqueued", job.id, {job_id = job.id, job_type = job.type, queue = job.queue,
        state = job.state, priority = job.priority, unique_key = job.ukey ~= "" and job.ukey or nil})
    end
    if cron_name ~= "" then
      emit(T, "cron.triggered", cron_name, {cron_name = cron_name, cron_expr = cron_expr,
        job_type = job.type, job_id = job.id, scheduled_at = tonumber(cron_tick)})
    end
    ids[#ids + 1] = job.id
  end
end

local CHUNK = 2000  -- ZADD arguments per call (Lua's unpack has a stack limit)
for queue, b in pairs(per_queue) do
  rcall("HSETNX", T.queues, queue, now)
  local counts_key = prefix .. "queue:" .. queue .. ":counts"
  local created = 0
  for state, count in pairs(b.counts) do
    rcall("HINCRBY", counts_key, state, count)
    created = created + count
  end
  count_stat(T, "enqueued", queue, created)
  if #b.available > 0 then
    local available_key = prefix .. "queue:" .. queue .. ":available"
    for first = 1, #b.available, CHUNK do
      rcall("ZADD", available_key, unpack(b.available, first, math.min(first + CHUNK - 1, #b.available)))
    end
    rcall("PUBLISH", prefix .. "notify:" .. queue, "1")
  end
end
save_tags(T, tags)
for tenant, created in pairs(per_tenant) do
  rcall("HINCRBY", prefix .. "tenant:" .. tenant, "total_jobs", created)
  rcall("ZADD", T.tenants, now, tenant)
end
if wf_id ~= "" then
  rcall("HSET", prefix .. "workflow:" .. wf_id, unpack(wf_fields))
  rcall("ZADD", T.workflows, now, wf_id)
  emit(T, "workflow.started", wf_id, {workflow_id = wf_id,
    workflow_name = rcall("HGET", prefix .. "workflow:" .. wf_id, "name"),
    total_steps = tonumber(rcall("HGET", prefix .. "workflow:" .. wf_id, "total"))})
end
if pressure then ids[#ids + 1] = pressure end  -- after the n ids: the fullest queue past its warning
return ids
