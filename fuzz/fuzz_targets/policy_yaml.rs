//! Policy YAML: accepted, or refused naming the file and a reason; never a
//! panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("/etc/portcullis/policy.yaml");
    if let Err(e) = portcullis::policy::parse(text, file) {
        assert_eq!(e.file.as_path(), file);
        assert!(!e.reason.is_empty());
        assert!(e.to_string().starts_with("/etc/portcullis/policy.yaml"));
    }
});
