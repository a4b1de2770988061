-- Text for people: sizes, durations, a progress bar, and cutting a line to the terminal's width.
local compat = require "dh3.compat"

local M = {}

local floor, utf8_len, utf8_offset = math.floor, compat.utf8_len, compat.utf8_offset

local UNITS = { "KiB", "MiB", "GiB", "TiB" }

--- 999 B, 1.5 KiB, 2.3 MiB ...
function M.bytes(n)
  if n < 1024 then return ("%d B"):format(n) end
  local unit = 0
  repeat
    n = n / 1024
    unit = unit + 1
  until n < 1024 or unit == #UNITS
  return ("%.1f %s"):format(n, UNITS[unit])
end

--- 0.4s, 12.3s, 1m05s, 2h03m
function M.duration(seconds)
  if seconds < 60 then return ("%.1fs"):format(seconds) end
  local s = math.floor(seconds)
  if s < 3600 then return ("%dm%02ds"):format(floor(s / 60), s % 60) end
  return ("%dh%02dm"):format(floor(s / 3600), floor(s % 3600 / 60))
end

--- How long ago, in whole units: 45s, 12m, 3h05m, 2d04h ("?" when unknown or in the future by
-- more than a clock's slip).
function M.age(seconds)
  if type(seconds) ~= "number" or seconds ~= seconds or seconds < -60 then return "?" end
  local s = math.max(0, math.floor(seconds))
  if s < 60 then return ("%ds"):format(s) end
  if s < 3600 then return ("%dm"):format(floor(s / 60)) end
  if s < 86400 then return ("%dh%02dm"):format(floor(s / 3600), floor(s % 3600 / 60)) end
  return ("%dd%02dh"):format(floor(s / 86400), floor(s % 86400 / 3600))
end

--- [=========>          ] for a fraction in 0..1, `width` characters inside the brackets.
function M.bar(fraction, width)
  fraction = math.max(0, math.min(1, fraction))
  local full = math.floor(fraction * width + 0.5)
  local head = (full > 0 and full < width) and ">" or ""
  if head ~= "" then full = full - 1 end
  return "[" .. ("="):rep(full) .. head .. (" "):rep(width - full - #head) .. "]"
end

-- `text` safe to draw, and its width in characters: control characters become spaces (a prompt
-- or a server's message must not move the cursor); text that is not UTF-8 is counted in bytes,
-- those above 127 shown as "?" (never cut inside what a terminal may draw oddly).
local function drawable(text)
  text = text:gsub("%c", " ")
  local n = utf8_len(text)
  if not n then
    text = text:gsub("[\128-\255]", "?")
    n = #text
  end
  return text, n
end

--- The width of `text` on the screen, in characters (as fit counts them).
function M.width(text)
  return select(2, drawable(text))
end

-- `text` (made drawable) cut to at most `columns` characters, "..." where it was cut: at its end,
-- or at its start when `keep_end`.
local function cut(text, columns, keep_end)
  local n
  text, n = drawable(text)
  if n <= columns then return text end
  if columns <= 3 then return ("."):rep(math.max(columns, 0)) end
  if keep_end then return "..." .. text:sub(utf8_offset(text, n - (columns - 3) + 1)) end
  return text:sub(1, utf8_offset(text, columns - 3 + 1) - 1) .. "..."
end

--- `text` cut to at most `columns` characters (UTF-8 code points), ending in "..." when cut.
-- Control characters become spaces: a prompt or a server's message must not move the cursor.
function M.fit(text, columns)
  return cut(text, columns, false)
end

--- As fit, but keeping the end of `text` and starting with "..." when cut: for a path, whose
-- file name is what tells one from another.
function M.fit_end(text, columns)
  return cut(text, columns, true)
end

return M
