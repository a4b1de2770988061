-- `make env`: the shell lines with which a script of one's own, anywhere, finds this tree's dh3
-- (eval "$(make -s env)"), as the README's Install section says: `make -s env LUA=...` for the Lua
-- being tested, which then runs the script.
local lua = require "helpers.lua"
local files = require "helpers.files"
local sh, write_file = files.quote, files.write_file

local function capture(cmd)
  local p = lua.popen(cmd .. " 2>&1")
  local out = p:read("*a")
  local ok = p:close()
  return ok, out
end

local tree = assert(io.popen("pwd")):read("*l")

-- the Lua being tested, and the variables it reads: LUA_PATH_5_N on 5.2 to 5.4, plain LUA_PATH on
-- 5.1 and LuaJIT
local LUA = sh(lua.interpreter)
local SUFFIX = lua.version == "5.1" and "" or "_" .. lua.version:gsub("%.", "_")
local LUA_PATH, LUA_CPATH = "LUA_PATH" .. SUFFIX, "LUA_CPATH" .. SUFFIX
local UNSET = "-u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_2 -u LUA_CPATH_5_2 -u LUA_PATH_5_3 -u LUA_CPATH_5_3 "
  .. "-u LUA_PATH_5_4 -u LUA_CPATH_5_4"
-- where its build of dh3.core is (./dh3/core.so for 5.4, build/<lua>/dh3/core.so for the others)
local CORE = (assert(lua.core_file, "dh3.core is not built for " .. lua.interpreter):gsub("/%./", "/"))

-- Runs `body` in a fresh shell (no Lua paths of busted's, no make of an outer make) from the
-- folder `dir`, after eval "$(make -s -C TREE env)". `before`: shell lines to run first.
local function in_fresh_shell(dir, body, before)
  local script = table.concat({
    "cd " .. sh(dir),
    before or ":",
    'eval "$(make -s -C ' .. sh(tree) .. ' env LUA=' .. LUA .. ')"',
    body,
  }, "\n")
  return capture("env " .. UNSET .. " -u MAKEFLAGS -u MAKELEVEL -u MFLAGS sh -c " .. sh(script))
end

describe("make env", function()
  local dir
  before_each(function()
    dir = files.tmpdir()
    write_file(dir .. "/my_script.lua", [[
local dh3 = require "dh3"
print(dh3.VERSION)
-- package.searchpath("dh3.core", package.cpath), which Lua 5.1 does not have
local found
for template in package.cpath:gmatch("[^;]+") do
  local path = template:gsub("%?", "dh3/core")
  local f = not found and io.open(path, "rb")
  if f then f:close(); found = path end
end
print(found)
print(type(dh3.now()), require("cjson") ~= nil)
print(package.path)
]])
  end)
  after_each(function()
    files.rm_rf(dir)
  end)

  it("prints only export lines, for eval", function()
    local ok, out = capture("env -u MAKEFLAGS -u MAKELEVEL make -s -C " .. sh(tree) .. " env LUA=" .. LUA)
    assert.is_true(ok, out)
    for line in out:gmatch("[^\n]+") do assert.matches("^export [%w_]+=", line) end
    assert.matches("export " .. LUA_PATH .. "=", out, 1, true)
    assert.matches("export " .. LUA_CPATH .. "=", out, 1, true)
  end)

  it("lets `lua my_script.lua` in another folder find this tree's dh3, and Lua's own modules", function()
    local ok, out = in_fresh_shell(dir, LUA .. " my_script.lua")
    assert.is_true(ok, out)
    local version, core, kinds, path = out:match("^(%S+)\n(%S+)\n(.-)\n(.-)\n$")
    assert.are.equal(require("dh3").VERSION, version, out)
    assert.are.equal(CORE, core)
    assert.are.equal("number\ttrue", kinds)
    assert.are.equal(tree .. "/lua/?.lua;", path:sub(1, #tree + 11))
  end)

  it("fails the same script without it: the test above means something", function()
    local ok, out = capture("cd " .. sh(dir) .. " && env " .. UNSET .. " " .. LUA .. " my_script.lua")
    assert.is_falsy(ok)
    assert.matches("module 'dh3' not found", out, 1, true)
  end)

  it("keeps what " .. LUA_PATH .. " held, behind the tree", function()
    local ok, out = in_fresh_shell(dir, LUA .. " my_script.lua", "export " .. LUA_PATH .. "='/opt/mine/?.lua;;'")
    assert.is_true(ok, out)
    local path = out:match("([^\n]*)\n$")
    assert.are.equal(tree .. "/lua/?.lua;", path:sub(1, #tree + 11))
    assert.matches(";/opt/mine/?.lua;", path, 1, true)
  end)

  it("puts the tree's commands on PATH", function()
    local ok, out = in_fresh_shell(dir, "dh3 --version && dh3-emulator --version")
    assert.is_true(ok, out)
    assert.matches("^dh3 %d+%.%d+%.%d+", out)
    assert.matches("\ndh3%-emulator %d+%.%d+%.%d+\n$", out)
  end)
end)
