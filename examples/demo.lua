-- make demo: a real image generated end to end. Starts a local dh3-emulator, creates a task with
-- the client, shows it moving through its states, saves the image, and stops the emulator.
-- Run from the source tree: lua5.4 examples/demo.lua [output-folder] (or luajit, lua5.1 ... once
-- `make LUA=...` has built the core for it; the emulator itself always runs on lua5.4)
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
-- this Lua's build of the C core (see the Makefile): ./dh3/core.so for Lua 5.4 (`make`),
-- build/<lua>/dh3/core.so for the others (`make LUA=luajit`, `make LUA=lua5.1`, ...)
local lua_name = type(jit) == "table" and "luajit" or "lua" .. _VERSION:match("%d+%.%d+")
package.cpath = (lua_name == "lua5.4" and "./?.so;" or "build/" .. lua_name .. "/?.so;") .. package.cpath

local dh3 = require "dh3"
local process = require "dh3.emulator.process"

local out_dir = arg[1] or "out"
local key = "demo-key"

-- the tree's launcher, which finds the tree's modules from any Lua (the emulator runs on lua5.4)
local emu = assert(process.start({ "--keys", key, "--queue-time", "1", "--process-time", "2" },
  { bin = "bin/dh3-emulator" }))
print(("dh3 %s: emulator at %s"):format(dh3.VERSION, emu.url))

-- closed below whatever happens (`local client <close>` would do it, on Lua 5.4 only)
local client
local function main()
  client = assert(dh3.new{ api_key = key, base_url = emu.url })
  local task = assert(client:create{
    prompt = "a lighthouse at dawn, watercolor",
    aspect_ratio = "16:9",
    resolution = "1K",
  })
  print(("created task %s (%s)"):format(task.id, task.state))
  local now = dh3.now
  local t0 = now()
  assert(task:wait{
    timeout = 60,
    interval = 0.25,
    on_update = function(t)
      print(("  %6.2fs  %s"):format(now() - t0, t.state))
    end,
  })
  local image = task.images[1]
  print(("image: %dx%d %s, %d bytes"):format(image.width, image.height, image.content_type, image.file_size))
  os.execute("mkdir -p '" .. out_dir:gsub("'", "") .. "'")
  local paths = assert(task:download(out_dir))
  for _, path in ipairs(paths) do print("saved " .. path) end
end

local ok, err = pcall(main)
if client then client:close() end
emu:stop()
if not ok then
  io.stderr:write("demo failed: ", tostring(err), "\n")
  os.exit(1)
end
