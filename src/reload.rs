//! Reload (SIGHUP): read the configuration again, load the model it names, and swap the whole
//! [`Gateway`] at once. Mail in flight finishes on the gateway it started with.
//!
//! A reload is all or nothing: if the configuration is invalid or the new model does not load
//! (missing, sha256 mismatch, ONNX Runtime refuses it), the running gateway stays, a warning says
//! why, `mailgrip_reloads_total{result="failed"}` counts it and
//! `mailgrip_config_last_reload_successful` drops to 0 until a reload succeeds.
//!
//! Listeners, TLS certificates of the SMTP listener, the audit trail, the archive outbox
//! (`[archive.smtp]`), the milter listener, the console and logging are set up once;
//! changes to those sections take effect on restart, and a reload says which ones it skipped.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Reload;
use crate::classify::Classifier;
use crate::config::Config;
use crate::pipeline::{Gateway, GatewayHandle};

pub async fn serve(mut running: Config, mut reload: Reload, handle: Arc<GatewayHandle>, shutdown: CancellationToken) {
    let m = handle.metrics.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = reload.requests.recv() => if r.is_none() { return },
        }
        info!("reload requested");
        match apply(&running, &reload, &handle).await {
            Ok(next) => {
                m.reloads.with_label_values(&["ok"]).inc();
                m.reload_ok.set(1);
                running = next;
            }
            Err(e) => {
                m.reloads.with_label_values(&["failed"]).inc();
                m.reload_ok.set(0);
                warn!(error = %e, "reload refused; the running configuration and model stay in use");
            }
        }
    }
}

async fn apply(running: &Config, reload: &Reload, handle: &GatewayHandle) -> Result<Config, String> {
    let mut next = (reload.load)()?;
    let skipped = keep_restart_only(running, &mut next);
    if !skipped.is_empty() {
        warn!(sections = %skipped.join(", "), "these sections changed but only take effect on restart");
    }
    let metrics = handle.metrics.clone();
    let model_cfg = next.model.clone();
    let classifier = tokio::task::spawn_blocking(move || Classifier::start(&model_cfg, metrics))
        .await
        .map_err(|e| format!("loading the model: {e}"))?
        .map_err(|e| format!("loading the model: {e}"))?;
    let old = handle.get();
    let gateway =
        Gateway::with_shared(&next, classifier, handle.metrics.clone(), old.audit.clone(), old.outbox.clone());
    let (new_model, new_policy) = (gateway.classifier.info().clone(), gateway.policy.version().to_string());
    let previous = handle.replace(gateway);
    let old_model = previous.classifier.info();
    if (old_model.name.as_str(), old_model.version.as_str()) != (new_model.name.as_str(), new_model.version.as_str()) {
        let _ = handle.metrics.model_info.remove_label_values(&[&old_model.name, &old_model.version]);
    }
    info!(model = %new_model.id(), sha256 = %new_model.sha256, policy = %new_policy,
          previous_model = %old_model.id(), "configuration and model reloaded");
    Ok(next)
}

/// Put the running values back into the sections that only apply at start, and name those that
/// differed.
fn keep_restart_only(running: &Config, next: &mut Config) -> Vec<&'static str> {
    let mut skipped = Vec::new();
    macro_rules! keep {
        ($($section:ident).+) => {
            if next.$($section).+ != running.$($section).+ {
                next.$($section).+ = running.$($section).+.clone();
                skipped.push(stringify!($($section).+));
            }
        };
    }
    keep!(smtp);
    keep!(metrics);
    keep!(audit);
    keep!(archive.smtp);
    keep!(milter);
    keep!(admin);
    keep!(log);
    skipped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_sections_are_kept_and_named() {
        let running = Config::default();
        let mut next = Config::default();
        next.smtp.max_recipients = 7;
        next.archive.smtp.retry_max_secs = 9;
        next.policy.mode = crate::decide::PolicyMode::Shadow;
        let skipped = keep_restart_only(&running, &mut next);
        assert_eq!(skipped, vec!["smtp", "archive.smtp"]);
        assert_eq!(next.smtp, running.smtp);
        assert_eq!(next.archive.smtp, running.archive.smtp);
        assert_eq!(next.policy.mode, crate::decide::PolicyMode::Shadow, "reloadable sections change");
    }
}
