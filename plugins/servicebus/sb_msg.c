/* sb_msg.c - mapping between orderd messages and AMQP 1.0 messages, as
 * Service Bus SDKs write them: the body is one data section holding the
 * JSON text, message-id is the order/event id (so duplicate detection keys
 * on it), application properties carry the message properties, group-id is
 * the session id. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <proton/codec.h>

#include "sb.h"

int64_t
sb_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int
sb_msg_to_amqp(const orderd_host *h, orderd_msg *m, int session_from_key, pn_message_t *msg)
{
    const char *id = h->msg_id(m), *key, *val, *pk;
    char *text;
    pn_atom_t atom;
    pn_data_t *props, *body;
    size_t i;
    int rc = 0;

    text = json_dumps(h->msg_body(m), JSON_COMPACT | JSON_REAL_PRECISION(17));
    if (text == NULL)
        return -ENOMEM;
    atom.type = PN_STRING;
    atom.u.as_bytes = pn_bytes(strlen(id), id);
    if (pn_message_set_id(msg, atom) != 0
        || pn_message_set_content_type(msg, h->msg_content_type(m)) != 0
        || pn_message_set_durable(msg, true) != 0) {
        rc = -ENOMEM;
        goto out;
    }
    pk = h->msg_partition_key(m);
    if (session_from_key && pk != NULL && pn_message_set_group_id(msg, pk) != 0) {
        rc = -ENOMEM;
        goto out;
    }
    props = pn_message_properties(msg);
    pn_data_clear(props);
    pn_data_put_map(props);
    pn_data_enter(props);
    for (i = 0; (key = h->msg_prop_at(m, i, &val)) != NULL; i++) {
        pn_data_put_string(props, pn_bytes(strlen(key), key));
        pn_data_put_string(props, pn_bytes(strlen(val), val));
    }
    pn_data_exit(props);
    /* inferred + binary = a data section, what the Service Bus SDKs send */
    pn_message_set_inferred(msg, true);
    body = pn_message_body(msg);
    pn_data_clear(body);
    if (pn_data_put_binary(body, pn_bytes(strlen(text), text)) != 0)
        rc = -ENOMEM;
out:
    free(text);
    return rc;
}

/* A property value as text: Service Bus application properties may be
 * strings, numbers or booleans; others are skipped. */
static int
sb_atom_text(pn_data_t *d, char *buf, size_t len)
{
    switch (pn_data_type(d)) {
    case PN_STRING: {
        pn_bytes_t b = pn_data_get_string(d);
        snprintf(buf, len, "%.*s", (int) b.size, b.start);
        return 0;
    }
    case PN_SYMBOL: {
        pn_bytes_t b = pn_data_get_symbol(d);
        snprintf(buf, len, "%.*s", (int) b.size, b.start);
        return 0;
    }
    case PN_BOOL:   snprintf(buf, len, "%s", pn_data_get_bool(d) ? "true" : "false"); return 0;
    case PN_INT:    snprintf(buf, len, "%d", pn_data_get_int(d)); return 0;
    case PN_UINT:   snprintf(buf, len, "%u", pn_data_get_uint(d)); return 0;
    case PN_LONG:   snprintf(buf, len, "%lld", (long long) pn_data_get_long(d)); return 0;
    case PN_ULONG:  snprintf(buf, len, "%llu", (unsigned long long) pn_data_get_ulong(d)); return 0;
    case PN_SHORT:  snprintf(buf, len, "%d", pn_data_get_short(d)); return 0;
    case PN_USHORT: snprintf(buf, len, "%u", pn_data_get_ushort(d)); return 0;
    case PN_BYTE:   snprintf(buf, len, "%d", pn_data_get_byte(d)); return 0;
    case PN_UBYTE:  snprintf(buf, len, "%u", pn_data_get_ubyte(d)); return 0;
    case PN_DOUBLE: snprintf(buf, len, "%.17g", pn_data_get_double(d)); return 0;
    default:        return -1;
    }
}

static char *
sb_atom_id(pn_atom_t a)
{
    char *s = NULL;

    switch (a.type) {
    case PN_STRING:
    case PN_SYMBOL:
        s = strndup(a.u.as_bytes.start, a.u.as_bytes.size);
        break;
    case PN_ULONG:
        if (asprintf(&s, "%llu", (unsigned long long) a.u.as_ulong) < 0)
            s = NULL;
        break;
    case PN_UUID: {
        const unsigned char *u = (const unsigned char *) a.u.as_uuid.bytes;
        if (asprintf(&s, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                     u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11],
                     u[12], u[13], u[14], u[15]) < 0)
            s = NULL;
        break;
    }
    default:
        break;
    }
    return s;
}

orderd_msg *
sb_msg_from_amqp(const orderd_host *h, orderd_inst *inst, pn_message_t *msg, char *err, size_t errlen)
{
    pn_data_t *body = pn_message_body(msg), *props, *ann;
    pn_bytes_t b = { 0, NULL };
    json_error_t jerr;
    json_t *j;
    orderd_msg *m;
    const char *s;
    char *id, key[256], val[1024];
    int64_t enq = 0;

    pn_data_rewind(body);
    if (pn_data_next(body)) {
        if (pn_data_type(body) == PN_BINARY)
            b = pn_data_get_binary(body);
        else if (pn_data_type(body) == PN_STRING)
            b = pn_data_get_string(body);
    }
    if (b.start == NULL) {
        snprintf(err, errlen, "body is not a data section or string");
        return NULL;
    }
    j = json_loadb(b.start, b.size, 0, &jerr);
    if (j == NULL) {
        snprintf(err, errlen, "body is not JSON: %s", jerr.text);
        return NULL;
    }
    m = h->msg_new(inst, j);
    if (m == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    id = sb_atom_id(pn_message_get_id(msg));
    if (id != NULL && id[0] != '\0')
        h->msg_set_id(m, id);
    free(id);
    if ((s = pn_message_get_content_type(msg)) != NULL && s[0] != '\0')
        h->msg_set_content_type(m, s);
    if ((s = pn_message_get_group_id(msg)) != NULL && s[0] != '\0')
        h->msg_set_partition_key(m, s);
    h->msg_set_delivery_count(m, pn_message_get_delivery_count(msg) + 1);
    props = pn_message_properties(msg);
    pn_data_rewind(props);
    if (pn_data_next(props) && pn_data_type(props) == PN_MAP) {
        pn_data_enter(props);
        while (pn_data_next(props)) {
            int kok = sb_atom_text(props, key, sizeof(key)) == 0;

            if (!pn_data_next(props))
                break;
            if (kok && sb_atom_text(props, val, sizeof(val)) == 0)
                h->msg_set_prop(m, key, val);
        }
        pn_data_exit(props);
    }
    /* x-opt-enqueued-time is Service Bus's broker timestamp */
    ann = pn_message_annotations(msg);
    pn_data_rewind(ann);
    if (pn_data_next(ann) && pn_data_type(ann) == PN_MAP) {
        pn_data_enter(ann);
        while (pn_data_next(ann)) {
            int is_enq = pn_data_type(ann) == PN_SYMBOL
                && pn_data_get_symbol(ann).size == 19
                && memcmp(pn_data_get_symbol(ann).start, "x-opt-enqueued-time", 19) == 0;

            if (!pn_data_next(ann))
                break;
            if (is_enq && pn_data_type(ann) == PN_TIMESTAMP)
                enq = pn_data_get_timestamp(ann);
        }
        pn_data_exit(ann);
    }
    if (enq == 0 && pn_message_get_creation_time(msg) > 0)
        enq = pn_message_get_creation_time(msg);
    h->msg_set_enqueued_ms(m, enq > 0 ? enq : sb_now_ms());
    return m;
}

int
sb_encode(pn_message_t *msg, char **out, size_t *len)
{
    size_t cap = 1024;
    char *buf = NULL;

    for (;;) {
        char *nb = realloc(buf, cap);
        size_t sz = cap;
        int rc;

        if (nb == NULL) {
            free(buf);
            return -ENOMEM;
        }
        buf = nb;
        rc = pn_message_encode(msg, buf, &sz);
        if (rc == 0) {
            *out = buf;
            *len = sz;
            return 0;
        }
        if (rc != PN_OVERFLOW || cap > (64u << 20)) {
            free(buf);
            return -EMSGSIZE;
        }
        cap *= 2;
    }
}
