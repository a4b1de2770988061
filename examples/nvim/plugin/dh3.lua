-- :Dh3Generate {prompt}: generates an image through dh3, driven by Neovim's own loop (vim.loop,
-- through dh3.luv): the editor stays responsive, and nothing polls. See lua/dh3_nvim/init.lua.
if vim.g.loaded_dh3 then return end
vim.api.nvim_set_var("loaded_dh3", true)

vim.api.nvim_create_user_command("Dh3Generate", function(cmd)
  require("dh3_nvim").generate(cmd.args)
end, { nargs = "+", desc = "dh3: generate an image from a prompt and save it" })
