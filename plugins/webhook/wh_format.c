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

char *
wh_format_event(wh_format fmt, const char *source, const struct wh_event_in *ev)
{
    char now[96];
    const char *time = ev->time;
    json_t *o, *data;
    char *text = NULL;
    int rc = 0;

    if (time == NULL) {
        wh_time_now(now, sizeof(now));
        time = now;
    }
    /* A reference, not a copy: the object is only serialised here, and
     * deep-copying every event body was a measurable share of the CPU. */
    data = ev->data != NULL ? json_incref((json_t *) ev->data) : json_null();
    o = json_object();
    if (o == NULL || data == NULL)
        goto out;

    /* Key order is fixed by insertion (JSON_PRESERVE_ORDER) so the bytes
     * are stable across releases and easy to compare in tests. */
    if (fmt == WH_FMT_EVENTGRID) {
        rc |= json_object_set_new(o, "id", json_string(ev->id));
        rc |= json_object_set_new(o, "eventType", json_string(ev->type));
        rc |= json_object_set_new(o, "subject", json_string(ev->subject != NULL ? ev->subject : ""));
        rc |= json_object_set_new(o, "eventTime", json_string(time));
        rc |= json_object_set_new(o, "dataVersion", json_string("1"));
        rc |= json_object_set(o, "data", data);
    } else {
        rc |= json_object_set_new(o, "specversion", json_string("1.0"));
        rc |= json_object_set_new(o, "id", json_string(ev->id));
        rc |= json_object_set_new(o, "source", json_string(source));
        rc |= json_object_set_new(o, "type", json_string(ev->type));
        if (ev->subject != NULL)
            rc |= json_object_set_new(o, "subject", json_string(ev->subject));
        rc |= json_object_set_new(o, "time", json_string(time));
        rc |= json_object_set_new(o, "datacontenttype", json_string("application/json"));
        rc |= json_object_set(o, "data", data);
    }
    if (rc == 0)
        text = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(15) | JSON_PRESERVE_ORDER);

out:
    json_decref(data);
    json_decref(o);
    return text;
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
