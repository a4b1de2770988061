-- Every ```lua example of README.md runs as it is against a fresh emulator, so the docs cannot
-- drift from the code. And each is one a user can copy against the paid service: the requests it
-- makes are counted, and a loop that reads without pausing fails here.
-- The examples are written for Lua 5.4, as the README is (they close their client with
-- `local client <close>`): they run under lua5.4 with its build, and only when the specs run under
-- 5.4 (`make test`); under another Lua they are pending.
local emulator = require "helpers.emulator"
local lua = require "helpers.lua"

-- At most this many status reads per example: a polling loop with a pause makes a handful in
-- these examples' second or so; one without makes thousands.
local MAX_READS = 100

-- The status reads the emulator has answered so far, whatever their outcome.
local function reads(emu)
  local n = 0
  for _, count in pairs(emu:stats().requests["GET /api/v1/task/get"] or {}) do n = n + count end
  return n
end

local function lua_blocks(path)
  local f = assert(io.open(path))
  local text = f:read("*a")
  f:close()
  local blocks = {}
  for body in text:gmatch("\n```lua\n(.-)\n```") do blocks[#blocks + 1] = body end
  return blocks
end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end

describe("README.md", function()
  local blocks = lua_blocks("README.md")
  it("has examples", function() assert.is_true(#blocks >= 6) end)

  if lua.version ~= "5.4" then
    pending("its Lua examples run under Lua 5.4 only: they are written for 5.4 (`local client <close>`), "
      .. "and these specs run under " .. (lua.jit and "LuaJIT" or _VERSION))
    return
  end

  local emu, out
  setup(function()
    emu = emulator.start{ "--queue-time", "0.2", "--process-time", "0.3" }
    out = os.tmpname()
    os.remove(out)
    assert(os.execute("mkdir " .. out))
  end)
  teardown(function()
    emu:stop()
    os.execute("rm -rf " .. out)
  end)

  for i, code in ipairs(blocks) do
    local first = code:match("[^\n]*\n[^\n]*") -- enough to name it
    it(("example %d runs: %s"):format(i, first:gsub("\n", " / ")), function()
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write(code)
      f:close()
      local reads_before = reads(emu)
      local cmd = table.concat({
        "cd", shell_quote(os.getenv("PWD") or "."), "&&",
        "DH3_API_KEY=" .. shell_quote(emu.key), "DH3_BASE_URL=" .. shell_quote(emu.url),
        "DH3_OUT=" .. shell_quote(out),
        "LUA_PATH_5_4='lua/?.lua;lua/?/init.lua;;' LUA_CPATH_5_4='./?.so;;'",
        "lua5.4", shell_quote(script), "2>&1",
      }, " ")
      local p = io.popen(cmd)
      local output = p:read("*a")
      local ok = p:close()
      os.remove(script)
      assert.is_true(ok, output)
      assert.is_nil(output:find("traceback", 1, true), output)
      local n = reads(emu) - reads_before
      assert.is_true(n <= MAX_READS, ("it read task status %d times: pause between reads (client:sleep)"):format(n))
    end)
  end
end)
