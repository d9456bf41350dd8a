#!/bin/sh
# fepd-load-pg.sh -- loads the CSV segments fepd hands to DATA_DIR/ready/
# (config: rotate SECONDS) into PostgreSQL, and moves each one to
# DATA_DIR/done/ once it is in.
#
#   usage: fepd-load-pg.sh DATA_DIR
#
# Oldest first (by the time, then the SEQ in the name), each segment in one
# transaction: rows go to a temporary table with \copy, then into the table
# of their kind with INSERT ... ON CONFLICT DO NOTHING, so a reading that
# reached two segments, or a segment loaded twice, is stored once.  A segment
# moves to done/ only after its COMMIT succeeded.  The first failure stops
# the run: that segment stays in ready/ and the next run starts with it.
#
# psql's environment chooses the server and database (PGHOST, PGPORT,
# PGDATABASE, PGUSER, PGPASSWORD or ~/.pgpass, PGOPTIONS).  The tables are
# those of fepd-pg-schema.sql; FEPD_PG_PREFIX (default fep_) is the prefix
# of their names.  Run it from cron or a systemd path unit (HANDOFF.md);
# two runs at once are harmless but pointless.
#
# Exit status: 0 every waiting segment loaded (or none waiting), 1 a
# segment was not loaded (named on stderr), 2 usage.
set -u

prog=fepd-load-pg
if [ $# -ne 1 ] || [ ! -d "$1/ready" ]; then
    echo "usage: $prog.sh DATA_DIR   (DATA_DIR/ready/ must exist)" >&2
    exit 2
fi
ready=$1/ready
done_dir=$1/done
prefix=${FEPD_PG_PREFIX:-fep_}
mkdir -p "$done_dir" || exit 1

# KIND-FEPID-YYYYMMDDTHHMMSSZ-SEQ.csv and nothing else: FEPID is written
# with letters, digits, '_', '.' and %HH only, so the names split on '-'
# and need no quoting.
pattern='^(lp|dcu_status|meter_status|meter_change)-[A-Za-z0-9_.%]+-[0-9]{8}T[0-9]{6}Z-[0-9]+\.csv$'
names=$(for path in "$ready"/*.csv; do printf '%s\n' "${path##*/}"; done |
        grep -E "$pattern" | sort -t- -k3,3 -k4,4n) || true

for name in $names; do
    kind=${name%%-*}
    table=$prefix$kind
    if ! psql -X -q -v ON_ERROR_STOP=1 --single-transaction \
        -c "CREATE TEMPORARY TABLE fepd_stage (LIKE $table) ON COMMIT DROP" \
        -c "\\copy fepd_stage FROM pstdin WITH (FORMAT csv, HEADER true)" \
        -c "INSERT INTO $table SELECT * FROM fepd_stage ON CONFLICT DO NOTHING" \
        < "$ready/$name"; then
        echo "$prog: $ready/$name: not loaded; it stays in ready/" >&2
        exit 1
    fi
    if ! mv "$ready/$name" "$done_dir/$name"; then
        # Loaded: the next run loads it again, and ON CONFLICT keeps it once.
        echo "$prog: $ready/$name: loaded, but not moved to done/" >&2
        exit 1
    fi
    echo "$prog: $name: loaded"
done
exit 0
