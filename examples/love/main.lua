-- A small LÖVE game that makes an image with dh3 while it keeps drawing: the prompt, an animated
-- "generating" screen while the task runs, then the image drawn as a texture. The only dh3 call of
-- a frame is client:update() in love.update, which never waits: the task is created, waited for
-- and read by a coroutine (client:spawn) that update() advances.
--
--   DH3_API_KEY=... DH3_BASE_URL=... love examples/love        (DH3_PROMPT: the prompt)
--
-- dh3 is found through DH3_ROOT (default: two folders up from this game, the source tree): its
-- lua/ folder and the LuaJIT build of the C core, build/luajit/dh3/core.so (make LUA=luajit).
-- With DH3_AUTOQUIT=1 the game quits once the image has been drawn, after writing a screenshot to
-- DH3_OUT/love-screenshot.png and the image it drew to DH3_OUT/love-image.png, and printing
-- where it drew the image and its longest frame time (spec/love_spec.lua reads them).
-- Written in the Lua that LuaJIT accepts (LÖVE runs LuaJIT).

local FRAME = 1 / 60         -- the game runs at most 60 frames a second (vsync does the rest)
local WARMUP_FRAMES = 3      -- not counted in the longest frame: see frame_done()
local BOX = 256              -- the image is drawn to fit a BOX x BOX square

local prompt = os.getenv("DH3_PROMPT") or "a lighthouse at dawn, pixel art"
local autoquit = os.getenv("DH3_AUTOQUIT") == "1"
local out_dir = os.getenv("DH3_OUT")

local client, task, bytes, image, failure
local decoder, decoded                        -- the decoding thread and its channel
local started, finished                       -- love.timer times of the task
local drawn_at                                -- the image's rectangle on screen {x, y, w, h}
local frames_since_drawn = 0
local last_frame                              -- love.timer time the previous frame began
local frames, warmup_longest, longest, longest_update = 0, 0, 0, 0
local slow = {}                               -- frames over 50 ms, after the warm-up
local warmup = {}                             -- the warm-up frames' times

-- The thread that turns the PNG bytes into pixels (love.image), off the frame loop; it pushes
-- the ImageData, or the error message, on the channel it is given.
local DECODER = [[
require "love.image"
require "love.filesystem"
local png, channel = ...
local ok, data = pcall(love.image.newImageData, love.filesystem.newFileData(png, "dh3.png"))
channel:push(ok and data or tostring(data))
]]

-- Where dh3 is: DH3_ROOT, or the source tree this game sits in (examples/love).
local function add_dh3_to_paths()
  local root = os.getenv("DH3_ROOT") or (love.filesystem.getSource() .. "/../..")
  package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
  package.cpath = root .. "/build/luajit/?.so;" .. package.cpath
end

local function write_file(path, data)
  local f, err = io.open(path, "wb")
  if not f then return nil, err end
  f:write(data)
  return f:close()
end

local function fail(message)
  failure = tostring(message)
  print("error: " .. failure)
  if autoquit then love.event.quit(1) end
end

-- The coroutine that makes the image: each dh3 call yields to the frame loop until it is done.
local function generate()
  local t, err = client:create{ prompt = prompt, aspect_ratio = "1:1" }
  if not t then return fail(err) end
  task = t
  t, err = task:wait{ timeout = 300, interval = 0.25 }
  if not t then return fail(err) end
  local b
  b, err = task:read()
  if not b then return fail(err) end
  bytes = b
  finished = love.timer.getTime()
end

function love.load()
  add_dh3_to_paths()
  love.graphics.setFont(love.graphics.newFont(14))
  local ok, dh3 = pcall(require, "dh3")
  if not ok then return fail("cannot load dh3: " .. tostring(dh3)) end
  -- dh3.new loads the C core and libcurl (some 20-30 ms): here, before the first frame
  local err
  client, err = dh3.new{ api_key = os.getenv("DH3_API_KEY"), base_url = os.getenv("DH3_BASE_URL") }
  if not client then return fail(err) end
  client:on_error(function(e) fail(e) end)
  started = love.timer.getTime()
  client:spawn(generate)
end

-- The time each frame took, from the start of one love.update to the start of the next: the
-- update, the draw, the present and the wait for the next frame, what a player sees. The first
-- WARMUP_FRAMES are timed apart: they map the window and make the GL driver compile its shaders
-- and the font its glyphs on first use, which any LÖVE game pays whatever it does, and which on
-- a virtual X server with a software renderer can take longer than a frame. dh3's own start (the
-- C core and libcurl) is in love.load, before any frame.
local function frame_done(now)
  if last_frame then
    local spare = FRAME - (now - last_frame)
    if spare > 0 then
      love.timer.sleep(spare)
      now = love.timer.getTime()
    end
    local took = now - last_frame
    frames = frames + 1
    if frames <= WARMUP_FRAMES then
      if took > warmup_longest then warmup_longest = took end
      warmup[#warmup + 1] = ("%.3f"):format(took)
    else
      if took > longest then longest = took end
      if took > 0.05 then slow[#slow + 1] = ("frame %d: %.3f s"):format(frames, took) end
    end
  end
  return now
end

local function report_and_quit()
  love.graphics.captureScreenshot(function(shot)
    local ok, err = write_file(out_dir .. "/love-screenshot.png", shot:encode("png"):getString())
    if not ok then return fail("cannot write the screenshot: " .. tostring(err)) end
    ok, err = write_file(out_dir .. "/love-image.png", bytes)
    if not ok then return fail("cannot write the image: " .. tostring(err)) end
    print(("image drawn at %.2f %.2f %.2f %.2f from %dx%d"):format(drawn_at[1], drawn_at[2],
      drawn_at[3], drawn_at[4], image:getWidth(), image:getHeight()))
    print(("task took %.2f s, %d frames"):format(finished - started, frames))
    print(("warm-up: %d frames, longest %.3f s (%s)"):format(WARMUP_FRAMES, warmup_longest,
      table.concat(warmup, " ")))
    for _, line in ipairs(slow) do print("slow " .. line) end
    print(("longest client:update(): %.3f s"):format(longest_update))
    print(("longest frame: %.3f s"):format(longest))
    io.stdout:flush()
    love.event.quit(0)
  end)
end

function love.update()
  last_frame = frame_done(love.timer.getTime())
  if client then
    local t0 = love.timer.getTime()
    client:update()
    local took = love.timer.getTime() - t0
    if took > longest_update then longest_update = took end
  end
  if bytes and not decoder and not failure then
    -- decoding a 1024x1024 PNG takes some 60 ms, longer than a frame: a thread of its own does it
    decoded = love.thread.newChannel()
    decoder = love.thread.newThread(DECODER)
    decoder:start(bytes, decoded)
  end
  if decoder and not image and not failure then
    local result = decoded:pop()
    if type(result) == "string" then return fail("cannot decode the image: " .. result) end
    if decoder:getError() then return fail("cannot decode the image: " .. decoder:getError()) end
    -- the upload to the GPU happens here, on the thread that draws (about 10 ms for 1024x1024)
    if result then image = love.graphics.newImage(result) end
  end
  if drawn_at and autoquit then
    -- a couple of frames after the first draw, so that making and drawing the texture are timed
    frames_since_drawn = frames_since_drawn + 1
    if frames_since_drawn == 3 then
      if out_dir then report_and_quit() else love.event.quit(0) end
    end
  end
end

local function draw_generating(w, h)
  local t = love.timer.getTime()
  local cx, cy, r = w / 2, h / 2 + 20, 40
  for i = 0, 11 do
    local a = i / 12 * 2 * math.pi
    -- the bright dot goes round twice a second
    local lit = (i - t * 24) % 12
    local v = 0.25 + 0.75 * (1 - lit / 12)
    love.graphics.setColor(0.4 * v, 0.7 * v, v)
    love.graphics.circle("fill", cx + r * math.cos(a), cy + r * math.sin(a), 6)
  end
  love.graphics.setColor(0.8, 0.8, 0.8)
  local state = task and task.state or "creating"
  love.graphics.printf(("generating... %s, %.1f s"):format(state, t - started), 0, cy + r + 24, w, "center")
end

function love.draw()
  local w, h = love.graphics.getDimensions()
  love.graphics.clear(0.08, 0.08, 0.1)
  love.graphics.setColor(1, 1, 1)
  love.graphics.printf(prompt, 20, 16, w - 40, "center")
  if failure then
    love.graphics.setColor(1, 0.4, 0.4)
    love.graphics.printf(failure, 20, h / 2, w - 40, "center")
  elseif image then
    local iw, ih = image:getDimensions()
    local scale = math.min(BOX / iw, BOX / ih)
    local dw, dh = iw * scale, ih * scale
    local x, y = math.floor((w - dw) / 2), math.floor(56 + (h - 56 - dh) / 2)
    love.graphics.setColor(1, 1, 1)
    love.graphics.draw(image, x, y, 0, scale, scale)
    drawn_at = drawn_at or { x, y, dw, dh }
  elseif started then
    draw_generating(w, h)
  end
end

function love.keypressed(key)
  if key == "escape" then love.event.quit() end
end

function love.quit()
  if client then client:close() end
end
