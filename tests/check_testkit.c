/* check_testkit.c - the test-only `testkit` plugin does what its keys say,
 * so integration tests that lean on it test the engine, not testkit. */
#include "config.h"

#include <check.h>
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "msg.h"          /* retry_after_ms is not visible through the ABI */

static const orderd_kind proc_kinds[] = { ORDERD_TRANSFORM, ORDERD_STORE, ORDERD_PUBLISH };

static int64_t
mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *
tpath(const char *name)
{
    char *p;

    ck_assert_int_ge(asprintf(&p, "%s/%s", th_state_dir(), name), 0);
    return p;
}

static char *
slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf = NULL;
    size_t len = 0;

    if (f == NULL)
        return strdup("");
    FILE *mem = open_memstream(&buf, &len);
    int c;
    while ((c = fgetc(f)) != EOF)
        fputc(c, mem);
    fclose(mem);
    fclose(f);
    return buf;
}

static void
teardown(void)
{
    th_cleanup();
}

START_TEST(fail_times_then_ok)
{
    struct th_stage *s = th_stage_new("testkit", proc_kinds[_i],
                                      "fail_times = 2; retry_after = \"250ms\";");
    orderd_msg *a = th_msg("{\"id\":\"a\"}"), *b = th_msg("{\"id\":\"b\"}");

    ck_assert_int_eq(th_process(s, a), ORDERD_RETRY);
    ck_assert_uint_eq(a->retry_after_ms, 250);
    ck_assert_ptr_nonnull(th_host()->msg_reason(a));
    ck_assert_int_eq(th_process(s, b), ORDERD_RETRY);   /* counted per id */
    ck_assert_int_eq(th_process(s, a), ORDERD_RETRY);
    ck_assert_int_eq(th_process(s, a), ORDERD_OK);
    ck_assert_int_eq(th_process(s, a), ORDERD_OK);
    ck_assert_int_eq(th_process(s, b), ORDERD_RETRY);
    ck_assert_int_eq(th_process(s, b), ORDERD_OK);
    th_msg_free(a);
    th_msg_free(b);
    th_stage_free(s);

    s = th_stage_new("testkit", proc_kinds[_i], "");
    a = th_msg("{\"id\":\"a\"}");
    ck_assert_int_eq(th_process(s, a), ORDERD_OK);      /* default: no failures */
    th_msg_free(a);
    th_stage_free(s);
}
END_TEST

START_TEST(reject_and_drop)
{
    const orderd_host *h = th_host();
    struct th_stage *s = th_stage_new("testkit", proc_kinds[_i], "reject = true;");
    orderd_msg *a = th_msg("{\"id\":\"a\"}");

    ck_assert_int_eq(th_process(s, a), ORDERD_REJECT);
    ck_assert_str_eq(h->msg_reason(a), "testkit reject");
    th_stage_free(s);

    s = th_stage_new("testkit", proc_kinds[_i], "reject = true; reject_reason = \"no stock\";");
    ck_assert_int_eq(th_process(s, a), ORDERD_REJECT);
    ck_assert_str_eq(h->msg_reason(a), "no stock");
    th_stage_free(s);
    th_msg_free(a);

    s = th_stage_new("testkit", proc_kinds[_i], "reject_field = \"bad\"; drop_field = \"skip\";");
    const struct { const char *body; orderd_outcome want; } cases[] = {
        { "{\"id\":\"1\",\"bad\":true}", ORDERD_REJECT },
        { "{\"id\":\"2\",\"bad\":\"yes\"}", ORDERD_REJECT },
        { "{\"id\":\"3\",\"bad\":false}", ORDERD_OK },
        { "{\"id\":\"4\",\"bad\":0}", ORDERD_OK },
        { "{\"id\":\"5\"}", ORDERD_OK },
        { "{\"id\":\"6\",\"skip\":1}", ORDERD_DROP },
        { "{\"id\":\"7\",\"skip\":null}", ORDERD_OK },
        { "[1]", ORDERD_OK },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        orderd_msg *m = th_msg(cases[i].body);
        ck_assert_msg(th_process(s, m) == cases[i].want, "case %s", cases[i].body);
        th_msg_free(m);
    }
    th_stage_free(s);
}
END_TEST

START_TEST(sleep_delays_answer)
{
    struct th_stage *s = th_stage_new("testkit", ORDERD_TRANSFORM, "sleep = \"100ms\";");
    orderd_msg *a = th_msg("{\"id\":\"a\"}");
    int64_t t0 = mono_ms();

    ck_assert_int_eq(th_process(s, a), ORDERD_OK);
    ck_assert_int_ge(mono_ms() - t0, 100);
    th_msg_free(a);
    th_stage_free(s);
}
END_TEST

START_TEST(crash_field_aborts)
{
    struct th_stage *s = th_stage_new("testkit", ORDERD_STORE, "crash_field = \"boom\";");
    orderd_msg *a = th_msg("{\"id\":\"a\"}");
    orderd_msg *b = th_msg("{\"id\":\"b\",\"boom\":false}");

    ck_assert_int_eq(th_process(s, a), ORDERD_OK);
    /* The teardown will not run after abort(): leave no state dir behind. */
    ck_assert_int_eq(rmdir(th_state_dir()), 0);
    th_process(s, b);                       /* present, even false: abort() */
    ck_abort_msg("not reached");
}
END_TEST

START_TEST(pending_settles_later)
{
    char *rec = tpath("rec.txt");
    char conf[512];
    snprintf(conf, sizeof(conf), "pending = true; pending_delay = \"150ms\"; record = \"%s\";", rec);
    struct th_stage *s = th_stage_new("testkit", proc_kinds[_i], conf);
    orderd_msg *a = th_msg("{\"id\":\"a\"}"), *b = th_msg("{\"id\":\"b\"}");
    const char *reason;

    int64_t t0 = mono_ms();
    ck_assert_int_eq(th_process(s, a), ORDERD_PENDING);
    ck_assert_int_eq(th_process(s, b), ORDERD_PENDING);
    ck_assert(th_wait_settled(s, 2, 5000));
    ck_assert_int_ge(mono_ms() - t0, 150);
    ck_assert_int_eq(th_settled_outcome(s, 0, &reason, NULL), ORDERD_OK);
    ck_assert_int_eq(th_settled_outcome(s, 1, &reason, NULL), ORDERD_OK);
    char *got = slurp(rec);
    ck_assert_str_eq(got, "a\nb\n");         /* recorded when settled OK */
    free(got);
    th_stage_free(s);
    th_msg_free(a);
    th_msg_free(b);
    free(rec);
}
END_TEST

/* The engine accepts PENDING only from stages flagged ASYNC_SETTLE, which
 * the harness does not check: read the descriptor itself. */
START_TEST(pending_flag_declared)
{
    const char *path = getenv("ORDERD_PLUGIN_PATH");
    void *so = NULL;

    ck_assert_ptr_nonnull(path);
    char *dirs = strdup(path), *save = NULL;
    for (char *d = strtok_r(dirs, ":", &save); d && so == NULL; d = strtok_r(NULL, ":", &save)) {
        char file[1024];
        snprintf(file, sizeof(file), "%s/testkit.so", d);
        so = dlopen(file, RTLD_NOW | RTLD_LOCAL);
    }
    free(dirs);
    ck_assert_ptr_nonnull(so);
    const orderd_plugin *p = dlsym(so, ORDERD_PLUGIN_SYMBOL);
    ck_assert_ptr_nonnull(p);
    int seen = 0;
    for (const orderd_stage *const *st = p->stages; *st; st++) {
        seen |= 1 << (*st)->kind;
        if ((*st)->kind == ORDERD_INPUT)
            ck_assert_ptr_nonnull((*st)->stop);
        else
            ck_assert_uint_ne((*st)->flags & ORDERD_SF_ASYNC_SETTLE, 0);
    }
    ck_assert_int_eq(seen, (1 << ORDERD_INPUT) | (1 << ORDERD_TRANSFORM) | (1 << ORDERD_STORE)
                           | (1 << ORDERD_PUBLISH));
    dlclose(so);
}
END_TEST

START_TEST(record_only_ok)
{
    char *rec = tpath("rec.txt");
    char conf[512];
    snprintf(conf, sizeof(conf), "record = \"%s\"; reject_field = \"bad\"; fail_times = 1;", rec);
    struct th_stage *s = th_stage_new("testkit", proc_kinds[_i], conf);
    orderd_msg *a = th_msg("{\"id\":\"a\"}"), *b = th_msg("{\"id\":\"b\",\"bad\":1}");

    ck_assert_int_eq(th_process(s, a), ORDERD_RETRY);
    ck_assert_int_eq(th_process(s, b), ORDERD_REJECT);
    ck_assert_int_eq(th_process(s, a), ORDERD_OK);
    ck_assert_int_eq(th_process(s, a), ORDERD_OK);
    char *got = slurp(rec);
    ck_assert_str_eq(got, "a\na\n");
    free(got);
    th_stage_free(s);

    /* Relative record paths land in the state directory. */
    s = th_stage_new("testkit", proc_kinds[_i], "record = \"rel.txt\";");
    ck_assert_int_eq(th_process(s, a), ORDERD_OK);
    th_stage_free(s);
    char *rel = tpath("rel.txt");
    got = slurp(rel);
    ck_assert_str_eq(got, "a\n");
    free(got);
    free(rel);
    th_msg_free(a);
    th_msg_free(b);
    free(rec);
}
END_TEST

START_TEST(tag_sets_property)
{
    struct th_stage *s = th_stage_new("testkit", proc_kinds[_i], "tag = \"t1\";");
    orderd_msg *a = th_msg("{\"id\":\"a\"}");

    ck_assert_ptr_null(th_host()->msg_prop(a, "testkit"));
    ck_assert_int_eq(th_process(s, a), ORDERD_OK);
    ck_assert_str_eq(th_host()->msg_prop(a, "testkit"), "t1");
    th_stage_free(s);
    th_msg_free(a);
}
END_TEST

START_TEST(store_lookup)
{
    struct th_stage *s = th_stage_new("testkit", ORDERD_STORE, "reject_field = \"bad\";");
    orderd_msg *a = th_msg("{\"id\":\"a\",\"v\":1}");
    orderd_msg *a2 = th_msg("{\"id\":\"a\",\"v\":2}");
    orderd_msg *b = th_msg("{\"id\":\"b\",\"bad\":true}");
    json_t *doc = NULL;

    ck_assert_int_eq(th_lookup(s, "a", &doc), -ENOENT);
    ck_assert_int_eq(th_process(s, a), ORDERD_OK);
    ck_assert_int_eq(th_lookup(s, "a", &doc), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(doc, "v")), 1);
    json_decref(doc);
    ck_assert_int_eq(th_process(s, a2), ORDERD_OK);
    ck_assert_int_eq(th_lookup(s, "a", &doc), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(doc, "v")), 2);
    json_decref(doc);
    ck_assert_int_eq(th_process(s, b), ORDERD_REJECT);
    ck_assert_int_eq(th_lookup(s, "b", &doc), -ENOENT);
    th_stage_free(s);

    /* Only the store looks up. */
    s = th_stage_new("testkit", ORDERD_TRANSFORM, "");
    ck_assert_int_eq(th_lookup(s, "a", &doc), -ENOTSUP);
    th_stage_free(s);
    th_msg_free(a);
    th_msg_free(a2);
    th_msg_free(b);
}
END_TEST

START_TEST(input_counts_and_records_acks)
{
    const orderd_host *h = th_host();
    char *rec = tpath("acks.txt");
    char conf[512];
    snprintf(conf, sizeof(conf), "count = 5; record_acks = \"%s\";", rec);
    struct th_stage *s = th_stage_new("testkit", ORDERD_INPUT, conf);

    ck_assert_int_eq(th_start(s), 0);
    ck_assert(th_wait_submitted(s, 5, 5000));
    orderd_msg *m[5];
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof(id), "m%d", i + 1);
        m[i] = th_take(s, (size_t)i);
        ck_assert_str_eq(h->msg_id(m[i]), id);
        ck_assert_str_eq(json_string_value(json_object_get(h->msg_body(m[i]), "id")), id);
        ck_assert_int_eq(json_integer_value(json_object_get(h->msg_body(m[i]), "n")), i + 1);
    }
    th_ack(s, m[1], ORDERD_OK, NULL);
    th_ack(s, m[0], ORDERD_REJECT, "bad order");
    th_ack(s, m[4], ORDERD_RETRY, NULL);
    th_stop(s);
    ck_assert_int_eq(th_submitted(s), 5);        /* then idle */
    char *got = slurp(rec);
    ck_assert_str_eq(got, "m2 OK -\nm1 REJECT bad order\nm5 RETRY -\n");
    free(got);
    ck_assert(th_metric(s, "testkit_acked") == 3);
    for (int i = 0; i < 5; i++)
        th_msg_free(m[i]);
    th_stage_free(s);
    free(rec);
}
END_TEST

START_TEST(input_nowait_counts_refusals)
{
    struct th_stage *s = th_stage_new("testkit", ORDERD_INPUT, "count = 3; nowait = true;");

    th_set_submit_result(s, -EAGAIN);
    ck_assert_int_eq(th_start(s), 0);
    /* Wait (bounded) until a few refusals were counted. */
    for (int64_t until = mono_ms() + 5000; mono_ms() < until && th_metric(s, "testkit_refused") < 3; )
        usleep(1000);
    ck_assert(th_metric(s, "testkit_refused") >= 3);
    ck_assert_int_eq(th_submitted(s), 0);
    th_set_submit_result(s, 0);
    ck_assert(th_wait_submitted(s, 3, 5000));   /* refused ones are retried, not lost */
    orderd_msg *m = th_take(s, 0);
    ck_assert_str_eq(th_host()->msg_id(m), "m1");
    th_msg_free(m);
    th_stage_free(s);
}
END_TEST

START_TEST(input_stop_is_prompt)
{
    struct th_stage *s = th_stage_new("testkit", ORDERD_INPUT, "count = 1000000; nowait = true;");

    th_set_submit_result(s, -EAGAIN);
    ck_assert_int_eq(th_start(s), 0);
    int64_t t0 = mono_ms();
    th_stop(s);
    ck_assert_int_lt(mono_ms() - t0, 1000);
    th_stage_free(s);

    /* A blocking submitter stops between messages too. */
    s = th_stage_new("testkit", ORDERD_INPUT, "count = 1000000;");
    ck_assert_int_eq(th_start(s), 0);
    ck_assert(th_wait_submitted(s, 10, 5000));
    t0 = mono_ms();
    th_stop(s);
    ck_assert_int_lt(mono_ms() - t0, 1000);
    ck_assert_int_lt(th_submitted(s), 1000000);
    th_stage_free(s);
}
END_TEST

START_TEST(input_stop_on_shutdown)
{
    struct th_stage *s = th_stage_new("testkit", ORDERD_INPUT, "count = 3;");

    th_set_submit_result(s, -ESHUTDOWN);
    ck_assert_int_eq(th_start(s), 0);
    ck_assert(!th_wait_submitted(s, 1, 100));
    th_set_submit_result(s, 0);
    /* -ESHUTDOWN ended the feed: nothing more comes even now. */
    ck_assert(!th_wait_submitted(s, 1, 200));
    th_stage_free(s);
}
END_TEST

START_TEST(bad_config_is_refused)
{
    char err[1024];

    ck_assert_ptr_null(th_stage_try("testkit", ORDERD_TRANSFORM, "count = 3;", err, sizeof(err)));
    ck_assert_ptr_null(th_stage_try("testkit", ORDERD_INPUT, "fail_times = 3;", err, sizeof(err)));
    ck_assert_ptr_null(th_stage_try("testkit", ORDERD_STORE, "sleep = \"soon\";", err, sizeof(err)));
}
END_TEST

static Suite *
testkit_suite(void)
{
    Suite *s = suite_create("testkit");
    TCase *p = tcase_create("process");
    TCase *in = tcase_create("input");

    tcase_add_checked_fixture(p, NULL, teardown);
    tcase_add_checked_fixture(in, NULL, teardown);
    tcase_add_loop_test(p, fail_times_then_ok, 0, 3);
    tcase_add_loop_test(p, reject_and_drop, 0, 3);
    tcase_add_test(p, sleep_delays_answer);
    tcase_add_test_raise_signal(p, crash_field_aborts, SIGABRT);
    tcase_add_loop_test(p, pending_settles_later, 0, 3);
    tcase_add_test(p, pending_flag_declared);
    tcase_add_loop_test(p, record_only_ok, 0, 3);
    tcase_add_loop_test(p, tag_sets_property, 0, 3);
    tcase_add_test(p, store_lookup);
    tcase_add_test(p, bad_config_is_refused);
    tcase_add_test(in, input_counts_and_records_acks);
    tcase_add_test(in, input_nowait_counts_refusals);
    tcase_add_test(in, input_stop_is_prompt);
    tcase_add_test(in, input_stop_on_shutdown);
    suite_add_tcase(s, p);
    suite_add_tcase(s, in);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(testkit_suite());

    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
