-- recipes/ubuntu-ofed.lua's build of a bundle in the vendor's layout
-- (SOURCES/mlnx-ofed-kernel_*.orig.tar.gz: configure, then make), build-only on
-- this machine for the installed kernel: the simulated bundle for what the
-- build does, the real one (spec/support/vendor.lua) for a SIGTERM in its configure.
local fs = require "drv.fs"
local proc = require "drv.proc"
local sys = require "drv.sys"

local KVER = require("spec.support.kernel").release
local ARCH = sys.uname().machine
local FIXTURES = fs.realpath("build/fixtures")
local vendor = require "spec.support.vendor"

local function sim_bundle()
  local path = assert(fs.glob(FIXTURES .. "/sim-ofed-[0-9]*.tgz"))[1]
  for line in io.lines(FIXTURES .. "/SHA256SUMS") do
    local sha, file = line:match("^(%x+)%s+(%S+)$")
    if file == path:match("[^/]+$") then return path, sha end
  end
  error("no checksum for " .. path)
end

local function argv(dir, bundle, sha, ...)
  local a = { os.getenv("DRVRUN"), "recipes/ubuntu-ofed.lua", "BUILD_ONLY=true", "KVER=" .. KVER,
              "ROOT=" .. dir .. "/root", "CACHE_DIR=" .. dir .. "/cache", "OFED_URL=file://" .. bundle,
              "OFED_SHA256=" .. sha, ... }
  return a
end

local function build(dir, ...)
  local bundle, sha = sim_bundle()
  local r = assert(proc.run(argv(dir, bundle, sha, ...)))
  return r.status, r.stderr
end

-- The processes whose command line mentions `text`.
local function processes_with(text)
  local found = {}
  for _, pid in ipairs(fs.dir("/proc") or {}) do
    local cmd = pid:match("^%d+$") and fs.read("/proc/" .. pid .. "/cmdline")
    if cmd and cmd:find(text, 1, true) and tonumber(pid) ~= sys.getpid() then
      found[#found + 1] = pid .. " " .. cmd:gsub("%z", " ")
    end
  end
  return found
end

describe("ubuntu-ofed's build of a bundle in the vendor's layout (BUILD_ONLY)", function()
  local dir
  before_each(function() dir = fs.tmpdir("ofedbuild") end)
  after_each(function() fs.remove(dir, { recursive = true, missing_ok = true }) end)

  it("configures the kernel tree for KVER with both header trees, builds it with its make, and installs it as "
     .. "MLNX_OFED does", function()
    local status, log = build(dir)
    assert.equal(0, status, log)
    local dirs = { build = fs.realpath("/lib/modules/" .. KVER .. "/build"),
                   source = fs.realpath("/lib/modules/" .. KVER .. "/source") }
    assert.matches("configure mlnx-ofed-kernel_5.9-0.5.6.0: ./configure --kernel-version=" .. KVER
                   .. " --kernel-sources=" .. dirs.build .. " --with-linux=" .. dirs.source .. " --with-linux-obj="
                   .. dirs.build .. " --modules-dir=/lib/modules/" .. KVER .. " --without-debug-info --with-core-mod",
                   log, nil, true)
    assert.matches("build mlnx-ofed-kernel_5.9-0.5.6.0: 13 modules in", log, nil, true)
    local updates = ("%s/root/lib/modules/%s/updates/ubuntu-ofed"):format(dir, KVER)
    local installed = assert(fs.dir(updates))
    table.sort(installed)
    assert.same({ "ib_cm.ko", "ib_core.ko", "ib_ipoib.ko", "ib_umad.ko", "ib_uverbs.ko", "irdma.ko", "iw_cm.ko",
                  "mlx5_core.ko", "mlx5_ib.ko", "mlx_compat.ko", "mlxdevm.ko", "rdma_cm.ko", "rdma_ucm.ko" },
                installed, "the stack and the dummy irdma; the configure's test module is not among them")
    for _, file in ipairs(installed) do
      local mi = assert(require("drv.kmod").modinfo(updates .. "/" .. file))
      assert.is_string(mi.srcversion, file .. " has a srcversion (CONFIG_MODULE_SRCVERSION_ALL)")
    end
    local ofa = ("%s/root/usr/src/ofa_kernel/%s/%s"):format(dir, ARCH, KVER)
    for _, f in ipairs { "include/rdma/sim_verbs.h", "Module.symvers", "compat/config.h", "configure.mk.kernel",
                         "compat_version" } do
      assert.is_true(fs.exists(ofa .. "/" .. f), f)
    end
    assert.matches("KVERSION=" .. KVER, fs.read(ofa .. "/configure.mk.kernel"), nil, true)
    assert.equal(ARCH .. "/" .. KVER, fs.readlink(dir .. "/root/usr/src/ofa_kernel/default"))
    local kept = assert(fs.read(assert(fs.glob(dir .. "/cache/ubuntu-ofed/" .. KVER .. "/builds/*/build.log"))[1]))
    assert.matches("Created configure.mk.kernel", kept, nil, true, "the cache keeps the configure's log")
    assert.matches("mlx5_ib", kept, nil, true, "and make's")
  end)

  it("builds the modules without debug info, as the vendor's packages install them, unless OFED_DEBUG_INFO=true",
     function()
    local function debug_sections(root)
      local ko = ("%s/lib/modules/%s/updates/ubuntu-ofed/mlx5_core.ko"):format(root, KVER)
      local r = assert(proc.run({ "readelf", "-S", "-W", ko }))
      assert.equal(0, r.status, r.stderr)
      return select(2, r.stdout:gsub("%.debug_info", ""))
    end
    local status, log = build(dir)
    assert.equal(0, status, log)
    assert.matches(" --without-debug-info", log, nil, true)
    assert.equal(0, debug_sections(dir .. "/root"))
    assert(fs.remove(dir .. "/root", { recursive = true }))
    status, log = build(dir, "OFED_DEBUG_INFO=true")
    assert.equal(0, status, log)
    assert.is_nil(log:find("build: cache hit", 1, true), "another build: OFED_DEBUG_INFO keys the cache")
    assert.matches(" --with-debug-info", log, nil, true)
    assert.is_true(debug_sections(dir .. "/root") > 0, "mlx5_core.ko has a .debug_info section")
  end)

  it("fails on a configure error with the configure's words, and builds nothing", function()
    local status, log = build(dir, "OFED_CONFIGURE_FLAGS=--with-nvmf_host-mod --with-bogus")
    assert.equal(1, status, log)
    assert.matches("configure mlnx%-ofed%-kernel_5%.9%-0%.5%.6%.0 failed %(configure exited 1%); last lines of [^\n]+"
                   .. "%.drvrun%-build%.log:\n", log)
    assert.matches("-E- Unsupported option: --with-bogus", log, nil, true)
    assert.is_nil(log:find("make -j", 1, true), "no make after a failed configure")
  end)

  it("fails on a bundle that does not build, with the compiler's words, and installs nothing", function()
    local broken = assert(fs.glob(FIXTURES .. "/sim-ofed-broken-*.tgz"))[1]
    local r = assert(proc.run(argv(dir, broken, assert(fs.sha256(broken)))))
    assert.equal(1, r.status, r.stderr)
    assert.matches("build mlnx%-ofed%-kernel_5%.9%-0%.5%.6%.0 failed %(make exited 2%); last lines of [^\n]+:\n", r.stderr)
    assert.matches("mlx5_ib%.c:%d+:%d+: error:", r.stderr)
    assert.is_false(fs.exists(dir .. "/root/lib/modules"), "nothing installed")
  end)

  it("rebuilds through ccache: after the cache lost the build, the compiles are cache hits", function()
    assert.equal(0, (build(dir)))
    local ccache = dir .. "/cache/ubuntu-ofed/ccache"
    local function hits()
      local r = assert(proc.run({ "ccache", "--print-stats" }, { env = { CCACHE_DIR = ccache } }))
      return tonumber(r.stdout:match("direct_cache_hit%s+(%d+)")) + tonumber(r.stdout:match("preprocessed_cache_hit%s+(%d+)"))
    end
    assert.equal(0, hits())
    assert(fs.remove(("%s/cache/ubuntu-ofed/%s/builds"):format(dir, KVER), { recursive = true }))
    local status, log = build(dir)
    assert.equal(0, status, log)
    assert.matches("make -j", log, nil, true)
    assert.is_true(hits() >= 13, "a hit for each module's object at least: " .. hits())
  end)

  it("says a download of the bundle stalls while it does, and fails at FETCH_TIMEOUT", function()
    local bundle, sha = sim_bundle()
    local www = dir .. "/www"
    assert(fs.mkdir(www))
    assert(fs.copy(bundle, www .. "/bundle.tgz"))
    local server = require("spec.support.httpd").start(www)
    finally(function() server:stop() end)
    local t0 = sys.monotonic()
    local a = argv(dir, bundle, sha, "FETCH_STALL_TIMEOUT=3", "FETCH_TIMEOUT=12")
    a[7] = "OFED_URL=" .. server:url("stall/bundle.tgz?send=1000&hold=60")
    local r = assert(proc.run(a))
    local took = sys.monotonic() - t0
    assert.equal(1, r.status, r.stderr)
    assert.matches("stalled: no data for %d+ s", r.stderr)
    assert.matches("fetch bundle: [^\n]*deadline of 12 s reached", r.stderr)
    assert.is_true(took < 40, ("bounded by FETCH_TIMEOUT (took %.0f s)"):format(took))
  end)

  it("stops a configure of the real bundle within 10 s of SIGTERM, leaving no compiler running", function()
    local log = dir .. "/log"
    local a = argv(dir, vendor.need(vendor.OFED_BUNDLE), vendor.OFED_SHA256)
    local p = assert(proc.spawn({ "sh", "-c", 'exec "$@" 2> "$0"', log, table.unpack(a) }))
    local work = ("%s/cache/ubuntu-ofed/%s/work"):format(dir, KVER)
    local configuring = false
    for _ = 1, 1200 do -- the configure starts within seconds; its test builds, within a minute or so
      configuring = #processes_with(work .. "/mlnx-ofed-kernel_25.10/compat") > 0
      if configuring or not p:running() then break end
      sys.sleep(0.1)
    end
    assert.is_true(configuring, "the configure's test builds are running: " .. (fs.read(log) or ""))
    local t0 = sys.monotonic()
    assert.is_true(sys.kill(p:pid(), "TERM"))
    local r = assert(p:wait(60))
    local took = sys.monotonic() - t0
    print(("    SIGTERM during the real configure: drvrun ended %.1f s later"):format(took))
    assert.equal(0, r.status, fs.read(log))
    assert.is_true(took < 10, ("ended within 10 s of the signal (took %.1f s)"):format(took))
    assert.matches("configure mlnx%-ofed%-kernel_25%.10: interrupted after", fs.read(log))
    assert.same({}, processes_with(work), "nothing of the build is left running")
  end)
end)
