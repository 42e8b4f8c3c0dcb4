--- drv.sign: built modules signed with the operator's key, by the kernel's own signer.
--
-- The build cache keeps the unsigned build; signed copies are made from it
-- into the entry, one set per certificate and hash:
--
--   CACHE_DIR/<recipe>/<kernel>/builds/<id>/signed/<cert sha256, 16>-<hash>/
--     <module>.ko...   signed with sign-file (Kbuild's scripts/sign-file)
--     cert.der         the certificate (public): what the modules' signatures name
--     set.lua          { cert = sha256, hash, { name, file, from = unsigned sha256, sha256 }... }
--
-- A set is used while its certificate and hash are the configured ones and every
-- module it holds was signed from the entry's unsigned module and is unchanged;
-- otherwise it is made again from the unsigned modules, with no compiler (a new
-- key re-signs in seconds). The key is read by the signer only: it is never
-- copied, logged or written anywhere; a PIN reaches the signer in its environment.
--
--   local cfg = assert(sign.config(opt))          -- nil: nothing to sign with
--   local set = assert(sign.ensure(entry_dir, modules, cfg, { kver = kver }))
--   for _, m in ipairs(set) do print(m.name, m.path, m.sha256) end
local M = {}

local cache = require "drv.cache"
local proc = require "drv.proc"
local fs = require "drv.fs"
local log = require "drv.log"
local sys = require "drv.sys"
local modsig = require "drv.modsig"

--- The signing configuration from the options: nil when SIGN_CERT and SIGN_KEY are
-- empty (modules are not signed), else `{ key, cert (drv.cert.parse, with path), hash,
-- pin_file, sign_file }`; nil and a message for the operator when it is unusable.
function M.config(opt)
  local key, cert_path = opt.SIGN_KEY or "", opt.SIGN_CERT or ""
  if key == "" and cert_path == "" then return nil end
  if cert_path == "" then
    return nil, "SIGN_KEY is set but SIGN_CERT is not: the signer needs the key's certificate (PEM or DER)"
  end
  if key:match("^pkcs11:") then
    if key:match("[;?]pin%-value=") then
      return nil, "SIGN_KEY: the PKCS#11 URI holds a pin-value; put the PIN in a file and set SIGN_PIN_FILE instead "
                  .. "(the URI is shown in plans and logs)"
    end
  elseif key ~= "" and not fs.exists(key) then
    return nil, ("SIGN_KEY %s: no such file (mount the key's Secret there, or set SIGN_KEY to its path)"):format(key)
  end
  local c, err = modsig.read_cert(cert_path)
  if not c then return nil, "SIGN_CERT " .. err end
  local pin_file = opt.SIGN_PIN_FILE or ""
  if pin_file ~= "" and not fs.exists(pin_file) then return nil, ("SIGN_PIN_FILE %s: no such file"):format(pin_file) end
  return { key = key ~= "" and key or nil, cert = c, hash = opt.SIGN_HASH or "sha256",
           pin_file = pin_file ~= "" and pin_file or nil, sign_file = opt.SIGN_FILE ~= "" and opt.SIGN_FILE or nil }
end

local function executable(path)
  local st = fs.stat(path)
  return st and st.type == "file" and st.mode & 0x49 ~= 0
end

--- The signer for kernel `kver`: `override` when given, else scripts/sign-file of the
-- kernel's build directory (/lib/modules/KVER/build), then of its source directory,
-- then Debian's /usr/lib/linux-kbuild-X.Y/scripts/sign-file.
-- @treturn[1] string its path
-- @treturn[2] nil, string the places looked at
function M.signer(kver, override, root)
  if override then
    if executable(override) then return override end
    return nil, ("SIGN_FILE %s: not an executable file"):format(override)
  end
  local base = ("%s/lib/modules/%s"):format(root or "", kver)
  local candidates = { base .. "/build/scripts/sign-file", base .. "/source/scripts/sign-file" }
  local major_minor = kver:match("^(%d+%.%d+)")
  if major_minor then
    candidates[#candidates + 1] = ("%s/usr/lib/linux-kbuild-%s/scripts/sign-file"):format(root or "", major_minor)
  end
  for _, path in ipairs(candidates) do
    if executable(path) then return path end
  end
  return nil, ("no module signer for kernel %s: none of %s (install linux-headers-%s, or set SIGN_FILE)")
    :format(kver, table.concat(candidates, ", "), kver)
end

-- The signer's own words: its stderr without OpenSSL's "At main.c:N:" location lines.
local function signer_words(res)
  local lines = {}
  for line in ((res.stderr or "") .. "\n" .. (res.stdout or "")):gmatch("[^\n]+") do
    if not line:match("^At main%.c:%d+:$") then lines[#lines + 1] = line:gsub("^%- ", "") end
  end
  return #lines > 0 and table.concat(lines, "; ") or ("exited " .. tostring(res.status or res.signal))
end

--- Sign module `src` into `dest` with `signer` and `cfg` (M.config, with a key).
-- @tparam[opt] table o `{ pin = the PIN, timeout = 60, interrupt_fd }`
-- @treturn[1] true
-- @treturn[2] nil, "sign-file: <its words>", errno?
function M.sign_file(signer, cfg, src, dest, o)
  o = o or {}
  local env = o.pin and { KBUILD_SIGN_PIN = o.pin } or nil
  local res, err, errno = proc.run({ signer, cfg.hash, cfg.key, cfg.cert.path, src, dest },
                                   { env = env, timeout = o.timeout or 60, interrupt_fd = o.interrupt_fd })
  if not res then return nil, err, errno end
  if res.interrupted then return nil, "sign-file: interrupted", 4 end
  if res.status ~= 0 then
    fs.remove(dest, { missing_ok = true })
    return nil, ("sign-file %s: %s"):format(src:match("[^/]+$"), signer_words(res))
  end
  return true
end

--- Where the set of `cfg`'s certificate and hash goes in the entry at `entry_dir`.
function M.set_dir(entry_dir, cfg)
  return ("%s/signed/%s-%s"):format(entry_dir, cfg.cert.sha256:sub(1, 16), cfg.hash)
end

-- The signed modules of the set in `dir`, when it holds a copy of each of `modules`
-- signed from it, unchanged; nil otherwise.
local function load_set(dir, modules, cfg, sha256)
  local set = cache.read_table(dir .. "/set.lua", "signed set")
  if not set or set.cert ~= cfg.cert.sha256 or set.hash ~= cfg.hash or #set ~= #modules then return nil end
  local by_name = {}
  for _, s in ipairs(set) do by_name[s.name] = s end
  local signed = {}
  for i, m in ipairs(modules) do
    local s = by_name[m.name]
    if not s or s.from ~= m.sha256 then return nil end
    local path = dir .. "/" .. s.file
    if sha256(path) ~= s.sha256 then return nil end
    signed[i] = { name = m.name, path = path, sha256 = s.sha256, from = m.sha256 }
  end
  return signed
end

-- Sign every module into a fresh directory beside `dir`, then rename it into place.
local function make_set(dir, modules, cfg, signer, o)
  local parent = dir:match("^(.*)/[^/]+$")
  local ok, err = fs.mkdir(parent)
  if not ok then return nil, err end
  local tmp = ("%s/.new-%d"):format(parent, sys.getpid())
  fs.remove(tmp, { recursive = true, missing_ok = true })
  ok, err = fs.mkdir(tmp)
  if not ok then return nil, err end
  local pin
  if cfg.pin_file then
    pin, err = fs.read(cfg.pin_file)
    if not pin then return nil, "SIGN_PIN_FILE " .. err end
    pin = pin:gsub("\r?\n$", "")
  end
  local lines = { ("return { cert = %q, hash = %q,"):format(cfg.cert.sha256, cfg.hash) }
  for _, m in ipairs(modules) do
    local file = m.name .. ".ko"
    local sok, serr, errno = M.sign_file(signer, cfg, m.path, tmp .. "/" .. file,
                                         { pin = pin, interrupt_fd = o.interrupt_fd })
    if not sok then
      fs.remove(tmp, { recursive = true, missing_ok = true })
      return nil, serr, errno
    end
    lines[#lines + 1] = ("{ name = %q, file = %q, from = %q, sha256 = %q },"):format(m.name, file, m.sha256,
      assert(fs.sha256(tmp .. "/" .. file)))
  end
  lines[#lines + 1] = "}"
  ok, err = fs.write(tmp .. "/cert.der", cfg.cert.der)
  if ok then ok, err = fs.write(tmp .. "/set.lua", table.concat(lines, "\n") .. "\n") end
  if ok then
    fs.remove(dir, { recursive = true, missing_ok = true })
    ok, err = fs.rename(tmp, dir)
  end
  if not ok then
    fs.remove(tmp, { recursive = true, missing_ok = true })
    return nil, err
  end
  return true
end

-- Remove the entry's other sets: a key rotated away is not rolled back to.
local function prune_sets(dir)
  local parent, keep = dir:match("^(.*)/([^/]+)$")
  for _, name in ipairs(fs.dir(parent) or {}) do
    if name ~= keep then fs.remove(parent .. "/" .. name, { recursive = true, missing_ok = true }) end
  end
end

--- The cached signed copies of `modules` for `cfg` (as M.ensure), or nil: nothing is signed.
function M.cached(entry_dir, modules, cfg, o)
  return load_set(M.set_dir(entry_dir, cfg), modules, cfg, (o or {}).sha256 or fs.sha256)
end

--- The signed copies of `modules` (`{ name, path, sha256 }`..., the entry's unsigned
-- ones) for `cfg`: the cached set when it is current, else a new one signed from them
-- (only with a key: without one, fails naming the certificate).
-- @tparam string entry_dir the build cache entry
-- @tparam table modules
-- @tparam table cfg M.config()
-- @tparam[opt] table o `{ kver, sha256 = function(path) (default fs.sha256), interrupt_fd }`
-- @treturn[1] table `{ { name, path, sha256, from }... }` in the order of `modules`
-- @treturn[1] boolean true when it was signed now
-- @treturn[2] nil, string message, errno?
function M.ensure(entry_dir, modules, cfg, o)
  o = o or {}
  local sha256 = o.sha256 or fs.sha256
  local dir = M.set_dir(entry_dir, cfg)
  local signed = load_set(dir, modules, cfg, sha256)
  if signed then return signed, false end
  if not cfg.key then
    return nil, ("no modules signed with certificate %s (sha256 %s) in %s, and no SIGN_KEY to sign them with")
      :format(cfg.cert.path, cfg.cert.sha256, entry_dir)
  end
  local signer, err = M.signer(o.kver or sys.uname().release, cfg.sign_file)
  if not signer then return nil, err end
  local t0 = sys.monotonic()
  local ok, serr, errno = make_set(dir, modules, cfg, signer, o)
  if not ok then return nil, serr, errno end
  prune_sets(dir)
  log.info("sign: %d modules signed with %s (%s, certificate sha256 %s) by %s in %s s", #modules,
           modsig.kernel_name(cfg.cert.subject), cfg.hash, cfg.cert.sha256:sub(1, 16), signer,
           log.seconds(sys.monotonic() - t0))
  signed = load_set(dir, modules, cfg, sha256)
  if not signed then return nil, "sign: the signed set in " .. dir .. " does not read back" end
  return signed, true
end

return M
