//! One attack per validation rule. Mutations inside sections are re-sealed (section and header
//! checksums recomputed) so that the structural checks, not the checksums, must catch them;
//! the byte positions come from the layout in `docs/FORMAT.md`, so these tests also pin the
//! spec.

mod common;

use common::*;
use edadm_format::{FormatError, GraphProblem, ModelFile, Section, TensorProblem};

fn valid(quantized: bool) -> Vec<u8> {
    tiny_model(quantized).to_bytes().unwrap()
}

fn parse_all(b: &[u8]) -> Result<(), FormatError> {
    let f = ModelFile::parse(b)?;
    f.verify()
}

/// Applies `f` to a copy of the quantized fixture, re-seals, and returns the parse error.
fn attack(f: impl FnOnce(&mut Vec<u8>)) -> FormatError {
    let mut b = valid(true);
    f(&mut b);
    reseal(&mut b);
    match parse_all(&b) {
        Err(e) => {
            // Every error renders as one line.
            assert!(!e.to_string().contains('\n'), "{e}");
            e
        }
        Ok(()) => panic!("the mutated file was accepted"),
    }
}

/// The `u32` length prefix position of tensor `name`'s entry and the offset of its fixed fields.
fn tensor_entry(b: &[u8], name: &str) -> (usize, usize) {
    let at = find_str(b, 2, name);
    (at, at + 4 + name.len())
}

/// Position of node `name`'s fixed fields (op code first).
fn node_fields(b: &[u8], name: &str) -> usize {
    rfind_str(b, 1, name) + 4 + name.len()
}

/// Position of the attribute-record length of node `name` (after its input list).
fn node_attrs(b: &[u8], name: &str) -> usize {
    let p = node_fields(b, name);
    let n = rd_u32(b, p + 12) as usize;
    p + 16 + 4 * n
}

// ---- truncation -------------------------------------------------------------------------

const HEADER_FIELDS: [usize; 24] =
    [0, 8, 10, 12, 16, 20, 24, 32, 40, 48, 52, 56, 64, 72, 76, 80, 88, 96, 100, 104, 112, 120, 124, 128];

#[test]
fn truncation_at_every_header_field_boundary() {
    let b = valid(false);
    for w in HEADER_FIELDS.windows(2) {
        let (start, end) = (w[0], w[1]);
        for cut in [start, start + 1, end - 1] {
            if cut >= end {
                continue;
            }
            let e = ModelFile::parse(&b[..cut]).unwrap_err();
            // Magic checks need all 8 bytes; every other field is reported where it starts.
            let expect_at = start as u64;
            assert!(
                matches!(e, FormatError::Truncated { what: "header", offset, have, .. }
                    if offset == expect_at && have == (cut - start) as u64),
                "cut at {cut}: {e}"
            );
        }
    }
    // A complete header with the rest missing: the declared length disagrees.
    let e = ModelFile::parse(&b[..128]).unwrap_err();
    assert_eq!(e, FormatError::FileLength { declared: b.len() as u64, actual: 128 });
}

#[test]
fn every_truncation_is_an_error() {
    for quantized in [false, true] {
        let b = valid(quantized);
        for len in 0..b.len() {
            assert!(parse_all(&b[..len]).is_err(), "prefix of {len} bytes accepted");
        }
        assert!(parse_all(&b).is_ok());
    }
}

// ---- single flipped bytes: every byte of a file is covered -------------------------------

#[test]
fn a_flipped_byte_anywhere_is_caught_by_the_check_that_covers_it() {
    let b = valid(true);
    let f = ModelFile::parse(&b).unwrap();
    let h = *f.header();
    let mut tensor_bytes = vec![false; b.len()];
    for t in f.tensors() {
        let s = t.file_offset as usize;
        tensor_bytes[s..s + t.data.len()].iter_mut().for_each(|x| *x = true);
    }
    drop(f);
    for i in 0..b.len() {
        let mut m = b.clone();
        m[i] ^= 0x5a;
        let e = parse_all(&m).unwrap_err();
        let i64_ = i as u64;
        let in_section = |s: edadm_format::SectionInfo| i64_ >= s.offset && i64_ < s.end();
        let ok = match i {
            0..=7 => matches!(e, FormatError::BadMagic { .. }),
            8..=9 => matches!(e, FormatError::UnsupportedVersion { supported: 1, .. }),
            12..=15 => matches!(e, FormatError::BadByteOrderMark { .. }),
            16..=19 => matches!(e, FormatError::BadHeaderSize { .. }),
            10..=11 | 20..=127 => matches!(e, FormatError::HeaderChecksum { .. }),
            _ if in_section(h.metadata) => matches!(e, FormatError::SectionChecksum { section: Section::Metadata, .. }),
            _ if in_section(h.graph) => matches!(e, FormatError::SectionChecksum { section: Section::Graph, .. }),
            _ if in_section(h.tensors) => matches!(e, FormatError::SectionChecksum { section: Section::Tensors, .. }),
            _ if tensor_bytes[i] => matches!(e, FormatError::TensorChecksum { .. }),
            _ => matches!(e, FormatError::ReservedNonZero { offset, .. } if offset == i64_),
        };
        assert!(ok, "byte {i}: {e}");
        assert!(e.offset().is_some(), "byte {i}: errors name an offset");
    }
}

#[test]
fn random_corruption_never_panics() {
    let base = [valid(false), valid(true)];
    let mut rng = Rng::new(7);
    for round in 0..3000 {
        let mut b = base[round % 2].clone();
        let n = 1 + rng.next() % 8;
        for _ in 0..n {
            let i = (rng.next() % b.len() as u64) as usize;
            b[i] = (rng.next() >> 56) as u8;
        }
        if round % 3 == 0 {
            let cut = (rng.next() % b.len() as u64) as usize;
            b.truncate(cut.max(1));
        }
        if round % 2 == 0 && b.len() >= 128 {
            reseal(&mut b);
        }
        if let Ok(f) = ModelFile::parse(&b) {
            let _ = f.verify();
            for t in f.tensors() {
                let _ = (t.as_f32(), t.as_i8(), t.numel());
            }
        }
    }
}

// ---- the header ---------------------------------------------------------------------------

#[test]
fn unknown_major_version_is_rejected_with_found_and_supported() {
    let e = attack(|b| wr_u16(b, 8, 2));
    assert!(matches!(e, FormatError::UnsupportedVersion { found_major: 2, found_minor: 0, supported: 1 }), "{e}");
    assert!(e.to_string().contains("2.0") && e.to_string().contains("major version 1"), "{e}");
}

#[test]
fn a_newer_minor_version_is_read() {
    let mut b = valid(true);
    wr_u16(&mut b, 10, 9);
    reseal(&mut b);
    assert_eq!(ModelFile::parse(&b).unwrap().header().version_minor, 9);
}

#[test]
fn wrong_byte_order_is_named() {
    let e = attack(|b| b[12..16].reverse());
    assert!(matches!(e, FormatError::WrongByteOrder { found: 0x0403_0201 }), "{e}");
    let e = attack(|b| wr_u32(b, 12, 0x1234_5678));
    assert!(matches!(e, FormatError::BadByteOrderMark { found: 0x1234_5678 }), "{e}");
}

#[test]
fn header_size_alignment_and_length_fields() {
    assert!(matches!(attack(|b| wr_u32(b, 16, 64)), FormatError::BadHeaderSize { found: 64, expected: 128 }));
    for a in [0, 32, 96, 1 << 21] {
        let e = attack(|b| wr_u32(b, 20, a));
        assert!(matches!(e, FormatError::BadAlignment { found, .. } if found == a), "{e}");
    }
    let e = attack(|b| {
        let l = rd_u64(b, 24);
        wr_u64(b, 24, l + 1)
    });
    assert!(matches!(e, FormatError::FileLength { .. }), "{e}");
    let e = attack(|b| b[53] = 1);
    assert_eq!(e, FormatError::ReservedNonZero { offset: 53, found: 1 });
    let e = attack(|b| b[121] = 3);
    assert_eq!(e, FormatError::ReservedNonZero { offset: 121, found: 3 });
}

#[test]
fn header_checksum_mismatch() {
    let mut b = valid(false);
    b[100] ^= 1;
    assert!(matches!(ModelFile::parse(&b), Err(FormatError::HeaderChecksum { .. })));
}

// ---- section table ------------------------------------------------------------------------

#[test]
fn overlapping_sections() {
    let e = attack(|b| {
        let meta_off = rd_u64(b, section_field(0));
        wr_u64(b, section_field(1), meta_off);
    });
    assert!(matches!(e, FormatError::SectionOverlap { a: Section::Metadata, b: Section::Graph, .. }), "{e}");
}

#[test]
fn misaligned_sections() {
    let e = attack(|b| {
        let off = rd_u64(b, section_field(1));
        wr_u64(b, section_field(1), off + 4);
    });
    assert!(matches!(e, FormatError::SectionMisaligned { section: Section::Graph, align: 8, .. }), "{e}");
    let e = attack(|b| {
        let (off, len) = (rd_u64(b, 104), rd_u64(b, 112));
        wr_u64(b, 104, off + 8);
        wr_u64(b, 112, len - 8);
    });
    assert!(matches!(e, FormatError::SectionMisaligned { section: Section::Data, align: 64, .. }), "{e}");
}

#[test]
fn sections_out_of_bounds() {
    let e = attack(|b| {
        let len = rd_u64(b, section_field(2) + 8);
        wr_u64(b, section_field(2) + 8, len + 4096);
    });
    assert!(matches!(e, FormatError::SectionBounds { section: Section::Tensors, .. }), "{e}");
    let e = attack(|b| wr_u64(b, section_field(0) + 8, u64::MAX - 64));
    assert!(matches!(e, FormatError::LimitExceeded { what: "section length", .. }), "{e}");
    let e = attack(|b| wr_u64(b, section_field(0), 64));
    assert!(matches!(e, FormatError::SectionBounds { section: Section::Metadata, min: 128, .. }), "{e}");
    let e = attack(|b| {
        let len = rd_u64(b, 112);
        wr_u64(b, 112, len - 64);
    });
    assert!(matches!(e, FormatError::SectionBounds { section: Section::Data, .. }), "{e}");
}

#[test]
fn nonzero_padding_between_sections() {
    let b = valid(true);
    let data_offset = rd_u64(&b, 104) as usize;
    let in_section = |i: usize| {
        (0..3).any(|s| {
            let (off, len) = section(&b, s);
            (off..off + len).contains(&i)
        })
    };
    let pad = (128..data_offset).find(|&i| !in_section(i)).expect("the fixture has padding before the data");
    let e = attack(|b| b[pad] = 0xee);
    assert_eq!(e, FormatError::ReservedNonZero { offset: pad as u64, found: 0xee });
}

// ---- metadata -----------------------------------------------------------------------------

#[test]
fn huge_metadata_count() {
    let e = attack(|b| {
        let (off, _) = section(b, 0);
        wr_u32(b, off, u32::MAX);
    });
    assert!(matches!(e, FormatError::LimitExceeded { what: "metadata entry count", .. }), "{e}");
    let e = attack(|b| {
        let (off, _) = section(b, 0);
        wr_u32(b, off, 60_000);
    });
    assert!(matches!(e, FormatError::Truncated { what: "metadata section", .. }), "{e}");
}

#[test]
fn bad_metadata_values() {
    // A boolean byte that is neither 0 nor 1.
    let e = attack(|b| {
        let at = find_str(b, 0, "test.bools") + 4 + "test.bools".len();
        assert_eq!((b[at], b[at + 1]), (5, 3), "array of bools");
        b[at + 6] = 2;
    });
    assert!(matches!(e, FormatError::BadValue { what: "metadata boolean", .. }), "{e}");
    // A registered key with the wrong type.
    let e = attack(|b| {
        let at = find_str(b, 0, "schedule.timesteps") + 4 + "schedule.timesteps".len();
        assert_eq!(b[at], 0, "u64");
        b[at] = 1;
    });
    assert!(matches!(e, FormatError::BadValue { what: "metadata value", .. }), "{e}");
    // An unknown value type.
    let e = attack(|b| {
        let at = find_str(b, 0, "test.i64") + 4 + "test.i64".len();
        b[at] = 42;
    });
    assert!(matches!(e, FormatError::UnknownCode { what: "metadata value type", code: 42, .. }), "{e}");
    // A duplicate key.
    let e = attack(|b| {
        let at = find_str(b, 0, "model.family");
        b[at + 4..at + 4 + 12].copy_from_slice(b"model.config");
    });
    assert!(matches!(e, FormatError::DuplicateName { what: "metadata key", .. }), "{e}");
    // Invalid UTF-8 in a string value.
    let e = attack(|b| {
        let at = find_str(b, 0, "model.family") + 4 + 12;
        b[at + 5] = 0xff;
    });
    assert!(matches!(e, FormatError::InvalidUtf8 { what: "metadata string", .. }), "{e}");
}

// ---- tensor table -------------------------------------------------------------------------

#[test]
fn huge_tensor_counts_and_lengths() {
    let e = attack(|b| {
        let (off, _) = section(b, 2);
        wr_u32(b, off, u32::MAX);
    });
    assert!(matches!(e, FormatError::LimitExceeded { what: "tensor count", .. }), "{e}");
    let e = attack(|b| {
        let (off, _) = section(b, 2);
        wr_u32(b, off, 100_000);
    });
    assert!(matches!(e, FormatError::Truncated { what: "tensor table", .. }), "{e}");
    let e = attack(|b| {
        let (at, _) = tensor_entry(b, "conv_in.weight");
        wr_u32(b, at, 0xffff_fff0);
    });
    assert!(matches!(e, FormatError::LimitExceeded { what: "tensor name", .. }), "{e}");
    let e = attack(|b| {
        let (_, p) = tensor_entry(b, "conv_in.weight");
        b[p + 1] = 200;
    });
    assert!(matches!(e, FormatError::LimitExceeded { what: "tensor rank", value: 200, .. }), "{e}");
}

#[test]
fn overlapping_tensor_data() {
    let e = attack(|b| {
        let (_, a) = tensor_entry(b, "conv_in.weight");
        let (_, c) = tensor_entry(b, "conv_in.bias");
        let off = rd_u64(b, a + 8);
        wr_u64(b, c + 8, off);
    });
    assert!(matches!(e, FormatError::Tensor { problem: TensorProblem::Overlap { .. }, .. }), "{e}");
}

#[test]
fn misaligned_tensor_data() {
    let e = attack(|b| {
        let (_, p) = tensor_entry(b, "conv_in.bias");
        let off = rd_u64(b, p + 8);
        wr_u64(b, p + 8, off + 8);
    });
    assert!(
        matches!(e, FormatError::Tensor { problem: TensorProblem::Misaligned { align: 64, .. }, ref name, .. } if name == "conv_in.bias"),
        "{e}"
    );
}

#[test]
fn tensor_data_out_of_bounds() {
    let e = attack(|b| {
        let (_, p) = tensor_entry(b, "conv_in.bias");
        let data_len = rd_u64(b, 112);
        wr_u64(b, p + 8, data_len.next_multiple_of(64));
    });
    assert!(matches!(e, FormatError::Tensor { problem: TensorProblem::OutOfBounds { .. }, .. }), "{e}");
    let e = attack(|b| {
        let (_, p) = tensor_entry(b, "conv_in.bias");
        wr_u64(b, p + 8, u64::MAX - 63);
    });
    assert!(matches!(e, FormatError::Tensor { problem: TensorProblem::OutOfBounds { .. }, .. }), "{e}");
}

#[test]
fn dtype_times_shape_must_equal_length() {
    let e = attack(|b| {
        let (_, p) = tensor_entry(b, "conv_in.bias");
        wr_u64(b, p + 24, 5); // shape [4] -> [5]
    });
    assert!(
        matches!(
            e,
            FormatError::Tensor { problem: TensorProblem::LengthMismatch { expected: 20, length: 16, .. }, .. }
        ),
        "{e}"
    );
    let e = attack(|b| {
        let (_, p) = tensor_entry(b, "conv_in.weight");
        for d in 0..4 {
            wr_u64(b, p + 24 + 8 * d, 1 << 40);
        }
    });
    assert!(matches!(e, FormatError::Tensor { problem: TensorProblem::ShapeOverflow { .. }, .. }), "{e}");
    let e = attack(|b| {
        let (_, p) = tensor_entry(b, "conv_in.bias");
        b[p] = 9;
    });
    assert!(matches!(e, FormatError::UnknownCode { what: "dtype", code: 9, .. }), "{e}");
}

#[test]
fn tensor_names_must_be_unique_utf8() {
    let e = attack(|b| {
        let (at, _) = tensor_entry(b, "attn.k.bias");
        b[at + 4..at + 4 + 11].copy_from_slice(b"attn.q.bias");
    });
    assert!(
        matches!(e, FormatError::DuplicateName { what: "tensor name", ref name, .. } if name == "attn.q.bias"),
        "{e}"
    );
    let e = attack(|b| {
        let (at, _) = tensor_entry(b, "attn.k.bias");
        b[at + 4] = 0xc3; // a lead byte followed by ASCII
    });
    assert!(matches!(e, FormatError::InvalidUtf8 { what: "tensor name", .. }), "{e}");
}

#[test]
fn reserved_bytes_in_tensor_entries() {
    let e = attack(|b| {
        let (_, p) = tensor_entry(b, "conv_in.bias");
        b[p + 3] = 1;
    });
    assert!(matches!(e, FormatError::ReservedNonZero { .. }), "{e}");
}

#[test]
fn tensor_checksums_are_verified_on_demand() {
    let mut b = valid(true);
    let f = ModelFile::parse(&b).unwrap();
    let t = f.tensor_by_name("attn.v.weight").unwrap();
    let (at, id) = (t.file_offset as usize, t.id);
    drop(f);
    b[at] ^= 0x80;
    let f = ModelFile::parse(&b).expect("data is not read at parse time");
    let e = f.verify().unwrap_err();
    assert!(matches!(e, FormatError::TensorChecksum { ref name, .. } if name == "attn.v.weight"), "{e}");
    assert!(f.tensor(id).unwrap().verify().is_err());
}

// ---- graph --------------------------------------------------------------------------------

fn graph_problem(e: &FormatError) -> &GraphProblem {
    match e {
        FormatError::Graph { problem, .. } => problem,
        _ => panic!("not a graph error: {e}"),
    }
}

#[test]
fn huge_graph_counts() {
    let e = attack(|b| {
        let (off, _) = section(b, 1);
        wr_u32(b, off, u32::MAX);
    });
    assert!(matches!(e, FormatError::LimitExceeded { what: "value count", .. }), "{e}");
    let e = attack(|b| {
        let at = find_str(b, 1, "temb.sinusoid");
        wr_u32(b, at - 4, u32::MAX);
    });
    assert!(matches!(e, FormatError::LimitExceeded { what: "node count", .. }), "{e}");
    let e = attack(|b| {
        let p = node_fields(b, "up.concat");
        wr_u32(b, p + 12, 1_000_000);
    });
    assert!(matches!(e, FormatError::LimitExceeded { what: "node input count", .. }), "{e}");
    let e = attack(|b| {
        let p = node_attrs(b, "attn.q");
        let attr_len = rd_u32(b, p) as usize;
        let q = p + 4 + attr_len + 4; // quantization record body
        assert_eq!(b[q], 8, "8-bit weights");
        b[q + 1] = 255;
    });
    assert!(matches!(e, FormatError::LimitExceeded { what: "quantization group count", .. }), "{e}");
}

#[test]
fn dangling_value_references() {
    let e = attack(|b| {
        let p = node_fields(b, "block.conv1");
        wr_u32(b, p + 16, 9999);
    });
    assert!(matches!(graph_problem(&e), GraphProblem::ValueOutOfRange { value: 9999, .. }), "{e}");
    assert!(e.to_string().contains("block.conv1"), "{e}");
    let e = attack(|b| {
        let p = node_fields(b, "block.conv1");
        let later = rd_u32(b, node_fields(b, "conv_out") + 8);
        wr_u32(b, p + 16, later);
    });
    assert!(matches!(graph_problem(&e), GraphProblem::UseBeforeDefinition { .. }), "{e}");
    let e = attack(|b| {
        let p = node_fields(b, "block.conv1");
        wr_u32(b, p + 8, 0); // redefine the input x
    });
    assert!(matches!(graph_problem(&e), GraphProblem::RedefinedValue { value: 0 }), "{e}");
    let e = attack(|b| {
        // Point the graph output at a value that does not exist.
        let at = find_str(b, 1, "temb.dense.0") - 4 /* unit count */ - 4 /* prediction */ - 4;
        wr_u32(b, at, 4242);
    });
    assert!(matches!(graph_problem(&e), GraphProblem::Interface(_)), "{e}");
}

#[test]
fn dangling_tensor_references() {
    let e = attack(|b| {
        let a = node_attrs(b, "conv_in");
        wr_u32(b, a + 4 + 13 * 4, 777); // weight
    });
    assert!(matches!(graph_problem(&e), GraphProblem::TensorOutOfRange { role: "weight", tensor: 777, .. }), "{e}");
    let e = attack(|b| {
        let a = node_attrs(b, "conv_in");
        let file = valid(true);
        let u8_tensor = ModelFile::parse(&file).unwrap().tensor_by_name("extra.u8").unwrap().id.0;
        wr_u32(b, a + 4 + 14 * 4, u8_tensor); // bias -> a u8 tensor
    });
    assert!(matches!(graph_problem(&e), GraphProblem::TensorDType { role: "bias", .. }), "{e}");
    let e = attack(|b| {
        let a = node_attrs(b, "conv_in");
        let other = rd_u32(b, node_attrs(b, "conv_out") + 4 + 13 * 4);
        wr_u32(b, a + 4 + 13 * 4, other); // an i8 weight of another shape on a 4-bit conv
    });
    assert!(matches!(graph_problem(&e), GraphProblem::TensorDType { role: "weight", .. }), "{e}");
}

#[test]
fn units_must_exist_and_follow_forward_order() {
    let e = attack(|b| {
        let p = node_fields(b, "block.conv1");
        wr_u32(b, p + 4, 99);
    });
    assert!(matches!(graph_problem(&e), GraphProblem::UnitOutOfRange { unit: 99, count: 7 }), "{e}");
    let e = attack(|b| {
        let p = node_fields(b, "attn.q");
        wr_u32(b, p + 4, 0);
    });
    assert!(matches!(graph_problem(&e), GraphProblem::UnitOrder { unit: 0, previous: 3 }), "{e}");
}

#[test]
fn unknown_codes_and_bad_attributes() {
    let e = attack(|b| {
        let p = node_fields(b, "block.act1");
        wr_u16(b, p, 99);
    });
    assert!(matches!(e, FormatError::UnknownCode { what: "op", code: 99, .. }), "{e}");
    let e = attack(|b| {
        let p = node_fields(b, "block.act1");
        wr_u16(b, p + 2, 7);
    });
    assert!(matches!(e, FormatError::UnknownCode { what: "quantization record kind", .. }), "{e}");
    let e = attack(|b| {
        let a = node_attrs(b, "block.norm1");
        wr_u32(b, a + 4, 3); // 3 groups over 4 channels
    });
    assert!(matches!(graph_problem(&e), GraphProblem::BadAttribute { attr: "groups", .. }), "{e}");
    let e = attack(|b| {
        let a = node_attrs(b, "conv_in");
        wr_u32(b, a + 4 + 4 * 4, 0); // stride 0
    });
    assert!(matches!(graph_problem(&e), GraphProblem::BadAttribute { attr: "stride", .. }), "{e}");
    let e = attack(|b| {
        let a = node_attrs(b, "block.norm1");
        b[a + 4 + 8..a + 4 + 12].copy_from_slice(&f32::NAN.to_le_bytes()); // eps
    });
    assert!(matches!(graph_problem(&e), GraphProblem::BadAttribute { attr: "eps", .. }), "{e}");
    let e = attack(|b| {
        let p = node_fields(b, "block.temb_add");
        // Add with one input: the stale second input id now reads as the attribute length.
        wr_u32(b, p + 12, 1);
    });
    assert!(
        matches!(e, FormatError::Truncated { .. } | FormatError::TrailingBytes { .. } | FormatError::Graph { .. }),
        "{e}"
    );
}

#[test]
fn record_lengths_must_match_their_contents() {
    let e = attack(|b| {
        let a = node_attrs(b, "up.upsample");
        assert_eq!(rd_u32(b, a), 4);
        wr_u32(b, a, 0);
    });
    assert!(matches!(e, FormatError::Truncated { what: "node attribute record", .. }), "{e}");
    // One node less than declared leaves trailing bytes.
    let e = attack(|b| {
        let at = find_str(b, 1, "temb.sinusoid") - 4;
        let n = rd_u32(b, at);
        wr_u32(b, at, n - 1);
    });
    assert!(matches!(e, FormatError::TrailingBytes { what: "graph section", .. }), "{e}");
}

#[test]
fn malformed_quantization_records() {
    let quant_body = |b: &[u8], node: &str| {
        let p = node_attrs(b, node);
        p + 4 + rd_u32(b, p) as usize + 4
    };
    let e = attack(|b| {
        let q = quant_body(b, "attn.q");
        b[q] = 9;
    });
    assert!(matches!(graph_problem(&e), GraphProblem::Quant(m) if m.contains("weight bits 9")), "{e}");
    // 5 to 7 bits exist from minor 2 on: in this minor-0 file they are refused.
    let e = attack(|b| {
        let q = quant_body(b, "attn.q");
        b[q] = 7;
    });
    assert!(
        matches!(graph_problem(&e), GraphProblem::Quant(m) if m.contains("weight bits 7: needs format minor 2")),
        "{e}"
    );
    let e = attack(|b| {
        let q = quant_body(b, "attn.q");
        // group 0: start, scales, flag, then delta (f32), zp, bits
        b[q + 4 + 12 + 5] = 0;
    });
    assert!(matches!(graph_problem(&e), GraphProblem::Quant(m) if m.contains("bits 0")), "{e}");
    let e = attack(|b| {
        let q = quant_body(b, "attn.attention");
        b[q + 8 * 3 + 4] = 200; // prob zero-point
        b[q + 8 * 3 + 5] = 4; // with 4 bits
    });
    assert!(matches!(graph_problem(&e), GraphProblem::Quant(m) if m.contains("zero-point 200")), "{e}");
    let e = attack(|b| {
        let q = quant_body(b, "attn.q");
        b[q + 4 + 12..q + 4 + 16].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert!(matches!(graph_problem(&e), GraphProblem::Quant(m) if m.contains("step")), "{e}");
    // A subnormal step: finite and positive, but 1/Δ overflows.
    let e = attack(|b| {
        let q = quant_body(b, "attn.q");
        b[q + 4 + 12..q + 4 + 16].copy_from_slice(&1e-40f32.to_le_bytes());
    });
    assert!(matches!(graph_problem(&e), GraphProblem::Quant(m) if m.contains("positive normal")), "{e}");
    let e = attack(|b| {
        let q = quant_body(b, "up.skip");
        wr_u32(b, q + 4 + 20, 8); // second group starting at the input channel count
    });
    assert!(matches!(graph_problem(&e), GraphProblem::Quant(m) if m.contains("group 1")), "{e}");
    let e = attack(|b| {
        let q = quant_body(b, "up.skip");
        wr_u32(b, q + 4 + 20 + 8, 0); // second group's input quantizer flag off
        b[q + 4 + 20 + 12..q + 4 + 20 + 20].fill(0);
    });
    assert!(matches!(graph_problem(&e), GraphProblem::Quant(m) if m.contains("every group")), "{e}");
}

#[test]
fn node_names_must_be_unique() {
    let e = attack(|b| {
        let at = rfind_str(b, 1, "attn.k");
        b[at + 4 + 5] = b'q';
    });
    assert!(matches!(e, FormatError::DuplicateName { what: "node name", ref name, .. } if name == "attn.q"), "{e}");
}
