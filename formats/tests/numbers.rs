//! The numeric rules of the registered metadata keys the runtime computes with (`docs/FORMAT.md`
//! §4.2): a data range of two finite numbers lo < hi, betas in (0, 1), `schedule.timesteps`
//! equal to the number of betas. The writer refuses each broken value, and the reader refuses
//! the same value planted in a valid file's bytes (checksums recomputed).

mod common;

use common::*;
use edadm_format::metadata::keys;
use edadm_format::{FormatError, ModelFile};

fn refused_by_writer(key: &str, value: impl Into<edadm_format::MetaValue>) -> String {
    let mut b = tiny_model(true);
    b.metadata_mut().insert(key, value);
    let e = b.to_bytes().expect_err("the writer refuses the value").to_string();
    assert!(!e.contains('\n'), "{e}");
    e
}

#[test]
fn the_writer_refuses_broken_numbers() {
    for r in [vec![1.0, -1.0], vec![0.0, 0.0], vec![f64::NAN, 1.0], vec![-1.0, f64::INFINITY], vec![0.0, 1.0, 2.0]] {
        let e = refused_by_writer(keys::MODEL_DATA_RANGE, r.clone());
        assert!(e.contains("model.data_range"), "{r:?}: {e}");
    }
    for bad in [0.0, 1.0, -0.1, 1.5, f64::NAN] {
        let mut betas: Vec<f64> = (0..10).map(|i| 1e-4 + i as f64 * 2e-3).collect();
        betas[3] = bad;
        let e = refused_by_writer(keys::SCHEDULE_BETAS, betas);
        assert!(e.contains("schedule.betas[3]"), "{bad}: {e}");
    }
    let e = refused_by_writer(keys::SCHEDULE_BETAS, Vec::<f64>::new());
    assert!(e.contains("empty"), "{e}");
    let e = refused_by_writer(keys::SCHEDULE_TIMESTEPS, 11u64);
    assert!(e.contains("schedule.timesteps = 11") && e.contains("10 values"), "{e}");
    // The fixture itself is valid.
    tiny_model(true).to_bytes().unwrap();
}

/// Replaces the first occurrence of `old` (as little-endian f64s) in the metadata section.
fn plant(old: &[f64], new: &[f64]) -> FormatError {
    let mut b = tiny_model(true).to_bytes().unwrap();
    let (start, len) = section(&b, 0);
    let needle: Vec<u8> = old.iter().flat_map(|v| v.to_le_bytes()).collect();
    let at = find(&b[..start + len], &needle, start);
    for (i, v) in new.iter().enumerate() {
        b[at + 8 * i..at + 8 * i + 8].copy_from_slice(&v.to_le_bytes());
    }
    reseal(&mut b);
    let e = ModelFile::parse(&b[..]).expect_err("the planted value is refused");
    assert!(!e.to_string().contains('\n'), "{e}");
    e
}

#[test]
fn the_reader_refuses_broken_numbers_planted_in_a_valid_file() {
    for r in [[1.0, -1.0], [f64::NAN, 1.0], [-1.0, f64::INFINITY]] {
        let e = plant(&[-1.0, 1.0], &r);
        assert!(
            matches!(&e, FormatError::BadValue { what: "metadata value", detail, .. } if detail.contains("model.data_range")),
            "{r:?}: {e}"
        );
    }
    for bad in [0.0, 1.0, f64::NAN] {
        let e = plant(&[1e-4], &[bad]);
        assert!(
            matches!(&e, FormatError::BadValue { detail, .. } if detail.contains("schedule.betas[0]")),
            "{bad}: {e}"
        );
    }
}
