//! Any text as a node's and as the hub's configuration file: refused
//! naming the file, or accepted.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = liaison_node::NodeConfig::parse(Path::new("/etc/liaison/node.toml"), text) {
        let shown = e.to_string();
        assert!(shown.contains("node.toml"), "{shown}");
    }
    if let Err(e) = liaison_hub::HubConfig::parse(Path::new("/etc/liaison/hub.toml"), text) {
        let shown = e.to_string();
        assert!(shown.contains("hub.toml"), "{shown}");
    }
});
