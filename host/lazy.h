/* lazy.h - open the C libraries of drv.* on their first use, not at start-up.
 *
 * libcurl, libarchive, libkmod, libmount, libcrypto and libnl bring about 45 shared
 * objects with them. Mapping and relocating all of them at every start made
 * `drvrun -e ''` take ~7 ms here where lua5.4 takes ~1.5 ms, and ~300 ms
 * under TCG; a warm restart paid for libcurl and libarchive without using them.
 *
 * A module file includes its library's header, then this one: each library
 * function it calls becomes a call through a pointer of its call site. Nothing
 * refers to the libraries' symbols at link time any more, so the linker
 * (--as-needed, the default of Debian's and Ubuntu's toolchains) leaves them out
 * of the executable's needed list.
 *
 * Every call site registers its pointer in the section drv_lazy. A binding
 * calls DRV_LAZY_LOAD(L, LIB) before its first call into a library, on the Lua
 * thread: that opens the library with dlopen(3) and resolves every call site of
 * it with dlsym(3), once, or raises a Lua error naming the library (or the
 * function it lacks) and the package to install. Nothing is resolved later, in
 * a libcurl callback or a worker thread, where a failure could not be a Lua error.
 *
 * Only the functions drvrun calls are listed; a new call to another one is an
 * undefined reference at link time (with --as-needed) or a normal call. */
#ifndef DRV_LAZY_H
#define DRV_LAZY_H

#include <lua.h>

/* One call site's function, in the section drv_lazy (an array the linker
 * delimits with __start_drv_lazy and __stop_drv_lazy). */
struct drv_lazy_fn {
	const char *soname;
	const char *name;
	void *addr;		/* set by drv_lazy_load(soname) */
};

/* Open library soname and resolve every call site of it (once); raises a Lua
 * error naming the library or the missing function and package, the Debian or
 * Ubuntu package that provides the library. */
void drv_lazy_load(lua_State *L, const char *soname, const char *package);
#define DRV_LAZY_LOAD(L, lib) drv_lazy_load(L, DRV_LAZY_##lib, DRV_LAZY_##lib##_PACKAGE)

/* A call site reached before drv_lazy_load of its library: a bug of drvrun's;
 * says which, and aborts. */
void *drv_lazy_unloaded(const struct drv_lazy_fn *f) __attribute__((noreturn));

/* The function fn of library soname, as a function designator of fn's type.
 * Aligned to a pointer exactly (the user alignment stops the compiler from
 * aligning the entries more, which would leave gaps in the array). */
#define DRV_LAZY(soname, fn) \
	(*({ \
		static struct drv_lazy_fn drv_lazy_f \
			__attribute__((section("drv_lazy"), used, aligned(sizeof(void *)))) = \
			{ soname, #fn, NULL }; \
		void *drv_lazy_a = __atomic_load_n(&drv_lazy_f.addr, __ATOMIC_ACQUIRE); \
		(__typeof__(&fn))(drv_lazy_a ? drv_lazy_a : drv_lazy_unloaded(&drv_lazy_f)); \
	}))

#endif /* DRV_LAZY_H */

/* Per library, once its header is included (this part may be read again). */

#if defined(CURLINC_CURL_H) && !defined(DRV_LAZY_CURL)
#define DRV_LAZY_CURL "libcurl.so.4"
#define DRV_LAZY_CURL_PACKAGE "libcurl4"
#if LIBCURL_VERSION_MAJOR < 7 || LIBCURL_VERSION_MAJOR > 8
#error "lazy.h: libcurl.so.4 is the library of curl 7 and 8"
#endif
/* typecheck-gcc.h wraps these two in checking macros; calls go through the pointer instead. */
#undef curl_easy_setopt
#undef curl_easy_getinfo
#define curl_easy_cleanup	DRV_LAZY(DRV_LAZY_CURL, curl_easy_cleanup)
#define curl_easy_getinfo	DRV_LAZY(DRV_LAZY_CURL, curl_easy_getinfo)
#define curl_easy_header	DRV_LAZY(DRV_LAZY_CURL, curl_easy_header)
#define curl_easy_init		DRV_LAZY(DRV_LAZY_CURL, curl_easy_init)
#define curl_easy_setopt	DRV_LAZY(DRV_LAZY_CURL, curl_easy_setopt)
#define curl_easy_strerror	DRV_LAZY(DRV_LAZY_CURL, curl_easy_strerror)
#define curl_free		DRV_LAZY(DRV_LAZY_CURL, curl_free)
#define curl_global_init	DRV_LAZY(DRV_LAZY_CURL, curl_global_init)
#define curl_multi_add_handle	DRV_LAZY(DRV_LAZY_CURL, curl_multi_add_handle)
#define curl_multi_cleanup	DRV_LAZY(DRV_LAZY_CURL, curl_multi_cleanup)
#define curl_multi_info_read	DRV_LAZY(DRV_LAZY_CURL, curl_multi_info_read)
#define curl_multi_init		DRV_LAZY(DRV_LAZY_CURL, curl_multi_init)
#define curl_multi_perform	DRV_LAZY(DRV_LAZY_CURL, curl_multi_perform)
#define curl_multi_poll		DRV_LAZY(DRV_LAZY_CURL, curl_multi_poll)
#define curl_multi_remove_handle	DRV_LAZY(DRV_LAZY_CURL, curl_multi_remove_handle)
#define curl_multi_strerror	DRV_LAZY(DRV_LAZY_CURL, curl_multi_strerror)
#define curl_url		DRV_LAZY(DRV_LAZY_CURL, curl_url)
#define curl_url_cleanup	DRV_LAZY(DRV_LAZY_CURL, curl_url_cleanup)
#define curl_url_get		DRV_LAZY(DRV_LAZY_CURL, curl_url_get)
#define curl_url_set		DRV_LAZY(DRV_LAZY_CURL, curl_url_set)
#define curl_url_strerror	DRV_LAZY(DRV_LAZY_CURL, curl_url_strerror)
#endif

#if defined(ARCHIVE_H_INCLUDED) && !defined(DRV_LAZY_ARCHIVE)
#define DRV_LAZY_ARCHIVE "libarchive.so.13"
#define DRV_LAZY_ARCHIVE_PACKAGE "libarchive13"
#if ARCHIVE_VERSION_NUMBER < 3000000 || ARCHIVE_VERSION_NUMBER >= 4000000
#error "lazy.h: libarchive.so.13 is the library of libarchive 3"
#endif
#define archive_errno				DRV_LAZY(DRV_LAZY_ARCHIVE, archive_errno)
#define archive_error_string			DRV_LAZY(DRV_LAZY_ARCHIVE, archive_error_string)
#define archive_read_data_block			DRV_LAZY(DRV_LAZY_ARCHIVE, archive_read_data_block)
#define archive_read_free			DRV_LAZY(DRV_LAZY_ARCHIVE, archive_read_free)
#define archive_read_new			DRV_LAZY(DRV_LAZY_ARCHIVE, archive_read_new)
#define archive_read_next_header		DRV_LAZY(DRV_LAZY_ARCHIVE, archive_read_next_header)
#define archive_read_open_filename		DRV_LAZY(DRV_LAZY_ARCHIVE, archive_read_open_filename)
#define archive_read_support_filter_all		DRV_LAZY(DRV_LAZY_ARCHIVE, archive_read_support_filter_all)
#define archive_read_support_format_all		DRV_LAZY(DRV_LAZY_ARCHIVE, archive_read_support_format_all)
#define archive_write_close			DRV_LAZY(DRV_LAZY_ARCHIVE, archive_write_close)
#define archive_write_data_block		DRV_LAZY(DRV_LAZY_ARCHIVE, archive_write_data_block)
#define archive_write_disk_new			DRV_LAZY(DRV_LAZY_ARCHIVE, archive_write_disk_new)
#define archive_write_disk_set_options		DRV_LAZY(DRV_LAZY_ARCHIVE, archive_write_disk_set_options)
#define archive_write_disk_set_standard_lookup	DRV_LAZY(DRV_LAZY_ARCHIVE, archive_write_disk_set_standard_lookup)
#define archive_write_finish_entry		DRV_LAZY(DRV_LAZY_ARCHIVE, archive_write_finish_entry)
#define archive_write_free			DRV_LAZY(DRV_LAZY_ARCHIVE, archive_write_free)
#define archive_write_header			DRV_LAZY(DRV_LAZY_ARCHIVE, archive_write_header)
#endif

#if defined(ARCHIVE_ENTRY_H_INCLUDED) && !defined(DRV_LAZY_ARCHIVE_ENTRY)
#define DRV_LAZY_ARCHIVE_ENTRY "libarchive.so.13"
#define archive_entry_copy_hardlink	DRV_LAZY(DRV_LAZY_ARCHIVE_ENTRY, archive_entry_copy_hardlink)
#define archive_entry_copy_pathname	DRV_LAZY(DRV_LAZY_ARCHIVE_ENTRY, archive_entry_copy_pathname)
#define archive_entry_filetype		DRV_LAZY(DRV_LAZY_ARCHIVE_ENTRY, archive_entry_filetype)
#define archive_entry_hardlink		DRV_LAZY(DRV_LAZY_ARCHIVE_ENTRY, archive_entry_hardlink)
#define archive_entry_pathname		DRV_LAZY(DRV_LAZY_ARCHIVE_ENTRY, archive_entry_pathname)
#define archive_entry_perm		DRV_LAZY(DRV_LAZY_ARCHIVE_ENTRY, archive_entry_perm)
#define archive_entry_set_perm		DRV_LAZY(DRV_LAZY_ARCHIVE_ENTRY, archive_entry_set_perm)
#define archive_entry_size		DRV_LAZY(DRV_LAZY_ARCHIVE_ENTRY, archive_entry_size)
#define archive_entry_symlink		DRV_LAZY(DRV_LAZY_ARCHIVE_ENTRY, archive_entry_symlink)
#endif

#if defined(_LIBKMOD_H_) && !defined(DRV_LAZY_KMOD)
#define DRV_LAZY_KMOD "libkmod.so.2"
#define DRV_LAZY_KMOD_PACKAGE "libkmod2"
#define kmod_list_next				DRV_LAZY(DRV_LAZY_KMOD, kmod_list_next)
#define kmod_load_resources			DRV_LAZY(DRV_LAZY_KMOD, kmod_load_resources)
#define kmod_module_apply_filter		DRV_LAZY(DRV_LAZY_KMOD, kmod_module_apply_filter)
#define kmod_module_get_info			DRV_LAZY(DRV_LAZY_KMOD, kmod_module_get_info)
#define kmod_module_get_initstate		DRV_LAZY(DRV_LAZY_KMOD, kmod_module_get_initstate)
#define kmod_module_get_module			DRV_LAZY(DRV_LAZY_KMOD, kmod_module_get_module)
#define kmod_module_get_name			DRV_LAZY(DRV_LAZY_KMOD, kmod_module_get_name)
#define kmod_module_get_path			DRV_LAZY(DRV_LAZY_KMOD, kmod_module_get_path)
#define kmod_module_get_softdeps		DRV_LAZY(DRV_LAZY_KMOD, kmod_module_get_softdeps)
#define kmod_module_get_symbols			DRV_LAZY(DRV_LAZY_KMOD, kmod_module_get_symbols)
#define kmod_module_get_versions		DRV_LAZY(DRV_LAZY_KMOD, kmod_module_get_versions)
#define kmod_module_info_free_list		DRV_LAZY(DRV_LAZY_KMOD, kmod_module_info_free_list)
#define kmod_module_info_get_key		DRV_LAZY(DRV_LAZY_KMOD, kmod_module_info_get_key)
#define kmod_module_info_get_value		DRV_LAZY(DRV_LAZY_KMOD, kmod_module_info_get_value)
#define kmod_module_insert_module		DRV_LAZY(DRV_LAZY_KMOD, kmod_module_insert_module)
#define kmod_module_new_from_lookup		DRV_LAZY(DRV_LAZY_KMOD, kmod_module_new_from_lookup)
#define kmod_module_new_from_path		DRV_LAZY(DRV_LAZY_KMOD, kmod_module_new_from_path)
#define kmod_module_probe_insert_module		DRV_LAZY(DRV_LAZY_KMOD, kmod_module_probe_insert_module)
#define kmod_module_symbol_get_crc		DRV_LAZY(DRV_LAZY_KMOD, kmod_module_symbol_get_crc)
#define kmod_module_symbol_get_symbol		DRV_LAZY(DRV_LAZY_KMOD, kmod_module_symbol_get_symbol)
#define kmod_module_symbols_free_list		DRV_LAZY(DRV_LAZY_KMOD, kmod_module_symbols_free_list)
#define kmod_module_unref			DRV_LAZY(DRV_LAZY_KMOD, kmod_module_unref)
#define kmod_module_unref_list			DRV_LAZY(DRV_LAZY_KMOD, kmod_module_unref_list)
#define kmod_module_version_get_crc		DRV_LAZY(DRV_LAZY_KMOD, kmod_module_version_get_crc)
#define kmod_module_version_get_symbol		DRV_LAZY(DRV_LAZY_KMOD, kmod_module_version_get_symbol)
#define kmod_module_versions_free_list		DRV_LAZY(DRV_LAZY_KMOD, kmod_module_versions_free_list)
#define kmod_new				DRV_LAZY(DRV_LAZY_KMOD, kmod_new)
#define kmod_unref				DRV_LAZY(DRV_LAZY_KMOD, kmod_unref)
#endif

#if defined(_LIBMOUNT_MOUNT_H) && !defined(DRV_LAZY_MOUNT)
#define DRV_LAZY_MOUNT "libmount.so.1"
#define DRV_LAZY_MOUNT_PACKAGE "libmount1"
#define mnt_context_disable_helpers	DRV_LAZY(DRV_LAZY_MOUNT, mnt_context_disable_helpers)
#define mnt_context_disable_mtab	DRV_LAZY(DRV_LAZY_MOUNT, mnt_context_disable_mtab)
#define mnt_context_disable_swapmatch	DRV_LAZY(DRV_LAZY_MOUNT, mnt_context_disable_swapmatch)
#define mnt_context_enable_force	DRV_LAZY(DRV_LAZY_MOUNT, mnt_context_enable_force)
#define mnt_context_enable_lazy		DRV_LAZY(DRV_LAZY_MOUNT, mnt_context_enable_lazy)
#define mnt_context_get_excode		DRV_LAZY(DRV_LAZY_MOUNT, mnt_context_get_excode)
#define mnt_context_get_syscall_errno	DRV_LAZY(DRV_LAZY_MOUNT, mnt_context_get_syscall_errno)
#define mnt_context_mount		DRV_LAZY(DRV_LAZY_MOUNT, mnt_context_mount)
#define mnt_context_set_fstype		DRV_LAZY(DRV_LAZY_MOUNT, mnt_context_set_fstype)
#define mnt_context_set_options		DRV_LAZY(DRV_LAZY_MOUNT, mnt_context_set_options)
#define mnt_context_set_source		DRV_LAZY(DRV_LAZY_MOUNT, mnt_context_set_source)
#define mnt_context_set_target		DRV_LAZY(DRV_LAZY_MOUNT, mnt_context_set_target)
#define mnt_context_syscall_called	DRV_LAZY(DRV_LAZY_MOUNT, mnt_context_syscall_called)
#define mnt_context_umount		DRV_LAZY(DRV_LAZY_MOUNT, mnt_context_umount)
#define mnt_free_context		DRV_LAZY(DRV_LAZY_MOUNT, mnt_free_context)
#define mnt_new_context			DRV_LAZY(DRV_LAZY_MOUNT, mnt_new_context)
#endif

#if defined(OPENSSL_EVP_H) && !defined(DRV_LAZY_CRYPTO)
#if defined(OPENSSL_VERSION_MAJOR) && OPENSSL_VERSION_MAJOR == 3
#define DRV_LAZY_CRYPTO "libcrypto.so.3"
#define DRV_LAZY_CRYPTO_PACKAGE "libssl3"
#elif OPENSSL_VERSION_NUMBER >= 0x10100000L && OPENSSL_VERSION_NUMBER < 0x30000000L
#define DRV_LAZY_CRYPTO "libcrypto.so.1.1"	/* Ubuntu 20.04, the images' default base */
#define DRV_LAZY_CRYPTO_PACKAGE "libssl1.1"
#else
#error "lazy.h: libcrypto.so.3 (OpenSSL 3) or libcrypto.so.1.1 (OpenSSL 1.1) expected"
#endif
#define EVP_DigestFinal_ex	DRV_LAZY(DRV_LAZY_CRYPTO, EVP_DigestFinal_ex)
#define EVP_DigestInit_ex	DRV_LAZY(DRV_LAZY_CRYPTO, EVP_DigestInit_ex)
#define EVP_DigestUpdate	DRV_LAZY(DRV_LAZY_CRYPTO, EVP_DigestUpdate)
#define EVP_MD_CTX_free		DRV_LAZY(DRV_LAZY_CRYPTO, EVP_MD_CTX_free)
#define EVP_MD_CTX_new		DRV_LAZY(DRV_LAZY_CRYPTO, EVP_MD_CTX_new)
#define EVP_sha256		DRV_LAZY(DRV_LAZY_CRYPTO, EVP_sha256)
#endif

#if defined(OPENSSL_X509_H) && defined(DRV_LAZY_CRYPTO) && !defined(DRV_LAZY_X509)
#define DRV_LAZY_X509 DRV_LAZY_CRYPTO
#define ASN1_INTEGER_to_BN		DRV_LAZY(DRV_LAZY_X509, ASN1_INTEGER_to_BN)
#define ASN1_STRING_get0_data		DRV_LAZY(DRV_LAZY_X509, ASN1_STRING_get0_data)
#define ASN1_STRING_length		DRV_LAZY(DRV_LAZY_X509, ASN1_STRING_length)
#define ASN1_TIME_to_tm			DRV_LAZY(DRV_LAZY_X509, ASN1_TIME_to_tm)
#define BIO_free			DRV_LAZY(DRV_LAZY_X509, BIO_free)
#define BIO_new_mem_buf			DRV_LAZY(DRV_LAZY_X509, BIO_new_mem_buf)
#define BN_bn2hex			DRV_LAZY(DRV_LAZY_X509, BN_bn2hex)
#define BN_free				DRV_LAZY(DRV_LAZY_X509, BN_free)
#define CRYPTO_free			DRV_LAZY(DRV_LAZY_X509, CRYPTO_free)
#define ERR_clear_error			DRV_LAZY(DRV_LAZY_X509, ERR_clear_error)
#define PEM_read_bio_X509		DRV_LAZY(DRV_LAZY_X509, PEM_read_bio_X509)
#define X509_NAME_ENTRY_get_data	DRV_LAZY(DRV_LAZY_X509, X509_NAME_ENTRY_get_data)
#define X509_NAME_get_entry		DRV_LAZY(DRV_LAZY_X509, X509_NAME_get_entry)
#define X509_NAME_get_index_by_NID	DRV_LAZY(DRV_LAZY_X509, X509_NAME_get_index_by_NID)
#define X509_digest			DRV_LAZY(DRV_LAZY_X509, X509_digest)
#define X509_free			DRV_LAZY(DRV_LAZY_X509, X509_free)
#define X509_get0_notAfter		DRV_LAZY(DRV_LAZY_X509, X509_get0_notAfter)
#define X509_get0_notBefore		DRV_LAZY(DRV_LAZY_X509, X509_get0_notBefore)
#define X509_get0_serialNumber		DRV_LAZY(DRV_LAZY_X509, X509_get0_serialNumber)
#define X509_get0_subject_key_id	DRV_LAZY(DRV_LAZY_X509, X509_get0_subject_key_id)
#define X509_get_issuer_name		DRV_LAZY(DRV_LAZY_X509, X509_get_issuer_name)
#define X509_get_subject_name		DRV_LAZY(DRV_LAZY_X509, X509_get_subject_name)
#define d2i_X509			DRV_LAZY(DRV_LAZY_X509, d2i_X509)
#define i2d_X509			DRV_LAZY(DRV_LAZY_X509, i2d_X509)
#endif

#if defined(NETLINK_NETLINK_H_) && !defined(DRV_LAZY_NL)
#define DRV_LAZY_NL "libnl-3.so.200"
#define DRV_LAZY_NL_PACKAGE "libnl-3-200"
#define nl_addr2str			DRV_LAZY(DRV_LAZY_NL, nl_addr2str)
#define nl_addr_get_family		DRV_LAZY(DRV_LAZY_NL, nl_addr_get_family)
#define nl_addr_get_len			DRV_LAZY(DRV_LAZY_NL, nl_addr_get_len)
#define nl_addr_get_prefixlen		DRV_LAZY(DRV_LAZY_NL, nl_addr_get_prefixlen)
#define nl_addr_parse			DRV_LAZY(DRV_LAZY_NL, nl_addr_parse)
#define nl_addr_put			DRV_LAZY(DRV_LAZY_NL, nl_addr_put)
#define nl_cache_free			DRV_LAZY(DRV_LAZY_NL, nl_cache_free)
#define nl_cache_get_first		DRV_LAZY(DRV_LAZY_NL, nl_cache_get_first)
#define nl_cache_get_next		DRV_LAZY(DRV_LAZY_NL, nl_cache_get_next)
#define nl_cb_alloc			DRV_LAZY(DRV_LAZY_NL, nl_cb_alloc)
#define nl_cb_err			DRV_LAZY(DRV_LAZY_NL, nl_cb_err)
#define nl_cb_put			DRV_LAZY(DRV_LAZY_NL, nl_cb_put)
#define nl_cb_set			DRV_LAZY(DRV_LAZY_NL, nl_cb_set)
#define nl_connect			DRV_LAZY(DRV_LAZY_NL, nl_connect)
#define nl_geterror			DRV_LAZY(DRV_LAZY_NL, nl_geterror)
#define nl_recvmsgs			DRV_LAZY(DRV_LAZY_NL, nl_recvmsgs)
#define nl_send_auto			DRV_LAZY(DRV_LAZY_NL, nl_send_auto)
#define nl_socket_alloc			DRV_LAZY(DRV_LAZY_NL, nl_socket_alloc)
#define nl_socket_free			DRV_LAZY(DRV_LAZY_NL, nl_socket_free)
#define nl_socket_get_fd		DRV_LAZY(DRV_LAZY_NL, nl_socket_get_fd)
#define nla_data			DRV_LAZY(DRV_LAZY_NL, nla_data)
#define nla_find			DRV_LAZY(DRV_LAZY_NL, nla_find)
#define nla_get_u16			DRV_LAZY(DRV_LAZY_NL, nla_get_u16)
#define nla_len				DRV_LAZY(DRV_LAZY_NL, nla_len)
#define nla_put_string			DRV_LAZY(DRV_LAZY_NL, nla_put_string)
#define nla_put_u16			DRV_LAZY(DRV_LAZY_NL, nla_put_u16)
#define nlmsg_alloc			DRV_LAZY(DRV_LAZY_NL, nlmsg_alloc)
#define nlmsg_free			DRV_LAZY(DRV_LAZY_NL, nlmsg_free)
#define nlmsg_hdr			DRV_LAZY(DRV_LAZY_NL, nlmsg_hdr)
#endif

#if defined(NETLINK_LINK_H_) && !defined(DRV_LAZY_NL_ROUTE)
#define DRV_LAZY_NL_ROUTE "libnl-route-3.so.200"
#define DRV_LAZY_NL_ROUTE_PACKAGE "libnl-route-3-200"
#define nl_rtntype2str			DRV_LAZY(DRV_LAZY_NL_ROUTE, nl_rtntype2str)
#define rtnl_addr_alloc			DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_addr_alloc)
#define rtnl_addr_alloc_cache		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_addr_alloc_cache)
#define rtnl_addr_build_add_request	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_addr_build_add_request)
#define rtnl_addr_get_family		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_addr_get_family)
#define rtnl_addr_get_flags		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_addr_get_flags)
#define rtnl_addr_get_ifindex		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_addr_get_ifindex)
#define rtnl_addr_get_local		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_addr_get_local)
#define rtnl_addr_get_prefixlen		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_addr_get_prefixlen)
#define rtnl_addr_get_scope		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_addr_get_scope)
#define rtnl_addr_put			DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_addr_put)
#define rtnl_addr_set_ifindex		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_addr_set_ifindex)
#define rtnl_addr_set_local		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_addr_set_local)
#define rtnl_addr_set_prefixlen		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_addr_set_prefixlen)
#define rtnl_link_alloc			DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_alloc)
#define rtnl_link_alloc_cache		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_alloc_cache)
#define rtnl_link_build_add_request	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_build_add_request)
#define rtnl_link_build_change_request	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_build_change_request)
#define rtnl_link_get_addr		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_get_addr)
#define rtnl_link_get_flags		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_get_flags)
#define rtnl_link_get_ifindex		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_get_ifindex)
#define rtnl_link_get_kernel		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_get_kernel)
#define rtnl_link_get_link		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_get_link)
#define rtnl_link_get_link_netnsid	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_get_link_netnsid)
#define rtnl_link_get_master		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_get_master)
#define rtnl_link_get_mtu		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_get_mtu)
#define rtnl_link_get_name		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_get_name)
#define rtnl_link_get_num_vf		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_get_num_vf)
#define rtnl_link_get_operstate		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_get_operstate)
#define rtnl_link_get_type		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_get_type)
#define rtnl_link_has_vf_list		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_has_vf_list)
#define rtnl_link_i2name		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_i2name)
#define rtnl_link_is_macvlan		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_is_macvlan)
#define rtnl_link_is_vlan		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_is_vlan)
#define rtnl_link_macvlan_alloc		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_macvlan_alloc)
#define rtnl_link_macvlan_get_mode	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_macvlan_get_mode)
#define rtnl_link_macvlan_mode2str	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_macvlan_mode2str)
#define rtnl_link_macvlan_set_mode	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_macvlan_set_mode)
#define rtnl_link_macvlan_str2mode	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_macvlan_str2mode)
#define rtnl_link_name2i		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_name2i)
#define rtnl_link_operstate2str		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_operstate2str)
#define rtnl_link_put			DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_put)
#define rtnl_link_set_addr		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_set_addr)
#define rtnl_link_set_flags		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_set_flags)
#define rtnl_link_set_link		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_set_link)
#define rtnl_link_set_master		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_set_master)
#define rtnl_link_set_mtu		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_set_mtu)
#define rtnl_link_set_name		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_set_name)
#define rtnl_link_unset_flags		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_unset_flags)
#define rtnl_link_vf_add		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vf_add)
#define rtnl_link_vf_alloc		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vf_alloc)
#define rtnl_link_vf_get		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vf_get)
#define rtnl_link_vf_get_addr		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vf_get_addr)
#define rtnl_link_vf_get_index		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vf_get_index)
#define rtnl_link_vf_get_linkstate	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vf_get_linkstate)
#define rtnl_link_vf_get_spoofchk	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vf_get_spoofchk)
#define rtnl_link_vf_get_trust		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vf_get_trust)
#define rtnl_link_vf_get_vlans		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vf_get_vlans)
#define rtnl_link_vf_put		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vf_put)
#define rtnl_link_vf_set_addr		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vf_set_addr)
#define rtnl_link_vf_set_index		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vf_set_index)
#define rtnl_link_vf_set_linkstate	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vf_set_linkstate)
#define rtnl_link_vf_set_spoofchk	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vf_set_spoofchk)
#define rtnl_link_vf_set_trust		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vf_set_trust)
#define rtnl_link_vf_set_vlans		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vf_set_vlans)
#define rtnl_link_vf_vlan_alloc		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vf_vlan_alloc)
#define rtnl_link_vf_vlan_put		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vf_vlan_put)
#define rtnl_link_vlan_alloc		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vlan_alloc)
#define rtnl_link_vlan_get_id		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vlan_get_id)
#define rtnl_link_vlan_get_protocol	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vlan_get_protocol)
#define rtnl_link_vlan_set_id		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vlan_set_id)
#define rtnl_link_vlan_set_protocol	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_link_vlan_set_protocol)
#define rtnl_route_add_nexthop		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_add_nexthop)
#define rtnl_route_alloc		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_alloc)
#define rtnl_route_alloc_cache		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_alloc_cache)
#define rtnl_route_build_add_request	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_build_add_request)
#define rtnl_route_get_dst		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_get_dst)
#define rtnl_route_get_family		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_get_family)
#define rtnl_route_get_nnexthops	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_get_nnexthops)
#define rtnl_route_get_pref_src		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_get_pref_src)
#define rtnl_route_get_priority		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_get_priority)
#define rtnl_route_get_protocol		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_get_protocol)
#define rtnl_route_get_scope		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_get_scope)
#define rtnl_route_get_table		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_get_table)
#define rtnl_route_get_type		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_get_type)
#define rtnl_route_nexthop_n		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_nexthop_n)
#define rtnl_route_nh_alloc		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_nh_alloc)
#define rtnl_route_nh_get_gateway	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_nh_get_gateway)
#define rtnl_route_nh_get_ifindex	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_nh_get_ifindex)
#define rtnl_route_nh_set_gateway	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_nh_set_gateway)
#define rtnl_route_nh_set_ifindex	DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_nh_set_ifindex)
#define rtnl_route_proto2str		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_proto2str)
#define rtnl_route_put			DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_put)
#define rtnl_route_set_dst		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_set_dst)
#define rtnl_route_set_family		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_set_family)
#define rtnl_route_set_priority		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_set_priority)
#define rtnl_route_set_table		DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_route_set_table)
#define rtnl_scope2str			DRV_LAZY(DRV_LAZY_NL_ROUTE, rtnl_scope2str)
#endif

#if defined(NETLINK_GENL_H_) && !defined(DRV_LAZY_NL_GENL)
#define DRV_LAZY_NL_GENL "libnl-genl-3.so.200"
#define DRV_LAZY_NL_GENL_PACKAGE "libnl-genl-3-200"
#define genl_connect			DRV_LAZY(DRV_LAZY_NL_GENL, genl_connect)
#define genl_ctrl_resolve		DRV_LAZY(DRV_LAZY_NL_GENL, genl_ctrl_resolve)
#define genlmsg_parse			DRV_LAZY(DRV_LAZY_NL_GENL, genlmsg_parse)
#define genlmsg_put			DRV_LAZY(DRV_LAZY_NL_GENL, genlmsg_put)
#endif
