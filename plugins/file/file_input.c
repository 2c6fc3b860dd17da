/* file_input.c - the `file` input: one message per NDJSON line.
 *
 * Lines are read on a thread of our own and submitted in file order, but
 * workers finish them in any order.  So we keep the lines in flight in a
 * low-water mark (../common/lowmark.h) and persist only the mark: the offset
 * before which every line was acked or needed no ack.  A restart resumes
 * there and re-reads at most the lines that were in flight (at-least-once,
 * never a gap).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/deadline.h"
#include "../common/lowmark.h"
#include "file.h"

#define FI_READ_CHUNK   (64 * 1024)
#define FI_DLQ_PREFIX   1024      /* bytes of an over-long line kept in its dead letter */
#define FI_BACKOFF_MAX  50        /* ms between NOWAIT submits while the pipeline is full */
#define FI_ERR_WAIT     1000      /* ms before re-submitting after a spool error */

static const orderd_option fi_options[] = {
    { .key = "path", .type = ORDERD_T_PATH, .flags = ORDERD_OPT_REQUIRED,
      .help = "NDJSON file to read, one JSON value per line (\"-\" reads standard input)" },
    { .key = "offset_file", .type = ORDERD_T_PATH, .flags = ORDERD_OPT_STATE,
      .help = "where the read position is kept across restarts "
              "(default: file-input/<pipeline>.<stage>.offset in the state directory)" },
    { .key = "id_field", .type = ORDERD_T_STRING, .def = "id",
      .help = "top-level body field used as the message id when it is a string (else one is generated)" },
    { .key = "partition_key_field", .type = ORDERD_T_STRING,
      .help = "top-level body field used as the partition key (string or integer); none if unset" },
    { .key = "follow", .type = ORDERD_T_BOOL, .def = "false",
      .help = "keep reading lines appended to the file (like tail -F) instead of stopping at its end" },
    { .key = "poll_interval", .type = ORDERD_T_DURATION, .def = "200ms",
      .help = "with follow: how often to look for appended lines or a replaced file" },
    { .key = "commit_interval", .type = ORDERD_T_DURATION, .def = "1s",
      .help = "how often, at most, the acknowledged read position is written to offset_file" },
    { .key = "max_line", .type = ORDERD_T_SIZE, .def = "1MiB",
      .help = "longest accepted line in bytes; longer lines are dead-lettered" },
    { .key = NULL }
};

struct fi {
    orderd_inst        *inst;
    const orderd_host  *h;
    char               *path;
    char               *offset_path;     /* NULL for stdin: a pipe cannot resume */
    char               *offset_dir;
    char               *id_field;
    char               *pk_field;
    int                 follow;
    int                 is_stdin;
    int64_t             poll_ms;
    int64_t             commit_ms;
    size_t              max_line;

    pthread_t           thread;
    int                 started;
    int                 wake[2];         /* stop() writes here to end any wait at once */
    _Atomic int         stopping;        /* checked between lines: a long file ends too */

    /* Reader thread only. */
    int                 fd;
    int                 regular;         /* a regular file: can seek, stat, follow */
    dev_t               dev;
    char               *buf;
    size_t              len;             /* bytes in buf */
    size_t              cap;
    uint64_t            pos;             /* file offset of buf[0] */
    uint64_t            lineno;          /* lines before buf[0] */
    int                 skipping;        /* discarding the rest of an over-long line */

    /* Shared with ack() and commits. */
    pthread_mutex_t     mtx;
    struct lowmark      lm;              /* lines in flight; off = offset, line = lines before */
    uint64_t            ino;
    int                 persist;         /* a regular file is open: the mark means something */
    int64_t             last_commit_ms;
    int                 committed;       /* committed_* below are valid */
    uint64_t            committed_off, committed_ino;

    pthread_mutex_t     commit_mtx;      /* one writer of offset_file at a time */
};

/* ---- offset bookkeeping ---------------------------------------------- */

static int
fi_mkdir_p(const char *dir)
{
    char tmp[PATH_MAX];
    size_t n = strlen(dir);

    if (n == 0 || n >= sizeof(tmp))
        return -ENAMETOOLONG;
    memcpy(tmp, dir, n + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

/* Write offset_file the crash-safe way: temp file, fsync, rename, fsync the
 * directory, so after a power loss it holds either the old or the new mark.
 * force: commit now (stop/destroy); else only when commit_interval passed
 * and nobody else is committing (ack() calls this from workers). */
static int
fi_commit(struct fi *fi, int force)
{
    struct lowmark_pos mark;
    uint64_t off, line, ino;
    char tmp[PATH_MAX];
    char *text = NULL;
    json_t *j = NULL;
    int fd = -1, dfd = -1, rc = 0;

    if (fi->offset_path == NULL)
        return 0;
    if (force)
        pthread_mutex_lock(&fi->commit_mtx);
    else if (pthread_mutex_trylock(&fi->commit_mtx) != 0)
        return 0;

    pthread_mutex_lock(&fi->mtx);
    int64_t now = mono_ms();
    if (!force && now - fi->last_commit_ms < fi->commit_ms) {
        pthread_mutex_unlock(&fi->mtx);
        goto out;
    }
    fi->last_commit_ms = now;
    mark = lowmark_mark(&fi->lm);
    off = mark.off;
    line = mark.line;
    ino = fi->ino;
    /* Before the file is open there is no mark: never overwrite a saved one. */
    int same = !fi->persist
               || (fi->committed && fi->committed_off == off && fi->committed_ino == ino);
    pthread_mutex_unlock(&fi->mtx);
    if (same)
        goto out;

    j = json_pack("{s:s, s:I, s:I, s:I}", "path", fi->path, "inode", (json_int_t)ino,
                  "offset", (json_int_t)off, "line", (json_int_t)line);
    text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (text == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", fi->offset_path) >= sizeof(tmp)) {
        rc = -ENAMETOOLONG;
        goto out;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    rc = file_write_all(fd, text, strlen(text));
    if (rc == 0)
        rc = file_write_all(fd, "\n", 1);
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    fd = -1;
    if (rc == 0 && rename(tmp, fi->offset_path) < 0)
        rc = -errno;
    if (rc < 0) {
        unlink(tmp);
        goto out;
    }
    /* The rename itself is durable only once the directory is synced. */
    dfd = open(fi->offset_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) < 0)
        rc = -errno;
    if (dfd >= 0)
        close(dfd);
    if (rc < 0)
        goto out;

    pthread_mutex_lock(&fi->mtx);
    fi->committed = 1;
    fi->committed_off = off;
    fi->committed_ino = ino;
    pthread_mutex_unlock(&fi->mtx);
    fi->h->metric_set(fi->inst, "file_offset", (double)off);

out:
    if (rc < 0)
        fi->h->log(fi->inst, ORDERD_LOG_ERR, "cannot write offset file %s: %s",
                   fi->offset_path, strerror(-rc));
    free(text);
    json_decref(j);
    pthread_mutex_unlock(&fi->commit_mtx);
    return rc;
}

/* Forget the lines of a file that is gone (replaced or truncated): their acks
 * will be ignored, and reading restarts at offset 0 of the new content. */
static void
fi_reset(struct fi *fi, uint64_t ino, int persist)
{
    pthread_mutex_lock(&fi->mtx);
    fi->persist = persist;
    lowmark_reset(&fi->lm, (struct lowmark_pos){ .off = 0, .line = 0 });
    fi->ino = ino;
    pthread_mutex_unlock(&fi->mtx);
    fi->len = 0;
    fi->pos = 0;
    fi->lineno = 0;
    fi->skipping = 0;
}

/* A line that needs no ack (blank, dead-lettered) is behind us now.  Lines
 * are handled in file order and each one ends where the next starts, so the
 * mark is always just before the oldest line in flight. */
static void
fi_resolved(struct fi *fi, uint64_t end, uint64_t lineno)
{
    pthread_mutex_lock(&fi->mtx);
    lowmark_pass(&fi->lm, (struct lowmark_pos){ .off = end, .line = lineno });
    pthread_mutex_unlock(&fi->mtx);
}

/* A line about to be submitted.  RETURNS: 0 with *ticket set, or -ENOMEM. */
static int
fi_track(struct fi *fi, uint64_t end, uint64_t lineno, uint64_t *ticket)
{
    int rc;

    pthread_mutex_lock(&fi->mtx);
    rc = lowmark_add(&fi->lm, (struct lowmark_pos){ .off = end, .line = lineno }, ticket);
    pthread_mutex_unlock(&fi->mtx);
    return rc;
}

/* ---- reading ---------------------------------------------------------- */

/* Wait up to ms for stop(); returns 1 when stopping.  Also the place where an
 * idle reader commits the mark, since acks may have moved it meanwhile. */
static int
fi_wait(struct fi *fi, int64_t ms)
{
    struct pollfd p = { .fd = fi->wake[0], .events = POLLIN };

    if (poll(&p, 1, (int)(ms > INT_MAX ? INT_MAX : ms)) > 0)
        return 1;
    fi_commit(fi, 0);
    return 0;
}

/* How long an idle reader sleeps between commits (commit_interval 0 means
 * "on every ack", which must not turn the idle loop into a busy one). */
static int64_t
fi_idle_ms(const struct fi *fi)
{
    return fi->commit_ms > 0 ? fi->commit_ms : fi->poll_ms;
}

/* The raw line as a JSON string for a dead letter.  Bytes that are not UTF-8
 * become '?': the dead letter should show the line, not fail to exist. */
static json_t *
fi_raw_string(const char *line, size_t len)
{
    json_t *s = json_stringn(line, len);
    if (s != NULL)
        return s;
    char *copy = malloc(len + 1);
    if (copy == NULL)
        return NULL;
    for (size_t i = 0; i < len; i++)
        copy[i] = (unsigned char)line[i] < 0x80 ? line[i] : '?';
    s = json_stringn(copy, len);
    free(copy);
    return s;
}

static int
fi_dead_letter(struct fi *fi, const char *line, size_t len, const char *reason)
{
    json_t *raw = fi_raw_string(line, len);
    orderd_msg *m = raw ? fi->h->msg_new(fi->inst, raw) : NULL;

    if (m == NULL) {
        fi->h->log(fi->inst, ORDERD_LOG_ERR, "out of memory dead-lettering: %s", reason);
        return -ENOMEM;
    }
    fi->h->metric_add(fi->inst, "file_dead_letters", 1);
    int rc = fi->h->dead_letter(fi->inst, m, reason);
    if (rc < 0 && rc != -ESHUTDOWN)
        fi->h->log(fi->inst, ORDERD_LOG_ERR, "dead letter failed (%s): %s", strerror(-rc), reason);
    return rc == -ESHUTDOWN ? rc : 0;
}

static orderd_msg *
fi_build(struct fi *fi, json_t *body)
{
    orderd_msg *m = fi->h->msg_new(fi->inst, body);

    if (m == NULL)
        return NULL;
    if (json_is_object(body)) {
        json_t *id = json_object_get(body, fi->id_field);
        if (json_is_string(id) && json_string_length(id) > 0
            && fi->h->msg_set_id(m, json_string_value(id)) < 0)
            goto fail;
        json_t *pk = fi->pk_field ? json_object_get(body, fi->pk_field) : NULL;
        char num[32];
        const char *pks = NULL;
        if (json_is_string(pk)) {
            pks = json_string_value(pk);
        } else if (json_is_integer(pk)) {
            snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(pk));
            pks = num;
        }
        if (pks != NULL && fi->h->msg_set_partition_key(m, pks) < 0)
            goto fail;
    }
    return m;
fail:
    fi->h->msg_free(m);
    return NULL;
}

/* Handle one complete line, just before offset end.  RETURNS 0, or
 * -ESHUTDOWN to stop. */
static int
fi_line(struct fi *fi, const char *line, size_t len, uint64_t end, uint64_t lineno)
{
    char reason[512];
    json_error_t err;
    int64_t backoff = 1;

    if (len > 0 && line[len - 1] == '\r')
        len--;
    size_t i = 0;
    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    if (i == len) {                      /* blank: nothing to deliver */
        fi_resolved(fi, end, lineno);
        return 0;
    }
    if (len > fi->max_line) {
        snprintf(reason, sizeof(reason), "line %" PRIu64 " is %zu bytes, longer than max_line (%zu)",
                 lineno, len, fi->max_line);
        int rc = fi_dead_letter(fi, line, len < FI_DLQ_PREFIX ? len : FI_DLQ_PREFIX, reason);
        if (rc == 0)
            fi_resolved(fi, end, lineno);
        return rc == -ESHUTDOWN ? rc : 0;
    }

    for (;;) {
        json_t *body = json_loadb(line, len, JSON_DECODE_ANY, &err);
        if (body == NULL) {
            snprintf(reason, sizeof(reason), "invalid JSON at line %" PRIu64 ", column %d: %s",
                     lineno, err.column, err.text);
            int rc = fi_dead_letter(fi, line, len, reason);
            if (rc == 0)
                fi_resolved(fi, end, lineno);
            return rc == -ESHUTDOWN ? rc : 0;
        }
        orderd_msg *m = fi_build(fi, body);
        uint64_t ticket;
        if (m == NULL || fi_track(fi, end, lineno, &ticket) < 0) {
            if (m != NULL)
                fi->h->msg_free(m);
            fi->h->log(fi->inst, ORDERD_LOG_ERR, "out of memory at line %" PRIu64 "; retrying", lineno);
            if (fi_wait(fi, FI_ERR_WAIT))
                return -ESHUTDOWN;
            continue;
        }
        fi->h->msg_set_input_data(m, NULL, ticket);

        /* NOWAIT plus our own wait on the wake pipe, rather than a blocking
         * submit: stop() must return promptly even when the pipeline is full. */
        int rc = fi->h->submit(fi->inst, m, ORDERD_SUBMIT_NOWAIT);
        if (rc == 0) {
            fi->h->metric_add(fi->inst, "file_lines", 1);
            return 0;
        }
        /* Not submitted, so never acked: ours is still the newest line. */
        pthread_mutex_lock(&fi->mtx);
        lowmark_cancel(&fi->lm, ticket);
        pthread_mutex_unlock(&fi->mtx);
        if (rc == -ESHUTDOWN)
            return rc;
        if (rc == -EAGAIN) {
            if (fi_wait(fi, backoff))
                return -ESHUTDOWN;
            backoff = backoff * 2 > FI_BACKOFF_MAX ? FI_BACKOFF_MAX : backoff * 2;
            continue;
        }
        fi->h->log(fi->inst, ORDERD_LOG_WARN, "submit of line %" PRIu64 " failed: %s; retrying",
                   lineno, strerror(-rc));
        if (fi_wait(fi, FI_ERR_WAIT))
            return -ESHUTDOWN;
    }
}

/* Hand every complete line in buf to fi_line; keep the partial tail.
 * at_eof: the data will not grow (stdin closed, or a file without follow),
 * so a last line without '\n' counts too. */
static int
fi_drain(struct fi *fi, int at_eof)
{
    size_t off = 0;
    int rc = 0;

    while (off < fi->len) {
        char *nl = memchr(fi->buf + off, '\n', fi->len - off);
        size_t llen = nl ? (size_t)(nl - (fi->buf + off)) : fi->len - off;
        if (nl == NULL && !at_eof)
            break;
        if (fi->stopping) {
            rc = -ESHUTDOWN;
            break;
        }
        size_t adv = llen + (nl ? 1 : 0);
        uint64_t start = fi->pos + off, end = start + adv;
        if (fi->skipping) {
            /* The tail of a line already dead-lettered as too long. */
            fi->skipping = 0;
            fi->lineno++;
            fi_resolved(fi, end, fi->lineno);
        } else {
            rc = fi_line(fi, fi->buf + off, llen, end, fi->lineno + 1);
            if (rc < 0)
                break;
            fi->lineno++;
        }
        off += adv;
    }
    memmove(fi->buf, fi->buf + off, fi->len - off);
    fi->len -= off;
    fi->pos += off;
    if (rc < 0)
        return rc;

    /* No newline within max_line bytes: dead-letter what we have and skip
     * to the next newline, so memory stays bounded whatever the input. */
    if (fi->len > fi->max_line) {
        if (!fi->skipping) {
            char reason[256];
            snprintf(reason, sizeof(reason), "line %" PRIu64 " is longer than max_line (%zu bytes)",
                     fi->lineno + 1, fi->max_line);
            rc = fi_dead_letter(fi, fi->buf, FI_DLQ_PREFIX < fi->len ? FI_DLQ_PREFIX : fi->len, reason);
            if (rc < 0)
                return rc;
            fi->skipping = 1;
        }
        fi->pos += fi->len;
        fi->len = 0;
    }
    return 0;
}

/* Open path and find where to resume.  RETURNS 0 or negative errno. */
static int
fi_open(struct fi *fi)
{
    struct stat st;
    json_t *j = NULL;

    if (fi->is_stdin) {
        fi->fd = STDIN_FILENO;
        fi->regular = 0;
        return 0;
    }
    fi->fd = open(fi->path, O_RDONLY | O_CLOEXEC);
    if (fi->fd < 0)
        return -errno;
    if (fstat(fi->fd, &st) < 0) {
        int rc = -errno;
        close(fi->fd);
        fi->fd = -1;
        return rc;
    }
    fi->regular = S_ISREG(st.st_mode);
    fi->dev = st.st_dev;
    fi_reset(fi, (uint64_t)st.st_ino, fi->regular);
    if (!fi->regular || fi->offset_path == NULL)
        return 0;

    json_error_t err;
    j = json_load_file(fi->offset_path, 0, &err);
    if (j == NULL) {
        if (access(fi->offset_path, F_OK) == 0)
            fi->h->log(fi->inst, ORDERD_LOG_WARN, "ignoring unreadable offset file %s: %s",
                       fi->offset_path, err.text);
        return 0;
    }
    json_int_t ino = json_integer_value(json_object_get(j, "inode"));
    json_int_t off = json_integer_value(json_object_get(j, "offset"));
    json_int_t line = json_integer_value(json_object_get(j, "line"));
    json_decref(j);
    if ((uint64_t)ino != (uint64_t)st.st_ino || off < 0 || off > st.st_size || line < 0) {
        fi->h->log(fi->inst, ORDERD_LOG_WARN,
                   "%s was replaced or truncated since offset %" JSON_INTEGER_FORMAT
                   " was saved; reading it from the start", fi->path, off);
        return 0;
    }
    if (lseek(fi->fd, (off_t)off, SEEK_SET) < 0)
        return -errno;
    pthread_mutex_lock(&fi->mtx);
    lowmark_reset(&fi->lm, (struct lowmark_pos){ .off = (uint64_t)off, .line = (uint64_t)line });
    fi->committed = 1;
    fi->committed_off = (uint64_t)off;
    fi->committed_ino = (uint64_t)ino;
    pthread_mutex_unlock(&fi->mtx);
    fi->pos = (uint64_t)off;
    fi->lineno = (uint64_t)line;
    fi->h->log(fi->inst, ORDERD_LOG_INFO, "resuming %s at line %" JSON_INTEGER_FORMAT
               ", offset %" JSON_INTEGER_FORMAT, fi->path, line + 1, off);
    fi->h->metric_set(fi->inst, "file_offset", (double)off);
    return 0;
}

/* Follow mode at end of file: has the file been rotated or truncated? */
static void
fi_check_replaced(struct fi *fi)
{
    struct stat st;

    if (stat(fi->path, &st) < 0)
        return;                 /* mid-rotation: keep the old one until a new one exists */
    pthread_mutex_lock(&fi->mtx);
    uint64_t ino = fi->ino;
    pthread_mutex_unlock(&fi->mtx);
    if (st.st_ino != ino || st.st_dev != fi->dev) {
        int nfd = open(fi->path, O_RDONLY | O_CLOEXEC);
        if (nfd < 0)
            return;
        if (fstat(nfd, &st) < 0) {
            close(nfd);
            return;
        }
        fi->h->log(fi->inst, ORDERD_LOG_WARN, "%s was replaced; reading the new file from the start",
                   fi->path);
        close(fi->fd);
        fi->fd = nfd;
        fi->dev = st.st_dev;
        fi_reset(fi, (uint64_t)st.st_ino, 1);
    } else if ((uint64_t)st.st_size < fi->pos + fi->len) {
        fi->h->log(fi->inst, ORDERD_LOG_WARN, "%s was truncated; reading it from the start", fi->path);
        if (lseek(fi->fd, 0, SEEK_SET) == 0)
            fi_reset(fi, ino, 1);
    }
}

static void *
fi_run(void *arg)
{
    struct fi *fi = arg;

    while (fi->fd < 0) {        /* follow: waiting for the file to appear */
        if (fi_wait(fi, fi->poll_ms))
            return NULL;
        int rc = fi_open(fi);
        if (rc < 0 && rc != -ENOENT) {
            fi->h->log(fi->inst, ORDERD_LOG_ERR, "cannot open %s: %s", fi->path, strerror(-rc));
            return NULL;
        }
    }

    while (!fi->stopping) {
        if (!fi->regular) {
            /* A pipe or terminal may block: wait for data and stop() together. */
            struct pollfd p[2] = { { .fd = fi->wake[0], .events = POLLIN },
                                   { .fd = fi->fd, .events = POLLIN } };
            int n = poll(p, 2, (int)fi_idle_ms(fi));
            if (n > 0 && p[0].revents)
                break;
            if (n <= 0) {
                fi_commit(fi, 0);
                continue;
            }
        }
        if (fi->cap - fi->len < FI_READ_CHUNK) {
            char *nb = realloc(fi->buf, fi->len + FI_READ_CHUNK);
            if (nb == NULL) {
                fi->h->log(fi->inst, ORDERD_LOG_ERR, "out of memory reading %s", fi->path);
                if (fi_wait(fi, FI_ERR_WAIT))
                    break;
                continue;
            }
            fi->buf = nb;
            fi->cap = fi->len + FI_READ_CHUNK;
        }
        ssize_t n = read(fi->fd, fi->buf + fi->len, fi->cap - fi->len);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            fi->h->log(fi->inst, ORDERD_LOG_ERR, "read %s: %s", fi->path, strerror(errno));
            if (fi_wait(fi, FI_ERR_WAIT))
                break;
            continue;
        }
        fi->len += (size_t)n;
        int at_eof = n == 0 && !(fi->follow && fi->regular);
        if (fi_drain(fi, at_eof) < 0)
            break;
        if (n > 0)
            continue;
        if (fi->follow && fi->regular) {
            if (fi_wait(fi, fi->poll_ms))
                break;
            fi_check_replaced(fi);
            continue;
        }
        /* End of input and not following: stay idle, committing as acks arrive. */
        fi->h->log(fi->inst, ORDERD_LOG_INFO, "end of %s after line %" PRIu64,
                   fi->is_stdin ? "standard input" : fi->path, fi->lineno);
        while (!fi_wait(fi, fi_idle_ms(fi)))
            ;
        break;
    }
    return NULL;
}

/* ---- stage callbacks --------------------------------------------------- */

static void fi_destroy(void *state);

static int
fi_create(orderd_inst *inst, const orderd_host *h, const json_t *conf, void **state)
{
    struct fi *fi = calloc(1, sizeof(*fi));
    int rc = -ENOMEM;

    if (fi == NULL)
        return -ENOMEM;
    fi->inst = inst;
    fi->h = h;
    fi->fd = -1;
    fi->wake[0] = fi->wake[1] = -1;
    pthread_mutex_init(&fi->mtx, NULL);
    pthread_mutex_init(&fi->commit_mtx, NULL);

    const char *path = json_string_value(json_object_get(conf, "path"));
    const char *offp = json_string_value(json_object_get(conf, "offset_file"));
    const char *pk = json_string_value(json_object_get(conf, "partition_key_field"));
    const char *idf = json_string_value(json_object_get(conf, "id_field"));
    json_int_t max_line = json_integer_value(json_object_get(conf, "max_line"));

    if (path == NULL || *path == '\0') {
        h->log(inst, ORDERD_LOG_ERR, "path is required");
        rc = -EINVAL;
        goto fail;
    }
    /* The core resolves relative paths, so "-" may arrive as "<dir>/-". */
    size_t plen = strlen(path);
    fi->is_stdin = strcmp(path, "-") == 0 || (plen >= 2 && strcmp(path + plen - 2, "/-") == 0);
    fi->follow = json_is_true(json_object_get(conf, "follow"));
    fi->poll_ms = json_integer_value(json_object_get(conf, "poll_interval"));
    fi->commit_ms = json_integer_value(json_object_get(conf, "commit_interval"));
    if (fi->poll_ms < 1)
        fi->poll_ms = 1;
    if (fi->commit_ms < 0)
        fi->commit_ms = 0;
    if (max_line <= 0) {
        h->log(inst, ORDERD_LOG_ERR, "max_line must be positive");
        rc = -EINVAL;
        goto fail;
    }
    fi->max_line = (size_t)max_line;

    fi->path = strdup(fi->is_stdin ? "-" : path);
    fi->id_field = strdup(idf ? idf : "id");
    fi->pk_field = pk && *pk ? strdup(pk) : NULL;
    if (fi->path == NULL || fi->id_field == NULL || (pk && *pk && fi->pk_field == NULL))
        goto fail;

    if (!fi->is_stdin) {
        if (offp != NULL) {
            fi->offset_path = strdup(offp);
        } else {
            const char *sd = h->state_dir();
            if (asprintf(&fi->offset_path, "%s/file-input/%s.%s.offset", sd ? sd : ".",
                         h->pipeline_name(inst), h->stage_name(inst)) < 0)
                fi->offset_path = NULL;
        }
        if (fi->offset_path == NULL)
            goto fail;
        fi->offset_dir = strdup(fi->offset_path);
        if (fi->offset_dir == NULL)
            goto fail;
        char *slash = strrchr(fi->offset_dir, '/');
        if (slash == fi->offset_dir)
            slash[1] = '\0';
        else if (slash != NULL)
            *slash = '\0';
        else
            strcpy(fi->offset_dir, ".");
    }
    if (pipe2(fi->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
        rc = -errno;
        goto fail;
    }
    *state = fi;
    return 0;

fail:
    if (rc == -ENOMEM)
        h->log(inst, ORDERD_LOG_ERR, "out of memory");
    fi_destroy(fi);
    return rc;
}

static int
fi_start(void *state)
{
    struct fi *fi = state;
    int rc;

    if (fi->offset_dir != NULL && (rc = fi_mkdir_p(fi->offset_dir)) < 0) {
        fi->h->log(fi->inst, ORDERD_LOG_ERR, "cannot create %s: %s", fi->offset_dir, strerror(-rc));
        return rc;
    }
    rc = fi_open(fi);
    if (rc == -ENOENT && fi->follow) {
        fi->h->log(fi->inst, ORDERD_LOG_INFO, "%s does not exist yet; waiting for it", fi->path);
    } else if (rc < 0) {
        fi->h->log(fi->inst, ORDERD_LOG_ERR, "cannot open %s: %s", fi->path, strerror(-rc));
        return rc;
    }
    rc = -pthread_create(&fi->thread, NULL, fi_run, fi);
    if (rc < 0) {
        fi->h->log(fi->inst, ORDERD_LOG_ERR, "cannot start reader thread: %s", strerror(-rc));
        return rc;
    }
    fi->started = 1;
    return 0;
}

static void
fi_stop(void *state)
{
    struct fi *fi = state;

    if (fi->started) {
        /* Level-triggered: the byte stays, so every later wait returns too. */
        fi->stopping = 1;
        ssize_t w = write(fi->wake[1], "x", 1);
        (void)w;
        pthread_join(fi->thread, NULL);
        fi->started = 0;
    }
    fi_commit(fi, 1);
}

static void
fi_ack(void *state, orderd_msg *m, orderd_outcome outcome, const char *reason)
{
    struct fi *fi = state;
    uint64_t ticket = 0;

    fi->h->msg_input_data(m, &ticket);
    /* Without SF_REDELIVERS / SF_DEADLETTERS the core redelivers and
     * dead-letters itself, so every ack means "done with this line". */
    if (outcome != ORDERD_OK)
        fi->h->log(fi->inst, ORDERD_LOG_DEBUG, "ack %d for message %s: %s",
                   (int)outcome, fi->h->msg_id(m), reason ? reason : "");

    pthread_mutex_lock(&fi->mtx);
    /* A line of a file since replaced is no longer in flight: ignored. */
    lowmark_ack(&fi->lm, ticket);
    int due = mono_ms() - fi->last_commit_ms >= fi->commit_ms;
    pthread_mutex_unlock(&fi->mtx);
    if (due)
        fi_commit(fi, 0);
}

static void
fi_destroy(void *state)
{
    struct fi *fi = state;

    if (fi == NULL)
        return;
    if (fi->started)
        fi_stop(fi);
    else if (fi->path != NULL)
        fi_commit(fi, 1);        /* acks that came after stop() */
    if (fi->fd >= 0 && !fi->is_stdin)
        close(fi->fd);
    if (fi->wake[0] >= 0)
        close(fi->wake[0]);
    if (fi->wake[1] >= 0)
        close(fi->wake[1]);
    pthread_mutex_destroy(&fi->mtx);
    pthread_mutex_destroy(&fi->commit_mtx);
    lowmark_free(&fi->lm);
    free(fi->buf);
    free(fi->path);
    free(fi->offset_path);
    free(fi->offset_dir);
    free(fi->id_field);
    free(fi->pk_field);
    free(fi);
}

const orderd_stage file_input_stage = ORDERD_STAGE(
    .kind = ORDERD_INPUT,
    .description = "read NDJSON lines from a file or standard input, resuming after restarts",
    .options = fi_options,
    .create = fi_create,
    .start = fi_start,
    .stop = fi_stop,
    .ack = fi_ack,
    .destroy = fi_destroy);
