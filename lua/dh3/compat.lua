-- What differs between Lua 5.1, 5.2, 5.3, 5.4 and LuaJIT 2.1, in one place: the rest of dh3 is
-- written in the subset all five accept and asks this module for the rest.
local M = {}

local type, select, tonumber, byte, find, floor = type, select, tonumber, string.byte, string.find, math.floor
local co_create, co_resume, co_yield, co_status, co_running =
  coroutine.create, coroutine.resume, coroutine.yield, coroutine.status, coroutine.running

M.unpack = table.unpack or unpack

-- Below 5.3 every number is a double: integers are exact only up to 2^53, so a whole number past
-- it cannot be told from its neighbours and is refused (the C core refuses it too).
M.MAX_EXACT = 2 ^ 53

local math_type, math_tointeger = math.type, math.tointeger
if math_type then
  --- True when v is an integer (5.3+: of subtype integer, so 5.0 is not one).
  function M.is_integer(v) return math_type(v) == "integer" end
  --- v as an integer, or nil when it is not a number (or a numeral) with an integral value.
  M.tointeger = math_tointeger
else
  local MAX_EXACT = M.MAX_EXACT
  -- Below 5.3 there is one kind of number: 5 and 5.0 are the same value, and both are whole.
  function M.is_integer(v)
    return type(v) == "number" and v == floor(v) and v >= -MAX_EXACT and v <= MAX_EXACT
  end
  function M.tointeger(v)
    if type(v) == "string" then v = tonumber(v) end
    if type(v) == "number" and v == floor(v) and v >= -MAX_EXACT and v <= MAX_EXACT then return v end
    return nil
  end
end

--- The number of UTF-8 characters in s, or nil and the position of the first byte that is not
-- part of a valid one (as 5.4's utf8.len: no overlong forms, no surrogates, nothing past U+10FFFF).
-- Written out rather than taken from utf8.len, which 5.1, 5.2 and LuaJIT lack and which 5.3 and
-- 5.4 do not agree on, so that every Lua counts alike.
function M.utf8_len(s)
  if not find(s, "[\128-\255]") then return #s end
  local n, i, len = 0, 1, #s
  while i <= len do
    local c = byte(s, i)
    if c < 0x80 then
      i = i + 1
    else
      local need, cp, least
      if c >= 0xC2 and c <= 0xDF then need, cp, least = 1, c - 0xC0, 0x80
      elseif c >= 0xE0 and c <= 0xEF then need, cp, least = 2, c - 0xE0, 0x800
      elseif c >= 0xF0 and c <= 0xF4 then need, cp, least = 3, c - 0xF0, 0x10000
      else return nil, i end
      for k = 1, need do
        local cc = byte(s, i + k)
        if not cc or cc < 0x80 or cc > 0xBF then return nil, i end
        cp = cp * 64 + (cc - 0x80)
      end
      if cp < least or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return nil, i end
      i = i + need + 1
    end
    n = n + 1
  end
  return n
end

--- The byte position where the n-th UTF-8 character of s starts (n >= 1; #s + 1 just past the
-- last one), counting lead bytes only, as utf8.offset(s, n) does on valid text.
function M.utf8_offset(s, n)
  local i, len, seen = 1, #s, 0
  while i <= len do
    local c = byte(s, i)
    if c < 0x80 or c >= 0xC0 then
      seen = seen + 1
      if seen == n then return i end
    end
    i = i + 1
  end
  if seen + 1 == n then return len + 1 end
  return nil
end

-- Coroutines made by M.pcall (below, on plain 5.1) to run a protected function: [inner] = the
-- coroutine it runs for, or MAIN. running() looks through them, so that inside a protected call
-- dh3 still sees the coroutine it spawned (and its waits still yield to the scheduler).
-- Weak both ways: 5.1's weak tables are no ephemerons, and a value that reaches its key (the
-- outer coroutine's stack holds the inner one) would keep an abandoned pair alive for ever.
local outer_of = setmetatable({}, { __mode = "kv" })
local MAIN = {}

--- The running coroutine and whether it is the main thread, on every Lua (5.1 and LuaJIT return
-- only the coroutine, nil in the main thread). In the main thread of 5.1 and LuaJIT the first
-- value is nil: there is no thread object to return there.
function M.running()
  local co, is_main = co_running()
  local outer = co and outer_of[co]
  while outer do
    if outer == MAIN then return nil, true end
    co = outer
    outer = outer_of[co]
  end
  if co == nil then return nil, true end
  return co, is_main == true
end

-- Can a coroutine yield from inside pcall (5.2+, LuaJIT), and from an iterator called by a
-- generic for (same)? Plain 5.1 can do neither ("attempt to yield across metamethod/C-call
-- boundary"). Found out by trying rather than by version number.
M.PCALL_CAN_YIELD = coroutine.wrap(function()
  return pcall(function() return co_yield(true) end)
end)() == true
M.ITERATOR_CAN_YIELD = coroutine.wrap(function()
  local ok = pcall(function()
    local last
    for v in function() return co_yield(true) end do last = v end -- (never resumed past the yield)
    return last
  end)
  return ok and "ended" or false
end)() == true

-- Does xpcall pass its extra arguments to the function (not on 5.1)?
local XPCALL_ARGS = select(2, xpcall(function(...) return select("#", ...) end, tostring, 1)) == 1

--- xpcall(f, msgh, ...) passing the arguments on every Lua. Not yield-safe on 5.1: for callbacks
-- that must not yield anyway.
if XPCALL_ARGS then
  M.xpcall = xpcall
else
  local unpack = M.unpack
  function M.xpcall(f, msgh, ...)
    local n, args = select("#", ...), { ... }
    if n == 0 then return xpcall(f, msgh) end
    return xpcall(function() return f(unpack(args, 1, n)) end, msgh)
  end
end

--- A traceback for err raised in `co` (what a handler of M.coxpcall gets on plain 5.1: the
-- coroutine that raised, dead now with its stack intact), or, without it, of the running stack
-- from `level` (1: the caller of traceback).
function M.traceback(err, co, level)
  local msg = type(err) == "string" and err or tostring(err)
  if co then return debug.traceback(co, msg) end
  return debug.traceback(msg, (level or 1) + 1)
end

if M.PCALL_CAN_YIELD then
  --- pcall(f, ...) through which f may yield to the coroutine that called it.
  M.pcall = pcall
  --- xpcall(f, msgh, ...) through which f may yield; msgh(err) runs where f raised (on plain 5.1,
  -- afterwards, as msgh(err, co): see M.traceback; debug.traceback as msgh works everywhere).
  M.coxpcall = M.xpcall
else
  -- Plain 5.1: f runs in a coroutine of its own, whose yields are passed through to the coroutine
  -- that called (and what it is resumed with, back in); an error ends only that coroutine.
  -- a Lua function of our own in every case: coroutine.create on 5.1 takes no C function
  local function callable(f)
    return function(...) return f(...) end
  end

  local traceback = debug.traceback
  -- msgh runs once f's coroutine is dead (its stack is still there to read): debug.traceback
  -- itself is given that coroutine, any other handler gets it as a second argument.
  local function handle(msgh, err, co)
    if msgh == traceback then
      if type(err) ~= "string" and err ~= nil then return err end -- as debug.traceback does
      return traceback(co, err)
    end
    return msgh(err, co)
  end

  local function finish(co, in_main, msgh, ok, ...)
    if not ok then
      outer_of[co] = nil
      local err = ...
      if msgh then return false, handle(msgh, err, co) end
      return false, err
    end
    if co_status(co) == "dead" then
      outer_of[co] = nil
      return true, ...
    end
    if in_main then
      outer_of[co] = nil
      local err = "attempt to yield from outside a coroutine"
      if msgh then return false, handle(msgh, err, co) end
      return false, err
    end
    return finish(co, in_main, msgh, co_resume(co, co_yield(...)))
  end

  local function protected(msgh, f, ...)
    local outer, in_main = M.running()
    local co = co_create(callable(f))
    outer_of[co] = in_main and MAIN or outer
    return finish(co, in_main, msgh, co_resume(co, ...))
  end

  function M.pcall(f, ...) return protected(nil, f, ...) end
  function M.coxpcall(f, msgh, ...) return protected(msgh, f, ...) end
end

return M
