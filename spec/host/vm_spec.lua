-- spec/vm/run: the real-kernel guest runner, as a user of it sees it.
local fs = require "drv.fs"
local proc = require "drv.proc"
local sys = require "drv.sys"
local guest = require "spec.support.guest"

-- The boot (QEMU's start to COMMAND running) takes ~5 s here and the power-off
-- ~1 s: BOOT, the runner's default --boot-timeout, bounds each on a machine 3x
-- slower under load. COMMAND gets its own --timeout per test.
local BOOT = 120
local KILL = 10 -- the runner's SIGTERM-to-SIGKILL grace when it kills QEMU

local function vm_argv(timeout, ...)
  return { "spec/vm/run", "--boot-timeout", tostring(BOOT), "--timeout", tostring(timeout), ... }
end

-- Longer than the runner may take: boot, COMMAND, power-off, each killed at its limit.
local function worst_case(timeout)
  return BOOT + timeout + BOOT + 3 * KILL
end

-- Run the runner; `timeout` is COMMAND's (what it needs here, ~3 s at most, times 20).
local function vm(timeout, ...)
  return assert(proc.run(vm_argv(timeout, ...), { timeout = worst_case(timeout), max_capture = 64 * 1024 * 1024 }))
end

describe("spec/vm/run", function()
  it("runs a command in the guest's real kernel and returns its output and status", function()
    local r = vm(60, "-q", "--", "sh", "-c", 'modprobe mlx5_ib && grep "^mlx5_ib " /proc/modules')
    assert.equal(0, r.status, r.stderr)
    assert.matches("^mlx5_ib %d+ 0 %- Live 0x%x+\n$", r.stdout)
  end)

  it("runs it in a real root, as a container engine needs one: switch_root into the overlay (pivot_root works "
     .. "there, not under a chroot), cgroup v2 mounted", function()
    local r = vm(60, "-q", "--", "sh", "-c", "findmnt -n -o FSTYPE /; findmnt -n -o FSTYPE /sys/fs/cgroup; "
      .. "unshare -m sh -c 'mkdir -p /tmp/nr && mount -t tmpfs t /tmp/nr && mkdir /tmp/nr/old && cd /tmp/nr && "
      .. "pivot_root . old && echo pivoted'")
    assert.equal(0, r.status, r.stderr)
    assert.equal("overlay\ncgroup2\npivoted\n", r.stdout)
  end)

  it("passes the command's exit status back", function()
    assert.equal(1, vm(60, "-q", "--", "false").status)
    assert.equal(3, vm(60, "-q", "--", "sh", "-c", "exit 3").status)
  end)

  it("returns a command's fast, large output to the last byte, then its status", function()
    -- 27 MB of base64 as fast as the guest writes it (the serial console lost bytes
    -- at far less), then its sha256 as computed in the guest. ~6 s here.
    local r = vm(120, "-q", "--", "sh", "-c",
      "head -c 20000000 /dev/urandom | base64 | tee /tmp/out; sha256sum < /tmp/out; exit 7")
    assert.equal(7, r.status, r.stderr)
    local data, sum = r.stdout:match("^(.*\n)(%x+)  %-\n$")
    assert.truthy(data, "no sha256 line at the end of the output")
    assert.equal(27017546, #data) -- 20000000 bytes in base64: 26666668 characters, a newline after every 76
    local dir = assert(fs.tmpdir("vmbig"))
    finally(function() fs.remove(dir, { recursive = true }) end)
    assert(fs.write(dir .. "/out", data))
    assert.equal(sum, assert(fs.sha256(dir .. "/out")))
  end)

  it("sees the repository at the same path and writes --out back to the host", function()
    local out = fs.tmpdir("vmout")
    local r = vm(60, "-q", "--out", out, "--", "sh", "-c", "pwd > " .. out .. "/pwd")
    assert.equal(0, r.status, r.stderr)
    assert.equal(fs.realpath(".") .. "\n", fs.read(out .. "/pwd"))
  end)

  it("fails fast and says so when the kernel cannot boot", function()
    local r = vm(60, "--kernel", "/nonexistent", "--", "true")
    assert.equal(125, r.status)
    assert.equal("vm/run: kernel image /nonexistent: no such file\n", r.stderr)
  end)

  it("says so when the guest powers off before COMMAND ends", function()
    local r = vm(60, "-q", "--", "sh", "-c", "echo going; echo o > /proc/sysrq-trigger; sleep 600")
    assert.equal(125, r.status)
    assert.equal("going\n", r.stdout)
    assert.matches("vm/run: the guest powered off without reporting COMMAND's status\n", r.stderr, nil, true)
  end)

  it("gives COMMAND its whole timeout, whatever the boot took", function()
    -- The boot alone takes longer than 2 s (~5 s here); `true` needs a fraction of a second.
    local r = vm(2, "-q", "--", "true")
    assert.equal(0, r.status, r.stderr)
  end)

  it("kills a hung guest at its COMMAND timeout, counted from when COMMAND started", function()
    local out = assert(fs.tmpdir("vmhung"))
    local started = out .. "/started"
    local p = assert(proc.spawn(vm_argv(5, "-q", "--out", out, "--", "sh", "-c", "touch " .. started .. "; exec sleep 1000"),
      { stdout = "capture", stderr = "capture" }))
    finally(function()
      if p:running() then p:kill("KILL") end
      p:wait()
    end)
    assert.is_true(guest.wait_until(function() return fs.exists(started) end, worst_case(5), p), "COMMAND never started")
    local seen = sys.monotonic()
    local r = assert(p:wait(worst_case(5)))
    assert.equal(124, r.status)
    assert.matches("timeout: COMMAND still running after 5 s; killed the guest", r.stderr, nil, true)
    -- 5 s, the runner's 0.25 s polls, QEMU's exit on SIGTERM: ~6 s here
    assert.is_true(sys.monotonic() - seen < 5 + KILL + 10, "killed " .. (sys.monotonic() - seen) .. " s after COMMAND started")
  end)

  it("refuses UEFI options it cannot use, before booting, saying what to give", function()
    local function run(...) return assert(proc.run({ "spec/vm/run", "-q", ... }, { timeout = 60 })) end
    local r = run("--uefi", "/nonexistent/vars.fd", "--", "true")
    assert.equal(125, r.status)
    assert.equal("vm/run: --uefi /nonexistent/vars.fd: not a writable file (copy /usr/share/OVMF/OVMF_VARS_4M.fd)\n", r.stderr)
    r = run("--uefi-db", "spec/host/vm_spec.lua", "--", "true")
    assert.equal(125, r.status)
    assert.equal("vm/run: --uefi-db spec/host/vm_spec.lua: not a PEM certificate\n", r.stderr)
    r = run("--uefi", "x", "--uefi-db", "y", "--", "true")
    assert.equal(125, r.status)
    assert.matches("^vm/run: %-%-uefi and %-%-uefi%-db: give one of them\n", r.stderr)
  end)

  it("kills a guest that does not boot within its boot timeout", function()
    -- No TCG guest runs COMMAND 1 s after QEMU's start (~5 s here).
    local r = assert(proc.run({ "spec/vm/run", "-q", "--boot-timeout", "1", "--", "true" }, { timeout = worst_case(0) }))
    assert.equal(124, r.status)
    assert.matches("^vm/run: timeout: the guest did not finish booting within 1 s; killed the guest\n", r.stderr)
    assert.is_true(r.seconds < 1 + KILL + 10, r.seconds .. " s")
  end)
end)
