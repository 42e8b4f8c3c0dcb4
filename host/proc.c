/* proc.c - drv.proc (placeholder until the module lands). */
#include "drv.h"

int luaopen_drv_proc(lua_State *L)
{
	lua_newtable(L);
	return 1;
}
