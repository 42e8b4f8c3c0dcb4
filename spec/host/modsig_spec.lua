-- drv.modsig's verdicts on modules signed here with drv.sign, against keys
-- held by a real keyring of this machine's kernel. This kernel enforces
-- nothing and its trusted keyrings are empty, so the keyring the verdict reads
-- is the spec's own, named .platform in a /proc/keys of the spec's making
-- beside the real .builtin_trusted_keys, and the enforcement is read from
-- sysfs trees laid out as the kernel's; spec/guest/secureboot_spec.lua checks
-- the same verdicts against what the kernel does with the modules.
local modsig = require "drv.modsig"
local sign = require "drv.sign"
local fs = require "drv.fs"
local sh = require "spec.support.sh"
local signing = require "spec.support.signing"

local EFI = "8be4df61-93ca-11d2-aa0d-00e098032b8c"

local function run(cmd)
  local res = sh.run(cmd)
  assert(res.status == 0, cmd .. ": " .. res.stderr)
  return (res.stdout:gsub("%s+$", ""))
end

-- A sysfs tree with the files enforcement() reads.
local function sysfs(dir, o)
  fs.remove(dir, { recursive = true, missing_ok = true })
  if o.sig_enforce then
    assert(fs.mkdir(dir .. "/module/module/parameters"))
    assert(fs.write(dir .. "/module/module/parameters/sig_enforce", o.sig_enforce .. "\n"))
  end
  if o.lockdown then
    assert(fs.mkdir(dir .. "/kernel/security"))
    assert(fs.write(dir .. "/kernel/security/lockdown", o.lockdown .. "\n"))
  end
  if o.secure_boot ~= nil then
    assert(fs.mkdir(dir .. "/firmware/efi/efivars"))
    assert(fs.write(("%s/firmware/efi/efivars/SecureBoot-%s"):format(dir, EFI),
                    "\6\0\0\0" .. (o.secure_boot and "\1" or "\0")))
  end
  return dir
end

describe("drv.modsig", function()
  local dir, k, other, ring, proc, mods, signed, cfg
  setup(function()
    dir = assert(fs.tmpdir("modsigspec"))
    k = signing.keypair(dir, "drvrun db key")
    other = signing.keypair(dir, "drvrun untrusted key")
    ring = tonumber(run("keyctl newring drvrun-platform @u"))
    run(("keyctl padd asymmetric '' %d < %s"):format(ring, sh.quote(k.der)))
    proc = dir .. "/proc"
    assert(fs.mkdir(proc))
    local builtin = assert(fs.read("/proc/keys")):match("[^\n]*keyring%s+%.builtin_trusted_keys:[^\n]*")
    assert(fs.write(proc .. "/keys", ("%s\n%08x I------     1 perm 1f0b0000     0     0 keyring   .platform: 1\n")
      :format(builtin, ring)))
    assert(fs.mkdir(dir .. "/entry"))
    mods = signing.modules(dir .. "/entry", { "mlx_compat", "ib_core" })
    cfg = assert(sign.config({ SIGN_KEY = k.key, SIGN_CERT = k.cert, SIGN_HASH = "sha256" }))
    signed = assert(sign.ensure(dir .. "/entry", mods, cfg, { kver = signing.KVER }))
  end)
  teardown(function()
    sh.run(("keyctl unlink %d @u"):format(ring))
    fs.remove(dir, { recursive = true })
  end)

  describe("enforcement", function()
    it("is module.sig_enforce, or a lockdown", function()
      local e = modsig.enforcement({ proc = proc, sys = sysfs(dir .. "/sys", {
        sig_enforce = "Y", lockdown = "[none] integrity confidentiality", secure_boot = false }) })
      assert.same({ true, true, "none", false, "module.sig_enforce=Y" },
                  { e.enforced, e.sig_enforce, e.lockdown, e.secure_boot, e.why })
      assert.equal("module.sig_enforce=Y, lockdown none, Secure Boot off", e.text)
      e = modsig.enforcement({ proc = proc, sys = sysfs(dir .. "/sys", {
        sig_enforce = "N", lockdown = "none [integrity] confidentiality", secure_boot = true }) })
      assert.same({ true, "lockdown integrity" }, { e.enforced, e.why })
      assert.equal("module.sig_enforce=N, lockdown integrity, Secure Boot on", e.text)
    end)
    it("is off without either", function()
      local e = modsig.enforcement({ proc = proc,
                                     sys = sysfs(dir .. "/sys", { sig_enforce = "N", lockdown = "[none] integrity" }) })
      assert.same({ false, nil }, { e.enforced, e.why })
      assert.equal("module.sig_enforce=N, lockdown none, Secure Boot off (not booted through UEFI)", e.text)
    end)
    it("counts Secure Boot as lockdown when securityfs cannot be read", function()
      local e = modsig.enforcement({ sys = sysfs(dir .. "/sys", { sig_enforce = "N", secure_boot = true }), proc = proc })
      assert.is_true(e.enforced)
      assert.matches("^Secure Boot on %(the kernel locks down under Secure Boot", e.why)
    end)
    it("is off on a kernel that checks no signatures", function()
      local e = modsig.enforcement({ sys = sysfs(dir .. "/sys", { lockdown = "none [integrity]" }), proc = proc })
      assert.is_false(e.enforced)
      assert.matches("^module.sig_enforce=absent %(the kernel checks no module signatures%)", e.text)
    end)
  end)

  describe("trusted_keys", function()
    it("reads the keys of the keyrings /proc/keys names", function()
      local keys, found = assert(modsig.trusted_keys({ proc = proc }))
      assert.same({ { keyring = ".platform", description = modsig.key_description(cfg.cert), name = "drvrun db key",
                      id = cfg.cert.skid } }, keys)
      assert.same({ [".builtin_trusted_keys"] = true, [".platform"] = true }, found)
    end)
    it("says so when the kernel's keyrings are not visible", function()
      assert(fs.write(dir .. "/keys-none", ""))
      local p2 = dir .. "/proc2"
      assert(fs.mkdir(p2))
      assert(fs.write(p2 .. "/keys", ""))
      assert.same({ nil, "cannot see the kernel's keyrings in " .. p2 .. "/keys (.builtin_trusted_keys is not there: "
                         .. "not root in the host's user namespace?)" }, { modsig.trusted_keys({ proc = p2 }) })
    end)
  end)

  describe("verdict", function()
    local enforced = { enforced = true, why = "module.sig_enforce=Y",
                       text = "module.sig_enforce=Y, lockdown none, Secure Boot off" }
    local relaxed = { enforced = false, text = "module.sig_enforce=N, lockdown none, Secure Boot off" }

    it("accepts a module whose key a trusted keyring holds, naming the keyring", function()
      local keys = assert(modsig.trusted_keys({ proc = proc }))
      local v = modsig.verdict("ib_core", assert(modsig.signature(signed[2].path)), enforced, keys, { cfg.cert })
      assert.same({ true, ".platform" }, { v.accepted, v.keyring })
      assert.equal(("ib_core: signed by drvrun db key (key %s, sha256): accepted, its key is in .platform")
                   :format(cfg.cert.serial), modsig.describe(v))
      -- without the certificate at hand: by the signer's name
      v = modsig.verdict("ib_core", assert(modsig.signature(signed[2].path)), enforced, keys)
      assert.same({ true, true }, { v.accepted, v.by_name })
    end)

    it("refuses an unsigned module, and one signed with a key no keyring holds, under enforcement", function()
      local keys = assert(modsig.trusted_keys({ proc = proc }))
      local unsigned = modsig.verdict("ib_core", assert(modsig.signature(mods[2].path)), enforced, keys, { cfg.cert })
      assert.same({ false, "unsigned", "unsigned" }, { unsigned.accepted, unsigned.signer, unsigned.reason })
      local ocfg = assert(sign.config({ SIGN_KEY = other.key, SIGN_CERT = other.cert, SIGN_HASH = "sha256" }))
      local osigned = assert(sign.ensure(dir .. "/entry", mods, ocfg, { kver = signing.KVER }))
      local untrusted = modsig.verdict("mlx_compat", assert(modsig.signature(osigned[1].path)), enforced, keys, { ocfg.cert })
      assert.is_false(untrusted.accepted)
      assert.equal(("signed by drvrun untrusted key (key %s, sha256), a key none of the kernel's trusted keyrings holds")
                   :format(ocfg.cert.serial), untrusted.reason)
      local msg = modsig.refusal({ unsigned, untrusted }, enforced, keys, { cert_path = other.cert })
      assert.equal(("the kernel would refuse 2 of the built modules, so nothing was unloaded: ib_core: unsigned; "
        .. "mlx_compat: %s. It enforces module signatures (module.sig_enforce=Y, lockdown none, "
        .. "Secure Boot off) and trusts: drvrun db key in .platform. Fix: enrol the signing certificate on this node: "
        .. "mokutil --import %s (DER; convert a PEM one with openssl x509 -in %s -outform DER -out signing.der), reboot "
        .. "and confirm in MokManager, or add it to the firmware's db; or sign with a key the kernel trusts "
        .. "(SIGN_KEY, SIGN_CERT)"):format(untrusted.reason, other.cert, other.cert), msg)
      -- not enforced: the kernel loads them (tainted)
      assert.is_true(modsig.verdict("ib_core", assert(modsig.signature(mods[2].path)), relaxed, keys).accepted)
      assert.is_true(modsig.verdict("mlx_compat", assert(modsig.signature(osigned[1].path)), relaxed, keys).accepted)
    end)

    it("checks built modules in one call", function()
      signed = assert(sign.ensure(dir .. "/entry", mods, cfg, { kver = signing.KVER })) -- again: a test above rotated the key
      local all, refused, enf = modsig.check({ { name = "mlx_compat", path = mods[1].path },
                                               { name = "ib_core", path = signed[2].path } },
        { certs = { cfg.cert }, proc = proc, sys = sysfs(dir .. "/sys", { sig_enforce = "Y", lockdown = "[none]" }) })
      assert.is_true(enf.enforced)
      assert.same({ "mlx_compat", "ib_core" }, { all[1].name, all[2].name })
      assert.same({ "mlx_compat" }, { refused[1].name, refused[2] and refused[2].name })
    end)
  end)

  it("names a certificate's key as the kernel does", function()
    assert.equal("Example Corp: ops signing", modsig.kernel_name({ O = "Example Corp", CN = "ops signing" }))
    assert.equal("Example Corp signing", modsig.kernel_name({ O = "Example Corp", CN = "Example Corp signing" }))
    assert.equal("Example Ops key", modsig.kernel_name({ O = "Example Corp", CN = "Example Ops key" })) -- 7 characters
    assert.equal("Example", modsig.kernel_name({ O = "Example" }))
    assert.equal("ops@example.com", modsig.kernel_name({ email = "ops@example.com" }))
  end)
end)
