/* check_engine.c - outcome routing through the real engine and loader:
 * testkit stages (tests/plugins/testkit.c) answer RETRY, REJECT, DROP or
 * PENDING as configured, and the input's acks, the dead-letter file and the
 * metrics show where every message went. */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "harness.h"
#include "loader.h"
#include "log.h"
#include "metrics.h"
#include "msg.h"
#include "pipe.h"
#include "util.h"
#include "../plugins/common/deadline.h"
#include "../plugins/common/jsondec.h"
#include "../plugins/common/jsonenc.h"

struct run {
    struct od_registry reg;
    struct od_conf    *conf;
    struct od_pipe    *pipe;
    struct od_pipe    *set[1];   /* the running set handed to the engine */
};

static void start(struct run *r, const char *pipeline_body)
{
    char path[512], text[4096];
    struct od_errs errs = { 0 };
    struct od_conf_overrides ov = { .plugin_path = getenv("ORDERD_PLUGIN_PATH") };
    FILE *f;

    snprintf(path, sizeof(path), "%s/engine.conf", th_state_dir());
    snprintf(text, sizeof(text), "state_dir = \"%s\";\npipelines = ( { name = \"p\";\n%s\n} );\n",
             th_state_dir(), pipeline_body);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    memset(r, 0, sizeof(*r));
    ck_assert_int_eq(od_registry_init(&r->reg, ov.plugin_path), 0);
    if (od_conf_load(path, &ov, &r->reg, &r->conf, &errs) < 0)
        ck_abort_msg("config: %s", errs.msg[0]);
    od_host_set_state_dir(r->conf->state_dir);
    od_metrics_init();
    ck_assert_int_eq(od_pipe_create(&r->conf->pipelines[0], r->conf->state_dir, &r->pipe), 0);
    r->set[0] = r->pipe;
    od_pipes_set_current(r->set, 1);
    ck_assert_int_eq(od_pipe_start(r->pipe), 0);
}

/* Stop the pipeline, leaving its state directory for a look. */
static void stop_pipe(struct run *r, int64_t drain_ms)
{
    od_pipe_stop_input(r->pipe);
    od_pipe_drain(r->pipe, mono_ms() + drain_ms);
    od_pipes_set_current(NULL, 0);
    od_pipe_destroy(r->pipe);
    r->pipe = NULL;
}

static void cleanup(struct run *r)
{
    od_conf_free(r->conf);
    od_registry_free(&r->reg);
    od_metrics_shutdown();
    th_cleanup();
}

static void stop(struct run *r)
{
    stop_pipe(r, 5000);
    cleanup(r);
}

static size_t count_lines(const char *name, const char *needle)
{
    char path[512], line[4096];
    size_t n = 0;
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", th_state_dir(), name);
    f = fopen(path, "r");
    if (f == NULL)
        return 0;
    while (fgets(line, sizeof(line), f))
        if (needle == NULL || strstr(line, needle))
            n++;
    fclose(f);
    return n;
}

/* Wait until file has at least n lines (max 20 s). */
static int wait_lines(const char *name, size_t n)
{
    for (int i = 0; i < 2000; i++) {
        if (count_lines(name, NULL) >= n)
            return 1;
        usleep(10000);
    }
    return 0;
}

static double metric(const char *series)
{
    size_t len;
    char *text = od_metrics_render(&len), *p;
    double v = -1;

    ck_assert_ptr_nonnull(text);
    p = strstr(text, series);
    if (p)
        v = strtod(p + strlen(series), NULL);
    free(text);
    return v;
}

/* msg_body_text (ABI 1.3): json_dumps()'s compact bytes, made once; kept by
 * msg_body_peek, dropped by msg_body (the tree may change) and msg_set_body. */
START_TEST(body_text_cached_until_the_body_may_change)
{
    const orderd_host *h = od_host_table();
    json_t *body = json_pack("{s:s, s:[{s:f, s:i}], s:s}", "id", "o-1", "items", "price", 19.99,
                             "qty", 2, "note", "caf\xc3\xa9 \"q\"\n");
    char *want = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(15));
    orderd_msg *m = od_msg_new(body);
    const char *t1, *t2;
    size_t len = 0;

    ck_assert(ORDERD_HOST_HAS(h, msg_body_text));
    ck_assert(ORDERD_HOST_HAS(h, msg_body_peek));
    t1 = h->msg_body_text(m, &len);
    ck_assert_ptr_nonnull(t1);
    ck_assert_str_eq(t1, want);
    ck_assert_uint_eq(len, strlen(want));
    ck_assert_ptr_eq(h->msg_body_peek(m), body);
    t2 = h->msg_body_text(m, NULL);
    ck_assert_ptr_eq(t2, t1);                          /* encoded once */

    json_object_set_new(h->msg_body(m), "status", json_string("paid"));
    t2 = h->msg_body_text(m, &len);
    ck_assert_ptr_nonnull(strstr(t2, ",\"status\":\"paid\"}"));
    ck_assert_uint_eq(len, strlen(t2));

    h->msg_set_body(m, json_pack("{s:i}", "v", 2));
    ck_assert_str_eq(h->msg_body_text(m, NULL), "{\"v\":2}");
    od_msg_free(m);
    free(want);
}
END_TEST

/* msg_set_body_text (ABI 1.4): the text is kept as given and no tree is
 * made until a stage asks for one; msg_body_peek then decodes it and keeps
 * the text, msg_body hands the tree out and drops it.  Text that is not JSON
 * is refused and leaves the body alone. */
START_TEST(body_set_as_text_decoded_only_when_asked)
{
    const orderd_host *h = od_host_table();
    static const char text[] = "{ \"id\": \"o-1\", \"items\": [ {\"qty\": 2, \"price\": 2.5} ],"
                               " \"note\": \"caf\\u00e9\" }";
    orderd_msg *m = od_msg_new(json_pack("{s:i}", "old", 1));
    json_t *want = json_loads(text, 0, NULL);
    static const char big[] = "{\"n\": 12345678901234567890}";
    char *rec, *enc, longreal[74];
    size_t len = 0;

    ck_assert(ORDERD_HOST_HAS(h, msg_set_body_text));
    ck_assert_int_eq(h->msg_set_body_text(m, text, sizeof(text) - 1), 0);
    ck_assert_ptr_null(m->body);                       /* no tree yet */
    ck_assert_str_eq(h->msg_body_text(m, &len), text); /* as given, not re-encoded */
    ck_assert_uint_eq(len, sizeof(text) - 1);

    /* the spool record carries the text; reading it back gives the same body */
    rec = od_msg_record(m, &len);
    ck_assert_ptr_nonnull(rec);
    ck_assert_ptr_nonnull(strstr(rec, text));
    ck_assert_ptr_null(m->body);
    free(rec);

    ck_assert(json_equal((json_t *)h->msg_body_peek(m), want));
    ck_assert_str_eq(h->msg_body_text(m, NULL), text); /* peek keeps the text */
    json_object_set_new(h->msg_body(m), "status", json_string("paid"));
    enc = json_dumps(h->msg_body_peek(m), JSON_COMPACT | JSON_REAL_PRECISION(15));
    ck_assert_str_eq(h->msg_body_text(m, NULL), enc); /* made again from the tree */
    free(enc);

    /* not JSON: refused, the body stays */
    ck_assert_int_eq(h->msg_set_body_text(m, "{\"a\":", 5), -EINVAL);
    ck_assert_int_eq(h->msg_set_body_text(m, "[1] 2", 5), -EINVAL);
    ck_assert_int_eq(h->msg_set_body_text(m, "\"\xff\"", 3), -EINVAL);
    ck_assert_ptr_nonnull(json_object_get(h->msg_body_peek(m), "status"));

    /* not NUL-terminated, any value at the top */
    ck_assert_int_eq(h->msg_set_body_text(m, "[1,2]xyz", 5), 0);
    ck_assert_str_eq(h->msg_body_text(m, NULL), "[1,2]");
    ck_assert_int_eq(h->msg_set_body_text(m, "\"s\"", 3), 0);
    ck_assert_str_eq(json_string_value(h->msg_body_peek(m)), "s");

    /* numbers jansson refuses are refused */
    ck_assert_int_eq(h->msg_set_body_text(m, "[1e400]", 7), -EINVAL);
    ck_assert_int_eq(h->msg_set_body_text(m, big, strlen(big)), -EINVAL);
    /* one our reader leaves to jansson (a 70-digit real) is decoded at
     * once, and its text is then jansson's */
    memset(longreal, '0', sizeof(longreal));
    longreal[0] = '[';
    longreal[2] = '.';
    longreal[sizeof(longreal) - 3] = '5';
    longreal[sizeof(longreal) - 2] = ']';
    longreal[sizeof(longreal) - 1] = '\0';
    ck_assert_int_eq(h->msg_set_body_text(m, longreal, strlen(longreal)), 0);
    ck_assert_ptr_nonnull(m->body);
    ck_assert_ptr_null(m->body_text);
    ck_assert(json_is_real(json_array_get(h->msg_body_peek(m), 0)));

    /* the dead-letter form decodes it too; freeing a message with only text */
    ck_assert_int_eq(h->msg_set_body_text(m, "{\"k\":[true,null]}", 17), 0);
    {
        json_t *j = od_msg_to_json(m);

        ck_assert_str_eq(json_string_value(json_object_get(j, "id")), h->msg_id(m));
        ck_assert(json_is_array(json_object_get(json_object_get(j, "body"), "k")));
        json_decref(j);
    }
    ck_assert_int_eq(h->msg_set_body_text(m, "{\"only\":\"text\"}", 15), 0);
    od_msg_free(m);
    json_decref(want);
}
END_TEST

/* od_msg_record() (a spool record, written directly) is byte for byte the
 * envelope od_msg_to_json() builds, with and without the body's cached
 * text, and still when a property is not UTF-8 (jansson leaves it out). */
static void record_same(orderd_msg *m)
{
    json_t *j = od_msg_to_json(m);
    char *want = jenc_dumps(j, NULL), *got;
    size_t len = 0;

    ck_assert_ptr_nonnull(want);
    got = od_msg_record(m, &len);
    ck_assert_ptr_nonnull(got);
    ck_assert_str_eq(got, want);
    ck_assert_uint_eq(len, strlen(want));
    free(got);
    free(want);
    json_decref(j);
}

START_TEST(spool_record_matches_the_envelope)
{
    const orderd_host *h = od_host_table();
    orderd_msg *m = od_msg_new(json_pack("{s:s, s:[i, f, n, b]}", "id", "o-\"1\"/\xc3\xa9",
                                         "a", -3, 2.5, 1));

    record_same(m);                                    /* no properties */
    ck_assert_int_eq(h->msg_set_prop(m, "command", "create"), 0);
    ck_assert_int_eq(h->msg_set_prop(m, "note", "tab\t \"quoted\" caf\xc3\xa9"), 0);
    ck_assert_int_eq(h->msg_set_partition_key(m, "o-1"), 0);
    ck_assert_int_eq(h->msg_set_content_type(m, "application/json"), 0);
    h->msg_set_enqueued_ms(m, -1);
    h->msg_set_delivery_count(m, 4294967295u);
    record_same(m);
    ck_assert_ptr_nonnull(h->msg_body_text(m, NULL));  /* now from the cached text */
    record_same(m);
    ck_assert_int_eq(h->msg_set_prop(m, "bad", "\xff\xfe"), 0);
    record_same(m);                                    /* falls back to jansson's way */
    od_msg_free(m);
}
END_TEST

/* od_msg_record_exact() says when reading the record back gives the
 * message as it is: the spool then hands the message itself to the
 * pipeline.  Not when a real loses digits, a property is left out, or a
 * cached text stands next to the tree it was written from. */
static bool record_exact(orderd_msg *m)
{
    bool exact = true;
    size_t len = 0;
    char *got = od_msg_record_exact(m, &len, &exact);
    json_t *back = got ? jdec_loadb(got, len, NULL) : NULL;
    orderd_msg *m2 = back ? od_msg_from_json(back) : NULL;

    ck_assert_ptr_nonnull(m2);
    /* whatever it says, the record is the envelope od_msg_record() writes
     * (a body held as text only is written as given, digits and all) */
    if (m->body != NULL)
        record_same(m);
    if (exact)
        ck_assert_msg(json_equal(od_host_table()->msg_body_peek(m2), od_host_table()->msg_body_peek(m)),
                      "said exact, but the body read back differs");
    od_msg_free(m2);
    json_decref(back);
    free(got);
    return exact;
}

START_TEST(spool_record_exact)
{
    const orderd_host *h = od_host_table();
    orderd_msg *m = od_msg_new(json_pack("{s:s, s:[f, f, f, f]}", "id", "o-1", "p", 19.99, 0.5,
                                         1e-7, 123456.789));

    ck_assert_int_eq(h->msg_set_prop(m, "command", "create"), 0);
    ck_assert(record_exact(m));
    /* said exact: the body's part of the record is kept as its text */
    char *canon = json_dumps(m->body, JSON_COMPACT | JSON_REAL_PRECISION(15));
    ck_assert_ptr_nonnull(m->body_text);
    ck_assert_str_eq(m->body_text, canon);
    ck_assert_uint_eq(m->body_text_len, strlen(canon));
    free(canon);
    h->msg_set_body(m, json_pack("{s:f}", "p", 0.1 + 0.2));   /* 0.30000000000000004 */
    ck_assert(!record_exact(m));
    h->msg_set_body(m, json_pack("{s:f}", "p", 1.0 / 3.0));
    ck_assert(!record_exact(m));
    h->msg_set_body(m, json_pack("{s:f, s:i}", "p", 249.5, "q", 3));
    ck_assert(record_exact(m));
    ck_assert_ptr_nonnull(h->msg_body_text(m, NULL));         /* text cached next to the tree */
    ck_assert(!record_exact(m));
    ck_assert_int_eq(h->msg_set_body_text(m, "{\"p\":0.30000000000000004}", 25), 0);
    ck_assert(record_exact(m));                                /* the text alone travels */
    ck_assert_int_eq(h->msg_set_prop(m, "bad", "\xff\xfe"), 0);
    ck_assert(!record_exact(m));
    od_msg_free(m);
}
END_TEST

/* msg_set_body_encoded (ABI 1.5): the tree, and the text given with it as
 * its msg_body_text until the tree is handed out for changing. */
START_TEST(body_set_with_its_text)
{
    const orderd_host *h = od_host_table();
    orderd_msg *m = od_msg_new(json_pack("{s:i}", "old", 1));
    size_t len = 0;

    ck_assert(ORDERD_HOST_HAS(h, msg_set_body_encoded));
    ck_assert_int_eq(h->msg_set_body_encoded(m, json_pack("{s:s}", "k", "v"), "{\"k\":\"v\"}", 9), 0);
    ck_assert_str_eq(json_string_value(json_object_get(h->msg_body_peek(m), "k")), "v");
    ck_assert_str_eq(h->msg_body_text(m, &len), "{\"k\":\"v\"}");
    ck_assert_uint_eq(len, 9);
    json_object_set_new(h->msg_body(m), "k", json_string("w"));   /* handed out: text dropped */
    ck_assert_str_eq(h->msg_body_text(m, &len), "{\"k\":\"w\"}");
    /* without a text it is msg_set_body */
    ck_assert_int_eq(h->msg_set_body_encoded(m, json_pack("[i]", 2), NULL, 0), 0);
    ck_assert_str_eq(h->msg_body_text(m, NULL), "[2]");
    od_msg_free(m);
}
END_TEST

START_TEST(ok_path_every_message_once_in_order_of_stages)
{
    struct run r;

    start(&r,
          "input = { plugin = \"testkit\"; count = 200; record_acks = \"acks\"; };\n"
          "transforms = ( { plugin = \"testkit\"; tag = \"t1\"; } );\n"
          "store = { plugin = \"testkit\"; record = \"stored\"; };\n"
          "publish = ( { plugin = \"testkit\"; record = \"published\"; } );\n");
    ck_assert(wait_lines("acks", 200));
    ck_assert_uint_eq(count_lines("acks", " OK"), 200);
    ck_assert_uint_eq(count_lines("stored", NULL), 200);
    ck_assert_uint_eq(count_lines("published", NULL), 200);
    /* the store saw what the transform did: lookup returns the tagged body */
    json_t *doc = NULL;
    ck_assert_int_eq(od_pipe_lookup(NULL, "p", "m7", &doc), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(doc, "n")), 7);
    json_decref(doc);
    ck_assert(metric("orderd_stage_outcomes_total{pipeline=\"p\",stage=\"testkit-4\",plugin=\"testkit\",kind=\"publish\",outcome=\"ok\"} ") == 200);
    stop(&r);
}
END_TEST

/* A pipeline of an input alone (with and without a spool) finishes what it
 * accepts: the messages were left in flight for good, so the window filled
 * and a spool's records were never completed. */
START_TEST(no_stages_completes_every_message)
{
    for (int spool = 0; spool < 2; spool++) {
        struct run r;

        start(&r, spool ? "spool = { sync = false; };\n"
                          "input = { plugin = \"testkit\"; count = 3000; record_acks = \"acks\"; };\n"
                        : "queue_size = 100;\n"
                          "input = { plugin = \"testkit\"; count = 3000; record_acks = \"acks\"; };\n");
        if (!spool) {
            ck_assert(wait_lines("acks", 3000));
            ck_assert_uint_eq(count_lines("acks", " OK"), 3000);
        } else {
            for (int i = 0; i < 2000 && metric("orderd_spool_appends_total{pipeline=\"p\"} ") < 3000; i++)
                usleep(10000);
            for (int i = 0; i < 2000 && metric("orderd_spool_records{pipeline=\"p\"} ") != 0; i++)
                usleep(10000);
            ck_assert(metric("orderd_spool_appends_total{pipeline=\"p\"} ") == 3000);
            ck_assert(metric("orderd_spool_records{pipeline=\"p\"} ") == 0);
        }
        ck_assert(metric("orderd_pipeline_in_flight{pipeline=\"p\"} ") == 0);
        stop(&r);
    }
}
END_TEST

START_TEST(retry_twice_then_ok)
{
    struct run r;

    start(&r,
          "retry = { max_attempts = 5; backoff_base = \"1ms\"; backoff_cap = \"5ms\"; };\n"
          "input = { plugin = \"testkit\"; count = 20; record_acks = \"acks\"; };\n"
          "transforms = ( { plugin = \"testkit\"; fail_times = 2; } );\n"
          "publish = ( { plugin = \"testkit\"; record = \"published\"; } );\n");
    ck_assert(wait_lines("acks", 20));
    ck_assert_uint_eq(count_lines("acks", " OK"), 20);
    ck_assert_uint_eq(count_lines("published", NULL), 20);
    ck_assert(metric("kind=\"transform\",outcome=\"retry\"} ") == 40);
    ck_assert(metric("kind=\"transform\",outcome=\"ok\"} ") == 20);
    ck_assert_uint_eq(count_lines("deadletter/p.ndjson", NULL), 0);
    stop(&r);
}
END_TEST

START_TEST(reject_goes_to_dead_letter_with_reason)
{
    struct run r;

    start(&r,
          "input = { plugin = \"testkit\"; count = 10; record_acks = \"acks\"; };\n"
          "transforms = ( { plugin = \"testkit\"; reject = true; reject_reason = \"bad order: no items\"; } );\n"
          "publish = ( { plugin = \"testkit\"; record = \"published\"; } );\n");
    ck_assert(wait_lines("acks", 10));
    ck_assert(wait_lines("deadletter/p.ndjson", 10));
    ck_assert_uint_eq(count_lines("deadletter/p.ndjson", "\"reason\":\"bad order: no items\""), 10);
    ck_assert_uint_eq(count_lines("deadletter/p.ndjson", "\"stage\":\"testkit-2\""), 10);
    ck_assert_uint_eq(count_lines("published", NULL), 0);
    /* dead-lettered by the core, so the input is told to complete */
    ck_assert_uint_eq(count_lines("acks", " OK"), 10);
    ck_assert(metric("orderd_dead_letters_total{pipeline=\"p\"} ") == 10);
    stop(&r);
}
END_TEST

START_TEST(retries_exhausted_core_redelivers_then_dead_letters)
{
    struct run r;

    /* fail_times beyond max_attempts * max_deliveries: each delivery tries
     * twice, three deliveries, then the dead letter says why. */
    start(&r,
          "retry = { max_attempts = 2; backoff_base = \"1ms\"; backoff_cap = \"2ms\";\n"
          "          max_deliveries = 3; redeliver_delay = \"5ms\"; };\n"
          "input = { plugin = \"testkit\"; count = 4; record_acks = \"acks\"; };\n"
          "publish = ( { plugin = \"testkit\"; fail_times = 1000; } );\n");
    ck_assert(wait_lines("deadletter/p.ndjson", 4));
    ck_assert(wait_lines("acks", 4));
    ck_assert_uint_eq(count_lines("deadletter/p.ndjson", "gave up after 3 deliveries"), 4);
    ck_assert_uint_eq(count_lines("deadletter/p.ndjson", "\"delivery_count\":3"), 4);
    ck_assert(metric("kind=\"publish\",outcome=\"retry\"} ") == 4 * 2 * 3);
    stop(&r);
}
END_TEST

START_TEST(drop_completes_without_later_stages)
{
    struct run r;

    start(&r,
          "input = { plugin = \"testkit\"; count = 10; record_acks = \"acks\"; };\n"
          "transforms = ( { plugin = \"testkit\"; drop_field = \"n\"; } );\n"
          "publish = ( { plugin = \"testkit\"; record = \"published\"; } );\n");
    ck_assert(wait_lines("acks", 10));
    ck_assert_uint_eq(count_lines("acks", " OK"), 10);
    ck_assert_uint_eq(count_lines("published", NULL), 0);
    ck_assert(metric("kind=\"transform\",outcome=\"drop\"} ") == 10);
    stop(&r);
}
END_TEST

START_TEST(pending_settled_later_completes)
{
    struct run r;

    start(&r,
          "input = { plugin = \"testkit\"; count = 50; record_acks = \"acks\"; };\n"
          "publish = ( { plugin = \"testkit\"; pending = true; pending_delay = \"5ms\"; },\n"
          "            { plugin = \"testkit\"; record = \"after\"; } );\n");
    ck_assert(wait_lines("acks", 50));
    ck_assert_uint_eq(count_lines("acks", " OK"), 50);
    ck_assert_uint_eq(count_lines("after", NULL), 50);   /* settled OK went on to the next stage */
    ck_assert(metric("stage=\"testkit-2\",plugin=\"testkit\",kind=\"publish\",outcome=\"pending\"} ") == 50);
    stop(&r);
}
END_TEST

START_TEST(backpressure_refuses_nowait_and_loses_nothing)
{
    struct run r;

    start(&r,
          "workers = 1; queue_size = 2;\n"
          "input = { plugin = \"testkit\"; count = 30; nowait = true; record_acks = \"acks\"; };\n"
          "transforms = ( { plugin = \"testkit\"; sleep = \"2ms\"; } );\n"
          "publish = ( { plugin = \"testkit\"; record = \"published\"; } );\n");
    ck_assert(wait_lines("acks", 30));
    ck_assert_uint_eq(count_lines("published", NULL), 30);
    ck_assert(metric("orderd_plugin_testkit_refused{pipeline=\"p\",stage=\"testkit\"} ") > 0);
    stop(&r);
}
END_TEST

START_TEST(batches_cross_stage_boundaries)
{
    struct run r;

    /* a batch where some messages retry and others go on */
    start(&r,
          "batch = { max = 16; };\n"
          "retry = { backoff_base = \"1ms\"; backoff_cap = \"2ms\"; };\n"
          "input = { plugin = \"testkit\"; count = 100; record_acks = \"acks\"; };\n"
          "transforms = ( { plugin = \"testkit\"; fail_times = 1; }, { plugin = \"testkit\"; } );\n"
          "publish = ( { plugin = \"testkit\"; record = \"published\"; } );\n");
    ck_assert(wait_lines("acks", 100));
    ck_assert_uint_eq(count_lines("published", NULL), 100);
    ck_assert_uint_eq(count_lines("acks", " OK"), 100);
    stop(&r);
}
END_TEST

/* Messages with the same partition key run one at a time, in arrival
 * order, even with several workers and retries in between. */
START_TEST(same_partition_key_in_order)
{
    struct run r;
    char path[512], body[2048];
    FILE *f;
    int last[3] = { 0, 0, 0 };

    snprintf(path, sizeof(path), "%s/keyed.ndjson", th_state_dir());
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    for (int n = 1; n <= 300; n++)
        fprintf(f, "{\"id\":\"o%d\",\"k\":\"c%d\",\"n\":%d}\n", n, n % 3, n);
    fclose(f);
    snprintf(body, sizeof(body),
             "workers = 4; batch = { max = 8; };\n"
             "retry = { backoff_base = \"1ms\"; backoff_cap = \"3ms\"; };\n"
             "input = { plugin = \"file\"; path = \"%s\"; partition_key_field = \"k\"; };\n"
             "transforms = ( { plugin = \"testkit\"; fail_times = 1; sleep = \"1ms\"; } );\n"
             "publish = ( { plugin = \"testkit\"; record = \"rec\"; } );\n", path);
    start(&r, body);
    ck_assert(wait_lines("rec", 300));
    snprintf(path, sizeof(path), "%s/rec", th_state_dir());
    f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    for (int n; fscanf(f, "o%d\n", &n) == 1; ) {
        ck_assert_msg(n > last[n % 3], "o%d published after o%d with the same key", n, last[n % 3]);
        last[n % 3] = n;
    }
    fclose(f);
    stop(&r);
}
END_TEST

/* submit_async: with ORDERD_SUBMIT_OUTCOME the input hears how each message
 * ended, and only once the last stage is done with it; without it, as soon as
 * it is accepted (durable, with a spool).  The transform sleeps well past
 * wait_lines()'s 10 ms poll, so that "accepted before published" is seen
 * between the poll and the count (with 5 ms, a message handed over from
 * memory could be published in between on a loaded machine). */
static void async_run(int spool, const char *mode, int reject)
{
    struct run r;
    char body[1024];
    size_t d, pub;

    snprintf(body, sizeof(body),
             "%s"
             "input = { plugin = \"testkit\"; count = 20; async = \"%s\"; record_done = \"done\"; };\n"
             "transforms = ( { plugin = \"testkit\"; sleep = \"100ms\"; reject = %s; } );\n"
             "publish = ( { plugin = \"testkit\"; record = \"pub\"; } );\n",
             spool ? "spool = { sync = true; };\n" : "", mode, reject ? "true" : "false");
    start(&r, body);
    ck_assert(wait_lines("done", 1));
    d = count_lines("done", NULL);     /* done first: pub can only have grown since */
    pub = count_lines("pub", NULL);
    if (strcmp(mode, "outcome") == 0 && !reject)
        ck_assert_msg(pub >= d, "%zu outcomes reported before %zu were published", d, pub);
    if (strcmp(mode, "accepted") == 0)
        ck_assert_msg(d > pub, "accepted was reported only after publishing (%zu, %zu)", d, pub);
    ck_assert(wait_lines("done", 20));
    if (reject) {
        ck_assert_uint_eq(count_lines("done", " 0 REJECT testkit reject"), 20);
        ck_assert_uint_eq(count_lines("pub", NULL), 0);
    } else {
        ck_assert_uint_eq(count_lines("done", " 0 OK -"), 20);
        ck_assert(wait_lines("pub", 20));
    }
    stop_pipe(&r, 5000);
    ck_assert_uint_eq(count_lines("done", NULL), 20);   /* exactly once each */
    cleanup(&r);
}

START_TEST(async_outcome_without_spool)
{
    async_run(0, "outcome", 0);
}
END_TEST

START_TEST(async_outcome_without_spool_reject)
{
    async_run(0, "outcome", 1);
}
END_TEST

START_TEST(async_outcome_with_spool)
{
    async_run(1, "outcome", 0);
}
END_TEST

START_TEST(async_outcome_with_spool_reject)
{
    async_run(1, "outcome", 1);
}
END_TEST

START_TEST(async_accepted_with_spool)
{
    async_run(1, "accepted", 0);
}
END_TEST

/* ORDERD_SUBMIT_DEFER + submit_flush (ABI 1.2): the input's own thread
 * writes what it deferred, and every accepted done() has come when
 * submit_flush returns (testkit counts those that had not in
 * testkit_flush_late).  With OUTCOME the message still runs the pipeline. */
static void defer_run(int spool, const char *mode)
{
    struct run r;
    char body[1024];

    snprintf(body, sizeof(body),
             "%s"
             "input = { plugin = \"testkit\"; count = 300; async = \"%s\"; defer_every = 7;"
             " record_done = \"done\"; };\n"
             "publish = ( { plugin = \"testkit\"; record = \"pub\"; } );\n",
             spool ? "spool = { sync = true; };\n" : "", mode);
    start(&r, body);
    ck_assert(wait_lines("done", 300));
    ck_assert(wait_lines("pub", 300));
    ck_assert_uint_eq(count_lines("done", " 0 OK -"), 300);
    if (strcmp(mode, "accepted") == 0)
        ck_assert(metric("orderd_plugin_testkit_flush_late{pipeline=\"p\",stage=\"testkit\"} ") == 0);
    stop_pipe(&r, 5000);
    ck_assert_uint_eq(count_lines("done", NULL), 300);   /* exactly once each */
    ck_assert_uint_eq(count_lines("pub", NULL), 300);
    cleanup(&r);
}

START_TEST(defer_accepted_with_spool)
{
    defer_run(1, "accepted");
}
END_TEST

START_TEST(defer_accepted_without_spool)
{
    defer_run(0, "accepted");
}
END_TEST

START_TEST(defer_outcome_with_spool)
{
    defer_run(1, "outcome");
}
END_TEST

/* Outcomes still awaited when the pipeline stops are reported as RETRY
 * before the input is destroyed: in memory, or left in the spool. */
static void async_stop_run(int spool)
{
    struct run r;
    char body[1024];

    snprintf(body, sizeof(body),
             "%s"
             "input = { plugin = \"testkit\"; count = 10; async = \"outcome\"; record_done = \"done\"; };\n"
             "transforms = ( { plugin = \"testkit\"; fail_times = 1000; retry_after = \"1h\"; } );\n",
             spool ? "spool = { sync = false; };\n" : "");
    start(&r, body);
    for (int i = 0; i < 500 && metric("orderd_stage_outcomes_total{pipeline=\"p\",stage=\"testkit-2\",plugin=\"testkit\",kind=\"transform\",outcome=\"retry\"} ") < 10; i++)
        usleep(10000);
    ck_assert_uint_eq(count_lines("done", NULL), 0);
    stop_pipe(&r, 100);
    ck_assert_uint_eq(count_lines("done", NULL), 10);
    ck_assert_uint_eq(count_lines("done", spool ? " 0 RETRY the pipeline stopped first; it stays in the spool"
                                                : " 0 RETRY the pipeline stopped first"), 10);
    cleanup(&r);
}

START_TEST(async_outcome_at_stop)
{
    async_stop_run(0);
}
END_TEST

START_TEST(async_outcome_at_stop_with_spool)
{
    async_stop_run(1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("engine");
    TCase *tc = tcase_create("engine");
    SRunner *sr;
    int failed;

    od_log_setup(ORDERD_LOG_WARN, OD_LOG_TEXT);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, ok_path_every_message_once_in_order_of_stages);
    tcase_add_test(tc, no_stages_completes_every_message);
    tcase_add_test(tc, retry_twice_then_ok);
    tcase_add_test(tc, reject_goes_to_dead_letter_with_reason);
    tcase_add_test(tc, retries_exhausted_core_redelivers_then_dead_letters);
    tcase_add_test(tc, drop_completes_without_later_stages);
    tcase_add_test(tc, pending_settled_later_completes);
    tcase_add_test(tc, backpressure_refuses_nowait_and_loses_nothing);
    tcase_add_test(tc, batches_cross_stage_boundaries);
    tcase_add_test(tc, same_partition_key_in_order);
    tcase_add_test(tc, async_outcome_without_spool);
    tcase_add_test(tc, async_outcome_without_spool_reject);
    tcase_add_test(tc, async_outcome_with_spool);
    tcase_add_test(tc, async_outcome_with_spool_reject);
    tcase_add_test(tc, async_accepted_with_spool);
    tcase_add_test(tc, defer_accepted_with_spool);
    tcase_add_test(tc, defer_accepted_without_spool);
    tcase_add_test(tc, defer_outcome_with_spool);
    tcase_add_test(tc, async_outcome_at_stop);
    tcase_add_test(tc, async_outcome_at_stop_with_spool);
    tcase_add_test(tc, body_text_cached_until_the_body_may_change);
    tcase_add_test(tc, body_set_as_text_decoded_only_when_asked);
    tcase_add_test(tc, spool_record_matches_the_envelope);
    tcase_add_test(tc, spool_record_exact);
    tcase_add_test(tc, body_set_with_its_text);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
