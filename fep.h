/*
 * fep.h -- the limits, types and interfaces shared by fepd, dcusim, the
 * tests and the benchmark.
 *
 * Owns: nothing at run time.  Every limit of the program is defined here,
 * with what it costs in memory, and the relations between limits are checked
 * at compile time (FEP_STATIC_ASSERT below).  There are no global variables
 * behind these declarations except the ones a file names in its own top
 * comment (the log level, the descriptor ledger and the notification
 * socket in sys.c).
 *
 * Byte order: every integer on the wire is big-endian.  Use the get_/put_
 * helpers below; never cast a buffer to a struct.
 */
#ifndef FEP_H
#define FEP_H

/* fepd's and dcusim's version (-V, the start-up log line, fep_build_info). */
#define FEP_VERSION "1.1.0"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/select.h>

/* C99 compile-time assertion: a negative array size fails the build. */
#define FEP_GLUE2(a, b) a##b
#define FEP_GLUE(a, b) FEP_GLUE2(a, b)
#define FEP_STATIC_ASSERT(cond, name) \
    typedef char FEP_GLUE(static_assert_##name##_, __LINE__)[(cond) ? 1 : -1]

/* ------------------------------------------------------------------------
 * Protocol limits (PROTOCOL.md section 2)
 * ---------------------------------------------------------------------- */

#define FRAME_HEADER_SIZE 30
#define FRAME_CRC_SIZE 2
#define FRAME_LEN_MIN 2                 /* LEN = DATA + CRC */
#define FRAME_LEN_MAX 2018
#define FRAME_SIZE_MAX (FRAME_HEADER_SIZE + FRAME_LEN_MAX)          /* 2048 */
#define FRAME_DATA_MAX (FRAME_LEN_MAX - FRAME_CRC_SIZE)             /* 2016 */
#define FRAME_ID_SIZE 8
#define FRAME_SOF 0x7E
#define FRAME_VERSION 0x01

/* Header offsets */
#define HDR_SOF 0
#define HDR_VER 1
#define HDR_CTL 2
#define HDR_CMD 3
#define HDR_SID 4
#define HDR_DID 12
#define HDR_QSN 20
#define HDR_MSN 22
#define HDR_FSN 24
#define HDR_RSV 26
#define HDR_LEN 27
#define HDR_HCS 29

/* CTL bits */
#define CTL_DIR_DCU 0x80                /* 1 = DCU->FEP */
#define CTL_SEC 0x40                    /* DATA is protected */
#define CTL_LAST 0x20                   /* last packet of a response */
#define CTL_RESERVED 0x1F               /* must be zero */

/* Security (PROTOCOL.md section 4) */
#define KEY_SIZE 16
#define SEC_IC_SIZE 4
#define SEC_TAG_SIZE 12
#define SEC_OVERHEAD (SEC_IC_SIZE + SEC_TAG_SIZE)                  /* 16 */
#define GCM_IV_SIZE 12
#define GCM_TAG_FULL 16

/* Largest plaintext payload of one frame */
#define PAYLOAD_MAX_PLAIN FRAME_DATA_MAX                          /* 2016 */
#define PAYLOAD_MAX_SEC (FRAME_DATA_MAX - SEC_OVERHEAD)           /* 2000 */

/* Payload layouts (PROTOCOL.md section 3) */
#define METER_ID_SIZE 12
#define LP_REQ_SIZE 8                   /* from u32, to u32 */
#define LP_RECORD_SIZE 26               /* meter 12, ts 4, imp 4, exp 4, st 2 */
#define METER_ITEM_SIZE 17              /* meter 12, u8, u32 (M and N) */
#define DCU_STATUS_SIZE 14
#define NACK_SIZE 1
#define ITEM_COUNT_MAX 255              /* count is a u8 */
/* Items that fit in one packet: count byte + items <= payload maximum. */
#define LP_RECORDS_MAX_PLAIN ((PAYLOAD_MAX_PLAIN - 1) / LP_RECORD_SIZE) /* 77 */
#define LP_RECORDS_MAX_SEC ((PAYLOAD_MAX_SEC - 1) / LP_RECORD_SIZE)     /* 76 */
#define METER_ITEMS_MAX_PLAIN ((PAYLOAD_MAX_PLAIN - 1) / METER_ITEM_SIZE) /* 118 */
#define METER_ITEMS_MAX_SEC ((PAYLOAD_MAX_SEC - 1) / METER_ITEM_SIZE)     /* 117 */

/* Receiver rules (PROTOCOL.md section 5) */
#define GARBAGE_MAX 2048                /* more than this on one connection: close */
#define CRC_STRIKES_MAX 3               /* the third consecutive mismatch closes */

/* Commands (PROTOCOL.md section 3) */
enum fep_cmd {
    CMD_LP_REQ = 'k',
    CMD_DCU_STATUS_REQ = 's',
    CMD_METER_STATUS_REQ = 'm',
    CMD_METER_CHANGE_REQ = 'n',
    CMD_LP_RSP = 'K',
    CMD_DCU_STATUS_RSP = 'S',
    CMD_METER_STATUS_RSP = 'M',
    CMD_METER_CHANGE_RSP = 'N',
    CMD_ACK = 'A',
    CMD_NACK = 'a'
};

/*
 * One error enum for the whole program.  Values 1..10 are the NACK codes of
 * PROTOCOL.md section 5 and go on the wire as they are; the others never do.
 */
typedef enum fep_err {
    FEP_OK = 0,
    FEP_ERR_CRC = 0x01,
    FEP_ERR_HEADER = 0x02,
    FEP_ERR_LENGTH = 0x03,
    FEP_ERR_SECURITY = 0x04,
    FEP_ERR_REPLAY = 0x05,
    FEP_ERR_UNKNOWN = 0x06,
    FEP_ERR_COMMAND = 0x07,
    FEP_ERR_SEQUENCE = 0x08,
    FEP_ERR_STORE = 0x09,
    FEP_ERR_BUSY = 0x0A,
    FEP_NACK_CODE_MAX = 0x0A,
    /* Local conditions, never sent. */
    FEP_ERR_GARBAGE = 0x20,             /* more than GARBAGE_MAX garbage bytes */
    FEP_ERR_TIMEOUT,                    /* a deadline expired */
    FEP_ERR_IO,                         /* a system call failed (errno logged) */
    FEP_ERR_CLOSED,                     /* the peer closed the connection */
    FEP_ERR_NACKED,                     /* the peer answered with a NACK */
    FEP_ERR_NOSPACE,                    /* a caller's buffer is too small */
    FEP_ERR_CONNECT,                    /* the connection could not be made */
    FEP_ERR_SHUTDOWN,                   /* the process is stopping */
    FEP_ERR_NO_IC                       /* no IC to protect a frame with */
} fep_err;

/* A short English phrase ("CRC mismatch"); never NULL. */
const char *fep_strerror(fep_err err);
/* The metrics label of a NACK code ("crc" ... "busy"), or "other". */
const char *fep_nack_name(unsigned code);

/* ------------------------------------------------------------------------
 * Endian-free codecs
 * ---------------------------------------------------------------------- */

static inline uint16_t get_u16be(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | (unsigned)p[1]);
}

static inline uint32_t get_u32be(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
           (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static inline void put_u16be(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void put_u32be(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* The value of a hex digit, -1 for any other character (keys in the config
 * file, the state file, dcusim's options, test vectors). */
static inline int hex_digit(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* 64-bit FNV-1a (offset basis 0xcbf29ce484222325, prime 0x100000001b3):
 * the shard of a DCU (DESIGN.md section 3) and fepd's hash indexes. */
static inline uint64_t fnv1a64(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325u;

    while (n-- > 0) {
        h ^= *b++;
        h *= 0x100000001b3u;
    }
    return h;
}

/* The jump consistent hash of Lamping and Veach (2014): a bucket in
 * 0..buckets-1 (buckets 1..2^31-1) such that going from N to N+1 buckets
 * moves only about 1/(N+1) of the keys, all of them to the new bucket.
 * The shard of a DCU is jump_hash(fnv1a64(ID), N) (DESIGN.md section 3). */
static inline uint32_t jump_hash(uint64_t key, uint32_t buckets)
{
    int64_t b = -1, j = 0;

    while (j < (int64_t)buckets) {
        b = j;
        key = key * 2862933555777941757ULL + 1;
        /* (b + 1) * 2^31 / ((key >> 33) + 1) in double, as the reference:
         * at most 2^62, so the conversion back cannot overflow. */
        j = (int64_t)((double)(b + 1) *
                      ((double)(1LL << 31) / (double)((key >> 33) + 1)));
    }
    return (uint32_t)b;
}

/* ------------------------------------------------------------------------
 * crypto.c -- AES-128 (encryption direction), GHASH, AES-128-GCM,
 * CRC-16/X-25 and the header XOR check.  No allocation; caller-owned
 * contexts; no secret-dependent table lookups or branches.
 * ---------------------------------------------------------------------- */

/* Expanded AES-128 key, in whatever form crypto.c computes fastest. */
typedef struct aes128 {
    /* 11 round keys, bitsliced and compressed to 2 words each: 176 bytes. */
    uint64_t sk[22];
} aes128;

/* A GCM key: the expanded AES key and the hash subkey H = AES_K(0^128). */
typedef struct gcm_key {
    aes128 aes;
    uint64_t h_hi, h_lo;                /* H, big-endian halves; 192 bytes in all */
} gcm_key;

void aes128_init(aes128 *ctx, const uint8_t key[KEY_SIZE]);
void aes128_encrypt(const aes128 *ctx, const uint8_t in[16], uint8_t out[16]);

void gcm_init(gcm_key *gk, const uint8_t key[KEY_SIZE]);
/*
 * Encrypts len bytes of plain into cipher (which may be plain itself) and
 * writes tag_len (1..16) bytes of the tag.  iv is 12 bytes.
 */
void gcm_seal(const gcm_key *gk, const uint8_t iv[GCM_IV_SIZE],
              const uint8_t *aad, size_t aad_len,
              const uint8_t *plain, size_t len, uint8_t *cipher,
              uint8_t *tag, size_t tag_len);
/*
 * Checks the tag first (constant time); only if it verifies, decrypts len
 * bytes of cipher into plain (which may be cipher itself).  Returns 0 when the
 * tag verifies, -1 when it does not (plain is then left untouched).
 */
int gcm_open(const gcm_key *gk, const uint8_t iv[GCM_IV_SIZE],
             const uint8_t *aad, size_t aad_len,
             const uint8_t *cipher, size_t len, uint8_t *plain,
             const uint8_t *tag, size_t tag_len);

/* CRC-16/X-25 (poly 0x1021 reflected, init 0xFFFF, xorout 0xFFFF), check 0x906E. */
uint16_t crc16_x25(const uint8_t *p, size_t n);
/* The header check: XOR of n bytes. */
uint8_t hcs_xor(const uint8_t *p, size_t n);

/* ------------------------------------------------------------------------
 * frame.c -- the frame parser and encoder, and the payload codecs.
 * Pure functions over caller buffers: no I/O, no allocation.
 * ---------------------------------------------------------------------- */

/* A decoded frame.  The pointers point into the buffer that was scanned and
 * stay valid only while that buffer is not modified. */
typedef struct frame {
    uint8_t ctl;
    uint8_t cmd;
    uint8_t sid[FRAME_ID_SIZE];
    uint8_t did[FRAME_ID_SIZE];
    uint16_t qsn, msn, fsn;
    uint16_t len;                       /* LEN field: DATA + CRC */
    const uint8_t *raw;                 /* the frame, header first */
    const uint8_t *data;                /* DATA = raw + 30 */
    size_t data_len;                    /* LEN - 2 */
} frame;

typedef enum frame_result {
    FRAME_NEED_MORE = 0,                /* no complete frame yet */
    FRAME_READY,                        /* *f holds a frame whose CRC verified */
    FRAME_BAD_CRC,                      /* *f holds the header; frame consumed */
    FRAME_BAD_LENGTH                    /* *f holds the header; LEN out of range */
} frame_result;

/*
 * Looks at buf[0..len) for the next frame.  Bytes before a SOF, and the SOF
 * of a header that is not valid, are garbage: they are skipped (*skipped
 * counts them) and are part of *consumed.  On FRAME_READY and FRAME_BAD_CRC,
 * *consumed also covers the whole frame; on FRAME_BAD_LENGTH it covers the
 * header; on FRAME_NEED_MORE it covers only the garbage, so that a partial
 * frame stays at the front.  Never reads outside buf[0..len).
 */
frame_result frame_scan(const uint8_t *buf, size_t len, frame *f,
                        size_t *consumed, size_t *skipped);

/*
 * The receive side of a connection: a fixed buffer of one largest frame.
 * That is enough because the caller takes frames until FRAME_NEED_MORE
 * before it reads again: what is then held is a partial frame, fewer bytes
 * than the largest, and frame_rx_space moves it to the front, so the room
 * offered always completes it (stop-and-wait: one frame is in flight).
 * Owns its buffer; frames returned by frame_rx_next point into it and stay
 * valid until the next call to frame_rx_space or frame_rx_next.
 */
#define RX_BUF_SIZE FRAME_SIZE_MAX                          /* 2048 bytes */
typedef struct frame_rx {
    uint8_t buf[RX_BUF_SIZE];
    uint16_t start;                     /* first byte not yet consumed */
    uint16_t end;                       /* one past the last byte received */
    uint16_t pending;                   /* bytes to consume at the next call */
    uint32_t garbage;                   /* garbage bytes seen on this connection */
} frame_rx;                             /* 2060 bytes */

void frame_rx_reset(frame_rx *rx);
/* Where the next read goes, and how much fits there.  Once the caller has
 * taken frames until FRAME_NEED_MORE, the bytes held (a partial frame) are
 * at the front and held + room >= FRAME_SIZE_MAX: room for the rest of any
 * frame, and never 0.  A caller that leaves whole frames untaken can be
 * offered less, down to 0 when the buffer is full. */
uint8_t *frame_rx_space(frame_rx *rx, size_t *room);
void frame_rx_commit(frame_rx *rx, size_t n);
/* The next frame or condition, as frame_scan; garbage is added to rx->garbage. */
frame_result frame_rx_next(frame_rx *rx, frame *f);
/* Bytes held that are not yet consumed (a partial frame, for example). */
size_t frame_rx_held(const frame_rx *rx);

/* What a sender puts in a header; SOF, VER, RSV, LEN, HCS are computed. */
typedef struct frame_hdr {
    uint8_t ctl;                        /* DIR and LAST; SEC is set by the encoder */
    uint8_t cmd;
    uint8_t sid[FRAME_ID_SIZE];
    uint8_t did[FRAME_ID_SIZE];
    uint16_t qsn, msn, fsn;
} frame_hdr;

/*
 * Writes a whole frame into out[0..cap): plaintext when key is NULL, else
 * protected with invocation counter ic (PROTOCOL.md section 4 sender order).
 * CTL is written as given, plus SEC when key != NULL.
 * Returns the frame size, or 0 when the payload is too long or the frame
 * does not fit in cap (out is then unspecified).
 */
size_t frame_encode(uint8_t *out, size_t cap, const frame_hdr *h,
                    const uint8_t *payload, size_t payload_len,
                    const gcm_key *key, uint32_t ic);

/*
 * Verifies and decrypts the DATA of a protected frame into plain (room for
 * f->data_len bytes).  FEP_OK: *plain_len and *ic are set.  FEP_ERR_SECURITY:
 * DATA shorter than IC + TAG, or the tag does not verify.
 */
fep_err frame_open(const frame *f, const gcm_key *key, uint8_t *plain,
                   size_t *plain_len, uint32_t *ic);

/* Sets an 8-byte id from a string of 1..8 characters, right-padded with spaces. */
void frame_id_set(uint8_t id[FRAME_ID_SIZE], const char *s);
/* Writes the id without its padding spaces, NUL-terminated; returns the length. */
size_t frame_id_str(const uint8_t id[FRAME_ID_SIZE], char out[FRAME_ID_SIZE + 1]);

/* Payload codecs.  payload_check says whether len fits cmd's layout:
 * FEP_OK, FEP_ERR_LENGTH, or FEP_ERR_COMMAND for an unknown command. */
fep_err payload_check(uint8_t cmd, const uint8_t *p, size_t len);
/* The size of a payload of cmd carrying count items (K, M, N) or its fixed size. */
size_t payload_size(uint8_t cmd, unsigned count);

typedef struct lp_record {
    uint8_t meter_id[METER_ID_SIZE];
    uint32_t ts;
    uint32_t import_wh;
    uint32_t export_wh;
    uint16_t status;
} lp_record;

/* M (status, last_seen) and N (change, ts) share one layout. */
typedef struct meter_item {
    uint8_t meter_id[METER_ID_SIZE];
    uint8_t code;
    uint32_t ts;
} meter_item;

typedef struct dcu_status {
    uint16_t fw_version;
    uint32_t uptime_s;
    uint32_t clock;
    uint16_t meter_count;
    uint16_t flags;
} dcu_status;

/* Item i of a K payload (p points at the payload, count byte first). */
void lp_record_get(const uint8_t *p, unsigned i, lp_record *r);
void lp_record_put(uint8_t *p, unsigned i, const lp_record *r);
void meter_item_get(const uint8_t *p, unsigned i, meter_item *m);
void meter_item_put(uint8_t *p, unsigned i, const meter_item *m);
void dcu_status_get(const uint8_t *p, dcu_status *s);
void dcu_status_put(uint8_t *p, const dcu_status *s);
void lp_req_get(const uint8_t *p, uint32_t *from, uint32_t *to);
void lp_req_put(uint8_t *p, uint32_t from, uint32_t to);

/* ------------------------------------------------------------------------
 * sys.c -- the portability seam: every system call fepd and dcusim make on
 * descriptors goes through here, so that the descriptor ledger counts them
 * and a test build (-DFEP_FAULT) can make any of them fail.
 * ---------------------------------------------------------------------- */

/* An IPv4 or IPv6 address and port, in 24 bytes (a sockaddr_storage is
 * 128): one is kept per DCU and per slot. */
typedef struct sys_addr {
    uint8_t family;                     /* 4 or 6; 0: none */
    uint8_t ip[16];                     /* network order; IPv4 in the first 4 */
    uint16_t port;
    uint32_t scope_id;                  /* IPv6 link-local scope */
} sys_addr;

/* Monotonic milliseconds (deadlines) and wall-clock seconds (CSV times). */
int64_t sys_now_ms(void);
int64_t sys_wall_s(void);
/* The UTC calendar fields of t, seconds since the epoch.  fepd writes only
 * UTC, so it does not call gmtime_r: glibc's reads the local zone file on
 * first use, which costs a file read, heap and code a small process need
 * not map. */
typedef struct sys_utc {
    int year, month, day;               /* month 1..12, day 1..31 */
    int hour, min, sec;
} sys_utc;
void sys_utc_of(int64_t t, sys_utc *u);

/* "host:port", "[v6]:port" or "name:port" -> address (resolves now, once).
 * Returns 0, or -1 with a message in err. */
int sys_addr_parse(const char *text, sys_addr *out, char *err, size_t errlen);
/* Writes "ip:port" (or "[ip6]:port") of a into out. */
#define SYS_ADDR_TEXT 64                /* room for any of them */
void sys_addr_str(const sys_addr *a, char *out, size_t outlen);
int sys_addr_equal(const sys_addr *a, const sys_addr *b);

/* Sockets: non-blocking, close-on-exec, SIGPIPE suppressed.  Each returns
 * the descriptor or -1 with errno set. */
int sys_listen(const sys_addr *a, int backlog);
/* Starts a connect; 0 in *in_progress when it completed at once. */
int sys_connect(const sys_addr *a, int *in_progress);
/* After a connect became writable: 0 connected, else the errno of the failure. */
int sys_connect_result(int fd);
/* -1 with errno EAGAIN/EWOULDBLOCK when nothing is pending. */
int sys_accept(int listen_fd, sys_addr *peer);
/* Descriptors 0, 1 and 2 that are closed at start are held by /dev/null,
 * so that no file or socket opened later takes one of their numbers and
 * receives what is written to stdout or stderr.  0, or -1. */
int sys_std_fds(void);
/* Raises the soft RLIMIT_NOFILE to want when it is lower and the hard limit
 * allows; how many descriptors the process may then have, at most want. */
unsigned long sys_fd_limit(unsigned long want);

#define SYS_AGAIN 0                     /* would block, or interrupted: try later */
#define SYS_ERROR (-1)                  /* errno says why */
#define SYS_EOF (-2)                    /* the peer closed (read only) */
/* > 0: bytes moved; else SYS_AGAIN, SYS_ERROR or SYS_EOF. */
ssize_t sys_read(int fd, void *buf, size_t n);
ssize_t sys_write(int fd, const void *buf, size_t n);
int sys_close(int fd);
/* 1 when a byte is waiting (left unread), else SYS_AGAIN, SYS_EOF, SYS_ERROR. */
ssize_t sys_peek(int fd);
/* A small receive buffer: a peer that stops reading is felt sooner. */
int sys_set_rcvbuf(int fd, int bytes);
/* Half-close: no more writes (our FIN), reads go on. */
int sys_shutdown_write(int fd);

/* Files (blocking; regular files only).  -1 with errno on failure. */
int sys_open(const char *path, int flags, int mode);
/* Writes all n bytes or fails; a short write leaves errno set (ENOSPC). */
int sys_write_all(int fd, const void *buf, size_t n);
int sys_fsync(int fd);
int sys_rename(const char *from, const char *to);
int sys_ftruncate(int fd, off_t size);
/* Creates a directory and its missing parents, as mkdir -p, and makes each
 * new name durable in its parent (fsync of the parent directory). */
int sys_mkdir(const char *path);
/* fsync of a directory, so that a name made or renamed in it is durable. */
int sys_fsync_dir(const char *dir);
/* 1 when path is an existing directory, else 0. */
int sys_is_dir(const char *path);
/* 1 when a and b name the same existing file or directory, else 0. */
int sys_same_file(const char *a, const char *b);
/* Opens a file that must be a regular file, without blocking on a FIFO or
 * a device: the descriptor, -1 with errno, or SYS_NOT_REGULAR (nothing
 * left open).  *size (when given) is its size at open. */
#define SYS_NOT_REGULAR (-2)
int sys_open_regular(const char *path, int flags, int mode, off_t *size);

/* Pidfiles (fepd's `pidfile`).  sys_pidfile_read: the pid the file names
 * (> 0); 0 when it names none (*exists says whether the file is there:
 * empty, garbage); -1 with errno when it cannot be read (EINVAL: not a
 * regular file). */
long sys_pidfile_read(const char *path, int *exists);
/* 1 when pid is a live process, other than this one, that runs the same
 * program (Linux: the same /proc/PID/comm as ours, or one that begins with
 * "fepd"; where /proc cannot tell, any live process counts), else 0. */
int sys_pid_is_peer(long pid);
/* Writes our pid and a newline to path atomically (path.tmp, then rename). */
int sys_pidfile_write(const char *path);
/* Removes path if it still names this process; 0, or -1 with errno. */
int sys_pidfile_remove(const char *path);
/* Whether path is a directory this process can create files in, or (with
 * may_create, when it is missing) one that mkdir -p could create: its
 * nearest existing ancestor is such a directory.  0, or -1 with errno as
 * the failed mkdir or open would set it (ENOTDIR, EACCES, EROFS ...). */
int sys_dir_writable(const char *path, int may_create);

/* The service manager's notification socket (sd_notify(3), the protocol
 * without the library): sys_notify_open opens it once when $NOTIFY_SOCKET
 * names one (a path, or "@name" in Linux's abstract namespace); without it
 * every call below does nothing.  A message is one datagram, sent without
 * blocking; a failed send is dropped, and the first one is logged. */
void sys_notify_open(void);
void sys_notify(const char *msg);
/* "RELOADING=1" with MONOTONIC_USEC, as a reload that starts sends it. */
void sys_notify_reloading(void);
/* The watchdog period, WATCHDOG_USEC / 2 in milliseconds (at least 1), when
 * the socket is open and $WATCHDOG_USEC asks for it (and $WATCHDOG_PID is
 * unset or ours); else 0. */
int64_t sys_notify_watchdog_ms(void);
void sys_notify_close(void);

/* One process a directory: a write lock on dir/fepd.lock (created when
 * missing), held until the descriptor is closed or the process exits,
 * however it exits.  The descriptor; -1 with errno; SYS_LOCKED when
 * another process holds it (*holder: its pid).  With check_only, nothing
 * is created or kept: 0, -1 or SYS_LOCKED. */
#define SYS_LOCKED (-3)
int sys_dir_lock(const char *dir, int check_only, long *holder);

/* Descriptor ledger: descriptors opened and closed through sys_*. */
typedef struct sys_ledger {
    uint64_t opened;
    uint64_t closed;
} sys_ledger;
sys_ledger sys_ledger_get(void);

#ifdef FEP_FAULT
/* Test builds: make call number n (1-based) of an operation fail.
 * spec: "OP:N:ERR" or "OP:N+:ERR" (call N and every later one), several
 * separated by commas; OP in read write (sockets) fwrite (files) accept
 * connect open fsync rename; ERR in EINTR EAGAIN SHORT ECONNRESET ENOSPC
 * EMFILE EIO.  Read from $FEP_FAULT at the first call. */
int sys_fault_set(const char *spec);
#endif

/* Logging to stderr, one line per call; never waits: a line stderr cannot
 * take at once is dropped and counted (sys.c).
 * When $JOURNAL_STREAM names stderr (systemd's journal), a line starts with
 * its syslog priority ("<3>" error ... "<7>" debug) instead of a time. */
enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };
void log_set_level(int level);
/* The program name at the start of each line ("fepd", "dcusim"). */
void log_set_name(const char *name);
int log_get_level(void);
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void log_msg(int level, const char *fmt, ...);
/* A hex dump of p[0..n) at LOG_DEBUG, prefixed with what. */
void log_hex(const char *what, const uint8_t *p, size_t n);


/* ========================================================================
 * fepd.  What follows is shared by fep.c (the loop), session.c (the
 * protocol state machine), config.c, store.c (CSV files), state.c (ICs and
 * per-DCU statistics) and metrics.c.
 * ====================================================================== */

/* Limits, each with its memory cost. */
#define POLL_CMDS_MAX 4                 /* k s m n */
#define CONFIG_DIRECTIVES_MAX 24        /* plain directives (config.c's table) */
#define PATH_SIZE 256                   /* data_dir, state_dir and file names */
#define LISTEN_BACKLOG SOMAXCONN       /* a burst of pushes waits in the kernel, not refused */
#define FD_RESERVED 32                  /* stdio, listeners, CSV and state files */
#define SESSIONS_MAX (FD_SETSIZE - FD_RESERVED) /* max_sessions: a slot each */
#define REJECT_SLOTS 8                  /* extra slots that only answer NACK BUSY */
#define METRICS_SLOTS 4                 /* concurrent GET /metrics connections */
#define SLOT_BYTES_MAX 2560             /* a slot (struct session): 2 KiB receive,
                                           112 B transmit, the GCM key, state */
/* The largest frame fepd sends: a keyed k request (30 + 16 + 8 + 2 = 56
 * bytes); a keyed ACK is 48, a keyed NACK 49, plaintext ones 16 less. */
#define TX_FRAME_MAX (FRAME_HEADER_SIZE + SEC_OVERHEAD + LP_REQ_SIZE + FRAME_CRC_SIZE)
#define TX_BUF_SIZE (2 * TX_FRAME_MAX)  /* 112 bytes a slot: an ACK and the next request */
#define STORE_BUF_SIZE (64 * 1024)      /* a CSV file's rows of one loop pass, 64 KiB each */
#define IC_RESERVE_BLOCK 65536          /* ICs reserved on disk ahead of use */
#define CSV_ROW_MAX 192                 /* longest row of any file, quoting included */
#define METRICS_REQUEST_MAX 1024        /* a request line and headers */
#define DCUS_MAX 1000000                /* max_dcus: DCU_BYTES (252) each */
#define DCU_BYTES_MAX 256               /* a DCU: config, reload twin, state, keys, marks */
#define DCUS_SPARE 1024                 /* max_dcus default: the file's DCUs + this */
#define SHARDS_MAX 4096                 /* --shard I/N: N at most this */

FEP_STATIC_ASSERT(RX_BUF_SIZE >= FRAME_SIZE_MAX, rx_holds_one_frame);
/* No payload fepd sends (a request, an ACK, a NACK) is longer than k's. */
FEP_STATIC_ASSERT(NACK_SIZE <= LP_REQ_SIZE, tx_largest_payload_is_lp_req);
FEP_STATIC_ASSERT(TX_BUF_SIZE >= 2 * TX_FRAME_MAX, tx_holds_ack_and_request);
FEP_STATIC_ASSERT(TX_BUF_SIZE <= UINT16_MAX && RX_BUF_SIZE <= UINT16_MAX,
                  slot_offsets_16_bits);
FEP_STATIC_ASSERT(SESSIONS_MAX + REJECT_SLOTS + METRICS_SLOTS < FD_SETSIZE - 8,
                  slots_fit_select);
FEP_STATIC_ASSERT(STORE_BUF_SIZE >= LP_RECORDS_MAX_PLAIN * CSV_ROW_MAX,
                  store_buffer_holds_a_packet);
FEP_STATIC_ASSERT(METRICS_REQUEST_MAX <= RX_BUF_SIZE, metrics_request_fits);

/* ---- config.c ---- */

/* One DCU of the config.  Two tables of them are kept (the one in use and
 * a reload's), so every byte counts twice: the SID on the wire is the id
 * padded with spaces (frame_id_set), and an entry's line in the file is
 * found again only when a message needs it. */
typedef struct dcu_conf {
    char id[FRAME_ID_SIZE + 1];         /* as written; NUL-padded, so that its
                                           8 bytes sort as the padded SIDs */
    char poll[POLL_CMDS_MAX];           /* request letters in order, "k" by
                                           default; NUL-terminated when shorter */
    uint8_t has_addr;
    uint8_t has_key;
    uint8_t removed;                    /* by a reload: kept while a slot may name it */
    sys_addr addr;
    uint8_t key[KEY_SIZE];
} dcu_conf;                             /* 56 bytes */

typedef struct fep_config {
    char fep_id[FRAME_ID_SIZE + 1];
    uint8_t sid[FRAME_ID_SIZE];
    int has_listen;
    sys_addr listen;
    int has_metrics;
    sys_addr metrics;
    char data_dir[PATH_SIZE];
    char state_dir[PATH_SIZE];
    char pidfile[PATH_SIZE];            /* "" when none */
    unsigned max_sessions;
    unsigned max_dcus;                  /* DCU table capacity (reload adds up to it) */
    int64_t poll_every_ms;
    int sync_packet;                    /* 1: fsync before every ACK */
    int64_t timeout_connect_ms;
    int64_t timeout_frame_ms;
    int64_t timeout_write_ms;
    int64_t timeout_idle_ms;
    int64_t timeout_session_ms;
    unsigned rotate_s;                  /* segments to data_dir/ready/; 0: off */
    dcu_conf *dcus;                     /* n_dcus entries (dcus_cap room), allocated once */
    unsigned *by_sid;                   /* indices of the n_live DCUs not removed, by sid */
    unsigned n_dcus;                    /* entries in use, removed ones included */
    unsigned n_live;                    /* DCUs configured now */
    unsigned n_polled;                  /* of those, with an address */
    unsigned dcus_cap;
    unsigned lines[CONFIG_DIRECTIVES_MAX]; /* where each directive was given, 0 not */
    /* --shard I/N: dcus holds this shard's DCUs only (the table keeps its
     * capacity); the other shards' padded SIDs, sorted, FRAME_ID_SIZE bytes
     * each (dcus_cap room), tell their pushes apart from unknown SIDs. */
    unsigned shard, shards;             /* 0 and 1 when not sharded */
    uint8_t *other_sids;
    unsigned n_other;
    char state_dir_pattern[PATH_SIZE];  /* state_dir as written when it has {shard}, else "" */
} fep_config;

/* Reads and checks the whole file; allocates the DCU arrays once, with room
 * for max_dcus.  On error returns -1 with "FILE:LINE: problem" in err and
 * nothing allocated. */
int config_load(const char *path, fep_config *cfg, char *err, size_t errlen);
/* Arrays for config_reload, as large as live's; 0 or -1 (out of memory). */
int config_alloc_like(fep_config *staged, const fep_config *live);
/* Reads and checks the whole file again into staged's arrays, allocating
 * nothing (SIGHUP).  0, or -1 with "FILE:LINE: problem". */
int config_reload(const char *path, fep_config *staged, char *err,
                  size_t errlen);
/* Rebuilds by_sid and n_live from the DCUs not removed. */
void config_index(fep_config *cfg);
/* 0 when staged changes no directive that needs a restart; else -1 with
 * "FILE:LINE: DIRECTIVE changed ..." in err. */
int config_reload_check(const fep_config *live, const fep_config *staged,
                        const char *path, char *err, size_t errlen);
/* Copies the directives a reload may change from staged into live. */
void config_reload_directives(fep_config *live, const fep_config *staged);
/* The directives the loader knows, one per i from 0 ("dcu" among them), then
 * NULL: what fepd.conf(5) must list, no more and no less. */
const char *config_directive_name(unsigned i);
/* The same for shard `shard` of `shards` (DESIGN.md section 3): {shard}
 * replaced, ports moved, the shard rules checked, the other shards' DCUs
 * taken out of the table.  config_load is shard 0 of 1. */
int config_load_shard(const char *path, unsigned shard, unsigned shards,
                      fep_config *cfg, char *err, size_t errlen);
/* The shard of DCU id among shards. */
unsigned config_shard_of(const char *id, unsigned shards);
/* The shard of sid when it is another shard's DCU, or -1. */
int config_other_shard(const fep_config *cfg, const uint8_t sid[FRAME_ID_SIZE]);
/* pattern with every {shard} replaced by shard, into out[cap]; 0, or -1
 * when it does not fit. */
int config_shard_expand(const char *pattern, unsigned shard, char *out,
                        size_t cap);
/* Index of the DCU whose SID is sid, or -1. */
int config_find_dcu(const fep_config *cfg, const uint8_t sid[FRAME_ID_SIZE]);
/* How many live DCUs sort before sid: its place in by_sid, or where it
 * would go. */
unsigned config_sid_rank(const fep_config *cfg, const uint8_t sid[FRAME_ID_SIZE]);
void config_release(fep_config *cfg);

/* ---- store.c: the CSV files of DESIGN.md section 4, with group commit ---- */

enum store_file {
    STORE_LP, STORE_DCU_STATUS, STORE_METER_STATUS, STORE_METER_CHANGE,
    STORE_FILES
};

typedef struct store_out {
    int fd;                             /* -1 while closed or failed */
    off_t committed;                    /* size known durable (or written, sync none) */
    dev_t dev;                          /* identity of the open file, to notice */
    ino_t ino;                          /* a file replaced under fepd */
    size_t used;                        /* bytes in buf not yet written */
    size_t written;                     /* bytes written this pass, not yet committed */
    uint8_t buf[STORE_BUF_SIZE];        /* last: store_open does not touch it */
} store_out;

typedef struct store {
    char dir[PATH_SIZE];
    char fep_id[FRAME_ID_SIZE + 1];     /* in the names of segments */
    int sync_packet;
    unsigned rotate_s;                  /* 0: the four files; else segments */
    int64_t period;                     /* wall_s / rotate_s at the last switch */
    uint64_t seq_next;                  /* SEQ of the next segment handed off */
    uint64_t seq_limit;                 /* reserved in data_dir/ready.seq: below */
    int dirs_unsynced;                  /* a handoff's directory fsync failed */
    uint64_t segments_ready;            /* segments handed off (a metric) */
    int pass_failed;                    /* a write of this pass failed */
    int had_rows;                       /* a file held rows at open: fepd ran here */
    uint64_t rows_pending;              /* rows added since the last commit */
    store_out out[STORE_FILES];
} store;

typedef struct store_config {
    const char *data_dir;
    const char *fep_id;                 /* 1..8 bytes */
    int sync_packet;
    unsigned rotate_s;                  /* 0: off */
} store_config;

/* Marks the files closed, so that store_close is harmless before (or
 * without) a store_open. */
void store_init(store *s);
/* Creates data_dir if needed, opens (creating with a header line) the four
 * files, and cuts a torn last line left by a crash.  With rotate: creates
 * data_dir/ready/, and hands off at once a segment a crash left behind.
 * 0, or -1 with err. */
int store_open(store *s, const store_config *c, char *err, size_t errlen);
/* Formats the rows of one checked packet (plaintext payload of K, S, M or N)
 * into the pass buffers.  Returns the number of rows, or -1 when the store
 * cannot take them (the caller answers NACK STORE).  A packet whose file
 * cannot be opened is refused on its own; a failed write fails the whole
 * pass, and happens only when the pass already holds rows, so a commit of
 * the pass always follows and clears the failure. */
int store_add(store *s, const char *dcu_id, uint8_t cmd, const uint8_t *payload,
              size_t len, uint16_t qsn, uint16_t fsn, int64_t received_at);
/* Fails the pass in progress: its commit cuts its rows back and returns -1
 * (the replay marks of its frames could not be saved). */
void store_fail_pass(store *s);
/* Writes every pending row (one write per file) and, with sync packet, one
 * fsync per file.  0: every row added since the last commit is durable.
 * -1: none of them counts (each file is cut back to its committed size). */
int store_commit(store *s);
/* --check: what store_open would find in data_dir, without opening any
 * file for writing: 0 with *has_rows (a file holds rows: fepd ran here), or
 * -1 with err (store_open's message) when a file is there that it could not
 * open. */
int store_check(const char *data_dir, int *has_rows, char *err, size_t errlen);
/* Between passes (after the commit), any number of times: when the wall
 * clock has entered a new multiple of rotate_s, every segment holding rows
 * goes to data_dir/ready/.  Cheap when nothing is due or rotate is off. */
void store_rotate(store *s, int64_t wall_s);
/* Reload: a new rotate (0: off), between passes.  Turning it off or on
 * hands off the segments or starts them.  0, or -1 (logged; unchanged). */
int store_set_rotate(store *s, unsigned rotate_s, int64_t wall_s);
/* SIGHUP: close and reopen the files (for logrotate). */
void store_reopen(store *s);
/* Drops uncommitted rows; with rotate, hands off the segments that hold
 * rows and removes the empty ones (graceful stop). */
void store_close(store *s);

/* ---- state.c: ICs, replay marks and per-DCU statistics, in
 * state_dir/fepd.{state,journal}, and the rollback witness
 * data_dir/fepd.generation ---- */

#define STATE_KCV_SIZE 8
/* Changes listed between two saves: in one pass a slot raises at most one
 * mark (its frame then waits for the pass's commit, which saves it) and
 * ends at most one session.  (A test build may make it small, to take the
 * overflow paths.) */
#ifndef STATE_LIST_MAX
#define STATE_LIST_MAX (SESSIONS_MAX + REJECT_SLOTS + METRICS_SLOTS)
#endif

/* One key fepd has ever used, named by its check value. */
typedef struct key_state {
    uint8_t kcv[STATE_KCV_SIZE];        /* AES_K(0^128), first 8 bytes */
    uint32_t tx_ic_next;                /* the next IC fepd sends under this key */
    uint32_t tx_ic_reserved;            /* ICs below this may have been sent */
} key_state;                            /* 16 bytes */

/* The replay mark of one DCU under one key: every pair ever used is kept,
 * so that a key that comes back keeps its mark. */
typedef struct rx_mark {
    uint8_t dcu[FRAME_ID_SIZE];         /* the DCU's id, padded as on the wire */
    uint32_t key;                       /* index into keys */
    uint32_t last_ic;                   /* highest IC accepted; 0 none */
} rx_mark;                              /* 16 bytes */

/* The state of one DCU, parallel to the config's table.  Its key is its
 * mark's (marks[mark].key, state_dcu_key): one index says both. */
typedef struct dcu_state {
    int64_t next_poll_ms;
    int64_t last_success_s;             /* wall clock; 0 never */
    uint64_t records;
    uint32_t sessions_ok;               /* a session a second: 136 years */
    uint32_t sessions_failed;
    int32_t mark;                       /* index into marks, or -1 when unkeyed */
    int16_t session;                    /* slot index, or -1 */
    uint16_t next_qsn;
    uint16_t slot_refs;                 /* slots that name this DCU (reload reuse) */
    uint8_t last_error;                 /* a fep_err: all of them are below 256 */
    uint8_t changed;                    /* lines not yet written (state_touch) */
    int8_t cycle_result;                /* --once: 0 not yet, 1 ok, -1 failed */
    uint8_t poll_failures;              /* poll cycles failed in a row (back-off) */
} dcu_state;                            /* 48 bytes */

/* What each DCU of max_dcus costs: its config entry and the reload table's,
 * each with its by_sid index; its state; two keys and two marks (the
 * tables hold 2 x max_dcus); and their two hash indexes, 5/4 of a 4-byte
 * slot per entry.  fepd prints the figure it allocated at start-up. */
#define DCU_BYTES (2 * (sizeof(dcu_conf) + sizeof(unsigned)) + \
                   sizeof(dcu_state) + 2 * sizeof(key_state) + \
                   2 * sizeof(rx_mark) + 2 * 2 * 5 * sizeof(uint32_t) / 4)
FEP_STATIC_ASSERT(DCU_BYTES <= DCU_BYTES_MAX, dcu_size);

/* How state_open treats what it finds. */
typedef struct state_start {
    int fresh;                          /* --fresh-state: set the old state aside */
    int data_has_rows;                  /* data_dir shows an earlier run */
    int read_only;                      /* --check: load and verify, write nothing */
} state_start;

typedef struct fep_state {
    const struct fep_config *cfg;       /* the DCUs the tables are parallel to */
    char path[PATH_SIZE];               /* state_dir/fepd.state (the snapshot) */
    char journal_path[PATH_SIZE];       /* state_dir/fepd.journal */
    char witness_path[PATH_SIZE];       /* data_dir/fepd.generation */
    key_state *keys;                    /* every key ever used: n_keys of keys_cap */
    unsigned n_keys, keys_cap;
    rx_mark *marks;                     /* every (DCU, key) mark: n_marks of marks_cap */
    unsigned n_marks, marks_cap;
    uint32_t *key_index;                /* open addressing: keys by KCV */
    uint32_t *mark_index;               /* open addressing: marks by DCU and key */
    unsigned index_size;                /* slots of each index: 1.25 x the cap */
    dcu_state *dcus;                    /* parallel to cfg->dcus, dcus_cap room */
    unsigned n_dcus, dcus_cap;
    uint64_t generation;                /* of the snapshot on disk */
    uint64_t reservations;              /* tx lines in the journal since it */
    uint64_t journal_records;           /* lines in the journal (at start-up) */
    int witness_failed;                 /* the last witness write failed */
    int dirty;                          /* something changed since the last save */
    int marks_raised;                   /* a mark rose: save before the pass's ACKs */
    uint64_t syncs;                     /* journal appends and snapshots written */
    /* What changed since the last save, for the journal.  Marks are saved
     * in the pass that raised them, so their list is as long as what the
     * slots can raise in one pass; statistics wait up to a second (fep.c
     * STATS_SAVE_MS).  When a list overflows (a busy second, saves that
     * failed), the flags (statistics) or the whole snapshot (marks) take
     * over. */
    unsigned marks_changed[STATE_LIST_MAX]; /* marks raised (a mark may repeat) */
    unsigned n_marks_changed;
    int marks_overflow;                 /* some were not listed: compact */
    unsigned changed[STATE_LIST_MAX];   /* DCUs whose dcu_state.changed is set */
    unsigned n_changed;
    int changed_rescan;                 /* some were not listed: scan the flags */
    off_t journal_size;                 /* whole lines fepd wrote; -1: compact before appending */
    char *buf;                          /* the write buffer (snapshot, journal lines) */
    size_t buf_cap;
} fep_state;

/* Allocates the tables once (sized by cfg->max_dcus), loads the snapshot,
 * the journal and the witness, and refuses (-1, err says what and what the
 * operator can do) a state that is missing while fepd has run before, or
 * empty, truncated, damaged, inconsistent or older than the witness.  Then,
 * unless read_only, reserves a new IC block for every configured key and
 * writes a new snapshot.  0 or -1. */
int state_open(fep_state *st, const fep_config *cfg, const state_start *how,
               char *err, size_t errlen);
/* The next IC to send under key k; reserves a new block on disk first when
 * needed.  0 when no IC can be had (reservation failed, or exhausted). */
uint32_t state_take_ic(fep_state *st, unsigned k);
/* DCU dcu's key: an index into keys, or -1 when unkeyed. */
int state_dcu_key(const fep_state *st, unsigned dcu);
/* The bytes state_open allocated; *dcu_tables: those that grow with
 * max_dcus (the DCU table, keys, marks and their indexes). */
size_t state_memory(const fep_state *st, size_t *dcu_tables);
/* DCU dcu's replay mark under its current key (0 when unkeyed). */
uint32_t state_rx_mark(const fep_state *st, unsigned dcu);
/* Raises DCU dcu's replay mark to ic: the next state_save makes it durable,
 * and the loop saves before it sends the ACKs of the pass. */
void state_rx_raise(fep_state *st, unsigned dcu, uint32_t ic);
/* The value of mark (an index into marks, -1: none, 0), and raising it:
 * a session uses the mark of the key it began with. */
uint32_t state_mark_value(const fep_state *st, int mark);
void state_mark_raise(fep_state *st, int mark, uint32_t ic);
/* Marks DCU dcu's statistics as changed (and the state dirty). */
void state_touch(fep_state *st, unsigned dcu);
/* Makes every change durable: appends the lines of the DCUs marked by
 * state_touch to the journal (one write, one fsync); compacts (writes the
 * whole snapshot, empties the journal) when nothing is marked (the save at
 * shutdown), when the journal has outgrown the snapshot, or when the journal
 * is not the file fepd wrote.  0 when every value is on disk; -1 (logged)
 * when not, and the marks stay for the next call. */
int state_save(fep_state *st, const fep_config *cfg);
/* Reload: state_need_add counts the keys and marks a DCU entry (new, or
 * with a new key) would add, state_need_fits says whether they fit (0, or
 * -1 with err); then state_dcu_set gives DCU i its key and mark (fresh: a
 * new DCU, statistics zero): -1 only when the need was not checked. */
typedef struct state_need {
    unsigned keys, marks;
} state_need;
void state_need_add(const fep_state *st, const dcu_conf *dc, state_need *need);
int state_need_fits(const fep_state *st, const state_need *need, char *err,
                    size_t errlen);
int state_dcu_set(fep_state *st, const fep_config *cfg, unsigned i, int fresh);
void state_release(fep_state *st);

/* ---- session.c and fep.c: the slot table ---- */

enum slot_state {
    SLOT_FREE = 0,
    SLOT_CONNECTING,                    /* poll: non-blocking connect under way */
    SLOT_ACTIVE,                        /* reading frames, writing replies */
    SLOT_STORING,                       /* a packet's rows await the pass's commit */
    SLOT_DRAINING                       /* last bytes going out, then close */
};

enum slot_kind { KIND_POLL = 0, KIND_PUSH = 1, KIND_METRICS = 2, KIND_REJECT = 3 };

/* What a frame in SLOT_STORING waits for the pass's commit to do. */
enum sess_pending {
    PENDING_NONE = 0,
    PENDING_ROWS,                       /* its rows are durable: ACK it */
    PENDING_DUPLICATE,                  /* its mark is durable: ACK it again */
    PENDING_NEXT_REQUEST                /* its mark is durable: the next request */
};

/* What a slot's I/O deadline is waiting for; one timer per slot. */
enum slot_wait {
    WAIT_NONE = 0,
    WAIT_CONNECT,                       /* timeout_connect */
    WAIT_IDLE,                          /* push: the first byte, timeout_idle */
    WAIT_FRAME,                         /* the next expected frame, timeout_frame */
    WAIT_LINGER                         /* closing: the peer's end of stream */
};

/*
 * One connection.  The slot table (fepd.slots) is allocated once; a slot is
 * opened by fep.c slot_open and closed by fep.c slot_close, the only two
 * places that touch fd; between them session.c decides what is read and
 * written.  rx and tx are reset by slot_open, never freed.
 *
 * Buffers.  A poll, push or reject slot reads frames into rx (one largest
 * frame: stop-and-wait) and queues its own frames in tx, which holds the
 * most one pass queues, an ACK and the next request (TX_BUF_SIZE).  A
 * metrics slot reads its HTTP request into rx.buf; once the request is
 * parsed those bytes are not needed again, and the response is rendered
 * into rx.buf, a chunk at a time.  So what a slot writes is
 * out[tx_off..tx_len) with out = tx for a session and out = rx.buf for a
 * metrics slot (fep.c slot_out); tx_len and tx_off count in that buffer.
 */
typedef struct session {
    frame_rx rx;                        /* receive side; a metrics response */
    uint8_t tx[TX_BUF_SIZE];            /* frames of a poll, push or reject slot */
    gcm_key key;                        /* of the DCU we talk to, when keyed */
    int64_t opened_ms;
    int64_t session_deadline_ms;        /* timeout_session */
    int64_t io_deadline_ms;             /* what wait names */
    int64_t write_deadline_ms;          /* 0 while out is empty; timeout_write */
    const char *opened_at;              /* "file:line" of the open, for the ledger */
    sys_addr peer;
    uint32_t gen;                       /* +1 at every open: stale references fail */
    int fd;
    int dcu;                            /* bound DCU index, or -1 */
    int key_index;                      /* into state.keys, or -1: plaintext */
    int mark_index;                     /* into state.marks, or -1: plaintext */
    uint32_t garbage_counted;           /* part of rx.garbage already in stats */
    uint32_t records;                   /* rows stored in this session */
    uint32_t metrics_cursor;            /* metrics: next line to render */
    enum slot_state state;
    enum slot_kind kind;
    enum slot_wait wait;
    fep_err result;                     /* first error; FEP_OK: success */
    /* SLOT_STORING: the frame whose effect awaits the pass's commit */
    enum sess_pending pending;
    uint16_t pending_fsn;
    int16_t pending_rows;               /* rows of one packet: at most 118 */
    uint8_t pending_last;
    /* transmit side: out[tx_off..tx_len) is still to be written */
    uint16_t tx_len, tx_off;
    uint16_t msn;                       /* our frame counter on this connection */
    uint8_t peer_sid[FRAME_ID_SIZE];    /* DID of what we send */
    /* the exchange */
    char poll[POLL_CMDS_MAX + 1];       /* poll: the cycle's requests, as it began */
    uint8_t request;                    /* poll: index into poll */
    uint8_t expect;                     /* poll: response command expected */
    uint8_t exchange_open;              /* poll: request sent; push: packet 0 seen;
                                           metrics: the response is rendering */
    uint16_t qsn;
    uint16_t next_fsn;
    uint16_t acked_fsn;
    uint8_t have_acked;                 /* acked_fsn is meaningful */
    uint8_t crc_strikes;                /* consecutive; CRC_STRIKES_MAX ends it */
    uint8_t failures;                   /* requests that ended without a reply */
    uint8_t shut_wr;                    /* DRAINING: our side already shut down */
    uint8_t close_now;                  /* DRAINING: close without flushing or lingering */
    uint8_t accounted;                  /* the exchange ended and was counted */
} session;

FEP_STATIC_ASSERT(sizeof(session) <= SLOT_BYTES_MAX, slot_size);

typedef struct fep_stats {
    uint64_t sessions_total[2][2];      /* [KIND_POLL/KIND_PUSH][0 ok, 1 error] */
    uint64_t frames_received;
    uint64_t frames_sent;
    uint64_t nacks_sent[FEP_NACK_CODE_MAX + 1];
    uint64_t records_stored;
    uint64_t garbage_bytes;
    uint64_t slots_acquired;
    uint64_t slots_released;
    uint64_t timeouts;
    uint64_t busy_rejected;             /* connections closed with no slot at all */
    uint64_t reloads[2];                /* SIGHUP: [0 ok, 1 error] */
    uint64_t commit_passes;             /* group commits of a pass's packets */
} fep_stats;

/* Everything fepd owns, in one place; allocated once in fep.c. */
typedef struct fepd {
    const char *config_path;            /* -c FILE, read again on SIGHUP */
    fep_config cfg;
    fep_config staged;                  /* a reload's file, before it applies */
    fep_state state;
    store store;
    fep_stats stats;
    session *slots;                     /* n_slots, allocated once */
    unsigned n_slots;                   /* max_sessions + REJECT_SLOTS + METRICS_SLOTS */
    unsigned sessions_active;           /* poll and push slots in use */
    unsigned slots_in_use;              /* all kinds */
    unsigned kind_in_use[4];            /* slots in use, by slot_kind */
    unsigned poll_cursor;               /* where the scheduler's next scan starts */
    int64_t next_due_ms;                /* no DCU is due before this */
    int64_t poll_epoch_ms;              /* start-up: the origin of every DCU's poll phase */
    int poll_waiting;                   /* a due poll waits for a session to end */
    unsigned once_pending;              /* --once: poll cycles not yet finished */
    unsigned closed_this_pass;          /* sessions closed in this loop pass */
    int64_t stats_save_due_ms;          /* changed statistics are saved then; 0 none */
    int listen_fd;                      /* -1 when off */
    int lock_fds[2];                    /* data_dir's and state_dir's fepd.lock; -1 */
    int metrics_fd;                     /* -1 when off */
    size_t static_memory_bytes;         /* everything allocated at start-up */
    int64_t watchdog_every_ms;          /* WATCHDOG=1 period; 0 off */
    int64_t watchdog_due_ms;            /* the next WATCHDOG=1 */
    int64_t accept_paused_until_ms;     /* out of descriptors: listeners unwatched */
    uint8_t scratch[FRAME_DATA_MAX];    /* the plaintext of the frame at hand */
    int once;                           /* --once */
    int fresh_state;                    /* --fresh-state */
    int stopping;                       /* no new sessions */
} fepd;

/* ---- session.c: the protocol state machine of one slot ---- */

/* Poll: bind slot s to DCU dcu before its connect completes. */
void sess_poll_start(fepd *d, session *s, int dcu);
/* Poll: connected; sends the first request of the cycle. */
void sess_poll_connected(fepd *d, session *s);
/* Takes the frames held in s->rx until one needs a commit, the session
 * ends, or more bytes are needed. */
void sess_process(fepd *d, session *s);
/* After the pass's commit: goes on with what the pending frame awaited
 * (ACK, re-ACK, next request) when ok, else NACK STORE and end. */
void sess_committed(fepd *d, session *s, int ok);
/* Marks the session finished (DRAINING); the first call counts its result. */
void sess_end(fepd *d, session *s, fep_err why);
/* The counters of one session of DCU dcu (-1: none bound), however it
 * ended, a connect that failed at once included. */
void sess_result(fepd *d, int dcu, enum slot_kind kind, fep_err result);

/* ---- metrics.c ---- */

/* Renders the Prometheus text of d from line *cursor on, as many whole lines
 * as fit in out[0..cap); advances *cursor; returns the bytes written, 0 when
 * the exposition is complete. */
size_t metrics_render(const fepd *d, uint32_t *cursor, char *out, size_t cap);
/* A scrape's place held across a reload, which adds and removes DCUs: at a
 * per-DCU line it is the SID of the DCU that line is for, found again by
 * rank in the new table, so that no DCU is written twice or skipped because
 * others came or went before it. */
typedef struct metrics_place {
    uint32_t cursor;                    /* unchanged when not at a DCU's line */
    enum { PLACE_LINE, PLACE_DCU, PLACE_DCUS_DONE } at;
    uint8_t sid[FRAME_ID_SIZE];         /* PLACE_DCU: the next DCU to write */
} metrics_place;
void metrics_place_hold(const fepd *d, uint32_t cursor, metrics_place *p);
uint32_t metrics_place_find(const fepd *d, const metrics_place *p);
/* Parses an HTTP request held in p[0..n): 0 need more, else the HTTP status
 * to answer (200 for GET /metrics, 404 other path, 405 other method, 400). */
int metrics_parse_request(const uint8_t *p, size_t n);

#endif /* FEP_H */
