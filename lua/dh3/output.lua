-- A task's state as the service reports it (`nano_banana_pro_output`, in a GET answer or a
-- callback), checked and typed: sizes as integers, URLs http(s), the status one of the four.
local contract = require "dh3.contract"
local errors = require "dh3.errors"

local M = {}

M.MAX_IMAGES = 64
-- The largest image file accepted: a 4K PNG of the largest ratio is about 70 MB uncompressed, so
-- this leaves room while keeping a hostile file_size from filling the memory (task:read) or disk.
M.MAX_FILE_SIZE = 1024 * 1024 * 1024

-- A size or a pixel count: a whole number from 0 up. A negative one is refused here, as the digit
-- strings the service documents can hold none: file_size becomes a download's expect_size, which
-- engine:request would raise on (found by fuzz/webhook.c; spec/fuzz_regressions_spec.lua).
local function to_integer(v)
  if math.type(v) == "integer" then return v >= 0 and v or nil end
  if type(v) == "string" and v:match("^%d+$") and #v <= 15 then return math.tointeger(tonumber(v)) end
  return nil
end

local STRING_FIELDS = { "content_type", "file_name" }
local NUMBER_FIELDS = { "file_size", "width", "height" }

-- The documented ImageFile.
local function parse_image(img, i)
  if type(img) ~= "table" then return nil, ("images[%d] is not an object"):format(i) end
  if not contract.is_http_url(img.url) then return nil, ("images[%d].url is not an http(s) URL"):format(i) end
  local out = { url = img.url }
  for _, k in ipairs(STRING_FIELDS) do
    if img[k] ~= nil and type(img[k]) ~= "string" then return nil, ("images[%d].%s is not a string"):format(i, k) end
    out[k] = img[k]
  end
  for _, k in ipairs(NUMBER_FIELDS) do
    out[k] = to_integer(img[k])
    if not out[k] then return nil, ("images[%d].%s is not a whole number"):format(i, k) end
  end
  if out.file_size > M.MAX_FILE_SIZE then
    return nil, ("images[%d].file_size is over %d bytes"):format(i, M.MAX_FILE_SIZE)
  end
  return out
end

--- {task_id, state, images, error} from a nano_banana_pro_output object, or nil and what is wrong.
-- task_id is nil when the object has none; extra fields are ignored.
function M.parse(out)
  if type(out) ~= "table" then return nil, "no nano_banana_pro_output object" end
  if out.task_id ~= nil and type(out.task_id) ~= "string" then return nil, "task_id is not a string" end
  if not contract.is_state[out.status] then
    return nil, ("unknown status %s"):format(errors.sanitize(tostring(out.status), 40))
  end
  local result = { task_id = out.task_id, state = out.status }
  if out.status == "success" then
    if type(out.images) ~= "table" then return nil, "a successful task without images" end
    -- the last index, not #: a null in the array leaves a hole, and # and ipairs could then
    -- skip images (or all of them) where a hole must be refused
    local n = 0
    for k in pairs(out.images) do
      if math.type(k) ~= "integer" or k < 1 then return nil, "images is not an array" end
      if k > n then n = k end
    end
    if n == 0 then return nil, "a successful task without images" end
    if n > M.MAX_IMAGES then return nil, "too many images" end
    local images = {}
    for i = 1, n do
      local parsed, why = parse_image(out.images[i], i)
      if not parsed then return nil, why end
      images[i] = parsed
    end
    result.images = images
  elseif out.status == "fail" then
    result.error = type(out.err_msg) == "string" and out.err_msg or "the task failed"
  end
  return result
end

return M
