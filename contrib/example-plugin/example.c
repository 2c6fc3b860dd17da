/*
 * example.c - a partner's orderd plugin, built out of tree.
 *
 * One transform, "example": it tags every JSON object body with a field
 * (by default "partner": "example") and refuses, for good, bodies that carry
 * "reject_me": true - the core then dead-letters them with our reason.
 * Bodies that are not objects pass through untouched.
 *
 * Everything it needs comes from <orderd/plugin.h> (found through
 * `pkg-config orderd-plugin`) and jansson; it never links against orderd.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <orderd/plugin.h>

/* Declared, not parsed: the daemon checks the administrator's keys against
 * this table and hands create() every key, defaults applied. */
static const orderd_option ex_options[] = {
    { .key = "field", .type = ORDERD_T_STRING, .def = "partner",
      .help = "name of the top-level body field this stage sets" },
    { .key = "value", .type = ORDERD_T_STRING, .def = "example",
      .help = "string stored in that field (replaces any value already there)" },
    { .key = NULL }
};

struct ex_state {
    const orderd_host *h;
    orderd_inst       *inst;
    char              *field;
    char              *value;
};

static void ex_destroy(void *state)
{
    struct ex_state *st = state;

    if (st == NULL)
        return;
    free(st->field);
    free(st->value);
    free(st);
}

static int ex_create(orderd_inst *inst, const orderd_host *host, const json_t *conf,
                     void **state)
{
    struct ex_state *st = calloc(1, sizeof(*st));
    const char *field = json_string_value(json_object_get(conf, "field"));
    const char *value = json_string_value(json_object_get(conf, "value"));

    if (st == NULL)
        return -ENOMEM;
    st->h = host;
    st->inst = inst;
    /* conf is borrowed for this call only: keep copies. */
    st->field = strdup(field ? field : "partner");
    st->value = strdup(value ? value : "example");
    if (st->field == NULL || st->value == NULL) {
        host->log(inst, ORDERD_LOG_ERR, "out of memory");
        ex_destroy(st);
        return -ENOMEM;
    }
    if (st->field[0] == '\0') {
        host->log(inst, ORDERD_LOG_ERR, "field must not be empty");
        ex_destroy(st);
        return -EINVAL;
    }
    *state = st;
    return 0;
}

/* Called from any worker thread, for different messages at once: it only
 * reads the state, and each body belongs to its own message. */
static orderd_outcome ex_process(void *state, orderd_msg *m)
{
    struct ex_state *st = state;
    json_t *body = st->h->msg_body(m);

    if (!json_is_object(body))
        return ORDERD_OK;
    if (json_is_true(json_object_get(body, "reject_me")))
        return st->h->reject(m, "example: body has \"reject_me\": true");
    if (json_object_set_new(body, st->field, json_string(st->value)) < 0)
        return st->h->retry(m, 0, "example: cannot set field '%s'", st->field);
    return ORDERD_OK;
}

static const orderd_stage ex_transform = ORDERD_STAGE(
    .kind = ORDERD_TRANSFORM,
    .description = "tag object bodies with a partner field; reject bodies marked reject_me",
    .options = ex_options,
    .create = ex_create,
    .process = ex_process,
    .destroy = ex_destroy);

static const orderd_stage *const ex_stages[] = { &ex_transform, NULL };

ORDERD_PLUGIN(.name = "example", .version = "1.0",
              .description = "example partner plugin (built out of tree)",
              .maintainer = "Example Partner <partner@example.invalid>",
              .stages = ex_stages);
