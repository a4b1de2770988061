-- The scheduler (dh3.scheduler) on a fake engine and a clock the spec drives: timers, waits,
-- cancels, semaphores, closing and user callbacks, without sleeping and without a network.
local scheduler = require "dh3.scheduler"
local fake = require "helpers.fake_engine"

-- A scheduler on a fake engine whose requests complete after `after` seconds (nil: never).
local function new(after)
  local engine = fake.new(function() return after and { status = 200, body = "{}", after = after } or nil end)
  return scheduler.new(engine, engine.now), engine
end

describe("dh3.scheduler", function()
  describe("sleep", function()
    it("wakes spawned coroutines in the order of their deadlines, on the scheduler's clock", function()
      local sched, engine = new()
      local t0, woke = engine.t, {}
      for _, s in ipairs{ 3, 1, 2 } do
        sched:spawn(function()
          sched:sleep(s)
          woke[#woke + 1] = { s = s, at = engine.t - t0 }
        end)
      end
      sched:run()
      assert.are.same({ 1, 2, 3 }, { woke[1].s, woke[2].s, woke[3].s })
      for _, w in ipairs(woke) do assert.is_true(w.at >= w.s and w.at < w.s + 0.01, w.s .. " at " .. w.at) end
    end)

    it("blocks outside a coroutine, driving the loop: spawned work moves meanwhile", function()
      local sched, engine = new()
      local t0, ticks = engine.t, 0
      sched:spawn(function()
        for _ = 1, 4 do
          sched:sleep(0.5)
          ticks = ticks + 1
        end
      end)
      assert.is_true(sched:sleep(1.2))
      assert.are.equal(2, ticks)
      assert.is_true(engine.t - t0 >= 1.2)
    end)

    it("ends early when its token is cancelled", function()
      local sched = new()
      local token, returned = {}, false
      sched:spawn(function()
        sched:sleep(100, token)
        returned = true
      end)
      sched:cancel(token)
      assert.is_true(returned)
      assert.is_true(token.cancelled)
    end)
  end)

  describe("await", function()
    it("hands a coroutine its request's result when it completes", function()
      local sched, engine = new(0.25)
      local got
      sched:spawn(function()
        local req = assert(sched:request{ method = "GET", url = "http://x.invalid/", context = sched:context() })
        got = sched:await(req)
      end)
      sched:run()
      assert.are.equal(200, got.status)
      assert.are.equal(1000.25, engine.t)
    end)

    it("returns CANCELLED to a coroutine whose token is cancelled, and the request is cancelled", function()
      local sched, engine = new(nil) -- never answers
      local token, got = {}, nil
      sched:spawn(function()
        local req = assert(sched:request{ method = "GET", url = "http://x.invalid/", context = sched:context() })
        got = sched:await(req, token)
      end)
      sched:cancel(token)
      assert.are.equal(scheduler.CANCELLED, got)
      assert.are.equal(0, (engine:pending()))
    end)
  end)

  describe("semaphores", function()
    it("hand slots to waiters in the order they asked, as slots free", function()
      local sched = new()
      local sem = sched:semaphore(2)
      local order = {}
      for i = 1, 5 do
        sched:spawn(function()
          assert.is_true(sched:acquire(sem))
          order[#order + 1] = i
          sched:sleep(1)
          sched:release(sem)
        end)
      end
      assert.are.same({ 1, 2 }, order)
      sched:run()
      assert.are.same({ 1, 2, 3, 4, 5 }, order)
      assert.are.equal(2, sem.free)
    end)

    it("let a cancelled waiter give up its place", function()
      local sched = new()
      local sem = sched:semaphore(1)
      assert.is_true(sched:acquire(sem))
      local token, got = {}, nil
      sched:spawn(function() got = sched:acquire(sem, token) end)
      sched:cancel(token)
      assert.is_false(got)
      sched:release(sem)
      assert.are.equal(1, sem.free)
      assert.is_true(sched:try_acquire(sem))
      assert.is_false(sched:try_acquire(sem))
    end)
  end)

  describe("begin_close", function()
    it("wakes sleepers, cancels awaited requests but the kept ones, and turns new waits away", function()
      local sched, engine = new(nil)
      local slept, cancelled_got, kept_req
      sched:spawn(function() slept = sched:sleep(100) end)
      sched:spawn(function()
        local req = assert(sched:request{ method = "GET", url = "http://x.invalid/read", context = sched:context() })
        cancelled_got = sched:await(req)
      end)
      sched:spawn(function()
        kept_req = assert(sched:request{ method = "POST", url = "http://x.invalid/create", context = sched:context() })
        sched:await(kept_req)
      end)
      sched:begin_close({ [kept_req] = true })
      assert.is_false(slept)
      assert.are.equal(scheduler.CANCELLED, cancelled_got)
      assert.are.equal(1, (engine:pending()))
      assert.is_false(sched:sleep(1))
      assert.is_false(sched:acquire(sched:semaphore(1)))
    end)
  end)

  describe("call", function()
    it("runs a user's callback protected: its error and traceback go to on_error", function()
      local sched = new()
      local got
      sched.on_error = function(err, co, trace) got = { err = err, co = co, trace = trace } end
      assert.is_false(sched:call(function() error("a user's bug") end))
      assert.matches("a user's bug", got.err)
      assert.matches("traceback", got.trace)
      assert.is_true(sched:call(function(a, b) assert(a + b == 3) end, 1, 2))
    end)

    it("reports an error of on_error itself on stderr, and never raises", function()
      local sched = new()
      sched.on_error = function() error("the handler's own bug") end
      assert.has_no.errors(function() sched:call(function() error("first") end) end)
    end)
  end)
end)
