-- Kernel upgrades on this machine (it cannot load modules; the guest does that:
-- spec/guest/upgrade_spec.lua): the host's kernels and their headers as a container
-- sees them under HOST_ROOT (drv.kernels), a build for another kernel with the host's
-- headers, what `drvrun --preflight` says of a kernel and its exit status (drv.ahead),
-- and what the build cache keeps.
local fs = require "drv.fs"
local proc = require "drv.proc"
local kernels = require "drv.kernels"
local kernel = require "spec.support.kernel"
local ns = require "spec.support.ns"

local FIXTURES = fs.realpath("build/fixtures")
local OLDER = kernel.installed[#kernel.installed - 1]

local function sim_bundle(name)
  local path = assert(fs.glob(FIXTURES .. "/" .. (name or "sim-ofed-[0-9]*.tgz")))[1]
  for line in io.lines(FIXTURES .. "/SHA256SUMS") do
    local sha, file = line:match("^(%x+)%s+(%S+)$")
    if file == path:match("[^/]+$") then return path, sha end
  end
  error("no checksum for " .. path)
end

-- The OFED recipe's arguments for the simulated bundle (or `name`), a build cache and root in `dir`.
local function args(dir, o)
  local bundle, sha = sim_bundle(o.bundle)
  local a = { "recipes/ubuntu-ofed.lua", "KVER=" .. o.kver, "CACHE_DIR=" .. dir .. "/cache", "OFED_URL=file://" .. bundle,
              "OFED_SHA256=" .. sha, "HOST_ROOT=" .. (o.host or "/nonexistent") }
  for _, x in ipairs(o.extra or {}) do a[#a + 1] = x end
  return a
end

local function drvrun(flags, a)
  local argv = { os.getenv("DRVRUN") }
  for _, f in ipairs(flags) do argv[#argv + 1] = f end
  for _, x in ipairs(a) do argv[#argv + 1] = x end
  return assert(proc.run(argv, { timeout = 600 }))
end

local function build(dir, o)
  local a = args(dir, o)
  a[#a + 1] = "BUILD_ONLY=true"
  a[#a + 1] = "ROOT=" .. dir .. "/root"
  return drvrun({}, a)
end

local function preflight(dir, o)
  local r = drvrun({ "--preflight" }, args(dir, o))
  return r.status, r.stdout, r.stderr
end

describe("drv.kernels", function()
  local host
  before_each(function()
    -- a host root laid out as Debian's: /lib/modules/K/build -> /usr/src/linux-headers-K, whose
    -- Makefile includes the common tree's, whose scripts link into /usr/lib/linux-kbuild-V
    host = fs.tmpdir("host")
    local function mk(path, text) assert(fs.mkdir(host .. path:match("^(.*)/"))); assert(fs.write(host .. path, text)) end
    mk("/usr/lib/modules/6.1.0-9-amd64/modules.dep", "")
    mk("/usr/lib/modules/6.1.0-10-amd64/modules.dep", "")
    assert(fs.mkdir(host .. "/usr/lib/modules/6.1.0-8-amd64")) -- a removed kernel's leftovers: no modules.dep
    assert(fs.symlink("usr/lib", host .. "/lib"))
    mk("/usr/src/linux-headers-6.1.0-10-amd64/Makefile", "include /usr/src/linux-headers-6.1.0-10-common/Makefile\n")
    mk("/usr/src/linux-headers-6.1.0-10-common/Makefile", "")
    mk("/usr/lib/linux-kbuild-6.1/scripts/basic/fixdep", "")
    assert(fs.symlink("../../lib/linux-kbuild-6.1/scripts", host .. "/usr/src/linux-headers-6.1.0-10-common/scripts"))
    assert(fs.symlink("../../lib/linux-kbuild-6.1/scripts", host .. "/usr/src/linux-headers-6.1.0-10-amd64/scripts"))
    assert(fs.symlink("/usr/src/linux-headers-6.1.0-10-amd64", host .. "/usr/lib/modules/6.1.0-10-amd64/build"))
    assert(fs.symlink("/usr/src/linux-headers-6.1.0-10-common", host .. "/usr/lib/modules/6.1.0-10-amd64/source"))
    assert(fs.symlink("/usr/src/linux-headers-6.1.0-9-amd64", host .. "/usr/lib/modules/6.1.0-9-amd64/build"))
  end)
  after_each(function() fs.remove(host, { recursive = true }) end)

  it("lists the kernels a host has installed (with their index), in version order", function()
    assert.equal(host .. "/lib/modules", kernels.host_modules(host))
    assert.same({ "6.1.0-9-amd64", "6.1.0-10-amd64" }, kernels.installed(kernels.host_modules(host)))
    assert.is_nil(kernels.host_modules(host .. "/nothing"))
  end)

  it("follows the host's links under its root as the host would", function()
    local under, at = kernels.resolve(host, "/lib/modules/6.1.0-10-amd64/build/scripts/basic")
    assert.equal("/usr/lib/linux-kbuild-6.1/scripts/basic", at)
    assert.equal(host .. at, under)
  end)

  it("finds a kernel's headers on the host, with the trees they link to, or says what is missing", function()
    local h = assert(kernels.on_host("6.1.0-10-amd64", host))
    assert.equal("/usr/src/linux-headers-6.1.0-10-amd64", h.build)
    assert.equal("/usr/src/linux-headers-6.1.0-10-common", h.source)
    local binds = {}
    for _, b in ipairs(h.binds) do binds[#binds + 1] = b.to .. " <- " .. b.from:sub(#host + 1) end
    assert.same({ "/usr/src/linux-headers-6.1.0-10-amd64 <- /usr/src/linux-headers-6.1.0-10-amd64",
                  "/usr/lib/linux-kbuild-6.1/scripts <- /usr/lib/linux-kbuild-6.1/scripts",
                  "/usr/src/linux-headers-6.1.0-10-common <- /usr/src/linux-headers-6.1.0-10-common" }, binds)
    local _, why = kernels.on_host("6.1.0-9-amd64", host)
    assert.matches("names /usr/src/linux%-headers%-6%.1%.0%-9%-amd64, which is not at", why)
    assert.matches("the host's /usr is not mounted at " .. host:gsub("%p", "%%%0") .. "/usr", why)
    _, why = kernels.on_host("6.1.0-7-amd64", host)
    assert.matches("the host has no headers for it", why, nil, true)
    local where, missing = kernels.headers("6.1.0-7-amd64", host)
    assert.is_nil(where)
    assert.matches("^neither in this container %(no /lib/modules/6%.1%.0%-7%-amd64/build/Makefile%) nor on the host",
                   missing)
  end)
end)

describe("a build for another installed kernel, and what the plan says of it", function()
  local dir
  before_each(function() dir = fs.tmpdir("ahead") end)
  after_each(function() fs.remove(dir, { recursive = true, missing_ok = true }) end)

  it("--preflight: not built yet (4), built (0), for a kernel without headers (5); the cache keeps every installed "
     .. "kernel's builds", function()
    assert(OLDER, "a second kernel is installed here (make deps: UPGRADE_KVER)")
    local status, out = preflight(dir, { kver = OLDER })
    assert.equal(4, status, out)
    assert.matches("^kernel " .. OLDER:gsub("%p", "%%%0") .. ": not built yet %(headers: in this container", out)
    local r = build(dir, { kver = OLDER })
    assert.equal(0, r.status, r.stderr)
    status, out = preflight(dir, { kver = OLDER })
    assert.equal(0, status, out)
    assert.matches(": in the build cache %(.*/cache/ubuntu%-ofed/" .. OLDER:gsub("%p", "%%%0") .. "/builds/%x+%): a "
                   .. "start on it runs no compiler %[cached%]\n$", out)
    -- the newest kernel's build next to it; a build for a kernel that is not installed is pruned
    assert(fs.mkdir(dir .. "/cache/ubuntu-ofed/6.1.0-1-amd64/builds/0123"))
    r = build(dir, { kver = kernel.release })
    assert.equal(0, r.status, r.stderr)
    assert.matches("cache: removed the builds for kernel 6.1.0-1-amd64, which is not installed", r.stderr, nil, true)
    for _, k in ipairs { OLDER, kernel.release } do
      assert.equal(0, (preflight(dir, { kver = k })), k .. " is kept")
    end
    status, out = preflight(dir, { kver = "6.1.0-1-amd64" })
    assert.equal(5, status, out)
    assert.matches("not built, and no kernel headers to build it with: neither in this container", out, nil, true)
    assert.matches("a build would install the package linux%-headers%-6%.1%.0%-1%-amd64", out)
  end)

  it("--preflight: a build that failed (5), with the compiler's first error and its log; being built (4)", function()
    local r = build(dir, { kver = kernel.release, bundle = "sim-ofed-broken-*.tgz" })
    assert.equal(1, r.status, r.stderr)
    local status, out = preflight(dir, { kver = kernel.release, bundle = "sim-ofed-broken-*.tgz" })
    assert.equal(5, status, out)
    assert.matches(": the last build failed: build mlnx%-ofed%-kernel_[%d.-]+ failed %(make exited 2%); first error: "
                   .. "[^\n]*mlx5_ib%.c[^\n]*error[^\n]*; log: " .. dir:gsub("%p", "%%%0") .. "/cache/ubuntu%-ofed/"
                   .. kernel.release:gsub("%p", "%%%0") .. "/failed%.log %(%d+%-", out)
    assert.matches("this is not C", fs.read(dir .. "/cache/ubuntu-ofed/" .. kernel.release .. "/failed.log"), nil, true)
    -- a build in progress holds the kernel's build lock
    local lock = dir .. "/cache/ubuntu-ofed/" .. kernel.release .. "/work.lock"
    local holder = assert(proc.spawn({ os.getenv("DRVRUN"), "-e", ([[
      local l = assert(require("drv.lock").acquire(%q, { owner = "ubuntu-ofed build for test", remove = true }))
      io.write("held\n") io.stdout:flush() require("drv.sys").sleep(60)]]):format(lock) }, { stdout = "capture" }))
    assert.is_true(require("spec.support.guest").wait_until(function() return fs.exists(lock) and
      (fs.read(lock) or ""):find("since") ~= nil end, 30))
    status, out = preflight(dir, { kver = kernel.release, bundle = "sim-ofed-broken-*.tgz" })
    holder:kill("KILL")
    holder:wait()
    assert.equal(4, status, out)
    assert.matches(": being built %(pid %d+ %(ubuntu%-ofed build for test%) since [^)]+%) %[building%]", out)
  end)

  it("builds with the host's headers, bound at the host's paths in its own mount namespace, when the container has "
     .. "none", function()
    assert(OLDER, "a second kernel is installed here (make deps: UPGRADE_KVER)")
    local a = args(dir, { kver = OLDER, host = dir .. "/host", extra = { "BUILD_ONLY=true", "ROOT=" .. dir .. "/root" } })
    table.insert(a, 1, os.getenv("DRVRUN"))
    local quoted = {}
    for _, x in ipairs(a) do quoted[#quoted + 1] = ("%q"):format(x) end
    -- in a namespace of the test's own, the container: OLDER's modules and headers hidden, and the
    -- host: this machine's /lib/modules and /usr under HOST_ROOT
    local r = ns.run(([==[
      local fs, mount, proc, kernels = require "drv.fs", require "drv.mount", require "drv.proc", require "drv.kernels"
      local dir, kver = %q, %q
      assert(fs.mkdir(dir .. "/host/lib/modules")) assert(fs.mkdir(dir .. "/host/usr"))
      assert(mount.bind("/lib/modules", dir .. "/host/lib/modules")) assert(mount.bind("/usr", dir .. "/host/usr"))
      local _, build = kernels.resolve("/", "/lib/modules/" .. kver .. "/build")
      local _, source = kernels.resolve("/", "/lib/modules/" .. kver .. "/source")
      for _, d in ipairs { build, source, fs.realpath("/lib/modules/" .. kver) } do
        assert(mount.mount("hidden", d, "tmpfs"))
      end
      assert(not fs.exists("/lib/modules/" .. kver .. "/build/Makefile"))
      local r = assert(proc.run({ %s }, { timeout = 600 }))
      io.write(r.status, "\n", r.stderr)]==]):format(dir, OLDER, table.concat(quoted, ", ")))
    assert.equal(0, r.status, r.stderr)
    local status, log = r.stdout:match("^(%d+)\n(.*)$")
    assert.equal("0", status, log)
    assert.matches("kernel headers for " .. OLDER:gsub("%p", "%%%0") .. ": the host's, /usr/src/linux%-headers%-"
                   .. OLDER:gsub("%p", "%%%0") .. " %(from " .. dir:gsub("%p", "%%%0") .. "/host%), bound at the host's "
                   .. "paths for this build", log)
    local ko = assert(fs.glob(dir .. "/root/lib/modules/" .. OLDER .. "/updates/ubuntu-ofed/mlx5_core.ko"))[1]
    assert.matches("^" .. OLDER:gsub("%p", "%%%0") .. " ", assert(require("drv.kmod").modinfo(ko)).vermagic)
    assert.same({}, ns.mounts_under(dir), "the build's mounts stayed in its namespace")
  end)
end)

describe("the watcher of a ready run (drv.ahead.watcher)", function()
  local dir
  before_each(function() dir = fs.tmpdir("watch") end)
  after_each(function() fs.remove(dir, { recursive = true, missing_ok = true }) end)

  -- The run's state as drvrun makes it for the OFED recipe on kernel `kver`, the host's root at `host`.
  local function state(kver, host)
    local recipe = require "drv.recipe"
    local r = dofile("recipes/ubuntu-ofed.lua")
    local bundle, sha = sim_bundle()
    local kv = { KVER = kver, CACHE_DIR = dir .. "/cache", OFED_URL = "file://" .. bundle, OFED_SHA256 = sha,
                 HOST_ROOT = host }
    local opt = assert(require("drv.options").resolve(recipe.option_specs(r), kv))
    local s = require("drv.lifecycle").new(r, opt, recipe.check_field)
    s.recipe_file, s.args = "recipes/ubuntu-ofed.lua", kv
    return s
  end

  it("builds ahead a host's kernel without a build, and one whose last build failed once at each start", function()
    assert(OLDER, "a second kernel is installed here (make deps: UPGRADE_KVER)")
    local host = dir .. "/host"
    assert(fs.mkdir(host .. "/lib/modules"))
    for _, k in ipairs { OLDER, kernel.release } do assert(fs.symlink("/lib/modules/" .. k, host .. "/lib/modules/" .. k)) end
    local ahead = require "drv.ahead"
    local function watch()
      local w = assert(ahead.watcher(state(kernel.release, host)))
      local started = {}
      w.start = function(_, k) started[#started + 1] = k end
      return w, started
    end
    local w, started = watch()
    w:tick()
    assert.same({ OLDER }, started, "the kernel that is not running, without a build")
    local cache = require "drv.cache"
    local s = state(OLDER, host)
    assert(fs.mkdir(dir .. "/cache/ubuntu-ofed/" .. OLDER))
    cache.note_failure(cache.entry(s, OLDER), "build mlnx-ofed-kernel failed (make exited 2)", "")
    assert.equal("failing", ahead.verdict(s, OLDER).state)
    w, started = watch()
    w:tick()
    w:tick()
    assert.same({ OLDER }, started, "tried again once at a start, not at every look")
  end)
end)
