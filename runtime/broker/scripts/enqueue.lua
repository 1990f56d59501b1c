--[[
  Insert new jobs, all or nothing; optionally as the firing of one cron tick.

  State transition: (new) -> available | scheduled | pending
  Pre-conditions:
    - no job of the batch exists yet (client-chosen ids may collide)
    - cron guard given: the cron's next fire time is still the tick being fired (the per-tick
      claim: of several servers firing the same tick, exactly one passes)

  KEYS[1] prefix (derived keys: job:<id>, queue:<q>:available, queue:<q>:counts, cron:state:<name>)
  KEYS[2] seq         (string, INCR)
  KEYS[3] delayed     (zset)
  KEYS[4] expiring    (zset)
  KEYS[5] events      (stream)
  KEYS[6] queues      (hash)
  KEYS[7] cron:next   (zset)

  ARGV[1] now_ms
  ARGV[2] events_maxlen        0 disables events
  ARGV[3] job count N
  ARGV[4] cron name            "" when not a cron firing
  ARGV[5] cron tick_ms         the fire time being claimed
  ARGV[6] cron next_ms         the fire time after it
  ARGV[7] cron overlap policy  skip | allow
  ARGV[8] cron expression      for the event
  then per job: id, queue, state, priority, due_ms|"", expires_ms|"", field count F,
                F field/value pairs written to the job hash as they are

  Publishes "1" on channel <prefix>notify:<q> once per queue that received available jobs.

  Returns:
    {0, id1, id2, ...}   inserted
    {1, index}           duplicate: the job at 1-based index already exists
    {2}                  cron tick already claimed by another server (nothing written)
    {3, existing_id}     cron tick skipped: previous instance still pending (tick consumed)
]]
local rcall = redis.call
local prefix = KEYS[1]
local seq_key, delayed_key, expiring_key = KEYS[2], KEYS[3], KEYS[4]
local events_key, queues_key, cron_next_key = KEYS[5], KEYS[6], KEYS[7]
local now = ARGV[1]
local maxlen = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local cron_name, cron_tick, cron_next = ARGV[4], ARGV[5], ARGV[6]
local cron_policy, cron_expr = ARGV[7], ARGV[8]

local TERMINAL = {completed = true, cancelled = true, discarded = true}

local function emit(etype, subject, data)
  if maxlen > 0 then
    rcall("XADD", events_key, "MAXLEN", "~", maxlen, "*",
      "type", etype, "subject", subject, "time", now, "data", cjson.encode(data))
  end
end

-- Parse the per-job blocks once.
local jobs = {}
local i = 9
for j = 1, n do
  local nf = tonumber(ARGV[i + 6])
  local job = {id = ARGV[i], queue = ARGV[i + 1], state = ARGV[i + 2], priority = tonumber(ARGV[i + 3]),
               due = ARGV[i + 4], expires = ARGV[i + 5], fields = {}}
  for f = i + 7, i + 6 + 2 * nf, 2 do
    job.fields[#job.fields + 1] = ARGV[f]
    job.fields[#job.fields + 1] = ARGV[f + 1]
    if ARGV[f] == "type" then job.type = ARGV[f + 1] end
  end
  jobs[j] = job
  i = i + 7 + 2 * nf
end

for j = 1, n do
  if rcall("EXISTS", prefix .. "job:" .. jobs[j].id) == 1 then
    return {1, j}
  end
end

if cron_name ~= "" then
  local cron_state = prefix .. "cron:state:" .. cron_name
  if rcall("ZSCORE", cron_next_key, cron_name) ~= cron_tick then
    return {2}
  end
  rcall("ZADD", cron_next_key, cron_next, cron_name)
  local last_id = rcall("HGET", cron_state, "last_job_id")
  if cron_policy == "skip" and last_id then
    local last_state = rcall("HGET", prefix .. "job:" .. last_id, "state")
    if last_state and not TERMINAL[last_state] then
      emit("cron.skipped", cron_name, {cron_name = cron_name, cron_expr = cron_expr,
        job_type = jobs[1].type, reason = "overlap_skip", existing_job_id = last_id})
      return {3, last_id}
    end
  end
  rcall("HSET", cron_state, "last_job_id", jobs[1].id, "last_run_at", now)
  rcall("HINCRBY", cron_state, "run_count", 1)
end

local ids = {0}
local woken = {}
for j = 1, n do
  local job = jobs[j]
  local job_key = prefix .. "job:" .. job.id
  rcall("HSET", job_key, unpack(job.fields))
  rcall("HSETNX", queues_key, job.queue, now)
  rcall("HINCRBY", prefix .. "queue:" .. job.queue .. ":counts", job.state, 1)
  if job.state == "available" then
    local seq = rcall("INCR", seq_key)
    rcall("ZADD", prefix .. "queue:" .. job.queue .. ":available",
      string.format("%.0f", (100 - job.priority) * 1e13 + seq), job.id)
    if not woken[job.queue] then
      woken[job.queue] = true
      rcall("PUBLISH", prefix .. "notify:" .. job.queue, "1")
    end
  elseif job.state == "scheduled" then
    rcall("ZADD", delayed_key, job.due, job.id)
  end
  if job.expires ~= "" then
    rcall("ZADD", expiring_key, job.expires, job.id)
  end
  local job_type = job.type
  if job.state == "scheduled" then
    emit("job.scheduled", job.id, {job_id = job.id, job_type = job_type, queue = job.queue,
      state = job.state, scheduled_at = tonumber(job.due)})
  else
    emit("job.enqueued", job.id, {job_id = job.id, job_type = job_type, queue = job.queue,
      state = job.state, priority = job.priority})
  end
  if cron_name ~= "" then
    emit("cron.triggered", cron_name, {cron_name = cron_name, cron_expr = cron_expr,
      job_type = job_type, job_id = job.id, scheduled_at = tonumber(cron_tick)})
  end
  ids[#ids + 1] = job.id
end
return ids
