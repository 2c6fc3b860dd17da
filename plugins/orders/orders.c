/*
 * orders.c - the `orders` transform: the order state machine.
 *
 * It turns a command message (property "command", property "order_id",
 * message id = command id, body = order or command data) into the event it
 * causes, in place: the body becomes
 *   {"id","type","orderId","version","time","commandId","data","snapshot"}
 * and the message id, properties type/order_id/version and the partition
 * key are set.  The store stage behind it persists event and snapshot.
 *
 * Redelivery.  The event id is a pure function of the order id and the
 * command id, so a redelivered command gives the same event id.  When the
 * store already holds that event (lookup "event:<order id>/<id>"), the stored event is
 * re-emitted unchanged, so the store's insert is a no-op and publishers see
 * the same id and version again instead of a second state change.
 *
 * Event id: "evt-" + 32 lower-case hex digits, the concatenation of two
 * 64-bit FNV-1a hashes of "<orderId>\n<commandId>", one with the standard
 * offset basis 0xcbf29ce484222325 and one with 0x6c62272e07bb0142 (the low
 * half of the 128-bit FNV offset basis).  Not cryptographic: it only has to
 * be stable and collision-free in practice for ids we generate ourselves.
 *
 * Snapshot.  create: the order document, "id" forced to the order id.  Every
 * event then sets "status" (the transition's `to`), "version" (previous +
 * 1), "totals" {subtotal: sum(qty*price) rounded to cents, itemCount:
 * sum(qty)}, "createdAt" (first event) and "updatedAt" (this event's time,
 * ISO 8601 UTC with milliseconds).  A command's data object is stored under
 * the transition's `field` with an "at" time added, by default:
 *   pay -> "payment", ship -> "shipment", deliver -> "delivery",
 *   cancel -> "cancellation" (e.g. {"reason": "...", "at": "..."}).
 *
 * Text.  The store and the publishers after this stage need the event as
 * JSON text, and "data" and "snapshot" hold the command's body twice over.
 * When the command's body comes with its text (msg_body_text, kept from
 * the spool record), the event's text is put together from it: "data" is
 * that text as it is, and "snapshot", when it begins with the body's own
 * members unchanged (a create), is that text with the members added here
 * written after them.  It is handed over with the tree
 * (msg_set_body_encoded, ABI 1.5), so nobody encodes the tree: the bytes
 * are those the encoder would write (check_orders compares them).
 *
 * Poison messages (unknown command, missing order, order exists, forbidden
 * transition, no order id) are REJECTed so they are dead-lettered; failed
 * store lookups are RETRYed.
 *
 * Concurrency: the stage itself is stateless and thread-safe, but two
 * commands for one order processed at the same time would both read the
 * same snapshot; pipelines should keep one order's commands in order
 * (partition key = order id).
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <orderd/plugin.h>

#include "../common/jsonenc.h"

#define ORD_MAX_FROM 32

struct ord_trans {
    char   *command;
    char  **from;      /* states it may start from; none = creates the order */
    size_t  nfrom;
    char   *to;
    char   *event;
    char   *field;     /* snapshot key for the command's data, or NULL */
};

struct ord_state {
    orderd_inst       *inst;
    const orderd_host *host;
    char              *store;        /* pipeline whose store to ask, NULL = own */
    struct ord_trans  *trans;
    size_t             ntrans;
    char              *valid;        /* "create, pay, ..." for messages */
    atomic_int         warned_nostore;
};

static const orderd_option ord_trans_options[] = {
    { .key = "command", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_REQUIRED,
      .help = "command name, as in POST /orders/{id}/{command} (\"create\" for new orders)" },
    { .key = "from", .type = ORDERD_T_STRLIST,
      .help = "order statuses the command is allowed in; empty or absent: the command creates a new order" },
    { .key = "to", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_REQUIRED,
      .help = "order status after the command" },
    { .key = "event", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_REQUIRED,
      .help = "event type emitted, e.g. OrderPaid" },
    { .key = "field", .type = ORDERD_T_STRING,
      .help = "snapshot key that receives the command's data plus an \"at\" time (absent: data only in the event)" },
    { .key = NULL }
};

static const orderd_option ord_options[] = {
    { .key = "transitions", .type = ORDERD_T_GROUPLIST, .sub = ord_trans_options,
      .help = "state machine; absent: create->created, pay: created->paid, ship: paid->shipped, "
              "deliver: shipped->delivered, cancel: created|paid->cancelled" },
    { .key = "store", .type = ORDERD_T_STRING,
      .help = "pipeline whose store holds order snapshots and events (absent: this pipeline's)" },
    { .key = NULL }
};

static const struct {
    const char *command, *from, *to, *event, *field;
} ord_default[] = {
    { "create",  "",             "created",   "OrderCreated",   NULL },
    { "pay",     "created",      "paid",      "OrderPaid",      "payment" },
    { "ship",    "paid",         "shipped",   "OrderShipped",   "shipment" },
    { "deliver", "shipped",      "delivered", "OrderDelivered", "delivery" },
    { "cancel",  "created,paid", "cancelled", "OrderCancelled", "cancellation" },
};

static void ord_trans_free(struct ord_trans *t)
{
    size_t i;

    for (i = 0; i < t->nfrom; i++)
        free(t->from[i]);
    free(t->from);
    free(t->command);
    free(t->to);
    free(t->event);
    free(t->field);
}

static int ord_add_from(struct ord_trans *t, const char *s, size_t len)
{
    char **grown;

    grown = realloc(t->from, (t->nfrom + 1) * sizeof(*grown));
    if (grown == NULL)
        return -ENOMEM;
    t->from = grown;
    t->from[t->nfrom] = strndup(s, len);
    if (t->from[t->nfrom] == NULL)
        return -ENOMEM;
    t->nfrom++;
    return 0;
}

static char *ord_strdup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

static int ord_load_default(struct ord_state *st)
{
    size_t i, n = sizeof(ord_default) / sizeof(ord_default[0]);
    const char *p, *comma;

    st->trans = calloc(n, sizeof(*st->trans));
    if (st->trans == NULL)
        return -ENOMEM;
    for (i = 0; i < n; i++) {
        struct ord_trans *t = &st->trans[i];

        st->ntrans++;
        t->command = strdup(ord_default[i].command);
        t->to = strdup(ord_default[i].to);
        t->event = strdup(ord_default[i].event);
        t->field = ord_strdup_or_null(ord_default[i].field);
        if (t->command == NULL || t->to == NULL || t->event == NULL
            || (ord_default[i].field != NULL && t->field == NULL))
            return -ENOMEM;
        for (p = ord_default[i].from; *p; p = *comma ? comma + 1 : comma) {
            comma = strchr(p, ',');
            if (comma == NULL)
                comma = p + strlen(p);
            if (ord_add_from(t, p, (size_t)(comma - p)) < 0)
                return -ENOMEM;
        }
    }
    return 0;
}

static int ord_load_config(struct ord_state *st, const json_t *list)
{
    size_t i, k;
    const json_t *g, *s;

    st->trans = calloc(json_array_size(list) + 1, sizeof(*st->trans));
    if (st->trans == NULL)
        return -ENOMEM;
    json_array_foreach(list, i, g) {
        struct ord_trans *t = &st->trans[i];
        const json_t *from = json_object_get(g, "from");

        st->ntrans++;
        t->command = ord_strdup_or_null(json_string_value(json_object_get(g, "command")));
        t->to = ord_strdup_or_null(json_string_value(json_object_get(g, "to")));
        t->event = ord_strdup_or_null(json_string_value(json_object_get(g, "event")));
        t->field = ord_strdup_or_null(json_string_value(json_object_get(g, "field")));
        if (t->command == NULL || t->to == NULL || t->event == NULL) {
            st->host->log(st->inst, ORDERD_LOG_ERR, "transitions[%zu]: command, to and event are required", i);
            return -EINVAL;
        }
        json_array_foreach(from, k, s) {
            if (json_is_string(s) && ord_add_from(t, json_string_value(s), json_string_length(s)) < 0)
                return -ENOMEM;
        }
    }
    if (st->ntrans == 0) {
        st->host->log(st->inst, ORDERD_LOG_ERR, "transitions is empty: no command could ever succeed");
        return -EINVAL;
    }
    return 0;
}

/* "create, pay, ship" - the command names, each once, for REJECT reasons. */
static int ord_build_valid(struct ord_state *st)
{
    size_t i, k, len = 1;

    for (i = 0; i < st->ntrans; i++)
        len += strlen(st->trans[i].command) + 2;
    st->valid = calloc(1, len);
    if (st->valid == NULL)
        return -ENOMEM;
    for (i = 0; i < st->ntrans; i++) {
        for (k = 0; k < i && strcmp(st->trans[k].command, st->trans[i].command) != 0; k++)
            ;
        if (k < i)
            continue;
        if (st->valid[0] != '\0')
            strcat(st->valid, ", ");
        strcat(st->valid, st->trans[i].command);
    }
    return 0;
}

static void ord_destroy(void *state)
{
    struct ord_state *st = state;
    size_t i;

    if (st == NULL)
        return;
    for (i = 0; i < st->ntrans; i++)
        ord_trans_free(&st->trans[i]);
    free(st->trans);
    free(st->valid);
    free(st->store);
    free(st);
}

static int ord_create(orderd_inst *inst, const orderd_host *host, const json_t *conf, void **state)
{
    struct ord_state *st;
    const json_t *list = json_object_get(conf, "transitions");
    const char *store = json_string_value(json_object_get(conf, "store"));
    int rc;

    st = calloc(1, sizeof(*st));
    if (st == NULL) {
        host->log(inst, ORDERD_LOG_ERR, "out of memory");
        return -ENOMEM;
    }
    st->inst = inst;
    st->host = host;
    atomic_init(&st->warned_nostore, 0);
    if (store != NULL && (st->store = strdup(store)) == NULL) {
        rc = -ENOMEM;
        goto fail;
    }
    rc = json_is_array(list) ? ord_load_config(st, list) : ord_load_default(st);
    if (rc == 0)
        rc = ord_build_valid(st);
    if (rc < 0)
        goto fail;
    *state = st;
    return 0;

fail:
    if (rc == -ENOMEM)
        host->log(inst, ORDERD_LOG_ERR, "out of memory");
    ord_destroy(st);
    return rc;
}

/* ---- helpers ---- */

static uint64_t ord_fnv1a(uint64_t h, const char *s)
{
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

static void ord_event_id(const char *order_id, const char *cmd_id, char out[37])
{
    uint64_t h1 = 0xcbf29ce484222325ULL, h2 = 0x6c62272e07bb0142ULL;

    h1 = ord_fnv1a(ord_fnv1a(ord_fnv1a(h1, order_id), "\n"), cmd_id);
    h2 = ord_fnv1a(ord_fnv1a(ord_fnv1a(h2, order_id), "\n"), cmd_id);
    snprintf(out, 37, "evt-%016" PRIx64 "%016" PRIx64, h1, h2);
}

static void ord_now(char out[32])
{
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    if (strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm) == 0)
        out[0] = '\0';
    snprintf(out + strlen(out), 32 - strlen(out), ".%03dZ", (int)((ts.tv_nsec / 1000000L) % 1000));
}

static int ord_has_from(const struct ord_trans *t, const char *status)
{
    size_t i;

    for (i = 0; i < t->nfrom; i++) {
        if (status != NULL && strcmp(t->from[i], status) == 0)
            return 1;
    }
    return 0;
}

/* The message's id, properties and partition key for an event.  oid must
 * not point into the message (its order_id property, its body): the
 * setters free what they replace.  RETURNS: 0, or -ENOMEM. */
static int ord_label(const orderd_host *h, orderd_msg *m, const char *id, const char *type,
                     const char *oid, const char *ver)
{
    if (h->msg_set_id(m, id) < 0 || h->msg_set_prop(m, "type", type) < 0
        || h->msg_set_prop(m, "order_id", oid) < 0 || h->msg_set_prop(m, "version", ver) < 0
        || h->msg_set_partition_key(m, oid) < 0)
        return -ENOMEM;
    return 0;
}

/* Set the message to be `event`: id, properties and partition key follow it.
 * text, if not NULL, is the event's JSON text (see "Text" above). */
static orderd_outcome ord_emit(struct ord_state *st, orderd_msg *m, json_t *event, const char *text,
                               size_t text_len)
{
    const orderd_host *h = st->host;
    const char *id = json_string_value(json_object_get(event, "id"));
    const char *type = json_string_value(json_object_get(event, "type"));
    const char *oid = json_string_value(json_object_get(event, "orderId"));
    char ver[24];

    if (id == NULL || type == NULL || oid == NULL) {
        json_decref(event);
        return h->reject(m, "stored event lacks id, type or orderId");
    }
    snprintf(ver, sizeof(ver), "%" JSON_INTEGER_FORMAT, json_integer_value(json_object_get(event, "version")));
    if (ord_label(h, m, id, type, oid, ver) < 0) {
        json_decref(event);
        return h->retry(m, 0, "out of memory");
    }
    if (text != NULL && ORDERD_HOST_HAS(h, msg_set_body_encoded))
        h->msg_set_body_encoded(m, event, text, text_len);   /* -ENOMEM: set without it */
    else
        h->msg_set_body(m, event);
    return ORDERD_OK;
}

/* ord_emit() for an event that is text alone (ord_create_text). */
static orderd_outcome ord_emit_text(struct ord_state *st, orderd_msg *m, const char *id, const char *type,
                                    const char *oid, const char *text, size_t text_len)
{
    const orderd_host *h = st->host;
    /* oid lives in the body this replaces, or is the property set here */
    char *key = strdup(oid);
    int rc;

    rc = key == NULL || ord_label(h, m, id, type, key, "1") < 0
         || h->msg_set_body_json(m, text, text_len) < 0;
    free(key);
    return rc ? h->retry(m, 0, "out of memory") : ORDERD_OK;
}

/* Does snap begin with body's members, unchanged?  The snapshot of a create
 * is a shallow copy of the body with members added after them, and the
 * order id set again (to the same string). */
static int ord_snap_extends(const json_t *snap, const json_t *body)
{
    void *si = json_object_iter((json_t *)snap), *bi = json_object_iter((json_t *)body);

    for (; bi != NULL; bi = json_object_iter_next((json_t *)body, bi),
                       si = json_object_iter_next((json_t *)snap, si)) {
        const json_t *sv, *bv = json_object_iter_value(bi);

        if (si == NULL || strcmp(json_object_iter_key(si), json_object_iter_key(bi)) != 0)
            return 0;
        sv = json_object_iter_value(si);
        if (sv != bv && !(json_is_string(sv) && json_equal(sv, bv)))
            return 0;
    }
    return 1;
}

/* The event's text, put together from the body's text btxt (blen bytes,
 * the encoding of body) instead of encoding the event's tree: the members
 * in the event's order, "data" (which is body) as btxt, "snapshot" as btxt
 * followed by the members it adds when it extends body, every other value
 * encoded.  RETURNS: malloc'd text of *len bytes, or NULL (then the store
 * encodes the tree as before). */
static char *ord_event_text(const json_t *event, const json_t *body, const char *btxt, size_t blen,
                            size_t *len)
{
    struct jenc_buf b = { NULL, 0, 0, 0 };
    const char *key;
    json_t *v;
    int rc, first = 1;

    if (blen < 2 || btxt[0] != '{' || btxt[blen - 1] != '}' || !json_is_object(body))
        return NULL;
    rc = jenc_reserve(&b, 2 * blen + 256) || jenc_put(&b, "{", 1);
    json_object_foreach((json_t *)event, key, v) {
        rc = rc || (!first && jenc_put(&b, ",", 1)) || jenc_string(&b, key, strlen(key)) ||
             jenc_put(&b, ":", 1);
        first = 0;
        if (rc)
            break;
        if (v == body) {
            rc = jenc_put(&b, btxt, blen);
        } else if (strcmp(key, "snapshot") == 0 && json_is_object(v) && ord_snap_extends(v, body)) {
            size_t skip = json_object_size(body), i = 0;
            int empty = skip == 0;   /* "{ }" as given is empty too */
            const char *k2;
            json_t *v2;

            rc = jenc_put(&b, btxt, blen - 1);
            json_object_foreach(v, k2, v2) {
                if (i++ < skip)
                    continue;
                rc = rc || (!empty && jenc_put(&b, ",", 1)) || jenc_string(&b, k2, strlen(k2)) ||
                     jenc_put(&b, ":", 1) || jenc_dump(&b, v2);
                empty = 0;
            }
            rc = rc || jenc_put(&b, "}", 1);
        } else {
            rc = jenc_dump(&b, v);
        }
    }
    rc = rc || jenc_put(&b, "}", 1);
    if (rc != 0) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

/* Lookup with the -ENOTSUP case (no store configured) treated as "absent",
 * so a pipeline without a store still turns creates into events. */
static int ord_lookup(struct ord_state *st, const char *key, json_t **out)
{
    int rc = st->host->lookup(st->inst, st->store, key, out);

    if (rc == -ENOTSUP) {
        if (atomic_exchange(&st->warned_nostore, 1) == 0)
            st->host->log(st->inst, ORDERD_LOG_WARN, "pipeline %s has no store that can look up orders: "
                          "every order is treated as new", st->store ? st->store : "(this one)");
        rc = -ENOENT;
    }
    return rc;
}

/* {"subtotal": sum(qty * price) in cents, "itemCount": sum(qty)} of an
 * order's items.  RETURNS: a new object, or NULL when out of memory. */
static json_t *ord_totals_of(const json_t *snap)
{
    const json_t *items = json_object_get(snap, "items");
    const json_t *it;
    double sum = 0;
    json_int_t count = 0;
    size_t i;

    json_array_foreach(items, i, it) {
        const json_t *q = json_object_get(it, "qty");
        const json_t *p = json_object_get(it, "price");
        double qty = json_is_number(q) ? json_number_value(q) : 0;

        if (json_is_number(p))
            sum += qty * json_number_value(p);
        count += (json_int_t)qty;
    }
    return json_pack("{s:f, s:I}", "subtotal", round(sum * 100.0) / 100.0, "itemCount", count);
}

static void ord_totals(json_t *snap)
{
    json_object_set_new(snap, "totals", ord_totals_of(snap));
}

/* A create's event as text alone (ABI 1.6), with no tree at all: the text
 * ord_event_text() would make of the event, written straight from the
 * command's text.  Only when that is certain: a body whose members the
 * snapshot keeps as they are (no "status", "version", "totals",
 * "createdAt" or "updatedAt" of its own, an "id" only if it is the order
 * id), and a transition that files no command data.  The tree is decoded
 * from the text if a stage after us asks for it.
 * RETURNS: malloc'd text of *len bytes, or NULL (then the tree is built). */
static char *ord_create_text(const struct ord_trans *t, const json_t *body, const char *btxt,
                             size_t blen, const char *evt_id, const char *oid,
                             const char *cmd_id, const char *now, size_t *len)
{
    static const char *const added[] = { "status", "version", "totals", "createdAt", "updatedAt" };
    struct jenc_buf b = { NULL, 0, 0, 0 };
    const json_t *id = json_object_get(body, "id");
    json_t *totals;
    size_t i;
    int rc, members = json_object_size(body) > 0;

    if (t->field != NULL || blen < 2 || btxt[0] != '{' || btxt[blen - 1] != '}' ||
        !json_is_object(body) || (id != NULL && !(json_is_string(id) && strcmp(json_string_value(id), oid) == 0)))
        return NULL;
    for (i = 0; i < sizeof(added) / sizeof(added[0]); i++)
        if (json_object_get(body, added[i]) != NULL)
            return NULL;
    totals = ord_totals_of(body);
    if (totals == NULL)
        return NULL;
    rc = jenc_reserve(&b, 2 * blen + 512) ||
         jenc_put(&b, "{\"id\":", 6) || jenc_string(&b, evt_id, strlen(evt_id)) ||
         jenc_put(&b, ",\"type\":", 8) || jenc_string(&b, t->event, strlen(t->event)) ||
         jenc_put(&b, ",\"orderId\":", 11) || jenc_string(&b, oid, strlen(oid)) ||
         jenc_put(&b, ",\"version\":1,\"time\":", 20) || jenc_string(&b, now, strlen(now)) ||
         jenc_put(&b, ",\"commandId\":", 13) || jenc_string(&b, cmd_id, strlen(cmd_id)) ||
         jenc_put(&b, ",\"data\":", 8) || jenc_put(&b, btxt, blen) ||
         jenc_put(&b, ",\"snapshot\":", 12) || jenc_put(&b, btxt, blen - 1);
    if (!rc && id == NULL)
        rc = jenc_put(&b, members ? ",\"id\":" : "\"id\":", members ? 6 : 5) ||
             jenc_string(&b, oid, strlen(oid)) || jenc_put(&b, ",", 1);
    else if (!rc && members)
        rc = jenc_put(&b, ",", 1);
    rc = rc || jenc_put(&b, "\"status\":", 9) || jenc_string(&b, t->to, strlen(t->to)) ||
         jenc_put(&b, ",\"version\":1,\"totals\":", 22) || jenc_dump(&b, totals) ||
         jenc_put(&b, ",\"createdAt\":", 13) || jenc_string(&b, now, strlen(now)) ||
         jenc_put(&b, ",\"updatedAt\":", 13) || jenc_string(&b, now, strlen(now)) ||
         jenc_put(&b, "}}", 2);
    json_decref(totals);
    if (rc != 0) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

/* ---- process ---- */

static orderd_outcome ord_process(void *state, orderd_msg *m)
{
    struct ord_state *st = state;
    const orderd_host *h = st->host;
    const char *cmd = h->msg_prop(m, "command");
    const char *oid = h->msg_prop(m, "order_id");
    const char *cmd_id = h->msg_id(m);
    const char *status = NULL;
    const struct ord_trans *t = NULL, *create_t = NULL;
    /* Read, not changed: the tree stays the body until ord_emit() replaces
     * it, and the text that came with it is kept (see "Text" above). */
    int peek = ORDERD_HOST_HAS(h, msg_body_peek) && ORDERD_HOST_HAS(h, msg_set_body_encoded);
    json_t *body = peek ? (json_t *)h->msg_body_peek(m) : h->msg_body(m);
    json_t *snap = NULL, *stored = NULL, *event = NULL, *data;
    json_int_t version = 0;
    char evt_id[37], now[32] = "", *key, *text = NULL;
    size_t text_len = 0;
    orderd_outcome out;
    size_t i;
    int rc, known = 0;

    if (cmd == NULL)
        cmd = "create";
    if (oid == NULL && strcmp(cmd, "create") == 0)
        oid = json_string_value(json_object_get(body, "id"));
    if (oid == NULL || oid[0] == '\0')
        return h->reject(m, "%s command without an order id (property order_id)", cmd);
    if (body != NULL && !json_is_object(body))
        return h->reject(m, "%s command body is not a JSON object", cmd);

    for (i = 0; i < st->ntrans; i++) {
        if (strcmp(st->trans[i].command, cmd) == 0) {
            known = 1;
            if (st->trans[i].nfrom == 0 && create_t == NULL)
                create_t = &st->trans[i];
        }
    }
    if (!known)
        return h->reject(m, "unknown command \"%s\" (valid: %s)", cmd, st->valid);

    rc = ord_lookup(st, oid, &snap);
    if (rc < 0 && rc != -ENOENT)
        return h->retry(m, 0, "looking up order %s: %s", oid, strerror(-rc));

    ord_event_id(oid, cmd_id, evt_id);
    if (snap != NULL) {
        /* The store writes event and snapshot together, so only an existing
         * order can have this command's event already: a redelivery. */
        /* "event:<order id>/<event id>": a store can find it by order */
        key = malloc(strlen(oid) + sizeof(evt_id) + 8);
        if (key == NULL) {
            out = h->retry(m, 0, "looking up event %s: out of memory", evt_id);
            goto done;
        }
        sprintf(key, "event:%s/%s", oid, evt_id);
        rc = ord_lookup(st, key, &stored);
        free(key);
        if (rc == 0) {
            h->metric_add(st->inst, "redelivered", 1);
            out = ord_emit(st, m, stored, NULL, 0);
            goto done;
        }
        if (rc != -ENOENT) {
            out = h->retry(m, 0, "looking up event %s: %s", evt_id, strerror(-rc));
            goto done;
        }
        status = json_string_value(json_object_get(snap, "status"));
        for (i = 0; i < st->ntrans && t == NULL; i++) {
            if (strcmp(st->trans[i].command, cmd) == 0 && ord_has_from(&st->trans[i], status))
                t = &st->trans[i];
        }
        if (t == NULL) {
            if (create_t != NULL)
                out = h->reject(m, "order %s already exists", oid);
            else
                out = h->reject(m, "cannot %s an order that is %s", cmd, status ? status : "(no status)");
            goto done;
        }
        version = json_integer_value(json_object_get(snap, "version"));
        stored = json_deep_copy(snap);   /* the looked-up snapshot may be shared */
        json_decref(snap);
        snap = stored;
        stored = NULL;
    } else {
        if (create_t == NULL) {
            out = h->reject(m, "order %s not found", oid);
            goto done;
        }
        t = create_t;
        if (peek && body != NULL && ORDERD_HOST_HAS(h, msg_set_body_json)) {
            size_t blen = 0;
            const char *btxt = h->msg_body_text(m, &blen);

            ord_now(now);
            if (btxt != NULL &&
                (text = ord_create_text(t, body, btxt, blen, evt_id, oid, cmd_id, now, &text_len)) != NULL) {
                h->metric_add(st->inst, "events", 1);
                out = ord_emit_text(st, m, evt_id, t->event, oid, text, text_len);
                free(text);
                goto done;
            }
        }
        /* Shallow: the snapshot's members (items, ...) are the command's
         * own values, shared with the event's "data"; only top-level keys
         * are set below.  See "Shared values" in the plugin's README. */
        snap = body != NULL ? json_copy(body) : json_object();
    }
    if (snap == NULL) {
        out = h->retry(m, 0, "out of memory");
        goto done;
    }

    if (now[0] == '\0')     /* not already taken for the text path above */
        ord_now(now);
    /* The event's "data" shares the command body instead of copying it: it
     * is never modified (the snapshot field below gets its own copy), and
     * the body it came from is replaced by the event in ord_emit(). */
    data = body != NULL ? json_incref(body) : json_object();
    if (data == NULL) {
        out = h->retry(m, 0, "out of memory");
        goto done;
    }
    if (t->field != NULL) {
        json_t *d = json_deep_copy(data);

        json_object_set_new(d, "at", json_string(now));
        json_object_set_new(snap, t->field, d);
    }
    json_object_set_new(snap, "id", json_string(oid));
    json_object_set_new(snap, "status", json_string(t->to));
    json_object_set_new(snap, "version", json_integer(version + 1));
    ord_totals(snap);
    if (version == 0 || json_object_get(snap, "createdAt") == NULL)
        json_object_set_new(snap, "createdAt", json_string(now));
    json_object_set_new(snap, "updatedAt", json_string(now));

    event = json_pack("{s:s, s:s, s:s, s:I, s:s, s:s, s:o, s:O}", "id", evt_id, "type", t->event,
                      "orderId", oid, "version", version + 1, "time", now, "commandId", cmd_id,
                      "data", data, "snapshot", snap);
    if (event == NULL) {
        out = h->retry(m, 0, "out of memory");
        goto done;
    }
    h->metric_add(st->inst, "events", 1);
    if (peek && body != NULL) {
        size_t blen = 0;
        const char *btxt = h->msg_body_text(m, &blen);

        if (btxt != NULL)
            text = ord_event_text(event, body, btxt, blen, &text_len);
    }
    out = ord_emit(st, m, event, text, text_len);
    free(text);

done:
    json_decref(snap);
    return out;
}

static const orderd_stage ord_transform = ORDERD_STAGE(
    .kind = ORDERD_TRANSFORM,
    .description = "order state machine: turn a command into the event it causes",
    .options = ord_options,
    .create = ord_create,
    .process = ord_process,
    .destroy = ord_destroy);

static const orderd_stage *const ord_stages[] = { &ord_transform, NULL };

ORDERD_PLUGIN(.name = "orders", .version = "1.0",
              .description = "order state machine transform (command -> event)",
              .maintainer = "orderd developers",
              .stages = ord_stages);
