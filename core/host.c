/* host.c - the function table every plugin receives: the message part from
 * msg.c, the rest backed by the engine, logging and metrics. */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dlq.h"
#include "loader.h"
#include "log.h"
#include "metrics.h"
#include "msg.h"
#include "pipe.h"

static const char *host_state_dir_value;

void od_host_set_state_dir(const char *dir)
{
    host_state_dir_value = dir;
}

static void host_vlog(orderd_inst *inst, int level, const char *fmt, va_list ap)
{
    if (inst == NULL) {
        od_vlogf(level, NULL, NULL, NULL, fmt, ap);
        return;
    }
    od_vlogf(level, od_pipe_name(inst->pipe), inst->sc->name, inst->sc->plugin->name, fmt, ap);
}

static void host_log(orderd_inst *inst, int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    host_vlog(inst, level, fmt, ap);
    va_end(ap);
}

static int host_has_feature(const char *name)
{
    static const char *const features[] = { "spool", "dead_letter", "lookup", NULL };

    for (const char *const *f = features; *f; f++)
        if (strcmp(*f, name) == 0)
            return 1;
    return 0;
}

static int host_dead_letter(orderd_inst *inst, orderd_msg *m, const char *reason)
{
    int rc;

    if (m == NULL)
        return -EINVAL;
    rc = od_dlq_append(od_pipe_state_dir(inst->pipe), od_pipe_name(inst->pipe), inst->sc->name, m,
                       reason ? reason : "dead-lettered by the input");
    if (rc == 0) {
        char labels[200];
        snprintf(labels, sizeof(labels), "pipeline=\"%s\"", od_pipe_name(inst->pipe));
        od_metrics_counter_add("orderd_dead_letters_total", "Messages written to the dead-letter area",
                               labels, 1);
        od_logf(ORDERD_LOG_WARN, od_pipe_name(inst->pipe), inst->sc->name, inst->sc->plugin->name,
                "message %s dead-lettered: %s", m->id, reason ? reason : "");
    }
    od_msg_free(m);
    return rc;
}

static void host_metric_add(orderd_inst *inst, const char *name, double delta)
{
    od_metrics_plugin_add(od_pipe_name(inst->pipe), inst->sc->name, name, delta);
}

static void host_metric_set(orderd_inst *inst, const char *name, double value)
{
    od_metrics_plugin_set(od_pipe_name(inst->pipe), inst->sc->name, name, value);
}

static const char *host_pipeline_name(const orderd_inst *inst)
{
    return od_pipe_name(inst->pipe);
}

static const char *host_stage_name(const orderd_inst *inst)
{
    return inst->sc->name;
}

static const char *host_state_dir(void)
{
    return host_state_dir_value ? host_state_dir_value : ".";
}

static orderd_host table;
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void table_init(void)
{
    table = od_msg_host_part;
    table.log = host_log;
    table.vlog = host_vlog;
    table.has_feature = host_has_feature;
    table.submit = od_pipe_submit;
    table.submit_async = od_pipe_submit_async;
    table.submit_flush = od_pipe_submit_flush;
    table.settle = od_pipe_settle;
    table.dead_letter = host_dead_letter;
    table.lookup = od_pipe_lookup;
    table.metric_add = host_metric_add;
    table.metric_set = host_metric_set;
    table.pipeline_name = host_pipeline_name;
    table.stage_name = host_stage_name;
    table.state_dir = host_state_dir;
}

const orderd_host *od_host_table(void)
{
    pthread_once(&table_once, table_init);
    return &table;
}
