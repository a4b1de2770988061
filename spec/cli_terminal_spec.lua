-- The dh3 command as a person sees it in a terminal: run in a real pseudo-terminal (a tmux pane
-- of a given width), what reaches the screen, stdout and stderr together, is read back.
local emulator = require "helpers.emulator"
local files = require "helpers.files"
local lua = require "helpers.lua"
local sh, read_file, write_file, tmpdir = files.quote, files.read_file, files.write_file, files.tmpdir
local now = require("dh3.core").now

-- The tmux server of this file's panes, named after this process.
local stat = read_file("/proc/self/stat")
local tmux = "tmux -L dh3term" .. (stat and stat:match("^%d+") or tostring(math.random(1e9)))

-- Opens the pane `name`, `width` x `height`, running the shell `script` from this folder.
local function open_pane(name, width, height, script)
  assert(lua.execute(("%s new-session -d -s %s -x %d -y %d -c %s %s"):format(tmux, name, width, height,
    sh(os.getenv("PWD") or "."), sh(script))))
end

-- What the pane `name` shows now, the lines the terminal wrapped joined; `all`: its scrollback too.
local function capture(name, all)
  local p = io.popen(("%s capture-pane -p -J%s -t %s"):format(tmux, all and " -S -" or "", name))
  local screen = p:read("*a")
  p:close()
  return screen
end

describe("the dh3 command on a terminal", function()
  local emu, out, env, sessions
  setup(function()
    assert(lua.execute("command -v tmux >/dev/null"), "this spec needs tmux (Debian package tmux)")
    emu = emulator.start{ "--queue-time", "0", "--process-time", "0.3", "--create-qps", "0" }
    out = tmpdir()
    env = ("env -u DH3_JOURNAL DH3_API_KEY=%s DH3_BASE_URL=%s"):format(sh(emu.key), sh(emu.url))
    sessions = 0
  end)
  teardown(function()
    os.execute(tmux .. " kill-server 2>/dev/null")
    emu:stop()
    files.rm_rf(out)
  end)

  -- Runs the shell `script` in a new pane `width` columns wide; returns all it showed (scrollback
  -- too, wrapped lines joined) once it has ended.
  local function on_screen(script, width)
    sessions = sessions + 1
    local name = "s" .. sessions
    open_pane(name, width, 40, script .. "; echo __ended__; sleep 60")
    local screen
    local deadline = now() + 60
    repeat
      os.execute("sleep 0.3")
      screen = capture(name, true)
    until screen:find("__ended__", 1, true) or now() > deadline
    os.execute(tmux .. " kill-session -t " .. name)
    assert.matches("__ended__", screen, nil, true)
    return screen
  end

  local function dh3(args)
    return env .. " " .. lua.cli .. " " .. args
  end

  it("says why a prompt, an --image or a line of --prompts is refused, not only the exit code", function()
    local file = out .. "/prompts.txt"
    write_file(file, "a fine first line\n# a comment\nno\n")
    local screen = on_screen(table.concat({
      dh3("generate hi") .. "; echo exit=$?",
      dh3("generate 'a red door' --image not-a-url") .. "; echo exit=$?",
      dh3("generate --prompts " .. sh(file)) .. "; echo exit=$?",
      dh3("generate '   '") .. "; echo exit=$?",
    }, "; "), 120)
    assert.matches('dh3: prompt 1 "hi": invalid_request: prompt must be 3 to 20000 characters, got 2\nexit=2',
      screen, nil, true)
    assert.matches('dh3: prompt 1 "a red door": invalid_request: image_urls', screen, nil, true)
    assert.matches('dh3: --prompts ' .. file .. ' line 3 "no": invalid_request: prompt must be 3 to 20000',
      screen, nil, true)
    assert.matches('invalid_request: prompt is blank', screen, nil, true)
    local _, exits = screen:gsub("exit=2", "")
    assert.are.equal(4, exits, screen)
    assert.are.equal(0, emu:stats().creates)
  end)

  it("says a failed create's error, naming its prompt, and a run's error", function()
    local broke = emulator.start{ "--credits", "0" }
    local screen = on_screen(table.concat({
      ("env DH3_API_KEY=%s DH3_BASE_URL=%s %s generate 'a door that costs too much' --out %s; echo exit=$?")
        :format(sh(broke.key), sh(broke.url), lua.cli, sh(out .. "/")),
      "env -u DH3_API_KEY " .. lua.cli .. " generate 'a door with no key'; echo exit=$?",
    }, "; "), 120)
    broke:stop()
    assert.matches('dh3: prompt 1 "a door that costs too much": insufficient_credits: ', screen, nil, true)
    assert.matches("exit=3", screen, nil, true)
    assert.matches("dh3: auth: no API key: set DH3_API_KEY", screen, nil, true)
    assert.matches("exit=2", screen, nil, true)
  end)

  it("at 60 columns, a finished row keeps the prompt, then the end of the saved path; a summary ends the run",
    function()
      local dir = out .. "/a/rather/deep/folder/for/images/"
      local screen = on_screen(dh3(("generate 'a lighthouse at dawn, watercolor' 'a broken vase {emu:fail}' "
        .. "'a red fox in snow' --out %s"):format(sh(dir))) .. "; echo exit=$?", 60)
      assert.matches("exit=1", screen, nil, true)
      -- a saved task: its id's start and its prompt, then where it went, the file's name whole
      -- (a newline before the screen: the row may be its first line)
      local row, where = ("\n" .. screen):match("\n(%x+%.%.  saved +%d+%.%ds  a lighthouse at dawn[^\n]*)\n"
        .. "    %-> ([^\n]*)\n")
      assert.is_string(row, screen)
      assert.matches("^%.%.%.[^ ]*/%x+%.png  %(%d+%.%d KiB%)$", where)
      assert.is_true(#where + 7 <= 59, where)
      assert.matches("  a red fox in snow\n    %-> %.%.%.[^\n]*/%x+%.png", screen)
      assert.matches("%x+%.%.  failed +%d+%.%ds  a broken vase", screen)
      assert.matches("\n3 tasks: 2 saved, 1 failed\n", screen, nil, true)
    end)

  it("a wait through an outage says on its row that reads fail and are tried again, then ends well", function()
    local created = io.popen(dh3("generate --no-wait 'waited through an outage' 2>&1"))
    local id = created:read("*a"):match('"task_id":"(%x+)"')
    created:close()
    assert.is_string(id)
    emu:config{ fault_drop = 1 }
    sessions = sessions + 1
    local name = "s" .. sessions
    open_pane(name, 120, 20, dh3("wait " .. id .. " --timeout 30") .. "; echo exit=$?; sleep 60")
    local seen, screen
    local deadline = now() + 20
    repeat
      os.execute("sleep 0.3")
      screen = capture(name)
      seen = seen or screen:match("[^\n]*reads failing %(network%), trying again[^\n]*")
    until seen or now() > deadline
    emu:config{ fault_drop = 0 }
    deadline = now() + 30
    while not screen:find("exit=", 1, true) and now() < deadline do
      os.execute("sleep 0.3")
      screen = capture(name)
    end
    os.execute(tmux .. " kill-session -t " .. name)
    assert.is_string(seen, screen)
    assert.matches("^" .. id, seen)
    assert.matches(id .. "%s+success", screen)
    assert.matches("exit=0", screen, nil, true)
    assert.is_nil(screen:find("reads failing", 1, true), screen)
  end)

  it("a rerun with the same journal says what it skipped", function()
    local journal = out .. "/runs.journal"
    local screen = on_screen(table.concat({
      dh3(("generate 'a kept lake' 'a lost vase {emu:fail}' --journal %s --out %s"):format(sh(journal),
        sh(out .. "/rerun/"))),
      dh3(("generate 'a kept lake' 'a lost vase {emu:fail}' --journal %s --out %s"):format(sh(journal),
        sh(out .. "/rerun/"))) .. "; echo exit=$?",
    }, "; "), 120)
    assert.matches("Skipped 1 prompt whose images the journal " .. journal .. " has saved (--again creates it anew).",
      screen, nil, true)
    assert.matches("2 prompts: 1 skipped (saved before), 1 failed", screen, nil, true)
  end)

  it("shows each task's state and elapsed time while waiting, then the saved path", function()
    -- an emulator of its own, slow enough for the rows to be seen ticking
    local slow = emulator.start{ "--queue-time", "1", "--process-time", "2" }
    finally(function() slow:stop() end)
    local words = require("helpers.cli").env_words{ DH3_API_KEY = slow.key, DH3_BASE_URL = slow.url }
    local cmd = table.concat(words, " ") .. " " .. lua.cli .. " generate " .. sh("a lighthouse at dawn") .. " "
      .. sh("a broken vase {emu:fail}") .. " --out " .. sh(out .. "/") .. "; echo exit=$?; sleep 5"
    open_pane("live", 120, 30, cmd)
    local screens, final = {}, nil
    local deadline = now() + 10
    while now() < deadline do
      os.execute("sleep 0.3")
      local screen = capture("live")
      screens[#screens + 1] = screen
      if screen:find("exit=%d") then
        final = screen
        break
      end
    end
    assert.is_string(final, screens[#screens])
    -- while waiting: a row with the task's state and a ticking elapsed time
    local elapsed = {}
    for _, screen in ipairs(screens) do
      local state, seconds = screen:match("%x+%s+(%a+)%s+(%d+%.%d)s%s+a lighthouse at dawn")
      if state == "queuing" or state == "processing" then elapsed[seconds] = true end
    end
    local distinct = 0
    for _ in pairs(elapsed) do distinct = distinct + 1 end
    assert.is_true(distinct >= 3, "elapsed time seen: " .. table.concat(screens, "\n----\n"))
    -- at the end: the prompt and saved path of one, the failure of the other (its row and its error line)
    assert.matches("%x+%s+saved%s+%d+%.%ds%s+a lighthouse at dawn%s+%-> %S*/%x+%.png", final)
    assert.matches("%x+%s+failed%s+%d+%.%ds%s+a broken vase", final)
    assert.matches("dh3: task_failed: Upstream model error", final, nil, true)
    assert.matches("exit=1", final, nil, true)
    -- nothing drawn twice: each task has exactly one row left on the screen
    local _, rows = final:gsub("a broken vase", "")
    assert.are.equal(1, rows, final)
  end)
end)
