//! A gated FFN's gate and up products: both read the same normed hidden state, so a backend that can
//! stack weights (the GPU, which uploads them anyway) holds them as one [gate; up] matrix and computes
//! both in one launch and one pass over it — a large matrix streams closer to peak memory bandwidth
//! than two half-size ones. The CPU keeps its zero-copy views and two products.

use super::transformer::Loader;
use super::Result;
use kiln_kernels::backend::{Activation, Backend};

pub enum GateUp<B: Backend> {
    Separate {
        gate: B::Weight,
        up: B::Weight,
    },
    /// `2·n_ff` rows: gate's, then up's.
    Stacked(B::Weight),
}

impl<B: Backend> GateUp<B> {
    /// Values per row of the gate buffer [`apply`](Self::apply) takes, in units of `n_ff`: the stacked
    /// product writes gate and up side by side there.
    pub const GATE_BUF_WIDTH: usize = 2;

    pub(crate) fn load(
        ld: &Loader<B>,
        gate: &str,
        up: &str,
        n_ff: usize,
        n_embd: usize,
    ) -> Result<Self> {
        if let Some(w) = ld.load_stacked(&[(gate, n_ff), (up, n_ff)], n_embd)? {
            return Ok(GateUp::Stacked(w));
        }
        Ok(GateUp::Separate {
            gate: ld.load(gate, n_ff, n_embd)?,
            up: ld.load(up, n_ff, n_embd)?,
        })
    }

    /// out = act(gate·x) ⊙ (up·x) for `rows` rows of `x`. `bufs`: the gate buffer (rows ×
    /// [`GATE_BUF_WIDTH`](Self::GATE_BUF_WIDTH)·n_ff values) and the up buffer (rows × n_ff).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply(
        &self,
        be: &B,
        act: Activation,
        x: &B::Tensor,
        rows: usize,
        n_ff: usize,
        bufs: [&mut B::Tensor; 2],
        out: &mut B::Tensor,
    ) -> Result<()> {
        let [gate_buf, up_buf] = bufs;
        match self {
            GateUp::Separate { gate, up } => {
                be.matmul(gate, x, rows, gate_buf)?;
                be.matmul(up, x, rows, up_buf)?;
                be.gated_activation(act, gate_buf, up_buf, rows * n_ff, out)?;
            }
            GateUp::Stacked(w) => {
                be.matmul(w, x, rows, gate_buf)?;
                be.gated_activation_stacked(act, gate_buf, rows, n_ff, out)?;
            }
        }
        Ok(())
    }
}
