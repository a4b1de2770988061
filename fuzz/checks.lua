-- What must hold for any input, one function per harness (fuzz/*.c call them with what our code
-- returned). A raise here, or inside the code under test, is a finding: libFuzzer keeps the input.
-- The properties are the documented ones: parsers return `nil, err` and never raise on a string;
-- every error is a dh3.error with a known kind and a one-line tostring; sizes from the service are
-- whole numbers a download can use; a file name from the service never leaves its folder.
local core = require "dh3.core"
local errors = require "dh3.errors"
local retry = require "dh3.retry"
local output = require "dh3.output"
local download = require "dh3.download"
local contract = require "dh3.contract"
local validate = require "dh3.validate"
local webhook = require "dh3.webhook"

assert(core.json_decode("{}"), "dh3.core cannot load lua-cjson: check DH3_FUZZ_CPATH")

local M = {}

local KINDS = {
  invalid_request = true, auth = true, insufficient_credits = true, not_found = true,
  rate_limited = true, server = true, protocol = true, network = true, timeout = true,
}
local MAX_EXACT = 2 ^ 53

local function check(cond, fmt, ...)
  if not cond then error(fmt:format(...), 2) end
end

local function check_error(err)
  check(errors.is_error(err), "not a dh3.error: %s", tostring(err))
  check(KINDS[err.kind], "unknown kind %s", tostring(err.kind))
  check(type(err.message) == "string", "message is a %s", type(err.message))
  local line = tostring(err)
  check(type(line) == "string" and not line:find("%c"), "tostring is not one line: %q", line)
  if err.retry_after ~= nil then
    local r = err.retry_after
    check(type(r) == "number" and r >= 0 and r < math.huge, "retry_after %s", tostring(r))
  end
end

-- output.parse's result, as webhook.parse hands it on (task:status reads the same fields with output.read).
local function check_result(result, why)
  if result == nil then
    check(type(why) == "string", "output.parse: no reason (%s)", type(why))
    return
  end
  check(contract.is_state[result.state], "state %s", tostring(result.state))
  check(result.task_id == nil or type(result.task_id) == "string", "task_id %s", type(result.task_id))
  if result.state == "fail" then check(type(result.error) == "string", "fail without a message") end
  if result.state ~= "success" then
    check(result.images == nil, "images on a %s task", result.state)
    return
  end
  local images = result.images
  check(type(images) == "table" and #images >= 1 and #images <= output.MAX_IMAGES, "images")
  local n = 0
  for _ in pairs(images) do n = n + 1 end
  check(n == #images, "images is not a sequence")
  for i, img in ipairs(images) do
    check(contract.is_http_url(img.url), "images[%d].url", i)
    for _, k in ipairs({ "file_size", "width", "height" }) do
      -- file_size becomes the download's expect_size and max_body, which take 0 and up
      check(math.type(img[k]) == "integer" and img[k] >= 0, "images[%d].%s = %s", i, k, tostring(img[k]))
    end
    for _, k in ipairs({ "content_type", "file_name" }) do
      check(img[k] == nil or type(img[k]) == "string", "images[%d].%s", i, k)
    end
  end
  -- what the journal keeps of them reads back the same (sizes up to the 14 digits lua-cjson 2.1.0
  -- writes numbers with: a file_size of 100 TB or more comes back rounded)
  local kept = {}
  for i, img in ipairs(images) do kept[i] = { url = img.url, file_name = img.file_name, file_size = img.file_size } end
  local line, jerr = core.json_encode({ images = kept })
  check(line, "json_encode of the kept images: %s", tostring(jerr))
  local back = core.json_decode(line)
  for i, img in ipairs(kept) do
    local b = back and back.images and back.images[i]
    check(b and b.url == img.url and b.file_name == img.file_name
      and (b.file_size == img.file_size or img.file_size >= 1e14), "images[%d] does not survive the journal", i)
  end
  -- file names from the service never leave the destination folder
  if result.task_id and validate.task_id(result.task_id) then
    local paths = download.plan(result.task_id, images, "out/")
    local seen = {}
    for i = 1, #images do
      local p = paths[i]
      local name = type(p) == "string" and p:match("^out/(.*)$")
      check(name and name ~= "" and not name:find("[/\\%c]") and name ~= "." and name ~= ".."
        and name:sub(1, 1) ~= ".", "unsafe path %q for images[%d]", tostring(p), i)
      check(not seen[p], "two images planned to %q", p)
      seen[p] = true
    end
  end
end

--- res: the C core's result table; facts: {max_body, expect_size}.
function M.response(res, facts)
  check(type(res.ok) == "boolean", "ok")
  check(math.type(res.status) == "integer", "status")
  check(math.type(res.curl_code) == "integer", "curl_code")
  if res.curl_code ~= 0 then
    check(type(res.curl_error) == "string" and math.type(res.request_size) == "integer", "curl facts")
  end
  check(res.retry_after == nil or type(res.retry_after) == "string", "retry_after")
  if not res.ok then check(type(res.message) == "string" and res.message ~= "", "a failure without a message") end
  if res.body ~= nil then
    check(type(res.body) == "string" and #res.body <= facts.max_body, "body over max_body")
    check(#res.body == res.bytes, "body of %d bytes, bytes %d", #res.body, res.bytes)
  end

  local doc, err = errors.from_response(res)
  if doc ~= nil then
    check(err == nil and type(doc) == "table" and doc.code == 200, "a document that is not a success")
    check_result(output.parse(doc.nano_banana_pro_output))
    validate.task_id(doc.task_id)
  else
    check_error(err)
    retry.read_retryable(err)
    local retryable, maybe = retry.create_retryable(err, res)
    check(type(retryable) == "boolean" and type(maybe) == "boolean", "create_retryable")
    local delay = retry.backoff(1, 1, err.retry_after)
    -- nil: the server asked for longer than retry.MAX_RETRY_AFTER, and the caller gets the error
    check(delay == nil or type(delay) == "number" and delay >= 0 and delay <= retry.MAX_RETRY_AFTER,
      "backoff %s", tostring(delay))
  end

  if facts.expect_size then -- the same transfer as an image kept in memory
    local image = { url = "https://files.example/result.png", file_size = facts.expect_size }
    local got, derr = download.outcome(res, image, "t1")
    if got ~= nil then
      check(type(got) == "string" and #got == facts.expect_size, "an image of %d bytes, announced %d",
        type(got) == "string" and #got or -1, facts.expect_size)
    else
      check_error(derr)
    end
  end
end

-- Equal up to the 14 significant digits lua-cjson writes numbers with.
local function same(a, b, depth)
  if type(a) == "number" and type(b) == "number" then
    return a == b or math.abs(a - b) <= 1e-13 * math.max(math.abs(a), math.abs(b))
  end
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do
    if not same(v, b[k], depth + 1) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

-- What json_decode hands back: no cjson.null left, integers where exact, at most 64 deep.
local function walk(v, depth)
  local t = type(v)
  check(t ~= "userdata", "a null (lightuserdata) was left in the result")
  check(t ~= "function" and t ~= "thread", "a %s in the result", t)
  if t == "number" and math.type(v) == "float" then
    check(not (v >= -MAX_EXACT and v <= MAX_EXACT and v == math.floor(v)), "float %s not made an integer", v)
  end
  if t == "table" then
    check(depth <= 64, "nested deeper than 64")
    for k, x in pairs(v) do
      check(type(k) == "string" or (math.type(k) == "integer" and k >= 1), "a key %s", tostring(k))
      walk(x, depth + 1)
    end
  end
end

--- s: any string, for core.json_decode.
function M.json(s)
  local v, err = core.json_decode(s)
  if v == nil then
    check(type(err) == "string" and err ~= "", "json_decode: nil without a message")
  else
    check(err == nil, "json_decode: a value and an error")
    check(not s:find("\0", 1, true), "json_decode accepted a NUL byte")
    walk(v, 1)
    if type(v) == "table" then
      local text, eerr = core.json_encode(v)
      if text == nil then
        check(type(eerr) == "string", "json_encode: nil without a message")
      else
        check(type(text) == "string", "json_encode returned a %s", type(text))
        local back, berr = core.json_decode(text)
        check(back ~= nil, "json_decode refuses what json_encode wrote (%s): %q", tostring(berr), text)
        check(same(v, back, 1), "json_encode then json_decode changed the value: %q", text)
      end
    end
  end
  if #s > 0 then -- the size cap is checked before anything else
    local capped, cerr = core.json_decode(s, #s - 1)
    check(capped == nil and type(cerr) == "string" and cerr:find("too large", 1, true), "max_bytes not enforced")
  end
end

--- body: any string, for webhook.parse.
function M.webhook(body)
  local result, err = webhook.parse(body)
  if result == nil then
    check_error(err)
    check(err.kind == "protocol" and err.message:find("^callback body: "), "refused with %s", tostring(err))
    return
  end
  check(err == nil, "a result and an error")
  check(validate.task_id(result.task_id), "accepted task_id %q", tostring(result.task_id))
  check_result(result)
end

return M
