/* conf.c - libconfig file -> validated configuration model.
 *
 * The core's keys and every plugin's keys are declared the same way, as
 * orderd_option tables, and checked by the same walker: unknown keys (with
 * "did you mean"), wrong types, missing required keys, bad durations and
 * sizes, each reported with file:line.  The walker converts values to JSON
 * (durations in ms, sizes in bytes, paths made absolute, secrets read from
 * their files or the environment), which is what plugins receive.  Nothing
 * stops at the first error: --check-config prints them all.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libconfig.h>

#include "conf.h"
#include "loader.h"
#include "log.h"
#include "util.h"

#ifndef OD_STATEDIR
#define OD_STATEDIR "/var/lib/orderd"
#endif
#ifndef OD_PLUGINDIR
#define OD_PLUGINDIR "/usr/lib/orderd"
#endif

/* ---- the core's schemas ---------------------------------------------- */

static const orderd_option retry_options[] = {
    { .key = "max_attempts", .type = ORDERD_T_INT, .def = "5",
      .help = "tries of one stage before the message is abandoned to its input" },
    { .key = "backoff_base", .type = ORDERD_T_DURATION, .def = "100ms",
      .help = "first retry waits up to this long (exponential backoff, full jitter)" },
    { .key = "backoff_cap", .type = ORDERD_T_DURATION, .def = "30s",
      .help = "longest wait between two tries" },
    { .key = "max_deliveries", .type = ORDERD_T_INT, .def = "10",
      .help = "inputs without redelivery of their own (file, http): deliveries before dead-lettering" },
    { .key = "redeliver_delay", .type = ORDERD_T_DURATION, .def = "1s",
      .help = "wait before the core redelivers an abandoned message" },
    { .key = NULL }
};

static const orderd_option batch_options[] = {
    { .key = "max", .type = ORDERD_T_INT, .def = "64",
      .help = "messages handed at once to stages that process batches" },
    { .key = "linger", .type = ORDERD_T_DURATION, .def = "0",
      .help = "wait up to this long to fill a batch (0: take what is queued)" },
    { .key = NULL }
};

static const orderd_option log_options[] = {
    { .key = "level", .type = ORDERD_T_STRING, .def = "info", .choices = "error|warn|info|debug",
      .help = "least severe level written" },
    { .key = "format", .type = ORDERD_T_STRING, .def = "text", .choices = "text|json",
      .help = "text lines or JSON lines on stderr" },
    { .key = NULL }
};

static const orderd_option admin_options[] = {
    { .key = "enabled", .type = ORDERD_T_BOOL, .def = "true",
      .help = "serve /metrics, /healthz, /readyz and the orderctl API" },
    { .key = "listen", .type = ORDERD_T_STRING, .def = "127.0.0.1:9464",
      .help = "HOST:PORT of the admin listener (keep it on loopback)" },
    { .key = NULL }
};

/* spool.group_delay: every concurrent request may wait this long. */
#define OD_GROUP_DELAY_MAX_MS 1000

static const orderd_option spool_options[] = {
    { .key = "path", .type = ORDERD_T_PATH, .flags = ORDERD_OPT_STATE,
      .help = "spool directory (default: spool/<pipeline> in the state directory)" },
    { .key = "max_bytes", .type = ORDERD_T_SIZE, .def = "1GiB",
      .help = "intake refuses (HTTP 503) while the spool holds this much" },
    { .key = "segment_bytes", .type = ORDERD_T_SIZE, .def = "64MiB",
      .help = "size of one segment file; completed segments are deleted" },
    { .key = "sync", .type = ORDERD_T_BOOL, .def = "true",
      .help = "fdatasync before an input is told a message is accepted (group commit); the segment being written is then zero-filled ahead of its records, so that fdatasync overwrites allocated blocks instead of growing the file (a segment file takes segment_bytes on disk before it is full)" },
    { .key = "group_delay", .type = ORDERD_T_DURATION, .def = "1ms",
      .help = "with sync, while messages arrive concurrently (the last group commit held more than one), how long a group may wait for as many messages as the last one held before its fdatasync: fewer, larger commits for a little latency; 0 writes at once, at most 1s. A lone client never waits. Applies to the event-driven HTTP input (http threads > 0)" },
    { .key = NULL }
};

/* Stage groups are checked against their plugin's schema; listed here for docs. */
static const orderd_option stage_core_options[] = {
    { .key = "plugin", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_REQUIRED,
      .help = "plugin name (file in the plugin path) or path of a .so" },
    { .key = "name", .type = ORDERD_T_STRING,
      .help = "stage name in logs and metrics (default: the plugin name)" },
    { .key = NULL }
};

static const orderd_option pipeline_options[] = {
    { .key = "name", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_REQUIRED,
      .help = "pipeline name: letters, digits, '.', '_', '-'" },
    { .key = "workers", .type = ORDERD_T_INT, .help = "worker threads (default: top-level workers)" },
    { .key = "queue_size", .type = ORDERD_T_INT,
      .help = "messages in flight before inputs block or refuse (default: top-level queue_size)" },
    { .key = "ordering", .type = ORDERD_T_STRING, .def = "partition_key",
      .choices = "partition_key|none",
      .help = "partition_key: messages with the same partition key (an order id) are processed one at a time, in arrival order" },
    { .key = "retry", .type = ORDERD_T_GROUP, .sub = retry_options,
      .help = "retry policy (default: top-level retry)" },
    { .key = "batch", .type = ORDERD_T_GROUP, .sub = batch_options,
      .help = "batching (default: top-level batch)" },
    { .key = "spool", .type = ORDERD_T_GROUP, .sub = spool_options,
      .help = "durable spool between the input and the workers" },
    { .key = "input", .type = ORDERD_T_GROUP, .flags = ORDERD_OPT_REQUIRED, .sub = stage_core_options,
      .help = "the input stage" },
    { .key = "transforms", .type = ORDERD_T_GROUPLIST, .sub = stage_core_options,
      .help = "transform stages, in order" },
    { .key = "store", .type = ORDERD_T_GROUP, .sub = stage_core_options,
      .help = "the store stage" },
    { .key = "publish", .type = ORDERD_T_GROUPLIST, .sub = stage_core_options,
      .help = "publish stages, in order" },
    { .key = NULL }
};

static const orderd_option core_options[] = {
    { .key = "state_dir", .type = ORDERD_T_PATH, .def = OD_STATEDIR,
      .help = "where relative state paths (spool, databases, offsets, dead letters) resolve" },
    { .key = "plugin_dir", .type = ORDERD_T_STRING, .def = OD_PLUGINDIR,
      .help = "plugin search path, directories separated by ':'" },
    { .key = "log", .type = ORDERD_T_GROUP, .sub = log_options, .def = "{}", .help = "logging" },
    { .key = "admin", .type = ORDERD_T_GROUP, .sub = admin_options, .def = "{}",
      .help = "admin HTTP listener" },
    { .key = "shutdown_timeout", .type = ORDERD_T_DURATION, .def = "10s",
      .help = "on SIGTERM or reload, time allowed to finish messages in flight" },
    { .key = "workers", .type = ORDERD_T_INT, .def = "2", .help = "worker threads per pipeline" },
    { .key = "queue_size", .type = ORDERD_T_INT, .def = "1024",
      .help = "messages in flight per pipeline before inputs block or refuse" },
    { .key = "retry", .type = ORDERD_T_GROUP, .sub = retry_options, .def = "{}",
      .help = "retry policy of every pipeline" },
    { .key = "batch", .type = ORDERD_T_GROUP, .sub = batch_options, .def = "{}",
      .help = "batching of every pipeline" },
    { .key = "pipelines", .type = ORDERD_T_GROUPLIST, .flags = ORDERD_OPT_REQUIRED,
      .sub = pipeline_options, .help = "the pipelines" },
    { .key = NULL }
};

const orderd_option *od_core_options(void) { return core_options; }
const orderd_option *od_pipeline_options(void) { return pipeline_options; }
const orderd_option *od_spool_options(void) { return spool_options; }

/* ---- errors ------------------------------------------------------------ */

void od_errs_add(struct od_errs *e, const char *file, int line, const char *fmt, ...)
{
    char msg[1024], *full;
    char **grown;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (file && line > 0) {
        if (asprintf(&full, "%s:%d: %s", file, line, msg) < 0)
            return;
    } else if (file) {
        if (asprintf(&full, "%s: %s", file, msg) < 0)
            return;
    } else if ((full = strdup(msg)) == NULL) {
        return;
    }
    grown = realloc(e->msg, (e->n + 1) * sizeof(*e->msg));
    if (grown == NULL) {
        free(full);
        return;
    }
    e->msg = grown;
    e->msg[e->n++] = full;
}

void od_errs_free(struct od_errs *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->msg[i]);
    free(e->msg);
    e->msg = NULL;
    e->n = 0;
}

/* ---- the walker ---------------------------------------------------------- */

struct walk {
    struct od_errs *errs;
    const char     *state_dir;     /* for ORDERD_OPT_STATE paths */
    const char     *base_dir;      /* for config given as text (no source file) */
    const char     *main_file;     /* the file named on the command line */
};

static const char *src_file(const struct walk *w, const config_setting_t *s)
{
    const char *f = s ? config_setting_source_file(s) : NULL;
    return f ? f : w->main_file;
}

static int src_line(const config_setting_t *s)
{
    return s ? (int)config_setting_source_line(s) : 0;
}

#define WERR(w, s, ...) od_errs_add((w)->errs, src_file((w), (s)), src_line(s), __VA_ARGS__)

const char *od_type_name(orderd_type t)
{
    switch (t) {
    case ORDERD_T_STRING:    return "string";
    case ORDERD_T_INT:       return "integer";
    case ORDERD_T_BOOL:      return "boolean";
    case ORDERD_T_DOUBLE:    return "number";
    case ORDERD_T_DURATION:  return "duration";
    case ORDERD_T_SIZE:      return "size";
    case ORDERD_T_PATH:      return "path";
    case ORDERD_T_STRLIST:   return "string list";
    case ORDERD_T_GROUP:     return "group";
    case ORDERD_T_GROUPLIST: return "list of groups";
    }
    return "?";
}

static const orderd_option *find_option(const orderd_option *opts, const char *key)
{
    for (const orderd_option *o = opts; o && o->key; o++)
        if (strcmp(o->key, key) == 0)
            return o;
    return NULL;
}

/* A secret option named base accepts base, base_file and base_env. */
static const orderd_option *find_secret_alias(const orderd_option *opts, const char *key,
                                              const char **how)
{
    const char *us = strrchr(key, '_');

    if (us == NULL || (strcmp(us, "_file") != 0 && strcmp(us, "_env") != 0))
        return NULL;
    for (const orderd_option *o = opts; o && o->key; o++) {
        if ((o->flags & ORDERD_OPT_SECRET) && strlen(o->key) == (size_t)(us - key) &&
            strncmp(o->key, key, (size_t)(us - key)) == 0) {
            *how = us + 1;
            return o;
        }
    }
    return NULL;
}

static int choice_ok(const char *choices, const char *v)
{
    size_t n = strlen(v);

    for (const char *p = choices; *p; ) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, v, n) == 0)
            return 1;
        if (bar == NULL)
            break;
        p = bar + 1;
    }
    return 0;
}

static void suggest(char *buf, size_t len, const char *key, const orderd_option *opts,
                    const char *const *extra)
{
    const char *best = NULL;
    size_t best_d = SIZE_MAX, klen = strlen(key);
    size_t limit = klen < 4 ? 1 : klen / 3 + 1;

    for (const orderd_option *o = opts; o && o->key; o++) {
        size_t d = od_edit_distance(key, o->key);
        if (d < best_d) {
            best_d = d;
            best = o->key;
        }
    }
    for (const char *const *e = extra; e && *e; e++) {
        size_t d = od_edit_distance(key, *e);
        if (d < best_d) {
            best_d = d;
            best = *e;
        }
    }
    if (best && best_d <= limit) {
        snprintf(buf, len, "; did you mean '%s'?", best);
        return;
    }
    /* No close match: list what is valid when the list is short. */
    size_t used = (size_t)snprintf(buf, len, "; valid keys:");
    for (const char *const *e = extra; e && *e && used < len; e++)
        used += (size_t)snprintf(buf + used, len - used, " %s", *e);
    for (const orderd_option *o = opts; o && o->key && used < len; o++)
        used += (size_t)snprintf(buf + used, len - used, " %s", o->key);
    if (opts == NULL && (extra == NULL || *extra == NULL))
        snprintf(buf, len, "; this stage takes no keys");
}

static json_t *check_group(struct walk *w, const config_setting_t *grp, const orderd_option *opts,
                           const char *const *extra, const char *what);

/* Convert text (a default, or a string value) of a scalar type. */
static json_t *convert_text(struct walk *w, const config_setting_t *s, const orderd_option *o,
                            const char *text, const char *file_for_path)
{
    int64_t v;
    char *end;

    switch (o->type) {
    case ORDERD_T_STRING:
        if (o->choices && !choice_ok(o->choices, text)) {
            WERR(w, s, "'%s' must be one of %s (got \"%s\")", o->key, o->choices, text);
            return NULL;
        }
        return json_string(text);
    case ORDERD_T_DURATION:
        if (od_parse_duration(text, &v) < 0) {
            WERR(w, s, "'%s' is not a duration: \"%s\" (write e.g. \"250ms\", \"30s\", \"5m\", \"2h\", \"1d\")",
                 o->key, text);
            return NULL;
        }
        return json_integer(v);
    case ORDERD_T_SIZE:
        if (od_parse_size(text, &v) < 0) {
            WERR(w, s, "'%s' is not a size: \"%s\" (write e.g. \"512\", \"64KiB\", \"16MiB\", \"1GiB\")",
                 o->key, text);
            return NULL;
        }
        return json_integer(v);
    case ORDERD_T_PATH: {
        char *dir, *full;
        json_t *j;
        if (text[0] == '\0') {
            WERR(w, s, "'%s' is an empty path", o->key);
            return NULL;
        }
        if (strcmp(text, "-") == 0)   /* stdin/stdout, by convention */
            return json_string(text);
        if (o->flags & ORDERD_OPT_STATE)
            dir = strdup(w->state_dir ? w->state_dir : ".");
        else if (file_for_path)
            dir = od_dirname(file_for_path);
        else
            dir = strdup(w->base_dir ? w->base_dir : ".");
        full = dir ? od_path_join(dir, text) : NULL;
        free(dir);
        j = full ? json_string(full) : NULL;
        free(full);
        return j;
    }
    case ORDERD_T_INT:
        errno = 0;
        v = strtoll(text, &end, 10);
        if (errno || *end || end == text) {
            WERR(w, s, "'%s' must be an integer (got \"%s\")", o->key, text);
            return NULL;
        }
        return json_integer(v);
    case ORDERD_T_DOUBLE: {
        double d = strtod(text, &end);
        if (*end || end == text) {
            WERR(w, s, "'%s' must be a number (got \"%s\")", o->key, text);
            return NULL;
        }
        return json_real(d);
    }
    case ORDERD_T_BOOL:
        if (strcmp(text, "true") == 0)
            return json_true();
        if (strcmp(text, "false") == 0)
            return json_false();
        WERR(w, s, "'%s' must be true or false (got \"%s\")", o->key, text);
        return NULL;
    default:
        return NULL;
    }
}

static json_t *type_error(struct walk *w, const config_setting_t *s, const orderd_option *o,
                          const char *example)
{
    WERR(w, s, "'%s' must be a %s%s%s", o->key, od_type_name(o->type),
         example ? ", e.g. " : "", example ? example : "");
    return NULL;
}

static json_t *convert(struct walk *w, const config_setting_t *s, const orderd_option *o)
{
    int t = config_setting_type(s);
    const char *file = src_file(w, s);

    switch (o->type) {
    case ORDERD_T_STRING:
    case ORDERD_T_PATH:
        if (t != CONFIG_TYPE_STRING)
            return type_error(w, s, o, "key = \"text\";");
        return convert_text(w, s, o, config_setting_get_string(s),
                            config_setting_source_file(s) ? file : NULL);
    case ORDERD_T_DURATION:
        if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64) {
            if (config_setting_get_int64(s) == 0)
                return json_integer(0);
            WERR(w, s, "'%s' needs a unit: write \"%lld%s\" or similar", o->key,
                 (long long)config_setting_get_int64(s), "s");
            return NULL;
        }
        if (t != CONFIG_TYPE_STRING)
            return type_error(w, s, o, "\"30s\"");
        return convert_text(w, s, o, config_setting_get_string(s), NULL);
    case ORDERD_T_SIZE:
        if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64) {
            if (config_setting_get_int64(s) < 0) {
                WERR(w, s, "'%s' must not be negative", o->key);
                return NULL;
            }
            return json_integer(config_setting_get_int64(s));
        }
        if (t != CONFIG_TYPE_STRING)
            return type_error(w, s, o, "\"64MiB\"");
        return convert_text(w, s, o, config_setting_get_string(s), NULL);
    case ORDERD_T_INT:
        if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
            return type_error(w, s, o, "key = 4;");
        return json_integer(config_setting_get_int64(s));
    case ORDERD_T_DOUBLE:
        if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64)
            return json_real((double)config_setting_get_int64(s));
        if (t != CONFIG_TYPE_FLOAT)
            return type_error(w, s, o, "key = 1.5;");
        return json_real(config_setting_get_float(s));
    case ORDERD_T_BOOL:
        if (t != CONFIG_TYPE_BOOL)
            return type_error(w, s, o, "key = true;");
        return json_boolean(config_setting_get_bool(s));
    case ORDERD_T_STRLIST: {
        json_t *arr;
        if (t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST)
            return type_error(w, s, o, "key = [\"a\", \"b\"];");
        arr = json_array();
        for (int i = 0; i < config_setting_length(s); i++) {
            const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
            if (config_setting_type(e) != CONFIG_TYPE_STRING) {
                WERR(w, e, "'%s' must hold only strings", o->key);
                json_decref(arr);
                return NULL;
            }
            json_array_append_new(arr, json_string(config_setting_get_string(e)));
        }
        return arr;
    }
    case ORDERD_T_GROUP:
        if (t != CONFIG_TYPE_GROUP)
            return type_error(w, s, o, "key = { ... };");
        return check_group(w, s, o->sub, NULL, o->key);
    case ORDERD_T_GROUPLIST: {
        json_t *arr;
        int ok = 1;
        if (t != CONFIG_TYPE_LIST)
            return type_error(w, s, o, "key = ( { ... }, { ... } );");
        arr = json_array();
        for (int i = 0; i < config_setting_length(s); i++) {
            const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
            json_t *g;
            if (config_setting_type(e) != CONFIG_TYPE_GROUP) {
                WERR(w, e, "each element of '%s' must be a group { ... }", o->key);
                ok = 0;
                continue;
            }
            g = check_group(w, e, o->sub, NULL, o->key);
            if (g == NULL)
                ok = 0;
            else
                json_array_append_new(arr, g);
        }
        if (!ok) {
            json_decref(arr);
            return NULL;
        }
        return arr;
    }
    }
    return NULL;
}

static json_t *default_value(struct walk *w, const config_setting_t *grp, const orderd_option *o)
{
    if (o->type == ORDERD_T_GROUP && o->def && strcmp(o->def, "{}") == 0)
        return check_group(w, NULL, o->sub, NULL, o->key);
    if (o->type == ORDERD_T_GROUPLIST || o->type == ORDERD_T_STRLIST)
        return o->def ? json_array() : json_null();
    if (o->def == NULL)
        return json_null();
    /* Defaults of paths resolve like values written in the main file. */
    return convert_text(w, grp, o, o->def, w->main_file);
}

static json_t *resolve_secret(struct walk *w, const config_setting_t *s, const orderd_option *o,
                              const char *how)
{
    const char *arg;
    json_t *j;

    if (config_setting_type(s) != CONFIG_TYPE_STRING) {
        WERR(w, s, "'%s_%s' must be a string", o->key, how);
        return NULL;
    }
    arg = config_setting_get_string(s);
    if (strcmp(how, "env") == 0) {
        const char *v = getenv(arg);
        if (v == NULL || v[0] == '\0') {
            WERR(w, s, "'%s_env': environment variable %s is not set", o->key, arg);
            return NULL;
        }
        od_log_add_secret(v);
        return json_string(v);
    } else {
        char *dir = config_setting_source_file(s) ? od_dirname(src_file(w, s))
                                                  : strdup(w->base_dir ? w->base_dir : ".");
        char *path = dir ? od_path_join(dir, arg) : NULL;
        char *v = path ? od_read_file(path, NULL) : NULL;
        if (v == NULL) {
            WERR(w, s, "'%s_file': cannot read %s: %s", o->key, path ? path : arg, strerror(errno));
            free(dir);
            free(path);
            return NULL;
        }
        od_log_add_secret(v);
        j = json_string(v);
        free(v);
        free(dir);
        free(path);
        return j;
    }
}

/*
 * Check one group against opts.  extra lists keys the caller handles
 * itself (a stage's "plugin" and "name").  grp may be NULL: then only
 * defaults (and missing-required errors) are produced.
 * RETURNS: a new object, or NULL after recording errors.
 */
static json_t *check_group(struct walk *w, const config_setting_t *grp, const orderd_option *opts,
                           const char *const *extra, const char *what)
{
    json_t *out = json_object();
    size_t before = w->errs->n;
    int n = grp ? config_setting_length(grp) : 0;

    /* Unknown keys first, in file order. */
    for (int i = 0; i < n; i++) {
        const config_setting_t *s = config_setting_get_elem(grp, (unsigned)i);
        const char *key = config_setting_name(s), *how;
        int reserved = 0;
        char hint[512];

        for (const char *const *e = extra; e && *e; e++)
            if (strcmp(*e, key) == 0)
                reserved = 1;
        if (reserved || find_option(opts, key) || find_secret_alias(opts, key, &how))
            continue;
        suggest(hint, sizeof(hint), key, opts, extra);
        WERR(w, s, "unknown key '%s' in %s%s", key, what, hint);
    }

    for (const orderd_option *o = opts; o && o->key; o++) {
        const config_setting_t *s = grp ? config_setting_get_member(grp, o->key) : NULL;
        json_t *v = NULL;

        if (o->flags & ORDERD_OPT_SECRET) {
            char kf[128], ke[128];
            const config_setting_t *sf, *se;
            snprintf(kf, sizeof(kf), "%s_file", o->key);
            snprintf(ke, sizeof(ke), "%s_env", o->key);
            sf = grp ? config_setting_get_member(grp, kf) : NULL;
            se = grp ? config_setting_get_member(grp, ke) : NULL;
            if ((s != NULL) + (sf != NULL) + (se != NULL) > 1) {
                WERR(w, s ? s : sf, "give only one of '%s', '%s' and '%s'", o->key, kf, ke);
                continue;
            }
            if (sf)
                v = resolve_secret(w, sf, o, "file");
            else if (se)
                v = resolve_secret(w, se, o, "env");
            if (sf || se) {
                if (v)
                    json_object_set_new(out, o->key, v);
                continue;
            }
        }
        if (s == NULL) {
            if (o->flags & ORDERD_OPT_REQUIRED) {
                WERR(w, grp, "missing required key '%s' in %s (%s: %s)", o->key, what,
                     od_type_name(o->type), o->help ? o->help : "");
                continue;
            }
            v = default_value(w, grp, o);
        } else {
            v = convert(w, s, o);
            if (v && (o->flags & ORDERD_OPT_SECRET) && json_is_string(v))
                od_log_add_secret(json_string_value(v));
        }
        if (v)
            json_object_set_new(out, o->key, v);
    }
    if (w->errs->n != before) {
        json_decref(out);
        return NULL;
    }
    return out;
}

/* ---- stages and pipelines ------------------------------------------------ */

static const char *const stage_extra[] = { "plugin", "name", NULL };

static int valid_name(const char *s)
{
    if (s == NULL || *s == '\0' || strlen(s) > 64)
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.')
            return 0;
    return 1;
}

static void stage_conf_free(struct od_stage_conf *sc)
{
    free(sc->name);
    free(sc->plugin_name);
    free(sc->file);
    json_decref(sc->conf);
    memset(sc, 0, sizeof(*sc));
}

/* Check a stage group: resolve its plugin and kind, then its keys. */
static int check_stage(struct walk *w, struct od_registry *reg, const config_setting_t *grp,
                       orderd_kind kind, struct od_stage_conf *sc)
{
    const char *plugin = NULL, *name = NULL;
    const config_setting_t *ps = config_setting_get_member(grp, "plugin");
    const config_setting_t *ns = config_setting_get_member(grp, "name");
    char err[512], what[256];
    size_t before = w->errs->n;

    sc->kind = kind;
    sc->file = strdup(src_file(w, grp));
    sc->line = src_line(grp);
    if (ps == NULL || config_setting_type(ps) != CONFIG_TYPE_STRING) {
        WERR(w, ps ? ps : grp, "%s stage needs plugin = \"NAME\";", od_kind_name(kind));
        return -EINVAL;
    }
    plugin = config_setting_get_string(ps);
    if (ns) {
        if (config_setting_type(ns) != CONFIG_TYPE_STRING || !valid_name(config_setting_get_string(ns))) {
            WERR(w, ns, "stage name must be a string of letters, digits, '.', '_' or '-'");
            return -EINVAL;
        }
        name = config_setting_get_string(ns);
    }
    sc->plugin_name = strdup(plugin);
    sc->plugin = od_registry_get(reg, plugin, err, sizeof(err));
    if (sc->plugin == NULL) {
        WERR(w, ps, "%s", err);
        return -EINVAL;
    }
    sc->stage = od_plugin_stage(sc->plugin, kind);
    if (sc->stage == NULL) {
        char kinds[128];
        od_plugin_kinds(sc->plugin, kinds, sizeof(kinds));
        WERR(w, ps, "plugin '%s' does not provide a %s stage (it provides: %s)",
             sc->plugin->name, od_kind_name(kind), kinds);
        return -EINVAL;
    }
    sc->name = strdup(name ? name : sc->plugin->name);
    snprintf(what, sizeof(what), "%s stage '%s' (plugin %s)", od_kind_name(kind), sc->name,
             sc->plugin->name);
    sc->conf = check_group(w, grp, sc->stage->options, stage_extra, what);
    return w->errs->n == before ? 0 : -EINVAL;
}

static void pipeline_conf_free(struct od_pipeline_conf *pc)
{
    free(pc->name);
    free(pc->file);
    json_decref(pc->spool);
    stage_conf_free(&pc->input);
    for (size_t i = 0; i < pc->ntransforms; i++)
        stage_conf_free(&pc->transforms[i]);
    free(pc->transforms);
    if (pc->store) {
        stage_conf_free(pc->store);
        free(pc->store);
    }
    for (size_t i = 0; i < pc->npublish; i++)
        stage_conf_free(&pc->publish[i]);
    free(pc->publish);
}

static int64_t jint(const json_t *obj, const char *key)
{
    return json_integer_value(json_object_get(obj, key));
}

static void retry_from_json(struct od_retry_conf *r, const json_t *j)
{
    r->max_attempts = (uint32_t)jint(j, "max_attempts");
    r->backoff_base_ms = jint(j, "backoff_base");
    r->backoff_cap_ms = jint(j, "backoff_cap");
    r->max_deliveries = (uint32_t)jint(j, "max_deliveries");
    r->redeliver_delay_ms = jint(j, "redeliver_delay");
}

static void batch_from_json(struct od_batch_conf *b, const json_t *j)
{
    b->max = (uint32_t)jint(j, "max");
    b->linger_ms = jint(j, "linger");
}

/* Stage names must be unique in a pipeline: plugin names repeat, so number them. */
static void unique_stage_names(struct walk *w, struct od_pipeline_conf *pc)
{
    struct od_stage_conf *all[256];
    size_t n = 0;

    if (pc->input.name)
        all[n++] = &pc->input;
    for (size_t i = 0; i < pc->ntransforms && n < 255; i++)
        all[n++] = &pc->transforms[i];
    if (pc->store && pc->store->name && n < 255)
        all[n++] = pc->store;
    for (size_t i = 0; i < pc->npublish && n < 255; i++)
        all[n++] = &pc->publish[i];
    for (size_t i = 0; i < n; i++) {
        int dup = 0;
        if (all[i]->name == NULL)
            continue;
        for (size_t j = 0; j < i; j++) {
            if (all[j]->name && strcmp(all[i]->name, all[j]->name) == 0) {
                dup = 1;
                break;
            }
        }
        if (!dup)
            continue;
        if (strcmp(all[i]->name, all[i]->plugin_name) != 0 &&
            strcmp(all[i]->name, all[i]->plugin ? all[i]->plugin->name : "") != 0) {
            od_errs_add(w->errs, all[i]->file, all[i]->line,
                        "stage name '%s' is used twice in pipeline '%s'", all[i]->name, pc->name);
            continue;
        }
        for (int k = 2; k < 1000; k++) {
            char cand[96];
            int taken = 0;
            snprintf(cand, sizeof(cand), "%s-%d", all[i]->name, k);
            for (size_t j = 0; j < n; j++)
                if (all[j]->name && strcmp(all[j]->name, cand) == 0)
                    taken = 1;
            if (!taken) {
                free(all[i]->name);
                all[i]->name = strdup(cand);
                break;
            }
        }
    }
}

static int check_pipeline(struct walk *w, struct od_registry *reg, const config_setting_t *grp,
                          const json_t *core, struct od_pipeline_conf *pc)
{
    static const char *const pipe_keys[] = { "name", "input", "transforms", "store", "publish", NULL };
    const config_setting_t *s;
    json_t *pj;
    size_t before = w->errs->n;
    char what[128];

    pc->file = strdup(src_file(w, grp));
    pc->line = src_line(grp);
    s = config_setting_get_member(grp, "name");
    if (s == NULL || config_setting_type(s) != CONFIG_TYPE_STRING ||
        !valid_name(config_setting_get_string(s))) {
        WERR(w, s ? s : grp, "pipeline needs name = \"NAME\"; (letters, digits, '.', '_', '-')");
        pc->name = strdup("?");
    } else {
        pc->name = strdup(config_setting_get_string(s));
    }
    snprintf(what, sizeof(what), "pipeline '%s'", pc->name);

    /* Scalar keys, spool, retry, batch: the generic walker, stage keys left to us. */
    {
        orderd_option scalar[OD_ARRAY_LEN(pipeline_options)];
        size_t k = 0;
        for (const orderd_option *o = pipeline_options; o->key; o++) {
            int is_stage = strcmp(o->key, "name") == 0;   /* checked above */
            for (const char *const *p = pipe_keys; *p; p++)
                if (strcmp(*p, o->key) == 0)
                    is_stage = 1;
            if (!is_stage)
                scalar[k++] = *o;
        }
        scalar[k].key = NULL;
        pj = check_group(w, grp, scalar, pipe_keys, what);
    }
    if (pj) {
        json_t *v;
        v = json_object_get(pj, "workers");
        pc->workers = (uint32_t)(json_is_integer(v) ? json_integer_value(v) : jint(core, "workers"));
        v = json_object_get(pj, "queue_size");
        pc->queue_size = (uint32_t)(json_is_integer(v) ? json_integer_value(v) : jint(core, "queue_size"));
        v = json_object_get(pj, "ordering");
        pc->ordered = v == NULL || strcmp(json_string_value(v), "partition_key") == 0;
        v = json_object_get(pj, "retry");
        retry_from_json(&pc->retry, json_is_object(v) ? v : json_object_get(core, "retry"));
        v = json_object_get(pj, "batch");
        batch_from_json(&pc->batch, json_is_object(v) ? v : json_object_get(core, "batch"));
        v = json_object_get(pj, "spool");
        if (json_is_object(v)) {
            pc->spool = json_incref(v);
            if (json_is_null(json_object_get(v, "path"))) {
                char rel[128], *full;
                snprintf(rel, sizeof(rel), "spool/%s", pc->name);
                full = od_path_join(w->state_dir, rel);
                json_object_set_new(pc->spool, "path", json_string(full));
                free(full);
            }
        }
        json_decref(pj);
        if (pc->workers < 1 || pc->workers > 256)
            WERR(w, config_setting_get_member(grp, "workers"), "workers must be 1..256");
        if (pc->queue_size < 1)
            WERR(w, config_setting_get_member(grp, "queue_size"), "queue_size must be at least 1");
        if (pc->retry.max_attempts < 1)
            WERR(w, config_setting_get_member(grp, "retry"), "retry.max_attempts must be at least 1");
        if (pc->batch.max < 1)
            WERR(w, config_setting_get_member(grp, "batch"), "batch.max must be at least 1");
        if (pc->spool != NULL &&
            json_integer_value(json_object_get(pc->spool, "group_delay")) > OD_GROUP_DELAY_MAX_MS) {
            config_setting_t *sp = config_setting_get_member(grp, "spool");
            WERR(w, config_setting_get_member(sp, "group_delay"),
                 "spool.group_delay must be at most %dms: concurrent requests may each wait "
                 "this long for their group commit", OD_GROUP_DELAY_MAX_MS);
        }
    }

    s = config_setting_get_member(grp, "input");
    if (s == NULL)
        WERR(w, grp, "pipeline '%s' needs an input = { plugin = \"...\"; };", pc->name);
    else if (config_setting_type(s) != CONFIG_TYPE_GROUP)
        WERR(w, s, "input must be a group { plugin = \"...\"; ... }");
    else
        check_stage(w, reg, s, ORDERD_INPUT, &pc->input);

    s = config_setting_get_member(grp, "transforms");
    if (s && config_setting_type(s) != CONFIG_TYPE_LIST) {
        WERR(w, s, "transforms must be a list ( { plugin = \"...\"; }, ... )");
    } else if (s) {
        int n = config_setting_length(s);
        pc->transforms = calloc((size_t)n + 1, sizeof(*pc->transforms));
        for (int i = 0; i < n && pc->transforms; i++) {
            const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
            if (config_setting_type(e) != CONFIG_TYPE_GROUP) {
                WERR(w, e, "each transform must be a group { plugin = \"...\"; }");
                continue;
            }
            check_stage(w, reg, e, ORDERD_TRANSFORM, &pc->transforms[pc->ntransforms++]);
        }
    }

    s = config_setting_get_member(grp, "store");
    if (s && config_setting_type(s) != CONFIG_TYPE_GROUP) {
        WERR(w, s, "store must be a group { plugin = \"...\"; ... }");
    } else if (s) {
        pc->store = calloc(1, sizeof(*pc->store));
        if (pc->store)
            check_stage(w, reg, s, ORDERD_STORE, pc->store);
    }

    s = config_setting_get_member(grp, "publish");
    if (s && config_setting_type(s) != CONFIG_TYPE_LIST) {
        WERR(w, s, "publish must be a list ( { plugin = \"...\"; }, ... )");
    } else if (s) {
        int n = config_setting_length(s);
        pc->publish = calloc((size_t)n + 1, sizeof(*pc->publish));
        for (int i = 0; i < n && pc->publish; i++) {
            const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
            if (config_setting_type(e) != CONFIG_TYPE_GROUP) {
                WERR(w, e, "each publisher must be a group { plugin = \"...\"; }");
                continue;
            }
            check_stage(w, reg, e, ORDERD_PUBLISH, &pc->publish[pc->npublish++]);
        }
    }
    unique_stage_names(w, pc);
    return w->errs->n == before ? 0 : -EINVAL;
}

/* ---- the whole file ------------------------------------------------------ */

static char *absolute(const char *path)
{
    char cwd[PATH_MAX];

    if (path[0] == '/' || getcwd(cwd, sizeof(cwd)) == NULL)
        return strdup(path);
    return od_path_join(cwd, path);
}

int od_conf_load(const char *path, const struct od_conf_overrides *ov,
                 struct od_registry *reg, struct od_conf **out, struct od_errs *errs)
{
    struct od_conf *c = calloc(1, sizeof(*c));
    config_t cfg;
    struct walk w = { .errs = errs };
    const config_setting_t *root, *plist;
    orderd_option top[OD_ARRAY_LEN(core_options)];
    static const char *const top_extra[] = { "pipelines", NULL };
    char *dir;
    size_t k = 0;

    *out = c;
    if (c == NULL)
        return -ENOMEM;
    c->path = absolute(path);
    w.main_file = c->path;
    config_init(&cfg);
    dir = od_dirname(c->path);
    config_set_include_dir(&cfg, dir);
    free(dir);
    if (!config_read_file(&cfg, c->path)) {
        if (config_error_type(&cfg) == CONFIG_ERR_FILE_IO)
            od_errs_add(errs, config_error_file(&cfg) ? config_error_file(&cfg) : c->path, 0,
                        "cannot read: %s", strerror(errno ? errno : ENOENT));
        else
            od_errs_add(errs, config_error_file(&cfg) ? config_error_file(&cfg) : c->path,
                        config_error_line(&cfg), "%s", config_error_text(&cfg));
        config_destroy(&cfg);
        return -EINVAL;
    }
    root = config_root_setting(&cfg);

    /* Core keys first: state_dir and plugin_dir are needed by everything after. */
    for (const orderd_option *o = core_options; o->key; o++)
        if (strcmp(o->key, "pipelines") != 0)
            top[k++] = *o;
    top[k].key = NULL;
    c->core = check_group(&w, root, top, top_extra, "the top level");
    if (c->core == NULL)
        c->core = check_group(&w, NULL, top, top_extra, "the top level");  /* defaults */
    if (ov && ov->state_dir)
        c->state_dir = absolute(ov->state_dir);
    else
        c->state_dir = od_strdup0(json_string_value(json_object_get(c->core, "state_dir")));
    if (ov && ov->plugin_path)
        c->plugin_path = strdup(ov->plugin_path);
    else
        c->plugin_path = od_strdup0(json_string_value(json_object_get(c->core, "plugin_dir")));
    json_object_set_new(c->core, "state_dir", json_string(c->state_dir ? c->state_dir : ""));
    json_object_set_new(c->core, "plugin_dir", json_string(c->plugin_path ? c->plugin_path : ""));
    w.state_dir = c->state_dir;
    {
        const json_t *lg = json_object_get(c->core, "log"), *ad = json_object_get(c->core, "admin");
        const char *lv = json_string_value(json_object_get(lg, "level"));
        c->log_level = lv ? od_log_level_parse(lv) : ORDERD_LOG_INFO;
        c->log_json = lg && strcmp(json_string_value(json_object_get(lg, "format")), "json") == 0;
        c->admin_enabled = json_is_true(json_object_get(ad, "enabled"));
        c->admin_listen = od_strdup0(json_string_value(json_object_get(ad, "listen")));
        c->shutdown_timeout_ms = jint(c->core, "shutdown_timeout");
    }

    if (reg->ndirs == 0 && od_registry_init(reg, c->plugin_path ? c->plugin_path : "") < 0) {
        od_errs_add(errs, c->path, 0, "out of memory");
        goto done;
    }

    plist = config_setting_get_member(root, "pipelines");
    if (plist == NULL) {
        od_errs_add(errs, c->path, 0, "no pipelines: add pipelines = ( { name = \"...\"; input = { ... }; ... } );");
    } else if (config_setting_type(plist) != CONFIG_TYPE_LIST) {
        WERR(&w, plist, "pipelines must be a list ( { ... }, { ... } )");
    } else {
        int n = config_setting_length(plist);
        c->pipelines = calloc((size_t)n + 1, sizeof(*c->pipelines));
        for (int i = 0; i < n && c->pipelines; i++) {
            const config_setting_t *e = config_setting_get_elem(plist, (unsigned)i);
            if (config_setting_type(e) != CONFIG_TYPE_GROUP) {
                WERR(&w, e, "each pipeline must be a group { name = \"...\"; ... }");
                continue;
            }
            check_pipeline(&w, reg, e, c->core, &c->pipelines[c->npipelines]);
            for (size_t j = 0; j < c->npipelines; j++)
                if (strcmp(c->pipelines[j].name, c->pipelines[c->npipelines].name) == 0)
                    WERR(&w, e, "pipeline name '%s' is used twice (first at %s:%d)",
                         c->pipelines[j].name, c->pipelines[j].file, c->pipelines[j].line);
            c->npipelines++;
        }
        if (n == 0)
            WERR(&w, plist, "pipelines is empty: nothing to run");
    }
done:
    config_destroy(&cfg);
    return errs->n ? -EINVAL : 0;
}

void od_conf_free(struct od_conf *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->npipelines; i++)
        pipeline_conf_free(&c->pipelines[i]);
    free(c->pipelines);
    json_decref(c->core);
    free(c->path);
    free(c->state_dir);
    free(c->plugin_path);
    free(c->admin_listen);
    free(c);
}

static json_t *stage_json(const struct od_stage_conf *sc)
{
    json_t *j = json_deep_copy(sc->conf ? sc->conf : json_object());

    json_object_set_new(j, "plugin", json_string(sc->plugin_name ? sc->plugin_name : ""));
    json_object_set_new(j, "name", json_string(sc->name ? sc->name : ""));
    return j;
}

char *od_conf_dump(const struct od_conf *c)
{
    json_t *j = json_deep_copy(c->core), *pl = json_array();
    char *text, *clean;

    for (size_t i = 0; i < c->npipelines; i++) {
        const struct od_pipeline_conf *pc = &c->pipelines[i];
        json_t *p = json_object(), *tr = json_array(), *pub = json_array();
        json_object_set_new(p, "name", json_string(pc->name));
        json_object_set_new(p, "workers", json_integer(pc->workers));
        json_object_set_new(p, "queue_size", json_integer(pc->queue_size));
        json_object_set_new(p, "ordering", json_string(pc->ordered ? "partition_key" : "none"));
        json_object_set_new(p, "retry", json_pack("{sI sI sI sI sI}",
            "max_attempts", (json_int_t)pc->retry.max_attempts,
            "backoff_base", (json_int_t)pc->retry.backoff_base_ms,
            "backoff_cap", (json_int_t)pc->retry.backoff_cap_ms,
            "max_deliveries", (json_int_t)pc->retry.max_deliveries,
            "redeliver_delay", (json_int_t)pc->retry.redeliver_delay_ms));
        json_object_set_new(p, "batch", json_pack("{sI sI}", "max", (json_int_t)pc->batch.max,
                                                   "linger", (json_int_t)pc->batch.linger_ms));
        if (pc->spool)
            json_object_set(p, "spool", pc->spool);
        json_object_set_new(p, "input", stage_json(&pc->input));
        for (size_t t = 0; t < pc->ntransforms; t++)
            json_array_append_new(tr, stage_json(&pc->transforms[t]));
        json_object_set_new(p, "transforms", tr);
        if (pc->store)
            json_object_set_new(p, "store", stage_json(pc->store));
        for (size_t t = 0; t < pc->npublish; t++)
            json_array_append_new(pub, stage_json(&pc->publish[t]));
        json_object_set_new(p, "publish", pub);
        json_array_append_new(pl, p);
    }
    json_object_set_new(j, "pipelines", pl);
    text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (text == NULL)
        return NULL;
    clean = od_log_redact(text);
    free(text);
    return clean;
}

int od_conf_check_stage_text(const char *text, const orderd_stage *stage, const char *state_dir,
                             const char *base_dir, json_t **out, struct od_errs *errs)
{
    config_t cfg;
    struct walk w = { .errs = errs, .state_dir = state_dir, .base_dir = base_dir,
                      .main_file = "<stage config>" };

    *out = NULL;
    config_init(&cfg);
    if (!config_read_string(&cfg, text)) {
        od_errs_add(errs, "<stage config>", config_error_line(&cfg), "%s", config_error_text(&cfg));
        config_destroy(&cfg);
        return -EINVAL;
    }
    *out = check_group(&w, config_root_setting(&cfg), stage->options, stage_extra, "the stage");
    config_destroy(&cfg);
    return *out ? 0 : -EINVAL;
}

/* ---- printing schemas ------------------------------------------------------ */

void od_options_print(FILE *f, const orderd_option *opts, int indent)
{
    for (const orderd_option *o = opts; o && o->key; o++) {
        char flags[64] = "";
        if (o->flags & ORDERD_OPT_REQUIRED)
            strcat(flags, " required");
        if (o->flags & ORDERD_OPT_SECRET)
            strcat(flags, " secret");
        fprintf(f, "%*s%-20s %-14s %-16s %s%s%s%s%s\n", indent, "", o->key, od_type_name(o->type),
                o->def ? (strcmp(o->def, "{}") == 0 ? "(defaults)" : o->def) : "-",
                o->help ? o->help : "", *flags ? " [" : "", *flags ? flags + 1 : "",
                *flags ? "]" : "", "");
        if (o->choices)
            fprintf(f, "%*s%-20s %-14s %-16s one of: %s\n", indent, "", "", "", "", o->choices);
        if (o->flags & ORDERD_OPT_SECRET)
            fprintf(f, "%*s%-20s %-14s %-16s or %s_file = \"PATH\"; or %s_env = \"VAR\";\n", indent, "",
                    "", "", "", o->key, o->key);
        if (o->sub && o->sub != stage_core_options)
            od_options_print(f, o->sub, indent + 2);
    }
}

json_t *od_options_json(const orderd_option *opts)
{
    json_t *arr = json_array();

    for (const orderd_option *o = opts; o && o->key; o++) {
        json_t *j = json_object();
        json_object_set_new(j, "key", json_string(o->key));
        json_object_set_new(j, "type", json_string(od_type_name(o->type)));
        json_object_set_new(j, "default", o->def ? json_string(o->def) : json_null());
        json_object_set_new(j, "required", json_boolean(o->flags & ORDERD_OPT_REQUIRED));
        json_object_set_new(j, "secret", json_boolean(o->flags & ORDERD_OPT_SECRET));
        json_object_set_new(j, "state_path", json_boolean(o->flags & ORDERD_OPT_STATE));
        json_object_set_new(j, "choices", o->choices ? json_string(o->choices) : json_null());
        json_object_set_new(j, "help", json_string(o->help ? o->help : ""));
        if (o->sub)
            json_object_set_new(j, "keys", od_options_json(o->sub));
        json_array_append_new(arr, j);
    }
    return arr;
}
