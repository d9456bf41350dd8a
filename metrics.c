/*
 * metrics.c -- the Prometheus text exposition of DESIGN.md section 5, and
 * the parser of the one HTTP request that asks for it.
 *
 * Owns: nothing.  It reads fepd's tables (the statistics, the slot counts,
 * the DCU config and state, the descriptor ledger) and never writes them;
 * the only state between two calls is the caller's cursor.
 * Must not touch: sessions, sockets, the allocator.  There is no registry of
 * callbacks into sessions: every number here is a plain counter that fep.c
 * and session.c keep in fepd, per kind, per NACK code or per DCU index, so a
 * closed or reused slot can never be reached from here.
 *
 * Why numbered lines.  The exposition is a sequence of lines numbered from
 * 0 (per family: HELP, TYPE, then its samples), and any line can be
 * formatted from its number alone.  metrics_render writes the whole lines
 * that fit from the cursor on and moves the cursor; a line that does not fit
 * waits for the next call.  So a response of any size, 10,000 DCUs
 * included, goes out through a session's fixed transmit buffer as that
 * buffer drains, with no allocation and no copy of the whole text.  Values
 * are read when their line is formatted: a long response is not a snapshot
 * of one instant, which Prometheus counters tolerate.
 *
 * metrics_parse_request is a pure function over the bytes received so far,
 * in the manner of picohttpparser: need more, or the status to answer.
 */
#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "fep.h"

/* Longest line, with room to spare: a DCU id escaped is at most 16 bytes. */
#define METRICS_LINE_MAX 256
#define LABELS_MAX 64

enum metric {
    M_SESSIONS_ACTIVE,
    M_SESSIONS_TOTAL,
    M_FRAMES_RECEIVED,
    M_FRAMES_SENT,
    M_NACKS_SENT,
    M_RECORDS_STORED,
    M_GARBAGE_BYTES,
    M_SLOTS_IN_USE,
    M_SLOTS_CAPACITY,
    M_STATIC_MEMORY,
    M_TIMEOUTS,
    M_SLOTS_ACQUIRED,
    M_SLOTS_RELEASED,
    M_BUSY_REJECTED,
    M_DESCRIPTORS_OPEN,
    M_DCUS_CONFIGURED,
    M_DCUS_CAPACITY,
    M_CONFIG_RELOADS,
    M_COMMIT_PASSES,
    M_STATE_SYNCS,
    M_BUILD_INFO,
    M_SEGMENTS_READY,
    /* Last: the only family whose length a reload can change while a
     * response is being written; metrics_place keeps a scrape's place in
     * it across the reload. */
    M_DCU_LAST_SUCCESS,
    METRIC_FAMILIES
};

/* Indexed by enum metric; the names are part of DESIGN.md section 5. */
static const struct family {
    const char *name;
    const char *type;
    const char *help;
} families[METRIC_FAMILIES] = {
    { "fep_sessions_active", "gauge", "Poll and push sessions open now." },
    { "fep_sessions_total", "counter",
      "Poll and push sessions ended, by kind and result." },
    { "fep_frames_received_total", "counter",
      "Frames received behind a valid header, bad CRC included." },
    { "fep_frames_sent_total", "counter", "Frames sent." },
    { "fep_nacks_sent_total", "counter", "NACKs sent, by code." },
    { "fep_records_stored_total", "counter", "Rows written, all files." },
    { "fep_garbage_bytes_total", "counter",
      "Bytes skipped while looking for a frame." },
    { "fep_slots_in_use", "gauge", "Slots in use, all kinds." },
    { "fep_slots_capacity", "gauge",
      "Slots allocated at start-up, all kinds." },
    { "fep_static_memory_bytes", "gauge", "Memory allocated at start-up." },
    { "fep_timeouts_total", "counter", "Deadlines that expired." },
    { "fep_slots_acquired_total", "counter", "Slots opened." },
    { "fep_slots_released_total", "counter", "Slots closed." },
    { "fep_busy_rejected_total", "counter",
      "Connections closed at once because no slot was free." },
    { "fep_descriptors_open", "gauge",
      "Descriptors open through the system layer." },
    { "fep_dcus_configured", "gauge", "DCUs this fepd (shard) serves." },
    { "fep_dcus_capacity", "gauge",
      "DCUs the table holds (max_dcus): a reload may add up to it." },
    { "fep_config_reloads_total", "counter",
      "Reloads of the config file (SIGHUP), by result." },
    { "fep_commit_passes_total", "counter",
      "Loop passes whose packets were committed together." },
    { "fep_state_syncs_total", "counter",
      "Writes of the state file or journal, each with its fsync." },
    { "fep_build_info", "gauge", "Always 1; the version is in its label." },
    { "fep_segments_ready_total", "counter",
      "CSV segments handed off to data_dir/ready/ (rotate)." },
    { "fep_dcu_last_success_timestamp_seconds", "gauge",
      "Unix time of the last successful session of each DCU, 0 never." },
};

/* ------------------------------------------------------------------------
 * Samples
 * ---------------------------------------------------------------------- */

static uint32_t family_samples(const fepd *d, enum metric m)
{
    switch (m) {
    case M_SESSIONS_TOTAL:
        return 4;                       /* kind x result */
    case M_NACKS_SENT:
        return FEP_NACK_CODE_MAX;       /* codes 1..10 */
    case M_CONFIG_RELOADS:
        return 2;                       /* ok, error */
    case M_DCU_LAST_SUCCESS:
        return d->cfg.n_live;
    default:
        return 1;
    }
}

static uint64_t descriptors_open(void)
{
    sys_ledger l = sys_ledger_get();

    return l.opened >= l.closed ? l.opened - l.closed : 0;
}

/* Sample i of the per-DCU families is the i-th DCU in SID order: removed
 * DCUs are left out, and the order does not depend on the file's. */
static uint32_t dcu_of_sample(const fepd *d, uint32_t i)
{
    return i < d->cfg.n_live ? d->cfg.by_sid[i] : 0;
}

static uint64_t last_success(const fepd *d, uint32_t i)
{
    int64_t s;

    i = dcu_of_sample(d, i);
    if (!d->state.dcus || i >= d->state.n_dcus)
        return 0;
    s = d->state.dcus[i].last_success_s;
    return s > 0 ? (uint64_t)s : 0;
}

static uint64_t sample_value(const fepd *d, enum metric m, uint32_t i)
{
    const fep_stats *st = &d->stats;

    switch (m) {
    case M_SESSIONS_ACTIVE: return d->sessions_active;
    case M_SESSIONS_TOTAL: return st->sessions_total[i / 2][i % 2];
    case M_FRAMES_RECEIVED: return st->frames_received;
    case M_FRAMES_SENT: return st->frames_sent;
    case M_NACKS_SENT: return st->nacks_sent[i + 1];
    case M_RECORDS_STORED: return st->records_stored;
    case M_GARBAGE_BYTES: return st->garbage_bytes;
    case M_SLOTS_IN_USE: return d->slots_in_use;
    case M_SLOTS_CAPACITY: return d->n_slots;
    case M_STATIC_MEMORY: return d->static_memory_bytes;
    case M_TIMEOUTS: return st->timeouts;
    case M_SLOTS_ACQUIRED: return st->slots_acquired;
    case M_SLOTS_RELEASED: return st->slots_released;
    case M_BUSY_REJECTED: return st->busy_rejected;
    case M_DESCRIPTORS_OPEN: return descriptors_open();
    case M_DCUS_CONFIGURED: return d->cfg.n_live;
    case M_DCUS_CAPACITY: return d->cfg.dcus_cap;
    case M_CONFIG_RELOADS: return st->reloads[i];
    case M_COMMIT_PASSES: return st->commit_passes;
    case M_STATE_SYNCS: return d->state.syncs;
    case M_DCU_LAST_SUCCESS: return last_success(d, i);
    case M_BUILD_INFO: return 1;
    case M_SEGMENTS_READY: return d->store.segments_ready;
    case METRIC_FAMILIES: break;
    }
    return 0;
}

/* A label value per the text format: backslash, quote and newline escaped. */
static void escape_label(const char *s, char *out, size_t cap)
{
    size_t n = 0;

    for (; *s && n + 3 <= cap; s++) {
        if (*s == '\\' || *s == '"' || *s == '\n') {
            out[n++] = '\\';
            out[n++] = *s == '\n' ? 'n' : *s;
        } else {
            out[n++] = *s;
        }
    }
    out[n] = '\0';
}

/* "{...}" for sample i of m, or "" for a family without labels. */
static void sample_labels(const fepd *d, enum metric m, uint32_t i, char *out,
                          size_t cap)
{
    static const char *const kinds[2] = { "poll", "push" };
    static const char *const results[2] = { "ok", "error" };
    char id[2 * FRAME_ID_SIZE + 1];

    switch (m) {
    case M_SESSIONS_TOTAL:
        snprintf(out, cap, "{kind=\"%s\",result=\"%s\"}", kinds[i / 2],
                 results[i % 2]);
        break;
    case M_NACKS_SENT:
        snprintf(out, cap, "{code=\"%s\"}", fep_nack_name(i + 1));
        break;
    case M_CONFIG_RELOADS:
        snprintf(out, cap, "{result=\"%s\"}", results[i]);
        break;
    case M_DCU_LAST_SUCCESS:
        escape_label(d->cfg.dcus[dcu_of_sample(d, i)].id, id, sizeof id);
        snprintf(out, cap, "{dcu=\"%s\"}", id);
        break;
    case M_BUILD_INFO:
        snprintf(out, cap, "{version=\"%s\"}", FEP_VERSION);
        break;
    default:
        out[0] = '\0';
        break;
    }
}

/* ------------------------------------------------------------------------
 * Lines
 * ---------------------------------------------------------------------- */

/* The family of line n and the line's place in it (0 HELP, 1 TYPE, 2.. the
 * samples); -1 when n is past the last line. */
static int line_locate(const fepd *d, uint32_t n, enum metric *m, uint32_t *pos)
{
    int k;

    for (k = 0; k < METRIC_FAMILIES; k++) {
        uint32_t lines = 2 + family_samples(d, (enum metric)k);
        if (n < lines) {
            *m = (enum metric)k;
            *pos = n;
            return 0;
        }
        n -= lines;
    }
    return -1;
}

/* Line n with its newline into line[0..cap); its length, 0 past the end. */
static size_t line_format(const fepd *d, uint32_t n, char *line, size_t cap)
{
    char labels[LABELS_MAX];
    enum metric m;
    uint32_t pos;
    int len;

    if (line_locate(d, n, &m, &pos) != 0)
        return 0;
    if (pos == 0) {
        len = snprintf(line, cap, "# HELP %s %s\n", families[m].name,
                       families[m].help);
    } else if (pos == 1) {
        len = snprintf(line, cap, "# TYPE %s %s\n", families[m].name,
                       families[m].type);
    } else {
        sample_labels(d, m, pos - 2, labels, sizeof labels);
        len = snprintf(line, cap, "%s%s %" PRIu64 "\n", families[m].name,
                       labels, sample_value(d, m, pos - 2));
    }
    assert(len > 0 && (size_t)len < cap);
    return (size_t)len;
}

/* The first line (HELP) of the per-DCU family: the families before it
 * have fixed lengths. */
static uint32_t dcu_family_start(const fepd *d)
{
    uint32_t n = 0;
    int k;

    for (k = 0; k < M_DCU_LAST_SUCCESS; k++)
        n += 2 + family_samples(d, (enum metric)k);
    return n;
}

void metrics_place_hold(const fepd *d, uint32_t cursor, metrics_place *p)
{
    uint32_t first = dcu_family_start(d) + 2;   /* after HELP and TYPE */

    memset(p, 0, sizeof *p);
    p->cursor = cursor;
    p->at = PLACE_LINE;
    if (cursor < first)
        return;
    if (cursor - first >= d->cfg.n_live) {
        p->at = PLACE_DCUS_DONE;
        return;
    }
    p->at = PLACE_DCU;
    frame_id_set(p->sid, d->cfg.dcus[dcu_of_sample(d, cursor - first)].id);
}

uint32_t metrics_place_find(const fepd *d, const metrics_place *p)
{
    uint32_t first = dcu_family_start(d) + 2;

    switch (p->at) {
    case PLACE_DCU:
        return first + config_sid_rank(&d->cfg, p->sid);
    case PLACE_DCUS_DONE:
        return first + d->cfg.n_live;
    case PLACE_LINE:
        break;
    }
    return p->cursor;
}

size_t metrics_render(const fepd *d, uint32_t *cursor, char *out, size_t cap)
{
    char line[METRICS_LINE_MAX];
    size_t used = 0, len;

    /* Every line fits in an empty buffer, so a call that writes nothing
     * always means the end. */
    assert(cap >= METRICS_LINE_MAX);
    while ((len = line_format(d, *cursor, line, sizeof line)) > 0 &&
           len <= cap - used) {
        memcpy(out + used, line, len);
        used += len;
        (*cursor)++;
    }
    return used;
}

/* ------------------------------------------------------------------------
 * The request
 * ---------------------------------------------------------------------- */

/* Length of the head (through its blank line) found in p[0..n), or 0.  A
 * blank line is "\n\n" or "\n\r\n", which covers CRLF and bare LF. */
static size_t head_length(const uint8_t *p, size_t n)
{
    size_t i;

    for (i = 0; i + 1 < n; i++) {
        if (p[i] != '\n')
            continue;
        if (p[i + 1] == '\n')
            return i + 2;
        if (p[i + 1] == '\r' && i + 2 < n && p[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

/* An RFC 9110 token character, as in a method name. */
static int is_tchar(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
           (c >= 'A' && c <= 'Z') || (c != 0 && strchr("!#$%&'*+-.^_`|~", c));
}

/* Length of the run of bytes at p, within n, that in_class accepts. */
static size_t span(const uint8_t *p, size_t n, int (*in_class)(uint8_t))
{
    size_t i = 0;

    while (i < n && in_class(p[i]))
        i++;
    return i;
}

static int is_target_char(uint8_t c)
{
    return c > 0x20 && c < 0x7F;
}

static int version_valid(const uint8_t *p, size_t n)
{
    return n == 8 && memcmp(p, "HTTP/", 5) == 0 && p[5] >= '0' &&
           p[5] <= '9' && p[6] == '.' && p[7] >= '0' && p[7] <= '9';
}

static int target_is_metrics(const uint8_t *t, size_t n)
{
    return n >= 8 && memcmp(t, "/metrics", 8) == 0 && (n == 8 || t[8] == '?');
}

/* The status for a request line p[0..n) without its line end. */
static int request_line_status(const uint8_t *p, size_t n)
{
    size_t mlen = span(p, n, is_tchar), tlen;
    const uint8_t *target = p + mlen + 1;

    if (mlen == 0 || mlen >= n || p[mlen] != ' ')
        return 400;
    tlen = span(target, n - mlen - 1, is_target_char);
    if (tlen == 0 || mlen + 1 + tlen >= n || target[tlen] != ' ' ||
        !version_valid(target + tlen + 1, n - mlen - tlen - 2))
        return 400;
    if (mlen != 3 || memcmp(p, "GET", 3) != 0)
        return 405;
    return target_is_metrics(target, tlen) ? 200 : 404;
}

int metrics_parse_request(const uint8_t *p, size_t n)
{
    size_t scan = n < METRICS_REQUEST_MAX ? n : METRICS_REQUEST_MAX;
    size_t line;

    if (head_length(p, scan) == 0)
        return n >= METRICS_REQUEST_MAX ? 400 : 0;
    line = (size_t)((const uint8_t *)memchr(p, '\n', scan) - p);
    if (line > 0 && p[line - 1] == '\r')
        line--;
    return request_line_status(p, line);
}
