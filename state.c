/*
 * state.c -- what fepd must never forget: the invocation counters (ICs) it
 * sends under each key, the replay mark of each DCU under each key, and the
 * per-DCU statistics; the files that keep them across restarts, the
 * snapshot state_dir/fepd.state and the journal state_dir/fepd.journal
 * beside it; and the rollback witness data_dir/fepd.generation.
 *
 * Owns: the state tables (keys, marks, their two hash indexes, dcus) and
 * the write buffer, allocated once in state_open and freed in
 * state_release; the lists of what changed, inside fep_state; the three
 * files.  Must not touch: sessions, sockets, the CSV files.  Every file
 * operation goes through the sys.c seam.
 *
 * Why it is shaped this way (PROTOCOL.md section 4).  Reusing an IC under a
 * key reuses a GCM IV, which breaks secrecy and authenticity under that key;
 * accepting an IC twice accepts a replayed frame.  So:
 *
 *  - ICs are handed out from a block reserved on disk first: a "tx KCV
 *    RESERVED" line says "ICs below RESERVED may have been sent", and a
 *    restart goes on from RESERVED.  DCUs that share a key share one
 *    sequence, because the IV holds fepd's SID, not the DCU's.
 *  - Every key fepd has used, and every DCU's mark under every key, is kept
 *    for as long as the state exists, whether the key is configured now or
 *    not: a key that comes back continues its IC and its marks.  A key is
 *    named on disk by its check value (KCV, the first 8 bytes of
 *    AES_K(0^128)), never by the key.  The tables are bounded (2 x max_dcus
 *    keys, 2 x max_dcus marks): a state or a config that needs more is
 *    refused, never cut.
 *  - A replay mark is made durable (a journal append and its fsync, once
 *    per loop pass) before the ACKs of the pass go out.
 *  - A state that could be older than what fepd did is refused: missing
 *    while data_dir or state_dir shows an earlier run, empty, without its
 *    header or its end line, with a line fepd cannot account for, a journal
 *    newer than its snapshot, a snapshot without its journal, or a state
 *    older than the witness.  The only way past is --fresh-state, an
 *    explicit act whose cost fepd(8) states (new keys for every DCU).
 *
 * Snapshot (written whole, atomically: temporary, fsync, rename, fsync of
 * the directory):
 *     # comments
 *     fepd-state 2 GENERATION
 *     tx KCV RESERVED                           every key
 *     rx DCU KCV LAST_IC                        every mark above 0
 *     dcu DCU LAST_SUCCESS_S OK FAILED RECORDS  configured DCUs with statistics
 *     end RECORDS                               the number of lines above
 * Journal (appended, one fsync per append):
 *     fepd-journal 2 GENERATION                 of the snapshot it extends
 *     rx ... | dcu ... | tx ...                 in the order they happened
 * Loading reads the snapshot, then the journal's lines in order: a later
 * dcu line replaces an earlier one; rx and tx lines only ever raise.  A
 * journal of an older generation is one whose emptying a crash cut short
 * (its values are all in the newer snapshot): it is ignored.  A torn last
 * journal line is an append cut short: it is skipped.
 *
 * Witness: "fepd-generation GENERATION RESERVATIONS", rewritten atomically
 * after every snapshot and every block reservation, so it is never ahead of
 * the state.  A state_dir restored from a backup has an older generation,
 * or fewer reservations in its journal, than the witness says: refused.
 * The witness cannot see marks lost by a journal cut by hand between two
 * reservations; fepd(8) says so.
 *
 * Shards (DESIGN.md section 3).  Each shard has its own state_dir and its
 * own SID (fep_id holds {shard}), so no (key, IV) pair is used twice when
 * N changes: the IV holds the sender's SID, a shard's ICs under a key go on
 * from its own reservations whichever DCUs it serves now, and a DCU that
 * moves is answered under another SID.  What a move could lose is a replay
 * mark: at start-up, before its first snapshot, a shard takes for each of
 * its DCUs the highest mark under each key that any other shard's state
 * holds (state_adopt_marks), retired shards' directories included, so they
 * must be kept.  The other shards' tx lines and statistics are not taken:
 * their ICs run under their own SIDs.
 *
 * A save costs what changed, not what is configured: state_touch lists a
 * DCU whose statistics changed, state_mark_raise a mark; state_save
 * appends their lines.
 * The snapshot is rewritten (a compaction) at start-up, at shutdown, when
 * the journal has outgrown max(JOURNAL_BOUND_MIN, the snapshot), or when
 * the journal is not the file fepd wrote.  Version 1 files (no header, no
 * end line) are read once and rewritten as version 2.
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
#define WITNESS_NAME "fepd.generation"
#define TMP_SUFFIX ".tmp"
#define LOST_SUFFIX_MAX 32              /* ".lost-YYYYMMDDTHHMMSSZ" */
#define STATE_FORMAT 2
#define STATE_MAGIC "fepd-state"
#define JOURNAL_MAGIC "fepd-journal"
#define WITNESS_MAGIC "fepd-generation"
#define V1_HEADER "# fepd state, replaced atomically by fepd; do not edit " \
                  "while it runs."
/* The journal is folded into the snapshot once it is larger than this and
 * than the snapshot: appends then cost at most as much again in snapshot
 * writes, and a small configuration does not compact every few passes. */
#define JOURNAL_BOUND_MIN (64 * 1024)
#define STATE_BUF_SIZE (64 * 1024)      /* snapshot and journal writes */
#define IC_NONE 0xFFFFFFFFu             /* never used: the key is exhausted */
#define STATE_LINE_MAX 255              /* longer lines are malformed */
#define STATE_FIELDS_MAX 6
#define STATE_ERR_SIZE (PATH_SIZE + 256)
#define WITNESS_SIZE_MAX 128
#define LINE_ROOM 128                   /* any one line fepd writes */
#define REFUSE_ADVICE "fepd will not start on this state: it could reuse " \
    "GCM IVs and accept replayed frames. Restore the right state_dir, or, " \
    "if it is lost for good, give every keyed DCU a new key and start " \
    "once with --fresh-state (see fepd(8), STATE)"

#define ADOPT_ADVICE "another shard's state, which holds replay marks of " \
    "this shard's DCUs: restore it, or, if it is lost for good, give the " \
    "keyed DCUs it served new keys and move the directory away (see " \
    "fepd(8), SHARDS)"

FEP_STATIC_ASSERT(STATE_BUF_SIZE >= 2 * LINE_ROOM, state_buf_holds_lines);

/* ------------------------------------------------------------------------
 * Keys, marks and their indexes
 * ---------------------------------------------------------------------- */

static void kcv_of(const uint8_t key[KEY_SIZE], uint8_t kcv[STATE_KCV_SIZE])
{
    static const uint8_t zero[16];
    uint8_t block[16];
    aes128 aes;

    aes128_init(&aes, key);
    aes128_encrypt(&aes, zero, block);
    memcpy(kcv, block, STATE_KCV_SIZE);
    memset(&aes, 0, sizeof aes);
    memset(block, 0, sizeof block);
}

/* Linear probing over index_size slots (not a power of two: the index is
 * sized to the table, at most 4/5 full). */
static size_t probe_next(const fep_state *st, size_t i)
{
    return i + 1 == st->index_size ? 0 : i + 1;
}

/* The slot of kcv in key_index: where it is, or the empty slot where it
 * goes.  The index has more slots than the table can hold: a probe ends. */
static uint32_t *key_slot(const fep_state *st, const uint8_t kcv[STATE_KCV_SIZE])
{
    size_t i = (size_t)(fnv1a64(kcv, STATE_KCV_SIZE) % st->index_size);

    for (;; i = probe_next(st, i)) {
        uint32_t *slot = &st->key_index[i];
        if (*slot == 0 ||
            memcmp(st->keys[*slot - 1].kcv, kcv, STATE_KCV_SIZE) == 0)
            return slot;
    }
}

static uint32_t *mark_slot(const fep_state *st, const uint8_t dcu[FRAME_ID_SIZE],
                           uint32_t key)
{
    uint8_t name[FRAME_ID_SIZE + 4];
    size_t i;

    memcpy(name, dcu, FRAME_ID_SIZE);
    put_u32be(name + FRAME_ID_SIZE, key);
    for (i = (size_t)(fnv1a64(name, sizeof name) % st->index_size);;
         i = probe_next(st, i)) {
        uint32_t *slot = &st->mark_index[i];
        const rx_mark *m;
        if (*slot == 0)
            return slot;
        m = &st->marks[*slot - 1];
        if (m->key == key && memcmp(m->dcu, dcu, FRAME_ID_SIZE) == 0)
            return slot;
    }
}

/* The key with check value kcv, added (IC 1, nothing reserved) when new;
 * -1 when the table is full. */
static int key_get(fep_state *st, const uint8_t kcv[STATE_KCV_SIZE])
{
    uint32_t *slot = key_slot(st, kcv);
    key_state *k;

    if (*slot != 0)
        return (int)(*slot - 1);
    if (st->n_keys == st->keys_cap)
        return -1;
    k = &st->keys[st->n_keys];
    memcpy(k->kcv, kcv, STATE_KCV_SIZE);
    k->tx_ic_next = 1;
    k->tx_ic_reserved = 1;
    *slot = ++st->n_keys;
    return (int)(*slot - 1);
}

/* The mark of dcu under key, added (0) when new; -1 when the table is full. */
static int mark_get(fep_state *st, const uint8_t dcu[FRAME_ID_SIZE],
                    uint32_t key)
{
    uint32_t *slot = mark_slot(st, dcu, key);
    rx_mark *m;

    if (*slot != 0)
        return (int)(*slot - 1);
    if (st->n_marks == st->marks_cap)
        return -1;
    m = &st->marks[st->n_marks];
    memcpy(m->dcu, dcu, FRAME_ID_SIZE);
    m->key = key;
    m->last_ic = 0;
    *slot = ++st->n_marks;
    return (int)(*slot - 1);
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

static char *put_u64(char *p, uint64_t v)
{
    char digits[20];
    unsigned n = 0;

    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0)
        *p++ = digits[--n];
    return p;
}

static char *put_id(char *p, const uint8_t id[FRAME_ID_SIZE])
{
    char text[FRAME_ID_SIZE + 1];

    frame_id_str(id, text);
    return put_str(p, text);
}

static char *header_put(char *p, const char *magic, uint64_t generation)
{
    p = put_str(p, magic);
    p = put_str(p, " 2 ");
    p = put_u64(p, generation);
    *p++ = '\n';
    return p;
}

static char *tx_line_put(char *p, const key_state *k)
{
    p = put_str(p, "tx ");
    p = put_hex(p, k->kcv, STATE_KCV_SIZE);
    *p++ = ' ';
    p = put_u64(p, k->tx_ic_reserved);
    *p++ = '\n';
    return p;
}

static char *rx_line_put(char *p, const fep_state *st, const rx_mark *m)
{
    p = put_str(p, "rx ");
    p = put_id(p, m->dcu);
    *p++ = ' ';
    p = put_hex(p, st->keys[m->key].kcv, STATE_KCV_SIZE);
    *p++ = ' ';
    p = put_u64(p, m->last_ic);
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
    p = put_u64(p, d->last_success_s > 0 ? (uint64_t)d->last_success_s : 0);
    *p++ = ' ';
    p = put_u64(p, d->sessions_ok);
    *p++ = ' ';
    p = put_u64(p, d->sessions_failed);
    *p++ = ' ';
    p = put_u64(p, d->records);
    *p++ = '\n';
    return p;
}

/* ------------------------------------------------------------------------
 * Writing: a buffered writer over one descriptor
 * ---------------------------------------------------------------------- */

typedef struct writer {
    fep_state *st;
    int fd;
    size_t used;                        /* bytes in st->buf */
    off_t total;                        /* bytes written through it */
    int failed;                         /* a write failed; errno says why */
} writer;

static void writer_flush(writer *w)
{
    if (w->failed || w->used == 0)
        return;
    if (sys_write_all(w->fd, w->st->buf, w->used) != 0)
        w->failed = 1;
    w->total += (off_t)w->used;
    w->used = 0;
}

/* Where the next line goes: room for LINE_ROOM bytes. */
static char *writer_at(writer *w)
{
    if (w->st->buf_cap - w->used < LINE_ROOM)
        writer_flush(w);
    return w->st->buf + w->used;
}

static void writer_put(writer *w, char *end)
{
    w->used = (size_t)(end - w->st->buf);
}

/* buf written through w, synced and closed; -1 with errno and *what. */
static int writer_finish(writer *w, const char **what)
{
    int saved;

    *what = "write";
    writer_flush(w);
    if (!w->failed) {
        *what = "fsync";
        if (sys_fsync(w->fd) == 0) {
            *what = "close";
            return sys_close(w->fd);
        }
    }
    saved = errno;
    sys_close(w->fd);
    errno = saved;
    return -1;
}

/* The parent directory of a path that ends in "/" name. */
static void dir_of(const char *path, char dir[PATH_SIZE])
{
    size_t n = strlen(path);

    while (n > 0 && path[n - 1] != '/')
        n--;
    if (n > 1)
        n--;
    memcpy(dir, path, n);
    dir[n] = '\0';
}

/* Replaces path with what fill writes, atomically.  -1 with errno, *what. */
static int file_replace(fep_state *st, const char *path,
                        void (*fill)(writer *w), const char **what)
{
    char tmp[PATH_SIZE + sizeof TMP_SUFFIX], dir[PATH_SIZE];
    writer w;

    strcpy(tmp, path);
    strcat(tmp, TMP_SUFFIX);
    memset(&w, 0, sizeof w);
    w.st = st;
    *what = "open";
    w.fd = sys_open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (w.fd < 0)
        return -1;
    fill(&w);
    if (writer_finish(&w, what) != 0)
        return -1;
    *what = "rename";
    if (sys_rename(tmp, path) != 0)
        return -1;
    *what = "fsync directory";
    dir_of(path, dir);
    return sys_fsync_dir(dir);
}

static const char snapshot_comment[] =
    "# fepd state: ICs reserved per key, replay marks, DCU statistics.\n"
    "# Written by fepd; never edit it, never restore it from a backup.\n";

static void snapshot_fill(writer *w)
{
    fep_state *st = w->st;
    uint64_t records = 0;
    unsigned i;
    char *p;

    writer_put(w, put_str(writer_at(w), snapshot_comment));
    writer_put(w, header_put(writer_at(w), STATE_MAGIC, st->generation + 1));
    for (i = 0; i < st->n_keys; i++, records++)
        writer_put(w, tx_line_put(writer_at(w), &st->keys[i]));
    for (i = 0; i < st->n_marks; i++) {
        if (st->marks[i].last_ic == 0)
            continue;
        writer_put(w, rx_line_put(writer_at(w), st, &st->marks[i]));
        records++;
    }
    for (i = 0; i < st->n_dcus; i++) {
        if (!dcu_has_stats(&st->dcus[i]) || st->cfg->dcus[i].removed)
            continue;
        writer_put(w, dcu_line_put(writer_at(w), &st->cfg->dcus[i],
                                   &st->dcus[i]));
        records++;
    }
    p = put_u64(put_str(writer_at(w), "end "), records);
    *p++ = '\n';
    writer_put(w, p);
}

static void witness_fill(writer *w)
{
    char *p = writer_at(w);

    p = put_str(p, WITNESS_MAGIC " ");
    p = put_u64(p, w->st->generation);
    *p++ = ' ';
    p = put_u64(p, w->st->reservations);
    *p++ = '\n';
    writer_put(w, p);
}

/* The witness follows the state, never leads it: written only after what
 * it names is durable.  A failure is logged; the state is sound without. */
static void witness_write(fep_state *st)
{
    const char *what;

    st->witness_failed = file_replace(st, st->witness_path, witness_fill,
                                      &what) != 0;
    if (st->witness_failed)
        log_msg(LOG_ERROR, "%s: %s: %s (the state is saved; the rollback "
                "witness is behind it until the next save)", st->witness_path,
                what, strerror(errno));
}

/* ------------------------------------------------------------------------
 * Marks of changed DCUs
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
    /* Each DCU is listed once while marked; more than the list holds
     * (saves that failed, or connects refused at once by the thousand)
     * and the flags rule: the next save scans them all. */
    if (st->n_changed < STATE_LIST_MAX)
        st->changed[st->n_changed++] = dcu;
    else
        st->changed_rescan = 1;
}

/* The number of DCUs to look at for changed flags, and the j-th of them:
 * the list, or every DCU once it has overflowed. */
static unsigned changed_count(const fep_state *st)
{
    return st->changed_rescan ? st->n_dcus : st->n_changed;
}

static unsigned changed_at(const fep_state *st, unsigned j)
{
    return st->changed_rescan ? j : st->changed[j];
}

static void marks_clear(fep_state *st)
{
    unsigned j, n = changed_count(st);

    for (j = 0; j < n; j++)
        st->dcus[changed_at(st, j)].changed = 0;
    st->n_changed = 0;
    st->changed_rescan = 0;
    st->n_marks_changed = 0;
    st->marks_overflow = 0;
}

uint32_t state_rx_mark(const fep_state *st, unsigned dcu)
{
    return state_mark_value(st, st->dcus[dcu].mark);
}

void state_rx_raise(fep_state *st, unsigned dcu, uint32_t ic)
{
    state_mark_raise(st, st->dcus[dcu].mark, ic);
}

uint32_t state_mark_value(const fep_state *st, int mark)
{
    return mark >= 0 && (unsigned)mark < st->n_marks ? st->marks[mark].last_ic
                                                     : 0;
}

/* A mark is listed on its own, not through its DCU: a session goes on
 * under the key it began with, even when a reload has changed the DCU's
 * key meanwhile, and the mark it raises is that key's.  A mark raised
 * twice before a save is listed twice (its line is written twice, both
 * with its value then); more than the list holds and the next save writes
 * the whole snapshot. */
void state_mark_raise(fep_state *st, int mark, uint32_t ic)
{
    if (mark < 0 || (unsigned)mark >= st->n_marks ||
        ic <= st->marks[mark].last_ic)
        return;
    st->marks[mark].last_ic = ic;
    st->marks_raised = 1;
    st->dirty = 1;
    if (st->n_marks_changed < STATE_LIST_MAX)
        st->marks_changed[st->n_marks_changed++] = (unsigned)mark;
    else
        st->marks_overflow = 1;
}

int state_dcu_key(const fep_state *st, unsigned dcu)
{
    int mark = st->dcus[dcu].mark;

    return mark >= 0 ? (int)st->marks[mark].key : -1;
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
        log_msg(LOG_WARN, "%s: cannot cut a failed append: %s",
                st->journal_path, strerror(errno));
    sys_close(fd);
    errno = saved;
}

/*
 * Opens the journal for an append.  The descriptor; -1 with errno; or -2
 * when the journal is not the file fepd wrote (missing, not regular, or
 * shorter than journal_size): a compaction must replace it.
 */
static int journal_open(fep_state *st, const char **what)
{
    off_t size = 0;
    int fd;

    *what = "open";
    if (st->journal_size < 0)
        return -2;
    fd = sys_open_regular(st->journal_path, O_WRONLY | O_APPEND, 0, &size);
    if (fd == SYS_NOT_REGULAR || (fd < 0 && errno == ENOENT)) {
        log_msg(LOG_WARN, "%s: missing or not a regular file; writing the "
                "whole state instead", st->journal_path);
        return -2;
    }
    if (fd < 0)
        return -1;
    if (size < st->journal_size) {
        log_msg(LOG_WARN, "%s: shorter than written (%lld of %lld bytes); "
                "writing the whole state instead", st->journal_path,
                (long long)size, (long long)st->journal_size);
        sys_close(fd);
        return -2;
    }
    /* Longer: an earlier append failed and could not be cut back then. */
    if (size > st->journal_size) {
        *what = "truncate";
        if (sys_ftruncate(fd, st->journal_size) != 0) {
            journal_abandon(st, fd);
            return -1;
        }
        log_msg(LOG_WARN, "%s: cut %lld bytes of a failed append",
                st->journal_path, (long long)(size - st->journal_size));
    }
    return fd;
}

/* Appends what is in the writer, then fsyncs.  0, or -1 with the journal
 * cut back to its last good size. */
static int journal_commit(writer *w, const char **what)
{
    fep_state *st = w->st;

    *what = "write";
    writer_flush(w);
    if (w->failed) {
        journal_abandon(st, w->fd);
        return -1;
    }
    *what = "fsync";
    if (sys_fsync(w->fd) != 0) {
        journal_abandon(st, w->fd);
        return -1;
    }
    /* Durable from here; a close error cannot undo that. */
    sys_close(w->fd);
    st->journal_size += w->total;
    st->syncs++;
    return 0;
}

/* The lines of every marked DCU.  0: durable, marks cleared; -1: errno and
 * *what; -2: the journal must be replaced by a compaction. */
static int journal_append_marked(fep_state *st, const char **what)
{
    writer w;
    unsigned j, n = changed_count(st);

    memset(&w, 0, sizeof w);
    w.st = st;
    w.fd = journal_open(st, what);
    if (w.fd < 0)
        return w.fd;
    for (j = 0; j < st->n_marks_changed; j++)
        writer_put(&w, rx_line_put(writer_at(&w), st,
                                   &st->marks[st->marks_changed[j]]));
    for (j = 0; j < n; j++) {
        unsigned i = changed_at(st, j);
        if (st->dcus[i].changed && dcu_has_stats(&st->dcus[i]))
            writer_put(&w, dcu_line_put(writer_at(&w), &st->cfg->dcus[i],
                                        &st->dcus[i]));
    }
    if (journal_commit(&w, what) != 0)
        return -1;
    marks_clear(st);
    st->dirty = 0;
    st->marks_raised = 0;
    return 0;
}

/* ------------------------------------------------------------------------
 * Compaction: the whole snapshot, a new journal, the witness
 * ---------------------------------------------------------------------- */

/*
 * Writes the snapshot of the next generation, then starts the journal
 * anew with its header.  The journal is opened (created when missing)
 * before the snapshot is written, so that the snapshot's directory fsync
 * makes its name durable too.  A crash between the two leaves a journal of
 * the older generation, which loading ignores: its values are all in the
 * new snapshot.  -1 with errno, *what and *where when a step failed.
 */
static int state_compact(fep_state *st, const char **what, const char **where)
{
    char header[64];
    size_t header_len;
    int fd, saved;

    *where = st->journal_path;
    *what = "open";
    fd = sys_open_regular(st->journal_path, O_WRONLY | O_CREAT, 0644, NULL);
    if (fd == SYS_NOT_REGULAR) {
        errno = EINVAL;
        *what = "open (not a regular file)";
    }
    if (fd < 0)
        return -1;
    *where = st->path;
    if (file_replace(st, st->path, snapshot_fill, what) != 0) {
        /* After a rename that failed (EIO may leave it done) or whose
         * directory fsync failed, the snapshot may be of the next
         * generation, and loading would ignore what is appended to this
         * journal: only a compaction may follow. */
        if (strcmp(*what, "rename") == 0 ||
            strcmp(*what, "fsync directory") == 0)
            st->journal_size = -1;
        goto fail;
    }
    st->generation++;
    st->reservations = 0;
    marks_clear(st);
    st->dirty = 0;
    st->marks_raised = 0;
    /* From here the journal holds nothing fepd can append to safely until
     * its new header is durable. */
    st->journal_size = -1;
    *where = st->journal_path;
    header_len = (size_t)(header_put(header, JOURNAL_MAGIC, st->generation) -
                          header);
    *what = "truncate";
    if (sys_ftruncate(fd, 0) != 0)
        goto fail;
    *what = "write";
    if (sys_write_all(fd, header, header_len) != 0)
        goto fail;
    *what = "fsync";
    if (sys_fsync(fd) != 0)
        goto fail;
    sys_close(fd);
    st->journal_size = (off_t)header_len;
    st->syncs++;
    witness_write(st);
    return 0;
fail:
    saved = errno;
    sys_close(fd);
    errno = saved;
    return -1;
}

/* The size of a journal that holds its header alone. */
static off_t journal_head_size(const fep_state *st)
{
    char header[64];

    return (off_t)(header_put(header, JOURNAL_MAGIC, st->generation) - header);
}

static off_t journal_bound(const fep_state *st)
{
    off_t snapshot = (off_t)st->n_marks * 48 + (off_t)st->n_dcus * 64;

    return snapshot > JOURNAL_BOUND_MIN ? snapshot : JOURNAL_BOUND_MIN;
}

/*
 * Makes every value durable; with `snapshot` writes the snapshot whatever
 * else.  0: every value is on disk (a compaction that was not needed for
 * that may have failed: logged).  -1 with err: some value is not; dirty
 * and the marks stay.
 */
static int state_save_err(fep_state *st, int snapshot, char *err,
                          size_t errlen)
{
    const char *what, *where;
    int rc = -2;

    /* Marks that were not listed are only in the whole snapshot. */
    if (!snapshot && !st->marks_overflow &&
        (changed_count(st) > 0 || st->n_marks_changed > 0)) {
        rc = journal_append_marked(st, &what);
        if (rc == -1) {
            snprintf(err, errlen, "%s: append (%s): %s", st->journal_path,
                     what, strerror(errno));
            return -1;
        }
        if (rc == 0 && st->journal_size <= journal_bound(st))
            return 0;
    }
    /* Dirty with nothing listed means a change state.c was not told of:
     * only the whole snapshot is sure to hold it.  Clean with nothing
     * listed is the save at shutdown: it folds a journal that holds lines. */
    if (!snapshot && rc == -2 && !st->dirty &&
        st->journal_size == journal_head_size(st))
        return 0;
    if (state_compact(st, &what, &where) == 0)
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

    st->cfg = cfg;
    if (state_save_err(st, 0, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "%s", err);
        return -1;
    }
    return 0;
}

/* Reserves the next block of key k: a tx line in the journal (or a whole
 * snapshot when the journal cannot take it), then the witness.  On failure
 * nothing changes and no IC is handed out. */
static int reserve_block(fep_state *st, unsigned k)
{
    key_state *ks = &st->keys[k];
    uint32_t old = ks->tx_ic_reserved;
    const char *what, *where;
    writer w;

    ks->tx_ic_reserved = reserve_end(ks->tx_ic_next);
    memset(&w, 0, sizeof w);
    w.st = st;
    w.fd = journal_open(st, &what);
    if (w.fd >= 0) {
        writer_put(&w, tx_line_put(writer_at(&w), ks));
        if (journal_commit(&w, &what) == 0) {
            st->reservations++;
            witness_write(st);
            return 0;
        }
        where = st->journal_path;
    } else if (w.fd == -2 && state_compact(st, &what, &where) == 0) {
        return 0;
    } else {
        where = st->journal_path;
    }
    ks->tx_ic_reserved = old;
    log_msg(LOG_ERROR, "%s: reserve (%s): %s; no IC block reserved, so no "
            "protected frame can be sent", where, what, strerror(errno));
    return -1;
}

uint32_t state_take_ic(fep_state *st, unsigned k)
{
    key_state *ks;

    if (k >= st->n_keys)
        return 0;
    ks = &st->keys[k];
    if (ks->tx_ic_next >= IC_NONE) {
        char kcv[2 * STATE_KCV_SIZE + 1];

        *put_hex(kcv, ks->kcv, STATE_KCV_SIZE) = '\0';
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

typedef struct state_loader {
    fep_state *st;
    const char *path;                   /* of the file being read, for messages */
    int journal;                        /* reading the journal, not the snapshot */
    int adopt;                          /* another shard's file: its rx lines of our DCUs only */
    int full;                           /* adopt: the tables could not take a mark */
    unsigned raised;                    /* adopt: marks it raised */
    int v1;                             /* a version 1 file: no header, no end */
    int headed;                         /* the header line was read */
    int ended;                          /* the end line was read (snapshot) */
    int stale;                          /* a journal older than the snapshot */
    uint64_t generation;                /* from the header */
    uint64_t records;                   /* tx, rx and dcu lines */
    uint64_t tx_lines;
    unsigned lineno;                    /* of the line being read, from 1 */
    size_t len;                         /* bytes in line */
    size_t line_bytes;                  /* bytes of the line so far, all of them */
    off_t whole;                        /* bytes up to the end of the last whole line */
    const char *problem;                /* of the line so far, told at its end */
    char why[160];                      /* a problem with numbers in it */
    char line[STATE_LINE_MAX + 1];
} state_loader;

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

static int parse_kcv(const char *s, uint8_t kcv[STATE_KCV_SIZE])
{
    unsigned i;

    if (strlen(s) != 2 * STATE_KCV_SIZE)
        return -1;
    for (i = 0; i < STATE_KCV_SIZE; i++) {
        int hi = hex_digit((unsigned char)s[2 * i]);
        int lo = hex_digit((unsigned char)s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        kcv[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

static int parse_dcu_id(const char *s, uint8_t sid[FRAME_ID_SIZE])
{
    size_t n = strlen(s);

    if (n < 1 || n > FRAME_ID_SIZE)
        return -1;
    frame_id_set(sid, s);
    return 0;
}

static const char *load_tx(state_loader *l, char **f, unsigned n)
{
    uint8_t kcv[STATE_KCV_SIZE];
    uint64_t reserved;
    key_state *k;
    int i;

    if (n != 3)
        return "tx: expected KCV RESERVED";
    if (parse_kcv(f[1], kcv) != 0)
        return "tx: KCV is not 16 hex digits";
    if (parse_u64(f[2], IC_NONE, &reserved) != 0 || reserved == 0)
        return "tx: RESERVED is not a number 1..4294967295";
    i = key_get(l->st, kcv);
    if (i < 0)
        return "tx: more keys than the state can hold (2 x max_dcus): "
               "raise max_dcus";
    k = &l->st->keys[i];
    if (reserved > k->tx_ic_next)
        k->tx_ic_next = k->tx_ic_reserved = (uint32_t)reserved;
    l->tx_lines++;
    return NULL;
}

/* Another shard's mark of one of our DCUs: the higher one is kept.  Its
 * key may be new here: it joins the keys (IC 1, nothing reserved: this
 * shard never sent under it). */
static const char *adopt_rx(state_loader *l, const uint8_t sid[FRAME_ID_SIZE],
                            const uint8_t kcv[STATE_KCV_SIZE], uint32_t last)
{
    int k, m;

    if (config_find_dcu(l->st->cfg, sid) < 0)
        return NULL;                    /* not ours */
    k = key_get(l->st, kcv);
    m = k < 0 ? -1 : mark_get(l->st, sid, (uint32_t)k);
    if (m < 0) {
        l->full = 1;
        return "rx: more keys or marks than the state can hold (2 x "
               "max_dcus): raise max_dcus";
    }
    if (last > l->st->marks[m].last_ic) {
        l->st->marks[m].last_ic = last;
        l->raised++;
    }
    return NULL;
}

static const char *load_rx(state_loader *l, char **f, unsigned n)
{
    uint8_t kcv[STATE_KCV_SIZE], sid[FRAME_ID_SIZE];
    uint64_t last;
    uint32_t *slot;
    int m;

    if (n != 4)
        return "rx: expected DCU KCV LAST_IC";
    if (parse_dcu_id(f[1], sid) != 0)
        return "rx: DCU is not an id of 1..8 characters";
    if (parse_kcv(f[2], kcv) != 0)
        return "rx: KCV is not 16 hex digits";
    if (parse_u64(f[3], IC_NONE, &last) != 0)
        return "rx: LAST_IC is not a number 0..4294967295";
    if (l->adopt)
        return adopt_rx(l, sid, kcv, (uint32_t)last);
    slot = key_slot(l->st, kcv);
    if (*slot == 0)
        return "rx: a key with no tx line (lines are missing)";
    m = mark_get(l->st, sid, *slot - 1);
    if (m < 0)
        return "rx: more marks than the state can hold (2 x max_dcus): "
               "raise max_dcus";
    if (last > l->st->marks[m].last_ic)
        l->st->marks[m].last_ic = (uint32_t)last;
    return NULL;
}

/* Statistics of a DCU no longer configured are dropped at the next
 * snapshot: unlike marks and ICs, nothing depends on them. */
static const char *load_dcu(state_loader *l, char **f, unsigned n)
{
    const fep_config *cfg = l->st->cfg;
    uint8_t sid[FRAME_ID_SIZE];
    uint64_t v[4];
    dcu_state *d;
    unsigned j;
    int i;

    if (n != 6)
        return "dcu: expected DCU LAST_SUCCESS_S OK FAILED RECORDS";
    if (parse_dcu_id(f[1], sid) != 0)
        return "dcu: DCU is not an id of 1..8 characters";
    for (j = 0; j < 4; j++)
        if (parse_u64(f[2 + j], j == 0 ? (uint64_t)INT64_MAX : UINT64_MAX,
                      &v[j]) != 0)
            return "dcu: a field is not a decimal number";
    i = config_find_dcu(cfg, sid);
    if (i < 0 || strcmp(cfg->dcus[i].id, f[1]) != 0)
        return NULL;
    d = &l->st->dcus[i];
    d->last_success_s = (int64_t)v[0];
    /* Counted in 32 bits (dcu_state): a larger count stays at the top. */
    d->sessions_ok = v[1] > UINT32_MAX ? UINT32_MAX : (uint32_t)v[1];
    d->sessions_failed = v[2] > UINT32_MAX ? UINT32_MAX : (uint32_t)v[2];
    d->records = v[3];
    return NULL;
}

/* "fepd-state 2 GEN" or "fepd-journal 2 GEN". */
static const char *load_header(state_loader *l, char **f, unsigned n)
{
    const char *magic = l->journal ? JOURNAL_MAGIC : STATE_MAGIC;
    uint64_t format;

    if (n == 0 || strcmp(f[0], magic) != 0) {
        snprintf(l->why, sizeof l->why, "no header line (expected '%s 2 "
                 "GENERATION'): not a file fepd wrote, or its beginning is "
                 "lost", magic);
        return l->why;
    }
    if (n != 3 || parse_u64(f[1], 999, &format) != 0 ||
        parse_u64(f[2], UINT64_MAX, &l->generation) != 0)
        return "header: expected FORMAT GENERATION";
    if (format != STATE_FORMAT) {
        snprintf(l->why, sizeof l->why, "format %llu, which this fepd (format "
                 "%d) cannot read", (unsigned long long)format, STATE_FORMAT);
        return l->why;
    }
    l->headed = 1;
    /* st->generation is the snapshot's, read first: an older journal's
     * lines are not applied (load_journal says why).  Another shard's
     * journal is read before its own snapshot: all of it counts. */
    l->stale = l->journal && !l->adopt &&
               l->generation < l->st->generation;
    return NULL;
}

static const char *load_end(state_loader *l, char **f, unsigned n)
{
    uint64_t records;

    if (l->journal || l->v1)
        return "end: only a version 2 snapshot has an end line";
    if (n != 2 || parse_u64(f[1], UINT64_MAX, &records) != 0)
        return "end: expected RECORDS";
    if (records != l->records) {
        snprintf(l->why, sizeof l->why, "end: says %llu records, the file "
                 "has %llu (lines are missing or were added)",
                 (unsigned long long)records, (unsigned long long)l->records);
        return l->why;
    }
    l->ended = 1;
    return NULL;
}

/* One line; NULL, or what is wrong with it. */
static const char *load_line(state_loader *l, char *line)
{
    char *f[STATE_FIELDS_MAX];
    unsigned n;
    const char *problem;

    if (!l->journal && l->lineno == 1 && strcmp(line, V1_HEADER) == 0) {
        l->v1 = l->headed = 1;
        return NULL;
    }
    n = fields_split(line, f);
    if (n == 0 || f[0][0] == '#')
        return NULL;
    if (n > STATE_FIELDS_MAX)
        return "too many fields";
    if (l->ended)
        return "a line after the end line";
    if (!l->headed)
        return load_header(l, f, n);
    if (l->stale)
        return NULL;
    if (strcmp(f[0], "end") == 0)
        return load_end(l, f, n);
    /* Another shard's ICs are its own (its SID is not ours), and so are
     * its statistics: adopting, only rx lines count. */
    if (strcmp(f[0], "tx") == 0)
        problem = l->adopt ? NULL : load_tx(l, f, n);
    else if (strcmp(f[0], "rx") == 0)
        problem = load_rx(l, f, n);
    else if (strcmp(f[0], "dcu") == 0)
        problem = l->adopt ? NULL : load_dcu(l, f, n);
    else
        problem = "unknown record (expected tx, rx, dcu or end)";
    l->records += problem == NULL;
    return problem;
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

/* Every line of the file, at most max_size bytes.  A last line without
 * '\n' is read as a line in the snapshot and skipped in the journal (an
 * append cut short).  NULL, or the problem (l->lineno names the line). */
static const char *load_lines(state_loader *l, int fd, off_t max_size)
{
    char chunk[4096];
    const char *problem = NULL;
    off_t total = 0;
    ssize_t r, i;

    do {
        r = read(fd, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(l->why, sizeof l->why, "read: %s", strerror(errno));
            return l->why;
        }
        total += r;
        if (total > max_size)
            return "larger than any state fepd writes for this max_dcus";
        for (i = 0; i < r && problem == NULL; i++)
            problem = load_byte(l, chunk[i]);
    } while (r != 0 && problem == NULL);
    if (problem == NULL && l->line_bytes > 0) {
        if (!l->journal)
            problem = load_byte(l, '\n');
        else
            log_msg(LOG_WARN, "%s:%u: skipping a torn last line (%zu bytes "
                    "without a newline): an append cut short", l->path,
                    l->lineno, l->line_bytes);
    }
    return problem;
}

/* ------------------------------------------------------------------------
 * Opening: which files there are, and whether they can be trusted
 * ---------------------------------------------------------------------- */

/* The most a state file of this capacity can hold (bytes). */
static off_t state_size_max(const fep_state *st)
{
    return (off_t)(st->keys_cap + st->marks_cap + st->dcus_cap) * LINE_ROOM +
           (off_t)JOURNAL_BOUND_MIN * 4;
}

/* Opens path for reading if it is there: the descriptor, -1 when it is
 * not there, -2 with err set when it cannot be read or is not a file. */
static int open_existing(const char *path, char *err, size_t errlen)
{
    int fd = sys_open_regular(path, O_RDONLY, 0, NULL);

    if (fd >= 0)
        return fd;
    if (fd == SYS_NOT_REGULAR)
        snprintf(err, errlen, "%s: not a regular file; %s", path,
                 REFUSE_ADVICE);
    else if (errno == ENOENT)
        return -1;
    else
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return -2;
}

/* Reads one file into the tables.  0, or -1 with err. */
static int load_file(state_loader *l, int fd, char *err, size_t errlen)
{
    const char *problem = load_lines(l, fd, state_size_max(l->st));

    sys_close(fd);
    if (problem == NULL && !l->journal && !l->headed)
        problem = l->lineno == 1 && l->whole == 0
                      ? "empty" : "no header line: not a file fepd wrote";
    if (problem == NULL && !l->journal && !l->v1 && !l->ended)
        problem = "no end line: the file is truncated";
    if (problem == NULL)
        return 0;
    snprintf(err, errlen, "%s:%u: %s%s%s", l->path, l->lineno, problem,
             l->adopt ? "" : "; ", l->adopt ? "" : REFUSE_ADVICE);
    return -1;
}

static void loader_init(state_loader *l, fep_state *st, const char *path,
                        int journal)
{
    memset(l, 0, sizeof *l);
    l->st = st;
    l->path = path;
    l->journal = journal;
    l->lineno = 1;
}

/* The journal after snapshot s: applied when it extends s, ignored when
 * older (a compaction cut short), refused when newer. */
static int load_journal(fep_state *st, const state_loader *s, char *err,
                        size_t errlen)
{
    state_loader l;
    int fd = open_existing(st->journal_path, err, errlen);

    if (fd == -2)
        return -1;
    if (fd == -1) {
        snprintf(err, errlen, "%s: missing beside %s (every snapshot fepd "
                 "writes has its journal): the values since the snapshot are "
                 "lost; %s", st->journal_path, st->path, REFUSE_ADVICE);
        return -1;
    }
    loader_init(&l, st, st->journal_path, 1);
    l.v1 = l.headed = s->v1;            /* a version 1 journal has no header */
    if (load_file(&l, fd, err, errlen) != 0)
        return -1;
    st->journal_size = l.whole;
    st->journal_records = l.records;
    if (!l.headed || l.generation == s->generation || s->v1) {
        st->reservations = l.tx_lines;
        return 0;
    }
    if (l.generation < s->generation) {
        log_msg(LOG_INFO, "%s: generation %llu, older than the snapshot's "
                "%llu: a compaction cut short; its values are in the "
                "snapshot", st->journal_path,
                (unsigned long long)l.generation,
                (unsigned long long)s->generation);
        return 0;
    }
    snprintf(err, errlen, "%s: generation %llu, newer than %s (%llu): the "
             "snapshot is older than its journal (restored from a backup?); "
             "%s", st->journal_path, (unsigned long long)l.generation,
             st->path, (unsigned long long)s->generation, REFUSE_ADVICE);
    return -1;
}

/* The witness: 1 and its values when it is there, 0 when not, -1 with err
 * when it cannot be read. */
static int witness_read(const fep_state *st, uint64_t *generation,
                        uint64_t *reservations, char *err, size_t errlen)
{
    char text[WITNESS_SIZE_MAX + 1], *f[STATE_FIELDS_MAX];
    ssize_t n;
    int fd = open_existing(st->witness_path, err, errlen);

    if (fd < 0)
        return fd == -1 ? 0 : -1;
    n = read(fd, text, WITNESS_SIZE_MAX);
    sys_close(fd);
    if (n < 0)
        n = 0;
    text[n] = '\0';
    text[strcspn(text, "\n")] = '\0';
    if (fields_split(text, f) != 3 || strcmp(f[0], WITNESS_MAGIC) != 0 ||
        parse_u64(f[1], UINT64_MAX, generation) != 0 ||
        parse_u64(f[2], UINT64_MAX, reservations) != 0) {
        snprintf(err, errlen, "%s: damaged (expected '" WITNESS_MAGIC
                 " GENERATION RESERVATIONS'); if you are sure %s is the "
                 "newest state, write it again: printf 'fepd-generation "
                 "%llu %llu\\n' > %s", st->witness_path, st->path,
                 (unsigned long long)st->generation,
                 (unsigned long long)st->reservations, st->witness_path);
        return -1;
    }
    return 1;
}

/* A state older than the witness is a state_dir restored from a backup. */
static int witness_check(const fep_state *st, char *err, size_t errlen)
{
    uint64_t gen, res;
    int rc = witness_read(st, &gen, &res, err, errlen);

    /* Every state of this format was followed by its witness, but for a
     * first start cut short between its first snapshot and the witness:
     * generation 1 and nothing appended since, so nothing was sent. */
    if (rc == 0 && st->generation == 1 && st->journal_records == 0)
        return 0;
    if (rc == 0 && st->generation > 0) {
        snprintf(err, errlen, "%s: missing, while %s (generation %llu) was "
                 "written by a fepd that keeps it: data_dir lost, or state_dir "
                 "restored from a backup?  %s.  If only data_dir was lost and "
                 "state_dir is surely the newest state, write the witness "
                 "back: printf 'fepd-generation %llu %llu\\n' > %s",
                 st->witness_path, st->path,
                 (unsigned long long)st->generation, REFUSE_ADVICE,
                 (unsigned long long)st->generation,
                 (unsigned long long)st->reservations, st->witness_path);
        return -1;
    }
    if (rc <= 0)
        return rc;
    if (st->generation > gen || (st->generation == gen &&
                                 st->reservations >= res))
        return 0;
    snprintf(err, errlen, "%s: generation %llu with %llu reservations, "
             "older than %s says (%llu with %llu): the state was rolled back "
             "(restored from a backup?); %s", st->path,
             (unsigned long long)st->generation,
             (unsigned long long)st->reservations, st->witness_path,
             (unsigned long long)gen, (unsigned long long)res, REFUSE_ADVICE);
    return -1;
}

/* Whether a file that only a run of fepd writes is there. */
static int exists(const char *path)
{
    struct stat sb;

    return lstat(path, &sb) == 0;
}

/* A journal that holds anything: a first start that failed before its
 * first snapshot leaves an empty one (created before the snapshot is
 * written), which shows nothing. */
static int journal_written(const char *path)
{
    struct stat sb;

    return lstat(path, &sb) == 0 && (!S_ISREG(sb.st_mode) || sb.st_size > 0);
}

/* No snapshot: a first start, or a lost state. */
static int state_missing(const fep_state *st, const state_start *how,
                         char *err, size_t errlen)
{
    const char *sign = journal_written(st->journal_path) ? st->journal_path :
                       exists(st->witness_path) ? st->witness_path : NULL;

    if (sign == NULL && !how->data_has_rows)
        return 0;
    snprintf(err, errlen, "%s: missing, but %s shows that fepd has run "
             "before; %s", st->path,
             sign ? sign : "data_dir (rows in its CSV files)", REFUSE_ADVICE);
    return -1;
}

static int state_load(fep_state *st, const state_start *how, char *err,
                      size_t errlen)
{
    state_loader l;
    int fd = open_existing(st->path, err, errlen);

    if (fd == -2)
        return -1;
    if (fd == -1)
        return state_missing(st, how, err, errlen);
    loader_init(&l, st, st->path, 0);
    if (load_file(&l, fd, err, errlen) != 0)
        return -1;
    st->generation = l.generation;
    if (load_journal(st, &l, err, errlen) != 0)
        return -1;
    return witness_check(st, err, errlen);
}

/* --fresh-state: the old files are renamed, never removed. */
static int set_aside(const char *path, const char *stamp, char *err,
                     size_t errlen)
{
    char lost[PATH_SIZE + LOST_SUFFIX_MAX];

    if (!exists(path))
        return 0;
    snprintf(lost, sizeof lost, "%s.lost-%s", path, stamp);
    /* rename would replace a file set aside earlier in the same second. */
    if (exists(lost)) {
        snprintf(err, errlen, "%s: cannot set it aside as %s: that file "
                 "exists; try again in a second", path, lost);
        return -1;
    }
    if (sys_rename(path, lost) != 0) {
        snprintf(err, errlen, "%s: cannot set it aside as %s: %s", path, lost,
                 strerror(errno));
        return -1;
    }
    log_msg(LOG_WARN, "--fresh-state: %s set aside as %s", path, lost);
    return 0;
}

static int state_set_aside(const fep_state *st, char *err, size_t errlen)
{
    char stamp[LOST_SUFFIX_MAX];
    sys_utc u;

    sys_utc_of(sys_wall_s(), &u);
    snprintf(stamp, sizeof stamp, "%04d%02d%02dT%02d%02d%02dZ", u.year,
             u.month, u.day, u.hour, u.min, u.sec);
    log_msg(LOG_WARN, "--fresh-state: every key's IC starts again at 1 and "
            "every replay mark is forgotten; every keyed DCU must have a new "
            "key");
    return set_aside(st->path, stamp, err, errlen) != 0 ||
           set_aside(st->journal_path, stamp, err, errlen) != 0 ||
           set_aside(st->witness_path, stamp, err, errlen) != 0 ? -1 : 0;
}

/* ------------------------------------------------------------------------
 * Resharding: the replay marks of our DCUs in the other shards' states
 * ---------------------------------------------------------------------- */

/* One file of another shard: 0 (read, or not there), or -1 with err. */
static int adopt_file(fep_state *st, const char *path, int journal,
                      unsigned *raised, int *full, char *err, size_t errlen)
{
    state_loader l;
    int fd = open_existing(path, err, errlen), rc;

    if (fd == -1)
        return 0;
    if (fd == -2)
        return -1;
    loader_init(&l, st, path, journal);
    l.adopt = 1;
    rc = load_file(&l, fd, err, errlen);
    *raised += l.raised;
    *full = l.full;
    return rc;
}

/*
 * Takes, for each of this shard's DCUs, the highest mark under each key
 * that any other shard's state holds: the state_dir pattern with {shard}
 * replaced by every other number up to SHARDS_MAX whose directory exists
 * (retired shards included: after N shrinks, their DCUs' marks are there).
 * The journal is read before the snapshot beside it, so that a compaction
 * under way there (snapshot renamed in, then the journal emptied) cannot
 * hide a value: whatever the journal no longer holds, the newer snapshot
 * does.  A journal that reads badly is passed over (a compaction cut it
 * under the reader) with a warning; a snapshot that does (written whole,
 * atomically: it is damaged) refuses the start unless `lenient`
 * (--fresh-state), as does a state that cannot hold the marks.
 */
static int state_adopt_marks(fep_state *st, const char *pattern,
                             unsigned self, int lenient, char *err,
                             size_t errlen)
{
    char dir[PATH_SIZE], snapshot[PATH_SIZE], journal[PATH_SIZE];
    unsigned j, dirs = 0, raised = 0;
    int full = 0;

    for (j = 0; j < SHARDS_MAX; j++) {
        if (j == self || config_shard_expand(pattern, j, dir, sizeof dir) != 0 ||
            !sys_is_dir(dir))
            continue;
        if (snprintf(snapshot, sizeof snapshot, "%s/" STATE_NAME, dir) >=
                (int)sizeof snapshot ||
            snprintf(journal, sizeof journal, "%s/" JOURNAL_NAME, dir) >=
                (int)sizeof journal)
            continue;
        dirs++;
        if (adopt_file(st, journal, 1, &raised, &full, err, errlen) != 0) {
            if (full)
                return -1;
            log_msg(LOG_WARN, "%s (cut by a compaction while it was "
                    "read?): the lines before it count, and the snapshot "
                    "beside it is read next", err);
        }
        if (adopt_file(st, snapshot, 0, &raised, &full, err, errlen) != 0) {
            size_t n = strlen(err);

            if (full)
                return -1;
            if (!lenient) {
                snprintf(err + n, errlen - n, "; %s", ADOPT_ADVICE);
                return -1;
            }
            log_msg(LOG_WARN, "%s (--fresh-state: passed over)", err);
        }
    }
    if (dirs > 0)
        log_msg(LOG_INFO, "%u other shard state directories read: %u of "
                "their rx lines raised a replay mark of this shard's DCUs",
                dirs, raised);
    return 0;
}

/* ------------------------------------------------------------------------
 * Open and release
 * ---------------------------------------------------------------------- */

static int state_alloc(fep_state *st, const fep_config *cfg)
{
    unsigned cap = cfg->max_dcus > cfg->n_dcus ? cfg->max_dcus : cfg->n_dcus;

    if (cap == 0)
        cap = 1;
    st->dcus_cap = cap;
    st->keys_cap = st->marks_cap = 2 * cap;
    /* A load factor of at most 4/5 when full keeps probes short; half that
     * while each DCU has one key and one mark.  Not rounded up to a power
     * of two: that could take twice the memory. */
    st->index_size = st->keys_cap + st->keys_cap / 4 + 1;
    /* malloc, not calloc, for the tables: an entry is written whole before
     * it is used (the DCUs of the file cleared here, a DCU a reload adds by
     * state_dcu_set, a key or mark when added), so the room behind them is
     * never touched and costs no memory.  The indexes must start empty. */
    st->dcus = malloc(cap * sizeof *st->dcus);
    st->keys = malloc(st->keys_cap * sizeof *st->keys);
    st->marks = malloc(st->marks_cap * sizeof *st->marks);
    if (st->dcus)
        memset(st->dcus, 0, cfg->n_dcus * sizeof *st->dcus);
    st->key_index = calloc(st->index_size, sizeof *st->key_index);
    st->mark_index = calloc(st->index_size, sizeof *st->mark_index);
    st->buf_cap = STATE_BUF_SIZE;
    st->buf = malloc(st->buf_cap);
    return st->dcus && st->keys && st->marks && st->key_index &&
           st->mark_index && st->buf ? 0 : -1;
}

size_t state_memory(const fep_state *st, size_t *dcu_tables)
{
    *dcu_tables = (size_t)st->dcus_cap * sizeof *st->dcus +
                  (size_t)st->keys_cap * sizeof *st->keys +
                  (size_t)st->marks_cap * sizeof *st->marks +
                  2 * (size_t)st->index_size * sizeof *st->key_index;
    return *dcu_tables + st->buf_cap;
}

static int path_join(char out[PATH_SIZE], const char *dir, const char *name)
{
    if (strlen(dir) + 1 + strlen(name) + sizeof TMP_SUFFIX + LOST_SUFFIX_MAX >
        PATH_SIZE)
        return -1;
    strcpy(out, dir);
    strcat(out, "/");
    strcat(out, name);
    return 0;
}

/* DCU i gets the key of its config entry and its mark under that key
 * (found when the key or the mark is known, added when new); an entry
 * without a key gets none.  -1 when the tables are full. */
static int attach_one(fep_state *st, const fep_config *cfg, unsigned i)
{
    dcu_state *d = &st->dcus[i];
    uint8_t kcv[STATE_KCV_SIZE], sid[FRAME_ID_SIZE];
    int key;

    d->mark = -1;
    if (!cfg->dcus[i].has_key || cfg->dcus[i].removed)
        return 0;
    kcv_of(cfg->dcus[i].key, kcv);
    frame_id_set(sid, cfg->dcus[i].id);
    key = key_get(st, kcv);
    if (key >= 0)
        d->mark = mark_get(st, sid, (uint32_t)key);
    return d->mark >= 0 ? 0 : -1;
}

static int full(const fep_state *st, char *err, size_t errlen)
{
    snprintf(err, errlen, "%s: the state holds more keys or marks than 2 x "
             "max_dcus (%u): raise max_dcus", st->path, st->dcus_cap);
    return -1;
}

/* Every configured DCU gets its key and its mark under that key. */
static int state_attach(fep_state *st, const fep_config *cfg, char *err,
                        size_t errlen)
{
    unsigned i;

    st->n_dcus = cfg->n_dcus;
    for (i = 0; i < cfg->n_dcus; i++) {
        st->dcus[i].session = -1;
        st->dcus[i].next_qsn = 1;
        if (attach_one(st, cfg, i) != 0)
            return full(st, err, errlen);
    }
    return 0;
}

void state_need_add(const fep_state *st, const dcu_conf *dc, state_need *need)
{
    uint8_t kcv[STATE_KCV_SIZE], sid[FRAME_ID_SIZE];
    uint32_t *k;

    if (!dc->has_key)
        return;
    kcv_of(dc->key, kcv);
    frame_id_set(sid, dc->id);
    k = key_slot(st, kcv);
    need->keys += *k == 0;
    need->marks += *k == 0 || *mark_slot(st, sid, *k - 1) == 0;
}

/* DCUs that share a new key count it once each: an overestimate, so a
 * reload near the bound may be refused that would just fit. */
int state_need_fits(const fep_state *st, const state_need *need, char *err,
                    size_t errlen)
{
    if (st->n_keys + need->keys <= st->keys_cap &&
        st->n_marks + need->marks <= st->marks_cap)
        return 0;
    return full(st, err, errlen);
}

int state_dcu_set(fep_state *st, const fep_config *cfg, unsigned i, int fresh)
{
    if (i >= st->dcus_cap)
        return -1;
    if (fresh) {
        memset(&st->dcus[i], 0, sizeof st->dcus[i]);
        st->dcus[i].session = -1;
        st->dcus[i].next_qsn = 1;
    }
    if (i >= st->n_dcus)
        st->n_dcus = i + 1;
    st->dirty = 1;
    return attach_one(st, cfg, i);
}

/* state_dir is a directory, or not there yet (made after the load): the
 * same words whether start-up or --check finds it otherwise. */
static int state_dir_usable(const char *dir, char *err, size_t errlen)
{
    struct stat sb;

    if (stat(dir, &sb) == 0 ? S_ISDIR(sb.st_mode) : errno == ENOENT)
        return 0;
    snprintf(err, errlen, "%s: %s", dir, strerror(errno == ENOENT ||
                                                  errno == 0 ? ENOTDIR : errno));
    return -1;
}

/* --fresh-state, on a state fepd refused: empty tables, and the old files
 * set aside (fep.c holds the lock on state_dir: no other fepd uses them). */
static int state_start_afresh(fep_state *st, const fep_config *cfg,
                              const state_start *how, char *err,
                              size_t errlen)
{
    fep_state paths = *st;

    log_msg(LOG_WARN, "--fresh-state: %s", err);
    state_release(st);
    memset(st, 0, sizeof *st);
    st->cfg = cfg;
    memcpy(st->path, paths.path, sizeof st->path);
    memcpy(st->journal_path, paths.journal_path, sizeof st->journal_path);
    memcpy(st->witness_path, paths.witness_path, sizeof st->witness_path);
    if (state_alloc(st, cfg) != 0) {
        snprintf(err, errlen, "state: out of memory for %u DCUs", cfg->max_dcus);
        return -1;
    }
    return how->read_only ? 0 : state_set_aside(st, err, errlen);
}

int state_open(fep_state *st, const fep_config *cfg, const state_start *how,
               char *err, size_t errlen)
{
    unsigned i;

    memset(st, 0, sizeof *st);
    st->cfg = cfg;
    if (state_alloc(st, cfg) != 0) {
        snprintf(err, errlen, "state: out of memory for %u DCUs", cfg->max_dcus);
        goto fail;
    }
    if (path_join(st->path, cfg->state_dir, STATE_NAME) != 0 ||
        path_join(st->journal_path, cfg->state_dir, JOURNAL_NAME) != 0 ||
        path_join(st->witness_path, cfg->data_dir, WITNESS_NAME) != 0) {
        snprintf(err, errlen, "%s: path too long", cfg->state_dir);
        goto fail;
    }
    if (state_dir_usable(cfg->state_dir, err, errlen) != 0)
        goto fail;
    if (state_load(st, how, err, errlen) == 0) {
        if (how->fresh)
            log_msg(LOG_WARN, "--fresh-state ignored: %s, and fepd goes on "
                    "from it (the option is only for a state fepd refuses)",
                    exists(st->path) ? "the state is sound"
                                     : "there is no state yet");
    } else if (!how->fresh) {
        goto fail;
    } else if (state_start_afresh(st, cfg, how, err, errlen) != 0) {
        goto fail;
    }
    if (cfg->state_dir_pattern[0] != '\0' &&
        state_adopt_marks(st, cfg->state_dir_pattern, cfg->shard, how->fresh,
                          err, errlen) != 0)
        goto fail;
    if (state_attach(st, cfg, err, errlen) != 0)
        goto fail;
    if (how->read_only)
        return 0;
    /* Created only now: a state that is refused leaves nothing behind. */
    if (sys_mkdir(cfg->state_dir) != 0) {
        snprintf(err, errlen, "%s: %s", cfg->state_dir, strerror(errno));
        goto fail;
    }
    /* Whatever was below RESERVED may have been sent before a crash. */
    for (i = 0; i < st->n_dcus; i++) {
        int key = state_dcu_key(st, i);
        key_state *k = key >= 0 ? &st->keys[key] : NULL;
        if (k && k->tx_ic_reserved <= k->tx_ic_next)
            k->tx_ic_reserved = reserve_end(k->tx_ic_next);
    }
    if (state_save_err(st, 1, err, errlen) != 0)
        goto fail;
    /* Behind is safe later on; a start without any witness would leave the
     * next start to refuse the state (data_dir cannot be written anyway). */
    if (st->witness_failed) {
        snprintf(err, errlen, "%s: cannot be written (see above): fepd does "
                 "not start without its rollback witness", st->witness_path);
        goto fail;
    }
    return 0;
fail:
    state_release(st);
    return -1;
}

void state_release(fep_state *st)
{
    if (st->keys)                       /* the entries ever written */
        memset(st->keys, 0, st->n_keys * sizeof *st->keys);
    free(st->dcus);
    free(st->keys);
    free(st->marks);
    free(st->key_index);
    free(st->mark_index);
    free(st->buf);
    memset(st, 0, sizeof *st);
}
