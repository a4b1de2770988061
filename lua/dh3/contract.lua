-- The service's documented contract, in one place: the client validates against it before sending,
-- and the emulator refuses with it exactly as the service does. See shared/api/dh3-api.md.
-- Written for every Lua (the client's), the emulator's 5.4 among them: dh3.compat counts UTF-8.
local compat = require "dh3.compat"

local M = {}

local utf8_len, is_integer = compat.utf8_len, compat.is_integer

M.MODEL = "nano-banana-pro"
M.CREATE_PATH = "/api/v1/task/create"
M.GET_PATH = "/api/v1/task/get"
M.CREATE_QPS = 3

M.PROMPT_MIN, M.PROMPT_MAX = 3, 20000 -- characters (UTF-8 code points), not bytes
M.MAX_IMAGE_URLS = 8

M.ASPECT_RATIOS = { "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9", "auto" }
M.RESOLUTIONS = { "1K", "2K", "4K" }
M.OUTPUT_FORMATS = { "png", "jpg" }
M.STATES = { "queuing", "processing", "success", "fail" }
M.DEFAULTS = { aspect_ratio = "1:1", resolution = "1K", output_format = "png" }

-- Pixel size at 1K; 2K doubles both sides, 4K quadruples them.
M.SIZES_1K = {
  ["1:1"] = { 1024, 1024 }, ["2:3"] = { 848, 1264 }, ["3:2"] = { 1264, 848 },
  ["3:4"] = { 896, 1200 }, ["4:3"] = { 1200, 896 }, ["4:5"] = { 928, 1152 },
  ["5:4"] = { 1152, 928 }, ["9:16"] = { 768, 1376 }, ["16:9"] = { 1376, 768 },
  ["21:9"] = { 1584, 672 },
}
M.SCALE = { ["1K"] = 1, ["2K"] = 2, ["4K"] = 4 }

local function set_of(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end
M.is_aspect_ratio = set_of(M.ASPECT_RATIOS)
M.is_resolution = set_of(M.RESOLUTIONS)
M.is_output_format = set_of(M.OUTPUT_FORMATS)
M.is_state = set_of(M.STATES)
M.is_terminal = { success = true, fail = true }

--- Width and height in pixels for a concrete ratio (not "auto") and a resolution.
function M.size(aspect_ratio, resolution)
  local base, k = M.SIZES_1K[aspect_ratio], M.SCALE[resolution]
  if not base or not k then return nil end
  return base[1] * k, base[2] * k
end

--- The ratio from the size table nearest to width:height (for "auto" following a reference image).
function M.nearest_ratio(width, height)
  local best, best_d
  local want = math.log(width / height)
  for _, ratio in ipairs(M.ASPECT_RATIOS) do
    local wh = M.SIZES_1K[ratio]
    if wh then
      local d = math.abs(math.log(wh[1] / wh[2]) - want)
      if not best_d or d < best_d then best, best_d = ratio, d end
    end
  end
  return best
end

-- An absolute http(s) URL with a host and no white space. One anchored find, no capture (twice
-- as fast as a match with [^%s]*: this runs for every image of every status answer).
local function is_http_url(s)
  return type(s) == "string" and #s <= 4096 and s:find("^[Hh][Tt][Tt][Pp][Ss]?://[^%s/?#]%S*$") ~= nil
end
M.is_http_url = is_http_url

local function quote(list)
  return table.concat(list, ", ")
end

--- Checks a model input (the `nano_banana_pro_input` object, wire names) and an optional
-- callback URL as the service would. Returns nil when acceptable, else field, reason.
-- Types are checked too, since the emulator meets whatever a client sent.
function M.check_input(input, callback_url)
  if type(input) ~= "table" then
    return "nano_banana_pro_input", "must be an object"
  end
  local prompt = input.prompt
  if prompt == nil then return "prompt", "is required" end
  if type(prompt) ~= "string" then return "prompt", "must be a string" end
  local n = utf8_len(prompt)
  if not n then return "prompt", "is not valid UTF-8" end
  if n < M.PROMPT_MIN or n > M.PROMPT_MAX then
    return "prompt", ("must be %d to %d characters, got %d"):format(M.PROMPT_MIN, M.PROMPT_MAX, n)
  end
  local urls = input.image_urls
  if urls ~= nil then
    if type(urls) ~= "table" then return "image_urls", "must be an array of strings" end
    local count = 0
    for k in pairs(urls) do
      if not is_integer(k) or k < 1 then return "image_urls", "must be an array of strings" end
      count = count + 1
    end
    if count ~= #urls then return "image_urls", "must be an array of strings" end
    if count > M.MAX_IMAGE_URLS then
      return "image_urls", ("at most %d reference images, got %d"):format(M.MAX_IMAGE_URLS, count)
    end
    for i, u in ipairs(urls) do
      if type(u) ~= "string" then return "image_urls", ("item %d must be a string"):format(i) end
      if not is_http_url(u) then return "image_urls", ("item %d is not an http(s) URL"):format(i) end
    end
  end
  local enums = {
    { "aspect_ratio", M.is_aspect_ratio, M.ASPECT_RATIOS },
    { "resolution", M.is_resolution, M.RESOLUTIONS },
    { "output_format", M.is_output_format, M.OUTPUT_FORMATS },
  }
  for _, e in ipairs(enums) do
    local v = input[e[1]]
    if v ~= nil and not e[2][v] then
      return e[1], ("must be one of %s"):format(quote(e[3]))
    end
  end
  if callback_url ~= nil and not is_http_url(callback_url) then
    return "callback_url", "must be an http(s) URL"
  end
  return nil
end

return M
