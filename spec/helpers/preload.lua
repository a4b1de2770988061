-- Loaded by busted before any spec (see .busted): makes sure the specs use this tree's build, the
-- one for the Lua running them. `make test LUA=...` says where it is in DH3_SPEC_CPATH; without
-- it (busted run by hand), the Makefile's layout is followed: ./dh3/core.so for Lua 5.4 (`make`),
-- build/<lua>/dh3/core.so for the others (`make LUA=luajit`, `make LUA=lua5.1`, ...).
local function tree_cpath()
  if type(jit) == "table" then return "build/luajit/?.so", "luajit" end
  local version = _VERSION:match("^Lua (%d+%.%d+)$")
  if version == "5.4" then return "./?.so", "lua5.4" end
  return "build/lua" .. tostring(version) .. "/?.so", "lua" .. tostring(version)
end

local cpath, lua_name = tree_cpath()
cpath = os.getenv("DH3_SPEC_CPATH") or cpath
package.path = "lua/?.lua;lua/?/init.lua;spec/?.lua;" .. package.path
package.cpath = cpath .. ";" .. package.cpath
local ok, err = pcall(require, "dh3.core")
if not ok then
  local make = lua_name == "lua5.4" and "make" or "make LUA=" .. lua_name
  error("dh3.core is not built in this tree for " .. _VERSION .. " (run `" .. make .. "`): "
    .. tostring(err), 0)
end

-- DH3_SPEC_GC=aggressive (CI's sanitizer run): the collector runs all the time, so an object that
-- is freed while C still holds it, or kept alive by mistake, shows up.
if os.getenv("DH3_SPEC_GC") == "aggressive" then
  if _VERSION == "Lua 5.4" then
    collectgarbage("incremental", 10, 400)
  else
    collectgarbage("setpause", 10)
    collectgarbage("setstepmul", 400)
  end
end
