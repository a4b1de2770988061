-- Specs of dh3-emulator, the local double of the DH3 API. They talk to it over plain luasocket
-- (never through dh3.core), so they hold whatever the client under test does. The emulator is
-- Lua 5.4's (helpers.emulator starts it with lua5.4), whichever Lua runs the specs.
local emulator = require "helpers.emulator"
local lua = require "helpers.lua"
local socket = require "socket"
local cjson = require("cjson").new()
local png = require "helpers.png"

local MODEL = "nano-banana-pro"

-- ---------------------------------------------------------------------------------------------
-- Helpers

local function auth(emu, key)
  return { authorization = "Bearer " .. (key or emu.key), ["content-type"] = "application/json" }
end

local function decode(body)
  local ok, doc = pcall(cjson.decode, body)
  return ok and doc or nil
end

-- POST /api/v1/task/create with input (a table) merged into a valid body. Returns HTTP status,
-- decoded document, headers.
local function create(emu, input, extra, key)
  local body = { model = MODEL, nano_banana_pro_input = input or { prompt = "a lighthouse at dawn" } }
  for k, v in pairs(extra or {}) do body[k] = v end
  local status, text, headers = emu:http("POST", "/api/v1/task/create", cjson.encode(body), auth(emu, key))
  return status, decode(text), headers, text
end

local function get(emu, id, key)
  local status, text, headers = emu:http("GET", "/api/v1/task/get?task_id=" .. id, nil, auth(emu, key))
  return status, decode(text), headers
end

local function output_of(emu, id)
  local status, doc = get(emu, id)
  assert(status == 200, "GET task: HTTP " .. tostring(status))
  return doc.nano_banana_pro_output
end

-- Polls a task until it is done (or timeout); returns its output.
local function wait_done(emu, id, timeout)
  local deadline = socket.gettime() + (timeout or 5)
  while true do
    local out = output_of(emu, id)
    if out.status == "success" or out.status == "fail" then return out end
    assert(socket.gettime() < deadline, "task not done in time: " .. tostring(out.status))
    socket.sleep(0.02)
  end
end

-- Creates a task that succeeds at once and returns its output once done.
local function make_image(emu, input)
  local status, doc = create(emu, input)
  assert(status == 200, "create: HTTP " .. tostring(status) .. " " .. cjson.encode(doc or {}))
  return wait_done(emu, doc.task_id)
end

local function download(emu, url, headers)
  local path = url:match("^https?://[^/]+(/.*)$")
  return emu:http("GET", path, nil, headers)
end

-- PNG: checks the signature and every chunk's CRC; returns width, height and the inflated image
-- data (from all IDAT chunks).
local function parse_png(bytes)
  local image = png.read(bytes)
  assert(image.channels == 3, "8-bit RGB")
  assert(image.complete, "zlib stream complete")
  local pixels, stride = image.data, 1 + 3 * image.width
  for row = 0, image.height - 1 do
    local filter = pixels:byte(row * stride + 1)
    if filter == nil then break end -- short data: the caller's length check says so
    assert(filter <= 4, "PNG filter type of row " .. row)
  end
  return image.width, image.height, pixels
end

-- JPEG: width and height from the first SOF0 frame header, and whether it ends with EOI.
local function parse_jpeg(bytes)
  assert(bytes:sub(1, 2) == "\255\216", "JPEG SOI")
  local pos = 3
  while pos < #bytes do
    assert(bytes:byte(pos) == 0xFF, "JPEG marker")
    local marker = bytes:byte(pos + 1)
    local length = lua.uint_be(bytes, pos + 2, 2)
    if marker == 0xC0 then
      local height, width = lua.uint_be(bytes, pos + 5, 2), lua.uint_be(bytes, pos + 7, 2)
      return width, height, bytes:sub(-2) == "\255\217"
    end
    assert(marker ~= 0xDA, "SOF0 before SOS")
    pos = pos + 2 + length
  end
  error("no SOF0")
end

-- A raw connection for what luasocket.http cannot send.
local function raw(emu)
  local host, port = emu.url:match("^http://([^:]+):(%d+)$")
  local sock = assert(socket.connect(host, tonumber(port)))
  sock:settimeout(5)
  return sock
end

-- Reads one HTTP response from a blocking socket: status, headers (lowercase), body
-- (none after a HEAD request: head_only).
local function read_response(sock, head_only)
  local line, err = sock:receive("*l")
  if not line then return nil, err end
  local status = tonumber(line:match("^HTTP/1%.%d (%d%d%d)"))
  local headers = {}
  while true do
    local h = assert(sock:receive("*l"))
    if h == "" then break end
    local name, value = h:match("^([^:]+):%s*(.-)%s*$")
    headers[name:lower()] = value
  end
  local length = tonumber(headers["content-length"] or "0")
  local body = (length > 0 and not head_only) and assert(sock:receive(length)) or ""
  return status, headers, body
end

local function count(stats, endpoint, status)
  local by_status = stats.requests[endpoint]
  return by_status and by_status[tostring(status)] or 0
end

-- ---------------------------------------------------------------------------------------------

describe("dh3-emulator", function()
  describe("create and get", function()
    local emu
    setup(function()
      emu = emulator.start{ "--queue-time", "0", "--process-time", "0.05", "--create-qps", "1000" }
    end)
    teardown(function() emu:stop() end)

    it("answers a create with code 200, message ok and a 32-hex task_id", function()
      local status, doc, headers = create(emu)
      assert.are.equal(200, status)
      assert.matches("^application/json", headers["content-type"])
      assert.are.equal(200, doc.code)
      assert.are.equal("ok", doc.message)
      assert.matches("^%x+$", doc.task_id)
      assert.are.equal(32, #doc.task_id)
    end)

    it("reports a success with one ImageFile whose size fields are strings and file_size is exact", function()
      local _, created = create(emu, { prompt = "a red fox", aspect_ratio = "4:3" })
      local out = wait_done(emu, created.task_id)
      local status, doc = get(emu, created.task_id)
      assert.are.equal(200, status)
      assert.are.equal(200, doc.code)
      assert.are.equal("Ok", doc.message)
      assert.are.equal(created.task_id, out.task_id)
      assert.are.equal("success", out.status)
      assert.is_nil(out.err_msg)
      assert.are.equal(1, #out.images)
      local image = out.images[1]
      for _, field in ipairs{ "file_size", "width", "height" } do
        assert.are.equal("string", type(image[field]), field)
        assert.matches("^%d+$", image[field])
      end
      assert.are.equal("1200", image.width)
      assert.are.equal("896", image.height)
      assert.are.equal("image/png", image.content_type)
      assert.are.equal(created.task_id .. ".png", image.file_name)
      assert.are.equal(emu.url .. "/files/" .. image.file_name, image.url)
      local fstatus, bytes, fheaders = download(emu, image.url)
      assert.are.equal(200, fstatus)
      assert.are.equal("image/png", fheaders["content-type"])
      assert.are.equal(tonumber(image.file_size), #bytes)
      assert.are.equal(image.file_size, fheaders["content-length"])
    end)

    it("serves HEAD /files with the length and no body, and needs no key", function()
      local out = make_image(emu, { prompt = "head request", output_format = "jpg" })
      local path = out.images[1].url:match("^https?://[^/]+(/.*)$")
      local sock = raw(emu)
      sock:send("HEAD " .. path .. " HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
      local status, headers = read_response(sock, true)
      assert.are.equal(200, status)
      assert.are.equal("image/jpeg", headers["content-type"])
      assert.are.equal(out.images[1].file_size, headers["content-length"])
      -- the next answer on the same connection proves no body bytes were sent after the head
      local next_status = read_response(sock)
      assert.are.equal(404, next_status)
      sock:close()
    end)

    it("counts /files requests that carry an Authorization header", function()
      local out = make_image(emu, { prompt = "counted download" })
      local before = emu:stats().files_with_auth
      download(emu, out.images[1].url)
      assert.are.equal(before, emu:stats().files_with_auth)
      download(emu, out.images[1].url, { authorization = "Bearer leaked" })
      assert.are.equal(before + 1, emu:stats().files_with_auth)
    end)

    it("reads the task_id from a URL-encoded query string", function()
      local _, created = create(emu)
      local encoded = created.task_id:gsub("%x", function(c) return ("%%%02X"):format(c:byte()) end)
      local status, doc = emu:http("GET", "/api/v1/task/get?x=1&task_id=" .. encoded, nil, auth(emu))
      assert.are.equal(200, status)
      assert.are.equal(created.task_id, decode(doc).nano_banana_pro_output.task_id)
    end)

    it("answers 422 naming task_id when it is missing", function()
      local status, text = emu:http("GET", "/api/v1/task/get", nil, auth(emu))
      assert.are.equal(422, status)
      assert.are.same({ code = 422, message = "task_id: is required" }, decode(text))
    end)

    it("answers 404 task not found for an unknown id", function()
      local status, doc = get(emu, ("0"):rep(32))
      assert.are.equal(404, status)
      assert.are.same({ code = 404, message = "task not found" }, doc)
    end)

    it("answers 405 with Allow for a wrong method on a known path", function()
      local status, text, headers = emu:http("GET", "/api/v1/task/create", nil, auth(emu))
      assert.are.equal(405, status)
      assert.are.equal("POST", headers["allow"])
      assert.are.equal(405, decode(text).code)
      status, text, headers = emu:http("DELETE", "/api/v1/task/get?task_id=x", nil, auth(emu))
      assert.are.equal(405, status)
      assert.are.equal("GET", headers["allow"])
      assert.are.equal(405, decode(text).code)
    end)

    it("answers 404 JSON for unknown paths and counts them as other", function()
      local before = count(emu:stats(), "other", 404)
      local status, text = emu:http("GET", "/api/v2/nothing", nil, auth(emu))
      assert.are.equal(404, status)
      assert.are.equal(404, decode(text).code)
      assert.are.equal(before + 1, count(emu:stats(), "other", 404))
    end)

    it("answers 404 for files of unknown or unfinished tasks", function()
      assert.are.equal(404, (emu:http("GET", "/files/" .. ("ab"):rep(16) .. ".png")))
      local _, created = create(emu, { prompt = "still queuing {emu:queue=5}" })
      assert.are.equal(404, (emu:http("GET", "/files/" .. created.task_id .. ".png")))
    end)

    it("tolerates unknown extra fields", function()
      local status = create(emu, { prompt = "extra fields", seed = 5 }, { webhook_secret = "x" })
      assert.are.equal(200, status)
    end)

    it("accepts a chunked request body", function()
      local body = cjson.encode{ model = MODEL, nano_banana_pro_input = { prompt = "chunked body" } }
      local sock = raw(emu)
      local a, b = body:sub(1, 10), body:sub(11)
      sock:send(("POST /api/v1/task/create HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        .. "Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"):format(emu.key, #a, a, #b, b))
      local status, _, text = read_response(sock)
      sock:close()
      assert.are.equal(200, status)
      assert.are.equal(200, decode(text).code)
    end)

    it("answers 100 Continue before reading a body announced with Expect", function()
      local body = cjson.encode{ model = MODEL, nano_banana_pro_input = { prompt = ("long "):rep(400) } }
      local sock = raw(emu)
      sock:send(("POST /api/v1/task/create HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        .. "Content-Length: %d\r\nExpect: 100-continue\r\n\r\n"):format(emu.key, #body))
      assert.are.equal("HTTP/1.1 100 Continue", sock:receive("*l"))
      assert.are.equal("", sock:receive("*l"))
      sock:send(body)
      local status = read_response(sock)
      sock:close()
      assert.are.equal(200, status)
    end)
  end)

  describe("the task clock", function()
    local emu
    setup(function() emu = emulator.start{ "--queue-time", "0.3", "--process-time", "0.3" } end)
    teardown(function() emu:stop() end)

    it("moves a task through queuing, processing and success", function()
      local t0 = socket.gettime()
      local _, created = create(emu)
      local function state_at(t)
        socket.sleep(math.max(0, t0 + t - socket.gettime()))
        return output_of(emu, created.task_id).status
      end
      assert.are.equal("queuing", state_at(0.1))
      assert.are.equal("processing", state_at(0.45))
      assert.are.equal("success", state_at(0.75))
      local stats = emu:stats()
      assert.are.equal(1, stats.tasks.success)
      assert.are.equal(1, stats.creates)
    end)

    it("lets prompt markers override the times of one task", function()
      local _, created = create(emu, { prompt = "quick {emu:queue=0}{emu:process=0}" })
      assert.are.equal("success", output_of(emu, created.task_id).status)
      _, created = create(emu, { prompt = "slow queue {emu:queue=5}" })
      socket.sleep(0.7)
      assert.are.equal("queuing", output_of(emu, created.task_id).status)
    end)
  end)

  describe("input validation", function()
    local emu
    setup(function() emu = emulator.start{ "--queue-time", "0", "--process-time", "0", "--create-qps", "1000" } end)
    teardown(function() emu:stop() end)

    local nine = {}
    for i = 1, 9 do nine[i] = "http://example.com/" .. i .. ".png" end
    -- luacheck: push ignore 631 (one case a line)
    local rows = {
      { "a missing prompt", { image_urls = { "http://example.com/a.png" } }, nil, 422, "nano_banana_pro_input.prompt: is required" },
      { "a short prompt", { prompt = "ab" }, nil, 422, "nano_banana_pro_input.prompt: must be 3 to 20000 characters, got 2" },
      { "a long prompt", { prompt = ("x"):rep(20001) }, nil, 422, "nano_banana_pro_input.prompt: must be 3 to 20000 characters, got 20001" },
      { "a prompt of 2 characters in 8 bytes", { prompt = "\240\159\152\128\240\159\152\128" }, nil, 422, "nano_banana_pro_input.prompt: must be 3 to 20000 characters, got 2" },
      { "a prompt of 3 characters in 6 bytes", { prompt = "\195\169\195\169\195\169" }, nil, 200 },
      { "a prompt of exactly 20000 characters", { prompt = ("y"):rep(20000) }, nil, 200 },
      { "a prompt that is not UTF-8", { prompt = "\255\254\253\252" }, nil, 422, "nano_banana_pro_input.prompt: is not valid UTF-8" },
      { "a prompt that is a number", { prompt = 12345 }, nil, 422, "nano_banana_pro_input.prompt: must be a string" },
      { "nine reference images", { prompt = "refs", image_urls = nine }, nil, 422, "nano_banana_pro_input.image_urls: at most 8 reference images, got 9" },
      { "image_urls as a string", { prompt = "refs", image_urls = "http://example.com/a.png" }, nil, 422, "nano_banana_pro_input.image_urls: must be an array of strings" },
      { "a reference that is not http", { prompt = "refs", image_urls = { "ftp://example.com/a.png" } }, nil, 422, "nano_banana_pro_input.image_urls: item 1 is not an http(s) URL" },
      { "an unknown aspect ratio", { prompt = "ratio", aspect_ratio = "7:5" }, nil, 422, "^nano_banana_pro_input%.aspect_ratio: must be one of 1:1, 2:3" },
      { "an unknown resolution", { prompt = "res", resolution = "8K" }, nil, 422, "^nano_banana_pro_input%.resolution: must be one of 1K, 2K, 4K$" },
      { "an unknown output format", { prompt = "fmt", output_format = "gif" }, nil, 422, "^nano_banana_pro_input%.output_format: must be one of png, jpg$" },
      { "a null aspect ratio", { prompt = "null", aspect_ratio = cjson.null }, nil, 422, "^nano_banana_pro_input%.aspect_ratio: must be one of" },
      { "a callback URL that is not http", { prompt = "call back" }, { callback_url = "mailto:x@y" }, 422, "callback_url: must be an http(s) URL" },
      { "an unknown model", { prompt = "model" }, { model = "other-model" }, 422, '^model: must be "nano%-banana%-pro"' },
      { "every option at once", { prompt = "all options", image_urls = { "https://example.com/a.jpg" },
        aspect_ratio = "21:9", resolution = "2K", output_format = "jpg" }, { callback_url = "http://127.0.0.1:1/cb" }, 200 },
    }
    -- luacheck: pop
    for _, row in ipairs(rows) do
      local name, input, extra, want_status, want_message = row[1], row[2], row[3], row[4], row[5]
      it(("answers %d to %s"):format(want_status, name), function()
        local status, doc = create(emu, input, extra)
        assert.are.equal(want_status, status)
        assert.are.equal(want_status, doc.code)
        if want_message and want_message:sub(1, 1) == "^" then
          assert.matches(want_message, doc.message)
        elseif want_message then
          assert.are.equal(want_message, doc.message)
        end
      end)
    end

    local bodies = {
      { "a body that is not JSON", "model=nano-banana-pro", 400 },
      { "a JSON array", '[{"model":"nano-banana-pro"}]', 400 },
      { "an empty body", "", 400 },
      { "truncated JSON", '{"model":"nano-banana-pro","nano_banana_pro_input":{"prompt":"abc"', 400 },
      { "an object without model", '{"nano_banana_pro_input":{"prompt":"abc"}}', 422, "model: is required" },
      { "an object without input", '{"model":"nano-banana-pro"}', 422, "nano_banana_pro_input: is required" },
      { "an input that is a string", '{"model":"nano-banana-pro","nano_banana_pro_input":"abc"}', 422, "nano_banana_pro_input: must be an object" },
      { "a model that is a number", '{"model":3,"nano_banana_pro_input":{"prompt":"abc"}}', 422, "model: must be a string" },
    }
    for _, row in ipairs(bodies) do
      it(("answers %d to %s"):format(row[3], row[1]), function()
        local status, text = emu:http("POST", "/api/v1/task/create", row[2], auth(emu))
        local doc = decode(text)
        assert.are.equal(row[3], status)
        assert.are.equal(row[3], doc.code)
        if row[4] then assert.are.equal(row[4], doc.message) end
      end)
    end

    it("creates nothing for refused input", function()
      emu:reset()
      create(emu, { prompt = "no" })
      emu:http("POST", "/api/v1/task/create", "nonsense", auth(emu))
      local stats = emu:stats()
      assert.are.equal(0, stats.creates)
      assert.are.equal(1, count(stats, "POST /api/v1/task/create", 422))
      assert.are.equal(1, count(stats, "POST /api/v1/task/create", 400))
    end)
  end)

  describe("keys and credits", function()
    local emu, other = nil, "other-key-456"
    setup(function()
      emu = emulator.start{ keys = false, "--keys", "spec-key-0123456789," .. other,
        "--credits", "2", "--queue-time", "0", "--process-time", "0" }
    end)
    teardown(function() emu:stop() end)

    it("answers 401 without a key, with an unknown key, or with an empty one", function()
      local body = cjson.encode{ model = MODEL, nano_banana_pro_input = { prompt = "no key" } }
      local cases = {
        { ["content-type"] = "application/json" },
        auth(emu, "wrong-key"),
        { authorization = "Bearer ", ["content-type"] = "application/json" },
        { authorization = "Basic " .. emu.key },
      }
      for _, headers in ipairs(cases) do
        local status, text = emu:http("POST", "/api/v1/task/create", body, headers)
        assert.are.equal(401, status)
        assert.are.equal(401, decode(text).code)
      end
      assert.are.equal(401, (get(emu, ("0"):rep(32), "wrong-key")))
    end)

    it("hides a task from another accepted key (404)", function()
      local _, created = create(emu, { prompt = "mine" })
      assert.are.equal(200, (get(emu, created.task_id)))
      local status, doc = get(emu, created.task_id, other)
      assert.are.equal(404, status)
      assert.are.equal("task not found", doc.message)
    end)

    it("answers 402 once a key's credits are spent, and counts per key", function()
      emu:reset()
      assert.are.equal(200, (create(emu)))
      assert.are.equal(200, (create(emu)))
      local status, doc = create(emu)
      assert.are.equal(402, status)
      assert.are.equal(402, doc.code)
      assert.are.equal(200, (create(emu, nil, nil, other)))
      assert.are.equal(3, emu:stats().creates)
    end)

    it("restores credits on reset and takes a new budget from config", function()
      emu:reset()
      assert.are.equal(200, (create(emu)))
      emu:config{ credits = 1 }
      assert.are.equal(200, (create(emu)))
      assert.are.equal(402, (create(emu)))
      emu:config{ credits = cjson.null }
      assert.are.equal(200, (create(emu)))
      emu:config{ credits = 2 }
    end)
  end)

  describe("create pacing", function()
    local emu
    setup(function() emu = emulator.start{ "--queue-time", "0", "--process-time", "0" } end)
    teardown(function() emu:stop() end)

    it("refuses the 4th create within a second with 429 and Retry-After: 1", function()
      emu:reset()
      local t0 = socket.gettime()
      for _ = 1, 3 do assert.are.equal(200, (create(emu))) end
      local status, doc, headers = create(emu)
      assert.is_true(socket.gettime() - t0 < 1, "the four creates took over a second")
      assert.are.equal(429, status)
      assert.are.equal(429, doc.code)
      assert.are.equal("1", headers["retry-after"])
      local stats = emu:stats()
      assert.are.equal(3, stats.creates)
      assert.are.equal(3, count(stats, "POST /api/v1/task/create", 200))
      assert.are.equal(1, count(stats, "POST /api/v1/task/create", 429))
      -- the window slides: a second after the first create there is room again
      socket.sleep(math.max(0, t0 + 1.05 - socket.gettime()))
      assert.are.equal(200, (create(emu)))
    end)

    it("counts only accepted creates in the window", function()
      emu:reset()
      for _ = 1, 5 do create(emu, { prompt = "x" }) end -- refused: 422
      for _ = 1, 3 do assert.are.equal(200, (create(emu))) end
      assert.are.equal(429, (create(emu)))
    end)
  end)

  describe("errors in body mode", function()
    local emu
    setup(function() emu = emulator.start{ "--errors-in-body", "--queue-time", "0", "--process-time", "0" } end)
    teardown(function() emu:stop() end)

    it("answers errors as HTTP 200 with the code in the body", function()
      local status, doc = create(emu, nil, nil, "bad-key")
      assert.are.equal(200, status)
      assert.are.equal(401, doc.code)
      status, doc = create(emu, { prompt = "no" })
      assert.are.equal(200, status)
      assert.are.equal(422, doc.code)
      status, doc = get(emu, ("f"):rep(32))
      assert.are.equal(200, status)
      assert.are.same({ code = 404, message = "task not found" }, doc)
      status, doc = create(emu)
      assert.are.equal(200, status)
      assert.are.equal(200, doc.code)
      assert.are.equal(1, count(emu:stats(), "POST /api/v1/task/create", 401))
    end)

    it("still answers /files with real statuses", function()
      assert.are.equal(404, (emu:http("GET", "/files/00.png")))
    end)
  end)

  describe("images", function()
    local emu
    setup(function()
      emu = emulator.start{ "--queue-time", "0", "--process-time", "0", "--create-qps", "1000" }
    end)
    teardown(function() emu:stop() end)

    local cases = {
      { "1:1", "1K", "png", 1024, 1024 },
      { "3:4", "2K", "png", 1792, 2400 },
      { "21:9", "2K", "jpg", 3168, 1344 },
      { "9:16", "1K", "jpg", 768, 1376 },
      { "16:9", "4K", "png", 5504, 3072 },
      { "16:9", "4K", "jpg", 5504, 3072 },
    }
    for _, c in ipairs(cases) do
      local ratio, res, format, w, h = lua.unpack(c)
      it(("makes %s %s %s images of exactly %dx%d"):format(ratio, res, format, w, h), function()
        local out = make_image(emu, { prompt = "size check", aspect_ratio = ratio, resolution = res, output_format = format })
        local image = out.images[1]
        assert.are.equal(tostring(w), image.width)
        assert.are.equal(tostring(h), image.height)
        local status, bytes = download(emu, image.url)
        assert.are.equal(200, status)
        assert.are.equal(tonumber(image.file_size), #bytes)
        if format == "png" then
          local pw, ph, pixels = parse_png(bytes)
          assert.are.same({ w, h }, { pw, ph })
          if res ~= "4K" then assert.are.equal(h * (1 + 3 * w), #pixels) end
        else
          local jw, jh, complete = parse_jpeg(bytes)
          assert.are.same({ w, h }, { jw, jh })
          assert.is_true(complete)
        end
      end)
    end

    it("defaults to 1:1, 1K, png", function()
      local image = make_image(emu, { prompt = "defaults" }).images[1]
      assert.are.same({ "1024", "1024", "image/png" }, { image.width, image.height, image.content_type })
    end)

    it("draws different pictures for different tasks", function()
      -- hues come in 24 steps drawn at random: unseeded, two tasks would share one in 24 runs
      local seeded = emulator.start{ "--seed", "7", "--queue-time", "0", "--process-time", "0" }
      finally(function() seeded:stop() end)
      local a = make_image(seeded, { prompt = "first" }).images[1]
      local b = make_image(seeded, { prompt = "second" }).images[1]
      local _, bytes_a = download(seeded, a.url)
      local _, bytes_b = download(seeded, b.url)
      local _, _, pixels_a = parse_png(bytes_a)
      local _, _, pixels_b = parse_png(bytes_b)
      assert.are_not.equal(pixels_a, pixels_b)
    end)

    it("serves the same bytes on every download", function()
      local image = make_image(emu, { prompt = "stable", output_format = "jpg" }).images[1]
      local _, first = download(emu, image.url)
      local _, second = download(emu, image.url)
      assert.are.equal(first, second)
    end)

    it("makes auto follow the shape of the emulator's own reference image", function()
      local ref = make_image(emu, { prompt = "reference", aspect_ratio = "21:9" }).images[1]
      local image = make_image(emu, { prompt = "follow it", aspect_ratio = "auto", resolution = "2K",
        image_urls = { ref.url, "http://127.0.0.1:1/other.png" } }).images[1]
      assert.are.same({ "3168", "1344" }, { image.width, image.height })
    end)

    it("makes auto 1:1 without references or with an unreadable one", function()
      local plain = make_image(emu, { prompt = "auto alone", aspect_ratio = "auto" }).images[1]
      assert.are.same({ "1024", "1024" }, { plain.width, plain.height })
      local refused = make_image(emu, { prompt = "auto refused", aspect_ratio = "auto",
        image_urls = { "http://127.0.0.1:1/ref.png" } }).images[1]
      assert.are.same({ "1024", "1024" }, { refused.width, refused.height })
      local https = make_image(emu, { prompt = "auto https", aspect_ratio = "auto",
        image_urls = { "https://example.com/ref.png" } }).images[1]
      assert.are.same({ "1024", "1024" }, { https.width, https.height })
    end)

    it("makes auto follow a reference image fetched over http from another server", function()
      local other = emulator.start{ "--queue-time", "0", "--process-time", "0" }
      local ok, err = pcall(function()
        local ref = make_image(other, { prompt = "far reference", aspect_ratio = "9:16", output_format = "jpg" }).images[1]
        local image = make_image(emu, { prompt = "follow far", aspect_ratio = "auto", image_urls = { ref.url } }).images[1]
        assert.are.same({ "768", "1376" }, { image.width, image.height })
      end)
      other:stop()
      assert(ok, err)
    end)
  end)

  describe("forced outcomes and the fail rate", function()
    local emu
    setup(function()
      emu = emulator.start{ "--queue-time", "0", "--process-time", "0", "--create-qps", "1000" }
    end)
    teardown(function() emu:stop() end)

    it("names a task's image as {emu:file_name=NAME} says, serving it at its usual URL", function()
      local status, created = create(emu, { prompt = "named {emu:file_name=runs.journal}" })
      assert.are.equal(200, status)
      local image = wait_done(emu, created.task_id).images[1]
      assert.are.equal("runs.journal", image.file_name)
      assert.are.equal(emu.url .. "/files/" .. created.task_id .. ".png", image.url)
      local fstatus, bytes = download(emu, image.url)
      assert.are.equal(200, fstatus)
      assert.are.equal(tonumber(image.file_size), #bytes)
    end)

    it("fails a task marked {emu:fail} with Upstream model error", function()
      local out = make_image(emu, { prompt = "doomed {emu:fail}" })
      assert.are.equal("fail", out.status)
      assert.are.equal("Upstream model error", out.err_msg)
      assert.is_nil(out.images)
    end)

    it("fails a task marked {emu:fail=MESSAGE} with that message", function()
      local out = make_image(emu, { prompt = "{emu:fail=Content policy violation} a cat" })
      assert.are.equal("fail", out.status)
      assert.are.equal("Content policy violation", out.err_msg)
    end)

    it("succeeds a task marked {emu:success} whatever the fail rate", function()
      emu:config{ fail_rate = 1 }
      local forced = make_image(emu, { prompt = "lucky {emu:success}" })
      local unforced = make_image(emu, { prompt = "unlucky" })
      emu:config{ fail_rate = 0 }
      assert.are.equal("success", forced.status)
      assert.are.equal("fail", unforced.status)
      assert.are.equal("Upstream model error", unforced.err_msg)
    end)

    it("draws the same outcomes for the same seed, also after a reset", function()
      local function outcomes(e)
        local list = {}
        for i = 1, 12 do
          local _, doc = create(e, { prompt = "coin " .. i })
          list[i] = wait_done(e, doc.task_id).status
        end
        return table.concat(list, ",")
      end
      local flags = { "--fail-rate", "0.5", "--seed", "42", "--queue-time", "0", "--process-time", "0", "--create-qps", "0" }
      local a, b = emulator.start(flags), emulator.start(flags)
      local ok, err = pcall(function()
        local first = outcomes(a)
        assert.matches("success", first)
        assert.matches("fail", first)
        assert.are.equal(first, outcomes(b))
        a:reset()
        assert.are.equal(first, outcomes(a))
      end)
      a:stop()
      b:stop()
      assert(ok, err)
    end)
  end)

  describe("callbacks", function()
    local emu
    setup(function()
      emu = emulator.start{ "--queue-time", "0", "--process-time", "0.05", "--create-qps", "1000",
        "--callback-retry-delay", "0.05", "--callback-timeout", "0.3" }
    end)
    teardown(function() emu:stop() end)
    before_each(function() emu:reset() end)

    -- A callback receiver in this process: answers each delivery with the next of answers
    -- ("hang" holds the connection unanswered); records what arrived.
    local function receiver(answers)
      local server = assert(socket.bind("127.0.0.1", 0))
      server:settimeout(0)
      local _, port = server:getsockname()
      local r = { url = ("http://127.0.0.1:%d/hook"):format(port), received = {}, held = {} }
      function r.pump(until_fn, timeout)
        local deadline = socket.gettime() + (timeout or 5)
        while not until_fn() do
          assert(socket.gettime() < deadline, "callback receiver: timed out")
          socket.select({ server }, nil, 0.02)
          local client = server:accept()
          if client then
            client:settimeout(2)
            local request_line = client:receive("*l")
            local headers = {}
            while true do
              local line = client:receive("*l")
              if not line or line == "" then break end
              local name, value = line:match("^([^:]+):%s*(.*)$")
              headers[name:lower()] = value
            end
            local body = client:receive(tonumber(headers["content-length"]))
            r.received[#r.received + 1] = { line = request_line, headers = headers, body = body, at = socket.gettime() }
            local answer = answers[math.min(#r.received, #answers)]
            if answer == "hang" then
              r.held[#r.held + 1] = client
            else
              client:send(("HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"):format(answer))
              client:close()
            end
          end
        end
      end
      function r.close()
        for _, c in ipairs(r.held) do c:close() end
        server:close()
      end
      return r
    end

    local function log_size(n)
      return function() return #emu:stats().callbacks.log >= n end
    end

    it("posts the GET document and retries after 500 until a 200", function()
      local r = receiver{ 500, 500, 200 }
      local ok, err = pcall(function()
        local _, created = create(emu, { prompt = "call me back" }, { callback_url = r.url })
        r.pump(function() return #r.received >= 3 end)
        r.pump(log_size(3))
        socket.sleep(0.3) -- no fourth attempt after the 200
        r.pump(function() return true end)
        assert.are.equal(3, #r.received)
        local first = r.received[1]
        assert.are.equal("POST /hook HTTP/1.1", first.line)
        assert.matches("^application/json", first.headers["content-type"])
        local _, got = get(emu, created.task_id)
        for _, delivery in ipairs(r.received) do
          assert.are.same(got, decode(delivery.body))
        end
        -- growing delays: D then 2D
        assert.is_true(r.received[2].at - r.received[1].at >= 0.045)
        assert.is_true(r.received[3].at - r.received[2].at >= 0.095)
        local cb = emu:stats().callbacks
        assert.are.equal(3, cb.attempts)
        assert.are.equal(1, cb.delivered)
        assert.are.equal(2, cb.failed)
        assert.are.equal(0, cb.dropped)
        local outcomes, attempts = {}, {}
        for i, entry in ipairs(cb.log) do
          assert.are.equal(created.task_id, entry.task_id)
          outcomes[i], attempts[i] = entry.outcome, entry.attempt
        end
        assert.are.same({ "500", "500", "200" }, outcomes)
        assert.are.same({ 1, 2, 3 }, attempts)
        assert.is_true(cb.log[1].at <= cb.log[2].at and cb.log[2].at <= cb.log[3].at)
      end)
      r.close()
      assert(ok, err)
    end)

    it("gives up after 4 attempts and drops the delivery", function()
      local r = receiver{ 503 }
      local ok, err = pcall(function()
        create(emu, { prompt = "never acknowledged" }, { callback_url = r.url })
        r.pump(log_size(4))
        socket.sleep(0.5)
        r.pump(function() return true end)
        assert.are.equal(4, #r.received)
        assert.is_true(r.received[4].at - r.received[3].at >= 0.195)
        local cb = emu:stats().callbacks
        assert.are.same({ 4, 0, 4, 1 }, { cb.attempts, cb.delivered, cb.failed, cb.dropped })
      end)
      r.close()
      assert(ok, err)
    end)

    it("counts a receiver that does not answer in time as a timeout", function()
      local r = receiver{ "hang", 200 }
      local ok, err = pcall(function()
        create(emu, { prompt = "slow receiver" }, { callback_url = r.url })
        r.pump(log_size(2))
        local log = emu:stats().callbacks.log
        assert.are.equal("timeout", log[1].outcome)
        assert.are.equal("200", log[2].outcome)
      end)
      r.close()
      assert(ok, err)
    end)

    it("counts a refused connection as refused and reports a failed task's err_msg", function()
      local r = receiver{ 200 }
      local ok, err = pcall(function()
        create(emu, { prompt = "nobody home" }, { callback_url = "http://127.0.0.1:1/hook" })
        local _, created = create(emu, { prompt = "{emu:fail=Bad luck}" }, { callback_url = r.url })
        r.pump(function() return #r.received >= 1 end)
        local doc = decode(r.received[1].body)
        assert.are.same({ task_id = created.task_id, status = "fail", err_msg = "Bad luck" }, doc.nano_banana_pro_output)
        r.pump(function()
          for _, entry in ipairs(emu:stats().callbacks.log) do
            if entry.outcome == "refused" then return true end
          end
          return false
        end)
      end)
      r.close()
      assert(ok, err)
    end)
  end)

  describe("faults", function()
    local emu
    setup(function()
      emu = emulator.start{ "--queue-time", "0", "--process-time", "0", "--create-qps", "1000" }
    end)
    teardown(function() emu:stop() end)
    before_each(function() emu:reset() end)
    after_each(function()
      emu:config{ fault_5xx = 0, fault_429 = 0, fault_drop = 0, fault_malformed = 0, fault_create_close = 0,
                  latency = 0 }
    end)

    it("answers 503 task not created on create and 500/502/503 on get for fault_5xx", function()
      local _, created = create(emu)
      emu:config{ fault_5xx = 1 }
      local status, doc = create(emu)
      assert.are.equal(503, status)
      assert.are.same({ code = 503, message = "service unavailable; task not created" }, doc)
      for _ = 1, 5 do
        local gstatus, gdoc = get(emu, created.task_id)
        assert.is_truthy(({ [500] = true, [502] = true, [503] = true })[gstatus])
        assert.are.equal(gstatus, gdoc.code)
      end
      local stats = emu:stats()
      assert.are.equal(1, stats.creates)
      assert.are.equal(6, stats.faults["5xx"])
    end)

    it("answers 429 with Retry-After for fault_429", function()
      emu:config{ fault_429 = 1 }
      local status, doc, headers = create(emu)
      assert.are.equal(429, status)
      assert.are.equal(429, doc.code)
      assert.are.equal("1", headers["retry-after"])
      local stats = emu:stats()
      assert.are.equal(0, stats.creates)
      assert.are.equal(1, stats.faults["429"])
    end)

    it("closes the connection unanswered for fault_drop", function()
      emu:config{ fault_drop = 1 }
      local sock = raw(emu)
      sock:send(("GET /api/v1/task/get?task_id=x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"):format(emu.key))
      local line, err = sock:receive("*l")
      sock:close()
      assert.is_nil(line)
      assert.are.equal("closed", err)
      local status = create(emu)
      assert.are_not.equal(200, status)
      local stats = emu:stats()
      assert.are.equal(0, stats.creates)
      assert.are.equal(2, stats.faults.drop)
      assert.are.equal(1, count(stats, "GET /api/v1/task/get", "dropped"))
    end)

    it("takes a create, then closes its connection unanswered, for --fault-create-close", function()
      local e = emulator.start{ "--fault-create-close", "1", "--queue-time", "0", "--process-time", "0" }
      local ok, err = pcall(function()
        local body = cjson.encode{ model = MODEL, nano_banana_pro_input = { prompt = "taken, never answered" } }
        local sock = raw(e)
        sock:send(("POST /api/v1/task/create HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
          .. "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"):format(e.key, #body, body))
        local line, rerr = sock:receive("*l")
        sock:close()
        assert.is_nil(line)
        assert.are.equal("closed", rerr)
        -- a create refused anyway is answered; a read is never affected
        assert.are.equal(401, (create(e, nil, nil, "not-the-key")))
        assert.are.equal(404, (get(e, ("0"):rep(32))))
        local stats = e:stats()
        assert.are.equal(1, stats.creates) -- the task was made
        assert.are.equal(1, stats.tasks.success)
        assert.are.equal(1, stats.faults.create_close)
        assert.are.equal(1, count(stats, "POST /api/v1/task/create", "closed"))
        assert.are.equal(1, count(stats, "POST /api/v1/task/create", 401))
      end)
      e:stop()
      assert(ok, err)
    end)

    it("answers 200 with truncated JSON for fault_malformed", function()
      emu:config{ fault_malformed = 1 }
      local status, text = emu:http("POST", "/api/v1/task/create",
        cjson.encode{ model = MODEL, nano_banana_pro_input = { prompt = "abc" } }, auth(emu))
      assert.are.equal(200, status)
      assert.is_nil(decode(text))
      local stats = emu:stats()
      assert.are.equal(0, stats.creates)
      assert.are.equal(1, stats.faults.malformed)
    end)

    it("never injects faults into /files or /_emulator", function()
      local image = make_image(emu, { prompt = "safe file" }).images[1]
      emu:config{ fault_5xx = 1 }
      assert.are.equal(200, (download(emu, image.url)))
      assert.are.equal(0, emu:stats().faults["5xx"])
    end)

    it("injects the same faults for the same seed", function()
      local function statuses(e)
        local list = {}
        for i = 1, 16 do list[i] = (get(e, ("%032x"):format(i))) end
        return table.concat(list, ",")
      end
      local flags = { "--seed", "7", "--fault-5xx", "0.5" }
      local a, b = emulator.start(flags), emulator.start(flags)
      local ok, err = pcall(function()
        local first = statuses(a)
        assert.matches("404", first)
        assert.matches("50[023]", first)
        assert.are.equal(first, statuses(b))
      end)
      a:stop()
      b:stop()
      assert(ok, err)
    end)

    it("takes fault rates from the command line too", function()
      local e = emulator.start{ "--fault-5xx", "1" }
      local status, doc = create(e)
      e:stop()
      assert.are.equal(503, status)
      assert.are.equal(503, doc.code)
    end)

    it("delays API answers by latency without holding up other connections", function()
      emu:config{ latency = 0.4 }
      local t0 = socket.gettime()
      local socks = {}
      for i = 1, 5 do
        socks[i] = raw(emu)
        socks[i]:send(("GET /api/v1/task/get?task_id=%d HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"):format(i, emu.key))
      end
      socket.sleep(0.1)
      local stats = emu:stats() -- not an API call: answered at once
      assert.is_true(socket.gettime() - t0 < 0.3, "stats waited for the latency")
      assert.are.equal(5, stats.inflight.now)
      for i = 1, 5 do
        assert.are.equal(404, (read_response(socks[i])))
        socks[i]:close()
      end
      local elapsed = socket.gettime() - t0
      assert.is_true(elapsed >= 0.4, "answered before the latency")
      assert.is_true(elapsed < 1.2, "latencies were served one after another")
      stats = emu:stats()
      assert.are.equal(0, stats.inflight.now)
      assert.is_true(stats.inflight.max >= 5)
    end)
  end)

  describe("connections", function()
    local emu
    setup(function() emu = emulator.start{ "--idle-timeout", "0.5" } end)
    teardown(function() emu:stop() end)

    it("serves 200 concurrent keep-alive connections", function()
      -- its own emulator: a slow run (valgrind) must not meet the short idle timeout of the others
      local own = emulator.start{}
      finally(function() own:stop() end)
      local socks = {}
      for i = 1, 200 do socks[i] = raw(own) end
      for round = 1, 2 do
        for i, sock in ipairs(socks) do
          sock:send(("GET /api/v1/task/get?task_id=%d-%d HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n")
            :format(round, i, own.key))
        end
        for _, sock in ipairs(socks) do
          local status, headers, body = read_response(sock)
          assert.are.equal(404, status)
          assert.is_nil(headers["connection"])
          assert.are.equal(404, decode(body).code)
        end
      end
      local stats = own:stats()
      assert.is_true(stats.connections.open >= 200)
      assert.are.equal(400, count(stats, "GET /api/v1/task/get", 404))
      for _, sock in ipairs(socks) do sock:close() end
    end)

    it("closes idle connections after the idle timeout", function()
      local sock = raw(emu)
      sock:settimeout(2)
      local t0 = socket.gettime()
      local data, err, partial = sock:receive("*a")
      assert.are_not.equal("timeout", err)
      assert.are.equal("", data or partial)
      assert.is_true(socket.gettime() - t0 >= 0.4)
      sock:close()
    end)

    it("honours Connection: close and answers a half-closed connection", function()
      local sock = raw(emu)
      sock:send("GET /_emulator/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      local status, headers = read_response(sock)
      assert.are.equal(200, status)
      assert.are.equal("close", headers["connection"])
      assert.are.equal("closed", select(2, sock:receive("*l")))
      sock:close()
      sock = raw(emu)
      sock:send("GET /_emulator/stats HTTP/1.1\r\nHost: x\r\n\r\n")
      sock:shutdown("send")
      assert.are.equal(200, (read_response(sock)))
      sock:close()
    end)

    local garbage = {
      { "a garbage request line", "HELLO\r\n\r\n", 400 },
      { "a request line without version", "GET /\r\n\r\n", 400 },
      { "HTTP/2 on a plain connection", "GET / HTTP/2.0\r\n\r\n", 505 },
      { "a header line without colon", "GET / HTTP/1.1\r\nHost x\r\n\r\n", 400 },
      { "a malformed Content-Length", "POST /api/v1/task/create HTTP/1.1\r\nContent-Length: ten\r\n\r\n", 400 },
      { "a header section over 16 KiB", "GET / HTTP/1.1\r\nX-Big: " .. ("a"):rep(20 * 1024) .. "\r\n\r\n", 431 },
      { "a body over 1 MiB", "POST /api/v1/task/create HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n" .. ("x"):rep(2000000), 413 },
      { "a bad chunk size", "POST /api/v1/task/create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400 },
    }
    for _, row in ipairs(garbage) do
      it(("answers %d to %s, closes, and stays up"):format(row[3], row[1]), function()
        local sock = raw(emu)
        sock:send(row[2])
        local status, headers, body = read_response(sock)
        sock:close()
        assert.are.equal(row[3], status)
        assert.are.equal("close", headers["connection"])
        assert.are.equal(row[3], decode(body).code)
        assert.are.equal(200, (emu:http("GET", "/_emulator/stats")))
      end)
    end

    it("survives a peer that vanishes mid-request", function()
      local sock = raw(emu)
      sock:send("POST /api/v1/task/create HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"model\"")
      sock:close()
      assert.are.equal(200, (emu:http("GET", "/_emulator/stats")))
    end)
  end)

  describe("introspection", function()
    local emu
    setup(function() emu = emulator.start{ "--queue-time", "0", "--process-time", "0" } end)
    teardown(function() emu:stop() end)

    it("reports every counter with the documented shape", function()
      emu:reset()
      local _, created = create(emu)
      wait_done(emu, created.task_id)
      local stats = emu:stats()
      assert.are.equal(1, stats.creates)
      assert.are.same({ queuing = 0, processing = 0, success = 1, fail = 0 }, stats.tasks)
      assert.are.same({ ["5xx"] = 0, ["429"] = 0, drop = 0, malformed = 0, create_close = 0 }, stats.faults)
      assert.are.same({ attempts = 0, delivered = 0, failed = 0, dropped = 0, log = {} }, stats.callbacks)
      assert.are.equal(1, count(stats, "POST /api/v1/task/create", 200))
      assert.is_true(count(stats, "GET /api/v1/task/get", 200) >= 1)
      assert.are.equal(0, stats.files_with_auth)
      assert.are.equal("number", type(stats.inflight.max))
      assert.is_true(stats.connections.total >= 1)
      local _, text = emu:http("GET", "/_emulator/stats")
      assert.matches('"log":%[%]', text)
    end)

    it("forgets tasks and counters on reset", function()
      local _, created = create(emu)
      emu:reset()
      local stats = emu:stats()
      assert.are.equal(0, stats.creates)
      assert.are.same({}, stats.requests)
      assert.are.equal(404, (get(emu, created.task_id)))
    end)

    it("changes options at run time and refuses unknown keys or bad values", function()
      emu:config{ queue_time = 5 }
      local _, created = create(emu)
      assert.are.equal("queuing", output_of(emu, created.task_id).status)
      local status, text = emu:http("GET", "/_emulator/config")
      assert.are.equal(200, status)
      assert.are.equal(5, decode(text).queue_time)
      emu:config{ queue_time = 0 }
      local bad = {
        '{"nonsense":1}', '{"latency":"slow"}', '{"fail_rate":2}', '{"errors_in_body":1}',
        '{"port":9}', '[1]', 'nope',
      }
      for _, body in ipairs(bad) do
        local bstatus, btext = emu:http("POST", "/_emulator/config", body)
        assert.are.equal(400, bstatus, body)
        assert.are.equal(400, decode(btext).code)
      end
      assert.are.equal(0, decode(select(2, emu:http("GET", "/_emulator/config"))).queue_time)
    end)
  end)

  describe("dh3.emulator.server, driven in this process with step()", function()
    if lua.version ~= "5.4" then
      pending("the emulator is Lua 5.4's: its server runs in this process only there (it yields across "
        .. "pcall, which Lua 5.1 cannot)")
      return
    end
    local server = require "dh3.emulator.server"

    -- Sends raw request text and steps srv until one whole response has arrived.
    local function roundtrip(srv, text, timeout)
      local client = assert(socket.connect("127.0.0.1", srv:port()))
      client:send(text)
      client:settimeout(0)
      local got, deadline = "", socket.gettime() + (timeout or 3)
      while socket.gettime() < deadline do
        srv:step(0.01)
        local data, err, partial = client:receive(65536)
        got = got .. (data or partial or "")
        local head_end = got:find("\r\n\r\n", 1, true)
        if head_end then
          local length = tonumber(got:match("[Cc]ontent%-[Ll]ength: (%d+)")) or 0
          if #got >= head_end + 3 + length then break end
        end
        if err == "closed" then break end
      end
      client:close()
      return tonumber(got:match("^HTTP/1%.1 (%d+)")), got:match("\r\n\r\n(.*)$"), got
    end

    it("serves a handler's answer and reports its port and URL", function()
      local srv = assert(server.new{ port = 0, handler = function(req, respond)
        respond(200, { ["Content-Type"] = "text/plain" }, req.method .. " " .. req.path .. " " .. tostring(req.query))
      end })
      assert.is_true(srv:port() > 0)
      assert.are.equal("http://127.0.0.1:" .. srv:port(), srv:url())
      local status, body = roundtrip(srv, "GET /a/b?c=d HTTP/1.1\r\nHost: x\r\n\r\n")
      srv:close()
      assert.are.equal(200, status)
      assert.are.equal("GET /a/b c=d", body)
    end)

    it("waits for an answer given after the handler returned", function()
      local srv
      srv = assert(server.new{ port = 0, handler = function(_, respond)
        srv.loop:spawn(function()
          srv.loop:sleep(0.1)
          respond(202, nil, "later")
        end)
      end })
      local t0 = socket.gettime()
      local status, body = roundtrip(srv, "POST /hook HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
      srv:close()
      assert.are.equal(202, status)
      assert.are.equal("later", body)
      assert.is_true(socket.gettime() - t0 >= 0.1)
    end)

    it("answers 500 when the handler raises, reports it, and goes on", function()
      local errors = {}
      local srv = assert(server.new{ port = 0,
        on_error = function(msg) errors[#errors + 1] = msg end,
        handler = function(req, respond)
          if req.path == "/boom" then error("kaboom") end
          respond(200, nil, "fine")
        end })
      local status = roundtrip(srv, "GET /boom HTTP/1.1\r\n\r\n")
      local after = roundtrip(srv, "GET /ok HTTP/1.1\r\n\r\n")
      srv:close()
      assert.are.equal(500, status)
      assert.are.equal(200, after)
      assert.are.equal(1, #errors)
      assert.matches("kaboom", errors[1])
    end)

    it("closes without answering on respond(nil), and stops listening on close()", function()
      local srv = assert(server.new{ port = 0, handler = function(_, respond) respond(nil) end })
      local port = srv:port()
      local status, _, raw_text = roundtrip(srv, "GET / HTTP/1.1\r\n\r\n")
      assert.is_nil(status)
      assert.are.equal("", raw_text)
      srv:close()
      assert.is_nil(socket.connect("127.0.0.1", port))
    end)
  end)

  describe("command line", function()
    local lua54 = lua.emulator -- the emulator's Lua

    it("lists every flag and the prompt markers in --help", function()
      local pipe = io.popen(lua54 .. " bin/dh3-emulator --help")
      local help = pipe:read("*a")
      pipe:close()
      for _, word in ipairs{ "--host", "--port", "--keys", "--credits", "--create-qps", "--queue-time",
        "--process-time", "--fail-rate", "--seed", "--latency", "--fault-5xx", "--fault-429", "--fault-drop",
        "--fault-malformed", "--errors-in-body", "--callback-timeout", "--callback-retry-delay",
        "--idle-timeout", "{emu:fail}", "{emu:fail=MESSAGE}", "{emu:success}", "{emu:queue=S}", "{emu:process=S}",
        "--fault-create-close", "{emu:file_name=NAME}", "--create-answer-delay" } do
        assert.is_truthy(help:find(word, 1, true), word)
      end
    end)

    it("exits 2 with usage on bad flags", function()
      for _, flags in ipairs{ "--bogus", "--fail-rate 2", "--port x", "--queue-time -1" } do
        local ok, how, code = lua.execute(lua54 .. " bin/dh3-emulator " .. flags .. " 2>/dev/null")
        assert.is_falsy(ok)
        assert.are.same({ "exit", 2 }, { how, code }, flags)
      end
    end)

    it("exits 0 on SIGINT", function()
      local script = ("%s bin/dh3-emulator --port 0 >/dev/null 2>&1 & pid=$!; sleep 0.3; kill -INT $pid; wait $pid"):format(lua54)
      local ok, how, code = lua.execute(script)
      assert.are.same({ true, "exit", 0 }, { ok, how, code })
    end)
  end)

  describe("as a tool for your own tests", function()
    it("--version prints the version, the library's own", function()
      local pipe = lua.popen(lua.emulator .. " bin/dh3-emulator --version")
      local out = pipe:read("*a")
      local ok = pipe:close()
      assert.is_true(ok)
      assert.are.equal("dh3-emulator " .. require("dh3").VERSION .. "\n", out)
    end)

    it("--log shows the image downloads and the /_emulator calls too", function()
      local emu = emulator.start{ "--log", "--queue-time", "0", "--process-time", "0" }
      local _, doc = create(emu, { prompt = "a logged download" })
      local url = output_of(emu, doc.task_id).images[1].url
      local status = emu:http("GET", url:match("^https?://[^/]+(/.*)$"))
      assert.are.equal(200, status)
      emu:stats()
      local log = emu:stop()
      assert.matches("GET /files/" .. doc.task_id .. "%.png %-> 200 %(%d+ bytes sent in [%d.]+s%)", log)
      assert.matches("GET /_emulator/stats %-> 200", log)
      assert.matches("POST /api/v1/task/create %-> 200", log)
    end)

    it("--download-rate streams image files at that rate, serving other requests meanwhile", function()
      local rate = 200000
      local emu = emulator.start{ "--log", "--queue-time", "0", "--process-time", "0.05",
        "--download-rate", tostring(rate) }
      local dh3 = require "dh3"
      local client = assert(dh3.new{ api_key = emu.key, base_url = emu.url })
      local task = assert(client:create{ prompt = "a large slow image", resolution = "4K" })
      assert(task:wait{ interval = 0.05 })
      local size = task.images[1].file_size
      assert.is_true(size > 150000, "a 4K PNG is some 200 KB: " .. size)
      local dir = os.tmpname()
      os.remove(dir)
      local calls, seen, totals, asked, paths, err = 0, {}, {}, false, nil, nil
      local started = dh3.now()
      client:spawn(function()
        paths, err = task:download(dir .. "/", { progress = function(_, bytes, total)
          calls = calls + 1
          seen[#seen + 1], totals[total] = bytes, true
        end })
      end)
      while client:update() > 0 do                 -- a frame loop, as a progress bar's program has
        if not asked and seen[1] then
          asked = true
          emu:stats()                             -- answered while the file is still on its way
        end
        socket.sleep(0.01)
      end
      local elapsed = dh3.now() - started
      client:close()
      local log = emu:stop()
      assert(paths, tostring(err))
      os.execute("rm -rf '" .. dir .. "'")
      -- a lower bound only: a busy machine may take longer, never less
      assert.is_true(elapsed >= size / rate, ("%d bytes at %d B/s took %.3fs"):format(size, rate, elapsed))
      assert.is_true(calls >= 5, "progress was reported " .. calls .. " times")
      for i = 2, #seen do assert.is_true(seen[i] >= seen[i - 1]) end
      assert.are.equal(size, seen[#seen])
      assert.are.same({ [size] = true }, totals)
      local stats_at = log:find("GET /_emulator/stats -> 200", 1, true)
      local file_at = log:find("GET /files/" .. task.id .. ".png -> 200", 1, true)
      assert.is_truthy(stats_at and file_at, log)
      assert.is_true(stats_at < file_at, "the stats request waited for the download:\n" .. log)
    end)
  end)
end)
