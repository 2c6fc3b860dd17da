/* sb_sas.c - Service Bus shared access signatures.
 *
 * Format (Microsoft docs "service-bus-sas", checked against @azure/core-amqp's
 * createSasTokenProvider): string-to-sign = urlencode(audience) "\n" expiry,
 * HMAC-SHA256 keyed with the key's text bytes, then
 * "SharedAccessSignature sr=<enc aud>&sig=<enc b64>&se=<expiry>&skn=<enc name>". */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "sb.h"

char *
sb_urlencode(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i, n = strlen(s);
    char *out = malloc(3 * n + 1), *p = out;

    if (out == NULL)
        return NULL;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char) s[i];

        if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9')
            || ch == '-' || ch == '_' || ch == '.' || ch == '~') {
            *p++ = (char) ch;
        } else {
            *p++ = '%';
            *p++ = hex[ch >> 4];
            *p++ = hex[ch & 15];
        }
    }
    *p = '\0';
    return out;
}

char *
sb_sas_token(const char *audience, const char *key_name, const char *key, int64_t expiry)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    char b64[4 * EVP_MAX_MD_SIZE / 3 + 8];
    char *sr = NULL, *sig = NULL, *skn = NULL, *tosign = NULL, *tok = NULL;
    int n;

    sr = sb_urlencode(audience);
    skn = sb_urlencode(key_name);
    if (sr == NULL || skn == NULL)
        goto out;
    n = asprintf(&tosign, "%s\n%lld", sr, (long long) expiry);
    if (n < 0) {
        tosign = NULL;
        goto out;
    }
    if (HMAC(EVP_sha256(), key, (int) strlen(key), (const unsigned char *) tosign, (size_t) n,
             mac, &maclen) == NULL)
        goto out;
    EVP_EncodeBlock((unsigned char *) b64, mac, (int) maclen);
    sig = sb_urlencode(b64);
    if (sig == NULL)
        goto out;
    if (asprintf(&tok, "SharedAccessSignature sr=%s&sig=%s&se=%lld&skn=%s", sr, sig,
                 (long long) expiry, skn) < 0)
        tok = NULL;
out:
    free(sr);
    free(sig);
    free(skn);
    free(tosign);
    return tok;
}
