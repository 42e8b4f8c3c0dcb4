-- Signing through the recipe lifecycle (drv.secureboot, called by drv.phases and
-- drv.plan), on a one-module recipe built for the installed kernel here: the
-- build cache keeps the unsigned module, ROOT gets the signed one, a new key
-- signs again from the cache with every compiler trapped, the key is copied
-- nowhere, and the plan says what it would sign with.
local fs = require "drv.fs"
local kmod = require "drv.kmod"
local proc = require "drv.proc"
local signing = require "spec.support.signing"

describe("a recipe run with SIGN_KEY and SIGN_CERT (BUILD_ONLY, for the installed kernel)", function()
  local kver = signing.KVER
  local dir, recipe, a, b, installed

  setup(function()
    dir = assert(fs.tmpdir("signrecipe"))
    assert(fs.mkdir(dir .. "/src"))
    assert(fs.write(dir .. "/src/Kbuild", "obj-m := hello.o\n"))
    assert(fs.write(dir .. "/src/hello.c", '#include <linux/module.h>\nMODULE_LICENSE("GPL");\n'))
    recipe = dir .. "/hello.lua"
    assert(fs.write(recipe, [[
return {
  name = "hello", version = "1", stack = { "hello" },
  sources = { src = { path = "]] .. dir .. [[/src" } },
  build = function(r) return r:kbuild { src = r:extract(r.sources.src) } end,
}]]))
    a, b = signing.keypair(dir, "recipe key a"), signing.keypair(dir, "recipe key b")
    installed = ("%s/root/lib/modules/%s/updates/hello/hello.ko"):format(dir, kver)
  end)
  teardown(function() fs.remove(dir, { recursive = true }) end)

  local function run(key, env, ...)
    local argv = { os.getenv("DRVRUN"), recipe, "BUILD_ONLY=true", "KVER=" .. kver, "ROOT=" .. dir .. "/root",
                   "CACHE_DIR=" .. dir .. "/cache", "SIGN_KEY=" .. key.key, "SIGN_CERT=" .. key.cert, ... }
    return assert(proc.run(argv, { env = env }))
  end

  local function cached_module()
    return assert(fs.glob(("%s/cache/hello/%s/builds/*/hello.ko"):format(dir, kver)))[1]
  end

  it("installs the module signed, and keeps the unsigned one in the build cache", function()
    local res = run(a)
    assert.equal(0, res.status, res.stderr)
    assert.matches("sign: 1 modules signed with recipe key a", res.stderr, nil, true)
    assert.equal("recipe key a", assert(kmod.modinfo(installed)).signer)
    assert.is_nil(assert(kmod.modinfo(cached_module())).signer)
    -- the key's bytes: in no file of the cache or the root, and not in the log
    local body = assert(fs.read(a.key)):match("%-%-%-%-%-\n(.-)\n")
    for _, tree in ipairs({ dir .. "/cache", dir .. "/root" }) do
      for _, f in ipairs(require("drv.compile").find_files(tree)) do
        assert.is_nil(assert(fs.read(f)):find(body, 1, true), f .. " holds the key")
      end
    end
    assert.is_nil(res.stderr:find(body, 1, true))
  end)

  it("reuses the signed copies on a restart", function()
    local res = run(a)
    assert.equal(0, res.status, res.stderr)
    assert.matches("build: cache hit", res.stderr, nil, true)
    assert.is_nil(res.stderr:find("modules signed", 1, true))
    assert.matches("already installed", res.stderr, nil, true)
  end)

  it("signs again from the cache with a new key, without a compiler", function()
    local trap = dir .. "/trap"
    assert(fs.mkdir(trap .. "/bin"))
    for _, name in ipairs({ "make", "gcc", "cc", "ld", "as", "ccache" }) do
      assert(fs.write(("%s/bin/%s"):format(trap, name), ("#!/bin/sh\necho %s >> %s/runs\nexit 1\n"):format(name, trap),
                      { mode = 493 }))
    end
    local res = run(b, { PATH = trap .. "/bin:" .. os.getenv("PATH") })
    assert.equal(0, res.status, res.stderr)
    assert.matches("build: cache hit", res.stderr, nil, true)
    assert.matches("sign: 1 modules signed with recipe key b", res.stderr, nil, true)
    assert.is_nil(fs.read(trap .. "/runs"))
    assert.equal("recipe key b", assert(kmod.modinfo(installed)).signer)
  end)

  it("fails the build with the signer's words when the key is not the certificate's", function()
    local res = run({ key = a.key, cert = b.cert }, nil, "SIGN_HASH=sha512")
    assert.equal(1, res.status)
    assert.matches("sign: sign%-file hello%.ko: .*private key does not match certificate", res.stderr)
  end)

  it("refuses options that cannot work before building", function()
    local res = run({ key = dir .. "/missing.key", cert = a.cert })
    assert.equal(1, res.status)
    assert.matches("SIGN_KEY " .. dir .. "/missing.key: no such file", res.stderr, nil, true)
  end)

  it("plans what it signs with and the kernel's enforcement", function()
    local res = assert(proc.run({ os.getenv("DRVRUN"), "--plan", recipe, "KVER=" .. kver, "CACHE_DIR=" .. dir .. "/cache",
                                  "SIGN_KEY=" .. b.key, "SIGN_CERT=" .. b.cert }))
    assert.equal(0, res.status, res.stderr)
    assert.matches("\nsignatures: module.sig_enforce=", res.stdout)
    assert.matches("\nsign: with " .. b.key:gsub("%p", "%%%0") .. ", certificate " .. b.cert:gsub("%p", "%%%0"), res.stdout)
    assert.matches("\nmodule hello: signed by recipe key b %(key %x+, sha256%)", res.stdout)
  end)
end)
