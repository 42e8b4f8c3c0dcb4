/* cert.c - drv.cert: what an X.509 certificate says, through libcrypto.
 *
 * Enough to tell which key signed a module and whether a kernel keyring holds
 * it: the names' CN, O and email (the kernel names a key from them), the
 * serial number (a module signature names its key by issuer and serial), the
 * subject key identifier (the kernel's key description ends with it), the
 * SHA-256 fingerprint and the validity. */
#include <errno.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "drv.h"
#include "lazy.h"

static void cert_pushhex(lua_State *L, const unsigned char *p, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	luaL_Buffer b;
	size_t i;

	luaL_buffinit(L, &b);
	for (i = 0; i < n; i++) {
		luaL_addchar(&b, digits[p[i] >> 4]);
		luaL_addchar(&b, digits[p[i] & 15]);
	}
	luaL_pushresult(&b);
}

/* The last entry of nid in name (the kernel keeps the last one), raw bytes, as field key. */
static void cert_name_field(lua_State *L, X509_NAME *name, int nid, const char *key)
{
	int i, last = -1;

	while ((i = X509_NAME_get_index_by_NID(name, nid, last)) >= 0)
		last = i;
	if (last < 0)
		return;
	ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, last));
	lua_pushlstring(L, (const char *)ASN1_STRING_get0_data(s), (size_t)ASN1_STRING_length(s));
	lua_setfield(L, -2, key);
}

static void cert_name(lua_State *L, X509_NAME *name, const char *key)
{
	lua_createtable(L, 0, 3);
	cert_name_field(L, name, NID_commonName, "CN");
	cert_name_field(L, name, NID_organizationName, "O");
	cert_name_field(L, name, NID_pkcs9_emailAddress, "email");
	lua_setfield(L, -2, key);
}

/* The serial as lowercase hex without leading zeros, as modinfo's sig_key once normalised. */
static void cert_serial(lua_State *L, X509 *x)
{
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
	char *hex = bn ? BN_bn2hex(bn) : NULL;

	if (hex) {
		char *p;

		for (p = hex; *p; p++)
			*p = (char)(*p >= 'A' && *p <= 'F' ? *p - 'A' + 'a' : *p);
		p = hex + (*hex == '-');
		while (p[0] == '0' && p[1])
			p++;
		lua_pushstring(L, p);
		lua_setfield(L, -2, "serial");
	}
	OPENSSL_free(hex);
	BN_free(bn);
}

static int cert_time(const ASN1_TIME *t, lua_Integer *out)
{
	struct tm tm;

	if (!t || !ASN1_TIME_to_tm(t, &tm))
		return 0;
	*out = (lua_Integer)timegm(&tm);
	return 1;
}

static void cert_push(lua_State *L, X509 *x)
{
	const ASN1_OCTET_STRING *skid = X509_get0_subject_key_id(x);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	unsigned char *der = NULL;
	int derlen;
	lua_Integer t;

	lua_createtable(L, 0, 8);
	cert_name(L, X509_get_subject_name(x), "subject");
	cert_name(L, X509_get_issuer_name(x), "issuer");
	cert_serial(L, x);
	if (skid) {
		cert_pushhex(L, ASN1_STRING_get0_data(skid), (size_t)ASN1_STRING_length(skid));
		lua_setfield(L, -2, "skid");
	}
	if (X509_digest(x, EVP_sha256(), md, &mdlen)) {
		cert_pushhex(L, md, mdlen);
		lua_setfield(L, -2, "sha256");
	}
	if (cert_time(X509_get0_notBefore(x), &t)) {
		lua_pushinteger(L, t);
		lua_setfield(L, -2, "not_before");
	}
	if (cert_time(X509_get0_notAfter(x), &t)) {
		lua_pushinteger(L, t);
		lua_setfield(L, -2, "not_after");
	}
	derlen = i2d_X509(x, &der);
	if (derlen > 0) {
		lua_pushlstring(L, (const char *)der, (size_t)derlen);
		lua_setfield(L, -2, "der");
	}
	OPENSSL_free(der);
}

/***
 * Parse an X.509 certificate, PEM (the first in the text) or DER.
 * @function parse
 * @tparam string data the certificate's bytes
 * @treturn[1] table `{ subject = { CN, O, email }, issuer = { CN, O, email }, serial = "5f91...",
 *   skid = "0181cc..." (absent without the extension), sha256 = fingerprint of the DER,
 *   not_before, not_after (Unix seconds), der = the DER bytes }`
 * @treturn[2] nil, "not an X.509 certificate (PEM or DER)", EINVAL
 * @see d2i_X509(3), PEM_read_bio_X509(3)
 */
static int cert_l_parse(lua_State *L)
{
	size_t len;
	const char *data = luaL_checklstring(L, 1, &len);
	const unsigned char *p = (const unsigned char *)data;
	X509 *x = NULL;

	DRV_LAZY_LOAD(L, CRYPTO);
	if (len > 0 && len <= INT32_MAX) {
		if (memmem(data, len, "-----BEGIN", 10)) {
			BIO *bio = BIO_new_mem_buf(data, (int)len);

			if (bio) {
				x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
				BIO_free(bio);
			}
		} else {
			x = d2i_X509(NULL, &p, (long)len);
		}
	}
	ERR_clear_error();
	if (!x)
		return drv_fail(L, EINVAL, "not an X.509 certificate (PEM or DER)");
	cert_push(L, x);
	X509_free(x);
	return 1;
}

static const luaL_Reg cert_funcs[] = {
	{ "parse", cert_l_parse },
	{ NULL, NULL }
};

int luaopen_drv_cert(lua_State *L)
{
	luaL_newlib(L, cert_funcs);
	return 1;
}
