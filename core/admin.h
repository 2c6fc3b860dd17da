/* admin.h - the admin HTTP listener: /metrics, /healthz, /readyz (loopback by default),
 * plus routes the core adds for orderctl's admin API.
 *
 * Built-in routes (GET or HEAD only; other methods get 405 with Allow):
 *   /metrics  200 text/plain; version=0.0.4 (od_metrics_render())
 *   /healthz  200 {"status":"ok"}
 *   /readyz   200 {"status":"ready"} or 503 {"status":"not ready"}
 * Anything else that no route claims is 404 application/problem+json (RFC 9457).
 */
#ifndef OD_ADMIN_H
#define OD_ADMIN_H

#include <stddef.h>

struct od_admin;

/* Largest request body accepted; larger ones are answered 413. */
#define OD_ADMIN_MAX_BODY (1024 * 1024)

/*
 * OD_ADMIN_START - bind and start serving.
 * ARGS: listen is "HOST:PORT", HOST an IPv4 address, a name ("localhost") or
 *       a bracketed IPv6 address ("[::1]:9464"); port 0 picks a free one.
 *       ready(arg) is asked by /readyz and returns nonzero when ready; it may
 *       be NULL (then always ready).  It is called from the listener's
 *       threads.
 * RETURNS: 0 and *out; -EINVAL bad listen string; -EADDRINUSE port taken;
 *          other negative errno.  Every failure is logged with the value.
 */
int  od_admin_start(const char *listen, int (*ready)(void *arg), void *arg, struct od_admin **out);

/* OD_ADMIN_PORT - the port actually bound (useful with port 0). */
int  od_admin_port(const struct od_admin *a);

/* OD_ADMIN_STOP - close the listener, wait for requests in progress, free a.
 * Routes need not be removed first.  a may be NULL. */
void od_admin_stop(struct od_admin *a);

/*
 * A route handler.  Called from a listener thread, possibly several at once.
 * ARGS: method ("GET", "POST", ...) and path (decoded, without the query) are
 *       borrowed for the call; query is the raw text after '?' re-encoded
 *       ("a=1&b=x%20y") or "" when there is none; body is the request body,
 *       NUL-terminated, body_len bytes (NULL and 0 when there is none).
 *       *status is preset to 200, *resp_body to NULL (empty body) and
 *       *content_type to "application/json"; set them as needed.  *resp_body
 *       must be malloc'd, NUL-terminated text: the listener frees it.  *content_type is borrowed
 *       and must stay valid (use a string literal).
 * RETURNS: 0 when *status and the body are the answer; negative errno to
 *          have the listener answer 500 (any *resp_body is still freed).
 * The handler must not call od_admin_route()/od_admin_unroute().
 */
typedef int (*od_admin_handler)(void *arg, const char *method, const char *path, const char *query,
                                const char *body, size_t body_len, int *status, char **resp_body,
                                const char **content_type);

/*
 * OD_ADMIN_ROUTE - send requests under path_prefix to fn(arg, ...).
 * A prefix "/v1/dlq" matches "/v1/dlq" and "/v1/dlq/..." but not "/v1/dlqx";
 * the longest matching prefix wins.  Built-in paths cannot be taken.
 * RETURNS: 0; -EINVAL prefix not starting with '/'; -EEXIST already routed
 *          (or built in); -ENOMEM.
 */
int  od_admin_route(struct od_admin *a, const char *path_prefix, od_admin_handler fn, void *arg);

/* OD_ADMIN_UNROUTE - remove a route.  When it returns, fn is no longer
 * running for that route and will not be called again, so arg may be freed.
 * Unknown prefixes are ignored. */
void od_admin_unroute(struct od_admin *a, const char *path_prefix);

#endif
