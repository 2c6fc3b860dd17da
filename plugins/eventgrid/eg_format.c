/* eg_format.c - what a topic receives: one message as an Event Grid schema
 * event or a CloudEvents 1.0 (structured JSON) event, with eventType,
 * subject and source taken from templates over the message's properties and
 * body.  Pure functions over the host's message accessors: no I/O, so the
 * bytes can be checked without a network.
 *
 * Template syntax: literal text with placeholders in braces.  A placeholder
 * lists alternatives separated by '|'; the first one that has a value wins:
 *   name         message property `name`, else body field `name` (dots walk
 *                into objects: customer.id)
 *   prop:name    message property only
 *   body:path    body field only
 *   msg:id       the message id;  msg:partition_key  its partition key
 *   =text        literal fallback (may be empty)
 * "{{" and "}}" stand for literal braces.  A placeholder without any value
 * makes the event unpublishable (the message is rejected with that reason),
 * because a wrong type or subject would be routed to the wrong subscribers. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eventgrid.h"

enum eg_alt_kind { EG_ALT_ANY, EG_ALT_PROP, EG_ALT_BODY, EG_ALT_ID, EG_ALT_PKEY, EG_ALT_LIT };

struct eg_alt {
    enum eg_alt_kind  kind;
    char             *arg;
};

struct eg_part {
    char           *lit;    /* literal text, or NULL for a placeholder */
    char           *raw;    /* placeholder as written, for error messages */
    struct eg_alt  *alts;
    size_t          nalts;
};

struct eg_tmpl {
    struct eg_part *parts;
    size_t          nparts;
};

void
eg_tmpl_free(struct eg_tmpl *t)
{
    size_t i, j;

    if (t == NULL)
        return;
    for (i = 0; i < t->nparts; i++) {
        free(t->parts[i].lit);
        free(t->parts[i].raw);
        for (j = 0; j < t->parts[i].nalts; j++)
            free(t->parts[i].alts[j].arg);
        free(t->parts[i].alts);
    }
    free(t->parts);
    free(t);
}

static struct eg_part *
eg_tmpl_add(struct eg_tmpl *t)
{
    struct eg_part *np = realloc(t->parts, (t->nparts + 1) * sizeof(*np));

    if (np == NULL)
        return NULL;
    t->parts = np;
    memset(&np[t->nparts], 0, sizeof(*np));
    return &np[t->nparts++];
}

static int
eg_alt_parse(struct eg_alt *a, const char *s, size_t n)
{
    static const struct { const char *pre; enum eg_alt_kind kind; } kinds[] = {
        { "prop:", EG_ALT_PROP }, { "body:", EG_ALT_BODY }, { "=", EG_ALT_LIT },
    };
    size_t i;

    a->kind = EG_ALT_ANY;
    if (n == 6 && memcmp(s, "msg:id", 6) == 0) {
        a->kind = EG_ALT_ID;
        n = 0;
    } else if (n == 17 && memcmp(s, "msg:partition_key", 17) == 0) {
        a->kind = EG_ALT_PKEY;
        n = 0;
    } else {
        for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
            size_t pl = strlen(kinds[i].pre);

            if (n >= pl && memcmp(s, kinds[i].pre, pl) == 0) {
                a->kind = kinds[i].kind;
                s += pl;
                n -= pl;
                break;
            }
        }
        if (n == 0 && a->kind != EG_ALT_LIT)
            return -EINVAL;
        if (a->kind == EG_ALT_ANY && n >= 4 && memcmp(s, "msg:", 4) == 0)
            return -EINVAL;
    }
    a->arg = strndup(s, n);
    return a->arg == NULL ? -ENOMEM : 0;
}

struct eg_tmpl *
eg_tmpl_parse(const char *text, char *err, size_t errlen)
{
    struct eg_tmpl *t = calloc(1, sizeof(*t));
    char *lit = NULL;
    size_t llen = 0;
    const char *p = text;

    if (t == NULL || (lit = malloc(strlen(text) + 1)) == NULL)
        goto nomem;
    while (1) {
        if (*p == '\0' || (*p == '{' && p[1] != '{')) {
            struct eg_part *part;
            const char *end, *a;

            if (llen > 0) {
                if ((part = eg_tmpl_add(t)) == NULL || (part->lit = strndup(lit, llen)) == NULL)
                    goto nomem;
                llen = 0;
            }
            if (*p == '\0')
                break;
            end = strchr(p + 1, '}');
            if (end == NULL || memchr(p + 1, '{', (size_t) (end - p - 1)) != NULL) {
                snprintf(err, errlen, "unbalanced '{' in template \"%s\"", text);
                goto fail;
            }
            if ((part = eg_tmpl_add(t)) == NULL
                || (part->raw = strndup(p, (size_t) (end - p + 1))) == NULL)
                goto nomem;
            for (a = p + 1; a <= end; ) {
                const char *bar = memchr(a, '|', (size_t) (end - a));
                const char *stop = bar != NULL ? bar : end;
                struct eg_alt *na = realloc(part->alts, (part->nalts + 1) * sizeof(*na));
                int rc;

                if (na == NULL)
                    goto nomem;
                part->alts = na;
                memset(&na[part->nalts], 0, sizeof(*na));
                rc = eg_alt_parse(&na[part->nalts], a, (size_t) (stop - a));
                part->nalts++;
                if (rc == -ENOMEM)
                    goto nomem;
                if (rc < 0) {
                    snprintf(err, errlen, "bad placeholder %s in template \"%s\" (want name, "
                             "prop:name, body:path, msg:id, msg:partition_key or =text)",
                             part->raw, text);
                    goto fail;
                }
                a = stop + 1;
            }
            p = end + 1;
        } else if (*p == '}' && p[1] != '}') {
            snprintf(err, errlen, "unbalanced '}' in template \"%s\" (write '}}' for a brace)", text);
            goto fail;
        } else {
            lit[llen++] = *p;
            p += (*p == '{' || *p == '}') ? 2 : 1;
        }
    }
    free(lit);
    return t;

nomem:
    snprintf(err, errlen, "out of memory");
fail:
    free(lit);
    eg_tmpl_free(t);
    return NULL;
}

/* A body value as text: strings as they are, numbers and booleans as JSON;
 * objects, arrays and null count as absent (no sensible text form). */
static char *
eg_body_value(json_t *body, const char *path)
{
    char *copy = strdup(path), *save = NULL, *tok;
    json_t *v = body;

    if (copy == NULL)
        return NULL;
    for (tok = strtok_r(copy, ".", &save); tok != NULL && v != NULL; tok = strtok_r(NULL, ".", &save))
        v = json_is_object(v) ? json_object_get(v, tok) : NULL;
    free(copy);
    if (json_is_string(v))
        return strdup(json_string_value(v));
    if (json_is_number(v) || json_is_boolean(v))
        return json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    return NULL;
}

static char *
eg_alt_value(const struct eg_alt *a, const struct eg_src *src)
{
    const char *s = NULL;

    switch (a->kind) {
    case EG_ALT_LIT:
        return strdup(a->arg);
    case EG_ALT_ID:
        s = src->h->msg_id(src->m);
        break;
    case EG_ALT_PKEY:
        s = src->h->msg_partition_key(src->m);
        break;
    case EG_ALT_PROP:
    case EG_ALT_ANY:
        s = src->h->msg_prop(src->m, a->arg);
        if (s == NULL && a->kind == EG_ALT_ANY)
            return eg_body_value(src->h->msg_body(src->m), a->arg);
        break;
    case EG_ALT_BODY:
        return eg_body_value(src->h->msg_body(src->m), a->arg);
    }
    return s != NULL && *s != '\0' ? strdup(s) : NULL;
}

char *
eg_tmpl_expand(const struct eg_tmpl *t, const struct eg_src *src, char *err, size_t errlen)
{
    char *out = calloc(1, 1);
    size_t len = 0, i, j;

    if (out == NULL)
        goto nomem;
    for (i = 0; i < t->nparts; i++) {
        const struct eg_part *part = &t->parts[i];
        char *v = part->lit != NULL ? strdup(part->lit) : NULL, *np;
        size_t vl;

        for (j = 0; part->lit == NULL && j < part->nalts && v == NULL; j++)
            v = eg_alt_value(&part->alts[j], src);
        if (v == NULL) {
            if (part->lit != NULL)
                goto nomem;
            snprintf(err, errlen, "no value for %s (no such message property or body field)",
                     part->raw);
            free(out);
            return NULL;
        }
        vl = strlen(v);
        np = realloc(out, len + vl + 1);
        if (np == NULL) {
            free(v);
            goto nomem;
        }
        out = np;
        memcpy(out + len, v, vl + 1);
        len += vl;
        free(v);
    }
    return out;

nomem:
    free(out);
    snprintf(err, errlen, "out of memory");
    return NULL;
}

/* RFC 3339 UTC with milliseconds.  The enqueue time is used, not the
 * publish time, so a redelivered message republishes identical bytes. */
static void
eg_time(int64_t ms, char *out, size_t len)
{
    struct tm tm;
    time_t s;

    if (ms <= 0) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        ms = (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    }
    s = (time_t) (ms / 1000);
    gmtime_r(&s, &tm);
    snprintf(out, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int) (ms % 1000));
}

char *
eg_format_event(const struct eg_fmt *f, const struct eg_src *src, char *err, size_t errlen)
{
    const orderd_host *h = src->h;
    char when[64], *type = NULL, *subject = NULL, *source = NULL, *text = NULL;
    json_t *o = json_object();
    int rc = 0;

    if (o == NULL) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    type = eg_tmpl_expand(f->type, src, err, errlen);
    if (type == NULL)
        goto out;
    if (*type == '\0') {
        snprintf(err, errlen, "event_type is empty");
        goto out;
    }
    subject = eg_tmpl_expand(f->subject, src, err, errlen);
    if (subject == NULL)
        goto out;
    if (f->schema == EG_SCHEMA_CLOUDEVENTS) {
        source = eg_tmpl_expand(f->source, src, err, errlen);
        if (source == NULL)
            goto out;
        if (*source == '\0') {
            snprintf(err, errlen, "source is empty");
            goto out;
        }
    }
    eg_time(h->msg_enqueued_ms(src->m), when, sizeof(when));

    /* Insertion order is kept (JSON_PRESERVE_ORDER): stable bytes. */
    if (f->schema == EG_SCHEMA_EVENTGRID) {
        rc |= json_object_set_new(o, "id", json_string(h->msg_id(src->m)));
        rc |= json_object_set_new(o, "eventType", json_string(type));
        rc |= json_object_set_new(o, "subject", json_string(subject));
        rc |= json_object_set_new(o, "eventTime", json_string(when));
        rc |= json_object_set_new(o, "dataVersion", json_string(f->data_version));
        if (f->topic != NULL)
            rc |= json_object_set_new(o, "topic", json_string(f->topic));
        rc |= json_object_set(o, "data", h->msg_body(src->m));
    } else {
        rc |= json_object_set_new(o, "specversion", json_string("1.0"));
        rc |= json_object_set_new(o, "id", json_string(h->msg_id(src->m)));
        rc |= json_object_set_new(o, "source", json_string(source));
        rc |= json_object_set_new(o, "type", json_string(type));
        if (*subject != '\0')
            rc |= json_object_set_new(o, "subject", json_string(subject));
        rc |= json_object_set_new(o, "time", json_string(when));
        rc |= json_object_set_new(o, "datacontenttype", json_string("application/json"));
        rc |= json_object_set(o, "data", h->msg_body(src->m));
    }
    if (rc != 0 || (text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER)) == NULL)
        snprintf(err, errlen, "cannot encode the event (not valid UTF-8?)");

out:
    free(type);
    free(subject);
    free(source);
    json_decref(o);
    return text;
}
