#!/bin/bash
# check-header.sh - the public header stands alone and keeps ABI 1.0.
#
# 1. core/include/orderd/plugin.h, copied alone into an empty directory,
#    compiles with -std=c11 -Wall -Wextra -Werror -pedantic and nothing but
#    jansson's include flags, both by itself and in a small plugin that uses
#    ORDERD_STAGE() and ORDERD_PLUGIN().  The same for the frozen 1.0 copy.
# 2. One small program prints the offset and size of every ABI 1.0 member of
#    orderd_host, orderd_stage, orderd_plugin, orderd_option and
#    orderd_result, and the values of the ABI's constants.  It is built once
#    against each header: every 1.0 line must be the same in the current
#    header (members only appended), orderd_option and orderd_result must
#    keep their size (they are used in arrays), and the others may only grow.
#
# Environment: TOP_SRCDIR (else found from this script's path), CC (else cc),
# JANSSON_CFLAGS (else from pkg-config).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=${TOP_SRCDIR:-$(cd "$here/../.." && pwd)}
cc=${CC:-cc}
jansson_cflags=${JANSSON_CFLAGS-$(pkg-config --cflags jansson 2>/dev/null || true)}
current=$top/core/include/orderd/plugin.h
frozen=$top/tests/abi/plugin-1.0.h
strict=(-std=c11 -Wall -Wextra -Werror -pedantic)
failed=0

fail() {
    echo "FAIL: $*" >&2
    failed=1
}

for f in "$current" "$frozen"; do
    [ -r "$f" ] || { echo "FAIL: cannot read $f" >&2; exit 1; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/orderd-abi.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# A plugin's worth of use of the macros, so they too must be pedantic-clean.
cat >"$tmp/use.c" <<'EOF'
#include <orderd/plugin.h>

static int use_create(orderd_inst *inst, const orderd_host *host, const json_t *conf,
                      void **state)
{
    (void)inst; (void)host; (void)conf;
    *state = 0;
    return 0;
}

static orderd_outcome use_process(void *state, orderd_msg *m)
{
    (void)state; (void)m;
    return ORDERD_OK;
}

static const orderd_option use_options[] = {
    { .key = "k", .type = ORDERD_T_STRING, .def = "v", .help = "a key" },
    { .key = 0 }
};
static const orderd_stage use_stage = ORDERD_STAGE(.kind = ORDERD_TRANSFORM,
    .options = use_options, .create = use_create, .process = use_process);
static const orderd_stage *const use_stages[] = { &use_stage, 0 };
ORDERD_PLUGIN(.name = "use", .version = "1", .stages = use_stages);
EOF

# The layout program.  The member lists are ABI 1.0's and never change.
cat >"$tmp/layout.c" <<'EOF'
#include <stdio.h>
#include <orderd/plugin.h>

static size_t covered;

#define M(T, m) do { \
        printf("offset %s.%s %zu size %zu\n", #T, #m, offsetof(T, m), sizeof(((T *)0)->m)); \
        covered += sizeof(((T *)0)->m); \
    } while (0)
#define S(T) do { \
        printf("sizeof %s %zu\n", #T, sizeof(T)); \
        /* Every 1.0 member is listed: what is left is padding, < 8 bytes. */ \
        if (FROZEN && sizeof(T) - covered >= 8) \
            printf("INCOMPLETE %s: members cover %zu of %zu bytes\n", #T, covered, sizeof(T)); \
        covered = 0; \
    } while (0)
#define V(c) printf("value %s %lld\n", #c, (long long)(c))

int main(void)
{
    M(orderd_option, key); M(orderd_option, type); M(orderd_option, flags);
    M(orderd_option, def); M(orderd_option, choices); M(orderd_option, help);
    M(orderd_option, sub); M(orderd_option, reserved);
    S(orderd_option);

    M(orderd_result, outcome); M(orderd_result, retry_after_ms);
    M(orderd_result, reason); M(orderd_result, reserved);
    S(orderd_result);

    M(orderd_host, size); M(orderd_host, abi_major); M(orderd_host, abi_minor);
    M(orderd_host, log); M(orderd_host, vlog); M(orderd_host, has_feature);
    M(orderd_host, msg_new); M(orderd_host, msg_free); M(orderd_host, msg_id);
    M(orderd_host, msg_set_id); M(orderd_host, msg_body); M(orderd_host, msg_set_body);
    M(orderd_host, msg_prop); M(orderd_host, msg_set_prop); M(orderd_host, msg_prop_at);
    M(orderd_host, msg_content_type); M(orderd_host, msg_set_content_type);
    M(orderd_host, msg_partition_key); M(orderd_host, msg_set_partition_key);
    M(orderd_host, msg_enqueued_ms); M(orderd_host, msg_set_enqueued_ms);
    M(orderd_host, msg_delivery_count); M(orderd_host, msg_set_delivery_count);
    M(orderd_host, msg_set_input_data); M(orderd_host, msg_input_data);
    M(orderd_host, msg_reason); M(orderd_host, retry); M(orderd_host, reject);
    M(orderd_host, settle); M(orderd_host, submit); M(orderd_host, dead_letter);
    M(orderd_host, lookup); M(orderd_host, metric_add); M(orderd_host, metric_set);
    M(orderd_host, pipeline_name); M(orderd_host, stage_name); M(orderd_host, state_dir);
    S(orderd_host);

    M(orderd_stage, size); M(orderd_stage, kind); M(orderd_stage, flags);
    M(orderd_stage, description); M(orderd_stage, options); M(orderd_stage, create);
    M(orderd_stage, start); M(orderd_stage, stop); M(orderd_stage, process);
    M(orderd_stage, process_batch); M(orderd_stage, ack); M(orderd_stage, lookup);
    M(orderd_stage, destroy); M(orderd_stage, reserved);
    S(orderd_stage);

    M(orderd_plugin, size); M(orderd_plugin, abi_major); M(orderd_plugin, abi_minor);
    M(orderd_plugin, name); M(orderd_plugin, version); M(orderd_plugin, description);
    M(orderd_plugin, maintainer); M(orderd_plugin, stages); M(orderd_plugin, reserved);
    S(orderd_plugin);

    V(ORDERD_ABI_MAJOR);
    V(ORDERD_INPUT); V(ORDERD_TRANSFORM); V(ORDERD_STORE); V(ORDERD_PUBLISH);
    V(ORDERD_OK); V(ORDERD_RETRY); V(ORDERD_REJECT); V(ORDERD_DROP); V(ORDERD_PENDING);
    V(ORDERD_LOG_ERR); V(ORDERD_LOG_WARN); V(ORDERD_LOG_INFO); V(ORDERD_LOG_DEBUG);
    V(ORDERD_T_STRING); V(ORDERD_T_INT); V(ORDERD_T_BOOL); V(ORDERD_T_DOUBLE);
    V(ORDERD_T_DURATION); V(ORDERD_T_SIZE); V(ORDERD_T_PATH); V(ORDERD_T_STRLIST);
    V(ORDERD_T_GROUP); V(ORDERD_T_GROUPLIST);
    V(ORDERD_OPT_REQUIRED); V(ORDERD_OPT_SECRET); V(ORDERD_OPT_STATE);
    V(ORDERD_SUBMIT_NOWAIT);
    V(ORDERD_SF_ASYNC_SETTLE); V(ORDERD_SF_SERIAL); V(ORDERD_SF_REDELIVERS);
    V(ORDERD_SF_DEADLETTERS);
    printf("symbol %s\n", ORDERD_PLUGIN_SYMBOL);
    return 0;
}
EOF

# build NAME HEADER FROZEN: header checks, then the layout program's output
# in $tmp/NAME.txt.
build() {
    local name=$1 header=$2 frozen_flag=$3 inc=$tmp/$1/include
    mkdir -p "$inc/orderd"
    cp "$header" "$inc/orderd/plugin.h"
    # shellcheck disable=SC2086  # JANSSON_CFLAGS is a list of flags
    if ! (cd "$tmp/$name" && "$cc" "${strict[@]}" -fsyntax-only $jansson_cflags \
            -x c "$inc/orderd/plugin.h"); then
        fail "$header does not compile alone with ${strict[*]}"
    fi
    # shellcheck disable=SC2086
    if ! (cd "$tmp/$name" && "$cc" "${strict[@]}" -fsyntax-only $jansson_cflags -I"$inc" \
            "$tmp/use.c"); then
        fail "a plugin using $header's macros does not compile with ${strict[*]}"
    fi
    # shellcheck disable=SC2086
    if ! "$cc" -std=c11 -Wall -Wextra -Werror -DFROZEN="$frozen_flag" $jansson_cflags \
            -I"$inc" -o "$tmp/$name/layout" "$tmp/layout.c"; then
        fail "the ABI 1.0 layout program does not build against $header (member removed or renamed?)"
        return
    fi
    "$tmp/$name/layout" >"$tmp/$name.txt"
}

build frozen "$frozen" 1
build current "$current" 0
[ "$failed" = 0 ] || exit 1

if grep '^INCOMPLETE' "$tmp/frozen.txt" >&2; then
    fail "layout.c's member lists miss members of the frozen header"
fi

# Offsets, member sizes, constants and the symbol name: identical lines.
while read -r line; do
    case $line in
    sizeof\ *|INCOMPLETE*) continue ;;
    esac
    if ! grep -qxF -- "$line" "$tmp/current.txt"; then
        key=$(echo "$line" | cut -d' ' -f1-2)
        now=$(grep -F -- "$key " "$tmp/current.txt" || echo "(missing)")
        fail "ABI 1.0 has '$line', the current header has '$now'"
    fi
done <"$tmp/frozen.txt"

# Sizes: array element types frozen, the rest may only grow.
while read -r _ type size; do
    now=$(sed -n "s/^sizeof $type //p" "$tmp/current.txt")
    case $type in
    orderd_option|orderd_result)
        [ "$now" = "$size" ] || fail "sizeof($type) was $size in ABI 1.0, is $now now (must not change within major 1)"
        ;;
    *)
        [ "$now" -ge "$size" ] || fail "sizeof($type) shrank from $size to $now"
        ;;
    esac
done < <(grep '^sizeof ' "$tmp/frozen.txt")

if [ "$failed" != 0 ]; then
    echo "check-header: the public header breaks ABI 1.0 (see above)" >&2
    exit 1
fi
echo "check-header: plugin.h compiles alone; ABI 1.0 layout preserved ($(grep -c '^offset' "$tmp/frozen.txt") members checked)"
exit 0
