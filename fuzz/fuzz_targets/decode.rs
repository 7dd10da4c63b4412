//! Every decoder of stored values, on arbitrary bytes: it must return a
//! value or `Corrupted`, never panic; and a value it returns must survive
//! encoding and decoding again unchanged (so what fsck or an operation
//! rewrites is what it read).

#![no_main]

use hafs_core::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, Vec<u8>)| {
    let (which, bytes) = input;
    let bytes = bytes.as_slice();
    match which % 8 {
        0 => {
            if let Ok(a) = codec::decode_attr(7, bytes) {
                assert_eq!(codec::decode_attr(7, &codec::encode_attr(&a)).ok(), Some(a));
            }
        }
        1 => {
            if let Ok(d) = codec::decode_dirent(bytes) {
                assert_eq!(
                    codec::decode_dirent(&codec::encode_dirent(&d)).ok(),
                    Some(d)
                );
            }
        }
        2 => {
            if let Ok(s) = codec::decode_settings(bytes) {
                let again = codec::decode_settings(&codec::encode_settings(&s));
                assert_eq!(again.ok(), Some(s));
            }
        }
        3 => {
            if let Ok(c) = codec::decode_client("c", bytes) {
                let again = codec::decode_client("c", &codec::encode_client(&c));
                assert_eq!(again.ok(), Some(c));
            }
        }
        4 => {
            if let Ok(e) = codec::decode_expiry(Some(bytes)) {
                let again = codec::decode_expiry(Some(&codec::encode_expiry(e)));
                assert_eq!(again.ok(), Some(e));
            }
        }
        5 => {
            if let Ok(l) = codec::decode_lock(bytes) {
                assert_eq!(codec::decode_lock(&codec::encode_lock(&l)).ok(), Some(l));
            }
        }
        6 => {
            if let Ok(w) = codec::decode_waiter(bytes) {
                assert_eq!(
                    codec::decode_waiter(&codec::encode_waiter(&w)).ok(),
                    Some(w)
                );
            }
        }
        _ => {
            let _ = codec::decode_counter(Some(bytes));
        }
    }
});
