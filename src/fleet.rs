//! The proxy fleet: the route table the leader publishes, what each proxy reports back, and
//! the pure rules that turn both into what the planner must know about a service.
//!
//! The leader publishes, per service, the routes every proxy must serve at
//! `<prefix>/routes/<service>` ([`PublishedRoutes`]); the key's ModifyIndex is the table's
//! *version*. Every proxy agent (in each `cutover run`, and `cutover proxy` on edge nodes)
//! applies the table to its HAProxy and reports at `<prefix>/proxies/<id>` ([`ProxyReport`]),
//! a key held by its Consul session, so that a dead proxy's report disappears by itself.
//!
//! Nothing here does I/O: the controller feeds [`Fleet`] with what its watches read.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::haproxy::runtime::ColorCounters;
use crate::haproxy::{ServerState, ServiceRoutes};
use crate::observed::Container;
use crate::plan::ProxyView;
use crate::status::{Color, TrafficFigures};

/// One service's entry in the route table, as the leader writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedRoutes {
    pub routes: ServiceRoutes,
    /// When the leader wrote it (milliseconds since the Unix epoch), so that proxies can
    /// tell how long the table took to reach them.
    pub written_ms: u64,
    /// A bake window whose traffic every proxy counts, if one is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<Watch>,
}

/// A bake window (`analysis` in the spec): every proxy counts the requests of `color`'s
/// backend from the switch at `since_ms` until `until_ms`, reading its HAProxy's counters
/// every `interval_ms`, and reports them as a [`TrafficSample`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Watch {
    pub color: Color,
    pub since_ms: u64,
    pub until_ms: u64,
    pub interval_ms: u64,
}

/// What one proxy counted for a [`Watch`] since it applied the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSample {
    /// The watch it counts for (its color and switch time).
    pub color: Color,
    pub since_ms: u64,
    pub requests: u64,
    /// 5xx responses, connection errors and response errors.
    pub errors: u64,
    /// HAProxy's average response time of the backend (ms); `None` before any response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_time_ms: Option<u64>,
}

impl TrafficSample {
    /// What a color's counters moved by from `baseline` (read when the proxy applied the
    /// switch, or the canary step) to `current`, row by row (its backend, and its servers in
    /// the split backend), then summed: requests and failures add up, the response time is
    /// each row's `rtime` weighted by the requests that row got since the baseline (a row
    /// that got none, such as the split servers after a full switch, weighs nothing). A
    /// request counts as failed when it got a 5xx response (the app's, or HAProxy's own
    /// 502/503/504 when the replica failed it) or its response broke off; a failed
    /// connection HAProxy retried elsewhere is not a failed request. A row whose requests
    /// went down (HAProxy reloaded and started again from zero) counts from zero.
    pub fn between(
        watch: &Watch,
        baseline: &ColorCounters,
        current: &ColorCounters,
    ) -> TrafficSample {
        let mut requests: u64 = 0;
        let mut errors: u64 = 0;
        let mut weighted: u128 = 0;
        for (row, now) in current {
            let before = baseline
                .get(row)
                .filter(|b| b.requests <= now.requests)
                .copied()
                .unwrap_or_default();
            let moved = now.requests.saturating_sub(before.requests);
            requests = requests.saturating_add(moved);
            errors = errors.saturating_add(
                now.responses_5xx
                    .saturating_sub(before.responses_5xx)
                    .min(moved),
            );
            weighted =
                weighted.saturating_add(u128::from(now.response_time_ms) * u128::from(moved));
        }
        TrafficSample {
            color: watch.color,
            since_ms: watch.since_ms,
            requests,
            errors,
            response_time_ms: (requests > 0)
                .then(|| u64::try_from(weighted / u128::from(requests)).unwrap_or(u64::MAX)),
        }
    }

    fn counts_for(&self, watch: &Watch) -> bool {
        self.color == watch.color && self.since_ms == watch.since_ms
    }
}

/// The table version a proxy applied for one service, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    pub version: u64,
    pub at_ms: u64,
}

/// What one proxy reports: the versions it applied and what its HAProxy's checks see.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyReport {
    /// The host it runs on (for people).
    pub node: String,
    /// Its live listener, as given to it (`--http-bind`).
    #[serde(default)]
    pub listener: String,
    /// Per service, the table version it serves.
    #[serde(default)]
    pub applied: BTreeMap<String, Applied>,
    /// Per service and color, the server slots its HAProxy's checks see UP.
    #[serde(default)]
    pub up: BTreeMap<String, BTreeMap<Color, BTreeSet<u32>>>,
    /// Per service, why the last table could not be applied.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, String>,
    /// Per service with an open bake window, what it counted since the switch.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub traffic: BTreeMap<String, TrafficSample>,
    /// When it wrote this report (milliseconds since the Unix epoch).
    #[serde(default)]
    pub updated_ms: u64,
}

impl ProxyReport {
    /// Whether this proxy serves `version` (or later) of `service`'s table; with version 0
    /// (the service is no longer in the table), whether it dropped the service.
    pub fn synced(&self, service: &str, version: u64) -> bool {
        match (self.applied.get(service), version) {
            (None, 0) => true,
            (None, _) => false,
            (Some(_), 0) => false,
            (Some(applied), _) => applied.version >= version,
        }
    }
}

/// The fleet as the leader knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fleet {
    /// The published table: per service, its version and routes.
    pub published: BTreeMap<String, (u64, ServiceRoutes)>,
    /// The live proxies' reports, by proxy id.
    pub proxies: BTreeMap<String, ProxyReport>,
    /// A proxy that must be counted even before it reported (the leader's own, which starts
    /// with the daemon).
    pub required: Option<String>,
    /// The open bake windows of the published table, by service.
    pub watches: BTreeMap<String, Watch>,
}

impl Fleet {
    /// Takes the published table as read from Consul: routes and bake windows.
    pub fn set_table(&mut self, table: BTreeMap<String, (u64, PublishedRoutes)>) {
        self.watches = table
            .iter()
            .filter_map(|(name, (_, p))| Some((name.clone(), p.watch?)))
            .collect();
        self.published = table
            .into_iter()
            .map(|(name, (version, p))| (name, (version, p.routes)))
            .collect();
    }

    /// The table version of `service` (0 when it is not in the table).
    pub fn version(&self, service: &str) -> u64 {
        self.published.get(service).map_or(0, |(v, _)| *v)
    }

    /// The proxies (by display name) that do not serve `version` of `service` yet,
    /// including a required proxy that has not reported at all.
    pub fn lagging(&self, service: &str, version: u64) -> Vec<String> {
        let mut lagging: Vec<String> = self
            .proxies
            .iter()
            .filter(|(_, report)| !report.synced(service, version))
            .map(|(id, report)| describe(id, report, service))
            .collect();
        if let Some(required) = &self.required
            && !self.proxies.contains_key(required)
        {
            lagging.push(format!("{required} (not reporting yet)"));
        }
        lagging
    }

    /// What the planner needs of the fleet for `service`, or `None` when there is no proxy
    /// at all (then nothing gates a switch or a retirement).
    pub fn view(&self, service: &str) -> Option<ProxyView> {
        if self.proxies.is_empty() && self.required.is_none() {
            return None;
        }
        let version = self.version(service);
        let published = self.published.get(service).map(|(_, r)| r);
        // Servers every proxy sees UP; a required proxy that has not reported sees none.
        let mut up: Option<BTreeSet<(Color, u32)>> = self
            .required
            .as_ref()
            .filter(|r| !self.proxies.contains_key(*r))
            .map(|_| BTreeSet::new());
        for report in self.proxies.values() {
            let seen: BTreeSet<(Color, u32)> = report
                .up
                .get(service)
                .into_iter()
                .flatten()
                .flat_map(|(color, slots)| slots.iter().map(|slot| (*color, *slot)))
                .collect();
            up = Some(match up {
                None => seen,
                Some(so_far) => so_far.intersection(&seen).copied().collect(),
            });
        }
        Some(ProxyView {
            known: published.is_some(),
            live: published.and_then(|r| r.live),
            split: published.and_then(ServiceRoutes::active_split),
            up: up.unwrap_or_default(),
            lagging: self.lagging(service, version),
            traffic: self.traffic(service),
        })
    }

    /// The traffic the proxies counted for `service`'s open bake window, summed; `None`
    /// when no window is open. The response time is weighted by each proxy's requests.
    pub fn traffic(&self, service: &str) -> Option<TrafficFigures> {
        let watch = self.watches.get(service)?;
        let mut figures = TrafficFigures::default();
        let mut weighted: u128 = 0;
        let mut timed: u64 = 0;
        for sample in self.proxies.values().filter_map(|r| r.traffic.get(service)) {
            if !sample.counts_for(watch) {
                continue;
            }
            figures.proxies = figures.proxies.saturating_add(1);
            figures.requests = figures.requests.saturating_add(sample.requests);
            figures.errors = figures.errors.saturating_add(sample.errors);
            if let Some(ms) = sample.response_time_ms {
                let weight = sample.requests.max(1);
                weighted = weighted.saturating_add(u128::from(ms) * u128::from(weight));
                timed = timed.saturating_add(weight);
            }
        }
        if timed > 0 {
            figures.response_time_ms = u64::try_from(weighted / u128::from(timed)).ok();
        }
        Some(figures)
    }
}

impl Fleet {
    /// The running replicas of `service` that every proxy health-checks, by container id,
    /// with whether every proxy's check sees them UP: those whose server (color, slot and
    /// address) is in rotation in the table version every proxy serves. Empty without a
    /// proxy, and while one lags behind the table (its UP may be an earlier replica's).
    pub fn checks(&self, service: &str, containers: &[Container]) -> BTreeMap<String, bool> {
        let Some(view) = self.view(service).filter(|v| v.lagging.is_empty()) else {
            return BTreeMap::new();
        };
        let Some((_, routes)) = self.published.get(service) else {
            return BTreeMap::new();
        };
        containers
            .iter()
            .filter(|c| c.service == service && c.running)
            .filter_map(|c| {
                let (color, slot, address) = (c.color()?, c.slot()?, c.address.as_deref()?);
                let in_rotation = routes.servers.get(&color)?.iter().any(|s| {
                    s.slot == slot && s.address == address && s.state == ServerState::Ready
                });
                in_rotation.then(|| (c.id.clone(), view.up.contains(&(color, slot))))
            })
            .collect()
    }
}

/// One proxy, summed up for `cutover status` and the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyRow {
    pub id: String,
    pub node: String,
    pub listener: String,
    /// Services it serves at the table's latest version.
    pub current: usize,
    /// Services whose latest table it does not serve yet.
    pub behind: Vec<String>,
    /// How long the oldest table version it does not serve has been published (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    /// The table's servers its HAProxy's checks see UP, and the others.
    pub servers_up: usize,
    pub servers_down: usize,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, String>,
}

/// A row per live proxy, from the table (with its write times) and the reports.
pub fn proxy_rows(
    table: &BTreeMap<String, (u64, PublishedRoutes)>,
    reports: &BTreeMap<String, ProxyReport>,
    now_ms: u64,
) -> Vec<ProxyRow> {
    reports
        .iter()
        .map(|(id, report)| {
            let mut row = ProxyRow {
                id: id.clone(),
                node: report.node.clone(),
                listener: report.listener.clone(),
                current: 0,
                behind: Vec::new(),
                lag_ms: None,
                servers_up: 0,
                servers_down: 0,
                errors: report.errors.clone(),
            };
            for (service, (version, published)) in table {
                if report.synced(service, *version) {
                    row.current += 1;
                } else {
                    row.behind.push(service.clone());
                    let lag = now_ms.saturating_sub(published.written_ms);
                    row.lag_ms = Some(row.lag_ms.map_or(lag, |l| l.max(lag)));
                }
                for (color, servers) in &published.routes.servers {
                    for server in servers {
                        let up = report
                            .up
                            .get(service)
                            .and_then(|by_color| by_color.get(color))
                            .is_some_and(|slots| slots.contains(&server.slot));
                        if up {
                            row.servers_up += 1;
                        } else {
                            row.servers_down += 1;
                        }
                    }
                }
            }
            row
        })
        .collect()
}

/// The services whose entries (version applied, servers UP, errors) differ between two sets
/// of reports: those whose reconcile may now go on.
pub fn changed_services(
    old: &BTreeMap<String, ProxyReport>,
    new: &BTreeMap<String, ProxyReport>,
) -> Vec<String> {
    let empty = ProxyReport::default();
    let mut changed = BTreeSet::new();
    for id in old.keys().chain(new.keys()) {
        let (a, b) = (old.get(id).unwrap_or(&empty), new.get(id).unwrap_or(&empty));
        for service in a.applied.keys().chain(b.applied.keys()) {
            if a.applied.get(service).map(|x| x.version)
                != b.applied.get(service).map(|x| x.version)
                || a.up.get(service) != b.up.get(service)
                || a.errors.get(service) != b.errors.get(service)
                || a.traffic.get(service) != b.traffic.get(service)
                || old.contains_key(id) != new.contains_key(id)
            {
                changed.insert(service.clone());
            }
        }
    }
    changed.into_iter().collect()
}

/// `node/id (applied N, table M)` for a status message.
fn describe(id: &str, report: &ProxyReport, service: &str) -> String {
    let applied = report
        .applied
        .get(service)
        .map_or_else(|| "none".to_owned(), |a| a.version.to_string());
    let error = report
        .errors
        .get(service)
        .map_or_else(String::new, |e| format!(": {e}"));
    format!("{id} on {} (serves version {applied}{error})", report.node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::runtime::Counters;

    fn routes(live: Option<Color>) -> ServiceRoutes {
        ServiceRoutes {
            routes: Vec::new(),
            live,
            preview: None,
            port: 80,
            health_path: "/".into(),
            checks: BTreeMap::new(),
            slots: 4,
            servers: BTreeMap::new(),
            split: None,
        }
    }

    /// One color's counters with only its backend's row.
    fn backend(counters: Counters) -> ColorCounters {
        BTreeMap::from([("be_web_green/BACKEND".to_owned(), counters)])
    }

    fn report(version: u64, up: &[(Color, u32)]) -> ProxyReport {
        let mut by_color: BTreeMap<Color, BTreeSet<u32>> = BTreeMap::new();
        for (color, slot) in up {
            by_color.entry(*color).or_default().insert(*slot);
        }
        ProxyReport {
            node: "n".into(),
            applied: BTreeMap::from([("web".to_owned(), Applied { version, at_ms: 0 })]),
            up: BTreeMap::from([("web".to_owned(), by_color)]),
            ..ProxyReport::default()
        }
    }

    #[test]
    fn no_proxy_no_view() {
        assert_eq!(Fleet::default().view("web"), None);
    }

    #[test]
    fn up_is_what_every_proxy_sees_and_lagging_proxies_are_named() {
        let fleet = Fleet {
            published: BTreeMap::from([("web".to_owned(), (7, routes(Some(Color::Blue))))]),
            proxies: BTreeMap::from([
                (
                    "a".to_owned(),
                    report(7, &[(Color::Blue, 1), (Color::Green, 1), (Color::Green, 2)]),
                ),
                (
                    "b".to_owned(),
                    report(6, &[(Color::Green, 1), (Color::Blue, 1)]),
                ),
            ]),
            required: Some("a".into()),
            watches: BTreeMap::new(),
        };
        let view = fleet.view("web").unwrap();
        assert!(view.known);
        assert_eq!(view.live, Some(Color::Blue));
        assert_eq!(
            view.up,
            BTreeSet::from([(Color::Blue, 1), (Color::Green, 1)])
        );
        assert_eq!(view.lagging, ["b on n (serves version 6)"]);
    }

    #[test]
    fn a_required_proxy_that_has_not_reported_lags_and_sees_nothing() {
        let fleet = Fleet {
            published: BTreeMap::from([("web".to_owned(), (3, routes(None)))]),
            proxies: BTreeMap::new(),
            required: Some("me".into()),
            watches: BTreeMap::new(),
        };
        let view = fleet.view("web").unwrap();
        assert!(view.up.is_empty());
        assert_eq!(view.lagging, ["me (not reporting yet)"]);
    }

    #[test]
    fn traffic_is_summed_over_the_proxies_that_count_the_open_window() {
        let watch = Watch {
            color: Color::Green,
            since_ms: 1_000,
            until_ms: 31_000,
            interval_ms: 250,
        };
        let baseline = Counters {
            requests: 100,
            responses_5xx: 3,
            ..Counters::default()
        };
        let sample = |requests: u64, errors_5xx: u64, rtime: u64| {
            let current = Counters {
                requests: 100 + requests,
                responses_5xx: 3 + errors_5xx,
                response_time_ms: rtime,
                ..Counters::default()
            };
            TrafficSample::between(&watch, &backend(baseline), &backend(current))
        };
        let with = |sample: TrafficSample| ProxyReport {
            traffic: BTreeMap::from([("web".to_owned(), sample)]),
            ..report(7, &[])
        };
        // A sample of an older window (another switch) does not count.
        let stale = TrafficSample {
            since_ms: 1,
            ..sample(1_000, 1_000, 900)
        };
        let fleet = Fleet {
            published: BTreeMap::from([("web".to_owned(), (7, routes(Some(Color::Green))))]),
            proxies: BTreeMap::from([
                ("a".to_owned(), with(sample(300, 30, 10))),
                ("b".to_owned(), with(sample(100, 0, 50))),
                ("c".to_owned(), with(stale)),
                ("d".to_owned(), report(7, &[])),
            ]),
            required: None,
            watches: BTreeMap::from([("web".to_owned(), watch)]),
        };
        let figures = fleet.view("web").unwrap().traffic.unwrap();
        assert_eq!(
            figures,
            TrafficFigures {
                requests: 400,
                errors: 30,
                // (300 x 10 + 100 x 50) / 400
                response_time_ms: Some(20),
                proxies: 2,
            }
        );
        assert!((figures.error_ratio() - 0.075).abs() < 1e-9);
        assert_eq!(
            figures.to_string(),
            "30 of 400 requests failed (7.5%), average response time 20 ms, counted by 2 proxies"
        );
        // No window, no figures; a window nobody counted yet: zeros.
        let mut closed = fleet.clone();
        closed.watches.clear();
        assert_eq!(closed.view("web").unwrap().traffic, None);
        let mut quiet = fleet.clone();
        quiet.proxies.clear();
        quiet.required = Some("a".into());
        assert_eq!(
            quiet.view("web").unwrap().traffic,
            Some(TrafficFigures::default())
        );
    }

    #[test]
    fn a_sample_counts_what_moved_since_the_switch() {
        let watch = Watch {
            color: Color::Blue,
            since_ms: 5,
            until_ms: 10,
            interval_ms: 1,
        };
        let before = Counters {
            requests: 50,
            responses_5xx: 5,
            connection_errors: 2,
            response_errors: 1,
            response_time_ms: 7,
        };
        let between =
            |a: Counters, b: Counters| TrafficSample::between(&watch, &backend(a), &backend(b));
        let same = between(before, before);
        assert_eq!(
            (same.requests, same.errors, same.response_time_ms),
            (0, 0, None)
        );
        let after = Counters {
            requests: 60,
            responses_5xx: 9,
            connection_errors: 20,
            ..before
        };
        let moved = between(before, after);
        // A retried connection error is not a failed request; 5xx responses are.
        assert_eq!(
            (moved.requests, moved.errors, moved.response_time_ms),
            (10, 4, Some(7))
        );
        // Never more failures than requests, never a negative count.
        let odd = Counters {
            requests: 51,
            responses_5xx: 50,
            ..before
        };
        assert_eq!(between(before, odd).errors, 1);
        // Fewer requests than the baseline: HAProxy reloaded and counts from zero again.
        assert_eq!(between(after, before).requests, 50);
    }

    #[test]
    fn a_canary_share_is_counted_in_the_split_backend_and_each_row_weighs_its_own_requests() {
        let watch = Watch {
            color: Color::Green,
            since_ms: 5,
            until_ms: 10,
            interval_ms: 1,
        };
        let row = |requests: u64, errors: u64, rtime: u64| Counters {
            requests,
            responses_5xx: errors,
            response_time_ms: rtime,
            ..Counters::default()
        };
        let rows = |entries: &[(&str, Counters)]| -> ColorCounters {
            entries
                .iter()
                .map(|(name, counters)| ((*name).to_owned(), *counters))
                .collect()
        };
        // Before the step: green's backend had served previews (slow ones), g1 and g2 nothing.
        let baseline = rows(&[("be_web_green/BACKEND", row(1_000, 0, 900))]);
        // Then 90 requests through g1 (10 failed, 20 ms) and 10 through g2 (30 ms); the
        // backend row did not move, so its stale 900 ms weighs nothing.
        let current = rows(&[
            ("be_web_green/BACKEND", row(1_000, 0, 900)),
            ("be_web_split/g1", row(90, 10, 20)),
            ("be_web_split/g2", row(10, 0, 30)),
        ]);
        let sample = TrafficSample::between(&watch, &baseline, &current);
        assert_eq!(
            (sample.requests, sample.errors, sample.response_time_ms),
            (100, 10, Some(21))
        );
    }

    #[test]
    fn a_removed_service_is_synced_once_dropped() {
        let dropped = ProxyReport::default();
        assert!(dropped.synced("web", 0));
        assert!(!dropped.synced("web", 5));
        assert!(!report(5, &[]).synced("web", 0));
        assert!(report(5, &[]).synced("web", 5));
        assert!(report(6, &[]).synced("web", 5));
    }
}
