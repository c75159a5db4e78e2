//! Tables in, text out: the pure half of the adapter.

use super::render::*;
use super::*;

fn route(host: Option<&str>, path: Option<&str>) -> Route {
    Route {
        host: host.map(str::to_owned),
        path_prefix: path.map(str::to_owned),
    }
}

fn ready(slot: u32, address: &str) -> Server {
    Server {
        slot,
        address: address.to_owned(),
        state: ServerState::Ready,
    }
}

/// A service routed by `routes`, live on blue with two ready servers.
fn service(routes: Vec<Route>) -> ServiceRoutes {
    ServiceRoutes {
        checks: BTreeMap::new(),
        routes,
        live: Some(Color::Blue),
        preview: None,
        port: 80,
        health_path: "/health".into(),
        slots: 4,
        servers: BTreeMap::from([(
            Color::Blue,
            vec![ready(1, "10.0.0.1"), ready(2, "10.0.0.2")],
        )]),
        split: None,
    }
}

fn settings() -> Settings {
    let mut s = Settings::new("/run/cutover", "127.0.0.1:8080");
    s.preview_bind = Some("127.0.0.1:8081".into());
    s
}

fn table(entries: Vec<(&str, ServiceRoutes)>) -> BTreeMap<String, ServiceRoutes> {
    entries
        .into_iter()
        .map(|(n, r)| (n.to_owned(), r))
        .collect()
}

#[test]
fn config_has_the_global_and_defaults_that_zero_failures_rest_on() {
    let config = render(&settings(), &BTreeMap::new());
    for line in [
        "    master-worker\n",
        "    stats socket /run/cutover/admin.sock mode 600 level admin expose-fd listeners\n",
        "    hard-stop-after 30000ms\n",
        "    option redispatch 1\n",
        "    retries 3\n",
        "    retry-on conn-failure empty-response\n",
        "frontend live\n    bind 127.0.0.1:8080\n",
        "frontend preview\n    bind 127.0.0.1:8081\n",
        "    default_backend no_backend\n",
        "backend no_backend\n    http-request return status 503 content-type text/plain string \"no healthy backend for this route\"\n",
    ] {
        assert!(config.contains(line), "missing {line:?} in\n{config}");
    }
}

#[test]
fn frontends_look_up_host_and_path_then_host_then_path() {
    let config = render(&settings(), &BTreeMap::new());
    let expected = "\
frontend live
    bind 127.0.0.1:8080
    http-request set-var(txn.path) path
    http-request set-var(txn.host) req.hdr(host),lower,word(1,:)
    http-request set-var(txn.hostpath) var(txn.host),concat(,txn.path,)
    http-request set-var(txn.backend) var(txn.hostpath),map_beg(/run/cutover/live_hostpaths.map)
    http-request set-var(txn.backend) var(txn.host),map_str(/run/cutover/live_hosts.map) unless { var(txn.backend) -m found }
    http-request set-var(txn.backend) path,map_beg(/run/cutover/live_paths.map) unless { var(txn.backend) -m found }
    use_backend %[var(txn.backend)] if { var(txn.backend) -m found }
    default_backend no_backend
";
    assert!(config.contains(expected), "{config}");
    assert!(config.contains("map_beg(/run/cutover/preview_paths.map)"));
}

#[test]
fn no_preview_frontend_without_a_preview_bind() {
    let config = render(
        &Settings::new("/run/cutover", "127.0.0.1:8080"),
        &BTreeMap::new(),
    );
    assert!(!config.contains("frontend preview"));
}

#[test]
fn both_colors_get_a_backend_with_a_server_line_per_slot() {
    let mut books = service(vec![route(None, Some("/books"))]);
    books.servers.insert(
        Color::Green,
        vec![Server {
            slot: 2,
            address: "10.0.1.2".into(),
            state: ServerState::Drain,
        }],
    );
    let config = render(&settings(), &table(vec![("books", books)]));
    let blue = "\
backend be_books_blue
    balance roundrobin
    option httpchk
    http-check send meth GET uri /health ver HTTP/1.1 hdr Host books
    http-check expect status 200-399
    default-server check inter 1000ms fastinter 250ms downinter 50ms rise 2 fall 2
    server s1 10.0.0.1:80
    server s2 10.0.0.2:80
    server s3 0.0.0.0:80 disabled
    server s4 0.0.0.0:80 disabled
";
    assert!(config.contains(blue), "{config}");
    let green = "\
    server s1 0.0.0.0:80 disabled
    server s2 10.0.1.2:80 disabled
    server s3 0.0.0.0:80 disabled
";
    assert!(config.contains(green), "{config}");
}

#[test]
fn a_down_server_is_checked_every_50_ms_so_a_new_replica_is_up_soon_after_it_answers() {
    let check = |interval_ms| Check {
        port: 80,
        path: "/health".into(),
        host: "books".into(),
        timing: Some(CheckTiming {
            interval_ms,
            timeout_ms: 100,
            rise: 3,
            fall: 2,
        }),
    };
    let mut books = service(vec![route(None, Some("/books"))]);
    books.checks = BTreeMap::from([(Color::Blue, check(250)), (Color::Green, check(5_000))]);
    let config = render(&settings(), &table(vec![("books", books)]));
    for line in [
        // `downinter` for a server DOWN (a new replica not listening yet), `fastinter` while
        // it rises (3 successes in a row still), `inter` once UP.
        "    default-server check inter 250ms fastinter 200ms downinter 50ms rise 3 fall 2\n",
        // However slow the revision's interval.
        "    default-server check inter 2000ms fastinter 200ms downinter 50ms rise 3 fall 2\n",
    ] {
        assert!(config.contains(line), "{line} in {config}");
    }
}

#[test]
fn prefix_maps_list_the_longest_prefix_first() {
    let t = table(vec![
        ("root", service(vec![route(None, Some("/"))])),
        (
            "api",
            service(vec![
                route(None, Some("/api")),
                route(None, Some("/api/v2")),
            ]),
        ),
        ("books", service(vec![route(None, Some("/books"))])),
    ]);
    let maps = render_maps(&t);
    assert_eq!(
        maps["live_paths.map"],
        "/api/v2 be_api_blue\n/books be_books_blue\n/api be_api_blue\n/ be_root_blue\n"
    );
}

#[test]
fn host_routes_are_lower_case_and_host_paths_join_host_and_path() {
    let t = table(vec![
        ("shop", service(vec![route(Some("Shop.Example.com"), None)])),
        (
            "admin",
            service(vec![route(Some("shop.example.com"), Some("/admin"))]),
        ),
    ]);
    let maps = render_maps(&t);
    assert_eq!(maps["live_hosts.map"], "shop.example.com be_shop_blue\n");
    assert_eq!(
        maps["live_hostpaths.map"],
        "shop.example.com/admin be_admin_blue\n"
    );
    assert_eq!(maps["live_paths.map"], "");
}

#[test]
fn preview_maps_point_at_the_preview_color_else_the_live_one() {
    let mut rolling = service(vec![route(None, Some("/a"))]);
    rolling.preview = Some(Color::Green);
    let steady = service(vec![route(None, Some("/b"))]);
    let mut dark = service(vec![route(None, Some("/c"))]);
    dark.live = None;
    let maps = render_maps(&table(vec![("a", rolling), ("b", steady), ("c", dark)]));
    assert_eq!(
        maps["live_paths.map"],
        "/a be_a_blue\n/b be_b_blue\n/c no_backend\n"
    );
    assert_eq!(
        maps["preview_paths.map"],
        "/a be_a_green\n/b be_b_blue\n/c no_backend\n"
    );
}

#[test]
fn check_table_refuses_what_would_break_the_config_or_the_routes() {
    let cases: Vec<(&str, ServiceRoutes, &str)> = vec![
        (
            "Books",
            service(vec![]),
            "service Books: the name must be a DNS label",
        ),
        (
            "a",
            ServiceRoutes {
                health_path: "/he alth".into(),
                ..service(vec![])
            },
            "health path \"/he alth\"",
        ),
        (
            "a",
            service(vec![route(None, Some("api"))]),
            "path prefix \"api\" must start with /",
        ),
        (
            "a",
            service(vec![route(Some("x.com:80"), None)]),
            "host \"x.com:80\"",
        ),
        (
            "a",
            ServiceRoutes {
                servers: BTreeMap::from([(Color::Blue, vec![ready(5, "10.0.0.5")])]),
                ..service(vec![])
            },
            "blue server slot 5 is outside 1..=4",
        ),
        (
            "a",
            ServiceRoutes {
                servers: BTreeMap::from([(Color::Blue, vec![ready(1, "10.0.0.1\nbind :1")])]),
                ..service(vec![])
            },
            "blue server slot 1 has address",
        ),
    ];
    for (name, routes, expected) in cases {
        let err = check_table(&table(vec![(name, routes)])).unwrap_err();
        assert!(err.to_string().contains(expected), "{err} vs {expected}");
    }
    let conflict = table(vec![
        ("a", service(vec![route(None, Some("/x"))])),
        ("b", service(vec![route(None, Some("/x"))])),
    ]);
    assert_eq!(
        check_table(&conflict).unwrap_err().to_string(),
        "service b: route \"/x\" is already routed to service a"
    );
    assert!(check_table(&table(vec![("a", service(vec![route(None, Some("/"))]))])).is_ok());
}

#[test]
fn a_switch_or_a_scale_keeps_the_shape_a_route_change_does_not() {
    let base = service(vec![route(None, Some("/a"))]);
    let mut switched = base.clone();
    switched.live = Some(Color::Green);
    switched
        .servers
        .insert(Color::Green, vec![ready(1, "10.0.1.1")]);
    let mut rerouted = base.clone();
    rerouted.routes.push(route(None, Some("/b")));
    let mut bigger = base.clone();
    bigger.slots = 8;
    let shape = |r: &ServiceRoutes| shapes(&table(vec![("a", r.clone())]));
    assert_eq!(shape(&base), shape(&switched));
    assert_ne!(shape(&base), shape(&rerouted));
    assert_ne!(shape(&base), shape(&bigger));
}

#[test]
fn a_switch_readies_the_new_color_then_flips_the_maps_then_drains_the_old() {
    let s = settings();
    let old = service(vec![route(None, Some("/a")), route(Some("a.com"), None)]);
    let mut new = old.clone();
    new.live = Some(Color::Green);
    new.servers = BTreeMap::from([
        (
            Color::Blue,
            vec![
                Server {
                    slot: 1,
                    address: "10.0.0.1".into(),
                    state: ServerState::Drain,
                },
                Server {
                    slot: 2,
                    address: "10.0.0.2".into(),
                    state: ServerState::Drain,
                },
            ],
        ),
        (Color::Green, vec![ready(1, "10.0.1.1")]),
    ]);
    assert_eq!(
        runtime_commands(&s, "a", Some(&old), &new, None),
        vec![
            "set server be_a_green/s1 addr 10.0.1.1 port 80",
            "set server be_a_green/s1 health down",
            "set server be_a_green/s1 state ready",
            "set map /run/cutover/live_hosts.map a.com be_a_green",
            "set map /run/cutover/live_paths.map /a be_a_green",
            "set map /run/cutover/preview_hosts.map a.com be_a_green",
            "set map /run/cutover/preview_paths.map /a be_a_green",
            "set server be_a_blue/s1 state drain",
            "set server be_a_blue/s2 state drain",
        ]
    );
    assert_eq!(
        runtime_commands(&s, "a", Some(&new), &new, None),
        Vec::<String>::new()
    );
}

#[test]
fn scaling_down_drains_and_scaling_up_sets_address_then_state() {
    let s = settings();
    let old = service(vec![route(None, Some("/a"))]);
    let mut down = old.clone();
    down.servers.get_mut(&Color::Blue).unwrap()[1].state = ServerState::Drain;
    assert_eq!(
        runtime_commands(&s, "a", Some(&old), &down, None),
        vec!["set server be_a_blue/s2 state drain"]
    );
    let mut gone = old.clone();
    gone.servers.get_mut(&Color::Blue).unwrap().pop();
    assert_eq!(
        runtime_commands(&s, "a", Some(&down), &gone, None),
        vec!["set server be_a_blue/s2 state maint"]
    );
    let mut up = old.clone();
    up.servers
        .get_mut(&Color::Blue)
        .unwrap()
        .push(ready(3, "10.0.0.3"));
    assert_eq!(
        runtime_commands(&s, "a", Some(&old), &up, None),
        vec![
            "set server be_a_blue/s3 addr 10.0.0.3 port 80",
            "set server be_a_blue/s3 health down",
            "set server be_a_blue/s3 state ready",
        ]
    );
}

#[test]
fn an_unknown_runtime_state_sets_every_slot_and_map_entry() {
    let s = Settings::new("/d", ":80");
    let new = service(vec![route(None, Some("/a"))]);
    let commands = runtime_commands(&s, "a", None, &new, None);
    assert_eq!(
        commands,
        vec![
            "set server be_a_blue/s1 addr 10.0.0.1 port 80",
            "set server be_a_blue/s1 state ready",
            "set server be_a_blue/s2 addr 10.0.0.2 port 80",
            "set server be_a_blue/s2 state ready",
            "set map /d/live_paths.map /a be_a_blue",
            "set server be_a_blue/s3 state maint",
            "set server be_a_blue/s4 state maint",
            "set server be_a_green/s1 state maint",
            "set server be_a_green/s2 state maint",
            "set server be_a_green/s3 state maint",
            "set server be_a_green/s4 state maint",
            "set server be_a_split/b1 state maint",
            "set server be_a_split/b2 state maint",
            "set server be_a_split/b3 state maint",
            "set server be_a_split/b4 state maint",
            "set server be_a_split/g1 state maint",
            "set server be_a_split/g2 state maint",
            "set server be_a_split/g3 state maint",
            "set server be_a_split/g4 state maint",
        ]
    );
}

#[test]
fn an_unknown_runtime_state_sends_a_moved_slot_down_until_checked() {
    let s = Settings::new("/d", ":80");
    let new = service(vec![route(None, Some("/a"))]);
    // HAProxy reports slot 1 at the address the table has, slot 2 at another replica's.
    let state = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_port\n\
                 3 be_a_blue 1 s1 10.0.0.1 2 80\n3 be_a_blue 2 s2 10.0.0.9 2 80\n";
    let actual = server_addresses(state);
    let commands = runtime_commands(&s, "a", None, &new, Some(&actual));
    assert_eq!(
        commands[..5],
        [
            "set server be_a_blue/s1 addr 10.0.0.1 port 80",
            "set server be_a_blue/s1 state ready",
            "set server be_a_blue/s2 addr 10.0.0.2 port 80",
            "set server be_a_blue/s2 health down",
            "set server be_a_blue/s2 state ready",
        ]
    );
}

#[test]
fn slots_leave_room_to_double() {
    assert_eq!([0, 1, 2, 3, 4, 5].map(slots_for), [4, 4, 4, 8, 8, 12],);
}

#[test]
fn servers_from_containers_skip_archived_stopped_and_addressless_replicas() {
    let container = |name: &str, color, slot, address: Option<&str>, running, ready| Container {
        id: name.into(),
        name: name.into(),
        service: "books".into(),
        role: Role::Replica { color, slot },
        revision: "r1".into(),
        spec_index: 1,
        image: "i".into(),
        running,
        created_ms: 0,
        address: address.map(str::to_owned),
        ready,
        stopping: false,
        port: None,
        health: None,
    };
    let servers = ServiceRoutes::servers_from(&[
        container("books-blue-2", Color::Blue, 2, Some("10.0.0.2"), true, true),
        container(
            "books-blue-1",
            Color::Blue,
            1,
            Some("10.0.0.1"),
            true,
            false,
        ),
        container("books-rr1-3", Color::Blue, 3, Some("10.0.0.3"), true, true),
        container("books-green-1", Color::Green, 1, None, true, true),
        container(
            "books-green-2",
            Color::Green,
            2,
            Some("10.0.1.2"),
            false,
            true,
        ),
    ]);
    assert_eq!(
        servers,
        BTreeMap::from([(
            Color::Blue,
            vec![
                Server {
                    slot: 1,
                    address: "10.0.0.1".into(),
                    state: ServerState::Maint
                },
                ready(2, "10.0.0.2"),
            ]
        )])
    );
}

#[test]
fn a_reload_carries_the_health_of_servers_whose_address_stays_and_only_theirs() {
    let header = "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state \
                  srv_uweight srv_iweight srv_time_since_last_change srv_check_status \
                  srv_check_result srv_check_health srv_check_state srv_agent_state \
                  bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord";
    let line = |server: &str, address: &str, admin: u32, port: u16| {
        format!("3 be_web_blue 1 {server} {address} 2 {admin} 1 1 7 15 3 3 6 0 0 0 - {port} -")
    };
    let state = [
        "1".to_owned(),
        header.to_owned(),
        // Kept: the address and port the new configuration has; drain cleared.
        line("s1", "10.0.0.1", 8, 80),
        // Dropped: slot 2 moved to another replica.
        line("s2", "10.0.0.9", 0, 80),
        // Dropped: the port moved.
        line("s3", "0.0.0.0", 1, 8080),
        // Kept: a spare slot as configured.
        line("s4", "0.0.0.0", 1, 80),
        // Dropped: a backend the new configuration does not have.
        line("s1", "10.0.0.1", 0, 80).replace("be_web_blue", "be_gone_blue"),
        String::new(),
    ]
    .join("\n");
    let out = server_state_for_reload(&state, &table(vec![("web", service(vec![]))]));
    let expected = [
        "1".to_owned(),
        header.to_owned(),
        line("s1", "10.0.0.1", 0, 80),
        line("s4", "0.0.0.0", 0, 80),
        String::new(),
    ]
    .join("\n");
    assert_eq!(out, expected);
}

/// Live on blue with two servers, and green's two servers ready beside it: a canary about
/// to take a share.
fn canary_ready() -> ServiceRoutes {
    let mut routes = service(vec![route(None, Some("/a"))]);
    routes.servers.insert(
        Color::Green,
        vec![ready(1, "10.0.1.1"), ready(2, "10.0.1.2")],
    );
    routes
}

fn split(color: Color, percent: u32) -> Option<Split> {
    Some(Split { color, percent })
}

#[test]
fn the_split_backend_tracks_every_slot_of_both_colors_and_is_idle_without_a_canary() {
    let config = render(&settings(), &table(vec![("a", canary_ready())]));
    let expected = "\
backend be_a_split
    balance roundrobin
    server b1 0.0.0.0:80 track be_a_blue/s1 disabled
    server b2 0.0.0.0:80 track be_a_blue/s2 disabled
    server b3 0.0.0.0:80 track be_a_blue/s3 disabled
    server b4 0.0.0.0:80 track be_a_blue/s4 disabled
    server g1 0.0.0.0:80 track be_a_green/s1 disabled
    server g2 0.0.0.0:80 track be_a_green/s2 disabled
    server g3 0.0.0.0:80 track be_a_green/s3 disabled
    server g4 0.0.0.0:80 track be_a_green/s4 disabled
";
    assert!(config.contains(expected), "{config}");
    // The maps point at the live color's backend.
    let maps = render_maps(&table(vec![("a", canary_ready())]));
    assert_eq!(maps["live_paths.map"], "/a be_a_blue\n");
}

#[test]
fn a_split_is_in_the_files_so_a_reload_comes_back_with_it() {
    let mut routes = canary_ready();
    routes.split = split(Color::Green, 10);
    let config = render(&settings(), &table(vec![("a", routes.clone())]));
    for line in [
        "    server b1 10.0.0.1:80 track be_a_blue/s1 weight 256\n",
        "    server b2 10.0.0.2:80 track be_a_blue/s2 weight 256\n",
        "    server b3 0.0.0.0:80 track be_a_blue/s3 disabled\n",
        "    server g1 10.0.1.1:80 track be_a_green/s1 weight 28\n",
        "    server g2 10.0.1.2:80 track be_a_green/s2 weight 28\n",
    ] {
        assert!(config.contains(line), "missing {line:?} in\n{config}");
    }
    let maps = render_maps(&table(vec![("a", routes)]));
    assert_eq!(maps["live_paths.map"], "/a be_a_split\n");
    // The preview listener never splits: it shows the preview color, else the live one.
    assert_eq!(maps["preview_paths.map"], "/a be_a_blue\n");
}

#[test]
fn a_split_and_its_end_keep_the_shape_so_a_canary_never_reloads() {
    let base = table(vec![("a", canary_ready())]);
    let mut split_table = base.clone();
    if let Some(routes) = split_table.get_mut("a") {
        routes.split = split(Color::Green, 50);
    }
    assert_eq!(shapes(&base), shapes(&split_table));
}

#[test]
fn a_canary_readies_weighted_split_servers_before_the_live_map_points_at_them() {
    let s = settings();
    let old = canary_ready();
    let mut ten = old.clone();
    ten.split = split(Color::Green, 10);
    assert_eq!(
        runtime_commands(&s, "a", Some(&old), &ten, None),
        vec![
            "set server be_a_split/b1 addr 10.0.0.1 port 80",
            "set weight be_a_split/b1 256",
            "set server be_a_split/b1 state ready",
            "set server be_a_split/b2 addr 10.0.0.2 port 80",
            "set weight be_a_split/b2 256",
            "set server be_a_split/b2 state ready",
            "set server be_a_split/g1 addr 10.0.1.1 port 80",
            "set weight be_a_split/g1 28",
            "set server be_a_split/g1 state ready",
            "set server be_a_split/g2 addr 10.0.1.2 port 80",
            "set weight be_a_split/g2 28",
            "set server be_a_split/g2 state ready",
            "set map /run/cutover/live_paths.map /a be_a_split",
        ]
    );
    // The next weight is a weight change only.
    let mut fifty = ten.clone();
    fifty.split = split(Color::Green, 50);
    assert_eq!(
        runtime_commands(&s, "a", Some(&ten), &fifty, None),
        vec![
            "set weight be_a_split/g1 256",
            "set weight be_a_split/g2 256"
        ]
    );
    assert_eq!(
        runtime_commands(&s, "a", Some(&fifty), &fifty, None),
        Vec::<String>::new()
    );

    // The full switch: the maps leave the split backend first, then its servers go.
    let mut switched = fifty.clone();
    switched.live = Some(Color::Green);
    switched.split = None;
    assert_eq!(
        runtime_commands(&s, "a", Some(&fifty), &switched, None),
        vec![
            "set map /run/cutover/live_paths.map /a be_a_green",
            "set map /run/cutover/preview_paths.map /a be_a_green",
            "set server be_a_split/b1 state maint",
            "set server be_a_split/b2 state maint",
            "set server be_a_split/g1 state maint",
            "set server be_a_split/g2 state maint",
        ]
    );

    // An abort: every request back to blue at once, then green and the split servers go.
    let mut aborted = ten.clone();
    aborted.split = None;
    aborted.servers.remove(&Color::Green);
    assert_eq!(
        runtime_commands(&s, "a", Some(&ten), &aborted, None),
        vec![
            "set map /run/cutover/live_paths.map /a be_a_blue",
            "set server be_a_green/s1 state maint",
            "set server be_a_green/s2 state maint",
            "set server be_a_split/b1 state maint",
            "set server be_a_split/b2 state maint",
            "set server be_a_split/g1 state maint",
            "set server be_a_split/g2 state maint",
        ]
    );
}

#[test]
fn a_replica_leaving_during_a_canary_leaves_the_split_and_the_weights_follow() {
    let s = settings();
    let mut ten = canary_ready();
    ten.split = split(Color::Green, 10);
    let mut fewer = ten.clone();
    fewer.servers.get_mut(&Color::Blue).unwrap().pop();
    // One blue and two green servers: each green one gets half a blue one's 10/90.
    assert_eq!(
        runtime_commands(&s, "a", Some(&ten), &fewer, None),
        vec![
            "set weight be_a_split/g1 14",
            "set weight be_a_split/g2 14",
            "set server be_a_blue/s2 state maint",
            "set server be_a_split/b2 state maint",
        ]
    );
}

#[test]
fn split_weights_give_the_share_asked_within_the_rounding_of_256() {
    for (percent, live, canary, expected) in [
        (10, 2, 2, (256, 28)),
        (50, 2, 2, (256, 256)),
        (90, 2, 2, (28, 256)),
        (10, 3, 1, (256, 85)),
        (1, 10, 1, (256, 26)),
        (99, 1, 1, (3, 256)),
        (1, 1, 100, (256, 1)),
        (10, 0, 2, (256, 1)),
        (10, 2, 0, (1, 256)),
    ] {
        let weights = split_weights(percent, live, canary);
        assert_eq!(
            weights, expected,
            "{percent}% of {live} live + {canary} canary"
        );
        let (w_live, w_canary) = weights;
        if live > 0 && canary > 0 && w_canary > 1 {
            let share = f64::from(canary * w_canary) / f64::from(canary * w_canary + live * w_live);
            assert!(
                (share * 100.0 - f64::from(percent)).abs() < 1.0,
                "{percent}% of {live} + {canary}: {share}"
            );
        }
    }
}

#[test]
fn only_a_split_of_1_to_99_percent_for_the_other_color_counts() {
    let routes = canary_ready();
    for (live, split_to, expected) in [
        (Some(Color::Blue), split(Color::Green, 10), true),
        (Some(Color::Blue), split(Color::Blue, 10), false),
        (Some(Color::Blue), split(Color::Green, 0), false),
        (Some(Color::Blue), split(Color::Green, 100), false),
        (None, split(Color::Green, 10), false),
        (Some(Color::Blue), None, false),
    ] {
        let r = ServiceRoutes {
            live,
            split: split_to,
            ..routes.clone()
        };
        assert_eq!(
            r.active_split().is_some(),
            expected,
            "{live:?} {split_to:?}"
        );
        let target = route_target("a", &r, Listener::Live);
        assert_eq!(target == "be_a_split", expected, "{target}");
    }
    for (name, color, slot) in [
        ("g1", Color::Green, Some(1)),
        ("g12", Color::Green, Some(12)),
        ("b3", Color::Blue, Some(3)),
        ("b3", Color::Green, None),
        ("g", Color::Green, None),
        ("gx", Color::Green, None),
        ("BACKEND", Color::Blue, None),
    ] {
        assert_eq!(split_server_slot(name, color), slot, "{name}");
    }
}
