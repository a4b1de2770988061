-- LÖVE settings for the dh3 example game (main.lua).
function love.conf(t)
  t.identity = "dh3-example"
  t.version = "11.4"
  t.window.title = "dh3: an image while the game keeps running"
  t.window.width = 480
  t.window.height = 360
  t.window.vsync = 1
  -- what the game does not use
  t.modules.audio = false
  t.modules.sound = false
  t.modules.joystick = false
  t.modules.physics = false
  t.modules.video = false
  t.modules.touch = false
end
