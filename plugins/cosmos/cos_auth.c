/* cos_auth.c - Cosmos DB request authorization.
 *
 * Master key: per "Access control on Cosmos DB resources" (REST docs),
 *   sig = base64(HMAC-SHA256(base64decode(key),
 *         lower(verb)\nlower(type)\nlink\nlower(x-ms-date)\n\n))
 *   Authorization = urlencode("type=master&ver=1.0&sig=" + sig)
 * The header is written with upper-case escapes as @azure/cosmos does; the
 * service URL-decodes it, so either case would pass.
 *
 * Entra ID: Authorization = urlencode("type=aad&ver=1.0&sig=" + token), the
 * token coming from a managed-identity endpoint (IMDS or App Service style
 * JSON with access_token and expires_on/expires_in) or from a file that an
 * outside agent keeps fresh (workload identity).
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "../common/deadline.h"
#include "cosmos.h"

/* Refetch a token this long before it expires, and a token whose expiry we
 * could not learn after this long. */
#define COS_TOKEN_MARGIN_MS   (5 * 60 * 1000)
#define COS_TOKEN_DEFAULT_MS  (30 * 60 * 1000)
#define COS_TOKEN_FILE_RECHECK_MS 1000

int64_t
cos_wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
cos_date(time_t t, char *out, size_t outlen)
{
    /* Not strftime: %a/%b follow the locale, and the signature must use the
     * English names exactly as the service (and Date.toUTCString) writes them. */
    static const char days[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
    static const char mons[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
    struct tm tm;

    gmtime_r(&t, &tm);
    snprintf(out, outlen, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday % 7],
             tm.tm_mday, mons[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
             tm.tm_sec);
}

void
cos_resource(const char *path, char *type, size_t tlen, char *link, size_t llen)
{
    size_t n = strlen(path), segs = 0;
    const char *last = path, *p;

    while (n > 0 && path[n - 1] == '/')
        n--;
    if (n == 0) {
        snprintf(type, tlen, "%s", "");
        snprintf(link, llen, "%s", "");
        return;
    }
    for (p = path; p < path + n; p++)
        if (*p == '/') {
            segs++;
            last = p + 1;
        }
    segs++;
    if (segs % 2 == 1) {
        /* a feed (".../docs"): the link is its parent */
        snprintf(type, tlen, "%.*s", (int) (path + n - last), last);
        snprintf(link, llen, "%.*s", last > path ? (int) (last - path - 1) : 0, path);
    } else {
        /* an item (".../docs/x"): the type is the segment before the id */
        const char *q = last - 1, *s;

        for (s = q; s > path && s[-1] != '/'; s--)
            ;
        snprintf(type, tlen, "%.*s", (int) (q - s), s);
        snprintf(link, llen, "%.*s", (int) n, path);
    }
}

/* Percent-encode everything but unreserved characters, upper-case hex. */
static void
cos_urlenc(const char *in, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;

    for (; *in != '\0' && o + 4 < outlen; in++) {
        unsigned char ch = (unsigned char) *in;

        if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
            ch == '-' || ch == '_' || ch == '.' || ch == '~') {
            out[o++] = (char) ch;
        } else {
            out[o++] = '%';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        }
    }
    out[o] = '\0';
}

int
cos_sign(const char *key_b64, const char *verb, const char *type, const char *link,
         const char *date, char *out, size_t outlen)
{
    unsigned char key[128], mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    char *sts = NULL, sig[64], plain[128];
    size_t klen = strlen(key_b64), stslen, i;
    int n, rc = 0, pad = 0;

    /* EVP_DecodeBlock ignores padding in its count; the key is 64 bytes
     * in practice, so anything that does not fit is not a Cosmos key. */
    if (klen == 0 || klen % 4 != 0 || klen / 4 * 3 > sizeof(key))
        return -EINVAL;
    n = EVP_DecodeBlock(key, (const unsigned char *) key_b64, (int) klen);
    if (n < 0)
        return -EINVAL;
    if (key_b64[klen - 1] == '=')
        pad++;
    if (key_b64[klen - 2] == '=')
        pad++;
    n -= pad;

    stslen = strlen(verb) + strlen(type) + strlen(link) + strlen(date) + 8;
    sts = malloc(stslen);
    if (sts == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    snprintf(sts, stslen, "%s\n%s\n%s\n%s\n\n", verb, type, link, date);
    /* lower-case verb, type and date; the link keeps its case (ids are case-sensitive) */
    for (i = 0; sts[i] != '\n'; i++)
        sts[i] = (char) (sts[i] >= 'A' && sts[i] <= 'Z' ? sts[i] + 32 : sts[i]);
    for (i++; sts[i] != '\n'; i++)
        sts[i] = (char) (sts[i] >= 'A' && sts[i] <= 'Z' ? sts[i] + 32 : sts[i]);
    i += strlen(link) + 2;
    for (; sts[i] != '\n'; i++)
        sts[i] = (char) (sts[i] >= 'A' && sts[i] <= 'Z' ? sts[i] + 32 : sts[i]);

    if (HMAC(EVP_sha256(), key, n, (const unsigned char *) sts, strlen(sts), mac, &maclen) == NULL) {
        rc = -EIO;
        goto out;
    }
    EVP_EncodeBlock((unsigned char *) sig, mac, (int) maclen);
    snprintf(plain, sizeof(plain), "type=master&ver=1.0&sig=%s", sig);
    cos_urlenc(plain, out, outlen);
out:
    OPENSSL_cleanse(key, sizeof(key));
    free(sts);
    return rc;
}

/* ---- Entra ID tokens ----------------------------------------------------------- */

struct cos_buf {
    char  *p;
    size_t len;
};

static size_t
cos_tok_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct cos_buf *b = ud;
    size_t n = size * nmemb;
    char *np;

    if (b->len + n > 1024 * 1024)
        return 0;   /* a token response is small; refuse anything huge */
    np = realloc(b->p, b->len + n + 1);
    if (np == NULL)
        return 0;
    b->p = np;
    memcpy(b->p + b->len, ptr, n);
    b->len += n;
    b->p[b->len] = '\0';
    return n;
}

/* IMDS / App Service answer {"access_token": "...", "expires_on": "<epoch s>",
 * "expires_in": "<s>"} (numbers sometimes as strings). */
static int
cos_tok_fetch_url(struct cos_token *t, char *err, size_t errlen)
{
    struct cos_buf b = { NULL, 0 };
    struct curl_slist *hdrs = NULL;
    CURL *e = curl_easy_init();
    json_t *j = NULL, *v;
    json_error_t jerr;
    long status = 0;
    int64_t exp = 0;
    int rc = -EIO;
    CURLcode cc;

    if (e == NULL)
        return -ENOMEM;
    /* IMDS wants Metadata: true; App Service wants X-IDENTITY-HEADER, taken from the env */
    hdrs = curl_slist_append(hdrs, "Metadata: true");
    if (getenv("IDENTITY_HEADER") != NULL) {
        char line[1024];

        snprintf(line, sizeof(line), "X-IDENTITY-HEADER: %s", getenv("IDENTITY_HEADER"));
        hdrs = curl_slist_append(hdrs, line);
    }
    curl_easy_setopt(e, CURLOPT_URL, t->url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, cos_tok_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    if (t->ca_file != NULL)
        curl_easy_setopt(e, CURLOPT_CAINFO, t->ca_file);
    cc = curl_easy_perform(e);
    if (cc != CURLE_OK) {
        snprintf(err, errlen, "token endpoint: %s", curl_easy_strerror(cc));
        goto out;
    }
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) {
        snprintf(err, errlen, "token endpoint answered %ld: %.200s", status, b.p ? b.p : "");
        goto out;
    }
    j = b.p ? json_loads(b.p, 0, &jerr) : NULL;
    v = json_object_get(j, "access_token");
    if (!json_is_string(v) || json_string_length(v) == 0) {
        snprintf(err, errlen, "token endpoint: no access_token in the answer");
        goto out;
    }
    free(t->token);
    t->token = strdup(json_string_value(v));
    if (t->token == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    if ((v = json_object_get(j, "expires_on")) != NULL)
        exp = (json_is_string(v) ? strtoll(json_string_value(v), NULL, 10)
                                 : (int64_t) json_integer_value(v)) * 1000;
    else if ((v = json_object_get(j, "expires_in")) != NULL)
        exp = cos_wall_ms() + (json_is_string(v) ? strtoll(json_string_value(v), NULL, 10)
                                                 : (int64_t) json_integer_value(v)) * 1000;
    t->expires_ms = exp;
    t->fetched_ms = mono_ms();
    rc = 0;
out:
    json_decref(j);
    free(b.p);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(e);
    return rc;
}

static int
cos_tok_read_file(struct cos_token *t, char *err, size_t errlen)
{
    char buf[16384];
    struct stat sb;
    size_t n;
    FILE *f;

    if (stat(t->file, &sb) != 0) {
        snprintf(err, errlen, "token file %s: %s", t->file, strerror(errno));
        return -errno;
    }
    t->fetched_ms = mono_ms();
    if (t->token != NULL && sb.st_mtime == t->file_mtime)
        return 0;
    f = fopen(t->file, "r");
    if (f == NULL) {
        snprintf(err, errlen, "token file %s: %s", t->file, strerror(errno));
        return -errno;
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        n--;
    buf[n] = '\0';
    if (n == 0) {
        snprintf(err, errlen, "token file %s is empty", t->file);
        return -EINVAL;
    }
    free(t->token);
    t->token = strdup(buf);
    OPENSSL_cleanse(buf, sizeof(buf));
    if (t->token == NULL)
        return -ENOMEM;
    t->file_mtime = sb.st_mtime;
    t->expires_ms = 0;
    return 0;
}

char *
cos_token_get(struct cos_token *t, char *err, size_t errlen)
{
    int64_t now = mono_ms();
    char *copy = NULL;
    int stale, rc = 0;

    pthread_mutex_lock(&t->mu);
    if (t->file != NULL) {
        /* the file's owner renews it; look at its mtime at most once a second */
        stale = t->token == NULL || now - t->fetched_ms >= COS_TOKEN_FILE_RECHECK_MS;
        if (stale)
            rc = cos_tok_read_file(t, err, errlen);
    } else {
        stale = t->token == NULL ||
                (t->expires_ms > 0 ? cos_wall_ms() + COS_TOKEN_MARGIN_MS >= t->expires_ms
                                   : now - t->fetched_ms >= COS_TOKEN_DEFAULT_MS);
        if (stale)
            rc = cos_tok_fetch_url(t, err, errlen);
    }
    /* a failed refresh keeps using a token that has not expired yet */
    if (t->token != NULL && (rc == 0 || t->expires_ms == 0 || cos_wall_ms() < t->expires_ms))
        copy = strdup(t->token);
    pthread_mutex_unlock(&t->mu);
    if (copy == NULL && rc == 0)
        snprintf(err, errlen, "out of memory");
    return copy;
}

void
cos_token_free(struct cos_token *t)
{
    if (t == NULL)
        return;
    pthread_mutex_destroy(&t->mu);
    if (t->token != NULL)
        OPENSSL_cleanse(t->token, strlen(t->token));
    free(t->token);
    free(t->url);
    free(t->file);
    free(t->ca_file);
    free(t);
}
