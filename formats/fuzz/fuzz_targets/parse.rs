//! Parses arbitrary bytes as an .edq file. Whatever the input, the reader must return a value
//! or an error, never panic, never read out of bounds, never allocate without bound; and an
//! accepted file must survive verification and every accessor.
#![no_main]

use edadm_format::ModelFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = ModelFile::parse(data) else { return };
    let _ = f.verify();
    let _ = f.metadata().iter().count();
    let g = f.graph();
    for n in &g.nodes {
        for (_, t) in n.op.tensor_refs() {
            // Validation guarantees every reference resolves.
            assert!(f.tensor(t).is_some());
        }
    }
    for t in f.tensors() {
        let _ = (t.numel(), t.as_f32(), t.as_f16(), t.as_i8(), t.as_u8(), t.as_i32(), t.as_i4_packed());
        assert_eq!(f.tensor_by_name(t.name).map(|x| x.id), Some(t.id));
        let _ = t.verify();
    }
});
