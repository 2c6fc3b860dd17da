/* check_abi.c - the plugin ABI as a partner's binary meets it.
 *
 * abi10.so was compiled against tests/abi/plugin-1.0.h, the frozen ABI 1.0
 * header, and never saw core/include: today's loader must accept it and
 * today's host table must drive it.  The abi_*.so plugins under
 * tests/abi/.libs each make one mistake; the loader must refuse each with
 * one line that says what is wrong (and, for ABI numbers, both versions),
 * because that line is all an administrator sees. */
#include "config.h"

#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "loader.h"

/* Where the refused plugins are built: outside ORDERD_PLUGIN_PATH on purpose. */
static const char *bad_dir(void)
{
    static char dir[PATH_MAX];
    const char *top = getenv("TOP_BUILDDIR");

    ck_assert_msg(top != NULL, "TOP_BUILDDIR is not set (run through make check)");
    snprintf(dir, sizeof(dir), "%s/tests/abi/.libs", top);
    return dir;
}

static void assert_has(const char *err, const char *want)
{
    ck_assert_msg(strstr(err, want) != NULL, "error \"%s\" does not mention \"%s\"", err, want);
}

/* Try to load name from dirs; it must fail.  The error is left in err. */
static void refuse(const char *dirs, const char *name, char *err, size_t errlen)
{
    struct od_registry r;

    err[0] = '\0';
    ck_assert_int_eq(od_registry_init(&r, dirs), 0);
    ck_assert_msg(od_registry_get(&r, name, err, errlen) == NULL, "loader accepted %s", name);
    ck_assert_msg(err[0] != '\0', "loader refused %s without saying why", name);
    ck_assert_uint_eq(r.nplugins, 0);
    od_registry_free(&r);
}

START_TEST(test_abi10_loader)
{
    struct od_registry r;
    const struct od_plugin *p;
    const orderd_stage *st;
    char err[512] = "";

    ck_assert_int_eq(od_registry_init(&r, getenv("ORDERD_PLUGIN_PATH")), 0);
    p = od_registry_get(&r, "abi10", err, sizeof(err));
    ck_assert_msg(p != NULL, "abi10 refused: %s", err);
    ck_assert_str_eq(p->name, "abi10");
    ck_assert_uint_eq(p->desc->abi_major, 1);
    ck_assert_uint_eq(p->desc->abi_minor, 0);
    /* A 1.0 descriptor may be shorter than today's, never longer. */
    ck_assert_uint_le(p->desc->size, sizeof(orderd_plugin));
    st = od_plugin_stage(p, ORDERD_TRANSFORM);
    ck_assert_ptr_nonnull(st);
    ck_assert_ptr_nonnull(st->process);
    ck_assert_ptr_null(od_plugin_stage(p, ORDERD_INPUT));
    /* A second get returns the same loaded plugin, not a second copy. */
    ck_assert_ptr_eq(od_registry_get(&r, "abi10", err, sizeof(err)), p);
    ck_assert_uint_eq(r.nplugins, 1);
    od_registry_free(&r);
}
END_TEST

START_TEST(test_abi10_process)
{
    struct th_stage *s = th_stage_new("abi10", ORDERD_TRANSFORM, "");
    const orderd_host *h = th_host();
    orderd_msg *m = th_msg("{\"id\": \"ord-1\", \"total\": 3}");
    orderd_msg *batch[2];
    orderd_result out[2];

    ck_assert_ptr_null(h->msg_prop(m, "abi10"));
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    ck_assert_pstr_eq(h->msg_prop(m, "abi10"), "ok");
    /* The body is untouched: the plugin only adds a property. */
    ck_assert_int_eq(json_integer_value(json_object_get(h->msg_body(m), "total")), 3);
    th_msg_free(m);

    /* Several messages in a row through the same stage state. */
    batch[0] = th_msg("{\"id\": \"b-1\"}");
    batch[1] = th_msg("{\"id\": \"b-2\"}");
    memset(out, 0, sizeof(out));
    ck_assert_int_eq(th_process_batch(s, batch, 2, out), 0);
    for (size_t i = 0; i < 2; i++) {
        ck_assert_int_eq(out[i].outcome, ORDERD_OK);
        ck_assert_pstr_eq(h->msg_prop(batch[i], "abi10"), "ok");
        th_msg_free(batch[i]);
    }
    th_stage_free(s);
}
END_TEST

START_TEST(test_refuse_major)
{
    char err[512], want[64];

    refuse(bad_dir(), "abi_major2", err, sizeof(err));
    assert_has(err, "abi_major2.so");
    assert_has(err, "ABI 2.0");
    snprintf(want, sizeof(want), "ABI %u.%u", ORDERD_ABI_MAJOR, ORDERD_ABI_MINOR);
    assert_has(err, want);
    assert_has(err, "major");
}
END_TEST

START_TEST(test_refuse_minor)
{
    char err[512], want[64];

    refuse(bad_dir(), "abi_minor99", err, sizeof(err));
    assert_has(err, "abi_minor99.so");
    snprintf(want, sizeof(want), "ABI %u.99", ORDERD_ABI_MAJOR);
    assert_has(err, want);
    snprintf(want, sizeof(want), "ABI %u.%u", ORDERD_ABI_MAJOR, ORDERD_ABI_MINOR);
    assert_has(err, want);
    assert_has(err, "newer orderd");
}
END_TEST

START_TEST(test_refuse_nosym)
{
    char err[512];

    refuse(bad_dir(), "abi_nosym", err, sizeof(err));
    assert_has(err, "abi_nosym.so");
    assert_has(err, "not an orderd plugin");
    assert_has(err, ORDERD_PLUGIN_SYMBOL);
}
END_TEST

START_TEST(test_refuse_misname)
{
    char err[512];

    refuse(bad_dir(), "abi_misname", err, sizeof(err));
    assert_has(err, "abi_misname.so");
    assert_has(err, "'abi_misname'");
    assert_has(err, "'not_my_file_name'");
}
END_TEST

START_TEST(test_refuse_duplicate)
{
    struct od_registry r;
    const struct od_plugin *file;
    char err[512] = "", path[PATH_MAX + 32];

    ck_assert_int_eq(od_registry_init(&r, getenv("ORDERD_PLUGIN_PATH")), 0);
    file = od_registry_get(&r, "file", err, sizeof(err));
    ck_assert_msg(file != NULL, "the file plugin did not load: %s", err);

    /* By path, so the name check against the file name does not come first. */
    snprintf(path, sizeof(path), "%s/abi_dupname.so", bad_dir());
    err[0] = '\0';
    ck_assert_ptr_null(od_registry_get(&r, path, err, sizeof(err)));
    assert_has(err, "abi_dupname.so");
    assert_has(err, "duplicate plugin name 'file'");
    assert_has(err, file->path);
    ck_assert_uint_eq(r.nplugins, 1);
    /* The first "file" is still the one the registry hands out. */
    ck_assert_ptr_eq(od_registry_get(&r, "file", err, sizeof(err)), file);
    od_registry_free(&r);

    /* By bare name it is a plugin whose name differs from its file's. */
    refuse(bad_dir(), "abi_dupname", err, sizeof(err));
    assert_has(err, "calls itself 'file'");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("abi");
    TCase *tc = tcase_create("abi10");
    SRunner *sr;
    int failed;

    tcase_add_checked_fixture(tc, NULL, th_cleanup);
    tcase_add_test(tc, test_abi10_loader);
    tcase_add_test(tc, test_abi10_process);
    suite_add_tcase(s, tc);
    tc = tcase_create("refusals");
    tcase_add_test(tc, test_refuse_major);
    tcase_add_test(tc, test_refuse_minor);
    tcase_add_test(tc, test_refuse_nosym);
    tcase_add_test(tc, test_refuse_misname);
    tcase_add_test(tc, test_refuse_duplicate);
    suite_add_tcase(s, tc);

    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    th_cleanup();
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
