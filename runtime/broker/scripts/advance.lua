--[[
  Advance workflows: take jobs that ended (queued by the transition that ended them, in the same
  atomic step) off the outbox and apply them to their workflow.

  A workflow is a graph of member jobs. Member i lists its dependents in field d<i> of the
  workflow hash; a waiting member keeps the number of unresolved dependencies in wf_pending.
  - A member completes: its result is kept (r<i>); each dependent's count drops; at zero the
    dependent is enqueued with parent_results = the results of its dependencies in order (for a
    chain, of every earlier step). The array is bounded: results are taken newest first while
    they fit in `parent_results_max_bytes`; older ones become null, so indexes keep their
    meaning (the immediately preceding result is always included).
  - A dependent enqueued gets `step_traces`: the `trace` field (the span context a traced pool
    recorded) of each of its dependencies that has one, space-separated.
  - A member fails (discarded or cancelled): dependents that are plain steps never run (they are
    cancelled, transitively); callbacks (wf_cond always / success / failure) only count it.
  - A callback whose dependencies are resolved runs if its condition holds, else it is cancelled.
  - When every plain member is resolved the workflow is completed (no failure) or failed.
  - A member resolves exactly once: the workflow hash marks it (x<i>), and a later outbox entry
    for it (the job was retried out of the dead letter queue, say) changes nothing. A member is
    only ever enqueued from `waiting`: one cancelled meanwhile stays cancelled.
  Each outbox entry is popped and applied in this one script, so a crash cannot apply it twice
  or lose it, and callbacks fire exactly once.

  State transitions: waiting -> available (enqueued) | cancelled (never runs);
                     workflow running -> completed | failed

  KEYS[1] prefix (derived keys: job:<id>, workflow:<id>, queue:<q>:available|counts)
  KEYS[2] workflow-outbox (list, the outbox)
  KEYS[3] seq      (string)
  KEYS[4] events   (stream)
  KEYS[5] expiring (zset; an enqueued step with expires_at must expire)

  ARGV[1] now_ms
  ARGV[2] events_maxlen   0 disables events
  ARGV[3] limit           outbox entries handled by this call
  ARGV[4] parent_results_max_bytes

  Returns: number of outbox entries handled
]]
local T = context(KEYS[1], ARGV[1], ARGV[2])
local prefix, now, limit = T.prefix, T.now, tonumber(ARGV[3])
local results_budget = tonumber(ARGV[4])

local function split(csv)
  local out = {}
  if csv then
    for part in string.gmatch(csv, "[^,]+") do out[#out + 1] = tonumber(part) end
  end
  return out
end

local function parent_results(wf_key, wf_type, index, deps)
  local members = deps
  if wf_type == "chain" then
    members = {}
    for k = 0, index - 1 do members[#members + 1] = k end
  end
  local parts, left = {}, results_budget
  for n = #members, 1, -1 do
    local r = rcall("HGET", wf_key, "r" .. members[n]) or "null"
    if n < #members and #r > left then r = "null" end
    left = left - #r
    parts[n] = r
  end
  return "[" .. table.concat(parts, ",") .. "]"
end

local function member_key(wf_key, index)
  local id = rcall("HGET", wf_key, "j" .. index)
  return job_key(T, id), id
end

-- The trace contexts a traced pool recorded on the dependencies (field `trace`), for the
-- member's span to link to: "" when none was traced.
local function step_traces(wf_key, deps)
  local traces = {}
  for _, d in ipairs(deps) do
    local dep_key = member_key(wf_key, d)
    local trace = rcall("HGET", dep_key, "trace")
    if trace then traces[#traces + 1] = trace end
  end
  return table.concat(traces, " ")
end

local function enqueue_member(wf_key, wf_type, index)
  local key, id = member_key(wf_key, index)
  local f = rcall("HMGET", key, "state", "queue", "priority", "type", "wf_deps", "expires_ms", "tenant")
  if f[1] ~= "waiting" then return end  -- cancelled meanwhile (or gone): it never runs
  local deps = split(f[5])
  rcall("HSET", key, "state", "available", "enqueued_at", now,
    "parent_results", parent_results(wf_key, wf_type, index, deps))
  local traces = step_traces(wf_key, deps)
  if traces ~= "" then rcall("HSET", key, "step_traces", traces) end
  move_count(T, f[2], nil, "available")
  count_stat(T, "enqueued", f[2], 1)
  index_available(T, id, f[2], tonumber(f[3]), f[7])
  if f[6] then rcall("ZADD", T.expiring, f[6], id) end
  emit(T, "job.enqueued", id, {job_id = id, job_type = f[4], queue = f[2], state = "available",
    workflow_id = rcall("HGET", wf_key, "id")})
end

local function cancel_member(wf_key, index)
  local key, id = member_key(wf_key, index)
  local f = rcall("HMGET", key, "state", "queue", "unique_key", "unique_states", "rl_key")
  if f[1] ~= "waiting" then return false end
  if f[5] then rcall("SREM", T.prefix .. "rl-jobs:" .. f[5], id) end
  rcall("HSET", key, "state", "cancelled", "cancelled_at", now, "previous_state", "waiting")
  move_count(T, f[2], nil, "cancelled")
  index_ended(T, id, f[2], "cancelled")
  count_stat(T, "cancelled", f[2], 1)
  release_unique(T, id, f[3], f[4], "cancelled")
  return true
end

-- Resolve member `index` (succeeded or not) and everything that follows from it; each member
-- at most once.
local function resolve(wf_key, wf_type, index, succeeded)
  local stack = {{index, succeeded}}
  while #stack > 0 do
    local item = table.remove(stack)
    local m, ok = item[1], item[2]
    if rcall("HSETNX", wf_key, "x" .. m, ok and "1" or "0") == 1 then
      local mkey = member_key(wf_key, m)
      if not rcall("HGET", mkey, "wf_cond") then
        rcall("HINCRBY", wf_key, ok and "completed" or "failed", 1)
      end
      for _, d in ipairs(split(rcall("HGET", wf_key, "d" .. m))) do
        local djob = member_key(wf_key, d)
        local dstate, cond = unpack(rcall("HMGET", djob, "state", "wf_cond"))
        if dstate ~= "waiting" then
          -- cancelled by a client before its turn: resolved through its own outbox entry
        elseif not ok and not cond then
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
end

local function finish_if_done(wf_key, wf_id)
  local w = rcall("HMGET", wf_key, "total", "completed", "failed", "name", "created_at")
  local total, done, failed = tonumber(w[1]), tonumber(w[2] or "0"), tonumber(w[3] or "0")
  if done + failed < total then return end
  local final = failed == 0 and "completed" or "failed"
  rcall("HSET", wf_key, "state", final, "completed_at", now)
  emit(T, "workflow." .. final, wf_id, {workflow_id = wf_id, workflow_name = w[4], total_steps = total,
    failed_steps = failed, duration_ms = T.now_ms - tonumber(w[5])})
end

local handled = 0
while handled < limit do
  local id = rcall("LPOP", T.outbox)
  if not id then break end
  handled = handled + 1
  local f = rcall("HMGET", job_key(T, id), "state", "workflow_id", "wf_index", "result", "type")
  local wf_key = f[2] and (prefix .. "workflow:" .. f[2])
  local w = wf_key and rcall("HMGET", wf_key, "state", "type", "name")
  local index = tonumber(f[3])
  if w and w[1] == "running" and TERMINAL[f[1]] and rcall("HEXISTS", wf_key, "x" .. index) == 0 then
    local ok = f[1] == "completed"
    if ok then
      rcall("HSET", wf_key, "r" .. index, f[4] or "null")
      emit(T, "workflow.step_completed", f[2], {workflow_id = f[2], workflow_name = w[3],
        step_id = id, step_type = f[5], step_index = index})
    end
    resolve(wf_key, w[2], index, ok)
    finish_if_done(wf_key, f[2])
  end
end
return handled
