// Prints ggml's reference K-quant quantizations of f32 values read from stdin (used by make_quant_fixtures.py).
// Build: gcc -O2 -ffp-contract=off -I$GGML/include -I$GGML/src kquant_ref.c $GGML/src/ggml-quants.c -lm
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ggml-quants.h"

// ggml-quants.c references these for paths this program never takes.
void ggml_abort(const char * file, int line, const char * fmt, ...) { abort(); }
size_t ggml_row_size(enum ggml_type type, int64_t ne) { abort(); }
size_t ggml_type_size(enum ggml_type type) { abort(); }
const char * ggml_type_name(enum ggml_type type) { abort(); }

int main(int argc, char ** argv) {
    const int n = atoi(argv[1]);
    float * x = malloc(sizeof(float) * n);
    uint8_t * buf = malloc(256 * (size_t) n);
    if (fread(x, sizeof(float), n, stdin) != (size_t) n) return 1;
    quantize_row_q4_K_ref(x, (block_q4_K *) buf, n);
    fwrite(buf, 144, n / 256, stdout);
    quantize_row_q5_K_ref(x, (block_q5_K *) buf, n);
    fwrite(buf, 176, n / 256, stdout);
    quantize_row_q6_K_ref(x, (block_q6_K *) buf, n);
    fwrite(buf, 210, n / 256, stdout);
    return 0;
}
