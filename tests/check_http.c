/* check_http.c - the http input (Order API) driven over real sockets on
 * 127.0.0.1 with the harness's fake host recording what was submitted. */
#define _GNU_SOURCE
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "harness.h"
#include "msg.h"

struct resp {
    int     status;
    char   *head;   /* status line and headers */
    char   *body;
    json_t *json;   /* body parsed, or NULL */
};

static void resp_free(struct resp *r)
{
    free(r->head);
    free(r->body);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

/* The value of header name in r, copied into buf, or NULL. */
static const char *resp_header(const struct resp *r, const char *name, char *buf, size_t len)
{
    size_t n = strlen(name);

    for (const char *p = strstr(r->head, "\r\n"); p != NULL; p = strstr(p, "\r\n")) {
        p += 2;
        if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1;
            while (*v == ' ')
                v++;
            size_t vl = strcspn(v, "\r\n");
            snprintf(buf, len, "%.*s", (int)vl, v);
            return buf;
        }
    }
    return NULL;
}

static int connect_port(int port)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    ck_assert_int_ge(fd, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "connect: %s", strerror(errno));
    return fd;
}

/* Sends raw (a whole request) and reads the answer until the server closes. */
static int raw_request(int port, const char *raw, size_t rawlen, struct resp *r)
{
    int fd = connect_port(port);
    size_t off = 0, cap = 4096, len = 0;
    char *buf = malloc(cap);

    memset(r, 0, sizeof *r);
    ck_assert_ptr_nonnull(buf);
    while (off < rawlen) {
        ssize_t n = send(fd, raw + off, rawlen - off, MSG_NOSIGNAL);
        if (n <= 0)
            break;   /* the server may answer early and stop reading */
        off += (size_t)n;
    }
    for (;;) {
        if (len + 1 >= cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            ck_assert_ptr_nonnull(buf);
        }
        ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    char *sep = strstr(buf, "\r\n\r\n");
    if (sep == NULL || sscanf(buf, "HTTP/1.%*d %d", &r->status) != 1) {
        free(buf);
        return -1;
    }
    r->head = strndup(buf, (size_t)(sep - buf) + 2);
    r->body = strdup(sep + 4);
    r->json = json_loads(r->body, 0, NULL);
    free(buf);
    return r->status;
}

/* A request with Connection: close; extra is more header lines ("K: v\r\n"). */
static int request(int port, const char *method, const char *path, const char *extra,
                   const char *body, struct resp *r)
{
    char *raw = NULL;
    int n, rc;

    if (body != NULL)
        n = asprintf(&raw, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n%s\r\n%s",
                     method, path, strlen(body), extra ? extra : "", body);
    else
        n = asprintf(&raw, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s\r\n",
                     method, path, extra ? extra : "");
    ck_assert_int_gt(n, 0);
    rc = raw_request(port, raw, (size_t)n, r);
    free(raw);
    return rc;
}

static const char *jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static struct th_stage *start_stage(const char *conf)
{
    char text[4096];
    struct th_stage *s;

    snprintf(text, sizeof text, "listen = \"127.0.0.1:0\"; %s", conf ? conf : "");
    s = th_stage_new("http", ORDERD_INPUT, text);
    ck_assert_int_eq(th_start(s), 0);
    ck_assert_int_gt((int)th_metric(s, "http_port"), 0);
    return s;
}

static int port_of(struct th_stage *s)
{
    return (int)th_metric(s, "http_port");
}

static char *write_state_file(const char *name, const char *text)
{
    char *path = NULL;
    FILE *f;

    ck_assert_int_gt(asprintf(&path, "%s/%s", th_state_dir(), name), 0);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void teardown(void)
{
    th_set_lookup("ord-7", NULL);
    th_set_lookup("ord-8", NULL);
    th_cleanup();
}

#define ORDER "{\"customerId\":\"c-42\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"SKU-1\",\"qty\":2,\"price\":19.99}]}"

START_TEST(test_create_generated_id)
{
    struct th_stage *s = start_stage(NULL);
    struct resp r;
    char loc[256], want[256];

    ck_assert_int_eq(request(port_of(s), "POST", "/orders", NULL, ORDER, &r), 202);
    ck_assert_ptr_nonnull(r.json);
    const char *id = jstr(r.json, "id");
    ck_assert_ptr_nonnull(id);
    ck_assert_int_eq(strlen(id), 36);   /* a UUID */
    ck_assert_str_eq(jstr(r.json, "status"), "accepted");
    snprintf(want, sizeof want, "/orders/%s", id);
    ck_assert_ptr_nonnull(resp_header(&r, "Location", loc, sizeof loc));
    ck_assert_str_eq(loc, want);

    ck_assert_uint_eq(th_submitted(s), 1);
    orderd_msg *m = th_take(s, 0);
    const orderd_host *h = th_host();
    ck_assert_str_eq(h->msg_prop(m, "command"), "create");
    ck_assert_str_eq(h->msg_prop(m, "order_id"), id);
    ck_assert_str_eq(h->msg_partition_key(m), id);
    json_t *body = h->msg_body(m);
    ck_assert_str_eq(jstr(body, "id"), id);
    ck_assert_str_eq(jstr(body, "customerId"), "c-42");
    ck_assert_int_eq(json_array_size(json_object_get(body, "items")), 1);
    ck_assert_double_eq(th_metric(s, "http_requests_202"), 1);
    th_msg_free(m);
    resp_free(&r);
    th_stage_free(s);
}
END_TEST

START_TEST(test_create_client_id)
{
    struct th_stage *s = start_stage(NULL);
    struct resp r;
    char loc[256];

    ck_assert_int_eq(request(port_of(s), "POST", "/orders", NULL,
                             "{\"id\":\"ord-1001\",\"customerId\":\"c-1\"}", &r), 202);
    ck_assert_str_eq(jstr(r.json, "id"), "ord-1001");
    ck_assert_str_eq(resp_header(&r, "Location", loc, sizeof loc), "/orders/ord-1001");
    resp_free(&r);
    ck_assert_uint_eq(th_submitted(s), 1);
    orderd_msg *m = th_take(s, 0);
    ck_assert_str_eq(th_host()->msg_prop(m, "order_id"), "ord-1001");
    ck_assert_str_eq(jstr(th_host()->msg_body(m), "id"), "ord-1001");
    th_msg_free(m);

    /* A bad client id is refused, naming the field. */
    ck_assert_int_eq(request(port_of(s), "POST", "/orders", NULL, "{\"id\":\"a b\"}", &r), 422);
    ck_assert_str_eq(jstr(r.json, "field"), "/id");
    resp_free(&r);
    ck_assert_int_eq(request(port_of(s), "POST", "/orders", NULL, "{\"id\":7}", &r), 422);
    resp_free(&r);
    ck_assert_uint_eq(th_submitted(s), 1);
    th_stage_free(s);
}
END_TEST

#define NTHREADS 8
#define PER_THREAD 125

struct burst { int port; int ok; };

static void *burst_main(void *arg)
{
    struct burst *b = arg;
    struct resp r;

    for (int i = 0; i < PER_THREAD; i++) {
        if (request(b->port, "POST", "/orders", NULL, ORDER, &r) == 202)
            b->ok++;
        resp_free(&r);
    }
    return NULL;
}

/* NTHREADS clients posting at once; every order submitted exactly once. */
static void concurrent_posts(const char *conf)
{
    struct th_stage *s = start_stage(conf);
    pthread_t t[NTHREADS];
    struct burst b[NTHREADS];
    int ok = 0;

    for (int i = 0; i < NTHREADS; i++) {
        b[i] = (struct burst){ .port = port_of(s) };
        ck_assert_int_eq(pthread_create(&t[i], NULL, burst_main, &b[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(t[i], NULL);
        ok += b[i].ok;
    }
    ck_assert_int_eq(ok, NTHREADS * PER_THREAD);
    ck_assert_uint_eq(th_submitted(s), NTHREADS * PER_THREAD);
    json_t *seen = json_object();
    for (size_t i = 0; i < NTHREADS * PER_THREAD; i++) {
        orderd_msg *m = th_take(s, i);
        const char *id = th_host()->msg_prop(m, "order_id");
        ck_assert_ptr_null(json_object_get(seen, id));
        json_object_set_new(seen, id, json_true());
        th_msg_free(m);
    }
    ck_assert_uint_eq(json_object_size(seen), NTHREADS * PER_THREAD);
    json_decref(seen);
    th_stage_free(s);
}

START_TEST(test_concurrent_posts)
{
    concurrent_posts("threads = 4;");
}
END_TEST

START_TEST(test_concurrent_thread_per_connection)
{
    concurrent_posts("threads = 0;");
}
END_TEST

START_TEST(test_commands)
{
    struct th_stage *s = start_stage(NULL);
    struct resp r;
    const orderd_host *h = th_host();

    ck_assert_int_eq(request(port_of(s), "POST", "/orders/ord-1/pay", NULL, "{\"amount\":39.98}", &r), 202);
    ck_assert_str_eq(jstr(r.json, "id"), "ord-1");
    ck_assert_str_eq(jstr(r.json, "command"), "pay");
    ck_assert_str_eq(jstr(r.json, "status"), "accepted");
    resp_free(&r);
    /* No body at all is an empty command body. */
    ck_assert_int_eq(request(port_of(s), "POST", "/orders/ord-1/ship", NULL, NULL, &r), 202);
    resp_free(&r);
    ck_assert_uint_eq(th_submitted(s), 2);
    orderd_msg *m = th_take(s, 0);
    ck_assert_str_eq(h->msg_prop(m, "command"), "pay");
    ck_assert_str_eq(h->msg_prop(m, "order_id"), "ord-1");
    ck_assert_double_eq(json_real_value(json_object_get(h->msg_body(m), "amount")), 39.98);
    th_msg_free(m);
    m = th_take(s, 1);
    ck_assert_str_eq(h->msg_prop(m, "command"), "ship");
    ck_assert_int_eq(json_object_size(h->msg_body(m)), 0);
    ck_assert(json_is_object(h->msg_body(m)));
    th_msg_free(m);

    /* Bad command names and bodies. */
    ck_assert_int_eq(request(port_of(s), "POST", "/orders/ord-1/Pay", NULL, "{}", &r), 404);
    resp_free(&r);
    ck_assert_int_eq(request(port_of(s), "POST", "/orders/ord-1/pay", NULL, "[1]", &r), 400);
    resp_free(&r);
    ck_assert_uint_eq(th_submitted(s), 2);
    th_stage_free(s);
}
END_TEST

START_TEST(test_get_order)
{
    struct th_stage *s = start_stage(NULL);
    struct resp r;
    int port = port_of(s);

    th_set_lookup("ord-7", "{\"id\":\"ord-7\",\"status\":\"paid\",\"version\":2}");
    ck_assert_int_eq(request(port, "GET", "/orders/ord-7", NULL, NULL, &r), 200);
    ck_assert_str_eq(jstr(r.json, "status"), "paid");
    ck_assert_int_eq(json_integer_value(json_object_get(r.json, "version")), 2);
    resp_free(&r);

    ck_assert_int_eq(request(port, "GET", "/orders/nope", NULL, NULL, &r), 404);
    ck_assert_int_eq(json_integer_value(json_object_get(r.json, "status")), 404);
    resp_free(&r);

    /* Accepted but not yet in the store. */
    ck_assert_int_eq(request(port, "POST", "/orders", NULL, "{\"id\":\"ord-8\"}", &r), 202);
    resp_free(&r);
    ck_assert_int_eq(request(port, "GET", "/orders/ord-8", NULL, NULL, &r), 200);
    ck_assert_str_eq(jstr(r.json, "status"), "accepted");
    ck_assert(json_is_false(json_object_get(r.json, "processed")));
    resp_free(&r);
    /* Once the store has it, the snapshot is served and the pending entry goes. */
    th_set_lookup("ord-8", "{\"id\":\"ord-8\",\"status\":\"created\"}");
    ck_assert_int_eq(request(port, "GET", "/orders/ord-8", NULL, NULL, &r), 200);
    ck_assert_str_eq(jstr(r.json, "status"), "created");
    resp_free(&r);
    th_set_lookup("ord-8", NULL);
    ck_assert_int_eq(request(port, "GET", "/orders/ord-8", NULL, NULL, &r), 404);
    resp_free(&r);
    th_stage_free(s);
}
END_TEST

/* GET remembers at most pending_max accepted ids, the oldest going first. */
START_TEST(test_pending_max)
{
    struct th_stage *s = start_stage("pending_max = 3;");
    struct resp r;
    int port = port_of(s);
    static const char *const ids[] = { "p-1", "p-2", "p-3", "p-4", "p-5" };
    char body[64], path[64];

    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        snprintf(body, sizeof(body), "{\"id\":\"%s\"}", ids[i]);
        ck_assert_int_eq(request(port, "POST", "/orders", NULL, body, &r), 202);
        resp_free(&r);
    }
    for (int i = 1; i <= 5; i++) {
        snprintf(path, sizeof(path), "/orders/p-%d", i);
        ck_assert_int_eq(request(port, "GET", path, NULL, NULL, &r), i <= 2 ? 404 : 200);
        if (i > 2)
            ck_assert_str_eq(jstr(r.json, "status"), "accepted");
        resp_free(&r);
    }
    th_stage_free(s);

    /* As many ids as buckets (1024): chains form, and the oldest are
     * evicted from the middle and the ends of them. */
    s = start_stage("pending_max = 1000;");
    port = port_of(s);
    for (int i = 0; i < 1300; i++) {
        snprintf(body, sizeof(body), "{\"id\":\"q-%d\"}", i);
        ck_assert_int_eq(request(port, "POST", "/orders", NULL, body, &r), 202);
        resp_free(&r);
    }
    for (int i = 0; i < 1300; i++) {
        snprintf(path, sizeof(path), "/orders/q-%d", i);
        ck_assert_int_eq(request(port, "GET", path, NULL, NULL, &r), i < 300 ? 404 : 200);
        resp_free(&r);
    }
    th_stage_free(s);
}
END_TEST

START_TEST(test_idempotency)
{
    const char *conf = "idempotency_ttl = \"1h\";";
    struct th_stage *s = start_stage(conf);
    struct resp r1, r2;
    char v[64];
    const char *key = "Idempotency-Key: k-123\r\n";

    ck_assert_int_eq(request(port_of(s), "POST", "/orders", key, ORDER, &r1), 202);
    ck_assert_int_eq(request(port_of(s), "POST", "/orders", key, ORDER, &r2), 202);
    ck_assert_str_eq(r1.body, r2.body);
    ck_assert_ptr_nonnull(resp_header(&r2, "Idempotent-Replayed", v, sizeof v));
    ck_assert_ptr_null(resp_header(&r1, "Idempotent-Replayed", v, sizeof v));
    ck_assert_uint_eq(th_submitted(s), 1);

    orderd_msg *m = th_take(s, 0);
    const char *cmd_id = th_host()->msg_id(m);
    ck_assert_int_eq(strncmp(cmd_id, "idem-", 5), 0);
    ck_assert_str_eq(th_host()->msg_prop(m, "order_id"), jstr(r1.json, "id"));
    char *first_cmd_id = strdup(cmd_id);
    th_msg_free(m);

    /* Same key, different body. */
    resp_free(&r2);
    ck_assert_int_eq(request(port_of(s), "POST", "/orders", key, "{\"customerId\":\"other\"}", &r2), 422);
    ck_assert_str_eq(jstr(r2.json, "title"), "Idempotency-Key reused with a different request");
    resp_free(&r2);
    ck_assert_uint_eq(th_submitted(s), 1);

    /* Survives a restart of the stage (file in the state dir). */
    th_stage_free(s);
    s = start_stage(conf);
    ck_assert_int_eq(request(port_of(s), "POST", "/orders", key, ORDER, &r2), 202);
    ck_assert_str_eq(r1.body, r2.body);
    resp_free(&r2);
    ck_assert_uint_eq(th_submitted(s), 0);

    /* Another key gives another order. */
    ck_assert_int_eq(request(port_of(s), "POST", "/orders", "Idempotency-Key: k-124\r\n", ORDER, &r2), 202);
    ck_assert_str_ne(jstr(r2.json, "id"), jstr(r1.json, "id"));
    resp_free(&r2);
    ck_assert_uint_eq(th_submitted(s), 1);
    m = th_take(s, 0);
    ck_assert_str_ne(th_host()->msg_id(m), first_cmd_id);
    th_msg_free(m);
    free(first_cmd_id);
    resp_free(&r1);
    th_stage_free(s);
}
END_TEST

/* If the idempotency record is lost after the spool took the command (a
 * crash in between), the retry yields the very same command and order ids. */
START_TEST(test_idempotency_deterministic_ids)
{
    char *path = NULL;
    struct th_stage *s;
    struct resp r;
    char *ids[2][2];

    ck_assert_int_gt(asprintf(&path, "%s/idem-lost", th_state_dir()), 0);
    for (int i = 0; i < 2; i++) {
        char conf[512];
        unlink(path);   /* the record is gone */
        snprintf(conf, sizeof conf, "idempotency_file = \"%s\";", path);
        s = start_stage(conf);
        ck_assert_int_eq(request(port_of(s), "POST", "/orders", "Idempotency-Key: crash-1\r\n", ORDER, &r), 202);
        resp_free(&r);
        ck_assert_uint_eq(th_submitted(s), 1);
        orderd_msg *m = th_take(s, 0);
        ids[i][0] = strdup(th_host()->msg_id(m));
        ids[i][1] = strdup(th_host()->msg_prop(m, "order_id"));
        th_msg_free(m);
        th_stage_free(s);
    }
    ck_assert_str_eq(ids[0][0], ids[1][0]);
    ck_assert_str_eq(ids[0][1], ids[1][1]);
    for (int i = 0; i < 2; i++) {
        free(ids[i][0]);
        free(ids[i][1]);
    }
    free(path);
}
END_TEST

START_TEST(test_bad_requests)
{
    struct th_stage *s = start_stage("max_body = 64; max_header = 1024;");
    int port = port_of(s);
    struct resp r;
    char v[128];

    /* Malformed JSON: position of the error. */
    ck_assert_int_eq(request(port, "POST", "/orders", NULL, "{\n  \"a\": ,\n}", &r), 400);
    ck_assert_str_eq(resp_header(&r, "Content-Type", v, sizeof v), "application/problem+json");
    json_t *pos = json_object_get(r.json, "position");
    ck_assert_int_eq(json_integer_value(json_object_get(pos, "line")), 2);
    ck_assert_int_gt(json_integer_value(json_object_get(pos, "column")), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(r.json, "status")), 400);
    ck_assert_ptr_nonnull(jstr(r.json, "title"));
    ck_assert_ptr_nonnull(jstr(r.json, "type"));
    resp_free(&r);

    /* Not an object. */
    ck_assert_int_eq(request(port, "POST", "/orders", NULL, "[1,2]", &r), 400);
    resp_free(&r);

    /* Wrong media type. */
    const char *plain = "POST /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                        "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}";
    ck_assert_int_eq(raw_request(port, plain, strlen(plain), &r), 415);
    resp_free(&r);
    const char *vendor = "POST /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         "Content-Type: application/vnd.order+json; charset=utf-8\r\nContent-Length: 2\r\n\r\n{}";
    ck_assert_int_eq(raw_request(port, vendor, strlen(vendor), &r), 202);
    resp_free(&r);

    /* Too large, refused from the Content-Length before any body is sent. */
    const char *big = "POST /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      "Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n";
    ck_assert_int_eq(raw_request(port, big, strlen(big), &r), 413);
    resp_free(&r);
    /* Too large while streaming a chunked body. */
    char chunked[1024];
    char pad[201];
    memset(pad, ' ', 200);
    pad[200] = '\0';
    int n = snprintf(chunked, sizeof chunked,
                     "POST /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "%x\r\n{%s}\r\n0\r\n\r\n", 202, pad);
    ck_assert_int_eq(raw_request(port, chunked, (size_t)n, &r), 413);
    resp_free(&r);

    /* Headers over max_header (1 KiB here): 431 with a problem body, and
     * just under it accepted (the count is request line plus headers). */
    char hdr[2048];
    memset(hdr, 0, sizeof hdr);
    memcpy(hdr, "X-Pad: ", 7);
    memset(hdr + 7, 'a', 1100);
    memcpy(hdr + 1107, "\r\n", 2);
    char pad850[900];
    snprintf(pad850, sizeof pad850, "X-Pad: %.850s\r\n", hdr + 7);
    ck_assert_int_eq(request(port, "POST", "/orders", hdr, "{}", &r), 431);
    ck_assert_str_eq(resp_header(&r, "Content-Type", v, sizeof v), "application/problem+json");
    ck_assert_int_eq(json_integer_value(json_object_get(r.json, "status")), 431);
    ck_assert_ptr_nonnull(strstr(jstr(r.json, "detail"), "larger than 1024 bytes"));
    resp_free(&r);
    ck_assert_int_eq(request(port, "GET", "/orders/x?pad=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                             pad850, NULL, &r), 431);   /* the query counts too */
    resp_free(&r);
    ck_assert_int_eq(request(port, "GET", "/orders/x", pad850, NULL, &r), 404);
    resp_free(&r);
    hdr[7 + 700] = '\r';
    hdr[7 + 701] = '\n';
    hdr[7 + 702] = '\0';
    ck_assert_int_eq(request(port, "POST", "/orders", hdr, "[]", &r), 400);   /* read, then refused */
    resp_free(&r);

    /* Wrong method, with Allow; OPTIONS lists the methods. */
    ck_assert_int_eq(request(port, "DELETE", "/orders", NULL, NULL, &r), 405);
    ck_assert_str_eq(resp_header(&r, "Allow", v, sizeof v), "POST, OPTIONS");
    resp_free(&r);
    ck_assert_int_eq(request(port, "PUT", "/orders/ord-1", NULL, "{}", &r), 405);
    ck_assert_str_eq(resp_header(&r, "Allow", v, sizeof v), "GET, HEAD, OPTIONS");
    resp_free(&r);
    ck_assert_int_eq(request(port, "OPTIONS", "/orders/ord-1/pay", NULL, NULL, &r), 204);
    ck_assert_str_eq(resp_header(&r, "Allow", v, sizeof v), "POST, OPTIONS");
    resp_free(&r);
    ck_assert_int_eq(request(port, "GET", "/nothing", NULL, NULL, &r), 404);
    resp_free(&r);
    ck_assert_int_eq(request(port, "POST", "/orders", "Idempotency-Key: \x01\r\n", "{}", &r), 400);
    resp_free(&r);

    ck_assert_uint_eq(th_submitted(s), 1);   /* only the vendor +json one */
    ck_assert_double_eq(th_metric(s, "http_requests_413"), 2);
    th_stage_free(s);
}
END_TEST

START_TEST(test_schema)
{
    char *schema = write_state_file("order.schema.json",
        "{\"type\":\"object\",\"required\":[\"customerId\",\"items\"],"
        "\"properties\":{\"customerId\":{\"type\":\"string\"},"
        "\"items\":{\"type\":\"array\",\"minItems\":1,\"items\":{\"type\":\"object\","
        "\"properties\":{\"qty\":{\"type\":\"integer\",\"minimum\":1}}}}}}");
    char conf[1024];
    struct resp r;

    snprintf(conf, sizeof conf, "schema = \"%s\";", schema);
    struct th_stage *s = start_stage(conf);
    ck_assert_int_eq(request(port_of(s), "POST", "/orders", NULL, "{\"items\":[{\"qty\":1}]}", &r), 422);
    ck_assert_str_eq(jstr(r.json, "field"), "/customerId");
    resp_free(&r);
    ck_assert_int_eq(request(port_of(s), "POST", "/orders", NULL,
                             "{\"customerId\":\"c\",\"items\":[{\"qty\":1},{\"qty\":0}]}", &r), 422);
    ck_assert_str_eq(jstr(r.json, "field"), "/items/1/qty");
    ck_assert_ptr_nonnull(strstr(jstr(r.json, "detail"), "minimum"));
    resp_free(&r);
    ck_assert_uint_eq(th_submitted(s), 0);
    ck_assert_int_eq(request(port_of(s), "POST", "/orders", NULL, ORDER, &r), 202);
    resp_free(&r);
    ck_assert_uint_eq(th_submitted(s), 1);
    th_stage_free(s);
    free(schema);
}
END_TEST

/* A create the schema passes on its text alone goes on as text: compact,
 * a generated id added last, no tree built (m->body stays NULL until a
 * stage asks).  One the text check leaves to the tree (an escape) goes on
 * as a tree; both are accepted, and an invalid one is still answered by
 * the tree path with its field. */
START_TEST(test_create_as_text)
{
    const char *top = getenv("TOP_SRCDIR");
    const orderd_host *h = th_host();
    char conf[1024], want[512];
    struct resp r;
    orderd_msg *m;
    size_t len;

    snprintf(conf, sizeof conf, "schema = \"%s/etc/orderd/order.schema.json\";", top ? top : "..");
    struct th_stage *s = start_stage(conf);

    ck_assert_int_eq(request(port_of(s), "POST", "/orders", NULL,
                             " { \"customerId\" : \"c-42\",\n\t\"currency\":\"EUR\", \"note\": \"a b\","
                             " \"items\": [ {\"sku\":\"SKU-1\",\"qty\":2,\"price\":19.990} ] }\r\n", &r), 202);
    snprintf(want, sizeof want, "{\"customerId\":\"c-42\",\"currency\":\"EUR\",\"note\":\"a b\","
             "\"items\":[{\"sku\":\"SKU-1\",\"qty\":2,\"price\":19.990}],\"id\":\"%s\"}", jstr(r.json, "id"));
    resp_free(&r);
    ck_assert_uint_eq(th_submitted(s), 1);
    m = th_take(s, 0);
    ck_assert_ptr_null(m->body);
    ck_assert_str_eq(h->msg_body_text(m, &len), want);
    ck_assert_uint_eq(len, strlen(want));
    ck_assert_str_eq(jstr(h->msg_body(m), "currency"), "EUR");   /* the tree, when asked */
    th_msg_free(m);

    /* the client's id: the text as sent */
    static const char with_id[] = "{\"id\":\"ord-9\",\"customerId\":\"c\",\"currency\":\"EUR\","
                                   "\"items\":[{\"sku\":\"S\",\"qty\":1,\"price\":1}]}";
    ck_assert_int_eq(request(port_of(s), "POST", "/orders", NULL, with_id, &r), 202);
    ck_assert_str_eq(jstr(r.json, "id"), "ord-9");
    resp_free(&r);
    m = th_take(s, 1);
    ck_assert_ptr_null(m->body);
    ck_assert_str_eq(h->msg_body_text(m, NULL), with_id);
    ck_assert_str_eq(h->msg_prop(m, "order_id"), "ord-9");
    th_msg_free(m);

    /* an escape: the tree path, same outcome */
    ck_assert_int_eq(request(port_of(s), "POST", "/orders", NULL,
                             "{\"customerId\":\"c\\u00e9\",\"currency\":\"EUR\","
                             "\"items\":[{\"sku\":\"S\",\"qty\":1,\"price\":1}]}", &r), 202);
    resp_free(&r);
    m = th_take(s, 2);
    ck_assert_ptr_nonnull(m->body);
    ck_assert_str_eq(jstr(m->body, "customerId"), "c\xc3\xa9");
    ck_assert_ptr_nonnull(jstr(m->body, "id"));
    th_msg_free(m);

    /* invalid: answered by the tree path, naming the field; nothing submitted */
    ck_assert_int_eq(request(port_of(s), "POST", "/orders", NULL,
                             "{\"customerId\":\"c\",\"currency\":\"EUR\","
                             "\"items\":[{\"sku\":\"S\",\"qty\":0,\"price\":1}]}", &r), 422);
    ck_assert_str_eq(jstr(r.json, "field"), "/items/0/qty");
    resp_free(&r);
    ck_assert_int_eq(request(port_of(s), "POST", "/orders", NULL,
                             "{\"customerId\":\"c\",\"customerId\":\"d\",\"currency\":\"EUR\","
                             "\"items\":[{\"sku\":\"S\",\"qty\":1,\"price\":1}]}", &r), 400);
    resp_free(&r);
    ck_assert_uint_eq(th_submitted(s), 3);
    th_stage_free(s);
}
END_TEST

START_TEST(test_auth)
{
    char *keys = write_state_file("keys", "# partners\nsecret-1\n\n  secret-2  \n");
    char conf[1024], v[128];
    struct resp r;

    snprintf(conf, sizeof conf, "api_keys_file = \"%s\";", keys);
    struct th_stage *s = start_stage(conf);
    int port = port_of(s);

    ck_assert_int_eq(request(port, "POST", "/orders", NULL, ORDER, &r), 401);
    ck_assert_ptr_nonnull(resp_header(&r, "WWW-Authenticate", v, sizeof v));
    ck_assert_int_eq(strncmp(v, "Bearer", 6), 0);
    resp_free(&r);
    ck_assert_int_eq(request(port, "POST", "/orders", "Authorization: Bearer secret-\r\n", ORDER, &r), 401);
    resp_free(&r);
    ck_assert_int_eq(request(port, "POST", "/orders", "Authorization: Bearer secret-10\r\n", ORDER, &r), 401);
    resp_free(&r);
    ck_assert_int_eq(request(port, "GET", "/orders/x", "X-API-Key: # partners\r\n", NULL, &r), 401);
    resp_free(&r);
    ck_assert_uint_eq(th_submitted(s), 0);

    ck_assert_int_eq(request(port, "POST", "/orders", "Authorization: Bearer secret-1\r\n", ORDER, &r), 202);
    resp_free(&r);
    ck_assert_int_eq(request(port, "POST", "/orders", "X-API-Key: secret-2\r\n", ORDER, &r), 202);
    resp_free(&r);
    ck_assert_uint_eq(th_submitted(s), 2);
    /* Liveness probes need no key. */
    ck_assert_int_eq(request(port, "GET", "/healthz", NULL, NULL, &r), 200);
    resp_free(&r);
    th_stage_free(s);
    free(keys);
}
END_TEST

START_TEST(test_submit_failures)
{
    struct th_stage *s = start_stage("retry_after = \"1500ms\";");
    int port = port_of(s);
    struct resp r;
    char v[64];
    const char *key = "Idempotency-Key: full-1\r\n";

    th_set_submit_result(s, -ENOSPC);
    ck_assert_int_eq(request(port, "POST", "/orders", key, ORDER, &r), 503);
    ck_assert_str_eq(resp_header(&r, "Retry-After", v, sizeof v), "2");
    resp_free(&r);
    th_set_submit_result(s, -ESHUTDOWN);
    ck_assert_int_eq(request(port, "POST", "/orders/o-1/pay", NULL, NULL, &r), 503);
    resp_free(&r);
    th_set_submit_result(s, -EIO);
    ck_assert_int_eq(request(port, "POST", "/orders", key, ORDER, &r), 500);
    resp_free(&r);
    ck_assert_uint_eq(th_submitted(s), 0);

    /* Nothing was recorded for the key: the retry is submitted for real. */
    th_set_submit_result(s, 0);
    ck_assert_int_eq(request(port, "POST", "/orders", key, ORDER, &r), 202);
    ck_assert_ptr_null(resp_header(&r, "Idempotent-Replayed", v, sizeof v));
    resp_free(&r);
    ck_assert_uint_eq(th_submitted(s), 1);
    th_stage_free(s);
}
END_TEST

START_TEST(test_keepalive)
{
    struct th_stage *s = start_stage(NULL);
    int fd = connect_port(port_of(s));
    const char *req = "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: 2\r\n\r\n{}";
    char buf[4096];
    int answers = 0;

    /* Three requests on one connection, each answered before the next. */
    for (int i = 0; i < 3; i++) {
        size_t len = 0;
        char *end = NULL;
        long clen = -1;
        ck_assert_int_eq(send(fd, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
        /* Read exactly one response: headers, then Content-Length bytes. */
        while (end == NULL || len < (size_t)(end - buf) + 4 + (size_t)clen) {
            ssize_t n = recv(fd, buf + len, sizeof buf - 1 - len, 0);
            ck_assert_int_gt(n, 0);
            len += (size_t)n;
            buf[len] = '\0';
            if (end == NULL && (end = strstr(buf, "\r\n\r\n")) != NULL) {
                char *cl = strcasestr(buf, "Content-Length:");
                ck_assert_ptr_nonnull(cl);
                clen = strtol(cl + 15, NULL, 10);
            }
        }
        ck_assert_uint_eq(len, (size_t)(end - buf) + 4 + (size_t)clen);
        if (strncmp(buf, "HTTP/1.1 202", 12) == 0)
            answers++;
    }
    close(fd);
    ck_assert_int_eq(answers, 3);
    ck_assert_uint_eq(th_submitted(s), 3);   /* each 202 came after its submit */
    th_stage_free(s);
}
END_TEST

START_TEST(test_bad_config)
{
    char err[2048];

    ck_assert_ptr_null(th_stage_try("http", ORDERD_INPUT, "listen = \"nohostport\";", err, sizeof err));
    ck_assert_ptr_null(th_stage_try("http", ORDERD_INPUT, "tls_cert = \"/etc/hostname\";", err, sizeof err));
    char *keys = write_state_file("empty-keys", "# none\n");
    char conf[512];
    snprintf(conf, sizeof conf, "api_keys_file = \"%s\";", keys);
    ck_assert_ptr_null(th_stage_try("http", ORDERD_INPUT, conf, err, sizeof err));
    free(keys);
    /* The schema knows the choices; the plugin knows what they need. */
    ck_assert_ptr_null(th_stage_try("http", ORDERD_INPUT, "acknowledge = \"done\";", err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "acknowledge"));
    /* "processed" needs submit_async, which this (ABI 1.0 style) fake host
     * lacks, and an event thread: refused at create(), never a hang. */
    ck_assert_ptr_null(th_stage_try("http", ORDERD_INPUT, "acknowledge = \"processed\";", err, sizeof err));
    ck_assert_ptr_null(th_stage_try("http", ORDERD_INPUT, "acknowledge = \"processed\"; threads = 0;",
                                    err, sizeof err));
}
END_TEST

/* Runs argv (stdin from /dev/null), capturing stdout into out.
 * RETURNS: the exit status, or -1. */
static int run_capture(char *const argv[], char *out, size_t outlen)
{
    int pfd[2];
    pid_t pid;
    size_t len = 0;
    int st;

    ck_assert_int_eq(pipe(pfd), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        dup2(devnull, 2);
        dup2(pfd[1], 1);
        close(pfd[0]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(pfd[1]);
    for (;;) {
        ssize_t n = read(pfd[0], out + len, outlen - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    out[len] = '\0';
    close(pfd[0]);
    if (waitpid(pid, &st, 0) != pid)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(test_tls)
{
    char *cert = NULL, *key = NULL, conf[1024], url[128], out[4096];

    if (access("/usr/bin/openssl", X_OK) != 0 || access("/usr/bin/curl", X_OK) != 0) {
        fprintf(stderr, "test_tls: needs /usr/bin/openssl and /usr/bin/curl, skipped\n");
        return;
    }
    ck_assert_int_gt(asprintf(&cert, "%s/tls.crt", th_state_dir()), 0);
    ck_assert_int_gt(asprintf(&key, "%s/tls.key", th_state_dir()), 0);
    char *gen[] = { "/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", key, "-out", cert, NULL };
    ck_assert_int_eq(run_capture(gen, out, sizeof out), 0);
    snprintf(conf, sizeof conf, "tls_cert = \"%s\"; tls_key = \"%s\";", cert, key);
    struct th_stage *s = start_stage(conf);

    snprintf(url, sizeof url, "https://127.0.0.1:%d/orders", port_of(s));
    char *post[] = { "/usr/bin/curl", "-sk", "-H", "Content-Type: application/json", "-d",
                     "{\"id\":\"tls-1\"}", "-w", "\n%{http_code}", url, NULL };
    ck_assert_int_eq(run_capture(post, out, sizeof out), 0);
    ck_assert_ptr_nonnull(strstr(out, "\"id\":\"tls-1\""));
    ck_assert_ptr_nonnull(strstr(out, "\n202"));
    ck_assert_uint_eq(th_submitted(s), 1);

    /* Plain HTTP on the TLS port gets no HTTP answer. */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/orders", port_of(s));
    char *plain[] = { "/usr/bin/curl", "-s", "-m", "5", "-H", "Content-Type: application/json",
                      "-d", "{}", "-w", "%{http_code}", url, NULL };
    run_capture(plain, out, sizeof out);
    ck_assert_ptr_null(strstr(out, "202"));
    ck_assert_uint_eq(th_submitted(s), 1);
    th_stage_free(s);
    free(cert);
    free(key);
}
END_TEST

static Suite *http_suite(void)
{
    Suite *su = suite_create("http");
    TCase *tc = tcase_create("api");

    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_create_generated_id);
    tcase_add_test(tc, test_create_client_id);
    tcase_add_test(tc, test_create_as_text);
    tcase_add_test(tc, test_concurrent_posts);
    tcase_add_test(tc, test_concurrent_thread_per_connection);
    tcase_add_test(tc, test_commands);
    tcase_add_test(tc, test_get_order);
    tcase_add_test(tc, test_pending_max);
    tcase_add_test(tc, test_idempotency);
    tcase_add_test(tc, test_idempotency_deterministic_ids);
    tcase_add_test(tc, test_bad_requests);
    tcase_add_test(tc, test_schema);
    tcase_add_test(tc, test_auth);
    tcase_add_test(tc, test_submit_failures);
    tcase_add_test(tc, test_keepalive);
    tcase_add_test(tc, test_bad_config);
    tcase_add_test(tc, test_tls);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    SRunner *sr = srunner_create(http_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
