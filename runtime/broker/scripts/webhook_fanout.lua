--[[
  Turn events read from the stream into deliveries, and move the fan-out cursor past them, in
  one step: an event is fanned out once, however many servers read it and whenever one dies.

  State transition: event (stream entry) -> one pending delivery per matching subscription
  Pre-conditions:
    - the cursor is still the one the events were read after  else status 2: another server
      fanned them out first, nothing is written

  KEYS[1] prefix (derived keys: webhook:delivery:<id>)
  KEYS[2] webhook:cursor (string)
  KEYS[3] webhook:due    (zset)

  ARGV[1] now_ms
  ARGV[2] the cursor the events were read after ("" when there was none)
  ARGV[3] the new cursor (the id of the last event read)
  ARGV[4] the bound on pending deliveries
  then per delivery: id, subscription id, event type, body (4 values each)

  Returns: {status, created, dropped}  dropped: deliveries not made, the bound being reached
]]
local prefix, cursor_key, due_key = KEYS[1], KEYS[2], KEYS[3]
local now, expected, new_cursor, bound = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

if (rcall("GET", cursor_key) or "") ~= expected then return {S.CONFLICT, 0, 0} end
rcall("SET", cursor_key, new_cursor)
local pending = rcall("ZCARD", due_key)
local created, dropped = 0, 0
for a = 5, #ARGV, 4 do
  local id = ARGV[a]
  local key = prefix .. "webhook:delivery:" .. id
  if pending >= bound then
    dropped = dropped + 1
  elseif rcall("EXISTS", key) == 0 then
    rcall("HSET", key, "id", id, "subscription_id", ARGV[a + 1], "event_type", ARGV[a + 2], "body", ARGV[a + 3],
      "attempt", 0, "state", "pending", "created_at", now, "updated_at", now)
    rcall("ZADD", due_key, now, id)
    pending, created = pending + 1, created + 1
  end
end
return {S.OK, created, dropped}
