/*
 * crypto.c -- AES-128 (encryption direction, FIPS-197), GHASH and
 * AES-128-GCM (NIST SP 800-38D), CRC-16/X-25 and the header XOR check.
 *
 * Owns: nothing but constant tables; every context is the caller's.
 * Must not touch: I/O, allocation, global state.  Expanded keys live on
 * the stack for the length of one call.
 *
 * Implementation notes
 *
 * AES is bitsliced in 64-bit words and handles four blocks per call.  The
 * 4 x 16 bytes are spread over eight words, word b holding bit b of every
 * byte, at position 16*row + 4*column + block.  With that layout:
 *   - SubBytes is the 113-gate Boolean circuit of Boyar and Peralta ("A new
 *     combinational logic minimization technique with applications to
 *     cryptology", 2009), applied to 64 bytes at once;
 *   - ShiftRows rotates the column nibbles inside each 16-bit row group;
 *   - MixColumns reaches the next row of a column by a 16-bit rotation of
 *     the whole word, and doubles bytes by shuffling the bit words.
 * No table is indexed and no branch is taken on key or data, so timing and
 * cache behaviour do not depend on secrets.  (Checked with valgrind's
 * memcheck, key and plaintext marked undefined: the one branch it reports
 * is gcm_open's verdict on the tag, which is public.)  Only C99 and 64-bit integers
 * are needed.  A table-driven AES would be faster on paper but leaks the
 * key through the cache; AES-NI would be much faster but is not portable.
 * The schedule is kept compressed (two words per round key, 176 bytes) so
 * that a gcm_key in every session slot stays small; it is expanded to 88
 * words on the stack once per call.  The round helpers are static inline
 * so that the compiler keeps the eight state words in registers across a
 * round (a quarter faster with gcc -O2 than with calls).
 *
 * GHASH multiplies with plain 64-bit integer multiplications on operands
 * whose set bits are four apart ("holes"), so that the carries of each
 * product land in bits that are masked off: a constant-time carry-less
 * multiplication without tables indexed by H.  The high half of a 64 x 64
 * product comes from the same routine on bit-reversed operands; three of
 * them per half make a Karatsuba 128 x 128 product.  This assumes the
 * compiler's 64-bit multiply runs in constant time, which holds on x86-64
 * and AArch64 (not on some 32-bit cores that call a library routine).
 *
 * GCM: CTR keystream four blocks per AES call; gcm_open computes the tag
 * over AAD and ciphertext first, compares all tag_len bytes by
 * XOR-accumulation, and writes plain only after the tag verified.  Plain
 * and cipher may be the same buffer, not otherwise overlapping ones.
 * The 32-bit block counter wraps as SP 800-38D's inc32 says; messages are
 * far below the 2^32-block limit of one IV.
 *
 * Speed on one core of a 2-vCPU x86-64 Xeon VM, 2000-byte payloads with a
 * 30-byte AAD; each figure is the best of 40 timed batches of CPU time,
 * then the median and the best of five such runs (other builds were
 * running, hence the spread):
 *                          gcc 12 -O2          clang 14 -O2
 *   gcm_seal               64 (best 90) MB/s   59 (best 70) MB/s
 *   gcm_open               59 (best 84) MB/s   62 (best 74) MB/s
 *   AES, 4 blocks a call   96 (best 144) MB/s  93 (best 104) MB/s
 *   aes128_encrypt         19 MB/s, one block a call, schedule expanded
 *   GHASH                  150-250 MB/s
 *   gcm_init               2-3 us
 */
#include <assert.h>
#include <string.h>

#include "fep.h"

/* ------------------------------------------------------------------------
 * Bitsliced AES-128
 * ---------------------------------------------------------------------- */

#define AES_ROUNDS 10
#define AES_LANES 4                     /* blocks per bitsliced call */
#define AES_BATCH (16 * AES_LANES)      /* bytes per bitsliced call */
#define AES_SK_WORDS (8 * (AES_ROUNDS + 1))

FEP_STATIC_ASSERT(sizeof(((aes128 *)0)->sk) ==
                  2 * (AES_ROUNDS + 1) * sizeof(uint64_t), aes128_size);

static inline uint32_t get_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 |
           (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void put_u32le(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* The bits of *a under (mask << shift) trade places with the bits of *b
 * under mask. */
static inline void swap_bits(uint64_t *a, uint64_t *b, uint64_t mask,
                             unsigned shift)
{
    uint64_t t = ((*a >> shift) ^ *b) & mask;

    *b ^= t;
    *a ^= t << shift;
}

/* Transposes the 8 x 8 bit matrix formed by byte k of the eight words, for
 * every k at once: afterwards bit i of byte k of word j is what bit j of
 * byte k of word i was.  Its own inverse. */
static void transpose_bits(uint64_t w[8])
{
    const uint64_t m1 = 0x5555555555555555u;
    const uint64_t m2 = 0x3333333333333333u;
    const uint64_t m4 = 0x0F0F0F0F0F0F0F0Fu;

    swap_bits(&w[0], &w[1], m1, 1);
    swap_bits(&w[2], &w[3], m1, 1);
    swap_bits(&w[4], &w[5], m1, 1);
    swap_bits(&w[6], &w[7], m1, 1);
    swap_bits(&w[0], &w[2], m2, 2);
    swap_bits(&w[1], &w[3], m2, 2);
    swap_bits(&w[4], &w[6], m2, 2);
    swap_bits(&w[5], &w[7], m2, 2);
    swap_bits(&w[0], &w[4], m4, 4);
    swap_bits(&w[1], &w[5], m4, 4);
    swap_bits(&w[2], &w[6], m4, 4);
    swap_bits(&w[3], &w[7], m4, 4);
}

/* Bytes 0..3 of x go to bytes 0, 2, 4, 6 of the result. */
static inline uint64_t spread_bytes(uint32_t x)
{
    uint64_t v = x;

    v = (v | v << 16) & 0x0000FFFF0000FFFFu;
    return (v | v << 8) & 0x00FF00FF00FF00FFu;
}

static inline uint32_t gather_bytes(uint64_t v)
{
    v &= 0x00FF00FF00FF00FFu;
    v = (v | v >> 8) & 0x0000FFFF0000FFFFu;
    return (uint32_t)(v | v >> 16);
}

/*
 * Four blocks to the bitsliced form: word b holds bit b of byte 4*c + r
 * of block k at position 16*r + 4*c + k.  Before the transpose, word
 * 4*h + k carries block k's column h in its even bytes and column h + 2 in
 * its odd bytes, so that byte 2*r + (c >> 1) is byte (r, c): after the
 * transpose that byte's bits sit at 8*(2*r + (c >> 1)) + 4*(c & 1) + k.
 */
static void aes_load4(uint64_t q[8], const uint8_t in[AES_BATCH])
{
    unsigned k, h;

    for (k = 0; k < AES_LANES; k++)
        for (h = 0; h < 2; h++) {
            const uint8_t *blk = in + 16 * k;

            q[4 * h + k] = spread_bytes(get_u32le(blk + 4 * h)) |
                           spread_bytes(get_u32le(blk + 4 * h + 8)) << 8;
        }
    transpose_bits(q);
}

static void aes_store4(uint8_t out[AES_BATCH], uint64_t q[8])
{
    unsigned k, h;

    transpose_bits(q);
    for (k = 0; k < AES_LANES; k++)
        for (h = 0; h < 2; h++) {
            uint8_t *blk = out + 16 * k;

            put_u32le(blk + 4 * h, gather_bytes(q[4 * h + k]));
            put_u32le(blk + 4 * h + 8, gather_bytes(q[4 * h + k] >> 8));
        }
}

/*
 * SubBytes on 64 bytes at once: the 113-gate circuit of Boyar and Peralta,
 * in their three layers and with their names (y, t, z, s).  u0 is the most
 * significant bit of each byte, so it is word 7; s0 likewise.
 *
 * Top linear layer: the 8 input bits to the 22 values the middle uses;
 * y[0] holds u7, which the middle uses as it is.
 */
static inline void sbox_top(const uint64_t q[8], uint64_t y[22])
{
    uint64_t u0 = q[7], u1 = q[6], u2 = q[5], u3 = q[4];
    uint64_t u4 = q[3], u5 = q[2], u6 = q[1], u7 = q[0];
    uint64_t t0, t1;

    y[0] = u7;
    y[14] = u3 ^ u5;
    y[13] = u0 ^ u6;
    y[9] = u0 ^ u3;
    y[8] = u0 ^ u5;
    t0 = u1 ^ u2;
    y[1] = t0 ^ u7;
    y[4] = y[1] ^ u3;
    y[12] = y[13] ^ y[14];
    y[2] = y[1] ^ u0;
    y[5] = y[1] ^ u6;
    y[3] = y[5] ^ y[8];
    t1 = u4 ^ y[12];
    y[15] = t1 ^ u5;
    y[20] = t1 ^ u1;
    y[6] = y[15] ^ u7;
    y[10] = y[15] ^ t0;
    y[11] = y[20] ^ y[9];
    y[7] = u7 ^ y[11];
    y[17] = y[10] ^ y[11];
    y[19] = y[10] ^ y[8];
    y[16] = t0 ^ y[11];
    y[21] = y[13] ^ y[16];
    y[18] = u0 ^ y[16];
}

/* Non-linear middle: inversion in GF((2^4)^2), then the 18 products. */
static inline void sbox_middle(const uint64_t y[22], uint64_t z[18])
{
    uint64_t t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13, t14, t15;
    uint64_t t16, t17, t18, t19, t20, t21, t22, t23, t24, t25, t26, t27;
    uint64_t t28, t29, t30, t31, t32, t33, t34, t35, t36, t37, t38, t39;
    uint64_t t40, t41, t42, t43, t44, t45;

    t2 = y[12] & y[15];
    t3 = y[3] & y[6];
    t4 = t3 ^ t2;
    t5 = y[4] & y[0];
    t6 = t5 ^ t2;
    t7 = y[13] & y[16];
    t8 = y[5] & y[1];
    t9 = t8 ^ t7;
    t10 = y[2] & y[7];
    t11 = t10 ^ t7;
    t12 = y[9] & y[11];
    t13 = y[14] & y[17];
    t14 = t13 ^ t12;
    t15 = y[8] & y[10];
    t16 = t15 ^ t12;
    t17 = t4 ^ t14;
    t18 = t6 ^ t16;
    t19 = t9 ^ t14;
    t20 = t11 ^ t16;
    t21 = t17 ^ y[20];
    t22 = t18 ^ y[19];
    t23 = t19 ^ y[21];
    t24 = t20 ^ y[18];

    t25 = t21 ^ t22;
    t26 = t21 & t23;
    t27 = t24 ^ t26;
    t28 = t25 & t27;
    t29 = t28 ^ t22;
    t30 = t23 ^ t24;
    t31 = t22 ^ t26;
    t32 = t31 & t30;
    t33 = t32 ^ t24;
    t34 = t23 ^ t33;
    t35 = t27 ^ t33;
    t36 = t24 & t35;
    t37 = t36 ^ t34;
    t38 = t27 ^ t36;
    t39 = t29 & t38;
    t40 = t25 ^ t39;

    t41 = t40 ^ t37;
    t42 = t29 ^ t33;
    t43 = t29 ^ t40;
    t44 = t33 ^ t37;
    t45 = t42 ^ t41;
    z[0] = t44 & y[15];
    z[1] = t37 & y[6];
    z[2] = t33 & y[0];
    z[3] = t43 & y[16];
    z[4] = t40 & y[1];
    z[5] = t29 & y[7];
    z[6] = t42 & y[11];
    z[7] = t45 & y[17];
    z[8] = t41 & y[10];
    z[9] = t44 & y[12];
    z[10] = t37 & y[3];
    z[11] = t33 & y[4];
    z[12] = t43 & y[13];
    z[13] = t40 & y[5];
    z[14] = t29 & y[2];
    z[15] = t42 & y[9];
    z[16] = t45 & y[14];
    z[17] = t41 & y[8];
}

/* Bottom linear layer; the affine constant 0x63 is the four NOTs. */
static inline void sbox_bottom(const uint64_t z[18], uint64_t q[8])
{
    uint64_t t46, t47, t48, t49, t50, t51, t52, t53, t54, t55, t56, t57;
    uint64_t t58, t59, t60, t61, t62, t63, t64, t65, t66, t67, s3;

    t46 = z[15] ^ z[16];
    t47 = z[10] ^ z[11];
    t48 = z[5] ^ z[13];
    t49 = z[9] ^ z[10];
    t50 = z[2] ^ z[12];
    t51 = z[2] ^ z[5];
    t52 = z[7] ^ z[8];
    t53 = z[0] ^ z[3];
    t54 = z[6] ^ z[7];
    t55 = z[16] ^ z[17];
    t56 = z[12] ^ t48;
    t57 = t50 ^ t53;
    t58 = z[4] ^ t46;
    t59 = z[3] ^ t54;
    t60 = t46 ^ t57;
    t61 = z[14] ^ t57;
    t62 = t52 ^ t58;
    t63 = t49 ^ t58;
    t64 = z[4] ^ t59;
    t65 = t61 ^ t62;
    t66 = z[1] ^ t63;
    t67 = t64 ^ t65;
    s3 = t53 ^ t66;

    q[7] = t59 ^ t63;           /* s0 */
    q[6] = ~(t64 ^ s3);         /* s1 */
    q[5] = ~(t55 ^ t67);        /* s2 */
    q[4] = s3;
    q[3] = t51 ^ t66;           /* s4 */
    q[2] = t47 ^ t65;           /* s5 */
    q[1] = ~(t56 ^ t62);        /* s6 */
    q[0] = ~(t48 ^ t60);        /* s7 */
}

static inline void sub_bytes(uint64_t q[8])
{
    uint64_t y[22], z[18];

    sbox_top(q, y);
    sbox_middle(y, z);
    sbox_bottom(z, q);
}

/*
 * Row r moves r columns to the left: inside the 16-bit group of row r, a
 * right rotation by 4*r bits.  Done as a rotation by 4 of rows 1 and 3,
 * then a byte swap (rotation by 8) of rows 2 and 3.
 */
static inline uint64_t shift_rows_word(uint64_t x)
{
    uint64_t t;

    x = (x & 0x0000FFFF0000FFFFu)
      | ((x >> 4) & 0x0FFF00000FFF0000u)
      | ((x << 12) & 0xF0000000F0000000u);
    t = ((x >> 8) ^ x) & 0x00FF00FF00000000u;
    return x ^ t ^ (t << 8);
}

static inline void shift_rows(uint64_t q[8])
{
    q[0] = shift_rows_word(q[0]);
    q[1] = shift_rows_word(q[1]);
    q[2] = shift_rows_word(q[2]);
    q[3] = shift_rows_word(q[3]);
    q[4] = shift_rows_word(q[4]);
    q[5] = shift_rows_word(q[5]);
    q[6] = shift_rows_word(q[6]);
    q[7] = shift_rows_word(q[7]);
}

/* Moves row r+1 of every column into row r (rows are 16-bit groups). */
static inline uint64_t next_row(uint64_t x)
{
    return (x >> 16) | (x << 48);
}

static inline uint64_t swap_halves(uint64_t x)
{
    return (x >> 32) | (x << 32);
}

/*
 * out_r = 2*a_r ^ 3*a_(r+1) ^ a_(r+2) ^ a_(r+3)
 *       = 2*s_r ^ a_(r+1) ^ s_(r+2)   with s_r = a_r ^ a_(r+1).
 * Doubling in GF(2^8) mod x^8+x^4+x^3+x+1 moves bit word b to b+1 and
 * adds the old top bit into words 0, 1, 3 and 4.
 */
static inline void mix_columns(uint64_t q[8])
{
    uint64_t n0 = next_row(q[0]), n1 = next_row(q[1]);
    uint64_t n2 = next_row(q[2]), n3 = next_row(q[3]);
    uint64_t n4 = next_row(q[4]), n5 = next_row(q[5]);
    uint64_t n6 = next_row(q[6]), n7 = next_row(q[7]);
    uint64_t s0 = q[0] ^ n0, s1 = q[1] ^ n1, s2 = q[2] ^ n2, s3 = q[3] ^ n3;
    uint64_t s4 = q[4] ^ n4, s5 = q[5] ^ n5, s6 = q[6] ^ n6, s7 = q[7] ^ n7;

    q[0] = s7 ^ n0 ^ swap_halves(s0);
    q[1] = s0 ^ s7 ^ n1 ^ swap_halves(s1);
    q[2] = s1 ^ n2 ^ swap_halves(s2);
    q[3] = s2 ^ s7 ^ n3 ^ swap_halves(s3);
    q[4] = s3 ^ s7 ^ n4 ^ swap_halves(s4);
    q[5] = s4 ^ n5 ^ swap_halves(s5);
    q[6] = s5 ^ n6 ^ swap_halves(s6);
    q[7] = s6 ^ n7 ^ swap_halves(s7);
}

static inline void add_round_key(uint64_t q[8], const uint64_t *rk)
{
    q[0] ^= rk[0];
    q[1] ^= rk[1];
    q[2] ^= rk[2];
    q[3] ^= rk[3];
    q[4] ^= rk[4];
    q[5] ^= rk[5];
    q[6] ^= rk[6];
    q[7] ^= rk[7];
}

static void aes_rounds(const uint64_t sk[AES_SK_WORDS], uint64_t q[8])
{
    unsigned round;

    add_round_key(q, sk);
    for (round = 1; round < AES_ROUNDS; round++) {
        sub_bytes(q);
        shift_rows(q);
        mix_columns(q);
        add_round_key(q, sk + 8 * round);
    }
    sub_bytes(q);
    shift_rows(q);
    add_round_key(q, sk + 8 * AES_ROUNDS);
}

/* Encrypts the four blocks in[0..63] into out (which may be in). */
static void aes_encrypt4(const uint64_t sk[AES_SK_WORDS],
                         const uint8_t in[AES_BATCH], uint8_t out[AES_BATCH])
{
    uint64_t q[8];

    aes_load4(q, in);
    aes_rounds(sk, q);
    aes_store4(out, q);
}

/*
 * The stored schedule keeps one copy of each round key bit (lane 0 of
 * the four block lanes, the positions == 0 mod 4).  Bit words 0..3 of a
 * round key share one stored word and words 4..7 the other, word b moved
 * to the positions == b mod 4.  Expansion copies lane 0 into lanes 1..3:
 * (x << 4) - x = 15 * x spreads each bit into the three positions above
 * it, without carries since the bits are four apart.
 */
#define LANE0_MASK 0x1111111111111111u

static void aes_expand(const aes128 *ctx, uint64_t sk[AES_SK_WORDS])
{
    unsigned round, b;

    for (round = 0; round <= AES_ROUNDS; round++)
        for (b = 0; b < 8; b++) {
            uint64_t x = (ctx->sk[2 * round + b / 4] >> (b % 4)) & LANE0_MASK;

            sk[8 * round + b] = (x << 4) - x;
        }
}

static void aes_compress_round_key(const uint8_t rk[16], uint64_t out[2])
{
    uint8_t batch[AES_BATCH];
    uint64_t q[8];
    unsigned lane, half;

    for (lane = 0; lane < AES_LANES; lane++)
        memcpy(batch + 16 * lane, rk, 16);
    aes_load4(q, batch);
    for (half = 0; half < 2; half++)
        out[half] = (q[4 * half + 0] & LANE0_MASK)
                  | (q[4 * half + 1] & (LANE0_MASK << 1))
                  | (q[4 * half + 2] & (LANE0_MASK << 2))
                  | (q[4 * half + 3] & (LANE0_MASK << 3));
}

/* SubWord(RotWord(w)) of the key expansion, through the same circuit. */
static void sub_rot_word(const uint8_t in[4], uint8_t out[4])
{
    uint8_t batch[AES_BATCH];
    uint64_t q[8];
    unsigned i;

    memset(batch, 0, sizeof batch);
    for (i = 0; i < 4; i++)
        batch[i] = in[(i + 1) % 4];
    aes_load4(q, batch);
    sub_bytes(q);
    aes_store4(batch, q);
    memcpy(out, batch, 4);
}

void aes128_init(aes128 *ctx, const uint8_t key[KEY_SIZE])
{
    static const uint8_t rcon[AES_ROUNDS] = {
        0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1B, 0x36
    };
    uint8_t rk[16 * (AES_ROUNDS + 1)];
    unsigned i, j;

    memcpy(rk, key, KEY_SIZE);
    for (i = 16; i < sizeof rk; i += 4) {
        uint8_t t[4];

        if (i % 16 == 0) {
            sub_rot_word(rk + i - 4, t);
            t[0] ^= rcon[i / 16 - 1];
        } else {
            memcpy(t, rk + i - 4, 4);
        }
        for (j = 0; j < 4; j++)
            rk[i + j] = (uint8_t)(rk[i - 16 + j] ^ t[j]);
    }
    for (i = 0; i <= AES_ROUNDS; i++)
        aes_compress_round_key(rk + 16 * i, ctx->sk + 2 * i);
}

void aes128_encrypt(const aes128 *ctx, const uint8_t in[16], uint8_t out[16])
{
    uint64_t sk[AES_SK_WORDS];
    uint8_t batch[AES_BATCH];

    aes_expand(ctx, sk);
    memset(batch, 0, sizeof batch);
    memcpy(batch, in, 16);
    aes_encrypt4(sk, batch, batch);
    memcpy(out, batch, 16);
}

/* ------------------------------------------------------------------------
 * GHASH
 *
 * A block is the big-endian pair (hi, lo); the coefficient of x^i of the
 * field element is bit 127 - i, so products come out bit-reflected.
 * ---------------------------------------------------------------------- */

static inline uint64_t get_u64be(const uint8_t *p)
{
    return (uint64_t)get_u32be(p) << 32 | get_u32be(p + 4);
}

static inline void put_u64be(uint8_t *p, uint64_t v)
{
    put_u32be(p, (uint32_t)(v >> 32));
    put_u32be(p + 4, (uint32_t)v);
}

/*
 * The low 64 bits of the carry-less product x * y.  Each operand is split
 * into four parts whose bits are four apart; an integer product of two
 * parts then sums at most 15 terms per position below bit 60 (16 only at
 * or above it, where 16 * 2^p overflows away), so carries never reach the
 * next position of the same class and the masked bit is the XOR sum.
 */
static inline uint64_t clmul_lo(uint64_t x, uint64_t y)
{
    const uint64_t m0 = 0x1111111111111111u;
    const uint64_t m1 = m0 << 1, m2 = m0 << 2, m3 = m0 << 3;
    uint64_t x0 = x & m0, x1 = x & m1, x2 = x & m2, x3 = x & m3;
    uint64_t y0 = y & m0, y1 = y & m1, y2 = y & m2, y3 = y & m3;
    uint64_t z0, z1, z2, z3;

    z0 = (x0 * y0) ^ (x1 * y3) ^ (x2 * y2) ^ (x3 * y1);
    z1 = (x0 * y1) ^ (x1 * y0) ^ (x2 * y3) ^ (x3 * y2);
    z2 = (x0 * y2) ^ (x1 * y1) ^ (x2 * y0) ^ (x3 * y3);
    z3 = (x0 * y3) ^ (x1 * y2) ^ (x2 * y1) ^ (x3 * y0);
    return (z0 & m0) | (z1 & m1) | (z2 & m2) | (z3 & m3);
}

static inline uint64_t reverse_bits64(uint64_t x)
{
    x = ((x >> 1) & 0x5555555555555555u) | ((x & 0x5555555555555555u) << 1);
    x = ((x >> 2) & 0x3333333333333333u) | ((x & 0x3333333333333333u) << 2);
    x = ((x >> 4) & 0x0F0F0F0F0F0F0F0Fu) | ((x & 0x0F0F0F0F0F0F0F0Fu) << 4);
    x = ((x >> 8) & 0x00FF00FF00FF00FFu) | ((x & 0x00FF00FF00FF00FFu) << 8);
    x = ((x >> 16) & 0x0000FFFF0000FFFFu) | ((x & 0x0000FFFF0000FFFFu) << 16);
    return (x >> 32) | (x << 32);
}

/*
 * The hash subkey in the forms one multiplication needs: for each of
 * H.hi, H.lo and H.hi ^ H.lo (Karatsuba's middle term), the value and its
 * bit reversal (which gives the high half of a 64 x 64 product).
 */
typedef struct ghash_key {
    uint64_t h[3];
    uint64_t h_rev[3];
} ghash_key;

typedef struct ghash_state {
    uint64_t hi, lo;
} ghash_state;

static void ghash_key_init(ghash_key *k, const gcm_key *gk)
{
    unsigned i;

    k->h[0] = gk->h_hi;
    k->h[1] = gk->h_lo;
    k->h[2] = gk->h_hi ^ gk->h_lo;
    for (i = 0; i < 3; i++)
        k->h_rev[i] = reverse_bits64(k->h[i]);
}

/* The 128-bit carry-less product of x and h, each given with its bit
 * reversal: the low half directly, the high half from the reversed
 * operands, whose product is the reversed 127-bit product. */
static inline void clmul_128(uint64_t x, uint64_t x_rev, uint64_t h,
                             uint64_t h_rev, uint64_t *hi, uint64_t *lo)
{
    *lo = clmul_lo(x, h);
    *hi = reverse_bits64(clmul_lo(x_rev, h_rev)) >> 1;
}

/*
 * Reduces the 256-bit product w[3]:w[2]:w[1]:w[0] (w[3] most significant,
 * already shifted left by one so that x^k is bit 255 - k) modulo
 * x^128 + x^7 + x^2 + x + 1.  x^(128+k) = x^k (1 + x + x^2 + x^7), and in
 * this reflected order a factor x^j is a right shift by j; w[0] folds into
 * w[2]:w[1], then w[1] into w[3]:w[2].
 */
static void ghash_reduce(uint64_t w[4], ghash_state *y)
{
    unsigned i;

    for (i = 0; i < 2; i++) {
        uint64_t v = w[i];

        w[i + 2] ^= v ^ (v >> 1) ^ (v >> 2) ^ (v >> 7);
        w[i + 1] ^= (v << 63) ^ (v << 62) ^ (v << 57);
    }
    y->hi = w[3];
    y->lo = w[2];
}

/* y = y * H in GF(2^128). */
static void ghash_mul(ghash_state *y, const ghash_key *k)
{
    uint64_t hi_rev = reverse_bits64(y->hi), lo_rev = reverse_bits64(y->lo);
    uint64_t hh, hl, lh, ll, mh, ml, w[4];

    clmul_128(y->hi, hi_rev, k->h[0], k->h_rev[0], &hh, &hl);
    clmul_128(y->lo, lo_rev, k->h[1], k->h_rev[1], &lh, &ll);
    clmul_128(y->hi ^ y->lo, hi_rev ^ lo_rev, k->h[2], k->h_rev[2], &mh, &ml);
    mh ^= hh ^ lh;
    ml ^= hl ^ ll;
    /* (hh:hl) << 128 ^ (mh:ml) << 64 ^ (lh:ll), then shifted left by one:
     * the reflected product has 255 bits. */
    w[3] = hh;
    w[2] = hl ^ mh;
    w[1] = lh ^ ml;
    w[0] = ll;
    w[3] = (w[3] << 1) | (w[2] >> 63);
    w[2] = (w[2] << 1) | (w[1] >> 63);
    w[1] = (w[1] << 1) | (w[0] >> 63);
    w[0] <<= 1;
    ghash_reduce(w, y);
}

/* Absorbs p[0..len), the last block padded with zeros. */
static void ghash_update(ghash_state *y, const ghash_key *k,
                         const uint8_t *p, size_t len)
{
    while (len > 0) {
        uint8_t block[16];
        const uint8_t *b = p;
        size_t n = len < 16 ? len : 16;

        if (n < 16) {
            memset(block, 0, sizeof block);
            memcpy(block, p, n);
            b = block;
        }
        y->hi ^= get_u64be(b);
        y->lo ^= get_u64be(b + 8);
        ghash_mul(y, k);
        p += n;
        len -= n;
    }
}

/* ------------------------------------------------------------------------
 * AES-128-GCM
 * ---------------------------------------------------------------------- */

void gcm_init(gcm_key *gk, const uint8_t key[KEY_SIZE])
{
    static const uint8_t zero[16];
    uint8_t h[16];

    aes128_init(&gk->aes, key);
    aes128_encrypt(&gk->aes, zero, h);
    gk->h_hi = get_u64be(h);
    gk->h_lo = get_u64be(h + 8);
}

/* Counter values after the 12-byte IV: J0 masks the tag, data starts at
 * inc32(J0). */
#define GCM_CTR_TAG 1u
#define GCM_CTR_DATA 2u

/* Four counter blocks iv || ctr, iv || ctr+1, ... (mod 2^32, inc32). */
static void ctr_blocks(uint8_t batch[AES_BATCH], const uint8_t iv[GCM_IV_SIZE],
                       uint32_t ctr)
{
    unsigned lane;

    for (lane = 0; lane < AES_LANES; lane++) {
        memcpy(batch + 16 * lane, iv, GCM_IV_SIZE);
        put_u32be(batch + 16 * lane + GCM_IV_SIZE, (uint32_t)(ctr + lane));
    }
}

/* out = in ^ keystream from counter block iv || ctr on; out may be in. */
static void ctr_xor(const uint64_t sk[AES_SK_WORDS],
                    const uint8_t iv[GCM_IV_SIZE], uint32_t ctr,
                    const uint8_t *in, uint8_t *out, size_t len)
{
    uint8_t ks[AES_BATCH];

    while (len > 0) {
        size_t n = len < AES_BATCH ? len : AES_BATCH;
        size_t i;

        ctr_blocks(ks, iv, ctr);
        aes_encrypt4(sk, ks, ks);
        for (i = 0; i < n; i++)
            out[i] = (uint8_t)(in[i] ^ ks[i]);
        ctr += AES_LANES;
        in += n;
        out += n;
        len -= n;
    }
}

/* The full 16-byte tag: GHASH(A, C) ^ E(J0), J0 = iv || 00000001. */
static void gcm_tag(const gcm_key *gk, const uint64_t sk[AES_SK_WORDS],
                    const uint8_t iv[GCM_IV_SIZE],
                    const uint8_t *aad, size_t aad_len,
                    const uint8_t *cipher, size_t len, uint8_t tag[16])
{
    ghash_key k;
    ghash_state y = { 0, 0 };
    uint8_t lengths[16], mask[AES_BATCH];
    unsigned i;

    ghash_key_init(&k, gk);
    ghash_update(&y, &k, aad, aad_len);
    ghash_update(&y, &k, cipher, len);
    put_u64be(lengths, (uint64_t)aad_len * 8);
    put_u64be(lengths + 8, (uint64_t)len * 8);
    ghash_update(&y, &k, lengths, sizeof lengths);
    put_u64be(tag, y.hi);
    put_u64be(tag + 8, y.lo);

    ctr_blocks(mask, iv, GCM_CTR_TAG);
    aes_encrypt4(sk, mask, mask);
    for (i = 0; i < 16; i++)
        tag[i] ^= mask[i];
}

void gcm_seal(const gcm_key *gk, const uint8_t iv[GCM_IV_SIZE],
              const uint8_t *aad, size_t aad_len,
              const uint8_t *plain, size_t len, uint8_t *cipher,
              uint8_t *tag, size_t tag_len)
{
    uint64_t sk[AES_SK_WORDS];
    uint8_t full[GCM_TAG_FULL];

    assert(tag_len >= 1 && tag_len <= GCM_TAG_FULL);
    aes_expand(&gk->aes, sk);
    ctr_xor(sk, iv, GCM_CTR_DATA, plain, cipher, len);
    gcm_tag(gk, sk, iv, aad, aad_len, cipher, len, full);
    memcpy(tag, full, tag_len);
}

int gcm_open(const gcm_key *gk, const uint8_t iv[GCM_IV_SIZE],
             const uint8_t *aad, size_t aad_len,
             const uint8_t *cipher, size_t len, uint8_t *plain,
             const uint8_t *tag, size_t tag_len)
{
    uint64_t sk[AES_SK_WORDS];
    uint8_t full[GCM_TAG_FULL];
    unsigned diff = 0;
    size_t i;

    /* A zero-length tag would authenticate anything: refuse it. */
    if (tag_len == 0 || tag_len > GCM_TAG_FULL)
        return -1;
    aes_expand(&gk->aes, sk);
    gcm_tag(gk, sk, iv, aad, aad_len, cipher, len, full);
    for (i = 0; i < tag_len; i++)
        diff |= (unsigned)(full[i] ^ tag[i]);
    if (diff != 0)
        return -1;
    ctr_xor(sk, iv, GCM_CTR_DATA, cipher, plain, len);
    return 0;
}

/* ------------------------------------------------------------------------
 * Frame checks
 * ---------------------------------------------------------------------- */

/*
 * CRC-16/X-25 (catalogue name; also CRC-16/IBM-SDLC): poly 0x1021 used
 * reflected (0x8408), init 0xFFFF, refin and refout, xorout 0xFFFF, check
 * 0x906E for "123456789".  The result goes on the wire big-endian (the
 * caller's put_u16be), which is the protocol's choice, not the model's.
 * The tables are indexed by public data (frame bytes), never by a key.
 *
 * Slicing by 8: table k maps a byte to its CRC contribution when k zero
 * bytes follow it, so eight bytes are folded with eight independent lookups
 * instead of a chain of eight dependent ones; that is what lets the decoder
 * check frames at several hundred MB/s.  Table 0 entry i is i run through
 * eight steps of the bitwise register (shift right, XOR 0x8408 when the bit
 * shifted out was 1); table k entry i is table k-1 entry i advanced by one
 * zero byte.  They are written out because computing them in macros takes
 * the compiler minutes; test_crypto.c checks every entry against the
 * bitwise definition.
 */
static const uint16_t crc16_table[8][256] = {
    {
        0x0000, 0x1189, 0x2312, 0x329B, 0x4624, 0x57AD, 0x6536, 0x74BF,
        0x8C48, 0x9DC1, 0xAF5A, 0xBED3, 0xCA6C, 0xDBE5, 0xE97E, 0xF8F7,
        0x1081, 0x0108, 0x3393, 0x221A, 0x56A5, 0x472C, 0x75B7, 0x643E,
        0x9CC9, 0x8D40, 0xBFDB, 0xAE52, 0xDAED, 0xCB64, 0xF9FF, 0xE876,
        0x2102, 0x308B, 0x0210, 0x1399, 0x6726, 0x76AF, 0x4434, 0x55BD,
        0xAD4A, 0xBCC3, 0x8E58, 0x9FD1, 0xEB6E, 0xFAE7, 0xC87C, 0xD9F5,
        0x3183, 0x200A, 0x1291, 0x0318, 0x77A7, 0x662E, 0x54B5, 0x453C,
        0xBDCB, 0xAC42, 0x9ED9, 0x8F50, 0xFBEF, 0xEA66, 0xD8FD, 0xC974,
        0x4204, 0x538D, 0x6116, 0x709F, 0x0420, 0x15A9, 0x2732, 0x36BB,
        0xCE4C, 0xDFC5, 0xED5E, 0xFCD7, 0x8868, 0x99E1, 0xAB7A, 0xBAF3,
        0x5285, 0x430C, 0x7197, 0x601E, 0x14A1, 0x0528, 0x37B3, 0x263A,
        0xDECD, 0xCF44, 0xFDDF, 0xEC56, 0x98E9, 0x8960, 0xBBFB, 0xAA72,
        0x6306, 0x728F, 0x4014, 0x519D, 0x2522, 0x34AB, 0x0630, 0x17B9,
        0xEF4E, 0xFEC7, 0xCC5C, 0xDDD5, 0xA96A, 0xB8E3, 0x8A78, 0x9BF1,
        0x7387, 0x620E, 0x5095, 0x411C, 0x35A3, 0x242A, 0x16B1, 0x0738,
        0xFFCF, 0xEE46, 0xDCDD, 0xCD54, 0xB9EB, 0xA862, 0x9AF9, 0x8B70,
        0x8408, 0x9581, 0xA71A, 0xB693, 0xC22C, 0xD3A5, 0xE13E, 0xF0B7,
        0x0840, 0x19C9, 0x2B52, 0x3ADB, 0x4E64, 0x5FED, 0x6D76, 0x7CFF,
        0x9489, 0x8500, 0xB79B, 0xA612, 0xD2AD, 0xC324, 0xF1BF, 0xE036,
        0x18C1, 0x0948, 0x3BD3, 0x2A5A, 0x5EE5, 0x4F6C, 0x7DF7, 0x6C7E,
        0xA50A, 0xB483, 0x8618, 0x9791, 0xE32E, 0xF2A7, 0xC03C, 0xD1B5,
        0x2942, 0x38CB, 0x0A50, 0x1BD9, 0x6F66, 0x7EEF, 0x4C74, 0x5DFD,
        0xB58B, 0xA402, 0x9699, 0x8710, 0xF3AF, 0xE226, 0xD0BD, 0xC134,
        0x39C3, 0x284A, 0x1AD1, 0x0B58, 0x7FE7, 0x6E6E, 0x5CF5, 0x4D7C,
        0xC60C, 0xD785, 0xE51E, 0xF497, 0x8028, 0x91A1, 0xA33A, 0xB2B3,
        0x4A44, 0x5BCD, 0x6956, 0x78DF, 0x0C60, 0x1DE9, 0x2F72, 0x3EFB,
        0xD68D, 0xC704, 0xF59F, 0xE416, 0x90A9, 0x8120, 0xB3BB, 0xA232,
        0x5AC5, 0x4B4C, 0x79D7, 0x685E, 0x1CE1, 0x0D68, 0x3FF3, 0x2E7A,
        0xE70E, 0xF687, 0xC41C, 0xD595, 0xA12A, 0xB0A3, 0x8238, 0x93B1,
        0x6B46, 0x7ACF, 0x4854, 0x59DD, 0x2D62, 0x3CEB, 0x0E70, 0x1FF9,
        0xF78F, 0xE606, 0xD49D, 0xC514, 0xB1AB, 0xA022, 0x92B9, 0x8330,
        0x7BC7, 0x6A4E, 0x58D5, 0x495C, 0x3DE3, 0x2C6A, 0x1EF1, 0x0F78
    },
    {
        0x0000, 0x19D8, 0x33B0, 0x2A68, 0x6760, 0x7EB8, 0x54D0, 0x4D08,
        0xCEC0, 0xD718, 0xFD70, 0xE4A8, 0xA9A0, 0xB078, 0x9A10, 0x83C8,
        0x9591, 0x8C49, 0xA621, 0xBFF9, 0xF2F1, 0xEB29, 0xC141, 0xD899,
        0x5B51, 0x4289, 0x68E1, 0x7139, 0x3C31, 0x25E9, 0x0F81, 0x1659,
        0x2333, 0x3AEB, 0x1083, 0x095B, 0x4453, 0x5D8B, 0x77E3, 0x6E3B,
        0xEDF3, 0xF42B, 0xDE43, 0xC79B, 0x8A93, 0x934B, 0xB923, 0xA0FB,
        0xB6A2, 0xAF7A, 0x8512, 0x9CCA, 0xD1C2, 0xC81A, 0xE272, 0xFBAA,
        0x7862, 0x61BA, 0x4BD2, 0x520A, 0x1F02, 0x06DA, 0x2CB2, 0x356A,
        0x4666, 0x5FBE, 0x75D6, 0x6C0E, 0x2106, 0x38DE, 0x12B6, 0x0B6E,
        0x88A6, 0x917E, 0xBB16, 0xA2CE, 0xEFC6, 0xF61E, 0xDC76, 0xC5AE,
        0xD3F7, 0xCA2F, 0xE047, 0xF99F, 0xB497, 0xAD4F, 0x8727, 0x9EFF,
        0x1D37, 0x04EF, 0x2E87, 0x375F, 0x7A57, 0x638F, 0x49E7, 0x503F,
        0x6555, 0x7C8D, 0x56E5, 0x4F3D, 0x0235, 0x1BED, 0x3185, 0x285D,
        0xAB95, 0xB24D, 0x9825, 0x81FD, 0xCCF5, 0xD52D, 0xFF45, 0xE69D,
        0xF0C4, 0xE91C, 0xC374, 0xDAAC, 0x97A4, 0x8E7C, 0xA414, 0xBDCC,
        0x3E04, 0x27DC, 0x0DB4, 0x146C, 0x5964, 0x40BC, 0x6AD4, 0x730C,
        0x8CCC, 0x9514, 0xBF7C, 0xA6A4, 0xEBAC, 0xF274, 0xD81C, 0xC1C4,
        0x420C, 0x5BD4, 0x71BC, 0x6864, 0x256C, 0x3CB4, 0x16DC, 0x0F04,
        0x195D, 0x0085, 0x2AED, 0x3335, 0x7E3D, 0x67E5, 0x4D8D, 0x5455,
        0xD79D, 0xCE45, 0xE42D, 0xFDF5, 0xB0FD, 0xA925, 0x834D, 0x9A95,
        0xAFFF, 0xB627, 0x9C4F, 0x8597, 0xC89F, 0xD147, 0xFB2F, 0xE2F7,
        0x613F, 0x78E7, 0x528F, 0x4B57, 0x065F, 0x1F87, 0x35EF, 0x2C37,
        0x3A6E, 0x23B6, 0x09DE, 0x1006, 0x5D0E, 0x44D6, 0x6EBE, 0x7766,
        0xF4AE, 0xED76, 0xC71E, 0xDEC6, 0x93CE, 0x8A16, 0xA07E, 0xB9A6,
        0xCAAA, 0xD372, 0xF91A, 0xE0C2, 0xADCA, 0xB412, 0x9E7A, 0x87A2,
        0x046A, 0x1DB2, 0x37DA, 0x2E02, 0x630A, 0x7AD2, 0x50BA, 0x4962,
        0x5F3B, 0x46E3, 0x6C8B, 0x7553, 0x385B, 0x2183, 0x0BEB, 0x1233,
        0x91FB, 0x8823, 0xA24B, 0xBB93, 0xF69B, 0xEF43, 0xC52B, 0xDCF3,
        0xE999, 0xF041, 0xDA29, 0xC3F1, 0x8EF9, 0x9721, 0xBD49, 0xA491,
        0x2759, 0x3E81, 0x14E9, 0x0D31, 0x4039, 0x59E1, 0x7389, 0x6A51,
        0x7C08, 0x65D0, 0x4FB8, 0x5660, 0x1B68, 0x02B0, 0x28D8, 0x3100,
        0xB2C8, 0xAB10, 0x8178, 0x98A0, 0xD5A8, 0xCC70, 0xE618, 0xFFC0
    },
    {
        0x0000, 0x5ADC, 0xB5B8, 0xEF64, 0x6361, 0x39BD, 0xD6D9, 0x8C05,
        0xC6C2, 0x9C1E, 0x737A, 0x29A6, 0xA5A3, 0xFF7F, 0x101B, 0x4AC7,
        0x8595, 0xDF49, 0x302D, 0x6AF1, 0xE6F4, 0xBC28, 0x534C, 0x0990,
        0x4357, 0x198B, 0xF6EF, 0xAC33, 0x2036, 0x7AEA, 0x958E, 0xCF52,
        0x033B, 0x59E7, 0xB683, 0xEC5F, 0x605A, 0x3A86, 0xD5E2, 0x8F3E,
        0xC5F9, 0x9F25, 0x7041, 0x2A9D, 0xA698, 0xFC44, 0x1320, 0x49FC,
        0x86AE, 0xDC72, 0x3316, 0x69CA, 0xE5CF, 0xBF13, 0x5077, 0x0AAB,
        0x406C, 0x1AB0, 0xF5D4, 0xAF08, 0x230D, 0x79D1, 0x96B5, 0xCC69,
        0x0676, 0x5CAA, 0xB3CE, 0xE912, 0x6517, 0x3FCB, 0xD0AF, 0x8A73,
        0xC0B4, 0x9A68, 0x750C, 0x2FD0, 0xA3D5, 0xF909, 0x166D, 0x4CB1,
        0x83E3, 0xD93F, 0x365B, 0x6C87, 0xE082, 0xBA5E, 0x553A, 0x0FE6,
        0x4521, 0x1FFD, 0xF099, 0xAA45, 0x2640, 0x7C9C, 0x93F8, 0xC924,
        0x054D, 0x5F91, 0xB0F5, 0xEA29, 0x662C, 0x3CF0, 0xD394, 0x8948,
        0xC38F, 0x9953, 0x7637, 0x2CEB, 0xA0EE, 0xFA32, 0x1556, 0x4F8A,
        0x80D8, 0xDA04, 0x3560, 0x6FBC, 0xE3B9, 0xB965, 0x5601, 0x0CDD,
        0x461A, 0x1CC6, 0xF3A2, 0xA97E, 0x257B, 0x7FA7, 0x90C3, 0xCA1F,
        0x0CEC, 0x5630, 0xB954, 0xE388, 0x6F8D, 0x3551, 0xDA35, 0x80E9,
        0xCA2E, 0x90F2, 0x7F96, 0x254A, 0xA94F, 0xF393, 0x1CF7, 0x462B,
        0x8979, 0xD3A5, 0x3CC1, 0x661D, 0xEA18, 0xB0C4, 0x5FA0, 0x057C,
        0x4FBB, 0x1567, 0xFA03, 0xA0DF, 0x2CDA, 0x7606, 0x9962, 0xC3BE,
        0x0FD7, 0x550B, 0xBA6F, 0xE0B3, 0x6CB6, 0x366A, 0xD90E, 0x83D2,
        0xC915, 0x93C9, 0x7CAD, 0x2671, 0xAA74, 0xF0A8, 0x1FCC, 0x4510,
        0x8A42, 0xD09E, 0x3FFA, 0x6526, 0xE923, 0xB3FF, 0x5C9B, 0x0647,
        0x4C80, 0x165C, 0xF938, 0xA3E4, 0x2FE1, 0x753D, 0x9A59, 0xC085,
        0x0A9A, 0x5046, 0xBF22, 0xE5FE, 0x69FB, 0x3327, 0xDC43, 0x869F,
        0xCC58, 0x9684, 0x79E0, 0x233C, 0xAF39, 0xF5E5, 0x1A81, 0x405D,
        0x8F0F, 0xD5D3, 0x3AB7, 0x606B, 0xEC6E, 0xB6B2, 0x59D6, 0x030A,
        0x49CD, 0x1311, 0xFC75, 0xA6A9, 0x2AAC, 0x7070, 0x9F14, 0xC5C8,
        0x09A1, 0x537D, 0xBC19, 0xE6C5, 0x6AC0, 0x301C, 0xDF78, 0x85A4,
        0xCF63, 0x95BF, 0x7ADB, 0x2007, 0xAC02, 0xF6DE, 0x19BA, 0x4366,
        0x8C34, 0xD6E8, 0x398C, 0x6350, 0xEF55, 0xB589, 0x5AED, 0x0031,
        0x4AF6, 0x102A, 0xFF4E, 0xA592, 0x2997, 0x734B, 0x9C2F, 0xC6F3
    },
    {
        0x0000, 0x1CBB, 0x3976, 0x25CD, 0x72EC, 0x6E57, 0x4B9A, 0x5721,
        0xE5D8, 0xF963, 0xDCAE, 0xC015, 0x9734, 0x8B8F, 0xAE42, 0xB2F9,
        0xC3A1, 0xDF1A, 0xFAD7, 0xE66C, 0xB14D, 0xADF6, 0x883B, 0x9480,
        0x2679, 0x3AC2, 0x1F0F, 0x03B4, 0x5495, 0x482E, 0x6DE3, 0x7158,
        0x8F53, 0x93E8, 0xB625, 0xAA9E, 0xFDBF, 0xE104, 0xC4C9, 0xD872,
        0x6A8B, 0x7630, 0x53FD, 0x4F46, 0x1867, 0x04DC, 0x2111, 0x3DAA,
        0x4CF2, 0x5049, 0x7584, 0x693F, 0x3E1E, 0x22A5, 0x0768, 0x1BD3,
        0xA92A, 0xB591, 0x905C, 0x8CE7, 0xDBC6, 0xC77D, 0xE2B0, 0xFE0B,
        0x16B7, 0x0A0C, 0x2FC1, 0x337A, 0x645B, 0x78E0, 0x5D2D, 0x4196,
        0xF36F, 0xEFD4, 0xCA19, 0xD6A2, 0x8183, 0x9D38, 0xB8F5, 0xA44E,
        0xD516, 0xC9AD, 0xEC60, 0xF0DB, 0xA7FA, 0xBB41, 0x9E8C, 0x8237,
        0x30CE, 0x2C75, 0x09B8, 0x1503, 0x4222, 0x5E99, 0x7B54, 0x67EF,
        0x99E4, 0x855F, 0xA092, 0xBC29, 0xEB08, 0xF7B3, 0xD27E, 0xCEC5,
        0x7C3C, 0x6087, 0x454A, 0x59F1, 0x0ED0, 0x126B, 0x37A6, 0x2B1D,
        0x5A45, 0x46FE, 0x6333, 0x7F88, 0x28A9, 0x3412, 0x11DF, 0x0D64,
        0xBF9D, 0xA326, 0x86EB, 0x9A50, 0xCD71, 0xD1CA, 0xF407, 0xE8BC,
        0x2D6E, 0x31D5, 0x1418, 0x08A3, 0x5F82, 0x4339, 0x66F4, 0x7A4F,
        0xC8B6, 0xD40D, 0xF1C0, 0xED7B, 0xBA5A, 0xA6E1, 0x832C, 0x9F97,
        0xEECF, 0xF274, 0xD7B9, 0xCB02, 0x9C23, 0x8098, 0xA555, 0xB9EE,
        0x0B17, 0x17AC, 0x3261, 0x2EDA, 0x79FB, 0x6540, 0x408D, 0x5C36,
        0xA23D, 0xBE86, 0x9B4B, 0x87F0, 0xD0D1, 0xCC6A, 0xE9A7, 0xF51C,
        0x47E5, 0x5B5E, 0x7E93, 0x6228, 0x3509, 0x29B2, 0x0C7F, 0x10C4,
        0x619C, 0x7D27, 0x58EA, 0x4451, 0x1370, 0x0FCB, 0x2A06, 0x36BD,
        0x8444, 0x98FF, 0xBD32, 0xA189, 0xF6A8, 0xEA13, 0xCFDE, 0xD365,
        0x3BD9, 0x2762, 0x02AF, 0x1E14, 0x4935, 0x558E, 0x7043, 0x6CF8,
        0xDE01, 0xC2BA, 0xE777, 0xFBCC, 0xACED, 0xB056, 0x959B, 0x8920,
        0xF878, 0xE4C3, 0xC10E, 0xDDB5, 0x8A94, 0x962F, 0xB3E2, 0xAF59,
        0x1DA0, 0x011B, 0x24D6, 0x386D, 0x6F4C, 0x73F7, 0x563A, 0x4A81,
        0xB48A, 0xA831, 0x8DFC, 0x9147, 0xC666, 0xDADD, 0xFF10, 0xE3AB,
        0x5152, 0x4DE9, 0x6824, 0x749F, 0x23BE, 0x3F05, 0x1AC8, 0x0673,
        0x772B, 0x6B90, 0x4E5D, 0x52E6, 0x05C7, 0x197C, 0x3CB1, 0x200A,
        0x92F3, 0x8E48, 0xAB85, 0xB73E, 0xE01F, 0xFCA4, 0xD969, 0xC5D2
    },
    {
        0x0000, 0x0B44, 0x1688, 0x1DCC, 0x2D10, 0x2654, 0x3B98, 0x30DC,
        0x5A20, 0x5164, 0x4CA8, 0x47EC, 0x7730, 0x7C74, 0x61B8, 0x6AFC,
        0xB440, 0xBF04, 0xA2C8, 0xA98C, 0x9950, 0x9214, 0x8FD8, 0x849C,
        0xEE60, 0xE524, 0xF8E8, 0xF3AC, 0xC370, 0xC834, 0xD5F8, 0xDEBC,
        0x6091, 0x6BD5, 0x7619, 0x7D5D, 0x4D81, 0x46C5, 0x5B09, 0x504D,
        0x3AB1, 0x31F5, 0x2C39, 0x277D, 0x17A1, 0x1CE5, 0x0129, 0x0A6D,
        0xD4D1, 0xDF95, 0xC259, 0xC91D, 0xF9C1, 0xF285, 0xEF49, 0xE40D,
        0x8EF1, 0x85B5, 0x9879, 0x933D, 0xA3E1, 0xA8A5, 0xB569, 0xBE2D,
        0xC122, 0xCA66, 0xD7AA, 0xDCEE, 0xEC32, 0xE776, 0xFABA, 0xF1FE,
        0x9B02, 0x9046, 0x8D8A, 0x86CE, 0xB612, 0xBD56, 0xA09A, 0xABDE,
        0x7562, 0x7E26, 0x63EA, 0x68AE, 0x5872, 0x5336, 0x4EFA, 0x45BE,
        0x2F42, 0x2406, 0x39CA, 0x328E, 0x0252, 0x0916, 0x14DA, 0x1F9E,
        0xA1B3, 0xAAF7, 0xB73B, 0xBC7F, 0x8CA3, 0x87E7, 0x9A2B, 0x916F,
        0xFB93, 0xF0D7, 0xED1B, 0xE65F, 0xD683, 0xDDC7, 0xC00B, 0xCB4F,
        0x15F3, 0x1EB7, 0x037B, 0x083F, 0x38E3, 0x33A7, 0x2E6B, 0x252F,
        0x4FD3, 0x4497, 0x595B, 0x521F, 0x62C3, 0x6987, 0x744B, 0x7F0F,
        0x8A55, 0x8111, 0x9CDD, 0x9799, 0xA745, 0xAC01, 0xB1CD, 0xBA89,
        0xD075, 0xDB31, 0xC6FD, 0xCDB9, 0xFD65, 0xF621, 0xEBED, 0xE0A9,
        0x3E15, 0x3551, 0x289D, 0x23D9, 0x1305, 0x1841, 0x058D, 0x0EC9,
        0x6435, 0x6F71, 0x72BD, 0x79F9, 0x4925, 0x4261, 0x5FAD, 0x54E9,
        0xEAC4, 0xE180, 0xFC4C, 0xF708, 0xC7D4, 0xCC90, 0xD15C, 0xDA18,
        0xB0E4, 0xBBA0, 0xA66C, 0xAD28, 0x9DF4, 0x96B0, 0x8B7C, 0x8038,
        0x5E84, 0x55C0, 0x480C, 0x4348, 0x7394, 0x78D0, 0x651C, 0x6E58,
        0x04A4, 0x0FE0, 0x122C, 0x1968, 0x29B4, 0x22F0, 0x3F3C, 0x3478,
        0x4B77, 0x4033, 0x5DFF, 0x56BB, 0x6667, 0x6D23, 0x70EF, 0x7BAB,
        0x1157, 0x1A13, 0x07DF, 0x0C9B, 0x3C47, 0x3703, 0x2ACF, 0x218B,
        0xFF37, 0xF473, 0xE9BF, 0xE2FB, 0xD227, 0xD963, 0xC4AF, 0xCFEB,
        0xA517, 0xAE53, 0xB39F, 0xB8DB, 0x8807, 0x8343, 0x9E8F, 0x95CB,
        0x2BE6, 0x20A2, 0x3D6E, 0x362A, 0x06F6, 0x0DB2, 0x107E, 0x1B3A,
        0x71C6, 0x7A82, 0x674E, 0x6C0A, 0x5CD6, 0x5792, 0x4A5E, 0x411A,
        0x9FA6, 0x94E2, 0x892E, 0x826A, 0xB2B6, 0xB9F2, 0xA43E, 0xAF7A,
        0xC586, 0xCEC2, 0xD30E, 0xD84A, 0xE896, 0xE3D2, 0xFE1E, 0xF55A
    },
    {
        0x0000, 0x042B, 0x0856, 0x0C7D, 0x10AC, 0x1487, 0x18FA, 0x1CD1,
        0x2158, 0x2573, 0x290E, 0x2D25, 0x31F4, 0x35DF, 0x39A2, 0x3D89,
        0x42B0, 0x469B, 0x4AE6, 0x4ECD, 0x521C, 0x5637, 0x5A4A, 0x5E61,
        0x63E8, 0x67C3, 0x6BBE, 0x6F95, 0x7344, 0x776F, 0x7B12, 0x7F39,
        0x8560, 0x814B, 0x8D36, 0x891D, 0x95CC, 0x91E7, 0x9D9A, 0x99B1,
        0xA438, 0xA013, 0xAC6E, 0xA845, 0xB494, 0xB0BF, 0xBCC2, 0xB8E9,
        0xC7D0, 0xC3FB, 0xCF86, 0xCBAD, 0xD77C, 0xD357, 0xDF2A, 0xDB01,
        0xE688, 0xE2A3, 0xEEDE, 0xEAF5, 0xF624, 0xF20F, 0xFE72, 0xFA59,
        0x02D1, 0x06FA, 0x0A87, 0x0EAC, 0x127D, 0x1656, 0x1A2B, 0x1E00,
        0x2389, 0x27A2, 0x2BDF, 0x2FF4, 0x3325, 0x370E, 0x3B73, 0x3F58,
        0x4061, 0x444A, 0x4837, 0x4C1C, 0x50CD, 0x54E6, 0x589B, 0x5CB0,
        0x6139, 0x6512, 0x696F, 0x6D44, 0x7195, 0x75BE, 0x79C3, 0x7DE8,
        0x87B1, 0x839A, 0x8FE7, 0x8BCC, 0x971D, 0x9336, 0x9F4B, 0x9B60,
        0xA6E9, 0xA2C2, 0xAEBF, 0xAA94, 0xB645, 0xB26E, 0xBE13, 0xBA38,
        0xC501, 0xC12A, 0xCD57, 0xC97C, 0xD5AD, 0xD186, 0xDDFB, 0xD9D0,
        0xE459, 0xE072, 0xEC0F, 0xE824, 0xF4F5, 0xF0DE, 0xFCA3, 0xF888,
        0x05A2, 0x0189, 0x0DF4, 0x09DF, 0x150E, 0x1125, 0x1D58, 0x1973,
        0x24FA, 0x20D1, 0x2CAC, 0x2887, 0x3456, 0x307D, 0x3C00, 0x382B,
        0x4712, 0x4339, 0x4F44, 0x4B6F, 0x57BE, 0x5395, 0x5FE8, 0x5BC3,
        0x664A, 0x6261, 0x6E1C, 0x6A37, 0x76E6, 0x72CD, 0x7EB0, 0x7A9B,
        0x80C2, 0x84E9, 0x8894, 0x8CBF, 0x906E, 0x9445, 0x9838, 0x9C13,
        0xA19A, 0xA5B1, 0xA9CC, 0xADE7, 0xB136, 0xB51D, 0xB960, 0xBD4B,
        0xC272, 0xC659, 0xCA24, 0xCE0F, 0xD2DE, 0xD6F5, 0xDA88, 0xDEA3,
        0xE32A, 0xE701, 0xEB7C, 0xEF57, 0xF386, 0xF7AD, 0xFBD0, 0xFFFB,
        0x0773, 0x0358, 0x0F25, 0x0B0E, 0x17DF, 0x13F4, 0x1F89, 0x1BA2,
        0x262B, 0x2200, 0x2E7D, 0x2A56, 0x3687, 0x32AC, 0x3ED1, 0x3AFA,
        0x45C3, 0x41E8, 0x4D95, 0x49BE, 0x556F, 0x5144, 0x5D39, 0x5912,
        0x649B, 0x60B0, 0x6CCD, 0x68E6, 0x7437, 0x701C, 0x7C61, 0x784A,
        0x8213, 0x8638, 0x8A45, 0x8E6E, 0x92BF, 0x9694, 0x9AE9, 0x9EC2,
        0xA34B, 0xA760, 0xAB1D, 0xAF36, 0xB3E7, 0xB7CC, 0xBBB1, 0xBF9A,
        0xC0A3, 0xC488, 0xC8F5, 0xCCDE, 0xD00F, 0xD424, 0xD859, 0xDC72,
        0xE1FB, 0xE5D0, 0xE9AD, 0xED86, 0xF157, 0xF57C, 0xF901, 0xFD2A
    },
    {
        0x0000, 0x9FD5, 0x37BB, 0xA86E, 0x6F76, 0xF0A3, 0x58CD, 0xC718,
        0xDEEC, 0x4139, 0xE957, 0x7682, 0xB19A, 0x2E4F, 0x8621, 0x19F4,
        0xB5C9, 0x2A1C, 0x8272, 0x1DA7, 0xDABF, 0x456A, 0xED04, 0x72D1,
        0x6B25, 0xF4F0, 0x5C9E, 0xC34B, 0x0453, 0x9B86, 0x33E8, 0xAC3D,
        0x6383, 0xFC56, 0x5438, 0xCBED, 0x0CF5, 0x9320, 0x3B4E, 0xA49B,
        0xBD6F, 0x22BA, 0x8AD4, 0x1501, 0xD219, 0x4DCC, 0xE5A2, 0x7A77,
        0xD64A, 0x499F, 0xE1F1, 0x7E24, 0xB93C, 0x26E9, 0x8E87, 0x1152,
        0x08A6, 0x9773, 0x3F1D, 0xA0C8, 0x67D0, 0xF805, 0x506B, 0xCFBE,
        0xC706, 0x58D3, 0xF0BD, 0x6F68, 0xA870, 0x37A5, 0x9FCB, 0x001E,
        0x19EA, 0x863F, 0x2E51, 0xB184, 0x769C, 0xE949, 0x4127, 0xDEF2,
        0x72CF, 0xED1A, 0x4574, 0xDAA1, 0x1DB9, 0x826C, 0x2A02, 0xB5D7,
        0xAC23, 0x33F6, 0x9B98, 0x044D, 0xC355, 0x5C80, 0xF4EE, 0x6B3B,
        0xA485, 0x3B50, 0x933E, 0x0CEB, 0xCBF3, 0x5426, 0xFC48, 0x639D,
        0x7A69, 0xE5BC, 0x4DD2, 0xD207, 0x151F, 0x8ACA, 0x22A4, 0xBD71,
        0x114C, 0x8E99, 0x26F7, 0xB922, 0x7E3A, 0xE1EF, 0x4981, 0xD654,
        0xCFA0, 0x5075, 0xF81B, 0x67CE, 0xA0D6, 0x3F03, 0x976D, 0x08B8,
        0x861D, 0x19C8, 0xB1A6, 0x2E73, 0xE96B, 0x76BE, 0xDED0, 0x4105,
        0x58F1, 0xC724, 0x6F4A, 0xF09F, 0x3787, 0xA852, 0x003C, 0x9FE9,
        0x33D4, 0xAC01, 0x046F, 0x9BBA, 0x5CA2, 0xC377, 0x6B19, 0xF4CC,
        0xED38, 0x72ED, 0xDA83, 0x4556, 0x824E, 0x1D9B, 0xB5F5, 0x2A20,
        0xE59E, 0x7A4B, 0xD225, 0x4DF0, 0x8AE8, 0x153D, 0xBD53, 0x2286,
        0x3B72, 0xA4A7, 0x0CC9, 0x931C, 0x5404, 0xCBD1, 0x63BF, 0xFC6A,
        0x5057, 0xCF82, 0x67EC, 0xF839, 0x3F21, 0xA0F4, 0x089A, 0x974F,
        0x8EBB, 0x116E, 0xB900, 0x26D5, 0xE1CD, 0x7E18, 0xD676, 0x49A3,
        0x411B, 0xDECE, 0x76A0, 0xE975, 0x2E6D, 0xB1B8, 0x19D6, 0x8603,
        0x9FF7, 0x0022, 0xA84C, 0x3799, 0xF081, 0x6F54, 0xC73A, 0x58EF,
        0xF4D2, 0x6B07, 0xC369, 0x5CBC, 0x9BA4, 0x0471, 0xAC1F, 0x33CA,
        0x2A3E, 0xB5EB, 0x1D85, 0x8250, 0x4548, 0xDA9D, 0x72F3, 0xED26,
        0x2298, 0xBD4D, 0x1523, 0x8AF6, 0x4DEE, 0xD23B, 0x7A55, 0xE580,
        0xFC74, 0x63A1, 0xCBCF, 0x541A, 0x9302, 0x0CD7, 0xA4B9, 0x3B6C,
        0x9751, 0x0884, 0xA0EA, 0x3F3F, 0xF827, 0x67F2, 0xCF9C, 0x5049,
        0x49BD, 0xD668, 0x7E06, 0xE1D3, 0x26CB, 0xB91E, 0x1170, 0x8EA5
    },
    {
        0x0000, 0x81BF, 0x0B6F, 0x8AD0, 0x16DE, 0x9761, 0x1DB1, 0x9C0E,
        0x2DBC, 0xAC03, 0x26D3, 0xA76C, 0x3B62, 0xBADD, 0x300D, 0xB1B2,
        0x5B78, 0xDAC7, 0x5017, 0xD1A8, 0x4DA6, 0xCC19, 0x46C9, 0xC776,
        0x76C4, 0xF77B, 0x7DAB, 0xFC14, 0x601A, 0xE1A5, 0x6B75, 0xEACA,
        0xB6F0, 0x374F, 0xBD9F, 0x3C20, 0xA02E, 0x2191, 0xAB41, 0x2AFE,
        0x9B4C, 0x1AF3, 0x9023, 0x119C, 0x8D92, 0x0C2D, 0x86FD, 0x0742,
        0xED88, 0x6C37, 0xE6E7, 0x6758, 0xFB56, 0x7AE9, 0xF039, 0x7186,
        0xC034, 0x418B, 0xCB5B, 0x4AE4, 0xD6EA, 0x5755, 0xDD85, 0x5C3A,
        0x65F1, 0xE44E, 0x6E9E, 0xEF21, 0x732F, 0xF290, 0x7840, 0xF9FF,
        0x484D, 0xC9F2, 0x4322, 0xC29D, 0x5E93, 0xDF2C, 0x55FC, 0xD443,
        0x3E89, 0xBF36, 0x35E6, 0xB459, 0x2857, 0xA9E8, 0x2338, 0xA287,
        0x1335, 0x928A, 0x185A, 0x99E5, 0x05EB, 0x8454, 0x0E84, 0x8F3B,
        0xD301, 0x52BE, 0xD86E, 0x59D1, 0xC5DF, 0x4460, 0xCEB0, 0x4F0F,
        0xFEBD, 0x7F02, 0xF5D2, 0x746D, 0xE863, 0x69DC, 0xE30C, 0x62B3,
        0x8879, 0x09C6, 0x8316, 0x02A9, 0x9EA7, 0x1F18, 0x95C8, 0x1477,
        0xA5C5, 0x247A, 0xAEAA, 0x2F15, 0xB31B, 0x32A4, 0xB874, 0x39CB,
        0xCBE2, 0x4A5D, 0xC08D, 0x4132, 0xDD3C, 0x5C83, 0xD653, 0x57EC,
        0xE65E, 0x67E1, 0xED31, 0x6C8E, 0xF080, 0x713F, 0xFBEF, 0x7A50,
        0x909A, 0x1125, 0x9BF5, 0x1A4A, 0x8644, 0x07FB, 0x8D2B, 0x0C94,
        0xBD26, 0x3C99, 0xB649, 0x37F6, 0xABF8, 0x2A47, 0xA097, 0x2128,
        0x7D12, 0xFCAD, 0x767D, 0xF7C2, 0x6BCC, 0xEA73, 0x60A3, 0xE11C,
        0x50AE, 0xD111, 0x5BC1, 0xDA7E, 0x4670, 0xC7CF, 0x4D1F, 0xCCA0,
        0x266A, 0xA7D5, 0x2D05, 0xACBA, 0x30B4, 0xB10B, 0x3BDB, 0xBA64,
        0x0BD6, 0x8A69, 0x00B9, 0x8106, 0x1D08, 0x9CB7, 0x1667, 0x97D8,
        0xAE13, 0x2FAC, 0xA57C, 0x24C3, 0xB8CD, 0x3972, 0xB3A2, 0x321D,
        0x83AF, 0x0210, 0x88C0, 0x097F, 0x9571, 0x14CE, 0x9E1E, 0x1FA1,
        0xF56B, 0x74D4, 0xFE04, 0x7FBB, 0xE3B5, 0x620A, 0xE8DA, 0x6965,
        0xD8D7, 0x5968, 0xD3B8, 0x5207, 0xCE09, 0x4FB6, 0xC566, 0x44D9,
        0x18E3, 0x995C, 0x138C, 0x9233, 0x0E3D, 0x8F82, 0x0552, 0x84ED,
        0x355F, 0xB4E0, 0x3E30, 0xBF8F, 0x2381, 0xA23E, 0x28EE, 0xA951,
        0x439B, 0xC224, 0x48F4, 0xC94B, 0x5545, 0xD4FA, 0x5E2A, 0xDF95,
        0x6E27, 0xEF98, 0x6548, 0xE4F7, 0x78F9, 0xF946, 0x7396, 0xF229
    }
};

uint16_t crc16_x25(const uint8_t *p, size_t n)
{
    unsigned crc = 0xFFFF;

    for (; n >= 8; p += 8, n -= 8) {
        unsigned x = crc ^ ((unsigned)p[0] | (unsigned)p[1] << 8);
        crc = crc16_table[7][x & 0xFF] ^ crc16_table[6][x >> 8] ^
              crc16_table[5][p[2]] ^ crc16_table[4][p[3]] ^
              crc16_table[3][p[4]] ^ crc16_table[2][p[5]] ^
              crc16_table[1][p[6]] ^ crc16_table[0][p[7]];
    }
    for (; n > 0; p++, n--)
        crc = (crc >> 8) ^ crc16_table[0][(crc ^ *p) & 0xFF];
    return (uint16_t)(crc ^ 0xFFFF);
}

uint8_t hcs_xor(const uint8_t *p, size_t n)
{
    unsigned x = 0;
    size_t i;

    for (i = 0; i < n; i++)
        x ^= p[i];
    return (uint8_t)x;
}
