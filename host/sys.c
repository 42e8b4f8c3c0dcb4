/* sys.c - drv.sys (placeholder until the module lands). */
#include "drv.h"

int luaopen_drv_sys(lua_State *L)
{
	lua_newtable(L);
	return 1;
}
