--- drv.secureboot: what the recipe lifecycle does about module signatures.
--
-- prepare: with signature enforcement, refuse before anything changes when the
--   modules cannot be accepted: nothing to sign them with, or a certificate
--   none of the kernel's trusted keyrings holds (before a build of minutes);
-- build (after the cache has the unsigned build): the signed copies replace the
--   built modules (drv.sign), then each is checked as the kernel will check it,
--   before install changes anything and long before the old stack is unloaded;
-- plan: the enforcement, and each module's signer and verdict.
--
-- Each takes the run's state (drv.run) and fails the phase with its fail.
local M = {}

local log = require "drv.log"
local fs = require "drv.fs"
-- drv.sign and drv.modsig (libkmod, libcrypto, keyctl) when a run signs or
-- checks: a warm restart on a node that enforces nothing loads neither.
local function sign() return require "drv.sign" end
local function modsig() return require "drv.modsig" end

--- The options of signing (drv.recipe's common options).
M.OPTIONS = {
  SIGN_KEY = { default = "",
    doc = "private key that signs the built modules: a PEM file (a Kubernetes Secret mounted read-only) or a "
          .. "PKCS#11 URI (pkcs11:...); read by the signer only, never copied. Empty: no signing here" },
  SIGN_CERT = { default = "",
    doc = "the key's X.509 certificate (PEM or DER), enrolled on the nodes (mokutil --import); with SIGN_KEY "
          .. "empty, the modules signed with it before (an image's precompiled build) are used" },
  SIGN_HASH = { default = "sha256", choices = { "sha256", "sha384", "sha512", "sha224" },
                doc = "hash algorithm of the module signatures" },
  SIGN_PIN_FILE = { default = "",
    doc = "file holding the key's passphrase or the PKCS#11 token's PIN (passed to the signer as KBUILD_SIGN_PIN)" },
  SIGN_FILE = { default = "",
    doc = "the signer (default: scripts/sign-file of the kernel's build directory, or of /usr/lib/linux-kbuild-X.Y)" },
  SIGNATURE_CHECK = { type = "boolean", default = true,
    doc = "refuse, before anything is unloaded, a run whose modules the kernel would refuse (module signature "
          .. "enforcement: module.sig_enforce, lockdown, Secure Boot); false: try the load anyway" },
}

local EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"

local function attr(path)
  local s = fs.read(path)
  return s and (s:gsub("%s+$", ""))
end

-- An EFI variable's value byte (after its 4 bytes of attributes), or nil.
local function efi_flag(sys, name)
  local s = fs.read(("%s/firmware/efi/efivars/%s-%s"):format(sys, name, EFI_GLOBAL))
  if not s or #s < 5 then return nil end
  return s:byte(5) == 1
end

local function secure_boot(sys)
  if not fs.exists(sys .. "/firmware/efi") then return false, "off (not booted through UEFI)" end
  local on = efi_flag(sys, "SecureBoot")
  if on == nil then return nil, "unknown: no SecureBoot variable (efivarfs not mounted at /sys/firmware/efi/efivars?)" end
  if on then return true, "on" end
  return false, efi_flag(sys, "SetupMode") and "off (firmware in setup mode)" or "off"
end

local function lockdown(sys, proc)
  local s = attr(sys .. "/kernel/security/lockdown")
  if s then return s:match("%[(%a+)%]") end
  local cmdline = fs.read(proc .. "/cmdline") or ""
  return cmdline:match("%f[%w]lockdown=(%a+)")
end

--- Whether the kernel refuses modules it cannot verify, and why.
-- @tparam[opt] table o `{ sys = "/sys", proc = "/proc" }`
-- @treturn table `{ enforced, sig_enforce (true, false, or nil: the kernel checks no signatures),
--   lockdown ("none", "integrity", "confidentiality", or nil: unknown), secure_boot (true, false, nil),
--   text = "module.sig_enforce=Y, lockdown none, Secure Boot off", why = what enforces, or nil }`
function M.enforcement(o)
  o = o or {}
  local sys, proc = o.sys or "/sys", o.proc or "/proc"
  local e = {}
  local param = attr(sys .. "/module/module/parameters/sig_enforce")
  if param then e.sig_enforce = param == "Y" end
  e.lockdown = lockdown(sys, proc)
  local sb_text
  e.secure_boot, sb_text = secure_boot(sys)
  local why = {}
  if e.sig_enforce then why[#why + 1] = "module.sig_enforce=Y" end
  if e.lockdown and e.lockdown ~= "none" then why[#why + 1] = "lockdown " .. e.lockdown end
  if not e.lockdown and e.secure_boot then
    why[#why + 1] = "Secure Boot on (the kernel locks down under Secure Boot; lockdown unreadable: mount securityfs)"
  end
  -- without the parameter the kernel has no module signature support: lockdown refuses nothing for it
  e.enforced = param ~= nil and #why > 0
  e.why = e.enforced and table.concat(why, ", ") or nil
  e.text = ("module.sig_enforce=%s, lockdown %s, Secure Boot %s"):format(
    param or "absent (the kernel checks no module signatures)", e.lockdown or "unknown", sb_text)
  return e
end

local function signing_set(opt)
  return (opt.SIGN_KEY or "") ~= "" or (opt.SIGN_CERT or "") ~= ""
end

local function config(r)
  if not signing_set(r.opt) then return nil end
  local cfg, err = sign().config(r.opt)
  if err then r:fail("%s", err) end
  return cfg
end

-- The enforcement, and (enforced, or `always`) the trusted keys; read once per run.
local function kernel_trust(r, always)
  if not r.modsig then r.modsig = { enf = M.enforcement() } end
  local t = r.modsig
  if (t.enf.enforced or always) and not t.keys and not t.keys_error then
    t.keys, t.keys_error = modsig().trusted_keys()
  end
  return t
end

-- The verdict the configuration predicts for every module, before they are built or signed.
local function predicted(t, cfg)
  if not cfg then
    local v = modsig().verdict("the modules (all)", { signed = false }, t.enf, t.keys)
    v.reason = "unsigned (SIGN_KEY and SIGN_CERT are not set)"
    return v
  end
  local sig = { signed = true, signer = cfg.cert.issuer.CN or "", serial = cfg.cert.serial, hash = cfg.hash }
  return modsig().verdict("the modules (all)", sig, t.enf, t.keys, { cfg.cert })
end

--- Prepare: the signing options are usable; under enforcement, a certificate the
-- kernel trusts is configured.
function M.prepare(r)
  local cfg = config(r)
  if r.opt.BUILD_ONLY or not r.opt.SIGNATURE_CHECK then return end
  local t = kernel_trust(r)
  if cfg or t.enf.enforced then log.info("signatures: %s%s", t.enf.text, t.enf.enforced and ": enforced" or "") end
  if not t.enf.enforced then return end
  local v = predicted(t, cfg)
  if not v.accepted then
    r:fail("%s", modsig().refusal({ v }, t.enf, t.keys, { cert_path = cfg and cfg.cert.path, predicted = true }))
  end
end

--- Build, once `r.built` holds the cache entry's modules: sign them (or take the
-- cached signed copies), then refuse unless the kernel will accept every one.
-- @tparam table r the run
-- @tparam table entry drv.cache.entry(r)
function M.after_build(r, entry)
  local cfg = config(r)
  local o = { kver = r.kver, sha256 = function(p) return r:sha256(p) end, interrupt_fd = r:interrupt_fd() }
  if cfg and not cfg.key and not sign().cached(entry.dir, r.built, cfg, o)
     and not (r.opt.SIGNATURE_CHECK and kernel_trust(r).enf.enforced) then
    -- an image's certificate, on a kernel it holds no signed build for, on a node that enforces nothing
    log.warn("sign: no modules signed with %s for kernel %s and no SIGN_KEY: the unsigned ones are used "
             .. "(the kernel enforces no module signatures)", cfg.cert.path, r.kver)
    cfg = nil
  end
  if cfg then
    local signed = r:checked("sign", sign().ensure(entry.dir, r.built, cfg, o))
    for i, m in ipairs(r.built) do
      m.unsigned_path, m.path, m.sha256 = m.path, signed[i].path, signed[i].sha256
    end
  end
  if r.opt.BUILD_ONLY or not r.opt.SIGNATURE_CHECK then return end
  local t = kernel_trust(r)
  if not t.enf.enforced then return end
  local verdicts, refused = modsig().check(r.built, { certs = cfg and { cfg.cert }, enf = t.enf, keys = t.keys or false })
  r.verdicts = verdicts
  if #refused > 0 then r:fail("%s", modsig().refusal(refused, t.enf, t.keys, { cert_path = cfg and cfg.cert.path })) end
  log.info("signatures: the kernel will accept all %d built modules", #verdicts)
end

--- Plan lines (`say(fmt, ...)`): the enforcement, the signing, then each module's
-- signer and verdict: of the cached build's modules (`built`, in cache entry
-- `entry`; their signed copies when the cache has them), else the one the
-- configuration predicts.
function M.plan(r, entry, built, say)
  local cfg, err
  if signing_set(r.opt) then cfg, err = sign().config(r.opt) end
  local t = kernel_trust(r, true)
  say("signatures: %s (%s)", t.enf.text, t.enf.enforced and "enforced: " .. t.enf.why or "not enforced")
  if err then say("sign: %s", err) end
  if cfg then
    say("sign: with %s, certificate %s (%s, sha256 %s), %s", cfg.key or "no key (signed copies in the cache only)",
        cfg.cert.path, modsig().key_description(cfg.cert), cfg.cert.sha256, cfg.hash)
  else
    say("sign: no (SIGN_KEY and SIGN_CERT are not set)")
  end
  if not t.keys then say("trusted keys: %s", t.keys_error) end
  local modules = built and cfg and sign().cached(entry.dir, built, cfg, { sha256 = function(p) return r:sha256(p) end })
    or (not cfg and built)
  if not modules then
    say("module signatures: %s", modsig().describe(predicted(t, cfg)))
    return
  end
  for i, m in ipairs(modules) do
    local sig = modsig().signature(m.path)
    local v = sig and modsig().verdict(built[i].name, sig, t.enf, t.keys, cfg and { cfg.cert })
    say("module %s", v and modsig().describe(v) or built[i].name .. ": its signature cannot be read")
  end
end

return M
