--[[
  Delete ended jobs for good (the job record goes with its index entries): the admin API's
  delete, bulk delete and purge.

  State transition: completed | cancelled | discarded -> (deleted)
  Pre-conditions (per job; a failing job does not stop the others):
    - the job exists                                         else NOT_FOUND
    - it has ended (a live job is cancelled first)           else CONFLICT, with its state
    - it is not a member of a workflow that is still running (the workflow reads its members'
      results and states as it advances)                     else CONFLICT, state "workflow"
    - it was not cancelled while running with that run still possibly going (cancelled_run_until
      not passed: the run keeps its rate-limit slot and may still write its progress)
                                                             else CONFLICT, state "cancelled_running"

  KEYS[1] prefix (derived keys: job:<id>, queue:<q>:counts|dlq|<state>, unique:<fp>,
                 workflow:<id> and the fixed keys)

  ARGV[1] now_ms
  ARGV[2] mode: "ids" | "range"
  mode "ids":   ARGV[3..] job ids
  mode "range": ARGV[3] queue, ARGV[4] state (completed | cancelled | discarded),
                ARGV[5] max score (ms, inclusive: jobs that ended at or before it),
                ARGV[6] limit, ARGV[7] offset: entries at the min score kept by earlier calls
                (members of running workflows stay in the index), ARGV[8] min score (ms,
                inclusive; "" or absent: -inf)

  Returns: mode "ids": one {status, state} per id;
           mode "range": {deleted, skipped, examined, score of the last entry kept ("" when
           none was), entries kept at that score}
]]
local T = context(KEYS[1], ARGV[1], "0")
local now_ms = T.now_ms

local function delete_one(id)
  local key = job_key(T, id)
  local f = rcall("HMGET", key, "state", "queue", "workflow_id", "unique_key", "cancelled_run_until")
  if not f[1] then return S.NOT_FOUND, "" end
  if not TERMINAL[f[1]] then return S.CONFLICT, f[1] end
  if f[3] and rcall("HGET", T.prefix .. "workflow:" .. f[3], "state") == "running" then
    return S.CONFLICT, "workflow"
  end
  if f[1] == "cancelled" and (tonumber(f[5]) or 0) > now_ms then
    return S.CONFLICT, "cancelled_running"
  end
  unindex_ended(T, id, f[2], f[1])
  dead_letter_remove(T, id, f[2])
  move_count(T, f[2], f[1], nil)
  if f[4] then
    local lock = T.prefix .. "unique:" .. f[4]
    if rcall("GET", lock) == id then rcall("DEL", lock) end
  end
  rcall("ZREM", T.expiring, id)
  rcall("DEL", key)
  return S.OK, f[1]
end

if ARGV[2] == "ids" then
  local out = {}
  for a = 3, #ARGV do
    local status, state = delete_one(ARGV[a])
    out[#out + 1] = {status, state}
  end
  return out
end

local index = queue_key(T, ARGV[3], ARGV[4])
local low = (ARGV[8] and ARGV[8] ~= "") and ARGV[8] or "-inf"
local rows = rcall("ZRANGEBYSCORE", index, low, ARGV[5], "WITHSCORES", "LIMIT", tonumber(ARGV[7]), tonumber(ARGV[6]))
local deleted, skipped = 0, 0
local kept_score, kept_there = "", 0
for i = 1, #rows, 2 do
  local id, score = rows[i], rows[i + 1]
  local status = delete_one(id)
  if status == S.OK then
    deleted = deleted + 1
  elseif status == S.NOT_FOUND then
    rcall("ZREM", index, id)  -- an entry whose job is gone: nothing else to undo
  else
    skipped = skipped + 1
    if score == kept_score then kept_there = kept_there + 1 else kept_score, kept_there = score, 1 end
  end
end
return {deleted, skipped, #rows / 2, kept_score, kept_there}
