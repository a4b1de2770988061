-- Where the command line saves each task's images (--out). With one task, --out keeps the
-- library's meaning: a folder when it exists or ends in /, else a file path. With several it is a
-- folder. Folders are created when missing. In a folder the service's file names are used (made
-- safe by dh3.download), unless another task of the same run already took one of them: the
-- service may well call every image "result.png", and no image of a run may overwrite another.
local download = require "dh3.download"

local M = {}

local function shell_quote(s)
  return "'" .. s:gsub("'", [['\'']]) .. "'"
end

local function ensure_folder(dir)
  if download.is_directory(dir) then return true end
  if os.execute("mkdir -p -- " .. shell_quote(dir)) and download.is_directory(dir) then return true end
  return nil, "cannot create the folder " .. dir
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

return M
