/* msg.c - the message envelope: accessors handed to plugins, and the JSON
 * form used by the spool and the dead-letter area. */
#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "../plugins/common/jsondec.h"
#include "../plugins/common/jsonenc.h"
#include "util.h"

/* A message with the given id, or a fresh one when id is NULL. */
static orderd_msg *msg_new_id(json_t *body, const char *id)
{
    orderd_msg *m = calloc(1, sizeof(*m));
    char fresh[37];

    if (m == NULL) {
        json_decref(body);
        return NULL;
    }
    if (id == NULL) {
        od_uuid4(fresh);
        id = fresh;
    }
    m->id = strdup(id);
    if (m->id == NULL) {
        free(m);
        json_decref(body);
        return NULL;
    }
    m->body = body ? body : json_null();
    m->enqueued_ms = od_now_ms();
    m->delivery_count = 1;
    return m;
}

orderd_msg *od_msg_new(json_t *body)
{
    return msg_new_id(body, NULL);
}

void od_msg_free(orderd_msg *m)
{
    if (m == NULL)
        return;
    free(m->id);
    json_decref(m->body);
    free(m->body_text);
    for (size_t i = 0; i < m->nprops; i++) {
        free(m->props[i].key);
        free(m->props[i].value);
    }
    free(m->props);
    free(m->content_type);
    free(m->partition_key);
    free(m->reason);
    free(m);
}

/* Replace *slot with a copy of value (NULL clears). */
static int set_str(char **slot, const char *value)
{
    char *copy = NULL;

    if (value != NULL && (copy = strdup(value)) == NULL)
        return -ENOMEM;
    free(*slot);
    *slot = copy;
    return 0;
}

int od_msg_set_reason(orderd_msg *m, const char *reason)
{
    return set_str(&m->reason, reason);
}

static const char *msg_id(const orderd_msg *m)
{
    return m->id;
}

static int msg_set_id(orderd_msg *m, const char *id)
{
    if (id == NULL || id[0] == '\0')
        return -EINVAL;
    return set_str(&m->id, id);
}

/* The cached text no longer matches (or may no longer match) the body. */
static void msg_text_drop(orderd_msg *m)
{
    free(m->body_text);
    m->body_text = NULL;
}

/* The body as a tree.  A body set as text (msg_set_body_text) has none
 * until a stage asks; the text was checked then (or was JSON made by
 * msg_body_text, msg_set_body_json), so decoding it now can fail only for
 * want of memory, and a message must not go on without its body. */
static json_t *msg_tree(orderd_msg *m)
{
    json_error_t err;

    if (m->body == NULL) {
        m->body = jdec_loadb(m->body_text, m->body_text_len, &err);
        if (m->body == NULL) {
            fprintf(stderr, "orderd: cannot decode the body of message %s: %s\n", m->id,
                    err.text);
            abort();
        }
    }
    return m->body;
}

static json_t *msg_body(orderd_msg *m)
{
    json_t *body = msg_tree(m);

    msg_text_drop(m);   /* the caller may change the tree */
    return body;
}

static const json_t *msg_body_peek(const orderd_msg *m)
{
    return msg_tree((orderd_msg *)m);
}

static void msg_set_body(orderd_msg *m, json_t *body)
{
    msg_text_drop(m);
    json_decref(m->body);
    m->body = body ? body : json_null();
}

/* len bytes of text, NUL-terminated, for m->body_text.  NULL: no memory. */
static char *msg_text_dup(const char *text, size_t len)
{
    char *copy = malloc(len + 1);

    if (copy != NULL) {
        memcpy(copy, text, len);
        copy[len] = '\0';
    }
    return copy;
}

/* The body becomes a copy of text, its tree made when a stage asks. */
static int msg_adopt_text(orderd_msg *m, const char *text, size_t len)
{
    char *copy = msg_text_dup(text, len);

    if (copy == NULL)
        return -ENOMEM;
    msg_text_drop(m);
    json_decref(m->body);
    m->body = NULL;
    m->body_text = copy;
    m->body_text_len = len;
    return 0;
}

/* ABI 1.4: the body from JSON text, kept as given; the tree waits until a
 * stage asks for it.  A text our reader does not take on its own (numbers
 * jansson must judge) is decoded at once, as msg_set_body would get it. */
static int msg_set_body_text(orderd_msg *m, const char *text, size_t len)
{
    if (text == NULL)
        return -EINVAL;
    if (jdec_check(text, len) != 0) {
        json_t *body = jdec_loadb(text, len, NULL);

        if (body == NULL)
            return -EINVAL;
        msg_set_body(m, body);
        return 0;
    }
    return msg_adopt_text(m, text, len);
}

/* ABI 1.6: msg_set_body_text() for text known to be JSON. */
static int msg_set_body_json(orderd_msg *m, const char *text, size_t len)
{
    if (text == NULL)
        return -EINVAL;
    return msg_adopt_text(m, text, len);
}

/* ABI 1.5: msg_set_body() with the text msg_body_text() would make of it. */
static int msg_set_body_encoded(orderd_msg *m, json_t *body, const char *text, size_t len)
{
    msg_set_body(m, body);
    if (text == NULL)
        return 0;
    if ((m->body_text = msg_text_dup(text, len)) == NULL)
        return -ENOMEM;
    m->body_text_len = len;
    return 0;
}

static const char *msg_body_text(orderd_msg *m, size_t *len)
{
    if (m->body_text == NULL)
        m->body_text = jenc_dumps(m->body, &m->body_text_len);
    if (m->body_text != NULL && len != NULL)
        *len = m->body_text_len;
    return m->body_text;
}

static const char *msg_prop(const orderd_msg *m, const char *key)
{
    for (size_t i = 0; i < m->nprops; i++)
        if (strcmp(m->props[i].key, key) == 0)
            return m->props[i].value;
    return NULL;
}

static int msg_set_prop(orderd_msg *m, const char *key, const char *value)
{
    struct od_prop *grown;
    char *k, *v;

    for (size_t i = 0; i < m->nprops; i++) {
        if (strcmp(m->props[i].key, key) != 0)
            continue;
        if (value == NULL) {  /* remove */
            free(m->props[i].key);
            free(m->props[i].value);
            m->props[i] = m->props[--m->nprops];
            return 0;
        }
        return set_str(&m->props[i].value, value);
    }
    if (value == NULL)
        return 0;
    k = strdup(key);
    v = strdup(value);
    grown = realloc(m->props, (m->nprops + 1) * sizeof(*m->props));
    if (k == NULL || v == NULL || grown == NULL) {
        free(k);
        free(v);
        if (grown)
            m->props = grown;
        return -ENOMEM;
    }
    m->props = grown;
    m->props[m->nprops].key = k;
    m->props[m->nprops].value = v;
    m->nprops++;
    return 0;
}

static const char *msg_prop_at(const orderd_msg *m, size_t idx, const char **value)
{
    if (idx >= m->nprops)
        return NULL;
    if (value)
        *value = m->props[idx].value;
    return m->props[idx].key;
}

static const char *msg_content_type(const orderd_msg *m)
{
    return m->content_type ? m->content_type : "application/json";
}

static int msg_set_content_type(orderd_msg *m, const char *type)
{
    return set_str(&m->content_type, type);
}

static const char *msg_partition_key(const orderd_msg *m)
{
    return m->partition_key;
}

static int msg_set_partition_key(orderd_msg *m, const char *key)
{
    return set_str(&m->partition_key, key);
}

static int64_t msg_enqueued_ms(const orderd_msg *m)
{
    return m->enqueued_ms;
}

static void msg_set_enqueued_ms(orderd_msg *m, int64_t ms)
{
    m->enqueued_ms = ms;
}

static uint32_t msg_delivery_count(const orderd_msg *m)
{
    return m->delivery_count;
}

static void msg_set_delivery_count(orderd_msg *m, uint32_t n)
{
    m->delivery_count = n;
}

static void msg_set_input_data(orderd_msg *m, void *ptr, uint64_t u64)
{
    m->input_ptr = ptr;
    m->input_u64 = u64;
}

static void *msg_input_data(const orderd_msg *m, uint64_t *u64)
{
    if (u64)
        *u64 = m->input_u64;
    return m->input_ptr;
}

static const char *msg_reason(const orderd_msg *m)
{
    return m->reason;
}

static void record_reason(orderd_msg *m, const char *fmt, va_list ap)
{
    char buf[1024];

    vsnprintf(buf, sizeof(buf), fmt, ap);
    set_str(&m->reason, buf);
}

static orderd_outcome host_retry(orderd_msg *m, uint32_t delay_ms, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    record_reason(m, fmt, ap);
    va_end(ap);
    m->retry_after_ms = delay_ms;
    return ORDERD_RETRY;
}

static orderd_outcome host_reject(orderd_msg *m, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    record_reason(m, fmt, ap);
    va_end(ap);
    return ORDERD_REJECT;
}

static orderd_msg *host_msg_new(orderd_inst *inst, json_t *body)
{
    (void)inst;
    return od_msg_new(body);
}

json_t *od_msg_to_json(const orderd_msg *m)
{
    json_t *j = json_object(), *props = json_object();

    if (j == NULL || props == NULL) {
        json_decref(j);
        json_decref(props);
        return NULL;
    }
    for (size_t i = 0; i < m->nprops; i++)
        json_object_set_new(props, m->props[i].key, json_string(m->props[i].value));
    json_object_set_new(j, "id", json_string(m->id));
    json_object_set(j, "body", msg_tree((orderd_msg *)m));
    json_object_set_new(j, "properties", props);
    if (m->content_type)
        json_object_set_new(j, "content_type", json_string(m->content_type));
    if (m->partition_key)
        json_object_set_new(j, "partition_key", json_string(m->partition_key));
    json_object_set_new(j, "enqueued_ms", json_integer(m->enqueued_ms));
    json_object_set_new(j, "delivery_count", json_integer(m->delivery_count));
    return j;
}

/* Is s something json_string() takes (valid UTF-8)?  ASCII is checked here,
 * the rest by jansson. */
static bool msg_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    json_t *check;

    while (*p != '\0' && *p < 0x80)
        p++;
    if (*p == '\0')
        return true;
    if ((check = json_string(s)) == NULL)
        return false;
    json_decref(check);
    return true;
}

static int msg_put_member(struct jenc_buf *b, const char *key, const char *value)
{
    return jenc_put(b, ",\"", 2) || jenc_put(b, key, strlen(key)) || jenc_put(b, "\":", 2) ||
           jenc_string(b, value, strlen(value));
}

static int msg_put_int(struct jenc_buf *b, const char *key, int64_t v)
{
    char num[24], *e = num + sizeof(num), *p = e;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;

    do
        *--p = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    if (v < 0)
        *--p = '-';
    return jenc_put(b, ",\"", 2) || jenc_put(b, key, strlen(key)) || jenc_put(b, "\":", 2) ||
           jenc_put(b, p, (size_t)(e - p));
}

/* od_msg_record(); *exact as od_msg_record_exact() says, and the body's
 * bytes at *body_off (*body_len of them) when it says yes. */
static char *msg_record(const orderd_msg *m, size_t *len, bool *exact, size_t *body_off,
                        size_t *body_len)
{
    struct jenc_buf b = { NULL, 0, 0, 0 };
    size_t boff = 0;
    bool plain = msg_utf8(m->id) && (m->content_type == NULL || msg_utf8(m->content_type)) &&
                 (m->partition_key == NULL || msg_utf8(m->partition_key));
    int rc;

    for (size_t i = 0; plain && i < m->nprops; i++)
        plain = msg_utf8(m->props[i].key) && msg_utf8(m->props[i].value);
    if (exact != NULL)
        *exact = false;
    if (!plain) {
        /* jansson leaves out what it refuses: keep doing exactly that. */
        json_t *j = od_msg_to_json(m);
        char *text = j ? jenc_dumps(j, len) : NULL;

        json_decref(j);
        return text;
    }
    rc = jenc_put(&b, "{\"id\":", 6) || jenc_string(&b, m->id, strlen(m->id)) ||
         jenc_put(&b, ",\"body\":", 8);
    boff = b.len;
    rc = rc || (m->body_text ? jenc_put(&b, m->body_text, m->body_text_len) : jenc_dump(&b, m->body));
    *body_off = boff;
    *body_len = b.len - boff;
    rc = rc || jenc_put(&b, ",\"properties\":{", 15);
    for (size_t i = 0; rc == 0 && i < m->nprops; i++)
        rc = (i > 0 && jenc_put(&b, ",", 1)) ||
             jenc_string(&b, m->props[i].key, strlen(m->props[i].key)) || jenc_put(&b, ":", 1) ||
             jenc_string(&b, m->props[i].value, strlen(m->props[i].value));
    rc = rc || jenc_put(&b, "}", 1) ||
         (m->content_type && msg_put_member(&b, "content_type", m->content_type)) ||
         (m->partition_key && msg_put_member(&b, "partition_key", m->partition_key)) ||
         msg_put_int(&b, "enqueued_ms", m->enqueued_ms) ||
         msg_put_int(&b, "delivery_count", m->delivery_count) || jenc_put(&b, "}", 1);
    if (rc != 0) {
        free(b.p);
        return NULL;
    }
    /* A cached text next to a tree was written from it and may have lost
     * digits that the tree still has. */
    if (exact != NULL)
        *exact = !b.lossy && !(m->body_text != NULL && m->body != NULL);
    *len = b.len;
    return b.p;
}

char *od_msg_record(const orderd_msg *m, size_t *len)
{
    size_t off, blen;

    return msg_record(m, len, NULL, &off, &blen);
}

char *od_msg_record_exact(orderd_msg *m, size_t *len, bool *exact)
{
    size_t off = 0, blen = 0;
    char *text = msg_record(m, len, exact, &off, &blen);

    /* The body's bytes are its msg_body_text(): keep them, for the stages
     * that would encode the body again (a copy costs less than that). */
    if (text != NULL && *exact && m->body_text == NULL &&
        (m->body_text = msg_text_dup(text + off, blen)) != NULL)
        m->body_text_len = blen;
    return text;
}

orderd_msg *od_msg_from_json(const json_t *j)
{
    const char *id = json_string_value(json_object_get(j, "id"));
    json_t *body = json_object_get(j, "body"), *props = json_object_get(j, "properties");
    const char *key;
    json_t *val;
    orderd_msg *m;

    if (!json_is_object(j) || id == NULL || body == NULL)
        return NULL;
    m = msg_new_id(json_incref(body), id);
    if (m == NULL)
        return NULL;
    json_object_foreach(props, key, val) {
        if (json_is_string(val) && msg_set_prop(m, key, json_string_value(val)) < 0)
            goto fail;
    }
    if (set_str(&m->content_type, json_string_value(json_object_get(j, "content_type"))) < 0 ||
        set_str(&m->partition_key, json_string_value(json_object_get(j, "partition_key"))) < 0)
        goto fail;
    if (json_is_integer(json_object_get(j, "enqueued_ms")))
        m->enqueued_ms = json_integer_value(json_object_get(j, "enqueued_ms"));
    if (json_is_integer(json_object_get(j, "delivery_count")))
        m->delivery_count = (uint32_t)json_integer_value(json_object_get(j, "delivery_count"));
    return m;
fail:
    od_msg_free(m);
    return NULL;
}

/* Engine-facing members (log, submit, settle, lookup, metrics, names) are
 * filled in by host.c; this table holds the message part, which the unit
 * test harness reuses as it is. */
const orderd_host od_msg_host_part = {
    .size = sizeof(orderd_host),
    .abi_major = ORDERD_ABI_MAJOR,
    .abi_minor = ORDERD_ABI_MINOR,
    .msg_new = host_msg_new,
    .msg_free = od_msg_free,
    .msg_id = msg_id,
    .msg_set_id = msg_set_id,
    .msg_body = msg_body,
    .msg_set_body = msg_set_body,
    .msg_prop = msg_prop,
    .msg_set_prop = msg_set_prop,
    .msg_prop_at = msg_prop_at,
    .msg_content_type = msg_content_type,
    .msg_set_content_type = msg_set_content_type,
    .msg_partition_key = msg_partition_key,
    .msg_set_partition_key = msg_set_partition_key,
    .msg_enqueued_ms = msg_enqueued_ms,
    .msg_set_enqueued_ms = msg_set_enqueued_ms,
    .msg_delivery_count = msg_delivery_count,
    .msg_set_delivery_count = msg_set_delivery_count,
    .msg_set_input_data = msg_set_input_data,
    .msg_input_data = msg_input_data,
    .msg_reason = msg_reason,
    .retry = host_retry,
    .reject = host_reject,
    .msg_body_text = msg_body_text,
    .msg_body_peek = msg_body_peek,
    .msg_set_body_text = msg_set_body_text,
    .msg_set_body_encoded = msg_set_body_encoded,
    .msg_set_body_json = msg_set_body_json,
};
