/* loader.h - finding, dlopen()ing and checking plugins. */
#ifndef OD_LOADER_H
#define OD_LOADER_H

#include <stddef.h>
#include <orderd/plugin.h>

struct od_plugin {
    char                *name;   /* descriptor name */
    char                *path;   /* file it came from */
    void                *dl;
    const orderd_plugin *desc;
};

struct od_registry {
    char              **dirs;    /* search path, first match wins */
    size_t              ndirs;
    struct od_plugin  **plugins; /* loaded so far */
    size_t              nplugins;
};

/* dirs: a colon-separated search path.  0 or -ENOMEM. */
int  od_registry_init(struct od_registry *r, const char *dirs);
void od_registry_free(struct od_registry *r);

/* Load (once) the plugin named name (a bare name searched in the dirs, or a
 * path ending in ".so").  On failure returns NULL and writes one line into
 * err: file missing, not a plugin, ABI mismatch, duplicate name. */
const struct od_plugin *od_registry_get(struct od_registry *r, const char *name,
                                        char *err, size_t errlen);

/* Load every *.so in every dir; errors are appended, one line each, through
 * cb (may be NULL).  RETURNS: number of failures. */
int od_registry_scan(struct od_registry *r, void (*cb)(void *arg, const char *err), void *arg);

/* The stage of kind k the plugin provides, or NULL. */
const orderd_stage *od_plugin_stage(const struct od_plugin *p, orderd_kind k);
/* "input, publish" - the kinds provided, for messages.  Static buffer per call site. */
void od_plugin_kinds(const struct od_plugin *p, char *buf, size_t len);

const char *od_kind_name(orderd_kind k);

#endif
