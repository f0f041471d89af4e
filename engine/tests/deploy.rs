//! The files in `deploy/` stay valid: the sample configuration parses with the service's own
//! parser and matches the one compiled into the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use gatehouse_engine::server::{ServeConfig, SAMPLE_CONFIG};

#[test]
fn the_deployed_sample_config_parses_and_matches_the_built_in_one() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gatehouse.toml");
    let text = std::fs::read_to_string(&path).expect("deploy/gatehouse.toml");
    assert_eq!(
        text, SAMPLE_CONFIG,
        "deploy/gatehouse.toml differs from server::SAMPLE_CONFIG"
    );
    ServeConfig::parse(&path, &text).unwrap();
}

#[test]
fn a_wrong_field_is_named_in_the_error() {
    let bad = SAMPLE_CONFIG.replace("backend = \"ring\"", "backend = \"openssl\"");
    let e = ServeConfig::parse(Path::new("gatehouse.toml"), &bad).unwrap_err();
    assert!(e.to_string().contains("engine.backend"), "{e}");
}
