/*
 * jsonschema.c - compile a JSON Schema subset once, validate many times.
 *
 * The schema is turned into a tree of js_node at compile time so that
 * validation never re-reads keywords, never allocates and never fails for
 * a reason other than the instance: a bad schema is found when the stage
 * is created, not on the first order.  See jsonschema.h for the keywords.
 */
#include <errno.h>
#include <math.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonschema.h"
#include "../common/jsondec.h"

/* Recursion guard: schemas and $ref cycles deeper than this are refused. */
#define JS_MAX_DEPTH 128
#define JS_PATH_MAX  512

enum {
    JT_NULL    = 1u << 0,
    JT_BOOLEAN = 1u << 1,
    JT_OBJECT  = 1u << 2,
    JT_ARRAY   = 1u << 3,
    JT_NUMBER  = 1u << 4,
    JT_STRING  = 1u << 5,
    JT_INTEGER = 1u << 6
};

static const struct {
    const char *name;
    unsigned    bit;
} js_type_names[] = {
    { "null", JT_NULL }, { "boolean", JT_BOOLEAN }, { "object", JT_OBJECT },
    { "array", JT_ARRAY }, { "number", JT_NUMBER }, { "string", JT_STRING },
    { "integer", JT_INTEGER }
};

enum { JN_MIN = 1u << 0, JN_MAX = 1u << 1, JN_XMIN = 1u << 2, JN_XMAX = 1u << 3 };

struct js_node;

/* A pattern of the form ^[set]+$, ^[set]*$, ^[set]{n}$, ^[set]{m,n}$ or
 * ^[set]{m,}$ with an ASCII-only set, checked without regexec(): the
 * shipped schema's three patterns cost more than the rest of a validation. */
struct js_span {
    unsigned char set[32];          /* bit per byte value */
    long long     min, max;         /* length bounds; max -1 = none */
};

struct js_prop {
    char           *name;
    size_t          namelen;
    struct js_node *node;
};

struct js_node {
    int              boolean;       /* -1 a keyword schema; 0 `false`; 1 `true` */
    unsigned         types;         /* JT_* mask; 0 = any type */
    json_t          *enum_vals;     /* owned reference, or NULL */
    json_t          *const_val;     /* owned reference, or NULL */
    unsigned         num_flags;     /* JN_* */
    double           minimum, maximum, xminimum, xmaximum;
    long long        min_len, max_len, min_items, max_items;  /* -1 = unset */
    char           **required;
    size_t           nrequired;
    struct js_prop  *props;
    size_t           nprops;
    struct js_node  *additional;    /* owned, or NULL */
    struct js_node  *items;         /* owned, or NULL */
    regex_t          re;
    char            *pattern;       /* non-NULL when re is compiled */
    struct js_span  *span;          /* pattern as a byte set + length bounds, or NULL */
    char            *ref;           /* "$defs" name, resolved into ref_node */
    const struct js_node *ref_node; /* borrowed from jsonschema.defs */
};

struct jsonschema {
    struct js_node *root;
    struct js_prop *defs;
    size_t          ndefs;
};

/* A JSON Pointer being built, for error messages. */
struct js_path {
    char   buf[JS_PATH_MAX];
    size_t len;
};

struct js_ctx {
    const char    *prefix;      /* "schema " while compiling, "" validating */
    struct js_path path;
    char          *err;
    size_t         errlen;
};

/* Append one reference token, escaped per RFC 6901; returns the old length
 * so the caller can pop it.  Overlong paths end in "/..." rather than fail:
 * the message stays useful and validation never allocates. */
static size_t js_push(struct js_path *p, const char *tok)
{
    size_t old = p->len;
    size_t need = 1;
    const char *c;

    for (c = tok; *c; c++)
        need += (*c == '~' || *c == '/') ? 2 : 1;
    if (p->len + need + 1 > sizeof(p->buf) - 5) {
        if (p->len + 5 <= sizeof(p->buf) && strcmp(p->buf + (p->len >= 4 ? p->len - 4 : 0), "/...") != 0) {
            memcpy(p->buf + p->len, "/...", 5);
            p->len += 4;
        }
        return old;
    }
    p->buf[p->len++] = '/';
    for (c = tok; *c; c++) {
        if (*c == '~' || *c == '/') {
            p->buf[p->len++] = '~';
            p->buf[p->len++] = *c == '~' ? '0' : '1';
        } else {
            p->buf[p->len++] = *c;
        }
    }
    p->buf[p->len] = '\0';
    return old;
}

/* Every array element is pushed while it is checked, error or not: the
 * digits are written by hand, snprintf() was a tenth of the schema check. */
static size_t js_push_index(struct js_path *p, size_t i)
{
    char num[24], *d = num + sizeof(num) - 1;

    *d = '\0';
    do {
        *--d = (char)('0' + i % 10);
        i /= 10;
    } while (i > 0);
    return js_push(p, d);
}

static void js_pop(struct js_path *p, size_t old)
{
    p->len = old;
    p->buf[old] = '\0';
}

static int js_fail(struct js_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int js_fail(struct js_ctx *c, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (c->errlen == 0)
        return 1;
    n = snprintf(c->err, c->errlen, "%s%s: ", c->prefix, c->path.len ? c->path.buf : "/");
    if (n < 0 || (size_t)n >= c->errlen)
        return 1;
    va_start(ap, fmt);
    vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return 1;
}

/* A short rendering of a value for messages: numbers as written, other
 * values as compact JSON cut at 80 bytes. */
static const char *js_show(const json_t *v, char *buf, size_t len)
{
    char *s;

    if (json_is_integer(v)) {
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf;
    }
    if (json_is_real(v)) {
        snprintf(buf, len, "%.15g", json_real_value(v));
        return buf;
    }
    s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (s == NULL) {
        snprintf(buf, len, "(value)");
        return buf;
    }
    if (strlen(s) > 80 && len > 84)
        snprintf(buf, len, "%.80s...", s);
    else
        snprintf(buf, len, "%s", s);
    free(s);
    return buf;
}

static void js_node_free(struct js_node *n)
{
    size_t i;

    if (n == NULL)
        return;
    json_decref(n->enum_vals);
    json_decref(n->const_val);
    for (i = 0; i < n->nrequired; i++)
        free(n->required[i]);
    free(n->required);
    for (i = 0; i < n->nprops; i++) {
        free(n->props[i].name);
        js_node_free(n->props[i].node);
    }
    free(n->props);
    js_node_free(n->additional);
    js_node_free(n->items);
    free(n->span);
    if (n->pattern != NULL) {
        regfree(&n->re);
        free(n->pattern);
    }
    free(n->ref);
    free(n);
}

static struct js_node *js_compile_node(struct js_ctx *c, const json_t *s, int depth);

/* Compile the schema found under keyword `kw` of the current node. */
static struct js_node *js_compile_sub(struct js_ctx *c, const char *kw, const json_t *s, int depth)
{
    size_t old = js_push(&c->path, kw);
    struct js_node *n = js_compile_node(c, s, depth + 1);

    if (n != NULL)
        js_pop(&c->path, old);
    return n;
}

static int js_get_count(struct js_ctx *c, const json_t *obj, const char *kw, long long *out)
{
    const json_t *v = json_object_get(obj, kw);

    *out = -1;
    if (v == NULL)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        js_push(&c->path, kw);
        return js_fail(c, "must be a non-negative integer");
    }
    *out = json_integer_value(v);
    return 0;
}

static int js_get_number(struct js_ctx *c, const json_t *obj, const char *kw, double *out,
                         unsigned flag, unsigned *flags)
{
    const json_t *v = json_object_get(obj, kw);

    if (v == NULL)
        return 0;
    if (!json_is_number(v)) {
        js_push(&c->path, kw);
        return js_fail(c, "must be a number");
    }
    *out = json_number_value(v);
    *flags |= flag;
    return 0;
}

static int js_compile_type(struct js_ctx *c, struct js_node *n, const json_t *t)
{
    size_t i, k, nt;
    const json_t *e;

    if (!json_is_string(t) && !json_is_array(t)) {
        js_push(&c->path, "type");
        return js_fail(c, "must be a type name or an array of type names");
    }
    nt = json_is_array(t) ? json_array_size(t) : 1;
    for (i = 0; i < nt; i++) {
        e = json_is_array(t) ? json_array_get(t, i) : t;
        for (k = 0; json_is_string(e) && k < sizeof(js_type_names) / sizeof(js_type_names[0]); k++) {
            if (strcmp(json_string_value(e), js_type_names[k].name) == 0)
                break;
        }
        if (!json_is_string(e) || k == sizeof(js_type_names) / sizeof(js_type_names[0])) {
            char show[128];

            js_push(&c->path, "type");
            return js_fail(c, "unknown type %s (expected null, boolean, object, array, number, string or integer)",
                           js_show(e, show, sizeof(show)));
        }
        n->types |= js_type_names[k].bit;
    }
    return 0;
}

static int js_compile_object_kws(struct js_ctx *c, struct js_node *n, const json_t *s, int depth)
{
    const json_t *v, *sub;
    const char *key;
    size_t i, old;

    v = json_object_get(s, "required");
    if (v != NULL) {
        if (!json_is_array(v)) {
            js_push(&c->path, "required");
            return js_fail(c, "must be an array of property names");
        }
        n->required = calloc(json_array_size(v) + 1, sizeof(*n->required));
        if (n->required == NULL)
            return js_fail(c, "out of memory");
        json_array_foreach(v, i, sub) {
            if (!json_is_string(sub)) {
                js_push(&c->path, "required");
                js_push_index(&c->path, i);
                return js_fail(c, "must be a string");
            }
            n->required[i] = strdup(json_string_value(sub));
            if (n->required[i] == NULL)
                return js_fail(c, "out of memory");
            n->nrequired = i + 1;
        }
    }

    v = json_object_get(s, "properties");
    if (v != NULL) {
        if (!json_is_object(v)) {
            js_push(&c->path, "properties");
            return js_fail(c, "must be an object of schemas");
        }
        n->props = calloc(json_object_size(v) + 1, sizeof(*n->props));
        if (n->props == NULL)
            return js_fail(c, "out of memory");
        old = js_push(&c->path, "properties");
        json_object_foreach((json_t *)v, key, sub) {
            struct js_prop *p = &n->props[n->nprops];

            p->name = strdup(key);
            if (p->name == NULL)
                return js_fail(c, "out of memory");
            p->namelen = strlen(key);
            n->nprops++;
            p->node = js_compile_sub(c, key, sub, depth);
            if (p->node == NULL)
                return 1;
        }
        js_pop(&c->path, old);
    }

    v = json_object_get(s, "additionalProperties");
    if (v != NULL) {
        n->additional = js_compile_sub(c, "additionalProperties", v, depth);
        if (n->additional == NULL)
            return 1;
    }
    return 0;
}

static int js_compile_array_kws(struct js_ctx *c, struct js_node *n, const json_t *s, int depth)
{
    const json_t *v = json_object_get(s, "items");

    if (v != NULL) {
        if (json_is_array(v)) {
            js_push(&c->path, "items");
            return js_fail(c, "must be a schema (the array form is prefixItems since draft 2020-12)");
        }
        n->items = js_compile_sub(c, "items", v, depth);
        if (n->items == NULL)
            return 1;
    }
    if (js_get_count(c, s, "minItems", &n->min_items) || js_get_count(c, s, "maxItems", &n->max_items))
        return 1;
    return 0;
}

/* Add a..b to a span's set.  Ranges only within digits, upper or lower
 * case letters: elsewhere the locale's collation could decide. */
static int js_span_range(struct js_span *sp, unsigned char a, unsigned char b)
{
    unsigned c;

    if (a != b && !((a >= '0' && b <= '9') || (a >= 'A' && b <= 'Z') || (a >= 'a' && b <= 'z')))
        return -1;
    if (a > b)
        return -1;
    for (c = a; c <= b; c++)
        sp->set[c >> 3] |= (unsigned char)(1u << (c & 7));
    return 0;
}

static int js_span_count(const char **pp, long long *out)
{
    const char *p = *pp;
    long long v = 0;

    if (*p < '0' || *p > '9')
        return -1;
    while (*p >= '0' && *p <= '9' && v < 100000)
        v = v * 10 + (*p++ - '0');
    if (*p >= '0' && *p <= '9')
        return -1;
    *out = v;
    *pp = p;
    return 0;
}

/* The span of pattern, or NULL when it is not one of the simple forms (the
 * regex is then used).  Only printable ASCII other than ^ [ ] \ in the set. */
static struct js_span *js_span_compile(const char *pat)
{
    struct js_span sp;
    const char *p = pat;
    unsigned char c;

    memset(&sp, 0, sizeof(sp));
    if (*p++ != '^' || *p++ != '[' || *p == '^' || *p == ']')
        return NULL;
    while (*p != ']') {
        c = (unsigned char)*p;
        if (c < 0x21 || c > 0x7e || c == '[' || c == '\\' || c == '^')
            return NULL;
        if (p[1] == '-' && p[2] != ']' && p[2] != '\0') {
            if (js_span_range(&sp, c, (unsigned char)p[2]) != 0)
                return NULL;
            p += 3;
        } else if (c == '-' && p != pat + 2 && p[1] != ']') {
            return NULL;    /* a '-' neither first nor last */
        } else {
            js_span_range(&sp, c, c);
            p++;
        }
    }
    p++;
    if (*p == '+') {
        sp.min = 1, sp.max = -1;
        p++;
    } else if (*p == '*') {
        sp.min = 0, sp.max = -1;
        p++;
    } else if (*p == '{') {
        p++;
        if (js_span_count(&p, &sp.min) != 0)
            return NULL;
        sp.max = sp.min;
        if (*p == ',') {
            p++;
            sp.max = -1;
            if (*p != '}' && (js_span_count(&p, &sp.max) != 0 || sp.max < sp.min))
                return NULL;
        }
        if (*p++ != '}')
            return NULL;
    } else {
        return NULL;
    }
    if (strcmp(p, "$") != 0)
        return NULL;
    {
        struct js_span *out = malloc(sizeof(*out));

        if (out != NULL)
            *out = sp;
        return out;   /* NULL on ENOMEM: the regex still works */
    }
}

static int js_span_match(const struct js_span *sp, const char *s, size_t len)
{
    size_t i;

    if ((long long)len < sp->min || (sp->max >= 0 && (long long)len > sp->max))
        return 0;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (!(sp->set[c >> 3] & (1u << (c & 7))))
            return 0;
    }
    return 1;
}

static int js_compile_string_kws(struct js_ctx *c, struct js_node *n, const json_t *s)
{
    const json_t *v;
    int rc;

    if (js_get_count(c, s, "minLength", &n->min_len) || js_get_count(c, s, "maxLength", &n->max_len))
        return 1;
    v = json_object_get(s, "pattern");
    if (v == NULL)
        return 0;
    if (!json_is_string(v)) {
        js_push(&c->path, "pattern");
        return js_fail(c, "must be a string (a POSIX extended regular expression)");
    }
    rc = regcomp(&n->re, json_string_value(v), REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        char why[128];

        regerror(rc, &n->re, why, sizeof(why));
        js_push(&c->path, "pattern");
        return js_fail(c, "bad POSIX extended regular expression: %s", why);
    }
    n->pattern = strdup(json_string_value(v));
    if (n->pattern == NULL) {
        regfree(&n->re);
        return js_fail(c, "out of memory");
    }
    n->span = js_span_compile(n->pattern);
    return 0;
}

static int js_compile_ref(struct js_ctx *c, struct js_node *n, const json_t *v)
{
    const char *r;
    char *d;

    if (!json_is_string(v) || strncmp(json_string_value(v), "#/$defs/", 8) != 0
        || json_string_value(v)[8] == '\0' || strchr(json_string_value(v) + 8, '/') != NULL) {
        js_push(&c->path, "$ref");
        return js_fail(c, "only references of the form \"#/$defs/<name>\" are supported");
    }
    n->ref = malloc(strlen(json_string_value(v) + 8) + 1);
    if (n->ref == NULL)
        return js_fail(c, "out of memory");
    /* unescape the JSON Pointer token: ~1 is '/', ~0 is '~' */
    for (r = json_string_value(v) + 8, d = n->ref; *r; r++) {
        if (r[0] == '~' && (r[1] == '0' || r[1] == '1')) {
            *d++ = r[1] == '0' ? '~' : '/';
            r++;
        } else {
            *d++ = *r;
        }
    }
    *d = '\0';
    return 0;
}

static struct js_node *js_compile_node(struct js_ctx *c, const json_t *s, int depth)
{
    struct js_node *n;
    const json_t *v;

    if (depth > JS_MAX_DEPTH) {
        js_fail(c, "schema nested deeper than %d levels", JS_MAX_DEPTH);
        return NULL;
    }
    if (!json_is_object(s) && !json_is_boolean(s)) {
        js_fail(c, "a schema must be an object or a boolean");
        return NULL;
    }
    n = calloc(1, sizeof(*n));
    if (n == NULL) {
        js_fail(c, "out of memory");
        return NULL;
    }
    n->min_len = n->max_len = n->min_items = n->max_items = -1;
    if (json_is_boolean(s)) {
        n->boolean = json_is_true(s);
        return n;
    }
    n->boolean = -1;

    v = json_object_get(s, "type");
    if (v != NULL && js_compile_type(c, n, v))
        goto fail;
    v = json_object_get(s, "enum");
    if (v != NULL) {
        if (!json_is_array(v)) {
            js_push(&c->path, "enum");
            js_fail(c, "must be an array");
            goto fail;
        }
        n->enum_vals = json_incref((json_t *)v);
    }
    v = json_object_get(s, "const");
    if (v != NULL)
        n->const_val = json_incref((json_t *)v);
    if (js_get_number(c, s, "minimum", &n->minimum, JN_MIN, &n->num_flags)
        || js_get_number(c, s, "maximum", &n->maximum, JN_MAX, &n->num_flags)
        || js_get_number(c, s, "exclusiveMinimum", &n->xminimum, JN_XMIN, &n->num_flags)
        || js_get_number(c, s, "exclusiveMaximum", &n->xmaximum, JN_XMAX, &n->num_flags))
        goto fail;
    if (js_compile_string_kws(c, n, s) || js_compile_array_kws(c, n, s, depth)
        || js_compile_object_kws(c, n, s, depth))
        goto fail;
    v = json_object_get(s, "$ref");
    if (v != NULL && js_compile_ref(c, n, v))
        goto fail;
    return n;

fail:
    js_node_free(n);
    return NULL;
}

/* Point every $ref at its $defs entry; a dangling one is a compile error. */
static int js_resolve(struct js_ctx *c, struct jsonschema *js, struct js_node *n)
{
    size_t i;

    if (n == NULL)
        return 0;
    if (n->ref != NULL) {
        for (i = 0; i < js->ndefs; i++) {
            if (strcmp(js->defs[i].name, n->ref) == 0)
                break;
        }
        if (i == js->ndefs) {
            js_fail(c, "$ref \"#/$defs/%s\" names no entry of $defs", n->ref);
            return 1;
        }
        n->ref_node = js->defs[i].node;
    }
    for (i = 0; i < n->nprops; i++) {
        if (js_resolve(c, js, n->props[i].node))
            return 1;
    }
    return js_resolve(c, js, n->additional) || js_resolve(c, js, n->items);
}

jsonschema *jsonschema_compile(const json_t *schema, char *err, size_t errlen)
{
    struct js_ctx c;
    struct jsonschema *js;
    const json_t *defs, *sub;
    const char *key;
    size_t i, old;

    memset(&c.path, 0, sizeof(c.path));
    c.prefix = "schema ";
    c.err = err;
    c.errlen = errlen;

    js = calloc(1, sizeof(*js));
    if (js == NULL) {
        js_fail(&c, "out of memory");
        return NULL;
    }
    /* $defs are compiled first, at the root only, so $ref can point at them. */
    defs = json_is_object(schema) ? json_object_get(schema, "$defs") : NULL;
    if (defs != NULL) {
        if (!json_is_object(defs)) {
            js_push(&c.path, "$defs");
            js_fail(&c, "must be an object of schemas");
            goto fail;
        }
        js->defs = calloc(json_object_size(defs) + 1, sizeof(*js->defs));
        if (js->defs == NULL) {
            js_fail(&c, "out of memory");
            goto fail;
        }
        old = js_push(&c.path, "$defs");
        json_object_foreach((json_t *)defs, key, sub) {
            js->defs[js->ndefs].name = strdup(key);
            if (js->defs[js->ndefs].name == NULL) {
                js_fail(&c, "out of memory");
                goto fail;
            }
            js->ndefs++;
            js->defs[js->ndefs - 1].node = js_compile_sub(&c, key, sub, 0);
            if (js->defs[js->ndefs - 1].node == NULL)
                goto fail;
        }
        js_pop(&c.path, old);
    }
    js->root = js_compile_node(&c, schema, 0);
    if (js->root == NULL || js_resolve(&c, js, js->root))
        goto fail;
    for (i = 0; i < js->ndefs; i++) {
        if (js_resolve(&c, js, js->defs[i].node))
            goto fail;
    }
    return js;

fail:
    jsonschema_free(js);
    return NULL;
}

void jsonschema_free(jsonschema *js)
{
    size_t i;

    if (js == NULL)
        return;
    js_node_free(js->root);
    for (i = 0; i < js->ndefs; i++) {
        free(js->defs[i].name);
        js_node_free(js->defs[i].node);
    }
    free(js->defs);
    free(js);
}

/* ---- validation ---- */

/* The type bits of a real number: JSON Schema counts 3.0 as an integer,
 * it is the same number as 3. */
static unsigned js_real_type(double d)
{
    return JT_NUMBER | (isfinite(d) && floor(d) == d ? JT_INTEGER : 0);
}

static unsigned js_type_of(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_NULL:    return JT_NULL;
    case JSON_TRUE:
    case JSON_FALSE:   return JT_BOOLEAN;
    case JSON_OBJECT:  return JT_OBJECT;
    case JSON_ARRAY:   return JT_ARRAY;
    case JSON_STRING:  return JT_STRING;
    case JSON_INTEGER: return JT_NUMBER | JT_INTEGER;
    case JSON_REAL:    return js_real_type(json_real_value(v));
    }
    return 0;
}

static const char *js_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_NULL:    return "null";
    case JSON_TRUE:
    case JSON_FALSE:   return "boolean";
    case JSON_OBJECT:  return "object";
    case JSON_ARRAY:   return "array";
    case JSON_STRING:  return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL:    return "number";
    }
    return "?";
}

/* JSON Schema equality: 1 and 1.0 are equal, objects ignore key order. */
static int js_equal(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b))
        return json_number_value(a) == json_number_value(b);
    return json_equal((json_t *)a, (json_t *)b);
}

static size_t js_utf8_len(const char *s, size_t bytes)
{
    size_t i, n = 0;

    for (i = 0; i < bytes; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            n++;
    }
    return n;
}

static int js_check(struct js_ctx *c, const struct js_node *n, const json_t *v, int depth);

/* The rules themselves, shared by the check of a tree (js_check, which
 * words the error) and the check of text (jt_value, which only needs to
 * know). */

/* The first of n's numeric bounds that d breaks (JN_*), or 0. */
static unsigned js_number_breaks(const struct js_node *n, double d)
{
    if ((n->num_flags & JN_MIN) && d < n->minimum)
        return JN_MIN;
    if ((n->num_flags & JN_MAX) && d > n->maximum)
        return JN_MAX;
    if ((n->num_flags & JN_XMIN) && d <= n->xminimum)
        return JN_XMIN;
    if ((n->num_flags & JN_XMAX) && d >= n->xmaximum)
        return JN_XMAX;
    return 0;
}

/* count against a minimum and a maximum (-1: unset): -1 under, 1 over,
 * 0 within.  For minLength/maxLength and minItems/maxItems. */
static int js_count_breaks(long long min, long long max, long long count)
{
    if (min >= 0 && count < min)
        return -1;
    if (max >= 0 && count > max)
        return 1;
    return 0;
}

/* Does n's "type" allow a value of type bits t? */
static int js_type_allows(const struct js_node *n, unsigned t)
{
    return n->types == 0 || (n->types & t) != 0;
}

/* Does s (len bytes) match n's pattern?  s must be NUL-terminated at len
 * unless the pattern is a span (checked without regexec()). */
static int js_pattern_matches(const struct js_node *n, const char *s, size_t len)
{
    return n->span != NULL ? js_span_match(n->span, s, len) : regexec(&n->re, s, 0, NULL, 0) == 0;
}

static int js_check_number(struct js_ctx *c, const struct js_node *n, const json_t *v)
{
    char a[64];

    switch (js_number_breaks(n, json_number_value(v))) {
    case JN_MIN:
        return js_fail(c, "%s is less than minimum %.15g", js_show(v, a, sizeof(a)), n->minimum);
    case JN_MAX:
        return js_fail(c, "%s is greater than maximum %.15g", js_show(v, a, sizeof(a)), n->maximum);
    case JN_XMIN:
        return js_fail(c, "%s is not greater than exclusiveMinimum %.15g", js_show(v, a, sizeof(a)), n->xminimum);
    case JN_XMAX:
        return js_fail(c, "%s is not less than exclusiveMaximum %.15g", js_show(v, a, sizeof(a)), n->xmaximum);
    }
    return 0;
}

static int js_check_string(struct js_ctx *c, const struct js_node *n, const json_t *v)
{
    size_t len;
    char a[128];

    if (n->min_len >= 0 || n->max_len >= 0) {
        len = js_utf8_len(json_string_value(v), json_string_length(v));
        switch (js_count_breaks(n->min_len, n->max_len, (long long)len)) {
        case -1:
            return js_fail(c, "%s is shorter than minLength %lld", js_show(v, a, sizeof(a)), n->min_len);
        case 1:
            return js_fail(c, "string of %zu characters is longer than maxLength %lld", len, n->max_len);
        }
    }
    /* strlen() check: regexec() cannot see past an embedded NUL, so such a
     * string could slip past an anchored pattern. */
    if (n->pattern != NULL && (strlen(json_string_value(v)) != json_string_length(v)
                               || !js_pattern_matches(n, json_string_value(v), json_string_length(v))))
        return js_fail(c, "%s does not match pattern %s", js_show(v, a, sizeof(a)), n->pattern);
    return 0;
}

static int js_check_array(struct js_ctx *c, const struct js_node *n, const json_t *v, int depth)
{
    size_t i, size = json_array_size(v), old;
    const json_t *e;

    switch (js_count_breaks(n->min_items, n->max_items, (long long)size)) {
    case -1:
        return js_fail(c, "%zu items is fewer than minItems %lld", size, n->min_items);
    case 1:
        return js_fail(c, "%zu items is more than maxItems %lld", size, n->max_items);
    }
    if (n->items == NULL)
        return 0;
    json_array_foreach(v, i, e) {
        old = js_push_index(&c->path, i);
        if (js_check(c, n->items, e, depth + 1))
            return 1;
        js_pop(&c->path, old);
    }
    return 0;
}

static int js_check_object(struct js_ctx *c, const struct js_node *n, const json_t *v, int depth)
{
    const char *key;
    const json_t *e;
    size_t i, old;

    for (i = 0; i < n->nrequired; i++) {
        if (json_object_get(v, n->required[i]) == NULL) {
            js_push(&c->path, n->required[i]);
            return js_fail(c, "required property is missing");
        }
    }
    json_object_foreach((json_t *)v, key, e) {
        const struct js_node *sub = NULL;

        for (i = 0; i < n->nprops; i++) {
            if (strcmp(n->props[i].name, key) == 0) {
                sub = n->props[i].node;
                break;
            }
        }
        if (sub == NULL)
            sub = n->additional;
        if (sub == NULL)
            continue;
        old = js_push(&c->path, key);
        if (sub == n->additional && sub->boolean == 0)
            return js_fail(c, "additional property is not allowed");
        if (js_check(c, sub, e, depth + 1))
            return 1;
        js_pop(&c->path, old);
    }
    return 0;
}

static int js_check(struct js_ctx *c, const struct js_node *n, const json_t *v, int depth)
{
    unsigned t;
    size_t i;
    char a[128];

    if (depth > JS_MAX_DEPTH)
        return js_fail(c, "nested deeper than %d levels (recursive $ref?)", JS_MAX_DEPTH);
    if (n->boolean == 1)
        return 0;
    if (n->boolean == 0)
        return js_fail(c, "no value is allowed here (schema false)");
    if (n->ref_node != NULL && js_check(c, n->ref_node, v, depth + 1))
        return 1;

    t = js_type_of(v);
    if (!js_type_allows(n, t)) {
        char want[96] = "";

        for (i = 0; i < sizeof(js_type_names) / sizeof(js_type_names[0]); i++) {
            if (n->types & js_type_names[i].bit) {
                if (want[0] != '\0')
                    strncat(want, " or ", sizeof(want) - strlen(want) - 1);
                strncat(want, js_type_names[i].name, sizeof(want) - strlen(want) - 1);
            }
        }
        return js_fail(c, "expected %s, got %s", want, js_type_name(v));
    }
    if (n->enum_vals != NULL) {
        const json_t *e;

        json_array_foreach(n->enum_vals, i, e) {
            if (js_equal(e, v))
                break;
        }
        if (i == json_array_size(n->enum_vals)) {
            char b[128];

            return js_fail(c, "%s is not one of %s", js_show(v, a, sizeof(a)),
                           js_show(n->enum_vals, b, sizeof(b)));
        }
    }
    if (n->const_val != NULL && !js_equal(n->const_val, v)) {
        char b[128];

        return js_fail(c, "%s is not the constant %s", js_show(v, a, sizeof(a)),
                       js_show(n->const_val, b, sizeof(b)));
    }
    if (t & JT_NUMBER)
        return js_check_number(c, n, v);
    if (t & JT_STRING)
        return js_check_string(c, n, v);
    if (t & JT_ARRAY)
        return js_check_array(c, n, v, depth);
    if (t & JT_OBJECT)
        return js_check_object(c, n, v, depth);
    return 0;
}

int jsonschema_validate(const jsonschema *js, const json_t *instance, char *err, size_t errlen)
{
    struct js_ctx c;

    memset(&c.path, 0, sizeof(c.path));
    c.prefix = "";
    c.err = err;
    c.errlen = errlen;
    if (errlen > 0)
        err[0] = '\0';
    if (js == NULL || instance == NULL)
        return -EINVAL;
    return js_check(&c, js->root, instance, 0);
}

/* ---- validation on the text ----
 *
 * The same rules as js_check(), read off the text in one pass, for the
 * common case only: whatever is not plainly valid here (an error, an
 * escape, enum, a $ref next to other keywords...) is answered "cannot
 * tell", and the caller decodes the text and asks js_check(), which also
 * words the error.  So this never has to agree with js_check() on an
 * error message, only on "valid", and only for the text it takes. */

#define JT_MAX_DEPTH 32    /* nesting taken here; deeper goes to the tree */
#define JT_MAX_KEYS  32    /* members per object taken here (duplicates are looked for) */

struct jt {
    const char *p, *end;
    int         depth;
};

static void jt_ws(struct jt *t)
{
    while (t->p < t->end && (*t->p == ' ' || *t->p == '\n' || *t->p == '\r' || *t->p == '\t'))
        t->p++;
}

/* The string whose opening quote is at t->p, without escapes: its bytes
 * and its length in code points.  RETURNS: 1, or 0 (escape, control
 * character, bad UTF-8, unterminated). */
static int jt_string(struct jt *t, const char **s, size_t *bytes, size_t *chars)
{
    const char *p = ++t->p;
    size_t n = 0;

    while (p < t->end) {
        unsigned char c = (unsigned char)*p;

        if (c == '"') {
            *s = t->p;
            *bytes = (size_t)(p - t->p);
            *chars = n;
            t->p = p + 1;
            return 1;
        }
        if (c < 0x20 || c == '\\')
            return 0;
        if (c < 0x80) {
            p++;
        } else {
            size_t k = jdec_utf8((const unsigned char *)p, (const unsigned char *)t->end);

            if (k == 0)
                return 0;
            p += k;
        }
        n++;
    }
    return 0;
}

static int jt_value(struct jt *t, const struct js_node *n);

/* After an element or member: 1 a comma (another follows), 2 the closing
 * bracket (read), 0 anything else. */
static int jt_next(struct jt *t, char close)
{
    jt_ws(t);
    if (t->p < t->end && (*t->p == ',' || *t->p == close))
        return *t->p++ == ',' ? 1 : 2;
    return 0;
}

/* A $ref alone (every other keyword unset) is its target; a $ref with
 * company would need two checks of one value: not done here. */
static int jt_resolve(const struct js_node **np)
{
    const struct js_node *n = *np;
    int hops = 0;

    while (n != NULL && n->ref_node != NULL) {
        if (n->types != 0 || n->enum_vals != NULL || n->const_val != NULL || n->num_flags != 0 ||
            n->min_len >= 0 || n->max_len >= 0 || n->min_items >= 0 || n->max_items >= 0 ||
            n->nrequired != 0 || n->nprops != 0 || n->additional != NULL || n->items != NULL ||
            n->pattern != NULL || ++hops > JS_MAX_DEPTH)
            return 0;
        n = n->ref_node;
    }
    *np = n;
    return 1;
}

static int jt_string_value(struct jt *t, const struct js_node *n)
{
    const char *s;
    size_t bytes, chars;

    if (!jt_string(t, &s, &bytes, &chars))
        return 0;
    if (n == NULL)
        return 1;
    if (js_count_breaks(n->min_len, n->max_len, (long long)chars) != 0)
        return 0;
    if (n->pattern == NULL)
        return 1;
    if (n->span == NULL) {
        /* regexec() wants the string NUL-terminated */
        char buf[256];

        if (bytes >= sizeof(buf))
            return 0;
        memcpy(buf, s, bytes);
        buf[bytes] = '\0';
        return js_pattern_matches(n, buf, bytes);
    }
    return js_pattern_matches(n, s, bytes);
}

static int jt_number_value(struct jt *t, const struct js_node *n)
{
    struct jdec_num num;
    const char *p = jdec_scan_number(t->p, t->end, &num);

    if (p == NULL)
        return 0;
    t->p = p;
    return n == NULL || (js_type_allows(n, num.real ? js_real_type(num.d) : JT_NUMBER | JT_INTEGER) &&
                         js_number_breaks(n, num.d) == 0);
}

static int jt_array(struct jt *t, const struct js_node *n)
{
    const struct js_node *items = n ? n->items : NULL;
    long long count = 0;

    t->p++;
    jt_ws(t);
    if (t->p < t->end && *t->p == ']') {
        t->p++;
    } else {
        for (;;) {
            int next;

            if (!jt_value(t, items))
                return 0;
            count++;
            if ((next = jt_next(t, ']')) != 1) {
                if (next == 0)
                    return 0;
                break;
            }
        }
    }
    return n == NULL || js_count_breaks(n->min_items, n->max_items, count) == 0;
}

static int jt_object(struct jt *t, const struct js_node *n)
{
    struct { const char *s; size_t len; } keys[JT_MAX_KEYS];
    size_t nkeys = 0, i, k;

    t->p++;
    jt_ws(t);
    if (t->p < t->end && *t->p == '}') {
        t->p++;
    } else {
        for (;;) {
            const struct js_node *sub = NULL;
            const char *key;
            size_t klen, kchars;
            int next;

            if (t->p >= t->end || *t->p != '"' || !jt_string(t, &key, &klen, &kchars) ||
                nkeys == JT_MAX_KEYS)
                return 0;
            for (i = 0; i < nkeys; i++) {
                if (keys[i].len == klen && memcmp(keys[i].s, key, klen) == 0)
                    return 0;   /* a duplicate: the caller's decoder refuses it */
            }
            keys[nkeys].s = key;
            keys[nkeys++].len = klen;
            jt_ws(t);
            if (t->p >= t->end || *t->p++ != ':')
                return 0;
            if (n != NULL) {
                for (i = 0; i < n->nprops; i++) {
                    if (n->props[i].namelen == klen && memcmp(n->props[i].name, key, klen) == 0) {
                        sub = n->props[i].node;
                        break;
                    }
                }
                if (sub == NULL && n->additional != NULL) {
                    if (n->additional->boolean == 0)
                        return 0;
                    sub = n->additional;
                }
            }
            if (!jt_value(t, sub))
                return 0;
            if ((next = jt_next(t, '}')) != 1) {
                if (next == 0)
                    return 0;
                break;
            }
            jt_ws(t);
        }
    }
    for (i = 0; n != NULL && i < n->nrequired; i++) {
        size_t rlen = strlen(n->required[i]);

        for (k = 0; k < nkeys; k++) {
            if (keys[k].len == rlen && memcmp(keys[k].s, n->required[i], rlen) == 0)
                break;
        }
        if (k == nkeys)
            return 0;
    }
    return 1;
}

/* One value at t->p (after white space) against n (NULL: any value).
 * RETURNS: 1 read and valid; 0 cannot tell. */
static int jt_value(struct jt *t, const struct js_node *n)
{
    int ok;

    if (!jt_resolve(&n))
        return 0;
    if (n != NULL) {
        if (n->boolean == 0 || n->enum_vals != NULL || n->const_val != NULL)
            return 0;
        if (n->boolean == 1)
            n = NULL;   /* true: any value, but it must still be read */
    }
    jt_ws(t);
    if (t->p >= t->end || ++t->depth > JT_MAX_DEPTH)
        return 0;
    switch (*t->p) {
    case '{':
        ok = (n == NULL || js_type_allows(n, JT_OBJECT)) && jt_object(t, n);
        break;
    case '[':
        ok = (n == NULL || js_type_allows(n, JT_ARRAY)) && jt_array(t, n);
        break;
    case '"':
        ok = (n == NULL || js_type_allows(n, JT_STRING)) && jt_string_value(t, n);
        break;
    case 't':
    case 'f':
    case 'n': {
        const char *w = *t->p == 't' ? "true" : *t->p == 'f' ? "false" : "null";
        size_t wl = strlen(w);

        ok = (size_t)(t->end - t->p) >= wl && memcmp(t->p, w, wl) == 0 &&
             (n == NULL || js_type_allows(n, *t->p == 'n' ? JT_NULL : JT_BOOLEAN));
        t->p += ok ? wl : 0;
        break;
    }
    default:
        ok = jt_number_value(t, n);
        break;
    }
    t->depth--;
    return ok;
}

int jsonschema_check_text(const jsonschema *js, const char *text, size_t len)
{
    struct jt t = { text, text + len, 0 };

    if (text == NULL || !jt_value(&t, js ? js->root : NULL))
        return 0;
    jt_ws(&t);
    return t.p == t.end;
}
