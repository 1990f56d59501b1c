--[[
  Create a webhook subscription, within the bound on their number. It records the newest event
  (`after_event`): it receives only the events after it, on the stream's own clock. The first
  subscription of a namespace also starts the fan-out cursor there, so the backlog of the
  stream is never walked for nobody.

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
local last = rcall("XREVRANGE", events_key, "+", "-", "COUNT", 1)
local newest = last[1] and last[1][1] or "0-0"
if count == 0 or rcall("EXISTS", cursor_key) == 0 then
  rcall("SET", cursor_key, newest)
end
local fields = {"after_event", newest}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
rcall("HSET", sub_key, unpack(fields))
rcall("ZADD", subs_key, now, sub_id)
return {S.OK}
