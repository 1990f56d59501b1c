--[[
  Delete ended jobs for good (the job record goes with its index entries): the admin API's
  delete, bulk delete and purge.

  State transition: completed | cancelled | discarded -> (deleted)
  Pre-conditions (per job; a failing job does not stop the others):
    - the job exists                                         else NOT_FOUND
    - it has ended (a live job is cancelled first)           else CONFLICT, with its state
    - it is not a member of a workflow that is still running (the workflow reads its members'
      results and states as it advances)                     else CONFLICT, state "workflow"

  KEYS[1] prefix (derived keys: job:<id>, queue:<q>:counts|dlq|<state>, unique:<fp>,
                 workflow:<id> and the fixed keys)

  ARGV[1] mode: "ids" | "range"
  mode "ids":   ARGV[2..] job ids
  mode "range": ARGV[2] queue, ARGV[3] state (completed | cancelled | discarded),
                ARGV[4] max score (ms, inclusive: jobs that ended at or before it),
                ARGV[5] limit, ARGV[6] offset (entries skipped by earlier calls: members of
                running workflows stay in the index)

  Returns: mode "ids": one {status, state} per id;
           mode "range": {deleted, skipped, examined}
]]
local T = context(KEYS[1], "0", "0")

local function delete_one(id)
  local key = job_key(T, id)
  local f = rcall("HMGET", key, "state", "queue", "workflow_id", "unique_key")
  if not f[1] then return S.NOT_FOUND, "" end
  if not TERMINAL[f[1]] then return S.CONFLICT, f[1] end
  if f[3] and rcall("HGET", T.prefix .. "workflow:" .. f[3], "state") == "running" then
    return S.CONFLICT, "workflow"
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

if ARGV[1] == "ids" then
  local out = {}
  for a = 2, #ARGV do
    local status, state = delete_one(ARGV[a])
    out[#out + 1] = {status, state}
  end
  return out
end

local index = queue_key(T, ARGV[2], ARGV[3])
local ids = rcall("ZRANGEBYSCORE", index, "-inf", ARGV[4], "LIMIT", tonumber(ARGV[6]), tonumber(ARGV[5]))
local deleted, skipped = 0, 0
for _, id in ipairs(ids) do
  local status = delete_one(id)
  if status == S.OK then
    deleted = deleted + 1
  elseif status == S.NOT_FOUND then
    rcall("ZREM", index, id)  -- an entry whose job is gone: nothing else to undo
  else
    skipped = skipped + 1
  end
end
return {deleted, skipped, #ids}
