/* dlq.c - the core's dead-letter area: NDJSON, one file per pipeline.
 * A line is written with one write(2) on an O_APPEND descriptor and made
 * durable with fdatasync before the caller completes the message, so a
 * dead letter is never lost and never half-written (a torn last line after
 * power loss is skipped by readers). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dlq.h"
#include "msg.h"
#include "util.h"

static pthread_mutex_t dlq_lock = PTHREAD_MUTEX_INITIALIZER;

char *od_dlq_path(const char *state_dir, const char *pipeline)
{
    char *path;

    if (asprintf(&path, "%s/deadletter/%s.ndjson", state_dir, pipeline) < 0)
        return NULL;
    return path;
}

int od_dlq_append(const char *state_dir, const char *pipeline, const char *stage,
                  const orderd_msg *m, const char *reason)
{
    char *path = od_dlq_path(state_dir, pipeline), *dir = NULL, *text = NULL;
    json_t *j = od_msg_to_json(m);
    int fd = -1, rc = 0;
    size_t len;

    if (path == NULL || j == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    json_object_set_new(j, "pipeline", json_string(pipeline));
    json_object_set_new(j, "stage", json_string(stage ? stage : ""));
    json_object_set_new(j, "reason", json_string(reason ? reason : ""));
    json_object_set_new(j, "dead_lettered_ms", json_integer(od_now_ms()));
    text = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(15));
    if (text == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    len = strlen(text);
    text[len++] = '\n';   /* replaces the terminating NUL: write() takes len, not a string */
    dir = od_dirname(path);
    if (dir == NULL || (rc = od_mkdir_p(dir, 0750)) < 0)
        goto out;
    pthread_mutex_lock(&dlq_lock);
    fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        rc = -errno;
    } else {
        ssize_t n = write(fd, text, len);
        if (n != (ssize_t)len)
            rc = n < 0 ? -errno : -EIO;
        else if (fdatasync(fd) < 0)
            rc = -errno;
        close(fd);
    }
    pthread_mutex_unlock(&dlq_lock);
out:
    free(text);
    free(dir);
    free(path);
    json_decref(j);
    return rc;
}

static int read_locked(const char *path, json_t **entries)
{
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;

    *entries = json_array();
    if (*entries == NULL) {
        if (f)
            fclose(f);
        return -ENOMEM;
    }
    if (f == NULL)
        return errno == ENOENT ? 0 : -errno;
    while ((n = getline(&line, &cap, f)) > 0) {
        json_t *e;
        if (line[n - 1] != '\n')
            break;   /* torn tail: the write never completed */
        e = json_loadb(line, (size_t)n, 0, NULL);
        if (e)
            json_array_append_new(*entries, e);
    }
    free(line);
    fclose(f);
    return 0;
}

int od_dlq_read(const char *state_dir, const char *pipeline, json_t **entries)
{
    char *path = od_dlq_path(state_dir, pipeline);
    int rc;

    if (path == NULL)
        return -ENOMEM;
    pthread_mutex_lock(&dlq_lock);
    rc = read_locked(path, entries);
    pthread_mutex_unlock(&dlq_lock);
    free(path);
    return rc;
}

int od_dlq_edit(const char *state_dir, const char *pipeline,
                int (*fn)(void *arg, size_t index, json_t *entry), void *arg)
{
    char *path = od_dlq_path(state_dir, pipeline), *tmp = NULL;
    json_t *all = NULL, *keep = NULL;
    int removed = 0, rc = 0, stop = 0;
    FILE *f = NULL;

    if (path == NULL || asprintf(&tmp, "%s.tmp", path) < 0) {
        free(path);
        return -ENOMEM;
    }
    pthread_mutex_lock(&dlq_lock);
    if ((rc = read_locked(path, &all)) < 0)
        goto out;
    keep = json_array();
    for (size_t i = 0; i < json_array_size(all); i++) {
        json_t *e = json_array_get(all, i);
        int r = stop ? 0 : fn(arg, i, e);
        if (r < 0) {
            stop = 1;
            r = 0;
        }
        if (r == 1)
            removed++;
        else
            json_array_append(keep, e);
    }
    if (removed == 0)
        goto out;
    f = fopen(tmp, "w");
    if (f == NULL) {
        rc = -errno;
        goto out;
    }
    for (size_t i = 0; i < json_array_size(keep); i++) {
        if (json_dumpf(json_array_get(keep, i), f, JSON_COMPACT | JSON_REAL_PRECISION(15)) < 0 || fputc('\n', f) == EOF) {
            rc = -EIO;
            break;
        }
    }
    if (rc == 0 && (fflush(f) != 0 || fdatasync(fileno(f)) < 0))
        rc = -errno;
    if (fclose(f) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) < 0)
        rc = -errno;
    if (rc < 0)
        unlink(tmp);
out:
    pthread_mutex_unlock(&dlq_lock);
    json_decref(all);
    json_decref(keep);
    free(tmp);
    free(path);
    return rc < 0 ? rc : removed;
}
