//! The sampling references (`argmax`, `top_k`) and the CPU backend's `argmax_rows` / `top_k_rows` against
//! a full sort, on rows with ties and NaNs; bad shapes are errors.

mod common;

use kiln_kernels::backend::{argmax, top_k, Backend};
use kiln_kernels::cpu::CpuBackend;

/// Rows of few distinct values (many ties), a NaN now and then.
fn rows(seed: u64, rows: usize, n: usize) -> Vec<f32> {
    let mut next = common::xorshift(seed);
    (0..rows * n)
        .map(|_| {
            let s = next();
            if s.is_multiple_of(97) {
                f32::NAN
            } else {
                (s % 23) as f32 - 11.0
            }
        })
        .collect()
}

/// Every index, ordered: larger values first, lower index among equals, NaN last.
fn sorted(row: &[f32]) -> Vec<(u32, f32)> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| {
            (
                row[i].is_nan(),
                if row[i].is_nan() { 0.0 } else { -row[i] },
                i,
            )
        };
        let (ka, kb) = (key(a), key(b));
        ka.0.cmp(&kb.0)
            .then(ka.1.total_cmp(&kb.1))
            .then(ka.2.cmp(&kb.2))
    });
    order.into_iter().map(|i| (i as u32, row[i])).collect()
}

fn same(a: &[(u32, f32)], b: &[(u32, f32)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.0 == y.0 && x.1.to_bits() == y.1.to_bits())
}

#[test]
fn references_match_a_full_sort() {
    for (seed, n) in [(1, 1), (2, 7), (3, 500), (4, 4099)] {
        let row = rows(seed, 1, n);
        let want = sorted(&row);
        assert_eq!(argmax(&row), want[0].0, "argmax of {n}");
        for k in [0, 1, 5, 40, n, n + 3] {
            assert!(same(&top_k(&row, k), &want[..k.min(n)]), "top {k} of {n}");
        }
    }
    assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
    assert_eq!(argmax(&[f32::NAN, -1.0, 2.0, 2.0]), 2);
}

#[test]
fn cpu_backend_samples_rows() {
    let b = CpuBackend::new(2);
    let (n_rows, n) = (3, 1000);
    let values = rows(9, n_rows, n);
    let mut t = b.tensor(values.len()).unwrap();
    b.write(&mut t, 0, &values).unwrap();
    let ids = b.argmax_rows(&t, n_rows, n).unwrap();
    let tops = b.top_k_rows(&t, n_rows, n, 40).unwrap();
    for (r, row) in values.chunks_exact(n).enumerate() {
        let want = sorted(row);
        assert_eq!(ids[r], want[0].0);
        assert!(same(&tops[r], &want[..40]));
    }
    assert!(b.argmax_rows(&t, 1, 0).is_err(), "rows of 0 values");
    assert!(
        b.argmax_rows(&t, 4, n).is_err(),
        "more rows than the tensor holds"
    );
    assert!(
        b.top_k_rows(&t, 4, n, 5).is_err(),
        "more rows than the tensor holds"
    );
}
