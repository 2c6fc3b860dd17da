/*
 * abi10.c - a plugin built against the frozen ABI 1.0 header only.
 *
 * It includes tests/abi/plugin-1.0.h by relative path and is compiled with
 * -I$(srcdir)/abi and without core/include, so it sees exactly what a
 * partner who built against orderd 1.0 saw.  If today's daemon cannot load
 * it and drive it, we broke binary compatibility.  Its one transform sets
 * the property abi10 = "ok" on every message.
 */
#include "plugin-1.0.h"

/* Catch a build that silently picked up the current header instead. */
#if ORDERD_ABI_MAJOR != 1u || ORDERD_ABI_MINOR != 0u
#error "abi10 must be built against the frozen ABI 1.0 header"
#endif

struct a10_state {
    const orderd_host *host;
    orderd_inst       *inst;
};

static int a10_create(orderd_inst *inst, const orderd_host *host, const json_t *conf,
                      void **state)
{
    static struct a10_state st;

    /* One state for every instance is enough: it only holds the host table
     * and the handle of the last stage created, both valid for the run. */
    st.host = host;
    st.inst = inst;
    *state = &st;
    return 0;
}

static orderd_outcome a10_process(void *state, orderd_msg *m)
{
    struct a10_state *st = state;

    if (st->host->msg_set_prop(m, "abi10", "ok") < 0)
        return st->host->retry(m, 0, "abi10: out of memory");
    return ORDERD_OK;
}

static void a10_destroy(void *state)
{
}

static const orderd_stage a10_transform = ORDERD_STAGE(
    .kind = ORDERD_TRANSFORM,
    .description = "sets property abi10 = \"ok\" (ABI 1.0 compatibility check)",
    .create = a10_create,
    .process = a10_process,
    .destroy = a10_destroy);

static const orderd_stage *const a10_stages[] = { &a10_transform, NULL };

ORDERD_PLUGIN(.name = "abi10", .version = "1.0",
              .description = "frozen ABI 1.0 test plugin",
              .maintainer = "orderd tests",
              .stages = a10_stages);
