//! The HAProxy process: check a configuration, start a master that outlives us, ask the
//! master about its workers, reload it, and tell whether a master's process still runs
//! ([`Identity`], from `/proc`).

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

/// A process as the kernel knows it: its pid and its start time (clock ticks after boot),
/// which together never name two processes, so a recycled pid does not pass for the
/// process that had it. A master that reloads keeps both (it re-executes itself in place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub pid: u32,
    start_time: u64,
}

impl Identity {
    /// Process `pid`, if it runs now (neither gone nor a zombie). Reads `/proc/<pid>/stat`.
    pub fn of(pid: u32) -> Option<Identity> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let start_time = live_start_time(&stat)?;
        Some(Identity { pid, start_time })
    }

    /// Whether this very process still runs. A master that exited stays a zombie until its
    /// parent reaps it; after `-D` that parent is PID 1, which in some containers never
    /// does: a zombie counts as gone.
    pub fn is_running(&self) -> bool {
        Identity::of(self.pid) == Some(*self)
    }
}

/// The start time in a `/proc/<pid>/stat` line, if the process is live: its state (the
/// field after the parenthesised command name, which may itself hold spaces and
/// parentheses) is neither `Z` (zombie) nor `X` (dead). The start time is field 22.
fn live_start_time(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field 3 (the state) is the first after the name, field 22 the twentieth.
    match *fields.first()? {
        "Z" | "X" => None,
        _ => fields.get(19)?.parse().ok(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zombies_and_dead_processes_have_no_identity() {
        let tail = "1 1234 1234 0 -1 4194624 116 0 0 0 0 0 0 0 20 0 1 0 987654 1000";
        for (state, name, live) in [
            ("S", "(haproxy)", Some(987654)),
            ("R", "(haproxy)", Some(987654)),
            ("Z", "(haproxy)", None),
            ("X", "(haproxy)", None),
            ("S", "(odd) name)", Some(987654)),
            ("Z", "(odd) name)", None),
        ] {
            let stat = format!("1234 {name} {state} {tail}");
            assert_eq!(live_start_time(&stat), live, "{stat}");
        }
        assert_eq!(live_start_time("garbage"), None);
        assert_eq!(live_start_time("1234 (haproxy) S 1 1234"), None);
    }

    #[test]
    fn this_process_runs_and_a_pid_with_another_start_time_is_not_it() {
        let me = Identity::of(std::process::id()).expect("this process runs");
        assert!(me.is_running());
        let recycled = Identity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!recycled.is_running());
        assert_eq!(Identity::of(u32::MAX), None);
    }
}
