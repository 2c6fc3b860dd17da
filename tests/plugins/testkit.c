/* testkit.c - a test-only plugin whose behaviour is set by configuration, so
 * the engine's retry, dead-letter, drop, backpressure, drain and PENDING paths
 * can be exercised through the real loader.  Never installed.
 *
 * One .so provides all four kinds; transform, store and publish share one
 * process() and one option table, the store adds lookup(). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <orderd/plugin.h>

static const orderd_option tk_proc_options[] = {
    { .key = "fail_times", .type = ORDERD_T_INT, .def = "0",
      .help = "answer RETRY this many times for each message id, then go on" },
    { .key = "retry_after", .type = ORDERD_T_DURATION, .def = "0",
      .help = "minimum delay asked for with each RETRY (0: the core's backoff)" },
    { .key = "reject", .type = ORDERD_T_BOOL, .def = "false",
      .help = "REJECT every message with reject_reason" },
    { .key = "reject_reason", .type = ORDERD_T_STRING, .def = "testkit reject",
      .help = "reason given with REJECT" },
    { .key = "reject_field", .type = ORDERD_T_STRING,
      .help = "REJECT only messages whose body has this top-level field set to a truthy value" },
    { .key = "drop_field", .type = ORDERD_T_STRING,
      .help = "DROP messages whose body has this top-level field set to a truthy value" },
    { .key = "sleep", .type = ORDERD_T_DURATION, .def = "0",
      .help = "time spent on each message before answering (a slow stage)" },
    { .key = "crash_field", .type = ORDERD_T_STRING,
      .help = "abort() the process when a body has this top-level field (crash recovery tests)" },
    { .key = "pending", .type = ORDERD_T_BOOL, .def = "false",
      .help = "answer PENDING and settle OK from a background thread after pending_delay" },
    { .key = "pending_delay", .type = ORDERD_T_DURATION, .def = "10ms",
      .help = "with pending: how long after process() each message is settled" },
    { .key = "record", .type = ORDERD_T_PATH, .flags = ORDERD_OPT_STATE,
      .help = "append \"<message id>\\n\" to this file for every message answered OK" },
    { .key = "tag", .type = ORDERD_T_STRING,
      .help = "set message property \"testkit\" to this value (shows stage order)" },
    { .key = NULL }
};

static const orderd_option tk_input_options[] = {
    { .key = "count", .type = ORDERD_T_INT, .def = "0",
      .help = "submit this many messages {\"id\":\"m<N>\",\"n\":N}, N = 1..count, then stay idle" },
    { .key = "nowait", .type = ORDERD_T_BOOL, .def = "false",
      .help = "submit with NOWAIT; refusals are counted in metric testkit_refused and retried after 1 ms" },
    { .key = "record_acks", .type = ORDERD_T_PATH, .flags = ORDERD_OPT_STATE,
      .help = "append \"<id> <outcome> <reason or ->\\n\" to this file for every ack" },
    { .key = "async", .type = ORDERD_T_STRING, .choices = "no|accepted|outcome", .def = "no",
      .help = "submit with submit_async (ABI 1.1): \"accepted\" or \"outcome\" (ORDERD_SUBMIT_OUTCOME)" },
    { .key = "defer_every", .type = ORDERD_T_INT, .def = "0",
      .help = "async (ABI 1.2): submit with ORDERD_SUBMIT_DEFER and call submit_flush after every N submits (and after the last); metric testkit_flush_late counts accepted submits whose done() had not come when submit_flush returned" },
    { .key = "record_done", .type = ORDERD_T_PATH, .flags = ORDERD_OPT_STATE,
      .help = "async: append \"<id> <rc> <outcome> <reason or ->\\n\" for every completion" },
    { .key = NULL }
};

/* Per-message-id memory: RETRY counts (fail_times) and stored bodies. */
struct tk_ent {
    char          *id;
    unsigned       fails;
    json_t        *body;       /* store: last OK'd body */
    struct tk_ent *next;
};

#define TK_BUCKETS 1024

struct tk_pend {
    orderd_msg     *m;
    int64_t         due_ms;
    struct tk_pend *next;
};

struct tk {
    orderd_inst        *inst;
    const orderd_host  *h;
    orderd_kind         kind;

    /* transform / store / publish */
    int64_t             fail_times;
    int64_t             retry_after_ms;
    int                 reject;
    char               *reject_reason;
    char               *reject_field;
    char               *drop_field;
    char               *crash_field;
    int64_t             sleep_ms;
    int                 pending;
    int64_t             pending_ms;
    char               *tag;
    int                 record_fd;

    pthread_mutex_t     mtx;
    pthread_cond_t      cond;
    struct tk_ent      *tab[TK_BUCKETS];
    struct tk_pend     *pend_head, *pend_tail;   /* due times ascend: FIFO works */
    int                 stopping;
    pthread_t           thread;
    int                 has_thread;

    /* input */
    int64_t             count;
    int                 nowait;
    int                 async;          /* 0, 1 accepted, 2 outcome */
    int64_t             defer_every;    /* 0: no ORDERD_SUBMIT_DEFER */
    int64_t             deferred;       /* submits since the last flush (feed thread only) */
    int64_t             ndone;          /* done() calls (atomic) */
    int64_t             nsubmitted;     /* async submits accepted (feed thread only) */
    int                 done_fd;
};

/* One submit_async in flight: what its completion records. */
struct tk_done {
    struct tk *tk;
    char       id[32];
};

static int64_t
tk_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
tk_deadline(struct timespec *ts, int64_t due_ms)
{
    ts->tv_sec = due_ms / 1000;
    ts->tv_nsec = (due_ms % 1000) * 1000000;
}

static char *
tk_strdup(const json_t *conf, const char *key)
{
    const char *s = json_string_value(json_object_get(conf, key));

    return s && *s ? strdup(s) : NULL;
}

/* One write() per line, with O_APPEND, so concurrent writers (and processes)
 * never interleave within a line. */
static void
tk_append(const struct tk *tk, int fd, const char *line)
{
    size_t len = strlen(line);

    if (write(fd, line, len) != (ssize_t)len)
        tk->h->log(tk->inst, ORDERD_LOG_ERR, "record write failed: %s", strerror(errno));
}

static int
tk_open_record(const struct tk *tk, const json_t *conf, const char *key, int *fd)
{
    const char *path = json_string_value(json_object_get(conf, key));

    *fd = -1;
    if (path == NULL || *path == '\0')
        return 0;
    *fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (*fd < 0) {
        int rc = -errno;
        tk->h->log(tk->inst, ORDERD_LOG_ERR, "cannot open %s: %s", path, strerror(errno));
        return rc;
    }
    return 0;
}

/* The entry for id, created on demand when create is set; with tk->mtx
 * held.  NULL when absent or on ENOMEM. */
static struct tk_ent *
tk_ent(struct tk *tk, const char *id, int create)
{
    uint32_t hash = 2166136261u;

    for (const char *p = id; *p; p++)
        hash = (hash ^ (unsigned char)*p) * 16777619u;
    struct tk_ent **slot = &tk->tab[hash % TK_BUCKETS];
    for (struct tk_ent *e = *slot; e; e = e->next)
        if (strcmp(e->id, id) == 0)
            return e;
    if (!create)
        return NULL;
    struct tk_ent *e = calloc(1, sizeof(*e));
    if (e == NULL || (e->id = strdup(id)) == NULL) {
        free(e);
        return NULL;
    }
    e->next = *slot;
    *slot = e;
    return e;
}

static int
tk_truthy(json_t *body, const char *field)
{
    json_t *v = field && json_is_object(body) ? json_object_get(body, field) : NULL;

    if (v == NULL || json_is_null(v) || json_is_false(v))
        return 0;
    if (json_is_integer(v))
        return json_integer_value(v) != 0;
    if (json_is_real(v))
        return json_real_value(v) != 0.0;
    if (json_is_string(v))
        return json_string_length(v) > 0;
    return 1;
}

/* The message is done with OK: record it, and a store keeps the body. */
static void
tk_ok(struct tk *tk, orderd_msg *m)
{
    const char *id = tk->h->msg_id(m);

    if (tk->kind == ORDERD_STORE) {
        json_t *copy = json_deep_copy(tk->h->msg_body(m));
        pthread_mutex_lock(&tk->mtx);
        struct tk_ent *e = tk_ent(tk, id, 1);
        if (e != NULL) {
            json_decref(e->body);
            e->body = copy;
            copy = NULL;
        }
        pthread_mutex_unlock(&tk->mtx);
        json_decref(copy);
    }
    if (tk->record_fd >= 0) {
        char *line;
        if (asprintf(&line, "%s\n", id) >= 0) {
            tk_append(tk, tk->record_fd, line);
            free(line);
        }
    }
}

static void *
tk_settler(void *arg)
{
    struct tk *tk = arg;
    struct timespec ts;

    pthread_mutex_lock(&tk->mtx);
    for (;;) {
        struct tk_pend *p = tk->pend_head;
        if (p == NULL) {
            if (tk->stopping)
                break;
            pthread_cond_wait(&tk->cond, &tk->mtx);
            continue;
        }
        /* Even when stopping, each message waits its delay: drain tests
         * rely on the core waiting for slow settles. */
        if (tk_now_ms() < p->due_ms) {
            tk_deadline(&ts, p->due_ms);
            pthread_cond_timedwait(&tk->cond, &tk->mtx, &ts);
            continue;
        }
        tk->pend_head = p->next;
        if (tk->pend_head == NULL)
            tk->pend_tail = NULL;
        pthread_mutex_unlock(&tk->mtx);

        orderd_result res = { .outcome = ORDERD_OK };
        tk_ok(tk, p->m);
        tk->h->settle(p->m, &res);
        free(p);
        pthread_mutex_lock(&tk->mtx);
    }
    pthread_mutex_unlock(&tk->mtx);
    return NULL;
}

static orderd_outcome
tk_process(void *state, orderd_msg *m)
{
    struct tk *tk = state;
    const orderd_host *h = tk->h;
    json_t *body = h->msg_body(m);

    if (tk->crash_field && json_is_object(body) && json_object_get(body, tk->crash_field))
        abort();
    if (tk->sleep_ms > 0) {
        struct timespec ts = { tk->sleep_ms / 1000, (tk->sleep_ms % 1000) * 1000000 };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
    }
    if (tk_truthy(body, tk->drop_field))
        return ORDERD_DROP;
    if (tk->reject || tk_truthy(body, tk->reject_field))
        return h->reject(m, "%s", tk->reject_reason);
    if (tk->fail_times > 0) {
        unsigned fails = 0;
        pthread_mutex_lock(&tk->mtx);
        struct tk_ent *e = tk_ent(tk, h->msg_id(m), 1);
        if (e != NULL && e->fails < tk->fail_times)
            fails = ++e->fails;
        pthread_mutex_unlock(&tk->mtx);
        if (e == NULL)
            return h->retry(m, (uint32_t)tk->retry_after_ms, "testkit: out of memory");
        if (fails > 0)
            return h->retry(m, (uint32_t)tk->retry_after_ms, "testkit failure %u of %" PRId64,
                            fails, tk->fail_times);
    }
    if (tk->tag && h->msg_set_prop(m, "testkit", tk->tag) < 0)
        return h->retry(m, 0, "testkit: out of memory");
    if (tk->pending) {
        struct tk_pend *p = calloc(1, sizeof(*p));
        if (p == NULL)
            return h->retry(m, 0, "testkit: out of memory");
        p->m = m;
        p->due_ms = tk_now_ms() + tk->pending_ms;
        pthread_mutex_lock(&tk->mtx);
        if (tk->pend_tail)
            tk->pend_tail->next = p;
        else
            tk->pend_head = p;
        tk->pend_tail = p;
        pthread_cond_signal(&tk->cond);
        pthread_mutex_unlock(&tk->mtx);
        return ORDERD_PENDING;
    }
    tk_ok(tk, m);
    return ORDERD_OK;
}

static int
tk_lookup(void *state, const char *key, json_t **out)
{
    struct tk *tk = state;
    int rc = -ENOENT;

    pthread_mutex_lock(&tk->mtx);
    struct tk_ent *e = tk_ent(tk, key, 0);
    if (e != NULL && e->body != NULL) {
        /* A copy: the caller may change it while workers store new versions. */
        *out = json_deep_copy(e->body);
        rc = *out ? 0 : -ENOMEM;
    }
    pthread_mutex_unlock(&tk->mtx);
    return rc;
}

/* ---- input ------------------------------------------------------------- */

static const char *tk_outcome_name(orderd_outcome o);

static void
tk_done(void *arg, int rc, const orderd_result *res)
{
    struct tk_done *d = arg;
    char *line;

    if (d->tk->done_fd >= 0 &&
        asprintf(&line, "%s %d %s %s\n", d->id, rc, tk_outcome_name(res->outcome),
                 res->reason ? res->reason : "-") >= 0) {
        tk_append(d->tk, d->tk->done_fd, line);
        free(line);
    }
    __atomic_add_fetch(&d->tk->ndone, 1, __ATOMIC_RELEASE);
    free(d);
}

/* defer_every: write what was deferred; accepted done()s must all be in. */
static void
tk_flush(struct tk *tk)
{
    if (tk->deferred == 0)
        return;
    tk->deferred = 0;
    tk->h->submit_flush(tk->inst);
    int64_t late = tk->nsubmitted - __atomic_load_n(&tk->ndone, __ATOMIC_ACQUIRE);
    if (tk->async == 1)
        tk->h->metric_add(tk->inst, "testkit_flush_late", late > 0 ? (double)late : 0);
}

static int
tk_submit(struct tk *tk, orderd_msg *m, const char *id)
{
    unsigned flags = tk->nowait ? ORDERD_SUBMIT_NOWAIT : 0;
    struct tk_done *d;

    if (!tk->async)
        return tk->h->submit(tk->inst, m, flags);
    d = malloc(sizeof(*d));
    if (d == NULL) {
        tk->h->msg_free(m);
        return -ENOMEM;
    }
    d->tk = tk;
    snprintf(d->id, sizeof(d->id), "%s", id);
    if (tk->defer_every > 0)
        flags |= ORDERD_SUBMIT_DEFER;
    int rc = tk->h->submit_async(tk->inst, m, flags | (tk->async == 2 ? ORDERD_SUBMIT_OUTCOME : 0),
                                 tk_done, d);
    if (rc < 0) {
        free(d);
        return rc;
    }
    tk->nsubmitted++;
    if (tk->defer_every > 0 && ++tk->deferred >= tk->defer_every)
        tk_flush(tk);
    return rc;
}

static void *
tk_feed(void *arg)
{
    struct tk *tk = arg;
    const orderd_host *h = tk->h;
    char id[32];

    for (int64_t n = 1; n <= tk->count; n++) {
        snprintf(id, sizeof(id), "m%" PRId64, n);
        for (;;) {
            pthread_mutex_lock(&tk->mtx);
            int stop = tk->stopping;
            pthread_mutex_unlock(&tk->mtx);
            if (stop)
                return NULL;
            orderd_msg *m = h->msg_new(tk->inst, json_pack("{s:s, s:I}", "id", id, "n", (json_int_t)n));
            if (m == NULL || h->msg_set_id(m, id) < 0) {
                if (m)
                    h->msg_free(m);
                h->log(tk->inst, ORDERD_LOG_ERR, "out of memory");
                return NULL;
            }
            int rc = tk_submit(tk, m, id);
            if (rc == 0)
                break;
            if (rc == -ESHUTDOWN)
                return NULL;
            if (rc == -EAGAIN)
                h->metric_add(tk->inst, "testkit_refused", 1);
            else
                h->log(tk->inst, ORDERD_LOG_WARN, "submit %s: %s; retrying", id, strerror(-rc));
            /* 1 ms, or at once when stop() signals. */
            struct timespec ts;
            tk_deadline(&ts, tk_now_ms() + 1);
            pthread_mutex_lock(&tk->mtx);
            if (!tk->stopping)
                pthread_cond_timedwait(&tk->cond, &tk->mtx, &ts);
            pthread_mutex_unlock(&tk->mtx);
        }
        h->metric_add(tk->inst, "testkit_submitted", 1);
    }
    tk_flush(tk);
    return NULL;
}

static int
tk_start(void *state)
{
    struct tk *tk = state;

    if (tk->kind != ORDERD_INPUT || tk->has_thread)
        return 0;
    int rc = -pthread_create(&tk->thread, NULL, tk_feed, tk);
    if (rc < 0) {
        tk->h->log(tk->inst, ORDERD_LOG_ERR, "cannot start thread: %s", strerror(-rc));
        return rc;
    }
    tk->has_thread = 1;
    return 0;
}

/* Inputs: stop submitting.  Other kinds (from destroy): let the settle
 * thread finish what is pending, then end it. */
static void
tk_stop(void *state)
{
    struct tk *tk = state;

    pthread_mutex_lock(&tk->mtx);
    tk->stopping = 1;
    pthread_cond_broadcast(&tk->cond);
    pthread_mutex_unlock(&tk->mtx);
    if (tk->has_thread) {
        pthread_join(tk->thread, NULL);
        tk->has_thread = 0;
    }
}

static const char *
tk_outcome_name(orderd_outcome o)
{
    switch (o) {
    case ORDERD_OK:      return "OK";
    case ORDERD_RETRY:   return "RETRY";
    case ORDERD_REJECT:  return "REJECT";
    case ORDERD_DROP:    return "DROP";
    case ORDERD_PENDING: return "PENDING";
    }
    return "?";
}

static void
tk_ack(void *state, orderd_msg *m, orderd_outcome outcome, const char *reason)
{
    struct tk *tk = state;

    tk->h->metric_add(tk->inst, "testkit_acked", 1);
    if (tk->record_fd < 0)
        return;
    char *line;
    if (asprintf(&line, "%s %s %s\n", tk->h->msg_id(m), tk_outcome_name(outcome),
                 reason && *reason ? reason : "-") >= 0) {
        tk_append(tk, tk->record_fd, line);
        free(line);
    }
}

/* ---- life cycle -------------------------------------------------------- */

static void tk_destroy(void *state);

static int
tk_create_kind(orderd_inst *inst, const orderd_host *h, const json_t *conf, void **state,
               orderd_kind kind)
{
    struct tk *tk = calloc(1, sizeof(*tk));
    pthread_condattr_t ca;
    int rc = -ENOMEM;

    if (tk == NULL)
        return -ENOMEM;
    tk->inst = inst;
    tk->h = h;
    tk->kind = kind;
    tk->record_fd = -1;
    tk->done_fd = -1;
    pthread_mutex_init(&tk->mtx, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&tk->cond, &ca);
    pthread_condattr_destroy(&ca);

    if (kind == ORDERD_INPUT) {
        tk->count = json_integer_value(json_object_get(conf, "count"));
        tk->nowait = json_is_true(json_object_get(conf, "nowait"));
        const char *async = json_string_value(json_object_get(conf, "async"));
        tk->async = async == NULL ? 0 : strcmp(async, "accepted") == 0 ? 1
                                       : strcmp(async, "outcome") == 0 ? 2 : 0;
        tk->defer_every = json_integer_value(json_object_get(conf, "defer_every"));
        if (tk->defer_every > 0 && (!tk->async || !ORDERD_HOST_HAS(h, submit_flush))) {
            h->log(inst, ORDERD_LOG_ERR, "defer_every needs async and a host with ABI 1.2");
            rc = -EINVAL;
            goto fail;
        }
        if (tk->async && !ORDERD_HOST_HAS(h, submit_async)) {
            h->log(inst, ORDERD_LOG_ERR, "async needs a host with ABI 1.1");
            rc = -ENOTSUP;
            goto fail;
        }
        rc = tk_open_record(tk, conf, "record_acks", &tk->record_fd);
        if (rc < 0)
            goto fail;
        rc = tk_open_record(tk, conf, "record_done", &tk->done_fd);
        if (rc < 0)
            goto fail;
        *state = tk;
        return 0;
    }

    tk->fail_times = json_integer_value(json_object_get(conf, "fail_times"));
    tk->retry_after_ms = json_integer_value(json_object_get(conf, "retry_after"));
    tk->reject = json_is_true(json_object_get(conf, "reject"));
    tk->sleep_ms = json_integer_value(json_object_get(conf, "sleep"));
    tk->pending = json_is_true(json_object_get(conf, "pending"));
    tk->pending_ms = json_integer_value(json_object_get(conf, "pending_delay"));
    tk->reject_reason = tk_strdup(conf, "reject_reason");
    tk->reject_field = tk_strdup(conf, "reject_field");
    tk->drop_field = tk_strdup(conf, "drop_field");
    tk->crash_field = tk_strdup(conf, "crash_field");
    tk->tag = tk_strdup(conf, "tag");
    if (tk->reject_reason == NULL && (tk->reject_reason = strdup("testkit reject")) == NULL)
        goto fail;
    rc = tk_open_record(tk, conf, "record", &tk->record_fd);
    if (rc < 0)
        goto fail;
    if (tk->pending) {
        rc = -pthread_create(&tk->thread, NULL, tk_settler, tk);
        if (rc < 0) {
            h->log(inst, ORDERD_LOG_ERR, "cannot start settle thread: %s", strerror(-rc));
            goto fail;
        }
        tk->has_thread = 1;
    }
    *state = tk;
    return 0;

fail:
    if (rc == -ENOMEM)
        h->log(inst, ORDERD_LOG_ERR, "out of memory");
    tk_destroy(tk);
    return rc;
}

static int
tk_create_input(orderd_inst *inst, const orderd_host *h, const json_t *conf, void **state)
{
    return tk_create_kind(inst, h, conf, state, ORDERD_INPUT);
}

static int
tk_create_transform(orderd_inst *inst, const orderd_host *h, const json_t *conf, void **state)
{
    return tk_create_kind(inst, h, conf, state, ORDERD_TRANSFORM);
}

static int
tk_create_store(orderd_inst *inst, const orderd_host *h, const json_t *conf, void **state)
{
    return tk_create_kind(inst, h, conf, state, ORDERD_STORE);
}

static int
tk_create_publish(orderd_inst *inst, const orderd_host *h, const json_t *conf, void **state)
{
    return tk_create_kind(inst, h, conf, state, ORDERD_PUBLISH);
}

static void
tk_destroy(void *state)
{
    struct tk *tk = state;

    if (tk == NULL)
        return;
    tk_stop(tk);               /* joins the input or settle thread */
    for (struct tk_pend *p = tk->pend_head, *next; p; p = next) {
        next = p->next;
        free(p);
    }
    for (size_t i = 0; i < TK_BUCKETS; i++) {
        for (struct tk_ent *e = tk->tab[i], *next; e; e = next) {
            next = e->next;
            json_decref(e->body);
            free(e->id);
            free(e);
        }
    }
    if (tk->record_fd >= 0)
        close(tk->record_fd);
    if (tk->done_fd >= 0)
        close(tk->done_fd);
    pthread_cond_destroy(&tk->cond);
    pthread_mutex_destroy(&tk->mtx);
    free(tk->reject_reason);
    free(tk->reject_field);
    free(tk->drop_field);
    free(tk->crash_field);
    free(tk->tag);
    free(tk);
}

static const orderd_stage tk_input = ORDERD_STAGE(
    .kind = ORDERD_INPUT,
    .description = "test input: submits count numbered messages, records acks",
    .options = tk_input_options,
    .create = tk_create_input,
    .start = tk_start,
    .stop = tk_stop,
    .ack = tk_ack,
    .destroy = tk_destroy);

static const orderd_stage tk_transform = ORDERD_STAGE(
    .kind = ORDERD_TRANSFORM,
    .flags = ORDERD_SF_ASYNC_SETTLE,
    .description = "test transform: retry, reject, drop, sleep, crash or settle later on demand",
    .options = tk_proc_options,
    .create = tk_create_transform,
    .process = tk_process,
    .destroy = tk_destroy);

static const orderd_stage tk_store = ORDERD_STAGE(
    .kind = ORDERD_STORE,
    .flags = ORDERD_SF_ASYNC_SETTLE,
    .description = "test store: as the transform, and keeps OK'd bodies for lookup()",
    .options = tk_proc_options,
    .create = tk_create_store,
    .process = tk_process,
    .lookup = tk_lookup,
    .destroy = tk_destroy);

static const orderd_stage tk_publish = ORDERD_STAGE(
    .kind = ORDERD_PUBLISH,
    .flags = ORDERD_SF_ASYNC_SETTLE,
    .description = "test publisher: as the transform",
    .options = tk_proc_options,
    .create = tk_create_publish,
    .process = tk_process,
    .destroy = tk_destroy);

static const orderd_stage *const tk_stages[] = {
    &tk_input, &tk_transform, &tk_store, &tk_publish, NULL
};

ORDERD_PLUGIN(.name = "testkit",
              .version = "1.0",
              .description = "configurable test stages (never installed)",
              .maintainer = "orderd developers",
              .stages = tk_stages);
