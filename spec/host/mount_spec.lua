-- drv.mount, for real, in private mount namespaces.
local fs = require "drv.fs"
local ns = require "spec.support.ns"

describe("drv.mount", function()
  local dir
  before_each(function()
    dir = fs.realpath(assert(fs.tmpdir("mnt")))
    for _, d in ipairs { "a", "b", "c" } do assert(fs.mkdir(dir .. "/" .. d)) end
  end)
  after_each(function()
    assert.same({}, ns.mounts_under(dir), "nothing may leak into the test's namespace")
    fs.remove(dir, { recursive = true })
  end)

  local function run(code)
    local r = ns.run(("local m, fs, D = require 'drv.mount', require 'drv.fs', %q\n"):format(dir) .. code)
    assert.equal(0, r.status, r.stderr)
    return r.stdout
  end

  it("mounts a tmpfs and reports it", function()
    assert.equal("true|true|false|tmpfs|tmpfs|private|rw", run([[
      local ok = m.mount("tmpfs", D .. "/a", "tmpfs", { options = "size=1m" })
      local i = m.info(D .. "/a")
      io.write(tostring(ok), "|", tostring(m.is_mountpoint(D .. "/a")), "|", tostring(m.is_mountpoint(D .. "/b")),
        "|", i.fstype, "|", i.source, "|", i.propagation, "|", i.options:match("^(%w+)"))]]))
  end)

  it("binds read-only: writes fail with EROFS", function()
    assert.equal("ok|Read-only file system", run([[
      assert(m.mount("tmpfs", D .. "/a", "tmpfs"))
      assert(m.bind(D .. "/a", D .. "/b", { readonly = true }))
      local f, err = io.open(D .. "/b/x", "w")
      io.write(f and "writable" or "ok", "|", err:match(": (.*)$"))]]))
  end)

  it("carries submounts with rbind but not with bind", function()
    assert.equal("false|true", run([[
      assert(m.mount("tmpfs", D .. "/a", "tmpfs"))
      assert(fs.mkdir(D .. "/a/sub"))
      assert(m.mount("tmpfs", D .. "/a/sub", "tmpfs"))
      assert(m.bind(D .. "/a", D .. "/b"))
      assert(m.rbind(D .. "/a", D .. "/c"))
      io.write(tostring(m.is_mountpoint(D .. "/b/sub")), "|", tostring(m.is_mountpoint(D .. "/c/sub")))]]))
  end)

  it("remounts read-only and back", function()
    assert.equal("Read-only file system|ok", run([[
      assert(m.mount("tmpfs", D .. "/a", "tmpfs"))
      assert(m.remount(D .. "/a", { readonly = true }))
      local _, err = io.open(D .. "/a/x", "w")
      assert(m.remount(D .. "/a", { readonly = false }))
      io.write(err:match(": (.*)$"), "|", io.open(D .. "/a/x", "w") and "ok" or "no")]]))
  end)

  it("sets and reads every propagation kind", function()
    assert.equal("shared|slave|private|unbindable|shared", run([[
      assert(m.mount("tmpfs", D .. "/a", "tmpfs"))
      local out = {}
      for _, k in ipairs { "shared", "slave", "private", "unbindable" } do
        if k == "slave" then -- a slave needs a master: a shared peer to receive from
          assert(m.propagation(D .. "/a", "shared"))
          assert(m.bind(D .. "/a", D .. "/c"))
        end
        assert(m.propagation(D .. "/a", k))
        out[#out + 1] = m.info(D .. "/a").propagation
        if k == "slave" then assert(m.umount(D .. "/c")) end
      end
      assert(m.mount("tmpfs", D .. "/b", "tmpfs"))
      assert(fs.mkdir(D .. "/b/s"))
      assert(m.mount("tmpfs", D .. "/b/s", "tmpfs"))
      assert(m.propagation(D .. "/b", "shared", { recursive = true }))
      out[#out + 1] = m.info(D .. "/b/s").propagation
      io.write(table.concat(out, "|"))]]))
  end)

  it("makes an rbind visible to another namespace through a shared mount", function()
    -- The driver container's use case: the host path is shared; the container
    -- (its own namespace) rbinds its root there; the host sees it.
    local inner = ("assert(require('drv.mount').rbind(%q, %q))"):format(dir .. "/c", dir .. "/a")
    assert.equal("visible", run(([==[
      assert(m.bind(D .. "/a", D .. "/a"))
      assert(m.propagation(D .. "/a", "shared"))
      assert(m.mount("tmpfs", D .. "/c", "tmpfs"))
      assert(fs.write(D .. "/c/marker", "from the container"))
      local r = assert(require("drv.proc").run({ "unshare", "-m", "--propagation", "unchanged",
        os.getenv("DRVRUN"), "-e", %q }))
      assert(r.status == 0, r.stderr)
      io.write(fs.read(D .. "/a/marker") == "from the container" and "visible" or "hidden")]==]):format(inner)))
  end)

  it("gives a process a mount namespace of its own: its mounts stay there, the parent's still arrive", function()
    -- the namespace the snippet runs in stands for the driver container's; the child
    -- drvrun unshares, mounts /a for itself, then sees /b mounted here afterwards
    local child = ([==[
      local m, fs = require "drv.mount", require "drv.fs"
      assert(m.unshare())
      assert(m.mount("tmpfs", %q, "tmpfs"))
      assert(fs.write(%q, "x"))
      while not fs.exists(%q) do require("drv.sys").sleep(0.01) end
      io.write(tostring(m.is_mountpoint(%q)))]==]):format(dir .. "/a", dir .. "/go", dir .. "/b/marker", dir .. "/b")
    local r = ns.run(("local m, fs, D = require 'drv.mount', require 'drv.fs', %q\n"):format(dir) .. ([==[
      local p = assert(require("drv.proc").spawn({ os.getenv("DRVRUN"), "-e", %q }, { stdout = "capture" }))
      while not fs.exists(D .. "/go") do require("drv.sys").sleep(0.01) end
      io.write(tostring(m.is_mountpoint(D .. "/a")), "|")
      assert(m.mount("tmpfs", D .. "/b", "tmpfs"))
      assert(fs.write(D .. "/b/marker", "y"))
      local r = assert(p:wait(30))
      assert(r.status == 0, r.stderr)
      io.write(r.stdout)]==]):format(child), "shared")
    assert.equal(0, r.status, r.stderr)
    assert.equal("false|true", r.stdout)
  end)

  it("unmounts recursively, deepest first, and lazily", function()
    assert.equal("busy|true|false|false|0", run([[
      assert(m.mount("tmpfs", D .. "/a", "tmpfs"))
      assert(fs.mkdir(D .. "/a/s"))
      assert(m.mount("tmpfs", D .. "/a/s", "tmpfs"))
      local _, err = m.umount(D .. "/a")
      local busy = err:match("busy") and "busy" or err
      io.write(busy, "|", tostring(m.umount(D .. "/a", { recursive = true })), "|",
        tostring(m.is_mountpoint(D .. "/a")), "|", tostring(m.is_mountpoint(D .. "/a/s")), "|")
      assert(m.mount("tmpfs", D .. "/b", "tmpfs"))
      assert(fs.mkdir(D .. "/b/s"))
      assert(m.mount("tmpfs", D .. "/b/s", "tmpfs"))
      local f = io.open(D .. "/b/s/held", "w")
      assert(m.umount(D .. "/b", { lazy = true }))
      io.write(#m.list(D))
      f:close()]]))
  end)

  it("lists mounts under a path in mountinfo order and finds the containing mount", function()
    assert.equal("a,a/s,b|a", run([[
      assert(m.mount("tmpfs", D .. "/a", "tmpfs"))
      assert(fs.mkdir(D .. "/a/s"))
      assert(m.mount("tmpfs", D .. "/a/s", "tmpfs"))
      assert(m.mount("tmpfs", D .. "/b", "tmpfs"))
      local names = {}
      for _, i in ipairs(m.list(D)) do names[#names + 1] = i.target:sub(#D + 2) end
      assert(fs.mkdir(D .. "/a/dir"))
      io.write(table.concat(names, ","), "|", m.find(D .. "/a/dir").target:sub(#D + 2))]]))
  end)

  it("reads mountinfo's escapes, stacked mounts and bind roots as the kernel wrote them", function()
    assert.equal("a b|src\tx y|1|over|/sub|shared|1", run([[
      assert(fs.mkdir(D .. "/a b"))
      assert(m.mount("src\tx y", D .. "/a b", "tmpfs"))
      assert(m.mount("tmpfs", D .. "/a", "tmpfs"))
      assert(m.propagation(D .. "/a", "shared"))
      assert(fs.mkdir(D .. "/a/sub"))
      assert(m.bind(D .. "/a/sub", D .. "/b"))
      local bound = m.info(D .. "/b")
      assert(m.mount("over", D .. "/b", "tmpfs"))
      local spaced, top = m.info(D .. "/a b"), m.info(D .. "/b")
      io.write(spaced.target:sub(#D + 2), "|", spaced.source, "|", #m.list(D .. "/a b"), "|", top.source, "|",
        bound.root, "|", bound.propagation, "|", bound.shared_group == m.info(D .. "/a").shared_group and 1 or 0)]]))
  end)

  it("returns failure tuples that name the target and the cause", function()
    local out = run([[
      local function t(...) local _, e, n = ... return e .. " [" .. n .. "]\n" end
      io.write(t(m.mount("/nonexistent", D .. "/a", "ext4")),
               t(m.mount("x", D .. "/a", "nosuchfs")),
               t(m.bind("/nonexistent", D .. "/a")),
               t(m.mount("tmpfs", D .. "/missing", "tmpfs")),
               t(m.umount(D .. "/a")),
               t(m.info(D .. "/a")),
               t(m.propagation(D .. "/a", "shared")))]])
    assert.equal(table.concat({
      ("mount %s/a: No such file or directory (special device /nonexistent does not exist) [ENOENT]"):format(dir),
      ("mount %s/a: No such device (unknown filesystem type 'nosuchfs') [ENODEV]"):format(dir),
      ("mount %s/a: /nonexistent: No such file or directory [ENOENT]"):format(dir),
      ("mount %s/missing: No such file or directory [ENOENT]"):format(dir),
      ("umount %s/a: not a mount point [EINVAL]"):format(dir),
      ("%s/a: not a mount point [EINVAL]"):format(dir),
      ("propagation %s/a: not a mount point [EINVAL]"):format(dir),
    }, "\n") .. "\n", out)
  end)
end)
