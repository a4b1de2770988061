-- dh3.now(): the monotonic clock dh3 measures its deadlines with, public for users' own loops
-- (the examples time themselves with it).
local dh3 = require "dh3"

describe("dh3.now()", function()
  it("is the clock of dh3.core.now: readings of the two interleave in order", function()
    local core = require "dh3.core"
    for _ = 1, 100 do
      local a = dh3.now()
      local b = core.now()
      local c = dh3.now()
      assert.is_true(a <= b and b <= c, ("%.9f %.9f %.9f"):format(a, b, c))
    end
  end)

  it("counts seconds, as a float, and never goes back", function()
    local last = dh3.now()
    assert.are.equal("number", type(last))
    for _ = 1, 10000 do
      local now = dh3.now()
      assert.is_true(now >= last)
      last = now
    end
    local start = dh3.now()
    require("socket").sleep(0.2)
    assert.is_true(dh3.now() - start >= 0.19)
  end)

  it("is what the examples time themselves with", function()
    for _, file in ipairs{ "examples/batch.lua", "examples/demo.lua", "examples/frame_loop.lua" } do
      local f = assert(io.open(file))
      local text = f:read("*a")
      f:close()
      assert.is_nil(text:find("dh3.core", 1, true), file)
      assert.is_truthy(text:find("dh3.now", 1, true), file)
    end
  end)
end)
