/* jsondec.c - JSON text to a jansson value, quickly (see jsondec.h).
 *
 * json_loadb() reads through a character stream with a callback per byte
 * and builds every string in a strbuffer before copying it again.  Here a
 * recursive descent parser works on the bytes in place: a string without
 * escapes goes straight from the input to json_stringn_nocheck() (its
 * UTF-8 is checked here, once), numbers are converted without a copy when
 * they are integers, and keys are inserted with their length.  It gives up
 * on the first thing it does not like, and json_loadb() has the last word. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jsondec.h"

#define JDEC_MAX_DEPTH 2048    /* jansson's JSON_PARSER_MAX_DEPTH */

struct jdec {
    const char *p, *end;
    char       *tmp;           /* decoded strings with escapes */
    size_t      tcap;
    int         depth;
    int         reject_dups;   /* JSON_REJECT_DUPLICATES: a repeated key sends us to json_loadb */
    int         check;         /* jdec_check(): read only, build nothing (values are json_null()) */
};

static json_t *jdec_value(struct jdec *d);

static void
jdec_ws(struct jdec *d)
{
    while (d->p < d->end && (*d->p == ' ' || *d->p == '\n' || *d->p == '\r' || *d->p == '\t'))
        d->p++;
}

size_t
jdec_utf8(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0], lo = 0x80, hi = 0xBF;
    size_t n, i;

    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4;
    else
        return 0;
    if ((size_t) (end - p) < n)
        return 0;
    /* no overlong forms, no UTF-16 surrogates, nothing above U+10FFFF */
    if (c == 0xE0)
        lo = 0xA0;
    else if (c == 0xED)
        hi = 0x9F;
    else if (c == 0xF0)
        lo = 0x90;
    else if (c == 0xF4)
        hi = 0x8F;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF)
            return 0;
    return n;
}

static int
jdec_hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    int i;

    for (i = 0; i < 4; i++) {
        char c = p[i];

        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned) (c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned) (c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned) (c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Room for n more bytes at tmp + used.  RETURNS: 0 or -1. */
static int
jdec_grow(struct jdec *d, size_t used, size_t n)
{
    size_t cap = d->tcap ? d->tcap : 256;
    char *t;

    if (used + n <= d->tcap)
        return 0;
    while (cap < used + n)
        cap *= 2;
    t = realloc(d->tmp, cap);
    if (t == NULL)
        return -1;
    d->tmp = t;
    d->tcap = cap;
    return 0;
}

/* The string whose opening quote was just read: its bytes (in the input
 * when it has no escapes, else decoded into d->tmp) and length.
 * RETURNS: 0, or -1 when it is not a string this parser takes. */
static int
jdec_string(struct jdec *d, const char **out, size_t *len)
{
    const char *start = d->p;
    size_t used = 0;
    int escaped = 0;

    while (d->p < d->end) {
        unsigned char c = (unsigned char) *d->p;

        if (c == '"') {
            if (!escaped) {
                *out = start;
                *len = (size_t) (d->p - start);
            } else {
                *out = d->tmp;
                *len = used;
            }
            d->p++;
            return 0;
        }
        if (c < 0x20)
            return -1;
        if (c == '\\') {
            unsigned cp, lo;
            char esc;

            if (!escaped) {
                /* switch to decoding: what came so far is copied as is */
                escaped = 1;
                used = (size_t) (d->p - start);
                if (jdec_grow(d, 0, used + 16) != 0)
                    return -1;
                memcpy(d->tmp, start, used);
            }
            if (d->end - d->p < 2 || jdec_grow(d, used, 4) != 0)
                return -1;
            esc = d->p[1];
            d->p += 2;
            switch (esc) {
            case '"':  d->tmp[used++] = '"';  continue;
            case '\\': d->tmp[used++] = '\\'; continue;
            case '/':  d->tmp[used++] = '/';  continue;
            case 'b':  d->tmp[used++] = '\b'; continue;
            case 'f':  d->tmp[used++] = '\f'; continue;
            case 'n':  d->tmp[used++] = '\n'; continue;
            case 'r':  d->tmp[used++] = '\r'; continue;
            case 't':  d->tmp[used++] = '\t'; continue;
            case 'u':  break;
            default:   return -1;
            }
            if (d->end - d->p < 4 || jdec_hex4(d->p, &cp) != 0)
                return -1;
            d->p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (d->end - d->p < 6 || d->p[0] != '\\' || d->p[1] != 'u'
                    || jdec_hex4(d->p + 2, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
                    return -1;
                d->p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if ((cp >= 0xDC00 && cp <= 0xDFFF) || cp == 0) {
                return -1;   /* a lone low surrogate; NUL needs JSON_ALLOW_NUL */
            }
            if (cp < 0x80) {
                d->tmp[used++] = (char) cp;
            } else if (cp < 0x800) {
                d->tmp[used++] = (char) (0xC0 | (cp >> 6));
                d->tmp[used++] = (char) (0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                d->tmp[used++] = (char) (0xE0 | (cp >> 12));
                d->tmp[used++] = (char) (0x80 | ((cp >> 6) & 0x3F));
                d->tmp[used++] = (char) (0x80 | (cp & 0x3F));
            } else {
                d->tmp[used++] = (char) (0xF0 | (cp >> 18));
                d->tmp[used++] = (char) (0x80 | ((cp >> 12) & 0x3F));
                d->tmp[used++] = (char) (0x80 | ((cp >> 6) & 0x3F));
                d->tmp[used++] = (char) (0x80 | (cp & 0x3F));
            }
            continue;
        }
        {
            size_t n = c < 0x80 ? 1
                : jdec_utf8((const unsigned char *) d->p, (const unsigned char *) d->end);

            if (n == 0)
                return -1;
            if (escaped) {
                if (jdec_grow(d, used, n) != 0)
                    return -1;
                memcpy(d->tmp + used, d->p, n);
                used += n;
            }
            d->p += n;
        }
    }
    return -1;
}

const char *
jdec_scan_number(const char *s, const char *end, struct jdec_num *out)
{
    const char *p = s;

    out->real = 0;
    if (p < end && *p == '-')
        p++;
    if (p >= end || *p < '0' || *p > '9')
        return NULL;
    if (*p == '0')
        p++;
    else
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    if (p < end && *p == '.') {
        out->real = 1;
        p++;
        if (p >= end || *p < '0' || *p > '9')
            return NULL;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        out->real = 1;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || *p < '0' || *p > '9')
            return NULL;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }

    if (!out->real) {
        const char *q = s;
        int neg = *q == '-';
        uint64_t u = 0, lim = neg ? (uint64_t) INT64_MAX + 1 : (uint64_t) INT64_MAX;

        if (neg)
            q++;
        for (; q < p; q++) {
            unsigned dgt = (unsigned) (*q - '0');

            if (u > (lim - dgt) / 10)
                return NULL;   /* too big: jansson says so */
            u = u * 10 + dgt;
        }
        out->i = neg ? (json_int_t) (0 - u) : (json_int_t) u;
        out->d = (double) out->i;
    } else {
        char buf[64], *endp;
        size_t len = (size_t) (p - s);

        if (len >= sizeof(buf))
            return NULL;
        memcpy(buf, s, len);
        buf[len] = '\0';
        errno = 0;
        out->d = strtod(buf, &endp);
        /* a locale with a decimal comma stops early: leave it to jansson */
        if (endp != buf + len || ((out->d == HUGE_VAL || out->d == -HUGE_VAL) && errno == ERANGE))
            return NULL;
    }
    return p;
}

static json_t *
jdec_number(struct jdec *d)
{
    struct jdec_num num;
    const char *p = jdec_scan_number(d->p, d->end, &num);

    if (p == NULL)
        return NULL;
    d->p = p;
    if (d->check)
        return json_null();
    return num.real ? json_real(num.d) : json_integer(num.i);
}

static json_t *
jdec_object(struct jdec *d)
{
    json_t *o = d->check ? json_null() : json_object(), *v;
    const char *key;
    size_t klen;

    if (o == NULL)
        return NULL;
    jdec_ws(d);
    if (d->p < d->end && *d->p == '}') {
        d->p++;
        return o;
    }
    for (;;) {
        if (d->p >= d->end || *d->p != '"')
            goto fail;
        d->p++;
        if (jdec_string(d, &key, &klen) != 0)
            goto fail;
        if (d->check) {
            jdec_ws(d);
            if (d->p >= d->end || *d->p != ':')
                goto fail;
            d->p++;
            if (jdec_value(d) == NULL)
                goto fail;
            goto next;
        }
#if JANSSON_VERSION_HEX < 0x020e00
        /* set_new_nocheck wants a NUL-terminated key */
        if (key != d->tmp) {
            if (jdec_grow(d, 0, klen + 1) != 0)
                goto fail;
            memmove(d->tmp, key, klen);
        } else if (jdec_grow(d, klen, 1) != 0) {
            goto fail;
        }
        d->tmp[klen] = '\0';
        key = d->tmp;
#endif
        jdec_ws(d);
        if (d->p >= d->end || *d->p != ':')
            goto fail;
        d->p++;
        /* the key may sit in d->tmp, which the value can overwrite */
        {
            char small[64], *kcopy = small;

            if (key == d->tmp) {
                if (klen + 1 > sizeof(small) && (kcopy = malloc(klen + 1)) == NULL)
                    goto fail;
                memcpy(kcopy, key, klen);
                kcopy[klen] = '\0';
                key = kcopy;
            }
#if JANSSON_VERSION_HEX >= 0x020e00
            if (d->reject_dups && json_object_getn(o, key, klen) != NULL) {
#else
            if (d->reject_dups && json_object_get(o, key) != NULL) {
#endif
                if (kcopy != small)
                    free(kcopy);
                goto fail;
            }
            v = jdec_value(d);
#if JANSSON_VERSION_HEX >= 0x020e00
            if (v == NULL || json_object_setn_new_nocheck(o, key, klen, v) != 0) {
#else
            if (v == NULL || json_object_set_new_nocheck(o, key, v) != 0) {
#endif
                if (kcopy != small)
                    free(kcopy);
                goto fail;
            }
            if (kcopy != small)
                free(kcopy);
        }
next:
        jdec_ws(d);
        if (d->p < d->end && *d->p == ',') {
            d->p++;
            jdec_ws(d);
            continue;
        }
        if (d->p < d->end && *d->p == '}') {
            d->p++;
            return o;
        }
        goto fail;
    }

fail:
    json_decref(o);
    return NULL;
}

static json_t *
jdec_array(struct jdec *d)
{
    json_t *a = d->check ? json_null() : json_array(), *v;

    if (a == NULL)
        return NULL;
    jdec_ws(d);
    if (d->p < d->end && *d->p == ']') {
        d->p++;
        return a;
    }
    for (;;) {
        v = jdec_value(d);
        if (v == NULL || (!d->check && json_array_append_new(a, v) != 0))
            goto fail;
        jdec_ws(d);
        if (d->p < d->end && *d->p == ',') {
            d->p++;
            continue;
        }
        if (d->p < d->end && *d->p == ']') {
            d->p++;
            return a;
        }
        goto fail;
    }

fail:
    json_decref(a);
    return NULL;
}

static int
jdec_word(struct jdec *d, const char *w, size_t n)
{
    if ((size_t) (d->end - d->p) < n || memcmp(d->p, w, n) != 0)
        return -1;
    d->p += n;
    return 0;
}

static json_t *
jdec_value(struct jdec *d)
{
    const char *s;
    size_t len;
    json_t *v = NULL;

    jdec_ws(d);
    if (d->p >= d->end || ++d->depth > JDEC_MAX_DEPTH)
        return NULL;
    switch (*d->p) {
    case '{':
        d->p++;
        v = jdec_object(d);
        break;
    case '[':
        d->p++;
        v = jdec_array(d);
        break;
    case '"':
        d->p++;
        if (jdec_string(d, &s, &len) == 0)
            v = d->check ? json_null() : json_stringn_nocheck(s, len);
        break;
    case 't':
        v = jdec_word(d, "true", 4) == 0 ? json_true() : NULL;
        break;
    case 'f':
        v = jdec_word(d, "false", 5) == 0 ? json_false() : NULL;
        break;
    case 'n':
        v = jdec_word(d, "null", 4) == 0 ? json_null() : NULL;
        break;
    default:
        v = jdec_number(d);
        break;
    }
    d->depth--;
    return v;
}

json_t *
jdec_loadb_flags(const char *s, size_t n, size_t flags, json_error_t *err)
{
    struct jdec d = { .p = s, .end = s + n,
                      .reject_dups = (flags & JSON_REJECT_DUPLICATES) != 0 };
    json_t *v = jdec_value(&d);

    if (v != NULL) {
        jdec_ws(&d);
        if (d.p != d.end || (!(flags & JSON_DECODE_ANY) && !json_is_object(v) && !json_is_array(v))) {
            json_decref(v);
            v = NULL;
        }
    }
    free(d.tmp);
    if (v == NULL)
        return json_loadb(s, n, flags, err);
    return v;
}

json_t *
jdec_loadb(const char *s, size_t n, json_error_t *err)
{
    return jdec_loadb_flags(s, n, JSON_DECODE_ANY, err);
}

int
jdec_check(const char *s, size_t n)
{
    struct jdec d = { .p = s, .end = s + n, .check = 1 };
    json_t *v = jdec_value(&d);

    if (v != NULL)
        jdec_ws(&d);
    free(d.tmp);
    return v != NULL && d.p == d.end ? 0 : -1;
}
