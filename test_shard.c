/*
 * test_shard.c -- tests of fepd as N shards (DESIGN.md section 3) and of
 * the poll scheduler: the two hashes against known vectors, the shard
 * rules of the config file, --shard on the command line, resharding with
 * keyed DCUs pushing (no replay mark lost, no IV used twice, another
 * shard's DCU answered NACK UNKNOWN), the two new metrics, and the spread
 * and back-off of polls, read from fepd's log.
 *
 * Owns: one directory per test under test_tmpdir, removed at its end
 * (unless $FEP_TEST_KEEP is set), and the fepd and dcusim processes a test
 * starts, always reaped (test_wait kills after its deadline).  The harness
 * uses plain POSIX calls, not sys.c, as test_fep.c does.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fep.h"
#include "test.h"

#define FEPD_T "./fepd_t"
#define SIM "./dcusim"
#define KEY_HEX "000102030405060708090a0b0c0d0e0f"
#define ERR_SIZE 512
#define PATH_SIZE_TEST 320
#define LINE_SIZE 4096
#define START_MS 5000
#define STOP_MS 5000
#define RUN_MS 30000
#define TIMEOUTS "timeout_connect 1\ntimeout_frame 0.5\ntimeout_write 0.5\n" \
                 "timeout_idle 0.5\ntimeout_session 10\n"

/* ========================================================================
 * 1. The hashes
 * ====================================================================== */

/* FNV-1a 64 of the reference vectors (Fowler, Noll, Vo). */
static void test_shard_fnv_vectors(void)
{
    CHECK_EQ(fnv1a64("", 0), 0xcbf29ce484222325ULL);
    CHECK_EQ(fnv1a64("a", 1), 0xaf63dc4c8601ec8cULL);
    CHECK_EQ(fnv1a64("foobar", 6), 0x85944171f73967e8ULL);
}

/* Buckets computed once by an independent implementation of Lamping and
 * Veach's JumpConsistentHash (Python, double arithmetic as in the paper),
 * for N = 1, 2, 3, 10, 100, 1000, 4096 and 2^31 - 1. */
static const struct jump_vector {
    uint64_t key;
    uint32_t bucket[8];
} jump_vectors[] = {
    { 0x0000000000000000ULL, { 0, 0, 0, 0, 0, 0, 0, 0 } },
    { 0x0000000000000001ULL, { 0, 0, 0, 6, 55, 549, 2323, 262355607 } },
    { 0x0000000000000002ULL, { 0, 0, 0, 6, 62, 338, 3927, 736532115 } },
    { 0x00000000deadbeefULL, { 0, 1, 2, 5, 87, 285, 2238, 1452406526 } },
    { 0xcbf29ce484222325ULL, { 0, 1, 1, 1, 90, 266, 3422, 1857788335 } },
    { 0xffffffffffffffffULL, { 0, 1, 2, 9, 92, 313, 1921, 699554662 } },
    { 0x0123456789abcdefULL, { 0, 0, 0, 0, 57, 194, 1504, 1651575352 } },
};

static void test_shard_jump_vectors(void)
{
    static const uint32_t buckets[8] = { 1, 2, 3, 10, 100, 1000, 4096,
                                         2147483647u };
    size_t i, k;

    for (i = 0; i < sizeof jump_vectors / sizeof jump_vectors[0]; i++)
        for (k = 0; k < 8; k++)
            CHECK_EQ(jump_hash(jump_vectors[i].key, buckets[k]),
                     jump_vectors[i].bucket[k]);
    /* The same computation on DCU ids (Python as above). */
    CHECK_EQ(config_shard_of("DCU00003", 2), 1);
    CHECK_EQ(config_shard_of("DCU00008", 3), 2);
    CHECK_EQ(config_shard_of("DCU00100", 4), 3);
    CHECK_EQ(config_shard_of("DCU00007", 4), 0);
}

#define PROPERTY_KEYS 20000

/* Every bucket is below N, the buckets are even, and going from N to N+1
 * moves about 1/(N+1) of the keys, every one of them to the new bucket. */
static void test_shard_jump_properties(void)
{
    static uint32_t was[PROPERTY_KEYS];
    unsigned count[65];
    uint32_t n, k;

    for (k = 0; k < PROPERTY_KEYS; k++)
        was[k] = 0;
    for (n = 1; n < 64; n++) {
        unsigned moved = 0, wrong = 0, b;

        memset(count, 0, sizeof count);
        for (k = 0; k < PROPERTY_KEYS; k++) {
            char id[16];
            uint32_t now;

            snprintf(id, sizeof id, "DCU%05u", k);
            now = jump_hash(fnv1a64(id, strlen(id)), n + 1);
            CHECK(now < n + 1);
            if (now >= n + 1)
                return;
            count[now]++;
            if (now != was[k]) {
                moved++;
                wrong += now != n;
            }
            was[k] = now;
        }
        CHECK_EQ(wrong, 0);
        /* PROPERTY_KEYS / (n + 1) expected; 25 % either way is more than
         * six standard deviations even at n = 63. */
        CHECK(moved * 4 >= 3u * PROPERTY_KEYS / (n + 1));
        CHECK(moved * 4 <= 5u * PROPERTY_KEYS / (n + 1));
        for (b = 0; b <= n; b++) {
            CHECK(count[b] * 4 >= 3u * PROPERTY_KEYS / (n + 1));
            CHECK(count[b] * 4 <= 5u * PROPERTY_KEYS / (n + 1));
        }
    }
}

/* ========================================================================
 * 2. The config file
 * ====================================================================== */

/* A config file in a fresh directory. */
struct file {
    char dir[256];
    char path[PATH_SIZE_TEST];
};

static int file_write(struct file *f, const char *text)
{
    CHECK(test_tmpdir(f->dir, sizeof f->dir, "shardconf") == 0);
    snprintf(f->path, sizeof f->path, "%s/fepd.conf", f->dir);
    return test_write_file(f->path, text);
}

static void file_remove(struct file *f)
{
    test_remove_tree(f->dir);
}

/* 40 keyed DCUs behind every directive {shard} goes into. */
static void sharded_text(char *out, size_t cap, const char *head)
{
    size_t n = (size_t)snprintf(out, cap, "%s", head);
    unsigned i;

    for (i = 1; i <= 40 && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n,
                              "dcu DCU%05u - key=%032x\n", i, i);
}

static const char sharded_head[] =
    "fep_id F{shard}\n"
    "listen 127.0.0.1:7100\n"
    "metrics [::1]:9100\n"
    "data_dir d{shard}/x{shard}\n"
    "state_dir s{shard}\n";

static unsigned addr_port(const sys_addr *a)
{
    return a->port;
}

/* Three shards: {shard} and the ports are each shard's, the DCUs split
 * between them, and each shard knows the others' DCUs by shard. */
static void test_shard_config_split(void)
{
    static char text[8192];
    char err[ERR_SIZE], want[64];
    unsigned seen[41] = { 0 }, shard, i, total = 0;
    struct file f;

    sharded_text(text, sizeof text, sharded_head);
    CHECK(file_write(&f, text) == 0);
    for (shard = 0; shard < 3; shard++) {
        fep_config cfg;

        if (config_load_shard(f.path, shard, 3, &cfg, err, sizeof err) != 0) {
            fprintf(stderr, "%s\n", err);
            CHECK(0);
            continue;
        }
        snprintf(want, sizeof want, "F%u", shard);
        CHECK(strcmp(cfg.fep_id, want) == 0);
        snprintf(want, sizeof want, "d%u/x%u", shard, shard);
        CHECK(strcmp(cfg.data_dir, want) == 0);
        snprintf(want, sizeof want, "s%u", shard);
        CHECK(strcmp(cfg.state_dir, want) == 0);
        CHECK(strcmp(cfg.state_dir_pattern, "s{shard}") == 0);
        CHECK_EQ(addr_port(&cfg.listen), 7100 + shard);
        CHECK_EQ(addr_port(&cfg.metrics), 9100 + shard);
        CHECK_EQ(cfg.shard, shard);
        CHECK_EQ(cfg.shards, 3);
        CHECK_EQ(cfg.n_dcus + cfg.n_other, 40);
        /* The state is sized for the shard's own DCUs and the spare; the
         * config's table holds the whole file, to read it again. */
        CHECK_EQ(cfg.max_dcus, cfg.n_dcus + DCUS_SPARE);
        CHECK(cfg.dcus_cap >= 40);
        total += cfg.n_dcus;
        for (i = 0; i < cfg.n_dcus; i++) {
            unsigned n = (unsigned)atoi(cfg.dcus[i].id + 3);
            CHECK_EQ(config_shard_of(cfg.dcus[i].id, 3), shard);
            uint8_t sid[FRAME_ID_SIZE];

            frame_id_set(sid, cfg.dcus[i].id);
            CHECK_EQ(config_find_dcu(&cfg, sid), i);
            CHECK_EQ(config_other_shard(&cfg, sid), -1);
            if (n >= 1 && n <= 40)
                seen[n]++;
            if (i > 0)              /* file order kept */
                CHECK(strcmp(cfg.dcus[i - 1].id, cfg.dcus[i].id) < 0);
        }
        for (i = 1; i <= 40; i++) {
            char id[16];
            uint8_t sid[FRAME_ID_SIZE];
            unsigned owner;

            snprintf(id, sizeof id, "DCU%05u", i);
            frame_id_set(sid, id);
            owner = config_shard_of(id, 3);
            CHECK_EQ(config_other_shard(&cfg, sid),
                     owner == shard ? -1 : (int)owner);
            CHECK_EQ(config_find_dcu(&cfg, sid) >= 0, owner == shard);
        }
        {
            uint8_t sid[FRAME_ID_SIZE];
            frame_id_set(sid, "DCU00041");
            CHECK_EQ(config_other_shard(&cfg, sid), -1);
            CHECK_EQ(config_find_dcu(&cfg, sid), -1);
        }
        config_release(&cfg);
    }
    CHECK_EQ(total, 40);
    for (i = 1; i <= 40; i++)
        CHECK_EQ(seen[i], 1);
    file_remove(&f);
}

/* Not sharded: {shard} is 0, the ports are the file's, every DCU stays;
 * a shard of one owns them all too. */
static void test_shard_config_unsharded(void)
{
    static char text[8192];
    char err[ERR_SIZE];
    fep_config cfg;
    struct file f;

    sharded_text(text, sizeof text, sharded_head);
    CHECK(file_write(&f, text) == 0);
    if (config_load(f.path, &cfg, err, sizeof err) == 0) {
        CHECK(strcmp(cfg.fep_id, "F0") == 0);
        CHECK(strcmp(cfg.data_dir, "d0/x0") == 0);
        CHECK(strcmp(cfg.state_dir, "s0") == 0);
        CHECK_EQ(addr_port(&cfg.listen), 7100);
        CHECK_EQ(cfg.n_dcus, 40);
        CHECK_EQ(cfg.n_other, 0);
        CHECK_EQ(cfg.shards, 1);
        config_release(&cfg);
    } else {
        CHECK(0);
    }
    /* N = 1 asks nothing of the directories. */
    CHECK(test_write_file(f.path, "fep_id FEP1\ndata_dir d\nstate_dir s\n"
                                  "dcu D1 - key=000102030405060708090a0b0c0d0e0f\n") == 0);
    if (config_load_shard(f.path, 0, 1, &cfg, err, sizeof err) == 0) {
        CHECK_EQ(cfg.n_dcus, 1);
        CHECK_EQ(cfg.state_dir_pattern[0], '\0');
        config_release(&cfg);
    } else {
        CHECK(0);
    }
    file_remove(&f);
}

/* text loaded as shard/shards must fail with "FILE:LINE: " (line 0: no
 * line, "FILE: ") and contain part. */
static void config_refused(const char *text, unsigned shard, unsigned shards,
                           unsigned line, const char *part)
{
    char err[ERR_SIZE], want[PATH_SIZE_TEST + 32];
    fep_config cfg;
    struct file f;

    CHECK(file_write(&f, text) == 0);
    if (config_load_shard(f.path, shard, shards, &cfg, err, sizeof err) == 0) {
        CHECK(!"a config with an error was accepted");
        fprintf(stderr, "  accepted: %s", text);
        config_release(&cfg);
        file_remove(&f);
        return;
    }
    if (line)
        snprintf(want, sizeof want, "%s:%u: ", f.path, line);
    else
        snprintf(want, sizeof want, "%s: ", f.path);
    CHECK(strncmp(err, want, strlen(want)) == 0);
    CHECK(strstr(err, part) != NULL);
    if (strncmp(err, want, strlen(want)) != 0 || !strstr(err, part))
        fprintf(stderr, "  got: %s\n  want: %s...%s\n", err, want, part);
    file_remove(&f);
}

static void config_accepted(const char *text, unsigned shard, unsigned shards)
{
    char err[ERR_SIZE];
    fep_config cfg;
    struct file f;

    CHECK(file_write(&f, text) == 0);
    if (config_load_shard(f.path, shard, shards, &cfg, err, sizeof err) != 0) {
        fprintf(stderr, "  refused: %s\n", err);
        CHECK(0);
    } else {
        config_release(&cfg);
    }
    file_remove(&f);
}

#define KEYED "dcu DCU00001 - key=000102030405060708090a0b0c0d0e0f\n"
#define PLAIN "dcu DCU00001 - key=-\n"

static void test_shard_config_errors(void)
{
    /* What N shards would share. */
    config_refused("fep_id F{shard}\ndata_dir d\nstate_dir s{shard}\n" KEYED,
                   0, 2, 2, "data_dir: must contain {shard}");
    config_refused("fep_id F{shard}\ndata_dir d{shard}\nstate_dir s\n" KEYED,
                   1, 2, 3, "state_dir: must contain {shard}");
    config_refused("fep_id F{shard}\nstate_dir s{shard}\n" KEYED, 0, 2, 0,
                   "data_dir: not given");
    config_refused("fep_id F{shard}\ndata_dir d{shard}\n" KEYED, 0, 2, 0,
                   "state_dir: not given");
    config_refused("data_dir d{shard}\nstate_dir s{shard}\n\nfep_id FEP1\n"
                   "dcu DCU00002 - key=-\n" KEYED, 0, 2, 4,
                   "fep_id: must contain {shard}");
    config_refused("data_dir d{shard}\nstate_dir s{shard}\n" KEYED, 0, 2, 0,
                   "fep_id: not given");
    /* Without keyed DCUs the SID may be shared: no IV to collide. */
    config_accepted("fep_id FEP1\ndata_dir d{shard}\nstate_dir s{shard}\n"
                    PLAIN, 1, 2);
    /* fep_id is 1..8 characters after {shard} is replaced. */
    config_accepted("fep_id FEPABC{shard}\ndata_dir d{shard}\n"
                    "state_dir s{shard}\n" KEYED, 12, 13);
    config_refused("fep_id FEPABCD{shard}\ndata_dir d{shard}\n"
                   "state_dir s{shard}\n" KEYED, 12, 13, 1,
                   "got 'FEPABCD12' ({shard} is 12)");
    /* A fep_id equal to a DCU's id, whichever shard the DCU is in. */
    config_refused("fep_id D{shard}\ndata_dir d{shard}\nstate_dir s{shard}\n"
                   "dcu D0 - key=-\ndcu D1 - key=-\n", 1, 2, 5,
                   "the same id as fep_id");
    /* Ports: the file's plus I, at most 65535. */
    config_accepted("listen 127.0.0.1:65534\nmetrics 127.0.0.1:65533\n"
                    "data_dir d{shard}\nstate_dir s{shard}\n" PLAIN, 1, 2);
    config_refused("data_dir d{shard}\nstate_dir s{shard}\n"
                   "listen 127.0.0.1:65535\n" PLAIN, 1, 2, 3,
                   "listen: the port plus the shard number (1)");
    config_refused("data_dir d{shard}\nstate_dir s{shard}\n"
                   "metrics 127.0.0.1:65534\n" PLAIN, 2, 3, 3,
                   "metrics: the port plus the shard number (2)");
    /* Errors anywhere in the file, in any shard's DCUs. */
    config_refused("data_dir d{shard}\nstate_dir s{shard}\n"
                   "dcu DCU00003 - key=-\ndcu DCU00001 - key=-\n"
                   "dcu DCU00003 - key=-\n", 0, 2, 5, "duplicate id");
    config_refused("data_dir d{shard}\nstate_dir s{shard}\n"
                   "dcu DCU00003 - key=-\ndcu DCU00001 - key=zz\n", 1, 2, 4,
                   "key must be");
}

/* A shard that owns no DCU is a valid shard. */
static void test_shard_config_empty_shard(void)
{
    char err[ERR_SIZE];
    fep_config cfg;
    struct file f;
    unsigned shard, own = 0;

    CHECK(file_write(&f, "data_dir d{shard}\nstate_dir s{shard}\n" PLAIN) == 0);
    for (shard = 0; shard < 4; shard++) {
        if (config_load_shard(f.path, shard, 4, &cfg, err, sizeof err) != 0) {
            CHECK(0);
            continue;
        }
        own += cfg.n_dcus;
        CHECK_EQ(cfg.n_dcus + cfg.n_other, 1);
        CHECK_EQ(cfg.n_dcus, config_shard_of("DCU00001", 4) == shard);
        config_release(&cfg);
    }
    CHECK_EQ(own, 1);
    file_remove(&f);
}

/* fep_dcus_configured and fep_dcus_capacity. */
static void test_shard_metrics(void)
{
    static char text[16384];
    fepd *d = calloc(1, sizeof *d);
    uint32_t cursor = 0;
    size_t len;

    CHECK(d != NULL);
    if (!d)
        return;
    d->cfg.dcus = calloc(3, sizeof *d->cfg.dcus);
    d->cfg.by_sid = calloc(3, sizeof *d->cfg.by_sid);
    d->state.dcus = calloc(3, sizeof *d->state.dcus);
    if (d->cfg.dcus && d->cfg.by_sid && d->state.dcus) {
        strcpy(d->cfg.dcus[0].id, "A");
        strcpy(d->cfg.dcus[1].id, "B");
        strcpy(d->cfg.dcus[2].id, "C");
        d->cfg.n_dcus = d->cfg.n_live = d->state.n_dcus = 3;
        d->cfg.by_sid[1] = 1;
        d->cfg.by_sid[2] = 2;
        d->cfg.max_dcus = d->cfg.dcus_cap = 1027;
        len = metrics_render(d, &cursor, text, sizeof text - 1);
        text[len] = '\0';
        CHECK(strstr(text, "# TYPE fep_dcus_configured gauge\n") != NULL);
        CHECK(strstr(text, "\nfep_dcus_configured 3\n") != NULL);
        CHECK(strstr(text, "# TYPE fep_dcus_capacity gauge\n") != NULL);
        CHECK(strstr(text, "\nfep_dcus_capacity 1027\n") != NULL);
    }
    free(d->cfg.dcus);
    free(d->cfg.by_sid);
    free(d->state.dcus);
    free(d);
}

/* ========================================================================
 * 3. Processes: fepd with --shard, dcusim
 * ====================================================================== */

struct world {
    char dir[256];
    char conf[PATH_SIZE_TEST];
    char log[PATH_SIZE_TEST];           /* the last process's log */
};

static void world_init(struct world *w, const char *tag)
{
    memset(w, 0, sizeof *w);
    CHECK(test_tmpdir(w->dir, sizeof w->dir, tag) == 0);
    snprintf(w->conf, sizeof w->conf, "%s/fepd.conf", w->dir);
}

static void world_end(struct world *w)
{
    if (!getenv("FEP_TEST_KEEP"))
        test_remove_tree(w->dir);
}

/* fepd_t -c conf with up to four more arguments, its output in log. */
static pid_t fep_spawn(const struct world *w, const char *log, const char *a1,
                       const char *a2, const char *a3)
{
    const char *argv[8];
    int n = 0;

    argv[n++] = FEPD_T;
    argv[n++] = "-c";
    argv[n++] = w->conf;
    if (a1)
        argv[n++] = a1;
    if (a2)
        argv[n++] = a2;
    if (a3)
        argv[n++] = a3;
    argv[n] = NULL;
    return test_spawn(argv, log);
}

/* What every fepd_t prints at a normal exit: nothing allocated after
 * start-up, every slot and descriptor given back. */
static void check_clean_exit(const char *log)
{
    char line[LINE_SIZE];

    CHECK(test_log_last_line(log, "allocations after start-up: 0", line,
                             sizeof line) == 0);
    CHECK(test_log_last_line(log, "ledger: slots", line, sizeof line) == 0);
    CHECK(test_kv_get(line, "acquired") >= 0);
    CHECK_EQ(test_kv_get(line, "acquired"), test_kv_get(line, "released"));
    CHECK_EQ(test_kv_get(line, "opened"), test_kv_get(line, "closed"));
}

static void test_shard_cli(void)
{
    static const char *const bad[] = { "", "1", "1/", "/2", "2/2", "3/2",
        "0/0", "0/4097", "a/b", "-1/2", "1/2/3", " 1/2", "1 /2", "0x1/2",
        "00000001/2", "1/99999999999999999999" };
    char log[PATH_SIZE_TEST], needle[PATH_SIZE_TEST + 64], line[LINE_SIZE];
    char text[1024];
    struct world w;
    unsigned i, shard, total = 0;
    pid_t pid;

    world_init(&w, "shardcli");
    snprintf(log, sizeof log, "%s/out.log", w.dir);
    /* Directories inside the test's own: --check may create them. */
    snprintf(text, sizeof text, "fep_id F{shard}\ndata_dir %s/d{shard}\n"
             "state_dir %s/s{shard}\n"
             "dcu DCU00001 - key=-\ndcu DCU00002 - key=-\n"
             "dcu DCU00003 - key=-\ndcu DCU00008 - key=-\n"
             "dcu DCU00100 - key=-\n", w.dir, w.dir);
    CHECK(test_write_file(w.conf, text) == 0);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pid = fep_spawn(&w, log, "--check", "--shard", bad[i]);
        CHECK_EQ(test_wait(pid, RUN_MS), 2);
        CHECK(snprintf(needle, sizeof needle, "--shard '%s': expected I/N",
                       bad[i]) < (int)sizeof needle);
        CHECK_EQ(test_log_count(log, needle), 1);
    }
    /* --shard needs its value. */
    pid = fep_spawn(&w, log, "--check", "--shard", NULL);
    CHECK_EQ(test_wait(pid, RUN_MS), 2);
    /* --check with --shard: the shard's count, the file's total. */
    for (shard = 0; shard < 4; shard++) {
        char arg[32];
        long long owned;

        snprintf(arg, sizeof arg, "%u/4", shard);
        pid = fep_spawn(&w, log, "--check", "--shard", arg);
        CHECK_EQ(test_wait(pid, RUN_MS), 0);
        snprintf(needle, sizeof needle, ": ok (5 DCUs, shard %u/4: ", shard);
        CHECK(test_log_last_line(log, needle, line, sizeof line) == 0);
        owned = strtoll(strstr(line, needle) ? strstr(line, needle) +
                        strlen(needle) : "-1", NULL, 10);
        CHECK(owned >= 0);
        total += (unsigned)owned;
    }
    CHECK_EQ(total, 5);
    pid = fep_spawn(&w, log, "--check", "--shard", "4095/4096");
    CHECK_EQ(test_wait(pid, RUN_MS), 0);
    CHECK_EQ(test_log_count(log, "shard 4095/4096: "), 1);
    /* The shard rules apply on the command line as in the file. */
    snprintf(text, sizeof text, "fep_id F{shard}\ndata_dir %s/d\n"
             "state_dir %s/s{shard}\ndcu DCU00001 - key=-\n", w.dir, w.dir);
    CHECK(test_write_file(w.conf, text) == 0);
    pid = fep_spawn(&w, log, "--check", "--shard", "1/2");
    CHECK_EQ(test_wait(pid, RUN_MS), 2);
    snprintf(needle, sizeof needle, "%s:2: data_dir: must contain", w.conf);
    CHECK_EQ(test_log_count(log, needle), 1);
    world_end(&w);
}

/* ------------------------------------------------------------------------
 * Resharding
 * ---------------------------------------------------------------------- */

#define RESHARD_DCUS 12
#define SHARDS_MAX_TEST 3

/* A port p such that p .. p + n - 1 are all free a moment ago. */
static int ports_free(int n)
{
    int tries, k;

    for (tries = 0; tries < 50; tries++) {
        int p = test_free_port(), ok = p > 0 && p + n <= 65535;

        for (k = 1; ok && k < n; k++) {
            struct sockaddr_in a;
            int fd = socket(AF_INET, SOCK_STREAM, 0);

            memset(&a, 0, sizeof a);
            a.sin_family = AF_INET;
            a.sin_port = htons((uint16_t)(p + k));
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
            if (fd >= 0)
                close(fd);
        }
        if (ok)
            return p;
    }
    return -1;
}

struct iv {
    char sid[FRAME_ID_SIZE + 1];
    unsigned dcu;
    uint32_t ic;
};

struct fleet {
    struct world w;
    int base_port;
    unsigned n;                         /* shards running */
    pid_t pid[SHARDS_MAX_TEST];
    char log[SHARDS_MAX_TEST][PATH_SIZE_TEST];
    gcm_key key[RESHARD_DCUS + 1];
    struct iv ivs[1024];                /* every protected frame fepd sent */
    unsigned n_ivs;
};

static void dcu_id(unsigned i, char id[16])
{
    snprintf(id, 16, "DCU%05u", i);
}

static void fleet_config(struct fleet *f)
{
    char text[4096];
    size_t n;
    unsigned i;

    n = (size_t)snprintf(text, sizeof text,
                         "fep_id F{shard}\nlisten 127.0.0.1:%d\n"
                         "data_dir %s/data{shard}\nstate_dir %s/state{shard}\n"
                         TIMEOUTS, f->base_port, f->w.dir, f->w.dir);
    for (i = 1; i <= RESHARD_DCUS; i++) {
        uint8_t key[KEY_SIZE];
        unsigned k;

        test_unhex(KEY_HEX, key, sizeof key);
        key[15] ^= (uint8_t)i;
        gcm_init(&f->key[i], key);
        n += (size_t)snprintf(text + n, sizeof text - n, "dcu DCU%05u - key=", i);
        for (k = 0; k < KEY_SIZE; k++)
            n += (size_t)snprintf(text + n, sizeof text - n, "%02x", key[k]);
        n += (size_t)snprintf(text + n, sizeof text - n, "\n");
    }
    CHECK(n < sizeof text);
    CHECK(test_write_file(f->w.conf, text) == 0);
}

/* Starts shards 0 .. n-1 of n at once, then waits until each serves. */
static int fleet_start(struct fleet *f, unsigned n)
{
    unsigned i;
    int ok = 1;

    f->n = n;
    for (i = 0; i < n; i++) {
        char arg[32];

        snprintf(arg, sizeof arg, "%u/%u", i, n);
        snprintf(f->log[i], sizeof f->log[i], "%s/fepd-%u-of-%u.log", f->w.dir,
                 i, n);
        f->pid[i] = fep_spawn(&f->w, f->log[i], "--shard", arg, NULL);
        CHECK(f->pid[i] > 0);
    }
    for (i = 0; i < n; i++)
        if (test_wait_log(f->log[i], "static memory", 1, START_MS) != 0 ||
            test_wait_port(f->base_port + (int)i, START_MS) != 0)
            ok = 0;
    CHECK(ok);
    return ok ? 0 : -1;
}

static void fleet_stop(struct fleet *f)
{
    unsigned i;

    for (i = 0; i < f->n; i++)
        if (f->pid[i] > 0)
            kill(f->pid[i], SIGTERM);
    for (i = 0; i < f->n; i++) {
        if (f->pid[i] <= 0)
            continue;
        CHECK_EQ(test_wait(f->pid[i], STOP_MS), 0);
        f->pid[i] = -1;
        check_clean_exit(f->log[i]);
    }
    f->n = 0;
}

/* DCU i pushes one K packet under its key with IC ic to shard `to`: the
 * answer (CMD_ACK, NACK(code), -1).  A protected answer's (SID, IC) is
 * kept, to check that no IV is used twice. */
static int fleet_push(struct fleet *f, unsigned i, unsigned to, uint32_t ic)
{
    char id[16], fep[16];
    frame hdr;
    int fd = raw_connect(f->base_port + (int)to), rc;

    CHECK(fd >= 0);
    if (fd < 0)
        return -1;
    dcu_id(i, id);
    snprintf(fep, sizeof fep, "F%u", to);
    rc = raw_send(fd, id, fep, CTL_DIR_DCU | CTL_LAST, CMD_LP_RSP,
                  (uint16_t)(ic & 0xFFFF), 0, &f->key[i], ic);
    CHECK_EQ(rc, 0);
    if (rc == 0)
        rc = raw_answer(fd, &f->key[i], &hdr);
    close(fd);
    if (rc >= 0 && (hdr.ctl & CTL_SEC) && f->n_ivs < 1024) {
        struct iv *v = &f->ivs[f->n_ivs++];
        frame_id_str(hdr.sid, v->sid);
        v->dcu = i;
        v->ic = get_u32be(hdr.data);
    }
    return rc;
}

/* A push from DCU i to a shard that does not own it: NACK UNKNOWN, logged
 * with the shard it belongs to. */
static void push_to_other(struct fleet *f, unsigned i)
{
    char id[16], needle[96];
    unsigned owner, to;

    dcu_id(i, id);
    owner = config_shard_of(id, f->n);
    to = (owner + 1) % f->n;
    CHECK_EQ(fleet_push(f, i, to, 1), NACK(FEP_ERR_UNKNOWN));
    snprintf(needle, sizeof needle, "push %s: NACK unknown (DCU of shard %u "
             "of %u)", id, owner, f->n);
    CHECK(test_wait_log(f->log[to], needle, 1, START_MS) == 0);
}

/* Every DCU pushes new_ic to its owner (ACK) after its owner refused
 * each of old[0..n_old) as replays. */
static void fleet_round(struct fleet *f, const uint32_t *old, unsigned n_old,
                        uint32_t new_ic)
{
    unsigned i, k;

    for (i = 1; i <= RESHARD_DCUS; i++) {
        char id[16];
        unsigned owner;

        dcu_id(i, id);
        owner = config_shard_of(id, f->n);
        for (k = 0; k < n_old; k++)
            CHECK_EQ(fleet_push(f, i, owner, old[k] + i),
                     NACK(FEP_ERR_REPLAY));
        CHECK_EQ(fleet_push(f, i, owner, new_ic + i), CMD_ACK);
    }
}

/* DCUs whose shard differs between a and b shards. */
static unsigned moved(unsigned a, unsigned b)
{
    unsigned i, n = 0;

    for (i = 1; i <= RESHARD_DCUS; i++) {
        char id[16];
        dcu_id(i, id);
        n += config_shard_of(id, a) != config_shard_of(id, b);
    }
    return n;
}

static int iv_cmp(const void *a, const void *b)
{
    const struct iv *x = a, *y = b;
    int c = strcmp(x->sid, y->sid);

    if (c == 0)
        c = (x->dcu > y->dcu) - (x->dcu < y->dcu);
    if (c == 0)
        c = (x->ic > y->ic) - (x->ic < y->ic);
    return c;
}

/*
 * Keyed DCUs push to 2 shards, then 3, then 2 again.  After each change,
 * every DCU's earlier frames are refused as replays by whichever shard owns
 * it now, new ones are stored, a push to a shard that does not own the DCU
 * is NACK UNKNOWN naming the owner, and no (key, SID, IC) of what the
 * shards sent repeats.
 */
static void test_shard_reshard(void)
{
    static struct fleet f;
    static const uint32_t first[] = { 1000 }, both[] = { 1000, 2000 };
    unsigned i;
    int fd;

    memset(&f, 0, sizeof f);
    world_init(&f.w, "reshard");
    f.base_port = ports_free(SHARDS_MAX_TEST);
    CHECK(f.base_port > 0);
    CHECK(moved(2, 3) > 0);
    CHECK(moved(3, 2) > 0);
    fleet_config(&f);
    if (f.base_port > 0 && fleet_start(&f, 2) == 0) {
        fleet_round(&f, NULL, 0, 1000);
        push_to_other(&f, 8);
        /* A SID in no shard is unknown as before, without a shard. */
        fd = raw_connect(f.base_port);
        CHECK(raw_send(fd, "NOSUCH01", "F0", CTL_DIR_DCU | CTL_LAST,
                       CMD_LP_RSP, 1, 0, NULL, 0) == 0);
        CHECK_EQ(raw_answer(fd, NULL, NULL), NACK(FEP_ERR_UNKNOWN));
        close(fd);
        CHECK(test_wait_log(f.log[0], "push NOSUCH01: NACK unknown", 1,
                            START_MS) == 0);
        CHECK_EQ(test_log_count(f.log[0], "NOSUCH01: NACK unknown (DCU of"), 0);
    }
    fleet_stop(&f);
    if (fleet_start(&f, 3) == 0) {
        fleet_round(&f, first, 1, 2000);
        push_to_other(&f, 3);
        push_to_other(&f, 8);
        /* The new shard took its DCUs' marks from the old ones. */
        CHECK_EQ(test_log_count(f.log[2], "directories read: 0 of"), 0);
        CHECK_EQ(test_log_count(f.log[2], "other shard state directories "
                                "read: "), 1);
    }
    fleet_stop(&f);
    if (fleet_start(&f, 2) == 0) {
        fleet_round(&f, both, 2, 3000);
        push_to_other(&f, 1);
    }
    fleet_stop(&f);
    /* Every frame a shard protected used a (key, IV) pair of its own: the
     * IV is the shard's SID and the IC. */
    CHECK(f.n_ivs >= 3 * RESHARD_DCUS * 2);
    qsort(f.ivs, f.n_ivs, sizeof f.ivs[0], iv_cmp);
    for (i = 1; i < f.n_ivs; i++)
        CHECK(iv_cmp(&f.ivs[i - 1], &f.ivs[i]) != 0);
    for (i = 0; i < f.n_ivs; i++)
        CHECK(f.ivs[i].sid[0] == 'F' && f.ivs[i].ic > 0);
    for (i = 0; i < SHARDS_MAX_TEST; i++)
        if (f.pid[i] > 0) {
            kill(f.pid[i], SIGKILL);
            test_wait(f.pid[i], STOP_MS);
        }
    world_end(&f.w);
}

/* Shard 0 of 2 alone (extra: NULL or "--fresh-state"): its exit status
 * when it does not start, 0 once it serves. */
static int shard0_start(struct fleet *f, const char *extra)
{
    int64_t deadline;
    int status;

    f->n = 1;
    snprintf(f->log[0], sizeof f->log[0], "%s/fepd-0.log", f->w.dir);
    unlink(f->log[0]);
    f->pid[0] = fep_spawn(&f->w, f->log[0], "--shard", "0/2", extra);
    /* Up, or refused: a refusal exits at once, so there is no need to wait
     * out the start-up bound for the log line that never comes. */
    for (deadline = sys_now_ms() + START_MS; sys_now_ms() < deadline;) {
        if (test_log_count(f->log[0], "static memory") > 0)
            return test_wait_port(f->base_port, START_MS) == 0 ? 0 : -1;
        if (waitpid(f->pid[0], &status, WNOHANG) == f->pid[0]) {
            f->n = 0;
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        }
        test_sleep_ms(10);
    }
    f->n = 0;
    return test_wait(f->pid[0], STOP_MS);
}

/* The check value state.c names DCU i's key by. */
static void kcv_hex(unsigned i, char out[2 * STATE_KCV_SIZE + 1])
{
    static const uint8_t zero[16];
    uint8_t key[KEY_SIZE], block[16];
    aes128 aes;
    unsigned k;

    test_unhex(KEY_HEX, key, sizeof key);
    key[15] ^= (uint8_t)i;
    aes128_init(&aes, key);
    aes128_encrypt(&aes, zero, block);
    for (k = 0; k < STATE_KCV_SIZE; k++)
        snprintf(out + 2 * k, 3, "%02x", block[k]);
}

/* Another shard's state as files: a snapshot (unless NULL) and a journal. */
static void sibling_write(const struct fleet *f, const char *snapshot,
                          const char *journal)
{
    char path[PATH_SIZE_TEST + 32];

    snprintf(path, sizeof path, "%s/state1", f->w.dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/state1/fepd.state", f->w.dir);
    unlink(path);
    if (snapshot)
        CHECK(test_write_file(path, snapshot) == 0);
    snprintf(path, sizeof path, "%s/state1/fepd.journal", f->w.dir);
    CHECK(test_write_file(path, journal) == 0);
}

/* More marks in the other shards than the tables hold (2 x max_dcus keys):
 * refused, never cut. */
static void adopt_full_refused(struct fleet *f)
{
    static char snapshot[8192];
    FILE *conf = fopen(f->w.conf, "a");
    size_t n;
    unsigned k;

    CHECK(conf != NULL);
    if (!conf)
        return;
    fputs("max_dcus 12\n", conf);
    fclose(conf);
    n = (size_t)snprintf(snapshot, sizeof snapshot, "fepd-state 2 9\n");
    for (k = 0; k < 2 * 12 + 1; k++)
        n += (size_t)snprintf(snapshot + n, sizeof snapshot - n,
                              "rx DCU00001 %016x 5\n", k + 1);
    snprintf(snapshot + n, sizeof snapshot - n, "end %u\n", 2 * 12 + 1);
    sibling_write(f, snapshot, "");
    CHECK_EQ(shard0_start(f, NULL), 3);
    CHECK_EQ(test_log_count(f->log[0], "state1/fepd.state:"), 1);
    CHECK_EQ(test_log_count(f->log[0], ": rx: more keys or marks than the "
                            "state can hold (2 x max_dcus): raise max_dcus"), 1);
}

/*
 * What a shard takes from another shard's files: the rx lines of its own
 * DCUs from the journal as well as from the snapshot (a journal line after
 * a torn or foreign one is passed over with a warning), nothing from a
 * snapshot that is damaged (the start is refused, exit 3, unless
 * --fresh-state, which passes it over).
 */
static void test_shard_adopt_files(void)
{
    static struct fleet f;
    char kcv[2 * STATE_KCV_SIZE + 1], other[2 * STATE_KCV_SIZE + 1];
    char snapshot[512], journal[512], needle[PATH_SIZE_TEST + 64];
    const unsigned dcu = 1;             /* shard 0 of 2 */

    memset(&f, 0, sizeof f);
    world_init(&f.w, "adopt");
    f.base_port = ports_free(1);
    CHECK(config_shard_of("DCU00001", 2) == 0);
    CHECK(config_shard_of("DCU00003", 2) == 1);
    fleet_config(&f);
    kcv_hex(dcu, kcv);
    kcv_hex(3, other);
    /* The mark of DCU00001 is in the journal only, DCU00003's (shard 1's
     * own) in the snapshot; tx and dcu lines are the other shard's own. */
    snprintf(snapshot, sizeof snapshot, "fepd-state 2 7\ntx %s 65537\n"
             "tx %s 65537\nrx DCU00003 %s 50\ndcu DCU00001 1 2 3 4\nend 4\n",
             kcv, other, other);
    snprintf(journal, sizeof journal, "fepd-journal 2 7\nrx DCU00001 %s "
             "700\nrx DCU00001 %s 777\n", kcv, kcv);
    sibling_write(&f, snapshot, journal);
    if (shard0_start(&f, NULL) == 0) {
        CHECK_EQ(test_log_count(f.log[0], "1 other shard state directories "
                                "read: 2 of their rx lines raised"), 1);
        CHECK_EQ(fleet_push(&f, dcu, 0, 777), NACK(FEP_ERR_REPLAY));
        CHECK_EQ(fleet_push(&f, dcu, 0, 778), CMD_ACK);
        fleet_stop(&f);
    }
    /* A journal cut by a compaction under the reader: the lines before the
     * cut count, the rest is passed over. */
    snprintf(journal, sizeof journal, "fepd-journal 2 7\nrx DCU00001 %s "
             "900\nrx DCU0fepd-journal 2 8\nrx DCU00001 %s 950\n", kcv, kcv);
    sibling_write(&f, snapshot, journal);
    if (shard0_start(&f, NULL) == 0) {
        snprintf(needle, sizeof needle, "warn: %s/state1/fepd.journal:3: rx: "
                 "DCU is not an id", f.w.dir);
        CHECK_EQ(test_log_count(f.log[0], needle), 1);
        CHECK_EQ(test_log_count(f.log[0], "the snapshot beside it is read "
                                "next"), 1);
        CHECK_EQ(fleet_push(&f, dcu, 0, 900), NACK(FEP_ERR_REPLAY));
        CHECK_EQ(fleet_push(&f, dcu, 0, 901), CMD_ACK);
        fleet_stop(&f);
    }
    /* A damaged snapshot could hide a mark: no start, unless --fresh-state. */
    sibling_write(&f, "fepd-state 2 7\nrx DCU00001\n", "");
    CHECK_EQ(shard0_start(&f, NULL), 3);
    snprintf(needle, sizeof needle, "%s/state1/fepd.state:2: rx: expected",
             f.w.dir);
    CHECK_EQ(test_log_count(f.log[0], needle), 1);
    CHECK_EQ(test_log_count(f.log[0], "move the directory away"), 1);
    if (shard0_start(&f, "--fresh-state") == 0) {
        CHECK_EQ(test_log_count(f.log[0], "(--fresh-state: passed over)"), 1);
        fleet_stop(&f);
    }
    adopt_full_refused(&f);
    world_end(&f.w);
}

/* ========================================================================
 * 4. The poll scheduler, seen in fepd's log
 * ====================================================================== */

#define SPREAD_DCUS 20
#define EVERY_MS 2000
#define MS_PER_DAY 86400000LL
/* fepd's start-up line, the origin of the times below, is written just
 * after the phases' origin is taken: on a loaded machine a little later. */
#define EARLY_MS 100

/* The time of day of a log line ("YYYY-MM-DDTHH:MM:SS.mmmZ ..."), in ms. */
static long long line_ms(const char *line)
{
    int h, m, s, ms;

    if (sscanf(line, "%*10[0-9-]T%2d:%2d:%2d.%3dZ", &h, &m, &s, &ms) != 4)
        return -1;
    return ((h * 60LL + m) * 60 + s) * 1000 + ms;
}

/* The times (ms after `origin`) of the lines of path holding needle, in
 * order; returns how many, at most cap.  With `session`, the time is when
 * the session began: the line's time less its duration_ms. */
static unsigned log_times(const char *path, const char *needle, int session,
                          long long origin, long long *out, unsigned cap)
{
    FILE *fp = fopen(path, "r");
    char line[LINE_SIZE];
    unsigned n = 0;

    if (!fp)
        return 0;
    while (fgets(line, sizeof line, fp) && n < cap) {
        long long t;

        if (!strstr(line, needle))
            continue;
        t = line_ms(line);
        if (session)
            t -= test_kv_get(line, "duration_ms");
        t -= origin;
        if (t < -MS_PER_DAY / 2)
            t += MS_PER_DAY;            /* past midnight */
        out[n++] = t;
    }
    fclose(fp);
    return n;
}

/* When fepd began: its start-up line, where the poll phases count from. */
static long long start_ms(const char *log)
{
    char line[LINE_SIZE];

    return test_log_last_line(log, "static memory", line, sizeof line) == 0
               ? line_ms(line) : -1;
}

/* fepd_t as production fepd schedules: each DCU at its phase (test.c
 * asks every other fepd_t to poll at start-up). */
static pid_t fep_spawn_phased(const struct world *w, const char *log)
{
    pid_t pid;

    unsetenv("FEP_TEST_POLL_AT_START");
    pid = fep_spawn(w, log, NULL, NULL, NULL);
    setenv("FEP_TEST_POLL_AT_START", "1", 1);
    return pid;
}

static pid_t sim_spawn(const char *log, int port, unsigned first,
                       unsigned dcus)
{
    char addr[32], first_text[16], dcus_text[16];
    const char *argv[] = { SIM, "--listen", addr, "--dcus", dcus_text,
                           "--first", first_text, "--records", "4", NULL };

    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    snprintf(first_text, sizeof first_text, "%u", first);
    snprintf(dcus_text, sizeof dcus_text, "%u", dcus);
    return test_spawn(argv, log);
}

/* 20 DCUs, poll_every 2: each DCU's first poll comes at its own phase,
 * fnv1a64(ID) mod 2000 ms after start-up, not all at once, and its next
 * one poll_every after that. */
static void test_shard_sched_spread(void)
{
    char conf[4096], fep_log[PATH_SIZE_TEST], sim_log[PATH_SIZE_TEST];
    struct world w;
    size_t n;
    unsigned i, early = 0;
    int port = test_free_port();
    pid_t sim, fep = -1;
    long long t0, lo = EVERY_MS, hi = 0;

    world_init(&w, "spread");
    snprintf(fep_log, sizeof fep_log, "%s/fepd.log", w.dir);
    snprintf(sim_log, sizeof sim_log, "%s/dcusim.log", w.dir);
    n = (size_t)snprintf(conf, sizeof conf, "data_dir %s/data\nstate_dir "
                         "%s/state\npoll_every 2\n" TIMEOUTS, w.dir, w.dir);
    for (i = 1; i <= SPREAD_DCUS; i++)
        n += (size_t)snprintf(conf + n, sizeof conf - n,
                              "dcu DCU%05u 127.0.0.1:%d key=-\n", i, port);
    CHECK(test_write_file(w.conf, conf) == 0);
    sim = sim_spawn(sim_log, port, 1, SPREAD_DCUS);
    CHECK(sim > 0 && test_wait_port(port, START_MS) == 0);
    if (sim > 0) {
        fep = fep_spawn_phased(&w, fep_log);
        /* Two cycles of every DCU, at most 2 x 2 s and some slack. */
        CHECK(test_wait_log(fep_log, "session poll DCU", 2 * SPREAD_DCUS,
                            2 * EVERY_MS + START_MS) == 0);
        kill(fep, SIGTERM);
        CHECK_EQ(test_wait(fep, STOP_MS), 0);
        check_clean_exit(fep_log);
        kill(sim, SIGTERM);
        test_wait(sim, STOP_MS);
    }
    t0 = start_ms(fep_log);
    CHECK(t0 >= 0);
    for (i = 1; i <= SPREAD_DCUS; i++) {
        char id[16], needle[64];
        long long t[4], phase;
        unsigned got;

        dcu_id(i, id);
        phase = (long long)(fnv1a64(id, strlen(id)) % EVERY_MS);
        snprintf(needle, sizeof needle, "session poll %s peer", id);
        got = log_times(fep_log, needle, 1, t0, t, 4);
        CHECK(got >= 2);
        if (got < 2)
            continue;
        /* On time (a loaded machine may be late, never early). */
        CHECK(t[0] >= phase - EARLY_MS);
        CHECK(t[0] <= phase + 600);
        /* The phase is kept: the next cycle is poll_every later. */
        CHECK(t[1] - t[0] >= EVERY_MS - 600);
        CHECK(t[1] - t[0] <= EVERY_MS + 600);
        early += t[0] < 100;
        if (t[0] < lo)
            lo = t[0];
        if (t[0] > hi)
            hi = t[0];
    }
    /* Spread over the period, not all in its first 100 ms. */
    CHECK(early <= 3);
    CHECK(hi - lo >= EVERY_MS / 2);
    CHECK_EQ(test_log_count(fep_log, "session poll DCU") -
             test_log_count(fep_log, " ok records="), 0);
    world_end(&w);
}

/*
 * A DCU nothing answers for is retried well before poll_every, the retries
 * further and further apart; once it answers, the back-off ends and its
 * polls come back to its phase.
 */
static void test_shard_sched_backoff(void)
{
    char conf[1024], fep_log[PATH_SIZE_TEST], sim_log[PATH_SIZE_TEST];
    char needle[96];
    struct world w;
    unsigned got, k;
    int port = test_free_port();
    pid_t sim = -1, fep;
    long long t0, t[8], ok[3], gap[7], fail[32], phase;
    const char *id = "DCU00014";        /* phase 24 ms: no long wait */

    world_init(&w, "backoff");
    snprintf(fep_log, sizeof fep_log, "%s/fepd.log", w.dir);
    snprintf(sim_log, sizeof sim_log, "%s/dcusim.log", w.dir);
    snprintf(conf, sizeof conf, "data_dir %s/data\nstate_dir %s/state\n"
             "poll_every 2\n" TIMEOUTS "dcu %s 127.0.0.1:%d key=-\n", w.dir,
             w.dir, id, port);
    CHECK(test_write_file(w.conf, conf) == 0);
    snprintf(needle, sizeof needle, "poll %s: connect to 127.0.0.1:%d: ", id,
             port);
    fep = fep_spawn_phased(&w, fep_log);
    /* Nothing listens yet: five failures, then the DCU comes up. */
    CHECK(test_wait_log(fep_log, needle, 5, EVERY_MS + START_MS) == 0);
    sim = sim_spawn(sim_log, port, 14, 1);
    CHECK(sim > 0);
    CHECK(test_wait_log(fep_log, " ok records=", 3, 3 * EVERY_MS + START_MS) == 0);
    kill(fep, SIGTERM);
    CHECK_EQ(test_wait(fep, STOP_MS), 0);
    check_clean_exit(fep_log);
    if (sim > 0) {
        kill(sim, SIGTERM);
        test_wait(sim, STOP_MS);
    }
    t0 = start_ms(fep_log);
    phase = (long long)(fnv1a64(id, strlen(id)) % EVERY_MS);
    got = log_times(fep_log, needle, 0, t0, t, 8);
    CHECK(got >= 5);
    if (got >= 5) {
        CHECK(t[0] >= phase - EARLY_MS && t[0] <= phase + 600);
        for (k = 0; k + 1 < got; k++)
            gap[k] = t[k + 1] - t[k];
        /* poll_every / 16 = 125 ms, drawn between its half and its
         * whole, then doubling: 62..125, 125..250, 250..500, 500..1000. */
        CHECK(gap[0] >= 60 && gap[0] <= 125 + 300);
        CHECK(gap[1] >= 120 && gap[1] <= 250 + 300);
        CHECK(gap[2] >= 245 && gap[2] <= 500 + 300);
        CHECK(gap[3] >= 495 && gap[3] <= 1000 + 300);
        CHECK(gap[2] > gap[0] + 50);
        CHECK(gap[3] > gap[1] + 100);
        CHECK(t[1] - t[0] < EVERY_MS / 4);
    }
    /* After the first success, the polls are at the phase again, one per
     * poll_every, and nothing fails. */
    CHECK_EQ(log_times(fep_log, " ok records=", 1, t0, ok, 3), 3);
    for (k = 1; k < 3; k++) {
        /* Its distance to the nearest phase point, -1000 .. 999 ms. */
        long long off = ((ok[k] - phase) % EVERY_MS + EVERY_MS + EVERY_MS / 2) %
                        EVERY_MS - EVERY_MS / 2;
        CHECK(off >= -EARLY_MS && off <= 600);
        CHECK(ok[k] - ok[k - 1] >= 600);
        if (off < -EARLY_MS || off > 600)
            fprintf(stderr, "  success %u at %lld ms, phase %lld ms\n", k,
                    ok[k], phase);
    }
    got = log_times(fep_log, "connect to 127.0.0.1", 0, t0, fail, 32);
    CHECK(got >= 5 && got < 32);
    for (k = 0; k < got; k++)
        CHECK(fail[k] < ok[0]);
    world_end(&w);
}

void test_shard_suite(void)
{
    test_run("shard_fnv_vectors", test_shard_fnv_vectors);
    test_run("shard_jump_vectors", test_shard_jump_vectors);
    test_run("shard_jump_properties", test_shard_jump_properties);
    test_run("shard_config_split", test_shard_config_split);
    test_run("shard_config_unsharded", test_shard_config_unsharded);
    test_run("shard_config_errors", test_shard_config_errors);
    test_run("shard_config_empty_shard", test_shard_config_empty_shard);
    test_run("shard_metrics", test_shard_metrics);
    test_run("shard_cli", test_shard_cli);
    test_run("shard_reshard", test_shard_reshard);
    test_run("shard_adopt_files", test_shard_adopt_files);
    test_run("shard_sched_spread", test_shard_sched_spread);
    test_run("shard_sched_backoff", test_shard_sched_backoff);
}
