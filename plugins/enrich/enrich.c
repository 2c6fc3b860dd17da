/*
 * enrich.c - the `enrich` transform: add reference data to orders.
 *
 * For each element of the body's "items" array (target = "items") or for
 * the body itself (target = "body"), the value of its `key` field (default
 * "sku") selects an object whose fields are merged into the element:
 *   (a) from a lookup table file (`table`: {"SKU-1": {"price": 19.99, ...}}),
 *       read once in create(); the core re-creates stages on SIGHUP, which
 *       is how the table is reloaded;
 *   (b) from a partner's HTTP endpoint (`url` with a "{key}" placeholder,
 *       GET, JSON object response), behind a TTL cache and a circuit breaker.
 * Fields the element already has are kept unless `overwrite` is set.
 *
 * Outcomes.  Partner trouble (connection, timeout, 5xx, other non-2xx, a
 * body that is not a JSON object) is transient: RETRY, never REJECT.  A 404
 * means "no data for this key": the element is left as it is, unless
 * `require` makes it a REJECT.  A table miss is kept or rejected per
 * `on_missing`.  After `breaker_failures` partner failures in a row the
 * breaker opens: for `breaker_open` every message is answered RETRY at once
 * with retry_after = the time left, without calling the partner; then one
 * trial request is let through (half-open) and its result closes or
 * re-opens the breaker.  404s are cached like answers (negative caching).
 *
 * Threads: process() runs on any worker thread; each HTTP call uses its own
 * curl easy handle, and the cache and breaker sit behind one mutex that is
 * never held during a request.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <orderd/plugin.h>

#include "../common/deadline.h"

#define ENR_MAX_RESPONSE (1024 * 1024)   /* partner answers are small records */

struct enr_state {
    orderd_inst       *inst;
    const orderd_host *host;
    char              *key;
    int                target_body;
    int                overwrite;
    int                reject_missing;   /* on_missing = "reject" */
    int                require;
    json_t            *table;            /* NULL without `table` */
    char              *url;              /* NULL without `url` */
    long               timeout_ms;
    int64_t            cache_ttl_ms;
    size_t             cache_max;
    long               breaker_failures;
    int64_t            breaker_open_ms;
    int                curl_inited;

    pthread_mutex_t    lock;             /* guards everything below */
    json_t            *cache;            /* key -> {"exp": ms, "doc": object|null}, insertion order */
    long               failures;         /* consecutive partner failures */
    int64_t            open_until;       /* breaker open until (ms, monotonic); 0 = closed */
    int                trial;            /* half-open: a trial request is in flight */
};

static const orderd_option enr_options[] = {
    { .key = "table", .type = ORDERD_T_PATH,
      .help = "JSON file mapping key values to objects to merge, e.g. {\"SKU-1\": {\"warehouse\": \"BER-1\"}}" },
    { .key = "key", .type = ORDERD_T_STRING, .def = "sku",
      .help = "field whose value selects the table entry and fills {key} in url" },
    { .key = "target", .type = ORDERD_T_STRING, .def = "items", .choices = "items|body",
      .help = "enrich each element of the body's items array, or the body itself" },
    { .key = "overwrite", .type = ORDERD_T_BOOL, .def = "false",
      .help = "replace fields the order already has (default: only add missing ones)" },
    { .key = "on_missing", .type = ORDERD_T_STRING, .def = "keep", .choices = "keep|reject",
      .help = "when the table has no entry for a key: keep the element unenriched, or reject the order" },
    { .key = "url", .type = ORDERD_T_STRING,
      .help = "partner endpoint queried with GET, \"{key}\" replaced by the URL-encoded key value" },
    { .key = "timeout", .type = ORDERD_T_DURATION, .def = "2s",
      .help = "whole-request timeout for the partner endpoint" },
    { .key = "cache_ttl", .type = ORDERD_T_DURATION, .def = "60s",
      .help = "how long partner answers (including 404s) are reused; 0 disables the cache" },
    { .key = "cache_max", .type = ORDERD_T_INT, .def = "10000",
      .help = "most partner answers kept in the cache (oldest evicted first)" },
    { .key = "require", .type = ORDERD_T_BOOL, .def = "false",
      .help = "reject the order when the partner answers 404 for a key (default: leave it unenriched)" },
    { .key = "breaker_failures", .type = ORDERD_T_INT, .def = "5",
      .help = "consecutive partner failures that open the circuit breaker (0 disables it)" },
    { .key = "breaker_open", .type = ORDERD_T_DURATION, .def = "30s",
      .help = "how long an open breaker answers RETRY without calling the partner" },
    { .key = NULL }
};

static void enr_destroy(void *state)
{
    struct enr_state *st = state;

    if (st == NULL)
        return;
    json_decref(st->table);
    json_decref(st->cache);
    free(st->key);
    free(st->url);
    pthread_mutex_destroy(&st->lock);
    if (st->curl_inited)
        curl_global_cleanup();
    free(st);
}

static int enr_load_table(struct enr_state *st, const char *path)
{
    json_error_t jerr;

    st->table = json_load_file(path, 0, &jerr);
    if (st->table == NULL) {
        if (jerr.line > 0)
            st->host->log(st->inst, ORDERD_LOG_ERR, "table %s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
        else
            st->host->log(st->inst, ORDERD_LOG_ERR, "table %s: %s", path, jerr.text);
        return -EINVAL;
    }
    if (!json_is_object(st->table)) {
        st->host->log(st->inst, ORDERD_LOG_ERR, "table %s: must be a JSON object keyed by %s values",
                      path, st->key);
        return -EINVAL;
    }
    st->host->log(st->inst, ORDERD_LOG_INFO, "table %s: %zu entries", path, json_object_size(st->table));
    return 0;
}

static int enr_create(orderd_inst *inst, const orderd_host *host, const json_t *conf, void **state)
{
    struct enr_state *st;
    const char *table = json_string_value(json_object_get(conf, "table"));
    const char *url = json_string_value(json_object_get(conf, "url"));
    const char *key = json_string_value(json_object_get(conf, "key"));
    const char *target = json_string_value(json_object_get(conf, "target"));
    const char *miss = json_string_value(json_object_get(conf, "on_missing"));
    json_int_t cmax = json_integer_value(json_object_get(conf, "cache_max"));
    json_int_t bfail = json_integer_value(json_object_get(conf, "breaker_failures"));
    int rc = -EINVAL;

    st = calloc(1, sizeof(*st));
    if (st == NULL) {
        host->log(inst, ORDERD_LOG_ERR, "out of memory");
        return -ENOMEM;
    }
    pthread_mutex_init(&st->lock, NULL);
    st->inst = inst;
    st->host = host;
    st->key = strdup(key != NULL ? key : "sku");
    st->cache = json_object();
    if (st->key == NULL || st->cache == NULL) {
        rc = -ENOMEM;
        host->log(inst, ORDERD_LOG_ERR, "out of memory");
        goto fail;
    }
    st->target_body = target != NULL && strcmp(target, "body") == 0;
    st->overwrite = json_is_true(json_object_get(conf, "overwrite"));
    st->require = json_is_true(json_object_get(conf, "require"));
    st->reject_missing = miss != NULL && strcmp(miss, "reject") == 0;
    st->timeout_ms = (long)json_integer_value(json_object_get(conf, "timeout"));
    st->cache_ttl_ms = json_integer_value(json_object_get(conf, "cache_ttl"));
    st->breaker_open_ms = json_integer_value(json_object_get(conf, "breaker_open"));
    if (cmax < 0 || bfail < 0 || st->timeout_ms < 0 || st->cache_ttl_ms < 0 || st->breaker_open_ms < 0) {
        host->log(inst, ORDERD_LOG_ERR, "cache_max, breaker_failures and durations must not be negative");
        goto fail;
    }
    st->cache_max = (size_t)cmax;
    st->breaker_failures = (long)bfail;
    if (table == NULL && url == NULL) {
        host->log(inst, ORDERD_LOG_ERR, "nothing to enrich from: set table, url or both");
        goto fail;
    }
    if (table != NULL && (rc = enr_load_table(st, table)) < 0)
        goto fail;
    if (url != NULL) {
        if (strstr(url, "{key}") == NULL)
            host->log(inst, ORDERD_LOG_WARN, "url has no {key} placeholder: every item asks the same URL");
        st->url = strdup(url);
        if (st->url == NULL) {
            rc = -ENOMEM;
            goto fail;
        }
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            host->log(inst, ORDERD_LOG_ERR, "curl_global_init failed");
            rc = -EIO;
            goto fail;
        }
        st->curl_inited = 1;
    }
    *state = st;
    return 0;

fail:
    enr_destroy(st);
    return rc;
}

/* ---- partner HTTP ---- */

struct enr_buf {
    char  *data;
    size_t len;
};

static size_t enr_write(char *ptr, size_t size, size_t nmemb, void *user)
{
    struct enr_buf *b = user;
    size_t n = size * nmemb;
    char *grown;

    if (b->len + n > ENR_MAX_RESPONSE)
        return 0;   /* makes curl fail the transfer: a partner bug, retried */
    grown = realloc(b->data, b->len + n + 1);
    if (grown == NULL)
        return 0;
    b->data = grown;
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/* Build the URL with "{key}" replaced by the escaped key value. */
static char *enr_make_url(const struct enr_state *st, CURL *c, const char *value)
{
    const char *at = strstr(st->url, "{key}");
    char *esc, *url;
    size_t n;

    if (at == NULL)
        return strdup(st->url);
    esc = curl_easy_escape(c, value, 0);
    if (esc == NULL)
        return NULL;
    n = strlen(st->url) - 5 + strlen(esc) + 1;
    url = malloc(n);
    if (url != NULL)
        snprintf(url, n, "%.*s%s%s", (int)(at - st->url), st->url, esc, at + 5);
    curl_free(esc);
    return url;
}

/* GET the partner's record for value.
 * RETURNS: 0 with *doc (new reference, or NULL for 404); negative errno on
 * any failure, with why written to err. */
static int enr_fetch(struct enr_state *st, const char *value, json_t **doc, char *err, size_t errlen)
{
    struct enr_buf b = { NULL, 0 };
    CURL *c = curl_easy_init();
    char *url = NULL;
    long status = 0;
    CURLcode cc;
    int rc = -EIO;

    *doc = NULL;
    if (c == NULL) {
        snprintf(err, errlen, "curl_easy_init failed");
        return -ENOMEM;
    }
    url = enr_make_url(st, c, value);
    if (url == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);   /* threads: no SIGALRM for DNS timeouts */
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, st->timeout_ms);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, enr_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(c, CURLOPT_USERAGENT, "orderd-enrich/1.0");
    cc = curl_easy_perform(c);
    if (cc != CURLE_OK) {
        snprintf(err, errlen, "partner %s: %s", url, curl_easy_strerror(cc));
        rc = cc == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : -EIO;
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (status == 404) {
        rc = 0;
        goto out;
    }
    if (status < 200 || status > 299) {
        snprintf(err, errlen, "partner %s: HTTP %ld", url, status);
        goto out;
    }
    *doc = b.data != NULL ? json_loadb(b.data, b.len, 0, NULL) : NULL;
    if (!json_is_object(*doc)) {
        json_decref(*doc);
        *doc = NULL;
        snprintf(err, errlen, "partner %s: answer is not a JSON object", url);
        rc = -EPROTO;
        goto out;
    }
    rc = 0;

out:
    free(url);
    free(b.data);
    curl_easy_cleanup(c);
    return rc;
}

/* Cache lookup.  Called with the lock held.
 * RETURNS: 1 hit (*doc new reference or NULL for a cached 404), 0 miss. */
static int enr_cache_get(struct enr_state *st, const char *value, int64_t now, json_t **doc)
{
    json_t *e = json_object_get(st->cache, value);

    if (e == NULL)
        return 0;
    if (json_integer_value(json_object_get(e, "exp")) <= now) {
        json_object_del(st->cache, value);
        return 0;
    }
    *doc = json_object_get(e, "doc");
    *doc = json_is_object(*doc) ? json_incref(*doc) : NULL;
    return 1;
}

/* Called with the lock held.  jansson keeps object keys in insertion order,
 * so the first key is the oldest entry: evicting it keeps the bound cheap. */
static void enr_cache_put(struct enr_state *st, const char *value, json_t *doc, int64_t now)
{
    json_t *e;

    if (st->cache_ttl_ms == 0 || st->cache_max == 0)
        return;
    json_object_del(st->cache, value);
    while (json_object_size(st->cache) >= st->cache_max)
        json_object_del(st->cache, json_object_iter_key(json_object_iter(st->cache)));
    e = json_pack("{s:I, s:O?}", "exp", (json_int_t)(now + st->cache_ttl_ms), "doc", doc);
    if (e != NULL)
        json_object_set_new(st->cache, value, e);
}

/* Partner record for value, through cache and breaker.
 * RETURNS: ORDERD_OK with *doc (new reference, NULL = 404), or ORDERD_RETRY
 * with *retry_ms and why in err. */
static orderd_outcome enr_partner(struct enr_state *st, const char *value, json_t **doc,
                                  uint32_t *retry_ms, char *err, size_t errlen)
{
    int64_t now = mono_ms();
    int rc, was_trial = 0;

    *doc = NULL;
    *retry_ms = 0;
    pthread_mutex_lock(&st->lock);
    if (enr_cache_get(st, value, now, doc)) {
        pthread_mutex_unlock(&st->lock);
        st->host->metric_add(st->inst, "cache_hits", 1);
        return ORDERD_OK;
    }
    if (st->open_until != 0) {
        if (now < st->open_until || st->trial) {
            /* open, or half-open with its one trial request still out */
            *retry_ms = now < st->open_until ? (uint32_t)(st->open_until - now) : 1000;
            pthread_mutex_unlock(&st->lock);
            snprintf(err, errlen, "partner circuit breaker is open");
            return ORDERD_RETRY;
        }
        st->trial = 1;
        was_trial = 1;
    }
    pthread_mutex_unlock(&st->lock);

    st->host->metric_add(st->inst, "partner_requests", 1);
    rc = enr_fetch(st, value, doc, err, errlen);
    now = mono_ms();

    pthread_mutex_lock(&st->lock);
    if (was_trial)
        st->trial = 0;
    if (rc == 0) {
        if (st->open_until != 0)
            st->host->log(st->inst, ORDERD_LOG_INFO, "partner answers again: circuit breaker closed");
        st->failures = 0;
        st->open_until = 0;
        enr_cache_put(st, value, *doc, now);
    } else {
        st->failures++;
        if (st->breaker_failures > 0 && (was_trial || st->failures >= st->breaker_failures)) {
            if (st->open_until == 0 || was_trial)
                st->host->log(st->inst, ORDERD_LOG_WARN, "%s; circuit breaker open for %lld ms after %ld failures",
                              err, (long long)st->breaker_open_ms, st->failures);
            st->open_until = now + (st->breaker_open_ms > 0 ? st->breaker_open_ms : 1);
        }
    }
    pthread_mutex_unlock(&st->lock);
    if (rc < 0) {
        st->host->metric_add(st->inst, "partner_failures", 1);
        return ORDERD_RETRY;
    }
    return ORDERD_OK;
}

/* ---- process ---- */

static void enr_merge(const struct enr_state *st, json_t *target, const json_t *src)
{
    const char *k;
    json_t *v;

    /* deep copies: the source (table or cache) is shared between threads
     * and later stages may edit the body in place */
    json_object_foreach((json_t *)src, k, v) {
        if (strcmp(k, st->key) == 0)
            continue;
        if (st->overwrite || json_object_get(target, k) == NULL)
            json_object_set_new(target, k, json_deep_copy(v));
    }
}

static orderd_outcome enr_one(struct enr_state *st, orderd_msg *m, json_t *el, const char *where)
{
    const orderd_host *h = st->host;
    const json_t *kv = json_object_get(el, st->key);
    const json_t *row;
    char num[32], err[512];
    const char *value;
    json_t *doc;
    uint32_t retry_ms;
    orderd_outcome out;

    if (json_is_string(kv)) {
        value = json_string_value(kv);
    } else if (json_is_integer(kv)) {
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(kv));
        value = num;
    } else {
        return ORDERD_OK;   /* nothing to look up by; the schema's job to insist */
    }
    if (st->table != NULL) {
        row = json_object_get(st->table, value);
        if (json_is_object(row)) {
            enr_merge(st, el, row);
        } else if (st->reject_missing) {
            return h->reject(m, "%s: no table entry for %s \"%s\"", where, st->key, value);
        } else {
            h->metric_add(st->inst, "table_misses", 1);
        }
    }
    if (st->url == NULL)
        return ORDERD_OK;
    out = enr_partner(st, value, &doc, &retry_ms, err, sizeof(err));
    if (out == ORDERD_RETRY)
        return h->retry(m, retry_ms, "%s", err);
    if (doc == NULL) {
        if (st->require)
            return h->reject(m, "%s: partner has no record for %s \"%s\"", where, st->key, value);
        h->log(st->inst, ORDERD_LOG_DEBUG, "%s: partner has no record for %s \"%s\"", where, st->key, value);
        return ORDERD_OK;
    }
    enr_merge(st, el, doc);
    json_decref(doc);
    return ORDERD_OK;
}

static orderd_outcome enr_process(void *state, orderd_msg *m)
{
    struct enr_state *st = state;
    json_t *body = st->host->msg_body(m), *items, *el;
    orderd_outcome out;
    char where[40];
    size_t i;

    if (!json_is_object(body))
        return ORDERD_OK;
    if (st->target_body)
        return enr_one(st, m, body, "/");
    items = json_object_get(body, "items");
    json_array_foreach(items, i, el) {
        if (!json_is_object(el))
            continue;
        snprintf(where, sizeof(where), "/items/%zu", i);
        out = enr_one(st, m, el, where);
        if (out != ORDERD_OK)
            return out;
    }
    return ORDERD_OK;
}

static const orderd_stage enr_transform = ORDERD_STAGE(
    .kind = ORDERD_TRANSFORM,
    .description = "merge reference data from a lookup table and/or a partner HTTP endpoint into orders",
    .options = enr_options,
    .create = enr_create,
    .process = enr_process,
    .destroy = enr_destroy);

static const orderd_stage *const enr_stages[] = { &enr_transform, NULL };

ORDERD_PLUGIN(.name = "enrich", .version = "1.0",
              .description = "lookup-table and HTTP enrichment transform",
              .maintainer = "orderd developers",
              .stages = enr_stages);
