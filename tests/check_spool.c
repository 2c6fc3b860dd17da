/* check_spool.c - the durable spool against real files in a temporary
 * directory: delivery, order, group commit under concurrency, restart,
 * segment rollover and deletion, the size limit, torn tails, corruption,
 * kill -9, requeue and shutdown. */
#include "config.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "spool.h"

#define REC(len) (24 + (len))   /* on-disk size of a record: header + payload */

/* The base directory is made and removed by the parent process (an
 * unchecked fixture), so it goes away even when a forked test fails; each
 * test gets a fresh spool directory inside it. */
static char basedir[] = "/tmp/check_spool.XXXXXX";
static char spooldir[sizeof(basedir) + 32];

static void base_setup(void)
{
    if (mkdtemp(basedir) == NULL) {
        perror("mkdtemp");
        exit(EXIT_FAILURE);
    }
}

static void setup(void)
{
    static unsigned n;

    snprintf(spooldir, sizeof(spooldir), "%s/spool%u.%ld", basedir, n++, (long)getpid());
    od_log_setup(ORDERD_LOG_ERR, OD_LOG_TEXT);
}

static void rm_dir(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;
    char p[512];

    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
        if (e->d_type == DT_DIR)
            rm_dir(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(path);
}

static void base_teardown(void)
{
    rm_dir(basedir);
}

static struct od_spool *sp_open(uint64_t max_bytes, uint64_t segment_bytes, int sync)
{
    struct od_spool_opts o = {
        .dir = spooldir, .max_bytes = max_bytes, .segment_bytes = segment_bytes, .sync = sync,
    };
    struct od_spool *s = NULL;
    int rc = od_spool_open(&o, &s);

    ck_assert_msg(rc == 0, "od_spool_open: %s", strerror(-rc));
    return s;
}

/* Deterministic payload for (tag, i): 8-byte id, then a pattern. */
static size_t payload_make(unsigned char *buf, uint32_t tag, uint32_t i)
{
    size_t len = 8 + (size_t)(i * 37u % 300u);
    uint64_t id = (uint64_t)tag << 32 | i;

    memcpy(buf, &id, 8);
    for (size_t k = 8; k < len; k++)
        buf[k] = (unsigned char)(tag * 31u + i * 7u + k);
    return len;
}

static bool payload_check(const void *data, size_t len, uint32_t *tag, uint32_t *i)
{
    unsigned char want[512];
    uint64_t id;

    if (len < 8)
        return false;
    memcpy(&id, data, 8);
    *tag = (uint32_t)(id >> 32);
    *i = (uint32_t)id;
    return payload_make(want, *tag, *i) == len && memcmp(want, data, len) == 0;
}

static uint64_t sp_append(struct od_spool *s, uint32_t tag, uint32_t i)
{
    unsigned char buf[512];
    size_t len = payload_make(buf, tag, i);
    uint64_t seq = 0;
    int rc = od_spool_append(s, buf, len, &seq);

    ck_assert_msg(rc == 0, "append: %s", strerror(-rc));
    ck_assert_uint_gt(seq, 0);
    return seq;
}

/* Take the next record, check it is intact, return its index. */
static uint32_t sp_next(struct od_spool *s, uint64_t *seq)
{
    void *data = NULL;
    size_t len = 0;
    uint32_t tag, i;
    int rc = od_spool_next(s, seq, &data, &len, 0);

    ck_assert_msg(rc == 0, "next: %s", strerror(-rc));
    ck_assert_msg(payload_check(data, len, &tag, &i), "payload of seq %llu damaged",
                  (unsigned long long)*seq);
    free(data);
    return i;
}

static void sp_expect_empty(struct od_spool *s)
{
    uint64_t seq;
    void *data = NULL;
    size_t len;

    ck_assert_int_eq(od_spool_next(s, &seq, &data, &len, 0), -EAGAIN);
    ck_assert_ptr_null(data);
}

static int count_files(const char *suffix)
{
    DIR *d = opendir(spooldir);
    struct dirent *e;
    int n = 0;

    ck_assert_ptr_nonnull(d);
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name), sl = strlen(suffix);
        if (strncmp(e->d_name, "seg-", 4) == 0 && l > sl && strcmp(e->d_name + l - sl, suffix) == 0)
            n++;
    }
    closedir(d);
    return n;
}

/* count_files() once it is at most max: the spool's keeper thread deletes
 * completed segments shortly after they are dropped.  Gives up after 5 s. */
static int files_at_most(const char *suffix, int max)
{
    int n = count_files(suffix);

    for (int ms = 0; n > max && ms < 5000; ms++) {
        usleep(1000);
        n = count_files(suffix);
    }
    return n;
}

/* Path of the only (or the last) segment log. */
static void last_log(char *out, size_t n)
{
    DIR *d = opendir(spooldir);
    struct dirent *e;
    char best[256] = "";

    ck_assert_ptr_nonnull(d);
    while ((e = readdir(d)) != NULL)
        if (strncmp(e->d_name, "seg-", 4) == 0 && strstr(e->d_name, ".log") != NULL &&
            strcmp(e->d_name, best) > 0)
            snprintf(best, sizeof(best), "%s", e->d_name);
    closedir(d);
    ck_assert_str_ne(best, "");
    snprintf(out, n, "%s/%s", spooldir, best);
}

static off_t file_size(const char *path)
{
    struct stat st;

    ck_assert_int_eq(stat(path, &st), 0);
    return st.st_size;
}

/* Is the file all zero bytes from off to its end? */
static bool zero_from(const char *path, off_t off)
{
    unsigned char buf[65536];
    int fd = open(path, O_RDONLY);
    ssize_t n;
    bool zero = true;

    ck_assert_int_ge(fd, 0);
    while (zero && (n = pread(fd, buf, sizeof(buf), off)) > 0) {
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != 0)
                zero = false;
        off += n;
    }
    close(fd);
    return zero;
}

START_TEST(test_roundtrip)
{
    struct od_spool *s = sp_open(0, 0, 1);
    struct od_spool_stats st;
    uint64_t seq, got;
    void *data;
    size_t len;

    ck_assert_int_eq(od_spool_append(s, "hello", 5, &seq), 0);
    ck_assert_uint_gt(seq, 0);
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.records, 1);
    ck_assert_uint_eq(st.bytes, REC(5));
    ck_assert_int_eq(od_spool_next(s, &got, &data, &len, 0), 0);
    ck_assert_uint_eq(got, seq);
    ck_assert_uint_eq(len, 5);
    ck_assert_mem_eq(data, "hello", 5);
    free(data);
    sp_expect_empty(s);

    /* An empty payload is a record too. */
    ck_assert_int_eq(od_spool_append(s, "", 0, &seq), 0);
    ck_assert_int_eq(od_spool_next(s, &got, &data, &len, 0), 0);
    ck_assert_uint_eq(got, seq);
    ck_assert_uint_eq(len, 0);
    free(data);

    od_spool_complete(s, got);
    od_spool_complete(s, got);      /* idempotent */
    od_spool_complete(s, got - 1);
    od_spool_complete(s, 999999);   /* unknown seq: ignored */
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.records, 0);
    sp_expect_empty(s);
    od_spool_close(s);
}
END_TEST

START_TEST(test_order)
{
    struct od_spool *s = sp_open(0, 0, 0);
    uint64_t seqs[200], seq;

    for (uint32_t i = 0; i < 200; i++) {
        seqs[i] = sp_append(s, 1, i);
        if (i > 0)
            ck_assert_uint_gt(seqs[i], seqs[i - 1]);
    }
    for (uint32_t i = 0; i < 200; i++) {
        ck_assert_uint_eq(sp_next(s, &seq), i);
        ck_assert_uint_eq(seq, seqs[i]);
    }
    sp_expect_empty(s);
    od_spool_close(s);
}
END_TEST

#define CT_THREADS 8
#define CT_PER     2000

struct ct_ctx {
    struct od_spool *s;
    uint32_t tag;
    uint64_t seqs[CT_PER];
    int failed;
};

static void *ct_appender(void *arg)
{
    struct ct_ctx *c = arg;
    unsigned char buf[512];

    for (uint32_t i = 0; i < CT_PER; i++) {
        size_t len = payload_make(buf, c->tag, i);
        if (od_spool_append(c->s, buf, len, &c->seqs[i]) != 0)
            c->failed++;
    }
    return NULL;
}

struct ct_reader {
    struct od_spool *s;
    uint8_t seen[CT_THREADS][CT_PER];
    int total, dups, bad;
};

static void *ct_consumer(void *arg)
{
    struct ct_reader *r = arg;

    while (r->total < CT_THREADS * CT_PER) {
        uint64_t seq;
        void *data;
        size_t len;
        uint32_t tag, i;
        int rc = od_spool_next(r->s, &seq, &data, &len, 200);

        if (rc == -EAGAIN)
            continue;
        if (rc != 0)
            break;
        if (!payload_check(data, len, &tag, &i) || tag >= CT_THREADS || i >= CT_PER) {
            r->bad++;
        } else {
            if (r->seen[tag][i]++)
                r->dups++;
            r->total++;
        }
        free(data);
        od_spool_complete(r->s, seq);
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

START_TEST(test_concurrency)
{
    struct od_spool *s = sp_open(0, 256 * 1024, 1);
    static struct ct_ctx c[CT_THREADS];
    static struct ct_reader r;
    static uint64_t all[CT_THREADS * CT_PER];
    pthread_t t[CT_THREADS], rt;
    struct od_spool_stats st;

    memset(&r, 0, sizeof(r));
    r.s = s;
    ck_assert_int_eq(pthread_create(&rt, NULL, ct_consumer, &r), 0);
    for (int k = 0; k < CT_THREADS; k++) {
        c[k].s = s;
        c[k].tag = (uint32_t)k;
        c[k].failed = 0;
        ck_assert_int_eq(pthread_create(&t[k], NULL, ct_appender, &c[k]), 0);
    }
    for (int k = 0; k < CT_THREADS; k++)
        pthread_join(t[k], NULL);
    pthread_join(rt, NULL);

    for (int k = 0; k < CT_THREADS; k++) {
        ck_assert_int_eq(c[k].failed, 0);
        memcpy(all + k * CT_PER, c[k].seqs, sizeof(c[k].seqs));
    }
    qsort(all, CT_THREADS * CT_PER, sizeof(all[0]), cmp_u64);
    for (int k = 1; k < CT_THREADS * CT_PER; k++)
        ck_assert_msg(all[k] != all[k - 1], "seq %llu given twice", (unsigned long long)all[k]);

    ck_assert_int_eq(r.bad, 0);
    ck_assert_int_eq(r.dups, 0);
    ck_assert_int_eq(r.total, CT_THREADS * CT_PER);
    for (int k = 0; k < CT_THREADS; k++)
        for (int i = 0; i < CT_PER; i++)
            ck_assert_msg(r.seen[k][i] == 1, "record %d/%d delivered %d times", k, i, r.seen[k][i]);
    sp_expect_empty(s);
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.records, 0);
    ck_assert_uint_eq(st.segments, 1);   /* everything completed: only the active one is left */
    od_spool_close(s);
}
END_TEST

START_TEST(test_restart)
{
    struct od_spool *s = sp_open(0, 0, 1);
    struct od_spool_stats st;
    uint64_t seq, seqs[10];

    for (uint32_t i = 0; i < 10; i++)
        seqs[i] = sp_append(s, 2, i);
    for (uint32_t i = 0; i < 10; i++) {
        ck_assert_uint_eq(sp_next(s, &seq), i);
        if (i % 2)
            od_spool_complete(s, seq);
    }
    od_spool_close(s);

    s = sp_open(0, 0, 1);
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.records, 5);
    for (uint32_t i = 0; i < 10; i += 2) {
        ck_assert_uint_eq(sp_next(s, &seq), i);
        ck_assert_uint_eq(seq, seqs[i]);
    }
    sp_expect_empty(s);
    /* New records never reuse a seq. */
    seq = sp_append(s, 2, 10);
    ck_assert_uint_gt(seq, seqs[9]);
    od_spool_close(s);

    s = sp_open(0, 0, 1);
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.records, 6);
    od_spool_close(s);
}
END_TEST

START_TEST(test_segments)
{
    struct od_spool *s = sp_open(0, 1024, 1);
    struct od_spool_stats st;
    uint64_t seq, first = 0;
    int segs;

    for (uint32_t i = 0; i < 100; i++)
        sp_append(s, 3, 100 * 37);   /* 8 + 100 bytes each: 132 on disk */
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.bytes, 100 * REC(108));
    ck_assert_uint_ge(st.segments, 100 * REC(108) / 1024);
    segs = (int)st.segments;
    ck_assert_int_eq(count_files(".log"), segs);

    /* Completing all but the very first record frees nothing in segment 1. */
    for (int i = 0; i < 100; i++) {
        void *data;
        size_t len;
        ck_assert_int_eq(od_spool_next(s, &seq, &data, &len, 0), 0);
        free(data);
        if (i == 0)
            first = seq;
        else
            od_spool_complete(s, seq);
    }
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.segments, 2);          /* the first one and the active one */
    ck_assert_int_eq(files_at_most(".log", 2), 2);
    ck_assert_uint_eq(st.records, 1);
    od_spool_complete(s, first);
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.segments, 1);
    ck_assert_int_eq(files_at_most(".log", 1), 1);
    ck_assert_int_le(files_at_most(".ack", 1), 1);
    ck_assert_uint_lt(st.bytes, 1024 + REC(108));
    od_spool_close(s);

    s = sp_open(0, 1024, 1);
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.records, 0);
    sp_expect_empty(s);
    od_spool_close(s);
}
END_TEST

/* Completions in batches: a run that crosses segments and needs more than
 * one ack write (over 64 records), the same seq twice and an unknown one; a reopened spool hands
 * out exactly the records that were not completed. */
START_TEST(test_complete_many)
{
    struct od_spool *s = sp_open(0, 16384, 1);
    struct od_spool_stats st;
    uint64_t seq, all[200], done[200], kept[200];
    size_t ndone = 0, nkept = 0;

    for (uint32_t i = 0; i < 200; i++)
        all[i] = sp_append(s, 9, 100 * 37);     /* 132 bytes on disk: 124 per segment */
    for (uint32_t i = 0; i < 200; i++) {
        ck_assert_uint_eq(sp_next(s, &seq), 100 * 37);
        ck_assert_uint_eq(seq, all[i]);
        /* Keep one record in every 9th, the rest complete in one call. */
        if (i % 9 == 4)
            kept[nkept++] = seq;
        else
            done[ndone++] = seq;
    }
    done[ndone++] = done[3];                     /* already completed: ignored */
    done[ndone++] = 999999;                      /* unknown: ignored */
    od_spool_complete_many(s, done, ndone);
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.records, nkept);
    od_spool_close(s);

    s = sp_open(0, 16384, 1);
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.records, nkept);
    for (size_t i = 0; i < nkept; i++) {
        ck_assert_uint_eq(sp_next(s, &seq), 100 * 37);
        ck_assert_uint_eq(seq, kept[i]);
    }
    sp_expect_empty(s);
    od_spool_complete_many(s, kept, nkept);
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.records, 0);
    ck_assert_int_eq(files_at_most(".log", 1), 1);
    od_spool_close(s);

    s = sp_open(0, 16384, 1);
    sp_expect_empty(s);
    od_spool_close(s);
}
END_TEST

/* Records are read through a read-ahead window: one pread for many records,
 * never holding bytes past the last record indexed, so a record appended
 * after a window was filled is still read intact.  Requeued records and
 * records larger than the window read the same. */
START_TEST(test_read_ahead)
{
    struct od_spool *s = sp_open(0, 1 << 20, 1);
    uint64_t seq, first = 0, big_seq;
    static unsigned char big[100000];
    void *data;
    size_t len;

    /* one at a time: each window ends where the only new record ends */
    for (uint32_t i = 0; i < 200; i++) {
        seq = sp_append(s, 3, i);
        ck_assert_uint_eq(sp_next(s, &seq), i);
        od_spool_complete(s, seq);
    }
    /* two ahead: the window holds the next record, then the one after it
     * is appended and must not come from the window */
    sp_append(s, 4, 0);
    sp_append(s, 4, 1);
    for (uint32_t i = 0; i < 100; i++) {
        ck_assert_uint_eq(sp_next(s, &seq), i);
        od_spool_complete(s, seq);
        sp_append(s, 4, i + 2);
    }
    ck_assert_uint_eq(sp_next(s, &seq), 100);
    od_spool_complete(s, seq);
    ck_assert_uint_eq(sp_next(s, &seq), 101);
    od_spool_complete(s, seq);
    sp_expect_empty(s);

    /* a backlog of 600 (several windows), the first ten requeued and read again */
    for (uint32_t i = 0; i < 600; i++) {
        seq = sp_append(s, 5, i);
        if (i == 0)
            first = seq;
    }
    for (uint32_t i = 0; i < 600; i++) {
        ck_assert_uint_eq(sp_next(s, &seq), i);
        ck_assert_uint_eq(seq, first + i);
        if (i >= 10)
            od_spool_complete(s, seq);
    }
    for (uint32_t i = 0; i < 10; i++)
        od_spool_requeue(s, first + i);
    for (uint32_t i = 0; i < 10; i++) {
        ck_assert_uint_eq(sp_next(s, &seq), i);
        od_spool_complete(s, seq);
    }

    /* larger than the window */
    for (size_t k = 0; k < sizeof(big); k++)
        big[k] = (unsigned char)(k * 7u + 1u);
    ck_assert_int_eq(od_spool_append(s, big, sizeof(big), &big_seq), 0);
    sp_append(s, 6, 1);
    ck_assert_int_eq(od_spool_next(s, &seq, &data, &len, 0), 0);
    ck_assert_uint_eq(seq, big_seq);
    ck_assert_uint_eq(len, sizeof(big));
    ck_assert(memcmp(data, big, len) == 0);
    free(data);
    od_spool_complete(s, seq);
    ck_assert_uint_eq(sp_next(s, &seq), 1);
    od_spool_complete(s, seq);
    sp_expect_empty(s);
    od_spool_close(s);
}
END_TEST

START_TEST(test_enospc)
{
    /* Two records per segment, room for exactly ten. */
    struct od_spool *s = sp_open(10 * REC(100), 2 * REC(100), 1);
    unsigned char buf[100] = { 0 };
    uint64_t seq;
    int n = 0;

    while (od_spool_append(s, buf, sizeof(buf), &seq) == 0)
        n++;
    ck_assert_int_eq(n, 10);
    ck_assert_int_eq(od_spool_append(s, buf, sizeof(buf), &seq), -ENOSPC);

    /* Completing the first two segments gives back four records' room. */
    for (int i = 0; i < 4; i++) {
        void *data;
        size_t len;
        ck_assert_int_eq(od_spool_next(s, &seq, &data, &len, 0), 0);
        free(data);
        od_spool_complete(s, seq);
    }
    n = 0;
    while (od_spool_append(s, buf, sizeof(buf), &seq) == 0)
        n++;
    ck_assert_int_eq(n, 4);
    od_spool_close(s);
}
END_TEST

START_TEST(test_enospc_active)
{
    /* Default 64 MiB segments: the whole limit lies in the active segment,
     * which must still be reclaimed once everything in it is completed. */
    struct od_spool *s = sp_open(10 * REC(100), 0, 1);
    unsigned char buf[100] = { 0 };
    struct od_spool_stats st;
    uint64_t seq;
    void *data;
    size_t len;
    int n = 0;

    while (od_spool_append(s, buf, sizeof(buf), &seq) == 0)
        n++;
    ck_assert_int_eq(n, 10);
    ck_assert_int_eq(od_spool_append(s, buf, sizeof(buf), &seq), -ENOSPC);
    while (od_spool_next(s, &seq, &data, &len, 0) == 0) {
        free(data);
        od_spool_complete(s, seq);
    }
    n = 0;
    while (od_spool_append(s, buf, sizeof(buf), &seq) == 0)
        n++;
    ck_assert_int_eq(n, 10);
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.bytes, 10 * REC(100));
    ck_assert_uint_eq(st.records, 10);
    ck_assert_uint_eq(st.segments, 1);
    ck_assert_int_eq(files_at_most(".log", 1), 1);
    od_spool_close(s);
}
END_TEST

/* Five records; returns the on-disk offset of each. */
static void five(struct od_spool *s, off_t *offs, off_t *total)
{
    unsigned char buf[512];
    off_t off = 0;

    for (uint32_t i = 0; i < 5; i++) {
        offs[i] = off;
        sp_append(s, 4, i);
        off += REC(payload_make(buf, 4, i));
    }
    *total = off;
}

START_TEST(test_torn_tail)
{
    static const char garbage[] = "\x4f\x44\x53\x50ODSP torn garbage after the last record";
    struct od_spool *s = sp_open(0, 0, 1);
    struct od_spool_stats st;
    char path[512];
    off_t offs[5], total;
    uint64_t seq, seq5;
    int fd;

    five(s, offs, &total);
    od_spool_close(s);
    last_log(path, sizeof(path));
    /* A sync spool may have zero-filled past the records. */
    ck_assert_int_ge(file_size(path), total);
    ck_assert(zero_from(path, total));
    /* Cut the last record in half, then add junk that even starts with the magic. */
    ck_assert_int_eq(truncate(path, total - 10), 0);
    fd = open(path, O_WRONLY | O_APPEND);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, garbage, sizeof(garbage)), (ssize_t)sizeof(garbage));
    close(fd);

    s = sp_open(0, 0, 1);
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.records, 4);
    ck_assert_uint_eq(st.bytes, (uint64_t)offs[4]);
    /* the torn tail is gone (cut, then perhaps zero-filled again) */
    ck_assert_int_ge(file_size(path), offs[4]);
    ck_assert(zero_from(path, offs[4]));
    for (uint32_t i = 0; i < 4; i++)
        ck_assert_uint_eq(sp_next(s, &seq), i);
    sp_expect_empty(s);
    seq5 = sp_append(s, 4, 5);
    ck_assert_uint_eq(sp_next(s, &seq), 5);
    ck_assert_uint_eq(seq, seq5);
    od_spool_close(s);

    s = sp_open(0, 0, 1);
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.records, 5);
    for (uint32_t i = 0; i < 6; i++)
        if (i != 4)
            ck_assert_uint_eq(sp_next(s, &seq), i);
    sp_expect_empty(s);
    od_spool_close(s);
}
END_TEST

/* A sync spool zero-fills its active segment ahead of the records, so that
 * fdatasync overwrites allocated blocks; on reopen the zeros are the end of
 * the records, not damage, in the active and in sealed segments, and new
 * records written over them survive the next reopen. */
START_TEST(test_zero_fill)
{
    struct od_spool *s = sp_open(0, 64 * 1024, 1);
    struct od_spool_stats st;
    char path[512];
    uint64_t seq;
    off_t size = 0;

    for (uint32_t i = 0; i < 1000; i++)     /* several 64 KiB segments */
        sp_append(s, 5, i);
    last_log(path, sizeof(path));
    for (int k = 0; k < 500 && (size = file_size(path)) < 64 * 1024; k++)
        usleep(10 * 1000);
    ck_assert_int_eq(size, 64 * 1024);     /* zero-filled to the segment size */
    od_spool_close(s);

    s = sp_open(0, 64 * 1024, 1);
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.records, 1000);
    ck_assert_uint_eq(count_files(".log"), st.segments);
    ck_assert_uint_gt(st.segments, 2);
    for (uint32_t i = 0; i < 500; i++)
        ck_assert_uint_eq(sp_next(s, &seq), i);
    for (uint32_t i = 1000; i < 1100; i++)  /* over the zeros */
        sp_append(s, 5, i);
    od_spool_close(s);

    s = sp_open(0, 64 * 1024, 1);
    for (uint32_t i = 0; i < 1100; i++)     /* none was completed */
        ck_assert_uint_eq(sp_next(s, &seq), i);
    sp_expect_empty(s);
    od_spool_close(s);
}
END_TEST

START_TEST(test_corrupt_middle)
{
    struct od_spool *s = sp_open(0, 0, 0);
    struct od_spool_stats st;
    char path[512];
    off_t offs[5], total;
    uint64_t seq;
    unsigned char b;
    int fd;

    five(s, offs, &total);
    od_spool_close(s);
    last_log(path, sizeof(path));
    fd = open(path, O_RDWR);
    ck_assert_int_ge(fd, 0);
    /* One flipped payload byte in record 2, one flipped length bit in record 0. */
    ck_assert_int_eq(pread(fd, &b, 1, offs[2] + 24 + 3), 1);
    b ^= 0x20;
    ck_assert_int_eq(pwrite(fd, &b, 1, offs[2] + 24 + 3), 1);
    ck_assert_int_eq(pread(fd, &b, 1, offs[0] + 4), 1);
    b ^= 0x01;
    ck_assert_int_eq(pwrite(fd, &b, 1, offs[0] + 4), 1);
    close(fd);

    s = sp_open(0, 0, 0);
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.records, 3);
    ck_assert_uint_eq(sp_next(s, &seq), 1);
    ck_assert_uint_eq(sp_next(s, &seq), 3);
    ck_assert_uint_eq(sp_next(s, &seq), 4);
    sp_expect_empty(s);
    /* Damage in the middle is skipped, not truncated. */
    ck_assert_int_eq(file_size(path), total);
    sp_append(s, 4, 7);
    ck_assert_uint_eq(sp_next(s, &seq), 7);
    od_spool_close(s);
}
END_TEST

/* Without fsync a completion can outlive its record (the ack reached the
 * disk, the torn record did not): its seq must not be reused, or the ack
 * would silently complete a new record after the next restart. */
START_TEST(test_ack_outlives_record)
{
    struct od_spool *s = sp_open(0, 0, 0);
    struct od_spool_stats st;
    char path[512];
    off_t offs[5], total;
    uint64_t seq, fresh;

    five(s, offs, &total);
    for (uint32_t i = 0; i < 5; i++) {
        ck_assert_uint_eq(sp_next(s, &seq), i);
        if (i == 4)
            od_spool_complete(s, seq);
    }
    od_spool_close(s);
    last_log(path, sizeof(path));
    ck_assert_int_eq(truncate(path, offs[4] + 5), 0);

    s = sp_open(0, 0, 0);
    fresh = sp_append(s, 4, 8);
    ck_assert_uint_gt(fresh, seq);
    od_spool_close(s);

    s = sp_open(0, 0, 0);
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.records, 5);
    for (uint32_t i = 0; i < 4; i++)
        ck_assert_uint_eq(sp_next(s, &seq), i);
    ck_assert_uint_eq(sp_next(s, &seq), 8);
    ck_assert_uint_eq(seq, fresh);
    od_spool_close(s);
}
END_TEST

#define K9_THREADS 4
#define K9_MAX     20000

struct k9_ack {
    uint64_t seq;
    uint32_t tag, i;
};

struct k9_child {
    struct od_spool *s;
    int fd;
    uint32_t tag;
};

static void *k9_thread(void *arg)
{
    struct k9_child *c = arg;
    unsigned char buf[512];

    for (uint32_t i = 0; i < K9_MAX; i++) {
        struct k9_ack a = { .tag = c->tag, .i = i };
        size_t len = payload_make(buf, c->tag, i);

        if (od_spool_append(c->s, buf, len, &a.seq) != 0)
            _exit(3);
        /* Under PIPE_BUF: each ack arrives whole. */
        if (write(c->fd, &a, sizeof(a)) != (ssize_t)sizeof(a))
            _exit(4);
    }
    return NULL;
}

static void k9_child_main(int fd)
{
    struct od_spool_opts o = { .dir = spooldir, .segment_bytes = 16 * 1024, .sync = 1 };
    struct k9_child c[K9_THREADS];
    pthread_t t[K9_THREADS];
    struct od_spool *s;

    if (od_spool_open(&o, &s) != 0)
        _exit(2);
    for (int k = 0; k < K9_THREADS; k++) {
        c[k] = (struct k9_child){ .s = s, .fd = fd, .tag = (uint32_t)k };
        if (pthread_create(&t[k], NULL, k9_thread, &c[k]) != 0)
            _exit(2);
    }
    for (int k = 0; k < K9_THREADS; k++)
        pthread_join(t[k], NULL);
    _exit(0);
}

static int k9_read(int fd, struct k9_ack *a)
{
    size_t got = 0;

    while (got < sizeof(*a)) {
        ssize_t n = read(fd, (char *)a + got, sizeof(*a) - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    return 0;
}

struct k9_rec {
    uint64_t seq;
    uint32_t tag, i;
};

static int k9_cmp(const void *a, const void *b)
{
    return cmp_u64(&((const struct k9_rec *)a)->seq, &((const struct k9_rec *)b)->seq);
}

START_TEST(test_kill9)
{
    static uint8_t seen[K9_THREADS][K9_MAX];
    struct k9_ack *acks = calloc(K9_THREADS * K9_MAX, sizeof(*acks));
    struct k9_rec *recs = calloc(K9_THREADS * K9_MAX, sizeof(*recs));
    size_t nacks = 0, nrecs = 0, target;
    struct od_spool *s;
    struct k9_ack a;
    int pfd[2], status;
    pid_t pid;

    ck_assert_ptr_nonnull(acks);
    ck_assert_ptr_nonnull(recs);
    ck_assert_int_eq(pipe(pfd), 0);
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    target = 200 + (size_t)rand() % 1500;
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(pfd[0]);
        k9_child_main(pfd[1]);
    }
    close(pfd[1]);
    while (k9_read(pfd[0], &a) == 0) {
        acks[nacks++] = a;
        if (nacks == target)
            kill(pid, SIGKILL);
    }
    close(pfd[0]);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                  "child ended on its own (status %d) after %zu acks", status, nacks);
    ck_assert_uint_ge(nacks, target);

    s = sp_open(0, 16 * 1024, 1);
    for (;;) {
        void *data;
        size_t len;
        uint64_t seq;
        uint32_t tag, i;
        int rc = od_spool_next(s, &seq, &data, &len, 0);

        if (rc == -EAGAIN)
            break;
        ck_assert_int_eq(rc, 0);
        ck_assert_msg(payload_check(data, len, &tag, &i) && tag < K9_THREADS && i < K9_MAX,
                      "recovered record %llu is damaged", (unsigned long long)seq);
        free(data);
        ck_assert_msg(seen[tag][i] == 0, "record %u/%u recovered twice", tag, i);
        seen[tag][i] = 1;
        recs[nrecs++] = (struct k9_rec){ .seq = seq, .tag = tag, .i = i };
    }
    qsort(recs, nrecs, sizeof(*recs), k9_cmp);
    for (size_t k = 0; k < nacks; k++) {
        struct k9_rec key = { .seq = acks[k].seq }, *r;

        r = bsearch(&key, recs, nrecs, sizeof(*recs), k9_cmp);
        ck_assert_msg(r != NULL, "acknowledged seq %llu lost (of %zu acks, %zu recovered)",
                      (unsigned long long)acks[k].seq, nacks, nrecs);
        ck_assert_uint_eq(r->tag, acks[k].tag);
        ck_assert_uint_eq(r->i, acks[k].i);
    }
    /* And the spool still works after the crash. */
    sp_append(s, 9, 1);
    od_spool_close(s);
    free(acks);
    free(recs);
}
END_TEST

START_TEST(test_requeue)
{
    struct od_spool *s = sp_open(0, 0, 1);
    uint64_t seq[4], got;

    for (uint32_t i = 1; i <= 3; i++)
        seq[i] = sp_append(s, 5, i);
    ck_assert_uint_eq(sp_next(s, &got), 1);
    ck_assert_uint_eq(sp_next(s, &got), 2);
    od_spool_requeue(s, seq[1]);
    od_spool_requeue(s, seq[1]);     /* twice: still delivered once */
    ck_assert_uint_eq(sp_next(s, &got), 1);
    ck_assert_uint_eq(got, seq[1]);
    ck_assert_uint_eq(sp_next(s, &got), 3);
    sp_expect_empty(s);

    od_spool_requeue(s, seq[3]);
    od_spool_requeue(s, seq[2]);
    ck_assert_uint_eq(sp_next(s, &got), 2);
    od_spool_requeue(s, seq[1]);
    od_spool_complete(s, seq[1]);    /* completed while waiting: not handed out again */
    ck_assert_uint_eq(sp_next(s, &got), 3);
    sp_expect_empty(s);
    od_spool_complete(s, seq[2]);
    od_spool_complete(s, seq[3]);
    od_spool_close(s);

    s = sp_open(0, 0, 1);
    sp_expect_empty(s);

    /* Many requeued in scrambled order come back lowest first, before newer ones. */
    {
        static const int order[] = { 5, 3, 7, 1, 6, 2, 4, 0 };
        uint64_t sq[9];

        for (uint32_t i = 0; i < 9; i++)
            sq[i] = sp_append(s, 5, 10 + i);
        for (uint32_t i = 0; i < 8; i++)
            ck_assert_uint_eq(sp_next(s, &got), 10 + i);
        for (int k = 0; k < 8; k++)
            od_spool_requeue(s, sq[order[k]]);
        for (uint32_t i = 0; i < 9; i++) {
            ck_assert_uint_eq(sp_next(s, &got), 10 + i);
            ck_assert_uint_eq(got, sq[i]);
        }
        sp_expect_empty(s);
    }
    od_spool_close(s);
}
END_TEST

struct waiter {
    struct od_spool *s;
    int rc;
    uint64_t seq;
};

static void *waiter_main(void *arg)
{
    struct waiter *w = arg;
    void *data = NULL;
    size_t len;

    w->rc = od_spool_next(w->s, &w->seq, &data, &len, -1);
    free(data);
    return NULL;
}

static void join_within(pthread_t t, int seconds)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += seconds;
    ck_assert_msg(pthread_timedjoin_np(t, NULL, &ts) == 0, "blocked od_spool_next was not woken");
}

START_TEST(test_wakeup)
{
    struct waiter w = { .s = sp_open(0, 0, 1), .rc = 1 };
    pthread_t t;
    uint64_t seq;

    ck_assert_int_eq(pthread_create(&t, NULL, waiter_main, &w), 0);
    usleep(50 * 1000);   /* let it block first; correctness does not depend on it */
    seq = sp_append(w.s, 6, 1);
    join_within(t, 10);
    ck_assert_int_eq(w.rc, 0);
    ck_assert_uint_eq(w.seq, seq);
    od_spool_close(w.s);
}
END_TEST

START_TEST(test_shutdown)
{
    struct waiter w = { .s = sp_open(0, 0, 1), .rc = 1 };
    pthread_t t;
    uint64_t seq;
    void *data = NULL;
    size_t len;

    /* A timed wait on an empty spool ends with -EAGAIN. */
    ck_assert_int_eq(od_spool_next(w.s, &seq, &data, &len, 30), -EAGAIN);
    ck_assert_int_eq(pthread_create(&t, NULL, waiter_main, &w), 0);
    usleep(50 * 1000);
    od_spool_shutdown(w.s);
    join_within(t, 10);
    ck_assert_int_eq(w.rc, -ESHUTDOWN);
    ck_assert_int_eq(od_spool_next(w.s, &seq, &data, &len, -1), -ESHUTDOWN);
    ck_assert_int_eq(od_spool_append(w.s, "x", 1, &seq), -ESHUTDOWN);
    od_spool_close(w.s);
}
END_TEST

/* od_spool_append_async: one thread queues many records without waiting
 * (a synchronous appender alongside); each callback comes once, after the
 * write, with the seq the call returned, and the records are read back in
 * order.  Shutdown writes what is still queued before it returns. */
#define AS_N 2000

struct as_ctx {
    pthread_mutex_t mu;
    unsigned        calls[AS_N];
    uint64_t        seq_cb[AS_N];
    int             bad_rc;
    unsigned        total;
    unsigned        slow_us;    /* each callback takes this long */
};

struct as_arg {
    struct as_ctx *c;
    uint32_t       i;
};

static void as_done(void *arg, int rc, uint64_t seq)
{
    struct as_arg *a = arg;

    pthread_mutex_lock(&a->c->mu);
    if (rc != 0)
        a->c->bad_rc++;
    a->c->calls[a->i]++;
    a->c->seq_cb[a->i] = seq;
    a->c->total++;
    pthread_mutex_unlock(&a->c->mu);
    if (a->c->slow_us != 0)
        usleep(a->c->slow_us);
    free(a);
}

static void as_queue(struct od_spool *s, struct as_ctx *c, uint32_t i, uint64_t *seq)
{
    unsigned char buf[512];
    size_t len = payload_make(buf, 7, i);
    unsigned char *copy = malloc(len);
    struct as_arg *a = malloc(sizeof(*a));
    int rc;

    ck_assert(copy != NULL && a != NULL);
    memcpy(copy, buf, len);
    *a = (struct as_arg){ .c = c, .i = i };
    rc = od_spool_append_async(s, copy, len, as_done, a, seq);
    ck_assert_msg(rc == 0, "append_async: %s", strerror(-rc));
}

static void as_queue_deferred(struct od_spool *s, struct as_ctx *c, uint32_t i, uint64_t *seq)
{
    unsigned char buf[512];
    size_t len = payload_make(buf, 9, i);
    unsigned char *copy = malloc(len);
    struct as_arg *a = malloc(sizeof(*a));

    ck_assert(copy != NULL && a != NULL);
    memcpy(copy, buf, len);
    *a = (struct as_arg){ .c = c, .i = i };
    ck_assert_int_eq(od_spool_append_deferred(s, copy, len, as_done, a, seq), 0);
}

static uint64_t sp_records(struct od_spool *s)
{
    struct od_spool_stats st;

    od_spool_stats(s, &st);
    return st.records;
}

static unsigned as_total(struct as_ctx *c)
{
    pthread_mutex_lock(&c->mu);
    unsigned t = c->total;
    pthread_mutex_unlock(&c->mu);
    return t;
}

/* Two event loops: each defers a few records, flushes, and finds every
 * callback of its own records called when the flush returns. */
struct df_loop {
    struct od_spool *s;
    struct as_ctx    c;
    uint32_t         base;
    unsigned         late;
};

static void *df_loop_main(void *arg)
{
    struct df_loop *l = arg;
    uint64_t seq;

    for (uint32_t i = 0; i < 400; i++) {
        as_queue_deferred(l->s, &l->c, l->base + i, &seq);
        if (i % 9 == 8 || i == 399) {
            od_spool_flush(l->s);
            if (as_total(&l->c) != i + 1)
                l->late++;
        }
    }
    return NULL;
}

/* od_spool_append_deferred: the writer thread leaves the records to the
 * caller's od_spool_flush, which writes them and has called every callback
 * when it returns; a shutdown still writes what nobody flushed. */
START_TEST(test_deferred_flush)
{
    struct od_spool *s = sp_open(0, 64 * 1024, 1);
    static struct as_ctx c;
    static struct df_loop loops[2];
    struct od_spool_stats st;
    uint64_t seq;
    pthread_t th[2];

    memset(&c, 0, sizeof(c));
    pthread_mutex_init(&c.mu, NULL);
    for (uint32_t i = 0; i < 50; i++)
        as_queue_deferred(s, &c, i, &seq);
    usleep(100 * 1000);
    ck_assert_uint_eq(as_total(&c), 0);          /* nobody wrote them */
    ck_assert_uint_eq(sp_records(s), 0);
    od_spool_flush(s);
    ck_assert_uint_eq(as_total(&c), 50);         /* all, before flush returned */
    ck_assert_int_eq(c.bad_rc, 0);
    ck_assert_uint_eq(sp_records(s), 50);
    od_spool_stats(s, &st);                      /* as one group, one fdatasync */
    ck_assert_uint_eq(st.commits, 1);
    ck_assert_uint_eq(st.committed, 50);
    ck_assert_uint_gt(st.sync_ns, 0);
    od_spool_flush(s);                           /* nothing queued: returns */

    for (int k = 0; k < 2; k++) {
        memset(&loops[k], 0, sizeof(loops[k]));
        pthread_mutex_init(&loops[k].c.mu, NULL);
        loops[k].s = s;
        loops[k].base = (uint32_t)k * 400;
        ck_assert_int_eq(pthread_create(&th[k], NULL, df_loop_main, &loops[k]), 0);
    }
    for (int k = 0; k < 2; k++) {
        pthread_join(th[k], NULL);
        ck_assert_uint_eq(loops[k].late, 0);
        ck_assert_uint_eq(loops[k].c.total, 400);
        ck_assert_int_eq(loops[k].c.bad_rc, 0);
        pthread_mutex_destroy(&loops[k].c.mu);
    }
    ck_assert_uint_eq(sp_records(s), 850);

    /* deferred and never flushed: shutdown writes them */
    c.total = 0;
    for (uint32_t i = 0; i < 20; i++)
        as_queue_deferred(s, &c, i, &seq);
    od_spool_shutdown(s);
    ck_assert_uint_eq(c.total, 20);
    ck_assert_int_eq(c.bad_rc, 0);
    od_spool_close(s);
    s = sp_open(0, 64 * 1024, 1);
    ck_assert_uint_eq(sp_records(s), 870);
    od_spool_close(s);
    pthread_mutex_destroy(&c.mu);
}
END_TEST

START_TEST(test_async_append)
{
    struct od_spool *s = sp_open(0, 64 * 1024, 1);
    static struct as_ctx c;
    static uint64_t seqs[AS_N];
    uint64_t seq, prev = 0;

    memset(&c, 0, sizeof(c));
    pthread_mutex_init(&c.mu, NULL);
    for (uint32_t i = 0; i < AS_N; i++) {
        as_queue(s, &c, i, &seqs[i]);
        if (i % 500 == 0)
            sp_append(s, 8, i);    /* a synchronous appender in between */
    }
    for (int k = 0; k < 1000; k++) {
        pthread_mutex_lock(&c.mu);
        unsigned total = c.total;
        pthread_mutex_unlock(&c.mu);
        if (total == AS_N)
            break;
        usleep(10 * 1000);
    }
    ck_assert_uint_eq(c.total, AS_N);
    ck_assert_int_eq(c.bad_rc, 0);
    for (uint32_t i = 0; i < AS_N; i++) {
        ck_assert_uint_eq(c.calls[i], 1);
        ck_assert_uint_eq(c.seq_cb[i], seqs[i]);
    }
    /* every record, in append order, intact (tag 7 async, 8 sync) */
    for (uint32_t n = 0; n < AS_N + AS_N / 500; n++) {
        void *data = NULL;
        size_t len = 0;
        uint32_t tag, i;

        ck_assert_int_eq(od_spool_next(s, &seq, &data, &len, 1000), 0);
        ck_assert(payload_check(data, len, &tag, &i));
        ck_assert(tag == 7 || tag == 8);
        if (tag == 7)
            ck_assert_uint_eq(seqs[i], seq);
        ck_assert_uint_gt(seq, prev);
        prev = seq;
        free(data);
        od_spool_complete(s, seq);
    }
    sp_expect_empty(s);

    /* queued, then shut down at once: written and called back first.  Slow
     * callbacks keep the last group's callbacks running after the queue has
     * emptied: shutdown must wait for them too. */
    memset(c.calls, 0, sizeof(c.calls));
    c.total = 0;
    c.slow_us = 200;
    for (uint32_t i = 0; i < 200; i++)
        as_queue(s, &c, i, &seqs[i]);
    od_spool_shutdown(s);
    ck_assert_uint_eq(c.total, 200);
    ck_assert_int_eq(c.bad_rc, 0);
    ck_assert_int_eq(od_spool_append_async(s, strdup("x"), 1, as_done, NULL, &seq), -ESHUTDOWN);
    od_spool_close(s);

    /* ... and durable: a reopen finds all 200 */
    s = sp_open(0, 64 * 1024, 1);
    for (uint32_t n = 0; n < 200; n++) {
        uint32_t i = sp_next(s, &seq);
        ck_assert_uint_eq(seqs[i], seq);
    }
    sp_expect_empty(s);
    od_spool_close(s);
    pthread_mutex_destroy(&c.mu);
}
END_TEST

/* ---- gathering (group_delay) ---- */

static struct od_spool *gd_open(int64_t delay_ms, int sync)
{
    struct od_spool_opts o = {
        .dir = spooldir, .segment_bytes = 64 * 1024, .sync = sync, .group_delay_ms = delay_ms,
    };
    struct od_spool *s = NULL;
    int rc = od_spool_open(&o, &s);

    ck_assert_msg(rc == 0, "od_spool_open: %s", strerror(-rc));
    return s;
}

static int64_t gd_ms_since(const struct timespec *t0)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

/* Waits up to 10 s for the callbacks to reach total; the milliseconds it took. */
static int64_t gd_wait_total(struct as_ctx *c, unsigned total)
{
    struct timespec t0;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (as_total(c) < total && gd_ms_since(&t0) < 10000)
        usleep(1000);
    ck_assert_uint_eq(as_total(c), total);
    return gd_ms_since(&t0);
}

/* Two deferred appends flushed: one group of two, so the writer gathers next. */
static void gd_concurrent(struct od_spool *s, struct as_ctx *c, uint32_t i)
{
    uint64_t seq;

    as_queue_deferred(s, c, i, &seq);
    as_queue_deferred(s, c, i + 1, &seq);
    od_spool_flush(s);
}

static void gd_expect_groups(struct od_spool *s, uint64_t commits, uint64_t committed)
{
    struct od_spool_stats st;

    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.commits, commits);
    ck_assert_uint_eq(st.committed, committed);
}

/* group_delay: after a group of several records the writer waits for as
 * many (or the delay) before writing; a lone appender never waits; a
 * synchronous appender and shutdown end the wait; no sync, no waiting.
 * The delays are a minute where the wait must end some other way, so a
 * slow machine cannot make these pass or fail by timing. */
START_TEST(test_group_delay)
{
    struct od_spool *s = gd_open(60000, 1);
    static struct as_ctx c;
    struct timespec t0;
    uint64_t seq;

    memset(&c, 0, sizeof(c));
    pthread_mutex_init(&c.mu, NULL);

    /* a lone appender: each group holds one record, nothing waits */
    for (uint32_t i = 0; i < 5; i++) {
        as_queue(s, &c, i, &seq);
        ck_assert_int_lt(gd_wait_total(&c, i + 1), 10000);
    }
    gd_expect_groups(s, 5, 5);

    /* after a group of two, one record waits for a second one ... */
    gd_concurrent(s, &c, 5);
    gd_expect_groups(s, 6, 7);
    as_queue(s, &c, 10, &seq);
    usleep(200 * 1000);
    ck_assert_uint_eq(as_total(&c), 7);
    ck_assert_uint_eq(sp_records(s), 7);
    /* ... which ends the wait at once: one group, one fdatasync, for both */
    as_queue(s, &c, 11, &seq);
    ck_assert_int_lt(gd_wait_total(&c, 9), 10000);
    gd_expect_groups(s, 7, 9);

    /* a synchronous appender does not wait: it writes the gathered one too */
    as_queue(s, &c, 12, &seq);
    usleep(50 * 1000);
    ck_assert_uint_eq(as_total(&c), 9);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    sp_append(s, 8, 13);
    ck_assert_int_lt(gd_ms_since(&t0), 10000);
    ck_assert_int_lt(gd_wait_total(&c, 10), 10000);
    gd_expect_groups(s, 8, 11);

    /* shutdown ends a wait and writes the record */
    as_queue(s, &c, 14, &seq);
    usleep(50 * 1000);
    ck_assert_uint_eq(as_total(&c), 10);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    od_spool_shutdown(s);
    ck_assert_int_lt(gd_ms_since(&t0), 10000);
    ck_assert_uint_eq(as_total(&c), 11);
    ck_assert_int_eq(c.bad_rc, 0);
    od_spool_close(s);

    /* the delay bounds the wait */
    s = gd_open(300, 1);
    ck_assert_uint_eq(sp_records(s), 12);
    gd_concurrent(s, &c, 20);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    as_queue(s, &c, 22, &seq);
    ck_assert_int_lt(gd_wait_total(&c, 14), 10000);
    ck_assert_int_ge(gd_ms_since(&t0), 300);
    gd_expect_groups(s, 2, 3);
    od_spool_close(s);

    /* without sync there is no fdatasync to share: no waiting */
    s = gd_open(60000, 0);
    gd_concurrent(s, &c, 30);
    as_queue(s, &c, 32, &seq);
    ck_assert_int_lt(gd_wait_total(&c, 17), 10000);
    ck_assert_int_eq(c.bad_rc, 0);
    ck_assert_uint_eq(sp_records(s), 18);
    od_spool_close(s);
    pthread_mutex_destroy(&c.mu);
}
END_TEST

/* ---- in-memory copies (the *_obj appends) ---- */

/* An object standing for a parsed record: which record, and a count of
 * frees kept by the test. */
struct hot_obj {
    uint32_t i;
};
static unsigned hot_freed;
static pthread_mutex_t hot_mu = PTHREAD_MUTEX_INITIALIZER;

static void hot_free(void *obj)
{
    pthread_mutex_lock(&hot_mu);
    hot_freed++;
    pthread_mutex_unlock(&hot_mu);
    free(obj);
}

static unsigned hot_freed_now(void)
{
    pthread_mutex_lock(&hot_mu);
    unsigned n = hot_freed;
    pthread_mutex_unlock(&hot_mu);
    return n;
}

static struct od_spool *hot_open(size_t hot_max, uint64_t hot_bytes, uint64_t max_bytes)
{
    struct od_spool_opts o = {
        .dir = spooldir, .max_bytes = max_bytes, .sync = 1,
        .hot_max = hot_max, .hot_bytes = hot_bytes, .hot_free = hot_free,
    };
    struct od_spool *s = NULL;
    int rc = od_spool_open(&o, &s);

    ck_assert_msg(rc == 0, "od_spool_open: %s", strerror(-rc));
    hot_freed = 0;
    return s;
}

static struct hot_obj *hot_new(uint32_t i)
{
    struct hot_obj *o = malloc(sizeof(*o));

    ck_assert_ptr_nonnull(o);
    o->i = i;
    return o;
}

static int hot_append(struct od_spool *s, uint32_t i, uint64_t *seq)
{
    unsigned char buf[512];
    size_t len = payload_make(buf, 5, i);

    return od_spool_append_obj(s, buf, len, hot_new(i), seq);
}

/* Take the next record: its copy when the spool kept one (*from_mem set),
 * else the bytes, checked.  RETURNS: the record's index. */
static uint32_t hot_next(struct od_spool *s, uint64_t *seq, bool *from_mem)
{
    void *data = NULL, *obj = NULL;
    size_t len = 0;
    uint32_t tag, i;
    int rc = od_spool_next_obj(s, seq, &data, &len, &obj, 0);

    ck_assert_msg(rc == 0, "next_obj: %s", strerror(-rc));
    ck_assert_msg((data == NULL) != (obj == NULL), "exactly one of data and obj");
    *from_mem = obj != NULL;
    if (obj != NULL) {
        i = ((struct hot_obj *)obj)->i;
        ck_assert_uint_eq(len, payload_make((unsigned char[512]){ 0 }, 5, i));
        free(obj);
        return i;
    }
    ck_assert_msg(payload_check(data, len, &tag, &i) && tag == 5, "payload of seq %llu damaged",
                  (unsigned long long)*seq);
    free(data);
    return i;
}

/* Copies come back in place of their records, in append order, and only
 * as many as the ring holds: a copy whose slot still holds an unread one
 * is freed at once and its record read from disk.  After a restart every
 * record is read back. */
START_TEST(test_hot_copies)
{
    struct od_spool *s = hot_open(4, 1 << 20, 0);
    struct od_spool_stats st;
    uint64_t seq, seqs[6];
    bool mem;

    for (uint32_t i = 0; i < 6; i++)
        ck_assert_int_eq(hot_append(s, i, &seqs[i]), 0);
    /* seqs 5 and 6 map to the slots of 1 and 2, not yet handed out */
    ck_assert_uint_eq(hot_freed_now(), 2);
    for (uint32_t i = 0; i < 6; i++) {
        ck_assert_uint_eq(hot_next(s, &seq, &mem), i);
        ck_assert_uint_eq(seq, seqs[i]);
        ck_assert_msg(mem == (i < 4), "record %u %s", i, mem ? "from memory" : "read back");
        od_spool_complete(s, seq);
    }
    od_spool_stats(s, &st);
    ck_assert_uint_eq(st.hot_hits, 4);
    ck_assert_uint_eq(st.reads, 2);
    sp_expect_empty(s);

    /* the cursor has passed slots 1-4: new copies take them over */
    ck_assert_int_eq(hot_append(s, 6, &seq), 0);
    ck_assert_int_eq(hot_append(s, 7, &seq), 0);
    ck_assert_uint_eq(hot_freed_now(), 2);
    /* od_spool_next wants the bytes: the copy is freed, the record read */
    ck_assert_uint_eq(sp_next(s, &seq), 6);
    ck_assert_uint_eq(hot_freed_now(), 3);
    od_spool_complete(s, seq);
    /* a requeued record comes back from disk: its copy was handed out */
    ck_assert_uint_eq(hot_next(s, &seq, &mem), 7);
    ck_assert(mem);
    od_spool_requeue(s, seq);
    ck_assert_uint_eq(hot_next(s, &seq, &mem), 7);
    ck_assert(!mem);

    /* close frees copies nobody took; a restart reads everything back */
    ck_assert_int_eq(hot_append(s, 8, &seq), 0);
    od_spool_close(s);
    ck_assert_uint_eq(hot_freed_now(), 4);
    s = hot_open(4, 1 << 20, 0);
    ck_assert_uint_eq(hot_next(s, &seq, &mem), 7);
    ck_assert(!mem);
    ck_assert_uint_eq(hot_next(s, &seq, &mem), 8);
    ck_assert(!mem);
    od_spool_close(s);
}
END_TEST

/* The byte budget bounds the copies too; a refused append frees its copy;
 * asynchronous appends leave copies that are kept once durable. */
START_TEST(test_hot_budget)
{
    unsigned char buf[512];
    struct od_spool *s;
    struct as_ctx c;
    uint64_t seq;
    size_t len0 = payload_make(buf, 5, 0), len1 = payload_make(buf, 5, 1);
    bool mem;

    /* room for the records of copies 0 and 1, not for 2 */
    s = hot_open(64, len0 + len1, 0);
    for (uint32_t i = 0; i < 3; i++)
        ck_assert_int_eq(hot_append(s, i, &seq), 0);
    ck_assert_uint_eq(hot_freed_now(), 1);
    ck_assert_uint_eq(hot_next(s, &seq, &mem), 0);
    ck_assert(mem);
    ck_assert_uint_eq(hot_next(s, &seq, &mem), 1);
    ck_assert(mem);
    ck_assert_uint_eq(hot_next(s, &seq, &mem), 2);
    ck_assert(!mem);
    /* handing out returned the budget */
    ck_assert_int_eq(hot_append(s, 1, &seq), 0);
    ck_assert_uint_eq(hot_next(s, &seq, &mem), 1);
    ck_assert(mem);
    ck_assert_uint_eq(hot_freed_now(), 1);

    /* asynchronous and deferred (records of 8 and 13 bytes: in the budget) */
    memset(&c, 0, sizeof(c));
    pthread_mutex_init(&c.mu, NULL);
    for (uint32_t i = 0; i < 2; i++) {
        size_t len = payload_make(buf, 5, i * 65);
        unsigned char *copy = malloc(len);
        struct as_arg *a = malloc(sizeof(*a));

        ck_assert(copy != NULL && a != NULL);
        memcpy(copy, buf, len);
        *a = (struct as_arg){ .c = &c, .i = i };
        ck_assert_int_eq(od_spool_append_async_obj(s, copy, len, hot_new(i * 65), i == 1, as_done,
                                                   a, &seq), 0);
    }
    od_spool_flush(s);
    ck_assert_uint_eq(as_total(&c), 2);
    ck_assert_uint_eq(hot_next(s, &seq, &mem), 0);
    ck_assert(mem);
    ck_assert_uint_eq(hot_next(s, &seq, &mem), 65);
    ck_assert(mem);
    ck_assert_uint_eq(hot_freed_now(), 1);
    od_spool_close(s);
    pthread_mutex_destroy(&c.mu);
    rm_dir(spooldir);

    /* full: the append fails and its copy is freed, not leaked */
    s = hot_open(64, 1 << 20, 600);
    while ((hot_append(s, 20, &seq)) == 0)
        ;
    ck_assert_uint_eq(hot_freed_now(), 1);
    unsigned char *big = calloc(1, 300);
    ck_assert_ptr_nonnull(big);
    ck_assert_int_eq(od_spool_append_async_obj(s, big, 300, hot_new(21), 0, as_done, NULL, &seq),
                     -ENOSPC);
    ck_assert_uint_eq(hot_freed_now(), 2);
    od_spool_close(s);
}
END_TEST

/* CRC32C: the check value of the standard ("123456789" -> e3069283), and
 * the instruction and the tables agreeing on every length and alignment. */
START_TEST(test_crc32c)
{
    unsigned char buf[300];

    ck_assert_uint_eq(od_spool_crc32c("123456789", 9), 0xe3069283u);
    ck_assert_uint_eq(od_spool_crc32c_table("123456789", 9), 0xe3069283u);
    ck_assert_uint_eq(od_spool_crc32c("", 0), 0);
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (unsigned char)(i * 131u + 7u);
    for (size_t off = 0; off < 8; off++)
        for (size_t len = 0; len + off <= sizeof(buf); len += 1 + len / 8)
            ck_assert_uint_eq(od_spool_crc32c(buf + off, len), od_spool_crc32c_table(buf + off, len));
}
END_TEST

START_TEST(test_lock)
{
    struct od_spool *s = sp_open(0, 0, 0), *s2 = NULL;
    struct od_spool_opts o = { .dir = spooldir };

    ck_assert_int_eq(od_spool_open(&o, &s2), -EBUSY);
    ck_assert_ptr_null(s2);
    od_spool_close(s);
    s = sp_open(0, 0, 0);
    od_spool_close(s);
}
END_TEST

static Suite *spool_suite(void)
{
    Suite *su = suite_create("spool");
    TCase *tc = tcase_create("spool");

    tcase_add_unchecked_fixture(tc, base_setup, base_teardown);
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_order);
    tcase_add_test(tc, test_concurrency);
    tcase_add_test(tc, test_restart);
    tcase_add_test(tc, test_segments);
    tcase_add_test(tc, test_complete_many);
    tcase_add_test(tc, test_read_ahead);
    tcase_add_test(tc, test_enospc);
    tcase_add_test(tc, test_enospc_active);
    tcase_add_test(tc, test_torn_tail);
    tcase_add_test(tc, test_corrupt_middle);
    tcase_add_test(tc, test_ack_outlives_record);
    tcase_add_test(tc, test_kill9);
    tcase_add_test(tc, test_requeue);
    tcase_add_test(tc, test_wakeup);
    tcase_add_test(tc, test_shutdown);
    tcase_add_test(tc, test_group_delay);
    tcase_add_test(tc, test_lock);
    tcase_add_test(tc, test_async_append);
    tcase_add_test(tc, test_deferred_flush);
    tcase_add_test(tc, test_zero_fill);
    tcase_add_test(tc, test_hot_copies);
    tcase_add_test(tc, test_crc32c);
    tcase_add_test(tc, test_hot_budget);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    SRunner *sr = srunner_create(spool_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
