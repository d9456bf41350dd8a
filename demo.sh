#!/bin/sh
# demo.sh -- `make demo`: fepd against simulated DCUs, with a summary for a
# reader who has never seen a DCU.
#
# What it starts, all on 127.0.0.1, everything under ./demo/ (wiped first):
#   dcusim A   answers polls as DCU00001..DCU00200 (half keyed), a few of
#              them misbehaving on purpose;
#   fepd       the daemon: polls those 200 DCUs once (poll_every is an hour,
#              longer than the demo), accepts pushes on `listen`, serves
#              /metrics;
#   dcusim B   pushes as DCU00201..DCU00280; fepd knows 201..270, not the
#              last ten.
# Then it scrapes /metrics once, stops everything with SIGTERM and prints
# the summary.  POSIX sh and standard utilities only; curl or wget is used
# for the scrape when present, else the figures come from fepd's log.
#
# Every wait is bounded, so the demo ends by itself (well under 60 s); the
# EXIT trap stops and reaps whatever it started, also on ^C.

set -u

DIR=demo
FEPD=./fepd
SIM=./dcusim
KEY=000102030405060708090a0b0c0d0e0f
POLL_DCUS=200
PUSH_FIRST=201
PUSH_DCUS=80                    # DCU00201..DCU00280
PUSH_KNOWN=70                   # fepd is told about DCU00201..DCU00270
METERS=4
RECORDS=96                      # 24 quarter-hours of 4 meters per DCU
# Faults of dcusim A, by DCU number (README, "dcusim": "Faults").  Keyed DCUs
# are 1..50 and 101..150 (--keyed 50), so the security faults go there.
FAULT_CRC=3                     # one packet with a bad CRC: NACK, resent, stored
FAULT_BADTAG=7                  # a forged tag: NACK SECURITY
FAULT_REPLAY=12                 # a reused invocation counter: NACK REPLAY
FAULT_SILENT=55                 # connects but never answers: timeout
FAULT_GARBAGE=120               # 100 noise bytes before its first frame

PIDS=""                         # started and not yet reaped
STARTED=no                      # $DIR is ours and holds logs
T0=$(date +%s)

say() { printf '%s\n' "$*"; }
fail() {
    printf 'demo: FAILED: %s\n' "$*" >&2
    [ "$STARTED" = yes ] && printf 'demo: logs are in %s/\n' "$DIR" >&2
    exit 1
}
# A tenth of a second where sleep takes fractions (GNU, BSD, busybox).
nap() { sleep 0.1 2>/dev/null || sleep 1; }
alive() { kill -0 "$1" 2>/dev/null; }
forget() {
    _keep=""
    for _p in $PIDS; do [ "$_p" = "$1" ] || _keep="$_keep $_p"; done
    PIDS=$_keep
}

# stop PID TENTHS: SIGTERM, wait up to TENTHS/10 s, then SIGKILL.  Sets RC
# to the exit status, or "killed" when it had to be killed.
stop() {
    kill -TERM "$1" 2>/dev/null
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

# reap PID TENTHS: waits for a process that ends by itself; RC as stop.
reap() {
    _n=0
    while alive "$1" && [ "$_n" -lt "$2" ]; do nap; _n=$((_n + 1)); done
    if alive "$1"; then
        stop "$1" 30
        RC=killed
        return
    fi
    wait "$1" 2>/dev/null
    RC=$?
    forget "$1"
}

cleanup() {
    trap - EXIT INT TERM
    for _p in $PIDS; do
        stop "$_p" 30
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_line FILE PATTERN PID TENTHS: 0 when the pattern appears in the log;
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

# ------------------------------------------------------------------------
# Start
# ------------------------------------------------------------------------

[ -x "$FEPD" ] && [ -x "$SIM" ] ||
    fail "$FEPD and $SIM are not built: run 'make demo' from the top directory"
rm -rf "$DIR" || fail "cannot remove the old $DIR/"
mkdir -p "$DIR" || fail "cannot create $DIR/"
STARTED=yes

# Ports: three consecutive ones from a base derived from our pid, tried by
# the programs themselves (dcusim and fepd exit 3 when they cannot listen),
# and the next three when one is taken.
BASE=$((20000 + ($$ % 1500) * 20))
ATTEMPT=0
while :; do
    ATTEMPT=$((ATTEMPT + 1))
    [ "$ATTEMPT" -le 20 ] || fail "no three free TCP ports found on 127.0.0.1"
    P_POLL=$((BASE + ATTEMPT * 3))      # dcusim A answers polls here
    P_PUSH=$((P_POLL + 1))              # fepd's listen address
    P_METRICS=$((P_POLL + 2))           # fepd's /metrics

    # The push DCUs' config lines: a dcusim that listens for 10 ms on the
    # port fepd will take writes them (and shows that the port is free).
    "$SIM" --listen "127.0.0.1:$P_PUSH" --dcus "$PUSH_DCUS" \
        --first "$PUSH_FIRST" --key "$KEY" --keyed 50 \
        --config-out "$DIR/push-dcus.conf" --duration 0.01 -q \
        >/dev/null 2>"$DIR/probe.log"
    RC=$?
    [ "$RC" = 3 ] && continue
    [ "$RC" = 0 ] || fail "dcusim failed (exit $RC): see $DIR/probe.log"

    "$SIM" --listen "127.0.0.1:$P_POLL" --dcus "$POLL_DCUS" --key "$KEY" \
        --keyed 50 --meters "$METERS" --records "$RECORDS" --timeout 5 \
        --fault "crc@$FAULT_CRC" --fault "badtag@$FAULT_BADTAG" \
        --fault "replay@$FAULT_REPLAY" --fault "silent@$FAULT_SILENT" \
        --fault "garbage@$FAULT_GARBAGE" \
        --config-out "$DIR/poll-dcus.conf" --acked-csv "$DIR/poll-acked.csv" \
        2>"$DIR/dcusim-poll.log" &
    SIM_POLL=$!
    PIDS="$PIDS $SIM_POLL"
    wait_line "$DIR/dcusim-poll.log" "playing" "$SIM_POLL" 50
    case $? in
    0) ;;
    1) reap "$SIM_POLL" 10
       [ "$RC" = 3 ] && continue
       fail "dcusim (polls) did not start (exit $RC): see $DIR/dcusim-poll.log" ;;
    *) fail "dcusim (polls) did not start within 5 s" ;;
    esac

    # fepd's config: the directives, then the DCUs.  Every tenth polled DCU
    # is asked for all four things (load profile, DCU status, meter status,
    # meter changes); the others for the load profile only.
    {
        say "# written by demo.sh"
        say "fep_id          FEP00001"
        say "listen          127.0.0.1:$P_PUSH"
        say "metrics         127.0.0.1:$P_METRICS"
        say "data_dir        $DIR/data"
        say "state_dir       $DIR/state"
        say "max_sessions    256"
        say "poll_every      3600"
        say "sync            packet"
        say "timeout_frame   2"
        say "timeout_idle    5"
        say "timeout_session 30"
        sed 's/^\(dcu DCU[0-9]*0 .*\)poll=k$/\1poll=k,s,m,n/' "$DIR/poll-dcus.conf"
        sed -n "1,${PUSH_KNOWN}p" "$DIR/push-dcus.conf" |
            sed 's/^\(dcu [^ ]*\) [^ ]* /\1 - /'
    } >"$DIR/fep.conf" || fail "cannot write $DIR/fep.conf"

    "$FEPD" -c "$DIR/fep.conf" 2>"$DIR/fepd.log" &
    FEP=$!
    PIDS="$PIDS $FEP"
    wait_line "$DIR/fepd.log" "static memory" "$FEP" 50
    case $? in
    0) break ;;
    1) reap "$FEP" 10
       if [ "$RC" = 3 ] && grep -q "in use" "$DIR/fepd.log"; then
           stop "$SIM_POLL" 30
           continue
       fi
       fail "fepd did not start (exit $RC): see $DIR/fepd.log" ;;
    *) fail "fepd did not start within 5 s: see $DIR/fepd.log" ;;
    esac
done

# dcusim B: 80 DCUs push one load-profile session each, 20 at a time.
"$SIM" --push "127.0.0.1:$P_PUSH" --dcus "$PUSH_DCUS" --first "$PUSH_FIRST" \
    --key "$KEY" --keyed 50 --meters "$METERS" --records "$RECORDS" \
    --push-concurrency 20 --timeout 5 --acked-csv "$DIR/push-acked.csv" \
    2>"$DIR/dcusim-push.log" &
SIM_PUSH=$!
PIDS="$PIDS $SIM_PUSH"

# Wait (at most 20 s) until fepd has ended a session with every polled DCU
# (the silent one takes timeout_frame) and dcusim B has finished.
N=0
while [ "$N" -lt 200 ]; do
    POLLED=$(grep -c ' session poll ' "$DIR/fepd.log")
    [ "$POLLED" -ge "$POLL_DCUS" ] && ! alive "$SIM_PUSH" && break
    alive "$FEP" || fail "fepd stopped during the run: see $DIR/fepd.log"
    nap
    N=$((N + 1))
done
reap "$SIM_PUSH" 10
PUSH_RC=$RC
[ "$POLLED" -ge "$POLL_DCUS" ] ||
    fail "fepd ended sessions with $POLLED of $POLL_DCUS DCUs in 20 s"

# The figures while fepd still runs: its statistics line, and /metrics.
kill -USR1 "$FEP" 2>/dev/null
wait_line "$DIR/fepd.log" "stats:" "$FEP" 30 || fail "fepd wrote no stats line"
URL="http://127.0.0.1:$P_METRICS/metrics"
SCRAPED=no
if command -v curl >/dev/null 2>&1; then
    curl -fsS -m 5 -o "$DIR/metrics.txt" "$URL" 2>"$DIR/scrape.log" && SCRAPED=curl
elif command -v wget >/dev/null 2>&1; then
    wget -q -T 5 -O "$DIR/metrics.txt" "$URL" 2>"$DIR/scrape.log" && SCRAPED=wget
fi

stop "$FEP" 50
FEP_RC=$RC
stop "$SIM_POLL" 30
SIM_RC=$RC
[ "$FEP_RC" = 0 ] || fail "fepd did not stop cleanly on SIGTERM (exit $FEP_RC)"
[ "$SIM_RC" = 0 ] || fail "dcusim (polls) did not stop cleanly (exit $SIM_RC)"
[ "$PUSH_RC" = 0 ] || fail "dcusim (pushes) failed (exit $PUSH_RC): see $DIR/dcusim-push.log"
T1=$(date +%s)

# ------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------

LOG=$DIR/fepd.log
DATA=$DIR/data

# metric NAME_AND_LABELS: its value in the scrape, empty when absent.
metric() {
    [ -f "$DIR/metrics.txt" ] || return 0
    awk -v k="$1" '$1 == k { print $2; exit }' "$DIR/metrics.txt"
}
# kv FILE PATTERN KEY: KEY's value in the last line of FILE that matches
# PATTERN, a line of key=value fields.
kv() {
    awk -v k="$3" "/$2/"' { line = $0 }
        END { n = split(line, f, " ")
              for (i = 1; i <= n; i++)
                  if (index(f[i], k "=") == 1) print substr(f[i], length(k) + 2) }' "$1"
}
# stat KEY: from fepd's last stats line.
stat() { kv "$LOG" "stats:" "$1"; }
# rows FILE: data rows of a CSV file (the header line not counted).
rows() { awk 'END { print (NR > 0 ? NR - 1 : 0) }' "$1" 2>/dev/null; }
# simkey LOG KEY: from a dcusim report; simsum KEY: both reports added.
simkey() { kv "$1" "^dcusim: sessions=" "$2"; }
simsum() {
    echo $(( $(simkey "$DIR/dcusim-poll.log" "$1") +
             $(simkey "$DIR/dcusim-push.log" "$1") ))
}
# dcu N: the id of DCU number N.
dcu() { printf 'DCU%05d' "$1"; }

MEM_START=$(sed -n 's/.*static memory \([0-9]*\) bytes.*/\1/p' "$LOG" | sed -n 1p)
MEM_END=$(stat static_memory_bytes)
MEM_METRIC=$(metric fep_static_memory_bytes)

say ""
say "=== fepd demo: what happened ==="
say "A DCU (data concentrator unit) sits in the field and gathers the readings of"
say "many electricity meters; fepd is the server side that collects them."
say "fepd polled $POLL_DCUS simulated DCUs for their meters' quarter-hourly readings"
say "while $PUSH_DCUS other DCUs pushed theirs unasked, and stored in CSV files every"
say "reading it acknowledged.  A few DCUs misbehaved on purpose (a damaged frame, a"
say "forged and a replayed encrypted one, silence, line noise, DCUs fepd does not"
say "know): fepd refused those frames with the matching NACK or timed the DCU out,"
say "went on with the others, and lost nothing."
say ""

say "--- sessions (one connection with one DCU) ---"
awk '$4 == "session" && ($5 == "poll" || $5 == "push") {
        res = ($9 == "ok") ? "ok" : "error"
        n[$5 " " res]++
        if (res == "error") {
            why = ""
            for (i = 10; i <= NF && $i !~ /^records=/; i++)
                why = why (why == "" ? "" : " ") $i
            k = $5 ": " why
            if ($6 == "-") anon[k]++
            else e[k] = e[k] " " $6
        }
     }
     END {
        printf "1  poll: %d ok, %d error\n", n["poll ok"], n["poll error"]
        printf "2  push: %d ok, %d error\n", n["push ok"], n["push error"]
        for (k in e)
            printf "3    failed, %s:%s\n", k, e[k]
        for (k in anon)
            printf "4    failed, %s: %d sessions with DCUs not in the config\n",
                   k, anon[k]
     }' "$LOG" | sort | sed 's/^[0-9]//'
M_POLL_OK=$(metric 'fep_sessions_total{kind="poll",result="ok"}')
M_PUSH_OK=$(metric 'fep_sessions_total{kind="push",result="ok"}')
[ -n "$M_POLL_OK" ] &&
    say "  (/metrics agrees: fep_sessions_total ok:" \
        "poll $M_POLL_OK, push $M_PUSH_OK)"
say ""

say "--- NACKs fepd sent (a NACK is the answer to a frame it refused) ---"
# How many: /metrics when scraped, else what the simulators report having
# received.  To whom: fepd's log lines, one for every NACK.
for CODE in crc header length security replay unknown command sequence \
    store busy; do
    C=$(metric "fep_nacks_sent_total{code=\"$CODE\"}")
    IDS=$(awk -v c="$CODE" '$6 == "NACK" && $7 == c &&
                            ($4 == "poll" || $4 == "push") {
              id = $5; sub(/:$/, "", id); n[id]++ }
              END { for (id in n) print id, n[id] }' "$LOG" | sort |
          awk '$1 == "?" { anon = $2; next }
               { printf " %s%s", $1, ($2 > 1 ? "(x" $2 ")" : "") }
               END { if (anon) printf " %d unidentified peer%s", anon,
                                      (anon > 1 ? "s" : "") }')
    [ -n "$C" ] || C=$(simsum "nack_$CODE")
    [ "$C" = 0 ] && continue
    case $CODE in
    crc)
        WHY="a frame arrived damaged; the DCU sends it again"
        WHY="$WHY (set up: $(dcu $FAULT_CRC))" ;;
    security)
        WHY="the frame's authentication tag did not verify"
        WHY="$WHY (set up: $(dcu $FAULT_BADTAG))" ;;
    replay)
        WHY="an old invocation counter, i.e. a replayed frame"
        WHY="$WHY (set up: $(dcu $FAULT_REPLAY))" ;;
    unknown)
        WHY="a DCU that is not in fepd's config (set up:"
        WHY="$WHY $(dcu $((PUSH_FIRST + PUSH_KNOWN)))"
        WHY="$WHY..$(dcu $((PUSH_FIRST + PUSH_DCUS - 1))))" ;;
    busy)
        WHY="fepd was at max_sessions, or already talking to that DCU" ;;
    *) WHY="" ;;
    esac
    [ -n "$IDS" ] || IDS=" (not named in fepd's log)"
    printf '  %-9s %4s  to:%s\n' "$CODE" "$C" "$IDS"
    [ -n "$WHY" ] && printf '  %-9s        %s\n' "" "$WHY"
done
GARB=$(stat garbage_bytes)
say "  Not NACKs: $(dcu $FAULT_SILENT) never answered and was timed out after"
say "  timeout_frame; $(dcu $FAULT_GARBAGE) sent ${GARB:-?} bytes of noise first," \
    "which fepd skipped."
say ""

say "--- records stored ---"
LP=$(rows "$DATA/lp.csv")
M_REC=$(metric fep_records_stored_total)
say "  load-profile readings (lp.csv):       $LP"
say "  DCU status rows (dcu_status.csv):     $(rows "$DATA/dcu_status.csv")"
say "  meter status rows (meter_status.csv): $(rows "$DATA/meter_status.csv")"
say "  meter changes (meter_change.csv):     $(rows "$DATA/meter_change.csv")"
M_REC=${M_REC:+ (fep_records_stored_total $M_REC)}
say "  rows in all files: $(stat records_stored)$M_REC"
GEN=$(simsum records_generated)
ACK=$(simsum records_acked)
# Every reading a DCU saw acknowledged must be in lp.csv.
MISSING=$(awk -F, 'FNR == 1 { next }
                   { k = $1 "," $2 "," $3 "," $4 "," $5 "," $6 }
                   FILENAME == lp { have[k] = 1; next }
                   !(k in have) { m++ }
                   END { print m + 0 }' lp="$DATA/lp.csv" \
              "$DATA/lp.csv" "$DIR/poll-acked.csv" "$DIR/push-acked.csv")
say "  The DCUs had $GEN readings ready; fepd acknowledged $ACK of them, and"
say "  $((ACK - MISSING)) of those are in lp.csv (missing: $MISSING).  The other" \
    "$((GEN - ACK)) stay"
say "  at their DCUs, which send them again at the next poll or push."
say ""

say "--- fepd's memory ---"
MEM_METRIC=${MEM_METRIC:+ (/metrics: $MEM_METRIC)}
say "  static memory: $MEM_START bytes at start-up, ${MEM_END:-?} after the" \
    "run$MEM_METRIC"
say "  fepd allocates everything at start-up and nothing afterwards."
say ""

say "--- files (under $DIR/) ---"
for F in lp dcu_status meter_status meter_change; do
    say "  $DATA/$F.csv"
done
say "  $DIR/state/fepd.state   invocation counters and per-DCU statistics"
say "  $DIR/fep.conf           fepd's config;  $DIR/fepd.log  its log"
if [ "$SCRAPED" != no ]; then
    say "  $DIR/metrics.txt        the /metrics scrape (by $SCRAPED)"
else
    say "  (no curl or wget here: /metrics was not scraped;" \
        "the figures are from the logs)"
fi
say "  $DIR/dcusim-poll.log, $DIR/dcusim-push.log:" \
    "the simulators' logs and reports"
say ""

say "--- sample rows ---"
say "  $DATA/lp.csv (meter, end of the interval in Unix seconds," \
    "Wh imported and exported):"
sed -n '1,4p' "$DATA/lp.csv" | sed 's/^/    /'
say "  $DATA/dcu_status.csv:"
sed -n '1,2p' "$DATA/dcu_status.csv" | sed 's/^/    /'
say "  $DATA/meter_change.csv:"
sed -n '1,2p' "$DATA/meter_change.csv" | sed 's/^/    /'
say ""

[ "$MEM_START" = "$MEM_END" ] ||
    fail "static memory changed: $MEM_START -> $MEM_END"
[ "$MISSING" = 0 ] || fail "$MISSING acknowledged readings are not in lp.csv"
say "demo: ok in $((T1 - T0)) s; fepd and both dcusims were stopped and reaped."
exit 0
