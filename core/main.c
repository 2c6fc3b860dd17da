/* main.c - orderd: command line, start-up, signals, reload, shutdown.
 *
 * Signals are blocked in every thread and taken synchronously here with
 * sigtimedwait(), so handlers never run on a plugin's thread and reload is
 * ordinary code, not async-signal-safe contortions.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../plugins/common/deadline.h"
#include "admin.h"
#include "api.h"
#include "conf.h"
#include "loader.h"
#include "log.h"
#include "metrics.h"
#include "msg.h"
#include "pipe.h"
#include "sdnotify.h"
#include "util.h"

#ifndef OD_SYSCONFDIR
#define OD_SYSCONFDIR "/etc/orderd"
#endif
#ifndef OD_PLUGINDIR
#define OD_PLUGINDIR "/usr/lib/orderd"
#endif

#define EX_OK_      0
#define EX_FAIL     1
#define EX_USAGE_   64
#define EX_CONFIG_  78

/* Everything one configuration runs: swapped whole on reload. */
struct od_running {
    struct od_conf      *conf;
    struct od_registry   reg;
    struct od_pipe     **pipes;
    size_t               npipes;
};

static volatile int ready_flag;

static int is_ready(void *arg)
{
    (void)arg;
    return ready_flag;
}

static void usage(FILE *f)
{
    fprintf(f,
"Usage: orderd [OPTIONS]\n"
"Event-driven order-processing daemon: pipelines of input, transform, store and\n"
"publish stages loaded as plugins, declared in a libconfig file.\n"
"\n"
"  -c, --config FILE        configuration file (default " OD_SYSCONFDIR "/orderd.conf)\n"
"  -t, --check-config       check the configuration (and every plugin's keys),\n"
"                           print all errors with file:line, exit 0 or 78\n"
"      --dump-config        print the effective configuration as JSON, secrets redacted\n"
"  -S, --state-dir DIR      state directory (overrides state_dir in the file)\n"
"  -P, --plugin-dir PATH    plugin search path, ':'-separated (overrides plugin_dir\n"
"                           and $ORDERD_PLUGIN_PATH)\n"
"  -l, --list-plugins       list the plugins in the plugin path\n"
"      --help-plugin NAME   describe a plugin's stages and configuration keys\n"
"      --json               with --help-plugin / --help-config: machine-readable output\n"
"      --help-config        describe the core's configuration keys\n"
"  -V, --version            print version and plugin ABI\n"
"  -h, --help               this help\n"
"\n"
"Signals: SIGTERM/SIGINT drain and stop; SIGHUP re-reads and validates the\n"
"configuration and swaps pipelines (an invalid file is logged and ignored).\n"
"Exit status: 0 ok, 1 failure at run time, 64 usage, 78 configuration error.\n"
"See orderd(8), orderd.conf(5), orderd-plugin(3).\n");
}

static const char *plugin_path(const char *cli)
{
    const char *env = getenv("ORDERD_PLUGIN_PATH");

    if (cli)
        return cli;
    if (env && *env)
        return env;
    return NULL;
}

/* ---- informational commands -------------------------------------------------- */

static void print_scan_error(void *arg, const char *err)
{
    (void)arg;
    fprintf(stderr, "orderd: %s\n", err);
}

static int cmd_list_plugins(const char *path)
{
    struct od_registry reg;
    int failures;

    if (od_registry_init(&reg, path ? path : OD_PLUGINDIR) < 0)
        return EX_FAIL;
    failures = od_registry_scan(&reg, print_scan_error, NULL);
    printf("%-12s %-8s %-28s %s\n", "NAME", "VERSION", "KINDS", "DESCRIPTION");
    for (size_t i = 0; i < reg.nplugins; i++) {
        const struct od_plugin *p = reg.plugins[i];
        char kinds[128];
        od_plugin_kinds(p, kinds, sizeof(kinds));
        printf("%-12s %-8s %-28s %s\n", p->name, p->desc->version ? p->desc->version : "-", kinds,
               p->desc->description ? p->desc->description : "");
    }
    od_registry_free(&reg);
    return failures ? EX_FAIL : EX_OK_;
}

static json_t *stage_flags_json(unsigned flags)
{
    json_t *a = json_array();

    if (flags & ORDERD_SF_ASYNC_SETTLE)
        json_array_append_new(a, json_string("async_settle"));
    if (flags & ORDERD_SF_SERIAL)
        json_array_append_new(a, json_string("serial"));
    if (flags & ORDERD_SF_REDELIVERS)
        json_array_append_new(a, json_string("redelivers"));
    if (flags & ORDERD_SF_DEADLETTERS)
        json_array_append_new(a, json_string("deadletters"));
    return a;
}

static int cmd_help_plugin(const char *path, const char *name, int as_json)
{
    struct od_registry reg;
    const struct od_plugin *p;
    char err[512];
    int rc = EX_OK_;

    if (od_registry_init(&reg, path ? path : OD_PLUGINDIR) < 0)
        return EX_FAIL;
    p = od_registry_get(&reg, name, err, sizeof(err));
    if (p == NULL) {
        fprintf(stderr, "orderd: %s\n", err);
        od_registry_free(&reg);
        return EX_FAIL;
    }
    if (as_json) {
        json_t *j = json_object(), *stages = json_array();
        char abi[32], *text;
        snprintf(abi, sizeof(abi), "%u.%u", p->desc->abi_major, p->desc->abi_minor);
        json_object_set_new(j, "name", json_string(p->name));
        json_object_set_new(j, "version", json_string(p->desc->version ? p->desc->version : ""));
        json_object_set_new(j, "description", json_string(p->desc->description ? p->desc->description : ""));
        json_object_set_new(j, "maintainer", json_string(p->desc->maintainer ? p->desc->maintainer : ""));
        json_object_set_new(j, "path", json_string(p->path));
        json_object_set_new(j, "abi", json_string(abi));
        for (const orderd_stage *const *sp = p->desc->stages; *sp; sp++) {
            json_t *s = json_object();
            json_object_set_new(s, "kind", json_string(od_kind_name((*sp)->kind)));
            json_object_set_new(s, "description", json_string((*sp)->description ? (*sp)->description : ""));
            json_object_set_new(s, "flags", stage_flags_json((*sp)->flags));
            json_object_set_new(s, "options", od_options_json((*sp)->options));
            json_array_append_new(stages, s);
        }
        json_object_set_new(j, "stages", stages);
        text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (text)
            puts(text);
        free(text);
        json_decref(j);
    } else {
        printf("%s %s - %s\n", p->name, p->desc->version ? p->desc->version : "",
               p->desc->description ? p->desc->description : "");
        if (p->desc->maintainer)
            printf("maintainer: %s\n", p->desc->maintainer);
        printf("file: %s (plugin ABI %u.%u)\n", p->path, p->desc->abi_major, p->desc->abi_minor);
        for (const orderd_stage *const *sp = p->desc->stages; *sp; sp++) {
            printf("\n%s stage: %s\n", od_kind_name((*sp)->kind),
                   (*sp)->description ? (*sp)->description : "");
            printf("  { plugin = \"%s\"; name = \"...\"; (optional)\n", p->name);
            if ((*sp)->options && (*sp)->options->key) {
                printf("  %-20s %-14s %-16s %s\n", "KEY", "TYPE", "DEFAULT", "DESCRIPTION");
                od_options_print(stdout, (*sp)->options, 2);
            } else {
                printf("  (no keys of its own)\n");
            }
        }
    }
    od_registry_free(&reg);
    return rc;
}

static int cmd_help_config(int as_json)
{
    if (as_json) {
        json_t *j = json_pack("{s:o s:o s:o}", "top", od_options_json(od_core_options()),
                              "pipeline", od_options_json(od_pipeline_options()),
                              "spool", od_options_json(od_spool_options()));
        char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (text)
            puts(text);
        free(text);
        json_decref(j);
        return EX_OK_;
    }
    printf("Top-level keys:\n  %-20s %-14s %-16s %s\n", "KEY", "TYPE", "DEFAULT", "DESCRIPTION");
    od_options_print(stdout, od_core_options(), 2);
    printf("\nStage groups (input, transforms, store, publish) take plugin, name and the\n"
           "plugin's own keys: see orderd --help-plugin NAME.\n");
    return EX_OK_;
}

static void print_errors(const struct od_errs *errs)
{
    for (size_t i = 0; i < errs->n; i++)
        fprintf(stderr, "%s\n", errs->msg[i]);
}

static int load(const char *path, const struct od_conf_overrides *ov, struct od_running *r,
                struct od_errs *errs)
{
    memset(r, 0, sizeof(*r));
    if (ov->plugin_path && od_registry_init(&r->reg, ov->plugin_path) < 0)
        return -ENOMEM;
    return od_conf_load(path, ov, &r->reg, &r->conf, errs);
}

static void running_free(struct od_running *r)
{
    od_conf_free(r->conf);
    od_registry_free(&r->reg);
    free(r->pipes);
    memset(r, 0, sizeof(*r));
}

/* ---- running ---------------------------------------------------------------- */

static int pipelines_start(struct od_running *r)
{
    struct od_conf *c = r->conf;

    free(r->pipes);
    r->npipes = 0;
    r->pipes = calloc(c->npipelines + 1, sizeof(*r->pipes));
    if (r->pipes == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < c->npipelines; i++) {
        int rc = od_pipe_create(&c->pipelines[i], c->state_dir, &r->pipes[r->npipes]);
        if (rc < 0)
            return rc;
        r->npipes++;
    }
    od_pipes_set_current(r->pipes, r->npipes);
    for (size_t i = 0; i < r->npipes; i++) {
        int rc = od_pipe_start(r->pipes[i]);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static void pipelines_stop(struct od_running *r, int64_t timeout_ms)
{
    int64_t deadline = mono_ms() + timeout_ms;

    for (size_t i = 0; i < r->npipes; i++)
        od_pipe_stop_input(r->pipes[i]);
    for (size_t i = 0; i < r->npipes; i++)
        od_pipe_drain(r->pipes[i], deadline);
    od_pipes_set_current(NULL, 0);
    for (size_t i = 0; i < r->npipes; i++)
        od_pipe_destroy(r->pipes[i]);
    r->npipes = 0;
}

static int prepare_state_dir(const struct od_conf *c)
{
    int rc = od_mkdir_p(c->state_dir, 0750);

    if (rc < 0) {
        od_err("cannot create state directory %s: %s", c->state_dir, strerror(-rc));
        return rc;
    }
    od_host_set_state_dir(c->state_dir);
    return 0;
}

static void apply_logging(const struct od_conf *c)
{
    od_log_setup(c->log_level, c->log_json ? OD_LOG_JSON : OD_LOG_TEXT);
}

/* SIGHUP: validate the new file completely before touching what runs. */
static void reload(const char *path, const struct od_conf_overrides *ov, struct od_running *cur)
{
    struct od_running next;
    struct od_errs errs = { 0 };
    char labels[64];

    od_sd_notify("RELOADING=1");
    od_info("reloading %s", path);
    if (load(path, ov, &next, &errs) < 0) {
        for (size_t i = 0; i < errs.n; i++)
            od_err("reload: %s", errs.msg[i]);
        od_err("reload refused: %zu error%s; still running the previous configuration",
               errs.n, errs.n == 1 ? "" : "s");
        od_errs_free(&errs);
        running_free(&next);
        snprintf(labels, sizeof(labels), "result=\"refused\"");
        od_metrics_counter_add("orderd_reloads_total", "Configuration reloads", labels, 1);
        od_sd_notify("READY=1");
        return;
    }
    ready_flag = 0;
    /* Inputs stop, accepted work finishes (or stays with its source), then the
     * new pipelines start: nothing accepted is lost in between. */
    pipelines_stop(cur, cur->conf->shutdown_timeout_ms);
    if (prepare_state_dir(next.conf) < 0 || pipelines_start(&next) < 0) {
        od_err("reload: the new pipelines did not start; restarting the previous ones");
        pipelines_stop(&next, 0);
        running_free(&next);
        if (pipelines_start(cur) < 0)
            od_err("reload: the previous pipelines did not start either");
        snprintf(labels, sizeof(labels), "result=\"failed\"");
    } else {
        running_free(cur);
        *cur = next;
        apply_logging(cur->conf);
        od_api_set_state_dir(cur->conf->state_dir);
        snprintf(labels, sizeof(labels), "result=\"ok\"");
        od_info("reloaded: %zu pipeline%s", cur->npipes, cur->npipes == 1 ? "" : "s");
    }
    od_metrics_counter_add("orderd_reloads_total", "Configuration reloads", labels, 1);
    ready_flag = 1;
    od_sd_notify("READY=1");
}

static int run(const char *path, const struct od_conf_overrides *ov)
{
    struct od_running cur;
    struct od_errs errs = { 0 };
    struct od_admin *admin = NULL;
    sigset_t set;
    int64_t watchdog_ms = od_sd_watchdog_interval_ms(), next_dog = 0;
    int rc = EX_OK_;

    /* Block the signals we take synchronously before any thread exists. */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (load(path, ov, &cur, &errs) < 0) {
        print_errors(&errs);
        od_errs_free(&errs);
        running_free(&cur);
        return EX_CONFIG_;
    }
    apply_logging(cur.conf);
    if (prepare_state_dir(cur.conf) < 0) {
        running_free(&cur);
        return EX_FAIL;
    }
    od_metrics_init();
    if (cur.conf->admin_enabled &&
        od_admin_start(cur.conf->admin_listen, is_ready, NULL, &admin) < 0) {
        od_err("cannot start the admin listener on %s", cur.conf->admin_listen);
        rc = EX_FAIL;
        goto out;
    }
    if (admin && od_api_register(admin, cur.conf->state_dir, is_ready) < 0)
        od_warn("admin API not available");
    if (pipelines_start(&cur) < 0) {
        od_err("start-up failed");
        rc = EX_FAIL;
        pipelines_stop(&cur, 0);
        goto out;
    }
    ready_flag = 1;
    od_info("orderd %s running: %zu pipeline%s, state in %s%s%s", PACKAGE_VERSION, cur.npipes,
            cur.npipes == 1 ? "" : "s", cur.conf->state_dir, admin ? ", admin on " : "",
            admin ? cur.conf->admin_listen : "");
    od_sd_notify("READY=1");

    for (;;) {
        struct timespec ts = { .tv_sec = 1 };
        int sig;

        if (watchdog_ms > 0) {
            int64_t now = mono_ms();
            if (now >= next_dog) {
                od_sd_notify("WATCHDOG=1");
                next_dog = now + watchdog_ms;
            }
            if (watchdog_ms < 1000) {
                ts.tv_sec = 0;
                ts.tv_nsec = (long)watchdog_ms * 1000000;
            }
        }
        sig = sigtimedwait(&set, NULL, &ts);
        if (sig == SIGHUP) {
            reload(path, ov, &cur);
        } else if (sig == SIGTERM || sig == SIGINT) {
            od_info("%s: draining (up to %lld ms)", sig == SIGTERM ? "SIGTERM" : "SIGINT",
                    (long long)cur.conf->shutdown_timeout_ms);
            od_sd_notify("STOPPING=1");
            ready_flag = 0;
            pipelines_stop(&cur, cur.conf->shutdown_timeout_ms);
            od_info("stopped");
            break;
        }
    }
out:
    if (admin)
        od_admin_stop(admin);
    od_metrics_shutdown();
    running_free(&cur);
    od_log_clear_secrets();
    return rc;
}

int main(int argc, char **argv)
{
    enum { OPT_HELP_PLUGIN = 256, OPT_JSON, OPT_HELP_CONFIG, OPT_DUMP };
    static const struct option longopts[] = {
        { "config", required_argument, NULL, 'c' },
        { "check-config", no_argument, NULL, 't' },
        { "dump-config", no_argument, NULL, OPT_DUMP },
        { "state-dir", required_argument, NULL, 'S' },
        { "plugin-dir", required_argument, NULL, 'P' },
        { "list-plugins", no_argument, NULL, 'l' },
        { "help-plugin", required_argument, NULL, OPT_HELP_PLUGIN },
        { "help-config", no_argument, NULL, OPT_HELP_CONFIG },
        { "json", no_argument, NULL, OPT_JSON },
        { "version", no_argument, NULL, 'V' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    const char *config = OD_SYSCONFDIR "/orderd.conf", *help_plugin = NULL;
    struct od_conf_overrides ov = { 0 };
    int check = 0, dump = 0, list = 0, json = 0, help_config = 0, opt;

    while ((opt = getopt_long(argc, argv, "c:tS:P:lVh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c': config = optarg; break;
        case 't': check = 1; break;
        case OPT_DUMP: dump = 1; break;
        case 'S': ov.state_dir = optarg; break;
        case 'P': ov.plugin_path = optarg; break;
        case 'l': list = 1; break;
        case OPT_HELP_PLUGIN: help_plugin = optarg; break;
        case OPT_HELP_CONFIG: help_config = 1; break;
        case OPT_JSON: json = 1; break;
        case 'V':
            printf("orderd %s (plugin ABI %u.%u, allocator %s)\n", PACKAGE_VERSION, ORDERD_ABI_MAJOR,
                   ORDERD_ABI_MINOR, OD_ALLOCATOR);
            return EX_OK_;
        case 'h':
            usage(stdout);
            return EX_OK_;
        default:
            usage(stderr);
            return EX_USAGE_;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "orderd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return EX_USAGE_;
    }
    ov.plugin_path = plugin_path(ov.plugin_path);

    if (list)
        return cmd_list_plugins(ov.plugin_path);
    if (help_plugin)
        return cmd_help_plugin(ov.plugin_path, help_plugin, json);
    if (help_config)
        return cmd_help_config(json);
    if (check || dump) {
        struct od_running r;
        struct od_errs errs = { 0 };
        int rc = load(config, &ov, &r, &errs);
        if (rc < 0) {
            print_errors(&errs);
            fprintf(stderr, "%s: %zu error%s\n", config, errs.n, errs.n == 1 ? "" : "s");
            od_errs_free(&errs);
            running_free(&r);
            return EX_CONFIG_;
        }
        if (dump) {
            char *text = od_conf_dump(r.conf);
            if (text)
                puts(text);
            free(text);
        } else {
            printf("%s: configuration OK (%zu pipeline%s)\n", config, r.conf->npipelines,
                   r.conf->npipelines == 1 ? "" : "s");
        }
        running_free(&r);
        od_log_clear_secrets();
        return EX_OK_;
    }
    return run(config, &ov);
}
