/* lazy.c - drv_lazy_load: the libraries of drv.* opened on first use (see lazy.h). */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "lazy.h"

#define LAZY_MAX_LIBS 12

/* The call sites, put there by the linker (lazy.h). */
extern struct drv_lazy_fn __start_drv_lazy[], __stop_drv_lazy[];

static pthread_mutex_t lazy_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	const char *soname;
	int loaded;		/* every call site of it resolved */
} lazy_libs[LAZY_MAX_LIBS];

/* The library's slot, added if new; NULL when there is no room. */
static int *lazy_loaded(const char *soname)
{
	int i;

	for (i = 0; i < LAZY_MAX_LIBS && lazy_libs[i].soname; i++)
		if (strcmp(lazy_libs[i].soname, soname) == 0)
			return &lazy_libs[i].loaded;
	if (i == LAZY_MAX_LIBS)
		return NULL;
	lazy_libs[i].soname = soname;
	return &lazy_libs[i].loaded;
}

/* Open soname and resolve its call sites; 0, or -1 with why in buf. The
 * handle is never closed: resolved call sites point into the library. */
static int lazy_resolve(const char *soname, char *why, size_t size)
{
	int *loaded = lazy_loaded(soname);
	void *handle;

	if (!loaded) {
		snprintf(why, size, "%s: too many libraries to open lazily (raise LAZY_MAX_LIBS)", soname);
		return -1;
	}
	if (*loaded)
		return 0;
	handle = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
	if (!handle) {
		snprintf(why, size, "cannot load the library %s: %s", soname, dlerror());
		return -1;
	}
	for (struct drv_lazy_fn *f = __start_drv_lazy; f < __stop_drv_lazy; f++) {
		void *addr;

		if (strcmp(f->soname, soname) != 0 || f->addr)
			continue;
		dlerror();
		addr = dlsym(handle, f->name);
		if (!addr) {
			snprintf(why, size, "the library %s has no function %s (too old a version?)", soname, f->name);
			return -1;
		}
		__atomic_store_n(&f->addr, addr, __ATOMIC_RELEASE);
	}
	*loaded = 1;
	return 0;
}

void drv_lazy_load(lua_State *L, const char *soname, const char *package)
{
	char why[512];
	int rc;

	pthread_mutex_lock(&lazy_lock);
	rc = lazy_resolve(soname, why, sizeof(why));
	pthread_mutex_unlock(&lazy_lock);
	if (rc < 0) {	/* no position: the missing library is the machine's fault, not the caller's line */
		lua_pushfstring(L, "%s: install the package %s (Debian, Ubuntu)", why, package);
		lua_error(L);
	}
}

void *drv_lazy_unloaded(const struct drv_lazy_fn *f)
{
	fprintf(stderr, "drvrun: bug: %s of %s called before the library was loaded (DRV_LAZY_LOAD)\n",
		f->name, f->soname);
	abort();
}
