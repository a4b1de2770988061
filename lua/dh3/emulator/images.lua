-- Real, decodable result images for the emulator: PNG (deflated with lua-zlib) and baseline JPEG
-- (a minimal encoder written here, since Debian has no Lua JPEG library), plus reading the pixel
-- size back out of PNG/JPEG bytes.
--
-- The picture is a soft two-dimensional gradient between four colours (the task's palette), in
-- flat tiles aligned to 8x8 pixel blocks: 16 tiles across, 64 down, whatever the size. Flat 8x8
-- blocks are what makes a DC-only JPEG exact, and identical rows are what keeps a 4K image cheap:
-- the PNG is assembled from one string per tile row (string.rep, never a table per pixel), the
-- JPEG from one entropy-coded string per tile row, separated by restart markers.
local zlib = require "zlib"

local M = {}

local TILES_ACROSS, TILES_DOWN = 16, 64

M.CONTENT_TYPES = { png = "image/png", jpg = "image/jpeg" }

-- ---------------------------------------------------------------------------------------------
-- Palette and tile colours

local function hsl_to_rgb(h, s, l)
  local c = (1 - math.abs(2 * l - 1)) * s
  local hp = (h % 360) / 60
  local x = c * (1 - math.abs(hp % 2 - 1))
  local r, g, b
  if hp < 1 then r, g, b = c, x, 0
  elseif hp < 2 then r, g, b = x, c, 0
  elseif hp < 3 then r, g, b = 0, c, x
  elseif hp < 4 then r, g, b = 0, x, c
  elseif hp < 5 then r, g, b = x, 0, c
  else r, g, b = c, 0, x end
  local m = l - c / 2
  local function byte(v) return math.floor((v + m) * 255 + 0.5) end
  return { byte(r), byte(g), byte(b) }
end

-- Hues come in steps, so that thousands of tasks share a few dozen renderings (the cache is keyed
-- by format, size and hue): a 1K PNG takes tens of milliseconds to make.
local HUE_STEP = 15

--- Four corner colours (top-left, top-right, bottom-left, bottom-right) drawn from rng (a
-- dh3.emulator.random stream): neighbouring hues with one complementary accent, mid lightness.
function M.palette(rng)
  local hue = rng:range(0, 360 // HUE_STEP - 1) * HUE_STEP
  return {
    hue = hue,
    hsl_to_rgb(hue, 0.65, 0.55),
    hsl_to_rgb(hue + 50, 0.60, 0.60),
    hsl_to_rgb(hue + 180, 0.55, 0.35),
    hsl_to_rgb(hue + 230, 0.60, 0.45),
  }
end

-- The colour of tile (tx, ty), tx in [0, TILES_ACROSS), ty in [0, TILES_DOWN).
local function tile_colour(palette, tx, ty)
  local u, v = tx / (TILES_ACROSS - 1), ty / (TILES_DOWN - 1)
  local out = {}
  for k = 1, 3 do
    local top = palette[1][k] * (1 - u) + palette[2][k] * u
    local bottom = palette[3][k] * (1 - u) + palette[4][k] * u
    out[k] = math.floor(top * (1 - v) + bottom * v + 0.5)
  end
  return out
end

-- Runs of 8x8 block columns that share a tile: { {tile_x, first_block, block_count}, ... }.
local function column_runs(block_cols)
  local runs = {}
  for bx = 0, block_cols - 1 do
    local tx = bx * TILES_ACROSS // block_cols
    local last = runs[#runs]
    if last and last[1] == tx then
      last[3] = last[3] + 1
    else
      runs[#runs + 1] = { tx, bx, 1 }
    end
  end
  return runs
end

local function tile_row_of(by, block_rows)
  return by * TILES_DOWN // block_rows
end

-- ---------------------------------------------------------------------------------------------
-- PNG

local zeros_cache = setmetatable({}, { __mode = "v" })
local function zeros(n)
  local z = zeros_cache[n]
  if not z then
    z = string.rep("\0", n)
    zeros_cache[n] = z
  end
  return z
end

local function png_chunk(kind, data)
  local crc = zlib.crc32()(kind .. data)
  return string.pack(">I4", #data) .. kind .. data .. string.pack(">I4", math.floor(crc))
end

-- One filtered scanline (filter "Sub": each byte minus the byte one pixel to its left), so a flat
-- run costs one delta pixel and then zeros.
local function png_row(palette, runs, ty, width)
  local parts = { "\1" }
  local prev = { 0, 0, 0 }
  for _, run in ipairs(runs) do
    local x0 = run[2] * 8
    local x1 = math.min(width, (run[2] + run[3]) * 8)
    local c = tile_colour(palette, run[1], ty)
    parts[#parts + 1] = string.char((c[1] - prev[1]) % 256, (c[2] - prev[2]) % 256, (c[3] - prev[3]) % 256)
    parts[#parts + 1] = zeros((x1 - x0 - 1) * 3)
    prev = c
  end
  return table.concat(parts)
end

--- PNG bytes (8-bit RGB) of width x height.
function M.png(width, height, palette)
  local block_cols, block_rows = (width + 7) // 8, (height + 7) // 8
  local runs = column_runs(block_cols)
  local deflate = zlib.deflate(6)
  local out = {}
  local y = 0
  while y < height do
    local ty = tile_row_of(y // 8, block_rows)
    -- every pixel row of this tile row is identical: deflate them in one call
    local y1 = y
    while y1 < height and tile_row_of(y1 // 8, block_rows) == ty do y1 = y1 + 8 - y1 % 8 end
    y1 = math.min(y1, height)
    local z = deflate(string.rep(png_row(palette, runs, ty, width), y1 - y))
    if #z > 0 then out[#out + 1] = z end
    y = y1
  end
  out[#out + 1] = deflate("", "finish")
  return table.concat{
    "\137PNG\r\n\26\n",
    png_chunk("IHDR", string.pack(">I4I4BBBBB", width, height, 8, 2, 0, 0, 0)),
    png_chunk("IDAT", table.concat(out)),
    png_chunk("IEND", ""),
  }
end

-- ---------------------------------------------------------------------------------------------
-- Baseline JPEG, DC only. Every 8x8 block is flat, so its DCT has a DC term and nothing else:
-- with a DC quantiser of 8 the quantised DC is exactly (sample - 128), and any decoder reproduces
-- the block exactly. Sampling 4:4:4, one quantisation table, the standard luminance DC Huffman
-- table (ITU T.81 Annex K) for every component, and an AC table holding only end-of-block.

local DC_BITS = { 0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0 }
local DC_VALUES = { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 }
local AC_BITS = { 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }
local AC_VALUES = { 0x00 } -- end of block

-- Canonical Huffman codes from a (bits, values) table: value -> {code, length}.
local function huffman_codes(bits, values)
  local codes, code, k = {}, 0, 1
  for length = 1, 16 do
    for _ = 1, bits[length] do
      codes[values[k]] = { code, length }
      code, k = code + 1, k + 1
    end
    code = code << 1
  end
  return codes
end

local DC_CODES = huffman_codes(DC_BITS, DC_VALUES)
local EOB = huffman_codes(AC_BITS, AC_VALUES)[0x00]
-- an unchanged block is DC category 0 then end-of-block; both codes are all zeros here
assert(DC_CODES[0][1] == 0 and EOB[1] == 0)
local ZERO_MCU_BITS = 3 * (DC_CODES[0][2] + EOB[2])

local function segment(marker, payload)
  return string.pack(">BBI2", 0xFF, marker, #payload + 2) .. payload
end

local function jpeg_headers(width, height, restart_interval)
  local dqt = { string.char(0x00, 8) } -- table 0; DC quantiser 8, then 63 AC entries (unused)
  dqt[2] = string.rep(string.char(16), 63)
  local dht = {}
  for _, t in ipairs{ { 0x00, DC_BITS, DC_VALUES }, { 0x10, AC_BITS, AC_VALUES } } do
    dht[#dht + 1] = string.char(t[1])
    for i = 1, 16 do dht[#dht + 1] = string.char(t[2][i]) end
    for _, v in ipairs(t[3]) do dht[#dht + 1] = string.char(v) end
  end
  return table.concat{
    "\xFF\xD8",
    segment(0xE0, "JFIF\0" .. string.char(1, 1, 0, 0, 1, 0, 1, 0, 0)),
    segment(0xDB, table.concat(dqt)),
    -- SOF0: 8-bit, three components, each 1x1 sampling with quantisation table 0
    segment(0xC0, string.pack(">BI2I2B", 8, height, width, 3) .. string.char(1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0)),
    segment(0xC4, table.concat(dht)),
    segment(0xDD, string.pack(">I2", restart_interval)),
    -- SOS: three components, all on DC table 0 / AC table 0, spectral 0..63, no approximation
    segment(0xDA, string.char(3, 1, 0x00, 2, 0x00, 3, 0x00, 0, 63, 0)),
  }
end

local function ycbcr(c)
  local r, g, b = c[1], c[2], c[3]
  local function clamp(v) return math.max(0, math.min(255, math.floor(v + 0.5))) end
  return clamp(0.299 * r + 0.587 * g + 0.114 * b),
    clamp(128 - 0.168736 * r - 0.331264 * g + 0.5 * b),
    clamp(128 + 0.5 * r - 0.418688 * g - 0.081312 * b)
end

-- Entropy-coded bytes of one MCU row (every MCU one block per component), byte-aligned with
-- 1-bits and 0xFF-stuffed, as required before a restart marker.
local function jpeg_mcu_row(palette, runs, ty)
  local out, acc, nbits = {}, 0, 0
  local function put(code, length)
    acc = (acc << length) | code
    nbits = nbits + length
    while nbits >= 8 do
      nbits = nbits - 8
      local byte = (acc >> nbits) & 0xFF
      out[#out + 1] = byte == 0xFF and "\xFF\0" or string.char(byte)
    end
    acc = acc & ((1 << nbits) - 1)
  end
  local function put_block(diff)
    local magnitude, category = math.abs(diff), 0
    while magnitude > 0 do
      category, magnitude = category + 1, magnitude >> 1
    end
    local hc = DC_CODES[category]
    put(hc[1], hc[2])
    if category > 0 then
      put(diff >= 0 and diff or diff + (1 << category) - 1, category)
    end
    put(EOB[1], EOB[2])
  end
  local pred = { 0, 0, 0 } -- DC predictors restart at zero after every restart marker
  for _, run in ipairs(runs) do
    local y, cb, cr = ycbcr(tile_colour(palette, run[1], ty))
    local dc = { y - 128, cb - 128, cr - 128 }
    for k = 1, 3 do
      put_block(dc[k] - pred[k])
      pred[k] = dc[k]
    end
    -- the rest of the run has diff 0 in every block, whose code is all zero bits
    local zero_bits = (run[3] - 1) * ZERO_MCU_BITS
    while zero_bits > 0 do
      local n = math.min(zero_bits, 48)
      put(0, n)
      zero_bits = zero_bits - n
    end
  end
  if nbits > 0 then put((1 << (8 - nbits)) - 1, 8 - nbits) end
  return table.concat(out)
end

--- Baseline JPEG bytes (YCbCr 4:4:4) of width x height.
function M.jpeg(width, height, palette)
  local block_cols, block_rows = (width + 7) // 8, (height + 7) // 8
  local runs = column_runs(block_cols)
  local rows = {}
  local out = { jpeg_headers(width, height, block_cols) }
  for by = 0, block_rows - 1 do
    local ty = tile_row_of(by, block_rows)
    rows[ty] = rows[ty] or jpeg_mcu_row(palette, runs, ty)
    out[#out + 1] = rows[ty]
    if by < block_rows - 1 then out[#out + 1] = string.char(0xFF, 0xD0 + by % 8) end
  end
  out[#out + 1] = "\xFF\xD9"
  return table.concat(out)
end

--- Image bytes in format "png" or "jpg".
function M.render(format, width, height, palette)
  if format == "jpg" then return M.jpeg(width, height, palette) end
  return M.png(width, height, palette)
end

-- ---------------------------------------------------------------------------------------------
-- Reading sizes back

--- The format and pixel size of PNG or JPEG bytes (the head of a file is enough: the PNG IHDR or
-- the JPEG frame header). Returns format ("png" | "jpg"), width, height; or nil.
function M.probe(bytes)
  if bytes:sub(1, 8) == "\137PNG\r\n\26\n" and bytes:sub(13, 16) == "IHDR" and #bytes >= 24 then
    local w, h = string.unpack(">I4I4", bytes, 17)
    return "png", w, h
  end
  if bytes:sub(1, 2) ~= "\xFF\xD8" then return nil end
  local i = 3
  while i + 3 <= #bytes do
    if bytes:byte(i) ~= 0xFF then return nil end
    local marker = bytes:byte(i + 1)
    if marker == 0xFF then
      i = i + 1 -- fill byte
    elseif marker == 0x01 or (marker >= 0xD0 and marker <= 0xD7) then
      i = i + 2 -- markers without a length
    else
      local length = string.unpack(">I2", bytes, i + 2)
      -- SOF0..SOF15 carry the size, except DHT (C4), JPG (C8) and DAC (CC)
      if marker >= 0xC0 and marker <= 0xCF and marker ~= 0xC4 and marker ~= 0xC8 and marker ~= 0xCC then
        if i + 8 > #bytes then return nil end
        local h, w = string.unpack(">I2I2", bytes, i + 5)
        return "jpg", w, h
      end
      if marker == 0xDA or marker == 0xD9 then return nil end
      i = i + 2 + length
    end
  end
  return nil
end

-- ---------------------------------------------------------------------------------------------
-- Cache: rendered bytes by key, least recently used evicted past a byte budget. Rendering is
-- deterministic, so an evicted image comes back byte for byte the same (file_size stays true).

local Cache = {}
Cache.__index = Cache

function M.new_cache(max_bytes)
  return setmetatable({ items = {}, bytes = 0, max_bytes = max_bytes or 256 * 1024 * 1024, clock = 0 }, Cache)
end

--- The bytes for key, rendering them with make() when absent.
function Cache:get(key, make)
  self.clock = self.clock + 1
  local item = self.items[key]
  if item then
    item.used = self.clock
    return item.bytes
  end
  local bytes = make()
  self.items[key] = { bytes = bytes, used = self.clock }
  self.bytes = self.bytes + #bytes
  while self.bytes > self.max_bytes do
    local oldest_key, oldest
    for k, it in pairs(self.items) do
      if k ~= key and (not oldest or it.used < oldest.used) then oldest_key, oldest = k, it end
    end
    if not oldest then break end
    self.items[oldest_key] = nil
    self.bytes = self.bytes - #oldest.bytes
  end
  return bytes
end

function Cache:clear()
  self.items, self.bytes = {}, 0
end

return M
