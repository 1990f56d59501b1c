--[[
  Take or keep the fan-out role: one server process at a time reads the event stream for
  webhooks (they would all read and build the same batch, and all but one lose its cursor
  check). The holder keeps it while it renews; another takes it once a dead holder's lease ends.

  State transition: webhook:fanout-lease free or held by this process -> held by this process

  KEYS[1] webhook:fanout-lease (string)

  ARGV[1] this process' id
  ARGV[2] lease_ms

  Returns: {held}  1 when this process holds the role now, else 0
]]
local lease_key, holder, lease_ms = KEYS[1], ARGV[1], ARGV[2]
local current = rcall("GET", lease_key)
if current and current ~= holder then return {0} end
rcall("SET", lease_key, holder, "PX", lease_ms)
return {1}
