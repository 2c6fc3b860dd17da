/* api.c - the admin JSON API orderctl speaks (see orderctl(8)):
 *   GET    /api/status
 *   GET    /api/deadletter
 *   GET    /api/deadletter/{pipeline}?offset=N&limit=M
 *   GET    /api/deadletter/{pipeline}/{index}
 *   POST   /api/deadletter/{pipeline}/replay   {"limit":N} | {"ids":[...]}
 *   DELETE /api/deadletter/{pipeline}[?id=X]
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "api.h"
#include "dlq.h"
#include "pipe.h"

#include <pthread.h>

/* A copy, swapped on reload while requests may be running. */
static pthread_mutex_t dir_lock = PTHREAD_MUTEX_INITIALIZER;
static char state_dir_copy[4096];
static int (*api_ready)(void *);

static int answer(int *status, char **resp, int code, json_t *body)
{
    *status = code;
    *resp = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(15));
    json_decref(body);
    return *resp ? 0 : -ENOMEM;
}

static int problem(int *status, char **resp, const char **ctype, int code, const char *title,
                   const char *detail)
{
    *ctype = "application/problem+json";
    return answer(status, resp, code, json_pack("{s:s s:s s:i s:s}", "type", "about:blank",
                                                "title", title, "status", code, "detail", detail));
}

static long query_long(const char *query, const char *key, long def)
{
    size_t klen = strlen(key);

    for (const char *p = query; p && *p; ) {
        if (strncmp(p, key, klen) == 0 && p[klen] == '=')
            return strtol(p + klen + 1, NULL, 10);
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return def;
}

static char *query_str(const char *query, const char *key)
{
    size_t klen = strlen(key);

    for (const char *p = query; p && *p; ) {
        if (strncmp(p, key, klen) == 0 && p[klen] == '=') {
            const char *v = p + klen + 1, *end = strchr(v, '&');
            size_t n = end ? (size_t)(end - v) : strlen(v);
            char *out = malloc(n + 1), *o = out;
            if (out == NULL)
                return NULL;
            for (size_t i = 0; i < n; i++) {   /* percent-decoding */
                if (v[i] == '%' && i + 2 < n) {
                    char hex[3] = { v[i + 1], v[i + 2], 0 };
                    *o++ = (char)strtol(hex, NULL, 16);
                    i += 2;
                } else {
                    *o++ = v[i] == '+' ? ' ' : v[i];
                }
            }
            *o = '\0';
            return out;
        }
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return NULL;
}

static int known_pipeline(const char *name, json_t *status)
{
    size_t i;
    json_t *p;

    json_array_foreach(status, i, p)
        if (strcmp(json_string_value(json_object_get(p, "name")), name) == 0)
            return 1;
    return 0;
}

static json_t *entry_view(size_t index, const json_t *e)
{
    json_t *v = json_deep_copy(e);
    json_object_set_new(v, "index", json_integer((json_int_t)index));
    return v;
}

struct replay_ctx {
    const char *pipeline;
    long        limit;
    json_t     *ids;       /* array of strings, or NULL */
    long        replayed, failed;
    int         full;
};

static int replay_one(void *arg, size_t index, json_t *entry)
{
    struct replay_ctx *c = arg;
    const char *id = json_string_value(json_object_get(entry, "id"));
    int rc;

    (void)index;
    if (c->ids) {
        size_t i;
        json_t *want;
        int match = 0;
        json_array_foreach(c->ids, i, want)
            if (id && json_is_string(want) && strcmp(json_string_value(want), id) == 0)
                match = 1;
        if (!match)
            return 0;
    } else if (c->replayed + c->failed >= c->limit) {
        return -1;
    }
    rc = od_pipe_replay(c->pipeline, entry);
    if (rc == 0) {
        c->replayed++;
        return 1;
    }
    if (rc == -EAGAIN || rc == -ENOSPC) {   /* full: stop here, try again later */
        c->full = 1;
        return -1;
    }
    c->failed++;
    return 0;
}

struct purge_ctx {
    const char *id;
};

static int purge_one(void *arg, size_t index, json_t *entry)
{
    struct purge_ctx *c = arg;
    const char *id = json_string_value(json_object_get(entry, "id"));

    (void)index;
    return c->id == NULL || (id && strcmp(id, c->id) == 0);
}

static int dead_letters(const char *method, const char *rest, const char *query, const char *body,
                        int *status, char **resp, const char **ctype)
{
    char api_state_dir[sizeof(state_dir_copy)];
    json_t *pipes = od_pipes_status(), *entries = NULL, *out;
    char pipeline[128] = "", tail[128] = "";
    int rc;

    pthread_mutex_lock(&dir_lock);
    memcpy(api_state_dir, state_dir_copy, sizeof(api_state_dir));
    pthread_mutex_unlock(&dir_lock);

    if (*rest == '\0' || strcmp(rest, "/") == 0) {   /* counts per pipeline */
        size_t i;
        json_t *p, *list = json_array();
        json_array_foreach(pipes, i, p)
            json_array_append_new(list, json_pack("{s:O s:O}", "pipeline", json_object_get(p, "name"),
                                                  "count", json_object_get(p, "dead_letters")));
        json_decref(pipes);
        return answer(status, resp, 200, json_pack("{s:o}", "pipelines", list));
    }
    sscanf(rest, "/%127[^/]/%127s", pipeline, tail);
    if (!known_pipeline(pipeline, pipes)) {
        json_decref(pipes);
        return problem(status, resp, ctype, 404, "Not Found", "no such pipeline");
    }
    json_decref(pipes);

    if (strcmp(method, "GET") == 0) {
        if ((rc = od_dlq_read(api_state_dir, pipeline, &entries)) < 0)
            return problem(status, resp, ctype, 500, "Internal Server Error", strerror(-rc));
        if (tail[0]) {
            char *end;
            long idx = strtol(tail, &end, 10);
            json_t *found = NULL;
            if (*end == '\0' && idx >= 0 && (size_t)idx < json_array_size(entries)) {
                found = entry_view((size_t)idx, json_array_get(entries, (size_t)idx));
            } else {
                for (size_t i = 0; i < json_array_size(entries) && !found; i++) {
                    const char *id = json_string_value(json_object_get(json_array_get(entries, i), "id"));
                    if (id && strcmp(id, tail) == 0)
                        found = entry_view(i, json_array_get(entries, i));
                }
            }
            json_decref(entries);
            if (found == NULL)
                return problem(status, resp, ctype, 404, "Not Found", "no such dead letter");
            return answer(status, resp, 200, found);
        }
        long offset = query_long(query, "offset", 0), limit = query_long(query, "limit", 100);
        json_t *page = json_array();
        for (size_t i = offset > 0 ? (size_t)offset : 0;
             i < json_array_size(entries) && (long)json_array_size(page) < limit; i++)
            json_array_append_new(page, entry_view(i, json_array_get(entries, i)));
        out = json_pack("{s:s s:I s:o}", "pipeline", pipeline,
                        "total", (json_int_t)json_array_size(entries), "entries", page);
        json_decref(entries);
        return answer(status, resp, 200, out);
    }
    if (strcmp(method, "POST") == 0 && strcmp(tail, "replay") == 0) {
        json_t *req = body ? json_loads(body, 0, NULL) : json_object();
        struct replay_ctx c = { .pipeline = pipeline, .limit = 100 };
        if (req == NULL || !json_is_object(req)) {
            json_decref(req);
            return problem(status, resp, ctype, 400, "Bad Request", "body must be a JSON object");
        }
        if (json_is_integer(json_object_get(req, "limit")))
            c.limit = (long)json_integer_value(json_object_get(req, "limit"));
        if (json_is_array(json_object_get(req, "ids")))
            c.ids = json_object_get(req, "ids");
        rc = od_dlq_edit(api_state_dir, pipeline, replay_one, &c);
        json_decref(req);
        if (rc < 0)
            return problem(status, resp, ctype, 500, "Internal Server Error", strerror(-rc));
        od_dlq_read(api_state_dir, pipeline, &entries);
        out = json_pack("{s:I s:I s:I s:b}", "replayed", (json_int_t)c.replayed,
                        "failed", (json_int_t)c.failed, "remaining", (json_int_t)json_array_size(entries),
                        "busy", c.full);
        json_decref(entries);
        return answer(status, resp, 200, out);
    }
    if (strcmp(method, "DELETE") == 0 && tail[0] == '\0') {
        struct purge_ctx c = { .id = query_str(query, "id") };
        rc = od_dlq_edit(api_state_dir, pipeline, purge_one, &c);
        free((char *)c.id);
        if (rc < 0)
            return problem(status, resp, ctype, 500, "Internal Server Error", strerror(-rc));
        od_dlq_read(api_state_dir, pipeline, &entries);
        out = json_pack("{s:i s:I}", "purged", rc, "remaining", (json_int_t)json_array_size(entries));
        json_decref(entries);
        return answer(status, resp, 200, out);
    }
    return problem(status, resp, ctype, 405, "Method Not Allowed",
                   "use GET, POST .../replay or DELETE");
}

static int api_handler(void *arg, const char *method, const char *path, const char *query,
                       const char *body, size_t body_len, int *status, char **resp,
                       const char **ctype)
{
    (void)arg;
    (void)body_len;
    if (strcmp(path, "/api/status") == 0) {
        if (strcmp(method, "GET") != 0)
            return problem(status, resp, ctype, 405, "Method Not Allowed", "use GET");
        return answer(status, resp, 200,
                      json_pack("{s:s s:b s:o}", "version", PACKAGE_VERSION,
                                "ready", api_ready ? api_ready(NULL) : 1, "pipelines", od_pipes_status()));
    }
    if (strncmp(path, "/api/deadletter", 15) == 0)
        return dead_letters(method, path + 15, query, body, status, resp, ctype);
    return problem(status, resp, ctype, 404, "Not Found", "unknown API path");
}

int od_api_register(struct od_admin *a, const char *state_dir, int (*ready)(void *))
{
    od_api_set_state_dir(state_dir);
    api_ready = ready;
    return od_admin_route(a, "/api", api_handler, NULL);
}

void od_api_set_state_dir(const char *state_dir)
{
    pthread_mutex_lock(&dir_lock);
    snprintf(state_dir_copy, sizeof(state_dir_copy), "%s", state_dir);
    pthread_mutex_unlock(&dir_lock);
}
