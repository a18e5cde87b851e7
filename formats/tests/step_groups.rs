//! The time-step table of the activation quantizers (format minor 1, `docs/FORMAT.md` §5.5a):
//! it round-trips, files without one stay minor 0, and every broken table is refused with one
//! line — by the writer and, for hostile bytes, by the reader.

mod common;

use common::*;
use edadm_format::graph::{ActQuant, StepEntry, StepGroups};
use edadm_format::{FileBuilder, FormatError, ModelFile};

/// The quantized fixture with a 3-group table: group g's steps are the record's times (g + 2).
fn with_table() -> FileBuilder<'static> {
    let mut b = tiny_model(true);
    let g = b.graph_mut();
    let mut entries = Vec::new();
    for (ni, n) in g.nodes.iter().enumerate() {
        if let Some(r) = &n.quant {
            for slot in r.act_slots() {
                let base = r.act(slot).unwrap();
                let acts = (1..3).map(|k| ActQuant { delta: base.delta * (k + 1) as f32, ..base }).collect();
                entries.push(StepEntry { node: ni as u32, slot, acts });
            }
        }
    }
    g.step_groups = Some(StepGroups { edges: vec![10.5, 400.0], entries });
    b
}

fn refused(b: &FileBuilder<'_>) -> String {
    let e = b.to_bytes().expect_err("the writer refuses the table").to_string();
    assert!(!e.contains('\n'), "{e}");
    e
}

#[test]
fn the_table_round_trips_and_marks_the_file_minor_1() {
    let b = with_table();
    let bytes = b.to_bytes().unwrap();
    let f = ModelFile::parse(&bytes[..]).unwrap();
    f.verify().unwrap();
    assert_eq!((f.header().version_major, f.header().version_minor), (1, 1));
    assert_eq!(f.graph(), b.graph());
    let s = f.graph().step_groups.as_ref().unwrap();
    assert_eq!(s.groups(), 3);
    // An edge belongs to the group above it; NaN goes to group 0.
    for (t, g) in [(0.0, 0), (10.4, 0), (10.5, 1), (399.9, 1), (400.0, 2), (999.0, 2), (f32::NAN, 0)] {
        assert_eq!(s.group_of(t), g, "t = {t}");
    }
    // Resolved per group: group 0 is the node record, groups 1.. the table.
    let (ni, n) = f.graph().nodes.iter().enumerate().find(|(_, n)| n.quant.is_some()).unwrap();
    let slot = n.quant.as_ref().unwrap().act_slots()[0];
    let all = f.graph().act_quants(ni, slot).unwrap();
    let base = n.quant.as_ref().unwrap().act(slot).unwrap();
    assert_eq!(all.iter().map(|a| a.delta / base.delta).collect::<Vec<_>>(), vec![1.0, 2.0, 3.0]);
    // Without a table the file is exactly what a minor-0 reader reads.
    let plain = tiny_model(true).to_bytes().unwrap();
    assert_eq!(ModelFile::parse(&plain[..]).unwrap().header().version_minor, 0);
}

#[test]
fn the_writer_refuses_every_broken_table() {
    type Breaks = Box<dyn Fn(&mut StepGroups)>;
    let cases: Vec<(&str, Breaks)> = vec![
        ("strictly increasing", Box::new(|s| s.edges = vec![400.0, 10.5])),
        ("finite", Box::new(|s| s.edges[1] = f32::INFINITY)),
        ("edges (1 to", Box::new(|s| s.edges.clear())),
        (
            "has no entry",
            Box::new(|s| {
                s.entries.pop();
            }),
        ),
        ("given twice", Box::new(|s| s.entries.push(s.entries[0].clone()))),
        ("no such activation quantizer", Box::new(|s| s.entries[0].slot = 7)),
        ("no such activation quantizer", Box::new(|s| s.entries[0].node = 9999)),
        (
            "quantizers for 2 groups",
            Box::new(|s| {
                s.entries[0].acts.pop();
            }),
        ),
        ("bits", Box::new(|s| s.entries[0].acts[0].bits = 4)),
        ("positive normal", Box::new(|s| s.entries[0].acts[1].delta = f32::NAN)),
        ("zero-point", Box::new(|s| s.entries[0].acts[1] = ActQuant { delta: 1.0, zero_point: 200, bits: 7 })),
    ];
    for (want, f) in cases {
        let mut b = with_table();
        f(b.graph_mut().step_groups.as_mut().unwrap());
        let e = refused(&b);
        assert!(e.contains(want) && e.contains("time-step table"), "want `{want}`: {e}");
    }
}

/// The table is the tail of the graph section: `u32` edge count, the edges, `u32` entry count,
/// entries of `node u32, slot u32, (G − 1) × 8-byte quantizer`.
#[test]
fn hostile_tables_are_refused_by_the_reader() {
    let good = with_table().to_bytes().unwrap();
    let entries = with_table().graph().step_groups.as_ref().unwrap().entries.len();
    let (off, len) = section(&good, 1);
    let table = off + len - (4 + 2 * 4 + 4 + entries * (8 + 2 * 8));
    assert_eq!(rd_u32(&good, table), 2, "edge count at the start of the table");

    let attack = |f: &dyn Fn(&mut Vec<u8>)| -> FormatError {
        let mut b = good.clone();
        f(&mut b);
        reseal(&mut b);
        let e = ModelFile::parse(&b[..]).and_then(|m| m.verify()).expect_err("refused");
        assert!(!e.to_string().contains('\n'), "{e}");
        e
    };
    // What a minor-0 reader sees: the table as trailing bytes of the graph section.
    let e = attack(&|b| wr_u16(b, 10, 0));
    assert!(matches!(e, FormatError::TrailingBytes { what: "graph section", .. }), "{e}");
    // A huge edge count: a limit, no allocation.
    let e = attack(&|b| wr_u32(b, table, 5000));
    assert!(matches!(e, FormatError::LimitExceeded { .. }), "{e}");
    // More entries than bytes.
    let e = attack(&|b| wr_u32(b, table + 12, 1 << 20));
    assert!(matches!(e, FormatError::Truncated { .. } | FormatError::LimitExceeded { .. }), "{e}");
    // Decreasing edges.
    let e = attack(&|b| b[table + 4..table + 8].copy_from_slice(&1000f32.to_le_bytes()));
    assert!(e.to_string().contains("strictly increasing"), "{e}");
    // An entry pointing at a node without quantizers.
    let e = attack(&|b| wr_u32(b, table + 16, 0));
    assert!(e.to_string().contains("time-step table"), "{e}");
}

#[test]
fn seven_bit_weights_are_minor_2_and_other_widths_are_refused() {
    // attn.q has an 8-bit record over an i8 tensor: as 5, 6 and 7 bits the file is minor 2.
    for bits in [5u8, 6, 7] {
        let mut b = tiny_model(true);
        let n = b.graph_mut().nodes.iter_mut().find(|n| n.name == "attn.q").unwrap();
        let Some(edadm_format::graph::NodeQuant::Weight(w)) = &mut n.quant else {
            panic!("attn.q has a weight record")
        };
        w.weight_bits = bits;
        let bytes = b.to_bytes().unwrap();
        let f = ModelFile::parse(&bytes[..]).unwrap();
        f.verify().unwrap();
        assert_eq!(f.header().version_minor, 2, "{bits} bits");
        assert_eq!(f.graph(), b.graph());
    }
    // 3 and 9 bits are no weight width; 7 bits over an i4 tensor is the wrong dtype.
    for (node, bits) in [("attn.q", 3u8), ("attn.q", 9), ("conv_in", 7)] {
        let mut b = tiny_model(true);
        let n = b.graph_mut().nodes.iter_mut().find(|n| n.name == node).unwrap();
        let Some(edadm_format::graph::NodeQuant::Weight(w)) = &mut n.quant else {
            panic!("{node} has a weight record")
        };
        w.weight_bits = bits;
        let e = refused(&b);
        assert!(e.contains(node) && (e.contains("weight bits") || e.contains("i8")), "{node} {bits}: {e}");
    }
}
