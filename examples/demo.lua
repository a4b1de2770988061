-- make demo: a real image generated end to end. Starts a local dh3-emulator, creates a task with
-- the client, shows it moving through its states, saves the image, and stops the emulator.
-- Run from the source tree: lua5.4 examples/demo.lua [output-folder]
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath

local dh3 = require "dh3"
local process = require "dh3.emulator.process"

local out_dir = arg[1] or "out"
local key = "demo-key"

local emu = assert(process.start{ "--keys", key, "--queue-time", "1", "--process-time", "2" })
print(("dh3 %s: emulator at %s"):format(dh3.VERSION, emu.url))

local function main()
  local client <close> = assert(dh3.new{ api_key = key, base_url = emu.url })
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
emu:stop()
if not ok then
  io.stderr:write("demo failed: ", tostring(err), "\n")
  os.exit(1)
end
