/* cos_http.c - the Cosmos DB REST client shared by the store and the feed.
 *
 * Requests run on curl easy handles taken from a small pool and put back
 * afterwards, so each handle keeps its kept-alive connection; the handles
 * also share one DNS cache and TLS session cache (CURLSH), so a handle
 * created under load resumes TLS instead of a full handshake.  Any thread
 * may call cos_request(); a handle is used by one thread at a time.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "cosmos.h"

#define COS_MAX_BODY_DEFAULT (16u * 1024 * 1024)
#define COS_POOL_MAX 64

static void
cos_share_lock(CURL *e, curl_lock_data data, curl_lock_access acc, void *ud)
{
    struct cos_client *c = ud;

    (void) e;
    (void) acc;
    pthread_mutex_lock(&c->share_mu[(unsigned) data % 4]);
}

static void
cos_share_unlock(CURL *e, curl_lock_data data, void *ud)
{
    struct cos_client *c = ud;

    (void) e;
    pthread_mutex_unlock(&c->share_mu[(unsigned) data % 4]);
}

int
cos_client_init(struct cos_client *c, const char *endpoint, char *err, size_t errlen)
{
    size_t n;
    int i;

    if (strncmp(endpoint, "https://", 8) != 0 && strncmp(endpoint, "http://", 7) != 0) {
        snprintf(err, errlen, "endpoint must start with https:// (or http://): %s", endpoint);
        return -EINVAL;
    }
    c->endpoint = strdup(endpoint);
    if (c->endpoint == NULL)
        return -ENOMEM;
    n = strlen(c->endpoint);
    while (n > 0 && c->endpoint[n - 1] == '/')
        c->endpoint[--n] = '\0';
    for (i = 0; i < 4; i++)
        pthread_mutex_init(&c->share_mu[i], NULL);
    pthread_mutex_init(&c->pool_mu, NULL);
    c->share = curl_share_init();
    if (c->share == NULL)
        return -ENOMEM;
    curl_share_setopt(c->share, CURLSHOPT_LOCKFUNC, cos_share_lock);
    curl_share_setopt(c->share, CURLSHOPT_UNLOCKFUNC, cos_share_unlock);
    curl_share_setopt(c->share, CURLSHOPT_USERDATA, c);
    curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    return 0;
}

void
cos_client_fini(struct cos_client *c)
{
    size_t i;
    int k;

    for (i = 0; i < c->npool; i++)
        curl_easy_cleanup(c->pool[i]);
    free(c->pool);
    if (c->share != NULL)
        curl_share_cleanup(c->share);
    if (c->endpoint != NULL) {
        for (k = 0; k < 4; k++)
            pthread_mutex_destroy(&c->share_mu[k]);
        pthread_mutex_destroy(&c->pool_mu);
    }
    free(c->endpoint);
    if (c->key != NULL)
        memset(c->key, 0, strlen(c->key));
    free(c->key);
    free(c->ca_file);
    free(c->api_version);
    cos_token_free(c->token);
    memset(c, 0, sizeof(*c));
}

static CURL *
cos_handle_take(struct cos_client *c)
{
    CURL *e = NULL;

    pthread_mutex_lock(&c->pool_mu);
    if (c->npool > 0)
        e = c->pool[--c->npool];
    pthread_mutex_unlock(&c->pool_mu);
    if (e != NULL) {
        curl_easy_reset(e);   /* keeps the connection cache, clears options */
        return e;
    }
    return curl_easy_init();
}

static void
cos_handle_give(struct cos_client *c, CURL *e)
{
    pthread_mutex_lock(&c->pool_mu);
    if (c->npool == c->cpool && c->cpool < COS_POOL_MAX) {
        size_t nc = c->cpool ? c->cpool * 2 : 4;
        void **np = realloc(c->pool, nc * sizeof(*np));

        if (np != NULL) {
            c->pool = np;
            c->cpool = nc;
        }
    }
    if (c->npool < c->cpool) {
        c->pool[c->npool++] = e;
        e = NULL;
    }
    pthread_mutex_unlock(&c->pool_mu);
    if (e != NULL)
        curl_easy_cleanup(e);
}

struct cos_xfer {
    struct cos_resp *resp;
    size_t           max;
};

static size_t
cos_on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct cos_xfer *x = ud;
    struct cos_resp *r = x->resp;
    size_t n = size * nmemb, take = n;

    if (r->len + take > x->max) {
        take = x->max > r->len ? x->max - r->len : 0;
        r->truncated = 1;
    }
    if (r->len + take + 1 > r->cap) {
        size_t nc = r->cap ? r->cap : 4096;
        char *np;

        while (nc < r->len + take + 1)
            nc *= 2;
        np = realloc(r->body, nc);
        if (np == NULL)
            return 0;
        r->body = np;
        r->cap = nc;
    }
    memcpy(r->body + r->len, ptr, take);
    r->len += take;
    r->body[r->len] = '\0';
    return n;
}

/* Copy header value (trimmed) if line is "name: value". */
static int
cos_hdr_value(const char *line, size_t n, const char *name, char *out, size_t outlen)
{
    size_t nl = strlen(name), vl;
    const char *v;

    if (n <= nl || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
        return 0;
    v = line + nl + 1;
    vl = n - nl - 1;
    while (vl > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        vl--;
    }
    while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
        vl--;
    if (vl >= outlen)
        vl = outlen - 1;
    memcpy(out, v, vl);
    out[vl] = '\0';
    return 1;
}

static size_t
cos_on_header(char *line, size_t size, size_t nmemb, void *ud)
{
    struct cos_xfer *x = ud;
    struct cos_resp *r = x->resp;
    size_t n = size * nmemb;
    char v[64];

    if (n > 5 && strncmp(line, "HTTP/", 5) == 0) {
        /* a new response (after 100-continue or a redirect): forget the last one's headers */
        r->etag[0] = r->continuation[0] = '\0';
        r->retry_after_ms = -1;
        r->charge = 0;
        return n;
    }
    cos_hdr_value(line, n, "etag", r->etag, sizeof(r->etag));
    cos_hdr_value(line, n, "x-ms-continuation", r->continuation, sizeof(r->continuation));
    if (cos_hdr_value(line, n, "x-ms-retry-after-ms", v, sizeof(v)))
        r->retry_after_ms = strtol(v, NULL, 10);
    if (cos_hdr_value(line, n, "x-ms-request-charge", v, sizeof(v)))
        r->charge = strtod(v, NULL);
    return n;
}

char *
cos_escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s), o = 0;
    char *out = malloc(n * 3 + 1);

    if (out == NULL)
        return NULL;
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char) *s;

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
    return out;
}

/* endpoint + "/" + path with every segment percent-encoded. */
static char *
cos_url(const struct cos_client *c, const char *path)
{
    size_t cap = strlen(c->endpoint) + strlen(path) * 3 + 4, o;
    char *url = malloc(cap);
    const char *p = path;

    if (url == NULL)
        return NULL;
    o = (size_t) snprintf(url, cap, "%s/", c->endpoint);
    while (*p != '\0') {
        const char *slash = strchr(p, '/');
        size_t sl = slash ? (size_t) (slash - p) : strlen(p);
        char *seg = strndup(p, sl), *esc = seg ? cos_escape(seg) : NULL;

        free(seg);
        if (esc == NULL) {
            free(url);
            return NULL;
        }
        o += (size_t) snprintf(url + o, cap - o, "%s%s", esc, slash ? "/" : "");
        free(esc);
        p += sl + (slash ? 1 : 0);
    }
    return url;
}

int
cos_request(struct cos_client *c, const struct cos_req *r, struct cos_resp *resp)
{
    struct curl_slist *hdrs = NULL, *tmp;
    struct cos_xfer x = { resp, r->max_body ? r->max_body : COS_MAX_BODY_DEFAULT };
    char type[64], *link = NULL, date[64], line[2048], sig[512], *url = NULL, *tok = NULL;
    size_t i, llen = strlen(r->path) + 1;
    CURL *e = NULL;
    CURLcode cc;
    int rc = 0;

    memset(resp, 0, sizeof(*resp));
    resp->retry_after_ms = -1;
    link = malloc(llen);
    url = cos_url(c, r->path);
    e = cos_handle_take(c);
    if (link == NULL || url == NULL || e == NULL) {
        snprintf(resp->err, sizeof(resp->err), "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    cos_resource(r->path, type, sizeof(type), link, llen);
    cos_date(time(NULL), date, sizeof(date));
    if (c->key != NULL) {
        rc = cos_sign(c->key, r->verb, type, link, date, sig, sizeof(sig));
        if (rc < 0) {
            snprintf(resp->err, sizeof(resp->err), "cannot sign: the master key is not base64");
            goto out;
        }
        snprintf(line, sizeof(line), "Authorization: %s", sig);
    } else {
        char *enc;

        tok = cos_token_get(c->token, resp->err, sizeof(resp->err));
        if (tok == NULL) {
            rc = -EIO;
            goto out;
        }
        snprintf(line, sizeof(line), "type=aad&ver=1.0&sig=%s", tok);
        enc = cos_escape(line);
        if (enc == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        snprintf(line, sizeof(line), "Authorization: %s", enc);
        free(enc);
    }
    hdrs = curl_slist_append(hdrs, line);
    snprintf(line, sizeof(line), "x-ms-date: %s", date);
    tmp = hdrs ? curl_slist_append(hdrs, line) : NULL;
    hdrs = tmp;
    snprintf(line, sizeof(line), "x-ms-version: %s", c->api_version);
    tmp = hdrs ? curl_slist_append(hdrs, line) : NULL;
    hdrs = tmp;
    tmp = hdrs ? curl_slist_append(hdrs, "Accept: application/json") : NULL;
    hdrs = tmp;
    /* no "Expect: 100-continue" round trip before document bodies */
    tmp = hdrs ? curl_slist_append(hdrs, "Expect:") : NULL;
    hdrs = tmp;
    for (i = 0; hdrs != NULL && r->headers != NULL && r->headers[i] != NULL; i++) {
        tmp = curl_slist_append(hdrs, r->headers[i]);
        hdrs = tmp;
    }
    if (hdrs == NULL) {
        snprintf(resp->err, sizeof(resp->err), "out of memory");
        rc = -ENOMEM;
        goto out;
    }

    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_SHARE, c->share);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, cos_on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, cos_on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &x);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "orderd-cosmos/" PACKAGE_VERSION);
    /* never follow redirects: the signature is for this host and path only */
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, c->verify_tls ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, c->verify_tls ? 2L : 0L);
    if (c->ca_file != NULL)
        curl_easy_setopt(e, CURLOPT_CAINFO, c->ca_file);
    if (strcmp(r->verb, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r->verb);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body ? r->body : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) (r->body ? r->blen : 0));
    }

    cc = curl_easy_perform(e);
    if (cc != CURLE_OK) {
        resp->status = 0;
        resp->timed_out = cc == CURLE_OPERATION_TIMEDOUT;
        snprintf(resp->err, sizeof(resp->err), "%s", curl_easy_strerror(cc));
    } else {
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &resp->status);
    }
    if (resp->body == NULL) {
        resp->body = calloc(1, 1);
        if (resp->body == NULL)
            rc = -ENOMEM;
    }
out:
    if (tok != NULL)
        memset(tok, 0, strlen(tok));
    free(tok);
    curl_slist_free_all(hdrs);
    if (e != NULL)
        cos_handle_give(c, e);
    free(url);
    free(link);
    return rc;
}

void
cos_resp_free(struct cos_resp *resp)
{
    free(resp->body);
    resp->body = NULL;
    resp->len = resp->cap = 0;
}

const char *
cos_resp_message(const struct cos_resp *resp, char *buf, size_t len)
{
    json_t *j, *m;

    if (resp->status == 0) {
        snprintf(buf, len, "%s", resp->err);
        return buf;
    }
    j = resp->body ? json_loads(resp->body, 0, NULL) : NULL;
    m = json_object_get(j, "message");
    if (json_is_string(m))
        snprintf(buf, len, "HTTP %ld: %s", resp->status, json_string_value(m));
    else
        snprintf(buf, len, "HTTP %ld: %.300s", resp->status, resp->body ? resp->body : "");
    json_decref(j);
    return buf;
}

json_t *
cos_path_get(const json_t *doc, const char *path)
{
    const json_t *cur = doc;
    const char *p = path;

    if (*p == '/')
        p++;
    while (cur != NULL && *p != '\0') {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t) (slash - p) : strlen(p);
        char name[256];

        if (n >= sizeof(name) || !json_is_object(cur))
            return NULL;
        memcpy(name, p, n);
        name[n] = '\0';
        cur = json_object_get(cur, name);
        p += n + (slash ? 1 : 0);
    }
    return (json_t *) cur;
}

int
cos_pk_header(const json_t *doc, const char *path, char **header, char **value)
{
    json_t *v = cos_path_get(doc, path), *arr;
    char *enc;
    size_t n;

    *header = NULL;
    if (value != NULL)
        *value = NULL;
    if (v == NULL || json_is_object(v) || json_is_array(v))
        return -ENOENT;
    arr = json_array();
    if (arr == NULL || json_array_append(arr, v) != 0) {
        json_decref(arr);
        return -ENOMEM;
    }
    enc = json_dumps(arr, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(arr);
    if (enc == NULL)
        return -ENOMEM;
    n = strlen(enc) + 40;
    *header = malloc(n);
    if (*header != NULL)
        snprintf(*header, n, "x-ms-documentdb-partitionkey: %s", enc);
    if (value != NULL && *header != NULL) {
        /* the message's partition key: the string itself, or the JSON of a number/bool */
        *value = json_is_string(v) ? strdup(json_string_value(v))
                                   : json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        if (*value == NULL) {
            free(*header);
            *header = NULL;
        }
    }
    free(enc);
    return *header != NULL ? 0 : -ENOMEM;
}

/* ---- options common to both stages ------------------------------------------- */

int
cos_client_from_conf(struct cos_client *c, orderd_inst *inst, const orderd_host *h,
                     const json_t *conf)
{
    const char *auth = json_string_value(json_object_get(conf, "auth"));
    const char *key = json_string_value(json_object_get(conf, "key"));
    const char *turl = json_string_value(json_object_get(conf, "token_url"));
    const char *tfile = json_string_value(json_object_get(conf, "token_file"));
    const char *ca = json_string_value(json_object_get(conf, "ca_file"));
    char err[256] = "";
    int rc;

    memset(c, 0, sizeof(*c));
    rc = cos_client_init(c, json_string_value(json_object_get(conf, "endpoint")), err, sizeof(err));
    if (rc < 0) {
        h->log(inst, ORDERD_LOG_ERR, "cosmos: %s", err[0] ? err : "out of memory");
        return rc;
    }
    c->api_version = strdup(json_string_value(json_object_get(conf, "api_version")));
    c->timeout_ms = (long) json_integer_value(json_object_get(conf, "timeout"));
    c->connect_timeout_ms = (long) json_integer_value(json_object_get(conf, "connect_timeout"));
    c->verify_tls = json_is_true(json_object_get(conf, "tls_verify"));
    if (c->api_version == NULL)
        return -ENOMEM;
    if (ca != NULL && (c->ca_file = strdup(ca)) == NULL)
        return -ENOMEM;
    if (strcmp(auth, "key") == 0) {
        if (key == NULL || key[0] == '\0') {
            h->log(inst, ORDERD_LOG_ERR, "cosmos: auth = \"key\" needs key (or key_file / key_env)");
            return -EINVAL;
        }
        c->key = strdup(key);
        if (c->key == NULL)
            return -ENOMEM;
        /* fail at start, not on the first message, when the key is mistyped */
        if (cos_sign(c->key, "GET", "", "", "x", err, sizeof(err)) == -EINVAL) {
            h->log(inst, ORDERD_LOG_ERR, "cosmos: key is not a base64 account key");
            return -EINVAL;
        }
        return 0;
    }
    if ((turl == NULL) == (tfile == NULL)) {
        h->log(inst, ORDERD_LOG_ERR, "cosmos: auth = \"token\" needs exactly one of token_url, token_file");
        return -EINVAL;
    }
    c->token = calloc(1, sizeof(*c->token));
    if (c->token == NULL)
        return -ENOMEM;
    pthread_mutex_init(&c->token->mu, NULL);
    if ((turl != NULL && (c->token->url = strdup(turl)) == NULL) ||
        (tfile != NULL && (c->token->file = strdup(tfile)) == NULL) ||
        (ca != NULL && (c->token->ca_file = strdup(ca)) == NULL))
        return -ENOMEM;
    return 0;
}
