/*
 * test_docs.c -- the documentation is checked against the code.
 *
 * The README's quick start is run as a user would paste it; the directives
 * of fepd.conf(5) are the config loader's table, the options of fepd(8) and
 * dcusim(1) are those of their -h text, and the metrics of fepd(8) are those
 * a running fepd serves, exactly, in both directions; `make install` puts
 * every file where scripts/install.sh says and `make uninstall` takes them
 * away; mandoc finds nothing to say about the pages.
 *
 * The pages are read with a few conventions of their own, stated at the top
 * of each page: options are the `.It Fl ...` items of DESCRIPTION,
 * directives the `.It Ic NAME` items of DIRECTIVES, metrics the
 * `.It Li fep_...` items of METRICS.  The quick start is the first fenced
 * block after the line `<!-- quickstart ... -->` of the README.
 *
 * Owns: one test directory per test (test_tmpdir; removed when the test
 * passed, kept under the run's root when it failed), and the processes it
 * starts: fepd, sh running the quick start (in a process group of its own,
 * killed as a whole at the end, so that a dcusim it left running goes too),
 * make.  Runs from the top of the source tree, like the other test files.
 * Must not touch: the source tree (make install writes under DESTDIR only).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <dirent.h>
#include <unistd.h>

#include "fep.h"
#include "test.h"

#define FEPD "./fepd"
#define DCUSIM "./dcusim"
#define README "README"
#define MAN_FEPD "man/fepd.8"
#define MAN_CONF "man/fepd.conf.5"
#define MAN_DCUSIM "man/dcusim.1"
#define CONF_EXAMPLE "dist/fepd.conf.example"
#define README_LINES_MAX 300
#define QUICKSTART_MARK "<!-- quickstart"
#define QUICKSTART_ADDR "127.0.0.1:7001"
#define QUICKSTART_MS 60000
#define QUICKSTART_LP_LINES "9601"      /* a header and 100 x 96 readings */
#define MAKE_MS 60000
#define FEPD_MS 10000
#define TEXT_MAX (256 * 1024)
#define PATH_T 512
#define NAMES_MAX 128
#define NAME_SIZE 64

/* A set of names (options, directives, metrics), in the order found. */
struct names {
    unsigned n;
    char name[NAMES_MAX][NAME_SIZE];
};

static char text[TEXT_MAX];             /* one file at a time */

/* ------------------------------------------------------------------------
 * Names
 * ---------------------------------------------------------------------- */

static int names_has(const struct names *s, const char *name)
{
    unsigned i;

    for (i = 0; i < s->n; i++)
        if (strcmp(s->name[i], name) == 0)
            return 1;
    return 0;
}

/* Adds name of length len once; names too long to be ours are kept cut,
 * so that they still show in a failure. */
static void names_add(struct names *s, const char *name, size_t len)
{
    char buf[NAME_SIZE];

    if (len >= NAME_SIZE)
        len = NAME_SIZE - 1;
    memcpy(buf, name, len);
    buf[len] = '\0';
    if (len == 0 || names_has(s, buf))
        return;
    CHECK(s->n < NAMES_MAX);
    if (s->n < NAMES_MAX)
        snprintf(s->name[s->n++], NAME_SIZE, "%s", buf);
}

/* Every name of a that b lacks is reported, with where each was read. */
static unsigned names_missing(const struct names *a, const char *a_from,
                              const struct names *b, const char *b_from)
{
    unsigned i, missing = 0;

    for (i = 0; i < a->n; i++) {
        if (names_has(b, a->name[i]))
            continue;
        fprintf(stderr, "  %s has '%s', %s does not\n", a_from, a->name[i],
                b_from);
        missing++;
    }
    return missing;
}

/* The two sets are equal; both directions are reported. */
static void check_same_names(const struct names *doc, const char *doc_from,
                             const struct names *code, const char *code_from)
{
    unsigned missing = names_missing(doc, doc_from, code, code_from) +
                       names_missing(code, code_from, doc, doc_from);

    CHECK(doc->n > 0);
    CHECK(code->n > 0);
    CHECK_EQ(missing, 0);
}

/* ------------------------------------------------------------------------
 * Manual pages
 * ---------------------------------------------------------------------- */

/* The next line of *p into line (NUL-terminated, no newline); 0 at end. */
static int next_line(const char **p, char *line, size_t cap)
{
    const char *s = *p, *nl;
    size_t n;

    if (*s == '\0')
        return 0;
    nl = strchr(s, '\n');
    n = nl ? (size_t)(nl - s) : strlen(s);
    *p = nl ? nl + 1 : s + n;
    if (n >= cap)
        n = cap - 1;
    memcpy(line, s, n);
    line[n] = '\0';
    return 1;
}

/* The whitespace-separated word after position p, its length in *len. */
static const char *word_at(const char *p, size_t *len)
{
    p += strspn(p, " \t");
    *len = strcspn(p, " \t");
    return p;
}

/*
 * From the page in text, section `.Sh SECTION`: every `.It MACRO ...` line
 * whose first macro is MACRO gives, for every MACRO on it, the word after
 * it, with prefix put in front ("-" for Fl, whose argument "-once" is the
 * option "--once").
 */
static void man_items(const char *page, const char *section,
                      const char *macro, const char *prefix,
                      struct names *out)
{
    const char *p = page;
    char line[1024], head[64], key[64];
    int in_section = 0;

    snprintf(head, sizeof head, ".Sh %s", section);
    snprintf(key, sizeof key, ".It %s ", macro);
    while (next_line(&p, line, sizeof line)) {
        const char *m;
        size_t mlen = strlen(macro);

        if (strncmp(line, ".Sh ", 4) == 0) {
            in_section = strcmp(line, head) == 0;
            continue;
        }
        if (!in_section || strncmp(line, key, strlen(key)) != 0)
            continue;
        for (m = line + 3; (m = strstr(m, macro)) != NULL; m += mlen) {
            char name[NAME_SIZE];
            const char *w;
            size_t len;

            if (m[-1] != ' ' || (m[mlen] != ' ' && m[mlen] != '\0'))
                continue;
            w = word_at(m + mlen, &len);
            snprintf(name, sizeof name, "%s%.*s", prefix, (int)len, w);
            names_add(out, name, strlen(name));
        }
    }
}

static int read_text(const char *path)
{
    long n = test_read_file(path, text, sizeof text);

    if (n < 0)
        fprintf(stderr, "  %s: %s\n", path, strerror(errno));
    CHECK(n > 0);
    CHECK((size_t)n < sizeof text - 1);
    return n > 0 ? 0 : -1;
}

/* ------------------------------------------------------------------------
 * Processes
 * ---------------------------------------------------------------------- */

/* The options in a -h text: every word -X or --word, wherever it is. */
static void usage_options(const char *usage, struct names *out)
{
    const char *p = usage;

    while (*p) {
        size_t len;

        p += strspn(p, " \t\n[]|(),");
        len = strcspn(p, " \t\n[]|(),");
        if (len == 2 && p[0] == '-' && p[1] != '-')
            names_add(out, p, len);
        else if (len > 2 && p[0] == '-' && p[1] == '-' && p[2] >= 'a' &&
                 p[2] <= 'z')
            names_add(out, p, len - (p[len - 1] == ':' || p[len - 1] == '.'));
        p += len;
    }
}

/* Runs "PROGRAM -h" into dir/name.help; the text in text. */
static int run_help(const char *program, const char *dir, const char *name)
{
    const char *argv[] = { program, "-h", NULL };
    char log[PATH_T];
    pid_t pid;

    snprintf(log, sizeof log, "%s/%s.help", dir, name);
    pid = test_spawn(argv, log);
    CHECK(pid > 0);
    if (pid <= 0)
        return -1;
    CHECK_EQ(test_wait(pid, FEPD_MS), 0);
    return read_text(log);
}

/* "sh -c COMMAND" in the working directory, output into log; its status. */
static int run_shell(const char *command, const char *log, int timeout_ms)
{
    const char *argv[] = { "/bin/sh", "-c", command, NULL };
    pid_t pid = test_spawn(argv, log);

    CHECK(pid > 0);
    return pid > 0 ? test_wait(pid, timeout_ms) : -1;
}

/* ------------------------------------------------------------------------
 * The README's quick start
 * ---------------------------------------------------------------------- */

/* The first fenced block after the quick-start mark, into block. */
static int quickstart_block(const char *readme, char *block, size_t cap)
{
    const char *p = strstr(readme, QUICKSTART_MARK);
    char line[1024];
    size_t n = 0;
    int in_block = 0;

    if (!p)
        return -1;
    while (next_line(&p, line, sizeof line)) {
        if (strncmp(line, "```", 3) == 0) {
            if (in_block) {
                block[n] = '\0';
                return 0;
            }
            in_block = 1;
            continue;
        }
        if (in_block) {
            int w = snprintf(block + n, cap - n, "%s\n", line);
            if (w < 0 || (size_t)w >= cap - n)
                return -1;
            n += (size_t)w;
        }
    }
    return -1;
}

/* Every "from" in s becomes "to", into out. */
static int replace_all(const char *s, const char *from, const char *to,
                       char *out, size_t cap)
{
    size_t n = 0, flen = strlen(from), tlen = strlen(to);

    while (*s) {
        const char *add = s;
        size_t len = 1;

        if (strncmp(s, from, flen) == 0) {
            add = to;
            len = tlen;
            s += flen;
        } else {
            s++;
        }
        if (n + len >= cap)
            return -1;
        memcpy(out + n, add, len);
        n += len;
    }
    out[n] = '\0';
    return 0;
}

/* sh -e script in dir, in a process group of its own, with the tree's
 * programs first on PATH and TMPDIR in dir; output to log. */
static pid_t spawn_script(const char *dir, const char *script,
                          const char *log)
{
    char tree[PATH_T], path[PATH_T * 4];
    const char *old = getenv("PATH");
    pid_t pid;

    if (!getcwd(tree, sizeof tree))
        return -1;
    snprintf(path, sizeof path, "%s:%s", tree, old ? old : "/usr/bin:/bin");
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid != 0)
        return pid;
    setpgid(0, 0);
    if (chdir(dir) == 0 && setenv("PATH", path, 1) == 0 &&
        setenv("TMPDIR", dir, 1) == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execl("/bin/sh", "sh", "-e", script, (char *)NULL);
    }
    _exit(127);
    return -1;                          /* not reached; not every cc knows */
}

static void test_docs_readme_quickstart(void)
{
    static char block[16 * 1024], script[16 * 1024];
    char dir[PATH_T], file[PATH_T + 32], log[PATH_T + 32], addr[32], want[64];
    const char *p;
    long lines = 0;
    pid_t pid;
    int rc, port = test_free_port();

    if (read_text(README) != 0)
        return;
    for (p = text; *p; p++)
        lines += *p == '\n';
    CHECK(lines <= README_LINES_MAX);
    if (lines > README_LINES_MAX)
        fprintf(stderr, "  README: %ld lines\n", lines);
    if (quickstart_block(text, block, sizeof block) != 0) {
        CHECK(!"no quick-start block in the README");
        return;
    }
    /* The quick start uses a fixed port; the test, a free one. */
    CHECK(strstr(block, QUICKSTART_ADDR) != NULL);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    CHECK(replace_all(block, QUICKSTART_ADDR, addr, script,
                      sizeof script) == 0);
    if (test_tmpdir(dir, sizeof dir, "quickstart") != 0) {
        CHECK(!"cannot make a directory");
        return;
    }
    snprintf(file, sizeof file, "%s/quickstart.sh", dir);
    snprintf(log, sizeof log, "%s/quickstart.log", dir);
    CHECK(test_write_file(file, script) == 0);

    pid = spawn_script(dir, file, log);
    CHECK(pid > 0);
    if (pid <= 0)
        return;
    rc = test_wait(pid, QUICKSTART_MS);
    kill(-pid, SIGKILL);                /* a dcusim it left behind */
    CHECK_EQ(rc, 0);
    CHECK(read_text(log) == 0);
    snprintf(want, sizeof want, "\n%s\n", QUICKSTART_LP_LINES);
    CHECK(strstr(text, want) != NULL);
    CHECK(strstr(text, "dcu_id,meter_id,ts,") != NULL);
    CHECK(strstr(text, ": ok (") != NULL);
    if (test_failing())
        fprintf(stderr, "  the quick start said:\n%s\n", text);
    else
        test_remove_tree(dir);
}

/* ------------------------------------------------------------------------
 * Pages against code
 * ---------------------------------------------------------------------- */

static void test_docs_conf_directives(void)
{
    static struct names doc, code, example;
    const char *name, *p;
    char line[1024];
    unsigned i;

    memset(&doc, 0, sizeof doc);
    memset(&code, 0, sizeof code);
    memset(&example, 0, sizeof example);
    for (i = 0; (name = config_directive_name(i)) != NULL; i++)
        names_add(&code, name, strlen(name));
    if (read_text(MAN_CONF) != 0)
        return;
    man_items(text, "DIRECTIVES", "Ic", "", &doc);
    check_same_names(&doc, MAN_CONF, &code, "config.c");

    /* The example shows every directive, given or commented out. */
    if (read_text(CONF_EXAMPLE) != 0)
        return;
    for (p = text; next_line(&p, line, sizeof line);) {
        size_t len;
        const char *w = word_at(line + (line[0] == '#'), &len);
        names_add(&example, w, len);
    }
    for (i = 0; i < code.n; i++) {
        if (names_has(&example, code.name[i]))
            continue;
        fprintf(stderr, "  %s lacks '%s'\n", CONF_EXAMPLE, code.name[i]);
        CHECK(!"a directive missing from the example");
    }
}

static void test_docs_fepd_options(void)
{
    static struct names doc, code;
    char dir[PATH_T];

    memset(&doc, 0, sizeof doc);
    memset(&code, 0, sizeof code);
    CHECK(test_tmpdir(dir, sizeof dir, "fepd-options") == 0);
    if (run_help(FEPD, dir, "fepd") != 0)
        return;
    usage_options(text, &code);
    if (read_text(MAN_FEPD) != 0)
        return;
    man_items(text, "DESCRIPTION", "Fl", "-", &doc);
    check_same_names(&doc, MAN_FEPD, &code, "fepd -h");
    if (!test_failing())
        test_remove_tree(dir);
}

static void test_docs_dcusim_options(void)
{
    static struct names doc, code;
    char dir[PATH_T];

    memset(&doc, 0, sizeof doc);
    memset(&code, 0, sizeof code);
    CHECK(test_tmpdir(dir, sizeof dir, "dcusim-options") == 0);
    if (run_help(DCUSIM, dir, "dcusim") != 0)
        return;
    usage_options(text, &code);
    if (read_text(MAN_DCUSIM) != 0)
        return;
    man_items(text, "DESCRIPTION", "Fl", "-", &doc);
    check_same_names(&doc, MAN_DCUSIM, &code, "dcusim -h");
    if (!test_failing())
        test_remove_tree(dir);
}

static void test_docs_metrics(void)
{
    static struct names doc, code;
    char dir[PATH_T], conf[PATH_T + 16], log[PATH_T + 16], body[PATH_T * 3];
    const char *argv[] = { FEPD, "-c", conf, NULL };
    const char *p;
    char line[1024];
    int port = test_free_port();
    pid_t pid;

    memset(&doc, 0, sizeof doc);
    memset(&code, 0, sizeof code);
    CHECK(test_tmpdir(dir, sizeof dir, "metrics") == 0);
    snprintf(conf, sizeof conf, "%s/fep.conf", dir);
    snprintf(log, sizeof log, "%s/fepd.log", dir);
    snprintf(body, sizeof body, "metrics 127.0.0.1:%d\ndata_dir %s/data\n"
             "state_dir %s/state\ndcu DCU00001 -\n", port, dir, dir);
    CHECK(test_write_file(conf, body) == 0);
    pid = test_spawn(argv, log);
    CHECK(pid > 0);
    if (pid <= 0)
        return;
    CHECK(test_wait_port(port, FEPD_MS) == 0);
    CHECK(test_http_get(port, "/metrics", text, sizeof text, 5000) > 0);
    kill(pid, SIGTERM);
    CHECK_EQ(test_wait(pid, FEPD_MS), 0);
    for (p = text; next_line(&p, line, sizeof line);) {
        size_t len;
        const char *w;

        if (strncmp(line, "# TYPE ", 7) != 0)
            continue;
        w = word_at(line + 7, &len);
        names_add(&code, w, len);
    }
    if (read_text(MAN_FEPD) != 0)
        return;
    man_items(text, "METRICS", "Li", "", &doc);
    check_same_names(&doc, MAN_FEPD, &code, "GET /metrics");
    if (!test_failing())
        test_remove_tree(dir);
}

/* ------------------------------------------------------------------------
 * make install, make uninstall, mandoc
 * ---------------------------------------------------------------------- */

/* What `make install DESTDIR=d PREFIX=/usr` puts under d, and its mode. */
static const struct installed {
    const char *path;
    unsigned mode;
} installed[] = {
    { "usr/sbin/fepd", 0755 },
    { "usr/bin/dcusim", 0755 },
    { "usr/share/man/man8/fepd.8", 0644 },
    { "usr/share/man/man5/fepd.conf.5", 0644 },
    { "usr/share/man/man1/dcusim.1", 0644 },
    { "usr/share/doc/fepd/fepd.conf.example", 0644 },
    { "etc/logrotate.d/fepd", 0644 },
    { "usr/lib/systemd/system/fepd.service", 0644 },
    { "usr/lib/systemd/system/fepd@.service", 0644 },
};

#define INSTALLED (sizeof installed / sizeof installed[0])

/* Regular files under path, at any depth. */
static unsigned count_files(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;
    unsigned n = 0;

    if (!d)
        return 0;
    while ((e = readdir(d)) != NULL) {
        char sub[PATH_T * 2];
        struct stat st;

        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        if (lstat(sub, &st) != 0)
            continue;
        n += S_ISDIR(st.st_mode) ? count_files(sub) : 1;
    }
    closedir(d);
    return n;
}

static void check_unit(const char *dest, const char *name)
{
    char path[PATH_T * 2];

    snprintf(path, sizeof path, "%s/usr/lib/systemd/system/%s", dest, name);
    if (read_text(path) != 0)
        return;
    CHECK(strstr(text, "\nExecStart=/usr/sbin/fepd -c /etc/fepd/fepd.conf") !=
          NULL);
    CHECK(strstr(text, "@SBINDIR@") == NULL);
    CHECK(strstr(text, "@SYSCONFDIR@") == NULL);
    CHECK(strstr(text, "\nType=notify\n") != NULL);
}

static void test_docs_install(void)
{
    char dir[PATH_T], dest[PATH_T + 16], cmd[PATH_T * 2], log[PATH_T + 16];
    unsigned i;
    int rc;

    if (test_tmpdir(dir, sizeof dir, "install") != 0) {
        CHECK(!"cannot make a directory");
        return;
    }
    snprintf(dest, sizeof dest, "%s/root", dir);
    snprintf(log, sizeof log, "%s/make.log", dir);
    snprintf(cmd, sizeof cmd, "make install DESTDIR='%s' PREFIX=/usr", dest);
    rc = run_shell(cmd, log, MAKE_MS);
    CHECK_EQ(rc, 0);
    for (i = 0; i < INSTALLED; i++) {
        char path[PATH_T * 2];
        struct stat st;

        snprintf(path, sizeof path, "%s/%s", dest, installed[i].path);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
            fprintf(stderr, "  not installed: %s\n", installed[i].path);
            CHECK(!"a file not installed");
            continue;
        }
        CHECK_EQ(st.st_mode & 07777, installed[i].mode);
    }
    CHECK_EQ(count_files(dest), INSTALLED);
    check_unit(dest, "fepd.service");
    check_unit(dest, "fepd@.service");
    CHECK(strstr(text, "--shard %i/${FEPD_SHARDS}") != NULL);
    CHECK(strstr(text, "\nEnvironmentFile=/etc/fepd/shards.env\n") != NULL);

    snprintf(cmd, sizeof cmd, "make uninstall DESTDIR='%s' PREFIX=/usr", dest);
    if (rc == 0)
        rc = run_shell(cmd, log, MAKE_MS);
    CHECK_EQ(rc, 0);
    CHECK_EQ(count_files(dest), 0);
    if (rc != 0 && read_text(log) == 0)
        fprintf(stderr, "  make said:\n%s\n", text);
    if (!test_failing())
        test_remove_tree(dir);
}

/*
 * mandoc -Tlint on the pages: nothing, except that a page another page
 * refers to is not installed on this machine (our own pages are not, in a
 * source tree) or that the machine's mandoc.db is stale: those say
 * something of the machine, not of the page.
 */
static void test_docs_man_lint(void)
{
    char dir[PATH_T], log[PATH_T + 16], line[1024];
    const char *p;
    unsigned said = 0;
    int rc;

    if (run_shell("command -v mandoc", NULL, FEPD_MS) != 0) {
        printf("docs_man_lint: mandoc not found: skipped\n");
        return;
    }
    CHECK(test_tmpdir(dir, sizeof dir, "lint") == 0);
    snprintf(log, sizeof log, "%s/lint.log", dir);
    rc = run_shell("mandoc -Tlint " MAN_FEPD " " MAN_CONF " " MAN_DCUSIM,
                   log, FEPD_MS);
    CHECK(rc == 0 || rc == 1);          /* 1: style messages, seen below */
    if (read_text(log) != 0)
        return;
    for (p = text; next_line(&p, line, sizeof line);) {
        if (line[0] == '\0' || strstr(line, "referenced manual not found") ||
            strstr(line, "mandoc.db"))
            continue;
        fprintf(stderr, "  %s\n", line);
        said++;
    }
    CHECK_EQ(said, 0);
    if (!test_failing())
        test_remove_tree(dir);
}

void test_docs_suite(void)
{
    test_run("docs_readme_quickstart", test_docs_readme_quickstart);
    test_run("docs_conf_directives", test_docs_conf_directives);
    test_run("docs_fepd_options", test_docs_fepd_options);
    test_run("docs_dcusim_options", test_docs_dcusim_options);
    test_run("docs_metrics", test_docs_metrics);
    test_run("docs_install", test_docs_install);
    test_run("docs_man_lint", test_docs_man_lint);
}
