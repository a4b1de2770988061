-- A task's state as the service reports it (`nano_banana_pro_output`, in a GET answer or a
-- callback), checked and typed: sizes as integers, URLs http(s), the status one of the four.
local contract = require "dh3.contract"
local errors = require "dh3.errors"
local compat = require "dh3.compat"

local M = {}

-- locals, not globals: every status answer goes through here
local type, pairs, tonumber, is_integer, tointeger, find =
  type, pairs, tonumber, compat.is_integer, compat.tointeger, string.find
-- Past 2^53 a double (every number below Lua 5.3) is no longer exact: refused on every Lua alike.
local MAX_EXACT = compat.MAX_EXACT
local is_state, is_http_url = contract.is_state, contract.is_http_url

M.MAX_IMAGES = 64
-- The largest image file accepted: a 4K PNG of the largest ratio is about 70 MB uncompressed, so
-- this leaves room while keeping a hostile file_size from filling the memory (task:read) or disk.
M.MAX_FILE_SIZE = 1024 * 1024 * 1024

-- A size or a pixel count: a whole number from 0 up. A negative one is refused here, as the digit
-- strings the service documents can hold none: file_size becomes a download's expect_size, which
-- engine:request would raise on (found by fuzz/webhook.c; spec/fuzz_regressions_spec.lua).
local function to_integer(v)
  if type(v) == "string" then -- as the service sends them
    -- find, not match: no capture string to make (this runs for every size of every answer)
    if #v <= 15 and find(v, "^%d+$") then return tointeger(tonumber(v)) end
    return nil
  end
  if is_integer(v) and v >= 0 and v <= MAX_EXACT then return v end
  return nil
end

-- The documented ImageFile. Its fields are read once each and the result is built in one
-- constructor: a status answer is parsed on every poll.
local function parse_image(img, i)
  if type(img) ~= "table" then return nil, ("images[%d] is not an object"):format(i) end
  local url, content_type, file_name = img.url, img.content_type, img.file_name
  if not is_http_url(url) then return nil, ("images[%d].url is not an http(s) URL"):format(i) end
  if content_type ~= nil and type(content_type) ~= "string" then
    return nil, ("images[%d].content_type is not a string"):format(i)
  end
  if file_name ~= nil and type(file_name) ~= "string" then
    return nil, ("images[%d].file_name is not a string"):format(i)
  end
  local file_size, width, height = to_integer(img.file_size), to_integer(img.width), to_integer(img.height)
  local bad = not file_size and "file_size" or not width and "width" or not height and "height"
  if bad then return nil, ("images[%d].%s is not a whole number"):format(i, bad) end
  if file_size > M.MAX_FILE_SIZE then
    return nil, ("images[%d].file_size is over %d bytes"):format(i, M.MAX_FILE_SIZE)
  end
  return { url = url, content_type = content_type, file_name = file_name, file_size = file_size,
    width = width, height = height }
end

--- The state, task_id, images and error of a nano_banana_pro_output object, as four values (a
-- status read copies them into its task at once: no table in between); or nil and what is wrong.
-- task_id is nil when the object has none; extra fields are ignored.
function M.read(out)
  if type(out) ~= "table" then return nil, "no nano_banana_pro_output object" end
  local task_id, status = out.task_id, out.status
  if task_id ~= nil and type(task_id) ~= "string" then return nil, "task_id is not a string" end
  if not is_state[status] then
    return nil, ("unknown status %s"):format(errors.sanitize(tostring(status), 40))
  end
  local images, err
  if status == "success" then
    local list = out.images
    if type(list) ~= "table" then return nil, "a successful task without images" end
    -- the last index, not #: a null in the array leaves a hole, and # and ipairs could then
    -- skip images (or all of them) where a hole must be refused
    local n = 0
    for k in pairs(list) do
      if not is_integer(k) or k < 1 then return nil, "images is not an array" end
      if k > n then n = k end
    end
    if n == 0 then return nil, "a successful task without images" end
    if n > M.MAX_IMAGES then return nil, "too many images" end
    images = {}
    for i = 1, n do
      local parsed, why = parse_image(list[i], i)
      if not parsed then return nil, why end
      images[i] = parsed
    end
  elseif status == "fail" then
    err = type(out.err_msg) == "string" and out.err_msg or "the task failed"
  end
  return status, task_id, images, err
end

--- {task_id, state, images, error} from a nano_banana_pro_output object, or nil and what is wrong.
function M.parse(out)
  local state, task_id, images, err = M.read(out)
  if not state then return nil, task_id end
  return { task_id = task_id, state = state, images = images, error = err }
end

return M
