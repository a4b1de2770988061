-- Where the command line saves each task's images (--out). With one task, --out keeps the
-- library's meaning: a folder when it exists or ends in /, else a file path. With several it is a
-- folder. Folders are created when missing. In a folder the service's file names are used (made
-- safe by dh3.download), unless another task of the same run already took one of them: the
-- service may well call every image "result.png", and no image of a run may overwrite another.
local download = require "dh3.download"

local M = {}

-- the library's way (dh3.download.make_folder), as task:download("dir/") makes its folder
local function ensure_folder(dir)
  if download.is_directory(dir) then return true end
  return download.make_folder(dir)
end

--- A function task -> the `dest` of task:download for it, or nil, message when the folder
-- cannot be made. `several`: the run has more than one task.
function M.new(out, several)
  local as_folder = several or out:sub(-1) == "/" or download.is_directory(out)
  if not as_folder then return function() return out end end
  local ok, err = ensure_folder(out)
  if not ok then return nil, err end
  local prefix = out:gsub("/+$", "") .. "/"
  local claimed = {}
  return function(task)
    local dest = prefix
    local paths = download.plan(task.id, task.images, dest)
    for _, path in ipairs(paths) do
      if claimed[path] then
        -- the task id is unique; the extension stays the one the service's name implied
        dest = prefix .. task.id .. (paths[1]:match("%.%w+$") or "")
        paths = download.plan(task.id, task.images, dest)
        break
      end
    end
    for _, path in ipairs(paths) do claimed[path] = true end
    return dest
  end
end

-- {======================================================================
-- --out checked before anything is sent: a mistake found after paying costs the images
-- ======================================================================

-- The format an image file's extension names ("png", "jpg"), or nil for any other name.
local FORMAT_OF_EXTENSION = { png = "png", jpg = "jpg", jpeg = "jpg" }

local function extension_format(path)
  local ext = path:match("%.(%w+)$")
  return ext and FORMAT_OF_EXTENSION[ext:lower()], ext
end

-- true when a file can be made in the existing folder `dir`, or nil, why not: a file of a name
-- no one uses is created and removed at once.
local function writable(dir)
  local probe = ("%s/.dh3-write-check-%d-%06x"):format(dir:gsub("/+$", ""), os.time(), math.random(0, 0xffffff))
  local there = io.open(probe, "rb")
  if there then -- someone's file of that very name: leave it be, and let the save say
    there:close()
    return true
  end
  local f, err = io.open(probe, "ab")
  if not f then return nil, (tostring(err):match(": ([^:]+)$") or tostring(err)) end
  f:close()
  os.remove(probe)
  return true
end

--- M.new for `out`, after checking that the images can be saved there, or nil, message:
-- several tasks (`several`) need a folder, so --out must not name an image file ("x.png"); a
-- file's extension must be the one of `format` (the --format asked, when one was); a file's
-- folder must exist (a mistyped folder name must not quietly become a new tree: ending --out in
-- / asks for a folder, made when missing); and the folder must take a new file.
function M.prepare(out, several, format)
  local as_folder = several or out:sub(-1) == "/" or download.is_directory(out)
  local named, ext = extension_format(out)
  if several and named and out:sub(-1) ~= "/" and not download.is_directory(out) then
    return nil, ("several tasks are saved into a folder, and --out %s names an image file: give a folder, "
      .. "e.g. --out %s/"):format(out, out:sub(1, -#ext - 2))
  end
  local folder = out
  if not as_folder then
    if format and named and named ~= format then
      return nil, ("--out %s ends in .%s, but the image will be %s (--format %s): name it .%s, or ask for "
        .. "--format %s"):format(out, ext, format == "jpg" and "JPEG" or format:upper(), format, format, named)
    end
    folder = out:match("^(.*)/[^/]*$") or "."
    if folder == "" then folder = "/" end
    if not download.is_directory(folder) then
      return nil, ("the folder %s of --out %s does not exist: make it, or end --out in / to save into a folder "
        .. "made for it"):format(folder, out)
    end
  end
  local dest, err = M.new(out, several)
  if not dest then return nil, err end
  local ok, why = writable(folder)
  if not ok then return nil, ("cannot write into the folder %s (--out): %s"):format(folder, why) end
  return dest
end
-- }======================================================================

return M
