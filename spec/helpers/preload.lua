-- Loaded by busted before any spec (see .busted): makes sure the specs use this tree's build.
package.path = "lua/?.lua;lua/?/init.lua;spec/?.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath
local ok, err = pcall(require, "dh3.core")
if not ok then
  error("dh3.core is not built in this tree (run `make`): " .. tostring(err), 0)
end

-- DH3_SPEC_GC=aggressive (CI's valgrind run): the collector runs all the time, so an object that
-- is freed while C still holds it, or kept alive by mistake, shows up.
if os.getenv("DH3_SPEC_GC") == "aggressive" then
  collectgarbage("incremental", 10, 400)
end
