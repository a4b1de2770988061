-- Starts dh3-emulator as a child process on a free port and stops it: for specs, benchmarks and
-- `make demo`, which all want a real emulator beside them.
--   local emu = require("dh3.emulator.process").start{"--queue-time", "0"}
--   emu.url, emu.pid, emu:stop()
local M = {}

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end

local Process = {}
Process.__index = Process
M.Process = Process

--- argv: the emulator's flags. opts.lua: the interpreter (default lua5.4); opts.bin: the launcher
-- (default bin/dh3-emulator of the current directory).
function M.start(argv, opts)
  opts = opts or {}
  local cmd = { opts.lua or "lua5.4", opts.bin or "bin/dh3-emulator", "--host", "127.0.0.1", "--port", "0" }
  for _, a in ipairs(argv or {}) do cmd[#cmd + 1] = a end
  for i, a in ipairs(cmd) do cmd[i] = shell_quote(a) end
  -- the shell prints its pid, then becomes the emulator (exec), so that pid is the emulator's
  local pipe = assert(io.popen("echo $$; exec " .. table.concat(cmd, " ") .. " 2>&1", "r"))
  local pid = tonumber(pipe:read("l"))
  local first = pipe:read("l")
  local url = first and first:match("^listening on (https?://%S+)")
  if not (pid and url) then
    pipe:close()
    return nil, "dh3-emulator did not start: " .. tostring(first)
  end
  return setmetatable({ pid = pid, url = url, pipe = pipe }, Process)
end

--- Stops the emulator (SIGTERM), waits for it, and returns whatever else it printed.
function Process:stop()
  if not self.pipe then return "" end
  os.execute("kill " .. self.pid .. " 2>/dev/null")
  local rest = self.pipe:read("a")
  self.pipe:close()
  self.pipe = nil
  return rest
end

return M
