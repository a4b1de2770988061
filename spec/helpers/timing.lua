-- How much slower than usual this run is: timing bounds in specs are multiplied by SLOW, which is
-- larger under valgrind or the sanitizers (CI runs the whole suite under both) and with the
-- aggressive collector.
local M = { SLOW = 1 }

local f = io.open("/proc/self/maps", "r")
local maps = f and f:read("*a") or ""
if f then f:close() end
if maps:find("vgpreload", 1, true) then
  M.SLOW = 25
elseif maps:find("libasan", 1, true) then
  M.SLOW = 4
end
-- a collector that runs all the time (spec/helpers/preload.lua) costs as much again
if os.getenv("DH3_SPEC_GC") == "aggressive" then M.SLOW = M.SLOW * 2 end

return M
