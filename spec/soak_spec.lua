-- A fault soak: 500 tasks against an emulator that answers 10% of API requests with 5xx, drops 5%
-- of connections, answers 5% with 429 and 5% with malformed JSON, and takes 5% of creates only to
-- close their connections unanswered. Nothing paid for may be lost or paid twice, every task must
-- end in a state or a clear error naming it, and memory stays flat.
local dh3 = require "dh3"
local emulator = require "helpers.emulator"

local N = tonumber(os.getenv("DH3_SOAK_TASKS")) or 500

describe("dh3 under a fault soak", function()
  local emu
  setup(function()
    emu = emulator.start{ "--queue-time", "0.1", "--process-time", "0.3", "--create-qps", "0", "--seed", "11",
      "--fault-5xx", "0.10", "--fault-drop", "0.05", "--fault-429", "0.05", "--fault-malformed", "0.05",
      "--fault-create-close", "0.05" }
  end)
  teardown(function() emu:stop() end)

  -- Creates n tasks from 50 coroutines at once (a 429's Retry-After then costs one second in
  -- parallel, not in a row), and waits on them all. Returns the counts.
  local function round(client, n)
    local tasks, create_errors = {}, {}
    for c = 1, 50 do
      client:spawn(function()
        for i = c, n, 50 do
          local t, err = client:create{ prompt = ("soak task %d"):format(i) }
          if t then tasks[#tasks + 1] = t else create_errors[#create_errors + 1] = err end
        end
      end)
    end
    client:run()
    local _, errs = client:wait_all(tasks, { interval = 0.1, max_interval = 0.5, max_concurrency = 16, timeout = 120 })
    local ended, failed_clearly = 0, 0
    for i, t in ipairs(tasks) do
      if errs[i] then
        assert.are.equal(t.id, errs[i].task_id, tostring(errs[i]))
        failed_clearly = failed_clearly + 1
      else
        assert.is_true(t:done())
        ended = ended + 1
      end
    end
    for _, err in ipairs(create_errors) do
      -- retries cover what certainly made nothing; what is left says it may have been created
      assert.is_true(err.maybe_created, tostring(err))
      assert.matches("may have been created", tostring(err))
    end
    return { created = #tasks, create_errors = #create_errors, ended = ended, failed_clearly = failed_clearly }
  end

  it(("creates each of %d tasks at most once and settles every one"):format(N), function()
    local client = assert(dh3.new{ api_key = emu.key, base_url = emu.url, create_qps = false,
      max_retries = 8, retry_delay = 0.01 })
    finally(function() client:close() end)
    local first = round(client, math.floor(N / 2))
    collectgarbage("collect")
    local memory_after_first = collectgarbage("count")
    local second = round(client, N - math.floor(N / 2))
    collectgarbage("collect")
    local memory_after_second = collectgarbage("count")

    local stats = emu:stats()
    local created = first.created + second.created
    local create_errors = first.create_errors + second.create_errors
    local function creates_that(status) return stats.requests["POST /api/v1/task/create"][status] or 0 end
    local taken_unanswered = creates_that("closed") -- made and charged; the id never reached the client
    assert.are.equal(stats.faults.create_close, taken_unanswered)
    -- Every create that got no usable answer is one create error saying the task may exist: none
    -- was sent again behind the client's back (by libcurl, on a new connection) to come back as an
    -- id; a dropped or garbled create made nothing, a taken one made exactly one task.
    assert.are.equal(taken_unanswered + creates_that("dropped") + creates_that("malformed"), create_errors)
    -- So the service's count of creates is exactly the ids the client handed back plus the creates
    -- it reported as maybe made that the service did make: none paid twice, none lost silently.
    assert.are.equal(stats.creates, created + taken_unanswered)
    assert.are.equal(N, created + create_errors)
    assert.are.equal(created, first.ended + first.failed_clearly + second.ended + second.failed_clearly)
    assert.is_true(first.ended + second.ended >= created * 0.98, "most tasks end in a state")
    for _, kind in ipairs({ "5xx", "drop", "429", "malformed", "create_close" }) do
      assert.is_true(stats.faults[kind] > 0, "the soak met " .. kind)
    end
    -- flat: the second round leaves no more behind than the first
    assert.is_true(memory_after_second < memory_after_first * 1.25 + 64,
      ("memory grew from %.0f KiB to %.0f KiB"):format(memory_after_first, memory_after_second))
    assert.are.equal(0, client:update())
    print(("\nsoak: %d created, %d creates failed saying they may exist, %d ended, %d clear errors, "
      .. "faults %s, memory %.0f -> %.0f KiB"):format(created, create_errors,
      first.ended + second.ended, first.failed_clearly + second.failed_clearly,
      require("dh3.core").json_encode(stats.faults), memory_after_first, memory_after_second))
  end)
end)
