//! Quantized matrix × few-vector products on the CUDA backend (kernels/gpu/matvec.cu): the activations
//! quantized once (by their producer where it can, else by `quantize_act`) and reused by every product
//! of them until another kernel runs, one launch per product, or per group of products of one input.

use super::q6k::device_row_bytes;
use super::{
    grid, shape_err, u32_arg, GpuBackend, GpuTensor, GpuWeight, Scratch, BLAS_MIN_ROWS,
    MAX_ROWS_PER_PASS, MMVW_THREADS, MMV_THREADS,
};
use crate::backend::{check_len, Result};
use crate::gpu::runtime::{LaunchConfig, Runtime};
use crate::quant::GgmlType;

pub(super) fn mmv_kernel(ty: GgmlType) -> Option<(&'static str, usize)> {
    // (kernel family, values per unit)
    Some(match ty {
        GgmlType::Q4_0 => ("mmv_q4_0", 32),
        GgmlType::Q4_1 => ("mmv_q4_1", 32),
        GgmlType::Q5_0 => ("mmv_q5_0", 32),
        GgmlType::Q5_1 => ("mmv_q5_1", 32),
        GgmlType::Q8_0 => ("mmv_q8_0", 16),
        GgmlType::Q4_K => ("mmv_q4_k", 32),
        GgmlType::Q5_K => ("mmv_q5_k", 32),
        GgmlType::Q6_K => ("mmv_q6_k", 32),
        _ => return None,
    })
}

/// The quantized row-kernel variants (kernels/gpu/matvec.cu), chosen with `KILN_MMV` for comparisons.
#[derive(Clone, Copy, Debug)]
pub(super) enum Matvec {
    /// `block`: a block of `MMV_THREADS` per output value (`mmv_*`), or per pair of output values
    /// (`mmv2_*`, each summed as alone) for passes of at least `pairs_from` activation rows.
    BlockPerRow { pairs_from: usize },
    /// `warp`: a warp per output value (`mmvw_*`, two units in flight per lane), or per pair of
    /// output values (`mmvp_*`) for passes of at least `pairs_from` activation rows.
    Warp { pairs_from: usize },
    /// `auto`: `Warp`, except for products with few outputs (the recurrent layers' 48-row
    /// gates, the 1024-row key/value projections) or with long rows and too few outputs to fill the
    /// GPU with warps, where a block per row spreads the same work over four times as many warps
    /// (see [`Matvec::for_shape`]). (8 or 16 lanes per row,
    /// fewer and longer-lived warps, measured 10-20% slower on an H100: bench/README.md.)
    Auto { pairs_from: usize },
    /// `mma` (default): single Q4_K products on the tensor cores (`mmq_q4_k_*`, NVIDIA sm_80+) for
    /// every row count, so decode and verify stay bit-identical; other products, and every product on
    /// a GPU without the kernel, as `auto`. A step costs the same as with `auto`, and a 4-token verify
    /// pass 1.20× a step instead of 1.46× (bench/README.md, session 8).
    /// `warps`: the warps of a 16-row block (`KILN_MMQ_WARPS` = 4 | 8; unset: by shape, see
    /// [`Matvec::mmq_warps`]). `groups`: products of one input whose weights are all Q4_K, Q5_K or
    /// Q6_K as one tensor-core launch
    /// (`mmqg_*`; default; `KILN_MMQ_GROUP=0` keeps `mmvg_*`). The groups took a 4-token verify pass
    /// from 1.35× a step to 1.29× on an H200, the step unchanged (bench/README.md, session 11).
    /// `singles`: single Q5_K and Q6_K products on the tensor cores too (`KILN_MMQ_SINGLES=1`; off:
    /// a 27B step 9% slower on an H200 with them, bench/README.md session 20; tiled Q5_K weights take
    /// them anyway).
    Mma {
        pairs_from: usize,
        warps: Option<u32>,
        groups: bool,
        singles: bool,
    },
}

impl Matvec {
    /// `KILN_MMV` = `block` | `warp` | `auto` | `mma` (default); `KILN_MMV_PAIRS` = the activation rows from
    /// which a warp or a block takes two output rows (default 2: the verify and batched passes; `off`:
    /// never).
    pub(super) fn from_env() -> Matvec {
        let pairs_from = match std::env::var("KILN_MMV_PAIRS").as_deref() {
            Ok("off") => usize::MAX,
            Ok(n) => n.parse().unwrap_or(2),
            Err(_) => 2,
        };
        match std::env::var("KILN_MMV").as_deref() {
            Ok("block") => Matvec::BlockPerRow { pairs_from },
            Ok("warp") => Matvec::Warp { pairs_from },
            Ok("auto") => Matvec::Auto { pairs_from },
            _ => Matvec::Mma {
                pairs_from,
                warps: match std::env::var("KILN_MMQ_WARPS").as_deref() {
                    Ok("4") => Some(4),
                    Ok("8") => Some(8),
                    _ => None,
                },
                groups: crate::gpu::switched_on("KILN_MMQ_GROUP"),
                singles: std::env::var("KILN_MMQ_SINGLES").is_ok_and(|v| v == "1"),
            },
        }
    }

    /// The variant for a product with `n_out` outputs of `n_units` units each on a GPU of `sm_count`
    /// SMs. It depends on the weight's shape alone, so a verify batch sums every output in the same
    /// order as a decode step (a warp's second row is summed exactly as a warp of its own would).
    /// A block per row where a warp per row would leave SMs idle: products with few outputs, and
    /// those whose warps would not fill the GPU once (64 an SM) while each streams a long row (at least
    /// 4 units a thread of a block): the 27B's Q6_K FFN down projection (5,120 × 17,408) reads at 2.33
    /// TB/s that way against 1.65 with 5,120 warps (H100, bench/README.md, session 9).
    fn for_shape(self, n_out: usize, n_units: usize, sm_count: usize) -> Matvec {
        let few_outputs = n_out < 16 * sm_count;
        let long_rows_under_a_wave =
            n_out < MAX_WARPS_PER_SM * sm_count && n_units >= 4 * MMV_THREADS as usize;
        match self {
            Matvec::Auto { pairs_from } | Matvec::Mma { pairs_from, .. }
                if few_outputs || long_rows_under_a_wave =>
            {
                Matvec::BlockPerRow { pairs_from }
            }
            Matvec::Auto { pairs_from } | Matvec::Mma { pairs_from, .. } => {
                Matvec::Warp { pairs_from }
            }
            other => other,
        }
    }

    /// The tensor-core Q4_K kernel family and its warps per 16-row block for a product of `n_out`
    /// outputs: 8 warps where the 16-row blocks alone would put fewer than 16 warps on an SM (the 27B's
    /// 5,120-output products), else 4. By shape alone, like `for_shape`. On an H200, tiled, one row:
    /// gate+up 26.3 µs with 4 warps against 28.1 with 8; down 14.8 and output 6.5 µs with 8 against
    /// 17.8 and 7.1 with 4 (bench/README.md, session 18).
    /// `group`: the family of group launches (`mmqg_*`, which take each part's layout from the part),
    /// else of single Q4_K products (`tiled`: of a tiled weight, `mmqt_q4_k_*`).
    fn mmq_warps(
        self,
        n_out: usize,
        sm_count: usize,
        group: bool,
        tiled: bool,
    ) -> (&'static str, u32) {
        let warps = match self {
            Matvec::Mma { warps: Some(w), .. } => w,
            _ if n_out.div_ceil(16) * 4 < 16 * sm_count => 8,
            _ => 4,
        };
        let name = match (group, tiled, warps == 8) {
            (false, false, false) => "mmq_q4_k",
            (false, false, true) => "mmq8_q4_k",
            (false, true, false) => "mmqt_q4_k",
            (false, true, true) => "mmqt8_q4_k",
            (true, _, false) => "mmqg",
            (true, _, true) => "mmqg8",
        };
        (name, warps)
    }

    /// Whether products of `ty` weights run on the tensor cores: single ones (`group` false) or as
    /// parts of a group launch. By type and switches alone, never by row count, so a verify batch takes
    /// the kernel a decode step takes.
    fn mma_for(self, ty: GgmlType, group: bool) -> bool {
        let Matvec::Mma {
            groups, singles, ..
        } = self
        else {
            return false;
        };
        match ty {
            GgmlType::Q4_K => !group || groups,
            GgmlType::Q5_K | GgmlType::Q6_K => {
                if group {
                    groups
                } else {
                    singles
                }
            }
            _ => false,
        }
    }
}

/// Resident warps an SM holds at most (NVIDIA since Volta: 2,048 threads).
const MAX_WARPS_PER_SM: usize = 64;

/// The largest output a producer quantizes for the next product (values): a decode step's or a verify or
/// batched pass's activations (17 rows of the 27B's 17,408-wide FFN), not a prefill chunk's.
const FUSED_QUANT_MAX_VALUES: usize = 1 << 19;

/// Products one group launch holds (`MMVG_MAX_PARTS` in matvec.cu).
const GROUP_MAX_PARTS: usize = 4;

/// One product of a group launch; the layout of `MatvecPart` in kernels/gpu/matvec.cu.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct MatvecPart {
    w: u64,
    out: u64,
    row_bytes: u32,
    n_units: u32,
    n_out: u32,
    ty: u32,
    first_block: u32,
    /// The weight is tiled (backend/tiles.rs).
    tiled: u32,
}

/// The layout of `MatvecGroup` in kernels/gpu/matvec.cu, passed by value as the kernel's first argument.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct MatvecGroup {
    parts: [MatvecPart; GROUP_MAX_PARTS],
    n_parts: u32,
    pad: u32,
}

impl<R: Runtime> GpuBackend<R> {
    pub(super) fn product(
        &self,
        w: &GpuWeight<R>,
        x: &GpuTensor<R>,
        rows: usize,
        out: &mut GpuTensor<R>,
    ) -> Result<()> {
        let (k, n_out) = (w.cols, w.rows);
        check_len("matmul", "input", x.len, rows * k)?;
        check_len("matmul", "output", out.len, rows * n_out)?;
        if rows == 0 {
            return Ok(());
        }
        let (k32, n_out32) = (u32_arg("matmul", k)?, u32_arg("matmul", n_out)?);
        let cfg = LaunchConfig {
            grid_dim: (n_out32, 1, 1),
            block_dim: (MMV_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (wp, xp, op) = (self.ptr(&w.data), self.ptr(&x.buf), self.ptr(&out.buf));
        if rows >= BLAS_MIN_ROWS && w.ty != GgmlType::F32 && self.rt.has_blas() {
            return self.matmul_blas(w, xp, rows, op);
        }
        if matches!(w.ty, GgmlType::F16 | GgmlType::F32) {
            let (fam, align) = if w.ty == GgmlType::F16 {
                ("mmv_f16", 2)
            } else {
                ("mmv_f32", 1)
            };
            if !k.is_multiple_of(align) {
                return Err(shape_err(
                    "matmul",
                    format!("f16 rows of {k} values (even needed)"),
                ));
            }
            for r0 in (0..rows).step_by(MAX_ROWS_PER_PASS) {
                let nr = (rows - r0).min(MAX_ROWS_PER_PASS);
                let (xr, or) = (xp + (r0 * k * 4) as u64, op + (r0 * n_out * 4) as u64);
                launch!(
                    self,
                    &format!("{fam}_{nr}"),
                    cfg,
                    &wp,
                    &n_out32,
                    &xr,
                    &k32,
                    &or
                )?;
            }
            return Ok(());
        }
        let (fam, per_unit) = mmv_kernel(w.ty)
            .ok_or_else(|| shape_err("matmul", format!("type {} on CUDA", w.ty)))?;
        if !k.is_multiple_of(32) {
            return Err(shape_err(
                "matmul",
                format!("rows of {k} values (multiple of 32 needed)"),
            ));
        }
        let mut s = self.lock_scratch();
        let (qp, dp) = self.quantized_act(&mut s, xp, rows, k)?;
        let row_bytes = u32_arg("matmul", device_row_bytes(w.ty, k).unwrap_or(0))?;
        // A tiled weight takes the tensor cores whatever the switches say: only they read its layout.
        if self.mma_kernels && (w.tiled || self.matvec.mma_for(w.ty, false)) {
            if w.ty != GgmlType::Q4_K {
                // Q5_K and Q6_K through the group kernel, as a group of one.
                let mut g = MatvecGroup {
                    n_parts: 1,
                    ..Default::default()
                };
                g.parts[0] = self.group_part(w, out, rows, 0)?;
                self.launch_mmq_group(g, n_out.div_ceil(16), n_out, (qp, dp), rows, k)?;
                s.act_of = Some(self.stamp(xp, rows * k));
                return Ok(());
            }
            // Whole super-blocks: the kernel walks k in 256s (a Q4_K row always holds whole ones).
            let (fam, warps) = self.matvec.mmq_warps(n_out, self.sm_count, false, w.tiled);
            let cfg = LaunchConfig {
                grid_dim: (u32_arg("matmul", n_out.div_ceil(16))?, 1, 1),
                block_dim: (32 * warps, 1, 1),
                shared_mem_bytes: 0,
            };
            for r0 in (0..rows).step_by(MAX_ROWS_PER_PASS) {
                let nr = (rows - r0).min(MAX_ROWS_PER_PASS);
                let (yq, yd, or) = (
                    qp + (r0 * k) as u64,
                    dp + (r0 * k / 32 * 8) as u64,
                    op + (r0 * n_out * 4) as u64,
                );
                let name = format!("{fam}_{nr}");
                launch!(self, &name, cfg, &wp, &row_bytes, &n_out32, &yq, &yd, &k32, &or)?;
            }
            s.act_of = Some(self.stamp(xp, rows * k));
            return Ok(());
        }
        let n_units = u32_arg("matmul", k / per_unit)?;
        let variant = self.matvec.for_shape(n_out, k / per_unit, self.sm_count);
        for r0 in (0..rows).step_by(MAX_ROWS_PER_PASS) {
            let nr = (rows - r0).min(MAX_ROWS_PER_PASS);
            let (name, cfg) = match variant {
                Matvec::BlockPerRow { pairs_from } if nr >= pairs_from.max(2) => {
                    let cfg = LaunchConfig {
                        grid_dim: (u32_arg("matmul", n_out.div_ceil(2))?, 1, 1),
                        ..cfg
                    };
                    (format!("{}_{nr}", fam.replacen("mmv_", "mmv2_", 1)), cfg)
                }
                Matvec::BlockPerRow { .. } | Matvec::Auto { .. } | Matvec::Mma { .. } => {
                    (format!("{fam}_{nr}"), cfg)
                }
                Matvec::Warp { pairs_from } => {
                    let (prefix, per_warp) = if nr >= pairs_from {
                        ("mmvp_", 2)
                    } else {
                        ("mmvw_", 1)
                    };
                    let per_block = (MMVW_THREADS / 32) as usize * per_warp;
                    let cfg = LaunchConfig {
                        grid_dim: (u32_arg("matmul", n_out.div_ceil(per_block))?, 1, 1),
                        block_dim: (MMVW_THREADS, 1, 1),
                        shared_mem_bytes: 0,
                    };
                    (format!("{}_{nr}", fam.replacen("mmv_", prefix, 1)), cfg)
                }
            };
            let (yq, yd, or) = (
                qp + (r0 * k) as u64,
                dp + (r0 * k / 32 * 8) as u64,
                op + (r0 * n_out * 4) as u64,
            );
            launch!(self, &name, cfg, &wp, &row_bytes, &n_units, &n_out32, &yq, &yd, &k32, &or)?;
        }
        // The products above read the quantized activations and wrote only `out`.
        s.act_of = Some(self.stamp(xp, rows * k));
        Ok(())
    }

    /// Products of one input as a single launch when every weight is quantized, shares the row length
    /// and the rows are few enough for the row kernels: on the tensor cores (`mmqg_*`, 16 rows a
    /// block) when every weight is a K-quant that [`Matvec::mma_for`] takes there, else `mmvg_*` (a
    /// warp per output row). Otherwise, or with `KILN_CUDA_FUSE=0`, one [`Self::product`] each.
    pub(super) fn product_group(
        &self,
        parts: &mut [(&GpuWeight<R>, &mut GpuTensor<R>)],
        x: &GpuTensor<R>,
        rows: usize,
    ) -> Result<()> {
        let k = parts.first().map_or(0, |(w, _)| w.cols);
        let one_launch = self.fuse
            && (2..=GROUP_MAX_PARTS).contains(&parts.len())
            && rows > 0
            && rows < BLAS_MIN_ROWS
            && k.is_multiple_of(32)
            && parts
                .iter()
                .all(|(w, _)| w.cols == k && mmv_kernel(w.ty).is_some());
        let mma = self.mma_kernels
            && parts
                .iter()
                .all(|(w, _)| w.tiled || self.matvec.mma_for(w.ty, true));
        // `mmvg_*` reads GGUF's layout only: a group with a tiled part and a part the tensor cores do
        // not take runs as single products.
        let tiled_without_mma = !mma && parts.iter().any(|(w, _)| w.tiled);
        if !one_launch || tiled_without_mma {
            for (w, out) in parts.iter_mut() {
                self.product(w, x, rows, out)?;
            }
            return Ok(());
        }
        check_len("matmul", "input", x.len, rows * k)?;
        let xp = self.ptr(&x.buf);
        // A block covers 16 rows of a part on the tensor cores, else a row per warp.
        let per_block = if mma {
            16
        } else {
            (MMVW_THREADS / 32) as usize
        };
        let mut g = MatvecGroup {
            n_parts: parts.len() as u32,
            ..Default::default()
        };
        let (mut blocks, mut n_out) = (0usize, 0usize);
        for (slot, (w, out)) in g.parts.iter_mut().zip(parts.iter()) {
            *slot = self.group_part(w, out, rows, blocks)?;
            blocks += w.rows.div_ceil(per_block);
            n_out += w.rows;
        }
        let mut s = self.lock_scratch();
        let (qp, dp) = self.quantized_act(&mut s, xp, rows, k)?;
        if mma {
            self.launch_mmq_group(g, blocks, n_out, (qp, dp), rows, k)?;
        } else {
            let cfg = LaunchConfig {
                grid_dim: (u32_arg("matmul", blocks)?, 1, 1),
                block_dim: (MMVW_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            self.launch_group("mmvg", cfg, g, (qp, dp), rows, k)?;
        }
        s.act_of = Some(self.stamp(xp, rows * k));
        Ok(())
    }

    /// The group-launch description of the product of `w` into `out` for `rows` activation rows, whose
    /// blocks start at `first_block`.
    fn group_part(
        &self,
        w: &GpuWeight<R>,
        out: &GpuTensor<R>,
        rows: usize,
        first_block: usize,
    ) -> Result<MatvecPart> {
        let k = w.cols;
        check_len("matmul", "output", out.len, rows * w.rows)?;
        let (_, per_unit) = mmv_kernel(w.ty)
            .ok_or_else(|| shape_err("matmul", format!("type {} on CUDA", w.ty)))?;
        Ok(MatvecPart {
            w: self.ptr(&w.data),
            out: self.ptr(&out.buf),
            row_bytes: u32_arg("matmul", device_row_bytes(w.ty, k).unwrap_or(0))?,
            n_units: u32_arg("matmul", k / per_unit)?,
            n_out: u32_arg("matmul", w.rows)?,
            ty: w.ty as u32,
            first_block: u32_arg("matmul", first_block)?,
            tiled: w.tiled as u32,
        })
    }

    /// A tensor-core group launch (`mmqg_*`) of `blocks` blocks over the quantized activations (`qp`,
    /// `dp`): `g`'s parts (K-quants, their blocks of 16 rows numbered through `first_block`) hold `n_out`
    /// rows in all, which set the warps of a block.
    fn launch_mmq_group(
        &self,
        g: MatvecGroup,
        blocks: usize,
        n_out: usize,
        (qp, dp): (u64, u64),
        rows: usize,
        k: usize,
    ) -> Result<()> {
        let (fam, warps) = self.matvec.mmq_warps(n_out, self.sm_count, true, false);
        let cfg = LaunchConfig {
            grid_dim: (u32_arg("matmul", blocks)?, 1, 1),
            block_dim: (32 * warps, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch_group(fam, cfg, g, (qp, dp), rows, k)
    }

    /// A group kernel of family `fam` (`mmvg`, `mmqg`, `mmqg8`) launched once per pass of up to
    /// `MAX_ROWS_PER_PASS` rows over the quantized activations (`qp`, `dp`), each pass writing its rows
    /// of every part's output.
    fn launch_group(
        &self,
        fam: &str,
        cfg: LaunchConfig,
        g: MatvecGroup,
        (qp, dp): (u64, u64),
        rows: usize,
        k: usize,
    ) -> Result<()> {
        let k32 = u32_arg("matmul", k)?;
        for r0 in (0..rows).step_by(MAX_ROWS_PER_PASS) {
            let nr = (rows - r0).min(MAX_ROWS_PER_PASS);
            let mut pass = g;
            for p in pass.parts.iter_mut().take(g.n_parts as usize) {
                p.out += (r0 * p.n_out as usize * 4) as u64;
            }
            let (yq, yd) = (qp + (r0 * k) as u64, dp + (r0 * k / 32 * 8) as u64);
            launch!(self, &format!("{fam}_{nr}"), cfg, &pass, &yq, &yd, &k32)?;
        }
        Ok(())
    }

    /// The scratch addresses of `x` (`rows × k`) quantized: reused when the last kernel launched left
    /// them there (its producer quantized them, or a product of the same input ran just before), else
    /// quantized now.
    fn quantized_act(
        &self,
        s: &mut Scratch<R>,
        xp: u64,
        rows: usize,
        k: usize,
    ) -> Result<(u64, u64)> {
        let n = rows * k;
        let qp = self.ensure(&mut s.act_q, n)?;
        let dp = self.ensure(&mut s.act_d, n / 16)?;
        if s.act_of != Some(self.stamp(xp, n)) {
            let n32 = u32_arg("matmul", n)?;
            launch!(self, "quantize_act", grid(n, 256), &xp, &n32, &qp, &dp)?;
        }
        Ok((qp, dp))
    }

    /// Runs `launch`, a kernel producing `rows × dim` activations at `out` (a norm, a gated activation),
    /// with the scratch addresses (values, scales) where it also writes them quantized for the product
    /// that reads them next, or nulls when it should not (rows that are not whole groups of 32; outputs
    /// larger than a decode or verify pass makes, whose products go through BLAS). A product of exactly
    /// those values then skips its own `quantize_act` ([`Self::quantized_act`]); the quantized layout is
    /// flat (value i, group i / 32), so a product may read them as rows of another length, e.g. a gated
    /// norm's per-head rows.
    pub(super) fn producing(
        &self,
        out: u64,
        rows: usize,
        dim: usize,
        launch: impl FnOnce(u64, u64) -> Result<()>,
    ) -> Result<()> {
        let n = rows.saturating_mul(dim);
        if !self.fuse || n > FUSED_QUANT_MAX_VALUES || !dim.is_multiple_of(32) {
            return launch(0, 0);
        }
        let mut s = self.lock_scratch();
        let (yq, yd) = (
            self.ensure(&mut s.act_q, n)?,
            self.ensure(&mut s.act_d, n / 16)?,
        );
        launch(yq, yd)?;
        s.act_of = Some(self.stamp(out, n));
        Ok(())
    }
}
