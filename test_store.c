/*
 * test_store.c -- tests of store.c (the CSV files) and state.c (ICs and
 * per-DCU statistics): exact file contents for known payloads, and every
 * failure the sys.c fault table can make (ENOSPC, EIO, EMFILE, a file
 * replaced or rotated under the store, a torn tail left by a crash), each
 * followed by a pass that must succeed; with rotate, the segments handed
 * to ready/ (names, SEQ across restarts, crash repair, a handoff that
 * fails, reopen, a reload that turns rotate on or off).  Every test ends
 * with the descriptor ledger balanced.
 *
 * Owns: the store (static: its buffers are 256 KiB), the DCU table of the
 * state tests, and the directories under test_tmpdir, removed at the end of
 * each test.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fep.h"
#include "test.h"

#define DIR_SIZE 200
#define TEXT_SIZE (512 * 1024)

static store st_store;
static char text[TEXT_SIZE];            /* a file read back */
static char want[TEXT_SIZE];            /* what it must hold */
static char dir[DIR_SIZE];
static sys_ledger ledger_start;

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
    CHECK(test_tmpdir(dir, sizeof dir, tag) == 0);
    ledger_start = sys_ledger_get();
    fault("");
}

/* Removes dir and everything the tests put in it. */
static void end(void)
{
    sys_ledger now = sys_ledger_get();

    fault("");
    CHECK_EQ(now.opened - ledger_start.opened, now.closed - ledger_start.closed);
    test_remove_tree(dir);
}

/* dir/name; two buffers in turn, so that rename(path_of(a), path_of(b))
 * gets two paths. */
static const char *path_of(const char *name)
{
    static char path[2][DIR_SIZE + 64];
    static unsigned turn;
    char *p = path[turn++ % 2];

    snprintf(p, sizeof path[0], "%s/%s", dir, name);
    return p;
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

/* ------------------------------------------------------------------------
 * state.c
 * ---------------------------------------------------------------------- */

#define STATE_DCUS 4

static dcu_conf state_dcus[STATE_DCUS];
static fep_config state_cfg;
static fep_state st_state;

/* The KCV of key 00 01 .. 0f: AES-128 of the zero block, first 8 bytes. */
static const char kcv_example[] = "c6a13b37878f5b82";

/* DCU0000i for i = 1..n; key_of[i]: 0 none, else key bytes j + key_of[i]
 * (so key_of 1 is the key of PROTOCOL.md 6.2). */
static void cfg_make(unsigned n, const unsigned *key_of)
{
    unsigned i, j;

    memset(&state_cfg, 0, sizeof state_cfg);
    memset(state_dcus, 0, sizeof state_dcus);
    snprintf(state_cfg.state_dir, sizeof state_cfg.state_dir, "%s/state", dir);
    for (i = 0; i < n; i++) {
        strcpy(state_dcus[i].id, "DCU00001");
        state_dcus[i].id[7] = (char)('1' + i);
        frame_id_set(state_dcus[i].sid, state_dcus[i].id);
        state_dcus[i].has_key = key_of[i] != 0;
        for (j = 0; j < KEY_SIZE; j++)
            state_dcus[i].key[j] = (uint8_t)(j + key_of[i] - 1);
    }
    state_cfg.dcus = state_dcus;
    state_cfg.n_dcus = n;
}

static int state_open_here(void)
{
    char err[512];
    int rc = state_open(&st_state, &state_cfg, err, sizeof err);

    if (rc != 0)
        fprintf(stderr, "state_open: %s\n", err);
    return rc;
}

static const char *state_text(void)
{
    return file_text("state/fepd.state");
}

static void state_write_file(const char *body)
{
    CHECK(mkdir(path_of("state"), 0755) == 0);
    CHECK(test_write_file(path_of("state/fepd.state"), body) == 0);
}

static void state_end(void)
{
    unlink(path_of("state/fepd.state"));
    unlink(path_of("state/fepd.state.tmp"));
    unlink(path_of("state/fepd.journal"));
    rmdir(path_of("state"));
    end();
}

static void test_state_fresh(void)
{
    static const unsigned keys[] = { 1, 0, 2 };
    char line[64];

    begin("state-fresh");
    cfg_make(3, keys);
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.n_keys, 2);
    CHECK_EQ(st_state.n_dcus, 3);
    CHECK(st_state.dcus[0].key == 0);
    CHECK(st_state.dcus[1].key == -1);
    CHECK(st_state.dcus[2].key == 1);
    CHECK(st_state.dcus[0].session == -1 && st_state.dcus[2].session == -1);
    CHECK_EQ(state_take_ic(&st_state, 0), 1);
    CHECK_EQ(state_take_ic(&st_state, 0), 2);
    CHECK_EQ(state_take_ic(&st_state, 0), 3);
    CHECK_EQ(state_take_ic(&st_state, 1), 1);
    CHECK_EQ(state_take_ic(&st_state, 2), 0);   /* no such key */
    snprintf(line, sizeof line, "\ntx %s 0000065537\n", kcv_example);
    CHECK(strstr(state_text(), line) != NULL);
    CHECK(strstr(text, "\nrx ") == NULL && strstr(text, "\ndcu ") == NULL);
    state_release(&st_state);
    CHECK(st_state.dcus == NULL && st_state.keys == NULL);
    state_end();
}

/* ICs handed out before a restart are never handed out again, saved or not. */
static void test_state_restart(void)
{
    static const unsigned keys[] = { 1 };
    uint32_t ic = 0;
    unsigned i;

    begin("state-restart");
    cfg_make(1, keys);
    CHECK(state_open_here() == 0);
    for (i = 0; i < 10; i++)
        ic = state_take_ic(&st_state, 0);
    CHECK_EQ(ic, 10);
    state_release(&st_state);               /* a crash: nothing saved */
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_take_ic(&st_state, 0), 65537);
    state_release(&st_state);
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_take_ic(&st_state, 0), 2 * 65536 + 1);
    state_release(&st_state);
    state_end();
}

/* Crossing a block boundary reserves and saves the next block first; if
 * that save fails, no IC is handed out until it succeeds. */
static void test_state_block_boundary(void)
{
    static const unsigned keys[] = { 1 };
    char line[64];
    uint32_t i;
    int ok = 1;

    begin("state-block");
    cfg_make(1, keys);
    CHECK(state_open_here() == 0);
    for (i = 1; i <= IC_RESERVE_BLOCK; i++)
        ok &= state_take_ic(&st_state, 0) == i;
    CHECK(ok);
    snprintf(line, sizeof line, "tx %s 0000065537\n", kcv_example);
    CHECK(strstr(state_text(), line) != NULL);
    fault("rename:1:EIO");
    CHECK_EQ(state_take_ic(&st_state, 0), 0);
    fault("");
    CHECK(strstr(state_text(), line) != NULL);
    CHECK_EQ(st_state.keys[0].tx_ic_reserved, 65537);
    CHECK_EQ(state_take_ic(&st_state, 0), 65537);
    snprintf(line, sizeof line, "tx %s 0000131073\n", kcv_example);
    CHECK(strstr(state_text(), line) != NULL);
    state_release(&st_state);
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_take_ic(&st_state, 0), 131073);
    state_release(&st_state);
    state_end();
}

/* DCUs that share a key draw from one IC sequence. */
static void test_state_shared_key(void)
{
    static const unsigned keys[] = { 1, 2, 1, 0 };

    begin("state-shared");
    cfg_make(4, keys);
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.n_keys, 2);
    CHECK(st_state.dcus[0].key == st_state.dcus[2].key);
    CHECK(st_state.dcus[1].key != st_state.dcus[0].key);
    CHECK(st_state.dcus[3].key == -1);
    CHECK_EQ(state_take_ic(&st_state, (unsigned)st_state.dcus[0].key), 1);
    CHECK_EQ(state_take_ic(&st_state, (unsigned)st_state.dcus[2].key), 2);
    CHECK_EQ(state_take_ic(&st_state, (unsigned)st_state.dcus[1].key), 1);
    state_release(&st_state);
    state_end();
}

/* rx_ic and the statistics survive a restart; a line whose key changed, or
 * whose DCU is gone, is skipped. */
static void test_state_rx_and_stats(void)
{
    static const unsigned keys[] = { 1, 0, 3 };
    static const unsigned keys_changed[] = { 2, 0, 3 };
    char line[80];

    begin("state-rx");
    cfg_make(3, keys);
    CHECK(state_open_here() == 0);
    st_state.dcus[0].rx_ic = 42;
    st_state.dcus[2].rx_ic = 4294967295u;
    st_state.dcus[1].last_success_s = 1767225600;
    st_state.dcus[1].sessions_ok = 3;
    st_state.dcus[1].sessions_failed = 1;
    st_state.dcus[1].records = 18446744073709551615u;
    st_state.dirty = 1;
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK_EQ(st_state.dirty, 0);
    snprintf(line, sizeof line, "\nrx DCU00001 %s 42\n", kcv_example);
    CHECK(strstr(state_text(), line) != NULL);
    CHECK(strstr(text, "\ndcu DCU00002 1767225600 3 1 18446744073709551615\n") != NULL);
    CHECK(strstr(text, "\ndcu DCU00001") == NULL);
    state_release(&st_state);

    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.dcus[0].rx_ic, 42);
    CHECK_EQ(st_state.dcus[2].rx_ic, 4294967295u);
    CHECK_EQ(st_state.dcus[1].rx_ic, 0);
    CHECK_EQ(st_state.dcus[1].last_success_s, 1767225600);
    CHECK_EQ(st_state.dcus[1].sessions_ok, 3);
    CHECK_EQ(st_state.dcus[1].sessions_failed, 1);
    CHECK_EQ(st_state.dcus[1].records, 18446744073709551615u);
    state_release(&st_state);

    cfg_make(3, keys_changed);              /* DCU00001 has a new key */
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.dcus[0].rx_ic, 0);
    CHECK_EQ(state_take_ic(&st_state, (unsigned)st_state.dcus[0].key), 1);
    CHECK_EQ(st_state.dcus[2].rx_ic, 4294967295u);
    CHECK_EQ(st_state.dcus[1].sessions_ok, 3);
    state_release(&st_state);

    cfg_make(1, keys_changed);              /* DCU00002 and 3 are gone */
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.n_dcus, 1);
    CHECK(strstr(state_text(), "DCU00002") == NULL);
    state_release(&st_state);
    state_end();
}

/* A file written by hand (comments, blank lines, a missing last newline,
 * upper-case hex, tabs) loads; lines in config order or not. */
static void test_state_load_liberal(void)
{
    static const unsigned keys[] = { 1, 1 };
    char body[512];

    begin("state-liberal");
    cfg_make(2, keys);
    snprintf(body, sizeof body,
             "# comment\n\n"
             "dcu DCU00002 5 6 7 8\n"
             "rx\tDCU00002 C6A13B37878F5B82 9\r\n"
             "tx %s 1000\n"
             "tx 0123456789abcdef 99999\n"
             "rx DCU00009 %s 4\n"
             "rx DCU00001 %s 77", kcv_example, kcv_example, kcv_example);
    state_write_file(body);
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.n_keys, 1);
    CHECK_EQ(state_take_ic(&st_state, 0), 1000);
    CHECK_EQ(st_state.dcus[0].rx_ic, 77);
    CHECK_EQ(st_state.dcus[1].rx_ic, 9);
    CHECK_EQ(st_state.dcus[1].last_success_s, 5);
    CHECK_EQ(st_state.dcus[1].records, 8);
    state_release(&st_state);
    state_end();
}

/* A malformed line stops the start, naming file and line. */
static void test_state_corrupt(void)
{
    static const unsigned keys[] = { 1 };
    static const struct { const char *body; const char *where; } cases[] = {
        { "# x\n\ntx zz 5\n", "fepd.state:3: " },
        { "tx c6a13b37878f5b82 0\n", "fepd.state:1: " },
        { "tx c6a13b37878f5b82 4294967296\n", "fepd.state:1: " },
        { "tx c6a13b37878f5b82 12x\n", "fepd.state:1: " },
        { "#\nbogus 1 2\n", "fepd.state:2: " },
        { "dcu DCU00001 1 2 3\n", "fepd.state:1: " },
        { "rx DCU00001 c6a13b37878f5b82 -1\n", "fepd.state:1: " },
        { "dcu DCU00001 1 2 3 4 5 6 7\n", "fepd.state:1: " },
        { "#\n#\n#\n#\n\nrx DCU00001 c6a13b37878f5b8 1", "fepd.state:6: " },
    };
    char err[512], longline[400];
    size_t i;

    begin("state-corrupt");
    cfg_make(1, keys);
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        state_write_file(cases[i].body);
        err[0] = '\0';
        CHECK(state_open(&st_state, &state_cfg, err, sizeof err) == -1);
        CHECK(strstr(err, cases[i].where) != NULL);
        CHECK(st_state.dcus == NULL && st_state.save_buf == NULL);
        CHECK_STR_EQ(state_text(), cases[i].body);  /* left as it was */
        state_end();
        begin("state-corrupt");
        cfg_make(1, keys);
    }
    memset(longline, '#', sizeof longline - 1);
    longline[sizeof longline - 1] = '\0';
    state_write_file(longline);
    CHECK(state_open(&st_state, &state_cfg, err, sizeof err) == -1);
    CHECK(strstr(err, "fepd.state:1: line too long") != NULL);
    state_end();
}

/* A save that fails at any step leaves the old file as it was. */
static void test_state_save_failure(void)
{
    static const unsigned keys[] = { 1, 0 };
    static const char *const faults[] = {
        "rename:1:EIO", "fsync:1:EIO", "fwrite:1:ENOSPC", "open:1:EMFILE"
    };
    char before[4096];
    size_t i;

    begin("state-savefail");
    cfg_make(2, keys);
    CHECK(state_open_here() == 0);
    strcpy(before, state_text());
    for (i = 0; i < sizeof faults / sizeof faults[0]; i++) {
        st_state.dcus[1].sessions_ok = 10 + i;
        st_state.dirty = 1;
        fault(faults[i]);
        CHECK(state_save(&st_state, &state_cfg) == -1);
        fault("");
        CHECK_EQ(st_state.dirty, 1);
        CHECK_STR_EQ(state_text(), before);
    }
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK(strstr(state_text(), "dcu DCU00002 0 13 0 0\n") != NULL);
    state_release(&st_state);
    state_end();
}

/* state_open does not start when the reservation cannot be saved. */
static void test_state_open_save_failure(void)
{
    static const unsigned keys[] = { 1 };
    char err[512];

    begin("state-openfail");
    cfg_make(1, keys);
    fault("rename:1:EIO");
    CHECK(state_open(&st_state, &state_cfg, err, sizeof err) == -1);
    CHECK(strstr(err, "/state/fepd.state: save (rename): ") != NULL);
    CHECK(st_state.dcus == NULL);
    fault("");
    state_end();
}

/* IC 0xFFFFFFFF is never used; after 0xFFFFFFFE every take fails. */
static void test_state_exhausted(void)
{
    static const unsigned keys[] = { 1 };
    char body[128];

    begin("state-exhausted");
    cfg_make(1, keys);
    snprintf(body, sizeof body, "tx %s 4294967294\n", kcv_example);
    state_write_file(body);
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.keys[0].tx_ic_reserved, 0xFFFFFFFFu);
    CHECK_EQ(state_take_ic(&st_state, 0), 0xFFFFFFFEu);
    CHECK_EQ(state_take_ic(&st_state, 0), 0);
    CHECK_EQ(state_take_ic(&st_state, 0), 0);
    state_release(&st_state);
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_take_ic(&st_state, 0), 0);
    state_release(&st_state);
    state_end();
}

/* A DCU list with no key at all, and state_dir's parents created. */
static void test_state_no_keys(void)
{
    static const unsigned keys[] = { 0, 0 };

    begin("state-nokeys");
    cfg_make(2, keys);
    snprintf(state_cfg.state_dir, sizeof state_cfg.state_dir, "%s/a/b", dir);
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.n_keys, 0);
    CHECK_EQ(state_take_ic(&st_state, 0), 0);
    CHECK(test_read_file(path_of("a/b/fepd.state"), text, sizeof text) > 0);
    CHECK(strstr(text, "\ntx ") == NULL);
    state_release(&st_state);
    unlink(path_of("a/b/fepd.state"));
    unlink(path_of("a/b/fepd.journal"));
    rmdir(path_of("a/b"));
    rmdir(path_of("a"));
    end();
}

/* ------------------------------------------------------------------------
 * state.c: the journal
 * ---------------------------------------------------------------------- */

#define BIG_DCUS 10000

/* What a restart must give back, per DCU. */
struct dcu_values {
    uint32_t rx_ic;
    int64_t last_success_s;
    uint64_t ok, failed, records;
};

static dcu_conf *big_dcus;
static unsigned *big_by_sid;
static struct dcu_values expected[BIG_DCUS];

/* n DCUs D0000000.. sharing key 1 (KCV kcv_example), with by_sid as
 * config_load builds it (the ids sort as their indices). */
static void big_cfg_make(unsigned n)
{
    unsigned i, j;

    free(big_dcus);
    free(big_by_sid);
    big_dcus = calloc(n, sizeof *big_dcus);
    big_by_sid = calloc(n, sizeof *big_by_sid);
    CHECK(big_dcus != NULL && big_by_sid != NULL && n <= BIG_DCUS);
    memset(&state_cfg, 0, sizeof state_cfg);
    memset(expected, 0, sizeof expected);
    snprintf(state_cfg.state_dir, sizeof state_cfg.state_dir, "%s/state", dir);
    for (i = 0; big_dcus && big_by_sid && i < n; i++) {
        char id[16];                    /* room for any unsigned: no truncation */
        snprintf(id, sizeof id, "D%07u", i % 10000000u);
        memcpy(big_dcus[i].id, id, sizeof big_dcus[i].id - 1);
        frame_id_set(big_dcus[i].sid, big_dcus[i].id);
        big_dcus[i].has_key = 1;
        for (j = 0; j < KEY_SIZE; j++)
            big_dcus[i].key[j] = (uint8_t)j;
        big_by_sid[i] = i;
    }
    state_cfg.dcus = big_dcus;
    state_cfg.by_sid = big_by_sid;
    state_cfg.n_dcus = n;
}

static void big_cfg_free(void)
{
    free(big_dcus);
    free(big_by_sid);
    big_dcus = NULL;
    big_by_sid = NULL;
}

/* New values for DCU i, different for every step, as a session would
 * leave them; marked as session.c marks them. */
static void vary(unsigned i, unsigned step)
{
    dcu_state *d = &st_state.dcus[i];
    struct dcu_values *e = &expected[i];

    e->rx_ic = d->rx_ic = 1000 + 7 * i + step;
    e->last_success_s = d->last_success_s = 1767225600 + (int64_t)i + step;
    e->ok = d->sessions_ok = i + step;
    e->failed = d->sessions_failed = step;
    e->records = d->records = 96u * i + step;
    state_touch(&st_state, i);
}

/* Every DCU of st_state holds the expected values. */
static int values_expected(void)
{
    unsigned i;

    for (i = 0; i < st_state.n_dcus; i++) {
        const dcu_state *d = &st_state.dcus[i];
        const struct dcu_values *e = &expected[i];

        if (d->rx_ic != e->rx_ic || d->last_success_s != e->last_success_s ||
            d->sessions_ok != e->ok || d->sessions_failed != e->failed ||
            d->records != e->records) {
            fprintf(stderr, "DCU %u: rx %u last %lld ok %llu failed %llu "
                    "records %llu, want %u %lld %llu %llu %llu\n", i,
                    (unsigned)d->rx_ic, (long long)d->last_success_s,
                    (unsigned long long)d->sessions_ok,
                    (unsigned long long)d->sessions_failed,
                    (unsigned long long)d->records, (unsigned)e->rx_ic,
                    (long long)e->last_success_s, (unsigned long long)e->ok,
                    (unsigned long long)e->failed,
                    (unsigned long long)e->records);
            return 0;
        }
    }
    return 1;
}

/* A restart (nothing saved first, as after a crash) gives every value
 * back. */
static void restart_check(void)
{
    state_release(&st_state);
    CHECK(state_open_here() == 0);
    CHECK(values_expected());
}

static long file_size(const char *name)
{
    struct stat sb;

    return stat(path_of(name), &sb) == 0 ? (long)sb.st_size : -1;
}

static ino_t file_ino(const char *name)
{
    struct stat sb;

    return stat(path_of(name), &sb) == 0 ? sb.st_ino : 0;
}

static long journal_size(void)
{
    return file_size("state/fepd.journal");
}

/* Bytes (NULs too) as a whole file. */
static void bytes_write(const char *name, const char *bytes, size_t n)
{
    FILE *f = fopen(path_of(name), "wb");

    CHECK(f != NULL);
    if (f == NULL)
        return;
    CHECK(fwrite(bytes, 1, n, f) == n);
    CHECK(fclose(f) == 0);
}

static void bytes_append(const char *name, const char *text)
{
    FILE *f = fopen(path_of(name), "ab");

    CHECK(f != NULL && fputs(text, f) >= 0);
    if (f)
        CHECK(fclose(f) == 0);
}

/* The journal's lines are read after the snapshot: a dcu line replaces, an
 * rx line only raises; a DCU no longer configured is skipped.  The start
 * folds them into the snapshot and empties the journal. */
static void test_state_journal_load(void)
{
    static const unsigned keys[] = { 1, 0 };
    char body[512], line[80];

    begin("state-jload");
    cfg_make(2, keys);
    snprintf(body, sizeof body, "tx %s 1000\nrx DCU00001 %s 5\n"
             "dcu DCU00002 1 2 3 4\n", kcv_example, kcv_example);
    state_write_file(body);
    snprintf(body, sizeof body, "dcu DCU00002 10 20 30 40\n"
             "rx DCU00001 %s 9\n"
             "# a comment\n"
             "dcu DCU00009 1 1 1 1\n"
             "dcu DCU00002 11 21 31 41\n"
             "rx DCU00001 %s 7\n"
             "dcu DCU00001 0 1 0 0\n", kcv_example, kcv_example);
    CHECK(test_write_file(path_of("state/fepd.journal"), body) == 0);
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_take_ic(&st_state, 0), 1000);
    CHECK_EQ(st_state.dcus[0].rx_ic, 9);
    CHECK_EQ(st_state.dcus[0].sessions_ok, 1);
    CHECK_EQ(st_state.dcus[1].last_success_s, 11);
    CHECK_EQ(st_state.dcus[1].sessions_ok, 21);
    CHECK_EQ(st_state.dcus[1].sessions_failed, 31);
    CHECK_EQ(st_state.dcus[1].records, 41);
    CHECK_EQ(journal_size(), 0);
    snprintf(line, sizeof line, "\nrx DCU00001 %s 9\n", kcv_example);
    CHECK(strstr(state_text(), line) != NULL);
    CHECK(strstr(text, "\ndcu DCU00002 11 21 31 41\n") != NULL);
    CHECK(strstr(text, "\ndcu DCU00001 0 1 0 0\n") != NULL);
    state_release(&st_state);
    CHECK(state_open_here() == 0);           /* the snapshot alone */
    CHECK_EQ(st_state.dcus[0].rx_ic, 9);
    CHECK_EQ(st_state.dcus[1].records, 41);
    state_release(&st_state);
    state_end();
}

/* A last line without '\n' is an append cut short: skipped, whatever it
 * holds.  A whole line that is malformed stops the start with the
 * journal's name and line, and both files are left as they were. */
static void test_state_journal_torn(void)
{
    static const unsigned keys[] = { 1, 0 };
    static const struct { const char *body; size_t len; } torn[] = {
        { "dcu DCU00002 10 20 30 40\ndcu DCU00002 99 9", 0 },
        { "dcu DCU00002 10 20 30 40\n\0\0\0\0\0\0", 31 },
        { "dcu DCU00002 10 20 30 40\ndcu DCU00002 1 2 3 4 5 6 7 8", 0 },
    };
    static const struct { const char *body; size_t len; const char *where; }
    bad[] = {
        { "dcu DCU00002 1 2 3\n", 0, "fepd.journal:1: dcu:" },
        { "#\n\nrx DCU00001 zz 1\n", 0, "fepd.journal:3: rx:" },
        { "dcu DCU00002 1 2 3 4\nbogus\n", 0, "fepd.journal:2: unknown" },
        { "dcu DCU00002 1 2 3 4\n\0\n", 23, "fepd.journal:2: NUL byte" },
        { "dcu DCU00002 1 2 3 4\ndcu DCU00002 1 2 3 4 5 6 7\ndcu", 0,
          "fepd.journal:2: too many" },
    };
    char err[512], longline[400], snap[256];
    size_t i;

    begin("state-jtorn");
    cfg_make(2, keys);
    snprintf(snap, sizeof snap, "tx %s 1000\ndcu DCU00002 1 2 3 4\n",
             kcv_example);
    for (i = 0; i < sizeof torn / sizeof torn[0]; i++) {
        state_write_file(snap);
        bytes_write("state/fepd.journal", torn[i].body,
                    torn[i].len ? torn[i].len : strlen(torn[i].body));
        CHECK(state_open_here() == 0);
        CHECK_EQ(st_state.dcus[1].last_success_s, 10);
        CHECK_EQ(st_state.dcus[1].records, 40);
        CHECK_EQ(journal_size(), 0);
        state_release(&st_state);
        state_end();
        begin("state-jtorn");
        cfg_make(2, keys);
    }
    /* Longer than any line, torn: skipped too. */
    memset(longline, '#', sizeof longline - 1);
    longline[sizeof longline - 1] = '\0';
    state_write_file(snap);
    CHECK(test_write_file(path_of("state/fepd.journal"), longline) == 0);
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.dcus[1].records, 4);
    state_release(&st_state);
    state_end();

    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t n = bad[i].len ? bad[i].len : strlen(bad[i].body);

        begin("state-jtorn");
        cfg_make(2, keys);
        state_write_file(snap);
        bytes_write("state/fepd.journal", bad[i].body, n);
        err[0] = '\0';
        CHECK(state_open(&st_state, &state_cfg, err, sizeof err) == -1);
        CHECK(strstr(err, bad[i].where) != NULL);
        if (strstr(err, bad[i].where) == NULL)
            fprintf(stderr, "got '%s', want '%s'\n", err, bad[i].where);
        CHECK(st_state.dcus == NULL && st_state.save_buf == NULL);
        CHECK_STR_EQ(state_text(), snap);
        CHECK_EQ(journal_size(), (long)n);
        state_end();
    }
}

/* With 10,000 DCUs, a save after one DCU changed appends that DCU's two
 * lines and leaves the snapshot alone; restarts give every value back. */
static void test_state_journal_append_cost(void)
{
    char want_text[256];
    ino_t snap_ino;
    long before;
    unsigned i;

    begin("state-jcost");
    big_cfg_make(BIG_DCUS);
    CHECK(state_open_here() == 0);
    for (i = 0; i < BIG_DCUS; i++)
        vary(i, 1);
    CHECK(state_save(&st_state, &state_cfg) == 0);  /* past the bound: compacted */
    CHECK_EQ(journal_size(), 0);
    CHECK(file_size("state/fepd.state") > 10000L * 60);
    restart_check();
    snap_ino = file_ino("state/fepd.state");

    vary(4321, 2);
    CHECK_EQ(st_state.n_changed, 1);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    snprintf(want_text, sizeof want_text,
             "rx D0004321 %s %u\ndcu D0004321 %lld %llu %llu %llu\n",
             kcv_example, (unsigned)expected[4321].rx_ic,
             (long long)expected[4321].last_success_s,
             (unsigned long long)expected[4321].ok,
             (unsigned long long)expected[4321].failed,
             (unsigned long long)expected[4321].records);
    CHECK_FILE("state/fepd.journal", want_text);
    CHECK_EQ(st_state.n_changed, 0);
    CHECK_EQ(st_state.dcus[4321].changed, 0);
    CHECK_EQ(st_state.dirty, 0);
    CHECK(file_ino("state/fepd.state") == snap_ino);   /* not rewritten */

    before = journal_size();
    for (i = 0; i < 10; i++)
        vary(i * 997, 3);
    vary(0, 4);                             /* twice before a save: once */
    CHECK_EQ(st_state.n_changed, 10);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK(journal_size() > before + 10 * 60 && journal_size() < before + 10 * 100);
    CHECK(file_ino("state/fepd.state") == snap_ino);
    /* Between saves no descriptor is held. */
    CHECK_EQ(sys_ledger_get().opened - ledger_start.opened,
             sys_ledger_get().closed - ledger_start.closed);
    restart_check();
    state_release(&st_state);
    big_cfg_free();
    state_end();
}

/* The journal is folded into the snapshot once it outgrows it, and by a
 * save with nothing marked (fepd's save at shutdown): the journal is then
 * empty and the snapshot alone holds every value. */
static void test_state_journal_compact(void)
{
    char line[96];
    unsigned i;

    begin("state-jcompact");
    big_cfg_make(2000);
    CHECK(state_open_here() == 0);
    for (i = 0; i < 10; i++)
        vary(i * 150, 1);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK(journal_size() > 0);
    restart_check();                        /* snapshot + journal */
    CHECK_EQ(journal_size(), 0);            /* folded at the start */

    for (i = 0; i < 2000; i++)              /* > 64 KiB of lines */
        vary(i, 2);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK_EQ(journal_size(), 0);
    snprintf(line, sizeof line, "\nrx D0001999 %s %u\n", kcv_example,
             (unsigned)expected[1999].rx_ic);
    CHECK(strstr(state_text(), line) != NULL);
    snprintf(line, sizeof line, "\ndcu D0000000 %lld 2 2 2\n",
             (long long)expected[0].last_success_s);
    CHECK(strstr(text, line) != NULL);
    restart_check();

    for (i = 0; i < 3; i++)
        vary(i, 3);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK(journal_size() > 0);
    CHECK(state_save(&st_state, &state_cfg) == 0);  /* nothing marked */
    CHECK_EQ(journal_size(), 0);
    snprintf(line, sizeof line, "\ndcu D0000002 %lld 5 3 195\n",
             (long long)expected[2].last_success_s);
    CHECK(strstr(state_text(), line) != NULL);
    CHECK(state_save(&st_state, &state_cfg) == 0);  /* clean: no write */
    restart_check();
    state_release(&st_state);
    big_cfg_free();
    state_end();
}

/* An IC block reserved between appends writes the last snapshot image with
 * its new tx line and leaves the journal alone: nothing is lost. */
static void test_state_journal_reservation(void)
{
    char line[64];
    long before;
    uint32_t i;
    int ok = 1;

    begin("state-jreserve");
    big_cfg_make(100);
    CHECK(state_open_here() == 0);
    for (i = 0; i < 100; i++)
        vary(i, 1);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    before = journal_size();
    CHECK(before > 0);
    for (i = 1; i <= IC_RESERVE_BLOCK + 1; i++)
        ok &= state_take_ic(&st_state, 0) == i;
    CHECK(ok);
    snprintf(line, sizeof line, "tx %s 0000131073\n", kcv_example);
    CHECK(strstr(state_text(), line) != NULL);
    CHECK_EQ(journal_size(), before);
    vary(7, 2);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    for (i = 0; i < IC_RESERVE_BLOCK; i++)
        ok &= state_take_ic(&st_state, 0) != 0;
    CHECK(ok);
    restart_check();                        /* a crash: no save */
    CHECK_EQ(state_take_ic(&st_state, 0), 3 * 65536 + 1);
    state_release(&st_state);
    big_cfg_free();
    state_end();
}

/* A crash after a compaction wrote the snapshot but before it emptied the
 * journal: the journal's lines say what the snapshot says.  Also a
 * compaction that fails: the save still counts (the values are in the
 * journal), the journal stays, and the next save folds it. */
static void test_state_journal_crash_in_compaction(void)
{
    static char journal[TEXT_SIZE];
    unsigned i;

    begin("state-jcrash");
    big_cfg_make(2000);
    CHECK(state_open_here() == 0);
    for (i = 0; i < 20; i++)
        vary(i, 1);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    for (i = 0; i < 20; i += 2)
        vary(i, 2);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    strcpy(journal, file_text("state/fepd.journal"));
    CHECK(state_save(&st_state, &state_cfg) == 0);  /* folds it */
    CHECK_EQ(journal_size(), 0);
    CHECK(test_write_file(path_of("state/fepd.journal"), journal) == 0);
    restart_check();

    for (i = 0; i < 2000; i++)
        vary(i, 3);
    fault("rename:1:EIO");
    CHECK(state_save(&st_state, &state_cfg) == 0);
    fault("");
    CHECK_EQ(st_state.n_changed, 0);
    CHECK_EQ(st_state.dirty, 0);
    CHECK(journal_size() > 64 * 1024);
    strcpy(journal, file_text("state/fepd.journal"));
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK_EQ(journal_size(), 0);
    CHECK(test_write_file(path_of("state/fepd.journal"), journal) == 0);
    restart_check();
    state_release(&st_state);
    big_cfg_free();
    state_end();
}

/* An append that fails (the write, part of it, the fsync, the open) returns
 * -1, keeps the marks and leaves the journal as it was; the next save
 * writes it all. */
static void test_state_journal_append_failure(void)
{
    static const char *const faults[] = {
        "fwrite:1:ENOSPC", "fsync:1:EIO", "open:1:EMFILE", "fwrite:2:EIO",
        "fwrite:3:ENOSPC",
    };
    static char before[TEXT_SIZE];
    size_t f;
    unsigned i, n;

    begin("state-jfail");
    big_cfg_make(2000);
    CHECK(state_open_here() == 0);
    for (i = 0; i < 2000; i++)              /* the bound: the snapshot's size */
        vary(i, 1);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    for (i = 0; i < 5; i++)
        vary(i, 2);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    for (f = 0; f < sizeof faults / sizeof faults[0]; f++) {
        strcpy(before, file_text("state/fepd.journal"));
        n = f < 3 ? 3 : f == 3 ? 1500 : 2000; /* in 2 and 3 pieces */
        for (i = 0; i < n; i++)
            vary(i, 3 + (unsigned)f);
        fault(faults[f]);
        CHECK(state_save(&st_state, &state_cfg) == -1);
        fault("");
        CHECK_EQ(st_state.dirty, 1);
        CHECK_EQ(st_state.n_changed, n);
        CHECK_EQ(st_state.dcus[0].changed, 1);
        CHECK_EQ(st_state.dcus[n - 1].changed, 1);
        CHECK_FILE("state/fepd.journal", before);
        CHECK_EQ(sys_ledger_get().opened - ledger_start.opened,
                 sys_ledger_get().closed - ledger_start.closed);
    }
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK_EQ(st_state.n_changed, 0);
    CHECK_EQ(st_state.dirty, 0);
    restart_check();
    state_release(&st_state);
    big_cfg_free();
    state_end();
}

/* A journal longer than fepd wrote (an append cut short whose cut-back
 * failed) is cut before the next append; one that is missing or shorter
 * (replaced, truncated) makes the save write the whole snapshot. */
static void test_state_journal_repair(void)
{
    static char before[TEXT_SIZE];
    unsigned i;

    begin("state-jrepair");
    big_cfg_make(50);
    CHECK(state_open_here() == 0);
    for (i = 0; i < 50; i++)
        vary(i, 1);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    strcpy(before, file_text("state/fepd.journal"));
    bytes_append("state/fepd.journal", "rx D00000");
    vary(3, 2);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK(strncmp(file_text("state/fepd.journal"), before, strlen(before)) == 0);
    CHECK(strncmp(text + strlen(before), "rx D0000003 ", 12) == 0);
    restart_check();

    vary(4, 3);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK(unlink(path_of("state/fepd.journal")) == 0);
    vary(5, 3);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK_EQ(journal_size(), 0);
    restart_check();

    vary(6, 4);
    vary(7, 4);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK(truncate(path_of("state/fepd.journal"), 20) == 0);
    vary(8, 4);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK_EQ(journal_size(), 0);
    restart_check();
    state_release(&st_state);
    big_cfg_free();
    state_end();
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
    test_run("store_segments_left", test_store_segments_left);

    test_run("state_fresh", test_state_fresh);
    test_run("state_restart", test_state_restart);
    test_run("state_block_boundary", test_state_block_boundary);
    test_run("state_shared_key", test_state_shared_key);
    test_run("state_rx_and_stats", test_state_rx_and_stats);
    test_run("state_load_liberal", test_state_load_liberal);
    test_run("state_corrupt", test_state_corrupt);
    test_run("state_save_failure", test_state_save_failure);
    test_run("state_open_save_failure", test_state_open_save_failure);
    test_run("state_exhausted", test_state_exhausted);
    test_run("state_no_keys", test_state_no_keys);
    test_run("state_journal_load", test_state_journal_load);
    test_run("state_journal_torn", test_state_journal_torn);
    test_run("state_journal_append_cost", test_state_journal_append_cost);
    test_run("state_journal_compact", test_state_journal_compact);
    test_run("state_journal_reservation", test_state_journal_reservation);
    test_run("state_journal_crash_in_compaction",
             test_state_journal_crash_in_compaction);
    test_run("state_journal_append_failure", test_state_journal_append_failure);
    test_run("state_journal_repair", test_state_journal_repair);
}
