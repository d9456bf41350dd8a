#!/bin/sh
# cross-test.sh -- `make cross-test`: fepd on other targets than the one
# that builds it (docs/PORTING.md, "Proving a port").
#
#   s390x    big-endian, 64-bit: fepd, dcusim and fep_test built with
#            s390x-linux-gnu-gcc -static; the unit tests that start no
#            process run under qemu-s390x; then two interop checks:
#            s390x fepd --once against the native dcusim, and the native
#            fepd --once against an s390x dcusim.
#   musl     fepd, dcusim and fep_test built with musl-gcc -static; the
#            same unit tests, and fepd --once against its dcusim.
#   tcc      the same with tcc (a plain build: no sanitizer, and no
#            allocation check, which needs a linker with --wrap).
#
# An interop check: dcusim plays 24 DCUs, half of them keyed (their own
# AES-128-GCM keys), each with 96 load-profile records over 3 meters;
# fepd --once asks every DCU for k, s, m and n.  It passes when fepd exits
# 0, lp.csv holds exactly the records dcusim reports acknowledged (and each
# of them), and the other three files hold a row per DCU or per meter.
#
# A step whose tool is missing prints "skipped: install PACKAGE".  Exit 0
# when no step failed, 1 when one did.  Builds go to cross/TARGET/ (the
# native binaries are not touched); runs go to a temporary directory that
# is removed at the end.  Called by the makefile with the flags and source
# lists in the environment; run from the top directory.  POSIX sh.

set -u
: "${STD:?}" "${WARN:?}" "${FEPD_SRC:?}" "${DCUSIM_SRC:?}" "${TEST_SRC:?}"
: "${UNIT_TEST_FILES:?}"

OUT=cross
CFLAGS_X="$STD $WARN -O2"
KEY=000102030405060708090a0b0c0d0e0f
DCUS=24
METERS=3
RECORDS=96

FAILURES=0
SUMMARY=""
PIDS=""
TMP=""

# ------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------

step() { printf '\n--- %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }
note() { SUMMARY="$SUMMARY
  $*"; }
passed() { echo "ok: $*"; note "ok       $*"; }
failed() { echo "FAILED: $*"; note "FAILED   $*"; FAILURES=$((FAILURES + 1)); }
skipped() { echo "skipped: install $2"; note "skipped  $1 (install $2)"; }

# A tenth of a second where sleep takes fractions (GNU, BSD, busybox).
nap() { sleep 0.1 2>/dev/null || sleep 1; }
alive() { kill -0 "$1" 2>/dev/null; }
forget() {
    _keep=""
    for _p in $PIDS; do [ "$_p" = "$1" ] || _keep="$_keep $_p"; done
    PIDS=$_keep
}

# reap PID TENTHS: waits for a process that ends by itself, at most
# TENTHS/10 s, then kills it.  RC: its exit status, or "killed".
reap() {
    _n=0
    while alive "$1" && [ "$_n" -lt "$2" ]; do nap; _n=$((_n + 1)); done
    if alive "$1"; then
        kill -KILL "$1" 2>/dev/null
        wait "$1" 2>/dev/null
        RC=killed
    else
        wait "$1" 2>/dev/null
        RC=$?
    fi
    forget "$1"
}

# stop PID TENTHS: SIGTERM, then reap.
stop() {
    kill -TERM "$1" 2>/dev/null
    reap "$1" "$2"
}

cleanup() {
    trap - EXIT INT TERM
    for _p in $PIDS; do
        kill -KILL "$_p" 2>/dev/null
        wait "$_p" 2>/dev/null
    done
    [ -n "$TMP" ] && rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_line FILE PATTERN PID TENTHS: 0 when the pattern appears in FILE;
# 1 when the process ended first; 2 on timeout.
wait_line() {
    _n=0
    while [ "$_n" -lt "$4" ]; do
        grep -q "$2" "$1" 2>/dev/null && return 0
        alive "$3" || { grep -q "$2" "$1" 2>/dev/null && return 0; return 1; }
        nap
        _n=$((_n + 1))
    done
    return 2
}

# rows FILE: data rows of a CSV file (the header line not counted).
rows() { awk 'END { print (NR > 0 ? NR - 1 : 0) }' "$1" 2>/dev/null; }

# build LABEL CC DIR EXTRA...: fepd, dcusim and fep_test with CC into DIR,
# with -Werror; the compiler's output is shown when a build fails.
build() {
    _label=$1 _cc=$2 _dir=$3
    shift 3
    mkdir -p "$_dir" || { failed "$_label: cannot create $_dir"; return 1; }
    # The flag and source lists are split into words on purpose.
    if $_cc $CFLAGS_X "$@" -o "$_dir/fepd" $FEPD_SRC >"$TMP/build.log" 2>&1 &&
        $_cc $CFLAGS_X "$@" -o "$_dir/dcusim" $DCUSIM_SRC >>"$TMP/build.log" 2>&1 &&
        $_cc $CFLAGS_X -DFEP_FAULT "$@" -o "$_dir/fep_test" $TEST_SRC \
            >>"$TMP/build.log" 2>&1; then
        passed "$_label: fepd, dcusim and fep_test built with $_cc $*"
        return 0
    fi
    cat "$TMP/build.log"
    failed "$_label: build with $_cc"
    return 1
}

# The names of the tests in UNIT_TEST_FILES: none of them starts a process.
unit_names() {
    sed -n 's/.*test_run("\([A-Za-z0-9_]*\)".*/\1/p' $UNIT_TEST_FILES
}

# unit_tests LABEL RUNNER...: each unit test by its name (fep_test runs the
# tests whose name contains its argument), with RUNNER (an emulator and the
# binary, or the binary).  A run fails unless it exits 0 and its last line
# is "N passed, 0 failed" with N > 0.
unit_tests() {
    _label=$1
    shift
    _names=0 _bad=""
    for _t in $(unit_names); do
        _names=$((_names + 1))
        "$@" "$_t" >"$TMP/unit.log" 2>&1
        _rc=$?
        if [ "$_rc" -ne 0 ] ||
            ! tail -1 "$TMP/unit.log" | grep -q '^[1-9][0-9]* passed, 0 failed$'
        then
            tail -20 "$TMP/unit.log" | sed 's/^/    /'
            _bad="$_bad $_t"
        fi
    done
    if [ "$_names" -eq 0 ]; then
        failed "$_label: no unit test found in $UNIT_TEST_FILES"
    elif [ -z "$_bad" ]; then
        passed "$_label: $_names unit tests, each run by name, passed"
    else
        failed "$_label: unit tests failed:$_bad"
    fi
}

PORT_NEXT=$((20000 + ($$ % 1500) * 20))

# interop LABEL DIR FEPD DCUSIM: see the top of the file.  FEPD and DCUSIM
# are commands (an emulator and a binary, or a binary), split into words.
interop() {
    _label=$1 _d=$TMP/$2 _fepd=$3 _sim=$4
    mkdir -p "$_d"
    _try=0
    while :; do
        _try=$((_try + 1))
        if [ "$_try" -gt 10 ]; then
            failed "$_label: dcusim found no free port"
            return
        fi
        _port=$PORT_NEXT
        PORT_NEXT=$((PORT_NEXT + 1))
        rm -f "$_d/dcus.conf" "$_d/acked.csv"
        $_sim --listen "127.0.0.1:$_port" --dcus "$DCUS" --key "$KEY" \
            --keyed 50 --meters "$METERS" --records "$RECORDS" --timeout 10 \
            --config-out "$_d/dcus.conf" --acked-csv "$_d/acked.csv" \
            2>"$_d/dcusim.log" &
        _sim_pid=$!
        PIDS="$PIDS $_sim_pid"
        wait_line "$_d/dcusim.log" "playing" "$_sim_pid" 300
        case $? in
        0) break ;;
        1) reap "$_sim_pid" 10
           [ "$RC" = 3 ] && continue
           sed 's/^/    /' "$_d/dcusim.log"
           failed "$_label: dcusim did not start (exit $RC)"
           return ;;
        *) stop "$_sim_pid" 30
           failed "$_label: dcusim did not start within 30 s"
           return ;;
        esac
    done

    {
        echo "fep_id          FEP00001"
        echo "data_dir        $_d/data"
        echo "state_dir       $_d/state"
        echo "max_sessions    32"
        echo "timeout_connect 10"
        echo "timeout_frame   10"
        sed 's/poll=k$/poll=k,s,m,n/' "$_d/dcus.conf"
    } >"$_d/fep.conf"

    $_fepd -c "$_d/fep.conf" --once 2>"$_d/fepd.log" &
    _fep_pid=$!
    PIDS="$PIDS $_fep_pid"
    reap "$_fep_pid" 1200
    _fep_rc=$RC
    stop "$_sim_pid" 300
    _sim_rc=$RC

    _acked=$(sed -n 's/^dcusim: sessions=.* records_acked=\([0-9]*\).*/\1/p' \
        "$_d/dcusim.log" | tail -1)
    _lp=$(rows "$_d/data/lp.csv")
    _missing=$(awk -F, 'FNR == 1 { next }
                        { k = $1 "," $2 "," $3 "," $4 "," $5 "," $6 }
                        FILENAME == lp { have[k] = 1; next }
                        !(k in have) { m++ }
                        END { print m + 0 }' lp="$_d/data/lp.csv" \
                   "$_d/data/lp.csv" "$_d/acked.csv" 2>/dev/null)
    _why=""
    [ "$_fep_rc" = 0 ] || _why="$_why; fepd --once exit $_fep_rc"
    [ "$_sim_rc" = 0 ] || _why="$_why; dcusim exit $_sim_rc"
    [ -n "$_acked" ] || _why="$_why; no report from dcusim"
    [ "${_acked:-x}" = "$_lp" ] ||
        _why="$_why; lp.csv has $_lp rows, dcusim acked ${_acked:-?}"
    [ "$_lp" = $((DCUS * RECORDS)) ] ||
        _why="$_why; lp.csv has $_lp rows, not $((DCUS * RECORDS))"
    [ "$_missing" = 0 ] ||
        _why="$_why; ${_missing:-?} acked records not in lp.csv"
    [ "$(rows "$_d/data/dcu_status.csv")" = "$DCUS" ] ||
        _why="$_why; dcu_status.csv does not have $DCUS rows"
    for _f in meter_status meter_change; do
        [ "$(rows "$_d/data/$_f.csv")" = $((DCUS * METERS)) ] ||
            _why="$_why; $_f.csv does not have $((DCUS * METERS)) rows"
    done
    if [ -z "$_why" ]; then
        passed "$_label: $_acked records acked by $DCUS DCUs, $_lp rows in lp.csv"
    else
        echo "    fepd's log:"
        tail -20 "$_d/fepd.log" | sed 's/^/    /'
        echo "    dcusim's log:"
        tail -5 "$_d/dcusim.log" | sed 's/^/    /'
        failed "$_label: ${_why#; }"
    fi
}

# ------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------

cd "$(dirname "$0")/.." || exit 1
if [ ! -x ./fepd ] || [ ! -x ./dcusim ]; then
    echo "cross-test: ./fepd and ./dcusim are not built: run make cross-test"
    exit 1
fi
TMP=$(mktemp -d "${TMPDIR:-/tmp}/fepd-cross.XXXXXX") || exit 1

step "s390x (big-endian): build"
S390X=no
S390X_MISSING=""
if have s390x-linux-gnu-gcc; then
    order=$(s390x-linux-gnu-gcc -dM -E - </dev/null |
        sed -n 's/^#define __BYTE_ORDER__ //p')
    echo "s390x-linux-gnu-gcc: __BYTE_ORDER__ is $order"
    if [ "$order" != __ORDER_BIG_ENDIAN__ ]; then
        failed "s390x: the compiler does not target a big-endian machine"
    elif build s390x s390x-linux-gnu-gcc "$OUT/s390x" -static; then
        S390X=yes
    fi
else
    S390X_MISSING=gcc-s390x-linux-gnu
    skipped "s390x" "$S390X_MISSING"
fi

step "s390x: unit tests under qemu-s390x"
if [ "$S390X" = yes ] && ! have qemu-s390x; then
    S390X=no
    S390X_MISSING=qemu-user
fi
if [ "$S390X" = yes ]; then
    unit_tests "s390x" qemu-s390x "$OUT/s390x/fep_test"
elif [ -n "$S390X_MISSING" ]; then
    skipped "s390x unit tests" "$S390X_MISSING"
else
    echo "not run: the s390x build failed"
fi

step "s390x fepd (qemu) --once against the native dcusim"
if [ "$S390X" = yes ]; then
    interop "s390x fepd, native dcusim" s390x-fepd \
        "qemu-s390x $OUT/s390x/fepd" ./dcusim
elif [ -n "$S390X_MISSING" ]; then
    skipped "s390x fepd interop" "$S390X_MISSING"
else
    echo "not run: the s390x build failed"
fi

step "native fepd --once against an s390x dcusim (qemu)"
if [ "$S390X" = yes ]; then
    interop "native fepd, s390x dcusim" s390x-dcusim \
        ./fepd "qemu-s390x $OUT/s390x/dcusim"
elif [ -n "$S390X_MISSING" ]; then
    skipped "s390x dcusim interop" "$S390X_MISSING"
else
    echo "not run: the s390x build failed"
fi

step "musl: build, unit tests, fepd --once against its dcusim"
if have musl-gcc; then
    if build musl musl-gcc "$OUT/musl" -static; then
        unit_tests musl "$OUT/musl/fep_test"
        interop "musl fepd, musl dcusim" musl "$OUT/musl/fepd" "$OUT/musl/dcusim"
    fi
else
    skipped musl musl-tools
fi

step "tcc: build, unit tests, fepd --once against its dcusim"
if have tcc; then
    if build tcc tcc "$OUT/tcc"; then
        unit_tests tcc "$OUT/tcc/fep_test"
        interop "tcc fepd, tcc dcusim" tcc "$OUT/tcc/fepd" "$OUT/tcc/dcusim"
    fi
else
    skipped tcc tcc
fi

printf '\n--- cross-test summary%s\n' "$SUMMARY"
if [ "$FAILURES" -ne 0 ]; then
    echo "cross-test: $FAILURES failed"
    exit 1
fi
echo "cross-test: ok"
exit 0
