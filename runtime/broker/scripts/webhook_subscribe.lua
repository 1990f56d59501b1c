--[[
  Create a webhook subscription, within the bound on their number. The first subscription of a
  namespace starts the fan-out cursor at the newest event: deliveries begin with the events that
  follow it, never with the backlog of the capped stream.

  State transition: none -> subscription (active as given)

  KEYS[1] webhook:subs      (zset)
  KEYS[2] webhook:sub:<id>  (hash)
  KEYS[3] webhook:cursor    (string)
  KEYS[4] events            (stream)

  ARGV[1] now_ms
  ARGV[2] subscription id
  ARGV[3] the bound on subscriptions
  then field, value pairs of the subscription hash

  Returns: {status}  S.OK, or S.CONFLICT when the bound is reached
]]
local subs_key, sub_key, cursor_key, events_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, sub_id, bound = ARGV[1], ARGV[2], tonumber(ARGV[3])

local count = rcall("ZCARD", subs_key)
if count >= bound then return {S.CONFLICT} end
if count == 0 or rcall("EXISTS", cursor_key) == 0 then
  local newest = rcall("XREVRANGE", events_key, "+", "-", "COUNT", 1)
  rcall("SET", cursor_key, newest[1] and newest[1][1] or "0-0")
end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
rcall("HSET", sub_key, unpack(fields))
rcall("ZADD", subs_key, now, sub_id)
return {S.OK}
