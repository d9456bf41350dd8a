/*
 * test_state.c -- tests of state.c: ICs reserved on disk and never handed
 * out twice, replay marks and statistics across restarts, every key and
 * mark kept while its key or its DCU is away, the journal, the version 1
 * files, and every refusal of a state that could be older than what fepd
 * did (empty, truncated, damaged, missing while fepd has run before, a
 * snapshot without its journal, a snapshot older than its journal, a state
 * older than the witness, a file that is not a regular file).  Each
 * refusal is checked twice, read-only (--check) and for a start, with the
 * same message and nothing on disk changed by either.
 *
 * Owns: the DCU tables of the tests, the state, and the directories under
 * test_tmpdir (dir/state is state_dir, dir itself data_dir), removed at the
 * end of each test.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "fep.h"
#include "test.h"

#define DIR_SIZE 200
#define TEXT_SIZE (512 * 1024)
#define ERR_SIZE 1024
#define STATE_DCUS 4
#define KCV_TEXT 17                     /* 16 hex digits and the NUL */

static char text[TEXT_SIZE];            /* a file read back */
static char dir[DIR_SIZE];

static dcu_conf state_dcus[STATE_DCUS];
static unsigned state_by_sid[STATE_DCUS];
static fep_config state_cfg;
static fep_state st_state;
static state_start how;
static char err[ERR_SIZE];

/* The KCV of key 00 01 .. 0f: AES-128 of the zero block, first 8 bytes. */
static const char kcv_example[] = "c6a13b37878f5b82";

/* ------------------------------------------------------------------------
 * Fixtures
 * ---------------------------------------------------------------------- */

/* Faults for the calls from now on ("" for none); file writes are
 * "fwrite", sys.c's name for sys_write_all. */
static void fault(const char *spec)
{
    CHECK(sys_fault_set(spec) == 0);
}

static void begin(const char *tag)
{
    test_unit_begin(dir, sizeof dir, tag);
    memset(&how, 0, sizeof how);
}

/* Checks that no descriptor is left open, and removes dir. */
static void end(void)
{
    test_unit_end(dir);
}

static const char *path_of(const char *name)
{
    return test_path(dir, name);
}

/* The file's whole text (empty when it cannot be read). */
static const char *file_text(const char *name)
{
    if (test_read_file(path_of(name), text, sizeof text) < 0)
        text[0] = '\0';
    return text;
}

static int exists(const char *name)
{
    struct stat sb;

    return lstat(path_of(name), &sb) == 0;
}

#define CHECK_FILE(name, expected) \
    CHECK_STR_EQ(file_text(name), (expected))
#define CHECK_STR_EQ(a, b) check_str_eq((a), (b), __FILE__, __LINE__)

static void check_str_eq(const char *a, const char *b, const char *file,
                         int line)
{
    int ok = strcmp(a, b) == 0;

    test_check(ok, file, line, "file text as expected");
    if (!ok)
        fprintf(stderr, "--- got:\n%.2000s--- want:\n%.2000s---\n", a, b);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);

    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Bytes (NULs too) as a whole file. */
static void bytes_write(const char *name, const char *bytes, size_t n)
{
    FILE *f = fopen(path_of(name), "wb");

    CHECK(f != NULL);
    if (f == NULL)
        return;
    CHECK(fwrite(bytes, 1, n, f) == n);
    CHECK(fclose(f) == 0);
}

static void text_write(const char *name, const char *s)
{
    bytes_write(name, s, strlen(s));
}

static void bytes_append(const char *name, const char *s)
{
    FILE *f = fopen(path_of(name), "ab");

    CHECK(f != NULL && fputs(s, f) >= 0);
    if (f)
        CHECK(fclose(f) == 0);
}

static void state_dir_make(void)
{
    CHECK(mkdir(path_of("state"), 0755) == 0 || errno == EEXIST);
}

/* The records (lines that are not blank and not comments) of body. */
static unsigned records_in(const char *body)
{
    unsigned n = 0;

    while (*body) {
        const char *eol = strchr(body, '\n');
        size_t skip = strspn(body, " \t\r");
        if (body[skip] != '\n' && body[skip] != '\0' && body[skip] != '#')
            n++;
        body = eol ? eol + 1 : body + strlen(body);
    }
    return n;
}

/* The witness a fepd would have written after a snapshot of generation
 * gen, unless a test put one there already. */
static void witness_matching(unsigned gen)
{
    char line[64];
    struct stat sb;

    if (stat(path_of("fepd.generation"), &sb) == 0)
        return;
    snprintf(line, sizeof line, "fepd-generation %u 0\n", gen);
    text_write("fepd.generation", line);
}

/* state/fepd.state of generation gen: header, body, end line (and the
 * witness that goes with it, unless one is there). */
static void snap_write(unsigned gen, const char *body)
{
    static char file[TEXT_SIZE];

    state_dir_make();
    snprintf(file, sizeof file, "# written by a test\nfepd-state 2 %u\n%s"
             "end %u\n", gen, body, records_in(body));
    text_write("state/fepd.state", file);
    witness_matching(gen);
}

static const char *journal_head(uint64_t gen)
{
    static char head[64];

    snprintf(head, sizeof head, "fepd-journal 2 %llu\n",
             (unsigned long long)gen);
    return head;
}

/* state/fepd.journal of generation gen: header and body. */
static void journal_write(unsigned gen, const char *body)
{
    static char file[TEXT_SIZE];

    state_dir_make();
    snprintf(file, sizeof file, "%s%s", journal_head(gen), body);
    text_write("state/fepd.journal", file);
}

static long file_size(const char *name)
{
    struct stat sb;

    return stat(path_of(name), &sb) == 0 ? (long)sb.st_size : -1;
}

static ino_t file_ino(const char *name)
{
    struct stat sb;

    return stat(path_of(name), &sb) == 0 ? sb.st_ino : 0;
}

static long journal_size(void)
{
    return file_size("state/fepd.journal");
}

/* The journal holds its header and nothing else (st_state is open). */
static int journal_only_head(void)
{
    return strcmp(file_text("state/fepd.journal"),
                  journal_head(st_state.generation)) == 0;
}

static const char *state_text(void)
{
    return file_text("state/fepd.state");
}

/* The first name in dir/sub that begins with prefix, or "". */
static const char *name_with_prefix(const char *sub, const char *prefix)
{
    static char name[2 * 256 + 2];
    DIR *d = opendir(path_of(sub));
    struct dirent *e;

    name[0] = '\0';
    if (d == NULL)
        return name;
    while ((e = readdir(d)) != NULL)
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) {
            snprintf(name, sizeof name, "%s/%s", sub, e->d_name);
            break;
        }
    closedir(d);
    return name;
}

/* ---- What is on disk: every name under dir, its identity, its bytes ---- */

typedef struct tree_image {
    size_t len;
    int overflow;
    char bytes[TEXT_SIZE];
} tree_image;

static tree_image tree_before, tree_after;

static void tree_put(tree_image *t, const void *b, size_t n)
{
    if (t->len + n > sizeof t->bytes) {
        t->overflow = 1;
        return;
    }
    memcpy(t->bytes + t->len, b, n);
    t->len += n;
}

/* path's name, type, inode, size and times, its bytes when a regular file
 * (a FIFO is never opened), and what is under it when a directory. */
static void tree_add(tree_image *t, const char *path)
{
    char line[DIR_SIZE + 256];
    struct dirent **names;
    struct stat sb;
    int n, i;

    if (lstat(path, &sb) != 0)
        return;
    snprintf(line, sizeof line, "%s %o %lu %lld %lld.%09ld %lld.%09ld\n",
             path, (unsigned)sb.st_mode, (unsigned long)sb.st_ino,
             (long long)sb.st_size, (long long)sb.st_mtim.tv_sec,
             sb.st_mtim.tv_nsec, (long long)sb.st_ctim.tv_sec,
             sb.st_ctim.tv_nsec);
    tree_put(t, line, strlen(line));
    if (S_ISREG(sb.st_mode)) {
        static char file[TEXT_SIZE];
        FILE *f = fopen(path, "rb");
        size_t got = f ? fread(file, 1, sizeof file, f) : 0;
        if (f)
            fclose(f);
        tree_put(t, file, got);
        return;
    }
    if (!S_ISDIR(sb.st_mode))
        return;
    n = scandir(path, &names, NULL, alphasort);
    for (i = 0; i < n; i++) {
        char sub[DIR_SIZE + 256];
        if (strcmp(names[i]->d_name, ".") != 0 &&
            strcmp(names[i]->d_name, "..") != 0) {
            snprintf(sub, sizeof sub, "%s/%s", path, names[i]->d_name);
            tree_add(t, sub);
        }
        free(names[i]);
    }
    if (n >= 0)
        free(names);
}

static void tree_take(tree_image *t)
{
    t->len = 0;
    t->overflow = 0;
    tree_add(t, dir);
}

static int tree_same(const tree_image *a, const tree_image *b)
{
    int same = !a->overflow && !b->overflow && a->len == b->len &&
               memcmp(a->bytes, b->bytes, a->len) == 0;

    if (!same)
        fprintf(stderr, "--- on disk before:\n%.*s--- after:\n%.*s---\n",
                (int)(a->len < 3000 ? a->len : 3000), a->bytes,
                (int)(b->len < 3000 ? b->len : 3000), b->bytes);
    return same;
}

/* ---- Configurations ---- */

/* by_sid as config_load builds it: the indices of dcus sorted by sid. */
static void by_sid_build(const dcu_conf *dcus, unsigned *by_sid, unsigned n)
{
    unsigned i, j;

    for (i = 0; i < n; i++) {
        unsigned k = i;
        for (j = i; j > 0 && memcmp(dcus[by_sid[j - 1]].id, dcus[k].id,
                                    FRAME_ID_SIZE) > 0; j--)
            by_sid[j] = by_sid[j - 1];
        by_sid[j] = k;
    }
}

/* The key of key_of k: bytes j + k - 1 (so key 1 is the key of PROTOCOL.md
 * 6.2, whose KCV is kcv_example). */
static void key_make(unsigned k, uint8_t key[KEY_SIZE])
{
    unsigned j;

    for (j = 0; j < KEY_SIZE; j++)
        key[j] = (uint8_t)(j + k - 1);
}

/* The KCV of key k, in hex, as the files have it. */
static const char *kcv_hex(unsigned k, char out[KCV_TEXT])
{
    static const uint8_t zero[16];
    uint8_t key[KEY_SIZE], block[16];
    aes128 aes;
    unsigned i;

    key_make(k, key);
    aes128_init(&aes, key);
    aes128_encrypt(&aes, zero, block);
    for (i = 0; i < STATE_KCV_SIZE; i++)
        snprintf(out + 2 * i, 3, "%02x", block[i]);
    return out;
}

/* The DCUs ids[0..n-1] (NULL: DCU00001..); key_of[i]: 0 none, else the key
 * of key_make.  max_dcus STATE_DCUS, state_dir dir/state, data_dir dir. */
static void cfg_ids(unsigned n, const char *const *ids, const unsigned *key_of)
{
    unsigned i;

    memset(&state_cfg, 0, sizeof state_cfg);
    memset(state_dcus, 0, sizeof state_dcus);
    snprintf(state_cfg.state_dir, sizeof state_cfg.state_dir, "%s/state", dir);
    snprintf(state_cfg.data_dir, sizeof state_cfg.data_dir, "%s", dir);
    for (i = 0; i < n; i++) {
        if (ids)
            snprintf(state_dcus[i].id, sizeof state_dcus[i].id, "%s", ids[i]);
        else
            snprintf(state_dcus[i].id, sizeof state_dcus[i].id, "DCU0000%u",
                     (i + 1) % 10);
        state_dcus[i].has_key = key_of[i] != 0;
        if (key_of[i])
            key_make(key_of[i], state_dcus[i].key);
    }
    by_sid_build(state_dcus, state_by_sid, n);
    state_cfg.dcus = state_dcus;
    state_cfg.by_sid = state_by_sid;
    state_cfg.n_dcus = state_cfg.n_live = n;
    state_cfg.max_dcus = STATE_DCUS;
}

static void cfg_make(unsigned n, const unsigned *key_of)
{
    cfg_ids(n, NULL, key_of);
}

static int state_open_here(void)
{
    int rc = state_open(&st_state, &state_cfg, &how, err, sizeof err);

    if (rc != 0)
        fprintf(stderr, "state_open: %s\n", err);
    return rc;
}

/* The IC of DCU i's key. */
static uint32_t take_ic_of(unsigned i)
{
    return state_dcu_key(&st_state, i) < 0
               ? 0 : state_take_ic(&st_state, (unsigned)state_dcu_key(&st_state, i));
}

/*
 * state_open refuses the state as it is on disk, read-only (--check) and
 * for a start alike: -1, nothing allocated, nothing on disk changed, and
 * the same message, which holds where (the file, with its line), problem
 * and advice (what the operator can do).
 */
#define REFUSED(where, problem, advice) \
    refused_check((where), (problem), (advice), __LINE__)

static void refused_check(const char *where, const char *problem,
                          const char *advice, int line)
{
    char first[ERR_SIZE];
    int read_only, ok = 1;

    for (read_only = 1; read_only >= 0; read_only--) {
        int rc;

        how.read_only = read_only;
        tree_take(&tree_before);
        err[0] = '\0';
        rc = state_open(&st_state, &state_cfg, &how, err, sizeof err);
        tree_take(&tree_after);
        CHECK_EQ(rc, -1);
        if (rc == 0)
            state_release(&st_state);
        CHECK(st_state.dcus == NULL && st_state.buf == NULL);
        CHECK(tree_same(&tree_before, &tree_after));
        ok &= strstr(err, where) != NULL && strstr(err, problem) != NULL &&
              strstr(err, advice) != NULL;
        if (read_only)
            strcpy(first, err);
        else
            ok &= strcmp(first, err) == 0;
    }
    how.read_only = 0;
    CHECK(ok);
    if (!ok)
        fprintf(stderr, "test_state.c:%d: got '%s' (read-only: '%s'), want "
                "'%s' and '%s' and '%s'\n", line, err, first, where, problem,
                advice);
}

#define ADVICE "--fresh-state"

/* ------------------------------------------------------------------------
 * ICs, marks and statistics
 * ---------------------------------------------------------------------- */

/* A first start: every configured key at IC 1, a block reserved, the three
 * files written. */
static void test_state_first_start(void)
{
    static const unsigned keys[] = { 1, 0, 2 };
    char kcv2[KCV_TEXT], want[256];

    begin("state-first");
    cfg_make(3, keys);
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.n_keys, 2);
    CHECK_EQ(st_state.n_marks, 2);
    CHECK_EQ(st_state.n_dcus, 3);
    CHECK(state_dcu_key(&st_state, 0) == 0);
    CHECK(state_dcu_key(&st_state, 1) == -1 && st_state.dcus[1].mark == -1);
    CHECK(state_dcu_key(&st_state, 2) == 1);
    CHECK(st_state.dcus[0].session == -1 && st_state.dcus[2].session == -1);
    CHECK_EQ(state_take_ic(&st_state, 0), 1);
    CHECK_EQ(state_take_ic(&st_state, 0), 2);
    CHECK_EQ(state_take_ic(&st_state, 0), 3);
    CHECK_EQ(state_take_ic(&st_state, 1), 1);
    CHECK_EQ(state_take_ic(&st_state, 2), 0);   /* no such key */
    CHECK_EQ(state_rx_mark(&st_state, 0), 0);
    CHECK_EQ(state_rx_mark(&st_state, 1), 0);
    snprintf(want, sizeof want, "\nfepd-state 2 1\ntx %s 65537\ntx %s 65537\n"
             "end 2\n", kcv_example, kcv_hex(2, kcv2));
    CHECK(ends_with(state_text(), want));
    CHECK(strstr(text, "\nrx ") == NULL && strstr(text, "\ndcu ") == NULL);
    CHECK_FILE("state/fepd.journal", "fepd-journal 2 1\n");
    CHECK_FILE("fepd.generation", "fepd-generation 1 0\n");
    state_release(&st_state);
    CHECK(st_state.dcus == NULL && st_state.keys == NULL);
    end();
}

/* ICs handed out before a restart are never handed out again, saved or not. */
static void test_state_restart(void)
{
    static const unsigned keys[] = { 1 };
    uint32_t ic = 0;
    unsigned i;

    begin("state-restart");
    cfg_make(1, keys);
    CHECK(state_open_here() == 0);
    for (i = 0; i < 10; i++)
        ic = state_take_ic(&st_state, 0);
    CHECK_EQ(ic, 10);
    state_release(&st_state);               /* a crash: nothing saved */
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_take_ic(&st_state, 0), 65537);
    state_release(&st_state);
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_take_ic(&st_state, 0), 2 * 65536 + 1);
    CHECK_EQ(st_state.generation, 3);
    CHECK_FILE("fepd.generation", "fepd-generation 3 0\n");
    state_release(&st_state);
    end();
}

/* Crossing a block boundary reserves the next block first, a tx line in
 * the journal and then the witness; if that fails, no IC is handed out
 * and nothing changes until it succeeds.  A journal that is not the file
 * fepd wrote takes a whole snapshot instead. */
static void test_state_block_boundary(void)
{
    static const unsigned keys[] = { 1 };
    static const char *const faults[] = {
        "fwrite:1:ENOSPC", "fsync:1:EIO", "open:1:EMFILE",
    };
    char want[128], line[64];
    ino_t snap_ino;
    uint32_t i;
    size_t f;
    int ok = 1;

    begin("state-block");
    cfg_make(1, keys);
    CHECK(state_open_here() == 0);
    snap_ino = file_ino("state/fepd.state");
    for (i = 1; i <= IC_RESERVE_BLOCK; i++)
        ok &= state_take_ic(&st_state, 0) == i;
    CHECK(ok);
    CHECK_FILE("state/fepd.journal", "fepd-journal 2 1\n");
    for (f = 0; f < sizeof faults / sizeof faults[0]; f++) {
        fault(faults[f]);
        CHECK_EQ(state_take_ic(&st_state, 0), 0);
        fault("");
        CHECK_FILE("state/fepd.journal", "fepd-journal 2 1\n");
        CHECK_FILE("fepd.generation", "fepd-generation 1 0\n");
        CHECK_EQ(st_state.keys[0].tx_ic_reserved, 65537);
        CHECK_EQ(st_state.reservations, 0);
    }
    CHECK_EQ(state_take_ic(&st_state, 0), 65537);
    snprintf(want, sizeof want, "fepd-journal 2 1\ntx %s 131073\n",
             kcv_example);
    CHECK_FILE("state/fepd.journal", want);
    CHECK_FILE("fepd.generation", "fepd-generation 1 1\n");
    CHECK(file_ino("state/fepd.state") == snap_ino);    /* not rewritten */
    state_release(&st_state);               /* a crash */
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_take_ic(&st_state, 0), 131073);

    /* The journal gone: the reservation writes the whole snapshot. */
    CHECK(unlink(path_of("state/fepd.journal")) == 0);
    for (i = 131074; i < 3 * 65536 + 1; i++)
        ok &= state_take_ic(&st_state, 0) == i;
    CHECK(ok);
    CHECK_EQ(state_take_ic(&st_state, 0), 3 * 65536 + 1);
    snprintf(line, sizeof line, "\ntx %s 262145\n", kcv_example);
    CHECK(strstr(state_text(), line) != NULL);
    CHECK(journal_only_head());
    state_release(&st_state);
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_take_ic(&st_state, 0), 262145);
    state_release(&st_state);
    end();
}

/* DCUs that share a key draw from one IC sequence. */
static void test_state_shared_key(void)
{
    static const unsigned keys[] = { 1, 2, 1, 0 };

    begin("state-shared");
    cfg_make(4, keys);
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.n_keys, 2);
    CHECK_EQ(st_state.n_marks, 3);
    CHECK(state_dcu_key(&st_state, 0) == state_dcu_key(&st_state, 2));
    CHECK(st_state.dcus[0].mark != st_state.dcus[2].mark);
    CHECK(state_dcu_key(&st_state, 1) != state_dcu_key(&st_state, 0));
    CHECK(state_dcu_key(&st_state, 3) == -1);
    CHECK_EQ(take_ic_of(0), 1);
    CHECK_EQ(take_ic_of(2), 2);
    CHECK_EQ(take_ic_of(1), 1);
    state_release(&st_state);
    end();
}

/* Marks and statistics survive a restart.  A DCU whose key changed starts
 * under the new key with mark 0 and IC 1, while the old key's tx and rx
 * lines are kept; a DCU no longer configured keeps its rx line and loses
 * its statistics. */
static void test_state_rx_and_stats(void)
{
    static const unsigned keys[] = { 1, 0, 3 };
    static const unsigned keys_changed[] = { 2, 0, 3 };
    char kcv3[KCV_TEXT], line[80];

    begin("state-rx");
    cfg_make(3, keys);
    kcv_hex(3, kcv3);
    CHECK(state_open_here() == 0);
    state_rx_raise(&st_state, 0, 42);
    state_rx_raise(&st_state, 2, 4294967295u);
    st_state.dcus[1].last_success_s = 1767225600;
    st_state.dcus[1].sessions_ok = 3;
    st_state.dcus[1].sessions_failed = 1;
    st_state.dcus[1].records = 18446744073709551615u;
    state_touch(&st_state, 1);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK_EQ(st_state.dirty, 0);
    snprintf(line, sizeof line, "\nrx DCU00001 %s 42\n", kcv_example);
    CHECK(strstr(file_text("state/fepd.journal"), line) != NULL);
    CHECK(strstr(text, "\ndcu DCU00002 1767225600 3 1 18446744073709551615\n")
          != NULL);
    CHECK(strstr(text, "\ndcu DCU00001") == NULL);
    state_release(&st_state);

    CHECK(state_open_here() == 0);
    CHECK_EQ(state_rx_mark(&st_state, 0), 42);
    CHECK_EQ(state_rx_mark(&st_state, 2), 4294967295u);
    CHECK_EQ(state_rx_mark(&st_state, 1), 0);
    CHECK_EQ(st_state.dcus[1].last_success_s, 1767225600);
    CHECK_EQ(st_state.dcus[1].sessions_ok, 3);
    CHECK_EQ(st_state.dcus[1].sessions_failed, 1);
    CHECK_EQ(st_state.dcus[1].records, 18446744073709551615u);
    CHECK(strstr(state_text(), line) != NULL);  /* folded at the start */
    state_release(&st_state);

    cfg_make(3, keys_changed);              /* DCU00001 has a new key */
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_rx_mark(&st_state, 0), 0);
    CHECK_EQ(take_ic_of(0), 1);
    CHECK_EQ(state_rx_mark(&st_state, 2), 4294967295u);
    CHECK_EQ(st_state.dcus[1].sessions_ok, 3);
    CHECK_EQ(st_state.n_keys, 3);
    CHECK(strstr(state_text(), line) != NULL);  /* the old key's mark */
    snprintf(line, sizeof line, "\ntx %s 131073\n", kcv_example);
    CHECK(strstr(text, line) != NULL);
    state_release(&st_state);

    cfg_make(1, keys_changed);              /* DCU00002 and 3 are gone */
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.n_dcus, 1);
    CHECK(strstr(state_text(), "DCU00002") == NULL);
    snprintf(line, sizeof line, "\nrx DCU00003 %s 4294967295\n", kcv3);
    CHECK(strstr(text, line) != NULL);
    state_release(&st_state);
    end();
}

/* A file written by hand (comments, blank lines, a missing last newline,
 * upper-case hex, tabs, CR) loads; rx lines in any order, a key and a DCU
 * that are not configured kept. */
static void test_state_load_liberal(void)
{
    static const unsigned keys[] = { 1, 1 };
    char body[768], line[80];

    begin("state-liberal");
    cfg_make(2, keys);
    snprintf(body, sizeof body,
             "# comment\n\n"
             "fepd-state\t2  7\r\n"
             "tx %s 1000\n"
             "tx 0123456789ABCDEF 99999\n"
             "dcu DCU00002 5 6 7 8\n"
             "rx\tDCU00002 C6A13B37878F5B82 9\r\n"
             "rx DCU00009 0123456789abcdef 4\n"
             "\n# the end line follows\n"
             "rx DCU00001 %s 77\n"
             "end 6", kcv_example, kcv_example);
    state_dir_make();
    text_write("state/fepd.state", body);
    journal_write(7, "");
    witness_matching(7);
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.n_keys, 2);
    CHECK_EQ(st_state.n_marks, 3);
    CHECK_EQ(take_ic_of(0), 1000);
    CHECK_EQ(take_ic_of(1), 1001);
    CHECK_EQ(state_rx_mark(&st_state, 0), 77);
    CHECK_EQ(state_rx_mark(&st_state, 1), 9);
    CHECK_EQ(st_state.dcus[1].last_success_s, 5);
    CHECK_EQ(st_state.dcus[1].records, 8);
    CHECK_EQ(st_state.generation, 8);
    CHECK(strstr(state_text(), "\ntx 0123456789abcdef 99999\n") != NULL);
    CHECK(strstr(text, "\nrx DCU00009 0123456789abcdef 4\n") != NULL);
    snprintf(line, sizeof line, "\ntx %s 66536\n", kcv_example);
    CHECK(strstr(text, line) != NULL);
    CHECK(ends_with(text, "\nend 6\n"));
    state_release(&st_state);
    end();
}

/* A snapshot fepd cannot account for stops the start, naming file, line
 * and problem, and is left as it was. */
static void test_state_corrupt(void)
{
#define KCV "c6a13b37878f5b82"
#define HEAD "fepd-state 2 1\n"
    static const unsigned keys[] = { 1 };
    static const struct {
        const char *body;
        size_t len;                     /* 0: strlen(body) */
        const char *where, *problem;
    } cases[] = {
        { "", 0, "fepd.state:1: ", "empty" },
        { "# only\n# comments\n\n", 0, "fepd.state:4: ", "no header line" },
        { HEAD "tx " KCV " 5\n", 0, "fepd.state:3: ",
          "no end line: the file is truncated" },
        { HEAD "tx " KCV " 5\nrx DCU00001 " KCV " 3\n", 0, "fepd.state:4: ",
          "no end line" },
        { HEAD "tx " KCV " 5\nend 2\n", 0, "fepd.state:3: ",
          "end: says 2 records, the file has 1" },
        { HEAD "tx " KCV " 5\nend 0\n", 0, "fepd.state:3: ", "end: says 0" },
        { HEAD "tx " KCV " 5\nend x\n", 0, "fepd.state:3: ",
          "end: expected RECORDS" },
        { HEAD "tx " KCV " 5\nbogus 1 2\nend 2\n", 0, "fepd.state:3: ",
          "unknown record" },
        { HEAD "tx " KCV " 5\nend 1\ntx " KCV " 6\n", 0, "fepd.state:4: ",
          "a line after the end line" },
        { HEAD "tx " KCV " 5\nend 1\nend 1\n", 0, "fepd.state:4: ",
          "a line after the end line" },
        { HEAD "tx " KCV " 5\n\0\nend 1\n",
          sizeof HEAD "tx " KCV " 5\n\0\nend 1\n" - 1, "fepd.state:3: ",
          "NUL byte" },
        { HEAD "tx " KCV " 5\nend 1\0", sizeof HEAD "tx " KCV " 5\nend 1\0" - 1,
          "fepd.state:3: ", "NUL byte" },
        { "# x\n" HEAD "\ntx zz 5\nend 1\n", 0, "fepd.state:4: ",
          "tx: KCV is not 16 hex digits" },
        { HEAD "tx " KCV " 0\nend 1\n", 0, "fepd.state:2: ",
          "tx: RESERVED is not" },
        { HEAD "tx " KCV " 4294967296\nend 1\n", 0, "fepd.state:2: ",
          "tx: RESERVED is not" },
        { HEAD "tx " KCV " 12x\nend 1\n", 0, "fepd.state:2: ",
          "tx: RESERVED is not" },
        { HEAD "tx " KCV "\nend 1\n", 0, "fepd.state:2: ",
          "tx: expected KCV RESERVED" },
        { HEAD "dcu DCU00001 1 2 3\nend 1\n", 0, "fepd.state:2: ",
          "dcu: expected" },
        { HEAD "dcu DCU00001 1 2 x 3\nend 1\n", 0, "fepd.state:2: ",
          "dcu: a field is not a decimal number" },
        { HEAD "tx " KCV " 5\nrx DCU00001 " KCV " -1\nend 2\n", 0,
          "fepd.state:3: ", "rx: LAST_IC is not" },
        { HEAD "tx " KCV " 5\nrx DCU000012 " KCV " 1\nend 2\n", 0,
          "fepd.state:3: ", "rx: DCU is not an id" },
        { HEAD "dcu DCU00001 1 2 3 4 5 6 7\nend 1\n", 0, "fepd.state:2: ",
          "too many fields" },
        { HEAD "tx " KCV " 5\n#\n#\n\nrx DCU00001 c6a13b37878f5b8 1\nend 2",
          0, "fepd.state:6: ", "rx: KCV is not 16 hex digits" },
        { HEAD "rx DCU00001 " KCV " 1\ntx " KCV " 5\nend 2\n", 0,
          "fepd.state:2: ", "rx: a key with no tx line" },
        { "fepd-state 3 1\nend 0\n", 0, "fepd.state:1: ",
          "format 3, which this fepd (format 2) cannot read" },
        { "fepd-state 2\nend 0\n", 0, "fepd.state:1: ",
          "header: expected FORMAT GENERATION" },
        { "fepd-journal 2 1\nend 0\n", 0, "fepd.state:1: ",
          "no header line (expected 'fepd-state 2 GENERATION')" },
        { "tx " KCV " 5\nend 1\n", 0, "fepd.state:1: ", "no header line" },
        { HEAD "tx " KCV " 5\nend 1\n\t\n# a comment after the end\n" HEAD,
          0, "fepd.state:6: ", "a line after the end line" },
    };
    static char big[300 * 1024];
    char longline[400];
    size_t i;

    begin("state-corrupt");
    cfg_make(1, keys);
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        state_dir_make();
        bytes_write("state/fepd.state", cases[i].body,
                    cases[i].len ? cases[i].len : strlen(cases[i].body));
        journal_write(1, "");
        REFUSED(cases[i].where, cases[i].problem, ADVICE);
        test_remove_tree(path_of("state"));
    }
    memset(longline, '#', sizeof longline - 1);
    longline[sizeof longline - 1] = '\0';
    snprintf(big, sizeof big, HEAD "%s\nend 0\n", longline);
    state_dir_make();
    text_write("state/fepd.state", big);
    journal_write(1, "");
    REFUSED("fepd.state:2: ", "line too long", ADVICE);

    /* Larger than any state of this max_dcus: refused unread. */
    strcpy(big, HEAD);
    for (i = strlen(big); i + 100 < sizeof big - 16; i += 100) {
        memset(big + i, '#', 99);
        big[i + 99] = '\n';
    }
    strcpy(big + i, "end 0\n");
    text_write("state/fepd.state", big);
    REFUSED("fepd.state:", "larger than any state fepd writes", ADVICE);
    /* The same state is good: the size alone refused it. */
    snap_write(1, "");
    CHECK(state_open_here() == 0);
    state_release(&st_state);
    end();
#undef HEAD
#undef KCV
}

/* A save that fails at any step leaves both files as they were and the
 * state dirty; the next save writes it all.  An append (DCUs marked) and a
 * compaction (dirty, nothing marked) alike. */
static void test_state_save_failure(void)
{
    static const unsigned keys[] = { 1, 0 };
    static const char *const append_faults[] = {
        "fsync:1:EIO", "fwrite:1:ENOSPC", "open:1:EMFILE"
    };
    static const char *const compact_faults[] = {
        "rename:1:EIO", "fsync:1:EIO", "fwrite:1:ENOSPC", "open:1:EMFILE",
        "open:2:EMFILE"
    };
    static char snap[4096], journal[4096];
    size_t i;

    begin("state-savefail");
    cfg_make(2, keys);
    CHECK(state_open_here() == 0);
    strcpy(snap, state_text());
    strcpy(journal, file_text("state/fepd.journal"));
    for (i = 0; i < sizeof append_faults / sizeof append_faults[0]; i++) {
        st_state.dcus[1].sessions_ok = 10 + i;
        state_touch(&st_state, 1);
        fault(append_faults[i]);
        CHECK(state_save(&st_state, &state_cfg) == -1);
        fault("");
        CHECK_EQ(st_state.dirty, 1);
        CHECK_EQ(st_state.n_changed, 1);
        CHECK_STR_EQ(state_text(), snap);
        CHECK_FILE("state/fepd.journal", journal);
    }
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK(ends_with(file_text("state/fepd.journal"), "\ndcu DCU00002 0 12 0 0\n"));
    CHECK_EQ(st_state.dirty, 0);

    /* Dirty with nothing marked: only a whole snapshot holds it. */
    state_release(&st_state);
    CHECK(state_open_here() == 0);
    strcpy(snap, state_text());
    strcpy(journal, file_text("state/fepd.journal"));
    for (i = 0; i < sizeof compact_faults / sizeof compact_faults[0]; i++) {
        st_state.dcus[1].sessions_ok = 20 + i;
        st_state.dirty = 1;
        fault(compact_faults[i]);
        CHECK(state_save(&st_state, &state_cfg) == -1);
        fault("");
        CHECK_EQ(st_state.dirty, 1);
        CHECK_STR_EQ(state_text(), snap);
        CHECK_FILE("state/fepd.journal", journal);
    }
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK(strstr(state_text(), "\ndcu DCU00002 0 24 0 0\n") != NULL);
    CHECK(journal_only_head());
    state_release(&st_state);
    end();
}

/* state_open does not start when the first snapshot cannot be saved; the
 * failed start leaves nothing that makes the next one refuse. */
static void test_state_open_save_failure(void)
{
    static const unsigned keys[] = { 1 };
    static const struct { const char *spec, *where; } faults[] = {
        { "rename:1:EIO", "/state/fepd.state: save (rename): " },
        { "fwrite:1:ENOSPC", "/state/fepd.state: save (write): " },
        { "fsync:2:EIO", "/state/fepd.state: save (fsync): " },
        { "open:1:EMFILE", "/state/fepd.state: " },      /* + strerror */
        { "open:2:EMFILE", "/state: " },  /* its mkdir, + strerror */
        { "open:3:EMFILE", "/state/fepd.journal: save (open): " },
        { "open:4:EMFILE", "/state/fepd.state: save (open): " },
    };
    size_t i;

    for (i = 0; i < sizeof faults / sizeof faults[0]; i++) {
        begin("state-openfail");
        cfg_make(1, keys);
        fault(faults[i].spec);
        err[0] = '\0';
        CHECK(state_open(&st_state, &state_cfg, &how, err, sizeof err) == -1);
        fault("");
        CHECK(strstr(err, faults[i].where) != NULL);
        if (strstr(faults[i].spec, "EMFILE") != NULL)   /* the C library's words */
            CHECK(strstr(err, strerror(EMFILE)) != NULL);
        if (strstr(err, faults[i].where) == NULL)
            fprintf(stderr, "got '%s', want '%s'\n", err, faults[i].where);
        CHECK(st_state.dcus == NULL);
        CHECK(!exists("state/fepd.state") && !exists("fepd.generation"));
        CHECK(state_open_here() == 0);
        CHECK_EQ(state_take_ic(&st_state, 0), 1);
        state_release(&st_state);
        end();
    }
}

/* IC 0xFFFFFFFF is never used; after 0xFFFFFFFE every take fails. */
static void test_state_exhausted(void)
{
    static const unsigned keys[] = { 1 };
    char body[128];

    begin("state-exhausted");
    cfg_make(1, keys);
    snprintf(body, sizeof body, "tx %s 4294967294\n", kcv_example);
    snap_write(1, body);
    journal_write(1, "");
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.keys[0].tx_ic_reserved, 0xFFFFFFFFu);
    CHECK_EQ(state_take_ic(&st_state, 0), 0xFFFFFFFEu);
    CHECK_EQ(state_take_ic(&st_state, 0), 0);
    CHECK_EQ(state_take_ic(&st_state, 0), 0);
    state_release(&st_state);
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_take_ic(&st_state, 0), 0);
    state_release(&st_state);
    end();
}

/* A DCU list with no key at all, and state_dir's parents created. */
static void test_state_no_keys(void)
{
    static const unsigned keys[] = { 0, 0 };

    begin("state-nokeys");
    cfg_make(2, keys);
    snprintf(state_cfg.state_dir, sizeof state_cfg.state_dir, "%s/a/b", dir);
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.n_keys, 0);
    CHECK_EQ(st_state.n_marks, 0);
    CHECK_EQ(state_take_ic(&st_state, 0), 0);
    CHECK(ends_with(file_text("a/b/fepd.state"), "\nfepd-state 2 1\nend 0\n"));
    CHECK(strstr(text, "\ntx ") == NULL);
    CHECK_FILE("a/b/fepd.journal", "fepd-journal 2 1\n");
    state_release(&st_state);
    end();
}

/* ------------------------------------------------------------------------
 * Every key and every mark kept
 * ---------------------------------------------------------------------- */

/* A key taken away and given back continues its ICs after its reservation
 * and keeps its DCU's mark; while it is away its lines stay. */
static void test_state_key_comes_back(void)
{
    static const unsigned key_a[] = { 1 }, key_b[] = { 2 };
    char line[80], kcv_b[KCV_TEXT];
    uint32_t ic;

    begin("state-keyback");
    cfg_make(1, key_a);
    CHECK(state_open_here() == 0);
    CHECK_EQ(take_ic_of(0), 1);
    CHECK_EQ(take_ic_of(0), 2);
    CHECK_EQ(take_ic_of(0), 3);
    state_rx_raise(&st_state, 0, 7);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    state_release(&st_state);

    cfg_make(1, key_b);                     /* A is not configured */
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_rx_mark(&st_state, 0), 0);
    CHECK_EQ(take_ic_of(0), 1);
    state_rx_raise(&st_state, 0, 2);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    state_release(&st_state);
    snprintf(line, sizeof line, "\ntx %s 65537\n", kcv_example);
    CHECK(strstr(state_text(), line) != NULL);
    snprintf(line, sizeof line, "\nrx DCU00001 %s 7\n", kcv_example);
    CHECK(strstr(text, line) != NULL);

    cfg_make(1, key_a);                     /* A is back */
    CHECK(state_open_here() == 0);
    ic = take_ic_of(0);
    CHECK(ic > 3);
    CHECK_EQ(ic, 65537);
    CHECK_EQ(state_rx_mark(&st_state, 0), 7);
    snprintf(line, sizeof line, "\nrx DCU00001 %s 2\n", kcv_hex(2, kcv_b));
    CHECK(strstr(state_text(), line) != NULL);  /* B's, kept in turn */
    state_release(&st_state);
    end();
}

/* A DCU taken out of the configuration and put back keeps its mark, in
 * whatever place of the list it comes back. */
static void test_state_dcu_readded(void)
{
    static const unsigned keys2[] = { 1, 1 }, keys1[] = { 1 };
    static const char *const reordered[] = { "DCU00002", "DCU00001" };
    char line[80];

    begin("state-readded");
    cfg_make(2, keys2);
    CHECK(state_open_here() == 0);
    state_rx_raise(&st_state, 0, 4);
    state_rx_raise(&st_state, 1, 9);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    state_release(&st_state);

    cfg_make(1, keys1);
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_rx_mark(&st_state, 0), 4);
    state_release(&st_state);
    snprintf(line, sizeof line, "\nrx DCU00002 %s 9\n", kcv_example);
    CHECK(strstr(state_text(), line) != NULL);

    cfg_ids(2, reordered, keys2);
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_rx_mark(&st_state, 0), 9);
    CHECK_EQ(state_rx_mark(&st_state, 1), 4);
    state_release(&st_state);
    end();
}

/* The tables hold 2 x max_dcus keys and marks: a state or a configuration
 * that needs more is refused, never cut. */
static void test_state_bounded(void)
{
    static const unsigned k1[] = { 1 }, k2[] = { 2 }, k3[] = { 3 };
    char body[512], kcv2[KCV_TEXT], kcv3[KCV_TEXT];

    begin("state-bounded");
    cfg_make(1, k1);
    state_cfg.max_dcus = 1;
    snprintf(body, sizeof body, "tx %s 5\ntx %s 5\ntx %s 5\n", kcv_example,
             kcv_hex(2, kcv2), kcv_hex(3, kcv3));
    snap_write(1, body);
    journal_write(1, "");
    REFUSED("fepd.state:5: ", "tx: more keys than the state can hold "
            "(2 x max_dcus): raise max_dcus", ADVICE);
    snprintf(body, sizeof body, "tx %s 5\nrx DCU00001 %s 1\nrx DCU00002 %s 1\n"
             "rx DCU00003 %s 1\n", kcv_example, kcv_example, kcv_example,
             kcv_example);
    snap_write(1, body);
    REFUSED("fepd.state:6: ", "rx: more marks than the state can hold "
            "(2 x max_dcus): raise max_dcus", ADVICE);
    state_cfg.max_dcus = 2;                 /* room for them */
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.n_marks, 3);
    state_release(&st_state);
    test_remove_tree(path_of("state"));
    CHECK(unlink(path_of("fepd.generation")) == 0);

    /* Keys that come one after the other fill the table too. */
    cfg_make(1, k1);
    state_cfg.max_dcus = 1;
    CHECK(state_open_here() == 0);
    state_release(&st_state);
    cfg_make(1, k2);
    state_cfg.max_dcus = 1;
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.n_keys, 2);
    state_release(&st_state);
    cfg_make(1, k3);
    state_cfg.max_dcus = 1;
    REFUSED("/state/fepd.state: the state holds more keys or marks than 2 x "
            "max_dcus (1)", "raise max_dcus", "raise max_dcus");
    state_cfg.max_dcus = 2;
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.n_keys, 3);
    CHECK_EQ(take_ic_of(0), 1);
    state_release(&st_state);
    end();
}

/* ------------------------------------------------------------------------
 * Refusals: files missing, files of the wrong generation, the witness
 * ---------------------------------------------------------------------- */

/* No snapshot: a first start when nothing shows an earlier run, refused
 * when the journal, the witness or rows in data_dir do. */
static void test_state_missing(void)
{
    static const unsigned keys[] = { 1 };

    begin("state-missing");
    cfg_make(1, keys);
    journal_write(3, "");
    REFUSED("/state/fepd.state: missing, but ", "/state/fepd.journal shows "
            "that fepd has run before", ADVICE);
    test_remove_tree(path_of("state"));

    text_write("fepd.generation", "fepd-generation 3 0\n");
    REFUSED("/state/fepd.state: missing, but ", "/fepd.generation shows that "
            "fepd has run before", ADVICE);
    CHECK(unlink(path_of("fepd.generation")) == 0);

    how.data_has_rows = 1;
    REFUSED("/state/fepd.state: missing, but ", "data_dir (rows in its CSV "
            "files) shows that fepd has run before", ADVICE);
    how.data_has_rows = 0;

    /* Nothing anywhere: a first start. */
    CHECK(!exists("state"));
    CHECK(state_open_here() == 0);
    CHECK_EQ(take_ic_of(0), 1);
    state_release(&st_state);
    CHECK(exists("state/fepd.state") && exists("state/fepd.journal") &&
          exists("fepd.generation"));
    end();
}

/* The journal beside the snapshot: missing, refused; of an older
 * generation (a compaction cut short), ignored; newer, refused. */
static void test_state_journal_generation(void)
{
    static const unsigned keys[] = { 1 };
    char body[256];

    begin("state-jgen");
    cfg_make(1, keys);
    snprintf(body, sizeof body, "tx %s 1000\nrx DCU00001 %s 5\n", kcv_example,
             kcv_example);
    snap_write(5, body);
    REFUSED("/state/fepd.journal: missing beside ", "the values since the "
            "snapshot are lost", ADVICE);

    journal_write(6, "");
    REFUSED("/state/fepd.journal: generation 6, newer than ", "(5): the "
            "snapshot is older than its journal", ADVICE);

    snprintf(body, sizeof body, "rx DCU00001 %s 9\ntx %s 99999\n"
             "dcu DCU00001 1 2 3 4\n", kcv_example, kcv_example);
    journal_write(4, body);
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_rx_mark(&st_state, 0), 5);
    CHECK_EQ(take_ic_of(0), 1000);
    CHECK_EQ(st_state.dcus[0].sessions_ok, 0);
    CHECK_EQ(st_state.generation, 6);
    CHECK_FILE("state/fepd.journal", "fepd-journal 2 6\n");
    CHECK(strstr(state_text(), "99999") == NULL);
    state_release(&st_state);
    end();
}

/* Copies of the state files, as a backup would have them. */
static char saved_snap[TEXT_SIZE / 4], saved_journal[TEXT_SIZE / 4];

static void state_backup(void)
{
    CHECK(test_read_file(path_of("state/fepd.state"), saved_snap,
                         sizeof saved_snap) > 0);
    CHECK(test_read_file(path_of("state/fepd.journal"), saved_journal,
                         sizeof saved_journal) > 0);
}

static void state_restore(void)
{
    text_write("state/fepd.state", saved_snap);
    text_write("state/fepd.journal", saved_journal);
}

/* A state_dir restored from a backup is older than the witness: after a
 * compaction (an older generation) and after a reservation (fewer
 * reservations in the journal) alike. */
static void test_state_witness_rollback(void)
{
    static const unsigned keys[] = { 1 };
    uint32_t i;
    int ok = 1;

    begin("state-rollback");
    cfg_make(1, keys);
    CHECK(state_open_here() == 0);
    state_rx_raise(&st_state, 0, 5);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    state_release(&st_state);
    state_backup();
    CHECK(state_open_here() == 0);          /* a compaction: generation 2 */
    state_rx_raise(&st_state, 0, 6);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    state_release(&st_state);
    state_restore();
    REFUSED("/state/fepd.state: generation 1 with 0 reservations, older than ",
            "/fepd.generation says (2 with 0): the state was rolled back",
            ADVICE);
    test_remove_tree(path_of("state"));
    CHECK(unlink(path_of("fepd.generation")) == 0);

    CHECK(state_open_here() == 0);
    state_backup();
    for (i = 1; i <= IC_RESERVE_BLOCK + 1; i++)
        ok &= state_take_ic(&st_state, 0) == i;
    CHECK(ok);
    state_release(&st_state);
    CHECK_FILE("fepd.generation", "fepd-generation 1 1\n");
    state_restore();
    REFUSED("/state/fepd.state: generation 1 with 0 reservations, older than ",
            "(1 with 1): the state was rolled back", ADVICE);
    end();
}

/* A witness fepd cannot read is refused with what to do; one that is
 * missing is written again. */
static void test_state_witness_damaged(void)
{
    static const unsigned keys[] = { 1 };
    static const char *const damaged[] = {
        "", "garbage\n", "fepd-generation 1\n", "fepd-generation x 0\n",
        "fepd-generation 1 0 7\n", "fepd-state 1 0\n",
        "fepd-generation 1 18446744073709551616\n",
    };
    size_t i;

    begin("state-witness");
    cfg_make(1, keys);
    CHECK(state_open_here() == 0);
    state_rx_raise(&st_state, 0, 3);        /* the run did something */
    CHECK(state_save(&st_state, &state_cfg) == 0);
    state_release(&st_state);
    for (i = 0; i < sizeof damaged / sizeof damaged[0]; i++) {
        text_write("fepd.generation", damaged[i]);
        REFUSED("/fepd.generation: damaged (expected 'fepd-generation "
                "GENERATION RESERVATIONS')", "/state/fepd.state is the newest "
                "state", "write it again: printf 'fepd-generation 1 0\\n' > ");
    }
    /* Missing: data_dir lost, or state_dir restored: refused, with the
     * line that writes it back. */
    CHECK(unlink(path_of("fepd.generation")) == 0);
    REFUSED("/fepd.generation: missing, while ", "(generation 1) was written "
            "by a fepd that keeps it", "printf 'fepd-generation 1 0\\n' > ");
    text_write("fepd.generation", "fepd-generation 1 0\n");
    CHECK(state_open_here() == 0);
    CHECK_FILE("fepd.generation", "fepd-generation 2 0\n");
    state_release(&st_state);
    /* A first start cut short between its first snapshot and the witness
     * (generation 1, nothing appended: nothing was sent) is no loss. */
    test_remove_tree(path_of("state"));
    CHECK(unlink(path_of("fepd.generation")) == 0);
    CHECK(state_open_here() == 0);
    state_release(&st_state);
    CHECK(unlink(path_of("fepd.generation")) == 0);
    CHECK(state_open_here() == 0);
    CHECK_FILE("fepd.generation", "fepd-generation 2 0\n");
    state_release(&st_state);
    end();
}

/* Not a regular file where a state file belongs (a FIFO, a link to a
 * device): refused at once, never read, never blocking.  Run in a child,
 * so that a start that blocks fails the test instead of hanging it. */
static void test_state_not_regular(void)
{
    static const unsigned keys[] = { 1 };
    static const struct { const char *name; int fifo; } cases[] = {
        { "state/fepd.state", 1 }, { "state/fepd.state", 0 },
        { "state/fepd.journal", 1 }, { "state/fepd.journal", 0 },
        { "fepd.generation", 1 }, { "fepd.generation", 0 },
    };
    size_t i;
    int read_only;

    begin("state-notreg");
    cfg_make(1, keys);
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char want[DIR_SIZE + 64];

        snap_write(1, "");
        journal_write(1, "");
        unlink(path_of(cases[i].name));
        if (cases[i].fifo)
            CHECK(mkfifo(path_of(cases[i].name), 0644) == 0);
        else
            CHECK(symlink("/dev/zero", path_of(cases[i].name)) == 0);
        snprintf(want, sizeof want, "%s: not a regular file; ",
                 path_of(cases[i].name));
        for (read_only = 1; read_only >= 0; read_only--) {
            int fds[2], status;
            pid_t pid;
            ssize_t n;

            CHECK(pipe(fds) == 0);
            tree_take(&tree_before);
            pid = fork();
            CHECK(pid >= 0);
            if (pid == 0) {
                int rc;

                close(fds[0]);
                how.read_only = read_only;
                rc = state_open(&st_state, &state_cfg, &how, err, sizeof err);
                if (write(fds[1], err, strlen(err)) < 0)
                    _exit(2);
                _exit(rc == -1 ? 0 : 1);
            }
            close(fds[1]);
            status = test_wait(pid, 5000);
            CHECK_EQ(status, 0);
            memset(err, 0, sizeof err);
            n = read(fds[0], err, sizeof err - 1);
            close(fds[0]);
            CHECK(n > 0);
            CHECK(strstr(err, want) != NULL && strstr(err, ADVICE) != NULL);
            if (strstr(err, want) == NULL)
                fprintf(stderr, "got '%s', want '%s'\n", err, want);
            tree_take(&tree_after);
            CHECK(tree_same(&tree_before, &tree_after));
        }
        test_remove_tree(path_of("state"));
        unlink(path_of("fepd.generation"));
    }
    end();
}

/* --fresh-state: the old files set aside under new names, never removed,
 * and a start from nothing: ICs at 1, no marks. */
static void test_state_fresh_state(void)
{
    static const unsigned keys[] = { 1 };
    static char snap[4096], journal[4096], witness[256];
    char name[2 * 256 + 2];
    time_t now;
    int i;

    begin("state-freshstate");
    cfg_make(1, keys);
    CHECK(state_open_here() == 0);
    CHECK_EQ(take_ic_of(0), 1);
    CHECK_EQ(take_ic_of(0), 2);
    state_rx_raise(&st_state, 0, 7);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    state_release(&st_state);
    strcpy(snap, state_text());
    strcpy(journal, file_text("state/fepd.journal"));
    strcpy(witness, file_text("fepd.generation"));
    text_write("fepd.generation", "fepd-generation 99 0\n");  /* would refuse */
    strcpy(witness, "fepd-generation 99 0\n");

    how.fresh = 1;
    CHECK(state_open_here() == 0);
    CHECK_EQ(take_ic_of(0), 1);
    CHECK_EQ(state_rx_mark(&st_state, 0), 0);
    CHECK_EQ(st_state.generation, 1);
    state_release(&st_state);
    strcpy(name, name_with_prefix("state", "fepd.state.lost-"));
    CHECK(name[0] != '\0');
    CHECK_FILE(name, snap);
    strcpy(name, name_with_prefix("state", "fepd.journal.lost-"));
    CHECK(name[0] != '\0');
    CHECK_FILE(name, journal);
    strcpy(name, name_with_prefix(".", "fepd.generation.lost-"));
    CHECK(name[0] != '\0');
    CHECK_FILE(name, witness);
    CHECK_FILE("fepd.generation", "fepd-generation 1 0\n");

    how.fresh = 0;                          /* the new state is good */
    CHECK(state_open_here() == 0);
    CHECK_EQ(take_ic_of(0), 65537);
    state_release(&st_state);
    /* --fresh-state on a sound state is ignored: nothing goes back. */
    how.fresh = 1;
    CHECK(state_open_here() == 0);
    CHECK_EQ(take_ic_of(0), 2 * 65536 + 1);
    state_release(&st_state);
    text_write("fepd.generation", "fepd-generation 99 0\n");  /* refused */

    /* A name set aside earlier is never replaced, whatever the clock says. */
    now = time(NULL);
    for (i = 0; i < 5; i++) {
        time_t t = now + i;
        struct tm tm;
        char stamp[32], taken[64];

        gmtime_r(&t, &tm);
        strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
        snprintf(taken, sizeof taken, "state/fepd.state.lost-%s", stamp);
        text_write(taken, "set aside earlier\n");
    }
    how.fresh = 1;
    tree_take(&tree_before);
    err[0] = '\0';
    CHECK(state_open(&st_state, &state_cfg, &how, err, sizeof err) == -1);
    tree_take(&tree_after);
    CHECK(tree_same(&tree_before, &tree_after));
    CHECK(strstr(err, "/state/fepd.state: cannot set it aside as ") != NULL &&
          strstr(err, "/state/fepd.state.lost-") != NULL &&
          strstr(err, "exists") != NULL);
    if (strstr(err, "exists") == NULL)
        fprintf(stderr, "got '%s'\n", err);
    how.fresh = 0;
    end();
}

/* Read-only (--check) writes nothing, creates nothing, and loads what a
 * start would load. */
static void test_state_read_only(void)
{
    static const unsigned keys[] = { 1, 0 };

    begin("state-readonly");
    cfg_make(2, keys);
    how.read_only = 1;
    tree_take(&tree_before);
    CHECK(state_open_here() == 0);          /* a first start, checked */
    state_release(&st_state);
    tree_take(&tree_after);
    CHECK(tree_same(&tree_before, &tree_after));
    CHECK(!exists("state"));

    how.read_only = 0;
    CHECK(state_open_here() == 0);
    CHECK_EQ(take_ic_of(0), 1);
    state_rx_raise(&st_state, 0, 7);
    st_state.dcus[1].sessions_ok = 5;
    state_touch(&st_state, 1);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    state_release(&st_state);
    text_write("fepd.generation", "fepd-generation 0 0\n"); /* behind: a
                                               start would write it again */

    how.read_only = 1;
    tree_take(&tree_before);
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_rx_mark(&st_state, 0), 7);
    CHECK_EQ(st_state.dcus[1].sessions_ok, 5);
    CHECK_EQ(st_state.keys[0].tx_ic_next, 65537);
    state_release(&st_state);
    tree_take(&tree_after);
    CHECK(tree_same(&tree_before, &tree_after));
    CHECK_FILE("fepd.generation", "fepd-generation 0 0\n");

    /* With --fresh-state as well: nothing set aside. */
    how.fresh = 1;
    CHECK(state_open_here() == 0);
    state_release(&st_state);
    tree_take(&tree_after);
    CHECK(tree_same(&tree_before, &tree_after));
    how.fresh = 0;
    how.read_only = 0;
    end();
}

/* A version 1 state (a comment for header, no end line, a journal without
 * header) is read once, with every value, and written as version 2. */
static void test_state_version1(void)
{
    static const unsigned keys[] = { 1, 0 };
    static const char v1_head[] =
        "# fepd state, replaced atomically by fepd; do not edit while it runs."
        "\n# tx KCV RESERVED | rx DCU KCV LAST_IC | "
        "dcu DCU LAST_SUCCESS_S OK FAILED RECORDS\n";
    char body[512], want[512];

    begin("state-v1");
    cfg_make(2, keys);
    snprintf(body, sizeof body, "%stx %s 0000131073\nrx DCU00001 %s 42\n"
             "dcu DCU00002 1767225600 5 1 96\n", v1_head, kcv_example,
             kcv_example);
    state_dir_make();
    text_write("state/fepd.state", body);
    snprintf(body, sizeof body, "rx DCU00001 %s 50\n"
             "dcu DCU00002 1767225700 6 1 192\ndcu DCU00002 17", kcv_example);
    text_write("state/fepd.journal", body);
    CHECK(state_open_here() == 0);
    CHECK_EQ(take_ic_of(0), 131073);
    CHECK_EQ(state_rx_mark(&st_state, 0), 50);
    CHECK_EQ(st_state.dcus[1].last_success_s, 1767225700);
    CHECK_EQ(st_state.dcus[1].sessions_ok, 6);
    CHECK_EQ(st_state.dcus[1].records, 192);
    snprintf(want, sizeof want, "\nfepd-state 2 1\ntx %s 196609\n"
             "rx DCU00001 %s 50\ndcu DCU00002 1767225700 6 1 192\nend 3\n",
             kcv_example, kcv_example);
    CHECK(ends_with(state_text(), want));
    CHECK(strstr(text, "do not edit while it runs") == NULL);
    CHECK_FILE("state/fepd.journal", "fepd-journal 2 1\n");
    CHECK_FILE("fepd.generation", "fepd-generation 1 0\n");
    state_release(&st_state);
    CHECK(state_open_here() == 0);          /* now as version 2 */
    CHECK_EQ(take_ic_of(0), 196609);
    CHECK_EQ(state_rx_mark(&st_state, 0), 50);
    state_release(&st_state);
    test_remove_tree(path_of("state"));
    CHECK(unlink(path_of("fepd.generation")) == 0);

    /* Version 1 has no end line; a damaged line is refused all the same. */
    snprintf(body, sizeof body, "%stx %s 5\nend 1\n", v1_head, kcv_example);
    state_dir_make();
    text_write("state/fepd.state", body);
    text_write("state/fepd.journal", "");
    REFUSED("fepd.state:4: ", "end: only a version 2 snapshot has an end "
            "line", ADVICE);
    snprintf(body, sizeof body, "%stx %s 5\nrx DCU00001 zz 1\n", v1_head,
             kcv_example);
    text_write("state/fepd.state", body);
    REFUSED("fepd.state:4: ", "rx: KCV is not 16 hex digits", ADVICE);
    end();
}

/* marks_raised says a mark rose since the last save: state_rx_raise sets
 * it, a save that makes the mark durable clears it, a raise that does not
 * raise leaves it alone. */
static void test_state_marks_raised(void)
{
    static const unsigned keys[] = { 1, 0 };
    char line[160];

    begin("state-raised");
    cfg_make(2, keys);
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.marks_raised, 0);
    state_rx_raise(&st_state, 0, 5);
    CHECK_EQ(st_state.marks_raised, 1);
    CHECK_EQ(state_rx_mark(&st_state, 0), 5);
    CHECK_EQ(st_state.n_marks_changed, 1);
    fault("fsync:1:EIO");
    CHECK(state_save(&st_state, &state_cfg) == -1);
    fault("");
    CHECK_EQ(st_state.marks_raised, 1);     /* not durable yet */
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK_EQ(st_state.marks_raised, 0);
    CHECK_EQ(st_state.n_marks_changed, 0);
    snprintf(line, sizeof line, "%srx DCU00001 %s 5\n",
             journal_head(st_state.generation), kcv_example);
    CHECK_FILE("state/fepd.journal", line);

    state_rx_raise(&st_state, 0, 3);        /* lower: nothing */
    state_rx_raise(&st_state, 0, 5);        /* the same: nothing */
    state_rx_raise(&st_state, 1, 9);        /* unkeyed: nothing */
    CHECK_EQ(state_rx_mark(&st_state, 0), 5);
    CHECK_EQ(state_rx_mark(&st_state, 1), 0);
    CHECK_EQ(st_state.marks_raised, 0);
    CHECK_EQ(st_state.n_marks_changed, 0);
    CHECK_EQ(st_state.dirty, 0);
    state_release(&st_state);               /* a crash */
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_rx_mark(&st_state, 0), 5);
    state_release(&st_state);
    end();
}

/* ------------------------------------------------------------------------
 * The journal
 * ---------------------------------------------------------------------- */

#define BIG_DCUS 10000

/* What a restart must give back, per DCU. */
struct dcu_values {
    uint32_t rx_ic;
    int64_t last_success_s;
    uint64_t ok, failed, records;
};

static dcu_conf *big_dcus;
static unsigned *big_by_sid;
static struct dcu_values expected[BIG_DCUS];

/* n DCUs D0000000.. sharing key 1 (KCV kcv_example), with by_sid as
 * config_load builds it (the ids sort as their indices). */
static void big_cfg_make(unsigned n)
{
    unsigned i;

    free(big_dcus);
    free(big_by_sid);
    big_dcus = calloc(n, sizeof *big_dcus);
    big_by_sid = calloc(n, sizeof *big_by_sid);
    CHECK(big_dcus != NULL && big_by_sid != NULL && n <= BIG_DCUS);
    memset(&state_cfg, 0, sizeof state_cfg);
    memset(expected, 0, sizeof expected);
    snprintf(state_cfg.state_dir, sizeof state_cfg.state_dir, "%s/state", dir);
    snprintf(state_cfg.data_dir, sizeof state_cfg.data_dir, "%s", dir);
    for (i = 0; big_dcus && big_by_sid && i < n; i++) {
        char id[16];                    /* room for any unsigned: no truncation */
        snprintf(id, sizeof id, "D%07u", i % 10000000u);
        memcpy(big_dcus[i].id, id, sizeof big_dcus[i].id - 1);
        big_dcus[i].has_key = 1;
        key_make(1, big_dcus[i].key);
        big_by_sid[i] = i;
    }
    state_cfg.dcus = big_dcus;
    state_cfg.by_sid = big_by_sid;
    state_cfg.n_dcus = state_cfg.n_live = n;
    state_cfg.max_dcus = n;
}

static void big_cfg_free(void)
{
    free(big_dcus);
    free(big_by_sid);
    big_dcus = NULL;
    big_by_sid = NULL;
}

/* New values for DCU i, higher for every step, as a session would leave
 * them: the mark raised, the statistics touched. */
static void vary(unsigned i, unsigned step)
{
    dcu_state *d = &st_state.dcus[i];
    struct dcu_values *e = &expected[i];

    e->rx_ic = 1000 + 7 * i + step;
    state_rx_raise(&st_state, i, e->rx_ic);
    e->last_success_s = d->last_success_s = 1767225600 + (int64_t)i + step;
    e->ok = d->sessions_ok = i + step;
    e->failed = d->sessions_failed = step;
    e->records = d->records = 96u * i + step;
    state_touch(&st_state, i);
}

/* Every DCU of st_state holds the expected values. */
static int values_expected(void)
{
    unsigned i;

    for (i = 0; i < st_state.n_dcus; i++) {
        const dcu_state *d = &st_state.dcus[i];
        const struct dcu_values *e = &expected[i];
        uint32_t rx = state_rx_mark(&st_state, i);

        if (rx != e->rx_ic || d->last_success_s != e->last_success_s ||
            d->sessions_ok != e->ok || d->sessions_failed != e->failed ||
            d->records != e->records) {
            fprintf(stderr, "DCU %u: rx %u last %lld ok %llu failed %llu "
                    "records %llu, want %u %lld %llu %llu %llu\n", i,
                    (unsigned)rx, (long long)d->last_success_s,
                    (unsigned long long)d->sessions_ok,
                    (unsigned long long)d->sessions_failed,
                    (unsigned long long)d->records, (unsigned)e->rx_ic,
                    (long long)e->last_success_s, (unsigned long long)e->ok,
                    (unsigned long long)e->failed,
                    (unsigned long long)e->records);
            return 0;
        }
    }
    return 1;
}

/* A restart (nothing saved first, as after a crash) gives every value
 * back. */
static void restart_check(void)
{
    state_release(&st_state);
    CHECK(state_open_here() == 0);
    CHECK(values_expected());
}

/* The journal's lines are read after the snapshot: a dcu line replaces, an
 * rx line only raises; a DCU no longer configured loses its statistics.
 * The start folds them into the snapshot and starts the journal anew. */
static void test_state_journal_load(void)
{
    static const unsigned keys[] = { 1, 0 };
    char body[512], line[80];

    begin("state-jload");
    cfg_make(2, keys);
    snprintf(body, sizeof body, "tx %s 1000\nrx DCU00001 %s 5\n"
             "dcu DCU00002 1 2 3 4\n", kcv_example, kcv_example);
    snap_write(3, body);
    snprintf(body, sizeof body, "dcu DCU00002 10 20 30 40\n"
             "rx DCU00001 %s 9\n"
             "# a comment\n"
             "dcu DCU00009 1 1 1 1\n"
             "dcu DCU00002 11 21 31 41\n"
             "rx DCU00001 %s 7\n"
             "tx %s 2000\n"
             "dcu DCU00001 0 1 0 0\n", kcv_example, kcv_example, kcv_example);
    journal_write(3, body);
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_take_ic(&st_state, 0), 2000);
    CHECK_EQ(state_rx_mark(&st_state, 0), 9);
    CHECK_EQ(st_state.dcus[0].sessions_ok, 1);
    CHECK_EQ(st_state.dcus[1].last_success_s, 11);
    CHECK_EQ(st_state.dcus[1].sessions_ok, 21);
    CHECK_EQ(st_state.dcus[1].sessions_failed, 31);
    CHECK_EQ(st_state.dcus[1].records, 41);
    CHECK(journal_only_head());
    CHECK_EQ(st_state.generation, 4);
    snprintf(line, sizeof line, "\nrx DCU00001 %s 9\n", kcv_example);
    CHECK(strstr(state_text(), line) != NULL);
    CHECK(strstr(text, "\ndcu DCU00002 11 21 31 41\n") != NULL);
    CHECK(strstr(text, "\ndcu DCU00001 0 1 0 0\n") != NULL);
    CHECK(strstr(text, "DCU00009") == NULL);
    state_release(&st_state);
    CHECK(state_open_here() == 0);           /* the snapshot alone */
    CHECK_EQ(state_rx_mark(&st_state, 0), 9);
    CHECK_EQ(st_state.dcus[1].records, 41);
    state_release(&st_state);
    end();
}

/* A last line without '\n' is an append cut short: skipped, whatever it
 * holds.  A whole line that is malformed stops the start with the
 * journal's name and line, and both files are left as they were. */
static void test_state_journal_torn(void)
{
#define JHEAD "fepd-journal 2 3\n"
    static const unsigned keys[] = { 1, 0 };
    static const struct { const char *body; size_t len; } torn[] = {
        { JHEAD "dcu DCU00002 10 20 30 40\ndcu DCU00002 99 9", 0 },
        { JHEAD "dcu DCU00002 10 20 30 40\n\0\0\0\0\0\0",
          sizeof JHEAD "dcu DCU00002 10 20 30 40\n\0\0\0\0\0\0" - 1 },
        { JHEAD "dcu DCU00002 10 20 30 40\ndcu DCU00002 1 2 3 4 5 6 7 8", 0 },
    };
    static const struct {
        const char *body;
        size_t len;
        const char *where, *problem;
    } bad[] = {
        { JHEAD "dcu DCU00002 1 2 3\n", 0, "fepd.journal:2: ", "dcu:" },
        { JHEAD "#\n\nrx DCU00001 zz 1\n", 0, "fepd.journal:4: ", "rx:" },
        { JHEAD "dcu DCU00002 1 2 3 4\nbogus\n", 0, "fepd.journal:3: ",
          "unknown record" },
        { JHEAD "dcu DCU00002 1 2 3 4\n\0\n",
          sizeof JHEAD "dcu DCU00002 1 2 3 4\n\0\n" - 1, "fepd.journal:3: ",
          "NUL byte" },
        { JHEAD "dcu DCU00002 1 2 3 4\ndcu DCU00002 1 2 3 4 5 6 7\ndcu", 0,
          "fepd.journal:3: ", "too many fields" },
        { "dcu DCU00002 1 2 3 4\n", 0, "fepd.journal:1: ",
          "no header line (expected 'fepd-journal 2 GENERATION')" },
        { JHEAD "end 0\n", 0, "fepd.journal:2: ",
          "end: only a version 2 snapshot has an end line" },
        { JHEAD "rx DCU00001 0123456789abcdef 1\n", 0, "fepd.journal:2: ",
          "rx: a key with no tx line" },
        { "fepd-journal 9 3\n", 0, "fepd.journal:1: ", "format 9" },
    };
    char longline[400], snap[256];
    size_t i;

    begin("state-jtorn");
    cfg_make(2, keys);
    snprintf(snap, sizeof snap, "tx %s 1000\ndcu DCU00002 1 2 3 4\n",
             kcv_example);
    for (i = 0; i < sizeof torn / sizeof torn[0]; i++) {
        snap_write(3, snap);
        bytes_write("state/fepd.journal", torn[i].body,
                    torn[i].len ? torn[i].len : strlen(torn[i].body));
        CHECK(state_open_here() == 0);
        CHECK_EQ(st_state.dcus[1].last_success_s, 10);
        CHECK_EQ(st_state.dcus[1].records, 40);
        CHECK(journal_only_head());
        state_release(&st_state);
        test_remove_tree(path_of("state"));
        unlink(path_of("fepd.generation"));
    }
    /* Longer than any line, torn: skipped too; a torn header as well. */
    memset(longline, '#', sizeof longline - 1);
    longline[sizeof longline - 1] = '\0';
    snap_write(3, snap);
    journal_write(3, longline);
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.dcus[1].records, 4);
    state_release(&st_state);
    test_remove_tree(path_of("state"));
    unlink(path_of("fepd.generation"));
    snap_write(3, snap);
    text_write("state/fepd.journal", "fepd-jour");
    CHECK(state_open_here() == 0);
    CHECK_EQ(st_state.dcus[1].records, 4);
    state_release(&st_state);
    test_remove_tree(path_of("state"));
    unlink(path_of("fepd.generation"));

    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snap_write(3, snap);
        bytes_write("state/fepd.journal", bad[i].body,
                    bad[i].len ? bad[i].len : strlen(bad[i].body));
        REFUSED(bad[i].where, bad[i].problem, ADVICE);
        test_remove_tree(path_of("state"));
    }
    end();
#undef JHEAD
}

/* With 10,000 DCUs, a save after one DCU changed appends that DCU's two
 * lines and leaves the snapshot alone; restarts give every value back. */
static void test_state_journal_append_cost(void)
{
    char want_text[256];
    ino_t snap_ino;
    long before;
    unsigned i, step;
    int folded = 0;

    begin("state-jcost");
    big_cfg_make(BIG_DCUS);
    CHECK(state_open_here() == 0);
    for (step = 1; step < 5 && !folded; step++) {   /* past the bound: compacted */
        for (i = 0; i < BIG_DCUS; i++)
            vary(i, step);
        CHECK(state_save(&st_state, &state_cfg) == 0);
        folded = journal_only_head();
    }
    CHECK(folded);
    CHECK(file_size("state/fepd.state") > 10000L * 60);
    restart_check();
    snap_ino = file_ino("state/fepd.state");

    vary(4321, 10);
    CHECK_EQ(st_state.n_changed, 1);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    snprintf(want_text, sizeof want_text,
             "%srx D0004321 %s %u\ndcu D0004321 %lld %llu %llu %llu\n",
             journal_head(st_state.generation),
             kcv_example, (unsigned)expected[4321].rx_ic,
             (long long)expected[4321].last_success_s,
             (unsigned long long)expected[4321].ok,
             (unsigned long long)expected[4321].failed,
             (unsigned long long)expected[4321].records);
    CHECK_FILE("state/fepd.journal", want_text);
    CHECK_EQ(st_state.n_changed, 0);
    CHECK_EQ(st_state.dcus[4321].changed, 0);
    CHECK_EQ(st_state.dirty, 0);
    CHECK_EQ(st_state.marks_raised, 0);
    CHECK(file_ino("state/fepd.state") == snap_ino);   /* not rewritten */

    before = journal_size();
    for (i = 0; i < 10; i++)
        vary(i * 997, 11);
    vary(0, 12);                            /* twice before a save: once */
    CHECK_EQ(st_state.n_changed, 10);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK(journal_size() > before + 10 * 60 && journal_size() < before + 10 * 100);
    CHECK(file_ino("state/fepd.state") == snap_ino);
    /* Between saves no descriptor is held. */
    test_unit_check_ledger();
    restart_check();
    state_release(&st_state);
    big_cfg_free();
    end();
}

/* The journal is folded into the snapshot once it outgrows it, and by a
 * save with nothing marked (fepd's save at shutdown): the journal then
 * holds its header alone and the snapshot every value. */
static void test_state_journal_compact(void)
{
    char line[96];
    ino_t snap_ino;
    unsigned i, step;
    int folded = 0;

    begin("state-jcompact");
    big_cfg_make(2000);
    CHECK(state_open_here() == 0);
    for (i = 0; i < 10; i++)
        vary(i * 150, 1);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK(!journal_only_head());
    restart_check();                        /* snapshot + journal */
    CHECK(journal_only_head());             /* folded at the start */

    /* Every DCU changed, round after round (> 64 KiB of lines each): the
     * journal is folded before it is much larger than the snapshot. */
    for (step = 2; step < 6 && !folded; step++) {
        for (i = 0; i < 2000; i++)
            vary(i, step);
        CHECK(state_save(&st_state, &state_cfg) == 0);
        folded = journal_only_head();
    }
    CHECK(folded);
    snprintf(line, sizeof line, "\nrx D0001999 %s %u\n", kcv_example,
             (unsigned)expected[1999].rx_ic);
    CHECK(strstr(state_text(), line) != NULL);
    snprintf(line, sizeof line, "\ndcu D0000000 %lld %u %u %u\n",
             (long long)expected[0].last_success_s, step - 1, step - 1,
             step - 1);
    CHECK(strstr(text, line) != NULL);
    restart_check();

    for (i = 0; i < 3; i++)
        vary(i, 10);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK(!journal_only_head());
    CHECK(state_save(&st_state, &state_cfg) == 0);  /* nothing marked */
    CHECK(journal_only_head());
    snprintf(line, sizeof line, "\ndcu D0000002 %lld 12 10 202\n",
             (long long)expected[2].last_success_s);
    CHECK(strstr(state_text(), line) != NULL);
    snap_ino = file_ino("state/fepd.state");
    CHECK(state_save(&st_state, &state_cfg) == 0);  /* clean: no write */
    CHECK(file_ino("state/fepd.state") == snap_ino);
    restart_check();
    state_release(&st_state);
    big_cfg_free();
    end();
}

/* An IC block reserved between appends is a tx line appended to the
 * journal; the snapshot is left alone and nothing is lost. */
static void test_state_journal_reservation(void)
{
    char line[64];
    ino_t snap_ino;
    long before;
    uint32_t i;
    int ok = 1;

    begin("state-jreserve");
    big_cfg_make(100);
    CHECK(state_open_here() == 0);
    snap_ino = file_ino("state/fepd.state");
    for (i = 0; i < 100; i++)
        vary(i, 1);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    before = journal_size();
    CHECK(before > 0);
    for (i = 1; i <= IC_RESERVE_BLOCK + 1; i++)
        ok &= state_take_ic(&st_state, 0) == i;
    CHECK(ok);
    snprintf(line, sizeof line, "tx %s 131073\n", kcv_example);
    CHECK(ends_with(file_text("state/fepd.journal"), line));
    CHECK_EQ(journal_size(), before + (long)strlen(line));
    CHECK(file_ino("state/fepd.state") == snap_ino);
    vary(7, 2);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    for (i = 0; i < IC_RESERVE_BLOCK; i++)
        ok &= state_take_ic(&st_state, 0) != 0;
    CHECK(ok);
    CHECK_EQ(st_state.reservations, 2);
    CHECK(file_ino("state/fepd.state") == snap_ino);
    restart_check();                        /* a crash: no save */
    CHECK_EQ(state_take_ic(&st_state, 0), 3 * 65536 + 1);
    state_release(&st_state);
    big_cfg_free();
    end();
}

/* A crash after a compaction wrote the snapshot but before it started the
 * journal anew: the journal is of the older generation, its values are in
 * the snapshot.  Also a compaction that fails: the save still counts (the
 * values are in the journal), the journal stays, and the next save folds
 * it. */
static void test_state_journal_crash_in_compaction(void)
{
    static char journal[TEXT_SIZE];
    unsigned i, step;

    begin("state-jcrash");
    big_cfg_make(2000);
    CHECK(state_open_here() == 0);
    for (i = 0; i < 20; i++)
        vary(i, 1);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    for (i = 0; i < 20; i += 2)
        vary(i, 2);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    strcpy(journal, file_text("state/fepd.journal"));
    CHECK(state_save(&st_state, &state_cfg) == 0);  /* folds it */
    CHECK(journal_only_head());
    text_write("state/fepd.journal", journal);
    restart_check();

    /* Rounds of appends until one outgrows the bound: its compaction fails
     * (the snapshot's temporary file stays behind). */
    for (step = 3; step < 12 && !exists("state/fepd.state.tmp"); step++) {
        for (i = 0; i < 1000; i++)      /* what the slots change in a pass */
            vary(i, step);
        fault("rename:1:EIO");
        CHECK(state_save(&st_state, &state_cfg) == 0);
        fault("");
    }
    CHECK(exists("state/fepd.state.tmp"));
    CHECK_EQ(st_state.n_changed, 0);
    CHECK_EQ(st_state.dirty, 0);
    CHECK(journal_size() > 64 * 1024);
    strcpy(journal, file_text("state/fepd.journal"));
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK(journal_only_head());
    text_write("state/fepd.journal", journal);
    restart_check();
    state_release(&st_state);
    big_cfg_free();
    end();
}

/* A compaction whose snapshot rename may have happened (the directory's
 * fsync failed after it) is followed by a compaction, never by an append
 * to the journal of the older generation, which loading would ignore. */
static void test_state_compaction_uncertain(void)
{
    static const unsigned keys[] = { 1, 0 };

    begin("state-uncertain");
    cfg_make(2, keys);
    CHECK(state_open_here() == 0);
    st_state.dcus[1].sessions_ok = 3;
    st_state.dirty = 1;                     /* nothing marked: a compaction */
    fault("fsync:2:EIO");                   /* the directory's, after rename */
    CHECK(state_save(&st_state, &state_cfg) == -1);
    fault("");
    state_rx_raise(&st_state, 0, 11);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK_EQ(st_state.marks_raised, 0);
    state_release(&st_state);               /* a crash */
    CHECK(state_open_here() == 0);
    CHECK_EQ(state_rx_mark(&st_state, 0), 11);
    CHECK_EQ(st_state.dcus[1].sessions_ok, 3);
    state_release(&st_state);
    end();
}

/* An append that fails (the write, part of it, the fsync, the open) returns
 * -1, keeps the marks and leaves the journal as it was; the next save
 * writes it all. */
static void test_state_journal_append_failure(void)
{
    static const char *const faults[] = {
        "fwrite:1:ENOSPC", "fsync:1:EIO", "open:1:EMFILE", "fwrite:2:EIO",
        "fwrite:3:ENOSPC",
    };
    static char before[TEXT_SIZE];
    size_t f;
    unsigned i, n;

    begin("state-jfail");
    big_cfg_make(2000);
    CHECK(state_open_here() == 0);
    for (i = 0; i < 2000; i++)              /* the bound: the snapshot's size */
        vary(i, 1);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    for (i = 0; i < 5; i++)
        vary(i, 2);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    for (f = 0; f < sizeof faults / sizeof faults[0]; f++) {
        strcpy(before, file_text("state/fepd.journal"));
        n = f < 3 ? 3 : f == 3 ? 1500 : 2000; /* in 2 and 3 pieces */
        for (i = 0; i < n; i++)
            vary(i, 3 + (unsigned)f);
        fault(faults[f]);
        CHECK(state_save(&st_state, &state_cfg) == -1);
        fault("");
        CHECK_EQ(st_state.dirty, 1);
        CHECK_EQ(st_state.marks_raised, 1);
        /* The list holds what one pass can change; past that, the flags. */
        CHECK_EQ(st_state.n_changed, n < STATE_LIST_MAX ? n : STATE_LIST_MAX);
        CHECK_EQ(st_state.changed_rescan, n > STATE_LIST_MAX);
        CHECK_EQ(st_state.dcus[0].changed, 1);
        CHECK_EQ(st_state.dcus[n - 1].changed, 1);
        CHECK_FILE("state/fepd.journal", before);
        test_unit_check_ledger();
    }
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK_EQ(st_state.n_changed, 0);
    CHECK_EQ(st_state.dirty, 0);
    restart_check();
    state_release(&st_state);
    big_cfg_free();
    end();
}

/* A journal longer than fepd wrote (an append cut short whose cut-back
 * failed) is cut before the next append; one that is missing or shorter
 * (replaced, truncated) makes the save write the whole snapshot. */
static void test_state_journal_repair(void)
{
    static char before[TEXT_SIZE];
    unsigned i;

    begin("state-jrepair");
    big_cfg_make(50);
    CHECK(state_open_here() == 0);
    for (i = 0; i < 50; i++)
        vary(i, 1);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    strcpy(before, file_text("state/fepd.journal"));
    bytes_append("state/fepd.journal", "rx D00000");
    vary(3, 2);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK(strncmp(file_text("state/fepd.journal"), before, strlen(before)) == 0);
    CHECK(strncmp(text + strlen(before), "rx D0000003 ", 12) == 0);
    restart_check();

    vary(4, 3);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK(unlink(path_of("state/fepd.journal")) == 0);
    vary(5, 3);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK(journal_only_head());
    restart_check();

    vary(6, 4);
    vary(7, 4);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK(truncate(path_of("state/fepd.journal"), 20) == 0);
    vary(8, 4);
    CHECK(state_save(&st_state, &state_cfg) == 0);
    CHECK(journal_only_head());
    restart_check();
    state_release(&st_state);
    big_cfg_free();
    end();
}

void test_state_suite(void)
{
    test_run("state_first_start", test_state_first_start);
    test_run("state_restart", test_state_restart);
    test_run("state_block_boundary", test_state_block_boundary);
    test_run("state_shared_key", test_state_shared_key);
    test_run("state_rx_and_stats", test_state_rx_and_stats);
    test_run("state_load_liberal", test_state_load_liberal);
    test_run("state_corrupt", test_state_corrupt);
    test_run("state_save_failure", test_state_save_failure);
    test_run("state_open_save_failure", test_state_open_save_failure);
    test_run("state_exhausted", test_state_exhausted);
    test_run("state_no_keys", test_state_no_keys);
    test_run("state_key_comes_back", test_state_key_comes_back);
    test_run("state_dcu_readded", test_state_dcu_readded);
    test_run("state_bounded", test_state_bounded);
    test_run("state_missing", test_state_missing);
    test_run("state_journal_generation", test_state_journal_generation);
    test_run("state_witness_rollback", test_state_witness_rollback);
    test_run("state_witness_damaged", test_state_witness_damaged);
    test_run("state_not_regular", test_state_not_regular);
    test_run("state_fresh_state", test_state_fresh_state);
    test_run("state_read_only", test_state_read_only);
    test_run("state_version1", test_state_version1);
    test_run("state_marks_raised", test_state_marks_raised);
    test_run("state_journal_load", test_state_journal_load);
    test_run("state_journal_torn", test_state_journal_torn);
    test_run("state_journal_append_cost", test_state_journal_append_cost);
    test_run("state_journal_compact", test_state_journal_compact);
    test_run("state_journal_reservation", test_state_journal_reservation);
    test_run("state_journal_crash_in_compaction",
             test_state_journal_crash_in_compaction);
    test_run("state_compaction_uncertain", test_state_compaction_uncertain);
    test_run("state_journal_append_failure", test_state_journal_append_failure);
    test_run("state_journal_repair", test_state_journal_repair);
}
