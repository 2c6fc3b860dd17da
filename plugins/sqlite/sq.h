/* sq.h - what the sqlite plugin's files share: the two stage descriptors
 * and the database helpers both stages use (open, pragmas, schema). */
#ifndef SQ_H
#define SQ_H

#include <stdint.h>
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

/* Wall clock, Unix epoch milliseconds. */
int64_t sq_now_ms(void);

#endif
