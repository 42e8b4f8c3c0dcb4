/* test_host.c - unit tests of the host's C helpers, run by `make check`. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

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

int main(int argc, char **argv)
{
	lua_State *L = luaL_newstate();
	FILE *out;

	luaL_openlibs(L);
	test_errno_fail(L);
	test_errnames(L);
	test_lazy_sites();
	test_optfield(L);
	lua_close(L);
	printf("test_host: %d passed, %d failed\n", passed, failed);
	if (argc > 1 && (out = fopen(argv[1], "w"))) {
		fprintf(out, "%d %d\n", passed, failed);
		fclose(out);
	}
	return failed != 0;
}
