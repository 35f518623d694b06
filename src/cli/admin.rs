//! `mailgrip admin hash-password`: the argon2 hash for a console user's `password_hash`.

use std::io::BufRead;

use anyhow::Context;

/// Read the password from the first line of stdin (so that it stays out of the shell history
/// and the process list) and print its PHC string.
pub fn hash_password() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        anyhow::bail!("empty password on stdin (e.g. `echo -n 'secret' | mailgrip admin hash-password`)");
    }
    let hash = crate::admin::auth::hash_password(password).map_err(anyhow::Error::msg)?;
    println!("{hash}");
    Ok(())
}
