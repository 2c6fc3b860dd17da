/*
 * jsonschema.h - a small JSON Schema (draft 2020-12 subset) validator.
 *
 * Shared by the `validate` transform and the `http` input (which compiles
 * ../validate/jsonschema.c itself to refuse bad orders at the API edge), so
 * it knows nothing of the host or the plugin ABI: jansson, libc and the
 * reader in ../common/jsondec.c (which whoever compiles this compiles too).
 *
 * Supported keywords
 *   type (a name or an array of names; "integer" accepts 3 and 3.0),
 *   enum, const, required, properties, additionalProperties (bool or schema),
 *   items (one schema for every element), minItems, maxItems,
 *   minimum, maximum, exclusiveMinimum, exclusiveMaximum (numbers),
 *   minLength, maxLength (counted in UTF-8 code points),
 *   pattern (POSIX extended regular expression via regcomp(3), unanchored
 *   search like ECMA-262 - but ERE syntax: no \d, \w, lookaround or lazy
 *   quantifiers; write [0-9], [A-Za-z0-9_]),
 *   $ref (only "#/$defs/<name>"), $defs, and boolean schemas true/false.
 * Everything else (allOf, anyOf, oneOf, not, if/then/else, format,
 * patternProperties, prefixItems, contains, uniqueItems, multipleOf,
 * dependentRequired, ...) is ignored, as the specification says unknown
 * keywords are; annotations (title, description, default, examples,
 * $schema, $id, $comment) are ignored by design.
 *
 * Errors name the instance location as a JSON Pointer ("/items/0/qty"; "/"
 * for the document itself) and the rule, e.g.
 *   "/items/0/qty: 0 is less than minimum 1".
 */
#ifndef ORDERD_JSONSCHEMA_H
#define ORDERD_JSONSCHEMA_H

#include <stddef.h>
#include <jansson.h>

typedef struct jsonschema jsonschema;

/* JSONSCHEMA_COMPILE - check and compile a schema document.
 * ARGS: schema is borrowed; err receives why it is bad, naming the schema
 *       location as a JSON Pointer ("schema /properties/qty/minimum: ...").
 * RETURNS: the compiled schema (immutable, safe to share between threads),
 *          or NULL with err filled (also on out of memory). */
jsonschema *jsonschema_compile(const json_t *schema, char *err, size_t errlen);

/* JSONSCHEMA_VALIDATE - validate one instance (borrowed).
 * RETURNS: 0 valid; 1 invalid with the first violation in err;
 *          -ENOMEM. */
int jsonschema_validate(const jsonschema *s, const json_t *instance, char *err, size_t errlen);

/* JSONSCHEMA_CHECK_TEXT - the quick "valid" for the common case, read off
 * JSON text (len bytes) without building a tree.  1 means: jdec_loadb() and
 * json_loadb(text, len, JSON_REJECT_DUPLICATES) both take the text and
 * jsonschema_validate() finds the document valid against s (NULL: any
 * document).  It is said only for text with no escapes in its strings, at
 * most 32 levels of nesting and 32 members per object, checked against
 * schemas without enum or const and with any $ref standing alone.  0 is
 * "cannot tell" - an invalid document as well as one outside those limits:
 * decode the text and ask jsonschema_validate() for the verdict and the
 * error.
 * RETURNS: 1 or 0. */
int jsonschema_check_text(const jsonschema *s, const char *text, size_t len);

/* JSONSCHEMA_FREE - free a compiled schema (NULL is fine). */
void jsonschema_free(jsonschema *s);

#endif
