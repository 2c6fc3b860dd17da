/* metrics.c - the process-wide metric registry, rendered as Prometheus text 0.0.4.
 *
 * Nothing is pre-rendered: /metrics is scraped every few seconds at most,
 * while stages update their counters per message, so the hot path only does
 * relaxed atomic adds on structs the pipeline owns, and all formatting work
 * happens at scrape time.
 *
 * Rendering collects every series as an "item" (family, type, text), sorts
 * the items by family and writes one HELP/TYPE pair per family, so series of
 * one family stay together whichever part of the registry they come from.
 *
 * Two locks: mx_lock guards stages, core counters and plugin series;
 * mx_gauge_lock guards gauge callbacks and is held while they run, so a
 * callback that takes a pipeline lock cannot deadlock against a pipeline
 * thread registering a stage.
 */
#include "config.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"

const double od_lat_bounds[OD_LAT_BUCKETS] = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    1.0, 2.5, 10.0
};

/* The same bounds in nanoseconds, so observe() never touches floating point. */
static const int64_t mx_bounds_ns[OD_LAT_BUCKETS] = {
    50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000, 25000000, 50000000,
    100000000, 250000000, 1000000000, 2500000000, 10000000000
};

/* Plugin-chosen names end up in a metric name; keep them short and plain. */
#define MX_PLUGIN_NAME_MAX 100
#define MX_PLUGIN_PREFIX   "orderd_plugin_"
#define MX_PTAB_SIZE       64

enum mx_type { MX_COUNTER, MX_GAUGE, MX_HISTOGRAM };

static const char *const mx_type_names[] = { "counter", "gauge", "histogram" };

struct od_gauge_fn {
    struct od_gauge_fn *next;
    char               *name, *help, *labels;
    double            (*fn)(void *arg);
    void               *arg;
};

struct mx_counter {
    struct mx_counter *next;
    char              *name, *help, *labels;
    double             value;
};

struct mx_plugin {
    struct mx_plugin *next;
    char             *pipeline, *stage, *name;
    enum mx_type      type;
    double            value;
};

static pthread_mutex_t mx_lock = PTHREAD_MUTEX_INITIALIZER;
static struct od_stage_metrics **mx_stages;
static size_t mx_nstages, mx_stages_cap;
static struct mx_counter *mx_counters;
static struct mx_plugin *mx_ptab[MX_PTAB_SIZE];

static pthread_mutex_t mx_gauge_lock = PTHREAD_MUTEX_INITIALIZER;
static struct od_gauge_fn *mx_gauges;

/* ---- small helpers ---------------------------------------------------- */

/* Growable text buffer; after an allocation failure it stays failed, so
 * callers check once at the end instead of after every append. */
struct mx_buf {
    char   *p;
    size_t  len, cap;
    int     oom;
};

static int mx_reserve(struct mx_buf *b, size_t more)
{
    size_t cap;
    char *p;

    if (b->oom)
        return -1;
    if (b->len + more + 1 <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more + 1)
        cap *= 2;
    if ((p = realloc(b->p, cap)) == NULL) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static void mx_putn(struct mx_buf *b, const char *s, size_t n)
{
    if (mx_reserve(b, n) < 0)
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void mx_puts(struct mx_buf *b, const char *s)
{
    mx_putn(b, s, strlen(s));
}

static void mx_printf(struct mx_buf *b, const char *fmt, ...) ORDERD_PRINTF(2, 3);
static void mx_printf(struct mx_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || mx_reserve(b, (size_t)n) < 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Label values escape backslash, double quote and newline; HELP text escapes
 * only backslash and newline (format 0.0.4). */
static void mx_put_escaped(struct mx_buf *b, const char *s, int quote)
{
    for (; s != NULL && *s != '\0'; s++) {
        if (*s == '\\')
            mx_puts(b, "\\\\");
        else if (*s == '\n')
            mx_puts(b, "\\n");
        else if (*s == '"' && quote)
            mx_puts(b, "\\\"");
        else
            mx_putn(b, s, 1);
    }
}

/* Shortest text that reads back as the same double, in Prometheus' spelling
 * of the special values. */
static void mx_put_double(struct mx_buf *b, double v)
{
    char tmp[40];

    if (isnan(v)) {
        mx_puts(b, "NaN");
        return;
    }
    if (isinf(v)) {
        mx_puts(b, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    /* Integers print as integers; no floor(): the core does not link libm. */
    if (v > -1e15 && v < 1e15 && v == (double)(int64_t)v) {
        mx_printf(b, "%.0f", v);
        return;
    }
    snprintf(tmp, sizeof(tmp), "%.15g", v);
    if (strtod(tmp, NULL) != v)
        snprintf(tmp, sizeof(tmp), "%.17g", v);
    mx_puts(b, tmp);
}

/* [a-zA-Z_:][a-zA-Z0-9_:]* */
static int mx_valid_name(const char *s)
{
    if (s == NULL || *s == '\0' || (*s >= '0' && *s <= '9'))
        return 0;
    for (; *s != '\0'; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '_' || *s == ':'))
            return 0;
    return 1;
}

/* [a-z0-9_]+, as the plugin ABI promises. */
static int mx_valid_plugin_name(const char *s)
{
    size_t n = 0;

    if (s == NULL)
        return 0;
    for (; s[n] != '\0'; n++)
        if (!((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= '0' && s[n] <= '9') || s[n] == '_'))
            return 0;
    return n > 0 && n <= MX_PLUGIN_NAME_MAX;
}

static int mx_streq0(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

/* ---- registry --------------------------------------------------------- */

void od_metrics_init(void)
{
    /* Everything is statically initialised, so metrics registered before
     * init (or after a shutdown) still work; nothing to do here. */
}

static void mx_counter_free(struct mx_counter *c)
{
    free(c->name);
    free(c->help);
    free(c->labels);
    free(c);
}

static void mx_plugin_free(struct mx_plugin *p)
{
    free(p->pipeline);
    free(p->stage);
    free(p->name);
    free(p);
}

static void mx_gauge_free(struct od_gauge_fn *g)
{
    free(g->name);
    free(g->help);
    free(g->labels);
    free(g);
}

void od_metrics_shutdown(void)
{
    struct mx_counter *c;
    struct mx_plugin *p;
    struct od_gauge_fn *g;

    pthread_mutex_lock(&mx_lock);
    while ((c = mx_counters) != NULL) {
        mx_counters = c->next;
        mx_counter_free(c);
    }
    for (size_t i = 0; i < MX_PTAB_SIZE; i++)
        while ((p = mx_ptab[i]) != NULL) {
            mx_ptab[i] = p->next;
            mx_plugin_free(p);
        }
    /* Stage structs belong to their stages; only our array of pointers goes. */
    free(mx_stages);
    mx_stages = NULL;
    mx_nstages = mx_stages_cap = 0;
    pthread_mutex_unlock(&mx_lock);

    pthread_mutex_lock(&mx_gauge_lock);
    while ((g = mx_gauges) != NULL) {
        mx_gauges = g->next;
        mx_gauge_free(g);
    }
    pthread_mutex_unlock(&mx_gauge_lock);
}

void od_metrics_stage_register(struct od_stage_metrics *sm)
{
    struct od_stage_metrics **grown;
    size_t cap;

    pthread_mutex_lock(&mx_lock);
    for (size_t i = 0; i < mx_nstages; i++)
        if (mx_stages[i] == sm)
            goto out;
    if (mx_nstages == mx_stages_cap) {
        cap = mx_stages_cap ? mx_stages_cap * 2 : 16;
        if ((grown = realloc(mx_stages, cap * sizeof(*grown))) == NULL) {
            od_err("metrics: out of memory registering stage %s/%s",
                   sm->pipeline ? sm->pipeline : "", sm->stage ? sm->stage : "");
            goto out;
        }
        mx_stages = grown;
        mx_stages_cap = cap;
    }
    mx_stages[mx_nstages++] = sm;
out:
    pthread_mutex_unlock(&mx_lock);
}

void od_metrics_stage_unregister(struct od_stage_metrics *sm)
{
    int found = 0, still_used = 0;
    struct mx_plugin **pp, *p;

    pthread_mutex_lock(&mx_lock);
    for (size_t i = 0; i < mx_nstages; i++)
        if (mx_stages[i] == sm) {
            mx_stages[i] = mx_stages[--mx_nstages];
            found = 1;
            break;
        }
    if (!found)
        goto out;
    /* A plugin's series live as long as its stage: drop them when the last
     * registration of this pipeline/stage goes (a reload may briefly hold an
     * old and a new instance of the same stage). */
    for (size_t i = 0; i < mx_nstages; i++)
        if (mx_streq0(mx_stages[i]->pipeline, sm->pipeline) &&
            mx_streq0(mx_stages[i]->stage, sm->stage))
            still_used = 1;
    if (still_used)
        goto out;
    for (size_t i = 0; i < MX_PTAB_SIZE; i++)
        for (pp = &mx_ptab[i]; (p = *pp) != NULL;) {
            if (mx_streq0(p->pipeline, sm->pipeline) && mx_streq0(p->stage, sm->stage)) {
                *pp = p->next;
                mx_plugin_free(p);
            } else {
                pp = &p->next;
            }
        }
out:
    pthread_mutex_unlock(&mx_lock);
}

void od_metrics_stage_observe(struct od_stage_metrics *sm, int64_t elapsed_ns)
{
    size_t i = 0;

    /* A clock that went backwards must not wrap the unsigned sum. */
    if (elapsed_ns < 0)
        elapsed_ns = 0;
    while (i < OD_LAT_BUCKETS && elapsed_ns > mx_bounds_ns[i])
        i++;
    /* Buckets are stored non-cumulative (one add per observation) and summed
     * at render time. */
    atomic_fetch_add_explicit(&sm->lat_bucket[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&sm->lat_sum_ns, (uint_fast64_t)elapsed_ns, memory_order_relaxed);
    atomic_fetch_add_explicit(&sm->lat_count, 1, memory_order_relaxed);
}

struct od_gauge_fn *od_metrics_gauge_fn(const char *name, const char *help, const char *labels,
                                        double (*fn)(void *arg), void *arg)
{
    struct od_gauge_fn *g;

    if (!mx_valid_name(name) || fn == NULL) {
        od_err("metrics: invalid gauge '%s'", name ? name : "(null)");
        return NULL;
    }
    if ((g = calloc(1, sizeof(*g))) == NULL ||
        (g->name = strdup(name)) == NULL ||
        (g->help = strdup(help ? help : "")) == NULL ||
        (g->labels = strdup(labels ? labels : "")) == NULL) {
        od_err("metrics: out of memory registering gauge %s", name);
        goto fail;
    }
    g->fn = fn;
    g->arg = arg;
    pthread_mutex_lock(&mx_gauge_lock);
    g->next = mx_gauges;
    mx_gauges = g;
    pthread_mutex_unlock(&mx_gauge_lock);
    return g;

fail:
    if (g != NULL)
        mx_gauge_free(g);
    return NULL;
}

void od_metrics_gauge_fn_remove(struct od_gauge_fn *g)
{
    struct od_gauge_fn **pp;

    if (g == NULL)
        return;
    /* Taking the lock also waits for a render that is calling g->fn, so the
     * caller may free arg as soon as this returns. */
    pthread_mutex_lock(&mx_gauge_lock);
    for (pp = &mx_gauges; *pp != NULL; pp = &(*pp)->next)
        if (*pp == g) {
            *pp = g->next;
            mx_gauge_free(g);
            break;
        }
    pthread_mutex_unlock(&mx_gauge_lock);
}

void od_metrics_counter_add(const char *name, const char *help, const char *labels, double delta)
{
    struct mx_counter *c;

    if (!mx_valid_name(name)) {
        od_err("metrics: invalid counter name '%s'", name ? name : "(null)");
        return;
    }
    /* Counters only go up; a negative or NaN delta is a caller bug. */
    if (!(delta >= 0)) {
        od_warn("metrics: ignoring delta %g for counter %s", delta, name);
        return;
    }
    if (labels == NULL)
        labels = "";
    pthread_mutex_lock(&mx_lock);
    for (c = mx_counters; c != NULL; c = c->next)
        if (strcmp(c->name, name) == 0 && strcmp(c->labels, labels) == 0)
            break;
    if (c == NULL) {
        if ((c = calloc(1, sizeof(*c))) == NULL ||
            (c->name = strdup(name)) == NULL ||
            (c->help = strdup(help ? help : "")) == NULL ||
            (c->labels = strdup(labels)) == NULL) {
            if (c != NULL)
                mx_counter_free(c);
            od_err("metrics: out of memory creating counter %s", name);
            goto out;
        }
        c->next = mx_counters;
        mx_counters = c;
    }
    c->value += delta;
out:
    pthread_mutex_unlock(&mx_lock);
}

/* Plugin mistakes (bad name, wrong type, negative delta) can repeat per
 * message: log the first few, then stay quiet. */
static atomic_uint mx_plugin_logs;

static size_t mx_phash(const char *pipeline, const char *stage, const char *name)
{
    /* FNV-1a over the three strings with separators. */
    const char *parts[3] = { pipeline ? pipeline : "", stage ? stage : "", name };
    uint32_t h = 2166136261u;

    for (size_t i = 0; i < 3; i++) {
        for (const char *s = parts[i]; *s != '\0'; s++)
            h = (h ^ (unsigned char)*s) * 16777619u;
        h = (h ^ 0xffu) * 16777619u;
    }
    return h % MX_PTAB_SIZE;
}

static void mx_plugin_update(const char *pipeline, const char *stage, const char *name,
                             enum mx_type type, double v)
{
    struct mx_plugin *p;
    size_t h;

    if (!mx_valid_plugin_name(name)) {
        /* A plugin may do this per message: say so a few times, not forever. */
        if (atomic_fetch_add_explicit(&mx_plugin_logs, 1, memory_order_relaxed) < 10)
            od_logf(ORDERD_LOG_WARN, pipeline, stage, NULL,
                    "metrics: ignoring plugin metric '%s': names are [a-z0-9_]+ (at most %d chars)",
                    name ? name : "(null)", MX_PLUGIN_NAME_MAX);
        return;
    }
    if (type == MX_COUNTER && !(v >= 0)) {
        if (atomic_fetch_add_explicit(&mx_plugin_logs, 1, memory_order_relaxed) < 10)
            od_logf(ORDERD_LOG_WARN, pipeline, stage, NULL,
                    "metrics: ignoring delta %g for plugin counter %s", v, name);
        return;
    }
    h = mx_phash(pipeline, stage, name);
    pthread_mutex_lock(&mx_lock);
    for (p = mx_ptab[h]; p != NULL; p = p->next)
        if (strcmp(p->name, name) == 0 && mx_streq0(p->pipeline, pipeline) &&
            mx_streq0(p->stage, stage))
            break;
    if (p == NULL) {
        /* One family has one type: a name some stage uses as a counter
         * cannot become a gauge elsewhere. */
        for (size_t i = 0; i < MX_PTAB_SIZE; i++)
            for (struct mx_plugin *q = mx_ptab[i]; q != NULL; q = q->next)
                if (strcmp(q->name, name) == 0 && q->type != type)
                    goto conflict;
        if ((p = calloc(1, sizeof(*p))) == NULL ||
            (p->pipeline = strdup(pipeline ? pipeline : "")) == NULL ||
            (p->stage = strdup(stage ? stage : "")) == NULL ||
            (p->name = strdup(name)) == NULL) {
            if (p != NULL)
                mx_plugin_free(p);
            od_err("metrics: out of memory creating plugin metric %s", name);
            goto out;
        }
        p->type = type;
        p->next = mx_ptab[h];
        mx_ptab[h] = p;
    }
    if (p->type != type)
        goto conflict;
    if (type == MX_COUNTER)
        p->value += v;
    else
        p->value = v;
out:
    pthread_mutex_unlock(&mx_lock);
    return;

conflict:
    pthread_mutex_unlock(&mx_lock);
    if (atomic_fetch_add_explicit(&mx_plugin_logs, 1, memory_order_relaxed) < 10)
        od_logf(ORDERD_LOG_WARN, pipeline, stage, NULL, "metrics: plugin metric %s is a %s; ignoring %s",
                name, type == MX_COUNTER ? "gauge" : "counter",
                type == MX_COUNTER ? "metric_add" : "metric_set");
}

void od_metrics_plugin_add(const char *pipeline, const char *stage, const char *name, double delta)
{
    mx_plugin_update(pipeline, stage, name, MX_COUNTER, delta);
}

void od_metrics_plugin_set(const char *pipeline, const char *stage, const char *name, double value)
{
    mx_plugin_update(pipeline, stage, name, MX_GAUGE, value);
}

/* ---- rendering -------------------------------------------------------- */

struct mx_item {
    char         *family;
    const char   *help;     /* points into r->helps or a static string */
    enum mx_type  type;
    size_t        seq;      /* keeps collection order within a family */
    size_t        off, len; /* the series lines, in r->body */
};

struct mx_render {
    struct mx_item *items;
    size_t          n, cap;
    struct mx_buf   body;
    char          **helps;  /* owned copies of help texts of dynamic metrics */
    size_t          nhelps, helps_cap;
    int             oom;
};

/* Start an item: the caller then writes its lines to r->body and calls
 * mx_item_end().  help is copied when own_help is set. */
static void mx_item_begin(struct mx_render *r, const char *family, const char *help, int own_help,
                          enum mx_type type)
{
    struct mx_item *it;
    void *grown;

    if (r->oom)
        return;
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        if ((grown = realloc(r->items, cap * sizeof(*r->items))) == NULL)
            goto oom;
        r->items = grown;
        r->cap = cap;
    }
    if (own_help) {
        if (r->nhelps == r->helps_cap) {
            size_t cap = r->helps_cap ? r->helps_cap * 2 : 16;
            if ((grown = realloc(r->helps, cap * sizeof(*r->helps))) == NULL)
                goto oom;
            r->helps = grown;
            r->helps_cap = cap;
        }
        if ((r->helps[r->nhelps] = strdup(help ? help : "")) == NULL)
            goto oom;
        help = r->helps[r->nhelps++];
    }
    it = &r->items[r->n];
    if ((it->family = strdup(family)) == NULL)
        goto oom;
    it->help = help;
    it->type = type;
    it->seq = r->n;
    it->off = r->body.len;
    it->len = 0;
    r->n++;
    return;

oom:
    r->oom = 1;
}

static void mx_item_end(struct mx_render *r)
{
    if (r->oom || r->n == 0)
        return;
    r->items[r->n - 1].len = r->body.len - r->items[r->n - 1].off;
}

/* A stage's counters read once, so merged and rendered values agree. */
struct mx_snap {
    const char *pipeline, *stage, *plugin, *kind;
    uint64_t    in, out[5], bucket[OD_LAT_BUCKETS + 1], sum_ns;
};

static const char *const mx_outcome_names[5] = { "ok", "retry", "reject", "drop", "pending" };

static int mx_snap_cmp(const void *a, const void *b)
{
    const struct mx_snap *x = a, *y = b;
    int c;

    if ((c = strcmp(x->pipeline, y->pipeline)) != 0 || (c = strcmp(x->stage, y->stage)) != 0 ||
        (c = strcmp(x->plugin, y->plugin)) != 0)
        return c;
    return strcmp(x->kind, y->kind);
}

static void mx_stage_labels(struct mx_buf *b, const struct mx_snap *s)
{
    mx_puts(b, "pipeline=\"");
    mx_put_escaped(b, s->pipeline, 1);
    mx_puts(b, "\",stage=\"");
    mx_put_escaped(b, s->stage, 1);
    mx_puts(b, "\",plugin=\"");
    mx_put_escaped(b, s->plugin, 1);
    mx_puts(b, "\",kind=\"");
    mx_put_escaped(b, s->kind, 1);
    mx_puts(b, "\"");
}

static void mx_render_snap(struct mx_render *r, const struct mx_snap *s)
{
    struct mx_buf *b = &r->body;
    uint64_t cum = 0;

    mx_item_begin(r, "orderd_stage_messages_total",
                  "Messages that entered the stage.", 0, MX_COUNTER);
    mx_puts(b, "orderd_stage_messages_total{");
    mx_stage_labels(b, s);
    mx_printf(b, "} %" PRIu64 "\n", s->in);
    mx_item_end(r);

    mx_item_begin(r, "orderd_stage_outcomes_total",
                  "Outcomes the stage returned, by outcome.", 0, MX_COUNTER);
    for (size_t i = 0; i < 5; i++) {
        mx_puts(b, "orderd_stage_outcomes_total{");
        mx_stage_labels(b, s);
        mx_printf(b, ",outcome=\"%s\"} %" PRIu64 "\n", mx_outcome_names[i], s->out[i]);
    }
    mx_item_end(r);

    mx_item_begin(r, "orderd_stage_latency_seconds",
                  "Time the stage took per message, in seconds.", 0, MX_HISTOGRAM);
    for (size_t i = 0; i <= OD_LAT_BUCKETS; i++) {
        cum += s->bucket[i];
        mx_puts(b, "orderd_stage_latency_seconds_bucket{");
        mx_stage_labels(b, s);
        if (i < OD_LAT_BUCKETS)
            mx_printf(b, ",le=\"%g\"} %" PRIu64 "\n", od_lat_bounds[i], cum);
        else
            mx_printf(b, ",le=\"+Inf\"} %" PRIu64 "\n", cum);
    }
    mx_puts(b, "orderd_stage_latency_seconds_sum{");
    mx_stage_labels(b, s);
    mx_puts(b, "} ");
    mx_put_double(b, (double)s->sum_ns / 1e9);
    /* _count is the +Inf bucket, not lat_count: read separately they could
     * disagree by an in-flight observation, which Prometheus rejects. */
    mx_puts(b, "\n");
    mx_puts(b, "orderd_stage_latency_seconds_count{");
    mx_stage_labels(b, s);
    mx_printf(b, "} %" PRIu64 "\n", cum);
    mx_item_end(r);
}

#define MX_LOAD(x) ((uint64_t)atomic_load_explicit(&(x), memory_order_relaxed))

/* Called with mx_lock held. */
static void mx_collect_stages(struct mx_render *r)
{
    struct mx_snap *snaps;
    size_t n = 0;

    if (mx_nstages == 0)
        return;
    if ((snaps = calloc(mx_nstages, sizeof(*snaps))) == NULL) {
        r->oom = 1;
        return;
    }
    for (size_t i = 0; i < mx_nstages; i++) {
        struct od_stage_metrics *sm = mx_stages[i];
        struct mx_snap *s = &snaps[i];

        s->pipeline = sm->pipeline ? sm->pipeline : "";
        s->stage = sm->stage ? sm->stage : "";
        s->plugin = sm->plugin ? sm->plugin : "";
        s->kind = sm->kind ? sm->kind : "";
        s->in = MX_LOAD(sm->in);
        s->out[0] = MX_LOAD(sm->ok);
        s->out[1] = MX_LOAD(sm->retry);
        s->out[2] = MX_LOAD(sm->reject);
        s->out[3] = MX_LOAD(sm->drop);
        s->out[4] = MX_LOAD(sm->pending);
        for (size_t j = 0; j <= OD_LAT_BUCKETS; j++)
            s->bucket[j] = MX_LOAD(sm->lat_bucket[j]);
        s->sum_ns = MX_LOAD(sm->lat_sum_ns);
    }
    /* Registrations with identical labels (an old and a new instance during
     * a reload, or per-worker structs) are summed: duplicate series would
     * make the whole scrape invalid. */
    qsort(snaps, mx_nstages, sizeof(*snaps), mx_snap_cmp);
    for (size_t i = 0; i < mx_nstages; i++) {
        if (n > 0 && mx_snap_cmp(&snaps[n - 1], &snaps[i]) == 0) {
            struct mx_snap *d = &snaps[n - 1];
            d->in += snaps[i].in;
            for (size_t j = 0; j < 5; j++)
                d->out[j] += snaps[i].out[j];
            for (size_t j = 0; j <= OD_LAT_BUCKETS; j++)
                d->bucket[j] += snaps[i].bucket[j];
            d->sum_ns += snaps[i].sum_ns;
            continue;
        }
        snaps[n++] = snaps[i];
    }
    for (size_t i = 0; i < n; i++)
        mx_render_snap(r, &snaps[i]);
    free(snaps);
}

static void mx_put_sample(struct mx_buf *b, const char *name, const char *labels, double v)
{
    mx_puts(b, name);
    if (labels != NULL && *labels != '\0') {
        mx_puts(b, "{");
        mx_puts(b, labels);
        mx_puts(b, "}");
    }
    mx_puts(b, " ");
    mx_put_double(b, v);
    mx_puts(b, "\n");
}

/* Called with mx_lock held. */
static void mx_collect_counters(struct mx_render *r)
{
    for (struct mx_counter *c = mx_counters; c != NULL; c = c->next) {
        mx_item_begin(r, c->name, c->help, 1, MX_COUNTER);
        mx_put_sample(&r->body, c->name, c->labels, c->value);
        mx_item_end(r);
    }
}

/* Called with mx_lock held. */
static void mx_collect_plugins(struct mx_render *r)
{
    struct mx_buf name = { 0 };

    for (size_t i = 0; i < MX_PTAB_SIZE; i++)
        for (struct mx_plugin *p = mx_ptab[i]; p != NULL; p = p->next) {
            name.len = 0;
            mx_puts(&name, MX_PLUGIN_PREFIX);
            mx_puts(&name, p->name);
            if (name.oom) {
                r->oom = 1;
                goto out;
            }
            mx_item_begin(r, name.p, p->type == MX_COUNTER
                          ? "Counter reported by a plugin (see the plugin's documentation)."
                          : "Gauge reported by a plugin (see the plugin's documentation).",
                          0, p->type);
            mx_puts(&r->body, name.p);
            mx_puts(&r->body, "{pipeline=\"");
            mx_put_escaped(&r->body, p->pipeline, 1);
            mx_puts(&r->body, "\",stage=\"");
            mx_put_escaped(&r->body, p->stage, 1);
            mx_puts(&r->body, "\"} ");
            mx_put_double(&r->body, p->value);
            mx_puts(&r->body, "\n");
            mx_item_end(r);
        }
out:
    free(name.p);
}

/* Called with mx_gauge_lock held: the callbacks run here. */
static void mx_collect_gauges(struct mx_render *r)
{
    for (struct od_gauge_fn *g = mx_gauges; g != NULL; g = g->next) {
        /* A value that only grows is named ..._total and is a counter. */
        size_t n = strlen(g->name);
        bool counter = n > 6 && strcmp(g->name + n - 6, "_total") == 0;
        mx_item_begin(r, g->name, g->help, 1, counter ? MX_COUNTER : MX_GAUGE);
        mx_put_sample(&r->body, g->name, g->labels, g->fn(g->arg));
        mx_item_end(r);
    }
}

static int mx_item_cmp(const void *a, const void *b)
{
    const struct mx_item *x = a, *y = b;
    int c = strcmp(x->family, y->family);

    if (c != 0)
        return c;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static char *mx_emit(struct mx_render *r, size_t *len)
{
    struct mx_buf out = { 0 };
    const struct mx_item *fam = NULL;

    if (r->n > 0)
        qsort(r->items, r->n, sizeof(*r->items), mx_item_cmp);
    mx_reserve(&out, r->body.len + 64 * r->n);
    for (size_t i = 0; i < r->n; i++) {
        const struct mx_item *it = &r->items[i];

        if (fam == NULL || strcmp(fam->family, it->family) != 0) {
            fam = it;
            mx_printf(&out, "# HELP %s ", it->family);
            mx_put_escaped(&out, it->help, 0);
            mx_printf(&out, "\n# TYPE %s %s\n", it->family, mx_type_names[it->type]);
        }
        /* Two sources claiming one family with different types: the first
         * (in sort order) wins, rather than emitting an invalid exposition. */
        if (it->type != fam->type || it->len == 0)
            continue;
        mx_putn(&out, r->body.p + it->off, it->len);
    }
    /* An empty registry still renders as a valid (empty) exposition. */
    mx_puts(&out, "");
    if (out.oom || r->body.oom) {
        free(out.p);
        return NULL;
    }
    if (len != NULL)
        *len = out.len;
    return out.p;
}

static void mx_render_free(struct mx_render *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->items[i].family);
    free(r->items);
    for (size_t i = 0; i < r->nhelps; i++)
        free(r->helps[i]);
    free(r->helps);
    free(r->body.p);
}

char *od_metrics_render(size_t *len)
{
    struct mx_render r = { 0 };
    char *out = NULL;

    pthread_mutex_lock(&mx_lock);
    mx_collect_stages(&r);
    mx_collect_counters(&r);
    mx_collect_plugins(&r);
    pthread_mutex_unlock(&mx_lock);

    pthread_mutex_lock(&mx_gauge_lock);
    mx_collect_gauges(&r);
    pthread_mutex_unlock(&mx_gauge_lock);

    if (!r.oom)
        out = mx_emit(&r, len);
    if (out == NULL)
        od_err("metrics: out of memory rendering /metrics");
    mx_render_free(&r);
    return out;
}
