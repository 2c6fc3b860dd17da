/* check_util.c - value parsing and the retry math. */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

START_TEST(durations)
{
    int64_t v;

    ck_assert_int_eq(od_parse_duration("250ms", &v), 0); ck_assert_int_eq(v, 250);
    ck_assert_int_eq(od_parse_duration("30s", &v), 0);   ck_assert_int_eq(v, 30000);
    ck_assert_int_eq(od_parse_duration("5m", &v), 0);    ck_assert_int_eq(v, 300000);
    ck_assert_int_eq(od_parse_duration("2h", &v), 0);    ck_assert_int_eq(v, 7200000);
    ck_assert_int_eq(od_parse_duration("1d", &v), 0);    ck_assert_int_eq(v, 86400000);
    ck_assert_int_eq(od_parse_duration("0", &v), 0);     ck_assert_int_eq(v, 0);
    ck_assert_int_eq(od_parse_duration("10", &v), -EINVAL);      /* a unit is required */
    ck_assert_int_eq(od_parse_duration("10 parsecs", &v), -EINVAL);
    ck_assert_int_eq(od_parse_duration("-1s", &v), -EINVAL);
    ck_assert_int_eq(od_parse_duration("", &v), -EINVAL);
    ck_assert_int_eq(od_parse_duration("99999999999999999999s", &v), -EINVAL);
}
END_TEST

START_TEST(sizes)
{
    int64_t v;

    ck_assert_int_eq(od_parse_size("512", &v), 0);    ck_assert_int_eq(v, 512);
    ck_assert_int_eq(od_parse_size("64KiB", &v), 0);  ck_assert_int_eq(v, 65536);
    ck_assert_int_eq(od_parse_size("16MiB", &v), 0);  ck_assert_int_eq(v, 16 << 20);
    ck_assert_int_eq(od_parse_size("1GiB", &v), 0);   ck_assert_int_eq(v, 1 << 30);
    ck_assert_int_eq(od_parse_size("10MB", &v), 0);   ck_assert_int_eq(v, 10000000);
    ck_assert_int_eq(od_parse_size("1M", &v), 0);     ck_assert_int_eq(v, 1 << 20);
    ck_assert_int_eq(od_parse_size("1.5GiB", &v), -EINVAL);
    ck_assert_int_eq(od_parse_size("lots", &v), -EINVAL);
    ck_assert_int_eq(od_parse_size("9999999999TiB", &v), -EINVAL);
}
END_TEST

START_TEST(edit_distance)
{
    ck_assert_uint_eq(od_edit_distance("workers", "workers"), 0);
    ck_assert_uint_eq(od_edit_distance("wrokers", "workers"), 2);
    ck_assert_uint_eq(od_edit_distance("cuont", "count"), 2);
    ck_assert_uint_eq(od_edit_distance("path", "paths"), 1);
    ck_assert_uint_eq(od_edit_distance("", "abc"), 3);
}
END_TEST

/* Full jitter: every delay lies in [0, min(cap, base * 2^attempt)], and the
 * spread covers that whole range (not a fixed value, not only the top). */
START_TEST(backoff_full_jitter)
{
    for (uint32_t attempt = 0; attempt < 12; attempt++) {
        int64_t ceiling = 100;
        for (uint32_t i = 0; i < attempt; i++)
            ceiling *= 2;
        if (ceiling > 5000)
            ceiling = 5000;
        int64_t lo = ceiling, hi = 0;
        for (int i = 0; i < 4000; i++) {
            int64_t d = od_backoff_ms(attempt, 100, 5000);
            ck_assert_int_ge(d, 0);
            ck_assert_int_le(d, ceiling);
            if (d < lo) lo = d;
            if (d > hi) hi = d;
        }
        ck_assert_int_le(lo, ceiling / 10);        /* reaches near zero */
        ck_assert_int_ge(hi, ceiling - ceiling / 10);  /* and near the ceiling */
    }
    ck_assert_int_eq(od_backoff_ms(3, 0, 1000), 0);
    /* large attempts never overflow past the cap */
    for (int i = 0; i < 100; i++)
        ck_assert_int_le(od_backoff_ms(200, 100, 30000), 30000);
}
END_TEST

START_TEST(uuid_and_paths)
{
    char a[37], b[37], *p;

    od_uuid4(a);
    od_uuid4(b);
    ck_assert_uint_eq(strlen(a), 36);
    ck_assert_int_eq(a[14], '4');
    ck_assert(strchr("89ab", a[19]) != NULL);
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            ck_assert_int_eq(a[i], '-');
        else
            ck_assert_msg(strchr("0123456789abcdef", a[i]) != NULL, "uuid %s: char %d", a, i);
    }
    ck_assert_str_ne(a, b);
    p = od_path_join("/var/lib/orderd", "spool/x");
    ck_assert_str_eq(p, "/var/lib/orderd/spool/x");
    free(p);
    p = od_path_join("/var/lib/orderd", "/abs");
    ck_assert_str_eq(p, "/abs");
    free(p);
    p = od_dirname("/etc/orderd/orderd.conf");
    ck_assert_str_eq(p, "/etc/orderd");
    free(p);
    p = od_dirname("orderd.conf");
    ck_assert_str_eq(p, ".");
    free(p);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("util");
    TCase *tc = tcase_create("util");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, durations);
    tcase_add_test(tc, sizes);
    tcase_add_test(tc, edit_distance);
    tcase_add_test(tc, backoff_full_jitter);
    tcase_add_test(tc, uuid_and_paths);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
