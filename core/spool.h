/* spool.h - the durable on-disk queue in front of a pipeline (see README
 * "Durability").  Append-only segment files of checksummed records; appends
 * from many threads share one fdatasync (group commit); a reader hands
 * records out in order; completed records are remembered so a restart
 * redelivers only what was not completed; a segment is deleted once every
 * record in it is completed; a size limit pushes back with -ENOSPC.  After
 * a crash (kill -9, power loss) open() keeps every record whose append had
 * returned and discards only a torn tail.
 */
#ifndef OD_SPOOL_H
#define OD_SPOOL_H

#include <stddef.h>
#include <stdint.h>

struct od_spool;

struct od_spool_opts {
    const char *dir;             /* created if missing */
    uint64_t    max_bytes;       /* appends fail with -ENOSPC beyond this (0: no limit) */
    uint64_t    segment_bytes;   /* roll to a new segment past this size */
    int         sync;            /* 1: fdatasync before append returns (durable mode) */
    /* With sync: how long the writer thread may let a group of asynchronous
     * appends gather while appends are concurrent (see spool.c GATHERING);
     * 0: it writes whatever is queued at once. */
    int64_t     group_delay_ms;
    /* In-memory copies (the *_obj appends): at most hot_max objects whose
     * records add up to at most hot_bytes are kept; 0 keeps none.
     * hot_free frees one the spool does not hand out. */
    size_t      hot_max;
    uint64_t    hot_bytes;
    void      (*hot_free)(void *obj);
};

/* Open (and recover) a spool.  0 or negative errno. */
int  od_spool_open(const struct od_spool_opts *o, struct od_spool **out);
void od_spool_close(struct od_spool *s);

/* Append one record; returns once it is durable (when o->sync).  *seq gets its
 * number (> 0).  RETURNS: 0, -ENOSPC (full), -EIO, -ENOMEM, -ESHUTDOWN (closing). */
int  od_spool_append(struct od_spool *s, const void *data, size_t len, uint64_t *seq);

/* Completion of od_spool_append_async: rc as od_spool_append returns. */
typedef void (*od_spool_done_fn)(void *arg, int rc, uint64_t seq);

/* Append without waiting: the record joins the next group commit and cb is
 * called once it is durable (or the write failed), on the thread that led
 * that group (never inside this call).  data must be malloc'd: the spool
 * takes it over, also on failure.  *seq gets the record's number before
 * this returns, so a caller may file it before the record becomes visible.
 * RETURNS: 0 (cb will be called) or -ENOSPC, -EIO, -EMSGSIZE, -ENOMEM,
 * -ESHUTDOWN (cb will not be called). */
int  od_spool_append_async(struct od_spool *s, void *data, size_t len, od_spool_done_fn cb,
                           void *arg, uint64_t *seq);
/* The same, but the writer thread is not woken: the caller promises to call
 * od_spool_flush() soon (an event loop does, once per turn), so the thread
 * that read the requests writes them, with no hand-over to another thread.
 * Another group's leader may still take the record along. */
int  od_spool_append_deferred(struct od_spool *s, void *data, size_t len, od_spool_done_fn cb,
                              void *arg, uint64_t *seq);
/* The same appends, also leaving obj, the caller's in-memory form of the
 * record (a parsed message), with the spool: once the record is durable it
 * is kept, while the hot_max / hot_bytes budget has room, so that
 * od_spool_next_obj hands it out instead of reading the record back.  The
 * spool owns obj from the call on, also on failure (hot_free); obj may be
 * NULL.  od_spool_append_obj borrows data like od_spool_append;
 * od_spool_append_async_obj takes data over like od_spool_append_async
 * (defer: as od_spool_append_deferred). */
int  od_spool_append_obj(struct od_spool *s, const void *data, size_t len, void *obj,
                         uint64_t *seq);
int  od_spool_append_async_obj(struct od_spool *s, void *data, size_t len, void *obj, int defer,
                               od_spool_done_fn cb, void *arg, uint64_t *seq);
/* Returns once every record appended before the call is written (or failed)
 * and its callback has been called: leads the groups itself while nobody
 * else leads, waits for the leader otherwise. */
void od_spool_flush(struct od_spool *s);

/* Next record not yet handed out, in append order; waits up to timeout_ms
 * (-1: forever) for one.  *data is malloc'd for the caller.
 * RETURNS: 0, -EAGAIN (timeout), -ESHUTDOWN (closing). */
int  od_spool_next(struct od_spool *s, uint64_t *seq, void **data, size_t *len, int64_t timeout_ms);
/* od_spool_next, but a record whose in-memory copy the spool still keeps
 * comes back as *obj (the caller owns it; *data is NULL) without being
 * read; any other as *data (and *obj NULL). */
int  od_spool_next_obj(struct od_spool *s, uint64_t *seq, void **data, size_t *len, void **obj,
                       int64_t timeout_ms);
/* Wake any od_spool_next waiting (e.g. on stop); later calls return -ESHUTDOWN.
 * Appends already queued are written and their callbacks called first. */
void od_spool_shutdown(struct od_spool *s);

/* Mark a record completed (processed or dead-lettered).  Idempotent. */
void od_spool_complete(struct od_spool *s, uint64_t seq);
/* od_spool_complete() for n seqs at once: one lock, one ack write per run
 * of records in the same segment. */
void od_spool_complete_many(struct od_spool *s, const uint64_t *seqs, size_t n);
/* Hand a record out again later (abandoned): it comes back from od_spool_next. */
void od_spool_requeue(struct od_spool *s, uint64_t seq);

struct od_spool_stats {
    uint64_t bytes;         /* on disk */
    uint64_t records;       /* not yet completed */
    uint64_t segments;
    uint64_t commits;       /* groups written (each one write, and one fdatasync when syncing) */
    uint64_t committed;     /* records in those groups */
    uint64_t sync_ns;       /* time spent in those groups' fdatasync */
    uint64_t hot_hits;      /* records handed out from their in-memory copy */
    uint64_t reads;         /* records handed out by reading them back */
};
void od_spool_stats(struct od_spool *s, struct od_spool_stats *st);

/* The records' checksum, CRC32C: as the spool computes it (the SSE4.2
 * instruction where the CPU has it), and by table alone.  For tests. */
uint32_t od_spool_crc32c(const void *buf, size_t len);
uint32_t od_spool_crc32c_table(const void *buf, size_t len);

#endif
