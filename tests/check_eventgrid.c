/* check_eventgrid.c - the eventgrid publish plugin.
 *
 * SAS tokens are checked against Microsoft's SDK twice over: known-answer
 * vectors it produced (tests/eventgrid-vectors.json) and tokens it computes
 * now for other inputs (tests/peers/eventgrid-sas.js).  Publishing is
 * checked against tests/peers/eventgrid-receiver.js, an HTTPS endpoint whose
 * certificate comes from a throw-away CA made here with openssl and which
 * validates every payload with @azure/eventgrid's EventGridDeserializer and
 * every SAS token with its generateSharedAccessSignature.  Receivers are
 * killed by PID after each test (and by PR_SET_PDEATHSIG if a test dies);
 * all files live under one temp root removed by main(). */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "harness.h"

/* The plugin's SAS code is pure: test it directly, byte for byte. */
#include "eventgrid.h"
#include "eg_sas.c"

#define WAIT_MS 45000   /* receiver start-up; generous for loaded build machines */
#define KEY_B64 "ZXZlbnRncmlkLXBlZXItdGVzdC1rZXktMDEyMzQ1Njc4OQ=="

static char root[512];          /* temp root: certs, logs */
static char node_path[1024];    /* NODE_PATH for the SDK tools */

struct rcv {
    struct th_peer peer;
    int            port;
    char           log[512];
};

static struct rcv *rcvs[4];
static size_t nrcvs;

#define mono_ms() th_mono_ms()
#define nap()     th_nap_ms(20)

static void
cleanup_all(void)
{
    size_t i;

    for (i = 0; i < nrcvs; i++) {
        th_peer_stop(&rcvs[i]->peer);
        free(rcvs[i]);
    }
    nrcvs = 0;
    th_cleanup();
}


static const char *
srcdir(void)
{
    const char *s = getenv("TESTS_SRCDIR");

    return s != NULL ? s : ".";
}

/* Start a receiver; extra is NULL-terminated "--opt", "value" pairs. */
static struct rcv *
rcv_start(const char *tag, const char *const *extra)
{
    struct rcv *r = calloc(1, sizeof(*r));
    char script[1024], portfile[600], cert[600], key[600];
    const char *argv[32];
    static char node_env[sizeof(node_path) + 16];
    const char *const env[] = { node_env, NULL };
    size_t n = 0;
    int rc;

    ck_assert_ptr_nonnull(r);
    ck_assert_uint_lt(nrcvs, sizeof(rcvs) / sizeof(rcvs[0]));
    snprintf(script, sizeof(script), "%s/peers/eventgrid-receiver.js", srcdir());
    snprintf(r->log, sizeof(r->log), "%s/rcv-%s.ndjson", th_state_dir(), tag);
    snprintf(portfile, sizeof(portfile), "%s/rcv-%s.port", th_state_dir(), tag);
    snprintf(cert, sizeof(cert), "%s/server.crt", root);
    snprintf(key, sizeof(key), "%s/server.key", root);
    argv[n++] = "node";
    argv[n++] = script;
    argv[n++] = "--port-file"; argv[n++] = portfile;
    argv[n++] = "--log"; argv[n++] = r->log;
    argv[n++] = "--cert"; argv[n++] = cert;
    argv[n++] = "--key"; argv[n++] = key;
    argv[n++] = "--eg-key"; argv[n++] = KEY_B64;
    while (extra != NULL && *extra != NULL && n < 30)
        argv[n++] = *extra++;
    argv[n] = NULL;
    snprintf(node_env, sizeof(node_env), "NODE_PATH=%s", node_path);
    rcvs[nrcvs++] = r;

    rc = th_peer_start(&r->peer, argv, env, portfile, WAIT_MS);
    ck_assert_msg(rc == 0, "receiver %s did not start: %s", tag, strerror(-rc));
    r->port = r->peer.port;
    return r;
}

static json_t *
rcv_requests(struct rcv *r)
{
    json_t *arr = json_array();
    FILE *f = fopen(r->log, "r");
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;

    if (f == NULL)
        return arr;
    while ((n = getline(&line, &cap, f)) > 0) {
        json_t *j;

        if (line[n - 1] != '\n')
            break;
        j = json_loads(line, 0, NULL);
        ck_assert_msg(j != NULL, "bad log line: %s", line);
        json_array_append_new(arr, j);
    }
    free(line);
    fclose(f);
    return arr;
}

static const char *
jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static long
jint(json_t *o, const char *k)
{
    return (long) json_integer_value(json_object_get(o, k));
}

/* Stage config for a receiver: common keys + extra. */
static struct th_stage *
stage(struct rcv *r, const char *extra)
{
    char conf[4096];

    snprintf(conf, sizeof(conf),
             "endpoint = \"https://127.0.0.1:%d/api/events\"; ca_file = \"%s/ca.crt\"; "
             "key = \"" KEY_B64 "\"; %s", r->port, root, extra);
    return th_stage_new("eventgrid", ORDERD_PUBLISH, conf);
}

/* An order event as the orders transform emits it. */
static orderd_msg *
order_event(const char *id, const char *type, const char *order)
{
    const orderd_host *h = th_host();
    char body[512];
    orderd_msg *m;

    snprintf(body, sizeof(body), "{\"id\":\"%s\",\"type\":\"%s\",\"orderId\":\"%s\",\"version\":1,"
             "\"data\":{\"amount\":39.98,\"note\":\"caf\\u00e9\"}}", id, type, order);
    m = th_msg(body);
    ck_assert_int_eq(h->msg_set_id(m, id), 0);
    ck_assert_int_eq(h->msg_set_prop(m, "type", type), 0);
    ck_assert_int_eq(h->msg_set_prop(m, "order_id", order), 0);
    h->msg_set_enqueued_ms(m, 1700000000123LL);
    return m;
}

/* A message whose body has a string of `size` bytes. */
static orderd_msg *
big_msg(const char *id, size_t size)
{
    char *s = malloc(size + 1);
    json_t *body;
    orderd_msg *m;

    ck_assert_ptr_nonnull(s);
    memset(s, 'x', size);
    s[size] = '\0';
    body = json_pack("{s:s, s:s}", "type", "Big", "blob", s);
    free(s);
    ck_assert_ptr_nonnull(body);
    m = th_host()->msg_new(NULL, body);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(th_host()->msg_set_id(m, id), 0);
    return m;
}

static time_t
iso_utc(const char *s)
{
    struct tm tm;

    memset(&tm, 0, sizeof(tm));
    ck_assert_ptr_nonnull(strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm));
    return timegm(&tm);
}

/* ---- SAS ---- */

START_TEST(test_sas_vectors)
{
    char path[1024], e[64];
    json_t *doc, *v;
    size_t i, seen = 0;

    snprintf(path, sizeof(path), "%s/eventgrid-vectors.json", srcdir());
    doc = json_load_file(path, 0, NULL);
    ck_assert_ptr_nonnull(doc);
    json_array_foreach(json_object_get(doc, "vectors"), i, v) {
        json_t *in = json_object_get(v, "inputs"), *ex = json_object_get(v, "expected");
        time_t t = iso_utc(jstr(in, "expiresOnUtc"));
        char *tok = eg_sas_token(jstr(in, "endpoint"), "2018-01-01", jstr(in, "key"), t);

        ck_assert_int_eq(eg_sas_expiry(t, e, sizeof(e)), 0);
        ck_assert_str_eq(e, jstr(ex, "e"));
        ck_assert_ptr_nonnull(tok);
        ck_assert_str_eq(tok, jstr(ex, "token"));
        free(tok);
        seen++;
    }
    ck_assert_uint_ge(seen, 2);
    json_decref(doc);
}
END_TEST

START_TEST(test_sas_matches_sdk)
{
    /* Edge cases of the en-US clock (midnight, noon, 1 and 2 digit
     * fields), escapes in the endpoint, other keys and API versions. */
    static const struct { const char *ep, *key, *exp, *api; } in[] = {
        { "https://t1.westeurope-1.eventgrid.azure.net/api/events", KEY_B64, "2030-01-01T00:00:05Z", NULL },
        { "https://t1.westeurope-1.eventgrid.azure.net/api/events", KEY_B64, "2030-01-01T12:30:00Z", NULL },
        { "https://t1.westeurope-1.eventgrid.azure.net/api/events", KEY_B64, "2031-10-09T23:59:59Z", NULL },
        { "https://t1.westeurope-1.eventgrid.azure.net/api/events", KEY_B64, "2031-12-25T11:07:08Z", "2020-06-01" },
        { "https://my-topic.eastus-1.eventgrid.azure.net/api/events",
          "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3OA==",
          "2040-02-29T01:02:03Z", NULL },
        { "https://127.0.0.1:8443/api/events", "AAEC", "2099-07-04T13:00:00Z", NULL },
    };
    char inputs[600], cmd[2048], line[2048];
    FILE *f, *p;
    size_t i;

    snprintf(inputs, sizeof(inputs), "%s/sas-inputs.txt", th_state_dir());
    f = fopen(inputs, "w");
    ck_assert_ptr_nonnull(f);
    for (i = 0; i < sizeof(in) / sizeof(in[0]); i++)
        fprintf(f, "%s %s %s %s\n", in[i].ep, in[i].key, in[i].exp, in[i].api ? in[i].api : "");
    fclose(f);
    snprintf(cmd, sizeof(cmd), "NODE_PATH='%s' node '%s/peers/eventgrid-sas.js' < '%s'",
             node_path, srcdir(), inputs);
    p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    for (i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        char *tok;

        ck_assert_ptr_nonnull(fgets(line, sizeof(line), p));
        line[strcspn(line, "\n")] = '\0';
        tok = eg_sas_token(in[i].ep, in[i].api ? in[i].api : "2018-01-01", in[i].key,
                           iso_utc(in[i].exp));
        ck_assert_ptr_nonnull(tok);
        ck_assert_msg(strcmp(tok, line) == 0, "input %zu:\n ours %s\n sdk  %s", i, tok, line);
        free(tok);
    }
    ck_assert_int_eq(pclose(p), 0);
    ck_assert_ptr_null(eg_sas_token("https://x/api/events", "2018-01-01", "not base64!", 0));
}
END_TEST

/* ---- publishing ---- */

START_TEST(test_cloudevents_batch)
{
    struct rcv *r = rcv_start("ce", NULL);
    struct th_stage *s = stage(r, "");
    orderd_msg *m[5];
    orderd_result res[5];
    json_t *reqs, *req, *body, *ev;
    char id[16], order[16], want[64];
    size_t i;

    for (i = 0; i < 5; i++) {
        snprintf(id, sizeof(id), "evt-%zu", i);
        snprintf(order, sizeof(order), "ord-%zu", i);
        m[i] = order_event(id, i % 2 ? "OrderPaid" : "OrderPlaced", order);
    }
    ck_assert_int_eq(th_process_batch(s, m, 5, res), 0);
    for (i = 0; i < 5; i++)
        ck_assert_int_eq(res[i].outcome, ORDERD_OK);

    reqs = rcv_requests(r);
    ck_assert_uint_eq(json_array_size(reqs), 1);   /* one request per batch */
    req = json_array_get(reqs, 0);
    ck_assert_str_eq(jstr(req, "verdict"), "accepted");
    ck_assert_str_eq(jstr(req, "schema"), "cloudevents");
    ck_assert_str_eq(jstr(req, "auth"), "aeg-sas-key");
    ck_assert_str_eq(jstr(req, "query"), "?api-version=2018-01-01");
    ck_assert_ptr_nonnull(strstr(jstr(req, "content_type"), "application/cloudevents-batch+json"));
    ck_assert_int_eq(jint(req, "count"), 5);
    body = json_loads(jstr(req, "body"), 0, NULL);
    ck_assert_ptr_nonnull(body);
    for (i = 0; i < 5; i++) {
        ev = json_array_get(body, i);
        snprintf(want, sizeof(want), "evt-%zu", i);
        ck_assert_str_eq(jstr(ev, "id"), want);
        ck_assert_str_eq(jstr(ev, "specversion"), "1.0");
        ck_assert_str_eq(jstr(ev, "type"), i % 2 ? "OrderPaid" : "OrderPlaced");
        snprintf(want, sizeof(want), "orders/ord-%zu", i);
        ck_assert_str_eq(jstr(ev, "subject"), want);
        ck_assert_str_eq(jstr(ev, "source"), "/orderd");
        ck_assert_str_eq(jstr(ev, "time"), "2023-11-14T22:13:20.123Z");
        ck_assert_str_eq(jstr(ev, "datacontenttype"), "application/json");
        ck_assert(json_equal(json_object_get(ev, "data"), th_host()->msg_body(m[i])));
        th_msg_free(m[i]);
    }
    ck_assert_double_eq(th_metric(s, "eventgrid_events_published"), 5);
    json_decref(body);
    json_decref(reqs);
    th_stage_free(s);
}
END_TEST

START_TEST(test_eventgrid_schema_sas_and_mapping)
{
    struct rcv *r = rcv_start("eg", NULL);
    struct th_stage *s = stage(r, "schema = \"eventgrid\"; auth = \"sas\"; sas_ttl = \"10m\"; "
                                  "event_type = \"Contoso.{body:type}\"; "
                                  "subject = \"orders/{order_id}/v{body:version}\"; data_version = \"2.0\";");
    orderd_msg *m = order_event("evt-9", "OrderShipped", "ord-9");
    json_t *reqs, *b0, *b1, *ev;
    const char *tok;
    time_t now = time(NULL);

    /* The same message twice (a redelivery): the same event, same id. */
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    th_msg_free(m);
    reqs = rcv_requests(r);
    ck_assert_uint_eq(json_array_size(reqs), 2);
    ck_assert_str_eq(jstr(json_array_get(reqs, 0), "verdict"), "accepted");
    ck_assert_str_eq(jstr(json_array_get(reqs, 0), "schema"), "eventgrid");
    /* "aeg-sas-token" means the SDK's generateSharedAccessSignature
     * reproduced our token for its r and e, and it had not expired. */
    ck_assert_str_eq(jstr(json_array_get(reqs, 0), "auth"), "aeg-sas-token");
    ck_assert_ptr_nonnull(strstr(jstr(json_array_get(reqs, 0), "content_type"), "application/json"));
    tok = jstr(json_array_get(reqs, 0), "sas_token");
    ck_assert_ptr_nonnull(tok);
    ck_assert(strncmp(tok, "r=https%3A%2F%2F127.0.0.1%3A", 28) == 0);
    ck_assert_ptr_nonnull(strstr(tok, "%2Fapi%2Fevents%3FapiVersion%3D2018-01-01&e="));
    /* Expiry sas_ttl from when it was signed (within this test's run). */
    {
        const char *e0 = strstr(tok, "&e="), *e1 = e0 ? strstr(e0 + 3, "&s=") : NULL;
        char e[64], *o = e;
        struct tm tm;
        time_t exp;

        ck_assert(e0 != NULL && e1 != NULL && (size_t) (e1 - e0) < sizeof(e));
        for (e0 += 3; e0 < e1; e0++) {       /* URL-decode */
            unsigned int c;

            if (*e0 == '%' && sscanf(e0 + 1, "%2x", &c) == 1) {
                *o++ = (char) c;
                e0 += 2;
            } else {
                *o++ = *e0;
            }
        }
        *o = '\0';
        memset(&tm, 0, sizeof(tm));
        ck_assert_ptr_nonnull(strptime(e, "%m/%d/%Y %I:%M:%S %p", &tm));
        exp = timegm(&tm);
        ck_assert_msg(exp >= now + 600 && exp <= time(NULL) + 600, "expiry %s", e);
    }
    /* The token is reused, not re-signed per request. */
    ck_assert_str_eq(tok, jstr(json_array_get(reqs, 1), "sas_token"));

    b0 = json_loads(jstr(json_array_get(reqs, 0), "body"), 0, NULL);
    b1 = json_loads(jstr(json_array_get(reqs, 1), "body"), 0, NULL);
    ck_assert_ptr_nonnull(b0);
    ck_assert(json_equal(b0, b1));
    ev = json_array_get(b0, 0);
    ck_assert_str_eq(jstr(ev, "id"), "evt-9");
    ck_assert_str_eq(jstr(ev, "eventType"), "Contoso.OrderShipped");
    ck_assert_str_eq(jstr(ev, "subject"), "orders/ord-9/v1");
    ck_assert_str_eq(jstr(ev, "dataVersion"), "2.0");
    ck_assert_str_eq(jstr(ev, "eventTime"), "2023-11-14T22:13:20.123Z");
    ck_assert_ptr_null(json_object_get(ev, "topic"));
    ck_assert_str_eq(jstr(json_object_get(ev, "data"), "orderId"), "ord-9");
    json_decref(b0);
    json_decref(b1);
    json_decref(reqs);
    th_stage_free(s);
}
END_TEST

START_TEST(test_mapping_missing_field_rejects)
{
    struct rcv *r = rcv_start("map", NULL);
    struct th_stage *s = stage(r, "event_type = \"{prop:kind}\"; subject = \"{customerId|=none}\";");
    orderd_msg *m = th_msg("{\"id\":\"x\"}");
    orderd_msg *ok = th_msg("{\"id\":\"y\",\"customerId\":\"c-1\"}");
    json_t *reqs, *body;

    ck_assert_int_eq(th_process(s, m), ORDERD_REJECT);
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(m), "{prop:kind}"));
    ck_assert_int_eq(th_host()->msg_set_prop(ok, "kind", "K"), 0);
    ck_assert_int_eq(th_process(s, ok), ORDERD_OK);
    reqs = rcv_requests(r);
    ck_assert_uint_eq(json_array_size(reqs), 1);
    body = json_loads(jstr(json_array_get(reqs, 0), "body"), 0, NULL);
    ck_assert_str_eq(jstr(json_array_get(body, 0), "type"), "K");
    ck_assert_str_eq(jstr(json_array_get(body, 0), "subject"), "c-1");
    json_decref(body);
    json_decref(reqs);
    th_msg_free(m);
    th_msg_free(ok);
    th_stage_free(s);
}
END_TEST

START_TEST(test_batch_count_and_size_split)
{
    struct rcv *r = rcv_start("split", NULL);
    struct th_stage *s = stage(r, "batch_max = 3;");
    orderd_msg *m[24];
    orderd_result res[24];
    json_t *reqs, *req;
    size_t i, j, total = 0;
    char id[16];

    /* 10 small events, 3 per request: 3 + 3 + 3 + 1. */
    for (i = 0; i < 10; i++) {
        snprintf(id, sizeof(id), "s-%zu", i);
        m[i] = order_event(id, "T", "o");
    }
    ck_assert_int_eq(th_process_batch(s, m, 10, res), 0);
    for (i = 0; i < 10; i++) {
        ck_assert_int_eq(res[i].outcome, ORDERD_OK);
        th_msg_free(m[i]);
    }
    reqs = rcv_requests(r);
    ck_assert_uint_eq(json_array_size(reqs), 4);
    ck_assert_int_eq(jint(json_array_get(reqs, 3), "count"), 1);
    json_decref(reqs);
    th_stage_free(s);

    /* 24 events of ~150 KB under the default 1 MiB: several requests,
     * each within the limit, every event once and in order. */
    s = stage(r, "batch_max = 1000;");
    for (i = 0; i < 24; i++) {
        snprintf(id, sizeof(id), "b-%02zu", i);
        m[i] = big_msg(id, 150000);
    }
    ck_assert_int_eq(th_process_batch(s, m, 24, res), 0);
    for (i = 0; i < 24; i++) {
        ck_assert_int_eq(res[i].outcome, ORDERD_OK);
        th_msg_free(m[i]);
    }
    reqs = rcv_requests(r);
    ck_assert_uint_gt(json_array_size(reqs), 4 + 3);
    for (i = 4, j = 0; i < json_array_size(reqs); i++) {
        size_t k;

        req = json_array_get(reqs, i);
        ck_assert_str_eq(jstr(req, "verdict"), "accepted");
        ck_assert_int_le(jint(req, "bytes"), 1024 * 1024);
        /* Splitting is greedy: the next event would not have fitted. */
        if (i + 1 < json_array_size(reqs))
            ck_assert_int_gt(jint(req, "bytes") + 150000, 1024 * 1024);
        for (k = 0; k < json_array_size(json_object_get(req, "ids")); k++, j++) {
            snprintf(id, sizeof(id), "b-%02zu", j);
            ck_assert_str_eq(json_string_value(json_array_get(json_object_get(req, "ids"), k)), id);
        }
        total += (size_t) jint(req, "count");
    }
    ck_assert_uint_eq(total, 24);
    json_decref(reqs);
    th_stage_free(s);
}
END_TEST

START_TEST(test_oversize_event_rejected)
{
    struct rcv *r = rcv_start("over", NULL);
    struct th_stage *s = stage(r, "");
    orderd_msg *m[3] = { order_event("a", "T", "o"), big_msg("huge", 1100000), order_event("c", "T", "o") };
    orderd_result res[3];
    json_t *reqs;

    ck_assert_int_eq(th_process_batch(s, m, 3, res), 0);
    ck_assert_int_eq(res[0].outcome, ORDERD_OK);
    ck_assert_int_eq(res[1].outcome, ORDERD_REJECT);
    ck_assert_ptr_nonnull(strstr(res[1].reason, "request limit"));
    ck_assert_int_eq(res[2].outcome, ORDERD_OK);
    reqs = rcv_requests(r);
    ck_assert_uint_eq(json_array_size(reqs), 1);
    ck_assert_int_eq(jint(json_array_get(reqs, 0), "count"), 2);
    json_decref(reqs);
    th_msg_free(m[0]);
    th_msg_free(m[1]);
    th_msg_free(m[2]);
    th_stage_free(s);
}
END_TEST

START_TEST(test_retry_statuses)
{
    static const char *const plan[] = { "--statuses", "429,500,503", "--retry-after", "7", NULL };
    struct rcv *r = rcv_start("retry", plan);
    struct th_stage *s = stage(r, "");
    orderd_msg *m[2] = { order_event("r1", "T", "o"), order_event("r2", "T", "o") };
    orderd_result res[2];
    int i;

    memset(res, 0, sizeof(res));
    ck_assert_int_eq(th_process_batch(s, m, 2, res), 0);
    for (i = 0; i < 2; i++) {
        ck_assert_int_eq(res[i].outcome, ORDERD_RETRY);
        ck_assert_uint_eq(res[i].retry_after_ms, 7000);
        ck_assert_ptr_nonnull(strstr(res[i].reason, "429"));
        ck_assert_ptr_nonnull(strstr(res[i].reason, "Status 429 from the test plan"));
    }
    ck_assert_int_eq(th_process(s, m[0]), ORDERD_RETRY);
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(m[0]), "500"));
    ck_assert_int_eq(th_process(s, m[0]), ORDERD_RETRY);
    ck_assert_int_eq(th_process(s, m[0]), ORDERD_OK);   /* plan used up */
    ck_assert_double_eq(th_metric(s, "eventgrid_request_failures"), 3);
    th_msg_free(m[0]);
    th_msg_free(m[1]);
    th_stage_free(s);
}
END_TEST

START_TEST(test_400_rejects_only_the_bad_event)
{
    static const char *const plan[] = { "--reject-id", "bad", NULL };
    struct rcv *r = rcv_start("400", plan);
    struct th_stage *s = stage(r, "");
    orderd_msg *m[3] = { order_event("good1", "T", "o"), order_event("bad", "T", "o"),
                         order_event("good2", "T", "o") };
    orderd_result res[3];
    json_t *reqs;

    ck_assert_int_eq(th_process_batch(s, m, 3, res), 0);
    ck_assert_int_eq(res[0].outcome, ORDERD_OK);
    ck_assert_int_eq(res[1].outcome, ORDERD_REJECT);
    ck_assert_ptr_nonnull(strstr(res[1].reason, "400"));
    ck_assert_ptr_nonnull(strstr(res[1].reason, "Event bad refused by the test receiver"));
    ck_assert_int_eq(res[2].outcome, ORDERD_OK);
    reqs = rcv_requests(r);
    ck_assert_uint_eq(json_array_size(reqs), 4);   /* the batch, then each alone */
    json_decref(reqs);
    th_msg_free(m[0]);
    th_msg_free(m[1]);
    th_msg_free(m[2]);
    th_stage_free(s);
}
END_TEST

START_TEST(test_413_and_401_reject)
{
    static const char *const plan[] = { "--max-bytes", "2000", NULL };
    struct rcv *r = rcv_start("413", plan);
    struct th_stage *s = stage(r, "");
    struct th_stage *bad;
    orderd_msg *big = big_msg("b", 3000), *small = order_event("s", "T", "o");
    char conf[1024];

    ck_assert_int_eq(th_process(s, big), ORDERD_REJECT);
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(big), "413"));
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(big), "maximum size"));
    ck_assert_int_eq(th_process(s, small), ORDERD_OK);

    snprintf(conf, sizeof(conf), "endpoint = \"https://127.0.0.1:%d/api/events\"; ca_file = \"%s/ca.crt\"; "
             "key = \"d3Jvbmcta2V5\";", r->port, root);
    bad = th_stage_new("eventgrid", ORDERD_PUBLISH, conf);
    ck_assert_int_eq(th_process(bad, small), ORDERD_REJECT);
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(small), "401"));
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(small), "not authorized"));
    th_stage_free(bad);
    th_msg_free(big);
    th_msg_free(small);
    th_stage_free(s);
}
END_TEST

START_TEST(test_transport_and_tls_failures_retry)
{
    struct rcv *r = rcv_start("tls", NULL);
    struct th_stage *s;
    orderd_msg *m = order_event("t", "T", "o");
    char conf[1024];
    json_t *reqs;

    /* TLS verification is on: without our CA the endpoint is untrusted. */
    snprintf(conf, sizeof(conf), "endpoint = \"https://127.0.0.1:%d/api/events\"; key = \"" KEY_B64 "\";",
             r->port);
    s = th_stage_new("eventgrid", ORDERD_PUBLISH, conf);
    ck_assert_int_eq(th_process(s, m), ORDERD_RETRY);
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(m), "publish to"));
    th_stage_free(s);
    reqs = rcv_requests(r);
    ck_assert_uint_eq(json_array_size(reqs), 0);
    json_decref(reqs);

    /* Nobody listening (the receiver's port after it is gone). */
    th_peer_stop(&r->peer);
    s = stage(r, "connect_timeout = \"2s\";");
    ck_assert_int_eq(th_process(s, m), ORDERD_RETRY);
    th_stage_free(s);
    th_msg_free(m);
}
END_TEST

START_TEST(test_timeout_retries)
{
    static const char *const plan[] = { "--delay-ms", "3000", NULL };
    struct rcv *r = rcv_start("slow", plan);
    struct th_stage *s = stage(r, "timeout = \"300ms\";");
    orderd_msg *m = order_event("slow", "T", "o");

    /* The receiver would accept it after 3 s: RETRY means we gave up. */
    ck_assert_int_eq(th_process(s, m), ORDERD_RETRY);
    ck_assert_ptr_nonnull(strcasestr(th_host()->msg_reason(m), "timed out"));
    th_msg_free(m);
    th_stage_free(s);
}
END_TEST

/* Worker threads publish at once: the connection pool and the shared SAS
 * token are used concurrently (run under the sanitizer build too). */
struct par_arg {
    struct th_stage *s;
    int              idx;
    int              ok;
};

static void *
par_worker(void *p)
{
    struct par_arg *a = p;
    char id[32];
    int i;

    for (i = 0; i < 10; i++) {
        orderd_msg *m[2];
        orderd_result res[2];

        snprintf(id, sizeof(id), "p%d-%d-a", a->idx, i);
        m[0] = order_event(id, "T", "o");
        snprintf(id, sizeof(id), "p%d-%d-b", a->idx, i);
        m[1] = order_event(id, "T", "o");
        if (th_process_batch(a->s, m, 2, res) == 0 && res[0].outcome == ORDERD_OK
            && res[1].outcome == ORDERD_OK)
            a->ok++;
        th_msg_free(m[0]);
        th_msg_free(m[1]);
    }
    return NULL;
}

START_TEST(test_parallel_workers)
{
    struct rcv *r = rcv_start("par", NULL);
    struct th_stage *s = stage(r, "auth = \"sas\";");
    struct par_arg args[4];
    pthread_t t[4];
    json_t *reqs, *v;
    size_t i, events = 0;

    for (i = 0; i < 4; i++) {
        args[i] = (struct par_arg){ .s = s, .idx = (int) i };
        ck_assert_int_eq(pthread_create(&t[i], NULL, par_worker, &args[i]), 0);
    }
    for (i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        ck_assert_int_eq(args[i].ok, 10);
    }
    reqs = rcv_requests(r);
    ck_assert_uint_eq(json_array_size(reqs), 40);
    json_array_foreach(reqs, i, v) {
        ck_assert_str_eq(jstr(v, "auth"), "aeg-sas-token");
        events += (size_t) jint(v, "count");
    }
    ck_assert_uint_eq(events, 80);
    json_decref(reqs);
    th_stage_free(s);
}
END_TEST

START_TEST(test_connection_reuse)
{
    struct rcv *r = rcv_start("reuse", NULL);
    struct th_stage *s = stage(r, "");
    orderd_msg *m = order_event("k", "T", "o");
    json_t *reqs;
    int i;

    for (i = 0; i < 4; i++)
        ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    reqs = rcv_requests(r);
    ck_assert_uint_eq(json_array_size(reqs), 4);
    /* The same client port each time: one TLS connection, kept open. */
    for (i = 1; i < 4; i++)
        ck_assert_str_eq(jstr(json_array_get(reqs, i), "connection"),
                         jstr(json_array_get(reqs, 0), "connection"));
    json_decref(reqs);
    th_msg_free(m);
    th_stage_free(s);
}
END_TEST

static void
write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

START_TEST(test_entra_token_file_refreshed)
{
    static const char *const plan[] = { "--bearer", "token-two", NULL };
    struct rcv *r = rcv_start("entra", plan);
    struct th_stage *s;
    orderd_msg *m = order_event("e", "T", "o");
    char tf[600], conf[2048];
    struct timespec ts[2] = { { 0, 0 }, { 0, 0 } };
    json_t *reqs;

    snprintf(tf, sizeof(tf), "%s/token", th_state_dir());
    write_file(tf, "token-one\n");
    snprintf(conf, sizeof(conf), "endpoint = \"https://127.0.0.1:%d/api/events\"; ca_file = \"%s/ca.crt\"; "
             "auth = \"entra\"; token_file = \"%s\";", r->port, root, tf);
    s = th_stage_new("eventgrid", ORDERD_PUBLISH, conf);
    ck_assert_int_eq(th_process(s, m), ORDERD_REJECT);   /* 401 twice */
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(m), "401"));
    /* The identity agent rewrites the file: the next request uses it. */
    write_file(tf, "{\"access_token\":\"token-two\",\"expires_in\":3600}\n");
    ts[0].tv_sec = ts[1].tv_sec = time(NULL) + 5;   /* a distinct mtime */
    ck_assert_int_eq(utimensat(AT_FDCWD, tf, ts, 0), 0);
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    reqs = rcv_requests(r);
    ck_assert_str_eq(jstr(json_array_get(reqs, json_array_size(reqs) - 1), "auth"), "bearer");
    json_decref(reqs);
    th_msg_free(m);
    th_stage_free(s);
}
END_TEST

/* Entra ID from a token endpoint: fetched once, cached, sent as a bearer
 * token; both the client-credentials and the managed-identity forms. */
START_TEST(test_entra_token_url)
{
    static const char *const plan[] = { "--bearer", "tok-abc", "--client-id", "app-1",
                                        "--client-secret", "s3cret", NULL };
    struct rcv *r = rcv_start("entra-url", plan);
    struct th_stage *s;
    orderd_msg *m = order_event("u", "T", "o");
    char conf[2048];
    json_t *reqs, *v;
    size_t i, tokens = 0, bearer = 0;

    snprintf(conf, sizeof(conf), "endpoint = \"https://127.0.0.1:%d/api/events\"; ca_file = \"%s/ca.crt\"; "
             "auth = \"entra\"; token_url = \"https://127.0.0.1:%d/oauth2/token\"; "
             "client_id = \"app-1\"; client_secret = \"s3cret\";", r->port, root, r->port);
    s = th_stage_new("eventgrid", ORDERD_PUBLISH, conf);
    for (i = 0; i < 3; i++)
        ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    th_stage_free(s);

    snprintf(conf, sizeof(conf), "endpoint = \"https://127.0.0.1:%d/api/events\"; ca_file = \"%s/ca.crt\"; "
             "auth = \"entra\"; token_url = \"https://127.0.0.1:%d/metadata/identity/oauth2/token\";",
             r->port, root, r->port);
    s = th_stage_new("eventgrid", ORDERD_PUBLISH, conf);
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    th_stage_free(s);

    /* A wrong secret: no token, so the event is retried, not lost. */
    snprintf(conf, sizeof(conf), "endpoint = \"https://127.0.0.1:%d/api/events\"; ca_file = \"%s/ca.crt\"; "
             "auth = \"entra\"; token_url = \"https://127.0.0.1:%d/oauth2/token\"; "
             "client_id = \"app-1\"; client_secret = \"wrong\";", r->port, root, r->port);
    s = th_stage_new("eventgrid", ORDERD_PUBLISH, conf);
    ck_assert_int_eq(th_process(s, m), ORDERD_RETRY);
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(m), "bad client credentials"));
    th_stage_free(s);

    reqs = rcv_requests(r);
    json_array_foreach(reqs, i, v) {
        if (json_object_get(v, "token") != NULL && jint(v, "status") == 200) {
            tokens++;
            ck_assert_str_eq(jstr(v, "scope"), tokens == 1 ? "https://eventgrid.azure.net/.default"
                                                           : "https://eventgrid.azure.net");
        }
        if (jstr(v, "auth") != NULL && strcmp(jstr(v, "auth"), "bearer") == 0)
            bearer++;
    }
    ck_assert_uint_eq(tokens, 2);   /* one per stage: the token is cached */
    ck_assert_uint_eq(bearer, 4);
    json_decref(reqs);
    th_msg_free(m);
}
END_TEST

/* A token is renewed before it expires: with a 2 s lifetime the plugin
 * fetches a new one for a publish 2.5 s later instead of sending a stale one. */
START_TEST(test_entra_token_renewed)
{
    static const char *const plan[] = { "--bearer", "tok-r", "--client-id", "app-2",
                                        "--client-secret", "x", "--token-ttl", "2", NULL };
    struct rcv *r = rcv_start("renew", plan);
    struct th_stage *s;
    orderd_msg *m = order_event("n", "T", "o");
    struct timespec wait = { 2, 500 * 1000000L };
    char conf[2048];
    json_t *reqs, *v;
    size_t i, tokens = 0;

    snprintf(conf, sizeof(conf), "endpoint = \"https://127.0.0.1:%d/api/events\"; ca_file = \"%s/ca.crt\"; "
             "auth = \"entra\"; token_url = \"https://127.0.0.1:%d/oauth2/token\"; "
             "client_id = \"app-2\"; client_secret = \"x\";", r->port, root, r->port);
    s = th_stage_new("eventgrid", ORDERD_PUBLISH, conf);
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    nanosleep(&wait, NULL);   /* let the token reach its renewal time */
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    reqs = rcv_requests(r);
    json_array_foreach(reqs, i, v) {
        if (json_object_get(v, "token") != NULL && jint(v, "status") == 200)
            tokens++;
    }
    ck_assert_uint_eq(tokens, 2);
    json_decref(reqs);
    th_msg_free(m);
    th_stage_free(s);
}
END_TEST

START_TEST(test_bad_config)
{
    char err[512];

    ck_assert_ptr_null(th_stage_try("eventgrid", ORDERD_PUBLISH,
        "endpoint = \"https://x/api/events\";", err, sizeof(err)));             /* no key */
    ck_assert_ptr_null(th_stage_try("eventgrid", ORDERD_PUBLISH,
        "endpoint = \"https://x/api/events?api-version=1\"; key = \"" KEY_B64 "\";", err, sizeof(err)));
    ck_assert_ptr_null(th_stage_try("eventgrid", ORDERD_PUBLISH,
        "endpoint = \"https://x/api/events\"; key = \"" KEY_B64 "\"; subject = \"orders/{id\";",
        err, sizeof(err)));
    ck_assert_ptr_null(th_stage_try("eventgrid", ORDERD_PUBLISH,
        "endpoint = \"https://x/api/events\"; key = \"not base64\"; auth = \"sas\";", err, sizeof(err)));
    ck_assert_ptr_null(th_stage_try("eventgrid", ORDERD_PUBLISH,
        "endpoint = \"https://x/api/events\"; auth = \"entra\";", err, sizeof(err)));
    ck_assert_ptr_null(th_stage_try("eventgrid", ORDERD_PUBLISH,
        "endpoint = \"https://x/api/events\"; key = \"" KEY_B64 "\"; schema = \"xml\";", err, sizeof(err)));
    ck_assert_ptr_null(th_stage_try("eventgrid", ORDERD_PUBLISH,
        "endpoint = \"https://x/api/events\"; key = \"" KEY_B64 "\"; batch_max = 0;", err, sizeof(err)));
    th_stage_free(th_stage_new("eventgrid", ORDERD_PUBLISH,
        "endpoint = \"https://x/api/events\"; key = \"" KEY_B64 "\";"));
}
END_TEST

/* A throw-away CA and a server certificate for 127.0.0.1, made once. */
static int
make_certs(void)
{
    char cmd[4096];

    snprintf(cmd, sizeof(cmd),
             "cd '%s' && "
             "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=orderd-test-ca "
             "  -keyout ca.key -out ca.crt -addext basicConstraints=critical,CA:TRUE >/dev/null 2>&1 && "
             "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr "
             "  >/dev/null 2>&1 && "
             "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.ext && "
             "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 "
             "  -extfile san.ext -out server.crt >/dev/null 2>&1", root);
    return system(cmd);
}

static int
find_node_modules(void)
{
    char cmd[1024];
    FILE *p;

    snprintf(cmd, sizeof(cmd), "'%s/peers/setup.sh'", srcdir());
    p = popen(cmd, "r");
    if (p == NULL || fgets(node_path, sizeof(node_path) - 16, p) == NULL) {
        if (p != NULL)
            pclose(p);
        return -1;
    }
    node_path[strcspn(node_path, "\n")] = '\0';
    strcat(node_path, "/node_modules");
    return pclose(p) == 0 ? 0 : -1;
}

static Suite *
eventgrid_suite(void)
{
    Suite *s = suite_create("eventgrid");
    TCase *tc = tcase_create("publish");

    tcase_add_checked_fixture(tc, NULL, cleanup_all);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_sas_vectors);
    tcase_add_test(tc, test_sas_matches_sdk);
    tcase_add_test(tc, test_cloudevents_batch);
    tcase_add_test(tc, test_eventgrid_schema_sas_and_mapping);
    tcase_add_test(tc, test_mapping_missing_field_rejects);
    tcase_add_test(tc, test_batch_count_and_size_split);
    tcase_add_test(tc, test_oversize_event_rejected);
    tcase_add_test(tc, test_retry_statuses);
    tcase_add_test(tc, test_400_rejects_only_the_bad_event);
    tcase_add_test(tc, test_413_and_401_reject);
    tcase_add_test(tc, test_transport_and_tls_failures_retry);
    tcase_add_test(tc, test_timeout_retries);
    tcase_add_test(tc, test_connection_reuse);
    tcase_add_test(tc, test_parallel_workers);
    tcase_add_test(tc, test_entra_token_file_refreshed);
    tcase_add_test(tc, test_entra_token_url);
    tcase_add_test(tc, test_entra_token_renewed);
    tcase_add_test(tc, test_bad_config);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    const char *tmp = getenv("TMPDIR");
    SRunner *sr;
    int failed = 1;

    /* Before TMPDIR moves: setup.sh caches the npm tools under it. */
    if (find_node_modules() != 0) {
        fprintf(stderr, "check_eventgrid: tests/peers/setup.sh failed (npm and node needed)\n");
        return EXIT_FAILURE;
    }
    snprintf(root, sizeof(root), "%s/check_eventgrid-XXXXXX", tmp ? tmp : "/tmp");
    if (mkdtemp(root) == NULL || setenv("TMPDIR", root, 1) != 0) {
        perror("check_eventgrid: temp dir");
        return EXIT_FAILURE;
    }
    if (make_certs() != 0) {
        fprintf(stderr, "check_eventgrid: openssl could not make the test certificates\n");
        goto out;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    sr = srunner_create(eventgrid_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    curl_global_cleanup();
out:
    th_rm_tree(root);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
