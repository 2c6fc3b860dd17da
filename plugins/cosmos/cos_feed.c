/* cos_feed.c - the Cosmos DB change feed as an input.
 *
 * One thread reads the container's incremental change feed per partition key
 * range (GET .../pkranges, then GET .../docs with A-IM: Incremental feed and
 * x-ms-documentdb-partitionkeyrangeid), one page (x-ms-max-item-count) at a
 * time.  Each page's documents are submitted; the page's continuation (the
 * response etag, sent back as If-None-Match) is written to the checkpoint
 * file only after every document of the page was acked by the pipeline, so
 * a crash re-reads at most one page per range (at-least-once), never skips.
 * 304 means the range has nothing new.  410 (a range was split) re-reads the
 * ranges; a child range starts at its parent's continuation.
 *
 * With a pipeline spool the core never acks inputs, so this input is meant
 * for pipelines without one: the change feed itself is the durable source.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/deadline.h"
#include "../common/lowmark.h"
#include "cosmos.h"

struct cos_feed {
    orderd_inst        *inst;
    const orderd_host  *h;
    struct cos_client   cli;
    char               *db, *coll, *pk_path, *ckpt_path;
    int                 from_now;      /* start = "now" */
    long                poll_ms, max_items;

    json_t             *ranges;        /* range id -> continuation (string) or null */

    pthread_t           thread;
    int                 running;
    pthread_mutex_t     mu;
    pthread_cond_t      cond;
    int                 stopping;
    struct lowmark      page;           /* documents of the page in flight; reset per page,
                                           so late acks of an abandoned page do not count */
};

static void
cos_feed_wait(struct cos_feed *f, long ms)
{
    struct timespec ts = deadline_after_ms(ms);

    pthread_mutex_lock(&f->mu);
    if (!f->stopping)
        pthread_cond_timedwait(&f->cond, &f->mu, &ts);
    pthread_mutex_unlock(&f->mu);
}

static int
cos_feed_stopping(struct cos_feed *f)
{
    int s;

    pthread_mutex_lock(&f->mu);
    s = f->stopping;
    pthread_mutex_unlock(&f->mu);
    return s;
}

/* Write the checkpoint durably: temp file, fsync, rename, fsync the directory. */
static int
cos_ckpt_save(struct cos_feed *f)
{
    json_t *j = json_pack("{s:s s:s s:O}", "database", f->db, "container", f->coll,
                          "ranges", f->ranges);
    char tmp[4096], *dir = NULL, *text = NULL;
    int fd = -1, rc = 0;
    size_t len;

    text = j ? json_dumps(j, JSON_INDENT(1) | JSON_SORT_KEYS) : NULL;
    if (text == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    snprintf(tmp, sizeof(tmp), "%s.tmp", f->ckpt_path);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    len = strlen(text);
    if (fd < 0 || write(fd, text, len) != (ssize_t) len || fsync(fd) != 0) {
        rc = -errno;
        goto out;
    }
    close(fd);
    fd = -1;
    if (rename(tmp, f->ckpt_path) != 0) {
        rc = -errno;
        goto out;
    }
    dir = strdup(f->ckpt_path);
    if (dir != NULL && (fd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0)
        fsync(fd);
out:
    if (rc < 0)
        f->h->log(f->inst, ORDERD_LOG_ERR, "cosmos: cannot write checkpoint %s: %s", f->ckpt_path,
                  strerror(-rc));
    if (fd >= 0)
        close(fd);
    free(dir);
    free(text);
    json_decref(j);
    return rc;
}

static int
cos_ckpt_load(struct cos_feed *f)
{
    json_error_t err;
    json_t *j, *r;

    if (access(f->ckpt_path, F_OK) != 0)
        return 0;
    j = json_load_file(f->ckpt_path, 0, &err);
    r = json_object_get(j, "ranges");
    if (!json_is_object(r)) {
        f->h->log(f->inst, ORDERD_LOG_ERR, "cosmos: checkpoint %s is unreadable: %s", f->ckpt_path,
                  j ? "no \"ranges\" object" : err.text);
        json_decref(j);
        return -EINVAL;
    }
    json_object_update(f->ranges, r);
    json_decref(j);
    return 0;
}

/* (Re)read the partition key ranges; new ranges inherit a parent's continuation. */
static int
cos_feed_ranges(struct cos_feed *f)
{
    struct cos_req rq = { .verb = "GET" };
    struct cos_resp resp;
    json_t *j = NULL, *list, *fresh = NULL, *r;
    char path[1024], msg[512];
    size_t i;
    int rc = -EIO;

    snprintf(path, sizeof(path), "dbs/%s/colls/%s/pkranges", f->db, f->coll);
    rq.path = path;
    if (cos_request(&f->cli, &rq, &resp) < 0) {
        f->h->log(f->inst, ORDERD_LOG_WARN, "cosmos: reading partition key ranges: %s", resp.err);
        cos_resp_free(&resp);
        return -EIO;
    }
    if (resp.charge > 0)
        f->h->metric_add(f->inst, "cosmos_request_units", resp.charge);
    if (resp.status != 200) {
        f->h->log(f->inst, ORDERD_LOG_WARN, "cosmos: reading partition key ranges: %s",
                  cos_resp_message(&resp, msg, sizeof(msg)));
        goto out;
    }
    j = json_loads(resp.body, 0, NULL);
    list = json_object_get(j, "PartitionKeyRanges");
    fresh = json_object();
    if (!json_is_array(list) || json_array_size(list) == 0 || fresh == NULL) {
        f->h->log(f->inst, ORDERD_LOG_WARN, "cosmos: no PartitionKeyRanges in the answer");
        goto out;
    }
    json_array_foreach(list, i, r) {
        json_t *jid = json_object_get(r, "id");
        json_t *cont, *parents = json_object_get(r, "Parents"), *p;
        const char *id = json_string_value(jid);
        char num[32];
        size_t k;

        /* the service writes ids as strings; accept a number too (the test server does) */
        if (id == NULL && json_is_integer(jid)) {
            snprintf(num, sizeof(num), "%lld", (long long) json_integer_value(jid));
            id = num;
        }
        if (id == NULL)
            continue;
        cont = json_object_get(f->ranges, id);
        /* a split child: continue where the (last known) parent was */
        json_array_foreach(parents, k, p)
            if (cont == NULL && json_is_string(p))
                cont = json_object_get(f->ranges, json_string_value(p));
        json_object_set(fresh, id, cont ? cont : json_null());
    }
    json_object_clear(f->ranges);
    json_object_update(f->ranges, fresh);
    rc = 0;
out:
    json_decref(fresh);
    json_decref(j);
    cos_resp_free(&resp);
    return rc;
}

/* Submit one page and wait until all of it is acked.  RETURNS 0 when all
 * were acked, -ESHUTDOWN when stopping, other negative errno on failure. */
static int
cos_feed_submit_page(struct cos_feed *f, json_t *docs, const char *range)
{
    const orderd_host *h = f->h;
    json_t *d;
    size_t i;
    int rc = 0;

    pthread_mutex_lock(&f->mu);
    lowmark_reset(&f->page, (struct lowmark_pos) { .off = 0 });
    pthread_mutex_unlock(&f->mu);
    json_array_foreach(docs, i, d) {
        const char *id = json_string_value(json_object_get(d, "id"));
        json_t *etag = json_object_get(d, "_etag"), *ts = json_object_get(d, "_ts"), *body;
        char *pkhdr = NULL, *pk = NULL, num[32];
        uint64_t ticket;
        orderd_msg *m;

        if (!json_is_object(d))
            continue;
        body = json_copy(d);
        if (body == NULL) {
            rc = -ENOMEM;
            break;
        }
        cos_pk_header(d, f->pk_path, &pkhdr, &pk);
        m = h->msg_new(f->inst, body);
        if (m == NULL) {
            free(pkhdr);
            free(pk);
            rc = -ENOMEM;
            break;
        }
        if (id != NULL)
            h->msg_set_id(m, id);
        if (pk != NULL)
            h->msg_set_partition_key(m, pk);
        if (json_is_string(etag))
            h->msg_set_prop(m, "cosmos_etag", json_string_value(etag));
        if (json_is_integer(ts)) {
            snprintf(num, sizeof(num), "%lld", (long long) json_integer_value(ts));
            h->msg_set_prop(m, "cosmos_ts", num);
            h->msg_set_enqueued_ms(m, (int64_t) json_integer_value(ts) * 1000);
        }
        h->msg_set_prop(m, "cosmos_range", range);
        /* system properties stay out of the body (and out of what is published) */
        json_object_del(body, "_rid");
        json_object_del(body, "_self");
        json_object_del(body, "_etag");
        json_object_del(body, "_attachments");
        json_object_del(body, "_ts");
        json_object_del(body, "_lsn");
        free(pkhdr);
        free(pk);
        /* Before submit: the ack may come before submit returns.  The
         * checkpoint is per page, so only whether all of the page is acked
         * matters, not where the mark is (here: documents up to this one). */
        pthread_mutex_lock(&f->mu);
        rc = lowmark_add(&f->page, (struct lowmark_pos) { .off = i + 1 }, &ticket);
        pthread_mutex_unlock(&f->mu);
        if (rc < 0) {
            h->msg_free(m);
            break;
        }
        h->msg_set_input_data(m, NULL, ticket);
        rc = h->submit(f->inst, m, 0);
        if (rc < 0) {
            pthread_mutex_lock(&f->mu);
            lowmark_cancel(&f->page, ticket);
            pthread_mutex_unlock(&f->mu);
            break;
        }
    }
    pthread_mutex_lock(&f->mu);
    while (rc == 0 && lowmark_pending(&f->page) > 0 && !f->stopping)
        pthread_cond_wait(&f->cond, &f->mu);
    if (rc == 0 && lowmark_pending(&f->page) > 0)
        rc = -ESHUTDOWN;
    pthread_mutex_unlock(&f->mu);
    return rc;
}

/* Drain one range: pages until 304 or a short page.
 * RETURNS 1 something was read, 0 nothing new, -EAGAIN back off, -ESTALE re-read ranges. */
static int
cos_feed_range(struct cos_feed *f, const char *range, long *backoff_ms)
{
    char path[1024], h_range[128], h_inm[1100], h_max[64], msg[512];
    const char *hdrs[5];
    struct cos_req rq = { .verb = "GET", .path = path, .headers = hdrs };
    int got = 0;

    snprintf(path, sizeof(path), "dbs/%s/colls/%s/docs", f->db, f->coll);
    snprintf(h_range, sizeof(h_range), "x-ms-documentdb-partitionkeyrangeid: %s", range);
    snprintf(h_max, sizeof(h_max), "x-ms-max-item-count: %ld", f->max_items);
    while (!cos_feed_stopping(f)) {
        const char *cont = json_string_value(json_object_get(f->ranges, range));
        struct cos_resp resp;
        json_t *j, *docs;
        size_t k = 0, n;
        int rc;

        hdrs[k++] = "A-IM: Incremental feed";
        hdrs[k++] = h_range;
        hdrs[k++] = h_max;
        if (cont != NULL || f->from_now) {
            snprintf(h_inm, sizeof(h_inm), "If-None-Match: %s", cont ? cont : "*");
            hdrs[k++] = h_inm;
        }
        hdrs[k] = NULL;
        if (cos_request(&f->cli, &rq, &resp) < 0 || resp.status == 0) {
            f->h->log(f->inst, ORDERD_LOG_WARN, "cosmos: change feed of range %s: %s", range, resp.err);
            cos_resp_free(&resp);
            return -EAGAIN;
        }
        if (resp.charge > 0)
            f->h->metric_add(f->inst, "cosmos_request_units", resp.charge);
        if (resp.status == 304) {
            /* start = now: remember where "now" was so a restart starts there */
            if (cont == NULL && resp.etag[0] != '\0') {
                json_object_set_new(f->ranges, range, json_string(resp.etag));
                cos_ckpt_save(f);
            }
            cos_resp_free(&resp);
            return got;
        }
        if (resp.status == 410) {
            cos_resp_free(&resp);
            return -ESTALE;
        }
        if (resp.status != 200) {
            if (resp.status == 429 && resp.retry_after_ms > 0)
                *backoff_ms = resp.retry_after_ms;
            f->h->log(f->inst, resp.status == 429 ? ORDERD_LOG_DEBUG : ORDERD_LOG_WARN,
                      "cosmos: change feed of range %s: %s", range,
                      cos_resp_message(&resp, msg, sizeof(msg)));
            cos_resp_free(&resp);
            return -EAGAIN;
        }
        j = json_loads(resp.body, 0, NULL);
        docs = json_object_get(j, "Documents");
        if (!json_is_array(docs) || resp.etag[0] == '\0') {
            f->h->log(f->inst, ORDERD_LOG_WARN, "cosmos: change feed of range %s: answer without %s",
                      range, json_is_array(docs) ? "an etag" : "Documents");
            json_decref(j);
            cos_resp_free(&resp);
            return -EAGAIN;
        }
        n = json_array_size(docs);
        rc = cos_feed_submit_page(f, docs, range);
        json_decref(j);
        if (rc < 0) {
            if (rc != -ESHUTDOWN)
                f->h->log(f->inst, ORDERD_LOG_WARN, "cosmos: submit failed: %s (page re-read later)",
                          strerror(-rc));
            cos_resp_free(&resp);
            return rc == -ESHUTDOWN ? 0 : -EAGAIN;
        }
        /* the whole page is done: only now may the feed move past it */
        json_object_set_new(f->ranges, range, json_string(resp.etag));
        if (cos_ckpt_save(f) < 0) {
            cos_resp_free(&resp);
            return -EAGAIN;
        }
        f->h->metric_add(f->inst, "cosmos_feed_documents", (double) n);
        cos_resp_free(&resp);
        got = 1;
        if (n == 0 || (long) n < f->max_items)
            return got;
    }
    return got;
}

static void *
cos_feed_main(void *arg)
{
    struct cos_feed *f = arg;
    long backoff = 0;
    int need_ranges = 1;

    while (!cos_feed_stopping(f)) {
        const char *range;
        json_t *v, *ids;
        size_t i;
        long wait = f->poll_ms;

        if (need_ranges) {
            if (cos_feed_ranges(f) < 0) {
                backoff = backoff ? (backoff * 2 > 30000 ? 30000 : backoff * 2) : 500;
                cos_feed_wait(f, backoff);
                continue;
            }
            need_ranges = 0;
        }
        /* a snapshot of the range ids: the map is replaced on a split */
        ids = json_array();
        json_object_foreach(f->ranges, range, v)
            json_array_append_new(ids, json_string(range));
        (void) v;
        for (i = 0; i < json_array_size(ids) && !cos_feed_stopping(f); i++) {
            long ra = 0;
            int rc = cos_feed_range(f, json_string_value(json_array_get(ids, i)), &ra);

            if (rc == -ESTALE) {
                need_ranges = 1;
                wait = 0;
                break;
            }
            if (rc == -EAGAIN) {
                backoff = ra > 0 ? ra : (backoff ? (backoff * 2 > 30000 ? 30000 : backoff * 2) : 500);
                wait = backoff;
            } else {
                backoff = 0;
            }
        }
        json_decref(ids);
        if (wait > 0)
            cos_feed_wait(f, wait);
    }
    return NULL;
}

static void
cos_feed_ack(void *state, orderd_msg *m, orderd_outcome outcome, const char *reason)
{
    struct cos_feed *f = state;
    uint64_t ticket = 0;

    f->h->msg_input_data(m, &ticket);
    /* without SF_REDELIVERS the core already retried or dead-lettered: every ack is final */
    if (outcome != ORDERD_OK)
        f->h->log(f->inst, ORDERD_LOG_DEBUG, "cosmos: document acked with outcome %d (%s)",
                  (int) outcome, reason ? reason : "");
    pthread_mutex_lock(&f->mu);
    lowmark_ack(&f->page, ticket);
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->mu);
}

static int
cos_feed_start(void *state)
{
    struct cos_feed *f = state;
    int rc = pthread_create(&f->thread, NULL, cos_feed_main, f);

    if (rc != 0) {
        f->h->log(f->inst, ORDERD_LOG_ERR, "cosmos: cannot start the feed thread: %s", strerror(rc));
        return -rc;
    }
    f->running = 1;
    return 0;
}

static void
cos_feed_stop(void *state)
{
    struct cos_feed *f = state;

    pthread_mutex_lock(&f->mu);
    f->stopping = 1;
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->mu);
    if (f->running) {
        pthread_join(f->thread, NULL);
        f->running = 0;
    }
}

static void cos_feed_destroy(void *state);

static int
cos_feed_create(orderd_inst *inst, const orderd_host *host, const json_t *conf, void **state)
{
    struct cos_feed *f = calloc(1, sizeof(*f));
    const char *ck = json_string_value(json_object_get(conf, "checkpoint"));
    pthread_condattr_t ca;
    int rc;

    if (f == NULL)
        return -ENOMEM;
    f->inst = inst;
    f->h = host;
    pthread_mutex_init(&f->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&f->cond, &ca);
    pthread_condattr_destroy(&ca);
    f->ranges = json_object();
    f->db = strdup(json_string_value(json_object_get(conf, "database")));
    f->coll = strdup(json_string_value(json_object_get(conf, "container")));
    f->pk_path = strdup(json_string_value(json_object_get(conf, "partition_key")));
    f->from_now = strcmp(json_string_value(json_object_get(conf, "start")), "now") == 0;
    f->poll_ms = (long) json_integer_value(json_object_get(conf, "poll_interval"));
    f->max_items = (long) json_integer_value(json_object_get(conf, "max_items"));
    if (ck != NULL) {
        f->ckpt_path = strdup(ck);
    } else {
        size_t n = strlen(host->state_dir()) + strlen(host->pipeline_name(inst)) +
                   strlen(host->stage_name(inst)) + 32;

        f->ckpt_path = malloc(n);
        if (f->ckpt_path != NULL)
            snprintf(f->ckpt_path, n, "%s/cosmos-feed-%s-%s.json", host->state_dir(),
                     host->pipeline_name(inst), host->stage_name(inst));
    }
    if (f->ranges == NULL || f->db == NULL || f->coll == NULL || f->pk_path == NULL ||
        f->ckpt_path == NULL) {
        host->log(inst, ORDERD_LOG_ERR, "cosmos: out of memory");
        rc = -ENOMEM;
        goto fail;
    }
    if (f->max_items < 1 || f->max_items > 10000 || f->poll_ms < 1) {
        host->log(inst, ORDERD_LOG_ERR, "cosmos: max_items must be 1-10000 and poll_interval > 0");
        rc = -EINVAL;
        goto fail;
    }
    rc = cos_ckpt_load(f);
    if (rc < 0)
        goto fail;
    rc = cos_client_from_conf(&f->cli, inst, host, conf);
    if (rc < 0)
        goto fail;
    *state = f;
    return 0;
fail:
    cos_feed_destroy(f);
    return rc;
}

static void
cos_feed_destroy(void *state)
{
    struct cos_feed *f = state;

    if (f == NULL)
        return;
    cos_client_fini(&f->cli);
    json_decref(f->ranges);
    lowmark_free(&f->page);
    pthread_cond_destroy(&f->cond);
    pthread_mutex_destroy(&f->mu);
    free(f->db);
    free(f->coll);
    free(f->pk_path);
    free(f->ckpt_path);
    free(f);
}

const orderd_stage cos_feed_stage = ORDERD_STAGE(
    .kind = ORDERD_INPUT,
    .description = "read an Azure Cosmos DB container's change feed (checkpointed after completion)",
    .options = cos_feed_options,
    .create = cos_feed_create,
    .start = cos_feed_start,
    .stop = cos_feed_stop,
    .ack = cos_feed_ack,
    .destroy = cos_feed_destroy);
