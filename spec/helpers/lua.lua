-- What the specs need to know about the Lua running them, so one spec source runs on Lua 5.1,
-- 5.2, 5.3, 5.4 and LuaJIT 2.1 (the specs are written in the subset all five accept). is_integer,
-- running and utf8_len are dh3.compat's when the library has it.
--
--   local lua = require "helpers.lua"
--   lua.interpreter          -- the Lua under test, for child processes that run the library or
--                            -- the command line: DH3_SPEC_LUA (make test LUA=... sets it), or "lua5.4"
--   lua.cpath                -- where that Lua's dh3.core is: DH3_SPEC_CPATH, or "./?.so"
--   lua.emulator             -- the Lua that runs dh3-emulator (5.4 only): DH3_SPEC_EMULATOR_LUA, or "lua5.4"
--   lua.command(args...)     -- a shell command line: the interpreter under test with this tree's
--                            -- lua/ and build first on its paths (its dh3.core preloaded), then the
--                            -- args, each quoted as one shell word
--   lua.cli                  -- the same for `bin/dh3`: append the (quoted) arguments yourself
--   lua.core_file            -- the file of the dh3.core under test (first match on lua.cpath)
--   lua.root                 -- the tree's root (the folder the specs run in)
--   lua.version              -- "5.1", "5.2", "5.3" or "5.4" (LuaJIT: "5.1"); lua.jit: LuaJIT or not
--   lua.integers             -- true when numbers have an integer subtype (5.3 and later)
--   lua.is_integer(v)        -- v is an integer: math.type on 5.3+, a whole number within +-2^53 below
--   lua.math_type(v)         -- math.type on 5.3+; below, "integer" for a whole number within +-2^53,
--                            -- "float" for another number, nil for a non-number (1 and 1.0 are one
--                            -- number there: an assertion that a value is a float holds only when
--                            -- lua.integers)
--   lua.close_variables      -- true when `local x <close>` exists (5.4): specs of __close run only then
--   lua.unpack               -- table.unpack or unpack
--   lua.running()            -- the running coroutine and whether it is the main one, on every Lua
--   lua.utf8_len(s)          -- the number of UTF-8 characters in s, or nil when s is not valid UTF-8
--   lua.execute(cmd)         -- os.execute as 5.2+ returns it, on every Lua: true|nil, "exit"|"signal", code
--   lua.popen(cmd)           -- io.popen(cmd, "r") whose close() returns what lua.execute does, on every
--                            -- Lua (5.1 and LuaJIT's return only true); read and lines as usual. Below
--                            -- 5.2 cmd runs under lua.emulator's os.execute, which records how it
--                            -- ended; `echo $$; exec ...` still gives the pid of what cmd execs
--   lua.uint_be(s, pos, n)   -- the unsigned big-endian integer in the n bytes of s at pos
--                            -- (string.unpack(">I" .. n, s, pos), which is 5.3+)
--   lua.band(a, b)           -- bitwise and of two non-negative integers below 2^53 (no & before 5.3)
local M = {}

M.version = _VERSION:match("^Lua (%d+%.%d+)$") or "5.1"
M.jit = type(jit) == "table"
M.integers = math.type ~= nil
M.close_variables = M.version == "5.4"

M.interpreter = os.getenv("DH3_SPEC_LUA") or "lua5.4"
M.cpath = os.getenv("DH3_SPEC_CPATH") or "./?.so"
M.emulator = os.getenv("DH3_SPEC_EMULATOR_LUA") or "lua5.4"

M.unpack = table.unpack or unpack

local function quote(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end

-- the tree's root: the folder busted runs in
local function cwd()
  local p = io.popen("pwd")
  local dir = p and p:read("*l")
  if p then p:close() end
  return dir or os.getenv("PWD") or "."
end
M.root = cwd()

-- each of a path's templates made absolute (from the tree's root), so a child that starts in
-- another folder finds the same files
local function absolute(templates)
  local out = {}
  for t in templates:gmatch("[^;]+") do
    out[#out + 1] = t:sub(1, 1) == "/" and t or M.root .. "/" .. t
  end
  return table.concat(out, ";")
end

-- The file of this Lua's dh3.core, the first that M.cpath names; nil when none exists.
local function core_file()
  for template in absolute(M.cpath):gmatch("[^;]+") do
    local path = template:gsub("%?", "dh3/core")
    local f = io.open(path, "rb")
    if f then f:close(); return path end
  end
  return nil
end
M.core_file = core_file()

--- The interpreter under test as a shell command, finding this tree's Lua files and its dh3.core
-- first (run from the tree's root, as busted is), followed by `...` quoted as shell words. Its
-- dh3.core is preloaded from M.core_file, so that a script which puts a folder of its own first
-- on the cpath (bin/dh3 puts the tree's root there, where the Lua 5.4 build is) still gets the
-- build for this Lua.
function M.command(...)
  local code = ("package.path = %q .. ';' .. package.path; package.cpath = %q .. ';' .. package.cpath")
    :format(absolute("lua/?.lua;lua/?/init.lua"), absolute(M.cpath))
  if M.core_file then
    code = code .. ("; package.preload['dh3.core'] = assert(package.loadlib(%q, 'luaopen_dh3_core'))")
      :format(M.core_file)
  end
  local words = { quote(M.interpreter), "-e", quote(code) }
  for i = 1, select("#", ...) do words[#words + 1] = quote((select(i, ...))) end
  return table.concat(words, " ")
end

--- The command line under test: lua.command("bin/dh3"), to which the caller adds its arguments
-- (already quoted).
M.cli = M.command("bin/dh3")

-- dh3.compat (the library's one place for what differs between the Luas) when it is there: the
-- specs and the library then agree on what an integer is; the fallbacks below say the same.
local has_compat, compat = pcall(require, "dh3.compat")
if not has_compat then compat = nil end

-- Below 5.3 a number is an integer when it is whole and exact: within +-2^53 (the C core refuses
-- whole numbers past it there), so 2^64 is a float on every Lua.
function M.is_integer(v)
  if compat then return compat.is_integer(v) == true end
  if type(v) ~= "number" then return false end
  if math.type then return math.type(v) == "integer" end
  return v == math.floor(v) and v >= -2 ^ 53 and v <= 2 ^ 53
end

function M.math_type(v)
  if math.type then return math.type(v) end
  if type(v) ~= "number" then return nil end
  return M.is_integer(v) and "integer" or "float"
end

function M.running()
  if compat then return compat.running() end
  local co, main = coroutine.running()
  if main == nil then return co, co == nil end -- 5.1 and LuaJIT: nil in the main coroutine
  return co, main
end

function M.utf8_len(s)
  if compat then return (compat.utf8_len(s)) end
  local n, i, len = 0, 1, #s
  while i <= len do
    local c = s:byte(i)
    local extra
    if c < 0x80 then extra = 0
    elseif c >= 0xC2 and c <= 0xDF then extra = 1
    elseif c >= 0xE0 and c <= 0xEF then extra = 2
    elseif c >= 0xF0 and c <= 0xF4 then extra = 3
    else return nil end
    for j = i + 1, i + extra do
      local b = s:byte(j)
      if not b or b < 0x80 or b > 0xBF then return nil end
    end
    if extra == 2 then
      local b = s:byte(i + 1)
      if (c == 0xE0 and b < 0xA0) or (c == 0xED and b > 0x9F) then return nil end
    elseif extra == 3 then
      local b = s:byte(i + 1)
      if (c == 0xF0 and b < 0x90) or (c == 0xF4 and b > 0x8F) then return nil end
    end
    n, i = n + 1, i + extra + 1
  end
  return n
end

-- The status os.execute (5.1, LuaJIT: the wait status of system(3)) or a pipe's close gives,
-- as Lua 5.2 and later say it.
local function status(a, b, c)
  if type(a) ~= "number" then return a, b, c end -- 5.2 and later: already so
  if a == -1 then return nil, "exit", -1 end
  local signal = a % 128
  if signal ~= 0 then return nil, "signal", signal end
  local code = math.floor(a / 256) % 256
  return code == 0 or nil, "exit", code
end

function M.execute(cmd)
  return status(os.execute(cmd))
end

-- Below 5.2 a pipe's close does not tell how the command ended, so there the command runs under
-- Lua 5.4's os.execute (the shell would say 130 both for exit(130) and for SIGINT), which writes
-- how and the code to a file that close() reads.
local Pipe = {}
Pipe.__index = Pipe

function Pipe:read(...) return self.file:read(...) end
function Pipe:lines(...) return self.file:lines(...) end

function Pipe:close()
  self.file:close()
  local f = io.open(self.status_file, "r")
  local text = f and f:read("*a") or ""
  if f then f:close() end
  os.remove(self.status_file)
  local how, code = text:match("^(%a+) (%-?%d+)")
  if not how then return nil, "exit", -1 end
  code = tonumber(code)
  return (how == "exit" and code == 0) or nil, how, code
end

function M.popen(cmd)
  if M.version ~= "5.1" then return io.popen(cmd, "r") end
  local status_file = os.tmpname()
  local script = ("local ok, how, code = os.execute(%q); local f = io.open(%q, 'w'); "
    .. "f:write(tostring(how), ' ', tostring(code)); f:close()"):format(cmd, status_file)
  local file, err = io.popen(quote(M.emulator) .. " -e " .. quote(script), "r")
  if not file then os.remove(status_file); return nil, err end
  return setmetatable({ file = file, status_file = status_file }, Pipe)
end

--- The Lua being tested, with this tree's modules, running `script` in a child process whose
-- pid is known (the shell prints it, then becomes lua): {pid, pipe}; the pipe reads its output
-- (stderr too, line-buffered) and its close() says how it ended.
function M.child(script)
  local pipe = assert(M.popen("echo $$; exec " .. M.command("-e", 'io.stdout:setvbuf("line"); ' .. script)
    .. " 2>&1"))
  return { pid = assert(tonumber(pipe:read("*l"))), pipe = pipe }
end

function M.uint_be(s, pos, n)
  local v = 0
  for i = pos, pos + n - 1 do
    local b = assert(s:byte(i), "uint_be: past the end")
    v = v * 256 + b
  end
  return v
end

function M.band(a, b)
  local r, bit = 0, 1
  while a > 0 and b > 0 do
    if a % 2 == 1 and b % 2 == 1 then r = r + bit end
    a, b, bit = math.floor(a / 2), math.floor(b / 2), bit * 2
  end
  return r
end

return M
