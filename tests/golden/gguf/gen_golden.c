// Produces the golden quantization vectors in this folder with ggml's own
// `ggml_quantize_chunk` (what llama-quantize calls per chunk of rows).
// Build and run with ./gen_golden.sh; the Rust test tests/gguf_golden.rs
// checks that yibuild's quantizers reproduce every byte.
//
// Outputs (little-endian):
//   input.f32          ROWS x COLS float32 test rows (8 different distributions)
//   imatrix.f32        COLS float32 importance weights
//   <TYPE>.bin         ggml_quantize_chunk(type, input, NULL)
//   <TYPE>-imatrix.bin ggml_quantize_chunk(type, input, imatrix)
//   <TYPE>-imatrix.f32 ggml's dequantization of <TYPE>-imatrix.bin (i-quants only)
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"

#define ROWS 8
#define COLS 512

static uint64_t state = 0x5EED5EEDULL;

static uint64_t next_u64(void) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static float uniform(void) { return (float)((next_u64() >> 11) * (1.0 / 9007199254740992.0)); }

static float normal(void) {
    float u1 = uniform() + 1e-12f, u2 = uniform();
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

static float bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    u = (u + (0x7fff + ((u >> 16) & 1))) & 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

static void write_file(const char * name, const void * data, size_t n) {
    FILE * f = fopen(name, "wb");
    if (!f || fwrite(data, 1, n, f) != n) {
        fprintf(stderr, "cannot write %s\n", name);
        exit(1);
    }
    fclose(f);
}

int main(void) {
    static float x[ROWS * COLS];
    static float imatrix[COLS];
    for (int r = 0; r < ROWS; ++r) {
        for (int c = 0; c < COLS; ++c) {
            float v;
            switch (r) {
                case 0: v = 0.02f * normal() * (c % 97 == 0 ? 8.0f : 1.0f); break;  // weights with outliers
                case 1: v = 2.0f * uniform() - 1.0f; break;                          // uniform
                case 2: v = uniform() * uniform(); break;                            // all positive
                case 3: v = c < 256 ? 0.0f : (c < 288 ? 0.5f : -0.01f * normal()); break; // zero and constant blocks
                case 4: v = 1e-6f * normal(); break;                                 // tiny
                case 5: v = 100.0f * normal(); break;                                // large
                case 6: { float g = normal(); v = 0.01f * g * g * g; } break;        // heavy tails
                default: v = bf16_round(0.05f * normal()); break;                    // bf16 weights
            }
            x[r * COLS + c] = v;
        }
    }
    for (int c = 0; c < COLS; ++c) {
        float u = uniform();
        imatrix[c] = 0.05f + 4.0f * u * u;
    }
    write_file("input.f32", x, sizeof(x));
    write_file("imatrix.f32", imatrix, sizeof(imatrix));

    const struct { enum ggml_type type; const char * name; } types[] = {
        {GGML_TYPE_F16, "F16"},   {GGML_TYPE_BF16, "BF16"}, {GGML_TYPE_Q4_0, "Q4_0"},
        {GGML_TYPE_Q4_1, "Q4_1"}, {GGML_TYPE_Q5_0, "Q5_0"}, {GGML_TYPE_Q5_1, "Q5_1"},
        {GGML_TYPE_Q8_0, "Q8_0"}, {GGML_TYPE_Q2_K, "Q2_K"}, {GGML_TYPE_Q3_K, "Q3_K"},
        {GGML_TYPE_Q4_K, "Q4_K"}, {GGML_TYPE_Q5_K, "Q5_K"}, {GGML_TYPE_Q6_K, "Q6_K"},
        {GGML_TYPE_IQ4_NL, "IQ4_NL"}, {GGML_TYPE_IQ4_XS, "IQ4_XS"}, {GGML_TYPE_IQ3_S, "IQ3_S"},
        {GGML_TYPE_IQ3_XXS, "IQ3_XXS"}, {GGML_TYPE_IQ2_XXS, "IQ2_XXS"}, {GGML_TYPE_IQ2_XS, "IQ2_XS"},
        {GGML_TYPE_IQ2_S, "IQ2_S"},   {GGML_TYPE_IQ1_S, "IQ1_S"},   {GGML_TYPE_IQ1_M, "IQ1_M"},
    };
    static uint8_t out[ROWS * COLS * 4];
    char name[64];
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); ++i) {
        for (int with_imatrix = 0; with_imatrix < 2; ++with_imatrix) {
            if (with_imatrix && !ggml_is_quantized(types[i].type)) {
                continue;
            }
            // ggml asserts an imatrix for the types that cannot do without one.
            if (!with_imatrix && ggml_quantize_requires_imatrix(types[i].type)) {
                continue;
            }
            size_t n = ggml_quantize_chunk(types[i].type, x, out, 0, ROWS, COLS,
                                           with_imatrix ? imatrix : NULL);
            if (!ggml_validate_row_data(types[i].type, out, n)) {
                fprintf(stderr, "%s: ggml rejected its own output\n", types[i].name);
                return 1;
            }
            snprintf(name, sizeof(name), with_imatrix ? "%s-imatrix.bin" : "%s.bin", types[i].name);
            write_file(name, out, n);
            if (with_imatrix && types[i].name[0] == 'I') {
                static float y[ROWS * COLS];
                ggml_get_type_traits(types[i].type)->to_float(out, y, ROWS * COLS);
                snprintf(name, sizeof(name), "%s-imatrix.f32", types[i].name);
                write_file(name, y, sizeof(y));
            }
        }
    }
    return 0;
}
