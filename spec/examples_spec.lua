-- The examples of issue 4 run as they are (each starts its own emulator), so they never rot.
-- examples/demo.lua has its own spec (demo_spec.lua). They run under the Lua being tested.
local lua = require "helpers.lua"

local function run(cmd)
  local p = assert(lua.popen("env -u DH3_BASE_URL -u DH3_API_KEY " .. cmd .. " 2>&1"))
  local out = p:read("*a")
  local ok = p:close()
  return ok, out
end

describe("examples/frame_loop.lua", function()
  it("makes three textures while the frame loop keeps ticking", function()
    local ok, out = run(lua.command("examples/frame_loop.lua"))
    assert.is_true(ok, out)
    local _, ready = out:gsub("texture %d ready %([^)]*: 1024x1024, %d+ bytes%)", "")
    assert.are.equal(3, ready, out)
    local frames, update_ms = out:match("(%d+) frames in [%d.]+s %(%d+ per second%); longest client:update%(%) ([%d.]+) ms")
    assert.is_string(frames, out)
    -- the tasks take over a second: at 60 frames a second that is dozens of frames, and no
    -- update() may take a good share of one (a generous bound: the machine may be busy)
    assert.is_true(tonumber(frames) > 40, out)
    assert.is_true(tonumber(update_ms) < 50, out)
  end)
end)

describe("examples/batch.lua", function()
  local dir
  before_each(function()
    dir = os.tmpname()
    os.remove(dir)
  end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  it("creates the built-in batch, and saves each image as its task ends", function()
    local ok, out = run(lua.command("examples/batch.lua", "", dir))
    assert.is_true(ok, out)
    assert.matches("5 saved, 1 failed, 0 not created", out, nil, true)
    assert.matches("failed  dh3: task_failed: the model refused", out, nil, true)
    for path in out:gmatch("saved   (%S+)") do
      local f = assert(io.open(path, "rb"))
      assert.are.equal("\137PNG", f:read(4))
      f:close()
    end
  end)

  it("reads its prompts from a file", function()
    local file = os.tmpname()
    local f = assert(io.open(file, "w"))
    f:write("# two prompts\na green door\n\na blue window\n")
    f:close()
    local ok, out = run(lua.command("examples/batch.lua", file, dir))
    os.remove(file)
    assert.is_true(ok, out)
    assert.matches("2 saved, 0 failed, 0 not created", out, nil, true)
    assert.matches("a green door", out, nil, true)
    assert.matches("a blue window", out, nil, true)
  end)
end)
