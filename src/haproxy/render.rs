//! Pure rendering: the route table in, HAProxy's configuration and map files out, and the
//! Runtime API commands that move a running HAProxy from one table to another.
//!
//! Nothing here does I/O. [`check_table`] refuses what would render into a broken or
//! ambiguous configuration; everything else assumes a table that passed it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::spec::Route;
use crate::status::Color;

use super::runtime::command;
use super::{ServerState, ServiceRoutes, Settings};

/// The backend every unrouted request, and every route whose service has no live color,
/// goes to: a plain-text 503.
pub const NO_BACKEND: &str = "no_backend";

/// How often HAProxy checks a server it sees DOWN (`downinter`, at most): a new replica's
/// first check usually finds it not listening yet, and a release waits for the next one. A
/// replica that stays down costs one small request per this interval and proxy.
pub const DOWN_INTER_MS: u64 = 50;

/// The body of the 503 page.
pub const NO_BACKEND_BODY: &str = "no healthy backend for this route";

/// The two frontends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Listener {
    /// `--http-bind`: the live color of every service.
    Live,
    /// `--preview-bind`: the preview color where a rollout is waiting, else the live one.
    Preview,
}

/// How a map is matched; one map file per listener and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapKind {
    /// Routes with a host and a path prefix. Key: the lower-case host immediately followed
    /// by the path prefix (`books.example.com/api`); looked up with `map_beg` on the
    /// request's host (lower case, port removed) concatenated with its path. Because a path
    /// always starts with `/`, the host part of a key can only match the whole host.
    HostPath,
    /// Routes with a host only. Key: the lower-case host; exact match (`map_str`).
    Host,
    /// Routes with a path prefix only. Key: the prefix; `map_beg` on the path.
    Path,
}

impl MapKind {
    pub const ALL: [MapKind; 3] = [MapKind::HostPath, MapKind::Host, MapKind::Path];
}

impl Listener {
    pub const ALL: [Listener; 2] = [Listener::Live, Listener::Preview];

    fn as_str(self) -> &'static str {
        match self {
            Listener::Live => "live",
            Listener::Preview => "preview",
        }
    }
}

/// The file name of a map inside the state directory, e.g. `live_hostpaths.map`.
pub fn map_file_name(listener: Listener, kind: MapKind) -> String {
    let kind = match kind {
        MapKind::HostPath => "hostpaths",
        MapKind::Host => "hosts",
        MapKind::Path => "paths",
    };
    format!("{}_{kind}.map", listener.as_str())
}

/// `be_<service>_<color>`.
pub fn backend_name(service: &str, color: Color) -> String {
    format!("be_{service}_{color}")
}

/// `s<slot>`, the server name of a slot inside a backend.
pub fn server_name(slot: u32) -> String {
    format!("s{slot}")
}

/// `be_<service>_split`: the backend a weighted canary's live routes point at, with a
/// server per slot of each color that tracks that color's server.
pub fn split_backend_name(service: &str) -> String {
    format!("be_{service}_split")
}

/// `b<slot>` or `g<slot>`: the server in the split backend that tracks `s<slot>` of the
/// color.
pub fn split_server_name(color: Color, slot: u32) -> String {
    let prefix = match color {
        Color::Blue => 'b',
        Color::Green => 'g',
    };
    format!("{prefix}{slot}")
}

/// The slot of a split server's name if it is one of `color`'s: `g3` gives 3 for green.
pub fn split_server_slot(name: &str, color: Color) -> Option<u32> {
    let prefix = match color {
        Color::Blue => 'b',
        Color::Green => 'g',
    };
    let digits = name.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The largest weight HAProxy takes for a server.
pub const MAX_WEIGHT: u32 = 256;

/// The weights of one server of the live color and one of the canary color that send
/// `percent` of the requests to the canary's `canary` servers and the rest to the live
/// color's `live` servers: a canary server's weight in proportion to `percent x live`, a
/// live one's to `(100 - percent) x canary`, the larger one scaled to [`MAX_WEIGHT`], and
/// neither below 1 (a share of 1 % with many servers is rounded up rather than lost).
/// Returns `(live weight, canary weight)`.
pub fn split_weights(percent: u32, live: u32, canary: u32) -> (u32, u32) {
    let percent = u64::from(percent.min(100));
    let canary_share = percent * u64::from(live);
    let live_share = (100 - percent) * u64::from(canary);
    let largest = canary_share.max(live_share).max(1);
    let scaled = |share: u64| {
        let weight = (share * u64::from(MAX_WEIGHT) + largest / 2) / largest;
        u32::try_from(weight.clamp(1, u64::from(MAX_WEIGHT))).unwrap_or(MAX_WEIGHT)
    };
    (scaled(live_share), scaled(canary_share))
}

/// What one server of the split backend is: `ready` with an address and a weight while a
/// split is in force and its color's server in the same slot is in rotation, else in
/// maintenance (no address: whatever it had).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitServer {
    pub address: Option<String>,
    pub weight: u32,
    pub ready: bool,
}

/// Every server of a service's split backend, by color and slot, as `routes` wants it (see
/// [`SplitServer`]).
pub fn split_servers(routes: &ServiceRoutes) -> BTreeMap<(Color, u32), SplitServer> {
    let split = routes.active_split();
    let in_rotation = |color: Color| -> BTreeMap<u32, &str> {
        let taking = split.is_some_and(|s| Some(color) == routes.live || color == s.color);
        routes
            .servers
            .get(&color)
            .into_iter()
            .flatten()
            .filter(|s| taking && s.state == ServerState::Ready && s.slot <= routes.slots)
            .map(|s| (s.slot, s.address.as_str()))
            .collect()
    };
    let mut servers = BTreeMap::new();
    let (Some(split), Some(live)) = (split, routes.live) else {
        for color in [Color::Blue, Color::Green] {
            for slot in 1..=routes.slots {
                let idle = SplitServer {
                    address: None,
                    weight: 1,
                    ready: false,
                };
                servers.insert((color, slot), idle);
            }
        }
        return servers;
    };
    let live_servers = in_rotation(live);
    let canary_servers = in_rotation(split.color);
    let count = |m: &BTreeMap<u32, &str>| u32::try_from(m.len()).unwrap_or(u32::MAX);
    let (live_weight, canary_weight) =
        split_weights(split.percent, count(&live_servers), count(&canary_servers));
    for (color, taking, weight) in [
        (live, &live_servers, live_weight),
        (split.color, &canary_servers, canary_weight),
    ] {
        for slot in 1..=routes.slots {
            let server = match taking.get(&slot) {
                Some(address) => SplitServer {
                    address: Some((*address).to_owned()),
                    weight,
                    ready: true,
                },
                None => SplitServer {
                    address: None,
                    weight: 1,
                    ready: false,
                },
            };
            servers.insert((color, slot), server);
        }
    }
    servers
}

/// Which map a route lives in, and its key there.
pub fn route_key(route: &Route) -> (MapKind, String) {
    match (&route.host, &route.path_prefix) {
        (Some(host), Some(path)) => (MapKind::HostPath, format!("{}{path}", host.to_lowercase())),
        (Some(host), None) => (MapKind::Host, host.to_lowercase()),
        (None, Some(path)) => (MapKind::Path, path.clone()),
        (None, None) => (MapKind::Path, "/".to_owned()),
    }
}

/// The backend a service's routes point at on a listener: the live listener's routes go
/// to the split backend while a canary's split is in force.
pub fn route_target(service: &str, routes: &ServiceRoutes, listener: Listener) -> String {
    if listener == Listener::Live && routes.active_split().is_some() {
        return split_backend_name(service);
    }
    let color = match listener {
        Listener::Live => routes.live,
        Listener::Preview => routes.preview.or(routes.live),
    };
    color.map_or_else(|| NO_BACKEND.to_owned(), |c| backend_name(service, c))
}

/// A table entry that cannot be rendered safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service {service}: {reason}")]
pub struct TableError {
    pub service: String,
    pub reason: String,
}

/// Characters that would end a word, a line or start a comment in a config or map file, or
/// end a command on the Runtime API.
fn unsafe_char(c: char) -> bool {
    c.is_whitespace() || c.is_control() || "#\"'\\;".contains(c)
}

/// Refuses what would render into a broken config or an ambiguous route: names that are
/// not DNS labels, paths without a leading `/`, whitespace, quotes or `#` in hosts, paths
/// and addresses, slots out of range, and two services claiming the same route.
pub fn check_table(table: &BTreeMap<String, ServiceRoutes>) -> Result<(), TableError> {
    let mut owners: BTreeMap<(MapKind, String), &str> = BTreeMap::new();
    for (service, routes) in table {
        let fail = |reason: String| TableError {
            service: service.clone(),
            reason,
        };
        let label_ok = !service.is_empty()
            && service.len() <= 63
            && service
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !label_ok {
            return Err(fail(
                "the name must be a DNS label (a-z, 0-9, -; at most 63 characters)".into(),
            ));
        }
        for color in [Color::Blue, Color::Green] {
            let check = routes.check(service, color);
            if !check.path.starts_with('/') || check.path.contains(unsafe_char) {
                return Err(fail(format!(
                    "health path {:?} must start with / and contain no whitespace, quotes, ; or #",
                    check.path
                )));
            }
            if check.host.is_empty() || check.host.contains(unsafe_char) || check.host.contains('/')
            {
                return Err(fail(format!(
                    "health check host {:?} must be a host name without path, whitespace or quotes",
                    check.host
                )));
            }
        }
        if routes.slots == 0 {
            return Err(fail("slots must be at least 1".into()));
        }
        for route in &routes.routes {
            if let Some(path) = &route.path_prefix
                && (!path.starts_with('/') || path.contains(unsafe_char))
            {
                return Err(fail(format!(
                    "path prefix {path:?} must start with / and contain no whitespace, quotes, ; or #"
                )));
            }
            if let Some(host) = &route.host
                && (host.is_empty() || host.contains(unsafe_char) || host.contains(['/', ':']))
            {
                return Err(fail(format!(
                    "host {host:?} must be a host name without port, path, whitespace or quotes"
                )));
            }
            let key = route_key(route);
            if let Some(other) = owners.insert(key.clone(), service)
                && other != service
            {
                return Err(fail(format!(
                    "route {:?} is already routed to service {other}",
                    key.1
                )));
            }
        }
        for (color, servers) in &routes.servers {
            let mut seen = BTreeSet::new();
            for server in servers {
                if server.slot == 0 || server.slot > routes.slots {
                    return Err(fail(format!(
                        "{color} server slot {} is outside 1..={}",
                        server.slot, routes.slots
                    )));
                }
                if !seen.insert(server.slot) {
                    return Err(fail(format!("{color} server slot {} twice", server.slot)));
                }
                if server.address.is_empty() || server.address.contains(unsafe_char) {
                    return Err(fail(format!(
                        "{color} server slot {} has address {:?}",
                        server.slot, server.address
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The entries of one map file, in file order: for prefix maps, longest key first (HAProxy's
/// `map_beg` returns the first entry that matches, so this makes the longest prefix win),
/// ties broken by key so that the output is stable.
pub fn map_entries(
    table: &BTreeMap<String, ServiceRoutes>,
    listener: Listener,
    kind: MapKind,
) -> Vec<(String, String)> {
    let mut entries: Vec<(String, String)> = table
        .iter()
        .flat_map(|(service, routes)| {
            let target = route_target(service, routes, listener);
            routes
                .routes
                .iter()
                .map(route_key)
                .filter(|(k, _)| *k == kind)
                .map(move |(_, key)| (key, target.clone()))
        })
        .collect();
    entries.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    entries.dedup_by(|a, b| a.0 == b.0);
    entries
}

/// A map file's text: one `key value` per line.
pub fn render_map(entries: &[(String, String)]) -> String {
    let mut out = String::new();
    for (key, value) in entries {
        let _ = writeln!(out, "{key} {value}");
    }
    out
}

/// Every map file of the table: file name to text.
pub fn render_maps(table: &BTreeMap<String, ServiceRoutes>) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for listener in Listener::ALL {
        for kind in MapKind::ALL {
            let entries = map_entries(table, listener, kind);
            files.insert(map_file_name(listener, kind), render_map(&entries));
        }
    }
    files
}

fn server_address(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

fn secs(d: std::time::Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The whole configuration file.
///
/// The file the servers' state is saved to before a reload.
pub const SERVER_STATE_FILE: &str = "server-state";

/// `show servers state` as the next worker, configured from `table`, should load it:
/// operational state (UP/DOWN) kept, administrative state (maint/drain set at runtime)
/// cleared, because the new configuration already says which servers are disabled. Only
/// the servers whose address and port the new configuration keeps are carried: HAProxy
/// applies a state file's address and port over the configuration's, so a stale line would
/// point a slot back at the replica it had before (the one that moved it starts from the
/// configuration, checked at once).
pub fn server_state_for_reload(
    show_servers_state: &str,
    table: &BTreeMap<String, ServiceRoutes>,
) -> String {
    let mut configured = BTreeMap::new();
    for (service, routes) in table {
        for color in [Color::Blue, Color::Green] {
            let port = routes.check(service, color).port.to_string();
            let known: BTreeMap<u32, &str> = (routes.servers.get(&color).into_iter().flatten())
                .map(|s| (s.slot, s.address.as_str()))
                .collect();
            for slot in 1..=routes.slots {
                let address = known.get(&slot).copied().unwrap_or("0.0.0.0");
                let server = (backend_name(service, color), server_name(slot));
                configured.insert(server, (address.to_owned(), port.clone()));
            }
        }
    }
    let carried = server_addresses(show_servers_state);
    let mut out = String::new();
    let mut admin_column = None;
    // `None` before the header (the format version comes first).
    let mut name_columns: Option<Option<(usize, usize)>> = None;
    for line in show_servers_state.lines() {
        if let Some(header) = line.strip_prefix("# ") {
            let columns: Vec<&str> = header.split(' ').collect();
            let at = |name: &str| columns.iter().position(|c| *c == name);
            admin_column = at("srv_admin_state");
            name_columns = Some(at("be_name").zip(at("srv_name")));
        } else if let Some(name_columns) = name_columns
            && !line.trim().is_empty()
        {
            let mut fields: Vec<&str> = line.split(' ').collect();
            let server = name_columns.and_then(|(b, s)| {
                Some(((*fields.get(b)?).to_owned(), (*fields.get(s)?).to_owned()))
            });
            let stays = server.is_some_and(|s| carried.get(&s) == configured.get(&s));
            if !stays {
                continue;
            }
            if let Some(admin) = admin_column.and_then(|i| fields.get_mut(i)) {
                *admin = "0";
            }
            out.push_str(&fields.join(" "));
            out.push('\n');
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Server addresses and ports (`srv_addr`, `srv_port`) by backend and server name.
pub type ServerAddresses = BTreeMap<(String, String), (String, String)>;

/// The address and port of every server in `show servers state`, by backend and server
/// name.
pub fn server_addresses(show_servers_state: &str) -> ServerAddresses {
    let mut columns: Vec<&str> = Vec::new();
    let mut out = BTreeMap::new();
    for line in show_servers_state.lines() {
        if let Some(header) = line.strip_prefix("# ") {
            columns = header.split(' ').collect();
            continue;
        }
        let fields: Vec<&str> = line.split(' ').collect();
        let field = |name: &str| {
            let i = columns.iter().position(|c| *c == name)?;
            fields.get(i).map(|f| (*f).to_owned())
        };
        if let (Some(server), Some(address)) = (
            field("be_name").zip(field("srv_name")),
            field("srv_addr").zip(field("srv_port")),
        ) {
            out.insert(server, address);
        }
    }
    out
}

/// Layout: `global` (master-worker, the admin socket with `expose-fd listeners`),
/// `defaults`, `frontend live` and (with a preview bind) `frontend preview`, the 503
/// backend, then `be_<service>_<color>` for both colors of every service, with one
/// explicit `server s<N>` line per slot: a known server with its address (`disabled` when
/// it is in maintenance or draining), a spare slot as `0.0.0.0:<port> disabled`, and
/// `be_<service>_split` (a weighted canary's, see [`render_split_backend`]). Both colors
/// and the split always exist, so that a rollout, a canary, a switch and a scale change
/// never need a reload.
pub fn render(settings: &Settings, table: &BTreeMap<String, ServiceRoutes>) -> String {
    let dir = settings.dir.display();
    let mut c = String::new();
    let _ = writeln!(c, "# Written by cutover; changes are overwritten.");
    let _ = writeln!(c, "global");
    let _ = writeln!(c, "    master-worker");
    let _ = writeln!(
        c,
        "    stats socket {} mode 600 level admin expose-fd listeners",
        settings.runtime_socket().display()
    );
    let _ = writeln!(c, "    hard-stop-after {}", secs(settings.hard_stop_after));
    let _ = writeln!(c, "    maxconn {}", settings.maxconn);
    // Servers' health, saved just before a reload, so the new worker does not start them
    // DOWN and answer 503 until their checks pass again.
    let _ = writeln!(
        c,
        "    server-state-file {}",
        settings.dir.join(SERVER_STATE_FILE).display()
    );
    let _ = writeln!(c);
    let _ = writeln!(c, "defaults");
    let _ = writeln!(c, "    mode http");
    let _ = writeln!(c, "    load-server-state-from-file global");
    let _ = writeln!(c, "    maxconn {}", settings.maxconn);
    let _ = writeln!(c, "    timeout connect {}", secs(settings.timeout_connect));
    let _ = writeln!(c, "    timeout client {}", secs(settings.timeout_client));
    let _ = writeln!(c, "    timeout server {}", secs(settings.timeout_server));
    let _ = writeln!(c, "    timeout http-request 10s");
    let _ = writeln!(c, "    timeout http-keep-alive 10s");
    let _ = writeln!(c, "    option http-keep-alive");
    let _ = writeln!(c, "    option idle-close-on-response");
    let _ = writeln!(c, "    option forwardfor");
    let _ = writeln!(c, "    option redispatch 1");
    let _ = writeln!(c, "    retries 3");
    let _ = writeln!(c, "    retry-on conn-failure empty-response");
    let _ = writeln!(c);
    let mut frontends = vec![(Listener::Live, &settings.http_bind)];
    if let Some(bind) = &settings.preview_bind {
        frontends.push((Listener::Preview, bind));
    }
    for (listener, bind) in frontends {
        let map = |kind| format!("{dir}/{}", map_file_name(listener, kind));
        let _ = writeln!(c, "frontend {}", listener.as_str());
        let _ = writeln!(c, "    bind {bind}");
        let _ = writeln!(c, "    http-request set-var(txn.path) path");
        let _ = writeln!(
            c,
            "    http-request set-var(txn.host) req.hdr(host),lower,word(1,:)"
        );
        let _ = writeln!(
            c,
            "    http-request set-var(txn.hostpath) var(txn.host),concat(,txn.path,)"
        );
        let _ = writeln!(
            c,
            "    http-request set-var(txn.backend) var(txn.hostpath),map_beg({})",
            map(MapKind::HostPath)
        );
        let _ = writeln!(
            c,
            "    http-request set-var(txn.backend) var(txn.host),map_str({}) unless {{ var(txn.backend) -m found }}",
            map(MapKind::Host)
        );
        let _ = writeln!(
            c,
            "    http-request set-var(txn.backend) path,map_beg({}) unless {{ var(txn.backend) -m found }}",
            map(MapKind::Path)
        );
        let _ = writeln!(
            c,
            "    use_backend %[var(txn.backend)] if {{ var(txn.backend) -m found }}"
        );
        let _ = writeln!(c, "    default_backend {NO_BACKEND}");
        let _ = writeln!(c);
    }
    let _ = writeln!(c, "backend {NO_BACKEND}");
    let _ = writeln!(
        c,
        "    http-request return status 503 content-type text/plain string \"{NO_BACKEND_BODY}\""
    );
    for (service, routes) in table {
        for color in [Color::Blue, Color::Green] {
            let _ = writeln!(c);
            let check = routes.check(service, color);
            let _ = writeln!(c, "backend {}", backend_name(service, color));
            let _ = writeln!(c, "    balance roundrobin");
            let _ = writeln!(c, "    option httpchk");
            let _ = writeln!(
                c,
                "    http-check send meth GET uri {} ver HTTP/1.1 hdr Host {}",
                check.path, check.host
            );
            let _ = writeln!(c, "    http-check expect status 200-399");
            match check.timing {
                // A server going up or down is checked at most every 200 ms (`fastinter`),
                // and a DOWN one, such as a new replica whose first check found it not
                // listening yet, every `DOWN_INTER_MS` (`downinter`), so a new replica is
                // seen UP about as soon as it answers.
                Some(t) => {
                    // However slow the revision's own probe, HAProxy checks at least every
                    // 2 s (a server it has just loaded is checked within one interval).
                    let inter = t.interval_ms.min(2_000);
                    let fast = inter.min(200);
                    let down = inter.min(DOWN_INTER_MS);
                    let _ = writeln!(c, "    timeout check {}ms", t.timeout_ms);
                    let _ = writeln!(
                        c,
                        "    default-server check inter {inter}ms fastinter {fast}ms downinter {down}ms rise {} fall {}",
                        t.rise, t.fall
                    );
                }
                None => {
                    let inter = u64::try_from(settings.check_interval.as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    let _ = writeln!(
                        c,
                        "    default-server check inter {inter}ms fastinter {}ms downinter {}ms rise 2 fall 2",
                        inter.min(250),
                        inter.min(DOWN_INTER_MS)
                    );
                }
            }
            let known: BTreeMap<u32, &super::Server> = routes
                .servers
                .get(&color)
                .into_iter()
                .flatten()
                .map(|s| (s.slot, s))
                .collect();
            for slot in 1..=routes.slots {
                let name = server_name(slot);
                match known.get(&slot) {
                    Some(server) => {
                        let disabled = match server.state {
                            ServerState::Ready => "",
                            // A fresh worker has no session to drain: maintenance is
                            // the same thing for it, and `set server ... state` takes
                            // the slot out of it.
                            ServerState::Drain | ServerState::Maint => " disabled",
                        };
                        let _ = writeln!(
                            c,
                            "    server {name} {}{disabled}",
                            server_address(&server.address, check.port)
                        );
                    }
                    None => {
                        let _ = writeln!(c, "    server {name} 0.0.0.0:{} disabled", check.port);
                    }
                }
            }
        }
        render_split_backend(&mut c, service, routes);
    }
    c
}

/// `be_<service>_split`, rendered for every service whatever the table (so a canary never
/// changes the shape): a server per slot of each color, `b<N>` and `g<N>`, each tracking
/// the color's `s<N>` (no checks of its own: it is UP, DOWN or in maintenance with it),
/// with its address, weight and `disabled` as [`split_servers`] says.
fn render_split_backend(c: &mut String, service: &str, routes: &ServiceRoutes) {
    let servers = split_servers(routes);
    let _ = writeln!(c);
    let _ = writeln!(c, "backend {}", split_backend_name(service));
    let _ = writeln!(c, "    balance roundrobin");
    for color in [Color::Blue, Color::Green] {
        let port = routes.check(service, color).port;
        let tracked = backend_name(service, color);
        for slot in 1..=routes.slots {
            let server = servers.get(&(color, slot));
            let address = server
                .and_then(|s| s.address.as_deref())
                .map_or_else(|| format!("0.0.0.0:{port}"), |a| server_address(a, port));
            let state = match server {
                Some(s) if s.ready => format!(" weight {}", s.weight),
                _ => " disabled".to_owned(),
            };
            let _ = writeln!(
                c,
                "    server {} {address} track {tracked}/{}{state}",
                split_server_name(color, slot),
                server_name(slot)
            );
        }
    }
}

/// What of a service needs a reload to change: its routes (map keys and their order),
/// port, slot count and health check. Everything else (colors, server addresses and
/// states) goes through the Runtime API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    routes: Vec<(MapKind, String)>,
    slots: u32,
    checks: [super::Check; 2],
}

/// The shape of every service of a table.
pub fn shapes(table: &BTreeMap<String, ServiceRoutes>) -> BTreeMap<String, Shape> {
    table
        .iter()
        .map(|(service, routes)| {
            let mut keys: Vec<_> = routes.routes.iter().map(route_key).collect();
            keys.sort();
            keys.dedup();
            let shape = Shape {
                routes: keys,
                slots: routes.slots,
                checks: [Color::Blue, Color::Green].map(|c| routes.check(service, c)),
            };
            (service.clone(), shape)
        })
        .collect()
}

/// The Runtime API commands that take one service from `old` (what the running HAProxy
/// has, `None` when unknown: then every slot and map entry is set, and `actual`, the
/// servers' addresses HAProxy reported if it could be asked, tells which slots move to
/// another replica) to `new`, in a safe order:
///
/// 1. servers that gain an address or become ready (`set server ... addr`, then `state ready`),
///    and the split backend's servers that take a canary's share (address, `set weight`,
///    `state ready`);
/// 2. map entries whose backend changes (`set map`): the switch, or the live routes moving
///    to the split backend or back;
/// 3. servers that go to `drain` or `maint` (the split backend's too), after no route points
///    at them any more.
///
/// The shape of `old` and `new` must be equal (same slots and routes); otherwise a reload
/// is due and this is not the function to call.
pub fn runtime_commands(
    settings: &Settings,
    service: &str,
    old: Option<&ServiceRoutes>,
    new: &ServiceRoutes,
    actual: Option<&ServerAddresses>,
) -> Vec<String> {
    let mut up = Vec::new();
    let mut maps = Vec::new();
    let mut down = Vec::new();
    for color in [Color::Blue, Color::Green] {
        let backend = backend_name(service, color);
        let port = new.check(service, color).port;
        let slots_of = |routes: &ServiceRoutes| -> BTreeMap<u32, (String, ServerState)> {
            routes
                .servers
                .get(&color)
                .into_iter()
                .flatten()
                .map(|s| (s.slot, (s.address.clone(), s.state)))
                .collect()
        };
        let old_slots = old.map(slots_of);
        let new_slots = slots_of(new);
        for slot in 1..=new.slots {
            let server = server_name(slot);
            let before = old_slots.as_ref().map(|o| o.get(&slot));
            let after = new_slots.get(&slot);
            let (address, state) = match after {
                Some((address, state)) => (Some(address), *state),
                None => (None, ServerState::Maint),
            };
            let before_address = before.and_then(|b| b.map(|(a, _)| a));
            let before_state = before.map(|b| b.map_or(ServerState::Maint, |(_, s)| *s));
            let readdress = address.is_some_and(|a| before.is_none() || before_address != Some(a));
            let restate = before_state != Some(state);
            let target = if state == ServerState::Ready {
                &mut up
            } else {
                &mut down
            };
            if readdress && let Some(address) = address {
                target.push(command::set_server_addr(&backend, &server, address, port));
                // A new replica in a slot: DOWN until HAProxy's own check passes (its last
                // check was of the slot's previous replica). Not when HAProxy's state is
                // unknown and it reported no other address: the slot may hold a serving
                // replica.
                let moved = before.is_some()
                    || actual.is_some_and(|actual| {
                        actual.get(&(backend.clone(), server.clone()))
                            != Some(&(address.clone(), port.to_string()))
                    });
                if moved {
                    target.push(command::set_server_health_down(&backend, &server));
                }
            }
            if restate || readdress {
                target.push(command::set_server_state(&backend, &server, state));
            }
        }
    }
    split_commands(service, old, new, &mut up, &mut down);
    for listener in Listener::ALL {
        if listener == Listener::Preview && settings.preview_bind.is_none() {
            continue;
        }
        let target = route_target(service, new, listener);
        let before = old.map(|o| route_target(service, o, listener));
        if before.as_ref() == Some(&target) {
            continue;
        }
        let mut keys: Vec<_> = new.routes.iter().map(route_key).collect();
        keys.sort();
        keys.dedup();
        for (kind, key) in keys {
            let file = settings.dir.join(map_file_name(listener, kind));
            maps.push(command::set_map(&file, &key, &target));
        }
    }
    up.extend(maps);
    up.extend(down);
    up
}

/// The commands that bring the split backend's servers from `old` (`None`: unknown, every
/// server is set) to `new`: into `up` those that take requests (address, weight, `ready`:
/// before the live routes point at the split backend), into `down` those that leave (after
/// the routes left them). A split server follows its color's server's health by `track`, so
/// it gets no `health` command.
fn split_commands(
    service: &str,
    old: Option<&ServiceRoutes>,
    new: &ServiceRoutes,
    up: &mut Vec<String>,
    down: &mut Vec<String>,
) {
    let backend = split_backend_name(service);
    let before = old.map(split_servers);
    for ((color, slot), after) in split_servers(new) {
        let name = split_server_name(color, slot);
        let was = before.as_ref().and_then(|b| b.get(&(color, slot)));
        let was_ready = was.is_some_and(|w| w.ready);
        if after.ready {
            let port = new.check(service, color).port;
            if let Some(address) = &after.address
                && was.is_none_or(|w| w.address.as_ref() != Some(address))
            {
                up.push(command::set_server_addr(&backend, &name, address, port));
            }
            if !was_ready || was.is_some_and(|w| w.weight != after.weight) {
                up.push(command::set_weight(&backend, &name, after.weight));
            }
            if !was_ready {
                up.push(command::set_server_state(
                    &backend,
                    &name,
                    ServerState::Ready,
                ));
            }
        } else if was.is_none() || was_ready {
            down.push(command::set_server_state(
                &backend,
                &name,
                ServerState::Maint,
            ));
        }
    }
}
