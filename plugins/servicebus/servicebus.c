/* servicebus.c - the `servicebus` plugin: an input that receives from a
 * Service Bus queue or topic subscription in peek-lock mode, and a publish
 * stage that sends to a queue or topic and answers only after the broker's
 * disposition.  Both speak AMQP 1.0 through Qpid Proton-C (sb_client.c). */
#include "config.h"

#include <errno.h>
#include <stdlib.h>

#include "sb.h"

struct sb_stage {
    struct sb_conf    conf;
    struct sb_client *client;
};

static int
sb_create(orderd_inst *inst, const orderd_host *h, const json_t *j, void **state, orderd_kind kind)
{
    struct sb_stage *st = calloc(1, sizeof(*st));
    char err[512] = "";
    int rc;

    if (st == NULL)
        return -ENOMEM;
    rc = sb_conf_parse(&st->conf, kind, j, err, sizeof(err));
    if (rc < 0) {
        h->log(inst, ORDERD_LOG_ERR, "%s", err[0] ? err : "out of memory");
        goto fail;
    }
    rc = sb_client_new(inst, h, &st->conf, &st->client);
    if (rc < 0) {
        h->log(inst, ORDERD_LOG_ERR, "cannot create the AMQP client");
        goto fail;
    }
    /* a publish stage has no start(): connect now, so the first message does not wait */
    if (kind == ORDERD_PUBLISH && (rc = sb_client_start(st->client)) < 0) {
        h->log(inst, ORDERD_LOG_ERR, "cannot start the AMQP thread");
        goto fail;
    }
    *state = st;
    return 0;
fail:
    sb_client_free(st->client);
    sb_conf_free(&st->conf);
    free(st);
    return rc;
}

static int
sb_input_create(orderd_inst *inst, const orderd_host *h, const json_t *j, void **state)
{
    return sb_create(inst, h, j, state, ORDERD_INPUT);
}

static int
sb_publish_create(orderd_inst *inst, const orderd_host *h, const json_t *j, void **state)
{
    return sb_create(inst, h, j, state, ORDERD_PUBLISH);
}

static int
sb_start(void *state)
{
    struct sb_stage *st = state;

    return sb_client_start(st->client);
}

static void
sb_stop(void *state)
{
    struct sb_stage *st = state;

    sb_client_stop_receiving(st->client);
}

static orderd_outcome
sb_process(void *state, orderd_msg *m)
{
    struct sb_stage *st = state;

    return sb_client_publish(st->client, m);
}

static void
sb_ack(void *state, orderd_msg *m, orderd_outcome o, const char *reason)
{
    struct sb_stage *st = state;

    sb_client_ack(st->client, m, o, reason);
}

static void
sb_destroy(void *state)
{
    struct sb_stage *st = state;

    sb_client_free(st->client);
    sb_conf_free(&st->conf);
    free(st);
}

static const orderd_stage sb_input = ORDERD_STAGE(
    .kind = ORDERD_INPUT,
    .flags = ORDERD_SF_REDELIVERS | ORDERD_SF_DEADLETTERS,
    .description = "Receive orders from a Service Bus queue or topic subscription (AMQP 1.0, peek-lock): "
                   "complete, abandon or dead-letter each, renewing locks while in flight",
    .options = sb_input_options,
    .create = sb_input_create,
    .start = sb_start,
    .stop = sb_stop,
    .ack = sb_ack,
    .destroy = sb_destroy);

static const orderd_stage sb_publish = ORDERD_STAGE(
    .kind = ORDERD_PUBLISH,
    .flags = ORDERD_SF_ASYNC_SETTLE,
    .description = "Send events to a Service Bus queue or topic (AMQP 1.0); a message is done only "
                   "once the broker accepted it",
    .options = sb_publish_options,
    .create = sb_publish_create,
    .process = sb_process,
    .destroy = sb_destroy);

static const orderd_stage *const sb_stages[] = { &sb_input, &sb_publish, NULL };

ORDERD_PLUGIN(.name = "servicebus",
              .version = PACKAGE_VERSION,
              .description = "Azure Service Bus (and other AMQP 1.0 brokers) input and publish",
              .maintainer = "orderd developers",
              .stages = sb_stages);
