/* webhook.c - the `webhook` publish stage: fan-out of events to HTTP
 * subscribers, each behind its own durable retry queue.
 *
 * process_batch() only appends each event to the queue of every subscriber
 * whose filter matches (one write + fdatasync per subscriber per batch) and
 * answers OK; delivery threads (wh_deliver.c) do the HTTP.  So a subscriber
 * that is down or slow costs disk space, never pipeline throughput, and never
 * delays the other subscribers.
 *
 * Metrics (orderd_plugin_<name> on /metrics):
 *   webhook_delivered        counter  events a subscriber answered 2xx for
 *   webhook_failed_attempts  counter  POSTs that failed (any subscriber)
 *   webhook_deadlettered     counter  events written to a dead-letter file
 *   webhook_backlog          gauge    undelivered events, all subscribers
 *   webhook_backlog_<name>   gauge    undelivered events of one subscriber
 *                                     (<name> lower-cased, [^a-z0-9_] -> '_')
 */
#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <curl/curl.h>

#include "../common/jsonenc.h"
#include "webhook.h"

#define WH_BATCH_LIMIT 1000
#define WH_BATCH_EVENTGRID 100   /* batch_max when unset and format = "eventgrid" */
#define WH_MIN_REQUEST  1024
#define WH_MAX_REQUEST  (64 * 1024 * 1024)

static const orderd_option wh_sub_options[] = {
    { .key = "name", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_REQUIRED,
      .help = "Subscriber name, unique in the stage; names its queue and dead-letter files ([A-Za-z0-9._-])" },
    { .key = "url", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_REQUIRED,
      .help = "Endpoint that receives the events by HTTP POST (http:// or https://)" },
    { .key = "event_types", .type = ORDERD_T_STRLIST,
      .help = "Only send events whose \"type\" property is in this list; empty or unset sends every event" },
    { .key = "headers", .type = ORDERD_T_STRLIST,
      .help = "Extra request headers, each \"Name: value\" (e.g. an API key)" },
    { .key = "secret", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_SECRET,
      .help = "HMAC-SHA256 key: when set, each request carries signature_header = \"sha256=<hex of HMAC(body)>\"" },
    { .key = "signature_header", .type = ORDERD_T_STRING, .def = "X-Orderd-Signature",
      .help = "Header that carries the body's HMAC signature when secret is set" },
    { .key = "format", .type = ORDERD_T_STRING, .choices = "eventgrid|cloudevents",
      .help = "Payload schema for this subscriber; unset uses the stage's format" },
    { .key = "timeout", .type = ORDERD_T_DURATION, .def = "10s",
      .help = "Give up one POST after this long (counts as a failed attempt)" },
    { .key = "max_attempts", .type = ORDERD_T_INT, .def = "30",
      .help = "Dead-letter an event after this many failed POSTs" },
    { .key = "ttl", .type = ORDERD_T_DURATION, .def = "24h",
      .help = "Dead-letter an event still undelivered this long after it was queued" },
    { .key = "batch_max", .type = ORDERD_T_INT,
      .help = "Send up to this many queued events per POST as a JSON array (CloudEvents: "
              "application/cloudevents-batch+json); 1 = one event per request. Unset: 100 for "
              "eventgrid (always an array), 1 for cloudevents (structured mode, which every receiver takes)" },
    { .key = "max_request_size", .type = ORDERD_T_SIZE, .def = "1MiB",
      .help = "Largest POST body a batch grows to (an event bigger than this is still sent, alone)" },
    { .key = NULL }
};

static const orderd_option wh_options[] = {
    { .key = "subscribers", .type = ORDERD_T_GROUPLIST, .flags = ORDERD_OPT_REQUIRED,
      .sub = wh_sub_options,
      .help = "HTTP endpoints to deliver events to, each with its own durable queue and retry" },
    { .key = "format", .type = ORDERD_T_STRING, .def = "cloudevents", .choices = "eventgrid|cloudevents",
      .help = "Default payload schema: CloudEvents 1.0 (structured mode) or the Event Grid event schema" },
    { .key = "source", .type = ORDERD_T_STRING, .def = "/orderd",
      .help = "CloudEvents \"source\" attribute of published events" },
    { .key = "queue_dir", .type = ORDERD_T_PATH, .flags = ORDERD_OPT_STATE,
      .help = "Directory of the subscriber queues and dead-letter files (default: <state_dir>/webhook/<pipeline>.<stage>)" },
    { .key = "ca_file", .type = ORDERD_T_PATH,
      .help = "PEM bundle of CAs trusted for https subscribers (default: the system's)" },
    { .key = "retry_base", .type = ORDERD_T_DURATION, .def = "1s",
      .help = "First retry delay ceiling; doubles per failed attempt, with full jitter" },
    { .key = "retry_cap", .type = ORDERD_T_DURATION, .def = "5m",
      .help = "Longest delay between two attempts to one subscriber" },
    { .key = NULL }
};

/* A growing byte buffer for one subscriber's share of a batch. */
struct wh_buf {
    char   *p;
    size_t  len;
    size_t  cap;
    size_t  nrec;
};

static int
wh_buf_add(struct wh_buf *b, int64_t enq_ms, const char *ev)
{
    char pre[24];
    int plen = snprintf(pre, sizeof(pre), "%lld ", (long long) enq_ms);
    size_t elen = strlen(ev), need = b->len + (size_t) plen + elen + 1;

    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        char *np;

        while (cap < need)
            cap *= 2;
        np = realloc(b->p, cap);
        if (np == NULL)
            return -ENOMEM;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, pre, (size_t) plen);
    memcpy(b->p + b->len + plen, ev, elen);
    b->len += (size_t) plen + elen;
    b->p[b->len++] = '\n';
    b->nrec++;
    return 0;
}

static const char *
wh_str(const json_t *conf, const char *key)
{
    return json_string_value(json_object_get(conf, key));
}

static int64_t
wh_int(const json_t *conf, const char *key)
{
    return json_integer_value(json_object_get(conf, key));
}

static char **
wh_strlist(const json_t *arr)
{
    size_t i, n = json_array_size(arr);
    char **v;

    if (n == 0)
        return calloc(1, sizeof(char *));
    v = calloc(n + 1, sizeof(char *));
    if (v == NULL)
        return NULL;
    for (i = 0; i < n; i++) {
        v[i] = strdup(json_string_value(json_array_get(arr, i)) ?: "");
        if (v[i] == NULL) {
            while (i > 0)
                free(v[--i]);
            free(v);
            return NULL;
        }
    }
    return v;
}

static void
wh_strlist_free(char **v)
{
    size_t i;

    for (i = 0; v != NULL && v[i] != NULL; i++)
        free(v[i]);
    free(v);
}

static int
wh_mkdirs(const char *path)
{
    char *p = strdup(path), *s;
    int rc = 0;

    if (p == NULL)
        return -ENOMEM;
    for (s = p + 1; ; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;

            *s = '\0';
            if (mkdir(p, 0700) != 0 && errno != EEXIST) {
                rc = -errno;
                break;
            }
            *s = c;
            if (c == '\0')
                break;
        }
    }
    free(p);
    return rc;
}

static int
wh_name_ok(const char *name)
{
    size_t n = strlen(name);

    return n > 0 && n <= 64 && name[0] != '.'
        && strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

static char *
wh_metric_name(const char *name)
{
    static const char prefix[] = "webhook_backlog_";
    size_t i, plen = sizeof(prefix) - 1;
    char *m = malloc(plen + strlen(name) + 1);

    if (m == NULL)
        return NULL;
    memcpy(m, prefix, plen);
    for (i = 0; name[i] != '\0'; i++) {
        char c = name[i];

        if (c >= 'A' && c <= 'Z')
            c = (char) (c - 'A' + 'a');
        m[plen + i] = ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) ? c : '_';
    }
    m[plen + i] = '\0';
    return m;
}

static void wh_destroy(void *state);

/* Copy one subscriber's keys; log and return -EINVAL on a bad value. */
static int
wh_sub_conf(struct wh_plugin *wp, struct wh_sub *s, const json_t *c, wh_format deffmt)
{
    const orderd_host *h = wp->host;
    const char *name = wh_str(c, "name"), *url = wh_str(c, "url"), *fmt = wh_str(c, "format");
    const char *secret = wh_str(c, "secret");
    int64_t batch;
    size_t i;

    if (name == NULL || !wh_name_ok(name)) {
        h->log(wp->inst, ORDERD_LOG_ERR, "subscriber name '%s' must be 1-64 of [A-Za-z0-9._-], "
               "not starting with '.'", name ? name : "");
        return -EINVAL;
    }
    if (url == NULL || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)) {
        h->log(wp->inst, ORDERD_LOG_ERR, "subscriber %s: url must start with http:// or https://",
               name);
        return -EINVAL;
    }
    s->wp = wp;
    s->name = strdup(name);
    s->url = strdup(url);
    s->sig_header = strdup(wh_str(c, "signature_header") ?: "X-Orderd-Signature");
    s->secret = secret != NULL && secret[0] != '\0' ? strdup(secret) : NULL;
    s->headers = wh_strlist(json_object_get(c, "headers"));
    s->types = json_array_size(json_object_get(c, "event_types")) > 0
        ? wh_strlist(json_object_get(c, "event_types")) : NULL;
    s->metric_backlog = wh_metric_name(name);
    if (s->name == NULL || s->url == NULL || s->sig_header == NULL || s->headers == NULL
        || s->metric_backlog == NULL || (secret != NULL && secret[0] != '\0' && s->secret == NULL)
        || (json_array_size(json_object_get(c, "event_types")) > 0 && s->types == NULL))
        return -ENOMEM;

    for (i = 0; s->headers[i] != NULL; i++) {
        const char *colon = strchr(s->headers[i], ':');

        if (colon == NULL || colon == s->headers[i] || strpbrk(s->headers[i], "\r\n") != NULL) {
            h->log(wp->inst, ORDERD_LOG_ERR, "subscriber %s: header '%s' is not \"Name: value\"",
                   name, s->headers[i]);
            return -EINVAL;
        }
    }
    if (s->sig_header[0] == '\0' || strpbrk(s->sig_header, ": \r\n") != NULL) {
        h->log(wp->inst, ORDERD_LOG_ERR, "subscriber %s: signature_header '%s' is not a header name",
               name, s->sig_header);
        return -EINVAL;
    }
    s->fmt = fmt == NULL ? deffmt
        : strcmp(fmt, "eventgrid") == 0 ? WH_FMT_EVENTGRID : WH_FMT_CLOUDEVENTS;
    s->timeout_ms = wh_int(c, "timeout");
    s->max_attempts = wh_int(c, "max_attempts");
    s->ttl_ms = wh_int(c, "ttl");
    /* Event Grid payloads are arrays anyway, so batching changes nothing a
     * receiver sees; CloudEvents batches need a receiver that takes the
     * batched content mode, so they are asked for, not assumed. */
    batch = json_is_integer(json_object_get(c, "batch_max")) ? wh_int(c, "batch_max")
          : s->fmt == WH_FMT_EVENTGRID ? WH_BATCH_EVENTGRID : 1;
    if (s->timeout_ms <= 0 || s->max_attempts < 1 || s->ttl_ms <= 0
        || batch < 1 || batch > WH_BATCH_LIMIT) {
        h->log(wp->inst, ORDERD_LOG_ERR, "subscriber %s: timeout and ttl must be > 0, "
               "max_attempts >= 1, batch_max 1..%d", name, WH_BATCH_LIMIT);
        return -EINVAL;
    }
    s->batch_max = (int) batch;
    s->max_bytes = (size_t) wh_int(c, "max_request_size");
    if (wh_int(c, "max_request_size") < WH_MIN_REQUEST
        || wh_int(c, "max_request_size") > WH_MAX_REQUEST) {
        h->log(wp->inst, ORDERD_LOG_ERR, "subscriber %s: max_request_size must be 1KiB..64MiB",
               name);
        return -EINVAL;
    }
    return 0;
}

static int
wh_default_queue_dir(struct wh_plugin *wp, char **out)
{
    const orderd_host *h = wp->host;
    const char *sd = h->state_dir(), *pl = h->pipeline_name(wp->inst), *st = h->stage_name(wp->inst);
    size_t n, i, base;
    char *p;

    if (sd == NULL || sd[0] == '\0')
        sd = ".";
    n = strlen(sd) + strlen(pl) + strlen(st) + sizeof("/webhook/.");
    p = malloc(n);
    if (p == NULL)
        return -ENOMEM;
    base = (size_t) snprintf(p, n, "%s/webhook/", sd);
    snprintf(p + base, n - base, "%s.%s", pl, st);
    /* A name must never climb out of the state directory. */
    for (i = base; p[i] != '\0'; i++)
        if (p[i] == '/')
            p[i] = '_';
    *out = p;
    return 0;
}

static int
wh_create(orderd_inst *inst, const orderd_host *host, const json_t *conf, void **state)
{
    const json_t *subs = json_object_get(conf, "subscribers");
    const char *fmt = wh_str(conf, "format");
    wh_format deffmt = fmt != NULL && strcmp(fmt, "eventgrid") == 0 ? WH_FMT_EVENTGRID
                                                                    : WH_FMT_CLOUDEVENTS;
    struct wh_plugin *wp;
    size_t i, j;
    int rc;

    wp = calloc(1, sizeof(*wp));
    if (wp == NULL)
        return -ENOMEM;
    wp->inst = inst;
    wp->host = host;
    atomic_init(&wp->stopping, 0);
    pthread_mutex_init(&wp->mlock, NULL);
    wp->retry_base_ms = wh_int(conf, "retry_base");
    wp->retry_cap_ms = wh_int(conf, "retry_cap");
    wp->source = strdup(wh_str(conf, "source") ?: "/orderd");
    wp->ca_file = wh_str(conf, "ca_file") ? strdup(wh_str(conf, "ca_file")) : NULL;
    if (wh_str(conf, "queue_dir") != NULL) {
        wp->queue_dir = strdup(wh_str(conf, "queue_dir"));
        rc = wp->queue_dir ? 0 : -ENOMEM;
    } else {
        rc = wh_default_queue_dir(wp, &wp->queue_dir);
    }
    if (rc < 0 || wp->source == NULL || (wh_str(conf, "ca_file") && wp->ca_file == NULL)) {
        rc = -ENOMEM;
        goto fail;
    }
    if (wp->retry_base_ms <= 0 || wp->retry_cap_ms < wp->retry_base_ms) {
        host->log(inst, ORDERD_LOG_ERR, "retry_base must be > 0 and retry_cap >= retry_base");
        rc = -EINVAL;
        goto fail;
    }
    if (json_array_size(subs) == 0) {
        host->log(inst, ORDERD_LOG_ERR, "subscribers: at least one subscriber is needed");
        rc = -EINVAL;
        goto fail;
    }

    /* curl_global_init is reference-counted and thread-safe since 7.84;
     * every webhook stage balances it in destroy(). */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        host->log(inst, ORDERD_LOG_ERR, "cannot initialise libcurl");
        rc = -EIO;
        goto fail;
    }
    wp->curl_ready = 1;

    wp->subs = calloc(json_array_size(subs), sizeof(*wp->subs));
    if (wp->subs == NULL) {
        rc = -ENOMEM;
        goto fail;
    }
    for (i = 0; i < json_array_size(subs); i++) {
        struct wh_sub *s = &wp->subs[i];
        pthread_condattr_t ca;

        s->q.fd = s->q.offfd = -1;
        pthread_mutex_init(&s->lock, NULL);
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&s->cond, &ca);
        pthread_condattr_destroy(&ca);
        wp->nsubs++;
        rc = wh_sub_conf(wp, s, json_array_get(subs, i), deffmt);
        if (rc < 0)
            goto fail;
        for (j = 0; j < i; j++) {
            if (strcmp(wp->subs[j].name, s->name) == 0
                || strcmp(wp->subs[j].metric_backlog, s->metric_backlog) == 0) {
                host->log(inst, ORDERD_LOG_ERR, "subscribers '%s' and '%s' clash: names must "
                          "differ even lower-cased with [^a-z0-9_] as '_'",
                          wp->subs[j].name, s->name);
                rc = -EINVAL;
                goto fail;
            }
        }
    }

    rc = wh_mkdirs(wp->queue_dir);
    if (rc < 0) {
        host->log(inst, ORDERD_LOG_ERR, "cannot create queue_dir %s: %s", wp->queue_dir,
                  strerror(-rc));
        goto fail;
    }
    for (i = 0; i < wp->nsubs; i++) {
        struct wh_sub *s = &wp->subs[i];
        size_t n = strlen(wp->queue_dir) + strlen(s->name) + sizeof("/.deadletter.ndjson");

        s->dlq_path = malloc(n);
        if (s->dlq_path == NULL) {
            rc = -ENOMEM;
            goto fail;
        }
        snprintf(s->dlq_path, n, "%s/%s.deadletter.ndjson", wp->queue_dir, s->name);
        rc = wh_queue_open(&s->q, wp->queue_dir, s->name);
        if (rc < 0) {
            host->log(inst, ORDERD_LOG_ERR, "subscriber %s: cannot open queue in %s: %s",
                      s->name, wp->queue_dir, strerror(-rc));
            goto fail;
        }
        if (s->q.pending > 0)
            host->log(inst, ORDERD_LOG_INFO, "subscriber %s: resuming %llu undelivered event(s)",
                      s->name, (unsigned long long) s->q.pending);
        wh_backlog_changed(s, (int64_t) s->q.pending);
    }

    /* Delivery starts at once: a publisher has no start() of its own in the
     * stage life cycle, and resumed backlogs should not wait for traffic. */
    for (i = 0; i < wp->nsubs; i++) {
        rc = wh_deliver_start(&wp->subs[i]);
        if (rc < 0) {
            host->log(inst, ORDERD_LOG_ERR, "subscriber %s: cannot start thread: %s",
                      wp->subs[i].name, strerror(-rc));
            goto fail;
        }
    }
    *state = wp;
    return 0;

fail:
    wh_destroy(wp);
    return rc;
}

static void
wh_stop(void *state)
{
    struct wh_plugin *wp = state;
    size_t i;

    /* Undelivered events stay on disk; the next start resumes them. */
    atomic_store(&wp->stopping, 1);
    for (i = 0; i < wp->nsubs; i++)
        wh_deliver_stop(&wp->subs[i]);
}

static void
wh_destroy(void *state)
{
    struct wh_plugin *wp = state;
    size_t i;

    if (wp == NULL)
        return;
    wh_stop(wp);
    for (i = 0; i < wp->nsubs; i++) {
        struct wh_sub *s = &wp->subs[i];

        wh_queue_close(&s->q);
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->cond);
        free(s->name);
        free(s->url);
        if (s->secret != NULL) {
            explicit_bzero(s->secret, strlen(s->secret));
            free(s->secret);
        }
        free(s->sig_header);
        wh_strlist_free(s->types);
        wh_strlist_free(s->headers);
        free(s->metric_backlog);
        free(s->dlq_path);
    }
    if (wp->curl_ready)
        curl_global_cleanup();
    pthread_mutex_destroy(&wp->mlock);
    free(wp->subs);
    free(wp->source);
    free(wp->ca_file);
    free(wp->queue_dir);
    free(wp);
}

static int
wh_matches(const struct wh_sub *s, const char *type)
{
    size_t i;

    if (s->types == NULL)
        return 1;
    for (i = 0; type != NULL && s->types[i] != NULL; i++)
        if (strcmp(s->types[i], type) == 0)
            return 1;
    return 0;
}

/* The "time" of a message that carries type and order_id as properties
 * (the `orders` contract), read from its text into buf, so that a body that
 * is text alone is not decoded for it.  RETURNS: 1 with ev->time set (NULL
 * when there is none), 0 when only the tree can tell. */
static int
wh_time_of_text(const orderd_host *h, orderd_msg *m, struct wh_event_in *ev, char *buf, size_t blen)
{
    const char *text, *t;
    size_t len, n;
    int rc;

    if (h->msg_prop(m, "type") == NULL
        || h->msg_prop(m, "order_id") == NULL || (text = h->msg_body_text(m, &len)) == NULL)
        return 0;
    rc = jenc_member_str(text, len, "time", &t, &n);
    if (rc == -ENOENT) {
        ev->time = NULL;
        return 1;
    }
    if (rc != 0 || n >= blen)
        return 0;
    memcpy(buf, t, n);
    buf[n] = '\0';
    ev->time = buf;
    return 1;
}

/* The event fields of a message: properties first (the `orders` contract),
 * then the body's own fields, so events from other producers still work. */
static void
wh_event_of(const orderd_host *h, orderd_msg *m, struct wh_event_in *ev, char *subject,
            size_t slen, char *tbuf, size_t tlen)
{
    /* Read only, so the body text a store before us made is reused; and a
     * body that is text alone stays so when the text tells all we need. */
    bool text = ORDERD_HOST_HAS(h, msg_body_text);
    bool plain = text && wh_time_of_text(h, m, ev, tbuf, tlen);
    json_t *body = plain ? NULL : text ? (json_t *) h->msg_body_peek(m) : h->msg_body(m);
    const char *oid;

    ev->data_text = NULL;
    ev->id = h->msg_id(m);
    ev->type = h->msg_prop(m, "type");
    if (ev->type == NULL)
        ev->type = json_string_value(json_object_get(body, "type"));
    oid = h->msg_prop(m, "order_id");
    if (oid == NULL)
        oid = json_string_value(json_object_get(body, "orderId"));
    ev->subject = NULL;
    if (oid != NULL) {
        snprintf(subject, slen, "orders/%s", oid);
        ev->subject = subject;
    }
    if (!plain)
        ev->time = json_string_value(json_object_get(body, "time"));
    ev->data = body;
    if (text)
        ev->data_text = h->msg_body_text(m, &ev->data_len);   /* NULL: encoded below */
}

static int
wh_process_batch(void *state, orderd_msg *const *msgs, size_t n, orderd_result *out)
{
    struct wh_plugin *wp = state;
    const orderd_host *h = wp->host;
    struct wh_buf *bufs;
    unsigned char *hit;
    int64_t now = wh_now_ms();
    size_t i, k;

    bufs = calloc(wp->nsubs, sizeof(*bufs));
    hit = calloc(wp->nsubs * n + 1, 1);
    if (bufs == NULL || hit == NULL) {
        for (i = 0; i < n; i++) {
            out[i].outcome = ORDERD_RETRY;
            out[i].reason = "webhook: out of memory";
        }
        goto out;
    }

    for (i = 0; i < n; i++) {
        char subject[512], tbuf[64], *text[2] = { NULL, NULL };
        struct wh_event_in ev;
        const char *type;

        const char *only = h->msg_prop(msgs[i], WH_SUBSCRIBER_PROP);

        wh_event_of(h, msgs[i], &ev, subject, sizeof(subject), tbuf, sizeof(tbuf));
        type = ev.type;   /* what filters match: NULL matches only "all" */
        if (ev.type == NULL)
            ev.type = "orderd.event";
        for (k = 0; k < wp->nsubs; k++) {
            struct wh_sub *s = &wp->subs[k];

            /* A replayed dead letter goes back to the one subscriber it failed for. */
            if (only != NULL ? strcmp(only, s->name) != 0 : !wh_matches(s, type))
                continue;
            if (text[s->fmt] == NULL)
                text[s->fmt] = wh_format_event(s->fmt, wp->source, &ev);
            if (text[s->fmt] == NULL || wh_buf_add(&bufs[k], now, text[s->fmt]) != 0) {
                out[i].outcome = ORDERD_RETRY;
                out[i].reason = "webhook: out of memory";
                continue;
            }
            hit[k * n + i] = 1;
        }
        free(text[0]);
        free(text[1]);
    }

    for (k = 0; k < wp->nsubs; k++) {
        struct wh_sub *s = &wp->subs[k];
        int rc;

        if (bufs[k].len == 0)
            continue;
        pthread_mutex_lock(&s->lock);
        rc = wh_queue_append(&s->q, bufs[k].p, bufs[k].len, bufs[k].nrec);
        if (rc == 0) {
            wh_backlog_changed(s, (int64_t) bufs[k].nrec);
            pthread_cond_signal(&s->cond);
        }
        pthread_mutex_unlock(&s->lock);
        if (rc < 0) {
            h->log(wp->inst, ORDERD_LOG_ERR, "subscriber %s: cannot write %s: %s",
                   s->name, s->q.path, strerror(-rc));
            for (i = 0; i < n; i++) {
                if (hit[k * n + i]) {
                    out[i].outcome = ORDERD_RETRY;
                    out[i].reason = "webhook: cannot write subscriber queue";
                }
            }
            continue;
        }
    }

out:
    for (k = 0; bufs != NULL && k < wp->nsubs; k++)
        free(bufs[k].p);
    free(bufs);
    free(hit);
    return 0;
}

static orderd_outcome
wh_process(void *state, orderd_msg *m)
{
    struct wh_plugin *wp = state;
    orderd_result r = { .outcome = ORDERD_OK };

    wh_process_batch(state, &m, 1, &r);
    if (r.outcome == ORDERD_RETRY)
        return wp->host->retry(m, r.retry_after_ms, "%s", r.reason);
    return r.outcome;
}

static const orderd_stage wh_publish = ORDERD_STAGE(
    .kind = ORDERD_PUBLISH,
    .description = "Fan events out to HTTP subscribers (CloudEvents or Event Grid schema), "
                   "each with a durable on-disk retry queue and a dead-letter file",
    .options = wh_options,
    .create = wh_create,
    .stop = wh_stop,
    .process = wh_process,
    .process_batch = wh_process_batch,
    .destroy = wh_destroy);

static const orderd_stage *const wh_stages[] = { &wh_publish, NULL };

ORDERD_PLUGIN(.name = "webhook",
              .version = PACKAGE_VERSION,
              .description = "webhook publish with per-subscriber durable retry and dead-letter",
              .maintainer = "orderd developers",
              .stages = wh_stages);
