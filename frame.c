/*
 * frame.c -- the frame parser and encoder (PROTOCOL.md sections 2 and 4),
 * the receive buffer of a connection, the payload codecs (section 3) and
 * the names of the error codes.
 *
 * Owns: nothing.  Every byte it reads or writes is in a buffer of the
 * caller's: frame_scan reads the caller's bytes, frame_rx works inside the
 * struct a session embeds, frame_encode writes into the caller's out[].
 * Must not touch: I/O, allocation, global state, the clock.  A decoded frame
 * points into the buffer it was found in; nothing here copies it.
 *
 * How the parser works.  Frames are delimited by their length, not by byte
 * stuffing, so the only way back into step after noise is to hunt for a SOF
 * and to trust LEN only behind a header that checks out:
 *
 *   1. memchr finds the next 0x7E; every byte before it is garbage.
 *   2. The header at that SOF is checked.  With fewer than 30 bytes present,
 *      the fields that are there (VER, the reserved CTL bits, RSV) are
 *      checked and otherwise the scan waits, the partial header kept at the
 *      front.  With 30 bytes, every field and the HCS are checked.  A header
 *      that is not valid costs one byte (its SOF, counted as garbage) and the
 *      hunt goes on from the next byte, so that a frame behind a false SOF
 *      is still found.
 *   3. LEN is range-checked as soon as the header is valid, before anything
 *      waits for the body: a peer cannot make us wait for 65 KB.
 *   4. With the whole frame present, the CRC decides READY or BAD_CRC; both
 *      consume the frame, so that the stream goes on with the next one.
 *
 * Each decision is made only on bytes that are present and is the decision
 * a later call with more bytes would make too, so the results do not depend
 * on how the stream was cut into reads (test_frame.c checks every cut).
 */
#include <assert.h>
#include <string.h>

#include "fep.h"

/* The receive buffer must hold one largest frame (see "Receive buffer"),
 * and its offsets are 16 bits. */
FEP_STATIC_ASSERT(RX_BUF_SIZE >= FRAME_SIZE_MAX, rx_buf_one_frame);
FEP_STATIC_ASSERT(RX_BUF_SIZE <= UINT16_MAX, rx_offsets_16_bits);
/* The encoder writes LEN into 16 bits. */
FEP_STATIC_ASSERT(FRAME_LEN_MAX <= 0xFFFF, len_fits_u16);

/* ------------------------------------------------------------------------
 * Error names
 * ---------------------------------------------------------------------- */

const char *fep_strerror(fep_err err)
{
    switch (err) {
    case FEP_OK: return "success";
    case FEP_ERR_CRC: return "CRC mismatch";
    case FEP_ERR_HEADER: return "header field wrong for this session";
    case FEP_ERR_LENGTH: return "length out of range or wrong for the command";
    case FEP_ERR_SECURITY: return "security check failed";
    case FEP_ERR_REPLAY: return "replayed invocation counter";
    case FEP_ERR_UNKNOWN: return "unknown DCU";
    case FEP_ERR_COMMAND: return "unknown or unserved command";
    case FEP_ERR_SEQUENCE: return "unexpected QSN or FSN";
    case FEP_ERR_STORE: return "could not store the data";
    case FEP_ERR_BUSY: return "busy";
    case FEP_ERR_GARBAGE: return "too much garbage on the connection";
    case FEP_ERR_TIMEOUT: return "timed out";
    case FEP_ERR_IO: return "system call failed";
    case FEP_ERR_CLOSED: return "connection closed by the peer";
    case FEP_ERR_NACKED: return "the peer refused a request";
    case FEP_ERR_NOSPACE: return "buffer too small";
    case FEP_ERR_CONNECT: return "could not connect";
    case FEP_ERR_SHUTDOWN: return "shutting down";
    case FEP_ERR_NO_IC: return "no invocation counter left to protect a frame";
    }
    return "unknown error";
}

const char *fep_nack_name(unsigned code)
{
    /* Indexed by the NACK code of PROTOCOL.md section 5; also the values of
     * the metrics label code="...", so they must not change. */
    static const char *const names[FEP_NACK_CODE_MAX + 1] = {
        "other", "crc", "header", "length", "security", "replay",
        "unknown", "command", "sequence", "store", "busy"
    };

    return code <= FEP_NACK_CODE_MAX ? names[code] : "other";
}

/* ------------------------------------------------------------------------
 * Scanner
 * ---------------------------------------------------------------------- */

enum header_state { HEADER_INVALID, HEADER_PARTIAL, HEADER_VALID };

/*
 * h[0] is a SOF and avail (<= 30) bytes from it are present.  A short header
 * is judged on the fields already there, so that a false SOF is dropped, and
 * counted as garbage, as soon as it can be seen to be one.  The verdict is
 * the one the whole header would get, so it does not depend on the cut.
 */
static enum header_state header_check(const uint8_t *h, size_t avail)
{
    if (avail > HDR_VER && h[HDR_VER] != FRAME_VERSION)
        return HEADER_INVALID;
    if (avail > HDR_CTL && (h[HDR_CTL] & CTL_RESERVED) != 0)
        return HEADER_INVALID;
    if (avail > HDR_RSV && h[HDR_RSV] != 0)
        return HEADER_INVALID;
    if (avail < FRAME_HEADER_SIZE)
        return HEADER_PARTIAL;
    if (hcs_xor(h, HDR_HCS) != h[HDR_HCS])
        return HEADER_INVALID;
    return HEADER_VALID;
}

/* Fills *f from a valid header. */
static void header_decode(const uint8_t *raw, size_t data_len, frame *f)
{
    f->ctl = raw[HDR_CTL];
    f->cmd = raw[HDR_CMD];
    memcpy(f->sid, raw + HDR_SID, FRAME_ID_SIZE);
    memcpy(f->did, raw + HDR_DID, FRAME_ID_SIZE);
    f->qsn = get_u16be(raw + HDR_QSN);
    f->msn = get_u16be(raw + HDR_MSN);
    f->fsn = get_u16be(raw + HDR_FSN);
    f->len = get_u16be(raw + HDR_LEN);
    f->raw = raw;
    f->data = raw + FRAME_HEADER_SIZE;
    f->data_len = data_len;
}

/* A valid header starts at buf[sof]: the frame, a bad LEN, or a wait. */
static frame_result frame_at(const uint8_t *buf, size_t len, size_t sof,
                             frame *f, size_t *consumed)
{
    const uint8_t *raw = buf + sof;
    size_t flen = get_u16be(raw + HDR_LEN);
    size_t crc_at;

    if (flen < FRAME_LEN_MIN || flen > FRAME_LEN_MAX) {
        header_decode(raw, 0, f);
        *consumed = sof + FRAME_HEADER_SIZE;
        return FRAME_BAD_LENGTH;
    }
    if (len - sof < FRAME_HEADER_SIZE + flen) {
        *consumed = sof;
        return FRAME_NEED_MORE;
    }
    header_decode(raw, flen - FRAME_CRC_SIZE, f);
    *consumed = sof + FRAME_HEADER_SIZE + flen;
    crc_at = FRAME_HEADER_SIZE + flen - FRAME_CRC_SIZE;
    return crc16_x25(raw, crc_at) == get_u16be(raw + crc_at) ? FRAME_READY
                                                            : FRAME_BAD_CRC;
}

/* *f is written only on READY, BAD_CRC and BAD_LENGTH. */
frame_result frame_scan(const uint8_t *buf, size_t len, frame *f,
                        size_t *consumed, size_t *skipped)
{
    size_t sof = 0;

    for (;;) {
        const uint8_t *p = NULL;
        enum header_state state;
        size_t avail;

        if (sof < len)
            p = memchr(buf + sof, FRAME_SOF, len - sof);
        if (p == NULL) {
            *consumed = *skipped = len;
            return FRAME_NEED_MORE;
        }
        sof = (size_t)(p - buf);
        avail = len - sof;
        state = header_check(p, avail < FRAME_HEADER_SIZE ? avail
                                                          : FRAME_HEADER_SIZE);
        if (state == HEADER_VALID) {
            *skipped = sof;
            return frame_at(buf, len, sof, f, consumed);
        }
        if (state == HEADER_PARTIAL) {
            *consumed = *skipped = sof;
            return FRAME_NEED_MORE;
        }
        sof++;                          /* drop the SOF of a bad header */
    }
}

/* ------------------------------------------------------------------------
 * Receive buffer
 *
 * buf[start..end) holds bytes not yet consumed; the first `pending` of them
 * are the frame (or bad header) handed out by the last frame_rx_next, kept
 * so that its pointers stay valid until the caller comes back.
 *
 * A caller must take frames with frame_rx_next until FRAME_NEED_MORE before
 * it reads more.  Then what is held is at most a partial frame: a header
 * whose frame is not all there yet, so fewer than FRAME_SIZE_MAX bytes
 * (frame_scan never answers NEED_MORE with a whole frame present), and no
 * garbage (that is consumed at once).  frame_rx_space moves those bytes to
 * the front whenever the tail behind them is too short for the rest of a
 * largest frame, which leaves RX_BUF_SIZE - held >= FRAME_SIZE_MAX - held
 * bytes of room: enough to complete any frame, and at least one byte.  So
 * one largest frame is all the buffer needs (stop-and-wait puts one frame in
 * flight); the move costs at most FRAME_SIZE_MAX - 1 bytes per read.  A
 * caller that leaves whole frames untaken can be offered less, down to 0
 * when the buffer is full.
 * ---------------------------------------------------------------------- */

void frame_rx_reset(frame_rx *rx)
{
    rx->start = 0;
    rx->end = 0;
    rx->pending = 0;
    rx->garbage = 0;
}

static void rx_release_pending(frame_rx *rx)
{
    rx->start = (uint16_t)(rx->start + rx->pending);
    rx->pending = 0;
    if (rx->start == rx->end) {
        /* Empty: start over at the front for free, no memmove needed. */
        rx->start = 0;
        rx->end = 0;
    }
}

uint8_t *frame_rx_space(frame_rx *rx, size_t *room)
{
    rx_release_pending(rx);
    /* The tail cannot take the rest of a largest frame starting at start
     * (start + FRAME_SIZE_MAX > RX_BUF_SIZE): move the data to the front. */
    if (rx->start > RX_BUF_SIZE - FRAME_SIZE_MAX) {
        memmove(rx->buf, rx->buf + rx->start, (size_t)(rx->end - rx->start));
        rx->end = (uint16_t)(rx->end - rx->start);
        rx->start = 0;
    }
    *room = RX_BUF_SIZE - rx->end;
    return rx->buf + rx->end;
}

void frame_rx_commit(frame_rx *rx, size_t n)
{
    assert(n <= (size_t)(RX_BUF_SIZE - rx->end));
    rx->end = (uint16_t)(rx->end + n);
}

static void rx_count_garbage(frame_rx *rx, size_t n)
{
    /* Saturates: the count only has to tell "more than GARBAGE_MAX". */
    if (n > (size_t)(UINT32_MAX - rx->garbage))
        rx->garbage = UINT32_MAX;
    else
        rx->garbage += (uint32_t)n;
}

frame_result frame_rx_next(frame_rx *rx, frame *f)
{
    size_t consumed, skipped;
    frame_result r;

    rx_release_pending(rx);
    r = frame_scan(rx->buf + rx->start, rx->end - rx->start, f, &consumed,
                   &skipped);
    rx_count_garbage(rx, skipped);
    rx->start = (uint16_t)(rx->start + skipped);
    rx->pending = (uint16_t)(consumed - skipped);
    return r;
}

size_t frame_rx_held(const frame_rx *rx)
{
    return rx->end - rx->start - rx->pending;
}

/* ------------------------------------------------------------------------
 * Encoder and protection
 * ---------------------------------------------------------------------- */

/*
 * CTL is written as given (reserved bits included, so that a test or the
 * simulator can send a bad header that still has a right HCS), plus SEC for
 * a protected frame.
 */
static void header_write(uint8_t *out, const frame_hdr *h, uint8_t ctl,
                         size_t len)
{
    out[HDR_SOF] = FRAME_SOF;
    out[HDR_VER] = FRAME_VERSION;
    out[HDR_CTL] = ctl;
    out[HDR_CMD] = h->cmd;
    memcpy(out + HDR_SID, h->sid, FRAME_ID_SIZE);
    memcpy(out + HDR_DID, h->did, FRAME_ID_SIZE);
    put_u16be(out + HDR_QSN, h->qsn);
    put_u16be(out + HDR_MSN, h->msn);
    put_u16be(out + HDR_FSN, h->fsn);
    out[HDR_RSV] = 0;
    put_u16be(out + HDR_LEN, (uint16_t)len);
    out[HDR_HCS] = hcs_xor(out, HDR_HCS);
}

/* IV = the sender's SID as it stands in the header || IC. */
static void sec_iv(uint8_t iv[GCM_IV_SIZE], const uint8_t *header,
                   const uint8_t ic_be[SEC_IC_SIZE])
{
    memcpy(iv, header + HDR_SID, FRAME_ID_SIZE);
    memcpy(iv + FRAME_ID_SIZE, ic_be, SEC_IC_SIZE);
}

/* The header at out[0..30) is final: it is the AAD (PROTOCOL.md section 4). */
static void sec_seal(uint8_t *out, const gcm_key *key, uint32_t ic,
                     const uint8_t *payload, size_t payload_len)
{
    uint8_t *data = out + FRAME_HEADER_SIZE;
    uint8_t iv[GCM_IV_SIZE];

    put_u32be(data, ic);
    sec_iv(iv, out, data);
    gcm_seal(key, iv, out, FRAME_HEADER_SIZE, payload, payload_len,
             data + SEC_IC_SIZE, data + SEC_IC_SIZE + payload_len,
             SEC_TAG_SIZE);
}

size_t frame_encode(uint8_t *out, size_t cap, const frame_hdr *h,
                    const uint8_t *payload, size_t payload_len,
                    const gcm_key *key, uint32_t ic)
{
    size_t payload_max = key ? PAYLOAD_MAX_SEC : PAYLOAD_MAX_PLAIN;
    size_t data_len, total;

    if (payload_len > payload_max)
        return 0;
    data_len = payload_len + (key ? SEC_OVERHEAD : 0);
    total = FRAME_HEADER_SIZE + data_len + FRAME_CRC_SIZE;
    if (total > cap)
        return 0;
    header_write(out, h, (uint8_t)(h->ctl | (key ? CTL_SEC : 0)),
                 data_len + FRAME_CRC_SIZE);
    if (key)
        sec_seal(out, key, ic, payload, payload_len);
    else if (payload_len > 0)
        memmove(out + FRAME_HEADER_SIZE, payload, payload_len);
    put_u16be(out + total - FRAME_CRC_SIZE,
              crc16_x25(out, total - FRAME_CRC_SIZE));
    return total;
}

fep_err frame_open(const frame *f, const gcm_key *key, uint8_t *plain,
                   size_t *plain_len, uint32_t *ic)
{
    uint8_t iv[GCM_IV_SIZE];
    size_t n;

    if (f->data_len < SEC_OVERHEAD)
        return FEP_ERR_SECURITY;
    n = f->data_len - SEC_OVERHEAD;
    sec_iv(iv, f->raw, f->data);
    if (gcm_open(key, iv, f->raw, FRAME_HEADER_SIZE, f->data + SEC_IC_SIZE, n,
                 plain, f->data + SEC_IC_SIZE + n, SEC_TAG_SIZE) != 0)
        return FEP_ERR_SECURITY;
    *plain_len = n;
    *ic = get_u32be(f->data);
    return FEP_OK;
}

/* ------------------------------------------------------------------------
 * Ids
 * ---------------------------------------------------------------------- */

void frame_id_set(uint8_t id[FRAME_ID_SIZE], const char *s)
{
    size_t i;

    for (i = 0; i < FRAME_ID_SIZE && s[i] != '\0'; i++)
        id[i] = (uint8_t)s[i];
    for (; i < FRAME_ID_SIZE; i++)
        id[i] = ' ';
}

size_t frame_id_str(const uint8_t id[FRAME_ID_SIZE],
                    char out[FRAME_ID_SIZE + 1])
{
    size_t n = FRAME_ID_SIZE;

    while (n > 0 && id[n - 1] == ' ')
        n--;
    memcpy(out, id, n);
    out[n] = '\0';
    return n;
}

/* ------------------------------------------------------------------------
 * Payload codecs (PROTOCOL.md section 3)
 * ---------------------------------------------------------------------- */

/* A payload is either `fixed` bytes, or (item != 0) a count byte followed
 * by count items of `item` bytes. */
typedef struct payload_layout {
    uint8_t cmd;
    uint8_t fixed;
    uint8_t item;
} payload_layout;

static const payload_layout payload_layouts[] = {
    { CMD_LP_REQ, LP_REQ_SIZE, 0 },
    { CMD_DCU_STATUS_REQ, 0, 0 },
    { CMD_METER_STATUS_REQ, 0, 0 },
    { CMD_METER_CHANGE_REQ, 0, 0 },
    { CMD_LP_RSP, 0, LP_RECORD_SIZE },
    { CMD_DCU_STATUS_RSP, DCU_STATUS_SIZE, 0 },
    { CMD_METER_STATUS_RSP, 0, METER_ITEM_SIZE },
    { CMD_METER_CHANGE_RSP, 0, METER_ITEM_SIZE },
    { CMD_ACK, 0, 0 },
    { CMD_NACK, NACK_SIZE, 0 },
};

static const payload_layout *payload_layout_of(uint8_t cmd)
{
    size_t i;

    for (i = 0; i < sizeof payload_layouts / sizeof payload_layouts[0]; i++)
        if (payload_layouts[i].cmd == cmd)
            return &payload_layouts[i];
    return NULL;
}

fep_err payload_check(uint8_t cmd, const uint8_t *p, size_t len)
{
    const payload_layout *l = payload_layout_of(cmd);

    if (l == NULL)
        return FEP_ERR_COMMAND;
    if (l->item == 0)
        return len == l->fixed ? FEP_OK : FEP_ERR_LENGTH;
    if (len < 1 || len != 1 + (size_t)p[0] * l->item)
        return FEP_ERR_LENGTH;
    return FEP_OK;
}

/* 0 for an unknown command (and for the empty payloads). */
size_t payload_size(uint8_t cmd, unsigned count)
{
    const payload_layout *l = payload_layout_of(cmd);

    if (l == NULL)
        return 0;
    if (l->item == 0)
        return l->fixed;
    return 1 + (size_t)count * l->item;
}

void lp_record_get(const uint8_t *p, unsigned i, lp_record *r)
{
    const uint8_t *q = p + 1 + (size_t)i * LP_RECORD_SIZE;

    memcpy(r->meter_id, q, METER_ID_SIZE);
    r->ts = get_u32be(q + 12);
    r->import_wh = get_u32be(q + 16);
    r->export_wh = get_u32be(q + 20);
    r->status = get_u16be(q + 24);
}

void lp_record_put(uint8_t *p, unsigned i, const lp_record *r)
{
    uint8_t *q = p + 1 + (size_t)i * LP_RECORD_SIZE;

    memcpy(q, r->meter_id, METER_ID_SIZE);
    put_u32be(q + 12, r->ts);
    put_u32be(q + 16, r->import_wh);
    put_u32be(q + 20, r->export_wh);
    put_u16be(q + 24, r->status);
}

void meter_item_get(const uint8_t *p, unsigned i, meter_item *m)
{
    const uint8_t *q = p + 1 + (size_t)i * METER_ITEM_SIZE;

    memcpy(m->meter_id, q, METER_ID_SIZE);
    m->code = q[METER_ID_SIZE];
    m->ts = get_u32be(q + METER_ID_SIZE + 1);
}

void meter_item_put(uint8_t *p, unsigned i, const meter_item *m)
{
    uint8_t *q = p + 1 + (size_t)i * METER_ITEM_SIZE;

    memcpy(q, m->meter_id, METER_ID_SIZE);
    q[METER_ID_SIZE] = m->code;
    put_u32be(q + METER_ID_SIZE + 1, m->ts);
}

void dcu_status_get(const uint8_t *p, dcu_status *s)
{
    s->fw_version = get_u16be(p);
    s->uptime_s = get_u32be(p + 2);
    s->clock = get_u32be(p + 6);
    s->meter_count = get_u16be(p + 10);
    s->flags = get_u16be(p + 12);
}

void dcu_status_put(uint8_t *p, const dcu_status *s)
{
    put_u16be(p, s->fw_version);
    put_u32be(p + 2, s->uptime_s);
    put_u32be(p + 6, s->clock);
    put_u16be(p + 10, s->meter_count);
    put_u16be(p + 12, s->flags);
}

void lp_req_get(const uint8_t *p, uint32_t *from, uint32_t *to)
{
    *from = get_u32be(p);
    *to = get_u32be(p + 4);
}

void lp_req_put(uint8_t *p, uint32_t from, uint32_t to)
{
    put_u32be(p, from);
    put_u32be(p + 4, to);
}
