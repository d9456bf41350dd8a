/*
 * fuzz.c -- libFuzzer harnesses for fepd, and the generator of their seed
 * corpora.  One file, one target per build:
 *
 *   -DFUZZ_FRAME    the frame decoder (frame_scan, frame_rx), the payload
 *                   checks and codecs, the encoder and frame_open under a
 *                   fixed key, over arbitrary bytes;
 *   -DFUZZ_SESSION  a whole session state machine (session.c over a real
 *                   config, state file and store in a temporary directory),
 *                   fed a byte stream the way fep.c feeds it from a socket;
 *   -DFUZZ_CORPUS   a program that writes the seed corpora (fuzz/corpus/).
 *
 * With -DFUZZ_STANDALONE a FUZZ_FRAME or FUZZ_SESSION build gets a main()
 * that runs the files named on its command line once each, so that a
 * reproducer replays with any compiler and no libFuzzer.
 *
 * Every harness checks properties, not just the absence of crashes; a
 * property that does not hold aborts with a message (FUZZ_CHECK), which
 * libFuzzer reports as a crash and saves the input.
 *
 * Owns: the fepd struct and the temporary directory of the session harness
 * (made once per process, removed at exit).  Uses plain POSIX calls for its
 * own files; only the code under test goes through sys.c.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fep.h"

#ifndef FUZZ_CORPUS
#define FUZZ_CHECK(c) \
    ((c) ? (void)0 : fuzz_fail(__FILE__, __LINE__, #c))

static void fuzz_fail(const char *file, int line, const char *expr)
{
    fprintf(stderr, "%s:%d: property does not hold: %s\n", file, line, expr);
    abort();
}
#endif

/* The fixed key of the frame harness: the key of PROTOCOL.md section 6.2,
 * so that its worked example opens. */
static const uint8_t fuzz_key[KEY_SIZE] = {
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
    0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f
};

#if defined(FUZZ_SESSION) || defined(FUZZ_CORPUS)
/* The key of DCU n, as dcusim derives it: fuzz_key with its last four
 * bytes XORed with n (big-endian). */
static void dcu_key(unsigned n, uint8_t key[KEY_SIZE])
{
    memcpy(key, fuzz_key, KEY_SIZE);
    key[12] ^= (uint8_t)(n >> 24);
    key[13] ^= (uint8_t)(n >> 16);
    key[14] ^= (uint8_t)(n >> 8);
    key[15] ^= (uint8_t)n;
}
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ========================================================================
 * fuzz_frame
 * ====================================================================== */
#if defined(FUZZ_FRAME)

#define SCAN_MAX 65536                  /* bytes of an input looked at */

/* One result of frame_scan over the whole input, to compare frame_rx with. */
typedef struct scan_item {
    frame_result r;
    size_t at;                          /* offset of the frame's SOF */
    size_t n;                           /* bytes of the frame (or header) */
} scan_item;

static scan_item items[SCAN_MAX];
static gcm_key frame_key;
static int frame_key_ready;

/* Items of a K, M or N payload decode and encode back to the same bytes;
 * so do the fixed layouts. */
static void codec_roundtrip(uint8_t cmd, const uint8_t *p, size_t len)
{
    static uint8_t out[FRAME_DATA_MAX + 256];
    unsigned i, count;

    if (payload_check(cmd, p, len) != FEP_OK)
        return;
    FUZZ_CHECK(len <= sizeof out);
    if (cmd == CMD_LP_RSP || cmd == CMD_METER_STATUS_RSP ||
        cmd == CMD_METER_CHANGE_RSP) {
        count = p[0];
        FUZZ_CHECK(payload_size(cmd, count) == len);
        out[0] = p[0];
        for (i = 0; i < count; i++) {
            if (cmd == CMD_LP_RSP) {
                lp_record r;
                lp_record_get(p, i, &r);
                lp_record_put(out, i, &r);
            } else {
                meter_item m;
                meter_item_get(p, i, &m);
                meter_item_put(out, i, &m);
            }
        }
    } else {
        FUZZ_CHECK(payload_size(cmd, 0) == len);
        if (cmd == CMD_DCU_STATUS_RSP) {
            dcu_status st;
            dcu_status_get(p, &st);
            dcu_status_put(out, &st);
        } else if (cmd == CMD_LP_REQ) {
            uint32_t from, to;
            lp_req_get(p, &from, &to);
            lp_req_put(out, from, to);
        } else if (len > 0) {
            memcpy(out, p, len);        /* NACK: one opaque byte */
        }
    }
    FUZZ_CHECK(len == 0 || memcmp(out, p, len) == 0);
}

static void header_of(const frame *f, frame_hdr *h, uint8_t ctl)
{
    h->ctl = ctl;
    h->cmd = f->cmd;
    memcpy(h->sid, f->sid, FRAME_ID_SIZE);
    memcpy(h->did, f->did, FRAME_ID_SIZE);
    h->qsn = f->qsn;
    h->msn = f->msn;
    h->fsn = f->fsn;
}

/* A frame with a valid header and CRC: its fields, the encoder that must
 * give back the same bytes, the payload codecs, and frame_open. */
static void frame_properties(const frame *f, frame_result r)
{
    static uint8_t out[FRAME_SIZE_MAX];
    static uint8_t plain[FRAME_DATA_MAX];
    frame_hdr h;
    size_t plain_len = 0, n, i;
    uint32_t ic = 0;
    fep_err err;
    char id[FRAME_ID_SIZE + 1];

    FUZZ_CHECK(f->len >= FRAME_LEN_MIN && f->len <= FRAME_LEN_MAX);
    FUZZ_CHECK(f->data_len == (size_t)f->len - FRAME_CRC_SIZE);
    FUZZ_CHECK(f->data == f->raw + FRAME_HEADER_SIZE);
    FUZZ_CHECK((f->ctl & CTL_RESERVED) == 0);
    FUZZ_CHECK(hcs_xor(f->raw, HDR_HCS) == f->raw[HDR_HCS]);
    FUZZ_CHECK((crc16_x25(f->raw, FRAME_HEADER_SIZE + f->data_len) ==
                get_u16be(f->data + f->data_len)) == (r == FRAME_READY));

    /* The encoder, given the decoded fields, writes the same frame (CTL is
     * written as given, SEC included, when no key is passed). */
    if (r == FRAME_READY) {
        header_of(f, &h, f->ctl);
        n = frame_encode(out, sizeof out, &h, f->data, f->data_len, NULL, 0);
        FUZZ_CHECK(n == FRAME_HEADER_SIZE + (size_t)f->len);
        FUZZ_CHECK(memcmp(out, f->raw, n) == 0);
        codec_roundtrip(f->cmd, f->data, f->data_len);
    }

    /* frame_open: a short DATA or a bad tag is SECURITY and leaves plain
     * untouched; an authentic frame seals back to itself. */
    memset(plain, 0xA5, sizeof plain);
    err = frame_open(f, &frame_key, plain, &plain_len, &ic);
    if (err != FEP_OK) {
        FUZZ_CHECK(err == FEP_ERR_SECURITY);
        for (i = 0; i < f->data_len; i++)
            FUZZ_CHECK(plain[i] == 0xA5);
    } else {
        FUZZ_CHECK(f->data_len >= SEC_OVERHEAD);
        FUZZ_CHECK(plain_len == f->data_len - SEC_OVERHEAD);
        FUZZ_CHECK(ic == get_u32be(f->data));
        if (r == FRAME_READY && (f->ctl & CTL_SEC)) {
            header_of(f, &h, (uint8_t)(f->ctl & ~CTL_SEC));
            n = frame_encode(out, sizeof out, &h, plain, plain_len,
                             &frame_key, ic);
            FUZZ_CHECK(n == FRAME_HEADER_SIZE + (size_t)f->len);
            FUZZ_CHECK(memcmp(out, f->raw, n) == 0);
            codec_roundtrip(f->cmd, plain, plain_len);
        }
    }

    /* Ids: the unpadded text sets the same 8 bytes again (when it holds no
     * NUL, where frame_id_set stops). */
    n = frame_id_str(f->sid, id);
    FUZZ_CHECK(n <= FRAME_ID_SIZE && id[n] == '\0');
    if (memchr(f->sid, 0, n) == NULL) {
        uint8_t again[FRAME_ID_SIZE];
        frame_id_set(again, id);
        FUZZ_CHECK(memcmp(again, f->sid, FRAME_ID_SIZE) == 0);
    }
}

/* frame_scan over the whole buffer: the reference sequence of results. */
static size_t scan_whole(const uint8_t *buf, size_t len, size_t *garbage)
{
    size_t off = 0, n = 0;

    *garbage = 0;
    for (;;) {
        size_t consumed = 0, skipped = 0;
        frame f;
        frame_result r = frame_scan(buf + off, len - off, &f, &consumed,
                                    &skipped);

        FUZZ_CHECK(skipped <= consumed && consumed <= len - off);
        *garbage += skipped;
        if (r == FRAME_NEED_MORE) {
            FUZZ_CHECK(consumed == skipped);
            /* What is left is a partial header or frame that starts with
             * a SOF, or nothing. */
            FUZZ_CHECK(off + consumed == len || buf[off + consumed] == FRAME_SOF);
            FUZZ_CHECK(len - off - consumed < FRAME_SIZE_MAX);
            return n;
        }
        FUZZ_CHECK(buf[off + skipped] == FRAME_SOF);
        FUZZ_CHECK(f.raw == buf + off + skipped);
        if (r == FRAME_BAD_LENGTH) {
            FUZZ_CHECK(consumed - skipped == FRAME_HEADER_SIZE);
            FUZZ_CHECK(f.len < FRAME_LEN_MIN || f.len > FRAME_LEN_MAX);
        } else {
            FUZZ_CHECK(r == FRAME_READY || r == FRAME_BAD_CRC);
            FUZZ_CHECK(consumed - skipped == FRAME_HEADER_SIZE + (size_t)f.len);
            frame_properties(&f, r);
        }
        items[n].r = r;
        items[n].at = off + skipped;
        items[n].n = consumed - skipped;
        n++;
        off += consumed;
    }
}

/* A small PRNG for the read sizes, seeded from the input. */
static uint32_t xorshift(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* The same bytes through frame_rx, cut into reads of varying size: the
 * same frames at the same places, and the same garbage count. */
static void rx_compare(const uint8_t *buf, size_t len, size_t n_items,
                       size_t garbage)
{
    static frame_rx rx;
    uint32_t seed = 0x9E3779B9u ^ (uint32_t)len;
    size_t fed = 0, k = 0, taken = 0;

    if (len > 0)
        seed ^= (uint32_t)buf[0] << 8 | buf[len - 1];
    if (seed == 0)
        seed = 1;
    frame_rx_reset(&rx);
    for (;;) {
        frame f;
        frame_result r = frame_rx_next(&rx, &f);

        if (r != FRAME_NEED_MORE) {
            FUZZ_CHECK(k < n_items);
            FUZZ_CHECK(r == items[k].r);
            FUZZ_CHECK(f.raw >= rx.buf && f.raw + items[k].n <= rx.buf + RX_BUF_SIZE);
            FUZZ_CHECK(memcmp(f.raw, buf + items[k].at, items[k].n) == 0);
            taken += items[k].n;
            k++;
            continue;
        }
        if (fed == len)
            break;
        {
            size_t room, want;
            uint8_t *p = frame_rx_space(&rx, &room);
            uint32_t x = xorshift(&seed);

            /* Every frame was taken: a partial frame is held at the
             * front, and the room completes any frame. */
            FUZZ_CHECK(p == rx.buf + frame_rx_held(&rx));
            FUZZ_CHECK(room > 0 && frame_rx_held(&rx) + room >= FRAME_SIZE_MAX);
            want = (x & 3) == 0 ? room : 1 + (x >> 8) % 300;
            if (want > room)
                want = room;
            if (want > len - fed)
                want = len - fed;
            memcpy(p, buf + fed, want);
            frame_rx_commit(&rx, want);
            fed += want;
        }
    }
    FUZZ_CHECK(k == n_items);
    FUZZ_CHECK(rx.garbage == garbage);
    FUZZ_CHECK(frame_rx_held(&rx) == len - garbage - taken);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t n_items, garbage;

    if (!frame_key_ready) {
        gcm_init(&frame_key, fuzz_key);
        frame_key_ready = 1;
    }
    if (size > SCAN_MAX)
        size = SCAN_MAX;
    n_items = scan_whole(data, size, &garbage);
    rx_compare(data, size, n_items, garbage);

    /* The codecs over arbitrary bytes: the first byte names the command. */
    if (size > 0) {
        FUZZ_CHECK(payload_check(data[0], data + 1, size - 1) == FEP_OK ||
                   payload_check(data[0], data + 1, size - 1) == FEP_ERR_LENGTH ||
                   payload_check(data[0], data + 1, size - 1) == FEP_ERR_COMMAND);
        if (size - 1 <= FRAME_DATA_MAX)
            codec_roundtrip(data[0], data + 1, size - 1);
        FUZZ_CHECK(fep_strerror((fep_err)data[0]) != NULL);
        FUZZ_CHECK(fep_nack_name(data[0]) != NULL);
    }
    return 0;
}

/* ========================================================================
 * fuzz_session
 * ====================================================================== */
#elif defined(FUZZ_SESSION)

/*
 * The input: three control bytes, then the byte stream a peer sends.
 *
 *   byte 0  bits 0-1 the slot's kind: 0, 1 push, 2 poll, 3 reject (a push
 *           connection over the session limit);
 *           bits 2-4 the DCU a poll is for (among those with an address);
 *           bit 5    fepd is stopping (a poll asks nothing more);
 *           bit 6    fix each header's HCS and each frame's CRC in the
 *                    stream, except a frame whose MSN has bit 15 set;
 *           bit 7    seal each frame with SEC set whose SID is a keyed DCU
 *                    under that DCU's key (IC as it stands in DATA).
 *   byte 1  the size of each read: 0 as much as fits, else 1..255.
 *   byte 2  bit 0 the peer reads nothing (tx is never drained);
 *           bit 1 every commit fails (a write error in the pass);
 *           bit 2 every DCU is already in a session on another slot;
 *           bit 3 the store refuses every packet (an earlier packet of the
 *                 pass failed to write: store_add says no at once);
 *           bit 4 every key's ICs are used up (nothing protected can go).
 *
 * Bits 6 and 7 let the fuzzer get past the CRC and the tag without having
 * to guess them; byte streams without them test the checks themselves.
 */

#define CTRL_BYTES 3
#define STREAM_MAX 65536
#define OTHER_SLOT 1                    /* "another session" of byte 2 bit 2 */

static fepd daemon;
static char base_dir[PATH_SIZE];
static dcu_state *dcus_start;           /* the state after start-up */
static key_state *keys_start;
static rx_mark *marks_start;
static off_t store_start[STORE_FILES];  /* each CSV file's size after opening */
static uint32_t ic_sent_max[16];        /* per key: the highest IC seen in tx */
static uint64_t frames_checked;         /* d->stats.frames_sent already seen */
static uint8_t stream[STREAM_MAX];

/* The config: a keyed and a plaintext DCU that are polled, a keyed and a
 * plaintext push-only DCU, and a DCU that shares DCU00001's key. */
static int write_config(const char *path)
{
    static const unsigned keyed[] = { 1, 3 };
    FILE *f = fopen(path, "w");
    uint8_t key[KEY_SIZE];
    char hex[3][2 * KEY_SIZE + 1];
    unsigned i, k;

    if (!f)
        return -1;
    for (i = 0; i < 2; i++) {
        dcu_key(keyed[i], key);
        for (k = 0; k < KEY_SIZE; k++)
            snprintf(hex[i] + 2 * k, 3, "%02x", key[k]);
    }
    fprintf(f, "fep_id FEP00001\n"
               "data_dir %s/data\n"
               "state_dir %s/state\n"
               "sync packet\n"
               "max_sessions 4\n"
               "dcu DCU00001 127.0.0.1:9 key=%s poll=k,s,m,n\n"
               "dcu DCU00002 127.0.0.1:9 key=- poll=s,k\n"
               "dcu DCU00003 - key=%s\n"
               "dcu DCU00004 - key=-\n"
               "dcu DCU00005 127.0.0.1:9 key=%s poll=m\n",
            base_dir, base_dir, hex[0], hex[1], hex[0]);
    return fclose(f);
}

/* The temporary directory and whatever fepd made in it. */
static void remove_tree(const char *path)
{
    DIR *dir = opendir(path);
    struct dirent *e;

    if (!dir) {
        remove(path);
        return;
    }
    while ((e = readdir(dir)) != NULL) {
        char sub[PATH_SIZE + 64];

        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        remove_tree(sub);
    }
    closedir(dir);
    rmdir(path);
}

static void remove_base_dir(void)
{
    remove_tree(base_dir);
}

/* The store as fep.c start() opens it. */
static int fuzz_store_open(fepd *d, char *err, size_t errlen)
{
    store_config sc = { d->cfg.data_dir, d->cfg.fep_id, d->cfg.sync_packet,
                        d->cfg.rotate_s };

    return store_open(&d->store, &sc, err, errlen);
}

/* Start-up, once per process, as fep.c start() does it. */
static void session_init(void)
{
    const char *tmp = getenv("TMPDIR");
    char conf[PATH_SIZE + 16], err[1024];
    state_start how;
    fepd *d = &daemon;
    unsigned i;

    memset(&how, 0, sizeof how);

    /* A RAM file system makes the store's fsync cheap. */
    if (!tmp || !*tmp)
        tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(base_dir, sizeof base_dir, "%s/fuzz-session-XXXXXX", tmp);
    if (!mkdtemp(base_dir)) {
        perror("mkdtemp");
        abort();
    }
    atexit(remove_base_dir);
    snprintf(conf, sizeof conf, "%s/fep.conf", base_dir);
    log_set_level(getenv("FUZZ_LOG") ? LOG_DEBUG : -1);
    if (write_config(conf) != 0 ||
        config_load(conf, &d->cfg, err, sizeof err) != 0 ||
        fuzz_store_open(d, err, sizeof err) != 0 ||
        state_open(&d->state, &d->cfg, &how, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_session: start-up failed: %s\n", err);
        abort();
    }
    FUZZ_CHECK(d->state.n_keys <= sizeof ic_sent_max / sizeof ic_sent_max[0]);
    d->n_slots = 2;
    d->slots = calloc(d->n_slots, sizeof *d->slots);
    dcus_start = calloc(d->state.n_dcus, sizeof *dcus_start);
    keys_start = calloc(d->state.n_keys, sizeof *keys_start);
    marks_start = calloc(d->state.n_marks + 1, sizeof *marks_start);
    if (!d->slots || !dcus_start || !keys_start || !marks_start)
        abort();
    for (i = 0; i < d->state.n_dcus; i++)
        d->state.dcus[i].next_qsn = 1;
    memcpy(dcus_start, d->state.dcus, d->state.n_dcus * sizeof *dcus_start);
    memcpy(keys_start, d->state.keys, d->state.n_keys * sizeof *keys_start);
    memcpy(marks_start, d->state.marks, d->state.n_marks * sizeof *marks_start);
    for (i = 0; i < STORE_FILES; i++)
        store_start[i] = d->store.out[i].committed;
    d->listen_fd = d->metrics_fd = -1;
}

/* Each input starts from the state after start-up, with empty CSV files:
 * an input's result must not depend on the inputs run before it. */
static void session_reset(int stopping, int others_busy, int ics_used_up)
{
    fepd *d = &daemon;
    unsigned i;

    memcpy(d->state.dcus, dcus_start, d->state.n_dcus * sizeof *dcus_start);
    memcpy(d->state.keys, keys_start, d->state.n_keys * sizeof *keys_start);
    memcpy(d->state.marks, marks_start, d->state.n_marks * sizeof *marks_start);
    d->state.marks_raised = 0;
    for (i = 0; i < d->state.n_dcus; i++)
        if (others_busy)
            d->state.dcus[i].session = OTHER_SLOT;
    for (i = 0; i < d->state.n_keys; i++) {
        ic_sent_max[i] = 0;
        if (ics_used_up)
            d->state.keys[i].tx_ic_next = d->state.keys[i].tx_ic_reserved =
                0xFFFFFFFFu;
    }
    frames_checked = 0;
    d->state.dirty = 0;
    memset(&d->stats, 0, sizeof d->stats);
    for (i = 0; i < STORE_FILES; i++) {
        store_out *o = &d->store.out[i];

        if (o->fd >= 0 && ftruncate(o->fd, store_start[i]) == 0) {
            o->committed = store_start[i];
        } else {
            /* A failed pass may have closed the file: open it afresh. */
            char err[512];

            store_close(&d->store);
            if (fuzz_store_open(d, err, sizeof err) != 0) {
                fprintf(stderr, "fuzz_session: %s\n", err);
                abort();
            }
            break;
        }
    }
    FUZZ_CHECK(d->store.rows_pending == 0 && !d->store.pass_failed);
    d->stopping = stopping;
    d->sessions_active = 0;
    d->slots_in_use = 0;
}

/* What fep.c slot_open does to a slot. */
static session *slot_open_as(fepd *d, enum slot_kind kind)
{
    session *s = &d->slots[0];
    uint32_t gen = s->gen + 1;

    memset(s, 0, sizeof *s);
    s->gen = gen;
    s->state = SLOT_ACTIVE;
    s->kind = kind;
    s->fd = -1;
    s->dcu = -1;
    s->key_index = -1;
    s->opened_ms = sys_now_ms();
    s->session_deadline_ms = s->opened_ms + 1000;
    frame_rx_reset(&s->rx);
    d->slots_in_use = 1;
    d->sessions_active = kind == KIND_POLL || kind == KIND_PUSH;
    return s;
}

/* The bit-6/7 fix-ups of the stream (see the input format above). */
static void stream_fixup(uint8_t *buf, size_t len, int seal)
{
    size_t i = 0;

    while (i + FRAME_HEADER_SIZE <= len) {
        uint8_t *h = buf + i;
        size_t flen, data_len;
        int dcu;

        if (h[HDR_SOF] != FRAME_SOF) {
            i++;
            continue;
        }
        h[HDR_VER] = FRAME_VERSION;
        h[HDR_CTL] &= (uint8_t)~CTL_RESERVED;
        h[HDR_RSV] = 0;
        h[HDR_HCS] = hcs_xor(h, HDR_HCS);
        flen = get_u16be(h + HDR_LEN);
        if (flen < FRAME_LEN_MIN || flen > FRAME_LEN_MAX ||
            i + FRAME_HEADER_SIZE + flen > len) {
            i += FRAME_HEADER_SIZE;
            continue;
        }
        data_len = flen - FRAME_CRC_SIZE;
        dcu = config_find_dcu(&daemon.cfg, h + HDR_SID);
        if (seal && (h[HDR_CTL] & CTL_SEC) && data_len >= SEC_OVERHEAD &&
            dcu >= 0 && daemon.cfg.dcus[dcu].has_key) {
            uint8_t *p = h + FRAME_HEADER_SIZE, iv[GCM_IV_SIZE];
            size_t n = data_len - SEC_OVERHEAD;
            gcm_key key;

            gcm_init(&key, daemon.cfg.dcus[dcu].key);
            memcpy(iv, h + HDR_SID, FRAME_ID_SIZE);
            memcpy(iv + FRAME_ID_SIZE, p, SEC_IC_SIZE);
            gcm_seal(&key, iv, h, FRAME_HEADER_SIZE, p + SEC_IC_SIZE, n,
                     p + SEC_IC_SIZE, p + SEC_IC_SIZE + n, SEC_TAG_SIZE);
        }
        if (!(get_u16be(h + HDR_MSN) & 0x8000))
            put_u16be(h + FRAME_HEADER_SIZE + data_len,
                      crc16_x25(h, FRAME_HEADER_SIZE + data_len));
        i += FRAME_HEADER_SIZE + flen;
    }
}

/* Every frame fepd queued is whole and well formed: from fepd, to the
 * peer it names, protected exactly when that peer has a key (each new one
 * with an IC above the last, and opening under the key), a request, ACK
 * or NACK with the right payload. */
static void check_tx(fepd *d, session *s)
{
    size_t off = s->tx_off, n_frames = 0, k = 0;
    uint64_t fresh;

    FUZZ_CHECK(s->tx_off <= s->tx_len && s->tx_len <= TX_BUF_SIZE);
    for (off = s->tx_off; off < s->tx_len; n_frames++) {
        size_t consumed, skipped;
        frame f;

        FUZZ_CHECK(frame_scan(s->tx + off, s->tx_len - off, &f, &consumed,
                              &skipped) == FRAME_READY && skipped == 0);
        off += consumed;
    }
    fresh = d->stats.frames_sent - frames_checked;
    FUZZ_CHECK(fresh <= n_frames);
    frames_checked = d->stats.frames_sent;
    for (off = s->tx_off; off < s->tx_len; k++) {
        static uint8_t plain[FRAME_DATA_MAX];
        size_t consumed, skipped, len;
        const uint8_t *payload;
        frame f;
        int i, key;

        frame_scan(s->tx + off, s->tx_len - off, &f, &consumed, &skipped);
        off += consumed;
        if (k < n_frames - fresh)
            continue;                   /* checked when it was queued */
        FUZZ_CHECK(!(f.ctl & CTL_DIR_DCU) && (f.ctl & CTL_LAST));
        FUZZ_CHECK(memcmp(f.sid, d->cfg.sid, FRAME_ID_SIZE) == 0);
        i = config_find_dcu(&d->cfg, f.did);
        key = i >= 0 ? state_dcu_key(&d->state, (unsigned)i) : -1;
        if (key >= 0) {
            gcm_key gk;
            uint32_t ic;

            FUZZ_CHECK(f.ctl & CTL_SEC);
            gcm_init(&gk, d->cfg.dcus[i].key);
            FUZZ_CHECK(frame_open(&f, &gk, plain, &len, &ic) == FEP_OK);
            FUZZ_CHECK(ic > ic_sent_max[key]);
            ic_sent_max[key] = ic;
            payload = plain;
        } else {
            FUZZ_CHECK(!(f.ctl & CTL_SEC));
            payload = f.data;
            len = f.data_len;
        }
        FUZZ_CHECK(payload_check(f.cmd, payload, len) == FEP_OK);
        FUZZ_CHECK(f.cmd == CMD_ACK || f.cmd == CMD_NACK ||
                   f.cmd == CMD_LP_REQ || f.cmd == CMD_DCU_STATUS_REQ ||
                   f.cmd == CMD_METER_STATUS_REQ ||
                   f.cmd == CMD_METER_CHANGE_REQ);
        if (f.cmd == CMD_NACK)
            FUZZ_CHECK(payload[0] >= FEP_ERR_CRC &&
                       payload[0] <= FEP_NACK_CODE_MAX);
        if (f.cmd != CMD_ACK && f.cmd != CMD_NACK) {
            FUZZ_CHECK(s->kind == KIND_POLL);
            FUZZ_CHECK(f.fsn == 0);
        }
    }
}

/* The state after any step: the slot in a state the loop knows, the DCU
 * binding both ways, ICs only growing, statistics that add up. */
static void check_state(fepd *d, session *s)
{
    unsigned i;

    FUZZ_CHECK(s->state == SLOT_ACTIVE || s->state == SLOT_STORING ||
               s->state == SLOT_DRAINING);
    FUZZ_CHECK(s->dcu >= -1 && s->dcu < (int)d->cfg.n_dcus);
    if (s->dcu >= 0) {
        /* Bound while it exchanges; a draining slot may have let the DCU
         * go already, so that its next session is not BUSY. */
        int held = d->state.dcus[s->dcu].session;
        uint8_t sid[FRAME_ID_SIZE];

        FUZZ_CHECK(held == 0 || (held == -1 && s->state == SLOT_DRAINING));
        frame_id_set(sid, d->cfg.dcus[s->dcu].id);
        FUZZ_CHECK(memcmp(s->peer_sid, sid, FRAME_ID_SIZE) == 0);
        FUZZ_CHECK(s->key_index == state_dcu_key(&d->state, (unsigned)s->dcu));
        FUZZ_CHECK(s->kind != KIND_REJECT);
    }
    for (i = 0; i < d->state.n_dcus; i++) {
        const dcu_state *ds = &d->state.dcus[i];

        FUZZ_CHECK(ds->mark < 0 || d->state.marks[ds->mark].last_ic >=
                                       marks_start[ds->mark].last_ic);
        FUZZ_CHECK(ds->session == dcus_start[i].session || ds->session == 0 ||
                   ds->session == OTHER_SLOT);
        if ((int)i != s->dcu)
            FUZZ_CHECK(ds->records == dcus_start[i].records);
    }
    for (i = 0; i < d->state.n_keys; i++) {
        FUZZ_CHECK(d->state.keys[i].tx_ic_next >= keys_start[i].tx_ic_next ||
                   d->state.keys[i].tx_ic_next == 0xFFFFFFFFu);
        FUZZ_CHECK(d->state.keys[i].tx_ic_next <= d->state.keys[i].tx_ic_reserved);
    }
    FUZZ_CHECK(s->crc_strikes <= CRC_STRIKES_MAX);
    FUZZ_CHECK(d->stats.records_stored == s->records);
    if (s->state == SLOT_STORING) {
        FUZZ_CHECK(s->dcu >= 0 && s->wait == WAIT_NONE);
        FUZZ_CHECK(s->pending_rows >= 0 &&
                   (uint64_t)s->pending_rows <= d->store.rows_pending);
    }
    if (s->state == SLOT_DRAINING)
        FUZZ_CHECK(s->wait == WAIT_NONE);
    check_tx(d, s);
}

/* fep.c's commit_pass for the one slot, and its flush. */
static void commit_step(fepd *d, session *s, int commit_fails, int drain)
{
    while (s->state == SLOT_STORING) {
        int ok;

        if (commit_fails)
            d->store.pass_failed = 1;
        ok = store_commit(&d->store) == 0;
        FUZZ_CHECK(!commit_fails || !ok);
        FUZZ_CHECK(d->store.rows_pending == 0 && !d->store.pass_failed);
        sess_committed(d, s, ok);
        check_state(d, s);
        sess_process(d, s);
        check_state(d, s);
    }
    if (d->store.pass_failed)
        store_commit(&d->store);
    if (drain)
        s->tx_off = s->tx_len = 0;     /* the peer took every byte */
}

/* Between passes every CSV file is exactly its committed size: rows of
 * a refused packet are cut, rows of an acknowledged one are there. */
static void check_store(fepd *d)
{
    unsigned i;

    for (i = 0; i < STORE_FILES; i++) {
        const store_out *o = &d->store.out[i];
        struct stat st;

        FUZZ_CHECK(o->used == 0 && o->written == 0);
        FUZZ_CHECK(o->fd < 0 || (fstat(o->fd, &st) == 0 &&
                                 st.st_size == o->committed));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    static const enum slot_kind kinds[4] = { KIND_PUSH, KIND_PUSH, KIND_POLL,
                                             KIND_REJECT };
    fepd *d = &daemon;
    session *s;
    size_t len, pos = 0, chunk;
    int drain, commit_fails, store_refuses;
    unsigned i;

    if (!ready) {
        session_init();
        ready = 1;
    }
    if (size < CTRL_BYTES)
        return 0;
    len = size - CTRL_BYTES;
    if (len > STREAM_MAX)
        len = STREAM_MAX;
    memcpy(stream, data + CTRL_BYTES, len);
    if (data[0] & 0x40)
        stream_fixup(stream, len, (data[0] & 0x80) != 0);
    chunk = data[1];
    drain = !(data[2] & 1);
    commit_fails = (data[2] & 2) != 0;

    store_refuses = (data[2] & 8) != 0;
    session_reset((data[0] & 0x20) != 0, (data[2] & 4) != 0,
                  (data[2] & 16) != 0);
    s = slot_open_as(d, kinds[data[0] & 3]);
    if (s->kind == KIND_POLL) {
        /* The DCUs with an address: 0, 1 and 4. */
        static const int polled[] = { 0, 1, 4 };
        int dcu = polled[((data[0] >> 2) & 7) % 3];

        if (d->state.dcus[dcu].session >= 0)
            return 0;                   /* the scheduler would not start it */
        sess_poll_start(d, s, dcu);
        sess_poll_connected(d, s);
        check_state(d, s);
        if (drain)
            s->tx_off = s->tx_len = 0;
    }

    /* fep.c slot_read, one read at a time, until the session ends. */
    while (s->state == SLOT_ACTIVE) {
        size_t room, n;
        uint8_t *p = frame_rx_space(&s->rx, &room);

        /* Every frame was taken (or the slot would not be ACTIVE): the
         * room completes the partial frame held. */
        FUZZ_CHECK(room > 0 && frame_rx_held(&s->rx) + room >= FRAME_SIZE_MAX);
        if (pos == len) {
            /* End of stream: what is held is taken, then the slot ends. */
            if (store_refuses)
                d->store.pass_failed = 1;
            sess_process(d, s);
            check_state(d, s);
            commit_step(d, s, commit_fails, drain);
            if (s->state == SLOT_ACTIVE)
                sess_end(d, s, FEP_ERR_CLOSED);
            break;
        }
        n = chunk == 0 ? room : chunk;
        if (n > room)
            n = room;
        if (n > len - pos)
            n = len - pos;
        memcpy(p, stream + pos, n);
        frame_rx_commit(&s->rx, n);
        pos += n;
        if (store_refuses)
            d->store.pass_failed = 1;
        sess_process(d, s);
        check_state(d, s);
        commit_step(d, s, commit_fails, drain);
        check_state(d, s);
        check_store(d);
    }
    FUZZ_CHECK(s->state == SLOT_DRAINING);
    FUZZ_CHECK(s->result != FEP_OK || s->kind == KIND_POLL ||
               (s->dcu >= 0 && s->records == d->stats.records_stored));

    /* sess_end counted the session once; the DCU is released. */
    for (i = 0; i < d->state.n_dcus; i++)
        FUZZ_CHECK(d->state.dcus[i].session != 0);
    FUZZ_CHECK(d->stats.sessions_total[KIND_POLL][0] +
               d->stats.sessions_total[KIND_POLL][1] +
               d->stats.sessions_total[KIND_PUSH][0] +
               d->stats.sessions_total[KIND_PUSH][1] ==
               (s->kind == KIND_REJECT ? 0u : 1u));
    frame_rx_reset(&s->rx);
    s->state = SLOT_FREE;
    return 0;
}

/* ========================================================================
 * The seed corpora
 * ====================================================================== */
#elif defined(FUZZ_CORPUS)

#define SEED_MAX 16384

static uint8_t seed[SEED_MAX];
static size_t seed_len;
static const char *out_dir;
static unsigned seeds_written;

static void seed_begin(void)
{
    seed_len = 0;
}

static void seed_bytes(const void *p, size_t n)
{
    if (seed_len + n > SEED_MAX) {
        fprintf(stderr, "fuzz_corpus: seed too large\n");
        exit(1);
    }
    memcpy(seed + seed_len, p, n);
    seed_len += n;
}

static void seed_hex(const char *hex)
{
    while (*hex) {
        unsigned v;
        uint8_t b;

        if (*hex == ' ' || *hex == '\n') {
            hex++;
            continue;
        }
        if (sscanf(hex, "%2x", &v) != 1)
            exit(1);
        b = (uint8_t)v;
        seed_bytes(&b, 1);
        hex += 2;
    }
}

static void seed_write(const char *sub, const char *name)
{
    char path[512];
    FILE *f;

    snprintf(path, sizeof path, "%s/%s/%s", out_dir, sub, name);
    f = fopen(path, "wb");
    if (!f || fwrite(seed, 1, seed_len, f) != seed_len || fclose(f) != 0) {
        fprintf(stderr, "fuzz_corpus: %s: %s\n", path, strerror(errno));
        exit(1);
    }
    seeds_written++;
}

#define SEAL_LATER 2                    /* seed_frame's keyed: left to the harness */

/* One frame from DCU n (0: the FEP's id as SID, to DCU00001) appended,
 * plaintext (keyed 0), protected (1) or ready to be sealed (SEAL_LATER). */
static void seed_frame(unsigned from_dcu, uint8_t ctl, uint8_t cmd,
                       uint16_t qsn, uint16_t msn, uint16_t fsn,
                       const uint8_t *payload, size_t len, int keyed,
                       uint32_t ic)
{
    uint8_t out[FRAME_SIZE_MAX], key[KEY_SIZE];
    char id[16];
    frame_hdr h;
    gcm_key gk;
    size_t n;

    snprintf(id, sizeof id, "DCU%05u", from_dcu ? from_dcu : 1);
    h.ctl = ctl;
    h.cmd = cmd;
    frame_id_set(from_dcu ? h.sid : h.did, id);
    frame_id_set(from_dcu ? h.did : h.sid, "FEP00001");
    h.qsn = qsn;
    h.msn = msn;
    h.fsn = fsn;
    dcu_key(from_dcu ? from_dcu : 1, key);
    gcm_init(&gk, key);
    if (keyed == SEAL_LATER) {
        /* IC, the plaintext and a blank tag under SEC, for the session
         * harness to seal (input byte 0 bit 7). */
        uint8_t data[FRAME_DATA_MAX];

        put_u32be(data, ic);
        memcpy(data + SEC_IC_SIZE, payload, len);
        memset(data + SEC_IC_SIZE + len, 0, SEC_TAG_SIZE);
        h.ctl |= CTL_SEC;
        payload = data;
        len += SEC_OVERHEAD;
        keyed = 0;
        n = frame_encode(out, sizeof out, &h, payload, len, NULL, 0);
    } else {
        n = frame_encode(out, sizeof out, &h, payload, len,
                         keyed ? &gk : NULL, ic);
    }
    if (n == 0)
        exit(1);
    seed_bytes(out, n);
}

/* A K payload of count records of DCU n, starting at record first. */
static size_t lp_payload(uint8_t *p, unsigned n, unsigned first, unsigned count)
{
    unsigned i;

    p[0] = (uint8_t)count;
    for (i = 0; i < count; i++) {
        lp_record r;
        char meter[16];
        unsigned j = first + i;

        snprintf(meter, sizeof meter, "M%05u%06u", n, 0u);
        memcpy(r.meter_id, meter, METER_ID_SIZE);
        r.ts = 1767225600u + 900u * j;
        r.import_wh = 100 + (31 * n + 7 * j) % 1000;
        r.export_wh = (n + j) % 50;
        r.status = 0;
        lp_record_put(p, i, &r);
    }
    return payload_size(CMD_LP_RSP, count);
}

static size_t meter_payload(uint8_t *p, unsigned n, unsigned count, unsigned code)
{
    unsigned i;

    p[0] = (uint8_t)count;
    for (i = 0; i < count; i++) {
        meter_item m;
        char meter[16];

        snprintf(meter, sizeof meter, "M%05u%06u", n, i);
        memcpy(m.meter_id, meter, METER_ID_SIZE);
        m.code = (uint8_t)(code ? code : 1 + i % 3);
        m.ts = 1767225600u + i;
        meter_item_put(p, i, &m);
    }
    return payload_size(CMD_METER_STATUS_RSP, count);
}

static size_t status_payload(uint8_t *p)
{
    dcu_status st = { 0x0102, 3600, 1767225600u, 2, 0 };

    dcu_status_put(p, &st);
    return DCU_STATUS_SIZE;
}

#define DCU_MORE CTL_DIR_DCU
#define DCU_LAST (CTL_DIR_DCU | CTL_LAST)

static void frame_seeds(void)
{
    uint8_t p[FRAME_DATA_MAX], req[LP_REQ_SIZE];
    size_t n;
    unsigned i;

    seed_begin();                       /* PROTOCOL.md 6.1 */
    seed_hex("7E 01 20 6B 46 45 50 30 30 30 30 31 44 43 55 30 30 30 30 31"
             "00 07 00 00 00 00 00 00 0A 38 00 00 00 00 00 00 00 00 59 FA");
    seed_write("frame", "example-6.1-k");
    seed_begin();                       /* PROTOCOL.md 6.2 */
    seed_hex("7E 01 E0 4B 44 43 55 30 30 30 30 31 46 45 50 30"
             "30 30 30 31 00 07 00 00 00 00 00 00 2D FF 00 00"
             "00 01 E5 61 82 B7 32 06 A8 D7 32 43 EF 81 F5 23"
             "39 55 7D 9C C4 48 9F 46 DD B7 A9 D1 B9 2D 5A 63"
             "10 8F 25 4A 71 EC 7B EA 32 15 BD");
    seed_write("frame", "example-6.2-K-sealed");

    seed_begin();
    n = lp_payload(p, 1, 0, 2);
    seed_frame(1, DCU_LAST, CMD_LP_RSP, 7, 0, 0, p, n, 0, 0);
    seed_write("frame", "K-2-plain");
    seed_begin();
    n = lp_payload(p, 1, 0, LP_RECORDS_MAX_PLAIN);
    seed_frame(1, DCU_LAST, CMD_LP_RSP, 7, 0, 0, p, n, 0, 0);
    seed_write("frame", "K-77-plain-largest");
    seed_begin();
    n = lp_payload(p, 1, 0, 3);
    seed_frame(1, DCU_MORE, CMD_LP_RSP, 7, 0, 0, p, n, 1, 5);
    seed_write("frame", "K-3-sealed");
    seed_begin();
    n = status_payload(p);
    seed_frame(1, DCU_LAST, CMD_DCU_STATUS_RSP, 8, 1, 0, p, n, 0, 0);
    seed_write("frame", "S-plain");
    seed_begin();
    n = meter_payload(p, 1, 2, 0);
    seed_frame(1, DCU_LAST, CMD_METER_STATUS_RSP, 9, 2, 0, p, n, 0, 0);
    n = meter_payload(p, 1, 1, 0);
    seed_frame(1, DCU_LAST, CMD_METER_CHANGE_RSP, 10, 3, 0, p, n, 1, 9);
    seed_write("frame", "M-plain-N-sealed");
    seed_begin();
    seed_frame(0, CTL_LAST, CMD_ACK, 7, 1, 0, NULL, 0, 0, 0);
    p[0] = FEP_ERR_SEQUENCE;
    seed_frame(0, CTL_LAST, CMD_NACK, 7, 2, 1, p, 1, 1, 3);
    lp_req_put(req, 1767225600u, 1767312000u);
    seed_frame(0, CTL_LAST, CMD_LP_REQ, 8, 3, 0, req, sizeof req, 0, 0);
    seed_frame(0, CTL_LAST, CMD_DCU_STATUS_REQ, 9, 4, 0, NULL, 0, 1, 4);
    seed_write("frame", "ack-nack-k-s");

    /* Garbage (with false SOFs) around and between frames. */
    seed_begin();
    seed_hex("00 11 7E 22 7E 01 7E 01 20 33");
    n = lp_payload(p, 2, 0, 1);
    seed_frame(2, DCU_LAST, CMD_LP_RSP, 1, 0, 0, p, n, 0, 0);
    seed_hex("7E 7E 7E 01 00");
    seed_frame(2, DCU_LAST, CMD_LP_RSP, 1, 1, 0, p, n, 0, 0);
    seed_hex("7E 01 20");
    seed_write("frame", "garbage-between");
    /* A bad CRC, then a good frame. */
    seed_begin();
    n = lp_payload(p, 1, 0, 1);
    seed_frame(1, DCU_LAST, CMD_LP_RSP, 7, 0, 0, p, n, 0, 0);
    seed[seed_len - 1] ^= 0xFF;
    seed_frame(1, DCU_LAST, CMD_LP_RSP, 7, 1, 0, p, n, 0, 0);
    seed_write("frame", "bad-crc-then-good");
    /* LEN 2019 (out of range) with a right HCS, and LEN 0. */
    for (i = 0; i < 2; i++) {
        seed_begin();
        n = status_payload(p);
        seed_frame(1, DCU_LAST, CMD_DCU_STATUS_RSP, 7, 0, 0, p, n, 0, 0);
        put_u16be(seed + HDR_LEN, i ? 0 : FRAME_LEN_MAX + 1);
        seed[HDR_HCS] = hcs_xor(seed, HDR_HCS);
        seed_write("frame", i ? "len-0" : "len-2019");
    }
    /* A frame cut short, and a header only. */
    seed_begin();
    n = lp_payload(p, 1, 0, 4);
    seed_frame(1, DCU_LAST, CMD_LP_RSP, 7, 0, 0, p, n, 1, 2);
    seed_len -= 40;
    seed_write("frame", "cut-short");
    seed_begin();
    seed_frame(1, DCU_LAST, CMD_ACK, 7, 0, 0, NULL, 0, 0, 0);
    seed_len = FRAME_HEADER_SIZE - 3;
    seed_write("frame", "partial-header");
    /* A tag with one bit flipped, right CRC. */
    seed_begin();
    n = lp_payload(p, 1, 0, 1);
    seed_frame(1, DCU_LAST, CMD_LP_RSP, 7, 0, 0, p, n, 1, 1);
    seed[seed_len - 3] ^= 1;
    put_u16be(seed + seed_len - 2, crc16_x25(seed, seed_len - 2));
    seed_write("frame", "bad-tag");
    /* The codecs on their own: a command byte, then a payload. */
    seed_begin();
    seed_bytes("K", 1);
    n = lp_payload(p, 3, 0, 2);
    seed_bytes(p, n);
    seed_write("frame", "codec-K");
    seed_begin();
    seed_bytes("N", 1);
    n = meter_payload(p, 3, 3, 0);
    seed_bytes(p, n);
    seed_write("frame", "codec-N");
}

/* The three control bytes of a session input (see FUZZ_SESSION). */
static void session_begin(uint8_t mode, uint8_t chunk, uint8_t policy)
{
    uint8_t c[3];

    c[0] = mode;
    c[1] = chunk;
    c[2] = policy;
    seed_begin();
    seed_bytes(c, 3);
}

#define MODE_PUSH 0
#define MODE_POLL 2
#define MODE_REJECT 3
#define POLL_DCU(i) ((uint8_t)((i) << 2))   /* 0 DCU00001, 1 DCU00002, 2 DCU00005 */
#define MODE_STOPPING 0x20
#define MODE_FIXUP 0x40
#define MODE_SEAL 0x80

/* A push K session of DCU n: packets of per records, LAST on the final. */
static void push_k(unsigned n, int keyed, unsigned packets, unsigned per,
                   uint32_t ic)
{
    uint8_t p[FRAME_DATA_MAX];
    unsigned i;

    for (i = 0; i < packets; i++) {
        size_t len = lp_payload(p, n, i * per, per);
        seed_frame(n, i + 1 == packets ? DCU_LAST : DCU_MORE, CMD_LP_RSP, 1,
                   (uint16_t)i, (uint16_t)i, p, len, keyed, ic + i);
    }
}

static void session_seeds(void)
{
    uint8_t p[FRAME_DATA_MAX];
    size_t n;
    unsigned i;

    session_begin(MODE_PUSH, 0, 0);
    push_k(4, 0, 2, 3, 0);
    seed_write("session", "push-plain-K");
    session_begin(MODE_PUSH, 1, 0);
    push_k(4, 0, 2, 1, 0);
    seed_write("session", "push-plain-K-bytewise");
    session_begin(MODE_PUSH, 0, 0);
    push_k(3, 1, 3, 2, 1);
    seed_write("session", "push-keyed-K");
    session_begin(MODE_PUSH, 17, 0);
    push_k(1, 1, 2, LP_RECORDS_MAX_SEC, 100);
    seed_write("session", "push-keyed-K-largest");

    /* Sealed by the harness: the seed's tag bytes are placeholders. */
    session_begin(MODE_PUSH | MODE_FIXUP | MODE_SEAL, 0, 0);
    push_k(3, SEAL_LATER, 2, 2, 7);
    seed_write("session", "push-keyed-K-fixup");

    session_begin(MODE_PUSH, 0, 0);
    n = status_payload(p);
    seed_frame(4, DCU_LAST, CMD_DCU_STATUS_RSP, 5, 0, 0, p, n, 0, 0);
    seed_write("session", "push-S");
    session_begin(MODE_PUSH, 0, 0);
    n = meter_payload(p, 3, 3, 0);
    seed_frame(3, DCU_MORE, CMD_METER_STATUS_RSP, 6, 0, 0, p, n, 1, 1);
    n = meter_payload(p, 3, 0, 0);
    seed_frame(3, DCU_LAST, CMD_METER_STATUS_RSP, 6, 1, 1, p, n, 1, 2);
    seed_write("session", "push-keyed-M");
    session_begin(MODE_PUSH, 0, 0);
    n = meter_payload(p, 4, 2, 2);
    seed_frame(4, DCU_LAST, CMD_METER_CHANGE_RSP, 6, 0, 0, p, n, 0, 0);
    seed_write("session", "push-N");

    /* Rule 5: the packet just acknowledged, again. */
    session_begin(MODE_PUSH, 0, 0);
    n = lp_payload(p, 4, 0, 2);
    seed_frame(4, DCU_MORE, CMD_LP_RSP, 1, 0, 0, p, n, 0, 0);
    seed_frame(4, DCU_MORE, CMD_LP_RSP, 1, 1, 0, p, n, 0, 0);
    seed_frame(4, DCU_LAST, CMD_LP_RSP, 1, 2, 1, p, n, 0, 0);
    seed_write("session", "push-dup-fsn");
    /* Rule 3: two bad CRCs, then the good copy. */
    session_begin(MODE_PUSH, 0, 0);
    n = lp_payload(p, 3, 0, 2);
    seed_frame(3, DCU_LAST, CMD_LP_RSP, 1, 0, 0, p, n, 1, 1);
    seed[seed_len - 1] ^= 0x55;
    seed_frame(3, DCU_LAST, CMD_LP_RSP, 1, 1, 0, p, n, 1, 2);
    seed[seed_len - 2] ^= 0x55;
    seed_frame(3, DCU_LAST, CMD_LP_RSP, 1, 2, 0, p, n, 1, 3);
    seed_write("session", "push-crc-retry");
    /* Replay: an IC not above the last accepted. */
    session_begin(MODE_PUSH, 0, 0);
    n = lp_payload(p, 3, 0, 1);
    seed_frame(3, DCU_MORE, CMD_LP_RSP, 1, 0, 0, p, n, 1, 10);
    seed_frame(3, DCU_LAST, CMD_LP_RSP, 1, 1, 1, p, n, 1, 10);
    seed_write("session", "push-replay");
    /* Garbage first, then a session; an unknown SID; a wrong FSN. */
    session_begin(MODE_PUSH, 5, 0);
    seed_hex("01 02 03 7E 04 05 7E 01 20 06");
    push_k(4, 0, 1, 1, 0);
    seed_write("session", "push-garbage");
    session_begin(MODE_PUSH, 0, 0);
    push_k(9, 0, 1, 1, 0);
    seed_write("session", "push-unknown");
    session_begin(MODE_PUSH, 0, 0);
    n = lp_payload(p, 4, 0, 1);
    seed_frame(4, DCU_MORE, CMD_LP_RSP, 1, 0, 0, p, n, 0, 0);
    seed_frame(4, DCU_LAST, CMD_LP_RSP, 1, 1, 5, p, n, 0, 0);
    seed_write("session", "push-skip-fsn");
    /* Plaintext from a keyed DCU; an S where a K is expected. */
    session_begin(MODE_PUSH, 0, 0);
    push_k(3, 0, 1, 1, 0);
    seed_write("session", "push-keyed-sends-plain");
    /* Every commit fails: NACK STORE. */
    session_begin(MODE_PUSH, 0, 2);
    push_k(4, 0, 2, 2, 0);
    seed_write("session", "push-store-fails");
    /* A connection over the limit, and a DCU already in a session. */
    session_begin(MODE_REJECT, 0, 0);
    push_k(3, 1, 1, 1, 1);
    seed_write("session", "reject-busy");
    session_begin(MODE_PUSH, 0, 4);
    push_k(4, 0, 1, 1, 0);
    seed_write("session", "push-dcu-busy");
    /* A peer that reads nothing: tx fills up. */
    session_begin(MODE_PUSH, 0, 1);
    n = lp_payload(p, 4, 0, 0);
    for (n = 0; n < 140; n++) {
        uint8_t q[1] = { 0 };
        seed_frame(4, DCU_MORE, CMD_LP_RSP, 1, (uint16_t)n, (uint16_t)n, q, 1,
                   0, 0);
    }
    seed_write("session", "push-noread");
    /* The same, with the packet just acknowledged sent again and again. */
    session_begin(MODE_PUSH, 0, 1);
    n = lp_payload(p, 4, 0, 1);
    for (i = 0; i < 140; i++)
        seed_frame(4, DCU_MORE, CMD_LP_RSP, 1, (uint16_t)i, 0, p, n, 0, 0);
    seed_write("session", "push-noread-dups");
    /* The store refuses (NACK STORE); the ICs are used up (no ACK can be
     * protected, no request sent). */
    session_begin(MODE_PUSH, 0, 8);
    push_k(4, 0, 1, 1, 0);
    seed_write("session", "push-store-refuses");
    session_begin(MODE_PUSH, 0, 16);
    push_k(3, 1, 1, 1, 1);
    seed_write("session", "push-ics-used-up");
    session_begin(MODE_POLL | POLL_DCU(0), 0, 16);
    seed_write("session", "poll-ics-used-up");

    /* Poll cycles: DCU00001 (keyed, k s m n), DCU00002 (plain, s k). */
    session_begin(MODE_POLL | POLL_DCU(0), 0, 0);
    n = lp_payload(p, 1, 0, 2);
    seed_frame(1, DCU_MORE, CMD_LP_RSP, 1, 0, 0, p, n, 1, 1);
    seed_frame(1, DCU_LAST, CMD_LP_RSP, 1, 1, 1, p, n, 1, 2);
    n = status_payload(p);
    seed_frame(1, DCU_LAST, CMD_DCU_STATUS_RSP, 2, 2, 0, p, n, 1, 3);
    n = meter_payload(p, 1, 2, 0);
    seed_frame(1, DCU_LAST, CMD_METER_STATUS_RSP, 3, 3, 0, p, n, 1, 4);
    seed_frame(1, DCU_LAST, CMD_METER_CHANGE_RSP, 4, 4, 0, p, n, 1, 5);
    seed_write("session", "poll-keyed-ksmn");
    session_begin(MODE_POLL | POLL_DCU(1), 3, 0);
    n = status_payload(p);
    seed_frame(2, DCU_LAST, CMD_DCU_STATUS_RSP, 1, 0, 0, p, n, 0, 0);
    n = lp_payload(p, 2, 0, 1);
    seed_frame(2, DCU_LAST, CMD_LP_RSP, 2, 1, 0, p, n, 0, 0);
    seed_write("session", "poll-plain-sk");
    /* Rule 7: the DCU refuses a request with a NACK, then an ACK. */
    session_begin(MODE_POLL | POLL_DCU(1), 0, 0);
    p[0] = FEP_ERR_COMMAND;
    seed_frame(2, DCU_LAST, CMD_NACK, 1, 0, 0, p, 1, 0, 0);
    seed_frame(2, DCU_LAST, CMD_ACK, 2, 1, 0, NULL, 0, 0, 0);
    seed_write("session", "poll-refused");
    /* A response of the wrong kind; a stopping fepd. */
    session_begin(MODE_POLL | POLL_DCU(2), 0, 0);
    n = status_payload(p);
    seed_frame(5, DCU_LAST, CMD_DCU_STATUS_RSP, 1, 0, 0, p, n, 1, 1);
    seed_write("session", "poll-wrong-response");
    session_begin(MODE_POLL | POLL_DCU(0) | MODE_STOPPING, 0, 0);
    n = lp_payload(p, 1, 0, 1);
    seed_frame(1, DCU_LAST, CMD_LP_RSP, 1, 0, 0, p, n, 1, 1);
    seed_write("session", "poll-stopping");
}

int main(int argc, char **argv)
{
    char path[512];

    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_corpus DIR  (writes DIR/frame, DIR/session)\n");
        return 2;
    }
    out_dir = argv[1];
    snprintf(path, sizeof path, "%s/frame", out_dir);
    mkdir(out_dir, 0755);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/session", out_dir);
    mkdir(path, 0755);
    frame_seeds();
    session_seeds();
    printf("fuzz_corpus: %u seeds in %s\n", seeds_written, out_dir);
    return 0;
}

#else
#error "build with -DFUZZ_FRAME, -DFUZZ_SESSION or -DFUZZ_CORPUS"
#endif

/* ========================================================================
 * Replaying inputs without libFuzzer
 * ====================================================================== */
#if defined(FUZZ_STANDALONE) && !defined(FUZZ_CORPUS)

/* Each file named, or each file of each directory named, run once. */
static int run_file(const char *path)
{
    static uint8_t buf[1 << 20];
    FILE *f = fopen(path, "rb");
    size_t n;

    if (!f) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        return -1;
    }
    n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    return 0;
}

int main(int argc, char **argv)
{
    int i, bad = 0;
    unsigned runs = 0;

    for (i = 1; i < argc; i++) {
        DIR *dir = opendir(argv[i]);
        struct dirent *e;

        if (!dir) {
            bad |= run_file(argv[i]) != 0;
            runs++;
            continue;
        }
        while ((e = readdir(dir)) != NULL) {
            char path[1024];

            if (e->d_name[0] == '.')
                continue;
            snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
            bad |= run_file(path) != 0;
            runs++;
        }
        closedir(dir);
    }
    printf("%u inputs run\n", runs);
    return bad;
}
#endif
