/*
 * test_config.c -- tests of config.c (the config file of DESIGN.md section
 * 2) and metrics.c (the exposition of section 5 and the HTTP request).
 *
 * Each config test writes its file into a fresh test_tmpdir, loads it and
 * removes file and directory again.  Every error class has a test that
 * checks the exact "FILE:LINE:" of the message and a part of the problem,
 * and that the failed load left nothing allocated (ASan's leak check in
 * `make sanitize` proves the second part).  The metrics tests render into
 * small buffers and compare with one render into a large one, and feed each
 * request one byte more at a time from a buffer of exactly that size, so that
 * any over-read is caught by ASan.
 *
 * Owns: the fepd fixtures of the metrics tests and the temporary files of
 * the config tests, all released before each test returns.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>

#include "fep.h"
#include "test.h"

#define ERR_SIZE 512

/* ------------------------------------------------------------------------
 * Config fixtures
 * ---------------------------------------------------------------------- */

/* DESIGN.md section 2, as printed there. */
static const char design_example[] =
    "fep_id          FEP00001            # 1..8 ASCII characters, this FEP's SID\n"
    "listen          127.0.0.1:7100      # optional: accept push sessions here\n"
    "metrics         127.0.0.1:9100      # optional: Prometheus text format on GET /metrics\n"
    "data_dir        ./data              # where the CSV files are written\n"
    "state_dir       ./state             # IC counters and per-DCU statistics\n"
    "max_sessions    256                 # concurrent connections, all kinds (bounded by FD_SETSIZE)\n"
    "poll_every      900                 # seconds between two poll cycles of one DCU\n"
    "sync            packet              # packet: fsync before every ACK (default) | none\n"
    "timeout_connect 5                   # seconds\n"
    "timeout_frame   10                  # the next expected frame, from its first byte to its last\n"
    "timeout_write   10                  # a write that cannot progress\n"
    "timeout_idle    30                  # a push connection, until its first byte\n"
    "timeout_session 300                 # whole session, any kind\n"
    "\n"
    "# dcu ID ADDRESS [key=HEX32|-] [poll=CMDS]\n"
    "dcu  DCU00001  127.0.0.1:7001  key=000102030405060708090a0b0c0d0e0f  poll=k,s\n"
    "dcu  DCU00002  -               key=-                                  # push only, plaintext\n";

static const char design_dcus_only[] =
    "dcu  DCU00001  127.0.0.1:7001  key=000102030405060708090a0b0c0d0e0f  poll=k,s\n"
    "dcu  DCU00002  -               key=-                                  # push only, plaintext\n";

#define KEY_00_0F_HEX "000102030405060708090a0b0c0d0e0f"
static const uint8_t key_00_0f[KEY_SIZE] = {
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
    0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f
};

/* Writes text to a fresh DIR/fepd.conf, loads it, removes it again; the
 * path stays in path (for the expected messages). */
static int load_text(const char *text, fep_config *cfg, char *err,
                     size_t errlen, char *path, size_t pathlen)
{
    char dir[256];
    int rc;

    if (test_tmpdir(dir, sizeof dir, "config") != 0) {
        snprintf(err, errlen, "no tmpdir");
        return -2;
    }
    snprintf(path, pathlen, "%s/fepd.conf", dir);
    if (test_write_file(path, text) != 0) {
        snprintf(err, errlen, "cannot write %s", path);
        rmdir(dir);
        return -2;
    }
    rc = config_load(path, cfg, err, errlen);
    unlink(path);
    rmdir(dir);
    return rc;
}

static int load_ok(const char *text, fep_config *cfg)
{
    char err[ERR_SIZE], path[300];
    int rc = load_text(text, cfg, err, sizeof err, path, sizeof path);

    if (rc != 0)
        fprintf(stderr, "  unexpected error: %s\n", err);
    return rc;
}

static int config_is_zero(const fep_config *cfg)
{
    static const fep_config zero;

    return memcmp(cfg, &zero, sizeof zero) == 0;
}

/* Loads text; the load must fail with "PATH:LINE: ...needle..." (line 0:
 * "PATH: ...") and leave *cfg all zero. */
static void expect_error(const char *text, unsigned line, const char *needle,
                         const char *file, int src_line)
{
    char err[ERR_SIZE], path[300], prefix[400];
    fep_config cfg;
    int rc = load_text(text, &cfg, err, sizeof err, path, sizeof path);
    int ok;

    if (line)
        snprintf(prefix, sizeof prefix, "%s:%u: ", path, line);
    else
        snprintf(prefix, sizeof prefix, "%s: ", path);
    ok = rc == -1 && strncmp(err, prefix, strlen(prefix)) == 0 &&
         strstr(err + strlen(prefix), needle) != NULL && config_is_zero(&cfg);
    if (!ok)
        fprintf(stderr, "  rc %d, message: %s\n  wanted: %s...%s\n", rc,
                rc == 0 ? "(none)" : err, prefix, needle);
    test_check(ok, file, src_line, "config error with file, line and problem");
    if (rc == 0)
        config_release(&cfg);
}

#define EXPECT_ERROR(text, line, needle) \
    expect_error((text), (line), (needle), __FILE__, __LINE__)

static int addr_is(const sys_addr *a, const char *text)
{
    char s[80];

    sys_addr_str(a, s, sizeof s);
    if (strcmp(s, text) != 0)
        fprintf(stderr, "  address %s, expected %s\n", s, text);
    return strcmp(s, text) == 0;
}

static void check_design_defaults(const fep_config *cfg)
{
    CHECK(strcmp(cfg->fep_id, "FEP00001") == 0);
    CHECK_MEM(cfg->sid, "FEP00001", FRAME_ID_SIZE);
    CHECK(strcmp(cfg->data_dir, "./data") == 0);
    CHECK(strcmp(cfg->state_dir, "./state") == 0);
    CHECK_EQ(cfg->max_sessions, 256);
    CHECK_EQ(cfg->poll_every_ms, 900000);
    CHECK_EQ(cfg->sync_packet, 1);
    CHECK_EQ(cfg->timeout_connect_ms, 5000);
    CHECK_EQ(cfg->timeout_frame_ms, 10000);
    CHECK_EQ(cfg->timeout_write_ms, 10000);
    CHECK_EQ(cfg->timeout_idle_ms, 30000);
    CHECK_EQ(cfg->timeout_session_ms, 300000);
}

/* The two DCUs of DESIGN.md's example, in file order; each found by the
 * SID a frame carries. */
static void check_design_dcus(const fep_config *cfg)
{
    const dcu_conf *a = &cfg->dcus[0], *b = &cfg->dcus[1];
    uint8_t sid[FRAME_ID_SIZE];

    CHECK_EQ(cfg->n_dcus, 2);
    CHECK(strcmp(a->id, "DCU00001") == 0);
    frame_id_set(sid, "DCU00001");
    CHECK_EQ(config_find_dcu(cfg, sid), 0);
    CHECK_EQ(a->has_addr, 1);
    CHECK(addr_is(&a->addr, "127.0.0.1:7001"));
    CHECK_EQ(a->has_key, 1);
    CHECK_MEM(a->key, key_00_0f, KEY_SIZE);
    CHECK(strcmp(a->poll, "ks") == 0);
    CHECK(strcmp(b->id, "DCU00002") == 0);
    frame_id_set(sid, "DCU00002");
    CHECK_EQ(config_find_dcu(cfg, sid), 1);
    CHECK_EQ(b->has_addr, 0);
    CHECK_EQ(b->has_key, 0);
    CHECK(strcmp(b->poll, "k") == 0);
}

/* ------------------------------------------------------------------------
 * Config: values
 * ---------------------------------------------------------------------- */

static void test_design_example(void)
{
    fep_config cfg;

    if (load_ok(design_example, &cfg) != 0) {
        CHECK(0);
        return;
    }
    check_design_defaults(&cfg);
    CHECK_EQ(cfg.has_listen, 1);
    CHECK(addr_is(&cfg.listen, "127.0.0.1:7100"));
    CHECK_EQ(cfg.has_metrics, 1);
    CHECK(addr_is(&cfg.metrics, "127.0.0.1:9100"));
    check_design_dcus(&cfg);
    config_release(&cfg);
    CHECK(cfg.dcus == NULL && cfg.by_sid == NULL && cfg.n_dcus == 0);
    config_release(&cfg);               /* a second release is harmless */
}

static void test_defaults(void)
{
    fep_config cfg;

    if (load_ok(design_dcus_only, &cfg) != 0) {
        CHECK(0);
        return;
    }
    check_design_defaults(&cfg);
    CHECK_EQ(cfg.has_listen, 0);
    CHECK_EQ(cfg.has_metrics, 0);
    check_design_dcus(&cfg);
    config_release(&cfg);
}

static void test_every_value_as_written(void)
{
    static const char text[] =
        "\t# every directive, none at its default\n"
        "fep_id\tF!~x\n"
        "listen 0.0.0.0:1#no space before the comment\n"
        "metrics 127.0.0.2:65535\r\n"
        "data_dir /var/lib/fepd/data\n"
        "state_dir relative/state\n"
        "max_sessions 992\n"
        "poll_every 0.5\n"
        "sync none\n"
        "timeout_connect 1\n"
        "timeout_frame 2\n"
        "timeout_write 3\n"
        "timeout_idle 4\n"
        "timeout_session 86400\n"
        "   \n"
        "dcu X -\n";
    fep_config cfg;

    if (load_ok(text, &cfg) != 0) {
        CHECK(0);
        return;
    }
    CHECK(strcmp(cfg.fep_id, "F!~x") == 0);
    CHECK_MEM(cfg.sid, "F!~x    ", FRAME_ID_SIZE);
    CHECK(cfg.has_listen && addr_is(&cfg.listen, "0.0.0.0:1"));
    CHECK(cfg.has_metrics && addr_is(&cfg.metrics, "127.0.0.2:65535"));
    CHECK(strcmp(cfg.data_dir, "/var/lib/fepd/data") == 0);
    CHECK(strcmp(cfg.state_dir, "relative/state") == 0);
    CHECK_EQ(cfg.max_sessions, SESSIONS_MAX);
    CHECK_EQ(cfg.poll_every_ms, 500);
    CHECK_EQ(cfg.sync_packet, 0);
    CHECK_EQ(cfg.timeout_connect_ms, 1000);
    CHECK_EQ(cfg.timeout_frame_ms, 2000);
    CHECK_EQ(cfg.timeout_write_ms, 3000);
    CHECK_EQ(cfg.timeout_idle_ms, 4000);
    CHECK_EQ(cfg.timeout_session_ms, 86400000);
    CHECK_EQ(cfg.n_dcus, 1);
    config_release(&cfg);
}

static void test_decimal_durations(void)
{
    static const struct {
        const char *text;
        int64_t ms;
    } cases[] = {
        { "0.25", 250 }, { "1.5", 1500 }, { "0.001", 1 }, { "2.010", 2010 },
        { "007", 7000 }, { "86400", 86400000 }, { "86399.999", 86399999 },
    };
    char text[128];
    fep_config cfg;
    size_t i;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(text, sizeof text, "timeout_frame %s\ndcu D -\n",
                 cases[i].text);
        if (load_ok(text, &cfg) != 0) {
            CHECK(0);
            continue;
        }
        CHECK_EQ(cfg.timeout_frame_ms, cases[i].ms);
        config_release(&cfg);
    }
}

static void test_ipv6_address(void)
{
    fep_config cfg;

    if (load_ok("listen [::1]:7100\ndcu D6 [::1]:7001 poll=s\n", &cfg) != 0) {
        CHECK(0);
        return;
    }
    CHECK(cfg.has_listen && cfg.listen.family == 6);
    CHECK(addr_is(&cfg.listen, "[::1]:7100"));
    CHECK(cfg.dcus[0].has_addr && cfg.dcus[0].addr.family == 6);
    CHECK(addr_is(&cfg.dcus[0].addr, "[::1]:7001"));
    config_release(&cfg);
}

static void test_poll_lists(void)
{
    static const struct {
        const char *opt;
        const char *poll;
    } cases[] = {
        { "", "k" }, { "poll=k", "k" }, { "poll=s", "s" },
        { "poll=k,s,m,n", "ksmn" }, { "poll=n,m,s,k", "nmsk" },
        { "poll=m,k", "mk" },
    };
    char text[128];
    fep_config cfg;
    size_t i;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(text, sizeof text, "dcu D - %s\n", cases[i].opt);
        if (load_ok(text, &cfg) != 0) {
            CHECK(0);
            continue;
        }
        /* four letters fill poll with no NUL after them */
        CHECK(strncmp(cfg.dcus[0].poll, cases[i].poll, POLL_CMDS_MAX) == 0);
        config_release(&cfg);
    }
}

static void test_keys(void)
{
    static const char text[] =
        "dcu L 127.0.0.1:7001 key=000102030405060708090a0b0c0d0e0f\n"
        "dcu U 127.0.0.1:7001 key=000102030405060708090A0B0C0D0E0F\n"
        "dcu M - poll=n,k key=Ff00aA55bB66cC77dD88eE99a1B2c3D4\n"
        "dcu N - key=-\n"
        "dcu O -\n";
    static const uint8_t mixed[KEY_SIZE] = {
        0xff, 0x00, 0xaa, 0x55, 0xbb, 0x66, 0xcc, 0x77,
        0xdd, 0x88, 0xee, 0x99, 0xa1, 0xb2, 0xc3, 0xd4
    };
    fep_config cfg;

    if (load_ok(text, &cfg) != 0) {
        CHECK(0);
        return;
    }
    CHECK(cfg.dcus[0].has_key && cfg.dcus[1].has_key && cfg.dcus[2].has_key);
    CHECK_MEM(cfg.dcus[0].key, key_00_0f, KEY_SIZE);
    CHECK_MEM(cfg.dcus[1].key, key_00_0f, KEY_SIZE);
    CHECK_MEM(cfg.dcus[2].key, mixed, KEY_SIZE);
    CHECK(strcmp(cfg.dcus[2].poll, "nk") == 0);
    CHECK_EQ(cfg.dcus[3].has_key, 0);
    CHECK_EQ(cfg.dcus[4].has_key, 0);
    config_release(&cfg);
}

static void test_find_dcu(void)
{
    static const char text[] =
        "dcu ZZ -\n"
        "dcu A -\n"
        "dcu DCU00002 -\n"
        "dcu DCU00001 -\n"
        "dcu 12345678 -\n"
        "dcu a -\n";
    static const char *const ids[] = { "ZZ", "A", "DCU00002", "DCU00001",
                                       "12345678", "a" };
    uint8_t sid[FRAME_ID_SIZE];
    fep_config cfg;
    unsigned i;

    if (load_ok(text, &cfg) != 0) {
        CHECK(0);
        return;
    }
    for (i = 0; i < 6; i++) {
        frame_id_set(sid, ids[i]);
        CHECK_EQ(config_find_dcu(&cfg, sid), i);
    }
    frame_id_set(sid, "DCU00003");
    CHECK_EQ(config_find_dcu(&cfg, sid), -1);
    frame_id_set(sid, "Z");
    CHECK_EQ(config_find_dcu(&cfg, sid), -1);
    memcpy(sid, "A\0\0\0\0\0\0\0", FRAME_ID_SIZE);  /* NUL padding is not space */
    CHECK_EQ(config_find_dcu(&cfg, sid), -1);
    config_release(&cfg);
}

#define MANY_DCUS 10000

static char *many_dcus_text(void)
{
    size_t cap = (size_t)MANY_DCUS * 96, len = 0;
    char *text = malloc(cap);
    unsigned i;

    if (!text)
        return NULL;
    for (i = 0; i < MANY_DCUS; i++) {
        unsigned id = (i * 7919u) % MANY_DCUS;  /* ids out of order */
        len += (size_t)snprintf(text + len, cap - len, "dcu D%07u %s%s\n", id,
                                id % 100 ? "-" : "127.0.0.1:7001",
                                id % 3 ? "" : " key=" KEY_00_0F_HEX);
    }
    return text;
}

static void test_many_dcus(void)
{
    char *text = many_dcus_text();
    uint8_t sid[FRAME_ID_SIZE], prev[FRAME_ID_SIZE];
    char id[16];
    fep_config cfg;
    unsigned i, found = 0, sorted = 1;

    if (!text || load_ok(text, &cfg) != 0) {
        CHECK(0);
        free(text);
        return;
    }
    free(text);
    CHECK_EQ(cfg.n_dcus, MANY_DCUS);
    for (i = 0; i < MANY_DCUS; i++) {
        int k;
        snprintf(id, sizeof id, "D%07u", i);
        frame_id_set(sid, id);
        k = config_find_dcu(&cfg, sid);
        /* entries in file order: entry k is the id of line k + 1 */
        found += k >= 0 && strcmp(cfg.dcus[k].id, id) == 0 &&
                 (unsigned)k * 7919u % MANY_DCUS == i;
    }
    CHECK_EQ(found, MANY_DCUS);
    /* by_sid in the order of the SIDs on the wire */
    frame_id_set(prev, cfg.dcus[cfg.by_sid[0]].id);
    for (i = 1; i < MANY_DCUS; i++) {
        frame_id_set(sid, cfg.dcus[cfg.by_sid[i]].id);
        sorted &= memcmp(prev, sid, FRAME_ID_SIZE) < 0;
        memcpy(prev, sid, FRAME_ID_SIZE);
    }
    CHECK(sorted);
    frame_id_set(sid, "D0010000");
    CHECK_EQ(config_find_dcu(&cfg, sid), -1);
    config_release(&cfg);
}

static void test_long_lines(void)
{
    char text[2400], line[1100];
    fep_config cfg;

    /* 1023 characters, the most a line may have, with and without a newline */
    memset(line, 'x', 1023);
    line[0] = '#';
    line[1023] = '\0';
    snprintf(text, sizeof text, "dcu D -\n%s\n%s", line, line);
    CHECK(load_ok(text, &cfg) == 0);
    config_release(&cfg);
    /* 1024 */
    memset(line, 'x', 1024);
    line[0] = '#';
    line[1024] = '\0';
    snprintf(text, sizeof text, "dcu D -\n\n%s\ndcu E -\n", line);
    EXPECT_ERROR(text, 3, "line longer than 1023 characters");
    snprintf(text, sizeof text, "dcu D -\n%s", line);
    EXPECT_ERROR(text, 2, "line longer than 1023 characters");
}

/* ------------------------------------------------------------------------
 * Config: one test per error class
 * ---------------------------------------------------------------------- */

static void test_error_unknown_directive(void)
{
    EXPECT_ERROR("dcu D -\n\nlisten_on 127.0.0.1:1\n", 3,
                 "unknown directive 'listen_on'");
    EXPECT_ERROR("FEP_ID X\ndcu D -\n", 1, "unknown directive 'FEP_ID'");
    EXPECT_ERROR("dcu D -\n  key=00\n", 2, "unknown directive 'key=00'");
}

static void test_error_missing_value(void)
{
    EXPECT_ERROR("dcu D -\nlisten\n", 2, "listen: missing value");
    EXPECT_ERROR("dcu D -\ntimeout_idle   # none\n", 2,
                 "timeout_idle: missing value");
    EXPECT_ERROR("dcu D -\ndcu E\n", 2, "dcu E: missing ADDRESS");
    EXPECT_ERROR("dcu\n", 1, "dcu: missing ID");
}

static void test_error_extra_value(void)
{
    EXPECT_ERROR("dcu D -\ndata_dir /a /b\n", 2, "data_dir: extra value '/b'");
    EXPECT_ERROR("dcu D - key=- poll=k junk\n", 1,
                 "dcu D: extra value 'junk'");
    EXPECT_ERROR("dcu D - junk\n", 1, "dcu D: unknown option 'junk'");
}

static void test_error_bad_values(void)
{
    static const struct {
        const char *text;
        const char *needle;
    } cases[] = {
        { "fep_id FEP000001", "fep_id: must be 1..8 printable ASCII characters "
                              "without spaces, got 'FEP000001'" },
        { "fep_id F\x01", "fep_id: must be 1..8" },
        { "listen 127.0.0.1", "listen: '127.0.0.1': expected host:port" },
        { "metrics 127.0.0.1:0", "metrics: '127.0.0.1:0': bad host or port" },
        { "data_dir /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
          "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
          "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
          "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "data_dir: must be at most 224" },
        { "max_sessions 0", "max_sessions: must be 1..992, got '0'" },
        { "max_sessions 993", "max_sessions: must be 1..992, got '993'" },
        { "max_sessions -1", "max_sessions: must be 1..992, got '-1'" },
        { "max_sessions 99999999999999999999", "max_sessions: must be 1..992" },
        { "sync always", "sync: must be packet or none, got 'always'" },
        { "poll_every 0", "poll_every: must be seconds, more than 0" },
        { "timeout_frame 0.000", "timeout_frame: must be seconds" },
        { "timeout_frame 0.0001", "got '0.0001'" },
        { "timeout_frame 86400.001", "got '86400.001'" },
        { "timeout_frame 86401", "got '86401'" },
        { "timeout_frame 1.", "got '1.'" },
        { "timeout_frame .5", "got '.5'" },
        { "timeout_frame -1", "got '-1'" },
        { "timeout_frame 1e3", "got '1e3'" },
        { "timeout_frame 1.2.3", "got '1.2.3'" },
        { "timeout_frame 10s", "got '10s'" },
        { "dcu DCU000001 -", "dcu: ID must be 1..8 printable ASCII characters "
                             "without spaces, got 'DCU000001'" },
        { "dcu D 127.0.0.1", "dcu D: address '127.0.0.1': expected host:port" },
        { "dcu D [::1]7001", "dcu D: address '[::1]7001': expected [IPv6]:port" },
        { "dcu DCU00001 - key=xyz", "dcu DCU00001: key must be 32 hex digits or -, got 'xyz'" },
        { "dcu D - key=000102030405060708090a0b0c0d0e0", "key must be 32 hex digits" },
        { "dcu D - key=000102030405060708090a0b0c0d0e0f0", "key must be 32 hex digits" },
        { "dcu D - key=000102030405060708090a0b0c0d0e0g", "key must be 32 hex digits" },
        { "dcu D - key=", "key must be 32 hex digits or -, got ''" },
        { "dcu D - poll=", "dcu D: poll must be a comma-separated list of k s m n, "
                           "each at most once (e.g. k,s), got ''" },
        { "dcu D - poll=x", "poll must be a comma-separated list" },
        { "dcu D - poll=k,k", "got 'k,k'" },
        { "dcu D - poll=k,s,k", "got 'k,s,k'" },
        { "dcu D - poll=ks", "got 'ks'" },
        { "dcu D - poll=k,", "got 'k,'" },
        { "dcu D - poll=,k", "got ',k'" },
        { "dcu D - poll=K", "got 'K'" },
        { "dcu D - key=- key=-", "dcu D: option key given twice" },
        { "dcu D - poll=k poll=s", "dcu D: option poll given twice" },
    };
    char text[512];
    size_t i;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(text, sizeof text, "dcu OK -\n# a comment\n%s\n",
                 cases[i].text);
        EXPECT_ERROR(text, 3, cases[i].needle);
    }
}

static void test_error_given_twice(void)
{
    EXPECT_ERROR("sync none\ndcu D -\n\nsync packet\n", 4,
                 "sync: given twice (first on line 1)");
    EXPECT_ERROR("listen 127.0.0.1:1\nlisten 127.0.0.1:1\ndcu D -\n", 2,
                 "listen: given twice (first on line 1)");
}

static void test_error_duplicate_dcu(void)
{
    EXPECT_ERROR("dcu DCU00001 -\ndcu X -\ndcu DCU00001 127.0.0.1:7001\n", 3,
                 "dcu DCU00001: duplicate id (first on line 1)");
    /* the earliest second occurrence is named, whatever the sort order */
    EXPECT_ERROR("dcu B -\ndcu A -\ndcu A -\ndcu B -\ndcu A -\n", 3,
                 "dcu A: duplicate id (first on line 2)");
    EXPECT_ERROR("dcu Z -\ndcu Y -\ndcu Z -\ndcu Y -\n", 3,
                 "dcu Z: duplicate id (first on line 1)");
    /* the lines are found again in the file: comments and directives
     * between dcu lines count */
    EXPECT_ERROR("# c\ndcu B -\nsync none\n\ndcu A -\n# c\ndcu B -\n", 7,
                 "dcu B: duplicate id (first on line 2)");
    EXPECT_ERROR("fep_id F\ndcu A -\n# c\ndcu F -\n", 4,
                 "dcu F: the same id as fep_id (line 1)");
}

static void test_error_unreadable(void)
{
    char dir[256], path[300], err[ERR_SIZE], want[400];
    fep_config cfg;

    if (test_tmpdir(dir, sizeof dir, "config") != 0) {
        CHECK(0);
        return;
    }
    snprintf(path, sizeof path, "%s/missing.conf", dir);
    snprintf(want, sizeof want, "%s: cannot open: %s", path, strerror(ENOENT));
    CHECK_EQ(config_load(path, &cfg, err, sizeof err), -1);
    CHECK(strcmp(err, want) == 0);
    CHECK(config_is_zero(&cfg));
    /* a directory is not a file (nor a FIFO or a device: none may block) */
    snprintf(want, sizeof want, "%s: cannot read: not a regular file", dir);
    CHECK_EQ(config_load(dir, &cfg, err, sizeof err), -1);
    CHECK(strcmp(err, want) == 0);
    CHECK(config_is_zero(&cfg));
    rmdir(dir);
}

static void test_error_no_dcu(void)
{
    EXPECT_ERROR("fep_id F\n", 0, "no dcu line");
    EXPECT_ERROR("", 0, "no dcu line");
    EXPECT_ERROR("# dcu D -\n", 0, "no dcu line");
    /* the error of a line comes first */
    EXPECT_ERROR("fep_id F\nsync x\n", 2, "sync: must be packet or none");
}

static void test_error_message_truncated(void)
{
    char err[16];
    fep_config cfg;
    char path[300];

    CHECK_EQ(load_text("bogus\n", &cfg, err, sizeof err, path, sizeof path),
             -1);
    CHECK(strlen(err) == sizeof err - 1);
    CHECK(config_is_zero(&cfg));
}

/* ------------------------------------------------------------------------
 * Metrics: rendering
 * ---------------------------------------------------------------------- */

#define LAST_SUCCESS "fep_dcu_last_success_timestamp_seconds"

static fepd *metrics_fixture(unsigned n_dcus)
{
    fepd *d = calloc(1, sizeof *d);
    unsigned i;

    if (!d)
        return NULL;
    d->cfg.dcus = calloc(n_dcus ? n_dcus : 1, sizeof *d->cfg.dcus);
    d->cfg.by_sid = calloc(n_dcus ? n_dcus : 1, sizeof *d->cfg.by_sid);
    d->state.dcus = calloc(n_dcus ? n_dcus : 1, sizeof *d->state.dcus);
    d->cfg.n_dcus = d->cfg.n_live = d->state.n_dcus = n_dcus;
    for (i = 0; d->cfg.by_sid && i < n_dcus; i++)
        d->cfg.by_sid[i] = i;           /* the ids below sort as made */
    for (i = 0; d->cfg.dcus && d->state.dcus && i < n_dcus; i++) {
        char id[16];                    /* room for any unsigned: no truncation */
        snprintf(id, sizeof id, "DCU%05u", i % 100000u);
        memcpy(d->cfg.dcus[i].id, id, sizeof d->cfg.dcus[i].id - 1);
        d->state.dcus[i].last_success_s = i % 3 ? 1700000000 + (int64_t)i : 0;
    }
    d->sessions_active = 7;
    d->stats.sessions_total[KIND_POLL][0] = 11;
    d->stats.sessions_total[KIND_POLL][1] = 12;
    d->stats.sessions_total[KIND_PUSH][0] = 13;
    d->stats.sessions_total[KIND_PUSH][1] = 14;
    d->stats.frames_received = 21;
    d->stats.frames_sent = 22;
    for (i = 0; i <= FEP_NACK_CODE_MAX; i++)
        d->stats.nacks_sent[i] = 100 + i;
    d->stats.records_stored = UINT64_MAX;
    d->stats.garbage_bytes = 24;
    d->stats.timeouts = 25;
    d->stats.slots_acquired = 26;
    d->stats.slots_released = 27;
    d->stats.busy_rejected = 28;
    d->slots_in_use = 9;
    d->n_slots = 268;
    d->static_memory_bytes = 1234567;
    return d;
}

static void metrics_fixture_free(fepd *d)
{
    if (!d)
        return;
    free(d->cfg.dcus);
    free(d->cfg.by_sid);
    free(d->state.dcus);
    free(d);
}

/* Renders all of d with calls of at most cap bytes; the text (NUL-
 * terminated) in out, the number of calls in *calls. */
static size_t render_all(const fepd *d, size_t cap, char *out, size_t outcap,
                         unsigned *calls, int *chunks_ok)
{
    uint32_t cursor = 0;
    size_t len = 0, n;
    char *chunk = malloc(cap);

    *calls = 0;
    *chunks_ok = chunk != NULL;
    while (chunk && (n = metrics_render(d, &cursor, chunk, cap)) > 0) {
        (*calls)++;
        if (n > cap || chunk[n - 1] != '\n' || len + n >= outcap) {
            *chunks_ok = 0;
            break;
        }
        memcpy(out + len, chunk, n);
        len += n;
    }
    out[len] = '\0';
    free(chunk);
    return len;
}

#define BIG (1u << 20)

static void test_metrics_render_chunks(void)
{
    static const size_t caps[] = { 512, 513, 600, 1000, 4096 };
    fepd *d = metrics_fixture(300);
    char *whole = malloc(BIG), *pieces = malloc(BIG);
    uint32_t cursor = 0;
    size_t len, i;
    unsigned calls;
    int ok;

    if (!d || !whole || !pieces) {
        CHECK(0);
        goto out;
    }
    len = metrics_render(d, &cursor, whole, BIG - 1);
    whole[len] = '\0';
    CHECK(len > 300 * 40);
    CHECK_EQ(metrics_render(d, &cursor, whole + len, BIG - 1 - len), 0);
    CHECK_EQ(cursor, 19 * 3 + 2 + 4 + 2 + 10 + 2 + 2 + 2 + 300);
    for (i = 0; i < sizeof caps / sizeof caps[0]; i++) {
        CHECK_EQ(render_all(d, caps[i], pieces, BIG, &calls, &ok), len);
        CHECK(ok);
        CHECK(calls > len / caps[i]);
        CHECK(strcmp(pieces, whole) == 0);
    }
out:
    free(whole);
    free(pieces);
    metrics_fixture_free(d);
}

static int has_line(const char *text, const char *line)
{
    const char *p = text;
    size_t n = strlen(line);

    while ((p = strstr(p, line)) != NULL) {
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return 1;
        p++;
    }
    fprintf(stderr, "  missing line: %s\n", line);
    return 0;
}

/* Every sample follows the # HELP and # TYPE of its own family. */
static int families_well_formed(const char *text)
{
    char family[128] = "", help[128] = "", name[128];
    const char *p = text;

    while (*p) {
        const char *end = strchr(p, '\n');
        size_t n;
        if (!end)
            return 0;
        if (sscanf(p, "# HELP %127s", help) == 1) {
            family[0] = '\0';
        } else if (sscanf(p, "# TYPE %127s", family) == 1) {
            if (strcmp(family, help) != 0)
                return 0;
        } else {
            n = strcspn(p, "{ ");
            if (n >= sizeof name || p[n] == '\n')
                return 0;
            memcpy(name, p, n);
            name[n] = '\0';
            if (strcmp(name, family) != 0)
                return 0;
        }
        p = end + 1;
    }
    return 1;
}

static void test_metrics_names(void)
{
    static const char *const design_names[] = {
        "fep_sessions_active", "fep_sessions_total", "fep_frames_received_total",
        "fep_frames_sent_total", "fep_nacks_sent_total", "fep_records_stored_total",
        "fep_garbage_bytes_total", "fep_slots_in_use", "fep_slots_capacity",
        "fep_static_memory_bytes", "fep_dcu_last_success_timestamp_seconds",
        "fep_timeouts_total", "fep_slots_acquired_total",
        "fep_slots_released_total", "fep_descriptors_open",
    };
    static const char *const codes[] = { "crc", "header", "length", "security",
        "replay", "unknown", "command", "sequence", "store", "busy" };
    fepd *d = metrics_fixture(3);
    char *text = malloc(BIG), want[160];
    sys_ledger l = sys_ledger_get();
    uint32_t cursor = 0;
    size_t i, len;

    if (!d || !text) {
        CHECK(0);
        goto out;
    }
    len = metrics_render(d, &cursor, text, BIG - 1);
    text[len] = '\0';
    for (i = 0; i < sizeof design_names / sizeof design_names[0]; i++) {
        snprintf(want, sizeof want, "# TYPE %s ", design_names[i]);
        CHECK(strstr(text, want) != NULL);
    }
    CHECK(families_well_formed(text));
    CHECK(has_line(text, "# TYPE fep_sessions_total counter"));
    CHECK(has_line(text, "# TYPE fep_sessions_active gauge"));
    CHECK(has_line(text, "fep_sessions_active 7"));
    CHECK(has_line(text, "fep_sessions_total{kind=\"poll\",result=\"ok\"} 11"));
    CHECK(has_line(text, "fep_sessions_total{kind=\"poll\",result=\"error\"} 12"));
    CHECK(has_line(text, "fep_sessions_total{kind=\"push\",result=\"ok\"} 13"));
    CHECK(has_line(text, "fep_sessions_total{kind=\"push\",result=\"error\"} 14"));
    CHECK(has_line(text, "fep_frames_received_total 21"));
    CHECK(has_line(text, "fep_frames_sent_total 22"));
    for (i = 0; i < 10; i++) {
        snprintf(want, sizeof want, "fep_nacks_sent_total{code=\"%s\"} %u",
                 codes[i], (unsigned)(101 + i));
        CHECK(has_line(text, want));
    }
    CHECK(strstr(text, "code=\"other\"") == NULL);
    CHECK(has_line(text, "fep_records_stored_total 18446744073709551615"));
    CHECK(has_line(text, "fep_garbage_bytes_total 24"));
    CHECK(has_line(text, "fep_slots_in_use 9"));
    CHECK(has_line(text, "fep_slots_capacity 268"));
    CHECK(has_line(text, "fep_static_memory_bytes 1234567"));
    CHECK(has_line(text, "fep_timeouts_total 25"));
    CHECK(has_line(text, "fep_slots_acquired_total 26"));
    CHECK(has_line(text, "fep_slots_released_total 27"));
    CHECK(has_line(text, "fep_busy_rejected_total 28"));
    snprintf(want, sizeof want, "fep_descriptors_open %llu",
             (unsigned long long)(l.opened - l.closed));
    CHECK(has_line(text, want));
    CHECK(has_line(text, LAST_SUCCESS "{dcu=\"DCU00000\"} 0"));
    CHECK(has_line(text, LAST_SUCCESS "{dcu=\"DCU00001\"} 1700000001"));
    CHECK(has_line(text, LAST_SUCCESS "{dcu=\"DCU00002\"} 1700000002"));
out:
    free(text);
    metrics_fixture_free(d);
}

static void test_metrics_label_escaping(void)
{
    fepd *d = metrics_fixture(2);
    char text[8192];
    uint32_t cursor = 0;
    size_t len;

    if (!d) {
        CHECK(0);
        return;
    }
    strcpy(d->cfg.dcus[0].id, "a\"b\\c\nd");
    strcpy(d->cfg.dcus[1].id, "\\\\\\\\\"\"\"\"");
    len = metrics_render(d, &cursor, text, sizeof text - 1);
    text[len] = '\0';
    CHECK(has_line(text, LAST_SUCCESS "{dcu=\"a\\\"b\\\\c\\nd\"} 0"));
    CHECK(has_line(text, LAST_SUCCESS
                   "{dcu=\"\\\\\\\\\\\\\\\\\\\"\\\"\\\"\\\"\"} 1700000001"));
    metrics_fixture_free(d);
}

static void test_metrics_no_dcus(void)
{
    fepd *d = metrics_fixture(0);
    char text[8192];
    uint32_t cursor = 0;
    size_t len;

    if (!d) {
        CHECK(0);
        return;
    }
    len = metrics_render(d, &cursor, text, sizeof text - 1);
    text[len] = '\0';
    CHECK(has_line(text, "# TYPE " LAST_SUCCESS " gauge"));
    CHECK(strstr(text, "fep_dcu_last_success_timestamp_seconds{") == NULL);
    CHECK(families_well_formed(text));
    /* state not (yet) loaded: every DCU reads "never" */
    free(d->state.dcus);
    d->state.dcus = NULL;
    d->cfg.n_dcus = d->cfg.n_live = 1;
    strcpy(d->cfg.dcus[0].id, "X");
    cursor = 0;
    len = metrics_render(d, &cursor, text, sizeof text - 1);
    text[len] = '\0';
    CHECK(has_line(text, LAST_SUCCESS "{dcu=\"X\"} 0"));
    CHECK_EQ(metrics_render(d, &cursor, text, sizeof text), 0);
    metrics_fixture_free(d);
}

/* A reload while a scrape stands at DCU00005's line: DCUs removed or added
 * before it shift nothing, the removed DCU00005 itself is not written, and
 * every DCU after it is written once, an added one included. */
static void test_metrics_place_across_reload(void)
{
    static const unsigned after_reload[] = { 10, 0, 3, 4, 6, 7, 8, 9, 11 };
    static const char *const rest[] = { "DCU00006", "DCU00007", "DCU00008",
                                        "DCU00009", "E" };
    fepd *d = metrics_fixture(12);
    static char text[8192];
    char want[64];
    const char *at;
    uint32_t cursor = 0, first;
    metrics_place place;
    size_t len, i;

    if (!d) {
        CHECK(0);
        return;
    }
    d->cfg.n_live = 10;                 /* DCU00000..DCU00009 before */
    while (metrics_render(d, &cursor, text, sizeof text - 1) > 0)
        ;
    first = cursor - 10;                /* the line of DCU00000 */
    metrics_place_hold(d, 3, &place);   /* before the per-DCU family */
    CHECK_EQ(metrics_place_find(d, &place), 3);
    metrics_place_hold(d, cursor, &place);
    CHECK_EQ(place.at, PLACE_DCUS_DONE);
    metrics_place_hold(d, first + 5, &place);
    CHECK_EQ(place.at, PLACE_DCU);

    strcpy(d->cfg.dcus[10].id, "A");    /* the reload: A and E added, */
    strcpy(d->cfg.dcus[11].id, "E");    /* DCU00001, 2 and 5 removed */
    memcpy(d->cfg.by_sid, after_reload, sizeof after_reload);
    d->cfg.n_live = 9;
    cursor = metrics_place_find(d, &place);
    len = metrics_render(d, &cursor, text, sizeof text - 1);
    text[len] = '\0';
    CHECK_EQ(metrics_render(d, &cursor, text + len, sizeof text - 1 - len), 0);
    at = text;
    for (i = 0; i < sizeof rest / sizeof rest[0]; i++) {
        snprintf(want, sizeof want, "{dcu=\"%s\"}", rest[i]);
        at = at ? strstr(at, want) : NULL;
        CHECK(at != NULL);              /* each once, in SID order */
    }
    CHECK_EQ(test_count_in(text, "{dcu=\""), 5);
    place.at = PLACE_DCUS_DONE;         /* a scrape past the last DCU stays done */
    cursor = metrics_place_find(d, &place);
    CHECK_EQ(cursor, first + 9);
    CHECK_EQ(metrics_render(d, &cursor, text, sizeof text), 0);
    metrics_fixture_free(d);
}

/* ------------------------------------------------------------------------
 * Metrics: the request
 * ---------------------------------------------------------------------- */

/* Parses p[0..n) from a buffer of exactly n bytes: ASan sees any over-read. */
static int parse_exact(const char *p, size_t n)
{
    uint8_t *copy = malloc(n ? n : 1);
    int status;

    if (!copy)
        return -1;
    memcpy(copy, p, n);
    status = metrics_parse_request(copy, n);
    free(copy);
    return status;
}

/* Every proper prefix needs more; the whole request gives status. */
static int prefixes_then(const char *req, int status)
{
    size_t i, n = strlen(req);

    for (i = 0; i < n; i++)
        if (parse_exact(req, i) != 0) {
            fprintf(stderr, "  '%s' cut at %zu: not 0\n", req, i);
            return 0;
        }
    return parse_exact(req, n) == status;
}

static void test_metrics_request_prefixes(void)
{
    CHECK(prefixes_then("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200));
    CHECK(prefixes_then("GET /metrics HTTP/1.0\r\n\r\n", 200));
    CHECK(prefixes_then("GET /metrics HTTP/1.1\nHost: x\nAccept: */*\n\n", 200));
    CHECK(prefixes_then("GET /metrics?name[]=x HTTP/1.1\r\n\r\n", 200));
    CHECK(prefixes_then("GET / HTTP/1.1\r\n\r\n", 404));
    CHECK(prefixes_then("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405));
    CHECK(prefixes_then("GET/metrics HTTP/1.1\r\n\r\n", 400));
}

static void test_metrics_request_statuses(void)
{
    static const struct {
        const char *req;
        int status;
    } cases[] = {
        { "GET /metrics HTTP/1.1\r\n\r\n", 200 },
        { "GET /metrics? HTTP/1.1\r\n\r\n", 200 },
        { "GET /metrics HTTP/1.1\n\r\n", 200 },
        { "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n\r\n", 200 },
        { "GET /metrics HTTP/1.1\r\n\r\nbody bytes", 200 },
        { "GET /metricsx HTTP/1.1\r\n\r\n", 404 },
        { "GET /metrics/ HTTP/1.1\r\n\r\n", 404 },
        { "GET /Metrics HTTP/1.1\r\n\r\n", 404 },
        { "GET /favicon.ico HTTP/1.1\r\n\r\n", 404 },
        { "GET http://h/metrics HTTP/1.1\r\n\r\n", 404 },
        { "HEAD /metrics HTTP/1.1\r\n\r\n", 405 },
        { "get /metrics HTTP/1.1\r\n\r\n", 405 },
        { "DELETE / HTTP/1.1\r\n\r\n", 405 },
        { "GETX /metrics HTTP/1.1\r\n\r\n", 405 },
        { "\r\n\r\n", 400 },
        { "\n\n", 400 },
        { "\r\nGET /metrics HTTP/1.1\r\n\r\n", 400 },
        { "GET /metrics\r\n\r\n", 400 },
        { "GET /metrics \r\n\r\n", 400 },
        { "GET  /metrics HTTP/1.1\r\n\r\n", 400 },
        { "GET /metrics  HTTP/1.1\r\n\r\n", 400 },
        { " GET /metrics HTTP/1.1\r\n\r\n", 400 },
        { "GET /metrics HTTP/1.1 \r\n\r\n", 400 },
        { "GET /metrics HTTP/11\r\n\r\n", 400 },
        { "GET /metrics FTP/1.1\r\n\r\n", 400 },
        { "GET /met\x01rics HTTP/1.1\r\n\r\n", 400 },
        { "GET\t/metrics HTTP/1.1\r\n\r\n", 400 },
        { "G(T /metrics HTTP/1.1\r\n\r\n", 400 },
    };
    size_t i;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int got = parse_exact(cases[i].req, strlen(cases[i].req));
        if (got != cases[i].status)
            fprintf(stderr, "  case %zu: %d, expected %d\n", i, got,
                    cases[i].status);
        CHECK_EQ(got, cases[i].status);
    }
    CHECK_EQ(parse_exact("", 0), 0);
    CHECK_EQ(parse_exact("GET /metrics HTTP/1.1\0\r\n\r\n", 26), 400);
}

static void test_metrics_request_oversize(void)
{
    char req[METRICS_REQUEST_MAX + 64];
    size_t head = strlen("GET /metrics HTTP/1.1\r\nX: ");

    memcpy(req, "GET /metrics HTTP/1.1\r\nX: ", head);
    memset(req + head, 'a', sizeof req - head);
    CHECK_EQ(parse_exact(req, METRICS_REQUEST_MAX - 1), 0);
    CHECK_EQ(parse_exact(req, METRICS_REQUEST_MAX), 400);
    CHECK_EQ(parse_exact(req, sizeof req), 400);
    /* the blank line as the very last bytes allowed */
    memcpy(req + METRICS_REQUEST_MAX - 4, "\r\n\r\n", 4);
    CHECK_EQ(parse_exact(req, METRICS_REQUEST_MAX), 200);
    /* ... and one byte too late */
    memset(req + METRICS_REQUEST_MAX - 4, 'a', 4);
    memcpy(req + METRICS_REQUEST_MAX - 3, "\r\n\r\n", 4);
    CHECK_EQ(parse_exact(req, METRICS_REQUEST_MAX + 1), 400);
}

void test_config_suite(void)
{
    test_run("config_design_example", test_design_example);
    test_run("config_defaults", test_defaults);
    test_run("config_every_value_as_written", test_every_value_as_written);
    test_run("config_decimal_durations", test_decimal_durations);
    test_run("config_ipv6_address", test_ipv6_address);
    test_run("config_poll_lists", test_poll_lists);
    test_run("config_keys", test_keys);
    test_run("config_find_dcu", test_find_dcu);
    test_run("config_many_dcus", test_many_dcus);
    test_run("config_long_lines", test_long_lines);
    test_run("config_error_unknown_directive", test_error_unknown_directive);
    test_run("config_error_missing_value", test_error_missing_value);
    test_run("config_error_extra_value", test_error_extra_value);
    test_run("config_error_bad_values", test_error_bad_values);
    test_run("config_error_given_twice", test_error_given_twice);
    test_run("config_error_duplicate_dcu", test_error_duplicate_dcu);
    test_run("config_error_unreadable", test_error_unreadable);
    test_run("config_error_no_dcu", test_error_no_dcu);
    test_run("config_error_message_truncated", test_error_message_truncated);
    test_run("metrics_render_chunks", test_metrics_render_chunks);
    test_run("metrics_names", test_metrics_names);
    test_run("metrics_label_escaping", test_metrics_label_escaping);
    test_run("metrics_no_dcus", test_metrics_no_dcus);
    test_run("metrics_place_across_reload", test_metrics_place_across_reload);
    test_run("metrics_request_prefixes", test_metrics_request_prefixes);
    test_run("metrics_request_statuses", test_metrics_request_statuses);
    test_run("metrics_request_oversize", test_metrics_request_oversize);
}
