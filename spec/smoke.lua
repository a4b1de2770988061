-- A smoke test of an installed dh3 on any Lua (5.1, 5.2, 5.3, 5.4, LuaJIT): create, wait,
-- download and spawned coroutines against an emulator (started on Lua 5.4). `make smoke LUA=...`
-- installs the rock into a fresh tree and runs this with that interpreter; it prints one line per
-- check and the closing line "N passed, N failed".
--   lua5.1 spec/smoke.lua OUT_FOLDER
local dh3 = require "dh3"
local process = require "dh3.emulator.process"

local out = assert(arg[1], "usage: smoke.lua OUT_FOLDER")
local passed, failed = 0, 0

local function check(name, fn)
  local ok, err = pcall(fn)
  if ok then
    passed = passed + 1
    print("ok     " .. name)
  else
    failed = failed + 1
    print("FAILED " .. name .. ": " .. tostring(err))
  end
end

local emu = assert(process.start{ "--keys", "smoke-key", "--queue-time", "0", "--process-time", "0.2" })
local client = assert(dh3.new{ api_key = "smoke-key", base_url = emu.url })

print(("dh3 %s on %s"):format(dh3.VERSION, jit and jit.version or _VERSION))

local task
check("create", function()
  task = assert(client:create{ prompt = "a smoke test on " .. _VERSION })
  assert(type(task.id) == "string" and #task.id > 0, "no task id")
end)

check("wait", function()
  assert(task:wait{ timeout = 30, interval = 0.1 })
  assert(task.state == "success", task.state)
  assert(task.images[1].width == 1024, "width " .. tostring(task.images[1].width))
end)

check("download", function()
  local paths = assert(task:download(out .. "/"))
  local f = assert(io.open(paths[1], "rb"))
  local head = f:read(8)
  f:close()
  assert(head == "\137PNG\r\n\26\n", "not a PNG")
end)

check("spawned coroutines", function()
  local done = 0
  for i = 1, 3 do
    client:spawn(function()
      local t = assert(client:create{ prompt = "spawned smoke " .. i })
      assert(t:wait{ timeout = 30, interval = 0.1 })
      assert(t:download(out .. "/spawned-" .. i .. ".png"))
      done = done + 1
    end)
  end
  client:run()
  assert(done == 3, done .. " of 3 coroutines finished")
end)

check("errors are values", function()
  local t, err = client:create{ prompt = "no" }
  assert(t == nil and err.kind == "invalid_request", tostring(err))
end)

client:close()
emu:stop()
print(("%d passed, %d failed"):format(passed, failed))
os.exit(failed == 0 and 0 or 1)
