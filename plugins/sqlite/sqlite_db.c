/* sqlite_db.c - opening the database the same way for every stage: WAL,
 * pragmas, and the schema with its migrations.
 *
 * Schema history (PRAGMA user_version):
 *   1  events (append-only stream), snapshots (latest document per id),
 *      cursors (feed consumers' positions).
 *   2  events: one index, UNIQUE(stream, id), in place of UNIQUE(id) and
 *      (stream, version).  Event ids are hashes, so an index on the id alone
 *      took each insert to a random page: about half the log's volume.
 * A migration to N+1 is one more step in sq_schema(), run in the same
 * BEGIN IMMEDIATE transaction, so two stages opening one file at once
 * cannot both create it.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "sq.h"

#define SQ_PAGE_SIZE "16384"

/* The events table of version 2 (no UNIQUE on id), created as events_v2. */
#define SQ_EVENTS_V2(name)                           \
    "CREATE TABLE " name " ("                        \
    "  seq     INTEGER PRIMARY KEY AUTOINCREMENT,"   \
    "  id      TEXT NOT NULL,"                       \
    "  stream  TEXT NOT NULL,"                       \
    "  version INTEGER,"                             \
    "  type    TEXT,"                                \
    "  time    TEXT,"                                \
    "  body    TEXT NOT NULL);"

/* Version 1 to 2: events copied into the new table in seq order (seq
 * values, and so the feeds' cursors, stay), the old table and its two
 * indexes dropped.  sq_schema() carries the AUTOINCREMENT counter over. */
static const char sq_migrate_v2[] =
    SQ_EVENTS_V2("events_v2")
    "INSERT INTO events_v2(seq, id, stream, version, type, time, body)"
    "  SELECT seq, id, stream, version, type, time, body FROM events ORDER BY seq;"
    "DROP TABLE events;"
    "ALTER TABLE events_v2 RENAME TO events;"
    "CREATE UNIQUE INDEX events_stream_id ON events(stream, id);";

static const char sq_schema_v2[] =
    SQ_EVENTS_V2("IF NOT EXISTS events")
    "CREATE UNIQUE INDEX IF NOT EXISTS events_stream_id ON events(stream, id);"
    "CREATE TABLE IF NOT EXISTS snapshots ("
    "  id         TEXT PRIMARY KEY,"
    "  version    INTEGER NOT NULL,"
    "  status     TEXT,"
    "  body       TEXT NOT NULL,"
    "  updated_ms INTEGER);"
    "CREATE TABLE IF NOT EXISTS cursors ("
    "  consumer   TEXT PRIMARY KEY,"
    "  seq        INTEGER NOT NULL,"
    "  updated_ms INTEGER);";

int
sq_exec(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

int
sq_errno(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW:
        return 0;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return -EBUSY;
    case SQLITE_NOMEM:
        return -ENOMEM;
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
        return -EACCES;
    case SQLITE_FULL:
        return -ENOSPC;
    case SQLITE_CANTOPEN:
    case SQLITE_NOTFOUND:
        return -ENOENT;
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
        return -EINVAL;
    default:
        return -EIO;
    }
}

int
sq_transient(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_NOMEM:
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_CANTOPEN:
    case SQLITE_PROTOCOL:
    case SQLITE_INTERRUPT:
        return 1;
    default:
        return 0;
    }
}

int64_t
sq_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int
sq_prepare(orderd_inst *inst, const orderd_host *h, sqlite3 *db, const char *sql,
           sqlite3_stmt **out)
{
    int rc;

    /* PERSISTENT: these statements live as long as the connection */
    rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL);
    if (rc != SQLITE_OK) {
        h->log(inst, ORDERD_LOG_ERR, "sqlite: cannot prepare \"%s\": %s", sql,
               sqlite3_errmsg(db));
        *out = NULL;
        return sq_errno(rc) ? sq_errno(rc) : -EIO;
    }
    return 0;
}

/* One integer from sql (0 when there is no row).  RETURNS: a SQLite code. */
static int
sq_int(sqlite3 *db, const char *sql, sqlite3_int64 *out)
{
    sqlite3_stmt *st;
    int           rc;

    *out = 0;
    rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
    sqlite3_finalize(st);
    return rc;
}

/* Schema 1 to 2, inside sq_schema()'s transaction. */
static int
sq_migrate_to_v2(orderd_inst *inst, const orderd_host *h, sqlite3 *db, const char *path)
{
    sqlite3_int64 counter, rows;
    char          sql[192];
    int           rc;

    rc = sq_int(db, "SELECT count(*) FROM events", &rows);
    if (rc == SQLITE_OK)
        rc = sq_int(db, "SELECT seq FROM sqlite_sequence WHERE name = 'events'", &counter);
    if (rc != SQLITE_OK)
        return rc;
    h->log(inst, ORDERD_LOG_INFO, "sqlite: %s: upgrading the schema to version 2 "
           "(one index on events by order); copying %lld events", path, (long long) rows);
    rc = sq_exec(db, sq_migrate_v2);
    if (rc != SQLITE_OK)
        return rc;
    /* AUTOINCREMENT never hands out a seq again, even one whose row is
     * gone: the new table's counter is the old one (or its highest seq) */
    snprintf(sql, sizeof(sql), "DELETE FROM sqlite_sequence WHERE name = 'events';"
             "INSERT INTO sqlite_sequence(name, seq)"
             " SELECT 'events', max(%lld, coalesce(max(seq), 0)) FROM events;",
             (long long) counter);
    return sq_exec(db, sql);
}

static int
sq_user_version(sqlite3 *db, int *version)
{
    sqlite3_stmt *st;
    int           rc;

    rc = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *version = sqlite3_column_int(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Create or migrate the schema in one write transaction. */
static int
sq_schema(orderd_inst *inst, const orderd_host *h, sqlite3 *db, const char *path)
{
    char sql[64];
    int  version = 0;
    int  rc;

    rc = sq_exec(db, "BEGIN IMMEDIATE");
    if (rc != SQLITE_OK) {
        h->log(inst, ORDERD_LOG_ERR, "sqlite: %s: cannot lock for schema setup: %s", path,
               sqlite3_errmsg(db));
        return sq_errno(rc);
    }
    rc = sq_user_version(db, &version);
    if (rc != SQLITE_OK)
        goto fail;
    if (version > SQ_SCHEMA_VERSION) {
        /* never guess at a newer layout: refusing keeps the data intact */
        h->log(inst, ORDERD_LOG_ERR,
               "sqlite: %s: schema version %d is newer than this plugin's %d; upgrade orderd",
               path, version, SQ_SCHEMA_VERSION);
        sq_exec(db, "ROLLBACK");
        return -EPROTO;
    }
    if (version < 1) {
        rc = sq_exec(db, sq_schema_v2);
        if (rc != SQLITE_OK)
            goto fail;
    } else if (version < 2) {
        rc = sq_migrate_to_v2(inst, h, db, path);
        if (rc != SQLITE_OK)
            goto fail;
    }
    /* future: if (version < 3) { ... } */
    if (version != SQ_SCHEMA_VERSION) {
        snprintf(sql, sizeof(sql), "PRAGMA user_version=%d", SQ_SCHEMA_VERSION);
        rc = sq_exec(db, sql);
        if (rc != SQLITE_OK)
            goto fail;
    }
    rc = sq_exec(db, "COMMIT");
    if (rc != SQLITE_OK)
        goto fail;
    return 0;

fail:
    h->log(inst, ORDERD_LOG_ERR, "sqlite: %s: schema setup failed: %s", path,
           sqlite3_errmsg(db));
    sq_exec(db, "ROLLBACK");
    return sq_errno(rc) ? sq_errno(rc) : -EIO;
}

/* Switch to WAL: readers (lookups, the feed) never block the writer. */
static int
sq_wal(orderd_inst *inst, const orderd_host *h, sqlite3 *db, const char *path)
{
    sqlite3_stmt *st;
    const char   *mode;
    int           rc, ret = 0;

    rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        sqlite3_finalize(st);
        goto fail;
    }
    mode = (const char *) sqlite3_column_text(st, 0);
    if (mode == NULL || strcmp(mode, "wal") != 0) {
        /* e.g. a file system without shared memory: concurrency would suffer silently */
        h->log(inst, ORDERD_LOG_ERR, "sqlite: %s: cannot use WAL mode (journal_mode is %s)",
               path, mode ? mode : "?");
        ret = -ENOTSUP;
    }
    sqlite3_finalize(st);
    return ret;

fail:
    h->log(inst, ORDERD_LOG_ERR, "sqlite: %s: cannot set WAL mode: %s", path,
           sqlite3_errmsg(db));
    return sq_errno(rc) ? sq_errno(rc) : -EIO;
}

int
sq_open(orderd_inst *inst, const orderd_host *h, const struct sq_open_opts *o,
        sqlite3 **out)
{
    sqlite3 *db = NULL;
    char     sql[96];
    int      flags, rc, ret;

    *out = NULL;
    if (!sqlite3_threadsafe()) {
        h->log(inst, ORDERD_LOG_ERR, "sqlite: the SQLite library was built without thread support");
        return -ENOTSUP;
    }
    /* NOMUTEX: every connection is used by one thread at a time, under our locks */
    flags = SQLITE_OPEN_NOMUTEX
          | (o->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    rc = sqlite3_open_v2(o->path, &db, flags, NULL);
    if (rc != SQLITE_OK) {
        h->log(inst, ORDERD_LOG_ERR, "sqlite: cannot open %s: %s", o->path,
               db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        ret = sq_errno(rc) ? sq_errno(rc) : -EIO;
        goto fail;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, o->busy_timeout_ms > INT32_MAX ? INT32_MAX
                                                            : (int) o->busy_timeout_ms);
    if (o->readonly) {
        *out = db;
        return 0;
    }
    /* A new file gets 16 KiB pages (an existing one keeps its own): an
     * order's rows take ~2 KB, so a batch is a quarter as many pages to
     * write to the log and copy at checkpoints, each a system call, and the
     * trees are shallower; a third less CPU per stored order in the
     * experiment recorded in README.md. */
    rc = sq_exec(db, "PRAGMA page_size=" SQ_PAGE_SIZE);
    if (rc != SQLITE_OK)
        goto sqlfail;
    ret = sq_wal(inst, h, db, o->path);
    if (ret < 0)
        goto fail;
    /* with WAL, FULL syncs the log on every commit: a committed batch survives power loss */
    rc = sq_exec(db, o->synchronous_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
    if (rc != SQLITE_OK)
        goto sqlfail;
    if (o->checkpoint_bytes < 0) {
        rc = sq_exec(db, "PRAGMA wal_autocheckpoint=0");
        if (rc != SQLITE_OK)
            goto sqlfail;
    } else if (o->checkpoint_bytes > 0) {
        /* wal_autocheckpoint counts pages */
        sqlite3_int64 page = 4096, pages;
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db, "PRAGMA page_size", -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 0) > 0)
            page = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        pages = o->checkpoint_bytes / page;
        snprintf(sql, sizeof(sql), "PRAGMA wal_autocheckpoint=%lld",
                 (long long) (pages > 0 ? pages : 1));
        rc = sq_exec(db, sql);
        if (rc != SQLITE_OK)
            goto sqlfail;
    }
    if (o->journal_size_limit >= 0) {
        snprintf(sql, sizeof(sql), "PRAGMA journal_size_limit=%lld",
                 (long long) o->journal_size_limit);
        rc = sq_exec(db, sql);
        if (rc != SQLITE_OK)
            goto sqlfail;
    }
    if (o->cache_bytes > 0) {
        /* negative: a size in KiB, not a number of pages */
        snprintf(sql, sizeof(sql), "PRAGMA cache_size=-%lld",
                 (long long) ((o->cache_bytes + 1023) / 1024));
        rc = sq_exec(db, sql);
        if (rc != SQLITE_OK)
            goto sqlfail;
    }
    ret = sq_schema(inst, h, db, o->path);
    if (ret < 0)
        goto fail;
    *out = db;
    return 0;

sqlfail:
    h->log(inst, ORDERD_LOG_ERR, "sqlite: %s: %s", o->path, sqlite3_errmsg(db));
    ret = sq_errno(rc) ? sq_errno(rc) : -EIO;
fail:
    sqlite3_close(db);
    return ret;
}
