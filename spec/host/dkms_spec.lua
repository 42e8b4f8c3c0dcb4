-- drv.dkms (a DKMS source tree read as DKMS reads it) and recipes/dkms.lua on this machine,
-- up to what needs the running kernel: the real v4l2loopback-dkms 0.12.7 tree of Debian's
-- archive (make unpacks it into build/dkms), dkms.conf files of our own for the rules, and
-- the recipe's plan, build-only runs and refusals. The guest spec loads it.
local dkms = require "drv.dkms"
local proc = require "drv.proc"
local fs = require "drv.fs"

local KVER = require("spec.support.kernel").release -- the installed Debian kernel, its headers with it
local TREE = fs.realpath("build/dkms/usr/src/v4l2loopback-0.12.7")
local MACHINE = require("drv.sys").uname().machine

describe("drv.dkms", function()
  local dir
  before_each(function() dir = fs.tmpdir("dkms") end)
  after_each(function() fs.remove(dir, { recursive = true }) end)

  -- A tree whose dkms.conf is `text`.
  local function tree(text)
    assert(fs.write(dir .. "/dkms.conf", text))
    return dir
  end

  it("reads the real v4l2loopback 0.12.7 tree as DKMS does, its .config test run by bash", function()
    assert(TREE, "build/dkms is missing: make build/dkms/usr/src/v4l2loopback-0.12.7/dkms.conf")
    local t = assert(dkms.read(TREE, KVER))
    assert.equal("v4l2loopback", t.name)
    assert.equal("0.12.7", t.version)
    assert.same({ { name = "v4l2loopback", built = "v4l2loopback", location = "", dest = "/extra",
                    dest_name = "v4l2loopback" } }, t.modules)
    assert.same({ "v4l2loopback" }, t.stack)
    assert.is_nil(t.excluded, "Debian's kernel has CONFIG_VIDEO_DEV")
    assert.same({ ('MAKE[0]="make KERNEL_DIR=/lib/modules/%s/build all"'):format(KVER), 'CLEAN[0]="make clean"' },
                t.replaced)
    assert.same({}, t.not_run)
    assert.equal(t, dkms.buildable(t))
    local lines = table.concat(dkms.describe(t, KVER), "\n")
    assert.matches("module v4l2loopback: v4l2loopback.ko of the tree; DKMS would install it as /extra/v4l2loopback.ko "
                   .. "(Debian's and Ubuntu's DKMS in /updates/dkms/), this run in updates/v4l2loopback/", lines, nil, true)
  end)

  it("sources the file with DKMS's variables and defaults, in an environment of its own", function()
    local t = assert(dkms.read(tree([[
PACKAGE_NAME="hello-drv"
PACKAGE_VERSION="1.2${HOME:+-leaked}"
if [ "$arch" = "]] .. MACHINE .. [[" ] && [ -e "$kernel_source_dir/Makefile" ]; then
  BUILT_MODULE_NAME[0]="hello-core"
fi
BUILT_MODULE_LOCATION[0]="src"
DEST_MODULE_LOCATION[0]="/updates"
BUILT_MODULE_NAME[1]=hello_user
DEST_MODULE_NAME[1]=hello_renamed
DEST_MODULE_LOCATION[1]=/kernel/drivers/misc
PRE_BUILD="configure --kernel=$kernelver"
PATCH[0]=fix.patch
echo "dkms.conf's own output is not read"
]]), KVER))
    assert.equal("hello-drv", t.name)
    assert.equal("1.2", t.version, "the caller's environment is not the file's")
    assert.same({ { name = "hello_core", built = "hello-core", location = "src/", dest = "/updates", dest_name = "hello-core" },
                  { name = "hello_user", built = "hello_user", location = "", dest = "/kernel/drivers/misc",
                    dest_name = "hello_renamed" } }, t.modules)
    assert.same({ "hello_core", "hello_user" }, t.stack, "as the kernel names them")
    assert.same({ 'PATCH[0]="fix.patch"', ('PRE_BUILD[0]="configure --kernel=%s"'):format(KVER) }, t.not_run)
    assert.matches("\nnot done: PATCH", table.concat(dkms.describe(t, KVER), "\n"), nil, true)
    -- one DEST_MODULE_LOCATION: the module is the package's name
    t = assert(dkms.read(tree('PACKAGE_NAME=solo\nPACKAGE_VERSION=3\nDEST_MODULE_LOCATION[0]="/extra"\n'), KVER))
    assert.same({ "solo" }, t.stack)
  end)

  it("refuses what DKMS refuses, naming the file and the field", function()
    local conf = dir .. "/dkms.conf"
    local cases = {
      { 'PACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=x\nDEST_MODULE_LOCATION[0]=/extra\n',
        "PACKAGE_NAME '' is not a package name" },
      { 'PACKAGE_NAME=../x\nPACKAGE_VERSION=1\n', "PACKAGE_NAME '../x' is not a package name" },
      { 'PACKAGE_NAME=x\nPACKAGE_VERSION=1\n', "it names no module (BUILT_MODULE_NAME[0], DEST_MODULE_LOCATION[0])" },
      { 'PACKAGE_NAME=x\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=x\nDEST_MODULE_LOCATION[0]=/opt\n',
        "DEST_MODULE_LOCATION[0] '/opt': it must begin with /kernel, /updates or /extra" },
      { 'PACKAGE_NAME=x\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=x\n', "DEST_MODULE_LOCATION[0] is missing" },
      { 'PACKAGE_NAME=x\nPACKAGE_VERSION=1\nDEST_MODULE_LOCATION[0]=/extra\nDEST_MODULE_LOCATION[1]=/extra\n'
        .. 'BUILT_MODULE_NAME[1]=y\n', "no BUILT_MODULE_NAME[0]" },
      { 'PACKAGE_NAME=x\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=x.ko\nDEST_MODULE_LOCATION[0]=/extra\n',
        "BUILT_MODULE_NAME[0] or DEST_MODULE_NAME[0] ends in .o or .ko" },
      { 'PACKAGE_NAME=x\nif then\n', "PACKAGE_VERSION '' is not a version (bash said: " },
    }
    for _, case in ipairs(cases) do
      local t, err = dkms.read(tree(case[1]), KVER)
      assert.is_nil(t, case[1])
      assert.matches(conf .. ": " .. case[2], err, nil, true)
    end
    local t, err = dkms.read(dir .. "/none", KVER)
    assert.is_nil(t)
    assert.equal(dir .. "/none/dkms.conf: cannot read it: is " .. dir .. "/none a DKMS source tree (/usr/src/NAME-VERSION)?",
                 err)
    assert.same({ nil, "no DKMS source tree given (a directory with a dkms.conf, as /usr/src/NAME-VERSION)" },
                { dkms.read("", KVER) })
    assert.has_error(function() dkms.read(nil, KVER) end, "bad argument #1 to 'read' (string expected, got nil)")
  end)

  it("evaluates BUILD_EXCLUSIVE_KERNEL, _ARCH and _CONFIG as DKMS does, against the kernel's .config", function()
    local head = 'PACKAGE_NAME=x\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=x\nDEST_MODULE_LOCATION[0]=/extra\n'
    local cases = {
      { 'BUILD_EXCLUSIVE_KERNEL="^5\\."', ('BUILD_EXCLUSIVE_KERNEL="^5\\." (kernel %s)'):format(KVER) },
      { 'BUILD_EXCLUSIVE_KERNEL="^6\\.1\\."', nil },
      { 'BUILD_EXCLUSIVE_ARCH="^(aarch64|ppc64le)$"', ('BUILD_EXCLUSIVE_ARCH="^(aarch64|ppc64le)$" (arch %s)'):format(MACHINE) },
      { 'BUILD_EXCLUSIVE_CONFIG="CONFIG_VIDEO_DEV CONFIG_MODULES"', nil },
      { 'BUILD_EXCLUSIVE_CONFIG="CONFIG_VIDEO_DEV !CONFIG_MODULES"',
        ('BUILD_EXCLUSIVE_CONFIG="CONFIG_VIDEO_DEV !CONFIG_MODULES" (!CONFIG_MODULES in /lib/modules/%s/build/.config)')
          :format(KVER) },
      { 'BUILD_EXCLUSIVE_CONFIG="CONFIG_NOT_A_THING"', ('BUILD_EXCLUSIVE_CONFIG="CONFIG_NOT_A_THING" (CONFIG_NOT_A_THING '
                                                        .. 'in /lib/modules/%s/build/.config)'):format(KVER) },
    }
    for _, case in ipairs(cases) do
      local t = assert(dkms.read(tree(head .. case[1] .. "\n"), KVER))
      assert.equal(case[2], t.excluded, case[1])
      local ok, err = dkms.buildable(t)
      if case[2] then
        assert.is_nil(ok)
        assert.equal(("x 1 does not build for this kernel: %s/dkms.conf sets %s"):format(dir, case[2]), err)
      else
        assert.equal(t, ok)
      end
    end
    assert.same({ nil, "why" }, { dkms.buildable(nil, "why") })
  end)

  it("takes the modules the file names from a build, where BUILT_MODULE_LOCATION says", function()
    local t = assert(dkms.read(tree('PACKAGE_NAME=p\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=a\nBUILT_MODULE_LOCATION[0]=src/\n'
                                    .. 'DEST_MODULE_LOCATION[0]=/extra\n'), KVER))
    local a, other = { path = "/w/p-1/src/a.ko" }, { path = "/w/p-1/b.ko" }
    assert.same({ a }, assert(dkms.built(t, "/w/p-1", { other, a })), "only the named ones")
    local none, err = dkms.built(t, "/w/p-1", { other, { path = "/w/p-1/a.ko" } })
    assert.is_nil(none)
    assert.equal(dir .. "/dkms.conf names src/a.ko (BUILT_MODULE_NAME, BUILT_MODULE_LOCATION), which the build did "
                 .. "not make; it made: a.ko b.ko", err)
  end)

  it("takes module parameters in the kernel command line's form, for the stack's modules", function()
    assert.same({ v4l2loopback = "devices=2 video_nr=7,8", hello_user = "x=" },
                dkms.params("v4l2loopback.devices=2  hello-user.x= v4l2loopback.video_nr=7,8",
                            { "v4l2loopback", "hello_user" }))
    assert.same({}, dkms.params("", { "a" }))
    assert.same({ nil, "'devices=2' is not MODULE.PARAM=VALUE" }, { dkms.params("devices=2", { "a" }) })
    assert.same({ nil, "'b.x=1': b is not a module of the stack (a c)" }, { dkms.params("b.x=1", { "a", "c" }) })
  end)
end)

describe("recipes/dkms.lua on this machine", function()
  local dir
  setup(function()
    assert(TREE, "build/dkms is missing: make build/dkms/usr/src/v4l2loopback-0.12.7/dkms.conf")
    dir = fs.tmpdir("dkms-recipe")
  end)
  teardown(function() fs.remove(dir, { recursive = true }) end)

  local function run(args, flags)
    local argv = { os.getenv("DRVRUN") }
    for _, a in ipairs(flags or {}) do argv[#argv + 1] = a end
    for _, a in ipairs { "recipes/dkms.lua", "KVER=" .. KVER, "STATE_DIR=" .. dir .. "/state", "LOCK_FILE=" .. dir
                         .. "/lock", "CACHE_DIR=" .. dir .. "/cache", "READY_FILES=" .. dir .. "/ready" } do
      argv[#argv + 1] = a
    end
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    return assert(proc.run(argv))
  end

  it("plans the package's run from its dkms.conf", function()
    local r = run({ "DKMS_SOURCE=" .. TREE }, { "--plan" })
    assert.equal(0, r.status, r.stderr)
    for _, line in ipairs {
      "plan: v4l2loopback 0.12.7 for kernel " .. KVER,
      "dkms: v4l2loopback 0.12.7, read from " .. TREE .. "/dkms.conf for kernel " .. KVER,
      "dkms: module v4l2loopback: v4l2loopback.ko of the tree; DKMS would install it as /extra/v4l2loopback.ko",
      "dkms: not run: MAKE[0]=",
      "source: tree " .. TREE,
      ("build: v4l2loopback into %s/cache/v4l2loopback/%s"):format(dir, KVER),
      ("install: /lib/modules/%s/updates/v4l2loopback/"):format(KVER),
      "load: v4l2loopback (after the build",
      "ready: " .. dir .. "/ready",
    } do
      assert.matches("\n" .. line, "\n" .. r.stdout, nil, true)
    end
  end)

  it("builds the real tree for KVER into ROOT (build-only), and finds it in the cache next time", function()
    local root = dir .. "/root"
    local r = run { "DKMS_SOURCE=" .. TREE, "BUILD_ONLY=true", "ROOT=" .. root }
    assert.equal(0, r.status, r.stderr)
    assert.matches("build v4l2loopback-0.12.7 for " .. KVER .. ": make -j", r.stderr, nil, true)
    local ko = ("%s/lib/modules/%s/updates/v4l2loopback/v4l2loopback.ko"):format(root, KVER)
    local info = assert(require("drv.kmod").modinfo(ko))
    assert.equal("v4l2loopback", info.name)
    assert.equal(KVER, info.vermagic:match("^%S+"))
    assert.same({ "videodev" }, info.depends)
    assert.is_string(info.srcversion)
    assert.matches("^updates/v4l2loopback/v4l2loopback%.ko:", fs.read(("%s/lib/modules/%s/modules.dep"):format(root, KVER)))
    r = run { "DKMS_SOURCE=" .. TREE, "BUILD_ONLY=true", "ROOT=" .. root }
    assert.equal(0, r.status, r.stderr)
    assert.matches("build: cache hit for kernel " .. KVER, r.stderr, nil, true)
    assert.is_nil(r.stderr:find("make -j", 1, true))
  end)

  it("refuses, before building, a tree without a dkms.conf, a kernel the tree excludes and bad MODULE_PARAMS", function()
    local r = run {}
    assert.equal(1, r.status, r.stderr)
    assert.matches("recipes/dkms.lua: DKMS_SOURCE: no DKMS source tree given (a directory with a dkms.conf, as "
                   .. "/usr/src/NAME-VERSION)\n", r.stderr, nil, true)
    assert.is_nil(r.stderr:find("traceback", 1, true))
    local excluded = dir .. "/v4l2loopback-0.12.7"
    assert(proc.run({ "cp", "-a", TREE, excluded }).status == 0)
    assert(fs.write(excluded .. "/dkms.conf", fs.read(TREE .. "/dkms.conf") .. 'BUILD_EXCLUSIVE_KERNEL="^5\\."\n'))
    r = run { "DKMS_SOURCE=" .. excluded, "BUILD_ONLY=true", "ROOT=" .. dir .. "/root2" }
    assert.equal(1, r.status, r.stderr)
    assert.matches(("dkms.conf: v4l2loopback 0.12.7 does not build for this kernel: %s/dkms.conf sets "
                    .. 'BUILD_EXCLUSIVE_KERNEL="^5\\." (kernel %s)'):format(excluded, KVER), r.stderr, nil, true)
    r = run { "DKMS_SOURCE=" .. TREE, "BUILD_ONLY=true", "ROOT=" .. dir .. "/root2", "MODULE_PARAMS=videodev.debug=1" }
    assert.equal(1, r.status, r.stderr)
    assert.matches("MODULE_PARAMS: 'videodev.debug=1': videodev is not a module of the stack (v4l2loopback)", r.stderr,
                   nil, true)
    assert.is_nil(r.stderr:find("phase build", 1, true), "nothing built")
    assert.is_false(fs.exists(dir .. "/root2"), "nothing installed")
  end)
end)
