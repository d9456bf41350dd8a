/*
 * test_fep.c -- integration tests of fepd: real fepd_t (once fepd) and
 * dcusim processes talking over 127.0.0.1.
 *
 * A test is judged by what the processes leave behind: fepd's exit status
 * and log (the --once summary, the allocation count and the ledger line it
 * prints at every exit), the CSV files in data_dir, dcusim's --acked-csv
 * (every LP record whose packet fepd acknowledged) and the report line
 * dcusim prints at exit or on SIGUSR1 (what it received: ACKs, NACKs by
 * code), and /metrics over a real socket.  The central check is the one
 * PROTOCOL.md section 5 rule 6 makes: every acknowledged record is stored,
 * once, and nothing that was not acknowledged is.
 *
 * Owns: one directory per test (struct world) holding fepd's config, data,
 * state and both logs, removed when the test ends unless $FEP_TEST_KEEP is
 * set; the processes a test starts, always reaped by fep_stop, sim_stop or
 * world_end (test_wait kills after its deadline).  The harness uses plain
 * POSIX calls, not sys.c: this binary is built with FEP_FAULT, and fault
 * injection meant for fepd_t must not reach the harness.
 */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include "fep.h"
#include "test.h"

#define FEPD_T "./fepd_t"
#define FEPD "./fepd"
#define SIM "./dcusim"
#define KEY_HEX "000102030405060708090a0b0c0d0e0f"
#define ARGS_MAX 40
#define PATH_MAX_TEST 320
#define LINE_MAX_TEST 4096
#define START_MS 5000                   /* a process to come up */
#define STOP_MS 5000                    /* a process to exit after a signal */
#define ONCE_MS 30000                   /* a whole fepd --once run */
#define SETTLE_MS 8000                  /* a condition a test waits for */
#define TIMEOUT_FRAME_MS 500            /* timeout_frame of the default config */
#define MARGIN_MS 1500                  /* scheduling slack on a loaded machine */

/* The timeouts every test's config gets unless it sets its own: short, so
 * that a failure costs half a second, not the defaults' ten. */
static const char *const default_directives[] = {
    "timeout_connect 1", "timeout_frame 0.5", "timeout_write 0.5",
    "timeout_idle 0.5", "timeout_session 10", NULL
};

/* ------------------------------------------------------------------------
 * Logs and key=value lines
 * ---------------------------------------------------------------------- */

/* key of the last line of path that contains needle; -1 when absent. */
static long long log_kv(const char *path, const char *needle, const char *key)
{
    char line[LINE_MAX_TEST];

    return test_log_last_line(path, needle, line, sizeof line) == 0
               ? test_kv_get(line, key) : -1;
}

/* Lines of path that contain both a and b. */
static long log_count2(const char *path, const char *a, const char *b)
{
    FILE *f = fopen(path, "r");
    char line[LINE_MAX_TEST];
    long n = 0;

    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        n += strstr(line, a) && strstr(line, b);
    fclose(f);
    return n;
}

/* ------------------------------------------------------------------------
 * A test's world: its directory, the two processes, the ports
 * ---------------------------------------------------------------------- */

struct world {
    char dir[256];
    char conf[PATH_MAX_TEST], data[PATH_MAX_TEST], state[PATH_MAX_TEST];
    char fep_log[PATH_MAX_TEST], sim_log[PATH_MAX_TEST];
    char acked[PATH_MAX_TEST], lp[PATH_MAX_TEST];
    int sim_port, fep_port, metrics_port;
    char sim_addr[32], fep_addr[32], metrics_addr[32];
    pid_t fep, sim;
};

static void world_path(const struct world *w, const char *name, char *out)
{
    snprintf(out, PATH_MAX_TEST, "%s/%s", w->dir, name);
}

static void world_init(struct world *w, const char *tag)
{
    memset(w, 0, sizeof *w);
    w->fep = w->sim = -1;
    CHECK(test_tmpdir(w->dir, sizeof w->dir, tag) == 0);
    world_path(w, "fep.conf", w->conf);
    world_path(w, "data", w->data);
    world_path(w, "state", w->state);
    world_path(w, "fepd.log", w->fep_log);
    world_path(w, "dcusim.log", w->sim_log);
    world_path(w, "acked.csv", w->acked);
    world_path(w, "data/lp.csv", w->lp);
    w->sim_port = test_free_port();
    w->fep_port = test_free_port();
    w->metrics_port = test_free_port();
    snprintf(w->sim_addr, sizeof w->sim_addr, "127.0.0.1:%d", w->sim_port);
    snprintf(w->fep_addr, sizeof w->fep_addr, "127.0.0.1:%d", w->fep_port);
    snprintf(w->metrics_addr, sizeof w->metrics_addr, "127.0.0.1:%d",
             w->metrics_port);
}

/* Reaps what a failed test left running, then removes the directory. */
static void world_end(struct world *w)
{
    if (w->fep > 0) {
        CHECK(!"fepd still running at the end of the test");
        kill(w->fep, SIGKILL);
        test_wait(w->fep, STOP_MS);
    }
    if (w->sim > 0) {
        kill(w->sim, SIGKILL);
        test_wait(w->sim, STOP_MS);
    }
    w->fep = w->sim = -1;
    if (!getenv("FEP_TEST_KEEP"))
        test_remove_tree(w->dir);
}

/* ------------------------------------------------------------------------
 * dcusim
 * ---------------------------------------------------------------------- */

/* Starts dcusim: answering polls on w->sim_addr, or pushing to w->fep_addr,
 * with --acked-csv and the options in extra (NULL-terminated).  0 once it
 * is up (listening, when it listens). */
static int sim_start(struct world *w, int push, const char *const *extra)
{
    const char *argv[ARGS_MAX + 2];
    long started = test_log_count(w->sim_log, "dcusim info: playing");
    int n = 0;

    argv[n++] = SIM;
    argv[n++] = push ? "--push" : "--listen";
    argv[n++] = push ? w->fep_addr : w->sim_addr;
    argv[n++] = "--timeout";
    argv[n++] = "2";
    argv[n++] = "--acked-csv";
    argv[n++] = w->acked;
    while (extra && *extra && n < ARGS_MAX)
        argv[n++] = *extra++;
    argv[n] = NULL;
    w->sim = test_spawn(argv, w->sim_log);
    CHECK(w->sim > 0);
    if (w->sim <= 0 ||
        test_wait_log(w->sim_log, "dcusim info: playing", started + 1, START_MS) != 0) {
        CHECK(!"dcusim did not start");
        return -1;
    }
    return 0;
}

/* SIGTERM, then dcusim's exit status (it prints its report on the way). */
static int sim_stop(struct world *w)
{
    int rc;

    if (w->sim <= 0)
        return -1;
    kill(w->sim, SIGTERM);
    rc = test_wait(w->sim, STOP_MS);
    w->sim = -1;
    return rc;
}

/* Waits (bounded) for dcusim to exit by itself; its exit status. */
static int sim_wait_exit(struct world *w, int ms)
{
    int rc = test_wait(w->sim, ms);

    w->sim = -1;
    return rc;
}

/* A counter of dcusim's last report line; -1 when there is none. */
static long long sim_report(const struct world *w, const char *key)
{
    return log_kv(w->sim_log, "dcusim: sessions=", key);
}

/* Waits (bounded) until dcusim's report says key >= min, asking for a fresh
 * report with SIGUSR1 as it goes. */
static int sim_wait_report(const struct world *w, const char *key, long long min)
{
    int64_t deadline = sys_now_ms() + SETTLE_MS;

    if (w->sim <= 0)
        return -1;                      /* kill(-1, ...) would signal everyone */
    for (;;) {
        kill(w->sim, SIGUSR1);
        test_sleep_ms(30);
        if (sim_report(w, key) >= min)
            return 0;
        if (sys_now_ms() >= deadline)
            return -1;
    }
}

/* ------------------------------------------------------------------------
 * fepd: config, --once runs, the daemon
 * ---------------------------------------------------------------------- */

/* Whether the lines of directives (may be NULL) set name. */
static int directive_given(const char *directives, const char *name,
                           size_t name_len)
{
    const char *line = directives;

    while (line && *line) {
        if (strncmp(line, name, name_len) == 0 && line[name_len] == ' ')
            return 1;
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return 0;
}

/* Starts the config: data and state in the world, then directives (lines,
 * may be NULL), then the default timeouts it does not set itself. */
static void conf_begin(const struct world *w, const char *directives)
{
    FILE *f = fopen(w->conf, "w");
    unsigned i;

    CHECK(f != NULL);
    if (!f)
        return;
    fprintf(f, "fep_id FEP00001\ndata_dir %s\nstate_dir %s\n%s\n", w->data,
            w->state, directives ? directives : "");
    for (i = 0; default_directives[i]; i++) {
        size_t name_len = strcspn(default_directives[i], " ");
        if (!directive_given(directives, default_directives[i], name_len))
            fprintf(f, "%s\n", default_directives[i]);
    }
    fclose(f);
}

/* Appends dcu lines for DCU first .. first + n - 1, polled at addr (NULL:
 * push only), keyed as dcusim keys them (KEY_HEX, last 4 bytes XOR the
 * DCU's number) or plaintext. */
static void conf_dcus(const struct world *w, unsigned first, unsigned n,
                      const char *addr, int keyed, const char *poll)
{
    FILE *f = fopen(w->conf, "a");
    unsigned i, k;

    CHECK(f != NULL);
    if (!f)
        return;
    for (i = first; i < first + n; i++) {
        uint8_t key[KEY_SIZE];
        char hex[2 * KEY_SIZE + 1] = "-";

        test_unhex(KEY_HEX, key, sizeof key);
        key[12] ^= (uint8_t)(i >> 24);
        key[13] ^= (uint8_t)(i >> 16);
        key[14] ^= (uint8_t)(i >> 8);
        key[15] ^= (uint8_t)i;
        for (k = 0; keyed && k < KEY_SIZE; k++)
            snprintf(hex + 2 * k, 3, "%02x", key[k]);
        fprintf(f, "dcu DCU%05u %s key=%s poll=%s\n", i, addr ? addr : "-",
                hex, poll);
    }
    fclose(f);
}

static pid_t fep_spawn(struct world *w, const char *prog, const char *mode,
                       const char *fault)
{
    const char *argv[] = { prog, "-c", w->conf, mode, NULL };
    pid_t pid;

    /* Only the child is meant to see it: the variable is unset at once. */
    if (fault)
        setenv("FEP_FAULT", fault, 1);
    pid = test_spawn(argv, w->fep_log);
    if (fault)
        unsetenv("FEP_FAULT");
    CHECK(pid > 0);
    return pid;
}

/* fepd -c conf --once; its exit status. */
static int fep_once(struct world *w, const char *prog)
{
    pid_t pid = fep_spawn(w, prog, "--once", NULL);

    return pid > 0 ? test_wait(pid, ONCE_MS) : -1;
}

/* fepd_t -c conf as a daemon, with FEP_FAULT (may be NULL); 0 once it has
 * finished start-up (its "static memory" line). */
static int fep_start(struct world *w, const char *fault)
{
    long started = test_log_count(w->fep_log, "static memory");

    w->fep = fep_spawn(w, FEPD_T, NULL, fault);
    if (w->fep <= 0 ||
        test_wait_log(w->fep_log, "static memory", started + 1, START_MS) != 0) {
        CHECK(!"fepd did not start");
        return -1;
    }
    return 0;
}

/* Signals the daemon and returns its exit status (bounded). */
static int fep_stop(struct world *w, int sig)
{
    int rc;

    if (w->fep <= 0)
        return -1;
    kill(w->fep, sig);
    rc = test_wait(w->fep, STOP_MS);
    w->fep = -1;
    return rc;
}

/* The ledger line every fepd prints at exit: every slot and descriptor
 * given back. */
static void check_ledger(const struct world *w)
{
    char line[LINE_MAX_TEST];

    CHECK(test_log_last_line(w->fep_log, "ledger: slots", line, sizeof line) == 0);
    CHECK(test_kv_get(line, "acquired") >= 0);
    CHECK_EQ(test_kv_get(line, "acquired"), test_kv_get(line, "released"));
    CHECK(test_kv_get(line, "opened") >= 0);
    CHECK_EQ(test_kv_get(line, "opened"), test_kv_get(line, "closed"));
}

/* What fepd_t prints at every normal exit: no allocation after start-up,
 * and the ledger balanced. */
static void check_clean_exit(const struct world *w)
{
    char line[LINE_MAX_TEST];
    const char *n;

    CHECK(test_log_last_line(w->fep_log, "allocations after start-up: ", line,
                        sizeof line) == 0);
    n = strstr(line, "allocations after start-up: ");
    CHECK(n && strtol(n + strlen("allocations after start-up: "), NULL, 10) == 0);
    check_ledger(w);
}

/* The --once summary's line for a DCU that failed with err. */
static long once_failures(const struct world *w, unsigned dcu, fep_err err)
{
    char needle[160];

    snprintf(needle, sizeof needle, "--once: DCU%05u failed: %s", dcu,
             fep_strerror(err));
    return test_log_count(w->fep_log, needle);
}

static long once_any_failure(const struct world *w, unsigned dcu)
{
    char needle[64];

    snprintf(needle, sizeof needle, "--once: DCU%05u failed: ", dcu);
    return test_log_count(w->fep_log, needle);
}

/* ------------------------------------------------------------------------
 * Records: lp.csv and dcusim's acked CSV as sorted sets
 * ---------------------------------------------------------------------- */

/* Loads stored (lp.csv rows, 9 fields) and acked (dcusim's CSV), sorted. */
static void recs_load_run(const struct world *w, struct test_recs *stored,
                          struct test_recs *acked)
{
    memset(stored, 0, sizeof *stored);
    memset(acked, 0, sizeof *acked);
    CHECK(test_recs_load(stored, w->lp, 9) == 0);
    CHECK(test_recs_load(acked, w->acked, 6) == 0);
    test_recs_sort(stored);
    test_recs_sort(acked);
}

/* Rule 6, exactly: every acked record stored once with its values, no torn
 * line, and nothing stored that was not acknowledged. */
static void check_stored_exactly(const struct test_recs *stored,
                                 const struct test_recs *acked)
{
    CHECK_EQ(stored->bad, 0);
    CHECK_EQ(stored->misplaced_headers, 0);
    CHECK_EQ(test_recs_dups(stored), 0);
    CHECK_EQ(test_recs_missing(stored, acked), 0);
    CHECK_EQ(test_recs_missing(acked, stored), 0);
    CHECK_EQ(stored->n, acked->n);
}

/* check_stored_exactly over the run's lp.csv and acked CSV; returns how
 * many records were acknowledged. */
static size_t check_run_stored(const struct world *w)
{
    struct test_recs stored, acked;
    size_t n;

    recs_load_run(w, &stored, &acked);
    check_stored_exactly(&stored, &acked);
    CHECK_EQ(stored.headers, 1);
    n = acked.n;
    test_recs_free(&stored);
    test_recs_free(&acked);
    return n;
}

/* Data lines of a CSV file: lines that are not its header. */
static long csv_rows(const char *path)
{
    long lines = test_log_count(path, "\n"), headers = test_log_count(path, "dcu_id,");

    return lines - headers;
}

/* The leading fields of a row: a DCU id and a meter id fit easily. */
typedef char csv_key[40];

static int csv_key_cmp(const void *a, const void *b)
{
    return strcmp(*(const csv_key *)a, *(const csv_key *)b);
}

/* Rows of a CSV file and how many distinct values its first key_fields
 * fields take (header not counted). */
static void csv_keys(const char *path, unsigned key_fields, long *rows,
                     long *distinct)
{
    FILE *f = fopen(path, "r");
    char line[LINE_MAX_TEST];
    csv_key *keys = NULL;
    long n = 0, cap = 0, i;

    *rows = *distinct = 0;
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        char *p = line;
        size_t len;
        unsigned k;

        if (strncmp(line, "dcu_id,", 7) == 0)
            continue;
        for (k = 0; k < key_fields && p; k++)
            p = strchr(p + (k > 0), ',');
        if (p)
            *p = '\0';
        if (n == cap) {
            long more_cap = cap ? 2 * cap : 256;
            csv_key *more = realloc(keys, (size_t)more_cap * sizeof *keys);
            if (!more)
                break;
            keys = more;
            cap = more_cap;
        }
        len = strlen(line) < sizeof *keys ? strlen(line) : sizeof *keys - 1;
        memcpy(keys[n], line, len);
        keys[n++][len] = '\0';
    }
    fclose(f);
    if (keys)
        qsort(keys, (size_t)n, sizeof *keys, csv_key_cmp);
    for (i = 0; keys && i < n; i++)
        *distinct += i == 0 || strcmp(keys[i - 1], keys[i]) != 0;
    *rows = n;
    free(keys);
}

/* data/name holds `rows` rows, no two with the same key. */
static void check_csv_keys(const struct world *w, const char *name,
                           unsigned key_fields, long rows)
{
    char path[PATH_MAX_TEST + 32];
    long got_rows, distinct;

    snprintf(path, sizeof path, "%s/%s", w->data, name);
    csv_keys(path, key_fields, &got_rows, &distinct);
    CHECK_EQ(got_rows, rows);
    CHECK_EQ(distinct, rows);
}

/* ------------------------------------------------------------------------
 * Sockets: /metrics over HTTP
 * ---------------------------------------------------------------------- */

/* GET path from 127.0.0.1:port; the whole response (NUL-terminated) in buf
 * and the status code, or -1. */
static int http_get(int port, const char *path, char *buf, size_t cap)
{
    return test_http_get(port, path, buf, cap, RAW_MS) >= 0
               ? test_http_status(buf) : -1;
}

/* The value of the sample `name` (labels included) in an exposition; -1. */
static long long metric_get(const char *text, const char *name)
{
    size_t len = strlen(name);
    const char *p = text;

    while ((p = strstr(p, name)) != NULL) {
        if ((p == text || p[-1] == '\n') && p[len] == ' ')
            return strtoll(p + len + 1, NULL, 10);
        p += len;
    }
    return -1;
}

/* Waits (bounded) until /metrics says name >= min; the last exposition in
 * buf. */
static int metrics_wait(const struct world *w, const char *name, long long min,
                        char *buf, size_t cap)
{
    int64_t deadline = sys_now_ms() + SETTLE_MS;

    for (;;) {
        if (http_get(w->metrics_port, "/metrics", buf, cap) == 200 &&
            metric_get(buf, name) >= min)
            return 0;
        if (sys_now_ms() >= deadline)
            return -1;
        test_sleep_ms(20);
    }
}

/* ========================================================================
 * 1. Poll cycles
 * ====================================================================== */

#define POLL_DCUS 100
#define POLL_RECORDS 96
#define POLL_METERS 2

/* 100 DCUs x 96 records, poll=k,s,m,n, one --once run; the keyed run
 * also holds fepd to 10 sessions at a time, so that most polls wait. */
static void poll_cycle(int keyed)
{
    const char *args[] = { "--dcus", "100", "--records", "96", "--meters", "2",
                           "--key", KEY_HEX, NULL };
    struct world w;

    if (!keyed)
        args[6] = NULL;
    world_init(&w, keyed ? "pollkey" : "poll");
    if (sim_start(&w, 0, args) == 0) {
        conf_begin(&w, keyed ? "max_sessions 10\n" : NULL);
        conf_dcus(&w, 1, POLL_DCUS, w.sim_addr, keyed, "k,s,m,n");
        CHECK_EQ(fep_once(&w, FEPD_T), 0);
        CHECK_EQ(sim_stop(&w), 0);
        check_clean_exit(&w);
        CHECK_EQ(test_log_count(w.fep_log, "failed: "), 0);
        /* One connection per DCU per cycle (PROTOCOL.md section 1). */
        CHECK_EQ(sim_report(&w, "sessions"), POLL_DCUS);
        CHECK_EQ(sim_report(&w, "polls"), 4 * POLL_DCUS);
        CHECK_EQ(sim_report(&w, "nacks_received"), 0);
        CHECK_EQ(sim_report(&w, "records_acked"), POLL_DCUS * POLL_RECORDS);
        CHECK_EQ(check_run_stored(&w), POLL_DCUS * POLL_RECORDS);
        /* S: one row per DCU; M and N: one per meter. */
        check_csv_keys(&w, "dcu_status.csv", 1, POLL_DCUS);
        check_csv_keys(&w, "meter_status.csv", 2, POLL_DCUS * POLL_METERS);
        check_csv_keys(&w, "meter_change.csv", 2, POLL_DCUS * POLL_METERS);
    }
    world_end(&w);
}

static void test_fep_poll_plaintext(void)
{
    poll_cycle(0);
}

static void test_fep_poll_keyed(void)
{
    poll_cycle(1);
}

/* A DCU where nothing listens: its cycle fails, the others' do not. */
static void test_fep_poll_unreachable(void)
{
    const char *args[] = { "--dcus", "2", "--records", "96", NULL };
    char nobody[32];
    struct world w;

    world_init(&w, "unreachable");
    snprintf(nobody, sizeof nobody, "127.0.0.1:%d", w.fep_port);
    if (sim_start(&w, 0, args) == 0) {
        conf_begin(&w, NULL);
        conf_dcus(&w, 1, 2, w.sim_addr, 0, "k");
        conf_dcus(&w, 3, 1, nobody, 0, "k");
        CHECK_EQ(fep_once(&w, FEPD_T), 1);
        CHECK_EQ(sim_stop(&w), 0);
        check_clean_exit(&w);
        CHECK_EQ(once_failures(&w, 3, FEP_ERR_CONNECT), 1);
        CHECK_EQ(test_log_count(w.fep_log, "--once: 3 DCUs polled, 2 ok, 1 failed"), 1);
        CHECK_EQ(check_run_stored(&w), 2 * 96);
    }
    world_end(&w);
}

/* The production binary, without the test hooks, does the same. */
static void test_fep_smoke_fepd(void)
{
    const char *args[] = { "--dcus", "3", "--records", "96", NULL };
    struct world w;

    world_init(&w, "smoke");
    if (sim_start(&w, 0, args) == 0) {
        conf_begin(&w, NULL);
        conf_dcus(&w, 1, 3, w.sim_addr, 0, "k");
        CHECK_EQ(fep_once(&w, FEPD), 0);
        CHECK_EQ(sim_stop(&w), 0);
        CHECK_EQ(test_log_count(w.fep_log, "--once: 3 DCUs polled, 3 ok, 0 failed"), 1);
        check_ledger(&w);
        CHECK_EQ(check_run_stored(&w), 3 * 96);
    }
    world_end(&w);
}

/* ========================================================================
 * 2. Push
 * ====================================================================== */

/* 100 DCUs push all four kinds at once, one session per kind. */
static void test_fep_push_concurrent(void)
{
    const char *args[] = { "--dcus", "100", "--records", "96", "--meters", "2",
                           "--push-cmds", "KSMN", "--key", KEY_HEX, NULL };
    char directives[128];
    struct world w;

    world_init(&w, "push");
    snprintf(directives, sizeof directives, "listen %s\n", w.fep_addr);
    conf_begin(&w, directives);
    conf_dcus(&w, 1, 100, NULL, 1, "k");
    if (fep_start(&w, NULL) == 0 && sim_start(&w, 1, args) == 0) {
        CHECK_EQ(sim_wait_exit(&w, ONCE_MS), 0);
        CHECK_EQ(fep_stop(&w, SIGTERM), 0);
        check_clean_exit(&w);
        CHECK_EQ(sim_report(&w, "pushes"), 4 * 100);
        CHECK_EQ(sim_report(&w, "nacks_received"), 0);
        CHECK_EQ(log_count2(w.fep_log, "session push DCU", " ok "), 4 * 100);
        CHECK_EQ(check_run_stored(&w), 100 * 96);
        check_csv_keys(&w, "dcu_status.csv", 1, 100);
        check_csv_keys(&w, "meter_status.csv", 2, 100 * 2);
        check_csv_keys(&w, "meter_change.csv", 2, 100 * 2);
    }
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* ========================================================================
 * 3. dcusim's fault modes, one at a time, on DCU00001 of three
 * ====================================================================== */

#define FAULT_DCUS 3
#define FAULT_RECORDS 96

struct fault_case {
    const char *tag;
    const char *fault;                  /* --fault SPEC; @1 is added */
    int push;                           /* 1: the DCUs push; 0: fepd --once polls */
    int keyed;
    unsigned records;                   /* per DCU; 0: FAULT_RECORDS */
    const char *per_packet;             /* dcusim --per-packet, or NULL */
    const char *directives;             /* fepd config lines, or NULL */
    int rc;                             /* poll: fepd --once exit status */
    fep_err nack;                       /* the NACK dcusim receives, or FEP_OK */
    long nacks;                         /* how many of them */
    fep_err failure;                    /* how DCU00001's session ends; FEP_OK: well */
    long rows;                          /* DCU00001's rows in lp.csv */
    int partial;                        /* instead: some rows, not all */
};

/* Polls DCU00001..3 with fepd_t --once, or lets them push to a fepd_t
 * daemon until dcusim is done. */
static void fault_exchange(struct world *w, const struct fault_case *c,
                           const char *const *args)
{
    char directives[256];

    if (!c->push) {
        if (sim_start(w, 0, args) != 0)
            return;
        conf_begin(w, c->directives);
        conf_dcus(w, 1, FAULT_DCUS, w->sim_addr, c->keyed, "k");
        CHECK_EQ(fep_once(w, FEPD_T), c->rc);
        CHECK_EQ(sim_stop(w), 0);
        return;
    }
    snprintf(directives, sizeof directives, "listen %s\n%s", w->fep_addr,
             c->directives ? c->directives : "");
    conf_begin(w, directives);
    conf_dcus(w, 1, FAULT_DCUS, NULL, c->keyed, "k");
    if (fep_start(w, NULL) == 0 && sim_start(w, 1, args) == 0) {
        CHECK_EQ(sim_wait_exit(w, ONCE_MS), 0);
        CHECK_EQ(fep_stop(w, SIGTERM), 0);
    }
    fep_stop(w, SIGKILL);
}

/*
 * Runs three DCUs against fepd_t with c->fault on DCU00001 and checks what
 * every fault test shares: exactly the NACKs expected and no other; one
 * session ending with c->failure (and with --once, the exit status and the
 * summary naming DCU00001, and only it); the other DCUs' records all
 * stored; stored == acknowledged, exactly; a clean exit.  Returns how long
 * the failed session lasted (-1: none did); dcusim's log stays in w for
 * more checks.
 */
static int64_t fault_run(struct world *w, const struct fault_case *c)
{
    char fault[64], records[16], text[160];
    const char *args[] = { "--dcus", "3", "--records", records, "--fault",
                           fault, NULL, NULL, NULL, NULL, NULL };
    unsigned n = c->records ? c->records : FAULT_RECORDS, i, k = 6;
    const char *kind = c->push ? "session push " : "session poll ";
    struct test_recs stored, acked;

    snprintf(fault, sizeof fault, "%s@1", c->fault);
    snprintf(records, sizeof records, "%u", n);
    if (c->keyed) {
        args[k++] = "--key";
        args[k++] = KEY_HEX;
    }
    if (c->per_packet) {
        args[k++] = "--per-packet";
        args[k++] = c->per_packet;
    }
    world_init(w, c->tag);
    fault_exchange(w, c, args);
    check_clean_exit(w);
    if (c->nack != FEP_OK) {
        snprintf(text, sizeof text, "nack_%s", fep_nack_name(c->nack));
        CHECK_EQ(sim_report(w, text), c->nacks);
    }
    CHECK_EQ(sim_report(w, "nacks_received"), c->nacks);
    snprintf(text, sizeof text, " error: %s", fep_strerror(c->failure));
    CHECK_EQ(log_count2(w->fep_log, kind, " error: "), c->failure != FEP_OK);
    CHECK_EQ(log_count2(w->fep_log, kind, text), c->failure != FEP_OK);
    if (!c->push)
        CHECK_EQ(c->failure == FEP_OK ? once_any_failure(w, 1)
                                      : once_failures(w, 1, c->failure),
                 c->failure != FEP_OK);
    recs_load_run(w, &stored, &acked);
    check_stored_exactly(&stored, &acked);
    if (c->partial)
        CHECK(test_recs_of_dcu(&stored, 1) > 0 && test_recs_of_dcu(&stored, 1) < n);
    else
        CHECK_EQ(test_recs_of_dcu(&stored, 1), c->rows);
    for (i = 2; i <= FAULT_DCUS; i++) {
        CHECK_EQ(once_any_failure(w, i), 0);
        CHECK_EQ(test_recs_of_dcu(&stored, i), n);
    }
    test_recs_free(&stored);
    test_recs_free(&acked);
    return log_kv(w->fep_log, text, "duration_ms");
}

/* A frame written one byte at a time is taken whole, within timeout_frame. */
static void test_fep_fault_dribble(void)
{
    static const struct fault_case c = {
        .tag = "dribble", .fault = "dribble:1", .records = 20,
        .directives = "timeout_frame 5\n", .rows = 20
    };
    struct world w;

    fault_run(&w, &c);
    world_end(&w);
}

/* Garbage before the first frame is skipped and counted; SIGUSR1's stats
 * line says how much. */
static void test_fep_fault_garbage(void)
{
    const char *args[] = { "--dcus", "3", "--records", "96", "--fault",
                           "garbage:100@1", NULL };
    struct world w;

    world_init(&w, "garbage");
    conf_begin(&w, NULL);
    if (sim_start(&w, 0, args) == 0) {
        conf_dcus(&w, 1, FAULT_DCUS, w.sim_addr, 0, "k");
        if (fep_start(&w, NULL) == 0) {
            CHECK(test_wait_log(w.fep_log, "session poll", FAULT_DCUS, SETTLE_MS) == 0);
            kill(w.fep, SIGUSR1);
            CHECK(test_wait_log(w.fep_log, "stats: ", 1, SETTLE_MS) == 0);
            CHECK_EQ(log_kv(w.fep_log, "stats: ", "garbage_bytes"), 100);
            CHECK_EQ(log_kv(w.fep_log, "stats: ", "poll_ok"), FAULT_DCUS);
            CHECK_EQ(log_kv(w.fep_log, "stats: ", "records_stored"),
                     FAULT_DCUS * 96);
            CHECK_EQ(fep_stop(&w, SIGTERM), 0);
            check_clean_exit(&w);
        }
        CHECK_EQ(sim_stop(&w), 0);
        CHECK_EQ(sim_report(&w, "nacks_received"), 0);
        CHECK_EQ(check_run_stored(&w), FAULT_DCUS * 96);
    }
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* More than GARBAGE_MAX bytes: the connection is closed, no NACK. */
static void test_fep_fault_garbage_flood(void)
{
    static const struct fault_case c = {
        .tag = "garbage-flood", .fault = "garbage:3000", .rc = 1,
        .failure = FEP_ERR_GARBAGE
    };
    struct world w;

    fault_run(&w, &c);
    world_end(&w);
}

/* One bad CRC: NACK CRC, the session goes on, the retransmission is stored. */
static void test_fep_fault_crc(void)
{
    static const struct fault_case c = {
        .tag = "crc", .fault = "crc", .nack = FEP_ERR_CRC, .nacks = 1,
        .rows = FAULT_RECORDS
    };
    struct world w;

    fault_run(&w, &c);
    CHECK_EQ(sim_report(&w, "retransmits"), 1);
    CHECK_EQ(sim_report(&w, "sessions"), FAULT_DCUS);
    world_end(&w);
}

/* The third consecutive bad CRC: NACK CRC, then closed. */
static void test_fep_fault_crc_always(void)
{
    static const struct fault_case c = {
        .tag = "crc-always", .fault = "crc-always", .rc = 1,
        .nack = FEP_ERR_CRC, .nacks = 3, .failure = FEP_ERR_CRC
    };
    struct world w;

    fault_run(&w, &c);
    world_end(&w);
}

static void test_fep_fault_badtag(void)
{
    static const struct fault_case c = {
        .tag = "badtag", .fault = "badtag", .keyed = 1, .rc = 1,
        .nack = FEP_ERR_SECURITY, .nacks = 1, .failure = FEP_ERR_SECURITY
    };
    struct world w;

    fault_run(&w, &c);
    world_end(&w);
}

/* Packet 1 reuses an IC: NACK REPLAY; packet 0 (76 records) stays stored. */
static void test_fep_fault_replay(void)
{
    static const struct fault_case c = {
        .tag = "replay", .fault = "replay", .keyed = 1, .rc = 1,
        .nack = FEP_ERR_REPLAY, .nacks = 1, .failure = FEP_ERR_REPLAY,
        .rows = LP_RECORDS_MAX_SEC
    };
    struct world w;

    fault_run(&w, &c);
    world_end(&w);
}

static void test_fep_fault_skip_fsn(void)
{
    static const struct fault_case c = {
        .tag = "skip-fsn", .fault = "skip-fsn", .rc = 1,
        .nack = FEP_ERR_SEQUENCE, .nacks = 1, .failure = FEP_ERR_SEQUENCE
    };
    struct world w;

    fault_run(&w, &c);
    world_end(&w);
}

/* The packet just acknowledged, sent again: ACKed again, stored once. */
static void test_fep_fault_dup_fsn(void)
{
    static const struct fault_case c = {
        .tag = "dup-fsn", .fault = "dup-fsn", .rows = FAULT_RECORDS
    };
    struct world w;

    fault_run(&w, &c);
    /* Two packets per DCU, and one ACK more for the duplicate. */
    CHECK_EQ(sim_report(&w, "acks_received"), 2 * FAULT_DCUS + 1);
    world_end(&w);
}

static void test_fep_fault_oversize(void)
{
    static const struct fault_case c = {
        .tag = "oversize", .fault = "oversize", .rc = 1,
        .nack = FEP_ERR_LENGTH, .nacks = 1, .failure = FEP_ERR_LENGTH
    };
    struct world w;

    fault_run(&w, &c);
    world_end(&w);
}

/* A DCU that never answers is given timeout_frame, not more. */
static void test_fep_fault_silent(void)
{
    static const struct fault_case c = {
        .tag = "silent", .fault = "silent", .rc = 1, .failure = FEP_ERR_TIMEOUT
    };
    struct world w;
    long long elapsed = fault_run(&w, &c);

    CHECK(elapsed >= TIMEOUT_FRAME_MS);
    CHECK(elapsed < TIMEOUT_FRAME_MS + MARGIN_MS);
    world_end(&w);
}

/* The DCU refuses the request: no reply to store, the cycle fails, and
 * fepd does not answer a NACK with a NACK. */
static void test_fep_fault_nack(void)
{
    static const struct fault_case c = {
        .tag = "nack", .fault = "nack", .rc = 1, .failure = FEP_ERR_NACKED
    };
    struct world w;

    fault_run(&w, &c);
    world_end(&w);
}

/* A keyed DCU's unprotected frame. */
static void test_fep_fault_plaintext(void)
{
    static const struct fault_case c = {
        .tag = "plaintext", .fault = "plaintext", .keyed = 1, .rc = 1,
        .nack = FEP_ERR_SECURITY, .nacks = 1, .failure = FEP_ERR_SECURITY
    };
    struct world w;

    fault_run(&w, &c);
    world_end(&w);
}

static void test_fep_fault_noread(void)
{
    static const struct fault_case c = {
        .tag = "noread", .fault = "noread", .rc = 1, .failure = FEP_ERR_TIMEOUT
    };
    struct world w;
    long long elapsed = fault_run(&w, &c);

    CHECK(elapsed < TIMEOUT_FRAME_MS + MARGIN_MS);
    world_end(&w);
}

/* Closed in the middle of packet 0: nothing of it is stored. */
static void test_fep_fault_cut(void)
{
    static const struct fault_case c = {
        .tag = "cut", .fault = "cut", .rc = 1, .failure = FEP_ERR_CLOSED
    };
    struct world w;

    fault_run(&w, &c);
    world_end(&w);
}

/* One byte a second: timeout_frame is not restarted by each byte. */
static void test_fep_fault_slowloris(void)
{
    static const struct fault_case c = {
        .tag = "slowloris", .fault = "slowloris", .rc = 1,
        .failure = FEP_ERR_TIMEOUT
    };
    struct world w;
    long long elapsed = fault_run(&w, &c);

    CHECK(elapsed < TIMEOUT_FRAME_MS + MARGIN_MS);
    world_end(&w);
}

/* Frames that each come in time, but a session that goes on too long:
 * cut at timeout_session, keeping what was acknowledged before. */
static void test_fep_session_timeout(void)
{
    static const struct fault_case c = {
        .tag = "session-timeout", .fault = "dribble:2", .records = 300,
        .per_packet = "5", .directives = "timeout_session 1.5\ntimeout_frame 2\n",
        .rc = 1, .failure = FEP_ERR_TIMEOUT, .partial = 1
    };
    struct world w;
    long long elapsed = fault_run(&w, &c);

    CHECK(elapsed >= 1500);
    CHECK(elapsed < 1500 + MARGIN_MS);
    CHECK_EQ(test_log_count(w.fep_log, "session's time is up after "), 1);
    world_end(&w);
}

/* CPU time of the children reaped so far. */
static int64_t children_cpu_ms(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_CHILDREN, &ru) != 0)
        return 0;
    return (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000 +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;
}

/* max_sessions 1, and the first DCU holds the only session until
 * timeout_frame: the others are polled once it ends, and fepd waits for
 * that in select(), not in a loop around it. */
static void test_fep_poll_limit(void)
{
    static const struct fault_case c = {
        .tag = "limit", .fault = "silent", .rc = 1, .failure = FEP_ERR_TIMEOUT,
        .directives = "max_sessions 1\ntimeout_frame 1\n"
    };
    struct world w;
    int64_t cpu = children_cpu_ms(), wall = sys_now_ms();

    CHECK(fault_run(&w, &c) >= 1000);
    cpu = children_cpu_ms() - cpu;
    wall = sys_now_ms() - wall;
    /* Under valgrind (test_spawn), its own start-up takes most of the CPU. */
    if (!getenv("FEP_TEST_VALGRIND"))
        CHECK(cpu * 4 < wall);
    world_end(&w);
}

/* Faults on the first frame of a push session, before fepd knows which DCU
 * it talks to: the NACK still goes to the DCU the frame names, under its
 * key (PROTOCOL.md section 4), or the DCU cannot take it. */
static void test_fep_push_fault_crc(void)
{
    static const struct fault_case c = {
        .tag = "push-crc", .fault = "crc", .push = 1, .keyed = 1,
        .nack = FEP_ERR_CRC, .nacks = 1, .rows = FAULT_RECORDS
    };
    struct world w;

    fault_run(&w, &c);
    CHECK_EQ(sim_report(&w, "bad_frames"), 0);
    world_end(&w);
}

static void test_fep_push_fault_crc_always(void)
{
    static const struct fault_case c = {
        .tag = "push-crc-always", .fault = "crc-always", .push = 1, .keyed = 1,
        .nack = FEP_ERR_CRC, .nacks = 3, .failure = FEP_ERR_CRC
    };
    struct world w;

    fault_run(&w, &c);
    CHECK_EQ(sim_report(&w, "bad_frames"), 0);
    world_end(&w);
}

static void test_fep_push_fault_oversize(void)
{
    static const struct fault_case c = {
        .tag = "push-oversize", .fault = "oversize", .push = 1, .keyed = 1,
        .nack = FEP_ERR_LENGTH, .nacks = 1, .failure = FEP_ERR_LENGTH
    };
    struct world w;

    fault_run(&w, &c);
    CHECK_EQ(sim_report(&w, "bad_frames"), 0);
    world_end(&w);
}

/* A push's first packet must be FSN 0. */
static void test_fep_push_fault_skip_fsn(void)
{
    static const struct fault_case c = {
        .tag = "push-skip-fsn", .fault = "skip-fsn", .push = 1, .keyed = 1,
        .nack = FEP_ERR_SEQUENCE, .nacks = 1, .failure = FEP_ERR_SEQUENCE
    };
    struct world w;

    fault_run(&w, &c);
    world_end(&w);
}

static void test_fep_push_fault_badtag(void)
{
    static const struct fault_case c = {
        .tag = "push-badtag", .fault = "badtag", .push = 1, .keyed = 1,
        .nack = FEP_ERR_SECURITY, .nacks = 1, .failure = FEP_ERR_SECURITY
    };
    struct world w;

    fault_run(&w, &c);
    world_end(&w);
}

static void test_fep_push_fault_dup_fsn(void)
{
    static const struct fault_case c = {
        .tag = "push-dup-fsn", .fault = "dup-fsn", .push = 1, .keyed = 1,
        .rows = FAULT_RECORDS
    };
    struct world w;

    fault_run(&w, &c);
    CHECK_EQ(sim_report(&w, "acks_received"), 2 * FAULT_DCUS + 1);
    world_end(&w);
}

static void test_fep_push_fault_cut(void)
{
    static const struct fault_case c = {
        .tag = "push-cut", .fault = "cut", .push = 1, .keyed = 1,
        .failure = FEP_ERR_CLOSED
    };
    struct world w;

    fault_run(&w, &c);
    world_end(&w);
}

static void test_fep_push_fault_slowloris(void)
{
    static const struct fault_case c = {
        .tag = "push-slowloris", .fault = "slowloris", .push = 1,
        .failure = FEP_ERR_TIMEOUT
    };
    struct world w;
    long long elapsed = fault_run(&w, &c);

    CHECK(elapsed < TIMEOUT_FRAME_MS + MARGIN_MS);
    world_end(&w);
}

/* ========================================================================
 * 4. Push specifics
 * ====================================================================== */

/* Pushes from DCUs fepd does not know: NACK UNKNOWN; the known ones store. */
static void test_fep_push_unknown(void)
{
    const char *args[] = { "--dcus", "4", "--records", "20", NULL };
    char directives[128];
    struct world w;
    struct test_recs stored, acked;

    world_init(&w, "unknown");
    snprintf(directives, sizeof directives, "listen %s\n", w.fep_addr);
    conf_begin(&w, directives);
    conf_dcus(&w, 1, 2, NULL, 0, "k");
    if (fep_start(&w, NULL) == 0 && sim_start(&w, 1, args) == 0) {
        CHECK_EQ(sim_wait_exit(&w, ONCE_MS), 0);
        CHECK_EQ(fep_stop(&w, SIGTERM), 0);
        check_clean_exit(&w);
        CHECK_EQ(sim_report(&w, "nack_unknown"), 2);
        CHECK_EQ(sim_report(&w, "nacks_received"), 2);
        recs_load_run(&w, &stored, &acked);
        check_stored_exactly(&stored, &acked);
        CHECK_EQ(test_recs_of_dcu(&stored, 1), 20);
        CHECK_EQ(test_recs_of_dcu(&stored, 2), 20);
        CHECK_EQ(stored.n, 40);
        test_recs_free(&stored);
        test_recs_free(&acked);
    }
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* max_sessions 1 and four slow pushes at once: the ones over the limit are
 * answered NACK BUSY, the others stored. */
static void test_fep_push_busy(void)
{
    const char *args[] = { "--dcus", "4", "--records", "20", "--fault",
                           "dribble:2", NULL };
    char directives[128];
    struct world w;
    struct test_recs stored, acked;

    world_init(&w, "busy");
    snprintf(directives, sizeof directives,
             "listen %s\nmax_sessions 1\ntimeout_frame 5\n", w.fep_addr);
    conf_begin(&w, directives);
    conf_dcus(&w, 1, 4, NULL, 0, "k");
    if (fep_start(&w, NULL) == 0 && sim_start(&w, 1, args) == 0) {
        CHECK_EQ(sim_wait_exit(&w, ONCE_MS), 0);
        CHECK_EQ(fep_stop(&w, SIGTERM), 0);
        check_clean_exit(&w);
        recs_load_run(&w, &stored, &acked);
        check_stored_exactly(&stored, &acked);
        CHECK(sim_report(&w, "nack_busy") >= 1);
        CHECK_EQ(sim_report(&w, "nacks_received"), sim_report(&w, "nack_busy"));
        /* Every DCU was either stored whole or told BUSY. */
        CHECK(stored.n > 0);
        CHECK_EQ(stored.n % 20, 0);
        CHECK_EQ(stored.n / 20 + (size_t)sim_report(&w, "nack_busy"), 4);
        test_recs_free(&stored);
        test_recs_free(&acked);
    }
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* Polls that keep every session busy must still leave room for pushes:
 * 40 DCUs polled as fast as they answer, max_sessions 4, and 10 DCUs that
 * push meanwhile, one after the other.  Polls take at most three of the
 * four sessions, so each push finds one. */
static void test_fep_push_while_polls_saturate(void)
{
    const char *poll_args[] = { "--dcus", "40", "--records", "20", NULL };
    const char *push_argv[] = { SIM, "--push", NULL, "--dcus", "10", "--first",
                                "101", "--records", "20", "--timeout", "2",
                                "--push-concurrency", "1", NULL };
    char directives[160], push_log[PATH_MAX_TEST];
    struct world w;
    pid_t pusher;
    long polls_during, pushed;

    world_init(&w, "share");
    world_path(&w, "push.log", push_log);
    push_argv[2] = w.fep_addr;
    snprintf(directives, sizeof directives,
             "listen %s\nmax_sessions 4\npoll_every 0.01\n", w.fep_addr);
    conf_begin(&w, directives);
    conf_dcus(&w, 1, 40, w.sim_addr, 0, "k");
    conf_dcus(&w, 101, 10, NULL, 0, "k");
    if (sim_start(&w, 0, poll_args) == 0 && fep_start(&w, NULL) == 0) {
        /* Polls are in full swing before the first push. */
        CHECK(test_wait_log(w.fep_log, "session poll DCU", 40, START_MS) == 0);
        pusher = test_spawn(push_argv, push_log);
        CHECK(pusher > 0);
        CHECK_EQ(test_wait(pusher, ONCE_MS), 0);
        polls_during = log_count2(w.fep_log, "session poll DCU", " ok ");
        CHECK_EQ(fep_stop(&w, SIGTERM), 0);
        check_clean_exit(&w);
        /* Before polls had a limit of their own, every push met BUSY.  A
         * push may still meet BUSY while the slot of the one before waits
         * (at most a second) for that DCU's close, or time out on a loaded
         * machine; pushes must get through all the same. */
        pushed = log_count2(w.fep_log, "session push DCU", " ok ");
        CHECK(pushed >= 3);
        CHECK(polls_during > 40);
    }
    CHECK_EQ(sim_stop(&w), 0);
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* The other way round: 20 connections to the push port that say nothing
 * (each held until timeout_idle, 30 s here) take the push share of
 * max_sessions 4 and the reserve slots, and the polls go on. */
static void test_fep_polls_while_pushes_squat(void)
{
    const char *poll_args[] = { "--dcus", "4", "--records", "20", NULL };
    char directives[160];
    struct world w;
    long before, after;
    int fds[20], i;

    world_init(&w, "squat");
    snprintf(directives, sizeof directives,
             "listen %s\nmax_sessions 4\npoll_every 0.05\ntimeout_idle 30\n",
             w.fep_addr);
    conf_begin(&w, directives);
    conf_dcus(&w, 1, 4, w.sim_addr, 0, "s");
    for (i = 0; i < 20; i++)
        fds[i] = -1;
    if (sim_start(&w, 0, poll_args) == 0 && fep_start(&w, NULL) == 0) {
        CHECK(test_wait_log(w.fep_log, "session poll DCU", 4, START_MS) == 0);
        for (i = 0; i < 20; i++)
            fds[i] = raw_connect(w.fep_port);
        test_sleep_ms(300);             /* every one accepted or closed */
        before = log_count2(w.fep_log, "session poll DCU", " ok ");
        test_sleep_ms(1000);
        after = log_count2(w.fep_log, "session poll DCU", " ok ");
        CHECK(after - before >= 8);     /* 20 due; one session is enough */
        for (i = 0; i < 20; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        CHECK_EQ(fep_stop(&w, SIGTERM), 0);
        check_clean_exit(&w);
    }
    CHECK_EQ(sim_stop(&w), 0);
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* A connection that sends nothing is closed after timeout_idle. */
static void test_fep_push_idle(void)
{
    char directives[128], byte;
    struct world w;

    world_init(&w, "idle");
    snprintf(directives, sizeof directives, "listen %s\n", w.fep_addr);
    conf_begin(&w, directives);
    conf_dcus(&w, 1, 1, NULL, 0, "k");
    if (fep_start(&w, NULL) == 0) {
        int fd = test_connect(w.fep_port, 5000);
        int64_t t0 = sys_now_ms(), elapsed;
        ssize_t n = fd >= 0 ? read(fd, &byte, 1) : -1;

        elapsed = sys_now_ms() - t0;
        if (fd >= 0)
            close(fd);
        CHECK(n == 0);                  /* closed by fepd, nothing sent */
        CHECK(elapsed >= 400);          /* timeout_idle 0.5 */
        CHECK(elapsed < 500 + MARGIN_MS);
        CHECK(test_wait_log(w.fep_log, "session push ?", 1, SETTLE_MS) == 0);
        CHECK_EQ(test_log_count(w.fep_log, fep_strerror(FEP_ERR_TIMEOUT)), 1);
        CHECK_EQ(fep_stop(&w, SIGTERM), 0);
        check_clean_exit(&w);
        CHECK_EQ(csv_rows(w.lp), 0);
    }
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* A DCU whose first push is complete (its LAST packet acknowledged) but
 * whose connection is not closed yet pushes again on a new one: the first
 * session is over and must not make the second one BUSY. */
static void test_fep_push_next_while_closing(void)
{
    char directives[128];
    struct world w;

    world_init(&w, "pushnext");
    snprintf(directives, sizeof directives, "listen %s\ntimeout_frame 3\n",
             w.fep_addr);
    conf_begin(&w, directives);
    conf_dcus(&w, 1, 1, NULL, 0, "k");
    if (fep_start(&w, NULL) == 0) {
        int first = test_connect(w.fep_port, 5000), second = test_connect(w.fep_port, 5000);

        CHECK(first >= 0 && second >= 0);
        CHECK(raw_send(first, "DCU00001", "FEP00001", CTL_DIR_DCU | CTL_LAST,
                       CMD_LP_RSP, 1, 0, NULL, 0) == 0);
        CHECK_EQ(raw_answer(first, NULL, NULL), CMD_ACK);
        CHECK(raw_send(second, "DCU00001", "FEP00001", CTL_DIR_DCU | CTL_LAST,
                       CMD_LP_RSP, 2, 0, NULL, 0) == 0);
        CHECK_EQ(raw_answer(second, NULL, NULL), CMD_ACK);
        close(first);
        close(second);
        CHECK(test_wait_log(w.fep_log, "session push DCU00001", 2, SETTLE_MS) == 0);
        CHECK_EQ(fep_stop(&w, SIGTERM), 0);
        check_clean_exit(&w);
        CHECK_EQ(csv_rows(w.lp), 2);
    }
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* ========================================================================
 * 5. Restart after kill -9
 * ====================================================================== */

/* Waits (bounded) until path has at least rows data lines. */
static int wait_rows(const char *path, long rows)
{
    int64_t deadline = sys_now_ms() + SETTLE_MS;

    while (csv_rows(path) < rows) {
        if (sys_now_ms() >= deadline)
            return -1;
        test_sleep_ms(10);
    }
    return 0;
}

static void test_fep_restart_kill9(void)
{
    const char *args[] = { "--dcus", "5", "--records", "96", "--key", KEY_HEX,
                           NULL };
    struct world w;
    struct test_recs stored, acked;
    long rows;

    world_init(&w, "restart");
    conf_begin(&w, "poll_every 0.2\n");
    if (sim_start(&w, 0, args) == 0) {
        conf_dcus(&w, 1, 5, w.sim_addr, 1, "k");
        if (fep_start(&w, NULL) == 0) {
            CHECK(wait_rows(w.lp, 1000) == 0);
            CHECK_EQ(fep_stop(&w, SIGKILL), 128 + SIGKILL);
        }
        rows = csv_rows(w.lp);
        if (fep_start(&w, NULL) == 0) {
            CHECK(wait_rows(w.lp, rows + 1000) == 0);
            CHECK_EQ(fep_stop(&w, SIGTERM), 0);
            check_clean_exit(&w);
        }
        CHECK_EQ(sim_stop(&w), 0);
        CHECK_EQ(sim_report(&w, "fep_ic_reused"), 0);
        CHECK_EQ(sim_report(&w, "nack_replay"), 0);
        CHECK_EQ(sim_report(&w, "bad_frames"), 0);
        recs_load_run(&w, &stored, &acked);
        /* At-least-once: a row stored before the crash may come again. */
        CHECK(acked.n >= 2000);
        CHECK_EQ(test_recs_missing(&stored, &acked), 0);
        CHECK_EQ(stored.bad, 0);
        CHECK_EQ(stored.misplaced_headers, 0);
        CHECK_EQ(stored.headers, 1);
        test_recs_free(&stored);
        test_recs_free(&acked);
    }
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* ========================================================================
 * 6. Store failures
 * ====================================================================== */

/* Moves lp.csv away (to lp.csv.old.N) and puts a directory in its place;
 * when fepd recreates the file in between, that one is moved away too.
 * Returns how many files were moved. */
static int lp_replace_by_dir(const struct world *w)
{
    char old[PATH_MAX_TEST + 16];
    int moved = 0;

    while (moved < 10) {
        snprintf(old, sizeof old, "%s.old.%d", w->lp, moved);
        if (rename(w->lp, old) == 0)
            moved++;
        if (mkdir(w->lp, 0755) == 0)
            return moved;
    }
    CHECK(!"lp.csv could not be replaced by a directory");
    return moved;
}

/* lp.csv and every lp.csv.old.N, one set. */
static void load_lp_files(const struct world *w, int moved, struct test_recs *stored)
{
    char old[PATH_MAX_TEST + 16];
    int i;

    memset(stored, 0, sizeof *stored);
    CHECK(test_recs_load(stored, w->lp, 9) == 0);
    for (i = 0; i < moved; i++) {
        snprintf(old, sizeof old, "%s.old.%d", w->lp, i);
        CHECK(test_recs_load(stored, old, 9) == 0);
    }
    test_recs_sort(stored);
}

static void test_fep_store_dir_swap(void)
{
    const char *args[] = { "--dcus", "3", "--records", "10", NULL };
    char status[PATH_MAX_TEST + 32];
    struct world w;
    struct test_recs stored, acked;
    int moved = 0;

    world_init(&w, "storefail");
    snprintf(status, sizeof status, "%s/dcu_status.csv", w.data);
    conf_begin(&w, "poll_every 0.3\n");
    if (sim_start(&w, 0, args) == 0) {
        /* DCU00003 is asked for S only: its rows go to another file, often
         * in the same loop pass as the others' K. */
        conf_dcus(&w, 1, 2, w.sim_addr, 0, "k");
        conf_dcus(&w, 3, 1, w.sim_addr, 0, "s");
        if (fep_start(&w, NULL) == 0) {
            long status_rows;

            CHECK(wait_rows(w.lp, 20) == 0);
            moved = lp_replace_by_dir(&w);
            CHECK(sim_wait_report(&w, "nack_store", 4) == 0);
            /* Still running, and serving the DCU whose file is fine. */
            status_rows = csv_rows(status);
            CHECK(wait_rows(status, status_rows + 5) == 0);
            /* A commit that fails takes its whole pass with it (fep.h,
             * store_commit), but a packet refused before anything of it was
             * written must not cost the other packets of its pass. */
            CHECK(test_log_count(w.fep_log, "poll DCU00003: NACK") <=
                  test_log_count(w.fep_log, "replaced or removed while open"));
            CHECK(rmdir(w.lp) == 0);
            CHECK(wait_rows(w.lp, 20) == 0);
            CHECK_EQ(fep_stop(&w, SIGTERM), 0);
            check_clean_exit(&w);
        }
        CHECK_EQ(sim_stop(&w), 0);
        CHECK(moved >= 1);
        load_lp_files(&w, moved, &stored);
        memset(&acked, 0, sizeof acked);
        CHECK(test_recs_load(&acked, w.acked, 6) == 0);
        test_recs_sort(&acked);
        CHECK(acked.n >= 40);
        check_stored_exactly(&stored, &acked);
        /* The new lp.csv starts with its header, like every moved file. */
        CHECK_EQ(stored.headers, moved + 1);
        test_recs_free(&stored);
        test_recs_free(&acked);
    }
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* Every fsync from call 30 on fails (start-up makes about ten): each pass
 * is then NACK STORE and cut back; fepd runs on. */
static void test_fep_store_fsync_eio(void)
{
    const char *args[] = { "--dcus", "3", "--records", "10", NULL };
    struct world w;

    world_init(&w, "fsync");
    conf_begin(&w, "poll_every 0.2\n");
    if (sim_start(&w, 0, args) == 0) {
        conf_dcus(&w, 1, 3, w.sim_addr, 0, "k");
        if (fep_start(&w, "fsync:30+:EIO") == 0) {
            CHECK(sim_wait_report(&w, "nack_store", 6) == 0);
            CHECK_EQ(fep_stop(&w, SIGTERM), 0);
            check_clean_exit(&w);
        }
        CHECK_EQ(sim_stop(&w), 0);
        CHECK_EQ(sim_report(&w, "nacks_received"), sim_report(&w, "nack_store"));
        /* The fault came after some passes. */
        CHECK(check_run_stored(&w) >= 30);
    }
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* ========================================================================
 * 7. Command line and config errors
 * ====================================================================== */

/* fepd_t with argv[1..] = args (NULL-terminated); its exit status. */
static int fep_cli(struct world *w, const char *const *args)
{
    const char *argv[ARGS_MAX + 2];
    int n = 0;
    pid_t pid;

    argv[n++] = FEPD_T;
    while (*args && n < ARGS_MAX)
        argv[n++] = *args++;
    argv[n] = NULL;
    pid = test_spawn(argv, w->fep_log);
    CHECK(pid > 0);
    return pid > 0 ? test_wait(pid, ONCE_MS) : -1;
}

/* A config whose line `line` (1-based, counting the three lines conf_begin
 * writes first) is wrong: exit 2, and the message names FILE:LINE. */
static void config_error(const char *tag, const char *directives, unsigned line)
{
    const char *args[] = { "-c", NULL, NULL };
    char needle[PATH_MAX_TEST + 32], listen[128];
    struct world w;

    world_init(&w, tag);
    snprintf(listen, sizeof listen, "listen %s\n%s", w.fep_addr, directives);
    conf_begin(&w, listen);
    args[1] = w.conf;
    CHECK_EQ(fep_cli(&w, args), 2);
    snprintf(needle, sizeof needle, "%s:%u: ", w.conf, line);
    CHECK_EQ(test_log_count(w.fep_log, needle), 1);
    world_end(&w);
}

static void test_fep_config_errors(void)
{
    /* Lines 1-3: fep_id, data_dir, state_dir; 4: listen; 5 on: these. */
    config_error("cfg-unknown", "dcu DCU00001 - key=- poll=k\nbogus 1\n", 6);
    config_error("cfg-key", "dcu DCU00001 - key=00112233 poll=k\n", 5);
    config_error("cfg-dup", "dcu DCU00001 - key=- poll=k\n"
                            "dcu DCU00002 - key=- poll=k\n"
                            "dcu DCU00001 - key=- poll=k\n", 7);
}

static void test_fep_cli(void)
{
    const char *check[] = { "-c", NULL, "--check", NULL };
    const char *help[] = { "-h", NULL };
    const char *unknown[] = { "-c", NULL, "--bogus", NULL };
    const char *none[] = { "--once", NULL };
    struct world w;

    world_init(&w, "cli");
    conf_begin(&w, NULL);
    conf_dcus(&w, 1, 2, "127.0.0.1:1", 1, "k,s");
    check[1] = unknown[1] = w.conf;
    CHECK_EQ(fep_cli(&w, check), 0);
    CHECK_EQ(test_log_count(w.fep_log, ": ok (2 DCUs, static memory "), 1);
    CHECK_EQ(fep_cli(&w, help), 0);
    CHECK_EQ(test_log_count(w.fep_log, "usage: fepd"), 1);
    CHECK_EQ(fep_cli(&w, unknown), 2);
    CHECK_EQ(fep_cli(&w, none), 2);
    /* --check touches nothing: no data or state directory. */
    CHECK(access(w.data, F_OK) != 0);
    CHECK(access(w.state, F_OK) != 0);
    world_end(&w);
}

/* Start-up failures: exit 3, everything opened so far given back. */
static void start_failure(struct world *w)
{
    CHECK_EQ(fep_once(w, FEPD_T), 3);
    check_ledger(w);
}

static void test_fep_bind_in_use(void)
{
    struct world w;
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    char directives[128];

    world_init(&w, "bind");
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)w.fep_port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 4) == 0);
    snprintf(directives, sizeof directives, "listen %s\n", w.fep_addr);
    conf_begin(&w, directives);
    conf_dcus(&w, 1, 1, NULL, 0, "k");
    start_failure(&w);
    CHECK_EQ(test_log_count(w.fep_log, w.fep_addr), 1);
    close(fd);
    world_end(&w);
}

/* data_dir or state_dir is a regular file: fepd cannot write there. */
static void dir_not_writable(const char *tag, int state)
{
    struct world w;
    const char *dir;

    world_init(&w, tag);
    dir = state ? w.state : w.data;
    CHECK(test_write_file(dir, "a file, not a directory\n") == 0);
    conf_begin(&w, NULL);
    conf_dcus(&w, 1, 1, "127.0.0.1:1", 1, "k");
    start_failure(&w);
    CHECK_EQ(test_log_count(w.fep_log, dir), 1);
    world_end(&w);
}

static void test_fep_data_dir_not_writable(void)
{
    dir_not_writable("datadir", 0);
}

static void test_fep_state_dir_not_writable(void)
{
    dir_not_writable("statedir", 1);
}

/* ========================================================================
 * 8. Signals
 * ====================================================================== */

/* SIGTERM while three long poll sessions are under way: they get
 * timeout_frame to finish, then fepd exits 0 with nothing lost. */
static void test_fep_sigterm_during_polls(void)
{
    /* 5 records a packet dribbled 2 ms a byte: about 0.4 s a frame, well
     * within timeout_frame, and 60 packets: a session would last 20 s. */
    const char *args[] = { "--dcus", "3", "--records", "300", "--per-packet",
                           "5", "--fault", "dribble:2", NULL };
    struct world w;
    size_t n;

    world_init(&w, "sigterm");
    conf_begin(&w, "timeout_frame 2\ntimeout_session 60\n");
    if (sim_start(&w, 0, args) == 0) {
        conf_dcus(&w, 1, 3, w.sim_addr, 0, "k");
        if (fep_start(&w, NULL) == 0) {
            int64_t t0;
            int rc;

            CHECK(wait_rows(w.lp, 3 * 5) == 0);
            t0 = sys_now_ms();
            rc = fep_stop(&w, SIGTERM);
            CHECK_EQ(rc, 0);
            CHECK(sys_now_ms() - t0 < 2000 + MARGIN_MS);
            CHECK_EQ(test_log_count(w.fep_log, "stopping: 3 sessions open"), 1);
            check_clean_exit(&w);
        }
        CHECK_EQ(sim_stop(&w), 0);
        n = check_run_stored(&w);
        CHECK(n >= 15);
        CHECK(n < 3 * 300);
    }
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* logrotate: lp.csv moved to lp.csv.1, SIGHUP, new rows in a new lp.csv. */
static void test_fep_sighup_reopen(void)
{
    const char *args[] = { "--dcus", "2", "--records", "10", NULL };
    char rotated[PATH_MAX_TEST + 8];
    struct world w;
    struct test_recs stored, acked, before;

    world_init(&w, "sighup");
    snprintf(rotated, sizeof rotated, "%s.1", w.lp);
    conf_begin(&w, "poll_every 0.2\n");
    if (sim_start(&w, 0, args) == 0) {
        conf_dcus(&w, 1, 2, w.sim_addr, 0, "k");
        if (fep_start(&w, NULL) == 0) {
            CHECK(wait_rows(w.lp, 20) == 0);
            CHECK(rename(w.lp, rotated) == 0);
            kill(w.fep, SIGHUP);
            CHECK(test_wait_log(w.fep_log, "reopening the output files", 1, SETTLE_MS) == 0);
            CHECK(wait_rows(w.lp, 20) == 0);
            CHECK_EQ(fep_stop(&w, SIGTERM), 0);
            check_clean_exit(&w);
        }
        CHECK_EQ(sim_stop(&w), 0);
        recs_load_run(&w, &stored, &acked);
        CHECK_EQ(stored.headers, 1);
        memset(&before, 0, sizeof before);
        CHECK(test_recs_load(&before, rotated, 9) == 0);
        CHECK(before.n >= 20);
        CHECK_EQ(before.headers, 1);
        test_recs_free(&stored);
        memset(&stored, 0, sizeof stored);
        CHECK(test_recs_load(&stored, rotated, 9) == 0);
        CHECK(test_recs_load(&stored, w.lp, 9) == 0);
        test_recs_sort(&stored);
        check_stored_exactly(&stored, &acked);
        test_recs_free(&before);
        test_recs_free(&stored);
        test_recs_free(&acked);
    }
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* ========================================================================
 * 9. /metrics
 * ====================================================================== */

#define METRICS_DCUS 20
#define METRICS_BUF (64 * 1024)

/* Every name of DESIGN.md section 5 is in the exposition. */
static void check_metric_names(const char *text)
{
    static const char *const plain[] = {
        "fep_sessions_active", "fep_frames_received_total",
        "fep_frames_sent_total", "fep_records_stored_total",
        "fep_garbage_bytes_total", "fep_slots_in_use", "fep_slots_capacity",
        "fep_static_memory_bytes", "fep_segments_ready_total", NULL
    };
    char name[128];
    unsigned i;

    for (i = 0; plain[i]; i++)
        CHECK(metric_get(text, plain[i]) >= 0);
    for (i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "fep_sessions_total{kind=\"%s\",result=\"%s\"}",
                 i / 2 ? "push" : "poll", i % 2 ? "error" : "ok");
        CHECK(metric_get(text, name) >= 0);
    }
    for (i = 1; i <= FEP_NACK_CODE_MAX; i++) {
        snprintf(name, sizeof name, "fep_nacks_sent_total{code=\"%s\"}",
                 fep_nack_name(i));
        CHECK_EQ(metric_get(text, name), 0);
    }
    for (i = 1; i <= METRICS_DCUS; i++) {
        snprintf(name, sizeof name,
                 "fep_dcu_last_success_timestamp_seconds{dcu=\"DCU%05u\"}", i);
        CHECK(metric_get(text, name) > 1700000000);
    }
}

/* The totals of a run, against the files and the frames dcusim sent. */
static void check_metric_values(const struct world *w, const char *text,
                                long long frames)
{
    char path[PATH_MAX_TEST + 32];
    long long rows = csv_rows(w->lp);

    snprintf(path, sizeof path, "%s/dcu_status.csv", w->data);
    rows += csv_rows(path);
    CHECK(rows > 0);
    CHECK_EQ(metric_get(text, "fep_records_stored_total"), rows);
    CHECK_EQ(metric_get(text, "fep_sessions_active"), 0);
    /* The connection that asks is the only slot in use. */
    CHECK_EQ(metric_get(text, "fep_slots_in_use"), 1);
    CHECK_EQ(metric_get(text, "fep_slots_capacity"),
             256 + REJECT_SLOTS + METRICS_SLOTS);
    CHECK_EQ(metric_get(text, "fep_garbage_bytes_total"), 0);
    CHECK_EQ(metric_get(text, "fep_frames_received_total"), frames);
}

static long long logged_static_memory(const struct world *w)
{
    char line[LINE_MAX_TEST];
    const char *p;

    if (test_log_last_line(w->fep_log, "static memory ", line, sizeof line) != 0)
        return -1;
    p = strstr(line, "static memory ");
    return strtoll(p + strlen("static memory "), NULL, 10);
}

/*
 * One poll cycle of 20 DCUs (k, s), then 100 push sessions of the same DCUs
 * from a second dcusim (other timestamps): after each, /metrics agrees with
 * the files and with dcusim; the static memory never moves.
 */
static void test_fep_metrics(void)
{
    const char *poll_args[] = { "--dcus", "20", "--records", "30", NULL };
    const char *push_args[] = { "--dcus", "20", "--records", "30",
                                "--push-cmds", "KKKKK", "--start-ts",
                                "1800000000", NULL };
    static char text[METRICS_BUF];
    char directives[128];
    struct world w;
    long long static_memory;

    world_init(&w, "metrics");
    snprintf(directives, sizeof directives, "listen %s\nmetrics %s\n",
             w.fep_addr, w.metrics_addr);
    conf_begin(&w, directives);
    if (sim_start(&w, 0, poll_args) == 0) {
        conf_dcus(&w, 1, METRICS_DCUS, w.sim_addr, 0, "k,s");
        if (fep_start(&w, NULL) == 0) {
            static_memory = logged_static_memory(&w);
            CHECK(static_memory > 0);
            CHECK(metrics_wait(&w, "fep_sessions_total{kind=\"poll\",result=\"ok\"}",
                               METRICS_DCUS, text, sizeof text) == 0);
            CHECK(strncmp(text, "HTTP/1.0 200 ", 13) == 0);
            CHECK(sim_wait_report(&w, "acks_received", 2 * METRICS_DCUS) == 0);
            CHECK_EQ(metric_get(text, "fep_frames_sent_total"),
                     4 * METRICS_DCUS); /* two requests, two ACKs */
            check_metric_names(text);
            check_metric_values(&w, text, sim_report(&w, "packets_sent"));
            CHECK_EQ(metric_get(text, "fep_static_memory_bytes"), static_memory);
            CHECK_EQ(sim_stop(&w), 0);

            CHECK(sim_start(&w, 1, push_args) == 0);
            CHECK_EQ(sim_wait_exit(&w, ONCE_MS), 0);
            CHECK(metrics_wait(&w, "fep_sessions_total{kind=\"push\",result=\"ok\"}",
                               5 * METRICS_DCUS, text, sizeof text) == 0);
            check_metric_values(&w, text, 2 * METRICS_DCUS +
                                              sim_report(&w, "packets_sent"));
            CHECK_EQ(metric_get(text, "fep_static_memory_bytes"), static_memory);
            CHECK_EQ(http_get(w.metrics_port, "/other", text, sizeof text), 404);
            CHECK_EQ(fep_stop(&w, SIGTERM), 0);
            check_clean_exit(&w);
        }
        CHECK_EQ(check_run_stored(&w), METRICS_DCUS * 30 * 6);
    }
    sim_stop(&w);
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* ========================================================================
 * 8. Segments: rotate hands finished CSV files to data_dir/ready/
 * ====================================================================== */

#define SEGMENTS_MAX 256

static const char *const segment_kinds[] = {
    "lp", "dcu_status", "meter_status", "meter_change", NULL
};

/* What the segments in ready/ add up to. */
struct segments {
    long files;
    long bad_names;                     /* not KIND-FEP00001-TIME-SEQ.csv */
    long bad_files;                     /* no header first, a torn or extra line */
    long files_of[4];                   /* by kind */
    long rows_of[4];                    /* by kind */
    struct test_recs lp;                     /* the lp rows, all segments */
};

/* The kind of a segment's name (index into segment_kinds), or -1 when the
 * name is not KIND-FEP00001-YYYYMMDDTHHMMSSZ-SEQ.csv. */
static int segment_kind(const char *name)
{
    unsigned date, time_of_day;
    char z, dash, rest[16];
    int i, used = 0;

    for (i = 0; segment_kinds[i]; i++) {
        size_t n = strlen(segment_kinds[i]);

        if (strncmp(name, segment_kinds[i], n) == 0 &&
            strncmp(name + n, "-FEP00001-", 10) == 0) {
            const char *t = name + n + 10;

            if (strlen(t) < 17 || t[8] != 'T' ||
                strspn(t, "0123456789") != 8 || strspn(t + 9, "0123456789") != 6 ||
                sscanf(t, "%8u%*c%6u%c%c%15[0-9]%n", &date, &time_of_day, &z,
                       &dash, rest, &used) != 5 || z != 'Z' || dash != '-' ||
                strcmp(t + used, ".csv") != 0)
                return -1;
            return date >= 20000101 ? i : -1;
        }
    }
    return -1;
}

/* Rows of a segment whose first line is a header and every other line a
 * whole row with as many fields; -1 otherwise. */
static long segment_rows(const char *path)
{
    FILE *f = fopen(path, "r");
    char line[LINE_MAX_TEST];
    long lines = 0;
    int header_commas = -1, ok = f != NULL;

    while (ok && fgets(line, sizeof line, f)) {
        int commas = 0;
        const char *p;

        for (p = line; *p; p++)
            commas += *p == ',';
        ok = strchr(line, '\n') != NULL &&
             (strncmp(line, "dcu_id,", 7) == 0) == (lines == 0) &&
             (lines == 0 || commas == header_commas);
        if (lines++ == 0)
            header_commas = commas;
    }
    if (f)
        fclose(f);
    return ok && lines >= 1 ? lines - 1 : -1;
}

/* Reads data/ready into s (names, whole rows, lp records sorted). */
static void segments_load(const struct world *w, struct segments *s)
{
    char ready[PATH_MAX_TEST + 8], path[2 * PATH_MAX_TEST];
    struct dirent *e;
    DIR *d;

    memset(s, 0, sizeof *s);
    snprintf(ready, sizeof ready, "%s/ready", w->data);
    d = opendir(ready);
    CHECK(d != NULL);
    while (d && (e = readdir(d)) != NULL) {
        int kind = segment_kind(e->d_name);
        long rows;

        if (e->d_name[0] == '.')
            continue;
        s->files++;
        snprintf(path, sizeof path, "%s/%s", ready, e->d_name);
        if (kind < 0) {
            s->bad_names++;
            continue;
        }
        rows = segment_rows(path);
        s->bad_files += rows <= 0;      /* an empty segment is not handed off */
        s->files_of[kind]++;
        s->rows_of[kind] += rows > 0 ? rows : 0;
        if (kind == 0)
            CHECK(test_recs_load(&s->lp, path, 9) == 0);
    }
    if (d)
        closedir(d);
    test_recs_sort(&s->lp);
}

/* No segment left open in data_dir. */
static long segments_open(const struct world *w)
{
    char path[PATH_MAX_TEST + 32];
    long n = 0;
    unsigned i;

    for (i = 0; segment_kinds[i]; i++) {
        snprintf(path, sizeof path, "%s/%s.csv.open", w->data, segment_kinds[i]);
        n += access(path, F_OK) == 0;
    }
    return n;
}

/* Every check a finished run's ready/ must pass; acked is dcusim's CSV. */
static void check_segments(const struct world *w, struct segments *s,
                           struct test_recs *acked)
{
    segments_load(w, s);
    memset(acked, 0, sizeof *acked);
    CHECK(test_recs_load(acked, w->acked, 6) == 0);
    test_recs_sort(acked);
    CHECK_EQ(segments_open(w), 0);
    CHECK_EQ(s->bad_names, 0);
    CHECK_EQ(s->bad_files, 0);
    CHECK_EQ(s->lp.bad, 0);
    CHECK_EQ(s->lp.misplaced_headers, 0);
    CHECK_EQ(s->lp.headers, s->files_of[0]);
    CHECK_EQ(test_recs_missing(&s->lp, acked), 0);
}

/* dcusim pushes for about four seconds while fepd hands off a segment at
 * every second of the clock; SIGTERM hands off the rest.  Every acked
 * record is in a segment, once; every segment is whole and well named. */
static void test_fep_rotate_push(void)
{
    const char *args[] = { "--dcus", "16", "--records", "48", "--push-cmds",
                           "KSKMKN", "--push-rate", "24", "--key", KEY_HEX,
                           NULL };
    static char text[METRICS_BUF];
    char directives[192];
    struct segments s;
    struct test_recs acked;
    struct world w;
    long long ready_metric = -1;

    world_init(&w, "rotate-push");
    snprintf(directives, sizeof directives, "listen %s\nmetrics %s\nrotate 1\n",
             w.fep_addr, w.metrics_addr);
    conf_begin(&w, directives);
    conf_dcus(&w, 1, 16, NULL, 1, "k");
    if (fep_start(&w, NULL) == 0 && sim_start(&w, 1, args) == 0) {
        CHECK_EQ(sim_wait_exit(&w, ONCE_MS), 0);
        CHECK_EQ(http_get(w.metrics_port, "/metrics", text, sizeof text), 200);
        ready_metric = metric_get(text, "fep_segments_ready_total");
        CHECK_EQ(fep_stop(&w, SIGTERM), 0);
        check_clean_exit(&w);
        CHECK_EQ(sim_report(&w, "nacks_received"), 0);
        check_segments(&w, &s, &acked);
        CHECK_EQ(acked.n, 16 * 48 * 3);
        check_stored_exactly(&s.lp, &acked);
        /* K rounds two seconds apart cannot share a segment. */
        CHECK(s.files_of[0] >= 2);
        CHECK_EQ(s.rows_of[1], 16);
        CHECK_EQ(s.rows_of[2], 16);
        CHECK_EQ(s.rows_of[3], 16);
        CHECK(ready_metric >= 3 && ready_metric <= s.files);
        CHECK_EQ(test_log_count(w.fep_log, "segment ready: "), s.files);
        test_recs_free(&s.lp);
        test_recs_free(&acked);
    }
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* SIGKILL while segments are open: the next start repairs them and hands
 * them off at once; no acked record is missing. */
static void test_fep_rotate_kill9(void)
{
    const char *args[] = { "--dcus", "5", "--records", "96", "--key", KEY_HEX,
                           NULL };
    char open_lp[PATH_MAX_TEST + 16];
    struct segments s;
    struct test_recs acked;
    struct world w;
    long killed_rows;

    world_init(&w, "rotate-kill9");
    snprintf(open_lp, sizeof open_lp, "%s/lp.csv.open", w.data);
    conf_begin(&w, "poll_every 0.2\nrotate 3600\n");
    if (sim_start(&w, 0, args) == 0) {
        conf_dcus(&w, 1, 5, w.sim_addr, 1, "k,s");
        if (fep_start(&w, NULL) == 0) {
            CHECK(wait_rows(open_lp, 1000) == 0);
            CHECK_EQ(fep_stop(&w, SIGKILL), 128 + SIGKILL);
        }
        killed_rows = csv_rows(open_lp);
        CHECK(killed_rows >= 1000);
        if (fep_start(&w, NULL) == 0) {
            /* Handed off during start-up, not at a boundary an hour on. */
            segments_load(&w, &s);
            CHECK(s.files_of[0] >= 1 && s.rows_of[0] >= killed_rows);
            test_recs_free(&s.lp);
            CHECK(wait_rows(open_lp, 1000) == 0);
            CHECK_EQ(fep_stop(&w, SIGTERM), 0);
            check_clean_exit(&w);
        }
        CHECK_EQ(sim_stop(&w), 0);
        check_segments(&w, &s, &acked);
        CHECK(acked.n >= 2000);
        CHECK(s.files_of[0] >= 2);
        test_recs_free(&s.lp);
        test_recs_free(&acked);
    }
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* Waits (bounded) until every acked lp record is in ready/ and the open
 * lp segment holds no row; 0 or -1. */
static int wait_handed_off(const struct world *w)
{
    int64_t deadline = sys_now_ms() + SETTLE_MS;
    char open_lp[PATH_MAX_TEST + 16];

    snprintf(open_lp, sizeof open_lp, "%s/lp.csv.open", w->data);
    for (;;) {
        struct segments s;
        long acked = csv_rows(w->acked);
        int done;

        segments_load(w, &s);
        done = csv_rows(open_lp) == 0 && (long)s.lp.n >= acked;
        test_recs_free(&s.lp);
        if (done)
            return 0;
        if (sys_now_ms() >= deadline)
            return -1;
        test_sleep_ms(100);
    }
}

/* fepd_t with FEP_FAULT: 1 once it serves, 0 when the fault stopped its
 * start-up (it has exited and is reaped), -1 when neither came in time. */
static int fep_try_start(struct world *w, const char *fault)
{
    long started = test_log_count(w->fep_log, "static memory");
    int64_t deadline = sys_now_ms() + START_MS;
    int status;

    w->fep = fep_spawn(w, FEPD_T, NULL, fault);
    while (w->fep > 0 && sys_now_ms() < deadline) {
        if (test_log_count(w->fep_log, "static memory") > started)
            return 1;
        if (waitpid(w->fep, &status, WNOHANG) == w->fep) {
            w->fep = -1;
            return 0;
        }
        test_sleep_ms(10);
    }
    return -1;
}

/*
 * A full disk at the moment of a switch: rename number n fails with
 * ENOSPC, for n from 1 up, until the fault has hit both the SEQ
 * reservation and the segment's own rename.  A fault that hits start-up
 * (the state file) stops fepd there.  At every point: the segment stays
 * open, nothing is lost, no half-renamed file appears, and a later
 * boundary hands everything off.
 */
static void test_fep_rotate_full_disk(void)
{
    const char *args[] = { "--dcus", "4", "--records", "40", "--push-cmds",
                           "KK", "--push-rate", "6", NULL };
    int seq_failed = 0, rename_failed = 0, n;

    for (n = 1; n <= 8 && !rename_failed; n++) {
        char fault[32], directives[128];
        struct segments s;
        struct test_recs acked;
        struct world w;
        int started;
        long seq0, rename0;

        world_init(&w, "rotate-enospc");
        snprintf(directives, sizeof directives, "listen %s\nrotate 1\n",
                 w.fep_addr);
        conf_begin(&w, directives);
        conf_dcus(&w, 1, 4, NULL, 0, "k");
        snprintf(fault, sizeof fault, "rename:%d:ENOSPC", n);
        started = fep_try_start(&w, fault);
        CHECK(started >= 0);
        if (started == 1 && sim_start(&w, 1, args) == 0) {
            CHECK_EQ(sim_wait_exit(&w, ONCE_MS), 0);
            /* A later boundary hands off what is left, before the stop. */
            CHECK(wait_handed_off(&w) == 0);
            seq0 = test_log_count(w.fep_log, "reserving SEQs: No space left");
            rename0 = log_count2(w.fep_log, "/ready/lp-FEP00001-",
                                 "No space left on device (the segment stays open");
            CHECK_EQ(fep_stop(&w, SIGTERM), 0);
            check_clean_exit(&w);
            check_segments(&w, &s, &acked);
            CHECK_EQ(acked.n, 4 * 40 * 2);
            check_stored_exactly(&s.lp, &acked);
            seq_failed += seq0 > 0;
            rename_failed += rename0 > 0;
            test_recs_free(&s.lp);
            test_recs_free(&acked);
        }
        fep_stop(&w, SIGKILL);
        world_end(&w);
    }
    CHECK_EQ(seq_failed, 1);
    CHECK_EQ(rename_failed, 1);
}

/* A reading that reaches two segments (the ACK lost after the commit)
 * loads once: the loader script against a PostgreSQL server, when there is
 * one (PGHOST and the rest from the environment). */
static void test_fep_rotate_postgres(void)
{
    const char *probe[] = { "/bin/sh", "-c",
                            "command -v psql >/dev/null && pg_isready -q", NULL };
    const char *args[] = { "--dcus", "10", "--records", "50", "--meters", "2",
                           "--push-cmds", "KSMNK", "--push-rate", "20", NULL };
    char directives[128], script[4096], out[PATH_MAX_TEST], schema[64];
    const char *sh[] = { "/bin/sh", "-c", script, NULL };
    static char text[4096];
    struct segments s;
    struct test_recs acked;
    struct world w;
    long long lp = -1, st = -1, ms = -1, mc = -1;
    pid_t pid = test_spawn(probe, NULL);

    if (pid <= 0 || test_wait(pid, STOP_MS) != 0) {
        printf("skipped: no PostgreSQL server\n");
        return;
    }
    world_init(&w, "rotate-pg");
    world_path(&w, "psql.out", out);
    snprintf(schema, sizeof schema, "fepd_test_%ld", (long)getpid());
    snprintf(directives, sizeof directives, "listen %s\nrotate 1\n", w.fep_addr);
    conf_begin(&w, directives);
    conf_dcus(&w, 1, 10, NULL, 0, "k");
    if (fep_start(&w, NULL) == 0 && sim_start(&w, 1, args) == 0) {
        CHECK_EQ(sim_wait_exit(&w, ONCE_MS), 0);
        CHECK_EQ(fep_stop(&w, SIGTERM), 0);
        check_segments(&w, &s, &acked);
        /* The loader runs twice, the second time over a copy of every
         * segment already loaded: nothing is counted twice.  A segment
         * that cannot be loaded stops the loader and stays in ready/. */
        snprintf(script, sizeof script,
                 "set -e; d='%s'; export PGOPTIONS='-c search_path=%s';\n"
                 "PGOPTIONS= psql -X -q -v ON_ERROR_STOP=1 -c 'CREATE SCHEMA %s'\n"
                 "trap \"PGOPTIONS= psql -X -q -c 'DROP SCHEMA %s CASCADE'\" EXIT\n"
                 "psql -X -q -v ON_ERROR_STOP=1 -f contrib/fepd-pg-schema.sql\n"
                 "sh contrib/fepd-load-pg.sh \"$d\"\n"
                 "test -z \"$(ls \"$d/ready\")\"\n"
                 "cp \"$d\"/done/*.csv \"$d/ready/\"\n"
                 "sh contrib/fepd-load-pg.sh \"$d\"\n"
                 "bad=\"$d/ready/lp-FEP00001-29991231T235959Z-999999.csv\"\n"
                 "printf 'dcu_id,meter_id,ts\\nDCU00001,M,x\\n' > \"$bad\"\n"
                 "if sh contrib/fepd-load-pg.sh \"$d\"; then exit 9; fi\n"
                 "test -f \"$bad\"\n"
                 "for t in lp dcu_status meter_status meter_change; do\n"
                 "  echo \"$t=$(psql -X -At -c \"SELECT count(*) FROM fep_$t\")\"\n"
                 "done\n", w.data, schema, schema, schema);
        pid = test_spawn(sh, out);
        CHECK_EQ(pid > 0 ? test_wait(pid, ONCE_MS) : -1, 0);
        if (test_read_file(out, text, sizeof text) >= 0) {
            const char *p;

            lp = (p = strstr(text, "lp=")) ? atoll(p + 3) : -1;
            st = (p = strstr(text, "dcu_status=")) ? atoll(p + 11) : -1;
            ms = (p = strstr(text, "meter_status=")) ? atoll(p + 13) : -1;
            mc = (p = strstr(text, "meter_change=")) ? atoll(p + 13) : -1;
        }
        CHECK_EQ(lp, (long long)acked.n);
        CHECK_EQ(acked.n, 10 * 50 * 2);
        CHECK_EQ(st, 10);
        CHECK_EQ(ms, 10 * 2);
        CHECK_EQ(mc, 10 * 2);
        test_recs_free(&s.lp);
        test_recs_free(&acked);
    }
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* rotate takes whole seconds, 1 to 86400. */
static void test_fep_rotate_config(void)
{
    config_error("cfg-rotate0", "rotate 0\n", 5);
    config_error("cfg-rotate-big", "rotate 86401\n", 5);
    config_error("cfg-rotate-frac", "rotate 0.5\n", 5);
    config_error("cfg-rotate-twice", "rotate 60\nrotate 60\n", 6);
}

/* ========================================================================
 * The suite
 * ====================================================================== */

/* ========================================================================
 * 10. Reload (SIGHUP)
 * ====================================================================== */

/* Writes the config as conf_begin and conf_dcus would, atomically (a
 * reload must never read half a file), then signals SIGHUP and waits for
 * the reload's log line; 0 or -1. */
static int reload_to(struct world *w, const char *directives, unsigned first,
                     unsigned n, const char *addr, const char *extra_dcus)
{
    char tmp[PATH_MAX_TEST + 8], conf[PATH_MAX_TEST];
    long before = test_log_count(w->fep_log, "reload");
    FILE *f;

    strcpy(conf, w->conf);
    snprintf(tmp, sizeof tmp, "%s.new", conf);
    strcpy(w->conf, tmp);
    conf_begin(w, directives);
    if (n > 0)
        conf_dcus(w, first, n, addr, 1, "k");
    f = fopen(w->conf, "a");
    if (f) {
        fputs(extra_dcus ? extra_dcus : "", f);
        fclose(f);
    }
    strcpy(w->conf, conf);
    CHECK(rename(tmp, conf) == 0);
    kill(w->fep, SIGHUP);
    return test_wait_log(w->fep_log, "reload", before + 2, SETTLE_MS);
}

static long long metric_now(const struct world *w, const char *name)
{
    static char text[1 << 16];

    return http_get(w->metrics_port, "/metrics", text, sizeof text) == 200
               ? metric_get(text, name) : -1;
}

/* DCUs added, removed and changed by a reload, with an open session of a
 * changed DCU going on under the key it began with; a file with an error,
 * or one that changes what needs a restart, refused as a whole. */
static void test_fep_reload(void)
{
    char directives[160], hex[2 * KEY_SIZE + 1], dcu3[160];
    uint8_t key[KEY_SIZE];
    gcm_key key1, key3;
    struct world w;
    unsigned k;
    int fd;

    world_init(&w, "reload");
    snprintf(directives, sizeof directives, "listen %s\nmetrics %s\n"
             "timeout_frame 3\n", w.fep_addr, w.metrics_addr);
    conf_begin(&w, directives);
    conf_dcus(&w, 1, 2, NULL, 1, "k");
    test_unhex(KEY_HEX, key, sizeof key);
    key[15] ^= 1;
    gcm_init(&key1, key);
    key[15] ^= 1 ^ 3;
    gcm_init(&key3, key);
    for (k = 0; k < KEY_SIZE; k++)
        snprintf(hex + 2 * k, 3, "%02x", key[k]);
    /* The second file gives DCU00001 the key of DCU00003, which it adds. */
    if (fep_start(&w, NULL) == 0) {
        fd = test_connect(w.fep_port, 5000);
        CHECK(raw_send(fd, "DCU00001", "FEP00001", CTL_DIR_DCU, CMD_LP_RSP, 1,
                       0, &key1, 1) == 0);
        CHECK_EQ(raw_answer(fd, &key1, NULL), CMD_ACK);
        /* DCU00002 removed, DCU00003 added, DCU00001's key changed. */
        snprintf(dcu3, sizeof dcu3, "dcu DCU00001 - key=%s\ndcu DCU00003 - "
                 "key=%s\n", hex, hex);
        CHECK(reload_to(&w, directives, 0, 0, NULL, dcu3) == 0);
        CHECK(test_log_count(w.fep_log, "reload: 2 DCUs (1 added, 1 removed)") == 1);
        /* The open session finishes under the key it began with. */
        CHECK(raw_send(fd, "DCU00001", "FEP00001", CTL_DIR_DCU | CTL_LAST,
                       CMD_LP_RSP, 1, 1, &key1, 2) == 0);
        CHECK_EQ(raw_answer(fd, &key1, NULL), CMD_ACK);
        close(fd);
        /* The next one needs the new key. */
        fd = test_connect(w.fep_port, 5000);
        CHECK(raw_send(fd, "DCU00001", "FEP00001", CTL_DIR_DCU | CTL_LAST,
                       CMD_LP_RSP, 2, 0, &key3, 1) == 0);
        CHECK_EQ(raw_answer(fd, &key3, NULL), CMD_ACK);
        close(fd);
        fd = test_connect(w.fep_port, 5000);
        CHECK(raw_send(fd, "DCU00003", "FEP00001", CTL_DIR_DCU | CTL_LAST,
                       CMD_LP_RSP, 3, 0, &key3, 1) == 0);
        CHECK_EQ(raw_answer(fd, &key3, NULL), CMD_ACK);
        close(fd);
        fd = test_connect(w.fep_port, 5000);
        CHECK(raw_send(fd, "DCU00002", "FEP00001", CTL_DIR_DCU | CTL_LAST,
                       CMD_LP_RSP, 4, 0, NULL, 0) == 0);
        CHECK_EQ(raw_answer(fd, NULL, NULL), NACK(FEP_ERR_UNKNOWN));
        close(fd);
        CHECK_EQ(metric_now(&w, "fep_config_reloads_total{result=\"ok\"}"), 1);
        CHECK_EQ(metric_now(&w, "fep_dcus_configured"), 2);
        /* Refused: a bad line; a directive that needs a restart. */
        CHECK(reload_to(&w, directives, 0, 0, NULL, "dcu DCU00009 nowhere\n") == 0);
        CHECK(test_log_count(w.fep_log, "reload refused, the config in use "
                                        "stays: ") == 1);
        CHECK(test_log_count(w.fep_log, "fep.conf:12: dcu DCU00009: address") == 1);
        snprintf(directives, sizeof directives, "listen %s\nmetrics %s\n"
                 "timeout_frame 3\nmax_sessions 9\n", w.fep_addr,
                 w.metrics_addr);
        CHECK(reload_to(&w, directives, 0, 0, NULL, dcu3) == 0);
        CHECK(test_log_count(w.fep_log, "fep.conf:7: max_sessions changed: a "
                                        "reload cannot change it") == 1);
        CHECK_EQ(metric_now(&w, "fep_config_reloads_total{result=\"error\"}"), 2);
        fd = test_connect(w.fep_port, 5000);
        CHECK(raw_send(fd, "DCU00003", "FEP00001", CTL_DIR_DCU | CTL_LAST,
                       CMD_LP_RSP, 5, 0, &key3, 2) == 0);
        CHECK_EQ(raw_answer(fd, &key3, NULL), CMD_ACK);
        close(fd);
        CHECK_EQ(fep_stop(&w, SIGTERM), 0);
        check_clean_exit(&w);
        CHECK_EQ(csv_rows(w.lp), 5);
    }
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* A DCU removed by one reload and added again by the next keeps its
 * replay mark, and its key its IC sequence. */
static void test_fep_reload_mark_survives(void)
{
    char directives[160];
    uint8_t key[KEY_SIZE];
    frame hdr;
    gcm_key key1;
    uint32_t ic_before = 0;
    struct world w;
    int fd;

    world_init(&w, "reloadmark");
    snprintf(directives, sizeof directives, "listen %s\n", w.fep_addr);
    conf_begin(&w, directives);
    conf_dcus(&w, 1, 2, NULL, 1, "k");
    test_unhex(KEY_HEX, key, sizeof key);
    key[15] ^= 1;
    gcm_init(&key1, key);
    if (fep_start(&w, NULL) == 0) {
        fd = test_connect(w.fep_port, 5000);
        CHECK(raw_send(fd, "DCU00001", "FEP00001", CTL_DIR_DCU | CTL_LAST,
                       CMD_LP_RSP, 1, 0, &key1, 5) == 0);
        CHECK_EQ(raw_answer(fd, &key1, &hdr), CMD_ACK);
        ic_before = get_u32be(hdr.data);
        close(fd);
        CHECK(reload_to(&w, directives, 2, 1, NULL, NULL) == 0);
        CHECK(reload_to(&w, directives, 1, 2, NULL, NULL) == 0);
        CHECK(test_log_count(w.fep_log, "reload: 2 DCUs (1 added, 0 removed)") == 1);
        fd = test_connect(w.fep_port, 5000);
        CHECK(raw_send(fd, "DCU00001", "FEP00001", CTL_DIR_DCU | CTL_LAST,
                       CMD_LP_RSP, 1, 0, &key1, 5) == 0);
        CHECK_EQ(raw_answer(fd, &key1, &hdr), NACK(FEP_ERR_REPLAY));
        CHECK(get_u32be(hdr.data) > ic_before);
        close(fd);
        CHECK_EQ(fep_stop(&w, SIGTERM), 0);
        check_clean_exit(&w);
    }
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* A reload that replaces every DCU of a full table: the entries of the
 * DCUs it removes (no session holds them) take the ones it adds. */
static void test_fep_reload_replace_all(void)
{
    char directives[160];
    struct world w;

    world_init(&w, "reloadall");
    snprintf(directives, sizeof directives, "listen %s\nmax_dcus 3\n",
             w.fep_addr);
    conf_begin(&w, directives);
    conf_dcus(&w, 1, 1, NULL, 1, "k");
    if (fep_start(&w, NULL) == 0) {
        CHECK(reload_to(&w, directives, 2, 3, NULL, NULL) == 0);
        CHECK_EQ(test_log_count(w.fep_log, "reload: 3 DCUs (3 added, 1 "
                                           "removed)"), 1);
        CHECK(reload_to(&w, directives, 1, 3, NULL, NULL) == 0);
        CHECK_EQ(test_log_count(w.fep_log, "reload: 3 DCUs (1 added, 1 "
                                           "removed)"), 1);
        CHECK_EQ(test_log_count(w.fep_log, "reload refused"), 0);
        CHECK_EQ(fep_stop(&w, SIGTERM), 0);
        check_clean_exit(&w);
    }
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* 50 reloads while 40 keyed DCUs are polled and push: every reload applies,
 * nothing acknowledged is lost or stored twice, nothing is allocated after
 * start-up, every slot and descriptor is given back. */
static void test_fep_reload_under_load(void)
{
    const char *args[] = { "--push", NULL, "--dcus", "40", "--records", "24",
                           "--per-packet", "8", "--key", KEY_HEX,
                           "--push-rate", "40", "--duration", "4", NULL };
    char directives[2][160];
    struct world w;
    unsigned i;

    world_init(&w, "reloadload");
    args[1] = w.fep_addr;
    snprintf(directives[0], sizeof directives[0], "listen %s\n"
             "poll_every 0.2\n", w.fep_addr);
    snprintf(directives[1], sizeof directives[1], "listen %s\n"
             "poll_every 0.3\ntimeout_frame 0.6\n", w.fep_addr);
    conf_begin(&w, directives[0]);
    conf_dcus(&w, 1, 40, w.sim_addr, 1, "k");
    if (fep_start(&w, NULL) == 0 && sim_start(&w, 0, args) == 0) {
        for (i = 0; i < 50; i++)
            CHECK(reload_to(&w, directives[i % 2], 1, 40 - (i % 2) * 5,
                            w.sim_addr, NULL) == 0);
        CHECK_EQ(sim_wait_exit(&w, ONCE_MS), 0);
        CHECK_EQ(fep_stop(&w, SIGTERM), 0);
        check_clean_exit(&w);
        CHECK_EQ(test_log_count(w.fep_log, "reload: "), 50);
        CHECK_EQ(test_log_count(w.fep_log, "reload refused"), 0);
        CHECK(check_run_stored(&w) > 0);
    }
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

/* ========================================================================
 * stderr that nobody drains
 * ====================================================================== */

/* Reads what the pipe holds now; its length, added to *text (NUL-ended). */
static size_t pipe_drain(int fd, char *text, size_t cap, size_t *len)
{
    size_t got = 0;
    char buf[4096];
    ssize_t r;

    while ((r = read(fd, buf, sizeof buf)) > 0) {
        size_t keep = (size_t)r < cap - 1 - *len ? (size_t)r : cap - 1 - *len;
        memcpy(text + *len, buf, keep);
        *len += keep;
        got += (size_t)r;
    }
    text[*len] = '\0';
    return got;
}

/* A log collector that hangs: fepd's stderr is a pipe that nobody reads,
 * and -v -v dumps every frame, far more than a pipe holds.  The polls of
 * 20 keyed DCUs still complete with every record stored; once the pipe is
 * drained, the next line goes out after the count of those dropped. */
static void test_fep_stderr_not_drained(void)
{
    const char *args[] = { "--dcus", "20", "--records", "96", "--key",
                           KEY_HEX, NULL };
    static char text[1 << 17];
    int64_t deadline;
    struct world w;
    size_t len = 0;
    int fds[2] = { -1, -1 };

    world_init(&w, "stderr");
    if (sim_start(&w, 0, args) == 0 && pipe(fds) == 0 &&
        fcntl(fds[0], F_SETFL, O_NONBLOCK) == 0) {
        const char *argv[] = { FEPD_T, "-c", w.conf, "-v", "-v", NULL };

        conf_begin(&w, "poll_every 3600\n");
        conf_dcus(&w, 1, 20, w.sim_addr, 1, "k");
        w.fep = test_spawn_to(argv, fds[1]);
        CHECK(w.fep > 0);
        close(fds[1]);
        CHECK_EQ(wait_rows(w.lp, 20 * 96), 0);
        CHECK(pipe_drain(fds[0], text, sizeof text, &len) >= 16384);
        CHECK_EQ(test_count_in(text, "log lines dropped"), 0);
        kill(w.fep, SIGHUP);            /* something to log */
        deadline = sys_now_ms() + SETTLE_MS;
        while (!strstr(text, "reload: ") && sys_now_ms() < deadline) {
            test_sleep_ms(10);
            pipe_drain(fds[0], text, sizeof text, &len);
        }
        CHECK(strstr(text, " log lines dropped: stderr was not writable\n") !=
              NULL);
        CHECK_EQ(fep_stop(&w, SIGTERM), 0);
        CHECK_EQ(sim_stop(&w), 0);
        CHECK_EQ(check_run_stored(&w), 20 * 96);
    }
    if (fds[0] >= 0)
        close(fds[0]);
    fep_stop(&w, SIGKILL);
    world_end(&w);
}

void test_fep_suite(void)
{
    test_run("fep_poll_plaintext", test_fep_poll_plaintext);
    test_run("fep_poll_keyed", test_fep_poll_keyed);
    test_run("fep_poll_unreachable", test_fep_poll_unreachable);
    test_run("fep_smoke_fepd", test_fep_smoke_fepd);
    test_run("fep_push_concurrent", test_fep_push_concurrent);
    test_run("fep_fault_dribble", test_fep_fault_dribble);
    test_run("fep_fault_garbage", test_fep_fault_garbage);
    test_run("fep_fault_garbage_flood", test_fep_fault_garbage_flood);
    test_run("fep_fault_crc", test_fep_fault_crc);
    test_run("fep_fault_crc_always", test_fep_fault_crc_always);
    test_run("fep_fault_badtag", test_fep_fault_badtag);
    test_run("fep_fault_replay", test_fep_fault_replay);
    test_run("fep_fault_skip_fsn", test_fep_fault_skip_fsn);
    test_run("fep_fault_dup_fsn", test_fep_fault_dup_fsn);
    test_run("fep_fault_oversize", test_fep_fault_oversize);
    test_run("fep_fault_silent", test_fep_fault_silent);
    test_run("fep_fault_nack", test_fep_fault_nack);
    test_run("fep_fault_plaintext", test_fep_fault_plaintext);
    test_run("fep_fault_noread", test_fep_fault_noread);
    test_run("fep_fault_cut", test_fep_fault_cut);
    test_run("fep_fault_slowloris", test_fep_fault_slowloris);
    test_run("fep_session_timeout", test_fep_session_timeout);
    test_run("fep_poll_limit", test_fep_poll_limit);
    test_run("fep_push_fault_crc", test_fep_push_fault_crc);
    test_run("fep_push_fault_crc_always", test_fep_push_fault_crc_always);
    test_run("fep_push_fault_oversize", test_fep_push_fault_oversize);
    test_run("fep_push_fault_skip_fsn", test_fep_push_fault_skip_fsn);
    test_run("fep_push_fault_badtag", test_fep_push_fault_badtag);
    test_run("fep_push_fault_dup_fsn", test_fep_push_fault_dup_fsn);
    test_run("fep_push_fault_cut", test_fep_push_fault_cut);
    test_run("fep_push_fault_slowloris", test_fep_push_fault_slowloris);
    test_run("fep_push_unknown", test_fep_push_unknown);
    test_run("fep_push_busy", test_fep_push_busy);
    test_run("fep_push_while_polls_saturate", test_fep_push_while_polls_saturate);
    test_run("fep_polls_while_pushes_squat", test_fep_polls_while_pushes_squat);
    test_run("fep_push_idle", test_fep_push_idle);
    test_run("fep_push_next_while_closing", test_fep_push_next_while_closing);
    test_run("fep_restart_kill9", test_fep_restart_kill9);
    test_run("fep_store_dir_swap", test_fep_store_dir_swap);
    test_run("fep_store_fsync_eio", test_fep_store_fsync_eio);
    test_run("fep_config_errors", test_fep_config_errors);
    test_run("fep_cli", test_fep_cli);
    test_run("fep_bind_in_use", test_fep_bind_in_use);
    test_run("fep_data_dir_not_writable", test_fep_data_dir_not_writable);
    test_run("fep_state_dir_not_writable", test_fep_state_dir_not_writable);
    test_run("fep_sigterm_during_polls", test_fep_sigterm_during_polls);
    test_run("fep_sighup_reopen", test_fep_sighup_reopen);
    test_run("fep_metrics", test_fep_metrics);
    test_run("fep_reload", test_fep_reload);
    test_run("fep_reload_mark_survives", test_fep_reload_mark_survives);
    test_run("fep_reload_replace_all", test_fep_reload_replace_all);
    test_run("fep_reload_under_load", test_fep_reload_under_load);
    test_run("fep_rotate_push", test_fep_rotate_push);
    test_run("fep_rotate_kill9", test_fep_rotate_kill9);
    test_run("fep_rotate_full_disk", test_fep_rotate_full_disk);
    test_run("fep_rotate_postgres", test_fep_rotate_postgres);
    test_run("fep_rotate_config", test_fep_rotate_config);
    test_run("fep_stderr_not_drained", test_fep_stderr_not_drained);
}
