/*
 * bench.c -- the benchmark: how fast one core decodes frames and opens and
 * seals protected payloads, and what fepd does end to end against dcusim.
 *
 * Core rows: MB/s (10^6 bytes per second) and frames/s, each measured with
 * CLOCK_MONOTONIC over at least one second.
 *
 * End-to-end rows: ./fepd and ./dcusim run as child processes on 127.0.0.1
 * (free ports, a temporary directory under $TMPDIR per figure, removed
 * afterwards unless BENCH_KEEP is set).  Each program is started through a
 * small measuring process of its own that waits for it and reports
 * getrusage(RUSAGE_CHILDREN): that is the program's CPU time and peak RSS
 * alone, with nothing but POSIX calls (wait4 is not POSIX).  Where /proc
 * exists, the push rows also read fepd's VmHWM while the daemon still runs,
 * and the kernel's count of connections dropped on a full listen queue.
 * The floor row is a bare client inside this program that plays the FEP's
 * side of the same poll exchange without checking or storing anything.
 * Rows of the 1,000-DCU section are the median of three runs.
 *
 * The /metrics rows scrape a running fepd with 1,000 to 100,000 push-only
 * DCUs (see section_metrics), and print the load average beside them.
 * The field rows poll keyed DCUs 200 ms away with N shards of fepd at once
 * and with one fepd (see section_field).
 * Arguments name the sections to run (core throughput sustained memory
 * metrics field); none runs them all but field, which runs only by name.
 *
 * The targets and the goal are printed beside the figures for the reader;
 * the program never fails on a figure (a loaded machine must not break a
 * build), only when a figure's own work went wrong (a frame that did not
 * decode, a tag that did not verify, fepd exiting with an error, records
 * not all acknowledged), because then the figure would be measuring
 * something else.
 *
 * BENCH_QUICK=1: smaller sizes and shorter core runs, to try it out.
 *
 * Owns: the static buffers below, its child processes (every one is reaped
 * before the figure that started it is printed) and its temporary
 * directories.  Uses crypto.c, frame.c and sys.c.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "fep.h"

#define BENCH_MIN_NS 1000000000LL       /* each core figure runs at least 1 s */
#define BENCH_QUICK_NS 200000000LL      /* ... or 0.2 s with BENCH_QUICK */
#define DECODE_CHUNK (64 * 1024)        /* bytes handed over per "read" */
#define DECODE_FRAMES (DECODE_CHUNK / FRAME_SIZE_MAX)

FEP_STATIC_ASSERT(DECODE_CHUNK % FRAME_SIZE_MAX == 0, chunk_whole_frames);

typedef struct bench_result {
    long long ns;                       /* elapsed */
    unsigned long long bytes;           /* payload or stream bytes processed */
    unsigned long long frames;
    int failed;                         /* the work itself went wrong */
} bench_result;

typedef struct bench_row {
    const char *name;
    const char *target;
    void (*run)(bench_result *r);
} bench_row;

static const uint8_t bench_key_bytes[KEY_SIZE] = {
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
    0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f
};
#define BENCH_KEY_HEX "000102030405060708090a0b0c0d0e0f"

/* Keeps results alive so that the compiler cannot drop the work. */
static volatile unsigned long long bench_sink;

static long long bench_min_ns = BENCH_MIN_NS;
static int bench_quick;

static long long now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_ms(long ms)
{
    struct timespec ts;

    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void bench_header(frame_hdr *h)
{
    h->ctl = CTL_DIR_DCU;
    h->cmd = CMD_LP_RSP;
    frame_id_set(h->sid, "DCU00001");
    frame_id_set(h->did, "FEP00001");
    h->qsn = 1;
    h->msn = 0;
    h->fsn = 0;
}

static void bench_payload(uint8_t *p, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 131 + 7);
}

/* ------------------------------------------------------------------------
 * Figure: frame_rx decoding (header checks, CRC) of 2048-byte frames, a
 * 64 KiB stream handed over as fast as the receive buffer takes it
 * ---------------------------------------------------------------------- */

static uint8_t decode_stream[DECODE_CHUNK];
static frame_rx decode_rx;

static void decode_stream_make(void)
{
    static uint8_t payload[PAYLOAD_MAX_PLAIN];
    frame_hdr h;
    size_t i;

    bench_header(&h);
    bench_payload(payload, sizeof payload);
    for (i = 0; i < DECODE_FRAMES; i++) {
        h.msn = (uint16_t)i;
        frame_encode(decode_stream + i * FRAME_SIZE_MAX, FRAME_SIZE_MAX, &h,
                     payload, sizeof payload, NULL, 0);
    }
}

/* One 64 KiB chunk through the receive buffer; returns frames decoded. */
static unsigned decode_chunk(frame_rx *rx)
{
    const uint8_t *p = decode_stream;
    size_t left = DECODE_CHUNK;
    unsigned frames = 0;
    frame f;

    while (left > 0) {
        size_t room, take;
        uint8_t *dst = frame_rx_space(rx, &room);

        take = left < room ? left : room;
        memcpy(dst, p, take);
        frame_rx_commit(rx, take);
        p += take;
        left -= take;
        while (frame_rx_next(rx, &f) == FRAME_READY) {
            bench_sink += f.msn;
            frames++;
        }
    }
    return frames;
}

static void run_decode(bench_result *r)
{
    long long start;

    decode_stream_make();
    frame_rx_reset(&decode_rx);
    start = now_ns();
    do {
        unsigned frames = decode_chunk(&decode_rx);
        r->failed |= frames != DECODE_FRAMES;
        r->frames += frames;
        r->bytes += DECODE_CHUNK;
        r->ns = now_ns() - start;
    } while (r->ns < bench_min_ns);
    r->failed |= decode_rx.garbage != 0;
}

/* ------------------------------------------------------------------------
 * Figures: frame_open and protected frame_encode of 2000-byte payloads
 * ---------------------------------------------------------------------- */

#define GCM_BATCH 64                    /* operations between clock reads */

static uint8_t gcm_payload[PAYLOAD_MAX_SEC];
static uint8_t gcm_frame[FRAME_SIZE_MAX];
static uint8_t gcm_plain[FRAME_DATA_MAX];

static void run_open(bench_result *r)
{
    size_t total, consumed, skipped, plain_len;
    long long start;
    gcm_key key;
    frame_hdr h;
    uint32_t ic;
    frame f;
    int i;

    gcm_init(&key, bench_key_bytes);
    bench_header(&h);
    bench_payload(gcm_payload, sizeof gcm_payload);
    total = frame_encode(gcm_frame, sizeof gcm_frame, &h, gcm_payload,
                         sizeof gcm_payload, &key, 1);
    if (frame_scan(gcm_frame, total, &f, &consumed, &skipped) != FRAME_READY) {
        r->failed = 1;
        return;
    }
    start = now_ns();
    do {
        for (i = 0; i < GCM_BATCH; i++) {
            r->failed |= frame_open(&f, &key, gcm_plain, &plain_len, &ic) !=
                         FEP_OK;
            bench_sink += gcm_plain[i];
        }
        r->frames += GCM_BATCH;
        r->bytes += GCM_BATCH * sizeof gcm_payload;
        r->ns = now_ns() - start;
    } while (r->ns < bench_min_ns);
    r->failed |= memcmp(gcm_plain, gcm_payload, sizeof gcm_payload) != 0;
}

static void run_seal(bench_result *r)
{
    long long start;
    uint32_t ic = 1;
    gcm_key key;
    frame_hdr h;
    int i;

    gcm_init(&key, bench_key_bytes);
    bench_header(&h);
    bench_payload(gcm_payload, sizeof gcm_payload);
    start = now_ns();
    do {
        for (i = 0; i < GCM_BATCH; i++) {
            size_t n = frame_encode(gcm_frame, sizeof gcm_frame, &h,
                                    gcm_payload, sizeof gcm_payload, &key,
                                    ic++);
            r->failed |= n != FRAME_SIZE_MAX;
            bench_sink += gcm_frame[FRAME_SIZE_MAX - 1];
        }
        r->frames += GCM_BATCH;
        r->bytes += GCM_BATCH * sizeof gcm_payload;
        r->ns = now_ns() - start;
    } while (r->ns < bench_min_ns);
}

/* ------------------------------------------------------------------------
 * Child processes, each measured alone
 *
 * proc_start forks a measuring process M, which forks and execs the
 * program P with stdout and stderr to a log file, sends P's pid up a pipe,
 * waits for P, and sends P's wait status and getrusage(RUSAGE_CHILDREN)
 * (P is M's only child, so that is P's CPU time and P's peak RSS).  Signals
 * go to P directly.  proc_reap waits for M, bounded by SIGALRM.
 *
 * A child's ru_maxrss counts the pages of the image it was forked from,
 * up to its exec: P forked from this program, whose tables reach megabytes,
 * would report at least their size.  So M first execs this program afresh
 * (`fep_bench --measure FD LOG PROGRAM ARGS...`) and forks P from that
 * small image; only when that exec fails does M measure as it is.
 * ---------------------------------------------------------------------- */

static const char *bench_self;          /* argv[0], for M's exec */

typedef struct proc {
    pid_t pid;                          /* M, our child; 0 when none */
    pid_t target;                       /* P, the program */
    int fd;                             /* read end of M's pipe */
    long long start_ns, end_ns;
    int status;                         /* P's wait status */
    int killed;                         /* P had to be killed at the deadline */
    struct rusage ru;                   /* P alone */
} proc;

typedef struct proc_report {
    int status;
    struct rusage ru;
} proc_report;

static volatile sig_atomic_t alarm_fired;

static void on_alarm(int sig)
{
    (void)sig;
    alarm_fired = 1;
}

static int read_full(int fd, void *p, size_t n)
{
    char *c = p;

    while (n > 0) {
        ssize_t r = read(fd, c, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        c += r;
        n -= (size_t)r;
    }
    return 0;
}

/* In the program's process: stdin from /dev/null, stdout and stderr to log. */
static void exec_program(char *const argv[], const char *log_path)
{
    int in = open("/dev/null", O_RDONLY);
    int out = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

    if (in < 0 || out < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 ||
        dup2(out, 2) < 0)
        _exit(126);
    close(in);
    close(out);
    execv(argv[0], argv);
    _exit(127);
}

static void measurer(int out, char *const argv[], const char *log_path)
{
    proc_report rep;
    pid_t p = fork();

    if (p == 0)
        exec_program(argv, log_path);
    if (sys_write_all(out, &p, sizeof p) != 0 || p < 0)
        _exit(1);
    memset(&rep, 0, sizeof rep);
    while (waitpid(p, &rep.status, 0) < 0)
        if (errno != EINTR)
            _exit(1);
    getrusage(RUSAGE_CHILDREN, &rep.ru);
    sys_write_all(out, &rep, sizeof rep);
    _exit(0);
}

/* In M: this program again, as a bare measurer; returns only on failure. */
static void measurer_exec(int out, char *const argv[], const char *log_path)
{
    char fd_text[16], *args[32];
    size_t n = 0, i;

    snprintf(fd_text, sizeof fd_text, "%d", out);
    args[n++] = (char *)bench_self;
    args[n++] = "--measure";
    args[n++] = fd_text;
    args[n++] = (char *)log_path;
    for (i = 0; argv[i] && n < sizeof args / sizeof args[0] - 1; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    if (!bench_self || argv[i] || fcntl(out, F_SETFD, 0) != 0)
        return;
    execv(bench_self, args);
    fcntl(out, F_SETFD, FD_CLOEXEC);
}

static int proc_start(proc *pr, char *const argv[], const char *log_path)
{
    int fds[2];
    pid_t m;

    memset(pr, 0, sizeof *pr);
    pr->fd = -1;
    if (pipe(fds) != 0)
        return -1;
    /* Programs started later must not hold this pipe open. */
    fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    fflush(stdout);
    pr->start_ns = now_ns();
    m = fork();
    if (m < 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (m == 0) {
        close(fds[0]);
        measurer_exec(fds[1], argv, log_path);
        measurer(fds[1], argv, log_path);
    }
    close(fds[1]);
    pr->pid = m;
    pr->fd = fds[0];
    if (read_full(pr->fd, &pr->target, sizeof pr->target) != 0 ||
        pr->target <= 0) {
        close(pr->fd);
        while (waitpid(m, NULL, 0) < 0 && errno == EINTR)
            ;
        pr->pid = 0;
        return -1;
    }
    return 0;
}

static int proc_running(const proc *pr)
{
    return pr->pid > 0 && kill(pr->target, 0) == 0;
}

/* Waits up to timeout_s for the program to end (then SIGKILL); 0 when it
 * ended by itself with exit status 0. */
static int proc_reap(proc *pr, unsigned timeout_s)
{
    proc_report rep;

    if (pr->pid <= 0)
        return -1;
    alarm_fired = 0;
    alarm(timeout_s);
    while (waitpid(pr->pid, NULL, 0) < 0) {
        if (errno != EINTR)
            break;
        if (alarm_fired) {
            kill(pr->target, SIGKILL);
            pr->killed = 1;
            alarm_fired = 0;
            alarm(5);
        }
    }
    alarm(0);
    pr->end_ns = now_ns();
    memset(&rep, 0, sizeof rep);
    rep.status = -1;
    if (read_full(pr->fd, &rep, sizeof rep) != 0)
        rep.status = -1;
    close(pr->fd);
    pr->fd = -1;
    pr->pid = 0;
    pr->status = rep.status;
    pr->ru = rep.ru;
    return !pr->killed && rep.status != -1 && WIFEXITED(rep.status) &&
                   WEXITSTATUS(rep.status) == 0 ? 0 : -1;
}

/* SIGTERM, then proc_reap. */
static int proc_stop(proc *pr, unsigned timeout_s)
{
    if (pr->pid <= 0)
        return -1;
    kill(pr->target, SIGTERM);
    return proc_reap(pr, timeout_s);
}

static double tv_s(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static double proc_cpu_s(const proc *pr)
{
    return tv_s(pr->ru.ru_utime) + tv_s(pr->ru.ru_stime);
}

/* ru_maxrss in bytes: kilobytes on Linux and the BSDs, bytes on macOS. */
static unsigned long long maxrss_bytes(const struct rusage *ru)
{
#if defined(__APPLE__)
    return (unsigned long long)ru->ru_maxrss;
#else
    return (unsigned long long)ru->ru_maxrss * 1024ULL;
#endif
}

static double proc_wall_s(const proc *pr)
{
    return (double)(pr->end_ns - pr->start_ns) / 1e9;
}

/* A description of how the program ended, for a failed figure. */
static void proc_describe(const proc *pr, const char *name, char *out,
                          size_t cap)
{
    if (pr->killed)
        snprintf(out, cap, "%s killed at the deadline", name);
    else if (pr->status == -1)
        snprintf(out, cap, "%s: no report", name);
    else if (WIFSIGNALED(pr->status))
        snprintf(out, cap, "%s killed by signal %d", name,
                 WTERMSIG(pr->status));
    else
        snprintf(out, cap, "%s exited %d", name, WEXITSTATUS(pr->status));
}

/* ------------------------------------------------------------------------
 * Files, directories, ports, logs
 * ---------------------------------------------------------------------- */

#define DIR_SIZE 200                    /* fepd's data_dir is at most 224 */
#define PATH_BENCH (DIR_SIZE + 40)
#define LOG_SCAN_MAX (1024 * 1024)      /* bytes of a log searched */

static char log_text[LOG_SCAN_MAX + 1];

/* A fresh directory under $TMPDIR (or /tmp) in out; 0 or -1.  fepd's config
 * cannot hold a space or '#' in a path, so such a $TMPDIR is passed over. */
static int tmpdir_make(char *out, size_t cap)
{
    const char *base = getenv("TMPDIR");

    if (!base || !*base || strpbrk(base, " \t#") || strlen(base) > 120)
        base = "/tmp";
    if ((size_t)snprintf(out, cap, "%s/fep_bench.XXXXXX", base) >= cap)
        return -1;
    return mkdtemp(out) ? 0 : -1;
}

/* Removes dir and what fepd and dcusim put in it (two levels). */
static void tree_remove(const char *dir, int depth)
{
    char path[PATH_BENCH + 64];
    struct dirent *e;
    DIR *d;

    if (getenv("BENCH_KEEP"))
        return;
    d = opendir(dir);
    if (d) {
        while ((e = readdir(d)) != NULL) {
            struct stat st;

            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode) && depth > 0)
                tree_remove(path, depth - 1);
            else
                unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* A TCP port on 127.0.0.1 that was free a moment ago, or 0. */
static unsigned free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    unsigned port = 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0)
        return 0;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* LOG_SCAN_MAX bytes of a file into log_text, from its start or, with
 * tail, its end (a report line is the last one); the length. */
static size_t log_read(const char *path, int tail)
{
    size_t n = 0;
    int fd = open(path, O_RDONLY);
    struct stat st;

    log_text[0] = '\0';
    if (fd < 0)
        return 0;
    if (tail && fstat(fd, &st) == 0 && st.st_size > LOG_SCAN_MAX)
        lseek(fd, st.st_size - LOG_SCAN_MAX, SEEK_SET);
    while (n < LOG_SCAN_MAX) {
        ssize_t r = read(fd, log_text + n, LOG_SCAN_MAX - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    log_text[n] = '\0';
    return n;
}

static size_t log_load(const char *path)
{
    return log_read(path, 0);
}

/* Waits (bounded) until the program's log holds text; 0 or -1. */
static int log_wait(const char *path, const char *text, const proc *pr,
                    long timeout_ms)
{
    long waited;

    for (waited = 0; waited <= timeout_ms; waited += 10) {
        log_load(path);
        if (strstr(log_text, text))
            return 0;
        if (!proc_running(pr))
            return -1;
        sleep_ms(10);
    }
    return -1;
}

/* The value after "key=" in the last line of the log that holds prefix
 * (dcusim's report begins a line; fepd's stats line comes after the time
 * and level), searched from prefix on; 0 when absent. */
static unsigned long long log_value(const char *path, const char *prefix,
                                    const char *key)
{
    char needle[64];
    const char *line = NULL, *p = log_text, *v;

    log_read(path, 1);
    while ((p = strstr(p, prefix)) != NULL)
        line = p++;
    if (!line)
        return 0;
    snprintf(needle, sizeof needle, " %s=", key);
    v = strstr(line, needle);
    if (!v || (strchr(line, '\n') && v > strchr(line, '\n')))
        return 0;
    return strtoull(v + strlen(needle), NULL, 10);
}

/* key=N of fepd's last statistics line in the log (it writes one at
 * exit); 0 when absent. */
static unsigned long long log_stat(const char *key)
{
    const char *line = NULL, *p = log_text, *v, *end;

    while ((p = strstr(p, " stats: ")) != NULL)
        line = p++;
    if (!line)
        return 0;
    end = strchr(line, '\n');
    v = strstr(line, key);
    return v && (!end || v < end) ? strtoull(v + strlen(key), NULL, 10) : 0;
}

/* The number right after text in the log; 0 when absent. */
static unsigned long long log_number_after(const char *text)
{
    const char *p = strstr(log_text, text);

    return p ? strtoull(p + strlen(text), NULL, 10) : 0;
}

/* Appends the dcu lines of dcusim's --config-out (path) to out, each
 * line's address replaced by addr(id, ctx) when addr is given. */
static int conf_dcus(FILE *out, const char *path,
                     const char *(*addr)(const char *id, void *ctx), void *ctx)
{
    char line[512];
    FILE *in = fopen(path, "r");
    int ok = 1;

    if (!in)
        return -1;
    while (fgets(line, sizeof line, in)) {
        char id[32], old[80], rest[400];

        if (!addr) {
            fputs(line, out);
            continue;
        }
        rest[0] = '\0';
        if (sscanf(line, "dcu %31s %79s %399[^\n]", id, old, rest) < 2) {
            ok = 0;
            break;
        }
        fprintf(out, "dcu %s %s %s\n", id, addr(id, ctx), rest);
    }
    ok &= !ferror(in);
    fclose(in);
    return ok ? 0 : -1;
}

static const char *addr_none(const char *id, void *ctx)
{
    (void)id;
    (void)ctx;
    return "-";
}

/* fepd's config: the directives, then the dcu lines of dcusim's
 * --config-out, their address replaced by '-' when push_only. */
static int conf_write(const char *dir, int sync_packet, unsigned max_sessions,
                      unsigned listen_port, int push_only)
{
    char path[PATH_BENCH];
    FILE *out;
    int ok;

    snprintf(path, sizeof path, "%s/fep.conf", dir);
    out = fopen(path, "w");
    if (!out)
        return -1;
    fprintf(out, "data_dir %s/data\nstate_dir %s/state\nsync %s\n"
            "max_sessions %u\ntimeout_session 3600\n", dir, dir,
            sync_packet ? "packet" : "none", max_sessions);
    if (listen_port)
        fprintf(out, "listen 127.0.0.1:%u\n", listen_port);
    snprintf(path, sizeof path, "%s/dcus.conf", dir);
    ok = conf_dcus(out, path, push_only ? addr_none : NULL, NULL) == 0;
    ok &= fclose(out) == 0;
    return ok ? 0 : -1;
}

/* ------------------------------------------------------------------------
 * End-to-end runs
 * ---------------------------------------------------------------------- */

enum e2e_kind { E2E_POLL, E2E_PUSH };

typedef struct e2e_spec {
    enum e2e_kind kind;
    unsigned dcus, records, meters;
    int keyed;
    int sync_packet;
    unsigned max_sessions;
    unsigned push_concurrency;          /* 0: dcusim's default, all at once */
} e2e_spec;

typedef struct e2e_result {
    double wall_s;                      /* fepd --once, or the pushing dcusim */
    double fepd_cpu_s, sim_cpu_s;
    double fepd_user_s, fepd_sys_s;
    unsigned long long listen_overflows; /* TcpExt ListenOverflows, machine */
    unsigned long long fepd_rss;        /* peak RSS, bytes (rusage) */
    unsigned long long fepd_hwm;        /* VmHWM from /proc, bytes; 0 absent */
    unsigned long long sessions, packets, records, expected;
    unsigned long long busy;            /* push: DCUs refused with NACK BUSY */
    unsigned long long static_bytes, slot_bytes, dcu_bytes;
    unsigned long long commit_passes;   /* fepd's stats line at exit */
    unsigned long long state_syncs;     /* state writes, each with its fsync */
    int failed;
    char why[160];
} e2e_result;

#define FEPD_PATH "./fepd"
#define DCUSIM_PATH "./dcusim"
#define RUN_TIMEOUT_S 900               /* one program, at most */

typedef struct argv_buf {
    char *v[40];
    char text[40][PATH_BENCH];
    int n;
} argv_buf;

static void arg(argv_buf *a, const char *fmt, const char *s, unsigned long u)
{
    if (a->n >= 39)
        return;
    if (s)
        snprintf(a->text[a->n], PATH_BENCH, fmt, s);
    else
        snprintf(a->text[a->n], PATH_BENCH, fmt, u);
    a->v[a->n] = a->text[a->n];
    a->v[++a->n] = NULL;
}

/* dcusim's options for the DCUs of spec. */
static void sim_dcu_args(argv_buf *a, const e2e_spec *e)
{
    arg(a, "--dcus", NULL, 0);
    arg(a, "%lu", NULL, e->dcus);
    arg(a, "--records", NULL, 0);
    arg(a, "%lu", NULL, e->records);
    arg(a, "--meters", NULL, 0);
    arg(a, "%lu", NULL, e->meters);
    if (e->keyed) {
        arg(a, "--key", NULL, 0);
        arg(a, "%s", BENCH_KEY_HEX, 0);
    }
}

static void fail(e2e_result *r, const char *why)
{
    if (!r->failed)
        snprintf(r->why, sizeof r->why, "%s", why);
    r->failed = 1;
}

/* What fepd said at start-up: static memory, the size of a slot and what
 * a DCU of max_dcus costs ("... slots (2528 bytes each), room for 2024 DCUs
 * (252 bytes each), static memory ..."). */
static void fepd_startup(const char *dir, e2e_result *r)
{
    char path[PATH_BENCH];

    snprintf(path, sizeof path, "%s/fepd.log", dir);
    log_load(path);
    r->static_bytes = log_number_after("static memory ");
    r->slot_bytes = log_number_after("slots (");
    r->dcu_bytes = log_number_after("DCUs (");
    r->commit_passes = log_stat("commit_passes=");
    r->state_syncs = log_stat("state_syncs=");
}

/* The pushing or answering dcusim's report. */
static void sim_report(const char *dir, const e2e_spec *e, e2e_result *r)
{
    char path[PATH_BENCH];

    snprintf(path, sizeof path, "%s/dcusim.log", dir);
    r->records = log_value(path, "dcusim: sessions=", "records_acked");
    r->packets = log_value(path, "dcusim: sessions=", "packets_sent");
    r->sessions = log_value(path, "dcusim: sessions=",
                            e->kind == E2E_POLL ? "polls" : "pushes");
    r->expected = (unsigned long long)e->dcus * e->records;
    /* A push that finds fepd at max_sessions (a slot still lingering for
     * the last DCU's close counts) is refused with NACK BUSY and keeps its
     * records: fepd doing its job, reported beside the figure. */
    if (e->kind == E2E_PUSH) {
        r->busy = log_value(path, "dcusim: sessions=", "nack_busy");
        r->expected -= r->busy * e->records;
    }
    if (r->records != r->expected) {
        char why[96];
        snprintf(why, sizeof why, "%llu of %llu records acknowledged",
                 r->records, r->expected);
        fail(r, why);
    }
}

/* VmHWM of a running process from /proc, in bytes; 0 without /proc. */
static unsigned long long proc_hwm(pid_t pid)
{
    char path[64];

    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    if (log_load(path) == 0)
        return 0;
    return log_number_after("VmHWM:") * 1024ULL;
}

static void proc_cpu_split(const proc *fep, e2e_result *r)
{
    r->fepd_user_s = tv_s(fep->ru.ru_utime);
    r->fepd_sys_s = tv_s(fep->ru.ru_stime);
    r->fepd_cpu_s = r->fepd_user_s + r->fepd_sys_s;
    r->fepd_rss = maxrss_bytes(&fep->ru);
}

/*
 * Linux: connections dropped because a listen queue was full, from the
 * TcpExt lines of /proc/net/netstat (a header line of names, then a line
 * of values).  Counts every socket of the machine; 0 without /proc.
 */
static unsigned long long listen_overflows(void)
{
    const char *names, *values, *p;
    unsigned field = 0, i;

    if (log_load("/proc/net/netstat") == 0)
        return 0;
    names = strstr(log_text, "TcpExt: ");
    values = names ? strstr(names + 1, "TcpExt: ") : NULL;
    p = names ? strstr(names, " ListenOverflows") : NULL;
    if (!values || !p || p > values)
        return 0;
    for (; names <= p; names++)         /* p is the space before the name */
        field += *names == ' ';
    for (i = 0, p = values; *p && *p != '\n' && i < field; p++)
        i += *p == ' ';
    return i == field ? strtoull(p, NULL, 10) : 0;
}

static void proc_failed(e2e_result *r, const proc *pr, const char *name)
{
    char why[96];

    proc_describe(pr, name, why, sizeof why);
    fail(r, why);
}

/* Starts the answering dcusim (polls) on a free port; 0 or -1. */
static int sim_listen_start(proc *sim, const char *dir, const e2e_spec *e,
                            unsigned *port, e2e_result *r)
{
    char log_path[PATH_BENCH];
    argv_buf a;

    a.n = 0;
    *port = free_port();
    if (*port == 0) {
        fail(r, "no free port for dcusim");
        return -1;
    }
    arg(&a, "%s", DCUSIM_PATH, 0);
    arg(&a, "--listen", NULL, 0);
    arg(&a, "127.0.0.1:%lu", NULL, *port);
    sim_dcu_args(&a, e);
    arg(&a, "--config-out", NULL, 0);
    arg(&a, "%s/dcus.conf", dir, 0);
    snprintf(log_path, sizeof log_path, "%s/dcusim.log", dir);
    if (proc_start(sim, a.v, log_path) != 0 ||
        log_wait(log_path, "playing", sim, 10000) != 0) {
        proc_stop(sim, 10);
        fail(r, "dcusim did not start");
        return -1;
    }
    return 0;
}

static void run_poll(const e2e_spec *e, e2e_result *r)
{
    char dir[DIR_SIZE], conf[PATH_BENCH], log_path[PATH_BENCH];
    proc sim, fep;
    unsigned port;
    argv_buf a;

    memset(r, 0, sizeof *r);
    if (tmpdir_make(dir, sizeof dir) != 0) {
        fail(r, "no temporary directory");
        return;
    }
    if (sim_listen_start(&sim, dir, e, &port, r) != 0) {
        tree_remove(dir, 2);
        return;
    }
    if (conf_write(dir, e->sync_packet, e->max_sessions, 0, 0) != 0)
        fail(r, "cannot write fep.conf");
    snprintf(conf, sizeof conf, "%s/fep.conf", dir);
    snprintf(log_path, sizeof log_path, "%s/fepd.log", dir);
    a.n = 0;
    arg(&a, "%s", FEPD_PATH, 0);
    arg(&a, "-c", NULL, 0);
    arg(&a, "%s", conf, 0);
    arg(&a, "--once", NULL, 0);
    if (!r->failed && proc_start(&fep, a.v, log_path) == 0) {
        if (proc_reap(&fep, RUN_TIMEOUT_S) != 0)
            proc_failed(r, &fep, "fepd --once");
        r->wall_s = proc_wall_s(&fep);
        proc_cpu_split(&fep, r);
        fepd_startup(dir, r);
    } else {
        fail(r, "fepd did not start");
    }
    if (proc_stop(&sim, 60) != 0)
        proc_failed(r, &sim, "dcusim");
    r->sim_cpu_s = proc_cpu_s(&sim);
    sim_report(dir, e, r);
    tree_remove(dir, 2);
}

/* fepd -c DIR/fep.conf as a daemon, logging to DIR/fepd.log; 0 once its
 * start-up is over (within wait_ms). */
static int fepd_serve(proc *fep, const char *dir, int wait_ms)
{
    char log_path[PATH_BENCH];
    argv_buf a;

    snprintf(log_path, sizeof log_path, "%s/fepd.log", dir);
    a.n = 0;
    arg(&a, "%s", FEPD_PATH, 0);
    arg(&a, "-c", NULL, 0);
    arg(&a, "%s/fep.conf", dir, 0);
    if (proc_start(fep, a.v, log_path) != 0)
        return -1;
    return log_wait(log_path, "static memory", fep, wait_ms);
}

/* The push DCUs' dcu lines: a dcusim that listens for 10 ms writes them. */
static int push_conf(const char *dir, const e2e_spec *e, e2e_result *r)
{
    char log_path[PATH_BENCH];
    proc gen;
    argv_buf a;

    a.n = 0;
    arg(&a, "%s", DCUSIM_PATH, 0);
    arg(&a, "--listen", NULL, 0);
    arg(&a, "127.0.0.1:%lu", NULL, free_port());
    sim_dcu_args(&a, e);
    arg(&a, "--config-out", NULL, 0);
    arg(&a, "%s/dcus.conf", dir, 0);
    arg(&a, "--duration", NULL, 0);
    arg(&a, "0.01", NULL, 0);
    snprintf(log_path, sizeof log_path, "%s/gen.log", dir);
    if (proc_start(&gen, a.v, log_path) != 0 || proc_reap(&gen, 30) != 0) {
        fail(r, "dcusim could not write the dcu lines");
        return -1;
    }
    return 0;
}

static void run_push(const e2e_spec *e, e2e_result *r)
{
    char dir[DIR_SIZE], log_path[PATH_BENCH];
    proc sim, fep;
    unsigned port = free_port();
    argv_buf a;

    memset(r, 0, sizeof *r);
    if (tmpdir_make(dir, sizeof dir) != 0) {
        fail(r, "no temporary directory");
        return;
    }
    if (push_conf(dir, e, r) != 0 ||
        conf_write(dir, e->sync_packet, e->max_sessions, port, 1) != 0) {
        fail(r, "cannot write fep.conf");
        tree_remove(dir, 2);
        return;
    }
    if (fepd_serve(&fep, dir, 10000) != 0) {
        proc_stop(&fep, 10);
        fail(r, "fepd did not start");
        tree_remove(dir, 2);
        return;
    }
    a.n = 0;
    arg(&a, "%s", DCUSIM_PATH, 0);
    arg(&a, "--push", NULL, 0);
    arg(&a, "127.0.0.1:%lu", NULL, port);
    sim_dcu_args(&a, e);
    if (e->push_concurrency) {
        arg(&a, "--push-concurrency", NULL, 0);
        arg(&a, "%lu", NULL, e->push_concurrency);
    }
    snprintf(log_path, sizeof log_path, "%s/dcusim.log", dir);
    r->listen_overflows = listen_overflows();
    if (proc_start(&sim, a.v, log_path) == 0) {
        if (proc_reap(&sim, RUN_TIMEOUT_S) != 0)
            proc_failed(r, &sim, "dcusim --push");
        r->wall_s = proc_wall_s(&sim);
        r->sim_cpu_s = proc_cpu_s(&sim);
    } else {
        fail(r, "dcusim did not start");
    }
    r->listen_overflows = listen_overflows() - r->listen_overflows;
    r->fepd_hwm = proc_hwm(fep.target);
    if (proc_stop(&fep, 60) != 0)
        proc_failed(r, &fep, "fepd");
    proc_cpu_split(&fep, r);
    fepd_startup(dir, r);
    sim_report(dir, e, r);
    tree_remove(dir, 2);
}

/* ------------------------------------------------------------------------
 * The floor: the FEP's side of the poll exchange with nothing but sockets.
 * Canned requests and ACKs (plaintext; no crypto, so plaintext DCUs), a
 * select() loop over as many connections as fepd's max_sessions, frames
 * cut by their LEN field and otherwise not looked at (only LAST, to know
 * when the exchange is over), nothing stored.
 * ---------------------------------------------------------------------- */

#define FLOOR_DCUS_MAX 1000
#define FLOOR_CONNS 256
#define FLOOR_ACKS_MAX 16               /* packets per DCU answered */
#define FLOOR_REQ_SIZE (FRAME_HEADER_SIZE + LP_REQ_SIZE + FRAME_CRC_SIZE)
#define FLOOR_ACK_SIZE (FRAME_HEADER_SIZE + FRAME_CRC_SIZE)

FEP_STATIC_ASSERT(FLOOR_CONNS < FD_SETSIZE - FD_RESERVED, floor_fits_select);

typedef struct floor_conn {
    int fd;                             /* -1: free */
    int connecting;                     /* connect under way, request unsent */
    int closing;                        /* last ACK and FIN sent: await EOF */
    unsigned dcu;
    unsigned frames;                    /* frames received */
    size_t have;
    uint8_t rx[RX_BUF_SIZE];
} floor_conn;

static uint8_t floor_req[FLOOR_DCUS_MAX][FLOOR_REQ_SIZE];
static uint8_t floor_ack[FLOOR_DCUS_MAX][FLOOR_ACKS_MAX][FLOOR_ACK_SIZE];
static floor_conn floor_conns[FLOOR_CONNS];

static void floor_can(unsigned dcus)
{
    uint8_t payload[LP_REQ_SIZE];
    char id[16];
    frame_hdr h;
    unsigned i, f;

    lp_req_put(payload, 0, 0);
    for (i = 0; i < dcus; i++) {
        h.ctl = CTL_LAST;
        h.cmd = CMD_LP_REQ;
        frame_id_set(h.sid, "FEP00001");
        snprintf(id, sizeof id, "DCU%05u", i + 1);
        frame_id_set(h.did, id);
        h.qsn = 1;
        h.msn = 0;
        h.fsn = 0;
        frame_encode(floor_req[i], FLOOR_REQ_SIZE, &h, payload,
                     sizeof payload, NULL, 0);
        h.cmd = CMD_ACK;
        for (f = 0; f < FLOOR_ACKS_MAX; f++) {
            h.msn = (uint16_t)(f + 1);
            h.fsn = (uint16_t)f;
            frame_encode(floor_ack[i][f], FLOOR_ACK_SIZE, &h, NULL, 0, NULL, 0);
        }
    }
}

/* The request fits an empty socket buffer: one write, whole.  0 or -1. */
static int floor_request(floor_conn *c)
{
    c->connecting = 0;
    return sys_write(c->fd, floor_req[c->dcu], FLOOR_REQ_SIZE) ==
                   FLOOR_REQ_SIZE ? 0 : -1;
}

/* Whole frames in c->rx: ACK each, close after the LAST one.  -1 on error. */
static int floor_frames(floor_conn *c)
{
    size_t off = 0;

    while (c->have - off >= FRAME_HEADER_SIZE) {
        size_t total = FRAME_HEADER_SIZE + get_u16be(c->rx + off + HDR_LEN);
        int last = (c->rx[off + HDR_CTL] & CTL_LAST) != 0;

        if (c->have - off < total)
            break;
        if (c->frames >= FLOOR_ACKS_MAX ||
            sys_write(c->fd, floor_ack[c->dcu][c->frames], FLOOR_ACK_SIZE) !=
                FLOOR_ACK_SIZE)
            return -1;
        c->frames++;
        off += total;
        if (last) {
            /* As fepd closes: FIN after the last ACK, then the peer's FIN. */
            c->closing = 1;
            c->have = 0;
            return sys_shutdown_write(c->fd) == 0 ? 0 : -1;
        }
    }
    memmove(c->rx, c->rx + off, c->have - off);
    c->have -= off;
    return 0;
}

/* Opens connections while there are DCUs left and free connections. */
static int floor_open(const sys_addr *a, unsigned dcus, unsigned *next)
{
    unsigned i;

    for (i = 0; i < FLOOR_CONNS && *next < dcus; i++) {
        floor_conn *c = &floor_conns[i];
        int in_progress;

        if (c->fd >= 0)
            continue;
        c->fd = sys_connect(a, &in_progress);
        if (c->fd < 0)
            return -1;
        c->dcu = (*next)++;
        c->frames = 0;
        c->have = 0;
        c->closing = 0;
        c->connecting = in_progress;
        if (!in_progress && floor_request(c) != 0)
            return -1;
    }
    return 0;
}

/* One connection's turn after select(); -1 when its exchange went wrong. */
static int floor_io(floor_conn *c, int readable, int writable, unsigned *done)
{
    ssize_t n;

    if (c->connecting) {
        if (!writable)
            return 0;
        return sys_connect_result(c->fd) == 0 ? floor_request(c) : -1;
    }
    if (!readable)
        return 0;
    n = sys_read(c->fd, c->rx + c->have, sizeof c->rx - c->have);
    if (n == SYS_AGAIN)
        return 0;
    if (c->closing && n < 0) {
        sys_close(c->fd);
        c->fd = -1;
        (*done)++;
        return 0;
    }
    if (n < 0 || c->closing)
        return -1;                      /* closed early, or sent more */
    c->have += (size_t)n;
    return floor_frames(c);
}

/* Closes what an exchange that went wrong left open; marks every
 * connection free. */
static void floor_reset(void)
{
    unsigned i;

    for (i = 0; i < FLOOR_CONNS; i++) {
        if (floor_conns[i].fd >= 0)
            sys_close(floor_conns[i].fd);
        floor_conns[i].fd = -1;
    }
}

/* Polls dcus DCUs at address a; 0, or -1 when an exchange went wrong. */
static int floor_run(const sys_addr *a, unsigned dcus)
{
    unsigned next = 0, done = 0, i;

    while (done < dcus) {
        fd_set rfds, wfds;
        int maxfd = -1;

        if (floor_open(a, dcus, &next) != 0)
            return -1;
        FD_ZERO(&rfds);
        FD_ZERO(&wfds);
        for (i = 0; i < FLOOR_CONNS; i++) {
            const floor_conn *c = &floor_conns[i];

            if (c->fd < 0)
                continue;
            FD_SET(c->fd, c->connecting ? &wfds : &rfds);
            if (c->fd > maxfd)
                maxfd = c->fd;
        }
        if (maxfd < 0)
            return -1;
        if (select(maxfd + 1, &rfds, &wfds, NULL, NULL) < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        for (i = 0; i < FLOOR_CONNS; i++) {
            floor_conn *c = &floor_conns[i];

            if (c->fd >= 0 && floor_io(c, FD_ISSET(c->fd, &rfds),
                                       FD_ISSET(c->fd, &wfds), &done) != 0)
                return -1;
        }
    }
    return 0;
}

static void run_floor(const e2e_spec *e, e2e_result *r)
{
    struct rusage before, after;
    char dir[DIR_SIZE], addr[64], err[128];
    unsigned port;
    sys_addr a;
    proc sim;
    long long t0, t1;
    unsigned i;
    int rc;

    memset(r, 0, sizeof *r);
    for (i = 0; i < FLOOR_CONNS; i++)
        floor_conns[i].fd = -1;         /* static zero would be stdin */
    if (e->dcus > FLOOR_DCUS_MAX || tmpdir_make(dir, sizeof dir) != 0) {
        fail(r, "too many DCUs, or no temporary directory");
        return;
    }
    floor_can(e->dcus);
    if (sim_listen_start(&sim, dir, e, &port, r) != 0) {
        tree_remove(dir, 2);
        return;
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%u", port);
    if (sys_addr_parse(addr, &a, err, sizeof err) != 0) {
        fail(r, err);
    } else {
        getrusage(RUSAGE_SELF, &before);
        t0 = now_ns();
        rc = floor_run(&a, e->dcus);
        t1 = now_ns();
        getrusage(RUSAGE_SELF, &after);
        if (rc != 0)
            fail(r, "an exchange went wrong");
        r->wall_s = (double)(t1 - t0) / 1e9;
        r->fepd_cpu_s = tv_s(after.ru_utime) - tv_s(before.ru_utime) +
                        tv_s(after.ru_stime) - tv_s(before.ru_stime);
    }
    floor_reset();
    if (proc_stop(&sim, 60) != 0)
        proc_failed(r, &sim, "dcusim");
    r->sim_cpu_s = proc_cpu_s(&sim);
    sim_report(dir, e, r);
    tree_remove(dir, 2);
}

/* ------------------------------------------------------------------------
 * Printing
 * ---------------------------------------------------------------------- */

static double per_s(unsigned long long n, double s)
{
    return s > 0 ? (double)n / s : 0;
}

static void e2e_header(void)
{
    printf("%-50s %7s %7s %7s %9s %9s %10s %7s\n", "figure", "wall s",
           "fepd s", "sim s", "sess/s", "pkts/s", "records/s", "us/rec");
}

static void e2e_print(const char *name, const e2e_result *r)
{
    printf("%-50s %7.2f %7.2f %7.2f %9.0f %9.0f %10.0f %7.2f%s%s\n", name,
           r->wall_s, r->fepd_cpu_s, r->sim_cpu_s,
           per_s(r->sessions, r->wall_s),
           per_s(r->packets, r->wall_s), per_s(r->records, r->wall_s),
           r->records ? r->fepd_cpu_s * 1e6 / (double)r->records : 0.0,
           r->failed ? "  FAILED: " : "", r->failed ? r->why : "");
    /* What replay marks cost: made durable before the ACKs, they add a
     * journal append and its fsync to a pass whose frames raised one. */
    if (r->commit_passes > 0)
        printf("%-50s %.2f state fsyncs a committed pass (%llu over %llu)\n",
               "  fepd state", (double)r->state_syncs /
                               (double)r->commit_passes,
               r->state_syncs, r->commit_passes);
    fflush(stdout);
}

static const char *sync_name(int sync_packet)
{
    return sync_packet ? "packet" : "none";
}

#define RUNS_MAX 5

/* Runs a figure `runs` times and keeps the run of median wall time (a
 * failed run wins: its reason is printed). */
static void run_median(void (*run)(const e2e_spec *, e2e_result *),
                       const e2e_spec *e, unsigned runs, e2e_result *out)
{
    static e2e_result r[RUNS_MAX];
    unsigned i, j, n = runs < 1 ? 1 : runs > RUNS_MAX ? RUNS_MAX : runs;

    for (i = 0; i < n; i++) {
        run(e, &r[i]);
        if (r[i].failed) {
            *out = r[i];
            return;
        }
    }
    for (i = 1; i < n; i++) {
        e2e_result t = r[i];
        for (j = i; j > 0 && r[j - 1].wall_s > t.wall_s; j--)
            r[j] = r[j - 1];
        r[j] = t;
    }
    *out = r[n / 2];
}

static void run_e2e(const e2e_spec *e, e2e_result *r)
{
    if (e->kind == E2E_POLL)
        run_poll(e, r);
    else
        run_push(e, r);
}

static unsigned bench_runs(void)
{
    return bench_quick ? 1 : 3;
}

static int run_e2e_row(const e2e_spec *e, e2e_result *r)
{
    char name[96], conc[32] = "";

    run_median(run_e2e, e, bench_runs(), r);
    /* dcusim's default: as many connections as its slots, which are
     * bounded by FD_SETSIZE like fepd's sessions. */
    if (e->kind == E2E_PUSH)
        snprintf(conc, sizeof conc, ", %u at once",
                 e->push_concurrency ? e->push_concurrency
                 : e->dcus < SESSIONS_MAX ? e->dcus : SESSIONS_MAX);
    snprintf(name, sizeof name, "%s %u %s, sync %s, S=%u%s",
             e->kind == E2E_POLL ? "poll" : "push", e->dcus,
             e->keyed ? "keyed" : "plain", sync_name(e->sync_packet),
             e->max_sessions, conc);
    e2e_print(name, r);
    return r->failed;
}

/* ------------------------------------------------------------------------
 * The sections
 * ---------------------------------------------------------------------- */

static const bench_row bench_rows[] = {
    { "decode 2048 B frames through frame_rx", ">= 500 MB/s", run_decode },
    { "GCM open 2000 B payload (frame_open)", ">= 40 MB/s", run_open },
    { "GCM seal 2000 B payload (frame_encode)", ">= 40 MB/s", run_seal },
};

static int section_core(void)
{
    size_t i;
    int failed = 0;

    printf("%-40s %10s %12s  %s\n", "figure (one core)", "MB/s", "frames/s",
           "target");
    for (i = 0; i < sizeof bench_rows / sizeof bench_rows[0]; i++) {
        bench_result r;
        double s;

        memset(&r, 0, sizeof r);
        bench_rows[i].run(&r);
        s = r.ns > 0 ? (double)r.ns / 1e9 : 1e-9;
        printf("%-40s %10.1f %12.0f  %s%s\n", bench_rows[i].name,
               (double)r.bytes / s / 1e6, (double)r.frames / s,
               bench_rows[i].target, r.failed ? "  FAILED: wrong result" : "");
        fflush(stdout);
        failed |= r.failed;
    }
    return failed;
}

#define RECORDS_PER_DCU 96              /* a day of quarter-hours, one meter */
#define GOAL_RECORDS_S 600000.0         /* 22e6 meters x 96 in under an hour */

static int section_throughput(unsigned dcus)
{
    static const struct {
        int keyed, sync_packet;
        unsigned sessions;
    } polls[] = {
        { 1, 0, 64 }, { 1, 0, 256 }, { 1, 1, 64 }, { 1, 1, 256 },
    };
    e2e_spec e;
    e2e_result floor_r, plain_r, r;
    int failed = 0;
    size_t i;

    printf("\nend to end: fepd and dcusim as processes on 127.0.0.1, %u DCUs x "
           "%u records\n", dcus, RECORDS_PER_DCU);
    printf("(wall: fepd --once start to exit, or the pushing dcusim's life; "
           "fepd s, sim s: CPU user+sys of each alone;\n us/rec: fepd CPU per "
           "record; S: max_sessions)\n");
    e2e_header();
    memset(&e, 0, sizeof e);
    e.kind = E2E_POLL;
    e.dcus = dcus;
    e.records = RECORDS_PER_DCU;
    e.meters = 1;
    e.max_sessions = 256;
    run_median(run_floor, &e, bench_runs(), &floor_r);
    e2e_print("floor: bare client, plain, 256 conns [1]", &floor_r);
    failed |= floor_r.failed;
    failed |= run_e2e_row(&e, &plain_r);
    if (!floor_r.failed && !plain_r.failed && floor_r.wall_s > 0 &&
        floor_r.fepd_cpu_s > 0)
        printf("%-50s wall %.2fx, CPU %.2fx the bare client's\n",
               "  fepd / floor (plain, sync none, S=256)",
               plain_r.wall_s / floor_r.wall_s,
               plain_r.fepd_cpu_s / floor_r.fepd_cpu_s);
    for (i = 0; i < sizeof polls / sizeof polls[0]; i++) {
        e.keyed = polls[i].keyed;
        e.sync_packet = polls[i].sync_packet;
        e.max_sessions = polls[i].sessions;
        failed |= run_e2e_row(&e, &r);
        if (i == sizeof polls / sizeof polls[0] - 1 && !r.failed &&
            !floor_r.failed && floor_r.wall_s > 0)
            printf("%-50s wall %.2fx, CPU %.2fx the bare client's\n",
                   "  fepd / floor (keyed, sync packet, S=256)",
                   r.wall_s / floor_r.wall_s,
                   r.fepd_cpu_s / floor_r.fepd_cpu_s);
    }
    e.kind = E2E_PUSH;
    e.keyed = 1;
    e.max_sessions = SESSIONS_MAX;
    for (i = 0; i < 3; i++) {
        /* All at once with each sync, then 100 at a time: fepd's listen
         * backlog is LISTEN_BACKLOG; a burst beyond it is dropped by the
         * kernel and the DCU's SYN is retransmitted a second later. */
        e.sync_packet = i > 0;
        e.push_concurrency = i == 2 ? 100 : 0;
        failed |= run_e2e_row(&e, &r);
        printf("  fepd peak RSS %llu B (rusage)", r.fepd_rss);
        if (r.fepd_hwm)
            printf(", %llu B (/proc VmHWM)", r.fepd_hwm);
        if (r.listen_overflows)
            printf("; listen queue overflows %llu (backlog %d)",
                   r.listen_overflows, LISTEN_BACKLOG);
        if (r.busy)
            printf("; %llu DCUs refused with NACK BUSY", r.busy);
        printf("\n");
    }
    printf("[1] the fepd s column of the floor row is the bare client's CPU "
           "(this process)\n");
    return failed;
}

static int section_sustained(unsigned dcus)
{
    e2e_spec e;
    e2e_result r;
    double rate, cpu_rate;
    char name[96];

    memset(&e, 0, sizeof e);
    e.kind = E2E_POLL;
    e.dcus = dcus;
    e.records = 960;
    e.meters = 10;
    e.keyed = 1;
    e.sync_packet = 1;
    e.max_sessions = 256;
    printf("\nsustained collection: %u DCUs x 960 records (10 meters x 96 "
           "intervals), keyed, sync packet, S=256\n", dcus);
    e2e_header();
    run_poll(&e, &r);
    snprintf(name, sizeof name, "poll %u keyed x 960, sync packet", dcus);
    e2e_print(name, &r);
    rate = per_s(r.records, r.wall_s);
    cpu_rate = r.fepd_cpu_s > 0 ? (double)r.records / r.fepd_cpu_s : 0;
    printf("goal: %.0f records/s (22 million meters x 96 intervals = 2.1 "
           "billion records in under an hour, one core)\n", GOAL_RECORDS_S);
    if (rate > 0)
        printf("  wall:     %.0f records/s = %.0f%% of the goal (%s %.2fx)\n",
               rate, 100 * rate / GOAL_RECORDS_S,
               rate < GOAL_RECORDS_S ? "short by" : "ahead by",
               rate < GOAL_RECORDS_S ? GOAL_RECORDS_S / rate
                                     : rate / GOAL_RECORDS_S);
    printf("  fepd CPU %.2f s = user %.2f + sys %.2f; dcusim %.2f s; peak "
           "RSS %llu B\n", r.fepd_cpu_s, r.fepd_user_s, r.fepd_sys_s,
           r.sim_cpu_s, r.fepd_rss);
    if (cpu_rate > 0)
        printf("  fepd CPU: %.2f us/record = %.0f records per CPU-second = "
               "%.0f%% of the goal on one core\n"
               "            (the goal allows %.2f us/record)\n",
               1e6 / cpu_rate, cpu_rate, 100 * cpu_rate / GOAL_RECORDS_S,
               1e6 / GOAL_RECORDS_S);
    return r.failed;
}

/* The peak RSS of fepd --version: the loader, libc and fepd's code mapped,
 * no sessions, no tables; the floor under every row of the memory table.
 * 0 when it cannot be measured. */
static unsigned long long fepd_floor_rss(void)
{
    char dir[DIR_SIZE], log_path[PATH_BENCH];
    char *argv[] = { FEPD_PATH, "--version", NULL };
    proc p;
    unsigned long long rss = 0;

    if (tmpdir_make(dir, sizeof dir) != 0)
        return 0;
    snprintf(log_path, sizeof log_path, "%s/version.log", dir);
    if (proc_start(&p, argv, log_path) == 0 && proc_reap(&p, 10) == 0)
        rss = maxrss_bytes(&p.ru);
    tree_remove(dir, 1);
    return rss;
}

static int section_memory(unsigned dcus_small, unsigned dcus_large)
{
    const unsigned dcus[2] = { dcus_small, dcus_large };
    const unsigned sessions[2] = { 256, SESSIONS_MAX };
    unsigned long long rss[2][2], stat_b[2][2], slot = 0, dcu = 0;
    int failed = 0;
    unsigned i, j;

    printf("\nmemory: fepd --once polling every configured DCU (keyed, %u "
           "records each), up to max_sessions at once\n", RECORDS_PER_DCU);
    printf("%-50s %12s %12s %9s %8s %7s\n", "figure", "static B",
           "peak RSS B", "RSS/stat", "slot B", "DCU B");
    for (i = 0; i < 2; i++) {
        for (j = 0; j < 2; j++) {
            e2e_spec e;
            e2e_result r;
            char name[96];

            memset(&e, 0, sizeof e);
            e.kind = E2E_POLL;
            e.dcus = dcus[i];
            e.records = RECORDS_PER_DCU;
            e.meters = 1;
            e.keyed = 1;
            e.sync_packet = 0;
            e.max_sessions = sessions[j];
            run_poll(&e, &r);
            rss[i][j] = r.fepd_rss;
            stat_b[i][j] = r.static_bytes;
            slot = r.slot_bytes;
            dcu = r.dcu_bytes;
            snprintf(name, sizeof name, "%u DCUs, max_sessions %u", dcus[i],
                     sessions[j]);
            printf("%-50s %12llu %12llu %9.2f %8llu %7llu%s%s\n", name,
                   r.static_bytes, r.fepd_rss,
                   r.static_bytes ? (double)r.fepd_rss / (double)r.static_bytes
                                  : 0.0,
                   r.slot_bytes, r.dcu_bytes, r.failed ? "  FAILED: " : "",
                   r.failed ? r.why : "");
            fflush(stdout);
            failed |= r.failed;
        }
    }
    printf("%-50s %12s %12llu  (the loader, libc and fepd's code; what is "
           "shared is counted whole)\n", "fepd --version, the floor", "",
           fepd_floor_rss());
    printf("bytes per slot: %llu (a %d-byte receive buffer, one largest "
           "frame; a %d-byte transmit buffer, an ACK and the next request; "
           "the GCM key; state)\n", slot, RX_BUF_SIZE, TX_BUF_SIZE);
    printf("bytes per DCU of max_dcus: %llu (its config entry and the "
           "reload table's, its state, 2 keys and 2 marks, their indexes)\n",
           dcu);
    /* Only a run with more DCUs than slots uses every slot. */
    for (i = 0; i < 2; i++)
        if (dcus[i] > SESSIONS_MAX && rss[i][1] > rss[i][0])
            printf("  peak RSS grows %.0f bytes per session from %u to %u "
                   "slots (%u DCUs); static by %.0f\n",
                   (double)(rss[i][1] - rss[i][0]) / (SESSIONS_MAX - 256), 256,
                   SESSIONS_MAX, dcus[i],
                   (double)(stat_b[i][1] - stat_b[i][0]) /
                       (SESSIONS_MAX - 256));
    printf("max_sessions %d = FD_SETSIZE (%d) - %d reserved descriptors: the "
           "ceiling of one select() process.\n", SESSIONS_MAX, FD_SETSIZE,
           FD_RESERVED);
    return failed;
}

/* ------------------------------------------------------------------------
 * /metrics at scale: a running fepd with N push-only DCUs (dcu D0000001 -),
 * its exposition read at socket speed.  The scrape rows are the median of
 * three scrapes.  A fourth scrape runs with probes beside it: one after
 * the other, a frame from an unknown SID on the push listener, which fepd
 * NACKs in the pass after the one that accepts it; the longest probe round
 * trip bounds how long a pass that writes the scrape holds the loop.
 * ---------------------------------------------------------------------- */

#define SCRAPE_TIMEOUT_MS 10000
#define SCRAPE_CHUNK (64 * 1024)
#define PROBE_NACK_SIZE (FRAME_HEADER_SIZE + NACK_SIZE + FRAME_CRC_SIZE)

typedef struct scrape_result {
    double s;                           /* request written to end of stream */
    unsigned long long bytes;
    unsigned long long samples;         /* fep_dcu_last_success... lines */
    unsigned probes;
    double probe_max_ms;
    int ok;                             /* a 200, read to its end */
} scrape_result;

static uint8_t scrape_buf[SCRAPE_CHUNK];

/* A connected socket to a (non-blocking), or -1. */
static int connect_wait(const sys_addr *a)
{
    int in_progress = 0, fd = sys_connect(a, &in_progress);
    struct timeval tv;
    fd_set wfds;

    if (fd < 0 || !in_progress)
        return fd;
    FD_ZERO(&wfds);
    FD_SET(fd, &wfds);
    tv.tv_sec = 5;
    tv.tv_usec = 0;
    if (select(fd + 1, NULL, &wfds, NULL, &tv) != 1 ||
        sys_connect_result(fd) != 0) {
        sys_close(fd);
        return -1;
    }
    return fd;
}

/* Counts the lines that start with the per-DCU family across reads: *pos
 * is how much of the prefix the current line has matched, -1 none. */
static void count_samples(const uint8_t *p, size_t n, int *pos,
                          unsigned long long *samples)
{
    static const char prefix[] = "fep_dcu_last_success_timestamp_seconds{";
    size_t i;

    for (i = 0; i < n; i++) {
        if (p[i] == '\n') {
            *pos = 0;
        } else if (*pos >= 0) {
            if (p[i] != (uint8_t)prefix[*pos]) {
                *pos = -1;
            } else if (prefix[++*pos] == '\0') {
                (*samples)++;
                *pos = -1;
            }
        }
    }
}

typedef struct probe {
    int fd;                             /* -1: none in flight */
    long long start_ns;
    size_t got;
    uint8_t frame[64];
    size_t frame_len;
} probe;

static void probe_start(probe *pr, const sys_addr *push)
{
    pr->fd = connect_wait(push);
    pr->got = 0;
    pr->start_ns = now_ns();
    if (pr->fd >= 0 && sys_write(pr->fd, pr->frame, pr->frame_len) !=
                           (ssize_t)pr->frame_len) {
        sys_close(pr->fd);
        pr->fd = -1;
    }
}

/* The NACK (or the end of the stream): the round trip is over. */
static void probe_read(probe *pr, scrape_result *r)
{
    uint8_t in[128];
    ssize_t n = sys_read(pr->fd, in, sizeof in);
    double ms;

    if (n == SYS_AGAIN)
        return;
    if (n > 0)
        pr->got += (size_t)n;
    if (n > 0 && pr->got < PROBE_NACK_SIZE)
        return;
    ms = (double)(now_ns() - pr->start_ns) / 1e6;
    if (ms > r->probe_max_ms)
        r->probe_max_ms = ms;
    r->probes++;
    sys_close(pr->fd);
    pr->fd = -1;
}

/* One GET /metrics, read to its end; with push != NULL, probes beside it. */
static void scrape(const sys_addr *metrics, const sys_addr *push,
                   scrape_result *r)
{
    static const char request[] = "GET /metrics HTTP/1.0\r\n\r\n";
    int fd = connect_wait(metrics), pos = 0, head = 1;
    long long t0 = now_ns(), deadline = t0 + SCRAPE_TIMEOUT_MS * 1000000LL;
    probe pr;
    frame_hdr h;
    uint8_t count = 0;

    memset(r, 0, sizeof r[0]);
    pr.fd = -1;
    h.ctl = CTL_DIR_DCU | CTL_LAST;
    h.cmd = CMD_LP_RSP;
    frame_id_set(h.sid, "PROBE");
    frame_id_set(h.did, "FEP00001");
    h.qsn = 1;
    h.msn = 0;
    h.fsn = 0;
    pr.frame_len = frame_encode(pr.frame, sizeof pr.frame, &h, &count, 1,
                                NULL, 0);
    if (fd < 0 || sys_write(fd, request, sizeof request - 1) !=
                      (ssize_t)(sizeof request - 1)) {
        sys_close(fd);
        return;
    }
    for (;;) {
        fd_set rfds;
        struct timeval tv = { 0, 100000 };
        int maxfd = fd;
        ssize_t n;

        if (push && pr.fd < 0)
            probe_start(&pr, push);
        FD_ZERO(&rfds);
        FD_SET(fd, &rfds);
        if (pr.fd >= 0) {
            FD_SET(pr.fd, &rfds);
            maxfd = pr.fd > fd ? pr.fd : fd;
        }
        if (now_ns() > deadline || select(maxfd + 1, &rfds, NULL, NULL, &tv) < 0)
            break;
        if (pr.fd >= 0 && FD_ISSET(pr.fd, &rfds))
            probe_read(&pr, r);
        if (!FD_ISSET(fd, &rfds))
            continue;
        n = sys_read(fd, scrape_buf, sizeof scrape_buf);
        if (n == SYS_AGAIN)
            continue;
        if (n < 0) {
            r->ok = n == SYS_EOF && r->bytes > 0;
            break;
        }
        if (head && (size_t)n >= 12 && memcmp(scrape_buf, "HTTP/1.0 200", 12) != 0)
            break;
        head = 0;
        r->bytes += (size_t)n;
        count_samples(scrape_buf, (size_t)n, &pos, &r->samples);
    }
    r->s = (double)(now_ns() - t0) / 1e9;
    sys_close(fd);
    sys_close(pr.fd);
}

/* fepd's config: no polls, a push listener for the probes, the metrics
 * listener, n push-only DCUs. */
static int metrics_conf(const char *dir, unsigned dcus, unsigned push_port,
                        unsigned metrics_port)
{
    char path[PATH_BENCH];
    FILE *out;
    unsigned i;
    int ok;

    snprintf(path, sizeof path, "%s/fep.conf", dir);
    out = fopen(path, "w");
    if (!out)
        return -1;
    fprintf(out, "data_dir %s/data\nstate_dir %s/state\nsync none\n"
            "max_sessions 16\nlisten 127.0.0.1:%u\nmetrics 127.0.0.1:%u\n",
            dir, dir, push_port, metrics_port);
    for (i = 1; i <= dcus; i++)
        fprintf(out, "dcu D%07u -\n", i);
    ok = !ferror(out);
    return fclose(out) == 0 && ok ? 0 : -1;
}

static int scrape_s_less(const void *a, const void *b)
{
    const scrape_result *x = a, *y = b;

    return (x->s > y->s) - (x->s < y->s);
}

/* The scrapes of one size; 0, or -1 with the reason printed. */
static int metrics_row(unsigned dcus)
{
    char dir[DIR_SIZE], addr[2][64];
    char err[128];
    unsigned ports[2] = { free_port(), free_port() }, runs = bench_runs(), i;
    scrape_result r[RUNS_MAX], probed;
    const char *why = NULL;
    sys_addr a[2];
    proc fep;

    memset(r, 0, sizeof r);
    memset(&probed, 0, sizeof probed);
    if (tmpdir_make(dir, sizeof dir) != 0 ||
        metrics_conf(dir, dcus, ports[0], ports[1]) != 0) {
        printf("%-12u FAILED: cannot write the config\n", dcus);
        return -1;
    }
    for (i = 0; i < 2; i++) {
        snprintf(addr[i], sizeof addr[i], "127.0.0.1:%u", ports[i]);
        sys_addr_parse(addr[i], &a[i], err, sizeof err);
    }
    if (fepd_serve(&fep, dir, 60000) != 0) {
        why = "fepd did not start";
    } else {
        for (i = 0; i < runs && !why; i++) {
            scrape(&a[1], NULL, &r[i]);
            if (!r[i].ok || r[i].samples != dcus)
                why = "a scrape went wrong (not a 200, cut, or samples missing)";
        }
        scrape(&a[1], &a[0], &probed);
        if (!why && (!probed.ok || probed.samples != dcus))
            why = "the probed scrape went wrong";
    }
    if (proc_stop(&fep, 30) != 0 && !why)
        why = "fepd did not stop cleanly";
    tree_remove(dir, 2);
    if (why) {
        printf("%-12u FAILED: %s\n", dcus, why);
        return -1;
    }
    qsort(r, runs, sizeof r[0], scrape_s_less);
    printf("%-12u %12llu %10.1f %8.1f %14.2f %7u\n", dcus, r[runs / 2].bytes,
           r[runs / 2].s * 1e3, (double)r[runs / 2].bytes / r[runs / 2].s / 1e6,
           probed.probe_max_ms, probed.probes);
    fflush(stdout);
    return 0;
}

/* /proc/loadavg's three averages (1, 5, 15 minutes), or "?". */
static void load_average(char *out, size_t cap)
{
    size_t n = 0;
    int k;

    snprintf(out, cap, "?");
    if (log_load("/proc/loadavg") == 0)
        return;
    for (k = 0; k < 3; k++) {
        n += strcspn(log_text + n, " \n");
        if (k < 2 && log_text[n] == ' ')
            n++;
    }
    if (n >= cap)
        n = cap - 1;
    memcpy(out, log_text, n);
    out[n] = '\0';
}

static int section_metrics(void)
{
    static const unsigned sizes[] = { 1000, 10000, 100000 };
    char load[64];
    size_t i;
    int failed = 0;

    load_average(load, sizeof load);
    printf("\n/metrics: GET /metrics from a running fepd with N push-only DCUs, "
           "read at socket speed (median of %u scrapes); load average %s\n",
           bench_runs(), load);
    printf("(probe: a frame from an unknown SID on the push listener during a "
           "further scrape, NACKed one pass after its accept)\n");
    printf("%-12s %12s %10s %8s %14s %7s\n", "DCUs", "bytes", "scrape ms",
           "MB/s", "max probe ms", "probes");
    for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        failed |= metrics_row(sizes[i]) != 0;
    printf("target: 100,000 DCUs in under 0.5 s, while sessions are still "
           "answered within a few ms\n");
    return failed;
}

/* ------------------------------------------------------------------------
 * The field: keyed DCUs 200 ms away, polled once by N shards of fepd at
 * once (`fepd -c FILE --shard I/N --once`, one config file), and by one
 * fepd for comparison.
 *
 * The DCUs are played by dcusim processes with --latency, each answering
 * for at most FIELD_PER_SIM DCUs, all of one shard: a dcusim answers under
 * one FEP id (--fep-id, the DID of its frames) and every shard has its own
 * (fep_id F{shard}: keyed shards must not send under one SID).  Each
 * process plays the whole range of DCU numbers (some 40 bytes a DCU) and
 * fepd's config gives each DCU the address of one process of its shard.
 *
 * A packet costs a round trip (stop-and-wait), so a run moves at most
 * (sessions at once) x 76 records per round trip: the ideal printed beside
 * the rate, with sessions at once = the sum over shards of min(its DCUs,
 * max_sessions).  A run this short is also bound by its waves: a shard
 * with more DCUs than max_sessions polls the rest after a first session
 * ends, 10 round trips later (field_bound_s).
 *
 * fepd --once exits 0 only when every DCU's cycle succeeded; the rows in
 * the shards' lp.csv must equal their records_stored, what the dcusim
 * processes report acknowledged, and every record of every DCU.
 * ---------------------------------------------------------------------- */

#define FIELD_SHARDS 4                  /* BENCH_FIELD_SHARDS */
#define FIELD_SHARDS_MAX 16
#define FIELD_DCUS 4000                 /* BENCH_FIELD_DCUS */
#define FIELD_DCUS_QUICK 800
#define FIELD_DCUS_MAX 99999            /* dcusim's ids are DCU%05u */
#define FIELD_PER_SIM 800               /* DCUs one dcusim answers for */
#define FIELD_SIMS_MAX (FIELD_DCUS_MAX / FIELD_PER_SIM + 1 + FIELD_SHARDS_MAX)
#define FIELD_LATENCY_MS 200
#define FIELD_PACKETS 10                /* keyed K packets per DCU */
#define FIELD_RECORDS (FIELD_PACKETS * LP_RECORDS_MAX_SEC)      /* 760 */
#define READINGS_DAY (22e6 * 96)        /* 22 million meters x 96 intervals */

FEP_STATIC_ASSERT(FIELD_PER_SIM <= SESSIONS_MAX, field_sim_fits_select);

typedef struct field_run {
    unsigned shards, dcus, sims;
    unsigned owned[FIELD_SHARDS_MAX];   /* DCUs of each shard */
    unsigned sims_of[FIELD_SHARDS_MAX]; /* its dcusim processes ... */
    unsigned first_sim[FIELD_SHARDS_MAX]; /* ... from this index on */
    unsigned routed[FIELD_SHARDS_MAX];  /* its DCUs given an address so far */
    unsigned sim_shard[FIELD_SIMS_MAX]; /* the shard each dcusim answers */
    unsigned port[FIELD_SIMS_MAX];      /* each dcusim's */
    unsigned sessions;                  /* sessions at once, at most */
    unsigned waves, biggest;            /* of the shard with most DCUs */
    unsigned long long rss[FIELD_SHARDS_MAX]; /* each shard's peak */
    unsigned long long rows, stored, acked; /* lp.csv; fepd; dcusim */
    char dir[DIR_SIZE];
    char addr[32];                      /* field_addr's answer */
    e2e_result r;                       /* wall, CPU, records, failure */
} field_run;

static proc field_feps[FIELD_SHARDS_MAX];
static proc field_sims[FIELD_SIMS_MAX];

static unsigned field_shard_of(const char *id, unsigned shards)
{
    return jump_hash(fnv1a64(id, strlen(id)), shards);
}

/* Which shard owns each DCU, hence the dcusim processes of each shard and
 * the sessions that can be open at once. */
static void field_plan(field_run *f)
{
    char id[16];
    unsigned n, i, k;

    for (n = 1; n <= f->dcus; n++) {
        snprintf(id, sizeof id, "DCU%05u", n);
        f->owned[field_shard_of(id, f->shards)]++;
    }
    for (i = 0; i < f->shards; i++) {
        f->first_sim[i] = f->sims;
        f->sims_of[i] = (f->owned[i] + FIELD_PER_SIM - 1) / FIELD_PER_SIM;
        for (k = 0; k < f->sims_of[i]; k++)
            f->sim_shard[f->sims++] = i;
        f->sessions += f->owned[i] < SESSIONS_MAX ? f->owned[i] : SESSIONS_MAX;
        if (f->owned[i] > f->biggest)
            f->biggest = f->owned[i];
    }
    f->waves = (f->biggest + SESSIONS_MAX - 1) / SESSIONS_MAX;
}

/* A free port for each dcusim, no two alike; 0 or -1. */
static int field_ports(field_run *f)
{
    unsigned i, j, tries;

    for (i = 0; i < f->sims; i++) {
        for (tries = 0; tries < 20; tries++) {
            f->port[i] = free_port();
            for (j = 0; j < i && f->port[j] != f->port[i]; j++)
                ;
            if (f->port[i] != 0 && j == i)
                break;
        }
        if (tries == 20)
            return -1;
    }
    return 0;
}

/* dcusim k: every DCU number, answering as its shard's FEP; the first one
 * writes the dcu lines.  0 or -1. */
static int field_sim_start(field_run *f, unsigned k)
{
    char log_path[PATH_BENCH];
    e2e_spec e;
    argv_buf a;

    memset(&e, 0, sizeof e);
    e.dcus = f->dcus;
    e.records = FIELD_RECORDS;
    e.meters = 1;
    e.keyed = 1;
    a.n = 0;
    arg(&a, "%s", DCUSIM_PATH, 0);
    arg(&a, "--listen", NULL, 0);
    arg(&a, "127.0.0.1:%lu", NULL, f->port[k]);
    sim_dcu_args(&a, &e);
    arg(&a, "--latency", NULL, 0);
    arg(&a, "%lu", NULL, FIELD_LATENCY_MS);
    arg(&a, "--fep-id", NULL, 0);
    arg(&a, "F%lu", NULL, f->sim_shard[k]);
    if (k == 0) {
        arg(&a, "--config-out", NULL, 0);
        arg(&a, "%s/dcus.conf", f->dir, 0);
    }
    snprintf(log_path, sizeof log_path, "%s/dcusim%u.log", f->dir, k);
    return proc_start(&field_sims[k], a.v, log_path);
}

/* A DCU's address in fep.conf: the processes of its shard in turn. */
static const char *field_addr(const char *id, void *ctx)
{
    field_run *f = ctx;
    unsigned s = field_shard_of(id, f->shards);
    unsigned k = f->first_sim[s] + f->routed[s]++ % f->sims_of[s];

    snprintf(f->addr, sizeof f->addr, "127.0.0.1:%u", f->port[k]);
    return f->addr;
}

static int field_conf(field_run *f)
{
    char path[PATH_BENCH];
    FILE *out;
    int ok;

    snprintf(path, sizeof path, "%s/fep.conf", f->dir);
    out = fopen(path, "w");
    if (!out)
        return -1;
    fprintf(out, "fep_id F{shard}\ndata_dir %s/data{shard}\n"
            "state_dir %s/state{shard}\nsync packet\nmax_sessions %d\n",
            f->dir, f->dir, SESSIONS_MAX);
    snprintf(path, sizeof path, "%s/dcus.conf", f->dir);
    ok = conf_dcus(out, path, field_addr, f) == 0;
    ok &= fclose(out) == 0;
    return ok ? 0 : -1;
}

/* Shard i of f->shards, or the one fepd (no --shard) when there is one. */
static int field_fep_start(field_run *f, unsigned i)
{
    char log_path[PATH_BENCH];
    argv_buf a;

    a.n = 0;
    arg(&a, "%s", FEPD_PATH, 0);
    arg(&a, "-c", NULL, 0);
    arg(&a, "%s/fep.conf", f->dir, 0);
    arg(&a, "--once", NULL, 0);
    if (f->shards > 1) {
        arg(&a, "--shard", NULL, 0);
        snprintf(log_path, sizeof log_path, "%u/%u", i, f->shards);
        arg(&a, "%s", log_path, 0);
    }
    snprintf(log_path, sizeof log_path, "%s/fepd%u.log", f->dir, i);
    return proc_start(&field_feps[i], a.v, log_path);
}

/* Lines of a file less its header line; 0 when absent. */
static unsigned long long csv_rows(const char *path)
{
    unsigned long long lines = 0;
    int fd = open(path, O_RDONLY);

    if (fd < 0)
        return 0;
    for (;;) {
        ssize_t n = read(fd, log_text, LOG_SCAN_MAX);
        const char *p = log_text, *end;

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (end = log_text + n; (p = memchr(p, '\n', (size_t)(end - p)));
             p++)
            lines++;
    }
    close(fd);
    return lines ? lines - 1 : 0;
}

/* The dcusim processes, started, each waited for until it plays. */
static void field_sims_start(field_run *f)
{
    char log_path[PATH_BENCH];
    unsigned k;

    for (k = 0; k < f->sims && !f->r.failed; k++)
        if (field_sim_start(f, k) != 0)
            fail(&f->r, "dcusim did not start");
    for (k = 0; k < f->sims && !f->r.failed; k++) {
        snprintf(log_path, sizeof log_path, "%s/dcusim%u.log", f->dir, k);
        if (log_wait(log_path, "playing", &field_sims[k], 10000) != 0)
            fail(&f->r, "dcusim did not start");
    }
}

/* Every shard at once, each reaped by the run's deadline. */
static void field_feps_run(field_run *f)
{
    long long first = 0, last = 0;
    unsigned i, started;
    char name[48];

    if (field_conf(f) != 0) {
        fail(&f->r, "cannot write fep.conf");
        return;
    }
    f->r.listen_overflows = listen_overflows();
    for (started = 0; started < f->shards; started++)
        if (field_fep_start(f, started) != 0) {
            fail(&f->r, "fepd did not start");
            break;
        }
    for (i = 0; i < started; i++) {
        proc *p = &field_feps[i];
        /* A minute, and 10 ms a DCU, for every shard of the run. */
        long long left = 60 + f->dcus / 100 -
                         (now_ns() - field_feps[0].start_ns) / 1000000000LL;

        if (proc_reap(p, left > 1 ? (unsigned)left : 1) != 0) {
            if (f->shards > 1)
                snprintf(name, sizeof name, "fepd --shard %u/%u --once", i,
                         f->shards);
            else
                snprintf(name, sizeof name, "fepd --once");
            proc_failed(&f->r, p, name);
        }
        if (i == 0 || p->start_ns < first)
            first = p->start_ns;
        if (p->end_ns > last)
            last = p->end_ns;
        f->r.fepd_cpu_s += proc_cpu_s(p);
        f->rss[i] = maxrss_bytes(&p->ru);
        if (f->rss[i] > f->r.fepd_rss)
            f->r.fepd_rss = f->rss[i];
    }
    f->r.wall_s = (double)(last - first) / 1e9;
    f->r.listen_overflows = listen_overflows() - f->r.listen_overflows;
}

/* What was stored against what was acknowledged and what was due. */
static void field_count(field_run *f)
{
    char path[PATH_BENCH], why[160];
    unsigned i;

    for (i = 0; i < f->shards; i++) {
        snprintf(path, sizeof path, "%s/data%u/lp.csv", f->dir, i);
        f->rows += csv_rows(path);
        snprintf(path, sizeof path, "%s/fepd%u.log", f->dir, i);
        f->stored += log_value(path, "stats: ", "records_stored");
    }
    for (i = 0; i < f->sims; i++) {
        snprintf(path, sizeof path, "%s/dcusim%u.log", f->dir, i);
        f->acked += log_value(path, "dcusim: sessions=", "records_acked");
    }
    f->r.records = f->rows;
    f->r.expected = (unsigned long long)f->dcus * FIELD_RECORDS;
    if (f->rows != f->acked || f->stored != f->acked ||
        f->acked != f->r.expected) {
        snprintf(why, sizeof why, "%llu rows in lp.csv, %llu records_stored, "
                 "%llu acknowledged, %llu due", f->rows, f->stored, f->acked,
                 f->r.expected);
        fail(&f->r, why);
    }
}

static void field_run_once(field_run *f, const char *root, unsigned shards,
                           unsigned dcus)
{
    unsigned k;

    memset(f, 0, sizeof *f);
    memset(field_sims, 0, sizeof field_sims);
    f->shards = shards;
    f->dcus = dcus;
    field_plan(f);
    if ((size_t)snprintf(f->dir, sizeof f->dir, "%s/n%u", root, shards) >=
            sizeof f->dir || mkdir(f->dir, 0755) != 0 ||
        field_ports(f) != 0) {
        fail(&f->r, "no directory, or no free ports");
        return;
    }
    field_sims_start(f);
    if (!f->r.failed)
        field_feps_run(f);
    for (k = 0; k < f->sims; k++) {
        if (field_sims[k].pid <= 0)
            continue;
        if (proc_stop(&field_sims[k], 30) != 0)
            proc_failed(&f->r, &field_sims[k], "dcusim");
        f->r.sim_cpu_s += proc_cpu_s(&field_sims[k]);
    }
    field_count(f);
}

static double field_ideal(const field_run *f)
{
    return f->sessions * (double)LP_RECORDS_MAX_SEC * 1000.0 /
           FIELD_LATENCY_MS;
}

/* The shortest wall the round trips allow: the shard with the most DCUs
 * polls them in waves of max_sessions, each DCU's session FIELD_PACKETS
 * round trips long. */
static double field_bound_s(const field_run *f)
{
    return f->waves * FIELD_PACKETS * FIELD_LATENCY_MS / 1000.0;
}

static void field_print(const field_run *f)
{
    const e2e_result *r = &f->r;
    double rate = per_s(r->records, r->wall_s);
    char name[64];
    unsigned i;

    snprintf(name, sizeof name, "%u %s, %u dcusim", f->shards,
             f->shards > 1 ? "shards" : "fepd", f->sims);
    printf("%-26s %7.2f %7.2f %7.2f %10.0f %10.0f %5.0f%% %7.2f %12llu%s%s\n",
           name, r->wall_s, r->fepd_cpu_s, r->sim_cpu_s, rate,
           field_ideal(f), 100 * rate / field_ideal(f),
           r->records ? r->fepd_cpu_s * 1e6 / (double)r->records : 0.0,
           r->fepd_rss, r->failed ? "  FAILED: " : "",
           r->failed ? r->why : "");
    printf("  %u sessions at once; DCUs per shard", f->sessions);
    for (i = 0; i < f->shards; i++)
        printf(" %u", f->owned[i]);
    printf("; peak RSS B per shard");
    for (i = 0; i < f->shards; i++)
        printf(" %llu", f->rss[i]);
    printf("\n  wall bound: %u wave%s of %u round trips = %.2f s (%u DCUs, "
           "%d at once); reached %.0f%%; CPU of all: %.2f cores busy\n",
           f->waves, f->waves == 1 ? "" : "s", FIELD_PACKETS, field_bound_s(f),
           f->biggest, SESSIONS_MAX,
           r->wall_s > 0 ? 100 * field_bound_s(f) / r->wall_s : 0.0,
           r->wall_s > 0 ? (r->fepd_cpu_s + r->sim_cpu_s) / r->wall_s : 0.0);
    printf("  %llu rows stored = records_stored %llu = acknowledged %llu "
           "(due %llu)", f->rows, f->stored, f->acked, r->expected);
    if (r->listen_overflows)
        printf("; listen queue overflows %llu", r->listen_overflows);
    printf("\n");
    fflush(stdout);
}

/* The gain from sharding, the day's readings and the goal, per run. */
static void field_summary(const field_run *runs, unsigned n)
{
    unsigned i;

    if (n == 2 && !runs[0].r.failed && !runs[1].r.failed &&
        runs[1].r.wall_s > 0 && runs[0].r.wall_s > 0)
        printf("sharding: %u shards move %.2fx the records/s of one fepd\n",
               runs[0].shards,
               per_s(runs[0].r.records, runs[0].r.wall_s) /
                   per_s(runs[1].r.records, runs[1].r.wall_s));
    printf("2.1 billion readings a day (22 million meters x 96 intervals) at "
           "the measured rate:");
    for (i = 0; i < n; i++) {
        double rate = per_s(runs[i].r.records, runs[i].r.wall_s);
        if (rate > 0)
            printf("%s %u %s %.1f h", i ? ";" : "", runs[i].shards,
                   runs[i].shards > 1 ? "shards" : "fepd",
                   READINGS_DAY / rate / 3600);
    }
    printf("\ngoal: %.0f records/s:", GOAL_RECORDS_S);
    for (i = 0; i < n; i++)
        printf("%s %u %s %.0f%% of the goal", i ? ";" : "", runs[i].shards,
               runs[i].shards > 1 ? "shards" : "fepd",
               100 * per_s(runs[i].r.records, runs[i].r.wall_s) /
                   GOAL_RECORDS_S);
    printf("\n");
}

/* A count from the environment, def when unset; 0, or -1 (said) when it
 * is not a number in 1..max. */
static int env_count(const char *name, unsigned def, unsigned max,
                     unsigned *out)
{
    const char *s = getenv(name);
    unsigned long v;
    char *end;

    *out = def;
    if (!s || !*s)
        return 0;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || s[0] < '0' || s[0] > '9' || v < 1 ||
        v > max) {
        printf("\nfield: %s=%s: expected 1..%u\n", name, s, max);
        return -1;
    }
    *out = (unsigned)v;
    return 0;
}

static int section_field(void)
{
    static field_run runs[2];
    char root[DIR_SIZE], load[64];
    unsigned shards, dcus, n, i;
    int failed = 0;

    if (env_count("BENCH_FIELD_SHARDS", FIELD_SHARDS, FIELD_SHARDS_MAX,
                  &shards) != 0 ||
        env_count("BENCH_FIELD_DCUS",
                  bench_quick ? FIELD_DCUS_QUICK : FIELD_DCUS, FIELD_DCUS_MAX,
                  &dcus) != 0)
        return 1;
    load_average(load, sizeof load);
    printf("\nfield: %u keyed DCUs x %u records (%u packets of %u), %u ms "
           "away (dcusim --latency %u), polled once by fepd --once, "
           "max_sessions %d, sync packet; load average %s\n", dcus,
           FIELD_RECORDS, FIELD_PACKETS, LP_RECORDS_MAX_SEC, FIELD_LATENCY_MS,
           FIELD_LATENCY_MS, SESSIONS_MAX, load);
    printf("(wall: first fepd start to last fepd exit; fepd s, sim s: CPU "
           "user+sys of all fepd, all dcusim;\n ideal: sessions at once x %u "
           "records / %u ms; us/rec: fepd CPU per record; RSS: the largest "
           "fepd's peak)\n", LP_RECORDS_MAX_SEC, FIELD_LATENCY_MS);
    printf("%-26s %7s %7s %7s %10s %10s %6s %7s %12s\n", "figure", "wall s",
           "fepd s", "sim s", "records/s", "ideal/s", "ideal", "us/rec",
           "peak RSS B");
    if (tmpdir_make(root, sizeof root) != 0) {
        printf("FAILED: no temporary directory\n");
        return 1;
    }
    n = shards > 1 ? 2 : 1;
    for (i = 0; i < n; i++) {
        field_run_once(&runs[i], root, i == 0 ? shards : 1, dcus);
        field_print(&runs[i]);
        failed |= runs[i].r.failed;
    }
    field_summary(runs, n);
    tree_remove(root, 3);
    load_average(load, sizeof load);
    printf("load average after: %s\n", load);
    return failed;
}

/* The machine, from /proc where present: cores, CPU model, load. */
static void machine_line(void)
{
    char model[128] = "?", load[64];
    const char *p;
    unsigned cores = 0;
    size_t n;

    if (log_load("/proc/cpuinfo") > 0) {
        for (p = log_text; (p = strstr(p, "\nprocessor")) != NULL; p++)
            cores++;
        cores += strncmp(log_text, "processor", 9) == 0;
        p = strstr(log_text, "model name");
        if (p && (p = strchr(p, ':')) != NULL) {
            p += 1 + (p[1] == ' ');
            n = strcspn(p, "\n");
            if (n >= sizeof model)
                n = sizeof model - 1;
            memcpy(model, p, n);
            model[n] = '\0';
        }
    }
    load_average(load, sizeof load);
    printf("machine: %u cores, %s; load average %s%s\n\n", cores, model, load,
           bench_quick ? "; BENCH_QUICK (smaller sizes)" : "");
}

static int programs_present(void)
{
    return access(FEPD_PATH, X_OK) == 0 && access(DCUSIM_PATH, X_OK) == 0;
}

/* Whether section name runs: every section when no name was given. */
static int section_on(int argc, char **argv, const char *name)
{
    int i;

    for (i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return 1;
    return argc < 2;
}

/* ./fep_bench [core] [throughput] [sustained] [memory] [metrics] [field]:
 * the sections named, or all of them but field. */
int main(int argc, char **argv)
{
    struct sigaction sa;
    int failed = 0;
    const char *quick = getenv("BENCH_QUICK");

    if (argc > 4 && strcmp(argv[1], "--measure") == 0) {
        int out = atoi(argv[2]);

        fcntl(out, F_SETFD, FD_CLOEXEC);        /* P must not hold it */
        measurer(out, argv + 4, argv[3]);       /* exits */
    }
    bench_self = argv[0];
    bench_quick = quick && *quick && strcmp(quick, "0") != 0;
    if (bench_quick)
        bench_min_ns = BENCH_QUICK_NS;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;           /* no SA_RESTART: waitpid sees EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);

    machine_line();
    if (section_on(argc, argv, "core"))
        failed |= section_core();
    if (!programs_present()) {
        printf("\nend-to-end rows skipped: %s and %s not found here (run "
               "`make bench` from the top directory)\n", FEPD_PATH,
               DCUSIM_PATH);
        return failed ? 1 : 0;
    }
    if (section_on(argc, argv, "throughput"))
        failed |= section_throughput(bench_quick ? 200 : 1000);
    if (section_on(argc, argv, "sustained"))
        failed |= section_sustained(bench_quick ? 1000 : 10000);
    if (section_on(argc, argv, "memory"))
        failed |= section_memory(bench_quick ? 200 : 1000,
                                 bench_quick ? 1000 : 10000);
    if (section_on(argc, argv, "metrics"))
        failed |= section_metrics();
    /* A dozen processes for half a minute: only when named. */
    if (argc > 1 && section_on(argc, argv, "field"))
        failed |= section_field();
    return failed ? 1 : 0;
}
