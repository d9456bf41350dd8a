/*
 * test_fault.c -- fepd under injected system-call faults and under SIGKILL.
 *
 * Real fepd_t and dcusim processes over 127.0.0.1, as in test_fep.c, judged
 * by what they leave behind: fepd's exit status and log (the allocation
 * count and the ledger it prints at exit), the CSV files, the state file
 * (a fault-free fepd_t must start on it) and dcusim's --acked-csv and
 * report line.
 *
 *   fault_sweep_*   One poll + push run per sweep point, fepd_t with
 *                   FEP_FAULT="OP:N:ERR" (sys.c makes call N of OP fail).
 *                   For each operation the sweep starts with an error that
 *                   fepd logs (its strerror text shows the fault fired) and
 *                   goes up N until the fault no longer fires: that bounds
 *                   the operation's call count in the run.  Errors fepd
 *                   absorbs silently (EINTR, EAGAIN, SHORT) are then swept
 *                   over the same range.
 *   fault_crash_*   fepd_t killed with SIGKILL after seeded random delays,
 *                   restarted on the same data_dir and state_dir each time,
 *                   with keyed DCUs polling and pushing throughout.
 *   fault_push_rules, fault_poll_rules, fault_start_refused,
 *   fault_slots_exhausted, fault_once_connect
 *                   peers and files that break the rules on purpose, which
 *                   dcusim does not: a raw client and a raw DCU in this
 *                   process, bad state files, too many connections.
 *
 * At every sweep point: fepd exits 0 (1 is --once only; 3 only when the
 * fault stopped its start-up), never by a signal and never hangs; no
 * allocation after start-up; the ledger balanced (slots and descriptors);
 * every record dcusim saw acknowledged is in lp.csv with its values; every
 * CSV line a whole row; no IC reused, no replay refused; and fepd_t starts
 * again, without faults, on the state and data it left.
 *
 * Sizes: `make test` runs a sample of N per operation and a few kill
 * points; FEP_TEST_LONG=1 (make test-long) every N up to the call count and
 * 100 kill points; FEP_FAULT_SWEEP=all also every error for every
 * operation and the sticky form "OP:N+:ERR".  FEP_CRASH_POINTS and
 * FEP_CRASH_SEED set the kill points and their seed.
 *
 * Owns: one directory per sweep point or crash test, removed at the end
 * unless $FEP_TEST_KEEP is set or a check failed (its path is printed);
 * the processes it starts, always reaped with a bounded wait.  The harness
 * uses plain POSIX calls, not sys.c: this binary is built with FEP_FAULT,
 * and faults meant for fepd_t must not reach the harness.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
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
#define SIM "./dcusim"
#define KEY_HEX "000102030405060708090a0b0c0d0e0f"
#define PATH_T 320
#define LINE_T 4096
#define ARGS_T 40
#define START_MS 5000                   /* a process to come up */
#define STOP_MS 8000                    /* fepd to stop after SIGTERM */
#define PUSH_MS 15000                   /* dcusim's pushes to be over */
#define CYCLE_MS 8000                   /* fepd's poll cycle to be over */

/* ------------------------------------------------------------------------
 * Time, logs, files
 * ---------------------------------------------------------------------- */

static int env_on(const char *name)
{
    const char *v = getenv(name);

    return v && *v && strcmp(v, "0") != 0;
}

static unsigned long env_ulong(const char *name, unsigned long dflt)
{
    const char *v = getenv(name);

    return v && *v ? strtoul(v, NULL, 10) : dflt;
}

/* ------------------------------------------------------------------------
 * A run's world: directory, ports, the three processes
 * ---------------------------------------------------------------------- */

struct run {
    char dir[256];
    char conf[PATH_T], conf_idle[PATH_T], data[PATH_T], state[PATH_T];
    char fep_log[PATH_T], poll_log[PATH_T], push_log[PATH_T];
    char poll_acked[PATH_T], push_acked[PATH_T], lp[PATH_T];
    char sim_addr[32], fep_addr[32];
    pid_t fep, poller, pusher;
    const char *what;                   /* the point, for failure messages */
    unsigned failures;                  /* checks of this run that failed */
};

static void run_path(const struct run *r, const char *name, char *out)
{
    snprintf(out, PATH_T, "%s/%s", r->dir, name);
}

static int run_init(struct run *r, const char *tag, const char *what)
{
    memset(r, 0, sizeof *r);
    r->fep = r->poller = r->pusher = -1;
    r->what = what;
    if (test_tmpdir(r->dir, sizeof r->dir, tag) != 0) {
        CHECK(!"cannot make a directory");
        return -1;
    }
    run_path(r, "fep.conf", r->conf);
    run_path(r, "idle.conf", r->conf_idle);
    run_path(r, "data", r->data);
    run_path(r, "state", r->state);
    run_path(r, "fepd.log", r->fep_log);
    run_path(r, "poll.log", r->poll_log);
    run_path(r, "push.log", r->push_log);
    run_path(r, "poll_acked.csv", r->poll_acked);
    run_path(r, "push_acked.csv", r->push_acked);
    run_path(r, "data/lp.csv", r->lp);
    snprintf(r->sim_addr, sizeof r->sim_addr, "127.0.0.1:%d", test_free_port());
    snprintf(r->fep_addr, sizeof r->fep_addr, "127.0.0.1:%d", test_free_port());
    return 0;
}

/* A check of a run: on failure the run is named once, and its directory
 * is kept for a look. */
#define RCHECK(r, c) run_check((r), !!(c), __LINE__, #c)
#define RCHECK_EQ(r, a, b) \
    run_check_eq((r), (long long)(a), (long long)(b), __LINE__, #a " == " #b)

static void run_failed(struct run *r)
{
    if (r->failures++ == 0)
        fprintf(stderr, "test_fault.c: %s failed; directory %s kept\n",
                r->what, r->dir);
}

static void run_check(struct run *r, int ok, int line, const char *expr)
{
    if (!ok)
        run_failed(r);
    test_check(ok, __FILE__, line, expr);
}

static void run_check_eq(struct run *r, long long a, long long b, int line,
                         const char *expr)
{
    if (a != b)
        run_failed(r);
    test_check_u64((uint64_t)a, (uint64_t)b, __FILE__, line, expr, "");
}

static void stop_pid(pid_t *pid, int sig, int ms)
{
    if (*pid <= 0)
        return;
    kill(*pid, sig);
    test_wait(*pid, ms);
    *pid = -1;
}

/* Whether pid has exited, without waiting: 1 with its status as
 * test_wait gives it (128 + signal when killed), or 0 while it runs. */
static int proc_exited(pid_t pid, int *status)
{
    int st;

    if (waitpid(pid, &st, WNOHANG) != pid)
        return 0;
    *status = WIFEXITED(st) ? WEXITSTATUS(st)
                            : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1;
    return 1;
}

/* Reaps whatever is still running, then removes the directory unless a
 * check failed or FEP_TEST_KEEP is set. */
static void run_end(struct run *r)
{
    stop_pid(&r->fep, SIGKILL, STOP_MS);
    stop_pid(&r->pusher, SIGKILL, STOP_MS);
    stop_pid(&r->poller, SIGKILL, STOP_MS);
    if (r->failures == 0 && !getenv("FEP_TEST_KEEP"))
        test_remove_tree(r->dir);
}

/* ------------------------------------------------------------------------
 * The processes
 * ---------------------------------------------------------------------- */

/* The key of DCU n as dcusim derives it (KEY_HEX, last 4 bytes XOR n). */
static void key_hex_of(unsigned n, char hex[2 * KEY_SIZE + 1])
{
    uint8_t key[KEY_SIZE];
    unsigned k;

    test_unhex(KEY_HEX, key, sizeof key);
    key[12] ^= (uint8_t)(n >> 24);
    key[13] ^= (uint8_t)(n >> 16);
    key[14] ^= (uint8_t)(n >> 8);
    key[15] ^= (uint8_t)n;
    for (k = 0; k < KEY_SIZE; k++)
        snprintf(hex + 2 * k, 3, "%02x", key[k]);
}

/* One DCU line: polled at addr (NULL: push only), keyed or plaintext. */
static void conf_dcu(FILE *f, unsigned n, const char *addr, int keyed,
                     const char *poll)
{
    char hex[2 * KEY_SIZE + 1] = "-";

    if (keyed)
        key_hex_of(n, hex);
    fprintf(f, "dcu DCU%05u %s key=%s poll=%s\n", n, addr ? addr : "-", hex,
            poll);
}

/* The head of a config: the run's directories, then directives (lines),
 * then the short timeouts every test wants unless directives set them. */
static void conf_head(FILE *f, const struct run *r, const char *directives)
{
    static const char *const timeouts[] = {
        "timeout_connect 1", "timeout_frame 0.5", "timeout_write 0.5",
        "timeout_idle 0.5", "timeout_session 4", NULL
    };
    unsigned i;

    fprintf(f, "fep_id FEP00001\ndata_dir %s\nstate_dir %s\n%s", r->data,
            r->state, directives);
    for (i = 0; timeouts[i]; i++) {
        char name[32];
        const char *p;
        size_t n = strcspn(timeouts[i], " ");
        int given = 0;

        snprintf(name, sizeof name, "%.*s ", (int)n, timeouts[i]);
        for (p = directives; (p = strstr(p, name)) != NULL; p++)
            given |= p == directives || p[-1] == '\n';
        if (!given)
            fprintf(f, "%s\n", timeouts[i]);
    }
}

static pid_t spawn(const char *const argv[], const char *log,
                   const char *fault)
{
    pid_t pid;

    /* Only the child is meant to see it: the variable is unset at once. */
    if (fault)
        setenv("FEP_FAULT", fault, 1);
    pid = test_spawn(argv, log);
    if (fault)
        unsetenv("FEP_FAULT");
    return pid;
}

/* dcusim answering polls on r->sim_addr; extra is NULL-terminated.  0 once
 * it listens. */
static int poller_start(struct run *r, const char *const *extra)
{
    const char *argv[ARGS_T];
    int n = 0;

    argv[n++] = SIM;
    argv[n++] = "--listen";
    argv[n++] = r->sim_addr;
    argv[n++] = "--timeout";
    argv[n++] = "1";
    argv[n++] = "--acked-csv";
    argv[n++] = r->poll_acked;
    while (*extra && n < ARGS_T - 1)
        argv[n++] = *extra++;
    argv[n] = NULL;
    r->poller = spawn(argv, r->poll_log, NULL);
    RCHECK(r, r->poller > 0);
    if (r->poller <= 0 ||
        test_wait_log(r->poll_log, "dcusim info: playing", 1, START_MS) != 0) {
        RCHECK(r, !"dcusim (polls) did not start");
        return -1;
    }
    return 0;
}

/* dcusim pushing to r->fep_addr; it exits when its pushes are over. */
static void pusher_start(struct run *r, const char *const *extra)
{
    const char *argv[ARGS_T];
    int n = 0;

    argv[n++] = SIM;
    argv[n++] = "--push";
    argv[n++] = r->fep_addr;
    argv[n++] = "--timeout";
    argv[n++] = "1";
    argv[n++] = "--acked-csv";
    argv[n++] = r->push_acked;
    while (*extra && n < ARGS_T - 1)
        argv[n++] = *extra++;
    argv[n] = NULL;
    r->pusher = spawn(argv, r->push_log, NULL);
    RCHECK(r, r->pusher > 0);
}

/* fepd_t -c conf as a daemon with FEP_FAULT=fault (may be NULL).  1 once
 * it has finished start-up; 0 when it exited before (its status in
 * *status), -1 when it did neither in time. */
static int fep_start(struct run *r, const char *conf, const char *fault,
                     int *status)
{
    const char *argv[] = { FEPD_T, "-c", conf, NULL };
    long started = test_log_count(r->fep_log, "static memory");
    int64_t deadline;

    /* A fepd still running here is a test's mistake: never leave it. */
    RCHECK(r, r->fep <= 0);
    stop_pid(&r->fep, SIGKILL, STOP_MS);
    deadline = sys_now_ms() + START_MS;
    r->fep = spawn(argv, r->fep_log, fault);
    RCHECK(r, r->fep > 0);
    if (r->fep <= 0)
        return -1;
    while (test_log_count(r->fep_log, "static memory") <= started) {
        if (proc_exited(r->fep, status)) {
            r->fep = -1;
            return 0;
        }
        if (sys_now_ms() >= deadline)
            return -1;
        test_sleep_ms(5);
    }
    return 1;
}

/* ------------------------------------------------------------------------
 * What a run leaves behind
 * ---------------------------------------------------------------------- */

/* Every line of a CSV file in data_dir is a whole row: `fields` fields,
 * ending in LF, the header once and first.  Returns the data rows, or -1
 * when some line is not whole.  (fepd's ids here hold no comma or quote,
 * so a field is what lies between commas.) */
static long csv_whole(const char *data_dir, const char *name, unsigned fields)
{
    char path[PATH_T + 32], line[LINE_T];
    FILE *f;
    long rows = 0, lineno = 0;
    int bad = 0;

    snprintf(path, sizeof path, "%s/%s", data_dir, name);
    f = fopen(path, "r");
    if (!f)
        return errno == ENOENT ? 0 : -1;
    while (fgets(line, sizeof line, f)) {
        size_t len = strlen(line);
        unsigned commas = 0;
        const char *p;

        lineno++;
        for (p = line; *p; p++)
            commas += *p == ',';
        if (len == 0 || line[len - 1] != '\n' || commas + 1 != fields)
            bad = 1;
        else if (strncmp(line, "dcu_id,", 7) == 0)
            bad |= lineno != 1;
        else
            rows++;
    }
    fclose(f);
    return bad ? -1 : rows;
}

static void check_csv_files(struct run *r)
{
    RCHECK(r, csv_whole(r->data, "lp.csv", 9) >= 0);
    RCHECK(r, csv_whole(r->data, "dcu_status.csv", 7) >= 0);
    RCHECK(r, csv_whole(r->data, "meter_status.csv", 5) >= 0);
    RCHECK(r, csv_whole(r->data, "meter_change.csv", 5) >= 0);
}

/* Rule 6: every record either dcusim saw acknowledged is in lp.csv.
 * Returns the number of acknowledged records. */
static size_t check_acked_stored(struct run *r)
{
    struct test_recs stored, acked;
    size_t n;

    memset(&stored, 0, sizeof stored);
    memset(&acked, 0, sizeof acked);
    test_recs_load(&stored, r->lp, 9);  /* a missing file adds nothing */
    test_recs_load(&acked, r->poll_acked, 6);
    test_recs_load(&acked, r->push_acked, 6);
    test_recs_sort(&stored);
    RCHECK_EQ(r, test_recs_missing(&stored, &acked), 0);
    n = acked.n;
    test_recs_free(&stored);
    test_recs_free(&acked);
    return n;
}

/* What fepd_t prints at every exit after start-up: nothing allocated, every
 * slot and descriptor given back. */
static void check_ledger(struct run *r, int started)
{
    char line[LINE_T];
    const char *a;

    if (started) {
        RCHECK(r, test_log_last_line(r->fep_log, "allocations after start-up: ",
                                line, sizeof line) == 0);
        a = strstr(line, "allocations after start-up: ");
        RCHECK(r, a && strtol(a + strlen("allocations after start-up: "),
                              NULL, 10) == 0);
    }
    if (test_log_last_line(r->fep_log, "ledger: slots", line, sizeof line) != 0) {
        RCHECK(r, !"no ledger line");
        return;
    }
    RCHECK_EQ(r, test_kv_get(line, "acquired"), test_kv_get(line, "released"));
    RCHECK_EQ(r, test_kv_get(line, "opened"), test_kv_get(line, "closed"));
}

/* dcusim's counter from its last report line; -1 when there is none. */
static long long sim_report(const char *log, const char *key)
{
    char line[LINE_T];

    return test_log_last_line(log, "dcusim: sessions=", line, sizeof line) == 0
               ? test_kv_get(line, key) : -1;
}

/* No IC of fepd's was seen twice, and no DCU frame was refused as a replay
 * (dcusim's ICs only grow, so a REPLAY NACK would be fepd's mistake). */
static void check_no_ic_reuse(struct run *r, const char *log)
{
    RCHECK(r, sim_report(log, "fep_ic_reused") == 0);
    RCHECK(r, sim_report(log, "nack_replay") == 0);
}

/* fepd_t, without faults and with nothing to do, starts on the state and
 * data the run left (the state file loads, the CSV tails need no cut) and
 * stops cleanly. */
static void check_restart(struct run *r, const char *idle_conf)
{
    long cut = test_log_count(r->fep_log, "torn last line");
    int status = -1, rc;

    rc = fep_start(r, idle_conf, NULL, &status);
    RCHECK_EQ(r, rc, 1);
    if (rc != 1)
        return;
    kill(r->fep, SIGTERM);
    RCHECK_EQ(r, test_wait(r->fep, STOP_MS), 0);
    r->fep = -1;
    check_ledger(r, 1);
    RCHECK_EQ(r, test_log_count(r->fep_log, "torn last line"), cut);
}

/* ========================================================================
 * 1. The system-call fault sweep
 * ====================================================================== */

/*
 * One run: 4 DCUs polled (2 keyed; poll k,s / k / k,m / k,n; 3 K packets
 * each) while 2 DCUs (1 keyed) push a K and an S session each.
 */
#define SWEEP_POLLED 4

static const char *const sweep_poller_args[] = {
    "--dcus", "4", "--key", KEY_HEX, "--keyed", "2", "--records", "20",
    "--per-packet", "8", "--meters", "2", NULL
};
static const char *const sweep_pusher_args[] = {
    "--dcus", "2", "--first", "11", "--key", KEY_HEX, "--keyed", "1",
    "--records", "20", "--per-packet", "8", "--push-cmds", "KS", NULL
};

static void sweep_conf(const struct run *r)
{
    static const char *const polls[SWEEP_POLLED] = { "k,s", "k", "k,m", "k,n" };
    char listen[64];
    FILE *f = fopen(r->conf, "w"), *g = fopen(r->conf_idle, "w");
    unsigned i;

    CHECK(f && g);
    if (!f || !g) {
        if (f)
            fclose(f);
        if (g)
            fclose(g);
        return;
    }
    snprintf(listen, sizeof listen, "listen %s\npoll_every 3600\n", r->fep_addr);
    conf_head(f, r, listen);
    /* The same DCUs and keys, nobody to poll and nowhere to listen. */
    conf_head(g, r, "");
    for (i = 0; i < SWEEP_POLLED; i++) {
        conf_dcu(f, i + 1, r->sim_addr, i < 2, polls[i]);
        conf_dcu(g, i + 1, NULL, i < 2, "k");
    }
    conf_dcu(f, 11, NULL, 1, "k");
    conf_dcu(f, 12, NULL, 0, "k");
    conf_dcu(g, 11, NULL, 1, "k");
    conf_dcu(g, 12, NULL, 0, "k");
    fclose(f);
    fclose(g);
}

struct sweep_stats {
    unsigned long calls;                /* the last N at which the loud error fired */
    unsigned points;                    /* runs made */
    unsigned fired_logged;              /* the error's text is in fepd's log */
    unsigned fired_bounded;             /* silent errors with N within the count */
    unsigned start_failures;            /* fepd refused to start (exit 3) */
    unsigned failed;                    /* points where a check failed */
    size_t acked;                       /* records acknowledged, all points */
};

/* One sweep point.  Returns 1 when the error's strerror text appears in
 * fepd's log (the fault fired where fepd reports it), else 0. */
static int sweep_point(const char *spec, int err, struct sweep_stats *st)
{
    struct run r;
    int started, status = -1, rc, fired;
    long sessions;

    if (run_init(&r, "sweep", spec) != 0)
        return 0;
    sweep_conf(&r);
    st->points++;
    if (poller_start(&r, sweep_poller_args) != 0) {
        run_end(&r);
        return 0;
    }
    started = fep_start(&r, r.conf, spec, &status);
    RCHECK(&r, started >= 0);
    if (started == 1) {
        pusher_start(&r, sweep_pusher_args);
        /* The pushes end by themselves; each wait of dcusim is bounded. */
        rc = test_wait(r.pusher, PUSH_MS);
        r.pusher = -1;
        RCHECK(&r, rc >= 0 && rc < 128);
        /* The poll cycle: a session line per DCU, or a failed connect. */
        sessions = 0;
        {
            int64_t deadline = sys_now_ms() + CYCLE_MS;

            while ((sessions = test_log_count(r.fep_log, "session poll ") +
                               test_log_count(r.fep_log, ": connect to ")) <
                       SWEEP_POLLED &&
                   sys_now_ms() < deadline && !proc_exited(r.fep, &status))
                test_sleep_ms(5);
            if (status != -1)
                r.fep = -1;             /* it stopped by itself: wrong */
        }
        RCHECK(&r, sessions >= SWEEP_POLLED);
        RCHECK_EQ(&r, status, -1);
        if (r.fep > 0) {
            kill(r.fep, SIGTERM);
            status = test_wait(r.fep, STOP_MS);
            r.fep = -1;
            RCHECK_EQ(&r, status, 0);
        }
    } else if (started == 0) {
        /* Only a start-up failure may end fepd before the run: exit 3. */
        RCHECK_EQ(&r, status, 3);
        st->start_failures++;
    } else {
        stop_pid(&r.fep, SIGKILL, STOP_MS);    /* hung in start-up */
    }
    stop_pid(&r.poller, SIGTERM, STOP_MS);
    check_ledger(&r, started == 1);
    check_csv_files(&r);
    st->acked += check_acked_stored(&r);
    check_no_ic_reuse(&r, r.poll_log);
    if (started == 1)
        check_no_ic_reuse(&r, r.push_log);
    check_restart(&r, r.conf_idle);
    fired = err != 0 && test_log_count(r.fep_log, strerror(err)) > 0;
    st->failed += r.failures > 0;
    run_end(&r);
    return fired;
}

struct fault_op {
    const char *op;
    const char *loud;                   /* an error fepd logs when it fires */
    int loud_errno;
    const char *quiet[3];               /* errors fepd absorbs, NULL-ended */
};

/* Every operation with an error fepd reports, and the ones it absorbs. */
static const struct fault_op fault_ops[] = {
    { "read", "ECONNRESET", ECONNRESET, { "EINTR", "SHORT", NULL } },
    { "write", "ECONNRESET", ECONNRESET, { "EAGAIN", "SHORT", NULL } },
    { "fwrite", "ENOSPC", ENOSPC, { "SHORT", "EINTR", NULL } },
    { "accept", "EMFILE", EMFILE, { "EAGAIN", NULL } },
    { "connect", "EMFILE", EMFILE, { NULL } },
    { "open", "EIO", EIO, { NULL } },
    { "fsync", "EIO", EIO, { NULL } },
    { "rename", "EIO", EIO, { NULL } },
};

/* FEP_FAULT_SWEEP=all: every error on every operation, loud or not. */
static const struct { const char *name; int err; } all_errors[] = {
    { "EINTR", EINTR }, { "EAGAIN", EAGAIN }, { "SHORT", 0 },
    { "ECONNRESET", ECONNRESET }, { "ENOSPC", ENOSPC }, { "EMFILE", EMFILE },
    { "EIO", EIO },
};

/* The N after n: every one, or (`make test`) every one up to 12, where
 * start-up's calls are (state load, saves, the store's four files), then
 * about a quarter more each time: 1 .. 12, 15, 18, 22, 27, 33, 41 ... */
static unsigned long next_n(unsigned long n, int every)
{
    return every || n < 12 ? n + 1 : n + n / 4;
}

/* The loud error of op, N going up until it stops firing: four points in
 * a row without it (gaps are expected: some calls fail quietly by design,
 * a read while closing for one).  Returns the last N at which it fired. */
static unsigned long sweep_loud(const struct fault_op *o, int every,
                                struct sweep_stats *st)
{
    unsigned long n, last = 0;
    unsigned misses = 0, misses_max = 4;
    char spec[64];

    for (n = 1; misses < misses_max && n < 100000; n = next_n(n, every)) {
        snprintf(spec, sizeof spec, "%s:%lu:%s", o->op, n, o->loud);
        if (sweep_point(spec, o->loud_errno, st)) {
            st->fired_logged++;
            last = n;
            misses = 0;
        } else {
            misses++;
        }
    }
    return last;
}

/* A quiet error over 1..last and a little beyond (the calls after the
 * last loud one, reads while closing for one).  Up to last it surely
 * fires: the loud error showed the run makes that many calls. */
static void sweep_quiet(const char *op, const char *err, unsigned long last,
                        int every, struct sweep_stats *st)
{
    unsigned long n, end = last + (every ? 4 : 2);
    char spec[64];

    for (n = 1; n <= end; n = next_n(n, every)) {
        snprintf(spec, sizeof spec, "%s:%lu:%s", op, n, err);
        sweep_point(spec, 0, st);
        st->fired_bounded += n <= last;
    }
}

/* Sticky: call n and every later one fail; sampled N up to last. */
static void sweep_sticky(const char *op, const char *err, int err_no,
                         unsigned long last, struct sweep_stats *st)
{
    unsigned long n;
    char spec[64];

    for (n = 1; n <= last; n = next_n(n, 0)) {
        snprintf(spec, sizeof spec, "%s:%lu+:%s", op, n, err);
        st->fired_logged += sweep_point(spec, err_no, st);
    }
}

static void sweep_report(const char *name, const struct sweep_stats *st)
{
    char calls[48] = "";

    if (st->calls > 0)
        snprintf(calls, sizeof calls, ", >= %lu calls a run", st->calls);
    printf("     %s: %u points, %u faults injected (%u seen in fepd's log, "
           "%u quiet ones within the call count%s), %u start-up refusals, "
           "%zu records acked, %u points failed\n",
           name, st->points, st->fired_logged + st->fired_bounded,
           st->fired_logged, st->fired_bounded, calls, st->start_failures,
           st->acked, st->failed);
}

static void sweep_op(const struct fault_op *o, int every, int all,
                     struct sweep_stats *st)
{
    unsigned long last = sweep_loud(o, every, st);
    size_t i;

    st->calls = last;
    /* Every operation is called in a run: a loud fault that never fired
     * means the sweep lost its bearings (or fepd stopped reporting it). */
    CHECK(last > 0);
    for (i = 0; o->quiet[i]; i++)
        sweep_quiet(o->op, o->quiet[i], last, every, st);
    if (every)
        sweep_sticky(o->op, o->loud, o->loud_errno, last, st);
    if (!all)
        return;
    /* Every other error, once at each N and sticky: fired when logged. */
    for (i = 0; i < sizeof all_errors / sizeof all_errors[0]; i++) {
        const char *name = all_errors[i].name;
        char spec[64];
        unsigned long n;

        if (strcmp(name, o->loud) == 0)
            continue;
        for (n = 1; n <= last + 2; n = next_n(n, every)) {
            snprintf(spec, sizeof spec, "%s:%lu:%s", o->op, n, name);
            st->fired_logged += sweep_point(spec, all_errors[i].err, st);
        }
        sweep_sticky(o->op, name, all_errors[i].err, last, st);
    }
}

static void fault_sweep(const char *name, const char *op)
{
    int every = env_on("FEP_TEST_LONG");
    int all = getenv("FEP_FAULT_SWEEP") && strcmp(getenv("FEP_FAULT_SWEEP"), "all") == 0;
    struct sweep_stats st;
    size_t i;

    memset(&st, 0, sizeof st);
    for (i = 0; i < sizeof fault_ops / sizeof fault_ops[0]; i++)
        if (strcmp(fault_ops[i].op, op) == 0)
            sweep_op(&fault_ops[i], every, all, &st);
    sweep_report(name, &st);
}

static void test_fault_sweep_read(void)
{
    fault_sweep("fault_sweep_read", "read");
}

static void test_fault_sweep_write(void)
{
    fault_sweep("fault_sweep_write", "write");
}

static void test_fault_sweep_fwrite(void)
{
    fault_sweep("fault_sweep_fwrite", "fwrite");
}

static void test_fault_sweep_accept(void)
{
    fault_sweep("fault_sweep_accept", "accept");
}

static void test_fault_sweep_connect(void)
{
    fault_sweep("fault_sweep_connect", "connect");
}

static void test_fault_sweep_open(void)
{
    fault_sweep("fault_sweep_open", "open");
}

static void test_fault_sweep_fsync(void)
{
    fault_sweep("fault_sweep_fsync", "fsync");
}

static void test_fault_sweep_rename(void)
{
    fault_sweep("fault_sweep_rename", "rename");
}

/* Sticky faults from the middle of a run on: every later call fails.
 * fepd must refuse what it cannot store (NACK STORE), time out what it
 * cannot write, and still stop cleanly with nothing acknowledged lost. */
static void test_fault_sweep_sticky(void)
{
    /* err 0: quiet, with N well within the call count the sweeps find. */
    static const struct { const char *spec; int err; } cases[] = {
        { "fsync:12+:EIO", EIO },
        { "fwrite:8+:ENOSPC", ENOSPC },
        { "open:12+:EMFILE", EMFILE },
        { "rename:2+:EIO", EIO },
        { "write:15+:EAGAIN", 0 },
        { "read:15+:EINTR", 0 },
        { "accept:2+:EMFILE", EMFILE },
        { "read:12+:ECONNRESET,write:12+:SHORT,fsync:20:EIO", ECONNRESET },
    };
    struct sweep_stats st;
    size_t i;

    memset(&st, 0, sizeof st);
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int fired = sweep_point(cases[i].spec, cases[i].err, &st);

        st.fired_logged += fired;
        st.fired_bounded += cases[i].err == 0;
        /* Each of these fires in every run. */
        CHECK(fired || cases[i].err == 0);
    }
    sweep_report("fault_sweep_sticky", &st);
}

/* ========================================================================
 * 2. Crash safety: SIGKILL at random points, restart on the same data
 * ====================================================================== */

static uint32_t crash_rand(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* A keyed DCU played by the test: before each kill it pushes a packet
 * that is not its last (so its session is still open at the kill) and
 * keeps the connection; after the restart, that very frame must be a
 * replay (PROTOCOL.md section 4: the mark is durable before the ACK). */
#define CRASH_RAW_DCU 200

static void crash_raw_key(gcm_key *key)
{
    char hex[2 * KEY_SIZE + 1];
    uint8_t k[KEY_SIZE];

    key_hex_of(CRASH_RAW_DCU, hex);
    test_unhex(hex, k, sizeof k);
    gcm_init(key, k);
}

/* Replays the frame ACKed before the last kill (NACK REPLAY expected),
 * then sends the next one; the connection of the ACKed one, or -1. */
static int crash_raw_push(struct run *r, const gcm_key *key, uint32_t *ic,
                          unsigned long *replays)
{
    char sid[FRAME_ID_SIZE + 1];
    int port = port_of(r->fep_addr), fd;

    snprintf(sid, sizeof sid, "DCU%05u", CRASH_RAW_DCU);
    if (*ic > 0) {
        fd = raw_connect(port);
        RCHECK(r, raw_send(fd, sid, "FEP00001", CTL_DIR_DCU, CMD_LP_RSP,
                           (uint16_t)*ic, 0, key, *ic) == 0);
        RCHECK_EQ(r, raw_answer(fd, key, NULL), NACK(FEP_ERR_REPLAY));
        *replays += 1;
        if (fd >= 0)
            close(fd);
    }
    fd = raw_connect(port);
    *ic += 1;
    if (raw_send(fd, sid, "FEP00001", CTL_DIR_DCU, CMD_LP_RSP, (uint16_t)*ic,
                 0, key, *ic) == 0 &&
        raw_answer(fd, key, NULL) == CMD_ACK)
        return fd;
    RCHECK(r, !"the raw DCU's push was not ACKed");
    if (fd >= 0)
        close(fd);
    *ic -= 1;                           /* nothing to replay next time */
    return -1;
}

/*
 * 4 keyed DCUs polled every 0.2 s (k,s,m,n; 50 records in 5 packets a
 * poll, so that kills land inside exchanges) while 20 keyed DCUs push K,
 * S, M and N sessions at 8 a second.  fepd_t is killed `points` times:
 * mostly at a random moment up to 400 ms after its start-up, sometimes
 * during start-up itself.  Then a last run without a kill, and the checks.
 */
static void test_fault_crash_keyed(void)
{
    static const char *const poller_args[] = {
        "--dcus", "4", "--key", KEY_HEX, "--records", "50", "--per-packet",
        "10", "--meters", "2", NULL
    };
    static const char *const pusher_args[] = {
        "--dcus", "20", "--first", "101", "--key", KEY_HEX, "--records", "30",
        "--per-packet", "10", "--push-cmds", "KSMN", "--push-rate", "8", NULL
    };
    unsigned long points = env_ulong("FEP_CRASH_POINTS",
                                     env_on("FEP_TEST_LONG") ? 100 : 6);
    uint32_t seed = (uint32_t)env_ulong("FEP_CRASH_SEED", 1);
    unsigned long i, survived = 0, in_startup = 0, replays = 0;
    int pushing = 0, raw_fd = -1;
    uint32_t raw_ic = 0;
    gcm_key raw_key;
    char listen[64];
    struct run r;
    long ok_before;
    size_t acked;
    FILE *f;

    if (seed == 0)
        seed = 1;
    if (run_init(&r, "crash", "fault_crash_keyed") != 0)
        return;
    f = fopen(r.conf, "w");
    CHECK(f != NULL);
    if (!f) {
        run_end(&r);
        return;
    }
    snprintf(listen, sizeof listen, "listen %s\npoll_every 0.2\n", r.fep_addr);
    conf_head(f, &r, listen);
    for (i = 1; i <= 4; i++)
        conf_dcu(f, (unsigned)i, r.sim_addr, 1, "k,s,m,n");
    for (i = 101; i <= 120; i++)
        conf_dcu(f, (unsigned)i, NULL, 1, "k");
    conf_dcu(f, CRASH_RAW_DCU, NULL, 1, "k");
    fclose(f);
    crash_raw_key(&raw_key);
    if (poller_start(&r, poller_args) != 0) {
        run_end(&r);
        return;
    }

    for (i = 0; i < points; i++) {
        uint32_t x = crash_rand(&seed);
        int status = -1, rc;

        if (x % 5 == 0) {
            /* During start-up: state load and save, store repair. */
            const char *argv[] = { FEPD_T, "-c", r.conf, NULL };

            r.fep = spawn(argv, r.fep_log, NULL);
            test_sleep_ms((int)(x >> 8) % 15);
            in_startup++;
        } else {
            rc = fep_start(&r, r.conf, NULL, &status);
            RCHECK_EQ(&r, rc, 1);
            if (rc != 1) {
                stop_pid(&r.fep, SIGKILL, STOP_MS);
                break;
            }
            if (!pushing)
                pusher_start(&r, pusher_args);
            pushing = 1;
            raw_fd = crash_raw_push(&r, &raw_key, &raw_ic, &replays);
            test_sleep_ms((int)(x >> 8) % 400);
        }
        kill(r.fep, SIGKILL);
        rc = test_wait(r.fep, STOP_MS);
        r.fep = -1;
        if (raw_fd >= 0)
            close(raw_fd);
        raw_fd = -1;
        /* Killed, or (during start-up) not yet started: never by itself. */
        RCHECK(&r, rc == 128 + SIGKILL);
        survived += rc == 128 + SIGKILL;
    }

    /* The last run: fepd_t must start on whatever the kills left, then
     * complete at least one more poll cycle of every DCU. */
    ok_before = test_log_count(r.fep_log, "ok records=");
    if (fep_start(&r, r.conf, NULL, &(int){ 0 }) == 1) {
        RCHECK(&r, test_wait_log(r.fep_log, "ok records=", ok_before + 8,
                            CYCLE_MS) == 0);
        kill(r.fep, SIGTERM);
        RCHECK_EQ(&r, test_wait(r.fep, STOP_MS), 0);
        r.fep = -1;
        check_ledger(&r, 1);
    } else {
        RCHECK(&r, !"fepd_t did not start after the kills");
    }
    stop_pid(&r.pusher, SIGTERM, STOP_MS);
    stop_pid(&r.poller, SIGTERM, STOP_MS);

    check_csv_files(&r);
    RCHECK(&r, csv_whole(r.data, "lp.csv", 9) > 0);
    acked = check_acked_stored(&r);
    RCHECK(&r, acked > 0);
    check_no_ic_reuse(&r, r.poll_log);
    check_no_ic_reuse(&r, r.push_log);
    printf("     fault_crash_keyed: %lu kill points survived (%lu during "
           "start-up), %zu records acked, %s lost, torn lines cut at "
           "restart: %ld, frames ACKed before a kill replayed after it: %lu, "
           "all NACK REPLAY\n",
           survived, in_startup, acked, r.failures ? "some may be" : "none",
           test_log_count(r.fep_log, "torn last line"), replays);
    run_end(&r);
}

/* ========================================================================
 * 3. Edges neither the sweep nor dcusim reach: a peer that breaks the
 *    protocol on purpose, files fepd must refuse to start on, slots
 *    exhausted.  Each names the receiver rule or start-up check it proves.
 * ====================================================================== */

/* Rules 4 and 5 of a push, one connection each: the header checks (DIR,
 * DID, a SID that changes), SEC towards a DCU without a key, an ACK where
 * a response belongs, a QSN that changes; and a keyed push that works.
 * DCU00021 and DCU00023 have no key, DCU00022 has one. */
#define FEP "FEP00001"
#define MORE_UP (CTL_DIR_DCU)
#define LAST_UP (CTL_DIR_DCU | CTL_LAST)

enum push_key { NO_KEY, KEY_21, KEY_22 };

static const struct push_case {
    const char *what;
    unsigned steps;
    struct push_step {
        const char *sid, *did;
        uint8_t ctl, cmd;
        uint16_t qsn, fsn;
        enum push_key sent_under;       /* the frame's protection */
        enum push_key answer_under;     /* how fepd's answer comes */
        int answer;                     /* raw_answer's value */
    } step[2];
    int closes;                         /* fepd closes the connection */
} push_cases[] = {
    { "DIR says FEP to DCU", 1,
      { { "DCU00021", FEP, CTL_LAST, CMD_LP_RSP, 1, 0, NO_KEY, NO_KEY,
          NACK(FEP_ERR_HEADER) } }, 1 },
    { "addressed to another FEP", 1,
      { { "DCU00021", "FEP00002", LAST_UP, CMD_LP_RSP, 1, 0, NO_KEY, NO_KEY,
          NACK(FEP_ERR_HEADER) } }, 0 },
    { "a second, known DCU on the connection", 2,
      { { "DCU00021", FEP, MORE_UP, CMD_LP_RSP, 2, 0, NO_KEY, NO_KEY, CMD_ACK },
        { "DCU00023", FEP, LAST_UP, CMD_LP_RSP, 2, 1, NO_KEY, NO_KEY,
          NACK(FEP_ERR_HEADER) } }, 0 },
    { "a second, unknown DCU on the connection", 2,
      { { "DCU00021", FEP, MORE_UP, CMD_LP_RSP, 3, 0, NO_KEY, NO_KEY, CMD_ACK },
        { "NOSUCH", FEP, LAST_UP, CMD_LP_RSP, 3, 1, NO_KEY, NO_KEY,
          NACK(FEP_ERR_UNKNOWN) } }, 0 },
    { "an unknown SID with a control byte (logged printably)", 1,
      { { "\001BAD", FEP, LAST_UP, CMD_LP_RSP, 3, 0, NO_KEY, NO_KEY,
          NACK(FEP_ERR_UNKNOWN) } }, 0 },
    { "protected, to a DCU fepd has no key for", 1,
      { { "DCU00021", FEP, LAST_UP, CMD_LP_RSP, 4, 0, KEY_21, NO_KEY,
          NACK(FEP_ERR_SECURITY) } }, 0 },
    { "a request from a DCU: a command of the other direction", 1,
      { { "DCU00021", FEP, LAST_UP, CMD_DCU_STATUS_REQ, 5, 0, NO_KEY, NO_KEY,
          NACK(FEP_ERR_HEADER) } }, 1 },
    { "an ACK is no data", 1,
      { { "DCU00023", FEP, LAST_UP, CMD_ACK, 5, 0, NO_KEY, NO_KEY,
          NACK(FEP_ERR_COMMAND) } }, 0 },
    { "a QSN that changes mid-exchange", 2,
      { { "DCU00023", FEP, MORE_UP, CMD_LP_RSP, 6, 0, NO_KEY, NO_KEY, CMD_ACK },
        { "DCU00023", FEP, LAST_UP, CMD_LP_RSP, 7, 1, NO_KEY, NO_KEY,
          NACK(FEP_ERR_SEQUENCE) } }, 0 },
    { "a keyed DCU: its ACK comes protected, under its key", 1,
      { { "DCU00022", FEP, LAST_UP, CMD_LP_RSP, 8, 0, KEY_22, KEY_22,
          CMD_ACK } }, 1 },
};

/* One case on a new connection; 0 when fepd answered as it must. */
static int push_case_run(int port, const struct push_case *c,
                         const gcm_key *const keys[3])
{
    int fd = raw_connect(port), ok = fd >= 0;
    unsigned i;

    for (i = 0; ok && i < c->steps; i++) {
        const struct push_step *p = &c->step[i];

        ok = raw_send(fd, p->sid, p->did, p->ctl, p->cmd, p->qsn, p->fsn,
                      keys[p->sent_under], 1) == 0 &&
             raw_answer(fd, keys[p->answer_under], NULL) == p->answer;
    }
    if (ok && c->closes)
        ok = raw_closed(fd, RAW_MS);
    if (fd >= 0)
        close(fd);
    if (!ok)
        printf("  push rule not kept: %s\n", c->what);
    return ok ? 0 : -1;
}

static void key_of_dcu(unsigned dcu, gcm_key *key)
{
    char hex[2 * KEY_SIZE + 1];
    uint8_t k[KEY_SIZE];

    key_hex_of(dcu, hex);
    test_unhex(hex, k, sizeof k);
    gcm_init(key, k);
}

static void test_fault_push_rules(void)
{
    char directives[128];
    gcm_key key21, key22;
    const gcm_key *const keys[3] = { NULL, &key21, &key22 };
    struct run r;
    size_t i;
    FILE *f;
    int st = -1;

    if (run_init(&r, "pushrules", "fault_push_rules") != 0)
        return;
    f = fopen(r.conf, "w");
    RCHECK(&r, f != NULL);
    if (!f) {
        run_end(&r);
        return;
    }
    snprintf(directives, sizeof directives, "listen %s\n", r.fep_addr);
    conf_head(f, &r, directives);
    conf_dcu(f, 21, NULL, 0, "k");
    conf_dcu(f, 22, NULL, 1, "k");
    conf_dcu(f, 23, NULL, 0, "k");
    fclose(f);
    key_of_dcu(21, &key21);
    key_of_dcu(22, &key22);
    if (fep_start(&r, r.conf, NULL, &st) == 1) {
        for (i = 0; i < sizeof push_cases / sizeof push_cases[0]; i++)
            RCHECK_EQ(&r, push_case_run(port_of(r.fep_addr), &push_cases[i],
                                        keys), 0);
        kill(r.fep, SIGTERM);
        RCHECK_EQ(&r, test_wait(r.fep, STOP_MS), 0);
        r.fep = -1;
        check_ledger(&r, 1);
        RCHECK(&r, test_log_count(r.fep_log, "?BAD") > 0);
        /* The records of the ACKed packets, and nothing of the others. */
        RCHECK_EQ(&r, csv_whole(r.data, "lp.csv", 9), 4);
    } else {
        RCHECK(&r, !"fepd did not start");
    }
    run_end(&r);
}

/* Rule 7 and the QSN of a poll, with fepd_t --once -v -v polling two DCUs
 * played here: DCU00031 answers its `s` with an ACK (the request ends
 * without a reply; the cycle goes on), DCU00032 answers with an S whose
 * QSN is not the request's (NACK SEQUENCE).  Both cycles fail: exit 1. */
static void test_fault_poll_rules(void)
{
    char addr[64], directives[64];
    int lfd, port = -1, i;
    struct run r;
    FILE *f;

    if (run_init(&r, "pollrules", "fault_poll_rules") != 0)
        return;
    lfd = dcu_listen(&port);
    RCHECK(&r, lfd >= 0);
    f = fopen(r.conf, "w");
    RCHECK(&r, f != NULL);
    if (lfd < 0 || !f) {
        if (f)
            fclose(f);
        if (lfd >= 0)
            close(lfd);
        run_end(&r);
        return;
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    snprintf(directives, sizeof directives, "timeout_frame 2\n");
    conf_head(f, &r, directives);
    conf_dcu(f, 31, addr, 0, "s");
    conf_dcu(f, 32, addr, 0, "s");
    conf_dcu(f, 33, NULL, 0, "k");      /* push only: not in the summary */
    fclose(f);
    {
        const char *argv[] = { FEPD_T, "-c", r.conf, "--once", "-v", "-v", NULL };

        r.fep = spawn(argv, r.fep_log, NULL);
    }
    for (i = 0; i < 2; i++) {
        int fd = dcu_accept(lfd), ans;
        frame req;
        char did[FRAME_ID_SIZE + 1];

        RCHECK(&r, fd >= 0);
        if (fd < 0)
            break;
        ans = raw_answer(fd, NULL, &req);
        RCHECK_EQ(&r, ans, CMD_DCU_STATUS_REQ);
        frame_id_str(req.did, did);
        if (strcmp(did, "DCU00031") == 0) {
            RCHECK(&r, raw_send(fd, did, "FEP00001", CTL_DIR_DCU | CTL_LAST,
                                CMD_ACK, req.qsn, 0, NULL, 0) == 0);
        } else {
            RCHECK(&r, raw_send(fd, did, "FEP00001", CTL_DIR_DCU | CTL_LAST,
                                CMD_DCU_STATUS_RSP, (uint16_t)(req.qsn + 1), 0,
                                NULL, 0) == 0);
            RCHECK_EQ(&r, raw_answer(fd, NULL, NULL), NACK(FEP_ERR_SEQUENCE));
        }
        RCHECK(&r, raw_closed(fd, RAW_MS));
        close(fd);
    }
    close(lfd);
    RCHECK_EQ(&r, test_wait(r.fep, STOP_MS), 1);
    r.fep = -1;
    RCHECK_EQ(&r, test_log_count(r.fep_log, "ACK instead of a response"), 1);
    RCHECK_EQ(&r, test_log_count(r.fep_log, "--once: DCU00031 failed"), 1);
    RCHECK_EQ(&r, test_log_count(r.fep_log, "--once: DCU00032 failed"), 1);
    RCHECK_EQ(&r, test_log_count(r.fep_log, "DCU00033 failed"), 0);
    RCHECK(&r, test_log_count(r.fep_log, "debug: sent") > 0);
    check_ledger(&r, 1);
    run_end(&r);
}

/* fepd_t with the run's config and a state file (or a FIFO where lp.csv
 * belongs, or the metrics port taken) it must refuse: exit 3, the problem
 * named in its log, nothing left open. */
static void start_refused(const char *tag, const char *state_text, int fifo,
                          int metrics_taken, const char *needle)
{
    char path[PATH_T + 32], directives[96] = "";
    int lfd = -1, port = -1, st = -1, rc;
    struct run r;
    FILE *f;

    if (run_init(&r, tag, tag) != 0)
        return;
    mkdir(r.state, 0755);
    mkdir(r.data, 0755);
    if (state_text) {
        snprintf(path, sizeof path, "%s/fepd.state", r.state);
        f = fopen(path, "w");
        RCHECK(&r, f && fwrite(state_text, 1, strlen(state_text) + (fifo < 0),
                               f) > 0);
        if (f)
            fclose(f);
    }
    if (fifo > 0) {
        snprintf(path, sizeof path, "%s/lp.csv", r.data);
        RCHECK(&r, mkfifo(path, 0644) == 0);
    }
    if (metrics_taken) {
        lfd = dcu_listen(&port);
        snprintf(directives, sizeof directives, "metrics 127.0.0.1:%d\n", port);
    }
    f = fopen(r.conf, "w");
    RCHECK(&r, f != NULL);
    if (f) {
        conf_head(f, &r, directives);
        conf_dcu(f, 1, NULL, 1, "k");
        conf_dcu(f, 2, NULL, 0, "k");
        fclose(f);
        rc = fep_start(&r, r.conf, NULL, &st);
        RCHECK_EQ(&r, rc, 0);
        RCHECK_EQ(&r, st, 3);
        RCHECK(&r, test_log_count(r.fep_log, needle) > 0);
        check_ledger(&r, 0);
    }
    if (lfd >= 0)
        close(lfd);
    run_end(&r);
}

static void test_fault_start_refused(void)
{
    /* A state file fepd cannot read: it will not guess the ICs. */
    start_refused("st-tx", "fepd-state 2 1\ntx zz\n", 0, 0,
                  "fepd.state:2: tx:");
    start_refused("st-rx", "fepd-state 2 1\nrx DCU00001 0011\n", 0, 0,
                  "fepd.state:2: rx:");
    start_refused("st-dcu", "fepd-state 2 1\ndcu DCU00001 x 1 2 3\n", 0, 0,
                  "fepd.state:2: dcu:");
    start_refused("st-head", "tx zz\n", 0, 0, "fepd.state:1: no header line");
    start_refused("st-end", "fepd-state 2 1\n", 0, 0,
                  "fepd.state:2: no end line: the file is truncated");
    /* fifo < 0: the text's NUL terminator is written too. */
    start_refused("st-nul", "# x", -1, 0, "NUL byte");
    /* Not a regular file where lp.csv belongs. */
    start_refused("st-fifo", NULL, 1, 0, "lp.csv");
    start_refused("st-metrics", NULL, 0, 1, "metrics");
}

/* More connections than slots: past max_sessions a connection gets a
 * REJECT slot (NACK BUSY), past those it is closed at once; metrics past
 * its slots too.  A metrics client that says nothing and closes, and one
 * that sends more than its request, are served and closed. */
static void test_fault_slots_exhausted(void)
{
    char directives[160], buf[8192];
    int fds[1 + REJECT_SLOTS + 2], mfd[METRICS_SLOTS + 1], i, st = -1;
    int mport = test_free_port();
    struct run r;
    FILE *f;

    if (run_init(&r, "slots", "fault_slots_exhausted") != 0)
        return;
    f = fopen(r.conf, "w");
    RCHECK(&r, f != NULL);
    if (!f) {
        run_end(&r);
        return;
    }
    snprintf(directives, sizeof directives,
             "listen %s\nmetrics 127.0.0.1:%d\nmax_sessions 1\n"
             "timeout_idle 5\ntimeout_frame 5\n", r.fep_addr, mport);
    conf_head(f, &r, directives);
    conf_dcu(f, 1, NULL, 0, "k");
    fclose(f);
    if (fep_start(&r, r.conf, NULL, &st) == 1) {
        int n = (int)(sizeof fds / sizeof fds[0]), closed = 0;
        int m = (int)(sizeof mfd / sizeof mfd[0]), mclosed = 0;

        for (i = 0; i < n; i++)
            fds[i] = raw_connect(port_of(r.fep_addr));
        /* The last two found no slot at all. */
        for (i = 0; i < n; i++)
            closed += fds[i] >= 0 && raw_closed(fds[i], i < n - 2 ? 50 : RAW_MS);
        RCHECK_EQ(&r, closed, 2);
        for (i = 0; i < m; i++)
            mfd[i] = raw_connect(mport);
        for (i = 0; i < m; i++)
            mclosed += mfd[i] >= 0 && raw_closed(mfd[i], i < m - 1 ? 50 : RAW_MS);
        RCHECK_EQ(&r, mclosed, 1);
        /* A metrics client that sends its request and more. */
        {
            static const char req[] = "GET /metrics HTTP/1.0\r\n\r\nmore bytes";
            ssize_t got = 0, k;

            RCHECK(&r, write(mfd[0], req, sizeof req - 1) == (ssize_t)(sizeof req - 1));
            while ((k = read(mfd[0], buf + got, sizeof buf - 1 - (size_t)got)) > 0)
                got += k;
            buf[got > 0 ? got : 0] = '\0';
            RCHECK(&r, strncmp(buf, "HTTP/1.0 200", 12) == 0);
        }
        for (i = 0; i < n; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        for (i = 0; i < m; i++)
            if (mfd[i] >= 0)
                close(mfd[i]);
        kill(r.fep, SIGTERM);
        RCHECK_EQ(&r, test_wait(r.fep, STOP_MS), 0);
        r.fep = -1;
        check_ledger(&r, 1);
    } else {
        RCHECK(&r, !"fepd did not start");
    }
    run_end(&r);
}

/* --once when a connect fails at once (EMFILE): that DCU's cycle is
 * counted failed and the run still ends, exit 1. */
static void test_fault_once_connect(void)
{
    const char *argv[5];
    struct run r;
    FILE *f;
    int rc;

    if (run_init(&r, "onceconn", "fault_once_connect") != 0)
        return;
    f = fopen(r.conf, "w");
    RCHECK(&r, f != NULL);
    if (!f) {
        run_end(&r);
        return;
    }
    conf_head(f, &r, "");
    conf_dcu(f, 1, r.sim_addr, 0, "k");    /* nobody listens there */
    conf_dcu(f, 2, NULL, 0, "k");
    fclose(f);
    argv[0] = FEPD_T;
    argv[1] = "-c";
    argv[2] = r.conf;
    argv[3] = "--once";
    argv[4] = NULL;
    r.fep = spawn(argv, r.fep_log, "connect:1:EMFILE");
    rc = test_wait(r.fep, STOP_MS);
    r.fep = -1;
    RCHECK_EQ(&r, rc, 1);
    RCHECK_EQ(&r, test_log_count(r.fep_log, "--once: DCU00001 failed: could not connect"), 1);
    check_ledger(&r, 1);
    run_end(&r);
}

void test_fault_suite(void)
{
    test_run("fault_sweep_read", test_fault_sweep_read);
    test_run("fault_sweep_write", test_fault_sweep_write);
    test_run("fault_sweep_fwrite", test_fault_sweep_fwrite);
    test_run("fault_sweep_accept", test_fault_sweep_accept);
    test_run("fault_sweep_connect", test_fault_sweep_connect);
    test_run("fault_sweep_open", test_fault_sweep_open);
    test_run("fault_sweep_fsync", test_fault_sweep_fsync);
    test_run("fault_sweep_rename", test_fault_sweep_rename);
    test_run("fault_sweep_sticky", test_fault_sweep_sticky);
    test_run("fault_crash_keyed", test_fault_crash_keyed);
    test_run("fault_push_rules", test_fault_push_rules);
    test_run("fault_poll_rules", test_fault_poll_rules);
    test_run("fault_start_refused", test_fault_start_refused);
    test_run("fault_slots_exhausted", test_fault_slots_exhausted);
    test_run("fault_once_connect", test_fault_once_connect);
}
