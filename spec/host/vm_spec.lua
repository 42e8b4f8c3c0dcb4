-- spec/vm/run: the real-kernel guest runner, as a user of it sees it.
local proc = require "drv.proc"

local function vm(...)
  return assert(proc.run({ "spec/vm/run", ... }, { timeout = 300 }))
end

describe("spec/vm/run", function()
  it("runs a command in the guest's real kernel and returns its output and status", function()
    local r = vm("-q", "--", "sh", "-c", 'modprobe mlx5_ib && grep "^mlx5_ib " /proc/modules')
    assert.equal(0, r.status, r.stderr)
    assert.matches("^mlx5_ib %d+ 0 %- Live 0x%x+\n$", r.stdout)
  end)

  it("passes the command's exit status back", function()
    assert.equal(1, vm("-q", "--", "false").status)
    assert.equal(3, vm("-q", "--", "sh", "-c", "exit 3").status)
  end)

  it("sees the repository at the same path and writes --out back to the host", function()
    local out = require("drv.fs").tmpdir("vmout")
    local r = vm("-q", "--out", out, "--", "sh", "-c", "pwd > " .. out .. "/pwd")
    assert.equal(0, r.status, r.stderr)
    assert.equal(require("drv.fs").realpath(".") .. "\n", require("drv.fs").read(out .. "/pwd"))
  end)

  it("fails fast and says so when the kernel cannot boot", function()
    local r = vm("--kernel", "/nonexistent", "--", "true")
    assert.equal(125, r.status)
    assert.equal("vm/run: kernel image /nonexistent: no such file\n", r.stderr)
  end)

  it("kills a hung guest at its timeout with a clear message", function()
    local r = vm("-q", "--timeout", "12", "--", "sleep", "1000")
    assert.equal(124, r.status)
    assert.matches("timeout: COMMAND still running after 12 s; killed the guest", r.stderr)
    assert.is_true(r.seconds < 60)
  end)
end)
