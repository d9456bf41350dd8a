-- fepd-pg-schema.sql: the tables contrib/fepd-load-pg.sh loads fepd's CSV
-- segments into (docs/HANDOFF.md).  Columns as in the CSV files; the
-- primary key of each table is the row's natural key, so that a reading
-- that reaches two segments (delivery is at-least-once) is stored once.
-- Ids are text as fepd writes them: padding cut, bytes outside printable
-- ASCII and '%' as %HH.  u32 values need bigint.

CREATE TABLE IF NOT EXISTS fep_lp (
    dcu_id      text     NOT NULL,
    meter_id    text     NOT NULL,
    ts          bigint   NOT NULL,      -- interval end, Unix seconds
    import_wh   bigint   NOT NULL,
    export_wh   bigint   NOT NULL,
    status      integer  NOT NULL,
    qsn         integer  NOT NULL,
    fsn         integer  NOT NULL,
    received_at bigint   NOT NULL,      -- when fepd received it
    PRIMARY KEY (dcu_id, meter_id, ts)
);

CREATE TABLE IF NOT EXISTS fep_dcu_status (
    dcu_id      text     NOT NULL,
    fw_version  integer  NOT NULL,
    uptime_s    bigint   NOT NULL,
    clock       bigint   NOT NULL,      -- the DCU's clock when it reported
    meter_count integer  NOT NULL,
    flags       integer  NOT NULL,
    received_at bigint   NOT NULL,
    PRIMARY KEY (dcu_id, clock, uptime_s)
);

CREATE TABLE IF NOT EXISTS fep_meter_status (
    dcu_id      text     NOT NULL,
    meter_id    text     NOT NULL,
    status      smallint NOT NULL,
    last_seen   bigint   NOT NULL,
    received_at bigint   NOT NULL,
    PRIMARY KEY (dcu_id, meter_id, status, last_seen)
);

CREATE TABLE IF NOT EXISTS fep_meter_change (
    dcu_id      text     NOT NULL,
    meter_id    text     NOT NULL,
    change      smallint NOT NULL,      -- 1 new, 2 removed, 3 replaced
    ts          bigint   NOT NULL,
    received_at bigint   NOT NULL,
    PRIMARY KEY (dcu_id, meter_id, change, ts)
);
