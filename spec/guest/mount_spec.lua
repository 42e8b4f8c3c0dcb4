-- guest-timeout: 60 (COMMAND limit of this file's guest boot; the boot took 6-14 s here at load 6-10)
-- drv.mount on the guest's real kernel: what a driver container does to expose
-- its root, seen from another mount namespace.
local fs = require "drv.fs"
local ns = require "spec.support.ns"

describe("drv.mount in a real kernel", function()
  it("rbinds a root to a shared host path, visible from another namespace, and unmounts it", function()
    local host = assert(fs.tmpdir("shared-host")) -- not /run/mellanox/drivers: other specs use that
    -- the "host" side: its path is a shared mount point, as with mountPropagation: Bidirectional
    local mount = require "drv.mount"
    assert(mount.bind(host, host))
    finally(function()
      while mount.is_mountpoint(host) do assert(mount.umount(host, { lazy = true, recursive = true })) end
      fs.remove(host, { recursive = true })
    end)
    assert(mount.propagation(host, "shared"))
    -- the "container": its own namespace, rbinds / there (after /sys's submounts are made
    -- unbindable and /sys private, as the seed does)
    local r = ns.run(([[
      local m = require "drv.mount"
      assert(m.propagation("/sys", "unbindable", { recursive = true }))
      assert(m.propagation("/sys", "private"))
      assert(m.rbind("/", %q))]]):format(host), "unchanged")
    assert.equal(0, r.status, r.stderr)
    assert.is_true(fs.exists(host .. "/etc/os-release"))
    assert.equal(fs.read("/etc/os-release"), fs.read(host .. "/etc/os-release"))
    local info = assert(mount.info(host))
    assert.equal("/", info.root)
    -- the container stops: a lazy recursive unmount from its side reaches the host
    r = ns.run(("assert(require('drv.mount').umount(%q, { lazy = true, recursive = true }))"):format(host), "unchanged")
    assert.equal(0, r.status, r.stderr)
    assert.is_false(fs.exists(host .. "/etc/os-release"))
    assert(mount.umount(host))
  end)
end)
