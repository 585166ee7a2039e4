#!/usr/bin/env bash
# Sum cargo's "test result:" lines of the given logs into one closing line: "total: N passed, M failed".
set -euo pipefail
cat "$@" | awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
    END { printf "total: %d passed, %d failed\n", p, f; exit (f > 0 || p == 0) }'
