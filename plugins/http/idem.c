/* idem.c - durable Idempotency-Key records for the http input (see idem.h). */
#include "idem.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

struct idem_rec {
    char            *key;
    uint8_t          rhash[16];
    int64_t          t_ms;        /* when the response was stored (wall clock: survives restarts) */
    int              status;      /* 0 while the first request is in flight */
    char            *body;
    char            *location;
    struct idem_rec *hnext;       /* bucket chain */
    struct idem_rec *prev, *next; /* age order, oldest first, for expiry */
};

struct http_idem {
    pthread_mutex_t   lock;
    struct idem_rec **buckets;
    size_t            nbuckets;   /* power of two */
    size_t            count;
    struct idem_rec  *oldest, *newest;
    int64_t           ttl_ms;
    int               fd;         /* append-only record file */
};

void http_hash128(uint8_t out[16], const void *const *bufs, const size_t *lens, size_t n)
{
    /* FNV-1a 128: offset basis and prime 2^88 + 0x13b from the FNV spec. */
    unsigned __int128 h = ((unsigned __int128)0x6c62272e07bb0142ULL << 64) | 0x62b821756295c58dULL;
    const unsigned __int128 prime = ((unsigned __int128)1 << 88) | 0x13b;

    for (size_t i = 0; i < n; i++) {
        const unsigned char *p = bufs[i];
        for (size_t j = 0; j < lens[i]; j++) {
            h ^= p[j];
            h *= prime;
        }
        h *= prime;   /* the separator: xor with 0 is a no-op */
    }
    for (int i = 0; i < 16; i++)
        out[i] = (uint8_t)(h >> (120 - 8 * i));
}

static int64_t idem_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t idem_slot_hash(const char *key)
{
    uint64_t h = 0xcbf29ce484222325ULL;

    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        h ^= *p;
        h *= 0x100000001b3ULL;
    }
    return h;
}

static void idem_hex(char out[33], const uint8_t in[16])
{
    static const char digits[] = "0123456789abcdef";

    for (int i = 0; i < 16; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[32] = '\0';
}

static int idem_unhex(uint8_t out[16], const char *in)
{
    if (in == NULL || strlen(in) != 32)
        return -1;
    for (int i = 0; i < 32; i++) {
        char c = in[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0)
            return -1;
        if (i % 2 == 0)
            out[i / 2] = (uint8_t)(v << 4);
        else
            out[i / 2] |= (uint8_t)v;
    }
    return 0;
}

static void idem_rec_free(struct idem_rec *r)
{
    free(r->key);
    free(r->body);
    free(r->location);
    free(r);
}

static struct idem_rec **idem_slot(struct http_idem *s, const char *key)
{
    struct idem_rec **pp = &s->buckets[idem_slot_hash(key) & (s->nbuckets - 1)];

    while (*pp != NULL && strcmp((*pp)->key, key) != 0)
        pp = &(*pp)->hnext;
    return pp;
}

static void idem_age_unlink(struct http_idem *s, struct idem_rec *r)
{
    if (r->prev) r->prev->next = r->next; else s->oldest = r->next;
    if (r->next) r->next->prev = r->prev; else s->newest = r->prev;
    r->prev = r->next = NULL;
}

static void idem_age_append(struct http_idem *s, struct idem_rec *r)
{
    r->prev = s->newest;
    r->next = NULL;
    if (s->newest) s->newest->next = r; else s->oldest = r;
    s->newest = r;
}

static void idem_remove(struct http_idem *s, struct idem_rec *r)
{
    struct idem_rec **pp = idem_slot(s, r->key);

    if (*pp == r)
        *pp = r->hnext;
    idem_age_unlink(s, r);
    s->count--;
    idem_rec_free(r);
}

/* Grow at load factor 1 so chains stay short; failure to grow only costs speed. */
static void idem_grow(struct http_idem *s)
{
    size_t n = s->nbuckets * 2;
    struct idem_rec **nb = calloc(n, sizeof *nb);

    if (nb == NULL)
        return;
    for (size_t i = 0; i < s->nbuckets; i++) {
        struct idem_rec *r = s->buckets[i], *next;
        for (; r != NULL; r = next) {
            next = r->hnext;
            size_t j = idem_slot_hash(r->key) & (n - 1);
            r->hnext = nb[j];
            nb[j] = r;
        }
    }
    free(s->buckets);
    s->buckets = nb;
    s->nbuckets = n;
}

/* Inserts r (whose key must be absent). */
static void idem_insert(struct http_idem *s, struct idem_rec *r)
{
    if (s->count >= s->nbuckets)
        idem_grow(s);
    struct idem_rec **pp = idem_slot(s, r->key);
    r->hnext = NULL;
    *pp = r;
    idem_age_append(s, r);
    s->count++;
}

/* Drop completed records past the TTL.  In-flight placeholders are never
 * expired: their request still owns them. */
static void idem_expire(struct http_idem *s, int64_t now)
{
    struct idem_rec *r = s->oldest, *next;

    for (; r != NULL && r->t_ms + s->ttl_ms <= now; r = next) {
        next = r->next;
        if (r->status != 0)
            idem_remove(s, r);
    }
}

static char *idem_format(const struct idem_rec *r)
{
    char hex[33];
    json_t *o;
    char *line;

    idem_hex(hex, r->rhash);
    o = json_pack("{s:s, s:s, s:I, s:i, s:s, s:s?}", "key", r->key, "hash", hex,
                  "time", (json_int_t)r->t_ms, "status", r->status,
                  "body", r->body ? r->body : "", "location", r->location);
    if (o == NULL)
        return NULL;
    line = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return line;
}

static int idem_write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int idem_write_line(int fd, const struct idem_rec *r)
{
    char *line = idem_format(r);
    int rc;

    if (line == NULL)
        return -ENOMEM;
    size_t len = strlen(line);
    line[len] = '\n';   /* json_dumps' terminator becomes the record separator */
    rc = idem_write_all(fd, line, len + 1);
    free(line);
    return rc;
}

static int idem_mkdir_parent(const char *path)
{
    char *dir = strdup(path);
    int rc = 0;

    if (dir == NULL)
        return -ENOMEM;
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
            rc = -errno;
            break;
        }
        *p = '/';
    }
    free(dir);
    return rc;
}

static void idem_load_line(struct http_idem *s, const char *line, size_t len, int64_t now,
                           size_t *loaded, size_t *skipped)
{
    json_t *o = json_loadb(line, len, 0, NULL);
    const char *key = NULL, *hash = NULL, *body = NULL, *location = NULL;
    json_int_t t = 0;
    int status = 0;
    struct idem_rec *r = NULL;

    if (o == NULL || json_unpack(o, "{s:s, s:s, s:I, s:i, s:s, s?s}", "key", &key, "hash", &hash,
                                 "time", &t, "status", &status, "body", &body,
                                 "location", &location) != 0 || status <= 0) {
        (*skipped)++;   /* a torn last line after a crash, or garbage */
        goto out;
    }
    if (t + s->ttl_ms <= now)
        goto out;
    r = calloc(1, sizeof *r);
    if (r == NULL || idem_unhex(r->rhash, hash) != 0)
        goto bad;
    r->key = strdup(key);
    r->body = strdup(body);
    r->location = location ? strdup(location) : NULL;
    if (r->key == NULL || r->body == NULL || (location && r->location == NULL))
        goto bad;
    r->t_ms = t;
    r->status = status;
    struct idem_rec **pp = idem_slot(s, key);
    if (*pp != NULL)
        idem_remove(s, *pp);   /* the later line wins */
    idem_insert(s, r);
    (*loaded)++;
    goto out;
bad:
    (*skipped)++;
    if (r != NULL)
        idem_rec_free(r);
out:
    json_decref(o);
}

static int idem_load(struct http_idem *s, const char *path, size_t *loaded, size_t *skipped,
                     char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int64_t now = idem_now_ms();

    if (f == NULL) {
        if (errno == ENOENT)
            return 0;
        int rc = -errno;
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return rc;
    }
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] == '\n')
            n--;
        if (n > 0)
            idem_load_line(s, line, (size_t)n, now, loaded, skipped);
    }
    free(line);
    fclose(f);
    return 0;
}

/* Rewrite the file with only the live records (written to a temporary and
 * renamed, so a crash leaves either the old or the new file), then keep it
 * open for appends. */
static int idem_compact(struct http_idem *s, const char *path, char *err, size_t errlen)
{
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    int fd = -1, rc = 0;

    if (tmp == NULL)
        return -ENOMEM;
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        goto out;
    }
    for (struct idem_rec *r = s->oldest; r != NULL; r = r->next) {
        rc = idem_write_line(fd, r);
        if (rc < 0) {
            snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(-rc));
            goto out;
        }
    }
    if (fdatasync(fd) < 0 || rename(tmp, path) < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot replace %s: %s", path, strerror(errno));
        goto out;
    }
    /* Make the rename itself durable. */
    char *slash = strrchr(tmp, '/');
    if (slash != NULL && slash != tmp) {
        *slash = '\0';
        int dfd = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    close(fd);
    fd = -1;
    s->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (s->fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
    }
out:
    if (fd >= 0) {
        close(fd);
        unlink(tmp);
    }
    free(tmp);
    return rc;
}

int http_idem_open(struct http_idem **out, const char *path, int64_t ttl_ms,
                   size_t *loaded, size_t *skipped, char *err, size_t errlen)
{
    struct http_idem *s = calloc(1, sizeof *s);
    int rc;

    *loaded = *skipped = 0;
    if (s == NULL)
        return -ENOMEM;
    pthread_mutex_init(&s->lock, NULL);
    s->fd = -1;
    s->ttl_ms = ttl_ms;
    s->nbuckets = 1024;
    s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
    if (s->buckets == NULL) {
        rc = -ENOMEM;
        goto fail;
    }
    rc = idem_mkdir_parent(path);
    if (rc < 0) {
        snprintf(err, errlen, "cannot create the directory of %s: %s", path, strerror(-rc));
        goto fail;
    }
    rc = idem_load(s, path, loaded, skipped, err, errlen);
    if (rc < 0)
        goto fail;
    rc = idem_compact(s, path, err, errlen);
    if (rc < 0)
        goto fail;
    *out = s;
    return 0;
fail:
    http_idem_close(s);
    return rc;
}

int http_idem_begin(struct http_idem *s, const char *key, const uint8_t rhash[16],
                    int *status, char **body, char **location)
{
    int rc;

    pthread_mutex_lock(&s->lock);
    int64_t now = idem_now_ms();
    idem_expire(s, now);
    struct idem_rec **pp = idem_slot(s, key);
    struct idem_rec *r = *pp;
    if (r == NULL) {
        r = calloc(1, sizeof *r);
        if (r == NULL || (r->key = strdup(key)) == NULL) {
            free(r);
            rc = -ENOMEM;
            goto out;
        }
        memcpy(r->rhash, rhash, 16);
        r->t_ms = now;
        idem_insert(s, r);
        rc = HTTP_IDEM_NEW;
    } else if (memcmp(r->rhash, rhash, 16) != 0) {
        rc = HTTP_IDEM_MISMATCH;
    } else if (r->status == 0) {
        rc = HTTP_IDEM_BUSY;
    } else {
        *status = r->status;
        *body = strdup(r->body);
        *location = r->location ? strdup(r->location) : NULL;
        if (*body == NULL || (r->location && *location == NULL)) {
            free(*body);
            free(*location);
            rc = -ENOMEM;
            goto out;
        }
        rc = HTTP_IDEM_REPLAY;
    }
out:
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void http_idem_abort(struct http_idem *s, const char *key)
{
    pthread_mutex_lock(&s->lock);
    struct idem_rec *r = *idem_slot(s, key);
    if (r != NULL && r->status == 0)
        idem_remove(s, r);
    pthread_mutex_unlock(&s->lock);
}

int http_idem_commit(struct http_idem *s, const char *key, int status,
                     const char *body, const char *location)
{
    char *b = strdup(body), *l = location ? strdup(location) : NULL;
    int rc;

    pthread_mutex_lock(&s->lock);
    struct idem_rec *r = *idem_slot(s, key);
    if (r == NULL || r->status != 0 || b == NULL || (location && l == NULL)) {
        /* Out of memory: forget the key rather than leave it reserved forever. */
        if (r != NULL && r->status == 0)
            idem_remove(s, r);
        pthread_mutex_unlock(&s->lock);
        free(b);
        free(l);
        return -ENOMEM;
    }
    r->status = status;
    r->body = b;
    r->location = l;
    r->t_ms = idem_now_ms();
    idem_age_unlink(s, r);
    idem_age_append(s, r);
    /* One write() per record under the lock keeps lines whole.  No
     * fdatasync: this runs on the HTTP event thread, and a flush there would
     * stall every connection it serves.  The page cache survives a crash of
     * orderd; after a power loss the last keys may be forgotten, and a retry
     * then runs again with the same command id (derived from the key), which
     * the pipeline deduplicates, and gets the same answer. */
    rc = idem_write_line(s->fd, r);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void http_idem_close(struct http_idem *s)
{
    if (s == NULL)
        return;
    struct idem_rec *r = s->oldest, *next;
    for (; r != NULL; r = next) {
        next = r->next;
        idem_rec_free(r);
    }
    free(s->buckets);
    if (s->fd >= 0)
        close(s->fd);
    pthread_mutex_destroy(&s->lock);
    free(s);
}
