-- The shipped recipes on this machine, up to where they would need the running
-- kernel (which only the guest has): options, plans and refusals before any change.
local proc = require "drv.proc"
local fs = require "drv.fs"

-- Run a recipe with its state, lock, cache and ready files in a fresh directory.
local function run(recipe, args)
  local dir = fs.tmpdir("recipe")
  local argv = { os.getenv("DRVRUN"), recipe, "STATE_DIR=" .. dir, "LOCK_FILE=" .. dir .. "/lock",
                 "CACHE_DIR=" .. dir .. "/cache", "READY_FILES=" .. dir .. "/ready", "AWAIT_TIMEOUT=1" }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local r = assert(proc.run(argv))
  r.dir = dir
  return r
end

describe("recipes", function()
  it("ubuntu-ofed refuses to run without the bundle's sha256, naming the option and the URL", function()
    local r = run("recipes/ubuntu-ofed.lua", { "OFED_URL=https://mirror.example/ofed.tgz", "BLACKLIST_FILE=" })
    assert.equal(1, r.status, r.stderr)
    assert.matches("OFED_SHA256 is not set: give the sha256 of https://mirror.example/ofed.tgz (sha256sum FILE)",
                   r.stderr, nil, true)
    assert.is_nil(r.stderr:find("phase build", 1, true), "nothing fetched")
    assert.same({}, fs.dir(r.dir), "no ready file, no journal, no cache, no lock")
  end)

  it("ubuntu-ofed refuses without the host's udev directories, naming them and the option", function()
    local sha = "OFED_SHA256=" .. ("a"):rep(64)
    local r = run("recipes/ubuntu-ofed.lua", { sha, "BLACKLIST_FILE=", "UDEV_RULES_DIR=/nonexistent/rules.d" })
    assert.equal(1, r.status, r.stderr)
    assert.matches("udev rules directory /nonexistent/rules.d does not exist: mount the host's /lib/udev/rules.d "
                   .. "there, or set UDEV_RULES_DIR= (empty) to install no udev rules", r.stderr, nil, true)
    assert.same({}, fs.dir(r.dir), "nothing changed")
    local rules = fs.tmpdir("rules")
    r = run("recipes/ubuntu-ofed.lua", { sha, "BLACKLIST_FILE=", "UDEV_RULES_DIR=" .. rules,
                                         "UDEV_HELPER_DIR=/nonexistent/etc/infiniband" })
    assert.equal(1, r.status, r.stderr)
    assert.matches("the udev rules run their helper from UDEV_HELPER_DIR, but the directory above "
                   .. "/nonexistent/etc/infiniband does not exist: mount the host's /etc/infiniband (or /etc) there",
                   r.stderr, nil, true)
    assert.same({}, fs.dir(rules), "no rule installed")
    fs.remove(rules, { recursive = true })
  end)

  it("peermem refuses to download its source without a sha256, before waiting for anything", function()
    local r = run("recipes/peermem.lua", { "D_NV_PEER_MEM_BRANCH=1.0-9" })
    assert.equal(1, r.status, r.stderr)
    assert.matches("PEERMEM_SHA256 is required to download https://github.com/Mellanox/nv_peer_memory/archive/"
                   .. "1.0-9.tar.gz: set it to the archive's sha256", r.stderr, nil, true)
    assert.is_nil(r.stderr:find("phase await", 1, true))
  end)

  it("installs the distribution's package of the kernel's modules when they are missing, else says to mount them",
     function()
    -- this machine runs a kernel whose modules are not installed, as a container without /lib/modules would;
    -- it is Debian, whose package of them is linux-image-RELEASE (Ubuntu's: linux-modules-RELEASE)
    assert.equal("debian", require("drv.distro").os_release().ID)
    local release = require("drv.sys").uname().release
    assert.is_false(fs.exists("/lib/modules/" .. release))
    local r = run("recipes/peermem.lua", { "PEERMEM_SOURCE=/nonexistent/src" })
    assert.equal(1, r.status, r.stderr)
    assert.matches(("installing linux-image-%s"):format(release), r.stderr, nil, true)
    assert.matches(("cannot read the running kernel's modules: /lib/modules/%s: No such file or directory (no modules "
                    .. "for this kernel; install them or pass dirname), and installing linux-image-%s failed: "
                    .. "Unable to locate package linux-image-%s. Mount the host's /lib/modules into the container")
                   :format(release, release, release), r.stderr, nil, true)
  end)

  it("plans peermem in either mode without a checksum or a kernel", function()
    for mode, fetch in pairs { nv_peer_mem = "fetch: peermem https://",
                               nvidia_peermem = "load: nvidia_peermem (after the build" } do
      local r = assert(proc.run({ os.getenv("DRVRUN"), "--plan", "recipes/peermem.lua", "PEERMEM_MODULE=" .. mode }))
      assert.equal(0, r.status, r.stderr)
      assert.matches("plan: peermem 1.1", r.stdout, nil, true)
      assert.matches(fetch, r.stdout, nil, true)
    end
  end)

  it("plans ubuntu-ofed without a checksum, saying what it cannot know here", function()
    local r = assert(proc.run({ os.getenv("DRVRUN"), "--plan", "recipes/ubuntu-ofed.lua" }))
    assert.equal(0, r.status, r.stderr)
    assert.matches("\nload: ib_cm ib_core ib_ipoib ib_umad ib_uverbs iw_cm mlx5_core mlx5_ib mlx_compat mlxdevm rdma_cm "
                   .. "rdma_ucm (after the build, in the order of their dependencies)\n", r.stdout, nil, true)
    assert.matches("(no sha256 set: a run refuses it)", r.stdout, nil, true)
    assert.matches("\nunload: unknown %(cannot read the loaded modules: /lib/modules/[^:]+: No such file", r.stdout)
    assert.is_nil(r.stdout:find("nothing of the stack is loaded", 1, true), "no claim it cannot make")
  end)

  it("fails a phase on r:must with what failed and why, no source position", function()
    local dir = fs.tmpdir("must")
    assert(fs.write(dir .. "/must.lua", [[
local fs = require "drv.fs"
return { api = 3, name = "must", version = "1", stack = {},
         prepare = function(r) r:must("prepare scratch", fs.mkdir("/proc/drvrun-nope")) end }]]))
    local r = run(dir .. "/must.lua")
    assert.equal(1, r.status, r.stderr)
    assert.matches("ERROR prepare scratch: /proc/drvrun%-nope: [^\n]+\n", r.stderr)
    assert.is_nil(r.stderr:find("must.lua:", 1, true), "no source position: it is not a bug in the recipe")
  end)

  it("stops waiting for another instance on SIGTERM, exits 0 and says nothing was changed", function()
    local dir = fs.tmpdir("instance")
    assert(fs.write(dir .. "/waiter.lua", 'return { name = "waiter", version = "1", stack = {} }'))
    local first = assert(require("drv.lock").acquire(dir .. "/waiter.lock", { owner = "the first", remove = true }))
    local argv = { os.getenv("DRVRUN"), dir .. "/waiter.lua", "STATE_DIR=" .. dir, "LOCK_FILE=" .. dir .. "/lock",
                   "CACHE_DIR=" .. dir .. "/cache", "READY_FILES=" .. dir .. "/ready", "INSTANCE_WAIT=60" }
    local log = os.tmpname()
    -- the log read while the process runs: its stderr is the file (exec: the signal reaches drvrun)
    local p = assert(proc.spawn({ "sh", "-c", 'exec "$@" 2>"$0"', log, table.unpack(argv) }, { stdout = "null" }))
    local waiting = false
    for _ = 1, 600 do -- 30 s
      waiting = (fs.read(log) or ""):find("waiting up to 60 s", 1, true)
      if waiting then break end
      require("drv.sys").sleep(0.05)
    end
    assert.truthy(waiting, "the second instance waits for the first")
    assert(p:kill("TERM"))
    local r = assert(p:wait(30))
    first:unlock()
    local text = fs.read(log)
    os.remove(log)
    assert.equal(0, r.status, text)
    assert.matches("INFO instance: " .. dir:gsub("%p", "%%%0") .. "/waiter%.lock: interrupted while waiting for pid "
                   .. "%d+ %(the first%) since [^;]+; nothing was changed\n", text)
    assert.same({ "waiter.lua" }, fs.dir(dir), "no journal, no ready file, no lock left")
  end)

  it("lists a recipe's options with their values here (RECIPE --help), changing nothing", function()
    local r = run("recipes/ubuntu-ofed.lua", { "--help" })
    assert.equal(0, r.status, r.stderr)
    assert.matches("usage: drvrun [--plan] recipes/ubuntu-ofed.lua [KEY=VALUE...]", r.stdout, nil, true)
    assert.matches("\n  D_OFED_VERSION=25%.10%-1%.7%.1%.1 +[^\n]+ %[default%]\n", r.stdout)
    assert.matches("\n  CACHE_KEEP=2 +builds kept per kernel", r.stdout)
    assert.matches("\n  KVER= +kernel release", r.stdout)
    assert.matches("\n  CACHE_DIR=" .. r.dir:gsub("%p", "%%%0") .. "/cache%s+[^\n]+ %[argument%]\n", r.stdout)
    assert.matches("\n  BLACKLIST=mlx5_core [^\n]* ib_cm\n +inbox modules blacklisted", r.stdout)
    assert.same({}, fs.dir(r.dir), "nothing written")
    local bad = run("recipes/ubuntu-ofed.lua", { "install" })
    assert.equal(2, bad.status)
    assert.matches("unexpected argument 'install' (options are KEY=VALUE; recipes/ubuntu-ofed.lua --help lists them)",
                   bad.stderr, nil, true)
  end)
end)

describe("a recipe built from a local directory or a fetched tarball (BUILD_ONLY, for the installed kernel)", function()
  local kver = require("spec.support.kernel").release
  local dir, src, input, recipe, builds

  setup(function()
    dir = fs.tmpdir("dirsrc")
    src, input = dir .. "/src", dir .. "/input.symvers"
    assert(fs.mkdir(src))
    assert(fs.write(src .. "/Kbuild", "obj-m := hello.o\n"))
    assert(fs.write(src .. "/hello.c", '#include <linux/module.h>\nMODULE_LICENSE("GPL");\n'))
    assert(fs.write(input, "v1\n"))
    recipe = dir .. "/hello.lua"
    assert(fs.write(recipe, ([[
local fs = require "drv.fs"
return {
  name = "hello", version = "1",
  options = { SRC = { default = "", doc = "source dir" }, INPUT = { default = "", doc = "a build input" },
              URL = { default = "", doc = "source tarball" }, SHA = { default = "", doc = "its sha256" } },
  stack = function() return { "hello" } end,
  sources = function(r)
    return { src = r.opt.URL ~= "" and { url = r.opt.URL, sha256 = r.opt.SHA } or { path = r.opt.SRC } }
  end,
  await = function(r) r:build_input(r.opt.INPUT) end,
  build = function(r) return r:kbuild { src = r:extract(r.sources.src, { strip = 1 }) } end,
  install = function(r)
    r:install_dir(r:path("/usr/src/hello"), function(d) assert(fs.write(d .. "/hello.h", "/* hello */\n")) end)
  end,
}]])))
    builds = ("%s/cache/hello/%s/builds"):format(dir, kver)
  end)

  local function build(...)
    local argv = { os.getenv("DRVRUN"), recipe, "BUILD_ONLY=true", "KVER=" .. kver, "ROOT=" .. dir .. "/root",
                   "CACHE_DIR=" .. dir .. "/cache", "SRC=" .. src, "INPUT=" .. input, ... }
    local r = assert(proc.run(argv))
    assert.equal(0, r.status, r.stderr)
    return r.stderr
  end

  local function sorted(list)
    table.sort(list)
    return list
  end

  local function last_used() return assert(fs.read(builds .. "/recent")):match("^%x+") end

  -- A tarball of the source with `line` added to hello.c, and the URL and sha256 options for it.
  local function tarball(name, line)
    assert(fs.write(src .. "/hello.c", '#include <linux/module.h>\nMODULE_LICENSE("GPL");\n' .. line .. "\n"))
    local path = ("%s/%s.tar.gz"):format(dir, name)
    assert.equal(0, assert(proc.run { "tar", "-czf", path, "-C", dir, "src" }).status)
    return "URL=file://" .. path, "SHA=" .. assert(fs.sha256(path))
  end

  it("builds a copy (the directory stays clean), then reuses the build until the sources or inputs change", function()
    local log = build()
    assert.matches("build src for " .. kver, log, nil, true)
    assert.matches("/updates/hello changed; depmod " .. kver, log, nil, true)
    assert.matches("install: depmod done in", log, nil, true)
    assert.is_true(fs.exists(("%s/root/lib/modules/%s/updates/hello/hello.ko"):format(dir, kver)))
    assert.same({ "Kbuild", "hello.c" }, (function() local l = fs.dir(src) table.sort(l) return l end)())
    local compiled = builds .. "/" .. last_used() .. "/manifest.luac"
    assert.is_true(fs.exists(compiled), "the manifest is stored compiled too")
    assert(fs.remove(compiled)) -- as an older drvrun left it
    assert.matches("build: cache hit", build(), nil, true)
    assert.is_true(fs.exists(compiled), "compiled at its first load")
    assert(fs.write(src .. "/hello.c", '#include <linux/module.h>\nMODULE_LICENSE("GPL");\nMODULE_VERSION("2");\n'))
    assert.is_nil(build():find("cache hit", 1, true), "a changed source file is rebuilt")
    assert.matches("build: cache hit", build(), nil, true)
    assert(fs.write(input, "v2\n"))
    assert.is_nil(build():find("cache hit", 1, true), "a changed build input is rebuilt")
  end)

  it("installs a directory once per build: a restart copies nothing, a new build or a cut-short install refills it", function()
    local headers = dir .. "/root/usr/src/hello"
    local skipped = "install: " .. headers .. " already installed"
    assert(fs.write(input, "headers-1\n"))
    assert.is_nil(build():find(skipped, 1, true), "a new build installs")
    assert.equal(last_used() .. "\n", fs.read(headers .. "/.drvrun-build"), "the stamp names the build")
    assert(fs.write(headers .. "/stray", "not from the build\n"))
    assert.matches(skipped, build(), nil, true)
    assert.is_true(fs.exists(headers .. "/stray"), "nothing was copied again")
    assert(fs.write(input, "headers-2\n"))
    assert.is_nil(build():find(skipped, 1, true), "another build installs again")
    assert.is_false(fs.exists(headers .. "/stray"), "into an emptied directory")
    assert(fs.write(headers .. "/stray", "left by an install cut short\n"))
    assert(fs.remove(headers .. "/.drvrun-build"))
    assert.is_nil(build():find(skipped, 1, true), "no stamp: the install is redone")
    assert.same({ ".drvrun-build", "hello.h" }, sorted(fs.dir(headers)))
  end)

  it("keeps the CACHE_KEEP most recently used builds with their logs, and no build tree", function()
    local id = {}
    for _, v in ipairs { "a", "b", "c" } do
      assert(fs.write(input, v .. "\n"))
      build()
      id[v] = last_used()
    end
    assert.same(sorted { id.b, id.c, "recent" }, sorted(fs.dir(builds)), "the build for a is gone")
    assert.is_false(fs.exists(("%s/cache/hello/%s/work"):format(dir, kver)), "the build tree is gone")
    assert.matches("hello.o", assert(fs.read(builds .. "/" .. id.c .. "/build.log")), nil, true)
    assert(fs.write(input, "b\n"))
    assert.matches("build: cache hit", build(), nil, true)
    assert.equal(id.b, last_used(), "a cache hit is noted")
    assert(fs.write(input, "d\n"))
    assert.matches("cache: removed an older build " .. id.c, build(), nil, true)
    assert.same(sorted { id.b, last_used(), "recent" }, sorted(fs.dir(builds)), "b, used after c, is kept")
    assert(fs.write(input, "e\n"))
    build("CACHE_KEEP=1")
    assert.same(sorted { last_used(), "recent" }, sorted(fs.dir(builds)))
  end)

  it("keeps the fetched sources of the kept builds only", function()
    local first = { tarball("one", "/* one */") }
    build(table.unpack(first))
    build(tarball("two", "/* two */"))
    assert.same({ "one.tar.gz", "two.tar.gz" }, sorted(fs.dir(dir .. "/cache/hello/sources")))
    local log = build(tarball("three", "/* three */"))
    assert.matches("cache: removed source one.tar.gz, which no kept build uses", log, nil, true)
    assert.same({ "three.tar.gz", "two.tar.gz" }, sorted(fs.dir(dir .. "/cache/hello/sources")))
    assert.is_nil(build(table.unpack(first)):find("cache hit", 1, true), "its build is gone too")
  end)

  it("refuses a CACHE_KEEP below 1, naming the option", function()
    local r = assert(proc.run { os.getenv("DRVRUN"), recipe, "BUILD_ONLY=true", "CACHE_KEEP=0" })
    assert.equal(2, r.status, "a usage error")
    assert.matches("option CACHE_KEEP (from argument): 0 is less than 1", r.stderr, nil, true)
  end)
end)
