/* check_enrich.c - the `enrich` transform: table merge, partner HTTP with
 * cache and circuit breaker.
 *
 * The partner is tests/tools/partner.py, started once by the (unchecked,
 * parent-process) fixture and stopped by PID, so a failing test cannot leave
 * it running.  It logs one line per request, which is how the tests see
 * cache hits and an open breaker; its behaviour is switched with a mode file. */
#include "config.h"

#include <check.h>
#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "msg.h"

static char tmpdir[256];
static struct th_peer partner;

static void path_in(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmpdir, name);
}

static void write_file(const char *name, const char *text)
{
    char path[512];
    FILE *f;

    path_in(path, sizeof(path), name);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
}

static void set_mode(const char *mode)
{
    write_file("mode", mode);
}

/* Requests the partner has seen since the last reset. */
static int partner_requests(void)
{
    char path[512], line[512];
    FILE *f;
    int n = 0;

    path_in(path, sizeof(path), "requests.log");
    f = fopen(path, "r");
    if (f == NULL)
        return 0;
    while (fgets(line, sizeof(line), f) != NULL)
        n++;
    fclose(f);
    return n;
}

static void reset_partner(void)
{
    write_file("requests.log", "");
    set_mode("ok");
}


static void partner_start(void)
{
    char script[512], portf[512], data[512], log[512], mode[512];
    const char *src = getenv("TESTS_SRCDIR");
    int rc;

    snprintf(tmpdir, sizeof(tmpdir), "%s/check-enrich-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    write_file("partner.json", "{\"SKU-1\": {\"warehouse\": \"BER-1\", \"stock\": 5, \"price\": 18.5},"
                               " \"SKU 2/x\": {\"warehouse\": \"HAM-2\"}}");
    reset_partner();
    snprintf(script, sizeof(script), "%s/tools/partner.py", src ? src : ".");
    path_in(portf, sizeof(portf), "port");
    path_in(data, sizeof(data), "partner.json");
    path_in(log, sizeof(log), "requests.log");
    path_in(mode, sizeof(mode), "mode");

    const char *const argv[] = { "/usr/bin/python3", script, "--port-file", portf, "--data", data,
                                 "--log", log, "--mode-file", mode, NULL };
    rc = th_peer_start(&partner, argv, NULL, portf, 10000);
    ck_assert_msg(rc == 0, "partner.py did not start: %s", strerror(-rc));
}

static void partner_stop(void)
{
    th_peer_stop(&partner);
    if (tmpdir[0] != '\0')
        th_rm_tree(tmpdir);
    tmpdir[0] = '\0';
}

static struct th_stage *stage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static struct th_stage *stage(const char *fmt, ...)
{
    char conf[2048];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(conf, sizeof(conf), fmt, ap);
    va_end(ap);
    return th_stage_new("enrich", ORDERD_TRANSFORM, conf);
}

static orderd_msg *run(struct th_stage *s, const char *body, orderd_outcome want)
{
    orderd_msg *m = th_msg(body);
    orderd_outcome o = th_process(s, m);

    ck_assert_msg(o == want, "outcome %d, want %d (%s)", o, want,
                  th_host()->msg_reason(m) ? th_host()->msg_reason(m) : "");
    return m;
}

static json_t *item(orderd_msg *m, size_t i)
{
    return json_array_get(json_object_get(th_host()->msg_body(m), "items"), i);
}

static const char *str(json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));

    return v ? v : "(absent)";
}

static const char *three_items =
    "{\"id\": \"o1\", \"items\": [{\"sku\": \"SKU-1\", \"qty\": 1, \"price\": 17.5},"
    " {\"sku\": \"SKU-2\", \"qty\": 1}, {\"sku\": \"SKU-3\", \"qty\": 1}]}";

START_TEST(test_table)
{
    char table[512];
    struct th_stage *s;
    orderd_msg *m;

    write_file("table.json", "{\"SKU-1\": {\"price\": 19.99, \"warehouse\": \"BER-1\"},"
                             " \"SKU-2\": {\"warehouse\": \"HAM-2\", \"sku\": \"IGNORED\"}}");
    path_in(table, sizeof(table), "table.json");

    s = stage("table = \"%s\";", table);
    m = run(s, three_items, ORDERD_OK);
    ck_assert_double_eq(json_real_value(json_object_get(item(m, 0), "price")), 17.5);  /* kept */
    ck_assert_str_eq(str(item(m, 0), "warehouse"), "BER-1");
    ck_assert_str_eq(str(item(m, 1), "warehouse"), "HAM-2");
    ck_assert_str_eq(str(item(m, 1), "sku"), "SKU-2");       /* the key itself never changes */
    ck_assert_str_eq(str(item(m, 2), "warehouse"), "(absent)");
    th_msg_free(m);
    th_stage_free(s);

    s = stage("table = \"%s\"; overwrite = true;", table);
    m = run(s, three_items, ORDERD_OK);
    ck_assert_double_eq(json_real_value(json_object_get(item(m, 0), "price")), 19.99);
    th_msg_free(m);
    th_stage_free(s);

    s = stage("table = \"%s\"; on_missing = \"reject\";", table);
    m = run(s, three_items, ORDERD_REJECT);
    ck_assert_str_eq(th_host()->msg_reason(m), "/items/2: no table entry for sku \"SKU-3\"");
    th_msg_free(m);
    th_stage_free(s);

    /* the body itself, by another key */
    write_file("customers.json", "{\"c-42\": {\"tier\": \"gold\"}}");
    path_in(table, sizeof(table), "customers.json");
    s = stage("table = \"%s\"; key = \"customerId\"; target = \"body\";", table);
    m = run(s, "{\"customerId\": \"c-42\", \"items\": []}", ORDERD_OK);
    ck_assert_str_eq(str(th_host()->msg_body(m), "tier"), "gold");
    th_msg_free(m);
    th_stage_free(s);
}
END_TEST

START_TEST(test_bad_config)
{
    char err[2048], conf[600];

    /* neither table nor url */
    ck_assert_ptr_null(th_stage_try("enrich", ORDERD_TRANSFORM, "", err, sizeof(err)));
    /* a table that is not JSON */
    write_file("bad.json", "{\"SKU-1\": ");
    snprintf(conf, sizeof(conf), "table = \"%s/bad.json\";", tmpdir);
    ck_assert_ptr_null(th_stage_try("enrich", ORDERD_TRANSFORM, conf, err, sizeof(err)));
    /* a table that is JSON but not an object */
    write_file("bad.json", "[1]");
    ck_assert_ptr_null(th_stage_try("enrich", ORDERD_TRANSFORM, conf, err, sizeof(err)));
}
END_TEST

START_TEST(test_http_merge_and_cache)
{
    struct th_stage *s;
    orderd_msg *m;

    reset_partner();
    s = stage("url = \"http://127.0.0.1:%d/sku/{key}\";", partner.port);
    m = run(s, "{\"items\": [{\"sku\": \"SKU-1\", \"price\": 17.5}, {\"sku\": \"SKU 2/x\"},"
               " {\"sku\": \"SKU-1\"}, {\"sku\": \"SKU-404\"}]}", ORDERD_OK);
    ck_assert_str_eq(str(item(m, 0), "warehouse"), "BER-1");
    ck_assert_int_eq(json_integer_value(json_object_get(item(m, 0), "stock")), 5);
    ck_assert_double_eq(json_real_value(json_object_get(item(m, 0), "price")), 17.5);
    ck_assert_str_eq(str(item(m, 1), "warehouse"), "HAM-2");   /* key is URL-encoded */
    ck_assert_str_eq(str(item(m, 2), "warehouse"), "BER-1");
    ck_assert_str_eq(str(item(m, 3), "warehouse"), "(absent)"); /* 404: left as is */
    th_msg_free(m);
    /* SKU-1 asked once, the repeat came from the cache */
    ck_assert_int_eq(partner_requests(), 3);

    /* a second order: all from the cache, 404 included */
    m = run(s, "{\"items\": [{\"sku\": \"SKU-1\"}, {\"sku\": \"SKU-404\"}]}", ORDERD_OK);
    ck_assert_str_eq(str(item(m, 0), "warehouse"), "BER-1");
    th_msg_free(m);
    ck_assert_int_eq(partner_requests(), 3);
    ck_assert_double_eq(th_metric(s, "cache_hits"), 3);
    th_stage_free(s);

    /* require: a 404 rejects; overwrite: partner values win */
    s = stage("url = \"http://127.0.0.1:%d/sku/{key}\"; require = true; overwrite = true;", partner.port);
    m = run(s, "{\"items\": [{\"sku\": \"SKU-1\", \"price\": 1}, {\"sku\": \"SKU-404\"}]}", ORDERD_REJECT);
    ck_assert_double_eq(json_real_value(json_object_get(item(m, 0), "price")), 18.5);
    ck_assert_str_eq(th_host()->msg_reason(m), "/items/1: partner has no record for sku \"SKU-404\"");
    th_msg_free(m);
    th_stage_free(s);

    /* cache_max bounds the cache: the oldest answer is evicted */
    reset_partner();
    s = stage("url = \"http://127.0.0.1:%d/sku/{key}\"; cache_max = 1;", partner.port);
    m = run(s, "{\"items\": [{\"sku\": \"SKU-1\"}, {\"sku\": \"SKU-1\"}, {\"sku\": \"SKU 2/x\"},"
               " {\"sku\": \"SKU-1\"}]}", ORDERD_OK);
    th_msg_free(m);
    ck_assert_int_eq(partner_requests(), 3);
    th_stage_free(s);
}
END_TEST

START_TEST(test_partner_down)
{
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t len = sizeof(sa);
    struct th_stage *s;
    orderd_msg *m;
    int fd, port;

    /* a port nobody listens on */
    fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    port = ntohs(sa.sin_port);
    close(fd);
    s = stage("url = \"http://127.0.0.1:%d/sku/{key}\";", port);
    m = run(s, "{\"items\": [{\"sku\": \"SKU-1\"}]}", ORDERD_RETRY);
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(m), "127.0.0.1"));
    th_msg_free(m);
    th_stage_free(s);

    reset_partner();
    s = stage("url = \"http://127.0.0.1:%d/sku/{key}\"; timeout = \"300ms\"; require = true;", partner.port);
    set_mode("fail");
    m = run(s, "{\"items\": [{\"sku\": \"SKU-1\"}]}", ORDERD_RETRY);
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(m), "HTTP 500"));
    th_msg_free(m);
    set_mode("garbage");
    m = run(s, "{\"items\": [{\"sku\": \"SKU-1\"}]}", ORDERD_RETRY);
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(m), "not a JSON object"));
    th_msg_free(m);
    set_mode("slow");
    m = run(s, "{\"items\": [{\"sku\": \"SKU-1\"}]}", ORDERD_RETRY);
    th_msg_free(m);
    ck_assert_int_eq(partner_requests(), 3);
    /* failures are not cached: the partner back means success at once */
    set_mode("ok");
    m = run(s, "{\"items\": [{\"sku\": \"SKU-1\"}]}", ORDERD_OK);
    ck_assert_str_eq(str(item(m, 0), "warehouse"), "BER-1");
    th_msg_free(m);
    th_stage_free(s);
}
END_TEST

static void wait_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

START_TEST(test_breaker)
{
    struct th_stage *s;
    orderd_msg *m;
    int i;

    reset_partner();
    set_mode("fail");
    s = stage("url = \"http://127.0.0.1:%d/sku/{key}\"; breaker_failures = 3; breaker_open = \"1s\";",
              partner.port);
    for (i = 0; i < 3; i++) {
        m = run(s, "{\"items\": [{\"sku\": \"SKU-1\"}]}", ORDERD_RETRY);
        th_msg_free(m);
    }
    ck_assert_int_eq(partner_requests(), 3);

    /* open: answered at once, the partner sees nothing, retry_after = time left */
    set_mode("ok");
    m = run(s, "{\"items\": [{\"sku\": \"SKU-1\"}]}", ORDERD_RETRY);
    ck_assert_uint_gt(m->retry_after_ms, 0);
    ck_assert_uint_le(m->retry_after_ms, 1000);
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(m), "circuit breaker"));
    th_msg_free(m);
    ck_assert_int_eq(partner_requests(), 3);

    /* half-open after the open time; a failing trial re-opens it */
    set_mode("fail");
    wait_ms(1100);
    m = run(s, "{\"items\": [{\"sku\": \"SKU-1\"}]}", ORDERD_RETRY);
    th_msg_free(m);
    ck_assert_int_eq(partner_requests(), 4);
    set_mode("ok");
    m = run(s, "{\"items\": [{\"sku\": \"SKU-1\"}]}", ORDERD_RETRY);
    th_msg_free(m);
    ck_assert_int_eq(partner_requests(), 4);

    /* a good trial closes it: requests flow again */
    wait_ms(1100);
    m = run(s, "{\"items\": [{\"sku\": \"SKU-1\"}]}", ORDERD_OK);
    ck_assert_str_eq(str(item(m, 0), "warehouse"), "BER-1");
    th_msg_free(m);
    m = run(s, "{\"items\": [{\"sku\": \"SKU 2/x\"}]}", ORDERD_OK);
    ck_assert_str_eq(str(item(m, 0), "warehouse"), "HAM-2");
    th_msg_free(m);
    ck_assert_int_eq(partner_requests(), 6);
    th_stage_free(s);
}
END_TEST

struct worker {
    struct th_stage *s;
    int              ok;
};

static void *worker_run(void *arg)
{
    struct worker *w = arg;
    orderd_msg *m;
    int i;

    for (i = 0; i < 40; i++) {
        m = th_msg(i % 2 ? "{\"items\": [{\"sku\": \"SKU-1\"}, {\"sku\": \"SKU-404\"}]}"
                         : "{\"items\": [{\"sku\": \"SKU 2/x\"}, {\"sku\": \"T-1\"}]}");
        if (th_process(w->s, m) == ORDERD_OK
            && json_object_get(item(m, 0), "warehouse") != NULL)
            w->ok++;
        th_msg_free(m);
    }
    return NULL;
}

/* process() from several threads at once shares one cache and breaker;
 * under the sanitizer build this is also the data-race/leak check. */
START_TEST(test_threads)
{
    struct worker w[4];
    pthread_t tid[4];
    char table[512];
    int i;

    reset_partner();
    write_file("t.json", "{\"T-1\": {\"zone\": \"A\"}}");
    path_in(table, sizeof(table), "t.json");
    for (i = 0; i < 4; i++)
        w[i].ok = 0;
    w[0].s = stage("table = \"%s\"; url = \"http://127.0.0.1:%d/sku/{key}\";",
                   table, partner.port);
    for (i = 1; i < 4; i++)
        w[i].s = w[0].s;
    for (i = 0; i < 4; i++)
        ck_assert_int_eq(pthread_create(&tid[i], NULL, worker_run, &w[i]), 0);
    for (i = 0; i < 4; i++) {
        pthread_join(tid[i], NULL);
        ck_assert_int_eq(w[i].ok, 40);
    }
    /* 4 keys reach the partner; after the first answer each is cached, so
     * at most one concurrent miss per thread and key */
    ck_assert_int_ge(partner_requests(), 4);
    ck_assert_int_le(partner_requests(), 4 * 4);
    th_stage_free(w[0].s);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("enrich");
    TCase *tc = tcase_create("enrich");
    SRunner *sr;
    int failed;

    tcase_add_unchecked_fixture(tc, partner_start, partner_stop);
    tcase_add_checked_fixture(tc, NULL, th_cleanup);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_table);
    tcase_add_test(tc, test_bad_config);
    tcase_add_test(tc, test_http_merge_and_cache);
    tcase_add_test(tc, test_partner_down);
    tcase_add_test(tc, test_breaker);
    tcase_add_test(tc, test_threads);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    th_cleanup();
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
