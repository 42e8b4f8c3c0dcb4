/* fetch.c - drv.fetch (placeholder until the module lands). */
#include "drv.h"

int luaopen_drv_fetch(lua_State *L)
{
	lua_newtable(L);
	return 1;
}
