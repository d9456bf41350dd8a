/*
 * session.c -- the protocol state machine of one poll or push session:
 * every receiver rule of PROTOCOL.md section 5, in the order a frame meets
 * them.
 *
 *   frame_rx_next --> length / CRC --> header (DIR, DID, SID) --> security
 *   (tag, then IC) --> command and payload length --> sequence (QSN, FSN,
 *   duplicate) --> store_add --> SLOT_STORING --(pass commit)--> ACK
 *
 * Owns: the decisions.  It reads s->rx, appends frames to s->tx, moves
 * s->state and s->wait, and updates the bound DCU's state and statistics.
 * Must not touch: descriptors (fep.c opens and closes them, and does all
 * reads and writes), other slots, the store's files (only store_add).
 *
 * Ending a session never closes anything here: sess_end marks the slot
 * DRAINING, and the loop closes it once the last frame has gone out.
 */
#include <string.h>

#include "fep.h"

/* ------------------------------------------------------------------------
 * Sending
 * ---------------------------------------------------------------------- */

/* Room for n more bytes in tx, moving what is unsent to the front.  tx
 * holds what one pass queues for a peer that waits for each answer (an
 * ACK and the next request); a peer that sends frame after frame without
 * reading fills it, and its session ends. */
static int tx_make_room(session *s, size_t n)
{
    if (s->tx_off == s->tx_len) {
        s->tx_off = 0;
        s->tx_len = 0;
    }
    if ((size_t)(TX_BUF_SIZE - s->tx_len) >= n)
        return 0;
    memmove(s->tx, s->tx + s->tx_off, (size_t)(s->tx_len - s->tx_off));
    s->tx_len = (uint16_t)(s->tx_len - s->tx_off);
    s->tx_off = 0;
    return (size_t)(TX_BUF_SIZE - s->tx_len) >= n ? 0 : -1;
}

/*
 * Appends one frame to s->tx: protected when the peer has a key (every frame
 * to a keyed DCU, ACK and NACK included).  FEP_OK, or why not (FEP_ERR_NO_IC:
 * the key's ICs are used up or could not be reserved; FEP_ERR_NOSPACE: the
 * frame does not fit); the caller then ends the session with that reason.
 */
static fep_err send_frame(fepd *d, session *s, uint8_t cmd, uint16_t qsn,
                          uint16_t fsn, const uint8_t *payload, size_t len)
{
    frame_hdr h;
    const gcm_key *key = NULL;
    uint32_t ic = 0;
    size_t n;

    h.ctl = CTL_LAST;                   /* requests, ACKs, NACKs: LAST=1, DIR=0 */
    h.cmd = cmd;
    memcpy(h.sid, d->cfg.sid, FRAME_ID_SIZE);
    memcpy(h.did, s->peer_sid, FRAME_ID_SIZE);
    h.qsn = qsn;
    h.msn = s->msn;
    h.fsn = fsn;
    if (s->key_index >= 0) {
        ic = state_take_ic(&d->state, (unsigned)s->key_index);
        if (ic == 0)                    /* state.c said why: full disk, or used up */
            return FEP_ERR_NO_IC;
        key = &s->key;
    }
    if (tx_make_room(s, FRAME_HEADER_SIZE + SEC_OVERHEAD + len +
                            FRAME_CRC_SIZE) != 0)
        return FEP_ERR_NOSPACE;
    n = frame_encode(s->tx + s->tx_len, TX_BUF_SIZE - s->tx_len, &h, payload,
                     len, key, ic);
    if (n == 0)
        return FEP_ERR_NOSPACE;
    log_hex("sent", s->tx + s->tx_len, n);
    s->tx_len = (uint16_t)(s->tx_len + n);
    s->msn++;
    d->stats.frames_sent++;
    return FEP_OK;
}

static void wait_frame(const fepd *d, session *s)
{
    s->wait = WAIT_FRAME;
    s->io_deadline_ms = sys_now_ms() + d->cfg.timeout_frame_ms;
}

/* A printable name for the peer: its DCU once bound, before that the SID
 * its frames claim ("?" before any frame). */
static const char *peer_name(const fepd *d, const session *s,
                             char out[FRAME_ID_SIZE + 1])
{
    size_t i, n;

    if (s->dcu >= 0)
        return d->cfg.dcus[s->dcu].id;
    if (s->peer_sid[0] == 0)
        return "?";
    n = frame_id_str(s->peer_sid, out);
    for (i = 0; i < n; i++)
        if (out[i] < 0x21 || out[i] > 0x7E)
            out[i] = '?';
    return out;
}

static const char *kind_name(const session *s)
{
    return s->kind == KIND_POLL ? "poll" : "push";
}

/* NACK with code, echoing the QSN and FSN of the frame it answers; every
 * NACK is logged with the DCU it goes to. */
static void send_nack(fepd *d, session *s, const frame *f, fep_err code)
{
    uint8_t payload[NACK_SIZE];
    char name[FRAME_ID_SIZE + 1];
    int shard = code == FEP_ERR_UNKNOWN && s->dcu < 0
                    ? config_other_shard(&d->cfg, f->sid) : -1;
    fep_err sent;

    if (code == FEP_ERR_CRC)
        log_msg(LOG_WARN, "%s %s: NACK crc (CRC mismatch, strike %u of %d)",
                kind_name(s), peer_name(d, s, name), s->crc_strikes,
                CRC_STRIKES_MAX);
    else if (shard >= 0)
        log_msg(LOG_WARN, "%s %s: NACK unknown (DCU of shard %d of %u)",
                kind_name(s), peer_name(d, s, name), shard, d->cfg.shards);
    else
        log_msg(LOG_WARN, "%s %s: NACK %s (%s)", kind_name(s),
                peer_name(d, s, name), fep_nack_name(code), fep_strerror(code));
    payload[0] = (uint8_t)code;
    sent = send_frame(d, s, CMD_NACK, f->qsn, f->fsn, payload, sizeof payload);
    if (sent != FEP_OK) {
        sess_end(d, s, sent);           /* a NACK is never dropped silently */
        return;
    }
    d->stats.nacks_sent[code]++;
}

static void nack_and_end(fepd *d, session *s, const frame *f, fep_err code)
{
    send_nack(d, s, f, code);
    sess_end(d, s, code);
}

/* ------------------------------------------------------------------------
 * Poll requests
 * ---------------------------------------------------------------------- */

static uint8_t response_to(uint8_t request)
{
    switch (request) {
    case CMD_LP_REQ: return CMD_LP_RSP;
    case CMD_DCU_STATUS_REQ: return CMD_DCU_STATUS_RSP;
    case CMD_METER_STATUS_REQ: return CMD_METER_STATUS_RSP;
    case CMD_METER_CHANGE_REQ: return CMD_METER_CHANGE_RSP;
    default: return 0;
    }
}

/* Sends the next request of the DCU's poll cycle, or ends the session when
 * the cycle is complete. */
static void next_request(fepd *d, session *s)
{
    dcu_state *ds = &d->state.dcus[s->dcu];
    uint8_t payload[LP_REQ_SIZE];
    uint8_t cmd;
    size_t len = 0;
    fep_err sent;

    if (s->request >= strlen(s->poll) || d->stopping) {
        sess_end(d, s, s->failures ? FEP_ERR_NACKED : FEP_OK);
        return;
    }
    cmd = (uint8_t)s->poll[s->request++];
    if (cmd == CMD_LP_REQ) {
        lp_req_put(payload, 0, 0);      /* every record not yet delivered */
        len = LP_REQ_SIZE;
    }
    s->qsn = ds->next_qsn++;
    s->expect = response_to(cmd);
    s->exchange_open = 1;
    s->next_fsn = 0;
    s->have_acked = 0;
    s->crc_strikes = 0;
    sent = send_frame(d, s, cmd, s->qsn, 0, payload, len);
    if (sent != FEP_OK) {
        sess_end(d, s, sent);
        return;
    }
    wait_frame(d, s);
}

/* What we send goes to DCU i (or, i < 0, to an unknown SID in plaintext):
 * its key is expanded here, once per session. */
static void peer_set(fepd *d, session *s, int i, const uint8_t sid[FRAME_ID_SIZE])
{
    memcpy(s->peer_sid, sid, FRAME_ID_SIZE);
    s->key_index = i >= 0 ? state_dcu_key(&d->state, (unsigned)i) : -1;
    s->mark_index = i >= 0 ? d->state.dcus[i].mark : -1;
    if (s->key_index >= 0)
        gcm_init(&s->key, d->cfg.dcus[i].key);
}

/* Binds slot s to DCU i (its peer already set) for the rest of the session. */
static void bind_dcu(fepd *d, session *s, int i)
{
    s->dcu = i;
    d->state.dcus[i].slot_refs++;       /* released by fep.c slot_close */
    d->state.dcus[i].session = (int)(s - d->slots);
}

void sess_poll_start(fepd *d, session *s, int dcu)
{
    uint8_t sid[FRAME_ID_SIZE];

    /* The session keeps what it began with: a reload that changes the DCU
     * meanwhile applies to its next session. */
    memcpy(s->poll, d->cfg.dcus[dcu].poll, sizeof d->cfg.dcus[dcu].poll);
    frame_id_set(sid, d->cfg.dcus[dcu].id);
    peer_set(d, s, dcu, sid);
    bind_dcu(d, s, dcu);
}

void sess_poll_connected(fepd *d, session *s)
{
    s->state = SLOT_ACTIVE;
    next_request(d, s);
}

/* ------------------------------------------------------------------------
 * Checks, in the order PROTOCOL.md section 5 implies
 * ---------------------------------------------------------------------- */

/*
 * A push session binds its DCU on the first frame with a valid CRC; until
 * then a NACK goes to whatever SID the frame claims, protected when that SID
 * is a keyed DCU.  Returns the DCU's index, or -1 when the SID is unknown.
 */
static int address_claimed(fepd *d, session *s, const frame *f)
{
    int i = config_find_dcu(&d->cfg, f->sid);

    peer_set(d, s, i, f->sid);
    return i;
}

/* DIR, DID, and who the sender is. */
static fep_err check_header(fepd *d, session *s, const frame *f)
{
    int i;

    if (s->dcu < 0) {
        i = address_claimed(d, s, f);
        if (i < 0)
            return FEP_ERR_UNKNOWN;
        /* BUSY goes under the DCU's key without taking it over. */
        if (s->kind == KIND_REJECT || d->state.dcus[i].session >= 0)
            return FEP_ERR_BUSY;
        bind_dcu(d, s, i);
    }
    if (!(f->ctl & CTL_DIR_DCU))
        return FEP_ERR_HEADER;
    if (memcmp(f->did, d->cfg.sid, FRAME_ID_SIZE) != 0)
        return FEP_ERR_HEADER;
    if (memcmp(f->sid, s->peer_sid, FRAME_ID_SIZE) != 0)
        return config_find_dcu(&d->cfg, f->sid) < 0 ? FEP_ERR_UNKNOWN
                                                    : FEP_ERR_HEADER;
    return FEP_OK;
}

/* Tag first, then IC: a forgery is SECURITY, an authentic old frame REPLAY.
 * On success *payload points at the plaintext. */
static fep_err open_payload(fepd *d, session *s, const frame *f,
                            const uint8_t **payload, size_t *len)
{
    uint32_t ic;

    if (s->key_index < 0) {
        if (f->ctl & CTL_SEC)
            return FEP_ERR_SECURITY;    /* no key to check it with */
        *payload = f->data;
        *len = f->data_len;
        return FEP_OK;
    }
    if (!(f->ctl & CTL_SEC))
        return FEP_ERR_SECURITY;
    if (frame_open(f, &s->key, d->scratch, len, &ic) != FEP_OK)
        return FEP_ERR_SECURITY;
    if (ic <= state_mark_value(&d->state, s->mark_index))
        return FEP_ERR_REPLAY;
    /* Durable before the frame is acted on: every frame that raised the
     * mark waits for the pass's commit (SLOT_STORING). */
    state_mark_raise(&d->state, s->mark_index, ic);
    *payload = d->scratch;
    return FEP_OK;
}

static int is_response(uint8_t cmd)
{
    return cmd == CMD_LP_RSP || cmd == CMD_DCU_STATUS_RSP ||
           cmd == CMD_METER_STATUS_RSP || cmd == CMD_METER_CHANGE_RSP;
}

/* QSN and FSN.  *duplicate: the packet just acknowledged, sent again. */
static fep_err check_sequence(session *s, const frame *f, int *duplicate)
{
    *duplicate = 0;
    if (s->kind == KIND_PUSH && !s->exchange_open) {
        if (f->fsn != 0)
            return FEP_ERR_SEQUENCE;
        s->expect = f->cmd;
        s->qsn = f->qsn;
        s->exchange_open = 1;
        s->next_fsn = 0;
        return FEP_OK;
    }
    if (f->qsn != s->qsn)
        return FEP_ERR_SEQUENCE;
    if (f->fsn == s->next_fsn)
        return FEP_OK;
    if (s->have_acked && f->fsn == s->acked_fsn) {
        *duplicate = 1;
        return FEP_OK;
    }
    return FEP_ERR_SEQUENCE;
}

/* Rule 7: a DCU's ACK or NACK where a response was expected ends that
 * request without a reply; the session goes on with the next request. */
static void request_refused(fepd *d, session *s, const frame *f,
                            const uint8_t *payload, size_t len)
{
    const char *id = d->cfg.dcus[s->dcu].id;

    if (f->cmd == CMD_NACK && len == NACK_SIZE)
        log_msg(LOG_WARN, "poll %s: request '%c' refused with NACK %s", id,
                s->request ? s->poll[s->request - 1] : '?',
                fep_nack_name(payload[0]));
    else
        log_msg(LOG_WARN, "poll %s: %s instead of a response", id,
                f->cmd == CMD_ACK ? "ACK" : "NACK");
    s->failures++;
    s->exchange_open = 0;
}

/* The frame's effect waits for the pass's commit: its rows, or only the
 * replay mark it raised, must be durable first (PROTOCOL.md sections 4 and
 * 5 rule 6).  An unprotected frame with no rows goes on at once. */
static void await_commit(fepd *d, session *s, const frame *f,
                         enum sess_pending what, int rows)
{
    s->pending = what;
    if (what != PENDING_ROWS && s->key_index < 0) {
        sess_committed(d, s, 1);
        return;
    }
    s->pending_fsn = f->fsn;
    s->pending_last = (f->ctl & CTL_LAST) != 0;
    s->pending_rows = rows;
    s->state = SLOT_STORING;
    s->wait = WAIT_NONE;
}

/* ------------------------------------------------------------------------
 * One frame
 * ---------------------------------------------------------------------- */

static void handle_packet(fepd *d, session *s, const frame *f)
{
    const uint8_t *payload;
    size_t len;
    int duplicate, rows;
    fep_err err;

    err = check_header(d, s, f);
    if (err == FEP_OK)
        err = open_payload(d, s, f, &payload, &len);
    if (err != FEP_OK) {
        nack_and_end(d, s, f, err);
        return;
    }
    if (s->kind == KIND_POLL && (f->cmd == CMD_ACK || f->cmd == CMD_NACK) &&
        s->exchange_open && f->qsn == s->qsn) {
        request_refused(d, s, f, payload, len);
        await_commit(d, s, f, PENDING_NEXT_REQUEST, 0);
        return;
    }
    if (response_to(f->cmd) != 0) {
        /* A request from a DCU: a command in the wrong direction. */
        nack_and_end(d, s, f, FEP_ERR_HEADER);
        return;
    }
    /* A poll expects the response to its request; a push, once its first
     * packet is in, more packets of that same response (rule 4). */
    if (!is_response(f->cmd) ||
        ((s->kind == KIND_POLL || s->exchange_open) && f->cmd != s->expect)) {
        nack_and_end(d, s, f, FEP_ERR_COMMAND);
        return;
    }
    err = payload_check(f->cmd, payload, len);
    if (err == FEP_OK)
        err = check_sequence(s, f, &duplicate);
    if (err != FEP_OK) {
        nack_and_end(d, s, f, err);
        return;
    }
    if (duplicate) {
        /* Its first copy is stored already: acknowledge, do not store. */
        await_commit(d, s, f, PENDING_DUPLICATE, 0);
        return;
    }
    rows = store_add(&d->store, d->cfg.dcus[s->dcu].id, f->cmd, payload, len,
                     f->qsn, f->fsn, sys_wall_s());
    if (rows < 0) {
        nack_and_end(d, s, f, FEP_ERR_STORE);
        return;
    }
    await_commit(d, s, f, PENDING_ROWS, rows);
}

/* The bytes of a frame that are in the buffer: a header whose LEN is out
 * of range was consumed alone, and its LEN says nothing of what follows. */
static size_t frame_bytes_held(frame_result r, const frame *f)
{
    return r == FRAME_BAD_LENGTH ? FRAME_HEADER_SIZE
                                 : FRAME_HEADER_SIZE + (size_t)f->len;
}

static void handle_frame(fepd *d, session *s, frame_result r, const frame *f)
{
    d->stats.frames_received++;
    log_hex("received", f->raw, frame_bytes_held(r, f));
    if (r != FRAME_READY && s->dcu < 0)
        address_claimed(d, s, f);
    if (r == FRAME_BAD_LENGTH) {
        nack_and_end(d, s, f, FEP_ERR_LENGTH);
        return;
    }
    if (r == FRAME_BAD_CRC) {
        if (++s->crc_strikes >= CRC_STRIKES_MAX) {
            nack_and_end(d, s, f, FEP_ERR_CRC);
        } else {
            send_nack(d, s, f, FEP_ERR_CRC);
            if (s->state == SLOT_ACTIVE)    /* not ended by a full tx */
                wait_frame(d, s);
        }
        return;
    }
    s->crc_strikes = 0;
    handle_packet(d, s, f);
}

void sess_process(fepd *d, session *s)
{
    frame f;

    while (s->state == SLOT_ACTIVE) {
        frame_result r = frame_rx_next(&s->rx, &f);

        d->stats.garbage_bytes += s->rx.garbage - s->garbage_counted;
        s->garbage_counted = s->rx.garbage;
        if (s->rx.garbage > GARBAGE_MAX) {
            log_msg(LOG_WARN, "%s: more than %d garbage bytes, closing",
                    s->dcu >= 0 ? d->cfg.dcus[s->dcu].id : "push", GARBAGE_MAX);
            sess_end(d, s, FEP_ERR_GARBAGE);
            return;
        }
        if (r == FRAME_NEED_MORE)
            return;
        handle_frame(d, s, r, &f);
    }
}

/* A packet's rows are durable: count them, ACK, and go on. */
static void rows_committed(fepd *d, session *s)
{
    fep_err sent;

    s->records += (uint32_t)s->pending_rows;
    d->stats.records_stored += (uint64_t)s->pending_rows;
    d->state.dcus[s->dcu].records += (uint64_t)s->pending_rows;
    s->have_acked = 1;
    s->acked_fsn = s->pending_fsn;
    s->next_fsn = (uint16_t)(s->pending_fsn + 1);
    sent = send_frame(d, s, CMD_ACK, s->qsn, s->pending_fsn, NULL, 0);
    if (sent != FEP_OK) {
        sess_end(d, s, sent);
        return;
    }
    if (!s->pending_last) {
        wait_frame(d, s);
        return;
    }
    s->exchange_open = 0;
    if (s->kind == KIND_POLL)
        next_request(d, s);
    else
        sess_end(d, s, FEP_OK);
}

/* After the pass's commit: what the frame awaited is durable (ok) or not. */
void sess_committed(fepd *d, session *s, int ok)
{
    enum sess_pending what = s->pending;
    fep_err sent;
    frame f;

    s->state = SLOT_ACTIVE;
    s->pending = PENDING_NONE;
    if (!ok && what == PENDING_NEXT_REQUEST) {
        sess_end(d, s, FEP_ERR_STORE);  /* no NACK answers a NACK */
        return;
    }
    if (!ok) {
        memset(&f, 0, sizeof f);
        f.qsn = s->qsn;
        f.fsn = s->pending_fsn;
        nack_and_end(d, s, &f, FEP_ERR_STORE);
        return;
    }
    switch (what) {
    case PENDING_ROWS:
        rows_committed(d, s);
        break;
    case PENDING_DUPLICATE:
        sent = send_frame(d, s, CMD_ACK, s->qsn, s->acked_fsn, NULL, 0);
        if (sent != FEP_OK)
            sess_end(d, s, sent);
        else
            wait_frame(d, s);
        break;
    case PENDING_NEXT_REQUEST:
        next_request(d, s);
        break;
    case PENDING_NONE:
        break;
    }
}

/* The end of one session of DCU dcu, however it ended (connect refused at
 * once included): the counters, the DCU's statistics, --once's count. */
void sess_result(fepd *d, int dcu, enum slot_kind kind, fep_err result)
{
    int ok = result == FEP_OK;

    d->stats.sessions_total[kind][ok ? 0 : 1]++;
    if (d->once && kind == KIND_POLL && d->once_pending > 0)
        d->once_pending--;
    if (dcu >= 0) {
        dcu_state *ds = &d->state.dcus[dcu];
        if (ok) {
            ds->sessions_ok += ds->sessions_ok < UINT32_MAX; /* saturates */
            ds->last_success_s = sys_wall_s();
        } else {
            ds->sessions_failed += ds->sessions_failed < UINT32_MAX;
            ds->last_error = result;
        }
        if (kind == KIND_POLL)
            ds->cycle_result = (int8_t)(ok ? 1 : -1);
        state_touch(&d->state, (unsigned)dcu);
    }
}

/* Accounts for a session whose exchange is over: statistics, the DCU's
 * state, one log line.  Called once, by sess_end. */
static void sess_account(fepd *d, session *s, int64_t now_ms)
{
    int ok = s->result == FEP_OK;
    char name[FRAME_ID_SIZE + 1];
    char peer[80];

    if (s->kind != KIND_POLL && s->kind != KIND_PUSH)
        return;
    sess_result(d, s->dcu, s->kind, s->result);
    sys_addr_str(&s->peer, peer, sizeof peer);
    log_msg(ok ? LOG_INFO : LOG_WARN,
            "session %s %s peer %s %s%s%s records=%u duration_ms=%lld",
            kind_name(s), peer_name(d, s, name), peer, ok ? "ok" : "error",
            ok ? "" : ": ", ok ? "" : fep_strerror(s->result),
            (unsigned)s->records, (long long)(now_ms - s->opened_ms));
}

void sess_end(fepd *d, session *s, fep_err why)
{
    if (!s->accounted) {
        /* The exchange is over: its result counts now, not when the
         * connection has drained and lingered. */
        s->result = why;
        s->accounted = 1;
        sess_account(d, s, sys_now_ms());
    }
    s->state = SLOT_DRAINING;
    s->wait = WAIT_NONE;
    /* Its exchanges are over: while the last bytes drain and the slot
     * lingers, the DCU may already open its next session (not BUSY). */
    if (s->dcu >= 0 && d->state.dcus[s->dcu].session == (int)(s - d->slots))
        d->state.dcus[s->dcu].session = -1;
}
