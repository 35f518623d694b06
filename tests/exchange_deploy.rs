//! deploy/exchange cannot be run here (no Exchange, no PowerShell). What can be checked is that
//! the scripts agree with mailgrip: the loop-stopping exceptions name the headers mailgrip
//! really adds and every class it can write, and each script says it was not run for real.

mod common;

use common::repo;

fn script(name: &str) -> String {
    std::fs::read_to_string(repo().join("deploy/exchange").join(name)).unwrap()
}

/// The header names mailgrip writes, taken from a real tagging run.
fn tag_headers() -> Vec<String> {
    let tags = mailgrip::tag::Tags {
        class: "functioneel".into(),
        scores: None,
        model: "m@1".into(),
        id: "abc".into(),
        action: "archive".into(),
        reason: None,
        policy: "p enforce".into(),
    };
    let (tagged, _) = mailgrip::tag::tag(b"Subject: x\r\n\r\nbody\r\n", &tags);
    let (lines, _) = common::split_tags(&tagged);
    lines.iter().map(|l| l.split(':').next().unwrap().to_string()).collect()
}

#[test]
fn the_loop_stop_uses_headers_and_classes_mailgrip_writes() {
    let online = script("online-connectors.ps1");
    let headers = tag_headers();
    for h in ["X-Mailgrip-Id", "X-Mailgrip-Class"] {
        assert!(headers.iter().any(|x| x == h), "mailgrip no longer writes {h}: {headers:?}");
    }
    assert!(online.contains(r#"-ExceptIfHeaderMatchesMessageHeader "X-Mailgrip-Id""#), "{online}");
    assert!(online.contains(r#"-ExceptIfHeaderContainsMessageHeader "X-Mailgrip-Class""#), "{online}");
    let words = online.lines().find(|l| l.contains("-ExceptIfHeaderContainsWords")).expect("class word list");
    for class in mailgrip::classify::LABELS.iter().chain(&["unclassified"]) {
        assert!(words.contains(&format!("\"{class}\"")), "the loop stop misses class {class}: {words}");
    }
    assert!(online.contains("-RouteMessageOutboundConnector \"To mailgrip\""));
    assert!(online.contains("New-OutboundConnector -Name \"To mailgrip\""));
}

#[test]
fn every_script_says_it_was_not_run_against_exchange() {
    for name in ["onprem-connectors.ps1", "online-connectors.ps1", "journal-rule.ps1"] {
        assert!(script(name).contains("NOT RUN AGAINST A REAL EXCHANGE"), "{name}");
    }
    let readme = script("README.md");
    assert!(readme.contains("**not run against a real Exchange**"), "README must say so");
    for cmdlet in [
        "New-SendConnector",
        "New-ReceiveConnector",
        "New-OutboundConnector",
        "New-InboundConnector",
        "New-TransportRule",
        "New-JournalRule",
    ] {
        let used = ["onprem-connectors.ps1", "online-connectors.ps1", "journal-rule.ps1"]
            .iter()
            .any(|s| script(s).lines().any(|l| l.trim_start().starts_with(cmdlet)));
        assert!(used, "{cmdlet} is in no script");
    }
}
