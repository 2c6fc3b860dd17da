/*
 * bad.c - plugins the loader must refuse, one per mistake a partner can make.
 *
 * Built several times, each with one of these defined:
 *   BAD_MAJOR2   descriptor says ABI 2.0            (file abi_major2.so)
 *   BAD_MINOR99  descriptor says ABI 1.99           (file abi_minor99.so)
 *   BAD_NOSYM    descriptor under the wrong symbol  (file abi_nosym.so)
 *   BAD_DUPNAME  calls itself "file"                (file abi_dupname.so)
 *   BAD_MISNAME  name differs from its file's name  (file abi_misname.so)
 * The descriptor is written out literally rather than with ORDERD_PLUGIN()
 * so the ABI numbers can be wrong on purpose.  The objects land in
 * tests/abi/.libs, outside the test plugin path, so no directory scan
 * trips over them.
 */
#include "plugin-1.0.h"

static int bad_create(orderd_inst *inst, const orderd_host *host, const json_t *conf,
                      void **state)
{
    *state = NULL;
    return 0;
}

static orderd_outcome bad_process(void *state, orderd_msg *m)
{
    return ORDERD_OK;
}

static const orderd_stage bad_transform = ORDERD_STAGE(
    .kind = ORDERD_TRANSFORM,
    .description = "never runs: the loader refuses this plugin",
    .create = bad_create,
    .process = bad_process);

static const orderd_stage *const bad_stages[] = { &bad_transform, NULL };

#if defined(BAD_MAJOR2)
#define BAD_NAME  "abi_major2"
#define BAD_MAJOR 2u
#define BAD_MINOR 0u
#elif defined(BAD_MINOR99)
#define BAD_NAME  "abi_minor99"
#define BAD_MAJOR ORDERD_ABI_MAJOR
#define BAD_MINOR 99u
#elif defined(BAD_NOSYM)
#define BAD_NAME  "abi_nosym"
#define BAD_MAJOR ORDERD_ABI_MAJOR
#define BAD_MINOR ORDERD_ABI_MINOR
#elif defined(BAD_DUPNAME)
#define BAD_NAME  "file"
#define BAD_MAJOR ORDERD_ABI_MAJOR
#define BAD_MINOR ORDERD_ABI_MINOR
#elif defined(BAD_MISNAME)
#define BAD_NAME  "not_my_file_name"
#define BAD_MAJOR ORDERD_ABI_MAJOR
#define BAD_MINOR ORDERD_ABI_MINOR
#else
#error "define one of BAD_MAJOR2 BAD_MINOR99 BAD_NOSYM BAD_DUPNAME BAD_MISNAME"
#endif

#if defined(BAD_NOSYM)
/* A typo'd symbol name: exported by nothing, found by nobody. */
#define BAD_SYMBOL orderd_plugin_v0
#else
#define BAD_SYMBOL orderd_plugin_v1
#endif

ORDERD_EXPORT extern const orderd_plugin BAD_SYMBOL;
ORDERD_EXPORT const orderd_plugin BAD_SYMBOL = {
    .size = sizeof(orderd_plugin),
    .abi_major = BAD_MAJOR,
    .abi_minor = BAD_MINOR,
    .name = BAD_NAME,
    .version = "0.0",
    .description = "a plugin the loader must refuse",
    .maintainer = "orderd tests",
    .stages = bad_stages,
};
