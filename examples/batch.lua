-- A batch of prompts: every task is created (the client paces creates to the service's limit),
-- then all are waited on at once, and each image is downloaded as soon as its task ends, while
-- the others keep being polled.
--
-- Run from the source tree: lua5.4 examples/batch.lua [prompts-file [output-folder]] (or luajit,
-- lua5.1 ... once `make LUA=...` has built the core for it)
-- (an empty prompts-file argument means the built-in list)
-- The prompts file has one prompt a line (blank lines and # comments skipped); without one, a
-- built-in list is used. Against a service: set DH3_API_KEY and DH3_BASE_URL; otherwise it starts
-- a local dh3-emulator.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
-- this Lua's build of the C core (see the Makefile): ./dh3/core.so for Lua 5.4 (`make`),
-- build/<lua>/dh3/core.so for the others (`make LUA=luajit`, `make LUA=lua5.1`, ...)
local lua_name = type(jit) == "table" and "luajit" or "lua" .. _VERSION:match("%d+%.%d+")
package.cpath = (lua_name == "lua5.4" and "./?.so;" or "build/" .. lua_name .. "/?.so;") .. package.cpath

local dh3 = require "dh3"
local now = dh3.now -- a monotonic clock in seconds

local BUILT_IN = {
  "a lighthouse at dawn, watercolor",
  "a red fox in snow, photograph",
  "a paper boat on a puddle",
  "a castle on a hill, ink drawing",
  "a bowl of ramen, studio light",
  "a robot reading a book {emu:fail=the model refused}", -- the emulator fails this one on purpose
}

local function read_prompts(path)
  local prompts = {}
  for line in assert(io.lines(path)) do
    if line:find("%S") and not line:find("^%s*#") then prompts[#prompts + 1] = line end
  end
  return prompts
end

local prompts = (arg[1] or "") ~= "" and read_prompts(arg[1]) or BUILT_IN
local out_dir = arg[2] or "out"

local emu, key, url
if os.getenv("DH3_BASE_URL") then
  key, url = os.getenv("DH3_API_KEY"), os.getenv("DH3_BASE_URL")
else
  key = "batch-key"
  -- the tree's launcher, which finds the tree's modules from any Lua (the emulator runs on lua5.4)
  emu = assert(require("dh3.emulator.process").start({ "--keys", key, "--queue-time", "0.5", "--process-time", "1.5" },
    { bin = "bin/dh3-emulator" }))
  url = emu.url
end

-- closed below whatever happens (`local client <close>` would do it, on Lua 5.4 only)
local client
local function main()
  client = assert(dh3.new{ api_key = key, base_url = url })
  os.execute("mkdir -p '" .. out_dir:gsub("'", "") .. "'")
  local start = now()
  local tasks, prompt_of = {}, {}
  for _, prompt in ipairs(prompts) do
    local task, err = client:create{ prompt = prompt }
    if task then
      tasks[#tasks + 1], prompt_of[task] = task, prompt
      print(("%6.2fs created %s  %s"):format(now() - start, task.id, prompt))
    else
      -- an id that may exist (err.maybe_created) would be worth keeping; here we only say it
      print(("%6.2fs not created: %s  %s"):format(now() - start, tostring(err), prompt))
    end
  end
  local saved, failed = 0, 0
  for task, err in client:as_completed(tasks, { timeout = 300, interval = 0.5 }) do
    local paths
    if not err then paths, err = task:download(out_dir) end
    if paths then
      saved = saved + 1
      print(("%6.2fs saved   %s  %s"):format(now() - start, paths[1], prompt_of[task]))
    else
      failed = failed + 1
      print(("%6.2fs failed  %s  %s"):format(now() - start, tostring(err), prompt_of[task]))
    end
  end
  print(("%d saved, %d failed, %d not created, in %.2fs"):format(saved, failed, #prompts - #tasks, now() - start))
end

local ok, err = pcall(main)
if client then client:close() end
if emu then emu:stop() end
if not ok then
  io.stderr:write("batch failed: ", tostring(err), "\n")
  os.exit(1)
end
