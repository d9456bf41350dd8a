#!/bin/sh
# analyze.sh -- `make analyze`: clang's static analyzer (clang --analyze,
# its default checkers) over every program file, with the flags of the
# build: as fepd, dcusim and fep_bench are built, and a file that has code
# of the test build fepd_t (-DFEP_FAULT -DFEP_ALLOC_CHECK) once more as
# that build.
#
# Exit 0 when no file has a finding; 1 when one has (each finding is shown
# with the path that leads to it) or a file does not compile; 2 when the
# analyzer is missing.  A finding is fixed in the code, never suppressed:
# see docs/PORTING.md.
#
# Called by the makefile with ANALYZER, STD and ANALYZE_SRC in the
# environment.  POSIX sh.

set -u
: "${ANALYZER:?}" "${STD:?}" "${ANALYZE_SRC:?}"

if ! command -v "$ANALYZER" >/dev/null 2>&1; then
    echo "make analyze: $ANALYZER not found: install clang"
    exit 2
fi

out=$(mktemp "${TMPDIR:-/tmp}/fepd-analyze.XXXXXX") || exit 1
trap 'rm -f "$out"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

files=0
bad=0
TEST_BUILD="-DFEP_FAULT -DFEP_ALLOC_CHECK"
for variant in "" "$TEST_BUILD"; do
    for f in $ANALYZE_SRC; do
        if [ -n "$variant" ] &&
            ! grep -q -e FEP_FAULT -e FEP_ALLOC_CHECK "$f"; then
            continue
        fi
        files=$((files + 1))
        # $STD and $variant are lists of flags: split on purpose.
        if ! "$ANALYZER" --analyze -Xanalyzer -analyzer-output=text \
            $STD $variant -o /dev/null "$f" >"$out" 2>&1; then
            echo "analyze: $f${variant:+ ($variant)}: does not compile"
            cat "$out"
            bad=$((bad + 1))
        elif grep -q 'warning:' "$out"; then
            cat "$out"
            bad=$((bad + 1))
        fi
    done
done

if [ "$bad" -ne 0 ]; then
    echo "analyze: $bad of $files runs with findings"
    exit 1
fi
echo "analyze: $files runs (every file, and those with test-build code as fepd_t): no finding"
exit 0
