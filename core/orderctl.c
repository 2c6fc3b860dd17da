/* orderctl.c - the admin CLI of orderd.
 *
 * Talks to the daemon's admin API (GET /api/status, /api/deadletter...) and
 * to the Order API (POST /orders, for `submit`).  Needs only libc and
 * jansson: HTTP is done by http_client.c over plain sockets.
 *
 * Exit statuses: 0 ok, 1 error or daemon unreachable, 2 partial (some
 * orders rejected), 64 usage error (EX_USAGE).
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http_client.h"

#define OCTL_EXIT_OK      0
#define OCTL_EXIT_ERROR   1
#define OCTL_EXIT_PARTIAL 2
#define OCTL_EXIT_USAGE   64

#define OCTL_DEFAULT_ADMIN "127.0.0.1:9464"
#define OCTL_DEFAULT_API   "http://127.0.0.1:8080"
#define OCTL_PAGE          500     /* dead letters fetched per request */
#define OCTL_REASON_WIDTH  60
#define OCTL_MAX_LISTED    20      /* failing submit lines listed */

/* Options, as bits, so each command can say which apply to it. */
enum {
    OPT_ALL = 1 << 0, OPT_ID = 1 << 1, OPT_BATCH = 1 << 2, OPT_YES = 1 << 3, OPT_API = 1 << 4,
    OPT_API_KEY = 1 << 5, OPT_API_KEY_FILE = 1 << 6, OPT_CONCURRENCY = 1 << 7,
    OPT_IDEMPOTENCY = 1 << 8, OPT_LIMIT = 1 << 9,
};

struct octl {
    const char  *admin;
    char         ahost[256];
    char         aport[16];
    int          json;
    int          timeout_ms;
    unsigned     seen;          /* OPT_* given on the command line */

    int          all;
    int          yes;
    const char **ids;
    size_t       nids;
    long         batch;
    long         limit;

    const char  *api;
    const char  *api_key;
    const char  *api_key_file;
    long         concurrency;
    int          idempotency;

    char       **args;          /* command words, borrowed from argv */
    int          nargs;

    struct hc_conn conn;        /* to the admin API, kept alive across calls */
};

static const char octl_usage_text[] =
    "usage: orderctl [OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  status                                 pipelines, queues, spool, dead letters, stage counters\n"
    "  dead-letter list [PIPELINE]            dead-letter counts, or the entries of one pipeline\n"
    "  dead-letter show PIPELINE INDEX|ID     one dead letter as JSON\n"
    "  dead-letter replay PIPELINE --all|--id ID...  [--batch N]\n"
    "                                         re-inject dead letters at the stage that refused them\n"
    "  dead-letter purge PIPELINE [--id ID...] --yes\n"
    "                                         delete dead letters for good\n"
    "  submit FILE|-                          POST each NDJSON line to the Order API\n"
    "\n"
    "Options:\n"
    "  -a, --admin HOST:PORT    admin API address (default $ORDERCTL_ADMIN or " OCTL_DEFAULT_ADMIN ")\n"
    "      --json               print the API's JSON instead of tables\n"
    "      --timeout SECS       per-request timeout (default 30)\n"
    "      --all                replay: every dead letter of the pipeline\n"
    "      --id ID              replay/purge: this entry (repeatable)\n"
    "      --batch N            replay: entries per request (default 100)\n"
    "      --limit N            list: show at most N entries\n"
    "  -y, --yes                purge: really delete\n"
    "      --api URL            submit: Order API base URL (default $ORDERCTL_API or " OCTL_DEFAULT_API ")\n"
    "      --api-key KEY        submit: send Authorization: Bearer KEY (or $ORDERCTL_API_KEY)\n"
    "      --api-key-file FILE  submit: read the key from FILE\n"
    "      --concurrency N      submit: parallel connections (default 8)\n"
    "      --idempotency        submit: send an Idempotency-Key per line so re-runs create nothing twice\n"
    "  -h, --help               this text\n"
    "      --version            print the version\n"
    "\n"
    "Exit status: 0 ok, 1 error or orderd unreachable, 2 some orders rejected, 64 usage error.\n";

static int octl_usage(const char *fmt, const char *arg)
{
    fputs("orderctl: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs("\nTry 'orderctl --help' for more information.\n", stderr);
    return OCTL_EXIT_USAGE;
}

/* ---- formatting ------------------------------------------------------- */

/* Display width in characters (UTF-8 continuation bytes do not count). */
static size_t octl_width(const char *s)
{
    size_t w = 0;

    for (; *s; s++)
        if (((unsigned char)*s & 0xc0) != 0x80)
            w++;
    return w;
}


/* "512 B", "1.2 KiB", "3.4 MiB": spool sizes at a glance. */
static void octl_fmt_bytes(uint64_t n, char *buf, size_t sz)
{
    static const char *const unit[] = { "KiB", "MiB", "GiB", "TiB", "PiB" };
    double v = (double)n;
    size_t u = 0;

    if (n < 1024) {
        snprintf(buf, sz, "%" PRIu64 " B", n);
        return;
    }
    v /= 1024.0;
    while (v >= 1023.95 && u + 1 < sizeof(unit) / sizeof(unit[0])) {
        v /= 1024.0;
        u++;
    }
    snprintf(buf, sz, "%.1f %s", v, unit[u]);
}

/* Milliseconds since the epoch as ISO 8601 UTC with milliseconds. */
static void octl_fmt_time_ms(int64_t ms, char *buf, size_t sz)
{
    time_t secs = (time_t)(ms / 1000);
    int frac = (int)(ms % 1000);
    struct tm tm;
    char date[32];

    if (frac < 0) {
        frac += 1000;
        secs--;
    }
    if (gmtime_r(&secs, &tm) == NULL || strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm) == 0) {
        snprintf(buf, sz, "-");
        return;
    }
    snprintf(buf, sz, "%s.%03dZ", date, frac);
}

/* Copies s into buf as one line of at most width characters (UTF-8 aware,
 * so a cut never splits a character), ending in "..." when cut. */
static void octl_fmt_truncate(const char *s, size_t width, char *buf, size_t sz)
{
    size_t total = octl_width(s), keep = total, o = 0, chars = 0;

    if (total > width)
        keep = width > 3 ? width - 3 : 0;
    for (const char *p = s; *p != '\0' && chars < keep; chars++) {
        size_t clen = 1;

        while ((p[clen] & 0xc0) == 0x80)
            clen++;
        if (o + clen + 4 > sz)
            break;
        if (clen == 1 && ((unsigned char)*p < 0x20 || *p == 0x7f))
            buf[o++] = ' ';     /* keep the table on one line */
        else
            memcpy(buf + o, p, clen), o += clen;
        p += clen;
    }
    if (total > keep && o + 4 <= sz)
        memcpy(buf + o, "...", 3), o += 3;
    if (sz > 0)
        buf[o < sz ? o : sz - 1] = '\0';
}

/* Percent-encodes s for a path segment or a query value. */
static char *octl_url_escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    char *out = malloc(strlen(s) * 3 + 1), *p = out;

    if (out == NULL)
        return NULL;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;

        if (isalnum(ch) || ch == '-' || ch == '_' || ch == '.' || ch == '~') {
            *p++ = (char)ch;
        } else {
            *p++ = '%';
            *p++ = hex[ch >> 4];
            *p++ = hex[ch & 15];
        }
    }
    *p = '\0';
    return out;
}

/* FNV-1a, 64 bits: a stable fingerprint of a line for its Idempotency-Key. */
static uint64_t octl_fnv1a(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;

    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* The same line at the same place gets the same key on every run, so a
 * re-run of a file after a partial failure creates nothing twice. */
static void octl_idempotency_key(size_t lineno, const char *line, size_t n, char *buf, size_t sz)
{
    snprintf(buf, sz, "orderctl-%zu-%016" PRIx64, lineno, octl_fnv1a(line, n));
}

/* A table printed with columns sized to their widest cell. */
struct octl_table {
    size_t      ncols;
    const char *const *head;
    const int  *right;          /* per column: right-align (numbers) */
    char      **cells;          /* nrows * ncols, malloc'd */
    size_t      nrows;
};

static int octl_table_add(struct octl_table *t, const char *const *row)
{
    char **grown = realloc(t->cells, (t->nrows + 1) * t->ncols * sizeof(*grown));

    if (grown == NULL)
        return -ENOMEM;
    t->cells = grown;
    for (size_t c = 0; c < t->ncols; c++)
        if ((grown[t->nrows * t->ncols + c] = strdup(row[c] ? row[c] : "")) == NULL) {
            for (size_t k = 0; k < c; k++)
                free(grown[t->nrows * t->ncols + k]);
            return -ENOMEM;
        }
    t->nrows++;
    return 0;
}

static void octl_table_print(const struct octl_table *t, FILE *out, const char *indent)
{
    size_t w[16] = { 0 };

    for (size_t c = 0; c < t->ncols && c < 16; c++) {
        w[c] = octl_width(t->head[c]);
        for (size_t r = 0; r < t->nrows; r++) {
            size_t cw = octl_width(t->cells[r * t->ncols + c]);

            if (cw > w[c])
                w[c] = cw;
        }
    }
    for (size_t r = 0; r <= t->nrows; r++) {
        fputs(indent, out);
        for (size_t c = 0; c < t->ncols && c < 16; c++) {
            const char *s = r == 0 ? t->head[c] : t->cells[(r - 1) * t->ncols + c];
            int pad = (int)(w[c] - octl_width(s));
            int last = c + 1 == t->ncols;

            if (t->right[c])
                fprintf(out, "%*s%s", pad, "", s);
            else if (last)
                fputs(s, out);
            else
                fprintf(out, "%s%*s", s, pad, "");
            fputs(last ? "\n" : "  ", out);
        }
    }
}

static void octl_table_free(struct octl_table *t)
{
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    t->cells = NULL;
    t->nrows = 0;
}

static json_int_t octl_int(const json_t *obj, const char *key)
{
    return json_integer_value(json_object_get(obj, key));
}

static const char *octl_str(const json_t *obj, const char *key, const char *def)
{
    const char *s = json_string_value(json_object_get(obj, key));

    return s ? s : def;
}

static void octl_num(char *buf, size_t sz, json_int_t v)
{
    snprintf(buf, sz, "%" JSON_INTEGER_FORMAT, v);
}

/* Renders GET /api/status as tables. */
static int octl_print_status(const json_t *st, FILE *out)
{
    static const char *const phead[] = { "PIPELINE", "IN FLIGHT", "QUEUE", "SPOOL", "DEAD LETTERS" };
    static const int pright[] = { 0, 1, 1, 1, 1 };
    static const char *const shead[] = { "STAGE", "PLUGIN", "KIND", "IN", "OK", "RETRY", "REJECT", "DROP",
                                         "PENDING" };
    static const int sright[] = { 0, 0, 0, 1, 1, 1, 1, 1, 1 };
    static const char *const counters[] = { "in", "ok", "retry", "reject", "drop", "pending" };
    struct octl_table pt = { 5, phead, pright, NULL, 0 };
    const json_t *pipes = json_object_get(st, "pipelines"), *p, *s;
    json_t *ready = json_object_get(st, "ready");
    size_t i, j;
    int rc = 0;

    fprintf(out, "orderd %s, %s\n", octl_str(st, "version", "?"),
            ready == NULL ? "readiness unknown" : json_is_true(ready) ? "ready" : "NOT READY");
    if (json_array_size(pipes) == 0) {
        fputs("no pipelines\n", out);
        return 0;
    }
    fputc('\n', out);
    json_array_foreach(pipes, i, p) {
        char inflight[32], queue[32], spool[64], dead[32], bytes[32];
        const char *row[5] = { octl_str(p, "name", "?"), inflight, queue, spool, dead };
        const json_t *sp = json_object_get(p, "spool");

        octl_num(inflight, sizeof(inflight), octl_int(p, "in_flight"));
        octl_num(queue, sizeof(queue), octl_int(p, "queue_depth"));
        octl_num(dead, sizeof(dead), octl_int(p, "dead_letters"));
        if (json_is_object(sp)) {
            octl_fmt_bytes((uint64_t)octl_int(sp, "bytes"), bytes, sizeof(bytes));
            snprintf(spool, sizeof(spool), "%" JSON_INTEGER_FORMAT " rec / %s", octl_int(sp, "records"), bytes);
        } else {
            snprintf(spool, sizeof(spool), "-");
        }
        if ((rc = octl_table_add(&pt, row)) < 0)
            goto out;
    }
    octl_table_print(&pt, out, "");
    json_array_foreach(pipes, i, p) {
        struct octl_table stt = { 9, shead, sright, NULL, 0 };
        const json_t *stages = json_object_get(p, "stages");

        fprintf(out, "\npipeline %s:\n", octl_str(p, "name", "?"));
        json_array_foreach(stages, j, s) {
            char num[6][32];
            const char *row[9] = { octl_str(s, "name", "?"), octl_str(s, "plugin", "?"), octl_str(s, "kind", "?"),
                                   num[0], num[1], num[2], num[3], num[4], num[5] };

            for (size_t k = 0; k < 6; k++)
                octl_num(num[k], sizeof(num[k]), octl_int(s, counters[k]));
            if ((rc = octl_table_add(&stt, row)) < 0) {
                octl_table_free(&stt);
                goto out;
            }
        }
        octl_table_print(&stt, out, "  ");
        octl_table_free(&stt);
    }
out:
    octl_table_free(&pt);
    return rc;
}

/* One line per dead letter: INDEX ID STAGE TIME REASON. */
static int octl_add_entry_row(struct octl_table *t, const json_t *e)
{
    char idx[32], when[40], reason[OCTL_REASON_WIDTH * 4 + 8];
    const char *row[5] = { idx, octl_str(e, "id", "-"), octl_str(e, "stage", "-"), when, reason };

    octl_num(idx, sizeof(idx), octl_int(e, "index"));
    octl_fmt_time_ms((int64_t)octl_int(e, "dead_lettered_ms"), when, sizeof(when));
    octl_fmt_truncate(octl_str(e, "reason", ""), OCTL_REASON_WIDTH, reason, sizeof(reason));
    return octl_table_add(t, row);
}

/* ---- admin API -------------------------------------------------------- */

/* Prints why a call failed: unreachable, a problem document, or anything else. */
static void octl_report_http(const struct octl *o, const char *what, int err, const struct hc_response *r)
{
    json_t *pb;

    if (err < 0) {
        fprintf(stderr, "orderctl: cannot reach orderd %s at %s: %s\n", what, o->admin, hc_strerror(err));
        return;
    }
    pb = json_loadb(r->body ? r->body : "", r->len, 0, NULL);
    if (json_is_object(pb) && (json_object_get(pb, "title") || json_object_get(pb, "detail"))) {
        const char *title = octl_str(pb, "title", "error"), *detail = octl_str(pb, "detail", NULL);

        fprintf(stderr, "orderctl: %s (HTTP %d)%s%s\n", title, r->status, detail ? ": " : "", detail ? detail : "");
    } else {
        fprintf(stderr, "orderctl: unexpected answer from the %s at %s: HTTP %d\n", what, o->admin, r->status);
    }
    json_decref(pb);
}

/*
 * Calls the admin API.  body (borrowed) is sent as JSON when not NULL.
 * RETURNS: 0 and *out (a JSON object, the caller's) and, when raw is not
 * NULL, the body text in *raw (malloc'd); otherwise an exit status after
 * printing why.
 */
static int octl_admin(struct octl *o, const char *method, const char *path, const json_t *body, json_t **out,
                      char **raw)
{
    static const char *const jhdr[] = { "Accept: application/json", "Content-Type: application/json", NULL };
    static const char *const ahdr[] = { "Accept: application/json", NULL };
    struct hc_response r;
    json_error_t jerr;
    char *text = NULL;
    int rc;

    *out = NULL;
    if (raw)
        *raw = NULL;
    if (body && (text = json_dumps(body, JSON_COMPACT)) == NULL) {
        fputs("orderctl: out of memory\n", stderr);
        return OCTL_EXIT_ERROR;
    }
    rc = hc_request(&o->conn, method, path, body ? jhdr : ahdr, text, text ? strlen(text) : 0, &r);
    free(text);
    if (rc < 0 || r.status < 200 || r.status > 299) {
        octl_report_http(o, "admin API", rc, &r);
        hc_response_free(&r);
        return OCTL_EXIT_ERROR;
    }
    *out = json_loadb(r.body, r.len, 0, &jerr);
    if (!json_is_object(*out)) {
        fprintf(stderr, "orderctl: %s %s: the admin API answered something that is not a JSON object: %s\n",
                method, path, *out ? "wrong type" : jerr.text);
        json_decref(*out);
        *out = NULL;
        hc_response_free(&r);
        return OCTL_EXIT_ERROR;
    }
    if (raw) {
        *raw = r.body;
        r.body = NULL;
    }
    hc_response_free(&r);
    return OCTL_EXIT_OK;
}

static void octl_print_raw(const char *raw)
{
    size_t n = strlen(raw);

    fputs(raw, stdout);
    if (n == 0 || raw[n - 1] != '\n')
        fputc('\n', stdout);
}

/* Prints doc (stolen) as one line of JSON. */
static void octl_print_json(json_t *doc)
{
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;

    if (text)
        puts(text);
    free(text);
    json_decref(doc);
}

static int octl_cmd_status(struct octl *o)
{
    json_t *st;
    char *raw;
    int rc = octl_admin(o, "GET", "/api/status", NULL, &st, &raw);

    if (rc != OCTL_EXIT_OK)
        return rc;
    if (o->json)
        octl_print_raw(raw);
    else if (octl_print_status(st, stdout) < 0)
        rc = OCTL_EXIT_ERROR;
    free(raw);
    json_decref(st);
    return rc;
}

static char *octl_dl_path(const char *pipeline, const char *suffix)
{
    char *esc = octl_url_escape(pipeline), *path = NULL;

    if (esc && asprintf(&path, "/api/deadletter/%s%s", esc, suffix ? suffix : "") < 0)
        path = NULL;
    free(esc);
    return path;
}

/* Fetches one page of a pipeline's dead letters. */
static int octl_dl_page(struct octl *o, const char *pipeline, long offset, long limit, json_t **page)
{
    char q[64];
    char *path;
    int rc;

    snprintf(q, sizeof(q), "?offset=%ld&limit=%ld", offset, limit);
    if ((path = octl_dl_path(pipeline, q)) == NULL)
        return OCTL_EXIT_ERROR;
    rc = octl_admin(o, "GET", path, NULL, page, NULL);
    free(path);
    return rc;
}

static int octl_dl_counts(struct octl *o)
{
    static const char *const head[] = { "PIPELINE", "DEAD LETTERS" };
    static const int right[] = { 0, 1 };
    struct octl_table t = { 2, head, right, NULL, 0 };
    json_t *all, *p;
    char *raw;
    size_t i;
    int rc = octl_admin(o, "GET", "/api/deadletter", NULL, &all, &raw);

    if (rc != OCTL_EXIT_OK)
        return rc;
    if (o->json) {
        octl_print_raw(raw);
        goto out;
    }
    json_array_foreach(json_object_get(all, "pipelines"), i, p) {
        char n[32];
        const char *row[2] = { octl_str(p, "pipeline", "?"), n };

        octl_num(n, sizeof(n), octl_int(p, "count"));
        if (octl_table_add(&t, row) < 0) {
            rc = OCTL_EXIT_ERROR;
            goto out;
        }
    }
    if (t.nrows == 0)
        puts("no pipelines");
    else
        octl_table_print(&t, stdout, "");
out:
    octl_table_free(&t);
    free(raw);
    json_decref(all);
    return rc;
}

static int octl_dl_list(struct octl *o, const char *pipeline)
{
    static const char *const head[] = { "INDEX", "ID", "STAGE", "TIME", "REASON" };
    static const int right[] = { 1, 0, 0, 0, 0 };
    struct octl_table t = { 5, head, right, NULL, 0 };
    json_t *entries = json_array(), *page = NULL, *e;
    json_int_t total = 0;
    long offset = 0, want = o->limit > 0 ? o->limit : -1;
    int rc = OCTL_EXIT_OK;
    size_t i;

    if (entries == NULL)
        return OCTL_EXIT_ERROR;
    for (;;) {
        long n = want < 0 ? OCTL_PAGE : (want - offset < OCTL_PAGE ? want - offset : OCTL_PAGE);
        json_t *got;

        if (n <= 0)
            break;
        if ((rc = octl_dl_page(o, pipeline, offset, n, &page)) != OCTL_EXIT_OK)
            goto out;
        total = octl_int(page, "total");
        got = json_object_get(page, "entries");
        if (json_array_extend(entries, got) < 0) {
            rc = OCTL_EXIT_ERROR;
            goto out;
        }
        n = (long)json_array_size(got);
        offset += n;
        json_decref(page);     /* got goes with it */
        page = NULL;
        if (n == 0 || offset >= total)
            break;
    }
    if (o->json) {
        json_t *doc = json_pack("{s:s, s:I, s:O}", "pipeline", pipeline, "total", total, "entries", entries);
        char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;

        if (text)
            puts(text);
        else
            rc = OCTL_EXIT_ERROR;
        free(text);
        json_decref(doc);
        goto out;
    }
    json_array_foreach(entries, i, e)
        if (octl_add_entry_row(&t, e) < 0) {
            rc = OCTL_EXIT_ERROR;
            goto out;
        }
    if (t.nrows > 0)
        octl_table_print(&t, stdout, "");
    printf("%s: %" JSON_INTEGER_FORMAT " dead letter%s", pipeline, total, total == 1 ? "" : "s");
    if ((json_int_t)t.nrows < total)
        printf(" (%zu shown)", t.nrows);
    putchar('\n');
out:
    octl_table_free(&t);
    json_decref(page);
    json_decref(entries);
    return rc;
}

static int octl_all_digits(const char *s)
{
    return *s != '\0' && strspn(s, "0123456789") == strlen(s);
}

/* Finds an entry by id, paging through the pipeline's dead letters. */
static int octl_dl_find(struct octl *o, const char *pipeline, const char *id, json_t **entry)
{
    long offset = 0;

    *entry = NULL;
    for (;;) {
        json_t *page, *got, *e;
        size_t i;
        int rc = octl_dl_page(o, pipeline, offset, OCTL_PAGE, &page);

        if (rc != OCTL_EXIT_OK)
            return rc;
        got = json_object_get(page, "entries");
        json_array_foreach(got, i, e)
            if (strcmp(octl_str(e, "id", ""), id) == 0) {
                *entry = json_incref(e);
                json_decref(page);
                return OCTL_EXIT_OK;
            }
        offset += (long)json_array_size(got);
        if (json_array_size(got) == 0 || offset >= (long)octl_int(page, "total")) {
            json_decref(page);
            break;
        }
        json_decref(page);
    }
    fprintf(stderr, "orderctl: no dead letter with id '%s' in pipeline '%s'\n", id, pipeline);
    return OCTL_EXIT_ERROR;
}

static int octl_dl_show(struct octl *o, const char *pipeline, const char *key)
{
    json_t *entry = NULL;
    char *text;
    int rc;

    if (octl_all_digits(key)) {
        char *esc = octl_url_escape(key), *suffix = NULL, *path = NULL;

        if (esc && asprintf(&suffix, "/%s", esc) >= 0)
            path = octl_dl_path(pipeline, suffix);
        free(esc);
        free(suffix);
        if (path == NULL)
            return OCTL_EXIT_ERROR;
        rc = octl_admin(o, "GET", path, NULL, &entry, NULL);
        free(path);
    } else {
        rc = octl_dl_find(o, pipeline, key, &entry);
    }
    if (rc != OCTL_EXIT_OK)
        return rc;
    text = json_dumps(entry, o->json ? JSON_COMPACT : JSON_INDENT(2));
    if (text == NULL)
        rc = OCTL_EXIT_ERROR;
    else
        puts(text);
    free(text);
    json_decref(entry);
    return rc;
}

/* One POST .../replay.  Adds its counts to the totals. */
static int octl_replay_call(struct octl *o, const char *path, json_t *req, json_int_t *replayed,
                            json_int_t *failed, json_int_t *remaining)
{
    json_t *ans;
    int rc = octl_admin(o, "POST", path, req, &ans, NULL);

    json_decref(req);
    if (rc != OCTL_EXIT_OK)
        return rc;
    *replayed += octl_int(ans, "replayed");
    *failed += octl_int(ans, "failed");
    *remaining = octl_int(ans, "remaining");
    json_decref(ans);
    return OCTL_EXIT_OK;
}

static int octl_dl_replay(struct octl *o, const char *pipeline)
{
    json_int_t replayed = 0, failed = 0, remaining = 0, total;
    char *path = octl_dl_path(pipeline, "/replay");
    json_t *page = NULL;
    int rc;

    if (path == NULL)
        return OCTL_EXIT_ERROR;
    if (o->nids > 0) {
        total = (json_int_t)o->nids;
        for (size_t i = 0; i < o->nids; i += (size_t)o->batch) {
            json_t *ids = json_array();

            for (size_t k = i; k < o->nids && k < i + (size_t)o->batch; k++)
                json_array_append_new(ids, json_string(o->ids[k]));
            if ((rc = octl_replay_call(o, path, json_pack("{s:o}", "ids", ids), &replayed, &failed,
                                       &remaining)) != OCTL_EXIT_OK)
                goto out;
            if (o->nids > (size_t)o->batch)
                fprintf(stderr, "replayed %" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT "...\n",
                        replayed + failed, total);
        }
    } else {
        /* The count taken now bounds the loop: entries that are refused
         * again come back as new dead letters and must not be replayed
         * round and round. */
        if ((rc = octl_dl_page(o, pipeline, 0, 1, &page)) != OCTL_EXIT_OK)
            goto out;
        total = remaining = octl_int(page, "total");
        while (replayed + failed < total) {
            json_int_t before = replayed + failed, left = total - before;

            if ((rc = octl_replay_call(o, path, json_pack("{s:I}", "limit", left < o->batch ? left : o->batch),
                                       &replayed, &failed, &remaining)) != OCTL_EXIT_OK)
                goto out;
            fprintf(stderr, "replayed %" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT "...\n", replayed + failed,
                    total);
            if (replayed + failed == before)
                break;  /* nothing taken: the pipeline has no more (someone else replayed or purged) */
        }
    }
    if (o->json)
        octl_print_json(json_pack("{s:s, s:I, s:I, s:I}", "pipeline", pipeline, "replayed", replayed, "failed",
                                  failed, "remaining", remaining));
    else if (total == 0)
        printf("%s: no dead letters to replay\n", pipeline);
    else
        printf("%s: replayed %" JSON_INTEGER_FORMAT " of %" JSON_INTEGER_FORMAT " dead letter%s, %"
               JSON_INTEGER_FORMAT " failed, %" JSON_INTEGER_FORMAT " remaining\n", pipeline, replayed, total,
               total == 1 ? "" : "s", failed, remaining);
    rc = failed > 0 ? OCTL_EXIT_ERROR : OCTL_EXIT_OK;
out:
    json_decref(page);
    free(path);
    return rc;
}

static int octl_dl_purge(struct octl *o, const char *pipeline)
{
    json_int_t purged = 0, remaining = 0;
    int rc = OCTL_EXIT_OK;

    if (!o->yes)
        return octl_usage("purge deletes dead letters for good: add --yes to really do it (pipeline '%s')",
                          pipeline);
    for (size_t i = 0; i < (o->nids ? o->nids : 1); i++) {
        char *esc = o->nids ? octl_url_escape(o->ids[i]) : NULL, *q = NULL, *path;
        json_t *ans;

        if (o->nids && (esc == NULL || asprintf(&q, "?id=%s", esc) < 0))
            q = NULL;
        free(esc);
        if (o->nids && q == NULL)
            return OCTL_EXIT_ERROR;
        path = octl_dl_path(pipeline, q);
        free(q);
        if (path == NULL)
            return OCTL_EXIT_ERROR;
        rc = octl_admin(o, "DELETE", path, NULL, &ans, NULL);
        free(path);
        if (rc != OCTL_EXIT_OK)
            return rc;
        purged += octl_int(ans, "purged");
        remaining = octl_int(ans, "remaining");
        json_decref(ans);
    }
    if (o->json)
        octl_print_json(json_pack("{s:s, s:I, s:I}", "pipeline", pipeline, "purged", purged, "remaining", remaining));
    else
        printf("%s: purged %" JSON_INTEGER_FORMAT " dead letter%s, %" JSON_INTEGER_FORMAT " remaining\n", pipeline,
               purged, purged == 1 ? "" : "s", remaining);
    return rc;
}

static int octl_cmd_dead_letter(struct octl *o)
{
    const char *sub = o->nargs > 1 ? o->args[1] : NULL;
    unsigned allowed;
    int nmin, nmax;

    if (sub == NULL)
        return octl_usage("%s: say list, show, replay or purge", "dead-letter");
    if (strcmp(sub, "list") == 0) {
        allowed = OPT_LIMIT, nmin = 2, nmax = 3;
    } else if (strcmp(sub, "show") == 0) {
        allowed = 0, nmin = nmax = 4;
    } else if (strcmp(sub, "replay") == 0) {
        allowed = OPT_ALL | OPT_ID | OPT_BATCH, nmin = nmax = 3;
    } else if (strcmp(sub, "purge") == 0) {
        allowed = OPT_ID | OPT_YES, nmin = nmax = 3;
    } else {
        return octl_usage("unknown dead-letter command '%s' (list, show, replay, purge)", sub);
    }
    if (o->seen & ~allowed)
        return octl_usage("an option given does not apply to 'dead-letter %s'", sub);
    if (o->nargs < nmin)
        return octl_usage(nmin == 4 ? "dead-letter %s: PIPELINE and INDEX|ID needed" : "dead-letter %s: PIPELINE needed",
                          sub);
    if (o->nargs > nmax)
        return octl_usage("dead-letter %s: too many arguments", sub);
    if (strcmp(sub, "list") == 0)
        return o->nargs == 3 ? octl_dl_list(o, o->args[2]) : octl_dl_counts(o);
    if (strcmp(sub, "show") == 0)
        return octl_dl_show(o, o->args[2], o->args[3]);
    if (strcmp(sub, "replay") == 0) {
        if (o->all == (o->nids > 0))
            return octl_usage("dead-letter replay: say either --all or --id ID (pipeline '%s')", o->args[2]);
        return octl_dl_replay(o, o->args[2]);
    }
    return octl_dl_purge(o, o->args[2]);
}

/* ---- submit ----------------------------------------------------------- */

struct octl_line {
    size_t  lineno;
    char   *text;
    size_t  len;
    int     status;     /* HTTP status, or negative errno on transport failure */
    char   *detail;     /* malloc'd problem detail when not accepted */
};

struct octl_submit {
    struct octl      *o;
    struct octl_line *lines;
    size_t            nlines;
    char              host[256];
    char              port[16];
    char             *path;
    char             *auth;         /* "Authorization: Bearer ..." or NULL */
    pthread_mutex_t   lock;
    size_t            next;
    size_t            done;
};

/* The problem's detail (or title), else the start of the body. */
static char *octl_problem_detail(const struct hc_response *r)
{
    json_t *pb = json_loadb(r->body ? r->body : "", r->len, 0, NULL);
    const char *d = json_is_object(pb) ? octl_str(pb, "detail", octl_str(pb, "title", NULL)) : NULL;
    char buf[512];

    octl_fmt_truncate(d ? d : r->body ? r->body : "", 200, buf, sizeof(buf));
    json_decref(pb);
    return strdup(buf);
}

static void *octl_submit_worker(void *arg)
{
    struct octl_submit *s = arg;
    struct hc_conn conn;
    const char *hdr[5];
    char keyhdr[128];
    size_t nh = 0;

    hc_init(&conn, s->host, s->port, s->o->timeout_ms);
    hdr[nh++] = "Content-Type: application/json";
    hdr[nh++] = "Accept: application/json, application/problem+json";
    if (s->auth)
        hdr[nh++] = s->auth;
    for (;;) {
        struct octl_line *l;
        struct hc_response r;
        size_t i, n = nh;

        pthread_mutex_lock(&s->lock);
        i = s->next < s->nlines ? s->next++ : s->nlines;
        pthread_mutex_unlock(&s->lock);
        if (i == s->nlines)
            break;
        l = &s->lines[i];
        if (s->o->idempotency) {
            char key[96];

            octl_idempotency_key(l->lineno, l->text, l->len, key, sizeof(key));
            snprintf(keyhdr, sizeof(keyhdr), "Idempotency-Key: %s", key);
            hdr[n++] = keyhdr;
        }
        hdr[n] = NULL;
        l->status = hc_request(&conn, "POST", s->path, hdr, l->text, l->len, &r);
        if (l->status == 0) {
            l->status = r.status;
            if (r.status < 200 || r.status > 299)
                l->detail = octl_problem_detail(&r);
        } else {
            hc_close(&conn);    /* start afresh for the next line */
        }
        hc_response_free(&r);

        pthread_mutex_lock(&s->lock);
        s->done++;
        if (s->done % 1000 == 0 && s->done < s->nlines)
            fprintf(stderr, "submitted %zu/%zu...\n", s->done, s->nlines);
        pthread_mutex_unlock(&s->lock);
    }
    hc_close(&conn);
    return NULL;
}

static int octl_read_lines(FILE *in, struct octl_line **out, size_t *count)
{
    struct octl_line *lines = NULL;
    size_t n = 0, cap = 0, lineno = 0, bufsz = 0;
    char *buf = NULL;
    ssize_t len;

    while ((len = getline(&buf, &bufsz, in)) >= 0) {
        lineno++;
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
            buf[--len] = '\0';
        if (strspn(buf, " \t") == (size_t)len)
            continue;   /* blank lines are not orders */
        if (n == cap) {
            struct octl_line *grown = realloc(lines, (cap ? cap * 2 : 256) * sizeof(*grown));

            if (grown == NULL)
                goto nomem;
            lines = grown;
            cap = cap ? cap * 2 : 256;
        }
        lines[n] = (struct octl_line){ .lineno = lineno, .text = strdup(buf), .len = (size_t)len };
        if (lines[n].text == NULL)
            goto nomem;
        n++;
    }
    free(buf);
    *out = lines;
    *count = n;
    return ferror(in) ? -EIO : 0;
nomem:
    free(buf);
    for (size_t i = 0; i < n; i++)
        free(lines[i].text);
    free(lines);
    return -ENOMEM;
}

/* Reads an API key: $ORDERCTL_API_KEY, --api-key, or the first line of --api-key-file. */
static int octl_api_key(const struct octl *o, char **key)
{
    const char *k = o->api_key ? o->api_key : getenv("ORDERCTL_API_KEY");
    char line[4096];
    FILE *f;

    *key = NULL;
    if (o->api_key_file) {
        size_t n;

        if ((f = fopen(o->api_key_file, "re")) == NULL) {
            fprintf(stderr, "orderctl: cannot read API key file %s: %s\n", o->api_key_file, strerror(errno));
            return -1;
        }
        if (fgets(line, sizeof(line), f) == NULL)
            line[0] = '\0';
        fclose(f);
        n = strcspn(line, "\r\n");
        line[n] = '\0';
        while (n > 0 && isspace((unsigned char)line[n - 1]))
            line[--n] = '\0';
        if (n == 0) {
            fprintf(stderr, "orderctl: API key file %s is empty\n", o->api_key_file);
            return -1;
        }
        k = line;
    }
    if (k != NULL && *k != '\0' && asprintf(key, "Authorization: Bearer %s", k) < 0) {
        *key = NULL;
        return -1;
    }
    return 0;
}

static int octl_cmp_int(const void *a, const void *b)
{
    return *(const int *)a - *(const int *)b;
}

static int octl_submit_report(const struct octl_submit *s, FILE *out)
{
    size_t accepted = 0, rejected = 0, failed = 0, listed = 0, nstat = 0;
    int *stats = malloc((s->nlines + 1) * sizeof(*stats));

    if (stats == NULL)
        return OCTL_EXIT_ERROR;
    for (size_t i = 0; i < s->nlines; i++) {
        const struct octl_line *l = &s->lines[i];

        if (l->status >= 200 && l->status <= 299) {
            accepted++;
            continue;
        }
        if (l->status < 0)
            failed++;
        else
            stats[nstat++] = l->status, rejected++;
        if (listed++ < OCTL_MAX_LISTED) {
            if (l->status < 0)
                fprintf(out, "line %zu: not sent: %s\n", l->lineno, hc_strerror(l->status));
            else
                fprintf(out, "line %zu: %d %s\n", l->lineno, l->status, l->detail ? l->detail : "");
        }
    }
    if (listed > OCTL_MAX_LISTED)
        fprintf(out, "... and %zu more failing lines\n", listed - OCTL_MAX_LISTED);
    fprintf(out, "submitted %zu, accepted %zu, rejected %zu", s->nlines, accepted, rejected);
    if (nstat > 0) {
        qsort(stats, nstat, sizeof(*stats), octl_cmp_int);
        fputs(" (by status:", out);
        for (size_t i = 0; i < nstat;) {
            size_t j = i;

            while (j < nstat && stats[j] == stats[i])
                j++;
            fprintf(out, "%s %d x%zu", i ? "," : "", stats[i], j - i);
            i = j;
        }
        fputc(')', out);
    }
    fprintf(out, ", failed %zu\n", failed);
    free(stats);
    return failed ? OCTL_EXIT_ERROR : rejected ? OCTL_EXIT_PARTIAL : OCTL_EXIT_OK;
}

static int octl_cmd_submit(struct octl *o)
{
    struct octl_submit s = { .o = o, .lock = PTHREAD_MUTEX_INITIALIZER };
    const char *file, *api = o->api ? o->api : getenv("ORDERCTL_API");
    char prefix[1024];
    pthread_t *tids = NULL;
    size_t nthreads = 0;
    FILE *in;
    int rc = OCTL_EXIT_ERROR, err;

    if (o->seen & ~(OPT_API | OPT_API_KEY | OPT_API_KEY_FILE | OPT_CONCURRENCY | OPT_IDEMPOTENCY))
        return octl_usage("an option given does not apply to '%s'", "submit");
    if (o->nargs != 2)
        return octl_usage("%s: one FILE (or - for standard input) needed", "submit");
    if (o->api_key && o->api_key_file)
        return octl_usage("%s: --api-key and --api-key-file exclude each other", "submit");
    if (api == NULL)
        api = OCTL_DEFAULT_API;
    err = hc_parse_url(api, s.host, sizeof(s.host), s.port, sizeof(s.port), prefix, sizeof(prefix));
    if (err == -EPROTONOSUPPORT)
        return octl_usage("--api %s: only http:// is supported (put a TLS-terminating proxy in front)", api);
    if (err < 0)
        return octl_usage("--api %s: not an http://HOST[:PORT][/PATH] URL", api);
    if (octl_api_key(o, &s.auth) < 0)
        return OCTL_EXIT_ERROR;
    if (asprintf(&s.path, "%s/orders", prefix) < 0) {
        s.path = NULL;
        goto out;
    }
    file = o->args[1];
    in = strcmp(file, "-") == 0 ? stdin : fopen(file, "re");
    if (in == NULL) {
        fprintf(stderr, "orderctl: cannot open %s: %s\n", file, strerror(errno));
        goto out;
    }
    err = octl_read_lines(in, &s.lines, &s.nlines);
    if (in != stdin)
        fclose(in);
    if (err < 0) {
        fprintf(stderr, "orderctl: reading %s: %s\n", file, strerror(-err));
        goto out;
    }
    if (s.nlines == 0) {
        printf("submitted 0, accepted 0, rejected 0, failed 0\n");
        rc = OCTL_EXIT_OK;
        goto out;
    }
    nthreads = (size_t)o->concurrency < s.nlines ? (size_t)o->concurrency : s.nlines;
    if ((tids = calloc(nthreads, sizeof(*tids))) == NULL)
        goto out;
    for (size_t i = 0; i < nthreads; i++)
        if ((err = pthread_create(&tids[i], NULL, octl_submit_worker, &s)) != 0) {
            fprintf(stderr, "orderctl: cannot start a thread: %s\n", strerror(err));
            /* the threads already started still do the whole file */
            nthreads = i;
            break;
        }
    for (size_t i = 0; i < nthreads; i++)
        pthread_join(tids[i], NULL);
    if (nthreads == 0)
        goto out;
    fprintf(stderr, "submitted %zu/%zu\n", s.done, s.nlines);
    rc = octl_submit_report(&s, stdout);
out:
    for (size_t i = 0; i < s.nlines; i++) {
        free(s.lines[i].text);
        free(s.lines[i].detail);
    }
    free(s.lines);
    free(tids);
    free(s.path);
    free(s.auth);
    return rc;
}

/* ---- command line ----------------------------------------------------- */

static int octl_number(const char *opt, const char *arg, long min, long max, long *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(arg, &end, 10);
    if (errno != 0 || end == arg || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "orderctl: %s wants a whole number from %ld to %ld, not '%s'\n", opt, min, max, arg);
        return -1;
    }
    *out = v;
    return 0;
}

/*
 * Parses the command line into o.
 * RETURNS: -1 to go on and run o->args; otherwise the exit status (0 after
 * --help/--version, 64 for a usage error).
 */
static int octl_parse(struct octl *o, int argc, char **argv)
{
    enum { O_JSON = 256, O_VERSION, O_TIMEOUT, O_ALL, O_ID, O_BATCH, O_LIMIT, O_API, O_API_KEY, O_API_KEY_FILE,
           O_CONCURRENCY, O_IDEMPOTENCY };
    static const struct option longopts[] = {
        { "admin", required_argument, NULL, 'a' },
        { "json", no_argument, NULL, O_JSON },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, O_VERSION },
        { "timeout", required_argument, NULL, O_TIMEOUT },
        { "all", no_argument, NULL, O_ALL },
        { "id", required_argument, NULL, O_ID },
        { "batch", required_argument, NULL, O_BATCH },
        { "limit", required_argument, NULL, O_LIMIT },
        { "yes", no_argument, NULL, 'y' },
        { "api", required_argument, NULL, O_API },
        { "api-key", required_argument, NULL, O_API_KEY },
        { "api-key-file", required_argument, NULL, O_API_KEY_FILE },
        { "concurrency", required_argument, NULL, O_CONCURRENCY },
        { "idempotency", no_argument, NULL, O_IDEMPOTENCY },
        { NULL, 0, NULL, 0 },
    };
    long v;
    int c;

    o->admin = getenv("ORDERCTL_ADMIN");
    if (o->admin == NULL || *o->admin == '\0')
        o->admin = OCTL_DEFAULT_ADMIN;
    o->timeout_ms = 30000;
    o->batch = 100;
    o->concurrency = 8;
    o->conn.fd = -1;
    optind = 0;     /* GNU: full re-initialisation (the unit tests parse many times) */
    opterr = 0;     /* our own messages, with the usage hint */
    while ((c = getopt_long(argc, argv, ":a:hy", longopts, NULL)) != -1) {
        switch (c) {
        case 'a': o->admin = optarg; break;
        case O_JSON: o->json = 1; break;
        case 'h': fputs(octl_usage_text, stdout); return OCTL_EXIT_OK;
        case O_VERSION: printf("orderctl (orderd) %s\n", PACKAGE_VERSION); return OCTL_EXIT_OK;
        case O_TIMEOUT:
            if (octl_number("--timeout", optarg, 1, 3600, &v) < 0)
                return octl_usage("%s", "bad --timeout");
            o->timeout_ms = (int)v * 1000;
            break;
        case O_ALL: o->all = 1, o->seen |= OPT_ALL; break;
        case O_ID: {
            const char **grown = realloc(o->ids, (o->nids + 1) * sizeof(*grown));

            if (grown == NULL)
                return OCTL_EXIT_ERROR;
            o->ids = grown;
            o->ids[o->nids++] = optarg;
            o->seen |= OPT_ID;
            break;
        }
        case O_BATCH:
            if (octl_number("--batch", optarg, 1, 100000, &o->batch) < 0)
                return octl_usage("%s", "bad --batch");
            o->seen |= OPT_BATCH;
            break;
        case O_LIMIT:
            if (octl_number("--limit", optarg, 1, LONG_MAX, &o->limit) < 0)
                return octl_usage("%s", "bad --limit");
            o->seen |= OPT_LIMIT;
            break;
        case 'y': o->yes = 1, o->seen |= OPT_YES; break;
        case O_API: o->api = optarg, o->seen |= OPT_API; break;
        case O_API_KEY: o->api_key = optarg, o->seen |= OPT_API_KEY; break;
        case O_API_KEY_FILE: o->api_key_file = optarg, o->seen |= OPT_API_KEY_FILE; break;
        case O_CONCURRENCY:
            if (octl_number("--concurrency", optarg, 1, 256, &o->concurrency) < 0)
                return octl_usage("%s", "bad --concurrency");
            o->seen |= OPT_CONCURRENCY;
            break;
        case O_IDEMPOTENCY: o->idempotency = 1, o->seen |= OPT_IDEMPOTENCY; break;
        case ':': return octl_usage("option '%s' needs a value", argv[optind - 1]);
        default: return octl_usage("unknown option '%s'", argv[optind - 1]);
        }
    }
    o->args = argv + optind;
    o->nargs = argc - optind;
    if (o->nargs == 0)
        return octl_usage("%s", "no command given (status, dead-letter, submit)");
    if (hc_parse_hostport(o->admin, o->ahost, sizeof(o->ahost), o->aport, sizeof(o->aport)) < 0)
        return octl_usage("admin address '%s' is not HOST:PORT", o->admin);
    return -1;
}

static int octl_run(struct octl *o)
{
    const char *cmd = o->args[0];

    if (hc_init(&o->conn, o->ahost, o->aport, o->timeout_ms) < 0)
        return OCTL_EXIT_USAGE;
    if (strcmp(cmd, "status") == 0) {
        if (o->seen)
            return octl_usage("an option given does not apply to '%s'", cmd);
        if (o->nargs > 1)
            return octl_usage("%s takes no arguments", cmd);
        return octl_cmd_status(o);
    }
    if (strcmp(cmd, "dead-letter") == 0 || strcmp(cmd, "deadletter") == 0 || strcmp(cmd, "dlq") == 0)
        return octl_cmd_dead_letter(o);
    if (strcmp(cmd, "submit") == 0)
        return octl_cmd_submit(o);
    if (strcmp(cmd, "help") == 0) {
        fputs(octl_usage_text, stdout);
        return OCTL_EXIT_OK;
    }
    return octl_usage("unknown command '%s' (status, dead-letter, submit)", cmd);
}

/* The unit tests include this file and rename main. */
#ifndef OCTL_MAIN
#define OCTL_MAIN main
#endif
int OCTL_MAIN(int argc, char **argv);

int OCTL_MAIN(int argc, char **argv)
{
    struct octl o = { 0 };
    int rc = octl_parse(&o, argc, argv);

    if (rc < 0)
        rc = octl_run(&o);
    hc_close(&o.conn);
    free(o.ids);
    if (fflush(stdout) != 0 && rc == OCTL_EXIT_OK)
        rc = OCTL_EXIT_ERROR;   /* a full disk or closed pipe must not look like success */
    return rc;
}
