--[[
  Change fields of an existing webhook subscription (PATCH, secret rotation, re-activation).

  State transition: subscription -> subscription (as given)

  KEYS[1] webhook:sub:<id>  (hash)

  ARGV[1] number of fields to delete
  then the names of the fields to delete, then field, value pairs to set

  Returns: {status}  S.OK, or S.NOT_FOUND (nothing is written: a deleted subscription stays gone)
]]
local sub_key = KEYS[1]
if rcall("EXISTS", sub_key) == 0 then return {S.NOT_FOUND} end
local deletes = tonumber(ARGV[1])
if deletes > 0 then rcall("HDEL", sub_key, unpack(ARGV, 2, 1 + deletes)) end
if #ARGV > 1 + deletes then rcall("HSET", sub_key, unpack(ARGV, 2 + deletes, #ARGV)) end
return {S.OK}
