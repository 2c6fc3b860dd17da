/* check_lowmark.c - the low-water mark shared by the file, sqlite, cosmos
 * and kafka inputs (plugins/common/lowmark.c): acks in any order, records
 * that need no ack, failed submits, resets, the window's span, and a long
 * run against a plain model. */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../plugins/common/lowmark.h"

static struct lowmark_pos
at(uint64_t off, uint64_t line)
{
    return (struct lowmark_pos) { .off = off, .line = line };
}

static uint64_t
add(struct lowmark *lm, uint64_t off, uint64_t line)
{
    uint64_t t;

    ck_assert_int_eq(lowmark_add(lm, at(off, line), &t), 0);
    return t;
}

#define ck_assert_mark(lm, o, l) do {                           \
        struct lowmark_pos m_ = lowmark_mark(lm);               \
        ck_assert_uint_eq(m_.off, (o));                         \
        ck_assert_uint_eq(m_.line, (l));                        \
    } while (0)

START_TEST(zeroed_is_empty)
{
    struct lowmark lm = { 0 };

    ck_assert_mark(&lm, 0, 0);
    ck_assert_uint_eq(lowmark_pending(&lm), 0);
    ck_assert_int_eq(lowmark_ack(&lm, 0), -ENOENT);
    ck_assert_int_eq(lowmark_cancel(&lm, 0), -EINVAL);
    lowmark_free(&lm);
}
END_TEST

/* Five lines of 10 bytes; acks 2 and 4 first hold the mark at the start. */
START_TEST(out_of_order_acks)
{
    struct lowmark lm = { 0 };
    uint64_t t[5];
    int i;

    lowmark_reset(&lm, at(100, 7));
    for (i = 0; i < 5; i++)
        t[i] = add(&lm, 110 + 10 * (uint64_t) i, 8 + (uint64_t) i);
    for (i = 1; i < 5; i++)
        ck_assert_uint_eq(t[i], t[i - 1] + 1);
    ck_assert_uint_eq(lowmark_pending(&lm), 5);

    ck_assert_int_eq(lowmark_ack(&lm, t[2]), 0);
    ck_assert_int_eq(lowmark_ack(&lm, t[4]), 0);
    ck_assert_mark(&lm, 100, 7);
    ck_assert_uint_eq(lowmark_pending(&lm), 3);
    ck_assert_int_eq(lowmark_ack(&lm, t[0]), 0);
    ck_assert_mark(&lm, 110, 8);
    ck_assert_int_eq(lowmark_ack(&lm, t[1]), 0);     /* and 2, acked before */
    ck_assert_mark(&lm, 130, 10);
    ck_assert_uint_eq(lowmark_pending(&lm), 1);
    ck_assert_int_eq(lowmark_ack(&lm, t[3]), 0);     /* and 4 */
    ck_assert_mark(&lm, 150, 12);
    ck_assert_uint_eq(lowmark_pending(&lm), 0);

    /* Each ack counts once; tickets never issued are not in flight. */
    ck_assert_int_eq(lowmark_ack(&lm, t[3]), -ENOENT);
    ck_assert_int_eq(lowmark_ack(&lm, t[4] + 1), -ENOENT);
    t[0] = add(&lm, 160, 13);
    ck_assert_int_eq(lowmark_ack(&lm, t[0]), 0);
    ck_assert_int_eq(lowmark_ack(&lm, t[0]), -ENOENT);
    ck_assert_mark(&lm, 160, 13);
    lowmark_free(&lm);
}
END_TEST

/* Records that need no ack (blank lines, dead letters) move the mark at
 * once when nothing is in flight, else only once what precedes them is
 * acked. */
START_TEST(passed_records)
{
    struct lowmark lm = { 0 };
    uint64_t a, b;

    lowmark_pass(&lm, at(5, 1));
    ck_assert_mark(&lm, 5, 1);
    ck_assert_uint_eq(lowmark_pending(&lm), 0);

    a = add(&lm, 10, 2);
    lowmark_pass(&lm, at(11, 3));
    lowmark_pass(&lm, at(12, 4));
    b = add(&lm, 20, 5);
    lowmark_pass(&lm, at(21, 6));
    ck_assert_uint_eq(lowmark_pending(&lm), 2);

    ck_assert_int_eq(lowmark_ack(&lm, b), 0);
    ck_assert_mark(&lm, 5, 1);
    ck_assert_int_eq(lowmark_ack(&lm, a), 0);
    ck_assert_mark(&lm, 21, 6);

    /* In order, the mark stops just before the oldest in flight. */
    a = add(&lm, 30, 7);
    lowmark_pass(&lm, at(31, 8));
    b = add(&lm, 40, 9);
    ck_assert_int_eq(lowmark_ack(&lm, a), 0);
    ck_assert_mark(&lm, 31, 8);
    ck_assert_int_eq(lowmark_ack(&lm, b), 0);
    ck_assert_mark(&lm, 40, 9);
    lowmark_free(&lm);
}
END_TEST

/* A failed submit takes its slot back; only the newest can be taken. */
START_TEST(cancel_newest)
{
    struct lowmark lm = { 0 };
    uint64_t a, b, c;

    a = add(&lm, 10, 1);
    b = add(&lm, 20, 2);
    ck_assert_int_eq(lowmark_cancel(&lm, a), -EINVAL);
    ck_assert_int_eq(lowmark_cancel(&lm, b + 1), -EINVAL);
    ck_assert_int_eq(lowmark_cancel(&lm, b), 0);
    ck_assert_uint_eq(lowmark_pending(&lm), 1);
    ck_assert_int_eq(lowmark_ack(&lm, b), -ENOENT);
    ck_assert_int_eq(lowmark_ack(&lm, a), 0);
    ck_assert_mark(&lm, 10, 1);
    ck_assert_uint_eq(lowmark_pending(&lm), 0);

    /* Offered again it is in flight again, and its ack counts. */
    c = add(&lm, 20, 2);
    ck_assert_int_eq(lowmark_ack(&lm, c), 0);
    ck_assert_mark(&lm, 20, 2);

    /* An acked newest one is no longer the caller's to take back. */
    a = add(&lm, 30, 3);
    b = add(&lm, 40, 4);
    ck_assert_int_eq(lowmark_ack(&lm, b), 0);
    ck_assert_int_eq(lowmark_cancel(&lm, b), -EINVAL);
    ck_assert_int_eq(lowmark_ack(&lm, a), 0);
    ck_assert_mark(&lm, 40, 4);
    lowmark_free(&lm);
}
END_TEST

/* After a reset (a replaced file, a new page) late acks of what was in
 * flight are refused, and new tickets never collide with them. */
START_TEST(reset_refuses_stale_acks)
{
    struct lowmark lm = { 0 };
    uint64_t old[3], t;
    int i;

    for (i = 0; i < 3; i++)
        old[i] = add(&lm, 10 * ((uint64_t) i + 1), (uint64_t) i + 1);
    ck_assert_int_eq(lowmark_ack(&lm, old[1]), 0);
    lowmark_reset(&lm, at(0, 0));
    ck_assert_mark(&lm, 0, 0);
    ck_assert_uint_eq(lowmark_pending(&lm), 0);
    t = add(&lm, 5, 1);
    for (i = 0; i < 3; i++) {
        ck_assert_uint_ne(t, old[i]);
        ck_assert_int_eq(lowmark_ack(&lm, old[i]), -ENOENT);
    }
    ck_assert_mark(&lm, 0, 0);
    ck_assert_uint_eq(lowmark_pending(&lm), 1);
    ck_assert_int_eq(lowmark_ack(&lm, t), 0);
    ck_assert_mark(&lm, 5, 1);
    lowmark_free(&lm);
}
END_TEST

/* The span counts what the ring holds: from the oldest message in flight
 * to the newest, acked ones included, passed records not. */
START_TEST(span_follows_the_window)
{
    struct lowmark lm = { 0 };
    uint64_t t[4], c;

    ck_assert_uint_eq(lowmark_span(&lm), 0);
    t[0] = add(&lm, 10, 1);
    lowmark_pass(&lm, at(11, 2));
    t[1] = add(&lm, 20, 3);
    t[2] = add(&lm, 30, 4);
    t[3] = add(&lm, 40, 5);
    ck_assert_uint_eq(lowmark_span(&lm), 4);

    /* Acks behind the oldest one in flight free nothing. */
    ck_assert_int_eq(lowmark_ack(&lm, t[1]), 0);
    ck_assert_int_eq(lowmark_ack(&lm, t[3]), 0);
    ck_assert_uint_eq(lowmark_pending(&lm), 2);
    ck_assert_uint_eq(lowmark_span(&lm), 4);
    ck_assert_int_eq(lowmark_ack(&lm, t[0]), 0);
    ck_assert_uint_eq(lowmark_span(&lm), 2);        /* t[2] and the acked t[3] */

    /* A cancel gives its room back; a reset empties the window. */
    c = add(&lm, 50, 6);
    ck_assert_uint_eq(lowmark_span(&lm), 3);
    ck_assert_int_eq(lowmark_cancel(&lm, c), 0);
    ck_assert_uint_eq(lowmark_span(&lm), 2);
    lowmark_reset(&lm, at(0, 0));
    ck_assert_uint_eq(lowmark_span(&lm), 0);
    ck_assert_int_eq(lowmark_ack(&lm, t[2]), -ENOENT);

    t[0] = add(&lm, 5, 1);
    ck_assert_int_eq(lowmark_ack(&lm, t[0]), 0);
    ck_assert_uint_eq(lowmark_span(&lm), 0);
    lowmark_free(&lm);
}
END_TEST

static uint64_t
rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* A long run: windows of growing width (so the ring grows while wrapped),
 * acks in random order, some records passed, some submits cancelled.  The
 * model keeps every record with its end and whether it is settled; the
 * mark must be the end of the longest settled prefix.  The ring holds the
 * messages from the oldest unacked one to the newest, and grows to that
 * span (rounded up to a power of two), not with the number of messages. */
START_TEST(long_run_against_model)
{
    enum { N = 200000 };
    struct lowmark lm = { 0 };
    uint64_t *ticket = calloc(N, sizeof(*ticket));   /* per record; 0 = passed */
    unsigned char *settled = calloc(N, 1);
    size_t *open = calloc(N, sizeof(*open));          /* records in flight */
    size_t *slot = calloc(N, sizeof(*slot));          /* messages added before each record */
    size_t nopen = 0, done = 0, added = 0, rec, width, span, maxspan = 0;
    uint64_t seed = 0x9e3779b97f4a7c15ULL;

    ck_assert_ptr_nonnull(ticket);
    ck_assert_ptr_nonnull(settled);
    ck_assert_ptr_nonnull(open);
    ck_assert_ptr_nonnull(slot);
    for (rec = 0; rec < N; rec++) {
        uint64_t r = rng_next(&seed);

        width = rec < N / 4 ? 40 : rec < N / 2 ? 100 : rec < 3 * (size_t) N / 4 ? 300 : 7;
        slot[rec] = added;
        if (r % 10 == 0) {
            lowmark_pass(&lm, at(rec + 1, rec + 1));
            settled[rec] = 1;
        } else {
            uint64_t t;

            ck_assert_int_eq(lowmark_add(&lm, at(rec + 1, rec + 1), &t), 0);
            if (r % 97 == 1) {
                /* submit failed: taken back, then offered again */
                ck_assert_int_eq(lowmark_cancel(&lm, t), 0);
                ck_assert_int_eq(lowmark_add(&lm, at(rec + 1, rec + 1), &t), 0);
            }
            ticket[rec] = t + 1;
            open[nopen++] = rec;
            added++;
        }
        /* the oldest unsettled record is the oldest message in flight */
        span = nopen > 0 ? added - slot[done] : 0;
        if (span > maxspan)
            maxspan = span;
        while (nopen > width || (nopen > 0 && rng_next(&seed) % 3 == 0)) {
            size_t k = (size_t) (rng_next(&seed) % nopen), a = open[k];

            ck_assert_int_eq(lowmark_ack(&lm, ticket[a] - 1), 0);
            ck_assert_int_eq(lowmark_ack(&lm, ticket[a] - 1), -ENOENT);
            settled[a] = 1;
            open[k] = open[--nopen];
        }
        while (done <= rec && settled[done])
            done++;
        ck_assert_uint_eq(lowmark_mark(&lm).off, done);
        ck_assert_uint_eq(lowmark_mark(&lm).line, done);
        ck_assert_uint_eq(lowmark_pending(&lm), nopen);
        ck_assert_uint_eq(lowmark_span(&lm), done <= rec ? added - slot[done] : 0);
    }
    ck_assert_uint_ge(lm.cap, maxspan);
    ck_assert_uint_lt(lm.cap, 2 * maxspan);
    ck_assert_uint_lt(maxspan, N / 20);
    while (nopen > 0) {
        ck_assert_int_eq(lowmark_ack(&lm, ticket[open[--nopen]] - 1), 0);
    }
    ck_assert_uint_eq(lowmark_mark(&lm).off, N);
    ck_assert_uint_eq(lowmark_pending(&lm), 0);
    lowmark_free(&lm);
    ck_assert_ptr_null(lm.ring);
    free(ticket);
    free(settled);
    free(open);
    free(slot);
}
END_TEST

int
main(void)
{
    Suite *s = suite_create("lowmark");
    TCase *tc = tcase_create("lowmark");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, zeroed_is_empty);
    tcase_add_test(tc, out_of_order_acks);
    tcase_add_test(tc, passed_records);
    tcase_add_test(tc, cancel_newest);
    tcase_add_test(tc, reset_refuses_stale_acks);
    tcase_add_test(tc, span_follows_the_window);
    tcase_add_test(tc, long_run_against_model);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
