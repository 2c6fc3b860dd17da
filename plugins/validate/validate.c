/*
 * validate.c - the `validate` transform: refuse orders that do not match a
 * JSON Schema.
 *
 * The schema file is read and compiled once in create(), so a broken file
 * stops the stage from starting (and `orderd --check-config` reports it)
 * instead of dead-lettering every order.  A violation is permanent: the
 * message is REJECTed (dead-lettered) with the instance path and the rule,
 * e.g. "/items/0/qty: 0 is less than minimum 1".
 *
 * Lifecycle commands (message property "command" present and not "create")
 * carry a command body, not an order, so by default they pass untouched.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <orderd/plugin.h>

#include "jsonschema.h"

struct val_state {
    orderd_inst       *inst;
    const orderd_host *host;
    jsonschema        *schema;
    int                all_commands;   /* commands = "validate" */
};

static const orderd_option val_options[] = {
    { .key = "schema", .type = ORDERD_T_PATH, .flags = ORDERD_OPT_REQUIRED,
      .help = "JSON Schema file (draft 2020-12 subset; `pattern` is POSIX ERE) every order must match" },
    { .key = "commands", .type = ORDERD_T_STRING, .def = "skip", .choices = "skip|validate",
      .help = "lifecycle commands (property command other than \"create\"): skip them, or validate their bodies too" },
    { .key = NULL }
};

static int val_create(orderd_inst *inst, const orderd_host *host, const json_t *conf, void **state)
{
    struct val_state *st;
    json_error_t jerr;
    json_t *doc = NULL;
    const char *path = json_string_value(json_object_get(conf, "schema"));
    const char *cmds = json_string_value(json_object_get(conf, "commands"));
    char err[512];
    int rc = -EINVAL;

    st = calloc(1, sizeof(*st));
    if (st == NULL) {
        host->log(inst, ORDERD_LOG_ERR, "out of memory");
        return -ENOMEM;
    }
    st->inst = inst;
    st->host = host;
    st->all_commands = cmds != NULL && strcmp(cmds, "validate") == 0;
    if (path == NULL) {
        host->log(inst, ORDERD_LOG_ERR, "no schema file configured");
        goto fail;
    }
    doc = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL) {
        if (jerr.line > 0)
            host->log(inst, ORDERD_LOG_ERR, "schema %s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
        else
            host->log(inst, ORDERD_LOG_ERR, "schema %s: %s", path, jerr.text);
        rc = errno == ENOENT ? -ENOENT : -EINVAL;
        goto fail;
    }
    st->schema = jsonschema_compile(doc, err, sizeof(err));
    if (st->schema == NULL) {
        host->log(inst, ORDERD_LOG_ERR, "%s: %s", path, err);
        goto fail;
    }
    json_decref(doc);
    *state = st;
    return 0;

fail:
    json_decref(doc);
    free(st);
    return rc;
}

static orderd_outcome val_process(void *state, orderd_msg *m)
{
    struct val_state *st = state;
    const orderd_host *h = st->host;
    const char *cmd = h->msg_prop(m, "command");
    const json_t *body;
    char err[512];
    int rc;

    if (!st->all_commands && cmd != NULL && strcmp(cmd, "create") != 0)
        return ORDERD_OK;
    /* Read only: a body that came as text keeps it (ABI 1.3), so the
     * stages after this one need not encode it again. */
    body = ORDERD_HOST_HAS(h, msg_body_peek) ? h->msg_body_peek(m) : h->msg_body(m);
    if (body == NULL) {
        h->metric_add(st->inst, "invalid", 1);
        return h->reject(m, "message has no JSON body to validate");
    }
    rc = jsonschema_validate(st->schema, body, err, sizeof(err));
    if (rc == 0)
        return ORDERD_OK;
    if (rc < 0)
        return h->retry(m, 0, "validation failed: %s", strerror(-rc));
    h->metric_add(st->inst, "invalid", 1);
    h->log(st->inst, ORDERD_LOG_DEBUG, "message %s rejected: %s", h->msg_id(m), err);
    return h->reject(m, "%s", err);
}

static void val_destroy(void *state)
{
    struct val_state *st = state;

    if (st == NULL)
        return;
    jsonschema_free(st->schema);
    free(st);
}

static const orderd_stage val_transform = ORDERD_STAGE(
    .kind = ORDERD_TRANSFORM,
    .description = "reject messages whose JSON body does not match a JSON Schema",
    .options = val_options,
    .create = val_create,
    .process = val_process,
    .destroy = val_destroy);

static const orderd_stage *const val_stages[] = { &val_transform, NULL };

ORDERD_PLUGIN(.name = "validate", .version = "1.0",
              .description = "JSON Schema validation transform",
              .maintainer = "orderd developers",
              .stages = val_stages);
