//! Fuzz the GGUF reader: any byte string either fails to open with an error, or opens into a
//! file whose every metadata value and tensor slice can be read without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qsparse::gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    let checked = GgufFile::validate_bytes(data).is_ok();
    match GgufFile::from_bytes(data.to_vec()) {
        Ok(f) => {
            assert!(checked, "validate_bytes and from_bytes disagree");
            for (key, value) in f.metadata() {
                let _ = (key.len(), value.to_json(), value.to_string(), value.to_owned_value());
            }
            for t in f.tensors() {
                assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
            }
        }
        Err(e) => {
            assert!(!checked);
            let _ = e.to_string();
        }
    }
});
