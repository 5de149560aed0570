//! Kernels of the recurrent (linear-attention) layers: the causal depthwise convolution with its rolling
//! state, and the gated delta rule (Qwen3.5's Gated DeltaNet) both token by token and in chunks.
//!
//! The delta-rule state of one V-head is stored as ggml stores it: `m[j·dk + i] = S[i][j]`, where `i`
//! indexes the key dimension and `j` the value dimension, so row `j` of `m` is column `j` of S and every
//! product below reads contiguous rows.

use super::pool::ThreadPool;
use crate::backend::DeltaNetParams;

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint ranges through it (see each use).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Dot product with eight independent accumulators (vectorises without fast-math).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Causal depthwise conv1d over `rows` tokens of `channels` values, then SiLU. `weight` holds `kernel`
/// taps per channel (`weight[c·kernel + t]`, oldest first); `state` holds the previous `kernel − 1` inputs
/// per channel (`state[c·(kernel−1) + t]`, oldest first) and is advanced past the `rows` new tokens. With
/// `snapshots` (`rows` slots of the state's length), slot r receives the state after token r, for
/// every token but the last (whose state is `state` itself).
#[allow(clippy::too_many_arguments)]
pub fn conv1d_silu(
    pool: &ThreadPool,
    x: &[f32],
    weight: &[f32],
    state: &mut [f32],
    rows: usize,
    channels: usize,
    kernel: usize,
    out: &mut [f32],
    snapshots: Option<&mut [f32]>,
) {
    let ks = kernel - 1;
    let n_tasks = pool.n_threads().min(channels).max(1);
    let per = channels.div_ceil(n_tasks);
    let (out_p, st_p) = (SendPtr(out.as_mut_ptr()), SendPtr(state.as_mut_ptr()));
    let snap_p = snapshots.map(|s| SendPtr(s.as_mut_ptr()));
    let task = |t: usize| {
        let c0 = t * per;
        let c1 = (c0 + per).min(channels);
        let mut window = vec![0f32; ks + rows];
        for c in c0..c1 {
            // SAFETY: task t touches only channels c0..c1 of `state` and of every `out` row.
            let st = unsafe { std::slice::from_raw_parts_mut(st_p.get().add(c * ks), ks) };
            window[..ks].copy_from_slice(st);
            for r in 0..rows {
                window[ks + r] = x[r * channels + c];
            }
            let w = &weight[c * kernel..(c + 1) * kernel];
            for r in 0..rows {
                let mut s = 0f32;
                for (a, &b) in window[r..r + kernel].iter().zip(w) {
                    s += a * b;
                }
                unsafe { *out_p.get().add(r * channels + c) = super::ops::silu(s) };
                // The last token's state is the live one: its slot stays unwritten.
                if let (Some(snap), true) = (snap_p, r + 1 < rows) {
                    // SAFETY: channel c's part of slot r, owned by this task.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(snap.get().add((r * channels + c) * ks), ks)
                    };
                    dst.copy_from_slice(&window[r + 1..r + 1 + ks]);
                }
            }
            st.copy_from_slice(&window[rows..rows + ks]);
        }
    };
    pool.run(n_tasks, &task);
}

/// Per row of `dim` values: x / √(Σx² + eps), computed as llama.cpp does (an RMSNorm with eps/dim, then
/// a 1/√dim scale).
pub fn l2_norm_row(x: &mut [f32], eps: f32) {
    let n = x.len() as f32;
    let sum: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps / n).sqrt();
    let post = 1.0 / n.sqrt();
    x.iter_mut().for_each(|v| *v = (*v * scale) * post);
}

/// The gated delta rule over `rows` tokens for every V-head. q, k: rows of `n_k_heads × dk`; v and out:
/// rows of `n_v_heads × dv`; g (log-decay) and beta: rows of `n_v_heads`; state: `n_v_heads × dv × dk`.
/// V-head h reads Q/K head `h % n_k_heads`. With `snapshots` (`rows` slots of the state's length) the
/// rule runs token by token and slot r receives the state after token r, for every token but the last
/// (whose state is `state` itself).
#[allow(clippy::too_many_arguments)]
pub fn gated_delta_net(
    pool: &ThreadPool,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: &[f32],
    beta: &[f32],
    state: &mut [f32],
    rows: usize,
    p: &DeltaNetParams,
    out: &mut [f32],
    snapshots: Option<&mut [f32]>,
) {
    let (dk, dv, hv) = (p.head_k_dim, p.head_v_dim, p.n_v_heads);
    let state_len = state.len();
    let (out_p, st_p) = (SendPtr(out.as_mut_ptr()), SendPtr(state.as_mut_ptr()));
    let snap_p = snapshots.map(|s| SendPtr(s.as_mut_ptr()));
    let chunk = p.chunk.unwrap_or(1).max(1);
    let task = |h: usize| {
        // SAFETY: task h owns V-head h: its state block and its columns of every output row.
        let m = unsafe { std::slice::from_raw_parts_mut(st_p.get().add(h * dv * dk), dv * dk) };
        let hk = h % p.n_k_heads;
        let head = Head {
            q,
            k,
            v,
            g,
            beta,
            h,
            hk,
            p,
            out: out_p,
        };
        if let Some(snap) = snap_p {
            for t in 0..rows {
                head.step(m, t);
                if t + 1 == rows {
                    break; // the last token's state is the live one: its slot stays unwritten
                }
                // SAFETY: V-head h's block of slot t, owned by this task.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        snap.get().add(t * state_len + h * dv * dk),
                        dv * dk,
                    )
                };
                dst.copy_from_slice(m);
            }
        } else if chunk <= 1 {
            for t in 0..rows {
                head.step(m, t);
            }
        } else {
            let mut t0 = 0;
            while t0 < rows {
                let n = chunk.min(rows - t0);
                if n == 1 {
                    head.step(m, t0);
                } else {
                    head.chunk(m, t0, n);
                }
                t0 += n;
            }
        }
    };
    pool.run(hv, &task);
}

struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    g: &'a [f32],
    beta: &'a [f32],
    h: usize,
    hk: usize,
    p: &'a DeltaNetParams,
    out: SendPtr,
}

impl<'a> Head<'a> {
    fn qk(&self, x: &'a [f32], t: usize) -> &'a [f32] {
        let (dk, nk) = (self.p.head_k_dim, self.p.n_k_heads);
        let at = (t * nk + self.hk) * dk;
        &x[at..at + dk]
    }
    fn v_row(&self, t: usize) -> &'a [f32] {
        let (dv, nv) = (self.p.head_v_dim, self.p.n_v_heads);
        &self.v[(t * nv + self.h) * dv..(t * nv + self.h + 1) * dv]
    }
    #[allow(clippy::mut_from_ref)]
    fn out_row(&self, t: usize) -> &mut [f32] {
        let (dv, nv) = (self.p.head_v_dim, self.p.n_v_heads);
        // SAFETY: see gated_delta_net: this head's slice of row t.
        unsafe { std::slice::from_raw_parts_mut(self.out.get().add((t * nv + self.h) * dv), dv) }
    }
    fn gb(&self, t: usize) -> (f32, f32) {
        let i = t * self.p.n_v_heads + self.h;
        (self.g[i], self.beta[i])
    }

    /// One token: S ← e^g·S; δ = β(v − Sᵀk); S ← S + k⊗δ; o = scale·Sᵀq.
    fn step(&self, m: &mut [f32], t: usize) {
        let (dk, dv) = (self.p.head_k_dim, self.p.head_v_dim);
        let (q, k, v) = (self.qk(self.q, t), self.qk(self.k, t), self.v_row(t));
        let (g, b) = self.gb(t);
        let decay = g.exp();
        m.iter_mut().for_each(|x| *x *= decay);
        let out = self.out_row(t);
        for j in 0..dv {
            let row = &mut m[j * dk..(j + 1) * dk];
            let delta = (v[j] - dot(row, k)) * b;
            axpy(row, delta, k);
            out[j] = dot(row, q) * self.p.scale;
        }
    }

    /// `n` tokens from `t0` at once. With G_t the cumulative log-decay inside the chunk and S₀ the state
    /// before it, the per-token updates u_t (= δ_t) solve the unit lower-triangular system
    /// u_t + β_t Σ_{s<t} e^{G_t−G_s}(k_t·k_s) u_s = β_t (v_t − e^{G_t} S₀ᵀk_t),
    /// after which o_t = e^{G_t} S₀ᵀq_t + Σ_{s≤t} e^{G_t−G_s}(q_t·k_s) u_s and
    /// S_n = e^{G_n} S₀ + Σ_s e^{G_n−G_s} k_s u_sᵀ. This is the recurrence rewritten exactly (the WY/UT
    /// form solves the same system with a matrix inverse).
    fn chunk(&self, m: &mut [f32], t0: usize, n: usize) {
        let (dk, dv) = (self.p.head_k_dim, self.p.head_v_dim);
        let mut cum = vec![0f32; n];
        let mut acc = 0f32;
        for (i, c) in cum.iter_mut().enumerate() {
            acc += self.gb(t0 + i).0;
            *c = acc;
        }
        // kk[t][s] = k_t·k_s and qk[t][s] = q_t·k_s for s ≤ t.
        let mut kk = vec![0f32; n * n];
        let mut qk = vec![0f32; n * n];
        for t in 0..n {
            let (qt, kt) = (self.qk(self.q, t0 + t), self.qk(self.k, t0 + t));
            for s in 0..=t {
                let ks = self.qk(self.k, t0 + s);
                kk[t * n + s] = dot(kt, ks);
                qk[t * n + s] = dot(qt, ks);
            }
        }
        // u (n × dv): right-hand sides, then forward substitution.
        let mut u = vec![0f32; n * dv];
        let mut o = vec![0f32; n * dv];
        for t in 0..n {
            let (qt, kt, vt) = (
                self.qk(self.q, t0 + t),
                self.qk(self.k, t0 + t),
                self.v_row(t0 + t),
            );
            let (_, b) = self.gb(t0 + t);
            let gt = cum[t].exp();
            for j in 0..dv {
                let row = &m[j * dk..(j + 1) * dk];
                u[t * dv + j] = b * (vt[j] - gt * dot(row, kt));
                o[t * dv + j] = gt * dot(row, qt);
            }
        }
        for t in 0..n {
            let (_, b) = self.gb(t0 + t);
            let (done, rest) = u.split_at_mut(t * dv);
            let ut = &mut rest[..dv];
            for s in 0..t {
                let a = b * (cum[t] - cum[s]).exp() * kk[t * n + s];
                axpy(ut, -a, &done[s * dv..(s + 1) * dv]);
            }
        }
        for t in 0..n {
            let ot = &mut o[t * dv..(t + 1) * dv];
            for s in 0..=t {
                let a = (cum[t] - cum[s]).exp() * qk[t * n + s];
                axpy(ot, a, &u[s * dv..(s + 1) * dv]);
            }
            let dst = self.out_row(t0 + t);
            for (d, &x) in dst.iter_mut().zip(ot.iter()) {
                *d = x * self.p.scale;
            }
        }
        let gn = cum[n - 1].exp();
        m.iter_mut().for_each(|x| *x *= gn);
        for s in 0..n {
            let w = (cum[n - 1] - cum[s]).exp();
            let ks = self.qk(self.k, t0 + s);
            for j in 0..dv {
                axpy(&mut m[j * dk..(j + 1) * dk], w * u[s * dv + j], ks);
            }
        }
    }
}
