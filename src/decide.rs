//! Decide: turn calibrated probabilities into an action on the archive copy.
//!
//! Actions concern the archive copy only, never delivery: every message is relayed.
//!
//! - `archive`: the general archive;
//! - `archive-restricted`: a separate store with stricter access;
//! - `none`: not archived;
//! - `review`: the copy waits in the review queue until a person decides.
//!
//! The default strategy, `cost`, picks the action with the minimum expected cost under the
//! calibrated probabilities: `E[cost(a)] = Σ_c p(c) · cost[c][a]`, with the cost matrix from
//! `[policy.costs]`. Archiving private or personnel mail is a serious breach, dropping a
//! functional mail a lost record, and review carries its own cost for human effort; so a
//! confident prediction is acted on and an uncertain one goes to a person. The `classes`
//! strategy archives the most likely class when it is listed in `archive.classes`.
//!
//! In `shadow` mode the decision is tagged, logged and audited, but no copy is routed.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::classify::{LABELS, Scores};
use crate::config::ArchiveConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Archive,
    ArchiveRestricted,
    None,
    Review,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Archive, Action::ArchiveRestricted, Action::None, Action::Review];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Archive => "archive",
            Action::ArchiveRestricted => "archive-restricted",
            Action::None => "none",
            Action::Review => "review",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Route copies as decided.
    Enforce,
    /// Tag and log what would happen; route nothing (to trial a model before go-live).
    Shadow,
}

impl PolicyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Shadow => "shadow",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Minimum expected cost under `[policy.costs]`.
    Cost,
    /// Archive the most likely class when listed in `archive.classes`; otherwise none.
    Classes,
}

/// Cost of each action for mail of one true class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionCosts {
    pub archive: f64,
    pub archive_restricted: f64,
    pub none: f64,
    pub review: f64,
}

impl ActionCosts {
    const fn new(archive: f64, archive_restricted: f64, none: f64, review: f64) -> Self {
        ActionCosts { archive, archive_restricted, none, review }
    }

    pub fn get(&self, a: Action) -> f64 {
        match a {
            Action::Archive => self.archive,
            Action::ArchiveRestricted => self.archive_restricted,
            Action::None => self.none,
            Action::Review => self.review,
        }
    }
}

/// The cost matrix: true class (rows) × action (columns).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostMatrix {
    pub functioneel: ActionCosts,
    pub prive: ActionCosts,
    pub niet_functioneel: ActionCosts,
    pub personeelsvertrouwelijk: ActionCosts,
    pub partijpolitiek: ActionCosts,
}

impl Default for CostMatrix {
    /// The documented defaults (see `config/mailgrip.toml`):
    /// a lost record costs 20, a privacy breach 40–50, a review 3 (human effort), archiving mail
    /// without value 2. Restricted archiving halves a breach but is still one.
    fn default() -> Self {
        CostMatrix {
            functioneel: ActionCosts::new(0.0, 1.0, 20.0, 3.0),
            prive: ActionCosts::new(50.0, 25.0, 0.0, 3.0),
            niet_functioneel: ActionCosts::new(2.0, 2.0, 0.0, 3.0),
            personeelsvertrouwelijk: ActionCosts::new(50.0, 10.0, 0.0, 3.0),
            partijpolitiek: ActionCosts::new(40.0, 20.0, 0.0, 3.0),
        }
    }
}

impl CostMatrix {
    /// Rows in [`LABELS`] order.
    pub fn rows(&self) -> [&ActionCosts; 5] {
        [&self.functioneel, &self.prive, &self.niet_functioneel, &self.personeelsvertrouwelijk, &self.partijpolitiek]
    }

    pub fn rows_mut(&mut self) -> [&mut ActionCosts; 5] {
        [
            &mut self.functioneel,
            &mut self.prive,
            &mut self.niet_functioneel,
            &mut self.personeelsvertrouwelijk,
            &mut self.partijpolitiek,
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// `enforce` or `shadow`.
    pub mode: PolicyMode,
    /// `cost` or `classes`.
    pub strategy: Strategy,
    /// Action for mail that could not be classified.
    pub unclassified: Action,
    pub costs: CostMatrix,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            mode: PolicyMode::Enforce,
            strategy: Strategy::Cost,
            unclassified: Action::Review,
            costs: CostMatrix::default(),
        }
    }
}

/// The decision for one message, with the reason written to logs and the audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub class: String,
    pub action: Action,
    pub reason: String,
}

pub struct Policy {
    cfg: PolicyConfig,
    archive_classes: Vec<String>,
    archive_enabled: bool,
    version: String,
}

impl Policy {
    pub fn new(cfg: &PolicyConfig, archive: &ArchiveConfig) -> Policy {
        // The version names exactly the settings that decide: same settings, same version.
        let fingerprint = serde_json::to_vec(&(cfg, &archive.classes, archive.enabled)).unwrap_or_default();
        let version = format!("{}-{}", strategy_name(cfg.strategy), &hex::encode(Sha256::digest(fingerprint))[..12]);
        Policy { cfg: cfg.clone(), archive_classes: archive.classes.clone(), archive_enabled: archive.enabled, version }
    }

    /// Identifies the policy settings in headers, logs and the audit trail.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn mode(&self) -> PolicyMode {
        self.cfg.mode
    }

    /// Expected cost of each action (in [`Action::ALL`] order).
    pub fn expected_costs(costs: &CostMatrix, scores: &Scores) -> [f64; 4] {
        let rows = costs.rows();
        Action::ALL.map(|a| rows.iter().zip(scores.0).map(|(row, p)| p as f64 * row.get(a)).sum())
    }

    /// Decide for a scored message.
    pub fn decide(&self, scores: &Scores) -> Decision {
        let class = scores.label().to_string();
        if !self.archive_enabled {
            return Decision { class, action: Action::None, reason: "archive.enabled = false".into() };
        }
        match self.cfg.strategy {
            Strategy::Classes => {
                let listed = self.archive_classes.iter().any(|c| *c == class);
                let (action, reason) = if listed {
                    (Action::Archive, format!("class {class} is in archive.classes"))
                } else {
                    (Action::None, format!("class {class} is not in archive.classes"))
                };
                Decision { class, action, reason }
            }
            Strategy::Cost => {
                let (action, expected) = min_cost_action(&self.cfg.costs, scores);
                let reason = format!(
                    "min expected cost: {}",
                    Action::ALL
                        .iter()
                        .zip(expected)
                        .map(|(a, c)| format!("{}={c:.3}", a.as_str()))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                Decision { class, action, reason }
            }
        }
    }

    /// Decide for a message that could not be scored.
    pub fn unclassified(&self, why: &str) -> Decision {
        let action = if self.archive_enabled { self.cfg.unclassified } else { Action::None };
        Decision { class: "unclassified".into(), action, reason: why.to_string() }
    }
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::Cost => "cost",
        Strategy::Classes => "classes",
    }
}

/// The cheapest action; ties go to the earlier action in the order review, none,
/// archive-restricted, archive (the more careful choice wins a tie).
pub fn min_cost_action(costs: &CostMatrix, scores: &Scores) -> (Action, [f64; 4]) {
    let expected = Policy::expected_costs(costs, scores);
    let preference = [Action::Review, Action::None, Action::ArchiveRestricted, Action::Archive];
    let mut best = preference[0];
    let idx = |a: Action| Action::ALL.iter().position(|x| *x == a).unwrap();
    for a in preference {
        if expected[idx(a)] < expected[idx(best)] - 1e-12 {
            best = a;
        }
    }
    (best, expected)
}

/// Class names as used in the cost matrix rows.
pub fn class_index(class: &str) -> Option<usize> {
    LABELS.iter().position(|l| *l == class)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(&PolicyConfig::default(), &ArchiveConfig::default())
    }

    #[test]
    fn expected_costs_by_hand() {
        // p = (0.9 functioneel, 0.1 prive): archive 0.1*50 = 5; restricted 0.9*1 + 0.1*25 = 3.4;
        // none 0.9*20 = 18; review 3 -> review.
        let s = Scores([0.9, 0.1, 0.0, 0.0, 0.0]);
        let e = Policy::expected_costs(&CostMatrix::default(), &s);
        for (got, want) in e.iter().zip([5.0, 3.4, 18.0, 3.0]) {
            assert!((got - want).abs() < 1e-6, "{e:?}");
        }
        assert_eq!(policy().decide(&s).action, Action::Review);
        // p = (0.97, 0.03): archive 1.5; restricted 0.97 + 0.75 = 1.72; none 19.4; review 3 -> archive.
        assert_eq!(policy().decide(&Scores([0.97, 0.03, 0.0, 0.0, 0.0])).action, Action::Archive);
        // Confident private mail: none costs 0.98*0 + 0.02*20 = 0.4 -> none.
        assert_eq!(policy().decide(&Scores([0.02, 0.98, 0.0, 0.0, 0.0])).action, Action::None);
        // Personnel mail with some functional doubt: restricted 0.3*1 + 0.7*10 = 7.3,
        // none 0.3*20 = 6, review 3 -> review.
        assert_eq!(policy().decide(&Scores([0.3, 0.0, 0.0, 0.7, 0.0])).action, Action::Review);
    }

    #[test]
    fn restricted_wins_when_the_organisation_keeps_personnel_files() {
        let mut cfg = PolicyConfig::default();
        cfg.costs.personeelsvertrouwelijk = ActionCosts::new(50.0, 0.0, 20.0, 3.0);
        let p = Policy::new(&cfg, &ArchiveConfig::default());
        let d = p.decide(&Scores([0.02, 0.0, 0.0, 0.98, 0.0]));
        // restricted: 0.02*1 + 0 = 0.02; archive 49; none 0.4 + 19.6 = 20; review 3.
        assert_eq!(d.action, Action::ArchiveRestricted, "{}", d.reason);
        assert!(d.reason.contains("archive-restricted=0.020"), "{}", d.reason);
    }

    #[test]
    fn ties_go_to_the_careful_action() {
        let mut cfg = PolicyConfig::default();
        cfg.costs = CostMatrix {
            functioneel: ActionCosts::new(1.0, 1.0, 1.0, 1.0),
            prive: ActionCosts::new(1.0, 1.0, 1.0, 1.0),
            niet_functioneel: ActionCosts::new(1.0, 1.0, 1.0, 1.0),
            personeelsvertrouwelijk: ActionCosts::new(1.0, 1.0, 1.0, 1.0),
            partijpolitiek: ActionCosts::new(1.0, 1.0, 1.0, 1.0),
        };
        let p = Policy::new(&cfg, &ArchiveConfig::default());
        assert_eq!(p.decide(&Scores([0.2; 5])).action, Action::Review);
    }

    #[test]
    fn classes_strategy_and_switches() {
        let cfg = PolicyConfig { strategy: Strategy::Classes, ..Default::default() };
        let p = Policy::new(&cfg, &ArchiveConfig::default());
        assert_eq!(p.decide(&Scores([0.8, 0.05, 0.05, 0.05, 0.05])).action, Action::Archive);
        let d = p.decide(&Scores([0.1, 0.6, 0.1, 0.1, 0.1]));
        assert_eq!((d.class.as_str(), d.action), ("prive", Action::None));
        let off = Policy::new(&cfg, &ArchiveConfig { enabled: false, ..Default::default() });
        assert_eq!(off.decide(&Scores([0.8, 0.05, 0.05, 0.05, 0.05])).action, Action::None);
        assert_eq!(policy().unclassified("x").action, Action::Review);
        assert_ne!(p.version(), policy().version(), "different settings, different version");
        assert_eq!(policy().version(), policy().version());
    }
}
