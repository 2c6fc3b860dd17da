/* eg_sas.c - Event Grid shared access signatures, byte for byte as
 * @azure/eventgrid's generateSharedAccessSignature writes them (the service
 * checks the HMAC over the exact "r=...&e=..." text, so every escape and the
 * en-US expiry format matter).  Pure functions: the unit test compiles this
 * file directly and checks it against the SDK and known-answer vectors. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "eventgrid.h"

char *
eg_urlenc(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    /* encodeURIComponent leaves exactly these unescaped. */
    static const char keep[] = "-_.!~*'()";
    size_t n = strlen(s), i, o = 0;
    char *out = malloc(3 * n + 1);

    if (out == NULL)
        return NULL;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char) s[i];

        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
            || (c != '\0' && strchr(keep, c) != NULL)) {
            out[o++] = (char) c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
    return out;
}

int
eg_sas_expiry(time_t t, char *out, size_t len)
{
    struct tm tm;
    int h, n;

    if (gmtime_r(&t, &tm) == NULL)
        return -EINVAL;
    h = tm.tm_hour % 12;
    n = snprintf(out, len, "%d/%d/%d %d:%02d:%02d %s", tm.tm_mon + 1, tm.tm_mday,
                 tm.tm_year + 1900, h == 0 ? 12 : h, tm.tm_min, tm.tm_sec,
                 tm.tm_hour < 12 ? "AM" : "PM");
    return n > 0 && (size_t) n < len ? 0 : -EINVAL;
}

/* Decode standard base64 (the portal's key format) into out; *olen gets the
 * length without the padding EVP_DecodeBlock counts. */
static int
eg_b64dec(const char *in, unsigned char *out, size_t cap, size_t *olen)
{
    size_t n = strlen(in), pad = 0;
    int r;

    if (n == 0 || n % 4 != 0 || n / 4 * 3 > cap)
        return -EINVAL;
    r = EVP_DecodeBlock(out, (const unsigned char *) in, (int) n);
    if (r < 0)
        return -EINVAL;
    if (in[n - 1] == '=')
        pad++;
    if (in[n - 2] == '=')
        pad++;
    *olen = (size_t) r - pad;
    return 0;
}

char *
eg_sas_token(const char *endpoint, const char *api_version, const char *key_b64, time_t expiry)
{
    unsigned char key[256], mac[EVP_MAX_MD_SIZE];
    char e[64], sig[EVP_MAX_MD_SIZE * 2 + 4];
    char *res = NULL, *enc_r = NULL, *enc_e = NULL, *enc_s = NULL, *tosign = NULL, *tok = NULL;
    unsigned int mlen = 0;
    size_t klen = 0, n;
    int err = ENOMEM;

    if (eg_b64dec(key_b64, key, sizeof(key), &klen) < 0 || eg_sas_expiry(expiry, e, sizeof(e)) < 0) {
        err = EINVAL;
        goto out;
    }
    n = strlen(endpoint) + strlen(api_version) + sizeof("?apiVersion=");
    res = malloc(n);
    if (res == NULL)
        goto out;
    /* The SDK signs "apiVersion" (not the query's "api-version"). */
    snprintf(res, n, "%s?apiVersion=%s", endpoint, api_version);
    enc_r = eg_urlenc(res);
    enc_e = eg_urlenc(e);
    if (enc_r == NULL || enc_e == NULL)
        goto out;
    n = strlen(enc_r) + strlen(enc_e) + 6;
    tosign = malloc(n);
    if (tosign == NULL)
        goto out;
    snprintf(tosign, n, "r=%s&e=%s", enc_r, enc_e);
    if (HMAC(EVP_sha256(), key, (int) klen, (const unsigned char *) tosign, strlen(tosign),
             mac, &mlen) == NULL) {
        err = EIO;
        goto out;
    }
    EVP_EncodeBlock((unsigned char *) sig, mac, (int) mlen);
    enc_s = eg_urlenc(sig);
    if (enc_s == NULL)
        goto out;
    n = strlen(tosign) + strlen(enc_s) + 4;
    tok = malloc(n);
    if (tok == NULL)
        goto out;
    snprintf(tok, n, "%s&s=%s", tosign, enc_s);
    err = 0;

out:
    OPENSSL_cleanse(key, sizeof(key));
    free(res);
    free(enc_r);
    free(enc_e);
    free(enc_s);
    free(tosign);
    if (err != 0)
        errno = err;
    return tok;
}
