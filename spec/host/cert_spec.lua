-- drv.cert against certificates openssl makes here, and what openssl itself
-- says about them.
local cert = require "drv.cert"
local fs = require "drv.fs"
local sys = require "drv.sys"
local sh = require "spec.support.sh"
local signing = require "spec.support.signing"

local function openssl(args, path)
  local res = sh.run(("openssl x509 -in %s -noout %s"):format(sh.quote(path), args))
  assert(res.status == 0, res.stderr)
  return res.stdout
end

describe("drv.cert.parse", function()
  local dir, k
  setup(function()
    dir = assert(fs.tmpdir("certspec"))
    k = signing.keypair(dir, "drvrun spec", { subject = "/O=Example Corp/CN=drvrun spec signing/emailAddress=ops@example.com" })
  end)
  teardown(function() fs.remove(dir, { recursive = true }) end)

  it("reads a PEM certificate as openssl does", function()
    local c = assert(cert.parse(assert(fs.read(k.cert))))
    assert.same({ CN = "drvrun spec signing", O = "Example Corp", email = "ops@example.com" }, c.subject)
    assert.same(c.subject, c.issuer) -- self-signed
    local serial = openssl("-serial", k.cert):match("serial=(%x+)"):lower():gsub("^0+", "")
    assert.equal(serial, c.serial)
    local skid = openssl("-ext subjectKeyIdentifier", k.cert):match("\n%s*([%x:]+)"):gsub(":", ""):lower()
    assert.equal(skid, c.skid)
    local fp = openssl("-fingerprint -sha256", k.cert):match("=([%x:]+)"):gsub(":", ""):lower()
    assert.equal(fp, c.sha256)
    assert.equal(fp, assert(fs.sha256(k.der))) -- the fingerprint is the DER's digest
    assert.equal(assert(fs.read(k.der)), c.der)
    assert.is_true(c.not_before <= sys.time() and c.not_after > sys.time() + 3000 * 86400)
  end)

  it("reads the same certificate in DER", function()
    local pem, der = assert(cert.parse(assert(fs.read(k.cert)))), assert(cert.parse(assert(fs.read(k.der))))
    assert.same(pem, der)
  end)

  it("fails on what is not a certificate", function()
    assert.same({ nil, "not an X.509 certificate (PEM or DER)", "EINVAL" }, { cert.parse("hello") })
    assert.same({ nil, "not an X.509 certificate (PEM or DER)", "EINVAL" }, { cert.parse("") })
    local key = assert(fs.read(k.key)) -- a PEM file, but a private key
    assert.same({ nil, "not an X.509 certificate (PEM or DER)", "EINVAL" }, { cert.parse(key) })
  end)
end)
