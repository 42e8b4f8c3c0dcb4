-- The drvrun command line: options, arg, exit codes, error reports, module path.
local sh = require "spec.support.sh"

describe("drvrun command line", function()
  it("prints its version with --version and -v", function()
    for _, opt in ipairs { "--version", "-v" } do
      local r = sh.drvrun(opt)
      assert.equal(0, r.status)
      assert.matches("^drvrun %d+%.%d+%.%d+ %(Lua 5%.4%.%d+%)\n$", r.stdout)
    end
  end)

  it("prints help with examples and exits 0", function()
    local r = sh.drvrun("--help")
    assert.equal(0, r.status)
    assert.matches("usage: drvrun %[options%]", r.stdout)
    assert.matches("examples:", r.stdout)
    assert.matches("%-%-plan", r.stdout)
  end)

  it("exits 2 with the usage on stderr when given nothing to run", function()
    local r = sh.drvrun()
    assert.equal(2, r.status)
    assert.matches("usage: drvrun", r.stderr)
  end)

  it("rejects an unknown option with exit 2 and says where help is", function()
    local r = sh.drvrun("--frobnicate")
    assert.equal(2, r.status)
    assert.matches("unknown option '%-%-frobnicate'", r.stderr)
    assert.matches("drvrun %-%-help", r.stderr)
  end)

  it("rejects an option missing its argument", function()
    local r = sh.drvrun("-e")
    assert.equal(2, r.status)
    assert.matches("option '%-e' needs an argument", r.stderr)
  end)

  it("validates --log-level and --log-format", function()
    local r = sh.drvrun("--log-level", "loud", "-e", "")
    assert.equal(2, r.status)
    assert.matches("unknown log level 'loud'", r.stderr)
    r = sh.drvrun("--log-format", "xml", "-e", "")
    assert.equal(2, r.status)
    assert.matches("unknown log format 'xml'", r.stderr)
  end)

  it("runs -e and -l in command-line order", function()
    local r = sh.drvrun("-e", "io.write('a')", "-l", "drv.log", "-e", "io.write(type(_G['drv.log']))")
    assert.equal(0, r.status, r.stderr)
    assert.equal("atable", r.stdout)
  end)

  it("loads every primitive module", function()
    local r = sh.drvrun("-e", [[for _, m in ipairs{"drv.kmod","drv.mount","drv.transfer","drv.proc",
      "drv.fs","drv.sys","drv.lock","drv.signal","drv.archive"} do assert(type(require(m)) == "table") end]])
    assert.equal(0, r.status, r.stderr)
  end)

  it("sets arg like lua does", function()
    local script = sh.tmpfile("io.write(arg[-2], '|', arg[0], '|', arg[1], '|', arg[2], '|', #arg, '|', ...)")
    local r = sh.drvrun("--log-level", "debug", script, "one", "two")
    assert.equal(0, r.status, r.stderr)
    assert.equal("--log-level|" .. script .. "|one|two|2|onetwo", r.stdout)
    os.remove(script)
  end)

  it("passes the log options to drv.config and drv.log", function()
    local r = sh.drvrun("--log-level", "debug", "--log-format", "json",
      "-e", "local c = require 'drv.config' io.write(c.log_level, c.log_format)",
      "-e", "require('drv.log').debug('x=%d', 1)")
    assert.equal(0, r.status, r.stderr)
    assert.equal("debugjson", r.stdout)
    assert.matches('^{"time":"[^"]+","level":"debug","msg":"x=1"}\n$', r.stderr)
  end)

  it("exits 2 and names file and line for a script that does not parse", function()
    local script = sh.tmpfile("local x = 1\nx = = 2\n", ".lua")
    local r = sh.drvrun(script)
    assert.equal(2, r.status)
    assert.equal(("drvrun: %s:2: unexpected symbol near '='\n"):format(script), r.stderr)
    os.remove(script)
  end)

  it("exits 2 for a missing script and names it", function()
    local r = sh.drvrun("/nonexistent/recipe.lua")
    assert.equal(2, r.status)
    assert.equal("drvrun: cannot open /nonexistent/recipe.lua: No such file or directory\n", r.stderr)
  end)

  it("exits 1 for a failing script: one readable line, then the traceback", function()
    local script = sh.tmpfile("local function f() error('bundle not found') end\nf()\n", ".lua")
    local r = sh.drvrun(script)
    assert.equal(1, r.status)
    local first, rest = r.stderr:match("^([^\n]*)\n(.*)$")
    assert.equal(("drvrun: %s:1: bundle not found"):format(script), first)
    assert.matches("^stack traceback:\n", rest)
    os.remove(script)
  end)

  it("reports a non-string error object readably", function()
    local r = sh.drvrun("-e", "error({})")
    assert.equal(1, r.status)
    assert.matches("^drvrun: %(error object is a table value%)", r.stderr)
  end)

  it("exits with the script's os.exit code", function()
    assert.equal(7, sh.drvrun("-e", "os.exit(7)").status)
  end)

  it("reads the script from stdin with -", function()
    local r = sh.run(("echo 'io.write(42)' | %s -"):format(sh.quote(os.getenv("DRVRUN"))))
    assert.equal(0, r.status, r.stderr)
    assert.equal("42", r.stdout)
  end)

  it("finds Lua modules in DRVRUN_PATH first", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir .. "/drv"))
    local f = assert(io.open(dir .. "/mymod.lua", "w"))
    f:write("return { answer = 42 }")
    f:close()
    local r = sh.run(("DRVRUN_PATH=/nowhere:%s %s -e 'io.write(require(\"mymod\").answer)'")
      :format(dir, sh.quote(os.getenv("DRVRUN"))))
    os.execute("rm -rf " .. dir)
    assert.equal(0, r.status, r.stderr)
    assert.equal("42", r.stdout)
  end)

  it("finds its library next to the binary", function()
    local r = sh.drvrun("-e", "io.write(require('drv.config').libdir)")
    assert.equal(0, r.status, r.stderr)
    assert.matches("/lib/lua$", r.stdout)
  end)

  it("writes no globals when loading the drv library", function()
    local names = {}
    for _, f in ipairs(assert(require("drv.fs").glob("lib/lua/drv/*.lua"))) do
      names[#names + 1] = ("%q"):format("drv." .. f:match("([%w_]+)%.lua$"))
    end
    assert.is_true(#names >= 13, "the library's modules are found")
    local r = sh.drvrun("-e", [[
      local before = {} for k in pairs(_G) do before[k] = true end
      for _, m in ipairs{]] .. table.concat(names, ", ") .. [[} do require(m) end
      for k in pairs(_G) do assert(before[k], "new global " .. k) end]])
    assert.equal(0, r.status, r.stderr)
  end)

  describe("--compile", function()
    local fs = require "drv.fs"
    local dir
    before_each(function() dir = assert(fs.tmpdir("compile")) end)
    after_each(function() fs.remove(dir, { recursive = true }) end)

    -- Replace path's content, keeping its modification time.
    local function rewrite_keeping_mtime(path, content)
      assert(sh.run(("touch -r %s %s.ref"):format(sh.quote(path), sh.quote(path))).status == 0)
      assert(fs.write(path, content))
      assert(sh.run(("touch -r %s.ref %s"):format(sh.quote(path), sh.quote(path))).status == 0)
    end

    local function require_m()
      return sh.run(("DRVRUN_PATH=%s %s -e 'io.write((require(\"m\")))'"):format(sh.quote(dir),
        sh.quote(os.getenv("DRVRUN"))))
    end

    it("writes FILE.luac, which require loads while FILE keeps its size and mtime", function()
      assert(fs.write(dir .. "/m.lua", "return 'compiled'"))
      local r = sh.drvrun("--compile", dir .. "/m.lua")
      assert.equal(0, r.status, r.stderr)
      assert.matches("^#drvrun compiled chunk: size 17, mtime %d+%.%d+\n\27Lua", fs.read(dir .. "/m.luac"))
      -- Same size and mtime, other text: only the compiled chunk says "compiled".
      rewrite_keeping_mtime(dir .. "/m.lua", "return 'xxxxxxxx'")
      assert.equal("compiled", require_m().stdout)
    end)

    it("reads the source instead once it changed, or when the chunk does not load", function()
      assert(fs.write(dir .. "/m.lua", "return 'compiled'"))
      assert.equal(0, sh.drvrun("--compile", dir .. "/m.lua").status)
      rewrite_keeping_mtime(dir .. "/m.lua", "return 'the source'")
      assert.equal("the source", require_m().stdout)
      assert(fs.write(dir .. "/m.lua", "return 'compiled'"))
      assert.equal(0, sh.drvrun("--compile", dir .. "/m.lua").status)
      local chunk = fs.read(dir .. "/m.luac")
      assert(fs.write(dir .. "/m.luac", (chunk:gsub("\27Lua.*$", "\27Lua garbage"))))
      rewrite_keeping_mtime(dir .. "/m.lua", "return 'xxxxxxxx'")
      assert.equal("xxxxxxxx", require_m().stdout)
    end)

    it("names each chunk after its file without $DESTDIR, and runs scripts from theirs", function()
      assert(fs.mkdir(dir .. "/usr/share"))
      assert(fs.write(dir .. "/usr/share/s.lua", "error('from the script')"))
      local r = sh.run(("DESTDIR=%s/ %s --compile %s/usr/share/s.lua"):format(sh.quote(dir),
        sh.quote(os.getenv("DRVRUN")), sh.quote(dir)))
      assert.equal(0, r.status, r.stderr)
      r = sh.drvrun(dir .. "/usr/share/s.lua")
      assert.equal(1, r.status)
      assert.matches("^drvrun: /usr/share/s%.lua:1: from the script\n", r.stderr)
    end)

    it("fails with exit 2 naming a file that is missing or does not parse", function()
      local r = sh.drvrun("--compile", dir .. "/nope.lua")
      assert.equal(2, r.status)
      assert.equal("drvrun: " .. dir .. "/nope.lua: No such file or directory\n", r.stderr)
      assert(fs.write(dir .. "/bad.lua", "x = = 1"))
      r = sh.drvrun("--compile", dir .. "/bad.lua")
      assert.equal(2, r.status)
      assert.matches("bad%.lua:1: unexpected symbol near '='", r.stderr)
      assert.is_false(fs.exists(dir .. "/bad.luac"))
      assert.same({ "bad.lua" }, fs.dir(dir))
    end)
  end)
end)

-- drvrun as a container's PID 1: a real PID namespace (unshare --pid --fork), in which it is PID 1.
describe("drvrun as PID 1 (--init, or started as PID 1)", function()
  local proc = require "drv.proc"
  local fs = require "drv.fs"
  local sys = require "drv.sys"
  local DRVRUN = os.getenv("DRVRUN")

  local function in_pid_ns(argv, opts)
    local full = { "unshare", "--pid", "--fork", "--mount-proc" }
    for _, a in ipairs(argv) do full[#full + 1] = a end
    return full, opts
  end

  -- Send `sig` to PID 1 of the namespace once `file` exists (its command is up); the run's result.
  local function signal_when(argv, file, sig)
    local p = assert(proc.spawn((in_pid_ns(argv)), { stdout = "capture", stderr = "capture" }))
    local deadline = sys.monotonic() + 30
    while not fs.exists(file) and sys.monotonic() < deadline do sys.sleep(0.02) end
    -- unshare's child is the namespace's PID 1: the only child of unshare
    local pid1 = assert(fs.read(("/proc/%d/task/%d/children"):format(p:pid(), p:pid()))):match("%d+")
    assert.is_true(sys.kill(tonumber(pid1), sig))
    return assert(p:wait(30))
  end

  it("--init: reaps the orphans of its command's children, exits with the command's status", function()
    local r = assert(proc.run((in_pid_ns { DRVRUN, "--init", "sh", "-c",
      'sh -c "sleep 0.2 & exit 0"; sleep 1; ps -eo stat,comm | grep -c "^Z" ; exit 7' })))
    assert.equal(7, r.status, r.stderr)
    assert.equal("0\n", r.stdout, "no zombie left in the namespace")
  end)

  it("--init: forwards SIGTERM to its command (the kernel gives PID 1 only what it handles)", function()
    local dir = assert(fs.tmpdir("init"))
    local r = signal_when({ DRVRUN, "--init", "sh", "-c",
      'trap "echo got TERM; exit 5" TERM; touch ' .. dir .. '/up; while :; do sleep 0.05; done' }, dir .. "/up", "TERM")
    assert.equal(5, r.status, r.stderr)
    assert.equal("got TERM\n", r.stdout)
  end)

  it("started as PID 1, splits by itself: its run gets SIGHUP as outside a container", function()
    local dir = assert(fs.tmpdir("init"))
    local r = signal_when({ DRVRUN, "-e", 'local s = require("drv.signal").watch { "TERM", "HUP" }; '
      .. 'assert(require("drv.fs").write("' .. dir .. '/up", "")); print(s:wait(20), require("drv.sys").getpid())' },
      dir .. "/up", "HUP")
    assert.equal(0, r.status, r.stderr)
    assert.equal("HUP\t2\n", r.stdout, "the run is PID 2, the init PID 1")
  end)

  it("--init without a command is a usage error; a missing command exits 127", function()
    local r = assert(proc.run { DRVRUN, "--init" })
    assert.equal(2, r.status)
    assert.matches("option '--init' needs a command", r.stderr, nil, true)
    r = assert(proc.run { DRVRUN, "--init", "/nonexistent/cmd" })
    assert.equal(127, r.status)
    assert.matches("--init: cannot run /nonexistent/cmd: No such file or directory", r.stderr, nil, true)
  end)
end)
