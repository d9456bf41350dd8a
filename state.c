/*
 * state.c -- invocation counters and per-DCU statistics, and the files that
 * keep them across restarts: the snapshot state_dir/fepd.state and the
 * journal state_dir/fepd.journal beside it.
 *
 * Owns: the state tables (keys, dcus), the list of changed DCUs and
 * save_buf (the snapshot image, then the journal buffer), allocated once in
 * state_open and freed in state_release, and the two files.  Must not
 * touch: sessions, sockets, the CSV files.  Every file operation goes
 * through the sys.c seam.
 *
 * ICs (PROTOCOL.md section 4).  An IC must never be used twice under one
 * key, across crashes too, so ICs are handed out from a block reserved on
 * disk first: the file says "ICs below RESERVED may have been used", and a
 * restart goes on from RESERVED.  DCUs that share a key share one sequence,
 * because the IV holds fepd's SID, not the DCU's.  A key is named on disk by
 * its check value (the first 8 bytes of AES_K(0^128)), never by the key; a
 * line whose key is no longer configured is ignored, so a changed key
 * starts again at IC 1 with fresh replay protection.
 *
 * File format (both files): text, one record a line, '#' comments:
 *   tx KCV RESERVED                                  (one per key, first)
 *   rx DCU KCV LAST_IC                               (highest IC accepted)
 *   dcu DCU LAST_SUCCESS_S OK FAILED RECORDS         (statistics)
 * Loading reads the snapshot, then the journal's lines in order: a later
 * dcu line replaces an earlier one, an rx line only ever raises LAST_IC.
 *
 * A save costs what changed, not what is configured: the loop saves after
 * every pass that ends sessions, and a snapshot holds every DCU.
 * state_touch marks a DCU and lists it; state_save appends the lines of the
 * listed DCUs to the journal (one write, one fsync) and clears the marks.
 * The snapshot is rewritten (a compaction) only at start-up, when nothing
 * is marked (the save at shutdown), when the journal has outgrown
 * max(JOURNAL_BOUND_MIN, the snapshot), or when the journal is not the
 * file fepd wrote.  A compaction writes the whole snapshot and only then
 * empties the journal.  Journal lines are whole records, so an append cut
 * short by a crash loses at most its torn last line, which loading skips;
 * a failed append is cut back to the journal's last good size (the next
 * one would otherwise run into it).  The journal is opened for each save
 * only: fepd holds no descriptor of it between saves (fep.c prints its
 * descriptor ledger at shutdown before state_release), and a journal
 * removed or replaced under fepd is noticed at the next append.
 *
 * The tx lines come first in the snapshot and have a fixed width, so that
 * state_take_ic, which has no config at hand, can reserve a block by
 * changing its tx line in the last formatted image and writing that again.
 * That image may be older than the journal, which is why a reservation
 * leaves the journal alone: every other value only grows, and whatever
 * changed since the image was formatted is in the journal (or still marked,
 * as it would be without a reservation).  The snapshot is replaced
 * atomically (write a temporary, fsync, rename, fsync the directory).
 *
 * A crash between writing the snapshot and emptying the journal leaves a
 * journal that repeats the snapshot's values, not older ones: marked DCUs
 * are appended before a compaction, so each DCU's last journal line says
 * what the new snapshot says.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fep.h"

#define STATE_NAME "fepd.state"
#define JOURNAL_NAME "fepd.journal"
#define STATE_TMP_SUFFIX ".tmp"
/* The journal is folded into the snapshot once it is larger than this and
 * than the snapshot: appends then cost at most as much again in snapshot
 * writes, and a small configuration does not compact every few passes. */
#define JOURNAL_BOUND_MIN (64 * 1024)
/* The journal buffer: more changed lines than fit are written in pieces. */
#define JOURNAL_BUF_MAX (64 * 1024)
#define IC_NONE 0xFFFFFFFFu             /* never used: the key is exhausted */
#define KCV_SIZE 8
FEP_STATIC_ASSERT(sizeof ((key_state *)0)->kcv == KCV_SIZE, kcv_size);

/* "tx " KCV16 " " RESERVED (10 digits, zero-padded) "\n" */
#define STATE_TX_LINE (3 + 2 * KCV_SIZE + 1 + 10 + 1)
/* "rx " DCU " " KCV16 " " LAST_IC "\n" */
#define STATE_RX_LINE_MAX (3 + FRAME_ID_SIZE + 1 + 2 * KCV_SIZE + 1 + 10 + 1)
/* "dcu " DCU, four numbers of up to 20 digits each after a space, "\n" */
#define STATE_DCU_LINE_MAX (4 + FRAME_ID_SIZE + 4 * 21 + 1)
/* The longest line accepted when loading (others are malformed). */
#define STATE_LINE_MAX 255
#define STATE_FIELDS_MAX 6
#define STATE_ERR_SIZE (PATH_SIZE + 128)
/* Both lines of one DCU, the most a journal entry takes. */
#define JOURNAL_ENTRY_MAX (STATE_RX_LINE_MAX + STATE_DCU_LINE_MAX)
FEP_STATIC_ASSERT(JOURNAL_BUF_MAX >= JOURNAL_ENTRY_MAX, journal_buf_holds_one);
/* state_path_set checks the longest name, the snapshot's temporary. */
FEP_STATIC_ASSERT(sizeof JOURNAL_NAME <= sizeof STATE_NAME STATE_TMP_SUFFIX,
                  journal_path_fits);

static const char state_header[] =
    "# fepd state, replaced atomically by fepd; do not edit while it runs.\n"
    "# tx KCV RESERVED | rx DCU KCV LAST_IC | "
    "dcu DCU LAST_SUCCESS_S OK FAILED RECORDS\n";
#define STATE_HEADER_LEN (sizeof state_header - 1)

/* ------------------------------------------------------------------------
 * Keys
 * ---------------------------------------------------------------------- */

static void kcv_of(const uint8_t key[KEY_SIZE], uint8_t kcv[KCV_SIZE])
{
    static const uint8_t zero[16];
    uint8_t block[16];
    aes128 aes;

    aes128_init(&aes, key);
    aes128_encrypt(&aes, zero, block);
    memcpy(kcv, block, KCV_SIZE);
    memset(&aes, 0, sizeof aes);
}

/* A keyed DCU and its key, sorted so that DCUs sharing a key are adjacent. */
struct key_ref {
    uint8_t key[KEY_SIZE];
    unsigned dcu;
};

static int key_ref_cmp(const void *a, const void *b)
{
    const struct key_ref *x = a, *y = b;
    int c = memcmp(x->key, y->key, KEY_SIZE);

    if (c != 0)
        return c;
    return x->dcu < y->dcu ? -1 : x->dcu > y->dcu;
}

/*
 * Sets every dcus[i].key (DCUs with the same key share one index, so one IC
 * sequence) and returns the number of distinct keys, or -1 when out of
 * memory.  Sorting makes it O(n log n): 100,000 keyed DCUs take
 * milliseconds, where comparing each with every other took half a minute.
 */
static int keys_assign(const fep_config *cfg, dcu_state *d)
{
    struct key_ref *refs;
    unsigned i, n = 0;
    int n_keys = 0;

    refs = malloc((cfg->n_dcus ? cfg->n_dcus : 1) * sizeof *refs);
    if (refs == NULL)
        return -1;
    for (i = 0; i < cfg->n_dcus; i++) {
        d[i].key = -1;
        d[i].session = -1;
        if (!cfg->dcus[i].has_key)
            continue;
        memcpy(refs[n].key, cfg->dcus[i].key, KEY_SIZE);
        refs[n++].dcu = i;
    }
    qsort(refs, n, sizeof *refs, key_ref_cmp);
    for (i = 0; i < n; i++) {
        if (i > 0 && memcmp(refs[i].key, refs[i - 1].key, KEY_SIZE) != 0)
            n_keys++;
        d[refs[i].dcu].key = n_keys;
    }
    memset(refs, 0, n * sizeof *refs);  /* key material */
    free(refs);
    return n > 0 ? n_keys + 1 : 0;
}

/* The end of a block reserved from next on; IC_NONE itself is never used. */
static uint32_t reserve_end(uint32_t next)
{
    uint64_t end = (uint64_t)next + IC_RESERVE_BLOCK;

    return end > IC_NONE ? IC_NONE : (uint32_t)end;
}

/* ------------------------------------------------------------------------
 * Formatting
 * ---------------------------------------------------------------------- */

static char *put_str(char *p, const char *s)
{
    size_t n = strlen(s);

    memcpy(p, s, n);
    return p + n;
}

static char *put_hex(char *p, const uint8_t *b, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < n; i++) {
        *p++ = hex[b[i] >> 4];
        *p++ = hex[b[i] & 15];
    }
    return p;
}

/* v in decimal, at least `width` digits (zero-padded). */
static char *put_u64(char *p, uint64_t v, unsigned width)
{
    char digits[20];
    unsigned n = 0;

    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (width > n) {
        *p++ = '0';
        width--;
    }
    while (n > 0)
        *p++ = digits[--n];
    return p;
}

/* Exactly STATE_TX_LINE bytes. */
static void tx_line_put(char *p, const key_state *k)
{
    p = put_str(p, "tx ");
    p = put_hex(p, k->kcv, KCV_SIZE);
    *p++ = ' ';
    p = put_u64(p, k->tx_ic_reserved, 10);
    *p = '\n';
}

static char *tx_line_at(const fep_state *st, unsigned k)
{
    return st->save_buf + STATE_HEADER_LEN + (size_t)k * STATE_TX_LINE;
}

static char *rx_line_put(char *p, const fep_state *st, const dcu_conf *c,
                         const dcu_state *d)
{
    p = put_str(p, "rx ");
    p = put_str(p, c->id);
    *p++ = ' ';
    p = put_hex(p, st->keys[d->key].kcv, KCV_SIZE);
    *p++ = ' ';
    p = put_u64(p, d->rx_ic, 0);
    *p++ = '\n';
    return p;
}

static int dcu_has_stats(const dcu_state *d)
{
    return d->last_success_s != 0 || d->sessions_ok != 0 ||
           d->sessions_failed != 0 || d->records != 0;
}

static char *dcu_line_put(char *p, const dcu_conf *c, const dcu_state *d)
{
    p = put_str(p, "dcu ");
    p = put_str(p, c->id);
    *p++ = ' ';
    /* A wall-clock time before 1970 is a clock error: written as never. */
    p = put_u64(p, d->last_success_s > 0 ? (uint64_t)d->last_success_s : 0, 0);
    *p++ = ' ';
    p = put_u64(p, d->sessions_ok, 0);
    *p++ = ' ';
    p = put_u64(p, d->sessions_failed, 0);
    *p++ = ' ';
    p = put_u64(p, d->records, 0);
    *p++ = '\n';
    return p;
}

/* The whole file into save_buf, NUL-terminated; returns its length.
 * save_cap was sized in state_open for every line at its longest. */
static size_t state_format(fep_state *st, const fep_config *cfg)
{
    char *p;
    unsigned i;

    put_str(st->save_buf, state_header);
    for (i = 0; i < st->n_keys; i++)
        tx_line_put(tx_line_at(st, i), &st->keys[i]);
    p = tx_line_at(st, st->n_keys);
    for (i = 0; i < st->n_dcus; i++)
        if (st->dcus[i].key >= 0 && st->dcus[i].rx_ic > 0)
            p = rx_line_put(p, st, &cfg->dcus[i], &st->dcus[i]);
    for (i = 0; i < st->n_dcus; i++)
        if (dcu_has_stats(&st->dcus[i]))
            p = dcu_line_put(p, &cfg->dcus[i], &st->dcus[i]);
    *p = '\0';
    return (size_t)(p - st->save_buf);
}

/* DCU i's lines as the snapshot would have them. */
static char *journal_entry_put(char *p, const fep_state *st,
                               const fep_config *cfg, unsigned i)
{
    const dcu_state *d = &st->dcus[i];

    if (d->key >= 0 && d->rx_ic > 0)
        p = rx_line_put(p, st, &cfg->dcus[i], d);
    if (dcu_has_stats(d))
        p = dcu_line_put(p, &cfg->dcus[i], d);
    return p;
}

/* ------------------------------------------------------------------------
 * Marks
 * ---------------------------------------------------------------------- */

void state_touch(fep_state *st, unsigned dcu)
{
    dcu_state *d;

    if (dcu >= st->n_dcus)
        return;
    d = &st->dcus[dcu];
    st->dirty = 1;
    if (d->changed)
        return;
    d->changed = 1;
    /* Each DCU is listed once while marked, so the list has room, unless
     * someone cleared a mark behind state.c's back: then the flags rule. */
    if (st->changed != NULL && st->n_changed < st->n_dcus)
        st->changed[st->n_changed++] = dcu;
    else
        st->changed_rescan = 1;
}

static void marks_rebuild(fep_state *st)
{
    unsigned i;

    st->n_changed = 0;
    for (i = 0; i < st->n_dcus; i++)
        if (st->dcus[i].changed)
            st->changed[st->n_changed++] = i;
    st->changed_rescan = 0;
}

static void marks_clear(fep_state *st)
{
    unsigned j;

    for (j = 0; j < st->n_changed; j++)
        st->dcus[st->changed[j]].changed = 0;
    st->n_changed = 0;
}

/* ------------------------------------------------------------------------
 * Writing the snapshot
 * ---------------------------------------------------------------------- */

/* The directory that holds st->path, which ends in "/" STATE_NAME. */
static void state_dir_of(const fep_state *st, char dir[PATH_SIZE])
{
    size_t n = strlen(st->path) - strlen("/" STATE_NAME);

    memcpy(dir, st->path, n);
    dir[n] = '\0';
}

/* buf[0..len) into a new file at path, synced and closed; -1 with errno. */
static int file_write_synced(const char *path, const char *buf, size_t len,
                             const char **what)
{
    int fd, saved;

    *what = "open";
    fd = sys_open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -1;
    *what = "write";
    if (sys_write_all(fd, buf, len) == 0) {
        *what = "fsync";
        if (sys_fsync(fd) == 0) {
            *what = "close";
            return sys_close(fd);
        }
    }
    saved = errno;
    sys_close(fd);
    errno = saved;
    return -1;
}

/* save_buf[0..len) as the snapshot, atomically.  -1 with errno set and
 * *what naming the step that failed; the old file is then intact, unless
 * only the final directory fsync failed (the new file may then not
 * survive a crash, so the save still counts as failed). */
static int state_write(const fep_state *st, size_t len, const char **what)
{
    char tmp[PATH_SIZE + sizeof STATE_TMP_SUFFIX];
    char dir[PATH_SIZE];

    strcpy(tmp, st->path);
    strcat(tmp, STATE_TMP_SUFFIX);
    if (file_write_synced(tmp, st->save_buf, len, what) != 0)
        return -1;
    *what = "rename";
    if (sys_rename(tmp, st->path) != 0)
        return -1;
    *what = "fsync directory";
    state_dir_of(st, dir);
    return sys_fsync_dir(dir);
}

/* ------------------------------------------------------------------------
 * The journal
 * ---------------------------------------------------------------------- */

/* Cuts the journal back to its last good size after a failed append and
 * closes it; errno is kept.  A cut that fails is made by the next append,
 * which finds the file longer than journal_size. */
static void journal_abandon(const fep_state *st, int fd)
{
    int saved = errno;

    if (sys_ftruncate(fd, st->journal_size) != 0)
        log_msg(LOG_WARN, "%s: cannot cut a failed append: %s", st->journal_path,
                strerror(errno));
    sys_close(fd);
    errno = saved;
}

/*
 * Appends the lines of every marked DCU: written in pieces of journal_cap
 * (one write for up to ~500 DCUs), then one fsync.
 *  0  they are durable; the marks are cleared.
 * -1  errno set, *what the step; the journal is cut back, the marks stay.
 *  1  the journal is not the file fepd wrote (missing, or shorter than
 *     journal_size): nothing appended; a compaction must replace it.
 */
static int journal_append(fep_state *st, const fep_config *cfg,
                          const char **what)
{
    struct stat sb;
    size_t used = 0, total = 0;
    unsigned j;
    int fd;

    *what = "open";
    fd = sys_open(st->journal_path, O_WRONLY | O_APPEND, 0);
    if (fd < 0 && errno == ENOENT) {
        log_msg(LOG_WARN, "%s: missing; writing the whole state instead",
                st->journal_path);
        return 1;
    }
    if (fd < 0)
        return -1;
    *what = "stat";
    if (fstat(fd, &sb) != 0)
        goto fail;
    if (sb.st_size < st->journal_size) {
        log_msg(LOG_WARN, "%s: shorter than written (%lld of %lld bytes); "
                "writing the whole state instead", st->journal_path,
                (long long)sb.st_size, (long long)st->journal_size);
        sys_close(fd);
        return 1;
    }
    /* Longer: an earlier append failed and could not be cut back then. */
    if (sb.st_size > st->journal_size) {
        *what = "truncate";
        if (sys_ftruncate(fd, st->journal_size) != 0)
            goto fail;
        log_msg(LOG_WARN, "%s: cut %lld bytes of a failed append",
                st->journal_path, (long long)(sb.st_size - st->journal_size));
    }
    *what = "write";
    for (j = 0; j < st->n_changed; j++) {
        unsigned i = st->changed[j];

        if (!st->dcus[i].changed)
            continue;
        if (st->journal_cap - used < JOURNAL_ENTRY_MAX) {
            if (sys_write_all(fd, st->journal_buf, used) != 0)
                goto fail;
            total += used;
            used = 0;
        }
        used = (size_t)(journal_entry_put(st->journal_buf + used, st, cfg, i) -
                        st->journal_buf);
    }
    if (used > 0 && sys_write_all(fd, st->journal_buf, used) != 0)
        goto fail;
    total += used;
    *what = "fsync";
    if (sys_fsync(fd) != 0)
        goto fail;
    /* Durable from here; a close error cannot undo that. */
    sys_close(fd);
    st->journal_size += (off_t)total;
    marks_clear(st);
    return 0;
fail:
    journal_abandon(st, fd);
    return -1;
}

/*
 * Writes the whole snapshot, then empties the journal.  The journal is
 * opened (created when missing) before the snapshot is written, so that
 * the snapshot's directory fsync makes its name durable too.  Every mark is
 * cleared once the snapshot is on disk.  -1 with errno, *what and *where
 * (the file) when a step failed.
 */
static int state_compact(fep_state *st, const fep_config *cfg,
                         const char **what, const char **where)
{
    struct stat sb;
    int fd, saved, created = 0;

    *where = st->journal_path;
    *what = "open";
    fd = sys_open(st->journal_path, O_WRONLY | O_APPEND, 0);
    if (fd < 0 && errno == ENOENT) {
        fd = sys_open(st->journal_path, O_WRONLY | O_APPEND | O_CREAT, 0644);
        created = 1;
    }
    if (fd < 0)
        return -1;
    *where = st->path;
    st->snapshot_len = state_format(st, cfg);
    if (state_write(st, st->snapshot_len, what) != 0) {
        /* The new journal's name may not be durable: no append may rely on
         * it until a compaction has succeeded. */
        if (created)
            st->journal_size = -1;
        goto fail;
    }
    marks_clear(st);
    st->dirty = 0;
    *where = st->journal_path;
    *what = "stat";
    if (fstat(fd, &sb) != 0)
        goto fail;
    if (sb.st_size > 0) {
        *what = "truncate";
        if (sys_ftruncate(fd, 0) != 0)
            goto fail;
        /* Even if the fsync fails, the file now holds nothing fepd wrote. */
        st->journal_size = 0;
        *what = "fsync";
        if (sys_fsync(fd) != 0)
            goto fail;
    }
    st->journal_size = 0;
    sys_close(fd);
    return 0;
fail:
    saved = errno;
    sys_close(fd);
    errno = saved;
    return -1;
}

static off_t journal_bound(const fep_state *st)
{
    return (off_t)(st->snapshot_len > JOURNAL_BOUND_MIN ? st->snapshot_len
                                                        : JOURNAL_BOUND_MIN);
}

/* True when nothing changed since the snapshot: it holds every value. */
static int state_clean(const fep_state *st)
{
    return !st->dirty && st->n_changed == 0 && !st->changed_rescan &&
           st->journal_size == 0;
}

/*
 * Makes every value durable; with `snapshot` (start-up) writes the snapshot
 * whatever else.  0: every value is on disk, though a compaction that was
 * not needed for that may have failed (logged).  -1 with err: some value is
 * not; dirty and the marks stay.
 */
static int state_save_err(fep_state *st, const fep_config *cfg, int snapshot,
                          char *err, size_t errlen)
{
    const char *what, *where;
    int rc = 1;

    if (st->changed_rescan)
        marks_rebuild(st);
    if (!snapshot && st->n_changed > 0 && st->journal_size >= 0) {
        rc = journal_append(st, cfg, &what);
        if (rc < 0) {
            snprintf(err, errlen, "%s: append (%s): %s", st->journal_path,
                     what, strerror(errno));
            return -1;
        }
        if (rc == 0)
            st->dirty = 0;
        if (rc == 0 && st->journal_size <= journal_bound(st))
            return 0;
    }
    /* Nothing marked while dirty means changes state.c was not told of:
     * only the whole snapshot is sure to hold them. */
    if (!snapshot && state_clean(st))
        return 0;
    if (state_compact(st, cfg, &what, &where) == 0)
        return 0;
    snprintf(err, errlen, "%s: save (%s): %s", where, what, strerror(errno));
    if (snapshot || st->dirty)
        return -1;
    log_msg(LOG_ERROR, "%s (every value is on disk all the same)", err);
    return 0;
}

int state_save(fep_state *st, const fep_config *cfg)
{
    char err[STATE_ERR_SIZE];

    if (state_save_err(st, cfg, 0, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "%s", err);
        return -1;
    }
    return 0;
}

/* Reserves the next block of key k on disk by rewriting the last image with
 * only k's tx line changed; on failure nothing changes. */
static int reserve_block(fep_state *st, unsigned k)
{
    key_state *ks = &st->keys[k];
    uint32_t old = ks->tx_ic_reserved;
    const char *what;
    int saved;

    ks->tx_ic_reserved = reserve_end(ks->tx_ic_next);
    tx_line_put(tx_line_at(st, k), ks);
    if (state_write(st, strlen(st->save_buf), &what) == 0)
        return 0;
    saved = errno;
    ks->tx_ic_reserved = old;
    tx_line_put(tx_line_at(st, k), ks);
    log_msg(LOG_ERROR, "%s: save (%s): %s; no IC block reserved, so no "
            "protected frame can be sent", st->path, what, strerror(saved));
    return -1;
}

uint32_t state_take_ic(fep_state *st, unsigned k)
{
    key_state *ks;

    if (k >= st->n_keys)
        return 0;
    ks = &st->keys[k];
    if (ks->tx_ic_next >= IC_NONE) {
        char kcv[2 * KCV_SIZE + 1];

        *put_hex(kcv, ks->kcv, KCV_SIZE) = '\0';
        log_msg(LOG_ERROR, "every IC of the key with check value %s has been "
                "used: the key must be changed", kcv);
        return 0;
    }
    if (ks->tx_ic_next >= ks->tx_ic_reserved && reserve_block(st, k) != 0)
        return 0;
    return ks->tx_ic_next++;
}

/* ------------------------------------------------------------------------
 * Loading
 * ---------------------------------------------------------------------- */

/* Splits line at blanks; returns the field count, STATE_FIELDS_MAX + 1
 * when there are more. */
static unsigned fields_split(char *line, char *f[STATE_FIELDS_MAX])
{
    unsigned n = 0;

    for (;;) {
        line += strspn(line, " \t\r");
        if (*line == '\0')
            return n;
        if (n == STATE_FIELDS_MAX)
            return n + 1;
        f[n++] = line;
        line += strcspn(line, " \t\r");
        if (*line != '\0')
            *line++ = '\0';
    }
}

/* A decimal number no greater than max; 0 or -1. */
static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;

    if (*s == '\0')
        return -1;
    for (; *s; s++) {
        unsigned d = (unsigned)(*s - '0');
        if (*s < '0' || *s > '9' || v > (max - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static int parse_kcv(const char *s, uint8_t kcv[KCV_SIZE])
{
    unsigned i;

    if (strlen(s) != 2 * KCV_SIZE)
        return -1;
    for (i = 0; i < KCV_SIZE; i++) {
        int hi = hex_digit((unsigned char)s[2 * i]);
        int lo = hex_digit((unsigned char)s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        kcv[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

static int key_find(const fep_state *st, const uint8_t kcv[KCV_SIZE])
{
    unsigned k;

    for (k = 0; k < st->n_keys; k++)
        if (memcmp(st->keys[k].kcv, kcv, KCV_SIZE) == 0)
            return (int)k;
    return -1;
}

/* The snapshot lists DCUs in config order, so the search tries the one after
 * the last found first and a whole load stays linear.  Journal lines come in
 * the order sessions ended: they are found by SID in cfg->by_sid (sorted)
 * when there is one. */
typedef struct state_loader {
    fep_state *st;
    const fep_config *cfg;
    const char *path;                   /* of the file being read, for messages */
    unsigned hint;                      /* where dcu_find starts */
    unsigned lineno;                    /* of the line being read, from 1 */
    size_t len;                         /* bytes in line */
    size_t line_bytes;                  /* bytes of the line so far, all of them */
    off_t whole;                        /* bytes up to the end of the last whole line */
    const char *problem;                /* of the line so far, told at its end */
    char line[STATE_LINE_MAX + 1];
} state_loader;

static int dcu_find(state_loader *l, const char *id)
{
    const fep_config *cfg = l->cfg;
    uint8_t sid[FRAME_ID_SIZE];
    unsigned n, i;
    int k;

    if (cfg->n_dcus == 0)
        return -1;
    i = l->hint % cfg->n_dcus;
    if (strcmp(cfg->dcus[i].id, id) == 0) {
        l->hint = i + 1;
        return (int)i;
    }
    if (cfg->by_sid != NULL) {
        if (strlen(id) > FRAME_ID_SIZE)
            return -1;
        frame_id_set(sid, id);
        k = config_find_dcu(cfg, sid);
        if (k < 0 || strcmp(cfg->dcus[k].id, id) != 0)
            return -1;
        l->hint = (unsigned)k + 1;
        return k;
    }
    for (n = 1; n < cfg->n_dcus; n++) {
        i = (l->hint + n) % cfg->n_dcus;
        if (strcmp(cfg->dcus[i].id, id) == 0) {
            l->hint = i + 1;
            return (int)i;
        }
    }
    return -1;
}

static const char *load_tx(state_loader *l, char **f, unsigned n)
{
    uint8_t kcv[KCV_SIZE];
    uint64_t reserved;
    int k;

    if (n != 3)
        return "tx: expected KCV RESERVED";
    if (parse_kcv(f[1], kcv) != 0)
        return "tx: KCV is not 16 hex digits";
    if (parse_u64(f[2], IC_NONE, &reserved) != 0 || reserved == 0)
        return "tx: RESERVED is not a number 1..4294967295";
    k = key_find(l->st, kcv);
    if (k >= 0 && reserved > l->st->keys[k].tx_ic_next)
        l->st->keys[k].tx_ic_next = (uint32_t)reserved;
    return NULL;
}

static const char *load_rx(state_loader *l, char **f, unsigned n)
{
    uint8_t kcv[KCV_SIZE];
    uint64_t last;
    dcu_state *d;
    int i;

    if (n != 4)
        return "rx: expected DCU KCV LAST_IC";
    if (parse_kcv(f[2], kcv) != 0)
        return "rx: KCV is not 16 hex digits";
    if (parse_u64(f[3], IC_NONE, &last) != 0)
        return "rx: LAST_IC is not a number 0..4294967295";
    i = dcu_find(l, f[1]);
    if (i < 0)
        return NULL;
    d = &l->st->dcus[i];
    if (d->key >= 0 && memcmp(l->st->keys[d->key].kcv, kcv, KCV_SIZE) == 0 &&
        last > d->rx_ic)
        d->rx_ic = (uint32_t)last;
    return NULL;
}

static const char *load_dcu(state_loader *l, char **f, unsigned n)
{
    uint64_t v[4];
    dcu_state *d;
    unsigned j;
    int i;

    if (n != 6)
        return "dcu: expected DCU LAST_SUCCESS_S OK FAILED RECORDS";
    for (j = 0; j < 4; j++)
        if (parse_u64(f[2 + j], j == 0 ? (uint64_t)INT64_MAX : UINT64_MAX,
                      &v[j]) != 0)
            return "dcu: a field is not a decimal number";
    i = dcu_find(l, f[1]);
    if (i < 0)
        return NULL;
    d = &l->st->dcus[i];
    d->last_success_s = (int64_t)v[0];
    d->sessions_ok = v[1];
    d->sessions_failed = v[2];
    d->records = v[3];
    return NULL;
}

/* One line; NULL, or what is wrong with it. */
static const char *load_line(state_loader *l, char *line)
{
    char *f[STATE_FIELDS_MAX];
    unsigned n = fields_split(line, f);

    if (n == 0 || f[0][0] == '#')
        return NULL;
    if (n > STATE_FIELDS_MAX)
        return "too many fields";
    if (strcmp(f[0], "tx") == 0)
        return load_tx(l, f, n);
    if (strcmp(f[0], "rx") == 0)
        return load_rx(l, f, n);
    if (strcmp(f[0], "dcu") == 0)
        return load_dcu(l, f, n);
    return "unknown record (expected tx, rx or dcu)";
}

/* One byte of the file; a whole line goes to load_line.  NULL, or what is
 * wrong with the line.  A NUL byte or an overlong line is told when the line
 * ends: in the journal, a torn last line may hold anything. */
static const char *load_byte(state_loader *l, char c)
{
    const char *problem;

    if (c != '\n') {
        l->line_bytes++;
        if (l->problem != NULL)
            return NULL;
        if (c == '\0')
            l->problem = "NUL byte";
        else if (l->len == STATE_LINE_MAX)
            l->problem = "line too long";
        else
            l->line[l->len++] = c;
        return NULL;
    }
    l->line[l->len] = '\0';
    problem = l->problem != NULL ? l->problem : load_line(l, l->line);
    if (problem == NULL) {
        l->whole += (off_t)l->line_bytes + 1;
        l->lineno++;
        l->len = 0;
        l->line_bytes = 0;
    }
    return problem;
}

/* Every line of the file.  A last line without '\n' is read as a line in
 * the snapshot (written by hand, perhaps) and skipped in the journal (an
 * append cut short).  0, or -1 with "path:LINE: problem" in err. */
static int load_lines(state_loader *l, int fd, int journal, char *err,
                      size_t errlen)
{
    char chunk[4096];
    const char *problem = NULL;
    ssize_t r, i;

    do {
        r = read(fd, chunk, sizeof chunk);
        if (r < 0 && errno != EINTR) {
            snprintf(err, errlen, "%s: read: %s", l->path, strerror(errno));
            return -1;
        }
        for (i = 0; i < r && problem == NULL; i++)
            problem = load_byte(l, chunk[i]);
    } while (r != 0 && problem == NULL);
    if (problem == NULL && l->line_bytes > 0) {
        if (!journal)
            problem = load_byte(l, '\n');
        else
            log_msg(LOG_WARN, "%s:%u: skipping a torn last line (%zu bytes "
                    "without a newline): an append cut short", l->path,
                    l->lineno, l->line_bytes);
    }
    if (problem == NULL)
        return 0;
    snprintf(err, errlen, "%s:%u: %s", l->path, l->lineno, problem);
    return -1;
}

/* The snapshot, then the journal; a missing file is a fresh start (or an
 * empty journal).  Sets journal_size to the journal's whole lines. */
static int state_load(fep_state *st, const fep_config *cfg, char *err,
                      size_t errlen)
{
    state_loader l;
    unsigned n;
    int fd, rc = 0;

    for (n = 0; n < 2 && rc == 0; n++) {
        memset(&l, 0, sizeof l);
        l.st = st;
        l.cfg = cfg;
        l.path = n == 0 ? st->path : st->journal_path;
        l.lineno = 1;
        fd = sys_open(l.path, O_RDONLY, 0);
        if (fd < 0 && errno == ENOENT)
            continue;
        if (fd < 0) {
            snprintf(err, errlen, "%s: %s", l.path, strerror(errno));
            return -1;
        }
        rc = load_lines(&l, fd, n == 1, err, errlen);
        sys_close(fd);
        if (n == 1)
            st->journal_size = l.whole;
    }
    return rc;
}

/* ------------------------------------------------------------------------
 * Open and release
 * ---------------------------------------------------------------------- */

static int state_alloc(fep_state *st, const fep_config *cfg, char *err,
                       size_t errlen)
{
    unsigned i;
    int n_keys;

    st->n_dcus = cfg->n_dcus;
    st->dcus = calloc(cfg->n_dcus ? cfg->n_dcus : 1, sizeof *st->dcus);
    if (st->dcus == NULL)
        goto nomem;
    n_keys = keys_assign(cfg, st->dcus);
    if (n_keys < 0)
        goto nomem;
    st->n_keys = (unsigned)n_keys;
    st->keys = calloc(st->n_keys ? st->n_keys : 1, sizeof *st->keys);
    /* The journal buffer holds every DCU's lines, up to JOURNAL_BUF_MAX. */
    st->journal_cap = (size_t)(st->n_dcus ? st->n_dcus : 1) * JOURNAL_ENTRY_MAX;
    if (st->journal_cap > JOURNAL_BUF_MAX)
        st->journal_cap = JOURNAL_BUF_MAX;
    st->save_cap = STATE_HEADER_LEN + (size_t)st->n_keys * STATE_TX_LINE +
                   (size_t)st->n_dcus * JOURNAL_ENTRY_MAX + 1 + st->journal_cap;
    st->save_buf = malloc(st->save_cap);
    st->changed = malloc((cfg->n_dcus ? cfg->n_dcus : 1) * sizeof *st->changed);
    if (st->keys == NULL || st->save_buf == NULL || st->changed == NULL)
        goto nomem;
    st->journal_buf = st->save_buf + st->save_cap - st->journal_cap;
    for (i = 0; i < cfg->n_dcus; i++) {
        int k = st->dcus[i].key;
        if (k >= 0 && st->keys[k].tx_ic_next == 0) {
            kcv_of(cfg->dcus[i].key, st->keys[k].kcv);
            st->keys[k].tx_ic_next = 1;
        }
    }
    return 0;
nomem:
    snprintf(err, errlen, "state: out of memory for %u DCUs", cfg->n_dcus);
    return -1;
}

static int state_path_set(fep_state *st, const char *dir, char *err,
                          size_t errlen)
{
    if (strlen(dir) + sizeof "/" STATE_NAME STATE_TMP_SUFFIX > PATH_SIZE) {
        snprintf(err, errlen, "%s: path too long", dir);
        return -1;
    }
    strcpy(st->path, dir);
    strcat(st->path, "/" STATE_NAME);
    strcpy(st->journal_path, dir);
    strcat(st->journal_path, "/" JOURNAL_NAME);
    if (sys_mkdir(dir) != 0) {
        snprintf(err, errlen, "%s: %s", dir, strerror(errno));
        return -1;
    }
    return 0;
}

int state_open(fep_state *st, const fep_config *cfg, char *err, size_t errlen)
{
    unsigned k;

    memset(st, 0, sizeof *st);
    if (state_alloc(st, cfg, err, errlen) != 0 ||
        state_path_set(st, cfg->state_dir, err, errlen) != 0 ||
        state_load(st, cfg, err, errlen) != 0)
        goto fail;
    /* Whatever was below RESERVED may have been sent before a crash. */
    for (k = 0; k < st->n_keys; k++)
        st->keys[k].tx_ic_reserved = reserve_end(st->keys[k].tx_ic_next);
    if (state_save_err(st, cfg, 1, err, errlen) != 0)
        goto fail;
    return 0;
fail:
    state_release(st);
    return -1;
}

void state_release(fep_state *st)
{
    free(st->dcus);
    free(st->keys);
    free(st->save_buf);
    free(st->changed);
    memset(st, 0, sizeof *st);
}
