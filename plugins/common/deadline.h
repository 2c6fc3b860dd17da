/* deadline.h - CLOCK_MONOTONIC for timers: milliseconds now, and "ms
 * milliseconds from now" as an absolute time for pthread_cond_timedwait()
 * on condition variables set to that clock (pthread_condattr_setclock).
 * Header only: the core and the plugins that keep time include it. */
#ifndef DEADLINE_H
#define DEADLINE_H

#include <stdint.h>
#include <time.h>

/* Monotonic milliseconds (since boot): for intervals, never for dates. */
static inline int64_t
mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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
