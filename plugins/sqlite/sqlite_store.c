/* sqlite_store.c - the store stage: an append-only event stream plus the
 * latest snapshot of every order, written together in one transaction.
 *
 * A message whose body follows the event contract (an object with "type"
 * and "snapshot") is appended to `events` (an order's event id stored again
 * is a no-op, which makes redelivery harmless) and its snapshot replaces
 * the order's row in `snapshots` only when its version is newer.  Any other
 * message is kept as a plain document: a `snapshots` row under the message
 * id with version 0 and no event, replaced by a later document under the
 * same id but never over an event-sourced snapshot.
 *
 * Concurrency: one write connection behind wlock (SQLite has one writer per
 * file anyway); lookups come from many worker threads at once and use a
 * small pool of read-only connections, which WAL lets read while the writer
 * commits.
 *
 * Read transactions.  A lookup of its own begins and ends a read
 * transaction: a few locking system calls, as much as the search itself.
 * So a reader keeps its transaction open from one lookup to the next while
 * the store has committed nothing since it began (s->commits, raised after
 * every COMMIT): a lookup then sees exactly what a new transaction would.
 * A message's lookups follow the commit of the one before it for the same
 * order (the pipeline keeps an order's messages in turn), so they never
 * miss it.  Before each COMMIT the idle readers' transactions are ended,
 * so that the checkpoint running inside it is held back no more than by
 * lookups under way, and the log can start over.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../common/jsondec.h"
#include "../common/jsonenc.h"
#include "sq.h"

#define SQS_MAX_READERS 64

struct sqs_reader {
    sqlite3      *db;
    sqlite3_stmt *snapshot;
    sqlite3_stmt *event;            /* "event:<id>": every stream searched */
    sqlite3_stmt *stream_event;     /* "event:<stream>/<id>": the index */
    sqlite3_stmt *begin, *end;      /* BEGIN / COMMIT of its read transaction */
    bool          open;             /* a read transaction is open */
    uint64_t      commits;          /* s->commits when it began */
};

struct sqs {
    orderd_inst         *inst;
    const orderd_host   *h;
    char                *path;
    struct sq_open_opts  oo;

    pthread_mutex_t      wlock;     /* the write connection and its statements */
    sqlite3             *wdb;
    sqlite3_stmt        *ins_event;
    sqlite3_stmt        *ins_snap;
    sqlite3_stmt        *upd_snap;
    sqlite3_stmt        *sp_begin;
    sqlite3_stmt        *sp_release;
    sqlite3_stmt        *sp_rollback;
    struct jenc_buf      enc;       /* one message's text at a time; under wlock */
    struct sq_tail      *tail;      /* the file's latest events, for feeds (NULL: none) */
    int                  publish;   /* this batch's events go to the tail; under wlock */
    struct sq_event    **pend;      /* this batch's events, until COMMIT; under wlock */
    size_t               npend, pend_cap;

    pthread_mutex_t      rlock;     /* the reader pool */
    pthread_cond_t       rcond;
    struct sqs_reader   *idle[SQS_MAX_READERS];
    size_t               nidle;
    size_t               nreaders;  /* open, idle or in use */
    size_t               max_readers;
    _Atomic uint64_t     commits;   /* COMMITs of wdb so far (see "Read transactions") */
};

/* One message, checked and encoded before anything touches the database. */
struct sqs_rec {
    const char *event_id;   /* NULL: a plain document */
    const char *key;        /* snapshot row: the order id, or the message id */
    json_int_t  version;
    const char *type;
    const char *time;
    const char *status;
    int         type_len;   /* of the three above: -1 when NUL-terminated */
    int         time_len;
    int         status_len;
    const char *event_txt;  /* the message's body text or sqs.enc; NULL for a document */
    size_t      event_len;
    const char *snap_txt;   /* inside event_txt for an event, else into sqs.enc */
    size_t      snap_len;
};

static const orderd_option sqs_options[] = {
    { .key = "path", .type = ORDERD_T_PATH, .flags = ORDERD_OPT_STATE, .def = "orders.db",
      .help = "SQLite database file holding events and snapshots (relative: in the state directory)" },
    { .key = "busy_timeout", .type = ORDERD_T_DURATION, .def = "5s",
      .help = "how long to wait for a lock held by another connection before retrying the batch" },
    { .key = "synchronous", .type = ORDERD_T_STRING, .def = "full", .choices = "full|normal",
      .help = "full: every committed batch survives power loss; normal: faster, may lose the last commits" },
    { .key = "journal_size_limit", .type = ORDERD_T_SIZE, .def = "64MiB",
      .help = "size the write-ahead log is truncated to after a checkpoint" },
    { .key = "checkpoint_size", .type = ORDERD_T_SIZE, .def = "32MiB",
      .help = "the write-ahead log grows to about this before a commit copies it into the database (a checkpoint); orders' random keys dirty pages all over the indexes, and a page changed by many commits between checkpoints is copied once, so a larger log means less writing (SQLite's own default is 4MB)" },
    { .key = "cache_size", .type = ORDERD_T_SIZE, .def = "16MiB",
      .help = "page cache of the connection that writes (grown as used): the events' and snapshots' indexes take random keys, and pages read again from the file cost a system call each (SQLite's own default is 2MB)" },
    { .key = "lookup_connections", .type = ORDERD_T_INT, .def = "4",
      .help = "read-only connections serving concurrent lookups (1-64)" },
    { .key = NULL }
};

static const char *
sqs_str(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static void sqs_destroy(void *state);

/* End r's read transaction, if one is open. */
static void
sqs_reader_end(struct sqs_reader *r)
{
    if (!r->open)
        return;
    sqlite3_step(r->end);
    sqlite3_reset(r->end);
    r->open = false;
}

static void
sqs_reader_close(struct sqs_reader *r)
{
    sqs_reader_end(r);      /* open only once both were prepared */
    sqlite3_finalize(r->begin);
    sqlite3_finalize(r->end);
    sqlite3_finalize(r->snapshot);
    sqlite3_finalize(r->event);
    sqlite3_finalize(r->stream_event);
    sqlite3_close(r->db);
    free(r);
}

static int
sqs_reader_open(struct sqs *s, struct sqs_reader **out)
{
    struct sqs_reader   *r;
    struct sq_open_opts  oo = s->oo;
    int                  ret;

    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -ENOMEM;
    oo.readonly = 1;
    ret = sq_open(s->inst, s->h, &oo, &r->db);
    if (ret < 0)
        goto fail;

    const struct { const char *sql; sqlite3_stmt **st; } stmts[] = {
        { "SELECT body FROM snapshots WHERE id = ?1", &r->snapshot },
        { "SELECT body FROM events WHERE id = ?1", &r->event },
        { "SELECT body FROM events WHERE stream = ?1 AND id = ?2", &r->stream_event },
        { "BEGIN", &r->begin },
        { "COMMIT", &r->end },
    };
    for (size_t i = 0; i < sizeof(stmts) / sizeof(stmts[0]); i++)
        if ((ret = sq_prepare(s->inst, s->h, r->db, stmts[i].sql, stmts[i].st)) < 0)
            goto fail;
    *out = r;
    return 0;

fail:
    sqs_reader_close(r);
    return ret;
}

/* Take an idle reader, open one more while under the limit, else wait. */
static int
sqs_reader_get(struct sqs *s, struct sqs_reader **out)
{
    int ret;

    pthread_mutex_lock(&s->rlock);
    while (s->nidle == 0 && s->nreaders >= s->max_readers)
        pthread_cond_wait(&s->rcond, &s->rlock);
    if (s->nidle > 0) {
        *out = s->idle[--s->nidle];
        pthread_mutex_unlock(&s->rlock);
        return 0;
    }
    s->nreaders++;
    pthread_mutex_unlock(&s->rlock);

    /* opening outside the lock: other lookups need not wait for it */
    ret = sqs_reader_open(s, out);
    if (ret < 0) {
        pthread_mutex_lock(&s->rlock);
        s->nreaders--;
        pthread_cond_signal(&s->rcond);
        pthread_mutex_unlock(&s->rlock);
    }
    return ret;
}

/* End the read transactions of the idle readers (see "Read transactions"). */
static void
sqs_readers_end_idle(struct sqs *s)
{
    pthread_mutex_lock(&s->rlock);
    for (size_t i = 0; i < s->nidle; i++)
        sqs_reader_end(s->idle[i]);
    pthread_mutex_unlock(&s->rlock);
}

static void
sqs_reader_put(struct sqs *s, struct sqs_reader *r)
{
    pthread_mutex_lock(&s->rlock);
    s->idle[s->nidle++] = r;
    pthread_cond_signal(&s->rcond);
    pthread_mutex_unlock(&s->rlock);
}

static int
sqs_lookup(void *state, const char *key, json_t **out)
{
    struct sqs        *s = state;
    struct sqs_reader *r;
    sqlite3_stmt      *st;
    json_error_t       jerr;
    const char        *id = key;
    int                rc, ret;

    *out = NULL;
    ret = sqs_reader_get(s, &r);
    if (ret < 0)
        return ret;
    /* The same read transaction while nothing was committed since it began;
     * the count is read before the new one's snapshot is taken (at its first
     * step), so that snapshot holds every COMMIT counted. */
    uint64_t commits = atomic_load_explicit(&s->commits, memory_order_acquire);
    if (r->open && r->commits != commits)
        sqs_reader_end(r);
    if (!r->open) {
        rc = sqlite3_step(r->begin);
        sqlite3_reset(r->begin);
        r->open = rc == SQLITE_DONE;
        r->commits = commits;
    }
    st = r->snapshot;
    if (strncmp(key, "event:", 6) == 0) {
        const char *slash = strrchr(key + 6, '/');

        st = r->event;
        id = key + 6;
        if (slash != NULL) {
            /* event ids never hold a '/'; the order id before it may */
            st = r->stream_event;
            sqlite3_bind_text(st, 1, id, (int) (slash - id), SQLITE_STATIC);
            id = slash + 1;
            sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
        }
    }
    if (st != r->stream_event)
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = jdec_loadb((const char *) sqlite3_column_text(st, 0),
                          (size_t) sqlite3_column_bytes(st, 0), &jerr);
        if (*out == NULL) {
            s->h->log(s->inst, ORDERD_LOG_ERR, "sqlite: %s: stored document '%s' is not JSON: %s",
                      s->path, key, jerr.text);
            ret = -EBADMSG;
        }
    } else if (rc == SQLITE_DONE) {
        ret = -ENOENT;
    } else {
        s->h->log(s->inst, ORDERD_LOG_WARN, "sqlite: %s: lookup '%s': %s", s->path, key,
                  sqlite3_errmsg(r->db));
        ret = sq_errno(rc) ? sq_errno(rc) : -EIO;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (ret < 0 && ret != -ENOENT)
        sqs_reader_end(r);     /* the next lookup starts afresh */
    sqs_reader_put(s, r);
    return ret;
}

/* The event body as text into s->enc, and where its "snapshot" member's
 * value lies in that text: the snapshot row stores those same bytes, so
 * the event is encoded once instead of twice.  Top-level members in the
 * body's own order, as json_dumps() would write them.
 * RETURNS: 0, or negative errno (-ENOMEM, -EINVAL). */
static int
sqs_encode_event(struct sqs *s, json_t *body, struct sqs_rec *rec)
{
    struct jenc_buf *b = &s->enc;
    size_t           snap_at = 0, snap_end = 0, i;
    void            *it;
    int              rc;

    b->len = 0;
    if (jenc_put(b, "{", 1) != 0)
        return -ENOMEM;
    for (it = json_object_iter(body), i = 0; it != NULL; it = json_object_iter_next(body, it), i++) {
        const char *key = json_object_iter_key(it);

        if ((i > 0 && jenc_put(b, ",", 1) != 0) || jenc_string(b, key, strlen(key)) != 0
            || jenc_put(b, ":", 1) != 0)
            return -ENOMEM;
        if (strcmp(key, "snapshot") == 0)
            snap_at = b->len;
        rc = jenc_dump(b, json_object_iter_value(it));
        if (rc != 0)
            return rc;
        if (strcmp(key, "snapshot") == 0)
            snap_end = b->len;
    }
    if (jenc_put(b, "}", 1) != 0)
        return -ENOMEM;
    rec->event_txt = b->p;
    rec->event_len = b->len;
    rec->snap_txt = b->p + snap_at;
    rec->snap_len = snap_end - snap_at;
    return 0;
}

/* jenc_member_str() with the length as SQLite binds it.  RETURNS: as that
 * (-EINVAL too for a string longer than INT_MAX). */
static int
sqs_span_str(const char *text, size_t len, const char *key, const char **v, int *n)
{
    size_t k;
    int    rc = jenc_member_str(text, len, key, v, &k);

    if (rc != 0)
        return rc;
    if (k > INT_MAX)
        return -EINVAL;
    *n = (int) k;
    return 0;
}

/* The event contract read from the body's text and the properties alone,
 * so that a body that is only text (the orders transform's creates, ABI
 * 1.6) is never decoded here.  Only the plain case: property order_id set,
 * "type" (and "time", "status" of the snapshot, when there) strings
 * without escapes, "version" a positive integer, "snapshot" an object.
 * Anything else is left to the tree, which judges it as before.
 * RETURNS: 0 with rec filled, or -1. */
static int
sqs_prepare_text(struct sqs *s, orderd_msg *m, struct sqs_rec *rec)
{
    const orderd_host *h = s->h;
    const char        *txt, *snap;
    size_t             len, at, n;
    char               num[24], *end;
    long long          v;

    memset(rec, 0, sizeof(*rec));
    rec->event_id = h->msg_id(m);
    rec->key = h->msg_prop(m, "order_id");
    if (rec->event_id == NULL || rec->event_id[0] == '\0' || rec->key == NULL || rec->key[0] == '\0')
        return -1;
    if ((txt = h->msg_body_text(m, &len)) == NULL
        || jenc_member_span(txt, len, "snapshot", &at, &n) != 0 || txt[at] != '{')
        return -1;
    snap = txt + at;
    rec->event_txt = txt;
    rec->event_len = len;
    rec->snap_txt = snap;
    rec->snap_len = n;
    if (sqs_span_str(txt, len, "type", &rec->type, &rec->type_len) != 0 || rec->type_len == 0)
        return -1;
    switch (sqs_span_str(txt, len, "time", &rec->time, &rec->time_len)) {
    case 0: break;
    case -ENOENT: rec->time = NULL; break;
    default: return -1;
    }
    switch (sqs_span_str(snap, n, "status", &rec->status, &rec->status_len)) {
    case 0: break;
    case -ENOENT: rec->status = NULL; break;
    default: return -1;
    }
    if (jenc_member_span(txt, len, "version", &at, &n) != 0 || n == 0 || n >= sizeof(num)
        || strspn(txt + at, "0123456789") < n)
        return -1;
    memcpy(num, txt + at, n);
    num[n] = '\0';
    errno = 0;
    v = strtoll(num, &end, 10);
    if (errno != 0 || *end != '\0' || v < 1)
        return -1;
    rec->version = (json_int_t) v;
    return 0;
}

/* Check one message against the contract and encode it, from its tree.
 * RETURNS: 0, or an outcome already recorded on the message (REJECT). */
static int
sqs_prepare_tree(struct sqs *s, orderd_msg *m, struct sqs_rec *rec)
{
    const orderd_host *h = s->h;
    json_t            *body = ORDERD_HOST_HAS(h, msg_body_peek)
                              ? (json_t *) h->msg_body_peek(m) : h->msg_body(m);
    json_t            *snap, *jv;
    const char        *pv;
    char              *end;
    long long          v;

    memset(rec, 0, sizeof(*rec));
    rec->type_len = rec->time_len = rec->status_len = -1;
    if (body == NULL)
        return h->reject(m, "sqlite: message has no body");

    if (!json_is_object(body) || json_object_get(body, "type") == NULL
        || json_object_get(body, "snapshot") == NULL) {
        /* not an event: a plain document under the message id */
        rec->key = h->msg_id(m);
        if (rec->key == NULL || rec->key[0] == '\0')
            return h->reject(m, "sqlite: document has no message id to store it under");
        rec->version = 0;
        rec->status = json_is_object(body) ? sqs_str(body, "status") : NULL;
        s->enc.len = 0;
        if (jenc_dump(&s->enc, body) != 0)
            return h->reject(m, "sqlite: document body cannot be encoded as JSON");
        rec->snap_txt = s->enc.p;
        rec->snap_len = s->enc.len;
        return 0;
    }

    snap = json_object_get(body, "snapshot");
    rec->event_id = h->msg_id(m);
    rec->type = sqs_str(body, "type");
    rec->time = sqs_str(body, "time");
    if (rec->event_id == NULL || rec->event_id[0] == '\0')
        return h->reject(m, "sqlite: event has no id");
    if (rec->type == NULL || rec->type[0] == '\0')
        return h->reject(m, "sqlite: event %s: \"type\" is not a non-empty string", rec->event_id);
    if (!json_is_object(snap))
        return h->reject(m, "sqlite: event %s: \"snapshot\" is not an object", rec->event_id);

    /* the order id: the property the orders transform sets, else the body's */
    rec->key = h->msg_prop(m, "order_id");
    if (rec->key == NULL || rec->key[0] == '\0')
        rec->key = sqs_str(body, "orderId");
    if (rec->key == NULL || rec->key[0] == '\0')
        rec->key = sqs_str(snap, "id");
    if (rec->key == NULL || rec->key[0] == '\0')
        return h->reject(m, "sqlite: event %s: no order id (property order_id or \"orderId\")",
                         rec->event_id);

    jv = json_object_get(body, "version");
    if (json_is_integer(jv)) {
        rec->version = json_integer_value(jv);
    } else if (jv == NULL && (pv = h->msg_prop(m, "version")) != NULL) {
        errno = 0;
        v = strtoll(pv, &end, 10);
        if (errno != 0 || end == pv || *end != '\0')
            return h->reject(m, "sqlite: event %s: property version '%s' is not a number",
                             rec->event_id, pv);
        rec->version = (json_int_t) v;
    } else {
        return h->reject(m, "sqlite: event %s: \"version\" is not an integer", rec->event_id);
    }
    if (rec->version < 1)
        return h->reject(m, "sqlite: event %s: version %lld is not positive", rec->event_id,
                         (long long) rec->version);

    rec->status = sqs_str(snap, "status");
    if (ORDERD_HOST_HAS(h, msg_body_text)) {
        /* The message's own encoding, which the publishers after us reuse. */
        size_t len, at, n;
        const char *txt = h->msg_body_text(m, &len);

        if (txt == NULL || jenc_member_span(txt, len, "snapshot", &at, &n) != 0)
            return h->reject(m, "sqlite: event %s cannot be encoded as JSON", rec->event_id);
        rec->event_txt = txt;
        rec->event_len = len;
        rec->snap_txt = txt + at;
        rec->snap_len = n;
        return 0;
    }
    if (sqs_encode_event(s, body, rec) != 0)
        return h->reject(m, "sqlite: event %s cannot be encoded as JSON", rec->event_id);
    return 0;
}

/* Check one message against the contract and encode it.
 * RETURNS: 0, or an outcome already recorded on the message (REJECT). */
static int
sqs_prepare_rec(struct sqs *s, orderd_msg *m, struct sqs_rec *rec)
{
    if (ORDERD_HOST_HAS(s->h, msg_body_text) && sqs_prepare_text(s, m, rec) == 0)
        return 0;
    return sqs_prepare_tree(s, m, rec);
}

static int
sqs_step_reset(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);

    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Write one record inside the batch's transaction.  *dup says whether its
 * event was already stored, *seq is the new event's seq.  RETURNS: a
 * SQLite result code. */
static int
sqs_write(struct sqs *s, const struct sqs_rec *rec, int64_t now, int *dup, int64_t *seq)
{
    sqlite3_stmt *st;
    int           rc;

    *dup = 0;
    *seq = 0;
    if (rec->event_id != NULL) {
        st = s->ins_event;
        sqlite3_bind_text(st, 1, rec->event_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, rec->key, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, rec->version);
        sqlite3_bind_text(st, 4, rec->type, rec->type_len, SQLITE_STATIC);
        if (rec->time != NULL)
            sqlite3_bind_text(st, 5, rec->time, rec->time_len, SQLITE_STATIC);
        sqlite3_bind_text(st, 6, rec->event_txt, (int) rec->event_len, SQLITE_STATIC);
        rc = sqs_step_reset(st);
        if (rc != SQLITE_OK)
            return rc;
        if (sqlite3_changes(s->wdb) == 0) {
            /* redelivery: its snapshot went in with the first copy */
            *dup = 1;
            return SQLITE_OK;
        }
        *seq = sqlite3_last_insert_rowid(s->wdb);
    }

    /* INSERT OR IGNORE + UPDATE instead of UPSERT: works with SQLite < 3.24 */
    st = s->ins_snap;
    sqlite3_bind_text(st, 1, rec->key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, rec->version);
    if (rec->status != NULL)
        sqlite3_bind_text(st, 3, rec->status, rec->status_len, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, rec->snap_txt, (int) rec->snap_len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, now);
    rc = sqs_step_reset(st);
    if (rc != SQLITE_OK || sqlite3_changes(s->wdb) > 0)
        return rc;

    st = s->upd_snap;
    sqlite3_bind_text(st, 1, rec->key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, rec->version);
    if (rec->status != NULL)
        sqlite3_bind_text(st, 3, rec->status, rec->status_len, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, rec->snap_txt, (int) rec->snap_len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, now);
    return sqs_step_reset(st);
}

static void
sqs_retry_all(struct sqs *s, orderd_msg *const *msgs, size_t n, orderd_result *out,
              const char *why)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (out[i].outcome == ORDERD_REJECT)
            continue;
        out[i].outcome = s->h->retry(msgs[i], 0, "sqlite: %s: %s", s->path, why);
        out[i].reason = s->h->msg_reason(msgs[i]);
        out[i].retry_after_ms = 0;
    }
}

/* The batch's events for the tail: dropped with the transaction... */
static void
sqs_pend_clear(struct sqs *s)
{
    while (s->npend > 0)
        sq_event_unref(s->pend[--s->npend]);
}

/* ...or kept for sqs_pend_publish() once it committed.  An event that
 * cannot be kept leaves a gap, and the tail starts over after it. */
static void
sqs_pend_add(struct sqs *s, const struct sqs_rec *rec, int64_t seq)
{
    struct sq_event *ev;

    if (s->npend == s->pend_cap) {
        size_t            cap = s->pend_cap ? 2 * s->pend_cap : 256;
        struct sq_event **p = realloc(s->pend, cap * sizeof(*p));

        if (p == NULL)
            return;
        s->pend = p;
        s->pend_cap = cap;
    }
    ev = sq_event_new(seq, rec->event_id, rec->key, rec->type,
                      rec->type_len < 0 ? strlen(rec->type) : (size_t) rec->type_len,
                      rec->version, rec->event_txt, rec->event_len);
    if (ev != NULL)
        s->pend[s->npend++] = ev;
}

static void
sqs_pend_publish(struct sqs *s)
{
    sq_tail_publish(s->tail, s->pend, s->npend);
    s->npend = 0;
}

/* What sqs_apply() counted, for the metrics. */
struct sqs_counts {
    double inserted, dups, docs;
};

/* sqs_apply() found a message that fails on its own without savepoints. */
#define SQS_REDO (-1)

/* Write msgs inside the open transaction.  Without savepoints (the usual
 * pass) a statement that fails for one message's own reason returns
 * SQS_REDO: that message may have left half its rows, so the caller rolls
 * back and runs the batch again with a savepoint around every message,
 * which lets exactly that one be rejected.  RETURNS: SQLITE_OK, SQS_REDO,
 * or the SQLite error that must roll the whole batch back. */
static int
sqs_apply(struct sqs *s, orderd_msg *const *msgs, size_t n, orderd_result *out, int savepoints,
          int64_t now, struct sqs_counts *cnt)
{
    const orderd_host *h = s->h;
    struct sqs_rec     rec;
    size_t             i;
    int64_t            seq;
    int                rc, dup;

    memset(cnt, 0, sizeof(*cnt));
    sqs_pend_clear(s);
    for (i = 0; i < n; i++) {
        if (sqs_prepare_rec(s, msgs[i], &rec) != 0) {
            out[i].outcome = ORDERD_REJECT;
            out[i].reason = h->msg_reason(msgs[i]);
            continue;
        }
        rc = savepoints ? sqs_step_reset(s->sp_begin) : SQLITE_OK;
        if (rc == SQLITE_OK)
            rc = sqs_write(s, &rec, now, &dup, &seq);
        if (rc == SQLITE_OK && savepoints)
            rc = sqs_step_reset(s->sp_release);
        if (rc == SQLITE_OK) {
            if (rec.event_id == NULL)
                cnt->docs++;
            else if (dup)
                cnt->dups++;
            else
                cnt->inserted++;
            if (s->publish && seq > 0)
                sqs_pend_add(s, &rec, seq);
            continue;
        }
        if (sq_transient(rc) || sqlite3_get_autocommit(s->wdb) != 0)
            return rc;
        if (!savepoints)
            return SQS_REDO;
        /* this message's own problem (a constraint, a value too big) */
        out[i].outcome = h->reject(msgs[i], "sqlite: %s cannot be stored: %s",
                                   h->msg_id(msgs[i]), sqlite3_errmsg(s->wdb));
        out[i].reason = h->msg_reason(msgs[i]);
        rc = sqs_step_reset(s->sp_rollback);
        if (rc == SQLITE_OK)
            rc = sqs_step_reset(s->sp_release);
        if (rc != SQLITE_OK)
            return rc;
    }
    return SQLITE_OK;
}

/* One transaction per batch: one fsync for the lot is what makes thousands
 * of events per second possible.  A message that breaks the contract is
 * rejected alone (see sqs_apply); a database-wide failure rolls everything
 * back and asks for the whole batch again. */
static int
sqs_process_batch(void *state, orderd_msg *const *msgs, size_t n, orderd_result *out)
{
    struct sqs        *s = state;
    const orderd_host *h = s->h;
    struct sqs_counts  cnt;
    int64_t            now = sq_now_ms();
    char               why[256];
    int                rc;

    pthread_mutex_lock(&s->wlock);
    s->publish = sq_tail_wanted(s->tail);
    rc = sq_exec(s->wdb, "BEGIN IMMEDIATE");
    if (rc != SQLITE_OK) {
        snprintf(why, sizeof(why), "cannot begin a transaction: %s", sqlite3_errmsg(s->wdb));
        h->log(s->inst, ORDERD_LOG_WARN, "sqlite: %s: %s", s->path, why);
        sqs_retry_all(s, msgs, n, out, why);
        pthread_mutex_unlock(&s->wlock);
        return 0;
    }
    rc = sqs_apply(s, msgs, n, out, 0, now, &cnt);
    if (rc == SQS_REDO) {
        rc = sq_exec(s->wdb, "ROLLBACK");
        if (rc == SQLITE_OK)
            rc = sq_exec(s->wdb, "BEGIN IMMEDIATE");
        if (rc == SQLITE_OK)
            rc = sqs_apply(s, msgs, n, out, 1, now, &cnt);
    }
    if (rc != SQLITE_OK)
        goto abort;

    sqs_readers_end_idle(s);
    rc = sq_exec(s->wdb, "COMMIT");
    atomic_fetch_add_explicit(&s->commits, 1, memory_order_release);
    if (rc != SQLITE_OK)
        goto abort;
    sqs_pend_publish(s);
    {
        int used = 0, peak = 0;

        if (sqlite3_db_status(s->wdb, SQLITE_DBSTATUS_CACHE_USED, &used, &peak, 0) == SQLITE_OK)
            h->metric_set(s->inst, "sqlite_cache_bytes", used);
    }
    pthread_mutex_unlock(&s->wlock);

    h->metric_add(s->inst, "sqlite_commits", 1);
    if (cnt.inserted > 0)
        h->metric_add(s->inst, "sqlite_events_inserted", cnt.inserted);
    if (cnt.dups > 0)
        h->metric_add(s->inst, "sqlite_duplicates", cnt.dups);
    if (cnt.docs > 0)
        h->metric_add(s->inst, "sqlite_documents_stored", cnt.docs);
    return 0;

abort:
    snprintf(why, sizeof(why), "batch rolled back: %s", sqlite3_errmsg(s->wdb));
    /* some errors (I/O, full disk) already ended the transaction */
    if (sqlite3_get_autocommit(s->wdb) == 0)
        sq_exec(s->wdb, "ROLLBACK");
    sqs_pend_clear(s);
    pthread_mutex_unlock(&s->wlock);
    h->log(s->inst, ORDERD_LOG_WARN, "sqlite: %s: %s", s->path, why);
    sqs_retry_all(s, msgs, n, out, why);
    h->metric_add(s->inst, "sqlite_batches_retried", 1);
    return 0;
}

static orderd_outcome
sqs_process(void *state, orderd_msg *m)
{
    orderd_result res = { .outcome = ORDERD_OK };

    sqs_process_batch(state, &m, 1, &res);
    return res.outcome;
}

static int
sqs_create(orderd_inst *inst, const orderd_host *h, const json_t *conf, void **state)
{
    struct sqs *s;
    const char *sync = sqs_str(conf, "synchronous");
    json_int_t  readers = json_integer_value(json_object_get(conf, "lookup_connections"));
    int         ret;

    if (readers < 1 || readers > SQS_MAX_READERS) {
        h->log(inst, ORDERD_LOG_ERR, "sqlite: lookup_connections must be 1-%d, not %lld",
               SQS_MAX_READERS, (long long) readers);
        return -EINVAL;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->inst = inst;
    s->h = h;
    s->max_readers = (size_t) readers;
    pthread_mutex_init(&s->wlock, NULL);
    pthread_mutex_init(&s->rlock, NULL);
    pthread_cond_init(&s->rcond, NULL);
    s->path = strdup(sqs_str(conf, "path") ? sqs_str(conf, "path") : "orders.db");
    if (s->path == NULL) {
        ret = -ENOMEM;
        goto fail;
    }
    s->oo.path = s->path;
    s->oo.busy_timeout_ms = json_integer_value(json_object_get(conf, "busy_timeout"));
    s->oo.synchronous_full = sync == NULL || strcmp(sync, "normal") != 0;
    s->oo.journal_size_limit = json_is_integer(json_object_get(conf, "journal_size_limit"))
        ? json_integer_value(json_object_get(conf, "journal_size_limit")) : -1;
    s->oo.checkpoint_bytes = json_integer_value(json_object_get(conf, "checkpoint_size"));
    s->oo.cache_bytes = json_integer_value(json_object_get(conf, "cache_size"));

    ret = sq_open(inst, h, &s->oo, &s->wdb);
    if (ret < 0)
        goto fail;
    s->tail = sq_tail_open(s->path);
    if ((ret = sq_prepare(inst, h, s->wdb,
            "INSERT OR IGNORE INTO events(id, stream, version, type, time, body)"
            " VALUES(?1, ?2, ?3, ?4, ?5, ?6)", &s->ins_event)) < 0
        || (ret = sq_prepare(inst, h, s->wdb,
            "INSERT OR IGNORE INTO snapshots(id, version, status, body, updated_ms)"
            " VALUES(?1, ?2, ?3, ?4, ?5)", &s->ins_snap)) < 0
        /* newer events win; documents (version 0) replace only documents */
        || (ret = sq_prepare(inst, h, s->wdb,
            "UPDATE snapshots SET version = ?2, status = ?3, body = ?4, updated_ms = ?5"
            " WHERE id = ?1 AND (version < ?2 OR (?2 = 0 AND version = 0))", &s->upd_snap)) < 0
        || (ret = sq_prepare(inst, h, s->wdb, "SAVEPOINT msg", &s->sp_begin)) < 0
        || (ret = sq_prepare(inst, h, s->wdb, "RELEASE msg", &s->sp_release)) < 0
        || (ret = sq_prepare(inst, h, s->wdb, "ROLLBACK TO msg", &s->sp_rollback)) < 0)
        goto fail;
    *state = s;
    return 0;

fail:
    sqs_destroy(s);
    return ret;
}

static void
sqs_destroy(void *state)
{
    struct sqs *s = state;
    size_t      i;

    if (s == NULL)
        return;
    for (i = 0; i < s->nidle; i++)
        sqs_reader_close(s->idle[i]);
    sqlite3_finalize(s->ins_event);
    sqlite3_finalize(s->ins_snap);
    sqlite3_finalize(s->upd_snap);
    sqlite3_finalize(s->sp_begin);
    sqlite3_finalize(s->sp_release);
    sqlite3_finalize(s->sp_rollback);
    if (s->wdb != NULL && sqlite3_close(s->wdb) != SQLITE_OK)
        s->h->log(s->inst, ORDERD_LOG_WARN, "sqlite: %s: close: %s", s->path,
                  sqlite3_errmsg(s->wdb));
    sqs_pend_clear(s);
    free(s->pend);
    sq_tail_close(s->tail);
    pthread_cond_destroy(&s->rcond);
    pthread_mutex_destroy(&s->rlock);
    pthread_mutex_destroy(&s->wlock);
    free(s->enc.p);
    free(s->path);
    free(s);
}

const orderd_stage sq_store_stage = ORDERD_STAGE(
    .kind = ORDERD_STORE,
    .description = "event stream and order snapshots in an SQLite file (WAL, one transaction per batch)",
    .options = sqs_options,
    .create = sqs_create,
    .process = sqs_process,
    .process_batch = sqs_process_batch,
    .lookup = sqs_lookup,
    .destroy = sqs_destroy);
