-- Files, shell words and loopback ports for specs: temporary folders, reading and writing files,
-- listing folders, a port where nothing listens.
-- (Temporary folders are made with mkdir, not mktemp(1): under `make asan` the preloaded
-- LeakSanitizer aborts mktemp at exit.)
local M = {}

--- s as one shell word.
function M.quote(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end

--- A new empty folder, private to the user.
function M.tmpdir()
  local dir = os.tmpname()
  os.remove(dir)
  assert(require("helpers.lua").execute("mkdir -m 700 " .. M.quote(dir)))
  return dir
end

--- Runs a shell command; returns its exit status (a number on every Lua) and its output, stderr
-- included. Without LD_PRELOAD: under `make asan` it holds the sanitizer runtimes, meant for the
-- specs' own Lua, not for a compiler, an X server, LÖVE or a C host (whose leak reports would fail
-- the run).
function M.run(cmd)
  local p = assert(io.popen("unset LD_PRELOAD; " .. cmd .. " 2>&1; echo \"exit=$?\""))
  local out = p:read("*a")
  p:close()
  local status = tonumber(out:match("exit=(%d+)%s*$"))
  return status, (out:gsub("exit=%d+%s*$", ""))
end

--- Removes a folder and everything in it.
function M.rm_rf(path)
  os.execute("rm -rf " .. M.quote(path))
end

--- The whole file, or nil when it cannot be read.
function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

function M.write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

--- The names in a folder (hidden ones too), sorted.
function M.ls(dir)
  local p = io.popen("ls -A " .. M.quote(dir))
  local names = {}
  for line in p:lines() do names[#names + 1] = line end
  p:close()
  table.sort(names)
  return names
end

--- The names in dir of the temporary files a download leaves while it runs (".part-").
function M.temp_files(dir)
  local found = {}
  for _, name in ipairs(M.ls(dir)) do
    if name:find(".part-", 1, true) then found[#found + 1] = name end
  end
  return found
end

--- A loopback port where nothing listens.
function M.closed_port()
  local socket = require "socket"
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return port
end

return M
