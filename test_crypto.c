/*
 * test_crypto.c -- known-answer tests of crypto.c: AES-128 (FIPS-197,
 * SP 800-38A), AES-128-GCM (test cases 1-4 of McGrew and Viega's GCM
 * specification, full and 12-byte tags), the rejection paths of gcm_open,
 * in-place use, the CRC-16/X-25 check value, and the crypto of the
 * protected worked example of PROTOCOL.md section 6.2.
 *
 * Owns: nothing; buffers are on the stack, the two largest function-local
 * statics.
 */
#include <string.h>

#include "fep.h"
#include "test.h"

#define BUF_MAX 2048

/* Hex to bytes; checks that the text held exactly n bytes. */
static void unhex_n(const char *hex, uint8_t *out, size_t n)
{
    CHECK_EQ(test_unhex(hex, out, n), n);
}

/* ------------------------------------------------------------------------
 * AES-128
 * ---------------------------------------------------------------------- */

static void check_aes_block(const char *key_hex, const char *in_hex,
                            const char *out_hex)
{
    uint8_t key[KEY_SIZE], in[16], expect[16], out[16];
    aes128 ctx;

    unhex_n(key_hex, key, sizeof key);
    unhex_n(in_hex, in, sizeof in);
    unhex_n(out_hex, expect, sizeof expect);
    aes128_init(&ctx, key);
    aes128_encrypt(&ctx, in, out);
    CHECK_MEM(out, expect, 16);
    aes128_encrypt(&ctx, in, in);       /* in place */
    CHECK_MEM(in, expect, 16);
}

/* FIPS-197 Appendix B and Appendix C.1. */
static void test_aes_fips197(void)
{
    check_aes_block("2b7e151628aed2a6abf7158809cf4f3c",
                    "3243f6a8885a308d313198a2e0370734",
                    "3925841d02dc09fbdc118597196a0b32");
    check_aes_block("000102030405060708090a0b0c0d0e0f",
                    "00112233445566778899aabbccddeeff",
                    "69c4e0d86a7b0430d8cdb78070b4c55a");
}

/* SP 800-38A F.1.1, ECB-AES128.Encrypt, its four blocks. */
static void test_aes_sp800_38a(void)
{
    static const char *const key = "2b7e151628aed2a6abf7158809cf4f3c";

    check_aes_block(key, "6bc1bee22e409f96e93d7e117393172a",
                    "3ad77bb40d7a3660a89ecaf32466ef97");
    check_aes_block(key, "ae2d8a571e03ac9c9eb76fac45af8e51",
                    "f5d3d58503b9699de785895a96fdbaaf");
    check_aes_block(key, "30c81c46a35ce411e5fbc1191a0a52ef",
                    "43b1cd7f598ece23881b00e3ed030688");
    check_aes_block(key, "f69f2445df4f9b17ad2b417be66c3710",
                    "7b0c785e27e8ad3f8223207104725dd4");
}

/*
 * All-zero and all-one keys and blocks, to catch a lane or a bit word
 * mixed up: E_0(0) is the H of GCM test case 1; the other two are the last
 * entries of AESAVS's VarKey and VarTxt tables for AES-128.
 */
static void test_aes_extremes(void)
{
    check_aes_block("00000000000000000000000000000000",
                    "00000000000000000000000000000000",
                    "66e94bd4ef8a2c3b884cfa59ca342b2e");
    check_aes_block("ffffffffffffffffffffffffffffffff",
                    "00000000000000000000000000000000",
                    "a1f6258c877d5fcd8964484538bfc92c");
    check_aes_block("00000000000000000000000000000000",
                    "ffffffffffffffffffffffffffffffff",
                    "3f5b8cc9ea855a0afa7347d23e8d664e");
}

/*
 * GCM encrypts four counter blocks per AES call.  With a zero plaintext,
 * its ciphertext is the keystream E(iv || 2), E(iv || 3), ...; each block
 * must equal a one-block encryption.  Nine blocks: two full batches and
 * one batch with a single block used.
 */
static void test_aes_batch_matches_single(void)
{
    uint8_t key[KEY_SIZE], iv[GCM_IV_SIZE], zero[9 * 16], ks[9 * 16];
    uint8_t tag[16], ctr_block[16], expect[16];
    gcm_key gk;
    unsigned i;

    unhex_n("feffe9928665731c6d6a8f9467308308", key, sizeof key);
    unhex_n("cafebabefacedbaddecaf888", iv, sizeof iv);
    memset(zero, 0, sizeof zero);
    gcm_init(&gk, key);
    gcm_seal(&gk, iv, NULL, 0, zero, sizeof zero, ks, tag, sizeof tag);
    for (i = 0; i < 9; i++) {
        memcpy(ctr_block, iv, GCM_IV_SIZE);
        put_u32be(ctr_block + GCM_IV_SIZE, 2 + i);
        aes128_encrypt(&gk.aes, ctr_block, expect);
        CHECK_MEM(ks + 16 * i, expect, 16);
    }
}

/* ------------------------------------------------------------------------
 * AES-128-GCM, McGrew and Viega test cases 1-4
 * ---------------------------------------------------------------------- */

typedef struct gcm_vector {
    const char *key, *iv, *aad, *plain, *cipher, *tag;
    size_t len;                         /* bytes of plain and cipher used */
} gcm_vector;

static const char tc34_plain[] =
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
static const char tc34_cipher[] =
    "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
    "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985";

static const gcm_vector gcm_vectors[] = {
    { "00000000000000000000000000000000", "000000000000000000000000", "",
      "", "", "58e2fccefa7e3061367f1d57a4e7455a", 0 },
    { "00000000000000000000000000000000", "000000000000000000000000", "",
      "00000000000000000000000000000000", "0388dace60b6a392f328c2b971b2fe78",
      "ab6e47d42cec13bdf53a67b21257bddf", 16 },
    { "feffe9928665731c6d6a8f9467308308", "cafebabefacedbaddecaf888", "",
      tc34_plain, tc34_cipher, "4d5c2af327cd64a62cf35abd2ba6fab4", 64 },
    /* TC4: the TC3 text less its last 4 bytes, with 20 bytes of AAD. */
    { "feffe9928665731c6d6a8f9467308308", "cafebabefacedbaddecaf888",
      "feedfacedeadbeeffeedfacedeadbeefabaddad2", tc34_plain, tc34_cipher,
      "5bc94fbc3221a5db94fae95ae7121a47", 60 },
};

typedef struct gcm_case {
    gcm_key key;
    uint8_t iv[GCM_IV_SIZE];
    uint8_t aad[64], plain[64], cipher[64], tag[16];
    size_t aad_len, len;
} gcm_case;

static void gcm_case_load(gcm_case *c, unsigned i)
{
    const gcm_vector *v = &gcm_vectors[i];
    uint8_t key[KEY_SIZE];

    unhex_n(v->key, key, sizeof key);
    unhex_n(v->iv, c->iv, sizeof c->iv);
    c->aad_len = test_unhex(v->aad, c->aad, sizeof c->aad);
    c->len = v->len;
    CHECK(test_unhex(v->plain, c->plain, sizeof c->plain) >= c->len);
    CHECK(test_unhex(v->cipher, c->cipher, sizeof c->cipher) >= c->len);
    unhex_n(v->tag, c->tag, sizeof c->tag);
    gcm_init(&c->key, key);
}

/* Seals with tag_len bytes of tag, checks both, opens it back. */
static void check_gcm_case(const gcm_case *c, size_t tag_len)
{
    uint8_t cipher[64], plain[64], tag[16];

    memset(tag, 0xEE, sizeof tag);
    gcm_seal(&c->key, c->iv, c->aad, c->aad_len, c->plain, c->len, cipher,
             tag, tag_len);
    CHECK_MEM(cipher, c->cipher, c->len);
    CHECK_MEM(tag, c->tag, tag_len);
    if (tag_len < sizeof tag)
        CHECK_EQ(tag[tag_len], 0xEE);   /* nothing written past tag_len */
    memset(plain, 0, sizeof plain);
    CHECK_EQ(gcm_open(&c->key, c->iv, c->aad, c->aad_len, cipher, c->len,
                      plain, tag, tag_len), 0);
    CHECK_MEM(plain, c->plain, c->len);
}

static void test_gcm_spec_vectors(void)
{
    gcm_case c;
    unsigned i;

    for (i = 0; i < sizeof gcm_vectors / sizeof gcm_vectors[0]; i++) {
        gcm_case_load(&c, i);
        check_gcm_case(&c, GCM_TAG_FULL);
        check_gcm_case(&c, SEC_TAG_SIZE);
    }
}

/* Every tag length 1..16 is a prefix of the full tag and opens. */
static void test_gcm_tag_lengths(void)
{
    gcm_case c;
    size_t t;

    gcm_case_load(&c, 3);
    for (t = 1; t <= GCM_TAG_FULL; t++)
        check_gcm_case(&c, t);
}

/* ------------------------------------------------------------------------
 * gcm_open rejections: -1, and plain not touched
 * ---------------------------------------------------------------------- */

/* gcm_open must answer -1 and leave plain as it was. */
static void check_rejected(const gcm_case *c, const uint8_t *iv,
                           const uint8_t *aad, const uint8_t *cipher,
                           const uint8_t *tag, size_t tag_len, int line)
{
    uint8_t plain[64], sentinel[64];
    int r;

    memset(sentinel, 0xA5, sizeof sentinel);
    memcpy(plain, sentinel, sizeof plain);
    r = gcm_open(&c->key, iv, aad, c->aad_len, cipher, c->len, plain, tag,
                 tag_len);
    test_check(r == -1, __FILE__, line, "gcm_open(...) == -1");
    test_check(memcmp(plain, sentinel, sizeof plain) == 0, __FILE__, line,
               "plain untouched");
}

#define CHECK_REJECTED(c, iv, aad, cipher, tag, tag_len) \
    check_rejected((c), (iv), (aad), (cipher), (tag), (tag_len), __LINE__)

static void check_rejections(const gcm_case *c, size_t tag_len)
{
    uint8_t iv[GCM_IV_SIZE], aad[64], cipher[64], tag[16];

    memcpy(iv, c->iv, sizeof iv);
    memcpy(aad, c->aad, sizeof aad);
    memcpy(cipher, c->cipher, sizeof cipher);
    memcpy(tag, c->tag, sizeof tag);

    cipher[17] ^= 0x04;                 /* a ciphertext bit */
    CHECK_REJECTED(c, iv, aad, cipher, tag, tag_len);
    cipher[17] ^= 0x04;
    cipher[c->len - 1] ^= 0x80;         /* the last ciphertext bit */
    CHECK_REJECTED(c, iv, aad, cipher, tag, tag_len);
    cipher[c->len - 1] ^= 0x80;
    aad[c->aad_len - 1] ^= 0x01;        /* an AAD bit */
    CHECK_REJECTED(c, iv, aad, cipher, tag, tag_len);
    aad[c->aad_len - 1] ^= 0x01;
    tag[tag_len - 1] ^= 0x80;           /* the last tag bit checked */
    CHECK_REJECTED(c, iv, aad, cipher, tag, tag_len);
    tag[tag_len - 1] ^= 0x80;
    tag[0] ^= 0x01;                     /* the first tag bit */
    CHECK_REJECTED(c, iv, aad, cipher, tag, tag_len);
    tag[0] ^= 0x01;
    iv[11] ^= 0x01;                     /* another IV */
    CHECK_REJECTED(c, iv, aad, cipher, tag, tag_len);
    iv[11] ^= 0x01;
    /* Everything restored: it opens again. */
    CHECK_EQ(gcm_open(&c->key, iv, aad, c->aad_len, cipher, c->len, cipher,
                      tag, tag_len), 0);
    CHECK_MEM(cipher, c->plain, c->len);
}

static void test_gcm_open_rejects(void)
{
    gcm_case c;

    gcm_case_load(&c, 3);
    check_rejections(&c, GCM_TAG_FULL);
    check_rejections(&c, SEC_TAG_SIZE);
}

/* A truncated tag leaves the bytes after tag_len unchecked, no more. */
static void test_gcm_open_truncated_tag(void)
{
    gcm_case c;
    uint8_t tag[16];

    gcm_case_load(&c, 3);
    memcpy(tag, c.tag, sizeof tag);
    tag[SEC_TAG_SIZE] ^= 0xFF;
    CHECK_REJECTED(&c, c.iv, c.aad, c.cipher, tag, GCM_TAG_FULL);
    CHECK_EQ(gcm_open(&c.key, c.iv, c.aad, c.aad_len, c.cipher, c.len,
                      c.cipher, tag, SEC_TAG_SIZE), 0);
    CHECK_MEM(c.cipher, c.plain, c.len);
}

/* A tag of 0 bytes would accept anything; over 16 does not exist. */
static void test_gcm_open_bad_tag_len(void)
{
    gcm_case c;

    gcm_case_load(&c, 3);
    CHECK_REJECTED(&c, c.iv, c.aad, c.cipher, c.tag, 0);
    CHECK_REJECTED(&c, c.iv, c.aad, c.cipher, c.tag, GCM_TAG_FULL + 1);
}

/* ------------------------------------------------------------------------
 * In place, and lengths
 * ---------------------------------------------------------------------- */

static void test_gcm_in_place(void)
{
    gcm_case c;
    uint8_t buf[64], tag[16];

    gcm_case_load(&c, 3);
    memcpy(buf, c.plain, c.len);
    gcm_seal(&c.key, c.iv, c.aad, c.aad_len, buf, c.len, buf, tag,
             GCM_TAG_FULL);
    CHECK_MEM(buf, c.cipher, c.len);
    CHECK_MEM(tag, c.tag, GCM_TAG_FULL);

    /* A failed open in place leaves the ciphertext as it was. */
    tag[5] ^= 0x10;
    CHECK_EQ(gcm_open(&c.key, c.iv, c.aad, c.aad_len, buf, c.len, buf, tag,
                      GCM_TAG_FULL), -1);
    CHECK_MEM(buf, c.cipher, c.len);
    tag[5] ^= 0x10;

    CHECK_EQ(gcm_open(&c.key, c.iv, c.aad, c.aad_len, buf, c.len, buf, tag,
                      GCM_TAG_FULL), 0);
    CHECK_MEM(buf, c.plain, c.len);
}

static void fill_pattern(uint8_t *p, size_t n, unsigned seed)
{
    size_t i;

    for (i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 131 + seed * 17 + (i >> 8));
}

/*
 * Round trips over lengths around the block and batch sizes.  CTR makes
 * every ciphertext a prefix of the longest one under the same key and IV,
 * which pins the keystream position across partial blocks and batches.
 */
static void test_gcm_lengths(void)
{
    static const size_t lens[] = { 0, 1, 15, 16, 17, 63, 64, 65, 100,
                                   PAYLOAD_MAX_SEC };
    static uint8_t plain[BUF_MAX], longest[BUF_MAX];
    uint8_t cipher[BUF_MAX], back[BUF_MAX], key[KEY_SIZE], iv[GCM_IV_SIZE];
    uint8_t aad[FRAME_HEADER_SIZE], tag[SEC_TAG_SIZE], tag2[SEC_TAG_SIZE];
    gcm_key gk;
    size_t i, n = sizeof lens / sizeof lens[0];

    fill_pattern(plain, sizeof plain, 1);
    fill_pattern(key, sizeof key, 2);
    fill_pattern(iv, sizeof iv, 3);
    fill_pattern(aad, sizeof aad, 4);
    gcm_init(&gk, key);
    gcm_seal(&gk, iv, aad, sizeof aad, plain, lens[n - 1], longest, tag,
             sizeof tag);
    for (i = 0; i < n; i++) {
        size_t len = lens[i];

        gcm_seal(&gk, iv, aad, sizeof aad, plain, len, cipher, tag,
                 sizeof tag);
        CHECK_MEM(cipher, longest, len);
        memset(back, 0, sizeof back);
        CHECK_EQ(gcm_open(&gk, iv, aad, sizeof aad, cipher, len, back, tag,
                          sizeof tag), 0);
        CHECK_MEM(back, plain, len);
        /* The length is authenticated: one byte less does not open. */
        if (len > 0)
            CHECK_EQ(gcm_open(&gk, iv, aad, sizeof aad, cipher, len - 1,
                              back, tag, sizeof tag), -1);
        /* AAD of every length up to the header: each gives its own tag. */
        gcm_seal(&gk, iv, aad, i, plain, len, cipher, tag2, sizeof tag2);
        CHECK_EQ(gcm_open(&gk, iv, aad, i, cipher, len, back, tag2,
                          sizeof tag2), 0);
        CHECK(memcmp(tag, tag2, sizeof tag) != 0);
    }
    /* A 2000-byte payload really is encrypted. */
    CHECK(memcmp(longest, plain, PAYLOAD_MAX_SEC) != 0);
}

/* gcm_init and aes128_init write every byte they own, from any start. */
static void test_gcm_init_deterministic(void)
{
    uint8_t key[KEY_SIZE];
    gcm_key a, b;

    fill_pattern(key, sizeof key, 9);
    memset(&a, 0x00, sizeof a);
    memset(&b, 0xFF, sizeof b);
    gcm_init(&a, key);
    gcm_init(&b, key);
    CHECK_MEM(&a, &b, sizeof a);
    CHECK(sizeof(gcm_key) <= 192);
}

/* ------------------------------------------------------------------------
 * The protected worked example, PROTOCOL.md section 6.2
 * ---------------------------------------------------------------------- */

static const char example_header_hex[] =
    "7E 01 E0 4B 44 43 55 30 30 30 30 31 46 45 50 30"
    "30 30 30 31 00 07 00 00 00 00 00 00 2D FF";
static const char example_cipher_hex[] =
    "E5 61 82 B7 32 06 A8 D7 32 43 EF 81 F5 23"
    "39 55 7D 9C C4 48 9F 46 DD B7 A9 D1 B9";
static const char example_tag_hex[] = "2D 5A 63 10 8F 25 4A 71 EC 7B EA 32";

/* count 1, then meter MTR000000001, ts, import, export (u32) and status. */
static void example_plain(uint8_t p[27])
{
    p[0] = 1;
    memcpy(p + 1, "MTR000000001", METER_ID_SIZE);
    put_u32be(p + 13, 1767225600);
    put_u32be(p + 17, 123456);
    put_u32be(p + 21, 789);
    put_u16be(p + 25, 0);
}

static void test_protocol_example(void)
{
    uint8_t key[KEY_SIZE], iv[GCM_IV_SIZE], frame[75], plain[27];
    uint8_t expect_cipher[27], expect_tag[SEC_TAG_SIZE], back[27];
    gcm_key gk;
    unsigned i;

    for (i = 0; i < KEY_SIZE; i++)
        key[i] = (uint8_t)i;
    unhex_n(example_header_hex, frame, FRAME_HEADER_SIZE);
    unhex_n(example_cipher_hex, expect_cipher, sizeof expect_cipher);
    unhex_n(example_tag_hex, expect_tag, sizeof expect_tag);
    example_plain(plain);

    /* IV = the sender's SID (header offset 4) || IC. */
    memcpy(iv, frame + HDR_SID, FRAME_ID_SIZE);
    CHECK_MEM(iv, "DCU00001", FRAME_ID_SIZE);
    put_u32be(iv + FRAME_ID_SIZE, 1);

    gcm_init(&gk, key);
    put_u32be(frame + FRAME_HEADER_SIZE, 1);
    gcm_seal(&gk, iv, frame, FRAME_HEADER_SIZE, plain, sizeof plain,
             frame + 34, frame + 61, SEC_TAG_SIZE);
    CHECK_MEM(frame + 34, expect_cipher, sizeof expect_cipher);
    CHECK_MEM(frame + 61, expect_tag, sizeof expect_tag);
    CHECK_EQ(crc16_x25(frame, 73), 0x15BD);
    CHECK_EQ(hcs_xor(frame, HDR_HCS), frame[HDR_HCS]);

    CHECK_EQ(gcm_open(&gk, iv, frame, FRAME_HEADER_SIZE, frame + 34,
                      sizeof back, back, frame + 61, SEC_TAG_SIZE), 0);
    CHECK_MEM(back, plain, sizeof plain);
}

/* ------------------------------------------------------------------------
 * CRC-16/X-25 and the header XOR
 * ---------------------------------------------------------------------- */

/* The CRC one bit at a time, straight from the model's parameters. */
static uint16_t crc_bitwise(const uint8_t *p, size_t n)
{
    unsigned crc = 0xFFFF;
    size_t i;
    int b;

    for (i = 0; i < n; i++) {
        crc ^= p[i];
        for (b = 0; b < 8; b++)
            crc = (crc & 1) ? (crc >> 1) ^ 0x8408 : crc >> 1;
    }
    return (uint16_t)(crc ^ 0xFFFF);
}

/* Every table entry is reached by some single byte, and longer inputs
 * chain them. */
static void test_crc16_table(void)
{
    uint8_t buf[300];
    unsigned v;

    for (v = 0; v < 256; v++) {
        buf[0] = (uint8_t)v;
        CHECK_EQ(crc16_x25(buf, 1), crc_bitwise(buf, 1));
    }
    /* The eight-byte path: every length and alignment, with bytes that
     * reach every entry of every table over the run. */
    fill_pattern(buf, sizeof buf, 5);
    for (v = 0; v < 8; v++) {
        size_t len;
        for (len = 0; len + v <= sizeof buf; len += 1 + len / 16)
            CHECK_EQ(crc16_x25(buf + v, len), crc_bitwise(buf + v, len));
    }
    /* Byte position k of a block is looked up in table 7 - k (positions 0
     * and 1 after the XOR with the register): each value at each position,
     * zeros elsewhere, reaches every entry of every table. */
    for (v = 0; v < 8 * 256; v++) {
        memset(buf, 0, 8);
        buf[v / 256] = (uint8_t)v;
        CHECK_EQ(crc16_x25(buf, 8), crc_bitwise(buf, 8));
    }
}

static void test_crc16_x25(void)
{
    CHECK_EQ(crc16_x25((const uint8_t *)"123456789", 9), 0x906E);
    CHECK_EQ(crc16_x25((const uint8_t *)"", 0), 0x0000);
    /* A single bit anywhere changes it. */
    CHECK(crc16_x25((const uint8_t *)"123456788", 9) != 0x906E);
}

static void test_hcs_xor(void)
{
    uint8_t h[FRAME_HEADER_SIZE];

    unhex_n(example_header_hex, h, sizeof h);
    CHECK_EQ(hcs_xor(h, HDR_HCS), 0xFF);
    /* Over the whole header, HCS included, the XOR cancels. */
    CHECK_EQ(hcs_xor(h, FRAME_HEADER_SIZE), 0x00);
    CHECK_EQ(hcs_xor(h, 0), 0x00);
    CHECK_EQ(hcs_xor((const uint8_t *)"\x01\x02\x04", 3), 0x07);
}

void test_crypto_suite(void)
{
    test_run("crypto_aes_fips197", test_aes_fips197);
    test_run("crypto_aes_sp800_38a", test_aes_sp800_38a);
    test_run("crypto_aes_extremes", test_aes_extremes);
    test_run("crypto_aes_batch_matches_single", test_aes_batch_matches_single);
    test_run("crypto_gcm_spec_vectors", test_gcm_spec_vectors);
    test_run("crypto_gcm_tag_lengths", test_gcm_tag_lengths);
    test_run("crypto_gcm_open_rejects", test_gcm_open_rejects);
    test_run("crypto_gcm_open_truncated_tag", test_gcm_open_truncated_tag);
    test_run("crypto_gcm_open_bad_tag_len", test_gcm_open_bad_tag_len);
    test_run("crypto_gcm_in_place", test_gcm_in_place);
    test_run("crypto_gcm_lengths", test_gcm_lengths);
    test_run("crypto_gcm_init_deterministic", test_gcm_init_deterministic);
    test_run("crypto_protocol_example", test_protocol_example);
    test_run("crypto_crc16_x25", test_crc16_x25);
    test_run("crypto_crc16_table", test_crc16_table);
    test_run("crypto_hcs_xor", test_hcs_xor);
}
