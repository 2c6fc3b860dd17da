/* check_servicebus.c - the servicebus plugin: SAS tokens against Microsoft's
 * known-answer vectors, option checks, the orderd <-> AMQP message mapping,
 * and the real plugin .so against tests/peers/cbs_responder.py (CBS
 * put-token with SAS and Entra ID tokens, a refused token, publish
 * dispositions, peek-lock outcomes incl. dead-letter info, lock renewal,
 * redelivery with a grown delivery count).  The responder is started and
 * stopped by PID inside each test (th_peer_start). */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <proton/message.h>

#include "harness.h"
#include "../plugins/servicebus/sb.h"

#define WAIT_MS 15000
#define KEY     "test-key-0123456789"
#define AUD_Q   "orders"

#define mono_ms() th_mono_ms()
#define nap()     th_nap_ms(20)

/* ---- the responder ---------------------------------------------------- */

struct resp {
    struct th_peer peer;
    int            port;
    int            http_port;
    char           log[512];
};

static int
read_port(const char *path)
{
    FILE *f = fopen(path, "r");
    int port = 0;

    if (f != NULL) {
        if (fscanf(f, "%d", &port) != 1)
            port = 0;
        fclose(f);
    }
    return port;
}

static void
resp_start2(struct resp *r, int refuse, const char *renew_status)
{
    const char *src = getenv("TESTS_SRCDIR");
    char script[512], portfile[512], httpfile[512], aud[128];
    int rc;

    memset(r, 0, sizeof(*r));
    snprintf(script, sizeof(script), "%s/peers/cbs_responder.py", src ? src : ".");
    snprintf(r->log, sizeof(r->log), "%s/responder.ndjson", th_state_dir());
    snprintf(portfile, sizeof(portfile), "%s/responder.port", th_state_dir());
    snprintf(httpfile, sizeof(httpfile), "%s/responder.http", th_state_dir());
    snprintf(aud, sizeof(aud), "sb://127.0.0.1/%s", AUD_Q);
    unlink(httpfile);
    unlink(r->log);

    const char *const argv[] = { "/usr/bin/python3", script, "--port-file", portfile,
                                 "--http-port-file", httpfile, "--audience", aud, "--key", KEY,
                                 "--log", r->log, "--renew-status", renew_status,
                                 refuse ? "--refuse" : NULL, NULL };
    rc = th_peer_start(&r->peer, argv, NULL, portfile, WAIT_MS);
    ck_assert_msg(rc == 0, "cbs_responder.py did not start: %s", strerror(-rc));
    r->port = r->peer.port;
    /* written before the AMQP listener starts, so it is there by now */
    r->http_port = read_port(httpfile);
    ck_assert_int_ne(r->http_port, 0);
}

static void
resp_start(struct resp *r, int refuse)
{
    resp_start2(r, refuse, "0");
}

static void
resp_stop(struct resp *r)
{
    th_peer_stop(&r->peer);
}

/* Lines of the responder's log that contain every one of the needles. */
static int
log_count(const struct resp *r, const char *n1, const char *n2, const char *n3)
{
    FILE *f = fopen(r->log, "r");
    char line[8192];
    int n = 0;

    if (f == NULL)
        return 0;
    while (fgets(line, sizeof(line), f) != NULL)
        if (strstr(line, n1) && (!n2 || strstr(line, n2)) && (!n3 || strstr(line, n3)))
            n++;
    fclose(f);
    return n;
}

static int
wait_log(const struct resp *r, int want, const char *n1, const char *n2, const char *n3)
{
    int64_t deadline = mono_ms() + WAIT_MS;

    while (log_count(r, n1, n2, n3) < want) {
        if (mono_ms() > deadline)
            return 0;
        nap();
    }
    return 1;
}

static int
wait_metric(struct th_stage *s, const char *name, double want)
{
    int64_t deadline = mono_ms() + WAIT_MS;

    while (th_metric(s, name) < want) {
        if (mono_ms() > deadline)
            return 0;
        nap();
    }
    return 1;
}

static char *
conf_text(const struct resp *r, const char *extra)
{
    char *s;

    ck_assert_int_ge(asprintf(&s, "url = \"amqp://127.0.0.1:%d\"; entity = \"%s\"; sas_key = \"%s\"; %s",
                              r->port, AUD_Q, KEY, extra), 0);
    return s;
}

/* ---- pure parts ----------------------------------------------------------- */

START_TEST(test_sas_vectors)
{
    const char *src = getenv("TESTS_SRCDIR");
    char path[512];
    json_error_t jerr;
    json_t *doc, *vecs, *v;
    size_t i;

    snprintf(path, sizeof(path), "%s/servicebus-vectors.json", src ? src : ".");
    doc = json_load_file(path, 0, &jerr);
    ck_assert_msg(doc != NULL, "%s: %s", path, jerr.text);
    vecs = json_object_get(doc, "vectors");
    ck_assert_int_ge(json_array_size(vecs), 1);
    json_array_foreach(vecs, i, v) {
        json_t *in = json_object_get(v, "inputs"), *exp = json_object_get(v, "expected");
        char *tok = sb_sas_token(json_string_value(json_object_get(in, "audience")),
                                 json_string_value(json_object_get(in, "keyName")),
                                 json_string_value(json_object_get(in, "key")),
                                 json_integer_value(json_object_get(in, "expiry_unix")));
        char *other;

        ck_assert_ptr_nonnull(tok);
        ck_assert_str_eq(tok, json_string_value(json_object_get(exp, "token")));
        /* the signature covers the expiry: another expiry signs differently */
        other = sb_sas_token(json_string_value(json_object_get(in, "audience")),
                             json_string_value(json_object_get(in, "keyName")),
                             json_string_value(json_object_get(in, "key")),
                             json_integer_value(json_object_get(in, "expiry_unix")) + 1);
        ck_assert_ptr_nonnull(strstr(other, "&se="));
        ck_assert_ptr_null(strstr(other, json_string_value(json_object_get(exp, "sig"))));
        free(other);
        free(tok);
    }
    json_decref(doc);
}
END_TEST

START_TEST(test_urlencode)
{
    char *s = sb_urlencode("sb://a.b/q 1?x=y&z~_-.");

    ck_assert_str_eq(s, "sb%3A%2F%2Fa.b%2Fq%201%3Fx%3Dy%26z~_-.");
    free(s);
}
END_TEST

/* create() errors are logged, not returned: the harness only says create()
 * failed, so each bad variant differs from an accepted one in one key. */
static void
expect_conf_error(orderd_kind kind, const char *text, const char *needle)
{
    char err[1024] = "";
    struct th_stage *s = th_stage_try("servicebus", kind, text, err, sizeof(err));

    ck_assert_msg(s == NULL, "config accepted: %s", text);
    ck_assert_msg(strstr(err, needle) != NULL, "error \"%s\" lacks \"%s\"", err, needle);
}

static void
expect_conf_ok(orderd_kind kind, const char *text)
{
    char err[1024] = "";
    struct th_stage *s = th_stage_try("servicebus", kind, text, err, sizeof(err));

    ck_assert_msg(s != NULL, "config refused: %s: %s", text, err);
    th_stage_free(s);
}

START_TEST(test_options)
{
    /* schema errors name the key */
    expect_conf_error(ORDERD_INPUT, "url = \"amqp://x\"; entity = \"q\"; auth = \"anonymous\"; "
                      "abandon_outcome = \"dropped\";", "abandon_outcome");
    expect_conf_error(ORDERD_PUBLISH, "url = \"amqp://x\"; entity = \"q\"; auth = \"anonymous\"; prefetch = 3;",
                      "prefetch");
    expect_conf_error(ORDERD_INPUT, "entity = \"q\"; auth = \"anonymous\";", "url");
    /* create() checks */
    expect_conf_ok(ORDERD_INPUT, "url = \"amqps://ns.servicebus.windows.net\"; entity = \"q\"; sas_key = \"k\";");
    expect_conf_error(ORDERD_INPUT, "url = \"https://ns.servicebus.windows.net\"; entity = \"q\"; sas_key = \"k\";", "create");
    expect_conf_error(ORDERD_INPUT, "url = \"amqps://ns.servicebus.windows.net/q\"; entity = \"q\"; sas_key = \"k\";", "create");
    expect_conf_error(ORDERD_INPUT, "url = \"amqps://ns.servicebus.windows.net:x1\"; entity = \"q\"; sas_key = \"k\";", "create");
    expect_conf_ok(ORDERD_INPUT, "url = \"amqps://ns.servicebus.windows.net:5671\"; entity = \"q\"; sas_key = \"k\";");
    expect_conf_error(ORDERD_INPUT, "url = \"amqps://ns.servicebus.windows.net\"; entity = \"q\";", "create");
    expect_conf_error(ORDERD_INPUT, "url = \"amqps://ns.servicebus.windows.net\"; entity = \"q\"; sas_key = \"k\"; "
                      "prefetch = 0;", "create");
    expect_conf_error(ORDERD_INPUT, "url = \"amqps://ns.servicebus.windows.net\"; entity = \"q\"; sas_key = \"k\"; "
                      "token_lifetime = \"10s\";", "create");
    expect_conf_ok(ORDERD_INPUT, "url = \"amqp://127.0.0.1:1\"; entity = \"/amq/queue/q\"; auth = \"plain\"; "
                   "username = \"u\"; password = \"p\"; abandon_outcome = \"released\"; lock_renewal = \"0\";");
    expect_conf_error(ORDERD_INPUT, "url = \"amqp://127.0.0.1:1\"; entity = \"/amq/queue/q\"; auth = \"plain\"; "
                      "username = \"u\";", "create");
    expect_conf_ok(ORDERD_INPUT, "url = \"amqps://ns.servicebus.windows.net\"; entity = \"t\"; "
                   "subscription = \"s1\"; auth = \"entra\";");
}
END_TEST

START_TEST(test_mapping)
{
    const orderd_host *h = th_host();
    orderd_msg *m = th_msg("{\"id\":\"o-1\",\"total\":12.5,\"items\":[1,2]}"), *back;
    pn_message_t *out = pn_message(), *in = pn_message();
    char *buf = NULL, err[256];
    size_t len = 0;
    char *a, *b;

    h->msg_set_id(m, "order-42");
    h->msg_set_prop(m, "type", "OrderCreated");
    h->msg_set_prop(m, "tenant", "contoso");
    h->msg_set_partition_key(m, "customer-7");
    ck_assert_int_eq(sb_msg_to_amqp(h, m, 1, out), 0);
    ck_assert_str_eq(pn_message_get_group_id(out), "customer-7");
    ck_assert_int_eq(pn_message_get_id(out).type, PN_STRING);
    ck_assert_int_eq(sb_encode(out, &buf, &len), 0);
    ck_assert_int_eq(pn_message_decode(in, buf, len), 0);
    back = sb_msg_from_amqp(h, NULL, in, err, sizeof(err));
    ck_assert_msg(back != NULL, "%s", err);
    ck_assert_str_eq(h->msg_id(back), "order-42");
    ck_assert_str_eq(h->msg_prop(back, "type"), "OrderCreated");
    ck_assert_str_eq(h->msg_prop(back, "tenant"), "contoso");
    ck_assert_str_eq(h->msg_partition_key(back), "customer-7");
    ck_assert_str_eq(h->msg_content_type(back), "application/json");
    ck_assert_uint_eq(h->msg_delivery_count(back), 1);
    a = json_dumps(h->msg_body(m), JSON_SORT_KEYS);
    b = json_dumps(h->msg_body(back), JSON_SORT_KEYS);
    ck_assert_str_eq(a, b);
    free(a);
    free(b);
    h->msg_free(back);
    free(buf);

    /* without ordering there is no session id */
    pn_message_clear(out);
    ck_assert_int_eq(sb_msg_to_amqp(h, m, 0, out), 0);
    ck_assert_ptr_null(pn_message_get_group_id(out));

    /* a body that is not JSON cannot enter a pipeline */
    pn_message_clear(in);
    pn_message_set_delivery_count(in, 3);
    pn_data_put_binary(pn_message_body(in), pn_bytes(5, "oops{"));
    ck_assert_ptr_null(sb_msg_from_amqp(h, NULL, in, err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "JSON"));
    /* a string body (amqp-value) is accepted, delivery count is header + 1 */
    pn_message_clear(in);
    pn_message_set_delivery_count(in, 3);
    pn_data_put_string(pn_message_body(in), pn_bytes(7, "{\"a\":1}"));
    back = sb_msg_from_amqp(h, NULL, in, err, sizeof(err));
    ck_assert_msg(back != NULL, "%s", err);
    ck_assert_uint_eq(h->msg_delivery_count(back), 4);
    h->msg_free(back);
    pn_message_free(in);
    pn_message_free(out);
    th_msg_free(m);
}
END_TEST

/* ---- against cbs_responder.py ------------------------------------------- */

static orderd_msg *sent[16];
static size_t nsent;

static void
publish_n(struct th_stage *pub, int n, const char *prefix)
{
    int i;

    for (i = 0; i < n; i++) {
        char body[128], id[64];
        orderd_msg *m;

        snprintf(id, sizeof(id), "%s%d", prefix, i + 1);
        snprintf(body, sizeof(body), "{\"id\":\"%s\",\"n\":%d}", id, i + 1);
        m = th_msg(body);
        th_host()->msg_set_id(m, id);
        th_host()->msg_set_prop(m, "type", "OrderCreated");
        ck_assert_uint_lt(nsent, sizeof(sent) / sizeof(sent[0]));
        sent[nsent++] = m;
        ck_assert_int_eq(th_process(pub, m), ORDERD_PENDING);
    }
}

/* PENDING messages stay the test's: freed once settled (the harness
 * records outcomes, not the messages). */
static void
free_sent(void)
{
    while (nsent > 0)
        th_msg_free(sent[--nsent]);
}

START_TEST(test_cbs_publish_and_peek_lock)
{
    struct resp r;
    struct th_stage *pub, *in;
    char *ct;
    size_t i;
    orderd_msg *m[4];

    resp_start(&r, 0);
    ct = conf_text(&r, "");
    pub = th_stage_new("servicebus", ORDERD_PUBLISH, ct);
    free(ct);
    publish_n(pub, 3, "o");
    ck_assert(th_wait_settled(pub, 3, WAIT_MS));
    for (i = 0; i < 3; i++)
        ck_assert_int_eq(th_settled_outcome(pub, i, NULL, NULL), ORDERD_OK);
    /* settled OK only after the broker had each one, with id and properties */
    ck_assert_int_eq(log_count(&r, "\"put-token\", \"status\": 200", "servicebus.windows.net:sastoken",
                               "sb://127.0.0.1/orders"), 1);
    ck_assert_int_eq(log_count(&r, "\"event\": \"message\"", "\"properties\": {\"type\": \"OrderCreated\"}",
                               NULL), 3);
    ck_assert_int_eq(log_count(&r, "\"event\": \"message\"", "\"id\": \"o2\"", NULL), 1);
    ck_assert_int_eq(th_metric(pub, "servicebus_sent"), 3);

    ct = conf_text(&r, "lock_renewal = \"200ms\"; prefetch = 5;");
    in = th_stage_new("servicebus", ORDERD_INPUT, ct);
    free(ct);
    ck_assert_int_eq(th_start(in), 0);
    ck_assert(th_wait_submitted(in, 3, WAIT_MS));
    for (i = 0; i < 3; i++) {
        m[i] = th_take(in, i);
        ck_assert_uint_eq(th_host()->msg_delivery_count(m[i]), 1);
        ck_assert_str_eq(th_host()->msg_prop(m[i], "type"), "OrderCreated");
    }
    /* held in flight: their locks are renewed through $management */
    ck_assert(wait_log(&r, 1, "\"renew-lock\"", "\"tokens\": 3", "\"status\": 200"));
    ck_assert(wait_metric(in, "servicebus_lock_renewals", 3));
    th_ack(in, m[0], ORDERD_OK, NULL);
    th_ack(in, m[1], ORDERD_RETRY, "backend down");
    th_ack(in, m[2], ORDERD_REJECT, "total is negative");
    ck_assert(wait_log(&r, 1, "\"disposition\"", "\"accepted\"", NULL));
    ck_assert(wait_log(&r, 1, "\"disposition\"", "\"modified\", \"failed\": true", NULL));
    ck_assert(wait_log(&r, 1, "\"disposition\"", "\"condition\": \"com.microsoft:dead-letter\"",
                       "\"DeadLetterReason\": \"total is negative\""));
    ck_assert_int_eq(log_count(&r, "\"rejected\"", "DeadLetterErrorDescription", "total is negative"), 1);
    /* the abandoned one comes back, its delivery count grown */
    ck_assert(th_wait_submitted(in, 4, WAIT_MS));
    m[3] = th_take(in, 3);
    ck_assert_str_eq(th_host()->msg_id(m[3]), th_host()->msg_id(m[1]));
    ck_assert_uint_eq(th_host()->msg_delivery_count(m[3]), 2);
    th_ack(in, m[3], ORDERD_OK, NULL);
    ck_assert(wait_log(&r, 2, "\"disposition\"", "\"accepted\"", NULL));
    ck_assert(wait_metric(in, "servicebus_completed", 2));
    ck_assert_int_eq(th_metric(in, "servicebus_deadlettered"), 1);
    ck_assert_int_eq(th_metric(in, "servicebus_abandoned"), 1);
    for (i = 0; i < 4; i++)
        th_msg_free(m[i]);
    th_stage_free(in);
    th_stage_free(pub);
    free_sent();
    resp_stop(&r);
}
END_TEST

START_TEST(test_cbs_refused)
{
    struct resp r;
    struct th_stage *pub;
    const char *reason = NULL;
    char *ct;

    resp_start(&r, 1);
    ct = conf_text(&r, "send_timeout = \"1500ms\"; reconnect_delay = \"200ms\";");
    pub = th_stage_new("servicebus", ORDERD_PUBLISH, ct);
    free(ct);
    publish_n(pub, 1, "x");
    ck_assert(th_wait_settled(pub, 1, WAIT_MS));
    ck_assert_int_eq(th_settled_outcome(pub, 0, &reason, NULL), ORDERD_RETRY);
    ck_assert_ptr_nonnull(reason);
    ck_assert(wait_log(&r, 1, "\"put-token\"", "\"status\": 401", NULL));
    ck_assert(wait_metric(pub, "servicebus_auth_failures", 1));
    /* never got to the queue */
    ck_assert_int_eq(log_count(&r, "\"event\": \"message\"", NULL, NULL), 0);
    ck_assert_int_eq(log_count(&r, "\"attach\"", "\"address\": \"orders\"", NULL), 0);
    th_stage_free(pub);
    free_sent();
    resp_stop(&r);
}
END_TEST

START_TEST(test_wrong_key_refused)
{
    struct resp r;
    struct th_stage *pub;
    char ct[512];

    resp_start(&r, 0);
    snprintf(ct, sizeof(ct), "url = \"amqp://127.0.0.1:%d\"; entity = \"orders\"; sas_key = \"not-the-key\"; "
             "send_timeout = \"1s\";", r.port);
    pub = th_stage_new("servicebus", ORDERD_PUBLISH, ct);
    publish_n(pub, 1, "w");
    ck_assert(th_wait_settled(pub, 1, WAIT_MS));
    ck_assert_int_eq(th_settled_outcome(pub, 0, NULL, NULL), ORDERD_RETRY);
    ck_assert(wait_log(&r, 1, "\"put-token\"", "\"status\": 401", "bad signature"));
    th_stage_free(pub);
    free_sent();
    resp_stop(&r);
}
END_TEST

START_TEST(test_entra_token)
{
    struct resp r;
    struct th_stage *pub, *in;
    char ct[1024];
    orderd_msg *m;

    resp_start(&r, 0);
    snprintf(ct, sizeof(ct), "url = \"amqp://127.0.0.1:%d\"; entity = \"orders\"; auth = \"entra\"; "
             "entra_endpoint = \"http://127.0.0.1:%d/metadata/identity/oauth2/token?api-version=2018-02-01\";",
             r.port, r.http_port);
    pub = th_stage_new("servicebus", ORDERD_PUBLISH, ct);
    in = th_stage_new("servicebus", ORDERD_INPUT, ct);
    publish_n(pub, 1, "e");
    ck_assert(th_wait_settled(pub, 1, WAIT_MS));
    ck_assert_int_eq(th_settled_outcome(pub, 0, NULL, NULL), ORDERD_OK);
    ck_assert_int_eq(th_start(in), 0);
    ck_assert(th_wait_submitted(in, 1, WAIT_MS));
    m = th_take(in, 0);
    ck_assert_str_eq(th_host()->msg_id(m), "e1");
    th_ack(in, m, ORDERD_OK, NULL);
    ck_assert(wait_log(&r, 1, "\"disposition\"", "\"accepted\"", NULL));
    ck_assert_int_ge(log_count(&r, "\"token-request\"", "resource=https%3A%2F%2Fservicebus.azure.net%2F",
                               "\"ok\": true"), 2);
    ck_assert_int_eq(log_count(&r, "\"put-token\", \"status\": 200", "\"type\": \"jwt\"", NULL), 2);
    th_msg_free(m);
    th_stage_free(in);
    th_stage_free(pub);
    free_sent();
    resp_stop(&r);
}
END_TEST

START_TEST(test_lock_lost)
{
    struct resp r;
    struct th_stage *pub, *in;
    orderd_msg *m;
    char *ct;

    resp_start2(&r, 0, "410");
    ct = conf_text(&r, "");
    pub = th_stage_new("servicebus", ORDERD_PUBLISH, ct);
    free(ct);
    publish_n(pub, 1, "l");
    ck_assert(th_wait_settled(pub, 1, WAIT_MS));
    ct = conf_text(&r, "lock_renewal = \"100ms\";");
    in = th_stage_new("servicebus", ORDERD_INPUT, ct);
    free(ct);
    ck_assert_int_eq(th_start(in), 0);
    ck_assert(th_wait_submitted(in, 1, WAIT_MS));
    m = th_take(in, 0);
    /* the broker says the lock is gone: counted, logged, renewal stops */
    ck_assert(wait_metric(in, "servicebus_locks_lost", 1));
    ck_assert(wait_log(&r, 1, "\"renew-lock\"", "\"status\": 410", NULL));
    ck_assert_int_eq(log_count(&r, "\"renew-lock\"", NULL, NULL), 1);
    ck_assert_int_eq(th_metric(in, "servicebus_lock_renewals"), 0);
    /* the late ack is still sent; the broker decides what it is worth */
    th_ack(in, m, ORDERD_OK, NULL);
    ck_assert(wait_log(&r, 1, "\"disposition\"", "\"accepted\"", NULL));
    th_msg_free(m);
    th_stage_free(in);
    th_stage_free(pub);
    free_sent();
    resp_stop(&r);
}
END_TEST

static Suite *
servicebus_suite(void)
{
    Suite *s = suite_create("servicebus");
    TCase *tc = tcase_create("unit");

    tcase_add_test(tc, test_sas_vectors);
    tcase_add_test(tc, test_urlencode);
    tcase_add_test(tc, test_options);
    tcase_add_test(tc, test_mapping);
    suite_add_tcase(s, tc);
    tc = tcase_create("cbs");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_cbs_publish_and_peek_lock);
    tcase_add_test(tc, test_cbs_refused);
    tcase_add_test(tc, test_wrong_key_refused);
    tcase_add_test(tc, test_entra_token);
    tcase_add_test(tc, test_lock_lost);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr;
    int failed;

    sr = srunner_create(servicebus_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    th_cleanup();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
