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
 * Compiled into the core (spool records) and the sqlite and http plugins
 * (which hide its symbols).
 */
#ifndef JSONDEC_H
#define JSONDEC_H

#include <stddef.h>
#include <jansson.h>

/* JDEC_LOADB - parse n bytes at s (any JSON value at the top).
 * RETURNS: a new reference, or NULL with err filled (err may be NULL). */
json_t *jdec_loadb(const char *s, size_t n, json_error_t *err);

/* JDEC_LOADB_FLAGS - the same with json_loadb()'s flags: JSON_DECODE_ANY
 * (else the top level must be an object or an array) and
 * JSON_REJECT_DUPLICATES are honoured here; with any other flag the text
 * still gets its final say from json_loadb(s, n, flags, err) whenever this
 * parser declines, so the result and the error are json_loadb()'s.
 * Flags that change how a well-formed document reads (JSON_DECODE_INT_AS_REAL,
 * JSON_ALLOW_NUL) are not supported: pass them to json_loadb() directly. */
json_t *jdec_loadb_flags(const char *s, size_t n, size_t flags, json_error_t *err);

/* JDEC_CHECK - is s (n bytes) a JSON value that jdec_loadb() reads on its
 * own, without handing it to json_loadb()?  Reads it the same way but builds
 * nothing, so it costs a scan, not a tree.  Such a text is one jansson
 * accepts too; -1 can also mean only "jansson must decide" (a number too
 * large for json_int_t, say).  Duplicate keys are not looked for.
 * RETURNS: 0 or -1. */
int jdec_check(const char *s, size_t n);

/* The pieces of the reader, for scanners that check text without a tree
 * (jsonschema_check_text) and must take exactly what jdec_loadb() takes. */

/* JDEC_UTF8 - length of the valid UTF-8 sequence at p (a lead byte >= 0x80;
 * no overlong forms, surrogates or code points above U+10FFFF), or 0. */
size_t jdec_utf8(const unsigned char *p, const unsigned char *end);

/* A number as jdec_loadb() reads it: an integer (no fraction, no exponent)
 * that fits json_int_t in i (and d), else a finite real in d. */
struct jdec_num {
    int        real;
    json_int_t i;
    double     d;
};

/* JDEC_SCAN_NUMBER - read the JSON number at s (up to end) into *out.
 * RETURNS: the byte after it, or NULL when it is not a number this reader
 * takes (bad syntax, too big an integer, an overflowing real, a real of 64
 * characters or more: jansson then decides). */
const char *jdec_scan_number(const char *s, const char *end, struct jdec_num *out);

#endif
