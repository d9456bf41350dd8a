/*
 * dcusim.c -- the DCU simulator (DESIGN.md section 1): one process plays
 * many DCUs of PROTOCOL.md, in both roles.  It answers polls on one or more
 * listening addresses (the DCU is chosen by each request's DID) and pushes
 * on its own to a FEP's listening address, and it injects faults on demand,
 * so that fepd's tests, its benchmark and the demo have a peer to talk to.
 *
 * Owns: everything in `sim` below -- the DCU table (raw keys, IC counters,
 * the acknowledged prefix of each DCU's records), the connection table (one
 * slot per descriptor select() can watch, each with its frame_rx, its
 * transmit buffer and the expanded GCM key of the DCU it speaks for), the
 * listening sockets, the output files and their fixed buffers, the counters
 * of the report line -- and the two signal flags.  All of it is taken in
 * sim_init and given back in sim_release; nothing is allocated or freed in
 * between, and no stdio stream is opened.
 * Must not touch: fepd's files or state (it speaks to fepd only on the
 * wire), descriptors it did not open through sys.c, the CSV files of other
 * runs (it appends; it never truncates them).
 *
 * How it works.  One thread runs one select() loop over non-blocking
 * sockets.  A connection slot moves
 *
 *   FREE -> IDLE (poll: waiting for a request)  | CONNECTING (push)
 *        -> SEND -> WAIT_ACK -> SEND -> ... -> IDLE (poll) | CLOSING (push)
 *        -> HOLD (faults silent and noread: held until the FEP closes it)
 *        -> CLOSING -> FREE
 *
 * and is taken by conn_open and given back by conn_release only.  A slot
 * that must go is marked CLOSING and released at the end of the loop pass,
 * so that no handler releases what another still looks at.  Every wait is
 * the slot's one deadline; while a frame in SEND is held back (--latency: a
 * WAN between the DCUs and the FEP) or a fault dribbles it, the slot also
 * has the time before which it writes nothing; select() sleeps until the
 * nearest of them.
 *
 * Nothing that goes out is stored: records, meter items and status are a
 * pure function of (DCU, index, clock), so a packet is encoded again, with a
 * new MSN and IC, each time it is (re)sent, and a DCU costs ~50 bytes.
 * Its key is expanded into the slot when a session starts.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fep.h"

/* ------------------------------------------------------------------------
 * Limits, each with its cost
 * ---------------------------------------------------------------------- */

#define SIM_LISTEN_MAX 8                /* --listen addresses, one fd each */
#define SIM_FAULTS_MAX 16               /* --fault options, ~270 bytes each */
#define SIM_RANGES_MAX 32               /* "3,7-9" items of one fault target */
#define SIM_GARBAGE_MAX 8192            /* garbage:N; can pass GARBAGE_MAX */
#define SIM_TX_SIZE (SIM_GARBAGE_MAX + FRAME_SIZE_MAX) /* 10 KiB a slot */
#define SIM_FD_RESERVED 32              /* stdio, listeners, output files */
#define SIM_SLOTS_MAX (FD_SETSIZE - SIM_FD_RESERVED)
#define SIM_OUT_BUF 65536               /* each of the three output files */
#define SIM_DCU_NUM_MAX 99999u          /* ids are DCU%05u */
#define SIM_METERS_MAX 65535u           /* meter_count is a u16 */
#define SIM_RECORDS_MAX 10000000u
#define SIM_FSN_MAX 65535u              /* packets of a response (FSN u16) */
#define SIM_PUSH_CMDS_MAX 16
#define SIM_CRC_RETRIES 3               /* PROTOCOL.md section 5, DCU rules */
#define SIM_HOLD_TIMEOUTS 30            /* silent/noread hold, x --timeout */
#define SIM_ACCEPT_BATCH 64             /* accepts per listener per pass */
#define SIM_ACCEPT_PAUSE_MS 100         /* after EMFILE: let slots free up */
#define SIM_FLUSH_MS 200                /* output files lag at most this much */
#define SIM_TICK_MS 1000                /* longest select() sleep */
#define SIM_FW_VERSION 0x0102
#define SIM_INTERVAL_S 900
#define SIM_NOREAD_RCVBUF 256           /* bytes: the FEP's writes stall */
#define SIM_LATENCY_MAX_MS 60000u       /* --latency MS and JITTER, each */

FEP_STATIC_ASSERT(SIM_LISTEN_MAX + 3 + 3 + 8 <= SIM_FD_RESERVED,
                  reserved_fds_cover_listeners_and_files);
FEP_STATIC_ASSERT(SIM_SLOTS_MAX > 0, slots_fit_select);
FEP_STATIC_ASSERT(SIM_TX_SIZE >= SIM_GARBAGE_MAX + FRAME_SIZE_MAX,
                  tx_holds_garbage_and_a_frame);
FEP_STATIC_ASSERT(LP_RECORDS_MAX_PLAIN <= ITEM_COUNT_MAX &&
                  METER_ITEMS_MAX_PLAIN <= ITEM_COUNT_MAX, counts_fit_u8);

/* ------------------------------------------------------------------------
 * Faults
 * ---------------------------------------------------------------------- */

enum fault_mode {
    FM_DRIBBLE, FM_GARBAGE, FM_CRC, FM_CRC_ALWAYS, FM_BADTAG, FM_REPLAY,
    FM_SKIP_FSN, FM_DUP_FSN, FM_OVERSIZE, FM_SILENT, FM_NACK, FM_PLAINTEXT,
    FM_NOREAD, FM_CUT, FM_SLOWLORIS, FM_COUNT
};

static const struct fault_info {
    const char *name;
    int takes_arg;
    uint32_t arg_default, arg_min, arg_max;
    const char *help;
} fault_info[FM_COUNT] = {
    { "dribble", 1, 5, 1, 60000,
      "write every frame one byte at a time, MS ms apart\n"
      "                        (default 5)" },
    { "garbage", 1, 100, 1, SIM_GARBAGE_MAX,
      "N bytes of garbage (never 0x7E) before the first frame\n"
      "                        of a session (default 100, at most 8192)" },
    { "crc", 1, 0, 0, SIM_FSN_MAX - 1,
      "packet FSN I (default 0) goes out once with a corrupt\n"
      "                        CRC; the retransmission after the NACK CRC is good" },
    { "crc-always", 1, 0, 0, SIM_FSN_MAX - 1,
      "packet I (default 0) always has a corrupt CRC, so the\n"
      "                        FEP's third-strike rule closes the connection" },
    { "badtag", 1, 0, 0, SIM_FSN_MAX - 1,
      "packet I (default 0) has one tag bit flipped, CRC\n"
      "                        right (keyed DCUs)" },
    { "replay", 1, 1, 0, SIM_FSN_MAX - 1,
      "packet I (default 1) is protected with the IC of the\n"
      "                        frame sent before it (a reused IC; keyed DCUs)" },
    { "skip-fsn", 1, 0, 0, SIM_FSN_MAX - 1,
      "packet I (default 0) is sent with FSN I+1" },
    { "dup-fsn", 1, 0, 0, SIM_FSN_MAX - 1,
      "after packet I (default 0) is ACKed it is sent again\n"
      "                        (same QSN, FSN and records, new MSN and IC); that ACK\n"
      "                        is awaited too" },
    { "oversize", 0, 0, 0, 0,
      "the first packet's header says LEN 2019 (HCS right)" },
    { "silent", 0, 0, 0, 0,
      "never answers: reads and discards, holds the\n"
      "                        connection until the FEP closes it" },
    { "nack", 1, FEP_ERR_COMMAND, 0, 255,
      "answers every request with NACK CODE (default 7), then\n"
      "                        waits for the next request (polls only)" },
    { "plaintext", 0, 0, 0, 0,
      "a keyed DCU sends its frames unprotected" },
    { "noread", 0, 0, 0, 0,
      "reads nothing once the connection is open (a poll:\n"
      "                        once its first request named the DCU), sends nothing,\n"
      "                        small SO_RCVBUF; held until the FEP closes it" },
    { "cut", 1, 15, 1, FRAME_SIZE_MAX,
      "closes after writing N bytes (default 15) of the first\n"
      "                        packet" },
    { "slowloris", 0, 0, 0, 0,
      "one byte per second (dribble:1000)" },
};

enum target_kind { TARGET_ALL, TARGET_DCUS, TARGET_PCT };

struct fault_spec {
    enum fault_mode mode;
    uint32_t arg;
    enum target_kind target;
    uint32_t pct;                       /* TARGET_PCT: 0..100 */
    unsigned n_ranges;                  /* TARGET_DCUS */
    struct { uint32_t lo, hi; } ranges[SIM_RANGES_MAX];
};

/* The faults in force on one connection, chosen when its DCU is known. */
struct fault_set {
    uint32_t on;                        /* bit per fault_mode */
    uint32_t arg[FM_COUNT];
};

/* ------------------------------------------------------------------------
 * Options
 * ---------------------------------------------------------------------- */

struct sim_opts {
    unsigned n_listen;
    const char *listen_text[SIM_LISTEN_MAX];
    sys_addr listen_addr[SIM_LISTEN_MAX];
    const char *push_text;              /* NULL: no pushing */
    sys_addr push_addr;
    uint32_t dcus, first;
    char fep_id[FRAME_ID_SIZE + 1];
    uint8_t fep_sid[FRAME_ID_SIZE];
    int has_key, same_key, keyed_given;
    uint8_t key[KEY_SIZE];
    uint32_t keyed_pct;
    uint32_t records, per_packet;       /* per_packet 0: as many as fit */
    uint32_t meters, start_ts;
    char push_cmds[SIM_PUSH_CMDS_MAX + 1];
    uint32_t push_concurrency;          /* 0: as many as there are slots */
    double push_rate;                   /* sessions per second; 0: no limit */
    unsigned n_faults;
    struct fault_spec faults[SIM_FAULTS_MAX];
    uint64_t seed;
    uint32_t latency_ms, jitter_ms;     /* a DCU's frame waits MS + 0..JITTER */
    int64_t timeout_ms;
    uint32_t ic_start;
    const char *generated_csv, *acked_csv, *config_out;
    int64_t duration_ms;                /* 0: until a signal */
    int log_level;
};

/* ------------------------------------------------------------------------
 * The tables
 * ---------------------------------------------------------------------- */

/* One key's counters: what this side sends, what it accepted from the FEP. */
struct ic_counter {
    uint32_t next;                      /* next IC to send; 0 = exhausted */
    uint32_t fep_max;                   /* highest IC accepted from the FEP */
};

struct sim_dcu {
    uint8_t key[KEY_SIZE];              /* raw; expanded into a slot on use */
    struct ic_counter ic;               /* unused with --same-key */
    uint32_t acked;                     /* records [0, acked) acknowledged */
    uint32_t generated;                 /* records [0, generated) made ready */
    int32_t slot;                       /* connection holding the DCU, or -1 */
    uint16_t push_qsn;                  /* QSN of its next push */
    uint8_t keyed;
};

/* One response being delivered, stop-and-wait. */
struct xchg {
    uint8_t cmd;                        /* K S M N; 0 = none */
    uint8_t advances;                   /* K of new records: ACKs move acked */
    uint8_t crc_nacks;                  /* NACK CRCs for the packet in flight */
    uint8_t crc_spoiled;                /* fault crc: its bad copy went out */
    uint8_t dup_sent;                   /* dup-fsn: the second copy went */
    uint16_t qsn;
    uint16_t fsn;                       /* the packet in flight */
    uint16_t wire_fsn;                  /* its FSN on the wire (skip-fsn) */
    uint16_t n_packets;
    uint16_t per;                       /* items per packet */
    uint32_t lo, hi;                    /* items: records (K), meters (M N) */
};

enum conn_state {
    CONN_FREE,
    CONN_CONNECTING,                    /* push: connect under way */
    CONN_IDLE,                          /* poll: waiting for the next request */
    CONN_SEND,                          /* tx being written, then after_send */
    CONN_WAIT_ACK,                      /* a packet out, waiting for its ACK */
    CONN_HOLD,                          /* faults silent, noread */
    CONN_CLOSING                        /* released at the end of the pass */
};

enum conn_kind { CONN_POLL, CONN_PUSH };

/*
 * A connection slot.  fd is opened by accept_ready or push_start and closed
 * by conn_release only; rx and tx are reset by conn_open; gk is written by
 * conn_identify (the key of `dcu`, when keyed) and only read elsewhere.
 * Everything before `rx` is cleared by conn_open.
 */
struct conn {
    enum conn_state state;
    enum conn_state after_send;         /* IDLE, WAIT_ACK or CLOSING */
    enum conn_kind kind;
    int fd;
    int64_t deadline_ms;                /* end of the current wait */
    int64_t not_before_ms;              /* SEND: no write before (latency,
                                           then each dribbled byte) */
    int32_t dcu;                        /* DCU spoken for; -1 none yet */
    int32_t key_dcu;                    /* DCU whose key is in gk; -1 none */
    uint8_t bound;                      /* holds dcu: dcus[dcu].slot is this */
    uint8_t sent_any;                   /* a frame went out (garbage: before) */
    uint8_t sent_packet;                /* a packet went out (oversize, cut) */
    uint8_t crc_strikes;                /* consecutive bad CRCs from the FEP */
    uint8_t cut;                        /* fault cut: close at tx_end */
    uint8_t peek_blind;                 /* noread: queued data hides a close */
    uint8_t push_cmd;                   /* push: K S M N */
    uint8_t peer_sid[FRAME_ID_SIZE];    /* SID of a NACK to an unknown DID */
    uint16_t msn;                       /* frames sent on this connection */
    uint32_t last_ic;                   /* IC of the last protected frame */
    struct fault_set fx;
    struct xchg x;
    size_t tx_len, tx_off, tx_end;      /* tx[tx_off, tx_end) still to write */
    frame_rx rx;
    gcm_key gk;
    uint8_t tx[SIM_TX_SIZE];
};

struct out_file {
    int fd;                             /* -1: not in use */
    int failed;                         /* a write failed; logged once */
    const char *path;
    size_t len;
    char buf[SIM_OUT_BUF];
};

struct counters {
    uint64_t sessions, polls, pushes, packets_sent, retransmits;
    uint64_t acks_received, nacks_received;
    uint64_t nack[FEP_NACK_CODE_MAX + 1];   /* by code; [0] unused */
    uint64_t records_generated, records_acked, fep_ic_reused, bad_frames;
    uint64_t timeouts;
};

static struct sim {
    struct sim_opts o;
    struct sim_dcu *dcus;               /* o.dcus entries */
    struct conn *conns;                 /* n_conns slots */
    int32_t *free_slots;                /* stack of free slot indices */
    unsigned n_conns, n_free;
    int listen_fd[SIM_LISTEN_MAX];
    struct ic_counter shared_ic;        /* --same-key: one key, one counter */
    struct out_file generated, acked, config;
    struct counters c;
    uint64_t prng;
    int64_t now_ms, start_ms, start_wall, end_ms, next_flush_ms;
    int64_t accept_pause_until_ms;
    int64_t next_push_us;               /* --push-rate: next start not before */
    unsigned push_active, push_round;
    uint32_t push_cursor;
    int push_connected_once;
    int exit_code;
} sim;

static volatile sig_atomic_t stop_flag, report_flag;

/* ------------------------------------------------------------------------
 * Small helpers
 * ---------------------------------------------------------------------- */

static uint64_t prng_next(void)
{
    /* xorshift64*: enough for choosing sessions, reproducible by --seed. */
    uint64_t x = sim.prng;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    sim.prng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static uint32_t min_u32(uint32_t a, uint32_t b)
{
    return a < b ? a : b;
}

static uint32_t dcu_num(int32_t idx)
{
    return sim.o.first + (uint32_t)idx;
}

static void dcu_sid(int32_t idx, uint8_t sid[FRAME_ID_SIZE])
{
    char text[16];

    snprintf(text, sizeof text, "DCU%05u", (unsigned)dcu_num(idx));
    frame_id_set(sid, text);
}

/* "DCU" and five digits naming a DCU played here: its index; else -1. */
static int32_t dcu_find(const uint8_t did[FRAME_ID_SIZE])
{
    uint32_t n = 0;
    int i;

    if (memcmp(did, "DCU", 3) != 0)
        return -1;
    for (i = 3; i < FRAME_ID_SIZE; i++) {
        if (did[i] < '0' || did[i] > '9')
            return -1;
        n = n * 10 + (uint32_t)(did[i] - '0');
    }
    if (n < sim.o.first || n - sim.o.first >= sim.o.dcus)
        return -1;
    return (int32_t)(n - sim.o.first);
}

static struct ic_counter *ic_of(int32_t idx)
{
    return sim.o.same_key ? &sim.shared_ic : &sim.dcus[idx].ic;
}

static void meter_id_make(uint32_t n, uint32_t m, uint8_t id[METER_ID_SIZE])
{
    char text[32];

    snprintf(text, sizeof text, "M%05u%06u", (unsigned)n, (unsigned)m);
    memcpy(id, text, METER_ID_SIZE);
}

/* Record j of DCU idx: the data model in the README (dcusim, "Data model"). */
static void lp_make(int32_t idx, uint32_t j, lp_record *r)
{
    uint64_t n = dcu_num(idx), m = j % sim.o.meters, i = j / sim.o.meters;

    meter_id_make((uint32_t)n, (uint32_t)m, r->meter_id);
    r->ts = (uint32_t)(sim.o.start_ts + i * SIM_INTERVAL_S);
    r->import_wh = (uint32_t)(100 + (31 * n + 17 * m + 7 * i) % 1000);
    r->export_wh = (uint32_t)((n + m + i) % 50);
    r->status = 0;
}

/* ------------------------------------------------------------------------
 * Output files: appended through a fixed buffer, written with
 * sys_write_all when the buffer fills, every SIM_FLUSH_MS, and at exit.
 * ---------------------------------------------------------------------- */

static int out_open(struct out_file *f, const char *path, const char *header)
{
    f->path = path;
    f->len = 0;
    f->failed = 0;
    if (!header) {
        f->fd = sys_open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    } else {
        f->fd = sys_open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND, 0644);
        if (f->fd >= 0)
            memcpy(f->buf, header, f->len = strlen(header));
        else if (errno == EEXIST)
            f->fd = sys_open(path, O_WRONLY | O_APPEND, 0644);
    }
    if (f->fd < 0) {
        log_msg(LOG_ERROR, "%s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

static void out_flush(struct out_file *f)
{
    if (f->fd < 0 || f->len == 0)
        return;
    if (sys_write_all(f->fd, f->buf, f->len) != 0 && !f->failed) {
        f->failed = 1;
        log_msg(LOG_ERROR, "%s: %s (rows lost)", f->path, strerror(errno));
    }
    f->len = 0;
}

static void out_append(struct out_file *f, const char *text, size_t n)
{
    if (f->fd < 0)
        return;
    if (f->len + n > sizeof f->buf)
        out_flush(f);
    memcpy(f->buf + f->len, text, n);
    f->len += n;
}

static void out_close(struct out_file *f)
{
    out_flush(f);
    if (f->fd >= 0)
        sys_close(f->fd);
    f->fd = -1;
}

/* Records [lo, hi) of DCU idx as CSV rows. */
static void csv_records(struct out_file *f, int32_t idx, uint32_t lo,
                        uint32_t hi)
{
    char line[128], meter[METER_ID_SIZE + 1];
    lp_record r;
    uint32_t j;
    int n;

    if (f->fd < 0)
        return;
    for (j = lo; j < hi; j++) {
        lp_make(idx, j, &r);
        memcpy(meter, r.meter_id, METER_ID_SIZE);
        meter[METER_ID_SIZE] = '\0';
        n = snprintf(line, sizeof line, "DCU%05u,%s,%u,%u,%u,%u\n",
                     (unsigned)dcu_num(idx), meter, (unsigned)r.ts,
                     (unsigned)r.import_wh, (unsigned)r.export_wh,
                     (unsigned)r.status);
        out_append(f, line, (size_t)n);
    }
}

/* ------------------------------------------------------------------------
 * The report line
 * ---------------------------------------------------------------------- */

static void report(void)
{
    const struct counters *c = &sim.c;
    char line[1024];
    size_t n;
    unsigned code;

    n = (size_t)snprintf(line, sizeof line,
        "dcusim: sessions=%llu polls=%llu pushes=%llu packets_sent=%llu "
        "retransmits=%llu acks_received=%llu nacks_received=%llu",
        (unsigned long long)c->sessions, (unsigned long long)c->polls,
        (unsigned long long)c->pushes, (unsigned long long)c->packets_sent,
        (unsigned long long)c->retransmits,
        (unsigned long long)c->acks_received,
        (unsigned long long)c->nacks_received);
    for (code = 1; code <= FEP_NACK_CODE_MAX; code++)
        n += (size_t)snprintf(line + n, sizeof line - n, " nack_%s=%llu",
                              fep_nack_name(code),
                              (unsigned long long)c->nack[code]);
    n += (size_t)snprintf(line + n, sizeof line - n,
        " records_generated=%llu records_acked=%llu fep_ic_reused=%llu "
        "bad_frames=%llu timeouts=%llu\n",
        (unsigned long long)c->records_generated,
        (unsigned long long)c->records_acked,
        (unsigned long long)c->fep_ic_reused,
        (unsigned long long)c->bad_frames, (unsigned long long)c->timeouts);
    sys_write_all(2, line, n < sizeof line ? n : sizeof line - 1);
}

/* ------------------------------------------------------------------------
 * Faults in force on a connection
 * ---------------------------------------------------------------------- */

static int fault_hits(const struct fault_spec *f, uint32_t n)
{
    unsigned i;

    if (f->target == TARGET_ALL)
        return 1;
    if (f->target == TARGET_PCT)
        return prng_next() % 100 < f->pct;
    for (i = 0; i < f->n_ranges; i++)
        if (n >= f->ranges[i].lo && n <= f->ranges[i].hi)
            return 1;
    return 0;
}

/* Chosen once per session; the first matching --fault of a mode wins. */
static void faults_choose(struct conn *c)
{
    unsigned i;

    memset(&c->fx, 0, sizeof c->fx);
    for (i = 0; i < sim.o.n_faults; i++) {
        const struct fault_spec *f = &sim.o.faults[i];
        uint32_t bit = 1u << f->mode;

        if (!(c->fx.on & bit) && fault_hits(f, dcu_num(c->dcu))) {
            c->fx.on |= bit;
            c->fx.arg[f->mode] = f->arg;
        }
    }
}

static int fx_on(const struct conn *c, enum fault_mode m)
{
    return (c->fx.on >> m) & 1;
}

/* The fault is on and aimed at the packet in flight. */
static int fx_at(const struct conn *c, enum fault_mode m)
{
    return fx_on(c, m) && c->fx.arg[m] == c->x.fsn;
}

/* ------------------------------------------------------------------------
 * Connection slots: conn_open and conn_release are the only places that
 * take and give back a slot and its descriptor.
 * ---------------------------------------------------------------------- */

static struct conn *conn_open(int fd, enum conn_kind kind,
                              enum conn_state state)
{
    struct conn *c = &sim.conns[sim.free_slots[--sim.n_free]];

    memset(c, 0, offsetof(struct conn, rx));
    frame_rx_reset(&c->rx);
    c->fd = fd;
    c->kind = kind;
    c->state = state;
    c->deadline_ms = sim.now_ms + sim.o.timeout_ms;
    c->dcu = -1;
    c->key_dcu = -1;
    sim.c.sessions++;
    return c;
}

/* Reads what is queued, so that close sends FIN and not RST, which would
 * make the FEP drop the NACK that is still on its way. */
static void conn_drain(struct conn *c)
{
    int i;

    for (i = 0; i < 4; i++) {
        size_t room;
        uint8_t *p;

        frame_rx_reset(&c->rx);
        p = frame_rx_space(&c->rx, &room);
        if (sys_read(c->fd, p, room) <= 0)
            return;
    }
}

static void conn_release(struct conn *c)
{
    if (c->bound)
        sim.dcus[c->dcu].slot = -1;
    if (c->kind == CONN_PUSH)
        sim.push_active--;
    if (!fx_on(c, FM_NOREAD))
        conn_drain(c);
    sys_close(c->fd);
    c->fd = -1;
    c->bound = 0;
    frame_rx_reset(&c->rx);
    c->state = CONN_FREE;
    sim.free_slots[sim.n_free++] = (int32_t)(c - sim.conns);
}

/* The DCU a connection speaks for, as text for the log: "-" when none. */
static void conn_id_str(const struct conn *c, char id[FRAME_ID_SIZE + 1])
{
    uint8_t sid[FRAME_ID_SIZE];

    strcpy(id, "-");
    if (c->dcu >= 0) {
        dcu_sid(c->dcu, sid);
        frame_id_str(sid, id);
    }
}

static void conn_close(struct conn *c, const char *why)
{
    char id[FRAME_ID_SIZE + 1];

    if (c->state == CONN_CLOSING || c->state == CONN_FREE)
        return;
    conn_id_str(c, id);
    log_msg(LOG_DEBUG, "%s %s: closing: %s",
            c->kind == CONN_PUSH ? "push" : "poll", id, why);
    c->state = CONN_CLOSING;
}

/* The connection speaks for DCU idx (its SID, its key) from now on. */
static void conn_identify(struct conn *c, int32_t idx)
{
    c->dcu = idx;
    if (sim.dcus[idx].keyed && c->key_dcu != idx) {
        gcm_init(&c->gk, sim.dcus[idx].key);
        c->key_dcu = idx;
    }
}

/* Takes DCU idx for this session; 0 when another session holds it. */
static int conn_bind(struct conn *c, int32_t idx)
{
    if (sim.dcus[idx].slot >= 0)
        return 0;
    conn_identify(c, idx);
    sim.dcus[idx].slot = (int32_t)(c - sim.conns);
    c->bound = 1;
    faults_choose(c);
    return 1;
}

static int conn_dribbling(const struct conn *c)
{
    return fx_on(c, FM_DRIBBLE);
}

/* ------------------------------------------------------------------------
 * Sending
 * ---------------------------------------------------------------------- */

static const gcm_key *conn_key(const struct conn *c)
{
    if (c->dcu < 0 || !sim.dcus[c->dcu].keyed || fx_on(c, FM_PLAINTEXT))
        return NULL;
    return &c->gk;
}

static void hdr_fill(struct conn *c, frame_hdr *h, uint8_t cmd, int last,
                     uint16_t qsn, uint16_t fsn)
{
    h->ctl = (uint8_t)(CTL_DIR_DCU | (last ? CTL_LAST : 0));
    h->cmd = cmd;
    if (c->dcu >= 0)
        dcu_sid(c->dcu, h->sid);
    else
        memcpy(h->sid, c->peer_sid, FRAME_ID_SIZE);
    memcpy(h->did, sim.o.fep_sid, FRAME_ID_SIZE);
    h->qsn = qsn;
    h->msn = c->msn++;
    h->fsn = fsn;
}

/* Starts a new transmission: garbage first on the first one (fault). */
static void tx_begin(struct conn *c)
{
    size_t i;

    c->tx_len = 0;
    c->tx_off = 0;
    c->cut = 0;
    if (!c->sent_any && fx_on(c, FM_GARBAGE)) {
        for (i = 0; i < c->fx.arg[FM_GARBAGE]; i++) {
            uint8_t b = (uint8_t)(prng_next() >> 56);
            c->tx[i] = b == FRAME_SOF ? (uint8_t)(b + 1) : b;
        }
        c->tx_len = c->fx.arg[FM_GARBAGE];
    }
    c->sent_any = 1;
}

/* Encodes a frame at the end of tx; its offset, or -1.  reuse_ic: protect
 * it with the IC of the frame sent before it (fault replay). */
static long tx_encode(struct conn *c, const frame_hdr *h,
                      const uint8_t *payload, size_t len, int reuse_ic)
{
    const gcm_key *key = conn_key(c);
    uint32_t ic = 0;
    size_t n, off = c->tx_len;

    if (key) {
        struct ic_counter *k = ic_of(c->dcu);

        if (reuse_ic) {
            ic = c->last_ic ? c->last_ic : k->next - 1;
        } else {
            if (k->next == 0) {
                log_msg(LOG_ERROR, "IC space of a key exhausted");
                return -1;
            }
            ic = k->next++;             /* wraps to 0: exhausted from now on */
        }
        c->last_ic = ic;
    }
    n = frame_encode(c->tx + off, SIM_TX_SIZE - off, h, payload, len, key, ic);
    if (n == 0)
        return -1;
    c->tx_len += n;
    return (long)off;
}

static void conn_on_writable(struct conn *c);

/*
 * When the transmission just built in tx may start: now, plus --latency and
 * a jitter drawn from the seeded PRNG (drawn only when JITTER > 0, so that
 * without it the PRNG's other uses see the same sequence as ever).  Frames
 * of one connection keep their order: a frame is never due before the one
 * ahead of it, whose time not_before_ms still holds.  (Under stop-and-wait
 * that one has been written by now, so its time is already past.)
 */
static int64_t tx_due_ms(const struct conn *c)
{
    int64_t due = sim.now_ms + sim.o.latency_ms;
    char id[FRAME_ID_SIZE + 1];

    if (sim.o.jitter_ms > 0)
        due += (int64_t)(prng_next() % (sim.o.jitter_ms + 1u));
    if (due > sim.now_ms) {
        conn_id_str(c, id);
        log_msg(LOG_DEBUG, "%s: MSN %u held %lld ms (latency)", id,
                (unsigned)(uint16_t)(c->msn - 1), (long long)(due - sim.now_ms));
    }
    return due > c->not_before_ms ? due : c->not_before_ms;
}

/* tx is ready: write it, once it is due, then go to `after`. */
static void conn_send(struct conn *c, enum conn_state after)
{
    if (!c->cut)
        c->tx_end = c->tx_len;
    c->state = CONN_SEND;
    c->after_send = after;
    c->not_before_ms = tx_due_ms(c);
    c->deadline_ms = c->not_before_ms + sim.o.timeout_ms;
    conn_on_writable(c);
}

static void conn_nack(struct conn *c, uint8_t code, uint16_t qsn,
                      uint16_t fsn, enum conn_state after)
{
    frame_hdr h;

    tx_begin(c);
    hdr_fill(c, &h, CMD_NACK, 1, qsn, fsn);
    if (tx_encode(c, &h, &code, NACK_SIZE, 0) < 0) {
        conn_close(c, "cannot encode a NACK");
        return;
    }
    log_msg(LOG_DEBUG, "NACK %s sent", fep_nack_name(code));
    conn_send(c, after);
}

/* The payload of packet x.fsn; its length. */
static size_t packet_payload(const struct conn *c, uint8_t *p)
{
    const struct xchg *x = &c->x;
    uint32_t a = x->lo + (uint32_t)x->fsn * x->per;
    uint32_t b = min_u32(a + x->per, x->hi), i;
    dcu_status st;

    if (x->cmd == CMD_DCU_STATUS_RSP) {
        st.fw_version = SIM_FW_VERSION;
        st.uptime_s = (uint32_t)(sys_wall_s() - sim.start_wall);
        st.clock = (uint32_t)sys_wall_s();
        st.meter_count = (uint16_t)sim.o.meters;
        st.flags = 0;
        dcu_status_put(p, &st);
        return DCU_STATUS_SIZE;
    }
    p[0] = (uint8_t)(b - a);
    for (i = a; i < b; i++) {
        if (x->cmd == CMD_LP_RSP) {
            lp_record r;
            lp_make(c->dcu, i, &r);
            lp_record_put(p, i - a, &r);
        } else {
            meter_item m;
            meter_id_make(dcu_num(c->dcu), i, m.meter_id);
            m.code = x->cmd == CMD_METER_STATUS_RSP ? 0 : (uint8_t)(1 + i % 3);
            m.ts = (uint32_t)sys_wall_s();
            meter_item_put(p, i - a, &m);
        }
    }
    return payload_size(x->cmd, b - a);
}

/* Faults that spoil a packet once it is encoded at tx + off. */
static void packet_spoil(struct conn *c, size_t off)
{
    uint8_t *fr = c->tx + off;
    size_t n = c->tx_len - off;

    if (fx_at(c, FM_BADTAG) && conn_key(c)) {
        fr[n - FRAME_CRC_SIZE - 1] ^= 0x01;
        put_u16be(fr + n - FRAME_CRC_SIZE, crc16_x25(fr, n - FRAME_CRC_SIZE));
    }
    if (fx_at(c, FM_CRC_ALWAYS) || (fx_at(c, FM_CRC) && !c->x.crc_spoiled)) {
        fr[n - 1] ^= 0xFF;
        c->x.crc_spoiled = 1;
    }
    if (c->sent_packet)
        return;
    if (fx_on(c, FM_OVERSIZE)) {
        put_u16be(fr + HDR_LEN, FRAME_LEN_MAX + 1);
        fr[HDR_HCS] = hcs_xor(fr, HDR_HCS);
    }
    if (fx_on(c, FM_CUT)) {
        c->cut = 1;
        c->tx_end = off + min_u32((uint32_t)n, c->fx.arg[FM_CUT]);
    }
}

static void packet_send(struct conn *c)
{
    uint8_t payload[PAYLOAD_MAX_PLAIN];
    struct xchg *x = &c->x;
    frame_hdr h;
    size_t len = packet_payload(c, payload);
    long off;

    x->wire_fsn = (uint16_t)(fx_at(c, FM_SKIP_FSN) ? x->fsn + 1 : x->fsn);
    tx_begin(c);
    hdr_fill(c, &h, x->cmd, x->fsn + 1 == x->n_packets, x->qsn, x->wire_fsn);
    off = tx_encode(c, &h, payload, len, fx_at(c, FM_REPLAY));
    if (off < 0) {
        conn_close(c, "cannot encode a packet");
        return;
    }
    packet_spoil(c, (size_t)off);
    c->sent_packet = 1;
    sim.c.packets_sent++;
    conn_send(c, CONN_WAIT_ACK);
}

/* ------------------------------------------------------------------------
 * Exchanges (one response, stop-and-wait)
 * ---------------------------------------------------------------------- */

static uint32_t lp_per_packet(int sec)
{
    uint32_t max = sec ? LP_RECORDS_MAX_SEC : LP_RECORDS_MAX_PLAIN;

    return sim.o.per_packet ? min_u32(sim.o.per_packet, max) : max;
}

/* Records of [0, limit) with from <= ts <= to: a contiguous range, since
 * ts grows with the record number. */
static void lp_range(uint32_t from, uint32_t to, uint32_t limit,
                     uint32_t *lo, uint32_t *hi)
{
    uint64_t start = sim.o.start_ts, m = sim.o.meters, a, b;

    *lo = *hi = 0;
    if (to < start || from > to)
        return;
    a = from <= start ? 0
                      : (from - start + SIM_INTERVAL_S - 1) / SIM_INTERVAL_S;
    b = (to - start) / SIM_INTERVAL_S + 1;
    a *= m;
    b *= m;
    *lo = (uint32_t)(a < limit ? a : limit);
    *hi = (uint32_t)(b < limit ? b : limit);
}

/* The records a `k` (req: from, to; NULL for a push) delivers. */
static void lp_window(struct conn *c, const uint8_t *req)
{
    struct sim_dcu *d = &sim.dcus[c->dcu];
    uint64_t end = (uint64_t)d->acked + sim.o.records;
    uint32_t limit = end > UINT32_MAX ? UINT32_MAX : (uint32_t)end;
    uint32_t from = 0, to = 0;

    if (req)
        lp_req_get(req, &from, &to);
    if (from == 0 && to == 0) {
        c->x.lo = d->acked;
        c->x.hi = limit;
        c->x.advances = 1;
    } else {
        lp_range(from, to, limit, &c->x.lo, &c->x.hi);
    }
    if (limit > d->generated) {
        csv_records(&sim.generated, c->dcu, d->generated, limit);
        sim.c.records_generated += limit - d->generated;
        d->generated = limit;
    }
}

static void xchg_start(struct conn *c, uint8_t cmd, uint16_t qsn,
                       const uint8_t *req)
{
    struct xchg *x = &c->x;
    int sec = conn_key(c) != NULL;
    uint32_t n;

    memset(x, 0, sizeof *x);
    x->cmd = cmd;
    x->qsn = qsn;
    if (cmd == CMD_LP_RSP) {
        lp_window(c, req);
        x->per = (uint16_t)lp_per_packet(sec);
    } else if (cmd == CMD_DCU_STATUS_RSP) {
        x->hi = 1;
        x->per = 1;
    } else {
        x->hi = sim.o.meters;
        x->per = sec ? METER_ITEMS_MAX_SEC : METER_ITEMS_MAX_PLAIN;
    }
    /* A from/to window can be longer than --records; FSN bounds it. */
    if (x->hi - x->lo > SIM_FSN_MAX * (uint32_t)x->per)
        x->hi = x->lo + SIM_FSN_MAX * (uint32_t)x->per;
    n = x->hi - x->lo;
    x->n_packets = (uint16_t)(n == 0 ? 1 : (n + x->per - 1) / x->per);
    packet_send(c);
}

/* The FEP acknowledged packet x.fsn of an advancing K: its records are
 * delivered. */
static void lp_acked(struct conn *c)
{
    struct sim_dcu *d = &sim.dcus[c->dcu];
    uint32_t a = c->x.lo + (uint32_t)c->x.fsn * c->x.per;
    uint32_t b = min_u32(a + c->x.per, c->x.hi);

    if (a > d->acked || b <= d->acked)
        return;                         /* no gap; a copy adds nothing */
    csv_records(&sim.acked, c->dcu, d->acked, b);
    sim.c.records_acked += b - d->acked;
    d->acked = b;
}

static void xchg_done(struct conn *c)
{
    c->x.cmd = 0;
    if (c->kind == CONN_PUSH) {
        conn_close(c, "push session complete");
        return;
    }
    c->state = CONN_IDLE;
    c->deadline_ms = sim.now_ms + sim.o.timeout_ms;
}

/*
 * Faults silent and noread: the connection is held, unanswered, until the
 * FEP closes it, bounded by SIM_HOLD_TIMEOUTS x --timeout.  noread shrinks
 * the receive buffer so that a FEP that keeps writing soon finds its writes blocked.
 */
static void conn_hold(struct conn *c)
{
    c->state = CONN_HOLD;
    c->deadline_ms = sim.now_ms + SIM_HOLD_TIMEOUTS * sim.o.timeout_ms;
    if (fx_on(c, FM_NOREAD)) {
        sys_set_rcvbuf(c->fd, SIM_NOREAD_RCVBUF);
    }
}

/* ------------------------------------------------------------------------
 * Frames from the FEP
 * ---------------------------------------------------------------------- */

/* A frame that breaks a rule: count it, answer NACK code, close. */
static void reject(struct conn *c, const frame *f, fep_err code)
{
    sim.c.bad_frames++;
    log_msg(LOG_DEBUG, "frame CTL 0x%02X CMD 0x%02X SID '%.8s' DID '%.8s' "
            "refused: %s", f->ctl, f->cmd, (const char *)f->sid,
            (const char *)f->did, fep_strerror(code));
    conn_nack(c, (uint8_t)code, f->qsn, f->fsn, CONN_CLOSING);
}

/* Verifies a protected frame or accepts a plaintext one into plain. */
static fep_err rx_open(struct conn *c, const frame *f, uint8_t *plain,
                       size_t *n)
{
    struct ic_counter *k;
    uint32_t ic;

    if (!sim.dcus[c->dcu].keyed) {
        if (f->ctl & CTL_SEC)
            return FEP_ERR_SECURITY;
        memcpy(plain, f->data, f->data_len);
        *n = f->data_len;
        return FEP_OK;
    }
    if (!(f->ctl & CTL_SEC) || frame_open(f, &c->gk, plain, n, &ic) != FEP_OK)
        return FEP_ERR_SECURITY;
    k = ic_of(c->dcu);
    if (ic <= k->fep_max) {
        sim.c.fep_ic_reused++;
        return FEP_ERR_REPLAY;
    }
    k->fep_max = ic;
    return FEP_OK;
}

/* Every check a FEP would make, in PROTOCOL.md's order; FEP_OK leaves the
 * plaintext payload in plain[0..*n). */
static fep_err rx_check(struct conn *c, const frame *f, uint8_t *plain,
                        size_t *n)
{
    uint8_t sid[FRAME_ID_SIZE];
    fep_err e;

    if (!c->bound) {
        int32_t idx = dcu_find(f->did);
        if (idx < 0) {
            c->dcu = -1;
            memcpy(c->peer_sid, f->did, FRAME_ID_SIZE);
            return FEP_ERR_UNKNOWN;
        }
        conn_identify(c, idx);
    } else {
        dcu_sid(c->dcu, sid);
        if (memcmp(f->did, sid, FRAME_ID_SIZE) != 0)
            return FEP_ERR_HEADER;
    }
    if (f->ctl & CTL_DIR_DCU)
        return FEP_ERR_HEADER;
    if (memcmp(f->sid, sim.o.fep_sid, FRAME_ID_SIZE) != 0)
        log_msg(LOG_DEBUG, "request from SID '%.8s', not '%s': served",
                (const char *)f->sid, sim.o.fep_id);
    e = rx_open(c, f, plain, n);
    if (e != FEP_OK)
        return e;
    return payload_check(f->cmd, plain, *n);
}

static void on_request(struct conn *c, const frame *f, const uint8_t *p)
{
    static const uint8_t rsp_of[][2] = {
        { CMD_LP_REQ, CMD_LP_RSP }, { CMD_DCU_STATUS_REQ, CMD_DCU_STATUS_RSP },
        { CMD_METER_STATUS_REQ, CMD_METER_STATUS_RSP },
        { CMD_METER_CHANGE_REQ, CMD_METER_CHANGE_RSP },
    };
    uint8_t rsp = 0;
    size_t i;

    for (i = 0; i < sizeof rsp_of / sizeof rsp_of[0]; i++)
        if (rsp_of[i][0] == f->cmd)
            rsp = rsp_of[i][1];
    if (!c->bound && !conn_bind(c, c->dcu)) {
        conn_nack(c, FEP_ERR_BUSY, f->qsn, f->fsn, CONN_CLOSING);
        return;
    }
    sim.c.polls++;
    if (fx_on(c, FM_SILENT) || fx_on(c, FM_NOREAD)) {
        conn_hold(c);
        return;
    }
    if (fx_on(c, FM_NACK)) {
        conn_nack(c, (uint8_t)c->fx.arg[FM_NACK], f->qsn, f->fsn, CONN_IDLE);
        return;
    }
    xchg_start(c, rsp, f->qsn, f->cmd == CMD_LP_REQ ? p : NULL);
}

static void on_ack(struct conn *c, const frame *f)
{
    struct xchg *x = &c->x;

    if (f->qsn != x->qsn || f->fsn != x->wire_fsn) {
        reject(c, f, FEP_ERR_SEQUENCE);
        return;
    }
    sim.c.acks_received++;
    x->crc_nacks = 0;
    if (x->cmd == CMD_LP_RSP && x->advances)
        lp_acked(c);
    if (fx_at(c, FM_DUP_FSN) && !x->dup_sent) {
        x->dup_sent = 1;
        sim.c.retransmits++;
        packet_send(c);
    } else if (x->fsn + 1 < x->n_packets) {
        x->fsn++;
        packet_send(c);
    } else {
        xchg_done(c);
    }
}

static void on_nack(struct conn *c, const uint8_t *p)
{
    uint8_t code = p[0];

    sim.c.nacks_received++;
    if (code >= 1 && code <= FEP_NACK_CODE_MAX)
        sim.c.nack[code]++;
    log_msg(LOG_DEBUG, "NACK %s received", fep_nack_name(code));
    if (code == FEP_ERR_CRC && c->state == CONN_WAIT_ACK &&
        ++c->x.crc_nacks <= SIM_CRC_RETRIES) {
        sim.c.retransmits++;
        packet_send(c);
        return;
    }
    conn_close(c, "NACK received");
}

static void on_frame(struct conn *c, const frame *f)
{
    uint8_t plain[FRAME_DATA_MAX];
    size_t n = 0;
    fep_err e;

    c->crc_strikes = 0;
    e = rx_check(c, f, plain, &n);
    if (e != FEP_OK) {
        reject(c, f, e);
        return;
    }
    switch (f->cmd) {
    case CMD_LP_REQ: case CMD_DCU_STATUS_REQ:
    case CMD_METER_STATUS_REQ: case CMD_METER_CHANGE_REQ:
        if (c->state == CONN_IDLE)
            on_request(c, f, plain);
        else
            reject(c, f, FEP_ERR_SEQUENCE);
        break;
    case CMD_ACK:
        if (c->state == CONN_WAIT_ACK)
            on_ack(c, f);
        else
            reject(c, f, FEP_ERR_SEQUENCE);
        break;
    case CMD_NACK:
        on_nack(c, plain);
        break;
    default:                            /* a response, from the FEP */
        reject(c, f, FEP_ERR_HEADER);
        break;
    }
}

static void on_bad_crc(struct conn *c, const frame *f)
{
    enum conn_state after = c->state;

    sim.c.bad_frames++;
    if (!c->bound) {
        int32_t idx = dcu_find(f->did);
        if (idx >= 0)
            conn_identify(c, idx);
        else
            memcpy(c->peer_sid, f->did, FRAME_ID_SIZE);
    }
    if (++c->crc_strikes >= CRC_STRIKES_MAX)
        after = CONN_CLOSING;
    conn_nack(c, FEP_ERR_CRC, f->qsn, f->fsn, after);
}

static void conn_take_frames(struct conn *c)
{
    /* While a frame goes out, what came in waits in rx (stop-and-wait:
     * nothing should); loop_dispatch takes it once the send is over. */
    while (c->state != CONN_CLOSING && c->state != CONN_SEND) {
        frame f;
        frame_result r = frame_rx_next(&c->rx, &f);

        if (r == FRAME_NEED_MORE)
            return;
        if (c->state == CONN_HOLD)
            continue;                   /* silent: swallow everything */
        if (c->rx.garbage > GARBAGE_MAX) {
            sim.c.bad_frames++;
            conn_close(c, "too much garbage");
            return;
        }
        if (r == FRAME_READY)
            on_frame(c, &f);
        else if (r == FRAME_BAD_CRC)
            on_bad_crc(c, &f);
        else
            reject(c, &f, FEP_ERR_LENGTH);
    }
}

/* ------------------------------------------------------------------------
 * Readiness handlers
 * ---------------------------------------------------------------------- */

/*
 * noread must not consume what the FEP sent, yet must notice its close:
 * a peek of 0 bytes is the FIN.  With data queued the FIN cannot be seen
 * without reading, so the slot then waits for its deadline.
 */
static void hold_peek(struct conn *c)
{
    ssize_t r = sys_peek(c->fd);

    if (r == SYS_EOF)
        conn_close(c, "closed by the FEP");
    else if (r == SYS_ERROR)
        conn_close(c, "connection broken");
    else if (r > 0)
        c->peek_blind = 1;
}

static void conn_on_readable(struct conn *c)
{
    size_t room;
    uint8_t *p;
    ssize_t r;

    if (c->state == CONN_HOLD && fx_on(c, FM_NOREAD)) {
        hold_peek(c);
        return;
    }
    p = frame_rx_space(&c->rx, &room);
    r = sys_read(c->fd, p, room);
    if (r > 0) {
        frame_rx_commit(&c->rx, (size_t)r);
        conn_take_frames(c);
    } else if (r == SYS_EOF) {
        conn_close(c, c->state == CONN_IDLE || c->state == CONN_HOLD
                          ? "closed by the FEP"
                          : "closed by the FEP before the exchange ended");
    } else if (r == SYS_ERROR) {
        conn_close(c, strerror(errno));
    }
}

/* What a finished transmission leads to. */
static void conn_sent(struct conn *c)
{
    if (c->cut) {
        conn_close(c, "cut (fault)");
        return;
    }
    if (c->after_send == CONN_CLOSING) {
        conn_close(c, "NACK sent");
        return;
    }
    c->state = c->after_send;
    c->deadline_ms = sim.now_ms + sim.o.timeout_ms;
}

static void conn_on_writable(struct conn *c)
{
    size_t n = c->tx_end - c->tx_off;
    ssize_t r;

    if (sim.now_ms < c->not_before_ms)
        return;
    if (conn_dribbling(c))
        n = n > 0 ? 1 : 0;
    if (n > 0) {
        r = sys_write(c->fd, c->tx + c->tx_off, n);
        if (r == SYS_ERROR) {
            conn_close(c, strerror(errno));
            return;
        }
        if (r <= 0)
            return;
        c->tx_off += (size_t)r;
        if (conn_dribbling(c) && c->tx_off < c->tx_end)
            c->not_before_ms = sim.now_ms + c->fx.arg[FM_DRIBBLE];
        c->deadline_ms = (c->not_before_ms > sim.now_ms ? c->not_before_ms
                                                         : sim.now_ms) +
                         sim.o.timeout_ms;
    }
    if (c->tx_off == c->tx_end)
        conn_sent(c);
}

static void push_begin(struct conn *c)
{
    struct sim_dcu *d = &sim.dcus[c->dcu];

    if (fx_on(c, FM_SILENT) || fx_on(c, FM_NOREAD)) {
        conn_hold(c);
        return;
    }
    xchg_start(c, c->push_cmd, d->push_qsn++, NULL);
}

static void conn_on_connected(struct conn *c)
{
    int err = sys_connect_result(c->fd);

    if (err != 0) {
        log_msg(sim.push_connected_once ? LOG_DEBUG : LOG_ERROR,
                "push to %s: %s", sim.o.push_text, strerror(err));
        if (!sim.push_connected_once) {
            sim.exit_code = 3;          /* nobody listens: a start-up failure */
            stop_flag = 1;
        }
        conn_close(c, "connect failed");
        return;
    }
    sim.push_connected_once = 1;
    push_begin(c);
}

static void conn_on_deadline(struct conn *c)
{
    static const char *const what[] = {
        "free", "connect timed out", "no request in time", "write stalled",
        "no ACK in time", "hold ended", "closing"
    };

    if (c->state == CONN_FREE || c->state == CONN_CLOSING ||
        sim.now_ms < c->deadline_ms)
        return;
    sim.c.timeouts++;
    conn_close(c, what[c->state]);
}

/* ------------------------------------------------------------------------
 * Listening and pushing
 * ---------------------------------------------------------------------- */

static void accept_ready(int lfd)
{
    int i, fd;

    for (i = 0; i < SIM_ACCEPT_BATCH; i++) {
        fd = sys_accept(lfd, NULL);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) {
                log_msg(LOG_WARN, "accept: %s", strerror(errno));
                sim.accept_pause_until_ms = sim.now_ms + SIM_ACCEPT_PAUSE_MS;
            }
            return;
        }
        if (sim.n_free == 0) {
            log_msg(LOG_DEBUG, "no free slot: connection refused");
            sys_close(fd);
            continue;
        }
        conn_open(fd, CONN_POLL, CONN_IDLE);
    }
}

/* 0: started or failed for good; -1: no descriptor now, try later. */
static int push_start(int32_t idx, uint8_t cmd)
{
    int in_progress = 0, fd = sys_connect(&sim.o.push_addr, &in_progress);
    struct conn *c;

    if (fd < 0) {
        if (errno == EMFILE || errno == ENFILE)
            return -1;
        log_msg(LOG_ERROR, "push to %s: %s", sim.o.push_text, strerror(errno));
        if (!sim.push_connected_once) {
            sim.exit_code = 3;
            stop_flag = 1;
        }
        sim.c.pushes++;
        return 0;
    }
    c = conn_open(fd, CONN_PUSH, CONN_CONNECTING);
    sim.push_active++;
    sim.c.pushes++;
    c->push_cmd = cmd;
    conn_bind(c, idx);
    if (!in_progress) {
        sim.push_connected_once = 1;
        push_begin(c);
    }
    return 0;
}

static int push_pending(void)
{
    return sim.o.push_text && sim.push_round < strlen(sim.o.push_cmds);
}

static int64_t now_us(void)
{
    return sim.now_ms * 1000;
}

/* Starts push sessions in order (every DCU's first letter, then every
 * DCU's second...), within --push-concurrency and --push-rate. */
static void push_schedule(void)
{
    uint32_t limit = sim.o.push_concurrency ? sim.o.push_concurrency
                                            : sim.n_conns;

    while (push_pending() && !stop_flag) {
        if (sim.push_active >= limit || sim.n_free == 0)
            return;
        if (sim.o.push_rate > 0 && now_us() < sim.next_push_us)
            return;
        if (sim.dcus[sim.push_cursor].slot >= 0)
            return;                     /* busy: keep the order */
        if (push_start((int32_t)sim.push_cursor,
                       (uint8_t)sim.o.push_cmds[sim.push_round]) < 0)
            return;
        if (sim.o.push_rate > 0) {
            int64_t t = sim.next_push_us > now_us() ? sim.next_push_us
                                                    : now_us();
            sim.next_push_us = t + (int64_t)(1e6 / sim.o.push_rate);
        }
        if (++sim.push_cursor == sim.o.dcus) {
            sim.push_cursor = 0;
            sim.push_round++;
        }
    }
}

/* ------------------------------------------------------------------------
 * The loop
 * ---------------------------------------------------------------------- */

static int conn_wants_read(const struct conn *c)
{
    switch (c->state) {
    case CONN_IDLE: case CONN_WAIT_ACK:
        return 1;
    case CONN_HOLD:
        return !(fx_on(c, FM_NOREAD) && c->peek_blind);
    default:
        return 0;
    }
}

static int conn_wants_write(const struct conn *c)
{
    if (c->state == CONN_CONNECTING)
        return 1;
    return c->state == CONN_SEND && sim.now_ms >= c->not_before_ms;
}

static int64_t earliest(int64_t a, int64_t b)
{
    return b < a ? b : a;
}

/* Fills the sets; returns the highest descriptor and the time to wake up. */
static int loop_prepare(fd_set *rd, fd_set *wr, int64_t *wake_ms)
{
    int max_fd = -1;
    unsigned i;

    FD_ZERO(rd);
    FD_ZERO(wr);
    *wake_ms = earliest(sim.now_ms + SIM_TICK_MS, sim.next_flush_ms);
    if (sim.end_ms)
        *wake_ms = earliest(*wake_ms, sim.end_ms);
    if (push_pending() && sim.o.push_rate > 0)
        *wake_ms = earliest(*wake_ms, sim.next_push_us / 1000 + 1);
    for (i = 0; i < sim.o.n_listen; i++) {
        if (sim.now_ms < sim.accept_pause_until_ms)
            break;
        FD_SET(sim.listen_fd[i], rd);
        if (sim.listen_fd[i] > max_fd)
            max_fd = sim.listen_fd[i];
    }
    for (i = 0; i < sim.n_conns; i++) {
        struct conn *c = &sim.conns[i];

        if (c->state == CONN_FREE)
            continue;
        *wake_ms = earliest(*wake_ms, c->deadline_ms);
        if (c->state == CONN_SEND && c->not_before_ms > sim.now_ms)
            *wake_ms = earliest(*wake_ms, c->not_before_ms);
        if (conn_wants_read(c))
            FD_SET(c->fd, rd);
        if (conn_wants_write(c))
            FD_SET(c->fd, wr);
        if (c->fd > max_fd)
            max_fd = c->fd;
    }
    if (sim.accept_pause_until_ms > sim.now_ms)
        *wake_ms = earliest(*wake_ms, sim.accept_pause_until_ms);
    return max_fd;
}

static void loop_dispatch(fd_set *rd, fd_set *wr)
{
    unsigned i;

    for (i = 0; i < sim.o.n_listen; i++)
        if (FD_ISSET(sim.listen_fd[i], rd))
            accept_ready(sim.listen_fd[i]);
    for (i = 0; i < sim.n_conns; i++) {
        struct conn *c = &sim.conns[i];

        if (c->state == CONN_FREE || c->state == CONN_CLOSING)
            continue;
        if (c->state == CONN_CONNECTING) {
            if (FD_ISSET(c->fd, wr))
                conn_on_connected(c);
            continue;
        }
        /* A slot accepted in this pass has no bits yet: FD_ISSET is 0. */
        if (FD_ISSET(c->fd, rd))
            conn_on_readable(c);
        if (c->state == CONN_SEND && FD_ISSET(c->fd, wr))
            conn_on_writable(c);
        if (conn_wants_read(c) && frame_rx_held(&c->rx) > 0)
            conn_take_frames(c);
    }
}

/* The end of a pass: deadlines, then every slot marked CLOSING is released. */
static void loop_reap(void)
{
    unsigned i;

    for (i = 0; i < sim.n_conns; i++) {
        struct conn *c = &sim.conns[i];

        conn_on_deadline(c);
        if (c->state == CONN_CLOSING)
            conn_release(c);
    }
}

static int loop_should_end(void)
{
    if (stop_flag)
        return 1;
    if (sim.end_ms && sim.now_ms >= sim.end_ms)
        return 1;
    /* Pushing only: done when every push session is over. */
    return sim.o.push_text && sim.o.n_listen == 0 && !push_pending() &&
           sim.push_active == 0;
}

static void loop_housekeeping(void)
{
    if (report_flag) {
        report_flag = 0;
        report();
    }
    if (sim.now_ms >= sim.next_flush_ms) {
        out_flush(&sim.generated);
        out_flush(&sim.acked);
        sim.next_flush_ms = sim.now_ms + SIM_FLUSH_MS;
    }
}

static void sim_run(void)
{
    fd_set rd, wr;
    int64_t wake_ms;
    struct timeval tv;
    int max_fd, r;

    for (;;) {
        sim.now_ms = sys_now_ms();
        push_schedule();
        loop_reap();
        if (loop_should_end())
            return;
        max_fd = loop_prepare(&rd, &wr, &wake_ms);
        wake_ms = wake_ms > sim.now_ms ? wake_ms - sim.now_ms : 0;
        tv.tv_sec = (time_t)(wake_ms / 1000);
        tv.tv_usec = (suseconds_t)(wake_ms % 1000 * 1000);
        r = select(max_fd + 1, &rd, &wr, NULL, &tv);
        sim.now_ms = sys_now_ms();
        if (r < 0 && errno != EINTR) {
            log_msg(LOG_ERROR, "select: %s", strerror(errno));
            sim.exit_code = 1;
            return;
        }
        if (r > 0)
            loop_dispatch(&rd, &wr);
        loop_reap();
        loop_housekeeping();
    }
}

/* ------------------------------------------------------------------------
 * Command line
 * ---------------------------------------------------------------------- */

static void usage(void)
{
    static const char text[] =
"usage: dcusim [options]\n"
"Plays DCUs of the FEP-DCU protocol: answers polls and pushes, with faults.\n"
"\n"
"  --listen ADDR          answer polls on ADDR (host:port; repeatable, up to 8);\n"
"                         the DCU is chosen by each request's DID\n"
"  --push ADDR            push to the FEP listening at ADDR\n"
"  --dcus N               DCUs played (default 1); ids \"DCU%05u\" from --first\n"
"  --first N              number of the first DCU (default 1; last <= 99999)\n"
"  --fep-id ID            the FEP's id (default FEP00001): DID of what dcusim\n"
"                         sends; requests from another SID are served anyway\n"
"                         (logged at -v)\n"
"  --key HEX32            keyed DCUs' key: DCU n uses HEX32 with its last 4 bytes\n"
"                         XORed with n (big-endian), unless --same-key\n"
"  --same-key             every keyed DCU uses HEX32 itself (and one IC counter)\n"
"  --keyed PCT            percent of DCUs that are keyed (default 100 with --key,\n"
"                         else 0): DCU n is keyed iff (n - first) % 100 < PCT\n"
"  --records N            LP records a DCU has ready at each poll or push\n"
"                         (default 96)\n"
"  --per-packet N         LP records per K packet (default: as many as fit:\n"
"                         77 plaintext, 76 keyed; a larger N is cut to that)\n"
"  --meters N             meters per DCU (default 1, at most 65535)\n"
"  --start-ts T           ts of interval 0 (default 1767225600)\n"
"  --push-cmds CMDS       letters from KSMN: each DCU makes one push session per\n"
"                         letter, in order (default K)\n"
"  --push-concurrency N   at most N push connections at once (default: as many\n"
"                         as select() allows)\n"
"  --push-rate R          at most R push sessions started per second (decimals\n"
"                         allowed; default: no limit)\n"
"  --fault SPEC           inject a fault (repeatable); SPEC = MODE[:ARG][@TARGET]\n"
"                         TARGET = DCU numbers and ranges \"3,7-9\" or \"PCT%\" of\n"
"                         sessions (drawn with --seed); default: every DCU\n"
"  --seed N               PRNG seed for % targets, garbage bytes and --latency\n"
"                         jitter (default 1)\n"
"  --latency MS[:JITTER]  a WAN: each frame a DCU sends (packets and NACKs, a\n"
"                         push's first packet included) waits MS ms plus\n"
"                         0..JITTER ms drawn with --seed, then goes out, in\n"
"                         order; frames from the FEP are not delayed, so each\n"
"                         round trip gains MS..MS+JITTER ms (each 0..60000;\n"
"                         default 0)\n"
"  --timeout S            seconds to wait for the FEP's next frame or ACK, for a\n"
"                         connect and for a stalled write (default 10; decimals)\n"
"  --ic-start N           first IC of every key (default 1)\n"
"  --generated-csv FILE   append every LP record generated (each once):\n"
"                         dcu_id,meter_id,ts,import_wh,export_wh,status\n"
"  --acked-csv FILE       append every LP record whose packet the FEP\n"
"                         acknowledged (each once), same columns\n"
"  --config-out FILE      write a fepd `dcu` line for every DCU played:\n"
"                         \"dcu DCU00001 ADDR key=HEX|- poll=k\", ADDR the first\n"
"                         --listen address, or - without --listen\n"
"  --duration S           exit after S seconds (default: until SIGTERM/SIGINT;\n"
"                         with --push and no --listen: when every push is done)\n"
"  -v / -q                more / less logging on stderr\n"
"  -h, --help             this text\n"
"  -V, --version          print the version and exit\n"
"\n"
"Data: meter m (0-based) of DCU n is \"M%05u%06u\" (n, m).  Record j of DCU n\n"
"is meter m = j % meters, interval i = j / meters, ts = start_ts + 900 i,\n"
"import_wh = 100 + (31 n + 17 m + 7 i) mod 1000, export_wh = (n + m + i) mod 50,\n"
"status 0.  A `k` with from = to = 0 and a push K deliver records\n"
"[acked, acked + records); ACKed packets move `acked` (at-least-once).\n"
"\n"
"Faults (MODE[:ARG]):\n";
    static const char conns[] =
"\n"
"Connections: one process holds at most %u at once, FD_SETSIZE (%d) less %d\n"
"reserved descriptors, or fewer when RLIMIT_NOFILE is lower (the start-up\n"
"line says how many); a poll connection beyond them is closed at once, a push\n"
"waits for a free one.  A connection moves one packet per round trip, so with\n"
"--latency MS one process moves at most about %u x 1000 / MS packets a second.\n"
"For more, run several processes side by side, each with its own --first and\n"
"--dcus range (and, for polls, its own --listen address).\n";
    static const char tail[] =
"\n"
"Report (stderr, at exit and on SIGUSR1): one line \"dcusim: key=value ...\".\n"
"Exit: 0 after a clean stop, 2 bad usage, 3 cannot listen/connect/open at start.\n";
    char line[1024];
    int i, n;

    sys_write_all(1, text, strlen(text));
    for (i = 0; i < FM_COUNT; i++) {
        char name[32];
        snprintf(name, sizeof name, "%s%s", fault_info[i].name,
                 fault_info[i].takes_arg
                     ? (i == FM_DRIBBLE ? "[:MS]" : i == FM_NACK ? "[:CODE]"
                        : i == FM_GARBAGE || i == FM_CUT ? "[:N]" : "[:I]")
                     : "");
        n = snprintf(line, sizeof line, "  %-21s %s\n", name,
                     fault_info[i].help);
        sys_write_all(1, line, (size_t)n < sizeof line ? (size_t)n
                                                       : sizeof line - 1);
    }
    n = snprintf(line, sizeof line, conns, (unsigned)SIM_SLOTS_MAX,
                 (int)FD_SETSIZE, SIM_FD_RESERVED, (unsigned)SIM_SLOTS_MAX);
    sys_write_all(1, line, (size_t)n < sizeof line ? (size_t)n
                                                   : sizeof line - 1);
    sys_write_all(1, tail, strlen(tail));
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3), noreturn))
#endif
static void usage_fail(const char *opt, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "dcusim: %s: %s\nTry 'dcusim -h'.\n", opt, msg);
    exit(2);
}

static uint32_t num_u32(const char *opt, const char *s, uint32_t lo,
                        uint32_t hi)
{
    unsigned long long v;
    char *end;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (s[0] < '0' || s[0] > '9' || *end || errno || v < lo || v > hi)
        usage_fail(opt, "'%s' is not a whole number in %lu..%lu", s,
                   (unsigned long)lo, (unsigned long)hi);
    return (uint32_t)v;
}

static double num_real(const char *opt, const char *s, double lo, double hi)
{
    double v;
    char *end;

    errno = 0;
    v = strtod(s, &end);
    if (!((s[0] >= '0' && s[0] <= '9') || s[0] == '.') || *end || errno ||
        !(v >= lo && v <= hi))
        usage_fail(opt, "'%s' is not a number in %g..%g", s, lo, hi);
    return v;
}

/* Seconds, decimals allowed, to milliseconds (at least 1). */
static int64_t num_ms(const char *opt, const char *s)
{
    int64_t ms = (int64_t)(num_real(opt, s, 0.001, 1e7) * 1000 + 0.5);

    return ms > 0 ? ms : 1;
}

static void key_parse(const char *opt, const char *s, uint8_t key[KEY_SIZE])
{
    int i;

    if (strlen(s) != 2 * KEY_SIZE)
        usage_fail(opt, "'%s' is not 32 hex digits", s);
    for (i = 0; i < KEY_SIZE; i++) {
        int hi = hex_digit((unsigned char)s[2 * i]);
        int lo = hex_digit((unsigned char)s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            usage_fail(opt, "'%s' is not 32 hex digits", s);
        key[i] = (uint8_t)(hi << 4 | lo);
    }
}

/* "3,7-9" into f's ranges. */
static void target_parse(const char *opt, const char *s, struct fault_spec *f)
{
    const char *p = s;

    f->target = TARGET_DCUS;
    while (*p) {
        char item[32], *dash;
        size_t n = strcspn(p, ",");

        if (n == 0 || n >= sizeof item || f->n_ranges == SIM_RANGES_MAX)
            usage_fail(opt, "bad target '%s' (DCU numbers \"3,7-9\", "
                       "or \"PCT%%\")", s);
        memcpy(item, p, n);
        item[n] = '\0';
        dash = strchr(item, '-');
        if (dash)
            *dash = '\0';
        f->ranges[f->n_ranges].lo = num_u32(opt, item, 0, SIM_DCU_NUM_MAX);
        f->ranges[f->n_ranges].hi =
            dash ? num_u32(opt, dash + 1, 0, SIM_DCU_NUM_MAX)
                 : f->ranges[f->n_ranges].lo;
        if (f->ranges[f->n_ranges].hi < f->ranges[f->n_ranges].lo)
            usage_fail(opt, "bad range '%s' in '%s'", item, s);
        f->n_ranges++;
        p += n;
        if (*p == ',' && *++p == '\0')
            usage_fail(opt, "bad target '%s'", s);
    }
}

static void fault_parse(const char *opt, const char *s, struct fault_spec *f)
{
    char text[256], *at, *colon;
    int m;

    if (strlen(s) >= sizeof text)
        usage_fail(opt, "'%s' is too long", s);
    strcpy(text, s);
    at = strchr(text, '@');
    if (at)
        *at++ = '\0';
    colon = strchr(text, ':');
    if (colon)
        *colon++ = '\0';
    for (m = 0; m < FM_COUNT && strcmp(text, fault_info[m].name) != 0; m++)
        ;
    if (m == FM_COUNT)
        usage_fail(opt, "unknown fault mode '%s' (dcusim -h lists them)", text);
    if (colon && !fault_info[m].takes_arg)
        usage_fail(opt, "fault mode '%s' takes no argument", text);
    memset(f, 0, sizeof *f);
    f->mode = (enum fault_mode)m;
    f->arg = colon ? num_u32(opt, colon, fault_info[m].arg_min,
                             fault_info[m].arg_max)
                   : fault_info[m].arg_default;
    if (m == FM_SLOWLORIS) {
        f->mode = FM_DRIBBLE;
        f->arg = 1000;
    }
    if (!at)
        return;
    if (*at && at[strlen(at) - 1] == '%') {
        at[strlen(at) - 1] = '\0';
        f->target = TARGET_PCT;
        f->pct = num_u32(opt, at, 0, 100);
    } else {
        target_parse(opt, at, f);
    }
}

/* "MS[:JITTER]" of --latency, each 0..SIM_LATENCY_MAX_MS. */
static void latency_parse(const char *opt, const char *s, struct sim_opts *o)
{
    char text[32], *colon;

    if (strlen(s) >= sizeof text)
        usage_fail(opt, "'%s' is not MS[:JITTER]", s);
    strcpy(text, s);
    colon = strchr(text, ':');
    if (colon)
        *colon++ = '\0';
    o->latency_ms = num_u32(opt, text, 0, SIM_LATENCY_MAX_MS);
    o->jitter_ms = colon ? num_u32(opt, colon, 0, SIM_LATENCY_MAX_MS) : 0;
}

static void fep_id_parse(const char *opt, const char *s, struct sim_opts *o)
{
    size_t i, n = strlen(s);

    if (n < 1 || n > FRAME_ID_SIZE)
        usage_fail(opt, "'%s' is not 1..8 characters", s);
    for (i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] > '~')
            usage_fail(opt, "'%s' is not printable ASCII without spaces", s);
    memcpy(o->fep_id, s, n + 1);
    frame_id_set(o->fep_sid, s);
}

static void push_cmds_parse(const char *opt, const char *s, struct sim_opts *o)
{
    size_t n = strlen(s);

    if (n < 1 || n > SIM_PUSH_CMDS_MAX || strspn(s, "KSMN") != n)
        usage_fail(opt, "'%s' is not 1..%d letters from KSMN", s,
                   SIM_PUSH_CMDS_MAX);
    memcpy(o->push_cmds, s, n + 1);
}

static void addr_parse(const char *opt, const char *s, sys_addr *a)
{
    char err[300];

    if (sys_addr_parse(s, a, err, sizeof err) != 0)
        usage_fail(opt, "%s", err);
}

static void opts_defaults(struct sim_opts *o)
{
    memset(o, 0, sizeof *o);
    o->dcus = 1;
    o->first = 1;
    fep_id_parse("--fep-id", "FEP00001", o);
    o->records = 96;
    o->meters = 1;
    o->start_ts = 1767225600u;
    strcpy(o->push_cmds, "K");
    o->seed = 1;
    o->timeout_ms = 10000;
    o->ic_start = 1;
    o->log_level = LOG_INFO;
}

/* Relations between options, checked once all are read. */
static void opts_check(struct sim_opts *o)
{
    uint32_t per_min;

    if (o->n_listen == 0 && !o->push_text)
        usage_fail("--listen/--push", "nothing to do: give --listen or --push");
    if ((uint64_t)o->first + o->dcus - 1 > SIM_DCU_NUM_MAX)
        usage_fail("--dcus", "DCU numbers %lu..%llu do not fit DCU%%05u",
                   (unsigned long)o->first,
                   (unsigned long long)o->first + o->dcus - 1);
    if (o->keyed_given && !o->has_key)
        usage_fail("--keyed", "needs --key");
    if (o->same_key && !o->has_key)
        usage_fail("--same-key", "needs --key");
    if (!o->keyed_given)
        o->keyed_pct = o->has_key ? 100 : 0;
    per_min = o->per_packet ? min_u32(o->per_packet, LP_RECORDS_MAX_SEC)
                            : LP_RECORDS_MAX_SEC;
    if ((o->records + per_min - 1) / per_min > SIM_FSN_MAX)
        usage_fail("--records", "%lu records in packets of %lu need more than "
                   "%u packets (FSN is 16 bits)", (unsigned long)o->records,
                   (unsigned long)per_min, SIM_FSN_MAX);
}

/* The value of option argv[*i]: after '=' or the next argument. */
static const char *opt_value(int argc, char **argv, int *i, const char *eq)
{
    if (eq)
        return eq + 1;
    if (*i + 1 >= argc)
        usage_fail(argv[*i], "needs a value");
    return argv[++*i];
}

static void opts_parse(int argc, char **argv, struct sim_opts *o)
{
    int i;

    opts_defaults(o);
    for (i = 1; i < argc; i++) {
        char name[32];
        const char *arg = argv[i], *eq = strchr(arg, '='), *v;
        size_t n = eq && arg[0] == '-' && arg[1] == '-' ? (size_t)(eq - arg)
                                                         : strlen(arg);
        if (n >= sizeof name)
            usage_fail(arg, "unknown option");
        memcpy(name, arg, n);
        name[n] = '\0';
        if (n == strlen(arg))
            eq = NULL;
#define IS(s) (strcmp(name, s) == 0)
#define VALUE() (v = opt_value(argc, argv, &i, eq))
        if (IS("-h") || IS("--help")) {
            usage();
            exit(0);
        } else if (IS("-V") || IS("--version")) {
            printf("dcusim %s\n", FEP_VERSION);
            exit(0);
        } else if (IS("-v")) {
            o->log_level = LOG_DEBUG;
        } else if (IS("-q")) {
            o->log_level = LOG_ERROR;
        } else if (IS("--listen")) {
            VALUE();
            if (o->n_listen == SIM_LISTEN_MAX)
                usage_fail(name, "at most %d addresses", SIM_LISTEN_MAX);
            addr_parse(name, v, &o->listen_addr[o->n_listen]);
            o->listen_text[o->n_listen++] = v;
        } else if (IS("--push")) {
            VALUE();
            if (o->push_text)
                usage_fail(name, "given twice");
            addr_parse(name, v, &o->push_addr);
            o->push_text = v;
        } else if (IS("--dcus")) {
            o->dcus = num_u32(name, VALUE(), 1, SIM_DCU_NUM_MAX);
        } else if (IS("--first")) {
            o->first = num_u32(name, VALUE(), 0, SIM_DCU_NUM_MAX);
        } else if (IS("--fep-id")) {
            fep_id_parse(name, VALUE(), o);
        } else if (IS("--key")) {
            key_parse(name, VALUE(), o->key);
            o->has_key = 1;
        } else if (IS("--same-key")) {
            o->same_key = 1;
        } else if (IS("--keyed")) {
            o->keyed_pct = num_u32(name, VALUE(), 0, 100);
            o->keyed_given = 1;
        } else if (IS("--records")) {
            o->records = num_u32(name, VALUE(), 0, SIM_RECORDS_MAX);
        } else if (IS("--per-packet")) {
            o->per_packet = num_u32(name, VALUE(), 1, LP_RECORDS_MAX_PLAIN);
        } else if (IS("--meters")) {
            o->meters = num_u32(name, VALUE(), 1, SIM_METERS_MAX);
        } else if (IS("--start-ts")) {
            o->start_ts = num_u32(name, VALUE(), 0, UINT32_MAX);
        } else if (IS("--push-cmds")) {
            push_cmds_parse(name, VALUE(), o);
        } else if (IS("--push-concurrency")) {
            o->push_concurrency = num_u32(name, VALUE(), 1, UINT32_MAX);
        } else if (IS("--push-rate")) {
            o->push_rate = num_real(name, VALUE(), 0.001, 1e9);
        } else if (IS("--fault")) {
            VALUE();
            if (o->n_faults == SIM_FAULTS_MAX)
                usage_fail(name, "at most %d faults", SIM_FAULTS_MAX);
            fault_parse(name, v, &o->faults[o->n_faults++]);
        } else if (IS("--seed")) {
            o->seed = num_u32(name, VALUE(), 0, UINT32_MAX);
        } else if (IS("--latency")) {
            latency_parse(name, VALUE(), o);
        } else if (IS("--timeout")) {
            o->timeout_ms = num_ms(name, VALUE());
        } else if (IS("--ic-start")) {
            o->ic_start = num_u32(name, VALUE(), 1, UINT32_MAX);
        } else if (IS("--generated-csv")) {
            o->generated_csv = VALUE();
        } else if (IS("--acked-csv")) {
            o->acked_csv = VALUE();
        } else if (IS("--config-out")) {
            o->config_out = VALUE();
        } else if (IS("--duration")) {
            o->duration_ms = num_ms(name, VALUE());
        } else {
            usage_fail(arg, "unknown option");
        }
#undef VALUE
#undef IS
    }
    opts_check(o);
}

/* ------------------------------------------------------------------------
 * Start-up and shutdown
 * ---------------------------------------------------------------------- */

static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        report_flag = 1;
    else
        stop_flag = 1;
}

static void signals_install(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_signal;          /* no SA_RESTART: select() wakes up */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

/* As many slots as select() and the descriptor limit allow. */
static unsigned slots_available(void)
{
    unsigned long have = sys_fd_limit(FD_SETSIZE);

    return have > SIM_FD_RESERVED + 1 ? (unsigned)(have - SIM_FD_RESERVED) : 1;
}

static void dcus_init(void)
{
    uint32_t i;

    for (i = 0; i < sim.o.dcus; i++) {
        struct sim_dcu *d = &sim.dcus[i];
        uint32_t n = sim.o.first + i;

        d->slot = -1;
        d->push_qsn = 1;
        d->ic.next = sim.o.ic_start;
        d->keyed = (uint8_t)(i % 100 < sim.o.keyed_pct);
        memcpy(d->key, sim.o.key, KEY_SIZE);
        if (!sim.o.same_key) {
            d->key[12] ^= (uint8_t)(n >> 24);
            d->key[13] ^= (uint8_t)(n >> 16);
            d->key[14] ^= (uint8_t)(n >> 8);
            d->key[15] ^= (uint8_t)n;
        }
    }
    sim.shared_ic.next = sim.o.ic_start;
}

static int listeners_open(void)
{
    unsigned i;

    for (i = 0; i < sim.o.n_listen; i++) {
        sim.listen_fd[i] = sys_listen(&sim.o.listen_addr[i], 512);
        if (sim.listen_fd[i] < 0) {
            log_msg(LOG_ERROR, "listen %s: %s", sim.o.listen_text[i],
                    strerror(errno));
            return -1;
        }
    }
    return 0;
}

static int config_write(void)
{
    static const char hex[] = "0123456789abcdef";
    const char *addr = sim.o.n_listen ? sim.o.listen_text[0] : "-";
    char line[256], key[2 * KEY_SIZE + 1];
    uint32_t i;
    int k, n;

    if (out_open(&sim.config, sim.o.config_out, NULL) != 0)
        return -1;
    for (i = 0; i < sim.o.dcus; i++) {
        const struct sim_dcu *d = &sim.dcus[i];

        strcpy(key, "-");
        for (k = 0; d->keyed && k < KEY_SIZE; k++) {
            key[2 * k] = hex[d->key[k] >> 4];
            key[2 * k + 1] = hex[d->key[k] & 15];
            key[2 * k + 2] = '\0';
        }
        n = snprintf(line, sizeof line, "dcu DCU%05u %s key=%s poll=k\n",
                     (unsigned)(sim.o.first + i), addr, key);
        out_append(&sim.config, line, (size_t)n < sizeof line ? (size_t)n : 0);
    }
    out_close(&sim.config);
    return sim.config.failed ? -1 : 0;
}

static int files_open(void)
{
    static const char header[] =
        "dcu_id,meter_id,ts,import_wh,export_wh,status\n";

    if (sim.o.generated_csv &&
        out_open(&sim.generated, sim.o.generated_csv, header) != 0)
        return -1;
    if (sim.o.acked_csv && out_open(&sim.acked, sim.o.acked_csv, header) != 0)
        return -1;
    if (sim.o.config_out && config_write() != 0)
        return -1;
    return 0;
}

static int tables_alloc(void)
{
    unsigned i;

    sim.n_conns = slots_available();
    if (sim.n_conns > SIM_SLOTS_MAX)
        sim.n_conns = SIM_SLOTS_MAX;
    sim.dcus = calloc(sim.o.dcus, sizeof *sim.dcus);
    sim.conns = calloc(sim.n_conns, sizeof *sim.conns);
    sim.free_slots = calloc(sim.n_conns, sizeof *sim.free_slots);
    if (!sim.dcus || !sim.conns || !sim.free_slots) {
        log_msg(LOG_ERROR, "out of memory");
        return -1;
    }
    for (i = 0; i < sim.n_conns; i++) {
        sim.conns[i].fd = -1;
        sim.free_slots[i] = (int32_t)(sim.n_conns - 1 - i);
    }
    sim.n_free = sim.n_conns;
    log_msg(LOG_DEBUG,
            "static memory: %zu bytes (%u slots of %zu, %lu DCUs of %zu)",
            sizeof sim +
                sim.n_conns * (sizeof *sim.conns + sizeof *sim.free_slots) +
                sim.o.dcus * sizeof *sim.dcus,
            sim.n_conns, sizeof *sim.conns, (unsigned long)sim.o.dcus,
            sizeof *sim.dcus);
    return 0;
}

static int sim_init(void)
{
    unsigned long lat = sim.o.latency_ms, jit = sim.o.jitter_ms;
    char latency[48];
    unsigned i;

    sim.generated.fd = sim.acked.fd = sim.config.fd = -1;
    for (i = 0; i < SIM_LISTEN_MAX; i++)
        sim.listen_fd[i] = -1;
    sim.now_ms = sim.start_ms = sys_now_ms();
    sim.start_wall = sys_wall_s();
    sim.end_ms = sim.o.duration_ms ? sim.start_ms + sim.o.duration_ms : 0;
    sim.next_flush_ms = sim.start_ms + SIM_FLUSH_MS;
    sim.prng = sim.o.seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
    if (tables_alloc() != 0)
        return -1;
    dcus_init();
    if (listeners_open() != 0 || files_open() != 0)
        return -1;
    if (jit)
        snprintf(latency, sizeof latency, "%lu..%lu", lat, lat + jit);
    else
        snprintf(latency, sizeof latency, "%lu", lat);
    log_msg(LOG_INFO, "playing %lu DCUs (DCU%05lu..), %u listening, push %s, "
            "%u slots, latency %s ms", (unsigned long)sim.o.dcus,
            (unsigned long)sim.o.first, sim.o.n_listen,
            sim.o.push_text ? sim.o.push_text : "off", sim.n_conns, latency);
    return 0;
}

/* Gives back everything sim_init and the loop took; safe after a partial
 * start-up. */
static void sim_release(void)
{
    unsigned i;

    for (i = 0; sim.conns && i < sim.n_conns; i++)
        if (sim.conns[i].state != CONN_FREE)
            conn_release(&sim.conns[i]);
    for (i = 0; i < SIM_LISTEN_MAX; i++)
        if (sim.listen_fd[i] >= 0)
            sys_close(sim.listen_fd[i]);
    out_close(&sim.generated);
    out_close(&sim.acked);
    out_close(&sim.config);
    free(sim.dcus);
    free(sim.conns);
    free(sim.free_slots);
    sim.dcus = NULL;
    sim.conns = NULL;
    sim.free_slots = NULL;
}

int main(int argc, char **argv)
{
    sys_ledger ledger;

    if (sys_std_fds() != 0)
        return 1;                       /* no /dev/null: nowhere to log it */
    log_set_name("dcusim");
    opts_parse(argc, argv, &sim.o);
    log_set_level(sim.o.log_level);
    signals_install();
    if (sim_init() != 0) {
        sim_release();
        return 3;
    }
    sim_run();
    sim_release();
    ledger = sys_ledger_get();
    log_msg(ledger.opened == ledger.closed ? LOG_DEBUG : LOG_ERROR,
            "descriptors opened %llu, closed %llu",
            (unsigned long long)ledger.opened,
            (unsigned long long)ledger.closed);
    report();
    return sim.exit_code;
}
