-- dh3 compiled into a C program that embeds Lua 5.4 (make embed): examples/embed/host.c runs its
-- script from a C string, from an empty folder, with Lua's search paths pointing nowhere, so every
-- module it uses (the Lua layer, dh3.core, cjson) can only come from inside the program.
-- Written in the Lua every interpreter accepts (the suite also runs under LuaJIT).
local emulator = require "helpers.emulator"

local files = require "helpers.files"
local shell_quote, run = files.quote, files.run

local tmpdir = files.tmpdir

local function files_in(dir)
  local _, out = run("ls -A " .. shell_quote(dir))
  local names = {}
  for name in out:gmatch("[^\n]+") do names[#names + 1] = name end
  return names
end

describe("make embed: dh3 compiled into a C host", function()
  local root = os.getenv("PWD") or "."
  local host = root .. "/build/embed/host"
  local emu, dir

  setup(function()
    local status, out = run("make -s embed")
    assert(status == 0, "make embed failed:\n" .. out)
    emu = emulator.start{ "--queue-time", "0", "--process-time", "0.2" }
  end)
  teardown(function()
    if emu then emu:stop() end
  end)
  before_each(function() dir = tmpdir() end)
  after_each(function() run("rm -rf " .. shell_quote(dir)) end)

  -- the host, run from the empty folder dir, where nothing could be found on disk
  local function run_host(key)
    return run(table.concat({
      "cd", shell_quote(dir), "&&", "env",
      "LUA_PATH=/nonexistent/?.lua", "LUA_PATH_5_4=/nonexistent/?.lua",
      "LUA_CPATH=/nonexistent/?.so", "LUA_CPATH_5_4=/nonexistent/?.so",
      "DH3_API_KEY=" .. shell_quote(key), "DH3_BASE_URL=" .. shell_quote(emu.url),
      "DH3_PROMPT='an embedded lighthouse'",
      shell_quote(host),
    }, " "))
  end

  it("builds a static library with the core, the Lua layer and luaopen_dh3, and no command line", function()
    local status, out = run("nm -g --defined-only " .. shell_quote(root .. "/build/embed/libdh3.a"))
    assert.are.equal(0, status, out)
    assert.matches(" T luaopen_dh3\n", out, nil, true)
    assert.matches(" T luaopen_dh3_core\n", out, nil, true)
    assert.matches(" dh3_embed_modules\n", out, nil, true)
    -- the Lua layer is inside, the command line and the emulator are not
    local _, strings = run("strings " .. shell_quote(root .. "/build/embed/libdh3.a"))
    assert.matches("@lua/dh3/client.lua", strings, nil, true)
    assert.is_nil(strings:find("@lua/dh3/cli.lua", 1, true))
    assert.is_nil(strings:find("lua/dh3/emulator/", 1, true))
  end)

  it("runs a script from a C string that creates, waits and downloads, with no dh3 file on disk", function()
    local status, out = run_host(emu.key)
    assert.are.equal(0, status, out)
    local path = out:match("^(%S+)\n$")
    assert.is_string(path, out)
    -- saved in the current folder, and nothing else there (no temporary file left)
    local names = files_in(dir)
    assert.are.same({ (path:gsub("^%./", "")) }, names)
    local f = assert(io.open(dir .. "/" .. names[1], "rb"))
    local bytes = f:read("*a")
    f:close()
    assert.are.equal("\137PNG\r\n\26\n", bytes:sub(1, 8))
    assert.are.equal("IHDR", bytes:sub(13, 16))
    assert.is_true(#bytes > 1000)
  end)

  it("reports the service's refusal as a dh3 error on stderr and exits 1", function()
    local status, out = run_host("not-the-key")
    assert.are.equal(1, status, out)
    assert.matches("^host: dh3: auth: .*HTTP 401", out)
    assert.are.same({}, files_in(dir))
  end)
end)
