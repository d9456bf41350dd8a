/*
 * sys.c -- the portability seam.  Every system call that fepd and dcusim make
 * on a descriptor goes through a function here, for three reasons:
 *
 *   1. the POSIX details live in one place (non-blocking sockets, close-on-
 *      exec, SIGPIPE suppression, EINTR, descriptors below FD_SETSIZE);
 *   2. the descriptor ledger counts every open and close, so a test can prove
 *      that a run ends with as many closed as opened;
 *   3. a test build (-DFEP_FAULT) can make the Nth call of an operation fail
 *      with a chosen error, to sweep fault injection over a whole run.
 *
 * Owns: the ledger counters, the log level, the count of log lines dropped
 * and the fault table, and the service manager's notification socket
 * (file-scope statics, the only globals of the program besides fep.c's
 * signal flags); /dev/null on descriptors 0-2 when they were closed at
 * start (held for the process's life, outside the ledger).
 * Must not touch: buffers or descriptors it did not open on a caller's behalf;
 * it allocates nothing.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <netinet/tcp.h>

#include "fep.h"

static sys_ledger ledger;
static int log_level = LOG_INFO;
static const char *log_name = "fep";

/* ------------------------------------------------------------------------
 * Fault injection (test builds only)
 * ---------------------------------------------------------------------- */

/* write is a socket write; fwrite a file write (sys_write_all). */
enum sys_op { OP_READ, OP_WRITE, OP_FWRITE, OP_ACCEPT, OP_CONNECT, OP_OPEN,
              OP_FSYNC, OP_RENAME, OP_COUNT };

#ifdef FEP_FAULT
static const char *const op_names[OP_COUNT] = {
    "read", "write", "fwrite", "accept", "connect", "open", "fsync", "rename"
};

#define FAULT_SHORT (-1)                /* a short transfer, not an errno */

struct fault {
    uint64_t at;                        /* 1-based call number; 0 = none */
    int sticky;                         /* "N+": this call and every later one */
    int err;                            /* errno, or FAULT_SHORT */
};

static struct fault faults[OP_COUNT];
static uint64_t op_calls[OP_COUNT];
static int faults_loaded;

static int fault_err_parse(const char *s)
{
    static const struct { const char *name; int err; } table[] = {
        { "EINTR", EINTR }, { "EAGAIN", EAGAIN }, { "SHORT", FAULT_SHORT },
        { "ECONNRESET", ECONNRESET }, { "ENOSPC", ENOSPC },
        { "EMFILE", EMFILE }, { "EIO", EIO },
    };
    size_t i;

    for (i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(s, table[i].name) == 0)
            return table[i].err;
    return 0;
}

/* One "OP:N[+]:ERR" item; 0 or -1. */
static int fault_parse_one(const char *item)
{
    char op[16], err[16];
    unsigned long long at;
    char plus[2] = "";
    int i;

    if (sscanf(item, "%15[a-z]:%llu%1[+]:%15[A-Z]", op, &at, plus, err) != 4 &&
        sscanf(item, "%15[a-z]:%llu:%15[A-Z]", op, &at, err) != 3)
        return -1;
    for (i = 0; i < OP_COUNT; i++) {
        if (strcmp(op, op_names[i]) == 0) {
            faults[i].at = at;
            faults[i].sticky = plus[0] == '+';
            faults[i].err = fault_err_parse(err);
            return (at > 0 && faults[i].err != 0) ? 0 : -1;
        }
    }
    return -1;
}

int sys_fault_set(const char *spec)
{
    char copy[256], *item, *save = NULL;

    memset(faults, 0, sizeof faults);
    memset(op_calls, 0, sizeof op_calls);
    faults_loaded = 1;
    if (!spec || !*spec)
        return 0;
    if (strlen(spec) >= sizeof copy)
        return -1;
    strcpy(copy, spec);
    for (item = strtok_r(copy, ",", &save); item;
         item = strtok_r(NULL, ",", &save))
        if (fault_parse_one(item) != 0)
            return -1;
    return 0;
}

/* 0: make the call; else the errno (or FAULT_SHORT) to fake. */
static int fault_check(enum sys_op op)
{
    uint64_t n;

    if (!faults_loaded && sys_fault_set(getenv("FEP_FAULT")) != 0)
        log_msg(LOG_ERROR, "FEP_FAULT: cannot parse '%s'", getenv("FEP_FAULT"));
    n = ++op_calls[op];
    if (faults[op].at == 0)
        return 0;
    if (n == faults[op].at || (faults[op].sticky && n > faults[op].at))
        return faults[op].err;
    return 0;
}
#else
static int fault_check(enum sys_op op)
{
    (void)op;
    return 0;
}
#define FAULT_SHORT (-1)
#endif

/* ------------------------------------------------------------------------
 * Time
 * ---------------------------------------------------------------------- */

int64_t sys_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t sys_wall_s(void)
{
    return (int64_t)time(NULL);
}

/* Days since 1970-01-01 to a proleptic Gregorian date, in 400-year eras
 * of 146,097 days counted from 0000-03-01 (H. Hinnant, "chrono-Compatible
 * Low-Level Date Algorithms"): no table, no loop, right for any int64 day. */
void sys_utc_of(int64_t t, sys_utc *u)
{
    int64_t days = t / 86400, secs = t % 86400, era, year;
    int64_t doe, yoe, doy, mp;

    if (secs < 0) {
        secs += 86400;
        days--;
    }
    days += 719468;                     /* 0000-03-01 to 1970-01-01 */
    era = (days >= 0 ? days : days - 146096) / 146097;
    doe = days - era * 146097;                          /* [0, 146096] */
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);      /* [0, 365] */
    mp = (5 * doy + 2) / 153;                           /* March is 0 */
    year = yoe + era * 400 + (mp >= 10);
    u->year = (int)year;
    u->month = (int)(mp < 10 ? mp + 3 : mp - 9);
    u->day = (int)(doy - (153 * mp + 2) / 5 + 1);
    u->hour = (int)(secs / 3600);
    u->min = (int)(secs / 60 % 60);
    u->sec = (int)(secs % 60);
}

/* ------------------------------------------------------------------------
 * Addresses
 * ---------------------------------------------------------------------- */

/* A socket address into the compact form, and back. */
static int addr_from_sockaddr(const struct sockaddr *sa, sys_addr *out)
{
    memset(out, 0, sizeof *out);
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        out->family = 4;
        memcpy(out->ip, &in->sin_addr, 4);
        out->port = ntohs(in->sin_port);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 =
            (const struct sockaddr_in6 *)(const void *)sa;
        out->family = 6;
        memcpy(out->ip, &in6->sin6_addr, 16);
        out->port = ntohs(in6->sin6_port);
        out->scope_id = in6->sin6_scope_id;
        return 0;
    }
    return -1;
}

static socklen_t addr_to_sockaddr(const sys_addr *a, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (a->family == 6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)(void *)ss;
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, a->ip, 16);
        in6->sin6_port = htons(a->port);
        in6->sin6_scope_id = a->scope_id;
        return sizeof *in6;
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)(void *)ss;
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, a->ip, 4);
        in->sin_port = htons(a->port);
        return sizeof *in;
    }
}

/* A numeric address needs no resolver: no blocking, no allocation (a
 * reload parses the whole config file again). */
static int addr_numeric(const char *host, unsigned port, sys_addr *out)
{
    memset(out, 0, sizeof *out);
    out->port = (uint16_t)port;
    if (inet_pton(AF_INET, host, out->ip) == 1) {
        out->family = 4;
        return 0;
    }
    if (inet_pton(AF_INET6, host, out->ip) == 1) {
        out->family = 6;
        return 0;
    }
    return -1;
}

int sys_addr_parse(const char *text, sys_addr *out, char *err, size_t errlen)
{
    char host[256];
    const char *port;
    struct addrinfo hints, *res = NULL;
    size_t hostlen;
    int rc;

    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':') {
            snprintf(err, errlen, "'%s': expected [IPv6]:port", text);
            return -1;
        }
        hostlen = (size_t)(close - text - 1);
        text++;
        port = close + 2;
    } else {
        const char *colon = strrchr(text, ':');
        if (!colon) {
            snprintf(err, errlen, "'%s': expected host:port", text);
            return -1;
        }
        hostlen = (size_t)(colon - text);
        port = colon + 1;
        if (memchr(text, ':', hostlen) != NULL) {
            snprintf(err, errlen, "'%s': an IPv6 address goes in brackets, "
                     "[v6]:port", text);
            return -1;
        }
    }
    if (hostlen == 0 || hostlen >= sizeof host || !*port ||
        strspn(port, "0123456789") != strlen(port) || strlen(port) > 5 ||
        atol(port) < 1 || atol(port) > 65535) {
        snprintf(err, errlen, "'%s': bad host or port (1..65535)", text);
        return -1;
    }
    memcpy(host, text, hostlen);
    host[hostlen] = '\0';
    if (addr_numeric(host, (unsigned)atol(port), out) == 0)
        return 0;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0 || !res || addr_from_sockaddr(res->ai_addr, out) != 0) {
        snprintf(err, errlen, "'%s': cannot resolve '%s': %s", text, host,
                 rc ? gai_strerror(rc) : "no address");
        if (res)
            freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    return 0;
}

void sys_addr_str(const sys_addr *a, char *out, size_t outlen)
{
    char host[INET6_ADDRSTRLEN];

    if (a->family == 0 ||
        !inet_ntop(a->family == 6 ? AF_INET6 : AF_INET, a->ip, host,
                   sizeof host)) {
        snprintf(out, outlen, "?");
        return;
    }
    snprintf(out, outlen, a->family == 6 ? "[%s]:%u" : "%s:%u", host,
             (unsigned)a->port);
}

int sys_addr_equal(const sys_addr *a, const sys_addr *b)
{
    return a->family == b->family && a->port == b->port &&
           a->scope_id == b->scope_id &&
           memcmp(a->ip, b->ip, a->family == 6 ? 16 : 4) == 0;
}

/* ------------------------------------------------------------------------
 * Descriptors
 * ---------------------------------------------------------------------- */

/* Counts a new descriptor; refuses one that select() could not watch. */
static int fd_adopt(int fd)
{
    if (fd < 0)
        return -1;
    ledger.opened++;
    if (fd >= FD_SETSIZE) {
        sys_close(fd);
        errno = EMFILE;
        return -1;
    }
    return fd;
}

static int socket_setup(int fd)
{
    int flags = fcntl(fd, F_GETFL);

    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -1;
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        return -1;
#ifdef SO_NOSIGPIPE
    {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
    }
#endif
    return 0;
}

/* A new non-blocking stream socket for a's family; -1 with errno. */
static int socket_open(const sys_addr *a)
{
    int fd = fd_adopt(socket(a->family == 6 ? AF_INET6 : AF_INET,
                             SOCK_STREAM, 0));
    int saved;

    if (fd < 0)
        return -1;
    if (socket_setup(fd) == 0)
        return fd;
    saved = errno;
    sys_close(fd);
    errno = saved;
    return -1;
}

int sys_listen(const sys_addr *a, int backlog)
{
    int fd = socket_open(a), one = 1, saved;
    struct sockaddr_storage ss;
    socklen_t len = addr_to_sockaddr(a, &ss);

    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)&ss, len) == 0 &&
        listen(fd, backlog) == 0)
        return fd;
    saved = errno;
    sys_close(fd);
    errno = saved;
    return -1;
}

int sys_connect(const sys_addr *a, int *in_progress)
{
    int fd, fault = fault_check(OP_CONNECT), saved, one = 1;
    struct sockaddr_storage ss;
    socklen_t len = addr_to_sockaddr(a, &ss);

    if (fault > 0) {
        errno = fault;
        return -1;
    }
    fd = socket_open(a);
    if (fd < 0)
        return -1;
    /* Requests and ACKs are single small frames: send them at once. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    *in_progress = 0;
    if (connect(fd, (const struct sockaddr *)&ss, len) == 0)
        return fd;
    if (errno == EINPROGRESS || errno == EINTR) {
        *in_progress = 1;
        return fd;
    }
    saved = errno;
    sys_close(fd);
    errno = saved;
    return -1;
}

int sys_connect_result(int fd)
{
    int err = 0;
    socklen_t len = sizeof err;

    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        return errno;
    return err;
}

int sys_accept(int listen_fd, sys_addr *peer)
{
    int fd, fault = fault_check(OP_ACCEPT), one = 1;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;

    if (fault > 0) {
        errno = fault;
        return -1;
    }
    fd = accept(listen_fd, (struct sockaddr *)&ss, &len);
    if (fd < 0)
        return -1;
    fd = fd_adopt(fd);
    if (fd < 0)
        return -1;
    if (socket_setup(fd) != 0) {
        int saved = errno;
        sys_close(fd);
        errno = saved;
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (peer && addr_from_sockaddr((const struct sockaddr *)&ss, peer) != 0)
        memset(peer, 0, sizeof *peer);
    return fd;
}

/* Maps a faked or real failure of read/write to the SYS_ codes. */
static ssize_t io_result(ssize_t n)
{
    if (n > 0)
        return n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return SYS_AGAIN;
    return SYS_ERROR;
}

ssize_t sys_read(int fd, void *buf, size_t n)
{
    int fault = fault_check(OP_READ);
    ssize_t r;

    if (fault > 0) {
        errno = fault;
        return io_result(-1);
    }
    if (fault == FAULT_SHORT && n > 1)
        n /= 2;
    r = read(fd, buf, n);
    if (r == 0)
        return SYS_EOF;
    return io_result(r);
}

ssize_t sys_write(int fd, const void *buf, size_t n)
{
    int fault = fault_check(OP_WRITE), flags = 0;
    ssize_t r;

    if (fault > 0) {
        errno = fault;
        return io_result(-1);
    }
    if (fault == FAULT_SHORT && n > 1)
        n /= 2;
#ifdef MSG_NOSIGNAL
    flags = MSG_NOSIGNAL;
#endif
    r = send(fd, buf, n, flags);
    if (r < 0 && errno == ENOTSOCK)
        r = write(fd, buf, n);
    if (r == 0)
        errno = EAGAIN;
    return io_result(r);
}

int sys_close(int fd)
{
    if (fd < 0)
        return 0;
    ledger.closed++;
    /* POSIX leaves the descriptor's state unspecified after EINTR; on the
     * systems this runs on it is released, so close is never retried. */
    return close(fd);
}

ssize_t sys_peek(int fd)
{
    uint8_t b;
    ssize_t r = recv(fd, &b, 1, MSG_PEEK);

    if (r == 0)
        return SYS_EOF;
    return io_result(r);
}

int sys_set_rcvbuf(int fd, int bytes)
{
    return setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
}

int sys_shutdown_write(int fd)
{
    return shutdown(fd, SHUT_WR);
}

sys_ledger sys_ledger_get(void)
{
    return ledger;
}

/* ------------------------------------------------------------------------
 * Files
 * ---------------------------------------------------------------------- */

int sys_open(const char *path, int flags, int mode)
{
    int fault = fault_check(OP_OPEN);

    if (fault > 0) {
        errno = fault;
        return -1;
    }
    return fd_adopt(open(path, flags | O_CLOEXEC, mode));
}

/* Interruptions in a row after which a file write gives up: a retry is
 * right for EINTR, but every wait of the program is bounded, this one too. */
#define WRITE_RETRIES_MAX 100

int sys_write_all(int fd, const void *buf, size_t n)
{
    const uint8_t *p = buf;
    unsigned retries = 0;

    while (n > 0) {
        int fault = fault_check(OP_FWRITE);
        size_t chunk = n;
        ssize_t r;

        if (fault > 0 && fault != EINTR && fault != EAGAIN) {
            errno = fault;
            return -1;
        }
        if (fault == FAULT_SHORT && chunk > 1)
            chunk /= 2;
        if (fault > 0)
            errno = fault;
        r = fault > 0 ? -1 : write(fd, p, chunk);
        if (r < 0) {
            if ((errno == EINTR || errno == EAGAIN) &&
                ++retries < WRITE_RETRIES_MAX)
                continue;
            return -1;
        }
        if (r == 0) {
            errno = ENOSPC;
            return -1;
        }
        retries = 0;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

int sys_fsync(int fd)
{
    int fault = fault_check(OP_FSYNC);

    if (fault > 0) {
        errno = fault;
        return -1;
    }
    return fsync(fd);
}

int sys_rename(const char *from, const char *to)
{
    int fault = fault_check(OP_RENAME);

    if (fault > 0) {
        errno = fault;
        return -1;
    }
    return rename(from, to);
}

int sys_ftruncate(int fd, off_t size)
{
    return ftruncate(fd, size);
}

/* The directory that holds path[0..n): "." for a bare name, "/" for a
 * name in the root. */
static void parent_of(const char *path, size_t n, char out[PATH_SIZE])
{
    while (n > 0 && path[n - 1] != '/')
        n--;                            /* to just after the last slash */
    while (n > 1 && path[n - 1] == '/')
        n--;                            /* without it, unless it is the root */
    if (n == 0) {
        strcpy(out, ".");
        return;
    }
    memcpy(out, path, n);
    out[n] = '\0';
}

/* One level: 1 when it was made (and its name made durable in the parent),
 * 0 when it already was a directory, -1 with errno. */
static int mkdir_one(const char *path)
{
    char parent[PATH_SIZE];
    struct stat st;

    if (mkdir(path, 0755) == 0) {
        parent_of(path, strlen(path), parent);
        return sys_fsync_dir(parent) == 0 ? 1 : -1;
    }
    if (errno != EEXIST)
        return -1;
    if (stat(path, &st) != 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

int sys_is_dir(const char *path)
{
    struct stat sb;

    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

int sys_same_file(const char *a, const char *b)
{
    struct stat sa, sb;

    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

int sys_mkdir(const char *path)
{
    char partial[PATH_SIZE];
    size_t i, n = strlen(path);

    if (n == 0 || n >= sizeof partial) {
        errno = ENAMETOOLONG;
        return -1;
    }
    /* Each parent first, as mkdir -p does. */
    for (i = 1; i < n; i++) {
        if (path[i] != '/' || path[i - 1] == '/')
            continue;
        memcpy(partial, path, i);
        partial[i] = '\0';
        if (mkdir_one(partial) < 0)
            return -1;
    }
    return mkdir_one(path) < 0 ? -1 : 0;
}

int sys_fsync_dir(const char *dir)
{
    int fd = sys_open(dir, O_RDONLY, 0), rc, saved;

    if (fd < 0)
        return -1;
    rc = sys_fsync(fd);
    saved = errno;
    sys_close(fd);
    errno = saved;
    return rc;
}

int sys_open_regular(const char *path, int flags, int mode, off_t *size)
{
    struct stat st;
    int fd = sys_open(path, flags | O_NONBLOCK | O_NOCTTY, mode);

    if (fd < 0)
        return -1;
    if (fstat(fd, &st) != 0) {
        int saved = errno;
        sys_close(fd);
        errno = saved;
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        sys_close(fd);
        return SYS_NOT_REGULAR;
    }
    if (size)
        *size = st.st_size;
    return fd;
}

/* ------------------------------------------------------------------------
 * Pidfiles and directories a start will write
 * ---------------------------------------------------------------------- */

#define PID_TEXT_MAX 24                 /* a pid in decimal and a newline */

long sys_pidfile_read(const char *path, int *exists)
{
    char text[PID_TEXT_MAX + 1], *end;
    ssize_t n;
    long pid;
    int fd = sys_open_regular(path, O_RDONLY, 0, NULL);

    *exists = fd != -1 || errno != ENOENT;
    if (fd == SYS_NOT_REGULAR)
        errno = EINVAL;
    if (fd < 0)
        return *exists ? -1 : 0;
    do
        n = read(fd, text, PID_TEXT_MAX);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        int saved = errno;
        sys_close(fd);
        errno = saved;
        return -1;
    }
    sys_close(fd);
    text[n] = '\0';
    /* Digits and an optional newline, nothing else: "12abc" is garbage. */
    if (n == 0 || text[0] < '0' || text[0] > '9')
        return 0;
    errno = 0;
    pid = strtol(text, &end, 10);
    if (errno != 0 || pid <= 0 || (*end != '\0' && strcmp(end, "\n") != 0))
        return 0;
    return pid;
}

/* The first line of /proc/PID/comm (PID 0: self) into out; 0 or -1. */
static int proc_comm(long pid, char *out, size_t cap)
{
    char path[64];
    ssize_t n;
    int fd;

    if (pid == 0)
        snprintf(path, sizeof path, "/proc/self/comm");
    else
        snprintf(path, sizeof path, "/proc/%ld/comm", pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    n = read(fd, out, cap - 1);
    close(fd);
    if (n <= 0)
        return -1;
    out[n] = '\0';
    out[strcspn(out, "\n")] = '\0';
    return 0;
}

int sys_pid_is_peer(long pid)
{
    char ours[32], theirs[32];

    if (pid <= 0 || (pid_t)pid != pid || (pid_t)pid == getpid())
        return 0;
    /* EPERM: it runs, under another user. */
    if (kill((pid_t)pid, 0) != 0 && errno != EPERM)
        return 0;
    /* A pid reused by another program is not a fepd.  Where /proc cannot
     * tell, the pid is taken for a fepd: refusing a start is the safe
     * mistake, two fepds on one state the dangerous one. */
    if (proc_comm(0, ours, sizeof ours) != 0 ||
        proc_comm(pid, theirs, sizeof theirs) != 0)
        return 1;
    return strcmp(ours, theirs) == 0 || strncmp(theirs, "fepd", 4) == 0;
}

int sys_pidfile_write(const char *path)
{
    char tmp[PATH_SIZE + 8], text[PID_TEXT_MAX];
    int fd, n, saved;

    if (strlen(path) + sizeof ".tmp" > sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    n = snprintf(text, sizeof text, "%ld\n", (long)getpid());
    fd = sys_open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return -1;
    if (sys_write_all(fd, text, (size_t)n) != 0) {
        saved = errno;
        sys_close(fd);
        unlink(tmp);
        errno = saved;
        return -1;
    }
    /* No fsync: a pidfile that a crash loses or leaves stale is handled at
     * the next start; what matters is that a reader never sees half of it. */
    if (sys_close(fd) != 0 || sys_rename(tmp, path) != 0) {
        saved = errno;
        unlink(tmp);
        errno = saved;
        return -1;
    }
    return 0;
}

int sys_pidfile_remove(const char *path)
{
    int exists;

    if (sys_pidfile_read(path, &exists) != (long)getpid())
        return 0;                       /* not ours (any more): left alone */
    return unlink(path);
}

int sys_dir_writable(const char *path, int may_create)
{
    char dir[PATH_SIZE], parent[PATH_SIZE];
    struct stat st;

    if (path[0] == '\0' || strlen(path) >= sizeof dir) {
        errno = path[0] ? ENAMETOOLONG : ENOENT;
        return -1;
    }
    strcpy(dir, path);
    while (stat(dir, &st) != 0) {
        if (errno != ENOENT || !may_create)
            return -1;
        parent_of(dir, strlen(dir), parent);
        if (strcmp(parent, dir) == 0)
            return -1;                  /* "." or "/" missing: errno ENOENT */
        strcpy(dir, parent);
    }
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return faccessat(AT_FDCWD, dir, W_OK | X_OK, AT_EACCESS);
}

/* ------------------------------------------------------------------------
 * The service manager's notification socket.  The protocol is sd_notify(3)'s
 * and nothing more: "KEY=VALUE" lines in one datagram to the AF_UNIX socket
 * named by $NOTIFY_SOCKET ("@name": Linux's abstract namespace, the first
 * byte of sun_path NUL and the name's length exact, no NUL after it).  The
 * socket is unconnected, so each datagram is addressed, as sd_notify does:
 * a manager that re-creates its socket still hears fepd.
 * ---------------------------------------------------------------------- */

static int notify_fd = -1;
static struct sockaddr_un notify_addr;
static socklen_t notify_len;
static int notify_failed;               /* a send failed: logged once */

void sys_notify_open(void)
{
    const char *name = getenv("NOTIFY_SOCKET");
    size_t n = name ? strlen(name) : 0;
    int fd;

    if (n == 0 || notify_fd >= 0)
        return;
    if ((name[0] != '/' && name[0] != '@') || n < 2 ||
        n >= sizeof notify_addr.sun_path) {
        log_msg(LOG_WARN, "NOTIFY_SOCKET '%s': not a socket path or @name: "
                "no notifications", name);
        return;
    }
    memset(&notify_addr, 0, sizeof notify_addr);
    notify_addr.sun_family = AF_UNIX;
    memcpy(notify_addr.sun_path, name, n);
    if (name[0] == '@')
        notify_addr.sun_path[0] = '\0';
    notify_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    fd = fd_adopt(socket(AF_UNIX, SOCK_DGRAM, 0));
    if (fd >= 0 && socket_setup(fd) != 0) {
        int saved = errno;
        sys_close(fd);
        errno = saved;
        fd = -1;
    }
    if (fd < 0) {
        log_msg(LOG_WARN, "NOTIFY_SOCKET %s: socket: %s: no notifications",
                name, strerror(errno));
        return;
    }
    notify_fd = fd;
    notify_failed = 0;
}

void sys_notify(const char *msg)
{
    size_t n = strlen(msg);
    int flags = 0;
    ssize_t r;

    if (notify_fd < 0)
        return;
#ifdef MSG_NOSIGNAL
    flags |= MSG_NOSIGNAL;
#endif
#ifdef MSG_DONTWAIT
    flags |= MSG_DONTWAIT;              /* the socket is non-blocking anyway */
#endif
    do
        r = sendto(notify_fd, msg, n, flags,
                   (const struct sockaddr *)&notify_addr, notify_len);
    while (r < 0 && errno == EINTR);
    if (r == (ssize_t)n || notify_failed)
        return;
    notify_failed = 1;
    log_msg(LOG_WARN, "NOTIFY_SOCKET %s%s: cannot send %.*s: %s (logged once; "
            "messages that cannot be sent are dropped)",
            notify_addr.sun_path[0] ? "" : "@", notify_addr.sun_path +
            (notify_addr.sun_path[0] ? 0 : 1), (int)strcspn(msg, "\n"), msg,
            r < 0 ? strerror(errno) : "short send");
}

void sys_notify_reloading(void)
{
    char msg[64];
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000u +
             (unsigned long long)ts.tv_nsec / 1000u);
    sys_notify(msg);
}

/* A decimal number, digits only, or 0. */
static unsigned long long env_number(const char *name)
{
    const char *v = getenv(name);
    unsigned long long x;
    char *end;

    if (!v || v[0] < '0' || v[0] > '9')
        return 0;
    errno = 0;
    x = strtoull(v, &end, 10);
    return errno == 0 && *end == '\0' ? x : 0;
}

int64_t sys_notify_watchdog_ms(void)
{
    unsigned long long usec = env_number("WATCHDOG_USEC");
    unsigned long long pid = env_number("WATCHDOG_PID");

    if (notify_fd < 0 || usec == 0 || (getenv("WATCHDOG_PID") &&
                                       pid != (unsigned long long)getpid()))
        return 0;
    if (usec / 2000 > (unsigned long long)INT32_MAX)
        return INT32_MAX;
    return usec / 2000 > 0 ? (int64_t)(usec / 2000) : 1;
}

void sys_notify_close(void)
{
    sys_close(notify_fd);
    notify_fd = -1;
}

/* One write lock on the whole file; fcntl locks are POSIX, held by the
 * process, and gone when it exits, however it exits.  (A process that
 * closes any descriptor of the file loses its locks on it: the file is
 * opened once, here, and closed once, by the caller.) */
static int lock_op(int fd, int cmd, struct flock *fl)
{
    memset(fl, 0, sizeof *fl);
    fl->l_type = F_WRLCK;
    fl->l_whence = SEEK_SET;
    return fcntl(fd, cmd, fl);
}

int sys_dir_lock(const char *dir, int check_only, long *holder)
{
    char path[PATH_SIZE + 16];
    struct flock fl;
    int fd, saved;

    *holder = 0;
    if (snprintf(path, sizeof path, "%s/fepd.lock", dir) >= (int)sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    fd = sys_open_regular(path, check_only ? O_RDONLY : O_RDWR | O_CREAT,
                          0644, NULL);
    if (fd == SYS_NOT_REGULAR)
        errno = EINVAL;
    if (fd < 0)
        return check_only && errno == ENOENT ? 0 : -1;
    if (lock_op(fd, check_only ? F_GETLK : F_SETLK, &fl) == 0 &&
        (!check_only || fl.l_type == F_UNLCK)) {
        if (!check_only)
            return fd;
        sys_close(fd);
        return 0;
    }
    saved = errno;
    if (lock_op(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK) {
        *holder = (long)fl.l_pid;
        sys_close(fd);
        return SYS_LOCKED;
    }
    sys_close(fd);
    errno = saved;
    return -1;
}

/* ------------------------------------------------------------------------
 * Descriptors: stdio, and the limit
 * ---------------------------------------------------------------------- */

int sys_std_fds(void)
{
    for (;;) {
        int fd = open("/dev/null", O_RDWR);     /* the lowest free number */

        if (fd < 0)
            return -1;
        if (fd > 2) {
            close(fd);
            return 0;
        }
    }
}

unsigned long sys_fd_limit(unsigned long want)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return want;                    /* cannot tell: accept() will */
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
        struct rlimit raised = rl;

        raised.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want
                              ? (rlim_t)want : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &raised) == 0)
            rl = raised;
    }
    return rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > want
               ? want : (unsigned long)rl.rlim_cur;
}

/* ------------------------------------------------------------------------
 * Logging: one write(2) per line, so that lines from several processes that
 * share a log file do not interleave, and nothing is queued in memory.
 *
 * stderr may be a pipe that nobody drains.  A line that cannot go out at
 * once is dropped and counted, never waited for, so that logging can never
 * stop the loop; the next line that goes out is preceded by the count.
 * ---------------------------------------------------------------------- */

static unsigned long log_dropped;       /* lines dropped since the last one out */

void log_set_level(int level)
{
    log_level = level;
}

int log_get_level(void)
{
    return log_level;
}

void log_set_name(const char *name)
{
    log_name = name;
}

/* Whether a write to stderr would not block now (a regular file always). */
static int stderr_writable(void)
{
    struct timeval now = { 0, 0 };
    fd_set w;

    FD_ZERO(&w);
    FD_SET(2, &w);
    return select(3, NULL, &w, NULL, &now) == 1;
}

/* 0 when the whole line went out. */
static int log_write(const char *line, size_t n)
{
    int saved = errno;                  /* callers log strerror(errno) after */

    while (n > 0 && stderr_writable()) {
        ssize_t r = write(2, line, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;                      /* a log that cannot be written is dropped */
        line += r;
        n -= (size_t)r;
    }
    errno = saved;
    return n > 0 ? -1 : 0;
}

/* Whether stderr is the journal: $JOURNAL_STREAM is "DEV:INO" of the stream
 * systemd connected, and names stderr only while nobody redirected it. */
static int stderr_is_journal(void)
{
    const char *v = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    char extra;

    if (!v || sscanf(v, "%llu:%llu%c", &dev, &ino, &extra) != 2 ||
        fstat(2, &st) != 0)
        return 0;
    return (unsigned long long)st.st_dev == dev &&
           (unsigned long long)st.st_ino == ino;
}

/*
 * A line is "TIME NAME LEVEL: text".  For the journal it is "<P>NAME LEVEL:
 * text": P is the syslog priority (sd-daemon.h's SD_ERR 3, SD_WARNING 4,
 * SD_INFO 6, SD_DEBUG 7), which journald strips and stores, and the time is
 * left out because journald stamps every line itself, to the microsecond.
 * Whether stderr is the journal is decided at the first line.
 */
static size_t log_prefix(char *line, size_t cap, int level)
{
    static const char *const names[] = { "error", "warn", "info", "debug" };
    static const char priorities[] = "3467";
    static int journal = -1;
    struct timespec ts;
    sys_utc u;
    int r;

    level = level < 0 ? 0 : level > 3 ? 3 : level;
    if (journal < 0)
        journal = stderr_is_journal();
    if (journal) {
        r = snprintf(line, cap, "<%c>%s %s: ", priorities[level], log_name,
                     names[level]);
        return r > 0 && (size_t)r < cap ? (size_t)r : 0;
    }
    clock_gettime(CLOCK_REALTIME, &ts);
    sys_utc_of((int64_t)ts.tv_sec, &u);
    r = snprintf(line, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: ",
                 u.year, u.month, u.day, u.hour, u.min, u.sec,
                 ts.tv_nsec / 1000000L, log_name, names[level]);
    return r > 0 && (size_t)r < cap ? (size_t)r : 0;
}

void log_msg(int level, const char *fmt, ...)
{
    char line[1024];
    size_t n;
    va_list ap;
    int r;

    if (level > log_level)
        return;
    n = log_prefix(line, sizeof line, level);
    va_start(ap, fmt);
    r = vsnprintf(line + n, sizeof line - n, fmt, ap);
    va_end(ap);
    if (r > 0)
        n += (size_t)r < sizeof line - n ? (size_t)r : sizeof line - n - 1;
    if (n >= sizeof line - 1)
        n = sizeof line - 2;
    line[n++] = '\n';
    if (log_dropped > 0 && stderr_writable()) {
        unsigned long dropped = log_dropped;

        log_dropped = 0;                /* the line below is not counted again */
        log_msg(LOG_WARN, "%lu log lines dropped: stderr was not writable",
                dropped);
    }
    if (log_write(line, n) != 0)
        log_dropped++;
}

void log_hex(const char *what, const uint8_t *p, size_t n)
{
    static const char digits[] = "0123456789ABCDEF";
    char hex[3 * 64 + 1];
    size_t off;

    if (log_level < LOG_DEBUG)
        return;
    for (off = 0; off < n; off += 64) {
        size_t i, k = 0, end = n - off < 64 ? n - off : 64;
        for (i = 0; i < end; i++) {
            hex[k++] = digits[p[off + i] >> 4];
            hex[k++] = digits[p[off + i] & 15];
            hex[k++] = ' ';
        }
        hex[k ? k - 1 : 0] = '\0';
        log_msg(LOG_DEBUG, "%s +%zu: %s", what, off, hex);
    }
}
