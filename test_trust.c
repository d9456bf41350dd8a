/*
 * test_trust.c -- what makes fepd trustworthy when its peers are hostile
 * and its operators careless: no frame is accepted twice across a crash,
 * no IC is used twice under a key (across a lost, emptied, restored or
 * replaced state, and a key that goes and comes back), no input is read
 * without a bound or reaches memory it should not, and what fepd reports
 * (the state file, /metrics) is current.  Each test names the defect it
 * guards against.
 *
 * Owns: one directory per test under test_tmpdir (config, data, state,
 * log), removed at the end; the fepd_t processes it starts, always reaped.
 * Frames are played by the test itself (raw_send / raw_answer in test.c),
 * so that a byte-identical replay can be sent.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fep.h"
#include "test.h"

#define FEPD_T "./fepd_t"
#define KEY_A "000102030405060708090a0b0c0d0e0f"
#define KEY_B "f0e0d0c0b0a090807060504030201000"
#define START_MS 5000
#define STOP_MS 5000
#define QUICK_MS 2000                   /* a refusal comes within this */
#define PATH_T 320
#define MORE (CTL_DIR_DCU)
#define LAST (CTL_DIR_DCU | CTL_LAST)

struct trust {
    char dir[256];
    char conf[PATH_T], data[PATH_T], state[PATH_T], log[PATH_T];
    char snapshot[PATH_T], journal[PATH_T];
    int port, metrics_port;
    pid_t fep;
};

static int trust_init(struct trust *t, const char *tag)
{
    memset(t, 0, sizeof *t);
    t->fep = -1;
    if (test_tmpdir(t->dir, sizeof t->dir, tag) != 0) {
        CHECK(!"no temporary directory");
        return -1;
    }
    snprintf(t->conf, PATH_T, "%s/fep.conf", t->dir);
    snprintf(t->data, PATH_T, "%s/data", t->dir);
    snprintf(t->state, PATH_T, "%s/state", t->dir);
    snprintf(t->log, PATH_T, "%s/fepd.log", t->dir);
    snprintf(t->snapshot, PATH_T, "%s/state/fepd.state", t->dir);
    snprintf(t->journal, PATH_T, "%s/state/fepd.journal", t->dir);
    t->port = test_free_port();
    t->metrics_port = test_free_port();
    return 0;
}

static void trust_end(struct trust *t)
{
    if (t->fep > 0) {
        CHECK(!"fepd still running at the end of the test");
        kill(t->fep, SIGKILL);
        test_wait(t->fep, STOP_MS);
    }
    if (!getenv("FEP_TEST_KEEP"))
        test_remove_tree(t->dir);
}

/* fep_id FEP00001, listen, metrics, short timeouts, then the given lines. */
static void trust_conf(const struct trust *t, const char *lines)
{
    FILE *f = fopen(t->conf, "w");

    CHECK(f != NULL);
    if (!f)
        return;
    fprintf(f, "fep_id FEP00001\ndata_dir %s\nstate_dir %s\n"
            "listen 127.0.0.1:%d\nmetrics 127.0.0.1:%d\ntimeout_frame 2\n"
            "timeout_idle 2\ntimeout_connect 1\n%s", t->data, t->state,
            t->port, t->metrics_port, lines);
    fclose(f);
}

/* Starts fepd_t -c conf (with -v -v when verbose is 1, --fresh-state when
 * it is 2); 0 once it listens. */
static int trust_start(struct trust *t, int verbose)
{
    const char *argv[] = { FEPD_T, "-c", t->conf, NULL, NULL, NULL };
    long started = test_log_count(t->log, "listening for push sessions");

    if (verbose == 1)
        argv[3] = argv[4] = "-v";
    else if (verbose == 2)
        argv[3] = "--fresh-state";
    t->fep = test_spawn(argv, t->log);
    if (t->fep > 0 && test_wait_log(t->log, "listening for push sessions",
                                    started + 1, START_MS) == 0 &&
        test_wait_port(t->port, START_MS) == 0)
        return 0;
    CHECK(!"fepd did not start");
    return -1;
}

/* Stops it with sig; its exit status. */
static int trust_stop(struct trust *t, int sig)
{
    int rc;

    if (t->fep <= 0)
        return -1;
    kill(t->fep, sig);
    rc = test_wait(t->fep, STOP_MS);
    t->fep = -1;
    return rc;
}

/* Runs fepd_t with args to its exit within ms; its exit status (-1 when
 * it had to be killed). */
static int trust_run(const struct trust *t, const char *const *args, int ms)
{
    const char *argv[12];
    int n = 0;

    argv[n++] = FEPD_T;
    while (*args && n < 11)
        argv[n++] = *args++;
    argv[n] = NULL;
    return test_wait(test_spawn(argv, t->log), ms);
}

static void key_init(gcm_key *k, const char *hex)
{
    uint8_t key[KEY_SIZE];

    test_unhex(hex, key, sizeof key);
    gcm_init(k, key);
}

/* One keyed K from DCU00001; fepd's answer, its IC in *ic when given. */
static int push_keyed(int fd, const gcm_key *key, uint8_t ctl, uint16_t qsn,
                      uint16_t fsn, uint32_t ic_sent, uint32_t *ic_answer)
{
    frame hdr;
    int answer;

    if (raw_send(fd, "DCU00001", "FEP00001", ctl, CMD_LP_RSP, qsn, fsn, key,
                 ic_sent) != 0)
        return -1;
    answer = raw_answer(fd, key, &hdr);
    if (answer >= 0 && ic_answer && (hdr.ctl & CTL_SEC))
        *ic_answer = get_u32be(hdr.data);
    return answer;
}

/* A whole keyed push of one LAST packet on a new connection. */
static int push_once(const struct trust *t, const gcm_key *key, uint16_t qsn,
                     uint32_t ic_sent, uint32_t *ic_answer)
{
    int fd = raw_connect(t->port), answer;

    if (fd < 0)
        return -1;
    answer = push_keyed(fd, key, LAST, qsn, 0, ic_sent, ic_answer);
    close(fd);
    return answer;
}

/* ------------------------------------------------------------------------
 * Replay marks are durable before the ACK
 * ---------------------------------------------------------------------- */

/* A non-last packet is ACKed; fepd is killed before the session ends; the
 * same frame, byte for byte, is a replay after the restart. */
static void test_trust_replay_after_kill9(void)
{
    struct trust t;
    gcm_key key;
    int fd;

    if (trust_init(&t, "replay9") != 0)
        return;
    key_init(&key, KEY_A);
    trust_conf(&t, "dcu DCU00001 - key=" KEY_A "\n");
    if (trust_start(&t, 0) == 0) {
        /* Nothing else ends in the pass of this frame (the probe of
         * test_wait_port has closed by then): no other save covers it. */
        test_sleep_ms(300);
        fd = raw_connect(t.port);
        CHECK_EQ(push_keyed(fd, &key, MORE, 7, 0, 1000, NULL), CMD_ACK);
        CHECK_EQ(trust_stop(&t, SIGKILL), 128 + SIGKILL);
        close(fd);
    }
    if (trust_start(&t, 0) == 0) {
        fd = raw_connect(t.port);
        CHECK_EQ(push_keyed(fd, &key, MORE, 7, 0, 1000, NULL),
                 NACK(FEP_ERR_REPLAY));
        close(fd);
        /* A retransmission with the next IC is new, and ACKed. */
        CHECK_EQ(push_once(&t, &key, 8, 1001, NULL), CMD_ACK);
        CHECK_EQ(trust_stop(&t, SIGTERM), 0);
    }
    trust_end(&t);
}

/* ------------------------------------------------------------------------
 * IC state is never rolled back
 * ---------------------------------------------------------------------- */

static void copy_file(const char *from, const char *to)
{
    static char buf[1 << 16];
    long n = test_read_file(from, buf, sizeof buf);

    CHECK(n >= 0);
    if (n >= 0) {
        FILE *f = fopen(to, "w");
        CHECK(f && fwrite(buf, 1, (size_t)n, f) == (size_t)n);
        if (f)
            fclose(f);
    }
}

/* Exit 3 within QUICK_MS, the log naming the problem and --fresh-state. */
static void check_refused(const struct trust *t, const char *needle)
{
    const char *args[] = { "-c", t->conf, NULL };
    long before = test_log_count(t->log, "--fresh-state");

    CHECK_EQ(trust_run(t, args, QUICK_MS), 3);
    CHECK(test_log_count(t->log, needle) > 0);
    CHECK(test_log_count(t->log, "--fresh-state") > before);
}

/* ICs 1, 2, 3 were sent; the state file is emptied, then removed, then
 * the whole state_dir: fepd refuses each time.  --fresh-state starts,
 * setting the old files aside. */
static void test_trust_state_lost(void)
{
    const char *fresh[] = { "-c", NULL, "--once", "--fresh-state", NULL };
    char path[PATH_T + 16];
    struct trust t;
    gcm_key key;
    uint32_t ic = 0, i;

    if (trust_init(&t, "statelost") != 0)
        return;
    key_init(&key, KEY_A);
    trust_conf(&t, "dcu DCU00001 - key=" KEY_A "\n");
    if (trust_start(&t, 0) == 0) {
        for (i = 1; i <= 3; i++) {
            CHECK_EQ(push_once(&t, &key, (uint16_t)i, i, &ic), CMD_ACK);
            CHECK_EQ(ic, i);
        }
        CHECK_EQ(trust_stop(&t, SIGTERM), 0);
    }
    CHECK(truncate(t.snapshot, 0) == 0);
    check_refused(&t, "fepd.state:1: empty");
    CHECK(unlink(t.snapshot) == 0);
    check_refused(&t, "fepd.state: missing");
    CHECK(unlink(t.journal) == 0);      /* the journal went too */
    check_refused(&t, "fepd.state: missing");
    snprintf(path, sizeof path, "%s/fepd.generation", t.data);
    CHECK(unlink(path) == 0);           /* and the witness: rows remain */
    check_refused(&t, "rows in its CSV files");
    fresh[1] = t.conf;
    CHECK_EQ(trust_run(&t, fresh, START_MS), 0);
    CHECK(test_log_count(t.log, "every keyed DCU must have a new key") > 0);
    snprintf(path, sizeof path, "%s/fepd.state", t.state);
    CHECK(access(path, F_OK) == 0);
    trust_end(&t);
}

/* A copy of state_dir taken earlier and put back is refused (the witness
 * in data_dir is ahead of it); so is a snapshot older than its journal. */
/* Two runs of a keyed push each; state_dir as the first left it is then
 * put back over what the second wrote: a restore from a backup. */
static void two_runs_then_restore(struct trust *t, const gcm_key *key)
{
    char backup_state[PATH_T + 16], backup_journal[PATH_T + 16];
    uint16_t run;

    snprintf(backup_state, sizeof backup_state, "%s/backup.state", t->dir);
    snprintf(backup_journal, sizeof backup_journal, "%s/backup.journal",
             t->dir);
    for (run = 1; run <= 2; run++) {
        if (trust_start(t, 0) == 0) {
            CHECK_EQ(push_once(t, key, run, 100u * run, NULL), CMD_ACK);
            CHECK_EQ(trust_stop(t, SIGTERM), 0);
        }
        if (run == 1) {
            copy_file(t->snapshot, backup_state);
            copy_file(t->journal, backup_journal);
        }
    }
    copy_file(backup_state, t->snapshot);
    copy_file(backup_journal, t->journal);
}

static void test_trust_state_restored(void)
{
    char backup_state[PATH_T + 16];
    struct trust t;
    gcm_key key;

    if (trust_init(&t, "restored") != 0)
        return;
    key_init(&key, KEY_A);
    trust_conf(&t, "dcu DCU00001 - key=" KEY_A "\n");
    two_runs_then_restore(&t, &key);
    check_refused(&t, "the state was rolled back");
    trust_end(&t);
    /* The old snapshot beside the newer journal. */
    if (trust_init(&t, "restored2") != 0)
        return;
    trust_conf(&t, "dcu DCU00001 - key=" KEY_A "\n");
    snprintf(backup_state, sizeof backup_state, "%s/backup.state", t.dir);
    if (trust_start(&t, 0) == 0)
        CHECK_EQ(trust_stop(&t, SIGTERM), 0);
    copy_file(t.snapshot, backup_state);
    if (trust_start(&t, 0) == 0) {
        CHECK_EQ(push_once(&t, &key, 3, 3, NULL), CMD_ACK);
        CHECK_EQ(trust_stop(&t, SIGKILL), 128 + SIGKILL);
    }
    copy_file(backup_state, t.snapshot);
    check_refused(&t, "the snapshot is older than its journal");
    trust_end(&t);
}

/* A key that comes back continues its IC, and its replay mark stands. */
static void test_trust_key_returns(void)
{
    static const char *const keys[] = { KEY_A, KEY_B, KEY_A };
    uint32_t ic_first = 0, ic_last = 0;
    struct trust t;
    gcm_key key[2];
    char line[128];
    int run, fd;

    if (trust_init(&t, "keyback") != 0)
        return;
    key_init(&key[0], KEY_A);
    key_init(&key[1], KEY_B);
    for (run = 0; run < 3; run++) {
        const gcm_key *k = &key[run == 1];

        snprintf(line, sizeof line, "dcu DCU00001 - key=%s\n", keys[run]);
        trust_conf(&t, line);
        if (trust_start(&t, 0) != 0)
            break;
        if (run == 2) {
            /* The frame of run 1, byte for byte. */
            fd = raw_connect(t.port);
            CHECK_EQ(push_keyed(fd, k, LAST, 1, 0, 5, NULL),
                     NACK(FEP_ERR_REPLAY));
            close(fd);
        }
        CHECK_EQ(push_once(&t, k, (uint16_t)(run + 1), (uint32_t)(5 + run),
                           run == 0 ? &ic_first : &ic_last), CMD_ACK);
        CHECK_EQ(trust_stop(&t, SIGTERM), 0);
    }
    CHECK_EQ(ic_first, 1);
    CHECK(ic_last > IC_RESERVE_BLOCK);  /* after run 1's reservation */
    trust_end(&t);
}

/* A key with one IC left: fepd protects one more frame with 0xFFFFFFFE,
 * then sends nothing under the key, and says why: the key is used up. */
static void test_trust_ic_used_up(void)
{
    static char text[1024];
    char *tx, *end;
    struct trust t;
    uint32_t ic = 0;
    gcm_key key;
    long n;

    if (trust_init(&t, "icusedup") != 0)
        return;
    key_init(&key, KEY_A);
    trust_conf(&t, "dcu DCU00001 - key=" KEY_A "\n");
    if (trust_start(&t, 0) == 0)
        CHECK_EQ(trust_stop(&t, SIGTERM), 0);
    /* "tx KCV N": N is where the next start's reservation begins. */
    n = test_read_file(t.snapshot, text, sizeof text);
    tx = n > 0 ? strstr(text, "\ntx ") : NULL;
    CHECK(tx != NULL);
    if (!tx || !(tx = strchr(tx + 4, ' ')) || !(end = strchr(tx, '\n'))) {
        trust_end(&t);
        return;
    }
    memmove(tx + 11, end, strlen(end) + 1);
    memcpy(tx, " 4294967294", 11);
    CHECK(test_write_file(t.snapshot, text) == 0);
    if (trust_start(&t, 0) == 0) {
        CHECK_EQ(push_once(&t, &key, 1, 1, &ic), CMD_ACK);
        CHECK_EQ(ic, 0xFFFFFFFEu);
        CHECK(push_once(&t, &key, 2, 2, NULL) < 0);     /* closed, no answer */
        CHECK_EQ(trust_stop(&t, SIGTERM), 0);
    }
    CHECK(test_log_count(t.log, "has been used: the key must be changed") > 0);
    CHECK_EQ(test_log_count(t.log, "error: no invocation counter left to "
                            "protect a frame"), 1);
    CHECK_EQ(test_log_count(t.log, "buffer too small"), 0);
    trust_end(&t);
}

/* ------------------------------------------------------------------------
 * Inputs that are not what they seem
 * ---------------------------------------------------------------------- */

/* A state file or journal that is a device or a FIFO: refused at once. */
static void test_trust_state_not_a_file(void)
{
    const char *const targets[] = { "fepd.state", "fepd.journal" };
    char path[PATH_T + 16];
    struct trust t;
    unsigned i, fifo;

    for (i = 0; i < 2; i++) {
        for (fifo = 0; fifo < 2; fifo++) {
            if (trust_init(&t, "notafile") != 0)
                return;
            trust_conf(&t, "dcu DCU00001 - key=" KEY_A "\n");
            if (trust_start(&t, 0) == 0)
                CHECK_EQ(trust_stop(&t, SIGTERM), 0);
            snprintf(path, sizeof path, "%s/%s", t.state, targets[i]);
            CHECK(unlink(path) == 0);
            CHECK(fifo ? mkfifo(path, 0644) == 0
                       : symlink("/dev/zero", path) == 0);
            check_refused(&t, "not a regular file");
            trust_end(&t);
        }
    }
}

/* The config: /dev/zero, a FIFO and a NUL byte are errors (exit 2), at
 * once; fep_id may not be a DCU's id. */
static void test_trust_config_inputs(void)
{
    const char *zero[] = { "-c", "/dev/zero", "--check", NULL };
    const char *check[] = { "-c", NULL, "--check", NULL };
    char fifo[PATH_T + 16];
    struct trust t;
    FILE *f;

    if (trust_init(&t, "confin") != 0)
        return;
    CHECK_EQ(trust_run(&t, zero, QUICK_MS), 2);
    CHECK(test_log_count(t.log, "/dev/zero: cannot read: not a regular file") > 0);
    snprintf(fifo, sizeof fifo, "%s/fifo.conf", t.dir);
    CHECK(mkfifo(fifo, 0644) == 0);
    check[1] = fifo;
    CHECK_EQ(trust_run(&t, check, QUICK_MS), 2);
    f = fopen(t.conf, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("fep_id FEP00001\n", f);
        fputc('\0', f);
        fputs("dcu DCU00001 -\n", f);
        fclose(f);
    }
    check[1] = t.conf;
    CHECK_EQ(trust_run(&t, check, QUICK_MS), 2);
    CHECK(test_log_count(t.log, "fep.conf:2: a NUL byte") > 0);
    trust_conf(&t, "dcu DCU00001 - key=" KEY_A "\ndcu FEP00001 - key=" KEY_A "\n");
    CHECK_EQ(trust_run(&t, check, QUICK_MS), 2);
    CHECK(test_log_count(t.log, "fep.conf:10: dcu FEP00001: the same id as "
                                "fep_id (line 1)") > 0);
    trust_end(&t);
}

/* With -v -v, a header whose LEN is 0xFFFF is dumped as its 30 bytes, not
 * as 65,565 bytes of whatever follows it in memory. */
static void test_trust_verbose_bad_length(void)
{
    uint8_t hdr[FRAME_HEADER_SIZE] = { FRAME_SOF, FRAME_VERSION, LAST, 'K' };
    struct trust t;
    int fd;

    if (trust_init(&t, "verbose") != 0)
        return;
    trust_conf(&t, "dcu DCU00001 -\n");
    if (trust_start(&t, 1) != 0) {
        trust_end(&t);
        return;
    }
    memcpy(hdr + HDR_SID, "DCU00001", 8);
    memcpy(hdr + HDR_DID, "FEP00001", 8);
    put_u16be(hdr + HDR_LEN, 0xFFFF);
    hdr[HDR_HCS] = hcs_xor(hdr, HDR_HCS);
    fd = raw_connect(t.port);
    CHECK(fd >= 0 && write(fd, hdr, sizeof hdr) == (ssize_t)sizeof hdr);
    CHECK_EQ(raw_answer(fd, NULL, NULL), NACK(FEP_ERR_LENGTH));
    close(fd);
    CHECK_EQ(trust_stop(&t, SIGTERM), 0);
    CHECK(test_log_count(t.log, "debug: received +0: 7E 01") == 1);
    CHECK_EQ(test_log_count(t.log, "debug: received +64"), 0);
    trust_end(&t);
}

/* A poll whose connect fails at once is counted and saved, like any other
 * failed session. */
static void test_trust_connect_fails_at_once(void)
{
    const char *args[] = { "-c", NULL, "--once", NULL };
    char state[1 << 14];
    struct trust t;
    int run;

    if (trust_init(&t, "connectnow") != 0)
        return;
    trust_conf(&t, "dcu DCU00001 255.255.255.255:7001\n");
    args[1] = t.conf;
    for (run = 0; run < 3; run++)
        CHECK_EQ(trust_run(&t, args, START_MS), 1);
    CHECK(test_read_file(t.snapshot, state, sizeof state) > 0);
    CHECK(strstr(state, "\ndcu DCU00001 0 0 2 0\n") != NULL);
    CHECK(test_read_file(t.journal, state, sizeof state) > 0);
    CHECK(strstr(state, "\ndcu DCU00001 0 0 3 0\n") != NULL);
    trust_end(&t);
}

/* A directory fepd creates is made durable in its parent: the fsync of the
 * parent is the first fsync of a start in a new data_dir, and its failure
 * stops the start, naming data_dir itself. */
static void test_trust_mkdir_durable(void)
{
    const char *args[] = { "-c", NULL, "--once", NULL };
    char needle[PATH_T + 32];
    struct trust t;

    if (trust_init(&t, "mkdirsync") != 0)
        return;
    trust_conf(&t, "dcu DCU00001 -\n");
    args[1] = t.conf;
    setenv("FEP_FAULT", "fsync:1:EIO", 1);
    CHECK_EQ(trust_run(&t, args, START_MS), 3);
    unsetenv("FEP_FAULT");
    snprintf(needle, sizeof needle, "%s: %s", t.data, strerror(EIO));
    CHECK(test_log_count(t.log, needle) == 1);
    trust_end(&t);
}

/* ------------------------------------------------------------------------
 * Metrics that are current, at socket speed
 * ---------------------------------------------------------------------- */

static char scrape_buf[4 << 20];

/* GET /metrics; the body's length, -1 when it did not complete within ms. */
static long scrape(int port, int ms)
{
    return test_http_get(port, "/metrics", scrape_buf, sizeof scrape_buf, ms);
}

/* Four clients take every metrics slot and say nothing: a scraper that
 * comes within a second is turned away, one that comes later gets a slot
 * from the quietest of them and its whole answer. */
static void test_trust_metrics_squatted(void)
{
    struct trust t;
    int fds[4], i;

    if (trust_init(&t, "squat") != 0)
        return;
    trust_conf(&t, "dcu D1 -\n");
    if (trust_start(&t, 0) == 0) {
        for (i = 0; i < 4; i++)
            fds[i] = raw_connect(t.metrics_port);
        test_sleep_ms(100);
        CHECK(scrape(t.metrics_port, 2000) <= 0);       /* closed at once */
        test_sleep_ms(1100);
        CHECK(scrape(t.metrics_port, 2000) > 0);
        CHECK(strstr(scrape_buf, "\nfep_dcu_last_success_timestamp_seconds"
                     "{dcu=\"D1\"} 0\n") != NULL);
        CHECK_EQ(test_log_count(t.log, "metrics: a connection without a "
                                "request after"), 1);
        CHECK(raw_closed(fds[0], RAW_MS));      /* the oldest gave way */
        for (i = 0; i < 4; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        CHECK_EQ(trust_stop(&t, SIGTERM), 0);
    }
    trust_end(&t);
}

/* 10,000 DCUs and no traffic: one scrape completes in well under a
 * second, though nothing else wakes the loop. */
static void test_trust_metrics_streams(void)
{
    struct trust t;
    FILE *f;
    unsigned i;
    int64_t t0;
    long n;

    if (trust_init(&t, "scrape") != 0)
        return;
    trust_conf(&t, "");
    f = fopen(t.conf, "a");
    CHECK(f != NULL);
    for (i = 0; f && i < 10000; i++)
        fprintf(f, "dcu D%07u -\n", i);
    if (f)
        fclose(f);
    if (trust_start(&t, 0) == 0) {
        test_sleep_ms(300);             /* the loop settles into its sleep */
        t0 = sys_now_ms();
        n = scrape(t.metrics_port, 5000);
        CHECK(n > 500000);
        CHECK(sys_now_ms() - t0 < 2000);
        CHECK_EQ(test_count_in(scrape_buf, "\nfep_dcu_last_success_timestamp_"
                                      "seconds{dcu="), 10000);
        CHECK_EQ(trust_stop(&t, SIGTERM), 0);
    }
    trust_end(&t);
}

/* A push that ended is counted when its exchange ends: a scrape right
 * after its last ACK, while its connection is still open, shows it. */
static void test_trust_metrics_counts_at_end(void)
{
    struct trust t;
    int fd;

    if (trust_init(&t, "countend") != 0)
        return;
    trust_conf(&t, "dcu DCU00001 -\n");
    if (trust_start(&t, 0) == 0) {
        fd = raw_connect(t.port);
        CHECK(raw_send(fd, "DCU00001", "FEP00001", LAST, CMD_LP_RSP, 1, 0,
                       NULL, 0) == 0);
        CHECK_EQ(raw_answer(fd, NULL, NULL), CMD_ACK);
        CHECK(scrape(t.metrics_port, 2000) > 0);
        CHECK(strstr(scrape_buf, "fep_sessions_total{kind=\"push\","
                                 "result=\"ok\"} 1\n") != NULL);
        close(fd);
        CHECK_EQ(trust_stop(&t, SIGTERM), 0);
    }
    trust_end(&t);
}

/* Two fepds on one state_dir would send under the same IVs and miss each
 * other's marks: the second is refused, start and --check alike, and the
 * first one's state is left as it was. */
static void test_trust_one_fepd_a_state_dir(void)
{
    const char *check[] = { "-c", NULL, "--check", NULL };
    const char *start[] = { "-c", NULL, NULL };
    char conf2[PATH_T + 16], lines[1024];
    struct trust t;
    struct stat before, after;
    gcm_key key;
    FILE *f;

    if (trust_init(&t, "onestate") != 0)
        return;
    key_init(&key, KEY_A);
    trust_conf(&t, "dcu DCU00001 - key=" KEY_A "\n");
    snprintf(conf2, sizeof conf2, "%s/second.conf", t.dir);
    f = fopen(conf2, "w");
    CHECK(f != NULL);
    if (f) {
        snprintf(lines, sizeof lines, "fep_id FEP00001\ndata_dir %s\n"
                 "state_dir %s\nlisten 127.0.0.1:%d\n"
                 "dcu DCU00001 - key=" KEY_A "\n", t.data, t.state,
                 test_free_port());
        fputs(lines, f);
        fclose(f);
    }
    check[1] = start[1] = conf2;
    if (trust_start(&t, 0) == 0) {
        CHECK(stat(t.snapshot, &before) == 0);
        CHECK_EQ(trust_run(&t, check, QUICK_MS), 3);
        CHECK_EQ(trust_run(&t, start, QUICK_MS), 3);
        CHECK(test_log_count(t.log, "fepd.lock: locked by another fepd (pid ") >= 2);
        CHECK(stat(t.snapshot, &after) == 0);
        CHECK(before.st_ino == after.st_ino && before.st_mtime == after.st_mtime);
        CHECK_EQ(push_once(&t, &key, 1, 1, NULL), CMD_ACK);  /* A serves on */
        CHECK_EQ(trust_stop(&t, SIGTERM), 0);
    }
    trust_end(&t);
}

/* A state_dir put back from a backup while the witness is gone too (a
 * data_dir lost or cleaned): refused, with the line that writes the
 * witness back for the operator who knows the state is the newest. */
static void test_trust_witness_missing(void)
{
    char witness[PATH_T + 16];
    struct trust t;
    gcm_key key;

    if (trust_init(&t, "nowitness") != 0)
        return;
    key_init(&key, KEY_A);
    trust_conf(&t, "dcu DCU00001 - key=" KEY_A "\n");
    snprintf(witness, sizeof witness, "%s/fepd.generation", t.data);
    two_runs_then_restore(&t, &key);
    CHECK(unlink(witness) == 0);
    check_refused(&t, "fepd.generation: missing, while ");
    CHECK(test_log_count(t.log, "printf 'fepd-generation ") > 0);
    trust_end(&t);
}

/* --fresh-state on a sound state changes nothing: it is only for a state
 * fepd refuses, so an option left in a unit cannot reuse IVs. */
static void test_trust_fresh_state_on_sound_state(void)
{
    struct trust t;
    gcm_key key;
    uint32_t ic = 0;
    int fd;

    if (trust_init(&t, "freshsound") != 0)
        return;
    key_init(&key, KEY_A);
    trust_conf(&t, "dcu DCU00001 - key=" KEY_A "\n");
    if (trust_start(&t, 0) == 0) {
        CHECK_EQ(push_once(&t, &key, 1, 5, &ic), CMD_ACK);
        CHECK_EQ(ic, 1);
        CHECK_EQ(trust_stop(&t, SIGTERM), 0);
    }
    if (trust_start(&t, 2) == 0) {
        fd = raw_connect(t.port);
        CHECK_EQ(push_keyed(fd, &key, LAST, 1, 0, 5, &ic), NACK(FEP_ERR_REPLAY));
        close(fd);
        CHECK(ic > IC_RESERVE_BLOCK);
        CHECK_EQ(trust_stop(&t, SIGTERM), 0);
        CHECK(test_log_count(t.log, "--fresh-state ignored: the state is "
                                    "sound") == 1);
    }
    trust_end(&t);
}

/* A push's packets are one response: an S in the middle of a K exchange
 * is a response of the wrong kind (PROTOCOL.md 5, rule 4). */
static void test_trust_push_wrong_kind(void)
{
    struct trust t;
    int fd;

    if (trust_init(&t, "pushkind") != 0)
        return;
    trust_conf(&t, "dcu DCU00001 -\n");
    if (trust_start(&t, 0) == 0) {
        fd = raw_connect(t.port);
        CHECK(raw_send(fd, "DCU00001", "FEP00001", MORE, CMD_LP_RSP, 9, 0,
                       NULL, 0) == 0);
        CHECK_EQ(raw_answer(fd, NULL, NULL), CMD_ACK);
        CHECK(raw_send(fd, "DCU00001", "FEP00001", LAST, CMD_DCU_STATUS_RSP,
                       9, 1, NULL, 0) == 0);
        CHECK_EQ(raw_answer(fd, NULL, NULL), NACK(FEP_ERR_COMMAND));
        CHECK(raw_closed(fd, RAW_MS));
        close(fd);
        CHECK_EQ(trust_stop(&t, SIGTERM), 0);
    }
    trust_end(&t);
}

/* --check binds listen and metrics together, as start-up does: the same
 * port for both is refused by both (exit 3). */
static void test_trust_check_ports_together(void)
{
    const char *check[] = { "-c", NULL, "--check", NULL };
    char lines[1024];
    struct trust t;
    FILE *f;

    if (trust_init(&t, "portsboth") != 0)
        return;
    f = fopen(t.conf, "w");
    CHECK(f != NULL);
    if (f) {
        snprintf(lines, sizeof lines, "data_dir %s\nstate_dir %s\n"
                 "listen 127.0.0.1:%d\nmetrics 127.0.0.1:%d\ndcu DCU00001 -\n",
                 t.data, t.state, t.port, t.port);
        fputs(lines, f);
        fclose(f);
    }
    check[1] = t.conf;
    CHECK_EQ(trust_run(&t, check, QUICK_MS), 3);
    CHECK(test_log_count(t.log, "metrics 127.0.0.1:") > 0);
    check[2] = NULL;
    CHECK_EQ(trust_run(&t, check, QUICK_MS), 3);
    trust_end(&t);
}

void test_trust_suite(void)
{
    test_run("trust_replay_after_kill9", test_trust_replay_after_kill9);
    test_run("trust_state_lost", test_trust_state_lost);
    test_run("trust_state_restored", test_trust_state_restored);
    test_run("trust_key_returns", test_trust_key_returns);
    test_run("trust_ic_used_up", test_trust_ic_used_up);
    test_run("trust_state_not_a_file", test_trust_state_not_a_file);
    test_run("trust_config_inputs", test_trust_config_inputs);
    test_run("trust_verbose_bad_length", test_trust_verbose_bad_length);
    test_run("trust_connect_fails_at_once", test_trust_connect_fails_at_once);
    test_run("trust_mkdir_durable", test_trust_mkdir_durable);
    test_run("trust_metrics_streams", test_trust_metrics_streams);
    test_run("trust_metrics_counts_at_end", test_trust_metrics_counts_at_end);
    test_run("trust_metrics_squatted", test_trust_metrics_squatted);
    test_run("trust_one_fepd_a_state_dir", test_trust_one_fepd_a_state_dir);
    test_run("trust_witness_missing", test_trust_witness_missing);
    test_run("trust_fresh_state_on_sound_state",
             test_trust_fresh_state_on_sound_state);
    test_run("trust_push_wrong_kind", test_trust_push_wrong_kind);
    test_run("trust_check_ports_together", test_trust_check_ports_together);
}
