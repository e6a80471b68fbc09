//! The Prometheus alert rules in `contrib/prometheus/`: valid for
//! `promtool check rules`, their unit tests (`promtool test rules`) pass,
//! and every rule has a summary, a runbook line and at least one test case
//! in which it fires. (tests/dashboard.rs loads the same rules into a real
//! Prometheus scraping a real hookgate.)

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/prometheus");
const RULES: &str = "hookgate-alerts.yml";
const TESTS: &str = "hookgate-alerts.test.yml";

fn promtool(args: &[&str]) -> Option<(bool, String)> {
    let promtool = require_prometheus_tool("PROMTOOL", "promtool", "alerts")?;
    let out = Command::new(promtool)
        .args(args)
        .current_dir(DIR)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

#[test]
fn rules_pass_promtool_check() {
    if let Some((ok, text)) = promtool(&["check", "rules", RULES]) {
        assert!(ok, "{text}");
        assert!(text.contains("SUCCESS"), "{text}");
    }
}

#[test]
fn rules_pass_their_unit_tests() {
    if let Some((ok, text)) = promtool(&["test", "rules", TESTS]) {
        assert!(ok, "{text}");
    }
}

/// `(alert name, the rule's text)` for every rule, in file order.
fn rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(DIR).join(RULES)).unwrap();
    let mut rules: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            rules.push((name.to_string(), String::new()));
        } else if let Some((_, body)) = rules.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    rules
}

/// Each rule says what happened (`summary`), what to check (`runbook`)
/// and how bad it is (`severity`); each is exercised by a test case that
/// expects it to fire (a non-empty `exp_alerts`).
#[test]
fn every_rule_has_annotations_and_a_firing_test() {
    let rules = rules();
    assert!(rules.len() >= 8, "{rules:?}");
    let tests = std::fs::read_to_string(Path::new(DIR).join(TESTS)).unwrap();
    for (name, body) in &rules {
        for key in ["summary: ", "description: ", "runbook: ", "severity: "] {
            assert!(body.contains(key), "{name}: no {key}");
        }
        let fires = tests.split("- eval_time:").any(|case| {
            case.contains(&format!("alertname: {name}\n")) && case.contains("exp_labels:")
        });
        assert!(fires, "{name}: no test case in {TESTS} where it fires");
    }
}
