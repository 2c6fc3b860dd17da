/* util.h - small helpers shared by the core: time, parsing, paths, ids. */
#ifndef OD_UTIL_H
#define OD_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define OD_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

int64_t od_now_ms(void);        /* wall clock, Unix epoch milliseconds */
int64_t od_mono_ns(void);       /* monotonic nanoseconds (milliseconds: mono_ms(),
                                 * plugins/common/deadline.h) */

/* "250ms", "30s", "5m", "2h", "1d" (and "0") -> milliseconds.  0 or -EINVAL. */
int od_parse_duration(const char *s, int64_t *ms);
/* "512", "64K", "64KiB", "16MiB", "1GiB", "10MB", "2GB" -> bytes.  0 or -EINVAL. */
int od_parse_size(const char *s, int64_t *bytes);

/* Edit distance, for "did you mean". */
size_t od_edit_distance(const char *a, const char *b);

/* dir + "/" + rel, or a copy of rel when it is absolute.  NULL on ENOMEM. */
char *od_path_join(const char *dir, const char *rel);
/* The directory part of path (malloc'd); "." when there is none. */
char *od_dirname(const char *path);
/* mkdir -p.  0 or negative errno. */
int od_mkdir_p(const char *path, unsigned mode);
/* Read a whole small file; strips one trailing newline.  NULL + errno. */
char *od_read_file(const char *path, size_t *len);

/* A random RFC 4122 version 4 UUID in lower-case text (37 bytes with NUL). */
void od_uuid4(char out[37]);
/* Thread-safe uniform random number in [0, n); n > 0. */
uint64_t od_rand_below(uint64_t n);

/* Full-jitter exponential backoff: a random delay in [0, min(cap, base * 2^attempt)]
 * milliseconds; attempt counts from 0. */
int64_t od_backoff_ms(uint32_t attempt, int64_t base_ms, int64_t cap_ms);

/* strdup that returns NULL for NULL. */
char *od_strdup0(const char *s);

#endif
