#!/bin/sh
# coverage.sh -- `make coverage`: the suite with every program built by
# gcc --coverage -O0 in $COV_DIR (the tests run there, so ./fepd_t and
# ./dcusim are the instrumented ones), then a table of line and branch
# coverage per source file.
#
# A program is built in one cc call, so gcc names its data files after the
# program (cov/fepd_t-store.gcda, cov/fep_test-store.gcda, ...): gcov reads
# each, and a source linked into several programs is merged line by line --
# a line or branch counts as covered when any program covered it.  The lines
# not covered are listed in $COV_DIR/uncovered.txt.  COV_FILTER runs a
# subset of the suite.
#
# Called by the makefile, which passes the flags and source lists in the
# environment; POSIX sh and awk.  Exit 1 when the tools are missing or the
# suite failed (the table is then of that run).

set -u
: "${COV_DIR:?}" "${COV_CC:?}" "${COV_FLAGS:?}" "${COV_SOURCES:?}"
: "${FEPD_SRC:?}" "${DCUSIM_SRC:?}" "${TEST_SRC:?}"
COV_FILTER=${COV_FILTER:-}
ALLOC_CHECK=${ALLOC_CHECK:-}

# gcov -t text in, one row per source out (see above).
COV_AWK='
function trim(s) { gsub(/^ +| +$/, "", s); return s }
BEGIN { n = split(want, order, " "); for (i = 1; i <= n; i++) wanted[order[i]] = 1 }
/^branch / {
    if (!(src in wanted)) next
    k = src SUBSEP line SUBSEP $2; br[k] = 1
    if ($3 == "taken" && $4 + 0 > 0) brt[k] = 1
    next
}
/^(call|function|unconditional) / { next }
{
    i = index($0, ":"); if (!i) next
    c = trim(substr($0, 1, i - 1)); rest = substr($0, i + 1)
    j = index(rest, ":"); ln = trim(substr(rest, 1, j - 1)) + 0
    if (ln == 0) {
        if (substr(rest, j + 1, 7) == "Source:") { src = substr(rest, j + 8); sub(/^.*\//, "", src) }
        next
    }
    line = ln
    if (!(src in wanted) || c == "-") next
    k = src SUBSEP ln; ex[k] = 1; sub(/\*$/, "", c)
    if (c != "#####" && c != "=====" && c + 0 > 0) cov[k] = 1
}
END {
    for (k in ex) { split(k, p, SUBSEP); lt[p[1]]++; if (k in cov) lc[p[1]]++; else print p[1] ":" p[2] ": line" > uncovered }
    for (k in br) { split(k, p, SUBSEP); bt[p[1]]++; if (k in brt) bc[p[1]]++; else print p[1] ":" p[2] ": branch " p[3] > uncovered }
    printf "%-12s %15s %8s %15s %8s\n", "file", "lines", "", "branches", ""
    for (i = 1; i <= n; i++) {
        f = order[i]; if (!lt[f]) continue
        printf "%-12s %7d/%-7d %7.1f%% %7d/%-7d %7.1f%%\n", f, lc[f], lt[f], 100 * lc[f] / lt[f], \
               bc[f], bt[f], bt[f] ? 100 * bc[f] / bt[f] : 100
    }
}'

if ! command -v "$COV_CC" >/dev/null 2>&1 || ! command -v gcov >/dev/null 2>&1
then
    echo "make coverage: needs $COV_CC and gcov"
    exit 1
fi

# Word splitting of the flag and source lists is intended below.
run() { echo "$*"; "$@" || exit 1; }
rm -rf "$COV_DIR" && mkdir -p "$COV_DIR" || exit 1
run $COV_CC $COV_FLAGS -o "$COV_DIR/fepd" $FEPD_SRC
run $COV_CC $COV_FLAGS -DFEP_FAULT $ALLOC_CHECK -o "$COV_DIR/fepd_t" $FEPD_SRC
run $COV_CC $COV_FLAGS -o "$COV_DIR/dcusim" $DCUSIM_SRC
run $COV_CC $COV_FLAGS -DFEP_FAULT -o "$COV_DIR/fep_test" $TEST_SRC

# The rest of the tree as the tests see it from the top (docs, ...).
for f in *; do
    [ "$f" = "$COV_DIR" ] || [ -e "$COV_DIR/$f" ] || ln -s "../$f" "$COV_DIR/$f"
done

echo "running the suite in $COV_DIR/ (log: $COV_DIR/test.log)"
(
    cd "$COV_DIR" || exit 1
    # An empty filter is no argument.
    ./fep_test $COV_FILTER >test.log 2>&1
    echo $? >test.rc
    tail -1 test.log
    grep '^FAIL' test.log
    true
)

for g in "$COV_DIR"/*.gcda; do
    gcov -b -c -t -o "$COV_DIR" "$g" 2>/dev/null
done | awk -v want="$COV_SOURCES" -v uncovered="$COV_DIR/uncovered.txt" \
    "$COV_AWK" | tee "$COV_DIR/summary.txt"
touch "$COV_DIR/uncovered.txt"
sort -t: -k1,1 -k2,2n -o "$COV_DIR/uncovered.txt" "$COV_DIR/uncovered.txt"
echo "lines and branches not covered: $COV_DIR/uncovered.txt"
if [ "$(cat "$COV_DIR/test.rc")" != 0 ]; then
    echo "make coverage: the suite failed; the table is of that run"
    exit 1
fi
exit 0
