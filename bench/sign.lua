--- bench/sign.lua: signing a real stack's build (drv.sign with Kbuild's
-- sign-file), against the cold build of the same run (bench/real.lua).
--
-- In the last cold run's build cache: the unsigned modules signed with a
-- first key (what signing adds to a cold build), the signed set reused with
-- the same key (a restart), and signed again with a new key (a rotation:
-- from the cached unsigned modules, no compiler). Each is checked: the
-- modules read back signed by the key's certificate. Alone, on a filled cache
-- (the cold build time from elsewhere, for a look, not a target):
--   drvrun bench/sign.lua build/cache-real [COLD_SECONDS]
local fs = require "drv.fs"
local sys = require "drv.sys"
local kmod = require "drv.kmod"
local sign = require "drv.sign"
local util = require "bench.util"

local M = {}

local function keypair(dir, name)
  util.must({ "openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
              "-subj", "/CN=" .. name, "-keyout", dir .. "/" .. name .. ".key", "-out", dir .. "/" .. name .. ".crt" })
  return assert(sign.config({ SIGN_KEY = dir .. "/" .. name .. ".key", SIGN_CERT = dir .. "/" .. name .. ".crt",
                              SIGN_HASH = "sha256" }))
end

local function timed_sign(entry, modules, cfg, kver)
  local t0 = sys.monotonic()
  local signed, fresh = assert(sign.ensure(entry, modules, cfg, { kver = kver }))
  local dt = sys.monotonic() - t0
  for _, m in ipairs(signed) do
    local signer = assert(kmod.modinfo(m.path)).signer
    if signer ~= cfg.cert.subject.CN then error(("%s: signed by %s, not %s"):format(m.path, signer, cfg.cert.subject.CN)) end
  end
  return dt, fresh, #signed
end

--- Rows for the signing of the latest ubuntu-ofed build in `cache_dir`,
-- against `cold` seconds (nil: no ratios).
function M.run(rows, cache_dir, kver, cold, out)
  local build = util.cached_build(cache_dir, "ubuntu-ofed", kver)
  local modules = {}
  for _, m in ipairs(build.modules) do
    modules[#modules + 1] = { name = m.name, path = build.dir .. "/" .. m.file, sha256 = m.sha256 }
  end
  local keys = out .. "/sign-keys"
  fs.remove(keys, { recursive = true, missing_ok = true })
  assert(fs.mkdir(keys))
  local a, b = keypair(keys, "bench-key-a"), keypair(keys, "bench-key-b")
  fs.remove(build.dir .. "/signed", { recursive = true, missing_ok = true })
  local first, fresh, n = timed_sign(build.dir, modules, a, kver)
  assert(fresh, "the first signing found a signed set")
  local again, fresh2 = timed_sign(build.dir, modules, a, kver)
  assert(not fresh2, "the same key signed again")
  local rotated, fresh3 = timed_sign(build.dir, modules, b, kver)
  assert(fresh3, "a new key did not sign again")
  util.say("sign: %d modules %.2f s; same key again %.3f s; a new key %.2f s", n, first, again, rotated)
  rows[#rows + 1] = util.info(("real stack signed: %d modules, sign-file, a first key"):format(n), first, "s")
  rows[#rows + 1] = util.info("real stack signed set reused (same key: a restart)", again, "s")
  if cold then
    rows[#rows + 1] = util.target("real stack signing: its share of the cold build", first, "s", cold, first / cold,
      "<=", 0.05)
    rows[#rows + 1] = util.target("real stack re-signed with a new key from the cache / cold build", rotated, "s", cold,
      rotated / cold, "<=", 0.05)
  end
  fs.remove(build.dir .. "/signed", { recursive = true, missing_ok = true })
  fs.remove(keys, { recursive = true })
end

-- Alone: drvrun bench/sign.lua CACHE_DIR [COLD_SECONDS]
if arg and arg[0] and arg[0]:match("bench/sign%.lua$") then
  local cache_dir = assert(arg[1], "usage: drvrun bench/sign.lua CACHE_DIR [COLD_SECONDS]")
  local rows, out = {}, assert(fs.tmpdir("bench-sign"))
  local kver
  for _, name in ipairs(fs.dir(cache_dir .. "/ubuntu-ofed") or {}) do
    if fs.exists(("%s/ubuntu-ofed/%s/builds/recent"):format(cache_dir, name)) then kver = name end
  end
  M.run(rows, cache_dir, assert(kver, "no ubuntu-ofed build in " .. cache_dir), tonumber(arg[2]), out)
  io.write(util.format(rows))
  fs.remove(out, { recursive = true })
  return -- a script that returns a table is run as a recipe
end

return M
