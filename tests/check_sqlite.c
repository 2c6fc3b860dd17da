/* check_sqlite.c - the sqlite plugin (store + feed input) through the harness,
 * on real database files in the harness's temporary state directory.  The
 * tests open the files themselves too, to check rows rather than trust the
 * plugin's own lookups, and to hold locks the plugin must survive. */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <math.h>
#include <sqlite3.h>

#include "../plugins/common/jsondec.h"
#include "../plugins/common/jsonenc.h"

#include "harness.h"
#include "msg.h"

/* ---- helpers ---- */

static void
teardown(void)
{
    th_cleanup();
}


static char *
db_path(const char *name)
{
    static char buf[512];

    snprintf(buf, sizeof(buf), "%s/%s", th_state_dir(), name);
    return buf;
}

static struct th_stage *
store_new(const char *db, const char *extra)
{
    char conf[512];

    snprintf(conf, sizeof(conf), "path = \"%s\"; %s", db, extra ? extra : "");
    return th_stage_new("sqlite", ORDERD_STORE, conf);
}

static struct th_stage *
feed_new(const char *db, const char *extra)
{
    char conf[512];

    snprintf(conf, sizeof(conf), "path = \"%s\"; poll_interval = \"10ms\"; %s", db,
             extra ? extra : "");
    return th_stage_new("sqlite", ORDERD_INPUT, conf);
}

/* An event message exactly as the orders transform emits it. */
static orderd_msg *
event_msg(const char *order, const char *evid, const char *type, int version,
          const char *status)
{
    char        body[1024], v[16];
    orderd_msg *m;

    snprintf(body, sizeof(body),
             "{\"id\":\"%s\",\"type\":\"%s\",\"orderId\":\"%s\",\"version\":%d,"
             "\"time\":\"2026-11-23T12:00:00.000Z\",\"commandId\":\"cmd-%s\","
             "\"data\":{\"amount\":39.98},"
             "\"snapshot\":{\"id\":\"%s\",\"customerId\":\"c-42\",\"currency\":\"EUR\","
             "\"items\":[{\"sku\":\"SKU-1\",\"qty\":2,\"price\":19.99}],"
             "\"status\":\"%s\",\"version\":%d,"
             "\"totals\":{\"subtotal\":39.98,\"itemCount\":2}}}",
             evid, type, order, version, evid, order, status, version);
    m = th_msg(body);
    snprintf(v, sizeof(v), "%d", version);
    ck_assert_int_eq(th_host()->msg_set_prop(m, "type", type), 0);
    ck_assert_int_eq(th_host()->msg_set_prop(m, "order_id", order), 0);
    ck_assert_int_eq(th_host()->msg_set_prop(m, "version", v), 0);
    ck_assert_int_eq(th_host()->msg_set_partition_key(m, order), 0);
    return m;
}

static void
store_one(struct th_stage *s, const char *order, const char *evid, const char *type,
          int version, const char *status)
{
    orderd_msg *m = event_msg(order, evid, type, version, status);

    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    th_msg_free(m);
}

static sqlite3 *
db_open(const char *name)
{
    sqlite3 *db = NULL;

    ck_assert_int_eq(sqlite3_open_v2(db_path(name), &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    return db;
}

/* First column of the first row as an integer (-1: no row). */
static long long
db_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st;
    long long     v = -1;

    ck_assert_msg(sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK, "%s: %s", sql,
                  sqlite3_errmsg(db));
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* First column of the first row as text, copied into buf ("" when no row). */
static const char *
db_text(sqlite3 *db, const char *sql, char *buf, size_t len)
{
    sqlite3_stmt *st;

    buf[0] = '\0';
    ck_assert_msg(sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK, "%s: %s", sql,
                  sqlite3_errmsg(db));
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) != NULL)
        snprintf(buf, len, "%s", (const char *) sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return buf;
}

/* ---- store ---- */

START_TEST(test_store_appends_events)
{
    struct th_stage *s = store_new("append.db", NULL);
    orderd_msg      *m[2];
    orderd_result    out[2];
    sqlite3         *db;
    char             buf[256];

    m[0] = event_msg("ord-1001", "evt-a1", "OrderCreated", 1, "created");
    m[1] = event_msg("ord-1001", "evt-a2", "OrderPaid", 2, "paid");
    ck_assert_int_eq(th_process_batch(s, m, 2, out), 0);
    ck_assert_int_eq(out[0].outcome, ORDERD_OK);
    ck_assert_int_eq(out[1].outcome, ORDERD_OK);
    ck_assert_double_eq(th_metric(s, "sqlite_events_inserted"), 2);
    ck_assert_double_eq(th_metric(s, "sqlite_commits"), 1);     /* one batch, one commit */

    db = db_open("append.db");
    ck_assert_int_eq(db_int(db, "SELECT COUNT(*) FROM events WHERE stream = 'ord-1001'"), 2);
    ck_assert_str_eq(db_text(db, "SELECT group_concat(id || ':' || type || ':' || version, ',')"
                                 " FROM (SELECT * FROM events ORDER BY seq)", buf, sizeof(buf)),
                     "evt-a1:OrderCreated:1,evt-a2:OrderPaid:2");
    ck_assert_str_eq(db_text(db, "SELECT time FROM events WHERE id = 'evt-a2'", buf, sizeof(buf)),
                     "2026-11-23T12:00:00.000Z");
    ck_assert_int_eq(db_int(db, "SELECT version FROM snapshots WHERE id = 'ord-1001'"), 2);
    ck_assert_str_eq(db_text(db, "SELECT status FROM snapshots WHERE id = 'ord-1001'", buf,
                             sizeof(buf)), "paid");
    ck_assert_str_eq(db_text(db, "SELECT json_extract(body, '$.customerId') FROM snapshots"
                                 " WHERE id = 'ord-1001'", buf, sizeof(buf)), "c-42");
    ck_assert_str_eq(db_text(db, "PRAGMA journal_mode", buf, sizeof(buf)), "wal");
    ck_assert_int_eq(db_int(db, "PRAGMA user_version"), 2);
    /* schema 2: the events have one index, by order, and none on the id alone */
    ck_assert_str_eq(db_text(db, "SELECT group_concat(name) FROM sqlite_master"
                                 " WHERE type = 'index' AND tbl_name = 'events'", buf, sizeof(buf)),
                     "events_stream_id");
    sqlite3_close(db);

    th_msg_free(m[0]);
    th_msg_free(m[1]);
    th_stage_free(s);
}
END_TEST

/* The stored event text is exactly the body's compact encoding (the store
 * encodes the event once and stores the snapshot's bytes from inside it,
 * wherever the key is), and the snapshot row is the snapshot's own
 * encoding. */
/* An event that is text alone (as the orders transform makes a create,
 * ABI 1.6) is stored from its text and properties, without decoding it;
 * one with an escaped string there goes by the tree and stores the same. */
START_TEST(test_store_event_text_only)
{
    static const char *const fmt =
        "{\"id\":\"%s\",\"type\":\"OrderCreated\",\"orderId\":\"%s\",\"version\":1,"
        "\"time\":\"2026-12-06T12:00:00.000Z\",\"commandId\":\"c\",\"data\":{\"n\":1},"
        "\"snapshot\":{\"n\":1,\"id\":\"%s\",\"status\":\"%s\",\"version\":1}}";
    struct th_stage *s = store_new("textonly.db", NULL);
    sqlite3         *db;
    char             text[512], sql[160], buf[1024], got[1024];

    for (int escaped = 0; escaped < 2; escaped++) {
        const char *ev = escaped ? "evt-o2" : "evt-o1", *oid = escaped ? "ord-o2" : "ord-o1";
        orderd_msg *m = th_msg("{}");
        size_t      at, n;

        snprintf(text, sizeof(text), fmt, ev, oid, oid, escaped ? "cre\\u0061ted" : "created");
        ck_assert_int_eq(th_host()->msg_set_body_json(m, text, strlen(text)), 0);
        ck_assert_int_eq(th_host()->msg_set_id(m, ev), 0);
        ck_assert_int_eq(th_host()->msg_set_prop(m, "type", "OrderCreated"), 0);
        ck_assert_int_eq(th_host()->msg_set_prop(m, "order_id", oid), 0);
        ck_assert_int_eq(th_host()->msg_set_prop(m, "version", "1"), 0);
        ck_assert_int_eq(th_process(s, m), ORDERD_OK);
        if (escaped)
            ck_assert_ptr_nonnull(m->body);
        else
            ck_assert_ptr_null(m->body);
        db = db_open("textonly.db");
        snprintf(sql, sizeof(sql), "SELECT type || '|' || time || '|' || version || '|' || body"
                 " FROM events WHERE id = '%s'", ev);
        snprintf(buf, sizeof(buf), "OrderCreated|2026-12-06T12:00:00.000Z|1|%s", text);
        ck_assert_str_eq(db_text(db, sql, got, sizeof(got)), buf);
        ck_assert_int_eq(jenc_member_span(text, strlen(text), "snapshot", &at, &n), 0);
        snprintf(buf, sizeof(buf), "created|1|%.*s", (int) n, text + at);
        snprintf(sql, sizeof(sql), "SELECT status || '|' || version || '|' || body FROM snapshots"
                 " WHERE id = '%s'", oid);
        ck_assert_str_eq(db_text(db, sql, got, sizeof(got)), buf);
        sqlite3_close(db);
        th_msg_free(m);
    }
    th_stage_free(s);
}
END_TEST

START_TEST(test_store_event_text_exact)
{
    static const char *const bodies[] = {
        /* snapshot last, as the orders transform writes it */
        "{\"id\":\"evt-t1\",\"type\":\"OrderCreated\",\"orderId\":\"ord-t1\",\"version\":1,"
        "\"data\":{\"note\":\"a \\\"snapshot\\\": \\u00e9\",\"n\":[1,2.5,-0.1]},"
        "\"snapshot\":{\"id\":\"ord-t1\",\"status\":\"created\",\"p\":19.99,\"q\":{}}}",
        /* snapshot not last: encoded as a whole */
        "{\"id\":\"evt-t2\",\"snapshot\":{\"id\":\"ord-t2\",\"status\":\"created\"},"
        "\"type\":\"OrderCreated\",\"orderId\":\"ord-t2\",\"version\":1}",
    };
    struct th_stage *s = store_new("text.db", NULL);
    sqlite3         *db;
    char             sql[128], buf[1024];
    size_t           i;

    db = NULL;
    for (i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        orderd_msg *m = th_msg(bodies[i]);
        json_t     *b = th_host()->msg_body(m);
        const char *ev = json_string_value(json_object_get(b, "id"));
        char       *want_ev = json_dumps(b, JSON_COMPACT | JSON_REAL_PRECISION(15));
        char       *want_snap = json_dumps(json_object_get(b, "snapshot"),
                                           JSON_COMPACT | JSON_REAL_PRECISION(15));
        char        oid[16];

        snprintf(oid, sizeof(oid), "ord-t%zu", i + 1);
        ck_assert_int_eq(th_host()->msg_set_id(m, ev), 0);
        ck_assert_int_eq(th_host()->msg_set_prop(m, "order_id", oid), 0);
        ck_assert_int_eq(th_process(s, m), ORDERD_OK);
        if (db == NULL)
            db = db_open("text.db");
        snprintf(sql, sizeof(sql), "SELECT body FROM events WHERE id = '%s'", ev);
        ck_assert_str_eq(db_text(db, sql, buf, sizeof(buf)), want_ev);
        snprintf(sql, sizeof(sql), "SELECT body FROM snapshots WHERE id = '%s'", oid);
        ck_assert_str_eq(db_text(db, sql, buf, sizeof(buf)), want_snap);
        free(want_ev);
        free(want_snap);
        th_msg_free(m);
    }
    sqlite3_close(db);
    th_stage_free(s);
}
END_TEST

/* jenc_dump() (the store's, webhook's and file's encoder) writes what
 * json_dumps(JSON_COMPACT | JSON_REAL_PRECISION(15) | JSON_ENCODE_ANY)
 * writes, byte for byte: escapes, NUL in strings, key order, integers at
 * the limits, and reals both on its whole-cents path and off it. */
static void
jenc_same(json_t *v)
{
    char  *want = json_dumps(v, JSON_COMPACT | JSON_REAL_PRECISION(15) | JSON_ENCODE_ANY);
    size_t len = 0;
    char  *got = jenc_dumps(v, &len);

    ck_assert_ptr_nonnull(want);
    ck_assert_ptr_nonnull(got);
    ck_assert_str_eq(got, want);
    ck_assert_uint_eq(len, strlen(want));
    free(want);
    free(got);
    json_decref(v);
}

START_TEST(test_jsonenc_matches_jansson)
{
    static const double reals[] = {
        19.99, 249.5, 3.25, 305.73, -0.1, 0.05, -0.05, 1.0, -3.0, 0.0, -0.0, 0.001, 1e-5,
        123456789012.34, 9999999999999.99, 1e13, 1e15, 1e16, 1e22, 1e300, -1e-300,
        0.1 + 0.2, 1.0 / 3.0, 2.5e-7, 4.9e-324, 1.7976931348623157e308, 100.0, 0.3,
    };
    json_t  *deep, *o;
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    size_t   i;
    char     ctl[40];

    for (i = 0; i < sizeof(reals) / sizeof(reals[0]); i++)
        jenc_same(json_real(reals[i]));
    /* pseudo-random cents and arbitrary bit patterns */
    for (i = 0; i < 200000; i++) {
        double d;

        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (i % 2 == 0) {
            d = (double) ((int64_t) (x % 2000000001) - 1000000000) / 100.0;
        } else {
            memcpy(&d, &x, sizeof(d));
            if (!isfinite(d))
                continue;
        }
        jenc_same(json_real(d));
    }
    for (i = 0; i < 32; i++)
        ctl[i] = (char) (i + 1 < 32 ? i + 1 : 0x7f);
    ctl[32] = '\0';
    jenc_same(json_string(ctl));
    jenc_same(json_string("quote \" backslash \\ slash / caf\xc3\xa9 \xf0\x9f\x98\x80"));
    jenc_same(json_stringn("a\0b", 3));
    jenc_same(json_string(""));
    jenc_same(json_integer(0));
    jenc_same(json_integer(INT64_MAX));
    jenc_same(json_integer(INT64_MIN));
    jenc_same(json_true());
    jenc_same(json_false());
    jenc_same(json_null());
    jenc_same(json_loads("{\"z\":1,\"a\":[],\"m\":{},\"k\\\"\\n\":[null,true,{\"x\":[1.5,\"\\u0001\"]}]}",
                         0, NULL));
    o = json_object();
    json_object_set_new(o, "b", json_integer(1));
    json_object_set_new(o, "a", json_integer(2));
    json_object_del(o, "b");
    json_object_set_new(o, "b", json_integer(3));
    jenc_same(o);

    /* nested too deep (a reference cycle would be infinitely deep): refused */
    deep = json_array();
    for (i = 0; i < 3000; i++) {
        json_t *outer = json_array();

        json_array_append_new(outer, deep);
        deep = outer;
    }
    ck_assert_ptr_null(jenc_dumps(deep, NULL));
    json_decref(deep);
    ck_assert_ptr_null(jenc_dumps(NULL, NULL));
}
END_TEST

/* jenc_member_span() (the store's way to the snapshot inside an event's
 * text): top-level members only, past strings with braces, quotes and
 * escapes, nested objects with the same key, and every kind of value. */
static void
span_is(const char *text, const char *key, const char *want)
{
    size_t off = 0, n = 0;
    int rc = jenc_member_span(text, strlen(text), key, &off, &n);

    if (want == NULL) {
        ck_assert_msg(rc == -ENOENT, "%s in %s: rc %d", key, text, rc);
        return;
    }
    ck_assert_msg(rc == 0, "%s in %s: rc %d", key, text, rc);
    ck_assert_uint_eq(n, strlen(want));
    ck_assert_msg(memcmp(text + off, want, n) == 0, "%s in %s: got %.*s", key, text, (int)n,
                  text + off);
}

START_TEST(test_jsonenc_member_span)
{
    const char *ev = "{\"id\":\"e\\\"}{\",\"data\":{\"snapshot\":1,\"x\":[{\"snapshot\":2}]},"
                     "\"n\":-1.5e3,\"t\":true,\"z\":null,\"snapshot\":{\"id\":\"o-1\","
                     "\"items\":[1,[2,{}]],\"s\":\"}\"},\"last\":\"\"}";
    size_t off, n;

    span_is(ev, "snapshot", "{\"id\":\"o-1\",\"items\":[1,[2,{}]],\"s\":\"}\"}");
    span_is(ev, "id", "\"e\\\"}{\"");
    span_is(ev, "n", "-1.5e3");
    span_is(ev, "t", "true");
    span_is(ev, "z", "null");
    span_is(ev, "last", "\"\"");
    span_is(ev, "x", NULL);             /* only nested */
    span_is(ev, "snap", NULL);
    span_is("{}", "snapshot", NULL);
    span_is("{\"snapshot\":[]}", "snapshot", "[]");

    /* what jenc_dump() writes for a tree: the same bytes as encoding the member */
    {
        json_t *o = json_pack("{s:s, s:{s:[i,f]}, s:o}", "type", "OrderCreated", "snapshot",
                              "items", 1, 2.5, "data", json_pack("{s:s}", "k", "v\"}"));
        char *all = jenc_dumps(o, NULL), *one = jenc_dumps(json_object_get(o, "snapshot"), NULL);

        ck_assert_ptr_nonnull(all);
        ck_assert_ptr_nonnull(one);
        span_is(all, "snapshot", one);
        free(all);
        free(one);
        json_decref(o);
    }

    ck_assert_int_eq(jenc_member_span("[1]", 3, "a", &off, &n), -EINVAL);
    ck_assert_int_eq(jenc_member_span("{\"a\"", 4, "a", &off, &n), -EINVAL);
    ck_assert_int_eq(jenc_member_span("{\"a\":", 5, "a", &off, &n), -EINVAL);
    ck_assert_int_eq(jenc_member_span("{\"a\":1", 6, "b", &off, &n), -EINVAL);
    ck_assert_int_eq(jenc_member_span("{", 1, "a", &off, &n), -EINVAL);

    /* jenc_member_str: a plain string's characters, or why not */
    {
        static const char t[] = "{\"a\":\"x y\",\"b\":\"q\\\"\",\"c\":7,\"d\":\"\"}";
        const char *v = NULL;

        ck_assert_int_eq(jenc_member_str(t, strlen(t), "a", &v, &n), 0);
        ck_assert_uint_eq(n, 3);
        ck_assert_int_eq(memcmp(v, "x y", 3), 0);
        ck_assert_int_eq(jenc_member_str(t, strlen(t), "d", &v, &n), 0);
        ck_assert_uint_eq(n, 0);
        ck_assert_int_eq(jenc_member_str(t, strlen(t), "b", &v, &n), -EINVAL);   /* escaped */
        ck_assert_int_eq(jenc_member_str(t, strlen(t), "c", &v, &n), -EINVAL);   /* a number */
        ck_assert_int_eq(jenc_member_str(t, strlen(t), "e", &v, &n), -ENOENT);
        ck_assert_int_eq(jenc_member_str("[1]", 3, "a", &v, &n), -EINVAL);
    }
}
END_TEST

/* jdec_loadb() (the feed's and lookups' parser) gives what
 * json_loadb(JSON_DECODE_ANY) gives: the same value, or NULL with an error
 * for what jansson refuses, on edge cases and on mutated documents; and
 * jdec_loadb_flags() (the Order API's) what json_loadb() gives with the same
 * flags, error position included. */
static void
jdec_same_flags(const char *text, size_t n, size_t flags)
{
    json_error_t e1, e2;
    json_t      *want = json_loadb(text, n, flags, &e1);
    json_t      *got = flags == JSON_DECODE_ANY ? jdec_loadb(text, n, &e2)
                                                : jdec_loadb_flags(text, n, flags, &e2);

    ck_assert_msg((want == NULL) == (got == NULL), "jansson %s, jdec %s: %.*s",
                  want ? "accepts" : "refuses", got ? "accepts" : "refuses", (int) n, text);
    if (want != NULL) {
        char *a = json_dumps(want, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
        char *b = json_dumps(got, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));

        ck_assert_str_eq(b, a);
        free(a);
        free(b);
    } else {
        ck_assert_str_eq(e2.text, e1.text);
        ck_assert_int_eq(e2.position, e1.position);
        ck_assert_int_eq(e2.line, e1.line);
        ck_assert_int_eq(e2.column, e1.column);
    }
    json_decref(want);
    json_decref(got);
}

static void
jdec_same(const char *text, size_t n)
{
    json_t *any = json_loadb(text, n, JSON_DECODE_ANY, NULL);

    /* jdec_check() never passes what jansson refuses */
    if (any == NULL)
        ck_assert_msg(jdec_check(text, n) == -1, "jdec_check passes %.*s", (int) n, text);
    json_decref(any);
    jdec_same_flags(text, n, JSON_DECODE_ANY);
    jdec_same_flags(text, n, JSON_REJECT_DUPLICATES);
    jdec_same_flags(text, n, 0);
}

START_TEST(test_jsondec_matches_jansson)
{
    static const char *const cases[] = {
        "1", "-0", "0.5", "1e400", "-1e400", "1e-400", "9223372036854775807",
        "9223372036854775808", "-9223372036854775808", "-9223372036854775809", "01", "1.",
        "-", "1E2", "1e+2", "-0.0e-0", ".5", "+1", "\"\\u0000\"", "\"\\ud83d\\ude00\"",
        "\"\\udc00\"", "\"\\ud800\"", "\"\\ud800x\"", "\"a\\/b\\b\\f\\n\\r\\t\"", "\"\\x\"",
        "\"\xed\xa0\x80\"", "\"\xc0\xaf\"", "\"\xf4\x90\x80\x80\"", "\"\xe2\x82\xac\"",
        "\"\xe2\x82\"", "\"\x7f\"", "\"\t\"", "\"open", "{\"a\":1,\"a\":2}",
        "{\"a\\u00e9\":[1,2,{}]}", " [ ] ", "[1,]", "{,}", "{\"a\":}", "{\"a\" 1}",
        "{\"a\" : 1 , \"b\":[true,false,null]}", "tru", "nul", "falsey", "1 2", "",
        "   ", "{\"k\\n\":\"v\\\"\"}", "[[[[[]]]]]", "{\"esc\\u00e9key\":{\"esc\\tkey2\":1}}",
        "{\"a\":{\"b\":1,\"c\":2,\"b\":3}}", "[{\"x\":1},{\"x\":2,\"x\":2}]", "{\"a\":1,\"\\u0061\":2}",
    };
    static const char event[] =
        "{\"id\":\"evt-1\",\"type\":\"OrderCreated\",\"orderId\":\"o-1\",\"version\":1,"
        "\"data\":{\"items\":[{\"sku\":\"S-1\",\"qty\":2,\"price\":19.99}],\"note\":\"caf\xc3\xa9\"},"
        "\"snapshot\":{\"id\":\"o-1\",\"status\":\"created\",\"totals\":{\"subtotal\":39.98}}}";
    static const char *const good[] = {
        "1", "-0", "0.5", "1E2", "-0.0e-0", "9223372036854775807", "-9223372036854775808",
        "\"\\ud83d\\ude00\"", "\"\xe2\x82\xac\"", " [ ] ", "[[[[[]]]]]", "{\"a\":1,\"a\":2}",
        "{\"a\" : 1 , \"b\":[true,false,null]}", "{\"k\\n\":\"v\\\"\"}",
    };
    static const char alphabet[] = "{}[]\",:\\u0123456789.eE+-tfn a\x01\xff\xc3";
    uint64_t x = 0x2545f4914f6cdd1dULL;
    char     m[sizeof(event)], *deep;
    size_t   i, n = sizeof(event) - 1;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        jdec_same(cases[i], strlen(cases[i]));
    jdec_same(event, n);
    /* ... and passes what the store writes, without building anything */
    ck_assert_int_eq(jdec_check(event, n), 0);
    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        ck_assert_msg(jdec_check(good[i], strlen(good[i])) == 0, "jdec_check refuses %s", good[i]);
    ck_assert_int_eq(jdec_check(event, n - 1), -1);
    ck_assert_int_eq(jdec_check("", 0), -1);

    /* deeper than jansson's 2048 levels: both refuse */
    deep = malloc(6001);
    ck_assert_ptr_nonnull(deep);
    for (i = 0; i < 3000; i++) {
        deep[i] = '[';
        deep[5999 - i] = ']';
    }
    jdec_same(deep, 6000);
    jdec_same(deep + 1000, 4000);
    free(deep);

    /* mutations and truncations of a stored event */
    for (i = 0; i < 20000; i++) {
        int k;

        memcpy(m, event, n);
        for (k = 0; k < 1 + (int) (i % 3); k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            m[x % n] = alphabet[(x >> 20) % (sizeof(alphabet) - 1)];
        }
        jdec_same(m, n);
        jdec_same(m, (size_t) (x >> 32) % n);
    }
}
END_TEST

START_TEST(test_store_duplicate_is_noop)
{
    struct th_stage *s = store_new("dup.db", NULL);
    orderd_msg      *m[2];
    orderd_result    out[2];
    sqlite3         *db;

    store_one(s, "ord-1", "evt-d1", "OrderCreated", 1, "created");
    /* redelivered alone, and twice within one batch */
    store_one(s, "ord-1", "evt-d1", "OrderCreated", 1, "created");
    m[0] = event_msg("ord-1", "evt-d2", "OrderPaid", 2, "paid");
    m[1] = event_msg("ord-1", "evt-d2", "OrderPaid", 2, "paid");
    ck_assert_int_eq(th_process_batch(s, m, 2, out), 0);
    ck_assert_int_eq(out[0].outcome, ORDERD_OK);
    ck_assert_int_eq(out[1].outcome, ORDERD_OK);

    ck_assert_double_eq(th_metric(s, "sqlite_events_inserted"), 2);
    ck_assert_double_eq(th_metric(s, "sqlite_duplicates"), 2);
    db = db_open("dup.db");
    ck_assert_int_eq(db_int(db, "SELECT COUNT(*) FROM events WHERE id = 'evt-d1'"), 1);
    ck_assert_int_eq(db_int(db, "SELECT COUNT(*) FROM events"), 2);
    ck_assert_int_eq(db_int(db, "SELECT version FROM snapshots WHERE id = 'ord-1'"), 2);
    sqlite3_close(db);
    th_msg_free(m[0]);
    th_msg_free(m[1]);
    th_stage_free(s);
}
END_TEST

START_TEST(test_store_older_version_keeps_snapshot)
{
    struct th_stage *s = store_new("older.db", NULL);
    sqlite3         *db;
    char             buf[64];

    store_one(s, "ord-7", "evt-o3", "OrderShipped", 3, "shipped");
    store_one(s, "ord-7", "evt-o2", "OrderPaid", 2, "paid");
    db = db_open("older.db");
    ck_assert_int_eq(db_int(db, "SELECT version FROM snapshots WHERE id = 'ord-7'"), 3);
    ck_assert_str_eq(db_text(db, "SELECT status FROM snapshots WHERE id = 'ord-7'", buf,
                             sizeof(buf)), "shipped");
    /* the stream is append-only: the late event is still recorded */
    ck_assert_int_eq(db_int(db, "SELECT COUNT(*) FROM events WHERE stream = 'ord-7'"), 2);
    sqlite3_close(db);

    store_one(s, "ord-7", "evt-o4", "OrderDelivered", 4, "delivered");
    db = db_open("older.db");
    ck_assert_int_eq(db_int(db, "SELECT version FROM snapshots WHERE id = 'ord-7'"), 4);
    sqlite3_close(db);
    th_stage_free(s);
}
END_TEST

START_TEST(test_store_rejects_bad_message_only)
{
    struct th_stage *s = store_new("bad.db", NULL);
    orderd_msg      *m[4];
    orderd_result    out[4];
    sqlite3         *db;

    m[0] = event_msg("ord-b", "evt-b1", "OrderCreated", 1, "created");
    /* an event whose version is not a number */
    m[1] = th_msg("{\"id\":\"evt-bad\",\"type\":\"OrderPaid\",\"orderId\":\"ord-b\","
                  "\"version\":\"two\",\"snapshot\":{\"id\":\"ord-b\"}}");
    /* an event that names no order at all */
    m[2] = th_msg("{\"id\":\"evt-bad2\",\"type\":\"OrderPaid\",\"version\":2,\"snapshot\":{}}");
    m[3] = event_msg("ord-b", "evt-b2", "OrderPaid", 2, "paid");
    ck_assert_int_eq(th_process_batch(s, m, 4, out), 0);
    ck_assert_int_eq(out[0].outcome, ORDERD_OK);
    ck_assert_int_eq(out[1].outcome, ORDERD_REJECT);
    ck_assert_ptr_nonnull(out[1].reason);
    ck_assert_ptr_nonnull(strstr(out[1].reason, "version"));
    ck_assert_int_eq(out[2].outcome, ORDERD_REJECT);
    ck_assert_ptr_nonnull(strstr(out[2].reason, "order id"));
    ck_assert_int_eq(out[3].outcome, ORDERD_OK);

    db = db_open("bad.db");
    ck_assert_int_eq(db_int(db, "SELECT COUNT(*) FROM events"), 2);
    ck_assert_int_eq(db_int(db, "SELECT COUNT(*) FROM events WHERE id LIKE 'evt-bad%'"), 0);
    ck_assert_int_eq(db_int(db, "SELECT version FROM snapshots WHERE id = 'ord-b'"), 2);
    sqlite3_close(db);
    for (int i = 0; i < 4; i++)
        th_msg_free(m[i]);
    th_stage_free(s);
}
END_TEST

START_TEST(test_store_lookup)
{
    struct th_stage *s = store_new("lookup.db", NULL);
    json_t          *doc = NULL;

    store_one(s, "ord-l", "evt-l1", "OrderCreated", 1, "created");
    store_one(s, "ord-l", "evt-l2", "OrderPaid", 2, "paid");

    ck_assert_int_eq(th_lookup(s, "ord-l", &doc), 0);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "status")), "paid");
    ck_assert_int_eq(json_integer_value(json_object_get(doc, "version")), 2);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "customerId")), "c-42");
    json_decref(doc);

    /* by order and event id (the index), as the orders transform asks */
    ck_assert_int_eq(th_lookup(s, "event:ord-l/evt-l2", &doc), 0);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "type")), "OrderPaid");
    json_decref(doc);
    ck_assert_int_eq(th_lookup(s, "event:ord-other/evt-l2", &doc), -ENOENT);
    ck_assert_int_eq(th_lookup(s, "event:ord-l/evt-none", &doc), -ENOENT);
    /* by event id alone (every order searched) */
    ck_assert_int_eq(th_lookup(s, "event:evt-l1", &doc), 0);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "id")), "evt-l1");
    ck_assert_str_eq(json_string_value(json_object_get(doc, "type")), "OrderCreated");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(doc, "snapshot"),
                                                       "status")), "created");
    json_decref(doc);

    doc = NULL;
    ck_assert_int_eq(th_lookup(s, "ord-none", &doc), -ENOENT);
    ck_assert_ptr_null(doc);
    ck_assert_int_eq(th_lookup(s, "event:evt-none", &doc), -ENOENT);
    /* an order id is not an event id */
    ck_assert_int_eq(th_lookup(s, "event:ord-l", &doc), -ENOENT);
    th_stage_free(s);
}
END_TEST

/* A lookup keeps its read transaction between lookups and still sees
 * every batch committed before it: with one lookup connection, each order
 * is looked up before its batch (absent, which opens the transaction) and
 * after it (found).  The idle connection's transaction is ended before
 * each COMMIT, so checkpoints complete and the log starts over: with
 * checkpoint_size 64KiB it stays small over 2,000 events (held back by
 * the reader it would grow past 1MiB). */
START_TEST(test_store_lookup_sees_commits)
{
    struct th_stage *s = store_new("rtx.db", "lookup_connections = 1; checkpoint_size = \"64KiB\";");
    char             evid[32], order[32], wal[1024];
    orderd_msg      *m[50];
    orderd_result    out[50];
    json_t          *doc;
    struct stat      st;

    for (int b = 0; b < 40; b++) {
        for (int i = 0; i < 50; i++) {
            snprintf(order, sizeof(order), "rtx-%d-%d", b, i);
            snprintf(evid, sizeof(evid), "evt-%d-%d", b, i);
            doc = NULL;
            ck_assert_int_eq(th_lookup(s, order, &doc), -ENOENT);
            m[i] = event_msg(order, evid, "OrderCreated", 1, "created");
        }
        ck_assert_int_eq(th_process_batch(s, m, 50, out), 0);
        for (int i = 0; i < 50; i++) {
            ck_assert_int_eq(out[i].outcome, ORDERD_OK);
            th_msg_free(m[i]);
            snprintf(order, sizeof(order), "rtx-%d-%d", b, i);
            ck_assert_msg(th_lookup(s, order, &doc) == 0, "%s not found after its commit", order);
            ck_assert_str_eq(json_string_value(json_object_get(doc, "status")), "created");
            json_decref(doc);
        }
        /* and a second event for an order of the batch before */
        if (b > 0) {
            snprintf(order, sizeof(order), "rtx-%d-0", b - 1);
            snprintf(evid, sizeof(evid), "evt-%d-0-paid", b - 1);
            m[0] = event_msg(order, evid, "OrderPaid", 2, "paid");
            ck_assert_int_eq(th_process_batch(s, m, 1, out), 0);
            ck_assert_int_eq(out[0].outcome, ORDERD_OK);
            th_msg_free(m[0]);
            ck_assert_int_eq(th_lookup(s, order, &doc), 0);
            ck_assert_str_eq(json_string_value(json_object_get(doc, "status")), "paid");
            json_decref(doc);
        }
    }
    snprintf(wal, sizeof(wal), "%s-wal", db_path("rtx.db"));
    ck_assert_int_eq(stat(wal, &st), 0);
    ck_assert_msg(st.st_size < 512 * 1024, "log of %lld bytes: checkpoints held back",
                  (long long) st.st_size);
    th_stage_free(s);
}
END_TEST

START_TEST(test_store_plain_document)
{
    struct th_stage *s = store_new("doc.db", NULL);
    orderd_msg      *m;
    json_t          *doc = NULL;
    sqlite3         *db;

    m = th_msg("{\"id\":\"doc-1\",\"note\":\"first\"}");
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    th_msg_free(m);
    m = th_msg("{\"id\":\"doc-1\",\"note\":\"second\"}");
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    th_msg_free(m);
    ck_assert_int_eq(th_lookup(s, "doc-1", &doc), 0);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "note")), "second");
    json_decref(doc);

    db = db_open("doc.db");
    ck_assert_int_eq(db_int(db, "SELECT version FROM snapshots WHERE id = 'doc-1'"), 0);
    ck_assert_int_eq(db_int(db, "SELECT COUNT(*) FROM events"), 0);
    sqlite3_close(db);

    /* a document never replaces an event-sourced snapshot */
    store_one(s, "ord-x", "evt-x1", "OrderCreated", 1, "created");
    m = th_msg("{\"id\":\"ord-x\",\"status\":\"forged\"}");
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    th_msg_free(m);
    ck_assert_int_eq(th_lookup(s, "ord-x", &doc), 0);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "status")), "created");
    json_decref(doc);
    ck_assert_double_eq(th_metric(s, "sqlite_documents_stored"), 3);
    th_stage_free(s);
}
END_TEST

/* A database constraint failing midway through one message (here a trigger
 * refusing its snapshot after its event went in) rejects that message alone,
 * with none of its rows left behind. */
START_TEST(test_store_constraint_rejects_one)
{
    struct th_stage *s = store_new("constraint.db", NULL);
    orderd_msg      *m[3];
    orderd_result    out[3];
    sqlite3         *db;

    db = db_open("constraint.db");
    ck_assert_int_eq(sqlite3_exec(db,
        "CREATE TRIGGER no_frozen BEFORE INSERT ON snapshots WHEN NEW.id = 'ord-frozen'"
        " BEGIN SELECT RAISE(ABORT, 'frozen order'); END", NULL, NULL, NULL), SQLITE_OK);
    m[0] = event_msg("ord-ok", "evt-k1", "OrderCreated", 1, "created");
    m[1] = event_msg("ord-frozen", "evt-k2", "OrderCreated", 1, "created");
    m[2] = event_msg("ord-ok", "evt-k3", "OrderPaid", 2, "paid");
    ck_assert_int_eq(th_process_batch(s, m, 3, out), 0);
    ck_assert_int_eq(out[0].outcome, ORDERD_OK);
    ck_assert_int_eq(out[1].outcome, ORDERD_REJECT);
    ck_assert_ptr_nonnull(strstr(out[1].reason, "frozen order"));
    ck_assert_int_eq(out[2].outcome, ORDERD_OK);
    ck_assert_int_eq(db_int(db, "SELECT COUNT(*) FROM events WHERE id = 'evt-k2'"), 0);
    ck_assert_int_eq(db_int(db, "SELECT COUNT(*) FROM events"), 2);
    ck_assert_int_eq(db_int(db, "SELECT version FROM snapshots WHERE id = 'ord-ok'"), 2);
    sqlite3_close(db);
    for (int i = 0; i < 3; i++)
        th_msg_free(m[i]);
    th_stage_free(s);
}
END_TEST

/* A lock held elsewhere: the batch is retried whole, and nothing is half-written. */
START_TEST(test_store_busy_retries_batch)
{
    struct th_stage *s = store_new("busy.db", "busy_timeout = \"50ms\";");
    orderd_msg      *m[2];
    orderd_result    out[2];
    sqlite3         *db;

    m[0] = event_msg("ord-y", "evt-y1", "OrderCreated", 1, "created");
    m[1] = event_msg("ord-y", "evt-y2", "OrderPaid", 2, "paid");
    db = db_open("busy.db");
    ck_assert_int_eq(sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
    ck_assert_int_eq(th_process_batch(s, m, 2, out), 0);
    ck_assert_int_eq(out[0].outcome, ORDERD_RETRY);
    ck_assert_int_eq(out[1].outcome, ORDERD_RETRY);
    ck_assert_ptr_nonnull(out[0].reason);
    ck_assert_int_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    ck_assert_int_eq(db_int(db, "SELECT COUNT(*) FROM events"), 0);

    ck_assert_int_eq(th_process_batch(s, m, 2, out), 0);
    ck_assert_int_eq(out[0].outcome, ORDERD_OK);
    ck_assert_int_eq(out[1].outcome, ORDERD_OK);
    ck_assert_int_eq(db_int(db, "SELECT COUNT(*) FROM events"), 2);
    sqlite3_close(db);
    th_msg_free(m[0]);
    th_msg_free(m[1]);
    th_stage_free(s);
}
END_TEST

/* 500 new orders' events, in 10 batches of 50. */
static void
store_500(struct th_stage *s)
{
    char           evid[32], order[32];
    orderd_msg    *m[50];
    orderd_result  out[50];

    for (int b = 0; b < 10; b++) {
        for (int i = 0; i < 50; i++) {
            snprintf(order, sizeof(order), "ord-%d-%d", b, i);
            snprintf(evid, sizeof(evid), "evt-%d-%d", b, i);
            m[i] = event_msg(order, evid, "OrderCreated", 1, "created");
        }
        ck_assert_int_eq(th_process_batch(s, m, 50, out), 0);
        for (int i = 0; i < 50; i++) {
            ck_assert_int_eq(out[i].outcome, ORDERD_OK);
            th_msg_free(m[i]);
        }
    }
}

/* checkpoint_size: the log grows to about that before a commit copies it
 * into the database.  500 events (a few hundred KiB of log) stay in the log
 * with 32MiB; with 64KiB the log keeps being checkpointed and reused. */
static long long
wal_bytes_after(const char *name, const char *ckpt)
{
    char              extra[64], wal[1024];
    struct th_stage  *s;
    struct stat       st;

    snprintf(extra, sizeof(extra), "checkpoint_size = \"%s\";", ckpt);
    s = store_new(name, extra);
    store_500(s);
    snprintf(wal, sizeof(wal), "%s-wal", db_path(name));
    ck_assert_int_eq(stat(wal, &st), 0);
    th_stage_free(s);
    return (long long) st.st_size;
}

START_TEST(test_store_checkpoint_size)
{
    long long big = wal_bytes_after("ckpt-big.db", "32MiB");
    long long small = wal_bytes_after("ckpt-small.db", "64KiB");

    ck_assert_msg(big > 256 * 1024, "32MiB: log of %lld bytes", big);
    ck_assert_msg(small < big / 2, "64KiB: log of %lld bytes (32MiB: %lld)", small, big);
}
END_TEST

/* A new file gets 16 KiB pages; a file that exists keeps its own page size
 * (WAL mode cannot change it) and is written as before. */
START_TEST(test_store_page_size)
{
    struct th_stage *s;
    sqlite3         *db;

    s = store_new("pages-new.db", NULL);
    store_one(s, "ord-p1", "evt-p1", "OrderCreated", 1, "created");
    th_stage_free(s);
    db = db_open("pages-new.db");
    ck_assert_int_eq(db_int(db, "PRAGMA page_size"), 16384);
    sqlite3_close(db);

    ck_assert_int_eq(sqlite3_open(db_path("pages-old.db"), &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(db, "PRAGMA page_size=4096; PRAGMA journal_mode=WAL;"
                                  " CREATE TABLE t(x);", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    s = store_new("pages-old.db", NULL);
    store_one(s, "ord-p2", "evt-p2", "OrderCreated", 1, "created");
    th_stage_free(s);
    db = db_open("pages-old.db");
    ck_assert_int_eq(db_int(db, "PRAGMA page_size"), 4096);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM snapshots WHERE id = 'ord-p2'"), 1);
    sqlite3_close(db);
}
END_TEST

/* cache_size: the writing connection's page cache, which the
 * sqlite_cache_bytes gauge reports: 500 events (most of a MiB) stay cached
 * with 16MiB, while 64KiB holds the cache near that size. */
static double
cache_bytes_after(const char *name, const char *size)
{
    char              extra[64];
    struct th_stage  *s;
    double            used;

    snprintf(extra, sizeof(extra), "cache_size = \"%s\";", size);
    s = store_new(name, extra);
    store_500(s);
    used = th_metric(s, "sqlite_cache_bytes");
    th_stage_free(s);
    return used;
}

START_TEST(test_store_cache_size)
{
    double big = cache_bytes_after("cache-big.db", "16MiB");
    double small = cache_bytes_after("cache-small.db", "64KiB");

    ck_assert_msg(big > 256 * 1024, "16MiB: %.0f bytes cached", big);
    ck_assert_msg(small < 128 * 1024, "64KiB: %.0f bytes cached", small);
}
END_TEST

/* A schema-1 database (UNIQUE(id) and an index on (stream, version)) is
 * upgraded when the store opens it: every event keeps its seq, body and
 * place in the feed, the AUTOINCREMENT counter is carried over, a
 * redelivered old event is still a duplicate, and lookups work. */
START_TEST(test_store_migrates_schema_1)
{
    static const char v1[] =
        "PRAGMA journal_mode=WAL;"
        "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
        "  stream TEXT NOT NULL, version INTEGER, type TEXT, time TEXT, body TEXT NOT NULL);"
        "CREATE INDEX events_stream ON events(stream, version);"
        "CREATE TABLE snapshots (id TEXT PRIMARY KEY, version INTEGER NOT NULL, status TEXT,"
        "  body TEXT NOT NULL, updated_ms INTEGER);"
        "CREATE TABLE cursors (consumer TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_ms INTEGER);"
        "PRAGMA user_version = 1;";
    struct th_stage *s, *f;
    orderd_msg      *m[2];
    orderd_result    out[2];
    sqlite3         *db;
    json_t          *doc = NULL;
    char             buf[512];

    /* three events, seq 1, 2, 5, and a counter at 7 (rows 6 and 7 gone) */
    ck_assert_int_eq(sqlite3_open(db_path("v1.db"), &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(db, v1, NULL, NULL, NULL), SQLITE_OK);
    for (int i = 0; i < 3; i++) {
        orderd_msg *e = event_msg("ord-m", i == 0 ? "evt-m1" : i == 1 ? "evt-m2" : "evt-m3",
                                  i == 0 ? "OrderCreated" : i == 1 ? "OrderPaid" : "OrderShipped",
                                  i + 1, "x");
        char *body = json_dumps(th_host()->msg_body(e), JSON_COMPACT);
        sqlite3_stmt *st;

        ck_assert_int_eq(sqlite3_prepare_v2(db, "INSERT INTO events(seq, id, stream, version,"
                                                " type, time, body) VALUES(?1, ?2, 'ord-m', ?3,"
                                                " 't', 'now', ?4)", -1, &st, NULL), SQLITE_OK);
        sqlite3_bind_int(st, 1, i == 2 ? 5 : i + 1);
        sqlite3_bind_text(st, 2, th_host()->msg_id(e), -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 3, i + 1);
        sqlite3_bind_text(st, 4, body, -1, SQLITE_TRANSIENT);
        ck_assert_int_eq(sqlite3_step(st), SQLITE_DONE);
        sqlite3_finalize(st);
        free(body);
        th_msg_free(e);
    }
    ck_assert_int_eq(sqlite3_exec(db, "UPDATE sqlite_sequence SET seq = 7 WHERE name = 'events';"
                                      "INSERT INTO cursors VALUES('billing', 2, 0);",
                                  NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);

    s = store_new("v1.db", NULL);
    db = db_open("v1.db");
    ck_assert_int_eq(db_int(db, "PRAGMA user_version"), 2);
    ck_assert_str_eq(db_text(db, "SELECT group_concat(seq || ':' || id, ',') FROM"
                                 " (SELECT * FROM events ORDER BY seq)", buf, sizeof(buf)),
                     "1:evt-m1,2:evt-m2,5:evt-m3");
    ck_assert_str_eq(db_text(db, "SELECT group_concat(name) FROM sqlite_master"
                                 " WHERE type = 'index' AND tbl_name = 'events'", buf, sizeof(buf)),
                     "events_stream_id");
    ck_assert_str_eq(db_text(db, "SELECT json_extract(body, '$.type') FROM events WHERE seq = 5",
                             buf, sizeof(buf)), "OrderShipped");
    ck_assert_str_eq(db_text(db, "PRAGMA integrity_check", buf, sizeof(buf)), "ok");

    /* an old event again: a duplicate; a new one: after the old counter */
    m[0] = event_msg("ord-m", "evt-m2", "OrderPaid", 2, "paid");
    m[1] = event_msg("ord-m", "evt-m4", "OrderDelivered", 4, "delivered");
    ck_assert_int_eq(th_process_batch(s, m, 2, out), 0);
    ck_assert_int_eq(out[0].outcome, ORDERD_OK);
    ck_assert_int_eq(out[1].outcome, ORDERD_OK);
    ck_assert_double_eq(th_metric(s, "sqlite_duplicates"), 1);
    /* past the old counter (the ignored duplicate may use a number up) */
    ck_assert_int_gt(db_int(db, "SELECT seq FROM events WHERE id = 'evt-m4'"), 7);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM events"), 4);
    sqlite3_close(db);

    ck_assert_int_eq(th_lookup(s, "event:ord-m/evt-m3", &doc), 0);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "type")), "OrderShipped");
    json_decref(doc);

    /* the feed's consumer resumes after seq 2 */
    f = feed_new("v1.db", "consumer = \"billing\";");
    ck_assert_int_eq(th_start(f), 0);
    ck_assert(th_wait_submitted(f, 2, 5000));
    th_msg_free(m[0]);
    th_msg_free(m[1]);
    m[0] = th_take(f, 0);
    m[1] = th_take(f, 1);
    ck_assert_str_eq(th_host()->msg_id(m[0]), "evt-m3");
    ck_assert_str_eq(th_host()->msg_id(m[1]), "evt-m4");
    th_stage_free(f);
    th_msg_free(m[0]);
    th_msg_free(m[1]);
    th_stage_free(s);

    /* opening it again changes nothing */
    s = store_new("v1.db", NULL);
    db = db_open("v1.db");
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM events"), 4);
    ck_assert_int_eq(db_int(db, "PRAGMA user_version"), 2);
    sqlite3_close(db);
    th_stage_free(s);

    /* no events left, but numbers handed out before: the counter still holds */
    ck_assert_int_eq(sqlite3_open(db_path("v1-empty.db"), &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(db, v1, NULL, NULL, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(db, "INSERT INTO events(id, stream, body) VALUES('a', 's', '{}');"
                                      "DELETE FROM events;"
                                      "UPDATE sqlite_sequence SET seq = 41 WHERE name = 'events';",
                                  NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    s = store_new("v1-empty.db", NULL);
    store_one(s, "ord-e", "evt-e1", "OrderCreated", 1, "created");
    db = db_open("v1-empty.db");
    ck_assert_int_eq(db_int(db, "SELECT seq FROM events WHERE id = 'evt-e1'"), 42);
    sqlite3_close(db);
    th_stage_free(s);
}
END_TEST

START_TEST(test_store_refuses_newer_schema)
{
    struct th_stage *s = store_new("newer.db", NULL);
    sqlite3         *db;
    char             conf[512], err[2048];

    th_stage_free(s);
    db = db_open("newer.db");
    ck_assert_int_eq(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    snprintf(conf, sizeof(conf), "path = \"newer.db\";");
    ck_assert_ptr_null(th_stage_try("sqlite", ORDERD_STORE, conf, err, sizeof(err)));
}
END_TEST

/* ---- feed ---- */

static void
check_event(orderd_msg *m, const char *id, const char *order, const char *type,
            const char *version)
{
    const orderd_host *h = th_host();

    ck_assert_ptr_nonnull(m);
    ck_assert_str_eq(h->msg_id(m), id);
    ck_assert_str_eq(h->msg_prop(m, "order_id"), order);
    ck_assert_str_eq(h->msg_prop(m, "type"), type);
    ck_assert_str_eq(h->msg_prop(m, "version"), version);
    ck_assert_str_eq(h->msg_partition_key(m), order);
    ck_assert_str_eq(json_string_value(json_object_get(h->msg_body(m), "id")), id);
    ck_assert_ptr_nonnull(json_object_get(h->msg_body(m), "snapshot"));
}

START_TEST(test_feed_submits_in_order)
{
    struct th_stage *st = store_new("feed.db", NULL);
    struct th_stage *f;
    orderd_msg      *m;

    store_one(st, "ord-1", "evt-f1", "OrderCreated", 1, "created");
    store_one(st, "ord-2", "evt-f2", "OrderCreated", 1, "created");
    store_one(st, "ord-1", "evt-f3", "OrderPaid", 2, "paid");

    f = feed_new("feed.db", NULL);
    ck_assert_int_eq(th_start(f), 0);
    ck_assert(th_wait_submitted(f, 3, 5000));
    check_event(m = th_take(f, 0), "evt-f1", "ord-1", "OrderCreated", "1");
    th_ack(f, m, ORDERD_OK, NULL);
    th_msg_free(m);
    check_event(m = th_take(f, 1), "evt-f2", "ord-2", "OrderCreated", "1");
    th_ack(f, m, ORDERD_OK, NULL);
    th_msg_free(m);
    check_event(m = th_take(f, 2), "evt-f3", "ord-1", "OrderPaid", "2");
    th_ack(f, m, ORDERD_OK, NULL);
    th_msg_free(m);

    /* events appended while running follow */
    store_one(st, "ord-2", "evt-f4", "OrderCancelled", 2, "cancelled");
    ck_assert(th_wait_submitted(f, 4, 5000));
    check_event(m = th_take(f, 3), "evt-f4", "ord-2", "OrderCancelled", "2");
    th_ack(f, m, ORDERD_OK, NULL);
    th_msg_free(m);
    th_stage_free(f);
    th_stage_free(st);
}
END_TEST

/* A store of the same process hands the events it commits to the feed of
 * that file (sqlite_tail.c).  Polling is off here (1h), so only a commit
 * wakes the feed.  A row another writer put in between is not handed over:
 * the feed reads it from the file, and nothing is skipped or doubled. */
START_TEST(test_feed_takes_store_events_in_memory)
{
    struct th_stage *st = store_new("tail.db", NULL);
    struct th_stage *f;
    orderd_msg      *m;
    sqlite3         *db;

    f = th_stage_new("sqlite", ORDERD_INPUT,
                     "path = \"tail.db\"; poll_interval = \"1h\"; commit_interval = \"1h\";");
    ck_assert_int_eq(th_start(f), 0);
    store_one(st, "ord-1", "evt-m1", "OrderCreated", 1, "created");
    ck_assert(th_wait_submitted(f, 1, 5000));
    ck_assert_double_eq(th_metric(f, "sqlite_feed_from_memory"), 1);
    ck_assert_double_eq(th_metric(f, "sqlite_feed_read"), 0);
    m = th_take(f, 0);
    ck_assert_ptr_null(m->body);   /* the stored text, not decoded */
    check_event(m, "evt-m1", "ord-1", "OrderCreated", "1");
    th_ack(f, m, ORDERD_OK, NULL);
    th_msg_free(m);

    /* another writer's row, then the store's next: a gap in what it handed over */
    db = db_open("tail.db");
    ck_assert_int_eq(sqlite3_exec(db, "INSERT INTO events(id, stream, version, type, body) VALUES"
                                  "('evt-m2', 'ord-2', 1, 'OrderCreated',"
                                  " '{\"id\":\"evt-m2\",\"snapshot\":{}}')", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    store_one(st, "ord-3", "evt-m3", "OrderCreated", 1, "created");
    ck_assert(th_wait_submitted(f, 3, 5000));
    ck_assert_double_eq(th_metric(f, "sqlite_feed_read"), 2);
    check_event(m = th_take(f, 1), "evt-m2", "ord-2", "OrderCreated", "1");
    th_msg_free(m);
    check_event(m = th_take(f, 2), "evt-m3", "ord-3", "OrderCreated", "1");
    th_msg_free(m);

    /* from there on, in memory again */
    store_one(st, "ord-4", "evt-m4", "OrderCreated", 1, "created");
    ck_assert(th_wait_submitted(f, 4, 5000));
    check_event(m = th_take(f, 3), "evt-m4", "ord-4", "OrderCreated", "1");
    th_msg_free(m);
    ck_assert_double_eq(th_metric(f, "sqlite_feed_from_memory"), 2);
    ck_assert_double_eq(th_metric(f, "sqlite_feed_read"), 2);
    ck_assert_uint_eq(th_submitted(f), 4);
    th_stage_free(f);
    th_stage_free(st);
}
END_TEST

START_TEST(test_feed_cursor_survives_restart)
{
    struct th_stage *st = store_new("cursor.db", NULL);
    struct th_stage *f;
    orderd_msg      *m1, *m2, *m3;
    sqlite3         *db;

    store_one(st, "ord-c", "evt-c1", "OrderCreated", 1, "created");
    store_one(st, "ord-c", "evt-c2", "OrderPaid", 2, "paid");
    store_one(st, "ord-c", "evt-c3", "OrderShipped", 3, "shipped");

    /* a long commit interval: only stop() saves the position */
    f = feed_new("cursor.db", "consumer = \"billing\"; commit_interval = \"1h\";");
    ck_assert_int_eq(th_start(f), 0);
    ck_assert(th_wait_submitted(f, 3, 5000));
    m1 = th_take(f, 0);
    m2 = th_take(f, 1);
    m3 = th_take(f, 2);
    ck_assert_str_eq(th_host()->msg_id(m1), "evt-c1");
    ck_assert_str_eq(th_host()->msg_id(m3), "evt-c3");
    /* acks arrive out of order: 1 and 3, not 2 */
    th_ack(f, m3, ORDERD_OK, NULL);
    th_ack(f, m1, ORDERD_OK, NULL);
    th_stage_free(f);
    th_msg_free(m1);
    th_msg_free(m3);
    th_msg_free(m2);

    db = db_open("cursor.db");
    ck_assert_int_eq(db_int(db, "SELECT seq FROM cursors WHERE consumer = 'billing'"),
                     db_int(db, "SELECT seq FROM events WHERE id = 'evt-c1'"));
    sqlite3_close(db);

    /* restart resumes at 2: 3 comes again (at-least-once), nothing is skipped */
    f = feed_new("cursor.db", "consumer = \"billing\"; commit_interval = \"1h\";");
    ck_assert_int_eq(th_start(f), 0);
    ck_assert(th_wait_submitted(f, 2, 5000));
    check_event(m2 = th_take(f, 0), "evt-c2", "ord-c", "OrderPaid", "2");
    check_event(m3 = th_take(f, 1), "evt-c3", "ord-c", "OrderShipped", "3");
    th_ack(f, m2, ORDERD_OK, NULL);
    th_ack(f, m3, ORDERD_OK, NULL);
    th_msg_free(m2);
    th_msg_free(m3);
    th_stage_free(f);

    /* all acked: the next start sends only what is new */
    store_one(st, "ord-c", "evt-c4", "OrderDelivered", 4, "delivered");
    f = feed_new("cursor.db", "consumer = \"billing\";");
    ck_assert_int_eq(th_start(f), 0);
    ck_assert(th_wait_submitted(f, 1, 5000));
    check_event(m1 = th_take(f, 0), "evt-c4", "ord-c", "OrderDelivered", "4");
    th_ack(f, m1, ORDERD_OK, NULL);
    th_msg_free(m1);
    th_stage_free(f);

    /* another consumer has its own position */
    f = feed_new("cursor.db", "consumer = \"audit\";");
    ck_assert_int_eq(th_start(f), 0);
    ck_assert(th_wait_submitted(f, 4, 5000));
    ck_assert_str_eq(th_host()->msg_id(m1 = th_take(f, 0)), "evt-c1");
    th_msg_free(m1);
    th_stage_free(f);
    th_stage_free(st);
}
END_TEST

START_TEST(test_feed_commit_interval)
{
    struct th_stage *st = store_new("interval.db", NULL);
    struct th_stage *f;
    orderd_msg      *m;
    sqlite3         *db;
    long long        want, got = -1;

    store_one(st, "ord-i", "evt-i1", "OrderCreated", 1, "created");
    f = feed_new("interval.db", "consumer = \"c\"; commit_interval = \"20ms\";");
    ck_assert_int_eq(th_start(f), 0);
    ck_assert(th_wait_submitted(f, 1, 5000));
    th_ack(f, m = th_take(f, 0), ORDERD_OK, NULL);
    th_msg_free(m);

    /* saved while running, without a stop */
    db = db_open("interval.db");
    want = db_int(db, "SELECT seq FROM events WHERE id = 'evt-i1'");
    for (int i = 0; i < 500 && got != want; i++) {
        usleep(10000);
        got = db_int(db, "SELECT seq FROM cursors WHERE consumer = 'c'");
    }
    ck_assert_int_eq(got, want);
    sqlite3_close(db);
    th_stage_free(f);
    th_stage_free(st);
}
END_TEST

START_TEST(test_feed_start_end)
{
    struct th_stage *st = store_new("end.db", NULL);
    struct th_stage *f;
    orderd_msg      *m;

    store_one(st, "ord-e", "evt-e1", "OrderCreated", 1, "created");
    store_one(st, "ord-e", "evt-e2", "OrderPaid", 2, "paid");
    f = feed_new("end.db", "start = \"end\";");
    ck_assert_int_eq(th_start(f), 0);
    store_one(st, "ord-e", "evt-e3", "OrderShipped", 3, "shipped");
    ck_assert(th_wait_submitted(f, 1, 5000));
    check_event(m = th_take(f, 0), "evt-e3", "ord-e", "OrderShipped", "3");
    th_ack(f, m, ORDERD_OK, NULL);
    th_msg_free(m);
    th_stage_free(f);

    /* "end" applies to a new consumer only: the saved position wins */
    store_one(st, "ord-e", "evt-e4", "OrderDelivered", 4, "delivered");
    f = feed_new("end.db", "start = \"end\";");
    ck_assert_int_eq(th_start(f), 0);
    ck_assert(th_wait_submitted(f, 1, 5000));
    ck_assert_str_eq(th_host()->msg_id(m = th_take(f, 0)), "evt-e4");
    th_msg_free(m);
    th_stage_free(f);
    th_stage_free(st);
}
END_TEST

START_TEST(test_feed_resubmits_after_submit_error)
{
    struct th_stage *st = store_new("suberr.db", NULL);
    struct th_stage *f;
    orderd_msg      *m;

    store_one(st, "ord-s", "evt-s1", "OrderCreated", 1, "created");
    store_one(st, "ord-s", "evt-s2", "OrderPaid", 2, "paid");
    f = feed_new("suberr.db", NULL);
    th_set_submit_result(f, -ENOSPC);
    ck_assert_int_eq(th_start(f), 0);
    usleep(100000);     /* let it fail a few times; not an assertion */
    th_set_submit_result(f, 0);
    ck_assert(th_wait_submitted(f, 2, 5000));
    ck_assert_str_eq(th_host()->msg_id(m = th_take(f, 0)), "evt-s1");
    th_ack(f, m, ORDERD_OK, NULL);
    th_msg_free(m);
    ck_assert_str_eq(th_host()->msg_id(m = th_take(f, 1)), "evt-s2");
    th_ack(f, m, ORDERD_OK, NULL);
    th_msg_free(m);
    th_stage_free(f);
    th_stage_free(st);
}
END_TEST

/* A row that is not JSON (written by hand, say) is dead-lettered and the feed goes on. */
START_TEST(test_feed_dead_letters_bad_row)
{
    struct th_stage *st = store_new("raw.db", NULL);
    struct th_stage *f;
    orderd_msg      *m;
    const char      *reason = NULL;
    sqlite3         *db;

    db = db_open("raw.db");
    ck_assert_int_eq(sqlite3_exec(db, "INSERT INTO events(id, stream, version, type, body)"
                                      " VALUES('evt-raw', 'ord-r', 1, 'OrderCreated', 'not json')",
                                  NULL, NULL, NULL), SQLITE_OK);
    store_one(st, "ord-r", "evt-r2", "OrderPaid", 2, "paid");
    f = feed_new("raw.db", "consumer = \"raw\";");
    ck_assert_int_eq(th_start(f), 0);
    ck_assert(th_wait_submitted(f, 1, 5000));
    ck_assert_uint_eq(th_dead_letters(f), 1);
    ck_assert_str_eq(th_host()->msg_id(th_dead_letter(f, 0, &reason)), "evt-raw");
    ck_assert_ptr_nonnull(strstr(reason, "not JSON"));
    ck_assert_str_eq(th_host()->msg_id(m = th_take(f, 0)), "evt-r2");
    th_ack(f, m, ORDERD_OK, NULL);
    th_msg_free(m);
    th_stage_free(f);
    /* both count as done: the position is past the bad row and its successor */
    ck_assert_int_eq(db_int(db, "SELECT seq FROM cursors WHERE consumer = 'raw'"),
                     db_int(db, "SELECT seq FROM events WHERE id = 'evt-r2'"));
    sqlite3_close(db);
    th_stage_free(st);
}
END_TEST

/* ---- both stages on one file at once ---- */

#define CONC_EVENTS 2000
#define CONC_BATCH  50

struct conc {
    struct th_stage *store;
    int              failed;
};

static void *
conc_writer(void *arg)
{
    struct conc   *c = arg;
    orderd_msg    *m[CONC_BATCH];
    orderd_result  out[CONC_BATCH];
    char           order[32], evid[32];

    for (int b = 0; b < CONC_EVENTS / CONC_BATCH; b++) {
        for (int i = 0; i < CONC_BATCH; i++) {
            int n = b * CONC_BATCH + i;

            snprintf(order, sizeof(order), "ord-%d", n % 10);
            snprintf(evid, sizeof(evid), "evt-%06d", n);
            m[i] = event_msg(order, evid, "OrderPaid", n / 10 + 1, "paid");
        }
        if (th_process_batch(c->store, m, CONC_BATCH, out) != 0)
            c->failed = 1;
        for (int i = 0; i < CONC_BATCH; i++) {
            if (out[i].outcome != ORDERD_OK)
                c->failed = 1;
            th_msg_free(m[i]);
        }
    }
    return NULL;
}

START_TEST(test_store_and_feed_concurrently)
{
    struct conc      c = { 0 };
    struct th_stage *f;
    pthread_t        t;
    orderd_msg      *m;
    json_t          *doc;
    char             want[32];
    size_t           i;

    c.store = store_new("conc.db", NULL);
    f = feed_new("conc.db", "batch = 64; commit_interval = \"10ms\";");
    ck_assert_int_eq(th_start(f), 0);
    ck_assert_int_eq(pthread_create(&t, NULL, conc_writer, &c), 0);

    /* consume while the writer runs, looking up snapshots as the orders transform would */
    for (i = 0; i < CONC_EVENTS; i++) {
        ck_assert_msg(th_wait_submitted(f, i + 1, 20000), "only %zu of %d events fed",
                      th_submitted(f), CONC_EVENTS);
        m = th_take(f, i);
        snprintf(want, sizeof(want), "evt-%06zu", i);
        ck_assert_str_eq(th_host()->msg_id(m), want);
        doc = NULL;
        ck_assert_int_eq(th_lookup(c.store, th_host()->msg_prop(m, "order_id"), &doc), 0);
        json_decref(doc);
        th_ack(f, m, ORDERD_OK, NULL);
        th_msg_free(m);
    }
    pthread_join(t, NULL);
    ck_assert_int_eq(c.failed, 0);
    ck_assert_uint_eq(th_submitted(f), CONC_EVENTS);
    ck_assert_double_eq(th_metric(c.store, "sqlite_events_inserted"), CONC_EVENTS);
    th_stage_free(f);
    th_stage_free(c.store);
}
END_TEST

static Suite *
sqlite_suite(void)
{
    Suite *s = suite_create("sqlite");
    TCase *tc = tcase_create("store");

    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_test(tc, test_store_appends_events);
    tcase_add_test(tc, test_store_event_text_exact);
    tcase_add_test(tc, test_store_event_text_only);
    tcase_add_test(tc, test_store_page_size);
    tcase_add_test(tc, test_jsonenc_matches_jansson);
    tcase_add_test(tc, test_jsonenc_member_span);
    tcase_add_test(tc, test_jsondec_matches_jansson);
    tcase_add_test(tc, test_store_duplicate_is_noop);
    tcase_add_test(tc, test_store_older_version_keeps_snapshot);
    tcase_add_test(tc, test_store_rejects_bad_message_only);
    tcase_add_test(tc, test_store_lookup);
    tcase_add_test(tc, test_store_lookup_sees_commits);
    tcase_add_test(tc, test_store_plain_document);
    tcase_add_test(tc, test_store_constraint_rejects_one);
    tcase_add_test(tc, test_store_busy_retries_batch);
    tcase_add_test(tc, test_store_checkpoint_size);
    tcase_add_test(tc, test_store_cache_size);
    tcase_add_test(tc, test_store_migrates_schema_1);
    tcase_add_test(tc, test_store_refuses_newer_schema);
    suite_add_tcase(s, tc);

    tc = tcase_create("feed");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_test(tc, test_feed_submits_in_order);
    tcase_add_test(tc, test_feed_takes_store_events_in_memory);
    tcase_add_test(tc, test_feed_cursor_survives_restart);
    tcase_add_test(tc, test_feed_commit_interval);
    tcase_add_test(tc, test_feed_start_end);
    tcase_add_test(tc, test_feed_resubmits_after_submit_error);
    tcase_add_test(tc, test_feed_dead_letters_bad_row);
    tcase_add_test(tc, test_store_and_feed_concurrently);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(sqlite_suite());
    int      failed;

    const char *tmp = getenv("TMPDIR");
    char        top[512];

    /* each test's state directory goes under this one, removed here even
     * when a failing test never reached its own cleanup */
    snprintf(top, sizeof(top), "%s/orderd-check-sqlite-XXXXXX", tmp ? tmp : "/tmp");
    if (mkdtemp(top) == NULL) {
        perror(top);
        return EXIT_FAILURE;
    }
    setenv("TMPDIR", top, 1);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    th_rm_tree(top);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
