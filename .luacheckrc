-- luacheck (Debian: lua-check), run by `make lint` and CI over lua/, bin/, spec/ and examples/.
-- The code is written for every Lua dh3 runs on: "max" knows the globals of all of them.
std = "max"
max_line_length = 120
-- a method of an interface (a reporter's, a stream's) may have nothing to do with its object
self = false
-- the LuaLS definitions declare what the modules export: their arguments are unused by nature
exclude_files = { "library/**" }
-- tables of cases in the specs read best one case a line
files["spec/**/*.lua"] = { std = "+busted", max_line_length = 150 }
-- LÖVE and Neovim give their own globals to the examples written for them
files["examples/love/**/*.lua"] = { globals = { "love" } }
files["examples/nvim/**/*.lua"] = { read_globals = { "vim" } }
