--[[
  Advance workflows: take jobs that ended (queued by the transition that ended them, in the same
  atomic step) off the outbox and apply them to their workflow.

  A workflow is a graph of member jobs (nested chains, groups and batches are flattened into it
  by workflow_plan.py). Member i lists its dependents in field d<i> of the workflow hash; a
  waiting member keeps the number of unresolved dependencies in wf_pending.
  - A member completes: its result is kept (r<i>); each dependent's count drops; at zero the
    dependent is enqueued with parent_results from its context wf_ctx "<k>:<n>" (the first n
    result expressions of sequence q<k>: the earlier steps of its chain, or a batch's jobs,
    nested parts as arrays of their jobs' results); without a context, the results of its
    dependencies in order (for a chain, of every earlier step). The array is bounded: entries
    are taken newest first while they fit in `parent_results_max_bytes`; older ones become
    null, so indexes keep their meaning (the immediately preceding entry is always included).
  - A dependent enqueued gets `step_traces`: the `trace` field (the span context a traced pool
    recorded) of each of its dependencies that has one, space-separated.
  - A member fails (discarded or cancelled): dependents that are plain steps never run (they are
    cancelled, transitively); callbacks (wf_cond always / success / failure) count it in their
    own wf_failed, so a nested batch's callbacks judge by their own batch's jobs.
  - A callback whose dependencies are resolved runs if its condition holds, else it is cancelled
    as skipped: what follows it (after a nested batch) treats that as no failure.
  - The workflow ends when `open`, the members it waits for (plain ones and nested batches'
    callbacks, wf_awaited), reaches zero: completed if none of them failed, else failed. Records
    written before nesting have no `open`: they end when every plain member is resolved.
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

-- A result expression (workflow_plan): a member index is that member's stored result (null
-- when it has none), an array is a nested part's results in job order.
local function render(wf_key, expr)
  if type(expr) == "number" then return rcall("HGET", wf_key, "r" .. expr) or "null" end
  local parts = {}
  for n, e in ipairs(expr) do parts[n] = render(wf_key, e) end
  return "[" .. table.concat(parts, ",") .. "]"
end

-- What member `index` receives: the first <count> expressions of sequence q<k> for a context
-- "<k>:<count>"; without one (the depends_on form, and records written before nesting), its
-- dependencies, or for a chain every earlier step.
local function parent_results(wf_key, wf_type, index, deps, context)
  local items = deps
  local k, count = string.match(context or "", "^(%d+):(%d+)$")
  if k then
    local sequence = cjson.decode(rcall("HGET", wf_key, "q" .. k))
    items = {}
    for n = 1, tonumber(count) do items[n] = sequence[n] end
  elseif wf_type == "chain" then
    items = {}
    for m = 0, index - 1 do items[#items + 1] = m end
  end
  local parts, left = {}, results_budget
  for n = #items, 1, -1 do
    local r = render(wf_key, items[n])
    if n < #items and #r > left then r = "null" end
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
  local f = rcall("HMGET", key, "state", "queue", "priority", "type", "wf_deps", "expires_ms", "tenant", "wf_ctx")
  if f[1] ~= "waiting" then return end  -- cancelled meanwhile (or gone): it never runs
  local deps = split(f[5])
  rcall("HSET", key, "state", "available", "enqueued_at", now,
    "parent_results", parent_results(wf_key, wf_type, index, deps, f[8]))
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
  local f = rcall("HMGET", key, "state", "queue", "unique_key", "unique_states", "rl_key", "tenant")
  if f[1] ~= "waiting" then return false end
  end_partitions(T, id, f[5], f[6], "cancelled")
  rcall("HSET", key, "state", "cancelled", "cancelled_at", now, "previous_state", "waiting")
  move_count(T, f[2], nil, "cancelled")
  index_ended(T, id, f[2], "cancelled")
  count_stat(T, "cancelled", f[2], 1)
  release_unique(T, id, f[3], f[4], "cancelled")
  return true
end

-- Whether a callback runs, once its dependencies are resolved: by the failures among them (its
-- batch's jobs), or, in records written before nesting (no `open` field), the workflow's.
local function condition_holds(wf_key, counts_open, djob, cond)
  if not cond or cond == "always" then return true end
  local failures
  if counts_open then
    failures = tonumber(rcall("HGET", djob, "wf_failed") or "0")
  else
    failures = tonumber(rcall("HGET", wf_key, "failed") or "0")
  end
  return (cond == "success" and failures == 0) or (cond == "failure" and failures > 0)
end

-- Resolve member `index` and everything that follows from it; each member at most once. An
-- outcome is "ok" (completed), "failed" (discarded, cancelled) or "skipped" (a callback whose
-- condition did not hold: cancelled, but no failure for what follows it).
local function resolve(wf_key, wf_type, counts_open, index, outcome)
  local stack = {{index, outcome}}
  while #stack > 0 do
    local item = table.remove(stack)
    local m, how = item[1], item[2]
    local failed = how == "failed"
    if rcall("HSETNX", wf_key, "x" .. m, how == "ok" and "1" or (failed and "0" or "s")) == 1 then
      local c = rcall("HMGET", member_key(wf_key, m), "wf_cond", "wf_awaited")
      if not c[1] then
        rcall("HINCRBY", wf_key, failed and "failed" or "completed", 1)
      elseif c[2] and failed then
        rcall("HINCRBY", wf_key, "callbacks_failed", 1)  -- a nested batch failed through it
      end
      if (not c[1] or c[2]) and counts_open then
        rcall("HINCRBY", wf_key, "open", -1)
      end
      for _, d in ipairs(split(rcall("HGET", wf_key, "d" .. m))) do
        local djob = member_key(wf_key, d)
        local dstate, cond = unpack(rcall("HMGET", djob, "state", "wf_cond"))
        if dstate ~= "waiting" then
          -- cancelled by a client before its turn: resolved through its own outbox entry
        elseif failed and not cond then
          if cancel_member(wf_key, d) then stack[#stack + 1] = {d, "failed"} end
        else
          if failed then rcall("HINCRBY", djob, "wf_failed", 1) end
          if rcall("HINCRBY", djob, "wf_pending", -1) == 0 then
            if condition_holds(wf_key, counts_open, djob, cond) then
              enqueue_member(wf_key, wf_type, d)
            elseif cancel_member(wf_key, d) then
              stack[#stack + 1] = {d, "skipped"}
            end
          end
        end
      end
    end
  end
end

-- The workflow ends when no member it waits for is left (records written before nesting: when
-- every plain member is resolved); it failed if a plain member or a nested batch's callback did.
local function finish_if_done(wf_key, wf_id)
  local w = rcall("HMGET", wf_key, "total", "completed", "failed", "name", "created_at", "open", "callbacks_failed")
  local total, done, failed = tonumber(w[1]), tonumber(w[2] or "0"), tonumber(w[3] or "0")
  if w[6] then
    if tonumber(w[6]) > 0 then return end
  elseif done + failed < total then
    return
  end
  local final = (failed == 0 and not w[7]) and "completed" or "failed"
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
  local w = wf_key and rcall("HMGET", wf_key, "state", "type", "name", "open")
  local index = tonumber(f[3])
  if w and w[1] == "running" and TERMINAL[f[1]] and rcall("HEXISTS", wf_key, "x" .. index) == 0 then
    local ok = f[1] == "completed"
    if ok then
      rcall("HSET", wf_key, "r" .. index, f[4] or "null")
      emit(T, "workflow.step_completed", f[2], {workflow_id = f[2], workflow_name = w[3],
        step_id = id, step_type = f[5], step_index = index})
    end
    resolve(wf_key, w[2], w[4] ~= false, index, ok and "ok" or "failed")
    finish_if_done(wf_key, f[2])
  end
end
return handled
