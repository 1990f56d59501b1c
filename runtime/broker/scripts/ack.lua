--[[
  Complete one or more active jobs with their results.

  State transition: active -> completed
  Pre-conditions (per job; a failing job does not stop the others):
    - the job exists                                   else status 1
    - state = active                                   else status 2 (conflict), but status 0
      when it is completed under the very claim given: a re-sent ack whose first reply was lost
    - the claim matches: the fencing token (when given) is the job's current `claim`; the
      worker id and the attempt, when both sides know them     else status 3 (stale claim)

  KEYS[1] prefix (derived keys: queue:<q>:counts|completed, worker-jobs:<id>, unique:<fp>, and the fixed
                 keys active, expiring, events, outbox)
  KEYS[2..] job:<id> of each job, in ARGV order

  ARGV[1] now_ms
  ARGV[2] events_maxlen   0 disables events
  then per job: worker_id|"", attempt|"", claim token|"", result JSON|""  (4 values each)

  Returns: one entry per job: {status, state, workflow, queue, type}; state is the current state
           on conflicts; workflow is 1 when the job's workflow was queued for advance.lua; queue
           and type (for metric labels) are "" on conflicts.
]]
local T = context(KEYS[1], ARGV[1], ARGV[2])
local prefix, now = T.prefix, T.now

-- Counter moves and the completed index (queue:<q>:completed, scored by completion time) are
-- gathered per queue and written once per call.
local completed_per_queue = {}

local out = {}
for j = 2, #KEYS do
  local job_key = KEYS[j]
  local a = 3 + (j - 2) * 4
  local worker_id, attempt, token, result = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local f = rcall("HMGET", job_key, "state", "worker_id", "attempt", "queue", "type", "started_at", "id",
    "progress", "expires_ms", "unique_key", "workflow_id", "claim", "rl_key", "tenant")
  if not f[1] then
    out[#out + 1] = {S.NOT_FOUND, "", 0, "", ""}
  elseif f[1] == "completed" and token ~= "" and token == f[12] then
    out[#out + 1] = {S.OK, "completed", 0, f[4], f[5]}  -- done already, by this ack's first send
  elseif f[1] ~= "active" then
    out[#out + 1] = {S.CONFLICT, f[1], 0, "", ""}
  elseif (token ~= "" and token ~= f[12]) or (worker_id ~= "" and f[2] and f[2] ~= worker_id)
      or (attempt ~= "" and attempt ~= f[3]) then
    out[#out + 1] = {S.STALE_CLAIM, f[1], 0, "", ""}
  else
    local id, queue = f[7], f[4]
    local fields = {"state", "completed", "completed_at", now}
    if result ~= "" then
      fields[#fields + 1] = "result"
      fields[#fields + 1] = result
    end
    if f[8] then  -- progress was reported: a completed job is done
      fields[#fields + 1] = "progress"
      fields[#fields + 1] = "1.0"
    end
    rcall("HSET", job_key, unpack(fields))
    rcall("HDEL", job_key, "error", "next_attempt_at", "visible_until", "exec_deadline", "suspect")
    rcall("ZREM", T.active, id)
    if f[9] then rcall("ZREM", T.expiring, id) end
    if f[2] then rcall("SREM", prefix .. "worker-jobs:" .. f[2], id) end
    rl_leave(T, id, f[13], queue)
    local ended = completed_per_queue[queue]
    if not ended then
      ended = {}
      completed_per_queue[queue] = ended
    end
    ended[#ended + 1] = T.now
    ended[#ended + 1] = id
    emit(T, "job.completed", id, {job_id = id, job_type = f[5], queue = queue, state = "completed",
      attempt = tonumber(f[3]), duration_ms = T.now_ms - tonumber(f[6])})
    local queued = 0
    if f[10] or f[11] or f[13] or f[14] then queued = on_end(T, job_key, id, "completed") end
    out[#out + 1] = {S.OK, "completed", queued, queue, f[5]}
  end
end
for queue, ended in pairs(completed_per_queue) do
  local count = #ended / 2
  local counts = prefix .. "queue:" .. queue .. ":counts"
  rcall("HINCRBY", counts, "active", int_arg(-count))
  rcall("HINCRBY", counts, "completed", int_arg(count))
  rcall("ZADD", prefix .. "queue:" .. queue .. ":completed", unpack(ended))
  count_stat(T, "completed", queue, count)
end
return out
