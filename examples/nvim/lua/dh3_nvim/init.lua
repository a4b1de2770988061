-- The dh3 Neovim plugin: one client per editor, made on the first :Dh3Generate, its engine driven
-- by vim.loop through dh3.luv (a poll handle per socket, one timer; nothing wakes the editor when
-- no work is in flight). Settings:
--   DH3_API_KEY, DH3_BASE_URL  the service (read by dh3.new)
--   DH3_ROOT                   where the dh3 tree is (default: two folders above examples/nvim);
--                              its LuaJIT build (make LUA=luajit) gives build/luajit/dh3/core.so
--   vim.g.dh3_out or DH3_OUT   where images go (default: stdpath("data") .. "/dh3")
-- When a generation ends, the saved image's path is echoed and put in vim.g.dh3_last_image (a
-- failure: vim.g.dh3_last_error), and the User autocommand Dh3Done runs.
local M = {}

local client, driver

-- The dh3 tree: DH3_ROOT, or found from this file's place (examples/nvim/lua/dh3_nvim/init.lua).
local function dh3_root()
  local root = os.getenv("DH3_ROOT")
  if root and root ~= "" then return root end
  local source = debug.getinfo(1, "S").source:gsub("^@", "")
  if source:sub(1, 1) ~= "/" then source = vim.loop.cwd() .. "/" .. source end
  local tree, found = source:gsub("/examples/nvim/lua/dh3_nvim/init%.lua$", "")
  if found == 0 then error("dh3: set DH3_ROOT to the dh3 tree (this plugin is not inside it)", 0) end
  return tree
end

local function use_tree(root)
  -- Neovim runs LuaJIT (or Lua 5.1): the C core built for it by `make LUA=luajit` (lua5.1)
  local build = type(jit) == "table" and "luajit" or "lua5.1"
  package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
  package.cpath = root .. "/build/" .. build .. "/?.so;" .. package.cpath
end

local function echo(msg, hl)
  vim.api.nvim_echo({ { msg, hl } }, true, {})
end

-- Errors raised in dh3's callbacks arrive in luv callbacks, where vim.api may not be called.
local function report_later(err)
  vim.schedule(function() echo("dh3: " .. tostring(err), "ErrorMsg") end)
end

local function get_client()
  if client then return client end
  use_tree(dh3_root())
  local dh3 = require "dh3"
  local c, err = dh3.new{ loop = "host" }
  if not c then return nil, err end
  c:on_error(report_later)
  driver = require("dh3.luv").attach(c, vim.loop, { on_error = report_later })
  client = c
  vim.api.nvim_create_autocmd("VimLeavePre", {
    callback = function()
      driver:close()
      c:close()
    end,
  })
  return client
end

function M.output_dir()
  local dir = vim.g.dh3_out or os.getenv("DH3_OUT")
  if not dir or dir == "" then dir = vim.fn.stdpath("data") .. "/dh3" end
  return dir
end

-- sets g:name to value, or unsets it when value is nil
local function set_var(name, value)
  if value == nil then
    pcall(vim.api.nvim_del_var, name)
  else
    vim.api.nvim_set_var(name, value)
  end
end

local function finished(prompt, paths, err)
  if paths then
    set_var("dh3_last_image", paths[1])
    set_var("dh3_last_error", nil)
    echo(("dh3: %q saved to %s"):format(prompt, paths[1]))
  else
    set_var("dh3_last_image", nil)
    set_var("dh3_last_error", tostring(err))
    echo("dh3: " .. tostring(err), "ErrorMsg")
  end
  vim.api.nvim_exec_autocmds("User", { pattern = "Dh3Done", modeline = false })
end

--- Creates a task for `prompt`, waits for it and downloads its image, all in a dh3 coroutine
-- that the loop resumes: this returns at once.
function M.generate(prompt)
  local c, err = get_client()
  if not c then
    echo("dh3: " .. tostring(err), "ErrorMsg")
    return
  end
  local dir = M.output_dir()
  vim.fn.mkdir(dir, "p")
  echo(("dh3: generating %q ..."):format(prompt))
  c:spawn(function()
    local task, e = c:create{ prompt = prompt }
    if task then task, e = task:wait() end
    local paths
    if task then paths, e = task:download(dir .. "/") end
    vim.schedule(function() finished(prompt, paths, e) end)
  end)
  driver:sync() -- the create was started here, outside the loop's callbacks: send it now
end

return M
