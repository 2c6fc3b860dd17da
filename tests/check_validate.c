/* check_validate.c - the `validate` transform and its JSON Schema subset.
 *
 * The keyword table runs jsonschema.c directly (the same file the plugin
 * and the http input compile); the plugin tests dlopen validate.so. */
#include "config.h"

#include <check.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "jsonschema.h"
#include "../plugins/common/jsondec.h"

static const char *order_example =
    "{\"id\": \"ord-1001\", \"customerId\": \"c-42\", \"currency\": \"EUR\","
    " \"items\": [{\"sku\": \"SKU-1\", \"qty\": 2, \"price\": 19.99}],"
    " \"shipping\": {\"name\": \"Jane Doe\", \"city\": \"Berlin\", \"country\": \"DE\"}}";

/* Write text to a file in the harness's state dir; returns its path (static). */
static const char *write_file(const char *name, const char *text)
{
    static char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", th_state_dir(), name);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
    return path;
}

static json_t *parse(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &e);

    ck_assert_msg(j != NULL, "bad test JSON %s: %s", text, e.text);
    return j;
}

/* ---- keyword table ---- */

struct kw_case {
    const char *schema;
    const char *good;      /* an instance that passes */
    const char *bad;       /* one that fails ... */
    const char *error;     /* ... with exactly this message */
};

static const struct kw_case kw_cases[] = {
    { "{\"type\":\"string\"}", "\"x\"", "1", "/: expected string, got integer" },
    { "{\"type\":[\"string\",\"null\"]}", "null", "true", "/: expected null or string, got boolean" },
    { "{\"type\":\"integer\"}", "3.0", "2.5", "/: expected integer, got number" },
    { "{\"type\":\"number\"}", "7", "\"7\"", "/: expected number, got string" },
    { "{\"required\":[\"a\",\"b\"]}", "{\"a\":1,\"b\":2}", "{\"a\":1}", "/b: required property is missing" },
    { "{\"properties\":{\"a\":{\"properties\":{\"b~/c\":{\"type\":\"string\"}}}}}",
      "{\"a\":{\"b~/c\":\"s\"}}", "{\"a\":{\"b~/c\":5}}", "/a/b~0~1c: expected string, got integer" },
    { "{\"properties\":{\"a\":true},\"additionalProperties\":false}", "{\"a\":1}", "{\"a\":1,\"z\":2}",
      "/z: additional property is not allowed" },
    { "{\"additionalProperties\":{\"type\":\"integer\"}}", "{\"x\":1}", "{\"x\":\"no\"}",
      "/x: expected integer, got string" },
    { "{\"items\":{\"properties\":{\"qty\":{\"minimum\":1}}}}", "[{\"qty\":1}]", "[{\"qty\":3},{\"qty\":0}]",
      "/1/qty: 0 is less than minimum 1" },
    { "{\"maximum\":10}", "10", "10.5", "/: 10.5 is greater than maximum 10" },
    { "{\"exclusiveMinimum\":0}", "0.01", "0", "/: 0 is not greater than exclusiveMinimum 0" },
    { "{\"exclusiveMaximum\":5}", "4", "5", "/: 5 is not less than exclusiveMaximum 5" },
    { "{\"minLength\":2}", "\"\xc3\xa4\xc3\xb6\"", "\"\xc3\xa4\"", "/: \"\xc3\xa4\" is shorter than minLength 2" },
    { "{\"maxLength\":2}", "\"\xe2\x82\xac\xe2\x82\xac\"", "\"abc\"",
      "/: string of 3 characters is longer than maxLength 2" },
    { "{\"minItems\":1}", "[1]", "[]", "/: 0 items is fewer than minItems 1" },
    { "{\"maxItems\":1}", "[1]", "[1,2]", "/: 2 items is more than maxItems 1" },
    { "{\"enum\":[\"EUR\",\"USD\",1]}", "1.0", "\"GBP\"", "/: \"GBP\" is not one of [\"EUR\",\"USD\",1]" },
    { "{\"const\":{\"a\":1}}", "{\"a\":1}", "{\"a\":2}", "/: {\"a\":2} is not the constant {\"a\":1}" },
    { "{\"pattern\":\"^[A-Z]{3}$\"}", "\"EUR\"", "\"eur\"", "/: \"eur\" does not match pattern ^[A-Z]{3}$" },
    { "{\"pattern\":\"[0-9]\"}", "\"ab1\"", "\"abc\"", "/: \"abc\" does not match pattern [0-9]" },
    { "{\"$defs\":{\"pos\":{\"minimum\":1}},\"properties\":{\"n\":{\"$ref\":\"#/$defs/pos\"}}}",
      "{\"n\":1}", "{\"n\":0}", "/n: 0 is less than minimum 1" },
    { "{\"properties\":{\"x\":false}}", "{}", "{\"x\":null}", "/x: no value is allowed here (schema false)" },
    { "{\"$defs\":{\"s\":{\"type\":\"string\"}},\"$ref\":\"#/$defs/s\",\"enum\":[\"EUR\"]}", "\"EUR\"", "\"GBP\"",
      "/: \"GBP\" is not one of [\"EUR\"]" },
    /* unknown keywords are ignored, not errors */
    { "{\"anyOf\":[{\"type\":\"string\"}],\"format\":\"email\",\"type\":\"integer\"}", "5", "\"s\"",
      "/: expected integer, got string" },
};

START_TEST(test_keyword)
{
    const struct kw_case *c = &kw_cases[_i];
    char err[512];
    json_t *schema = parse(c->schema), *good = parse(c->good), *bad = parse(c->bad);
    jsonschema *js = jsonschema_compile(schema, err, sizeof(err));

    ck_assert_msg(js != NULL, "schema %s: %s", c->schema, err);
    ck_assert_msg(jsonschema_validate(js, good, err, sizeof(err)) == 0, "%s rejected %s: %s",
                  c->schema, c->good, err);
    ck_assert_int_eq(jsonschema_validate(js, bad, err, sizeof(err)), 1);
    ck_assert_str_eq(err, c->error);
    /* On the text: never "valid" for the bad one; "valid" for the good one
     * unless the schema uses what the text check leaves to the tree. */
    ck_assert_int_eq(jsonschema_check_text(js, c->bad, strlen(c->bad)), 0);
    ck_assert_int_eq(jsonschema_check_text(js, c->good, strlen(c->good)),
                     strstr(c->schema, "enum") == NULL && strstr(c->schema, "const") == NULL);
    jsonschema_free(js);
    json_decref(schema);
    json_decref(good);
    json_decref(bad);
}
END_TEST

static const struct {
    const char *schema;
    const char *error;
} bad_schemas[] = {
    { "{\"properties\":{\"qty\":{\"minimum\":\"1\"}}}", "schema /properties/qty/minimum: must be a number" },
    { "{\"type\":\"text\"}", "schema /type: unknown type \"text\" (expected null, boolean, object, array, number, string or integer)" },
    { "{\"items\":{\"pattern\":\"([a-z\"}}", NULL },
    { "{\"$ref\":\"#/$defs/nope\"}", "schema /: $ref \"#/$defs/nope\" names no entry of $defs" },
    { "{\"$ref\":\"other.json#/x\"}", "schema /$ref: only references of the form \"#/$defs/<name>\" are supported" },
    { "{\"required\":[1]}", "schema /required/0: must be a string" },
    { "{\"minLength\":-1}", "schema /minLength: must be a non-negative integer" },
    { "[1]", "schema /: a schema must be an object or a boolean" },
};

START_TEST(test_bad_schema_compile)
{
    char err[512];
    json_t *schema = parse(bad_schemas[_i].schema);
    jsonschema *js = jsonschema_compile(schema, err, sizeof(err));

    ck_assert_ptr_null(js);
    if (bad_schemas[_i].error != NULL)
        ck_assert_str_eq(err, bad_schemas[_i].error);
    else
        ck_assert_msg(strncmp(err, "schema /items/pattern: bad POSIX extended regular expression", 60) == 0,
                      "got: %s", err);
    json_decref(schema);
}
END_TEST

/* Simple patterns (^[set]+$ and the like) are checked without regexec():
 * the verdict must be regexec()'s for every pattern and string here,
 * including the forms that fall back to the regex. */
START_TEST(test_pattern_fast_path_agrees)
{
    static const char *const patterns[] = {
        "^[A-Za-z0-9._:-]+$", "^[A-Z]{3}$", "^[A-Z]{2}$", "^[a-z]*$", "^[0-9]{2,4}$",
        "^[0-9]{2,}$", "^[-a]+$", "^[a-]+$", "^[.]+$", "^[A-Z]{0}$", "^[a-z]+", "[a-z]+$",
        "^[^a-z]+$", "^[[:alpha:]]+$", "^[a-z]+$|x", "^[a-z]{1,2}x$", "^[ab-]{1,3}$", "^[a-c]+$",
    };
    static const char *const strings[] = {
        "", "a", "abc", "ABC", "EUR", "eur", "EURO", "DE", "D", "12", "123", "12345", "a-b",
        "-", "--", ".", "a.b:c_d-e", "a b", "caf\xc3\xa9", "AB\n", "\nAB", "x", "abx", "ax",
        "ord-1:2.3_4", "[a]", "a^b", "A\tB",
    };
    size_t i, j;

    for (i = 0; i < sizeof(patterns) / sizeof(patterns[0]); i++) {
        char err[512], sch[128];
        json_t *schema;
        jsonschema *js;
        regex_t re;

        snprintf(sch, sizeof(sch), "{\"type\":\"string\",\"pattern\":\"%s\"}", patterns[i]);
        schema = parse(sch);
        js = jsonschema_compile(schema, err, sizeof(err));
        ck_assert_msg(js != NULL, "%s: %s", patterns[i], err);
        ck_assert_int_eq(regcomp(&re, patterns[i], REG_EXTENDED | REG_NOSUB), 0);
        for (j = 0; j < sizeof(strings) / sizeof(strings[0]); j++) {
            json_t *v = json_string(strings[j]);
            int want = regexec(&re, strings[j], 0, NULL, 0) == 0;
            int got = jsonschema_validate(js, v, err, sizeof(err)) == 0;

            ck_assert_msg(got == want, "pattern %s, \"%s\": regexec says %d, validate %d",
                          patterns[i], strings[j], want, got);
            json_decref(v);
        }
        regfree(&re);
        jsonschema_free(js);
        json_decref(schema);
    }
}
END_TEST

/* ---- validation on the text ---- */

static jsonschema *shipped_schema(void)
{
    char path[1024], err[512];
    const char *top = getenv("TOP_SRCDIR");
    json_error_t e;
    json_t *doc;
    jsonschema *js;

    snprintf(path, sizeof(path), "%s/etc/orderd/order.schema.json", top ? top : "..");
    doc = json_load_file(path, 0, &e);
    ck_assert_msg(doc != NULL, "%s: %s", path, e.text);
    js = jsonschema_compile(doc, err, sizeof(err));
    ck_assert_msg(js != NULL, "%s", err);
    json_decref(doc);
    return js;
}

/* What the tree path says of text: decoded as the http input decodes it,
 * then validated.  1 valid, 0 not. */
static int tree_verdict(const jsonschema *js, const char *text, size_t len)
{
    char err[512];
    json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, NULL);
    int ok = doc != NULL && jsonschema_validate(js, doc, err, sizeof(err)) == 0;

    json_decref(doc);
    return ok;
}

static const char *text_order =
    "{\"id\":\"ord-1\",\"customerId\":\"cust-004217\",\"currency\":\"EUR\",\n"
    " \"items\": [ {\"sku\":\"SKU-100234\",\"qty\":2,\"price\":19.99},\r\n"
    "\t{\"sku\":\"SKU-883201\",\"qty\":1,\"price\":2.495e2} ],"
    "\"shipping\":{\"name\":\"Erika M\xc3\xbcller\",\"zip\":\"51147\",\"country\":\"DE\"},"
    "\"channel\":\"web\",\"gift\":true,\"coupon\":null,\"tags\":[[],{}],\"n\":-0.5}";

/* The shipped schema on the text: what it takes, and that it gives up
 * (0) on every invalid order and on what it leaves to the tree. */
START_TEST(test_check_text_shipped)
{
    static const char *const refused[] = {
        /* invalid against the schema */
        "{\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1}]}",
        "{\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[]}",
        "{\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":0,\"price\":1}]}",
        "{\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1.5,\"price\":1}]}",
        "{\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":-0.01}]}",
        "{\"customerId\":\"c\",\"currency\":\"euro\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1}]}",
        "{\"customerId\":\"\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1}]}",
        "{\"customerId\":7,\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1}]}",
        "{\"id\":\"a b\",\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1}]}",
        "{\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1}],"
        "\"shipping\":{\"country\":\"DEU\"}}",
        "[1]",
        /* valid, but left to the tree: an escape, a duplicate key (refused there) */
        "{\"customerId\":\"c\\u00e9\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1}]}",
        "{\"customerId\":\"c\",\"customerId\":\"d\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1}]}",
        "{\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"sku\":\"B\",\"qty\":1,\"price\":1}]}",
        /* not JSON, or not JSON this reader takes */
        "{\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1}]} x",
        "{\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1},]}",
        "{\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1e999}]}",
        "{\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":99999999999999999999,\"price\":1}]}",
        "{\"customerId\":\"c\xff\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1}]}",
        "{\"customerId\":\"c\tx\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1}]}",
        "{\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":01,\"price\":1}]}",
        "{\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1}],\"x\":tru}",
        "",
    };
    jsonschema *js = shipped_schema();
    char deep[512] = "{\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1}],\"x\":";
    char wide[2048] = "{\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1}]";
    size_t i;

    ck_assert_int_eq(jsonschema_check_text(js, text_order, strlen(text_order)), 1);
    ck_assert_int_eq(tree_verdict(js, text_order, strlen(text_order)), 1);
    for (i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        ck_assert_msg(jsonschema_check_text(js, refused[i], strlen(refused[i])) == 0,
                      "took %s", refused[i]);
    /* 32 levels are taken (the order, 30 arrays, the number), 33 are left to the tree */
    for (i = 0; i < 2; i++) {
        char *p = deep + strlen(deep);

        p += sprintf(p, "%.*s1%.*s}", (int)(30 + i), "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
                     (int)(30 + i), "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]");
        ck_assert_int_eq(tree_verdict(js, deep, strlen(deep)), 1);
        ck_assert_int_eq(jsonschema_check_text(js, deep, strlen(deep)), i == 0);
        *strstr(deep, "\"x\":[") = '\0';
        strcat(deep, "\"x\":");
    }
    /* 32 members are taken, 33 are left to the tree */
    for (i = 3; i < 32; i++)
        sprintf(wide + strlen(wide), ",\"k%zu\":%zu", i, i);
    strcat(wide, "}");
    ck_assert_int_eq(jsonschema_check_text(js, wide, strlen(wide)), 1);
    strcpy(wide + strlen(wide) - 1, ",\"k32\":32}");
    ck_assert_int_eq(tree_verdict(js, wide, strlen(wide)), 1);
    ck_assert_int_eq(jsonschema_check_text(js, wide, strlen(wide)), 0);
    /* no schema: any JSON this reader takes */
    ck_assert_int_eq(jsonschema_check_text(NULL, "{\"a\":[1,2.5,\"x\"]}", 17), 1);
    ck_assert_int_eq(jsonschema_check_text(NULL, "{\"a\":1,\"a\":2}", 13), 0);
    jsonschema_free(js);
}
END_TEST

/* Every byte of text replaced, deleted or doubled, in turn: the text
 * check may give up on any of them, but whenever it says "valid" the tree
 * path must say so too (decoder and schema), and the core's reader must
 * take the text alone, or an order would go on that the tree path refuses.
 * RETURNS: how many mutations the text check took; *tried how many. */
static size_t mutations_agree(const jsonschema *js, const char *text, size_t *tried)
{
    static const char subst[] = "0159-+.eE\"\\{}[],: xtn\x80\xc3\x01";
    size_t len = strlen(text), i, k, taken = 0;
    char buf[1024];

    ck_assert_uint_lt(len * 2, sizeof(buf));
    *tried = 0;
    for (i = 0; i < len; i++) {
        for (k = 0; k <= sizeof(subst); k++) {
            size_t n;

            memcpy(buf, text, len);
            if (k < sizeof(subst) - 1) {            /* replaced */
                buf[i] = subst[k];
                n = len;
            } else if (k == sizeof(subst) - 1) {    /* deleted */
                memmove(buf + i, buf + i + 1, len - i - 1);
                n = len - 1;
            } else {                                /* doubled */
                memmove(buf + i + 1, buf + i, len - i);
                n = len + 1;
            }
            (*tried)++;
            if (jsonschema_check_text(js, buf, n) == 1) {
                taken++;
                ck_assert_msg(tree_verdict(js, buf, n) == 1, "the tree refuses what the text took: %.*s",
                              (int)n, buf);
                ck_assert_msg(jdec_check(buf, n) == 0, "the reader declines what the text took: %.*s",
                              (int)n, buf);
            }
        }
    }
    return taken;
}

START_TEST(test_check_text_mutations)
{
    jsonschema *js = shipped_schema();
    size_t tried, taken = mutations_agree(js, text_order, &tried);

    /* Many mutations leave a valid order (a digit of a price, a letter of
     * a name): the check is not vacuous. */
    ck_assert_uint_gt(taken, tried / 10);
    ck_assert_uint_lt(taken, tried);
    jsonschema_free(js);

    /* the same for every schema and instance of the keyword table */
    for (size_t c = 0; c < sizeof(kw_cases) / sizeof(kw_cases[0]); c++) {
        char err[512];
        json_t *schema = parse(kw_cases[c].schema);

        js = jsonschema_compile(schema, err, sizeof(err));
        ck_assert_msg(js != NULL, "%s", err);
        mutations_agree(js, kw_cases[c].good, &tried);
        mutations_agree(js, kw_cases[c].bad, &tried);
        jsonschema_free(js);
        json_decref(schema);
    }
}
END_TEST

/* ---- the plugin ---- */

static struct th_stage *shipped_stage(void)
{
    char conf[1024];
    const char *top = getenv("TOP_SRCDIR");

    snprintf(conf, sizeof(conf), "schema = \"%s/etc/orderd/order.schema.json\";", top ? top : "..");
    return th_stage_new("validate", ORDERD_TRANSFORM, conf);
}

static orderd_outcome run(struct th_stage *s, const char *body, const char *command, char *reason, size_t len)
{
    orderd_msg *m = th_msg(body);
    orderd_outcome o;
    const char *r;

    if (command != NULL)
        ck_assert_int_eq(th_host()->msg_set_prop(m, "command", command), 0);
    o = th_process(s, m);
    r = th_host()->msg_reason(m);
    snprintf(reason, len, "%s", r ? r : "");
    th_msg_free(m);
    return o;
}

START_TEST(test_shipped_schema)
{
    struct th_stage *s = shipped_stage();
    char why[512];

    ck_assert_int_eq(run(s, order_example, NULL, why, sizeof(why)), ORDERD_OK);
    /* id is optional and extra fields are kept, not refused */
    ck_assert_int_eq(run(s, "{\"customerId\":\"c\",\"currency\":\"USD\",\"partnerRef\":7,"
                            "\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":0}]}", NULL, why, sizeof(why)),
                     ORDERD_OK);

    ck_assert_int_eq(run(s, "{\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1}]}",
                         NULL, why, sizeof(why)), ORDERD_REJECT);
    ck_assert_str_eq(why, "/customerId: required property is missing");

    ck_assert_int_eq(run(s, "{\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[]}", NULL, why, sizeof(why)),
                     ORDERD_REJECT);
    ck_assert_str_eq(why, "/items: 0 items is fewer than minItems 1");

    ck_assert_int_eq(run(s, "{\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":0,\"price\":1}]}",
                         NULL, why, sizeof(why)), ORDERD_REJECT);
    ck_assert_str_eq(why, "/items/0/qty: 0 is less than minimum 1");
    {
        /* the index of the 11th item has two digits */
        char body[1024] = "{\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[";

        for (int i = 0; i < 10; i++)
            strcat(body, "{\"sku\":\"A\",\"qty\":1,\"price\":1},");
        strcat(body, "{\"sku\":\"A\",\"qty\":-2,\"price\":1}]}");
        ck_assert_int_eq(run(s, body, NULL, why, sizeof(why)), ORDERD_REJECT);
        ck_assert_str_eq(why, "/items/10/qty: -2 is less than minimum 1");
    }

    ck_assert_int_eq(run(s, "{\"customerId\":\"c\",\"currency\":\"euro\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1}]}",
                         NULL, why, sizeof(why)), ORDERD_REJECT);
    ck_assert_str_eq(why, "/currency: \"euro\" does not match pattern ^[A-Z]{3}$");

    ck_assert_int_eq(run(s, "{\"id\":\"a b\",\"customerId\":\"c\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"qty\":1,\"price\":1}]}",
                         NULL, why, sizeof(why)), ORDERD_REJECT);
    ck_assert_str_eq(why, "/id: \"a b\" does not match pattern ^[A-Za-z0-9._:-]+$");

    ck_assert_double_eq(th_metric(s, "invalid"), 6);
    th_stage_free(s);
}
END_TEST

/* Validation only reads the body: one that came as text keeps its text,
 * as given (white space included), for the stages after it. */
START_TEST(test_keeps_body_text)
{
    static const char given[] = " {\"customerId\": \"c\", \"currency\": \"EUR\","
                                " \"items\": [{\"sku\": \"A\", \"qty\": 1, \"price\": 1.50}]} ";
    const orderd_host *h = th_host();
    struct th_stage *s = shipped_stage();
    orderd_msg *m = th_msg("{}");
    size_t len;

    ck_assert_int_eq(h->msg_set_body_text(m, given, strlen(given)), 0);
    ck_assert_int_eq(th_process(s, m), ORDERD_OK);
    ck_assert_str_eq(h->msg_body_text(m, &len), given);
    ck_assert_uint_eq(len, strlen(given));
    th_msg_free(m);
    th_stage_free(s);
}
END_TEST

START_TEST(test_commands)
{
    struct th_stage *s = shipped_stage();
    char why[512], conf[1024];
    const char *top = getenv("TOP_SRCDIR");

    /* a lifecycle command's body is not an order: passed through by default */
    ck_assert_int_eq(run(s, "{\"amount\": 39.98}", "pay", why, sizeof(why)), ORDERD_OK);
    /* ... but an explicit create is an order */
    ck_assert_int_eq(run(s, "{}", "create", why, sizeof(why)), ORDERD_REJECT);
    th_stage_free(s);

    snprintf(conf, sizeof(conf), "schema = \"%s/etc/orderd/order.schema.json\"; commands = \"validate\";",
             top ? top : "..");
    s = th_stage_new("validate", ORDERD_TRANSFORM, conf);
    ck_assert_int_eq(run(s, "{\"amount\": 39.98}", "pay", why, sizeof(why)), ORDERD_REJECT);
    th_stage_free(s);
}
END_TEST

START_TEST(test_bad_schema_file)
{
    char err[2048], conf[1024];

    /* not JSON */
    snprintf(conf, sizeof(conf), "schema = \"%s\";", write_file("broken.json", "{\"type\": \"object\",\n}"));
    ck_assert_ptr_null(th_stage_try("validate", ORDERD_TRANSFORM, conf, err, sizeof(err)));
    /* JSON, but not a valid schema */
    snprintf(conf, sizeof(conf), "schema = \"%s\";", write_file("bad.json", "{\"minimum\": \"one\"}"));
    ck_assert_ptr_null(th_stage_try("validate", ORDERD_TRANSFORM, conf, err, sizeof(err)));
    /* missing file */
    snprintf(conf, sizeof(conf), "schema = \"%s/none.json\";", th_state_dir());
    ck_assert_ptr_null(th_stage_try("validate", ORDERD_TRANSFORM, conf, err, sizeof(err)));
    /* the schema key is required */
    ck_assert_ptr_null(th_stage_try("validate", ORDERD_TRANSFORM, "", err, sizeof(err)));
    /* and a good one in the same place works */
    snprintf(conf, sizeof(conf), "schema = \"%s\";", write_file("good.json", "{\"type\": \"object\"}"));
    th_stage_free(th_stage_new("validate", ORDERD_TRANSFORM, conf));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("validate");
    TCase *tc = tcase_create("jsonschema");
    SRunner *sr;
    int failed;

    tcase_add_checked_fixture(tc, NULL, th_cleanup);
    tcase_add_loop_test(tc, test_keyword, 0, (int)(sizeof(kw_cases) / sizeof(kw_cases[0])));
    tcase_add_loop_test(tc, test_bad_schema_compile, 0, (int)(sizeof(bad_schemas) / sizeof(bad_schemas[0])));
    suite_add_tcase(s, tc);
    tc = tcase_create("plugin");
    tcase_add_checked_fixture(tc, NULL, th_cleanup);
    tcase_add_test(tc, test_pattern_fast_path_agrees);
    tcase_add_test(tc, test_check_text_shipped);
    tcase_add_test(tc, test_check_text_mutations);
    tcase_add_test(tc, test_shipped_schema);
    tcase_add_test(tc, test_keeps_body_text);
    tcase_add_test(tc, test_commands);
    tcase_add_test(tc, test_bad_schema_file);
    suite_add_tcase(s, tc);

    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    th_cleanup();
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
