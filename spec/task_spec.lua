-- Tasks and their operations (dh3.task, dh3.poller) on a fake engine and a clock the spec drives:
-- polling intervals, deadlines, cancels and downloads, without sleeping and without a network.
local fake = require "helpers.fake_engine"

local ID = ("a"):rep(32)

-- A client whose service says `states[n]` to the n-th status read (the last one from then on)
-- and answers downloads after download_after[k] seconds for image k.
local function service(states, download_after)
  local reads = 0
  local engine = fake.new(function(req)
    if req.download_to or req.url:find("files.invalid", 1, true) then
      local k = tonumber(req.url:match("image(%d)")) or 1
      local after = download_after and download_after[k]
      if after == false then return nil end
      return { status = 200, path = req.download_to, after = after or 0.1 }
    end
    reads = reads + 1
    return fake.status(ID, states[math.min(reads, #states)], 0.01)
  end)
  return engine, fake.client(engine)
end

-- The times of the status reads, from t0.
local function read_times(engine, t0)
  local times = {}
  for _, r in ipairs(engine:requests("GET", "/task/get")) do times[#times + 1] = r.sent_at - t0 end
  return times
end

local function stamp(engine)
  local answer = engine.answer
  engine.answer = function(req)
    req.sent_at = engine.t
    return answer(req)
  end
end

describe("dh3.task on a fake clock", function()
  describe("wait()", function()
    it("reads first half an interval in, then at intervals growing by half up to max_interval", function()
      local engine, client = service({ "queuing", "queuing", "processing", "processing", "processing", "success" })
      stamp(engine)
      local t0 = engine.t
      local task = client:task(ID)
      assert.are.equal(task, task:wait{ interval = 1, max_interval = 2 })
      local times = read_times(engine, t0)
      assert.are.equal(6, #times)
      -- half an interval in; each read then waits the interval, grown by half after each read
      -- that saw no change and reset by a change: +1 (queuing, new), +1.5, +1 (processing, new),
      -- +1.5, +2 (capped at max_interval); each answer takes 0.01 s
      local expected = { 0.5, 1.51, 3.02, 4.03, 5.54, 7.55 }
      for i, t in ipairs(times) do
        assert.is_true(math.abs(t - expected[i]) < 0.02, ("read %d at %.3f, expected %.3f"):format(i, t, expected[i]))
      end
    end)

    it("ends with a timeout at its deadline; the task can be waited on again", function()
      local engine, client = service({ "processing" })
      local t0 = engine.t
      local task = client:task(ID)
      local ok, err = task:wait{ timeout = 5, interval = 1 }
      assert.is_nil(ok)
      assert.are.equal("timeout", err.kind)
      assert.matches("wait on it again later", err.message)
      assert.is_true(engine.t - t0 >= 5 and engine.t - t0 < 5.1, tostring(engine.t - t0))
      engine.answer = function() return fake.status(ID, "success") end
      assert.are.equal(task, task:wait{ timeout = 5 })
    end)
  end)

  describe("operations", function()
    it("a cancel reaches every wait of the task, each its own operation", function()
      local _, client = service({ "processing" })
      local task = client:task(ID)
      local errs = {}
      for i = 1, 2 do
        client:spawn(function() errs[i] = select(2, task:wait{ interval = 1 }) end)
      end
      client:sleep(2.2)
      task:cancel()
      assert.are.equal("cancelled", errs[1] and errs[1].kind)
      assert.are.equal("cancelled", errs[2] and errs[2].kind)
      assert.is_nil(next(task._ops))
    end)

    it("a cancelled wait leaves nothing running: its worker, asleep until the next read, ends at once", function()
      local _, client = service({ "processing" })
      local task = client:task(ID)
      local err
      client:spawn(function() err = select(2, task:wait{ interval = 10 }) end)
      client:sleep(6) -- read at 5 s; the next read is due at 15 s
      task:cancel()
      assert.are.equal("cancelled", err and err.kind)
      assert.are.equal(0, client:update())
    end)

    it("a cancel of a two-image download leaves no result behind, whichever image came first", function()
      -- image 2 arrives at once, image 1 never: the download is cancelled while awaiting image 1
      local engine, client = service({ "success" }, { false, 0.01 })
      local sched = client._sched
      collectgarbage("collect")
      local before
      for cycle = 1, 10000 do
        local task = client:task(ID)
        task.state = "success"
        task.images = {
          { url = "http://files.invalid/image1.png", content_type = "image/png", file_name = "a.png", file_size = 10 },
          { url = "http://files.invalid/image2.png", content_type = "image/png", file_name = "b.png", file_size = 10 },
        }
        local err
        client:spawn(function() err = select(2, task:download("/nonexistent-dh3/x.png")) end)
        client:sleep(0.05)
        task:cancel()
        engine.sent = {} -- the fake engine's own log of requests
        assert.are.equal("cancelled", err.kind)
        assert.is_nil(next(sched.finished), "a result left for no one")
        if cycle == 100 then
          collectgarbage("collect")
          before = collectgarbage("count")
        end
      end
      collectgarbage("collect")
      local grown = collectgarbage("count") - before
      assert.is_true(grown < 64, ("memory grew by %.0f KiB over 9,900 cancels"):format(grown))
      assert.are.equal(0, (client._engine:pending()))
      assert.is_nil(next(sched.dropped))
    end)
  end)
end)
