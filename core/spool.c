/* spool.c - the durable on-disk queue in front of a pipeline (contract in spool.h).
 *
 * ON DISK.  One directory per spool:
 *
 *     lock                       flock()ed while open: one process per spool
 *     seg-<16 hex first seq>.log records, append-only
 *     seg-<16 hex first seq>.ack completed seqs of that segment, append-only
 *
 * A record is a 24-byte header then the payload; all fields little-endian:
 *
 *     0  magic "ODSP"    4  payload length    8  seq (u64)
 *     16 crc32c(payload) 20 crc32c(bytes 0..19)
 *
 * The header has its own checksum so a scan can trust `len` before reading
 * the payload, and can resynchronise on the next valid header after damage.
 * Within a segment seqs are consecutive from the segment's first seq in file
 * order (after a failed write the next batch starts a new segment), so the
 * n-th record sits at offset >= n * 24; recovery uses that bound to reject
 * impossible seqs and to size the index.
 *
 * An ack entry is 16 bytes {seq, ~seq}: a torn or zero-filled entry after a
 * power loss fails the check and is ignored.  Acks are not fsynced: losing one
 * only means that record is delivered again after a restart, which
 * downstream stages tolerate (they are idempotent on the message id).
 *
 * GROUP COMMIT.  An appender checksums its payload without the lock, then
 * under the lock takes a seq and queues itself.  If no write is in progress
 * it becomes the leader: it takes the queued requests (up to a segment's
 * worth), drops the lock, writes them with pwritev and issues ONE fdatasync,
 * retakes the lock, indexes the records, marks every request done and wakes
 * their owners, and wakes the owner of the request now at the head of the
 * queue, which leads the next group.  Each waiter sleeps on its own
 * condition variable so a commit wakes only those it concerns, not every
 * appender (a broadcast made 64 waiters contend for the lock per group).
 * So N concurrent appends cost about one fsync.  Records are indexed
 * (visible to od_spool_next) only once durable.
 *
 * Asynchronous appends (od_spool_append_async) queue the same way but never
 * lead and never wait: the spool's writer thread leads a group whose head
 * is asynchronous, and whoever leads a group calls the completion callbacks
 * of its asynchronous requests after dropping the lock.  So an event-driven
 * caller keeps thousands of appends in one group without a thread per
 * append.  Deferred appends (od_spool_append_deferred) are left for their
 * caller's od_spool_flush, which leads on the caller's thread: an event loop
 * can write what one turn read and answer with no hand-over (the shipped
 * HTTP input does not: it keeps reading while the writer thread syncs).
 *
 * GATHERING.  With sync and group_delay, the writer thread lets a group
 * gather before leading it, when the previous group held more than one
 * record (appends are concurrent): until as many records are queued as that
 * group held, or group_delay after it started waiting.  Concurrent clients
 * each wait for their own record's fdatasync anyway, so waiting for the
 * ones about to arrive costs little latency and saves fdatasyncs, each of
 * which costs CPU (a virtual disk's kick and interrupt) and a wake-up of
 * every thread involved: with 64 HTTP clients a group grew from ~14 to ~60
 * records and the daemon's CPU per request fell from ~26 to ~21 us
 * (tests/bench/intake.sh; tests/bench/README.md, tenth pass).  A lone client's
 * groups hold one record: nothing to wait for.  Synchronous appenders and
 * flushers still lead at once (taking the gathered records along), and
 * shutdown ends the wait.
 *
 * ZERO-FILL.  With sync, the keeper thread keeps the active segment
 * zeroed (written and fdatasync'ed) a few MiB past its last record, so a
 * group's fdatasync overwrites allocated blocks and commits no metadata;
 * on ext4 that halves its latency.  A leader never writes into the range
 * being zeroed (it waits; the keeper keeps well ahead), and the keeper
 * never starts zeroing while a group is being written.  It is not the
 * writer thread, which would leave asynchronous groups waiting behind a
 * whole chunk.  It pushes its zeros to disk 256 KiB at a time
 * (sync_file_range), since a leader's fdatasync writes every dirty page of
 * the file, and waiting behind a chunk of zeros was a p99 spike.  The
 * keeper also deletes completed segments, outside the lock.
 *
 * MEMORY.  Payloads stay on disk.  Each segment keeps, per seq, its
 * {offset, length} (8 bytes) and a state byte (ready / handed out / done):
 * 9 bytes per record.  od_spool_next preads the record and verifies both
 * checksums again.  A cursor walks seqs in order; requeued seqs go to a
 * min-heap so they come back before later ones.
 *
 * SPACE.  `bytes` is the sum of the segments' record bytes (zero-filled space
 * and ack files not counted).
 * An append that would push bytes + queued bytes past max_bytes fails with
 * -ENOSPC.  A sealed segment with every record completed is deleted (log
 * first, then ack, so a crash in between only redelivers).  The active
 * segment is never deleted, but when every record in it is completed and the
 * limit is hit, the next write rolls to a new segment so the old one can go.
 * A single record over 1 GiB is refused with -EMSGSIZE (offsets are 32-bit);
 * segment_bytes is capped at 1 GiB for the same reason.
 *
 * RECOVERY.  od_spool_open scans segments in seq order, verifying every
 * record.  Zeros from a failed record to the end of the file are the
 * zero-filled space, not damage: the records end there, and the next write
 * goes over them.  Damage followed by a valid record is skipped (logged as an error);
 * damage with nothing valid after it in the last segment is a torn tail and
 * is truncated away (logged with the byte count); in an older segment it is
 * left alone (the file goes when its records are completed).  Acks are then
 * applied, fully completed old segments deleted, and the next seq chosen
 * above every seq seen in records or acks, so a seq is never reused for a
 * new record while an ack for an older one may survive.
 *
 * HOT COPIES.  An append may leave the caller's parsed form of the record
 * (the pipeline's message) with the spool.  Once the record is durable the
 * leader files it in a ring indexed by seq, and od_spool_next_obj hands it
 * out instead of reading, checking and parsing the record again: when the
 * pipeline keeps up, records are read back only after a restart.  Nothing
 * changes on disk, and the order records are handed out in is the same.
 * The ring is bounded (hot_max objects, hot_bytes of their records); a
 * copy finds no room when its slot holds an older record not yet handed
 * out, so in a backlog longer than the ring the records are read from disk
 * as before and memory stays bounded.  A slot whose record the cursor has
 * passed (handed out some other way) is taken over.  Room is looked for
 * when the record is queued, and a copy without it is freed there, by the
 * thread that made it (spool_hot_put).
 *
 * LOCKING.  One mutex guards the index, queue and counters; file writes,
 * fdatasync and payload reads run without it.  Only the leader writes to a
 * segment, and a segment being read is pinned by a reference count.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "../plugins/common/deadline.h"
#include "log.h"
#include "spool.h"
#include "util.h"

#define SPOOL_MAGIC       0x5053444fu           /* "ODSP" as little-endian bytes */
#define SPOOL_HDR         24u
#define SPOOL_ACK         16u
#define SPOOL_MAX_RECORD  (1u << 30)            /* offsets and lengths fit in 32 bits */
#define SPOOL_SEG_DEFAULT ((uint64_t)64 << 20)
#define SPOOL_SEG_MAX     ((uint64_t)1 << 30)
#define SPOOL_IOV         128

/* Zero-filling ahead of the write position (sync spools): fdatasync after
 * overwriting blocks that are already allocated and written needs no
 * metadata commit, which halves its latency on ext4.  The keeper thread
 * keeps the active segment zeroed ZERO_AHEAD bytes past its end, in chunks
 * growing from ZERO_CHUNK_MIN (small spools write little) to ZERO_CHUNK_MAX. */
#define SPOOL_ZERO_AHEAD     ((uint64_t)8 << 20)
#define SPOOL_ZERO_CHUNK_MIN ((uint64_t)1 << 20)
#define SPOOL_ZERO_CHUNK_MAX ((uint64_t)16 << 20)
/* Zeros are written and pushed to disk this much at a time: fdatasync
 * writes every dirty page of the file, so a leader syncing while a whole
 * chunk of zeros sat in the page cache would wait for all of it. */
#define SPOOL_ZERO_PIECE     ((size_t)256 << 10)

enum { REC_ABSENT, REC_READY, REC_INFLIGHT, REC_DONE };

struct spool_loc {
    uint32_t off;
    uint32_t len;
};

struct spool_seg {
    uint64_t          first;    /* seq of index slot 0; also the file name */
    uint64_t          size;     /* bytes in the .log file */
    uint64_t          live;     /* records ready or handed out */
    uint32_t          n;        /* slots used (highest seq - first + 1) */
    uint32_t          cap;
    struct spool_loc *loc;
    uint8_t          *state;
    int               fd;
    int               ack_fd;
    unsigned          refs;     /* readers (or the keeper zeroing) doing I/O on fd without the lock */
    bool              ack_failed;
    uint64_t          zeroed;   /* the file holds synced zeros from size up to here */
    uint64_t          zero_chunk;
    bool              orphan;   /* dropped while being zeroed: the keeper buries it after */
    struct spool_seg *dead_next;  /* on s->dead, waiting for the keeper to delete it */
};

struct spool_req {
    struct spool_req *next;
    const void       *data;
    size_t            len;
    uint64_t          seq;
    int               rc;
    bool              done;
    pthread_cond_t    cv;       /* its owner waits here: done, or now at the head to lead */
    unsigned char     hdr[SPOOL_HDR];
    /* asynchronous requests: malloc'd with their data, freed after cb */
    od_spool_done_fn  cb;       /* NULL: a synchronous request (on its owner's stack) */
    void             *cb_arg;
    bool              deferred; /* its owner's od_spool_flush() leads it, not the writer */
    void             *obj;      /* in-memory copy to keep once durable, or NULL (hot_free) */
};

/* A record's in-memory copy, kept in s->hot[seq & (hot_cap - 1)]. */
struct spool_hot {
    uint64_t seq;
    uint32_t len;
    void    *obj;               /* NULL: the slot is free */
};

struct od_spool {
    char              *dir;
    int                dir_fd;
    int                lock_fd;
    uint64_t           max_bytes;
    uint64_t           seg_bytes;
    bool               sync;

    pthread_mutex_t    mu;
    pthread_cond_t     ready_cv;    /* readers: records indexed, or shutdown */

    struct spool_seg **segs;        /* by first seq; the last one is active */
    size_t             nsegs;
    size_t             capsegs;

    uint64_t           next_seq;
    uint64_t           bytes;       /* on disk, in segment files */
    uint64_t           reserved;    /* queued for the next writes */
    uint64_t           live;        /* records not completed */
    uint64_t           cur;         /* every ready seq below this is in the heap */
    uint64_t          *heap;        /* requeued seqs, min-heap */
    size_t             nheap;
    size_t             capheap;

    struct spool_req  *qhead;
    struct spool_req  *qtail;
    pthread_cond_t     writer_cv;   /* the writer thread: an async request heads the queue */
    pthread_cond_t     idle_cv;     /* shutdown: the queue is empty and nobody writes */
    pthread_t          writer;
    bool               writer_running;
    unsigned           cb_running;  /* leaders calling asynchronous callbacks */
    uint64_t           commits, committed, sync_ns;   /* od_spool_stats */
    uint64_t           done_seq;    /* groups are written in order: every seq up to this is */
    int64_t            group_delay_ms;   /* GATHERING: longest wait, 0: none */
    uint64_t           last_group;  /* records in the last group written */
    uint64_t           gather;      /* the writer waits for this many queued records, or 0 */
    unsigned           flushers;    /* od_spool_flush() calls waiting on flush_cv */
    pthread_cond_t     flush_cv;    /* a group is done (done_seq moved) */
    /* The keeper thread deletes completed segments (unlinking and closing a
     * 64 MiB file took milliseconds under the lock) and zero-fills (see
     * SPOOL_ZERO_AHEAD): never the writer thread, whose groups would wait. */
    pthread_t          keeper;
    bool               keeper_running;
    pthread_cond_t     keeper_cv;   /* the keeper: a segment died, or spool_zero_wanted() changed */
    struct spool_seg  *dead;        /* dropped segments for the keeper to delete */
    bool               zero_off;    /* not for this spool (no sync, or it failed once) */
    struct spool_seg  *zeroing;     /* segment being zeroed from zero_from, or NULL */
    uint64_t           zero_from;
    pthread_cond_t     zero_cv;     /* zeroing finished */
    unsigned char     *zeros;       /* SPOOL_ZERO_PIECE zero bytes */
    bool               closing;
    bool               leader;
    bool               writing;
    bool               roll_next;
    bool               shutdown;
    int                broken;      /* sticky -EIO after a failed fdatasync */

    /* Read-ahead (spool_read_rec): the bytes of records already indexed that
     * follow the one asked for, so the reader makes one pread per window
     * rather than one per record.  Records never change once indexed; a
     * window never reaches past the last indexed record, so it cannot hold
     * a record that was still being written. */
    pthread_mutex_t    ra_mu;
    uint64_t           ra_seg;      /* segment (its first seq), or 0: empty */
    uint64_t           ra_off;      /* file offset of ra_buf[0] */
    size_t             ra_len;
    unsigned char     *ra_buf;      /* SPOOL_RA_BYTES, allocated on first use */

    /* In-memory copies (see HOT COPIES): a ring indexed by seq. */
    struct spool_hot  *hot;
    size_t             hot_cap;     /* a power of two, or 0: none kept */
    uint64_t           hot_max_bytes;
    uint64_t           hot_used;    /* record bytes of the copies kept */
    void             (*hot_free)(void *obj);
    uint64_t           hot_hits, reads;   /* od_spool_stats */
};

/* Read-ahead window: about a hundred typical order records. */
#define SPOOL_RA_BYTES    (64u * 1024u)

/* ---- CRC32C (Castagnoli): the SSE4.2 instruction, else slicing by 8 ---- */

static uint32_t crc_tab[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static bool crc_hw;

#if defined(__x86_64__) && defined(__GNUC__)
#include <nmmintrin.h>

/* The crc32 instruction computes CRC32C itself, eight bytes a step: a few
 * times the table's speed, and every record is summed when written and
 * again when read. */
__attribute__((target("sse4.2")))
static uint32_t spool_crc32c_hw(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    uint64_t crc = 0xffffffffu;
    uint32_t c;

    while (len >= 8) {
        uint64_t v;

        memcpy(&v, p, 8);
        crc = _mm_crc32_u64(crc, v);
        p += 8;
        len -= 8;
    }
    c = (uint32_t)crc;
    while (len--)
        c = _mm_crc32_u8(c, *p++);
    return ~c;
}
#endif

static void spool_crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        crc_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_tab[t][i] = (crc_tab[t - 1][i] >> 8) ^ crc_tab[0][crc_tab[t - 1][i] & 0xff];
#if defined(__x86_64__) && defined(__GNUC__)
    crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

uint32_t od_spool_crc32c_table(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    uint32_t crc = 0xffffffffu;

    pthread_once(&crc_once, spool_crc_init);

    while (len >= 8) {
        uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 |
                             (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 |
                      (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        crc = crc_tab[7][lo & 0xff] ^ crc_tab[6][(lo >> 8) & 0xff] ^
              crc_tab[5][(lo >> 16) & 0xff] ^ crc_tab[4][lo >> 24] ^
              crc_tab[3][hi & 0xff] ^ crc_tab[2][(hi >> 8) & 0xff] ^
              crc_tab[1][(hi >> 16) & 0xff] ^ crc_tab[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = crc_tab[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* The tables are built (and the instruction looked for) by od_spool_open. */
static uint32_t spool_crc32c(const void *buf, size_t len)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (crc_hw)
        return spool_crc32c_hw(buf, len);
#endif
    return od_spool_crc32c_table(buf, len);
}

uint32_t od_spool_crc32c(const void *buf, size_t len)
{
    pthread_once(&crc_once, spool_crc_init);
    return spool_crc32c(buf, len);
}

/* ---- encoding ---- */

static void spool_put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void spool_put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t spool_get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t spool_get64(const unsigned char *p)
{
    return (uint64_t)spool_get32(p) | (uint64_t)spool_get32(p + 4) << 32;
}

static void spool_hdr_build(unsigned char *h, uint64_t seq, uint32_t len, uint32_t dcrc)
{
    spool_put32(h, SPOOL_MAGIC);
    spool_put32(h + 4, len);
    spool_put64(h + 8, seq);
    spool_put32(h + 16, dcrc);
    spool_put32(h + 20, spool_crc32c(h, 20));
}

/* A header whose magic and own checksum hold. */
static bool spool_hdr_parse(const unsigned char *h, uint64_t *seq, uint32_t *len, uint32_t *dcrc)
{
    if (spool_get32(h) != SPOOL_MAGIC || spool_get32(h + 20) != spool_crc32c(h, 20))
        return false;
    *len = spool_get32(h + 4);
    *seq = spool_get64(h + 8);
    *dcrc = spool_get32(h + 16);
    return *len <= SPOOL_MAX_RECORD;
}

static void spool_seg_name(char *out, size_t n, uint64_t first, const char *ext)
{
    snprintf(out, n, "seg-%016" PRIx64 ".%s", first, ext);
}

/* ---- segments and the index ---- */

static struct spool_seg *spool_active(struct od_spool *s)
{
    return s->segs[s->nsegs - 1];
}

static struct spool_seg *spool_seg_new(uint64_t first)
{
    struct spool_seg *g = calloc(1, sizeof(*g));

    if (g == NULL)
        return NULL;
    g->first = first;
    g->fd = -1;
    g->ack_fd = -1;
    return g;
}

static void spool_seg_free(struct spool_seg *g)
{
    if (g == NULL)
        return;
    if (g->fd >= 0)
        close(g->fd);
    if (g->ack_fd >= 0)
        close(g->ack_fd);
    free(g->loc);
    free(g->state);
    free(g);
}

/* Make room for index slots up to seq, so indexing after a write cannot fail. */
static int spool_seg_reserve(struct spool_seg *g, uint64_t seq)
{
    uint64_t need = seq - g->first + 1;
    uint64_t ncap;
    void *p;

    if (seq < g->first || need > UINT32_MAX)
        return -ERANGE;
    if (need <= g->cap)
        return 0;
    ncap = g->cap ? (uint64_t)g->cap * 2 : 256;
    if (ncap < need)
        ncap = need;
    if (ncap > UINT32_MAX)
        ncap = UINT32_MAX;
    /* Grow both before touching cap: a half-done grow only wastes memory. */
    p = realloc(g->loc, ncap * sizeof(*g->loc));
    if (p == NULL)
        return -ENOMEM;
    g->loc = p;
    p = realloc(g->state, ncap);
    if (p == NULL)
        return -ENOMEM;
    g->state = p;
    memset(g->state + g->cap, REC_ABSENT, ncap - g->cap);
    g->cap = (uint32_t)ncap;
    return 0;
}

static int spool_seg_put(struct spool_seg *g, uint64_t seq, uint32_t off, uint32_t len)
{
    uint32_t idx;
    int rc = spool_seg_reserve(g, seq);

    if (rc < 0)
        return rc;
    idx = (uint32_t)(seq - g->first);
    g->loc[idx].off = off;
    g->loc[idx].len = len;
    g->state[idx] = REC_READY;
    if (idx >= g->n)
        g->n = idx + 1;
    g->live++;
    return 0;
}

/* Index of the segment that would hold seq, or -1 when seq is below them all. */
static ssize_t spool_seg_index(struct od_spool *s, uint64_t seq)
{
    size_t lo = 0, hi = s->nsegs;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->segs[mid]->first <= seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (ssize_t)lo - 1;
}

static struct spool_seg *spool_find(struct od_spool *s, uint64_t seq, uint32_t *idx)
{
    ssize_t i = spool_seg_index(s, seq);
    struct spool_seg *g;

    if (i < 0)
        return NULL;
    g = s->segs[i];
    if (seq - g->first >= g->n)
        return NULL;
    *idx = (uint32_t)(seq - g->first);
    return g;
}

static int spool_segs_reserve(struct od_spool *s)
{
    size_t ncap;
    void *p;

    if (s->nsegs < s->capsegs)
        return 0;
    ncap = s->capsegs ? s->capsegs * 2 : 16;
    p = realloc(s->segs, ncap * sizeof(*s->segs));
    if (p == NULL)
        return -ENOMEM;
    s->segs = p;
    s->capsegs = ncap;
    return 0;
}

static void spool_seg_delete(struct od_spool *s, struct spool_seg *g);

/* A dropped segment goes to the keeper thread; without one (opening) it is
 * deleted at once.  Lock held. */
static void spool_seg_bury(struct od_spool *s, struct spool_seg *g)
{
    if (!s->keeper_running) {
        spool_seg_delete(s, g);
        return;
    }
    g->dead_next = s->dead;
    s->dead = g;
    pthread_cond_signal(&s->keeper_cv);
}

/* Drop a sealed segment once nothing in it is pending or being read, and
 * hand it over for deletion.  Called with the lock held. */
static void spool_seg_maybe_drop(struct od_spool *s, struct spool_seg *g)
{
    ssize_t i;

    /* The zeroing keeper's reference does not keep a segment: it buries it after. */
    unsigned zref = s->zeroing == g ? 1 : 0;

    if (g->live != 0 || g->refs != zref || g == spool_active(s) || g->orphan)
        return;
    i = spool_seg_index(s, g->first);
    if (i < 0 || s->segs[i] != g)
        return;
    memmove(&s->segs[i], &s->segs[i + 1], (s->nsegs - (size_t)i - 1) * sizeof(*s->segs));
    s->nsegs--;
    s->bytes -= g->size;
    if (zref)
        g->orphan = true;   /* the keeper buries it when done zeroing */
    else
        spool_seg_bury(s, g);
}

/* Deletes a dropped segment's files and frees it.  Lock not held. */
static void spool_seg_delete(struct od_spool *s, struct spool_seg *g)
{
    char name[64];

    /* The log goes first: if we die before the ack file goes too, the
     * orphan ack file is removed at the next open.  A crash before either
     * only leaves a segment whose records are all completed, which the
     * next open deletes. */
    spool_seg_name(name, sizeof(name), g->first, "log");
    if (unlinkat(s->dir_fd, name, 0) < 0 && errno != ENOENT) {
        od_warn("spool %s: cannot delete %s: %s", s->dir, name, strerror(errno));
    } else {
        spool_seg_name(name, sizeof(name), g->first, "ack");
        if (unlinkat(s->dir_fd, name, 0) < 0 && errno != ENOENT)
            od_warn("spool %s: cannot delete %s: %s", s->dir, name, strerror(errno));
    }
    od_debug("spool %s: deleted completed segment %016" PRIx64, s->dir, g->first);
    spool_seg_free(g);
}

/* A new, empty segment file.  Its name is made durable before any record
 * goes in, or an fdatasync'ed record could vanish with its directory entry. */
static int spool_seg_create(struct od_spool *s, uint64_t first, struct spool_seg **out)
{
    char name[64];
    struct spool_seg *g = spool_seg_new(first);
    int rc = 0;

    if (g == NULL)
        return -ENOMEM;
    spool_seg_name(name, sizeof(name), first, "log");
    g->fd = openat(s->dir_fd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (g->fd < 0) {
        rc = -errno;
        od_err("spool %s: cannot create %s: %s", s->dir, name, strerror(errno));
        goto fail;
    }
    if (s->sync && fsync(s->dir_fd) < 0) {
        rc = -errno;
        od_err("spool %s: fsync of directory failed: %s", s->dir, strerror(errno));
        unlinkat(s->dir_fd, name, 0);
        goto fail;
    }
    *out = g;
    return 0;

fail:
    spool_seg_free(g);
    return rc;
}

/* An ack entry: the seq and its complement (a torn entry fails the check). */
static void spool_ack_put(unsigned char *e, uint64_t seq)
{
    spool_put64(e, seq);
    spool_put64(e + 8, ~seq);
}

/* Completions for g could not be recorded: say so once (lock held). */
static void spool_ack_failed(struct od_spool *s, struct spool_seg *g, int err)
{
    if (!g->ack_failed)
        od_warn("spool %s: cannot record completions for segment %016" PRIx64
                " (they will be redelivered after a restart): %s",
                s->dir, g->first, strerror(err));
    g->ack_failed = true;
}

/* g's ack file, opened on first use (lock held).  RETURNS: fd, or -1. */
static int spool_ack_fd(struct od_spool *s, struct spool_seg *g)
{
    char name[64];

    if (g->ack_fd < 0) {
        spool_seg_name(name, sizeof(name), g->first, "ack");
        g->ack_fd = openat(s->dir_fd, name, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (g->ack_fd < 0)
            spool_ack_failed(s, g, errno);
    }
    return g->ack_fd;
}

/* Append n ack entries.  RETURNS: 0 or an errno value (a short write is EIO;
 * the next open ignores a torn entry). */
static int spool_ack_put_all(int fd, const unsigned char *e, size_t n)
{
    ssize_t w;

    do
        w = write(fd, e, n * SPOOL_ACK);
    while (w < 0 && errno == EINTR);
    if (w == (ssize_t)(n * SPOOL_ACK))
        return 0;
    return w < 0 ? errno : EIO;
}

/* Remember n completions (entries of SPOOL_ACK bytes in e), with one write.
 * Not fsynced on purpose: a lost ack only causes a redelivery after a
 * crash.  Called with the lock held. */
static void spool_ack_write(struct od_spool *s, struct spool_seg *g, const unsigned char *e,
                            size_t n)
{
    int fd = spool_ack_fd(s, g), err;

    if (fd >= 0 && (err = spool_ack_put_all(fd, e, n)) != 0)
        spool_ack_failed(s, g, err);
}

/* ---- requeue heap ---- */

static int spool_heap_push(struct od_spool *s, uint64_t seq)
{
    size_t i;

    if (s->nheap == s->capheap) {
        size_t ncap = s->capheap ? s->capheap * 2 : 64;
        void *p = realloc(s->heap, ncap * sizeof(*s->heap));
        if (p == NULL)
            return -ENOMEM;
        s->heap = p;
        s->capheap = ncap;
    }
    i = s->nheap++;
    while (i > 0 && s->heap[(i - 1) / 2] > seq) {
        s->heap[i] = s->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    s->heap[i] = seq;
    return 0;
}

static uint64_t spool_heap_pop(struct od_spool *s)
{
    uint64_t top = s->heap[0], last = s->heap[--s->nheap];
    size_t i = 0;

    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= s->nheap)
            break;
        if (c + 1 < s->nheap && s->heap[c + 1] < s->heap[c])
            c++;
        if (s->heap[c] >= last)
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (s->nheap > 0)
        s->heap[i] = last;
    return top;
}

/* The lowest ready record: requeued ones first (they are all below the
 * cursor), then onwards from the cursor.  Called with the lock held. */
static struct spool_seg *spool_pick(struct od_spool *s, uint32_t *idx)
{
    struct spool_seg *g;
    ssize_t i;

    while (s->nheap > 0) {
        g = spool_find(s, spool_heap_pop(s), idx);
        /* Stale entries (completed since the requeue) are skipped. */
        if (g != NULL && g->state[*idx] == REC_READY)
            return g;
    }
    i = spool_seg_index(s, s->cur);
    if (i < 0) {
        i = 0;
        s->cur = s->segs[0]->first;
    }
    for (; (size_t)i < s->nsegs; i++) {
        g = s->segs[i];
        if (s->cur < g->first)
            s->cur = g->first;
        for (uint64_t k = s->cur - g->first; k < g->n; k++) {
            if (g->state[k] == REC_READY) {
                s->cur = g->first + k + 1;
                *idx = (uint32_t)k;
                return g;
            }
        }
        s->cur = g->first + g->n;
    }
    return NULL;
}

/* ---- appending ---- */

static int spool_write_batch(int fd, struct spool_req *r, uint64_t off)
{
    struct iovec iov[SPOOL_IOV];

    while (r != NULL) {
        struct iovec *v = iov;
        int cnt = 0;

        while (r != NULL && cnt + 2 <= SPOOL_IOV) {
            iov[cnt].iov_base = r->hdr;
            iov[cnt++].iov_len = SPOOL_HDR;
            if (r->len > 0) {
                iov[cnt].iov_base = (void *)(uintptr_t)r->data;
                iov[cnt++].iov_len = r->len;
            }
            r = r->next;
        }
        while (cnt > 0) {
            ssize_t w = pwritev(fd, v, cnt, (off_t)off);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                return errno == ENOSPC || errno == EDQUOT ? -ENOSPC : -EIO;
            }
            off += (uint64_t)w;
            while (cnt > 0 && (size_t)w >= v->iov_len) {
                w -= (ssize_t)v->iov_len;
                v++;
                cnt--;
            }
            if (cnt > 0) {
                v->iov_base = (char *)v->iov_base + w;
                v->iov_len -= (size_t)w;
            }
        }
    }
    return 0;
}

/* Records queued for the next group (their seqs are consecutive).  Lock held. */
static uint64_t spool_queued(const struct od_spool *s)
{
    return s->qhead != NULL ? s->qtail->seq - s->qhead->seq + 1 : 0;
}

/* Hand the lead to the owner of the request at the head of the queue, or to
 * the writer thread when that request is asynchronous.  Lock held. */
static void spool_wake_next(struct od_spool *s)
{
    if (s->qhead == NULL) {
        if (s->cb_running == 0)
            pthread_cond_broadcast(&s->idle_cv);
    }
    else if (s->qhead->deferred && !s->shutdown)
        ;   /* a flusher waits on flush_cv, woken at the end of spool_lead */
    else if (s->qhead->cb != NULL)
        pthread_cond_signal(&s->writer_cv);
    else
        pthread_cond_signal(&s->qhead->cv);
}

/* Should the keeper thread zero more of the active segment?  Lock held. */
static bool spool_zero_wanted(struct od_spool *s)
{
    struct spool_seg *g = spool_active(s);

    /* Not while a leader writes: its group lies past g->size.  Not before
     * the segment's first record either: an idle spool writes nothing. */
    return !s->zero_off && s->zeroing == NULL && !s->writing && !s->closing && !s->shutdown &&
           g->fd >= 0 && g->size > 0 &&
           g->zeroed < s->seg_bytes && g->zeroed < g->size + SPOOL_ZERO_AHEAD;
}

/* Zero the next chunk past the active segment's end and sync it.  Lock
 * held; dropped for the I/O.  Leaders keep writing below zero_from. */
static void spool_zero_ahead(struct od_spool *s)
{
    struct spool_seg *g = spool_active(s);
    uint64_t from = g->zeroed > g->size ? g->zeroed : g->size, to, off;
    int err = 0;

    if (g->zero_chunk == 0)
        g->zero_chunk = SPOOL_ZERO_CHUNK_MIN;
    to = from + g->zero_chunk;
    if (to > s->seg_bytes)
        to = s->seg_bytes;
    if (to <= from) {
        g->zeroed = s->seg_bytes;
        return;
    }
    s->zeroing = g;
    s->zero_from = from;
    g->refs++;
    pthread_mutex_unlock(&s->mu);
    for (off = from; off < to && err == 0; ) {
        size_t n = (size_t)(to - off < SPOOL_ZERO_PIECE ? to - off : SPOOL_ZERO_PIECE);
        ssize_t w = pwrite(g->fd, s->zeros, n, (off_t)off);
        if (w < 0 && errno != EINTR) {
            err = errno;
        } else if (w > 0) {
            /* Written out now, not left for a leader's fdatasync. */
            if (sync_file_range(g->fd, (off_t)off, w, SYNC_FILE_RANGE_WAIT_BEFORE |
                                SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) < 0 &&
                errno != ENOSYS && errno != EINVAL)
                err = errno;
            off += (uint64_t)w;
        }
    }
    if (err == 0 && off == to && fdatasync(g->fd) < 0)
        err = errno;
    pthread_mutex_lock(&s->mu);
    g->refs--;
    s->zeroing = NULL;
    pthread_cond_broadcast(&s->zero_cv);
    if (g->orphan) {
        spool_seg_bury(s, g);
        return;
    }
    if (err != 0) {
        /* Only a lost optimisation: appends extend the file as before. */
        od_warn("spool %s: zero-filling segment %016" PRIx64 " failed: %s; appending without it",
                s->dir, g->first, strerror(err));
        s->zero_off = true;
    } else if (off == to) {
        g->zeroed = to;
        if (g->zero_chunk < SPOOL_ZERO_CHUNK_MAX)
            g->zero_chunk *= 2;
    }
    spool_seg_maybe_drop(s, g);
}

/* Is there room for the copy of record seq (len bytes)?  Its slot is free,
 * or holds a record the cursor has passed (handed out some other way: the
 * copy is stale), and the byte budget holds it, counting what a stale copy
 * gives back.  Lock held. */
static bool spool_hot_room(const struct od_spool *s, uint64_t seq, size_t len)
{
    const struct spool_hot *e;
    uint64_t used;

    if (s->hot_cap == 0)
        return false;
    e = &s->hot[seq & (s->hot_cap - 1)];
    used = s->hot_used;
    if (e->obj != NULL) {
        if (e->seq >= s->cur)
            return false;   /* still to be handed out: it keeps its place */
        used -= e->len;
    }
    return used + len <= s->hot_max_bytes;
}

/* File r's copy in the ring (lock held).  On success r->obj becomes the
 * stale copy it displaced, or NULL; either way the caller frees what r->obj
 * holds after dropping the lock.  Room is looked for first when the record
 * is queued (a copy without it is freed there, by the thread that made it:
 * freed by the leader instead, a backlog's copies cost the allocator more
 * than the records' reading saved) and again here, once durable. */
static void spool_hot_put(struct od_spool *s, struct spool_req *r)
{
    struct spool_hot *e;
    void *old;

    if (r->obj == NULL || !spool_hot_room(s, r->seq, r->len))
        return;
    e = &s->hot[r->seq & (s->hot_cap - 1)];
    old = e->obj;
    if (old != NULL)
        s->hot_used -= e->len;
    *e = (struct spool_hot){ .seq = r->seq, .len = (uint32_t)r->len, .obj = r->obj };
    s->hot_used += r->len;
    r->obj = old;
}

/* Take seq's copy out of the ring, or NULL (lock held). */
static void *spool_hot_take(struct od_spool *s, uint64_t seq)
{
    struct spool_hot *e;
    void *obj;

    if (s->hot_cap == 0)
        return NULL;
    e = &s->hot[seq & (s->hot_cap - 1)];
    if (e->obj == NULL || e->seq != seq)
        return NULL;
    obj = e->obj;
    e->obj = NULL;
    s->hot_used -= e->len;
    return obj;
}

static void spool_hot_drop(struct od_spool *s, void *obj)
{
    if (obj != NULL && s->hot_free != NULL)
        s->hot_free(obj);
}

/* Write one group from the queue.  Called with the lock held and the queue
 * non-empty; drops the lock for the I/O (and for asynchronous callbacks). */
static void spool_lead(struct od_spool *s)
{
    struct spool_req *batch = s->qhead, *last = batch, *r, *next;
    struct spool_seg *act = spool_active(s), *fresh = NULL, *g;
    uint64_t bytes = SPOOL_HDR + batch->len, base, last_seq, sync_ns = 0, nrec = 1;
    bool roll, sync_failed = false;
    int rc = 0;

    s->leader = true;
    /* A group never holds more than a segment's worth (except one big
     * record), which keeps offsets well inside 32 bits. */
    while (last->next != NULL && bytes + SPOOL_HDR + last->next->len <= s->seg_bytes) {
        last = last->next;
        bytes += SPOOL_HDR + last->len;
        nrec++;
    }
    s->qhead = last->next;
    if (s->qhead == NULL)
        s->qtail = NULL;
    last->next = NULL;
    last_seq = last->seq;

    roll = s->roll_next || (act->size > 0 && act->size + bytes > s->seg_bytes) ||
           (s->max_bytes != 0 && act->live == 0 && act->size > 0 &&
            s->bytes + bytes > s->max_bytes);
    /* Allocate now so that indexing after the write cannot fail. */
    rc = roll ? spool_segs_reserve(s) : spool_seg_reserve(act, last->seq);
    /* Zeros must not land on this group: wait for the keeper's zeroing
     * (which keeps well ahead, so this is rare). */
    while (!roll && s->zeroing == act && act->size + bytes > s->zero_from)
        pthread_cond_wait(&s->zero_cv, &s->mu);
    s->writing = true;
    pthread_mutex_unlock(&s->mu);

    if (rc == 0 && roll) {
        rc = spool_seg_create(s, batch->seq, &fresh);
        if (rc == 0)
            rc = spool_seg_reserve(fresh, last->seq);
    }
    g = fresh != NULL ? fresh : act;
    base = g->size;     /* only the leader changes it */
    if (rc == 0)
        rc = spool_write_batch(g->fd, batch, base);
    if (rc == 0 && s->sync) {
        int64_t t0 = od_mono_ns();

        if (fdatasync(g->fd) < 0) {
            rc = -EIO;
            sync_failed = true;
        }
        sync_ns = (uint64_t)(od_mono_ns() - t0);
    }

    pthread_mutex_lock(&s->mu);
    s->writing = false;
    s->commits++;
    s->committed += nrec;
    s->last_group = nrec;
    s->sync_ns += sync_ns;
    if (fresh != NULL) {
        s->segs[s->nsegs++] = fresh;
        s->roll_next = false;
        spool_seg_maybe_drop(s, act);
    }
    if (rc == 0) {
        uint64_t off = base;
        for (r = batch; r != NULL; r = r->next) {
            spool_seg_put(g, r->seq, (uint32_t)off, (uint32_t)r->len);
            off += SPOOL_HDR + r->len;
            s->live++;
            spool_hot_put(s, r);
        }
        g->size = base + bytes;
        s->bytes += bytes;
        pthread_cond_broadcast(&s->ready_cv);
    } else {
        od_err("spool %s: writing %" PRIu64 " bytes to segment %016" PRIx64 " failed: %s",
               s->dir, bytes, g->first, strerror(-rc));
        /* After a failed fdatasync the page cache can no longer be trusted
         * (the error is reported once); refuse further appends. */
        if (sync_failed || (g->fd >= 0 && ftruncate(g->fd, (off_t)base) < 0))
            s->broken = -EIO;
        /* The lost seqs leave a gap: keep seqs consecutive per segment. */
        s->roll_next = true;
    }
    s->reserved -= bytes;
    struct spool_req *async = NULL, **atail = &async;
    for (r = batch; r != NULL; r = next) {
        next = r->next;     /* r may be gone once its owner sees done */
        r->rc = rc;
        r->done = true;
        if (r->cb != NULL) {
            r->next = NULL;
            *atail = r;
            atail = &r->next;
            continue;
        }
        /* Under the lock: the owner cannot see done (and destroy cv)
         * before we let go of it. */
        pthread_cond_signal(&r->cv);
    }
    s->leader = false;
    if (async != NULL)
        s->cb_running++;    /* shutdown and flush wait for these callbacks too */
    spool_wake_next(s);
    if (async != NULL) {
        pthread_mutex_unlock(&s->mu);
        for (r = async; r != NULL; r = next) {
            next = r->next;
            r->cb(r->cb_arg, r->rc, r->seq);
            spool_hot_drop(s, r->obj);
            free((void *)(uintptr_t)r->data);
            free(r);
        }
        pthread_mutex_lock(&s->mu);
        s->cb_running--;
        if (s->cb_running == 0 && s->qhead == NULL && !s->leader)
            pthread_cond_broadcast(&s->idle_cv);
    }
    /* Only now: a flusher returns after the callbacks of its records. */
    if (last_seq > s->done_seq)
        s->done_seq = last_seq;
    if (s->flushers > 0)
        pthread_cond_broadcast(&s->flush_cv);
    if (spool_zero_wanted(s))
        pthread_cond_signal(&s->keeper_cv);
}

/* Checks, a seq and a place in the queue for r (data, len, crc set).  Lock held.
 * RETURNS: 0, -ESHUTDOWN, -EIO (broken), -ENOSPC. */
static int spool_enqueue(struct od_spool *s, struct spool_req *r, uint32_t dcrc)
{
    if (s->shutdown)
        return -ESHUTDOWN;
    if (s->broken)
        return s->broken;
    if (s->max_bytes != 0) {
        uint64_t used = s->bytes + s->reserved;
        struct spool_seg *act = spool_active(s);
        /* A fully completed active segment is reclaimed by the next write
         * (spool_lead rolls past it), unless a write into it is under way. */
        if (!s->writing && act->live == 0)
            used -= act->size;
        if (used + SPOOL_HDR + r->len > s->max_bytes)
            return -ENOSPC;
    }
    r->seq = s->next_seq++;
    spool_hdr_build(r->hdr, r->seq, (uint32_t)r->len, dcrc);
    s->reserved += SPOOL_HDR + r->len;
    if (s->qtail != NULL)
        s->qtail->next = r;
    else
        s->qhead = r;
    s->qtail = r;
    return 0;
}

static int spool_append_async(struct od_spool *s, void *data, size_t len, void *obj,
                              od_spool_done_fn cb, void *arg, uint64_t *seq, bool defer)
{
    struct spool_req *r;
    uint32_t dcrc;
    int rc;

    if (len > SPOOL_MAX_RECORD) {
        free(data);
        spool_hot_drop(s, obj);
        return -EMSGSIZE;
    }
    r = malloc(sizeof(*r));
    if (r == NULL) {
        free(data);
        spool_hot_drop(s, obj);
        return -ENOMEM;
    }
    *r = (struct spool_req){ .data = data, .len = len, .cb = cb, .cb_arg = arg, .deferred = defer,
                             .obj = obj };
    dcrc = spool_crc32c(data, len);

    pthread_mutex_lock(&s->mu);
    rc = spool_enqueue(s, r, dcrc);
    if (rc == 0) {
        *seq = r->seq;
        if (obj != NULL && !spool_hot_room(s, r->seq, len))
            r->obj = NULL;      /* freed below, here */
        else
            obj = NULL;
        if (!defer && !s->leader && s->qhead == r)
            pthread_cond_signal(&s->writer_cv);
        else if (!defer && s->gather != 0 && spool_queued(s) >= s->gather) {
            s->gather = 0;      /* one wake-up: the writer leads the group */
            pthread_cond_signal(&s->writer_cv);
        }
    }
    pthread_mutex_unlock(&s->mu);
    spool_hot_drop(s, obj);
    if (rc < 0) {
        free(data);
        free(r);
    }
    return rc;
}

int od_spool_append_async(struct od_spool *s, void *data, size_t len, od_spool_done_fn cb,
                          void *arg, uint64_t *seq)
{
    return spool_append_async(s, data, len, NULL, cb, arg, seq, false);
}

int od_spool_append_deferred(struct od_spool *s, void *data, size_t len, od_spool_done_fn cb,
                             void *arg, uint64_t *seq)
{
    return spool_append_async(s, data, len, NULL, cb, arg, seq, true);
}

int od_spool_append_async_obj(struct od_spool *s, void *data, size_t len, void *obj, int defer,
                              od_spool_done_fn cb, void *arg, uint64_t *seq)
{
    return spool_append_async(s, data, len, obj, cb, arg, seq, defer != 0);
}

void od_spool_flush(struct od_spool *s)
{
    uint64_t target;

    pthread_mutex_lock(&s->mu);
    target = s->next_seq - 1;
    while (s->done_seq < target) {
        if (!s->leader && s->qhead != NULL) {
            spool_lead(s);
            continue;
        }
        /* Someone leads (or is calling a group's callbacks): the rest of
         * the queue is handed on when it is done. */
        s->flushers++;
        pthread_cond_wait(&s->flush_cv, &s->mu);
        s->flushers--;
    }
    pthread_mutex_unlock(&s->mu);
}

int od_spool_append(struct od_spool *s, const void *data, size_t len, uint64_t *seq)
{
    return od_spool_append_obj(s, data, len, NULL, seq);
}

int od_spool_append_obj(struct od_spool *s, const void *data, size_t len, void *obj,
                        uint64_t *seq)
{
    struct spool_req req = { .data = data, .len = len, .cv = PTHREAD_COND_INITIALIZER, .obj = obj };
    void *spare = NULL;
    uint32_t dcrc;
    int rc;

    if (len > SPOOL_MAX_RECORD) {
        spool_hot_drop(s, obj);
        return -EMSGSIZE;
    }
    dcrc = spool_crc32c(data, len);

    pthread_mutex_lock(&s->mu);
    rc = spool_enqueue(s, &req, dcrc);
    if (rc < 0)
        goto out;
    if (req.obj != NULL && !spool_hot_room(s, req.seq, len)) {
        spare = req.obj;    /* no room: freed here, after the lock */
        req.obj = NULL;
    }

    while (!req.done) {
        if (!s->leader)
            spool_lead(s);
        else
            pthread_cond_wait(&req.cv, &s->mu);
    }
    rc = req.rc;
    if (rc == 0)
        *seq = req.seq;
out:
    pthread_mutex_unlock(&s->mu);
    pthread_cond_destroy(&req.cv);
    spool_hot_drop(s, req.obj);     /* not kept, or displaced by it */
    spool_hot_drop(s, spare);
    return rc;
}

/* ---- reading ---- */

/* Copy record l of segment g out of the read-ahead window, refilling the
 * window from l.off up to limit (the end of the segment's last indexed
 * record) when it does not hold it.  RETURNS: true if h and buf were filled. */
static bool spool_ra_read(struct od_spool *s, struct spool_seg *g, struct spool_loc l,
                          uint64_t limit, unsigned char *h, char *buf)
{
    size_t want = SPOOL_HDR + l.len;
    bool hit;

    if (want > SPOOL_RA_BYTES || limit < l.off + want)
        return false;
    pthread_mutex_lock(&s->ra_mu);
    hit = s->ra_seg == g->first && l.off >= s->ra_off && l.off + want <= s->ra_off + s->ra_len;
    if (!hit) {
        size_t n = (size_t)(limit - l.off < SPOOL_RA_BYTES ? limit - l.off : SPOOL_RA_BYTES);
        size_t got = 0;

        s->ra_seg = 0;
        if (s->ra_buf == NULL && (s->ra_buf = malloc(SPOOL_RA_BYTES)) == NULL)
            goto out;
        while (got < want) {
            ssize_t r = pread(g->fd, s->ra_buf + got, n - got, (off_t)(l.off + got));

            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                goto out;   /* the caller reads it alone and reports the error */
            got += (size_t)r;
        }
        s->ra_seg = g->first;
        s->ra_off = l.off;
        s->ra_len = got;
        hit = true;
    }
    memcpy(h, s->ra_buf + (l.off - s->ra_off), SPOOL_HDR);
    memcpy(buf, s->ra_buf + (l.off - s->ra_off) + SPOOL_HDR, l.len);
out:
    pthread_mutex_unlock(&s->ra_mu);
    return hit;
}

/* Read one record and check it again: disks and filesystems do rot. */
static int spool_read_rec(struct od_spool *s, struct spool_seg *g, uint64_t seq,
                          struct spool_loc l, uint64_t limit, void **out)
{
    unsigned char h[SPOOL_HDR];
    struct iovec iov[2];
    char *buf = malloc(l.len ? l.len : 1);
    uint64_t hseq;
    uint32_t hlen, dcrc;
    size_t want = SPOOL_HDR + l.len, got = 0;
    int rc = 0;

    if (buf == NULL)
        return -ENOMEM;
    if (spool_ra_read(s, g, l, limit, h, buf))
        got = want;
    while (got < want) {
        ssize_t n;
        size_t skip = got;

        iov[0].iov_base = h;
        iov[0].iov_len = SPOOL_HDR;
        iov[1].iov_base = buf;
        iov[1].iov_len = l.len;
        /* Resume after a short read by skipping what we already have. */
        int k = 0;
        if (skip >= SPOOL_HDR) {
            k = 1;
            skip -= SPOOL_HDR;
        }
        iov[k].iov_base = (char *)iov[k].iov_base + skip;
        iov[k].iov_len -= skip;
        n = preadv(g->fd, &iov[k], 2 - k, (off_t)(l.off + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = -EIO;
            goto fail;
        }
        got += (size_t)n;
    }
    if (!spool_hdr_parse(h, &hseq, &hlen, &dcrc) || hseq != seq || hlen != l.len ||
        spool_crc32c(buf, l.len) != dcrc) {
        rc = -EBADMSG;
        goto fail;
    }
    *out = buf;
    return 0;

fail:
    free(buf);
    return rc;
}

int od_spool_next(struct od_spool *s, uint64_t *seq, void **data, size_t *len, int64_t timeout_ms)
{
    return od_spool_next_obj(s, seq, data, len, NULL, timeout_ms);
}

int od_spool_next_obj(struct od_spool *s, uint64_t *seq, void **data, size_t *len, void **obj,
                      int64_t timeout_ms)
{
    struct timespec deadline;
    struct spool_seg *g;
    uint32_t idx;
    bool timed_out = false;
    int rc;

    if (obj != NULL)
        *obj = NULL;
    if (timeout_ms > 0)
        deadline = deadline_after_ms(timeout_ms);

    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (s->shutdown) {
            rc = -ESHUTDOWN;
            break;
        }
        g = spool_pick(s, &idx);
        if (g != NULL) {
            uint64_t q = g->first + idx;
            struct spool_loc l = g->loc[idx];
            struct spool_loc last = g->loc[g->n - 1];
            void *buf = NULL, *copy = spool_hot_take(s, q);

            g->state[idx] = REC_INFLIGHT;
            if (copy != NULL && obj != NULL) {
                s->hot_hits++;
                *seq = q;
                *data = NULL;
                *len = l.len;
                *obj = copy;
                rc = 0;
                break;
            }
            g->refs++;
            pthread_mutex_unlock(&s->mu);
            spool_hot_drop(s, copy);    /* a caller that wants the bytes */
            rc = spool_read_rec(s, g, q, l, (uint64_t)last.off + SPOOL_HDR + last.len, &buf);
            pthread_mutex_lock(&s->mu);
            g->refs--;
            if (rc == 0) {
                s->reads++;
                *seq = q;
                *data = buf;
                *len = l.len;
                /* Only matters if someone completed it while we read. */
                spool_seg_maybe_drop(s, g);
                break;
            }
            if (rc == -ENOMEM) {
                /* Try again later rather than lose it. */
                g->state[idx] = REC_READY;
                if (q < s->cur)
                    s->cur = q;
                spool_seg_maybe_drop(s, g);
                break;
            }
            /* Unreadable: handing it out again would fail forever. */
            od_err("spool %s: record %" PRIu64 " in segment %016" PRIx64 " at offset %" PRIu32
                   " is unreadable (%s); dropping it", s->dir, q, g->first, l.off, strerror(-rc));
            if (g->state[idx] == REC_INFLIGHT) {
                g->state[idx] = REC_DONE;
                g->live--;
                s->live--;
                unsigned char e[SPOOL_ACK];
                spool_ack_put(e, q);
                spool_ack_write(s, g, e, 1);
            }
            spool_seg_maybe_drop(s, g);
            continue;
        }
        if (timeout_ms == 0 || timed_out) {
            rc = -EAGAIN;
            break;
        }
        if (timeout_ms < 0)
            pthread_cond_wait(&s->ready_cv, &s->mu);
        else
            timed_out = pthread_cond_timedwait(&s->ready_cv, &s->mu, &deadline) == ETIMEDOUT;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void od_spool_shutdown(struct od_spool *s)
{
    pthread_mutex_lock(&s->mu);
    s->shutdown = true;
    pthread_cond_broadcast(&s->ready_cv);
    pthread_cond_signal(&s->writer_cv);     /* deferred appends nobody flushed */
    /* Appends already queued are written and their callbacks have returned. */
    while (s->writer_running && (s->qhead != NULL || s->leader || s->cb_running != 0))
        pthread_cond_wait(&s->idle_cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

/* GATHERING (see the top): wait until the queue holds as many records as
 * the last group did, or group_delay.  Lock held; the queue may have been
 * taken meanwhile by a synchronous appender or a flusher. */
static void spool_gather(struct od_spool *s)
{
    struct timespec deadline = deadline_after_ms(s->group_delay_ms);

    s->gather = s->last_group;
    while (s->qhead != NULL && spool_queued(s) < s->gather && !s->shutdown && !s->closing)
        if (pthread_cond_timedwait(&s->writer_cv, &s->mu, &deadline) == ETIMEDOUT)
            break;
    s->gather = 0;
}

/* The writer thread leads groups headed by an asynchronous request. */
static void *spool_writer_main(void *arg)
{
    struct od_spool *s = arg;
    bool gathered = false;

    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (s->qhead != NULL && s->qhead->cb != NULL && !s->leader &&
            (!s->qhead->deferred || s->shutdown)) {
            if (!gathered && s->group_delay_ms > 0 &&
                spool_queued(s) < s->last_group && !s->shutdown) {
                spool_gather(s);
                gathered = true;    /* whatever heads the queue now: look again */
                continue;
            }
            gathered = false;
            spool_lead(s);
            continue;
        }
        gathered = false;
        if (s->closing && s->qhead == NULL)
            break;
        pthread_cond_wait(&s->writer_cv, &s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* The keeper thread deletes dropped segments and keeps the active segment
 * zeroed ahead of its records. */
static void *spool_keeper_main(void *arg)
{
    struct od_spool *s = arg;

    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (s->dead != NULL) {
            struct spool_seg *g = s->dead, *next;
            s->dead = NULL;
            pthread_mutex_unlock(&s->mu);
            for (; g != NULL; g = next) {
                next = g->dead_next;
                spool_seg_delete(s, g);
            }
            pthread_mutex_lock(&s->mu);
        } else if (s->closing) {
            break;
        } else if (spool_zero_wanted(s)) {
            spool_zero_ahead(s);
        } else {
            pthread_cond_wait(&s->keeper_cv, &s->mu);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Completions of one batch: one lock, and one ack write per segment run
 * (up to SPOOL_ACK_RUN entries) instead of one per record. */
#define SPOOL_ACK_RUN 64

void od_spool_complete_many(struct od_spool *s, const uint64_t *seqs, size_t n)
{
    unsigned char buf[SPOOL_ACK_RUN * SPOOL_ACK];
    size_t i = 0;

    pthread_mutex_lock(&s->mu);
    while (i < n) {
        struct spool_seg *run = NULL;   /* the segment buf's entries are for, pinned */
        size_t k = 0;
        int fd;

        for (; i < n && k < SPOOL_ACK_RUN; i++) {
            struct spool_seg *g;
            uint32_t idx;

            g = spool_find(s, seqs[i], &idx);
            if (g == NULL || (g->state[idx] != REC_READY && g->state[idx] != REC_INFLIGHT))
                continue;
            if (run != NULL && g != run)
                break;      /* the next run starts here */
            g->state[idx] = REC_DONE;
            g->live--;
            s->live--;
            if (run == NULL && g->live == 0 && g->refs == 0 && g != spool_active(s)) {
                /* no ack needed for a segment that is about to disappear */
                spool_seg_maybe_drop(s, g);
                continue;
            }
            if (run == NULL) {
                run = g;
                g->refs++;  /* it stays while its acks are written */
            }
            spool_ack_put(buf + k++ * SPOOL_ACK, seqs[i]);
        }
        if (run == NULL)
            continue;
        /* The write goes out without the lock: appends and the group's
         * leader need it, and a write into a page under writeback waits
         * for the disk. */
        fd = spool_ack_fd(s, run);
        pthread_mutex_unlock(&s->mu);
        int err = fd >= 0 ? spool_ack_put_all(fd, buf, k) : 0;
        pthread_mutex_lock(&s->mu);
        if (err != 0)
            spool_ack_failed(s, run, err);
        run->refs--;
        spool_seg_maybe_drop(s, run);
    }
    pthread_mutex_unlock(&s->mu);
}

void od_spool_complete(struct od_spool *s, uint64_t seq)
{
    od_spool_complete_many(s, &seq, 1);
}

void od_spool_requeue(struct od_spool *s, uint64_t seq)
{
    struct spool_seg *g;
    uint32_t idx;

    pthread_mutex_lock(&s->mu);
    g = spool_find(s, seq, &idx);
    if (g != NULL && g->state[idx] == REC_INFLIGHT) {
        g->state[idx] = REC_READY;
        /* Without heap memory, rewinding the cursor finds it just as well. */
        if (spool_heap_push(s, seq) < 0 && seq < s->cur)
            s->cur = seq;
        pthread_cond_signal(&s->ready_cv);
    }
    pthread_mutex_unlock(&s->mu);
}

void od_spool_stats(struct od_spool *s, struct od_spool_stats *st)
{
    pthread_mutex_lock(&s->mu);
    st->bytes = s->bytes;
    st->records = s->live;
    st->segments = s->nsegs;
    st->commits = s->commits;
    st->committed = s->committed;
    st->sync_ns = s->sync_ns;
    st->hot_hits = s->hot_hits;
    st->reads = s->reads;
    pthread_mutex_unlock(&s->mu);
}

/* ---- recovery ---- */

/* Is there a whole, valid record at off that fits this segment? */
static bool spool_rec_ok(const unsigned char *p, uint64_t size, uint64_t off, uint64_t first,
                         uint64_t limit, int64_t prev_idx, uint64_t *seq, uint32_t *len)
{
    uint32_t dcrc;
    uint64_t idx;

    if (size - off < SPOOL_HDR || !spool_hdr_parse(p + off, seq, len, &dcrc))
        return false;
    if (*len > size - off - SPOOL_HDR || *seq < first || *seq >= limit)
        return false;
    /* Seqs are consecutive in file order, each record at least a header. */
    idx = *seq - first;
    if (idx > off / SPOOL_HDR || (int64_t)idx <= prev_idx)
        return false;
    return spool_crc32c(p + off + SPOOL_HDR, *len) == dcrc;
}

static bool spool_all_zero(const unsigned char *p, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (p[i] != 0)
            return false;
    return true;
}

static int spool_seg_scan(struct od_spool *s, struct spool_seg *g, bool last, uint64_t limit)
{
    struct stat st;
    unsigned char *p = NULL;
    uint64_t size, off = 0, seq;
    uint32_t len;
    int64_t prev_idx = -1;
    int rc = 0;

    if (fstat(g->fd, &st) < 0)
        return -errno;
    size = (uint64_t)st.st_size;
    if (size > UINT32_MAX) {
        od_err("spool %s: segment %016" PRIx64 " is %" PRIu64 " bytes; only the first 4 GiB are read",
               s->dir, g->first, size);
        size = UINT32_MAX;
    }
    g->size = (uint64_t)st.st_size;
    if (size == 0)
        return 0;
    p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, g->fd, 0);
    if (p == MAP_FAILED) {
        rc = -errno;
        od_err("spool %s: cannot map segment %016" PRIx64 ": %s", s->dir, g->first, strerror(errno));
        return rc;
    }
    while (off < size) {
        uint64_t bad = off;

        if (spool_rec_ok(p, size, off, g->first, limit, prev_idx, &seq, &len)) {
            rc = spool_seg_put(g, seq, (uint32_t)off, len);
            if (rc < 0)
                goto out;
            prev_idx = (int64_t)(seq - g->first);
            off += SPOOL_HDR + len;
            continue;
        }
        /* Zeros to the end: the zero-filled space past the last record
         * (SPOOL_ZERO_AHEAD), not damage.  Written over from here on; it is
         * zeroed again before that counts as fast. */
        if (spool_all_zero(p + bad, size - bad)) {
            g->size = bad;
            break;
        }
        /* Damage: look for the next record that checks out. */
        for (off = bad + 1; off + SPOOL_HDR <= size; off++) {
            const unsigned char *m = memchr(p + off, SPOOL_MAGIC & 0xff, size - off - SPOOL_HDR + 1);
            if (m == NULL) {
                off = size;
                break;
            }
            off = (uint64_t)(m - p);
            if (spool_rec_ok(p, size, off, g->first, limit, prev_idx, &seq, &len))
                break;
        }
        if (off + SPOOL_HDR <= size) {
            od_err("spool %s: segment %016" PRIx64 " is CORRUPT at offset %" PRIu64
                   ": skipped %" PRIu64 " bytes to the next valid record; records in them are lost",
                   s->dir, g->first, bad, off - bad);
            continue;
        }
        if (last) {
            if (ftruncate(g->fd, (off_t)bad) < 0) {
                rc = -errno;
                od_err("spool %s: cannot truncate segment %016" PRIx64 ": %s",
                       s->dir, g->first, strerror(errno));
                goto out;
            }
            od_warn("spool %s: segment %016" PRIx64 ": truncated a torn tail of %" PRIu64
                    " bytes at offset %" PRIu64, s->dir, g->first, g->size - bad, bad);
            g->size = bad;
        } else {
            od_err("spool %s: segment %016" PRIx64 " ends with %" PRIu64 " bytes of garbage at offset %"
                   PRIu64 "; kept until the segment is deleted", s->dir, g->first, size - bad, bad);
        }
        break;
    }
out:
    munmap(p, size);
    return rc;
}

/* Apply a segment's acks; *maxseq gets the highest acked seq seen. */
static int spool_seg_load_acks(struct od_spool *s, struct spool_seg *g, uint64_t limit,
                               uint64_t *maxseq)
{
    unsigned char buf[SPOOL_ACK * 256];
    char name[64];
    struct stat st;
    ssize_t n;

    spool_seg_name(name, sizeof(name), g->first, "ack");
    g->ack_fd = openat(s->dir_fd, name, O_RDWR | O_APPEND | O_CLOEXEC);
    if (g->ack_fd < 0)
        return errno == ENOENT ? 0 : -errno;
    if (fstat(g->ack_fd, &st) < 0)
        return -errno;
    /* A torn last entry would misalign every later append. */
    if (st.st_size % SPOOL_ACK != 0 &&
        ftruncate(g->ack_fd, st.st_size - st.st_size % SPOOL_ACK) < 0)
        return -errno;
    while ((n = read(g->ack_fd, buf, sizeof(buf))) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        for (ssize_t i = 0; i + (ssize_t)SPOOL_ACK <= n; i += SPOOL_ACK) {
            uint64_t seq = spool_get64(buf + i), idx;

            if (spool_get64(buf + i + 8) != ~seq || seq < g->first || seq >= limit)
                continue;
            if (seq > *maxseq)
                *maxseq = seq;
            idx = seq - g->first;
            if (idx < g->n && g->state[idx] == REC_READY) {
                g->state[idx] = REC_DONE;
                g->live--;
            }
        }
    }
    return 0;
}

static int spool_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* Segment first seqs from "seg-<16 hex>.<ext>" names, sorted. */
static int spool_list(struct od_spool *s, const char *ext, uint64_t **out, size_t *nout)
{
    DIR *d;
    struct dirent *e;
    uint64_t *v = NULL;
    size_t n = 0, cap = 0;
    int fd, rc = 0;

    fd = openat(s->dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    d = fdopendir(fd);
    if (d == NULL) {
        rc = -errno;
        close(fd);
        return rc;
    }
    while ((e = readdir(d)) != NULL) {
        char want[64], *end;
        uint64_t first;

        if (strlen(e->d_name) != 24 || strncmp(e->d_name, "seg-", 4) != 0)
            continue;
        errno = 0;
        first = strtoull(e->d_name + 4, &end, 16);
        spool_seg_name(want, sizeof(want), first, ext);
        if (errno != 0 || end != e->d_name + 20 || first == 0 || strcmp(want, e->d_name) != 0)
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            void *p = realloc(v, ncap * sizeof(*v));
            if (p == NULL) {
                rc = -ENOMEM;
                goto out;
            }
            v = p;
            cap = ncap;
        }
        v[n++] = first;
    }
    if (n > 0)
        qsort(v, n, sizeof(*v), spool_cmp_u64);
out:
    closedir(d);
    if (rc < 0) {
        free(v);
        return rc;
    }
    *out = v;
    *nout = n;
    return 0;
}

static int spool_recover(struct od_spool *s)
{
    uint64_t *logs = NULL, *acks = NULL, ackmax = 0, lastseq = 0;
    size_t nlogs = 0, nacks = 0;
    struct spool_seg *g = NULL, *act;
    int rc;

    rc = spool_list(s, "log", &logs, &nlogs);
    if (rc == 0)
        rc = spool_list(s, "ack", &acks, &nacks);
    if (rc < 0)
        goto out;

    for (size_t i = 0; i < nlogs; i++) {
        char name[64];
        uint64_t limit = i + 1 < nlogs ? logs[i + 1] : UINT64_MAX;

        ackmax = 0;
        g = spool_seg_new(logs[i]);
        if (g == NULL || spool_segs_reserve(s) < 0) {
            rc = -ENOMEM;
            goto out;
        }
        spool_seg_name(name, sizeof(name), g->first, "log");
        g->fd = openat(s->dir_fd, name, O_RDWR | O_CLOEXEC);
        if (g->fd < 0) {
            rc = -errno;
            od_err("spool %s: cannot open %s: %s", s->dir, name, strerror(errno));
            goto out;
        }
        rc = spool_seg_scan(s, g, i + 1 == nlogs, limit);
        if (rc == 0)
            rc = spool_seg_load_acks(s, g, limit, &ackmax);
        if (rc < 0) {
            od_err("spool %s: cannot recover segment %s: %s", s->dir, name, strerror(-rc));
            goto out;
        }
        s->segs[s->nsegs++] = g;
        s->bytes += g->size;
        s->live += g->live;
        g = NULL;
    }

    /* Ack files whose log is gone: a deletion was cut short. */
    for (size_t i = 0, j = 0; i < nacks; i++) {
        char name[64];

        while (j < nlogs && logs[j] < acks[i])
            j++;
        if (j < nlogs && logs[j] == acks[i])
            continue;
        spool_seg_name(name, sizeof(name), acks[i], "ack");
        if (unlinkat(s->dir_fd, name, 0) < 0)
            od_warn("spool %s: cannot delete orphan %s: %s", s->dir, name, strerror(errno));
    }

    if (s->nsegs == 0) {
        rc = spool_segs_reserve(s);
        if (rc == 0)
            rc = spool_seg_create(s, 1, &g);
        if (rc < 0)
            goto out;
        s->segs[s->nsegs++] = g;
        g = NULL;
        s->next_seq = 1;
    } else {
        /* Above every seq a record or an ack mentions: a surviving ack must
         * never complete a new record that reuses a torn record's seq. */
        act = spool_active(s);
        s->next_seq = act->first;
        if (act->n > 0) {
            lastseq = act->first + act->n - 1;
            s->next_seq = lastseq + 1;
        }
        if (ackmax >= s->next_seq)
            s->next_seq = ackmax + 1;
        s->roll_next = s->next_seq != (act->n > 0 ? lastseq + 1 : act->first);
    }
    s->done_seq = s->next_seq - 1;

    /* Sealed segments with nothing left to deliver. */
    for (size_t i = 0; i + 1 < s->nsegs;) {
        struct spool_seg *old = s->segs[i];
        spool_seg_maybe_drop(s, old);
        if (i < s->nsegs && s->segs[i] == old)
            i++;
    }
    s->cur = s->segs[0]->first;
    od_info("spool %s: %" PRIu64 " records pending in %zu segments (%" PRIu64 " bytes), next seq %" PRIu64,
            s->dir, s->live, s->nsegs, s->bytes, s->next_seq);
out:
    spool_seg_free(g);
    free(logs);
    free(acks);
    return rc;
}

/* ---- open / close ---- */

int od_spool_open(const struct od_spool_opts *o, struct od_spool **out)
{
    struct od_spool *s;
    pthread_condattr_t ca;
    int rc;

    if (o == NULL || o->dir == NULL || o->dir[0] == '\0')
        return -EINVAL;
    pthread_once(&crc_once, spool_crc_init);
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->dir_fd = -1;
    s->lock_fd = -1;
    s->max_bytes = o->max_bytes;
    s->seg_bytes = o->segment_bytes ? o->segment_bytes : SPOOL_SEG_DEFAULT;
    if (s->seg_bytes > SPOOL_SEG_MAX)
        s->seg_bytes = SPOOL_SEG_MAX;
    s->sync = o->sync != 0;
    s->group_delay_ms = s->sync ? o->group_delay_ms : 0;
    if (o->hot_max > 0 && o->hot_bytes > 0 && o->hot_free != NULL) {
        s->hot_cap = 1;
        while (s->hot_cap < o->hot_max && s->hot_cap < ((size_t)1 << 20))
            s->hot_cap <<= 1;
        s->hot = calloc(s->hot_cap, sizeof(*s->hot));
        if (s->hot == NULL)
            s->hot_cap = 0;     /* slower, not wrong */
        s->hot_max_bytes = o->hot_bytes;
        s->hot_free = o->hot_free;
    }
    /* Without fdatasync there is nothing to gain from zero-filling. */
    s->zeros = s->sync ? calloc(1, SPOOL_ZERO_PIECE) : NULL;
    s->zero_off = s->zeros == NULL;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->ra_mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->ready_cv, &ca);
    pthread_cond_init(&s->writer_cv, &ca);      /* spool_gather's deadline */
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&s->idle_cv, NULL);
    pthread_cond_init(&s->flush_cv, NULL);
    pthread_cond_init(&s->zero_cv, NULL);
    pthread_cond_init(&s->keeper_cv, NULL);

    s->dir = strdup(o->dir);
    if (s->dir == NULL) {
        rc = -ENOMEM;
        goto fail;
    }
    rc = od_mkdir_p(s->dir, 0700);
    if (rc < 0) {
        od_err("spool %s: cannot create directory: %s", s->dir, strerror(-rc));
        goto fail;
    }
    s->dir_fd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dir_fd < 0) {
        rc = -errno;
        od_err("spool %s: cannot open directory: %s", s->dir, strerror(errno));
        goto fail;
    }
    s->lock_fd = openat(s->dir_fd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lock_fd < 0 || flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
        od_err("spool %s: cannot lock: %s", s->dir,
               rc == -EBUSY ? "in use by another process" : strerror(-rc));
        goto fail;
    }
    rc = spool_recover(s);
    if (rc < 0)
        goto fail;
    rc = -pthread_create(&s->writer, NULL, spool_writer_main, s);
    if (rc < 0) {
        od_err("spool %s: cannot start the writer thread: %s", s->dir, strerror(-rc));
        goto fail;
    }
    s->writer_running = true;
    /* Without it, segments are deleted under the lock and nothing is
     * zero-filled: slower, not wrong. */
    if (pthread_create(&s->keeper, NULL, spool_keeper_main, s) == 0)
        s->keeper_running = true;
    else
        s->zero_off = true;
    *out = s;
    return 0;

fail:
    od_spool_close(s);
    return rc;
}

void od_spool_close(struct od_spool *s)
{
    if (s == NULL)
        return;
    if (s->writer_running) {
        pthread_mutex_lock(&s->mu);
        s->shutdown = true;
        s->closing = true;
        pthread_cond_signal(&s->writer_cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->writer, NULL);
        s->writer_running = false;
    }
    if (s->keeper_running) {
        pthread_mutex_lock(&s->mu);
        s->closing = true;
        pthread_cond_signal(&s->keeper_cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->keeper, NULL);
        s->keeper_running = false;
    }
    while (s->dead != NULL) {   /* dropped after the keeper's last look */
        struct spool_seg *g = s->dead;
        s->dead = g->dead_next;
        spool_seg_delete(s, g);
    }
    for (size_t i = 0; i < s->nsegs; i++)
        spool_seg_free(s->segs[i]);
    for (size_t i = 0; i < s->hot_cap; i++)
        spool_hot_drop(s, s->hot[i].obj);
    free(s->hot);
    free(s->segs);
    free(s->heap);
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    if (s->dir_fd >= 0)
        close(s->dir_fd);
    free(s->dir);
    pthread_cond_destroy(&s->ready_cv);
    pthread_cond_destroy(&s->writer_cv);
    pthread_cond_destroy(&s->idle_cv);
    pthread_cond_destroy(&s->flush_cv);
    pthread_cond_destroy(&s->zero_cv);
    pthread_cond_destroy(&s->keeper_cv);
    free(s->zeros);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->ra_mu);
    free(s->ra_buf);
    free(s);
}
