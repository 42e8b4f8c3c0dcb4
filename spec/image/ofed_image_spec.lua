-- The images as built for real by tools/build-test-images (make check-images),
-- extracted into $DRVRUN_IMAGES: what each carries, checked in its root file
-- system (chroot, the image's Env; no engine needed to read files). Running
-- them is spec/image/engine_spec.lua's: a real engine on the guest.
local fs = require "drv.fs"
local proc = require "drv.proc"
local sys = require "drv.sys"
local ofed = require "spec.support.ofed"

local IMAGES = assert(os.getenv("DRVRUN_IMAGES"), "DRVRUN_IMAGES is not set (make check-images sets it)")
local KVER = sys.uname().release
local PRECOMPILED = "/var/lib/drvrun/precompiled"

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

-- The modules of a build cache entry: { name = srcversion }.
local function entry_modules(dir)
  local manifest = assert(load(assert(fs.read(dir .. "/manifest.lua")), "=manifest", "t", {}))()
  local mods = {}
  for _, m in ipairs(manifest) do mods[m.name] = m.srcversion end
  return mods
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
    assert.same({ "/usr/local/bin/drvrun", "--init" }, { img.entrypoint[1], img.entrypoint[2] })
    local status, out = run_in_image(img, { img.entrypoint[3], "--plan", img.entrypoint[4] })
    assert.equal(0, status, out)
    assert.matches("\nsource: peermem /usr/src/nv_peer_memory%.tar%.gz\n", out)
  end)

  it("precompiled: the image holds the stack's build for the guest's kernel and none of the tools to make it, and "
     .. "drvrun on the base's Lua package", function()
    local img = image("ofed-driver-precompiled")
    local built = entry_modules(the_entry(img.root .. PRECOMPILED))
    for _, name in ipairs(ofed.STACK) do assert.matches("^%x+$", built[name], name) end
    assert.is_false(fs.exists(img.root .. PRECOMPILED .. "/ubuntu-ofed/sources"), "the build's copy of the bundle")
    for _, f in ipairs { "/usr/bin/gcc", "/usr/bin/make", "/usr/bin/patch", "/usr/bin/ld", "/var/lib/apt/lists/lock" } do
      assert.is_false(fs.exists(img.root .. f), f .. " is in the precompiled image")
    end
    assert.same({}, fs.glob(img.root .. "/usr/src/linux-headers-*") or {}, "kernel headers in the precompiled image")
    local status, out = run_in_image(img, { "drvrun", "--version" })
    assert.equal(0, status, out)
    assert.not_matches("%(Lua " .. lua_release():gsub("%p", "%%%0") .. "%)", out)
    assert.matches("%(Lua 5%.4%.%d+%)", out)
    -- the package's static library is linked in too: the image needs no Lua package either way
    assert.is_nil(fs.read(img.root .. "/usr/local/share/drvrun/runtime-packages"):find("liblua", 1, true))
  end)
end)
