--- bench/real.lua: the real MLNX_OFED 25.10 stack's build on this machine, for
-- bench/main.lua (BENCH_ONLY=real runs it alone).
--
-- Cold: the recipe in build-only mode with an empty build cache (ccache on and
-- empty) against the vendor's own way in a fresh extraction of the same
-- kernel tree: `./configure --default --build-dummy-mods -jN` given both
-- halves of Debian's headers, then `make -jN` (what DKMS and install.pl run),
-- in turns, BENCH_REAL_REPS times each (3: each takes 5-7 min on 2 CPUs, and
-- the same build here took 138 s and 166 s to configure an hour apart, so one
-- of each is not a comparison).
-- Then the last cold build's modules signed, with a first key and a new one
-- (bench/sign.lua). Then the recipe once with CCACHE=false (what ccache costs a cold build), two
-- rebuilds with the cold run's cache (ccache) kept: a new release (the bundle
-- repacked with one driver source changed: another sha256, a cache miss) and
-- a pruned cache (the build entry removed, same source); and a cache hit with
-- every compiler, make and configure trapped.
local fs = require "drv.fs"
local sys = require "drv.sys"
local proc = require "drv.proc"
local compile = require "drv.compile"
local util = require "bench.util"

local M = {}

local REPS = tonumber(os.getenv("BENCH_REAL_REPS") or "") or 3
local CHANGED = "drivers/infiniband/hw/mlx5/main.c" -- the driver source a "new release" changes

local say = util.say

-- Untimed, before each build: removing a built tree frees its blocks
-- at the next journal commit, with a discard on this disk (the vendor's tree,
-- with debug info, is the larger), and a build's written-out files are still
-- being written back after it ends; the next contender must not pay for either.
local function settle(dir)
  util.must({ "sync", "-f", dir })
end

-- What the recipe's log says its configure and its make took.
local function steps(out)
  return tonumber(out:match("configure [^:\n]+: done in ([%d.]+) s")),
         tonumber(out:match("build [^:\n]+: %d+ modules in ([%d.]+) s"))
end

local function run_logged(argv, cwd, logfile)
  local t0 = sys.monotonic()
  local res, err = proc.run(argv, { cwd = cwd, log = logfile, stdout = "null", stderr = "stdout" })
  if not res then error(table.concat(argv, " ") .. ": " .. err) end
  if res.status ~= 0 then
    error(("%s exited %s; log: %s"):format(argv[1], tostring(res.status or res.signal), logfile))
  end
  return sys.monotonic() - t0
end

-- The vendor's build of the bundle's kernel tree, as DKMS's PRE_BUILD and
-- install.pl run it, given both header trees; seconds in all, of configure, of make.
local function vendor_build(ctx, dir)
  local t0 = sys.monotonic()
  local src = util.kernel_tree(ctx.bundle, dir .. "/tree")
  local dirs = compile.kernel_dirs(ctx.kver)
  local jobs = "-j" .. sys.nproc()
  local conf = run_logged({ "./configure", "--kernel-version=" .. ctx.kver, "--kernel-sources=" .. dirs.build,
                            "--with-linux=" .. dirs.source, "--with-linux-obj=" .. dirs.build,
                            "--modules-dir=/lib/modules/" .. ctx.kver, "--default", "--build-dummy-mods", jobs },
                          src, dir .. "/configure.log")
  local make = run_logged({ "make", jobs }, src, dir .. "/make.log")
  local n = #compile.built_files(src) -- modules.order: the configure's test modules are not in it
  return sys.monotonic() - t0, conf, make, n
end

local function recipe_cold(ctx, dir, extra)
  fs.remove(dir, { recursive = true, missing_ok = true })
  settle(ctx.out)
  local dt, out = ctx.recipe_build(dir .. "/cache", dir .. "/root", ctx.bundle, ctx.sha, extra)
  if out:match("cache hit") then error("the cold build hit a cache") end
  local conf, make = steps(out)
  return dt, conf, make, #compile.find_modules(("%s/root/lib/modules/%s/updates/ubuntu-ofed"):format(dir, ctx.kver))
end

-- The srcversion of `name` in the build cache's latest build.
local function built_srcversion(cache_dir, kver, name)
  for _, m in ipairs(util.cached_build(cache_dir, "ubuntu-ofed", kver).modules) do
    if m.name == name then return m.srcversion end
  end
end

-- The bundle again with one driver source changed, as a new release would
-- bring: same layout and tree name, another sha256.
local function repack_changed(ctx, dir)
  local work = dir .. "/repack"
  local top = ctx.bundle_top
  local tree = work .. "/tree/" .. ctx.tree_top
  assert(fs.mkdir(work .. "/tree"))
  util.kernel_tree(ctx.bundle, tree)
  local file = tree .. "/" .. CHANGED
  assert(fs.write(file, assert(fs.read(file)) .. '\nMODULE_INFO(bench_release, "changed");\n'))
  assert(fs.mkdir(work .. "/" .. top .. "/SOURCES"))
  util.must({ "tar", "-C", work .. "/tree", "-czf", ("%s/%s/SOURCES/%s"):format(work, top, ctx.tarball_name),
              "--owner=0", "--group=0", ctx.tree_top })
  local out = dir .. "/MLNX_OFED_SRC-debian-changed.tgz"
  util.must({ "tar", "-C", work, "-czf", out, "--owner=0", "--group=0", top })
  fs.remove(work, { recursive = true })
  return out, assert(fs.sha256(out))
end

local function rebuild(ctx, cache_dir, bundle_path, sha)
  settle(ctx.out)
  local dt, out = ctx.recipe_build(cache_dir, cache_dir .. "/../root", bundle_path, sha)
  if out:match("cache hit") then error("the rebuild hit the build cache") end
  local conf, make = steps(out)
  return dt, conf, make
end

local function names(ctx)
  local entries = assert(require("drv.archive").list(ctx.bundle))
  for _, e in ipairs(entries) do
    local top, tarball = e.path:match("^([^/]+)/SOURCES/(mlnx%-ofed%-kernel_[^/]+%.orig%.tar%.gz)$")
    if top then
      ctx.bundle_top, ctx.tarball_name = top, tarball
      ctx.tree_top = "mlnx-ofed-kernel-" .. tarball:match("^mlnx%-ofed%-kernel_(.-)%.orig%.tar%.gz$")
      return
    end
  end
  error(ctx.bundle .. " has no SOURCES/mlnx-ofed-kernel_*.orig.tar.gz")
end

--- Measure; rows are appended to `ctx.rows`. `ctx`: `{ rows, out, kver, bundle, sha, recipe_build, cache_hit }`.
function M.run(ctx)
  local rows, dir = ctx.rows, ctx.out .. "/real"
  names(ctx)
  fs.remove(dir, { recursive = true, missing_ok = true })
  assert(fs.mkdir(dir))
  local t, configures = { drvrun = {}, vendor = {} }, { drvrun = {}, vendor = {} }
  local each = REPS == 1 and "1 run" or (REPS .. " runs, median")
  for rep = 1, REPS do
    for j = 0, 1 do
      local which = (rep + j) % 2 == 1 and "vendor" or "drvrun"
      say("real build %d/%d %s: cold (load %s)", rep, REPS, which, util.load())
      local dt, conf, make, n
      if which == "drvrun" then
        dt, conf, make, n = recipe_cold(ctx, dir .. "/drvrun")
      else
        fs.remove(dir .. "/vendor", { recursive = true, missing_ok = true })
        assert(fs.mkdir(dir .. "/vendor"))
        settle(dir)
        dt, conf, make, n = vendor_build(ctx, dir .. "/vendor")
        fs.remove(dir .. "/vendor", { recursive = true })
      end
      t[which][#t[which] + 1] = dt
      configures[which][#configures[which] + 1] = conf
      say("real build %d/%d %-6s %.0f s (configure %.0f s, make %.0f s; %d modules, %d CPUs)", rep, REPS, which, dt,
        conf or 0, make or 0, n, sys.nproc())
    end
  end
  local d, v = util.median(t.drvrun), util.median(t.vendor)
  rows[#rows + 1] = util.info(("real build cold: drvrun (recipe BUILD_ONLY, empty cache and ccache; %s)"):format(each),
    d, "s")
  rows[#rows + 1] = util.info(("real build cold: drvrun's configure (%s)"):format(each),
    util.median(configures.drvrun), "s")
  rows[#rows + 1] = util.info(("real build cold: vendor (configure --default --build-dummy-mods, make; %s)"):format(each),
    v, "s")
  rows[#rows + 1] = util.info(("real build cold: vendor's configure (%s)"):format(each), util.median(configures.vendor),
    "s")
  rows[#rows + 1] = util.target("real build cold: drvrun / vendor", d, "s", v, d / v, "<=", 1.0)
  say("real stack signed (load %s)", util.load())
  require("bench.sign").run(rows, dir .. "/drvrun/cache", ctx.kver, d, dir)

  say("real build: drvrun cold with CCACHE=false (load %s)", util.load())
  local plain = recipe_cold(ctx, dir .. "/plain", { "CCACHE=false" })
  fs.remove(dir .. "/plain", { recursive = true })
  rows[#rows + 1] = util.compare("real build cold: drvrun CCACHE=false (ratio: ccache on / off)", plain, "s",
    t.drvrun[#t.drvrun], t.drvrun[#t.drvrun] / plain)
  say("real build: CCACHE=false %.0f s, the last cold run with ccache %.0f s", plain, t.drvrun[#t.drvrun])

  -- Rebuilds with the last cold run's cache (and ccache) kept.
  local cache = dir .. "/drvrun/cache"
  local entry_dir = ("%s/ubuntu-ofed/%s/builds"):format(cache, ctx.kver)
  local srcversion = built_srcversion(cache, ctx.kver, "mlx5_ib")
  say("real rebuild: a new release, one driver source changed (load %s)", util.load())
  local changed, changed_sha = repack_changed(ctx, dir)
  local rel, rel_conf, rel_make = rebuild(ctx, cache, changed, changed_sha)
  local new_srcversion = built_srcversion(cache, ctx.kver, "mlx5_ib")
  if new_srcversion == srcversion then error("the rebuild of the changed release built the same mlx5_ib") end
  say("real rebuild: new release %.0f s (configure %.0f s, make %.0f s)", rel, rel_conf or 0, rel_make or 0)

  say("real rebuild: the build entries removed, same source (load %s)", util.load())
  assert(fs.remove(entry_dir, { recursive = true }))
  local pruned, pr_conf, pr_make = rebuild(ctx, cache, ctx.bundle, ctx.sha)
  if built_srcversion(cache, ctx.kver, "mlx5_ib") ~= srcversion then
    error("the rebuild of the pruned cache did not build the cold run's mlx5_ib")
  end
  say("real rebuild: pruned cache %.0f s (configure %.0f s, make %.0f s)", pruned, pr_conf or 0, pr_make or 0)
  rows[#rows + 1] = util.info("real rebuild: new release (one driver source changed; ccache kept)", rel, "s")
  rows[#rows + 1] = util.target("real rebuild after a source change: cold / rebuild (speed-up)", rel, "s", d, d / rel,
    ">=", 2)
  rows[#rows + 1] = util.info("real rebuild: pruned cache (build entry removed, same source)", pruned, "s")
  rows[#rows + 1] = util.target("real rebuild of a pruned cache: cold / rebuild (speed-up)", pruned, "s", d,
    d / pruned, ">=", 2)
  ctx.cache_hit(" (real stack)", cache, ctx.bundle, ctx.sha)
  fs.remove(dir, { recursive = true })
end

return M
