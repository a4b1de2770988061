-- A PNG reader for what the emulator and LÖVE write: 8-bit RGB or RGBA, not interlaced, any of the
-- five row filters. Written in the Lua every interpreter accepts.
--
--   local png = require "helpers.png"
--   local image = png.read(bytes)    -- signature and every chunk's CRC checked (raises otherwise):
--                                     -- width, height, channels (3 or 4), data (the inflated rows,
--                                     -- each a filter byte then its pixels), complete (zlib's end seen)
--   local r, g, b = png.decode(image).pixel(x, y)  -- the rows unfiltered; x and y from 0
local zlib = require "zlib"
local lua = require "helpers.lua"

local M = {}

M.SIGNATURE = "\137PNG\r\n\26\n"

--- The chunks of `bytes`, checked, and the image data inflated. `what` names it in errors.
function M.read(bytes, what)
  what = what or "the PNG"
  assert(bytes:sub(1, 8) == M.SIGNATURE, what .. ": no PNG signature")
  local image, idat, pos = {}, {}, 9
  while pos <= #bytes do
    local length, kind = lua.uint_be(bytes, pos, 4), bytes:sub(pos + 4, pos + 7)
    local data = bytes:sub(pos + 8, pos + 7 + length)
    local crc = lua.uint_be(bytes, pos + 8 + length, 4)
    assert(math.floor(zlib.crc32()(kind .. data)) == crc, what .. ": CRC of chunk " .. kind)
    if kind == "IHDR" then
      image.width, image.height = lua.uint_be(data, 1, 4), lua.uint_be(data, 5, 4)
      local depth, colour, interlace = data:byte(9), data:byte(10), data:byte(13)
      assert(depth == 8 and (colour == 2 or colour == 6) and interlace == 0,
        ("%s: unsupported PNG (depth %d, colour type %d, interlace %d)"):format(what, depth, colour, interlace))
      image.channels = colour == 2 and 3 or 4
    elseif kind == "IDAT" then
      idat[#idat + 1] = data
    elseif kind == "IEND" then
      break
    end
    pos = pos + 12 + length
  end
  assert(image.width, what .. ": no IHDR chunk")
  image.data, image.complete = zlib.inflate()(table.concat(idat))
  return image
end

local function paeth(a, b, c)
  local p = a + b - c
  local pa, pb, pc = math.abs(p - a), math.abs(p - b), math.abs(p - c)
  if pa <= pb and pa <= pc then return a elseif pb <= pc then return b end
  return c
end

--- `image` (read's) with its rows unfiltered, and pixel(x, y) -> r, g, b.
function M.decode(image)
  local bpp, raw = image.channels, image.data
  local stride = image.width * bpp
  assert(#raw == image.height * (stride + 1), "wrong amount of pixel data")
  local rows, prev = {}, {}
  for i = 1, stride do prev[i] = 0 end
  for y = 0, image.height - 1 do
    local at = y * (stride + 1) + 1
    local filter = raw:byte(at)
    local cur, bytes = {}, { raw:byte(at + 1, at + stride) }
    for i = 1, stride do
      local x = bytes[i]
      local a = i > bpp and cur[i - bpp] or 0
      if filter == 1 then x = x + a
      elseif filter == 2 then x = x + prev[i]
      elseif filter == 3 then x = x + math.floor((a + prev[i]) / 2)
      elseif filter == 4 then x = x + paeth(a, prev[i], i > bpp and prev[i - bpp] or 0)
      else assert(filter == 0, "bad filter") end
      cur[i] = x % 256
    end
    rows[y] = cur
    prev = cur
  end
  image.pixel = function(x, y)
    local row, i = rows[y], x * bpp
    return row[i + 1], row[i + 2], row[i + 3]
  end
  return image
end

return M
