//! Batched matmul for AVX512-VNNI (prefill) of the 32-value block types (Q4_0, Q5_0, Q8_0 × Q8_0; Q4_1,
//! Q5_1 × Q8_1): sixteen activation rows per 512-bit register, in exactly the float order of the single-row
//! kernels (`dot_signed` / `dot_unsigned` in `dot/avx2.rs`, ggml's AVX2 order, which llama.cpp's tinyBLAS
//! also keeps), so batched results are bit-identical to single-row ones. SmolLM2's prompt logits are
//! bit-identical to llama.cpp's, and Gemma 3 is sensitive enough to rounding that a different order moves
//! its greedy continuations.
//!
//! An activation register holds dword `j` of a block (values `4j..4j + 4`) for sixteen activation rows (one
//! per 32-bit lane), and `vpdpbusd` with a broadcast weight dword gives each lane the exact integer product
//! `P_j` of those four values. Then, as in ggml's eight-lane accumulator (one lane per register here):
//!
//! * each dword keeps its own accumulator, `A_j += (d_w·d_x)·P_j`, block after block;
//! * at the end `((A_0 + A_4) + (A_2 + A_6)) + ((A_1 + A_5) + (A_3 + A_7))`, ggml's `hsum_float_8`;
//! * with a min (Q4_1/Q5_1) the products `m_w·s_x`, rounded, are summed in block order and added last.
//!
//! Activations are stored offset by 128 (`u8 = x + 128`, the unsigned operand of `vpdpbusd`), and each
//! dword's correction `-128·Σ` of its four weights initialises the integer accumulator. Weights are decoded
//! once per call into signed bytes (`q - 8`, `q - 16`, `q`; the levels `q` for the types with a min), two
//! rows at a time, and reused for every sixteen-row activation tile. Against the single-row kernels this
//! shares the scale multiply across sixteen rows, drops the sign fix-up, and decodes each weight block once
//! per call instead of once per four rows.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::pool::ThreadPool;
use crate::quant::GgmlType;

/// Activation rows per tile (32-bit lanes of a zmm register).
const LANES: usize = 16;
/// Weight rows per micro-tile: 2 rows × 8 accumulators fill half the zmm registers.
const ROWS: usize = 2;
/// Tasks per thread, as in `matmul`.
const TASKS_PER_THREAD: usize = 4;

/// Fewest activation rows for which the batched path beats the single-row kernels (a tile is 16 rows).
pub(crate) const MIN_ROWS: usize = 8;

/// Weights, per 32-value block of `ROWS` rows: per row one line of 32 signed bytes and c[8] (i32, the
/// correction of each dword), then one line with d[2] and m[2] (f32).
const W_LINES: usize = ROWS + 1;

/// Activations, per block of a tile: 8 lines of dwords (line `j`, lane `l`: values `4j..4j + 4` of row `l`,
/// offset to unsigned), then d[16] and (Q8_1) s[16] (f32).
const fn a_lines(min: bool) -> usize {
    if min {
        10
    } else {
        9
    }
}

/// One 64-byte line; buffers are built from these so every zmm load is aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

const ZERO_LINE: Line = Line([0; 64]);

thread_local! {
    static WEIGHT_SCRATCH: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
    static ACT_SCRATCH: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// Whether [`matmul_batched`] handles weights of type `ty`.
pub(crate) fn supports(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0)
}

/// The packed activations, written by tasks at disjoint tiles.
struct LinePtr(*mut Line);
// SAFETY: tasks write disjoint tiles and `pool.run` joins them before the buffer is read.
unsafe impl Sync for LinePtr {}

/// The output buffer, written by tasks at disjoint indices.
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements (each owns a distinct range of weight rows) and `pool.run` joins them
// all before the borrow of `y` ends.
unsafe impl Sync for OutPtr {}

/// `y = x · Wᵀ` from activations already quantized to `activation_type(ty)` (`xq`: `n_rows` rows of
/// `act_bytes`). The CPU must support [`Simd::Avx512Vnni`](super::dot::Simd) and `ty` must satisfy
/// [`supports`]; lengths are the caller's (checked) ones.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_batched(
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
    if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
        run::<true>(pool, ty, w, n_out, k, xq, act_bytes, n_rows, y)
    } else {
        run::<false>(pool, ty, w, n_out, k, xq, act_bytes, n_rows, y)
    }
}

#[allow(clippy::too_many_arguments)]
fn run<const MIN: bool>(
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
    let nb = k / 32;
    let row_bytes = ty.bytes_for(k).expect("checked by matmul");
    assert!(
        w.len() == n_out * row_bytes && xq.len() == n_rows * act_bytes && y.len() == n_rows * n_out
    );
    let n_tiles = n_rows.div_ceil(LANES);
    let tile_lines = nb * a_lines(MIN);
    let mut packed = ACT_SCRATCH.with(|s| s.take());
    packed.clear();
    packed.resize(n_tiles * tile_lines, ZERO_LINE);
    let pack_ptr = LinePtr(packed.as_mut_ptr());
    let pack_ptr = &pack_ptr;
    pool.run(n_tiles, &|tile| {
        let rows = tile * LANES..((tile + 1) * LANES).min(n_rows);
        // SAFETY: the caller guarantees AVX512-VNNI; each task packs its own tile's lines.
        unsafe {
            let lines =
                std::slice::from_raw_parts_mut(pack_ptr.0.add(tile * tile_lines), tile_lines);
            pack::<MIN>(
                nb,
                &xq[rows.start * act_bytes..rows.end * act_bytes],
                act_bytes,
                lines,
            )
        }
    });

    let n_groups = n_out.div_ceil(ROWS);
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
                let rows = g * ROWS..((g + 1) * ROWS).min(n_out);
                let wg = &w[rows.start * row_bytes..rows.end * row_bytes];
                // SAFETY: the CPU supports AVX512-VNNI (caller's contract); `wbuf` holds `nb` blocks.
                unsafe { decode(ty, wg, row_bytes, nb, &mut wbuf) };
                for tile in 0..n_tiles {
                    let a = &packed_ref[tile * tile_lines..(tile + 1) * tile_lines];
                    let lanes = (n_rows - tile * LANES).min(LANES);
                    // SAFETY: as above, and `a` holds `nb` blocks. The stores go to activation rows
                    // tile*16..tile*16 + lanes (< n_rows) and columns `rows` (< n_out), which only this task
                    // writes.
                    unsafe {
                        let acc = kernel::<MIN>(nb, wbuf.as_ptr(), a.as_ptr());
                        let dst = out.0.add(tile * LANES * n_out + rows.start);
                        store(&acc[..rows.len()], dst, n_out, lanes);
                    }
                }
            }
        });
    });
    ACT_SCRATCH.with(|s| s.replace(packed));
}

/// Writes lane `l` of `acc[i]` to `dst[l * stride + i]` for `l < lanes` (`acc.len()` is 1 or 2).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn store(acc: &[__m512], dst: *mut f32, stride: usize, lanes: usize) {
    if acc.len() == 2 && lanes == LANES {
        // Pairs (acc0[l], acc1[l]): unpacklo gives lanes 4k, 4k + 1 in 128-bit chunk k, unpackhi 4k + 2, 4k + 3.
        let (lo, hi) = (
            _mm512_unpacklo_ps(acc[0], acc[1]),
            _mm512_unpackhi_ps(acc[0], acc[1]),
        );
        let put = |l: usize, v: __m128, high: bool| {
            let p = dst.add(l * stride).cast::<f64>();
            if high {
                _mm_storeh_pd(p, _mm_castps_pd(v))
            } else {
                _mm_storel_pd(p, _mm_castps_pd(v))
            }
        };
        macro_rules! chunk {
            ($k:literal) => {{
                let (l, h) = (
                    _mm512_extractf32x4_ps::<$k>(lo),
                    _mm512_extractf32x4_ps::<$k>(hi),
                );
                put(4 * $k, l, false);
                put(4 * $k + 1, l, true);
                put(4 * $k + 2, h, false);
                put(4 * $k + 3, h, true);
            }};
        }
        chunk!(0);
        chunk!(1);
        chunk!(2);
        chunk!(3);
        return;
    }
    let mut v = [[0f32; LANES]; ROWS];
    for (v, &a) in v.iter_mut().zip(acc) {
        _mm512_storeu_ps(v.as_mut_ptr(), a);
    }
    for l in 0..lanes {
        for (i, v) in v[..acc.len()].iter().enumerate() {
            *dst.add(l * stride + i) = v[l];
        }
    }
}

/// Decodes up to `ROWS` weight rows (`w`: whole rows of `row_bytes`) into `out` (`nb` blocks of `W_LINES`
/// lines); missing rows decode to zero weights.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn decode(ty: GgmlType, w: &[u8], row_bytes: usize, nb: usize, out: &mut [Line]) {
    let n = w.len() / row_bytes;
    let (w, out) = (w.as_ptr(), out.as_mut_ptr());
    match ty {
        GgmlType::Q4_0 => decode_rows::<false>(w, n, row_bytes, 18, nb, out, |p| {
            _mm256_sub_epi8(nibbles(p.add(2)), _mm256_set1_epi8(8))
        }),
        // q - 16 = nibble when the fifth bit is set, nibble | 0xF0 (as i8) when it is clear.
        GgmlType::Q5_0 => decode_rows::<false>(w, n, row_bytes, 22, nb, out, |p| {
            _mm256_or_si256(
                nibbles(p.add(6)),
                _mm256_andnot_si256(bits_to_bytes(p.add(2)), _mm256_set1_epi8(-16)),
            )
        }),
        GgmlType::Q8_0 => decode_rows::<false>(w, n, row_bytes, 34, nb, out, |p| {
            _mm256_loadu_si256(p.add(2).cast())
        }),
        GgmlType::Q4_1 => decode_rows::<true>(w, n, row_bytes, 20, nb, out, |p| nibbles(p.add(4))),
        GgmlType::Q5_1 => decode_rows::<true>(w, n, row_bytes, 24, nb, out, |p| {
            _mm256_or_si256(
                nibbles(p.add(8)),
                _mm256_and_si256(bits_to_bytes(p.add(4)), _mm256_set1_epi8(0x10)),
            )
        }),
        _ => unreachable!("{ty} is not a 32-value block type"),
    }
}

/// Transposes up to 16 quantized activation rows (Q8_0, or Q8_1 with `MIN`) into one tile of `a_lines(MIN)`
/// lines per block (zeroed beforehand; missing rows stay zero).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn pack<const MIN: bool>(nb: usize, xq: &[u8], act_bytes: usize, packed: &mut [Line]) {
    let n_rows = xq.len() / act_bytes;
    let (al, block, qs) = (
        a_lines(MIN),
        if MIN { 36 } else { 34 },
        if MIN { 4 } else { 2 },
    );
    for r in 0..n_rows {
        let (tile, lane) = (r / LANES, r % LANES);
        let row = xq.as_ptr().add(r * act_bytes);
        for b in 0..nb {
            let src = row.add(b * block);
            let lines = packed.as_mut_ptr().add((tile * nb + b) * al);
            let put = |line: usize, v: u32| lines.add(line).cast::<u32>().add(lane).write(v);
            for j in 0..8 {
                put(
                    j,
                    src.add(qs + 4 * j).cast::<u32>().read_unaligned() ^ 0x8080_8080,
                );
            }
            // The f16 scale (and Q8_1's sum) as f32.
            let ds = _mm_cvtph_ps(_mm_cvtsi32_si128(src.cast::<i32>().read_unaligned()));
            put(8, _mm_extract_ps::<0>(ds) as u32);
            if MIN {
                put(9, _mm_extract_ps::<1>(ds) as u32);
            }
        }
    }
}

/// `ROWS` decoded weight rows × one tile over `nb` blocks: lane `l` of `out[i]` is the output of weight row
/// `i` for activation row `l` of the tile.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn kernel<const MIN: bool>(nb: usize, w: *const Line, a: *const Line) -> [__m512; ROWS] {
    let a_lines = a_lines(MIN);
    let mut acc = [[_mm512_setzero_ps(); 8]; ROWS];
    let mut mins = [_mm512_setzero_ps(); ROWS];
    for b in 0..nb {
        let (wb, ab) = (w.add(b * W_LINES), a.add(b * a_lines));
        let scales = wb.add(ROWS).cast::<f32>();
        let dx = _mm512_load_ps(ab.add(8).cast());
        let dd: [__m512; ROWS] =
            std::array::from_fn(|i| _mm512_mul_ps(_mm512_set1_ps(*scales.add(i)), dx));
        if MIN {
            let sx = _mm512_load_ps(ab.add(9).cast());
            for (i, m) in mins.iter_mut().enumerate() {
                *m = _mm512_add_ps(*m, _mm512_mul_ps(_mm512_set1_ps(*scales.add(2 + i)), sx));
            }
        }
        for j in 0..8 {
            let x = _mm512_load_si512(ab.add(j).cast());
            for (i, acc) in acc.iter_mut().enumerate() {
                let wr = wb.add(i).cast::<i32>();
                let p = _mm512_dpbusd_epi32(
                    _mm512_set1_epi32(*wr.add(8 + j)),
                    x,
                    _mm512_set1_epi32(*wr.add(j)),
                );
                acc[j] = _mm512_fmadd_ps(dd[i], _mm512_cvtepi32_ps(p), acc[j]);
            }
        }
    }
    let mut out = [_mm512_setzero_ps(); ROWS];
    for (o, (a, &m)) in out.iter_mut().zip(acc.iter().zip(&mins)) {
        let sum = _mm512_add_ps(
            _mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[2], a[6])),
            _mm512_add_ps(_mm512_add_ps(a[1], a[5]), _mm512_add_ps(a[3], a[7])),
        );
        *o = if MIN { _mm512_add_ps(sum, m) } else { sum };
    }
    out
}

/// [`decode`] for one type: `values` turns a block (f16 scale first, then with `MIN` the f16 min)
/// into 32 signed bytes.
#[inline(always)]
unsafe fn decode_rows<const MIN: bool>(
    w: *const u8,
    n: usize,
    row_bytes: usize,
    block: usize,
    nb: usize,
    out: *mut Line,
    values: impl Fn(*const u8) -> __m256i,
) {
    let ones = _mm256_set1_epi8(1);
    for b in 0..nb {
        let dst = out.add(b * (ROWS + 1)).cast::<u8>();
        let scales = dst.add(64 * ROWS).cast::<f32>();
        for i in 0..ROWS {
            let (q, dm) = if i < n {
                let p = w.add(i * row_bytes + b * block);
                (
                    values(p),
                    _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned())),
                )
            } else {
                (_mm256_setzero_si256(), _mm_setzero_ps())
            };
            // -128 × the sum of each dword's four signed bytes.
            let sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, q);
            _mm256_store_si256(dst.add(64 * i).cast(), q);
            _mm256_store_si256(
                dst.add(64 * i + 32).cast(),
                _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<7>(sums)),
            );
            scales.add(i).write(_mm_cvtss_f32(dm));
            if MIN {
                scales.add(2 + i).write(_mm_cvtss_f32(_mm_movehdup_ps(dm)));
            }
        }
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
