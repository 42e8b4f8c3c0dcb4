--- drv.modsig: whether the running kernel will load a module, known before anything is unloaded.
--
-- The kernel checks a module's signature against the keys of
-- `.secondary_trusted_keys` (which links `.builtin_trusted_keys` and `.machine`:
-- MOKs shim marks trusted), then of `.platform` (UEFI `db`, and MOKs otherwise):
-- `kernel/module/signing.c`, `VERIFY_USE_SECONDARY_KEYRING` then
-- `VERIFY_USE_PLATFORM_KEYRING`. An unsigned module, or one whose key none of
-- them holds, is refused when `module.sig_enforce` is set or the kernel is locked
-- down (most distributions lock down when booted with Secure Boot), and
-- loaded, tainted, otherwise.
--
--   local enf = modsig.enforcement()
--   local keys = modsig.trusted_keys()
--   for _, m in ipairs(built) do
--     local v = modsig.verdict(modsig.signature(m.path), enf, keys, { cert })
--     if not v.accepted then print(modsig.refusal({ v }, enf, { cert_path = "/keys/db.crt" })) end
--   end
local M = {}

local keyctl = require "drv.keyctl"
local kmod = require "drv.kmod"
local cert = require "drv.cert"
local fs = require "drv.fs"

-- The keyrings module signatures are checked against, in the kernel's order.
M.KEYRINGS = { ".builtin_trusted_keys", ".secondary_trusted_keys", ".machine", ".platform" }

--- Whether the kernel refuses modules it cannot verify, and why: drv.secureboot.enforcement
-- (there, so that a run's start reads it without loading this module).
function M.enforcement(o)
  return require("drv.secureboot").enforcement(o)
end

-- The serials of the keyrings named in /proc/keys (those this process may view).
local function keyring_ids(proc)
  local text, err = fs.read(proc .. "/keys")
  if not text then return nil, err end
  local ids = {}
  for line in text:gmatch("[^\n]+") do
    local id, name = line:match("^(%x+) .- keyring%s+([^:]+):")
    if id then ids[name] = id end
  end
  return ids
end

local function key_entry(keyring, description)
  local name, id = description:match("^(.*): (%x+)$")
  return { keyring = keyring, description = description, name = name or description, id = id }
end

-- The asymmetric keys of keyring `id` (named `name`) and of the keyrings it links.
local function collect(id, name, keys, seen)
  if seen[id] then return true end
  seen[id] = true
  local members, err = keyctl.list(id)
  if not members then return nil, ("%s: %s"):format(name, err) end
  for _, serial in ipairs(members) do
    local d = keyctl.describe(serial)
    if d and d.type == "keyring" then
      collect(serial, d.description, keys, seen)
    elseif d and d.type == "asymmetric" then
      keys[#keys + 1] = key_entry(name, d.description)
    end
  end
  return true
end

--- The keys the kernel verifies module signatures with: `{ { keyring, description,
-- name, id }... }` (`name` the subject, `id` the key identifier, as in the key's
-- description "subject: id"), and the keyrings found.
-- @tparam[opt] table o `{ proc = "/proc" }`
-- @treturn[1] table keys
-- @treturn[1] table the keyrings read, by name
-- @treturn[2] nil, string why none can be read
function M.trusted_keys(o)
  local proc = (o or {}).proc or "/proc"
  local ids, err = keyring_ids(proc)
  if not ids then return nil, "cannot read the kernel's keyrings: " .. err end
  local keys, seen, found = {}, {}, {}
  for _, name in ipairs(M.KEYRINGS) do
    local id = ids[name]
    if id then
      found[name] = true
      local ok, cerr = collect(tonumber(id, 16), name, keys, seen)
      if not ok then return nil, "cannot read the kernel's keyrings: " .. cerr end
    end
  end
  if not found[".builtin_trusted_keys"] then
    return nil, ("cannot see the kernel's keyrings in %s/keys (.builtin_trusted_keys is not there: "
                 .. "not root in the host's user namespace?)"):format(proc)
  end
  return keys, found
end

local function normal_serial(s)
  s = s:gsub(":", ""):lower():gsub("^0+", "")
  return s == "" and "0" or s
end

--- A module file's signature: `{ signed = false }` or `{ signed = true, signer = issuer CN,
-- serial = "5f91…" (the key's serial, lowercase hex), hash = "sha256" }`.
-- @tparam string|table m a .ko path, or the table drv.kmod.modinfo gave for it
-- @treturn[1] table
-- @treturn[2] nil, string message, integer errno
function M.signature(m)
  local info, err, errno = m, nil, nil
  if type(m) == "string" then info, err, errno = kmod.modinfo(m) end
  if not info then return nil, err, errno end
  if not info.sig_key then return { signed = false } end
  return { signed = true, signer = info.signer or "", serial = normal_serial(info.sig_key), hash = info.sig_hashalgo }
end

--- The name the kernel gives a certificate's subject or issuer (crypto/asymmetric_keys/
-- x509_cert_parser.c): "O: CN", or CN alone when it starts with O (or O's first 7
-- characters), else CN, O or the email alone.
function M.kernel_name(n)
  if n.CN and n.O then
    if #n.CN >= #n.O and n.CN:sub(1, #n.O) == n.O then return n.CN end
    if #n.CN >= 7 and #n.O >= 7 and n.CN:sub(1, 7) == n.O:sub(1, 7) then return n.CN end
    return n.O .. ": " .. n.CN
  end
  return n.CN or n.O or n.email or ""
end

--- The description the kernel gives the key of certificate `c` (drv.cert.parse): "subject: skid".
function M.key_description(c)
  return M.kernel_name(c.subject) .. ": " .. (c.skid or c.serial)
end

--- Read and parse a certificate file (PEM or DER).
-- @treturn[1] table as drv.cert.parse, with `path`
-- @treturn[2] nil, "PATH: why"
function M.read_cert(path)
  local data, err = fs.read(path)
  if not data then return nil, err end
  local c, perr = cert.parse(data)
  if not c then return nil, ("%s: %s"):format(path, perr) end
  c.path = path
  return c
end

local function signed_by(c, sig)
  return c.serial == sig.serial and (c.issuer.CN or "") == sig.signer
end

-- The trusted key of the certificate that made `sig`, when one of `certs` did;
-- else the first key named as the signer (a self-signed certificate's subject
-- is its issuer): the kernel matches issuer and serial, which /proc/keys does not show.
local function trusted_key(sig, keys, certs)
  for _, c in ipairs(certs or {}) do
    if signed_by(c, sig) then
      local desc = M.key_description(c)
      for _, k in ipairs(keys) do
        if k.description == desc then return k, c end
      end
      return nil, c
    end
  end
  for _, k in ipairs(keys) do
    if k.name == sig.signer then return k, nil, true end
  end
end

--- The verdict on one module: would the kernel load it?
-- @tparam string name the module's name
-- @tparam table sig its signature (M.signature)
-- @tparam table enf M.enforcement()
-- @tparam table|nil keys M.trusted_keys(), nil when they could not be read
-- @tparam[opt] table certs certificates known to drvrun (drv.cert.parse): the signing one
-- @treturn table `{ name, accepted, signer = "unsigned" | "CN (key 5f91…)", keyring (the one that
--   holds its key), by_name (matched by the signer's name only), cert, reason }`
function M.verdict(name, sig, enf, keys, certs)
  local v = { name = name }
  if not sig.signed then
    v.signer = "unsigned"
    v.accepted = not enf.enforced
    v.reason = "unsigned"
    return v
  end
  v.signer = ("%s (key %s, %s)"):format(sig.signer, sig.serial, sig.hash or "?")
  if not keys then
    v.accepted = not enf.enforced
    v.reason = "signed by " .. v.signer .. ", and the kernel's keyrings cannot be read to tell whether it trusts the key"
    return v
  end
  local key, c, by_name = trusted_key(sig, keys, certs)
  v.cert = c
  if key then
    v.accepted, v.keyring, v.by_name = true, key.keyring, by_name
    return v
  end
  v.accepted = not enf.enforced
  v.reason = ("signed by %s, a key none of the kernel's trusted keyrings holds"):format(v.signer)
  return v
end

local function keyring_summary(keys)
  if not keys then return "unreadable" end
  local names = {}
  for _, k in ipairs(keys) do names[#names + 1] = ("%s in %s"):format(k.name, k.keyring) end
  return #names > 0 and table.concat(names, "; ") or "none"
end

--- One line per verdict, for the plan: "ib_core: signed by X (key …): accepted (.platform)".
function M.describe(v)
  if v.accepted and v.keyring then
    return ("%s: signed by %s: accepted, its key is in %s%s"):format(v.name, v.signer, v.keyring,
      v.by_name and " (matched by the signer's name)" or "")
  end
  return ("%s: %s: %s"):format(v.name, v.reason, v.accepted and "accepted (signatures not enforced; the kernel taints itself)"
                                                   or "refused")
end

--- The message that refuses a run: the modules the kernel would refuse, each
-- with its signer, the enforcement, the keys it trusts, and the fix.
-- @tparam table verdicts the refused verdicts (M.verdict)
-- @tparam table enf M.enforcement()
-- @tparam table|nil keys M.trusted_keys()
-- @tparam[opt] table o `{ cert_path = the certificate the modules were signed with (SIGN_CERT),
--   predicted = true: one verdict for every module a run would build, before the build }`
function M.refusal(verdicts, enf, keys, o)
  o = o or {}
  local lines = {}
  for _, v in ipairs(verdicts) do lines[#lines + 1] = o.predicted and v.reason or ("%s: %s"):format(v.name, v.reason) end
  local cert_path = o.cert_path
  local fix
  if cert_path and cert_path ~= "" then
    fix = ("enrol the signing certificate on this node: mokutil --import %s (DER; convert a PEM one with "
           .. "openssl x509 -in %s -outform DER -out signing.der), reboot and confirm in MokManager, or add it "
           .. "to the firmware's db; or sign with a key the kernel trusts (SIGN_KEY, SIGN_CERT)"):format(cert_path, cert_path)
  else
    fix = "sign the modules with a key the kernel trusts: set SIGN_KEY and SIGN_CERT (the certificate enrolled "
          .. "with mokutil --import CERT, or in the firmware's db)"
  end
  local lead = o.predicted and "the kernel would refuse every module this run builds, so nothing was changed"
    or ("the kernel would refuse %d of the built modules, so nothing was unloaded"):format(#verdicts)
  local because = enf.text
  if enf.why and enf.why:find("Secure Boot on", 1, true) then
    because = because .. "; " .. enf.why -- with lockdown unreadable: why Secure Boot counts
  end
  return ("%s: %s. It enforces module signatures (%s) and trusts: %s. Fix: %s"):format(lead,
    table.concat(lines, "; "), because, keyring_summary(keys), fix)
end

--- Verdicts on built modules (`{ name, path }`...): all of them, and the refused ones.
-- @tparam table modules
-- @tparam[opt] table o `{ certs = known certificates, sys, proc, enf, keys }` (`enf`, `keys`: read
--   before; `keys = false`: they could not be)
-- @treturn table verdicts
-- @treturn table refused
-- @treturn table enforcement
-- @treturn table|nil keys
function M.check(modules, o)
  o = o or {}
  local enf = o.enf or M.enforcement(o)
  local keys = o.keys
  if keys == nil then keys = M.trusted_keys(o) end
  keys = keys or nil
  local all, refused = {}, {}
  for _, m in ipairs(modules) do
    local sig, err = M.signature(m.path)
    local v = sig and M.verdict(m.name, sig, enf, keys, o.certs)
      or { name = m.name, signer = "?", accepted = false, reason = "cannot read its signature: " .. tostring(err) }
    all[#all + 1] = v
    if not v.accepted then refused[#refused + 1] = v end
  end
  return all, refused, enf, keys
end

return M
