#!/bin/sh
# soak.sh -- `make soak`: a leak soak of fepd.
#
# fepd runs as a daemon for SOAK_SESSIONS (default 100,000) poll and push
# sessions against dcusim, a fifth of them with faults (CRC errors, bad
# tags, replays, DCUs that never answer, garbage, cut connections).  Its
# resident memory and open descriptors are measured at two quiet moments:
# after a warm-up of SOAK_WARMUP sessions, and at the end.  They must be
# equal (RSS within 64 KiB): a leak of one buffer or one descriptor per
# session would show as megabytes or thousands.
#
# Linux /proc is used for RSS and descriptors; elsewhere `ps -o rss=` and
# the descriptor count of fepd's own ledger (SIGUSR1 stats line).
set -eu

SESSIONS=${SOAK_SESSIONS:-100000}
WARMUP=${SOAK_WARMUP:-5000}
KEY=000102030405060708090a0b0c0d0e0f
here=$(pwd)
dir="$here/soak"
base=$((20000 + $$ % 20000))
poll_port=$base
push_port=$((base + 1))
pids=""

cleanup() {
    for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
}
# A trap on a signal runs and then the script goes on, unless it exits: so
# INT and TERM exit, and the EXIT trap does the cleaning.
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rm -rf "$dir"
mkdir -p "$dir"
cd "$dir"

# Poll side: 400 DCUs, half keyed; faults on a fifth of the sessions.
poll_sim() {            # $1: first IC, so a restarted simulator never replays
    "$here/dcusim" --listen "127.0.0.1:$poll_port" --dcus 400 --records 30 \
        --key "$KEY" --keyed 50 --ic-start "$1" --timeout 1 \
        --fault crc:0@5% --fault badtag@3% --fault garbage:200@4% \
        --fault silent@2% --fault cut@3% --fault replay:0@3% \
        --config-out dcus.conf 2>>sim.log &
    sim_pid=$!
    pids="$pids $sim_pid"
}

{
    echo "fep_id FEP00001"
    echo "listen 127.0.0.1:$push_port"
    echo "data_dir ./data"
    echo "state_dir ./state"
    echo "max_sessions 64"
    echo "poll_every 0.05"
    echo "sync none"
    echo "timeout_connect 1"
    echo "timeout_frame 0.3"
    echo "timeout_idle 0.5"
    echo "timeout_session 5"
} > fep.conf

poll_sim 1
i=0
while [ ! -s dcus.conf ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
cat dcus.conf >> fep.conf
# Push-only DCUs 1001..1200, known to fepd, plaintext.
n=1001
while [ $n -le 1200 ]; do printf 'dcu DCU%05d -\n' $n >> fep.conf; n=$((n + 1)); done

"$here/fepd" -c fep.conf 2>fep.log &
fep_pid=$!
pids="$pids $fep_pid"
# Signals before fepd has installed its handlers would kill it: wait for its
# start-up line.
i=0
while ! grep -q 'static memory' fep.log && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
grep -q 'static memory' fep.log || { echo "soak: fepd did not start:"; cat fep.log; exit 1; }

# The last `stats:` line fepd writes on SIGUSR1, as "key=value" words.
stats() {
    before=$(grep -c 'stats:' fep.log || true)
    kill -USR1 "$fep_pid"
    i=0
    while [ "$(grep -c 'stats:' fep.log || true)" -le "$before" ] && [ $i -lt 100 ]; do
        sleep 0.02; i=$((i + 1))
    done
    grep 'stats:' fep.log | tail -1
}

stat_value() {          # $1: line, $2: key
    echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"
}

sessions() {
    line=$(stats)
    echo $(( $(stat_value "$line" poll_ok) + $(stat_value "$line" poll_error) + \
             $(stat_value "$line" push_ok) + $(stat_value "$line" push_error) ))
}

rss_kib() {
    if [ -r "/proc/$fep_pid/status" ]; then
        sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$fep_pid/status"
    else
        ps -o rss= -p "$fep_pid" | tr -d ' '
    fi
}

# Descriptors fepd holds beyond those of its open sessions, from one stats
# line (fepd keeps polling DCUs that are down, so a connect may be in flight
# at any moment).  /proc, where present, is shown beside it.
fds() {
    line=$(stats)
    echo $(( $(stat_value "$line" descriptors_open) - $(stat_value "$line" slots_in_use) ))
}

proc_fds() {
    if [ -d "/proc/$fep_pid/fd" ]; then
        ls "/proc/$fep_pid/fd" | wc -l | tr -d ' '
    else
        echo "?"
    fi
}

push_round=0
push_sim() {            # one round of 200 DCUs pushing K and S, some faults
    push_round=$((push_round + 1))
    "$here/dcusim" --push "127.0.0.1:$push_port" --dcus 200 --first 1001 \
        --records 30 --push-cmds KS --timeout 1 --seed "$push_round" \
        --fault crc:0@5% --fault garbage:100@5% --fault cut@3% \
        2>>push.log || true
}

# Runs load until fepd has counted $1 sessions, then stops the simulator
# and lets the sessions it held time out.
run_until() {
    while [ "$(sessions)" -lt "$1" ]; do
        push_sim
    done
    kill -TERM "$sim_pid"
    wait "$sim_pid" 2>/dev/null || true
    sleep 1
}

start=$(date +%s)
run_until "$WARMUP"
rss_a=$(rss_kib); fds_a=$(fds); s_a=$(sessions)
echo "soak: after warm-up: sessions=$s_a rss_kib=$rss_a descriptors=$fds_a (/proc: $(proc_fds) with sessions in flight)"

poll_sim 100000000
run_until "$SESSIONS"
rss_b=$(rss_kib); fds_b=$(fds); s_b=$(sessions)
end=$(date +%s)
echo "soak: at the end:    sessions=$s_b rss_kib=$rss_b descriptors=$fds_b (/proc: $(proc_fds) with sessions in flight)"

line=$(stats)
echo "soak: fepd $line" | sed 's/.*stats: /soak: fepd stats: /'
kill -TERM "$fep_pid"
wait "$fep_pid" || { echo "soak: fepd exited with $?"; exit 1; }
grep 'ledger:' fep.log | tail -1 | sed 's/.*ledger:/soak: fepd ledger:/'
echo "soak: $((s_b - s_a)) sessions in $((end - start)) s, $push_round push rounds"

grow=$((rss_b - rss_a))
if [ "$fds_a" -ne "$fds_b" ] || [ "$grow" -gt 64 ] || [ "$grow" -lt -64 ]; then
    echo "soak: FAILED: rss $rss_a -> $rss_b KiB, descriptors $fds_a -> $fds_b"
    exit 1
fi
echo "soak: ok: rss $rss_a -> $rss_b KiB (within 64 KiB), descriptors $fds_a -> $fds_b"
