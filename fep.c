/*
 * fep.c -- fepd: the command line, start-up and --check, the select()
 * loop, the slot table, the poll scheduler, signals, reload and shutdown.
 *
 * Owns: the fepd struct and everything in it that is allocated at start-up
 * (the slot table here; the DCU tables through config_load and state_open;
 * the CSV buffers inside the struct), every socket descriptor (listeners are
 * opened in start_listeners and closed in stop_listeners; a session's socket
 * is opened before slot_open and closed only in slot_close), and the signal
 * flags; the pidfile, and what fepd tells the service manager (the socket
 * itself is sys.c's); in test builds, the switch that puts every poll
 * phase at 0.  After start-up nothing is allocated or freed.
 * Must not touch: protocol decisions (session.c), file formats (store.c,
 * state.c).
 *
 * One pass of the loop:
 *   1. signals, the poll scheduler, the fd_sets, select() until the nearest
 *      deadline;
 *   2. accepts, then each slot's connect / read / write;
 *   3. group commit: the replay marks the pass's frames raised are made
 *      durable (one journal append and fsync), then one store_commit
 *      covers every packet read in this pass; then their ACKs (or NACK
 *      STORE) go out;
 *   4. deadlines; then the reap step closes what has finished, so no
 *      handler ever frees a slot another handler of the pass still uses;
 *      then, between passes, a due CSV segment is handed off (rotate) and
 *      changed statistics are saved (at most once a second).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fep.h"

#define STR2(x) #x
#define STR(x) STR2(x)
#define SLOT_OPEN(d, kind, fd, peer, now) \
    slot_open((d), (kind), (fd), (peer), (now), __FILE__ ":" STR(__LINE__))

#define ACCEPTS_PER_PASS 64             /* fairness between new and open sessions */
#define ACCEPT_PAUSE_MS 500             /* out of descriptors: listeners rest */
#define METRICS_QUIET_MS 1000           /* a scraper's time to send its request */
#define LINGER_MS_MAX 1000              /* waiting for the peer's close */
#define SELECT_WAIT_MS_MAX 250          /* how late a signal may be noticed */
#define METRICS_PASS_BYTES (256 * 1024) /* a metrics response, per loop pass */
#define STATS_SAVE_MS 1000              /* statistics wait at most this to be saved */
#define POLL_NEVER INT64_MAX

static volatile sig_atomic_t signal_stop, signal_hup, signal_usr1;

#ifdef FEP_FAULT
/* Test builds: with $FEP_TEST_POLL_AT_START set, every DCU's poll phase is
 * 0 (all polled at start-up, then every poll_every), so that the tests of
 * other things get their poll cycle at once, not spread over poll_every. */
static int poll_phases_zero;
#else
#define poll_phases_zero 0
#endif

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        signal_hup = 1;
    else if (sig == SIGUSR1)
        signal_usr1 = 1;
    else
        signal_stop = 1;
}

/* ------------------------------------------------------------------------
 * Allocation check (test build): counts allocations made after start-up by
 * fepd's own code.  Linked with -Wl,--wrap=malloc,... (GNU ld, lld).
 * ---------------------------------------------------------------------- */

#ifdef FEP_ALLOC_CHECK
static int alloc_sealed;
static unsigned long allocs_after_start;

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t m);
void *__wrap_realloc(void *p, size_t n);
void __wrap_free(void *p);

void *__wrap_malloc(size_t n)
{
    allocs_after_start += alloc_sealed;
    return __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t m)
{
    allocs_after_start += alloc_sealed;
    return __real_calloc(n, m);
}

void *__wrap_realloc(void *p, size_t n)
{
    allocs_after_start += alloc_sealed;
    return __real_realloc(p, n);
}

void __wrap_free(void *p)
{
    allocs_after_start += alloc_sealed && p;
    __real_free(p);
}

static void alloc_seal(int on)
{
    alloc_sealed = on;
}

static void alloc_report(void)
{
    log_msg(LOG_INFO, "allocations after start-up: %lu", allocs_after_start);
}
#else
static void alloc_seal(int on)
{
    (void)on;
}

static void alloc_report(void)
{
}
#endif

/* ------------------------------------------------------------------------
 * The slot table: slot_open and slot_close are the only places where a
 * slot changes between FREE and in use.
 * ---------------------------------------------------------------------- */

static session *slot_open(fepd *d, enum slot_kind kind, int fd,
                          const sys_addr *peer, int64_t now,
                          const char *where)
{
    session *s = NULL;
    uint32_t gen;
    unsigned i;

    for (i = 0; i < d->n_slots; i++) {
        if (d->slots[i].state == SLOT_FREE) {
            s = &d->slots[i];
            break;
        }
    }
    if (!s) {
        /* The callers count free slots first; reaching here is a bug. */
        log_msg(LOG_ERROR, "%s: no free slot (bug)", where);
        abort();
    }
    /* The whole slot, buffers included: 2.5 KiB, well under a
     * microsecond, and no field can keep a value from the last session. */
    gen = s->gen + 1;
    memset(s, 0, sizeof *s);
    s->gen = gen;
    s->state = SLOT_ACTIVE;
    s->kind = kind;
    s->fd = fd;
    s->dcu = -1;
    s->key_index = -1;
    s->mark_index = -1;
    if (peer)
        s->peer = *peer;
    s->opened_at = where;
    s->opened_ms = now;
    s->session_deadline_ms = now + d->cfg.timeout_session_ms;
    frame_rx_reset(&s->rx);
    d->slots_in_use++;
    d->kind_in_use[kind]++;
    if (kind == KIND_POLL || kind == KIND_PUSH)
        d->sessions_active++;
    d->stats.slots_acquired++;
    return s;
}

static void poll_ended(fepd *d, unsigned i, int ok, int64_t now);

static void slot_close(fepd *d, session *s, int64_t now)
{
    if (s->dcu >= 0)
        d->state.dcus[s->dcu].slot_refs--;
    if (s->kind == KIND_POLL && s->dcu >= 0)
        poll_ended(d, (unsigned)s->dcu, s->result == FEP_OK, now);
    sys_close(s->fd);
    s->fd = -1;
    /* The key material does not outlive the session. */
    memset(&s->key, 0, sizeof s->key);
    frame_rx_reset(&s->rx);
    s->tx_len = s->tx_off = 0;
    d->slots_in_use--;
    d->kind_in_use[s->kind]--;
    if (s->kind == KIND_POLL || s->kind == KIND_PUSH)
        d->sessions_active--;
    d->stats.slots_released++;
    d->closed_this_pass++;
    s->state = SLOT_FREE;
}

/* Ends a slot at once: no flush, no linger (timeouts, I/O errors). */
static void slot_abort(fepd *d, session *s, fep_err why)
{
    sess_end(d, s, why);
    s->close_now = 1;
}

/* ------------------------------------------------------------------------
 * Writing: out drains as far as the socket takes it; a write that cannot
 * progress for timeout_write ends the session (back-pressure, not growth).
 * ---------------------------------------------------------------------- */

/* The buffer out[tx_off..tx_len) lies in (see struct session): tx for a
 * session's frames, rx.buf for a metrics response; and its size. */
static uint8_t *slot_out(session *s, size_t *cap)
{
    if (s->kind == KIND_METRICS) {
        *cap = sizeof s->rx.buf;
        return s->rx.buf;
    }
    *cap = sizeof s->tx;
    return s->tx;
}

static void slot_flush(fepd *d, session *s, int64_t now)
{
    size_t cap;
    uint8_t *out = slot_out(s, &cap);
    int progressed = 0;

    while (s->tx_off < s->tx_len) {
        ssize_t n = sys_write(s->fd, out + s->tx_off, s->tx_len - s->tx_off);
        if (n > 0) {
            s->tx_off += (size_t)n;
            progressed = 1;
            continue;
        }
        if (n == SYS_ERROR) {
            log_msg(LOG_WARN, "write to %s: %s",
                    s->dcu >= 0 ? d->cfg.dcus[s->dcu].id : "peer",
                    strerror(errno));
            slot_abort(d, s, FEP_ERR_IO);
            return;
        }
        break;
    }
    if (s->tx_off == s->tx_len) {
        s->tx_off = s->tx_len = 0;
        s->write_deadline_ms = 0;
    } else if (progressed || s->write_deadline_ms == 0) {
        s->write_deadline_ms = now + d->cfg.timeout_write_ms;
    }
}

/* ------------------------------------------------------------------------
 * Metrics connections
 * ---------------------------------------------------------------------- */

/* Renders the next chunk of the response into rx.buf, once the last one
 * has gone out: the request it held was parsed before the first chunk. */
static void metrics_fill(fepd *d, session *s)
{
    size_t cap, n;
    uint8_t *out = slot_out(s, &cap);

    if (s->tx_off < s->tx_len || s->state != SLOT_ACTIVE || !s->exchange_open)
        return;
    s->tx_off = s->tx_len = 0;
    n = metrics_render(d, &s->metrics_cursor, (char *)out, cap);
    if (n == 0)
        sess_end(d, s, FEP_OK);
    s->tx_len = (uint16_t)n;
}

/* A response goes out at socket speed: the buffer is refilled and written
 * until the socket is full, up to METRICS_PASS_BYTES a pass, so that a
 * scrape of 100,000 DCUs neither waits for another wake-up nor holds the
 * loop away from the sessions. */
static void metrics_stream(fepd *d, session *s, int64_t now)
{
    size_t sent = 0;

    for (;;) {
        size_t queued;

        metrics_fill(d, s);             /* refills out once it is empty */
        queued = s->tx_len - s->tx_off;
        if (queued == 0 || s->close_now)
            return;
        slot_flush(d, s, now);
        sent += queued - (s->tx_len - s->tx_off);
        if (s->tx_off < s->tx_len || s->state != SLOT_ACTIVE ||
            sent >= METRICS_PASS_BYTES)
            return;
    }
}

/* Whether the slot has bytes to write, or a response still to render. */
static int slot_wants_write(const session *s)
{
    return s->state == SLOT_CONNECTING || s->tx_off < s->tx_len ||
           (s->kind == KIND_METRICS && s->state == SLOT_ACTIVE &&
            s->exchange_open);
}

static void metrics_respond(fepd *d, session *s, int status)
{
    static const char ok[] = "HTTP/1.0 200 OK\r\n"
                             "Content-Type: text/plain; version=0.0.4\r\n"
                             "Connection: close\r\n\r\n";
    const char *text = status == 404 ? "404 Not Found" :
                       status == 405 ? "405 Method Not Allowed" : "400 Bad Request";
    size_t cap;
    uint8_t *out = slot_out(s, &cap); /* the request is parsed: rx.buf is free */
    int n;

    s->wait = WAIT_NONE;
    if (status == 200) {
        memcpy(out, ok, sizeof ok - 1);
        s->tx_len = sizeof ok - 1;
        s->exchange_open = 1;           /* rendering: metrics_fill refills out */
        return;
    }
    n = snprintf((char *)out, cap,
                 "HTTP/1.0 %s\r\nContent-Type: text/plain\r\n"
                 "Connection: close\r\n\r\n%s\n", text, text);
    s->tx_len = (uint16_t)(n > 0 && (size_t)n < cap ? n : 0);
    sess_end(d, s, FEP_OK);
}

static void metrics_read(fepd *d, session *s)
{
    size_t room = RX_BUF_SIZE - s->rx.end;
    ssize_t n;
    int status;

    if (s->exchange_open)
        return;                         /* the request is in; ignore the rest */
    n = sys_read(s->fd, s->rx.buf + s->rx.end,
                 room < METRICS_REQUEST_MAX ? room : METRICS_REQUEST_MAX);
    if (n == SYS_AGAIN)
        return;
    if (n < 0) {
        slot_abort(d, s, n == SYS_EOF ? FEP_ERR_CLOSED : FEP_ERR_IO);
        return;
    }
    s->rx.end += (size_t)n;
    status = metrics_parse_request(s->rx.buf, s->rx.end);
    if (status != 0)
        metrics_respond(d, s, status);
}

/* ------------------------------------------------------------------------
 * Accepting and connecting
 * ---------------------------------------------------------------------- */

/*
 * Neither kind of session may starve the other.  When pushes are served,
 * polls take at most three quarters of the sessions: a poll cycle that ends
 * frees its slot at once for the next poll, so without a share of their
 * own, pushes would only ever meet NACK BUSY.  When DCUs are polled, pushes
 * take at most three quarters too: connections that open and say nothing
 * hold a push session until timeout_idle, and a flood of them must not stop
 * the polls.  Without the other kind, one kind may take every session.
 */
static unsigned kind_share(const fepd *d, enum slot_kind kind)
{
    int other = kind == KIND_POLL ? d->cfg.has_listen : d->cfg.n_polled > 0;

    return d->cfg.max_sessions - (other ? d->cfg.max_sessions / 4 : 0);
}

static int session_free_for(const fepd *d, enum slot_kind kind)
{
    return d->sessions_active < d->cfg.max_sessions &&
           d->kind_in_use[kind] < kind_share(d, kind);
}

/* Out of descriptors (or kernel memory), the connection stays queued and
 * the listener readable: the listeners are left unwatched for a while
 * rather than retried in a loop that would spin and flood the log. */
static void accept_failed(fepd *d, int err, int64_t now)
{
    if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)
        return;
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        d->accept_paused_until_ms = now + ACCEPT_PAUSE_MS;
        log_msg(LOG_WARN, "accept: %s: no new connections for %d ms",
                strerror(err), ACCEPT_PAUSE_MS);
        return;
    }
    log_msg(LOG_WARN, "accept: %s", strerror(err));
}

static void reap(fepd *d, session *s, int64_t now);

/* Every metrics slot taken: the oldest one still without a whole request
 * after METRICS_QUIET_MS gives way, so that clients that connect and say
 * nothing (or dribble) cannot keep /metrics from its scraper.  1 when a
 * slot was freed. */
static int metrics_slot_reclaim(fepd *d, int64_t now)
{
    session *quiet = NULL;
    unsigned i;

    for (i = 0; i < d->n_slots; i++) {
        session *s = &d->slots[i];

        if (s->kind == KIND_METRICS && s->state == SLOT_ACTIVE &&
            !s->exchange_open && now - s->opened_ms > METRICS_QUIET_MS &&
            (!quiet || s->opened_ms < quiet->opened_ms))
            quiet = s;
    }
    if (!quiet)
        return 0;
    log_msg(LOG_WARN, "metrics: a connection without a request after %lld "
            "ms gives way to a new one", (long long)(now - quiet->opened_ms));
    slot_abort(d, quiet, FEP_ERR_TIMEOUT);
    reap(d, quiet, now);
    return 1;
}

static void accept_on(fepd *d, int listen_fd, int metrics, int64_t now)
{
    int i;

    for (i = 0; i < ACCEPTS_PER_PASS; i++) {
        sys_addr peer;
        enum slot_kind kind;
        session *s;
        int fd = sys_accept(listen_fd, &peer);

        if (fd < 0) {
            accept_failed(d, errno, now);
            return;
        }
        if (metrics)
            kind = d->kind_in_use[KIND_METRICS] < METRICS_SLOTS ||
                           metrics_slot_reclaim(d, now) ? KIND_METRICS
                                                        : KIND_REJECT;
        else if (session_free_for(d, KIND_PUSH))
            kind = KIND_PUSH;
        else
            kind = KIND_REJECT;
        if (d->stopping || (kind == KIND_REJECT &&
                            (metrics || d->kind_in_use[KIND_REJECT] >= REJECT_SLOTS))) {
            /* No slot at all: the peer sees the connection closed. */
            d->stats.busy_rejected++;
            sys_close(fd);
            continue;
        }
        s = SLOT_OPEN(d, kind, fd, &peer, now);
        s->wait = WAIT_IDLE;
        s->io_deadline_ms = now + d->cfg.timeout_idle_ms;
    }
}

static void start_poll(fepd *d, int i, int64_t now)
{
    const dcu_conf *dc = &d->cfg.dcus[i];
    int in_progress = 0;
    int fd = sys_connect(&dc->addr, &in_progress);
    session *s;

    if (fd < 0) {
        char addr[SYS_ADDR_TEXT];

        sys_addr_str(&dc->addr, addr, sizeof addr);
        log_msg(LOG_WARN, "poll %s: connect to %s: %s", dc->id, addr,
                strerror(errno));
        sess_result(d, i, KIND_POLL, FEP_ERR_CONNECT);
        poll_ended(d, (unsigned)i, 0, now);
        return;
    }
    s = SLOT_OPEN(d, KIND_POLL, fd, &dc->addr, now);
    sess_poll_start(d, s, i);
    if (in_progress) {
        s->state = SLOT_CONNECTING;
        s->wait = WAIT_CONNECT;
        s->io_deadline_ms = now + d->cfg.timeout_connect_ms;
    } else {
        sess_poll_connected(d, s);
        slot_flush(d, s, now);
    }
}

/*
 * When each DCU is polled.  A DCU has a phase: its first poll comes
 * fnv1a64(ID) mod poll_every after start-up, and its cycles follow every
 * poll_every at that phase, however late a cycle started or long it took
 * (a cycle missed whole is skipped, not caught up).  So the polls of
 * thousands of DCUs are spread evenly over the period, the same way at
 * every start, instead of falling due together.  A failed cycle is retried
 * before its next phase: after poll_every/16, doubling with each failure
 * in a row up to poll_every, each delay drawn between its half and its
 * whole by a hash of the DCU and the failure count, so that DCUs that
 * failed together (a network outage) come back spread out, not in
 * lockstep.  A success ends the back-off.  The scheduler wakes only at
 * multiples of poll_every/1024 (1 ms to 1 s), so a large table is scanned
 * at most that often, however many DCUs fall due.  --once polls every DCU
 * at once.
 */
static uint64_t dcu_hash(const fepd *d, unsigned i)
{
    const char *id = d->cfg.dcus[i].id;

    return fnv1a64(id, strlen(id));
}

/* DCU i's first phase point after t. */
static int64_t poll_phase_after(const fepd *d, unsigned i, int64_t t)
{
    int64_t every = d->cfg.poll_every_ms;
    int64_t first = d->poll_epoch_ms + (poll_phases_zero ? 0 :
                    (int64_t)(dcu_hash(d, i) % (uint64_t)every));

    return t < first ? first : first + ((t - first) / every + 1) * every;
}

/* A 64-bit finalizer (MurmurHash3's fmix64): every input bit moves every
 * output bit, so that consecutive failure counts give unrelated jitters. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

/* The wait before retrying DCU i after `failures` failed cycles in a row. */
static int64_t poll_retry_delay(const fepd *d, unsigned i, unsigned failures)
{
    int64_t every = d->cfg.poll_every_ms, backoff = every / 16;
    unsigned k;

    if (backoff < 1)
        backoff = 1;
    for (k = 1; k < failures && backoff < every; k++)
        backoff *= 2;
    if (backoff > every)
        backoff = every;
    return backoff - backoff / 2 +
           (int64_t)(mix64(dcu_hash(d, i) ^ failures) %
                     (uint64_t)(backoff / 2 + 1));
}

/* t rounded up to the scheduler's next wake-up. */
static int64_t poll_tick_ceil(const fepd *d, int64_t t)
{
    int64_t tick = d->cfg.poll_every_ms / 1024, from;

    tick = tick < 1 ? 1 : tick > 1000 ? 1000 : tick;
    if (t == POLL_NEVER || t <= d->poll_epoch_ms)
        return t;
    from = t - d->poll_epoch_ms;
    return d->poll_epoch_ms + (from + tick - 1) / tick * tick;
}

/* A poll of DCU i ended: a failure brings its next poll forward. */
static void poll_ended(fepd *d, unsigned i, int ok, int64_t now)
{
    dcu_state *ds = &d->state.dcus[i];
    int64_t retry;

    if (d->once)
        return;
    if (ok) {
        ds->poll_failures = 0;
        return;
    }
    if (ds->poll_failures < UINT8_MAX)
        ds->poll_failures++;
    retry = now + poll_retry_delay(d, i, ds->poll_failures);
    if (retry >= ds->next_poll_ms)
        return;
    ds->next_poll_ms = retry;
    log_msg(LOG_DEBUG, "poll %s: failure %u in a row, retry in %lld ms",
            d->cfg.dcus[i].id, ds->poll_failures, (long long)(retry - now));
    retry = poll_tick_ceil(d, retry);
    if (retry < d->next_due_ms)
        d->next_due_ms = retry;
}

/*
 * Starts the polls that are due, round-robin, while sessions are free.  A
 * due poll that cannot start (the limit is reached, or its DCU is in a push
 * session) sets poll_waiting, and the next session to close makes the
 * scheduler look again; otherwise it sleeps until the earliest due time.
 */
static void schedule_polls(fepd *d, int64_t now)
{
    int64_t next_due = POLL_NEVER;
    unsigned step;

    if (now < d->next_due_ms || d->cfg.n_dcus == 0)
        return;
    d->poll_waiting = 0;
    for (step = 0; step < d->cfg.n_dcus; step++) {
        unsigned i = d->poll_cursor;
        dcu_state *ds = &d->state.dcus[i];

        if (!d->cfg.dcus[i].has_addr) {
            d->poll_cursor = (i + 1) % d->cfg.n_dcus;
            continue;
        }
        if (ds->next_poll_ms > now) {
            if (ds->next_poll_ms < next_due)
                next_due = ds->next_poll_ms;
        } else if (ds->session >= 0) {
            d->poll_waiting = 1;
        } else if (!session_free_for(d, KIND_POLL)) {
            d->poll_waiting = 1;
            break;                      /* resume here when a session ends */
        } else {
            ds->next_poll_ms = d->once ? POLL_NEVER
                                       : poll_phase_after(d, i, now);
            if (ds->next_poll_ms < next_due)
                next_due = ds->next_poll_ms;
            start_poll(d, (int)i, now);
        }
        d->poll_cursor = (i + 1) % d->cfg.n_dcus;
    }
    /* After a break at the limit next_due covers only part of the table;
     * the close that ends the wait rescans it all. */
    d->next_due_ms = poll_tick_ceil(d, next_due);
}

/* ------------------------------------------------------------------------
 * One slot's I/O
 * ---------------------------------------------------------------------- */

static void slot_connected(fepd *d, session *s, int64_t now)
{
    int err = sys_connect_result(s->fd);
    char addr[SYS_ADDR_TEXT];

    if (err != 0) {
        sys_addr_str(&d->cfg.dcus[s->dcu].addr, addr, sizeof addr);
        log_msg(LOG_WARN, "poll %s: connect to %s: %s", d->cfg.dcus[s->dcu].id,
                addr, strerror(err));
        slot_abort(d, s, FEP_ERR_CONNECT);
        return;
    }
    s->wait = WAIT_NONE;
    sess_poll_connected(d, s);
    slot_flush(d, s, now);
}

static void slot_read(fepd *d, session *s, int64_t now)
{
    size_t room;
    uint8_t *p = frame_rx_space(&s->rx, &room);
    ssize_t n;

    if (room == 0)
        return;                         /* frames still held: taken below */
    n = sys_read(s->fd, p, room);
    if (n == SYS_AGAIN)
        return;
    if (n < 0) {
        /* Frames that arrived before the end are still taken. */
        sess_process(d, s);
        if (s->state == SLOT_ACTIVE) {
            if (n == SYS_ERROR)
                log_msg(LOG_WARN, "read from %s: %s",
                        s->dcu >= 0 ? d->cfg.dcus[s->dcu].id : "peer",
                        strerror(errno));
            slot_abort(d, s, n == SYS_EOF ? FEP_ERR_CLOSED : FEP_ERR_IO);
        }
        return;
    }
    frame_rx_commit(&s->rx, (size_t)n);
    if (s->wait == WAIT_IDLE) {
        /* The first byte of a push: from now on it is one frame's time. */
        s->wait = WAIT_FRAME;
        s->io_deadline_ms = now + d->cfg.timeout_frame_ms;
    }
    sess_process(d, s);
}

/* Closing politely: after our last frame, FIN, then wait (bounded) for the
 * peer's, discarding what it still sends.  Closing at once could turn a
 * NACK still in flight into a reset. */
static void slot_linger_read(fepd *d, session *s)
{
    uint8_t sink[512];
    ssize_t n = sys_read(s->fd, sink, sizeof sink);

    (void)d;
    if (n < 0)
        s->close_now = 1;
}

static void slot_io(fepd *d, session *s, int readable, int writable,
                    int64_t now)
{
    switch (s->state) {
    case SLOT_CONNECTING:
        if (readable || writable)
            slot_connected(d, s, now);
        break;
    case SLOT_ACTIVE:
        if (writable)
            slot_flush(d, s, now);
        if (readable && s->kind == KIND_METRICS)
            metrics_read(d, s);
        else if (readable)
            slot_read(d, s, now);
        break;
    case SLOT_DRAINING:
        if (writable)
            slot_flush(d, s, now);
        if (readable && s->shut_wr)
            slot_linger_read(d, s);
        break;
    case SLOT_STORING:
    case SLOT_FREE:
        break;
    }
    if (s->kind == KIND_METRICS)
        metrics_stream(d, s, now);
    else if (s->state != SLOT_FREE && s->state != SLOT_CONNECTING &&
             !s->close_now)
        slot_flush(d, s, now);
}

/* ------------------------------------------------------------------------
 * Group commit, deadlines, reaping
 * ---------------------------------------------------------------------- */

/* The replay marks the pass's frames raised, then its rows: both durable
 * before any of its ACKs.  Marks that cannot be saved fail the rows too. */
static int commit_durable(fepd *d)
{
    int marks_ok = !d->state.marks_raised ||
                   state_save(&d->state, &d->cfg) == 0;

    if (!marks_ok)
        store_fail_pass(&d->store);
    return store_commit(&d->store) == 0 && marks_ok;
}

/* One commit covers every packet read in this pass; frames a DCU sent
 * behind a stored one are taken after it (and committed in turn). */
static void commit_pass(fepd *d, int64_t now)
{
    unsigned i, storing;

    do {
        int ok;

        storing = 0;
        for (i = 0; i < d->n_slots; i++)
            storing += d->slots[i].state == SLOT_STORING;
        if (storing == 0) {
            /* A failed early write whose packets' slots were all aborted
             * in this pass still needs the commit that clears it, or the
             * store would refuse every later packet. */
            if (d->store.pass_failed)
                store_commit(&d->store);
            return;
        }
        ok = commit_durable(d);
        d->stats.commit_passes++;
        for (i = 0; i < d->n_slots; i++) {
            session *s = &d->slots[i];
            if (s->state != SLOT_STORING)
                continue;
            sess_committed(d, s, ok);
            sess_process(d, s);
            if (s->state != SLOT_STORING && !s->close_now)
                slot_flush(d, s, now);
        }
    } while (storing > 0);
}

static void check_deadlines(fepd *d, session *s, int64_t now)
{
    if (s->state == SLOT_FREE || s->close_now)
        return;
    if (now >= s->session_deadline_ms) {
        /* timeout_session, or timeout_frame once fepd is stopping; where
         * the slot was opened is for the ledger's reader. */
        log_msg(LOG_WARN, "slot %u (opened at %s): its session's time is "
                "up after %lld ms (%s): closing", (unsigned)(s - d->slots),
                s->opened_at, (long long)(now - s->opened_ms),
                d->stopping ? "stopping" : "timeout_session");
        d->stats.timeouts++;
        slot_abort(d, s, FEP_ERR_TIMEOUT);
    } else if (s->wait != WAIT_NONE && now >= s->io_deadline_ms) {
        if (s->wait != WAIT_LINGER)
            d->stats.timeouts++;
        slot_abort(d, s, s->wait == WAIT_CONNECT ? FEP_ERR_CONNECT :
                         s->wait == WAIT_LINGER ? FEP_OK : FEP_ERR_TIMEOUT);
    } else if (s->write_deadline_ms != 0 && now >= s->write_deadline_ms) {
        d->stats.timeouts++;
        slot_abort(d, s, FEP_ERR_TIMEOUT);
    }
}

static void reap(fepd *d, session *s, int64_t now)
{
    if (s->state != SLOT_DRAINING)
        return;
    if (s->close_now) {
        slot_close(d, s, now);
        return;
    }
    if (s->tx_off < s->tx_len || s->shut_wr)
        return;
    if (sys_shutdown_write(s->fd) != 0) {
        slot_close(d, s, now);
        return;
    }
    s->shut_wr = 1;
    s->wait = WAIT_LINGER;
    s->io_deadline_ms = now + (d->cfg.timeout_frame_ms < LINGER_MS_MAX
                                   ? d->cfg.timeout_frame_ms : LINGER_MS_MAX);
}

/* ------------------------------------------------------------------------
 * The loop
 * ---------------------------------------------------------------------- */

static int64_t slot_deadline(const session *s)
{
    int64_t t = s->session_deadline_ms;

    if (s->wait != WAIT_NONE && s->io_deadline_ms < t)
        t = s->io_deadline_ms;
    if (s->write_deadline_ms != 0 && s->write_deadline_ms < t)
        t = s->write_deadline_ms;
    if (s->close_now || s->state == SLOT_STORING ||
        (s->state == SLOT_DRAINING && s->tx_off == s->tx_len && !s->shut_wr))
        t = 0;                          /* work for this very pass */
    return t;
}

static void add_fd(int fd, fd_set *set, int *maxfd)
{
    FD_SET(fd, set);
    if (fd > *maxfd)
        *maxfd = fd;
}

/* Fills the sets; returns the nearest deadline. */
static int64_t build_sets(fepd *d, fd_set *rfds, fd_set *wfds, int *maxfd,
                          int64_t now)
{
    int64_t nearest = d->next_due_ms;
    int accepting = !d->stopping && now >= d->accept_paused_until_ms;
    unsigned i;

    FD_ZERO(rfds);
    FD_ZERO(wfds);
    *maxfd = -1;
    if (accepting && d->listen_fd >= 0)
        add_fd(d->listen_fd, rfds, maxfd);
    if (accepting && d->metrics_fd >= 0)
        add_fd(d->metrics_fd, rfds, maxfd);
    if (!accepting && !d->stopping && d->accept_paused_until_ms < nearest)
        nearest = d->accept_paused_until_ms;
    for (i = 0; i < d->n_slots; i++) {
        const session *s = &d->slots[i];
        int64_t t;

        if (s->state == SLOT_FREE)
            continue;
        if (slot_wants_write(s))
            add_fd(s->fd, wfds, maxfd);
        if (s->state == SLOT_ACTIVE || (s->state == SLOT_DRAINING && s->shut_wr))
            add_fd(s->fd, rfds, maxfd);
        t = slot_deadline(s);
        if (t < nearest)
            nearest = t;
    }
    return nearest;
}

/* The statistics of ended sessions are saved at most every STATS_SAVE_MS
 * (and at exit), in one journal append; replay marks never wait: they are
 * saved in the pass that raised them, before its ACKs, and take pending
 * statistics with them.  A crash loses at most that much of the counts. */
static void save_statistics(fepd *d, int64_t now)
{
    if (!d->state.dirty || now < d->stats_save_due_ms)
        return;
    if (d->stats_save_due_ms == 0) {
        d->stats_save_due_ms = now + STATS_SAVE_MS;    /* the first change */
        return;
    }
    state_save(&d->state, &d->cfg);
    d->stats_save_due_ms = 0;
}

static void begin_stop(fepd *d, int64_t now)
{
    unsigned i;

    d->stopping = 1;
    sys_notify("STOPPING=1");
    log_msg(LOG_INFO, "stopping: %u sessions open, %lld ms to finish",
            d->sessions_active, (long long)d->cfg.timeout_frame_ms);
    for (i = 0; i < d->n_slots; i++) {
        session *s = &d->slots[i];
        if (s->state != SLOT_FREE &&
            s->session_deadline_ms > now + d->cfg.timeout_frame_ms)
            s->session_deadline_ms = now + d->cfg.timeout_frame_ms;
    }
}

static void log_stats(const fepd *d)
{
    sys_ledger l = sys_ledger_get();

    log_msg(LOG_INFO,
            "stats: sessions_active=%u poll_ok=%llu poll_error=%llu "
            "push_ok=%llu push_error=%llu frames_received=%llu "
            "frames_sent=%llu records_stored=%llu garbage_bytes=%llu "
            "timeouts=%llu slots_in_use=%u slots_acquired=%llu "
            "slots_released=%llu descriptors_open=%llu static_memory_bytes=%zu "
            "commit_passes=%llu state_syncs=%llu",
            d->sessions_active,
            (unsigned long long)d->stats.sessions_total[KIND_POLL][0],
            (unsigned long long)d->stats.sessions_total[KIND_POLL][1],
            (unsigned long long)d->stats.sessions_total[KIND_PUSH][0],
            (unsigned long long)d->stats.sessions_total[KIND_PUSH][1],
            (unsigned long long)d->stats.frames_received,
            (unsigned long long)d->stats.frames_sent,
            (unsigned long long)d->stats.records_stored,
            (unsigned long long)d->stats.garbage_bytes,
            (unsigned long long)d->stats.timeouts, d->slots_in_use,
            (unsigned long long)d->stats.slots_acquired,
            (unsigned long long)d->stats.slots_released,
            (unsigned long long)(l.opened - l.closed), d->static_memory_bytes,
            (unsigned long long)d->stats.commit_passes,
            (unsigned long long)d->state.syncs);
}

/* ------------------------------------------------------------------------
 * Reload (SIGHUP): the config file again, applied whole or not at all,
 * into tables that were sized at start-up, so nothing is allocated.
 * ---------------------------------------------------------------------- */

/* The DCU entries both tables have room for (with shards the config's
 * holds the whole file, the state's the shard's own DCUs). */
static unsigned dcu_table_cap(const fepd *d)
{
    return d->cfg.dcus_cap < d->state.dcus_cap ? d->cfg.dcus_cap
                                               : d->state.dcus_cap;
}

/* An entry no slot names any more: free for a DCU a reload adds. */
static int dcu_entry_reusable(const fepd *d, unsigned i)
{
    return d->cfg.dcus[i].removed && d->state.dcus[i].slot_refs == 0 &&
           d->state.dcus[i].session < 0;
}

/* An entry for a DCU the reload adds: a removed one that no slot names any
 * more, else one never used; -1 when the table is full. */
static int dcu_entry_free(fepd *d, unsigned *scan)
{
    for (; *scan < d->cfg.n_dcus; (*scan)++) {
        unsigned i = *scan;
        if (dcu_entry_reusable(d, i)) {
            (*scan)++;
            return (int)i;
        }
    }
    return d->cfg.n_dcus < dcu_table_cap(d) ? (int)d->cfg.n_dcus : -1;
}

static int key_changed(const dcu_conf *a, const dcu_conf *b)
{
    return a->has_key != b->has_key ||
           (a->has_key && memcmp(a->key, b->key, KEY_SIZE) != 0);
}

/* Walks the live and the staged DCUs in SID order (both are sorted), as a
 * merge: fn sees each pair, a live DCU alone (removed) or a staged one
 * alone (added). */
static void dcus_merge(fepd *d, void (*fn)(fepd *, int live, int staged,
                                           void *), void *arg)
{
    const fep_config *a = &d->cfg, *b = &d->staged;
    unsigned i = 0, j = 0, na = a->n_live, nb = b->n_live;

    while (i < na || j < nb) {
        int c = i == na ? 1 : j == nb ? -1
                : strncmp(a->dcus[a->by_sid[i]].id, b->dcus[b->by_sid[j]].id,
                          FRAME_ID_SIZE);   /* SID order (config.c id_cmp) */
        fn(d, c <= 0 ? (int)a->by_sid[i] : -1, c >= 0 ? (int)b->by_sid[j] : -1,
           arg);
        i += c <= 0;
        j += c >= 0;
    }
}

struct reload_count {
    state_need need;
    unsigned added, changed, removed, reusable;
};

static void reload_count(fepd *d, int live, int staged, void *arg)
{
    struct reload_count *n = arg;
    const dcu_conf *b = staged >= 0 ? &d->staged.dcus[staged] : NULL;

    if (live < 0) {
        n->added++;
        state_need_add(&d->state, b, &n->need);
    } else if (staged < 0) {
        n->removed++;
        /* Reusable once removed: no slot names it, no session holds it. */
        n->reusable += d->state.dcus[live].slot_refs == 0 &&
                       d->state.dcus[live].session < 0;
    } else if (key_changed(&d->cfg.dcus[live], b)) {
        state_need_add(&d->state, b, &n->need);
    }
}

/* The first walk: DCUs removed (their session goes on) and changed. */
static void reload_change(fepd *d, int live, int staged, void *arg)
{
    dcu_conf *a;

    (void)arg;
    if (live < 0)
        return;                         /* added: the second walk */
    a = &d->cfg.dcus[live];
    if (staged < 0) {
        a->removed = 1;
        a->has_addr = 0;
        return;
    }
    if (key_changed(a, &d->staged.dcus[staged])) {
        *a = d->staged.dcus[staged];
        state_dcu_set(&d->state, &d->cfg, (unsigned)live, 0);
    } else {
        *a = d->staged.dcus[staged];
    }
}

/* The second walk, once the removed are out of the index: DCUs added, in
 * entries no slot names, or never used. */
static void reload_add(fepd *d, int live, int staged, void *arg)
{
    unsigned *scan = arg;
    int i;

    if (live >= 0 || staged < 0)
        return;
    i = dcu_entry_free(d, scan);
    if (i < 0)
        return;                         /* counted before: cannot happen */
    if ((unsigned)i == d->cfg.n_dcus)
        d->cfg.n_dcus++;
    d->cfg.dcus[i] = d->staged.dcus[staged];
    state_dcu_set(&d->state, &d->cfg, (unsigned)i, 1);
    /* At its phase, as at start-up. */
    d->state.dcus[i].next_poll_ms = poll_phase_after(d, (unsigned)i,
                                                     sys_now_ms());
}

/* A scrape under way keeps its place while the DCU table changes. */
static unsigned scrapes_hold(const fepd *d, unsigned slot[METRICS_SLOTS],
                             metrics_place place[METRICS_SLOTS])
{
    unsigned i, n = 0;

    for (i = 0; i < d->n_slots && n < METRICS_SLOTS; i++) {
        const session *s = &d->slots[i];

        if (s->kind == KIND_METRICS && s->state != SLOT_FREE) {
            metrics_place_hold(d, s->metrics_cursor, &place[n]);
            slot[n++] = i;
        }
    }
    return n;
}

static void scrapes_resume(fepd *d, const unsigned slot[METRICS_SLOTS],
                           const metrics_place place[METRICS_SLOTS], unsigned n)
{
    unsigned k;

    for (k = 0; k < n; k++)
        d->slots[slot[k]].metrics_cursor = metrics_place_find(d, &place[k]);
}

/* 0 and the counts, or -1 with err when the tables cannot take it. */
static int reload_apply(fepd *d, struct reload_count *n, char *err,
                        size_t errlen)
{
    unsigned scan = 0, i, free_entries = dcu_table_cap(d) > d->cfg.n_dcus
                                             ? dcu_table_cap(d) - d->cfg.n_dcus
                                             : 0;
    unsigned scrape_slot[METRICS_SLOTS], scrapes;
    metrics_place scrape_place[METRICS_SLOTS];

    memset(n, 0, sizeof *n);
    dcus_merge(d, reload_count, n);
    for (i = 0; i < d->cfg.n_dcus; i++)
        free_entries += (unsigned)dcu_entry_reusable(d, i);
    free_entries += n->reusable;        /* removed by this reload */
    if (n->added > free_entries) {
        snprintf(err, errlen, "%s: %u DCUs added, room for %u more (max_dcus "
                 "%u, with removed ones still in session): restart with a "
                 "larger max_dcus", d->config_path, n->added, free_entries,
                 dcu_table_cap(d));
        return -1;
    }
    if (state_need_fits(&d->state, &n->need, err, errlen) != 0)
        return -1;
    scrapes = scrapes_hold(d, scrape_slot, scrape_place);
    dcus_merge(d, reload_change, NULL);
    config_index(&d->cfg);
    dcus_merge(d, reload_add, &scan);
    config_index(&d->cfg);
    scrapes_resume(d, scrape_slot, scrape_place, scrapes);
    if (d->staged.n_other > 0)
        memcpy(d->cfg.other_sids, d->staged.other_sids,
               (size_t)d->staged.n_other * FRAME_ID_SIZE);
    d->cfg.n_other = d->staged.n_other;
    config_reload_directives(&d->cfg, &d->staged);
    d->store.sync_packet = d->cfg.sync_packet;
    if (d->cfg.rotate_s != d->store.rotate_s &&
        store_set_rotate(&d->store, d->cfg.rotate_s, sys_wall_s()) != 0)
        d->cfg.rotate_s = d->store.rotate_s;    /* logged; the old one stays */
    d->next_due_ms = 0;                 /* the scheduler looks at once */
    return 0;
}

static void reload(fepd *d)
{
    struct reload_count n;
    char err[1024];
    int rc;

    rc = config_reload(d->config_path, &d->staged, err, sizeof err);
    if (rc == 0)
        rc = config_reload_check(&d->cfg, &d->staged, d->config_path, err,
                                 sizeof err);
    if (rc == 0)
        rc = reload_apply(d, &n, err, sizeof err);
    d->stats.reloads[rc == 0 ? 0 : 1]++;
    if (rc != 0)
        log_msg(LOG_ERROR, "reload refused, the config in use stays: %s", err);
    else
        log_msg(LOG_INFO, "reload: %u DCUs (%u added, %u removed)",
                d->cfg.n_live, n.added, n.removed);
}

static void handle_signals(fepd *d, int64_t now)
{
    if (signal_stop && !d->stopping)
        begin_stop(d, now);
    if (signal_hup) {
        signal_hup = 0;
        log_msg(LOG_INFO, "SIGHUP: reloading %s, reopening the output files",
                d->config_path);
        sys_notify_reloading();
        reload(d);
        store_reopen(&d->store);
        sys_notify("READY=1");
    }
    if (signal_usr1) {
        signal_usr1 = 0;
        log_stats(d);
    }
}

/* WATCHDOG=1 when it is due: a deadline of the loop like any other, so it
 * goes out only while the loop turns.  The next due time, or POLL_NEVER. */
static int64_t watchdog_tick(fepd *d, int64_t now)
{
    if (d->watchdog_every_ms == 0)
        return POLL_NEVER;
    if (now >= d->watchdog_due_ms) {
        sys_notify("WATCHDOG=1");
        d->watchdog_due_ms = now + d->watchdog_every_ms;
    }
    return d->watchdog_due_ms;
}

/* Runs until stopped (a signal, or --once with every cycle done). */
static void run(fepd *d)
{
    for (;;) {
        fd_set rfds, wfds;
        int64_t now = sys_now_ms(), nearest, wait_ms;
        struct timeval tv;
        int maxfd, n;
        unsigned i;

        handle_signals(d, now);
        if (d->once && !d->stopping && d->once_pending == 0)
            begin_stop(d, now);
        if (!d->stopping)
            schedule_polls(d, now);
        if (d->stopping && d->slots_in_use == 0)
            return;

        nearest = build_sets(d, &rfds, &wfds, &maxfd, now);
        if (d->state.dirty && d->stats_save_due_ms != 0 &&
            d->stats_save_due_ms < nearest)
            nearest = d->stats_save_due_ms;
        if (watchdog_tick(d, now) < nearest)
            nearest = d->watchdog_due_ms;
        wait_ms = nearest - now;
        if (wait_ms < 0)
            wait_ms = 0;
        if (wait_ms > SELECT_WAIT_MS_MAX)
            wait_ms = SELECT_WAIT_MS_MAX;
        tv.tv_sec = (time_t)(wait_ms / 1000);
        tv.tv_usec = (long)(wait_ms % 1000) * 1000;
        n = select(maxfd + 1, &rfds, &wfds, NULL, &tv);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            log_msg(LOG_ERROR, "select: %s", strerror(errno));
            abort();                    /* only a bad descriptor: a bug */
        }
        now = sys_now_ms();
        d->closed_this_pass = 0;
        if (d->listen_fd >= 0 && FD_ISSET(d->listen_fd, &rfds))
            accept_on(d, d->listen_fd, 0, now);
        if (d->metrics_fd >= 0 && FD_ISSET(d->metrics_fd, &rfds))
            accept_on(d, d->metrics_fd, 1, now);
        for (i = 0; i < d->n_slots; i++) {
            session *s = &d->slots[i];
            if (s->state == SLOT_FREE || s->fd < 0 || s->fd > maxfd)
                continue;
            slot_io(d, s, FD_ISSET(s->fd, &rfds), FD_ISSET(s->fd, &wfds), now);
        }
        commit_pass(d, now);
        store_rotate(&d->store, sys_wall_s());
        for (i = 0; i < d->n_slots; i++) {
            check_deadlines(d, &d->slots[i], now);
            reap(d, &d->slots[i], now);
        }
        save_statistics(d, now);
        if (d->closed_this_pass > 0 && d->poll_waiting)
            d->next_due_ms = now;
    }
}

/* ------------------------------------------------------------------------
 * Start-up and shutdown
 * ---------------------------------------------------------------------- */

static int open_listener(const sys_addr *a, const char *what)
{
    char text[80];
    int fd = sys_listen(a, LISTEN_BACKLOG);

    sys_addr_str(a, text, sizeof text);
    if (fd < 0)
        log_msg(LOG_ERROR, "%s %s: %s", what, text, strerror(errno));
    else
        log_msg(LOG_INFO, "%s on %s", what, text);
    return fd;
}

static int start_listeners(fepd *d)
{
    d->listen_fd = d->metrics_fd = -1;
    if (d->cfg.has_listen) {
        d->listen_fd = open_listener(&d->cfg.listen, "listening for push sessions");
        if (d->listen_fd < 0)
            return -1;
    }
    if (d->cfg.has_metrics) {
        d->metrics_fd = open_listener(&d->cfg.metrics, "metrics");
        if (d->metrics_fd < 0)
            return -1;
    }
    return 0;
}

static void stop_listeners(fepd *d)
{
    sys_close(d->listen_fd);
    sys_close(d->metrics_fd);
    d->listen_fd = d->metrics_fd = -1;
}

/* Everything allocated at start-up; *dcu_tables: the part that grows with
 * max_dcus (the config's table and its reload twin, each with its SID
 * index, and the state's tables). */
static size_t static_memory(const fepd *d, size_t *dcu_tables)
{
    size_t state_dcus, state_all = state_memory(&d->state, &state_dcus);

    *dcu_tables = 2 * (size_t)d->cfg.dcus_cap *
                      (sizeof(dcu_conf) + sizeof(unsigned)) + state_dcus;
    return sizeof *d + d->n_slots * sizeof(session) +
           (*dcu_tables - state_dcus) + state_all +
           (d->cfg.other_sids ? 2 * (size_t)d->cfg.dcus_cap * FRAME_ID_SIZE
                              : 0);
}

static void install_signals(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

/* Whether a and b name one directory (both there). */
/*
 * One fepd a data_dir and a state_dir: two on one state_dir would send
 * under the same GCM IVs and miss each other's replay marks; two on one
 * data_dir would write into the same files and hand off each other's
 * segments.  Each directory's fepd.lock is locked before anything in it
 * is read or written, and held until exit; state_dir, when a first start
 * has yet to make it, right after state_open made it.  check_only (for
 * --check) asks, creating and keeping nothing.  0, or -1 (logged).
 */
static int dirs_lock(fepd *d, int check_only)
{
    const char *dirs[2] = { d->cfg.data_dir, d->cfg.state_dir };
    unsigned i;

    for (i = 0; i < 2; i++) {
        long holder;
        int fd;

        if (d->lock_fds[i] >= 0 || (i == 1 && sys_same_file(dirs[0], dirs[1])))
            continue;
        if (!check_only && i == 0 && sys_mkdir(dirs[0]) != 0) {
            log_msg(LOG_ERROR, "%s: %s", dirs[0], strerror(errno));
            return -1;
        }
        if (!sys_is_dir(dirs[i]))
            continue;                   /* nothing to share (or --check says why) */
        fd = sys_dir_lock(dirs[i], check_only, &holder);
        if (fd == SYS_LOCKED) {
            log_msg(LOG_ERROR, "%s/fepd.lock: locked by another fepd (pid "
                    "%ld): one fepd a directory, or two would write the same "
                    "files and reuse GCM IVs", dirs[i], holder);
            return -1;
        }
        if (fd < 0) {
            log_msg(LOG_ERROR, "%s/fepd.lock: %s", dirs[i], strerror(errno));
            return -1;
        }
        if (!check_only)
            d->lock_fds[i] = fd;
    }
    return 0;
}

static void dirs_unlock(fepd *d)
{
    unsigned i;

    for (i = 0; i < 2; i++) {
        sys_close(d->lock_fds[i]);
        d->lock_fds[i] = -1;
    }
}

/* A descriptor for every slot and FD_RESERVED for the rest (stdio, the
 * listeners, the files, the locks), within select()'s FD_SETSIZE.  The soft
 * limit is raised to that; when the hard limit does not allow it, start-up
 * fails here, not at some later accept or connect.  0, or -1 logged. */
static int fd_limit_check(const fepd *d)
{
    unsigned long slots = d->cfg.max_sessions + REJECT_SLOTS + METRICS_SLOTS;
    unsigned long need = slots + FD_RESERVED < FD_SETSIZE ? slots + FD_RESERVED
                                                          : FD_SETSIZE;
    unsigned long have = sys_fd_limit(need);

    if (have >= need)
        return 0;
    log_msg(LOG_ERROR, "max_sessions %u needs %lu descriptors and the limit "
            "(RLIMIT_NOFILE) allows %lu: raise it (ulimit -n, LimitNOFILE=) "
            "or lower max_sessions", d->cfg.max_sessions, need, have);
    return -1;
}

/* Everything allocated at start-up, in one function; 0, or an exit code. */
static int start(fepd *d)
{
    store_config sc = { d->cfg.data_dir, d->cfg.fep_id, d->cfg.sync_packet,
                        d->cfg.rotate_s };
    char err[1024];
    state_start how;
    size_t dcu_tables;
    unsigned i;

    /* finish() closes the listeners and the store whatever step failed,
     * and a descriptor left at 0 would be stdin: the listeners and the
     * store's files are marked closed before anything can fail. */
    d->listen_fd = d->metrics_fd = -1;
    store_init(&d->store);              /* its files closed, for finish() */
    if (fd_limit_check(d) != 0 || dirs_lock(d, 0) != 0)
        return 3;
    if (store_open(&d->store, &sc, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "%s", err);
        return 3;
    }
    if (config_alloc_like(&d->staged, &d->cfg) != 0) {
        log_msg(LOG_ERROR, "cannot allocate the reload table of %u DCUs",
                d->cfg.dcus_cap);
        return 3;
    }
    d->n_slots = d->cfg.max_sessions + REJECT_SLOTS + METRICS_SLOTS;
    d->slots = calloc(d->n_slots, sizeof *d->slots);
    if (!d->slots) {
        log_msg(LOG_ERROR, "cannot allocate %u slots", d->n_slots);
        return 3;
    }
    for (i = 0; i < d->n_slots; i++)
        d->slots[i].fd = -1;
    memset(&how, 0, sizeof how);        /* read_only: 0, fepd writes */
    how.fresh = d->fresh_state;
    how.data_has_rows = d->store.had_rows;
    if (state_open(&d->state, &d->cfg, &how, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "%s", err);
        return 3;
    }
    if (dirs_lock(d, 0) != 0)           /* state_dir, made by a first start */
        return 3;
    if (start_listeners(d) != 0)
        return 3;
    d->poll_epoch_ms = sys_now_ms();
    for (i = 0; i < d->cfg.n_dcus; i++) {
        d->state.dcus[i].next_qsn = 1;
        d->state.dcus[i].next_poll_ms =
            d->once ? 0 : poll_phase_after(d, i, d->poll_epoch_ms - 1);
        if (d->cfg.dcus[i].has_addr)
            d->once_pending++;
    }
    if (d->cfg.shards > 1)
        log_msg(LOG_INFO, "shard %u/%u: %u of the file's %u DCUs",
                d->cfg.shard, d->cfg.shards, d->cfg.n_dcus,
                d->cfg.n_dcus + d->cfg.n_other);
    d->static_memory_bytes = static_memory(d, &dcu_tables);
    log_msg(LOG_INFO, "fepd " FEP_VERSION " %s: %u DCUs, %u slots (%zu bytes "
            "each), room for %u DCUs (%zu bytes each), static memory %zu "
            "bytes", d->cfg.fep_id, d->cfg.n_dcus, d->n_slots,
            sizeof(session), d->cfg.dcus_cap,
            (dcu_tables + d->cfg.dcus_cap - 1) / d->cfg.dcus_cap,
            d->static_memory_bytes);
    return 0;
}

/* ------------------------------------------------------------------------
 * Under a service manager: the pidfile and the notifications
 * ---------------------------------------------------------------------- */

/* Before anything is touched: 0 when the pidfile (if any) is free or stale
 * and its directory takes a new one; else logged, 3.  Never removes it. */
static int pidfile_check(const fepd *d)
{
    const char *path = d->cfg.pidfile;
    const char *slash = strrchr(path, '/');
    char dir[PATH_SIZE] = ".";
    int exists;
    long pid;

    if (path[0] == '\0')
        return 0;
    pid = sys_pidfile_read(path, &exists);
    if (pid < 0) {
        log_msg(LOG_ERROR, "pidfile %s: %s", path, strerror(errno));
        return 3;
    }
    if (pid > 0 && sys_pid_is_peer(pid)) {
        log_msg(LOG_ERROR, "pidfile %s: another fepd (pid %ld) runs with this "
                "pidfile", path, pid);
        return 3;
    }
    if (pid > 0)
        log_msg(LOG_WARN, "pidfile %s: stale (no fepd runs as pid %ld): "
                "replaced once fepd serves", path, pid);
    else if (exists)
        log_msg(LOG_WARN, "pidfile %s: stale (holds no pid): replaced once "
                "fepd serves", path);
    if (slash) {
        /* Its directory; "/fepd.pid" is in the root. */
        size_t n = slash == path ? 1 : (size_t)(slash - path);
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    if (sys_dir_writable(dir, 0) != 0) {
        log_msg(LOG_ERROR, "pidfile %s: cannot be written: %s", path,
                strerror(errno));
        return 3;
    }
    return 0;
}

/* Start-up has succeeded: the pidfile, then READY=1, as one moment. */
static int daemon_ready(fepd *d)
{
    if (d->cfg.pidfile[0] && sys_pidfile_write(d->cfg.pidfile) != 0) {
        log_msg(LOG_ERROR, "pidfile %s: %s", d->cfg.pidfile, strerror(errno));
        return 3;
    }
    sys_notify_open();
    sys_notify("READY=1");
    d->watchdog_every_ms = sys_notify_watchdog_ms();
    d->watchdog_due_ms = sys_now_ms() + d->watchdog_every_ms;
    return 0;
}

static void daemon_exit(fepd *d)
{
    if (d->cfg.pidfile[0] && sys_pidfile_remove(d->cfg.pidfile) != 0)
        log_msg(LOG_WARN, "pidfile %s: %s", d->cfg.pidfile, strerror(errno));
    sys_notify_close();
}

/* ------------------------------------------------------------------------
 * --check: what start() would find, with its messages and exit codes,
 * without serving and without changing anything (no directory or file is
 * made, no state written; the ports are bound and closed at once).
 * ---------------------------------------------------------------------- */

static int check_dir(const char *dir)
{
    if (sys_dir_writable(dir, 1) == 0)
        return 0;
    log_msg(LOG_ERROR, "%s: %s", dir, strerror(errno));
    return -1;
}

/* The listeners as start-up binds them, both at once (one may take the
 * other's port), then closed. */
static int check_listeners(fepd *d)
{
    const sys_addr *addrs[2] = { &d->cfg.listen, &d->cfg.metrics };
    const int has[2] = { d->cfg.has_listen, d->cfg.has_metrics };
    static const char *const what[2] = { "listening for push sessions",
                                         "metrics" };
    int fds[2] = { -1, -1 }, rc = 0;
    unsigned i;

    for (i = 0; i < 2 && rc == 0; i++) {
        char text[SYS_ADDR_TEXT];

        if (!has[i])
            continue;
        fds[i] = sys_listen(addrs[i], LISTEN_BACKLOG);
        if (fds[i] >= 0)
            continue;
        sys_addr_str(addrs[i], text, sizeof text);
        log_msg(LOG_ERROR, "%s %s: %s", what[i], text, strerror(errno));
        rc = -1;
    }
    sys_close(fds[0]);
    sys_close(fds[1]);
    return rc;
}

/* The state as start() would load it: 0, or -1 logged.  Sets the static
 * memory start() would take. */
static int check_state(fepd *d, int data_has_rows)
{
    size_t dcu_tables;
    char err[1024];
    state_start how;

    memset(&how, 0, sizeof how);
    how.fresh = d->fresh_state;
    how.data_has_rows = data_has_rows;
    how.read_only = 1;
    if (state_open(&d->state, &d->cfg, &how, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "%s", err);
        return -1;
    }
    d->n_slots = d->cfg.max_sessions + REJECT_SLOTS + METRICS_SLOTS;
    d->static_memory_bytes = static_memory(d, &dcu_tables);
    state_release(&d->state);
    return 0;
}

/* 0 with "FILE: ok (...)" on stdout, or 3. */
static int check_start(fepd *d, const char *config_path)
{
    char err[1024];
    int has_rows = 0;

    if (fd_limit_check(d) != 0 || pidfile_check(d) != 0 || dirs_lock(d, 1) != 0)
        return 3;
    if (check_dir(d->cfg.data_dir) != 0)
        return 3;
    if (store_check(d->cfg.data_dir, &has_rows, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "%s", err);
        return 3;
    }
    if (check_dir(d->cfg.state_dir) != 0 || check_state(d, has_rows) != 0 ||
        check_listeners(d) != 0)
        return 3;
    if (d->cfg.shards > 1)
        printf("%s: ok (%u DCUs, shard %u/%u: %u DCUs, static memory %zu "
               "bytes)\n", config_path, d->cfg.n_dcus + d->cfg.n_other,
               d->cfg.shard, d->cfg.shards, d->cfg.n_dcus,
               d->static_memory_bytes);
    else
        printf("%s: ok (%u DCUs, static memory %zu bytes)\n", config_path,
               d->cfg.n_dcus, d->static_memory_bytes);
    return 0;
}

static void finish(fepd *d)
{
    sys_ledger l;

    stop_listeners(d);
    store_close(&d->store);
    if (d->state.dcus && state_save(&d->state, &d->cfg) != 0)
        log_msg(LOG_ERROR, "state not saved; see above");
    if (d->state.dcus)
        log_stats(d);                   /* the run's figures, for the record */
    dirs_unlock(d);                     /* before the ledger is read */
    daemon_exit(d);
    l = sys_ledger_get();
    log_msg(l.opened == l.closed && d->stats.slots_acquired ==
                                        d->stats.slots_released ? LOG_INFO : LOG_ERROR,
            "ledger: slots acquired=%llu released=%llu, descriptors "
            "opened=%llu closed=%llu",
            (unsigned long long)d->stats.slots_acquired,
            (unsigned long long)d->stats.slots_released,
            (unsigned long long)l.opened, (unsigned long long)l.closed);
}

/* --once: 0 when every DCU's cycle succeeded, else 1 with their names. */
static int once_summary(const fepd *d)
{
    unsigned i, ok = 0, failed = 0;

    for (i = 0; i < d->cfg.n_dcus; i++) {
        const dcu_state *ds = &d->state.dcus[i];
        if (!d->cfg.dcus[i].has_addr)
            continue;
        if (ds->cycle_result == 1) {
            ok++;
            continue;
        }
        failed++;
        log_msg(LOG_ERROR, "--once: %s failed: %s", d->cfg.dcus[i].id,
                ds->cycle_result == 0 ? "not polled (stopped)"
                                      : fep_strerror(ds->last_error));
    }
    log_msg(failed ? LOG_ERROR : LOG_INFO, "--once: %u DCUs polled, %u ok, "
            "%u failed", ok + failed, ok, failed);
    return failed ? 1 : 0;
}

static void usage(FILE *out)
{
    fputs("usage: fepd -c FILE [--once | --check] [--shard I/N] [--fresh-state] "
          "[-v | -q]\n"
          "       fepd -V | --version\n"
          "  -c FILE    the config file (see fepd.conf(5))\n"
          "  --once     one poll cycle of every DCU that has an address, then exit\n"
          "             (exit 1 when a cycle failed)\n"
          "  --check    check what start-up checks (the file, data_dir,\n"
          "             state_dir, the state, the ports, the pidfile), then exit\n"
          "  --shard I/N  run shard I (0-based) of N (1..4096): only the DCUs\n"
          "             the shard owns; {shard} in the file is I, ports + I\n"
          "  --fresh-state  start on a new state although the old one is\n"
          "             lost or damaged: every keyed DCU needs a new key first\n"
          "  -v         more logging: every frame in hex\n"
          "  -q         errors only\n"
          "  -h, --help this help\n"
          "  -V, --version  print the version and exit\n"
          "exit: 0 ok, 1 --once with a failed cycle, 2 usage or config, "
          "3 start-up failure\n"
          "signals: TERM/INT stop, HUP reload the config and reopen the output\n"
          "files, USR1 statistics\n",
          out);
}

/* "I/N": decimal, 0 <= I < N <= SHARDS_MAX.  0, or -1. */
static int parse_shard(const char *text, unsigned *shard, unsigned *shards)
{
    unsigned long v[2] = { 0, 0 };
    unsigned k = 0;
    size_t digits = 0;

    for (; *text; text++) {
        if (*text == '/' && k == 0 && digits > 0) {
            k = 1;
            digits = 0;
        } else if (*text >= '0' && *text <= '9' && digits < 5) {
            v[k] = v[k] * 10 + (unsigned long)(*text - '0');
            digits++;
        } else {
            return -1;
        }
    }
    if (k != 1 || digits == 0 || v[1] == 0 || v[1] > SHARDS_MAX || v[0] >= v[1])
        return -1;
    *shard = (unsigned)v[0];
    *shards = (unsigned)v[1];
    return 0;
}

int main(int argc, char **argv)
{
    static fepd daemon;                 /* large (CSV buffers): not on the stack */
    fepd *d = &daemon;
    const char *config_path = NULL, *shard_text = NULL;
    int check = 0, level = LOG_INFO, i, rc;
    unsigned shard = 0, shards = 1;
    char err[512];

    if (sys_std_fds() != 0)
        return 3;                       /* no /dev/null: nowhere to log it */
    d->lock_fds[0] = d->lock_fds[1] = -1;
    log_set_name("fepd");
#ifdef FEP_FAULT
    poll_phases_zero = getenv("FEP_TEST_POLL_AT_START") != NULL;
#endif
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            config_path = argv[++i];
        } else if (strcmp(argv[i], "--once") == 0) {
            d->once = 1;
        } else if (strcmp(argv[i], "--check") == 0) {
            check = 1;
        } else if (strcmp(argv[i], "--shard") == 0 && i + 1 < argc) {
            shard_text = argv[++i];
            if (parse_shard(shard_text, &shard, &shards) != 0) {
                fprintf(stderr, "fepd: --shard '%s': expected I/N with N in "
                        "1..%d and I in 0..N-1\n", shard_text, SHARDS_MAX);
                usage(stderr);
                return 2;
            }
        } else if (strcmp(argv[i], "--fresh-state") == 0) {
            d->fresh_state = 1;
        } else if (strcmp(argv[i], "-v") == 0) {
            level++;
        } else if (strcmp(argv[i], "-q") == 0) {
            level = LOG_ERROR;
        } else if (strcmp(argv[i], "-V") == 0 ||
                   strcmp(argv[i], "--version") == 0) {
            printf("fepd %s\n", FEP_VERSION);
            return 0;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "fepd: unknown or incomplete option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (!config_path || (check && d->once)) {
        fprintf(stderr, "fepd: %s\n", config_path ? "--check and --once exclude "
                "each other" : "-c FILE is required");
        usage(stderr);
        return 2;
    }
    log_set_level(level > LOG_DEBUG ? LOG_DEBUG : level);
    d->config_path = config_path;
    if (config_load_shard(config_path, shard, shards, &d->cfg, err,
                          sizeof err) != 0) {
        fprintf(stderr, "fepd: %s\n", err);
        return 2;
    }
    if (check) {
        rc = check_start(d, config_path);
        config_release(&d->cfg);
        return rc;
    }
    if (pidfile_check(d) != 0) {
        config_release(&d->cfg);
        return 3;
    }
    install_signals();
    rc = start(d);
    if (rc == 0)
        rc = daemon_ready(d);
    if (rc == 0) {
        alloc_seal(1);
        run(d);
        alloc_seal(0);
        alloc_report();
        rc = d->once ? once_summary(d) : 0;
    }
    finish(d);
    state_release(&d->state);
    config_release(&d->cfg);
    config_release(&d->staged);
    free(d->slots);
    return rc;
}
