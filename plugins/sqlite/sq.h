/* sq.h - what the sqlite plugin's files share: the two stage descriptors
 * and the database helpers both stages use (open, pragmas, schema). */
#ifndef SQ_H
#define SQ_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <sqlite3.h>
#include <orderd/plugin.h>

/* Version of the schema this build writes; kept in PRAGMA user_version. */
#define SQ_SCHEMA_VERSION 2

extern const orderd_stage sq_store_stage;   /* sqlite_store.c */
extern const orderd_stage sq_feed_stage;    /* sqlite_feed.c */

/* How a connection is opened. */
struct sq_open_opts {
    const char *path;
    int64_t     busy_timeout_ms;
    int         synchronous_full;     /* 1: PRAGMA synchronous=FULL, 0: NORMAL */
    int64_t     journal_size_limit;   /* bytes, < 0 leaves SQLite's default */
    int64_t     checkpoint_bytes;     /* WAL size that triggers a checkpoint; 0: SQLite's
                                         default; < 0: never (another connection does) */
    int         readonly;             /* lookups: no schema work, no writes */
    int64_t     cache_bytes;          /* page cache; 0: SQLite's default */
};

/* SQ_OPEN - open path, switch it to WAL, set the pragmas and, unless
 * readonly, create or migrate the schema.
 * RETURNS: 0 and the connection in *out, or negative errno after logging. */
int sq_open(orderd_inst *inst, const orderd_host *h, const struct sq_open_opts *o,
            sqlite3 **out);

/* SQ_PREPARE - prepare a statement kept for the connection's lifetime.
 * RETURNS: 0 or -EIO after logging. */
int sq_prepare(orderd_inst *inst, const orderd_host *h, sqlite3 *db, const char *sql,
               sqlite3_stmt **out);

/* SQ_EXEC - run SQL without results.  RETURNS: the SQLite result code. */
int sq_exec(sqlite3 *db, const char *sql);

/* SQ_ERRNO - map a SQLite result code to a negative errno. */
int sq_errno(int rc);

/* SQ_TRANSIENT - 1 when an error may go away by itself (locks, I/O, a full
 * disk), so the work should be retried rather than rejected. */
int sq_transient(int rc);

/* ---- sqlite_tail.c: the latest committed events, for feeds of the same file ---- */

/* One committed events row; immutable, shared by reference count. */
struct sq_event {
    _Atomic int  refs;
    int64_t      seq;
    size_t       size;                      /* bytes allocated, for the tail's budget */
    const char  *id, *stream, *type, *version;  /* type may be NULL; version in decimal */
    const char  *body;                      /* the row's body text, NUL-terminated */
    size_t       body_len;
    char         data[];
};

struct sq_tail;

/* SQ_EVENT_NEW - a row as the store inserted it, with one reference.
 * RETURNS: the event, or NULL when out of memory. */
struct sq_event *sq_event_new(int64_t seq, const char *id, const char *stream, const char *type,
                              size_t type_len, int64_t version, const char *body, size_t body_len);
void sq_event_unref(struct sq_event *ev);

/* SQ_TAIL_OPEN - the tail of the database file at path (found by device and
 * inode), shared with every other user of that file; sq_tail_close() each.
 * RETURNS: the tail, or NULL (no such file, no memory): go without. */
struct sq_tail *sq_tail_open(const char *path);
void sq_tail_close(struct sq_tail *t);

/* A feed starts (+1) or stops (-1) taking from t.  sq_tail_wanted(): is
 * any feed taking, so that the store should publish? */
void sq_tail_feed(struct sq_tail *t, int delta);
int sq_tail_wanted(struct sq_tail *t);

/* SQ_TAIL_PUBLISH - hand over n events just committed, in seq order (takes
 * their references) and wake the waiting feeds.  Call under the writer's
 * lock, after COMMIT succeeded. */
void sq_tail_publish(struct sq_tail *t, struct sq_event **evs, size_t n);

/* SQ_TAIL_TAKE - up to max consecutive events from seq after + 1 on, each
 * with a reference for the caller; *gen is the tail's generation, for
 * sq_tail_wait().  RETURNS: how many (0: the tail does not hold after + 1). */
size_t sq_tail_take(struct sq_tail *t, int64_t after, struct sq_event **out, size_t max,
                    uint64_t *gen);

/* Sleep up to ms unless something was published or woken since gen. */
void sq_tail_wait(struct sq_tail *t, uint64_t gen, int64_t ms);
void sq_tail_wake(struct sq_tail *t);

/* Wall clock, Unix epoch milliseconds. */
int64_t sq_now_ms(void);

#endif
