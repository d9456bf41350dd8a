/*
 * test_sim.c -- tests of dcusim, run as a real process on 127.0.0.1.
 *
 * A small blocking "FEP client" (connect, send a request built with
 * frame_encode, read frames through frame_rx with a poll() deadline, answer
 * ACK or NACK) drives each test and checks what dcusim sends against the
 * data model in the README (dcusim), byte for byte where it can.  Every fault
 * mode has a test that proves it produces that fault and no other; the
 * report line dcusim prints at SIGTERM is parsed to check its counters.
 *
 * Owns: one dcusim process per test, always reaped through sim_finish
 * (test_wait kills it after its deadline), the client's socket, closed by
 * fepc_close, and the directories sim_prepare makes, removed by sim_test
 * once the test is over.  The tests use plain POSIX sockets, not sys.c, so
 * that FEP_FAULT (this binary is built with it) cannot touch the harness.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include "fep.h"
#include "test.h"

#define SIM_BIN "./dcusim"
#define SIM_KEY_HEX "000102030405060708090a0b0c0d0e0f"
#define SIM_START_TS 1767225600u
#define WAIT_MS 3000                    /* any frame the test expects */
#define ARGS_MAX 40

/* ------------------------------------------------------------------------
 * The dcusim process
 * ---------------------------------------------------------------------- */

struct simproc {
    pid_t pid;
    int port;
    char dir[256];
    char log[320];
    char addr[64];
};

/* The directories sim_prepare made for the test that runs; sim_test
 * removes them after it. */
#define MADE_DIRS_MAX 8
static char made_dirs[MADE_DIRS_MAX][256];
static unsigned n_made_dirs;

static void sim_prepare(struct simproc *p, const char *tag)
{
    memset(p, 0, sizeof *p);
    p->pid = -1;
    CHECK(test_tmpdir(p->dir, sizeof p->dir, tag) == 0);
    CHECK(n_made_dirs < MADE_DIRS_MAX);
    if (n_made_dirs < MADE_DIRS_MAX)
        strcpy(made_dirs[n_made_dirs++], p->dir);
    snprintf(p->log, sizeof p->log, "%s/dcusim.log", p->dir);
    p->port = test_free_port();
    snprintf(p->addr, sizeof p->addr, "127.0.0.1:%d", p->port);
}

static void sim_path(const struct simproc *p, const char *name, char *out,
                     size_t cap)
{
    snprintf(out, cap, "%s/%s", p->dir, name);
}

/* Starts "./dcusim ARGS..." (args ends with NULL); wait_listen: wait until
 * it accepts on p->port.  0 when it is up. */
static int sim_spawn_argv(struct simproc *p, const char *const *args,
                          int wait_listen)
{
    const char *argv[ARGS_MAX + 2];
    int n = 0;

    argv[n++] = SIM_BIN;
    while (*args && n < ARGS_MAX)
        argv[n++] = *args++;
    argv[n] = NULL;
    p->pid = test_spawn(argv, p->log);
    CHECK(p->pid > 0);
    if (p->pid <= 0)
        return -1;
    if (wait_listen && test_wait_port(p->port, 5000) != 0) {
        CHECK(!"dcusim did not start listening");
        return -1;
    }
    return 0;
}

/* Listens on p's port with a 2 s timeout; extra options after. */
static int sim_spawn(struct simproc *p, const char *const *extra)
{
    const char *args[ARGS_MAX + 1];
    int n = 0;

    args[n++] = "--listen";
    args[n++] = p->addr;
    args[n++] = "--timeout";
    args[n++] = "2";
    while (extra && *extra && n < ARGS_MAX)
        args[n++] = *extra++;
    args[n] = NULL;
    return sim_spawn_argv(p, args, 1);
}

/* SIGTERM, then its exit status (bounded).  A clean run logs no error;
 * in particular not the one that says descriptors were left open. */
static int sim_finish(struct simproc *p)
{
    int rc;

    if (p->pid <= 0)
        return -1;
    kill(p->pid, SIGTERM);
    rc = test_wait(p->pid, 5000);
    p->pid = -1;
    CHECK_EQ(test_count_lines(p->log, "dcusim error:"), 0);
    return rc;
}

/* A counter of the last report line in the log; -1 when absent. */
static long long sim_report(const struct simproc *p, const char *key)
{
    static char text[1 << 16];
    char needle[64];
    const char *line = NULL, *s = text, *v;

    if (test_read_file(p->log, text, sizeof text) < 0)
        return -1;
    while ((s = strstr(s, "dcusim: sessions=")) != NULL)
        line = s++;
    if (!line)
        return -1;
    snprintf(needle, sizeof needle, " %s=", key);
    v = strstr(line, needle);
    if (!v || (strchr(line, '\n') && v > strchr(line, '\n')))
        return -1;
    return strtoll(v + strlen(needle), NULL, 10);
}

#define CHECK_REPORT(p, key, value) CHECK_EQ(sim_report((p), (key)), (value))

/*
 * Waits (bounded) until dcusim's report says key=value, asking for a report
 * with SIGUSR1 every 20 ms: the way to know that a last ACK, which has no
 * answer, was taken before the test stops dcusim.
 */
static void sim_settle(const struct simproc *p, const char *key,
                       long long value)
{
    int64_t deadline = sys_now_ms() + WAIT_MS;

    while (sim_report(p, key) != value && sys_now_ms() < deadline) {
        kill(p->pid, SIGUSR1);
        test_sleep_ms(20);
    }
}

/* ------------------------------------------------------------------------
 * The FEP client
 * ---------------------------------------------------------------------- */

enum { RECV_TIMEOUT = -1, RECV_EOF = -2 };

struct fepc {
    int fd;
    int keyed;
    gcm_key gk;
    uint32_t ic;                        /* next IC the client sends */
    uint16_t msn;
    uint8_t dcu[FRAME_ID_SIZE];
    frame_rx rx;
    frame f;                            /* the last frame received */
    uint8_t raw[FRAME_SIZE_MAX];        /* a copy of it */
    size_t raw_len;
    fep_err open_err;                   /* of a protected frame */
    uint32_t rx_ic;
    uint8_t plain[FRAME_DATA_MAX];
    size_t plain_len;
};

static void key_of(uint32_t n, uint8_t key[KEY_SIZE])
{
    test_unhex(SIM_KEY_HEX, key, KEY_SIZE);
    key[12] ^= (uint8_t)(n >> 24);
    key[13] ^= (uint8_t)(n >> 16);
    key[14] ^= (uint8_t)(n >> 8);
    key[15] ^= (uint8_t)n;
}

/* A blocking socket connected to 127.0.0.1:port within WAIT_MS, or -1. */
static int tcp_connect(int port)
{
    struct sockaddr_in a;
    struct pollfd pfd;
    int fd = socket(AF_INET, SOCK_STREAM, 0), flags, err = 0;
    socklen_t len = sizeof err;

    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    flags = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        pfd.fd = fd;
        pfd.events = POLLOUT;
        pfd.revents = 0;
        if (errno != EINPROGRESS || poll(&pfd, 1, WAIT_MS) != 1 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err) {
            close(fd);
            return -1;
        }
    }
    fcntl(fd, F_SETFL, flags);
    return fd;
}

/* Speaks to DCU number n; keyed: with the key dcusim derives for it. */
static int fepc_connect(struct fepc *c, int port, uint32_t n, int keyed)
{
    char id[16];
    uint8_t key[KEY_SIZE];

    memset(c, 0, sizeof *c);
    frame_rx_reset(&c->rx);
    snprintf(id, sizeof id, "DCU%05u", (unsigned)n);
    frame_id_set(c->dcu, id);
    c->keyed = keyed;
    c->ic = 1;
    if (keyed) {
        key_of(n, key);
        gcm_init(&c->gk, key);
    }
    c->fd = tcp_connect(port);
    CHECK(c->fd >= 0);
    return c->fd >= 0 ? 0 : -1;
}

static void fepc_close(struct fepc *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int fepc_send_ic(struct fepc *c, uint8_t cmd, uint16_t qsn,
                        uint16_t fsn, const uint8_t *payload, size_t len,
                        uint32_t ic)
{
    uint8_t buf[FRAME_SIZE_MAX];
    frame_hdr h;
    size_t n;

    h.ctl = CTL_LAST;
    h.cmd = cmd;
    frame_id_set(h.sid, "FEP00001");
    memcpy(h.did, c->dcu, FRAME_ID_SIZE);
    h.qsn = qsn;
    h.msn = c->msn++;
    h.fsn = fsn;
    n = frame_encode(buf, sizeof buf, &h, payload, len,
                     c->keyed ? &c->gk : NULL, ic);
    CHECK(n > 0);
    return write_all(c->fd, buf, n);
}

static int fepc_send(struct fepc *c, uint8_t cmd, uint16_t qsn, uint16_t fsn,
                     const uint8_t *payload, size_t len)
{
    return fepc_send_ic(c, cmd, qsn, fsn, payload, len, c->ic++);
}

static int fepc_k(struct fepc *c, uint16_t qsn, uint32_t from, uint32_t to)
{
    uint8_t req[LP_REQ_SIZE];

    lp_req_put(req, from, to);
    return fepc_send(c, CMD_LP_REQ, qsn, 0, req, sizeof req);
}

static int fepc_ack(struct fepc *c)
{
    return fepc_send(c, CMD_ACK, c->f.qsn, c->f.fsn, NULL, 0);
}

static int fepc_nack(struct fepc *c, uint8_t code)
{
    return fepc_send(c, CMD_NACK, c->f.qsn, c->f.fsn, &code, 1);
}

/* Keeps a copy of frame f (r: what the scan said) and its plaintext. */
static void fepc_keep(struct fepc *c, const frame *f, frame_result r)
{
    c->raw_len = FRAME_HEADER_SIZE + (r == FRAME_BAD_LENGTH ? 0 : f->len);
    memcpy(c->raw, f->raw, c->raw_len);
    c->f = *f;
    c->f.raw = c->raw;
    c->f.data = c->raw + FRAME_HEADER_SIZE;
    c->open_err = FEP_OK;
    c->plain_len = 0;
    if (r == FRAME_BAD_LENGTH)
        return;
    if (f->ctl & CTL_SEC) {
        c->open_err = frame_open(&c->f, &c->gk, c->plain, &c->plain_len,
                                 &c->rx_ic);
    } else {
        memcpy(c->plain, f->data, f->data_len);
        c->plain_len = f->data_len;
    }
}

/* Waits until deadline for readable data; 1 readable, 0 timed out. */
static int wait_readable(int fd, int64_t deadline)
{
    struct pollfd pfd;
    int64_t left = deadline - sys_now_ms();

    pfd.fd = fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    if (left <= 0)
        return 0;
    return poll(&pfd, 1, (int)left) > 0;
}

/* The next frame (any frame_result but NEED_MORE), RECV_TIMEOUT or RECV_EOF. */
static int fepc_recv(struct fepc *c, int timeout_ms)
{
    int64_t deadline = sys_now_ms() + timeout_ms;

    for (;;) {
        frame f;
        frame_result r = frame_rx_next(&c->rx, &f);
        size_t room;
        uint8_t *p;
        ssize_t n;

        if (r != FRAME_NEED_MORE) {
            fepc_keep(c, &f, r);
            return (int)r;
        }
        if (!wait_readable(c->fd, deadline))
            return RECV_TIMEOUT;
        p = frame_rx_space(&c->rx, &room);
        n = read(c->fd, p, room);
        if (n == 0 || (n < 0 && errno != EINTR))
            return RECV_EOF;
        if (n > 0)
            frame_rx_commit(&c->rx, (size_t)n);
    }
}

/* A frame whose CRC (and tag) verified: 1, else a failed CHECK. */
static int fepc_recv_ok(struct fepc *c)
{
    int r = fepc_recv(c, WAIT_MS);

    CHECK_EQ(r, FRAME_READY);
    if (r != FRAME_READY)
        return 0;
    CHECK_EQ(c->open_err, FEP_OK);
    return c->open_err == FEP_OK;
}

/* 1 when dcusim closes the connection within timeout_ms (data ignored). */
static int fepc_wait_eof(struct fepc *c, int timeout_ms)
{
    int64_t deadline = sys_now_ms() + timeout_ms;
    uint8_t buf[4096];

    while (wait_readable(c->fd, deadline)) {
        ssize_t n = read(c->fd, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return 1;
    }
    return 0;
}

/* Raw bytes, as they come, up to n or the deadline; the count read. */
static size_t read_raw(int fd, uint8_t *buf, size_t n, int timeout_ms)
{
    int64_t deadline = sys_now_ms() + timeout_ms;
    size_t got = 0;

    while (got < n && wait_readable(fd, deadline)) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    return got;
}

/* ------------------------------------------------------------------------
 * The data model, computed independently of dcusim
 * ---------------------------------------------------------------------- */

static void model_record(uint32_t n, uint32_t j, uint32_t meters,
                         lp_record *r)
{
    uint32_t m = j % meters, i = j / meters;
    char id[32];

    snprintf(id, sizeof id, "M%05u%06u", (unsigned)n, (unsigned)m);
    memcpy(r->meter_id, id, METER_ID_SIZE);
    r->ts = SIM_START_TS + i * 900;
    r->import_wh = 100 + (31 * n + 17 * m + 7 * i) % 1000;
    r->export_wh = (n + m + i) % 50;
    r->status = 0;
}

/* The K packet in c holds records first.. of DCU n. */
static void check_records(const struct fepc *c, uint32_t n, uint32_t first,
                          unsigned count, uint32_t meters)
{
    unsigned i, bad = 0;

    CHECK_EQ(c->plain_len, payload_size(CMD_LP_RSP, count));
    CHECK_EQ(c->plain[0], count);
    for (i = 0; i < count && i < c->plain[0]; i++) {
        lp_record got, want;
        lp_record_get(c->plain, i, &got);
        model_record(n, first + i, meters, &want);
        if (memcmp(got.meter_id, want.meter_id, METER_ID_SIZE) != 0 ||
            got.ts != want.ts || got.import_wh != want.import_wh ||
            got.export_wh != want.export_wh || got.status != want.status)
            bad++;
    }
    CHECK_EQ(bad, 0);
}

/* Header of a DCU frame: direction, ids, CMD, QSN, FSN, LAST. */
static void check_header(const struct fepc *c, uint8_t cmd, uint16_t qsn,
                         uint16_t fsn, int last)
{
    uint8_t fep[FRAME_ID_SIZE];

    frame_id_set(fep, "FEP00001");
    CHECK_EQ(c->f.cmd, cmd);
    CHECK(c->f.ctl & CTL_DIR_DCU);
    CHECK_EQ(!!(c->f.ctl & CTL_LAST), last);
    CHECK_EQ(!!(c->f.ctl & CTL_SEC), c->keyed);
    CHECK_MEM(c->f.sid, c->dcu, FRAME_ID_SIZE);
    CHECK_MEM(c->f.did, fep, FRAME_ID_SIZE);
    CHECK_EQ(c->f.qsn, qsn);
    CHECK_EQ(c->f.fsn, fsn);
}

/* Receives one K packet and checks it; ack: answer it with an ACK. */
static void expect_k(struct fepc *c, uint32_t n, uint16_t qsn, uint16_t fsn,
                     int last, uint32_t first, unsigned count, int ack)
{
    if (!fepc_recv_ok(c))
        return;
    check_header(c, CMD_LP_RSP, qsn, fsn, last);
    check_records(c, n, first, count, 1);
    if (ack)
        CHECK(fepc_ack(c) == 0);
}

/* ------------------------------------------------------------------------
 * Polls
 * ---------------------------------------------------------------------- */

static void test_sim_poll_plain(void)
{
    static const char *const args[] = { "--records", "200", NULL };
    struct simproc p;
    struct fepc c;

    sim_prepare(&p, "sim-plain");
    if (sim_spawn(&p, args) == 0 && fepc_connect(&c, p.port, 1, 0) == 0) {
        CHECK(fepc_k(&c, 7, 0, 0) == 0);
        expect_k(&c, 1, 7, 0, 0, 0, 77, 1);
        CHECK_EQ(c.f.msn, 0);
        expect_k(&c, 1, 7, 1, 0, 77, 77, 1);
        CHECK_EQ(c.f.msn, 1);
        expect_k(&c, 1, 7, 2, 1, 154, 46, 1);
        CHECK_EQ(c.f.msn, 2);
        /* The next poll, on the same connection: the next 200 records. */
        CHECK(fepc_k(&c, 8, 0, 0) == 0);
        expect_k(&c, 1, 8, 0, 0, 200, 77, 0);
        CHECK_EQ(c.f.msn, 3);
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "acks_received", 3);
    CHECK_REPORT(&p, "records_acked", 200);
    CHECK_REPORT(&p, "records_generated", 400);
    CHECK_REPORT(&p, "packets_sent", 4);
    CHECK_REPORT(&p, "polls", 2);
}

static void test_sim_poll_empty(void)
{
    static const char *const args[] = { "--records", "0", NULL };
    struct simproc p;
    struct fepc c;

    sim_prepare(&p, "sim-empty");
    if (sim_spawn(&p, args) == 0 && fepc_connect(&c, p.port, 1, 0) == 0) {
        CHECK(fepc_k(&c, 7, 0, 0) == 0);
        expect_k(&c, 1, 7, 0, 1, 0, 0, 1);      /* one count-0 LAST packet */
        sim_settle(&p, "acks_received", 1);
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "packets_sent", 1);
    CHECK_REPORT(&p, "records_acked", 0);
}

static void test_sim_poll_keyed(void)
{
    static const char *const args[] = {
        "--records", "200", "--key", SIM_KEY_HEX, "--ic-start", "5", NULL
    };
    struct simproc p;
    struct fepc c;

    sim_prepare(&p, "sim-keyed");
    if (sim_spawn(&p, args) == 0 && fepc_connect(&c, p.port, 1, 1) == 0) {
        CHECK(fepc_k(&c, 300, 0, 0) == 0);
        expect_k(&c, 1, 300, 0, 0, 0, 76, 1);
        CHECK_EQ(c.rx_ic, 5);
        expect_k(&c, 1, 300, 1, 0, 76, 76, 1);
        CHECK_EQ(c.rx_ic, 6);
        expect_k(&c, 1, 300, 2, 1, 152, 48, 1);
        CHECK_EQ(c.rx_ic, 7);
        sim_settle(&p, "records_acked", 200);
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "records_acked", 200);
    CHECK_REPORT(&p, "bad_frames", 0);
}

static void test_sim_status_meters(void)
{
    static const char *const args[] = { "--meters", "130", NULL };
    struct simproc p;
    struct fepc c;
    dcu_status st;
    meter_item m;
    uint8_t id[METER_ID_SIZE];

    sim_prepare(&p, "sim-smn");
    if (sim_spawn(&p, args) == 0 && fepc_connect(&c, p.port, 1, 0) == 0) {
        CHECK(fepc_send(&c, CMD_DCU_STATUS_REQ, 1, 0, NULL, 0) == 0);
        if (fepc_recv_ok(&c)) {
            check_header(&c, CMD_DCU_STATUS_RSP, 1, 0, 1);
            CHECK_EQ(payload_check(CMD_DCU_STATUS_RSP, c.plain, c.plain_len), FEP_OK);
            dcu_status_get(c.plain, &st);
            CHECK_EQ(st.fw_version, 0x0102);
            CHECK_EQ(st.meter_count, 130);
            CHECK_EQ(st.flags, 0);
            CHECK(st.uptime_s < 60);
            CHECK(st.clock + 60 > (uint32_t)time(NULL) && st.clock <= (uint32_t)time(NULL));
            CHECK(fepc_ack(&c) == 0);
        }
        CHECK(fepc_send(&c, CMD_METER_STATUS_REQ, 2, 0, NULL, 0) == 0);
        if (fepc_recv_ok(&c)) {
            check_header(&c, CMD_METER_STATUS_RSP, 2, 0, 0);
            CHECK_EQ(c.plain[0], METER_ITEMS_MAX_PLAIN);
            meter_item_get(c.plain, 5, &m);
            memcpy(id, "M00001000005", METER_ID_SIZE);
            CHECK_MEM(m.meter_id, id, METER_ID_SIZE);
            CHECK_EQ(m.code, 0);
            CHECK(fepc_ack(&c) == 0);
        }
        if (fepc_recv_ok(&c)) {
            check_header(&c, CMD_METER_STATUS_RSP, 2, 1, 1);
            CHECK_EQ(c.plain[0], 130 - METER_ITEMS_MAX_PLAIN);
            CHECK_EQ(payload_check(CMD_METER_STATUS_RSP, c.plain, c.plain_len), FEP_OK);
            CHECK(fepc_ack(&c) == 0);
        }
        CHECK(fepc_k(&c, 4, 0, 0) == 0);          /* record j: meter j % 130 */
        if (fepc_recv_ok(&c)) {
            check_header(&c, CMD_LP_RSP, 4, 0, 0);
            check_records(&c, 1, 0, 77, 130);
            CHECK(fepc_ack(&c) == 0);
        }
        if (fepc_recv_ok(&c)) {
            check_header(&c, CMD_LP_RSP, 4, 1, 1);
            check_records(&c, 1, 77, 19, 130);
            CHECK(fepc_ack(&c) == 0);
        }
        CHECK(fepc_send(&c, CMD_METER_CHANGE_REQ, 3, 0, NULL, 0) == 0);
        if (fepc_recv_ok(&c)) {
            check_header(&c, CMD_METER_CHANGE_RSP, 3, 0, 0);
            meter_item_get(c.plain, 4, &m);
            CHECK_EQ(m.code, 1 + 4 % 3);
            CHECK(fepc_ack(&c) == 0);
        }
        if (fepc_recv_ok(&c)) {
            check_header(&c, CMD_METER_CHANGE_RSP, 3, 1, 1);
            meter_item_get(c.plain, 0, &m);
            memcpy(id, "M00001000118", METER_ID_SIZE);
            CHECK_MEM(m.meter_id, id, METER_ID_SIZE);
            CHECK_EQ(m.code, 1 + 118 % 3);
            CHECK(fepc_ack(&c) == 0);
        }
        sim_settle(&p, "acks_received", 7);
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "acks_received", 7);
}

static void test_sim_nack_crc_retransmits(void)
{
    static const char *const args[] = {
        "--records", "100", "--key", SIM_KEY_HEX, NULL
    };
    struct simproc p;
    struct fepc c;
    uint8_t first[FRAME_DATA_MAX];
    size_t first_len = 0;
    uint16_t msn = 0;
    uint32_t ic = 0;

    sim_prepare(&p, "sim-nackcrc");
    if (sim_spawn(&p, args) == 0 && fepc_connect(&c, p.port, 1, 1) == 0) {
        CHECK(fepc_k(&c, 9, 0, 0) == 0);
        if (fepc_recv_ok(&c)) {
            memcpy(first, c.plain, first_len = c.plain_len);
            msn = c.f.msn;
            ic = c.rx_ic;
            CHECK(fepc_nack(&c, FEP_ERR_CRC) == 0);
        }
        if (fepc_recv_ok(&c)) {
            check_header(&c, CMD_LP_RSP, 9, 0, 0);
            CHECK_EQ(c.f.msn, msn + 1);
            CHECK_EQ(c.rx_ic, ic + 1);
            CHECK_EQ(c.plain_len, first_len);
            CHECK_MEM(c.plain, first, first_len);
            CHECK(fepc_ack(&c) == 0);
        }
        expect_k(&c, 1, 9, 1, 1, 76, 24, 1);
        sim_settle(&p, "records_acked", 100);
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "retransmits", 1);
    CHECK_REPORT(&p, "nack_crc", 1);
    CHECK_REPORT(&p, "records_acked", 100);
}

static void test_sim_unacked_poll_repeats(void)
{
    static const char *const args[] = {
        "--records", "100", "--per-packet", "50", NULL
    };
    struct simproc p;
    struct fepc c;

    sim_prepare(&p, "sim-unacked");
    if (sim_spawn(&p, args) == 0 && fepc_connect(&c, p.port, 1, 0) == 0) {
        CHECK(fepc_k(&c, 1, 0, 0) == 0);
        expect_k(&c, 1, 1, 0, 0, 0, 50, 0);
        fepc_close(&c);                 /* no ACK */
    }
    /* Until the first session is over, DCU00001 answers BUSY: retry. */
    if (fepc_connect(&c, p.port, 1, 0) == 0) {
        int64_t deadline = sys_now_ms() + WAIT_MS;
        int r = RECV_TIMEOUT;
        for (;;) {
            CHECK(fepc_k(&c, 2, 0, 0) == 0);
            r = fepc_recv(&c, WAIT_MS);
            if (r != FRAME_READY || c.f.cmd != CMD_NACK || sys_now_ms() > deadline)
                break;
            fepc_close(&c);
            if (fepc_connect(&c, p.port, 1, 0) != 0)
                break;
        }
        CHECK_EQ(r, FRAME_READY);
        check_header(&c, CMD_LP_RSP, 2, 0, 0);
        check_records(&c, 1, 0, 50, 1);
        CHECK(fepc_ack(&c) == 0);
        expect_k(&c, 1, 2, 1, 1, 50, 50, 1);
        /* A from/to request: records 10..19, acked does not move. */
        CHECK(fepc_k(&c, 3, SIM_START_TS + 10 * 900, SIM_START_TS + 19 * 900) == 0);
        expect_k(&c, 1, 3, 0, 1, 10, 10, 1);
        CHECK(fepc_k(&c, 4, 0, 0) == 0);
        expect_k(&c, 1, 4, 0, 0, 100, 50, 1);
        sim_settle(&p, "records_acked", 150);
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "records_acked", 150);
    CHECK_REPORT(&p, "records_generated", 200);
}

/* Counts the data lines of a CSV file and checks each against the model. */
static long csv_check(const char *path, uint32_t n, uint32_t first)
{
    static char text[1 << 16];
    char *line, *save = NULL;
    long rows = 0, bad = 0;

    if (test_read_file(path, text, sizeof text) < 0)
        return -1;
    line = strtok_r(text, "\n", &save);
    CHECK(line && strcmp(line, "dcu_id,meter_id,ts,import_wh,export_wh,status") == 0);
    while ((line = strtok_r(NULL, "\n", &save)) != NULL) {
        lp_record r;
        char want[128], meter[METER_ID_SIZE + 1];
        model_record(n, first + (uint32_t)rows, 1, &r);
        memcpy(meter, r.meter_id, METER_ID_SIZE);
        meter[METER_ID_SIZE] = '\0';
        snprintf(want, sizeof want, "DCU%05u,%s,%u,%u,%u,0", (unsigned)n,
                 meter, (unsigned)r.ts, (unsigned)r.import_wh,
                 (unsigned)r.export_wh);
        if (strcmp(line, want) != 0)
            bad++;
        rows++;
    }
    CHECK_EQ(bad, 0);
    return rows;
}

static void test_sim_acked_csv(void)
{
    struct simproc p;
    struct fepc c;
    char acked[300], generated[300];

    sim_prepare(&p, "sim-csv");
    sim_path(&p, "acked.csv", acked, sizeof acked);
    sim_path(&p, "generated.csv", generated, sizeof generated);
    {
        const char *const args[] = {
            "--records", "200", "--acked-csv", acked,
            "--generated-csv", generated, NULL
        };
        if (sim_spawn(&p, args) == 0 && fepc_connect(&c, p.port, 1, 0) == 0) {
            CHECK(fepc_k(&c, 1, 0, 0) == 0);
            expect_k(&c, 1, 1, 0, 0, 0, 77, 1);
            expect_k(&c, 1, 1, 1, 0, 77, 77, 0);   /* not acknowledged */
            fepc_close(&c);
        }
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_EQ(csv_check(acked, 1, 0), 77);
    CHECK_EQ(csv_check(generated, 1, 0), 200);
    CHECK_REPORT(&p, "records_acked", 77);
}

static void test_sim_replayed_fep_ic(void)
{
    static const char *const args[] = {
        "--records", "1", "--key", SIM_KEY_HEX, NULL
    };
    struct simproc p;
    struct fepc c;
    uint8_t req[LP_REQ_SIZE] = { 0 };

    sim_prepare(&p, "sim-fepreplay");
    if (sim_spawn(&p, args) == 0 && fepc_connect(&c, p.port, 1, 1) == 0) {
        c.ic = 10;
        CHECK(fepc_k(&c, 1, 0, 0) == 0);             /* IC 10 */
        expect_k(&c, 1, 1, 0, 1, 0, 1, 1);           /* ACK: IC 11 */
        CHECK(fepc_send_ic(&c, CMD_LP_REQ, 2, 0, req, sizeof req, 11) == 0);
        if (fepc_recv_ok(&c)) {
            check_header(&c, CMD_NACK, 2, 0, 1);
            CHECK_EQ(c.plain_len, 1);
            CHECK_EQ(c.plain[0], FEP_ERR_REPLAY);
        }
        CHECK(fepc_wait_eof(&c, WAIT_MS));
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "fep_ic_reused", 1);
    CHECK_REPORT(&p, "bad_frames", 1);
}

static void test_sim_unknown_busy_security(void)
{
    static const char *const args[] = {
        "--dcus", "2", "--key", SIM_KEY_HEX, "--keyed", "1", NULL
    };
    struct simproc p;
    struct fepc a, b;

    sim_prepare(&p, "sim-refuse");
    if (sim_spawn(&p, args) != 0)
        goto out;
    /* DCU00003 is not played. */
    if (fepc_connect(&a, p.port, 3, 0) == 0) {
        CHECK(fepc_k(&a, 1, 0, 0) == 0);
        if (fepc_recv_ok(&a)) {
            CHECK_EQ(a.f.cmd, CMD_NACK);
            CHECK_EQ(a.plain[0], FEP_ERR_UNKNOWN);
        }
        CHECK(fepc_wait_eof(&a, WAIT_MS));
        fepc_close(&a);
    }
    /* DCU00001 is keyed: a plaintext request is a SECURITY error. */
    if (fepc_connect(&a, p.port, 1, 1) == 0) {
        a.keyed = 0;                    /* the key only reads the NACK */
        CHECK(fepc_k(&a, 1, 0, 0) == 0);
        if (fepc_recv_ok(&a)) {
            CHECK_EQ(a.f.cmd, CMD_NACK);
            CHECK(a.f.ctl & CTL_SEC);
            CHECK_EQ(a.plain[0], FEP_ERR_SECURITY);
        }
        fepc_close(&a);
    }
    /* DCU00002 is not keyed; a second session while one is open: BUSY. */
    if (fepc_connect(&a, p.port, 2, 0) == 0 &&
        fepc_connect(&b, p.port, 2, 0) == 0) {
        CHECK(fepc_k(&a, 1, 0, 0) == 0);
        expect_k(&a, 2, 1, 0, 0, 0, 77, 0);
        CHECK(fepc_k(&b, 1, 0, 0) == 0);
        if (fepc_recv_ok(&b)) {
            CHECK_EQ(b.f.cmd, CMD_NACK);
            CHECK_EQ(b.plain[0], FEP_ERR_BUSY);
        }
        CHECK(fepc_wait_eof(&b, WAIT_MS));
        fepc_close(&b);
        fepc_close(&a);
    }
out:
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "bad_frames", 2);
}

static void test_sim_same_key(void)
{
    static const char *const args[] = {
        "--dcus", "2", "--key", SIM_KEY_HEX, "--same-key", "--records", "1",
        NULL
    };
    struct simproc p;
    struct fepc c;
    uint8_t key[KEY_SIZE];
    uint32_t n;

    sim_prepare(&p, "sim-samekey");
    if (sim_spawn(&p, args) != 0)
        goto out;
    /* One key, one IC sequence: DCU00002 goes on where DCU00001 stopped,
     * and the FEP's ICs must rise across both DCUs too. */
    test_unhex(SIM_KEY_HEX, key, KEY_SIZE);
    for (n = 1; n <= 2; n++) {
        if (fepc_connect(&c, p.port, n, 1) != 0)
            break;
        gcm_init(&c.gk, key);
        c.ic = 10 * n;
        CHECK(fepc_k(&c, 1, 0, 0) == 0);
        expect_k(&c, n, 1, 0, 1, 0, 1, 1);
        CHECK_EQ(c.rx_ic, n);
        fepc_close(&c);
    }
    if (fepc_connect(&c, p.port, 1, 1) == 0) {
        gcm_init(&c.gk, key);
        c.ic = 15;                      /* below DCU00002's 21 */
        CHECK(fepc_k(&c, 2, 0, 0) == 0);
        if (fepc_recv_ok(&c)) {
            CHECK_EQ(c.f.cmd, CMD_NACK);
            CHECK_EQ(c.plain[0], FEP_ERR_REPLAY);
        }
        fepc_close(&c);
    }
out:
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "fep_ic_reused", 1);
}

static void test_sim_config_out(void)
{
    struct simproc p;
    char path[300], text[1024], want[512];

    sim_prepare(&p, "sim-config");
    sim_path(&p, "dcus.conf", path, sizeof path);
    {
        const char *const args[] = {
            "--dcus", "3", "--first", "41", "--key", SIM_KEY_HEX,
            "--keyed", "1", "--config-out", path, "--duration", "0.2", NULL
        };
        if (sim_spawn(&p, args) == 0) {
            CHECK_EQ(test_wait(p.pid, 5000), 0);    /* --duration ends it */
            p.pid = -1;
        }
    }
    CHECK(test_read_file(path, text, sizeof text) > 0);
    snprintf(want, sizeof want,
             "dcu DCU00041 %s key=000102030405060708090a0b0c0d0e26 poll=k\n"
             "dcu DCU00042 %s key=- poll=k\n"
             "dcu DCU00043 %s key=- poll=k\n", p.addr, p.addr, p.addr);
    CHECK(strcmp(text, want) == 0);
    CHECK(sim_report(&p, "sessions") >= 0);
}

static void test_sim_listen_in_use(void)
{
    struct simproc p;
    int fd;

    sim_prepare(&p, "sim-inuse");
    fd = test_listen(p.port);
    CHECK(fd >= 0);
    {
        const char *const args[] = { "--listen", p.addr, NULL };
        if (sim_spawn_argv(&p, args, 0) == 0) {
            CHECK_EQ(test_wait(p.pid, 5000), 3);
            p.pid = -1;
        }
    }
    if (fd >= 0)
        close(fd);
}

/* Fault targets: DCU numbers, and a seeded percentage of sessions. */
static void test_sim_fault_targets(void)
{
    static const char *const args[] = {
        "--dcus", "3", "--records", "1", "--fault", "nack:9@2",
        "--fault", "nack:8@50%", NULL
    };
    struct simproc p;
    struct fepc c;
    unsigned i, n, nacked = 0;

    sim_prepare(&p, "sim-targets");
    if (sim_spawn(&p, args) != 0)
        goto out;
    for (i = 0; i < 30; i++) {
        n = 1 + i % 3;
        if (fepc_connect(&c, p.port, n, 0) != 0)
            break;
        CHECK(fepc_k(&c, 1, 0, 0) == 0);
        if (fepc_recv_ok(&c)) {
            if (n == 2) {
                CHECK_EQ(c.f.cmd, CMD_NACK);
                CHECK_EQ(c.plain[0], 9);
            } else if (c.f.cmd == CMD_NACK) {
                CHECK_EQ(c.plain[0], 8);
                nacked++;
            } else {
                CHECK_EQ(c.f.cmd, CMD_LP_RSP);
            }
        }
        fepc_close(&c);
    }
    /* 20 sessions of DCU 1 and 3, each NACKed with probability 1/2. */
    CHECK(nacked >= 3 && nacked <= 17);
out:
    CHECK_EQ(sim_finish(&p), 0);
}

/* ------------------------------------------------------------------------
 * Faults: each test starts dcusim with one --fault and proves its effect.
 * ---------------------------------------------------------------------- */

/* dcusim with --records N (plaintext or keyed) and the fault; a client
 * connected to DCU00001 that sent `k` QSN 1. */
static int fault_start(struct simproc *p, struct fepc *c, const char *fault,
                       const char *records, int keyed)
{
    const char *const plain[] = { "--records", records, "--fault", fault, NULL };
    const char *const sec[] = {
        "--records", records, "--fault", fault, "--key", SIM_KEY_HEX, NULL
    };

    sim_prepare(p, "sim-fault");
    if (sim_spawn(p, keyed ? sec : plain) != 0)
        return -1;
    if (fepc_connect(c, p->port, 1, keyed) != 0)
        return -1;
    return fepc_k(c, 1, 0, 0);
}

static void test_sim_fault_dribble(void)
{
    struct simproc p;
    struct fepc c;
    uint8_t buf[64];
    int64_t t0 = sys_now_ms();
    size_t got = 0, reads = 0, room;

    if (fault_start(&p, &c, "dribble:10", "1", 0) == 0) {
        int64_t deadline = t0 + WAIT_MS;
        /* A 59-byte frame, one byte every 10 ms. */
        while (got < 59 && wait_readable(c.fd, deadline)) {
            ssize_t r = read(c.fd, buf + got, sizeof buf - got);
            if (r <= 0)
                break;
            got += (size_t)r;
            reads++;
        }
        CHECK_EQ(got, 59);
        CHECK(sys_now_ms() - t0 >= 58 * 10);
        CHECK(reads > 10);              /* bytes came apart, not in one write */
        memcpy(frame_rx_space(&c.rx, &room), buf, 59);
        frame_rx_commit(&c.rx, 59);
        CHECK_EQ(fepc_recv(&c, 10), FRAME_READY);
        check_records(&c, 1, 0, 1, 1);
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
}

static void test_sim_fault_slowloris(void)
{
    struct simproc p;
    struct fepc c;
    uint8_t b[2];
    int64_t t1;

    if (fault_start(&p, &c, "slowloris", "1", 0) == 0) {
        CHECK_EQ(read_raw(c.fd, b, 1, WAIT_MS), 1);
        t1 = sys_now_ms();
        CHECK_EQ(read_raw(c.fd, b + 1, 1, WAIT_MS), 1);
        CHECK(sys_now_ms() - t1 >= 900);
        CHECK_EQ(b[0], FRAME_SOF);
        CHECK_EQ(b[1], FRAME_VERSION);
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
}

static void test_sim_fault_garbage(void)
{
    struct simproc p;
    struct fepc c;
    uint8_t buf[50];
    size_t i, sof = 0;

    if (fault_start(&p, &c, "garbage:50", "1", 0) == 0) {
        CHECK_EQ(read_raw(c.fd, buf, sizeof buf, WAIT_MS), sizeof buf);
        for (i = 0; i < sizeof buf; i++)
            sof += buf[i] == FRAME_SOF;
        CHECK_EQ(sof, 0);
        expect_k(&c, 1, 1, 0, 1, 0, 1, 1);
        CHECK_EQ(c.rx.garbage, 0);      /* garbage read raw, frame clean */
        sim_settle(&p, "records_acked", 1);
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "records_acked", 1);
}

static void test_sim_fault_crc(void)
{
    struct simproc p;
    struct fepc c;

    if (fault_start(&p, &c, "crc:1", "100", 0) == 0) {
        expect_k(&c, 1, 1, 0, 0, 0, 77, 1);
        CHECK_EQ(fepc_recv(&c, WAIT_MS), FRAME_BAD_CRC);
        CHECK_EQ(c.f.fsn, 1);
        CHECK(fepc_nack(&c, FEP_ERR_CRC) == 0);
        expect_k(&c, 1, 1, 1, 1, 77, 23, 1);
        sim_settle(&p, "records_acked", 100);
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "retransmits", 1);
    CHECK_REPORT(&p, "records_acked", 100);
}

static void test_sim_fault_crc_always(void)
{
    struct simproc p;
    struct fepc c;
    int i;

    if (fault_start(&p, &c, "crc-always", "1", 0) == 0) {
        /* The first copy and three retransmissions, all bad; the fourth
         * NACK CRC ends the session. */
        for (i = 0; i < 4; i++) {
            CHECK_EQ(fepc_recv(&c, WAIT_MS), FRAME_BAD_CRC);
            CHECK_EQ(c.f.fsn, 0);
            CHECK(fepc_nack(&c, FEP_ERR_CRC) == 0);
        }
        CHECK(fepc_wait_eof(&c, WAIT_MS));
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "retransmits", 3);
    CHECK_REPORT(&p, "nack_crc", 4);
    CHECK_REPORT(&p, "records_acked", 0);
}

static void test_sim_fault_badtag(void)
{
    struct simproc p;
    struct fepc c;

    if (fault_start(&p, &c, "badtag", "1", 1) == 0) {
        CHECK_EQ(fepc_recv(&c, WAIT_MS), FRAME_READY);      /* CRC right */
        CHECK(c.f.ctl & CTL_SEC);
        CHECK_EQ(c.open_err, FEP_ERR_SECURITY);
        CHECK(fepc_nack(&c, FEP_ERR_SECURITY) == 0);
        CHECK(fepc_wait_eof(&c, WAIT_MS));
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "nack_security", 1);
}

static void test_sim_fault_replay(void)
{
    struct simproc p;
    struct fepc c;
    uint32_t ic0 = 0;

    if (fault_start(&p, &c, "replay", "100", 1) == 0) {
        if (fepc_recv_ok(&c)) {
            ic0 = c.rx_ic;
            CHECK(fepc_ack(&c) == 0);
        }
        /* Packet 1 verifies, under the IC packet 0 had. */
        if (fepc_recv_ok(&c)) {
            check_header(&c, CMD_LP_RSP, 1, 1, 1);
            CHECK_EQ(c.rx_ic, ic0);
            CHECK(fepc_nack(&c, FEP_ERR_REPLAY) == 0);
        }
        CHECK(fepc_wait_eof(&c, WAIT_MS));
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "nack_replay", 1);
}

static void test_sim_fault_skip_fsn(void)
{
    struct simproc p;
    struct fepc c;

    if (fault_start(&p, &c, "skip-fsn:1", "100", 0) == 0) {
        expect_k(&c, 1, 1, 0, 0, 0, 77, 1);
        if (fepc_recv_ok(&c)) {
            check_header(&c, CMD_LP_RSP, 1, 2, 1);    /* packet 1, FSN 2 */
            check_records(&c, 1, 77, 23, 1);
            CHECK(fepc_nack(&c, FEP_ERR_SEQUENCE) == 0);
        }
        CHECK(fepc_wait_eof(&c, WAIT_MS));
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "nack_sequence", 1);
    CHECK_REPORT(&p, "records_acked", 77);
}

static void test_sim_fault_dup_fsn(void)
{
    struct simproc p;
    struct fepc c;
    uint32_t ic0 = 0;
    uint16_t msn0 = 0;

    if (fault_start(&p, &c, "dup-fsn", "100", 1) == 0) {
        expect_k(&c, 1, 1, 0, 0, 0, 76, 1);
        ic0 = c.rx_ic;
        msn0 = c.f.msn;
        expect_k(&c, 1, 1, 0, 0, 0, 76, 1);         /* again: same QSN, FSN */
        CHECK_EQ(c.rx_ic, ic0 + 1);
        CHECK_EQ(c.f.msn, msn0 + 1);
        expect_k(&c, 1, 1, 1, 1, 76, 24, 1);
        sim_settle(&p, "acks_received", 3);
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "acks_received", 3);
    CHECK_REPORT(&p, "records_acked", 100);
}

static void test_sim_fault_oversize(void)
{
    struct simproc p;
    struct fepc c;

    if (fault_start(&p, &c, "oversize", "1", 0) == 0) {
        CHECK_EQ(fepc_recv(&c, WAIT_MS), FRAME_BAD_LENGTH);
        CHECK_EQ(c.f.len, FRAME_LEN_MAX + 1);
        CHECK_EQ(c.f.cmd, CMD_LP_RSP);
        CHECK_EQ(c.rx.garbage, 0);      /* a valid header: HCS right */
        CHECK(fepc_nack(&c, FEP_ERR_LENGTH) == 0);
        CHECK(fepc_wait_eof(&c, WAIT_MS));
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "nack_length", 1);
}

/* The DCU is free again once the held connection is gone: a new session
 * is not answered BUSY (it is held, silent, like the first). */
static void check_released(struct simproc *p)
{
    struct fepc c;

    if (fepc_connect(&c, p->port, 1, 0) != 0)
        return;
    CHECK(fepc_k(&c, 2, 0, 0) == 0);
    CHECK_EQ(fepc_recv(&c, 300), RECV_TIMEOUT);
    fepc_close(&c);
}

static void test_sim_fault_silent(void)
{
    struct simproc p;
    struct fepc c;
    uint8_t junk[3000];

    if (fault_start(&p, &c, "silent", "1", 0) == 0) {
        memset(junk, 0x55, sizeof junk);
        CHECK(write_all(c.fd, junk, sizeof junk) == 0);  /* read and dropped */
        CHECK_EQ(fepc_recv(&c, 500), RECV_TIMEOUT);
        fepc_close(&c);
        check_released(&p);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "packets_sent", 0);
    CHECK_REPORT(&p, "timeouts", 0);
}

static void test_sim_fault_nack(void)
{
    struct simproc p;
    struct fepc c;

    if (fault_start(&p, &c, "nack:9", "1", 0) == 0) {
        if (fepc_recv_ok(&c)) {
            check_header(&c, CMD_NACK, 1, 0, 1);
            CHECK_EQ(c.plain[0], 9);
        }
        CHECK(fepc_k(&c, 2, 0, 0) == 0);            /* the next request */
        if (fepc_recv_ok(&c)) {
            check_header(&c, CMD_NACK, 2, 0, 1);
            CHECK_EQ(c.plain[0], 9);
        }
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "packets_sent", 0);
    CHECK_REPORT(&p, "polls", 2);
}

static void test_sim_fault_plaintext(void)
{
    struct simproc p;
    struct fepc c;

    if (fault_start(&p, &c, "plaintext", "1", 1) == 0) {
        CHECK_EQ(fepc_recv(&c, WAIT_MS), FRAME_READY);
        CHECK_EQ(c.f.ctl & CTL_SEC, 0);
        check_records(&c, 1, 0, 1, 1);
        CHECK(fepc_nack(&c, FEP_ERR_SECURITY) == 0);
        CHECK(fepc_wait_eof(&c, WAIT_MS));
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "nack_security", 1);
}

static void test_sim_fault_noread(void)
{
    struct simproc p;
    struct fepc c;
    static uint8_t junk[1 << 20];
    size_t sent = 0;
    int size = 4096, flags;

    if (fault_start(&p, &c, "noread", "1", 0) == 0) {
        CHECK_EQ(fepc_recv(&c, 300), RECV_TIMEOUT);
        /* Nobody reads: the client's writes stall long before 1 MiB. */
        setsockopt(c.fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
        flags = fcntl(c.fd, F_GETFL);
        fcntl(c.fd, F_SETFL, flags | O_NONBLOCK);
        while (sent < sizeof junk) {
            ssize_t r = write(c.fd, junk, sizeof junk - sent);
            if (r > 0) {
                sent += (size_t)r;
                continue;
            }
            if (!(r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)))
                break;
            /* Full now; give a reader the chance to show itself. */
            {
                struct pollfd pfd = { c.fd, POLLOUT, 0 };
                if (poll(&pfd, 1, 300) <= 0)
                    break;
            }
        }
        CHECK(sent < sizeof junk);
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "packets_sent", 0);
}

static void test_sim_fault_cut(void)
{
    struct simproc p;
    struct fepc c;
    uint8_t buf[64];

    if (fault_start(&p, &c, "cut", "1", 0) == 0) {
        CHECK_EQ(read_raw(c.fd, buf, sizeof buf, WAIT_MS), 15);
        CHECK_EQ(buf[0], FRAME_SOF);
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_REPORT(&p, "packets_sent", 1);
    CHECK_REPORT(&p, "records_acked", 0);
}

/* ------------------------------------------------------------------------
 * Push, signals, command line
 * ---------------------------------------------------------------------- */

/* Accepts one push session and ACKs its packets; the DCU number or 0. */
static uint32_t push_serve(int lfd, uint32_t *records)
{
    struct fepc c;
    char id[FRAME_ID_SIZE + 1];
    uint32_t n = 0;

    memset(&c, 0, sizeof c);
    frame_rx_reset(&c.rx);
    c.ic = 1;
    if (!wait_readable(lfd, sys_now_ms() + WAIT_MS))
        return 0;
    c.fd = accept(lfd, NULL, NULL);
    CHECK(c.fd >= 0);
    while (fepc_recv(&c, WAIT_MS) == FRAME_READY) {
        frame_id_str(c.f.sid, id);
        n = (uint32_t)strtoul(id + 3, NULL, 10);
        memcpy(c.dcu, c.f.sid, FRAME_ID_SIZE);
        CHECK_EQ(c.f.cmd, CMD_LP_RSP);
        check_records(&c, n, *records % 100, c.plain[0], 1);
        *records += c.plain[0];
        CHECK(fepc_ack(&c) == 0);
        if (c.f.ctl & CTL_LAST)
            break;
    }
    CHECK(fepc_wait_eof(&c, WAIT_MS));  /* dcusim closes after the last ACK */
    fepc_close(&c);
    return n;
}

static void test_sim_push(void)
{
    struct simproc p;
    char acked[300];
    uint32_t seen = 0, records = 0;
    int lfd, i;

    sim_prepare(&p, "sim-push");
    sim_path(&p, "acked.csv", acked, sizeof acked);
    lfd = test_listen(p.port);
    CHECK(lfd >= 0);
    if (lfd >= 0) {
        const char *const args[] = {
            "--push", p.addr, "--dcus", "3", "--records", "100",
            "--push-concurrency", "1", "--push-rate", "10", "--timeout", "2",
            "--acked-csv", acked, NULL
        };
        int64_t t0 = sys_now_ms();
        if (sim_spawn_argv(&p, args, 0) == 0)
            for (i = 0; i < 3; i++)
                seen |= 1u << push_serve(lfd, &records);
        CHECK(sys_now_ms() - t0 >= 200);    /* 3 sessions at 10 a second */
        close(lfd);
        /* Every push done: dcusim exits on its own. */
        CHECK_EQ(test_wait(p.pid, 5000), 0);
        p.pid = -1;
    }
    CHECK_EQ(seen, 0xE);                /* DCU 1, 2 and 3 */
    CHECK_EQ(records, 300);
    CHECK_REPORT(&p, "pushes", 3);
    CHECK_REPORT(&p, "records_acked", 300);
    CHECK_EQ(test_count_lines(acked, "DCU0000"), 300);
}

static void test_sim_push_refused(void)
{
    struct simproc p;
    const char *args[] = { "--push", NULL, "--timeout", "1", NULL };

    sim_prepare(&p, "sim-pushfail");
    args[1] = p.addr;                   /* nothing listens there */
    if (sim_spawn_argv(&p, args, 0) == 0) {
        CHECK_EQ(test_wait(p.pid, 5000), 3);
        p.pid = -1;
    }
}

/* ------------------------------------------------------------------------
 * --latency: a WAN between the DCUs and the FEP
 * ---------------------------------------------------------------------- */

#define LATENCY_SLACK_MS 1500           /* what a loaded machine may add */

/* Sends the poll's request (fsn 0) or the ACK of the packet before, then
 * receives packet fsn of a K of DCU00001 (QSN 1) and returns how long it
 * took to come, or -1. */
static int64_t latency_step(struct fepc *c, uint16_t fsn)
{
    int64_t t0 = sys_now_ms();

    CHECK((fsn == 0 ? fepc_k(c, 1, 0, 0) : fepc_ack(c)) == 0);
    if (!fepc_recv_ok(c))
        return -1;
    return sys_now_ms() - t0;
}

/* With --latency 200, every packet of a poll waits 200 ms after the frame
 * it answers, so n packets cost n round trips' worth of it, and little
 * more. */
static void test_sim_latency_round_trips(void)
{
    static const char *const args[] = {
        "--records", "231", "--latency", "200", NULL    /* 3 x 77 */
    };
    struct simproc p;
    struct fepc c;
    int64_t t0 = 0, total = 0, gap;
    uint16_t fsn;

    sim_prepare(&p, "sim-latency");
    if (sim_spawn(&p, args) == 0 && fepc_connect(&c, p.port, 1, 0) == 0) {
        t0 = sys_now_ms();
        for (fsn = 0; fsn < 3; fsn++) {
            gap = latency_step(&c, fsn);
            CHECK(gap >= 200);
            check_header(&c, CMD_LP_RSP, 1, fsn, fsn == 2);
            check_records(&c, 1, 77u * fsn, 77, 1);
        }
        total = sys_now_ms() - t0;
        CHECK(fepc_ack(&c) == 0);
        sim_settle(&p, "records_acked", 231);
        fepc_close(&c);
    }
    CHECK(total >= 3 * 200);
    CHECK(total < 3 * 200 + LATENCY_SLACK_MS);
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_EQ(test_count_lines(p.log, "latency 200 ms"), 1);
    CHECK_REPORT(&p, "records_acked", 231);
    CHECK_REPORT(&p, "timeouts", 0);
}

/* The delays dcusim logged (-v) for DCU00001's frames MSN 0..n-1, in
 * ms[]; -1 where none was logged. */
static void latency_logged(const struct simproc *p, long long *ms, int n)
{
    static char text[1 << 16];
    const char *s = text;
    unsigned msn;
    long long v;
    int i;

    for (i = 0; i < n; i++)
        ms[i] = -1;
    if (test_read_file(p->log, text, sizeof text) < 0)
        return;
    while ((s = strstr(s, "DCU00001: MSN ")) != NULL) {
        s += strlen("DCU00001: MSN ");
        if (sscanf(s, "%u held %lld ms", &msn, &v) == 2 && msn < (unsigned)n)
            ms[msn] = v;
    }
}

#define JITTER_PACKETS 5

/* One poll of JITTER_PACKETS packets with --latency 20:200 and the seed:
 * they come in order, each no sooner than its logged delay; the delays
 * in ms[]. */
static void latency_jitter_run(const char *seed, long long *ms)
{
    const char *const args[] = {
        "--records", "385", "--latency", "20:200", "--seed", seed, "-v", NULL
    };
    struct simproc p;
    struct fepc c;
    int64_t gap[JITTER_PACKETS] = { -1, -1, -1, -1, -1 };
    uint16_t fsn;

    sim_prepare(&p, "sim-jitter");
    if (sim_spawn(&p, args) == 0 && fepc_connect(&c, p.port, 1, 0) == 0) {
        for (fsn = 0; fsn < JITTER_PACKETS; fsn++) {
            gap[fsn] = latency_step(&c, fsn);
            CHECK_EQ(c.f.fsn, fsn);
            CHECK_EQ(c.f.msn, fsn);
            check_records(&c, 1, 77u * fsn, 77, 1);
        }
        CHECK(fepc_ack(&c) == 0);
        sim_settle(&p, "records_acked", 385);
        fepc_close(&c);
    }
    CHECK_EQ(sim_finish(&p), 0);
    CHECK_EQ(test_count_lines(p.log, "latency 20..220 ms"), 1);
    latency_logged(&p, ms, JITTER_PACKETS);
    for (fsn = 0; fsn < JITTER_PACKETS; fsn++) {
        CHECK(ms[fsn] >= 20 && ms[fsn] <= 220);
        CHECK(gap[fsn] >= ms[fsn]);
        CHECK(gap[fsn] < ms[fsn] + LATENCY_SLACK_MS);
    }
}

/* Jitter keeps a connection's frames in order, and --seed fixes it. */
static void test_sim_latency_jitter(void)
{
    long long a[JITTER_PACKETS], b[JITTER_PACKETS], other[JITTER_PACKETS];

    latency_jitter_run("7", a);
    latency_jitter_run("7", b);
    latency_jitter_run("8", other);
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(memcmp(a, other, sizeof a) != 0);
}

/* A push's first packet waits too: two packets take two delays. */
static void test_sim_latency_push(void)
{
    struct simproc p;
    uint32_t records = 0, n = 0;
    int64_t t0 = sys_now_ms(), took = 0;
    int lfd;

    sim_prepare(&p, "sim-latpush");
    lfd = test_listen(p.port);
    CHECK(lfd >= 0);
    if (lfd >= 0) {
        const char *const args[] = {
            "--push", p.addr, "--records", "100", "--latency", "250",
            "--timeout", "2", NULL
        };
        if (sim_spawn_argv(&p, args, 0) == 0)
            n = push_serve(lfd, &records);
        took = sys_now_ms() - t0;
        close(lfd);
        CHECK_EQ(test_wait(p.pid, 5000), 0);
        p.pid = -1;
    }
    CHECK_EQ(n, 1);
    CHECK_EQ(records, 100);
    CHECK(took >= 2 * 250);
    CHECK(took < 2 * 250 + LATENCY_SLACK_MS);
}

static void test_sim_sigterm_report(void)
{
    struct simproc p;
    int64_t t0;
    long long v;

    sim_prepare(&p, "sim-term");
    if (sim_spawn(&p, NULL) == 0) {
        kill(p.pid, SIGUSR1);
        t0 = sys_now_ms();
        while (sim_report(&p, "sessions") < 0 && sys_now_ms() - t0 < WAIT_MS)
            test_sleep_ms(10);
        CHECK(sim_report(&p, "sessions") >= 0);
        t0 = sys_now_ms();
        CHECK_EQ(sim_finish(&p), 0);
        CHECK(sys_now_ms() - t0 < 2000);
    }
    CHECK_EQ(test_count_lines(p.log, "dcusim: sessions="), 2);
    v = sim_report(&p, "timeouts");
    CHECK(v >= 0);
    {
        static const char *const keys[] = {
            "sessions", "polls", "pushes", "packets_sent", "retransmits",
            "acks_received", "nacks_received", "nack_crc", "nack_header",
            "nack_length", "nack_security", "nack_replay", "nack_unknown",
            "nack_command", "nack_sequence", "nack_store", "nack_busy",
            "records_generated", "records_acked", "fep_ic_reused",
            "bad_frames", "timeouts"
        };
        size_t i;
        for (i = 0; i < sizeof keys / sizeof keys[0]; i++)
            CHECK(sim_report(&p, keys[i]) >= 0);
    }
}

static void test_sim_bad_options(void)
{
    static const struct { const char *opt, *value; } cases[] = {
        { "--records", "many" }, { "--key", "0011" }, { "--fault", "melt" },
        { "--fault", "crc:x" }, { "--push-cmds", "KX" }, { "--timeout", "-1" },
        { "--listen", "nowhere" }, { "--bogus", NULL }, { "--dcus", "0" },
        { "--latency", "x" }, { "--latency", "-1" }, { "--latency", "" },
        { "--latency", "200:" }, { "--latency", ":50" },
        { "--latency", "200:x" }, { "--latency", "1:2:3" },
        { "--latency", "60001" }, { "--latency", "0:60001" },
        { "--latency", NULL },
    };
    struct simproc p;
    size_t i;

    sim_prepare(&p, "sim-usage");
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *args[] = { "--listen", p.addr, cases[i].opt,
                               cases[i].value, NULL };
        char text[4096];
        if (sim_spawn_argv(&p, args, 0) != 0)
            continue;
        CHECK_EQ(test_wait(p.pid, 5000), 2);
        p.pid = -1;
        CHECK(test_read_file(p.log, text, sizeof text) > 0);
        CHECK(strstr(text, cases[i].opt) != NULL);
        unlink(p.log);
    }
    {
        const char *args[] = { "--dcus", "5", NULL };   /* no --listen, --push */
        if (sim_spawn_argv(&p, args, 0) == 0) {
            CHECK_EQ(test_wait(p.pid, 5000), 2);
            p.pid = -1;
        }
    }
}

/* Runs a test, then removes the directories (logs, CSV files) it made. */
static void sim_test(const char *name, void (*fn)(void))
{
    unsigned i;

    test_run(name, fn);
    for (i = 0; i < n_made_dirs; i++)
        test_remove_tree(made_dirs[i]);
    n_made_dirs = 0;
}

void test_sim_suite(void)
{
    sim_test("sim_poll_plain", test_sim_poll_plain);
    sim_test("sim_poll_empty", test_sim_poll_empty);
    sim_test("sim_poll_keyed", test_sim_poll_keyed);
    sim_test("sim_status_meters", test_sim_status_meters);
    sim_test("sim_nack_crc_retransmits", test_sim_nack_crc_retransmits);
    sim_test("sim_unacked_poll_repeats", test_sim_unacked_poll_repeats);
    sim_test("sim_acked_csv", test_sim_acked_csv);
    sim_test("sim_replayed_fep_ic", test_sim_replayed_fep_ic);
    sim_test("sim_unknown_busy_security", test_sim_unknown_busy_security);
    sim_test("sim_same_key", test_sim_same_key);
    sim_test("sim_config_out", test_sim_config_out);
    sim_test("sim_listen_in_use", test_sim_listen_in_use);
    sim_test("sim_fault_targets", test_sim_fault_targets);
    sim_test("sim_fault_dribble", test_sim_fault_dribble);
    sim_test("sim_fault_slowloris", test_sim_fault_slowloris);
    sim_test("sim_fault_garbage", test_sim_fault_garbage);
    sim_test("sim_fault_crc", test_sim_fault_crc);
    sim_test("sim_fault_crc_always", test_sim_fault_crc_always);
    sim_test("sim_fault_badtag", test_sim_fault_badtag);
    sim_test("sim_fault_replay", test_sim_fault_replay);
    sim_test("sim_fault_skip_fsn", test_sim_fault_skip_fsn);
    sim_test("sim_fault_dup_fsn", test_sim_fault_dup_fsn);
    sim_test("sim_fault_oversize", test_sim_fault_oversize);
    sim_test("sim_fault_silent", test_sim_fault_silent);
    sim_test("sim_fault_nack", test_sim_fault_nack);
    sim_test("sim_fault_plaintext", test_sim_fault_plaintext);
    sim_test("sim_fault_noread", test_sim_fault_noread);
    sim_test("sim_fault_cut", test_sim_fault_cut);
    sim_test("sim_push", test_sim_push);
    sim_test("sim_push_refused", test_sim_push_refused);
    sim_test("sim_latency_round_trips", test_sim_latency_round_trips);
    sim_test("sim_latency_jitter", test_sim_latency_jitter);
    sim_test("sim_latency_push", test_sim_latency_push);
    sim_test("sim_sigterm_report", test_sim_sigterm_report);
    sim_test("sim_bad_options", test_sim_bad_options);
}
