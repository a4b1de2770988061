-- `make env`: the shell lines with which a script of one's own, anywhere, finds this tree's dh3
-- (eval "$(make -s env)"), as the README's Install section says.
local function sh(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end

local function capture(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local ok = p:close()
  return ok, out
end

local tree = assert(io.popen("pwd")):read("l")

-- Runs `body` in a fresh shell (no Lua paths of busted's, no make of an outer make) from the
-- folder `dir`, after eval "$(make -s -C TREE env)". `before`: shell lines to run first.
local function in_fresh_shell(dir, body, before)
  local script = table.concat({
    "cd " .. sh(dir),
    before or ":",
    'eval "$(make -s -C ' .. sh(tree) .. ' env)"',
    body,
  }, "\n")
  return capture("env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u MAKEFLAGS -u MAKELEVEL "
    .. "-u MFLAGS sh -c " .. sh(script))
end

describe("make env", function()
  local dir
  before_each(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. sh(dir)))
    local f = assert(io.open(dir .. "/my_script.lua", "w"))
    f:write([[
local dh3 = require "dh3"
print(dh3.VERSION)
print(package.searchpath("dh3.core", package.cpath))
print(type(dh3.now()), require("cjson") ~= nil)
print(package.path)
]])
    f:close()
  end)
  after_each(function()
    os.execute("rm -rf " .. sh(dir))
  end)

  it("prints only export lines, for eval", function()
    local ok, out = capture("env -u MAKEFLAGS -u MAKELEVEL make -s -C " .. sh(tree) .. " env")
    assert.is_true(ok, out)
    for line in out:gmatch("[^\n]+") do assert.matches("^export [%w_]+=", line) end
    assert.matches("LUA_PATH_5_4", out, 1, true)
    assert.matches("LUA_CPATH_5_4", out, 1, true)
  end)

  it("lets `lua5.4 my_script.lua` in another folder find this tree's dh3, and Lua's own modules", function()
    local ok, out = in_fresh_shell(dir, "lua5.4 my_script.lua")
    assert.is_true(ok, out)
    local version, core, kinds, path = out:match("^(%S+)\n(%S+)\n(.-)\n(.-)\n$")
    assert.are.equal(require("dh3").VERSION, version, out)
    assert.are.equal(tree .. "/dh3/core.so", core)
    assert.are.equal("number\ttrue", kinds)
    assert.are.equal(tree .. "/lua/?.lua;", path:sub(1, #tree + 11))
  end)

  it("fails the same script without it: the test above means something", function()
    local ok, out = capture("cd " .. sh(dir) .. " && env -u LUA_PATH -u LUA_PATH_5_4 -u LUA_CPATH -u LUA_CPATH_5_4 "
      .. "lua5.4 my_script.lua")
    assert.is_falsy(ok)
    assert.matches("module 'dh3' not found", out, 1, true)
  end)

  it("keeps what LUA_PATH_5_4 held, behind the tree", function()
    local ok, out = in_fresh_shell(dir, "lua5.4 my_script.lua", "export LUA_PATH_5_4='/opt/mine/?.lua;;'")
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
