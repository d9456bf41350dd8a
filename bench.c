/*
 * bench.c -- the core benchmark: how fast one core decodes frames and
 * opens and seals protected payloads.
 *
 * Prints one row per figure: MB/s (10^6 bytes per second) and frames/s,
 * each measured with CLOCK_MONOTONIC over at least one second.  The targets
 * are printed beside the figures for the reader; the program never fails on
 * a figure (a loaded machine must not break a build), only when a figure's
 * own work went wrong (a frame that did not decode, a tag that did not
 * verify), because then the figure would be measuring something else.
 *
 * A figure is a function that fills a bench_result; add a row by writing one
 * more and listing it in bench_rows[].
 *
 * Owns: the static buffers below.  Uses crypto.c and frame.c only.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "fep.h"

#define BENCH_MIN_NS 1000000000LL       /* each figure runs at least 1 s */
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

/* Keeps results alive so that the compiler cannot drop the work. */
static volatile unsigned long long bench_sink;

static long long now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
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
 * Figure: frame_rx decoding (header checks, CRC) of 2048-byte frames
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
    } while (r->ns < BENCH_MIN_NS);
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
    } while (r->ns < BENCH_MIN_NS);
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
    } while (r->ns < BENCH_MIN_NS);
}

/* ------------------------------------------------------------------------
 * The table
 * ---------------------------------------------------------------------- */

static const bench_row bench_rows[] = {
    { "decode 2048 B frames, 64 KiB reads", ">= 500 MB/s", run_decode },
    { "GCM open 2000 B payload (frame_open)", ">= 40 MB/s", run_open },
    { "GCM seal 2000 B payload (frame_encode)", ">= 40 MB/s", run_seal },
};

int main(void)
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
    return failed ? 1 : 0;
}
