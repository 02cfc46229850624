//! Any bytes given to the checkpoint decoder give a checkpoint or a typed `Corrupt`
//! error naming the file: never a panic.
#![no_main]

use std::path::Path;

use batchstream::CheckpointError;
use batchstream::checkpoint::FileCheckpointStore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.ckpt");
    match FileCheckpointStore::decode(path, data) {
        Ok(_) => {}
        Err(CheckpointError::Corrupt { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(!reason.is_empty());
        }
        Err(other) => panic!("decoding bytes gave a non-Corrupt error: {other}"),
    }
});
