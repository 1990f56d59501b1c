--[[
  Send a dead or cancelled webhook delivery again from now, with a fresh attempt count: the
  check and the write in one step (a record whose retention ends meanwhile is not written back
  as a partial hash; of two retries at once, one is sent).

  State transition: dead | cancelled -> pending

  KEYS[1] webhook:delivery:<id>  (hash)
  KEYS[2] webhook:due            (zset)

  ARGV[1] now_ms
  ARGV[2] delivery id

  Returns: {status, state}  S.OK; S.NOT_FOUND; S.CONFLICT with the state the delivery is in
]]
local key, due_key = KEYS[1], KEYS[2]
local state = rcall("HGET", key, "state")
if not state then return {S.NOT_FOUND, ""} end
if state ~= "dead" and state ~= "cancelled" then return {S.CONFLICT, state} end
rcall("HSET", key, "state", "pending", "attempt", 0, "updated_at", ARGV[1])
rcall("PERSIST", key)
rcall("ZADD", due_key, ARGV[1], ARGV[2])
return {S.OK, "pending"}
