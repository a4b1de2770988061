-- The Neovim plugin (examples/nvim): :Dh3Generate runs a create, a wait and a download through
-- dh3.luv on Neovim's own loop (vim.loop), headless, against the emulator; the image is saved and
-- the editor stays responsive (a vim timer of its own, every 50 ms, is never late by much).
-- Neovim runs LuaJIT: the plugin loads this tree's LuaJIT build, which this spec makes
-- (`make LUA=luajit`) when it is missing. Pending only when nvim is not installed.
local emulator = require "helpers.emulator"
local files = require "helpers.files"
local lua = require "helpers.lua"

local q = files.quote

local has_nvim = lua.execute("command -v nvim >/dev/null 2>&1") == true

-- Runs in the editor: a repeating timer measures the longest gap between its ticks while dh3
-- works; when the plugin's User Dh3Done fires, the results go to PROBE_OUT and the editor quits.
local PROBE = [[
local out = assert(os.getenv("PROBE_OUT"))
local last, max_gap, ticks = vim.loop.hrtime(), 0, 0
local timer = vim.fn.timer_start(50, function()
  local now = vim.loop.hrtime()
  local gap = (now - last) / 1e6
  if gap > max_gap then max_gap = gap end
  last, ticks = now, ticks + 1
end, { ["repeat"] = -1 })
vim.api.nvim_create_autocmd("User", { pattern = "Dh3Done", callback = function()
  vim.fn.timer_stop(timer)
  local f = assert(io.open(out, "w"))
  f:write(tostring(vim.g.dh3_last_image), "\n", tostring(vim.g.dh3_last_error), "\n",
    tostring(max_gap), "\n", tostring(ticks), "\n")
  f:close()
  vim.cmd("qa!")
end })
vim.cmd("Dh3Generate a lighthouse at dawn")
]]

describe("examples/nvim, the Neovim plugin", function()
  if not has_nvim then
    it("needs Neovim", function() pending("nvim is not installed (Debian: neovim)") end)
    return
  end

  local emu, dir
  setup(function()
    -- the LuaJIT build the plugin loads
    if not io.open("build/luajit/dh3/core.so", "rb") then
      assert(lua.execute("make -s LUA=luajit >/dev/null"), "make LUA=luajit failed")
    end
    -- a task that takes a while: the editor's timer must keep ticking meanwhile
    emu = emulator.start{ "--queue-time", "0.2", "--process-time", "0.8" }
  end)
  teardown(function()
    if emu then emu:stop() end
  end)
  before_each(function() dir = files.tmpdir() end)
  after_each(function() files.rm_rf(dir) end)

  it(":Dh3Generate saves the image through vim.loop while the editor's own timer keeps time", function()
    local probe, result, out = dir .. "/probe.lua", dir .. "/result.txt", dir .. "/images"
    files.write_file(probe, PROBE)
    local cmd = table.concat({
      -- without the sanitizer runtimes of `make asan`: they are for the specs' own Lua, and
      -- Neovim (with its own leaks at exit) is not under test here
      "env -u LD_PRELOAD",
      "DH3_ROOT=" .. q(lua.root), "DH3_API_KEY=" .. q(emu.key), "DH3_BASE_URL=" .. q(emu.url),
      "DH3_OUT=" .. q(out), "PROBE_OUT=" .. q(result),
      "timeout 60 nvim --headless -u NONE -i NONE",
      "--cmd", q("set rtp^=" .. lua.root .. "/examples/nvim"),
      "-c", q("runtime! plugin/dh3.lua"), "-c", q("luafile " .. probe),
      "</dev/null >" .. q(dir .. "/nvim.log") .. " 2>&1",
    }, " ")
    local ok = lua.execute(cmd)
    local text = files.read_file(result)
    assert(ok and text, "nvim failed: " .. tostring(files.read_file(dir .. "/nvim.log")))
    local image, err, max_gap, ticks = text:match("^(.-)\n(.-)\n(.-)\n(.-)\n$")
    assert.are.equal("nil", err)
    assert.are.equal(out, image:match("^(.*)/[^/]+%.png$"))
    assert.are.equal("\137PNG\r\n\26\n", files.read_file(image):sub(1, 8))
    -- about a second of work: the 50 ms timer ticked all along, never late by over 250 ms
    assert.is_true(tonumber(ticks) >= 10, "ticks: " .. ticks)
    assert.is_true(tonumber(max_gap) < 250, "longest gap: " .. max_gap .. " ms")
  end)
end)
