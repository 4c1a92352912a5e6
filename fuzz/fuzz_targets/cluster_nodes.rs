//! CLUSTER NODES text and redirect replies from a node: parsed without a panic, whatever
//! the node sends.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(lines) = slotguard::cluster::nodes::parse(&text, "127.0.0.1") {
        for line in &lines {
            let _ = line.owns(0);
            let _ = line.owns(16383);
        }
    }
    let _ = slotguard::proxy::redirect::classify(data, "127.0.0.1:7000");
});
