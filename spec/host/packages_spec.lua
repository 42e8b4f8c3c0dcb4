-- drv.packages: which package a distribution names a kernel's headers and modules, and its tool.
local packages = require "drv.packages"

describe("drv.packages", function()
  it("tells the family from os-release's ID, else the first known word of ID_LIKE", function()
    assert.equal("debian", packages.family { ID = "debian", VERSION_ID = "12" })
    assert.equal("ubuntu", packages.family { ID = "ubuntu" })
    assert.equal("ubuntu", packages.family { ID = "linuxmint", ID_LIKE = "ubuntu debian" })
    assert.equal("rhel", packages.family { ID = "rocky", ID_LIKE = "rhel centos fedora" })
    assert.equal("fedora", packages.family { ID = "fedora" })
  end)

  it("names this machine's packages of a kernel as its distribution does", function()
    -- this machine is Debian: linux-image-K holds /lib/modules/K (Ubuntu splits it into linux-modules-K)
    assert.equal("debian", packages.family())
    assert.equal("linux-headers-6.1.0-57-amd64", packages.kernel_headers("6.1.0-57-amd64"))
    assert.equal("linux-image-6.1.0-57-amd64", packages.kernel_modules("6.1.0-57-amd64"))
  end)

  it("fails with the package tool's own words", function()
    -- a package that cannot exist: apt-get refreshes its lists once, then says so
    local ok, err = packages.install({ "drvrun-no-such-package" }, { timeout = 600 })
    assert.is_nil(ok)
    assert.equal("Unable to locate package drvrun-no-such-package", err)
  end)
end)
