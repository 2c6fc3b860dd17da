/* check_file.c - the `file` plugin through the real loader (tests/harness.h):
 * NDJSON input with durable offsets, and NDJSON publish. */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static char *
tpath(const char *name)
{
    char *p;

    ck_assert_int_ge(asprintf(&p, "%s/%s", th_state_dir(), name), 0);
    return p;
}

static void
put(const char *path, const char *mode, const char *text)
{
    FILE *f = fopen(path, mode);

    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fputs(text, f) >= 0, 1);
    ck_assert_int_eq(fclose(f), 0);
}

static char *
slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf = NULL;
    size_t len = 0;

    ck_assert_ptr_nonnull(f);
    FILE *mem = open_memstream(&buf, &len);
    int c;
    while ((c = fgetc(f)) != EOF)
        fputc(c, mem);
    fclose(mem);
    fclose(f);
    return buf;
}

static struct th_stage *
input(const char *path, const char *extra)
{
    char conf[1024];

    snprintf(conf, sizeof(conf), "path = \"%s\"; %s", path, extra ? extra : "");
    return th_stage_new("file", ORDERD_INPUT, conf);
}

static int64_t
mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
teardown(void)
{
    th_cleanup();
}

/* ---- input ------------------------------------------------------------- */

START_TEST(input_submits_lines_in_order)
{
    const orderd_host *h = th_host();
    char *path = tpath("in.ndjson");
    put(path, "w", "{\"id\":\"a\",\"n\":1,\"customerId\":\"c-1\"}\n"
                   "\n"
                   "{\"n\":2}\r\n"
                   "[1,2]\n"
                   "{\"id\":7,\"n\":4,\"customerId\":42}\n"
                   "{\"id\":\"e\",\"n\":5}");   /* last line without newline */
    struct th_stage *s = input(path, "partition_key_field = \"customerId\";");

    ck_assert_int_eq(th_start(s), 0);
    ck_assert(th_wait_submitted(s, 5, 5000));
    orderd_msg *m[5];
    for (int i = 0; i < 5; i++)
        m[i] = th_take(s, (size_t)i);

    ck_assert_str_eq(h->msg_id(m[0]), "a");
    ck_assert_int_eq(json_integer_value(json_object_get(h->msg_body(m[0]), "n")), 1);
    ck_assert_str_eq(h->msg_partition_key(m[0]), "c-1");
    /* No id in the body: a generated one, and no partition key. */
    ck_assert_int_eq(json_integer_value(json_object_get(h->msg_body(m[1]), "n")), 2);
    ck_assert_str_ne(h->msg_id(m[1]), "");
    ck_assert_ptr_null(h->msg_partition_key(m[1]));
    ck_assert(json_is_array(h->msg_body(m[2])));
    /* A non-string id is not used; an integer partition key is. */
    ck_assert_str_ne(h->msg_id(m[3]), "7");
    ck_assert_str_eq(h->msg_partition_key(m[3]), "42");
    ck_assert_str_eq(h->msg_id(m[4]), "e");
    ck_assert_str_ne(h->msg_id(m[1]), h->msg_id(m[2]));
    th_stop(s);                         /* joins the reader: its counts are final */
    ck_assert_int_eq(th_dead_letters(s), 0);
    ck_assert(th_metric(s, "file_lines") == 5);

    for (int i = 0; i < 5; i++)
        th_msg_free(m[i]);
    th_stage_free(s);
    free(path);
}
END_TEST

START_TEST(input_custom_id_field)
{
    char *path = tpath("in.ndjson");
    put(path, "w", "{\"id\":\"no\",\"orderId\":\"o-9\"}\n");
    struct th_stage *s = input(path, "id_field = \"orderId\";");

    ck_assert_int_eq(th_start(s), 0);
    ck_assert(th_wait_submitted(s, 1, 5000));
    orderd_msg *m = th_take(s, 0);
    ck_assert_str_eq(th_host()->msg_id(m), "o-9");
    th_msg_free(m);
    th_stage_free(s);
    free(path);
}
END_TEST

START_TEST(input_invalid_json_is_dead_lettered)
{
    char *path = tpath("in.ndjson");
    put(path, "w", "{\"id\":\"a\"}\n{\"id\": bad}\n{\"id\":\"c\"}\n\xff{\n{\"id\":\"e\"}\n");
    struct th_stage *s = input(path, NULL);
    const char *reason;

    ck_assert_int_eq(th_start(s), 0);
    /* Lines are handled in order: once e is in, both dead letters are. */
    ck_assert(th_wait_submitted(s, 3, 5000));
    ck_assert_int_eq(th_dead_letters(s), 2);
    const orderd_msg *dl = th_dead_letter(s, 0, &reason);
    ck_assert_ptr_nonnull(dl);
    ck_assert_str_eq(json_string_value(th_host()->msg_body((orderd_msg *)dl)), "{\"id\": bad}");
    ck_assert_msg(strncmp(reason, "invalid JSON at line 2, column ", 31) == 0, "reason: %s", reason);
    ck_assert_ptr_nonnull(strstr(reason, ": "));

    dl = th_dead_letter(s, 1, &reason);
    /* Not UTF-8: kept readable rather than lost. */
    ck_assert_str_eq(json_string_value(th_host()->msg_body((orderd_msg *)dl)), "?{");
    ck_assert_msg(strncmp(reason, "invalid JSON at line 4,", 23) == 0, "reason: %s", reason);
    ck_assert(th_metric(s, "file_dead_letters") == 2);

    orderd_msg *a = th_take(s, 0), *c = th_take(s, 1), *e = th_take(s, 2);
    ck_assert_str_eq(th_host()->msg_id(a), "a");
    ck_assert_str_eq(th_host()->msg_id(c), "c");
    ck_assert_str_eq(th_host()->msg_id(e), "e");
    th_ack(s, a, ORDERD_OK, NULL);
    th_ack(s, c, ORDERD_OK, NULL);
    th_ack(s, e, ORDERD_OK, NULL);
    th_msg_free(a);
    th_msg_free(c);
    th_msg_free(e);
    th_stage_free(s);

    /* Dead-lettered lines count as done: a restart has nothing to re-read. */
    put(path, "a", "{\"id\":\"z\"}\n");
    s = input(path, NULL);
    ck_assert_int_eq(th_start(s), 0);
    ck_assert(th_wait_submitted(s, 1, 5000));
    th_stop(s);
    ck_assert_int_eq(th_submitted(s), 1);
    ck_assert_int_eq(th_dead_letters(s), 0);
    a = th_take(s, 0);
    ck_assert_str_eq(th_host()->msg_id(a), "z");
    th_msg_free(a);
    th_stage_free(s);
    free(path);
}
END_TEST

START_TEST(input_long_lines_are_dead_lettered)
{
    char *path = tpath("in.ndjson");
    size_t big = 200000;            /* larger than a read chunk: never held whole */
    char *line = malloc(big + 1);
    const char *reason;

    memset(line, 'x', big);
    line[big] = '\0';
    put(path, "w", "{\"id\":\"a\"}\n\"");
    put(path, "a", line);
    put(path, "a", "\"\n{\"id\":\"b\",\"pad\":\"0123456789012345678901234567890123456789\"}\n{\"id\":\"c\"}\n");
    struct th_stage *s = input(path, "max_line = \"40\";");

    ck_assert_int_eq(th_start(s), 0);
    ck_assert(th_wait_submitted(s, 2, 5000));
    th_stop(s);
    ck_assert_int_eq(th_submitted(s), 2);
    ck_assert_int_eq(th_dead_letters(s), 2);
    th_dead_letter(s, 0, &reason);
    ck_assert_msg(strstr(reason, "line 2") && strstr(reason, "max_line"), "reason: %s", reason);
    th_dead_letter(s, 1, &reason);
    ck_assert_msg(strstr(reason, "line 3") && strstr(reason, "max_line"), "reason: %s", reason);

    orderd_msg *a = th_take(s, 0), *c = th_take(s, 1);
    ck_assert_str_eq(th_host()->msg_id(a), "a");
    ck_assert_str_eq(th_host()->msg_id(c), "c");
    th_msg_free(a);
    th_msg_free(c);
    th_stage_free(s);
    free(line);
    free(path);
}
END_TEST

/* Acks arrive out of order: only the prefix that is fully acked may be
 * skipped after a restart. */
START_TEST(input_resumes_at_low_water_mark)
{
    const orderd_host *h = th_host();
    char *path = tpath("in.ndjson");
    const char *l1 = "{\"id\":\"a\"}\n";
    put(path, "w", "{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"c\"}\n{\"id\":\"d\"}\n");
    struct th_stage *s = input(path, "commit_interval = \"1h\";");

    ck_assert_int_eq(th_start(s), 0);
    ck_assert(th_wait_submitted(s, 4, 5000));
    orderd_msg *m[4];
    for (int i = 0; i < 4; i++)
        m[i] = th_take(s, (size_t)i);
    th_ack(s, m[0], ORDERD_OK, NULL);
    th_ack(s, m[2], ORDERD_OK, NULL);
    th_stop(s);
    ck_assert(th_metric(s, "file_offset") == (double)strlen(l1));
    for (int i = 0; i < 4; i++)
        th_msg_free(m[i]);
    th_stage_free(s);

    /* Restart: b is re-read (and c, which comes after the gap), a is not. */
    s = input(path, NULL);
    ck_assert_int_eq(th_start(s), 0);
    ck_assert(th_wait_submitted(s, 3, 5000));
    const char *want[] = { "b", "c", "d" };
    for (int i = 0; i < 3; i++) {
        m[i] = th_take(s, (size_t)i);
        ck_assert_str_eq(h->msg_id(m[i]), want[i]);
    }
    /* Ack everything, in reverse, then restart: nothing old comes back. */
    for (int i = 2; i >= 0; i--)
        th_ack(s, m[i], ORDERD_OK, NULL);
    for (int i = 0; i < 3; i++)
        th_msg_free(m[i]);
    th_stage_free(s);

    put(path, "a", "{\"id\":\"e\"}\n");
    s = input(path, NULL);
    ck_assert_int_eq(th_start(s), 0);
    ck_assert(th_wait_submitted(s, 1, 5000));
    th_stop(s);
    ck_assert_int_eq(th_submitted(s), 1);
    m[0] = th_take(s, 0);
    ck_assert_str_eq(h->msg_id(m[0]), "e");
    th_msg_free(m[0]);
    th_stage_free(s);
    free(path);
}
END_TEST

/* The offset is also committed while running, at most every commit_interval. */
START_TEST(input_commits_while_running)
{
    char *path = tpath("in.ndjson");
    char *offp = tpath("my.offset");
    char conf[256];
    put(path, "w", "{\"id\":\"a\"}\n{\"id\":\"b\"}\n");
    snprintf(conf, sizeof(conf), "commit_interval = \"0\"; offset_file = \"%s\";", offp);
    struct th_stage *s = input(path, conf);

    ck_assert_int_eq(th_start(s), 0);
    ck_assert(th_wait_submitted(s, 2, 5000));
    orderd_msg *a = th_take(s, 0), *b = th_take(s, 1);
    th_ack(s, b, ORDERD_OK, NULL);
    th_ack(s, a, ORDERD_OK, NULL);
    /* Not stopped: an ack (or the idle reader) commits without stop(). */
    json_int_t off = -1, line = -1;
    for (int64_t until = mono_ms() + 5000; mono_ms() < until; ) {
        json_t *j = json_load_file(offp, 0, NULL);
        off = json_integer_value(json_object_get(j, "offset"));
        line = json_integer_value(json_object_get(j, "line"));
        json_decref(j);
        if (off == 22)
            break;
        usleep(10000);
    }
    ck_assert_int_eq(off, 22);
    ck_assert_int_eq(line, 2);
    th_msg_free(a);
    th_msg_free(b);
    th_stage_free(s);
    free(offp);
    free(path);
}
END_TEST

START_TEST(input_replaced_file_starts_at_zero)
{
    char *path = tpath("in.ndjson");
    char *tmp = tpath("in.tmp");
    put(path, "w", "{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"c\"}\n");
    struct th_stage *s = input(path, NULL);

    ck_assert_int_eq(th_start(s), 0);
    ck_assert(th_wait_submitted(s, 3, 5000));
    for (size_t i = 0; i < 3; i++) {
        orderd_msg *m = th_take(s, i);
        th_ack(s, m, ORDERD_OK, NULL);
        th_msg_free(m);
    }
    th_stage_free(s);

    /* A new file (new inode) at the same path, even a longer one. */
    put(tmp, "w", "{\"id\":\"x\"}\n{\"id\":\"y\"}\n{\"id\":\"z\"}\n{\"id\":\"w\"}\n");
    ck_assert_int_eq(rename(tmp, path), 0);
    s = input(path, NULL);
    ck_assert_int_eq(th_start(s), 0);
    ck_assert(th_wait_submitted(s, 4, 5000));
    orderd_msg *m = th_take(s, 0);
    ck_assert_str_eq(th_host()->msg_id(m), "x");
    th_ack(s, m, ORDERD_OK, NULL);
    th_msg_free(m);
    for (size_t i = 1; i < 4; i++) {
        m = th_take(s, i);
        th_ack(s, m, ORDERD_OK, NULL);
        th_msg_free(m);
    }
    th_stage_free(s);

    /* Truncated in place (same inode, shorter than the saved offset). */
    put(path, "w", "{\"id\":\"t\"}\n");
    s = input(path, NULL);
    ck_assert_int_eq(th_start(s), 0);
    ck_assert(th_wait_submitted(s, 1, 5000));
    m = th_take(s, 0);
    ck_assert_str_eq(th_host()->msg_id(m), "t");
    th_msg_free(m);
    th_stage_free(s);
    free(tmp);
    free(path);
}
END_TEST

START_TEST(input_follow_picks_up_appended_lines)
{
    char *path = tpath("in.ndjson");
    put(path, "w", "{\"id\":\"a\"}\n");
    struct th_stage *s = input(path, "follow = true; poll_interval = \"20ms\";");

    ck_assert_int_eq(th_start(s), 0);
    ck_assert(th_wait_submitted(s, 1, 5000));
    put(path, "a", "{\"id\":\"b\"}\n{\"id\":");         /* a half-written line ... */
    ck_assert(th_wait_submitted(s, 2, 5000));
    put(path, "a", "\"c\"}\n");                      /* ... completed later */
    ck_assert(th_wait_submitted(s, 3, 5000));
    orderd_msg *c = th_take(s, 2);
    ck_assert_str_eq(th_host()->msg_id(c), "c");
    th_msg_free(c);

    /* Truncation while following: start over at the new content. */
    put(path, "w", "{\"id\":\"t\"}\n");
    ck_assert(th_wait_submitted(s, 4, 5000));
    orderd_msg *t = th_take(s, 3);
    ck_assert_str_eq(th_host()->msg_id(t), "t");
    th_msg_free(t);
    th_stage_free(s);
    free(path);
}
END_TEST

START_TEST(input_follow_waits_for_missing_file)
{
    char *path = tpath("later.ndjson");
    struct th_stage *s = input(path, "follow = true; poll_interval = \"20ms\";");

    ck_assert_int_eq(th_start(s), 0);
    put(path, "w", "{\"id\":\"a\"}\n");
    ck_assert(th_wait_submitted(s, 1, 5000));
    th_stage_free(s);

    /* Without follow a missing file is an error at start. */
    char *none = tpath("none.ndjson");
    s = input(none, NULL);
    ck_assert_int_eq(th_start(s), -ENOENT);
    th_stage_free(s);
    free(none);
    free(path);
}
END_TEST

START_TEST(input_stop_is_prompt)
{
    char *path = tpath("in.ndjson");
    put(path, "w", "{\"id\":\"a\"}\n{\"id\":\"b\"}\n");

    /* Waiting for input with a long poll interval. */
    struct th_stage *s = input(path, "follow = true; poll_interval = \"1h\"; commit_interval = \"1h\";");
    ck_assert_int_eq(th_start(s), 0);
    ck_assert(th_wait_submitted(s, 2, 5000));
    int64_t t0 = mono_ms();
    th_stop(s);
    ck_assert_int_lt(mono_ms() - t0, 1000);
    th_stage_free(s);

    /* Refused by a full pipeline (-EAGAIN) over and over. */
    put(path, "a", "{\"id\":\"c\"}\n");
    s = input(path, NULL);
    th_set_submit_result(s, -EAGAIN);
    ck_assert_int_eq(th_start(s), 0);
    ck_assert(!th_wait_submitted(s, 1, 100));
    t0 = mono_ms();
    th_stop(s);
    ck_assert_int_lt(mono_ms() - t0, 1000);
    ck_assert_int_eq(th_submitted(s), 0);
    th_stage_free(s);
    free(path);
}
END_TEST

/* Backpressure: refused lines are offered again, none lost or skipped. */
START_TEST(input_retries_refused_submits)
{
    const orderd_host *h = th_host();
    char *path = tpath("in.ndjson");
    put(path, "w", "{\"id\":\"a\"}\n{\"id\":\"b\"}\n");
    struct th_stage *s = input(path, NULL);

    th_set_submit_result(s, -EAGAIN);
    ck_assert_int_eq(th_start(s), 0);
    ck_assert(!th_wait_submitted(s, 1, 200));
    th_set_submit_result(s, 0);
    ck_assert(th_wait_submitted(s, 2, 5000));
    orderd_msg *a = th_take(s, 0), *b = th_take(s, 1);
    ck_assert_str_eq(h->msg_id(a), "a");
    ck_assert_str_eq(h->msg_id(b), "b");
    th_msg_free(a);
    th_msg_free(b);
    th_stage_free(s);

    /* -ESHUTDOWN ends reading without counting the line as read. */
    char *path2 = tpath("in2.ndjson");
    put(path2, "w", "{\"id\":\"x\"}\n");
    s = input(path2, NULL);
    th_set_submit_result(s, -ESHUTDOWN);
    ck_assert_int_eq(th_start(s), 0);
    ck_assert(!th_wait_submitted(s, 1, 200));   /* time for the reader to be refused */
    th_stage_free(s);
    s = input(path2, NULL);
    ck_assert_int_eq(th_start(s), 0);
    ck_assert(th_wait_submitted(s, 1, 5000));
    a = th_take(s, 0);
    ck_assert_str_eq(h->msg_id(a), "x");
    th_msg_free(a);
    th_stage_free(s);
    free(path2);
    free(path);
}
END_TEST

START_TEST(input_bad_config_is_refused)
{
    char err[1024];

    ck_assert_ptr_null(th_stage_try("file", ORDERD_INPUT, "follow = true;", err, sizeof(err)));
    ck_assert_ptr_null(th_stage_try("file", ORDERD_INPUT, "path = \"/x\"; max_line = \"lots\";",
                                    err, sizeof(err)));
    ck_assert_ptr_null(th_stage_try("file", ORDERD_INPUT, "path = \"/x\"; folow = true;",
                                    err, sizeof(err)));
}
END_TEST

/* ---- publish ------------------------------------------------------------ */

static struct th_stage *
publish(const char *path, const char *extra)
{
    char conf[1024];

    snprintf(conf, sizeof(conf), "path = \"%s\"; %s", path, extra ? extra : "");
    return th_stage_new("file", ORDERD_PUBLISH, conf);
}

START_TEST(publish_body_lines)
{
    char *path = tpath("out.ndjson");
    struct th_stage *s = publish(path, NULL);
    orderd_msg *a = th_msg("{\"id\":\"a\",\"n\":1,\"s\":\"\\u00e9\\n\"}");
    orderd_msg *b = th_msg("[true,null]");

    ck_assert_int_eq(th_process(s, a), ORDERD_OK);
    ck_assert_int_eq(th_process(s, b), ORDERD_OK);
    th_stage_free(s);
    char *got = slurp(path);
    ck_assert_str_eq(got, "{\"id\":\"a\",\"n\":1,\"s\":\"\xc3\xa9\\n\"}\n[true,null]\n");
    free(got);

    /* Appends to what is there. */
    s = publish(path, NULL);
    ck_assert_int_eq(th_process(s, b), ORDERD_OK);
    th_stage_free(s);
    got = slurp(path);
    ck_assert_str_eq(got, "{\"id\":\"a\",\"n\":1,\"s\":\"\xc3\xa9\\n\"}\n[true,null]\n[true,null]\n");
    free(got);
    th_msg_free(a);
    th_msg_free(b);
    free(path);
}
END_TEST

/* A body set as text (ABI 1.4, as the sqlite feed does) is written as it
 * was given, byte for byte, without a tree being made for it. */
START_TEST(publish_body_text_as_given)
{
    const orderd_host *h = th_host();
    char *path = tpath("out.ndjson");
    struct th_stage *s = publish(path, NULL);
    orderd_msg *a = th_msg("null");
    static const char text[] = "{\"n\":1.50,\"s\":\"\\u00e9\"}";

    ck_assert_int_eq(h->msg_set_body_text(a, text, strlen(text)), 0);
    ck_assert_int_eq(th_process(s, a), ORDERD_OK);
    th_stage_free(s);
    char *got = slurp(path);
    ck_assert_str_eq(got, "{\"n\":1.50,\"s\":\"\\u00e9\"}\n");   /* jansson would say 1.5, "\xc3\xa9" */
    free(got);
    th_msg_free(a);
    free(path);
}
END_TEST

START_TEST(publish_envelope_lines)
{
    const orderd_host *h = th_host();
    char *path = tpath("out.ndjson");
    struct th_stage *s = publish(path, "format = \"envelope\";");
    orderd_msg *a = th_msg("{\"id\":\"a\"}");
    orderd_msg *b = th_msg("{\"id\":\"b\"}");

    ck_assert_int_eq(h->msg_set_prop(a, "k", "v"), 0);
    ck_assert_int_eq(h->msg_set_partition_key(a, "p-1"), 0);
    h->msg_set_enqueued_ms(a, 1700000000123);
    h->msg_set_delivery_count(a, 3);
    h->msg_set_enqueued_ms(b, 5);
    ck_assert_int_eq(th_process(s, a), ORDERD_OK);
    ck_assert_int_eq(th_process(s, b), ORDERD_OK);
    th_stage_free(s);

    char *got = slurp(path);
    ck_assert_str_eq(got,
        "{\"id\":\"a\",\"properties\":{\"k\":\"v\"},\"content_type\":\"application/json\","
        "\"partition_key\":\"p-1\",\"enqueued_ms\":1700000000123,\"delivery_count\":3,"
        "\"body\":{\"id\":\"a\"}}\n"
        "{\"id\":\"b\",\"properties\":{},\"content_type\":\"application/json\","
        "\"partition_key\":null,\"enqueued_ms\":5,\"delivery_count\":1,"
        "\"body\":{\"id\":\"b\"}}\n");
    free(got);
    th_msg_free(a);
    th_msg_free(b);
    free(path);
}
END_TEST

START_TEST(publish_batch)
{
    char *path = tpath("out.ndjson");
    struct th_stage *s = publish(path, "fsync = \"always\";");
    orderd_msg *m[3] = { th_msg("{\"id\":\"a\"}"), th_msg("{\"id\":\"b\"}"), th_msg("{\"id\":\"c\"}") };
    orderd_result r[3];

    ck_assert_int_eq(th_process_batch(s, m, 3, r), 0);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(r[i].outcome, ORDERD_OK);
    ck_assert_int_eq(th_process_batch(s, m + 2, 1, r), 0);   /* a batch of one */
    ck_assert_int_eq(r[0].outcome, ORDERD_OK);
    th_stage_free(s);
    char *got = slurp(path);
    ck_assert_str_eq(got, "{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"c\"}\n{\"id\":\"c\"}\n");
    free(got);
    for (int i = 0; i < 3; i++)
        th_msg_free(m[i]);
    free(path);
}
END_TEST

START_TEST(publish_write_error_is_retry)
{
    struct th_stage *s;
    orderd_msg *m[2] = { th_msg("{\"id\":\"a\"}"), th_msg("{\"id\":\"b\"}") };
    orderd_result r[2];

    if (access("/dev/full", W_OK) != 0)
        return;                 /* no /dev/full here: nothing to provoke ENOSPC with */
    s = publish("/dev/full", "fsync = \"never\";");
    ck_assert_int_eq(th_process(s, m[0]), ORDERD_RETRY);
    ck_assert_ptr_nonnull(strstr(th_host()->msg_reason(m[0]), strerror(ENOSPC)));
    ck_assert_int_eq(th_process_batch(s, m, 2, r), 0);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(r[i].outcome, ORDERD_RETRY);
        ck_assert_ptr_nonnull(r[i].reason);
        ck_assert_ptr_nonnull(strstr(r[i].reason, strerror(ENOSPC)));
    }
    th_stage_free(s);
    th_msg_free(m[0]);
    th_msg_free(m[1]);
}
END_TEST

START_TEST(publish_fsync_modes)
{
    const char *modes[] = { "always", "interval", "never" };
    char *path = tpath("out.ndjson");

    for (size_t i = 0; i < 3; i++) {
        char conf[128];
        snprintf(conf, sizeof(conf), "fsync = \"%s\"; fsync_interval = \"10ms\";", modes[i]);
        struct th_stage *s = publish(path, conf);
        orderd_msg *m = th_msg("{\"id\":\"a\"}");
        ck_assert_int_eq(th_process(s, m), ORDERD_OK);
        th_msg_free(m);
        th_stage_free(s);
    }
    char *got = slurp(path);
    ck_assert_str_eq(got, "{\"id\":\"a\"}\n{\"id\":\"a\"}\n{\"id\":\"a\"}\n");
    free(got);
    free(path);
}
END_TEST

START_TEST(publish_bad_config_is_refused)
{
    char err[1024];

    ck_assert_ptr_null(th_stage_try("file", ORDERD_PUBLISH, "format = \"body\";", err, sizeof(err)));
    ck_assert_ptr_null(th_stage_try("file", ORDERD_PUBLISH, "path = \"/tmp/x\"; format = \"xml\";",
                                    err, sizeof(err)));
    ck_assert_ptr_null(th_stage_try("file", ORDERD_PUBLISH, "path = \"/tmp/x\"; fsync = \"sometimes\";",
                                    err, sizeof(err)));
    /* A directory that does not exist: create() fails, with a log line. */
    ck_assert_ptr_null(th_stage_try("file", ORDERD_PUBLISH, "path = \"/nonexistent-dir/x\";",
                                    err, sizeof(err)));
}
END_TEST

static Suite *
file_suite(void)
{
    Suite *s = suite_create("file");
    TCase *in = tcase_create("input");
    TCase *out = tcase_create("publish");

    tcase_add_checked_fixture(in, NULL, teardown);
    tcase_add_checked_fixture(out, NULL, teardown);
    tcase_add_test(in, input_submits_lines_in_order);
    tcase_add_test(in, input_custom_id_field);
    tcase_add_test(in, input_invalid_json_is_dead_lettered);
    tcase_add_test(in, input_long_lines_are_dead_lettered);
    tcase_add_test(in, input_resumes_at_low_water_mark);
    tcase_add_test(in, input_commits_while_running);
    tcase_add_test(in, input_replaced_file_starts_at_zero);
    tcase_add_test(in, input_follow_picks_up_appended_lines);
    tcase_add_test(in, input_follow_waits_for_missing_file);
    tcase_add_test(in, input_stop_is_prompt);
    tcase_add_test(in, input_retries_refused_submits);
    tcase_add_test(in, input_bad_config_is_refused);
    tcase_add_test(out, publish_body_lines);
    tcase_add_test(out, publish_body_text_as_given);
    tcase_add_test(out, publish_envelope_lines);
    tcase_add_test(out, publish_batch);
    tcase_add_test(out, publish_write_error_is_retry);
    tcase_add_test(out, publish_fsync_modes);
    tcase_add_test(out, publish_bad_config_is_refused);
    suite_add_tcase(s, in);
    suite_add_tcase(s, out);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(file_suite());

    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
