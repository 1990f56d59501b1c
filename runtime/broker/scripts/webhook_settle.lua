--[[
  Record the outcome of one delivery attempt: its log entry, and delivered, retry later or dead.
  Every failed attempt counts against the subscription; that many in a row disables it.

  State transition: delivering -> delivered | pending (retry at the given time) | dead
  Pre-conditions:
    - the delivery is delivering under this attempt  else status 3 (stale: its lease ended and
      another sender holds it now, or it was settled already); nothing is written

  KEYS[1] webhook:delivery:<id> (hash)
  KEYS[2] webhook:sub:<id>      (hash)
  KEYS[3] webhook:log:<sub id>  (list)
  KEYS[4] webhook:due           (zset)

  ARGV[1]  now_ms
  ARGV[2]  delivery id
  ARGV[3]  attempt
  ARGV[4]  "delivered" | "retry" | "dead"
  ARGV[5]  next attempt (ms) when retrying, else ""
  ARGV[6]  the log entry (JSON)
  ARGV[7]  log length kept
  ARGV[8]  consecutive failed attempts that disable the subscription (0: never)
  ARGV[9]  retention of a finished delivery's record (ms)
  ARGV[10] status code or "", ARGV[11] error or ""

  Returns: {status, disabled}  disabled is 1 when this attempt disabled the subscription
]]
local delivery_key, sub_key, log_key, due_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, id, attempt, verdict = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local d = rcall("HMGET", delivery_key, "state", "attempt")
if d[1] ~= "delivering" or d[2] ~= attempt then return {S.STALE_CLAIM, 0} end
local sub_exists = rcall("EXISTS", sub_key) == 1
if sub_exists then
  rcall("LPUSH", log_key, ARGV[6])
  rcall("LTRIM", log_key, 0, tonumber(ARGV[7]) - 1)
end
rcall("HSET", delivery_key, "updated_at", now, "last_status", ARGV[10], "last_error", ARGV[11])
if verdict == "retry" then
  rcall("HSET", delivery_key, "state", "pending", "next_attempt_at", ARGV[5])
  rcall("ZADD", due_key, ARGV[5], id)
else
  rcall("HSET", delivery_key, "state", verdict)
  rcall("HDEL", delivery_key, "next_attempt_at")
  rcall("ZREM", due_key, id)
  rcall("PEXPIRE", delivery_key, ARGV[9])
end
local disabled = 0
if sub_exists then
  if verdict == "delivered" then
    rcall("HSET", sub_key, "consecutive_failures", 0)
  else
    local failures = rcall("HINCRBY", sub_key, "consecutive_failures", 1)
    local bound = tonumber(ARGV[8])
    if bound > 0 and failures >= bound and rcall("HGET", sub_key, "active") == "1" then
      rcall("HSET", sub_key, "active", "0", "disabled_at", now,
        "disabled_reason", "disabled after " .. failures .. " failed delivery attempts in a row")
      disabled = 1
    end
  end
end
return {S.OK, disabled}
