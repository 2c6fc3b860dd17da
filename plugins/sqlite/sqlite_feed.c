/* sqlite_feed.c - the feed input: the events table as a change feed.
 *
 * A thread reads events in seq order after the consumer's cursor and submits
 * each one (id = event id, body = event body, properties type / order_id /
 * version, partition key = order id).  Acks come back out of order from many
 * workers, so the in-flight seqs are kept in a low-water mark
 * (../common/lowmark.h) and the cursor only moves over a prefix that is
 * wholly acked: a restart re-sends what was not yet acked (at-least-once)
 * and never skips anything.  The cursor is written
 * at most every commit_interval and on stop, in the `cursors` table of the
 * same file.  Backpressure is submit() blocking while the pipeline is full.
 *
 * seq order is commit order: SQLite has one writer at a time and seq is
 * assigned inside the writing transaction, so a reader never sees seq N+1
 * before seq N becomes visible.
 *
 * A store of the same process writing the same file hands the events it
 * commits to the file's tail (sqlite_tail.c): while the feed's position is
 * inside it, the feed takes them from there, without the query and without
 * checking their text again (the store had it from msg_body_text()), and a
 * commit wakes the feed at once instead of at the next poll.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/deadline.h"
#include "../common/jsondec.h"
#include "../common/lowmark.h"
#include "sq.h"

struct sqf_row {
    int64_t          seq;
    const char      *id;
    const char      *stream;
    const char      *type;
    const char      *version;   /* decimal text, or NULL */
    const char      *raw;       /* body text */
    size_t           raw_len;
    struct sq_event *ev;        /* from the tail: the fields point into it */
};

struct sqf {
    orderd_inst         *inst;
    const orderd_host   *h;
    char                *path;
    char                *consumer;
    int64_t              poll_ms;
    int64_t              commit_ms;
    int                  batch;
    struct sq_open_opts  oo;

    /* used by the feed thread only, or after it has been joined */
    sqlite3             *db;
    sqlite3_stmt        *sel;
    sqlite3_stmt        *put_cursor;
    int64_t              next;          /* last seq submitted */
    int64_t              committed;     /* cursor as last written */
    int64_t              commit_at;     /* monotonic ms of the next due write */
    int                  failing;       /* submit failing: log once per streak */
    struct sqf_row      *rows;
    struct sq_tail      *tail;          /* the store's latest events, or NULL */
    struct sq_event    **evs;           /* batch of them */
    uint64_t             tail_gen;      /* tail's generation at the last fetch */

    pthread_t            thread;
    int                  started;

    pthread_mutex_t      lock;          /* everything below */
    pthread_cond_t       cond;
    int                  stopping;
    struct lowmark       inflight;      /* mark.off: every seq up to it is acked */
};

static const orderd_option sqf_options[] = {
    { .key = "path", .type = ORDERD_T_PATH, .flags = ORDERD_OPT_STATE, .def = "orders.db",
      .help = "SQLite database file written by the sqlite store (relative: in the state directory)" },
    { .key = "consumer", .type = ORDERD_T_STRING,
      .help = "name under which this feed's position is saved (default: the pipeline's name)" },
    { .key = "start", .type = ORDERD_T_STRING, .def = "beginning", .choices = "beginning|end",
      .help = "where a consumer without a saved position starts: the first event or after the last" },
    { .key = "poll_interval", .type = ORDERD_T_DURATION, .def = "100ms",
      .help = "how often to look for new events once the feed has caught up" },
    { .key = "batch", .type = ORDERD_T_INT, .def = "256",
      .help = "events read per query (1-100000)" },
    { .key = "commit_interval", .type = ORDERD_T_DURATION, .def = "1s",
      .help = "how often the acknowledged position is saved (also saved on stop)" },
    { .key = "busy_timeout", .type = ORDERD_T_DURATION, .def = "5s",
      .help = "how long to wait for a lock held by another connection" },
    { .key = NULL }
};

static void sqf_destroy(void *state);

static char *
sqf_col_dup(sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);

    return t ? strdup((const char *) t) : NULL;
}

/* The cursor as a position in the in-flight window (seqs are never negative). */
static struct lowmark_pos
sqf_pos(int64_t seq)
{
    return (struct lowmark_pos) { .off = (uint64_t) seq };
}

/* ---- cursor ---- */

static int
sqf_cursor_write(struct sqf *f, int64_t seq)
{
    sqlite3_stmt *st = f->put_cursor;
    int           rc;

    sqlite3_bind_text(st, 1, f->consumer, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, seq);
    sqlite3_bind_int64(st, 3, sq_now_ms());
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_DONE) {
        f->h->log(f->inst, ORDERD_LOG_WARN, "sqlite: %s: cannot save position of consumer '%s': %s",
                  f->path, f->consumer, sqlite3_errmsg(f->db));
        return sq_errno(rc) ? sq_errno(rc) : -EIO;
    }
    f->committed = seq;
    return 0;
}

/* Save the acked position when it moved and (unless force) the interval passed. */
static void
sqf_commit(struct sqf *f, int force)
{
    int64_t acked, now = mono_ms();

    if (!force && now < f->commit_at)
        return;
    pthread_mutex_lock(&f->lock);
    acked = (int64_t) lowmark_mark(&f->inflight).off;
    pthread_mutex_unlock(&f->lock);
    if (acked != f->committed)
        sqf_cursor_write(f, acked);
    f->commit_at = now + f->commit_ms;
}

static int
sqf_cursor_load(struct sqf *f, int start_end)
{
    sqlite3_stmt *st = NULL;
    int64_t       seq = 0;
    int           rc, found = 0, ret;

    ret = sq_prepare(f->inst, f->h, f->db, "SELECT seq FROM cursors WHERE consumer = ?1", &st);
    if (ret < 0)
        return ret;
    sqlite3_bind_text(st, 1, f->consumer, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        seq = sqlite3_column_int64(st, 0);
        found = 1;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        goto sqlfail;

    if (!found) {
        if (start_end) {
            ret = sq_prepare(f->inst, f->h, f->db, "SELECT COALESCE(MAX(seq), 0) FROM events", &st);
            if (ret < 0)
                return ret;
            rc = sqlite3_step(st);
            if (rc == SQLITE_ROW)
                seq = sqlite3_column_int64(st, 0);
            sqlite3_finalize(st);
            if (rc != SQLITE_ROW)
                goto sqlfail;
        }
        /* saved now, so a restart before the first ack keeps this "end" */
        ret = sqf_cursor_write(f, seq);
        if (ret < 0)
            return ret;
        f->h->log(f->inst, ORDERD_LOG_INFO, "sqlite: new feed consumer '%s' starts after seq %lld",
                  f->consumer, (long long) seq);
    }
    f->committed = f->next = seq;
    lowmark_reset(&f->inflight, sqf_pos(seq));
    return 0;

sqlfail:
    f->h->log(f->inst, ORDERD_LOG_ERR, "sqlite: %s: cannot read position of consumer '%s': %s",
              f->path, f->consumer, sqlite3_errmsg(f->db));
    return sq_errno(rc) ? sq_errno(rc) : -EIO;
}

/* ---- the feed thread ---- */

static void
sqf_row_clear(struct sqf_row *r)
{
    if (r->ev != NULL) {
        sq_event_unref(r->ev);
    } else {
        free((char *) r->id);
        free((char *) r->stream);
        free((char *) r->type);
        free((char *) r->version);
        free((char *) r->raw);
    }
    memset(r, 0, sizeof(*r));
}

/* Rows from the tail, when it holds the next seq.  RETURNS: rows taken. */
static int
sqf_fetch_tail(struct sqf *f)
{
    size_t i, n;

    if (f->tail == NULL)
        return 0;
    n = sq_tail_take(f->tail, f->next, f->evs, (size_t) f->batch, &f->tail_gen);
    if (n > 0)
        f->h->metric_add(f->inst, "sqlite_feed_from_memory", (double) n);
    for (i = 0; i < n; i++) {
        struct sq_event *ev = f->evs[i];

        f->rows[i] = (struct sqf_row) { .seq = ev->seq, .id = ev->id, .stream = ev->stream,
                                        .type = ev->type, .version = ev->version,
                                        .raw = ev->body, .raw_len = ev->body_len, .ev = ev };
    }
    return (int) n;
}

/* Read up to batch rows after f->next into f->rows, ending the read
 * transaction before anything is submitted (a long-open reader would keep
 * the WAL from being checkpointed).  RETURNS: rows read, or negative errno. */
static int
sqf_fetch(struct sqf *f)
{
    sqlite3_stmt *st = f->sel;
    int           rc, n, ret = 0;

    if ((n = sqf_fetch_tail(f)) > 0)
        return n;
    sqlite3_bind_int64(st, 1, f->next);
    sqlite3_bind_int(st, 2, f->batch);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct sqf_row *r = &f->rows[n];

        r->seq = sqlite3_column_int64(st, 0);
        r->id = sqf_col_dup(st, 1);
        r->stream = sqf_col_dup(st, 2);
        r->version = sqlite3_column_type(st, 3) == SQLITE_NULL ? NULL : sqf_col_dup(st, 3);
        r->type = sqf_col_dup(st, 4);
        r->raw = sqf_col_dup(st, 5);
        r->raw_len = r->raw != NULL ? strlen(r->raw) : 0;
        n++;
        if (r->id == NULL || r->stream == NULL || r->raw == NULL) {
            ret = -ENOMEM;
            break;
        }
    }
    if (ret == 0 && rc != SQLITE_DONE) {
        f->h->log(f->inst, ORDERD_LOG_WARN, "sqlite: %s: reading events: %s", f->path,
                  sqlite3_errmsg(f->db));
        ret = sq_errno(rc) ? sq_errno(rc) : -EIO;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (ret < 0) {
        while (n > 0)
            sqf_row_clear(&f->rows[--n]);
        return ret;
    }
    if (n > 0)
        f->h->metric_add(f->inst, "sqlite_feed_read", n);
    return n;
}

/* Hand one event to the pipeline.  RETURNS: 0, or negative errno when it
 * must be offered again later. */
static int
sqf_submit_row(struct sqf *f, struct sqf_row *r)
{
    const orderd_host *h = f->h;
    json_error_t       jerr;
    json_t            *body;
    orderd_msg        *m;
    uint64_t           ticket;
    int                ret, bad = 0;

    if (ORDERD_HOST_HAS(h, msg_set_body_text)) {
        /* the stored text goes on as it is: a publisher that writes it out
         * (file, webhook) never needs a tree; the tail's text is the
         * store's msg_body_text(), JSON already, and is not checked again */
        m = h->msg_new(f->inst, NULL);
        if (m == NULL)
            return -ENOMEM;
        if (r->ev != NULL && ORDERD_HOST_HAS(h, msg_set_body_json))
            ret = h->msg_set_body_json(m, r->raw, r->raw_len);
        else
            ret = h->msg_set_body_text(m, r->raw, r->raw_len);
        if (ret == -EINVAL) {
            bad = 1;
            h->msg_set_body(m, json_string(r->raw));
        } else if (ret < 0) {
            h->msg_free(m);
            return ret;
        }
    } else {
        body = jdec_loadb(r->raw, r->raw_len, &jerr);
        if (body == NULL) {
            /* cannot happen through the store; a hand-edited row goes to the dead letters */
            bad = 1;
            body = json_string(r->raw);
        }
        m = h->msg_new(f->inst, body);
        if (m == NULL)
            return -ENOMEM;
    }
    if (h->msg_set_id(m, r->id) < 0
        || h->msg_set_prop(m, "order_id", r->stream) < 0
        || (r->type && h->msg_set_prop(m, "type", r->type) < 0)
        || (r->version && h->msg_set_prop(m, "version", r->version) < 0)
        || h->msg_set_partition_key(m, r->stream) < 0) {
        h->msg_free(m);
        return -ENOMEM;
    }

    if (bad) {
        ret = h->dead_letter(f->inst, m, "sqlite: stored event body is not JSON");
        if (ret == 0) {
            /* done at once; the cursor passes it once everything before it is acked */
            pthread_mutex_lock(&f->lock);
            lowmark_pass(&f->inflight, sqf_pos(r->seq));
            pthread_mutex_unlock(&f->lock);
        }
        return ret;
    }

    /* in flight before submit: the ack may arrive before submit() returns */
    pthread_mutex_lock(&f->lock);
    ret = lowmark_add(&f->inflight, sqf_pos(r->seq), &ticket);
    pthread_mutex_unlock(&f->lock);
    if (ret < 0) {
        h->msg_free(m);
        return ret;
    }
    h->msg_set_input_data(m, NULL, ticket);

    ret = h->submit(f->inst, m, 0);
    if (ret < 0) {
        /* never entered the pipeline: no ack will come */
        pthread_mutex_lock(&f->lock);
        lowmark_cancel(&f->inflight, ticket);
        pthread_mutex_unlock(&f->lock);
    }
    return ret;
}

static void
sqf_wait(struct sqf *f, int64_t ms)
{
    struct timespec ts = deadline_after_ms(ms);

    pthread_mutex_lock(&f->lock);
    if (!f->stopping)
        pthread_cond_timedwait(&f->cond, &f->lock, &ts);
    pthread_mutex_unlock(&f->lock);
}

static int
sqf_stopping(struct sqf *f)
{
    int s;

    pthread_mutex_lock(&f->lock);
    s = f->stopping;
    pthread_mutex_unlock(&f->lock);
    return s;
}

static void *
sqf_run(void *arg)
{
    struct sqf *f = arg;
    int64_t     idle_ms;
    int         i, n, ret, failed;

    while (!sqf_stopping(f)) {
        failed = 0;
        n = sqf_fetch(f);
        if (n < 0)
            failed = 1;
        for (i = 0; i < n; i++) {
            if (!failed && !sqf_stopping(f)) {
                ret = sqf_submit_row(f, &f->rows[i]);
                if (ret == 0) {
                    f->next = f->rows[i].seq;
                    if (f->failing)
                        f->h->log(f->inst, ORDERD_LOG_INFO, "sqlite: feed submitting again");
                    f->failing = 0;
                } else {
                    if (ret != -ESHUTDOWN && !f->failing)
                        f->h->log(f->inst, ORDERD_LOG_WARN,
                                  "sqlite: cannot submit event %s (seq %lld): %s;"
                                  " retrying every poll_interval",
                                  f->rows[i].id, (long long) f->rows[i].seq, strerror(-ret));
                    f->failing = 1;
                    failed = 1;
                }
            }
            sqf_row_clear(&f->rows[i]);
        }
        sqf_commit(f, 0);
        if (failed || n < f->batch) {
            /* caught up (or backing off): sleep, but wake for a due commit */
            idle_ms = f->commit_at - mono_ms();
            if (idle_ms > f->poll_ms || idle_ms < 1)
                idle_ms = f->poll_ms;
            if (f->tail != NULL && !failed)
                sq_tail_wait(f->tail, f->tail_gen, idle_ms);    /* or the next commit */
            else
                sqf_wait(f, idle_ms);
        }
    }
    return NULL;
}

/* ---- stage callbacks ---- */

static int
sqf_start(void *state)
{
    struct sqf *f = state;
    int         ret;

    if (f->started)
        return 0;
    pthread_mutex_lock(&f->lock);
    f->stopping = 0;
    pthread_mutex_unlock(&f->lock);
    f->commit_at = mono_ms() + f->commit_ms;
    sq_tail_feed(f->tail, 1);
    ret = pthread_create(&f->thread, NULL, sqf_run, f);
    if (ret != 0) {
        f->h->log(f->inst, ORDERD_LOG_ERR, "sqlite: cannot start the feed thread: %s", strerror(ret));
        sq_tail_feed(f->tail, -1);
        return -ret;
    }
    f->started = 1;
    return 0;
}

static void
sqf_stop(void *state)
{
    struct sqf *f = state;

    if (!f->started)
        return;
    pthread_mutex_lock(&f->lock);
    f->stopping = 1;
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
    if (f->tail != NULL)
        sq_tail_wake(f->tail);
    pthread_join(f->thread, NULL);
    f->started = 0;
    sq_tail_feed(f->tail, -1);
    sqf_commit(f, 1);
}

static void
sqf_ack(void *state, orderd_msg *m, orderd_outcome outcome, const char *reason)
{
    struct sqf *f = state;
    uint64_t    ticket = 0;
    int         ret;

    f->h->msg_input_data(m, &ticket);
    /* without SF_REDELIVERS the core settled RETRY/REJECT itself: every ack is final */
    if (outcome != ORDERD_OK)
        f->h->log(f->inst, ORDERD_LOG_DEBUG, "sqlite: event %s acked with outcome %d (%s)",
                  f->h->msg_id(m), (int) outcome, reason ? reason : "");
    pthread_mutex_lock(&f->lock);
    ret = lowmark_ack(&f->inflight, ticket);
    pthread_mutex_unlock(&f->lock);
    if (ret < 0)
        f->h->log(f->inst, ORDERD_LOG_WARN, "sqlite: ack for event %s which is not in flight",
                  f->h->msg_id(m));
}

static int
sqf_create(orderd_inst *inst, const orderd_host *h, const json_t *conf, void **state)
{
    struct sqf         *f;
    pthread_condattr_t  ca;
    const char         *consumer = json_string_value(json_object_get(conf, "consumer"));
    const char         *start = json_string_value(json_object_get(conf, "start"));
    const char         *path = json_string_value(json_object_get(conf, "path"));
    json_int_t          batch = json_integer_value(json_object_get(conf, "batch"));
    int                 ret;

    if (batch < 1 || batch > 100000) {
        h->log(inst, ORDERD_LOG_ERR, "sqlite: batch must be 1-100000, not %lld", (long long) batch);
        return -EINVAL;
    }
    if (consumer == NULL || consumer[0] == '\0')
        consumer = h->pipeline_name(inst);
    f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -ENOMEM;
    f->inst = inst;
    f->h = h;
    f->batch = (int) batch;
    f->poll_ms = json_integer_value(json_object_get(conf, "poll_interval"));
    f->commit_ms = json_integer_value(json_object_get(conf, "commit_interval"));
    if (f->poll_ms < 1)
        f->poll_ms = 1;
    pthread_mutex_init(&f->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&f->cond, &ca);
    pthread_condattr_destroy(&ca);

    f->path = strdup(path ? path : "orders.db");
    f->consumer = strdup(consumer ? consumer : "feed");
    f->rows = calloc((size_t) batch, sizeof(*f->rows));
    f->evs = calloc((size_t) batch, sizeof(*f->evs));
    if (f->path == NULL || f->consumer == NULL || f->rows == NULL || f->evs == NULL) {
        ret = -ENOMEM;
        goto fail;
    }
    f->oo.path = f->path;
    f->oo.busy_timeout_ms = json_integer_value(json_object_get(conf, "busy_timeout"));
    /* losing the last cursor write only re-sends events, which is allowed */
    f->oo.synchronous_full = 0;
    f->oo.journal_size_limit = -1;
    /* The writer of the events checkpoints (the store's checkpoint_size);
     * a cursor write must not copy its whole log at SQLite's 4MB default. */
    f->oo.checkpoint_bytes = -1;
    ret = sq_open(inst, h, &f->oo, &f->db);
    if (ret < 0)
        goto fail;
    if ((ret = sq_prepare(inst, h, f->db,
            "SELECT seq, id, stream, version, type, body FROM events"
            " WHERE seq > ?1 ORDER BY seq LIMIT ?2", &f->sel)) < 0
        || (ret = sq_prepare(inst, h, f->db,
            "INSERT OR REPLACE INTO cursors(consumer, seq, updated_ms) VALUES(?1, ?2, ?3)",
            &f->put_cursor)) < 0)
        goto fail;
    ret = sqf_cursor_load(f, start != NULL && strcmp(start, "end") == 0);
    if (ret < 0)
        goto fail;
    f->tail = sq_tail_open(f->path);
    *state = f;
    return 0;

fail:
    sqf_destroy(f);
    return ret;
}

static void
sqf_destroy(void *state)
{
    struct sqf *f = state;

    if (f == NULL)
        return;
    sqf_stop(f);
    /* acks that arrived after stop() still count */
    if (f->put_cursor != NULL)
        sqf_commit(f, 1);
    sqlite3_finalize(f->sel);
    sqlite3_finalize(f->put_cursor);
    if (f->db != NULL)
        sqlite3_close(f->db);
    pthread_cond_destroy(&f->cond);
    pthread_mutex_destroy(&f->lock);
    lowmark_free(&f->inflight);
    sq_tail_close(f->tail);
    free(f->evs);
    free(f->rows);
    free(f->consumer);
    free(f->path);
    free(f);
}

const orderd_stage sq_feed_stage = ORDERD_STAGE(
    .kind = ORDERD_INPUT,
    .description = "change feed of the sqlite store's events, in order, with a saved position",
    .options = sqf_options,
    .create = sqf_create,
    .start = sqf_start,
    .stop = sqf_stop,
    .ack = sqf_ack,
    .destroy = sqf_destroy);
