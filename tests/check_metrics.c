/* check_metrics.c - the metric registry, checked by parsing its Prometheus text back. */
#include "config.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "metrics.h"

/* ---- a small, strict parser for text format 0.0.4 ---------------------- */

#define MAX_LABELS 8

struct sample {
    char   *name;
    int     nl;
    char   *lk[MAX_LABELS], *lv[MAX_LABELS];
    double  v;
};

struct expo {
    struct sample *s;
    size_t         n;
    char         **fams;     /* families with a TYPE line, in order */
    char         **types;
    char         **helps;    /* HELP text (unescaped) per family */
    size_t         nfams;
};

static char *dupn(const char *s, size_t n)
{
    char *p = malloc(n + 1);

    ck_assert_ptr_nonnull(p);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* Label value: unescape \\ \" \n; anything else after a backslash is invalid. */
static const char *parse_quoted(const char *p, char **out)
{
    char *buf = malloc(strlen(p) + 1);
    size_t n = 0;

    ck_assert_ptr_nonnull(buf);
    ck_assert_msg(*p == '"', "label value must be quoted at: %s", p);
    for (p++; *p != '"'; p++) {
        ck_assert_msg(*p != '\0' && *p != '\n', "unterminated label value");
        if (*p == '\\') {
            p++;
            ck_assert_msg(*p == '\\' || *p == '"' || *p == 'n', "bad escape \\%c", *p);
            buf[n++] = *p == 'n' ? '\n' : *p;
        } else {
            buf[n++] = *p;
        }
    }
    buf[n] = '\0';
    *out = buf;
    return p + 1;
}

static double parse_value(const char *s)
{
    char *end;
    double v;

    if (strcmp(s, "+Inf") == 0)
        return INFINITY;
    if (strcmp(s, "-Inf") == 0)
        return -INFINITY;
    if (strcmp(s, "NaN") == 0)
        return NAN;
    v = strtod(s, &end);
    ck_assert_msg(end != s && *end == '\0', "bad sample value '%s'", s);
    return v;
}

static int name_in_family(const char *name, const char *fam, const char *type)
{
    size_t n = strlen(fam);

    if (strcmp(name, fam) == 0)
        return strcmp(type, "histogram") != 0;
    if (strcmp(type, "histogram") != 0 || strncmp(name, fam, n) != 0)
        return 0;
    return strcmp(name + n, "_bucket") == 0 || strcmp(name + n, "_sum") == 0 ||
           strcmp(name + n, "_count") == 0;
}

static void parse(const char *text, struct expo *e)
{
    const char *line = text, *nl;
    const char *cur_fam = NULL, *cur_type = NULL;

    memset(e, 0, sizeof(*e));
    ck_assert_ptr_nonnull(text);
    e->s = calloc(strlen(text) / 4 + 1, sizeof(*e->s));
    e->fams = calloc(strlen(text) / 8 + 1, sizeof(char *));
    e->types = calloc(strlen(text) / 8 + 1, sizeof(char *));
    e->helps = calloc(strlen(text) / 8 + 1, sizeof(char *));
    for (; *line != '\0'; line = nl + 1) {
        char *l;
        ck_assert_msg((nl = strchr(line, '\n')) != NULL, "last line lacks a newline");
        l = dupn(line, (size_t)(nl - line));
        if (strncmp(l, "# HELP ", 7) == 0) {
            char *sp = strchr(l + 7, ' ');
            ck_assert_ptr_nonnull(sp);
            /* HELP must immediately precede TYPE of the same family here. */
            ck_assert_msg(strncmp(nl + 1, "# TYPE ", 7) == 0, "HELP not followed by TYPE");
            e->helps[e->nfams] = dupn(sp + 1, strlen(sp + 1));
        } else if (strncmp(l, "# TYPE ", 7) == 0) {
            char *sp = strchr(l + 7, ' ');
            ck_assert_ptr_nonnull(sp);
            *sp = '\0';
            for (size_t i = 0; i < e->nfams; i++)
                ck_assert_msg(strcmp(e->fams[i], l + 7) != 0, "family %s has two TYPE lines", l + 7);
            ck_assert_msg(strcmp(sp + 1, "counter") == 0 || strcmp(sp + 1, "gauge") == 0 ||
                          strcmp(sp + 1, "histogram") == 0, "bad type %s", sp + 1);
            e->fams[e->nfams] = strdup(l + 7);
            e->types[e->nfams] = strdup(sp + 1);
            cur_fam = e->fams[e->nfams];
            cur_type = e->types[e->nfams];
            e->nfams++;
        } else {
            struct sample *s = &e->s[e->n++];
            const char *p = l, *v;
            while (*p != '\0' && *p != '{' && *p != ' ')
                p++;
            s->name = dupn(l, (size_t)(p - l));
            ck_assert_msg(cur_fam != NULL && name_in_family(s->name, cur_fam, cur_type),
                          "sample %s outside its family block (%s)", s->name, cur_fam ? cur_fam : "-");
            if (*p == '{') {
                p++;
                while (*p != '}') {
                    const char *eq = strchr(p, '=');
                    ck_assert_ptr_nonnull(eq);
                    ck_assert_int_lt(s->nl, MAX_LABELS);
                    s->lk[s->nl] = dupn(p, (size_t)(eq - p));
                    p = parse_quoted(eq + 1, &s->lv[s->nl]);
                    s->nl++;
                    if (*p == ',')
                        p++;
                    else
                        ck_assert_msg(*p == '}', "bad label list in: %s", l);
                }
                p++;
            }
            ck_assert_msg(*p == ' ', "no value in: %s", l);
            v = p + 1;
            s->v = parse_value(v);
        }
        free(l);
    }
}

static void expo_free(struct expo *e)
{
    for (size_t i = 0; i < e->n; i++) {
        free(e->s[i].name);
        for (int j = 0; j < e->s[i].nl; j++) {
            free(e->s[i].lk[j]);
            free(e->s[i].lv[j]);
        }
    }
    for (size_t i = 0; i < e->nfams; i++) {
        free(e->fams[i]);
        free(e->types[i]);
        free(e->helps[i]);
    }
    free(e->s);
    free(e->fams);
    free(e->types);
    free(e->helps);
}

static int sample_matches(const struct sample *s, const char *name, va_list ap)
{
    const char *k, *v;

    if (strcmp(s->name, name) != 0)
        return 0;
    while ((k = va_arg(ap, const char *)) != NULL) {
        int found = 0;
        v = va_arg(ap, const char *);
        for (int i = 0; i < s->nl; i++)
            if (strcmp(s->lk[i], k) == 0 && strcmp(s->lv[i], v) == 0)
                found = 1;
        if (!found)
            return 0;
    }
    return 1;
}

/* Samples named name whose labels include every (key, value) pair given. */
static size_t count(const struct expo *e, const char *name, ...)
{
    size_t n = 0;
    va_list ap;

    for (size_t i = 0; i < e->n; i++) {
        va_start(ap, name);
        n += (size_t)sample_matches(&e->s[i], name, ap);
        va_end(ap);
    }
    return n;
}

/* The one sample matching; fails the test when there is not exactly one. */
static double get(const struct expo *e, const char *name, ...)
{
    size_t n = 0;
    double v = NAN;
    va_list ap;

    for (size_t i = 0; i < e->n; i++) {
        va_start(ap, name);
        if (sample_matches(&e->s[i], name, ap)) {
            n++;
            v = e->s[i].v;
        }
        va_end(ap);
    }
    ck_assert_msg(n == 1, "%zu samples of %s match, wanted 1", n, name);
    return v;
}

static const char *type_of(const struct expo *e, const char *fam)
{
    for (size_t i = 0; i < e->nfams; i++)
        if (strcmp(e->fams[i], fam) == 0)
            return e->types[i];
    return NULL;
}

static void render(struct expo *e)
{
    size_t len = 0;
    char *text = od_metrics_render(&len);

    ck_assert_ptr_nonnull(text);
    ck_assert_uint_eq(len, strlen(text));
    parse(text, e);
    free(text);
}

static size_t occurrences(const char *hay, const char *needle)
{
    size_t n = 0;

    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

static void stage_init(struct od_stage_metrics *sm, const char *pipeline, const char *stage,
                       const char *plugin, const char *kind)
{
    memset(sm, 0, sizeof(*sm));
    sm->pipeline = pipeline;
    sm->stage = stage;
    sm->plugin = plugin;
    sm->kind = kind;
}

#define S(p, s) "pipeline", (p), "stage", (s)

/* ---- tests ------------------------------------------------------------- */

START_TEST(test_bounds)
{
    struct od_stage_metrics sm;
    struct expo e;
    char le[32];

    ck_assert(od_lat_bounds[0] >= 0.00005 - 1e-12);
    ck_assert(od_lat_bounds[OD_LAT_BUCKETS - 1] <= 10.0 + 1e-9);
    for (size_t i = 1; i < OD_LAT_BUCKETS; i++)
        ck_assert(od_lat_bounds[i] > od_lat_bounds[i - 1]);

    /* An observation exactly on a bound counts in that bucket (le is <=),
     * one nanosecond more goes to the next: checks the ns table matches. */
    stage_init(&sm, "p", "s", "x", "transform");
    od_metrics_stage_register(&sm);
    for (size_t i = 0; i < OD_LAT_BUCKETS; i++) {
        int64_t ns = llround(od_lat_bounds[i] * 1e9);
        od_metrics_stage_observe(&sm, ns);
        od_metrics_stage_observe(&sm, ns + 1);
    }
    render(&e);
    for (size_t i = 0; i < OD_LAT_BUCKETS; i++) {
        snprintf(le, sizeof(le), "%g", od_lat_bounds[i]);
        /* bucket i holds: exact bound of 0..i, and bound+1 of 0..i-1 */
        ck_assert_double_eq(get(&e, "orderd_stage_latency_seconds_bucket", "le", le, NULL),
                            (double)(2 * i + 1));
    }
    ck_assert_double_eq(get(&e, "orderd_stage_latency_seconds_bucket", "le", "+Inf", NULL),
                        2.0 * OD_LAT_BUCKETS);
    expo_free(&e);
    od_metrics_stage_unregister(&sm);
    od_metrics_shutdown();
}
END_TEST

START_TEST(test_stage_counts_and_histogram)
{
    struct od_stage_metrics sm;
    struct expo e;
    double prev = -1, sum;

    od_metrics_init();
    stage_init(&sm, "intake", "validate", "validate", "transform");
    od_metrics_stage_register(&sm);
    atomic_store(&sm.in, 7);
    atomic_store(&sm.ok, 3);
    atomic_store(&sm.retry, 2);
    atomic_store(&sm.reject, 1);
    atomic_store(&sm.drop, 1);
    od_metrics_stage_observe(&sm, 100000);        /* 0.1 ms */
    od_metrics_stage_observe(&sm, 1000000);       /* 1 ms, on a bound */
    od_metrics_stage_observe(&sm, 3000000);       /* 3 ms */
    od_metrics_stage_observe(&sm, 20000000000);   /* 20 s, past the last bound */
    od_metrics_stage_observe(&sm, -5);            /* clock step: counts as 0 */
    render(&e);

    ck_assert_str_eq(type_of(&e, "orderd_stage_messages_total"), "counter");
    ck_assert_str_eq(type_of(&e, "orderd_stage_outcomes_total"), "counter");
    ck_assert_str_eq(type_of(&e, "orderd_stage_latency_seconds"), "histogram");
    ck_assert_double_eq(get(&e, "orderd_stage_messages_total", S("intake", "validate"),
                            "plugin", "validate", "kind", "transform", NULL), 7);
    ck_assert_double_eq(get(&e, "orderd_stage_outcomes_total", "outcome", "ok", NULL), 3);
    ck_assert_double_eq(get(&e, "orderd_stage_outcomes_total", "outcome", "retry", NULL), 2);
    ck_assert_double_eq(get(&e, "orderd_stage_outcomes_total", "outcome", "reject", NULL), 1);
    ck_assert_double_eq(get(&e, "orderd_stage_outcomes_total", "outcome", "drop", NULL), 1);
    ck_assert_double_eq(get(&e, "orderd_stage_outcomes_total", "outcome", "pending", NULL), 0);

    ck_assert_double_eq(get(&e, "orderd_stage_latency_seconds_bucket", "le", "0.0005", NULL), 2);
    ck_assert_double_eq(get(&e, "orderd_stage_latency_seconds_bucket", "le", "0.001", NULL), 3);
    ck_assert_double_eq(get(&e, "orderd_stage_latency_seconds_bucket", "le", "0.0025", NULL), 3);
    ck_assert_double_eq(get(&e, "orderd_stage_latency_seconds_bucket", "le", "0.005", NULL), 4);
    ck_assert_double_eq(get(&e, "orderd_stage_latency_seconds_bucket", "le", "10", NULL), 4);
    ck_assert_double_eq(get(&e, "orderd_stage_latency_seconds_bucket", "le", "+Inf", NULL), 5);
    ck_assert_double_eq(get(&e, "orderd_stage_latency_seconds_count", NULL), 5);
    sum = get(&e, "orderd_stage_latency_seconds_sum", NULL);
    ck_assert_double_eq_tol(sum, 20.0041, 1e-9);

    /* Buckets are cumulative, in order of le, and end at +Inf == _count. */
    ck_assert_uint_eq(count(&e, "orderd_stage_latency_seconds_bucket", NULL), OD_LAT_BUCKETS + 1);
    for (size_t i = 0; i < e.n; i++) {
        if (strcmp(e.s[i].name, "orderd_stage_latency_seconds_bucket") != 0)
            continue;
        ck_assert(e.s[i].v >= prev);
        prev = e.s[i].v;
    }
    ck_assert_double_eq(prev, 5);
    expo_free(&e);
    od_metrics_stage_unregister(&sm);
    od_metrics_shutdown();
}
END_TEST

static double gauge_value(void *arg)
{
    return *(double *)arg;
}

START_TEST(test_help_type_once_per_family)
{
    struct od_stage_metrics a, b, dup;
    struct od_gauge_fn *g1, *g2;
    double v1 = 4, v2 = 9;
    struct expo e;
    char *text;

    stage_init(&a, "p1", "in", "http", "input");
    stage_init(&b, "p2", "st", "sqlite", "store");
    /* A second registration with a's labels (a reload's overlap) is summed,
     * never rendered as a duplicate series. */
    stage_init(&dup, "p1", "in", "http", "input");
    atomic_store(&a.in, 2);
    atomic_store(&dup.in, 5);
    od_metrics_stage_register(&a);
    od_metrics_stage_register(&b);
    od_metrics_stage_register(&dup);
    od_metrics_stage_register(&a);   /* twice: still one registration */
    g1 = od_metrics_gauge_fn("orderd_queue_depth", "Messages waiting.", "pipeline=\"p1\"", gauge_value, &v1);
    g2 = od_metrics_gauge_fn("orderd_queue_depth", "Messages waiting.", "pipeline=\"p2\"", gauge_value, &v2);
    ck_assert_ptr_nonnull(g1);
    ck_assert_ptr_nonnull(g2);
    od_metrics_counter_add("orderd_dead_letters_total", "Dead letters.", "pipeline=\"p1\"", 1);
    od_metrics_counter_add("orderd_dead_letters_total", "Dead letters.", "pipeline=\"p2\"", 1);
    od_metrics_plugin_add("p1", "in", "requests", 1);
    od_metrics_plugin_add("p2", "st", "requests", 1);

    text = od_metrics_render(NULL);
    ck_assert_ptr_nonnull(text);
    ck_assert_uint_eq(occurrences(text, "# TYPE orderd_stage_messages_total "), 1);
    ck_assert_uint_eq(occurrences(text, "# HELP orderd_stage_messages_total "), 1);
    ck_assert_uint_eq(occurrences(text, "# TYPE orderd_stage_latency_seconds "), 1);
    ck_assert_uint_eq(occurrences(text, "# TYPE orderd_queue_depth gauge"), 1);
    ck_assert_uint_eq(occurrences(text, "# TYPE orderd_dead_letters_total counter"), 1);
    ck_assert_uint_eq(occurrences(text, "# TYPE orderd_plugin_requests counter"), 1);
    parse(text, &e);   /* also checks each family's samples are contiguous */
    free(text);
    ck_assert_uint_eq(count(&e, "orderd_stage_messages_total", NULL), 2);
    ck_assert_double_eq(get(&e, "orderd_stage_messages_total", "pipeline", "p1", NULL), 7);
    ck_assert_double_eq(get(&e, "orderd_queue_depth", "pipeline", "p2", NULL), 9);
    ck_assert_uint_eq(count(&e, "orderd_dead_letters_total", NULL), 2);
    ck_assert_uint_eq(count(&e, "orderd_plugin_requests", NULL), 2);
    for (size_t i = 0; i < e.nfams; i++)
        ck_assert_msg(e.helps[i] != NULL && e.helps[i][0] != '\0', "family %s has no HELP", e.fams[i]);
    expo_free(&e);

    od_metrics_gauge_fn_remove(g1);
    od_metrics_gauge_fn_remove(g2);
    od_metrics_stage_unregister(&a);
    od_metrics_stage_unregister(&b);
    od_metrics_stage_unregister(&dup);
    od_metrics_shutdown();
}
END_TEST

START_TEST(test_label_escaping)
{
    static const char nasty[] = "a\"b\\c\nd";
    struct od_stage_metrics sm;
    struct expo e;
    char *text;

    stage_init(&sm, nasty, "st\"age", "plug\\in", "transform");
    od_metrics_stage_register(&sm);
    od_metrics_plugin_set(nasty, "s\n", "depth", 3);
    od_metrics_counter_add("orderd_x_total", "Help with \\ and\nnewline.", "", 1);
    text = od_metrics_render(NULL);
    ck_assert_ptr_nonnull(text);
    /* The raw text holds the escaped spelling ... */
    ck_assert_ptr_nonnull(strstr(text, "pipeline=\"a\\\"b\\\\c\\nd\""));
    ck_assert_ptr_nonnull(strstr(text, "stage=\"st\\\"age\""));
    ck_assert_ptr_nonnull(strstr(text, "plugin=\"plug\\\\in\""));
    ck_assert_ptr_nonnull(strstr(text, "# HELP orderd_x_total Help with \\\\ and\\nnewline.\n"));
    /* ... and reads back as the original strings. */
    parse(text, &e);
    free(text);
    ck_assert_double_eq(get(&e, "orderd_stage_messages_total", "pipeline", nasty,
                            "stage", "st\"age", "plugin", "plug\\in", NULL), 0);
    ck_assert_double_eq(get(&e, "orderd_plugin_depth", "pipeline", nasty, "stage", "s\n", NULL), 3);
    expo_free(&e);
    od_metrics_stage_unregister(&sm);
    od_metrics_shutdown();
}
END_TEST

START_TEST(test_unregister_removes_series)
{
    struct od_stage_metrics a, b;
    struct expo e;

    stage_init(&a, "p", "a", "file", "input");
    stage_init(&b, "p", "b", "file", "publish");
    od_metrics_stage_register(&a);
    od_metrics_stage_register(&b);
    od_metrics_plugin_add("p", "a", "lines", 5);
    od_metrics_plugin_add("p", "b", "lines", 6);
    render(&e);
    ck_assert_uint_eq(count(&e, "orderd_stage_messages_total", NULL), 2);
    ck_assert_uint_eq(count(&e, "orderd_plugin_lines", NULL), 2);
    expo_free(&e);

    /* The stage's series and its plugin's series go with it; b stays. */
    od_metrics_stage_unregister(&a);
    od_metrics_stage_unregister(&a);   /* unknown now: ignored */
    render(&e);
    ck_assert_uint_eq(count(&e, "orderd_stage_messages_total", "stage", "a", NULL), 0);
    ck_assert_uint_eq(count(&e, "orderd_stage_latency_seconds_bucket", "stage", "a", NULL), 0);
    ck_assert_uint_eq(count(&e, "orderd_plugin_lines", "stage", "a", NULL), 0);
    ck_assert_double_eq(get(&e, "orderd_plugin_lines", "stage", "b", NULL), 6);
    ck_assert_uint_eq(count(&e, "orderd_stage_messages_total", "stage", "b", NULL), 1);
    expo_free(&e);

    /* While another registration of p/b remains (a reload overlap), the
     * plugin's series stay. */
    stage_init(&a, "p", "b", "file", "publish");
    od_metrics_stage_register(&a);
    od_metrics_stage_unregister(&b);
    render(&e);
    ck_assert_double_eq(get(&e, "orderd_plugin_lines", "stage", "b", NULL), 6);
    expo_free(&e);
    od_metrics_stage_unregister(&a);
    render(&e);
    ck_assert_uint_eq(e.n, 0);
    ck_assert_uint_eq(e.nfams, 0);
    expo_free(&e);
    od_metrics_shutdown();
}
END_TEST

START_TEST(test_gauge_fn_values)
{
    double v = 1.5, special;
    struct od_gauge_fn *g, *gi, *gn;
    struct expo e;
    char *text;

    g = od_metrics_gauge_fn("orderd_spool_bytes", "Bytes in the spool.", "pipeline=\"x\"", gauge_value, &v);
    ck_assert_ptr_nonnull(g);
    ck_assert_ptr_null(od_metrics_gauge_fn("bad name", "h", "", gauge_value, &v));
    ck_assert_ptr_null(od_metrics_gauge_fn("9lives", "h", "", gauge_value, &v));
    render(&e);
    ck_assert_double_eq(get(&e, "orderd_spool_bytes", "pipeline", "x", NULL), 1.5);
    expo_free(&e);

    /* Read at render time, not at registration. */
    v = 0.1;
    text = od_metrics_render(NULL);
    ck_assert_ptr_nonnull(strstr(text, "orderd_spool_bytes{pipeline=\"x\"} 0.1\n"));
    free(text);
    v = 12345678;
    text = od_metrics_render(NULL);
    ck_assert_ptr_nonnull(strstr(text, "orderd_spool_bytes{pipeline=\"x\"} 12345678\n"));
    free(text);

    /* A ..._total function is a counter. */
    gi = od_metrics_gauge_fn("orderd_spool_commits_total", "Commits.", "", gauge_value, &v);
    text = od_metrics_render(NULL);
    ck_assert_ptr_nonnull(strstr(text, "# TYPE orderd_spool_commits_total counter\n"));
    ck_assert_ptr_nonnull(strstr(text, "# TYPE orderd_spool_bytes gauge\n"));
    free(text);
    od_metrics_gauge_fn_remove(gi);

    special = INFINITY;
    gi = od_metrics_gauge_fn("orderd_inf", "h", "", gauge_value, &special);
    text = od_metrics_render(NULL);
    ck_assert_ptr_nonnull(strstr(text, "\norderd_inf +Inf\n"));
    free(text);
    od_metrics_gauge_fn_remove(gi);
    special = NAN;
    gn = od_metrics_gauge_fn("orderd_nan", "h", "", gauge_value, &special);
    text = od_metrics_render(NULL);
    ck_assert_ptr_nonnull(strstr(text, "\norderd_nan NaN\n"));
    ck_assert_ptr_null(strstr(text, "orderd_inf"));
    free(text);
    od_metrics_gauge_fn_remove(gn);

    od_metrics_gauge_fn_remove(g);
    od_metrics_gauge_fn_remove(NULL);
    render(&e);
    ck_assert_uint_eq(count(&e, "orderd_spool_bytes", NULL), 0);
    expo_free(&e);
    od_metrics_shutdown();
}
END_TEST

START_TEST(test_counter_add)
{
    struct expo e;

    od_metrics_counter_add("orderd_reloads_total", "Configuration reloads.", NULL, 1);
    od_metrics_counter_add("orderd_reloads_total", "Configuration reloads.", "", 2);
    od_metrics_counter_add("orderd_dlq_total", "Dead letters.", "pipeline=\"a\"", 1);
    od_metrics_counter_add("orderd_dlq_total", "Dead letters.", "pipeline=\"b\"", 0.5);
    od_metrics_counter_add("orderd_dlq_total", "Dead letters.", "pipeline=\"a\"", 2);
    od_metrics_counter_add("orderd_dlq_total", "Dead letters.", "pipeline=\"a\"", -10);  /* ignored */
    od_metrics_counter_add("orderd_dlq_total", "Dead letters.", "pipeline=\"a\"", NAN);  /* ignored */
    od_metrics_counter_add("bad-name", "x", "", 1);                                     /* ignored */
    render(&e);
    ck_assert_str_eq(type_of(&e, "orderd_reloads_total"), "counter");
    ck_assert_double_eq(get(&e, "orderd_reloads_total", NULL), 3);
    ck_assert_double_eq(get(&e, "orderd_dlq_total", "pipeline", "a", NULL), 3);
    ck_assert_double_eq(get(&e, "orderd_dlq_total", "pipeline", "b", NULL), 0.5);
    ck_assert_uint_eq(e.nfams, 2);
    expo_free(&e);
    od_metrics_shutdown();
}
END_TEST

START_TEST(test_plugin_metrics)
{
    struct expo e;

    od_metrics_plugin_add("p", "s", "http_requests", 1);
    od_metrics_plugin_add("p", "s", "http_requests", 2);
    od_metrics_plugin_set("p", "s", "inflight", 7);
    od_metrics_plugin_set("p", "s", "inflight", 4);
    /* Names outside [a-z0-9_]+ are refused. */
    od_metrics_plugin_add("p", "s", "Bad", 1);
    od_metrics_plugin_add("p", "s", "a-b", 1);
    od_metrics_plugin_add("p", "s", "", 1);
    od_metrics_plugin_add("p", "s", "x y", 1);
    od_metrics_plugin_add("p", "s", NULL, 1);
    /* A counter cannot turn into a gauge, nor the reverse, not even in
     * another stage (one family, one type). */
    od_metrics_plugin_set("p", "s", "http_requests", 100);
    od_metrics_plugin_add("p", "s", "inflight", 1);
    od_metrics_plugin_set("p", "other", "http_requests", 1);
    od_metrics_plugin_add("p", "s", "http_requests", -1);   /* counters only go up */
    render(&e);
    ck_assert_uint_eq(e.nfams, 2);
    ck_assert_str_eq(type_of(&e, "orderd_plugin_http_requests"), "counter");
    ck_assert_str_eq(type_of(&e, "orderd_plugin_inflight"), "gauge");
    ck_assert_double_eq(get(&e, "orderd_plugin_http_requests", S("p", "s"), NULL), 3);
    ck_assert_double_eq(get(&e, "orderd_plugin_inflight", S("p", "s"), NULL), 4);
    ck_assert_uint_eq(e.n, 2);
    expo_free(&e);
    od_metrics_shutdown();
}
END_TEST

START_TEST(test_shutdown_frees_everything)
{
    struct od_stage_metrics sm;
    double v = 1;
    struct expo e;

    stage_init(&sm, "p", "s", "x", "store");
    od_metrics_stage_register(&sm);
    ck_assert_ptr_nonnull(od_metrics_gauge_fn("orderd_g", "g", "", gauge_value, &v));
    od_metrics_counter_add("orderd_c_total", "c", "", 1);
    od_metrics_plugin_add("p", "s", "n", 1);
    od_metrics_shutdown();
    /* Nothing left (LeakSanitizer checks the memory went too). */
    render(&e);
    ck_assert_uint_eq(e.n, 0);
    expo_free(&e);
    /* And the registry works again afterwards. */
    od_metrics_counter_add("orderd_c_total", "c", "", 1);
    render(&e);
    ck_assert_double_eq(get(&e, "orderd_c_total", NULL), 1);
    expo_free(&e);
    od_metrics_shutdown();
}
END_TEST

/* ---- concurrency smoke ------------------------------------------------- */

#define WORKERS 4
#define ROUNDS  20000

static struct od_stage_metrics shared_sm;
static atomic_int stop_flag;

static void *worker(void *arg)
{
    for (int i = 0; i < ROUNDS; i++) {
        atomic_fetch_add_explicit(&shared_sm.in, 1, memory_order_relaxed);
        od_metrics_stage_observe(&shared_sm, (int64_t)(i % 7) * 1000000);
        if (i % 10 == 0) {
            od_metrics_counter_add("orderd_smoke_total", "Smoke.", "", 1);
            od_metrics_plugin_add("p", "shared", "smoke", 1);
        }
    }
    return arg;
}

static void *churner(void *arg)
{
    /* Stages come and go while others render. */
    while (!atomic_load(&stop_flag)) {
        struct od_stage_metrics tmp;
        stage_init(&tmp, "p", "tmp", "x", "transform");
        od_metrics_stage_register(&tmp);
        od_metrics_stage_observe(&tmp, 1);
        od_metrics_plugin_set("p", "tmp", "gauge", 1);
        od_metrics_stage_unregister(&tmp);
    }
    return arg;
}

static void *renderer(void *arg)
{
    while (!atomic_load(&stop_flag)) {
        struct expo e;
        render(&e);   /* every intermediate rendering must parse */
        expo_free(&e);
    }
    return arg;
}

START_TEST(test_concurrency_smoke)
{
    pthread_t w[WORKERS], c, r;
    struct expo e;

    stage_init(&shared_sm, "p", "shared", "x", "transform");
    od_metrics_stage_register(&shared_sm);
    atomic_store(&stop_flag, 0);
    ck_assert_int_eq(pthread_create(&c, NULL, churner, NULL), 0);
    ck_assert_int_eq(pthread_create(&r, NULL, renderer, NULL), 0);
    for (int i = 0; i < WORKERS; i++)
        ck_assert_int_eq(pthread_create(&w[i], NULL, worker, NULL), 0);
    for (int i = 0; i < WORKERS; i++)
        pthread_join(w[i], NULL);
    atomic_store(&stop_flag, 1);
    pthread_join(c, NULL);
    pthread_join(r, NULL);

    render(&e);
    ck_assert_double_eq(get(&e, "orderd_stage_messages_total", "stage", "shared", NULL),
                        WORKERS * ROUNDS);
    ck_assert_double_eq(get(&e, "orderd_stage_latency_seconds_count", "stage", "shared", NULL),
                        WORKERS * ROUNDS);
    ck_assert_double_eq(get(&e, "orderd_smoke_total", NULL), WORKERS * ROUNDS / 10);
    ck_assert_double_eq(get(&e, "orderd_plugin_smoke", "stage", "shared", NULL), WORKERS * ROUNDS / 10);
    ck_assert_uint_eq(count(&e, "orderd_stage_messages_total", "stage", "tmp", NULL), 0);
    expo_free(&e);
    od_metrics_stage_unregister(&shared_sm);
    od_metrics_shutdown();
}
END_TEST

static Suite *metrics_suite(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_bounds);
    tcase_add_test(tc, test_stage_counts_and_histogram);
    tcase_add_test(tc, test_help_type_once_per_family);
    tcase_add_test(tc, test_label_escaping);
    tcase_add_test(tc, test_unregister_removes_series);
    tcase_add_test(tc, test_gauge_fn_values);
    tcase_add_test(tc, test_counter_add);
    tcase_add_test(tc, test_plugin_metrics);
    tcase_add_test(tc, test_shutdown_frees_everything);
    tcase_add_test(tc, test_concurrency_smoke);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(metrics_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
