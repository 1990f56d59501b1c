--[[
  Advance workflows: take jobs that ended (queued by the transition that ended them, in the same
  atomic step) off the outbox and apply them to their workflow.

  A workflow is a graph of member jobs. Member i lists its dependents in field d<i> of the
  workflow hash; a waiting member keeps the number of unresolved dependencies in wf_pending.
  - A member completes: its result is kept (r<i>); each dependent's count drops; at zero the
    dependent is enqueued with parent_results = the results of its dependencies in order (for a
    chain, of every earlier step).
  - A member fails (discarded or cancelled): dependents that are plain steps never run (they are
    cancelled, transitively); callbacks (wf_cond always / success / failure) only count it.
  - A callback whose dependencies are resolved runs if its condition holds, else it is cancelled.
  - When every plain member is resolved the workflow is completed (no failure) or failed.
  Each outbox entry is popped and applied in this one script, so a crash cannot apply it twice
  or lose it, and callbacks fire exactly once.

  State transitions: waiting -> available (enqueued) | cancelled (never runs);
                     workflow running -> completed | failed

  KEYS[1] prefix (derived keys: job:<id>, workflow:<id>, queue:<q>:available|counts)
  KEYS[2] workflow:advance (list, the outbox)
  KEYS[3] seq      (string)
  KEYS[4] events   (stream)
  KEYS[5] expiring (zset; an enqueued step with expires_at must expire)

  ARGV[1] now_ms
  ARGV[2] events_maxlen   0 disables events
  ARGV[3] limit           outbox entries handled by this call

  Returns: number of outbox entries handled
]]
local rcall = redis.call
local prefix, outbox_key, seq_key, events_key, expiring_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, maxlen, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local function emit(etype, subject, data)
  if maxlen > 0 then
    rcall("XADD", events_key, "MAXLEN", "~", maxlen, "*",
      "type", etype, "subject", subject, "time", now, "data", cjson.encode(data))
  end
end

local function split(csv)
  local out = {}
  if csv then
    for part in string.gmatch(csv, "[^,]+") do out[#out + 1] = tonumber(part) end
  end
  return out
end

local function parent_results(wf_key, wf_type, index, deps)
  local parts = {}
  if wf_type == "chain" then
    for k = 0, index - 1 do parts[#parts + 1] = rcall("HGET", wf_key, "r" .. k) or "null" end
  else
    for _, k in ipairs(deps) do parts[#parts + 1] = rcall("HGET", wf_key, "r" .. k) or "null" end
  end
  return "[" .. table.concat(parts, ",") .. "]"
end

local function enqueue_member(wf_key, wf_type, index)
  local id = rcall("HGET", wf_key, "j" .. index)
  local job_key = prefix .. "job:" .. id
  local f = rcall("HMGET", job_key, "queue", "priority", "type", "wf_deps", "expires_ms")
  rcall("HSET", job_key, "state", "available", "enqueued_at", now,
    "parent_results", parent_results(wf_key, wf_type, index, split(f[4])))
  rcall("HINCRBY", prefix .. "queue:" .. f[1] .. ":counts", "available", 1)
  local seq = rcall("INCR", seq_key)
  rcall("ZADD", prefix .. "queue:" .. f[1] .. ":available",
    string.format("%.0f", (100 - tonumber(f[2])) * 1e13 + seq), id)
  rcall("PUBLISH", prefix .. "notify:" .. f[1], "1")
  if f[5] then rcall("ZADD", expiring_key, f[5], id) end
  emit("job.enqueued", id, {job_id = id, job_type = f[3], queue = f[1], state = "available",
    workflow_id = rcall("HGET", wf_key, "id")})
end

local function cancel_member(wf_key, index)
  local id = rcall("HGET", wf_key, "j" .. index)
  local job_key = prefix .. "job:" .. id
  local f = rcall("HMGET", job_key, "state", "queue")
  if f[1] ~= "waiting" then return false end
  rcall("HSET", job_key, "state", "cancelled", "cancelled_at", now, "previous_state", "waiting")
  rcall("HINCRBY", prefix .. "queue:" .. f[2] .. ":counts", "cancelled", 1)
  return true
end

-- Resolve member `index` (succeeded or not) and everything that follows from it.
local function resolve(wf_key, wf_type, index, succeeded)
  local stack = {{index, succeeded}}
  while #stack > 0 do
    local item = table.remove(stack)
    local m, ok = item[1], item[2]
    local is_callback = rcall("HGET", prefix .. "job:" .. rcall("HGET", wf_key, "j" .. m), "wf_cond")
    if not is_callback then
      rcall("HINCRBY", wf_key, ok and "completed" or "failed", 1)
    end
    for _, d in ipairs(split(rcall("HGET", wf_key, "d" .. m))) do
      local djob = prefix .. "job:" .. rcall("HGET", wf_key, "j" .. d)
      local cond = rcall("HGET", djob, "wf_cond")
      if not ok and not cond then
        if cancel_member(wf_key, d) then stack[#stack + 1] = {d, false} end
      elseif rcall("HINCRBY", djob, "wf_pending", -1) == 0 then
        local failures = tonumber(rcall("HGET", wf_key, "failed") or "0")
        if not cond or cond == "always" or (cond == "success" and failures == 0)
            or (cond == "failure" and failures > 0) then
          enqueue_member(wf_key, wf_type, d)
        elseif cancel_member(wf_key, d) then
          stack[#stack + 1] = {d, false}
        end
      end
    end
  end
end

local function finish_if_done(wf_key, wf_id)
  local w = rcall("HMGET", wf_key, "total", "completed", "failed", "name", "created_at")
  local total, done, failed = tonumber(w[1]), tonumber(w[2] or "0"), tonumber(w[3] or "0")
  if done + failed < total then return end
  local final = failed == 0 and "completed" or "failed"
  rcall("HSET", wf_key, "state", final, "completed_at", now)
  emit("workflow." .. final, wf_id, {workflow_id = wf_id, workflow_name = w[4], total_steps = total,
    failed_steps = failed, duration_ms = tonumber(now) - tonumber(w[5])})
end

local handled = 0
while handled < limit do
  local id = rcall("LPOP", outbox_key)
  if not id then break end
  handled = handled + 1
  local f = rcall("HMGET", prefix .. "job:" .. id, "state", "workflow_id", "wf_index", "result", "type")
  local wf_key = f[2] and (prefix .. "workflow:" .. f[2])
  local w = wf_key and rcall("HMGET", wf_key, "state", "type", "name")
  if w and w[1] == "running" then
    local index = tonumber(f[3])
    local ok = f[1] == "completed"
    if ok then
      rcall("HSET", wf_key, "r" .. index, f[4] or "null")
      emit("workflow.step_completed", f[2], {workflow_id = f[2], workflow_name = w[3],
        step_id = id, step_type = f[5], step_index = index})
    end
    resolve(wf_key, w[2], index, ok)
    finish_if_done(wf_key, f[2])
  end
end
return handled
