-- The pacing of creates (dh3.ratelimit), on a fake engine and a clock the spec drives: nothing here
-- sleeps or reaches a network.
local fake = require "helpers.fake_engine"

-- A client whose creates are answered after `delay(n)` seconds (n: the create's number).
local function paced(qps, delay)
  local n = 0
  local engine = fake.new(function(req)
    if req.method == "POST" then
      n = n + 1
      return fake.created(n, delay and delay(n) or 0.05)
    end
  end)
  return engine, fake.client(engine, { create_qps = qps })
end

-- When each create was sent, by prompt, from `count` coroutines asking in order.
local function start_times(engine, client, count)
  local at = {}
  for i = 1, count do
    client:spawn(function() assert(client:create{ prompt = ("paced create %d"):format(i) }) end)
  end
  client:run()
  for _, req in ipairs(engine:requests("POST", "/task/create")) do
    at[#at + 1] = { prompt = req.body:match('"prompt":"paced create (%d+)"'), t = req.sent_at }
  end
  return at
end

describe("dh3.ratelimit", function()
  local t0
  local function stamp(engine)
    -- each request remembers when it left
    local answer = engine.answer
    engine.answer = function(req)
      req.sent_at = engine.t - t0
      return answer(req)
    end
  end

  it("starts at most qps creates in any second: 9 creates at 3/s in three waves", function()
    local engine, client = paced(3)
    t0 = engine.t
    stamp(engine)
    local at = start_times(engine, client, 9)
    assert.are.equal(9, #at)
    for i = 4, 9 do
      -- the create three before it was answered 0.05 s after it left; a slot frees 1 s later
      assert.is_true(at[i].t - at[i - 3].t >= 1.0, ("create %d after %d"):format(i, i - 3))
    end
    assert.is_true(at[9].t < 2.2, "no slower than the service allows: " .. at[9].t)
  end)

  it("serves callers in the order they asked", function()
    local engine, client = paced(2)
    t0 = engine.t
    stamp(engine)
    local at = start_times(engine, client, 7)
    for i, a in ipairs(at) do assert.are.equal(tostring(i), a.prompt) end
  end)

  it("waits without polling: a handful of turns of the loop per create", function()
    local engine, client = paced(3)
    t0 = engine.t
    stamp(engine)
    start_times(engine, client, 12)
    -- polling every 5 ms over the ~3 s this takes would be some 600 turns
    assert.is_true(engine.performs < 12 * 6, "turns: " .. engine.performs)
  end)

  it("gives the first in line the slot that frees first, not one held by a slow create", function()
    -- create 1 takes 5 s to answer, create 2 a tenth of a second: create 3 takes create 2's slot
    local engine, client = paced(2, function(n) return n == 1 and 5 or 0.1 end)
    t0 = engine.t
    stamp(engine)
    local at = start_times(engine, client, 3)
    assert.is_true(at[3].t >= 1.1, "one second after create 2's answer")
    assert.is_true(at[3].t < 2, "not after the slow create: " .. at[3].t)
  end)

  it("gives up when the client closes: a create still waiting for a slot is not sent", function()
    local engine, client = paced(1, function() return 0.5 end)
    local errs = {}
    for i = 1, 3 do
      client:spawn(function()
        local _, err = client:create{ prompt = ("closing create %d"):format(i) }
        errs[#errs + 1] = err
      end)
    end
    client:close()
    assert.are.equal(1, #engine:requests("POST", "/task/create"))
    assert.are.equal(2, #errs)
    for _, err in ipairs(errs) do
      assert.are.equal("cancelled", err.kind)
      assert.matches("nothing was created", err.message)
    end
  end)
end)
