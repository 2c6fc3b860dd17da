/* file_publish.c - the `file` publisher: append each message as one NDJSON
 * line.  Encoding (fp_encode) is kept apart from writing so a batch becomes
 * one write() and, with fsync = "always", one fdatasync(). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/deadline.h"
#include "../common/jsonenc.h"
#include "file.h"

enum { FP_ALWAYS, FP_INTERVAL, FP_NEVER };

static const orderd_option fp_options[] = {
    { .key = "path", .type = ORDERD_T_PATH, .flags = ORDERD_OPT_REQUIRED | ORDERD_OPT_STATE,
      .help = "file the messages are appended to, one JSON line each (created if missing; relative to the state directory)" },
    { .key = "format", .type = ORDERD_T_STRING, .def = "body", .choices = "body|envelope",
      .help = "what a line holds: the message body, or an envelope with id, properties and body" },
    { .key = "fsync", .type = ORDERD_T_STRING, .def = "interval", .choices = "always|interval|never",
      .help = "when data reaches the disk: before each OK, every fsync_interval, or when the OS likes" },
    { .key = "fsync_interval", .type = ORDERD_T_DURATION, .def = "1s",
      .help = "with fsync = \"interval\": longest time written lines may stay only in the page cache" },
    { .key = NULL }
};

struct fp {
    orderd_inst        *inst;
    const orderd_host  *h;
    char               *path;
    int                 envelope;
    int                 mode;            /* FP_* */
    int64_t             interval_ms;
    int                 fd;

    pthread_mutex_t     mtx;             /* one writer at a time; guards the rest */
    pthread_cond_t      cond;
    int                 dirty;           /* written since the last fdatasync */
    int64_t             last_sync_ms;
    int                 stopping;
    pthread_t           timer;
    int                 has_timer;
};


/* Reasons handed back in orderd_result must outlive the call; one per thread. */
static __thread char fp_reason[256];

static json_t *
fp_envelope(const orderd_host *h, orderd_msg *m)
{
    json_t *o = json_object(), *props = json_object();
    const char *v, *k, *pk = h->msg_partition_key(m);
    json_t *body = h->msg_body(m);
    int bad = o == NULL || props == NULL;

    for (size_t i = 0; !bad && (k = h->msg_prop_at(m, i, &v)) != NULL; i++)
        bad |= json_object_set_new(props, k, json_string(v ? v : "")) < 0;
    bad |= json_object_set_new(o, "id", json_string(h->msg_id(m))) < 0;
    bad |= json_object_set_new(o, "properties", props) < 0;
    props = NULL;                        /* owned by o now, even when set failed */
    bad |= json_object_set_new(o, "content_type", json_string(h->msg_content_type(m))) < 0;
    bad |= json_object_set_new(o, "partition_key", pk ? json_string(pk) : json_null()) < 0;
    bad |= json_object_set_new(o, "enqueued_ms", json_integer(h->msg_enqueued_ms(m))) < 0;
    bad |= json_object_set_new(o, "delivery_count", json_integer(h->msg_delivery_count(m))) < 0;
    bad |= json_object_set(o, "body", body ? body : json_null()) < 0;
    if (bad) {
        json_decref(props);
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Append m's line to b, encoded in place (jenc_dump: json_dumps() bytes
 * without its per-call buffer and copy).  RETURNS 0, or -EINVAL when m
 * cannot be written as JSON (e.g. a property that is not UTF-8), or -ENOMEM. */
static int
fp_encode(const struct fp *fp, orderd_msg *m, struct jenc_buf *b)
{
    json_t *j;
    size_t before = b->len;
    int rc;

    if (!fp->envelope && ORDERD_HOST_HAS(fp->h, msg_body_text)) {
        /* the text the store (or another stage) already made, or was given */
        size_t len;
        const char *txt = fp->h->msg_body_text(m, &len);

        if (txt != NULL) {
            if ((rc = jenc_put(b, txt, len)) == 0 && (rc = jenc_put(b, "\n", 1)) != 0)
                b->len = before;
            return rc;
        }
        /* no text: the encoder below says why */
    }
    j = fp->envelope ? fp_envelope(fp->h, m) : json_incref(fp->h->msg_body(m));
    if (j == NULL && !fp->envelope)
        j = json_null();
    if (j == NULL)
        return -EINVAL;
    rc = jenc_dump(b, j);
    if (rc == 0 && (rc = jenc_put(b, "\n", 1)) != 0)
        b->len = before;    /* never half a line in the batch's buffer */
    json_decref(j);
    return rc;
}

/* Append b and sync as fsync says.  A failed write is cut back off, so the
 * file never keeps half a line that the retry would then follow.
 * RETURNS 0 or negative errno. */
static int
fp_write(struct fp *fp, const struct jenc_buf *b)
{
    struct stat st;
    int rc = 0;

    if (b->len == 0)
        return 0;
    pthread_mutex_lock(&fp->mtx);
    if (fstat(fp->fd, &st) < 0) {
        rc = -errno;
        goto out;
    }
    rc = file_write_all(fp->fd, b->p, b->len);
    if (rc < 0) {
        if (S_ISREG(st.st_mode) && ftruncate(fp->fd, st.st_size) < 0)
            fp->h->log(fp->inst, ORDERD_LOG_ERR, "%s may end in a partial line: %s",
                       fp->path, strerror(errno));
        goto out;
    }
    fp->dirty = 1;
    int64_t now = mono_ms();
    if (fp->mode == FP_ALWAYS
        || (fp->mode == FP_INTERVAL && now - fp->last_sync_ms >= fp->interval_ms)) {
        if (fdatasync(fp->fd) < 0) {
            rc = -errno;
            goto out;
        }
        fp->dirty = 0;
        fp->last_sync_ms = now;
    }
out:
    pthread_mutex_unlock(&fp->mtx);
    return rc;
}

/* fsync = "interval": sync what the write path left dirty, even when no
 * further write comes to do it. */
static void *
fp_timer(void *arg)
{
    struct fp *fp = arg;
    struct timespec ts;

    pthread_mutex_lock(&fp->mtx);
    while (!fp->stopping) {
        ts = deadline_after_ms(fp->interval_ms);
        pthread_cond_timedwait(&fp->cond, &fp->mtx, &ts);
        int64_t now = mono_ms();
        if (fp->dirty && now - fp->last_sync_ms >= fp->interval_ms) {
            if (fdatasync(fp->fd) < 0)
                fp->h->log(fp->inst, ORDERD_LOG_ERR, "fdatasync %s: %s", fp->path, strerror(errno));
            fp->dirty = 0;
            fp->last_sync_ms = now;
        }
    }
    pthread_mutex_unlock(&fp->mtx);
    return NULL;
}

static orderd_outcome
fp_process(void *state, orderd_msg *m)
{
    struct fp *fp = state;
    struct jenc_buf b = { 0 };
    orderd_outcome o = ORDERD_OK;

    int rc = fp_encode(fp, m, &b);
    if (rc == -EINVAL)
        o = fp->h->reject(m, "cannot encode the message as JSON");
    else if (rc < 0)
        o = fp->h->retry(m, 0, "out of memory");
    else if ((rc = fp_write(fp, &b)) < 0)
        o = fp->h->retry(m, 0, "write %s: %s", fp->path, strerror(-rc));
    free(b.p);
    return o;
}

static int
fp_process_batch(void *state, orderd_msg *const *msgs, size_t n, orderd_result *out)
{
    struct fp *fp = state;
    struct jenc_buf b = { 0 };

    for (size_t i = 0; i < n; i++) {
        int rc = fp_encode(fp, msgs[i], &b);
        if (rc == -EINVAL) {
            out[i].outcome = ORDERD_REJECT;
            out[i].reason = "cannot encode the message as JSON";
        } else if (rc < 0) {
            out[i].outcome = ORDERD_RETRY;
            out[i].reason = "out of memory";
        }
    }
    int rc = fp_write(fp, &b);
    if (rc < 0) {
        snprintf(fp_reason, sizeof(fp_reason), "write %s: %s", fp->path, strerror(-rc));
        for (size_t i = 0; i < n; i++) {
            if (out[i].outcome != ORDERD_OK)
                continue;
            out[i].outcome = ORDERD_RETRY;
            out[i].reason = fp_reason;
        }
    }
    free(b.p);
    return 0;
}

static void fp_destroy(void *state);

static int
fp_create(orderd_inst *inst, const orderd_host *h, const json_t *conf, void **state)
{
    struct fp *fp = calloc(1, sizeof(*fp));
    pthread_condattr_t ca;
    int rc = -ENOMEM;

    if (fp == NULL)
        return -ENOMEM;
    fp->inst = inst;
    fp->h = h;
    fp->fd = -1;
    pthread_mutex_init(&fp->mtx, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&fp->cond, &ca);
    pthread_condattr_destroy(&ca);

    const char *path = json_string_value(json_object_get(conf, "path"));
    const char *format = json_string_value(json_object_get(conf, "format"));
    const char *fsync = json_string_value(json_object_get(conf, "fsync"));

    /* The core checks choices; this guards direct callers and keeps the
     * defaults in one place should a value arrive as null. */
    if (path == NULL || *path == '\0') {
        h->log(inst, ORDERD_LOG_ERR, "path is required");
        rc = -EINVAL;
        goto fail;
    }
    if (format == NULL || strcmp(format, "body") == 0) {
        fp->envelope = 0;
    } else if (strcmp(format, "envelope") == 0) {
        fp->envelope = 1;
    } else {
        h->log(inst, ORDERD_LOG_ERR, "format must be \"body\" or \"envelope\", not \"%s\"", format);
        rc = -EINVAL;
        goto fail;
    }
    if (fsync == NULL || strcmp(fsync, "interval") == 0) {
        fp->mode = FP_INTERVAL;
    } else if (strcmp(fsync, "always") == 0) {
        fp->mode = FP_ALWAYS;
    } else if (strcmp(fsync, "never") == 0) {
        fp->mode = FP_NEVER;
    } else {
        h->log(inst, ORDERD_LOG_ERR, "fsync must be always, interval or never, not \"%s\"", fsync);
        rc = -EINVAL;
        goto fail;
    }
    fp->interval_ms = json_integer_value(json_object_get(conf, "fsync_interval"));
    if (fp->interval_ms < 1)
        fp->interval_ms = 1;
    fp->path = strdup(path);
    if (fp->path == NULL)
        goto fail;

    fp->fd = open(fp->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fp->fd < 0) {
        rc = -errno;
        h->log(inst, ORDERD_LOG_ERR, "cannot open %s: %s", fp->path, strerror(errno));
        goto fail;
    }
    fp->last_sync_ms = mono_ms();
    if (fp->mode == FP_INTERVAL) {
        rc = -pthread_create(&fp->timer, NULL, fp_timer, fp);
        if (rc < 0) {
            h->log(inst, ORDERD_LOG_ERR, "cannot start fsync timer: %s", strerror(-rc));
            goto fail;
        }
        fp->has_timer = 1;
    }
    *state = fp;
    return 0;

fail:
    if (rc == -ENOMEM)
        h->log(inst, ORDERD_LOG_ERR, "out of memory");
    fp_destroy(fp);
    return rc;
}

static void
fp_destroy(void *state)
{
    struct fp *fp = state;

    if (fp == NULL)
        return;
    if (fp->has_timer) {
        pthread_mutex_lock(&fp->mtx);
        fp->stopping = 1;
        pthread_cond_signal(&fp->cond);
        pthread_mutex_unlock(&fp->mtx);
        pthread_join(fp->timer, NULL);
    }
    if (fp->fd >= 0) {
        if (fp->dirty && fp->mode != FP_NEVER && fdatasync(fp->fd) < 0)
            fp->h->log(fp->inst, ORDERD_LOG_ERR, "fdatasync %s: %s", fp->path, strerror(errno));
        close(fp->fd);
    }
    pthread_cond_destroy(&fp->cond);
    pthread_mutex_destroy(&fp->mtx);
    free(fp->path);
    free(fp);
}

const orderd_stage file_publish_stage = ORDERD_STAGE(
    .kind = ORDERD_PUBLISH,
    .description = "append messages to a file as NDJSON lines",
    .options = fp_options,
    .create = fp_create,
    .process = fp_process,
    .process_batch = fp_process_batch,
    .destroy = fp_destroy);
