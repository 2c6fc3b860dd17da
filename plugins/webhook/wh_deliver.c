/* wh_deliver.c - one delivery thread per subscriber.
 *
 * The thread takes records from its subscriber's durable queue in order,
 * POSTs what is queued (up to batch_max events and max_request_size bytes),
 * and on 2xx commits the offset.  Failures are retried in place (so order
 * holds) with full-jitter exponential backoff or the receiver's Retry-After,
 * until max_attempts or ttl; permanent ones (400/401/403/413) are
 * dead-lettered at once, a refused batch first split to find the event
 * refused (see wh_run).  A curl multi handle is kept per thread so
 * connections stay alive between events, and is polled in short slices so
 * stop() never waits on a slow receiver. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "../common/deadline.h"
#include "webhook.h"

#define WH_POLL_MS      100     /* how often a transfer checks for stop() */
#define WH_ERR_MAX      256
#define WH_BODY_SNIPPET 160     /* bytes of a failure response kept for the dead letter */

struct wh_conn {
    CURLM   *multi;
    CURL    *easy;
    char     errbuf[CURL_ERROR_SIZE];
    char     snippet[WH_BODY_SNIPPET + 1];
    size_t   snippet_len;
    int64_t  retry_after_ms;    /* from the last response, -1 if none */
    uint64_t rng;
};

struct wh_try {
    long     status;            /* HTTP status, 0 when no response */
    char     error[WH_ERR_MAX];
    int      aborted;           /* stop() interrupted the transfer */
};

int64_t
wh_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t
wh_rand(struct wh_conn *c)
{
    /* xorshift64*: jitter only needs to decorrelate subscribers and daemons. */
    c->rng ^= c->rng >> 12;
    c->rng ^= c->rng << 25;
    c->rng ^= c->rng >> 27;
    return c->rng * 2685821657736338717ULL;
}

static int64_t
wh_backoff(struct wh_conn *c, const struct wh_plugin *wp, int64_t attempt)
{
    int64_t ceil = wp->retry_base_ms;

    while (attempt-- > 0 && ceil < wp->retry_cap_ms)
        ceil *= 2;
    if (ceil > wp->retry_cap_ms)
        ceil = wp->retry_cap_ms;
    if (ceil <= 0)
        return 0;
    return (int64_t) (wh_rand(c) % (uint64_t) (ceil + 1));
}

static size_t
wh_on_body(char *p, size_t size, size_t nmemb, void *arg)
{
    struct wh_conn *c = arg;
    size_t n = size * nmemb, room = WH_BODY_SNIPPET - c->snippet_len;

    if (room > 0) {
        size_t k = n < room ? n : room;

        memcpy(c->snippet + c->snippet_len, p, k);
        c->snippet_len += k;
        c->snippet[c->snippet_len] = '\0';
    }
    return n;
}

static size_t
wh_on_header(char *p, size_t size, size_t nmemb, void *arg)
{
    struct wh_conn *c = arg;
    size_t n = size * nmemb;
    char val[64];
    size_t k = 0;
    const char *v;

    if (n <= 12 || strncasecmp(p, "retry-after:", 12) != 0)
        return n;
    for (v = p + 12; v < p + n && (*v == ' ' || *v == '\t'); v++)
        ;
    while (v < p + n && *v != '\r' && *v != '\n' && k < sizeof(val) - 1)
        val[k++] = *v++;
    val[k] = '\0';
    if (k > 0 && strspn(val, "0123456789") == k) {
        c->retry_after_ms = strtoll(val, NULL, 10) * 1000;
    } else {
        time_t t = curl_getdate(val, NULL);

        if (t > 0)
            c->retry_after_ms = ((int64_t) t - (int64_t) time(NULL)) * 1000;
    }
    if (c->retry_after_ms < 0)
        c->retry_after_ms = 0;
    return n;
}

static int
wh_conn_init(struct wh_conn *c, struct wh_sub *s)
{
    struct wh_plugin *wp = s->wp;

    memset(c, 0, sizeof(*c));
    c->rng = (uint64_t) mono_ms() ^ ((uint64_t) (uintptr_t) s << 16) ^ 0x9e3779b97f4a7c15ULL;
    c->multi = curl_multi_init();
    c->easy = curl_easy_init();
    if (c->multi == NULL || c->easy == NULL)
        return -ENOMEM;

    curl_easy_setopt(c->easy, CURLOPT_URL, s->url);
    curl_easy_setopt(c->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->easy, CURLOPT_TIMEOUT_MS, (long) s->timeout_ms);
    curl_easy_setopt(c->easy, CURLOPT_ERRORBUFFER, c->errbuf);
    curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, wh_on_body);
    curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(c->easy, CURLOPT_HEADERFUNCTION, wh_on_header);
    curl_easy_setopt(c->easy, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(c->easy, CURLOPT_USERAGENT, "orderd-webhook/" PACKAGE_VERSION);
    /* Redirects are not followed: a subscriber moving must be configured,
     * and following could leak the signature to another host. */
    curl_easy_setopt(c->easy, CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(c->easy, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(c->easy, CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    if (wp->ca_file != NULL)
        curl_easy_setopt(c->easy, CURLOPT_CAINFO, wp->ca_file);
    return 0;
}

static void
wh_conn_free(struct wh_conn *c)
{
    if (c->easy != NULL)
        curl_easy_cleanup(c->easy);
    if (c->multi != NULL)
        curl_multi_cleanup(c->multi);
}

/* One POST.  Fills t; returns nothing because every outcome is data. */
static void
wh_post(struct wh_conn *c, struct wh_sub *s, const char *body, size_t blen,
        const char *ctype, struct wh_try *t)
{
    struct curl_slist *hdrs = NULL, *tmp;
    char line[128 + 72];
    CURLcode res = CURLE_OK;
    CURLMsg *msg;
    int running = 1, left, i;

    memset(t, 0, sizeof(*t));
    c->errbuf[0] = '\0';
    c->snippet_len = 0;
    c->snippet[0] = '\0';
    c->retry_after_ms = -1;

    snprintf(line, sizeof(line), "Content-Type: %s", ctype);
    hdrs = curl_slist_append(hdrs, line);
    /* No "Expect: 100-continue" round trip for larger batches. */
    tmp = hdrs != NULL ? curl_slist_append(hdrs, "Expect:") : NULL;
    hdrs = tmp;
    if (hdrs != NULL && s->secret != NULL) {
        char sig[72];

        if (wh_sign(s->secret, body, blen, sig) != 0) {
            snprintf(t->error, sizeof(t->error), "cannot compute HMAC signature");
            goto out;
        }
        snprintf(line, sizeof(line), "%s: %s", s->sig_header, sig);
        hdrs = curl_slist_append(hdrs, line);
    }
    for (i = 0; hdrs != NULL && s->headers[i] != NULL; i++)
        hdrs = curl_slist_append(hdrs, s->headers[i]);
    if (hdrs == NULL) {
        snprintf(t->error, sizeof(t->error), "out of memory");
        goto out;
    }

    curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c->easy, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) blen);
    if (curl_multi_add_handle(c->multi, c->easy) != CURLM_OK) {
        snprintf(t->error, sizeof(t->error), "curl_multi_add_handle failed");
        goto out;
    }
    while (running) {
        if (curl_multi_perform(c->multi, &running) != CURLM_OK)
            break;
        if (!running)
            break;
        if (atomic_load(&s->wp->stopping)) {
            t->aborted = 1;
            break;
        }
#if LIBCURL_VERSION_NUM >= 0x074200
        curl_multi_poll(c->multi, NULL, 0, WH_POLL_MS, NULL);
#else
        curl_multi_wait(c->multi, NULL, 0, WH_POLL_MS, NULL);
#endif
    }
    res = CURLE_RECV_ERROR;
    while ((msg = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (msg->msg == CURLMSG_DONE)
            res = msg->data.result;
    }
    curl_multi_remove_handle(c->multi, c->easy);

    if (t->aborted) {
        snprintf(t->error, sizeof(t->error), "stopped");
    } else if (res != CURLE_OK) {
        snprintf(t->error, sizeof(t->error), "%s", c->errbuf[0] != '\0' ? c->errbuf
                 : curl_easy_strerror(res));
    } else {
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &t->status);
        if (t->status < 200 || t->status > 299) {
            size_t k;

            /* Keep a printable excerpt of the answer: it usually says why. */
            for (k = 0; k < c->snippet_len; k++)
                if (c->snippet[k] < 0x20 || c->snippet[k] == 0x7f)
                    c->snippet[k] = ' ';
            while (c->snippet_len > 0 && c->snippet[c->snippet_len - 1] == ' ')
                c->snippet[--c->snippet_len] = '\0';
            snprintf(t->error, sizeof(t->error), "HTTP %ld%s%s", t->status,
                     c->snippet_len > 0 ? ": " : "", c->snippet);
        }
    }

out:
    curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(hdrs);
}

static int
wh_permanent(long status)
{
    /* The receiver told us the event itself is unacceptable: retrying the
     * same bytes cannot succeed. */
    return status == 400 || status == 401 || status == 403 || status == 413;
}

/* One queued event (as formatted for the subscriber) back into a message:
 * body = the event's data, id, type and order id as the `orders` contract
 * has them, plus the subscriber it failed for. */
static int
wh_core_dead_letter(struct wh_sub *s, const struct wh_rec *rec, int64_t attempts,
                    const struct wh_try *t)
{
    struct wh_plugin *wp = s->wp;
    const orderd_host *h = wp->host;
    json_t *ev = json_loadb(rec->ev, rec->len, 0, NULL);
    const char *id, *type, *subject;
    orderd_msg *m;
    char reason[1024];

    if (ev == NULL)
        return 0;   /* unreadable record: the history file still keeps its bytes */
    id = json_string_value(json_object_get(ev, "id"));
    type = json_string_value(json_object_get(ev, "type"));
    if (type == NULL)
        type = json_string_value(json_object_get(ev, "eventType"));
    subject = json_string_value(json_object_get(ev, "subject"));
    m = h->msg_new(wp->inst, json_incref(json_object_get(ev, "data")));
    if (m == NULL) {
        json_decref(ev);
        return -ENOMEM;
    }
    if (id)
        h->msg_set_id(m, id);
    if (type)
        h->msg_set_prop(m, "type", type);
    if (subject && strncmp(subject, "orders/", 7) == 0) {
        h->msg_set_prop(m, "order_id", subject + 7);
        h->msg_set_partition_key(m, subject + 7);
    }
    h->msg_set_prop(m, WH_SUBSCRIBER_PROP, s->name);
    snprintf(reason, sizeof(reason), "subscriber %s: %s (HTTP %ld) after %lld attempt(s)",
             s->name, t->error[0] ? t->error : "failed", t->status, (long long) attempts);
    json_decref(ev);
    return h->dead_letter(wp->inst, m, reason);
}

static int
wh_dead_letter(struct wh_sub *s, const struct wh_rec *recs, int n, int64_t attempts,
               const struct wh_try *t, int64_t first_ms)
{
    int64_t now = wh_now_ms();
    char *buf = NULL;
    size_t len = 0;
    FILE *mem;
    int fd = -1, rc = 0, i;

    mem = open_memstream(&buf, &len);
    if (mem == NULL)
        return -errno;
    for (i = 0; i < n; i++) {
        json_t *ev = json_loadb(recs[i].ev, recs[i].len, 0, NULL);
        json_t *id = ev != NULL ? json_object_get(ev, "id") : NULL;
        json_t *o = json_pack("{s:O?,s:s,s:s,s:I,s:I,s:s,s:I,s:I,s:O?}",
                              "id", id,
                              "subscriber", s->name,
                              "url", s->url,
                              "attempts", (json_int_t) attempts,
                              "last_status", (json_int_t) t->status,
                              "last_error", t->error,
                              "first_attempt_ms", (json_int_t) first_ms,
                              "dead_lettered_ms", (json_int_t) now,
                              "event", ev);
        char *text = o != NULL ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(15) | JSON_PRESERVE_ORDER) : NULL;

        if (text != NULL)
            fprintf(mem, "%s\n", text);
        else
            rc = -ENOMEM;
        free(text);
        json_decref(o);
        json_decref(ev);
    }
    if (fclose(mem) != 0 && rc == 0)
        rc = -ENOMEM;
    if (rc < 0)
        goto out;

    /* The pipeline's dead-letter area gets each event too, tagged with the
     * subscriber, so `orderctl dead-letter replay` re-queues it for this
     * subscriber only (see wh_process_batch).  The file below stays as the
     * subscriber's own history of failed deliveries. */
    for (i = 0; i < n && rc == 0; i++)
        rc = wh_core_dead_letter(s, &recs[i], attempts, t);

    fd = open(s->dlq_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    if (write(fd, buf, len) != (ssize_t) len || fdatasync(fd) != 0)
        rc = errno != 0 ? -errno : -EIO;

out:
    if (fd >= 0)
        close(fd);
    free(buf);
    return rc;
}

void
wh_backlog_changed(struct wh_sub *s, int64_t delta)
{
    struct wh_plugin *wp = s->wp;

    wp->host->metric_set(wp->inst, s->metric_backlog, (double) s->q.pending);
    pthread_mutex_lock(&wp->mlock);
    wp->backlog += delta;
    wp->host->metric_set(wp->inst, "webhook_backlog", (double) wp->backlog);
    pthread_mutex_unlock(&wp->mlock);
}

/* Advance the durable offset past recs[0..n-1]. */
static int
wh_commit(struct wh_sub *s, const struct wh_rec *recs, int n)
{
    uint64_t before;
    int rc;

    pthread_mutex_lock(&s->lock);
    before = s->q.pending;
    rc = wh_queue_commit(&s->q, recs[n - 1].end, (size_t) n);
    if (rc == 0)
        wh_backlog_changed(s, (int64_t) s->q.pending - (int64_t) before);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* Sleep up to ms, or until stop().  RETURNS: 1 when stopping. */
static int
wh_wait(struct wh_sub *s, int64_t ms)
{
    struct timespec ts = deadline_after_ms(ms);
    int stop;

    pthread_mutex_lock(&s->lock);
    while (!(stop = atomic_load(&s->wp->stopping))) {
        if (pthread_cond_timedwait(&s->cond, &s->lock, &ts) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&s->lock);
    return stop;
}

/* Dead-letter recs[0..n-1] and move past them.  RETURNS: 0, or negative
 * errno after logging (the caller waits and tries again). */
static int
wh_give_up(struct wh_sub *s, const struct wh_rec *recs, int n, int64_t attempts,
           const struct wh_try *t, int64_t first_ms)
{
    struct wh_plugin *wp = s->wp;
    const orderd_host *h = wp->host;
    int rc = wh_dead_letter(s, recs, n, attempts, t, first_ms);

    if (rc == 0)
        rc = wh_commit(s, recs, n);
    if (rc != 0) {
        h->log(wp->inst, ORDERD_LOG_ERR, "subscriber %s: cannot dead-letter to %s: %s",
               s->name, s->dlq_path, strerror(-rc));
        return rc;
    }
    h->log(wp->inst, ORDERD_LOG_WARN,
           "subscriber %s: dead-lettered %d event(s) after %lld attempt(s): %s",
           s->name, n, (long long) attempts, t->error);
    h->metric_add(wp->inst, "webhook_deadlettered", n);
    return 0;
}

/*
 * The delivery loop.  Batches are whatever is queued, up to batch_max events
 * and max_request_size bytes, so a busy subscriber gets few large POSTs and
 * a quiet one gets each event at once.  Retry and dead-letter decisions stay
 * per event through a "window" over the head of the queue:
 *   - a batch that failed transiently is sent again exactly as it was (the
 *     window is those n events), so every event in it has been attempted
 *     `attempts` times when max_attempts dead-letters it, and events queued
 *     meanwhile do not join a failing request;
 *   - a batch of several events refused for good (400/401/403/413: one bad
 *     event, or too big) is split: the window is sent in halves, each half
 *     that fails is split again, so only an event refused on its own is
 *     dead-lettered and every other one is delivered once;
 *   - ttl is checked per event: only the expired head of a batch goes to
 *     the dead letters, the rest keeps its attempts.
 * The offset only moves past events answered 2xx or dead-lettered.
 */
static void *
wh_run(void *arg)
{
    struct wh_sub *s = arg;
    struct wh_plugin *wp = s->wp;
    const orderd_host *h = wp->host;
    struct wh_rec *recs;
    const char **evs = NULL;
    size_t *lens = NULL;
    struct wh_conn c;
    struct wh_try t;
    int64_t attempts = 0, first_ms = 0;
    int win_left = 0;       /* events still in the window; 0: no window */
    int win_max = 0;        /* events per POST inside the window */

    memset(&c, 0, sizeof(c));
    recs = calloc((size_t) s->batch_max, sizeof(*recs));
    evs = calloc((size_t) s->batch_max, sizeof(*evs));
    lens = calloc((size_t) s->batch_max, sizeof(*lens));
    if (recs == NULL || evs == NULL || lens == NULL || wh_conn_init(&c, s) != 0) {
        h->log(wp->inst, ORDERD_LOG_ERR, "subscriber %s: cannot start delivery: out of memory",
               s->name);
        goto out;
    }

    while (!atomic_load(&wp->stopping)) {
        const char *ctype;
        uint64_t end;
        size_t blen;
        char *body;
        int n, i, k, max;

        pthread_mutex_lock(&s->lock);
        while (!atomic_load(&wp->stopping) && s->q.done == s->q.end)
            pthread_cond_wait(&s->cond, &s->lock);
        end = s->q.end;
        pthread_mutex_unlock(&s->lock);
        if (atomic_load(&wp->stopping))
            break;

        max = win_left > 0 ? (win_max < win_left ? win_max : win_left) : s->batch_max;
        n = wh_queue_read(&s->q, end, recs, max, s->max_bytes);
        if (n <= 0) {
            h->log(wp->inst, ORDERD_LOG_ERR, "subscriber %s: cannot read queue %s: %s",
                   s->name, s->q.path, strerror(n < 0 ? -n : EIO));
            wh_wait(s, wp->retry_cap_ms);
            continue;
        }
        for (i = 0; i < n; i++) {
            evs[i] = recs[i].ev;
            lens[i] = recs[i].len;
        }
        body = wh_format_body(s->fmt, s->batch_max > 1, evs, lens, (size_t) n, &blen, &ctype);
        if (body == NULL) {
            wh_wait(s, wp->retry_base_ms);
            continue;
        }
        if (attempts == 0)
            first_ms = wh_now_ms();
        wh_post(&c, s, body, blen, ctype, &t);
        free(body);
        if (t.aborted)
            break;
        attempts++;

        if (t.status >= 200 && t.status <= 299) {
            if (wh_commit(s, recs, n) != 0) {
                /* Delivered but not recorded: it will be sent again, which
                 * receivers tolerate (they dedupe by event id). */
                h->log(wp->inst, ORDERD_LOG_ERR, "subscriber %s: cannot update %s",
                       s->name, s->q.offpath);
                wh_wait(s, wp->retry_base_ms);
                continue;
            }
            h->metric_add(wp->inst, "webhook_delivered", n);
            win_left = win_left > n ? win_left - n : 0;
            attempts = 0;
            continue;
        }

        h->metric_add(wp->inst, "webhook_failed_attempts", 1);
        if (wh_permanent(t.status) && n > 1) {
            /* Not these events' fault as a whole: find the one(s) refused. */
            h->log(wp->inst, ORDERD_LOG_DEBUG, "subscriber %s: batch of %d refused (%s); "
                   "splitting it", s->name, n, t.error);
            win_left = n;
            win_max = (n + 1) / 2;
            attempts = 0;
            continue;
        }
        if (wh_permanent(t.status) || attempts >= s->max_attempts) {
            if (wh_give_up(s, recs, n, attempts, &t, first_ms) != 0) {
                wh_wait(s, wp->retry_cap_ms);
                continue;
            }
            win_left = win_left > n ? win_left - n : 0;
            attempts = 0;
            continue;
        }
        for (k = 0; k < n && wh_now_ms() - recs[k].enq_ms >= s->ttl_ms; k++)
            ;
        if (k > 0) {
            if (wh_give_up(s, recs, k, attempts, &t, first_ms) != 0) {
                wh_wait(s, wp->retry_cap_ms);
                continue;
            }
            win_left = win_left > k ? win_left - k : 0;
            if (k == n) {
                attempts = 0;
                continue;
            }
            n -= k;   /* the rest is retried below, as it was */
        }

        /* Send the same events again, and nothing else, until they go. */
        win_left = n;
        win_max = n;
        h->log(wp->inst, ORDERD_LOG_DEBUG, "subscriber %s: attempt %lld failed: %s",
               s->name, (long long) attempts, t.error);
        wh_wait(s, c.retry_after_ms >= 0 ? c.retry_after_ms : wh_backoff(&c, wp, attempts - 1));
    }

out:
    wh_conn_free(&c);
    free(recs);
    free(evs);
    free(lens);
    return NULL;
}

int
wh_deliver_start(struct wh_sub *s)
{
    int rc = pthread_create(&s->thread, NULL, wh_run, s);

    if (rc != 0)
        return -rc;
    s->running = 1;
    return 0;
}

void
wh_deliver_stop(struct wh_sub *s)
{
    if (!s->running)
        return;
    pthread_mutex_lock(&s->lock);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    s->running = 0;
}
