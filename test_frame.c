/*
 * test_frame.c -- tests of frame.c: the worked examples of PROTOCOL.md
 * section 6 byte for byte, every cut of a stream into reads, one test per
 * error path, the payload codecs, and a mutation fuzz loop whose input sits
 * right before a guard page, so that any over-read crashes.
 *
 * Environment: FUZZ_ITERATIONS (default 200000), FUZZ_SEED (default a fixed
 * value, so that every run of `make test` scans the same inputs), and
 * FUZZ_VERBOSE (set: print how often each outcome was reached).
 *
 * Owns: the guard-page mapping of the fuzz test, unmapped before it returns.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fep.h"
#include "test.h"

/* ------------------------------------------------------------------------
 * Fixtures
 * ---------------------------------------------------------------------- */

/* PROTOCOL.md 6.1 */
static const char example_plain_hex[] =
    "7E 01 20 6B  46 45 50 30 30 30 30 31  44 43 55 30 30 30 30 31"
    "00 07 00 00 00 00 00 00 0A 38  00 00 00 00 00 00 00 00  59 FA";

/* PROTOCOL.md 6.2 */
static const char example_sec_hex[] =
    "7E 01 E0 4B 44 43 55 30 30 30 30 31 46 45 50 30"
    "30 30 30 31 00 07 00 00 00 00 00 00 2D FF 00 00"
    "00 01 E5 61 82 B7 32 06 A8 D7 32 43 EF 81 F5 23"
    "39 55 7D 9C C4 48 9F 46 DD B7 A9 D1 B9 2D 5A 63"
    "10 8F 25 4A 71 EC 7B EA 32 15 BD";

static const uint8_t example_key[KEY_SIZE] = {
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
    0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f
};

static gcm_key test_key;

static const gcm_key *key_example(void)
{
    gcm_init(&test_key, example_key);
    return &test_key;
}

static void hdr_make(frame_hdr *h, uint8_t ctl, uint8_t cmd, const char *sid,
                     const char *did, uint16_t qsn, uint16_t msn, uint16_t fsn)
{
    h->ctl = ctl;
    h->cmd = cmd;
    frame_id_set(h->sid, sid);
    frame_id_set(h->did, did);
    h->qsn = qsn;
    h->msn = msn;
    h->fsn = fsn;
}

/* A payload with no 0x7E in it, so that a test can count garbage exactly. */
static void payload_fill(uint8_t *p, size_t n, unsigned seed)
{
    size_t i;

    for (i = 0; i < n; i++)
        p[i] = (uint8_t)((i * 7 + seed) % 0x7E);
}

/* A K frame from the DCU of payload_len bytes (protected when key). */
static size_t frame_make(uint8_t *out, size_t cap, size_t payload_len,
                         const gcm_key *key, uint16_t qsn)
{
    uint8_t payload[FRAME_DATA_MAX];
    frame_hdr h;

    hdr_make(&h, CTL_DIR_DCU | CTL_LAST, CMD_LP_RSP, "DCU00001", "FEP00001",
             qsn, 3, 1);
    payload_fill(payload, payload_len, qsn);
    return frame_encode(out, cap, &h, payload, payload_len, key, 1000 + qsn);
}

/* After a test edits a frame: the HCS and the CRC made right again. */
static void frame_fix(uint8_t *p, size_t total)
{
    p[HDR_HCS] = hcs_xor(p, HDR_HCS);
    put_u16be(p + total - FRAME_CRC_SIZE,
              crc16_x25(p, total - FRAME_CRC_SIZE));
}

/* ------------------------------------------------------------------------
 * Traces: what a receiver sees of a stream, to compare two ways of feeding it
 * ---------------------------------------------------------------------- */

#define TRACE_MAX 256                  /* > fuzz input / 30-byte bad header */

typedef struct rx_event {
    frame_result r;
    uint8_t ctl, cmd;
    uint8_t sid[FRAME_ID_SIZE], did[FRAME_ID_SIZE];
    uint16_t qsn, msn, fsn, len;
    size_t data_len;
    size_t offset;                      /* of the frame in the stream */
} rx_event;

typedef struct rx_trace {
    rx_event ev[TRACE_MAX];
    size_t n;
    unsigned long garbage;
    size_t held;
    size_t fed;                         /* stream bytes given to frame_rx */
    int overflow;
} rx_trace;

static void trace_add(rx_trace *t, frame_result r, const frame *f,
                      size_t offset)
{
    rx_event *e;

    if (t->n == TRACE_MAX) {
        t->overflow = 1;
        return;
    }
    e = &t->ev[t->n++];
    memset(e, 0, sizeof *e);
    e->r = r;
    e->ctl = f->ctl;
    e->cmd = f->cmd;
    memcpy(e->sid, f->sid, FRAME_ID_SIZE);
    memcpy(e->did, f->did, FRAME_ID_SIZE);
    e->qsn = f->qsn;
    e->msn = f->msn;
    e->fsn = f->fsn;
    e->len = f->len;
    e->data_len = f->data_len;
    e->offset = offset;
}

static int event_equal(const rx_event *a, const rx_event *b)
{
    return a->r == b->r && a->ctl == b->ctl && a->cmd == b->cmd &&
           memcmp(a->sid, b->sid, FRAME_ID_SIZE) == 0 &&
           memcmp(a->did, b->did, FRAME_ID_SIZE) == 0 && a->qsn == b->qsn &&
           a->msn == b->msn && a->fsn == b->fsn && a->len == b->len &&
           a->data_len == b->data_len && a->offset == b->offset;
}

static int trace_equal(const rx_trace *a, const rx_trace *b)
{
    size_t i;

    if (a->n != b->n || a->garbage != b->garbage || a->held != b->held ||
        a->overflow || b->overflow)
        return 0;
    for (i = 0; i < a->n; i++)
        if (!event_equal(&a->ev[i], &b->ev[i]))
            return 0;
    return 1;
}

/* A frame handed out by frame_rx lies inside rx->buf, whole. */
static int frame_inside_rx(const frame_rx *rx, const frame *f)
{
    const uint8_t *lo = rx->buf, *hi = rx->buf + rx->end;

    return f->raw >= lo && f->data == f->raw + FRAME_HEADER_SIZE &&
           f->data + f->data_len <= hi;
}

/* Takes frames until FRAME_NEED_MORE, as a session must before a read. */
static void rx_drain(frame_rx *rx, rx_trace *t)
{
    frame f;
    frame_result r;

    while ((r = frame_rx_next(rx, &f)) != FRAME_NEED_MORE) {
        CHECK(frame_inside_rx(rx, &f));
        CHECK(f.raw == rx->buf + rx->start);
        trace_add(t, r, &f, t->fed - (rx->end - rx->start));
        if (t->overflow)
            return;
    }
}

/* One "read" of n bytes; the buffer takes what fits, drained in between. */
static void rx_feed(frame_rx *rx, rx_trace *t, const uint8_t *p, size_t n)
{
    while (n > 0) {
        size_t room, take;
        uint8_t *dst = frame_rx_space(rx, &room);

        /* Every frame was taken: what is held is a partial frame, at the
         * front, and the room completes any frame. */
        CHECK(frame_rx_held(rx) < FRAME_SIZE_MAX);
        CHECK(dst == rx->buf + frame_rx_held(rx));
        CHECK(room > 0 && frame_rx_held(rx) + room >= FRAME_SIZE_MAX);
        if (room == 0)
            return;
        take = n < room ? n : room;
        memcpy(dst, p, take);
        frame_rx_commit(rx, take);
        t->fed += take;
        p += take;
        n -= take;
        rx_drain(rx, t);
        if (t->overflow)
            return;
    }
}

static void trace_begin(frame_rx *rx, rx_trace *t)
{
    frame_rx_reset(rx);
    memset(t, 0, sizeof *t);
}

static void trace_end(const frame_rx *rx, rx_trace *t)
{
    t->garbage = rx->garbage;
    t->held = frame_rx_held(rx);
}

static frame_rx trace_rx;               /* 2 KiB: kept off the stack */

static void trace_whole(rx_trace *t, const uint8_t *p, size_t n)
{
    trace_begin(&trace_rx, t);
    rx_feed(&trace_rx, t, p, n);
    trace_end(&trace_rx, t);
}

static void trace_split(rx_trace *t, const uint8_t *p, size_t n, size_t cut)
{
    trace_begin(&trace_rx, t);
    rx_feed(&trace_rx, t, p, cut);
    rx_feed(&trace_rx, t, p + cut, n - cut);
    trace_end(&trace_rx, t);
}

static void trace_bytewise(rx_trace *t, const uint8_t *p, size_t n)
{
    size_t i;

    trace_begin(&trace_rx, t);
    for (i = 0; i < n; i++)
        rx_feed(&trace_rx, t, p + i, 1);
    trace_end(&trace_rx, t);
}

/* ------------------------------------------------------------------------
 * Worked examples
 * ---------------------------------------------------------------------- */

static void test_example_plain_encode(void)
{
    uint8_t expect[64], out[64], payload[LP_REQ_SIZE];
    size_t n = test_unhex(example_plain_hex, expect, sizeof expect);
    frame_hdr h;

    CHECK_EQ(n, 40);
    hdr_make(&h, CTL_LAST, CMD_LP_REQ, "FEP00001", "DCU00001", 7, 0, 0);
    lp_req_put(payload, 0, 0);
    CHECK_EQ(frame_encode(out, sizeof out, &h, payload, sizeof payload, NULL,
                          0),
             40);
    CHECK_MEM(out, expect, 40);
}

/* Every field of the 6.1 frame held in buf[0..n). */
static void check_example_plain(const uint8_t *buf, size_t n)
{
    size_t consumed, skipped;
    uint32_t from = 1, to = 1;
    char id[FRAME_ID_SIZE + 1];
    frame f;

    CHECK_EQ(frame_scan(buf, n, &f, &consumed, &skipped), FRAME_READY);
    CHECK_EQ(consumed, 40);
    CHECK_EQ(skipped, 0);
    CHECK_EQ(f.ctl, CTL_LAST);
    CHECK_EQ(f.cmd, CMD_LP_REQ);
    CHECK_EQ(frame_id_str(f.sid, id), 8);
    CHECK(strcmp(id, "FEP00001") == 0);
    CHECK_EQ(frame_id_str(f.did, id), 8);
    CHECK(strcmp(id, "DCU00001") == 0);
    CHECK_EQ(f.qsn, 7);
    CHECK_EQ(f.msn, 0);
    CHECK_EQ(f.fsn, 0);
    CHECK_EQ(f.len, 10);
    CHECK(f.raw == buf);
    CHECK(f.data == buf + FRAME_HEADER_SIZE);
    CHECK_EQ(f.data_len, LP_REQ_SIZE);
    CHECK_EQ(payload_check(f.cmd, f.data, f.data_len), FEP_OK);
    lp_req_get(f.data, &from, &to);
    CHECK_EQ(from, 0);
    CHECK_EQ(to, 0);
}

static void test_example_plain_decode(void)
{
    uint8_t buf[64];

    check_example_plain(buf, test_unhex(example_plain_hex, buf, sizeof buf));
}

/* The plaintext of 6.2: count 1 and one LP record. */
static size_t example_sec_plain(uint8_t *p)
{
    lp_record r;

    memcpy(r.meter_id, "MTR000000001", METER_ID_SIZE);
    r.ts = 1767225600;
    r.import_wh = 123456;
    r.export_wh = 789;
    r.status = 0;
    p[0] = 1;
    lp_record_put(p, 0, &r);
    return payload_size(CMD_LP_RSP, 1);
}

static void test_example_sec_encode(void)
{
    uint8_t expect[128], out[128], plain[64];
    size_t n = test_unhex(example_sec_hex, expect, sizeof expect);
    size_t plain_len = example_sec_plain(plain);
    frame_hdr h;

    CHECK_EQ(n, 75);
    CHECK_EQ(plain_len, 27);
    hdr_make(&h, CTL_DIR_DCU | CTL_LAST, CMD_LP_RSP, "DCU00001", "FEP00001",
             7, 0, 0);
    CHECK_EQ(frame_encode(out, sizeof out, &h, plain, plain_len, key_example(),
                          1),
             75);
    CHECK_MEM(out, expect, 75);
}

/* Every field of the 6.2 frame held in buf[0..n), and its record. */
static void check_example_sec(const uint8_t *buf, size_t n)
{
    uint8_t plain[FRAME_DATA_MAX];
    size_t consumed, skipped, plain_len = 0;
    uint32_t ic = 0;
    lp_record r;
    frame f;

    CHECK_EQ(frame_scan(buf, n, &f, &consumed, &skipped), FRAME_READY);
    CHECK_EQ(consumed, 75);
    CHECK_EQ(skipped, 0);
    CHECK_EQ(f.ctl, CTL_DIR_DCU | CTL_SEC | CTL_LAST);
    CHECK_EQ(f.cmd, CMD_LP_RSP);
    CHECK_MEM(f.sid, "DCU00001", FRAME_ID_SIZE);
    CHECK_MEM(f.did, "FEP00001", FRAME_ID_SIZE);
    CHECK_EQ(f.qsn, 7);
    CHECK_EQ(f.len, 45);
    CHECK_EQ(f.data_len, 43);
    CHECK_EQ(frame_open(&f, key_example(), plain, &plain_len, &ic), FEP_OK);
    CHECK_EQ(plain_len, 27);
    CHECK_EQ(ic, 1);
    CHECK_EQ(payload_check(f.cmd, plain, plain_len), FEP_OK);
    CHECK_EQ(plain[0], 1);
    lp_record_get(plain, 0, &r);
    CHECK_MEM(r.meter_id, "MTR000000001", METER_ID_SIZE);
    CHECK_EQ(r.ts, 1767225600);
    CHECK_EQ(r.import_wh, 123456);
    CHECK_EQ(r.export_wh, 789);
    CHECK_EQ(r.status, 0);
}

static void test_example_sec_decode(void)
{
    uint8_t buf[128];

    check_example_sec(buf, test_unhex(example_sec_hex, buf, sizeof buf));
}

/* ------------------------------------------------------------------------
 * Every cut
 * ---------------------------------------------------------------------- */

/* Garbage (with a false SOF), the frame, the 6.1 frame, garbage. */
static size_t stream_around(uint8_t *out, const uint8_t *fr, size_t fr_len)
{
    static const uint8_t lead[] = { 0x00, 0x7E, 0x02, 0x55, 0x7E, 0x01, 0x41 };
    static const uint8_t tail[] = { 0x13, 0x37, 0x00, 0xFF };
    size_t n = 0;

    memcpy(out + n, lead, sizeof lead);
    n += sizeof lead;
    memcpy(out + n, fr, fr_len);
    n += fr_len;
    n += test_unhex(example_plain_hex, out + n, 64);
    memcpy(out + n, tail, sizeof tail);
    return n + sizeof tail;
}

static void check_every_cut(const uint8_t *fr, size_t fr_len)
{
    static uint8_t stream[FRAME_SIZE_MAX + 128];
    static rx_trace whole, split;
    size_t n = stream_around(stream, fr, fr_len), cut;

    trace_whole(&whole, stream, n);
    CHECK_EQ(whole.n, 2);
    CHECK_EQ(whole.ev[0].r, FRAME_READY);
    CHECK_EQ(whole.ev[0].len, fr_len - FRAME_HEADER_SIZE);
    CHECK_EQ(whole.ev[1].r, FRAME_READY);
    CHECK_EQ(whole.ev[1].cmd, CMD_LP_REQ);
    CHECK_EQ(whole.garbage, 7 + 4);
    CHECK_EQ(whole.held, 0);
    for (cut = 0; cut <= n; cut++) {
        trace_split(&split, stream, n, cut);
        if (!trace_equal(&whole, &split)) {
            fprintf(stderr, "cut at %zu of %zu differs\n", cut, n);
            CHECK(0);
            break;
        }
    }
    trace_bytewise(&split, stream, n);
    CHECK(trace_equal(&whole, &split));
}

static void test_split_plain(void)
{
    uint8_t fr[FRAME_SIZE_MAX];

    check_every_cut(fr, frame_make(fr, sizeof fr, 26, NULL, 1));
    CHECK_EQ(frame_make(fr, sizeof fr, PAYLOAD_MAX_PLAIN, NULL, 2),
             FRAME_SIZE_MAX);
    check_every_cut(fr, FRAME_SIZE_MAX);
}

static void test_split_sec(void)
{
    uint8_t fr[FRAME_SIZE_MAX];
    const gcm_key *key = key_example();

    check_every_cut(fr, test_unhex(example_sec_hex, fr, sizeof fr));
    CHECK_EQ(frame_make(fr, sizeof fr, PAYLOAD_MAX_SEC, key, 3),
             FRAME_SIZE_MAX);
    check_every_cut(fr, FRAME_SIZE_MAX);
}

/* Many frames and exact garbage, in one buffer and through frame_rx. */
static void test_several_frames(void)
{
    static uint8_t stream[16 * 2200];
    static const size_t sizes[] = { 0, 1, 26, 2016, 100, 0, 2000, 5, 2016, 77 };
    const gcm_key *key = key_example();
    static rx_trace whole, chunked;
    size_t n = 0, i, pos = 0, garbage = 0, consumed, skipped;
    frame f;

    for (i = 0; i < 10; i++) {
        size_t g = i % 4;               /* 0..3 garbage bytes before each */
        memset(stream + n, 0x20 + (int)i, g);
        n += g;
        garbage += g;
        n += frame_make(stream + n, sizeof stream - n, sizes[i],
                        i % 3 == 1 ? key : NULL, (uint16_t)i);
    }
    memset(stream + n, 0x7F, 9);
    n += 9;
    garbage += 9;
    for (i = 0; i < 10; i++) {
        CHECK_EQ(frame_scan(stream + pos, n - pos, &f, &consumed, &skipped),
                 FRAME_READY);
        CHECK_EQ(skipped, i % 4);
        CHECK_EQ(f.qsn, i);
        CHECK_EQ(f.data_len, sizes[i] + (f.ctl & CTL_SEC ? SEC_OVERHEAD : 0));
        CHECK_EQ(!!(f.ctl & CTL_SEC), i % 3 == 1);
        pos += consumed;
    }
    CHECK_EQ(frame_scan(stream + pos, n - pos, &f, &consumed, &skipped),
             FRAME_NEED_MORE);
    CHECK_EQ(consumed, 9);
    CHECK_EQ(skipped, 9);

    trace_whole(&whole, stream, n);
    CHECK_EQ(whole.n, 10);
    CHECK_EQ(whole.garbage, garbage);
    CHECK_EQ(whole.held, 0);
    for (i = 1; i < 300; i += 37) {
        size_t at = 0;
        trace_begin(&trace_rx, &chunked);
        while (at < n) {
            size_t k = (n - at < i) ? n - at : i;
            rx_feed(&trace_rx, &chunked, stream + at, k);
            at += k;
        }
        trace_end(&trace_rx, &chunked);
        CHECK(trace_equal(&whole, &chunked));
    }
}

/* ------------------------------------------------------------------------
 * Error paths
 * ---------------------------------------------------------------------- */

static void test_garbage_skipped(void)
{
    uint8_t buf[300];
    size_t consumed = 99, skipped = 99, i;
    frame f;

    CHECK_EQ(frame_scan(NULL, 0, &f, &consumed, &skipped), FRAME_NEED_MORE);
    CHECK_EQ(consumed, 0);
    CHECK_EQ(skipped, 0);
    for (i = 0; i < 200; i++)
        buf[i] = (uint8_t)(i == 0x7E ? 0x7F : i);
    CHECK_EQ(frame_scan(buf, 200, &f, &consumed, &skipped), FRAME_NEED_MORE);
    CHECK_EQ(consumed, 200);
    CHECK_EQ(skipped, 200);
    /* A lone SOF at the end may start a frame: kept. */
    buf[199] = FRAME_SOF;
    CHECK_EQ(frame_scan(buf, 200, &f, &consumed, &skipped), FRAME_NEED_MORE);
    CHECK_EQ(consumed, 199);
    CHECK_EQ(skipped, 199);
    /* Garbage then a frame. */
    i = test_unhex(example_plain_hex, buf + 199, 64);
    CHECK_EQ(frame_scan(buf, 199 + i, &f, &consumed, &skipped), FRAME_READY);
    CHECK_EQ(skipped, 199);
    CHECK_EQ(consumed, 199 + 40);
}

/* A header fault: which byte, what to XOR into it, whether HCS is redone
 * (so that exactly that field, not the HCS, makes the header invalid). */
typedef struct header_fault {
    size_t at;
    uint8_t flip;
    int fix_hcs;
} header_fault;

static const header_fault header_faults[] = {
    { HDR_VER, 0x03, 1 },               /* VER 0x01 -> 0x02 */
    { HDR_CTL, 0x01, 1 },               /* reserved CTL bit 0 */
    { HDR_CTL, 0x10, 1 },               /* reserved CTL bit 4 */
    { HDR_RSV, 0x01, 1 },
    { HDR_HCS, 0x01, 0 },
};

static void check_header_fault(const header_fault *hf)
{
    uint8_t buf[128];
    size_t n = test_unhex(example_plain_hex, buf, sizeof buf);
    size_t consumed, skipped, k;
    frame f;

    buf[hf->at] ^= hf->flip;
    if (hf->fix_hcs)
        frame_fix(buf, n);
    n += test_unhex(example_plain_hex, buf + n, sizeof buf - n);
    /* The bad frame's SOF is dropped, the rest of it has no SOF: all of
     * it is garbage, and the good frame behind it is found. */
    CHECK_EQ(frame_scan(buf, n, &f, &consumed, &skipped), FRAME_READY);
    CHECK_EQ(skipped, 40);
    CHECK_EQ(consumed, 80);
    CHECK(f.raw == buf + 40);
    /* A short header is rejected as soon as the bad field is in. */
    for (k = 1; k <= FRAME_HEADER_SIZE; k++) {
        size_t expect = k > hf->at ? k : 0;
        CHECK_EQ(frame_scan(buf, k, &f, &consumed, &skipped), FRAME_NEED_MORE);
        CHECK_EQ(skipped, expect);
        CHECK_EQ(consumed, expect);
    }
}

static void test_bad_header(void)
{
    size_t i;

    for (i = 0; i < sizeof header_faults / sizeof header_faults[0]; i++)
        check_header_fault(&header_faults[i]);
}

/* A false SOF right before a frame costs exactly its own bytes. */
static void test_false_sof(void)
{
    static const char *const lead[] = { "7E", "7E 01", "7E 01 20 6B",
                                        "7E 7E 7E", "7E 01 20 7E 01" };
    uint8_t buf[128];
    size_t i, consumed, skipped;
    frame f;

    for (i = 0; i < sizeof lead / sizeof lead[0]; i++) {
        size_t g = test_unhex(lead[i], buf, sizeof buf);
        size_t n = g + test_unhex(example_plain_hex, buf + g, sizeof buf - g);
        CHECK_EQ(frame_scan(buf, n, &f, &consumed, &skipped), FRAME_READY);
        CHECK_EQ(skipped, g);
        CHECK_EQ(consumed, n);
    }
}

static void test_bad_length(void)
{
    static const uint16_t lens[] = { 0, 1, FRAME_LEN_MAX + 1, 65535 };
    static rx_trace t;
    uint8_t buf[128];
    size_t i, consumed, skipped, n;
    frame f;

    for (i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        memcpy(buf, "\x01\x02\x03", 3);
        n = 3 + test_unhex(example_plain_hex, buf + 3, sizeof buf - 3);
        put_u16be(buf + 3 + HDR_LEN, lens[i]);
        buf[3 + HDR_HCS] = hcs_xor(buf + 3, HDR_HCS);
        /* Decided on the header alone, without waiting for the body. */
        CHECK_EQ(frame_scan(buf, 3 + 29, &f, &consumed, &skipped),
                 FRAME_NEED_MORE);
        CHECK_EQ(consumed, 3);
        memset(&f, 0, sizeof f);
        CHECK_EQ(frame_scan(buf, 3 + 30, &f, &consumed, &skipped),
                 FRAME_BAD_LENGTH);
        CHECK_EQ(skipped, 3);
        CHECK_EQ(consumed, 3 + 30);
        CHECK_EQ(f.len, lens[i]);
        CHECK_EQ(f.data_len, 0);
        CHECK_EQ(f.cmd, CMD_LP_REQ);
        CHECK_EQ(f.qsn, 7);
        CHECK_MEM(f.sid, "FEP00001", FRAME_ID_SIZE);
        CHECK(f.raw == buf + 3);
        /* Through frame_rx, a following frame is still found. */
        memcpy(buf + 33, buf + 3, 30);
        n = 33 + test_unhex(example_plain_hex, buf + 33, sizeof buf - 33);
        trace_whole(&t, buf, n);
        CHECK_EQ(t.n, 2);
        CHECK_EQ(t.ev[0].r, FRAME_BAD_LENGTH);
        CHECK_EQ(t.ev[0].len, lens[i]);
        CHECK_EQ(t.ev[1].r, FRAME_READY);
        CHECK_EQ(t.garbage, 3);
    }
}

/* LEN 2 (no DATA) is the shortest frame. */
static void test_len_min(void)
{
    uint8_t buf[64];
    size_t consumed, skipped;
    frame_hdr h;
    frame f;

    hdr_make(&h, CTL_LAST, CMD_ACK, "FEP00001", "DCU00001", 1, 2, 3);
    CHECK_EQ(frame_encode(buf, sizeof buf, &h, NULL, 0, NULL, 0), 32);
    CHECK_EQ(get_u16be(buf + HDR_LEN), FRAME_LEN_MIN);
    CHECK_EQ(frame_scan(buf, 31, &f, &consumed, &skipped), FRAME_NEED_MORE);
    CHECK_EQ(frame_scan(buf, 32, &f, &consumed, &skipped), FRAME_READY);
    CHECK_EQ(consumed, 32);
    CHECK_EQ(f.data_len, 0);
    CHECK_EQ(f.fsn, 3);
    CHECK_EQ(payload_check(f.cmd, f.data, f.data_len), FEP_OK);
}

static void test_bad_crc(void)
{
    static const size_t flips[] = { 39, 38, 35, 30, 3 };
    static rx_trace t;
    uint8_t buf[128];
    size_t i, n, consumed, skipped;
    frame f;

    for (i = 0; i < sizeof flips / sizeof flips[0]; i++) {
        n = test_unhex(example_plain_hex, buf, sizeof buf);
        buf[flips[i]] ^= 0x40;
        if (flips[i] < FRAME_HEADER_SIZE)      /* a header byte: HCS redone */
            buf[HDR_HCS] = hcs_xor(buf, HDR_HCS);
        n += test_unhex(example_plain_hex, buf + n, sizeof buf - n);
        CHECK_EQ(frame_scan(buf, 39, &f, &consumed, &skipped), FRAME_NEED_MORE);
        CHECK_EQ(consumed, 0);
        CHECK_EQ(frame_scan(buf, n, &f, &consumed, &skipped), FRAME_BAD_CRC);
        CHECK_EQ(skipped, 0);
        CHECK_EQ(consumed, 40);
        CHECK_EQ(f.qsn, 7);
        CHECK_EQ(f.len, 10);
        CHECK_EQ(f.data_len, 8);
        CHECK_EQ(frame_scan(buf + 40, n - 40, &f, &consumed, &skipped),
                 FRAME_READY);
        trace_whole(&t, buf, n);
        CHECK_EQ(t.n, 2);
        CHECK_EQ(t.ev[0].r, FRAME_BAD_CRC);
        CHECK_EQ(t.ev[1].r, FRAME_READY);
        CHECK_EQ(t.garbage, 0);
    }
}

/* ------------------------------------------------------------------------
 * Protection
 * ---------------------------------------------------------------------- */

static fep_err open_edited(const uint8_t *fr, size_t n, size_t at, uint8_t flip,
                           const gcm_key *key)
{
    uint8_t buf[256], plain[256];
    size_t consumed, skipped, plain_len = 77;
    uint32_t ic = 77;
    fep_err err;
    frame f;

    memcpy(buf, fr, n);
    buf[at] ^= flip;
    frame_fix(buf, n);
    CHECK_EQ(frame_scan(buf, n, &f, &consumed, &skipped), FRAME_READY);
    memset(plain, 0xA5, sizeof plain);
    err = frame_open(&f, key, plain, &plain_len, &ic);
    if (err != FEP_OK) {
        /* Nothing is released, nothing is set, on failure. */
        CHECK_EQ(plain[0], 0xA5);
        CHECK_EQ(plain_len, 77);
        CHECK_EQ(ic, 77);
    }
    return err;
}

static void test_open_roundtrip(void)
{
    uint8_t fr[FRAME_SIZE_MAX], plain[FRAME_DATA_MAX], expect[FRAME_DATA_MAX];
    static const size_t sizes[] = { 0, 1, 15, 16, 17, 100, PAYLOAD_MAX_SEC };
    const gcm_key *key = key_example();
    size_t i, consumed, skipped, plain_len;
    uint32_t ic;
    frame f;

    for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = frame_make(fr, sizeof fr, sizes[i], key, (uint16_t)i);
        CHECK_EQ(n, FRAME_HEADER_SIZE + SEC_OVERHEAD + sizes[i] + 2);
        CHECK_EQ(fr[HDR_CTL], CTL_DIR_DCU | CTL_SEC | CTL_LAST);
        CHECK_EQ(get_u32be(fr + FRAME_HEADER_SIZE), 1000 + i);
        CHECK_EQ(frame_scan(fr, n, &f, &consumed, &skipped), FRAME_READY);
        CHECK_EQ(frame_open(&f, key, plain, &plain_len, &ic), FEP_OK);
        CHECK_EQ(plain_len, sizes[i]);
        CHECK_EQ(ic, 1000 + i);
        payload_fill(expect, sizes[i], (unsigned)i);
        CHECK_MEM(plain, expect, sizes[i]);
    }
}

static void test_open_errors(void)
{
    const gcm_key *key = key_example();
    uint8_t fr[256], plain[256];
    size_t n, consumed, skipped, plain_len;
    uint32_t ic;
    gcm_key other;
    frame_hdr h;
    frame f;

    /* DATA shorter than IC + TAG: 0 and 15 bytes, SEC set by hand. */
    hdr_make(&h, CTL_DIR_DCU | CTL_SEC | CTL_LAST, CMD_LP_RSP, "DCU00001",
             "FEP00001", 1, 0, 0);
    memset(plain, 0, sizeof plain);
    for (n = 0; n < SEC_OVERHEAD; n += SEC_OVERHEAD - 1) {
        size_t total = frame_encode(fr, sizeof fr, &h, plain, n, NULL, 0);
        CHECK_EQ(frame_scan(fr, total, &f, &consumed, &skipped), FRAME_READY);
        CHECK_EQ(frame_open(&f, key, plain, &plain_len, &ic),
                 FEP_ERR_SECURITY);
    }

    n = frame_make(fr, sizeof fr, 40, key, 9);
    CHECK_EQ(open_edited(fr, n, 0, 0, key), FEP_OK);
    /* Tag (last and first byte), ciphertext, IC, and header fields (AAD). */
    CHECK_EQ(open_edited(fr, n, n - 3, 0x01, key), FEP_ERR_SECURITY);
    CHECK_EQ(open_edited(fr, n, n - 14, 0x80, key), FEP_ERR_SECURITY);
    CHECK_EQ(open_edited(fr, n, 34, 0x01, key), FEP_ERR_SECURITY);
    CHECK_EQ(open_edited(fr, n, 33, 0x01, key), FEP_ERR_SECURITY);
    CHECK_EQ(open_edited(fr, n, HDR_QSN, 0x01, key), FEP_ERR_SECURITY);
    CHECK_EQ(open_edited(fr, n, HDR_SID, 0x01, key), FEP_ERR_SECURITY);
    CHECK_EQ(open_edited(fr, n, HDR_CTL, CTL_LAST, key), FEP_ERR_SECURITY);
    gcm_init(&other, (const uint8_t *)"0123456789abcdef");
    CHECK_EQ(open_edited(fr, n, 0, 0, &other), FEP_ERR_SECURITY);
}

/* ------------------------------------------------------------------------
 * Guard pages: memory right after which any access crashes
 * ---------------------------------------------------------------------- */

typedef struct guard_area {
    uint8_t *base;
    size_t map_len;
    uint8_t *end;                       /* the first byte of the guard page */
} guard_area;

static int guard_open(guard_area *g, size_t usable)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t pages = (usable + page - 1) / page + 1;
    int fd = open("/dev/zero", O_RDWR);
    void *p;

    if (fd < 0)
        return -1;
    /* /dev/zero rather than MAP_ANONYMOUS, which POSIX 2008 lacks. */
    p = mmap(NULL, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return -1;
    g->base = p;
    g->map_len = pages * page;
    g->end = g->base + (pages - 1) * page;
    if (mprotect(g->end, page, PROT_NONE) != 0) {
        munmap(p, g->map_len);
        return -1;
    }
    return 0;
}

static void guard_close(guard_area *g)
{
    munmap(g->base, g->map_len);
}

/* Every cap below the frame size is refused, without a write past cap. */
static void check_encode_caps(const uint8_t *payload, size_t payload_len,
                              const gcm_key *key)
{
    uint8_t ref[FRAME_SIZE_MAX];
    guard_area g;
    frame_hdr h;
    size_t size, cap;

    hdr_make(&h, CTL_LAST, CMD_LP_RSP, "FEP00001", "DCU00001", 5, 6, 7);
    size = frame_encode(ref, sizeof ref, &h, payload, payload_len, key, 42);
    CHECK_EQ(size, FRAME_HEADER_SIZE + payload_len + FRAME_CRC_SIZE +
                       (key ? SEC_OVERHEAD : 0));
    if (guard_open(&g, FRAME_SIZE_MAX) != 0) {
        CHECK(!"guard page");
        return;
    }
    for (cap = 0; cap < size; cap++)
        CHECK_EQ(frame_encode(g.end - cap, cap, &h, payload, payload_len, key,
                              42),
                 0);
    CHECK_EQ(frame_encode(g.end - size, size, &h, payload, payload_len, key,
                          42),
             size);
    CHECK_MEM(g.end - size, ref, size);
    guard_close(&g);
}

static void test_encode_limits(void)
{
    static uint8_t payload[FRAME_DATA_MAX + 1];
    static uint8_t out[2 * FRAME_SIZE_MAX];
    const gcm_key *key = key_example();
    frame_hdr h;

    payload_fill(payload, sizeof payload, 0);
    check_encode_caps(payload, 0, NULL);
    check_encode_caps(payload, 8, NULL);
    check_encode_caps(payload, PAYLOAD_MAX_PLAIN, NULL);
    check_encode_caps(payload, 0, key);
    check_encode_caps(payload, 27, key);
    check_encode_caps(payload, PAYLOAD_MAX_SEC, key);

    hdr_make(&h, CTL_DIR_DCU, CMD_LP_RSP, "DCU00001", "FEP00001", 1, 1, 1);
    CHECK_EQ(frame_encode(out, sizeof out, &h, payload, PAYLOAD_MAX_PLAIN + 1,
                          NULL, 0),
             0);
    CHECK_EQ(frame_encode(out, sizeof out, &h, payload, PAYLOAD_MAX_SEC + 1,
                          key, 1),
             0);
    CHECK_EQ(frame_encode(out, sizeof out, &h, payload, PAYLOAD_MAX_SEC, key,
                          1),
             FRAME_SIZE_MAX);
    CHECK_EQ(out[HDR_CTL], CTL_DIR_DCU | CTL_SEC);
    CHECK_EQ(frame_encode(out, sizeof out, &h, payload, PAYLOAD_MAX_PLAIN, NULL,
                          0),
             FRAME_SIZE_MAX);
    CHECK_EQ(out[HDR_CTL], CTL_DIR_DCU);
    CHECK_EQ(get_u16be(out + HDR_LEN), FRAME_LEN_MAX);
    CHECK_EQ(out[HDR_RSV], 0);
    CHECK_EQ(out[HDR_VER], FRAME_VERSION);
    CHECK_EQ(out[HDR_HCS], hcs_xor(out, HDR_HCS));
}

/* ------------------------------------------------------------------------
 * Payload codecs, ids, names
 * ---------------------------------------------------------------------- */

typedef struct check_case {
    uint8_t cmd;
    size_t len;
    uint8_t count;                      /* p[0] */
    fep_err want;
} check_case;

static const check_case check_cases[] = {
    { CMD_LP_REQ, 8, 0, FEP_OK },
    { CMD_LP_REQ, 0, 0, FEP_ERR_LENGTH },
    { CMD_LP_REQ, 7, 0, FEP_ERR_LENGTH },
    { CMD_LP_REQ, 9, 0, FEP_ERR_LENGTH },
    { CMD_DCU_STATUS_REQ, 0, 0, FEP_OK },
    { CMD_DCU_STATUS_REQ, 1, 0, FEP_ERR_LENGTH },
    { CMD_METER_STATUS_REQ, 0, 0, FEP_OK },
    { CMD_METER_STATUS_REQ, 1, 0, FEP_ERR_LENGTH },
    { CMD_METER_CHANGE_REQ, 0, 0, FEP_OK },
    { CMD_METER_CHANGE_REQ, 2, 0, FEP_ERR_LENGTH },
    { CMD_ACK, 0, 0, FEP_OK },
    { CMD_ACK, 1, 0, FEP_ERR_LENGTH },
    { CMD_NACK, 1, 3, FEP_OK },
    { CMD_NACK, 0, 0, FEP_ERR_LENGTH },
    { CMD_NACK, 2, 3, FEP_ERR_LENGTH },
    { CMD_DCU_STATUS_RSP, 14, 0, FEP_OK },
    { CMD_DCU_STATUS_RSP, 13, 0, FEP_ERR_LENGTH },
    { CMD_DCU_STATUS_RSP, 15, 0, FEP_ERR_LENGTH },
    { CMD_LP_RSP, 0, 0, FEP_ERR_LENGTH },
    { CMD_LP_RSP, 1, 0, FEP_OK },
    { CMD_LP_RSP, 1, 1, FEP_ERR_LENGTH },
    { CMD_LP_RSP, 27, 1, FEP_OK },
    { CMD_LP_RSP, 26, 1, FEP_ERR_LENGTH },
    { CMD_LP_RSP, 28, 1, FEP_ERR_LENGTH },
    { CMD_LP_RSP, 27, 2, FEP_ERR_LENGTH },
    { CMD_LP_RSP, 1 + 77 * 26, 77, FEP_OK },
    { CMD_LP_RSP, 1 + 255 * 26, 255, FEP_OK },
    { CMD_METER_STATUS_RSP, 0, 0, FEP_ERR_LENGTH },
    { CMD_METER_STATUS_RSP, 1, 0, FEP_OK },
    { CMD_METER_STATUS_RSP, 18, 1, FEP_OK },
    { CMD_METER_STATUS_RSP, 17, 1, FEP_ERR_LENGTH },
    { CMD_METER_STATUS_RSP, 19, 1, FEP_ERR_LENGTH },
    { CMD_METER_STATUS_RSP, 1 + 118 * 17, 118, FEP_OK },
    { CMD_METER_CHANGE_RSP, 0, 0, FEP_ERR_LENGTH },
    { CMD_METER_CHANGE_RSP, 1, 0, FEP_OK },
    { CMD_METER_CHANGE_RSP, 35, 2, FEP_OK },
    { CMD_METER_CHANGE_RSP, 35, 1, FEP_ERR_LENGTH },
    { CMD_METER_CHANGE_RSP, 1 + 255 * 17, 255, FEP_OK },
    { 'x', 0, 0, FEP_ERR_COMMAND },
    { 0x00, 8, 0, FEP_ERR_COMMAND },
    { 'B', 1, 0, FEP_ERR_COMMAND },
    { 0xFF, 14, 0, FEP_ERR_COMMAND },
};

static void test_payload_check(void)
{
    static uint8_t p[1 + 255 * LP_RECORD_SIZE];
    size_t i;

    for (i = 0; i < sizeof check_cases / sizeof check_cases[0]; i++) {
        const check_case *c = &check_cases[i];
        p[0] = c->count;
        if (payload_check(c->cmd, p, c->len) != c->want) {
            fprintf(stderr, "case %zu: cmd %c len %zu\n", i, c->cmd, c->len);
            CHECK_EQ(payload_check(c->cmd, p, c->len), c->want);
        }
    }
}

static void test_payload_size(void)
{
    static const uint8_t cmds[] = { 'k', 's', 'm', 'n', 'K', 'S', 'M', 'N',
                                    'A', 'a' };
    static uint8_t p[1 + 255 * LP_RECORD_SIZE];
    unsigned count;
    size_t i;

    CHECK_EQ(payload_size(CMD_LP_REQ, 0), LP_REQ_SIZE);
    CHECK_EQ(payload_size(CMD_DCU_STATUS_REQ, 5), 0);
    CHECK_EQ(payload_size(CMD_ACK, 0), 0);
    CHECK_EQ(payload_size(CMD_NACK, 0), NACK_SIZE);
    CHECK_EQ(payload_size(CMD_DCU_STATUS_RSP, 0), DCU_STATUS_SIZE);
    CHECK_EQ(payload_size(CMD_LP_RSP, 3), 1 + 3 * LP_RECORD_SIZE);
    CHECK_EQ(payload_size(CMD_METER_STATUS_RSP, 2), 1 + 2 * METER_ITEM_SIZE);
    CHECK_EQ(payload_size(CMD_METER_CHANGE_RSP, 0), 1);
    CHECK_EQ(payload_size('x', 3), 0);
    CHECK(payload_size(CMD_LP_RSP, LP_RECORDS_MAX_PLAIN) <= PAYLOAD_MAX_PLAIN);
    CHECK(payload_size(CMD_LP_RSP, LP_RECORDS_MAX_SEC + 1) > PAYLOAD_MAX_SEC);
    CHECK(payload_size(CMD_METER_STATUS_RSP, METER_ITEMS_MAX_SEC) <=
          PAYLOAD_MAX_SEC);
    /* The two agree for every command and count. */
    for (i = 0; i < sizeof cmds; i++)
        for (count = 0; count <= ITEM_COUNT_MAX; count++) {
            p[0] = (uint8_t)count;
            CHECK_EQ(payload_check(cmds[i], p, payload_size(cmds[i], count)),
                     FEP_OK);
        }
}

static void test_codecs(void)
{
    static const uint8_t lp_bytes[LP_RECORD_SIZE] = {
        'M', 'T', 'R', '0', '0', '0', '0', '0', '0', '0', '4', '2',
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
        0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E
    };
    static const uint8_t item_bytes[METER_ITEM_SIZE] = {
        'M', 'T', 'R', '0', '0', '0', '0', '0', '0', '0', '4', '2',
        0x03, 0x0A, 0x0B, 0x0C, 0x0D
    };
    static const uint8_t seq[14] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                     13, 14 };
    uint8_t p[128], zero[128];
    lp_record r, r2;
    meter_item m, m2;
    dcu_status s, s2;
    uint32_t from, to;

    memset(zero, 0, sizeof zero);
    memset(p, 0, sizeof p);
    memcpy(r.meter_id, "MTR000000042", METER_ID_SIZE);
    r.ts = 0x01020304;
    r.import_wh = 0x05060708;
    r.export_wh = 0x090A0B0C;
    r.status = 0x0D0E;
    lp_record_put(p, 1, &r);
    CHECK_MEM(p + 1 + LP_RECORD_SIZE, lp_bytes, LP_RECORD_SIZE);
    CHECK_MEM(p, zero, 1 + LP_RECORD_SIZE);
    CHECK_MEM(p + 1 + 2 * LP_RECORD_SIZE, zero, LP_RECORD_SIZE);
    lp_record_get(p, 1, &r2);
    CHECK_MEM(r2.meter_id, r.meter_id, METER_ID_SIZE);
    CHECK_EQ(r2.ts, r.ts);
    CHECK_EQ(r2.import_wh, r.import_wh);
    CHECK_EQ(r2.export_wh, r.export_wh);
    CHECK_EQ(r2.status, r.status);

    memset(p, 0, sizeof p);
    memcpy(m.meter_id, "MTR000000042", METER_ID_SIZE);
    m.code = 3;
    m.ts = 0x0A0B0C0D;
    meter_item_put(p, 2, &m);
    CHECK_MEM(p + 1 + 2 * METER_ITEM_SIZE, item_bytes, METER_ITEM_SIZE);
    CHECK_MEM(p, zero, 1 + 2 * METER_ITEM_SIZE);
    meter_item_get(p, 2, &m2);
    CHECK_MEM(m2.meter_id, m.meter_id, METER_ID_SIZE);
    CHECK_EQ(m2.code, 3);
    CHECK_EQ(m2.ts, m.ts);

    s.fw_version = 0x0102;
    s.uptime_s = 0x03040506;
    s.clock = 0x0708090A;
    s.meter_count = 0x0B0C;
    s.flags = 0x0D0E;
    dcu_status_put(p, &s);
    CHECK_MEM(p, seq, DCU_STATUS_SIZE);
    dcu_status_get(p, &s2);
    CHECK_EQ(s2.fw_version, s.fw_version);
    CHECK_EQ(s2.uptime_s, s.uptime_s);
    CHECK_EQ(s2.clock, s.clock);
    CHECK_EQ(s2.meter_count, s.meter_count);
    CHECK_EQ(s2.flags, s.flags);

    lp_req_put(p, 0x01020304, 0x05060708);
    CHECK_MEM(p, seq, LP_REQ_SIZE);
    lp_req_get(p, &from, &to);
    CHECK_EQ(from, 0x01020304);
    CHECK_EQ(to, 0x05060708);
}

static void test_ids(void)
{
    uint8_t id[FRAME_ID_SIZE];
    char s[FRAME_ID_SIZE + 1];

    frame_id_set(id, "AB");
    CHECK_MEM(id, "AB      ", FRAME_ID_SIZE);
    CHECK_EQ(frame_id_str(id, s), 2);
    CHECK(strcmp(s, "AB") == 0);
    frame_id_set(id, "FEP000012345");
    CHECK_MEM(id, "FEP00001", FRAME_ID_SIZE);
    CHECK_EQ(frame_id_str(id, s), 8);
    CHECK(strcmp(s, "FEP00001") == 0);
    frame_id_set(id, "A B");
    CHECK_EQ(frame_id_str(id, s), 3);
    CHECK(strcmp(s, "A B") == 0);
    frame_id_set(id, "");
    CHECK_MEM(id, "        ", FRAME_ID_SIZE);
    CHECK_EQ(frame_id_str(id, s), 0);
    CHECK_EQ(s[0], '\0');
}

static void test_names(void)
{
    static const fep_err all[] = {
        FEP_OK, FEP_ERR_CRC, FEP_ERR_HEADER, FEP_ERR_LENGTH, FEP_ERR_SECURITY,
        FEP_ERR_REPLAY, FEP_ERR_UNKNOWN, FEP_ERR_COMMAND, FEP_ERR_SEQUENCE,
        FEP_ERR_STORE, FEP_ERR_BUSY, FEP_ERR_GARBAGE, FEP_ERR_TIMEOUT,
        FEP_ERR_IO, FEP_ERR_CLOSED, FEP_ERR_NACKED, FEP_ERR_NOSPACE,
        FEP_ERR_CONNECT, FEP_ERR_SHUTDOWN, FEP_ERR_NO_IC
    };
    static const char *const nack[] = { "other", "crc", "header", "length",
                                        "security", "replay", "unknown",
                                        "command", "sequence", "store",
                                        "busy", "other" };
    const char *fallback = fep_strerror((fep_err)0x7F);
    size_t i, j;

    CHECK(fallback != NULL && fallback[0] != '\0');
    CHECK(strcmp(fep_strerror(FEP_ERR_CRC), "CRC mismatch") == 0);
    for (i = 0; i < sizeof all / sizeof all[0]; i++) {
        const char *s = fep_strerror(all[i]);
        CHECK(s != NULL && s[0] != '\0' && strcmp(s, fallback) != 0);
        for (j = 0; j < i; j++)
            CHECK(strcmp(s, fep_strerror(all[j])) != 0);
    }
    for (i = 0; i < sizeof nack / sizeof nack[0]; i++)
        CHECK(strcmp(fep_nack_name((unsigned)i), nack[i]) == 0);
    CHECK(strcmp(fep_nack_name(0x20), "other") == 0);
    CHECK(strcmp(fep_nack_name(~0u), "other") == 0);
}

/* ------------------------------------------------------------------------
 * The receive buffer
 * ---------------------------------------------------------------------- */

static void rx_put(frame_rx *rx, const uint8_t *p, size_t n)
{
    size_t room;
    uint8_t *dst = frame_rx_space(rx, &room);

    CHECK(n <= room);
    memcpy(dst, p, n);
    frame_rx_commit(rx, n);
}

static void test_rx_buffer(void)
{
    static frame_rx rx;
    static uint8_t a[FRAME_SIZE_MAX], b[FRAME_SIZE_MAX];
    uint8_t small[64];
    size_t room, n_small = test_unhex(example_plain_hex, small, sizeof small);
    uint8_t *space;
    frame f;

    frame_make(a, sizeof a, PAYLOAD_MAX_PLAIN, NULL, 1);
    frame_make(b, sizeof b, PAYLOAD_MAX_PLAIN, NULL, 2);
    frame_rx_reset(&rx);
    CHECK(frame_rx_space(&rx, &room) == rx.buf);
    CHECK_EQ(room, RX_BUF_SIZE);
    CHECK_EQ(RX_BUF_SIZE, FRAME_SIZE_MAX);  /* one largest frame, no more */
    CHECK_EQ(frame_rx_held(&rx), 0);

    /* A largest frame left untaken fills the buffer: no room until taken. */
    rx_put(&rx, a, FRAME_SIZE_MAX);
    frame_rx_space(&rx, &room);
    CHECK_EQ(room, 0);
    CHECK_EQ(frame_rx_next(&rx, &f), FRAME_READY);
    CHECK_EQ(f.qsn, 1);
    CHECK(f.raw == rx.buf);
    CHECK_EQ(frame_rx_held(&rx), 0);
    CHECK_EQ(frame_rx_next(&rx, &f), FRAME_NEED_MORE);
    CHECK(frame_rx_space(&rx, &room) == rx.buf);
    CHECK_EQ(room, RX_BUF_SIZE);

    /* A small frame and most of a largest one fill the buffer; once the
     * small one is taken, the partial one moves to the front and the room
     * is exactly what it still lacks. */
    rx_put(&rx, small, n_small);
    rx_put(&rx, b, FRAME_SIZE_MAX - n_small);
    frame_rx_space(&rx, &room);
    CHECK_EQ(room, 0);
    CHECK_EQ(frame_rx_next(&rx, &f), FRAME_READY);
    CHECK_MEM(f.raw, small, n_small);       /* still valid until next call */
    CHECK_EQ(frame_rx_next(&rx, &f), FRAME_NEED_MORE);
    CHECK_EQ(frame_rx_held(&rx), FRAME_SIZE_MAX - n_small);
    space = frame_rx_space(&rx, &room);
    CHECK(space == rx.buf + FRAME_SIZE_MAX - n_small);
    CHECK_EQ(room, n_small);
    CHECK_MEM(rx.buf, b, FRAME_SIZE_MAX - n_small);
    rx_put(&rx, b + FRAME_SIZE_MAX - n_small, n_small);
    CHECK_EQ(frame_rx_next(&rx, &f), FRAME_READY);
    CHECK_EQ(f.qsn, 2);
    CHECK(f.raw == rx.buf);
    CHECK_EQ(frame_rx_next(&rx, &f), FRAME_NEED_MORE);

    /* Any partial frame behind a taken one moves to the front: held and
     * room together always make a largest frame. */
    frame_rx_reset(&rx);
    rx_put(&rx, small, n_small);
    rx_put(&rx, small, 10);
    CHECK_EQ(frame_rx_next(&rx, &f), FRAME_READY);
    CHECK_EQ(frame_rx_next(&rx, &f), FRAME_NEED_MORE);
    CHECK_EQ(frame_rx_held(&rx), 10);
    space = frame_rx_space(&rx, &room);
    CHECK(space == rx.buf + 10);
    CHECK_EQ(room, RX_BUF_SIZE - 10);
    CHECK_MEM(rx.buf, small, 10);

    /* Garbage is counted and dropped at once; the count saturates. */
    frame_rx_reset(&rx);
    rx_put(&rx, (const uint8_t *)"garbage", 7);
    CHECK_EQ(frame_rx_next(&rx, &f), FRAME_NEED_MORE);
    CHECK_EQ(rx.garbage, 7);
    CHECK_EQ(frame_rx_held(&rx), 0);
    rx.garbage = UINT32_MAX - 3;
    rx_put(&rx, (const uint8_t *)"garbage", 7);
    CHECK_EQ(frame_rx_next(&rx, &f), FRAME_NEED_MORE);
    CHECK_EQ(rx.garbage, UINT32_MAX);
}

/* ------------------------------------------------------------------------
 * Mutation fuzz
 * ---------------------------------------------------------------------- */

#define FUZZ_INPUT_MAX 6144
#define FUZZ_CORPUS 8

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;                    /* xorshift64* */

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static size_t rng_below(uint64_t *s, size_t n)
{
    return n ? (size_t)(rng_next(s) >> 33) % n : 0;
}

/*
 * CRC-16/X-25 four bits at a time, independent of crypto.c's byte table, for
 * the oracle: the table is made bit by bit from the reflected polynomial.
 */
static uint16_t crc_nibble(const uint8_t *p, size_t n)
{
    static uint16_t table[16];
    unsigned crc = 0xFFFF;
    size_t i;

    if (table[1] == 0)
        for (i = 0; i < 16; i++) {
            unsigned c = (unsigned)i;
            int b;
            for (b = 0; b < 4; b++)
                c = (c & 1) ? (c >> 1) ^ 0x8408 : c >> 1;
            table[i] = (uint16_t)c;
        }
    for (i = 0; i < n; i++) {
        crc = (crc >> 4) ^ table[(crc ^ p[i]) & 0xF];
        crc = (crc >> 4) ^ table[(crc ^ (p[i] >> 4)) & 0xF];
    }
    return (uint16_t)(crc ^ 0xFFFF);
}

/* The scanning rules of PROTOCOL.md written the slow, obvious way. */
static frame_result ref_scan(const uint8_t *b, size_t len, size_t *consumed,
                             size_t *skipped)
{
    size_t s, flen;
    unsigned x;
    int i;

    for (s = 0; s < len; s++) {
        size_t a = len - s;
        if (b[s] != 0x7E || (a > 1 && b[s + 1] != 0x01) ||
            (a > 2 && (b[s + 2] & 0x1F)) || (a > 26 && b[s + 26] != 0))
            continue;
        *skipped = *consumed = s;
        if (a < 30)
            return FRAME_NEED_MORE;
        for (x = 0, i = 0; i < 29; i++)
            x ^= b[s + i];
        if (x != b[s + 29])
            continue;
        flen = (size_t)b[s + 27] << 8 | b[s + 28];
        if (flen < 2 || flen > 2018) {
            *consumed = s + 30;
            return FRAME_BAD_LENGTH;
        }
        if (a < 30 + flen)
            return FRAME_NEED_MORE;
        *consumed = s + 30 + flen;
        return crc_nibble(b + s, 28 + flen) == get_u16be(b + s + 28 + flen)
                   ? FRAME_READY : FRAME_BAD_CRC;
    }
    *skipped = *consumed = len;
    return FRAME_NEED_MORE;
}

typedef struct fuzz_state {
    uint8_t corpus[FUZZ_CORPUS][FRAME_SIZE_MAX];
    size_t corpus_len[FUZZ_CORPUS];
    uint8_t in[FUZZ_INPUT_MAX];
    size_t n;
    uint64_t rng;
    unsigned long iter;
    unsigned long ready, bad_crc, bad_len, opened;
    int reported;
    rx_trace scan_trace, rx_trace_;
} fuzz_state;

static fuzz_state fz;                   /* 40 KiB: kept off the stack */

#define FUZZ_CHECK(c) do { if (!(c)) fuzz_failed(__LINE__, #c); } while (0)

static void fuzz_failed(int line, const char *expr)
{
    size_t i;

    test_check(0, __FILE__, line, expr);
    if (fz.reported++)
        return;
    fprintf(stderr, "fuzz iteration %lu, input of %zu bytes:", fz.iter, fz.n);
    for (i = 0; i < fz.n && i < 256; i++)
        fprintf(stderr, "%s%02X", i % 32 ? " " : "\n  ", fz.in[i]);
    fprintf(stderr, "%s\n", fz.n > 256 ? " ..." : "");
}

static void fuzz_corpus(void)
{
    const gcm_key *key = key_example();
    static const size_t sizes[FUZZ_CORPUS] = { 8, 0, 27, PAYLOAD_MAX_PLAIN,
                                               PAYLOAD_MAX_SEC, 100, 14, 1 };
    size_t i;

    for (i = 0; i < FUZZ_CORPUS; i++)
        fz.corpus_len[i] = frame_make(fz.corpus[i], FRAME_SIZE_MAX, sizes[i],
                                      (i % 2) ? key : NULL, (uint16_t)i);
    fz.corpus_len[0] = test_unhex(example_plain_hex, fz.corpus[0],
                                  FRAME_SIZE_MAX);
    fz.corpus_len[2] = test_unhex(example_sec_hex, fz.corpus[2],
                                  FRAME_SIZE_MAX);
}

static void fuzz_append(const uint8_t *p, size_t n)
{
    if (n > FUZZ_INPUT_MAX - fz.n)
        n = FUZZ_INPUT_MAX - fz.n;
    memcpy(fz.in + fz.n, p, n);
    fz.n += n;
}

/* Redoes the HCS (and sometimes the CRC) of a header at a random SOF, so
 * that mutated headers get past the HCS and reach the later checks. */
static void fuzz_fix_at_sof(void)
{
    static const uint16_t lens[] = { 0, 1, 2, 3, 18, 2018, 2019, 4096, 65535 };
    size_t at = rng_below(&fz.rng, fz.n), sof, flen;
    const uint8_t *p = fz.n ? memchr(fz.in + at, FRAME_SOF, fz.n - at) : NULL;
    uint8_t *h;

    if (p == NULL)
        return;
    sof = (size_t)(p - fz.in);
    if (sof + FRAME_HEADER_SIZE > fz.n)
        return;
    h = fz.in + sof;
    if (rng_below(&fz.rng, 3) == 0) {
        size_t k = rng_below(&fz.rng, sizeof lens / sizeof lens[0]);
        put_u16be(h + HDR_LEN, lens[k]);
    }
    h[HDR_HCS] = hcs_xor(h, HDR_HCS);
    flen = get_u16be(h + HDR_LEN);
    if (flen >= FRAME_LEN_MIN && sof + FRAME_HEADER_SIZE + flen <= fz.n &&
        rng_below(&fz.rng, 2))
        frame_fix(h, FRAME_HEADER_SIZE + flen);
}

static void fuzz_mutate_once(void)
{
    static const uint8_t special[] = { 0x00, 0x01, 0x02, 0x07, 0x1F, 0x20,
                                       0x7E, 0x7F, 0x80, 0xE2, 0xE3, 0xFF };
    size_t at = rng_below(&fz.rng, fz.n), k;
    const uint8_t *src;

    switch (rng_below(&fz.rng, 9)) {
    case 0:                             /* bit flip */
        if (fz.n)
            fz.in[at] ^= (uint8_t)(1u << rng_below(&fz.rng, 8));
        break;
    case 1:                             /* byte set */
        if (fz.n)
            fz.in[at] = special[rng_below(&fz.rng, sizeof special)];
        break;
    case 2:                             /* insertion */
        if (fz.n < FUZZ_INPUT_MAX) {
            memmove(fz.in + at + 1, fz.in + at, fz.n - at);
            fz.in[at] = (uint8_t)rng_next(&fz.rng);
            fz.n++;
        }
        break;
    case 3:                             /* deletion of 1..8 bytes */
        k = 1 + rng_below(&fz.rng, 8);
        if (k > fz.n - at)
            k = fz.n - at;
        memmove(fz.in + at, fz.in + at + k, fz.n - at - k);
        fz.n -= k;
        break;
    case 4:                             /* truncation */
        fz.n = at;
        break;
    case 5:                             /* splice: a piece of a valid frame */
        k = rng_below(&fz.rng, FUZZ_CORPUS);
        src = fz.corpus[k];
        {
            size_t from = rng_below(&fz.rng, fz.corpus_len[k]);
            size_t len = 1 + rng_below(&fz.rng, fz.corpus_len[k] - from);
            if (len > FUZZ_INPUT_MAX - at)
                len = FUZZ_INPUT_MAX - at;
            memcpy(fz.in + at, src + from, len);
            if (at + len > fz.n)
                fz.n = at + len;
        }
        break;
    case 6:                             /* a random LEN at a random place */
        if (fz.n >= 2 && at + 2 <= fz.n)
            put_u16be(fz.in + at, (uint16_t)rng_next(&fz.rng));
        break;
    default:
        fuzz_fix_at_sof();
        break;
    }
}

static void fuzz_make_input(void)
{
    size_t frames = 1 + rng_below(&fz.rng, 3), i, m;

    fz.n = 0;
    if (rng_below(&fz.rng, 4) == 0)
        for (i = rng_below(&fz.rng, 40); i > 0; i--) {
            uint8_t g = (uint8_t)rng_next(&fz.rng);
            fuzz_append(&g, 1);
        }
    for (i = 0; i < frames; i++) {
        size_t k = rng_below(&fz.rng, FUZZ_CORPUS);
        fuzz_append(fz.corpus[k], fz.corpus_len[k]);
    }
    for (m = 1 + rng_below(&fz.rng, 4); m > 0; m--)
        fuzz_mutate_once();
}

/* Checks one result of frame_scan over b[0..len) against the rules. */
static void fuzz_check_result(const uint8_t *b, size_t len, frame_result r,
                              const frame *f, size_t consumed, size_t skipped)
{
    size_t ref_consumed, ref_skipped;
    frame_result ref = ref_scan(b, len, &ref_consumed, &ref_skipped);

    FUZZ_CHECK(r == ref);
    FUZZ_CHECK(consumed == ref_consumed);
    FUZZ_CHECK(skipped == ref_skipped);
    FUZZ_CHECK(consumed <= len && skipped <= consumed);
    /* Progress: a call that consumes nothing waits at a SOF or at the end. */
    FUZZ_CHECK(consumed > 0 || (r == FRAME_NEED_MORE &&
                                (len == 0 || b[0] == FRAME_SOF)));
    if (r == FRAME_NEED_MORE)
        return;
    FUZZ_CHECK(f->raw == b + skipped && f->data == f->raw + FRAME_HEADER_SIZE);
    if (r == FRAME_BAD_LENGTH) {
        FUZZ_CHECK(consumed == skipped + FRAME_HEADER_SIZE);
        FUZZ_CHECK(f->len < FRAME_LEN_MIN || f->len > FRAME_LEN_MAX);
        return;
    }
    FUZZ_CHECK(consumed == skipped + FRAME_HEADER_SIZE + f->len);
    FUZZ_CHECK(f->data_len == (size_t)f->len - FRAME_CRC_SIZE);
    FUZZ_CHECK(f->raw[HDR_HCS] == hcs_xor(f->raw, HDR_HCS));
    FUZZ_CHECK((crc16_x25(f->raw, FRAME_HEADER_SIZE + f->data_len) ==
                get_u16be(f->data + f->data_len)) == (r == FRAME_READY));
}

/* What the frame's consumer does with it, to catch over-reads there too. */
static void fuzz_consume(const frame *f)
{
    uint8_t plain[FRAME_DATA_MAX];
    size_t plain_len;
    uint32_t ic;

    (void)payload_check(f->cmd, f->data, f->data_len);
    /* GCM is the slow part: opened only for short frames. */
    if ((f->ctl & CTL_SEC) && f->data_len <= 64) {
        fz.opened++;
        if (frame_open(f, &test_key, plain, &plain_len, &ic) == FEP_OK)
            FUZZ_CHECK(plain_len == f->data_len - SEC_OVERHEAD);
    }
}

/* The whole input by frame_scan, as one buffer at the guard page. */
static void fuzz_scan(const uint8_t *b, size_t n)
{
    size_t pos = 0, consumed, skipped;
    unsigned long garbage = 0;
    frame_result r;
    frame f;

    memset(&fz.scan_trace, 0, sizeof fz.scan_trace);
    for (;;) {
        r = frame_scan(b + pos, n - pos, &f, &consumed, &skipped);
        fuzz_check_result(b + pos, n - pos, r, &f, consumed, skipped);
        garbage += skipped;
        if (consumed > n - pos)
            break;
        pos += consumed;
        if (r == FRAME_NEED_MORE)
            break;
        trace_add(&fz.scan_trace, r, &f, (size_t)(f.raw - b));
        fz.ready += r == FRAME_READY;
        fz.bad_crc += r == FRAME_BAD_CRC;
        fz.bad_len += r == FRAME_BAD_LENGTH;
        if (r == FRAME_READY)
            fuzz_consume(&f);
    }
    fz.scan_trace.garbage = garbage;
    fz.scan_trace.held = n - pos;
}

/* The same input through frame_rx, cut into random reads. */
static void fuzz_rx(const uint8_t *b, size_t n)
{
    size_t at = 0;

    trace_begin(&trace_rx, &fz.rx_trace_);
    while (at < n) {
        size_t k = 1 + rng_below(&fz.rng, n - at);
        if (rng_below(&fz.rng, 4) == 0 && k > 64)
            k = 1 + rng_below(&fz.rng, 64);
        rx_feed(&trace_rx, &fz.rx_trace_, b + at, k);
        at += k;
    }
    trace_end(&trace_rx, &fz.rx_trace_);
    FUZZ_CHECK(trace_equal(&fz.scan_trace, &fz.rx_trace_));
}

static unsigned long env_ulong(const char *name, unsigned long dflt)
{
    const char *s = getenv(name);
    char *end;
    unsigned long v;

    if (s == NULL || *s == '\0')
        return dflt;
    v = strtoul(s, &end, 0);
    return *end == '\0' ? v : dflt;
}

static void test_fuzz(void)
{
    unsigned long iterations = env_ulong("FUZZ_ITERATIONS", 200000);
    guard_area g;

    CHECK_EQ(crc_nibble((const uint8_t *)"123456789", 9), 0x906E);
    memset(&fz, 0, sizeof fz);
    fz.rng = env_ulong("FUZZ_SEED", 0x9E3779B97F4A7C15ULL & 0xFFFFFFFFUL);
    if (fz.rng == 0)
        fz.rng = 1;
    key_example();
    fuzz_corpus();
    if (guard_open(&g, FUZZ_INPUT_MAX) != 0) {
        CHECK(!"guard page");
        return;
    }
    for (fz.iter = 0; fz.iter < iterations && fz.reported < 3; fz.iter++) {
        uint8_t *b;
        fuzz_make_input();
        b = g.end - fz.n;
        memcpy(b, fz.in, fz.n);
        fuzz_scan(b, fz.n);
        fuzz_rx(b, fz.n);
    }
    guard_close(&g);
    /* The mutations must reach every outcome, or the loop proves little. */
    CHECK(fz.ready > iterations / 4);
    CHECK(fz.bad_crc > iterations / 50);
    CHECK(fz.bad_len > iterations / 200);
    CHECK(fz.opened > iterations / 50);
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "fuzz: %lu inputs, %lu ready, %lu bad crc, "
                "%lu bad length, %lu opened\n", iterations, fz.ready,
                fz.bad_crc, fz.bad_len, fz.opened);
}

/* ------------------------------------------------------------------------
 * docs/PROTOCOL.md: the worked examples as users read them must be the
 * bytes of PROTOCOL.md section 6 and must decode (run from the repo root)
 * ---------------------------------------------------------------------- */

#define DOCS_PROTOCOL "docs/PROTOCOL.md"

/*
 * The bytes of the first fenced block after the heading line (a line
 * starting with '#') that contains title; returns how many, 0 when there is
 * no such heading or block.
 */
static size_t docs_example(const char *text, const char *title, uint8_t *out,
                           size_t cap)
{
    static char hex[4096];
    const char *h, *body, *end;

    for (h = strstr(text, title); h; h = strstr(h + 1, title)) {
        const char *line = h;

        while (line > text && line[-1] != '\n')
            line--;
        if (line[0] == '#')
            break;
    }
    if (!h || !(body = strstr(h, "\n```")) || !(body = strchr(body + 1, '\n')))
        return 0;
    body++;
    end = strstr(body, "```");
    if (!end || (size_t)(end - body) >= sizeof hex)
        return 0;
    memcpy(hex, body, (size_t)(end - body));
    hex[end - body] = '\0';
    return test_unhex(hex, out, cap);
}

static void test_docs_examples(void)
{
    static char text[256 * 1024];
    uint8_t buf[FRAME_SIZE_MAX], ref[FRAME_SIZE_MAX];
    size_t n;

    /* Without the document (run from another directory) there is nothing
     * to decode: a failure, and no frame looked at. */
    if (test_read_file(DOCS_PROTOCOL, text, sizeof text) <= 0) {
        CHECK(!"cannot read " DOCS_PROTOCOL " (run from the repository root)");
        return;
    }

    n = docs_example(text, "Worked example (plaintext)", buf, sizeof buf);
    CHECK_EQ(n, 40);
    if (n != 40)
        return;
    CHECK_EQ(test_unhex(example_plain_hex, ref, sizeof ref), n);
    CHECK_MEM(buf, ref, n);
    check_example_plain(buf, n);

    n = docs_example(text, "Worked example (protected)", buf, sizeof buf);
    CHECK_EQ(n, 75);
    if (n != 75)
        return;
    CHECK_EQ(test_unhex(example_sec_hex, ref, sizeof ref), n);
    CHECK_MEM(buf, ref, n);
    check_example_sec(buf, n);
}

void test_frame_suite(void)
{
    test_run("frame_example_plain_encode", test_example_plain_encode);
    test_run("frame_example_plain_decode", test_example_plain_decode);
    test_run("frame_example_sec_encode", test_example_sec_encode);
    test_run("frame_example_sec_decode", test_example_sec_decode);
    test_run("frame_split_plain", test_split_plain);
    test_run("frame_split_sec", test_split_sec);
    test_run("frame_several_frames", test_several_frames);
    test_run("frame_garbage_skipped", test_garbage_skipped);
    test_run("frame_bad_header", test_bad_header);
    test_run("frame_false_sof", test_false_sof);
    test_run("frame_bad_length", test_bad_length);
    test_run("frame_len_min", test_len_min);
    test_run("frame_bad_crc", test_bad_crc);
    test_run("frame_open_roundtrip", test_open_roundtrip);
    test_run("frame_open_errors", test_open_errors);
    test_run("frame_encode_limits", test_encode_limits);
    test_run("frame_payload_check", test_payload_check);
    test_run("frame_payload_size", test_payload_size);
    test_run("frame_codecs", test_codecs);
    test_run("frame_ids", test_ids);
    test_run("frame_names", test_names);
    test_run("frame_rx_buffer", test_rx_buffer);
    test_run("frame_fuzz", test_fuzz);
    test_run("frame_docs_examples", test_docs_examples);
}
