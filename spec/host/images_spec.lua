-- The driver images and their DaemonSets, checked by tools/images.lua with a
-- real Dockerfile linter (dockerfile-utils) and the Kubernetes schemas
-- (kubernetes-models) against the recipes and the seed. Each drift spec copies
-- docker/, deploy/ and recipes/ to a temporary tree, changes one thing, and
-- asserts that the checker fails naming it.
local proc = require "drv.proc"
local fs = require "drv.fs"

local DRVRUN = os.getenv("DRVRUN")
local install -- one `make install DESTDIR=` for every run of the checker

local function checker(root)
  local argv = { DRVRUN, "tools/images.lua", "--install", install }
  if root then argv[#argv + 1], argv[#argv + 2] = "--root", root end
  local r = assert(proc.run(argv, { timeout = 120 }))
  return r.status, r.stdout .. r.stderr
end

-- A copy of what the checker reads.
local function tree()
  local root = assert(fs.tmpdir("images"))
  local r = assert(proc.run({ "cp", "-a", "docker", "deploy", "recipes", root }))
  assert(r.status == 0, r.stderr)
  return root
end

-- Replace `from` (plain text, found exactly `times` times, default once) with `to` in root/file.
local function edit(root, file, from, to, times)
  local path = root .. "/" .. file
  local text = assert(fs.read(path))
  local parts, at = {}, 1
  while true do
    local i = text:find(from, at, true)
    if not i then break end
    parts[#parts + 1] = text:sub(at, i - 1) .. to
    at = i + #from
  end
  assert(#parts == (times or 1), ("%s contains %q %d times, not %d"):format(file, from, #parts, times or 1))
  assert(fs.write(path, table.concat(parts) .. text:sub(at)))
end

-- The number of the line of root/file where `text` (plain) first occurs.
local function line_of(root, file, text)
  local content = assert(fs.read(root .. "/" .. file))
  local at = assert(content:find(text, 1, true), ("%s does not contain %q"):format(file, text))
  return select(2, content:sub(1, at):gsub("\n", "")) + 1
end

-- Run the checker on root; it must fail with every line in `want` (plain text).
local function fails_with(root, want)
  local status, out = checker(root)
  assert.equal(1, status, out)
  for _, line in ipairs(want) do
    assert.truthy(out:find(line, 1, true), ("missing %q in:\n%s"):format(line, out))
  end
  return out
end

local OFED_DF, PEER_DF = "docker/ubuntu/Dockerfile", "docker/gpu-direct/ubuntu/Dockerfile"
local OFED_DS, PEER_DS = "deploy/ofed-driver.yaml", "deploy/nv-peer-mem.yaml"
local PROBE = "[drvrun, /usr/local/share/drvrun/probe.lua, "
local PRECOMPILE_RUN = "RUN --mount=type=secret,id=module-signing-key \\\n"

describe("tools/images.lua", function()
  local root
  setup(function()
    install = assert(fs.tmpdir("images-install"))
    local r = assert(proc.run({ "make", "-s", "install", "DESTDIR=" .. install }, { stderr = "stdout" }))
    assert(r.status == 0, r.stdout)
  end)
  teardown(function() fs.remove(install, { recursive = true }) end)
  before_each(function() root = tree() end)
  after_each(function() fs.remove(root, { recursive = true }) end)

  it("passes on the tree as it is: Dockerfiles lint clean, manifests validate, nothing drifts", function()
    local status, out = checker(nil)
    assert.equal(0, status, out)
    assert.matches("^images: %d+ checks, 0 problems\n$", out)
  end)

  describe("Dockerfiles", function()
    it("are linted by dockerfile-utils, which names the line", function()
      edit(root, OFED_DF, "--interval=30s", "--interval=30")
      edit(root, PEER_DF, "\nHEALTHCHECK ", "\nHEALTHCHEK ")
      fails_with(root, {
        ("FAIL %s:%d: dockerfile-utils error: time: missing unit in duration 30"):format(OFED_DF,
          line_of(root, OFED_DF, "HEALTHCHECK ")),
        ("FAIL %s:%d: dockerfile-utils error: Unknown instruction: HEALTHCHEK"):format(PEER_DF,
          line_of(root, PEER_DF, "HEALTHCHEK ")) })
    end)

    it("declare exactly the seed's build arguments", function()
      edit(root, OFED_DF, "ARG D_OS=ubuntu20.04", "ARG D_OS_TAG=ubuntu20.04")
      fails_with(root, { "FAIL docker/ubuntu/Dockerfile: build arguments are D_ARCH D_BASE_IMAGE D_OFED_VERSION D_OS_TAG; "
                         .. "the seed's are D_ARCH D_BASE_IMAGE D_OFED_VERSION D_OS",
                         ("FAIL %s:%d: ENV uses ${D_OS}, which this stage does not declare"):format(OFED_DF,
                           line_of(root, OFED_DF, "\nENV ")) })
    end)

    it("keep the seed's defaults, and the base image, D_OS and the node selector agree", function()
      edit(root, OFED_DF, "ARG D_BASE_IMAGE=ubuntu:20.04", "ARG D_BASE_IMAGE=ubuntu:22.04")
      edit(root, PEER_DF, "ARG D_NV_PEER_MEM_BRANCH=master", "ARG D_NV_PEER_MEM_BRANCH=main", 2)
      fails_with(root, {
        "FAIL docker/ubuntu/Dockerfile: ARG D_BASE_IMAGE defaults to ubuntu:22.04; the seed's default is ubuntu:20.04",
        "FAIL docker/ubuntu/Dockerfile: ARG D_OS defaults to ubuntu20.04, but the default base image ubuntu:22.04 is "
        .. "ubuntu22.04",
        "FAIL deploy/ofed-driver.yaml: nodeSelector system-os_release.ID/VERSION_ID is ubuntu/20.04; the image's base is "
        .. "ubuntu:22.04",
        "FAIL docker/gpu-direct/ubuntu/Dockerfile: ARG D_NV_PEER_MEM_BRANCH defaults to main; the seed's default is master" })
    end)

    it("follow the recipe's OFED version and bundle URL", function()
      edit(root, "recipes/ubuntu-ofed.lua", 'D_OFED_VERSION = { default = "25.10-1.7.1.1"',
           'D_OFED_VERSION = { default = "24.10-1.1.4.0"')
      edit(root, "recipes/ubuntu-ofed.lua", "/SRPMS/", "/SOURCES/")
      fails_with(root, {
        "FAIL docker/ubuntu/Dockerfile: ARG D_OFED_VERSION defaults to 25.10-1.7.1.1; recipe ubuntu-ofed's default is "
        .. "24.10-1.1.4.0",
        "FAIL docker/ubuntu/Dockerfile: the build stage downloads no https://linux.mellanox.com/public/repo/mlnx_ofed/"
        .. "${D_OFED_VERSION}/SOURCES/MLNX_OFED_SRC-debian-${D_OFED_VERSION}.tgz (recipe ubuntu-ofed's OFED_URL default)" })
    end)

    it("pass every build argument that is a recipe option on to the recipe, and declare it where it is used", function()
      edit(root, OFED_DF, "    D_ARCH=${D_ARCH} \\\n", "")
      edit(root, OFED_DF, "ARG D_OFED_VERSION=25.10-1.7.1.1\nARG OFED_BUNDLE=", "ARG OFED_BUNDLE=")
      fails_with(root, {
        "FAIL docker/ubuntu/Dockerfile: build argument D_ARCH does not reach the recipe: ENV D_ARCH=${D_ARCH} missing",
        "FAIL docker/ubuntu/Dockerfile: build argument D_ARCH is declared but nothing uses it",
        ("FAIL %s:%d: RUN uses ${D_OFED_VERSION}, which this stage does not declare"):format(OFED_DF,
          line_of(root, OFED_DF, "\nRUN mkdir -p /out/usr/src")) })
    end)

    it("hand the sources fetched at build time to the recipe, and set only recipe options", function()
      edit(root, PEER_DF, "    PEERMEM_SOURCE=/usr/src/nv_peer_memory.tar.gz", "    PEERMEM_SOURCE=/usr/src/nv_peer_mem.tgz")
      edit(root, OFED_DF, "    OFED_URL=file://", "    OFED_ULR=file://")
      fails_with(root, {
        "FAIL docker/gpu-direct/ubuntu/Dockerfile: ENV PEERMEM_SOURCE is /usr/src/nv_peer_mem.tgz; "
        .. "the bundle fetched at build time is /usr/src/nv_peer_memory.tar.gz",
        "FAIL docker/ubuntu/Dockerfile: ENV OFED_ULR is not an option of recipe ubuntu-ofed",
        "FAIL docker/ubuntu/Dockerfile: ENV OFED_URL is nil; the bundle fetched at build time is file:///usr/src/" })
    end)

    it("ship only the runtime, from a build stage whose context holds the sources", function()
      edit(root, OFED_DF, "ca-certificates kmod $(", "ca-certificates kmod libkmod-dev $(")
      edit(root, "docker/ubuntu/.dockerignore", "!drvrun.tar.gz\n", "")
      edit(root, OFED_DF, "libcurl4-openssl-dev ", "")
      fails_with(root, {
        ("FAIL %s:%d: the image stage installs libkmod-dev: build dependencies belong to the build stage"):format(OFED_DF,
          line_of(root, OFED_DF, "\nRUN apt-get update \\\n && apt-get install -y --no-install-recommends $(cat")),
        "FAIL docker/ubuntu/Dockerfile: .dockerignore leaves drvrun.tar.gz out of the build context, but ADD drvrun.tar.gz "
        .. "needs it",
        "FAIL docker/ubuntu/Dockerfile: the build stage does not install libcurl4-openssl-dev (the Makefile's DEB_BUILD)" })
    end)

    it("know every build argument of their own, with its default, one in every stage, and pin one Lua", function()
      edit(root, OFED_DF, "ARG LUA=auto", "ARG LUA=source")
      edit(root, OFED_DF, "ARG PRECOMPILE_KERNEL=\nRUN apt-get update \\\n && apt-get install",
           "ARG PRECOMPILE_KERNEL=\nARG PRECOMPILE_JOBS=2\nRUN apt-get update \\\n && apt-get install")
      edit(root, PEER_DF, "ARG LUA_URL=https://www.lua.org/ftp/lua-5.4.", "ARG LUA_URL=https://example.org/lua-5.4.")
      edit(root, PEER_DF, "ARG LUA_SHA256=4f", "ARG LUA_SHA256=5f")
      edit(root, PEER_DF, "ARG D_NV_PEER_MEM_BRANCH=master\nARG DEBIAN", "ARG D_NV_PEER_MEM_BRANCH=1.3-0\nARG DEBIAN")
      fails_with(root, {
        "FAIL docker/ubuntu/Dockerfile: ARG LUA defaults to source; it must be auto",
        "FAIL docker/ubuntu/Dockerfile: build argument PRECOMPILE_JOBS is not one tools/images.lua knows "
        .. "(LUA LUA_SHA256 LUA_URL OFED_BUNDLE PRECOMPILE_KERNEL): add it there",
        "FAIL docker/gpu-direct/ubuntu/Dockerfile: ARG LUA_URL defaults to https://example.org/lua-5.4.",
        ", not a Lua 5.4 release source of www.lua.org",
        "FAIL docker/gpu-direct/ubuntu/Dockerfile: ARG D_NV_PEER_MEM_BRANCH defaults to master in one stage and to 1.3-0 "
        .. "in another",
        "FAIL docker/: the Dockerfiles pin different Lua sources: ARG LUA_SHA256 is 4f",
        "FAIL docker/: the Dockerfiles pin different Lua sources: ARG LUA_URL is https://www.lua.org/ftp/lua-5.4." })
    end)

    it("take a vendor source from the build context when its argument names one, else download it", function()
      edit(root, OFED_DF, 'install -m 0644 "$OFED_BUNDLE" /out/usr/src/', 'install -m 0644 "$OFED_BUNDLE" /out/tmp/')
      edit(root, PEER_DF, "ARG PEERMEM_ARCHIVE=\n", "ARG PEERMEM_ARCHIVE=vendor/nv_peer_memory-1.3-0.tar.gz\n")
      edit(root, PEER_DF, "curl -fSL --retry 3 -o /out/usr/src/nv_peer_memory.tar.gz",
           "curl -fSL --retry 3 -o /usr/src/nv_peer_memory.tar.gz")
      fails_with(root, {
        "FAIL docker/ubuntu/Dockerfile: the build stage does not put OFED_BUNDLE (a file of the build context) at "
        .. "/out/usr/src/MLNX_OFED_SRC-debian-${D_OFED_VERSION}.tgz when it is set",
        "FAIL docker/gpu-direct/ubuntu/Dockerfile: ARG PEERMEM_ARCHIVE defaults to vendor/nv_peer_memory-1.3-0.tar.gz; "
        .. "it must be empty",
        "FAIL docker/gpu-direct/ubuntu/Dockerfile: the download of https://github.com/Mellanox/nv_peer_memory/archive/"
        .. "${D_NV_PEER_MEM_BRANCH}.tar.gz is not written under /out (curl -o /out/PATH)" })
    end)

    it("precompile the image's recipe, as installed, into the cache the entrypoint seeds from", function()
      edit(root, OFED_DF, "CACHE_DIR=/out/var/lib/drvrun/precompiled ROOT=", "CACHE_DIR=/out/var/cache/drvrun ROOT=")
      local root2 = tree()
      edit(root2, OFED_DF, "BUILD_ONLY=true \\\n", "\\\n")
      fails_with(root, {
        ("FAIL %s:%d: the precompile does not build into CACHE_DIR=/out/var/lib/drvrun/precompiled, where the "
         .. "entrypoint seeds the build cache from (DRVRUN_PRECOMPILED)"):format(OFED_DF, line_of(root, OFED_DF,
         PRECOMPILE_RUN)) })
      fails_with(root2, {
        ("FAIL %s:%d: the precompile must run /out/usr/local/bin/drvrun /out/usr/local/share/drvrun/recipes/"
         .. 'ubuntu-ofed.lua BUILD_ONLY=true KVER="$PRECOMPILE_KERNEL"'):format(OFED_DF,
         line_of(root2, OFED_DF, PRECOMPILE_RUN)) })
      fs.remove(root2, { recursive = true })
    end)

    it("run the installed entrypoint, recipe and probe, on a ready file of the recipe", function()
      edit(root, PEER_DF, "/recipes/peermem.lua", "/recipes/nv-peer-mem.lua")
      edit(root, OFED_DF, '"/.driver-ready"]', '"/driver-ready"]')
      fails_with(root, {
        "FAIL docker/gpu-direct/ubuntu/Dockerfile: ENTRYPOINT must be /usr/local/bin/drvrun --init "
        .. "/usr/local/share/drvrun/entrypoint /usr/local/share/drvrun/recipes/peermem.lua (exec form)",
        "FAIL docker/ubuntu/Dockerfile: HEALTHCHECK probes /driver-ready, which is not a ready file of recipe ubuntu-ofed "
        .. "(/.driver-ready /run/mellanox/drivers/.driver-ready)" })
    end)
  end)

  describe("DaemonSets", function()
    it("are validated against the Kubernetes schemas", function()
      edit(root, OFED_DS, "failureThreshold: 450", 'failureThreshold: "450"')
      edit(root, PEER_DS, "mountPropagation: HostToContainer\n              readOnly: true\n            # The NVIDIA",
           "mountPropagation: HostToKontainer\n              readOnly: true\n            # The NVIDIA")
      fails_with(root, {
        "FAIL deploy/ofed-driver.yaml: kubernetes-models: document 2 (DaemonSet ofed-driver): "
        .. "data/spec/template/spec/containers/0/startupProbe/failureThreshold must be integer",
        "FAIL deploy/nv-peer-mem.yaml: kubernetes-models: document 2 (DaemonSet nv-peer-mem): "
        .. "data/spec/template/spec/containers/0/volumeMounts/0/mountPropagation must be equal to one of the allowed values" })
    end)

    it("fail when the recipe's expose path moves: the seed's run line, the mount and the probes", function()
      edit(root, "recipes/ubuntu-ofed.lua", 'EXPOSE_PATH = { default = "/run/mellanox/drivers"',
           'EXPOSE_PATH = { default = "/run/mlnx/drivers"')
      fails_with(root, {
        "FAIL docker/ubuntu/Dockerfile: the seed's `docker run -v /run/mellanox/drivers:/run/mellanox/drivers` is not "
        .. "where recipe ubuntu-ofed looks: EXPOSE_PATH is /run/mlnx/drivers",
        "FAIL deploy/ofed-driver.yaml: no volumeMount at /run/mlnx/drivers for EXPOSE_PATH (/run/mlnx/drivers)",
        "FAIL deploy/ofed-driver.yaml: the startupProbe probes /run/mellanox/drivers/.driver-ready, which is not a ready "
        .. "file of recipe ubuntu-ofed (/.driver-ready /run/mlnx/drivers/.driver-ready)",
        "FAIL deploy/ofed-driver.yaml: the livenessProbe probes /run/mellanox/drivers/.driver-ready, which is not a ready "
        .. "file of recipe ubuntu-ofed" })
    end)

    it("fail when a mount path or its propagation drifts", function()
      edit(root, OFED_DS, "mountPath: /run/drvrun\n", "mountPath: /run/drvrun-state\n")
      edit(root, OFED_DS, "              mountPropagation: Bidirectional\n", "")
      edit(root, PEER_DS, "mountPath: /host/lib/modules\n              readOnly: true\n", "mountPath: /host/lib/modules\n")
      fails_with(root, {
        "FAIL deploy/nv-peer-mem.yaml: the volume at /host/lib/modules must be the host's /lib/modules, read-only "
        .. "(hostPath /lib/modules, readOnly nil)",
        "FAIL deploy/ofed-driver.yaml: no volumeMount at /run/drvrun for STATE_DIR (/run/drvrun)",
        "FAIL deploy/ofed-driver.yaml: no volumeMount at /run/drvrun for LOCK_FILE (/run/drvrun/host.lock)",
        "FAIL deploy/ofed-driver.yaml: the volumeMount at /run/mellanox/drivers has mountPropagation None; "
        .. "EXPOSE_PATH needs Bidirectional",
        "FAIL deploy/: the host-wide lock is not the same host directory in both DaemonSets (nil, /run/drvrun)" })
    end)

    it("fail when a probe path drifts", function()
      edit(root, OFED_DS, "startupProbe:\n            exec:\n              command: " .. PROBE
           .. "/run/mellanox/drivers/.driver-ready]", "startupProbe:\n            exec:\n              command: "
           .. PROBE .. "/run/mellanox/drivers/driver-ready]")
      edit(root, PEER_DS, "livenessProbe:\n            exec:\n              command: " .. PROBE
           .. "/run/drvrun/peermem.driver-ready]", "livenessProbe:\n            exec:\n              command: "
           .. "[drvrun, /usr/share/drvrun/probe.lua, /run/drvrun/peermem.driver-ready]")
      fails_with(root, {
        "FAIL deploy/ofed-driver.yaml: the startupProbe probes /run/mellanox/drivers/driver-ready, which is not a ready "
        .. "file of recipe ubuntu-ofed (/.driver-ready /run/mellanox/drivers/.driver-ready)",
        "FAIL deploy/nv-peer-mem.yaml: the livenessProbe must run [drvrun, /usr/local/share/drvrun/probe.lua, READY_FILE], "
        .. "not drvrun /usr/share/drvrun/probe.lua /run/drvrun/peermem.driver-ready" })
    end)

    it("fail when the startup budget does not fit a build or the grace period a stop", function()
      edit(root, OFED_DS, "failureThreshold: 450", "failureThreshold: 60")
      edit(root, PEER_DS, "terminationGracePeriodSeconds: 780", "terminationGracePeriodSeconds: 120")
      fails_with(root, {
        "FAIL deploy/ofed-driver.yaml: the startupProbe gives up after 600 s; LOCK_TIMEOUT + BUILD_TIMEOUT may take 4200 s",
        "FAIL deploy/nv-peer-mem.yaml: terminationGracePeriodSeconds is 120; stop may wait LOCK_TIMEOUT + STOP_TIMEOUT = 720 s" })
    end)

    it("fail on an env name that is not a recipe option, or a value the recipe no longer has", function()
      edit(root, OFED_DS, "- name: BLACKLIST_FILE", "- name: BLACKLIST_FIlE")
      edit(root, PEER_DS, "- name: READY_FILES", "- name: READY_FILE")
      fails_with(root, {
        "FAIL deploy/ofed-driver.yaml: env BLACKLIST_FIlE is not an option of recipe ubuntu-ofed",
        "FAIL deploy/ofed-driver.yaml: no volumeMount at (no path) for BLACKLIST_FILE ()",
        "FAIL deploy/nv-peer-mem.yaml: env READY_FILE is not an option of recipe peermem" })
      local root2 = tree()
      edit(root2, "recipes/ubuntu-ofed.lua", '"/host/run/modprobe.d/drvrun-ubuntu-ofed.conf"',
           '"/host/run/modprobe.d/ofed.conf"')
      fails_with(root2, { "FAIL deploy/ofed-driver.yaml: env BLACKLIST_FILE=/host/run/modprobe.d/drvrun-ubuntu-ofed.conf "
                          .. "differs from recipe ubuntu-ofed's default /host/run/modprobe.d/ofed.conf" })
      fs.remove(root2, { recursive = true })
    end)

    it("mount the NVIDIA and OFED roots where the peermem recipe looks, from the hosts' paths the others use", function()
      edit(root, PEER_DS, "mountPath: /run/nvidia/driver\n", "mountPath: /run/nvidia/gpu\n")
      edit(root, PEER_DS, "path: /run/drvrun\n", "path: /run/drvrun-peer\n")
      fails_with(root, {
        "FAIL deploy/nv-peer-mem.yaml: no volumeMount at /run/nvidia/driver or /run/nvidia/drivers for NVIDIA_ROOT "
        .. "(/run/nvidia/driver /run/nvidia/drivers)",
        "FAIL deploy/nv-peer-mem.yaml: the volume at /run/drvrun is hostPath /run/drvrun-peer; STATE_DIR (/run/drvrun) "
        .. "wants the host's /run/drvrun",
        "FAIL deploy/: the host-wide lock is not the same host directory in both DaemonSets (/run/drvrun, /run/drvrun-peer)" })
    end)

    it("fail when the peermem recipe looks for OFED and NVIDIA elsewhere, or builds another branch", function()
      local recipe = "recipes/peermem.lua"
      edit(root, recipe, 'default = "/run/nvidia/driver /run/nvidia/drivers"', 'default = "/run/nvidia/root"')
      edit(root, recipe, 'OFED_ROOT = { default = "/run/mellanox/drivers"', 'OFED_ROOT = { default = "/run/ofed"')
      edit(root, recipe, 'D_NV_PEER_MEM_BRANCH = { default = "master"', 'D_NV_PEER_MEM_BRANCH = { default = "1.1-0"')
      fails_with(root, {
        "FAIL docker/gpu-direct/ubuntu/Dockerfile: the seed's `docker run -v /run/nvidia/driver:/run/nvidia/drivers` is not "
        .. "where recipe peermem looks: NVIDIA_ROOT is /run/nvidia/root",
        "FAIL docker/gpu-direct/ubuntu/Dockerfile: the seed's `docker run -v /run/mellanox/drivers:/run/mellanox/drivers` is "
        .. "not where recipe peermem looks: OFED_ROOT is /run/ofed",
        "FAIL deploy/nv-peer-mem.yaml: no volumeMount at /run/nvidia/root for NVIDIA_ROOT (/run/nvidia/root)",
        "FAIL deploy/nv-peer-mem.yaml: no volumeMount at /run/ofed for OFED_ROOT (/run/ofed)",
        "FAIL docker/gpu-direct/ubuntu/Dockerfile: ARG D_NV_PEER_MEM_BRANCH defaults to master; recipe peermem's default "
        .. "is 1.1-0" })
    end)
  end)
end)

describe("make docker-context", function()
  local tmp
  setup(function() tmp = assert(fs.tmpdir("context")) end)
  teardown(function() fs.remove(tmp, { recursive = true }) end)

  -- The build stage's `RUN make … install …` of a Dockerfile, with /out and
  -- /tmp/shlibs moved under dir.
  local function build_step(dockerfile, dir)
    local text = assert(fs.read(dockerfile)):gsub("\\\n", " ")
    local run = assert(text:match("\nRUN (make [^\n]*install[^\n]*)"), "no RUN make install")
    return (run:gsub("/tmp/shlibs", dir .. "/shlibs"):gsub("/out/", dir .. "/out/"):gsub("/out ", dir .. "/out "))
  end

  it("puts drvrun's sources in both build contexts; the build stage's RUN builds and installs them", function()
    local r = assert(proc.run({ "make", "-s", "docker-context" }, { stderr = "stdout" }))
    assert.equal(0, r.status, r.stdout)
    assert.equal(fs.sha256("docker/ubuntu/drvrun.tar.gz"), fs.sha256("docker/gpu-direct/ubuntu/drvrun.tar.gz"))
    assert(fs.mkdir(tmp .. "/src"))
    r = assert(proc.run({ "tar", "-xzf", fs.realpath("docker/ubuntu/drvrun.tar.gz"), "-C", tmp .. "/src" }))
    assert.equal(0, r.status, r.stderr)
    r = assert(proc.run({ "sh", "-c", build_step("docker/ubuntu/Dockerfile", tmp) }, { cwd = tmp .. "/src",
                                                                                   stderr = "stdout", timeout = 300 }))
    assert.equal(0, r.status, r.stdout)
    local out = tmp .. "/out/usr/local"
    local pkgs = assert(fs.read(out .. "/share/drvrun/runtime-packages"))
    for _, p in ipairs { "libkmod2", "libmount1", "libarchive13", "libcurl4" } do
      assert.matches("%f[%w]" .. p:gsub("%p", "%%%0") .. "%f[%s]", pkgs)
    end
    assert.is_nil(pkgs:find("liblua", 1, true), pkgs) -- Lua is linked in (its static library)
    for _, f in ipairs { "/bin/drvrun", "/share/drvrun/entrypoint", "/share/drvrun/probe.lua",
                         "/share/drvrun/recipes/ubuntu-ofed.lua", "/share/drvrun/lua/drv/ready.lua" } do
      assert.is_true(fs.exists(out .. f), f)
    end
    r = assert(proc.run({ out .. "/bin/drvrun", "--plan", out .. "/share/drvrun/recipes/ubuntu-ofed.lua",
                          "OFED_SHA256=" .. ("a"):rep(64) }))
    assert.equal(0, r.status, r.stderr)
    assert.matches("plan: ubuntu%-ofed ", r.stdout)
  end)
end)
