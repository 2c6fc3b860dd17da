/* util.c - small helpers shared by the core. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

int64_t od_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t od_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Parse "<digits><unit>" where the unit's multiplier comes from table. */
struct od_unit {
    const char *suffix;
    int64_t     mult;
};

static int parse_with_units(const char *s, const struct od_unit *units, int bare_ok, int64_t *out)
{
    const char *p = s;
    int64_t v = 0;

    if (s == NULL || !isdigit((unsigned char)*p))
        return -EINVAL;
    while (isdigit((unsigned char)*p)) {
        if (v > (INT64_MAX - 9) / 10)
            return -EINVAL;
        v = v * 10 + (*p++ - '0');
    }
    while (*p == ' ')
        p++;
    if (*p == '\0') {
        if (!bare_ok && v != 0)
            return -EINVAL;
        *out = v;
        return 0;
    }
    for (const struct od_unit *u = units; u->suffix; u++) {
        if (strcmp(p, u->suffix) == 0) {
            if (v != 0 && v > INT64_MAX / u->mult)
                return -EINVAL;
            *out = v * u->mult;
            return 0;
        }
    }
    return -EINVAL;
}

int od_parse_duration(const char *s, int64_t *ms)
{
    static const struct od_unit units[] = {
        { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 }, { "d", 86400000 },
        { NULL, 0 }
    };
    return parse_with_units(s, units, 0, ms);
}

int od_parse_size(const char *s, int64_t *bytes)
{
    static const struct od_unit units[] = {
        { "B", 1 },
        { "K", 1024 }, { "KiB", 1024 }, { "KB", 1000 }, { "k", 1024 },
        { "M", 1024 * 1024 }, { "MiB", 1024 * 1024 }, { "MB", 1000 * 1000 },
        { "G", 1024LL * 1024 * 1024 }, { "GiB", 1024LL * 1024 * 1024 }, { "GB", 1000LL * 1000 * 1000 },
        { "T", 1024LL * 1024 * 1024 * 1024 }, { "TiB", 1024LL * 1024 * 1024 * 1024 },
        { "TB", 1000LL * 1000 * 1000 * 1000 },
        { NULL, 0 }
    };
    return parse_with_units(s, units, 1, bytes);
}

size_t od_edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    size_t row[64];

    if (lb >= OD_ARRAY_LEN(row))
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t cost = (tolower((unsigned char)a[i - 1]) == tolower((unsigned char)b[j - 1])) ? 0 : 1;
            size_t best = diag + cost;
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

char *od_path_join(const char *dir, const char *rel)
{
    char *out;

    if (rel[0] == '/' || dir == NULL || dir[0] == '\0')
        return strdup(rel);
    if (asprintf(&out, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", rel) < 0)
        return NULL;
    return out;
}

char *od_dirname(const char *path)
{
    const char *slash = strrchr(path, '/');

    if (slash == NULL)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

int od_mkdir_p(const char *path, unsigned mode)
{
    char *copy = strdup(path);
    int rc = 0;

    if (copy == NULL)
        return -ENOMEM;
    for (char *p = copy + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(copy, (mode_t)mode) < 0 && errno != EEXIST) {
                rc = -errno;
                break;
            }
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
    free(copy);
    return rc;
}

char *od_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0;

    if (f == NULL)
        return NULL;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            char *nb;
            cap = cap ? cap * 2 : 8192;
            nb = realloc(buf, cap);
            if (nb == NULL) {
                free(buf);
                fclose(f);
                errno = ENOMEM;
                return NULL;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        int e = errno;
        free(buf);
        fclose(f);
        errno = e ? e : EIO;
        return NULL;
    }
    fclose(f);
    if (buf == NULL && (buf = malloc(1)) == NULL)
        return NULL;
    if (n > 0 && buf[n - 1] == '\n')
        n--;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

/* xoshiro256** per thread, seeded from getrandom(). */
static _Thread_local uint64_t rng_s[4];
static _Thread_local int rng_seeded;

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(void)
{
    if (!rng_seeded) {
        if (getrandom(rng_s, sizeof(rng_s), 0) != (ssize_t)sizeof(rng_s)) {
            uint64_t t = (uint64_t)od_mono_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&rng_s;
            for (int i = 0; i < 4; i++) {
                t += 0x9e3779b97f4a7c15ULL;
                uint64_t z = t;
                z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
                z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
                rng_s[i] = z ^ (z >> 31);
            }
        }
        rng_seeded = 1;
    }
    uint64_t result = rotl(rng_s[1] * 5, 7) * 9;
    uint64_t t = rng_s[1] << 17;
    rng_s[2] ^= rng_s[0];
    rng_s[3] ^= rng_s[1];
    rng_s[1] ^= rng_s[2];
    rng_s[0] ^= rng_s[3];
    rng_s[2] ^= t;
    rng_s[3] = rotl(rng_s[3], 45);
    return result;
}

uint64_t od_rand_below(uint64_t n)
{
    /* Lemire's rejection keeps the result unbiased. */
    uint64_t threshold = -n % n, r;
    do {
        r = rng_next();
    } while (r < threshold);
    return r % n;
}

void od_uuid4(char out[37])
{
    uint8_t b[16];
    uint64_t a = rng_next(), c = rng_next();

    memcpy(b, &a, 8);
    memcpy(b + 8, &c, 8);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    /* By hand: snprintf() with 16 conversions was a visible part of
     * creating a message. */
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 15];
    }
    *o = '\0';
}

int64_t od_backoff_ms(uint32_t attempt, int64_t base_ms, int64_t cap_ms)
{
    int64_t ceiling = base_ms;

    if (base_ms <= 0 || cap_ms <= 0)
        return 0;
    for (uint32_t i = 0; i < attempt && ceiling < cap_ms; i++)
        ceiling *= 2;
    if (ceiling > cap_ms)
        ceiling = cap_ms;
    return (int64_t)od_rand_below((uint64_t)ceiling + 1);
}

char *od_strdup0(const char *s)
{
    return s ? strdup(s) : NULL;
}
