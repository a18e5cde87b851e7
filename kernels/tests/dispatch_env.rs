//! `EDADM_KERNELS` forcing a tier (its own test binary: it sets the environment).

use edadm_kernels::{DispatchError, Tier, select};

#[test]
fn edadm_kernels_forces_a_tier_or_explains_why_not() {
    let set = |v: &str| {
        // SAFETY: this binary's only test; no other thread reads the environment.
        unsafe { std::env::set_var("EDADM_KERNELS", v) };
    };
    set("ref");
    assert_eq!(select().unwrap().tier(), Tier::Reference);
    set("turbo");
    assert_eq!(select().unwrap_err(), DispatchError::Unknown("turbo".into()));
    assert!(select().unwrap_err().to_string().contains("avx512vnni"));
    for t in Tier::ALL {
        set(t.name());
        match select() {
            Ok(k) => assert_eq!(k.tier(), t),
            Err(e) => {
                assert!(!t.available() || !Tier::compiled().contains(&t));
                assert_eq!(e, DispatchError::Unavailable(t.name()));
            }
        }
    }
    set("");
    assert_eq!(select().unwrap().tier(), Tier::best());
}
