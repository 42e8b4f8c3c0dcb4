-- guest-timeout: 2400 (UEFI boot, one depmod, three recipe runs, the real stack signed and loaded: 1312 s at load 20)
-- guest-vm: --uefi-db build/secureboot/db.crt --append module.sig_enforce=1 --boot-timeout 360
-- Module signatures on the guest's real kernel, booted through UEFI (OVMF) with
-- the test certificate build/secureboot/db.crt enrolled in the firmware's db
-- (the kernel loads it into its .platform keyring) and module.sig_enforce=1 on
-- its command line: drv.modsig's verdict on each module, then what the kernel
-- does with it. Fixture modules first (unsigned, signed with a key the kernel
-- does not trust, signed with the db key), then the real MLNX_OFED 25.10 stack
-- and the real nv_peer_memory 1.3 from build/cache-real, signed with the db key
-- by drv.sign and loaded under enforcement.
local modsig = require "drv.modsig"
local sign = require "drv.sign"
local cache = require "drv.cache"
local graph = require "drv.graph"
local stack = require "drv.stack"
local kmod = require "drv.kmod"
local mount = require "drv.mount"
local proc = require "drv.proc"
local fs = require "drv.fs"
local sys = require "drv.sys"
local guest = require "spec.support.guest"
local signing = require "spec.support.signing"

local KVER = sys.uname().release
local KEYS = fs.realpath("build/secureboot")
local EKEYREJECTED = "EKEYREJECTED"

local function db_config()
  return assert(sign.config({ SIGN_KEY = KEYS .. "/db.key", SIGN_CERT = KEYS .. "/db.crt", SIGN_HASH = "sha256" }))
end

local function dmesg()
  return assert(proc.run({ "dmesg" })).stdout
end

-- The kernel's own words about modules since `mark` (a dmesg text taken before).
local function kernel_said_since(mark)
  local now = dmesg()
  return now:sub(#mark + 1)
end

local function taint(name)
  return (fs.read(("/sys/module/%s/taint"):format(name)) or ""):gsub("%s+$", "")
end

-- The newest build of a recipe in a build cache: its entry directory and modules.
local function cached_build(cache_dir, recipe)
  local builds = ("%s/%s/%s/builds"):format(cache_dir, recipe, KVER)
  local id = assert(fs.read(builds .. "/recent"), "no build of " .. recipe .. " in " .. cache_dir):match("%x+")
  local dir = builds .. "/" .. id
  local manifest = assert(cache.read_table(dir .. "/manifest.lua"), "no manifest in " .. dir)
  local mods = {}
  for _, m in ipairs(manifest) do
    mods[#mods + 1] = { name = m.name, path = dir .. "/" .. m.file, sha256 = m.sha256, depends = m.depends }
  end
  return dir, mods
end

setup(function()
  -- as systemd mounts them on a node
  if not mount.is_mountpoint("/sys/kernel/security") then
    assert(mount.mount("securityfs", "/sys/kernel/security", "securityfs"))
  end
  assert(proc.run({ "modprobe", "efivarfs" }).status == 0)
  if not mount.is_mountpoint("/sys/firmware/efi/efivars") then
    assert(mount.mount("efivarfs", "/sys/firmware/efi/efivars", "efivarfs"))
  end
end)

describe("the guest's kernel", function()
  it("enforces module signatures and trusts the db certificate, in its .platform keyring", function()
    assert.matches("module.sig_enforce=1", fs.read("/proc/cmdline"))
    local enf = modsig.enforcement()
    assert.same({ true, true, "none", false }, { enf.enforced, enf.sig_enforce, enf.lockdown, enf.secure_boot })
    assert.equal("module.sig_enforce=Y, lockdown none, Secure Boot off (firmware in setup mode)", enf.text)
    local keys = assert(modsig.trusted_keys())
    local db = assert(modsig.read_cert(KEYS .. "/db.crt"))
    local found
    print("    the kernel's trusted keys (" .. enf.text .. "):")
    for _, k in ipairs(keys) do
      print(("      %s: %s"):format(k.keyring, k.description))
      if k.description == modsig.key_description(db) then found = k end
    end
    assert.truthy(found, "the db certificate's key is in a trusted keyring")
    assert.equal(".platform", found.keyring)
    assert.matches("Loaded X.509 cert '" .. modsig.key_description(db):gsub("%p", "%%%0") .. "'", dmesg())
  end)
end)

describe("fixture modules under module.sig_enforce=1", function()
  local dir, mods, untrusted, enf, keys, db
  setup(function()
    guest.unload_all()
    dir = assert(fs.tmpdir("sbfix"))
    mods = signing.modules(dir, { "mlx_compat", "ib_core" })
    untrusted = signing.keypair(dir, "drvrun untrusted key")
    enf, keys = modsig.enforcement(), assert(modsig.trusted_keys())
    db = db_config()
  end)
  teardown(function()
    guest.unload_all()
    fs.remove(dir, { recursive = true })
  end)

  it("an unsigned module: refused by the verdict, then by the kernel", function()
    local all, refused = modsig.check({ mods[1] }, { certs = { db.cert } })
    assert.same({ "mlx_compat", "unsigned", false }, { refused[1].name, all[1].signer, all[1].accepted })
    print("    verdict: " .. modsig.refusal(refused, enf, keys))
    local mark = dmesg()
    local ok, err, errno = kmod.insert_many({ { name = "mlx_compat", path = mods[1].path } })
    assert.same({ nil, EKEYREJECTED }, { ok, errno })
    print("    kernel: " .. err .. " / " .. kernel_said_since(mark):gsub("^%s+", ""):gsub("\n.*", ""))
    assert.matches("Loading of unsigned module is rejected", kernel_said_since(mark))
    assert.is_nil(guest.proc_line("mlx_compat"))
  end)

  it("signed with a key the kernel does not trust: refused by both, the key named", function()
    local cfg = assert(sign.config({ SIGN_KEY = untrusted.key, SIGN_CERT = untrusted.cert, SIGN_HASH = "sha256" }))
    local signed = assert(sign.ensure(dir, mods, cfg))
    local all, refused = modsig.check({ { name = "mlx_compat", path = signed[1].path } }, { certs = { cfg.cert } })
    assert.is_false(all[1].accepted)
    assert.equal(("signed by drvrun untrusted key (key %s, sha256), a key none of the kernel's trusted keyrings holds")
                 :format(cfg.cert.serial), refused[1].reason)
    local msg = modsig.refusal(refused, enf, keys, { cert_path = untrusted.cert })
    print("    verdict: " .. msg)
    assert.truthy(msg:find("mokutil --import " .. untrusted.cert, 1, true))
    local mark = dmesg()
    local ok, _, errno = kmod.insert_many({ { name = "mlx_compat", path = signed[1].path } })
    assert.same({ nil, EKEYREJECTED }, { ok, errno })
    assert.matches("Loading of module with unavailable key is rejected", kernel_said_since(mark))
    assert.is_nil(guest.proc_line("mlx_compat"))
  end)

  it("signed with the db key: accepted by both, loaded untainted by the signature", function()
    local signed = assert(sign.ensure(dir, mods, db))
    local all, refused = modsig.check({ { name = "mlx_compat", path = signed[1].path },
                                        { name = "ib_core", path = signed[2].path } }, { certs = { db.cert } })
    assert.same({}, refused)
    assert.same({ ".platform", ".platform" }, { all[1].keyring, all[2].keyring })
    print("    verdict: " .. modsig.describe(all[1]))
    assert(stack.load({ { "mlx_compat" }, { "ib_core" } }, { mlx_compat = signed[1].path, ib_core = signed[2].path }))
    assert.truthy(guest.proc_line("ib_core"))
    assert.equal("O", taint("mlx_compat")) -- out of tree; no E: the signature was verified
    assert.equal("O", taint("ib_core"))
  end)
end)

describe("recipes/ubuntu-ofed.lua under module.sig_enforce=1 (the simulated bundle)", function()
  local ofed = require "spec.support.ofed"
  local INSTALLED = ("/lib/modules/%s/updates/ubuntu-ofed"):format(KVER)
  local env, dir, untrusted

  -- Where each loaded module of `names` sits in memory: the same addresses
  -- after a run mean it was never unloaded.
  local function addresses(names)
    local at = {}
    for _, n in ipairs(names) do at[n] = assert(guest.proc_line(n), n .. " loaded"):match("(0x%x+)%s*$") end
    return at
  end

  setup(function()
    env = ofed.setup()
    dir = assert(fs.tmpdir("sbrecipe"))
    untrusted = signing.keypair(dir, "drvrun untrusted key")
  end)
  after_each(function() ofed.cleanup() end)
  teardown(function()
    env.server:stop()
    ofed.reset_modules()
    fs.remove(dir, { recursive = true })
  end)

  local function refused(args, want)
    local inbox = ofed.load_inbox()
    local before = addresses(inbox)
    local status, log = ofed.run(env, args)
    assert.equal(1, status, log)
    local msg = assert(log:match("[^\n]*the kernel would refuse[^\n]*"), log)
    print("    " .. msg:gsub("^%S+ %S+ ", ""))
    for _, w in ipairs(want) do assert.truthy(msg:find(w, 1, true), "the refusal names " .. w) end
    assert.is_nil(log:find("phase install started", 1, true), "refused before install")
    assert.same(before, addresses(inbox)) -- the inbox modules never left
    ofed.assert_host_as_it_was(inbox)
  end

  it("an unsigned build is refused in prepare; the inbox stack is never unloaded", function()
    refused({}, { "unsigned (SIGN_KEY and SIGN_CERT are not set)", "module.sig_enforce=Y", "mokutil --import" })
  end)

  it("a build signed with a key the kernel does not trust is refused in prepare, the key named", function()
    local c = assert(modsig.read_cert(untrusted.cert))
    refused({ "SIGN_KEY=" .. untrusted.key, "SIGN_CERT=" .. untrusted.cert },
            { "signed by drvrun untrusted key (key " .. c.serial, "mokutil --import " .. untrusted.cert })
  end)

  it("signed with the db key: swapped, ready, stopped, the inbox stack back", function()
    -- the cache's build signed as a run signs it, and installed with the index made once
    -- (depmod reads 4000 modules over 9p: minutes under emulation; a signature changes no index)
    local inbox = ofed.load_inbox() -- first: it puts the unsigned build back under updates/
    env.cache = ofed.fresh_cache()
    local entry, built = cached_build(env.cache, "ubuntu-ofed")
    local signed = assert(sign.ensure(entry, built, db_config()))
    for _, m in ipairs(signed) do assert(fs.copy(m.path, INSTALLED .. "/" .. m.name .. ".ko")) end
    local p, log = ofed.start(env, { "SIGN_KEY=" .. KEYS .. "/db.key", "SIGN_CERT=" .. KEYS .. "/db.crt" })
    local ready = ofed.wait_for(ofed.READY[2], p, 600)
    local text = assert(fs.read(log))
    assert(ready, "not ready: " .. text)
    assert.matches("signatures: the kernel will accept all 13 built modules", text, nil, true)
    assert.matches("already installed", text, nil, true)
    for _, n in ipairs(ofed.STACK) do
      assert.equal("drvrun test db key", assert(kmod.modinfo(INSTALLED .. "/" .. n .. ".ko")).signer, n)
      assert.equal("O", taint(n), n)
    end
    assert.is_true(sys.kill(p:pid(), "TERM"))
    local r = assert(p:wait(120))
    assert.equal(0, r.status, fs.read(log))
    for _, n in ipairs(inbox) do assert.equal("", taint(n), n .. " is the inbox module again") end
    -- the plan under enforcement: each module's signer and verdict
    local plan = assert(proc.run({ os.getenv("DRVRUN"), "--plan", "recipes/ubuntu-ofed.lua", "CACHE_DIR=" .. env.cache,
      "OFED_URL=" .. env.server:url(env.bundle), "OFED_SHA256=" .. env.sha,
      "SIGN_KEY=" .. KEYS .. "/db.key", "SIGN_CERT=" .. KEYS .. "/db.crt" }))
    assert.equal(0, plan.status, plan.stderr)
    assert.matches("\nsignatures: module.sig_enforce=Y, lockdown none, Secure Boot off %(firmware in setup mode%) "
                   .. "%(enforced: module.sig_enforce=Y%)\n", plan.stdout)
    for _, n in ipairs(ofed.STACK) do
      local line = plan.stdout:match("\nmodule " .. n .. ": [^\n]*")
      assert.matches("^\nmodule " .. n .. ": signed by drvrun test db key %(key %x+, sha256%): accepted, its key is in "
                     .. "%.platform$", line)
    end
    print("    plan: " .. plan.stdout:match("\n(signatures: [^\n]*)") .. " / "
          .. plan.stdout:match("\n(module mlx5_core: [^\n]*)"))
    env.cache = nil
  end)
end)

describe("the real MLNX_OFED 25.10 stack and nv_peer_memory 1.3 under module.sig_enforce=1", function()
  local STACK = { "mlx_compat", "ib_core", "mlxdevm", "ib_cm", "iw_cm", "ib_uverbs", "ib_umad", "rdma_cm", "rdma_ucm",
                  "mlx5_core", "mlx5_ib", "ib_ipoib" }
  local copy
  setup(function()
    guest.unload_all()
    copy = assert(fs.tmpdir("sbreal")) -- the guest's own copy of the builds (not ccache): signed sets go there
    for _, recipe in ipairs({ "ubuntu-ofed", "peermem" }) do
      assert(fs.mkdir(copy .. "/" .. recipe))
      local builds = ("%s/%s/%s"):format(fs.realpath("build/cache-real"), recipe, KVER)
      assert(proc.run({ "cp", "-a", builds, copy .. "/" .. recipe }).status == 0)
    end
  end)
  teardown(function()
    guest.unload_all()
    fs.remove(copy, { recursive = true })
  end)

  it("signs the stack from the cache with the db key and loads it, verified", function()
    local dir, built = cached_build(copy, "ubuntu-ofed")
    local t0 = sys.monotonic()
    local signed = assert(sign.ensure(dir, built, db_config()))
    print(("    %d real modules signed in %.1f s (under emulation)"):format(#signed, sys.monotonic() - t0))
    local _, refused = modsig.check(signed, { certs = { db_config().cert } })
    assert.same({}, refused)
    local deps, kernel = assert(stack.from_build(STACK, built))
    local inbox = stack.inbox(assert(kmod.new()), kernel)
    assert(stack.load(inbox.levels, inbox.paths)) -- psample, tls, mlxfw...: the kernel's own, Debian-signed
    local paths = {}
    for _, m in ipairs(signed) do paths[stack.module_name(m.name)] = m.path end
    assert(stack.load(assert(graph.levels(deps)), paths))
    for _, n in ipairs(STACK) do
      assert.truthy(guest.proc_line(n), n .. " loaded")
      assert.equal("O", taint(n), n .. " taint")
    end
    local version = (fs.read("/sys/module/mlx5_core/version") or ""):gsub("%s+$", "")
    assert.matches("^25%.10", version)
    print(("    mlx5_core %s loaded under enforcement, signed by %s"):format(version,
          assert(kmod.modinfo(paths.mlx5_core)).signer))
  end)

  it("signs nv_peer_mem and the fixture nvidia module, and loads them on the stack", function()
    local dir, built = cached_build(copy, "peermem")
    local peermem = assert(sign.ensure(dir, built, db_config()))
    local nvidia = { name = "nvidia", path = copy .. "/nvidia.ko" } -- the fixture driver nv_peer_mem was built against
    assert(fs.copy(("%s/nvidia-root/lib/modules/%s/kernel/drivers/video/nvidia.ko"):format(guest.built, KVER), nvidia.path))
    nvidia.sha256 = assert(fs.sha256(nvidia.path))
    assert(fs.mkdir(copy .. "/nvidia-entry"))
    local nvsigned = assert(sign.ensure(copy .. "/nvidia-entry", { nvidia }, db_config()))
    assert(stack.load({ { "nvidia" }, { "nv_peer_mem" } }, { nvidia = nvsigned[1].path, nv_peer_mem = peermem[1].path }))
    assert.equal("O", taint("nv_peer_mem"))
    print("    nv_peer_mem " .. (fs.read("/sys/module/nv_peer_mem/version") or "?"):gsub("%s+$", "")
          .. " loaded under enforcement; memory_peers: " .. tostring(fs.exists("/sys/kernel/mm/memory_peers/nv_mem")))
    assert.matches("^1%.3", fs.read("/sys/module/nv_peer_mem/version"))
  end)
end)
