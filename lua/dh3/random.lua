-- Random identifiers from the kernel (/dev/urandom): the webhook receiver's secret path segment
-- and the journal's local ids must be unguessable, and unique across processes.
local M = {}

--- `bytes` random bytes as 2 * bytes lowercase hex digits, or nil, message when the kernel's
-- source cannot be read.
function M.hex(bytes)
  local f = io.open("/dev/urandom", "rb")
  local raw = f and f:read(bytes)
  if f then f:close() end
  if not raw or #raw ~= bytes then return nil, "cannot read /dev/urandom" end
  return (raw:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

return M
