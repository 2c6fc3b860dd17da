/* deadline.h - "ms milliseconds from now" as an absolute CLOCK_MONOTONIC
 * time, for pthread_cond_timedwait() on condition variables set to that
 * clock (pthread_condattr_setclock).  Header only: the core and the plugins
 * that wait on timers include it. */
#ifndef DEADLINE_H
#define DEADLINE_H

#include <stdint.h>
#include <time.h>

static inline struct timespec
deadline_after_ms(int64_t ms)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t) (ms / 1000);
    ts.tv_nsec += (long) (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

#endif
