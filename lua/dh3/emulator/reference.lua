-- What "auto" means for a task: the aspect ratio of its first reference image, when the emulator
-- can read that image's size; else 1:1 (dh3-api.md makes the emulator deterministic that way).
--   * the emulator's own /files/ images are known without any request;
--   * other plain-http URLs whose host is an IP address or localhost are read over the network
--     (only the first bytes, up to the PNG IHDR or JPEG frame header), without blocking the loop;
--   * https URLs and host names that would need DNS (which would block the loop) count as
--     unreadable, and so does any failure or a fetch slower than PROBE_TIMEOUT.
local contract = require "dh3.contract"
local images = require "dh3.emulator.images"
local httpc = require "dh3.emulator.httpc"

local M = {}

M.PROBE_TIMEOUT = 2          -- seconds
M.PROBE_BYTES = 128 * 1024   -- enough for the frame header behind a typical EXIF block

local LOOPBACK = { localhost = true, ["::1"] = true }

-- Whether host:port is this emulator itself.
local function is_self(emu, host, port)
  if port ~= emu.server:port() then return false end
  local public_host = httpc.parse_url(emu.public_url, true)
  return LOOPBACK[host:lower()] ~= nil or host:match("^127%.") ~= nil
    or host == emu.server:host() or host == public_host
end

--- The ratio for "auto" given the first reference image's URL. Returns it at once when no request
-- is needed; otherwise returns nil and later calls done(ratio) from a loop coroutine.
function M.ratio(emu, url, done)
  local host, port, path, scheme = httpc.parse_url(url, true)
  if not host then return "1:1" end
  if scheme == (emu.server.tls_ctx and "https" or "http") and is_self(emu, host, port) then
    -- what fetching it would find: an image only for a finished, successful task
    local id, ext = path:match("^/files/(%x+)%.(%a+)$")
    local task = id and emu.tasks:find(id)
    if task and task.format == ext and emu.tasks:state(task, emu.loop:now()) == "success" then
      return contract.nearest_ratio(task.width, task.height)
    end
    return "1:1"
  end
  if scheme ~= "http" or not httpc.is_literal_host(host) then return "1:1" end

  local result, waiting = nil, false
  emu.loop:spawn(function()
    local status, _, body = httpc.request(emu.loop, {
      url = url, headers = { Range = ("bytes=0-%d"):format(M.PROBE_BYTES - 1) },
      timeout = M.PROBE_TIMEOUT, max_body = M.PROBE_BYTES,
    })
    local found = "1:1"
    if status == 200 or status == 206 then
      local format, w, h = images.probe(body)
      if format and w > 0 and h > 0 then found = contract.nearest_ratio(w, h) end
    end
    -- a fetch that failed at once (refused) ends before spawn returns
    if waiting then done(found) else result = found end
  end)
  waiting = result == nil
  return result
end

return M
