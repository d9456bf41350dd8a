/*
 * store.c -- the CSV files of DESIGN.md section 4, with group commit, and
 * their handoff to data_dir/ready/ in segments (`rotate`).
 *
 * Owns: the four CSV descriptors and their pass buffers (store_out, inside
 * struct store); with rotate, the segments KIND.csv.open in data_dir until
 * they are renamed into ready/, the directory ready/ itself and the SEQ
 * reservation data_dir/ready.seq.  Must not touch: sessions, sockets, the
 * state file, any other file in data_dir (fepd.generation and what an
 * operator keeps there), and a segment once it is in ready/ (a loader owns
 * it from then on).  It allocates nothing; every file operation goes
 * through the sys.c seam so that the descriptor ledger and fault injection
 * see it.
 *
 * Durability (PROTOCOL.md section 5 rule 6).  The rows of one loop pass
 * collect in each file's buffer; store_commit writes what is left of it in
 * one write and, with `sync packet`, fsyncs each file once; only then does
 * the loop send the pass's ACKs.  `committed` is the size of a file that is
 * known good.  A pass that fails anywhere is cut back to it with ftruncate,
 * so a file keeps no row of a refused packet.  A crash can leave rows that
 * were written but not yet acknowledged (the DCU sends them again: delivery
 * is at-least-once) and at most one torn last line, which store_open cuts.
 * Before a commit writes,
 * it checks that the path still names the open file: rows written to a file
 * that was unlinked, renamed or replaced would be acknowledged and then lost
 * to whoever reads the path.
 *
 * Segments (rotate SECONDS).  Each file is then KIND.csv.open, and
 * store_rotate, called by the loop between passes, switches when the wall
 * clock enters a new multiple of SECONDS: a segment that holds rows is
 * fsynced and renamed into ready/ as KIND-FEPID-YYYYMMDDTHHMMSSZ-SEQ.csv,
 * ready/ and data_dir are fsynced, and a new segment takes its place; an
 * empty one is kept for the next period.  Between passes a file ends at
 * `committed`, so a segment in ready/ holds whole rows of whole packets.
 * The time in the name is the received_at of the segment's first row (when
 * the segment began: an empty segment is no segment), read back from the
 * file, so a segment repaired after a crash gets the name it would have had.
 * SEQ comes from ready.seq, reserved SEQ_BLOCK at a time and made durable
 * before use, so it never repeats, across restarts too, whatever a loader
 * has already taken out of ready/; a crash leaves a gap.  A handoff that
 * fails (fsync, reservation, rename) leaves the segment open under its name:
 * rows go on being appended and the next boundary tries again.  Closing the
 * store hands off what holds rows and removes empty segments; store_open
 * repairs a segment a crash left and hands it off at once.
 *
 * Row format: RFC 4180 (a field holding , or " is quoted, quotes doubled),
 * LF line ends, ids without their padding spaces, numbers in decimal, times
 * as Unix seconds.  In an id (DCU or meter), a byte outside printable ASCII
 * 0x20..0x7E, and '%' itself, is written as %HH (upper-case hex): every row
 * is plain text and the id's bytes can be recovered exactly.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fep.h"

/* The longest row is an lp row: two ids escaped and quoted (26 + 38),
 * three u32 (30), three u16 (15), an int64 (20), 8 commas and LF: 138. */
FEP_STATIC_ASSERT(CSV_ROW_MAX >= 138, csv_row_max_covers_lp_row);
/* Any count byte's worth of rows fits an empty pass buffer. */
FEP_STATIC_ASSERT((size_t)ITEM_COUNT_MAX * CSV_ROW_MAX <= STORE_BUF_SIZE,
                  store_buffer_holds_any_packet);

static const struct store_file_desc {
    const char *kind;                   /* in the names of segments */
    const char *name;
    const char *header;
} store_files[STORE_FILES] = {
    { "lp", "lp.csv",
      "dcu_id,meter_id,ts,import_wh,export_wh,status,qsn,fsn,received_at\n" },
    { "dcu_status", "dcu_status.csv",
      "dcu_id,fw_version,uptime_s,clock,meter_count,flags,received_at\n" },
    { "meter_status", "meter_status.csv",
      "dcu_id,meter_id,status,last_seen,received_at\n" },
    { "meter_change", "meter_change.csv",
      "dcu_id,meter_id,change,ts,received_at\n" },
};

#define SEGMENT_SUFFIX ".open"          /* the segment being written */
#define READY_DIR "ready"
#define SEQ_FILE "ready.seq"
#define SEQ_TMP "ready.seq.tmp"
#define SEQ_BLOCK 1000                  /* SEQs reserved by one durable write */
#define SEQ_TEXT_MAX 24                 /* a u64 in decimal and LF */
/* The longest name in data_dir: "meter_change.csv.open". */
#define STORE_NAME_MAX 21
/* "meter_change-" + 8 id bytes as %HH + "-YYYYMMDDTHHMMSSZ-" + u64 + ".csv" */
#define READY_NAME_MAX (13 + 24 + 18 + 20 + 4)
#define READY_PATH_SIZE (PATH_SIZE + sizeof "/" READY_DIR "/" + READY_NAME_MAX)
#define TIME_MAX_S 253402300799LL       /* 9999-12-31T23:59:59Z */
#define STORE_ERR_SIZE (PATH_SIZE + 128)

/* ------------------------------------------------------------------------
 * Row formatting into a pass buffer
 * ---------------------------------------------------------------------- */

/* A bounded cursor over a pass buffer; `full` records an overflow, which the
 * CSV_ROW_MAX reservation in store_add makes impossible. */
typedef struct csv {
    uint8_t *p;
    size_t len;
    size_t cap;
    int full;
} csv;

static void csv_char(csv *c, char ch)
{
    if (c->len < c->cap)
        c->p[c->len++] = (uint8_t)ch;
    else
        c->full = 1;
}

static void csv_u64(csv *c, uint64_t v)
{
    char digits[20];
    size_t n = 0;

    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0)
        csv_char(c, digits[--n]);
}

static void csv_i64(csv *c, int64_t v)
{
    if (v < 0) {
        csv_char(c, '-');
        csv_u64(c, (uint64_t)0 - (uint64_t)v);
    } else {
        csv_u64(c, (uint64_t)v);
    }
}

static int id_byte_plain(uint8_t b)
{
    return b >= 0x20 && b <= 0x7E && b != '%';
}

/* An id field: %HH escapes first, then RFC 4180 quoting of what remains. */
static void csv_id(csv *c, const uint8_t *id, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    int quote = memchr(id, ',', n) != NULL || memchr(id, '"', n) != NULL;
    size_t i;

    if (quote)
        csv_char(c, '"');
    for (i = 0; i < n; i++) {
        if (!id_byte_plain(id[i])) {
            csv_char(c, '%');
            csv_char(c, hex[id[i] >> 4]);
            csv_char(c, hex[id[i] & 15]);
            continue;
        }
        if (id[i] == '"')
            csv_char(c, '"');
        csv_char(c, (char)id[i]);
    }
    if (quote)
        csv_char(c, '"');
}

/* A meter id without its right padding. */
static void csv_meter(csv *c, const uint8_t id[METER_ID_SIZE])
{
    size_t n = METER_ID_SIZE;

    while (n > 0 && id[n - 1] == ' ')
        n--;
    csv_id(c, id, n);
}

static void csv_dcu(csv *c, const char *dcu_id)
{
    csv_id(c, (const uint8_t *)dcu_id, strlen(dcu_id));
    csv_char(c, ',');
}

static void csv_u64_comma(csv *c, uint64_t v)
{
    csv_u64(c, v);
    csv_char(c, ',');
}

static void csv_received(csv *c, int64_t received_at)
{
    csv_i64(c, received_at);
    csv_char(c, '\n');
}

static void rows_lp(csv *c, const char *dcu_id, const uint8_t *payload,
                    uint16_t qsn, uint16_t fsn, int64_t received_at)
{
    unsigned i;
    lp_record r;

    for (i = 0; i < payload[0]; i++) {
        lp_record_get(payload, i, &r);
        csv_dcu(c, dcu_id);
        csv_meter(c, r.meter_id);
        csv_char(c, ',');
        csv_u64_comma(c, r.ts);
        csv_u64_comma(c, r.import_wh);
        csv_u64_comma(c, r.export_wh);
        csv_u64_comma(c, r.status);
        csv_u64_comma(c, qsn);
        csv_u64_comma(c, fsn);
        csv_received(c, received_at);
    }
}

static void rows_dcu_status(csv *c, const char *dcu_id, const uint8_t *payload,
                            int64_t received_at)
{
    dcu_status st;

    dcu_status_get(payload, &st);
    csv_dcu(c, dcu_id);
    csv_u64_comma(c, st.fw_version);
    csv_u64_comma(c, st.uptime_s);
    csv_u64_comma(c, st.clock);
    csv_u64_comma(c, st.meter_count);
    csv_u64_comma(c, st.flags);
    csv_received(c, received_at);
}

/* M and N items share one layout, and so do their rows. */
static void rows_meter(csv *c, const char *dcu_id, const uint8_t *payload,
                       int64_t received_at)
{
    unsigned i;
    meter_item m;

    for (i = 0; i < payload[0]; i++) {
        meter_item_get(payload, i, &m);
        csv_dcu(c, dcu_id);
        csv_meter(c, m.meter_id);
        csv_char(c, ',');
        csv_u64_comma(c, m.code);
        csv_u64_comma(c, m.ts);
        csv_received(c, received_at);
    }
}

/* ------------------------------------------------------------------------
 * Opening a file: torn-tail repair and header
 * ---------------------------------------------------------------------- */

/* dir/name into path; store_open checked that the longest name fits. */
static void dir_path(const store *s, const char *name, char path[PATH_SIZE])
{
    size_t n = strlen(s->dir);

    memcpy(path, s->dir, n);
    path[n] = '/';
    strcpy(path + n + 1, name);
}

/* File i: KIND.csv, or with rotate the segment KIND.csv.open. */
static void file_path(const store *s, unsigned i, char path[PATH_SIZE])
{
    dir_path(s, store_files[i].name, path);
    if (s->rotate_s > 0)
        strcat(path, SEGMENT_SUFFIX);
}

static int read_full(int fd, uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = EIO;    /* the file shrank under us */
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* The size to keep: just after the last '\n' of the first `size` bytes,
 * 0 when there is none; -1 on a read error. */
static off_t tail_keep(int fd, off_t size)
{
    uint8_t chunk[512];
    off_t end = size;

    while (end > 0) {
        size_t n = end < (off_t)sizeof chunk ? (size_t)end : sizeof chunk;
        off_t at = end - (off_t)n;
        size_t i;

        if (lseek(fd, at, SEEK_SET) < 0 || read_full(fd, chunk, n) != 0)
            return -1;
        for (i = n; i > 0; i--)
            if (chunk[i - 1] == '\n')
                return at + (off_t)i;
        end = at;
    }
    return 0;
}

/* A new (or emptied) file gets its header, durably, directory entry too:
 * the rows acknowledged later depend on the file being there. */
static int header_write(const store *s, int fd, unsigned i, off_t *size)
{
    const char *h = store_files[i].header;

    if (sys_write_all(fd, h, strlen(h)) != 0 || sys_fsync(fd) != 0 ||
        sys_fsync_dir(s->dir) != 0)
        return -1;
    *size = (off_t)strlen(h);
    return 0;
}

/*
 * Opens file i and makes it end in a whole line.  The descriptor is opened
 * read-write (writes still append) so that the tail is read through the
 * same descriptor that records dev/ino and is later cut: no second open
 * can see a different file.
 */
static int out_open_at(store *s, unsigned i, const char *path, const char **what)
{
    store_out *o = &s->out[i];
    struct stat st;
    off_t keep;

    *what = "open";
    o->fd = sys_open_regular(path, O_RDWR | O_CREAT | O_APPEND, 0644, NULL);
    if (o->fd == SYS_NOT_REGULAR) {
        o->fd = -1;
        errno = EINVAL;
        *what = "open (not a regular file)";
    }
    if (o->fd < 0)
        return -1;
    *what = "stat";
    if (fstat(o->fd, &st) != 0)
        return -1;
    if (!S_ISREG(st.st_mode)) {
        errno = EINVAL;
        return -1;
    }
    o->dev = st.st_dev;
    o->ino = st.st_ino;
    *what = "read";
    keep = tail_keep(o->fd, st.st_size);
    if (keep < 0)
        return -1;
    *what = "truncate";
    if (keep < st.st_size) {
        if (sys_ftruncate(o->fd, keep) != 0)
            return -1;
        log_msg(LOG_WARN, "%s: cut %lld bytes of a torn last line", path,
                (long long)(st.st_size - keep));
    }
    *what = "write header";
    if (keep == 0 && header_write(s, o->fd, i, &keep) != 0)
        return -1;
    if (keep > (off_t)strlen(store_files[i].header))
        s->had_rows = 1;
    o->committed = keep;
    return 0;
}

/* 0, or -1 with "path: step: reason" in err and the file closed. */
static int out_open(store *s, unsigned i, char *err, size_t errlen)
{
    store_out *o = &s->out[i];
    char path[PATH_SIZE];
    const char *what;
    int saved;

    file_path(s, i, path);
    if (out_open_at(s, i, path, &what) == 0)
        return 0;
    saved = errno;
    snprintf(err, errlen, "%s: %s: %s", path, what, strerror(saved));
    sys_close(o->fd);
    o->fd = -1;
    errno = saved;
    return -1;
}

/* ------------------------------------------------------------------------
 * Passes
 * ---------------------------------------------------------------------- */

static int out_touched(const store_out *o)
{
    return o->used > 0 || o->written > 0;
}

static void log_file_error(const store *s, unsigned i, const char *what,
                           int err)
{
    char path[PATH_SIZE];

    file_path(s, i, path);
    log_msg(LOG_ERROR, "%s: %s: %s", path, what, strerror(err));
}

/* The pass buffer of file i, with room for `need` more bytes: when the
 * packet might not fit, what is there goes to the file now (no fsync). */
static int out_make_room(store *s, unsigned i, size_t need)
{
    store_out *o = &s->out[i];

    if (o->used + need <= STORE_BUF_SIZE)
        return 0;
    if (sys_write_all(o->fd, o->buf, o->used) != 0) {
        log_file_error(s, i, "write", errno);
        return -1;
    }
    o->written += o->used;
    o->used = 0;
    return 0;
}

/* The file a response command's rows go to, or -1. */
static int file_of(uint8_t cmd)
{
    switch (cmd) {
    case CMD_LP_RSP: return STORE_LP;
    case CMD_DCU_STATUS_RSP: return STORE_DCU_STATUS;
    case CMD_METER_STATUS_RSP: return STORE_METER_STATUS;
    case CMD_METER_CHANGE_RSP: return STORE_METER_CHANGE;
    default: return -1;
    }
}

static void rows_format(store_out *o, csv *c, const char *dcu_id, uint8_t cmd,
                        const uint8_t *payload, uint16_t qsn, uint16_t fsn,
                        int64_t received_at)
{
    c->p = o->buf;
    c->len = o->used;
    c->cap = STORE_BUF_SIZE;
    c->full = 0;
    if (cmd == CMD_LP_RSP)
        rows_lp(c, dcu_id, payload, qsn, fsn, received_at);
    else if (cmd == CMD_DCU_STATUS_RSP)
        rows_dcu_status(c, dcu_id, payload, received_at);
    else
        rows_meter(c, dcu_id, payload, received_at);
}

int store_add(store *s, const char *dcu_id, uint8_t cmd, const uint8_t *payload,
              size_t len, uint16_t qsn, uint16_t fsn, int64_t received_at)
{
    int file = file_of(cmd);
    size_t id_len = strlen(dcu_id);
    unsigned rows;
    char err[STORE_ERR_SIZE];
    csv c;

    /* A caller's mistake, not a failure of the pass. */
    if (file < 0 || id_len == 0 || id_len > FRAME_ID_SIZE ||
        payload_check(cmd, payload, len) != FEP_OK)
        return -1;
    if (s->pass_failed)
        return -1;              /* the commit will fail: say so now */
    rows = cmd == CMD_DCU_STATUS_RSP ? 1 : payload[0];
    if (rows == 0)
        return 0;
    /* A closed file has no rows in this pass: refusing this packet alone
     * costs nothing to the packets of the pass that go to other files. */
    if (s->out[file].fd < 0 && out_open(s, (unsigned)file, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "%s", err);
        return -1;
    }
    /* A failed write leaves rows of earlier packets half in the file: from
     * then on the whole pass can only be cut back. */
    if (out_make_room(s, (unsigned)file, (size_t)rows * CSV_ROW_MAX) != 0) {
        s->pass_failed = 1;
        return -1;
    }
    rows_format(&s->out[file], &c, dcu_id, cmd, payload, qsn, fsn, received_at);
    if (c.full) {               /* nothing kept: used is not advanced */
        log_msg(LOG_ERROR, "store: a row is longer than CSV_ROW_MAX");
        return -1;
    }
    s->out[file].used = c.len;
    s->rows_pending += rows;
    return (int)rows;
}

/* Whether the path still names the file open as out[i]. */
static int out_same_file(const store *s, unsigned i)
{
    char path[PATH_SIZE];
    struct stat st;

    file_path(s, i, path);
    return stat(path, &st) == 0 && st.st_dev == s->out[i].dev &&
           st.st_ino == s->out[i].ino;
}

/* Cuts file i back to its committed size; a file that cannot be cut, or
 * that is no longer the one its path names, is closed, so that the next
 * store_add reopens it and repairs its tail. */
static void out_rollback(store *s, unsigned i, int keep_open)
{
    store_out *o = &s->out[i];

    if (o->fd < 0)
        return;
    if (sys_ftruncate(o->fd, o->committed) != 0) {
        log_file_error(s, i, "truncate after a failed pass", errno);
        keep_open = 0;
    }
    if (!keep_open) {
        sys_close(o->fd);
        o->fd = -1;
    }
}

/*
 * A file cut short under fepd (logrotate's copytruncate copies it, then
 * empties it in place): this pass's rows may have landed at the start of
 * the emptied file, before any header.  The file starts again with its
 * header, and the pass fails (NACK STORE: the DCU sends its packets
 * again).  Rows stored between the copy and the cut cannot be told apart:
 * they are lost, which is why the log line (and fepd(8)) says to rotate by
 * rename and SIGHUP instead.  0, or -1 (logged).
 */
static int out_cut_short(store *s, unsigned i)
{
    store_out *o = &s->out[i];
    char path[PATH_SIZE];
    struct stat st;
    off_t header;

    if (fstat(o->fd, &st) != 0 || st.st_size >= o->committed + (off_t)o->written)
        return 0;
    file_path(s, i, path);
    log_msg(LOG_WARN, "%s: cut short under fepd (%lld bytes, %lld expected: "
            "logrotate's copytruncate?); it starts again with its header, and "
            "this pass is not stored (its DCUs send it again); rows stored "
            "between the copy and the cut are in neither file: rotate by "
            "rename and SIGHUP", path, (long long)st.st_size,
            (long long)(o->committed + (off_t)o->written));
    if (sys_ftruncate(o->fd, 0) == 0 && header_write(s, o->fd, i, &header) == 0)
        o->committed = header;
    o->written = 0;
    o->used = 0;
    return -1;
}

/* The rest of file i's pass: identity check, one write, one fsync. */
static int out_commit(store *s, unsigned i)
{
    store_out *o = &s->out[i];

    if (o->fd < 0)
        return -1;
    if (!out_same_file(s, i)) {
        char path[PATH_SIZE];

        file_path(s, i, path);
        log_msg(LOG_ERROR, "%s: replaced or removed while open; the pass is "
                "not stored, the path is reopened at the next packet", path);
        out_rollback(s, i, 0);
        return -1;
    }
    if (out_cut_short(s, i) != 0)
        return -1;
    if (o->used > 0 && sys_write_all(o->fd, o->buf, o->used) != 0) {
        log_file_error(s, i, "write", errno);
        return -1;
    }
    o->written += o->used;
    o->used = 0;
    if (s->sync_packet && sys_fsync(o->fd) != 0) {
        log_file_error(s, i, "fsync", errno);
        return -1;
    }
    return 0;
}

static void pass_reset(store *s)
{
    unsigned i;

    for (i = 0; i < STORE_FILES; i++) {
        s->out[i].used = 0;
        s->out[i].written = 0;
    }
    s->rows_pending = 0;
    s->pass_failed = 0;
}

void store_fail_pass(store *s)
{
    s->pass_failed = 1;
}

int store_commit(store *s)
{
    int failed = s->pass_failed;
    unsigned i;

    for (i = 0; i < STORE_FILES && !failed; i++)
        if (out_touched(&s->out[i]) && out_commit(s, i) != 0)
            failed = 1;
    for (i = 0; i < STORE_FILES; i++) {
        if (!out_touched(&s->out[i]))
            continue;
        if (failed)
            out_rollback(s, i, 1);
        else
            s->out[i].committed += (off_t)s->out[i].written;
    }
    if (failed)
        log_msg(LOG_ERROR, "store: pass failed, %llu rows not stored",
                (unsigned long long)s->rows_pending);
    pass_reset(s);
    return failed ? -1 : 0;
}

/* ------------------------------------------------------------------------
 * Segments: SEQ, names, handoff
 * ---------------------------------------------------------------------- */

/* Between two passes: no row added and not yet committed or cut back. */
static int pass_idle(const store *s)
{
    unsigned i;

    if (s->rows_pending > 0 || s->pass_failed)
        return 0;
    for (i = 0; i < STORE_FILES; i++)
        if (out_touched(&s->out[i]))
            return 0;
    return 1;
}

/* "N\n" with N a decimal number from 1: 0, or -1. */
static int seq_parse(const char *t, size_t n, uint64_t *v)
{
    uint64_t x = 0;
    size_t i;

    if (n < 2 || t[n - 1] != '\n')
        return -1;
    for (i = 0; i + 1 < n; i++) {
        if (t[i] < '0' || t[i] > '9' || x > (UINT64_MAX - 9) / 10)
            return -1;
        x = x * 10 + (uint64_t)(t[i] - '0');
    }
    if (x == 0)
        return -1;
    *v = x;
    return 0;
}

/* The first SEQ not yet reserved, from ready.seq (1 when there is none). */
static int seq_load(store *s, char *err, size_t errlen)
{
    char path[PATH_SIZE], text[SEQ_TEXT_MAX + 1];
    uint64_t v = 1;
    ssize_t n = 0;
    int fd, saved = 0;

    dir_path(s, SEQ_FILE, path);
    fd = sys_open(path, O_RDONLY, 0);
    if (fd < 0 && errno != ENOENT) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (fd >= 0) {
        n = read(fd, text, sizeof text);    /* the whole file, or too long */
        saved = errno;
        sys_close(fd);
        if (n < 0 || seq_parse(text, (size_t)n, &v) != 0) {
            snprintf(err, errlen, "%s: %s", path, n < 0 ? strerror(saved) :
                     "not a decimal number and a newline; remove it to "
                     "count SEQ from 1 again");
            return -1;
        }
    }
    s->seq_next = s->seq_limit = v;
    return 0;
}

/* SEQ_BLOCK more SEQs: ready.seq holds the end of the reservation, durably,
 * before any of them names a segment. */
static int seq_reserve(store *s)
{
    char tmp[PATH_SIZE], path[PATH_SIZE], text[SEQ_TEXT_MAX];
    uint64_t limit = s->seq_limit + SEQ_BLOCK;
    int n = snprintf(text, sizeof text, "%llu\n", (unsigned long long)limit);
    int fd, rc, saved;

    dir_path(s, SEQ_TMP, tmp);
    dir_path(s, SEQ_FILE, path);
    fd = sys_open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    rc = fd >= 0 && sys_write_all(fd, text, (size_t)n) == 0 &&
         sys_fsync(fd) == 0 ? 0 : -1;
    saved = errno;
    sys_close(fd);
    errno = saved;
    if (rc == 0 && sys_rename(tmp, path) == 0 && sys_fsync_dir(s->dir) == 0) {
        s->seq_limit = limit;
        return 0;
    }
    log_msg(LOG_ERROR, "%s: reserving SEQs: %s (the segment stays open; "
            "handed off at the next boundary)", path, strerror(errno));
    return -1;
}

/* fep_id as a part of a name: letters, digits, '_' and '.' as they are,
 * any other byte as %HH, so that '-' only ever separates the parts. */
static void id_for_name(const char *id, char out[3 * FRAME_ID_SIZE + 1])
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;

    for (; *id && n + 3 < 3 * FRAME_ID_SIZE + 1; id++) {
        unsigned char c = (unsigned char)*id;

        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
            (c >= '0' && c <= '9') || c == '_' || c == '.') {
            out[n++] = (char)c;
        } else {
            out[n++] = '%';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        }
    }
    out[n] = '\0';
}

/* data_dir/ready/KIND-FEPID-YYYYMMDDTHHMMSSZ-SEQ.csv; began is in
 * 0..TIME_MAX_S. */
static void ready_path(const store *s, unsigned i, int64_t began, uint64_t seq,
                       char out[READY_PATH_SIZE])
{
    char id[3 * FRAME_ID_SIZE + 1];
    sys_utc u;

    id_for_name(s->fep_id, id);
    sys_utc_of(began, &u);
    if (snprintf(out, READY_PATH_SIZE,
                 "%s/" READY_DIR "/%s-%s-%04d%02d%02dT%02d%02d%02dZ-%06llu.csv",
                 s->dir, store_files[i].kind, id, u.year, u.month, u.day,
                 u.hour, u.min, u.sec,
                 (unsigned long long)seq) >= (int)READY_PATH_SIZE)
        abort();                        /* READY_NAME_MAX is wrong */
}

/* When the segment began: the received_at (last field) of its first row,
 * read through fd.  0, or -1 when no such row can be read. */
static int segment_began(int fd, int64_t *t)
{
    char chunk[512], *row, *end, *p;
    ssize_t n = pread(fd, chunk, sizeof chunk - 1, 0);
    int64_t v = 0;
    int neg;

    if (n <= 0)
        return -1;
    chunk[n] = '\0';
    row = memchr(chunk, '\n', (size_t)n);
    if (!row)
        return -1;
    row++;
    end = memchr(row, '\n', (size_t)(chunk + n - row));
    if (!end)
        return -1;
    *end = '\0';
    p = strrchr(row, ',');
    if (!p)
        return -1;
    p++;
    neg = *p == '-';
    p += neg;
    if (*p == '\0')
        return -1;
    for (; *p; p++) {
        if (*p < '0' || *p > '9' || v > TIME_MAX_S)
            return -1;
        v = v * 10 + (*p - '0');
    }
    *t = neg ? -v : v;
    return 0;
}

/* A segment that holds a row: more than its header. */
static int segment_has_rows(const store *s, unsigned i)
{
    return s->out[i].fd >= 0 &&
           s->out[i].committed > (off_t)strlen(store_files[i].header);
}

/*
 * Segment i, which holds rows and ends at its last committed row, into
 * ready/: fsync, a SEQ, rename.  0: done and its descriptor closed; -1: it
 * stays open under its name, rows go on being appended to it, and the next
 * boundary tries again (logged).
 */
static int segment_handoff(store *s, unsigned i, int64_t wall_s)
{
    store_out *o = &s->out[i];
    char from[PATH_SIZE], to[READY_PATH_SIZE];
    struct stat st;
    int64_t began;

    file_path(s, i, from);
    if (!out_same_file(s, i)) {
        log_msg(LOG_ERROR, "%s: replaced or removed while open: not handed "
                "off; the path is reopened", from);
        sys_close(o->fd);
        o->fd = -1;
        return -1;
    }
    if (sys_fsync(o->fd) != 0) {
        log_msg(LOG_ERROR, "%s: fsync: %s (the segment stays open; handed "
                "off at the next boundary)", from, strerror(errno));
        return -1;
    }
    if (s->seq_next >= s->seq_limit && seq_reserve(s) != 0)
        return -1;
    if (segment_began(o->fd, &began) != 0)
        began = wall_s;
    if (began < 0 || began > TIME_MAX_S)
        began = began < 0 ? 0 : TIME_MAX_S;
    ready_path(s, i, began, s->seq_next, to);
    if (lstat(to, &st) == 0) {
        /* Only a lost ready.seq leads here: a segment is never replaced. */
        log_msg(LOG_ERROR, "%s: exists; its SEQ is skipped (the segment "
                "stays open; handed off at the next boundary)", to);
        s->seq_next++;
        return -1;
    }
    if (sys_rename(from, to) != 0) {
        log_msg(LOG_ERROR, "%s: rename to %s: %s (the segment stays open; "
                "handed off at the next boundary)", from, to, strerror(errno));
        return -1;
    }
    s->seq_next++;
    s->segments_ready++;
    log_msg(LOG_INFO, "segment ready: %s (%lld bytes)", to,
            (long long)o->committed);
    sys_close(o->fd);
    o->fd = -1;
    return 0;
}

/* The renames made durable: both directories they changed. */
static void segments_sync_dirs(store *s)
{
    char ready[PATH_SIZE];

    dir_path(s, READY_DIR, ready);
    if (sys_fsync_dir(ready) == 0 && sys_fsync_dir(s->dir) == 0) {
        s->dirs_unsynced = 0;
        return;
    }
    s->dirs_unsynced = 1;
    log_msg(LOG_ERROR, "%s: fsync after a handoff: %s (tried again at the "
            "next boundary)", ready, strerror(errno));
}

/* A file closed by an earlier failure, opened again (repaired) so that its
 * rows can be handed off. */
static void out_reopen_closed(store *s, unsigned i)
{
    char err[STORE_ERR_SIZE];

    if (s->out[i].fd < 0 && out_open(s, i, err, sizeof err) != 0)
        log_msg(LOG_ERROR, "%s (tried again at the next packet)", err);
}

/* Every segment that holds rows to ready/, then a new segment in the place
 * of each one handed off; an empty segment stays for the next period. */
static void segments_switch(store *s, int64_t wall_s)
{
    int moved[STORE_FILES] = { 0 }, any = 0;
    unsigned i;

    for (i = 0; i < STORE_FILES; i++) {
        out_reopen_closed(s, i);
        if (segment_has_rows(s, i)) {
            moved[i] = segment_handoff(s, i, wall_s) == 0;
            any |= moved[i];
        }
    }
    if (any || s->dirs_unsynced)
        segments_sync_dirs(s);
    for (i = 0; i < STORE_FILES; i++)
        if (moved[i])
            out_reopen_closed(s, i);
}

/* The last switch: segments with rows to ready/, empty ones removed. */
static void segments_end(store *s, int64_t wall_s)
{
    char path[PATH_SIZE];
    int any = 0;
    unsigned i;

    for (i = 0; i < STORE_FILES; i++) {
        out_reopen_closed(s, i);
        if (segment_has_rows(s, i)) {
            any |= segment_handoff(s, i, wall_s) == 0;
        } else if (s->out[i].fd >= 0 && out_same_file(s, i)) {
            file_path(s, i, path);
            if (unlink(path) != 0)
                log_msg(LOG_WARN, "%s: %s", path, strerror(errno));
        }
    }
    if (any || s->dirs_unsynced)
        segments_sync_dirs(s);
}

/* ready/ exists, durably, and SEQ is known. */
static int segments_prepare(store *s, char *err, size_t errlen)
{
    char ready[PATH_SIZE];

    dir_path(s, READY_DIR, ready);
    if (sys_mkdir(ready) != 0 || sys_fsync_dir(s->dir) != 0) {
        snprintf(err, errlen, "%s: %s", ready, strerror(errno));
        return -1;
    }
    return seq_load(s, err, errlen);
}

/* Without rotate: a segment an earlier run left is the operator's to know
 * about; it is not touched. */
static void segments_left_warn(const store *s)
{
    char path[PATH_SIZE];
    struct stat st;
    unsigned i;

    for (i = 0; i < STORE_FILES; i++) {
        dir_path(s, store_files[i].name, path);
        strcat(path, SEGMENT_SUFFIX);
        if (stat(path, &st) == 0)
            log_msg(LOG_WARN, "%s: a segment left by a run with rotate; "
                    "rotate is off, so it is not handed off", path);
    }
}

void store_rotate(store *s, int64_t wall_s)
{
    int64_t period;

    if (s->rotate_s == 0)
        return;
    period = wall_s / (int64_t)s->rotate_s;
    /* Rows of a pass not yet committed must not straddle two segments. */
    if (period == s->period || !pass_idle(s))
        return;
    s->period = period;
    segments_switch(s, wall_s);
}

/* ------------------------------------------------------------------------
 * Open, reopen, close
 * ---------------------------------------------------------------------- */

/* Uncommitted rows were never acknowledged: they are dropped, and any of
 * them already written out of a full buffer are cut, not flushed.  With
 * hand_off, segments end as at exit. */
static void files_close(store *s, int hand_off)
{
    unsigned i;

    for (i = 0; i < STORE_FILES; i++)
        if (out_touched(&s->out[i]))
            out_rollback(s, i, 0);
    pass_reset(s);
    if (hand_off && s->rotate_s > 0)
        segments_end(s, sys_wall_s());
    for (i = 0; i < STORE_FILES; i++) {
        sys_close(s->out[i].fd);
        s->out[i].fd = -1;
    }
}

void store_init(store *s)
{
    unsigned i;

    for (i = 0; i < STORE_FILES; i++)
        s->out[i].fd = -1;
}

int store_open(store *s, const store_config *c, char *err, size_t errlen)
{
    unsigned i;

    /* Every field but the buffers (the last field of each file's): a
     * buffer's pages are touched only when rows reach them, so the files
     * that get none cost no memory. */
    memset(s, 0, offsetof(store, out));
    for (i = 0; i < STORE_FILES; i++) {
        memset(&s->out[i], 0, offsetof(store_out, buf));
        s->out[i].fd = -1;
    }
    if (strlen(c->data_dir) + 1 + STORE_NAME_MAX >= PATH_SIZE) {
        snprintf(err, errlen, "data_dir: a path of %zu characters is too "
                 "long", strlen(c->data_dir));
        return -1;
    }
    if (strlen(c->fep_id) > FRAME_ID_SIZE) {
        snprintf(err, errlen, "fep_id: %zu characters, at most %d",
                 strlen(c->fep_id), FRAME_ID_SIZE);
        return -1;
    }
    strcpy(s->dir, c->data_dir);
    strcpy(s->fep_id, c->fep_id);
    s->sync_packet = c->sync_packet;
    if (sys_mkdir(s->dir) != 0) {
        snprintf(err, errlen, "%s: %s", s->dir, strerror(errno));
        return -1;
    }
    if (c->rotate_s > 0 && segments_prepare(s, err, errlen) != 0)
        return -1;
    s->rotate_s = c->rotate_s;
    for (i = 0; i < STORE_FILES; i++) {
        if (out_open(s, i, err, errlen) != 0) {
            files_close(s, 0);          /* a failed open hands off nothing */
            return -1;
        }
    }
    if (s->rotate_s > 0) {
        int64_t now = sys_wall_s();

        s->period = now / (int64_t)s->rotate_s;
        segments_switch(s, now);        /* what a crash left, at once */
    } else {
        segments_left_warn(s);
    }
    return 0;
}

int store_set_rotate(store *s, unsigned rotate_s, int64_t wall_s)
{
    char err[STORE_ERR_SIZE];
    unsigned i;

    if (!pass_idle(s))
        return -1;
    if ((rotate_s > 0) == (s->rotate_s > 0)) {
        s->rotate_s = rotate_s;
        if (rotate_s > 0)
            s->period = wall_s / (int64_t)rotate_s;
        return 0;
    }
    if (rotate_s > 0 && segments_prepare(s, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "%s (rotate stays off)", err);
        return -1;
    }
    files_close(s, 1);
    s->rotate_s = rotate_s;
    for (i = 0; i < STORE_FILES; i++)
        out_reopen_closed(s, i);
    if (rotate_s > 0) {
        s->period = wall_s / (int64_t)rotate_s;
        segments_switch(s, wall_s);
    } else {
        segments_left_warn(s);
    }
    return 0;
}

/* What out_open_at would say of path, read only: -1 when it would fail
 * (*what and errno as it would set them), else 0 with *fd open for
 * reading, or -1 when the file is missing. */
static int out_check(const char *path, int *fd, const char **what)
{
    struct stat st;

    *fd = -1;
    *what = "open";
    if (stat(path, &st) != 0)
        return errno == ENOENT ? 0 : -1;
    /* out_open_at opens O_RDWR: that fails on a directory and on a file it
     * may not write; then fstat refuses what is not a regular file. */
    if (S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        return -1;
    }
    if (faccessat(AT_FDCWD, path, R_OK | W_OK, AT_EACCESS) != 0)
        return -1;
    if (!S_ISREG(st.st_mode)) {
        *what = "open (not a regular file)";
        errno = EINVAL;
        return -1;
    }
    *fd = sys_open_regular(path, O_RDONLY, 0, NULL);
    return *fd >= 0 ? 0 : -1;
}

/* Each file as store_open would find it, without writing: the same
 * refusals and messages, and the same test for rows. */
int store_check(const char *data_dir, int *has_rows, char *err, size_t errlen)
{
    unsigned i;

    *has_rows = 0;
    if (strlen(data_dir) + 1 + STORE_NAME_MAX >= PATH_SIZE) {
        snprintf(err, errlen, "data_dir: path of %zu characters too long",
                 strlen(data_dir));
        return -1;
    }
    for (i = 0; i < STORE_FILES; i++) {
        char path[PATH_SIZE];
        const char *what;
        struct stat st;
        off_t keep = -1;
        int fd;

        snprintf(path, sizeof path, "%s/%s", data_dir, store_files[i].name);
        if (out_check(path, &fd, &what) != 0) {
            snprintf(err, errlen, "%s: %s: %s", path, what, strerror(errno));
            return -1;
        }
        if (fd < 0)
            continue;                   /* store_open creates it */
        if (fstat(fd, &st) == 0)
            keep = tail_keep(fd, st.st_size);
        sys_close(fd);
        if (keep > (off_t)strlen(store_files[i].header))
            *has_rows = 1;
    }
    return 0;
}

/* Rows already in an old file cannot be committed together with rows in the
 * new one, so a reopen in the middle of a pass fails that pass. */
void store_reopen(store *s)
{
    char err[STORE_ERR_SIZE];
    unsigned i;

    for (i = 0; i < STORE_FILES; i++) {
        store_out *o = &s->out[i];

        if (out_touched(o)) {
            s->pass_failed = 1;
            out_rollback(s, i, 1);
        }
        sys_close(o->fd);
        o->fd = -1;
        if (out_open(s, i, err, sizeof err) != 0)
            log_msg(LOG_ERROR, "%s (tried again at the next packet)", err);
    }
}

void store_close(store *s)
{
    files_close(s, 1);
}
