-- drv.sign with the kernel's own signer (Kbuild's scripts/sign-file) on the
-- fixture modules, and what libkmod reads back from the signed files.
local sign = require "drv.sign"
local kmod = require "drv.kmod"
local log = require "drv.log"
local fs = require "drv.fs"
local sh = require "spec.support.sh"
local signing = require "spec.support.signing"

local KVER = signing.KVER

local function opt(k, extra)
  local o = { SIGN_KEY = k.key, SIGN_CERT = k.cert, SIGN_HASH = "sha256", SIGN_PIN_FILE = "", SIGN_FILE = "" }
  for key, v in pairs(extra or {}) do o[key] = v end
  return o
end

-- Every file below dir, read whole.
local function contents(dir)
  local all = {}
  for _, f in ipairs(require("drv.compile").find_files(dir)) do all[f] = assert(fs.read(f)) end
  return all
end

describe("drv.sign", function()
  local dir, k, other, entry, mods
  setup(function()
    dir = assert(fs.tmpdir("signspec"))
    k = signing.keypair(dir, "drvrun spec key")
    other = signing.keypair(dir, "drvrun other key")
  end)
  teardown(function() fs.remove(dir, { recursive = true }) end)
  before_each(function()
    entry = dir .. "/entry"
    fs.remove(entry, { recursive = true, missing_ok = true })
    assert(fs.mkdir(entry))
    mods = signing.modules(entry, { "mlx_compat", "ib_core" })
  end)

  describe("config", function()
    it("is nil when nothing is set: modules are not signed", function()
      assert.same({}, { sign.config({ SIGN_KEY = "", SIGN_CERT = "" }) })
    end)
    it("reads the certificate and keeps the key a path", function()
      local cfg = assert(sign.config(opt(k)))
      assert.equal(k.key, cfg.key)
      assert.equal(k.cert, cfg.cert.path)
      assert.equal("drvrun spec key", cfg.cert.subject.CN)
      assert.equal("sha256", cfg.hash)
    end)
    it("refuses what cannot work, saying what to set", function()
      assert.same({ nil, "SIGN_KEY is set but SIGN_CERT is not: the signer needs the key's certificate (PEM or DER)" },
                  { sign.config(opt(k, { SIGN_CERT = "" })) })
      assert.same({ nil, "SIGN_KEY /nonexistent/key.pem: no such file (mount the key's Secret there, or set SIGN_KEY "
                         .. "to its path)" }, { sign.config(opt(k, { SIGN_KEY = "/nonexistent/key.pem" })) })
      assert.same({ nil, "SIGN_CERT " .. k.key .. ": not an X.509 certificate (PEM or DER)" },
                  { sign.config(opt(k, { SIGN_CERT = k.key })) })
      local _, err = sign.config(opt(k, { SIGN_KEY = "pkcs11:token=hsm;object=db;pin-value=1234" }))
      assert.matches("the PKCS#11 URI holds a pin%-value; put the PIN in a file and set SIGN_PIN_FILE", err)
      assert.same({ nil, "SIGN_PIN_FILE /nonexistent/pin: no such file" },
                  { sign.config(opt(k, { SIGN_PIN_FILE = "/nonexistent/pin" })) })
    end)
  end)

  describe("signer", function()
    it("is the kernel build directory's scripts/sign-file", function()
      assert.equal(("/lib/modules/%s/build/scripts/sign-file"):format(KVER), sign.signer(KVER))
    end)
    it("says where it looked when there is none", function()
      local none, err = sign.signer("9.9.0-none")
      assert.is_nil(none)
      assert.equal("no module signer for kernel 9.9.0-none: none of /lib/modules/9.9.0-none/build/scripts/sign-file, "
        .. "/lib/modules/9.9.0-none/source/scripts/sign-file, /usr/lib/linux-kbuild-9.9/scripts/sign-file "
        .. "(install linux-headers-9.9.0-none, or set SIGN_FILE)", err)
      assert(fs.chmod(k.cert, 420))
      assert.same({ nil, ("SIGN_FILE %s: not an executable file"):format(k.cert) }, { sign.signer(KVER, k.cert) })
    end)
  end)

  describe("ensure", function()
    it("signs copies of the unsigned modules, which stay as they were", function()
      local cfg = assert(sign.config(opt(k)))
      local signed, fresh = assert(sign.ensure(entry, mods, cfg, { kver = KVER }))
      assert.is_true(fresh)
      for i, m in ipairs(mods) do
        assert.equal(m.sha256, fs.sha256(m.path)) -- the cache's unsigned module untouched
        assert.equal(m.name, signed[i].name)
        assert.equal(sign.set_dir(entry, cfg) .. "/" .. m.name .. ".ko", signed[i].path)
        assert.equal(fs.sha256(signed[i].path), signed[i].sha256)
        local info = assert(kmod.modinfo(signed[i].path))
        assert.equal("drvrun spec key", info.signer)
        assert.equal(cfg.cert.serial, info.sig_key:gsub(":", ""):lower():gsub("^0+", ""))
        assert.equal("sha256", info.sig_hashalgo)
        assert.equal(assert(kmod.modinfo(m.path)).srcversion, info.srcversion) -- the same module
      end
      assert.equal(assert(fs.read(k.der)), fs.read(sign.set_dir(entry, cfg) .. "/cert.der"))
    end)

    it("reuses the signed set, and signs again for a new key or a changed module", function()
      local cfg = assert(sign.config(opt(k)))
      local first = assert(sign.ensure(entry, mods, cfg, { kver = KVER }))
      local again, fresh = assert(sign.ensure(entry, mods, cfg, { kver = KVER }))
      assert.is_false(fresh)
      assert.same(first, again)
      -- a new key (rotation): a new set from the same unsigned modules, the old one removed
      local cfg2 = assert(sign.config(opt(other, { SIGN_HASH = "sha512" })))
      local rotated, fresh2 = assert(sign.ensure(entry, mods, cfg2, { kver = KVER }))
      assert.is_true(fresh2)
      assert.equal("drvrun other key", kmod.modinfo(rotated[1].path).signer)
      assert.equal("sha512", kmod.modinfo(rotated[1].path).sig_hashalgo)
      assert.is_false(fs.exists(sign.set_dir(entry, cfg)))
      -- a rebuilt module: its signed copy is made again
      assert(fs.copy(signing.FIXTURES .. "/ib_cm/ib_cm.ko", mods[2].path))
      mods[2].sha256 = assert(fs.sha256(mods[2].path))
      local _, fresh3 = assert(sign.ensure(entry, mods, cfg2, { kver = KVER }))
      assert.is_true(fresh3)
    end)

    it("without a key, uses the copies signed before with the certificate, or says there are none", function()
      local cfg = assert(sign.config(opt(k)))
      local nokey = assert(sign.config(opt(k, { SIGN_KEY = "" })))
      local none, err = sign.ensure(entry, mods, nokey, { kver = KVER })
      assert.is_nil(none)
      assert.equal(("no modules signed with certificate %s (sha256 %s) in %s, and no SIGN_KEY to sign them with")
        :format(k.cert, cfg.cert.sha256, entry), err)
      local signed = assert(sign.ensure(entry, mods, cfg, { kver = KVER }))
      assert.same(signed, assert(sign.ensure(entry, mods, nokey, { kver = KVER })))
    end)

    it("fails with the signer's own words, keeping the set it had", function()
      local good = assert(sign.config(opt(k)))
      local signed = assert(sign.ensure(entry, mods, good, { kver = KVER }))
      local mismatch = assert(sign.config(opt(other, { SIGN_CERT = k.cert }))) -- other's key, k's certificate
      assert(fs.remove(sign.set_dir(entry, good) .. "/set.lua"))
      local none, err = sign.ensure(entry, mods, mismatch, { kver = KVER })
      assert.is_nil(none)
      assert.matches("^sign%-file mlx_compat%.ko: .*private key does not match certificate.*CMS_add1_signer", err)
      assert.is_nil(err:find("At main.c", 1, true))
      assert.is_true(fs.exists(signed[1].path)) -- a failed signing leaves what was there
      assert.same({ sign.set_dir(entry, good):match("[^/]+$") }, fs.dir(entry .. "/signed")) -- and no half-made set
    end)

    it("passes a key's passphrase from SIGN_PIN_FILE, and fails without it", function()
      local res = sh.run(("(openssl req -new -x509 -newkey rsa:2048 -days 30 -subj /CN=locked -passout pass:s3cret "
        .. "-keyout %s/locked.key -out %s/locked.crt)"):format(dir, dir))
      assert(res.status == 0, res.stderr)
      assert(fs.write(dir .. "/pin", "s3cret\n"))
      local locked = { key = dir .. "/locked.key", cert = dir .. "/locked.crt" }
      local none, err = sign.ensure(entry, mods, assert(sign.config(opt(locked))), { kver = KVER })
      assert.is_nil(none)
      assert.matches("^sign%-file mlx_compat%.ko: ", err)
      local signed = assert(sign.ensure(entry, mods, assert(sign.config(opt(locked, { SIGN_PIN_FILE = dir .. "/pin" }))),
                                        { kver = KVER }))
      assert.equal("locked", kmod.modinfo(signed[1].path).signer)
    end)

    it("never copies the key: not into the cache entry, not into the log", function()
      local lines = {}
      local out = log.out
      log.out = { write = function(_, s) lines[#lines + 1] = s end, flush = function() end }
      local ok, err = pcall(sign.ensure, entry, mods, assert(sign.config(opt(k))), { kver = KVER })
      log.out = out
      assert(ok, err)
      local body = assert(fs.read(k.key)):match("%-%-%-%-%-\n(.-)\n") -- the key's first line of base64
      assert.truthy(body)
      for path, data in pairs(contents(entry)) do
        assert.is_nil(data:find(body, 1, true), path .. " holds the key")
      end
      local text = table.concat(lines)
      assert.matches("sign: 2 modules signed with drvrun spec key", text)
      assert.is_nil(text:find(body, 1, true))
    end)
  end)
end)
