-- guest-timeout: 600 (COMMAND limit of this file's guest boot; the boot took 38-117 s here at load 6-10)
-- The installed layout as the images ship it: `make install DESTDIR=$tmp`, then
-- the installed entrypoint runs the installed drvrun and OFED recipe chrooted
-- into a container root, laid out as deploy/ofed-driver.yaml lays out the pod.
-- Its own mount namespace; the guest's /usr (the image's userspace, under a
-- writable layer as a container runtime mounts it) without /usr/lib/modules
-- (an image has no modules of the node's kernel), /etc read-only; the install
-- at /usr/local; and from the "host" (the guest): /lib/modules read-only at
-- /host/lib/modules, /run/mellanox/drivers shared (hostPath, Bidirectional),
-- /run/drvrun (the host-wide lock and the journal), the build cache at
-- /var/cache/drvrun and /run/modprobe.d at /host/run/modprobe.d. Nothing of the
-- source tree is visible inside.
local fs = require "drv.fs"
local kmod = require "drv.kmod"
local proc = require "drv.proc"
local sys = require "drv.sys"
local probe = require "drv.ready"
local guest = require "spec.support.guest"
local ofed = require "spec.support.ofed"
local container = require "spec.support.container"
local sh = require "spec.support.sh"

local MARKER = "/.drvrun-container-root"
local RECIPE = "/usr/local/share/drvrun/recipes/ubuntu-ofed.lua"
local ENTRYPOINT = "/usr/local/share/drvrun/entrypoint"
local PROBE = "/usr/local/share/drvrun/probe.lua"

-- The root's file systems: the guest's /usr under a writable layer without
-- /usr/lib/modules, the install at /usr/local, the guest's /etc read-only.
-- Each file matching `pattern`: its sha256, inode and change time (a file
-- written again, even with the same bytes, is not the same).
local function digests(pattern)
  local t = {}
  for _, f in ipairs(fs.glob(pattern) or {}) do
    local st = assert(fs.stat(f))
    t[f] = ("%s %d %s"):format(fs.sha256(f), st.ino, st.ctime)
  end
  return t
end

local function prepare(dest)
  return ([[
mount --bind "$R" "$R"
mount --make-private "$R"
mount -t tmpfs tmpfs "$R/.layer"
mkdir "$R/.layer/upper" "$R/.layer/work"
mount -t overlay overlay -o "lowerdir=/usr,upperdir=$R/.layer/upper,workdir=$R/.layer/work" "$R/usr"
mount --bind %s/usr/local "$R/usr/local"
mount -t tmpfs tmpfs "$R/usr/lib/modules"
mount --bind /etc "$R/etc"
mount -o remount,bind,ro "$R/etc"
mount -t tmpfs tmpfs "$R/run"
mount -t tmpfs tmpfs "$R/tmp"
]]):format(sh.quote(dest))
end

-- An empty root: mount points, the guest's top-level links (/bin -> usr/bin...), a marker.
local function make_root()
  local root = assert(fs.tmpdir("container"))
  for _, d in ipairs { ".layer", "usr", "etc", "proc", "sys", "dev", "run", "tmp", "var/cache/drvrun",
                       "host/run/modprobe.d", "host/lib/modules", "host/lib/udev/rules.d", "host/etc" } do
    assert(fs.mkdir(root .. "/" .. d))
  end
  for _, name in ipairs { "bin", "sbin", "lib", "lib32", "lib64" } do
    local target = fs.readlink("/" .. name)
    if target then assert(fs.symlink(target, root .. "/" .. name)) end
  end
  assert(fs.write(root .. MARKER, "the container root\n"))
  return root
end

-- The volumes of deploy/ofed-driver.yaml's pod, from the guest as the host.
local function volumes(cache)
  return {
    { host = "/run/mellanox/drivers", path = "/run/mellanox/drivers", propagation = "Bidirectional" },
    { host = "/run/drvrun", path = "/run/drvrun" },
    { host = cache, path = "/var/cache/drvrun" },
    { host = "/run/modprobe.d", path = "/host/run/modprobe.d" },
    { host = "/lib/modules", path = "/host/lib/modules", read_only = true },
  }
end

local function start_container(root, dest, cache, env)
  local p, log = container.start {
    root = root, prepare = prepare(dest), volumes = volumes(cache),
    env = { "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" },
    argv = { ENTRYPOINT, RECIPE, "OFED_URL=" .. env.server:url(env.bundle), "OFED_SHA256=" .. env.sha, "LOCK_TIMEOUT=30" },
  }
  ofed.running[#ofed.running + 1] = p
  return p, log
end

describe("make install, run as a container root", function()
  local env, dest, root
  setup(function()
    env = ofed.setup()
    assert(fs.mkdir("/run/drvrun"))
    dest = assert(fs.tmpdir("install"))
    local r = assert(proc.run({ "make", "-s", "install", "DESTDIR=" .. dest, "PREFIX=/usr/local" }, { stderr = "stdout" }))
    assert(r.status == 0, r.stdout)
    root = make_root()
  end)
  after_each(function() ofed.cleanup() end)
  teardown(function()
    env.server:stop()
    guest.unload_all()
    fs.remove(dest, { recursive = true })
    fs.remove(root, { recursive = true })
  end)

  it("reaches ready with the installed entrypoint, drvrun and recipe, is probed live, and stops cleanly", function()
    local inbox = ofed.load_inbox()
    local kdir = "/lib/modules/" .. sys.uname().release
    local index = fs.sha256(kdir .. "/modules.dep")
    local updates = digests(kdir .. "/updates/*/*")
    local p, log = start_container(root, dest, ofed.fresh_cache(), env)
    assert.is_true(ofed.wait_for(ofed.READY[2], p), fs.read(log))
    local text = fs.read(log)
    assert.matches("drvrun entrypoint: " .. kdir:gsub("%p", "%%%0") .. ": the host's %(/host" .. kdir:gsub("%p", "%%%0")
                   .. "%) under a layer of the container's own\n", text)
    assert.matches("blacklist: /host/run/modprobe.d/drvrun%-ubuntu%-ofed%.conf written", text)
    assert.matches("phase load done in", text)

    -- the container's root is exposed to the "host", with the install in it
    assert.is_true(fs.exists(ofed.EXPOSE .. MARKER), "the container root is visible at " .. ofed.EXPOSE)
    assert.is_true(fs.exists(ofed.EXPOSE .. RECIPE))
    assert.is_true(fs.exists(ofed.EXPOSE .. "/usr/src/ofa_kernel/default/Module.symvers"))
    -- the built stack is loaded and the host-visible ready file says so
    local ok, ready = probe.live(ofed.READY[2])
    assert.is_true(ok, ready)
    assert.equal(#ofed.STACK, #ready.modules)
    local ctx = assert(kmod.new())
    for _, m in ipairs(ready.modules) do
      assert.equal(m.srcversion, assert(ctx:state(m.name)).srcversion, m.name)
    end
    -- the liveness probe as the kubelet runs it: in the container's namespace and root
    local r = container.exec(p, nil, { "/usr/local/bin/drvrun", PROBE, ofed.READY[2] })
    assert.equal(0, r.status, r.stderr)
    assert.matches("^probe: ubuntu%-ofed 25%.10%-1%.7%.1%.1 live: 12 modules as /run/mellanox/drivers/%.driver%-ready says\n$",
                   r.stdout)

    assert.is_true(sys.kill(p:pid(), "TERM"))
    local res = assert(p:wait(120))
    assert.equal(0, res.status, fs.read(log))
    for _, f in ipairs(ofed.READY) do assert.is_false(fs.exists(f), f) end
    assert.is_false(fs.exists(ofed.EXPOSE .. MARKER), "the exposed root is unmounted")
    assert.is_false(fs.exists(ofed.JOURNAL))
    assert.is_false(fs.exists(ofed.BLACKLIST))
    -- what the recipe installed stayed in the container: the host's tree is as it was
    assert.same(updates, digests(kdir .. "/updates/*/*"))
    assert.equal(index, fs.sha256(kdir .. "/modules.dep"))
    for _, n in ipairs(inbox) do
      local st = assert(ctx:state(n), n .. " reloaded")
      assert.equal("", st.taint, n)
    end
    r = assert(proc.run({ dest .. "/usr/local/bin/drvrun", dest .. PROBE, ofed.READY[2] }))
    assert.equal(1, r.status)
    assert.matches("^probe: not ready: ", r.stderr)
  end)
end)
