/* loader.c - finding, dlopen()ing and checking plugins.
 *
 * A plugin is loaded RTLD_NOW (missing symbols fail here, not mid-run) and
 * RTLD_LOCAL (two plugins bundling different copies of a library cannot
 * clash).  Before anything of it is used, the descriptor is checked: ABI
 * major equal, minor not newer than ours, struct sizes large enough, stage
 * tables sane.  Every refusal is one line naming the file.
 */
#include "config.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loader.h"
#include "util.h"

const char *od_kind_name(orderd_kind k)
{
    switch (k) {
    case ORDERD_INPUT:     return "input";
    case ORDERD_TRANSFORM: return "transform";
    case ORDERD_STORE:     return "store";
    case ORDERD_PUBLISH:   return "publish";
    }
    return "unknown";
}

int od_registry_init(struct od_registry *r, const char *dirs)
{
    char *copy = strdup(dirs ? dirs : ""), *save = NULL;

    memset(r, 0, sizeof(*r));
    if (copy == NULL)
        return -ENOMEM;
    for (char *d = strtok_r(copy, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        char **grown = realloc(r->dirs, (r->ndirs + 1) * sizeof(*r->dirs));
        if (grown == NULL)
            break;
        r->dirs = grown;
        if ((r->dirs[r->ndirs] = strdup(d)) != NULL)
            r->ndirs++;
    }
    free(copy);
    if (r->ndirs == 0) {  /* keep ndirs > 0 so callers know init ran */
        r->dirs = malloc(sizeof(*r->dirs));
        if (r->dirs == NULL || (r->dirs[0] = strdup(".")) == NULL)
            return -ENOMEM;
        r->ndirs = 1;
    }
    return 0;
}

void od_registry_free(struct od_registry *r)
{
    for (size_t i = 0; i < r->nplugins; i++) {
        struct od_plugin *p = r->plugins[i];
        /* Plugins are never dlclose()d: libraries they pull in (librdkafka,
         * OpenSSL, libcurl, Proton) keep global state and threads that do not
         * survive being unmapped, and nothing is gained - a reload dlopen()s
         * the same file again and gets the same mapping back. */
        free(p->name);
        free(p->path);
        free(p);
    }
    free(r->plugins);
    for (size_t i = 0; i < r->ndirs; i++)
        free(r->dirs[i]);
    free(r->dirs);
    memset(r, 0, sizeof(*r));
}

static int has_suffix(const char *s, const char *suffix)
{
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

static const char *reserved_keys[] = { "plugin", "name", NULL };

/* Check a descriptor before trusting any of it.  0, or -EINVAL with err set. */
static int check_descriptor(const orderd_plugin *d, const char *path, char *err, size_t errlen)
{
    unsigned seen = 0;

    if (d->abi_major != ORDERD_ABI_MAJOR || d->abi_minor > ORDERD_ABI_MINOR) {
        snprintf(err, errlen, "%s: built for plugin ABI %u.%u; this orderd provides ABI %u.%u%s",
                 path, d->abi_major, d->abi_minor, ORDERD_ABI_MAJOR, ORDERD_ABI_MINOR,
                 d->abi_major != ORDERD_ABI_MAJOR ? " (major versions differ: rebuild the plugin)"
                                                  : " (plugin needs a newer orderd)");
        return -EINVAL;
    }
    if (d->size < offsetof(orderd_plugin, reserved)) {
        snprintf(err, errlen, "%s: plugin descriptor is %u bytes, smaller than ABI %u.0's",
                 path, d->size, ORDERD_ABI_MAJOR);
        return -EINVAL;
    }
    if (d->name == NULL || d->name[0] == '\0' || d->stages == NULL) {
        snprintf(err, errlen, "%s: plugin descriptor has no name or no stages", path);
        return -EINVAL;
    }
    for (const orderd_stage *const *sp = d->stages; *sp; sp++) {
        const orderd_stage *s = *sp;
        if (s->size < offsetof(orderd_stage, reserved)) {
            snprintf(err, errlen, "%s: plugin '%s' has a stage of %u bytes, smaller than ABI %u.0's",
                     path, d->name, s->size, ORDERD_ABI_MAJOR);
            return -EINVAL;
        }
        if (s->kind < ORDERD_INPUT || s->kind > ORDERD_PUBLISH || (seen & (1u << s->kind))) {
            snprintf(err, errlen, "%s: plugin '%s' declares kind %d twice or an unknown kind",
                     path, d->name, (int)s->kind);
            return -EINVAL;
        }
        seen |= 1u << s->kind;
        if (s->create == NULL ||
            (s->kind == ORDERD_INPUT && s->start == NULL) ||
            (s->kind != ORDERD_INPUT && s->process == NULL && s->process_batch == NULL)) {
            snprintf(err, errlen, "%s: plugin '%s' %s stage lacks required callbacks",
                     path, d->name, od_kind_name(s->kind));
            return -EINVAL;
        }
        for (const orderd_option *o = s->options; o && o->key; o++) {
            for (const char **r = reserved_keys; *r; r++) {
                if (strcmp(o->key, *r) == 0) {
                    snprintf(err, errlen, "%s: plugin '%s' declares the core's key '%s'",
                             path, d->name, o->key);
                    return -EINVAL;
                }
            }
            if (o->type < ORDERD_T_STRING || o->type > ORDERD_T_GROUPLIST ||
                ((o->type == ORDERD_T_GROUP || o->type == ORDERD_T_GROUPLIST) && o->sub == NULL)) {
                snprintf(err, errlen, "%s: plugin '%s' option '%s' has a bad type",
                         path, d->name, o->key);
                return -EINVAL;
            }
        }
    }
    if (seen == 0) {
        snprintf(err, errlen, "%s: plugin '%s' provides no stages", path, d->name);
        return -EINVAL;
    }
    return 0;
}

/* dlopen path and check it; on success the plugin is added to r. */
static const struct od_plugin *load_path(struct od_registry *r, const char *path, const char *want,
                                         char *err, size_t errlen)
{
    void *dl;
    const orderd_plugin *d;
    struct od_plugin *p, **grown;
    char *real = realpath(path, NULL);

    for (size_t i = 0; i < r->nplugins; i++) {
        if (real && strcmp(r->plugins[i]->path, real) == 0) {
            free(real);
            return r->plugins[i];
        }
    }
    dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        snprintf(err, errlen, "%s: cannot load: %s", path, dlerror());
        free(real);
        return NULL;
    }
    d = dlsym(dl, ORDERD_PLUGIN_SYMBOL);
    if (d == NULL) {
        snprintf(err, errlen, "%s: not an orderd plugin (no symbol %s)", path, ORDERD_PLUGIN_SYMBOL);
        goto fail;
    }
    if (check_descriptor(d, path, err, errlen) < 0)
        goto fail;
    if (want && strcmp(d->name, want) != 0) {
        snprintf(err, errlen, "%s: file is named '%s' but the plugin calls itself '%s'",
                 path, want, d->name);
        goto fail;
    }
    for (size_t i = 0; i < r->nplugins; i++) {
        if (strcmp(r->plugins[i]->name, d->name) == 0) {
            snprintf(err, errlen, "%s: duplicate plugin name '%s' (already loaded from %s)",
                     path, d->name, r->plugins[i]->path);
            goto fail;
        }
    }
    p = calloc(1, sizeof(*p));
    grown = realloc(r->plugins, (r->nplugins + 1) * sizeof(*r->plugins));
    if (p == NULL || grown == NULL) {
        free(p);
        if (grown)
            r->plugins = grown;
        snprintf(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    r->plugins = grown;
    p->name = strdup(d->name);
    p->path = real ? real : strdup(path);
    p->dl = dl;
    p->desc = d;
    r->plugins[r->nplugins++] = p;
    return p;
fail:
    dlclose(dl);
    free(real);
    return NULL;
}

const struct od_plugin *od_registry_get(struct od_registry *r, const char *name,
                                        char *err, size_t errlen)
{
    char *path = NULL;

    for (size_t i = 0; i < r->nplugins; i++)
        if (strcmp(r->plugins[i]->name, name) == 0)
            return r->plugins[i];

    if (strchr(name, '/') || has_suffix(name, ".so")) {
        if (access(name, F_OK) < 0) {
            snprintf(err, errlen, "plugin file %s: %s", name, strerror(errno));
            return NULL;
        }
        return load_path(r, name, NULL, err, errlen);
    }
    for (const char *c = name; *c; c++) {
        if (!(*c >= 'a' && *c <= 'z') && !(*c >= '0' && *c <= '9') && *c != '_' && *c != '-') {
            snprintf(err, errlen, "bad plugin name '%s' (lower-case letters, digits, '_', '-')", name);
            return NULL;
        }
    }
    for (size_t i = 0; i < r->ndirs; i++) {
        const struct od_plugin *p;
        if (asprintf(&path, "%s/%s.so", r->dirs[i], name) < 0)
            break;
        if (access(path, F_OK) == 0) {
            p = load_path(r, path, name, err, errlen);
            free(path);
            return p;
        }
        free(path);
        path = NULL;
    }
    {
        size_t used = (size_t)snprintf(err, errlen, "plugin '%s' not found: no %s.so in", name, name);
        for (size_t i = 0; i < r->ndirs && used < errlen; i++)
            used += (size_t)snprintf(err + used, errlen - used, "%s%s", i ? ":" : " ", r->dirs[i]);
    }
    return NULL;
}

int od_registry_scan(struct od_registry *r, void (*cb)(void *arg, const char *err), void *arg)
{
    int failures = 0;

    for (size_t i = 0; i < r->ndirs; i++) {
        DIR *d = opendir(r->dirs[i]);
        struct dirent *e;
        if (d == NULL)
            continue;
        while ((e = readdir(d)) != NULL) {
            char *path, err[512];
            if (!has_suffix(e->d_name, ".so"))
                continue;
            if (asprintf(&path, "%s/%s", r->dirs[i], e->d_name) < 0)
                continue;
            {
                char stem[256];
                snprintf(stem, sizeof(stem), "%.*s", (int)(strlen(e->d_name) - 3), e->d_name);
                if (load_path(r, path, stem, err, sizeof(err)) == NULL) {
                    failures++;
                    if (cb)
                        cb(arg, err);
                }
            }
            free(path);
        }
        closedir(d);
    }
    return failures;
}

const orderd_stage *od_plugin_stage(const struct od_plugin *p, orderd_kind k)
{
    for (const orderd_stage *const *sp = p->desc->stages; *sp; sp++)
        if ((*sp)->kind == k)
            return *sp;
    return NULL;
}

void od_plugin_kinds(const struct od_plugin *p, char *buf, size_t len)
{
    size_t used = 0;

    buf[0] = '\0';
    for (orderd_kind k = ORDERD_INPUT; k <= ORDERD_PUBLISH; k++)
        if (od_plugin_stage(p, k) && used < len)
            used += (size_t)snprintf(buf + used, len - used, "%s%s", used ? ", " : "", od_kind_name(k));
}
