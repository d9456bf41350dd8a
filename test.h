/*
 * test.h -- the test runner shared by the test files.
 *
 * A test is a function; test_run() runs it when its name matches the filter
 * given on the command line, and counts it passed when every CHECK in it
 * held.  The runner's last line is "N passed, M failed".
 *
 * Owns: the counters in test.c.  The process helpers start real processes
 * (fepd, dcusim) and always reap them: a test never leaves one behind.
 */
#ifndef TEST_H
#define TEST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

void test_run(const char *name, void (*fn)(void));
void test_check(int ok, const char *file, int line, const char *expr);
void test_check_u64(uint64_t a, uint64_t b, const char *file, int line,
                    const char *ea, const char *eb);
void test_check_mem(const void *a, const void *b, size_t n, const char *file,
                    int line, const char *ea, const char *eb);

/* 1 when a CHECK of the running test has failed (to keep its files). */
int test_failing(void);

#define CHECK(c) test_check(!!(c), __FILE__, __LINE__, #c)
#define CHECK_EQ(a, b) \
    test_check_u64((uint64_t)(a), (uint64_t)(b), __FILE__, __LINE__, #a, #b)
#define CHECK_MEM(a, b, n) test_check_mem((a), (b), (n), __FILE__, __LINE__, #a, #b)

/* Hex text ("7E 01 20", spaces and newlines ignored) to bytes; returns count. */
size_t test_unhex(const char *hex, uint8_t *out, size_t cap);

/* Processes.  argv[0] is a path.  stdout and stderr go to log_path
 * (or /dev/null when NULL).  Returns the pid, or -1.  With
 * FEP_TEST_VALGRIND in the environment, fepd and fepd_t run under valgrind
 * (exit 99 on any memory error or leak). */
pid_t test_spawn(const char *const argv[], const char *log_path);
/* The same with stdout and stderr on out_fd, which the child closes. */
pid_t test_spawn_to(const char *const argv[], int out_fd);
/* Waits up to timeout_ms.  Returns the exit status, 128 + signal when it was
 * killed by a signal, or -1 on timeout (the process is then killed with
 * SIGKILL and reaped). */
int test_wait(pid_t pid, int timeout_ms);

/* Sleeps ms milliseconds (for polling a condition against a deadline;
 * sys_now_ms is the clock). */
void test_sleep_ms(int ms);

/* A fresh empty directory under the run's temporary root (test.c), name in
 * out; 0 or -1. */
int test_tmpdir(char *out, size_t cap, const char *tag);
/* A TCP port on 127.0.0.1 that was free a moment ago. */
int test_free_port(void);
/* A socket listening on 127.0.0.1:port (0: any port); -1 on failure. */
int test_listen(int port);
/* Whole file into buf (NUL-terminated); returns length or -1. */
long test_read_file(const char *path, char *buf, size_t cap);
int test_write_file(const char *path, const char *text);
/* Waits (bounded) until something listens on 127.0.0.1:port; 0 or -1. */
int test_wait_port(int port, int timeout_ms);
/* Lines in a file that contain needle. */
long test_count_lines(const char *path, const char *needle);
/* How many times needle occurs in text. */
long test_count_in(const char *text, const char *needle);

/* Logs and key=value lines (fepd's and dcusim's logs). */
/* The last line of path that contains needle, into out; 0 or -1. */
int test_log_last_line(const char *path, const char *needle, char *out,
                       size_t cap);
/* The number after "key=" in line, or -1. */
long long test_kv_get(const char *line, const char *key);
/* Lines of path that contain needle (0 when the file is missing). */
long test_log_count(const char *path, const char *needle);
/* Waits (bounded by ms) until path has count lines with needle; 0 or -1. */
int test_wait_log(const char *path, const char *needle, long count, int ms);
/* rm -r path. */
void test_remove_tree(const char *path);

/* A unit test's directory, one at a time.  test_unit_begin makes dir (a
 * fresh empty directory, in dir[0..cap)), clears sys.c's fault injection
 * and notes the descriptor ledger; test_unit_end clears the faults, checks
 * the ledger and removes dir. */
void test_unit_begin(char *dir, size_t cap, const char *tag);
void test_unit_end(const char *dir);
/* Checks that every descriptor opened since test_unit_begin was closed. */
void test_unit_check_ledger(void);
/* dir/name, in one of two buffers taken in turn, so that one call can take
 * two paths (rename(test_path(d, a), test_path(d, b))). */
const char *test_path(const char *dir, const char *name);

/* Records: the LP rows of lp.csv (9 fields) or of dcusim's acked CSV (6),
 * as sets keyed by (dcu_id, meter_id, ts).  test_recs_load adds a file's
 * rows (-1 when it cannot be read), counting headers and bad lines; the
 * queries want sorted sets. */
struct test_rec {
    char dcu[16];
    char meter[16];
    unsigned long ts, import_wh, export_wh, status;
};

struct test_recs {
    struct test_rec *v;
    size_t n, cap;
    long headers;                       /* header lines, first line of a file */
    long misplaced_headers;             /* header lines anywhere else */
    long bad;                           /* torn or malformed lines */
};
void test_recs_free(struct test_recs *r);
int test_recs_load(struct test_recs *r, const char *path, unsigned fields);
void test_recs_sort(struct test_recs *r);
/* Readings present more than once. */
size_t test_recs_dups(const struct test_recs *r);
/* Records of want that have lacks, or holds with other values. */
size_t test_recs_missing(const struct test_recs *have,
                         const struct test_recs *want);
/* The rows of DCU DCU%05u. */
size_t test_recs_of_dcu(const struct test_recs *r, unsigned dcu);

/* Raw peers, frame by frame, with blocking sockets bounded by RAW_MS. */
#define RAW_MS 3000                     /* a raw socket's read or write */
#define NACK(code) (0x100 + (code))     /* raw_answer's value for a NACK */
struct frame;
struct gcm_key;
/* A blocking TCP socket to 127.0.0.1:port whose reads and writes give up
 * after timeout_ms, or -1; raw_connect gives up after RAW_MS. */
int test_connect(int port, int timeout_ms);
int raw_connect(int port);
/* GET path from 127.0.0.1:port: the whole response, NUL-terminated, in
 * buf, and its length once the server has closed; -1 when the connection
 * failed or the response did not end within ms or within cap - 1 bytes. */
long test_http_get(int port, const char *path, char *buf, size_t cap, int ms);
/* The status code of an HTTP response, or -1. */
int test_http_status(const char *response);
/* The port of "host:port". */
int port_of(const char *addr);
/* One frame from sid to did: a K of one record, an S, or (other cmd) an
 * empty payload; protected under key with IC ic when key is given. */
int raw_send(int fd, const char *sid, const char *did, uint8_t ctl,
             uint8_t cmd, uint16_t qsn, uint16_t fsn,
             const struct gcm_key *key, uint32_t ic);
/* The next frame on fd: its command, NACK(code), or -1; its header in
 * *hdr when given. */
int raw_answer(int fd, const struct gcm_key *key, struct frame *hdr);
/* Whether the peer closed fd within ms. */
int raw_closed(int fd, int ms);
/* A listening socket on 127.0.0.1 (a DCU fepd polls); its port in *port. */
int dcu_listen(int *port);
/* The next connection on it, or -1 after RAW_MS. */
int dcu_accept(int lfd);

/* The suites, one per test file. */
void test_crypto_suite(void);
void test_frame_suite(void);
void test_sim_suite(void);
void test_config_suite(void);
void test_store_suite(void);
void test_state_suite(void);
void test_fep_suite(void);
void test_fault_suite(void);
void test_trust_suite(void);
void test_docs_suite(void);
void test_daemon_suite(void);
void test_shard_suite(void);

#endif /* TEST_H */
