/* file.h - what the parts of the `file` plugin share: the two stage
 * descriptors and a few small I/O helpers (static inline, so nothing but the
 * plugin descriptor is ever exported). */
#ifndef FILE_PLUGIN_H
#define FILE_PLUGIN_H

#include <errno.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include <orderd/plugin.h>

extern const orderd_stage file_input_stage;
extern const orderd_stage file_publish_stage;

/* write() until done: a short write is not an error on regular files, only
 * a signal that the rest has to follow.  RETURNS 0 or negative errno. */
static inline int
file_write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

#endif
