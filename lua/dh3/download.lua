-- Where result images land on disk. The bytes themselves stream from libcurl into a temporary
-- file beside the destination and are given their name by the C core (src/request.c); this
-- module picks safe destinations and turns a finished download into a path or an error.
--
-- A download never replaces a file it did not create in this call: the paths planned here are
-- wishes. The C core gives a finished file its planned name only if nothing has that name at
-- that moment (atomically: a file that appears meanwhile is not replaced either), and otherwise
-- the next free one, "stem-2.ext", "stem-3.ext", ...; the path it returns is the one written.
local errors = require "dh3.errors"

local M = {}

local RESERVED = { -- names that Windows refuses or that mean something to a shell
  ["."] = true, [".."] = true, CON = true, PRN = true, AUX = true, NUL = true,
}
for i = 1, 9 do RESERVED["COM" .. i] = true; RESERVED["LPT" .. i] = true end

local EXT_BY_TYPE = { ["image/png"] = "png", ["image/jpeg"] = "jpg", ["image/jpg"] = "jpg" }

--- A file name from the service, made safe to join to a folder: no folders, no control
-- characters, no reserved names, not hidden, at most 120 bytes; `fallback` when nothing is left.
function M.safe_name(name, fallback)
  name = type(name) == "string" and name or ""
  name = name:match("([^/\\]*)$")                -- the last path component only
  name = name:gsub("%z.*$", "")                   -- a NUL ends it
  name = name:gsub("[%c<>:\"|?*]", "_")           -- control and shell/Windows-special characters
  name = name:gsub("^[%s%.]+", ""):gsub("[%s%.]+$", "")
  if #name > 120 then
    local stem, ext = name:match("^(.-)(%.[%w]+)$")
    if stem and #ext <= 10 then name = stem:sub(1, 120 - #ext) .. ext else name = name:sub(1, 120) end
  end
  local stem = name:match("^([^%.]*)") or name
  if name == "" or RESERVED[stem:upper()] then return fallback end
  return name
end

--- True when `path` names an existing directory.
function M.is_directory(path)
  local f = io.open(path, "r")
  if not f then return false end
  local _, _, code = f:read(1)
  f:close()
  return code == 21 -- EISDIR
end

--- Makes the folder `path` and its missing parents (mode 0777 less the umask), as `mkdir -p`
-- does: the one way dh3 makes folders, the command line's too. true (also when it exists), or
-- nil, message.
function M.make_folder(path)
  return require("dh3.core").mkdir(path)
end

--- The destination paths for `images` given `dest` (a folder, or a file path): distinct, so that
-- two images of one call never aim at one name. With a file path and several images, the second
-- and later get -2, -3 before the extension (as the C core names a taken path's next names).
-- A folder given as "dir/" is made here when missing, with its parents. A file path's folder is
-- not: a mistyped folder name should not quietly become a new tree, so the download then fails
-- with kind io ("ends in /" is how to ask for a folder). Returns the paths, and an error (kind
-- io) as a second value when the folder could not be made: then the download fails the same way
-- when it starts, since nothing can be written there.
function M.plan(task_id, images, dest)
  local paths, err = {}, nil
  if dest:sub(-1) == "/" or M.is_directory(dest) then
    local folder = dest:gsub("/+$", "")
    if folder == "" then folder = "/" end
    if not M.is_directory(folder) then
      local ok, why = M.make_folder(folder)
      if not ok then err = errors.new("io", errors.sanitize(why, 300), { task_id = task_id }) end
    end
    local used = {}
    for i, img in ipairs(images) do
      local ext = EXT_BY_TYPE[img.content_type] or "img"
      -- the task id comes from the service too: made safe like a file name (".t1" would hide it)
      local stem = M.safe_name(("%s-%d"):format(task_id, i), ("image-%d"):format(i))
      local fallback = stem .. "." .. ext
      local name = M.safe_name(img.file_name, fallback)
      if used[name] then name = fallback end
      -- another image's own file name may be this fallback: two images to one path lose one
      local k = 1
      while used[name] do
        k = k + 1
        name = ("%s-%d.%s"):format(stem, k, ext)
      end
      used[name] = true
      paths[i] = (folder == "/" and "" or folder) .. "/" .. name
    end
  else
    for i = 1, #images do
      if i == 1 then
        paths[i] = dest
      else
        -- the extension: from the last dot of the file's own name, unless that dot starts it
        local stem, ext = dest:match("^(.*[^/])(%.[^./]*)$")
        paths[i] = (stem or dest) .. "-" .. i .. (ext or "")
      end
    end
  end
  return paths, err
end

--- The outcome of one finished download: its path (or its bytes, for one kept in memory),
-- or nil, err.
function M.outcome(res, image, task_id)
  if res.ok and res.status >= 200 and res.status <= 299 then return res.path or res.body end
  local what = "downloading " .. image.url
  local err = errors.transfer_error(res, what, image.file_size)
  if not err then
    if res.status < 200 or res.status > 299 then
      err = errors.new(errors.kind_for_code(res.status), what .. ": HTTP " .. res.status
        .. " (result URLs are temporary)", { http_status = res.status })
    else
      err = errors.new("network", what .. ": " .. errors.sanitize(res.message or "failed", 200))
    end
  end
  err.task_id = task_id
  return nil, err
end

return M
