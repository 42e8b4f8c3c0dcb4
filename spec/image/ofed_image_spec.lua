-- The images as built for real by tools/build-test-images (make check-images),
-- extracted into $DRVRUN_IMAGES: each image's root file system, under a
-- writable layer as a container runtime mounts an image, run as
-- deploy/ofed-driver.yaml runs its container (its hostPath volumes, env and
-- propagation, from the manifest) with the image's own ENTRYPOINT, Env and
-- HEALTHCHECK. The guest is the node. The image's compilers, make and apt-get
-- are replaced by traps that note any run in /.compiler-runs: a node with the
-- stack in its build cache, or an image precompiled for its kernel, must reach
-- ready without them.
local fs = require "drv.fs"
local kmod = require "drv.kmod"
local proc = require "drv.proc"
local sys = require "drv.sys"
local probe = require "drv.ready"
local guest = require "spec.support.guest"
local ofed = require "spec.support.ofed"
local container = require "spec.support.container"

local IMAGES = assert(os.getenv("DRVRUN_IMAGES"), "DRVRUN_IMAGES is not set (make check-images sets it)")
local TRAPS = "/.compiler-runs"
local KVER = sys.uname().release
local PRECOMPILED = "/var/lib/drvrun/precompiled"
-- The build cache that holds a build of the bundle in the image (make check-images: the real one's)
local HOST_CACHE = os.getenv("DRVRUN_IMAGE_CACHE") or "build/cache"

-- An extracted image: its root and its configuration (tools/build-images --export).
local function image(name)
  local dir = IMAGES .. "/" .. name
  local img = { root = dir .. "/root", entrypoint = {}, env = {}, healthcheck = {} }
  for line in io.lines(dir .. "/config") do
    local key, value = assert(line:match("^(%S+) (.*)$"))
    table.insert(img[key], value)
  end
  assert(img.healthcheck[1] == "CMD", name .. ": HEALTHCHECK is not an exec CMD")
  table.remove(img.healthcheck, 1)
  return img
end

-- The image's root under a layer in memory, its compilers, make and apt-get trapped.
local function prepare(img)
  return ([[
L=$(mktemp -d)
mount -t tmpfs tmpfs "$L"
mkdir "$L/upper" "$L/work"
mount -t overlay overlay -o "lowerdir=%s,upperdir=$L/upper,workdir=$L/work" "$R"
for f in "$R"/usr/bin/cc "$R"/usr/bin/gcc* "$R"/usr/bin/*-gcc* "$R"/usr/bin/make "$R"/usr/bin/as \
         "$R"/usr/bin/*-as "$R"/usr/bin/ld "$R"/usr/bin/ld.* "$R"/usr/bin/*-ld "$R"/usr/bin/*-ld.* \
         "$R"/usr/bin/apt-get; do
	[ -e "$f" ] || [ -L "$f" ] || continue
	rm -f "$f"
	printf '#!/bin/sh\necho "$0 $*" >> %s\nexit 1\n' > "$f"
	chmod 0755 "$f"
done
]]):format(img.root, TRAPS)
end

-- The image's Env, then the container's (it wins).
local function environment(img, pod)
  local env, at = {}, {}
  for _, list in ipairs { img.env, pod.env } do
    for _, kv in ipairs(list) do
      local k = kv:match("^[^=]+")
      if at[k] then env[at[k]] = kv else env[#env + 1], at[k] = kv, #env + 1 end
    end
  end
  return env
end

-- The image's container on the node, with `cache` as the host's /var/cache/drvrun.
local function start(img, cache)
  local pod = container.pod(IMAGES .. "/ofed-driver.pod.lua", { ["/var/cache/drvrun"] = cache })
  local c = { img = img, env = environment(img, pod) }
  c.p, c.log = container.start { root = assert(fs.tmpdir("image-root")), prepare = prepare(img), volumes = pod.volumes,
                                 env = c.env, argv = img.entrypoint }
  ofed.running[#ofed.running + 1] = c.p
  return c
end

-- The modules of a build cache entry: { name = srcversion }.
local function entry_modules(dir)
  local manifest = assert(load(assert(fs.read(dir .. "/manifest.lua")), "=manifest", "t", {}))()
  local mods = {}
  for _, m in ipairs(manifest) do mods[m.name] = m.srcversion end
  return mods
end

-- Ready and live with the modules of `built` (a cache entry's), no trap run;
-- returns the image's HEALTHCHECK run in the container and the log.
local function assert_ready(c, built)
  assert.is_true(ofed.wait_for(ofed.READY[2], c.p, 900), fs.read(c.log))
  local text = fs.read(c.log)
  assert.matches("drvrun entrypoint: /lib/modules/" .. KVER:gsub("%p", "%%%0") .. ": the host's", text)
  assert.matches("build: cache hit for kernel " .. KVER:gsub("%p", "%%%0"), text)
  assert.is_nil(fs.read(ofed.EXPOSE .. TRAPS), "a compiler, make or apt-get ran")
  local ok, ready = probe.live(ofed.READY[2])
  assert.is_true(ok, ready)
  assert.equal(#ofed.STACK, #ready.modules)
  local ctx = assert(kmod.new())
  for _, m in ipairs(ready.modules) do
    assert.equal(built[m.name], assert(ctx:state(m.name), m.name).srcversion, m.name)
  end
  local health = container.exec(c.p, c.env, c.img.healthcheck)
  assert.equal(0, health.status, health.stderr)
  assert.matches("^probe: ubuntu%-ofed %S+ live: " .. #ofed.STACK .. " modules as /%.driver%-ready says\n$", health.stdout)
  return text
end

local function assert_stops_cleanly(c, inbox)
  assert.is_true(sys.kill(c.p:pid(), "TERM"))
  local res = assert(c.p:wait(300))
  assert.equal(0, res.status, fs.read(c.log))
  for _, f in ipairs(ofed.READY) do assert.is_false(fs.exists(f), f) end
  assert.is_false(fs.exists(ofed.EXPOSE .. "/usr/local/share/drvrun"), "the exposed root is unmounted")
  assert.is_false(fs.exists(ofed.JOURNAL))
  assert.is_false(fs.exists(ofed.BLACKLIST))
  local ctx = assert(kmod.new())
  for _, n in ipairs(inbox) do
    assert.equal("", assert(ctx:state(n), n .. " reloaded").taint, n)
  end
end

-- The single cache entry for this kernel under a build cache.
local function the_entry(cache_dir)
  local found = fs.glob(cache_dir .. "/ubuntu-ofed/" .. KVER .. "/builds/*/manifest.lua")
  assert.equal(1, #found, "one build for " .. KVER .. " in " .. cache_dir)
  return found[1]:match("^(.*)/")
end

-- Run `argv` chrooted into the image's root with the image's Env; returns its status and output.
local function run_in_image(img, argv)
  local cmd = { "chroot", img.root, "/usr/bin/env", "-i" }
  for _, list in ipairs { img.env, argv } do
    for _, a in ipairs(list) do cmd[#cmd + 1] = a end
  end
  local r = assert(proc.run(cmd, { stderr = "stdout", timeout = 120 }))
  return r.status, r.stdout
end

local function lua_release()
  local text = assert(fs.read("docker/ubuntu/Dockerfile"))
  return assert(text:match("\nARG LUA_URL=https://www%.lua%.org/ftp/lua%-(5%.4%.%d+)%.tar%.gz\n"))
end

describe("the images, as built,", function()
  it("carry the vendor sources they were given, the bundle's sha256 for the recipe, and drvrun on Lua built "
     .. "from its release source", function()
    local ofed_img, peer_img = image("ofed-driver-latest"), image("nv-peer-mem-latest")
    local bundle = assert(fs.glob(ofed_img.root .. "/usr/src/MLNX_OFED_SRC-debian-*.tgz"))
    assert.equal(1, #bundle)
    local given = IMAGES .. "/vendor/" .. bundle[1]:match("[^/]+$")
    assert.equal(fs.sha256(given), fs.sha256(bundle[1]))
    assert.equal("OFED_SHA256=" .. fs.sha256(given) .. "\n", fs.read(ofed_img.root .. "/etc/drvrun/image.env"))
    local archive = assert(fs.glob(IMAGES .. "/vendor/nv_peer_memory-*.tar.gz"))[1]
    assert.equal(fs.sha256(archive), fs.sha256(peer_img.root .. "/usr/src/nv_peer_memory.tar.gz"))
    for _, img in ipairs { ofed_img, peer_img } do
      local status, out = run_in_image(img, { "drvrun", "--version" })
      assert.equal(0, status, out)
      assert.matches("^drvrun %S+ %(Lua " .. lua_release():gsub("%p", "%%%0") .. "%)\n$", out)
      assert.is_nil(fs.read(img.root .. "/usr/local/share/drvrun/runtime-packages"):find("liblua", 1, true))
    end
  end)

  it("peermem: plans its recipe on the archive it carries", function()
    local img = image("nv-peer-mem-latest")
    local status, out = run_in_image(img, { img.entrypoint[1], "--plan", img.entrypoint[2] })
    assert.equal(0, status, out)
    assert.matches("\nsource: peermem /usr/src/nv_peer_memory%.tar%.gz\n", out)
  end)

  it("precompiled: the image holds the stack's build for the guest's kernel, and drvrun on the base's Lua "
     .. "package", function()
    local img = image("ofed-driver-precompiled")
    local built = entry_modules(the_entry(img.root .. PRECOMPILED))
    for _, name in ipairs(ofed.STACK) do assert.matches("^%x+$", built[name], name) end
    assert.is_false(fs.exists(img.root .. PRECOMPILED .. "/ubuntu-ofed/sources"), "the build's copy of the bundle")
    local status, out = run_in_image(img, { "drvrun", "--version" })
    assert.equal(0, status, out)
    assert.not_matches("%(Lua " .. lua_release():gsub("%p", "%%%0") .. "%)", out)
    assert.matches("%(Lua 5%.4%.%d+%)", out)
    -- the package's static library is linked in too: the image needs no Lua package either way
    assert.is_nil(fs.read(img.root .. "/usr/local/share/drvrun/runtime-packages"):find("liblua", 1, true))
  end)
end)

describe("the OFED image's root, run as the DaemonSet runs it", function()
  local env
  setup(function()
    env = ofed.setup()
    assert(fs.mkdir("/run/drvrun"))
  end)
  after_each(function() ofed.cleanup() end)
  teardown(function()
    env.server:stop()
    guest.unload_all()
  end)

  it("reaches ready with the stack of the host's build cache, without a compiler, is healthy, stops cleanly", function()
    local inbox = ofed.load_inbox()
    local cache = ofed.fresh_cache(HOST_CACHE)
    local c = start(image("ofed-driver-latest"), cache)
    assert_ready(c, entry_modules(the_entry(cache)))
    assert_stops_cleanly(c, inbox)
  end)

  it("precompiled for the guest's kernel: ready on an empty build cache with the image's own build, "
     .. "without a compiler", function()
    local img = image("ofed-driver-precompiled")
    local inbox = ofed.load_inbox()
    local cache = assert(fs.tmpdir("empty-cache"))
    local c = start(img, cache)
    local built = entry_modules(the_entry(img.root .. PRECOMPILED))
    local text = assert_ready(c, built)
    local entry = the_entry(cache)
    local in_container = "/var/cache/drvrun" .. entry:sub(#cache + 1)
    assert.matches("drvrun entrypoint: " .. in_container:gsub("%p", "%%%0") .. ": the build the image holds", text)
    assert.same(built, entry_modules(entry))
    assert_stops_cleanly(c, inbox)
  end)
end)
