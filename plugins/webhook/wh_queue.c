/* wh_queue.c - one subscriber's durable queue.
 *
 * <name>.queue  append-only log, one record a line: "<enqueue_ms> <event json>\n"
 *               (compact JSON never holds a raw newline, so a line is a record).
 * <name>.offset the log offset up to which everything was delivered or
 *               dead-lettered: "%020llu\n", rewritten in place after every
 *               commit, fdatasync()ed at most WH_OFFSET_SYNC_MS later (at
 *               once on compaction), so a power cut can at worst re-send
 *               the last deliveries.
 *
 * A crash can leave a torn last line (no newline): open() cuts it, since it
 * was never acknowledged to the pipeline.  When the whole log is delivered
 * it is truncated to zero and then the offset reset; a crash between the
 * two leaves offset > size, which open() reads as "all delivered". */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "webhook.h"

#define WH_READ_CHUNK (64 * 1024)

static char *
wh_path2(const char *dir, const char *name, const char *ext)
{
    size_t n = strlen(dir) + strlen(name) + strlen(ext) + 2;
    char *p = malloc(n);

    if (p != NULL)
        snprintf(p, n, "%s/%s%s", dir, name, ext);
    return p;
}

static int
wh_write_all(int fd, const char *p, size_t len, off_t at)
{
    while (len > 0) {
        ssize_t w = at >= 0 ? pwrite(fd, p, len, at) : write(fd, p, len);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        len -= (size_t) w;
        if (at >= 0)
            at += w;
    }
    return 0;
}

int
wh_queue_sync_offset(struct wh_queue *q)
{
    if (!q->off_dirty)
        return 0;
    if (fdatasync(q->offfd) != 0)
        return -errno;
    q->off_dirty = 0;
    q->off_sync_ms = wh_now_ms();
    return 0;
}

/* Write the offset; fdatasync it when force or when it was last synced
 * WH_OFFSET_SYNC_MS ago.  It never stays dirty while the subscriber is idle:
 * catching up with the log compacts it, which forces the sync. */
static int
wh_offset_store(struct wh_queue *q, uint64_t off, int force)
{
    char line[32];
    int n = snprintf(line, sizeof(line), "%020llu\n", (unsigned long long) off);
    int rc = wh_write_all(q->offfd, line, (size_t) n, 0);

    if (rc < 0)
        return rc;
    q->off_dirty = 1;
    if (force || wh_now_ms() - q->off_sync_ms >= WH_OFFSET_SYNC_MS)
        rc = wh_queue_sync_offset(q);
    return rc;
}

/* Make buf hold [from, from + want) of the log, or as much as exists. */
static ssize_t
wh_read_at(struct wh_queue *q, uint64_t from, size_t want)
{
    size_t got = 0;

    if (want + 1 > q->cap) {
        char *nb = realloc(q->buf, want + 1);

        if (nb == NULL)
            return -ENOMEM;
        q->buf = nb;
        q->cap = want + 1;
    }
    while (got < want) {
        ssize_t r = pread(q->fd, q->buf + got, want - got, (off_t) (from + got));

        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            break;
        got += (size_t) r;
    }
    return (ssize_t) got;
}

/* Count whole records in [from, size) and find where the last one ends. */
static int
wh_scan(struct wh_queue *q, uint64_t from, uint64_t size, uint64_t *good, uint64_t *count)
{
    uint64_t pos = from;

    *good = from;
    *count = 0;
    while (pos < size) {
        size_t want = size - pos > WH_READ_CHUNK ? WH_READ_CHUNK : (size_t) (size - pos);
        ssize_t got = wh_read_at(q, pos, want);
        size_t i;

        if (got <= 0)
            return got < 0 ? (int) got : -EIO;
        for (i = 0; i < (size_t) got; i++) {
            if (q->buf[i] == '\n') {
                (*count)++;
                *good = pos + i + 1;
            }
        }
        pos += (uint64_t) got;
    }
    return 0;
}

int
wh_queue_open(struct wh_queue *q, const char *dir, const char *name)
{
    char line[32];
    struct stat st;
    ssize_t n;
    uint64_t good, count;
    int rc, dfd;

    memset(q, 0, sizeof(*q));
    q->fd = q->offfd = -1;
    q->path = wh_path2(dir, name, ".queue");
    q->offpath = wh_path2(dir, name, ".offset");
    if (q->path == NULL || q->offpath == NULL) {
        rc = -ENOMEM;
        goto fail;
    }
    q->fd = open(q->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    q->offfd = open(q->offpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (q->fd < 0 || q->offfd < 0 || fstat(q->fd, &st) != 0) {
        rc = -errno;
        goto fail;
    }

    /* The files may be new: make their directory entries durable too, or
     * an fdatasync()ed append could vanish with its file after a crash. */
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        rc = -errno;
        if (dfd >= 0)
            close(dfd);
        goto fail;
    }
    close(dfd);

    n = pread(q->offfd, line, sizeof(line) - 1, 0);
    if (n < 0) {
        rc = -errno;
        goto fail;
    }
    line[n] = '\0';
    q->done = strtoull(line, NULL, 10);
    if (q->done > (uint64_t) st.st_size)
        q->done = (uint64_t) st.st_size;

    /* The offset always sits on a record boundary, but a stale one after a
     * crash mid-compaction is handled above; now cut any torn tail. */
    rc = wh_scan(q, q->done, (uint64_t) st.st_size, &good, &count);
    if (rc < 0)
        goto fail;
    if (good < (uint64_t) st.st_size) {
        if (ftruncate(q->fd, (off_t) good) != 0 || fdatasync(q->fd) != 0) {
            rc = -errno;
            goto fail;
        }
    }
    q->end = good;
    q->pending = count;
    if (q->done == q->end && q->end > 0) {
        /* Fully delivered before the restart: start a fresh file. */
        rc = wh_queue_commit(q, q->end, 0);
        if (rc < 0)
            goto fail;
    }
    return 0;

fail:
    wh_queue_close(q);
    return rc;
}

void
wh_queue_close(struct wh_queue *q)
{
    if (q->offfd >= 0 && wh_queue_sync_offset(q) != 0) {
        /* Only costs re-sending the last deliveries after a power cut. */
    }
    if (q->fd >= 0)
        close(q->fd);
    if (q->offfd >= 0)
        close(q->offfd);
    free(q->path);
    free(q->offpath);
    free(q->buf);
    memset(q, 0, sizeof(*q));
    q->fd = q->offfd = -1;
}

int
wh_queue_append(struct wh_queue *q, const char *data, size_t len, size_t nrec)
{
    int rc = wh_write_all(q->fd, data, len, (off_t) q->end);

    if (rc == 0 && fdatasync(q->fd) != 0)
        rc = -errno;
    if (rc < 0) {
        /* Never leave half a batch behind: the pipeline will retry it all. */
        if (ftruncate(q->fd, (off_t) q->end) != 0) {
            /* The torn tail is cut at the next open() anyway. */
        }
        return rc;
    }
    q->end += len;
    q->pending += nrec;
    return 0;
}

int
wh_queue_read(struct wh_queue *q, uint64_t end, struct wh_rec *out, int max, size_t max_bytes)
{
    /* Start with what the last batches needed, not a re-read per batch. */
    size_t want = q->cap > WH_READ_CHUNK ? q->cap - 1 : WH_READ_CHUNK;
    int n = 0;

    for (;;) {
        uint64_t avail = end - q->done;
        size_t pos = 0, body = 2;
        int full = 0;           /* stopped by max or max_bytes, not by the buffer */
        ssize_t got;

        if (avail == 0)
            return 0;
        if (want > avail)
            want = (size_t) avail;
        got = wh_read_at(q, q->done, want);
        if (got < 0)
            return (int) got;

        n = 0;
        while (n < max && pos < (size_t) got) {
            char *nl = memchr(q->buf + pos, '\n', (size_t) got - pos);
            char *sp, *endp;
            size_t len;

            if (nl == NULL)
                break;
            sp = memchr(q->buf + pos, ' ', (size_t) (nl - (q->buf + pos)));
            if (sp == NULL)
                return -EBADMSG;
            len = (size_t) (nl - (sp + 1));
            if (n > 0 && body + len + 1 > max_bytes) {
                full = 1;
                break;
            }
            out[n].enq_ms = strtoll(q->buf + pos, &endp, 10);
            if (endp != sp)
                return -EBADMSG;
            out[n].ev = sp + 1;
            out[n].len = len;
            out[n].end = q->done + (uint64_t) (nl - q->buf) + 1;
            body += len + 1;
            n++;
            pos = (size_t) (nl - q->buf) + 1;
        }
        if (n == max)
            full = 1;
        /* A batch that the buffer cut short is read again, bigger: the
         * reader's buffer grows to what the largest batch needs and stays. */
        if (n > 0 && (full || want == avail || want >= max_bytes + (size_t) max * 32))
            return n;
        if (n == 0 && want == avail)
            return -EBADMSG;   /* a durable region without a newline */
        want *= 2;
    }
}

int
wh_queue_commit(struct wh_queue *q, uint64_t off, size_t nrec)
{
    int force = 0;

    q->done = off;
    q->pending = q->pending >= nrec ? q->pending - nrec : 0;
    if (q->done == q->end) {
        /* Compaction: everything delivered, so the log can start over.  The
         * zero offset is synced at once: a stale offset left beyond the
         * regrown log's end would read as "all delivered" after a crash. */
        if (ftruncate(q->fd, 0) != 0 || fdatasync(q->fd) != 0)
            return -errno;
        q->done = q->end = 0;
        q->pending = 0;
        force = 1;
    }
    return wh_offset_store(q, q->done, force);
}
