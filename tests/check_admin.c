/* check_admin.c - the admin HTTP listener, over real sockets on loopback. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <check.h>
#include <jansson.h>

#include "admin.h"
#include "metrics.h"

/* ---- a tiny HTTP/1.1 client -------------------------------------------- */

struct resp {
    int     status;
    char   *head;   /* status line and headers */
    char   *body;
    size_t  body_len;
};

static int connect_to(int family, int port)
{
    struct sockaddr_storage ss;
    socklen_t len;
    struct timeval tv = { .tv_sec = 20 };
    int fd;

    memset(&ss, 0, sizeof(ss));
    if (family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        s6->sin6_addr = in6addr_loopback;
        len = sizeof(*s6);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof(*s4);
    }
    fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    /* A hung server fails the test instead of hanging it. */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    ck_assert_msg(connect(fd, (struct sockaddr *)&ss, len) == 0, "connect: %s", strerror(errno));
    return fd;
}

static void send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        ck_assert_msg(w > 0, "send: %s", strerror(errno));
        p += w;
        n -= (size_t)w;
    }
}

/* Read to EOF (requests say Connection: close) and split the response. */
static void read_resp(int fd, struct resp *r)
{
    size_t len = 0, cap = 65536;
    char *buf = malloc(cap), *sep;
    ssize_t n;

    ck_assert_ptr_nonnull(buf);
    for (;;) {
        if (len + 4096 > cap) {
            cap *= 2;
            ck_assert_ptr_nonnull(buf = realloc(buf, cap));
        }
        n = recv(fd, buf + len, cap - len - 1, 0);
        ck_assert_msg(n >= 0, "recv: %s", strerror(errno));
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    ck_assert_msg((sep = strstr(buf, "\r\n\r\n")) != NULL, "no header end in: %s", buf);
    ck_assert_int_eq(sscanf(buf, "HTTP/1.1 %d", &r->status), 1);
    r->head = strndup(buf, (size_t)(sep - buf) + 2);
    r->body_len = len - (size_t)(sep + 4 - buf);
    r->body = malloc(r->body_len + 1);
    memcpy(r->body, sep + 4, r->body_len);
    r->body[r->body_len] = '\0';
    free(buf);
}

static void request6(int family, int port, const char *method, const char *path,
                     const char *body, size_t body_len, struct resp *r)
{
    char head[1024];
    int fd = connect_to(family, port);

    if (body != NULL)
        snprintf(head, sizeof(head), "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                 "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n", method, path, body_len);
    else
        snprintf(head, sizeof(head), "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                 method, path);
    send_all(fd, head, strlen(head));
    if (body != NULL)
        send_all(fd, body, body_len);
    read_resp(fd, r);
}

static void request(int port, const char *method, const char *path, const char *body, struct resp *r)
{
    request6(AF_INET, port, method, path, body, body ? strlen(body) : 0, r);
}

/* Value of header name (case-insensitive), copied into a static buffer. */
static const char *header(const struct resp *r, const char *name)
{
    static char val[512];
    size_t n = strlen(name);

    for (const char *p = strstr(r->head, "\r\n"); p != NULL; p = strstr(p + 2, "\r\n")) {
        const char *l = p + 2, *end = strstr(l, "\r\n");
        if (end != NULL && strncasecmp(l, name, n) == 0 && l[n] == ':') {
            l += n + 1;
            while (*l == ' ')
                l++;
            snprintf(val, sizeof(val), "%.*s", (int)(end - l), l);
            return val;
        }
    }
    return NULL;
}

static void resp_free(struct resp *r)
{
    free(r->head);
    free(r->body);
}

static json_t *body_json(const struct resp *r)
{
    json_error_t err;
    json_t *j = json_loadb(r->body, r->body_len, 0, &err);

    ck_assert_msg(j != NULL, "body is not JSON (%s): %s", err.text, r->body);
    return j;
}

/* A problem document with this status, whose detail mentions `mention`. */
static void check_problem(const struct resp *r, int status, const char *title, const char *mention)
{
    json_t *j;

    ck_assert_int_eq(r->status, status);
    ck_assert_str_eq(header(r, "Content-Type"), "application/problem+json");
    j = body_json(r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "type")), "about:blank");
    ck_assert_str_eq(json_string_value(json_object_get(j, "title")), title);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "status")), status);
    ck_assert_ptr_nonnull(json_string_value(json_object_get(j, "detail")));
    if (mention != NULL)
        ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(j, "detail")), mention));
    json_decref(j);
}

static struct od_admin *start(const char *listen, int (*ready)(void *), void *arg)
{
    struct od_admin *a = NULL;

    ck_assert_int_eq(od_admin_start(listen, ready, arg, &a), 0);
    ck_assert_ptr_nonnull(a);
    ck_assert_int_gt(od_admin_port(a), 0);
    return a;
}

/* ---- tests ------------------------------------------------------------- */

START_TEST(test_healthz)
{
    struct od_admin *a = start("127.0.0.1:0", NULL, NULL);
    struct resp r;
    json_t *j;

    request(od_admin_port(a), "GET", "/healthz", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(header(&r, "Content-Type"), "application/json");
    j = body_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "ok");
    json_decref(j);
    resp_free(&r);

    /* HEAD: same status, no body. */
    request(od_admin_port(a), "HEAD", "/healthz", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_uint_eq(r.body_len, 0);
    resp_free(&r);
    od_admin_stop(a);
}
END_TEST

START_TEST(test_metrics_endpoint)
{
    struct od_admin *a = start("127.0.0.1:0", NULL, NULL);
    struct resp r;

    od_metrics_counter_add("orderd_test_total", "A test counter.", "pipeline=\"intake\"", 41);
    od_metrics_counter_add("orderd_test_total", "A test counter.", "pipeline=\"intake\"", 1);
    request(od_admin_port(a), "GET", "/metrics", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(header(&r, "Content-Type"), "text/plain; version=0.0.4"));
    ck_assert_ptr_nonnull(strstr(r.body, "# TYPE orderd_test_total counter\n"));
    ck_assert_ptr_nonnull(strstr(r.body, "orderd_test_total{pipeline=\"intake\"} 42\n"));
    resp_free(&r);
    od_admin_stop(a);
    od_metrics_shutdown();
}
END_TEST

START_TEST(test_not_found_and_method)
{
    struct od_admin *a = start("127.0.0.1:0", NULL, NULL);
    struct resp r;

    request(od_admin_port(a), "GET", "/nope", NULL, &r);
    check_problem(&r, 404, "Not Found", "/nope");
    resp_free(&r);
    /* A path that is a built-in's prefix or extension is not the built-in. */
    request(od_admin_port(a), "GET", "/metricsx", NULL, &r);
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    /* Odd bytes in the path still give valid JSON. */
    request(od_admin_port(a), "GET", "/%FF%22%0A", NULL, &r);
    check_problem(&r, 404, "Not Found", NULL);
    resp_free(&r);

    request(od_admin_port(a), "POST", "/metrics", "{}", &r);
    check_problem(&r, 405, "Method Not Allowed", "POST");
    ck_assert_str_eq(header(&r, "Allow"), "GET, HEAD");
    resp_free(&r);
    request(od_admin_port(a), "DELETE", "/readyz", NULL, &r);
    check_problem(&r, 405, "Method Not Allowed", NULL);
    ck_assert_str_eq(header(&r, "Allow"), "GET, HEAD");
    resp_free(&r);
    od_admin_stop(a);
}
END_TEST

static int ready_fn(void *arg)
{
    return atomic_load((atomic_int *)arg);
}

START_TEST(test_readyz_flips)
{
    atomic_int ready = 0;
    struct od_admin *a = start("127.0.0.1:0", ready_fn, &ready);
    struct resp r;
    json_t *j;

    request(od_admin_port(a), "GET", "/readyz", NULL, &r);
    ck_assert_int_eq(r.status, 503);
    ck_assert_str_eq(header(&r, "Content-Type"), "application/json");
    j = body_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "not ready");
    json_decref(j);
    resp_free(&r);

    atomic_store(&ready, 1);
    request(od_admin_port(a), "GET", "/readyz", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    j = body_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "ready");
    json_decref(j);
    resp_free(&r);

    atomic_store(&ready, 0);
    request(od_admin_port(a), "GET", "/readyz", NULL, &r);
    ck_assert_int_eq(r.status, 503);
    resp_free(&r);
    /* healthz does not depend on readiness */
    request(od_admin_port(a), "GET", "/healthz", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    od_admin_stop(a);
}
END_TEST

/* Echo handler: reports what it was given; tag tells routes apart. */
static int echo(void *arg, const char *method, const char *path, const char *query,
                const char *body, size_t body_len, int *status, char **resp_body,
                const char **content_type)
{
    json_t *j;

    ck_assert_int_eq(*status, 200);
    ck_assert_ptr_null(*resp_body);
    ck_assert_ptr_nonnull(query);
    if (body != NULL)
        ck_assert_uint_eq(strlen(body), body_len);   /* NUL-terminated, no embedded NUL here */
    j = json_pack("{s:s, s:s, s:s, s:s, s:I, s:s}", "tag", (const char *)arg, "method", method,
                  "path", path, "query", query, "len", (json_int_t)body_len,
                  "head", body != NULL ? (body_len > 64 ? "(long)" : body) : "(none)");
    *resp_body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    *status = strcmp(method, "POST") == 0 ? 201 : 200;
    *content_type = "application/vnd.orderd.test+json";
    return 0;
}

static int failing(void *arg, const char *method, const char *path, const char *query,
                   const char *body, size_t body_len, int *status, char **resp_body,
                   const char **content_type)
{
    *resp_body = strdup("partial");   /* must still be freed by the listener */
    return -EIO;
}

START_TEST(test_custom_routes)
{
    struct od_admin *a = start("127.0.0.1:0", NULL, NULL);
    int port = od_admin_port(a);
    struct resp r;
    json_t *j;

    ck_assert_int_eq(od_admin_route(a, "/v1/dlq", echo, "dlq"), 0);
    ck_assert_int_eq(od_admin_route(a, "/v1/dlq/special", echo, "special"), 0);
    ck_assert_int_eq(od_admin_route(a, "/v1/fail", failing, NULL), 0);
    ck_assert_int_eq(od_admin_route(a, "/v1/dlq", echo, "again"), -EEXIST);
    ck_assert_int_eq(od_admin_route(a, "/metrics", echo, "x"), -EEXIST);
    ck_assert_int_eq(od_admin_route(a, "v1", echo, "x"), -EINVAL);

    request(port, "POST", "/v1/dlq/replay?limit=10&after=a%20b&flag", "{\"x\":1}", &r);
    ck_assert_int_eq(r.status, 201);
    ck_assert_str_eq(header(&r, "Content-Type"), "application/vnd.orderd.test+json");
    j = body_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "tag")), "dlq");
    ck_assert_str_eq(json_string_value(json_object_get(j, "method")), "POST");
    ck_assert_str_eq(json_string_value(json_object_get(j, "path")), "/v1/dlq/replay");
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(j, "query")), "limit=10"));
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(j, "query")), "after=a%20b"));
    ck_assert_int_eq(json_integer_value(json_object_get(j, "len")), 7);
    ck_assert_str_eq(json_string_value(json_object_get(j, "head")), "{\"x\":1}");
    json_decref(j);
    resp_free(&r);

    /* Exact prefix, longest prefix, and a lookalike that is not under it. */
    request(port, "GET", "/v1/dlq", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    j = body_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "tag")), "dlq");
    ck_assert_str_eq(json_string_value(json_object_get(j, "query")), "");
    ck_assert_str_eq(json_string_value(json_object_get(j, "head")), "(none)");
    json_decref(j);
    resp_free(&r);
    request(port, "GET", "/v1/dlq/special/1", NULL, &r);
    j = body_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "tag")), "special");
    json_decref(j);
    resp_free(&r);
    request(port, "GET", "/v1/dlqx", NULL, &r);
    check_problem(&r, 404, "Not Found", "/v1/dlqx");
    resp_free(&r);

    request(port, "GET", "/v1/fail", NULL, &r);
    check_problem(&r, 500, "Internal Server Error", NULL);
    resp_free(&r);

    od_admin_unroute(a, "/v1/dlq");
    od_admin_unroute(a, "/not/there");
    request(port, "GET", "/v1/dlq/replay", NULL, &r);
    check_problem(&r, 404, "Not Found", NULL);
    resp_free(&r);
    request(port, "GET", "/v1/dlq/special", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    /* Routes left in place are freed by stop. */
    od_admin_stop(a);
}
END_TEST

START_TEST(test_body_limits)
{
    struct od_admin *a = start("127.0.0.1:0", NULL, NULL);
    int port = od_admin_port(a), fd;
    size_t big = OD_ADMIN_MAX_BODY;
    char *body = malloc(big + 1), head[512];
    struct resp r;
    json_t *j;

    ck_assert_int_eq(od_admin_route(a, "/echo", echo, "echo"), 0);
    memset(body, 'a', big + 1);

    /* Exactly the limit is accepted. */
    request6(AF_INET, port, "POST", "/echo", body, big, &r);
    ck_assert_int_eq(r.status, 201);
    j = body_json(&r);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "len")), (json_int_t)big);
    json_decref(j);
    resp_free(&r);

    /* A declared larger body is refused before it is sent. */
    fd = connect_to(AF_INET, port);
    snprintf(head, sizeof(head), "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
             "Content-Length: %zu\r\n\r\n", big + 1);
    send_all(fd, head, strlen(head));
    read_resp(fd, &r);
    check_problem(&r, 413, "Content Too Large", NULL);
    resp_free(&r);

    /* A chunked body that grows past the limit is refused too. */
    fd = connect_to(AF_INET, port);
    snprintf(head, sizeof(head), "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
             "Transfer-Encoding: chunked\r\n\r\n");
    send_all(fd, head, strlen(head));
    for (int i = 0; i < 3; i++) {
        snprintf(head, sizeof(head), "%zx\r\n", big / 2);
        send_all(fd, head, strlen(head));
        send_all(fd, body, big / 2);
        send_all(fd, "\r\n", 2);
    }
    send_all(fd, "0\r\n\r\n", 5);
    read_resp(fd, &r);
    check_problem(&r, 413, "Content Too Large", NULL);
    resp_free(&r);
    free(body);
    od_admin_stop(a);
}
END_TEST

START_TEST(test_bad_listen)
{
    static const char *const bad[] = {
        "", "nocolon", "127.0.0.1", "127.0.0.1:", ":9464", "127.0.0.1:65536",
        "127.0.0.1:12x", "127.0.0.1:-1", "[::1]9464", "[::1", "::1:9464", "[]:80",
        "[not-v6]:80", "127.0.0.1:99999999",
    };
    struct od_admin *a = (struct od_admin *)&a;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(od_admin_start(bad[i], NULL, NULL, &a) == -EINVAL, "'%s' accepted", bad[i]);
        ck_assert_ptr_null(a);
    }
}
END_TEST

START_TEST(test_address_in_use)
{
    struct od_admin *a = start("127.0.0.1:0", NULL, NULL), *b = NULL;
    char listen[64];

    snprintf(listen, sizeof(listen), "127.0.0.1:%d", od_admin_port(a));
    ck_assert_int_eq(od_admin_start(listen, NULL, NULL, &b), -EADDRINUSE);
    ck_assert_ptr_null(b);
    od_admin_stop(a);
    /* Once stopped, the port is free again right away (SO_REUSEADDR). */
    ck_assert_int_eq(od_admin_start(listen, NULL, NULL, &b), 0);
    od_admin_stop(b);
    od_admin_stop(NULL);
}
END_TEST

START_TEST(test_ipv6_loopback)
{
    struct od_admin *a = NULL;
    struct resp r;
    int rc = od_admin_start("[::1]:0", NULL, NULL, &a);

    if (rc == -EADDRNOTAVAIL || rc == -EAFNOSUPPORT) {
        fprintf(stderr, "test_ipv6_loopback: no IPv6 loopback here, skipped\n");
        return;
    }
    ck_assert_int_eq(rc, 0);
    request6(AF_INET6, od_admin_port(a), "GET", "/healthz", NULL, 0, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    od_admin_stop(a);
}
END_TEST

#define CLIENTS  6
#define REQUESTS 15

static int conc_port;

static void *client(void *arg)
{
    for (int i = 0; i < REQUESTS; i++) {
        struct resp r;
        request(conc_port, "GET", i % 2 ? "/metrics" : "/v1/x?i=1", NULL, &r);
        ck_assert_int_eq(r.status, 200);
        resp_free(&r);
    }
    return arg;
}

START_TEST(test_concurrent_requests)
{
    struct od_admin *a = start("127.0.0.1:0", NULL, NULL);
    pthread_t t[CLIENTS];

    ck_assert_int_eq(od_admin_route(a, "/v1", echo, "c"), 0);
    conc_port = od_admin_port(a);
    for (int i = 0; i < CLIENTS; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, client, NULL), 0);
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(t[i], NULL);
    od_admin_stop(a);
    od_metrics_shutdown();
}
END_TEST

static Suite *admin_suite(void)
{
    Suite *s = suite_create("admin");
    TCase *tc = tcase_create("http");

    tcase_add_test(tc, test_healthz);
    tcase_add_test(tc, test_metrics_endpoint);
    tcase_add_test(tc, test_not_found_and_method);
    tcase_add_test(tc, test_readyz_flips);
    tcase_add_test(tc, test_custom_routes);
    tcase_add_test(tc, test_body_limits);
    tcase_add_test(tc, test_bad_listen);
    tcase_add_test(tc, test_address_in_use);
    tcase_add_test(tc, test_ipv6_loopback);
    tcase_add_test(tc, test_concurrent_requests);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(admin_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
