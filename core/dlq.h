/* dlq.h - the core's dead-letter area: one NDJSON file per pipeline under
 * <state_dir>/deadletter/, each line {id, pipeline, stage, reason, time, delivery_count,
 * properties, body}, fdatasync'ed before the input is told to complete. */
#ifndef OD_DLQ_H
#define OD_DLQ_H

#include <jansson.h>
#include <orderd/plugin.h>

/* RETURNS: 0 or negative errno. Thread-safe. */
int od_dlq_append(const char *state_dir, const char *pipeline, const char *stage,
                  const orderd_msg *m, const char *reason);
/* Path of a pipeline's dead-letter file (malloc'd). */
char *od_dlq_path(const char *state_dir, const char *pipeline);

#endif

/* Read a pipeline's dead letters (oldest first) into a new JSON array; a torn
 * last line (power loss mid-write) is skipped.  A missing file is empty.
 * RETURNS: 0 or negative errno. */
int od_dlq_read(const char *state_dir, const char *pipeline, json_t **entries);

/* Under the dead-letter lock: read the entries, call fn for each (index,
 * entry); entries for which fn returns 1 are removed, the file rewritten
 * atomically (temp file, fsync, rename).  fn returns 0 to keep, -1 to stop.
 * RETURNS: number removed, or negative errno. */
int od_dlq_edit(const char *state_dir, const char *pipeline,
                int (*fn)(void *arg, size_t index, json_t *entry), void *arg);
