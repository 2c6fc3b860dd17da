/* wh_format.c - what a subscriber receives: Event Grid or CloudEvents 1.0
 * payloads and their HMAC signature.  Pure functions, no I/O, so tests can
 * check the bytes without a network. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "../common/jsonenc.h"
#include "webhook.h"

static void
wh_time_now(char *out, size_t len)
{
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(out, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (int) (ts.tv_nsec / 1000000L) % 1000);
}

/* Append ,"key":"val" (no comma for the first member).  These strings come
 * from message ids and properties rather than from jansson, so invalid
 * UTF-8 is refused here instead of being sent.  RETURNS: 0, -EINVAL, -ENOMEM. */
static int
wh_attr(struct jenc_buf *b, const char *key, const char *val)
{
    const unsigned char *p;

    if (val == NULL)
        return -EINVAL;
    for (p = (const unsigned char *) val; *p != '\0' && *p < 0x80; p++)
        ;
    if (*p != '\0') {
        json_t *check = json_string(val);   /* validates UTF-8 */

        if (check == NULL)
            return -EINVAL;
        json_decref(check);
    }
    if ((b->len > 1 && jenc_put(b, ",", 1) != 0) || jenc_string(b, key, strlen(key)) != 0
        || jenc_put(b, ":", 1) != 0 || jenc_string(b, val, strlen(val)) != 0)
        return -ENOMEM;
    return 0;
}

char *
wh_format_event(wh_format fmt, const char *source, const struct wh_event_in *ev)
{
    struct jenc_buf b = { NULL, 0, 0, 0 };
    char now[96];
    const char *time = ev->time;
    int rc = 0;

    if (time == NULL) {
        wh_time_now(now, sizeof(now));
        time = now;
    }
    /* Written member by member into one buffer, the event body encoded in
     * place: building an envelope object for json_dumps() and encoding
     * through jansson's dumper was a tenth of the CPU per order.  Key
     * order is fixed so the bytes are stable across releases and easy to
     * compare in tests (they are the ones json_dumps() of the envelope
     * object gave). */
    rc |= jenc_put(&b, "{", 1);
    if (fmt == WH_FMT_EVENTGRID) {
        rc |= wh_attr(&b, "id", ev->id);
        rc |= wh_attr(&b, "eventType", ev->type);
        rc |= wh_attr(&b, "subject", ev->subject != NULL ? ev->subject : "");
        rc |= wh_attr(&b, "eventTime", time);
        rc |= wh_attr(&b, "dataVersion", "1");
    } else {
        rc |= wh_attr(&b, "specversion", "1.0");
        rc |= wh_attr(&b, "id", ev->id);
        rc |= wh_attr(&b, "source", source);
        rc |= wh_attr(&b, "type", ev->type);
        if (ev->subject != NULL)
            rc |= wh_attr(&b, "subject", ev->subject);
        rc |= wh_attr(&b, "time", time);
        rc |= wh_attr(&b, "datacontenttype", "application/json");
    }
    rc |= jenc_put(&b, ",\"data\":", 8);
    if (rc == 0)
        rc = ev->data_text != NULL ? jenc_put(&b, ev->data_text, ev->data_len)
             : ev->data != NULL    ? jenc_dump(&b, ev->data)
                                   : jenc_put(&b, "null", 4);
    if (rc == 0)
        rc = jenc_put(&b, "}", 1);
    if (rc != 0) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

char *
wh_format_body(wh_format fmt, int batch, const char *const *ev, const size_t *len,
               size_t n, size_t *blen, const char **ctype)
{
    int array = fmt == WH_FMT_EVENTGRID || batch;
    size_t total = 3, i, off = 0;
    char *body;

    if (fmt == WH_FMT_EVENTGRID)
        *ctype = "application/json";
    else
        *ctype = batch ? "application/cloudevents-batch+json" : "application/cloudevents+json";

    for (i = 0; i < n; i++)
        total += len[i] + 1;
    body = malloc(total);
    if (body == NULL)
        return NULL;

    /* The stored events are already compact JSON: splice them instead of
     * parsing and re-serialising, so the signed bytes are the stored ones. */
    if (array)
        body[off++] = '[';
    for (i = 0; i < n; i++) {
        if (i > 0)
            body[off++] = ',';
        memcpy(body + off, ev[i], len[i]);
        off += len[i];
    }
    if (array)
        body[off++] = ']';
    body[off] = '\0';
    *blen = off;
    return body;
}

int
wh_sign(const char *secret, const char *body, size_t blen, char out[72])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mlen = 0, i;

    if (HMAC(EVP_sha256(), secret, (int) strlen(secret), (const unsigned char *) body, blen,
             mac, &mlen) == NULL || mlen != 32)
        return -EIO;
    memcpy(out, "sha256=", 7);
    for (i = 0; i < mlen; i++) {
        out[7 + 2 * i] = hex[mac[i] >> 4];
        out[8 + 2 * i] = hex[mac[i] & 0xf];
    }
    out[7 + 2 * mlen] = '\0';
    return 0;
}
