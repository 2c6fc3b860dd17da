/* idem.h - the http input's Idempotency-Key records.
 *
 * A record remembers, per key, a 128-bit hash of the exact request
 * (method, path, body) and the response that was given once the command
 * was durably submitted, so a retried request is answered the same way
 * without submitting again.  Records live in memory and in an append-only
 * file (one JSON object per line, written before the client is answered but
 * not flushed: a power loss may forget the newest, and the retry then yields
 * the same command id, which the pipeline deduplicates) that is loaded and
 * compacted when the store is opened; records older than the TTL are
 * dropped.  All functions are thread-safe.
 */
#ifndef HTTP_IDEM_H
#define HTTP_IDEM_H

#include <stddef.h>
#include <stdint.h>

struct http_idem;

enum {
    HTTP_IDEM_NEW = 0,      /* unknown key: a placeholder now reserves it */
    HTTP_IDEM_REPLAY,       /* same key, same request: stored response returned */
    HTTP_IDEM_MISMATCH,     /* same key, different request */
    HTTP_IDEM_BUSY          /* same key, first request still in flight */
};

/* HTTP_IDEM_OPEN - load (and compact) the file at path, creating it and its
 * parent directory as needed, and keep it open for appends.
 * RETURNS: 0 and *out, or negative errno with a message in err. */
int http_idem_open(struct http_idem **out, const char *path, int64_t ttl_ms,
                   size_t *loaded, size_t *skipped, char *err, size_t errlen);

/* HTTP_IDEM_BEGIN - look up key for a request whose hash is rhash.
 * On REPLAY *status, *body and *location (malloc'd, caller frees; location
 * may be NULL) hold the stored response.  On NEW the key is reserved until
 * http_idem_commit() or http_idem_abort().
 * RETURNS: HTTP_IDEM_*, or -ENOMEM. */
int http_idem_begin(struct http_idem *s, const char *key, const uint8_t rhash[16],
                    int *status, char **body, char **location);

/* HTTP_IDEM_ABORT - drop the reservation made by a NEW begin (nothing was accepted). */
void http_idem_abort(struct http_idem *s, const char *key);

/* HTTP_IDEM_COMMIT - store the response for a reserved key and append it
 * to the file (one write, no flush).  body and location are copied.
 * RETURNS: 0, or negative errno if the record could not be written (it is
 * still kept in memory). */
int http_idem_commit(struct http_idem *s, const char *key, int status,
                     const char *body, const char *location);

void http_idem_close(struct http_idem *s);

/* 128-bit FNV-1a over several buffers, each followed by a 0 byte so that
 * ("ab","c") and ("a","bc") differ. */
void http_hash128(uint8_t out[16], const void *const *bufs, const size_t *lens, size_t n);

#endif
