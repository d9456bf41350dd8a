/*
 * test_daemon.c -- fepd under a service manager: -V, the sd_notify
 * messages (READY, STOPPING, WATCHDOG, RELOADING), the journal's priority
 * prefix, the pidfile, and --check predicting what start-up does.
 *
 * Real fepd_t processes, real sockets: the test plays the service manager
 * with its own AF_UNIX datagram socket, and plays the other owner of a port
 * or a pidfile with its own sockets and processes.  One test, the RELOADING
 * message, calls sys.c in this process, because the reload that sends it
 * belongs to fep.c's SIGHUP handling.
 *
 * Owns: one directory per test (struct dworld: config, data, state, logs,
 * the notify socket, the pidfile), removed at the end unless $FEP_TEST_KEEP
 * is set; every process a test starts, reaped by dw_stop or dw_end.  The
 * environment variables a child must see (NOTIFY_SOCKET, WATCHDOG_*,
 * JOURNAL_STREAM) are set just for the fork and unset at once.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fep.h"
#include "test.h"

#define FEPD_T "./fepd_t"
#define SIM "./dcusim"
#define PATH_T 320
#define LINE_T 4096
#define START_MS 5000                   /* fepd to come up */
#define STOP_MS 5000                    /* fepd to exit after a signal */
#define RUN_MS 15000                    /* a whole --check or --once */
#define ENV_MAX 4

struct dworld {
    char dir[256];
    char conf[PATH_T], data[PATH_T], state[PATH_T], log[PATH_T];
    char pidfile[PATH_T], notify[PATH_T];
    int listen_port, metrics_port;
    pid_t fep;
};

/* An environment variable for a child: value NULL leaves it unset. */
struct env {
    const char *name;
    const char *value;
};

static void dw_path(const struct dworld *w, const char *name, char *out)
{
    snprintf(out, PATH_T, "%s/%s", w->dir, name);
}

static void dw_init(struct dworld *w, const char *tag)
{
    memset(w, 0, sizeof *w);
    w->fep = -1;
    CHECK(test_tmpdir(w->dir, sizeof w->dir, tag) == 0);
    dw_path(w, "fep.conf", w->conf);
    dw_path(w, "data", w->data);
    dw_path(w, "state", w->state);
    dw_path(w, "fepd.log", w->log);
    dw_path(w, "fepd.pid", w->pidfile);
    dw_path(w, "notify.sock", w->notify);
    w->listen_port = test_free_port();
    w->metrics_port = test_free_port();
}

static void dw_end(struct dworld *w)
{
    if (w->fep > 0) {
        CHECK(!"fepd still running at the end of the test");
        kill(w->fep, SIGKILL);
        test_wait(w->fep, STOP_MS);
    }
    w->fep = -1;
    if (!getenv("FEP_TEST_KEEP"))
        test_remove_tree(w->dir);
}

/* The config: short timeouts, listen and metrics, one push-only DCU unless
 * extra has dcu lines, then extra (whole lines). */
static void dw_conf(const struct dworld *w, const char *extra)
{
    char text[4096];

    snprintf(text, sizeof text,
             "fep_id FEP1\n"
             "data_dir %s\nstate_dir %s\n"
             "listen 127.0.0.1:%d\nmetrics 127.0.0.1:%d\n"
             "timeout_connect 1\ntimeout_frame 0.5\ntimeout_write 0.5\n"
             "timeout_idle 0.5\ntimeout_session 10\n%s%s",
             w->data, w->state, w->listen_port, w->metrics_port,
             strstr(extra, "dcu ") ? "" : "dcu D1 - key=-\n", extra);
    CHECK(test_write_file(w->conf, text) == 0);
}

/* ------------------------------------------------------------------------
 * Processes
 * ---------------------------------------------------------------------- */

/* argv (NULL-terminated) with env set for the child only; output to log. */
static pid_t spawn_env(const char *const argv[], const char *log,
                       const struct env *env)
{
    pid_t pid;
    int i;

    for (i = 0; env && i < ENV_MAX && env[i].name; i++)
        if (env[i].value)
            setenv(env[i].name, env[i].value, 1);
    pid = test_spawn(argv, log);
    for (i = 0; env && i < ENV_MAX && env[i].name; i++)
        unsetenv(env[i].name);
    CHECK(pid > 0);
    return pid;
}

/* fepd_t -c conf [opt] to the end; its exit status. */
static int fep_run(const struct dworld *w, const char *opt, const char *log,
                   const struct env *env)
{
    const char *argv[] = { FEPD_T, "-c", w->conf, opt, NULL };
    pid_t pid = spawn_env(argv, log, env);

    return pid > 0 ? test_wait(pid, RUN_MS) : -1;
}

/* fepd_t as a daemon; 0 once start-up is over (its "static memory" line),
 * -1 when it exited or did not get there in time (then reaped). */
static int dw_start(struct dworld *w, const struct env *env)
{
    const char *argv[] = { FEPD_T, "-c", w->conf, NULL };
    long started = test_log_count(w->log, "static memory");

    w->fep = spawn_env(argv, w->log, env);
    if (w->fep > 0 &&
        test_wait_log(w->log, "static memory", started + 1, START_MS) == 0)
        return 0;
    if (w->fep > 0) {
        kill(w->fep, SIGKILL);
        test_wait(w->fep, STOP_MS);
    }
    w->fep = -1;
    return -1;
}

/* SIGTERM; the exit status. */
static int dw_stop(struct dworld *w)
{
    int rc;

    if (w->fep <= 0)
        return -1;
    kill(w->fep, SIGTERM);
    rc = test_wait(w->fep, STOP_MS);
    w->fep = -1;
    return rc;
}

/* What every fepd_t run that served leaves at exit: no allocation after
 * start-up, every descriptor (the notify socket's included) closed. */
static void check_clean_exit(const char *log)
{
    char line[LINE_T];

    CHECK(test_log_count(log, "allocations after start-up: 0") >= 1);
    CHECK(test_log_last_line(log, "ledger: slots", line, sizeof line) == 0);
    CHECK(test_kv_get(line, "opened") > 0);
    CHECK_EQ(test_kv_get(line, "opened"), test_kv_get(line, "closed"));
}

/* The whole of a file, or "" (for comparisons and searches). */
static const char *file_text(const char *path)
{
    static char buf[65536];

    if (test_read_file(path, buf, sizeof buf) < 0)
        buf[0] = '\0';
    return buf;
}

/* ------------------------------------------------------------------------
 * The service manager's side: a datagram socket
 * ---------------------------------------------------------------------- */

/* A bound AF_UNIX datagram socket: a path, or with abstract an abstract
 * name (no NUL after it, as sd_notify addresses it); -1 on failure. */
static int notify_bind(const char *name, int abstract)
{
    struct sockaddr_un a;
    size_t n = strlen(name);
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);

    if (fd < 0 || n + 1 >= sizeof a.sun_path) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    memcpy(a.sun_path + (abstract ? 1 : 0), name, n);
    if (bind(fd, (struct sockaddr *)&a,
             (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
                         (abstract ? 1 : 0))) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* The next datagram within ms into buf (NUL-terminated): its length, or
 * -1 when none came. */
static int notify_recv(int fd, char *buf, size_t cap, int ms)
{
    fd_set r;
    struct timeval tv;
    ssize_t n;

    FD_ZERO(&r);
    FD_SET(fd, &r);
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (long)(ms % 1000) * 1000;
    if (select(fd + 1, &r, NULL, NULL, &tv) <= 0)
        return -1;
    n = recv(fd, buf, cap - 1, 0);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    return (int)n;
}

/* Waits up to ms for a datagram equal to want; the others are counted in
 * *others when given.  0 or -1. */
static int notify_wait(int fd, const char *want, int ms, int *others)
{
    int64_t deadline = sys_now_ms() + ms;
    char buf[512];

    for (;;) {
        int64_t left = deadline - sys_now_ms();

        if (left <= 0 || notify_recv(fd, buf, sizeof buf, (int)left) < 0)
            return -1;
        if (strcmp(buf, want) == 0)
            return 0;
        if (others)
            (*others)++;
    }
}

/* Datagrams equal to want that arrive within ms; any other counts in
 * *others. */
static int notify_count(int fd, const char *want, int ms, int *others)
{
    int64_t deadline = sys_now_ms() + ms;
    char buf[512];
    int n = 0;

    for (;;) {
        int64_t left = deadline - sys_now_ms();

        if (left <= 0 || notify_recv(fd, buf, sizeof buf, (int)left) < 0)
            return n;
        if (strcmp(buf, want) == 0)
            n++;
        else
            (*others)++;
    }
}

/* ------------------------------------------------------------------------
 * -V and the version everywhere it is shown
 * ---------------------------------------------------------------------- */

static void check_version_output(const struct dworld *w, const char *prog,
                                 const char *opt, const char *want)
{
    const char *argv[] = { prog, opt, NULL };
    char out[PATH_T];

    dw_path(w, "version.out", out);
    unlink(out);
    CHECK_EQ(test_wait(spawn_env(argv, out, NULL), RUN_MS), 0);
    CHECK(strcmp(file_text(out), want) == 0);
}

static void test_daemon_version(void)
{
    static char body[1 << 16];
    struct dworld w;
    char help[PATH_T];
    const char *argv[] = { FEPD_T, "-h", NULL };

    dw_init(&w, "daemon-version");
    CHECK(strcmp(FEP_VERSION, "1.1.0") == 0);
    check_version_output(&w, FEPD_T, "-V", "fepd " FEP_VERSION "\n");
    check_version_output(&w, FEPD_T, "--version", "fepd " FEP_VERSION "\n");
    check_version_output(&w, SIM, "-V", "dcusim " FEP_VERSION "\n");
    check_version_output(&w, SIM, "--version", "dcusim " FEP_VERSION "\n");
    dw_path(&w, "help.out", help);
    CHECK_EQ(test_wait(spawn_env(argv, help, NULL), RUN_MS), 0);
    CHECK(strstr(file_text(help), "-V, --version") != NULL);

    /* The start-up line and the metric. */
    dw_conf(&w, "");
    if (dw_start(&w, NULL) == 0) {
        CHECK(test_log_count(w.log, "fepd info: fepd " FEP_VERSION " FEP1: ") == 1);
        CHECK(test_http_get(w.metrics_port, "/metrics", body, sizeof body,
                            RAW_MS) > 0);
        CHECK(strstr(body, "\n# TYPE fep_build_info gauge\n"
                           "fep_build_info{version=\"" FEP_VERSION "\"} 1\n") != NULL);
        CHECK_EQ(dw_stop(&w), 0);
    } else {
        CHECK(!"fepd did not start");
    }
    dw_end(&w);
}

/* ------------------------------------------------------------------------
 * NOTIFY_SOCKET
 * ---------------------------------------------------------------------- */

/* READY=1 once fepd serves (its ports accept), nothing while it runs, then
 * STOPPING=1 at SIGTERM; name is the socket ("@..." abstract). */
static void notify_ready_stopping(struct dworld *w, const char *name)
{
    struct env env[] = { { "NOTIFY_SOCKET", name }, { NULL, NULL } };
    char buf[512];
    int fd = notify_bind(name[0] == '@' ? name + 1 : name, name[0] == '@');
    int others = 0, c;

    CHECK(fd >= 0);
    if (fd < 0)
        return;
    dw_conf(w, "");
    CHECK(dw_start(w, env) == 0);
    CHECK(notify_wait(fd, "READY=1", START_MS, &others) == 0);
    CHECK_EQ(others, 0);
    /* Sent only once the listeners were bound. */
    c = raw_connect(w->metrics_port);
    CHECK(c >= 0);
    if (c >= 0)
        close(c);
    CHECK(notify_recv(fd, buf, sizeof buf, 300) < 0);
    CHECK_EQ(dw_stop(w), 0);
    CHECK(notify_recv(fd, buf, sizeof buf, 1000) > 0);
    CHECK(strcmp(buf, "STOPPING=1") == 0);
    CHECK(notify_recv(fd, buf, sizeof buf, 100) < 0);
    check_clean_exit(w->log);
    CHECK_EQ(test_log_count(w->log, "NOTIFY_SOCKET"), 0);
    close(fd);
}

static void test_daemon_notify_path(void)
{
    struct dworld w;

    dw_init(&w, "daemon-notify");
    notify_ready_stopping(&w, w.notify);
    dw_end(&w);
}

static void test_daemon_notify_abstract(void)
{
#ifdef __linux__
    struct dworld w;
    char name[96];

    dw_init(&w, "daemon-abstract");
    snprintf(name, sizeof name, "@fep-test-notify-%ld-%lld", (long)getpid(),
             (long long)sys_now_ms());
    notify_ready_stopping(&w, name);
    dw_end(&w);
#endif
}

/* WATCHDOG_USEC=200000: WATCHDOG=1 every 100 ms, as a deadline of the
 * loop of an idle fepd; not for another WATCHDOG_PID. */
static void test_daemon_notify_watchdog(void)
{
    struct dworld w;
    struct env env[] = { { "NOTIFY_SOCKET", NULL },
                         { "WATCHDOG_USEC", "200000" },
                         { "WATCHDOG_PID", NULL }, { NULL, NULL } };
    int fd, others = 0, n;

    dw_init(&w, "daemon-watchdog");
    env[0].value = w.notify;
    fd = notify_bind(w.notify, 0);
    CHECK(fd >= 0);
    dw_conf(&w, "");
    if (fd >= 0 && dw_start(&w, env) == 0) {
        CHECK(notify_wait(fd, "READY=1", START_MS, &others) == 0);
        n = notify_count(fd, "WATCHDOG=1", 1000, &others);
        CHECK(n >= 5);                  /* 10 due; a loaded machine lags */
        CHECK(n <= 12);
        CHECK_EQ(others, 0);
        CHECK_EQ(dw_stop(&w), 0);
        CHECK(notify_wait(fd, "STOPPING=1", 1000, NULL) == 0);
        check_clean_exit(w.log);
    }

    /* Meant for another process (pid 1 is never this fepd): no watchdog. */
    env[2].value = "1";
    if (fd >= 0 && dw_start(&w, env) == 0) {
        CHECK(notify_wait(fd, "READY=1", START_MS, NULL) == 0);
        others = 0;
        CHECK_EQ(notify_count(fd, "WATCHDOG=1", 500, &others), 0);
        CHECK_EQ(others, 0);
        CHECK_EQ(dw_stop(&w), 0);
    }
    if (fd >= 0)
        close(fd);
    dw_end(&w);
}

/* Without NOTIFY_SOCKET nothing changes; with a socket nobody listens on,
 * or a name that is no socket address, fepd serves and logs it once. */
static void test_daemon_notify_absent(void)
{
    struct dworld w;
    char missing[PATH_T];
    struct env env[] = { { "NOTIFY_SOCKET", NULL },
                         { "WATCHDOG_USEC", "100000" }, { NULL, NULL } };

    dw_init(&w, "daemon-nonotify");
    dw_conf(&w, "");
    unsetenv("NOTIFY_SOCKET");
    CHECK(dw_start(&w, NULL) == 0);
    test_sleep_ms(200);
    CHECK_EQ(dw_stop(&w), 0);
    CHECK_EQ(test_log_count(w.log, "NOTIFY_SOCKET"), 0);
    check_clean_exit(w.log);

    dw_path(&w, "nobody.sock", missing);
    env[0].value = missing;
    unlink(w.log);
    CHECK(dw_start(&w, env) == 0);
    test_sleep_ms(300);                 /* READY and WATCHDOGs all fail */
    CHECK_EQ(dw_stop(&w), 0);
    CHECK_EQ(test_log_count(w.log, "NOTIFY_SOCKET"), 1);
    CHECK_EQ(test_log_count(w.log, "cannot send READY=1"), 1);
    check_clean_exit(w.log);

    env[0].value = "relative/name";
    unlink(w.log);
    CHECK(dw_start(&w, env) == 0);
    CHECK_EQ(dw_stop(&w), 0);
    CHECK_EQ(test_log_count(w.log, "not a socket path or @name"), 1);
    check_clean_exit(w.log);
    dw_end(&w);
}

/* The messages of a reload, sent by sys.c in this process. */
static void test_daemon_notify_reloading(void)
{
    struct dworld w;
    struct timespec t0, t1;
    sys_ledger before, after;
    unsigned long long usec, lo, hi;
    char buf[512], *p;
    int fd;

    dw_init(&w, "daemon-reload");
    fd = notify_bind(w.notify, 0);
    CHECK(fd >= 0);
    before = sys_ledger_get();
    setenv("NOTIFY_SOCKET", w.notify, 1);
    sys_notify_open();
    unsetenv("NOTIFY_SOCKET");
    clock_gettime(CLOCK_MONOTONIC, &t0);
    sys_notify_reloading();
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK(notify_recv(fd, buf, sizeof buf, 1000) > 0);
    CHECK(strncmp(buf, "RELOADING=1\nMONOTONIC_USEC=", 27) == 0);
    usec = strtoull(buf + 27, &p, 10);
    CHECK(*p == '\0');
    lo = (unsigned long long)t0.tv_sec * 1000000u + (unsigned long long)t0.tv_nsec / 1000u;
    hi = (unsigned long long)t1.tv_sec * 1000000u + (unsigned long long)t1.tv_nsec / 1000u;
    CHECK(usec >= lo && usec <= hi);
    sys_notify("READY=1");
    CHECK(notify_recv(fd, buf, sizeof buf, 1000) > 0);
    CHECK(strcmp(buf, "READY=1") == 0);

    /* The watchdog period from the environment. */
    CHECK_EQ(sys_notify_watchdog_ms(), 0);
    setenv("WATCHDOG_USEC", "200000", 1);
    CHECK_EQ(sys_notify_watchdog_ms(), 100);
    setenv("WATCHDOG_PID", "1", 1);
    CHECK_EQ(sys_notify_watchdog_ms(), 0);
    snprintf(buf, sizeof buf, "%ld", (long)getpid());
    setenv("WATCHDOG_PID", buf, 1);
    CHECK_EQ(sys_notify_watchdog_ms(), 100);
    setenv("WATCHDOG_USEC", "1500", 1);
    CHECK_EQ(sys_notify_watchdog_ms(), 1);
    setenv("WATCHDOG_USEC", "12x", 1);
    CHECK_EQ(sys_notify_watchdog_ms(), 0);
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");

    sys_notify_close();
    sys_notify("READY=1");              /* closed: nothing, no failure */
    CHECK(notify_recv(fd, buf, sizeof buf, 100) < 0);
    after = sys_ledger_get();
    CHECK_EQ(after.opened - before.opened, 1);
    CHECK_EQ(after.closed - before.closed, 1);
    if (fd >= 0)
        close(fd);
    dw_end(&w);
}

/* ------------------------------------------------------------------------
 * The journal's priority prefix
 * ---------------------------------------------------------------------- */

/* Lines of path that start with prefix; *all counts every line. */
static long lines_starting(const char *path, const char *prefix, long *all)
{
    FILE *f = fopen(path, "r");
    char line[LINE_T];
    long n = 0;

    *all = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f)) {
        (*all)++;
        n += strncmp(line, prefix, strlen(prefix)) == 0;
    }
    fclose(f);
    return n;
}

/* JOURNAL_STREAM naming the log file's device and inode (or, with wrong,
 * one inode off); a --once -v of a DCU that never answers logs at every
 * level.  Its exit status. */
static int journal_run(const struct dworld *w, int wrong)
{
    struct env env[] = { { "JOURNAL_STREAM", NULL }, { NULL, NULL } };
    char value[64];
    const char *argv[] = { FEPD_T, "-c", w->conf, "--once", "-v", NULL };
    struct stat st;
    pid_t pid;

    unlink(w->log);
    CHECK(test_write_file(w->log, "") == 0);
    CHECK(stat(w->log, &st) == 0);
    snprintf(value, sizeof value, "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino + (wrong ? 1 : 0));
    env[0].value = value;
    pid = spawn_env(argv, w->log, env);
    return pid > 0 ? test_wait(pid, RUN_MS) : -1;
}

static void test_daemon_journal_prefix(void)
{
    struct dworld w;
    char extra[128];
    long all, n;
    int lfd, port;

    dw_init(&w, "daemon-journal");
    lfd = dcu_listen(&port);            /* connects, never answers */
    CHECK(lfd >= 0);
    snprintf(extra, sizeof extra, "dcu D1 127.0.0.1:%d key=-\n", port);
    dw_conf(&w, extra);

    CHECK_EQ(journal_run(&w, 0), 1);
    n = lines_starting(w.log, "<", &all);
    CHECK(all >= 4);
    CHECK_EQ(n, all);                   /* every line, and no time stamp */
    CHECK_EQ(lines_starting(w.log, "<3>fepd error: ", &all) +
             lines_starting(w.log, "<4>fepd warn: ", &all) +
             lines_starting(w.log, "<6>fepd info: ", &all) +
             lines_starting(w.log, "<7>fepd debug: ", &all), all);
    CHECK(lines_starting(w.log, "<3>fepd error: --once: D1 failed", &all) == 1);
    CHECK(lines_starting(w.log, "<6>fepd info: fepd " FEP_VERSION, &all) == 1);
    CHECK(lines_starting(w.log, "<7>fepd debug: ", &all) >= 1);

    /* Another inode: stderr is not the journal. */
    CHECK_EQ(journal_run(&w, 1), 1);
    CHECK_EQ(lines_starting(w.log, "<", &all), 0);
    CHECK(all >= 4);
    CHECK_EQ(lines_starting(w.log, "20", &all), all);   /* a time first */
    if (lfd >= 0)
        close(lfd);
    dw_end(&w);
}

/* ------------------------------------------------------------------------
 * The pidfile
 * ---------------------------------------------------------------------- */

/* The pid the pidfile names, exactly "PID\n"; 0 when it is missing, -1
 * when it holds anything else. */
static long pidfile_pid(const struct dworld *w)
{
    char text[64], *end;
    long pid;

    if (test_read_file(w->pidfile, text, sizeof text) < 0)
        return 0;
    pid = strtol(text, &end, 10);
    return pid > 0 && strcmp(end, "\n") == 0 ? pid : -1;
}

static int exists(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0;
}

static void dw_conf_pidfile(const struct dworld *w)
{
    char extra[PATH_T + 16];

    snprintf(extra, sizeof extra, "pidfile %s\n", w->pidfile);
    dw_conf(w, extra);
}

/* Written once fepd serves, with its pid; gone after SIGTERM. */
static void test_daemon_pidfile_lifecycle(void)
{
    struct dworld w;
    char tmp[PATH_T + 8];
    int fd;

    dw_init(&w, "daemon-pidfile");
    dw_conf_pidfile(&w);
    snprintf(tmp, sizeof tmp, "%s.tmp", w.pidfile);
    fd = notify_bind(w.notify, 0);
    {
        struct env env[] = { { "NOTIFY_SOCKET", w.notify }, { NULL, NULL } };
        CHECK(dw_start(&w, env) == 0);
    }
    /* READY=1 comes after the pidfile is written. */
    CHECK(notify_wait(fd, "READY=1", START_MS, NULL) == 0);
    CHECK_EQ(pidfile_pid(&w), w.fep);
    CHECK(!exists(tmp));
    CHECK_EQ(test_log_count(w.log, "pidfile"), 0);
    CHECK_EQ(dw_stop(&w), 0);
    CHECK(!exists(w.pidfile));
    check_clean_exit(w.log);
    if (fd >= 0)
        close(fd);
    dw_end(&w);
}

/* A pid that ran and is gone. */
static long dead_pid(void)
{
    pid_t pid = fork();

    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid(pid, NULL, 0);
    return (long)pid;
}

/* A pidfile holding text: fepd starts, replaces it (log line needle), and
 * removes it at exit. */
static void stale_case(struct dworld *w, const char *text, const char *needle)
{
    CHECK(test_write_file(w->pidfile, text) == 0);
    unlink(w->log);
    if (dw_start(w, NULL) != 0) {
        CHECK(!"fepd refused a stale pidfile");
        return;
    }
    CHECK_EQ(test_log_count(w->log, needle), 1);
    CHECK_EQ(pidfile_pid(w), w->fep);
    CHECK_EQ(dw_stop(w), 0);
    CHECK(!exists(w->pidfile));
}

static void test_daemon_pidfile_stale(void)
{
    struct dworld w;
    char text[64], needle[96];
    long pid = dead_pid();

    dw_init(&w, "daemon-stale");
    dw_conf_pidfile(&w);
    stale_case(&w, "", "stale (holds no pid)");
    stale_case(&w, "not a pid\n", "stale (holds no pid)");
    stale_case(&w, "123abc\n", "stale (holds no pid)");
    CHECK(pid > 0);
    snprintf(text, sizeof text, "%ld\n", pid);
    snprintf(needle, sizeof needle, "stale (no fepd runs as pid %ld)", pid);
    stale_case(&w, text, needle);
#ifdef __linux__
    /* A live process that is not a fepd (this test runner). */
    snprintf(text, sizeof text, "%ld\n", (long)getpid());
    snprintf(needle, sizeof needle, "stale (no fepd runs as pid %ld)",
             (long)getpid());
    stale_case(&w, text, needle);
#endif
    dw_end(&w);
}

/* A pidfile of a fepd that runs: a second one refuses (exit 3) without
 * touching anything, and so does --check. */
static void test_daemon_pidfile_live(void)
{
    static char snap_before[8192];
    struct dworld w;
    char log2[PATH_T], needle[PATH_T + 128], snap[PATH_T];

    dw_init(&w, "daemon-live");
    dw_conf_pidfile(&w);
    dw_path(&w, "second.log", log2);
    dw_path(&w, "state/fepd.state", snap);
    if (dw_start(&w, NULL) != 0) {
        dw_end(&w);
        return;
    }
    snprintf(needle, sizeof needle, "pidfile %s: another fepd (pid %ld) runs "
             "with this pidfile", w.pidfile, (long)w.fep);
    snprintf(snap_before, sizeof snap_before, "%s", file_text(snap));
    CHECK(snap_before[0] != '\0');
    CHECK_EQ(fep_run(&w, NULL, log2, NULL), 3);
    CHECK_EQ(test_log_count(log2, needle), 1);
    CHECK_EQ(test_log_count(log2, "fepd info:"), 0);    /* nothing began */
    CHECK(strcmp(file_text(snap), snap_before) == 0);   /* state untouched */
    CHECK_EQ(pidfile_pid(&w), w.fep);
    CHECK(kill(w.fep, 0) == 0);

    unlink(log2);
    CHECK_EQ(fep_run(&w, "--check", log2, NULL), 3);
    CHECK_EQ(test_log_count(log2, needle), 1);
    CHECK_EQ(pidfile_pid(&w), w.fep);

    CHECK_EQ(dw_stop(&w), 0);
    CHECK(!exists(w.pidfile));
    dw_end(&w);
}

/* kill -9 leaves the pidfile; the next start takes it for stale. */
static void test_daemon_pidfile_kill9(void)
{
    struct dworld w;
    char needle[96];
    long old;

    dw_init(&w, "daemon-kill9");
    dw_conf_pidfile(&w);
    if (dw_start(&w, NULL) != 0) {
        dw_end(&w);
        return;
    }
    old = w.fep;
    kill(w.fep, SIGKILL);
    CHECK_EQ(test_wait(w.fep, STOP_MS), 128 + SIGKILL);
    w.fep = -1;
    CHECK_EQ(pidfile_pid(&w), old);
    snprintf(needle, sizeof needle, "stale (no fepd runs as pid %ld)", old);
    if (dw_start(&w, NULL) == 0) {
        CHECK_EQ(test_log_count(w.log, needle), 1);
        CHECK_EQ(pidfile_pid(&w), w.fep);
        CHECK(w.fep != old);
        CHECK_EQ(dw_stop(&w), 0);
        CHECK(!exists(w.pidfile));
    }
    dw_end(&w);
}

/* ------------------------------------------------------------------------
 * --check predicts start-up
 * ---------------------------------------------------------------------- */

/* Every name under dir, recursively, one per line, into out. */
static void tree_list(const char *dir, char *out, size_t cap)
{
    DIR *d = opendir(dir);
    struct dirent *e;

    if (!d)
        return;
    while ((e = readdir(d)) != NULL) {
        char sub[PATH_T * 2];
        size_t n = strlen(out);

        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
        snprintf(out + n, cap - n, "%s\n", sub);
        tree_list(sub, out, cap);
    }
    closedir(d);
}

/* The text after "fepd error: " of the first error line of log, or "". */
static void first_error(const char *log, char *out, size_t cap)
{
    FILE *f = fopen(log, "r");
    char line[LINE_T];
    const char *p;

    out[0] = '\0';
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        if ((p = strstr(line, "fepd error: ")) != NULL) {
            snprintf(out, cap, "%s", p + strlen("fepd error: "));
            break;
        }
    }
    fclose(f);
}

/*
 * --check exits 3 with an error that contains needle, and start-up, run
 * after it, fails the same way with the same first message: the check
 * predicted it.
 */
static void check_predicts_failure(const struct dworld *w, const char *needle)
{
    char check_log[PATH_T], start_log[PATH_T];
    char check_err[LINE_T], start_err[LINE_T];

    dw_path(w, "check.log", check_log);
    dw_path(w, "start.log", start_log);
    unlink(check_log);
    unlink(start_log);
    CHECK_EQ(fep_run(w, "--check", check_log, NULL), 3);
    first_error(check_log, check_err, sizeof check_err);
    CHECK(strstr(check_err, needle) != NULL);
    if (strstr(check_err, needle) == NULL)
        fprintf(stderr, "  --check: %s  wanted: %s\n", check_err, needle);
    CHECK_EQ(test_log_count(check_log, ": ok ("), 0);
    CHECK_EQ(fep_run(w, NULL, start_log, NULL), 3);
    first_error(start_log, start_err, sizeof start_err);
    CHECK(strcmp(check_err, start_err) == 0);
    if (strcmp(check_err, start_err) != 0)
        fprintf(stderr, "  --check: %s  start-up: %s", check_err, start_err);
}

/* A good fresh config: exit 0, the ok line with the static memory start-up
 * then takes, and nothing made. */
static void test_daemon_check_fresh(void)
{
    static char before[8192], after[8192];
    struct dworld w;
    char out[PATH_T], line[LINE_T], extra[PATH_T * 3];
    long long check_bytes = -1, start_bytes = -2;
    const char *p;

    dw_init(&w, "daemon-check");
    /* Directories several levels down, as mkdir -p makes them. */
    snprintf(w.data, sizeof w.data, "%s/a/b/data", w.dir);
    snprintf(w.state, sizeof w.state, "%s/a/state", w.dir);
    snprintf(extra, sizeof extra, "pidfile %s\n", w.pidfile);
    dw_conf(&w, extra);
    dw_path(&w, "check.out", out);
    CHECK(test_write_file(out, "") == 0);
    before[0] = after[0] = '\0';
    tree_list(w.dir, before, sizeof before);
    CHECK_EQ(fep_run(&w, "--check", out, NULL), 0);
    tree_list(w.dir, after, sizeof after);
    CHECK(strstr(before, "/a\n") == NULL);
    CHECK(strcmp(before, after) == 0);
    snprintf(line, sizeof line, "%s: ok (1 DCUs, static memory ", w.conf);
    p = strstr(file_text(out), line);
    CHECK(p != NULL);
    if (p)
        check_bytes = strtoll(p + strlen(line), NULL, 10);
    CHECK_EQ(test_count_lines(out, ""), 1);        /* nothing else said */

    if (dw_start(&w, NULL) == 0) {
        CHECK(test_log_last_line(w.log, "static memory ", line, sizeof line) == 0);
        p = strstr(line, "static memory ");
        if (p)
            start_bytes = strtoll(p + strlen("static memory "), NULL, 10);
        CHECK_EQ(check_bytes, start_bytes);
        CHECK_EQ(dw_stop(&w), 0);
    }
    /* After a run: data and state as fepd left them are sound. */
    unlink(out);
    CHECK_EQ(fep_run(&w, "--check", out, NULL), 0);
    CHECK(test_count_lines(out, ": ok (1 DCUs") == 1);
    dw_end(&w);
}

static void test_daemon_check_dirs(void)
{
    struct dworld w;
    char file[PATH_T], lp[PATH_T];

    dw_init(&w, "daemon-checkdir");
    /* data_dir is a regular file. */
    dw_conf(&w, "");
    CHECK(test_write_file(w.data, "x\n") == 0);
    check_predicts_failure(&w, ": Not a directory");
    unlink(w.data);

    /* data_dir under a regular file: no mkdir -p can make it (root too). */
    dw_path(&w, "plain", file);
    CHECK(test_write_file(file, "x\n") == 0);
    snprintf(w.data, sizeof w.data, "%s/plain/sub/data", w.dir);
    dw_conf(&w, "");
    check_predicts_failure(&w, "plain/sub/data: Not a directory");
    CHECK(!exists(w.state));            /* start-up stopped at data_dir */

    /* state_dir the same way. */
    dw_path(&w, "data", w.data);
    snprintf(w.state, sizeof w.state, "%s/plain/state", w.dir);
    dw_conf(&w, "");
    test_remove_tree(w.data);
    check_predicts_failure(&w, "plain/state: Not a directory");

    /* A CSV file store_open could not open. */
    dw_path(&w, "state", w.state);
    dw_conf(&w, "");
    test_remove_tree(w.data);
    test_remove_tree(w.state);
    CHECK(mkdir(w.data, 0755) == 0);
    dw_path(&w, "data/lp.csv", lp);
    CHECK(mkdir(lp, 0755) == 0);
    check_predicts_failure(&w, "lp.csv: open: Is a directory");
    test_remove_tree(w.data);
    test_remove_tree(w.state);
    CHECK(mkdir(w.data, 0755) == 0);
    CHECK(mkfifo(lp, 0644) == 0);
    check_predicts_failure(&w, "lp.csv: open (not a regular file)");
    test_remove_tree(w.data);
    test_remove_tree(w.state);

    /* A pidfile in a directory that is not there. */
    snprintf(w.pidfile, sizeof w.pidfile, "%s/nodir/fepd.pid", w.dir);
    dw_conf_pidfile(&w);
    check_predicts_failure(&w, "nodir/fepd.pid: cannot be written");
    dw_end(&w);
}

static void test_daemon_check_state(void)
{
    static const char header[] =
        "dcu_id,meter_id,ts,import_wh,export_wh,status,qsn,fsn,received_at\n";
    struct dworld w;
    char snap[PATH_T], lp[PATH_T], out[PATH_T], text[512];
    struct stat st;

    dw_init(&w, "daemon-checkstate");
    dw_conf(&w, "");
    dw_path(&w, "state/fepd.state", snap);
    dw_path(&w, "data/lp.csv", lp);
    dw_path(&w, "check.out", out);

    /* One run (a push-only DCU: --once ends at once), then an empty state. */
    CHECK_EQ(fep_run(&w, "--once", w.log, NULL), 0);
    CHECK(exists(snap));
    CHECK_EQ(fep_run(&w, "--check", out, NULL), 0);
    CHECK(test_write_file(snap, "") == 0);
    check_predicts_failure(&w, "fepd.state:1: empty");
    test_remove_tree(w.data);
    test_remove_tree(w.state);

    /* No state, and rows in data_dir: the state was lost. */
    CHECK(mkdir(w.data, 0755) == 0);
    snprintf(text, sizeof text, "%sD1,M1,1767225600,1,2,0,1,0,1767225700\n",
             header);
    CHECK(test_write_file(lp, text) == 0);
    check_predicts_failure(&w, "shows that fepd has run before");
    test_remove_tree(w.data);
    test_remove_tree(w.state);

    /* Only a torn line after the header: no rows, a first start; --check
     * leaves the torn line for start-up to cut. */
    CHECK(mkdir(w.data, 0755) == 0);
    snprintf(text, sizeof text, "%sD1,M1,17672", header);
    CHECK(test_write_file(lp, text) == 0);
    unlink(out);
    CHECK_EQ(fep_run(&w, "--check", out, NULL), 0);
    CHECK(stat(lp, &st) == 0 && st.st_size == (off_t)strlen(text));
    CHECK(!exists(w.state));
    dw_end(&w);
}

static void test_daemon_check_ports(void)
{
    struct dworld w;
    char needle[128];
    int fd, port;

    dw_init(&w, "daemon-checkport");
    fd = dcu_listen(&port);             /* the port someone else holds */
    CHECK(fd >= 0);
    w.listen_port = port;
    dw_conf(&w, "");
    snprintf(needle, sizeof needle, "listening for push sessions "
             "127.0.0.1:%d: ", port);
    check_predicts_failure(&w, needle);
    test_remove_tree(w.data);
    test_remove_tree(w.state);

    w.listen_port = test_free_port();
    w.metrics_port = port;
    dw_conf(&w, "");
    snprintf(needle, sizeof needle, "metrics 127.0.0.1:%d: ", port);
    check_predicts_failure(&w, needle);
    if (fd >= 0)
        close(fd);
    dw_end(&w);
}

/* ------------------------------------------------------------------------
 * Descriptors
 * ---------------------------------------------------------------------- */

/* A hard descriptor limit below what max_sessions needs (256 + 12 slots
 * and 32 more): --check and start-up refuse alike, exit 3, the limit named,
 * nothing made.  A soft limit below it is raised, and the check passes. */
static void test_daemon_fd_limit(void)
{
    static const char *const opts[2] = { "--check", "" };
    char cmd[PATH_T + 96], log[PATH_T];
    const char *argv[] = { "/bin/sh", "-c", cmd, NULL };
    struct dworld w;
    unsigned i;

    dw_init(&w, "daemon-nofile");
    dw_conf(&w, "max_sessions 256\n");
    for (i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd, "ulimit -n 100 && exec %s -c %s %s",
                 FEPD_T, w.conf, opts[i]);
        dw_path(&w, i ? "start.log" : "check.log", log);
        CHECK_EQ(test_wait(test_spawn(argv, log), RUN_MS), 3);
        CHECK_EQ(test_log_count(log, "max_sessions 256 needs 300 descriptors "
                                "and the limit (RLIMIT_NOFILE) allows 100"), 1);
    }
    CHECK(access(w.data, F_OK) != 0 && access(w.state, F_OK) != 0);
    snprintf(cmd, sizeof cmd, "ulimit -S -n 100 && exec %s -c %s --check",
             FEPD_T, w.conf);
    dw_path(&w, "soft.log", log);
    CHECK_EQ(test_wait(test_spawn(argv, log), RUN_MS), 0);
    dw_end(&w);
}

/* Every accept fails with EMFILE (a test fault) while a client waits in
 * the backlog: fepd leaves its listeners unwatched for 500 ms at a time,
 * one log line each, instead of retrying in a loop, and stops at once. */
static void test_daemon_accept_emfile(void)
{
    const struct env env[] = { { "FEP_FAULT", "accept:1+:EMFILE" },
                               { NULL, NULL } };
    struct dworld w;
    long paused;
    int fd;

    dw_init(&w, "daemon-emfile");
    dw_conf(&w, "");
    if (dw_start(&w, env) == 0) {
        fd = raw_connect(w.listen_port);
        CHECK(fd >= 0);
        test_sleep_ms(1200);
        paused = test_log_count(w.log, "accept: Too many open files: no new "
                                "connections for 500 ms");
        CHECK(paused >= 1 && paused <= 4);
        CHECK_EQ(test_log_count(w.log, "accept: "), paused);
        if (fd >= 0)
            close(fd);
        CHECK_EQ(dw_stop(&w), 0);
    }
    dw_end(&w);
}

/* Started with stdin, stdout and stderr closed (a careless service
 * manager): no file fepd opens takes their numbers, so its log lines never
 * land in a CSV file; each file holds its header alone. */
static void test_daemon_stdio_closed(void)
{
    static const char *const files[] = { "lp.csv", "dcu_status.csv",
                                         "meter_status.csv",
                                         "meter_change.csv" };
    char cmd[PATH_T + 64], path[PATH_T + 32];
    const char *argv[] = { "/bin/sh", "-c", cmd, NULL };
    struct dworld w;
    unsigned i;

    dw_init(&w, "daemon-stdio");
    dw_conf(&w, "");
    snprintf(cmd, sizeof cmd, "exec %s -c %s 0<&- 1>&- 2>&-", FEPD_T, w.conf);
    w.fep = test_spawn(argv, NULL);
    CHECK(w.fep > 0);
    CHECK_EQ(test_wait_port(w.listen_port, START_MS), 0);
    CHECK_EQ(dw_stop(&w), 0);
    for (i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", w.data, files[i]);
        CHECK_EQ(test_count_lines(path, ""), 1);
        CHECK_EQ(test_count_lines(path, "fepd"), 0);
    }
    dw_end(&w);
}

void test_daemon_suite(void)
{
    test_run("daemon_version", test_daemon_version);
    test_run("daemon_notify_path", test_daemon_notify_path);
    test_run("daemon_notify_abstract", test_daemon_notify_abstract);
    test_run("daemon_notify_watchdog", test_daemon_notify_watchdog);
    test_run("daemon_notify_absent", test_daemon_notify_absent);
    test_run("daemon_notify_reloading", test_daemon_notify_reloading);
    test_run("daemon_journal_prefix", test_daemon_journal_prefix);
    test_run("daemon_pidfile_lifecycle", test_daemon_pidfile_lifecycle);
    test_run("daemon_pidfile_stale", test_daemon_pidfile_stale);
    test_run("daemon_pidfile_live", test_daemon_pidfile_live);
    test_run("daemon_pidfile_kill9", test_daemon_pidfile_kill9);
    test_run("daemon_check_fresh", test_daemon_check_fresh);
    test_run("daemon_check_dirs", test_daemon_check_dirs);
    test_run("daemon_check_state", test_daemon_check_state);
    test_run("daemon_check_ports", test_daemon_check_ports);
    test_run("daemon_fd_limit", test_daemon_fd_limit);
    test_run("daemon_accept_emfile", test_daemon_accept_emfile);
    test_run("daemon_stdio_closed", test_daemon_stdio_closed);
}
