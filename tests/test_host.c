/* test_host.c - unit tests of the host's C helpers, run by `make check`. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lualib.h>

#include "drv.h"
#include "lazy.h"

static int passed, failed;

#define CHECK(cond) do { \
	if (cond) { passed++; } else { failed++; \
		fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); } \
} while (0)

static int call_fail(lua_State *L)
{
	errno = ENOENT;
	return drv_errno_fail(L, "/nonexistent");
}

static void test_errno_fail(lua_State *L)
{
	lua_pushcfunction(L, call_fail);
	lua_call(L, 0, 3);
	CHECK(lua_isnil(L, -3));
	CHECK(strcmp(lua_tostring(L, -2), "/nonexistent: No such file or directory") == 0);
	CHECK(strcmp(lua_tostring(L, -1), "ENOENT") == 0);
	lua_settop(L, 0);
}

/* drv_push_errname names every errno as glibc does (strerrorname_np, 2.32+). */
static void test_errnames(lua_State *L)
{
	int named = 0, wrong = 0;

	for (int e = 1; e < 4096; e++) {
		const char *want = strerrorname_np(e), *got;

		drv_push_errname(L, e);
		got = lua_tostring(L, -1);
		if (want ? strcmp(got, want) != 0 : strncmp(got, "errno ", 6) != 0) {
			fprintf(stderr, "errno %d: named %s, glibc says %s\n", e, got, want ? want : "nothing");
			wrong++;
		}
		named += want != NULL;
		lua_pop(L, 1);
	}
	CHECK(wrong == 0);
	CHECK(named >= 130);
	drv_push_errname(L, EWOULDBLOCK);
	CHECK(strcmp(lua_tostring(L, -1), "EAGAIN") == 0);
	lua_settop(L, 0);
}

/* The call sites of lazy.h lie in their section as an array, without gaps. */
extern struct drv_lazy_fn __start_drv_lazy[], __stop_drv_lazy[];

static void test_lazy_sites(void)
{
	int bad = 0;

	for (struct drv_lazy_fn *f = __start_drv_lazy; f < __stop_drv_lazy; f++)
		bad += !f->soname || strncmp(f->soname, "lib", 3) != 0 || !f->name || !f->name[0];
	CHECK(__stop_drv_lazy - __start_drv_lazy > 100);
	CHECK(bad == 0);
}

static int call_optfield(lua_State *L)
{
	int t = drv_opttable(L, 1);

	lua_pushinteger(L, drv_optfield_integer(L, t, "n", 7));
	return 1;
}

static void test_optfield(lua_State *L)
{
	lua_pushcfunction(L, call_optfield);
	lua_call(L, 0, 1);
	CHECK(lua_tointeger(L, -1) == 7);
	lua_settop(L, 0);

	lua_pushcfunction(L, call_optfield);
	CHECK(luaL_dostring(L, "return { n = 3 }") == LUA_OK);
	CHECK(lua_pcall(L, 1, 1, 0) == LUA_OK && lua_tointeger(L, -1) == 3);
	lua_settop(L, 0);

	lua_pushcfunction(L, call_optfield);
	lua_newtable(L); /* a table without the field: the default */
	CHECK(lua_pcall(L, 1, 1, 0) == LUA_OK && lua_tointeger(L, -1) == 7);
	lua_settop(L, 0);

	lua_pushcfunction(L, call_optfield);
	CHECK(luaL_dostring(L, "return { n = 'x' }") == LUA_OK);
	CHECK(lua_pcall(L, 1, 1, 0) != LUA_OK);
	CHECK(strstr(lua_tostring(L, -1), "field 'n': integer expected, got string") != NULL);
	lua_settop(L, 0);
}

/* Allocations a Lua state may still make; the next one fails. */
static size_t alloc_left = SIZE_MAX;

static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	(void)ud;
	if (nsize == 0) {
		free(ptr);
		return NULL;
	}
	if (!ptr || nsize > osize) {
		if (alloc_left == 0)
			return NULL;	/* and Lua's retry after an emergency collection too */
		alloc_left--;
	}
	return realloc(ptr, nsize);
}

/* The drv.kmod calls that hold libkmod objects while they push their results. */
static const char kmod_calls[] =
	"local kmod, ctx = ...\n"
	"local path = assert(ctx:info('ib_core')).path\n"
	"assert(ctx:lookup('ib_core')); assert(ctx:insert('no_such_module') == nil)\n"
	"assert(kmod.modinfo(path)); assert(kmod.versions(path)); assert(kmod.symbols(path))\n"
	"assert(ctx:loaded())\n";

/* With every allocation of those calls failing in turn, each raises a memory
 * error or succeeds: under valgrind (make check-memcheck), nothing leaks, so
 * every libkmod object was owned by a userdata when the error came. */
static void test_kmod_memory_errors(void)
{
	char dirname[300] = "", proc[] = "/tmp/test_host.XXXXXX", modules[64];
	int failed_calls = 0, done = 0;
	struct dirent *e;
	DIR *d = opendir("/lib/modules");
	FILE *f;

	if (!mkdtemp(proc)) {
		CHECK(!"a temporary directory");
		return;
	}
	snprintf(modules, sizeof(modules), "%s/modules", proc);	/* ctx:loaded() reads <proc>/modules */
	if ((f = fopen(modules, "w"))) {
		fputs("ib_core 495616 2 ib_uverbs,rdma_cm, Live 0x0000000000000000\n", f);
		fclose(f);
	}

	while (d && (e = readdir(d)))
		if (e->d_name[0] != '.')
			snprintf(dirname, sizeof(dirname), "/lib/modules/%.200s", e->d_name);
	if (d)
		closedir(d);
	for (size_t n = 0; !done && n < 5000; n++) {
		lua_State *L = lua_newstate(limited_alloc, NULL);

		alloc_left = SIZE_MAX;
		luaL_openlibs(L);
		luaL_requiref(L, "drv.kmod", luaopen_drv_kmod, 0);
		lua_getfield(L, -1, "new");
		lua_createtable(L, 0, 2);
		lua_pushstring(L, dirname);
		lua_setfield(L, -2, "dirname");
		lua_pushstring(L, proc);
		lua_setfield(L, -2, "proc");
		lua_call(L, 1, 1);
		if (!lua_isuserdata(L, -1)) {
			CHECK(!"a kmod context on /lib/modules");
			lua_close(L);
			return;
		}
		luaL_loadstring(L, kmod_calls);
		lua_insert(L, -3);
		alloc_left = n;
		if (lua_pcall(L, 2, 0, 0) == LUA_OK)
			done = 1;
		else
			failed_calls++;
		alloc_left = SIZE_MAX;
		lua_close(L);
	}
	unlink(modules);
	rmdir(proc);
	CHECK(done);
	CHECK(failed_calls > 50);
}

int main(int argc, char **argv)
{
	lua_State *L = luaL_newstate();
	FILE *out;

	luaL_openlibs(L);
	test_errno_fail(L);
	test_errnames(L);
	test_lazy_sites();
	test_kmod_memory_errors();
	test_optfield(L);
	lua_close(L);
	printf("test_host: %d passed, %d failed\n", passed, failed);
	if (argc > 1 && (out = fopen(argv[1], "w"))) {
		fprintf(out, "%d %d\n", passed, failed);
		fclose(out);
	}
	return failed != 0;
}
