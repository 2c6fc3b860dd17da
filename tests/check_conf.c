/* check_conf.c - configuration loading and validation: every error class
 * with its file:line, conversions, defaults, secrets, includes. */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "harness.h"
#include "loader.h"
#include "log.h"

static char dir[256];

static void setup(void)
{
    snprintf(dir, sizeof(dir), "%s/conf", th_state_dir());
    mkdir(dir, 0755);
}

static void teardown(void)
{
    th_cleanup();
}

static const char *write_file(const char *name, const char *text)
{
    static char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/* Load text as a config file; returns the number of errors, all joined in *all. */
static size_t load_text(const char *text, struct od_conf **conf, char **all)
{
    struct od_registry reg = { 0 };
    struct od_errs errs = { 0 };
    struct od_conf_overrides ov = { .plugin_path = getenv("ORDERD_PLUGIN_PATH") };
    const char *path = write_file("test.conf", text);
    size_t n, used = 0, cap = 8192;

    ck_assert_int_eq(od_registry_init(&reg, ov.plugin_path), 0);
    od_conf_load(path, &ov, &reg, conf, &errs);
    n = errs.n;
    *all = calloc(1, cap);
    for (size_t i = 0; i < errs.n; i++)
        used += (size_t)snprintf(*all + used, cap - used, "%s\n", errs.msg[i]);
    od_errs_free(&errs);
    /* The model's plugin pointers are not used after this: tests look only
     * at converted values, which the core owns. */
    od_registry_free(&reg);
    return n;
}

#define ASSERT_HAS(hay, needle) \
    ck_assert_msg(strstr((hay), (needle)) != NULL, "expected \"%s\" in:\n%s", (needle), (hay))

static const char *base =
    "state_dir = \"state\";\n"
    "pipelines = ( {\n"
    "  name = \"p\";\n"
    "  input = { plugin = \"testkit\"; count = 3; };\n"
    "  transforms = ( { plugin = \"testkit\"; sleep = \"250ms\"; }, { plugin = \"testkit\"; } );\n"
    "  publish = ( { plugin = \"file\"; path = \"out.ndjson\"; fsync_interval = \"2m\"; } );\n"
    "} );\n";

START_TEST(valid_config_converts_values)
{
    struct od_conf *c;
    char *errs;

    ck_assert_uint_eq(load_text(base, &c, &errs), 0);
    ck_assert_uint_eq(c->npipelines, 1);
    const struct od_pipeline_conf *p = &c->pipelines[0];
    ck_assert_str_eq(p->name, "p");
    /* defaults from the core schema */
    ck_assert_uint_eq(p->workers, 2);
    ck_assert_uint_eq(p->queue_size, 1024);
    ck_assert_uint_eq(p->retry.max_attempts, 5);
    ck_assert_int_eq(p->retry.backoff_base_ms, 100);
    ck_assert_int_eq(p->retry.backoff_cap_ms, 30000);
    ck_assert_int_eq(c->shutdown_timeout_ms, 10000);
    /* a duration became milliseconds */
    ck_assert_int_eq(json_integer_value(json_object_get(p->transforms[0].conf, "sleep")), 250);
    ck_assert_int_eq(json_integer_value(json_object_get(p->publish[0].conf, "fsync_interval")), 120000);
    /* repeated plugin names get numbered stage names */
    ck_assert_str_eq(p->transforms[0].name, "testkit-2");
    ck_assert_str_eq(p->transforms[1].name, "testkit-3");
    /* state_dir relative to the file; state paths (file publish) under it */
    char want[600];
    snprintf(want, sizeof(want), "%s/state", dir);
    ck_assert_str_eq(c->state_dir, want);
    snprintf(want, sizeof(want), "%s/state/out.ndjson", dir);
    ck_assert_str_eq(json_string_value(json_object_get(p->publish[0].conf, "path")), want);
    free(errs);
    od_conf_free(c);
}
END_TEST

START_TEST(pipeline_overrides_and_spool_defaults)
{
    struct od_conf *c;
    char *errs;

    ck_assert_uint_eq(load_text(
        "state_dir = \"/tmp/x\"; workers = 3; retry = { max_attempts = 9; };\n"
        "pipelines = ( { name = \"a\"; workers = 1; retry = { backoff_cap = \"1s\"; };\n"
        "  spool = { max_bytes = \"10MiB\"; }; input = { plugin = \"testkit\"; }; },\n"
        "  { name = \"b\"; input = { plugin = \"testkit\"; }; } );\n", &c, &errs), 0);
    ck_assert_uint_eq(c->pipelines[0].workers, 1);
    ck_assert_uint_eq(c->pipelines[1].workers, 3);
    /* a pipeline's own retry group replaces the top-level one, with its own defaults */
    ck_assert_uint_eq(c->pipelines[0].retry.max_attempts, 5);
    ck_assert_int_eq(c->pipelines[0].retry.backoff_cap_ms, 1000);
    ck_assert_uint_eq(c->pipelines[1].retry.max_attempts, 9);
    ck_assert_int_eq(json_integer_value(json_object_get(c->pipelines[0].spool, "max_bytes")),
                     10 * 1024 * 1024);
    ck_assert_str_eq(json_string_value(json_object_get(c->pipelines[0].spool, "path")), "/tmp/x/spool/a");
    ck_assert_int_eq(json_integer_value(json_object_get(c->pipelines[0].spool, "group_delay")), 1);
    ck_assert_ptr_null(c->pipelines[1].spool);
    free(errs);
    od_conf_free(c);

    /* group_delay: a duration, at most a second */
    ck_assert_uint_eq(load_text(
        "pipelines = ( { name = \"a\"; input = { plugin = \"testkit\"; };\n"
        "  spool = { group_delay = \"250ms\"; }; },\n"
        "  { name = \"b\"; input = { plugin = \"testkit\"; };\n"
        "  spool = {\n"
        "    group_delay = \"2s\"; }; } );\n", &c, &errs), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(c->pipelines[0].spool, "group_delay")), 250);
    ASSERT_HAS(errs, "test.conf:5: spool.group_delay must be at most 1000ms");
    free(errs);
    od_conf_free(c);
}
END_TEST

START_TEST(unknown_key_did_you_mean_with_line)
{
    struct od_conf *c;
    char *errs;

    ck_assert_uint_eq(load_text(
        "pipelines = ( {\n"
        "  name = \"p\";\n"
        "  input = { plugin = \"testkit\"; cuont = 3; };\n"
        "} );\n"
        "wrokers = 4;\n", &c, &errs), 2);
    ASSERT_HAS(errs, "test.conf:3: unknown key 'cuont' in input stage 'testkit' (plugin testkit); did you mean 'count'?");
    ASSERT_HAS(errs, "test.conf:5: unknown key 'wrokers' in the top level; did you mean 'workers'?");
    free(errs);
    od_conf_free(c);
}
END_TEST

START_TEST(wrong_types_and_bad_values)
{
    struct od_conf *c;
    char *errs;

    ck_assert_uint_eq(load_text(
        "pipelines = ( {\n"
        "  name = \"p\";\n"
        "  input = { plugin = \"testkit\"; count = \"many\"; };\n"
        "  transforms = ( { plugin = \"testkit\"; sleep = \"5 parsecs\"; },\n"
        "                 { plugin = \"testkit\"; reject = 1; } );\n"
        "  publish = ( { plugin = \"file\"; path = \"o\"; format = \"xml\"; fsync_interval = 30; } );\n"
        "} );\n"
        "shutdown_timeout = \"soon\";\n", &c, &errs), 6);
    ASSERT_HAS(errs, "test.conf:3: 'count' must be a integer");
    ASSERT_HAS(errs, "test.conf:4: 'sleep' is not a duration: \"5 parsecs\"");
    ASSERT_HAS(errs, "test.conf:5: 'reject' must be a boolean");
    ASSERT_HAS(errs, "test.conf:6: 'format' must be one of body|envelope (got \"xml\")");
    ASSERT_HAS(errs, "test.conf:6: 'fsync_interval' needs a unit");
    ASSERT_HAS(errs, "test.conf:8: 'shutdown_timeout' is not a duration");
    free(errs);
    od_conf_free(c);
}
END_TEST

START_TEST(missing_required_keys)
{
    struct od_conf *c;
    char *errs;

    ck_assert_uint_eq(load_text(
        "pipelines = ( {\n"
        "  name = \"p\";\n"
        "  input = { plugin = \"testkit\"; };\n"
        "  publish = ( { plugin = \"file\"; } );\n"
        "}, { input = { plugin = \"testkit\"; }; } );\n", &c, &errs), 2);
    ASSERT_HAS(errs, "test.conf:4: missing required key 'path' in publish stage 'file' (plugin file)");
    ASSERT_HAS(errs, "test.conf:5: pipeline needs name = \"NAME\";");
    free(errs);
    od_conf_free(c);
}
END_TEST

START_TEST(plugin_errors)
{
    struct od_conf *c;
    char *errs;

    ck_assert_uint_eq(load_text(
        "pipelines = ( {\n"
        "  name = \"p\";\n"
        "  input = { plugin = \"nosuchplugin\"; };\n"
        "  transforms = ( { plugin = \"file\"; } );\n"
        "  store = { plugin = \"/nonexistent/x.so\"; };\n"
        "} );\n", &c, &errs), 3);
    ASSERT_HAS(errs, "test.conf:3: plugin 'nosuchplugin' not found: no nosuchplugin.so in");
    ASSERT_HAS(errs, "test.conf:4: plugin 'file' does not provide a transform stage (it provides: input, publish)");
    ASSERT_HAS(errs, "test.conf:5: plugin file /nonexistent/x.so: No such file or directory");
    free(errs);
    od_conf_free(c);
}
END_TEST

START_TEST(structure_errors)
{
    struct od_conf *c;
    char *errs;

    ck_assert_uint_eq(load_text(
        "pipelines = ( { name = \"p\"; input = { plugin = \"testkit\"; }; },\n"
        "              { name = \"p\"; input = { plugin = \"testkit\"; }; transforms = { plugin = \"testkit\"; }; } );\n",
        &c, &errs), 2);
    ASSERT_HAS(errs, "test.conf:2: pipeline name 'p' is used twice");
    ASSERT_HAS(errs, "transforms must be a list");
    free(errs);
    od_conf_free(c);

    ck_assert_uint_eq(load_text("workers = 2;\n", &c, &errs), 1);
    ASSERT_HAS(errs, "no pipelines");
    free(errs);
    od_conf_free(c);

    ck_assert_uint_eq(load_text("pipelines = ( { name = \"p\" } );\n", &c, &errs), 1);
    ASSERT_HAS(errs, "test.conf:1:");   /* libconfig's own syntax error, with its line */
    free(errs);
    od_conf_free(c);
}
END_TEST

START_TEST(include_reports_the_included_file)
{
    struct od_conf *c;
    char *errs;

    mkdir(strcat(strcpy((char[512]){ 0 }, dir), "/conf.d"), 0755);
    write_file("conf.d/extra.conf", "\n\nretry = { max_atempts = 3; };\n");
    ck_assert_uint_eq(load_text(
        "@include \"conf.d/extra.conf\"\n"
        "pipelines = ( { name = \"p\"; input = { plugin = \"testkit\"; }; } );\n", &c, &errs), 1);
    ASSERT_HAS(errs, "conf.d/extra.conf:3: unknown key 'max_atempts' in retry; did you mean 'max_attempts'?");
    free(errs);
    od_conf_free(c);
}
END_TEST

/* A stage schema with a secret, to test secret handling without a network plugin. */
static const orderd_option secret_opts[] = {
    { .key = "token", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_SECRET | ORDERD_OPT_REQUIRED,
      .help = "a secret" },
    { .key = "spool", .type = ORDERD_T_PATH, .flags = ORDERD_OPT_STATE, .def = "q/dir", .help = "x" },
    { .key = "limit", .type = ORDERD_T_SIZE, .def = "1MiB", .help = "x" },
    { .key = NULL }
};
static const orderd_stage secret_stage = ORDERD_STAGE(.kind = ORDERD_PUBLISH, .options = secret_opts);

START_TEST(secrets_from_file_and_env_are_redacted)
{
    struct od_errs errs = { 0 };
    json_t *out;
    char *red;

    write_file("token.txt", "s3cr3t-from-file\n");
    ck_assert_int_eq(od_conf_check_stage_text("token_file = \"token.txt\";", &secret_stage, "/st",
                                              dir, &out, &errs), 0);
    ck_assert_str_eq(json_string_value(json_object_get(out, "token")), "s3cr3t-from-file");
    ck_assert_str_eq(json_string_value(json_object_get(out, "spool")), "/st/q/dir");
    ck_assert_int_eq(json_integer_value(json_object_get(out, "limit")), 1048576);
    json_decref(out);
    red = od_log_redact("auth with s3cr3t-from-file now");
    ck_assert_str_eq(red, "auth with *** now");
    free(red);

    setenv("OD_TEST_TOKEN", "env-secret-value", 1);
    ck_assert_int_eq(od_conf_check_stage_text("token_env = \"OD_TEST_TOKEN\";", &secret_stage, "/st",
                                              dir, &out, &errs), 0);
    ck_assert_str_eq(json_string_value(json_object_get(out, "token")), "env-secret-value");
    json_decref(out);
    red = od_log_redact("x env-secret-value y");
    ck_assert_str_eq(red, "x *** y");
    free(red);

    /* inline secrets are redacted too */
    ck_assert_int_eq(od_conf_check_stage_text("token = \"inline-value-1\";", &secret_stage, "/st",
                                              dir, &out, &errs), 0);
    json_decref(out);
    red = od_log_redact("inline-value-1");
    ck_assert_str_eq(red, "***");
    free(red);

    ck_assert_int_eq(od_conf_check_stage_text("token_env = \"OD_TEST_UNSET_VAR\";", &secret_stage,
                                              "/st", dir, &out, &errs), -EINVAL);
    ck_assert_int_eq(od_conf_check_stage_text("token = \"a\"; token_file = \"token.txt\";",
                                              &secret_stage, "/st", dir, &out, &errs), -EINVAL);
    ck_assert_int_eq(od_conf_check_stage_text("token_file = \"missing.txt\";", &secret_stage, "/st",
                                              dir, &out, &errs), -EINVAL);
    ck_assert_uint_eq(errs.n, 3);
    ck_assert_ptr_nonnull(strstr(errs.msg[0], "environment variable OD_TEST_UNSET_VAR is not set"));
    ck_assert_ptr_nonnull(strstr(errs.msg[1], "give only one of 'token', 'token_file' and 'token_env'"));
    ck_assert_ptr_nonnull(strstr(errs.msg[2], "cannot read"));
    od_errs_free(&errs);
}
END_TEST

START_TEST(dump_redacts_secrets)
{
    struct od_conf *c;
    char *errs, *dump;

    write_file("sec", "dump-secret-42\n");
    ck_assert_uint_eq(load_text(
        "pipelines = ( { name = \"p\"; input = { plugin = \"testkit\"; record_acks = \"dump-secret-42\"; }; } );\n",
        &c, &errs), 0);
    /* register the value as a secret the way a secret key would */
    od_log_add_secret("dump-secret-42");
    dump = od_conf_dump(c);
    ck_assert_ptr_nonnull(dump);
    ck_assert_ptr_null(strstr(dump, "dump-secret-42"));
    ASSERT_HAS(dump, "/***\"");
    free(dump);
    free(errs);
    od_conf_free(c);
}
END_TEST

static Suite *conf_suite(void)
{
    Suite *s = suite_create("conf");
    TCase *tc = tcase_create("conf");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, valid_config_converts_values);
    tcase_add_test(tc, pipeline_overrides_and_spool_defaults);
    tcase_add_test(tc, unknown_key_did_you_mean_with_line);
    tcase_add_test(tc, wrong_types_and_bad_values);
    tcase_add_test(tc, missing_required_keys);
    tcase_add_test(tc, plugin_errors);
    tcase_add_test(tc, structure_errors);
    tcase_add_test(tc, include_reports_the_included_file);
    tcase_add_test(tc, secrets_from_file_and_env_are_redacted);
    tcase_add_test(tc, dump_redacts_secrets);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(conf_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
