--[[
  Delete a dead-lettered job for good (the job record goes with it).

  State transition: discarded (in the dead letter set) -> (deleted)
  Pre-conditions:
    - the job is in the dead letter set     else NOT_FOUND
    - it is not a member of a workflow that is still running (its outcome may not be applied
      to the workflow yet: the advance step reads the member)            else CONFLICT

  KEYS[1] prefix (derived keys: queue:<q>:counts|dlq and the fixed keys)
  KEYS[2] job:<id>  (hash)

  ARGV[1] job id

  Returns: {status}
]]
local T = context(KEYS[1], "0", "0")
local key, id = KEYS[2], ARGV[1]

local f = rcall("HMGET", key, "state", "queue", "workflow_id")
if rcall("ZSCORE", T.dlq, id) == false then
  return {S.NOT_FOUND}
end
if f[3] and rcall("HGET", T.prefix .. "workflow:" .. f[3], "state") == "running" then
  return {S.CONFLICT, f[3]}
end
dead_letter_remove(T, id, f[2])
if f[1] then
  move_count(T, f[2], f[1], nil)
  unindex_ended(T, id, f[2], f[1])
end
rcall("DEL", key)
rcall("ZREM", T.expiring, id)
return {S.OK}
