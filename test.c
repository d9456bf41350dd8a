/*
 * test.c -- the test runner and the helpers the test files share.
 *
 * Usage: fep_test [FILTER]   runs the tests whose name contains FILTER.
 * The last line printed is "N passed, M failed"; the exit status is 0 only
 * when nothing failed and at least one test ran.
 *
 * Owns: the pass/fail counters and the run's temporary root.  Every process
 * a test starts is reaped by test_wait, which kills it after its deadline.
 *
 * Temporary files.  A run makes one directory, $TMPDIR/fep-test.PID (or
 * /tmp/...), and every test directory is made under it by test_tmpdir; TMPDIR
 * is pointed at it too, so that what the programs the tests start put in
 * TMPDIR lands there as well.  At the end the root is removed when nothing
 * failed, and kept for a look when something did (or FEP_TEST_KEEP is set);
 * the line before the last one says which and where.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include "fep.h"
#include "test.h"

static const char *test_filter;
static char temp_root[256];
static unsigned tests_passed, tests_failed;
static unsigned checks_failed_in_test;
static const char *current_test;

void test_run(const char *name, void (*fn)(void))
{
    int64_t started;

    if (test_filter && !strstr(name, test_filter))
        return;
    started = sys_now_ms();

    current_test = name;
    checks_failed_in_test = 0;
    fn();
    /* The time of each test: the suite's budget is kept by knowing them. */
    if (checks_failed_in_test == 0) {
        tests_passed++;
        printf("ok   %-40s %6.2f s\n", name,
               (double)(sys_now_ms() - started) / 1000);
    } else {
        tests_failed++;
        printf("FAIL %-40s %6.2f s\n", name,
               (double)(sys_now_ms() - started) / 1000);
    }
    fflush(stdout);
}

int test_failing(void)
{
    return checks_failed_in_test > 0;
}

static void check_failed(void)
{
    /* Stop a runaway loop of failures from flooding the log. */
    if (++checks_failed_in_test == 20)
        fprintf(stderr, "%s: further failures not shown\n", current_test);
}

void test_check(int ok, const char *file, int line, const char *expr)
{
    if (ok)
        return;
    if (checks_failed_in_test < 20)
        fprintf(stderr, "%s:%d: %s: CHECK failed: %s\n", file, line,
                current_test, expr);
    check_failed();
}

void test_check_u64(uint64_t a, uint64_t b, const char *file, int line,
                    const char *ea, const char *eb)
{
    if (a == b)
        return;
    if (checks_failed_in_test < 20)
        fprintf(stderr, "%s:%d: %s: CHECK failed: %s == %s (%llu != %llu)\n",
                file, line, current_test, ea, eb, (unsigned long long)a,
                (unsigned long long)b);
    check_failed();
}

void test_check_mem(const void *a, const void *b, size_t n, const char *file,
                    int line, const char *ea, const char *eb)
{
    const uint8_t *pa = a, *pb = b;
    size_t i;

    if (memcmp(a, b, n) == 0)
        return;
    for (i = 0; i < n && pa[i] == pb[i]; i++)
        ;
    if (checks_failed_in_test < 20)
        fprintf(stderr,
                "%s:%d: %s: CHECK failed: %s == %s (%zu bytes; first "
                "difference at %zu: %02X != %02X)\n",
                file, line, current_test, ea, eb, n, i, pa[i], pb[i]);
    check_failed();
}

size_t test_unhex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = 0;
    int hi = -1;

    for (; *hex; hex++) {
        int v = hex_digit((unsigned char)*hex);
        if (v < 0)
            continue;
        if (hi < 0) {
            hi = v;
        } else {
            if (n < cap)
                out[n] = (uint8_t)(hi << 4 | v);
            n++;
            hi = -1;
        }
    }
    return n;
}

/*
 * With FEP_TEST_VALGRIND set, fepd (and fepd_t) run under valgrind memcheck:
 * any error or leak makes it exit 99, which the test sees as a failure.
 */
static void exec_maybe_under_valgrind(const char *const argv[])
{
    static const char *const vg[] = {
        "valgrind", "-q", "--error-exitcode=99", "--leak-check=full",
        "--errors-for-leak-kinds=definite,indirect", "--track-fds=no"
    };
    const char *name = strrchr(argv[0], '/');
    const char *full[64];
    size_t i, n = sizeof vg / sizeof vg[0], k = 0;

    name = name ? name + 1 : argv[0];
    if (!getenv("FEP_TEST_VALGRIND") ||
        (strcmp(name, "fepd") != 0 && strcmp(name, "fepd_t") != 0)) {
        execv(argv[0], (char *const *)argv);
        return;
    }
    for (i = 0; i < n; i++)
        full[k++] = vg[i];
    for (i = 0; argv[i] && k < 63; i++)
        full[k++] = argv[i];
    full[k] = NULL;
    execvp("valgrind", (char *const *)full);
}

/* In the child: out_fd becomes stdout and stderr, then argv runs. */
static void child_exec(const char *const argv[], int out_fd)
{
    if (out_fd >= 0) {
        dup2(out_fd, 1);
        dup2(out_fd, 2);
        if (out_fd > 2)
            close(out_fd);
    }
    exec_maybe_under_valgrind(argv);
    fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

pid_t test_spawn(const char *const argv[], const char *log_path)
{
    pid_t pid;

    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid == 0)
        child_exec(argv, open(log_path ? log_path : "/dev/null",
                              O_WRONLY | O_CREAT | O_APPEND, 0644));
    return pid < 0 ? -1 : pid;
}

pid_t test_spawn_to(const char *const argv[], int out_fd)
{
    pid_t pid;

    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid == 0)
        child_exec(argv, out_fd);
    return pid < 0 ? -1 : pid;
}

void test_sleep_ms(int ms)
{
    struct timespec ts;

    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

int test_wait(pid_t pid, int timeout_ms)
{
    int status, waited = 0;

    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR)
            return -1;
        if (waited >= timeout_ms) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        test_sleep_ms(5);
        waited += 5;
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return -1;
}

int test_tmpdir(char *out, size_t cap, const char *tag)
{
    static unsigned serial;

    if (temp_root[0] == '\0')
        return -1;
    for (;;) {
        if ((size_t)snprintf(out, cap, "%s/%s-%u", temp_root, tag, serial++) >=
            cap)
            return -1;
        if (mkdir(out, 0755) == 0)
            return 0;
        if (errno != EEXIST)
            return -1;
    }
}

/* $TMPDIR/fep-test.PID, or .PID.N when a kept one has that name. */
static int temp_root_make(void)
{
    const char *base = getenv("TMPDIR");
    unsigned n;

    if (!base || !*base)
        base = "/tmp";
    for (n = 0; n < 100; n++) {
        if (n == 0)
            snprintf(temp_root, sizeof temp_root, "%s/fep-test.%ld", base,
                     (long)getpid());
        else
            snprintf(temp_root, sizeof temp_root, "%s/fep-test.%ld.%u", base,
                     (long)getpid(), n);
        if (mkdir(temp_root, 0755) == 0)
            return setenv("TMPDIR", temp_root, 1);
        if (errno != EEXIST)
            break;
    }
    fprintf(stderr, "fep_test: cannot make a directory under %s: %s\n", base,
            strerror(errno));
    temp_root[0] = '\0';
    return -1;
}

/* Removed when every test passed, else kept; one line says which. */
static void temp_root_end(void)
{
    struct stat st;

    if (tests_failed > 0 || getenv("FEP_TEST_KEEP")) {
        printf("test files kept in %s\n", temp_root);
        return;
    }
    test_remove_tree(temp_root);
    if (stat(temp_root, &st) == 0) {
        printf("test files: %s could not be removed entirely\n", temp_root);
        tests_failed++;
        return;
    }
    printf("test files removed (%s)\n", temp_root);
}

int test_free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

long test_read_file(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    size_t n;

    if (!f)
        return -1;
    n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
    return (long)n;
}

int test_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    int ok;

    if (!f)
        return -1;
    ok = fputs(text, f) >= 0;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

int test_wait_port(int port, int timeout_ms)
{
    int waited;

    for (waited = 0; waited < timeout_ms; waited += 10) {
        struct sockaddr_in a;
        int fd = socket(AF_INET, SOCK_STREAM, 0), ok;

        if (fd < 0)
            return -1;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_port = htons((uint16_t)port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
        close(fd);
        if (ok)
            return 0;
        test_sleep_ms(10);
    }
    return -1;
}

long test_count_in(const char *text, const char *needle)
{
    long n = 0;

    for (; (text = strstr(text, needle)) != NULL; text++)
        n++;
    return n;
}

long test_count_lines(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    long n = 0;

    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strstr(line, needle))
            n++;
    fclose(f);
    return n;
}

int test_log_last_line(const char *path, const char *needle, char *out,
                       size_t cap)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    int found = -1;

    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        if (strstr(line, needle)) {
            snprintf(out, cap, "%s", line);
            found = 0;
        }
    }
    fclose(f);
    return found;
}

/* The key must follow a space, so that "opened" does not match
 * "reopened". */
long long test_kv_get(const char *line, const char *key)
{
    char needle[64];
    const char *v;

    snprintf(needle, sizeof needle, " %s=", key);
    v = strstr(line, needle);
    return v ? strtoll(v + strlen(needle), NULL, 10) : -1;
}

long test_log_count(const char *path, const char *needle)
{
    long n = test_count_lines(path, needle);

    return n < 0 ? 0 : n;
}

int test_wait_log(const char *path, const char *needle, long count, int ms)
{
    int64_t deadline = sys_now_ms() + ms;

    while (test_log_count(path, needle) < count) {
        if (sys_now_ms() >= deadline)
            return -1;
        test_sleep_ms(10);
    }
    return 0;
}

void test_remove_tree(const char *path)
{
    DIR *dir = opendir(path);
    struct dirent *e;

    if (dir) {
        while ((e = readdir(dir)) != NULL) {
            char sub[512 + 64];
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            test_remove_tree(sub);
        }
        closedir(dir);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static sys_ledger unit_ledger;           /* at test_unit_begin */

void test_unit_begin(char *dir, size_t cap, const char *tag)
{
    CHECK(test_tmpdir(dir, cap, tag) == 0);
    CHECK(sys_fault_set("") == 0);
    unit_ledger = sys_ledger_get();
}

void test_unit_check_ledger(void)
{
    sys_ledger now = sys_ledger_get();

    CHECK_EQ(now.opened - unit_ledger.opened, now.closed - unit_ledger.closed);
}

void test_unit_end(const char *dir)
{
    CHECK(sys_fault_set("") == 0);
    test_unit_check_ledger();
    test_remove_tree(dir);
}

const char *test_path(const char *dir, const char *name)
{
    static char path[2][512];
    static unsigned turn;
    char *p = path[turn++ % 2];

    if (snprintf(p, sizeof path[0], "%s/%s", dir, name) >= (int)sizeof path[0])
        CHECK(!"a test path too long");
    return p;
}

/* ------------------------------------------------------------------------
 * Raw peers: a DCU or a FEP played by the test itself, frame by frame
 * ---------------------------------------------------------------------- */

/* A blocking TCP socket to 127.0.0.1:port with RAW_MS timeouts, or -1. */
int test_connect(int port, int timeout_ms)
{
    struct sockaddr_in a;
    struct timeval tv;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0)
        return -1;
    tv.tv_sec = timeout_ms / 1000;
    tv.tv_usec = (timeout_ms % 1000) * 1000;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int raw_connect(int port)
{
    return test_connect(port, RAW_MS);
}

long test_http_get(int port, const char *path, char *buf, size_t cap, int ms)
{
    int64_t deadline = sys_now_ms() + ms;
    int fd = raw_connect(port);
    char req[256];
    size_t n = 0;
    int len = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: test\r\n\r\n",
                       path);

    buf[0] = '\0';
    if (fd < 0 || len <= 0 || (size_t)len >= sizeof req ||
        write(fd, req, (size_t)len) != len) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    while (sys_now_ms() < deadline && n < cap - 1) {
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r <= 0) {
            close(fd);
            buf[n] = '\0';
            return r == 0 ? (long)n : -1;
        }
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    return -1;
}

int test_http_status(const char *response)
{
    return strncmp(response, "HTTP/1.", 7) == 0 && strlen(response) > 12
               ? atoi(response + 9) : -1;
}

int port_of(const char *addr)
{
    const char *colon = strrchr(addr, ':');

    return colon ? atoi(colon + 1) : -1;
}

/* One frame from sid to did: a K of one record, or (cmd != 'K') an empty
 * payload; protected when key is given. */
int raw_send(int fd, const char *sid, const char *did, uint8_t ctl,
                    uint8_t cmd, uint16_t qsn, uint16_t fsn, const gcm_key *key,
                    uint32_t ic)
{
    uint8_t payload[1 + LP_RECORD_SIZE], out[FRAME_SIZE_MAX];
    size_t len = 0, n;
    frame_hdr h;

    if (cmd == CMD_LP_RSP) {
        lp_record r;

        memcpy(r.meter_id, "MTR000000001", METER_ID_SIZE);
        r.ts = 1767225600u + 900u * fsn + 60u * qsn;
        r.import_wh = 1000 + fsn;
        r.export_wh = 7;
        r.status = 0;
        payload[0] = 1;
        lp_record_put(payload, 0, &r);
        len = sizeof payload;
    } else if (cmd == CMD_DCU_STATUS_RSP) {
        dcu_status st = { 0x0102, 60, 1767225600u, 1, 0 };

        dcu_status_put(payload, &st);
        len = DCU_STATUS_SIZE;
    }
    h.ctl = ctl;
    h.cmd = cmd;
    frame_id_set(h.sid, sid);
    frame_id_set(h.did, did);
    h.qsn = qsn;
    h.msn = fsn;
    h.fsn = fsn;
    n = frame_encode(out, sizeof out, &h, payload, len, key, ic);
    return n > 0 && write(fd, out, n) == (ssize_t)n ? 0 : -1;
}

/* The next frame on fd (opened with key when protected): its command,
 * 0x100 + code for a NACK, -1 on a timeout, a close or a bad frame.  The
 * header goes to *hdr when given. */
int raw_answer(int fd, const gcm_key *key, frame *hdr)
{
    static frame_rx rx;
    static uint8_t plain[FRAME_DATA_MAX];

    frame_rx_reset(&rx);
    for (;;) {
        frame f;
        frame_result r = frame_rx_next(&rx, &f);
        const uint8_t *p = f.data;
        size_t len = f.data_len, room;
        uint32_t ic;
        uint8_t *space;
        ssize_t n;

        if (r == FRAME_READY) {
            if (f.ctl & CTL_SEC) {
                if (!key || frame_open(&f, key, plain, &len, &ic) != FEP_OK)
                    return -1;
                p = plain;
            }
            if (hdr)
                *hdr = f;
            return f.cmd == CMD_NACK && len == 1 ? 0x100 + p[0] : f.cmd;
        }
        if (r != FRAME_NEED_MORE)
            return -1;
        space = frame_rx_space(&rx, &room);
        n = read(fd, space, room);
        if (n <= 0)
            return -1;
        frame_rx_commit(&rx, (size_t)n);
    }
}

/* Whether the peer closed fd within ms (a read sees the end). */
int raw_closed(int fd, int ms)
{
    uint8_t sink[256];
    int64_t deadline = sys_now_ms() + ms;

    while (sys_now_ms() < deadline) {
        fd_set r;
        struct timeval tv = { 0, 20000 };

        FD_ZERO(&r);
        FD_SET(fd, &r);
        if (select(fd + 1, &r, NULL, NULL, &tv) > 0) {
            ssize_t n = read(fd, sink, sizeof sink);
            if (n <= 0)
                return 1;
        }
    }
    return 0;
}

int test_listen(int port)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;

    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 16) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* A DCU in the test process: a listening socket fepd polls. */
int dcu_listen(int *port)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int fd = test_listen(0);

    if (fd < 0)
        return -1;
    if (getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

/* The next connection on a listening socket, with RAW_MS timeouts. */
int dcu_accept(int lfd)
{
    struct timeval tv = { RAW_MS / 1000, 0 };
    fd_set r;
    int fd;

    FD_ZERO(&r);
    FD_SET(lfd, &r);
    if (select(lfd + 1, &r, NULL, NULL, &tv) <= 0)
        return -1;
    fd = accept(lfd, NULL, NULL);
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    return fd;
}

/* ------------------------------------------------------------------------
 * Records: lp.csv and dcusim's acked CSV as sorted sets
 * ---------------------------------------------------------------------- */

void test_recs_free(struct test_recs *r)
{
    free(r->v);
    memset(r, 0, sizeof *r);
}

static void recs_add(struct test_recs *r, const struct test_rec *x)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 1024;
        struct test_rec *v = realloc(r->v, cap * sizeof *v);
        if (!v) {
            CHECK(!"out of memory");
            return;
        }
        r->v = v;
        r->cap = cap;
    }
    r->v[r->n++] = *x;
}

/* One data line of `fields` comma-separated fields (lp.csv 9, acked 6). */
static int rec_parse(const char *line, unsigned fields, struct test_rec *x)
{
    unsigned commas = 0;
    const char *p;
    int used = 0;

    for (p = line; *p && *p != '\n'; p++)
        commas += *p == ',';
    if (*p != '\n' || commas + 1 != fields)
        return -1;
    if (sscanf(line, "%15[^,],%15[^,],%lu,%lu,%lu,%lu%n", x->dcu, x->meter,
               &x->ts, &x->import_wh, &x->export_wh, &x->status, &used) != 6)
        return -1;
    return line[used] == (fields == 6 ? '\n' : ',') ? 0 : -1;
}

/* Adds the rows of a CSV file with `fields` columns; -1 when it cannot be
 * read. */
int test_recs_load(struct test_recs *r, const char *path, unsigned fields)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    long lineno = 0;

    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        struct test_rec x;
        lineno++;
        if (strncmp(line, "dcu_id,", 7) == 0) {
            if (lineno == 1)
                r->headers++;
            else
                r->misplaced_headers++;
        } else if (rec_parse(line, fields, &x) == 0) {
            recs_add(r, &x);
        } else {
            r->bad++;
        }
    }
    fclose(f);
    return 0;
}

/* (dcu_id, meter_id, ts) identifies a reading. */
static int rec_key_cmp(const void *a, const void *b)
{
    const struct test_rec *x = a, *y = b;
    int c = strcmp(x->dcu, y->dcu);

    if (c == 0)
        c = strcmp(x->meter, y->meter);
    if (c == 0)
        c = (x->ts > y->ts) - (x->ts < y->ts);
    return c;
}

void test_recs_sort(struct test_recs *r)
{
    if (r->n > 0)
        qsort(r->v, r->n, sizeof *r->v, rec_key_cmp);
}

/* Readings present more than once (r sorted). */
size_t test_recs_dups(const struct test_recs *r)
{
    size_t i, n = 0;

    for (i = 1; i < r->n; i++)
        n += rec_key_cmp(&r->v[i - 1], &r->v[i]) == 0;
    return n;
}

/* Records of want that have (sorted) lacks, or holds with other values. */
size_t test_recs_missing(const struct test_recs *have,
                         const struct test_recs *want)
{
    size_t i, n = 0;

    for (i = 0; i < want->n; i++) {
        const struct test_rec *w = &want->v[i];
        const struct test_rec *h = have->n ? bsearch(w, have->v, have->n,
                                                sizeof *w, rec_key_cmp) : NULL;
        n += !h || h->import_wh != w->import_wh ||
             h->export_wh != w->export_wh || h->status != w->status;
    }
    return n;
}

size_t test_recs_of_dcu(const struct test_recs *r, unsigned dcu)
{
    char id[16];
    size_t i, n = 0;

    snprintf(id, sizeof id, "DCU%05u", dcu);
    for (i = 0; i < r->n; i++)
        n += strcmp(r->v[i].dcu, id) == 0;
    return n;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        test_filter = argv[1];
    /* The tests start processes that may be told to exit by a signal; a
     * dead pipe must not kill the runner. */
    signal(SIGPIPE, SIG_IGN);
    if (temp_root_make() != 0)
        return 1;
    /* fepd_t polls every DCU at start-up, not at its phase (test_shard.c
     * tests the phases and unsets it there). */
    setenv("FEP_TEST_POLL_AT_START", "1", 1);

    test_crypto_suite();
    test_frame_suite();
    test_config_suite();
    test_store_suite();
    test_state_suite();
    test_sim_suite();
    test_fep_suite();
    test_fault_suite();
    test_trust_suite();
    test_docs_suite();
    test_daemon_suite();
    test_shard_suite();

    temp_root_end();
    printf("%u passed, %u failed\n", tests_passed, tests_failed);
    return (tests_failed == 0 && tests_passed > 0) ? 0 : 1;
}
