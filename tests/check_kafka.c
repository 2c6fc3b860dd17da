/* check_kafka.c - the kafka input through the harness, against librdkafka's
 * built-in mock cluster (a real Kafka protocol implementation with consumer
 * groups and committed offsets, living inside this test process on
 * 127.0.0.1).  Each test makes a fresh cluster, produces records with a real
 * producer and checks what the plugin submitted, what it dead-lettered and,
 * by starting fresh consumers in the same group, what it committed. */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "harness.h"

#define WAIT_MS 20000

static rd_kafka_t              *producer;
static rd_kafka_mock_cluster_t *mock;
static const char              *bootstraps;
static int                      delivery_errors;

/* ---- the cluster and the producer ---- */

static void
dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
    if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR)
        delivery_errors++;
}

static void
setup(void)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char             err[256];

    ck_assert_int_eq(rd_kafka_conf_set(conf, "test.mock.num.brokers", "3", err, sizeof(err)),
                     RD_KAFKA_CONF_OK);
    rd_kafka_conf_set(conf, "log_level", "3", err, sizeof(err));
    rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    ck_assert_msg(producer != NULL, "producer: %s", err);
    mock = rd_kafka_handle_mock_cluster(producer);
    ck_assert_ptr_nonnull(mock);
    bootstraps = rd_kafka_mock_cluster_bootstraps(mock);
    ck_assert_ptr_nonnull(bootstraps);
    delivery_errors = 0;
}

static void
teardown(void)
{
    if (producer != NULL)
        rd_kafka_destroy(producer);
    producer = NULL;
    mock = NULL;
    th_cleanup();
}

static void
topic_new(const char *topic, int partitions)
{
    ck_assert_int_eq(rd_kafka_mock_topic_create(mock, topic, partitions, 1),
                     RD_KAFKA_RESP_ERR_NO_ERROR);
}

/* One record; hname/hval may be NULL (no header), key may be NULL. */
static void
produce(const char *topic, int partition, const char *key, const char *value,
        const char *hname, const char *hval)
{
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(2);
    rd_kafka_resp_err_t err;

    if (hname != NULL)
        rd_kafka_header_add(hdrs, hname, -1, hval, -1);
    rd_kafka_header_add(hdrs, "source", -1, "check_kafka", -1);
    err = rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                            RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
                            RD_KAFKA_V_VALUE((void *) value, strlen(value)),
                            RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                            RD_KAFKA_V_END);
    ck_assert_int_eq(err, RD_KAFKA_RESP_ERR_NO_ERROR);
}

static void
flush(void)
{
    ck_assert_int_eq(rd_kafka_flush(producer, WAIT_MS), RD_KAFKA_RESP_ERR_NO_ERROR);
    ck_assert_int_eq(delivery_errors, 0);
}

/* n JSON records {"n": first..first+n-1} to topic/partition. */
static void
produce_n(const char *topic, int partition, int first, int n)
{
    char v[64];

    for (int i = first; i < first + n; i++) {
        snprintf(v, sizeof(v), "{\"n\":%d}", i);
        produce(topic, partition, NULL, v, NULL, NULL);
    }
    flush();
}

/* ---- the stage ---- */

static struct th_stage *
input_new(const char *topic, const char *group, const char *extra)
{
    char conf[2048];

    snprintf(conf, sizeof(conf),
             "bootstrap_servers = \"%s\"; topics = [\"%s\"]; group_id = \"%s\";"
             " poll_timeout = \"20ms\"; commit_interval = \"50ms\";"
             " properties = [\"heartbeat.interval.ms=100\", \"session.timeout.ms=2500\","
             " \"topic.metadata.refresh.interval.ms=1000\"]; %s",
             bootstraps, topic, group, extra ? extra : "");
    return th_stage_new("kafka", ORDERD_INPUT, conf);
}

static long
prop_long(const orderd_msg *m, const char *key)
{
    const char *v = th_host()->msg_prop(m, key);

    ck_assert_msg(v != NULL, "property %s missing", key);
    return strtol(v, NULL, 10);
}

/* Wait for n submissions, failing the test with what arrived otherwise. */
static void
wait_submitted(struct th_stage *s, size_t n)
{
    ck_assert_msg(th_wait_submitted(s, n, WAIT_MS), "expected %zu records, got %zu", n,
                  th_submitted(s));
}

/* Take the i'th submitted message; ack it OK when ack is set, then free it. */
static void
take_ack(struct th_stage *s, size_t i, int ack)
{
    orderd_msg *m = th_take(s, i);

    ck_assert_ptr_nonnull(m);
    if (ack)
        th_ack(s, m, ORDERD_OK, NULL);
    th_msg_free(m);
}

/* ---- tests ---- */

START_TEST(test_fields)
{
    struct th_stage *s;
    const orderd_host *h = th_host();
    orderd_msg *m;
    json_t *want;

    topic_new("orders", 1);
    produce("orders", 0, "c-42", "{\"id\":\"ord-1\",\"customerId\":\"c-42\"}", "message-id",
            "ord-1");
    produce("orders", 0, "c-43", "[1,2]", NULL, NULL);
    flush();

    s = input_new("orders", "fields", "message_id = \"header\";");
    ck_assert_int_eq(th_start(s), 0);
    wait_submitted(s, 2);

    m = th_take(s, 0);
    ck_assert_str_eq(h->msg_id(m), "ord-1");
    want = json_loads("{\"id\":\"ord-1\",\"customerId\":\"c-42\"}", 0, NULL);
    ck_assert(json_equal(h->msg_body(m), want));
    json_decref(want);
    ck_assert_str_eq(h->msg_partition_key(m), "c-42");
    ck_assert_str_eq(h->msg_prop(m, "source"), "check_kafka");
    ck_assert_str_eq(h->msg_prop(m, "message-id"), "ord-1");
    ck_assert_str_eq(h->msg_prop(m, "kafka_topic"), "orders");
    ck_assert_int_eq(prop_long(m, "kafka_partition"), 0);
    ck_assert_int_eq(prop_long(m, "kafka_offset"), 0);
    ck_assert(h->msg_enqueued_ms(m) > 0);
    th_ack(s, m, ORDERD_OK, NULL);
    th_msg_free(m);

    /* no header: the coordinates name it */
    m = th_take(s, 1);
    ck_assert_str_eq(h->msg_id(m), "orders-0-1");
    ck_assert(json_is_array(h->msg_body(m)));
    ck_assert_str_eq(h->msg_partition_key(m), "c-43");
    th_ack(s, m, ORDERD_OK, NULL);
    th_msg_free(m);
    th_stage_free(s);

    /* message_id = "key", in another group so it reads from the start again */
    s = input_new("orders", "fields-key", "message_id = \"key\";");
    ck_assert_int_eq(th_start(s), 0);
    wait_submitted(s, 2);
    m = th_take(s, 1);
    ck_assert_str_eq(h->msg_id(m), "c-43");
    th_msg_free(m);
    th_stage_free(s);
}
END_TEST

/* Acks out of order: only the completed prefix is committed, so a new
 * consumer of the group resumes at the first un-acked record, and after
 * everything is acked nothing is consumed twice. */
START_TEST(test_out_of_order_acks_resume)
{
    static const int acked[10] = { 1, 1, 1, 0, 1, 1, 0, 1, 0, 0 };
    struct th_stage *s;
    orderd_msg *m;
    size_t i;

    topic_new("t", 1);
    produce_n("t", 0, 0, 10);

    s = input_new("t", "g", NULL);
    ck_assert_int_eq(th_start(s), 0);
    wait_submitted(s, 10);
    /* acks in reverse order, with holes at 3, 6, 8, 9 */
    for (i = 10; i-- > 0;) {
        m = th_take(s, i);
        ck_assert_int_eq(prop_long(m, "kafka_offset"), (long) i);
        if (acked[i])
            th_ack(s, m, ORDERD_OK, NULL);
        th_msg_free(m);
    }
    ck_assert_int_eq((int) th_dead_letters(s), 0);
    th_stage_free(s);

    /* resumes at 3: 0-2 never again; 4, 5, 7 again (one offset per partition) */
    s = input_new("t", "g", NULL);
    ck_assert_int_eq(th_start(s), 0);
    wait_submitted(s, 7);
    for (i = 0; i < 7; i++) {
        m = th_take(s, i);
        ck_assert_int_eq(prop_long(m, "kafka_offset"), (long) (3 + i));
        /* ack with a core-settled failure outcome: still final for the input */
        th_ack(s, m, i == 0 ? ORDERD_REJECT : ORDERD_OK, i == 0 ? "dead-lettered" : NULL);
        th_msg_free(m);
    }
    th_stage_free(s);

    /* everything was committed: only the new record comes */
    produce_n("t", 0, 10, 1);
    s = input_new("t", "g", NULL);
    ck_assert_int_eq(th_start(s), 0);
    wait_submitted(s, 1);
    m = th_take(s, 0);
    ck_assert_int_eq(prop_long(m, "kafka_offset"), 10);
    th_msg_free(m);
    th_stage_free(s);
}
END_TEST

/* A payload that is not JSON is dead-lettered with a reason and counts as
 * complete: the offset moves over it. */
START_TEST(test_invalid_json_dead_lettered)
{
    struct th_stage *s;
    const orderd_msg *dl;
    const char *reason;
    orderd_msg *m;

    topic_new("t", 1);
    produce("t", 0, NULL, "{\"n\":0}", NULL, NULL);
    produce("t", 0, NULL, "{\"n\": oops", NULL, NULL);
    produce("t", 0, NULL, "{\"n\":2}", NULL, NULL);
    flush();

    s = input_new("t", "g", NULL);
    ck_assert_int_eq(th_start(s), 0);
    wait_submitted(s, 2);
    ck_assert_uint_eq(th_dead_letters(s), 1);
    dl = th_dead_letter(s, 0, &reason);
    ck_assert_ptr_nonnull(strstr(reason, "not JSON"));
    ck_assert_str_eq(th_host()->msg_id(dl), "t-0-1");
    ck_assert_str_eq(json_string_value(th_host()->msg_body((orderd_msg *) dl)), "{\"n\": oops");
    ck_assert_int_eq((int) th_metric(s, "kafka_dead_letters"), 1);
    take_ack(s, 0, 1);
    m = th_take(s, 1);
    ck_assert_int_eq(prop_long(m, "kafka_offset"), 2);
    th_ack(s, m, ORDERD_OK, NULL);
    th_msg_free(m);
    th_stage_free(s);

    produce_n("t", 0, 3, 1);
    s = input_new("t", "g", NULL);
    ck_assert_int_eq(th_start(s), 0);
    wait_submitted(s, 1);
    m = th_take(s, 0);
    ck_assert_int_eq(prop_long(m, "kafka_offset"), 3);
    th_msg_free(m);
    ck_assert_uint_eq(th_dead_letters(s), 0);
    th_stage_free(s);
}
END_TEST

/* max_in_flight pauses a partition; acks resume it, in order. */
START_TEST(test_max_in_flight)
{
    struct th_stage *s;
    orderd_msg *m;
    size_t i;

    topic_new("t", 1);
    produce_n("t", 0, 0, 12);
    s = input_new("t", "g", "max_in_flight = 4;");
    ck_assert_int_eq(th_start(s), 0);
    wait_submitted(s, 4);
    /* bounded wait for something that must not happen */
    ck_assert_int_eq(th_wait_submitted(s, 5, 500), 0);
    for (i = 0; i < 12; i++) {
        wait_submitted(s, i + 1);
        ck_assert_int_le((int) th_submitted(s), (int) i + 4);
        m = th_take(s, i);
        ck_assert_int_eq(prop_long(m, "kafka_offset"), (long) i);
        th_ack(s, m, ORDERD_OK, NULL);
        th_msg_free(m);
    }
    th_stage_free(s);
}
END_TEST

/* A failed submit does not lose the record: it is fetched and offered again. */
START_TEST(test_submit_error_refetches)
{
    struct th_stage *s;
    orderd_msg *m;

    topic_new("t", 1);
    produce_n("t", 0, 0, 3);
    s = input_new("t", "g", NULL);
    th_set_submit_result(s, -ENOSPC);
    ck_assert_int_eq(th_start(s), 0);
    /* wait for the input to have tried and backed off at least once */
    for (int i = 0; i < 200 && th_metric(s, "kafka_messages") == 0; i++) {
        ck_assert_int_eq(th_wait_submitted(s, 1, 20), 0);
    }
    th_set_submit_result(s, 0);
    wait_submitted(s, 3);
    for (size_t i = 0; i < 3; i++) {
        m = th_take(s, i);
        ck_assert_int_eq(prop_long(m, "kafka_offset"), (long) i);
        th_ack(s, m, ORDERD_OK, NULL);
        th_msg_free(m);
    }
    th_stage_free(s);
}
END_TEST

/* Two consumers in one group share a 4-partition topic.  A takes all four,
 * acks nothing; B joins, the partitions are split, and A's records from
 * before the split are refetched by whoever owns them now.  A then acks
 * everything it holds (the acks from before the split must be ignored),
 * B acks nothing.  A third consumer of the group must get exactly B's
 * partitions again, from their start: nothing lost, nothing skipped. */
START_TEST(test_rebalance_shares_partitions)
{
    struct th_stage *a, *b, *c;
    int seen[4][10] = { { 0 } }, b_parts[4] = { 0 }, nb_parts = 0;
    orderd_msg *m;
    size_t i, na;
    long part, off;
    int stale_a, a_short;

    topic_new("r", 4);
    for (int p = 0; p < 4; p++)
        produce_n("r", p, p * 10, 10);

    a = input_new("r", "grp", NULL);
    ck_assert_int_eq(th_start(a), 0);
    wait_submitted(a, 40);

    b = input_new("r", "grp", NULL);
    ck_assert_int_eq(th_start(b), 0);
    /* B's share, and A's share fetched again after the split */
    wait_submitted(b, 20);
    wait_submitted(a, 60);
    ck_assert_int_ge((int) th_metric(a, "kafka_rebalances"), 3);

    na = th_submitted(a);
    for (i = 0; i < na; i++) {
        m = th_take(a, i);
        part = prop_long(m, "kafka_partition");
        off = prop_long(m, "kafka_offset");
        ck_assert(part >= 0 && part < 4 && off >= 0 && off < 10);
        seen[part][off]++;
        th_ack(a, m, ORDERD_OK, NULL);
        th_msg_free(m);
    }
    /* At least the 40 records A fetched before the split are stale.  A's
     * valid acks are normally its two partitions' 20; fewer means the broker
     * rebalanced again after A's last fetch (a member that missed its session
     * on a loaded machine), so A could not complete those partitions and C
     * may rightly consume them again below. */
    stale_a = (int) th_metric(a, "kafka_stale_acks");
    ck_assert_int_ge(stale_a, 40);
    a_short = (int) na - stale_a < 20;
    for (i = 0; i < th_submitted(b); i++) {
        m = th_take(b, i);
        part = prop_long(m, "kafka_partition");
        off = prop_long(m, "kafka_offset");
        ck_assert(part >= 0 && part < 4 && off >= 0 && off < 10);
        seen[part][off]++;
        if (!b_parts[part]++)
            nb_parts++;
        th_msg_free(m);
    }
    /* every record reached the pipeline at least once */
    for (int p = 0; p < 4; p++)
        for (int o = 0; o < 10; o++)
            ck_assert_msg(seen[p][o] >= 1, "record %d/%d never consumed", p, o);
    ck_assert_int_eq(nb_parts, 2);

    /* commit A's acks while the group is stable, then both leave */
    th_stop(a);
    th_stage_free(b);
    th_stage_free(a);

    c = input_new("r", "grp", NULL);
    ck_assert_int_eq(th_start(c), 0);
    wait_submitted(c, 20);
    for (i = 0; i < 20; i++) {
        m = th_take(c, i);
        part = prop_long(m, "kafka_partition");
        ck_assert_msg(b_parts[part] || a_short,
                      "partition %ld was completed by A yet consumed again (A: %zu taken, %d stale)",
                      part, na, stale_a);
        th_ack(c, m, ORDERD_OK, NULL);
        th_msg_free(m);
    }
    /* bounded wait for something that must not happen: A's records again */
    if (!a_short)
        ck_assert_int_eq(th_wait_submitted(c, 21, 1000), 0);
    th_stage_free(c);
}
END_TEST

START_TEST(test_config_errors)
{
    static const char *const bad[] = {
        "properties = [\"enable.auto.commit=true\"];",
        "properties = [\"no-equals-sign\"];",
        "properties = [\"no.such.librdkafka.setting=1\"];",
        "max_in_flight = 0;",
        "auto_offset_reset = \"middle\";",
    };
    char conf[512], err[2048];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(conf, sizeof(conf), "bootstrap_servers = \"%s\"; topics = [\"t\"]; %s",
                 bootstraps, bad[i]);
        ck_assert_msg(th_stage_try("kafka", ORDERD_INPUT, conf, err, sizeof(err)) == NULL,
                      "accepted: %s", bad[i]);
    }
    /* and the good one, with a secret password, is accepted */
    snprintf(conf, sizeof(conf), "bootstrap_servers = \"%s\"; topics = [\"t\"];"
             " sasl_username = \"u\"; sasl_password = \"p\";"
             " properties = [\"security.protocol=plaintext\"];", bootstraps);
    th_stage_free(th_stage_new("kafka", ORDERD_INPUT, conf));
}
END_TEST

static Suite *
kafka_suite(void)
{
    Suite *s = suite_create("kafka");
    TCase *tc = tcase_create("input");

    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_fields);
    tcase_add_test(tc, test_out_of_order_acks_resume);
    tcase_add_test(tc, test_invalid_json_dead_lettered);
    tcase_add_test(tc, test_max_in_flight);
    tcase_add_test(tc, test_submit_error_refetches);
    tcase_add_test(tc, test_config_errors);
    tcase_add_test(tc, test_rebalance_shares_partitions);
    suite_add_tcase(s, tc);
    return s;
}

/* check_kafka --serve TOPIC PARTITIONS FILE: for tests/integration/kafka-*.sh,
 * run a mock cluster (this process is its only home), print its bootstrap
 * servers, and produce every NDJSON line appended to FILE (key = its "id"),
 * round-robin over the partitions, until killed. */
static int
serve(const char *topic, int parts, const char *path)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char   line[4096], key[256], err[256];
    FILE  *f;
    int    n = 0;
    const char *id;

    /* no ck_assert here: Check's macros need a running test */
    if (rd_kafka_conf_set(conf, "test.mock.num.brokers", "3", err, sizeof(err)) != RD_KAFKA_CONF_OK
        || (producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err))) == NULL
        || (mock = rd_kafka_handle_mock_cluster(producer)) == NULL
        || rd_kafka_mock_topic_create(mock, topic, parts, 1) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fprintf(stderr, "check_kafka --serve: cannot start the mock cluster: %s\n", err);
        return EXIT_FAILURE;
    }
    printf("%s\n", rd_kafka_mock_cluster_bootstraps(mock));
    fflush(stdout);
    f = fopen(path, "r");
    if (f == NULL) {
        perror(path);
        return EXIT_FAILURE;
    }
    for (;;) {
        if (fgets(line, sizeof(line), f) == NULL) {
            struct timespec ts = { 0, 50 * 1000000L };

            clearerr(f);
            rd_kafka_poll(producer, 0);
            nanosleep(&ts, NULL);
            continue;
        }
        line[strcspn(line, "\n")] = '\0';
        key[0] = '\0';
        if ((id = strstr(line, "\"id\":\"")) != NULL)
            sscanf(id + 6, "%255[^\"]", key);
        if (rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(n++ % parts),
                              RD_KAFKA_V_KEY(key, strlen(key)),
                              RD_KAFKA_V_VALUE(line, strlen(line)),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END)
            != RD_KAFKA_RESP_ERR_NO_ERROR
            || rd_kafka_flush(producer, WAIT_MS) != RD_KAFKA_RESP_ERR_NO_ERROR) {
            fprintf(stderr, "check_kafka --serve: cannot produce\n");
            return EXIT_FAILURE;
        }
    }
}

int
main(int argc, char **argv)
{
    SRunner *sr;
    int      failed;

    if (argc == 5 && strcmp(argv[1], "--serve") == 0)
        return serve(argv[2], atoi(argv[3]), argv[4]);
    sr = srunner_create(kafka_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
