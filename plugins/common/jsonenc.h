/* jsonenc.h - compact JSON text of a jansson value, several times faster
 * than json_dumps() and byte for byte the same as
 *   json_dumps(v, JSON_COMPACT | JSON_REAL_PRECISION(15) | JSON_ENCODE_ANY)
 * (keys in the object's iteration order, UTF-8 kept as is, control
 * characters as \b \f \n \r \t or \u00XX, reals as "%.15g" with ".0" added to
 * integral ones).  Encoding every event three or four times (store, webhook,
 * file) with jansson's callback-per-token dumper was about a fifth of the
 * CPU per order.
 *
 * Shared by the core (spool records) and the sqlite, webhook and file
 * plugins: each compiles it in (plugins hide its symbols).  Not
 * thread-hostile: no state outside the buffer.
 */
#ifndef JSONENC_H
#define JSONENC_H

#include <stddef.h>
#include <jansson.h>

/* A growing byte buffer; zero-initialise it.  p is NUL-terminated after a
 * successful jenc_dump() (the NUL is not counted in len). */
struct jenc_buf {
    char   *p;
    size_t  len, cap;
    int     lossy;      /* set when a real was written that reads back as another number */
};

/* JENC_DUMP - append the text of v to b.
 * RETURNS: 0; -ENOMEM; -EINVAL when v is NULL or nested deeper than 2048
 * (a reference cycle), with b->len as it was before the call. */
int jenc_dump(struct jenc_buf *b, const json_t *v);

/* JENC_RESERVE - make room for n more bytes (and a NUL).
 * RETURNS: 0 or -ENOMEM. */
int jenc_reserve(struct jenc_buf *b, size_t n);

/* JENC_PUT - append n raw bytes.  RETURNS: 0 or -ENOMEM. */
int jenc_put(struct jenc_buf *b, const char *s, size_t n);

/* JENC_STRING - append s (n bytes) as a JSON string literal, quotes
 * included.  RETURNS: 0 or -ENOMEM. */
int jenc_string(struct jenc_buf *b, const char *s, size_t n);

/* JENC_DUMPS - json_dumps() with the flags above, for callers that want a
 * malloc'd string.  RETURNS: the text (length in *len when len is not
 * NULL), or NULL on ENOMEM or a value jenc_dump() refuses. */
char *jenc_dumps(const json_t *v, size_t *len);

/* JENC_MEMBER_SPAN - where the value of the top-level member key sits in
 * text, a JSON object as jenc_dump() writes it (compact; keys compared as
 * written, so a key spelled with escapes does not match).
 * RETURNS: 0 with the value's offset and length in *off and *n; -ENOENT
 * when the object has no such member; -EINVAL when text is not an object. */
int jenc_member_span(const char *text, size_t len, const char *key, size_t *off, size_t *n);

/* JENC_MEMBER_STR - the value of member key (as jenc_member_span finds it)
 * when it is a string without escapes, so its characters are the bytes
 * between the quotes: *s and *n.
 * RETURNS: 0; -ENOENT when there is no such member; -EINVAL for any other
 * value (not a string, or one with escapes) or when text is not an object. */
int jenc_member_str(const char *text, size_t len, const char *key, const char **s, size_t *n);

#endif
