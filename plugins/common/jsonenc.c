/* jsonenc.c - compact JSON text of a jansson value (see jsonenc.h).
 *
 * Where the time went in json_dumps(): a callback per token, a strbuffer
 * copied once more at the end, and snprintf() for every number.  Here the
 * text goes straight into one buffer, strings are copied in runs between
 * the bytes that need escaping, integers are converted by hand, and reals
 * that are whole cents (prices, totals: nearly all of ours) take a short
 * path proven to print what "%.15g" prints.  Anything else goes through
 * snprintf() and the same clean-up jansson applies, so the bytes match. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonenc.h"

#define JENC_MAX_DEPTH 2048

int
jenc_reserve(struct jenc_buf *b, size_t n)
{
    size_t cap;
    char *p;

    if (b->cap - b->len > n)
        return 0;
    cap = b->cap ? b->cap : 1024;
    while (cap - b->len <= n)
        cap *= 2;
    p = realloc(b->p, cap);
    if (p == NULL)
        return -ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

int
jenc_put(struct jenc_buf *b, const char *s, size_t n)
{
    if (jenc_reserve(b, n) != 0)
        return -ENOMEM;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* One byte; the caller made room (jenc_reserve) or checks here. */
static inline int
jenc_putc(struct jenc_buf *b, char c)
{
    if (b->cap - b->len <= 1 && jenc_reserve(b, 1) != 0)
        return -ENOMEM;
    b->p[b->len++] = c;
    return 0;
}

/* Bytes that cannot appear raw inside a JSON string (jansson's set, without
 * JSON_ESCAPE_SLASH or JSON_ENSURE_ASCII): 1 = escape it. */
static const unsigned char jenc_special[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,    /* '"' */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,    /* '\\' */
};

int
jenc_string(struct jenc_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *u = (const unsigned char *) s;
    size_t i = 0, run;

    /* Room for the usual case (nothing to escape) at once; escapes grow it. */
    if (jenc_reserve(b, n + 2) != 0)
        return -ENOMEM;
    b->p[b->len++] = '"';
    while (i < n) {
        unsigned char c;

        for (run = i; run < n && !jenc_special[u[run]]; run++)
            ;
        if (run > i) {
            if (jenc_reserve(b, run - i + 1) != 0)
                return -ENOMEM;
            memcpy(b->p + b->len, s + i, run - i);
            b->len += run - i;
            i = run;
        }
        if (i == n)
            break;
        if (jenc_reserve(b, 7 + (n - i)) != 0)
            return -ENOMEM;
        c = u[i++];
        b->p[b->len++] = '\\';
        switch (c) {
        case '"':  b->p[b->len++] = '"';  break;
        case '\\': b->p[b->len++] = '\\'; break;
        case '\b': b->p[b->len++] = 'b';  break;
        case '\f': b->p[b->len++] = 'f';  break;
        case '\n': b->p[b->len++] = 'n';  break;
        case '\r': b->p[b->len++] = 'r';  break;
        case '\t': b->p[b->len++] = 't';  break;
        default:
            b->p[b->len++] = 'u';
            b->p[b->len++] = '0';
            b->p[b->len++] = '0';
            b->p[b->len++] = hex[c >> 4];
            b->p[b->len++] = hex[c & 0xf];
            break;
        }
    }
    if (jenc_putc(b, '"') != 0)
        return -ENOMEM;
    b->p[b->len] = '\0';
    return 0;
}

/* Decimal digits of u into the end of buf; returns where they start. */
static char *
jenc_utoa(uint64_t u, char *end)
{
    do {
        *--end = (char) ('0' + u % 10);
        u /= 10;
    } while (u != 0);
    return end;
}

static int
jenc_integer(struct jenc_buf *b, json_int_t v)
{
    char tmp[24], *end = tmp + sizeof(tmp), *p;
    uint64_t u = v < 0 ? (uint64_t) 0 - (uint64_t) v : (uint64_t) v;

    p = jenc_utoa(u, end);
    if (v < 0)
        *--p = '-';
    return jenc_put(b, p, (size_t) (end - p));
}

/*
 * Whole cents: if c = round(v * 100) gives back v as c / 100.0 (IEEE
 * division is correctly rounded, so v is then the double nearest to the
 * decimal c/100) and |c| < 10^15, that decimal has at most 15 significant
 * digits, and "%.15g" prints exactly it (DBL_DIG = 15 guarantees the round
 * trip), in fixed notation (its exponent is between -2 and 12) with
 * trailing zeros dropped.  jansson then adds ".0" to an integral result.
 * RETURNS: 1 when done, 0 when v needs the general path.
 */
static int
jenc_cents(struct jenc_buf *b, double v, int *rc)
{
    char tmp[40], *end = tmp + sizeof(tmp), *p;
    double r = v * 100.0;
    int64_t c;
    uint64_t u, ip, fp;

    if (!(fabs(r) < 1e15) || v == 0.0)
        return 0;
    c = (int64_t) llround(r);
    if ((double) c / 100.0 != v || c == 0)
        return 0;
    u = c < 0 ? (uint64_t) -c : (uint64_t) c;
    ip = u / 100;
    fp = u % 100;
    if (fp == 0) {
        *--end = '0';
        *--end = '.';
    } else if (fp % 10 == 0) {
        *--end = (char) ('0' + fp / 10);
        *--end = '.';
    } else {
        *--end = (char) ('0' + fp % 10);
        *--end = (char) ('0' + fp / 10);
        *--end = '.';
    }
    p = jenc_utoa(ip, end);
    if (c < 0)
        *--p = '-';
    *rc = jenc_put(b, p, (size_t) (tmp + sizeof(tmp) - p));
    return 1;
}

/* jansson's jsonp_dtostr() with precision 15, step for step. */
static int
jenc_real(struct jenc_buf *b, double v)
{
    char buf[64], *start, *end, *p;
    int n, rc = 0;
    size_t len;

    if (jenc_cents(b, v, &rc))
        return rc;
    n = snprintf(buf, sizeof(buf), "%.15g", v);
    if (n < 0 || (size_t) n >= sizeof(buf))
        return -EINVAL;
    len = (size_t) n;
    /* a locale's decimal comma becomes a point */
    for (p = buf; *p != '\0'; p++)
        if (*p == ',')
            *p = '.';
    /* a dot or an 'e', so it reads back as a real */
    if (strchr(buf, '.') == NULL && strchr(buf, 'e') == NULL) {
        if (len + 3 >= sizeof(buf))
            return -EINVAL;
        buf[len++] = '.';
        buf[len++] = '0';
        buf[len] = '\0';
    }
    /* no '+' and no leading zeros in the exponent */
    start = strchr(buf, 'e');
    if (start != NULL) {
        start++;
        end = start + 1;
        if (*start == '-')
            start++;
        while (*end == '0')
            end++;
        if (end != start) {
            memmove(start, end, len - (size_t) (end - buf) + 1);
            len -= (size_t) (end - start);
        }
    }
    /* 15 digits, as jansson writes: not every double comes back the same */
    if (strtod(buf, NULL) != v)
        b->lossy = 1;
    return jenc_put(b, buf, len);
}

static int
jenc_value(struct jenc_buf *b, const json_t *v, int depth)
{
    size_t i, n;
    void *it;
    int rc;

    if (v == NULL || depth > JENC_MAX_DEPTH)
        return -EINVAL;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        if (jenc_putc(b, '{') != 0)
            return -ENOMEM;
        for (it = json_object_iter((json_t *) v), i = 0; it != NULL;
             it = json_object_iter_next((json_t *) v, it), i++) {
            const char *key = json_object_iter_key(it);
#if JANSSON_VERSION_HEX >= 0x020e00
            size_t klen = json_object_iter_key_len(it);
#else
            size_t klen = strlen(key);
#endif

            if ((i > 0 && jenc_putc(b, ',') != 0) || jenc_string(b, key, klen) != 0
                || jenc_putc(b, ':') != 0)
                return -ENOMEM;
            rc = jenc_value(b, json_object_iter_value(it), depth + 1);
            if (rc != 0)
                return rc;
        }
        return jenc_putc(b, '}');
    case JSON_ARRAY:
        if (jenc_putc(b, '[') != 0)
            return -ENOMEM;
        n = json_array_size(v);
        for (i = 0; i < n; i++) {
            if (i > 0 && jenc_putc(b, ',') != 0)
                return -ENOMEM;
            rc = jenc_value(b, json_array_get(v, i), depth + 1);
            if (rc != 0)
                return rc;
        }
        return jenc_putc(b, ']');
    case JSON_STRING:
        return jenc_string(b, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        return jenc_integer(b, json_integer_value(v));
    case JSON_REAL:
        return jenc_real(b, json_real_value(v));
    case JSON_TRUE:
        return jenc_put(b, "true", 4);
    case JSON_FALSE:
        return jenc_put(b, "false", 5);
    case JSON_NULL:
        return jenc_put(b, "null", 4);
    }
    return -EINVAL;
}

int
jenc_dump(struct jenc_buf *b, const json_t *v)
{
    size_t before = b->len;
    int rc = jenc_value(b, v, 0);

    if (rc == 0)
        rc = jenc_reserve(b, 0);
    if (rc != 0) {
        b->len = before;
        if (b->p != NULL)
            b->p[before] = '\0';
        return rc;
    }
    b->p[b->len] = '\0';
    return 0;
}

char *
jenc_dumps(const json_t *v, size_t *len)
{
    struct jenc_buf b = { NULL, 0, 0, 0 };

    if (jenc_dump(&b, v) != 0) {
        free(b.p);
        return NULL;
    }
    if (len != NULL)
        *len = b.len;
    return b.p;
}

/* The end of the string whose opening quote is at i, or len if unterminated. */
static size_t
jenc_skip_string(const char *t, size_t len, size_t i)
{
    for (i++; i < len; i++) {
        if (t[i] == '\\')
            i++;
        else if (t[i] == '"')
            return i + 1;
    }
    return len;
}

/* The end of the value starting at i (no leading blanks), or len. */
static size_t
jenc_skip_value(const char *t, size_t len, size_t i)
{
    size_t depth = 0;

    while (i < len) {
        char c = t[i];

        if (c == '"') {
            i = jenc_skip_string(t, len, i);
        } else if (c == '{' || c == '[') {
            depth++;
            i++;
        } else if (c == '}' || c == ']') {
            if (depth == 0)
                return i;       /* the end of the enclosing object */
            depth--;
            i++;
        } else if (c == ',' && depth == 0) {
            return i;
        } else {
            i++;
        }
        if (depth == 0 && (c == '"' || c == '}' || c == ']'))
            return i;
    }
    return len;
}

int
jenc_member_span(const char *text, size_t len, const char *key, size_t *off, size_t *n)
{
    size_t klen = strlen(key), i = 1;

    if (len < 2 || text[0] != '{')
        return -EINVAL;
    while (i < len && text[i] == '"') {
        size_t kend = jenc_skip_string(text, len, i), vend;

        if (kend >= len || text[kend] != ':')
            return -EINVAL;
        vend = jenc_skip_value(text, len, kend + 1);
        if (vend > len || vend == kend + 1)
            return -EINVAL;
        if (kend - i - 2 == klen && memcmp(text + i + 1, key, klen) == 0) {
            *off = kend + 1;
            *n = vend - (kend + 1);
            return 0;
        }
        if (vend < len && text[vend] == ',')
            i = vend + 1;
        else if (vend < len && text[vend] == '}')
            return -ENOENT;
        else
            return -EINVAL;
    }
    return i < len && text[i] == '}' ? -ENOENT : -EINVAL;
}

int
jenc_member_str(const char *text, size_t len, const char *key, const char **s, size_t *n)
{
    size_t at, k;
    int    rc = jenc_member_span(text, len, key, &at, &k);

    if (rc != 0)
        return rc;
    if (k < 2 || text[at] != '"' || memchr(text + at + 1, '\\', k - 2) != NULL)
        return -EINVAL;
    *s = text + at + 1;
    *n = k - 2;
    return 0;
}
