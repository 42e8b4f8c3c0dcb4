# drvrun — build, test and install.
#
#   make            build build/drvrun
#   make check      run every test suite (installs missing packages first)
#   make demo       run the main job in the real-kernel guest
#   make install    PREFIX=/usr/local DESTDIR=
#   make deps       install the Debian packages drvrun needs (root)
#   make check SANITIZE=1   the same tests on an ASan+UBSan build

PREFIX  ?= /usr/local
DESTDIR ?=
BINDIR   = $(PREFIX)/bin
DATADIR  = $(PREFIX)/share/drvrun

ifeq ($(SANITIZE),1)
BUILD   ?= build/san
SANFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else
BUILD   ?= build
SANFLAGS =
endif

PKGS     = lua5.4 libkmod mount libcurl libarchive libcrypto libnl-3.0 libnl-route-3.0 libnl-genl-3.0
CC      ?= cc
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -pthread -Wall -Wextra -Werror $(SANFLAGS) \
           $(shell pkg-config --cflags $(PKGS) 2>/dev/null) \
           -DDRV_LIBDIR='"$(DATADIR)/lua"' -DDRV_RECIPEDIR='"$(DATADIR)/recipes"'
# --as-needed: nothing refers to the libraries of drv.* at link time (host/lazy.h opens them at first use)
LDFLAGS += $(SANFLAGS) -pthread -Wl,-E -Wl,--as-needed
LDLIBS  += $(LUA_LIBS) $(shell pkg-config --libs $(filter-out lua5.4,$(PKGS)) 2>/dev/null) -lm
# Lua linked in where its static library is there (Debian's liblua5.4-dev has it; a Lua built
# from source has only that), as Debian's own lua5.4 is: a start has one shared library fewer to
# map and bind (a driver container starts on every restart), and the image needs no Lua package.
# -Wl,-E keeps the C API visible to Lua C modules (lfs, busted's).
LUA_A   := $(shell $(CC) -print-file-name=liblua5.4.a)
LUA_LIBS = $(if $(filter /%,$(LUA_A)),$(LUA_A) -ldl,$(shell pkg-config --libs lua5.4 2>/dev/null))

HOST_SRC = $(wildcard host/*.c)
HOST_OBJ = $(HOST_SRC:host/%.c=$(BUILD)/obj/%.o)
DRVRUN   = $(BUILD)/drvrun

# Debian packages: build, run and test. `make deps` installs what is missing.
DEB_BUILD = build-essential pkg-config liblua5.4-dev libkmod-dev libmount-dev \
            libcurl4-openssl-dev libarchive-dev libssl-dev libnl-3-dev libnl-route-3-dev \
            libnl-genl-3-dev
DEB_TEST  = lua5.4 lua-busted lua-check python3 openssl kmod util-linux cpio ccache keyutils \
            busybox-static qemu-system-x86 linux-image-amd64 linux-headers-amd64 \
            nodejs npm valgrind buildah debootstrap ovmf efitools podman podman-docker catatonit \
            iptables docker-registry bpftool
# The kernel upgrade spec (spec/guest/upgrade_spec.lua) needs a second kernel beside
# linux-image-amd64's: an older ABI of bookworm's kernel, which Debian's archive keeps.
UPGRADE_KVER = 6.1.0-50-amd64
DEB_TEST += linux-image-$(UPGRADE_KVER) linux-headers-$(UPGRADE_KVER)
DEB_ALL   = $(DEB_BUILD) $(DEB_TEST)

.PHONY: all check demo install deps deps-ok clean lint fixtures doc docker-context bench \
        check-c check-lint check-host check-guest check-images check-memcheck

all: $(DRVRUN)

$(DRVRUN): $(HOST_OBJ)
	$(CC) $(LDFLAGS) -o $@ $(HOST_OBJ) $(LDLIBS)

$(BUILD)/obj/%.o: host/%.c host/drv.h host/lazy.h | $(BUILD)/obj
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/obj:
	mkdir -p $@

deps:
	@tools/deps install $(DEB_ALL)

deps-ok:
	@tools/deps ensure $(DEB_ALL)

# ---- tests ---------------------------------------------------------------
# Every suite writes "PASSED FAILED" into $(RESULTS)/<suite>; tools/summary
# adds them up and prints the closing "N passed, N failed" line.
RESULTS = $(BUILD)/results
BUSTED  = $(DRVRUN) /usr/bin/busted --output=spec/support/counting.lua -Xoutput --plain

# valgrind does not run under ASan: a SANITIZE=1 check leaves memcheck out.
SUITES = check-c check-lint check-host check-guest check-images $(if $(SANFLAGS),,check-memcheck)

check: deps-ok
	@$(MAKE) --no-print-directory all fixtures
	@rm -rf $(RESULTS); mkdir -p $(RESULTS)
	@$(MAKE) --no-print-directory -k $(SUITES); \
	 tools/summary $(RESULTS) $(SUITES)

# C unit tests: each tests/test_*.c links the host objects (not main.o) and
# writes its own "PASSED FAILED" file given as its argument.
C_TESTS = $(patsubst tests/%.c,$(BUILD)/%,$(wildcard tests/test_*.c))

check-c: $(C_TESTS)
	@mkdir -p $(RESULTS)/c
	@rc=0; for t in $(C_TESTS); do $$t $(RESULTS)/c/$${t##*/} || rc=1; done; \
	 cat $(RESULTS)/c/* | awk '{p+=$$1; f+=$$2} END {print p, f}' > $(RESULTS)/check-c; exit $$rc

$(BUILD)/test_%: tests/test_%.c $(filter-out $(BUILD)/obj/main.o,$(HOST_OBJ))
	$(CC) $(CFLAGS) -Ihost $(LDFLAGS) -o $@ $^ $(LDLIBS)

check-lint: $(DRVRUN)
	@tools/run-counted $(RESULTS)/check-lint sh -c 'luacheck --quiet lib/lua lib/probe.lua spec recipes tools/*.lua bench && \
	  $(DRVRUN) tools/apidoc.lua --check doc/api.md'

# One check: valgrind finds no memory error and no definite leak in the C tests
# and in the specs of the bindings (run in-process: busted inside drvrun).
MEMCHECK      = valgrind -q --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite --child-silent-after-fork=yes --error-exitcode=99
# drv.fetch is drv.transfer's Lua half: its spec drives the C module the most.
BINDING_SPECS = $(wildcard $(HOST_SRC:host/%.c=spec/host/%_spec.lua)) spec/host/fetch_spec.lua spec/host/badargs_spec.lua

check-memcheck: $(DRVRUN) $(C_TESTS)
	@tools/run-counted $(RESULTS)/check-memcheck tools/memcheck $(BUILD)/memcheck.log \
	  sh -c 'for t in $(C_TESTS); do $(MEMCHECK) $$t /dev/null || exit 1; done && \
	  DRVRUN=$(abspath $(DRVRUN)) $(MEMCHECK) $(DRVRUN) /usr/bin/busted -o TAP $(BINDING_SPECS)'

doc: $(DRVRUN)
	$(DRVRUN) tools/apidoc.lua > doc/api.md

# The image checks (spec/host/images_spec.lua, tools/images.lua) use a linter and
# a schema validator from npm, pinned in tools/images/package-lock.json.
NODE_TOOLS = tools/images/node_modules/.stamp
$(NODE_TOOLS): tools/images/package.json tools/images/package-lock.json
	cd tools/images && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The real DKMS driver the dkms recipe's specs build and load: Debian bookworm's
# v4l2loopback-dkms, downloaded (its sha256 checked) and unpacked into build/dkms, not
# installed (it depends on dkms, whose postinst would build it). Its source tree lands
# in $(DKMS_TREE), with its dkms.conf; the guest sees it there.
DKMS_PKG    = v4l2loopback-dkms=0.12.7-2
DKMS_DEB    = v4l2loopback-dkms_0.12.7-2_all.deb
DKMS_SHA256 = 7f2bdae29e28efab6e6f1f8b187266fa3c740d3becab11e1d686b45bfcb22aa9
DKMS_TREE   = build/dkms/usr/src/v4l2loopback-0.12.7
$(DKMS_TREE)/dkms.conf:
	mkdir -p build/dkms
	cd build && { apt-get download $(DKMS_PKG) 2>/dev/null || { apt-get update -qq && apt-get download $(DKMS_PKG); }; }
	echo "$(DKMS_SHA256)  build/$(DKMS_DEB)" | sha256sum -c --quiet
	dpkg-deb -x build/$(DKMS_DEB) build/dkms
	touch $@

check-host: $(DRVRUN) $(NODE_TOOLS) $(DKMS_TREE)/dkms.conf
	DRVRUN=$(abspath $(DRVRUN)) VENDOR=$(abspath $(VENDOR)) DRVRUN_RESULTS=$(RESULTS)/check-host \
	  $(BUSTED) spec/host

# The guest reuses build caches filled here (compiling under TCG is ~15x
# slower): the simulated OFED bundle and the peer-memory fixture client built
# against it (build/cache), and the real MLNX_OFED bundle (../shared/vendor:
# the vendor's source, in its layout) with the real nv_peer_memory built
# against it (build/cache-real: ~10 minutes on 2 CPUs the first time, then a
# cache hit). ROOT_SIM/ROOT_REAL are the OFED installs the clients build against.
# Both OFED bundles are built for UPGRADE_KVER too (build-only, as a build ahead
# of a reboot builds: the real one ~10 minutes more the first time), for the
# upgrade spec's boot on that kernel.
CACHE       = build/cache
ROOT_SIM    = build/root-sim
VENDOR     ?= ../shared/vendor
OFED_BUNDLE = $(VENDOR)/MLNX_OFED_SRC-debian-25.10-1.7.1.1.tgz
OFED_SHA256 = 3e42df1e2081b7ccb602c5c15fb757687b2480d9a140141b9741f245348d79c0
PEERMEM_SRC = $(VENDOR)/nv_peer_memory-1.3-0.tar.gz
REAL_CACHE  = build/cache-real
ROOT_REAL   = build/root-real
LIBRARY     = $(wildcard lib/lua/drv/*.lua)
$(CACHE)/.stamp: $(DRVRUN) build/fixtures/SHA256SUMS recipes/ubuntu-ofed.lua recipes/peermem.lua $(LIBRARY)
	tools/fill-cache ofed $(DRVRUN) $(abspath $(CACHE)) $(abspath $(ROOT_SIM))
	KVER=$(UPGRADE_KVER) tools/fill-cache ofed $(DRVRUN) $(abspath $(CACHE)) $(abspath $(ROOT_SIM))
	tools/fill-cache peermem $(DRVRUN) $(abspath $(CACHE)) $(ROOT_SIM) $$(ls build/fixtures/nv_peer_memory-*.tgz)
	touch $@

$(REAL_CACHE)/.stamp: $(DRVRUN) fixtures $(OFED_BUNDLE) $(PEERMEM_SRC) recipes/ubuntu-ofed.lua recipes/peermem.lua $(LIBRARY)
	tools/fill-cache ofed $(DRVRUN) $(abspath $(REAL_CACHE)) $(abspath $(ROOT_REAL)) $(OFED_BUNDLE) $(OFED_SHA256)
	KVER=$(UPGRADE_KVER) tools/fill-cache ofed $(DRVRUN) $(abspath $(REAL_CACHE)) $(abspath $(ROOT_REAL)) \
	  $(OFED_BUNDLE) $(OFED_SHA256)
	tools/fill-cache peermem $(DRVRUN) $(abspath $(REAL_CACHE)) $(ROOT_REAL) $(PEERMEM_SRC)
	touch $@

# One guest boot per spec file, each with the COMMAND timeout its header
# declares ("-- guest-timeout: SECS"); a boot cut off does not stop the others.
# Console logs: $(BUILD)/vm/guest-NAME.log. GUEST_SPECS=... runs some of them.
GUEST_SPECS ?= $(wildcard spec/guest/*_spec.lua)

# The test key of the Secure Boot guest (spec/guest/secureboot_spec.lua): its
# certificate is enrolled in the guest firmware's db (spec/vm/run --uefi-db).
SB_KEYS = build/secureboot
$(SB_KEYS)/db.crt:
	mkdir -p $(SB_KEYS)
	openssl req -new -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=drvrun test db key/" \
	  -addext extendedKeyUsage=codeSigning -keyout $(SB_KEYS)/db.key -out $@.new 2>/dev/null
	mv $@.new $@

check-guest: $(DRVRUN) fixtures $(CACHE)/.stamp $(REAL_CACHE)/.stamp $(SB_KEYS)/db.crt $(DKMS_TREE)/dkms.conf
	@tools/check-guest $(abspath $(RESULTS)) $(BUILD)/vm "$(GUEST_SPECS)" \
	  env DRVRUN=$(abspath $(DRVRUN)) VENDOR=$(abspath $(VENDOR)) $(BUSTED)

# The images built for real (tools/build-test-images: buildah, on a Debian base made with
# debootstrap and kept in buildah's storage), then the OFED image's root run in the guest as
# the DaemonSet runs it (spec/image/). One count for the build, the guest specs' for the rest.
# The OFED image carries the real bundle (IMAGE_OFED_BUNDLE), and $(IMAGE_CACHE) holds a build
# of it (tools/fill-cache), so that the image reaches ready in the guest on that cache without a
# compiler, as a node whose build cache is filled does. The precompiled image is built from the
# simulated bundle (its compile, at image build time, takes seconds; the real one's 15 minutes).
IMAGES            = build/images
IMAGE_BASE        = localhost/debian:bookworm
IMAGE_OFED_BUNDLE = $(OFED_BUNDLE)
IMAGE_CACHE       = $(REAL_CACHE)
GUEST_KVER        = $(shell ls /lib/modules | sort -V | tail -n 1)

check-images: $(DRVRUN) fixtures $(CACHE)/.stamp $(REAL_CACHE)/.stamp $(NODE_TOOLS)
	@rm -rf $(RESULTS)/images; mkdir -p $(RESULTS)/images $(BUILD)/vm
	@if tools/run-counted $(RESULTS)/images/build tools/build-test-images $(IMAGE_BASE) $(VENDOR) \
	    "$(IMAGE_OFED_BUNDLE)" $(GUEST_KVER) $(abspath $(IMAGES)); then \
	   spec/vm/run -q --mem 3072 --timeout 3600 --log $(BUILD)/vm/images.log --out $(abspath $(RESULTS)) -- \
	     env DRVRUN=$(abspath $(DRVRUN)) DRVRUN_IMAGES=$(abspath $(IMAGES)) DRVRUN_IMAGE_CACHE=$(abspath $(IMAGE_CACHE)) \
	     CONTAINERS_CONF=$(abspath spec/image/engine/containers.conf) \
	     CONTAINERS_STORAGE_CONF=$(abspath spec/image/engine/storage.conf) \
	     DRVRUN_RESULTS=$(abspath $(RESULTS))/images/guest $(BUSTED) spec/image; \
	   rc=$$?; [ -s $(RESULTS)/images/guest ] || echo "0 1" > $(RESULTS)/images/guest; \
	 else rc=1; fi; \
	 cat $(RESULTS)/images/* | awk '{p+=$$1; f+=$$2} END {print p, f}' > $(RESULTS)/check-images; exit $$rc

fixtures:
	@$(MAKE) --no-print-directory -C spec/fixtures

build/fixtures/SHA256SUMS: fixtures

lint: check-lint

# ---- the main job ----------------------------------------------------------
demo: deps-ok
	@$(MAKE) --no-print-directory all fixtures
	@tools/demo

# ---- benchmarks (not part of check) -------------------------------------------
# make bench: every contender against its baseline in one run; build/bench.json.
# BENCH_ONLY=host|guest|real runs one part (see bench/main.lua).
bench: deps-ok
	@tools/deps ensure curl
	@$(MAKE) --no-print-directory all fixtures build/floor $(CACHE)/.stamp $(REAL_CACHE)/.stamp
	@env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL VENDOR=$(abspath $(VENDOR)) $(DRVRUN) bench/main.lua

build/floor: bench/floor.c
	$(CC) -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -o $@ $<

# ---- install ---------------------------------------------------------------
install: $(DRVRUN)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR)/lua/drv $(DESTDIR)$(DATADIR)/recipes
	install -m 0755 $(DRVRUN) $(DESTDIR)$(BINDIR)/drvrun
	install -m 0644 lib/lua/drv/*.lua $(DESTDIR)$(DATADIR)/lua/drv/
	install -m 0644 lib/probe.lua $(DESTDIR)$(DATADIR)/probe.lua
	install -m 0755 docker/entrypoint $(DESTDIR)$(DATADIR)/entrypoint
	if ls recipes/*.lua >/dev/null 2>&1; then \
	  install -m 0644 recipes/*.lua $(DESTDIR)$(DATADIR)/recipes/; fi
	DESTDIR='$(DESTDIR)' $(DRVRUN) --compile $(DESTDIR)$(DATADIR)/lua/drv/*.lua $(DESTDIR)$(DATADIR)/probe.lua \
	  $$(ls $(DESTDIR)$(DATADIR)/recipes/*.lua 2>/dev/null)

# ---- images ----------------------------------------------------------------
# The build contexts of docker/*/Dockerfile get drvrun's sources, so that the
# seed's `docker build ... ubuntu/` works from docker/ (see README.md).
DOCKER_CONTEXTS = docker/ubuntu docker/gpu-direct/ubuntu
DIST_FILES      = Makefile $(HOST_SRC) $(wildcard host/*.h) tools/runtime-packages lib/probe.lua $(wildcard lib/lua/drv/*.lua) \
                  $(wildcard recipes/*.lua) docker/entrypoint

docker-context: $(DOCKER_CONTEXTS:%=%/drvrun.tar.gz) $(DOCKER_CONTEXTS:%=%/lua-5.4)

$(DOCKER_CONTEXTS:%=%/lua-5.4): %/lua-5.4: tools/lua-5.4
	cp $< $@

%/drvrun.tar.gz: $(DIST_FILES)
	tar -czf $@ --owner=0 --group=0 --sort=name --mtime=@0 $(DIST_FILES)

clean:
	rm -rf build
	rm -f $(DOCKER_CONTEXTS:%=%/drvrun.tar.gz) $(DOCKER_CONTEXTS:%=%/lua-5.4)
	@$(MAKE) --no-print-directory -C spec/fixtures clean
