/* sdnotify.h - systemd's notify protocol, spoken directly (no libsystemd). */
#ifndef OD_SDNOTIFY_H
#define OD_SDNOTIFY_H

#include <stdint.h>

/* Send state (e.g. "READY=1") to $NOTIFY_SOCKET; no-op without it. 0 or -errno. */
int od_sd_notify(const char *state);
/* Half of $WATCHDOG_USEC in milliseconds when the watchdog is on for us, else 0. */
int64_t od_sd_watchdog_interval_ms(void);

#endif
