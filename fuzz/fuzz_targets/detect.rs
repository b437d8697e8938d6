//! Protocol detection: once the first bytes decide, more bytes never change
//! the verdict, so a peer cannot start as one protocol and turn into
//! another.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::proxy::detect::{Detected, classify};

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(256)];
    let mut decided: Option<Detected> = None;
    for n in 0..=data.len() {
        match (decided, classify(&data[..n])) {
            (Some(d), Some(now)) => assert_eq!(d, now, "prefix {:?}", &data[..n]),
            (Some(d), None) => panic!("decided {d:?}, then undecided at {:?}", &data[..n]),
            (None, now) => decided = now,
        }
    }
});
