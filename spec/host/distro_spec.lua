local distro = require "drv.distro"
local fs = require "drv.fs"

describe("drv.distro", function()
  it("parses os-release with quotes, escapes and comments", function()
    local path = fs.tmpdir("osr") .. "/os-release"
    assert(fs.write(path, '# comment\nID=ubuntu\nVERSION_ID="22.04"\nNAME=\'Ubuntu Linux\'\n'
      .. 'PRETTY_NAME="Ubuntu \\"Jammy\\" \\$HOME"\n\nBAD LINE\n'))
    local r = assert(distro.os_release(path))
    assert.same({ ID = "ubuntu", VERSION_ID = "22.04", NAME = "Ubuntu Linux", PRETTY_NAME = 'Ubuntu "Jammy" $HOME' }, r)
    assert.equal("ubuntu22.04", distro.id(r))
  end)

  it("reads this machine's os-release and architecture", function()
    assert.is_string(assert(distro.os_release()).ID)
    assert.equal(require("drv.sys").uname().machine, distro.arch())
  end)

  it("fails with the path for a missing file", function()
    local r, err = distro.os_release("/nonexistent/os-release")
    assert.is_nil(r)
    assert.equal("/nonexistent/os-release: No such file or directory", err)
  end)
end)
