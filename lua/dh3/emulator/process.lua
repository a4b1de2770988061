-- Starts dh3-emulator as a child process on a free loopback port, and stops it: for your own
-- tests (and this project's specs, benchmarks and `make demo`), which want a real emulator
-- beside them without a terminal of its own. This module runs on every Lua dh3 supports; the
-- emulator it starts runs on Lua 5.4.
--   local process = require "dh3.emulator.process"
--   local emu = assert(process.start{ "--keys", "test-key", "--queue-time", "0" })
--   local client = assert(require("dh3").new{ api_key = "test-key", base_url = emu.url })
--   ...
--   emu:stop()                   -- returns what it printed on stderr (errors, --log lines)
-- emu.url is "http://127.0.0.1:PORT", emu.pid its process id.
local M = {}

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end

local Process = {}
Process.__index = Process
M.Process = Process

-- The folder the running dh3 was loaded from ("lua/" in a source tree, the share/lua/5.x/ of an
-- install), so that the child loads the same files; nil when it cannot be told.
-- package.searchpath where the Lua has it (5.2 and later), else the same search by hand (5.1).
local function searchpath(name, path)
  if package.searchpath then return package.searchpath(name, path) end
  local file = name:gsub("%.", "/")
  for template in path:gmatch("[^;]+") do
    local candidate = template:gsub("%?", file)
    local f = io.open(candidate, "r")
    if f then
      f:close()
      return candidate
    end
  end
  return nil
end

local function module_root()
  local file = searchpath("dh3.emulator", package.path)
  local tail = "dh3/emulator/init.lua"
  if file and file:sub(-#tail) == tail then return file:sub(1, -#tail - 1) end
  return nil
end

-- The command that runs the emulator with flags `argv`: the module of this very install through
-- the interpreter `lua` (its own C modules: luasocket, lua-zlib, lua-cjson), or the launcher
-- `bin` when one is given.
local function command(argv, lua, bin)
  local cmd = { shell_quote(lua) }
  if bin then
    cmd[#cmd + 1] = shell_quote(bin)
    for _, a in ipairs(argv) do cmd[#cmd + 1] = shell_quote(a) end
    return table.concat(cmd, " ")
  end
  local flags = {}
  for i, a in ipairs(argv) do flags[i] = ("%q"):format(tostring(a)) end
  local code = {}
  local root = module_root()
  if root then
    code[#code + 1] = ("local r = %q; package.path = r .. '?.lua;' .. r .. '?/init.lua;' .. package.path")
      :format(root)
  end
  code[#code + 1] = ("require('dh3.emulator').main{%s}"):format(table.concat(flags, ", "))
  cmd[#cmd + 1] = "-e"
  cmd[#cmd + 1] = shell_quote(table.concat(code, "; "))
  return table.concat(cmd, " ")
end

--- Starts an emulator on 127.0.0.1 and a free port. argv: its flags (dh3-emulator --help), e.g.
-- {"--keys", "k", "--queue-time", "0"}. opts, optional:
--   lua: the interpreter (default "lua5.4");
--   bin: a launcher to run instead, such as "bin/dh3-emulator" (default: the dh3.emulator module
--        found where this one was, whatever the current folder);
--   stderr: a file for what it prints on stderr. By default that goes into the pipe this module
--        reads, and stop() returns it; a pipe holds some 64 KiB, so give a file to a long run
--        with --log (or the emulator would wait for a reader).
-- Returns the process (url, pid, stop), or nil, message.
function M.start(argv, opts)
  opts = opts or {}
  local all = { "--host", "127.0.0.1", "--port", "0" }
  for _, a in ipairs(argv or {}) do all[#all + 1] = a end
  local redirect = opts.stderr and ("2>>" .. shell_quote(opts.stderr)) or "2>&1"
  -- the shell prints its pid, then becomes the emulator (exec), so that pid is the emulator's
  local pipe, perr = io.popen("echo $$; exec " .. command(all, opts.lua or "lua5.4", opts.bin) .. " " .. redirect, "r")
  if not pipe then return nil, "dh3-emulator did not start: " .. tostring(perr) end
  local pid = tonumber(pipe:read("*l"))
  local first = pipe:read("*l")
  local url = first and first:match("^listening on (https?://%S+)")
  if not (pid and url) then
    if pid then os.execute("kill " .. pid .. " 2>/dev/null") end -- in case it runs all the same
    local rest = pipe:read("*a") or ""
    pipe:close()
    return nil, ("dh3-emulator did not start: %s %s"):format(tostring(first), rest:sub(1, 2000))
  end
  return setmetatable({ pid = pid, url = url, pipe = pipe }, Process)
end

--- Stops the emulator (SIGTERM), waits for it, and returns whatever else it printed (its stderr,
-- unless start was given a file for it). Calling it again does nothing and returns "".
function Process:stop()
  if not self.pipe then return "" end
  os.execute("kill " .. self.pid .. " 2>/dev/null")
  local rest = self.pipe:read("*a")
  self.pipe:close()
  self.pipe = nil
  return rest
end

return M
