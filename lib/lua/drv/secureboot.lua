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
-- Each takes the run `r` (drv.run) and fails the phase with r:fail.
local M = {}

local sign = require "drv.sign"
local modsig = require "drv.modsig"
local log = require "drv.log"

local EINTR = 4

M.OPTIONS = {
  SIGNATURE_CHECK = { type = "boolean", default = true,
    doc = "refuse, before anything is unloaded, a run whose modules the kernel would refuse (module signature "
          .. "enforcement: module.sig_enforce, lockdown, Secure Boot); false: try the load anyway" },
}
for name, spec in pairs(sign.OPTIONS) do M.OPTIONS[name] = spec end

local function config(r)
  local cfg, err = sign.config(r.opt)
  if err then r:fail("%s", err) end
  return cfg
end

-- The enforcement and trusted keys, read once per run.
local function kernel_trust(r)
  if not r.modsig then
    local keys, why = modsig.trusted_keys()
    r.modsig = { enf = modsig.enforcement(), keys = keys, keys_error = why }
  end
  return r.modsig
end

-- The verdict the configuration predicts for every module, before they are built or signed.
local function predicted(t, cfg)
  if not cfg then
    local v = modsig.verdict("the modules (all)", { signed = false }, t.enf, t.keys)
    v.reason = "unsigned (SIGN_KEY and SIGN_CERT are not set)"
    return v
  end
  local sig = { signed = true, signer = cfg.cert.issuer.CN or "", serial = cfg.cert.serial, hash = cfg.hash }
  return modsig.verdict("the modules (all)", sig, t.enf, t.keys, { cfg.cert })
end

--- Prepare: the signing options are usable; under enforcement, a certificate the
-- kernel trusts is configured.
function M.prepare(r)
  local cfg = config(r)
  if r.opt.BUILD_ONLY or not r.opt.SIGNATURE_CHECK then return end
  local t = kernel_trust(r)
  log.info("signatures: %s%s", t.enf.text, t.enf.enforced and ": enforced" or "")
  if not t.enf.enforced then return end
  local v = predicted(t, cfg)
  if not v.accepted then r:fail("%s", modsig.refusal({ v }, t.enf, t.keys, { cert_path = cfg and cfg.cert.path })) end
end

--- Build, once `r.built` holds the cache entry's modules: sign them (or take the
-- cached signed copies), then refuse unless the kernel will accept every one.
-- @tparam table r the run
-- @tparam table entry drv.cache.entry(r)
function M.after_build(r, entry)
  local cfg = config(r)
  if cfg then
    local signed, err, errno = sign.ensure(entry.dir, r.built, cfg, {
      kver = r.kver, sha256 = function(p) return r:sha256(p) end, interrupt_fd = r.signals and r.signals:fd() })
    if errno == EINTR then r:check_cancel() end
    if not signed then r:fail("sign: %s", err) end
    for i, m in ipairs(r.built) do
      m.unsigned_path, m.path, m.sha256 = m.path, signed[i].path, signed[i].sha256
    end
  end
  if r.opt.BUILD_ONLY or not r.opt.SIGNATURE_CHECK then return end
  local t = kernel_trust(r)
  local verdicts, refused = modsig.check(r.built, { certs = cfg and { cfg.cert } })
  r.verdicts = verdicts
  if #refused > 0 then r:fail("%s", modsig.refusal(refused, t.enf, t.keys, { cert_path = cfg and cfg.cert.path })) end
  if t.enf.enforced then log.info("signatures: the kernel will accept all %d built modules", #verdicts) end
end

--- Plan lines (`say(fmt, ...)`): the enforcement, the signing, then each module's
-- signer and verdict: of the cached build's modules (`built`, in cache entry
-- `entry`; their signed copies when the cache has them), else the one the
-- configuration predicts.
function M.plan(r, entry, built, say)
  local cfg, err = sign.config(r.opt)
  local t = kernel_trust(r)
  say("signatures: %s (%s)", t.enf.text, t.enf.enforced and "enforced: " .. t.enf.why or "not enforced")
  if err then say("sign: %s", err) end
  if cfg then
    say("sign: with %s, certificate %s (%s, sha256 %s), %s", cfg.key or "no key (signed copies in the cache only)",
        cfg.cert.path, modsig.key_description(cfg.cert), cfg.cert.sha256, cfg.hash)
  else
    say("sign: no (SIGN_KEY and SIGN_CERT are not set)")
  end
  if not t.keys then say("trusted keys: %s", t.keys_error) end
  local modules = built and cfg and sign.cached(entry.dir, built, cfg, { sha256 = function(p) return r:sha256(p) end })
    or (not cfg and built)
  if not modules then
    say("module signatures: %s", modsig.describe(predicted(t, cfg)))
    return
  end
  for i, m in ipairs(modules) do
    local sig = modsig.signature(m.path)
    local v = sig and modsig.verdict(built[i].name, sig, t.enf, t.keys, cfg and { cfg.cert })
    say("module %s", v and modsig.describe(v) or built[i].name .. ": its signature cannot be read")
  end
end

return M
