rockspec_format = "3.0"
package = "dh3"
version = "scm-1"
source = {
  url = "git+https://github.com/dh3-lua/dh3.git",
}
description = {
  summary = "Lua client for the DH3 image-generation API, on libcurl (Lua 5.1 to 5.4, LuaJIT 2.1)",
  detailed = [[
    dh3 creates image-generation tasks, waits on them without blocking a frame loop, and
    downloads the results atomically. A C core drives libcurl's multi interface; a local
    emulator of the service (dh3-emulator) is included for offline development and tests.
  ]],
  license = "MIT",
}
dependencies = {
  -- the C core builds for each (src/compat.h); LuaJIT installs with --lua-version=5.1
  "lua >= 5.1, < 5.5",
  "lua-cjson",
}
external_dependencies = {
  -- a library check only: Debian keeps curl.h under a multiarch include path
  CURL = { library = "curl" },
}
build = {
  type = "builtin",
  modules = {
    ["dh3.core"] = {
      sources = { "src/core.c", "src/engine.c", "src/request.c", "src/pool.c", "src/util.c",
                  "src/json.c", "src/journal.c", "src/fs.c", "src/interrupt.c" },
      libraries = { "curl" },
      libdirs = { "$(CURL_LIBDIR)" },
      defines = {},
    },
    ["dh3"] = "lua/dh3/init.lua",
    ["dh3.cli"] = "lua/dh3/cli.lua",
    ["dh3.cli.destination"] = "lua/dh3/cli/destination.lua",
    ["dh3.cli.exitcode"] = "lua/dh3/cli/exitcode.lua",
    ["dh3.cli.format"] = "lua/dh3/cli/format.lua",
    ["dh3.cli.jobs"] = "lua/dh3/cli/jobs.lua",
    ["dh3.cli.jsonlines"] = "lua/dh3/cli/jsonlines.lua",
    ["dh3.cli.parser"] = "lua/dh3/cli/parser.lua",
    ["dh3.cli.pending"] = "lua/dh3/cli/pending.lua",
    ["dh3.cli.terminal"] = "lua/dh3/cli/terminal.lua",
    ["dh3.client"] = "lua/dh3/client.lua",
    ["dh3.compat"] = "lua/dh3/compat.lua",
    ["dh3.contract"] = "lua/dh3/contract.lua",
    ["dh3.download"] = "lua/dh3/download.lua",
    ["dh3.emulator"] = "lua/dh3/emulator/init.lua",
    ["dh3.emulator.api"] = "lua/dh3/emulator/api.lua",
    ["dh3.emulator.callbacks"] = "lua/dh3/emulator/callbacks.lua",
    ["dh3.emulator.faults"] = "lua/dh3/emulator/faults.lua",
    ["dh3.emulator.httpc"] = "lua/dh3/emulator/httpc.lua",
    ["dh3.emulator.images"] = "lua/dh3/emulator/images.lua",
    ["dh3.emulator.json"] = "lua/dh3/emulator/json.lua",
    ["dh3.emulator.loop"] = "lua/dh3/emulator/loop.lua",
    ["dh3.emulator.options"] = "lua/dh3/emulator/options.lua",
    ["dh3.emulator.process"] = "lua/dh3/emulator/process.lua",
    ["dh3.emulator.random"] = "lua/dh3/emulator/random.lua",
    ["dh3.emulator.reference"] = "lua/dh3/emulator/reference.lua",
    ["dh3.emulator.server"] = "lua/dh3/emulator/server.lua",
    ["dh3.emulator.stats"] = "lua/dh3/emulator/stats.lua",
    ["dh3.emulator.stream"] = "lua/dh3/emulator/stream.lua",
    ["dh3.emulator.tasks"] = "lua/dh3/emulator/tasks.lua",
    ["dh3.errors"] = "lua/dh3/errors.lua",
    ["dh3.heap"] = "lua/dh3/heap.lua",
    ["dh3.http1"] = "lua/dh3/http1.lua",
    ["dh3.httpd"] = "lua/dh3/httpd.lua",
    ["dh3.journal"] = "lua/dh3/journal.lua",
    ["dh3.luv"] = "lua/dh3/luv.lua",
    ["dh3.output"] = "lua/dh3/output.lua",
    ["dh3.poller"] = "lua/dh3/poller.lua",
    ["dh3.ratelimit"] = "lua/dh3/ratelimit.lua",
    ["dh3.random"] = "lua/dh3/random.lua",
    ["dh3.retry"] = "lua/dh3/retry.lua",
    ["dh3.scheduler"] = "lua/dh3/scheduler.lua",
    ["dh3.task"] = "lua/dh3/task.lua",
    ["dh3.validate"] = "lua/dh3/validate.lua",
    ["dh3.webhook"] = "lua/dh3/webhook.lua",
  },
  install = {
    bin = {
      ["dh3"] = "bin/dh3",
      ["dh3-emulator"] = "bin/dh3-emulator",
    },
  },
  -- the LuaLS definitions (README: "Editor support"), installed beside the rock
  copy_directories = { "library" },
}
test = {
  type = "busted",
}
