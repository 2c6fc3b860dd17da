/* eventgrid.h - internals shared by the eventgrid plugin's files.  Nothing
 * here is exported: the plugin is built with -fvisibility=hidden and only
 * the descriptor leaves the .so. */
#ifndef EG_EVENTGRID_H
#define EG_EVENTGRID_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <orderd/plugin.h>

/* ---- eg_sas.c: the Event Grid SAS token (pure, no I/O) ---- */

/* EG_SAS_EXPIRY - write t (UTC) as the SDK does, "M/d/yyyy h:mm:ss tt"
 * (en-US, midnight is "12:00:00 AM").  RETURNS: 0, or -EINVAL. */
int eg_sas_expiry(time_t t, char *out, size_t len);

/* EG_SAS_TOKEN - "r=<enc resource>&e=<enc expiry>&s=<enc sig>" where the
 * resource is endpoint + "?apiVersion=" + api_version and the signature is
 * base64(HMAC-SHA256(base64decode(key), "r=...&e=...")).
 * RETURNS: a malloc'ed token, or NULL (errno: EINVAL bad key, ENOMEM). */
char *eg_sas_token(const char *endpoint, const char *api_version, const char *key_b64,
                   time_t expiry);

/* EG_URLENC - JavaScript's encodeURIComponent, upper-case escapes.
 * RETURNS: malloc'ed string or NULL. */
char *eg_urlenc(const char *s);

/* ---- eg_format.c: templates and event payloads (pure, no I/O) ---- */

typedef enum { EG_SCHEMA_EVENTGRID = 1, EG_SCHEMA_CLOUDEVENTS = 2 } eg_schema;

struct eg_tmpl;   /* a parsed "text {placeholder|alt|=literal} text" */

/* EG_TMPL_PARSE - parse a template.  RETURNS: the template, or NULL with a
 * message in err. */
struct eg_tmpl *eg_tmpl_parse(const char *text, char *err, size_t errlen);
void eg_tmpl_free(struct eg_tmpl *t);

/* What the formatter needs from one message, pulled through the host. */
struct eg_src {
    const orderd_host *h;
    orderd_msg        *m;
};

/* EG_TMPL_EXPAND - expand t for a message.  RETURNS: malloc'ed text, or
 * NULL with the reason in err (a placeholder had no value, or ENOMEM). */
char *eg_tmpl_expand(const struct eg_tmpl *t, const struct eg_src *src, char *err, size_t errlen);

struct eg_fmt {
    eg_schema        schema;
    struct eg_tmpl  *type;
    struct eg_tmpl  *subject;
    struct eg_tmpl  *source;        /* CloudEvents only */
    const char      *data_version;  /* Event Grid schema only */
    const char      *topic;         /* Event Grid schema only; NULL: the service fills it */
};

/* EG_FORMAT_EVENT - one event as compact JSON, keys in a fixed order.
 * RETURNS: malloc'ed text, or NULL with the reason in err. */
char *eg_format_event(const struct eg_fmt *f, const struct eg_src *src, char *err, size_t errlen);

/* ---- eg_auth.c: request credentials ---- */

typedef enum { EG_AUTH_KEY = 1, EG_AUTH_SAS, EG_AUTH_ENTRA } eg_auth_mode;

struct eg_auth {
    eg_auth_mode     mode;
    char            *key;            /* key, sas */
    char            *endpoint;       /* sas: the resource signed (no query) */
    char            *api_version;
    int64_t          sas_ttl_ms;
    char            *token_file;     /* entra */
    char            *token_url;      /* entra */
    char            *client_id;
    char            *client_secret;
    char            *scope;
    char            *ca_file;
    long             timeout_ms;

    pthread_mutex_t  mu;             /* guards everything below */
    char            *cached;         /* the header line in use */
    time_t           cached_until;   /* renew at or after this (wall clock) */
    time_t           cached_expiry;  /* entra: the token's own expiry */
    time_t           file_mtime;
    long             file_mtime_ns;
};

/* EG_AUTH_HEADER - the credential header line for the next request
 * ("aeg-sas-key: ...", "aeg-sas-token: ...", "Authorization: Bearer ...").
 * Renews SAS tokens and Entra ID tokens before they expire.
 * RETURNS: malloc'ed header line, or NULL with the reason in err. */
char *eg_auth_header(struct eg_auth *a, char *err, size_t errlen);
/* EG_AUTH_INVALIDATE - forget a cached token (after a 401). */
void eg_auth_invalidate(struct eg_auth *a);
void eg_auth_free(struct eg_auth *a);

#endif
