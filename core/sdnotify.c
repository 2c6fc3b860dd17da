/* sdnotify.c - systemd's notify protocol, spoken directly.
 *
 * The protocol is one datagram of "KEY=VALUE\n..." to the AF_UNIX socket
 * named by $NOTIFY_SOCKET (a leading '@' means the abstract namespace).  It
 * is stable and tiny, so orderd speaks it itself instead of linking
 * libsystemd: one dependency fewer for every build and no behaviour lost. */
#include "config.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "sdnotify.h"

int od_sd_notify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    size_t plen;
    socklen_t salen;
    int fd, rc = 0;

    if (path == NULL || path[0] == '\0')
        return 0;
    plen = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || plen >= sizeof(sa.sun_path))
        return -EINVAL;
    memcpy(sa.sun_path, path, plen);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0';
    salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen + (path[0] == '/' ? 1 : 0));
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen) < 0)
        rc = -errno;
    close(fd);
    return rc;
}

int64_t od_sd_watchdog_interval_ms(void)
{
    const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
    long long v;
    char *end;

    if (usec == NULL)
        return 0;
    if (pid && strtol(pid, NULL, 10) != (long)getpid())
        return 0;
    v = strtoll(usec, &end, 10);
    if (*end || v <= 0)
        return 0;
    return v / 2000;   /* half the interval, in ms */
}
