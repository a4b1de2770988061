-- Engines and scale: many tasks at once, a frame loop that never stalls, cancellation, progress.
local dh3 = require "dh3"
local core = require "dh3.core"
local emulator = require "helpers.emulator"
local SLOW = require("helpers.timing").SLOW
local lua = require "helpers.lua"

local function new_client(emu, opts)
  opts = opts or {}
  opts.api_key, opts.base_url = emu.key, emu.url
  opts.retry_delay = opts.retry_delay or 0.01
  return assert(dh3.new(opts))
end

local function create_many(client, n, prompt)
  local tasks = {}
  for i = 1, n do tasks[i] = assert(client:create{ prompt = (prompt or "many ") .. i }) end
  return tasks
end

describe("dh3 at scale", function()
  local emu
  setup(function()
    emu = emulator.start{ "--queue-time", "0.1", "--process-time", "0.2", "--create-qps", "0" }
  end)
  teardown(function() emu:stop() end)
  before_each(function()
    emu:reset()
    emu:config{ latency = 0 }
  end)

  describe("client:wait_all()", function()
    it("settles 1,000 tasks with never more requests in flight than max_concurrency", function()
      local client = new_client(emu, { create_qps = false })
      finally(function() client:close() end)
      local tasks = create_many(client, 1000) -- one at a time: at most 1 in flight so far
      emu:config{ latency = 0.005 } -- each answer takes a moment, so requests really overlap
      local settled = 0
      local got, errs = client:wait_all(tasks, {
        max_concurrency = 8, interval = 0.1, max_interval = 0.3, timeout = 60,
        on_done = function() settled = settled + 1 end,
      })
      assert.are.equal(tasks, got)
      assert.are.same({}, errs)
      assert.are.equal(1000, settled)
      for _, t in ipairs(tasks) do assert.are.equal("success", t.state) end
      local stats = emu:stats()
      assert.is_true(stats.inflight.max <= 8, "in flight at most: " .. stats.inflight.max)
      assert.is_true(stats.inflight.max >= 4, "requests did overlap: " .. stats.inflight.max)
      local reads = stats.requests["GET /api/v1/task/get"]["200"]
      assert.is_true(reads >= 1000 and reads <= 6000, "reads: " .. reads)
      assert.are.equal(0, client:update())
    end)

    it("reports each task that did not succeed, by its index", function()
      local client = new_client(emu, { create_qps = false })
      finally(function() client:close() end)
      local good = assert(client:create{ prompt = "fine" })
      local bad = assert(client:create{ prompt = "broken {emu:fail=no luck}" })
      local lost = client:task("0123456789abcdef0123456789abcdef")
      local _, errs = client:wait_all({ good, bad, lost }, { interval = 0.05 })
      assert.is_nil(errs[1])
      assert.are.equal("task_failed", errs[2].kind)
      assert.are.equal("no luck", errs[2].message)
      assert.are.equal("not_found", errs[3].kind)
      assert.are.equal(lost.id, errs[3].task_id)
    end)

    it("times out the tasks still running, which stay valid", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local slow = assert(client:create{ prompt = "slow {emu:process=3}" })
      local _, errs = client:wait_all({ slow }, { interval = 0.05, timeout = 0.3 })
      assert.are.equal("timeout", errs[1].kind)
      assert.are.equal(slow.id, errs[1].task_id)
      assert.are.equal(0, client:update())
    end)

    it("spreads first polls over the interval instead of one burst", function()
      local client = new_client(emu, { create_qps = false })
      finally(function() client:close() end)
      local tasks = create_many(client, 40, "spread ")
      local times = {}
      client.on_request = function() times[#times + 1] = core.now() end
      client:wait_all(tasks, { interval = 0.4, max_concurrency = 40 })
      table.sort(times)
      -- the first 40 polls span most of one interval rather than a few milliseconds
      assert.is_true(times[40] - times[1] > 0.2, "first polls spanned " .. (times[40] - times[1]))
    end)

    it("reads a lone task first half an interval after the watch starts, not at once", function()
      local client = new_client(emu, { create_qps = false })
      finally(function() client:close() end)
      local task = assert(client:create{ prompt = "lone {emu:process=0.1}" })
      local first
      client.on_request = function(info) first = first or (info.method == "GET" and core.now()) end
      local t0 = core.now()
      assert(client:wait_all({ task }, { interval = 0.6 }))
      assert.is_true(first - t0 >= 0.29, "first read after " .. (first - t0))
    end)
  end)

  describe("client:as_completed() and wait_any()", function()
    it("hands tasks back in the order they end", function()
      local client = new_client(emu, { create_qps = false })
      finally(function() client:close() end)
      local tasks = {
        assert(client:create{ prompt = "third {emu:process=0.9}" }),
        assert(client:create{ prompt = "first {emu:process=0.1}" }),
        assert(client:create{ prompt = "second {emu:process=0.5}" }),
      }
      local order = {}
      for t, err in client:as_completed(tasks, { interval = 0.05, max_interval = 0.05 }) do
        assert.is_nil(err)
        order[#order + 1] = t.id
      end
      assert.are.same({ tasks[2].id, tasks[3].id, tasks[1].id }, order)
    end)

    it("wait_any returns the first to end and stops polling the rest", function()
      local client = new_client(emu, { create_qps = false })
      finally(function() client:close() end)
      local slow = assert(client:create{ prompt = "slow {emu:process=2}" })
      local fast = assert(client:create{ prompt = "fast {emu:process=0.1}" })
      local t = assert(client:wait_any({ slow, fast }, { interval = 0.05 }))
      assert.are.equal(fast, t)
      assert.are.equal(0, client:update())
      assert.are_not.equal("success", slow.state)
    end)
  end)

  describe("client:watch() callbacks", function()
    it("fire from update() only, on the caller's thread", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local task = assert(client:create{ prompt = "watched" })
      local events = {}
      client:watch({ task }, {
        interval = 0.05,
        on_update = function(t) events[#events + 1] = t.state end,
        on_done = function(t, err) events[#events + 1] = "done:" .. t.state .. ":" .. tostring(err) end,
      })
      core.now() -- nothing runs until the loop turns
      os.execute("sleep 0.4")
      assert.are.same({}, events)
      while client:update() > 0 do os.execute("sleep 0.01") end
      assert.are.equal("done:success:nil", events[#events])
      assert.are.equal("success", events[#events - 1])
    end)
  end)

  describe("client:update()", function()
    it("allocates nothing when there is nothing to do", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      client:update()
      -- LuaJIT counts the memory of the traces it compiles meanwhile: measured with the JIT off
      if jit then jit.off(); jit.flush() end
      collectgarbage("collect")
      collectgarbage("stop")
      local before = collectgarbage("count")
      for _ = 1, 10000 do client:update() end
      local after = collectgarbage("count")
      collectgarbage("restart")
      if jit then jit.on() end
      assert.are.equal(before, after)
    end)

    it("stays short while the server takes a second to answer", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      emu:config{ latency = 1 }
      local results = {}
      for i = 1, 4 do
        client:spawn(function()
          local t = assert(client:create{ prompt = "patient " .. i })
          results[#results + 1] = t.id
        end)
      end
      local longest, frames = 0, 0
      local t0 = core.now()
      repeat
        local f0 = core.now()
        local pending = client:update()
        longest = math.max(longest, core.now() - f0)
        frames = frames + 1
        os.execute("sleep 0.016")
      until pending == 0 or core.now() - t0 > 10
      assert.are.equal(4, #results)
      assert.is_true(frames > 20, "frames: " .. frames)
      assert.is_true(longest < 0.02 * SLOW, "longest update(): " .. longest)
    end)
  end)

  describe("pacing across coroutines", function()
    it("shares the 3-per-second budget fairly, without a 429", function()
      emu:config{ create_qps = 3 }
      local client = new_client(emu)
      finally(function() client:close() end)
      local order = {}
      for c = 1, 3 do
        client:spawn(function()
          for i = 1, 2 do
            assert(client:create{ prompt = ("coroutine %d create %d"):format(c, i) })
            order[#order + 1] = c
          end
        end)
      end
      local t0 = core.now()
      client:run()
      local took = core.now() - t0
      emu:config{ create_qps = 0 }
      assert.are.equal(6, #order)
      -- each coroutine's first create comes before any coroutine's second
      local firsts = { order[1], order[2], order[3] }
      table.sort(firsts)
      assert.are.same({ 1, 2, 3 }, firsts)
      assert.is_true(took >= 1.0, tostring(took))
      assert.are.equal(0, (emu:stats().requests["POST /api/v1/task/create"] or {})["429"] or 0)
    end)
  end)

  describe("task:cancel()", function()
    it("stops a wait in a spawned coroutine, leaving the task to wait on again", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local task = assert(client:create{ prompt = "cancel me {emu:process=0.6}" })
      local result, err
      client:spawn(function() result, err = task:wait{ interval = 0.05 } end)
      for _ = 1, 5 do client:update(); os.execute("sleep 0.02") end
      task:cancel()
      client:update()
      assert.is_nil(result)
      assert.are.equal("cancelled", err.kind)
      assert.are.equal(task.id, err.task_id)
      assert.are.equal(0, client:update())
      assert.are.equal(task, task:wait{ interval = 0.05 })
    end)

    it("stops a blocking wait from its own on_update", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local task = assert(client:create{ prompt = "stop when processing {emu:process=2}" })
      local ok, err = task:wait{ interval = 0.05, on_update = function(t)
        if t.state == "processing" then t:cancel() end
      end }
      assert.is_nil(ok)
      assert.are.equal("cancelled", err.kind)
    end)

    it("takes a task out of a wait_all, which reports it cancelled", function()
      local client = new_client(emu, { create_qps = false })
      finally(function() client:close() end)
      local a = assert(client:create{ prompt = "a {emu:process=0.1}" })
      local b = assert(client:create{ prompt = "b {emu:process=5}" })
      local _, errs = client:wait_all({ a, b }, { interval = 0.05, on_done = function(t)
        if t == a then b:cancel() end
      end })
      assert.is_nil(errs[1])
      assert.are.equal("cancelled", errs[2].kind)
    end)
  end)

  describe("memory", function()
    it("keeps 10,000 waiting tasks under 2 KiB each", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      collectgarbage("collect")
      local before = collectgarbage("count")
      local tasks = {}
      for i = 1, 10000 do tasks[i] = client:task(("%032x"):format(i)) end
      local group = client:watch(tasks, { interval = 1000, timeout = 2000 })
      collectgarbage("collect")
      local per_task = (collectgarbage("count") - before) * 1024 / 10000
      assert.is_true(per_task < 2048, ("%.0f bytes per task"):format(per_task))
      group:stop()
      assert.are.equal(0, client:update())
    end)
  end)
end)

describe("dh3 downloads at scale", function()
  describe("downloads", function()
    local emu, client, task
    setup(function()
      emu = emulator.start{ "--queue-time", "0", "--process-time", "0.05" }
      client = new_client(emu)
      task = assert(client:create{ prompt = "big one", resolution = "2K" })
      assert(task:wait{ interval = 0.05 })
    end)
    teardown(function()
      client:close()
      emu:stop()
    end)

    it("report progress up to the whole size", function()
      local dir = os.tmpname()
      os.remove(dir)
      os.execute("mkdir " .. dir)
      local calls, last, total_seen = 0, -1, nil
      local paths = assert(task:download(dir, { progress = function(t, bytes, total)
        assert.are.equal(task, t)
        assert.is_true(bytes >= last)
        calls, last, total_seen = calls + 1, bytes, total
      end }))
      assert.are.equal(1, #paths)
      assert.is_true(calls >= 1)
      assert.are.equal(task.images[1].file_size, total_seen)
      assert.are.equal(task.images[1].file_size, last)
      os.execute("rm -rf " .. dir)
    end)

    it("task:read() returns the image's bytes in memory", function()
      local bytes = assert(task:read())
      assert.are.equal(task.images[1].file_size, #bytes)
      assert.are.equal("\137PNG", bytes:sub(1, 4))
      local w, h = lua.uint_be(bytes, 17, 4), lua.uint_be(bytes, 21, 4)
      assert.are.same({ 2048, 2048 }, { w, h })
      local none, err = task:read(2)
      assert.is_nil(none)
      assert.are.equal("invalid_request", err.kind)
    end)

    it("run concurrently with other work in spawned coroutines", function()
      local reads = {}
      for i = 1, 3 do client:spawn(function() reads[i] = #assert(task:read()) end) end
      client:run()
      assert.are.same({ task.images[1].file_size, task.images[1].file_size, task.images[1].file_size }, reads)
    end)
  end)

end)
