/* check_cosmos.c - the cosmos plugin (store, lookup, change feed).
 *
 * Signature: plugins/cosmos/cos_auth.c is compiled in and checked against
 * Microsoft's known-answer vectors (tests/cosmos-vectors.json).
 * Store/lookup: the real cosmos.so through the harness against
 * @vercel/cosmosdb-server behind tests/peers/cosmos-server.js (HTTPS with a
 * CA made here by openssl, signatures verified with @azure/cosmos's code);
 * documents are read back with the official SDK (tests/peers/cosmos-readback.js).
 * Throttling/5xx/timeouts: tests/tools/cosmos_faults.py.  Change feed:
 * tests/tools/changefeed_responder.py.  Every process is started here, killed
 * by PID (and by PR_SET_PDEATHSIG if the test dies); files live under the
 * harness state dir, removed at the end.
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "harness.h"
#include "msg.h"
#include "../plugins/cosmos/cosmos.h"

#define WAIT_MS 20000
#define EMU_KEY "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="

static const char *srcdir(void)
{
    const char *s = getenv("TESTS_SRCDIR");

    return s ? s : ".";
}

#define mono_ms() th_mono_ms()
#define nap(ms)   th_nap_ms(ms)

/* ---- known-answer vectors ------------------------------------------------------ */

START_TEST(test_sign_vectors)
{
    char path[1024], out[256];
    json_error_t err;
    json_t *j, *vecs, *v;
    size_t i;

    snprintf(path, sizeof(path), "%s/cosmos-vectors.json", srcdir());
    j = json_load_file(path, 0, &err);
    ck_assert_msg(j != NULL, "%s: %s", path, err.text);
    vecs = json_object_get(j, "vectors");
    ck_assert_uint_ge(json_array_size(vecs), 2);
    json_array_foreach(vecs, i, v) {
        json_t *in = json_object_get(v, "inputs"), *exp = json_object_get(v, "expected");

        ck_assert_int_eq(cos_sign(json_string_value(json_object_get(in, "masterKey")),
                                  json_string_value(json_object_get(in, "verb")),
                                  json_string_value(json_object_get(in, "resourceType")),
                                  json_string_value(json_object_get(in, "resourceLink")),
                                  json_string_value(json_object_get(in, "x-ms-date")),
                                  out, sizeof(out)), 0);
        ck_assert_str_eq(out, json_string_value(json_object_get(exp, "authorization")));
    }
    json_decref(j);
    /* not a base64 key */
    ck_assert_int_eq(cos_sign("not base64!", "GET", "dbs", "", "x", out, sizeof(out)), -EINVAL);
}
END_TEST

START_TEST(test_date_and_resource)
{
    char d[64], type[64], link[256];

    cos_date((time_t) 1493254272, d, sizeof(d));
    ck_assert_str_eq(d, "Thu, 27 Apr 2017 00:51:12 GMT");
    cos_date((time_t) 1136214245, d, sizeof(d));
    ck_assert_str_eq(d, "Mon, 02 Jan 2006 15:04:05 GMT");
    cos_resource("dbs/db1/colls/orders/docs", type, sizeof(type), link, sizeof(link));
    ck_assert_str_eq(type, "docs");
    ck_assert_str_eq(link, "dbs/db1/colls/orders");
    cos_resource("dbs/db1/colls/orders/docs/A b", type, sizeof(type), link, sizeof(link));
    ck_assert_str_eq(type, "docs");
    ck_assert_str_eq(link, "dbs/db1/colls/orders/docs/A b");
    cos_resource("dbs/ToDoList", type, sizeof(type), link, sizeof(link));
    ck_assert_str_eq(type, "dbs");
    ck_assert_str_eq(link, "dbs/ToDoList");
    cos_resource("", type, sizeof(type), link, sizeof(link));
    ck_assert_str_eq(type, "");
    ck_assert_str_eq(link, "");
}
END_TEST

/* ---- processes ------------------------------------------------------------------ */

static struct th_peer procs[8];
static size_t nprocs;

static void kill_procs(void)
{
    for (size_t i = 0; i < nprocs; i++)
        th_peer_stop(&procs[i]);
    nprocs = 0;
}

/* Run argv in the background (stdout to /dev/null); wait for its port file. */
static int spawn_server(char *const argv[], const char *portfile)
{
    struct th_peer *p;
    int rc;

    ck_assert_uint_lt(nprocs, sizeof(procs) / sizeof(procs[0]));
    p = &procs[nprocs];
    rc = th_peer_start(p, (const char *const *)argv, NULL, portfile, WAIT_MS);
    ck_assert_msg(rc == 0, "%s did not start: %s", argv[1], strerror(-rc));
    nprocs++;
    return p->port;
}

/* Run a shell command, capture the first line of stdout. */
static int run_capture(const char *cmd, char *out, size_t outlen)
{
    FILE *p = popen(cmd, "r");
    size_t n = 0;
    int rc;

    ck_assert_ptr_nonnull(p);
    if (out != NULL) {
        n = fread(out, 1, outlen - 1, p);
        out[n] = '\0';
        while (n > 0 && out[n - 1] == '\n')
            out[--n] = '\0';
    } else {
        char sink[256];

        while (fread(sink, 1, sizeof(sink), p) > 0)
            ;
    }
    rc = pclose(p);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static char node_path[1100], ca_file[1024], orig_tmp[512] = "/tmp";
static int cosmos_port;

/* The npm tools directory (installed once by tests/peers/setup.sh). */
static void setup_node(void)
{
    char cmd[1800], dir[1024];

    /* the cache dir is keyed on the real TMPDIR, not the per-run one main() set */
    snprintf(cmd, sizeof(cmd), "TMPDIR='%s' %s/peers/setup.sh", orig_tmp, srcdir());
    ck_assert_int_eq(run_capture(cmd, dir, sizeof(dir)), 0);
    snprintf(node_path, sizeof(node_path), "%s/node_modules", dir);
    setenv("NODE_PATH", node_path, 1);
}

/* A throw-away CA and a server certificate for 127.0.0.1. */
static void make_certs(void)
{
    char cmd[4096];
    const char *d = th_state_dir();

    snprintf(ca_file, sizeof(ca_file), "%s/ca.crt", d);
    snprintf(cmd, sizeof(cmd),
             "(cd '%s' && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 "
             "-subj /CN=orderd-test-ca && openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr "
             "-subj /CN=127.0.0.1 && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > srv.ext && "
             "openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out srv.crt -days 1 "
             "-extfile srv.ext) 2>/dev/null", d);
    ck_assert_int_eq(run_capture(cmd, NULL, 0), 0);
}

static void start_cosmos(const char *extra_flag, const char *extra_val)
{
    char script[1024], cert[1024], key[1024], pf[1024], log[1024];
    const char *d = th_state_dir();
    char *argv[16];
    int a = 0;

    setup_node();
    make_certs();
    snprintf(script, sizeof(script), "%s/peers/cosmos-server.js", srcdir());
    snprintf(cert, sizeof(cert), "%s/srv.crt", d);
    snprintf(key, sizeof(key), "%s/srv.key", d);
    snprintf(pf, sizeof(pf), "%s/cosmos.port", d);
    snprintf(log, sizeof(log), "%s/cosmos-requests.jsonl", d);
    argv[a++] = "node";
    argv[a++] = script;
    argv[a++] = "--cert";
    argv[a++] = cert;
    argv[a++] = "--key";
    argv[a++] = key;
    argv[a++] = "--port-file";
    argv[a++] = pf;
    argv[a++] = "--log";
    argv[a++] = log;
    if (extra_flag != NULL) {
        argv[a++] = (char *) extra_flag;
        argv[a++] = (char *) extra_val;
    }
    argv[a] = NULL;
    cosmos_port = spawn_server(argv, pf);
}

/* Run cosmos-readback.js (the official SDK) with args; output in out. */
static int sdk(char *out, size_t outlen, const char *fmt, ...) ORDERD_PRINTF(3, 4);
static int sdk(char *out, size_t outlen, const char *fmt, ...)
{
    char args[2048], cmd[4096];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof(cmd),
             "COSMOS_ENDPOINT=https://127.0.0.1:%d/ COSMOS_KEY='%s' NODE_EXTRA_CA_CERTS='%s' "
             "node '%s/peers/cosmos-readback.js' %s", cosmos_port, EMU_KEY, ca_file, srcdir(), args);
    return run_capture(cmd, out, outlen);
}

static struct th_stage *store_new(const char *extra)
{
    char conf[4096];

    snprintf(conf, sizeof(conf),
             "endpoint = \"https://127.0.0.1:%d/\"; database = \"db1\"; key = \"%s\"; "
             "ca_file = \"%s\"; %s", cosmos_port, EMU_KEY, ca_file, extra);
    return th_stage_new("cosmos", ORDERD_STORE, conf);
}

static json_t *parse(const char *s)
{
    json_t *j = json_loads(s, 0, NULL);

    ck_assert_msg(j != NULL, "not JSON: %s", s);
    return j;
}

/* ---- store against the Cosmos DB server ----------------------------------------- */

START_TEST(test_append_idempotent)
{
    struct th_stage *s;
    orderd_msg *m;
    char out[8192];
    json_t *doc;

    start_cosmos(NULL, NULL);
    ck_assert_int_eq(sdk(out, sizeof(out), "setup db1 events /orderId"), 0);
    s = store_new("container = \"events\"; mode = \"append\"; partition_key = \"/orderId\";");

    m = th_msg("{\"id\":\"evt-1\",\"type\":\"OrderCreated\",\"orderId\":\"o 1\",\"version\":1}");
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    /* the same event again (a redelivery): 409 from the service, OK here */
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    th_msg_free(m);
    ck_assert(th_metric(s, "cosmos_duplicates") == 1.0);
    ck_assert(th_metric(s, "cosmos_request_units") > 0.0);

    ck_assert_int_eq(sdk(out, sizeof(out), "read db1 events evt-1 'o 1'"), 0);
    doc = parse(out);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "type")), "OrderCreated");
    ck_assert_str_eq(json_string_value(json_object_get(doc, "orderId")), "o 1");
    json_decref(doc);
    ck_assert_int_eq(sdk(out, sizeof(out), "all db1 events"), 0);
    doc = parse(out);
    ck_assert_uint_eq(json_array_size(doc), 1);
    json_decref(doc);

    /* no partition key value: rejected before any request */
    m = th_msg("{\"id\":\"evt-2\",\"type\":\"OrderCreated\"}");
    ck_assert_int_eq(th_process(s, m), ORDERD_REJECT);
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(m), "/orderId"));
    th_msg_free(m);

    /* a body without id: the message id becomes the document id */
    m = th_msg("{\"orderId\":\"o2\",\"type\":\"Note\"}");
    ck_assert_int_eq(th_host()->msg_set_id(m, "msg-42"), 0);
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    th_msg_free(m);
    ck_assert_int_eq(sdk(out, sizeof(out), "read db1 events msg-42 o2"), 0);
    doc = parse(out);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "type")), "Note");
    json_decref(doc);
    th_stage_free(s);

    /* a wrong key: the server (checking with @azure/cosmos's code) answers 401 -> REJECT */
    {
        char conf[4096];

        snprintf(conf, sizeof(conf),
                 "endpoint = \"https://127.0.0.1:%d/\"; database = \"db1\"; container = \"events\"; "
                 "key = \"dsZQi3KtZmCv1ljt3VNWNm7sQUF1y5rJfC6kv5JiwvW0EndXdDku/dkKBp8/ufDToSxLzR4y+O/0H/t4bQtVNw==\"; "
                 "ca_file = \"%s\"; partition_key = \"/orderId\";", cosmos_port, ca_file);
        s = th_stage_new("cosmos", ORDERD_STORE, conf);
        m = th_msg("{\"id\":\"evt-3\",\"orderId\":\"o1\"}");
        ck_assert_int_eq(th_process(s, m), ORDERD_REJECT);
        ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(m), "401"));
        th_msg_free(m);
        th_stage_free(s);
    }
    /* TLS verification is on: without the test CA the handshake fails -> RETRY */
    {
        char conf[4096];

        snprintf(conf, sizeof(conf),
                 "endpoint = \"https://127.0.0.1:%d/\"; database = \"db1\"; container = \"events\"; "
                 "key = \"%s\"; partition_key = \"/orderId\";", cosmos_port, EMU_KEY);
        s = th_stage_new("cosmos", ORDERD_STORE, conf);
        m = th_msg("{\"id\":\"evt-4\",\"orderId\":\"o1\"}");
        ck_assert_int_eq(th_process(s, m), ORDERD_RETRY);
        th_msg_free(m);
        th_stage_free(s);
    }
    kill_procs();
}
END_TEST

START_TEST(test_upsert_snapshot_etag)
{
    struct th_stage *s;
    orderd_msg *m;
    char out[8192];
    json_t *doc = NULL;

    start_cosmos(NULL, NULL);
    ck_assert_int_eq(sdk(out, sizeof(out), "setup db1 snaps /id"), 0);
    s = store_new("container = \"snaps\"; mode = \"upsert\"; document = \"snapshot\";");

    m = th_msg("{\"id\":\"evt-a\",\"type\":\"OrderCreated\",\"snapshot\":{\"id\":\"o1\",\"status\":\"created\",\"version\":1}}");
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    th_msg_free(m);

    /* lookup as the orders transform does: the snapshot, without system properties */
    ck_assert_int_eq(th_lookup(s, "o1", &doc), 0);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "status")), "created");
    ck_assert_ptr_null(json_object_get(doc, "_rid"));
    json_decref(doc);
    ck_assert_int_eq(th_lookup(s, "no-such-order", &doc), -ENOENT);

    /* a concurrent writer changes o1 (still version 1): our If-Match is stale -> 412 -> RETRY */
    ck_assert_int_eq(sdk(out, sizeof(out),
                         "replace db1 snaps o1 o1 '{\"id\":\"o1\",\"status\":\"touched\",\"version\":1}'"), 0);
    m = th_msg("{\"id\":\"evt-b\",\"type\":\"OrderPaid\",\"snapshot\":{\"id\":\"o1\",\"status\":\"paid\",\"version\":2}}");
    ck_assert_int_eq(th_process(s, m), ORDERD_RETRY);
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(m), "412"));
    ck_assert_int_eq(sdk(out, sizeof(out), "read db1 snaps o1 o1"), 0);
    doc = parse(out);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "status")), "touched");
    json_decref(doc);
    /* the retry writes over the fresh state it has now seen */
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    th_msg_free(m);
    ck_assert_int_eq(sdk(out, sizeof(out), "read db1 snaps o1 o1"), 0);
    doc = parse(out);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "status")), "paid");
    json_decref(doc);

    /* someone stored a newer version: ours (3) is stale -> OK without overwriting */
    ck_assert_int_eq(sdk(out, sizeof(out),
                         "replace db1 snaps o1 o1 '{\"id\":\"o1\",\"status\":\"delivered\",\"version\":5}'"), 0);
    m = th_msg("{\"id\":\"evt-c\",\"type\":\"OrderShipped\",\"snapshot\":{\"id\":\"o1\",\"status\":\"shipped\",\"version\":3}}");
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    th_msg_free(m);
    ck_assert_int_eq(sdk(out, sizeof(out), "read db1 snaps o1 o1"), 0);
    doc = parse(out);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "status")), "delivered");
    json_decref(doc);
    ck_assert(th_metric(s, "cosmos_precondition_failed") == 2.0);

    /* no snapshot in the message */
    m = th_msg("{\"id\":\"evt-d\",\"type\":\"X\"}");
    ck_assert_int_eq(th_process(s, m), ORDERD_REJECT);
    th_msg_free(m);
    th_stage_free(s);
    kill_procs();
}
END_TEST

START_TEST(test_lookup_events_and_token)
{
    struct th_stage *s;
    orderd_msg *m;
    char out[8192], conf[4096], tokfile[1024];
    json_t *doc = NULL;
    FILE *f;

    start_cosmos("--aad-token", "test-aad-token-123");
    ck_assert_int_eq(sdk(out, sizeof(out), "setup db1 events /orderId snaps /id"), 0);
    s = store_new("container = \"snaps\"; mode = \"upsert\"; document = \"snapshot\"; "
                  "events_container = \"events\";");
    ck_assert_int_eq(sdk(out, sizeof(out),
                         "create db1 events '{\"id\":\"evt-9\",\"orderId\":\"o9\",\"type\":\"OrderCreated\"}'"), 0);
    /* event ids do not carry the order id (the partition key): a cross-partition query */
    ck_assert_int_eq(th_lookup(s, "event:evt-9", &doc), 0);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "orderId")), "o9");
    json_decref(doc);
    ck_assert_int_eq(th_lookup(s, "event:evt-nope", &doc), -ENOENT);
    /* the form the orders transform uses, with the order id in front */
    ck_assert_int_eq(th_lookup(s, "event:o9/evt-9", &doc), 0);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "id")), "evt-9");
    json_decref(doc);
    ck_assert_int_eq(th_lookup(s, "event:o9/evt-nope", &doc), -ENOENT);
    th_stage_free(s);

    /* Entra ID bearer token from a file */
    snprintf(tokfile, sizeof(tokfile), "%s/token", th_state_dir());
    f = fopen(tokfile, "w");
    ck_assert_ptr_nonnull(f);
    fputs("test-aad-token-123\n", f);
    fclose(f);
    snprintf(conf, sizeof(conf),
             "endpoint = \"https://127.0.0.1:%d/\"; database = \"db1\"; container = \"events\"; "
             "auth = \"token\"; token_file = \"%s\"; ca_file = \"%s\"; partition_key = \"/orderId\";",
             cosmos_port, tokfile, ca_file);
    s = th_stage_new("cosmos", ORDERD_STORE, conf);
    m = th_msg("{\"id\":\"evt-10\",\"orderId\":\"o10\"}");
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    th_msg_free(m);
    ck_assert_int_eq(sdk(out, sizeof(out), "read db1 events evt-10 o10"), 0);
    ck_assert_ptr_nonnull(strstr(out, "evt-10"));
    th_stage_free(s);
    kill_procs();
}
END_TEST

/* ---- faults from the small local responder ------------------------------------ */

static int start_py(const char *tool, const char *tag, const char *a1, const char *a2,
                    const char *a3, const char *a4, char *log, size_t loglen)
{
    char script[1024], pf[1024];
    char *argv[12];
    int a = 0;

    snprintf(script, sizeof(script), "%s/tools/%s", srcdir(), tool);
    snprintf(pf, sizeof(pf), "%s/%s.port", th_state_dir(), tag);
    snprintf(log, loglen, "%s/%s.jsonl", th_state_dir(), tag);
    argv[a++] = "/usr/bin/python3";
    argv[a++] = script;
    argv[a++] = "--port-file";
    argv[a++] = pf;
    argv[a++] = "--log";
    argv[a++] = log;
    argv[a++] = (char *) a1;
    argv[a++] = (char *) a2;
    if (a3 != NULL) {
        argv[a++] = (char *) a3;
        argv[a++] = (char *) a4;
    }
    argv[a] = NULL;
    return spawn_server(argv, pf);
}

START_TEST(test_faults)
{
    struct th_stage *s;
    orderd_msg *m;
    char conf[4096], log[1024];
    int port = start_py("cosmos_faults.py", "faults", "--plan",
                        "[{\"status\":429,\"retry_after_ms\":1500},{\"status\":503},"
                        "{\"sleep_ms\":3000},{\"status\":400}]", NULL, NULL, log, sizeof(log));

    snprintf(conf, sizeof(conf),
             "endpoint = \"http://127.0.0.1:%d\"; database = \"db1\"; container = \"c\"; key = \"%s\"; "
             "timeout = \"700ms\";", port, EMU_KEY);
    s = th_stage_new("cosmos", ORDERD_STORE, conf);
    m = th_msg("{\"id\":\"x1\"}");
    /* 429: RETRY no sooner than the service asked */
    ck_assert_int_eq(th_process(s, m), ORDERD_RETRY);
    ck_assert_uint_eq(m->retry_after_ms, 1500);
    ck_assert(th_metric(s, "cosmos_throttled") == 1.0);
    /* 503: RETRY with the core's backoff */
    ck_assert_int_eq(th_process(s, m), ORDERD_RETRY);
    ck_assert_uint_eq(m->retry_after_ms, 0);
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(m), "503"));
    /* no answer within timeout: RETRY */
    ck_assert_int_eq(th_process(s, m), ORDERD_RETRY);
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(m), "timed out"));
    /* 400: REJECT carrying the service's message */
    ck_assert_int_eq(th_process(s, m), ORDERD_REJECT);
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(m), "injected 400"));
    /* then the service works again */
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    ck_assert(th_metric(s, "cosmos_request_units") >= 2.5 * 4);
    th_msg_free(m);
    th_stage_free(s);
    kill_procs();
}
END_TEST

/* ---- change feed ------------------------------------------------------------------- */

static void post_docs(int port, const char *json)
{
    char cmd[4096];

    snprintf(cmd, sizeof(cmd),
             "curl -sf -X POST --data-binary '%s' http://127.0.0.1:%d/_test/docs", json, port);
    ck_assert_int_eq(run_capture(cmd, NULL, 0), 0);
}

static struct th_stage *feed_new(int port, const char *ckpt)
{
    char conf[4096];

    snprintf(conf, sizeof(conf),
             "endpoint = \"http://127.0.0.1:%d\"; database = \"db1\"; container = \"c\"; key = \"%s\"; "
             "partition_key = \"/orderId\"; max_items = 2; poll_interval = \"50ms\"; checkpoint = \"%s\";",
             port, EMU_KEY, ckpt);
    return th_stage_new("cosmos", ORDERD_INPUT, conf);
}

/* Ack (OK) every submitted message not yet taken; add their ids to seen. */
static size_t ack_all(struct th_stage *s, size_t from, json_t *seen)
{
    size_t n = th_submitted(s), i;

    for (i = from; i < n; i++) {
        orderd_msg *m = th_take(s, i);

        ck_assert_ptr_nonnull(m);
        json_object_set_new(seen, th_host()->msg_id(m), json_integer(json_object_size(seen)));
        th_ack(s, m, ORDERD_OK, NULL);
        th_msg_free(m);
    }
    return n;
}

static int file_exists(const char *p)
{
    return access(p, F_OK) == 0;
}

START_TEST(test_change_feed)
{
    struct th_stage *s;
    char log[1024], ckpt[1024], line[1024];
    json_t *seen = json_object(), *ck;
    orderd_msg *m;
    size_t done, n304 = 0, nmax = 0, ninm = 0;
    int port = start_py("changefeed_responder.py", "feed", "--key", EMU_KEY, "--ranges", "2",
                        log, sizeof(log));
    int64_t deadline;
    FILE *f;

    snprintf(ckpt, sizeof(ckpt), "%s/feed.ckpt", th_state_dir());
    post_docs(port, "[{\"id\":\"d1\",\"orderId\":\"o1\"},{\"id\":\"d2\",\"orderId\":\"o2\"},"
                    "{\"id\":\"d3\",\"orderId\":\"o3\"},{\"id\":\"d4\",\"orderId\":\"o4\"},"
                    "{\"id\":\"d5\",\"orderId\":\"o5\"},{\"id\":\"d6\",\"orderId\":\"o6\"},"
                    "{\"id\":\"d7\",\"orderId\":\"o7\"}]");
    s = feed_new(port, ckpt);
    ck_assert_int_eq(th_start(s), 0);

    /* the first page arrives; nothing is checkpointed until it is acked */
    ck_assert(th_wait_submitted(s, 1, WAIT_MS));
    m = th_take(s, 0);
    ck_assert_str_eq(th_host()->msg_partition_key(m),
                     json_string_value(json_object_get(th_host()->msg_body(m), "orderId")));
    ck_assert_ptr_null(json_object_get(th_host()->msg_body(m), "_lsn"));
    ck_assert_ptr_nonnull(th_host()->msg_prop(m, "cosmos_range"));
    json_object_set_new(seen, th_host()->msg_id(m), json_integer(0));
    ck_assert(th_wait_submitted(s, 2, WAIT_MS));   /* max_items = 2: a page of two */
    ck_assert(!file_exists(ckpt));
    th_ack(s, m, ORDERD_OK, NULL);
    th_msg_free(m);
    ck_assert(!file_exists(ckpt));                 /* one of two acked: still not */
    done = 1;
    /* ack as they come, until all seven were delivered */
    deadline = mono_ms() + WAIT_MS;
    while (json_object_size(seen) < 7) {
        ck_assert_msg(mono_ms() < deadline, "only %zu documents delivered", json_object_size(seen));
        done = ack_all(s, done, seen);
        nap(10);
    }
    ck_assert_uint_eq(th_submitted(s), 7);         /* each exactly once */

    /* caught up: the responder answers 304; new documents still show up */
    post_docs(port, "[{\"id\":\"d8\",\"orderId\":\"o8\"}]");
    ck_assert(th_wait_submitted(s, 8, WAIT_MS));
    done = ack_all(s, done, seen);
    ck_assert(json_object_get(seen, "d8") != NULL);
    th_stage_free(s);

    /* the checkpoint holds one continuation per range */
    ck = json_load_file(ckpt, 0, NULL);
    ck_assert_ptr_nonnull(ck);
    ck_assert_uint_eq(json_object_size(json_object_get(ck, "ranges")), 2);
    json_decref(ck);

    /* what went over the wire: paging, continuation, 304 */
    f = fopen(log, "r");
    ck_assert_ptr_nonnull(f);
    while (fgets(line, sizeof(line), f) != NULL) {
        json_t *e = json_loads(line, 0, NULL);

        ck_assert_int_ne(json_integer_value(json_object_get(e, "status")), 401);
        if (json_integer_value(json_object_get(e, "status")) == 304)
            n304++;
        if (json_is_string(json_object_get(e, "max")) &&
            strcmp(json_string_value(json_object_get(e, "max")), "2") == 0)
            nmax++;
        if (json_is_string(json_object_get(e, "if-none-match")))
            ninm++;
        json_decref(e);
    }
    fclose(f);
    ck_assert_uint_gt(n304, 0);
    ck_assert_uint_ge(nmax, 4);   /* 8 documents in pages of at most 2 */
    ck_assert_uint_gt(ninm, 0);

    /* restart from the checkpoint: only what is new comes */
    post_docs(port, "[{\"id\":\"d9\",\"orderId\":\"o9\"}]");
    s = feed_new(port, ckpt);
    ck_assert_int_eq(th_start(s), 0);
    ck_assert(th_wait_submitted(s, 1, WAIT_MS));
    m = th_take(s, 0);
    ck_assert_str_eq(th_host()->msg_id(m), "d9");
    /* not acked, then stopped: the next run gets d9 again (at-least-once) */
    th_stop(s);
    th_ack(s, m, ORDERD_OK, NULL);   /* a late ack of an abandoned page must not move the feed */
    th_msg_free(m);
    th_stage_free(s);
    s = feed_new(port, ckpt);
    ck_assert_int_eq(th_start(s), 0);
    ck_assert(th_wait_submitted(s, 1, WAIT_MS));
    m = th_take(s, 0);
    ck_assert_str_eq(th_host()->msg_id(m), "d9");
    th_ack(s, m, ORDERD_OK, NULL);
    th_msg_free(m);
    th_stage_free(s);
    json_decref(seen);
    kill_procs();
}
END_TEST

static Suite *cosmos_suite(void)
{
    Suite *su = suite_create("cosmos");
    TCase *unit = tcase_create("signature"), *peer = tcase_create("peer");

    tcase_add_test(unit, test_sign_vectors);
    tcase_add_test(unit, test_date_and_resource);
    tcase_set_timeout(peer, 60);
    tcase_add_test(peer, test_append_idempotent);
    tcase_add_test(peer, test_upsert_snapshot_etag);
    tcase_add_test(peer, test_lookup_events_and_token);
    tcase_add_test(peer, test_faults);
    tcase_add_test(peer, test_change_feed);
    suite_add_tcase(su, unit);
    suite_add_tcase(su, peer);
    return su;
}


int main(void)
{
    SRunner *sr = srunner_create(cosmos_suite());
    int failed;

    char top[600];
    const char *tmp = getenv("TMPDIR");

    /* Forked tests make their state dirs under this one, which main removes
     * whatever the tests did. */
    if (tmp != NULL)
        snprintf(orig_tmp, sizeof(orig_tmp), "%s", tmp);
    snprintf(top, sizeof(top), "%s/check_cosmos-XXXXXX", orig_tmp);
    if (mkdtemp(top) == NULL)
        return EXIT_FAILURE;
    setenv("TMPDIR", top, 1);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    th_cleanup();
    th_rm_tree(top);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
