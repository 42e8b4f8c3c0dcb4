local proc = require "drv.proc"
local fs = require "drv.fs"
local sys = require "drv.sys"
local signal = require "drv.signal"

local function alive(pid)
  return fs.exists("/proc/" .. pid) and not (fs.read("/proc/" .. pid .. "/stat") or ""):match("^%d+ %b() Z")
end

describe("drv.proc.run", function()
  it("captures both streams and the exit status", function()
    local r = assert(proc.run({ "sh", "-c", "echo out; echo err >&2; exit 3" }))
    assert.equal(3, r.status)
    assert.equal("out\n", r.stdout)
    assert.equal("err\n", r.stderr)
    assert.is_false(r.timed_out)
    assert.is_nil(r.signal)
  end)

  it("never goes through a shell: a script without a shebang is an exec error", function()
    local dir = fs.tmpdir("proc")
    assert(fs.write(dir .. "/script", "echo hi\n", { mode = tonumber("755", 8) }))
    assert.same({ nil, dir .. "/script: Exec format error", "ENOEXEC" }, { proc.run({ dir .. "/script" }) })
    fs.remove(dir, { recursive = true })
  end)

  it("reports programs that cannot be started", function()
    assert.same({ nil, "no-such-program: not found in PATH", "ENOENT" }, { proc.run({ "no-such-program" }) })
    assert.same({ nil, "/etc/passwd: Permission denied", "EACCES" }, { proc.run({ "/etc/passwd" }) })
    assert.same({ nil, "true: cannot change directory to /nonexistent: No such file or directory", "ENOENT" },
      { proc.run({ "true" }, { cwd = "/nonexistent" }) })
  end)

  it("passes env, cwd and stdin", function()
    local r = assert(proc.run({ "sh", "-c", 'echo "$FOO"; pwd; cat' }, { env = { FOO = "bar" }, cwd = "/tmp",
                                                                         stdin = "from stdin" }))
    assert.equal("bar\n/tmp\nfrom stdin", r.stdout)
    r = assert(proc.run({ "/usr/bin/env" }, { clear_env = true, env = { ONLY = "1" } }))
    assert.equal("ONLY=1\n", r.stdout)
    assert.is_string(os.getenv("HOME"))
    r = assert(proc.run({ "sh", "-c", 'echo "${HOME-unset} $FOO"' }, { env = { HOME = false, FOO = "kept" } }))
    assert.equal("unset kept\n", r.stdout, "false unsets")
    assert.has_error(function() proc.run({ "true" }, { env = { X = true } }) end)
  end)

  it("merges stderr into stdout on request, in order", function()
    local r = assert(proc.run({ "sh", "-c", "echo 1; echo 2 >&2; echo 3" }, { stderr = "stdout" }))
    assert.equal("1\n2\n3\n", r.stdout)
    assert.equal("", r.stderr)
  end)

  it("handles large output without deadlock and keeps the tail", function()
    local r = assert(proc.run({ "sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x; echo END" },
                              { max_capture = 1000 }))
    assert.equal(0, r.status)
    assert.equal(1000, #r.stdout)
    assert.matches("xEND\n$", r.stdout)
  end)

  it("kills the whole process group at the timeout", function()
    local r = assert(proc.run({ "sh", "-c", "sleep 30 & echo $!; wait" }, { timeout = 0.5, kill_after = 1 }))
    assert.is_true(r.timed_out)
    assert.equal("SIGTERM", r.signal)
    assert.is_nil(r.status)
    local grandchild = r.stdout:match("(%d+)")
    sys.sleep(0.1)
    assert.is_false(alive(grandchild), "the grandchild sleep must be gone")
    assert.is_true(r.seconds >= 0.5 and r.seconds < 5)
  end)

  it("stops when the interrupt fd becomes readable", function()
    local w = signal.watch { "USR1" }
    local killer = assert(proc.spawn({ "sh", "-c", "sleep 0.3; kill -USR1 " .. sys.getpid() }))
    local r = assert(proc.run({ "sleep", "30" }, { interrupt_fd = w:fd() }))
    assert.is_true(r.interrupted)
    assert.is_false(r.timed_out)
    assert.equal("USR1", w:poll())
    killer:wait()
    w:close()
  end)

  it("appends both streams to a log and calls on_line per line", function()
    local log = os.tmpname()
    local lines = {}
    local r = assert(proc.run({ "sh", "-c", "echo a; echo b >&2; printf c" }, {
      log = log, stderr = "stdout", on_line = function(stream, line) lines[#lines + 1] = stream .. ":" .. line end }))
    assert.equal(0, r.status)
    assert.same({ "stdout:a", "stdout:b", "stdout:c" }, lines)
    assert.equal("a\nb\nc", fs.read(log))
    os.remove(log)
  end)

  it("kills the child when on_line raises, and propagates the error", function()
    local ok, err = pcall(proc.run, { "sh", "-c", "echo $$; sleep 30" }, { on_line = function(_, pid)
      error("stop at " .. pid, 0) end })
    assert.is_false(ok)
    local pid = err:match("stop at (%d+)")
    assert.truthy(pid)
    assert.is_false(alive(pid))
  end)

  it("calls on_tick every tick seconds while a silent program runs", function()
    local ticks = {}
    local r = assert(proc.run({ "sleep", "1.6" }, { tick = 0.3, on_tick = function(s) ticks[#ticks + 1] = s end }))
    assert.equal(0, r.status)
    assert.is_true(#ticks >= 2, "ticks: " .. #ticks)
    for i, s in ipairs(ticks) do
      assert.is_true(s >= 0.3 * i - 0.05 and s <= r.seconds, ("tick %d at %.3f s"):format(i, s))
    end
  end)

  it("kills the child when on_tick raises, and propagates the error", function()
    local file = os.tmpname()
    finally(function() os.remove(file) end)
    local ok, err = pcall(proc.run, { "sh", "-c", 'echo $$ > "$0"; exec sleep 30', file }, { tick = 0.1,
      on_tick = function()
        local pid = (io.open(file):read("a") or ""):match("%d+")
        if pid then error("stop at " .. pid, 0) end
      end })
    assert.is_false(ok)
    local pid = err:match("^stop at (%d+)$")
    assert.truthy(pid, err)
    assert.is_false(alive(pid))
    assert.has_error(function() proc.run({ "true" }, { tick = 0 }) end)
    assert.has_error(function() proc.run({ "true" }, { on_tick = 1 }) end)
  end)

  it("reports a death by signal", function()
    local r = assert(proc.run({ "sh", "-c", "kill -KILL $$" }))
    assert.equal("SIGKILL", r.signal)
    assert.is_nil(r.status)
  end)

  it("runs a child at a lower CPU and I/O priority on request, and refuses to raise one", function()
    -- the 19th field of /proc/PID/stat is the nice value; ionice(1) reads the I/O class back
    local r = assert(proc.run({ "sh", "-c", 'cut -d" " -f19 /proc/self/stat; ionice -p $$' },
                              { nice = 19, io_idle = true }))
    assert.equal("19\nidle\n", r.stdout)
    r = assert(proc.run({ "sh", "-c", 'cut -d" " -f19 /proc/self/stat; ionice -p $$' }))
    assert.matches("^0\n", r.stdout)
    assert.not_matches("idle", r.stdout)
    assert.error_matches(function() proc.run({ "true" }, { nice = -5 }) end,
                         "bad argument #2 to '[%w.]*run' %(field 'nice': 0 to 19 expected %(a lower priority only%)%)")
  end)

  it("gives children a clean signal mask even when signals are blocked here", function()
    local w = signal.watch { "TERM", "HUP" }
    local r = assert(proc.run({ "grep", "^SigBlk", "/proc/self/status" }))
    assert.matches("^SigBlk:%s+0+\n$", r.stdout)
    w:close()
  end)
end)

describe("drv.proc.spawn", function()
  it("waits with a timeout, kills and reaps", function()
    local p = assert(proc.spawn({ "sleep", "30" }))
    assert.matches("^drv.proc.process %(pid %d+%)$", tostring(p))
    local pid = p:pid()
    assert.is_true(p:running())
    assert.same({ nil, "timeout", "ETIMEDOUT" }, { p:wait(0.1) })
    assert.is_true(p:kill())
    local r = assert(p:wait())
    assert.equal("SIGTERM", r.signal)
    assert.is_false(p:running())
    assert.is_false(alive(pid))
  end)

  it("kills and reaps on close", function()
    local pid
    do
      local p <close> = assert(proc.spawn({ "sleep", "30" }))
      pid = p:pid()
    end
    assert.is_false(alive(pid))
  end)

  it("captures when asked", function()
    local p = assert(proc.spawn({ "sh", "-c", "echo hi" }, { stdout = "capture" }))
    assert.equal("hi\n", p:wait().stdout)
  end)
end)

describe("drv.proc.which", function()
  it("finds programs in PATH", function()
    assert.matches("/sh$", proc.which("sh"))
    assert.same({ nil, "no-such-program: not found in PATH", "ENOENT" }, { proc.which("no-such-program") })
  end)
end)
