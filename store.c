/*
 * store.c -- the CSV files of DESIGN.md section 4, with group commit.
 *
 * Owns: the four CSV descriptors and their pass buffers (store_out, inside
 * struct store).  Must not touch: sessions, sockets, the state file.  It
 * allocates nothing; every file operation goes through the sys.c seam so
 * that the descriptor ledger and fault injection see it.
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
 * Row format: RFC 4180 (a field holding , or " is quoted, quotes doubled),
 * LF line ends, ids without their padding spaces, numbers in decimal, times
 * as Unix seconds.  In an id (DCU or meter), a byte outside printable ASCII
 * 0x20..0x7E, and '%' itself, is written as %HH (upper-case hex): every row
 * is plain text and the id's bytes can be recovered exactly.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
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
    const char *name;
    const char *header;
} store_files[STORE_FILES] = {
    { "lp.csv",
      "dcu_id,meter_id,ts,import_wh,export_wh,status,qsn,fsn,received_at\n" },
    { "dcu_status.csv",
      "dcu_id,fw_version,uptime_s,clock,meter_count,flags,received_at\n" },
    { "meter_status.csv", "dcu_id,meter_id,status,last_seen,received_at\n" },
    { "meter_change.csv", "dcu_id,meter_id,change,ts,received_at\n" },
};

#define STORE_NAME_MAX 16               /* strlen("meter_change.csv") */
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

static void file_path(const store *s, unsigned i, char path[PATH_SIZE])
{
    /* store_open checked that the longest name fits after dir. */
    size_t n = strlen(s->dir);

    memcpy(path, s->dir, n);
    path[n] = '/';
    strcpy(path + n + 1, store_files[i].name);
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
 * Open, reopen, close
 * ---------------------------------------------------------------------- */

int store_open(store *s, const char *data_dir, int sync_packet, char *err,
               size_t errlen)
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
    if (strlen(data_dir) + 1 + STORE_NAME_MAX >= PATH_SIZE) {
        snprintf(err, errlen, "%s: path too long", data_dir);
        return -1;
    }
    strcpy(s->dir, data_dir);
    s->sync_packet = sync_packet;
    if (sys_mkdir(data_dir) != 0) {
        snprintf(err, errlen, "%s: %s", data_dir, strerror(errno));
        return -1;
    }
    for (i = 0; i < STORE_FILES; i++) {
        if (out_open(s, i, err, errlen) != 0) {
            store_close(s);
            return -1;
        }
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

/* Uncommitted rows were never acknowledged: they are dropped, and any of
 * them already written out of a full buffer are cut, not flushed. */
void store_close(store *s)
{
    unsigned i;

    for (i = 0; i < STORE_FILES; i++) {
        if (out_touched(&s->out[i]))
            out_rollback(s, i, 0);
        sys_close(s->out[i].fd);
        s->out[i].fd = -1;
    }
    pass_reset(s);
}
