/* eg_auth.c - the credential header of each publish request: the topic's
 * access key, a SAS token signed with it (renewed before it expires), or an
 * Entra ID bearer token read from a file (re-read when the file changes, as
 * workload-identity and sidecar token files are rewritten in place) or
 * fetched from a token endpoint (client credentials, or a managed-identity
 * endpoint such as IMDS) and refreshed before it expires.  One mutex: token
 * renewal is rare and must not race between worker threads. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <curl/curl.h>
#include <jansson.h>

#include "eventgrid.h"

#define EG_TOKEN_MAX  (64 * 1024)
#define EG_REFRESH_S  300     /* renew Entra tokens this long before expiry */

static char *
eg_hdr(const char *name, const char *value)
{
    size_t n = strlen(name) + strlen(value) + 3;
    char *s = malloc(n);

    if (s != NULL)
        snprintf(s, n, "%s: %s", name, value);
    return s;
}

static char *
eg_bearer(const char *tok)
{
    size_t n = strlen(tok) + sizeof("Authorization: Bearer ");
    char *s = malloc(n);

    if (s != NULL)
        snprintf(s, n, "Authorization: Bearer %s", tok);
    return s;
}

static void
eg_trim(char *s)
{
    size_t n = strlen(s);

    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
}

/* The file holds the bare token or a token response ({"access_token":...}). */
static int
eg_token_from_file(struct eg_auth *a, char *err, size_t errlen)
{
    struct stat st;
    FILE *f = NULL;
    char *buf = NULL, *hdr = NULL;
    size_t n;
    json_t *j = NULL;
    int rc = -EIO;

    if (stat(a->token_file, &st) != 0) {
        rc = -errno;
        snprintf(err, errlen, "token_file %s: %s", a->token_file, strerror(-rc));
        return rc;
    }
    if (a->cached != NULL && st.st_mtim.tv_sec == a->file_mtime
        && st.st_mtim.tv_nsec == a->file_mtime_ns)
        return 0;
    f = fopen(a->token_file, "r");
    buf = malloc(EG_TOKEN_MAX + 1);
    if (f == NULL || buf == NULL) {
        snprintf(err, errlen, "token_file %s: %s", a->token_file, f ? "out of memory" : strerror(errno));
        goto out;
    }
    n = fread(buf, 1, EG_TOKEN_MAX, f);
    buf[n] = '\0';
    eg_trim(buf);
    if (buf[0] == '{') {
        j = json_loads(buf, 0, NULL);
        if (json_string_value(json_object_get(j, "access_token")) != NULL)
            hdr = eg_bearer(json_string_value(json_object_get(j, "access_token")));
    } else if (buf[0] != '\0' && strpbrk(buf, "\r\n") == NULL) {
        hdr = eg_bearer(buf);
    }
    if (hdr == NULL) {
        snprintf(err, errlen, "token_file %s holds no token", a->token_file);
        goto out;
    }
    free(a->cached);
    a->cached = hdr;
    a->file_mtime = st.st_mtim.tv_sec;
    a->file_mtime_ns = st.st_mtim.tv_nsec;
    rc = 0;

out:
    json_decref(j);
    if (f != NULL)
        fclose(f);
    free(buf);
    return rc;
}

struct eg_resp {
    char   *p;
    size_t  len;
};

static size_t
eg_on_resp(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct eg_resp *r = ud;
    size_t n = size * nmemb;
    char *np;

    if (r->len + n > EG_TOKEN_MAX)
        return 0;
    np = realloc(r->p, r->len + n + 1);
    if (np == NULL)
        return 0;
    memcpy(np + r->len, ptr, n);
    r->p = np;
    r->len += n;
    r->p[r->len] = '\0';
    return n;
}

static int64_t
eg_json_num(json_t *v)
{
    if (json_is_integer(v))
        return json_integer_value(v);
    if (json_is_string(v))
        return strtoll(json_string_value(v), NULL, 10);
    return 0;
}

static int
eg_token_fetch(struct eg_auth *a, char *err, size_t errlen)
{
    CURL *c = curl_easy_init();
    struct curl_slist *hdrs = NULL;
    struct eg_resp r = { NULL, 0 };
    char *url = NULL, *form = NULL, *e1 = NULL, *e2 = NULL, *e3 = NULL, *hdr;
    char cerr[CURL_ERROR_SIZE] = "";
    const char *tok;
    json_t *j = NULL;
    long status = 0;
    int64_t exp_in, exp_on;
    time_t now = time(NULL);
    size_t n;
    int rc = -EIO;

    if (c == NULL)
        goto nomem;
    if (a->client_id != NULL && a->client_secret != NULL) {
        /* OAuth 2.0 client credentials against the tenant's token endpoint. */
        e1 = eg_urlenc(a->client_id);
        e2 = eg_urlenc(a->client_secret);
        e3 = eg_urlenc(a->scope);
        if (e1 == NULL || e2 == NULL || e3 == NULL)
            goto nomem;
        n = strlen(e1) + strlen(e2) + strlen(e3) + 80;
        if ((form = malloc(n)) == NULL)
            goto nomem;
        snprintf(form, n, "grant_type=client_credentials&client_id=%s&client_secret=%s&scope=%s",
                 e1, e2, e3);
        curl_easy_setopt(c, CURLOPT_URL, a->token_url);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, form);
    } else {
        /* Managed identity (IMDS / App Service style): GET with a resource
         * (the scope without "/.default") and the Metadata header. */
        size_t sl = strlen(a->scope);
        char *res = strdup(a->scope);

        if (res == NULL)
            goto nomem;
        if (sl > 9 && strcmp(res + sl - 9, "/.default") == 0)
            res[sl - 9] = '\0';
        e3 = eg_urlenc(res);
        free(res);
        e1 = a->client_id != NULL ? eg_urlenc(a->client_id) : NULL;
        if (e3 == NULL || (a->client_id != NULL && e1 == NULL))
            goto nomem;
        n = strlen(a->token_url) + strlen(e3) + (e1 ? strlen(e1) : 0) + 64;
        if ((url = malloc(n)) == NULL)
            goto nomem;
        snprintf(url, n, "%s%capi-version=2018-02-01&resource=%s%s%s", a->token_url,
                 strchr(a->token_url, '?') ? '&' : '?', e3, e1 ? "&client_id=" : "", e1 ? e1 : "");
        curl_easy_setopt(c, CURLOPT_URL, url);
        hdrs = curl_slist_append(hdrs, "Metadata: true");
        if (hdrs == NULL)
            goto nomem;
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    }
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, a->timeout_ms);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, eg_on_resp);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    if (a->ca_file != NULL)
        curl_easy_setopt(c, CURLOPT_CAINFO, a->ca_file);
    if (curl_easy_perform(c) != CURLE_OK) {
        snprintf(err, errlen, "token endpoint %s: %s", a->token_url, cerr);
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    j = r.p != NULL ? json_loads(r.p, 0, NULL) : NULL;
    tok = json_string_value(json_object_get(j, "access_token"));
    if (status != 200 || tok == NULL) {
        const char *why = json_string_value(json_object_get(j, "error_description"));

        snprintf(err, errlen, "token endpoint %s answered %ld%s%s", a->token_url, status,
                 why ? ": " : "", why ? why : "");
        goto out;
    }
    exp_in = eg_json_num(json_object_get(j, "expires_in"));
    exp_on = eg_json_num(json_object_get(j, "expires_on"));
    if (exp_on <= now)
        exp_on = now + (exp_in > 0 ? exp_in : 3600);
    if ((hdr = eg_bearer(tok)) == NULL)
        goto nomem;
    free(a->cached);
    a->cached = hdr;
    /* Renew EG_REFRESH_S early, or halfway through a short-lived token. */
    a->cached_expiry = exp_on;
    a->cached_until = exp_on - now > 2 * EG_REFRESH_S ? exp_on - EG_REFRESH_S
                                                       : now + (exp_on - now) / 2;
    rc = 0;
    goto out;

nomem:
    snprintf(err, errlen, "out of memory");
    rc = -ENOMEM;
out:
    json_decref(j);
    if (c != NULL)
        curl_easy_cleanup(c);
    curl_slist_free_all(hdrs);
    free(r.p);
    free(url);
    free(form);
    free(e1);
    free(e2);
    free(e3);
    return rc;
}

char *
eg_auth_header(struct eg_auth *a, char *err, size_t errlen)
{
    char *out = NULL, *tok;
    time_t now;
    int rc = 0;

    if (a->mode == EG_AUTH_KEY) {
        out = eg_hdr("aeg-sas-key", a->key);
        if (out == NULL)
            snprintf(err, errlen, "out of memory");
        return out;
    }
    pthread_mutex_lock(&a->mu);
    now = time(NULL);
    if (a->mode == EG_AUTH_SAS) {
        if (a->cached == NULL || now >= a->cached_until) {
            time_t ttl = (time_t) (a->sas_ttl_ms / 1000);

            tok = eg_sas_token(a->endpoint, a->api_version, a->key, now + ttl);
            if (tok == NULL) {
                snprintf(err, errlen, errno == EINVAL ? "key is not valid base64"
                                                      : "cannot sign a SAS token");
                rc = -EINVAL;
            } else {
                free(a->cached);
                a->cached = eg_hdr("aeg-sas-token", tok);
                free(tok);
                /* Renew when a fifth of the lifetime is left: a request in
                 * flight never carries a token about to lapse. */
                a->cached_until = now + ttl - ttl / 5;
            }
        }
    } else if (a->token_file != NULL) {
        rc = eg_token_from_file(a, err, errlen);
    } else if (a->cached == NULL || now >= a->cached_until) {
        rc = eg_token_fetch(a, err, errlen);
        /* Renewal starts early: while it fails, the old token is still
         * good until its own expiry. */
        if (rc < 0 && a->cached != NULL && now + 10 < a->cached_expiry)
            rc = 0;
    }
    if (rc == 0 && a->cached != NULL && (out = strdup(a->cached)) == NULL)
        snprintf(err, errlen, "out of memory");
    pthread_mutex_unlock(&a->mu);
    return out;
}

void
eg_auth_invalidate(struct eg_auth *a)
{
    pthread_mutex_lock(&a->mu);
    free(a->cached);
    a->cached = NULL;
    a->file_mtime = 0;
    a->cached_until = 0;
    a->cached_expiry = 0;
    pthread_mutex_unlock(&a->mu);
}

void
eg_auth_free(struct eg_auth *a)
{
    free(a->cached);
    a->cached = NULL;
    pthread_mutex_destroy(&a->mu);
}
