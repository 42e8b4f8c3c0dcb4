-- drv.keyctl on this machine's kernel: a keyring of the spec's own (made with
-- keyutils' keyctl) holding a real X.509 key, and the kernel's own keyrings
-- as /proc/keys names them.
local keyctl = require "drv.keyctl"
local fs = require "drv.fs"
local sys = require "drv.sys"
local sh = require "spec.support.sh"
local signing = require "spec.support.signing"

local function run(cmd)
  local res = sh.run(cmd)
  assert(res.status == 0, cmd .. ": " .. res.stderr)
  return (res.stdout:gsub("%s+$", ""))
end

describe("drv.keyctl", function()
  local dir, ring, key, k
  setup(function()
    dir = assert(fs.tmpdir("keyctlspec"))
    k = signing.keypair(dir, "drvrun keyctl spec")
    ring = tonumber(run("keyctl newring drvrun-spec @u"))
    key = tonumber(run(("keyctl padd asymmetric '' %d < %s"):format(ring, sh.quote(k.der))))
  end)
  teardown(function()
    sh.run(("keyctl unlink %d @u"):format(ring))
    fs.remove(dir, { recursive = true })
  end)

  it("lists what a keyring holds", function()
    assert.same({ key }, assert(keyctl.list(ring)))
    assert.same({ key }, assert(keyctl.list(("%08x"):format(ring)))) -- as /proc/keys shows it
  end)

  it("describes a key as the kernel names it: subject, then key identifier", function()
    local d = assert(keyctl.describe(key))
    assert.equal("asymmetric", d.type)
    assert.equal(sys.geteuid(), d.uid)
    local c = require("drv.cert").parse(assert(fs.read(k.der)))
    assert.equal("drvrun keyctl spec: " .. c.skid, d.description)
    assert.equal(run(("keyctl rdescribe %d"):format(key)),
                 ("%s;%d;%d;%08x;%s"):format(d.type, d.uid, d.gid, d.perm, d.description))
    assert.same({ type = "keyring", description = "drvrun-spec" },
                { type = keyctl.describe(ring).type, description = keyctl.describe(ring).description })
  end)

  it("reads the kernel's own keyring that /proc/keys names", function()
    local id = assert(fs.read("/proc/keys")):match("(%x+) [^\n]- keyring%s+%.builtin_trusted_keys:")
    assert.truthy(id, "no .builtin_trusted_keys in /proc/keys")
    assert.equal(".builtin_trusted_keys", assert(keyctl.describe(id)).description)
    assert.is_table(assert(keyctl.list(id)))
  end)

  it("fails on a key that does not exist, naming it", function()
    assert.same({ nil, "key 7ffffff0: no such key", "ENOKEY" }, { keyctl.list(0x7ffffff0) })
    assert.same({ nil, "key 7ffffff0: no such key", "ENOKEY" }, { keyctl.describe("7ffffff0") })
  end)

  it("raises on a serial that is not one", function()
    local ok, err = pcall(keyctl.list, "not hex")
    assert.is_false(ok)
    assert.equal("bad argument #1 to 'drv.keyctl.list' (key serial expected (an integer, or hex as in /proc/keys))", err)
  end)
end)
