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
 * cache behaviour do not depend on secrets.  Only C99 and 64-bit integers
 * are needed.  A table-driven AES would be faster on paper but leaks the
 * key through the cache; AES-NI would be much faster but is not portable.
 * The schedule is kept compressed (two words per round key, 176 bytes) so
 * that a gcm_key in every session slot stays small; it is expanded to 88
 * words on the stack once per call.
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
 * XOR-accumulation, and writes plain only after the tag verified.
 * Measured on one core of the development machine (x86-64 Xeon, gcc -O2),
 * 2000-byte payloads: see the numbers in the lead engineer's notes;
 * roughly AES-128 CTR ~ESTIMATE.
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

static uint32_t get_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 |
           (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_u32le(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* The bits of *a under (mask << shift) trade places with the bits of *b
 * under mask. */
static void swap_bits(uint64_t *a, uint64_t *b, uint64_t mask, unsigned shift)
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
static uint64_t spread_bytes(uint32_t x)
{
    uint64_t v = x;

    v = (v | v << 16) & 0x0000FFFF0000FFFFu;
    return (v | v << 8) & 0x00FF00FF00FF00FFu;
}

static uint32_t gather_bytes(uint64_t v)
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
 * SubBytes on 64 bytes at once: the circuit of Boyar and Peralta (top
 * linear layer, inversion in GF((2^4)^2), bottom linear layer), with their
 * names.  u0 is the most significant bit of each byte (word 7), s0 likewise.
 * The affine constant 0x63 appears as the four complemented outputs.
 */
static void sub_bytes(uint64_t q[8])
{
    uint64_t u0 = q[7], u1 = q[6], u2 = q[5], u3 = q[4];
    uint64_t u4 = q[3], u5 = q[2], u6 = q[1], u7 = q[0];
    uint64_t y1, y2, y3, y4, y5, y6, y7, y8, y9, y10, y11, y12, y13, y14;
    uint64_t y15, y16, y17, y18, y19, y20, y21;
    uint64_t t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13;
    uint64_t t14, t15, t16, t17, t18, t19, t20, t21, t22, t23, t24, t25;
    uint64_t t26, t27, t28, t29, t30, t31, t32, t33, t34, t35, t36, t37;
    uint64_t t38, t39, t40, t41, t42, t43, t44, t45, t46, t47, t48, t49;
    uint64_t t50, t51, t52, t53, t54, t55, t56, t57, t58, t59, t60, t61;
    uint64_t t62, t63, t64, t65, t66, t67;
    uint64_t z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13;
    uint64_t z14, z15, z16, z17;
    uint64_t s3;

    /* Top linear layer. */
    y14 = u3 ^ u5;
    y13 = u0 ^ u6;
    y9 = u0 ^ u3;
    y8 = u0 ^ u5;
    t0 = u1 ^ u2;
    y1 = t0 ^ u7;
    y4 = y1 ^ u3;
    y12 = y13 ^ y14;
    y2 = y1 ^ u0;
    y5 = y1 ^ u6;
    y3 = y5 ^ y8;
    t1 = u4 ^ y12;
    y15 = t1 ^ u5;
    y20 = t1 ^ u1;
    y6 = y15 ^ u7;
    y10 = y15 ^ t0;
    y11 = y20 ^ y9;
    y7 = u7 ^ y11;
    y17 = y10 ^ y11;
    y19 = y10 ^ y8;
    y16 = t0 ^ y11;
    y21 = y13 ^ y16;
    y18 = u0 ^ y16;

    /* Non-linear middle. */
    t2 = y12 & y15;
    t3 = y3 & y6;
    t4 = t3 ^ t2;
    t5 = y4 & u7;
    t6 = t5 ^ t2;
    t7 = y13 & y16;
    t8 = y5 & y1;
    t9 = t8 ^ t7;
    t10 = y2 & y7;
    t11 = t10 ^ t7;
    t12 = y9 & y11;
    t13 = y14 & y17;
    t14 = t13 ^ t12;
    t15 = y8 & y10;
    t16 = t15 ^ t12;
    t17 = t4 ^ t14;
    t18 = t6 ^ t16;
    t19 = t9 ^ t14;
    t20 = t11 ^ t16;
    t21 = t17 ^ y20;
    t22 = t18 ^ y19;
    t23 = t19 ^ y21;
    t24 = t20 ^ y18;

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
    z0 = t44 & y15;
    z1 = t37 & y6;
    z2 = t33 & u7;
    z3 = t43 & y16;
    z4 = t40 & y1;
    z5 = t29 & y7;
    z6 = t42 & y11;
    z7 = t45 & y17;
    z8 = t41 & y10;
    z9 = t44 & y12;
    z10 = t37 & y3;
    z11 = t33 & y4;
    z12 = t43 & y13;
    z13 = t40 & y5;
    z14 = t29 & y2;
    z15 = t42 & y9;
    z16 = t45 & y14;
    z17 = t41 & y8;

    /* Bottom linear layer. */
    t46 = z15 ^ z16;
    t47 = z10 ^ z11;
    t48 = z5 ^ z13;
    t49 = z9 ^ z10;
    t50 = z2 ^ z12;
    t51 = z2 ^ z5;
    t52 = z7 ^ z8;
    t53 = z0 ^ z3;
    t54 = z6 ^ z7;
    t55 = z16 ^ z17;
    t56 = z12 ^ t48;
    t57 = t50 ^ t53;
    t58 = z4 ^ t46;
    t59 = z3 ^ t54;
    t60 = t46 ^ t57;
    t61 = z14 ^ t57;
    t62 = t52 ^ t58;
    t63 = t49 ^ t58;
    t64 = z4 ^ t59;
    t65 = t61 ^ t62;
    t66 = z1 ^ t63;
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

/*
 * Row r moves r columns to the left: inside the 16-bit group of row r, a
 * right rotation by 4*r bits.  Done as a rotation by 4 of rows 1 and 3,
 * then a byte swap (rotation by 8) of rows 2 and 3.
 */
static uint64_t shift_rows_word(uint64_t x)
{
    uint64_t t;

    x = (x & 0x0000FFFF0000FFFFu)
      | ((x >> 4) & 0x0FFF00000FFF0000u)
      | ((x << 12) & 0xF0000000F0000000u);
    t = ((x >> 8) ^ x) & 0x00FF00FF00000000u;
    return x ^ t ^ (t << 8);
}

static void shift_rows(uint64_t q[8])
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
static uint64_t next_row(uint64_t x)
{
    return (x >> 16) | (x << 48);
}

static uint64_t swap_halves(uint64_t x)
{
    return (x >> 32) | (x << 32);
}

/*
 * out_r = 2*a_r ^ 3*a_(r+1) ^ a_(r+2) ^ a_(r+3)
 *       = 2*s_r ^ a_(r+1) ^ s_(r+2)   with s_r = a_r ^ a_(r+1).
 * Doubling in GF(2^8) mod x^8+x^4+x^3+x+1 moves bit word b to b+1 and
 * adds the old top bit into words 0, 1, 3 and 4.
 */
static void mix_columns(uint64_t q[8])
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

static void add_round_key(uint64_t q[8], const uint64_t *rk)
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
 * the four block lanes); bit words b and b+4 share a stored word, word b
 * taking positions == b mod 4.  Expansion copies lane 0 into lanes 1..3:
 * x * 15 spreads a bit into the three positions above it without carry.
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

static uint64_t get_u64be(const uint8_t *p)
{
    return (uint64_t)get_u32be(p) << 32 | get_u32be(p + 4);
}

static void put_u64be(uint8_t *p, uint64_t v)
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
static uint64_t clmul_lo(uint64_t x, uint64_t y)
{
    const uint64_t m0 = LANE0_MASK, m1 = m0 << 1, m2 = m0 << 2, m3 = m0 << 3;
    uint64_t x0 = x & m0, x1 = x & m1, x2 = x & m2, x3 = x & m3;
    uint64_t y0 = y & m0, y1 = y & m1, y2 = y & m2, y3 = y & m3;
    uint64_t z0, z1, z2, z3;

    z0 = (x0 * y0) ^ (x1 * y3) ^ (x2 * y2) ^ (x3 * y1);
    z1 = (x0 * y1) ^ (x1 * y0) ^ (x2 * y3) ^ (x3 * y2);
    z2 = (x0 * y2) ^ (x1 * y1) ^ (x2 * y0) ^ (x3 * y3);
    z3 = (x0 * y3) ^ (x1 * y2) ^ (x2 * y1) ^ (x3 * y0);
    return (z0 & m0) | (z1 & m1) | (z2 & m2) | (z3 & m3);
}

static uint64_t reverse_bits64(uint64_t x)
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

/* The 128-bit carry-less product of x and h (h given with its reversal). */
static void clmul_128(uint64_t x, uint64_t h, uint64_t h_rev,
                      uint64_t *hi, uint64_t *lo)
{
    *lo = clmul_lo(x, h);
    *hi = reverse_bits64(clmul_lo(reverse_bits64(x), h_rev)) >> 1;
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
    uint64_t hh, hl, lh, ll, mh, ml, w[4];

    clmul_128(y->hi, k->h[0], k->h_rev[0], &hh, &hl);
    clmul_128(y->lo, k->h[1], k->h_rev[1], &lh, &ll);
    clmul_128(y->hi ^ y->lo, k->h[2], k->h_rev[2], &mh, &ml);
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

    ctr_blocks(mask, iv, 1);
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
    ctr_xor(sk, iv, 2, plain, cipher, len);
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
    ctr_xor(sk, iv, 2, cipher, plain, len);
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
 * The 256-entry table is indexed by public data (frame bytes), never a key.
 */
static const uint16_t crc16_table[256] = {
#define C8(c) ((c) & 1 ? ((c) >> 1) ^ 0x8408 : (c) >> 1)
#define C(n) C8(C8(C8(C8(C8(C8(C8(C8((unsigned)(n)))))))))
#define R4(n) C(n), C((n) + 1), C((n) + 2), C((n) + 3)
#define R16(n) R4(n), R4((n) + 4), R4((n) + 8), R4((n) + 12)
#define R64(n) R16(n), R16((n) + 16), R16((n) + 32), R16((n) + 48)
    R64(0), R64(64), R64(128), R64(192)
#undef R64
#undef R16
#undef R4
#undef C
#undef C8
};

uint16_t crc16_x25(const uint8_t *p, size_t n)
{
    unsigned crc = 0xFFFF;
    size_t i;

    for (i = 0; i < n; i++)
        crc = (crc >> 8) ^ crc16_table[(crc ^ p[i]) & 0xFF];
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
