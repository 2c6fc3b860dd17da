/* conf.h - the configuration: libconfig file -> validated model.
 *
 * Every check (core keys, pipeline shape, each stage's keys against its
 * plugin's schema) runs before anything starts, and every error carries
 * file:line.  The same path serves the daemon, --check-config and SIGHUP.
 */
#ifndef OD_CONF_H
#define OD_CONF_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <jansson.h>
#include <orderd/plugin.h>

struct od_registry;
struct od_plugin;

struct od_retry_conf {
    uint32_t max_attempts;     /* per stage, before abandoning to the input */
    int64_t  backoff_base_ms;
    int64_t  backoff_cap_ms;
    uint32_t max_deliveries;   /* core-redelivered inputs: then dead-letter */
    int64_t  redeliver_delay_ms;
};

struct od_batch_conf {
    uint32_t max;              /* messages per batch handed to process_batch */
    int64_t  linger_ms;        /* wait this long to fill a batch */
};

struct od_stage_conf {
    char                    *name;      /* "name" key, or plugin name (+ index) */
    char                    *plugin_name;
    const struct od_plugin  *plugin;
    const orderd_stage      *stage;
    orderd_kind              kind;
    json_t                  *conf;      /* validated, defaults applied */
    char                    *file;
    int                      line;
};

struct od_pipeline_conf {
    char                 *name;
    char                 *file;
    int                   line;
    uint32_t              workers;
    uint32_t              queue_size;
    int                   ordered;      /* one message per partition key at a time */
    struct od_retry_conf  retry;
    struct od_batch_conf  batch;
    json_t               *spool;        /* validated spool group, or NULL */
    struct od_stage_conf  input;
    struct od_stage_conf *transforms;
    size_t                ntransforms;
    struct od_stage_conf *store;        /* NULL when none */
    struct od_stage_conf *publish;
    size_t                npublish;
};

struct od_conf {
    char                    *path;
    char                    *state_dir;
    char                    *plugin_path;    /* colon-separated */
    int                      log_level;
    int                      log_json;
    int                      admin_enabled;
    char                    *admin_listen;
    int64_t                  shutdown_timeout_ms;
    json_t                  *core;           /* validated core keys, for dumps */
    struct od_pipeline_conf *pipelines;
    size_t                   npipelines;
};

/* Values given on the command line win over the file. */
struct od_conf_overrides {
    const char *state_dir;
    const char *plugin_path;
};

/* Collected errors, "file:line: message" each. */
struct od_errs {
    char  **msg;
    size_t  n;
};
void od_errs_add(struct od_errs *e, const char *file, int line, const char *fmt, ...)
    ORDERD_PRINTF(4, 5);
void od_errs_free(struct od_errs *e);

/* Load and validate path.  Plugins named by stages are loaded into reg
 * (created from the config's plugin path) so their schemas can be checked.
 * RETURNS: a model (even with errors, as far as it got) in *out; 0 when
 * errs is empty, -EINVAL otherwise. */
int  od_conf_load(const char *path, const struct od_conf_overrides *ov,
                  struct od_registry *reg, struct od_conf **out, struct od_errs *errs);
void od_conf_free(struct od_conf *c);

/* The effective configuration as JSON text with secrets replaced by "***".
 * Caller frees. */
char *od_conf_dump(const struct od_conf *c);

/* Check one stage's keys, written as libconfig text ("path = \"x\"; ..."),
 * against a stage schema, exactly as for a stage in a file: for the plugin
 * test harness.  Relative paths resolve against base_dir or state_dir.
 * RETURNS: 0 and the converted object in *out, or -EINVAL with errs filled. */
int od_conf_check_stage_text(const char *text, const orderd_stage *stage, const char *state_dir,
                             const char *base_dir, json_t **out, struct od_errs *errs);

/* The core's own schemas (also printed by --help-config). */
const orderd_option *od_core_options(void);      /* top-level keys */
const orderd_option *od_pipeline_options(void);  /* keys of one pipeline */
const orderd_option *od_spool_options(void);     /* keys of a pipeline's spool */

/* Print a schema as an aligned text table (for --help-plugin / --help). */
void od_options_print(FILE *f, const orderd_option *opts, int indent);
/* The same as JSON (array of {key,type,default,required,secret,help,...}). */
json_t *od_options_json(const orderd_option *opts);
const char *od_type_name(orderd_type t);

#endif
