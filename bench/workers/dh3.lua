-- dh3's side of each benchmark, one measure per process (started by bench/run.lua from the top of
-- the tree).
--   lua5.4 bench/workers/dh3.lua status   BASE N          N sequential task:status() of one task
--   lua5.4 bench/workers/dh3.lua wait_all BASE N CONC     N tasks through client:wait_all
--   lua5.4 bench/workers/dh3.lua pacing   EMU N           N creates in a loop, create_qps = 3
--   lua5.4 bench/workers/dh3.lua download BASE DEST       task:status() then task:download(DEST)
--   lua5.4 bench/workers/dh3.lua memory   BASE N CONC     N tasks waiting in one wait_all
-- and two diagnostics that split the gap to the C floor (dh3.core alone, not public API):
--   lua5.4 bench/workers/dh3.lua core       BASE N [json]  N sequential GETs on the C engine
--   lua5.4 bench/workers/dh3.lua core_multi BASE N CONC    N GETs, CONC in flight, decoded
-- Each prints one line of key=value pairs: wall and cpu in seconds (core.now(), a monotonic
-- clock; os.clock(), this process's CPU time), and what else the measure needs.
-- BENCH_TREE: the snapshot of the tree that bench/run.lua measures (lua/ and dh3/core.so copied
-- when the run began, so a rebuild during the run changes nothing); "." by hand.
local TREE = os.getenv("BENCH_TREE") or "."
package.path = TREE .. "/lua/?.lua;" .. TREE .. "/lua/?/init.lua;" .. package.path
package.cpath = TREE .. "/?.so;" .. package.cpath

local dh3 = require "dh3"
local core = require "dh3.core"

local KEY = "bench-key"

local function report(fields)
  local keys = {}
  for k in pairs(fields) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local v = fields[k]
    -- whole numbers in full, others with six decimals, on every Lua (below 5.3 all are floats)
    if type(v) == "number" then v = v % 1 == 0 and ("%d"):format(v) or ("%.6f"):format(v) end
    out[#out + 1] = k .. "=" .. tostring(v)
  end
  print(table.concat(out, " "))
end

-- KiB figures of /proc/self/status (VmHWM: peak resident set; VmRSS: now).
local function proc_status(field)
  local f = assert(io.open("/proc/self/status"))
  local text = f:read("*a")
  f:close()
  return tonumber(text:match(field .. ":%s*(%d+) kB"))
end

local modes = {}

function modes.status(base, n)
  n = math.floor(tonumber(n))
  local client = assert(dh3.new{ api_key = KEY, base_url = base })
  local task = client:task("bench-1")
  assert(task:status()) -- the connection is made outside the timed loop, as for the peers
  local t0, c0 = core.now(), os.clock()
  for _ = 1, n - 1 do
    assert(task:status())
  end
  local wall, cpu = core.now() - t0, os.clock() - c0
  assert(task.state == "success" and task.images[1].file_size == 2456789)
  -- n - 1 timed calls: scale to n so the figures compare with the peers' n
  report{ wall = wall * n / (n - 1), cpu = cpu * n / (n - 1), n = n }
end

-- Where the sequential gap to the C floor goes: the same GETs on dh3.core alone (the C engine
-- driven by a minimal Lua loop: engine:request, engine:perform, engine:next_done), with or
-- without decoding the body through dh3's JSON bridge. Not public API: a diagnostic.
function modes.core(base, n, json)
  n = math.floor(tonumber(n))
  local engine = core.engine{ user_agent = "dh3-bench" }
  local headers = { "Authorization: Bearer " .. KEY, "Content-Type: application/json", "Accept: application/json" }
  local url = base .. "/api/v1/task/get?task_id=bench-1"
  local decode = json == "json" and core.json_decode
  local function one()
    assert(engine:request{ method = "GET", url = url, headers = headers, timeout = 60, connect_timeout = 10 })
    local res = engine:next_done()
    while not res do
      engine:perform(1.0)
      res = engine:next_done()
    end
    assert(res.status == 200 and res.body)
    if decode then assert(decode(res.body).nano_banana_pro_output) end
  end
  one()
  local t0, c0 = core.now(), os.clock()
  for _ = 1, n - 1 do one() end
  local wall, cpu = core.now() - t0, os.clock() - c0
  engine:close()
  report{ wall = wall * n / (n - 1), cpu = cpu * n / (n - 1), n = n }
end

-- The same for concurrency: N GETs with CONC in flight on dh3.core alone, each answer decoded,
-- no coroutines, no poller (what wait_all costs above this is the Lua layer's).
function modes.core_multi(base, n, conc)
  n, conc = math.floor(tonumber(n)), math.floor(tonumber(conc))
  local engine = core.engine{ user_agent = "dh3-bench" }
  local headers = { "Authorization: Bearer " .. KEY, "Content-Type: application/json", "Accept: application/json" }
  local decode = core.json_decode
  local started, done = 0, 0
  local function start()
    started = started + 1
    assert(engine:request{ method = "GET", url = base .. "/api/v1/task/get?task_id=bench-" .. started,
      headers = headers, timeout = 60, connect_timeout = 10 })
  end
  local t0, c0 = core.now(), os.clock()
  for _ = 1, math.min(conc, n) do start() end
  while done < n do
    engine:perform(1.0)
    while true do
      local res = engine:next_done()
      if not res then break end
      assert(res.status == 200 and decode(res.body).nano_banana_pro_output)
      done = done + 1
      if started < n then start() end
    end
  end
  local wall, cpu = core.now() - t0, os.clock() - c0
  engine:close()
  report{ wall = wall, cpu = cpu, n = n }
end

function modes.wait_all(base, n, conc)
  n, conc = math.floor(tonumber(n)), math.floor(tonumber(conc))
  local client = assert(dh3.new{ api_key = KEY, base_url = base })
  local tasks = {}
  for i = 1, n do tasks[i] = client:task("bench-" .. i) end
  -- interval: the first polls are spread over one interval; nginx answers success at once, so
  -- each task needs exactly one read and the shortest interval (0.01 s) keeps the spread out of
  -- the measure.
  local t0, c0 = core.now(), os.clock()
  local done, errs = client:wait_all(tasks, { max_concurrency = conc, interval = 0.01, timeout = 600 })
  local wall, cpu = core.now() - t0, os.clock() - c0
  assert(next(errs) == nil, "wait_all reported errors")
  for i = 1, n do assert(done[i].state == "success") end
  report{ wall = wall, cpu = cpu, n = n }
end

function modes.pacing(emu, n)
  n = math.floor(tonumber(n))
  local starts, statuses = {}, {}
  local client = assert(dh3.new{ api_key = KEY, base_url = emu, create_qps = 3,
    on_request = function(info)
      if info.method == "POST" then
        -- the hook runs when the answer is in; the request went out `seconds` earlier
        starts[#starts + 1] = core.now() - info.seconds
        statuses[#statuses + 1] = info.status
      end
    end })
  local t0, c0 = core.now(), os.clock()
  for i = 1, n do
    assert(client:create{ prompt = "pacing bench " .. i .. " {emu:queue=60}" })
  end
  local wall, cpu = core.now() - t0, os.clock() - c0
  assert(#starts == n, "each create took exactly one request (no retry)")
  local offsets = {}
  for i = 1, n do offsets[i] = ("%.4f"):format(starts[i] - starts[1]) end
  local non200 = 0
  for _, s in ipairs(statuses) do if s ~= 200 then non200 = non200 + 1 end end
  report{ wall = wall, cpu = cpu, n = n, first = starts[1] - t0, last = starts[n] - starts[1],
          offsets = table.concat(offsets, ","), non200 = non200 }
end

function modes.download(base, dest)
  local client = assert(dh3.new{ api_key = KEY, base_url = base })
  local task = client:task("bench-dl")
  assert(task:status())
  local size = task.images[1].file_size
  collectgarbage()
  local hwm0 = proc_status("VmHWM")
  local t0, c0 = core.now(), os.clock()
  local paths = assert(task:download(dest))
  local wall, cpu = core.now() - t0, os.clock() - c0
  local f = assert(io.open(paths[1], "rb"))
  local got = f:seek("end")
  f:close()
  assert(got == size, "downloaded size differs")
  os.remove(paths[1])
  report{ wall = wall, cpu = cpu, bytes = size, hwm_before_kib = hwm0, hwm_kib = proc_status("VmHWM") }
end

function modes.memory(base, n, conc)
  n, conc = math.floor(tonumber(n)), math.floor(tonumber(conc))
  local client = assert(dh3.new{ api_key = KEY, base_url = base })
  local interval = 1
  -- a first wait_all of a few tasks, so code paths, caches and the connection pool are warm
  -- and what follows counts the tasks, not the first use of the machinery
  local warm = {}
  for i = 1, conc do warm[i] = client:task("warm-" .. i) end
  local warm_group = client:watch(warm, { max_concurrency = conc, interval = 0.01 })
  local t_end = core.now() + 0.3
  while core.now() < t_end do client:update() end
  warm_group:stop()
  client:run()
  warm = nil
  collectgarbage(); collectgarbage()
  local before = collectgarbage("count")
  local rss0 = proc_status("VmRSS")

  local tasks = {}
  for i = 1, n do tasks[i] = client:task(("%032x"):format(i)) end
  client:spawn(function()
    -- the answer is always "queuing": the tasks wait until the bench stops them
    client:wait_all(tasks, { max_concurrency = conc, interval = interval, timeout = 600 })
  end)
  -- every task polled once (first polls are spread over one interval), then measured mid-wait
  local t_measure = core.now() + interval * 1.5
  while core.now() < t_measure do client:update() end
  collectgarbage(); collectgarbage()
  local after = collectgarbage("count")
  local rss1 = proc_status("VmRSS")
  local polled = 0
  for i = 1, n do if tasks[i].state == "queuing" then polled = polled + 1 end end
  report{ n = n, kib_before = before, kib_after = after, bytes_per_task = (after - before) * 1024 / n,
          rss_bytes_per_task = (rss1 - rss0) * 1024 / n, polled = polled }
  os.exit(0) -- the wait would go on until its timeout
end

local mode = arg[1]
if not modes[mode] then
  io.stderr:write("usage: lua5.4 bench/workers/dh3.lua status|wait_all|pacing|download|memory|core|core_multi ...\n")
  os.exit(2)
end
modes[mode]((table.unpack or unpack)(arg, 2))
