/*
 * state.c -- invocation counters and per-DCU statistics, and the state file
 * state_dir/fepd.state that keeps them across restarts.
 *
 * Owns: the state tables (keys, dcus) and save_buf, allocated once in
 * state_open and freed in state_release, and the state file.  Must not
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
 * File format: text, one record a line, '#' comments:
 *   tx KCV RESERVED                                  (one per key, first)
 *   rx DCU KCV LAST_IC                               (highest IC accepted)
 *   dcu DCU LAST_SUCCESS_S OK FAILED RECORDS         (statistics)
 * The tx lines come first and have a fixed width, so that state_take_ic,
 * which has no config at hand, can reserve a block by changing its tx line
 * in the last formatted image and writing that again: every other value in
 * the image only grows, so an image never says less than the file it
 * replaces.  The file is replaced atomically (write a temporary, fsync,
 * rename, fsync the directory).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fep.h"

#define STATE_NAME "fepd.state"
#define STATE_TMP_SUFFIX ".tmp"
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
    char *p = put_str(st->save_buf, state_header);
    unsigned i;

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

/* ------------------------------------------------------------------------
 * Writing
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

/* save_buf[0..len) as the state file, atomically.  -1 with errno set and
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

static int state_save_err(fep_state *st, const fep_config *cfg, char *err,
                          size_t errlen)
{
    const char *what;

    if (state_write(st, state_format(st, cfg), &what) != 0) {
        snprintf(err, errlen, "%s: save (%s): %s", st->path, what,
                 strerror(errno));
        return -1;
    }
    st->dirty = 0;
    return 0;
}

int state_save(fep_state *st, const fep_config *cfg)
{
    char err[STATE_ERR_SIZE];

    if (state_save_err(st, cfg, err, sizeof err) != 0) {
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

/* The state file lists DCUs in config order, so the search starts after the
 * last one found and a whole load stays linear. */
typedef struct state_loader {
    fep_state *st;
    const fep_config *cfg;
    unsigned hint;                      /* where dcu_find starts */
    unsigned lineno;                    /* of the line being read, from 1 */
    size_t len;
    char line[STATE_LINE_MAX + 1];
} state_loader;

static int dcu_find(state_loader *l, const char *id)
{
    unsigned n, i;

    for (n = 0; n < l->cfg->n_dcus; n++) {
        i = (l->hint + n) % l->cfg->n_dcus;
        if (strcmp(l->cfg->dcus[i].id, id) == 0) {
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
 * wrong with the line. */
static const char *load_byte(state_loader *l, char c)
{
    const char *problem;

    if (c == '\0')
        return "NUL byte";
    if (c != '\n') {
        if (l->len == STATE_LINE_MAX)
            return "line too long";
        l->line[l->len++] = c;
        return NULL;
    }
    l->line[l->len] = '\0';
    problem = load_line(l, l->line);
    if (problem == NULL) {
        l->lineno++;
        l->len = 0;
    }
    return problem;
}

static int load_lines(state_loader *l, int fd, char *err, size_t errlen)
{
    char chunk[4096];
    const char *problem = NULL;
    ssize_t r, i;

    do {
        r = read(fd, chunk, sizeof chunk);
        if (r < 0 && errno != EINTR) {
            snprintf(err, errlen, "%s: read: %s", l->st->path, strerror(errno));
            return -1;
        }
        for (i = 0; i < r && problem == NULL; i++)
            problem = load_byte(l, chunk[i]);
    } while (r != 0 && problem == NULL);
    if (problem == NULL && l->len > 0)      /* a last line without '\n' */
        problem = load_byte(l, '\n');
    if (problem == NULL)
        return 0;
    snprintf(err, errlen, "%s:%u: %s", l->st->path, l->lineno, problem);
    return -1;
}

/* A missing file is a fresh start. */
static int state_load(fep_state *st, const fep_config *cfg, char *err,
                      size_t errlen)
{
    state_loader l;
    int fd = sys_open(st->path, O_RDONLY, 0), rc;

    if (fd < 0 && errno == ENOENT)
        return 0;
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", st->path, strerror(errno));
        return -1;
    }
    memset(&l, 0, sizeof l);
    l.st = st;
    l.cfg = cfg;
    l.lineno = 1;
    rc = load_lines(&l, fd, err, errlen);
    sys_close(fd);
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
    st->save_cap = STATE_HEADER_LEN + (size_t)st->n_keys * STATE_TX_LINE +
                   (size_t)st->n_dcus * (STATE_RX_LINE_MAX + STATE_DCU_LINE_MAX) +
                   1;
    st->save_buf = malloc(st->save_cap);
    if (st->keys == NULL || st->save_buf == NULL)
        goto nomem;
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
    if (state_save_err(st, cfg, err, errlen) != 0)
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
    memset(st, 0, sizeof *st);
}
