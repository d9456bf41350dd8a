/*
 * test_store.c -- tests of store.c (the CSV files): exact file contents
 * for known payloads, and every failure the sys.c fault table can make (ENOSPC, EIO, EMFILE, a file
 * replaced or rotated under the store, a torn tail left by a crash), each
 * followed by a pass that must succeed; with rotate, the segments handed
 * to ready/ (names, SEQ across restarts, crash repair, a handoff that
 * fails, reopen, a reload that turns rotate on or off).  Every test ends
 * with the descriptor ledger balanced.
 *
 * Owns: the store (static: its buffers are 256 KiB) and the directories
 * under test_tmpdir, removed at the end of each test.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fep.h"
#include "test.h"

#define DIR_SIZE 200
#define TEXT_SIZE (512 * 1024)

static store st_store;
static char text[TEXT_SIZE];            /* a file read back */
static char want[TEXT_SIZE];            /* what it must hold */
static char dir[DIR_SIZE];

static const char lp_header[] =
    "dcu_id,meter_id,ts,import_wh,export_wh,status,qsn,fsn,received_at\n";
static const char dcu_status_header[] =
    "dcu_id,fw_version,uptime_s,clock,meter_count,flags,received_at\n";
static const char meter_status_header[] =
    "dcu_id,meter_id,status,last_seen,received_at\n";
static const char meter_change_header[] =
    "dcu_id,meter_id,change,ts,received_at\n";

/* ------------------------------------------------------------------------
 * Fixtures
 * ---------------------------------------------------------------------- */

/* Faults for the calls from now on ("" for none); file writes are
 * "fwrite", sys.c's name for sys_write_all. */
static void fault(const char *spec)
{
    CHECK(sys_fault_set(spec) == 0);
}

static void begin(const char *tag)
{
    test_unit_begin(dir, sizeof dir, tag);
}

/* Checks that no descriptor is left open, and removes dir. */
static void end(void)
{
    test_unit_end(dir);
}

static const char *path_of(const char *name)
{
    return test_path(dir, name);
}

/* The file's whole text (empty when it cannot be read). */
static const char *file_text(const char *name)
{
    if (test_read_file(path_of(name), text, sizeof text) < 0)
        text[0] = '\0';
    return text;
}

#define CHECK_FILE(name, expected) \
    CHECK_STR_EQ(file_text(name), (expected))
#define CHECK_STR_EQ(a, b) check_str_eq((a), (b), __FILE__, __LINE__)

static void check_str_eq(const char *a, const char *b, const char *file,
                         int line)
{
    int ok = strcmp(a, b) == 0;

    test_check(ok, file, line, "file text as expected");
    if (!ok)
        fprintf(stderr, "--- got:\n%.2000s--- want:\n%.2000s---\n", a, b);
}

static int store_open_at(const char *data_dir, int sync_packet,
                         unsigned rotate_s, char *err, size_t errlen)
{
    store_config c = { data_dir, "FEP00001", sync_packet, rotate_s };

    return store_open(&st_store, &c, err, errlen);
}

static int store_open_here(int sync_packet)
{
    char err[512];
    int rc = store_open_at(dir, sync_packet, 0, err, sizeof err);

    if (rc != 0)
        fprintf(stderr, "store_open: %s\n", err);
    return rc;
}

static void meter_set(uint8_t id[METER_ID_SIZE], const char *s)
{
    size_t n = strlen(s);

    memset(id, ' ', METER_ID_SIZE);
    memcpy(id, s, n < METER_ID_SIZE ? n : METER_ID_SIZE);
}

/* A K payload of n records; record i differs from record 0 by ts + 900 i. */
static size_t k_payload(uint8_t *p, unsigned n, const char *meter)
{
    lp_record r;
    unsigned i;

    p[0] = (uint8_t)n;
    for (i = 0; i < n; i++) {
        meter_set(r.meter_id, meter);
        r.ts = 1767225600u + 900u * i;
        r.import_wh = 123456 + i;
        r.export_wh = 789;
        r.status = 0;
        lp_record_put(p, i, &r);
    }
    return payload_size(CMD_LP_RSP, n);
}

/* The lp row of record i of k_payload(.., meter). */
static int k_row(char *out, size_t cap, unsigned i, const char *meter,
                 unsigned qsn, unsigned fsn)
{
    return snprintf(out, cap, "DCU00001,%s,%u,%u,789,0,%u,%u,1767225700\n",
                    meter, 1767225600u + 900u * i, 123456 + i, qsn, fsn);
}

/* Adds one K packet of n records from DCU00001; returns store_add's result. */
static int add_k(unsigned n, uint16_t fsn)
{
    uint8_t p[PAYLOAD_MAX_PLAIN];
    size_t len = k_payload(p, n, "MTR000000001");

    return store_add(&st_store, "DCU00001", CMD_LP_RSP, p, len, 7, fsn,
                     1767225700);
}

/* want = lp header + the rows of add_k(n, fsn) for fsn first..last. */
static void want_k(unsigned n, unsigned first, unsigned last)
{
    size_t len = strlen(strcpy(want, lp_header));
    unsigned f, i;

    for (f = first; f <= last; f++)
        for (i = 0; i < n; i++)
            len += (size_t)k_row(want + len, sizeof want - len, i,
                                 "MTR000000001", 7, f);
}

/* ------------------------------------------------------------------------
 * store.c
 * ---------------------------------------------------------------------- */

static void test_store_rows_exact(void)
{
    uint8_t p[PAYLOAD_MAX_PLAIN];
    lp_record r;
    meter_item m;
    dcu_status s;

    begin("store-rows");
    CHECK(store_open_here(1) == 0);
    k_payload(p, 2, "MTR000000001");
    meter_set(r.meter_id, "MTR2");
    r.ts = 1767226500;
    r.import_wh = 4294967295u;
    r.export_wh = 0;
    r.status = 65535;
    lp_record_put(p, 1, &r);
    CHECK_EQ(store_add(&st_store, "DCU00001", CMD_LP_RSP, p,
                       payload_size(CMD_LP_RSP, 2), 7, 3, 1767225700), 2);

    s.fw_version = 258;
    s.uptime_s = 86400;
    s.clock = 1767225601;
    s.meter_count = 120;
    s.flags = 5;
    dcu_status_put(p, &s);
    CHECK_EQ(store_add(&st_store, "DCU2", CMD_DCU_STATUS_RSP, p,
                       DCU_STATUS_SIZE, 1, 0, 1767225701), 1);

    p[0] = 2;
    meter_set(m.meter_id, "MTR000000001");
    m.code = 1;
    m.ts = 1767225000;
    meter_item_put(p, 0, &m);
    meter_set(m.meter_id, "M9");
    m.code = 0;
    m.ts = 0;
    meter_item_put(p, 1, &m);
    CHECK_EQ(store_add(&st_store, "DCU2", CMD_METER_STATUS_RSP, p,
                       payload_size(CMD_METER_STATUS_RSP, 2), 2, 0, 1767225702), 2);

    p[0] = 1;
    meter_set(m.meter_id, "NEW000000007");
    m.code = 3;
    m.ts = 1767220000;
    meter_item_put(p, 0, &m);
    CHECK_EQ(store_add(&st_store, "DCU00001", CMD_METER_CHANGE_RSP, p,
                       payload_size(CMD_METER_CHANGE_RSP, 1), 3, 0, -1), 1);
    CHECK_EQ(st_store.rows_pending, 6);
    CHECK(store_commit(&st_store) == 0);
    CHECK_EQ(st_store.rows_pending, 0);
    store_close(&st_store);

    CHECK_FILE("lp.csv",
               "dcu_id,meter_id,ts,import_wh,export_wh,status,qsn,fsn,received_at\n"
               "DCU00001,MTR000000001,1767225600,123456,789,0,7,3,1767225700\n"
               "DCU00001,MTR2,1767226500,4294967295,0,65535,7,3,1767225700\n");
    CHECK_FILE("dcu_status.csv",
               "dcu_id,fw_version,uptime_s,clock,meter_count,flags,received_at\n"
               "DCU2,258,86400,1767225601,120,5,1767225701\n");
    CHECK_FILE("meter_status.csv",
               "dcu_id,meter_id,status,last_seen,received_at\n"
               "DCU2,MTR000000001,1,1767225000,1767225702\n"
               "DCU2,M9,0,0,1767225702\n");
    CHECK_FILE("meter_change.csv",
               "dcu_id,meter_id,change,ts,received_at\n"
               "DCU00001,NEW000000007,3,1767220000,-1\n");
    end();
}

/* RFC 4180 quoting and %HH escaping of ids; padding is cut, only at the end. */
static void test_store_escaping(void)
{
    static const struct { uint8_t id[METER_ID_SIZE]; const char *field; } cases[] = {
        { "A,B         ", "\"A,B\"" },
        { "Q\"T         ", "\"Q\"\"T\"" },
        { { 'M', 0x00, 0x7F, 0xFF, '%', '1', '\n', '\r', ' ', ' ', ' ', ' ' },
          "M%00%7F%FF%251%0A%0D" },
        { " LEAD IN    ", " LEAD IN" },
        { "            ", "" },
        { "%,\"         ", "\"%25,\"\"\"" },
        { { 'x', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', 0x00 },
          "x          %00" },
    };
    uint8_t p[PAYLOAD_MAX_PLAIN];
    size_t len, i, n = sizeof cases / sizeof cases[0];
    meter_item m;

    begin("store-escape");
    CHECK(store_open_here(1) == 0);
    p[0] = (uint8_t)n;
    for (i = 0; i < n; i++) {
        memcpy(m.meter_id, cases[i].id, METER_ID_SIZE);
        m.code = 2;
        m.ts = 10;
        meter_item_put(p, (unsigned)i, &m);
    }
    CHECK_EQ(store_add(&st_store, "D,\"1", CMD_METER_CHANGE_RSP, p,
                       payload_size(CMD_METER_CHANGE_RSP, (unsigned)n), 1, 0, 20),
             n);
    CHECK(store_commit(&st_store) == 0);
    store_close(&st_store);
    len = strlen(strcpy(want, meter_change_header));
    for (i = 0; i < n; i++)
        len += (size_t)snprintf(want + len, sizeof want - len,
                                "\"D,\"\"1\",%s,2,10,20\n", cases[i].field);
    CHECK_FILE("meter_change.csv", want);
    end();
}

/* A second open finds the header and appends; it writes no second header. */
static void test_store_header_once(void)
{
    begin("store-header");
    CHECK(store_open_here(1) == 0);
    CHECK_EQ(add_k(1, 0), 1);
    CHECK(store_commit(&st_store) == 0);
    store_close(&st_store);
    CHECK(store_open_here(1) == 0);
    CHECK_EQ(add_k(1, 1), 1);
    CHECK(store_commit(&st_store) == 0);
    store_close(&st_store);
    want_k(1, 0, 1);
    CHECK_FILE("lp.csv", want);
    CHECK_FILE("dcu_status.csv", dcu_status_header);
    CHECK_FILE("meter_status.csv", meter_status_header);
    end();
}

/* Many packets in one pass: one write and one fsync per file.  The fault
 * table fails every write and fsync after the first of each file. */
static void test_store_group_commit(void)
{
    uint8_t p[DCU_STATUS_SIZE] = { 0 };
    unsigned i;

    begin("store-group");
    CHECK(store_open_here(1) == 0);
    for (i = 0; i < 50; i++)
        CHECK_EQ(add_k(3, (uint16_t)i), 3);
    CHECK_EQ(store_add(&st_store, "DCU00001", CMD_DCU_STATUS_RSP, p,
                       sizeof p, 7, 0, 1767225700), 1);
    fault("fwrite:3+:ENOSPC,fsync:3+:EIO");
    CHECK(store_commit(&st_store) == 0);
    CHECK_EQ(add_k(1, 50), 1);              /* the faults are live */
    CHECK(store_commit(&st_store) == -1);
    fault("");
    store_close(&st_store);
    want_k(3, 0, 49);
    CHECK_FILE("lp.csv", want);
    CHECK_EQ(test_count_lines(path_of("dcu_status.csv"), "DCU00001,0,0,0,0,0,"), 1);
    end();
}

/* More rows in one pass than a buffer holds: written out during the pass,
 * committed all together. */
static void test_store_overflow(void)
{
    unsigned f, n = LP_RECORDS_MAX_PLAIN, packets = 40;

    begin("store-overflow");
    CHECK(store_open_here(1) == 0);
    for (f = 0; f < packets; f++)
        CHECK_EQ(add_k(n, (uint16_t)f), n);
    CHECK(st_store.out[STORE_LP].written > 0);
    CHECK(store_commit(&st_store) == 0);
    store_close(&st_store);
    want_k(n, 0, packets - 1);
    CHECK(strlen(want) > 2 * STORE_BUF_SIZE);
    CHECK_FILE("lp.csv", want);
    end();
}

/* A pass that fails leaves each file at its committed content; the next
 * pass succeeds. */
static void check_failed_pass(const char *spec, unsigned packets,
                              int add_fails)
{
    unsigned f, n = LP_RECORDS_MAX_PLAIN;
    int failed = 0;

    CHECK(store_open_here(1) == 0);
    CHECK_EQ(add_k(2, 0), 2);
    CHECK(store_commit(&st_store) == 0);
    fault(spec);
    for (f = 0; f < packets; f++)
        failed |= add_k(n, (uint16_t)(100 + f)) < 0;
    CHECK(store_commit(&st_store) == -1);
    fault("");
    want_k(2, 0, 0);
    CHECK_FILE("lp.csv", want);
    CHECK_EQ(st_store.pass_failed, 0);
    CHECK_EQ(st_store.rows_pending, 0);
    CHECK_EQ(add_k(2, 1), 2);
    CHECK(store_commit(&st_store) == 0);
    store_close(&st_store);
    want_k(2, 0, 1);
    CHECK_FILE("lp.csv", want);
    CHECK_EQ(failed, add_fails);
}

static void test_store_enospc_commit(void)
{
    begin("store-enospc");
    check_failed_pass("fwrite:1:ENOSPC", 1, 0);
    end();
}

/* A short write is finished, not failed. */
static void test_store_short_write(void)
{
    begin("store-short");
    CHECK(store_open_here(1) == 0);
    fault("fwrite:1:SHORT");
    CHECK_EQ(add_k(5, 0), 5);
    CHECK(store_commit(&st_store) == 0);
    fault("");
    store_close(&st_store);
    want_k(5, 0, 0);
    CHECK_FILE("lp.csv", want);
    end();
}

/* 77-row packets: the buffer is written out during the pass before the
 * 12th, 23rd and 34th packet.  The second such write fails: store_add says
 * so at once, and the rows already written are cut. */
static void test_store_enospc_mid_pass(void)
{
    begin("store-midpass");
    check_failed_pass("fwrite:2:ENOSPC", 40, 1);
    end();
}

/* Both mid-pass writes succeed; the commit's own write fails. */
static void test_store_enospc_after_flush(void)
{
    begin("store-afterflush");
    check_failed_pass("fwrite:3:ENOSPC", 30, 0);
    end();
}

static void test_store_eio_fsync(void)
{
    begin("store-eio");
    check_failed_pass("fsync:1:EIO", 1, 0);
    end();
}

/* A failure in one file fails the whole pass: the other file is cut too. */
static void test_store_failure_spans_files(void)
{
    uint8_t p[DCU_STATUS_SIZE] = { 0 };

    begin("store-span");
    CHECK(store_open_here(1) == 0);
    CHECK_EQ(add_k(1, 0), 1);
    CHECK_EQ(store_add(&st_store, "DCU00001", CMD_DCU_STATUS_RSP, p, sizeof p,
                       1, 0, 5), 1);
    fault("fsync:2:EIO");
    CHECK(store_commit(&st_store) == -1);
    fault("");
    CHECK_FILE("lp.csv", lp_header);
    CHECK_FILE("dcu_status.csv", dcu_status_header);
    CHECK_EQ(add_k(1, 0), 1);
    CHECK(store_commit(&st_store) == 0);
    store_close(&st_store);
    want_k(1, 0, 0);
    CHECK_FILE("lp.csv", want);
    end();
}

static int add_status(uint32_t uptime_s)
{
    uint8_t p[DCU_STATUS_SIZE];
    dcu_status st;

    memset(&st, 0, sizeof st);
    st.uptime_s = uptime_s;
    dcu_status_put(p, &st);
    return store_add(&st_store, "DCU00003", CMD_DCU_STATUS_RSP, p, sizeof p,
                     1, 0, 9);
}

/* lp.csv unlinked and replaced by a directory while open.  The pass that
 * wrote to the old file fails as a whole; after that, a K packet is refused
 * alone (nothing of it was written) and S packets of the same pass are
 * stored. */
static void test_store_replaced_by_dir(void)
{
    begin("store-replaced");
    CHECK(store_open_here(1) == 0);
    CHECK_EQ(add_k(1, 0), 1);
    CHECK(store_commit(&st_store) == 0);
    CHECK(unlink(path_of("lp.csv")) == 0);
    CHECK(mkdir(path_of("lp.csv"), 0755) == 0);
    CHECK_EQ(add_k(1, 1), 1);               /* the old descriptor takes it */
    CHECK_EQ(add_status(1), 1);
    CHECK(store_commit(&st_store) == -1);   /* but the path does not name it */
    CHECK_EQ(add_status(2), 1);
    CHECK(add_k(1, 2) == -1);               /* a directory cannot be opened */
    CHECK_EQ(st_store.pass_failed, 0);
    CHECK_EQ(add_status(3), 1);
    CHECK(store_commit(&st_store) == 0);
    CHECK(rmdir(path_of("lp.csv")) == 0);
    CHECK_EQ(add_k(1, 3), 1);
    CHECK(store_commit(&st_store) == 0);
    store_close(&st_store);
    want_k(1, 3, 3);
    CHECK_FILE("lp.csv", want);
    snprintf(want, sizeof want, "%sDCU00003,0,2,0,0,0,9\nDCU00003,0,3,0,0,0,9\n",
             dcu_status_header);
    CHECK_FILE("dcu_status.csv", want);
    end();
}

/* Renamed away without SIGHUP: the pass fails rather than go to the old
 * file; the next one starts a new file. */
static void test_store_rotated_without_reopen(void)
{
    begin("store-rotated");
    CHECK(store_open_here(1) == 0);
    CHECK_EQ(add_k(1, 0), 1);
    CHECK(store_commit(&st_store) == 0);
    CHECK(rename(path_of("lp.csv"), path_of("lp.csv.1")) == 0);
    CHECK_EQ(add_k(1, 1), 1);
    CHECK(store_commit(&st_store) == -1);
    CHECK_EQ(add_k(1, 2), 1);
    CHECK(store_commit(&st_store) == 0);
    store_close(&st_store);
    want_k(1, 0, 0);
    CHECK_FILE("lp.csv.1", want);
    want_k(1, 2, 2);
    CHECK_FILE("lp.csv", want);
    end();
}

/* logrotate's copytruncate: the file emptied in place under fepd.  The
 * pass that finds it fails (its rows are sent again), and the file starts
 * again with its header. */
static void test_store_copytruncate(void)
{
    begin("store-copytruncate");
    CHECK(store_open_here(1) == 0);
    CHECK_EQ(add_k(1, 0), 1);
    CHECK(store_commit(&st_store) == 0);
    CHECK(truncate(path_of("lp.csv"), 0) == 0);
    CHECK_EQ(add_k(1, 1), 1);
    CHECK(store_commit(&st_store) == -1);
    CHECK_FILE("lp.csv", lp_header);
    CHECK_EQ(add_k(1, 1), 1);
    CHECK(store_commit(&st_store) == 0);
    store_close(&st_store);
    want_k(1, 1, 1);
    CHECK_FILE("lp.csv", want);
    end();
}

/* logrotate: rename, then SIGHUP. */
static void test_store_reopen(void)
{
    begin("store-reopen");
    CHECK(store_open_here(1) == 0);
    CHECK_EQ(add_k(1, 0), 1);
    CHECK(store_commit(&st_store) == 0);
    CHECK(rename(path_of("lp.csv"), path_of("lp.csv.1")) == 0);
    store_reopen(&st_store);
    CHECK_FILE("lp.csv", lp_header);
    CHECK_EQ(add_k(1, 1), 1);
    CHECK(store_commit(&st_store) == 0);
    store_close(&st_store);
    want_k(1, 0, 0);
    CHECK_FILE("lp.csv.1", want);
    want_k(1, 1, 1);
    CHECK_FILE("lp.csv", want);
    end();
}

/* A reopen that fails leaves the file closed; the next packet reopens it. */
static void test_store_reopen_retry(void)
{
    begin("store-retry");
    CHECK(store_open_here(1) == 0);
    fault("open:1+:EMFILE");
    store_reopen(&st_store);
    CHECK(st_store.out[STORE_LP].fd == -1);
    CHECK(add_k(1, 0) == -1);
    CHECK_EQ(st_store.pass_failed, 0);
    CHECK(store_commit(&st_store) == 0);    /* nothing in it */
    fault("");
    CHECK_EQ(add_k(1, 1), 1);
    CHECK(store_commit(&st_store) == 0);
    store_close(&st_store);
    want_k(1, 1, 1);
    CHECK_FILE("lp.csv", want);
    end();
}

/* What a crash can leave: a partial last line, a file with no line at all,
 * an empty file, a torn tail longer than one read. */
static void test_store_torn_tail(void)
{
    char row[CSV_ROW_MAX];
    size_t len;

    begin("store-torn");
    k_row(row, sizeof row, 0, "MTR000000001", 7, 0);
    snprintf(want, sizeof want, "%s%sDCU00001,MTR0000", lp_header, row);
    CHECK(test_write_file(path_of("lp.csv"), want) == 0);
    CHECK(test_write_file(path_of("dcu_status.csv"), "dcu_id,fw_ver") == 0);
    CHECK(test_write_file(path_of("meter_status.csv"), "") == 0);
    len = strlen(strcpy(want, meter_change_header));
    memset(want + len, 'x', 3000);
    want[len + 3000] = '\0';
    CHECK(test_write_file(path_of("meter_change.csv"), want) == 0);

    CHECK(store_open_here(1) == 0);
    store_close(&st_store);
    want_k(1, 0, 0);
    CHECK_FILE("lp.csv", want);
    CHECK_FILE("dcu_status.csv", dcu_status_header);
    CHECK_FILE("meter_status.csv", meter_status_header);
    CHECK_FILE("meter_change.csv", meter_change_header);
    end();
}

static void test_store_open_errors(void)
{
    char err[512];

    begin("store-openerr");
    CHECK(store_open_here(1) == 0);         /* creates the four files */
    store_close(&st_store);
    fault("open:2:EMFILE");
    CHECK(store_open_at(dir, 1, 0, err, sizeof err) == -1);
    CHECK(strstr(err, "/dcu_status.csv: ") != NULL);
    CHECK(st_store.out[STORE_LP].fd == -1);
    fault("");
    CHECK(test_write_file(path_of("file"), "") == 0);
    CHECK(store_open_at(path_of("file"), 1, 0, err, sizeof err) == -1);
    CHECK(strstr(err, "/file") != NULL);
    CHECK(unlink(path_of("lp.csv")) == 0);
    CHECK(mkdir(path_of("lp.csv"), 0755) == 0);
    CHECK(store_open_at(dir, 1, 0, err, sizeof err) == -1);
    CHECK(strstr(err, "/lp.csv: ") != NULL);
    end();
}

/* A pass without rows does nothing at all, so no fault can reach it. */
static void test_store_empty_pass(void)
{
    uint8_t p[1] = { 0 };

    begin("store-empty");
    CHECK(store_open_here(1) == 0);
    fault("fwrite:1+:ENOSPC,fsync:1+:EIO,open:1+:EMFILE");
    CHECK(store_commit(&st_store) == 0);
    CHECK_EQ(store_add(&st_store, "DCU00001", CMD_LP_RSP, p, 1, 1, 0, 1), 0);
    CHECK(store_commit(&st_store) == 0);
    CHECK_EQ(add_k(1, 0), 1);               /* the faults are live */
    CHECK(store_commit(&st_store) == -1);
    fault("");
    store_close(&st_store);
    CHECK_FILE("lp.csv", lp_header);
    end();
}

/* Rows not committed were never acknowledged: store_close drops them, the
 * ones still buffered and the ones already written out. */
static void test_store_close_drops(void)
{
    unsigned f;

    begin("store-close");
    CHECK(store_open_here(1) == 0);
    for (f = 0; f < 40; f++)
        CHECK_EQ(add_k(LP_RECORDS_MAX_PLAIN, (uint16_t)f), LP_RECORDS_MAX_PLAIN);
    store_close(&st_store);
    CHECK_FILE("lp.csv", lp_header);
    end();
}

static void test_store_sync_none(void)
{
    begin("store-nosync");
    CHECK(store_open_here(0) == 0);
    fault("fsync:1+:EIO");
    CHECK_EQ(add_k(1, 0), 1);
    CHECK(store_commit(&st_store) == 0);
    st_store.sync_packet = 1;               /* the fault is live */
    CHECK_EQ(add_k(1, 1), 1);
    CHECK(store_commit(&st_store) == -1);
    fault("");
    store_close(&st_store);
    want_k(1, 0, 0);
    CHECK_FILE("lp.csv", want);
    end();
}

/* A caller's mistake is refused without failing the pass. */
static void test_store_bad_arguments(void)
{
    uint8_t p[PAYLOAD_MAX_PLAIN];
    size_t len = k_payload(p, 1, "MTR000000001");

    begin("store-badargs");
    CHECK(store_open_here(1) == 0);
    CHECK(store_add(&st_store, "DCU00001", CMD_ACK, p, 0, 1, 0, 1) == -1);
    CHECK(store_add(&st_store, "DCU00001", CMD_LP_RSP, p, len - 1, 1, 0, 1) == -1);
    CHECK(store_add(&st_store, "DCU000001", CMD_LP_RSP, p, len, 1, 0, 1) == -1);
    CHECK(store_add(&st_store, "", CMD_LP_RSP, p, len, 1, 0, 1) == -1);
    CHECK_EQ(st_store.pass_failed, 0);
    CHECK_EQ(add_k(1, 0), 1);
    CHECK(store_commit(&st_store) == 0);
    store_close(&st_store);
    want_k(1, 0, 0);
    CHECK_FILE("lp.csv", want);
    end();
}

/* ------------------------------------------------------------------------
 * store.c with rotate: segments handed off to ready/
 * ---------------------------------------------------------------------- */

#define ROTATE_S 60
#define READY_MAX 16
#define READY_NAME_SIZE 128
/* The time in a segment's name: received_at of its first row (add_k's). */
#define K_TIME "20260101T000140Z"

static char ready[READY_MAX][READY_NAME_SIZE];
static int64_t seg_clock;               /* the wall clock given to store_rotate */

static int name_cmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* The names in dir/ready, sorted, into ready[]; how many, -1 when the
 * directory cannot be read. */
static int ready_list(void)
{
    DIR *d = opendir(path_of("ready"));
    struct dirent *e;
    int n = 0;

    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || n == READY_MAX ||
            strlen(e->d_name) >= READY_NAME_SIZE)
            continue;
        strcpy(ready[n++], e->d_name);
    }
    closedir(d);
    qsort(ready, (size_t)n, sizeof ready[0], name_cmp);
    return n;
}

/* ready/name's text. */
static const char *ready_text(const char *name)
{
    char rel[READY_NAME_SIZE + 8];

    snprintf(rel, sizeof rel, "ready/%s", name);
    return file_text(rel);
}

static int exists(const char *name)
{
    return access(path_of(name), F_OK) == 0;
}

/* The next multiple of ROTATE_S on the test's clock: a boundary. */
static void boundary(void)
{
    seg_clock += ROTATE_S;
    store_rotate(&st_store, seg_clock);
}

/* The store with rotate ROTATE_S and the given fep_id; the test's clock
 * starts far from the real one, at a boundary (where empty segments stay). */
static int store_open_segments_as(const char *fep_id)
{
    store_config c = { dir, fep_id, 1, ROTATE_S };
    char err[512];
    int rc = store_open(&st_store, &c, err, sizeof err);

    if (rc != 0)
        fprintf(stderr, "store_open: %s\n", err);
    seg_clock = (sys_wall_s() / ROTATE_S + 1000) * ROTATE_S;
    store_rotate(&st_store, seg_clock);
    return rc;
}

static int store_open_segments(void)
{
    return store_open_segments_as("FEP00001");
}

/* Segments in data_dir as KIND.csv.open; at a boundary the one with rows
 * goes to ready/ under its name, the empty ones stay; at close, the rest. */
static void test_store_segments(void)
{
    begin("seg-basic");
    CHECK(store_open_segments() == 0);
    CHECK(!exists("lp.csv"));
    CHECK_FILE("lp.csv.open", lp_header);
    CHECK_FILE("meter_change.csv.open", meter_change_header);
    CHECK_EQ(ready_list(), 0);
    CHECK_EQ(add_k(2, 0), 2);
    CHECK(store_commit(&st_store) == 0);
    store_rotate(&st_store, seg_clock + ROTATE_S - 1);  /* same period */
    CHECK_EQ(ready_list(), 0);
    boundary();
    CHECK_EQ(ready_list(), 1);
    CHECK_STR_EQ(ready[0], "lp-FEP00001-" K_TIME "-000001.csv");
    want_k(2, 0, 0);
    CHECK_STR_EQ(ready_text(ready[0]), want);
    CHECK_FILE("lp.csv.open", lp_header);
    CHECK_FILE("dcu_status.csv.open", dcu_status_header);
    CHECK_FILE("ready.seq", "1001\n");
    CHECK_EQ(st_store.segments_ready, 1);
    boundary();                             /* nothing to hand off */
    CHECK_EQ(ready_list(), 1);

    CHECK_EQ(add_k(1, 1), 1);
    CHECK_EQ(add_status(7), 1);
    CHECK(store_commit(&st_store) == 0);
    store_close(&st_store);
    CHECK_EQ(ready_list(), 3);
    CHECK_STR_EQ(ready[0], "dcu_status-FEP00001-19700101T000009Z-000003.csv");
    CHECK_STR_EQ(ready[1], "lp-FEP00001-" K_TIME "-000001.csv");
    CHECK_STR_EQ(ready[2], "lp-FEP00001-" K_TIME "-000002.csv");
    snprintf(want, sizeof want, "%sDCU00003,0,7,0,0,0,9\n", dcu_status_header);
    CHECK_STR_EQ(ready_text(ready[0]), want);
    want_k(1, 1, 1);
    CHECK_STR_EQ(ready_text(ready[2]), want);
    CHECK(!exists("lp.csv.open") && !exists("dcu_status.csv.open") &&
          !exists("meter_status.csv.open") && !exists("meter_change.csv.open"));
    CHECK(!exists("lp.csv"));
    end();
}

/* A boundary passed while a pass holds rows waits for the commit: a
 * packet's rows are never split between two segments. */
static void test_store_segments_between_passes(void)
{
    begin("seg-pass");
    CHECK(store_open_segments() == 0);
    CHECK_EQ(add_k(3, 0), 3);
    boundary();
    CHECK_EQ(ready_list(), 0);
    CHECK(store_commit(&st_store) == 0);
    store_rotate(&st_store, seg_clock);
    CHECK_EQ(ready_list(), 1);
    want_k(3, 0, 0);
    CHECK_STR_EQ(ready_text(ready[0]), want);
    store_close(&st_store);
    end();
}

/* SEQ never repeats: not after a restart, not when a loader has emptied
 * ready/, not for two segments of the same second. */
static void test_store_segments_seq(void)
{
    char first[READY_NAME_SIZE];

    begin("seg-seq");
    CHECK(store_open_segments() == 0);
    CHECK_EQ(add_k(1, 0), 1);
    CHECK(store_commit(&st_store) == 0);
    store_close(&st_store);
    CHECK_EQ(ready_list(), 1);
    strcpy(first, ready[0]);
    CHECK_STR_EQ(first, "lp-FEP00001-" K_TIME "-000001.csv");
    CHECK(unlink(path_of("ready/lp-FEP00001-" K_TIME "-000001.csv")) == 0);

    CHECK(store_open_segments() == 0);
    CHECK_EQ(add_k(1, 1), 1);
    CHECK(store_commit(&st_store) == 0);
    store_close(&st_store);
    CHECK_EQ(ready_list(), 1);
    CHECK_STR_EQ(ready[0], "lp-FEP00001-" K_TIME "-001001.csv");
    CHECK_FILE("ready.seq", "2001\n");

    CHECK(store_open_segments() == 0);      /* no rows: no SEQ reserved */
    store_close(&st_store);
    CHECK_EQ(ready_list(), 1);
    CHECK_FILE("ready.seq", "2001\n");

    CHECK(test_write_file(path_of("ready.seq"), "12x\n") == 0);
    {
        store_config c = { dir, "FEP00001", 1, ROTATE_S };
        char err[512];

        CHECK(store_open(&st_store, &c, err, sizeof err) == -1);
        CHECK(strstr(err, "/ready.seq: ") != NULL);
    }
    end();
}

/* What a crash leaves in a segment is cut, and what is whole is handed off
 * at once, under the name it would have had. */
static void test_store_segments_crash(void)
{
    char row[CSV_ROW_MAX];

    begin("seg-crash");
    k_row(row, sizeof row, 0, "MTR000000001", 7, 0);
    snprintf(want, sizeof want, "%s%sDCU00001,MTR0000", lp_header, row);
    CHECK(test_write_file(path_of("lp.csv.open"), want) == 0);
    CHECK(test_write_file(path_of("dcu_status.csv.open"), "") == 0);
    CHECK(test_write_file(path_of("meter_status.csv.open"),
                          meter_status_header) == 0);
    snprintf(want, sizeof want, "%sDCU0", meter_change_header);
    CHECK(test_write_file(path_of("meter_change.csv.open"), want) == 0);
    CHECK(store_open_segments() == 0);
    CHECK_EQ(ready_list(), 1);
    CHECK_STR_EQ(ready[0], "lp-FEP00001-" K_TIME "-000001.csv");
    want_k(1, 0, 0);
    CHECK_STR_EQ(ready_text(ready[0]), want);
    CHECK_FILE("lp.csv.open", lp_header);
    CHECK_FILE("dcu_status.csv.open", dcu_status_header);
    CHECK_FILE("meter_change.csv.open", meter_change_header);
    store_close(&st_store);
    CHECK_EQ(ready_list(), 1);
    CHECK(!exists("lp.csv.open") && !exists("meter_change.csv.open"));
    end();
}

/* A full disk or an I/O error at the switch: the segment stays open under
 * its name, takes more rows, and the next boundary hands it off, whole. */
static void test_store_segments_handoff_fails(void)
{
    static const char *const faults[] = {
        "fsync:1:EIO",                      /* the segment's fsync */
        "fwrite:1:ENOSPC",                  /* the SEQ reservation */
        "rename:1:ENOSPC",                  /* the SEQ reservation's rename */
    };
    unsigned i;

    begin("seg-fail");
    CHECK(store_open_segments() == 0);
    CHECK_EQ(add_k(1, 0), 1);
    CHECK(store_commit(&st_store) == 0);
    for (i = 0; i < sizeof faults / sizeof faults[0]; i++) {
        fault(faults[i]);
        boundary();
        fault("");
        CHECK_EQ(ready_list(), 0);
        CHECK(!exists("ready.seq"));
        CHECK_EQ(add_k(1, (uint16_t)(i + 1)), 1);
        CHECK(store_commit(&st_store) == 0);
    }
    fault("rename:2:ENOSPC");               /* the segment's own rename */
    boundary();
    fault("");
    CHECK_EQ(ready_list(), 0);
    CHECK_FILE("ready.seq", "1001\n");
    want_k(1, 0, 3);
    CHECK_FILE("lp.csv.open", want);
    CHECK_EQ(add_k(1, 4), 1);
    CHECK(store_commit(&st_store) == 0);
    CHECK_EQ(st_store.segments_ready, 0);
    boundary();
    CHECK_EQ(ready_list(), 1);
    CHECK_STR_EQ(ready[0], "lp-FEP00001-" K_TIME "-000001.csv");
    want_k(1, 0, 4);
    CHECK_STR_EQ(ready_text(ready[0]), want);
    CHECK_FILE("lp.csv.open", lp_header);
    CHECK_EQ(st_store.segments_ready, 1);

    /* A directory fsync that fails after the rename is tried again. */
    CHECK_EQ(add_k(1, 5), 1);
    CHECK(store_commit(&st_store) == 0);
    fault("fsync:2:EIO");                   /* 1 the segment, 2 ready/ */
    boundary();
    fault("");
    CHECK_EQ(ready_list(), 2);
    CHECK_EQ(st_store.dirs_unsynced, 1);
    boundary();
    CHECK_EQ(st_store.dirs_unsynced, 0);
    store_close(&st_store);
    end();
}

/* SIGHUP reopens the open segment; a segment renamed away is the
 * renamer's, and a new one starts. */
static void test_store_segments_reopen(void)
{
    begin("seg-reopen");
    CHECK(store_open_segments() == 0);
    CHECK_EQ(add_k(1, 0), 1);
    CHECK(store_commit(&st_store) == 0);
    store_reopen(&st_store);
    CHECK_EQ(add_k(1, 1), 1);
    CHECK(store_commit(&st_store) == 0);
    boundary();
    CHECK_EQ(ready_list(), 1);
    want_k(1, 0, 1);
    CHECK_STR_EQ(ready_text(ready[0]), want);
    CHECK_EQ(add_k(1, 2), 1);
    CHECK(store_commit(&st_store) == 0);
    CHECK(rename(path_of("lp.csv.open"), path_of("elsewhere.csv")) == 0);
    store_reopen(&st_store);
    CHECK_FILE("lp.csv.open", lp_header);
    boundary();
    CHECK_EQ(ready_list(), 1);
    store_close(&st_store);
    CHECK_EQ(ready_list(), 1);
    want_k(1, 2, 2);
    CHECK_FILE("elsewhere.csv", want);
    end();
}

/* A reload that turns rotate on or off: the four files are left as they
 * are, the segments are handed off. */
static void test_store_segments_set_rotate(void)
{
    begin("seg-set");
    CHECK(store_open_here(1) == 0);
    CHECK(!exists("ready"));
    CHECK_EQ(add_k(1, 0), 1);
    CHECK(store_commit(&st_store) == 0);
    seg_clock = (sys_wall_s() / ROTATE_S + 1000) * ROTATE_S;
    CHECK(store_set_rotate(&st_store, ROTATE_S, seg_clock) == 0);
    CHECK_FILE("lp.csv.open", lp_header);
    CHECK_EQ(add_k(1, 1), 1);
    CHECK(store_commit(&st_store) == 0);
    CHECK_EQ(add_k(1, 2), 1);               /* not between passes: refused */
    CHECK(store_set_rotate(&st_store, 0, seg_clock) == -1);
    CHECK(store_commit(&st_store) == 0);
    CHECK(store_set_rotate(&st_store, 2 * ROTATE_S, seg_clock) == 0);
    CHECK_EQ(ready_list(), 0);
    CHECK(store_set_rotate(&st_store, 0, seg_clock) == 0);
    CHECK_EQ(ready_list(), 1);
    want_k(1, 1, 2);
    CHECK_STR_EQ(ready_text(ready[0]), want);
    CHECK(!exists("lp.csv.open") && !exists("dcu_status.csv.open"));
    CHECK_EQ(add_k(1, 3), 1);
    CHECK(store_commit(&st_store) == 0);
    store_close(&st_store);
    CHECK_EQ(ready_list(), 1);
    snprintf(want, sizeof want, "%s", lp_header);
    k_row(want + strlen(want), sizeof want - strlen(want), 0, "MTR000000001", 7, 0);
    k_row(want + strlen(want), sizeof want - strlen(want), 0, "MTR000000001", 7, 3);
    CHECK_FILE("lp.csv", want);
    end();
}

/* fep_id in a name: '-' only separates, '/' never makes a path. */
static void test_store_segments_names(void)
{
    begin("seg-names");
    CHECK(store_open_segments_as("F-1/%a.b") == 0);
    CHECK_EQ(add_k(1, 0), 1);
    CHECK(store_commit(&st_store) == 0);
    store_close(&st_store);
    CHECK_EQ(ready_list(), 1);
    CHECK_STR_EQ(ready[0], "lp-F%2D1%2F%25a.b-" K_TIME "-000001.csv");
    end();
}

/* The UTC fields in segment names (and log lines) agree with the C
 * library's gmtime_r: day, month, leap-year and era edges, and a stride
 * through the whole range fepd writes (TIME_MAX_S is 9999-12-31). */
static int utc_agrees(int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    sys_utc u;

    if (gmtime_r(&tt, &tm) == NULL)
        return 0;
    sys_utc_of(t, &u);
    return u.year == tm.tm_year + 1900 && u.month == tm.tm_mon + 1 &&
           u.day == tm.tm_mday && u.hour == tm.tm_hour &&
           u.min == tm.tm_min && u.sec == tm.tm_sec;
}

static void test_store_utc(void)
{
    static const int64_t edges[] = {
        0, 59, 86399, 86400, -1, -86401, 68169600 /* 1972-02-29 */,
        951782399, 951782400, 951868800 /* 2000-02-29..03-01 */,
        978307199, 978307200, 1709164800 /* 2024-02-29 */,
        2147483647, 2147483648LL, 4107542399LL /* 2100-02-28 end */,
        4107542400LL, 253402300799LL /* 9999-12-31T23:59:59 */
    };
    unsigned i, bad = 0;
    int64_t t, first_bad = 0;

    for (i = 0; i < sizeof edges / sizeof edges[0]; i++)
        if (!utc_agrees(edges[i]) && bad++ == 0)
            first_bad = edges[i];
    for (t = 0; t <= 253402300799LL; t += 7777777)      /* 32,580 times */
        if (!utc_agrees(t) && bad++ == 0)
            first_bad = t;
    if (bad)
        printf("  sys_utc_of(%lld) differs from gmtime_r\n",
               (long long)first_bad);
    CHECK_EQ(bad, 0);
}

/* Without rotate, a segment an earlier run left is not touched. */
static void test_store_segments_left(void)
{
    begin("seg-left");
    snprintf(want, sizeof want, "%sDCU0", lp_header);
    CHECK(test_write_file(path_of("lp.csv.open"), want) == 0);
    CHECK(store_open_here(1) == 0);
    store_close(&st_store);
    CHECK_FILE("lp.csv.open", want);
    CHECK(!exists("ready"));
    end();
}

void test_store_suite(void)
{
    test_run("store_rows_exact", test_store_rows_exact);
    test_run("store_escaping", test_store_escaping);
    test_run("store_header_once", test_store_header_once);
    test_run("store_group_commit", test_store_group_commit);
    test_run("store_overflow", test_store_overflow);
    test_run("store_enospc_commit", test_store_enospc_commit);
    test_run("store_short_write", test_store_short_write);
    test_run("store_enospc_mid_pass", test_store_enospc_mid_pass);
    test_run("store_enospc_after_flush", test_store_enospc_after_flush);
    test_run("store_eio_fsync", test_store_eio_fsync);
    test_run("store_failure_spans_files", test_store_failure_spans_files);
    test_run("store_replaced_by_dir", test_store_replaced_by_dir);
    test_run("store_rotated_without_reopen", test_store_rotated_without_reopen);
    test_run("store_copytruncate", test_store_copytruncate);
    test_run("store_reopen", test_store_reopen);
    test_run("store_reopen_retry", test_store_reopen_retry);
    test_run("store_torn_tail", test_store_torn_tail);
    test_run("store_open_errors", test_store_open_errors);
    test_run("store_empty_pass", test_store_empty_pass);
    test_run("store_close_drops", test_store_close_drops);
    test_run("store_sync_none", test_store_sync_none);
    test_run("store_bad_arguments", test_store_bad_arguments);
    test_run("store_segments", test_store_segments);
    test_run("store_segments_between_passes", test_store_segments_between_passes);
    test_run("store_segments_seq", test_store_segments_seq);
    test_run("store_segments_crash", test_store_segments_crash);
    test_run("store_segments_handoff_fails", test_store_segments_handoff_fails);
    test_run("store_segments_reopen", test_store_segments_reopen);
    test_run("store_segments_set_rotate", test_store_segments_set_rotate);
    test_run("store_segments_names", test_store_segments_names);
    test_run("store_utc", test_store_utc);
    test_run("store_segments_left", test_store_segments_left);
}
