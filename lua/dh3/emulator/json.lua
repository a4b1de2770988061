-- JSON for the emulator through a private lua-cjson instance (the host's own cjson settings are
-- never touched), plus the one thing Debian's cjson 2.1.0 cannot say: an empty array.
local cjson = require("cjson").new()

local M = {}

-- cjson encodes every empty table as {}; this sentinel string is swapped for [] after encoding
local EMPTY_ARRAY_MARK = "@@dh3-emulator-empty-array@@"

--- Use as a value to encode an empty JSON array.
M.EMPTY_ARRAY = setmetatable({}, { __name = "dh3.emulator.json.EMPTY_ARRAY" })

M.null = cjson.null

local function mark_empty_arrays(v)
  if v == M.EMPTY_ARRAY then return EMPTY_ARRAY_MARK end
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = mark_empty_arrays(x) end
  return out
end

--- Encodes v (tables, strings, numbers, booleans, M.null, M.EMPTY_ARRAY).
function M.encode(v)
  local s = cjson.encode(mark_empty_arrays(v))
  if s:find(EMPTY_ARRAY_MARK, 1, true) then
    s = s:gsub(('"' .. EMPTY_ARRAY_MARK .. '"'):gsub("%p", "%%%0"), "[]")
  end
  return s
end

--- Decodes s; returns the value, or nil, message.
function M.decode(s)
  local ok, v = pcall(cjson.decode, s)
  if not ok then return nil, tostring(v) end
  return v
end

return M
