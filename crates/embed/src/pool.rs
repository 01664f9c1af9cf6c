//! What sentence-transformers does after BertModel, for graphs that stop at `last_hidden_state`.

use ndarray::{ArrayView2, ArrayView3};

/// Mean of the token vectors where `mask` is 1 (count clamped at 1e-9), then L2-normalised.
pub(crate) fn mean_pool_normalised(
    hidden: ArrayView3<f32>,
    mask: ArrayView2<i64>,
) -> Vec<Vec<f32>> {
    hidden
        .outer_iter()
        .zip(mask.outer_iter())
        .map(|(tokens, mask)| {
            let mut sum = vec![0f32; tokens.ncols()];
            let mut count = 0f32;
            for (token, &m) in tokens.outer_iter().zip(mask) {
                if m != 0 {
                    sum.iter_mut().zip(token).for_each(|(s, &x)| *s += x);
                    count += 1.0;
                }
            }
            let count = count.max(1e-9);
            sum.iter_mut().for_each(|s| *s /= count);
            normalise(&mut sum);
            sum
        })
        .collect()
}

/// `x / max(||x||, 1e-12)`, as torch.nn.functional.normalize.
pub(crate) fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array3};

    #[test]
    fn pools_only_unmasked_tokens_then_normalises() {
        let mut hidden = Array3::<f32>::zeros((2, 3, 2));
        hidden.slice_mut(ndarray::s![0, .., ..]).assign(&array![
            [3.0, 0.0],
            [1.0, 4.0],
            [100.0, 100.0]
        ]);
        hidden.slice_mut(ndarray::s![1, .., ..]).assign(&array![
            [0.0, 2.0],
            [0.0, 0.0],
            [0.0, 0.0]
        ]);
        let mask = array![[1i64, 1, 0], [1, 0, 0]];
        let out = mean_pool_normalised(hidden.view(), mask.view());
        // Row 0: mean (2, 2) -> (1/√2, 1/√2); the padded (100, 100) must not count.
        assert!((out[0][0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert!((out[0][1] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(out[1], vec![0.0, 1.0]);
    }

    #[test]
    fn zero_vector_stays_zero() {
        let mut v = vec![0.0f32; 4];
        normalise(&mut v);
        assert_eq!(v, vec![0.0; 4]);
    }
}
