/* net.c - drv.net: links, addresses, routes, SR-IOV VFs and eswitch modes over netlink;
 * whether an address answers (an ICMP echo, a TCP connection).
 *
 * Through libnl: rtnetlink (libnl-route) and generic netlink (libnl-genl, devlink).
 * A socket (net.open) holds one rtnetlink and one generic netlink socket,
 * opened in the caller's network namespace or in the one named by opts.netns
 * (the sockets stay there). Reads go through libnl's caches; each write is
 * one request whose acknowledgement is read here, so a failure carries the
 * kernel's own errno and its extended-ack message ("mtu greater than device
 * maximum"), which libnl's own error codes would lose.
 *
 * What the kernel does not say over netlink comes from elsewhere: the device
 * under a link (bus address) from ETHTOOL_GDRVINFO, which answers in the
 * socket's namespace; its bus, driver and SR-IOV counts from
 * /sys/bus/<bus>/devices/<address>, which is the same in every namespace. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/devlink.h>
#include <linux/if.h>
#include <linux/if_ether.h>
#include <linux/ethtool.h>
#include <linux/icmp.h>
#include <linux/icmpv6.h>
#include <linux/sockios.h>
#include <net/if_arp.h>
#include <netinet/in.h>
#include <netpacket/packet.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <netlink/netlink.h>
#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/link/macvlan.h>
#include <netlink/route/link/sriov.h>
#include <netlink/route/link/vlan.h>
#include <netlink/route/route.h>

#include "drv.h"
#include "lazy.h"

#define SOCK_MT "drv.net.socket"
#define ROUTE_MT "drv.net.route"
#define SYSBUS "/sys/bus"

struct netsock {
	struct nl_sock *route;	/* NULL once closed */
	struct nl_sock *genl;
	int devlink;		/* the devlink family id; 0 until resolved */
};

/* What the kernel answered to one request. */
struct reply {
	int err;		/* its errno; 0 when it acknowledged */
	int done;		/* the acknowledgement (or error) was read */
	char msg[256];		/* its extended-ack message, if any */
	int (*parse)(struct nl_msg *, void *);
	void *arg;
};

/* ---- errors ------------------------------------------------------------ */

/* The errno a libnl error code stands for (libnl maps errnos to its own codes). */
static int net_nle_errno(int nle)
{
	switch (nle < 0 ? -nle : nle) {
	case NLE_NODEV:
		return ENODEV;
	case NLE_OBJ_NOTFOUND:
		return ENOENT;
	case NLE_INVAL:
		return EINVAL;
	case NLE_RANGE:
		return ERANGE;
	case NLE_EXIST:
		return EEXIST;
	case NLE_BUSY:
		return EBUSY;
	case NLE_PERM:
		return EPERM;
	case NLE_NOACCESS:
		return EACCES;
	case NLE_OPNOTSUPP:
		return EOPNOTSUPP;
	case NLE_NOMEM:
		return ENOMEM;
	case NLE_AF_NOSUPPORT:
		return EAFNOSUPPORT;
	case NLE_NOADDR:
		return EADDRNOTAVAIL;
	case NLE_AGAIN:
		return EAGAIN;
	case NLE_INTR:
		return EINTR;
	default:
		return EIO;
	}
}

static int net_nle_fail(lua_State *L, int nle, const char *what)
{
	return drv_fail(L, net_nle_errno(nle), "%s: %s", what, nl_geterror(nle));
}

/* nil, "<what>: <strerror>[ (kernel: <extack>)]", errno. */
static int net_reply_fail(lua_State *L, const struct reply *r, const char *what)
{
	if (r->msg[0])
		return drv_fail(L, r->err, "%s: %s (kernel: %s)", what, strerror(r->err), r->msg);
	return drv_fail(L, r->err, "%s: %s", what, strerror(r->err));
}

/* ---- one request and its acknowledgement ------------------------------- */

static int net_on_error(struct sockaddr_nl *who, struct nlmsgerr *e, void *arg)
{
	struct nlmsghdr *h = (struct nlmsghdr *)((char *)e - NLMSG_HDRLEN);
	struct reply *r = arg;
	struct nlattr *msg;
	size_t off = sizeof(*e);

	(void)who;
	r->done = 1;
	r->err = -e->error;
	if (!(h->nlmsg_flags & NLM_F_ACK_TLVS))
		return NL_STOP;
	if (!(h->nlmsg_flags & NLM_F_CAPPED))
		off += e->msg.nlmsg_len - NLMSG_HDRLEN;
	if (h->nlmsg_len <= NLMSG_HDRLEN + off)
		return NL_STOP;
	msg = nla_find((struct nlattr *)((char *)e + off), (int)(h->nlmsg_len - NLMSG_HDRLEN - off),
		       NLMSGERR_ATTR_MSG);
	if (msg)
		snprintf(r->msg, sizeof(r->msg), "%.*s", nla_len(msg), (const char *)nla_data(msg));
	return NL_STOP;
}

static int net_on_ack(struct nl_msg *msg, void *arg)
{
	(void)msg;
	((struct reply *)arg)->done = 1;
	return NL_STOP;
}

/* Send msg (freed here) on sk and read until its acknowledgement, which comes
 * in a datagram of its own after any reply; 0, or -1 with r->err set. */
static int net_transact(struct nl_sock *sk, struct nl_msg *msg, struct reply *r)
{
	struct nl_cb *cb = nl_cb_alloc(NL_CB_DEFAULT);
	int rc = -NLE_NOMEM;

	r->err = r->done = 0;
	r->msg[0] = '\0';
	if (cb) {
		nl_cb_err(cb, NL_CB_CUSTOM, net_on_error, r);
		nl_cb_set(cb, NL_CB_ACK, NL_CB_CUSTOM, net_on_ack, r);
		if (r->parse)
			nl_cb_set(cb, NL_CB_VALID, NL_CB_CUSTOM, r->parse, r->arg);
		rc = nl_send_auto(sk, msg);
		while (rc >= 0 && !r->done)
			rc = nl_recvmsgs(sk, cb);
		nl_cb_put(cb);
	}
	nlmsg_free(msg);
	if (r->err)
		return -1;
	if (rc < 0) {
		r->err = net_nle_errno(rc);
		snprintf(r->msg, sizeof(r->msg), "%s", nl_geterror(rc));
		return -1;
	}
	return 0;
}

/* ---- the socket -------------------------------------------------------- */

static void net_release(struct netsock *s)
{
	if (s->route)
		nl_socket_free(s->route);
	if (s->genl)
		nl_socket_free(s->genl);
	s->route = s->genl = NULL;
}

static int net_gc(lua_State *L)
{
	net_release(luaL_checkudata(L, 1, SOCK_MT));
	return 0;
}

static struct netsock *net_check(lua_State *L)
{
	struct netsock *s = luaL_checkudata(L, 1, SOCK_MT);

	luaL_argcheck(L, s->route != NULL, 1, "socket is closed");
	return s;
}

static void net_ext_ack(struct nl_sock *sk)
{
	int one = 1;

	/* Best effort: an older kernel just gives no message. */
	setsockopt(nl_socket_get_fd(sk), SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one));
	setsockopt(nl_socket_get_fd(sk), SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
}

/* Open both sockets in the current namespace; 0, or a libnl error code. */
static int net_connect(struct netsock *s)
{
	int rc;

	s->route = nl_socket_alloc();
	s->genl = nl_socket_alloc();
	if (!s->route || !s->genl)
		return -NLE_NOMEM;
	if ((rc = nl_connect(s->route, NETLINK_ROUTE)) < 0 || (rc = genl_connect(s->genl)) < 0)
		return rc;
	net_ext_ack(s->route);
	net_ext_ack(s->genl);
	return 0;
}

/* net_connect inside the network namespace at path, then back; 0 or -1 with a failure pushed. */
static int net_connect_in(lua_State *L, struct netsock *s, const char *path)
{
	int here = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	int there, rc, err;

	if (here < 0)
		return drv_errno_fail(L, "netns: cannot open /proc/thread-self/ns/net"), -1;
	there = open(path, O_RDONLY | O_CLOEXEC);
	if (there < 0 || setns(there, CLONE_NEWNET) < 0) {
		err = errno;
		if (there >= 0)
			close(there);
		close(here);
		return drv_fail(L, err, "netns %s: cannot enter: %s", path, strerror(err)), -1;
	}
	close(there);
	rc = net_connect(s);
	if (setns(here, CLONE_NEWNET) < 0) {
		/* Staying in the other namespace would silently change what the whole process sees. */
		fprintf(stderr, "drvrun: cannot return from network namespace %s: %s\n", path, strerror(errno));
		abort();
	}
	close(here);
	if (rc < 0)
		return net_nle_fail(L, rc, lua_pushfstring(L, "netns %s: cannot open netlink sockets", path)), -1;
	return 0;
}

/***
 * Open netlink sockets (rtnetlink and generic netlink) for the other calls.
 * @function open
 * @tparam[opt] table opts `{ netns = "/proc/PID/ns/net" or "/run/netns/NAME" }`: work in that
 *   network namespace instead of the caller's (the sockets stay in it)
 * @treturn[1] socket with the methods below; closed by `:close()`, `__close` or `__gc`
 * @treturn[2] nil, "netns <path>: cannot enter: <cause>", errno
 * @see nl_connect(3), setns(2)
 */
static int net_l_open(lua_State *L)
{
	int opts = drv_opttable(L, 1);
	const char *netns = drv_optfield_string(L, opts, "netns", NULL);
	struct netsock *s;
	int rc;

	DRV_LAZY_LOAD(L, NL);
	DRV_LAZY_LOAD(L, NL_ROUTE);
	DRV_LAZY_LOAD(L, NL_GENL);
	s = lua_newuserdatauv(L, sizeof(*s), 0);
	s->route = s->genl = NULL;
	s->devlink = 0;
	luaL_setmetatable(L, SOCK_MT);
	if (netns) {
		if (net_connect_in(L, s, netns) < 0)
			return 3;
	} else if ((rc = net_connect(s)) < 0) {
		return net_nle_fail(L, rc, "cannot open netlink sockets");
	}
	return 1;
}

/***
 * Close the sockets (again is a no-op).
 * @function socket:close
 */
static int net_l_close(lua_State *L)
{
	net_release(luaL_checkudata(L, 1, SOCK_MT));
	return 0;
}

/* ---- values ------------------------------------------------------------ */

/* An nl_addr as text without its prefix: "10.0.0.1", "fe80::1", "02:00:00:00:00:01". */
static void net_push_addr(lua_State *L, struct nl_addr *a)
{
	char buf[INET6_ADDRSTRLEN + 8];
	char *slash;

	nl_addr2str(a, buf, sizeof(buf));
	slash = strchr(buf, '/');
	if (slash)
		*slash = '\0';
	lua_pushstring(L, buf);
}

static void net_set_addr(lua_State *L, const char *field, struct nl_addr *a)
{
	if (!a)
		return;
	net_push_addr(L, a);
	lua_setfield(L, -2, field);
}

static void net_set_string(lua_State *L, const char *field, const char *value)
{
	lua_pushstring(L, value);
	lua_setfield(L, -2, field);
}

static const char *net_family(int family)
{
	return family == AF_INET ? "inet" : family == AF_INET6 ? "inet6" : "other";
}

static void net_set_int_attr(lua_State *L, const char *dir, const char *attr, const char *field)
{
	char path[PATH_MAX], buf[64];

	snprintf(path, sizeof(path), "%s/%s", dir, attr);
	if (drv_read_attr(path, buf, sizeof(buf)) == 0) {
		lua_pushinteger(L, strtoll(buf, NULL, 10));
		lua_setfield(L, -2, field);
	}
}

/* The bus whose devices include addr ("pci", ...), into bus; 0 or -1. */
static int net_find_bus(const char *addr, char *bus, size_t size)
{
	char path[PATH_MAX];
	struct dirent *e;
	DIR *d = opendir(SYSBUS);
	int found = -1;

	if (!d)
		return -1;
	while (found < 0 && (e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), SYSBUS "/%s/devices/%s", e->d_name, addr);
		if (access(path, F_OK) == 0) {
			snprintf(bus, size, "%s", e->d_name);
			found = 0;
		}
	}
	closedir(d);
	return found;
}

/* Set driver, bus, device, module, numvfs and totalvfs of the link named name. */
static void net_set_device(lua_State *L, struct netsock *s, const char *name)
{
	struct ethtool_drvinfo info = { .cmd = ETHTOOL_GDRVINFO };
	struct ifreq ifr;
	char bus[NAME_MAX + 1], dir[PATH_MAX], path[PATH_MAX + 16];
	ssize_t n;

	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	ifr.ifr_data = (void *)&info;
	if (ioctl(nl_socket_get_fd(s->route), SIOCETHTOOL, &ifr) < 0)
		return;
	info.driver[sizeof(info.driver) - 1] = info.bus_info[sizeof(info.bus_info) - 1] = '\0';
	if (info.driver[0])
		net_set_string(L, "driver", info.driver);
	if (!info.bus_info[0] || strchr(info.bus_info, '/') || net_find_bus(info.bus_info, bus, sizeof(bus)) < 0)
		return;
	snprintf(dir, sizeof(dir), SYSBUS "/%s/devices/%s", bus, info.bus_info);
	net_set_string(L, "bus", bus);
	net_set_string(L, "device", info.bus_info);
	net_set_int_attr(L, dir, "sriov_numvfs", "numvfs");
	net_set_int_attr(L, dir, "sriov_totalvfs", "totalvfs");
	snprintf(path, sizeof(path), "%s/driver/module", dir);
	n = readlink(path, dir, sizeof(dir) - 1);
	if (n > 0) {
		dir[n] = '\0';
		net_set_string(L, "module", strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir);
	}
}

static const char *net_linkstate(uint32_t state)
{
	switch (state) {
	case IFLA_VF_LINK_STATE_AUTO:
		return "auto";
	case IFLA_VF_LINK_STATE_ENABLE:
		return "enable";
	case IFLA_VF_LINK_STATE_DISABLE:
		return "disable";
	default:
		return "unknown";
	}
}

static void net_push_vf(lua_State *L, struct rtnl_link_vf *vf)
{
	struct nl_addr *mac = NULL;
	nl_vf_vlans_t *vlans = NULL;
	uint32_t v;

	lua_newtable(L);
	if (rtnl_link_vf_get_index(vf, &v) == 0) {
		lua_pushinteger(L, v);
		lua_setfield(L, -2, "vf");
	}
	if (rtnl_link_vf_get_addr(vf, &mac) == 0)
		net_set_addr(L, "mac", mac);
	if (rtnl_link_vf_get_vlans(vf, &vlans) == 0 && vlans && vlans->size > 0) {
		lua_pushinteger(L, vlans->vlans[0].vf_vlan);
		lua_setfield(L, -2, "vlan");
		lua_pushinteger(L, vlans->vlans[0].vf_vlan_qos);
		lua_setfield(L, -2, "qos");
	}
	if (rtnl_link_vf_get_spoofchk(vf, &v) == 0) {
		lua_pushboolean(L, v == 1);
		lua_setfield(L, -2, "spoofchk");
	}
	if (rtnl_link_vf_get_trust(vf, &v) == 0) {
		lua_pushboolean(L, v == 1);
		lua_setfield(L, -2, "trust");
	}
	if (rtnl_link_vf_get_linkstate(vf, &v) == 0) {
		lua_pushstring(L, net_linkstate(v));
		lua_setfield(L, -2, "link_state");
	}
}

static void net_set_vfs(lua_State *L, struct rtnl_link *link)
{
	uint32_t n, i;
	int k = 0;

	/* A switchdev representor has its PF's VF count (IFLA_NUM_VF, from the
	 * parent device) but no VF list: libnl's rtnl_link_vf_get would walk a
	 * list it never made. */
	if (rtnl_link_get_num_vf(link, &n) < 0 || !rtnl_link_has_vf_list(link))
		return;
	lua_createtable(L, (int)n, 0);
	for (i = 0; i < n; i++) {
		struct rtnl_link_vf *vf = rtnl_link_vf_get(link, i);

		if (!vf)
			continue;
		net_push_vf(L, vf);
		rtnl_link_vf_put(vf);
		lua_rawseti(L, -2, ++k);
	}
	lua_setfield(L, -2, "vfs");
}

/* The name of link ifindex, from cache (NULL: asked of the kernel) into buf; NULL when there is none. */
static const char *net_ifname(struct netsock *s, struct nl_cache *cache, int ifindex, char *buf, size_t size)
{
	struct rtnl_link *l = NULL;

	if (ifindex <= 0)
		return NULL;
	if (cache)
		return rtnl_link_i2name(cache, ifindex, buf, size);
	if (rtnl_link_get_kernel(s->route, ifindex, NULL, &l) < 0)
		return NULL;
	snprintf(buf, size, "%s", rtnl_link_get_name(l));
	rtnl_link_put(l);
	return buf;
}

/* Set master, lower, and a VLAN's id and protocol or a macvlan's mode. */
static void net_set_stacking(lua_State *L, struct netsock *s, struct nl_cache *cache, struct rtnl_link *link)
{
	char name[IFNAMSIZ], buf[32];
	int32_t nsid;

	if (net_ifname(s, cache, rtnl_link_get_master(link), name, sizeof(name)))
		net_set_string(L, "master", name);
	/* With IFLA_LINK_NETNSID, IFLA_LINK is an ifindex of another namespace. */
	if (rtnl_link_get_link_netnsid(link, &nsid) < 0 && net_ifname(s, cache, rtnl_link_get_link(link), name, sizeof(name)))
		net_set_string(L, "lower", name);
	if (rtnl_link_is_vlan(link)) {
		lua_pushinteger(L, rtnl_link_vlan_get_id(link));
		lua_setfield(L, -2, "vlan_id");
		net_set_string(L, "vlan_protocol",
			       rtnl_link_vlan_get_protocol(link) == htons(ETH_P_8021AD) ? "802.1ad" : "802.1Q");
	} else if (rtnl_link_is_macvlan(link)) {
		net_set_string(L, "macvlan_mode",
			       rtnl_link_macvlan_mode2str((int)rtnl_link_macvlan_get_mode(link), buf, sizeof(buf)));
	}
}

static void net_push_link(lua_State *L, struct netsock *s, struct nl_cache *cache, struct rtnl_link *link)
{
	char buf[64];
	const char *kind = rtnl_link_get_type(link);

	lua_newtable(L);
	lua_pushstring(L, rtnl_link_get_name(link));
	lua_setfield(L, -2, "name");
	lua_pushinteger(L, rtnl_link_get_ifindex(link));
	lua_setfield(L, -2, "ifindex");
	lua_pushinteger(L, rtnl_link_get_mtu(link));
	lua_setfield(L, -2, "mtu");
	lua_pushstring(L, rtnl_link_get_flags(link) & IFF_UP ? "up" : "down");
	lua_setfield(L, -2, "admin");
	lua_pushstring(L, rtnl_link_operstate2str(rtnl_link_get_operstate(link), buf, sizeof(buf)));
	lua_setfield(L, -2, "oper");
	net_set_addr(L, "mac", rtnl_link_get_addr(link));
	if (kind) {
		lua_pushstring(L, kind);
		lua_setfield(L, -2, "kind");
	}
	net_set_stacking(L, s, cache, link);
	net_set_device(L, s, rtnl_link_get_name(link));
	net_set_vfs(L, link);
}

/***
 * The links of the namespace, in ifindex order.
 * @function socket:links
 * @treturn[1] table `{ { name, ifindex, mtu, admin = "up"|"down", oper = "up"|"down"|"unknown"|...,
 *   mac, kind = "veth"|"vlan"|"bond"|...|nil, master = the bond, bridge or VRF it is a port of,
 *   lower = the link it is on (IFLA_LINK: a VLAN's or macvlan's device; a veth's peer; none in
 *   another namespace), vlan_id, vlan_protocol = "802.1Q"|"802.1ad" (a VLAN), macvlan_mode =
 *   "private"|"vepa"|"bridge"|"passthru"|"source" (a macvlan), driver (ETHTOOL_GDRVINFO's), bus =
 *   "pci"|nil, device = bus address|nil,
 *   module = the module of the bus device's driver (sysfs device/driver/module), numvfs, totalvfs,
 *   vfs = { { vf, mac, vlan, qos, spoofchk, trust, link_state = "auto"|"enable"|"disable" }... } }... }`
 *   (fields the kernel does not give are nil: vfs only where it lists them, IFLA_VFINFO_LIST)
 * @treturn[2] nil, "links: <cause>", errno
 * @see rtnetlink(7) RTM_GETLINK, sysfs-bus-pci sriov_numvfs
 */
static int net_l_links(lua_State *L)
{
	struct netsock *s = net_check(L);
	struct nl_cache *cache;
	struct nl_object *o;
	int rc = rtnl_link_alloc_cache(s->route, AF_UNSPEC, &cache);
	int i = 0;

	if (rc < 0)
		return net_nle_fail(L, rc, "links");
	lua_newtable(L);
	for (o = nl_cache_get_first(cache); o; o = nl_cache_get_next(o)) {
		net_push_link(L, s, cache, (struct rtnl_link *)o);
		lua_rawseti(L, -2, ++i);
	}
	nl_cache_free(cache);
	return 1;
}

/* The link named name from the kernel (a reference), or NULL with a failure pushed. */
static struct rtnl_link *net_get_link(lua_State *L, struct netsock *s, const char *name, const char *what)
{
	struct rtnl_link *link = NULL;
	int rc = rtnl_link_get_kernel(s->route, 0, name, &link);

	if (rc < 0) {
		int err = net_nle_errno(rc);

		if (err == ENOENT)
			err = ENODEV;
		drv_fail(L, err, "%s: cannot %s: %s", name, what, err == ENODEV ? "no such device" : nl_geterror(rc));
		return NULL;
	}
	return link;
}

/***
 * One link, as in links().
 * @function socket:link
 * @tparam string name
 * @treturn[1] table
 * @treturn[2] nil, "<name>: cannot read the link: no such device", errno (ENODEV)
 */
static int net_l_link(lua_State *L)
{
	struct netsock *s = net_check(L);
	const char *name = luaL_checkstring(L, 2);
	struct rtnl_link *link = net_get_link(L, s, name, "read the link");

	if (!link)
		return 3;
	net_push_link(L, s, NULL, link);
	rtnl_link_put(link);
	return 1;
}

/* The name of ifindex in cache, pushed as a field of the table on top. */
static void net_set_dev(lua_State *L, struct nl_cache *links, int ifindex)
{
	char name[IFNAMSIZ];

	if (ifindex <= 0 || !rtnl_link_i2name(links, ifindex, name, sizeof(name)))
		return;
	lua_pushstring(L, name);
	lua_setfield(L, -2, "dev");
}

static void net_push_address(lua_State *L, struct nl_cache *links, struct rtnl_addr *a)
{
	char buf[32];

	lua_newtable(L);
	net_set_dev(L, links, rtnl_addr_get_ifindex(a));
	lua_pushstring(L, net_family(rtnl_addr_get_family(a)));
	lua_setfield(L, -2, "family");
	net_set_addr(L, "address", rtnl_addr_get_local(a));
	lua_pushinteger(L, rtnl_addr_get_prefixlen(a));
	lua_setfield(L, -2, "prefix");
	lua_pushstring(L, rtnl_scope2str(rtnl_addr_get_scope(a), buf, sizeof(buf)));
	lua_setfield(L, -2, "scope");
	lua_pushboolean(L, !(rtnl_addr_get_flags(a) & IFA_F_PERMANENT));
	lua_setfield(L, -2, "dynamic");
}

/***
 * The IPv4 and IPv6 addresses of the namespace.
 * @function socket:addresses
 * @tparam[opt] string name only this link's
 * @treturn[1] table `{ { dev, family = "inet"|"inet6", address, prefix, scope = "global"|"link"|"host",
 *   dynamic = true for an address the kernel made or a lifetime limits (SLAAC, DHCP) }... }`
 * @treturn[2] nil, "addresses: <cause>", errno
 * @see rtnetlink(7) RTM_GETADDR
 */
static int net_l_addresses(lua_State *L)
{
	struct netsock *s = net_check(L);
	const char *only = luaL_optstring(L, 2, NULL);
	struct nl_cache *links, *addrs;
	struct nl_object *o;
	int rc, i = 0, ifindex = 0;

	if ((rc = rtnl_link_alloc_cache(s->route, AF_UNSPEC, &links)) < 0)
		return net_nle_fail(L, rc, "addresses");
	if (only && !(ifindex = rtnl_link_name2i(links, only))) {
		nl_cache_free(links);
		return drv_fail(L, ENODEV, "%s: cannot read the addresses: no such device", only);
	}
	if ((rc = rtnl_addr_alloc_cache(s->route, &addrs)) < 0) {
		nl_cache_free(links);
		return net_nle_fail(L, rc, "addresses");
	}
	lua_newtable(L);
	for (o = nl_cache_get_first(addrs); o; o = nl_cache_get_next(o)) {
		struct rtnl_addr *a = (struct rtnl_addr *)o;

		if (ifindex && rtnl_addr_get_ifindex(a) != ifindex)
			continue;
		net_push_address(L, links, a);
		lua_rawseti(L, -2, ++i);
	}
	nl_cache_free(addrs);
	nl_cache_free(links);
	return 1;
}

static void net_push_route(lua_State *L, struct nl_cache *links, struct rtnl_route *r)
{
	struct nl_addr *dst = rtnl_route_get_dst(r);
	char buf[64];

	lua_newtable(L);
	net_set_string(L, "family", net_family(rtnl_route_get_family(r)));
	if (!dst || nl_addr_get_prefixlen(dst) == 0) {
		net_set_string(L, "dst", "default");
	} else {
		net_push_addr(L, dst);
		lua_pushfstring(L, "%s/%d", lua_tostring(L, -1), (int)nl_addr_get_prefixlen(dst));
		lua_setfield(L, -3, "dst");
		lua_pop(L, 1);
	}
	if (rtnl_route_get_nnexthops(r) > 0) {
		struct rtnl_nexthop *nh = rtnl_route_nexthop_n(r, 0);

		net_set_addr(L, "gateway", rtnl_route_nh_get_gateway(nh));
		net_set_dev(L, links, rtnl_route_nh_get_ifindex(nh));
	}
	if (rtnl_route_get_nnexthops(r) > 1) {
		lua_pushinteger(L, rtnl_route_get_nnexthops(r));
		lua_setfield(L, -2, "nexthops");
	}
	net_set_addr(L, "prefsrc", rtnl_route_get_pref_src(r));
	lua_pushinteger(L, rtnl_route_get_table(r));
	lua_setfield(L, -2, "table");
	lua_pushinteger(L, rtnl_route_get_priority(r));
	lua_setfield(L, -2, "metric");
	net_set_string(L, "type", nl_rtntype2str(rtnl_route_get_type(r), buf, sizeof(buf)));
	net_set_string(L, "protocol", rtnl_route_proto2str(rtnl_route_get_protocol(r), buf, sizeof(buf)));
	net_set_string(L, "scope", rtnl_scope2str(rtnl_route_get_scope(r), buf, sizeof(buf)));
}

/***
 * The routes of one table (IPv4 and IPv6).
 * @function socket:routes
 * @tparam[opt] table opts `{ table = 254 (main; 0 for every table) }`
 * @treturn[1] table `{ { family, dst = "default"|"10.0.0.0/24", gateway, dev, prefsrc, table, metric,
 *   type = "unicast"|..., protocol = "kernel"|"boot"|"static"|"dhcp"|..., scope, nexthops = n (only
 *   when more than one: gateway and dev are the first's) }... }`
 * @treturn[2] nil, "routes: <cause>", errno
 * @see rtnetlink(7) RTM_GETROUTE
 */
static int net_l_routes(lua_State *L)
{
	struct netsock *s = net_check(L);
	int opts = drv_opttable(L, 2);
	lua_Integer table = drv_optfield_integer(L, opts, "table", RT_TABLE_MAIN);
	struct nl_cache *links, *routes;
	struct nl_object *o;
	int rc, i = 0;

	if ((rc = rtnl_link_alloc_cache(s->route, AF_UNSPEC, &links)) < 0)
		return net_nle_fail(L, rc, "routes");
	if ((rc = rtnl_route_alloc_cache(s->route, AF_UNSPEC, 0, &routes)) < 0) {
		nl_cache_free(links);
		return net_nle_fail(L, rc, "routes");
	}
	lua_newtable(L);
	for (o = nl_cache_get_first(routes); o; o = nl_cache_get_next(o)) {
		struct rtnl_route *r = (struct rtnl_route *)o;

		if (table && rtnl_route_get_table(r) != (uint32_t)table)
			continue;
		net_push_route(L, links, r);
		lua_rawseti(L, -2, ++i);
	}
	nl_cache_free(routes);
	nl_cache_free(links);
	return 1;
}

/* ---- setters --------------------------------------------------------------- */

/* Apply change to the link named name; pushes true or the failure. */
static int net_change_link(lua_State *L, struct netsock *s, const char *name, struct rtnl_link *change,
			   const char *what)
{
	struct rtnl_link *orig = net_get_link(L, s, name, what);
	struct nl_msg *msg = NULL;
	struct reply r = { 0 };
	int rc;

	if (!orig)
		return rtnl_link_put(change), 3;
	rc = rtnl_link_build_change_request(orig, change, 0, &msg);
	rtnl_link_put(orig);
	rtnl_link_put(change);
	if (rc < 0)
		return net_nle_fail(L, rc, lua_pushfstring(L, "%s: cannot %s", name, what));
	if (net_transact(s->route, msg, &r) < 0)
		return net_reply_fail(L, &r, lua_pushfstring(L, "%s: cannot %s", name, what));
	return drv_ok(L);
}

static struct rtnl_link *net_new_change(lua_State *L)
{
	struct rtnl_link *change = rtnl_link_alloc();

	if (!change)
		luaL_error(L, "not enough memory");
	return change;
}

/* A MAC address argument as an nl_addr (a reference), raising when malformed. */
static struct nl_addr *net_check_mac(lua_State *L, int idx, const char *text)
{
	struct nl_addr *a = NULL;

	if (nl_addr_parse(text, AF_LLC, &a) < 0 || nl_addr_get_len(a) != 6) {
		if (a)
			nl_addr_put(a);
		luaL_argerror(L, idx, lua_pushfstring(L, "field 'mac': a MAC address expected, got '%s'", text));
	}
	return a;
}

/* The master field of set_link's options: its name, "" for none (false), NULL when not given. */
static const char *net_opt_master(lua_State *L, int opts)
{
	int t = lua_getfield(L, opts, "master");
	const char *master = t == LUA_TSTRING ? lua_tostring(L, -1) : NULL;

	luaL_argcheck(L, t == LUA_TNIL || (t == LUA_TBOOLEAN && !lua_toboolean(L, -1)) || (master && master[0]), 3,
		      "field 'master': a link's name, or false for none");
	lua_pop(L, 1); /* the option table keeps the string */
	return t == LUA_TBOOLEAN ? "" : master;
}

/***
 * Set a link's admin state, MTU and/or master (one request).
 * @function socket:set_link
 * @tparam string name
 * @tparam table opts `{ up = true|false, mtu = n, master = "bond0" (a port of that bond, bridge or
 *   VRF; a bond's port must be down) or false (a port of none) }`
 * @treturn[1] true
 * @treturn[2] nil, "<name>: cannot set the link (mtu 100000): Invalid argument (kernel: mtu greater
 *   than device maximum)", errno
 * @see rtnetlink(7) RTM_NEWLINK, ip-link(8) master
 */
static int net_l_set_link(lua_State *L)
{
	struct netsock *s = net_check(L);
	const char *name = luaL_checkstring(L, 2);
	int opts = (luaL_checktype(L, 3, LUA_TTABLE), 3);
	lua_Integer mtu = drv_optfield_integer(L, opts, "mtu", -1);
	int up = lua_getfield(L, opts, "up") == LUA_TNIL ? -1 : lua_toboolean(L, -1);
	const char *master = net_opt_master(L, opts);
	struct rtnl_link *change, *m = NULL;
	luaL_Buffer what;

	luaL_argcheck(L, mtu == -1 || (mtu > 0 && mtu <= UINT32_MAX), 3, "field 'mtu': out of range");
	luaL_argcheck(L, mtu != -1 || up != -1 || master, 3, "nothing to set: give 'up', 'mtu' and/or 'master'");
	if (master && master[0] && !(m = net_get_link(L, s, master, lua_pushfstring(L, "make %s its port", name))))
		return 3;
	luaL_buffinit(L, &what);
	luaL_addstring(&what, "set the link (");
	change = rtnl_link_alloc();
	if (!change) {
		if (m)
			rtnl_link_put(m);
		return luaL_error(L, "not enough memory");
	}
	if (up != -1) {
		if (up)
			rtnl_link_set_flags(change, IFF_UP);
		else
			rtnl_link_unset_flags(change, IFF_UP);
		luaL_addstring(&what, up ? "up" : "down");
	}
	if (mtu != -1) {
		rtnl_link_set_mtu(change, (unsigned int)mtu);
		lua_pushfstring(L, "%smtu %d", up != -1 ? ", " : "", (int)mtu);
		luaL_addvalue(&what);
	}
	if (master) {
		rtnl_link_set_master(change, m ? rtnl_link_get_ifindex(m) : 0);
		lua_pushfstring(L, "%s%s%s", up != -1 || mtu != -1 ? ", " : "", m ? "master " : "no master", master);
		luaL_addvalue(&what);
		if (m)
			rtnl_link_put(m);
	}
	luaL_addstring(&what, ")");
	luaL_pushresult(&what);
	return net_change_link(L, s, name, change, lua_tostring(L, -1));
}

/* The link add_link's options describe (a reference), or NULL with a failure pushed (lower is gone). */
static struct rtnl_link *net_new_upper(lua_State *L, struct netsock *s, int opts, const char *name, int kind)
{
	static const char *const protocols[] = { "802.1Q", "802.1ad", NULL };
	const char *lower = drv_optfield_string(L, opts, "lower", NULL);
	const char *mode = drv_optfield_string(L, opts, "mode", NULL);
	const char *protocol = drv_optfield_string(L, opts, "protocol", "802.1Q");
	const char *mac = drv_optfield_string(L, opts, "mac", NULL);
	lua_Integer id = drv_optfield_integer(L, opts, "id", -1);
	lua_Integer mtu = drv_optfield_integer(L, opts, "mtu", -1);
	int m = mode ? rtnl_link_macvlan_str2mode(mode) : -1, proto = 0;
	struct rtnl_link *l, *under;
	struct nl_addr *addr = NULL;

	luaL_argcheck(L, lower != NULL, 2, "field 'lower': the link to add it on expected");
	luaL_argcheck(L, mtu == -1 || (mtu > 0 && mtu <= UINT32_MAX), 2, "field 'mtu': out of range");
	if (kind == 0) {
		luaL_argcheck(L, id >= 0 && id < 4095, 2, "field 'id': a VLAN id (0-4094) expected");
		for (; protocols[proto] && strcmp(protocols[proto], protocol) != 0; proto++)
			;
		luaL_argcheck(L, protocols[proto] != NULL, 2,
			      lua_pushfstring(L, "field 'protocol': 802.1Q or 802.1ad expected, got '%s'", protocol));
	} else {
		luaL_argcheck(L, !mode || m >= 0, 2, lua_pushfstring(L, "field 'mode': a macvlan mode expected, got '%s'", mode));
	}
	if (mac)
		addr = net_check_mac(L, 2, mac);
	under = net_get_link(L, s, lower, lua_pushfstring(L, "add %s on it", name));
	l = under ? (kind == 0 ? rtnl_link_vlan_alloc() : rtnl_link_macvlan_alloc()) : NULL;
	if (!l) {
		if (addr)
			nl_addr_put(addr);
		if (!under)
			return NULL;
		rtnl_link_put(under);
		luaL_error(L, "not enough memory");
	}
	rtnl_link_set_name(l, name);
	rtnl_link_set_link(l, rtnl_link_get_ifindex(under));
	rtnl_link_put(under);
	if (kind == 0) {
		rtnl_link_vlan_set_id(l, (uint16_t)id);
		rtnl_link_vlan_set_protocol(l, htons(proto ? ETH_P_8021AD : ETH_P_8021Q));
	} else if (m >= 0) {
		rtnl_link_macvlan_set_mode(l, (uint32_t)m);
	}
	if (addr) {
		rtnl_link_set_addr(l, addr);
		nl_addr_put(addr);
	}
	if (mtu != -1)
		rtnl_link_set_mtu(l, (unsigned int)mtu);
	return l;
}

/***
 * Add a VLAN or a macvlan on a link (its lower device).
 * @function socket:add_link
 * @tparam table opts `{ name = "eth0.10", kind = "vlan"|"macvlan", lower = "eth0", id = 10 (a VLAN's),
 *   protocol = "802.1Q"|"802.1ad" (a VLAN's; 802.1Q), mode = "private"|"vepa"|"bridge"|"passthru"|"source"
 *   (a macvlan's; the kernel's default: vepa), mac = "02:..", mtu = n }`
 * @treturn[1] true
 * @treturn[2] nil, "<name>: cannot add a <kind> link on <lower>: <cause>", errno (EEXIST when a link has
 *   that name; ENODEV when lower is gone: "<lower>: cannot add <name> on it: no such device")
 * @see rtnetlink(7) RTM_NEWLINK, ip-link(8) type vlan, type macvlan
 */
static int net_l_add_link(lua_State *L)
{
	static const char *const kinds[] = { "vlan", "macvlan", NULL };
	struct netsock *s = net_check(L);
	int opts = (luaL_checktype(L, 2, LUA_TTABLE), 2);
	const char *name = drv_optfield_string(L, opts, "name", NULL);
	const char *kindname = drv_optfield_string(L, opts, "kind", NULL);
	int kind = 0;
	struct rtnl_link *l;
	struct nl_msg *msg = NULL;
	struct reply r = { 0 };
	int rc;

	luaL_argcheck(L, name && name[0] && strlen(name) < IFNAMSIZ && !strchr(name, '/'), 2,
		      "field 'name': a link name (1-15 characters, no '/') expected");
	for (; kindname && kinds[kind] && strcmp(kinds[kind], kindname) != 0; kind++)
		;
	luaL_argcheck(L, kindname && kinds[kind], 2, "field 'kind': \"vlan\" or \"macvlan\" expected");
	if (!(l = net_new_upper(L, s, opts, name, kind)))
		return 3;
	rc = rtnl_link_build_add_request(l, NLM_F_CREATE | NLM_F_EXCL, &msg);
	rtnl_link_put(l);
	lua_pushfstring(L, "%s: cannot add a %s link on %s", name, kindname, drv_optfield_string(L, opts, "lower", NULL));
	if (rc < 0)
		return net_nle_fail(L, rc, lua_tostring(L, -1));
	if (net_transact(s->route, msg, &r) < 0)
		return net_reply_fail(L, &r, lua_tostring(L, -1));
	return drv_ok(L);
}

/***
 * Set what the PF tells its VF: admin MAC, VLAN, spoofchk, trust, link state.
 * @function socket:set_vf
 * @tparam string name the PF's link
 * @tparam integer vf the VF's index (0-based)
 * @tparam table opts `{ mac = "02:..", vlan = n, qos = n, spoofchk = bool, trust = bool,
 *   link_state = "auto"|"enable"|"disable" }`
 * @treturn[1] true
 * @treturn[2] nil, "<name>: cannot set VF <vf>: <cause>", errno
 * @see ip-link(8) vf, rtnetlink(7) IFLA_VFINFO_LIST
 */
static int net_l_set_vf(lua_State *L)
{
	static const char *const states[] = { "auto", "enable", "disable", NULL };
	struct netsock *s = net_check(L);
	const char *name = luaL_checkstring(L, 2);
	lua_Integer index = luaL_checkinteger(L, 3);
	int opts = (luaL_checktype(L, 4, LUA_TTABLE), 4);
	const char *mac = drv_optfield_string(L, opts, "mac", NULL);
	lua_Integer vlan = drv_optfield_integer(L, opts, "vlan", -1);
	lua_Integer qos = drv_optfield_integer(L, opts, "qos", 0);
	const char *state = drv_optfield_string(L, opts, "link_state", NULL);
	int spoofchk = lua_getfield(L, opts, "spoofchk") == LUA_TNIL ? -1 : lua_toboolean(L, -1);
	int trust = lua_getfield(L, opts, "trust") == LUA_TNIL ? -1 : lua_toboolean(L, -1);
	struct nl_addr *addr = NULL;
	struct rtnl_link_vf *vf;
	struct rtnl_link *change;
	int st = -1;

	luaL_argcheck(L, index >= 0 && index <= INT32_MAX, 3, "a VF index (0 or more) expected");
	luaL_argcheck(L, vlan >= -1 && vlan < 4095 && qos >= 0 && qos < 8, 4, "field 'vlan' or 'qos': out of range");
	if (state) {
		for (st = 0; states[st] && strcmp(states[st], state) != 0; st++)
			;
		luaL_argcheck(L, states[st] != NULL, 4, lua_pushfstring(L, "field 'link_state': invalid value '%s'", state));
	}
	if (mac)
		addr = net_check_mac(L, 4, mac);
	change = net_new_change(L);
	vf = rtnl_link_vf_alloc();
	if (!vf) {
		if (addr)
			nl_addr_put(addr);
		rtnl_link_put(change);
		return luaL_error(L, "not enough memory");
	}
	rtnl_link_vf_set_index(vf, (uint32_t)index);
	if (addr) {
		rtnl_link_vf_set_addr(vf, addr);
		nl_addr_put(addr);
	}
	if (vlan >= 0) {
		nl_vf_vlans_t *vlans = NULL;

		if (rtnl_link_vf_vlan_alloc(&vlans, 1) == 0) {
			vlans->vlans[0].vf_vlan = (uint32_t)vlan;
			vlans->vlans[0].vf_vlan_qos = (uint32_t)qos;
			vlans->vlans[0].vf_vlan_proto = ETH_P_8021Q;
			rtnl_link_vf_set_vlans(vf, vlans);
			rtnl_link_vf_vlan_put(vlans);
		}
	}
	if (spoofchk != -1)
		rtnl_link_vf_set_spoofchk(vf, (uint32_t)spoofchk);
	if (trust != -1)
		rtnl_link_vf_set_trust(vf, (uint32_t)trust);
	if (st >= 0)
		rtnl_link_vf_set_linkstate(vf, (uint32_t)st);
	rtnl_link_vf_add(change, vf);
	rtnl_link_vf_put(vf);
	return net_change_link(L, s, name, change, lua_pushfstring(L, "set VF %d", (int)index));
}

/* An address argument "10.0.0.1/24" or "fd00::1/64" as an nl_addr (a reference), raising when malformed. */
static struct nl_addr *net_check_ip(lua_State *L, int idx, const char *text, int family, const char *what)
{
	struct nl_addr *a = NULL;

	if (nl_addr_parse(text, family, &a) < 0 ||
	    (nl_addr_get_family(a) != AF_INET && nl_addr_get_family(a) != AF_INET6)) {
		if (a)
			nl_addr_put(a);
		luaL_argerror(L, idx, lua_pushfstring(L, "%s: an IPv4 or IPv6 address expected, got '%s'", what, text));
	}
	return a;
}

/***
 * Add an address to a link.
 * @function socket:add_address
 * @tparam string name
 * @tparam string address with its prefix length: "10.0.0.1/24", "fd00::1/64" (no prefix: a host address)
 * @treturn[1] true
 * @treturn[2] nil, "<name>: cannot add address <address>: <cause>", errno (EEXIST when it is there)
 * @see rtnetlink(7) RTM_NEWADDR
 */
static int net_l_add_address(lua_State *L)
{
	struct netsock *s = net_check(L);
	const char *name = luaL_checkstring(L, 2);
	const char *text = luaL_checkstring(L, 3);
	struct nl_addr *local = net_check_ip(L, 3, text, AF_UNSPEC, "address");
	struct rtnl_link *link = net_get_link(L, s, name, lua_pushfstring(L, "add address %s", text));
	struct rtnl_addr *a;
	struct nl_msg *msg = NULL;
	struct reply r = { 0 };
	int rc;

	if (!link)
		return nl_addr_put(local), 3;
	a = rtnl_addr_alloc();
	if (!a) {
		nl_addr_put(local);
		rtnl_link_put(link);
		return luaL_error(L, "not enough memory");
	}
	rtnl_addr_set_ifindex(a, rtnl_link_get_ifindex(link));
	rtnl_link_put(link);
	rc = rtnl_addr_set_local(a, local);
	rtnl_addr_set_prefixlen(a, (int)nl_addr_get_prefixlen(local));
	nl_addr_put(local);
	if (rc == 0)
		rc = rtnl_addr_build_add_request(a, NLM_F_CREATE | NLM_F_EXCL, &msg);
	rtnl_addr_put(a);
	lua_pushfstring(L, "%s: cannot add address %s", name, text);
	if (rc < 0)
		return net_nle_fail(L, rc, lua_tostring(L, -1));
	if (net_transact(s->route, msg, &r) < 0)
		return net_reply_fail(L, &r, lua_tostring(L, -1));
	return drv_ok(L);
}

/* Fill route from the option table at opts; 0, or a failure pushed and 3. */
static int net_fill_route(lua_State *L, struct netsock *s, struct rtnl_route *route, int opts)
{
	const char *dst = drv_optfield_string(L, opts, "dst", NULL);
	const char *gw = drv_optfield_string(L, opts, "gateway", NULL);
	const char *dev = drv_optfield_string(L, opts, "dev", NULL);
	lua_Integer table = drv_optfield_integer(L, opts, "table", RT_TABLE_MAIN);
	lua_Integer metric = drv_optfield_integer(L, opts, "metric", -1);
	struct rtnl_nexthop *nh;
	struct nl_addr *a;
	int family = AF_UNSPEC;

	luaL_argcheck(L, dst != NULL, 2, "field 'dst': a destination (\"default\" or \"10.0.0.0/24\") expected");
	luaL_argcheck(L, gw || dev, 2, "a route needs a 'gateway', a 'dev' or both");
	luaL_argcheck(L, table > 0 && table <= UINT32_MAX && metric >= -1 && metric <= UINT32_MAX, 2,
		      "field 'table' or 'metric': out of range");
	if (!(nh = rtnl_route_nh_alloc()))
		return luaL_error(L, "not enough memory");
	rtnl_route_add_nexthop(route, nh); /* route owns nh from here */
	if (gw) {
		a = net_check_ip(L, 2, gw, AF_UNSPEC, "field 'gateway'");
		family = nl_addr_get_family(a);
		rtnl_route_nh_set_gateway(nh, a);
		nl_addr_put(a);
	}
	if (strcmp(dst, "default") == 0)
		a = net_check_ip(L, 2, dst, family == AF_UNSPEC ? AF_INET : family, "field 'dst'");
	else
		a = net_check_ip(L, 2, dst, AF_UNSPEC, "field 'dst'");
	if (family != AF_UNSPEC && nl_addr_get_family(a) != family) {
		nl_addr_put(a);
		return luaL_argerror(L, 2, "fields 'dst' and 'gateway': not of one address family");
	}
	rtnl_route_set_family(route, (uint8_t)nl_addr_get_family(a));
	rtnl_route_set_dst(route, a);
	nl_addr_put(a);
	rtnl_route_set_table(route, (uint32_t)table);
	if (metric >= 0)
		rtnl_route_set_priority(route, (uint32_t)metric);
	if (dev) {
		struct rtnl_link *link = net_get_link(L, s, dev, lua_pushfstring(L, "add a route to %s", dst));

		if (!link)
			return 3;
		rtnl_route_nh_set_ifindex(nh, rtnl_link_get_ifindex(link));
		rtnl_link_put(link);
	}
	return 0;
}

static int net_route_gc(lua_State *L)
{
	struct rtnl_route **r = luaL_checkudata(L, 1, ROUTE_MT);

	if (*r)
		rtnl_route_put(*r);
	*r = NULL;
	return 0;
}

/***
 * Add a route.
 * @function socket:add_route
 * @tparam table route `{ dst = "default"|"10.0.0.0/24", gateway = "10.0.0.254", dev = "eth0",
 *   table = 254, metric = n }` (a gateway, a dev or both)
 * @treturn[1] true
 * @treturn[2] nil, "cannot add a route to <dst>: <cause>", errno (EEXIST when it is there)
 * @see rtnetlink(7) RTM_NEWROUTE
 */
static int net_l_add_route(lua_State *L)
{
	struct netsock *s = net_check(L);
	int opts = (luaL_checktype(L, 2, LUA_TTABLE), 2);
	struct rtnl_route **route = lua_newuserdatauv(L, sizeof(*route), 0);
	struct nl_msg *msg = NULL;
	struct reply r = { 0 };
	int rc;

	/* The route lives in a userdata until sent, so an argument error frees it too. */
	*route = NULL;
	luaL_setmetatable(L, ROUTE_MT);
	if (!(*route = rtnl_route_alloc()))
		return luaL_error(L, "not enough memory");
	if (net_fill_route(L, s, *route, opts) != 0)
		return 3;
	rc = rtnl_route_build_add_request(*route, NLM_F_CREATE | NLM_F_EXCL, &msg);
	lua_pushfstring(L, "cannot add a route to %s", drv_optfield_string(L, opts, "dst", NULL));
	if (rc < 0)
		return net_nle_fail(L, rc, lua_tostring(L, -1));
	if (net_transact(s->route, msg, &r) < 0)
		return net_reply_fail(L, &r, lua_tostring(L, -1));
	return drv_ok(L);
}

/* ---- devlink ------------------------------------------------------------- */

static const char *const eswitch_modes[] = { "legacy", "switchdev", NULL };

/* The devlink family id, resolved once; > 0, or a failure pushed and -1. */
static int net_devlink_family(lua_State *L, struct netsock *s)
{
	int id;

	if (s->devlink > 0)
		return s->devlink;
	id = genl_ctrl_resolve(s->genl, DEVLINK_GENL_NAME);
	if (id < 0)
		return drv_fail(L, EOPNOTSUPP, "devlink: this kernel has no devlink (%s)", nl_geterror(id)), -1;
	return s->devlink = id;
}

static struct nl_msg *net_devlink_msg(lua_State *L, int family, uint8_t cmd, const char *bus, const char *dev)
{
	struct nl_msg *msg = nlmsg_alloc();

	if (!msg || !genlmsg_put(msg, NL_AUTO_PORT, NL_AUTO_SEQ, family, 0, 0, cmd, DEVLINK_GENL_VERSION) ||
	    nla_put_string(msg, DEVLINK_ATTR_BUS_NAME, bus) < 0 || nla_put_string(msg, DEVLINK_ATTR_DEV_NAME, dev) < 0) {
		if (msg)
			nlmsg_free(msg);
		luaL_error(L, "not enough memory");
	}
	return msg;
}

static int net_on_eswitch(struct nl_msg *msg, void *arg)
{
	struct nlattr *tb[DEVLINK_ATTR_MAX + 1];

	if (genlmsg_parse(nlmsg_hdr(msg), 0, tb, DEVLINK_ATTR_MAX, NULL) == 0 && tb[DEVLINK_ATTR_ESWITCH_MODE])
		*(int *)arg = nla_get_u16(tb[DEVLINK_ATTR_ESWITCH_MODE]);
	return NL_OK;
}

/* No devlink instance for bus/dev is ENODEV from the kernel: say so. */
static int net_devlink_fail(lua_State *L, struct reply *r, const char *bus, const char *dev, const char *what)
{
	if (r->err == ENODEV && !r->msg[0])
		snprintf(r->msg, sizeof(r->msg), "no devlink device %s/%s", bus, dev);
	return net_reply_fail(L, r, lua_pushfstring(L, "%s/%s: cannot %s", bus, dev, what));
}

/***
 * The eswitch mode of a devlink device.
 * @function socket:eswitch
 * @tparam string bus "pci"
 * @tparam string device its address: "0000:03:00.0"
 * @treturn[1] string "legacy" or "switchdev" (or "mode N" for another)
 * @treturn[2] nil, "<bus>/<device>: cannot read the eswitch mode: <cause>", errno
 * @see devlink-dev(8) eswitch show
 */
static int net_l_eswitch(lua_State *L)
{
	struct netsock *s = net_check(L);
	const char *bus = luaL_checkstring(L, 2);
	const char *dev = luaL_checkstring(L, 3);
	int family = net_devlink_family(L, s);
	int mode = -1;
	struct reply r = { .parse = net_on_eswitch, .arg = &mode };

	if (family < 0)
		return 3;
	if (net_transact(s->genl, net_devlink_msg(L, family, DEVLINK_CMD_ESWITCH_GET, bus, dev), &r) < 0)
		return net_devlink_fail(L, &r, bus, dev, "read the eswitch mode");
	if (mode < 0)
		return drv_fail(L, EIO, "%s/%s: cannot read the eswitch mode: the kernel did not say", bus, dev);
	if (mode <= 1)
		lua_pushstring(L, eswitch_modes[mode]);
	else
		lua_pushfstring(L, "mode %d", mode);
	return 1;
}

/***
 * Set the eswitch mode of a devlink device.
 * @function socket:set_eswitch
 * @tparam string bus
 * @tparam string device
 * @tparam string mode "legacy" or "switchdev"
 * @treturn[1] true
 * @treturn[2] nil, "<bus>/<device>: cannot set the eswitch mode to <mode>: <cause>", errno
 * @see devlink-dev(8) eswitch set
 */
static int net_l_set_eswitch(lua_State *L)
{
	struct netsock *s = net_check(L);
	const char *bus = luaL_checkstring(L, 2);
	const char *dev = luaL_checkstring(L, 3);
	int mode = luaL_checkoption(L, 4, NULL, eswitch_modes);
	int family = net_devlink_family(L, s);
	struct reply r = { 0 };
	struct nl_msg *msg;

	if (family < 0)
		return 3;
	msg = net_devlink_msg(L, family, DEVLINK_CMD_ESWITCH_SET, bus, dev);
	if (nla_put_u16(msg, DEVLINK_ATTR_ESWITCH_MODE, (uint16_t)mode) < 0) {
		nlmsg_free(msg);
		return luaL_error(L, "not enough memory");
	}
	if (net_transact(s->genl, msg, &r) < 0)
		return net_devlink_fail(L, &r, bus, dev, lua_pushfstring(L, "set the eswitch mode to %s", eswitch_modes[mode]));
	return drv_ok(L);
}

/* ---- sysfs ------------------------------------------------------------------- */

static const char *net_check_name(lua_State *L, int idx, const char *what)
{
	const char *s = luaL_checkstring(L, idx);

	luaL_argcheck(L, s[0] && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, ".."), idx,
		      lua_pushfstring(L, "%s name expected, got '%s'", what, s));
	return s;
}

/* Write text to the sysfs file at path; 0, or -1 with errno. */
static int net_sysfs_write(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	int err;

	if (fd < 0)
		return -1;
	if (drv_write_all(fd, text, strlen(text)) < 0) {
		err = errno;
		close(fd);
		errno = err;
		return -1;
	}
	return close(fd);
}

/***
 * Set the number of VFs of a device (sriov_numvfs; from one number to another, set 0 first).
 * @function set_numvfs
 * @tparam string bus "pci"
 * @tparam string device its address
 * @tparam integer n
 * @treturn[1] true
 * @treturn[2] nil, "<bus>/<device>: cannot set sriov_numvfs to <n>: <cause>", errno
 * @see sysfs-bus-pci sriov_numvfs
 */
static int net_l_set_numvfs(lua_State *L)
{
	const char *bus = net_check_name(L, 1, "a bus");
	const char *dev = net_check_name(L, 2, "a device");
	lua_Integer n = luaL_checkinteger(L, 3);
	char path[PATH_MAX], buf[32];
	int err;

	luaL_argcheck(L, n >= 0 && n <= INT32_MAX, 3, "a number of VFs (0 or more) expected");
	snprintf(path, sizeof(path), SYSBUS "/%s/devices/%s/sriov_numvfs", bus, dev);
	snprintf(buf, sizeof(buf), "%d\n", (int)n);
	if (net_sysfs_write(path, buf) == 0)
		return drv_ok(L);
	err = errno;
	if (err == ENOENT && access(path, F_OK) < 0)
		return drv_fail(L, err, "%s/%s: cannot set sriov_numvfs to %d: no such device, or it has no SR-IOV",
				bus, dev, (int)n);
	return drv_fail(L, err, "%s/%s: cannot set sriov_numvfs to %d: %s", bus, dev, (int)n, strerror(err));
}

/***
 * Unbind a device from its driver, then bind it to that driver again: the driver probes it
 * afresh (a VF takes what its PF now says of it: its admin MAC, its GUID).
 * @function rebind
 * @tparam string bus
 * @tparam string device
 * @treturn[1] string the driver's name
 * @treturn[2] nil, "<bus>/<device>: cannot rebind: <cause>", errno (ENODEV: no driver bound)
 * @see sysfs-bus-pci unbind, bind
 */
static int net_l_rebind(lua_State *L)
{
	const char *bus = net_check_name(L, 1, "a bus");
	const char *dev = net_check_name(L, 2, "a device");
	char path[PATH_MAX], target[PATH_MAX];
	const char *driver;
	ssize_t n;

	snprintf(path, sizeof(path), SYSBUS "/%s/devices/%s/driver", bus, dev);
	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0)
		return drv_fail(L, errno == ENOENT ? ENODEV : errno, "%s/%s: cannot rebind: %s", bus, dev,
				errno == ENOENT ? "no such device, or no driver bound" : strerror(errno));
	target[n] = '\0';
	driver = strrchr(target, '/') ? strrchr(target, '/') + 1 : target;
	snprintf(path, sizeof(path), SYSBUS "/%s/drivers/%.200s/unbind", bus, driver);
	if (net_sysfs_write(path, dev) < 0)
		return drv_fail(L, errno, "%s/%s: cannot unbind from %s: %s", bus, dev, driver, strerror(errno));
	snprintf(path, sizeof(path), SYSBUS "/%s/drivers/%.200s/bind", bus, driver);
	if (net_sysfs_write(path, dev) < 0)
		return drv_fail(L, errno, "%s/%s: cannot bind to %s again: %s", bus, dev, driver, strerror(errno));
	lua_pushstring(L, driver);
	return 1;
}

/* ---- does an address answer ------------------------------------------------ */

/* An IPv4 or IPv6 address argument into sa; its length. Raises when malformed. */
static socklen_t net_check_sockaddr(lua_State *L, int idx, struct sockaddr_storage *sa, int port)
{
	const char *text = luaL_checkstring(L, idx);
	struct sockaddr_in *v4 = (struct sockaddr_in *)sa;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)sa;

	memset(sa, 0, sizeof(*sa));
	if (inet_pton(AF_INET, text, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons((uint16_t)port);
		return sizeof(*v4);
	}
	if (inet_pton(AF_INET6, text, &v6->sin6_addr) == 1) {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons((uint16_t)port);
		return sizeof(*v6);
	}
	return luaL_argerror(L, idx, lua_pushfstring(L, "an IPv4 or IPv6 address expected, got '%s'", text));
}

/* Seconds as messages say them: "1", "0.25". */
static const char *net_seconds(char buf[32], double t)
{
	snprintf(buf, 32, "%g", t);
	return buf;
}

static double net_check_timeout(lua_State *L, int idx)
{
	double t = luaL_checknumber(L, idx);

	luaL_argcheck(L, t >= 0 && t <= 86400, idx, "a timeout in seconds (0-86400) expected");
	return t;
}

/* Wait until fd is ready for events or deadline (monotonic seconds) passes; 1, 0 (timeout), -1 (errno). */
static int net_wait(int fd, short events, double deadline)
{
	struct pollfd p = { .fd = fd, .events = events };
	int rc;

	do {
		double left = deadline - drv_clock(CLOCK_MONOTONIC);

		rc = left <= 0 ? 0 : poll(&p, 1, (int)(left * 1000) + 1);
	} while (rc < 0 && errno == EINTR);
	return rc;
}

/* An echo request socket of family: a datagram ICMP socket where net.ipv4.ping_group_range lets
 * this process open one, else a raw one (CAP_NET_RAW); -1 with errno. */
static int net_echo_socket(int family, int *raw)
{
	int proto = family == AF_INET ? IPPROTO_ICMP : IPPROTO_ICMPV6;
	int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, proto);

	*raw = fd < 0;
	if (fd < 0 && (errno == EACCES || errno == EPERM))
		fd = socket(family, SOCK_RAW | SOCK_CLOEXEC, proto);
	return fd;
}

static uint16_t net_icmp_checksum(const void *data, size_t len)
{
	const uint8_t *p = data;
	uint32_t sum = 0;

	for (; len > 1; p += 2, len -= 2)
		sum += (uint32_t)(p[0] << 8 | p[1]);
	if (len)
		sum += (uint32_t)(p[0] << 8);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return htons((uint16_t)~sum);
}

/* Is buf (n bytes; a raw IPv4 socket's have the IP header first) the echo reply to id and seq?
 * A datagram socket's replies are this socket's already, their id the kernel's. */
static int net_is_reply(const uint8_t *buf, ssize_t n, int family, int raw, uint16_t id, uint16_t seq)
{
	struct icmphdr h;
	size_t off = family == AF_INET && raw && n > 0 ? (size_t)(buf[0] & 0x0f) * 4 : 0;

	if (n < 0 || (size_t)n < off + sizeof(h))
		return 0;
	memcpy(&h, buf + off, sizeof(h)); /* the echo fields of icmphdr and icmp6hdr are laid out alike */
	if (h.type != (family == AF_INET ? ICMP_ECHOREPLY : ICMPV6_ECHO_REPLY) || ntohs(h.un.echo.sequence) != seq)
		return 0;
	return !raw || ntohs(h.un.echo.id) == id;
}

/***
 * Send one ICMP echo request to an address and wait for its reply (through a datagram ICMP
 * socket where net.ipv4.ping_group_range lets the process open one, else a raw socket: root).
 * @function ping
 * @tparam string address "10.0.0.1" or "fd00::1"
 * @tparam number timeout seconds to wait for the reply
 * @treturn[1] number seconds the reply took
 * @treturn[2] nil, "<address>: no echo reply within <timeout> s", errno (ETIMEDOUT); or
 *   "<address>: cannot send an echo request: Network is unreachable", errno
 * @see icmp(7), ping(8)
 */
static int net_l_ping(lua_State *L)
{
	static uint16_t sequence;
	struct sockaddr_storage to;
	socklen_t len = net_check_sockaddr(L, 1, &to, 0);
	const char *text = lua_tostring(L, 1);
	double timeout = net_check_timeout(L, 2), t0 = drv_clock(CLOCK_MONOTONIC);
	uint16_t id = (uint16_t)getpid(), seq = ++sequence;
	struct icmphdr req = { .type = to.ss_family == AF_INET ? ICMP_ECHO : ICMPV6_ECHO_REQUEST };
	uint8_t packet[sizeof(req) + 24] = { 0 }, buf[512];
	char secs[32];
	int raw, fd = net_echo_socket(to.ss_family, &raw), err, rc;
	ssize_t n;

	if (fd < 0)
		return drv_fail(L, errno, "%s: cannot open an ICMP socket: %s", text, strerror(errno));
	req.un.echo.id = htons(id);
	req.un.echo.sequence = htons(seq);
	memcpy(packet, &req, sizeof(req));
	memcpy(packet + sizeof(req), "drvrun echo request\n", 20);
	if (to.ss_family == AF_INET) /* ICMPv6's checksum is the kernel's */
		((struct icmphdr *)packet)->checksum = net_icmp_checksum(packet, sizeof(packet));
	if (connect(fd, (struct sockaddr *)&to, len) < 0 || send(fd, packet, sizeof(packet), 0) < 0) {
		err = errno;
		close(fd);
		return drv_fail(L, err, "%s: cannot send an echo request: %s", text, strerror(err));
	}
	do {
		n = -1;
		rc = net_wait(fd, POLLIN, t0 + timeout);
		if (rc > 0)
			n = recv(fd, buf, sizeof(buf), 0);
	} while (rc > 0 && (n >= 0 || errno == EINTR) && !net_is_reply(buf, n, to.ss_family, raw, id, seq));
	err = rc == 0 ? ETIMEDOUT : errno;
	close(fd);
	if (rc <= 0 || n < 0) {
		if (err == ETIMEDOUT)
			return drv_fail(L, err, "%s: no echo reply within %s s", text, net_seconds(secs, timeout));
		return drv_fail(L, err, "%s: no echo reply: %s", text, strerror(err));
	}
	lua_pushnumber(L, drv_clock(CLOCK_MONOTONIC) - t0);
	return 1;
}

/***
 * Open a TCP connection to an address and port, and close it.
 * @function connect
 * @tparam string address "10.0.0.1" or "fd00::1"
 * @tparam integer port
 * @tparam number timeout seconds to wait for the connection
 * @treturn[1] number seconds it took
 * @treturn[2] nil, "<address> port <port>: cannot connect: Connection refused", errno (ECONNREFUSED:
 *   the host answered, nothing listens); "<address> port <port>: no answer within <timeout> s",
 *   errno (ETIMEDOUT)
 * @see connect(2), tcp(7)
 */
static int net_l_connect(lua_State *L)
{
	lua_Integer port = luaL_checkinteger(L, 2);
	struct sockaddr_storage to;
	socklen_t len, elen = sizeof(int);
	const char *text;
	char secs[32];
	double timeout = net_check_timeout(L, 3), t0 = drv_clock(CLOCK_MONOTONIC);
	int fd, err = 0, rc;

	luaL_argcheck(L, port > 0 && port < 65536, 2, "a TCP port (1-65535) expected");
	len = net_check_sockaddr(L, 1, &to, (int)port);
	text = lua_tostring(L, 1);
	fd = socket(to.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return drv_fail(L, errno, "%s port %d: cannot open a socket: %s", text, (int)port, strerror(errno));
	rc = connect(fd, (struct sockaddr *)&to, len);
	if (rc < 0 && errno == EINPROGRESS) {
		rc = net_wait(fd, POLLOUT, t0 + timeout);
		if (rc > 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0)
			rc = err ? -1 : 0;
		else if (rc == 0)
			err = ETIMEDOUT;
	}
	if (rc < 0 && !err)
		err = errno;
	close(fd);
	if (err == ETIMEDOUT)
		return drv_fail(L, err, "%s port %d: no answer within %s s", text, (int)port, net_seconds(secs, timeout));
	if (err)
		return drv_fail(L, err, "%s port %d: cannot connect: %s", text, (int)port, strerror(err));
	lua_pushnumber(L, drv_clock(CLOCK_MONOTONIC) - t0);
	return 1;
}

/* A gratuitous ARP request: who has ip? tell ip (at mac), to everyone. */
struct garp {
	struct arphdr h;
	uint8_t sha[ETH_ALEN], sip[4], tha[ETH_ALEN], tip[4];
} __attribute__((packed));

/***
 * Announce an IPv4 address of a link to its neighbours: a gratuitous ARP request (who has
 * ADDRESS? tell ADDRESS, at the link's MAC, to the broadcast address), so that they point their
 * entry for it at this link again at once (after a reload made the link afresh) instead of when
 * their own resolution next tries. In the caller's network namespace.
 * @function announce
 * @tparam string name an Ethernet link
 * @tparam string address an IPv4 address (of that link)
 * @treturn[1] true
 * @treturn[2] nil, "<name>: cannot announce <address>: <cause>", errno (ENODEV: no such link;
 *   EOPNOTSUPP: not an Ethernet link)
 * @see arp(7), packet(7), RFC 5227 (ARP announcements)
 */
static int net_l_announce(lua_State *L)
{
	const char *name = net_check_name(L, 1, "a link");
	const char *text = luaL_checkstring(L, 2);
	struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ARP), .sll_halen = ETH_ALEN };
	struct garp arp = { .h = { .ar_hrd = htons(ARPHRD_ETHER), .ar_pro = htons(ETH_P_IP), .ar_hln = ETH_ALEN,
				   .ar_pln = 4, .ar_op = htons(ARPOP_REQUEST) } };
	struct ifreq ifr;
	struct in_addr ip;
	int fd, err = 0;

	luaL_argcheck(L, strlen(name) < IFNAMSIZ, 1, "a link name (1-15 characters) expected");
	luaL_argcheck(L, inet_pton(AF_INET, text, &ip) == 1, 2,
		      lua_pushfstring(L, "an IPv4 address expected, got '%s'", text));
	fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, htons(ETH_P_ARP));
	if (fd < 0)
		return drv_fail(L, errno, "%s: cannot announce %s: %s", name, text, strerror(errno));
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0 || (to.sll_ifindex = ifr.ifr_ifindex, ioctl(fd, SIOCGIFHWADDR, &ifr) < 0))
		err = errno;
	else if (ifr.ifr_hwaddr.sa_family != ARPHRD_ETHER)
		err = EOPNOTSUPP;
	if (!err) {
		memset(to.sll_addr, 0xff, ETH_ALEN);
		memcpy(arp.sha, ifr.ifr_hwaddr.sa_data, ETH_ALEN);
		memcpy(arp.sip, &ip, 4);
		memcpy(arp.tip, &ip, 4);
		if (sendto(fd, &arp, sizeof(arp), 0, (struct sockaddr *)&to, sizeof(to)) < 0)
			err = errno;
	}
	close(fd);
	if (err == ENODEV)
		return drv_fail(L, err, "%s: cannot announce %s: no such device", name, text);
	if (err == EOPNOTSUPP)
		return drv_fail(L, err, "%s: cannot announce %s: not an Ethernet link", name, text);
	if (err)
		return drv_fail(L, err, "%s: cannot announce %s: %s", name, text, strerror(err));
	return drv_ok(L);
}

static const luaL_Reg net_methods[] = {
	{ "links", net_l_links },
	{ "link", net_l_link },
	{ "addresses", net_l_addresses },
	{ "routes", net_l_routes },
	{ "set_link", net_l_set_link },
	{ "add_link", net_l_add_link },
	{ "set_vf", net_l_set_vf },
	{ "add_address", net_l_add_address },
	{ "add_route", net_l_add_route },
	{ "eswitch", net_l_eswitch },
	{ "set_eswitch", net_l_set_eswitch },
	{ "close", net_l_close },
	{ NULL, NULL }
};

static int net_tostring(lua_State *L)
{
	struct netsock *s = luaL_checkudata(L, 1, SOCK_MT);

	lua_pushfstring(L, s->route ? "drv.net.socket (%p)" : "drv.net.socket (closed)", (void *)s);
	return 1;
}

static const luaL_Reg net_meta[] = {
	{ "__gc", net_gc },
	{ "__close", net_gc },
	{ "__tostring", net_tostring },
	{ NULL, NULL }
};

static const luaL_Reg route_meta[] = {
	{ "__gc", net_route_gc },
	{ NULL, NULL }
};

static const luaL_Reg net_funcs[] = {
	{ "open", net_l_open },
	{ "set_numvfs", net_l_set_numvfs },
	{ "rebind", net_l_rebind },
	{ "ping", net_l_ping },
	{ "connect", net_l_connect },
	{ "announce", net_l_announce },
	{ NULL, NULL }
};

int luaopen_drv_net(lua_State *L)
{
	drv_newclass(L, SOCK_MT, net_methods, net_meta);
	drv_newclass(L, ROUTE_MT, NULL, route_meta);
	luaL_newlib(L, net_funcs);
	return 1;
}
