/* check_orderctl.c - orderctl's formatting, argument parsing, submit summary,
 * and its HTTP client against a scripted server on 127.0.0.1.
 *
 * core/orderctl.c is included (its main renamed) so its static helpers can
 * be tested; the CLI end to end is in integration/orderctl*.sh.
 */
#define OCTL_MAIN octl_main
#include "../core/orderctl.c"

#include <check.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- formatting ------------------------------------------------------- */

START_TEST(bytes_human_readable)
{
    char b[32];

    octl_fmt_bytes(0, b, sizeof(b));             ck_assert_str_eq(b, "0 B");
    octl_fmt_bytes(1023, b, sizeof(b));          ck_assert_str_eq(b, "1023 B");
    octl_fmt_bytes(1024, b, sizeof(b));          ck_assert_str_eq(b, "1.0 KiB");
    octl_fmt_bytes(1536000, b, sizeof(b));       ck_assert_str_eq(b, "1.5 MiB");
    octl_fmt_bytes(1048575, b, sizeof(b));       ck_assert_str_eq(b, "1.0 MiB");    /* not "1024.0 KiB" */
    octl_fmt_bytes(3ULL << 30, b, sizeof(b));    ck_assert_str_eq(b, "3.0 GiB");
}
END_TEST

START_TEST(time_iso_utc)
{
    char b[40];

    octl_fmt_time_ms(0, b, sizeof(b));               ck_assert_str_eq(b, "1970-01-01T00:00:00.000Z");
    octl_fmt_time_ms(1795475771783LL, b, sizeof(b)); ck_assert_str_eq(b, "2026-11-23T23:16:11.783Z");
    octl_fmt_time_ms(-1, b, sizeof(b));              ck_assert_str_eq(b, "1969-12-31T23:59:59.999Z");
}
END_TEST

START_TEST(truncate_on_characters)
{
    char b[64];

    octl_fmt_truncate("short", 10, b, sizeof(b));          ck_assert_str_eq(b, "short");
    octl_fmt_truncate("exactly10!", 10, b, sizeof(b));     ck_assert_str_eq(b, "exactly10!");
    octl_fmt_truncate("this is too long", 10, b, sizeof(b)); ck_assert_str_eq(b, "this is...");
    /* é is two bytes: cut between characters, never inside one */
    octl_fmt_truncate("\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 4, b, sizeof(b));
    ck_assert_str_eq(b, "\xc3\xa9...");
    octl_fmt_truncate("two\nlines\there", 20, b, sizeof(b)); ck_assert_str_eq(b, "two lines here");
    octl_fmt_truncate("abcdefghijklmnop", 10, b, 8);       /* a small buffer still ends in NUL */
    ck_assert_uint_lt(strlen(b), 8);
}
END_TEST

START_TEST(url_escape_segments)
{
    char *e = octl_url_escape("a b/\xc3\xa7?x=1&y");

    ck_assert_str_eq(e, "a%20b%2F%C3%A7%3Fx%3D1%26y");
    free(e);
    e = octl_url_escape("orders-eu_1.x~");
    ck_assert_str_eq(e, "orders-eu_1.x~");
    free(e);
}
END_TEST

START_TEST(idempotency_key_stable)
{
    char a[96], b[96], c[96], d[96];

    octl_idempotency_key(7, "{\"id\":1}", 8, a, sizeof(a));
    octl_idempotency_key(7, "{\"id\":1}", 8, b, sizeof(b));
    octl_idempotency_key(8, "{\"id\":1}", 8, c, sizeof(c));
    octl_idempotency_key(7, "{\"id\":2}", 8, d, sizeof(d));
    ck_assert_str_eq(a, b);                 /* a re-run sends the same key */
    ck_assert_str_ne(a, c);                 /* the same order twice in a file is two orders */
    ck_assert_str_ne(a, d);                 /* an edited line is a new order */
    ck_assert_int_eq(strncmp(a, "orderctl-7-", 11), 0);
    ck_assert_uint_eq(strlen(a), 11 + 16);
    /* FNV-1a 64 reference value: "a" -> af63dc4c8601ec8c */
    ck_assert(octl_fnv1a("a", 1) == 0xaf63dc4c8601ec8cULL);
}
END_TEST

START_TEST(status_table)
{
    const char *doc =
        "{\"version\":\"0.1.0\",\"ready\":false,\"pipelines\":[{\"name\":\"orders\",\"in_flight\":3,"
        "\"queue_depth\":12,\"spool\":{\"bytes\":2048,\"records\":5},\"dead_letters\":2,\"stages\":["
        "{\"name\":\"http\",\"plugin\":\"http\",\"kind\":\"input\",\"in\":10,\"ok\":10,\"retry\":0,\"reject\":0,"
        "\"drop\":0,\"pending\":0},{\"name\":\"validate\",\"plugin\":\"validate\",\"kind\":\"transform\",\"in\":10,"
        "\"ok\":8,\"retry\":1,\"reject\":2,\"drop\":0,\"pending\":0}]},{\"name\":\"b\",\"in_flight\":0,"
        "\"queue_depth\":0,\"spool\":null,\"dead_letters\":0,\"stages\":[]}]}";
    json_t *st = json_loads(doc, 0, NULL);
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);

    ck_assert_ptr_nonnull(st);
    ck_assert_int_eq(octl_print_status(st, f), 0);
    fclose(f);
    ck_assert_str_eq(out,
        "orderd 0.1.0, NOT READY\n"
        "\n"
        "PIPELINE  IN FLIGHT  QUEUE            SPOOL  DEAD LETTERS\n"
        "orders            3     12  5 rec / 2.0 KiB             2\n"
        "b                 0      0                -             0\n"
        "\n"
        "pipeline orders:\n"
        "  STAGE     PLUGIN    KIND       IN  OK  RETRY  REJECT  DROP  PENDING\n"
        "  http      http      input      10  10      0       0     0        0\n"
        "  validate  validate  transform  10   8      1       2     0        0\n"
        "\n"
        "pipeline b:\n"
        "  STAGE  PLUGIN  KIND  IN  OK  RETRY  REJECT  DROP  PENDING\n");
    free(out);
    json_decref(st);
}
END_TEST

/* ---- argument parsing ------------------------------------------------- */

/* Parses a NULL-terminated argument list; o is left for the test to read
 * (free o->ids afterwards). */
static int parse(struct octl *o, const char *const *args)
{
    static char *argv[32];
    int argc = 0;

    argv[argc++] = (char *)"orderctl";
    for (; *args; args++)
        argv[argc++] = (char *)*args;
    argv[argc] = NULL;
    memset(o, 0, sizeof(*o));
    return octl_parse(o, argc, argv);
}

START_TEST(parse_defaults_and_env)
{
    struct octl o;

    unsetenv("ORDERCTL_ADMIN");
    ck_assert_int_eq(parse(&o, (const char *[]){ "status", NULL }), -1);
    ck_assert_str_eq(o.ahost, "127.0.0.1");
    ck_assert_str_eq(o.aport, "9464");
    ck_assert_int_eq(o.batch, 100);
    ck_assert_int_eq(o.concurrency, 8);
    ck_assert_int_eq(o.nargs, 1);
    setenv("ORDERCTL_ADMIN", "[::1]:9000", 1);
    ck_assert_int_eq(parse(&o, (const char *[]){ "status", NULL }), -1);
    ck_assert_str_eq(o.ahost, "::1");
    ck_assert_str_eq(o.aport, "9000");
    ck_assert_int_eq(parse(&o, (const char *[]){ "-a", "localhost:1234", "status", NULL }), -1);
    ck_assert_str_eq(o.ahost, "localhost");     /* -a beats the environment */
    unsetenv("ORDERCTL_ADMIN");
}
END_TEST

START_TEST(parse_options_anywhere)
{
    struct octl o;

    ck_assert_int_eq(parse(&o, (const char *[]){ "dead-letter", "replay", "orders", "--id", "a", "--batch", "7",
                                                 "--id", "b", "--json", NULL }), -1);
    ck_assert_int_eq(o.nargs, 3);
    ck_assert_str_eq(o.args[2], "orders");
    ck_assert_uint_eq(o.nids, 2);
    ck_assert_str_eq(o.ids[0], "a");
    ck_assert_str_eq(o.ids[1], "b");
    ck_assert_int_eq(o.batch, 7);
    ck_assert(o.json);
    ck_assert_uint_eq(o.seen, OPT_ID | OPT_BATCH);
    free(o.ids);
    ck_assert_int_eq(parse(&o, (const char *[]){ "submit", "-", "--concurrency", "3", "--idempotency", NULL }), -1);
    ck_assert_str_eq(o.args[1], "-");           /* "-" is standard input, not an option */
    ck_assert_int_eq(o.concurrency, 3);
    ck_assert(o.idempotency);
}
END_TEST

START_TEST(parse_usage_errors)
{
    struct octl o;
    FILE *saved = stderr;

    stderr = fopen("/dev/null", "w");   /* the messages are checked by the integration test */
    ck_assert_int_eq(parse(&o, (const char *[]){ NULL }), OCTL_EXIT_USAGE);
    ck_assert_int_eq(parse(&o, (const char *[]){ "--bogus", "status", NULL }), OCTL_EXIT_USAGE);
    ck_assert_int_eq(parse(&o, (const char *[]){ "status", "-a", NULL }), OCTL_EXIT_USAGE);
    ck_assert_int_eq(parse(&o, (const char *[]){ "-a", "9464", "status", NULL }), OCTL_EXIT_USAGE);
    ck_assert_int_eq(parse(&o, (const char *[]){ "-a", "h:99999", "status", NULL }), OCTL_EXIT_USAGE);
    ck_assert_int_eq(parse(&o, (const char *[]){ "--batch", "0", "dead-letter", NULL }), OCTL_EXIT_USAGE);
    ck_assert_int_eq(parse(&o, (const char *[]){ "--concurrency", "x", "submit", NULL }), OCTL_EXIT_USAGE);
    /* and, once parsed, commands check their words and options */
    ck_assert_int_eq(parse(&o, (const char *[]){ "status", "--yes", NULL }), -1);
    ck_assert_int_eq(octl_run(&o), OCTL_EXIT_USAGE);
    ck_assert_int_eq(parse(&o, (const char *[]){ "dead-letter", "replay", "p", NULL }), -1);
    ck_assert_int_eq(octl_run(&o), OCTL_EXIT_USAGE);     /* neither --all nor --id */
    ck_assert_int_eq(parse(&o, (const char *[]){ "dead-letter", "purge", "p", NULL }), -1);
    ck_assert_int_eq(octl_run(&o), OCTL_EXIT_USAGE);     /* no --yes: nothing is sent */
    ck_assert_int_eq(parse(&o, (const char *[]){ "dead-letter", "show", "p", NULL }), -1);
    ck_assert_int_eq(octl_run(&o), OCTL_EXIT_USAGE);
    ck_assert_int_eq(parse(&o, (const char *[]){ "submit", "f", "--api", "ftp://x", NULL }), -1);
    ck_assert_int_eq(octl_run(&o), OCTL_EXIT_USAGE);
    ck_assert_int_eq(parse(&o, (const char *[]){ "frobnicate", NULL }), -1);
    ck_assert_int_eq(octl_run(&o), OCTL_EXIT_USAGE);
    fclose(stderr);
    stderr = saved;
}
END_TEST

/* ---- submit summary --------------------------------------------------- */

static int report(struct octl_line *lines, size_t n, char **out)
{
    struct octl_submit s = { .lines = lines, .nlines = n };
    size_t len;
    FILE *f = open_memstream(out, &len);
    int rc = octl_submit_report(&s, f);

    fclose(f);
    return rc;
}

START_TEST(submit_summary_and_status)
{
    struct octl_line l[5] = {
        { .lineno = 1, .status = 202 }, { .lineno = 2, .status = 422, .detail = (char *)"bad total" },
        { .lineno = 4, .status = 400, .detail = (char *)"not JSON" }, { .lineno = 5, .status = 201 },
        { .lineno = 6, .status = 422, .detail = (char *)"bad id" },
    };
    char *out;

    ck_assert_int_eq(report(l, 5, &out), OCTL_EXIT_PARTIAL);
    ck_assert_str_eq(out, "line 2: 422 bad total\nline 4: 400 not JSON\nline 6: 422 bad id\n"
                          "submitted 5, accepted 2, rejected 3 (by status: 400 x1, 422 x2), failed 0\n");
    free(out);
    l[2].status = -ECONNREFUSED;
    ck_assert_int_eq(report(l, 5, &out), OCTL_EXIT_ERROR);
    ck_assert_ptr_nonnull(strstr(out, "line 4: not sent: Connection refused\n"));
    ck_assert_ptr_nonnull(strstr(out, "rejected 2 (by status: 422 x2), failed 1\n"));
    free(out);
    ck_assert_int_eq(report(l, 1, &out), OCTL_EXIT_OK);
    ck_assert_str_eq(out, "submitted 1, accepted 1, rejected 0, failed 0\n");
    free(out);
}
END_TEST

START_TEST(submit_lists_first_20)
{
    struct octl_line l[25];
    char *out;

    for (size_t i = 0; i < 25; i++)
        l[i] = (struct octl_line){ .lineno = i + 1, .status = 500, .detail = (char *)"boom" };
    ck_assert_int_eq(report(l, 25, &out), OCTL_EXIT_PARTIAL);
    ck_assert_ptr_nonnull(strstr(out, "line 20: 500 boom\n... and 5 more failing lines\n"));
    ck_assert_ptr_null(strstr(out, "line 21:"));
    free(out);
}
END_TEST

/* ---- HTTP client ------------------------------------------------------ */

START_TEST(parse_addresses)
{
    char h[64], p[16], pre[64];

    ck_assert_int_eq(hc_parse_hostport("127.0.0.1:9464", h, sizeof(h), p, sizeof(p)), 0);
    ck_assert_str_eq(h, "127.0.0.1");
    ck_assert_str_eq(p, "9464");
    ck_assert_int_eq(hc_parse_hostport("http://[::1]:80/", h, sizeof(h), p, sizeof(p)), 0);
    ck_assert_str_eq(h, "::1");
    ck_assert_int_eq(hc_parse_hostport("localhost", h, sizeof(h), p, sizeof(p)), -EINVAL);
    ck_assert_int_eq(hc_parse_hostport(":80", h, sizeof(h), p, sizeof(p)), -EINVAL);
    ck_assert_int_eq(hc_parse_hostport("h:0", h, sizeof(h), p, sizeof(p)), -EINVAL);
    ck_assert_int_eq(hc_parse_hostport("h:8x", h, sizeof(h), p, sizeof(p)), -EINVAL);
    ck_assert_int_eq(hc_parse_url("http://api.local/v1/", h, sizeof(h), p, sizeof(p), pre, sizeof(pre)), 0);
    ck_assert_str_eq(h, "api.local");
    ck_assert_str_eq(p, "80");
    ck_assert_str_eq(pre, "/v1");
    ck_assert_int_eq(hc_parse_url("http://127.0.0.1:8080", h, sizeof(h), p, sizeof(p), pre, sizeof(pre)), 0);
    ck_assert_str_eq(p, "8080");
    ck_assert_str_eq(pre, "");
    ck_assert_int_eq(hc_parse_url("https://x", h, sizeof(h), p, sizeof(p), pre, sizeof(pre)), -EPROTONOSUPPORT);
    ck_assert_int_eq(hc_parse_url("x:80", h, sizeof(h), p, sizeof(p), pre, sizeof(pre)), -EINVAL);
}
END_TEST

/* A scripted server: for connection i it answers script[i] (a list of raw
 * answers, one per request), then closes that connection. */
struct srv {
    int                 lfd;
    int                 port;
    const char *const  *const *script;
    char                last[4096];     /* the last request seen */
    int                 requests;
};

static int srv_read_request(int fd, char *buf, size_t sz)
{
    size_t n = 0;
    char *end;

    for (;;) {
        ssize_t r = recv(fd, buf + n, sz - n - 1, 0);

        if (r <= 0)
            return -1;
        n += (size_t)r;
        buf[n] = '\0';
        if ((end = strstr(buf, "\r\n\r\n")) != NULL) {
            const char *cl = strcasestr(buf, "Content-Length:");
            size_t want = (size_t)(end - buf) + 4 + (cl ? strtoul(cl + 15, NULL, 10) : 0);

            if (n >= want)
                return 0;
        }
    }
}

static void *srv_main(void *arg)
{
    struct srv *s = arg;

    for (size_t c = 0; s->script[c] != NULL; c++) {
        int fd = accept(s->lfd, NULL, NULL);

        if (fd < 0)
            break;
        for (size_t i = 0; s->script[c][i] != NULL; i++) {
            if (srv_read_request(fd, s->last, sizeof(s->last)) < 0)
                break;
            s->requests++;
            if (send(fd, s->script[c][i], strlen(s->script[c][i]), MSG_NOSIGNAL) < 0)
                break;
        }
        close(fd);
    }
    return NULL;
}

static void srv_start(struct srv *s, pthread_t *t)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof(a);

    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(s->lfd, 0);
    ck_assert_int_eq(bind(s->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(s->lfd, 4), 0);
    ck_assert_int_eq(getsockname(s->lfd, (struct sockaddr *)&a, &alen), 0);
    s->port = ntohs(a.sin_port);
    ck_assert_int_eq(pthread_create(t, NULL, srv_main, s), 0);
}

START_TEST(http_keepalive_chunked_and_reconnect)
{
    static const char *const conn1[] = {
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        "4\r\n{\"a\"\r\n5\r\n:1}\r\n\r\n0\r\nX-Trailer: y\r\n\r\n",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}",
        NULL,       /* then the server closes the idle connection */
    };
    static const char *const conn2[] = {
        "HTTP/1.1 202 Accepted\r\ncontent-length: 3\r\nConnection: close\r\n\r\nyes",
        NULL,
    };
    static const char *const conn3[] = { "HTTP/1.0 200 OK\r\n\r\nuntil EOF", NULL };
    static const char *const *const script[] = { conn1, conn2, conn3, NULL };
    static const char *const hdr[] = { "X-Test: 1", NULL };
    struct srv s = { .script = script };
    struct hc_conn c;
    struct hc_response r;
    char port[16];
    pthread_t t;

    srv_start(&s, &t);
    snprintf(port, sizeof(port), "%d", s.port);
    ck_assert_int_eq(hc_init(&c, "127.0.0.1", port, 5000), 0);

    ck_assert_int_eq(hc_request(&c, "GET", "/a", hdr, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "{\"a\":1}\r\n");
    ck_assert_str_eq(r.content_type, "application/json");
    ck_assert_ptr_nonnull(strstr(s.last, "GET /a HTTP/1.1\r\n"));
    ck_assert_ptr_nonnull(strstr(s.last, "X-Test: 1\r\n"));
    ck_assert_ptr_nonnull(strstr(s.last, "Host: 127.0.0.1:"));
    hc_response_free(&r);

    ck_assert_int_eq(hc_request(&c, "POST", "/b", NULL, "xyz", 3, &r), 0);    /* same connection */
    ck_assert_int_eq(r.status, 404);
    ck_assert_str_eq(r.body, "{}");
    ck_assert_ptr_nonnull(strstr(s.last, "Content-Length: 3\r\n\r\nxyz"));
    hc_response_free(&r);

    /* the server closed the kept-alive connection: sent again on a new one */
    ck_assert_int_eq(hc_request(&c, "POST", "/c", NULL, "{}", 2, &r), 0);
    ck_assert_int_eq(r.status, 202);
    ck_assert_str_eq(r.body, "yes");
    ck_assert_int_eq(c.fd, -1);     /* "Connection: close" honoured */
    hc_response_free(&r);

    ck_assert_int_eq(hc_request(&c, "GET", "/d", NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "until EOF");
    hc_response_free(&r);
    ck_assert_int_eq(s.requests, 4);

    pthread_join(t, NULL);
    close(s.lfd);
    hc_close(&c);
}
END_TEST

START_TEST(http_refused_and_malformed)
{
    static const char *const bad[] = { "SMTP ready\r\n\r\n", NULL };
    static const char *const *const script[] = { bad, NULL };
    struct srv s = { .script = script };
    struct hc_conn c;
    struct hc_response r;
    char port[16];
    pthread_t t;

    srv_start(&s, &t);
    snprintf(port, sizeof(port), "%d", s.port);
    ck_assert_int_eq(hc_init(&c, "127.0.0.1", port, 5000), 0);
    ck_assert_int_eq(hc_request(&c, "GET", "/", NULL, NULL, 0, &r), -EPROTO);
    hc_response_free(&r);
    pthread_join(t, NULL);
    close(s.lfd);   /* nothing listens on the port any more */
    ck_assert_int_eq(hc_request(&c, "GET", "/", NULL, NULL, 0, &r), -ECONNREFUSED);
    ck_assert_str_eq(hc_strerror(-ECONNREFUSED), "Connection refused");
    hc_response_free(&r);
    hc_close(&c);
}
END_TEST

static Suite *orderctl_suite(void)
{
    Suite *s = suite_create("orderctl");
    TCase *fmt = tcase_create("format"), *args = tcase_create("args"), *sub = tcase_create("submit"),
          *http = tcase_create("http");

    tcase_add_test(fmt, bytes_human_readable);
    tcase_add_test(fmt, time_iso_utc);
    tcase_add_test(fmt, truncate_on_characters);
    tcase_add_test(fmt, url_escape_segments);
    tcase_add_test(fmt, idempotency_key_stable);
    tcase_add_test(fmt, status_table);
    tcase_add_test(args, parse_defaults_and_env);
    tcase_add_test(args, parse_options_anywhere);
    tcase_add_test(args, parse_usage_errors);
    tcase_add_test(sub, submit_summary_and_status);
    tcase_add_test(sub, submit_lists_first_20);
    tcase_add_test(http, parse_addresses);
    tcase_add_test(http, http_keepalive_chunked_and_reconnect);
    tcase_add_test(http, http_refused_and_malformed);
    suite_add_tcase(s, fmt);
    suite_add_tcase(s, args);
    suite_add_tcase(s, sub);
    suite_add_tcase(s, http);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(orderctl_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
