//! Batched matmul for AVX512-VNNI (prefill): sixteen activation rows per 512-bit register.
//!
//! The single-row dot kernels keep one weight row and one activation row in the lanes of a register, so every
//! 32-value block pays for its own scale multiply, int→float conversion and FMA (and the signed×signed trick)
//! per pair of rows. Here an activation register instead holds four consecutive quantized values of sixteen
//! different activation rows (one per 32-bit lane), and `vpdpbusd` with a broadcast weight dword adds
//! `w[4c..4c+4]·x_l[4c..4c+4]` to lane `l`. Eight of them give each lane its whole 32-value block product, so the
//! float work (convert, scale, FMA) is shared by sixteen rows, and no sign fix-up is needed:
//!
//! * activations are stored offset by 128 (`u8 = x + 128`, the unsigned operand), and the weights' block sum
//!   times -128 initialises the integer accumulator, which leaves exactly `Σ w·x`;
//! * weights are decoded once per call into signed bytes (`q - 8`, `q - 16`, `q`) with their f32 scale, and
//!   reused for every sixteen-row activation tile.
//!
//! Each output is `Σ_blocks (d_w·d_x)·Σ w·x` accumulated in one f32 in block order, with the same quantized
//! activations as the single-row path, so results differ from it only by f32 rounding (ggml's kernels keep
//! eight partial sums per row instead). Q4_1/Q5_1 are not handled: SmolLM2's prompt logits are bit-identical
//! to llama.cpp's, whose batched Q4_1 path is the single-row kernel, and the golden tests hold them to that.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::pool::ThreadPool;
use crate::quant::GgmlType;

/// Activation rows per tile (32-bit lanes of a zmm register).
const LANES: usize = 16;
/// Weight rows per micro-tile: eight accumulator chains keep `vpdpbusd` busy, and 8 activation registers +
/// 8 integer + 8 float accumulators fit in the 32 zmm registers.
const MR: usize = 8;
/// Tasks per thread, as in `matmul`.
const TASKS_PER_THREAD: usize = 4;

/// One 64-byte line; buffers are built from these so every zmm load is aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

const ZERO_LINE: Line = Line([0; 64]);

thread_local! {
    static WEIGHT_SCRATCH: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
    static ACT_SCRATCH: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// Whether [`matmul_q8`] handles weights of type `ty`.
pub(crate) fn supports(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q4_0 | Q5_0 | Q8_0)
}

/// Fewest activation rows for which the batched path beats the single-row kernels (a tile is 16 rows).
pub(crate) const MIN_ROWS: usize = 8;

/// Lines per 32-value block of a decoded micro-tile of weights: 8 rows × 32 bytes, then d[8] (f32) and
/// c[8] (i32, -128·Σw).
const W_LINES: usize = 5;
/// Lines per 32-value block of an activation tile: 8 lines of dwords (line `c`, lane `l`: values
/// `4c..4c + 4` of row `l`, offset to unsigned), then d[16] (f32).
const A_LINES: usize = 9;

/// The output buffer, written by tasks at disjoint indices.
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements (each owns a distinct range of weight rows) and `pool.run` joins them
// all before the borrow of `y` ends.
unsafe impl Sync for OutPtr {}

/// `y = x · Wᵀ` from activations already quantized to Q8_0 (`xq`: `n_rows` rows of `act_bytes`). The CPU
/// must support [`Simd::Avx512Vnni`](super::dot::Simd) and `ty` must satisfy [`supports`]; lengths are the
/// caller's (checked) ones.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_q8(
    pool: &ThreadPool,
    ty: GgmlType,
    w: &[u8],
    n_out: usize,
    k: usize,
    xq: &[u8],
    act_bytes: usize,
    n_rows: usize,
    y: &mut [f32],
) {
    assert!(supports(ty) && k.is_multiple_of(32));
    let nb = k / 32;
    let row_bytes = ty.bytes_for(k).expect("checked by matmul");
    assert!(
        w.len() == n_out * row_bytes && xq.len() == n_rows * act_bytes && y.len() == n_rows * n_out
    );
    let n_tiles = n_rows.div_ceil(LANES);
    let tile_lines = nb * A_LINES;
    let mut packed = ACT_SCRATCH.with(|s| s.take());
    packed.clear();
    packed.resize(n_tiles * tile_lines, ZERO_LINE);
    pack_activations(nb, xq, act_bytes, n_rows, &mut packed);

    let n_groups = n_out.div_ceil(MR);
    let groups_per_task = n_groups
        .div_ceil(pool.n_threads() * TASKS_PER_THREAD)
        .max(1);
    let n_tasks = n_groups.div_ceil(groups_per_task);
    let out = OutPtr(y.as_mut_ptr());
    let (out, packed_ref) = (&out, &packed[..]);
    pool.run(n_tasks, &|t| {
        let groups = t * groups_per_task..((t + 1) * groups_per_task).min(n_groups);
        WEIGHT_SCRATCH.with(|s| {
            let mut wbuf = s.borrow_mut();
            wbuf.clear();
            wbuf.resize(nb * W_LINES, ZERO_LINE);
            for g in groups {
                let rows = g * MR..((g + 1) * MR).min(n_out);
                let wg = &w[rows.start * row_bytes..rows.end * row_bytes];
                // SAFETY: the CPU supports AVX512-VNNI (caller's contract); `wbuf` holds `nb` blocks.
                unsafe { decode_group(ty, wg, row_bytes, nb, &mut wbuf) };
                for tile in 0..n_tiles {
                    let a = &packed_ref[tile * tile_lines..(tile + 1) * tile_lines];
                    let lanes = (n_rows - tile * LANES).min(LANES);
                    // SAFETY: as above, and `a` holds `nb` blocks. The stores go to activation rows
                    // tile*16..tile*16 + lanes (< n_rows) and columns `rows` (< n_out), which only this task
                    // writes.
                    unsafe {
                        let acc = tile_kernel(nb, wbuf.as_ptr(), a.as_ptr());
                        let dst = out.0.add(tile * LANES * n_out + rows.start);
                        store_transposed(&acc, dst, n_out, lanes, rows.len());
                    }
                }
            }
        });
    });
    ACT_SCRATCH.with(|s| s.replace(packed));
}

/// Transposes Q8_0 activation rows (d f16, 32 qs per block) into tiles of `A_LINES` lines per block.
/// Missing rows of the last tile stay zero.
fn pack_activations(nb: usize, xq: &[u8], act_bytes: usize, n_rows: usize, packed: &mut [Line]) {
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    for r in 0..n_rows {
        let (tile, lane) = (r / LANES, r % LANES);
        let row = &xq[r * act_bytes..(r + 1) * act_bytes];
        for (b, src) in row.chunks_exact(34).enumerate() {
            let lines = &mut packed[(tile * nb + b) * A_LINES..(tile * nb + b + 1) * A_LINES];
            for c in 0..8 {
                let v =
                    u32::from_le_bytes(src[2 + 4 * c..6 + 4 * c].try_into().unwrap()) ^ 0x8080_8080;
                lines[c].0[4 * lane..4 * lane + 4].copy_from_slice(&v.to_le_bytes());
            }
            lines[8].0[4 * lane..4 * lane + 4].copy_from_slice(&f16(src).to_le_bytes());
        }
    }
}

/// Decodes up to `MR` weight rows (`w`: whole rows of `row_bytes`) into `out` (`nb` blocks of `W_LINES`
/// lines); rows past the end are zero.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn decode_group(ty: GgmlType, w: &[u8], row_bytes: usize, nb: usize, out: &mut [Line]) {
    let n = w.len() / row_bytes;
    let (w, out) = (w.as_ptr(), out.as_mut_ptr());
    match ty {
        GgmlType::Q4_0 => decode_rows(w, n, row_bytes, 18, nb, out, |p| {
            _mm256_sub_epi8(nibbles(p.add(2)), _mm256_set1_epi8(8))
        }),
        // q - 16 = nibble when the fifth bit is set, nibble | 0xF0 (as i8) when it is clear.
        GgmlType::Q5_0 => decode_rows(w, n, row_bytes, 22, nb, out, |p| {
            _mm256_or_si256(
                nibbles(p.add(6)),
                _mm256_andnot_si256(bits_to_bytes(p.add(2)), _mm256_set1_epi8(-16)),
            )
        }),
        GgmlType::Q8_0 => decode_rows(w, n, row_bytes, 34, nb, out, |p| {
            _mm256_loadu_si256(p.add(2).cast())
        }),
        _ => unreachable!("{ty} is not a symmetric 32-value block type"),
    }
}

/// [`decode_group`] for one type: `values` turns a block (f16 scale first) into 32 signed bytes.
#[inline(always)]
unsafe fn decode_rows(
    w: *const u8,
    n: usize,
    row_bytes: usize,
    block: usize,
    nb: usize,
    out: *mut Line,
    values: impl Fn(*const u8) -> __m256i,
) {
    for b in 0..nb {
        let dst = out.add(b * W_LINES).cast::<u8>();
        let mut d = _mm_setzero_si128();
        for i in 0..MR {
            let q = if i < n {
                let p = w.add(i * row_bytes + b * block);
                d = _mm_insert_epi16::<0>(
                    _mm_bslli_si128::<2>(d),
                    p.cast::<i16>().read_unaligned() as i32,
                );
                values(p)
            } else {
                d = _mm_bslli_si128::<2>(d);
                _mm256_setzero_si256()
            };
            // Σ(w + 128) over the block from the unsigned view, then c = -128·Σw.
            let sad = _mm256_sad_epu8(
                _mm256_xor_si256(q, _mm256_set1_epi8(-128)),
                _mm256_setzero_si256(),
            );
            let s = _mm_add_epi64(
                _mm256_castsi256_si128(sad),
                _mm256_extracti128_si256::<1>(sad),
            );
            let sum = _mm_cvtsi128_si32(_mm_add_epi64(s, _mm_unpackhi_epi64(s, s))) - 32 * 128;
            _mm256_store_si256(dst.add(32 * i).cast(), q);
            dst.add(288 + 4 * i).cast::<i32>().write(-128 * sum);
        }
        // The f16 scales were shifted in from the top, so row i's is in word 7 - i: reverse, then convert.
        let rev = _mm_set_epi8(1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
        _mm256_store_ps(
            dst.add(256).cast(),
            _mm256_cvtph_ps(_mm_shuffle_epi8(d, rev)),
        );
    }
}

/// 16 bytes of packed nibbles → 32 bytes: low nibbles first, then high nibbles.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let q = _mm_loadu_si128(p.cast());
    _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16::<4>(q), q),
        _mm256_set1_epi8(0x0F),
    )
}

/// 32 bits (little-endian u32 at `p`) → 32 bytes, 0xFF where the bit is set.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn bits_to_bytes(p: *const u8) -> __m256i {
    let word = p.cast::<u32>().read_unaligned() as i32;
    let spread = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(word), spread);
    let others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi64x(-1))
}

/// One micro-tile: `MR` decoded weight rows × one 16-row activation tile, over `nb` blocks. Returns the
/// sixteen outputs (lane `l`: activation row `l`) of each weight row.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_kernel(nb: usize, w: *const Line, a: *const Line) -> [__m512; MR] {
    let mut acc = [_mm512_setzero_ps(); MR];
    for b in 0..nb {
        let wb = w.add(b * W_LINES).cast::<i32>();
        let ab = a.add(b * A_LINES);
        let x: [__m512i; 8] = std::array::from_fn(|c| _mm512_load_si512(ab.add(c).cast()));
        let dx = _mm512_load_ps(ab.add(8).cast());
        for (i, acc) in acc.iter_mut().enumerate() {
            let mut s = _mm512_set1_epi32(*wb.add(72 + i));
            for (c, &xc) in x.iter().enumerate() {
                s = _mm512_dpbusd_epi32(s, xc, _mm512_set1_epi32(*wb.add(8 * i + c)));
            }
            let dd = _mm512_mul_ps(dx, _mm512_set1_ps(*wb.add(64 + i).cast::<f32>()));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), dd, *acc);
        }
    }
    acc
}

/// Writes `acc[i]` lane `l` to `dst[l * stride + i]` for `l < lanes`, `i < n` (an 8×16 → 16×8 transpose).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn store_transposed(
    acc: &[__m512; MR],
    dst: *mut f32,
    stride: usize,
    lanes: usize,
    n: usize,
) {
    let mask = ((1u32 << n) - 1) as u8;
    for half in 0..2 {
        let r: [__m256; MR] = std::array::from_fn(|i| {
            if half == 0 {
                _mm512_castps512_ps256(acc[i])
            } else {
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[i])))
            }
        });
        let t: [__m256; MR] = std::array::from_fn(|j| {
            let (a, b) = (r[2 * (j / 2)], r[2 * (j / 2) + 1]);
            if j % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        // u[4g + m]: rows 4g..4g + 4 of columns m and m + 4 (one per 128-bit half).
        let u: [__m256; MR] = std::array::from_fn(|j| {
            let (g, m) = (j / 4, j % 4);
            let (a, b) = (t[4 * g + m / 2], t[4 * g + 2 + m / 2]);
            if m % 2 == 0 {
                _mm256_shuffle_ps::<0x44>(a, b)
            } else {
                _mm256_shuffle_ps::<0xEE>(a, b)
            }
        });
        for l in 0..8 {
            let lane = 8 * half + l;
            if lane >= lanes {
                return;
            }
            let (lo, hi) = (u[l % 4], u[4 + l % 4]);
            let col = if l < 4 {
                _mm256_permute2f128_ps::<0x20>(lo, hi)
            } else {
                _mm256_permute2f128_ps::<0x31>(lo, hi)
            };
            let p = dst.add(lane * stride);
            if n == MR {
                _mm256_storeu_ps(p, col);
            } else {
                _mm256_mask_storeu_ps(p, mask, col);
            }
        }
    }
}
