/* kmod.c - drv.kmod (placeholder until the module lands). */
#include "drv.h"

int luaopen_drv_kmod(lua_State *L)
{
	lua_newtable(L);
	return 1;
}
