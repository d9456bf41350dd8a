/*
 * config.c -- the config file of DESIGN.md section 2.
 *
 * Owns: the arrays of a loaded fep_config, dcus, by_sid and (sharded)
 * other_sids, allocated once by config_load and freed by config_release;
 * nothing else.
 * Must not touch: sockets (an address is resolved, never connected or bound),
 * the directories it names (fepd creates them later, after --check), and any
 * state outside the fep_config it is given.
 *
 * How a file is read.  The file is read twice with stdio, one line at a time
 * into a fixed buffer: the first pass only counts the dcu lines, so that the
 * DCU table is allocated exactly once and never grows; the second pass parses
 * every line and stops at the first error.  A message always names the file
 * and the line, then the directive and the value at fault, because the
 * operator reads it in a log far from the file.  Plain directives are a
 * table (name, parser, field, default): the defaults go through the same
 * parsers as the file, so a default can never be a value the file could not
 * hold.  The DCUs are then indexed in the order of their padded SID, the
 * form the wire carries, so that a frame's SID is looked up by binary
 * search (each id padded as it is compared: an entry keeps no second copy
 * of it); duplicates show up as neighbours in that order.
 *
 * Shards (--shard I/N).  {shard} in fep_id, data_dir, state_dir and pidfile
 * becomes I as the line is read, so every message names the value that is
 * used; listen and metrics move up by I.  The whole file is read and checked
 * by every shard alike (a file is good or bad for all of them), and only
 * then does the table keep the shard's own DCUs.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fep.h"

#define CONFIG_LINE_MAX 1023            /* characters, newline not counted */
/* 100,000 dcu lines with keys take about 8 MB: a bigger file is a mistake. */
#define CONFIG_SIZE_MAX ((off_t)64 * 1024 * 1024)
/* dcu ID ADDRESS key= poll=, and one more to name in "extra value" */
#define CONFIG_FIELDS_MAX 6
#define FIELD_SEPARATORS " \t\r"        /* \r: a CRLF file still reads */
#define DURATION_MAX_S 86400
#define MS_PER_S 1000
/* data_dir and state_dir leave room for a file name ("/fepd.state.tmp"). */
#define PATH_TEXT_MAX (PATH_SIZE - 32)
/* A problem, quoting a value as long as a whole line. */
#define WHY_SIZE (CONFIG_LINE_MAX + 128)

/* The fields of one line, comment removed: n counts them all, f holds the
 * first CONFIG_FIELDS_MAX. */
typedef struct line_fields {
    char *f[CONFIG_FIELDS_MAX];
    unsigned n;
} line_fields;

/* Parses text into *field; 0, or -1 with the problem in why. */
typedef int (*value_parser)(const char *text, void *field, char *why,
                            size_t whylen);

static int parse_fep_id(const char *text, void *field, char *why,
                        size_t whylen);
static int parse_addr(const char *text, void *field, char *why, size_t whylen);
static int parse_path(const char *text, void *field, char *why, size_t whylen);
static int parse_sessions(const char *text, void *field, char *why,
                          size_t whylen);
static int parse_duration(const char *text, void *field, char *why,
                          size_t whylen);
static int parse_max_dcus(const char *text, void *field, char *why,
                          size_t whylen);
static int parse_sync(const char *text, void *field, char *why, size_t whylen);
static int parse_rotate(const char *text, void *field, char *why,
                        size_t whylen);

#define NO_FLAG ((size_t)-1)
#define AT(member) offsetof(fep_config, member)
#define SZ(member) sizeof(((fep_config *)0)->member)

/* Every directive but dcu; the defaults are those of DESIGN.md section 2.
 * A reload may change the directives marked RELOADABLE; a file that
 * changes any other is refused as a whole (DESIGN.md section 3). */
#define RESTART 0
#define RELOADABLE 1
static const struct directive {
    const char *name;
    value_parser parse;
    size_t field;                       /* offset of the value in fep_config */
    size_t size;                        /* of the value */
    size_t flag;                        /* of an int set to 1 when given */
    const char *deflt;                  /* NULL: off unless given */
    int reload;                         /* RESTART or RELOADABLE */
} directives[] = {
    { "fep_id", parse_fep_id, AT(fep_id), SZ(fep_id), NO_FLAG, "FEP00001",
      RESTART },
    { "listen", parse_addr, AT(listen), SZ(listen), AT(has_listen), NULL,
      RESTART },
    { "metrics", parse_addr, AT(metrics), SZ(metrics), AT(has_metrics), NULL,
      RESTART },
    { "data_dir", parse_path, AT(data_dir), SZ(data_dir), NO_FLAG, "./data",
      RESTART },
    { "state_dir", parse_path, AT(state_dir), SZ(state_dir), NO_FLAG,
      "./state", RESTART },
    { "pidfile", parse_path, AT(pidfile), SZ(pidfile), NO_FLAG, NULL,
      RESTART },
    { "max_sessions", parse_sessions, AT(max_sessions), SZ(max_sessions),
      NO_FLAG, "256", RESTART },
    { "max_dcus", parse_max_dcus, AT(max_dcus), SZ(max_dcus), NO_FLAG, NULL,
      RESTART },
    { "poll_every", parse_duration, AT(poll_every_ms), SZ(poll_every_ms),
      NO_FLAG, "900", RELOADABLE },
    { "sync", parse_sync, AT(sync_packet), SZ(sync_packet), NO_FLAG, "packet",
      RELOADABLE },
    { "timeout_connect", parse_duration, AT(timeout_connect_ms),
      SZ(timeout_connect_ms), NO_FLAG, "5", RELOADABLE },
    { "timeout_frame", parse_duration, AT(timeout_frame_ms),
      SZ(timeout_frame_ms), NO_FLAG, "10", RELOADABLE },
    { "timeout_write", parse_duration, AT(timeout_write_ms),
      SZ(timeout_write_ms), NO_FLAG, "10", RELOADABLE },
    { "timeout_idle", parse_duration, AT(timeout_idle_ms), SZ(timeout_idle_ms),
      NO_FLAG, "30", RELOADABLE },
    { "timeout_session", parse_duration, AT(timeout_session_ms),
      SZ(timeout_session_ms), NO_FLAG, "300", RELOADABLE },
    { "rotate", parse_rotate, AT(rotate_s), SZ(rotate_s), NO_FLAG, NULL,
      RELOADABLE },
};

#define DIRECTIVES (sizeof directives / sizeof directives[0])
FEP_STATIC_ASSERT(sizeof directives / sizeof directives[0] <= CONFIG_DIRECTIVES_MAX,
                  directive_lines_fit);

typedef struct config_reader {
    int fd;
    const char *path;
    size_t chunk_at, chunk_len;         /* unread bytes of chunk */
    int read_error;                     /* errno of a failed read, or 0 */
    unsigned line;                      /* of the line in buf, 1-based */
    int too_long;                       /* the line in buf was cut */
    int has_nul;                        /* the line in buf held a NUL byte */
    off_t bytes;                        /* read so far in this pass */
    char *err;
    size_t errlen;
    unsigned given[DIRECTIVES];         /* line of each, 0 not given yet */
    unsigned shard, shards;             /* --shard I/N; 0 and 1 when not sharded */
    unsigned char templated[DIRECTIVES]; /* the value held {shard} */
    char fep_id_pattern[CONFIG_LINE_MAX + 1]; /* fep_id as written, with {shard} */
    unsigned dcu_cap;                   /* dcu lines found by the first pass */
    char buf[CONFIG_LINE_MAX + 2];      /* a line, its newline and the NUL */
    unsigned char chunk[4096];          /* read(2) buffer: no stdio, which allocates */
} config_reader;

/* ------------------------------------------------------------------------
 * Messages
 * ---------------------------------------------------------------------- */

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int reader_fail(config_reader *r, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(r->err, r->errlen, "%s:%u: ", r->path, r->line);

    if (n >= 0 && (size_t)n < r->errlen) {
        va_start(ap, fmt);
        vsnprintf(r->err + n, r->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* A problem of the whole file, with no line to name. */
static int file_fail(config_reader *r, const char *problem, const char *detail)
{
    snprintf(r->err, r->errlen, "%s: %s%s", r->path, problem, detail);
    return -1;
}

/* ------------------------------------------------------------------------
 * Lines and fields
 * ---------------------------------------------------------------------- */

/*
 * The next line in r->buf, without its newline.  1: a line; 0: end of file;
 * -1: read error.  A line longer than CONFIG_LINE_MAX sets r->too_long and
 * the rest of it is skipped, so that line numbers stay right; a NUL byte
 * sets r->has_nul (a text file has none, and C strings would stop there).
 */
static int reader_getc(config_reader *r)
{
    ssize_t n;

    if (r->chunk_at == r->chunk_len) {
        do
            n = read(r->fd, r->chunk, sizeof r->chunk);
        while (n < 0 && errno == EINTR);
        if (n <= 0) {
            r->read_error = n < 0 ? errno : 0;
            return EOF;
        }
        r->chunk_at = 0;
        r->chunk_len = (size_t)n;
    }
    return r->chunk[r->chunk_at++];
}

/* Back to the start of the file, for the second pass. */
static int reader_rewind(config_reader *r)
{
    r->chunk_at = r->chunk_len = 0;
    r->bytes = 0;
    r->line = 0;
    return lseek(r->fd, 0, SEEK_SET) == 0 ? 0 : -1;
}

static int reader_next(config_reader *r)
{
    size_t len = 0;
    int c;

    r->too_long = 0;
    r->has_nul = 0;
    while ((c = reader_getc(r)) != EOF && c != '\n') {
        if (++r->bytes > CONFIG_SIZE_MAX)
            break;
        if (c == '\0')
            r->has_nul = 1;
        else if (len < CONFIG_LINE_MAX)
            r->buf[len++] = (char)c;
        else
            r->too_long = 1;
    }
    if (r->read_error) {
        errno = r->read_error;
        return -1;
    }
    r->buf[len] = '\0';
    if (c == EOF && len == 0 && !r->too_long && !r->has_nul)
        return 0;
    r->line++;
    return 1;
}

static void split_fields(char *s, line_fields *lf)
{
    char *hash = strchr(s, '#');

    if (hash)
        *hash = '\0';
    lf->n = 0;
    for (;;) {
        s += strspn(s, FIELD_SEPARATORS);
        if (*s == '\0')
            return;
        if (lf->n < CONFIG_FIELDS_MAX)
            lf->f[lf->n] = s;
        lf->n++;
        s += strcspn(s, FIELD_SEPARATORS);
        if (*s != '\0')
            *s++ = '\0';
    }
}

/* Copies at most cap - 1 characters; text is for messages only. */
static void copy_text(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);

    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* ------------------------------------------------------------------------
 * Values
 * ---------------------------------------------------------------------- */

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* 1..8 printable ASCII characters, no space: the wire pads ids with spaces. */
static int id_valid(const char *text)
{
    size_t i, n = strlen(text);

    if (n < 1 || n > FRAME_ID_SIZE)
        return 0;
    for (i = 0; i < n; i++)
        if (text[i] < 0x21 || text[i] > 0x7E)
            return 0;
    return 1;
}

static int parse_id(const char *text, char id[FRAME_ID_SIZE + 1], char *why,
                    size_t whylen)
{
    if (!id_valid(text)) {
        snprintf(why, whylen, "must be 1..%d printable ASCII characters "
                 "without spaces, got '%s'", FRAME_ID_SIZE, text);
        return -1;
    }
    copy_text(id, FRAME_ID_SIZE + 1, text);
    return 0;
}

static int parse_fep_id(const char *text, void *field, char *why, size_t whylen)
{
    return parse_id(text, field, why, whylen);
}

static int parse_addr(const char *text, void *field, char *why, size_t whylen)
{
    return sys_addr_parse(text, field, why, whylen);
}

static int parse_path(const char *text, void *field, char *why, size_t whylen)
{
    if (strlen(text) > PATH_TEXT_MAX) {
        snprintf(why, whylen, "must be at most %d characters, got %zu",
                 PATH_TEXT_MAX, strlen(text));
        return -1;
    }
    copy_text(field, PATH_SIZE, text);
    return 0;
}

/* Decimal digits only, at most max; 0 or -1. */
static int parse_unsigned(const char *text, unsigned long max,
                          unsigned long *out)
{
    unsigned long v = 0;

    if (*text == '\0')
        return -1;
    for (; *text; text++) {
        if (!is_digit(*text))
            return -1;
        v = v * 10 + (unsigned long)(*text - '0');
        if (v > max)
            return -1;
    }
    *out = v;
    return 0;
}

/* A count 1..max into an unsigned field. */
static int parse_count(const char *text, unsigned long max, void *field,
                       char *why, size_t whylen)
{
    unsigned long v;

    if (parse_unsigned(text, max, &v) != 0 || v < 1) {
        snprintf(why, whylen, "must be 1..%lu, got '%s'", max, text);
        return -1;
    }
    *(unsigned *)field = (unsigned)v;
    return 0;
}

static int parse_sessions(const char *text, void *field, char *why,
                          size_t whylen)
{
    return parse_count(text, SESSIONS_MAX, field, why, whylen);
}

static int parse_max_dcus(const char *text, void *field, char *why,
                          size_t whylen)
{
    return parse_count(text, DCUS_MAX, field, why, whylen);
}

/* "S" or "S.F" with 1..3 digits of F: whole milliseconds, nothing rounded. */
static int seconds_to_ms(const char *text, int64_t *ms)
{
    const char *dot = strchr(text, '.');
    char whole[16];
    unsigned long s, frac = 0;
    size_t nwhole = dot ? (size_t)(dot - text) : strlen(text);
    size_t nfrac = dot ? strlen(dot + 1) : 0;

    if (nwhole == 0 || nwhole >= sizeof whole ||
        (dot && (nfrac < 1 || nfrac > 3)))
        return -1;
    memcpy(whole, text, nwhole);
    whole[nwhole] = '\0';
    if (parse_unsigned(whole, DURATION_MAX_S, &s) != 0 ||
        (dot && parse_unsigned(dot + 1, 999, &frac) != 0))
        return -1;
    while (nfrac++ < 3)
        frac *= 10;
    *ms = (int64_t)s * MS_PER_S + (int64_t)frac;
    return 0;
}

static int parse_duration(const char *text, void *field, char *why,
                          size_t whylen)
{
    int64_t ms;

    if (seconds_to_ms(text, &ms) != 0 || ms <= 0 ||
        ms > (int64_t)DURATION_MAX_S * MS_PER_S) {
        snprintf(why, whylen, "must be seconds, more than 0 and at most %d, "
                 "with at most 3 decimals (e.g. 0.25), got '%s'",
                 DURATION_MAX_S, text);
        return -1;
    }
    *(int64_t *)field = ms;
    return 0;
}

/* Whole seconds: a segment boundary is a multiple of them on the clock. */
/* Whole seconds: a segment's name holds its start to the second. */
static int parse_rotate(const char *text, void *field, char *why, size_t whylen)
{
    return parse_count(text, DURATION_MAX_S, field, why, whylen);
}

static int parse_sync(const char *text, void *field, char *why, size_t whylen)
{
    if (strcmp(text, "packet") == 0) {
        *(int *)field = 1;
    } else if (strcmp(text, "none") == 0) {
        *(int *)field = 0;
    } else {
        snprintf(why, whylen, "must be packet or none, got '%s'", text);
        return -1;
    }
    return 0;
}

static int parse_key(const char *text, dcu_conf *dc, char *why, size_t whylen)
{
    size_t i;

    if (strcmp(text, "-") == 0) {
        dc->has_key = 0;
        return 0;
    }
    for (i = 0; i < 2 * KEY_SIZE && hex_digit((unsigned char)text[i]) >= 0; i++)
        ;
    if (i != 2 * KEY_SIZE || text[i] != '\0') {
        snprintf(why, whylen, "must be %d hex digits or -, got '%s'",
                 2 * KEY_SIZE, text);
        return -1;
    }
    for (i = 0; i < KEY_SIZE; i++)
        dc->key[i] = (uint8_t)(hex_digit((unsigned char)text[2 * i]) << 4 |
                               hex_digit((unsigned char)text[2 * i + 1]));
    dc->has_key = 1;
    return 0;
}

/* "k,s": letters of k s m n, each at most once, kept in the order given;
 * NUL-terminated in dc->poll when fewer than POLL_CMDS_MAX. */
static int parse_poll(const char *text, dcu_conf *dc, char *why, size_t whylen)
{
    char letters[POLL_CMDS_MAX];
    const char *p = text;
    size_t n = 0;

    while (n < POLL_CMDS_MAX && *p && strchr("ksmn", *p) &&
           !memchr(letters, *p, n)) {
        letters[n++] = *p++;
        if (*p == '\0') {
            memset(dc->poll, 0, sizeof dc->poll);
            memcpy(dc->poll, letters, n);
            return 0;
        }
        if (*p++ != ',')
            break;
    }
    snprintf(why, whylen, "must be a comma-separated list of k s m n, each "
             "at most once (e.g. k,s), got '%s'", text);
    return -1;
}

/* The options of a dcu line, each NAME=VALUE at most once, in any order. */
static const struct dcu_option {
    const char *name;
    int (*parse)(const char *text, dcu_conf *dc, char *why, size_t whylen);
} dcu_options[] = {
    { "key", parse_key },
    { "poll", parse_poll },
};

#define DCU_OPTIONS (sizeof dcu_options / sizeof dcu_options[0])

/* ------------------------------------------------------------------------
 * Shards (DESIGN.md section 3)
 * ---------------------------------------------------------------------- */

#define SHARD_TOKEN "{shard}"

/* The directives whose value may hold {shard}; pidfile's turn comes with
 * its directive. */
static const char *const shard_directives[] = {
    "fep_id", "data_dir", "state_dir", "pidfile"
};

int config_shard_expand(const char *pattern, unsigned shard, char *out,
                        size_t cap)
{
    const size_t token = sizeof SHARD_TOKEN - 1;
    char digits[16];
    size_t n = 0, len = (size_t)snprintf(digits, sizeof digits, "%u", shard);

    while (*pattern) {
        const char *piece = digits;
        size_t piece_len = len;

        if (strncmp(pattern, SHARD_TOKEN, token) == 0) {
            pattern += token;
        } else {
            piece = pattern++;
            piece_len = 1;
        }
        if (n + piece_len >= cap)
            return -1;
        memcpy(out + n, piece, piece_len);
        n += piece_len;
    }
    out[n] = '\0';
    return 0;
}

unsigned config_shard_of(const char *id, unsigned shards)
{
    return jump_hash(fnv1a64(id, strlen(id)), shards);
}

/* The value of directive k with {shard} replaced, into value (as long as a
 * line); state_dir as written is kept for the shard's siblings (state.c
 * reads their replay marks). */
static int shard_value(config_reader *r, fep_config *cfg, size_t k,
                       const char *text, char value[CONFIG_LINE_MAX + 1])
{
    size_t i;

    for (i = 0; i < sizeof shard_directives / sizeof shard_directives[0]; i++)
        if (strcmp(directives[k].name, shard_directives[i]) == 0)
            break;
    r->templated[k] = i < sizeof shard_directives / sizeof shard_directives[0]
                      && strstr(text, SHARD_TOKEN) != NULL;
    if (!r->templated[k]) {
        copy_text(value, CONFIG_LINE_MAX + 1, text);
        return 0;
    }
    /* A shard number is never longer than the token it replaces. */
    config_shard_expand(text, r->shard, value, CONFIG_LINE_MAX + 1);
    if (strcmp(directives[k].name, "fep_id") == 0)
        copy_text(r->fep_id_pattern, sizeof r->fep_id_pattern, text);
    if (strcmp(directives[k].name, "state_dir") != 0)
        return 0;
    if (strlen(text) > PATH_TEXT_MAX)
        return reader_fail(r, "state_dir: must be at most %d characters, "
                           "got '%s'", PATH_TEXT_MAX, text);
    copy_text(cfg->state_dir_pattern, PATH_SIZE, text);
    return 0;
}

/* ------------------------------------------------------------------------
 * Directives
 * ---------------------------------------------------------------------- */

static const struct directive *directive_find(const char *name)
{
    size_t i;

    for (i = 0; i < DIRECTIVES; i++)
        if (strcmp(directives[i].name, name) == 0)
            return &directives[i];
    return NULL;
}

static void config_defaults(fep_config *cfg)
{
    char why[WHY_SIZE];
    size_t i;

    for (i = 0; i < DIRECTIVES; i++) {
        const struct directive *d = &directives[i];
        if (d->deflt && d->parse(d->deflt, (char *)cfg + d->field, why,
                                 sizeof why) != 0)
            abort();                    /* a default the parser refuses */
    }
}

static int apply_directive(config_reader *r, fep_config *cfg,
                           const line_fields *lf)
{
    const struct directive *d = directive_find(lf->f[0]);
    char why[WHY_SIZE], value[CONFIG_LINE_MAX + 1];
    size_t k;

    if (!d)
        return reader_fail(r, "unknown directive '%s'", lf->f[0]);
    k = (size_t)(d - directives);
    if (r->given[k])
        return reader_fail(r, "%s: given twice (first on line %u)", d->name,
                           r->given[k]);
    if (lf->n < 2)
        return reader_fail(r, "%s: missing value", d->name);
    if (lf->n > 2)
        return reader_fail(r, "%s: extra value '%s'", d->name, lf->f[2]);
    if (shard_value(r, cfg, k, lf->f[1], value) != 0)
        return -1;
    if (d->parse(value, (char *)cfg + d->field, why, sizeof why) != 0)
        return r->templated[k]
                   ? reader_fail(r, "%s: %s ({shard} is %u)", d->name, why,
                                 r->shard)
                   : reader_fail(r, "%s: %s", d->name, why);
    if (d->flag != NO_FLAG)
        *(int *)(void *)((char *)cfg + d->flag) = 1;
    r->given[k] = r->line;
    cfg->lines[k] = r->line;
    return 0;
}

static int dcu_address(config_reader *r, dcu_conf *dc, const char *text)
{
    char why[WHY_SIZE];

    if (strcmp(text, "-") == 0) {
        dc->has_addr = 0;
        return 0;
    }
    if (sys_addr_parse(text, &dc->addr, why, sizeof why) != 0)
        return reader_fail(r, "dcu %s: address %s", dc->id, why);
    dc->has_addr = 1;
    return 0;
}

/* One NAME=VALUE of a dcu line; the bits of *given say which were seen. */
static int apply_dcu_option(config_reader *r, dcu_conf *dc, const char *opt,
                            unsigned *given)
{
    char why[WHY_SIZE];
    size_t k, len;

    for (k = 0; k < DCU_OPTIONS; k++) {
        len = strlen(dcu_options[k].name);
        if (strncmp(opt, dcu_options[k].name, len) == 0 && opt[len] == '=')
            break;
    }
    if (k == DCU_OPTIONS)
        return reader_fail(r, "dcu %s: unknown option '%s' (expected "
                           "key=HEX32|- or poll=CMDS)", dc->id, opt);
    if (*given & (1u << k))
        return reader_fail(r, "dcu %s: option %s given twice", dc->id,
                           dcu_options[k].name);
    *given |= 1u << k;
    if (dcu_options[k].parse(opt + len + 1, dc, why, sizeof why) != 0)
        return reader_fail(r, "dcu %s: %s %s", dc->id, dcu_options[k].name,
                           why);
    return 0;
}

/* dcu ID ADDRESS [key=HEX32|-] [poll=CMDS] */
static int apply_dcu(config_reader *r, fep_config *cfg, const line_fields *lf)
{
    char why[WHY_SIZE];
    unsigned i, given = 0;
    dcu_conf *dc;

    if (cfg->n_dcus >= DCUS_MAX)
        return reader_fail(r, "more than %d DCUs", DCUS_MAX);
    if (cfg->n_dcus >= r->dcu_cap)
        return reader_fail(r, "more DCUs than the table holds (%u, max_dcus "
                           "at start-up): a restart is needed", r->dcu_cap);
    if (lf->n < 2)
        return reader_fail(r, "dcu: missing ID and ADDRESS");
    dc = &cfg->dcus[cfg->n_dcus];
    memset(dc, 0, sizeof *dc);          /* the id NUL-padded, no option left */
    if (parse_id(lf->f[1], dc->id, why, sizeof why) != 0)
        return reader_fail(r, "dcu: ID %s", why);
    if (lf->n < 3)
        return reader_fail(r, "dcu %s: missing ADDRESS (host:port or -)",
                           dc->id);
    if (lf->n > 5)
        return reader_fail(r, "dcu %s: extra value '%s'", dc->id, lf->f[5]);
    if (dcu_address(r, dc, lf->f[2]) != 0)
        return -1;
    strcpy(dc->poll, "k");
    for (i = 3; i < lf->n; i++)
        if (apply_dcu_option(r, dc, lf->f[i], &given) != 0)
            return -1;
    cfg->n_dcus++;                      /* entries are in file order */
    return 0;
}

/* ------------------------------------------------------------------------
 * Passes
 * ---------------------------------------------------------------------- */

static int read_failed(config_reader *r)
{
    return file_fail(r, "cannot read: ", strerror(errno));
}

/* The first pass: how many DCUs the table must hold, the file's dcu lines
 * or max_dcus, whichever is more (errors are told by the second pass). */
static int count_dcus(config_reader *r)
{
    line_fields lf;
    unsigned long max_dcus = 0;
    int rc;

    r->dcu_cap = 0;
    while ((rc = reader_next(r)) == 1) {
        split_fields(r->buf, &lf);
        if (r->too_long || lf.n < 1)
            continue;
        if (strcmp(lf.f[0], "dcu") == 0 && r->dcu_cap < DCUS_MAX)
            r->dcu_cap++;
        else if (strcmp(lf.f[0], "max_dcus") == 0 && lf.n == 2 &&
                 parse_unsigned(lf.f[1], DCUS_MAX, &max_dcus) != 0)
            max_dcus = 0;
    }
    if (max_dcus == 0)
        max_dcus = r->dcu_cap + DCUS_SPARE;
    if (max_dcus > r->dcu_cap)
        r->dcu_cap = max_dcus > DCUS_MAX ? DCUS_MAX : (unsigned)max_dcus;
    return rc < 0 ? read_failed(r) : 0;
}

static int parse_lines(config_reader *r, fep_config *cfg)
{
    line_fields lf;
    int rc;

    while ((rc = reader_next(r)) == 1) {
        if (r->bytes > CONFIG_SIZE_MAX)
            return reader_fail(r, "the file is larger than %lld bytes",
                               (long long)CONFIG_SIZE_MAX);
        if (r->has_nul)
            return reader_fail(r, "a NUL byte: not a text file");
        if (r->too_long)
            return reader_fail(r, "line longer than %d characters",
                               CONFIG_LINE_MAX);
        split_fields(r->buf, &lf);
        if (lf.n == 0)
            continue;
        rc = strcmp(lf.f[0], "dcu") == 0 ? apply_dcu(r, cfg, &lf)
                                         : apply_directive(r, cfg, &lf);
        if (rc != 0)
            return -1;
    }
    return rc < 0 ? read_failed(r) : 0;
}

/* ------------------------------------------------------------------------
 * The SID index
 * ---------------------------------------------------------------------- */

/* Ids hold 0x21..0x7E and are NUL-padded, so comparing their 8 bytes
 * orders them as their space-padded SIDs (NUL and space both sort below
 * every id character): the order of config_find_dcu. */
static int id_cmp(const dcu_conf *a, const dcu_conf *b)
{
    return strncmp(a->id, b->id, FRAME_ID_SIZE);
}

/* By SID, then by index, so that equal SIDs come in file order. */
static int by_sid_less(const fep_config *cfg, unsigned a, unsigned b)
{
    int c = id_cmp(&cfg->dcus[a], &cfg->dcus[b]);

    return c < 0 || (c == 0 && a < b);
}

static void sift_down(const fep_config *cfg, unsigned *h, size_t root, size_t n)
{
    for (;;) {
        size_t child = 2 * root + 1;
        unsigned t;

        if (child >= n)
            return;
        if (child + 1 < n && by_sid_less(cfg, h[child], h[child + 1]))
            child++;
        if (!by_sid_less(cfg, h[root], h[child]))
            return;
        t = h[root];
        h[root] = h[child];
        h[child] = t;
        root = child;
    }
}

/* Heapsort in place: O(n log n), and unlike qsort it never allocates (a
 * reload sorts the DCUs again after start-up). */
static void sort_by_sid(const fep_config *cfg, unsigned *h, size_t n)
{
    size_t i;

    for (i = n / 2; i-- > 0;)
        sift_down(cfg, h, i, n);
    while (n > 1) {
        unsigned t = h[0];
        h[0] = h[--n];
        h[n] = t;
        sift_down(cfg, h, 0, n);
    }
}

/* The DCUs in by_sid, removed ones left out; n_live counts them, n_polled
 * those of them with an address. */
void config_index(fep_config *cfg)
{
    unsigned i;

    cfg->n_live = cfg->n_polled = 0;
    for (i = 0; i < cfg->n_dcus; i++) {
        if (cfg->dcus[i].removed)
            continue;
        cfg->by_sid[cfg->n_live++] = i;
        cfg->n_polled += cfg->dcus[i].has_addr;
    }
    sort_by_sid(cfg, cfg->by_sid, cfg->n_live);
}

/*
 * The line of the file that holds entry k, the k-th dcu line (entries are
 * in file order), found by reading the file again: only a message needs
 * it, and a line kept in each entry would cost 4 bytes a DCU, twice (the
 * reload table).  0 when the file no longer has it.
 */
static unsigned dcu_line(config_reader *r, unsigned k)
{
    line_fields lf;
    unsigned seen = 0;

    if (reader_rewind(r) != 0)
        return 0;
    while (reader_next(r) == 1) {
        split_fields(r->buf, &lf);
        if (lf.n > 0 && strcmp(lf.f[0], "dcu") == 0 && seen++ == k)
            return r->line;
    }
    return 0;
}

/* Duplicates are neighbours in SID order, in file order among themselves;
 * the one told is the earliest second occurrence in the file. */
static int index_dcus(config_reader *r, fep_config *cfg)
{
    unsigned i, first = 0, second = 0, first_line;

    config_index(cfg);
    for (i = 1; i < cfg->n_live; i++) {
        unsigned a = cfg->by_sid[i - 1], b = cfg->by_sid[i];
        if (id_cmp(&cfg->dcus[a], &cfg->dcus[b]) != 0 ||
            (second > 0 && second < b))
            continue;                   /* a third is later than the second */
        first = a;
        second = b;                     /* after a: never entry 0 */
    }
    if (second == 0)
        return 0;
    first_line = dcu_line(r, first);
    r->line = dcu_line(r, second);
    return reader_fail(r, "dcu %s: duplicate id (first on line %u)",
                       cfg->dcus[second].id, first_line);
}

/* ------------------------------------------------------------------------
 * Shards: the rules, the ports, the split
 * ---------------------------------------------------------------------- */

/* The line of directive name, 0 when it was not given. */
static unsigned given_line(const config_reader *r, const char *name)
{
    const struct directive *d = directive_find(name);

    return d ? r->given[d - directives] : 0;
}

/* With N > 1, whatever would be shared must differ by {shard}. */
static int shard_rules(config_reader *r, const fep_config *cfg)
{
    static const char *const own_dirs[] = { "data_dir", "state_dir" };
    unsigned i, keyed = 0;

    if (r->shards <= 1)
        return 0;
    for (i = 0; i < 2; i++) {
        const struct directive *d = directive_find(own_dirs[i]);
        if (r->templated[d - directives])
            continue;
        if (!given_line(r, own_dirs[i]))
            return file_fail(r, own_dirs[i], ": not given, and with --shard "
                             "I/N and N > 1 it must contain {shard}: the "
                             "shards would share it");
        r->line = given_line(r, own_dirs[i]);
        return reader_fail(r, "%s: must contain {shard} with --shard I/N and "
                           "N > 1: the shards would share it", own_dirs[i]);
    }
    for (i = 0; i < cfg->n_dcus && !keyed; i++)
        keyed = cfg->dcus[i].has_key;
    if (!keyed || r->templated[directive_find("fep_id") - directives])
        return 0;
    if (!given_line(r, "fep_id"))
        return file_fail(r, "fep_id", ": not given, and with keyed DCUs and "
                         "--shard I/N with N > 1 it must contain {shard}: the "
                         "shards would send under the same SID, hence the "
                         "same GCM IVs");
    r->line = given_line(r, "fep_id");
    return reader_fail(r, "fep_id: must contain {shard} with keyed DCUs and "
                       "--shard I/N with N > 1: the shards would send under "
                       "the same SID, hence the same GCM IVs");
}

/* The port of a, plus add; -1 when that is past 65535.  Port 0 (any) stays. */
static int port_add(sys_addr *a, unsigned add)
{
    if (a->port == 0)
        return 0;
    if ((unsigned)a->port + add > 65535)
        return -1;
    a->port = (uint16_t)(a->port + add);
    return 0;
}

/* listen and metrics: the file's port plus the shard number. */
static int shard_ports(config_reader *r, fep_config *cfg)
{
    if (cfg->has_listen && port_add(&cfg->listen, r->shard) != 0) {
        r->line = given_line(r, "listen");
        return reader_fail(r, "listen: the port plus the shard number (%u) "
                           "is more than 65535", r->shard);
    }
    if (cfg->has_metrics && port_add(&cfg->metrics, r->shard) != 0) {
        r->line = given_line(r, "metrics");
        return reader_fail(r, "metrics: the port plus the shard number (%u) "
                           "is more than 65535", r->shard);
    }
    return 0;
}

static void sid_swap(uint8_t *a, uint8_t *b)
{
    uint8_t t[FRAME_ID_SIZE];

    memcpy(t, a, FRAME_ID_SIZE);
    memcpy(a, b, FRAME_ID_SIZE);
    memcpy(b, t, FRAME_ID_SIZE);
}

static void sid_sift_down(uint8_t *v, size_t root, size_t n)
{
    for (;;) {
        size_t child = 2 * root + 1;

        if (child >= n)
            return;
        if (child + 1 < n && memcmp(v + child * FRAME_ID_SIZE,
                                    v + (child + 1) * FRAME_ID_SIZE,
                                    FRAME_ID_SIZE) < 0)
            child++;
        if (memcmp(v + root * FRAME_ID_SIZE, v + child * FRAME_ID_SIZE,
                   FRAME_ID_SIZE) >= 0)
            return;
        sid_swap(v + root * FRAME_ID_SIZE, v + child * FRAME_ID_SIZE);
        root = child;
    }
}

/* Heapsort of n padded SIDs in place (no allocation: a reload sorts too). */
static void sort_sids(uint8_t *v, size_t n)
{
    size_t i;

    for (i = n / 2; i-- > 0;)
        sid_sift_down(v, i, n);
    while (n > 1) {
        n--;
        sid_swap(v, v + n * FRAME_ID_SIZE);
        sid_sift_down(v, 0, n);
    }
}

/*
 * Keeps this shard's DCUs in the table (in file order, moved down in
 * place) and the other shards' SIDs in other_sids.  Why their SIDs and
 * nothing else: a push from another shard's DCU must be told apart from a
 * SID that is in no shard, and the file is the only place that says which
 * ids exist; hashing a SID gives the shard it would belong to, not whether
 * it is configured.  8 bytes a DCU (the array has the table's room, taken
 * at start-up), sorted for a binary search, and the shard is computed
 * again from the SID when it is needed.
 */
static int shard_split(config_reader *r, fep_config *cfg)
{
    unsigned i, own = 0, other = 0, n = cfg->n_dcus;

    cfg->n_other = 0;
    if (r->shards <= 1)
        return 0;
    for (i = 0; i < n; i++) {
        if (config_shard_of(cfg->dcus[i].id, r->shards) == r->shard)
            cfg->dcus[own++] = cfg->dcus[i];
        else
            frame_id_set(cfg->other_sids + (size_t)other++ * FRAME_ID_SIZE,
                         cfg->dcus[i].id);
    }
    memset(cfg->dcus + own, 0, (n - own) * sizeof *cfg->dcus);
    cfg->n_dcus = own;
    cfg->n_other = other;
    sort_sids(cfg->other_sids, other);
    config_index(cfg);
    /* The state is sized by max_dcus: by default, the shard's own DCUs and
     * the spare, not the whole file's. */
    if (!given_line(r, "max_dcus")) {
        unsigned cap = own + DCUS_SPARE;
        cfg->max_dcus = cap < cfg->dcus_cap ? cap : cfg->dcus_cap;
    }
    return 0;
}

static int sid_cmp(const void *a, const void *b)
{
    return memcmp(a, b, FRAME_ID_SIZE);
}

int config_other_shard(const fep_config *cfg, const uint8_t sid[FRAME_ID_SIZE])
{
    char id[FRAME_ID_SIZE + 1];

    if (cfg->n_other == 0 ||
        !bsearch(sid, cfg->other_sids, cfg->n_other, FRAME_ID_SIZE, sid_cmp))
        return -1;
    frame_id_str(sid, id);
    return (int)config_shard_of(id, cfg->shards);
}

/* ------------------------------------------------------------------------
 * Interface
 * ---------------------------------------------------------------------- */

/* The DCU table and its index, and with shards the other shards' SIDs,
 * each with room for cap DCUs; 0 or -1.  malloc, not calloc: apply_dcu
 * clears each entry it fills and by_sid is written before it is read, so
 * the pages of the room left for a reload are never touched and cost no
 * memory (calloc may clear them at once). */
static int tables_alloc(fep_config *cfg, unsigned cap, unsigned shards)
{
    cfg->dcus = malloc(cap * sizeof *cfg->dcus);
    cfg->by_sid = malloc(cap * sizeof *cfg->by_sid);
    cfg->other_sids = shards > 1 ? malloc((size_t)cap * FRAME_ID_SIZE) : NULL;
    cfg->dcus_cap = cap;
    return cfg->dcus && cfg->by_sid && (shards <= 1 || cfg->other_sids)
               ? 0 : -1;
}

static int config_allocate(config_reader *r, fep_config *cfg)
{
    if (r->dcu_cap == 0)
        return 0;               /* "no dcu line" is reported after the lines */
    if (tables_alloc(cfg, r->dcu_cap, r->shards) != 0)
        return file_fail(r, "out of memory for the DCU table", "");
    return 0;
}

/* malloc, not calloc, as config_allocate: until a reload, the pages are
 * never touched. */
int config_alloc_like(fep_config *staged, const fep_config *live)
{
    memset(staged, 0, sizeof *staged);
    staged->shard = live->shard;
    staged->shards = live->shards;
    return tables_alloc(staged, live->dcus_cap, live->shards);
}

/* max_dcus: given, at least the file's DCUs; else those and DCUS_SPARE. */
static int check_max_dcus(config_reader *r, fep_config *cfg)
{
    unsigned k = (unsigned)(directive_find("max_dcus") - directives);

    if (!r->given[k]) {
        cfg->max_dcus = r->dcu_cap;
        return 0;
    }
    if (cfg->max_dcus >= cfg->n_dcus)
        return 0;
    r->line = r->given[k];
    return reader_fail(r, "max_dcus: %u is less than the %u DCUs of the file",
                       cfg->max_dcus, cfg->n_dcus);
}

/* fepd's SID is in the IV of every frame it protects, a DCU's in every
 * frame the DCU protects: were they equal, both would send under the same
 * IVs with the DCU's key. */
static int check_fep_id(config_reader *r, const fep_config *cfg)
{
    unsigned k = (unsigned)(directive_find("fep_id") - directives), j;
    char where[48] = "the default", id[CONFIG_LINE_MAX + 1];
    uint8_t sid[FRAME_ID_SIZE];
    int i = config_find_dcu(cfg, cfg->sid);

    /* Every shard's SID, not only this one's: the file is one for all. */
    for (j = 0; i < 0 && r->templated[k] && j < r->shards; j++) {
        if (config_shard_expand(r->fep_id_pattern, j, id, sizeof id) != 0 ||
            strlen(id) > FRAME_ID_SIZE)
            continue;                   /* that shard's own load says so */
        frame_id_set(sid, id);
        i = config_find_dcu(cfg, sid);
        if (i >= 0)
            snprintf(where, sizeof where, "line %u, shard %u", r->given[k], j);
    }
    if (i < 0)
        return 0;
    if (r->given[k] && where[0] == 't')
        snprintf(where, sizeof where, "line %u", r->given[k]);
    r->line = dcu_line(r, (unsigned)i);
    return reader_fail(r, "dcu %s: the same id as fep_id (%s): fepd and the "
                       "DCU would send under the same GCM IVs", cfg->dcus[i].id,
                       where);
}

/* The second pass and the checks of the whole file, into cfg's arrays. */
static int config_parse(config_reader *r, fep_config *cfg)
{
    cfg->shard = r->shard;
    cfg->shards = r->shards;
    if (reader_rewind(r) != 0)
        return read_failed(r);
    config_defaults(cfg);
    if (parse_lines(r, cfg) != 0)
        return -1;
    if (cfg->n_dcus == 0)
        return file_fail(r, "no dcu line: at least one DCU must be configured",
                         "");
    if (index_dcus(r, cfg) != 0 || check_max_dcus(r, cfg) != 0)
        return -1;
    frame_id_set(cfg->sid, cfg->fep_id);
    /* The whole file is checked, whichever shard reads it; then the shard
     * keeps its own DCUs. */
    if (check_fep_id(r, cfg) != 0 || shard_rules(r, cfg) != 0 ||
        shard_ports(r, cfg) != 0)
        return -1;
    return shard_split(r, cfg);
}

/* Opens path for reading: a regular file of at most CONFIG_SIZE_MAX bytes,
 * never blocking on a FIFO or a device.  It is opened and closed here,
 * outside sys.c's ledger and fault table, like the stdio it replaces: the
 * descriptor never outlives the call, and the fault sweep is about the
 * daemon's own files. */
static int reader_open(config_reader *r, const char *path, char *err,
                       size_t errlen)
{
    struct stat st;

    memset(r, 0, sizeof *r);
    r->path = path;
    r->err = err;
    r->errlen = errlen;
    r->fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY);
    if (r->fd < 0)
        return file_fail(r, "cannot open: ", strerror(errno));
    if (fstat(r->fd, &st) != 0 || !S_ISREG(st.st_mode) ||
        st.st_size > CONFIG_SIZE_MAX) {
        int regular = fstat(r->fd, &st) == 0 && S_ISREG(st.st_mode);

        close(r->fd);
        if (!regular)
            return file_fail(r, "cannot read: ", "not a regular file");
        return file_fail(r, "cannot read: ", "larger than 64 MiB");
    }
    return 0;
}

int config_load(const char *path, fep_config *cfg, char *err, size_t errlen)
{
    return config_load_shard(path, 0, 1, cfg, err, errlen);
}

int config_load_shard(const char *path, unsigned shard, unsigned shards,
                      fep_config *cfg, char *err, size_t errlen)
{
    config_reader r;
    int rc;

    memset(cfg, 0, sizeof *cfg);
    if (reader_open(&r, path, err, errlen) != 0)
        return -1;
    r.shard = shard;
    r.shards = shards;
    rc = count_dcus(&r);
    if (rc == 0)
        rc = config_allocate(&r, cfg);
    if (rc == 0)
        rc = config_parse(&r, cfg);
    close(r.fd);
    if (rc != 0) {
        config_release(cfg);
        memset(cfg, 0, sizeof *cfg);
    }
    return rc;
}

int config_reload(const char *path, fep_config *staged, char *err,
                  size_t errlen)
{
    fep_config keep = *staged;          /* its arrays and its shard */
    unsigned cap = keep.dcus_cap;
    dcu_conf *dcus = keep.dcus;
    config_reader r;
    int rc;

    memset(staged, 0, sizeof *staged);
    staged->dcus = dcus;
    staged->by_sid = keep.by_sid;
    staged->other_sids = keep.other_sids;
    staged->dcus_cap = cap;
    if (reader_open(&r, path, err, errlen) != 0)
        return -1;
    r.shard = keep.shard;
    r.shards = keep.shards;
    r.dcu_cap = cap;
    rc = config_parse(&r, staged);     /* apply_dcu clears each entry */
    close(r.fd);
    return rc;
}

/* The bytes of directive k's value and flag in cfg. */
static const char *field_of(const fep_config *cfg, const struct directive *d)
{
    return (const char *)cfg + d->field;
}

static int flag_of(const fep_config *cfg, const struct directive *d)
{
    return d->flag == NO_FLAG ? 0
                              : *(const int *)(const void *)((const char *)cfg +
                                                             d->flag);
}

int config_reload_check(const fep_config *live, const fep_config *staged,
                        const char *path, char *err, size_t errlen)
{
    size_t k;

    for (k = 0; k < DIRECTIVES; k++) {
        const struct directive *d = &directives[k];
        unsigned line = staged->lines[k] ? staged->lines[k] : live->lines[k];

        if (d->reload == RELOADABLE ||
            (memcmp(field_of(live, d), field_of(staged, d), d->size) == 0 &&
             flag_of(live, d) == flag_of(staged, d)))
            continue;
        /* A shard's default max_dcus follows its own DCUs; the table it
         * sized stays until a restart. */
        if (strcmp(d->name, "max_dcus") == 0 && !live->lines[k] &&
            !staged->lines[k])
            continue;
        snprintf(err, errlen, "%s:%u: %s changed: a reload cannot change it "
                 "(restart fepd)%s", path, line, d->name,
                 staged->lines[k] ? "" : " (it is no longer in the file)");
        return -1;
    }
    return 0;
}

void config_reload_directives(fep_config *live, const fep_config *staged)
{
    size_t k;

    for (k = 0; k < DIRECTIVES; k++)
        if (directives[k].reload == RELOADABLE)
            memcpy((char *)live + directives[k].field,
                   field_of(staged, &directives[k]), directives[k].size);
    memcpy(live->lines, staged->lines, sizeof live->lines);
}

const char *config_directive_name(unsigned i)
{
    if (i < DIRECTIVES)
        return directives[i].name;
    return i == DIRECTIVES ? "dcu" : NULL;
}

unsigned config_sid_rank(const fep_config *cfg, const uint8_t sid[FRAME_ID_SIZE])
{
    unsigned lo = 0, hi = cfg->n_live;

    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        uint8_t own[FRAME_ID_SIZE];

        frame_id_set(own, cfg->dcus[cfg->by_sid[mid]].id);  /* as on the wire */
        if (memcmp(own, sid, FRAME_ID_SIZE) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int config_find_dcu(const fep_config *cfg, const uint8_t sid[FRAME_ID_SIZE])
{
    unsigned rank = config_sid_rank(cfg, sid);
    uint8_t own[FRAME_ID_SIZE];

    if (rank >= cfg->n_live)
        return -1;
    frame_id_set(own, cfg->dcus[cfg->by_sid[rank]].id);
    return memcmp(own, sid, FRAME_ID_SIZE) == 0 ? (int)cfg->by_sid[rank] : -1;
}

/* The arrays are zeroed with the count, so that a second call, or one after
 * a failed load (which leaves *cfg all zero), is harmless. */
void config_release(fep_config *cfg)
{
    free(cfg->dcus);
    free(cfg->by_sid);
    free(cfg->other_sids);
    cfg->dcus = NULL;
    cfg->by_sid = NULL;
    cfg->other_sids = NULL;
    cfg->n_dcus = 0;
    cfg->n_other = 0;
}
