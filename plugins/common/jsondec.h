/* jsondec.h - JSON text to a jansson value, about twice as fast as
 * json_loadb() for the well-formed documents the store wrote itself.
 *
 * Strict RFC 8259 only (UTF-8 checked, no NUL in strings, depth <= 2048,
 * integers that fit json_int_t, finite reals).  Anything it does not take
 * is handed to json_loadb(), which then accepts or refuses it with its own
 * error text: the result is always what json_loadb(s, n, JSON_DECODE_ANY)
 * would give, only the well-formed common case is quicker.  The feed parses
 * every stored event with it; json_loadb() was a tenth of the CPU per order.
 *
 * Compiled into the core (spool records) and the sqlite plugin (which hides
 * its symbols).
 */
#ifndef JSONDEC_H
#define JSONDEC_H

#include <stddef.h>
#include <jansson.h>

/* JDEC_LOADB - parse n bytes at s (any JSON value at the top).
 * RETURNS: a new reference, or NULL with err filled (err may be NULL). */
json_t *jdec_loadb(const char *s, size_t n, json_error_t *err);

#endif
