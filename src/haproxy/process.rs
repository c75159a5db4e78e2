//! The HAProxy process: check a configuration, start a master that outlives us, ask the
//! master about its workers, and reload it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::runtime::{self, Processes};
use super::{ProxyError, Settings};

/// How long a start or a reload may take before it counts as failed.
const PATIENCE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(20);

/// `haproxy -c -f <config>`: Ok, or HAProxy's own message.
pub async fn check_config(settings: &Settings, config: &Path) -> Result<(), ProxyError> {
    let output = Command::new(&settings.haproxy)
        .arg("-c")
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| ProxyError::Spawn {
            binary: settings.haproxy.clone(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    let mut message = String::from_utf8_lossy(&output.stderr).into_owned();
    message.push_str(&String::from_utf8_lossy(&output.stdout));
    let message = message
        .lines()
        .filter(|l| l.contains("[ALERT]") || l.contains("[WARNING]") || l.contains("error"))
        .collect::<Vec<_>>()
        .join("\n");
    Err(ProxyError::Rejected {
        config: config.to_owned(),
        message: if message.is_empty() {
            format!("haproxy -c exited with {}", output.status)
        } else {
            message
        },
    })
}

/// The master's processes, or `None` when nothing answers on its socket.
pub async fn show_proc(master: &Path) -> Option<Processes> {
    let reply = runtime::send(master, "show proc").await.ok()?;
    runtime::parse_show_proc(&reply)
}

/// Starts `haproxy -W -D -S <master>,mode,600 -f <config> -p <pid>` in its own session
/// (`-D` forks and calls `setsid`; the launcher exits): the master is not our child and
/// keeps running when the daemon dies. Returns once the master answers with a worker.
pub async fn start(settings: &Settings, config: &Path) -> Result<Processes, ProxyError> {
    let master = settings
        .master_socket()
        .expect("supervised mode has a master socket");
    let log_path = settings.dir.join("haproxy.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| ProxyError::Io {
            path: log_path.clone(),
            source,
        })?;
    let log_err = log.try_clone().map_err(|source| ProxyError::Io {
        path: log_path.clone(),
        source,
    })?;
    let mut command = std::process::Command::new(&settings.haproxy);
    command
        .arg("-W")
        .arg("-D")
        .arg("-S")
        .arg(format!("{},mode,600", master.display()))
        .arg("-f")
        .arg(config)
        .arg("-p")
        .arg(settings.dir.join("haproxy.pid"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // Its own process group: a Ctrl-C or a kill of our group does not reach it.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let status = Command::from(command)
        .status()
        .await
        .map_err(|source| ProxyError::Spawn {
            binary: settings.haproxy.clone(),
            source,
        })?;
    if !status.success() {
        return Err(ProxyError::Start {
            reason: format!(
                "haproxy exited with {status}: {}",
                log_tail(&log_path).unwrap_or_default()
            ),
        });
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(processes) = show_proc(&master).await
            && processes.current_workers().next().is_some()
        {
            return Ok(processes);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ProxyError::Start {
                reason: format!(
                    "the master socket {} did not answer with a worker within {PATIENCE:?}: {}",
                    master.display(),
                    log_tail(&log_path).unwrap_or_default()
                ),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The last lines HAProxy wrote to its log, for an error message.
fn log_tail(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    Some(lines[lines.len().saturating_sub(5)..].join("\n"))
}

/// Asks the master to reload (re-read the configuration, start new workers that take the
/// listening sockets over, let the old ones finish their connections) and waits until a
/// new worker runs, or the master reports the reload failed.
pub async fn reload(master: &Path) -> Result<Processes, ProxyError> {
    let before = show_proc(master).await.ok_or_else(|| ProxyError::Reload {
        master: master.to_owned(),
        reason: "the master does not answer `show proc`".into(),
    })?;
    let old: Vec<u32> = before.workers.iter().map(|w| w.pid).collect();
    // The master re-executes itself and closes the connection without a reply.
    runtime::send(master, "reload").await?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        tokio::time::sleep(POLL).await;
        if let Some(now) = show_proc(master).await {
            if now.failed_reloads > before.failed_reloads {
                return Err(ProxyError::Reload {
                    master: master.to_owned(),
                    reason: "the master could not load the new configuration; the old \
                             workers keep serving (see haproxy.log)"
                        .into(),
                });
            }
            if now.reloads > before.reloads && now.current_workers().any(|pid| !old.contains(&pid))
            {
                return Ok(now);
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ProxyError::Reload {
                master: master.to_owned(),
                reason: format!("no new worker within {PATIENCE:?}"),
            });
        }
    }
}

/// Sends SIGTERM to the master (which stops its workers), by its pid from `show proc`.
pub async fn stop(master: &Path) -> Result<(), ProxyError> {
    let Some(processes) = show_proc(master).await else {
        return Ok(());
    };
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(processes.master_pid.to_string())
        .status()
        .await
        .map_err(|source| ProxyError::Spawn {
            binary: "kill".into(),
            source,
        })?;
    if !status.success() {
        return Err(ProxyError::Start {
            reason: format!("kill -TERM {} failed", processes.master_pid),
        });
    }
    Ok(())
}
