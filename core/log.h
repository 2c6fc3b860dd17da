/* log.h - levelled logging to stderr, as text or JSON lines, secrets redacted. */
#ifndef OD_LOG_H
#define OD_LOG_H

#include <stdarg.h>
#include <orderd/plugin.h>

enum od_log_format { OD_LOG_TEXT, OD_LOG_JSON };

void od_log_setup(int level, enum od_log_format fmt);
int  od_log_level(void);
/* "error", "warn", "info", "debug" -> ORDERD_LOG_*; -1 if unknown. */
int  od_log_level_parse(const char *s);
const char *od_log_level_name(int level);

/* Every later log line has each registered secret replaced by "***". */
void od_log_add_secret(const char *secret);
void od_log_clear_secrets(void);
/* Copy of s with registered secrets replaced (for dumps).  Caller frees. */
char *od_log_redact(const char *s);

/* pipeline, stage and plugin may be NULL; they prefix the line. */
void od_vlogf(int level, const char *pipeline, const char *stage, const char *plugin,
              const char *fmt, va_list ap) ORDERD_PRINTF(5, 0);
void od_logf(int level, const char *pipeline, const char *stage, const char *plugin,
             const char *fmt, ...) ORDERD_PRINTF(5, 6);

#define od_err(...)   od_logf(ORDERD_LOG_ERR, NULL, NULL, NULL, __VA_ARGS__)
#define od_warn(...)  od_logf(ORDERD_LOG_WARN, NULL, NULL, NULL, __VA_ARGS__)
#define od_info(...)  od_logf(ORDERD_LOG_INFO, NULL, NULL, NULL, __VA_ARGS__)
#define od_debug(...) od_logf(ORDERD_LOG_DEBUG, NULL, NULL, NULL, __VA_ARGS__)

#endif
