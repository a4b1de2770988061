-- What the library's errors say to a person reading them: each message helps, none repeats itself.
local dh3 = require "dh3"
local errors = require "dh3.errors"
local emulator = require "helpers.emulator"
local files = require "helpers.files"

local TASK_ID = "0123456789abcdef0123456789abcdef"

-- How many times `needle` occurs in `s`.
local function count(s, needle)
  local n, at = 0, 1
  while true do
    local i = s:find(needle, at, true)
    if not i then return n end
    n, at = n + 1, i + #needle
  end
end

describe("error messages", function()
  it("a redirect says what happened and what to check, and not HTTP 302 twice", function()
    local _, err = errors.from_response{ curl_code = 0, status = 302, body = "moved" }
    assert.are.equal("protocol", err.kind)
    local line = tostring(err)
    assert.matches("redirect", err.message, nil, true)
    assert.matches("DH3_BASE_URL", err.message, nil, true)
    assert.are.equal(1, count(line, "302"), line)
  end)

  it("a refused connection says curl's wording once, where curl's detail repeats it", function()
    local client = assert(dh3.new{ api_key = "k", base_url = "http://127.0.0.1:" .. files.closed_port(),
      max_retries = 0 })
    finally(function() client:close() end)
    local state, err = client:task(TASK_ID):status()
    assert.is_nil(state)
    assert.are.equal("network", err.kind)
    assert.are.equal("COULDNT_CONNECT", err.curl_error)
    assert.matches("127.0.0.1", err.message, nil, true)
    local wording = "Couldn't connect to server"
    assert.is_true(count(err.message, wording) <= 1, err.message)
    -- curl's name for a failure stays when its detail does not already end with it
    local _, other = errors.from_response{ curl_code = 6, curl_error = "COULDNT_RESOLVE_HOST",
      message = "Couldn't resolve host name: Could not resolve host: nowhere.invalid" }
    assert.are.equal("Couldn't resolve host name: Could not resolve host: nowhere.invalid", other.message)
  end)
end)

describe("a blank prompt", function()
  local emu
  setup(function() emu = emulator.start{ "--queue-time", "0", "--process-time", "0.1" } end)
  teardown(function() emu:stop() end)

  it("is refused before sending (the service would take three spaces, and charge for them)", function()
    local client = assert(dh3.new{ api_key = emu.key, base_url = emu.url })
    finally(function() client:close() end)
    for _, prompt in ipairs({ "   ", " \t \n ", ("  "):rep(100) }) do
      local task, err = client:create{ prompt = prompt }
      assert.is_nil(task)
      assert.are.equal("invalid_request", err.kind)
      assert.matches("prompt is blank", err.message, nil, true)
    end
    assert.are.equal(0, emu:stats().creates)
    assert(client:create{ prompt = "  a prompt with spaces around  " })
  end)
end)
