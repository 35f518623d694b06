//! Decide: turn a classification into an action on the archive copy.
//!
//! Actions concern the archive copy only, never delivery: every message is relayed. This is the
//! class-list policy of `archive.classes`; the cost-aware policy with human review builds on it.

use serde::Serialize;

use crate::classify::Scores;
use crate::config::ArchiveConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// A copy goes to the archive store.
    Archive,
    /// Not archived.
    None,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Archive => "archive",
            Action::None => "none",
        }
    }
}

/// The decision for one message, with the reason written to the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub class: String,
    pub action: Action,
    pub reason: String,
}

pub struct Policy {
    archive_classes: Vec<String>,
    enabled: bool,
}

impl Policy {
    pub fn new(cfg: &ArchiveConfig) -> Policy {
        Policy {
            archive_classes: cfg.classes.clone(),
            enabled: cfg.enabled,
        }
    }

    /// Decide for a scored message.
    pub fn decide(&self, scores: &Scores) -> Decision {
        let class = scores.label().to_string();
        let listed = self.archive_classes.iter().any(|c| *c == class);
        let (action, reason) = match (self.enabled, listed) {
            (true, true) => (
                Action::Archive,
                format!("class {class} is in archive.classes"),
            ),
            (false, _) => (Action::None, "archive.enabled = false".to_string()),
            (true, false) => (
                Action::None,
                format!("class {class} is not in archive.classes"),
            ),
        };
        Decision {
            class,
            action,
            reason,
        }
    }

    /// Decide for a message that could not be scored: relayed, never archived automatically.
    pub fn unclassified(&self, why: &str) -> Decision {
        Decision {
            class: "unclassified".into(),
            action: Action::None,
            reason: why.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_only_listed_classes() {
        let p = Policy::new(&ArchiveConfig::default());
        assert_eq!(
            p.decide(&Scores([0.8, 0.05, 0.05, 0.05, 0.05])).action,
            Action::Archive
        );
        let d = p.decide(&Scores([0.1, 0.6, 0.1, 0.1, 0.1]));
        assert_eq!((d.class.as_str(), d.action), ("prive", Action::None));
        let off = Policy::new(&ArchiveConfig {
            enabled: false,
            ..Default::default()
        });
        assert_eq!(
            off.decide(&Scores([0.8, 0.05, 0.05, 0.05, 0.05])).action,
            Action::None
        );
        assert_eq!(p.unclassified("x").action, Action::None);
    }
}
