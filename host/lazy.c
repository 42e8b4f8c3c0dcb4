/* lazy.c - drv_lazy_sym: the libraries of drv.* opened on first use (see lazy.h). */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lazy.h"

#define LAZY_MAX_LIBS 12

static pthread_mutex_t lazy_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	const char *soname;
	void *handle;
} lazy_libs[LAZY_MAX_LIBS];

static void lazy_die(const char *what, const char *soname, const char *why)
{
	fprintf(stderr, "drvrun: %s %s: %s\n", what, soname, why ? why : "unknown error");
	exit(1);
}

/* The library's handle, opened once (under lazy_lock). */
static void *lazy_open(const char *soname)
{
	int i;

	for (i = 0; i < LAZY_MAX_LIBS && lazy_libs[i].soname; i++)
		if (strcmp(lazy_libs[i].soname, soname) == 0)
			return lazy_libs[i].handle;
	if (i == LAZY_MAX_LIBS)
		lazy_die("too many libraries to open lazily at", soname, "raise LAZY_MAX_LIBS");
	lazy_libs[i].handle = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
	if (!lazy_libs[i].handle)
		lazy_die("cannot load the library", soname, dlerror());
	lazy_libs[i].soname = soname;
	return lazy_libs[i].handle;
}

void *drv_lazy_sym(const char *soname, const char *name)
{
	void *sym;

	pthread_mutex_lock(&lazy_lock);
	dlerror();
	sym = dlsym(lazy_open(soname), name);
	if (!sym) {
		char what[256];

		snprintf(what, sizeof(what), "no function %s in", name);
		lazy_die(what, soname, dlerror());
	}
	pthread_mutex_unlock(&lazy_lock);
	return sym;
}
