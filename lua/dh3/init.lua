--- dh3: the Lua client for the DH3 image-generation API.
--   local dh3 = require "dh3"
--   local client = assert(dh3.new{api_key = "..."})
--   local task = assert(client:create{prompt = "a lighthouse at dawn"})
--   assert(task:wait()); assert(task:download("out/"))
local client = require "dh3.client"
local errors = require "dh3.errors"

local M = {}

M.VERSION = "0.1.0"

--- A new client, or nil, err. See README.md for the options.
function M.new(opts)
  return client.new(opts, M.VERSION)
end

--- True when v is an error returned by dh3.
M.is_error = errors.is_error

--- Callbacks: dh3.webhook.parse(body), dh3.webhook.deduplicator([store]).
M.webhook = require "dh3.webhook"

return M
