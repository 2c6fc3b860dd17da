/* log.c - levelled logging to stderr, as text or JSON lines, secrets redacted.
 *
 * One write(2) per line keeps lines from different threads whole.  Secret
 * values registered by the configuration loader are replaced by "***" in
 * every line, whoever wrote it: a plugin cannot leak a key by logging it.
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "log.h"

static int log_level = ORDERD_LOG_INFO;
static enum od_log_format log_format = OD_LOG_TEXT;

static pthread_mutex_t secrets_lock = PTHREAD_MUTEX_INITIALIZER;
static char **secrets;
static size_t nsecrets;

void od_log_setup(int level, enum od_log_format fmt)
{
    log_level = level;
    log_format = fmt;
}

int od_log_level(void)
{
    return log_level;
}

static const struct {
    const char *name;
    int level;
} level_names[] = {
    { "error", ORDERD_LOG_ERR }, { "warn", ORDERD_LOG_WARN },
    { "info", ORDERD_LOG_INFO }, { "debug", ORDERD_LOG_DEBUG },
};

int od_log_level_parse(const char *s)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
        if (strcmp(s, level_names[i].name) == 0)
            return level_names[i].level;
    return -1;
}

const char *od_log_level_name(int level)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
        if (level_names[i].level == level)
            return level_names[i].name;
    return level < ORDERD_LOG_ERR ? "error" : "debug";
}

void od_log_add_secret(const char *secret)
{
    char **grown;

    /* Very short values would redact ordinary words; they are not real keys. */
    if (secret == NULL || strlen(secret) < 4)
        return;
    pthread_mutex_lock(&secrets_lock);
    for (size_t i = 0; i < nsecrets; i++)
        if (strcmp(secrets[i], secret) == 0)
            goto out;
    grown = realloc(secrets, (nsecrets + 1) * sizeof(*secrets));
    if (grown != NULL) {
        secrets = grown;
        if ((secrets[nsecrets] = strdup(secret)) != NULL)
            nsecrets++;
    }
out:
    pthread_mutex_unlock(&secrets_lock);
}

void od_log_clear_secrets(void)
{
    pthread_mutex_lock(&secrets_lock);
    for (size_t i = 0; i < nsecrets; i++)
        free(secrets[i]);
    free(secrets);
    secrets = NULL;
    nsecrets = 0;
    pthread_mutex_unlock(&secrets_lock);
}

char *od_log_redact(const char *s)
{
    char *out = strdup(s);

    if (out == NULL)
        return NULL;
    pthread_mutex_lock(&secrets_lock);
    for (size_t i = 0; i < nsecrets; i++) {
        size_t slen = strlen(secrets[i]);
        char *hit;
        while ((hit = strstr(out, secrets[i])) != NULL) {
            /* "***" is never longer than a registered secret (>= 4 bytes). */
            memcpy(hit, "***", 3);
            memmove(hit + 3, hit + slen, strlen(hit + slen) + 1);
        }
    }
    pthread_mutex_unlock(&secrets_lock);
    return out;
}

static void write_all(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(STDERR_FILENO, buf, len);
        if (n <= 0)
            return;
        buf += n;
        len -= (size_t)n;
    }
}

void od_vlogf(int level, const char *pipeline, const char *stage, const char *plugin,
              const char *fmt, va_list ap)
{
    char msg[2048], *clean, *line = NULL;
    char ts[40];
    struct timespec now;
    struct tm tm;
    int n;

    if (level > log_level)
        return;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    clean = od_log_redact(msg);
    if (clean == NULL)
        return;

    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    n = (int)strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - (size_t)n, ".%03ldZ", now.tv_nsec / 1000000);

    if (log_format == OD_LOG_JSON) {
        json_t *j = json_object();
        json_object_set_new(j, "time", json_string(ts));
        json_object_set_new(j, "level", json_string(od_log_level_name(level)));
        if (pipeline)
            json_object_set_new(j, "pipeline", json_string(pipeline));
        if (stage)
            json_object_set_new(j, "stage", json_string(stage));
        if (plugin)
            json_object_set_new(j, "plugin", json_string(plugin));
        json_object_set_new(j, "msg", json_string(clean));
        char *text = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        if (text && asprintf(&line, "%s\n", text) < 0)
            line = NULL;
        free(text);
    } else {
        char where[512] = "";
        if (pipeline || stage || plugin)
            snprintf(where, sizeof(where), "[%s%s%s%s%s] ",
                     pipeline ? pipeline : "",
                     stage ? "/" : "", stage ? stage : "",
                     plugin ? " " : "", plugin ? plugin : "");
        if (asprintf(&line, "%s %-5s %s%s\n", ts, od_log_level_name(level), where, clean) < 0)
            line = NULL;
    }
    if (line)
        write_all(line, strlen(line));
    free(line);
    free(clean);
}

void od_logf(int level, const char *pipeline, const char *stage, const char *plugin,
             const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    od_vlogf(level, pipeline, stage, plugin, fmt, ap);
    va_end(ap);
}
