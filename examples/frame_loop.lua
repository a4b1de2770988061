-- A game's frame loop that generates images while it keeps ticking. The loop below stands in for
-- an engine's update: 60 frames a second, each frame calls client:update() once (it never waits),
-- then "renders" for the rest of its 16 ms. Three images are made meanwhile, each by a coroutine
-- (client:spawn) that creates its task, waits for it and reads the bytes into memory, as an engine
-- loading a texture would. At the end it prints how many frames ran and the longest one: the
-- network never made a frame late.
--
-- Run from the source tree: lua5.4 examples/frame_loop.lua (or luajit, lua5.1 ... once
-- `make LUA=...` has built the core for it)
-- Against a service: set DH3_API_KEY and DH3_BASE_URL; otherwise it starts a local dh3-emulator.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
-- this Lua's build of the C core (see the Makefile): ./dh3/core.so for Lua 5.4 (`make`),
-- build/<lua>/dh3/core.so for the others (`make LUA=luajit`, `make LUA=lua5.1`, ...)
local lua_name = type(jit) == "table" and "luajit" or "lua" .. _VERSION:match("%d+%.%d+")
package.cpath = (lua_name == "lua5.4" and "./?.so;" or "build/" .. lua_name .. "/?.so;") .. package.cpath

local dh3 = require "dh3"
local now = dh3.now -- a monotonic clock in seconds

local FRAME = 1 / 60
local PROMPTS = { "a stone bridge, pixel art", "a treasure chest, pixel art", "a fir forest, pixel art" }

local emu, key, url
if os.getenv("DH3_BASE_URL") then
  key, url = os.getenv("DH3_API_KEY"), os.getenv("DH3_BASE_URL")
else
  key = "frame-loop-key"
  -- the tree's launcher, which finds the tree's modules from any Lua (the emulator runs on lua5.4)
  emu = assert(require("dh3.emulator.process").start({ "--keys", key, "--queue-time", "0.5", "--process-time", "1" },
    { bin = "bin/dh3-emulator" }))
  url = emu.url
end

-- What the game does with a texture once its bytes are in memory: here, read the PNG header.
-- A big-endian 32-bit number at byte i of s.
local function u32(s, i)
  local a, b, c, d = s:byte(i, i + 3)
  return ((a * 256 + b) * 256 + c) * 256 + d
end

local function upload_texture(name, bytes)
  local width, height = 0, 0
  if bytes:sub(1, 8) == "\137PNG\r\n\26\n" and #bytes >= 24 then width, height = u32(bytes, 17), u32(bytes, 21) end
  return ("%s: %dx%d, %d bytes"):format(name, width, height, #bytes)
end

-- closed below whatever happens (`local client <close>` would do it, on Lua 5.4 only)
local client
local function main()
  client = assert(dh3.new{ api_key = key, base_url = url })
  local frame, ready, failed = 0, 0, 0
  for i, prompt in ipairs(PROMPTS) do
    client:spawn(function()
      local task, err = client:create{ prompt = prompt, aspect_ratio = "1:1" }
      if task then task, err = task:wait{ timeout = 120, interval = 0.25 } end
      local bytes
      if task then bytes, err = task:read() end
      if not bytes then
        failed = failed + 1
        print(("frame %4d: texture %d failed: %s"):format(frame, i, tostring(err)))
        return
      end
      ready = ready + 1
      print(("frame %4d: texture %d ready (%s)"):format(frame, i, upload_texture(prompt, bytes)))
    end)
  end

  local start = now()
  local longest_frame, longest_update = 0, 0
  local pending = 1
  while pending > 0 do
    local frame_start = now()
    frame = frame + 1
    pending = client:update()                -- the only dh3 call of the frame: it never waits
    longest_update = math.max(longest_update, now() - frame_start)
    -- the game's own work for the rest of the frame (a real engine would draw, then vsync)
    while now() - frame_start < FRAME do end
    longest_frame = math.max(longest_frame, now() - frame_start)
  end
  local seconds = now() - start
  print(("%d frames in %.2fs (%.0f per second); longest client:update() %.2f ms, longest frame %.2f ms")
    :format(frame, seconds, frame / seconds, longest_update * 1000, longest_frame * 1000))
  print(("%d textures ready, %d failed"):format(ready, failed))
  assert(failed == 0, "some images failed")
end

local ok, err = pcall(main)
if client then client:close() end
if emu then emu:stop() end
if not ok then
  io.stderr:write("frame_loop failed: ", tostring(err), "\n")
  os.exit(1)
end
