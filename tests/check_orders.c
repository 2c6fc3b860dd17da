/* check_orders.c - the `orders` transform (order state machine).
 *
 * The fake host's lookup table plays the store: after each step the test
 * stores the event's snapshot under the order id and the event under
 * "event:<id>", as the sqlite store would. */
#include "config.h"

#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "msg.h"

static const char *order_example =
    "{\"id\": \"ord-1001\", \"customerId\": \"c-42\", \"currency\": \"EUR\","
    " \"items\": [{\"sku\": \"SKU-1\", \"qty\": 2, \"price\": 19.99},"
    "             {\"sku\": \"SKU-2\", \"qty\": 1, \"price\": 0.1049}],"
    " \"shipping\": {\"name\": \"Jane Doe\", \"city\": \"Berlin\", \"country\": \"DE\"}}";

/* The documented event id: "evt-" + two 64-bit FNV-1a of "<orderId>\n<commandId>". */
static void expected_event_id(const char *oid, const char *cid, char out[37])
{
    uint64_t h[2] = { 0xcbf29ce484222325ULL, 0x6c62272e07bb0142ULL };
    char buf[256];

    snprintf(buf, sizeof(buf), "%s\n%s", oid, cid);
    for (int k = 0; k < 2; k++) {
        for (const char *p = buf; *p; p++) {
            h[k] ^= (unsigned char)*p;
            h[k] *= 0x100000001b3ULL;
        }
    }
    snprintf(out, 37, "evt-%016" PRIx64 "%016" PRIx64, h[0], h[1]);
}

/* An event's text (msg_body_text) is what jansson writes of its tree, byte
 * for byte, whether the stage put it together from the command's text or
 * not.  Reads the tree with msg_body_peek, which keeps the text. */
static void check_text(orderd_msg *m)
{
    const orderd_host *h = th_host();
    size_t len = 0;
    const char *text = h->msg_body_text(m, &len);
    char *want = json_dumps(h->msg_body_peek(m), JSON_COMPACT | JSON_REAL_PRECISION(15));

    ck_assert_ptr_nonnull(text);
    ck_assert_ptr_nonnull(want);
    ck_assert_str_eq(text, want);
    ck_assert_uint_eq(len, strlen(want));
    free(want);
}

/* Run one command through the stage; the caller frees the message. */
static orderd_msg *command(struct th_stage *s, const char *cmd, const char *oid, const char *cmd_id,
                           const char *body, orderd_outcome want)
{
    const orderd_host *h = th_host();
    orderd_msg *m = th_msg(body);
    orderd_outcome o;

    if (cmd != NULL)
        ck_assert_int_eq(h->msg_set_prop(m, "command", cmd), 0);
    if (oid != NULL)
        ck_assert_int_eq(h->msg_set_prop(m, "order_id", oid), 0);
    ck_assert_int_eq(h->msg_set_id(m, cmd_id), 0);
    o = th_process(s, m);
    ck_assert_msg(o == want, "%s %s: outcome %d, want %d (%s)", cmd ? cmd : "create", oid ? oid : "-",
                  o, want, h->msg_reason(m) ? h->msg_reason(m) : "");
    if (o == ORDERD_OK)
        check_text(m);
    return m;
}

static const char *reason_of(struct th_stage *s, const char *cmd, const char *oid, const char *cmd_id,
                             const char *body, char *buf, size_t len)
{
    orderd_msg *m = command(s, cmd, oid, cmd_id, body, ORDERD_REJECT);

    snprintf(buf, len, "%s", th_host()->msg_reason(m) ? th_host()->msg_reason(m) : "");
    th_msg_free(m);
    return buf;
}

/* What the store does with an event: keep it and its snapshot. */
static void store_event(orderd_msg *m)
{
    json_t *ev = th_host()->msg_body(m);
    char key[256], *snap, *all;

    snap = json_dumps(json_object_get(ev, "snapshot"), JSON_COMPACT);
    all = json_dumps(ev, JSON_COMPACT);
    ck_assert_ptr_nonnull(snap);
    ck_assert_ptr_nonnull(all);
    th_set_lookup(json_string_value(json_object_get(ev, "orderId")), snap);
    /* as the orders transform asks for it: "event:<order id>/<event id>" */
    snprintf(key, sizeof(key), "event:%s/%s", json_string_value(json_object_get(ev, "orderId")),
             th_host()->msg_id(m));
    th_set_lookup(key, all);
    free(snap);
    free(all);
}

static void check_event(orderd_msg *m, const char *type, const char *oid, const char *cmd_id,
                        int version, const char *status)
{
    const orderd_host *h = th_host();
    json_t *ev = h->msg_body(m), *snap = json_object_get(ev, "snapshot");
    char id[37], ver[16];

    expected_event_id(oid, cmd_id, id);
    snprintf(ver, sizeof(ver), "%d", version);
    ck_assert_str_eq(h->msg_id(m), id);
    ck_assert_str_eq(h->msg_prop(m, "type"), type);
    ck_assert_str_eq(h->msg_prop(m, "order_id"), oid);
    ck_assert_str_eq(h->msg_prop(m, "version"), ver);
    ck_assert_str_eq(h->msg_partition_key(m), oid);
    ck_assert_str_eq(json_string_value(json_object_get(ev, "id")), id);
    ck_assert_str_eq(json_string_value(json_object_get(ev, "type")), type);
    ck_assert_str_eq(json_string_value(json_object_get(ev, "orderId")), oid);
    ck_assert_str_eq(json_string_value(json_object_get(ev, "commandId")), cmd_id);
    ck_assert_int_eq(json_integer_value(json_object_get(ev, "version")), version);
    ck_assert_int_eq(strlen(json_string_value(json_object_get(ev, "time"))), 24);   /* ...T12:00:00.000Z */
    ck_assert_ptr_nonnull(json_object_get(ev, "data"));
    ck_assert_str_eq(json_string_value(json_object_get(snap, "id")), oid);
    ck_assert_str_eq(json_string_value(json_object_get(snap, "status")), status);
    ck_assert_int_eq(json_integer_value(json_object_get(snap, "version")), version);
    ck_assert_str_eq(json_string_value(json_object_get(snap, "updatedAt")),
                     json_string_value(json_object_get(ev, "time")));
}

START_TEST(test_lifecycle)
{
    struct th_stage *s = th_stage_new("orders", ORDERD_TRANSFORM, "");
    json_t *snap, *tot;
    orderd_msg *m;
    char created_at[32];

    m = command(s, NULL, "ord-1001", "cmd-1", order_example, ORDERD_OK);
    check_event(m, "OrderCreated", "ord-1001", "cmd-1", 1, "created");
    snap = json_object_get(th_host()->msg_body(m), "snapshot");
    tot = json_object_get(snap, "totals");
    ck_assert_double_eq_tol(json_real_value(json_object_get(tot, "subtotal")), 40.08, 1e-9);
    ck_assert_int_eq(json_integer_value(json_object_get(tot, "itemCount")), 3);
    ck_assert_str_eq(json_string_value(json_object_get(snap, "customerId")), "c-42");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(snap, "shipping"), "city")), "Berlin");
    ck_assert_str_eq(json_string_value(json_object_get(snap, "createdAt")),
                     json_string_value(json_object_get(snap, "updatedAt")));
    snprintf(created_at, sizeof(created_at), "%s", json_string_value(json_object_get(snap, "createdAt")));
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(th_host()->msg_body(m), "data"), "currency")),
                     "EUR");
    store_event(m);
    th_msg_free(m);

    m = command(s, "pay", "ord-1001", "cmd-2", "{\"amount\": 40.08}", ORDERD_OK);
    check_event(m, "OrderPaid", "ord-1001", "cmd-2", 2, "paid");
    snap = json_object_get(th_host()->msg_body(m), "snapshot");
    ck_assert_double_eq(json_real_value(json_object_get(json_object_get(snap, "payment"), "amount")), 40.08);
    ck_assert_ptr_nonnull(json_object_get(json_object_get(snap, "payment"), "at"));
    ck_assert_str_eq(json_string_value(json_object_get(snap, "createdAt")), created_at);
    ck_assert_str_eq(json_string_value(json_object_get(snap, "currency")), "EUR");
    ck_assert_double_eq(json_real_value(json_object_get(json_object_get(th_host()->msg_body(m), "data"), "amount")),
                        40.08);
    store_event(m);
    th_msg_free(m);

    m = command(s, "ship", "ord-1001", "cmd-3", "{\"carrier\": \"DHL\"}", ORDERD_OK);
    check_event(m, "OrderShipped", "ord-1001", "cmd-3", 3, "shipped");
    snap = json_object_get(th_host()->msg_body(m), "snapshot");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(snap, "shipment"), "carrier")), "DHL");
    ck_assert_ptr_nonnull(json_object_get(snap, "payment"));
    store_event(m);
    th_msg_free(m);

    m = command(s, "deliver", "ord-1001", "cmd-4", "{}", ORDERD_OK);
    check_event(m, "OrderDelivered", "ord-1001", "cmd-4", 4, "delivered");
    snap = json_object_get(th_host()->msg_body(m), "snapshot");
    ck_assert_ptr_nonnull(json_object_get(json_object_get(snap, "delivery"), "at"));
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(snap, "totals"), "itemCount")), 3);
    ck_assert_double_eq(th_metric(s, "events"), 4);
    th_msg_free(m);
    th_stage_free(s);
}
END_TEST

/* The event's text is put together from the command's text when that is
 * there (as the spool keeps it): "data" is that text, and the snapshot
 * that text with the added members after it.  It must read as the tree:
 * check_text() compares it with jansson's writing for these bodies, and
 * for bodies whose members the snapshot replaces (then it is encoded). */
START_TEST(test_event_text)
{
    static const char *bodies[] = {
        "{\"id\":\"o-t1\",\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"s\",\"qty\":2,\"price\":19.99}]}",
        /* escapes, non-ASCII, numbers jansson writes in its own ways */
        "{\"id\":\"o-t2\",\"note\":\"caf\\u00e9 \\\"q\\\" \\n\\t\\u0001 \xe2\x82\xac\",\"n\":-0,\"big\":9007199254740993,"
        "\"r\":[1e-7,123456789012.5,0.30000000000000004,-2.5e+300,1.0],\"nested\":{\"a\":[[],{}],\"b\":null,\"c\":true}}",
        /* members the snapshot sets already there: encoded, not put together */
        "{\"id\":\"o-t3\",\"status\":\"mine\",\"items\":[]}",
        "{\"id\":\"o-t4\",\"version\":7,\"totals\":{\"x\":1}}",
        /* no id in the body (the order id comes as a property): appended */
        "{\"customerId\":\"c\",\"items\":[{\"qty\":1,\"price\":3}]}",
        "{}",
    };
    static const char *oids[] = { "o-t1", "o-t2", "o-t3", "o-t4", "o-t5", "o-t6" };
    const orderd_host *h = th_host();
    struct th_stage *s = th_stage_new("orders", ORDERD_TRANSFORM, "");
    char cid[32];

    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        for (int given = 0; given < 2; given++) {
            orderd_msg *m = th_msg(bodies[i]);
            char *canon = json_dumps(h->msg_body_peek(m), JSON_COMPACT | JSON_REAL_PRECISION(15));

            /* with the command's text set (as the spool's record gives it),
             * and without (the stage asks for it) */
            if (given)
                ck_assert_int_eq(h->msg_set_body_text(m, canon, strlen(canon)), 0);
            ck_assert_int_eq(h->msg_set_prop(m, "order_id", oids[i]), 0);
            snprintf(cid, sizeof(cid), "cmd-t%zu-%d", i, given);
            ck_assert_int_eq(h->msg_set_id(m, cid), 0);
            ck_assert_int_eq(th_process(s, m), ORDERD_OK);
            check_text(m);
            ck_assert_str_eq(json_string_value(json_object_get(json_object_get(h->msg_body_peek(m),
                                                                               "snapshot"), "id")), oids[i]);
            free(canon);
            th_msg_free(m);
        }
    }

    /* a text set as given (spaces) stays as given inside the event's text */
    for (int empty = 0; empty < 2; empty++) {
        orderd_msg *m = th_msg("{}");
        const char *given = empty ? "{ }" : "{ \"id\" : \"o-t7\", \"items\" : [ ] }";
        size_t len = 0;
        json_t *back;

        ck_assert_int_eq(h->msg_set_body_text(m, given, strlen(given)), 0);
        ck_assert_int_eq(h->msg_set_prop(m, "order_id", "o-t7"), 0);
        ck_assert_int_eq(h->msg_set_id(m, empty ? "cmd-t8" : "cmd-t7"), 0);
        ck_assert_int_eq(th_process(s, m), ORDERD_OK);
        const char *text = h->msg_body_text(m, &len);
        char want[128];

        snprintf(want, sizeof(want), "\"data\":%s,", given);
        ck_assert_ptr_nonnull(strstr(text, want));
        back = json_loadb(text, len, 0, NULL);
        ck_assert_msg(back != NULL, "not JSON: %s", text);
        ck_assert(json_equal(back, h->msg_body_peek(m)));
        json_decref(back);
        th_msg_free(m);
    }
    th_stage_free(s);
}
END_TEST

/* A create whose body the snapshot keeps as it is becomes an event that is
 * text alone (ABI 1.6, msg_set_body_json): no tree until a stage asks, and
 * that text holds exactly the event the tree would have been, members in
 * the same order. */
START_TEST(test_create_text_only)
{
    static const char *bodies[] = {
        "{\"id\":\"o-x1\",\"customerId\":\"c\",\"currency\":\"EUR\","
        "\"items\":[{\"sku\":\"s\",\"qty\":2,\"price\":19.99},{\"sku\":\"t\",\"qty\":1,\"price\":0.015}]}",
        "{\"customerId\":\"c\",\"items\":[]}",        /* id from the property: appended */
        "{}",
    };
    const orderd_host *h = th_host();
    struct th_stage *s = th_stage_new("orders", ORDERD_TRANSFORM, "");

    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        orderd_msg *m = th_msg(bodies[i]);
        json_t *cmd = json_loads(bodies[i], 0, NULL), *want, *ev, *snap;
        const char *time;
        char *a, *b, oid[16], cid[16], evt[37];

        snprintf(oid, sizeof(oid), "o-x%zu", i + 1);
        snprintf(cid, sizeof(cid), "cmd-x%zu", i);
        ck_assert_int_eq(h->msg_set_body_text(m, bodies[i], strlen(bodies[i])), 0);
        ck_assert_int_eq(h->msg_set_prop(m, "order_id", oid), 0);
        ck_assert_int_eq(h->msg_set_id(m, cid), 0);
        ck_assert_int_eq(th_process(s, m), ORDERD_OK);
        ck_assert_msg(m->body == NULL, "create %zu: the event was built as a tree", i);
        check_text(m);     /* decodes it, and the text is what the encoder writes */

        ev = (json_t *)h->msg_body_peek(m);
        time = json_string_value(json_object_get(ev, "time"));
        ck_assert_ptr_nonnull(time);
        expected_event_id(oid, cid, evt);
        snap = json_copy(cmd);
        json_object_set_new(snap, "id", json_string(oid));
        json_object_set_new(snap, "status", json_string("created"));
        json_object_set_new(snap, "version", json_integer(1));
        json_object_set_new(snap, "totals", json_pack("{s:f, s:I}", "subtotal", i == 0 ? 39.99 : 0.0,
                                                      "itemCount", (json_int_t)(i == 0 ? 3 : 0)));
        json_object_set_new(snap, "createdAt", json_string(time));
        json_object_set_new(snap, "updatedAt", json_string(time));
        want = json_pack("{s:s, s:s, s:s, s:I, s:s, s:s, s:O, s:o}", "id", evt, "type", "OrderCreated",
                         "orderId", oid, "version", (json_int_t)1, "time", time, "commandId", cid,
                         "data", cmd, "snapshot", snap);
        a = json_dumps(want, JSON_COMPACT | JSON_REAL_PRECISION(15));
        b = json_dumps(ev, JSON_COMPACT | JSON_REAL_PRECISION(15));
        ck_assert_str_eq(b, a);
        ck_assert_str_eq(h->msg_prop(m, "order_id"), oid);
        ck_assert_str_eq(h->msg_prop(m, "version"), "1");
        ck_assert_str_eq(h->msg_prop(m, "type"), "OrderCreated");
        ck_assert_str_eq(h->msg_partition_key(m), oid);
        ck_assert_str_eq(h->msg_id(m), evt);
        free(a);
        free(b);
        json_decref(want);
        json_decref(cmd);
        th_msg_free(m);
    }
    th_stage_free(s);
}
END_TEST

START_TEST(test_rejects)
{
    struct th_stage *s = th_stage_new("orders", ORDERD_TRANSFORM, "");
    orderd_msg *m;
    char why[256];

    ck_assert_str_eq(reason_of(s, "pay", "ord-404", "c1", "{}", why, sizeof(why)), "order ord-404 not found");
    ck_assert_str_eq(reason_of(s, "refund", "ord-1001", "c1", "{}", why, sizeof(why)),
                     "unknown command \"refund\" (valid: create, pay, ship, deliver, cancel)");
    ck_assert_str_eq(reason_of(s, "create", NULL, "c1", "{\"customerId\": \"x\"}", why, sizeof(why)),
                     "create command without an order id (property order_id)");

    m = command(s, "create", "ord-1001", "cmd-1", order_example, ORDERD_OK);
    store_event(m);
    th_msg_free(m);
    ck_assert_str_eq(reason_of(s, "ship", "ord-1001", "c2", "{}", why, sizeof(why)),
                     "cannot ship an order that is created");
    ck_assert_str_eq(reason_of(s, "create", "ord-1001", "other-cmd", order_example, why, sizeof(why)),
                     "order ord-1001 already exists");

    m = command(s, "cancel", "ord-1001", "c3", "{\"reason\": \"changed my mind\"}", ORDERD_OK);
    check_event(m, "OrderCancelled", "ord-1001", "c3", 2, "cancelled");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(json_object_get(
                         th_host()->msg_body(m), "snapshot"), "cancellation"), "reason")), "changed my mind");
    store_event(m);
    th_msg_free(m);
    ck_assert_str_eq(reason_of(s, "pay", "ord-1001", "c4", "{}", why, sizeof(why)),
                     "cannot pay an order that is cancelled");
    th_stage_free(s);
}
END_TEST

START_TEST(test_deterministic_id)
{
    struct th_stage *s = th_stage_new("orders", ORDERD_TRANSFORM, "");
    orderd_msg *a, *b, *c;

    /* nothing stored: the same command twice gives the same event id */
    a = command(s, NULL, "ord-7", "cmd-same", order_example, ORDERD_OK);
    b = command(s, NULL, "ord-7", "cmd-same", order_example, ORDERD_OK);
    c = command(s, NULL, "ord-7", "cmd-other", order_example, ORDERD_OK);
    ck_assert_str_eq(th_host()->msg_id(a), th_host()->msg_id(b));
    ck_assert_str_ne(th_host()->msg_id(a), th_host()->msg_id(c));
    ck_assert_int_eq(strlen(th_host()->msg_id(a)), 36);
    ck_assert_int_eq(strspn(th_host()->msg_id(a) + 4, "0123456789abcdef"), 32);
    th_msg_free(a);
    th_msg_free(b);
    th_msg_free(c);
    th_stage_free(s);
}
END_TEST

START_TEST(test_redelivery_reemits)
{
    struct th_stage *s = th_stage_new("orders", ORDERD_TRANSFORM, "");
    orderd_msg *m;
    json_t *first;

    m = command(s, NULL, "ord-1", "cmd-1", order_example, ORDERD_OK);
    store_event(m);
    th_msg_free(m);
    m = command(s, "pay", "ord-1", "cmd-2", "{\"amount\": 1}", ORDERD_OK);
    first = json_deep_copy(th_host()->msg_body(m));
    store_event(m);
    th_msg_free(m);

    /* pay redelivered after its event was stored: the order is paid now,
     * which would forbid "pay", but the stored event comes back unchanged */
    m = command(s, "pay", "ord-1", "cmd-2", "{\"amount\": 1}", ORDERD_OK);
    ck_assert(json_equal(th_host()->msg_body(m), first));
    ck_assert_str_eq(th_host()->msg_prop(m, "version"), "2");
    ck_assert_str_eq(th_host()->msg_prop(m, "type"), "OrderPaid");
    ck_assert_str_eq(th_host()->msg_id(m), json_string_value(json_object_get(first, "id")));
    th_msg_free(m);

    /* create redelivered: same, not "already exists" */
    m = command(s, NULL, "ord-1", "cmd-1", order_example, ORDERD_OK);
    ck_assert_str_eq(th_host()->msg_prop(m, "version"), "1");
    ck_assert_str_eq(th_host()->msg_prop(m, "type"), "OrderCreated");
    th_msg_free(m);
    ck_assert_double_eq(th_metric(s, "redelivered"), 2);
    json_decref(first);
    th_stage_free(s);
}
END_TEST

START_TEST(test_custom_transitions)
{
    struct th_stage *s = th_stage_new("orders", ORDERD_TRANSFORM,
        "transitions = ("
        "  { command = \"create\"; to = \"new\"; event = \"OrderPlaced\"; },"
        "  { command = \"approve\"; from = [\"new\"]; to = \"approved\"; event = \"OrderApproved\"; field = \"approval\"; },"
        "  { command = \"close\"; from = [\"new\", \"approved\"]; to = \"closed\"; event = \"OrderClosed\"; }"
        ");");
    orderd_msg *m;
    char why[256];

    m = command(s, NULL, "o-1", "k1", order_example, ORDERD_OK);
    check_event(m, "OrderPlaced", "o-1", "k1", 1, "new");
    store_event(m);
    th_msg_free(m);
    ck_assert_str_eq(reason_of(s, "pay", "o-1", "k2", "{}", why, sizeof(why)),
                     "unknown command \"pay\" (valid: create, approve, close)");
    m = command(s, "approve", "o-1", "k3", "{\"by\": \"alice\"}", ORDERD_OK);
    check_event(m, "OrderApproved", "o-1", "k3", 2, "approved");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(json_object_get(
                         th_host()->msg_body(m), "snapshot"), "approval"), "by")), "alice");
    store_event(m);
    th_msg_free(m);
    ck_assert_str_eq(reason_of(s, "approve", "o-1", "k4", "{}", why, sizeof(why)),
                     "cannot approve an order that is approved");
    m = command(s, "close", "o-1", "k5", "{\"note\": \"x\"}", ORDERD_OK);
    check_event(m, "OrderClosed", "o-1", "k5", 3, "closed");
    /* no field: the data stays in the event only */
    ck_assert_ptr_null(json_object_get(json_object_get(th_host()->msg_body(m), "snapshot"), "note"));
    th_msg_free(m);
    th_stage_free(s);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("orders");
    TCase *tc = tcase_create("orders");
    SRunner *sr;
    int failed;

    tcase_add_checked_fixture(tc, NULL, th_cleanup);
    tcase_add_test(tc, test_lifecycle);
    tcase_add_test(tc, test_rejects);
    tcase_add_test(tc, test_event_text);
    tcase_add_test(tc, test_create_text_only);
    tcase_add_test(tc, test_deterministic_id);
    tcase_add_test(tc, test_redelivery_reemits);
    tcase_add_test(tc, test_custom_transitions);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    th_cleanup();
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
