/* spool-bench.c - appends per second into the durable spool with N threads.
 *
 * Not a test: it measures what group commit buys (N concurrent appenders
 * sharing one fdatasync per group).  Build with `make -C tests spool-bench`.
 *
 *     spool-bench [-t threads] [-n appends] [-s payload bytes] [-d dir] [-S]
 *
 * -S turns fdatasync off (sync = 0).  Without -d a temporary directory under
 * $TMPDIR (or /tmp) is used and removed afterwards; put it on the disk you
 * care about, since tmpfs makes fdatasync free.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "spool.h"

struct bench {
    struct od_spool *s;
    long             per_thread;
    size_t           size;
    int              failed;
};

static double bench_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *bench_thread(void *arg)
{
    struct bench *b = arg;
    char *buf = malloc(b->size ? b->size : 1);
    uint64_t seq;

    if (buf == NULL) {
        b->failed = 1;
        return NULL;
    }
    memset(buf, 'x', b->size);
    for (long i = 0; i < b->per_thread; i++) {
        int rc = od_spool_append(b->s, buf, b->size, &seq);
        if (rc != 0) {
            fprintf(stderr, "append: %s\n", strerror(-rc));
            b->failed = 1;
            break;
        }
    }
    free(buf);
    return NULL;
}

static void bench_rmdir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[4096];

    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) < (int)sizeof(path))
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

int main(int argc, char **argv)
{
    int threads = 64, sync = 1, opt, rc = EXIT_FAILURE;
    long total = 20000;
    size_t size = 512;
    const char *dir = NULL;
    char tmpl[4096];
    struct od_spool_opts o = { 0 };
    struct od_spool *s = NULL;
    struct bench *b = NULL;
    pthread_t *t = NULL;
    double t0, dt;

    while ((opt = getopt(argc, argv, "t:n:s:d:S")) != -1) {
        switch (opt) {
        case 't': threads = atoi(optarg); break;
        case 'n': total = atol(optarg); break;
        case 's': size = (size_t)atol(optarg); break;
        case 'd': dir = optarg; break;
        case 'S': sync = 0; break;
        default:
            fprintf(stderr, "usage: %s [-t threads] [-n appends] [-s bytes] [-d dir] [-S]\n", argv[0]);
            return EXIT_FAILURE;
        }
    }
    if (threads < 1 || total < threads) {
        fprintf(stderr, "need threads >= 1 and appends >= threads\n");
        return EXIT_FAILURE;
    }
    od_log_setup(ORDERD_LOG_WARN, OD_LOG_TEXT);
    if (dir == NULL) {
        const char *tmp = getenv("TMPDIR");
        snprintf(tmpl, sizeof(tmpl), "%s/spool-bench.XXXXXX", tmp ? tmp : "/tmp");
        if (mkdtemp(tmpl) == NULL) {
            perror("mkdtemp");
            return EXIT_FAILURE;
        }
    }
    o.dir = dir ? dir : tmpl;
    o.sync = sync;
    if ((rc = od_spool_open(&o, &s)) != 0) {
        fprintf(stderr, "od_spool_open %s: %s\n", o.dir, strerror(-rc));
        rc = EXIT_FAILURE;
        goto out;
    }
    rc = EXIT_FAILURE;
    b = calloc((size_t)threads, sizeof(*b));
    t = calloc((size_t)threads, sizeof(*t));
    if (b == NULL || t == NULL)
        goto out;

    t0 = bench_now();
    for (int i = 0; i < threads; i++) {
        b[i] = (struct bench){ .s = s, .per_thread = total / threads, .size = size };
        if (pthread_create(&t[i], NULL, bench_thread, &b[i]) != 0) {
            threads = i;
            break;
        }
    }
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    dt = bench_now() - t0;
    for (int i = 0; i < threads; i++)
        if (b[i].failed)
            goto out;
    total = total / threads * threads;
    printf("threads=%d payload=%zu durable=%s appends=%ld seconds=%.3f appends/s=%.0f"
           " mean_latency_ms=%.3f\n", threads, size, sync ? "yes" : "no", total, dt,
           (double)total / dt, dt * 1000.0 * threads / (double)total);
    rc = EXIT_SUCCESS;
out:
    od_spool_close(s);
    if (dir == NULL)
        bench_rmdir(tmpl);
    free(b);
    free(t);
    return rc;
}
