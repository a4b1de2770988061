-- What fuzzing found (fuzz/README.md), each fed again through the Lua API as a user meets it, and a
-- few of the corpus's nastiest inputs with their documented results. The inputs are the corpus
-- files themselves (fuzz/corpus/<harness>/<name>), byte for byte.
local core = require "dh3.core"
local errors = require "dh3.errors"
local output = require "dh3.output"
local retry = require "dh3.retry"
local webhook = require "dh3.webhook"
local download = require "dh3.download"
local files = require "helpers.files"
local lua = require "helpers.lua"

local SLOW = require("helpers.timing").SLOW

local function corpus(harness, name)
  return (assert(files.read_file("fuzz/corpus/" .. harness .. "/" .. name), "no corpus file " .. name))
end

-- A server for fuzz/response.c's inputs: GET /<name> is answered with the bytes of
-- fuzz/corpus/response/<name> after its control byte (the inputs here use 0: the transfer ends as
-- libcurl would), then the connection is closed. GET /quit stops it.
local RAW_SERVER = [=[
local socket = require "socket"
local srv = assert(socket.bind("127.0.0.1", 0))
local _, port = srv:getsockname()
io.stdout:write(port, "\n")
io.stdout:flush()
srv:settimeout(30)
while true do
  local c = srv:accept()
  if not c then break end
  c:settimeout(5)
  local line = c:receive("*l") or ""
  repeat local h = c:receive("*l") until not h or h == ""
  local name = line:match("^GET /([%w_]+) ")
  if name == "quit" then c:close() break end
  local f = name and io.open("fuzz/corpus/response/" .. name, "rb")
  if f then
    c:send(f:read("*a"):sub(2))
    f:close()
  end
  c:close()
end
srv:close()
]=]

describe("fuzz regressions", function()
  describe("dh3.webhook.parse()", function()
    -- found by fuzz/webhook.c: each was accepted before, and broke what comes after parse
    local found = {
      -- "file_size":-1 as a JSON number passed as a whole number; a download then gave it to
      -- engine:request as expect_size, which raises (an argument error from server data)
      { "negative sizes given as JSON numbers", "sizes_negative", "images%[1%]%.file_size is not a whole number" },
      -- images [null, {...}]: # saw 2 images, ipairs none, and a success with no images was returned
      { "a null before the first image", "image_holes", "images%[1%] is not an object" },
    }
    for _, row in ipairs(found) do
      it("refuses " .. row[1], function()
        local result, err = webhook.parse(corpus("webhook", row[2]))
        assert.is_nil(result)
        assert.are.equal("protocol", err.kind)
        assert.matches(row[3], err.message)
      end)
    end

    it("refuses a null between images, wherever # finds the border", function()
      local img = '{"url":"https://f.example/a.png","file_size":"1","width":"1","height":"1"}'
      for _, images in ipairs({ img .. ",null," .. img, "null,null," .. img, img .. ",null,null,null," .. img }) do
        local body = '{"code":200,"nano_banana_pro_output":{"task_id":"t1","status":"success","images":['
          .. images .. ']}}'
        local result, err = webhook.parse(body)
        assert.is_nil(result, images)
        assert.matches("is not an object", err.message)
      end
    end)

    it("refuses images given as an object", function()
      local result, err = output.parse(core.json_decode(
        '{"task_id":"t1","status":"success","images":{"1":{"url":"https://f.example/a.png"}}}'))
      assert.is_nil(result)
      assert.are.equal("images is not an array", err)
    end)

    it("still reads sizes given as JSON numbers from 0 up", function()
      local result = assert(webhook.parse(corpus("webhook", "sizes_as_numbers")))
      assert.are.same({ file_size = 2456789, width = 1024, height = 1024 }, {
        file_size = result.images[1].file_size, width = result.images[1].width, height = result.images[1].height })
      assert.are.equal("integer", lua.math_type(result.images[1].file_size))
    end)

    -- nasty corpus inputs, with the results the module documents
    local nasty = {
      { "the documented success", "success", "success" },
      { "the documented fail", "fail", "fail" },
      { "a body with a NUL byte", "nul", "NUL" },
      { "a float code", "code_float", "code is not an integer" },
      { "a JSON array", "array", "no nano_banana_pro_output object" },
      { "an unknown status", "status_unknown", "unknown status" },
      { "a status that is a table", "status_table", "unknown status" },
      { "a task id with a slash", "task_id_slash", "no usable task_id" },
      { "a task id over 128 bytes", "task_id_long", "no usable task_id" },
      { "65 images", "too_many_images", "too many images" },
      { "a file: URL", "bad_urls", "not an http%(s%) URL" },
      { "sizes of 21 digits", "sizes_huge", "not a whole number" },
      { "sizes with signs, spaces or hex", "sizes_signs", "not a whole number" },
      { "fractional sizes", "sizes_float", "not a whole number" },
    }
    for _, row in ipairs(nasty) do
      it((row[3] == "success" or row[3] == "fail") and ("reads " .. row[1]) or ("refuses " .. row[1]), function()
        local result, err = webhook.parse(corpus("webhook", row[2]))
        if row[3] == "success" or row[3] == "fail" then
          assert.is_nil(err)
          assert.are.equal(row[3], result.state)
        else
          assert.is_nil(result)
          assert.are.equal("protocol", err.kind)
          assert.matches("^callback body: ", err.message)
          assert.matches(row[3], err.message)
          assert.is_nil(tostring(err):find("%c"))
        end
      end)
    end

    it("accepts file names that climb out of the folder, and plans them inside it", function()
      local result = assert(webhook.parse(corpus("webhook", "path_names")))
      local paths = download.plan(result.task_id, result.images, "out/")
      assert.are.equal(8, #paths)
      for _, p in ipairs(paths) do
        local name = p:match("^out/(.+)$")
        assert.truthy(name, p)
        assert.is_nil(name:find("[/\\%c]"), p)
        assert.are_not.equal(".", name:sub(1, 1), p)
      end
    end)
  end)

  describe("download.plan() of a delivery's images", function()
    -- found by fuzz/webhook.c (found_hidden_task_id_name is the reproducer as libFuzzer wrote it)
    local rows = {
      -- task_id ".t1" (a valid id) named the images ".t1-1.img", hidden files
      { "names no hidden file after a task id that starts with a dot", "found_hidden_task_id_name",
        { "out/t1-1.img", "out/t1-2.img" } },
      -- two images named t1-2.img: the second's fallback was t1-2.img too, and one download
      -- replaced the other (a paid image lost)
      { "never plans two images to one path", "fallback_taken", { "out/t1-2.img", "out/t1-2-2.img" } },
    }
    for _, row in ipairs(rows) do
      it(row[1], function()
        local result = assert(webhook.parse(corpus("webhook", row[2])))
        assert.are.same(row[3], download.plan(result.task_id, result.images, "out/"))
      end)
    end
  end)

  describe("errors.parse_retry_after()", function()
    -- found with fuzz/response.c's checks: 309 digits or more made math.huge, so a create (which
    -- has no deadline) slept for ever; 20 digits made a float
    local rows = {
      { "400 digits", ("9"):rep(400), 2 ^ 31 },
      { "25 digits", ("9"):rep(25), 2 ^ 31 },
      { "2^63", "9223372036854775808", 2 ^ 31 },
      { "2^31 + 1", "2147483649", 2 ^ 31 },
      { "leading zeros", "0003", 3 },
      { "spaces", " 7 ", 7 },
    }
    for _, row in ipairs(rows) do
      it("reads " .. row[1] .. " as an integer of at most 2^31 seconds", function()
        local got = errors.parse_retry_after(row[2])
        assert.are.equal(row[3], got)
        assert.are.equal("integer", lua.math_type(got))
      end)
    end

    it("gives nil for what is not a number or a date", function()
      assert.is_nil(errors.parse_retry_after("-5"))
      assert.is_nil(errors.parse_retry_after("1x"))
    end)
  end)

  describe("the response path (a server sending the corpus's bytes)", function()
    local pipe, port, engine

    lazy_setup(function()
      local dir = files.tmpdir()
      local script = dir .. "/raw_server.lua"
      files.write_file(script, RAW_SERVER)
      -- it stands in for the service, as the emulator does: it runs under Lua 5.4
      pipe = io.popen(files.quote(lua.emulator) .. " " .. files.quote(script))
      port = assert(tonumber(pipe:read("*l")), "the raw server did not start")
      os.remove(script)
      files.rm_rf(dir)
      engine = core.engine()
    end)

    lazy_teardown(function()
      if engine then engine:close() end
      if pipe then
        local socket = require "socket"
        local c = socket.connect("127.0.0.1", port)
        if c then c:send("GET /quit HTTP/1.1\r\n\r\n"); c:close() end
        pipe:close()
      end
    end)

    -- The result table of GET /<name>, as errors.from_response receives it.
    local function fetch(name)
      assert(engine:request{ url = ("http://127.0.0.1:%d/%s"):format(port, name), timeout = 10 * SLOW })
      local deadline = core.now() + 10 * SLOW
      while true do
        engine:perform(0.05)
        local res = engine:next_done()
        if res then return res end
        assert(core.now() < deadline, "no answer in time")
      end
    end

    it("turns a Retry-After of 400 digits into 2^31 seconds, which is not waited out", function()
      local res = fetch("rate_limited_huge")
      assert.are.equal(429, res.status)
      assert.are.equal(400, #res.retry_after)
      local doc, err = errors.from_response(res)
      assert.is_nil(doc)
      assert.are.equal("rate_limited", err.kind)
      assert.are.equal(2 ^ 31, err.retry_after)
      assert.are.equal("integer", lua.math_type(err.retry_after))
      -- longer than retry.MAX_RETRY_AFTER: no back-off, the error goes back to the caller
      assert.is_nil(retry.backoff(1, 0.5, err.retry_after))
    end)

    local nasty = {
      { "the documented create answer", "create", nil },
      { "a 100 Continue before the answer", "continue_then_ok", nil },
      { "a 401", "error_401", "auth" },
      { "a code 500 inside an HTTP 200", "error_in_200", "server" },
      { "a 503 in HTML", "unavailable", "server" },
      { "malformed JSON", "malformed_json", "protocol" },
      { "a NUL byte after the JSON", "nul_in_body", "protocol" },
      { "control characters in a 502", "not_json", "server" },
      { "a status line that is not one", "bad_status", "network" },
      { "headers over 16 KiB", "headers_over_cap", "protocol" },
    }
    for _, row in ipairs(nasty) do
      it((row[3] and "gives a " .. row[3] .. " error for " or "reads ") .. row[1], function()
        local doc, err = errors.from_response(fetch(row[2]))
        if row[3] == nil then
          assert.is_nil(err)
          assert.are.equal(200, doc.code)
        else
          assert.is_nil(doc)
          assert.are.equal(row[3], err.kind)
          assert.is_nil(tostring(err):find("%c"))
        end
      end)
    end
  end)

  describe("dh3.core.json_decode()", function()
    local rows = {
      { "a raw NUL byte", "nul_raw", nil, "NUL" },
      { "an escaped NUL, kept as a byte", "nul_escaped", { file_name = "a\0.png" } },
      { "3000 unclosed brackets", "deep_unclosed", nil, "" },
      { "65 levels", "deep_65", nil, "" },
      { "lone surrogates", "lone_surrogates", nil, "" },
      { "bad escapes", "bad_escapes", nil, "" },
      { "a byte order mark", "bom", nil, "" },
      { "NaN, Infinity, hex and other non-JSON numbers", "invalid_numbers", nil, "" },
      { "garbage after the value", "trailing_garbage", nil, "" },
      { "a top-level null", "top_null", nil, "null" },
      { "the empty text", "empty", nil, "" },
      { "nulls in an array", "null_holes", { [2] = 1, [4] = 2 } },
      { "raw bytes that are not UTF-8, kept as they are", "raw_bytes", { s = "\255\254\192\128 \1\31" } },
    }
    for _, row in ipairs(rows) do
      it((row[3] ~= nil and "reads " or "refuses ") .. row[1], function()
        local got, err = core.json_decode(corpus("json", row[2]))
        if row[3] ~= nil then
          assert.is_nil(err)
          assert.are.same(row[3], got)
        else
          assert.is_nil(got)
          assert.are.equal("string", type(err))
          assert.matches(row[4], err, 1, true)
        end
      end)
    end

    it("makes integers of exact numbers up to 2^53 only", function()
      local got = assert(core.json_decode(corpus("json", "big_integers")))
      assert.are.equal("integer", lua.math_type(got[1]))
      assert.are.equal("integer", lua.math_type(got[2])) -- 2^53 + 1 rounds to 2^53 in a double
      assert.are.equal("float", lua.math_type(got[4]))
    end)

    it("encodes whatever it decoded into text it decodes again", function()
      for _, name in ipairs({ "unicode", "many_keys", "null_holes", "empty_containers", "deep_64", "answer_get_success" }) do
        local v = assert(core.json_decode(corpus("json", name)), name)
        local text = assert(core.json_encode(v), name)
        assert.are.same(v, core.json_decode(text), name)
      end
    end)
  end)
end)
