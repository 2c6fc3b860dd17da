/* sqlite.c - the sqlite plugin: an embedded event store (ORDERD_STORE) and
 * a change feed over it (ORDERD_INPUT), both on one SQLite file.  The
 * stages live in sqlite_store.c and sqlite_feed.c; the shared opening and
 * schema code in sqlite_db.c. */
#include "sq.h"

static const orderd_stage *const sq_stages[] = {
    &sq_store_stage,
    &sq_feed_stage,
    NULL
};

ORDERD_PLUGIN(
    .name = "sqlite",
    .version = "1.0",
    .description = "embedded event stream + order snapshots in SQLite, and its change feed",
    .maintainer = "orderd developers",
    .stages = sq_stages);
