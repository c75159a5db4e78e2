//! HAProxy's Runtime API and master CLI over unix sockets: one command per connection
//! (write the command, shut the write side, read the reply to the end), and the parsers of
//! the replies we use (`show proc`, `show stat`).
//!
//! Every error names the socket and the command.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

use super::ProxyError;

/// How long one command may take, connect to last byte.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one command and returns HAProxy's reply, whatever it says.
pub async fn send(socket: &Path, command: &str) -> Result<String, ProxyError> {
    let io_error = |source: std::io::Error| ProxyError::Socket {
        socket: socket.to_owned(),
        command: command.to_owned(),
        source,
    };
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await.map_err(io_error)?;
        stream
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(io_error)?;
        stream.shutdown().await.map_err(io_error)?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.map_err(io_error)?;
        Ok(String::from_utf8_lossy(&reply).into_owned())
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err(io_error(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no reply within {COMMAND_TIMEOUT:?}"),
        ))),
    }
}

/// One argument of a Runtime API command, escaped so that HAProxy reads it as exactly one
/// word with exactly this text.
///
/// HAProxy's CLI (management guide, "Unix Socket commands") splits a line into commands at
/// `;` and a command into words at spaces and tabs; a line ending in `<<` starts a payload;
/// a backslash makes the next character literal and is removed. So every ASCII character
/// other than letters, digits and `/ . _ - : @ % = + ,` gets a backslash in front of it. A
/// line break or any other control character but the tab cannot be carried at all (it ends
/// the line whatever precedes it); it is replaced by U+FFFD, so such an argument names
/// nothing that exists.
/// The validator refuses all of these in spec values already; this is the second line of
/// defence.
pub fn escape(argument: &str) -> String {
    let mut escaped = String::with_capacity(argument.len());
    for c in argument.chars() {
        if c.is_control() && c != '\t' {
            escaped.push(char::REPLACEMENT_CHARACTER);
            continue;
        }
        let plain = c.is_ascii_alphanumeric() || "/._-:@%=+,".contains(c) || !c.is_ascii();
        if !plain {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The Runtime API commands the adapter uses, spelled in one place. Every argument goes
/// through [`escape`].
pub mod command {
    use std::path::Path;

    use super::escape;

    fn path(file: &Path) -> String {
        escape(&file.to_string_lossy())
    }

    /// `set map <file> <key> <value>`: change the value of an existing key.
    pub fn set_map(file: &Path, key: &str, value: &str) -> String {
        format!("set map {} {} {}", path(file), escape(key), escape(value))
    }

    /// `add map <file> <key> <value>`: append an entry (it goes last, so a prefix map's
    /// longest-first order is not kept: the adapter reloads for new routes instead).
    pub fn add_map(file: &Path, key: &str, value: &str) -> String {
        format!("add map {} {} {}", path(file), escape(key), escape(value))
    }

    /// `del map <file> <key>`.
    pub fn del_map(file: &Path, key: &str) -> String {
        format!("del map {} {}", path(file), escape(key))
    }

    /// `show map <file>`.
    pub fn show_map(file: &Path) -> String {
        format!("show map {}", path(file))
    }

    /// `set server <backend>/<server> addr <ip> port <port>`.
    pub fn set_server_addr(backend: &str, server: &str, address: &str, port: u16) -> String {
        format!(
            "set server {}/{} addr {} port {port}",
            escape(backend),
            escape(server),
            escape(address)
        )
    }

    /// `set server <backend>/<server> health down`: a server that gets a new replica counts
    /// as DOWN until its check passes (HAProxy would otherwise take it for UP, unchecked).
    pub fn set_server_health_down(backend: &str, server: &str) -> String {
        format!(
            "set server {}/{} health down",
            escape(backend),
            escape(server)
        )
    }

    /// `set server <backend>/<server> state ready|drain|maint`.
    pub fn set_server_state(
        backend: &str,
        server: &str,
        state: super::super::ServerState,
    ) -> String {
        format!(
            "set server {}/{} state {}",
            escape(backend),
            escape(server),
            state.as_str()
        )
    }

    /// `set weight <backend>/<server> <weight>`: the server's share of its backend's
    /// requests (0 to 256; the split backend of a canary).
    pub fn set_weight(backend: &str, server: &str, weight: u32) -> String {
        format!("set weight {}/{} {weight}", escape(backend), escape(server))
    }

    /// `show servers state [<backend>]`.
    pub fn show_servers_state(backend: Option<&str>) -> String {
        match backend {
            Some(b) => format!("show servers state {}", escape(b)),
            None => "show servers state".to_owned(),
        }
    }

    /// `show stat`: CSV, with `scur` (current sessions) per server and backend.
    pub const SHOW_STAT: &str = "show stat";
}

/// Whether the reply to a `set`/`add`/`del` command says it worked. HAProxy answers those
/// with an empty line, except `set server ... addr`, which reports what it changed.
pub fn reply_is_success(command: &str, reply: &str) -> bool {
    let reply = reply.trim();
    if reply.is_empty() {
        return true;
    }
    command.contains(" addr ")
        && (reply.starts_with("IP changed from") || reply.starts_with("no need to change the addr"))
}

/// Sends a command that changes something and fails unless HAProxy says it worked.
pub async fn execute(socket: &Path, command: &str) -> Result<(), ProxyError> {
    let reply = send(socket, command).await?;
    if reply_is_success(command, &reply) {
        Ok(())
    } else {
        Err(ProxyError::Command {
            socket: socket.to_owned(),
            command: command.to_owned(),
            reply: reply.trim().to_owned(),
        })
    }
}

/// One process in the master's `show proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// Workers of the current configuration, as opposed to old ones finishing their
    /// connections after a reload.
    pub current: bool,
}

/// The master's view of its processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processes {
    pub master_pid: u32,
    /// How many reloads the master did.
    pub reloads: u32,
    /// How many of them failed (the master then keeps the old workers).
    pub failed_reloads: u32,
    pub workers: Vec<Process>,
}

impl Processes {
    pub fn current_workers(&self) -> impl Iterator<Item = u32> + '_ {
        self.workers.iter().filter(|w| w.current).map(|w| w.pid)
    }
}

/// Parses the master CLI's `show proc` (HAProxy 2.6):
///
/// ```text
/// #<PID>          <type>          <reloads>       <uptime>        <version>
/// 10905           master          1 [failed: 0]   0d00h10m32s     2.6.12
/// # workers
/// 12145           worker          0               0d00h00m01s     2.6.12
/// # old workers
/// 11000           worker          1               0d00h00m09s     2.6.12
/// # programs
/// ```
pub fn parse_show_proc(reply: &str) -> Option<Processes> {
    let mut master = None;
    let mut workers = Vec::new();
    let mut section = "";
    for line in reply.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('#') {
            section = header.trim();
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < 3 {
            continue;
        }
        let Ok(pid) = words[0].parse::<u32>() else {
            continue;
        };
        match words[1] {
            "master" => {
                let reloads = words[2].parse().ok()?;
                let failed = line
                    .split("[failed:")
                    .nth(1)
                    .and_then(|rest| rest.split(']').next())
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0);
                master = Some((pid, reloads, failed));
            }
            "worker" => workers.push(Process {
                pid,
                current: section == "workers",
            }),
            _ => {}
        }
    }
    let (master_pid, reloads, failed_reloads) = master?;
    Some(Processes {
        master_pid,
        reloads,
        failed_reloads,
        workers,
    })
}

/// One row of `show stat`, the columns we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatRow {
    pub proxy: String,
    /// `FRONTEND`, `BACKEND` or a server name.
    pub name: String,
    /// Current sessions.
    pub scur: u32,
    /// Current queued requests.
    pub qcur: u32,
    /// `UP`, `DOWN`, `MAINT`, `DRAIN`, `no check`, ...
    pub status: String,
    /// The last health check's result: `L7OK`, `L7STS` (a bad status), `L4CON`, `INI`
    /// (none yet), ...; empty without checks.
    pub check_status: String,
    /// The traffic counters (cumulative since the worker started).
    pub counters: Counters,
}

/// A row's traffic counters, cumulative since the HAProxy worker started (a reload starts
/// them again from zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// `req_tot`: HTTP requests.
    pub requests: u64,
    /// `hrsp_5xx`: responses with a 5xx status, HAProxy's own (502, 503, 504) included.
    pub responses_5xx: u64,
    /// `econ`: requests that failed to connect to a server.
    pub connection_errors: u64,
    /// `eresp`: responses that failed (the server closed or timed out mid-response).
    pub response_errors: u64,
    /// `rtime`: the average response time of the last 1024 requests, in ms.
    pub response_time_ms: u64,
}

/// The counters of the rows that carry one color's requests, by `backend/row`: its
/// backend's `BACKEND` row and its servers in the split backend. Summed only after each
/// row's baseline is taken off (see `fleet::TrafficSample::between`), since each row has its
/// own response time.
pub type ColorCounters = std::collections::BTreeMap<String, Counters>;

impl StatRow {
    /// Whether HAProxy's own check has seen the server healthy: UP, not going down, and
    /// its last check passed. (HAProxy counts a server it has not checked yet as UP; a
    /// switch must not.)
    pub fn checked_up(&self) -> bool {
        self.status == "UP" && self.check_status.contains("OK")
    }
}

/// Parses `show stat` (CSV with a `# pxname,svname,...` header).
pub fn parse_show_stat(reply: &str) -> Vec<StatRow> {
    let mut lines = reply.lines();
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        return Vec::new();
    };
    let columns: Vec<&str> = header.split(',').collect();
    let index = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(px), Some(sv), Some(scur), Some(qcur), Some(status)) = (
        index("pxname"),
        index("svname"),
        index("scur"),
        index("qcur"),
        index("status"),
    ) else {
        return Vec::new();
    };
    let check_status = index("check_status");
    let [
        requests,
        responses_5xx,
        connection_errors,
        response_errors,
        response_time,
    ] = ["req_tot", "hrsp_5xx", "econ", "eresp", "rtime"].map(index);
    lines
        .filter(|l| !l.trim().is_empty())
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let number = |i: usize| fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0);
            let counter =
                |i: Option<usize>| i.and_then(|i| fields.get(i)?.parse().ok()).unwrap_or(0u64);
            Some(StatRow {
                proxy: (*fields.get(px)?).to_owned(),
                name: (*fields.get(sv)?).to_owned(),
                scur: number(scur),
                qcur: number(qcur),
                status: fields.get(status).map_or("", |s| s).to_owned(),
                check_status: check_status
                    .and_then(|i| fields.get(i))
                    .map_or("", |s| s)
                    .trim_start_matches(['*', ' '])
                    .to_owned(),
                counters: Counters {
                    requests: counter(requests),
                    responses_5xx: counter(responses_5xx),
                    connection_errors: counter(connection_errors),
                    response_errors: counter(response_errors),
                    response_time_ms: counter(response_time),
                },
            })
        })
        .collect()
}

/// Where runtime commands go: straight to the admin socket, or through the master CLI to
/// its current worker (`@1 <command>`), which is never an old worker that is finishing its
/// connections after a reload.
#[derive(Debug, Clone)]
pub enum Channel {
    Admin(PathBuf),
    Master(PathBuf),
}

impl Channel {
    pub fn socket(&self) -> &Path {
        match self {
            Channel::Admin(p) | Channel::Master(p) => p,
        }
    }

    /// The command as this channel must send it.
    pub fn wrap(&self, command: &str) -> String {
        match self {
            Channel::Admin(_) => command.to_owned(),
            Channel::Master(_) => format!("@1 {command}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_counts_as_checked_up_only_after_a_check_passed() {
        let reply = "# pxname,svname,scur,qcur,status,check_status\n\
            b,s1,0,0,UP,INI\n\
            b,s2,0,0,UP,* L7OK\n\
            b,s3,0,0,UP 1/3,L7STS\n\
            b,s4,0,0,DOWN,L7STS\n\
            b,s5,0,0,UP,L4OK\n";
        let up: Vec<String> = parse_show_stat(reply)
            .into_iter()
            .filter(StatRow::checked_up)
            .map(|r| r.name)
            .collect();
        assert_eq!(up, ["s2", "s5"]);
    }

    #[test]
    fn arguments_are_escaped_for_the_cli() {
        for (argument, escaped) in [
            ("/api/v1", "/api/v1"),
            ("books.example.com/api", "books.example.com/api"),
            ("be_books_blue", "be_books_blue"),
            ("172.23.0.2", "172.23.0.2"),
            ("fd00::2", "fd00::2"),
            ("/x;reload", "/x\\;reload"),
            ("/a b\tc", "/a\\ b\\\tc"),
            ("/back\\slash", "/back\\\\slash"),
            ("/payload <<", "/payload\\ \\<\\<"),
            ("/#\"'", "/\\#\\\"\\'"),
            ("/line\nshow info", "/line\u{FFFD}show\\ info"),
            ("/café", "/café"),
        ] {
            assert_eq!(escape(argument), escaped, "{argument:?}");
        }
        assert_eq!(
            command::set_map(Path::new("/run/my maps/live.map"), "/x;y", "be_a"),
            "set map /run/my\\ maps/live.map /x\\;y be_a"
        );
    }

    #[test]
    fn show_proc_with_old_workers() {
        let reply = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n\
            10905           master          2 [failed: 1]   0d00h10m32s     2.6.12-1+deb12u4\n\
            # workers\n\
            12145           worker          0               0d00h00m01s     2.6.12-1+deb12u4\n\
            # old workers\n\
            11000           worker          1               0d00h00m09s     2.6.12-1+deb12u4\n\
            # programs\n\n";
        let p = parse_show_proc(reply).unwrap();
        assert_eq!(p.master_pid, 10905);
        assert_eq!(p.reloads, 2);
        assert_eq!(p.failed_reloads, 1);
        assert_eq!(p.current_workers().collect::<Vec<_>>(), vec![12145]);
        assert_eq!(p.workers.len(), 2);
        assert!(parse_show_proc("Unknown command\n").is_none());
    }

    #[test]
    fn show_stat_rows() {
        let reply = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,hrsp_5xx,req_tot,rtime\n\
            be_a,s1,0,0,3,5,,0,0,0,,0,,0,0,0,0,UP,,,\n\
            be_a,s2,1,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,,,\n\
            be_a,BACKEND,1,0,3,0,1,0,0,0,0,0,,4,2,0,0,UP,7,120,35\n\n";
        let rows = parse_show_stat(reply);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0],
            StatRow {
                proxy: "be_a".into(),
                name: "s1".into(),
                scur: 3,
                qcur: 0,
                status: "UP".into(),
                check_status: String::new(),
                counters: Counters::default(),
            }
        );
        assert!(!rows[0].checked_up(), "UP without a check that passed");
        assert_eq!(rows[1].status, "MAINT");
        assert_eq!(rows[2].qcur, 1);
        assert_eq!(
            rows[2].counters,
            Counters {
                requests: 120,
                responses_5xx: 7,
                connection_errors: 4,
                response_errors: 2,
                response_time_ms: 35,
            }
        );
    }

    #[test]
    fn replies() {
        let addr = "set server be_a/s2 addr 172.23.0.2 port 80";
        for (command, reply, ok) in [
            ("set server be_a/s2 state ready", "\n", true),
            ("set map /x/live_paths.map /api be_a_blue", "\n", true),
            (
                "set server be_x/s2 state ready",
                "No such backend.\n\n",
                false,
            ),
            (
                "set map /x/live_paths.map /nokey be_a",
                "entry not found.\n\n",
                false,
            ),
            (
                addr,
                "IP changed from '0.0.0.0' to '172.23.0.2', no need to change the port by 'stats socket command'\n\n",
                true,
            ),
            (
                addr,
                "no need to change the addr, no need to change the port by 'stats socket command'\n\n",
                true,
            ),
            (
                addr,
                "Invalid addr '10.0.0.300' by 'stats socket command'\n\n",
                false,
            ),
        ] {
            assert_eq!(
                reply_is_success(command, reply),
                ok,
                "{command} -> {reply:?}"
            );
        }
    }
}
