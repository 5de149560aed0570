//! The GPU backend: [`Backend`] on a GPU, written once over a vendor's [`Runtime`] (CUDA on NVIDIA,
//! ROCm on AMD). Weights are copied to device memory once at load; activations and caches live there;
//! every op is a kernel launch on one stream, and only [`Backend::read`] waits for the GPU. Kernel
//! arguments are raw device addresses (u64) plus scalars, so offsets into a buffer cost nothing.

use super::runtime::{DevBuf, DevValue, GemmF16, LaunchConfig, Runtime};
use crate::backend::{
    check_copy, check_len, gated_qk_norm_rope_by_parts, kv_layout, shape_err,
    split_qkv_l2_by_parts, Activation, AttentionParams, Backend, DeltaNetParams, KvType, QkvSplit,
    Result, RopeParams, RopeStyle, TensorCopy, WeightSource,
};
use crate::quant::{dequantize_row, GgmlType};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Activation rows one weight pass serves: the decode token plus up to seven speculative drafts.
const MAX_ROWS_PER_PASS: usize = 8;
/// From this many rows on, a product goes through cuBLAS (weights expanded to f16 once per call): the
/// expansion costs about four weight-sized memory passes, so below this the row kernels win.
const BLAS_MIN_ROWS: usize = 48;
/// Threads per block of the row kernels (`MMV_THREADS` in matvec.cu): one block per output value.
const MMV_THREADS: u32 = 128;
/// Threads of a warp-per-row product block (kernels/gpu/matvec.cu `MMVW_THREADS`).
const MMVW_THREADS: u32 = 128;
const WARPS_PER_BLOCK: u32 = 4;
const THREADS: u32 = 32 * WARPS_PER_BLOCK;

pub struct GpuTensor<R: Runtime> {
    buf: DevBuf<R, f32>,
    len: usize,
}

pub struct GpuWeight<R: Runtime> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// GGUF's bytes; Q6_K in the device layout (backend/q6k.rs) and tiled weights in theirs.
    data: DevBuf<R, u8>,
    /// Vectors (norm weights, biases, gate constants) dequantized once: they are read on every token.
    dense: Option<DevBuf<R, f32>>,
    /// `data` is in the tensor-core products' tiled layout (backend/tiles.rs), not GGUF's.
    tiled: bool,
}

pub struct GpuKvCache<R: Runtime> {
    ty: KvType,
    n_ctx: usize,
    width: usize,
    row_bytes: usize,
    k: DevBuf<R, u8>,
    v: DevBuf<R, u8>,
}

/// Buffers an op needs only while it runs, grown on demand and reused (the stream orders their uses).
struct Scratch<R: Runtime> {
    /// Quantized activations: int8 values, and per 32 of them (scale, scale · sum) as two f32s.
    act_q: Option<DevBuf<R, u8>>,
    act_d: Option<DevBuf<R, f32>>,
    att_acc: Option<DevBuf<R, f32>>,
    att_ml: Option<DevBuf<R, f32>>,
    /// Attention probabilities (f16) of the cuBLAS prefill path (its scores go in `att_acc`).
    att_p: Option<DevBuf<R, u16>>,
    /// The f16 image of a weight matrix and of the activations, for the BLAS prefill path.
    w_f16: Option<DevBuf<R, u16>>,
    x_f16: Option<DevBuf<R, u16>>,
    /// What `x_f16` holds, as `act_of` for `act_q`.
    x_f16_of: Option<(u64, usize, u64)>,
    /// What `act_q`/`act_d` hold: the [`GpuBackend::stamp`] of the activations last quantized.
    act_of: Option<(u64, usize, u64)>,
    /// The sampling kernels' results (ids, and top-k's values), read back by the same call.
    sample_ids: Option<DevBuf<R, u32>>,
    sample_vals: Option<DevBuf<R, f32>>,
    /// `argmax_split`'s best (value, index) key of each block of each row.
    argmax_keys: Option<DevBuf<R, u64>>,
    /// `copy_spans`' table: (source, destination, values) per copy.
    copy_spans: Option<DevBuf<R, u64>>,
}

pub struct GpuBackend<R: Runtime> {
    rt: R,
    ordinal: usize,
    sm_count: usize,
    /// How quantized matrix × few-vector products are laid out (`KILN_MMV`; see kernels/gpu/matvec.cu).
    matvec: Matvec,
    /// Fewer launches per step (default; `KILN_CUDA_FUSE=0` turns it off for comparisons): producers
    /// quantize their outputs for the next product, products of one input share a launch, and the
    /// recurrent layer's q/k/v split and norms are one kernel.
    fuse: bool,
    /// Prefill attention through cuBLAS (default; `KILN_ATTN_BLAS=0` keeps the split kernel).
    attn_blas: bool,
    /// Decode attention over q4_0/q8_0 caches by `attn_tile_*`, a key per lane (default;
    /// `KILN_ATTN_TILE=0` keeps `attn_split_*`, a warp per key).
    attn_tile: bool,
    /// A kv head's query heads dealt to several `attn_tile2_*` blocks at short contexts (default;
    /// `KILN_ATTN_GROUPS=0` keeps one `attn_tile_*` block per kv head and split).
    attn_groups: bool,
    /// Whether the device has the tensor-core K-quant products (`mmq_q4_k_*`, `mmqg_*`: CUDA sm_80+).
    mma_kernels: bool,
    /// Q4_K and Q5_K weights in whole 16-row groups are loaded in the tiled layout those products read
    /// fastest (backend/tiles.rs; default where they run, `KILN_TILES=0` keeps GGUF's layout).
    tiles: bool,
    /// Argmax and top-k picked on the device (default; `KILN_DEVICE_SAMPLING=0` reads whole rows back
    /// and picks on the host, for comparisons).
    device_sampling: bool,
    /// Few long rows normed by a block per slice of a row (default; `KILN_NORM_SPLIT=0` keeps a block
    /// per row; see backend/norm.rs).
    norm_split: bool,
    scratch: Mutex<Scratch<R>>,
    /// `KILN_CUDA_PROFILE=1`: every kernel is timed alone (synchronising around it), and the totals per
    /// kernel are printed when the backend is dropped. Slows everything down; for finding hot spots.
    profile: Option<Mutex<HashMap<String, (u64, f64)>>>,
    /// Kernel launches so far. Consecutive products of the same activations (q/k/v, gate/up) reuse one
    /// quantization of them: it stays valid only while nothing else has been launched in between.
    launches: std::sync::atomic::AtomicU64,
}

fn grid(n: usize, threads: u32) -> LaunchConfig {
    let blocks = n.div_ceil(threads as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn u32_arg(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v)
        .map_err(|_| shape_err(op, format!("{v} does not fit the kernel's 32-bit index")))
}

/// A kernel argument as the launch APIs take it: the address of its value (a reference, so a value
/// passed by mistake does not compile).
pub(crate) fn kernel_arg<T: Copy>(value: &T) -> *mut std::ffi::c_void {
    value as *const T as *mut std::ffi::c_void
}

/// Launches kernel `$name` with `$cfg` and the given argument references.
macro_rules! launch {
    ($self:expr, $name:expr, $cfg:expr, $($arg:expr),* $(,)?) => {{
        let name: &str = $name;
        let f = $self.rt.func(name)?;
        $self.timed(name, || {
            let mut args = [$( $crate::gpu::backend::kernel_arg($arg) ),*];
            // SAFETY: every argument matches the kernel's parameter list in kernels/gpu/*.cu, and every
            // address points into a live buffer whose extent the caller checked.
            unsafe { $self.rt.launch(&f, $cfg, &mut args) }
        })
    }};
}

mod attention_blas;
mod matvec;
mod norm;
mod q6k;
mod recurrent;
mod sampling;
mod tiles;
use matvec::{mmv_kernel, Matvec};
use norm::NormArgs;
use q6k::device_row_bytes;
use recurrent::split_widths;

impl<R: Runtime> Default for Scratch<R> {
    fn default() -> Self {
        Scratch {
            act_q: None,
            act_d: None,
            att_acc: None,
            att_ml: None,
            att_p: None,
            w_f16: None,
            x_f16: None,
            x_f16_of: None,
            act_of: None,
            sample_ids: None,
            sample_vals: None,
            argmax_keys: None,
            copy_spans: None,
        }
    }
}

impl<R: Runtime> GpuBackend<R> {
    /// The backend on device `ordinal` of an opened runtime.
    pub(crate) fn with_runtime(rt: R, ordinal: usize) -> Self {
        let sm_count = rt.multiprocessors().max(1);
        let profile = std::env::var("KILN_CUDA_PROFILE")
            .is_ok_and(|v| v == "1")
            .then(|| Mutex::new(HashMap::new()));
        let mma_kernels = rt.func("mmq_q4_k_1").is_ok() && rt.func("mmqg_1").is_ok();
        let matvec = Matvec::from_env();
        let tiles = mma_kernels
            && matches!(matvec, Matvec::Mma { .. })
            && crate::gpu::switched_on("KILN_TILES");
        GpuBackend {
            mma_kernels,
            tiles,
            rt,
            ordinal,
            sm_count,
            matvec,
            fuse: crate::gpu::switched_on("KILN_CUDA_FUSE"),
            attn_blas: crate::gpu::switched_on("KILN_ATTN_BLAS"),
            attn_tile: crate::gpu::switched_on("KILN_ATTN_TILE"),
            attn_groups: crate::gpu::switched_on("KILN_ATTN_GROUPS"),
            device_sampling: crate::gpu::switched_on("KILN_DEVICE_SAMPLING"),
            norm_split: crate::gpu::switched_on("KILN_NORM_SPLIT"),
            scratch: Mutex::new(Scratch::default()),
            profile,
            launches: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Runs `f` (one launch), timing it alone when profiling is on.
    fn timed(&self, name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        self.launches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(p) = &self.profile else { return f() };
        self.synchronize()?;
        let t = Instant::now();
        f()?;
        self.synchronize()?;
        let dt = t.elapsed().as_secs_f64();
        let mut m = p.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(name.to_string()).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += dt;
        Ok(())
    }

    /// [`Backend::load_weight`] with the layout chosen by the caller: `tiled` puts a Q4_K or Q5_K matrix
    /// of whole 16-row groups in the tensor-core products' layout (backend/tiles.rs), which every kernel
    /// reading it then follows; the loader tiles wherever those products run. An error if `tiled` is
    /// asked of a weight that cannot be tiled, or on a device without the products.
    pub fn load_weight_as(&self, src: WeightSource, tiled: bool) -> Result<GpuWeight<R>> {
        check_source(&src)?;
        if tiled && !(self.mma_kernels && tiles::tileable(src.ty, src.rows)) {
            return Err(shape_err(
                "load_weight",
                format!(
                    "{} ({} × {} {}) cannot be tiled on this device",
                    src.name, src.rows, src.cols, src.ty
                ),
            ));
        }
        let bytes = src.bytes.as_slice();
        let dense = if src.rows == 1 {
            let mut v = vec![0f32; src.cols];
            dequantize_row(src.ty, bytes, &mut v)?;
            Some(self.upload(&v)?)
        } else {
            None
        };
        let data = if tiled {
            self.upload_tiled(src.ty, &[bytes], src.rows)?
        } else if src.ty == GgmlType::Q6_K {
            self.upload_q6_k(&[bytes], src.cols)?
        } else {
            self.upload(bytes)?
        };
        Ok(GpuWeight {
            ty: src.ty,
            rows: src.rows,
            cols: src.cols,
            data,
            dense,
            tiled,
        })
    }

    /// Whether `w` was loaded in the tiled layout.
    pub fn is_tiled(&self, w: &GpuWeight<R>) -> bool {
        w.tiled
    }

    /// Whether large products go through the vendor's BLAS (cuBLAS).
    pub fn has_blas(&self) -> bool {
        self.rt.has_blas()
    }

    /// out (rows × n_out) = x (rows × k) · Wᵀ through cuBLAS: W expanded to f16 (F16 weights are used
    /// as stored), x converted to f16, f32 accumulation on the tensor cores.
    fn matmul_blas(&self, w: &GpuWeight<R>, xp: u64, rows: usize, op: u64) -> Result<()> {
        let (k, n_out) = (w.cols, w.rows);
        let mut s = self.lock_scratch();
        let wh = if w.ty == GgmlType::F16 {
            self.ptr(&w.data)
        } else {
            let wh = self.ensure(&mut s.w_f16, n_out * k)?;
            let (ty, r, k32, rb) = (
                w.ty as i32,
                u32_arg("matmul", n_out)?,
                u32_arg("matmul", k)?,
                u32_arg("matmul", device_row_bytes(w.ty, k).unwrap_or(0))?,
            );
            if !k.is_multiple_of(32) {
                return Err(shape_err(
                    "matmul",
                    format!("rows of {k} values (multiple of 32 needed)"),
                ));
            }
            let (wp, tiled) = (self.ptr(&w.data), w.tiled as u32);
            let cfg = grid((n_out * k / 32).min(1 << 26), 256);
            launch!(
                self,
                "dequant_f16",
                cfg,
                &ty,
                &wp,
                &r,
                &k32,
                &rb,
                &wh,
                &tiled
            )?;
            wh
        };
        let xh = self.ensure(&mut s.x_f16, rows * k)?;
        let n = (rows * k) as u64;
        // Products of one input in a row (q/k/v, the recurrent projections) convert it once.
        if s.x_f16_of != Some(self.stamp(xp, rows * k)) {
            launch!(
                self,
                "f32_to_f16",
                grid((rows * k).min(1 << 26), 256),
                &xp,
                &n,
                &xh
            )?;
        }
        let gemm = GemmF16 {
            trans_a: true,
            m: n_out,
            n: rows,
            k,
            alpha: 1.0,
            a: wh,
            lda: k,
            b: xh,
            ldb: k,
            c: op,
            ldc: n_out,
            batch: 1,
            strides: None,
        };
        // SAFETY: W is n_out rows of k f16 (column-major k × n_out, transposed), x is rows × k f16
        // (column-major k × rows), out is rows × n_out f32 (column-major n_out × rows); all three
        // buffers hold at least that much (checked by the caller and by `ensure`).
        self.timed("cublas_gemm_ex", || unsafe { self.rt.gemm_f16(&gemm) })?;
        s.x_f16_of = Some(self.stamp(xp, rows * k));
        Ok(())
    }

    /// (free, total) device memory in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.rt.memory_info()
    }

    fn ptr<T: DevValue>(&self, s: &DevBuf<R, T>) -> u64 {
        s.addr(&self.rt)
    }

    fn alloc_zeros<T: DevValue>(&self, n: usize) -> Result<DevBuf<R, T>> {
        DevBuf::zeros(&self.rt, n)
    }

    fn upload<T: DevValue>(&self, data: &[T]) -> Result<DevBuf<R, T>> {
        DevBuf::upload(&self.rt, data)
    }

    /// The RoPE kernels' position and angle arguments for `positions` (one per row).
    fn rope_args(&self, positions: &[u32], p: &RopeParams) -> Result<RopeArgs<R>> {
        // Consecutive positions (every prefill chunk and decode step) need no upload.
        let contiguous = positions.windows(2).all(|w| w[1] == w[0].wrapping_add(1));
        let ids = if contiguous {
            None
        } else {
            Some(self.upload(positions)?)
        };
        Ok(RopeArgs {
            positions: ids.as_ref().map_or(0u64, |b| self.ptr(b)),
            _upload: ids,
            theta_scale: p.theta_base.powf(-2.0 / p.n_rot as f32),
            neox: i32::from(p.style == RopeStyle::Neox),
        })
    }

    /// The delta rule's gate arguments for `rows` rows, checked: alpha and beta hold rows × n values,
    /// n the length of the dense `dt_bias` and `a`.
    fn gate_args(
        &self,
        alpha: &GpuTensor<R>,
        beta: &GpuTensor<R>,
        dt_bias: &GpuWeight<R>,
        a: &GpuWeight<R>,
        rows: usize,
    ) -> Result<GateArgs> {
        let op = "delta_net_gates";
        let n = dt_bias.cols;
        let (dtp, ap) = (self.dense(dt_bias, op, n)?, self.dense(a, op, n)?);
        check_len(op, "alpha", alpha.len, rows * n)?;
        check_len(op, "beta", beta.len, rows * n)?;
        Ok(GateArgs {
            alpha: self.ptr(&alpha.buf),
            beta: self.ptr(&beta.buf),
            dt_bias: dtp,
            a: ap,
            n: u32_arg(op, n)?,
        })
    }

    /// A scratch buffer of at least `n` elements (grown by doubling).
    fn ensure<T: DevValue>(&self, slot: &mut Option<DevBuf<R, T>>, n: usize) -> Result<u64> {
        if slot.as_ref().is_none_or(|s| s.len() < n) {
            *slot = None;
            *slot = Some(self.alloc_zeros::<T>(n.next_power_of_two())?);
        }
        Ok(self.ptr(slot.as_ref().expect("allocated above")))
    }

    fn dense(&self, w: &GpuWeight<R>, op: &'static str, dim: usize) -> Result<u64> {
        let d = w
            .dense
            .as_ref()
            .ok_or_else(|| shape_err(op, "weight is not a vector"))?;
        check_len(op, "weight", d.len(), dim)?;
        Ok(self.ptr(d))
    }

    fn lock_scratch(&self) -> std::sync::MutexGuard<'_, Scratch<R>> {
        self.scratch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a scratch buffer derived from the `n` values at `ptr` is tagged with: it stays valid while
    /// no other kernel has been launched since (see [`GpuBackend::launches`]).
    fn stamp(&self, ptr: u64, n: usize) -> (u64, usize, u64) {
        let now = self.launches.load(std::sync::atomic::Ordering::Relaxed);
        (ptr, n, now)
    }
}

impl<R: Runtime> GpuBackend<R> {
    /// The address of a snapshot buffer checked to hold `need` values, or null (no snapshots).
    fn snapshot_ptr(
        &self,
        op: &'static str,
        snapshots: Option<&mut GpuTensor<R>>,
        need: usize,
    ) -> Result<u64> {
        match snapshots {
            Some(t) => {
                check_len(op, "snapshots", t.len, need)?;
                Ok(self.ptr(&t.buf))
            }
            None => Ok(0),
        }
    }

    /// The delta rule over `rows` tokens ([q, k, v, g, beta] as the trait takes them), optionally keeping
    /// the state after every token (speculative rollback).
    fn delta_rule(
        &self,
        [q, k, v, g, beta]: [&GpuTensor<R>; 5],
        state: &mut GpuTensor<R>,
        rows: usize,
        p: DeltaNetParams,
        out: &mut GpuTensor<R>,
        snapshots: Option<&mut GpuTensor<R>>,
    ) -> Result<()> {
        let op = "gated_delta_net";
        if p.n_k_heads == 0 || !p.n_v_heads.is_multiple_of(p.n_k_heads) {
            return Err(shape_err(
                op,
                format!("{} V-heads over {} K-heads", p.n_v_heads, p.n_k_heads),
            ));
        }
        if !p.head_k_dim.is_multiple_of(32) || p.head_k_dim > 256 {
            return Err(shape_err(
                op,
                format!("head_k_dim {} (a multiple of 32 up to 256)", p.head_k_dim),
            ));
        }
        let (qk_w, v_w) = (p.n_k_heads * p.head_k_dim, p.n_v_heads * p.head_v_dim);
        check_len(op, "q", q.len, rows * qk_w)?;
        check_len(op, "k", k.len, rows * qk_w)?;
        check_len(op, "v", v.len, rows * v_w)?;
        check_len(op, "g", g.len, rows * p.n_v_heads)?;
        check_len(op, "beta", beta.len, rows * p.n_v_heads)?;
        check_len(op, "output", out.len, rows * v_w)?;
        let need = p.n_v_heads * p.head_v_dim * p.head_k_dim;
        if state.len != need {
            return Err(shape_err(
                op,
                format!("state of {} values, expected {need}", state.len),
            ));
        }
        if rows == 0 {
            return Ok(());
        }
        let ptrs = [
            self.ptr(&q.buf),
            self.ptr(&k.buf),
            self.ptr(&v.buf),
            self.ptr(&g.buf),
            self.ptr(&beta.buf),
            self.ptr(&state.buf),
        ];
        let (r, nk, nv, dk, dv) = (
            u32_arg(op, rows)?,
            u32_arg(op, p.n_k_heads)?,
            u32_arg(op, p.n_v_heads)?,
            u32_arg(op, p.head_k_dim)?,
            u32_arg(op, p.head_v_dim)?,
        );
        let snap = self.snapshot_ptr(op, snapshots, rows * need)?;
        let op_ = self.ptr(&out.buf);
        let cfg = grid(p.n_v_heads * p.head_v_dim * 32, THREADS);
        launch!(
            self,
            "gated_delta_net",
            cfg,
            &ptrs[0],
            &ptrs[1],
            &ptrs[2],
            &ptrs[3],
            &ptrs[4],
            &ptrs[5],
            &r,
            &nk,
            &nv,
            &dk,
            &dv,
            &p.scale,
            &op_,
            &snap
        )
    }
}

/// A weight's type is one CUDA computes with and its bytes are exactly `rows` rows of `cols` values.
fn check_source(src: &WeightSource) -> Result<()> {
    let supported = matches!(src.ty, GgmlType::F32 | GgmlType::F16) || mmv_kernel(src.ty).is_some();
    if !supported {
        return Err(shape_err(
            "load_weight",
            format!("{}: type {} is not supported on CUDA yet", src.name, src.ty),
        ));
    }
    let row_bytes = src.ty.bytes_for(src.cols).ok_or_else(|| {
        shape_err(
            "load_weight",
            format!("{}: row of {} is not block-aligned", src.name, src.cols),
        )
    })?;
    let need = src
        .rows
        .checked_mul(row_bytes)
        .ok_or_else(|| shape_err("load_weight", "size overflows"))?;
    let have = src.bytes.as_slice().len();
    if have != need {
        return Err(shape_err(
            "load_weight",
            format!("{}: {have} bytes, expected {need}", src.name),
        ));
    }
    Ok(())
}

/// Batches up to this many rows (a decode step, a speculative verify pass of up to 16 drafts + 1) split
/// attention the same way.
const INVARIANT_ROWS: usize = 17;

/// Keys per attention split for a cache of `n_ctx` positions: 16 for small caches (many blocks for short
/// contexts), growing so that even a full cache needs at most 1024 splits (bounded merge scratch).
fn attention_chunk(n_ctx: usize) -> usize {
    n_ctx.div_ceil(1024).next_power_of_two().clamp(16, 2048)
}

/// The fewest keys of an `attn_tile_*` split (`ATQ_MIN_CHUNK`: a tile of 32 keys for each of 4 warps).
const TILED_MIN_CHUNK: usize = 128;
/// The query heads an `attn_tile2_*` block takes at most (its `GM` in kernels/gpu/attention.cu).
const TILE2_HEADS: usize = 2;

/// What [`GpuBackend::rope_args`] gives the RoPE kernels.
struct RopeArgs<R: Runtime> {
    /// The positions' device copy when they are not consecutive (held only to stay alive until the
    /// launch is enqueued), and its address (0: consecutive from the first position).
    _upload: Option<DevBuf<R, u32>>,
    positions: u64,
    /// The angle's factor from one rotated pair to the next.
    theta_scale: f32,
    neox: i32,
}

/// The delta rule's gate arguments ([`GpuBackend::gate_args`]); all zero: no gates.
#[derive(Default)]
struct GateArgs {
    alpha: u64,
    beta: u64,
    dt_bias: u64,
    a: u64,
    /// Gates a row (one per V-head).
    n: u32,
}

/// The longest head `qk_norm_rope` holds (`QK_MAX_HEAD_DIM` in kernels/gpu/norm.cu).
const QK_MAX_HEAD_DIM: usize = 512;

/// Threads of an `rms_norm` block for rows of `dim` values: about four values a thread, so a single row
/// (the decode step) is spread over up to 1024 threads instead of one block's 256 walking it serially.
/// A function of `dim` alone, never of the row count, so a batch rounds exactly like single rows.
fn norm_threads(dim: usize) -> u32 {
    // Multiples of 64: whole warps on NVIDIA and on AMD's wave64 parts alike.
    (dim.div_ceil(4).next_multiple_of(64)).clamp(64, 1024) as u32
}

fn kv_kernel_name(ty: KvType) -> &'static str {
    match ty {
        KvType::F32 => "f32",
        KvType::F16 => "f16",
        KvType::Q8_0 => "q8_0",
        KvType::Q4_0 => "q4_0",
    }
}

impl<R: Runtime> Drop for GpuBackend<R> {
    fn drop(&mut self) {
        let Some(p) = &self.profile else { return };
        let m = p.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = m.iter().collect();
        v.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let total: f64 = v.iter().map(|e| e.1 .1).sum();
        eprintln!(
            "kernel profile (each launch timed alone): {:.1} ms in all",
            total * 1e3
        );
        for (name, (n, t)) in v.iter().take(40) {
            eprintln!(
                "{:>9.2} ms {:>5.1}% {:>8} × {:>8.1} µs  {name}",
                t * 1e3,
                100.0 * t / total,
                n,
                t * 1e6 / *n as f64
            );
        }
    }
}

impl<R: Runtime> Backend for GpuBackend<R> {
    type Tensor = GpuTensor<R>;
    type Weight = GpuWeight<R>;
    type KvCache = GpuKvCache<R>;

    fn name(&self) -> String {
        format!("{}:{} ({})", R::VENDOR, self.ordinal, self.rt.device_name())
    }

    fn load_weight(&self, src: WeightSource) -> Result<GpuWeight<R>> {
        let tiled = self.tiles && tiles::tileable(src.ty, src.rows);
        self.load_weight_as(src, tiled)
    }

    fn load_stacked(&self, parts: Vec<WeightSource>) -> Result<Option<GpuWeight<R>>> {
        let Some(first) = parts.first() else {
            return Err(shape_err("load_stacked", "no parts"));
        };
        let (ty, cols) = (first.ty, first.cols);
        let mut rows = 0usize;
        for p in &parts {
            check_source(p)?;
            if (p.ty, p.cols) != (ty, cols) {
                return Err(shape_err(
                    "load_stacked",
                    format!(
                        "{} is {} × {} values, {} is {ty} × {cols}",
                        p.name, p.ty, p.cols, first.name
                    ),
                ));
            }
            rows = rows
                .checked_add(p.rows)
                .ok_or_else(|| shape_err("load_stacked", "size overflows"))?;
        }
        // Rows are stored one after another, so the parts' bytes concatenated are the stacked matrix
        // (tiled as a whole: tiles never cross a 16-row group).
        let slices: Vec<&[u8]> = parts.iter().map(|p| p.bytes.as_slice()).collect();
        let tiled = self.tiles && tiles::tileable(ty, rows);
        let data = if tiled {
            self.upload_tiled(ty, &slices, rows)?
        } else if ty == GgmlType::Q6_K {
            self.upload_q6_k(&slices, cols)?
        } else {
            let total = slices.iter().map(|b| b.len()).sum();
            let mut data = self.alloc_zeros::<u8>(total)?;
            let mut at = 0;
            for b in &slices {
                data.write(&self.rt, at, b)?;
                at += b.len();
            }
            data
        };
        Ok(Some(GpuWeight {
            ty,
            rows,
            cols,
            data,
            dense: None,
            tiled,
        }))
    }

    fn weight_bytes(&self, w: &GpuWeight<R>) -> usize {
        w.data.len() + w.dense.as_ref().map_or(0, |d| d.len() * 4)
    }

    fn tensor(&self, len: usize) -> Result<GpuTensor<R>> {
        Ok(GpuTensor {
            buf: self.alloc_zeros::<f32>(len)?,
            len,
        })
    }

    fn tensor_len(&self, t: &GpuTensor<R>) -> usize {
        t.len
    }

    fn write(&self, t: &mut GpuTensor<R>, offset: usize, data: &[f32]) -> Result<()> {
        check_len("write", "tensor", t.len, offset.saturating_add(data.len()))?;
        if data.is_empty() {
            return Ok(());
        }
        self.launches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        t.buf.write(&self.rt, offset, data)
    }

    fn read(&self, t: &GpuTensor<R>, offset: usize, out: &mut [f32]) -> Result<()> {
        check_len("read", "tensor", t.len, offset.saturating_add(out.len()))?;
        if out.is_empty() {
            return Ok(());
        }
        t.buf.read(&self.rt, offset, out)?;
        self.synchronize()
    }

    fn copy(
        &self,
        src: &GpuTensor<R>,
        src_off: usize,
        dst: &mut GpuTensor<R>,
        dst_off: usize,
        n: usize,
    ) -> Result<()> {
        check_copy("copy", (src.len, src_off), (dst.len, dst_off), n)?;
        if n == 0 {
            return Ok(());
        }
        self.launches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        dst.buf.copy_from(&self.rt, dst_off, &src.buf, src_off, n)
    }

    fn copy_many(&self, copies: &mut [TensorCopy<'_, GpuTensor<R>>]) -> Result<()> {
        let mut spans = Vec::with_capacity(3 * copies.len());
        for c in copies.iter() {
            check_copy(
                "copy_many",
                (c.src.len, c.src_off),
                (c.dst.len, c.dst_off),
                c.n,
            )?;
            if c.n > 0 {
                let value = size_of::<f32>() as u64;
                spans.extend_from_slice(&[
                    self.ptr(&c.src.buf) + c.src_off as u64 * value,
                    self.ptr(&c.dst.buf) + c.dst_off as u64 * value,
                    c.n as u64,
                ]);
            }
        }
        let largest = copies.iter().map(|c| c.n).max().unwrap_or(0);
        // A launch's copies are its grid's y blocks (at most 65,535).
        for chunk in spans.chunks(3 * 4096) {
            let table = {
                let mut s = self.lock_scratch();
                self.ensure(&mut s.copy_spans, chunk.len())?;
                let buf = s.copy_spans.as_mut().expect("allocated above");
                buf.write(&self.rt, 0, chunk)?;
                self.ptr(buf)
            };
            let n_spans = (chunk.len() / 3) as u32;
            // Enough blocks of 256 threads for a float4 each, up to 64 a copy (they stride beyond).
            let cfg = LaunchConfig {
                grid_dim: (largest.div_ceil(4 * 256).clamp(1, 64) as u32, n_spans, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(self, "copy_spans", cfg, &table, &n_spans)?;
        }
        Ok(())
    }

    fn embed(&self, table: &GpuWeight<R>, tokens: &[u32], out: &mut GpuTensor<R>) -> Result<()> {
        let dim = table.cols;
        check_len("embed", "output", out.len, tokens.len() * dim)?;
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= table.rows) {
            return Err(shape_err(
                "embed",
                format!("token id {t} is outside the {}-row table", table.rows),
            ));
        }
        if tokens.is_empty() {
            return Ok(());
        }
        let ids = self.upload(tokens)?;
        let row_bytes = u32_arg("embed", device_row_bytes(table.ty, dim).unwrap_or(0))?;
        let (ty, n_rows, n_tok, dim32) = (
            table.ty as i32,
            u32_arg("embed", table.rows)?,
            u32_arg("embed", tokens.len())?,
            u32_arg("embed", dim)?,
        );
        let cfg = LaunchConfig {
            grid_dim: (dim.div_ceil(256).min(64) as u32, n_tok, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (tp, ip, op) = (self.ptr(&table.data), self.ptr(&ids), self.ptr(&out.buf));
        let tiled = table.tiled as u32;
        launch!(
            self,
            "embed_rows",
            cfg,
            &ty,
            &tp,
            &row_bytes,
            &n_rows,
            &ip,
            &n_tok,
            &dim32,
            &op,
            &tiled
        )
    }

    fn matmul(
        &self,
        w: &GpuWeight<R>,
        x: &GpuTensor<R>,
        rows: usize,
        out: &mut GpuTensor<R>,
    ) -> Result<()> {
        self.product(w, x, rows, out)
    }

    fn matmul_group(
        &self,
        parts: &mut [(&GpuWeight<R>, &mut GpuTensor<R>)],
        x: &GpuTensor<R>,
        rows: usize,
    ) -> Result<()> {
        self.product_group(parts, x, rows)
    }

    fn rms_norm(
        &self,
        x: &GpuTensor<R>,
        weight: Option<&GpuWeight<R>>,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut GpuTensor<R>,
    ) -> Result<()> {
        check_len("rms_norm", "input", x.len, rows * dim)?;
        check_len("rms_norm", "output", out.len, rows * dim)?;
        if rows == 0 {
            return Ok(());
        }
        let args = NormArgs {
            x: self.ptr(&x.buf),
            y: 0,
            sum: 0,
            weight: self.norm_weight("rms_norm", weight, dim)?,
            out: self.ptr(&out.buf),
        };
        self.launch_norm("rms_norm", args, rows, dim, eps)
    }

    fn add_rms_norm(
        &self,
        x: &GpuTensor<R>,
        y: &GpuTensor<R>,
        weight: Option<&GpuWeight<R>>,
        rows: usize,
        dim: usize,
        eps: f32,
        sum: &mut GpuTensor<R>,
        out: &mut GpuTensor<R>,
    ) -> Result<()> {
        let op = "add_rms_norm";
        check_len(op, "input", x.len, rows * dim)?;
        check_len(op, "residual", y.len, rows * dim)?;
        check_len(op, "sum", sum.len, rows * dim)?;
        check_len(op, "output", out.len, rows * dim)?;
        if rows == 0 {
            return Ok(());
        }
        let args = NormArgs {
            x: self.ptr(&x.buf),
            y: self.ptr(&y.buf),
            sum: self.ptr(&sum.buf),
            weight: self.norm_weight(op, weight, dim)?,
            out: self.ptr(&out.buf),
        };
        self.launch_norm(op, args, rows, dim, eps)
    }

    fn add_bias(
        &self,
        x: &mut GpuTensor<R>,
        bias: &GpuWeight<R>,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        check_len("add_bias", "x", x.len, rows * dim)?;
        let bp = self.dense(bias, "add_bias", dim)?;
        let (xp, r, d) = (
            self.ptr(&x.buf),
            u32_arg("add_bias", rows)?,
            u32_arg("add_bias", dim)?,
        );
        launch!(self, "add_bias", grid(rows * dim, 256), &xp, &bp, &r, &d)
    }

    fn add_assign(&self, x: &mut GpuTensor<R>, y: &GpuTensor<R>, n: usize) -> Result<()> {
        check_len("add_assign", "x", x.len, n)?;
        check_len("add_assign", "y", y.len, n)?;
        let (xp, yp, n32) = (
            self.ptr(&x.buf),
            self.ptr(&y.buf),
            u32_arg("add_assign", n)?,
        );
        launch!(self, "add_assign", grid(n, 256), &xp, &yp, &n32)
    }

    fn scale(&self, x: &mut GpuTensor<R>, s: f32, n: usize) -> Result<()> {
        check_len("scale", "x", x.len, n)?;
        let (xp, n32) = (self.ptr(&x.buf), u32_arg("scale", n)?);
        launch!(self, "scale_inplace", grid(n, 256), &xp, &s, &n32)
    }

    fn gated_activation(
        &self,
        act: Activation,
        gate: &GpuTensor<R>,
        up: &GpuTensor<R>,
        n: usize,
        out: &mut GpuTensor<R>,
    ) -> Result<()> {
        check_len("gated_activation", "gate", gate.len, n)?;
        check_len("gated_activation", "up", up.len, n)?;
        check_len("gated_activation", "output", out.len, n)?;
        let name = match act {
            Activation::SwiGlu => "swiglu",
            Activation::GeGlu => "geglu",
        };
        let (gp, upp, op, n32) = (
            self.ptr(&gate.buf),
            self.ptr(&up.buf),
            self.ptr(&out.buf),
            u32_arg("gated_activation", n)?,
        );
        launch!(self, name, grid(n, 256), &gp, &upp, &n32, &op)
    }

    fn gated_activation_stacked(
        &self,
        act: Activation,
        x: &GpuTensor<R>,
        rows: usize,
        n: usize,
        out: &mut GpuTensor<R>,
    ) -> Result<()> {
        let total = rows
            .checked_mul(n)
            .ok_or_else(|| shape_err("gated_activation_stacked", "size overflows"))?;
        check_len("gated_activation_stacked", "input", x.len, 2 * total)?;
        check_len("gated_activation_stacked", "output", out.len, total)?;
        if total == 0 {
            return Ok(());
        }
        let name = match act {
            Activation::SwiGlu => "swiglu_stacked",
            Activation::GeGlu => "geglu_stacked",
        };
        let (xp, op) = (self.ptr(&x.buf), self.ptr(&out.buf));
        let (r32, n32) = (
            u32_arg("gated_activation_stacked", rows)?,
            u32_arg("gated_activation_stacked", n)?,
        );
        self.producing(op, rows, n, |yq, yd| {
            launch!(self, name, grid(total, 256), &xp, &r32, &n32, &op, &yq, &yd)
        })
    }

    fn rope(&self, x: &mut GpuTensor<R>, positions: &[u32], p: RopeParams) -> Result<()> {
        let width = p.n_heads * p.head_dim;
        check_len("rope", "input", x.len, positions.len() * width)?;
        if p.n_rot > p.head_dim || !p.n_rot.is_multiple_of(2) {
            return Err(shape_err(
                "rope",
                format!("n_rot {} with head_dim {}", p.n_rot, p.head_dim),
            ));
        }
        if positions.is_empty() || p.n_rot == 0 {
            return Ok(());
        }
        let ra = self.rope_args(positions, &p)?;
        let (xp, pos0, rows, nh, hd, nr) = (
            self.ptr(&x.buf),
            positions[0],
            u32_arg("rope", positions.len())?,
            u32_arg("rope", p.n_heads)?,
            u32_arg("rope", p.head_dim)?,
            u32_arg("rope", p.n_rot)?,
        );
        let n = positions.len() * p.n_heads * p.n_rot / 2;
        launch!(
            self,
            "rope",
            grid(n, 256),
            &xp,
            &ra.positions,
            &pos0,
            &rows,
            &nh,
            &hd,
            &nr,
            &ra.theta_scale,
            &p.freq_scale,
            &ra.neox
        )?;
        drop(ra);
        Ok(())
    }

    fn kv_cache(
        &self,
        n_ctx: usize,
        n_kv_heads: usize,
        head_dim: usize,
        ty: KvType,
    ) -> Result<GpuKvCache<R>> {
        let (width, row_bytes, bytes) = kv_layout(n_ctx, n_kv_heads, head_dim, ty)?;
        Ok(GpuKvCache {
            ty,
            n_ctx,
            width,
            row_bytes,
            k: self.alloc_zeros::<u8>(bytes)?,
            v: self.alloc_zeros::<u8>(bytes)?,
        })
    }

    fn kv_cache_bytes(&self, kv: &GpuKvCache<R>) -> usize {
        kv.k.len() + kv.v.len()
    }

    fn attention(
        &self,
        q: &GpuTensor<R>,
        k: &GpuTensor<R>,
        v: &GpuTensor<R>,
        kv: &mut GpuKvCache<R>,
        start: usize,
        rows: usize,
        p: AttentionParams,
        out: &mut GpuTensor<R>,
    ) -> Result<()> {
        let op = "attention";
        let d = p.head_dim;
        let quantized = matches!(kv.ty, KvType::Q8_0 | KvType::Q4_0);
        if !matches!(d, 16 | 32 | 64 | 128 | 256) || (quantized && d < 32) {
            return Err(shape_err(
                op,
                format!("head_dim {d} with a {:?} cache (CUDA supports 32, 64, 128, 256; 16 with f16/f32)", kv.ty),
            ));
        }
        if p.n_kv_heads == 0
            || !p.n_heads.is_multiple_of(p.n_kv_heads)
            || p.n_heads / p.n_kv_heads > 8
        {
            return Err(shape_err(
                op,
                format!("{} heads over {} KV heads", p.n_heads, p.n_kv_heads),
            ));
        }
        if kv.width != p.n_kv_heads * d {
            return Err(shape_err(op, "cache shape differs from the parameters"));
        }
        if !kv.width.is_multiple_of(32) {
            // kv_store writes whole groups of 32 values a thread.
            return Err(shape_err(
                op,
                format!("{} values per position (a multiple of 32 needed)", kv.width),
            ));
        }
        if start + rows > kv.n_ctx {
            return Err(shape_err(
                op,
                format!(
                    "positions up to {} in a {}-position cache",
                    start + rows,
                    kv.n_ctx
                ),
            ));
        }
        check_len(op, "q", q.len, rows * p.n_heads * d)?;
        check_len(op, "k", k.len, rows * kv.width)?;
        check_len(op, "v", v.len, rows * kv.width)?;
        check_len(op, "output", out.len, rows * p.n_heads * d)?;
        if rows == 0 {
            return Ok(());
        }
        let kt = kv.ty.ggml() as i32;
        let (rows32, width32, rb32, start32) = (
            u32_arg(op, rows)?,
            u32_arg(op, kv.width)?,
            u32_arg(op, kv.row_bytes)?,
            u32_arg(op, start)?,
        );
        let (kc, vc) = (self.ptr(&kv.k), self.ptr(&kv.v));
        let blocks = rows * kv.width / 32;
        let (kp, vp) = (self.ptr(&k.buf), self.ptr(&v.buf));
        launch!(
            self,
            "kv_store",
            grid(blocks, 128),
            &kt,
            &kp,
            &rows32,
            &width32,
            &kc,
            &rb32,
            &start32
        )?;
        launch!(
            self,
            "kv_store",
            grid(blocks, 128),
            &kt,
            &vp,
            &rows32,
            &width32,
            &vc,
            &rb32,
            &start32
        )?;

        if self.attention_by_blas(rows, &p) {
            let (qp, op_) = (self.ptr(&q.buf), self.ptr(&out.buf));
            return self.attention_blas(qp, kv, start, rows, &p, op_);
        }
        let kv_len = start + rows;
        // attn_tile_*: a key per lane, tiles of 32 keys per warp; needs whole 4-byte aligned heads.
        let tiled = self.attn_tile && matches!(kv.ty, KvType::Q8_0 | KvType::Q4_0) && d >= 64;
        // (chunk, row splits, grid splits): keys per split (0: each row sizes its own splits, at most
        // `row splits` of them: attn_tile's decode mode) and the splits the grid covers.
        let (chunk, row_splits, n_splits) = if rows <= INVARIANT_ROWS && tiled {
            // Each row splits its keys by its own position (attn_tile's `tiled_chunk`), so a row sums
            // the same keys in the same order alone or in a verify batch; the grid covers the batch's
            // last row, and the rows before it leave their extra splits empty. About three blocks per SM.
            let target = (3 * self.sm_count).div_ceil(p.n_kv_heads);
            (0, target, target.min(kv_len.div_ceil(TILED_MIN_CHUNK)))
        } else if rows <= INVARIANT_ROWS {
            // Decode and verify batches: splits of a fixed size that depends only on the cache's
            // capacity, never on the batch or the position. Each row then sums the same keys in the same
            // order whether it runs alone or in a verify batch, so speculative decoding gives exactly the
            // tokens plain decoding gives. (Splits past a row's last key are empty: exact zeros.)
            let chunk = attention_chunk(kv.n_ctx);
            (chunk, 0, kv_len.div_ceil(chunk))
        } else {
            // Prefill: enough splits to give every SM work, at most 2048 keys per block.
            let by_parallelism = (2 * self.sm_count).div_ceil(rows * p.n_kv_heads);
            let n_splits = by_parallelism
                .max(kv_len.div_ceil(2048))
                .clamp(1, kv_len.div_ceil(16).max(1));
            let chunk = kv_len.div_ceil(n_splits);
            (chunk, 0, kv_len.div_ceil(chunk))
        };
        // When the splits leave SMs idle (short contexts: at depth 1 a block per kv head), a kv head's
        // query heads are dealt TILE2_HEADS to a block (`attn_tile2_*`), `groups` blocks per kv head;
        // each block reads its kv head's keys and values again, from L2 at such depths. A head's
        // arithmetic is the same in both kernels, so a row's result does not depend on the grouping.
        let g_all = p.n_heads / p.n_kv_heads.max(1);
        let blocks = p.n_kv_heads * n_splits * rows;
        let groups = if tiled && self.attn_groups && g_all > TILE2_HEADS && blocks < self.sm_count {
            g_all.div_ceil(TILE2_HEADS)
        } else {
            1
        };
        let parts = rows * p.n_heads * n_splits;
        let mut s = self.lock_scratch();
        let accp = self.ensure(&mut s.att_acc, parts * d)?;
        let mlp = self.ensure(&mut s.att_ml, parts * 2)?;
        let cfg = LaunchConfig {
            grid_dim: (u32_arg(op, p.n_kv_heads * groups)?, n_splits as u32, rows32),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (qp, nh, nkv, win, chunk32) = (
            self.ptr(&q.buf),
            u32_arg(op, p.n_heads)?,
            u32_arg(op, p.n_kv_heads)?,
            u32_arg(op, p.window.unwrap_or(0))?,
            u32_arg(op, chunk)?,
        );
        let softcap = p.softcap.unwrap_or(0.0);
        let kernel = match (tiled, groups > 1) {
            (true, true) => "attn_tile2",
            (true, false) => "attn_tile",
            (false, _) => "attn_split",
        };
        let name = format!("{kernel}_{}_{d}", kv_kernel_name(kv.ty));
        let splits32 = u32_arg(op, row_splits)?;
        launch!(
            self, &name, cfg, &qp, &kc, &vc, &rb32, &nh, &nkv, &start32, &win, &p.scale, &softcap,
            &chunk32, &splits32, &accp, &mlp
        )?;
        let merge = LaunchConfig {
            grid_dim: (u32_arg(op, rows * p.n_heads)?, d.div_ceil(32) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (ns, d32, op_) = (n_splits as u32, d as u32, self.ptr(&out.buf));
        launch!(self, "attn_merge", merge, &accp, &mlp, &ns, &d32, &op_)
    }

    fn copy_rows(
        &self,
        src: &GpuTensor<R>,
        src_off: usize,
        src_stride: usize,
        dst: &mut GpuTensor<R>,
        dst_off: usize,
        dst_stride: usize,
        width: usize,
        rows: usize,
    ) -> Result<()> {
        if rows == 0 || width == 0 {
            return Ok(());
        }
        let last = |off: usize, stride: usize| off + (rows - 1) * stride + width;
        check_len("copy_rows", "source", src.len, last(src_off, src_stride))?;
        check_len(
            "copy_rows",
            "destination",
            dst.len,
            last(dst_off, dst_stride),
        )?;
        let (sp, dp) = (self.ptr(&src.buf), self.ptr(&dst.buf));
        let (so, ss, do_, ds) = (
            src_off as u64,
            src_stride as u64,
            dst_off as u64,
            dst_stride as u64,
        );
        let (w, r) = (u32_arg("copy_rows", width)?, u32_arg("copy_rows", rows)?);
        launch!(
            self,
            "copy_rows",
            grid(rows * width, 256),
            &sp,
            &so,
            &ss,
            &dp,
            &do_,
            &ds,
            &w,
            &r
        )
    }

    fn sigmoid_mul(
        &self,
        x: &mut GpuTensor<R>,
        gate: &GpuTensor<R>,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        let n = rows
            .checked_mul(dim)
            .ok_or_else(|| shape_err("sigmoid_mul", "size overflows"))?;
        check_len("sigmoid_mul", "x", x.len, n)?;
        check_len("sigmoid_mul", "gate", gate.len, n)?;
        let (xp, gp, n32) = (
            self.ptr(&x.buf),
            self.ptr(&gate.buf),
            u32_arg("sigmoid_mul", n)?,
        );
        self.producing(xp, rows, dim, |yq, yd| {
            launch!(self, "sigmoid_mul", grid(n, 256), &xp, &gp, &n32, &yq, &yd)
        })
    }

    fn rms_norm_gated(
        &self,
        x: &GpuTensor<R>,
        weight: &GpuWeight<R>,
        z: &GpuTensor<R>,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut GpuTensor<R>,
    ) -> Result<()> {
        let op = "rms_norm_gated";
        check_len(op, "input", x.len, rows * dim)?;
        check_len(op, "gate", z.len, rows * dim)?;
        check_len(op, "output", out.len, rows * dim)?;
        if rows == 0 {
            return Ok(());
        }
        let wp = self.dense(weight, op, dim)?;
        let cfg = LaunchConfig {
            grid_dim: (u32_arg(op, rows)?, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (xp, zp, op_, d) = (
            self.ptr(&x.buf),
            self.ptr(&z.buf),
            self.ptr(&out.buf),
            u32_arg(op, dim)?,
        );
        self.producing(op_, rows, dim, |yq, yd| {
            launch!(
                self,
                "rms_norm_gated",
                cfg,
                &xp,
                &wp,
                &zp,
                &d,
                &eps,
                &op_,
                &yq,
                &yd
            )
        })
    }

    fn split_qkv_l2(
        &self,
        qkv: &GpuTensor<R>,
        rows: usize,
        split: QkvSplit<'_, Self>,
    ) -> Result<()> {
        let op = "split_qkv_l2";
        let (n_k_heads, head_k, v_dim) = (split.n_k_heads, split.head_k, split.v_dim);
        let [q, k, v] = &split.out;
        let cd = split_widths(op, (n_k_heads, head_k, v_dim), rows, [&**q, &**k, &**v])?.1;
        check_len(op, "input", qkv.len, rows * cd)?;
        if rows == 0 || cd == 0 {
            return Ok(());
        }
        if !self.fuse {
            return split_qkv_l2_by_parts(self, qkv, rows, split);
        }
        let QkvSplit {
            eps,
            out: [q, k, v],
            gates,
            ..
        } = split;
        // The gates' block (the last) when given.
        let has_gates = gates.is_some();
        let g = match gates {
            Some(g) => self.gate_args(g.alpha, g.beta, g.dt_bias, g.a, rows)?,
            None => GateArgs::default(),
        };
        // 256 threads: the block size of l2_norm, so the sums round the same.
        let blocks = 2 * n_k_heads + v_dim.div_ceil(256) + usize::from(has_gates);
        let cfg = LaunchConfig {
            grid_dim: (u32_arg(op, blocks)?, u32_arg(op, rows)?, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (nh, hk, vd) = (
            u32_arg(op, n_k_heads)?,
            u32_arg(op, head_k)?,
            u32_arg(op, v_dim)?,
        );
        let (xp, qp, kp, vp) = (
            self.ptr(&qkv.buf),
            self.ptr(&q.buf),
            self.ptr(&k.buf),
            self.ptr(&v.buf),
        );
        launch!(
            self, op, cfg, &xp, &nh, &hk, &vd, &eps, &qp, &kp, &vp, &g.alpha, &g.beta, &g.dt_bias,
            &g.a, &g.n
        )
    }

    fn conv_split_qkv_l2(
        &self,
        x: &GpuTensor<R>,
        weight: &GpuWeight<R>,
        state: &mut GpuTensor<R>,
        rows: usize,
        snapshots: Option<&mut GpuTensor<R>>,
        conv_out: &mut GpuTensor<R>,
        split: QkvSplit<'_, Self>,
    ) -> Result<()> {
        self.conv_split(x, weight, state, rows, snapshots, conv_out, split)
    }

    fn gated_qk_norm_rope(
        &self,
        qg: &GpuTensor<R>,
        k: &GpuTensor<R>,
        norms: [&GpuWeight<R>; 2],
        n_kv_heads: usize,
        eps: f32,
        positions: &[u32],
        rope: RopeParams,
        [q_out, gate_out, k_out]: [&mut GpuTensor<R>; 3],
    ) -> Result<()> {
        let op = "gated_qk_norm_rope";
        let (n, hd, nh) = (positions.len(), rope.head_dim, rope.n_heads);
        if !self.fuse || hd > QK_MAX_HEAD_DIM || rope.n_rot > hd || !rope.n_rot.is_multiple_of(2) {
            // (An odd or oversized rotation gets its error from `rope`.)
            return gated_qk_norm_rope_by_parts(
                self,
                qg,
                k,
                norms,
                n_kv_heads,
                eps,
                positions,
                rope,
                [q_out, gate_out, k_out],
            );
        }
        check_len(op, "q and gate", qg.len, n * nh * 2 * hd)?;
        check_len(op, "k", k.len, n * n_kv_heads * hd)?;
        check_len(op, "q", q_out.len, n * nh * hd)?;
        check_len(op, "gate", gate_out.len, n * nh * hd)?;
        check_len(op, "k out", k_out.len, n * n_kv_heads * hd)?;
        let (qnp, knp) = (self.dense(norms[0], op, hd)?, self.dense(norms[1], op, hd)?);
        if n == 0 {
            return Ok(());
        }
        let ra = self.rope_args(positions, &rope)?;
        let cfg = LaunchConfig {
            grid_dim: (u32_arg(op, nh + n_kv_heads)?, u32_arg(op, n)?, 1),
            block_dim: (norm_threads(hd), 1, 1),
            shared_mem_bytes: 0,
        };
        let (nh32, nkv32, hd32, nr32) = (
            u32_arg(op, nh)?,
            u32_arg(op, n_kv_heads)?,
            u32_arg(op, hd)?,
            u32_arg(op, rope.n_rot)?,
        );
        let (qgp, kp) = (self.ptr(&qg.buf), self.ptr(&k.buf));
        let (qp, gp, kop) = (
            self.ptr(&q_out.buf),
            self.ptr(&gate_out.buf),
            self.ptr(&k_out.buf),
        );
        launch!(
            self,
            "qk_norm_rope",
            cfg,
            &qgp,
            &kp,
            &qnp,
            &knp,
            &nh32,
            &nkv32,
            &hd32,
            &eps,
            &ra.positions,
            &positions[0],
            &nr32,
            &ra.theta_scale,
            &rope.freq_scale,
            &ra.neox,
            &qp,
            &gp,
            &kop
        )?;
        drop(ra);
        Ok(())
    }

    fn l2_norm(&self, x: &mut GpuTensor<R>, rows: usize, dim: usize, eps: f32) -> Result<()> {
        check_len("l2_norm", "x", x.len, rows * dim)?;
        if rows == 0 || dim == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (u32_arg("l2_norm", rows)?, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (xp, d) = (self.ptr(&x.buf), u32_arg("l2_norm", dim)?);
        launch!(self, "l2_norm", cfg, &xp, &d, &eps)
    }

    fn conv1d_silu(
        &self,
        x: &GpuTensor<R>,
        weight: &GpuWeight<R>,
        state: &mut GpuTensor<R>,
        rows: usize,
        out: &mut GpuTensor<R>,
    ) -> Result<()> {
        self.conv1d(x, weight, state, rows, out, None)
    }

    fn conv1d_silu_snapshots(
        &self,
        x: &GpuTensor<R>,
        weight: &GpuWeight<R>,
        state: &mut GpuTensor<R>,
        rows: usize,
        out: &mut GpuTensor<R>,
        snapshots: &mut GpuTensor<R>,
    ) -> Result<()> {
        self.conv1d(x, weight, state, rows, out, Some(snapshots))
    }

    fn delta_net_gates(
        &self,
        alpha: &mut GpuTensor<R>,
        beta: &mut GpuTensor<R>,
        dt_bias: &GpuWeight<R>,
        a: &GpuWeight<R>,
        rows: usize,
    ) -> Result<()> {
        let g = self.gate_args(alpha, beta, dt_bias, a, rows)?;
        if rows == 0 || g.n == 0 {
            return Ok(());
        }
        let r = u32_arg("delta_net_gates", rows)?;
        launch!(
            self,
            "delta_net_gates",
            grid(rows * g.n as usize, 256),
            &g.alpha,
            &g.beta,
            &g.dt_bias,
            &g.a,
            &r,
            &g.n
        )
    }

    fn gated_delta_net(
        &self,
        q: &GpuTensor<R>,
        k: &GpuTensor<R>,
        v: &GpuTensor<R>,
        g: &GpuTensor<R>,
        beta: &GpuTensor<R>,
        state: &mut GpuTensor<R>,
        rows: usize,
        p: DeltaNetParams,
        out: &mut GpuTensor<R>,
    ) -> Result<()> {
        self.delta_rule([q, k, v, g, beta], state, rows, p, out, None)
    }

    fn gated_delta_net_snapshots(
        &self,
        q: &GpuTensor<R>,
        k: &GpuTensor<R>,
        v: &GpuTensor<R>,
        g: &GpuTensor<R>,
        beta: &GpuTensor<R>,
        state: &mut GpuTensor<R>,
        rows: usize,
        p: DeltaNetParams,
        out: &mut GpuTensor<R>,
        snapshots: &mut GpuTensor<R>,
    ) -> Result<()> {
        self.delta_rule([q, k, v, g, beta], state, rows, p, out, Some(snapshots))
    }

    fn argmax_rows(&self, x: &GpuTensor<R>, rows: usize, n: usize) -> Result<Vec<u32>> {
        self.argmax_rows_on_device(x, rows, n)
    }

    fn top_k_rows(
        &self,
        x: &GpuTensor<R>,
        rows: usize,
        n: usize,
        k: usize,
    ) -> Result<Vec<Vec<(u32, f32)>>> {
        self.top_k_rows_on_device(x, rows, n, k)
    }

    fn synchronize(&self) -> Result<()> {
        self.rt.synchronize()
    }
}
