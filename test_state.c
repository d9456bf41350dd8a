/*
 * test_state.c -- tests of state.c: ICs reserved on disk and never handed
 * out twice, replay marks and statistics across restarts, every key and
 * mark kept while its key is away, the journal, and every refusal of a
 * state that could be older than what fepd did (empty, truncated, damaged,
 * missing while fepd has run before, a journal without its snapshot, a
 * snapshot older than its journal, a state older than the witness).
 *
 * Owns: the DCU table of the tests and the directories under test_tmpdir,
 * removed at the end of each test.
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

/* Removes dir and what the tests put in it (files and empty directories). */
static void end(void)
{
    sys_ledger now = sys_ledger_get();
    DIR *d;
    struct dirent *e;
    char path[DIR_SIZE + 64];

    fault("");
    CHECK_EQ(now.opened - ledger_start.opened, now.closed - ledger_start.closed);
    d = opendir(dir);
    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >=
            (int)sizeof path)
            continue;
        if (unlink(path) != 0)
            rmdir(path);
    }
    closedir(d);
    rmdir(dir);
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

static int store_open_here(int sync_packet)
{
    char err[512];
    int rc = store_open(&st_store, dir, sync_packet, err, sizeof err);

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

void test_state_suite(void)
{
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
