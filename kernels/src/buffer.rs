//! A 64-byte aligned, zero-initialised f32 buffer: the storage of arenas and packed weights, so
//! that SIMD loads never straddle cache lines at tensor starts.

/// One cache line of floats.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A heap buffer of `len` floats whose first element is 64-byte aligned.
#[derive(Clone)]
pub struct AlignedF32 {
    lines: Vec<Line>,
    len: usize,
}

impl std::fmt::Debug for AlignedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedF32({} floats)", self.len)
    }
}

impl AlignedF32 {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Self {
        AlignedF32 { lines: vec![Line([0.0; 16]); len.div_ceil(16)], len }
    }

    /// `len` zeros, or `None` when the allocation fails (instead of aborting the process): for
    /// buffers whose size comes from a file or a request.
    pub fn try_zeros(len: usize) -> Option<Self> {
        let n = len.div_ceil(16);
        let mut lines = Vec::new();
        lines.try_reserve_exact(n).ok()?;
        lines.resize(n, Line([0.0; 16]));
        Some(AlignedF32 { lines, len })
    }

    /// Number of floats.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The floats.
    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: `Line` is `repr(C)` over `[f32; 16]` with no padding, so the vector's storage is
        // `16·lines.len() ≥ len` contiguous, initialised floats.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }

    /// The floats, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`; the exclusive borrow of `self` makes the slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

impl std::ops::Deref for AlignedF32 {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for AlignedF32 {
    fn deref_mut(&mut self) -> &mut [f32] {
        self.as_mut_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_sized() {
        for len in [0, 1, 15, 16, 17, 1000] {
            let mut b = AlignedF32::zeros(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % 64, 0);
            assert!(b.iter().all(|&x| x == 0.0));
            b.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
            assert_eq!(b.last().copied(), len.checked_sub(1).map(|l| l as f32));
        }
    }
}
