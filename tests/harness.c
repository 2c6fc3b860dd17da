/* harness.c - drive one real plugin .so from a unit test with a fake host.
 * See harness.h.  The message functions are the daemon's own (msg.c); the
 * engine functions record what the plugin did. */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "harness.h"
#include "loader.h"
#include "log.h"
#include "msg.h"

struct th_item {
    orderd_msg     *m;
    orderd_outcome  outcome;
    char           *reason;
};

struct th_list {
    struct th_item *v;
    size_t          n, cap;
};

struct th_metric {
    char  *name;
    double value;
};

struct th_stage {
    const struct od_plugin *plugin;
    const orderd_stage     *stage;
    void                   *state;
    char                    name[64];
    int                     started;
    int                     submit_rc;
    struct th_list          submitted;
    struct th_list          dead;
    struct th_metric       *metrics;
    size_t                  nmetrics;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t  changed = PTHREAD_COND_INITIALIZER;
static struct od_registry registry;
static int registry_ready;
static char state_dir[256];
static struct th_list settled;
static json_t *lookups;

static void list_push(struct th_list *l, orderd_msg *m, orderd_outcome o, const char *reason)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = realloc(l->v, l->cap * sizeof(*l->v));
        ck_assert_ptr_nonnull(l->v);
    }
    l->v[l->n].m = m;
    l->v[l->n].outcome = o;
    l->v[l->n].reason = reason ? strdup(reason) : NULL;
    l->n++;
}

static void list_free(struct th_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        od_msg_free(l->v[i].m);
        free(l->v[i].reason);
    }
    free(l->v);
    memset(l, 0, sizeof(*l));
}

const char *th_state_dir(void)
{
    if (state_dir[0] == '\0') {
        const char *tmp = getenv("TMPDIR");
        snprintf(state_dir, sizeof(state_dir), "%s/orderd-th-XXXXXX", tmp ? tmp : "/tmp");
        ck_assert_ptr_nonnull(mkdtemp(state_dir));
    }
    return state_dir;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

void th_rm_tree(const char *path)
{
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void th_cleanup(void)
{
    if (state_dir[0])
        th_rm_tree(state_dir);
    state_dir[0] = '\0';
    pthread_mutex_lock(&lock);
    list_free(&settled);
    json_decref(lookups);
    lookups = NULL;
    pthread_mutex_unlock(&lock);
    if (registry_ready) {
        od_registry_free(&registry);
        registry_ready = 0;
    }
    od_log_clear_secrets();
}

/* ---- fake engine functions ---------------------------------------------- */

static void th_vlog(orderd_inst *inst, int level, const char *fmt, va_list ap)
{
    struct th_stage *s = (struct th_stage *)inst;
    od_vlogf(level, "test", s ? s->name : NULL, s ? s->plugin->name : NULL, fmt, ap);
}

static void th_log(orderd_inst *inst, int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    th_vlog(inst, level, fmt, ap);
    va_end(ap);
}

static int th_has_feature(const char *name)
{
    (void)name;
    return 0;
}

static int th_submit(orderd_inst *inst, orderd_msg *m, unsigned flags)
{
    struct th_stage *s = (struct th_stage *)inst;
    int rc;

    (void)flags;
    pthread_mutex_lock(&lock);
    rc = s->submit_rc;
    if (rc == 0)
        list_push(&s->submitted, m, ORDERD_OK, NULL);
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
    if (rc != 0)
        od_msg_free(m);
    return rc;
}

static int th_dead_letter_fn(orderd_inst *inst, orderd_msg *m, const char *reason)
{
    struct th_stage *s = (struct th_stage *)inst;

    pthread_mutex_lock(&lock);
    list_push(&s->dead, m, ORDERD_REJECT, reason);
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
    return 0;
}

/* The harness records settle() calls but never owns those messages: the
 * test that passed them to process() still does. */
static void th_settle(orderd_msg *m, const orderd_result *res)
{
    (void)m;
    pthread_mutex_lock(&lock);
    list_push(&settled, NULL, res->outcome, res->reason);
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
}

static int th_lookup_fn(orderd_inst *inst, const char *pipeline, const char *key, json_t **out)
{
    json_t *doc;
    (void)inst; (void)pipeline;

    pthread_mutex_lock(&lock);
    doc = lookups ? json_object_get(lookups, key) : NULL;
    *out = doc ? json_deep_copy(doc) : NULL;
    pthread_mutex_unlock(&lock);
    return *out ? 0 : -ENOENT;
}

static struct th_metric *metric_slot(struct th_stage *s, const char *name)
{
    for (size_t i = 0; i < s->nmetrics; i++)
        if (strcmp(s->metrics[i].name, name) == 0)
            return &s->metrics[i];
    s->metrics = realloc(s->metrics, (s->nmetrics + 1) * sizeof(*s->metrics));
    ck_assert_ptr_nonnull(s->metrics);
    s->metrics[s->nmetrics].name = strdup(name);
    s->metrics[s->nmetrics].value = 0;
    return &s->metrics[s->nmetrics++];
}

static void th_metric_add(orderd_inst *inst, const char *name, double delta)
{
    pthread_mutex_lock(&lock);
    metric_slot((struct th_stage *)inst, name)->value += delta;
    pthread_mutex_unlock(&lock);
}

static void th_metric_set(orderd_inst *inst, const char *name, double value)
{
    pthread_mutex_lock(&lock);
    metric_slot((struct th_stage *)inst, name)->value = value;
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
}

static const char *th_pipeline_name(const orderd_inst *inst)
{
    (void)inst;
    return "test";
}

static const char *th_stage_name(const orderd_inst *inst)
{
    return ((const struct th_stage *)inst)->name;
}

static const char *th_state_dir_fn(void)
{
    return th_state_dir();
}

static orderd_host host;

const orderd_host *th_host(void)
{
    if (host.size == 0) {
        host = od_msg_host_part;
        host.log = th_log;
        host.vlog = th_vlog;
        host.has_feature = th_has_feature;
        host.submit = th_submit;
        host.settle = th_settle;
        host.dead_letter = th_dead_letter_fn;
        host.lookup = th_lookup_fn;
        host.metric_add = th_metric_add;
        host.metric_set = th_metric_set;
        host.pipeline_name = th_pipeline_name;
        host.stage_name = th_stage_name;
        host.state_dir = th_state_dir_fn;
    }
    return &host;
}

/* ---- stages --------------------------------------------------------------- */

struct th_stage *th_stage_try(const char *name, orderd_kind kind, const char *conf_text,
                              char *err, size_t errlen)
{
    struct th_stage *s = calloc(1, sizeof(*s));
    struct od_errs errs = { 0 };
    json_t *conf = NULL;
    char cwd[512];

    ck_assert_ptr_nonnull(s);
    if (!registry_ready) {
        const char *path = getenv("ORDERD_PLUGIN_PATH");
        ck_assert_int_eq(od_registry_init(&registry, path ? path : "."), 0);
        registry_ready = 1;
    }
    s->plugin = od_registry_get(&registry, name, err, errlen);
    if (s->plugin == NULL)
        goto fail;
    s->stage = od_plugin_stage(s->plugin, kind);
    if (s->stage == NULL) {
        snprintf(err, errlen, "plugin '%s' has no %s stage", name, od_kind_name(kind));
        goto fail;
    }
    snprintf(s->name, sizeof(s->name), "%s", name);
    if (getcwd(cwd, sizeof(cwd)) == NULL)
        snprintf(cwd, sizeof(cwd), ".");
    if (od_conf_check_stage_text(conf_text ? conf_text : "", s->stage, th_state_dir(), cwd,
                                 &conf, &errs) < 0) {
        size_t used = 0;
        err[0] = '\0';
        for (size_t i = 0; i < errs.n && used < errlen; i++)
            used += (size_t)snprintf(err + used, errlen - used, "%s%s", i ? "\n" : "", errs.msg[i]);
        od_errs_free(&errs);
        goto fail;
    }
    if (s->stage->create((orderd_inst *)s, th_host(), conf, &s->state) < 0) {
        snprintf(err, errlen, "create() of %s %s failed", name, od_kind_name(kind));
        json_decref(conf);
        goto fail;
    }
    json_decref(conf);
    return s;
fail:
    free(s);
    return NULL;
}

struct th_stage *th_stage_new(const char *name, orderd_kind kind, const char *conf_text)
{
    char err[2048];
    struct th_stage *s = th_stage_try(name, kind, conf_text, err, sizeof(err));

    if (s == NULL)
        ck_abort_msg("th_stage_new(%s): %s", name, err);
    return s;
}

void th_stage_free(struct th_stage *s)
{
    if (s == NULL)
        return;
    th_stop(s);
    if (s->stage->destroy)
        s->stage->destroy(s->state);
    pthread_mutex_lock(&lock);
    list_free(&s->submitted);
    list_free(&s->dead);
    pthread_mutex_unlock(&lock);
    for (size_t i = 0; i < s->nmetrics; i++)
        free(s->metrics[i].name);
    free(s->metrics);
    free(s);
}

int th_start(struct th_stage *s)
{
    int rc = s->stage->start ? s->stage->start(s->state) : 0;
    if (rc == 0)
        s->started = 1;
    return rc;
}

void th_stop(struct th_stage *s)
{
    if (s->started && s->stage->stop)
        s->stage->stop(s->state);
    s->started = 0;
}

orderd_outcome th_process(struct th_stage *s, orderd_msg *m)
{
    if (s->stage->process)
        return s->stage->process(s->state, m);
    orderd_result r = { .outcome = ORDERD_OK };
    orderd_msg *one[1] = { m };
    ck_assert_int_eq(s->stage->process_batch(s->state, one, 1, &r), 0);
    if (r.reason)
        od_msg_set_reason(m, r.reason);
    return r.outcome;
}

int th_process_batch(struct th_stage *s, orderd_msg *const *msgs, size_t n, orderd_result *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = (orderd_result){ .outcome = ORDERD_OK };
    if (s->stage->process_batch)
        return s->stage->process_batch(s->state, msgs, n, out);
    for (size_t i = 0; i < n; i++) {
        out[i].outcome = s->stage->process(s->state, msgs[i]);
        out[i].reason = msgs[i]->reason;
    }
    return 0;
}

int th_lookup(struct th_stage *s, const char *key, json_t **out)
{
    if (s->stage->lookup == NULL)
        return -ENOTSUP;
    return s->stage->lookup(s->state, key, out);
}

void th_ack(struct th_stage *s, orderd_msg *m, orderd_outcome o, const char *reason)
{
    if (s->stage->ack)
        s->stage->ack(s->state, m, o, reason);
}

void *th_state(struct th_stage *s)
{
    return s->state;
}

/* ---- messages -------------------------------------------------------------- */

orderd_msg *th_msg(const char *json_body)
{
    json_error_t e;
    json_t *body = json_loads(json_body, JSON_DECODE_ANY, &e);

    if (body == NULL)
        ck_abort_msg("th_msg: bad JSON at %d:%d: %s", e.line, e.column, e.text);
    orderd_msg *m = od_msg_new(body);
    ck_assert_ptr_nonnull(m);
    {
        const char *id = json_string_value(json_object_get(body, "id"));
        if (id)
            ck_assert_int_eq(th_host()->msg_set_id(m, id), 0);
    }
    return m;
}

void th_msg_free(orderd_msg *m)
{
    od_msg_free(m);
}

/* ---- what happened ------------------------------------------------------------ */

static int wait_for(const size_t *counter, size_t n, int ms)
{
    struct timespec until;
    int ok;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&lock);
    while (*counter < n)
        if (pthread_cond_timedwait(&changed, &lock, &until) == ETIMEDOUT)
            break;
    ok = *counter >= n;
    pthread_mutex_unlock(&lock);
    return ok;
}

size_t th_submitted(struct th_stage *s)
{
    size_t n;
    pthread_mutex_lock(&lock);
    n = s->submitted.n;
    pthread_mutex_unlock(&lock);
    return n;
}

orderd_msg *th_take(struct th_stage *s, size_t i)
{
    orderd_msg *m = NULL;

    pthread_mutex_lock(&lock);
    if (i < s->submitted.n) {
        m = s->submitted.v[i].m;
        s->submitted.v[i].m = NULL;
    }
    pthread_mutex_unlock(&lock);
    return m;
}

int th_wait_submitted(struct th_stage *s, size_t n, int ms)
{
    return wait_for(&s->submitted.n, n, ms);
}

void th_set_submit_result(struct th_stage *s, int rc)
{
    pthread_mutex_lock(&lock);
    s->submit_rc = rc;
    pthread_mutex_unlock(&lock);
}

size_t th_settled(struct th_stage *s)
{
    size_t n;
    (void)s;
    pthread_mutex_lock(&lock);
    n = settled.n;
    pthread_mutex_unlock(&lock);
    return n;
}

int th_wait_settled(struct th_stage *s, size_t n, int ms)
{
    (void)s;
    return wait_for(&settled.n, n, ms);
}

orderd_outcome th_settled_outcome(struct th_stage *s, size_t i, const char **reason,
                                  orderd_msg **m)
{
    orderd_outcome o;
    (void)s;
    pthread_mutex_lock(&lock);
    ck_assert_uint_lt(i, settled.n);
    o = settled.v[i].outcome;
    if (reason)
        *reason = settled.v[i].reason;
    if (m)
        *m = NULL;
    pthread_mutex_unlock(&lock);
    return o;
}

size_t th_dead_letters(struct th_stage *s)
{
    size_t n;
    pthread_mutex_lock(&lock);
    n = s->dead.n;
    pthread_mutex_unlock(&lock);
    return n;
}

const orderd_msg *th_dead_letter(struct th_stage *s, size_t i, const char **reason)
{
    const orderd_msg *m = NULL;

    pthread_mutex_lock(&lock);
    if (i < s->dead.n) {
        m = s->dead.v[i].m;
        if (reason)
            *reason = s->dead.v[i].reason;
    }
    pthread_mutex_unlock(&lock);
    return m;
}

void th_set_lookup(const char *key, const char *json)
{
    pthread_mutex_lock(&lock);
    if (lookups == NULL)
        lookups = json_object();
    if (json == NULL) {
        json_object_del(lookups, key);
    } else {
        json_error_t e;
        json_t *doc = json_loads(json, JSON_DECODE_ANY, &e);
        if (doc == NULL) {
            pthread_mutex_unlock(&lock);
            ck_abort_msg("th_set_lookup: bad JSON: %s", e.text);
        }
        json_object_set_new(lookups, key, doc);
    }
    pthread_mutex_unlock(&lock);
}

double th_metric(struct th_stage *s, const char *name)
{
    double v = 0;

    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < s->nmetrics; i++)
        if (strcmp(s->metrics[i].name, name) == 0)
            v = s->metrics[i].value;
    pthread_mutex_unlock(&lock);
    return v;
}

/* ---- peers -------------------------------------------------------------- */

int64_t th_mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void th_nap_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

    nanosleep(&ts, NULL);
}

int th_peer_start(struct th_peer *p, const char *const *argv, const char *const *env,
                  const char *portfile, int wait_ms)
{
    int64_t deadline = th_mono_ms() + wait_ms;
    pid_t parent = getpid();

    p->pid = 0;
    p->port = 0;
    unlink(portfile);
    p->pid = fork();
    if (p->pid < 0) {
        p->pid = 0;
        return -errno;
    }
    if (p->pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);

        /* Die with the test even when it is killed by a timeout. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(1);
        if (devnull >= 0)
            dup2(devnull, STDOUT_FILENO);
        for (; env != NULL && *env != NULL; env++)
            putenv((char *)*env);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    while (p->port == 0) {
        FILE *f = fopen(portfile, "r");

        if (f != NULL) {
            if (fscanf(f, "%d", &p->port) != 1)
                p->port = 0;
            fclose(f);
        }
        if (p->port != 0)
            break;
        if (waitpid(p->pid, NULL, WNOHANG) != 0) {
            p->pid = 0;
            return -ECHILD;
        }
        if (th_mono_ms() >= deadline) {
            th_peer_stop(p);
            return -ETIMEDOUT;
        }
        th_nap_ms(20);
    }
    return 0;
}

void th_peer_stop(struct th_peer *p)
{
    if (p->pid > 0) {
        kill(p->pid, SIGTERM);
        waitpid(p->pid, NULL, 0);
    }
    p->pid = 0;
}

