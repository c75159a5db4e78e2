//! The Consul client and the store against a real Consul agent.

mod support;

use std::time::Duration;

use tokio::time::Instant;

use cutover::cli::cas::{Decision, Outcome, RetryPolicy, update_service};
use cutover::consul::{Client, ConsulConfig, ConsulError, PrefixWatch};
use cutover::status::{Action, Phase, Request, Status};
use support::{TempDir, agent, manifest, unique_prefix};

#[tokio::test]
async fn put_get_list_delete() {
    let client = agent().client();
    let prefix = unique_prefix("kv");
    let key = format!("{prefix}/a");

    assert_eq!(client.get(&key).await.unwrap(), None);
    assert!(client.put(&key, b"one", None).await.unwrap());
    let entry = client.get(&key).await.unwrap().unwrap();
    assert_eq!(entry.key, key);
    assert_eq!(entry.value, b"one");
    assert!(entry.modify_index >= entry.create_index);

    // Bytes that are not UTF-8 survive.
    assert!(
        client
            .put(&format!("{prefix}/b"), &[0, 159, 255], None)
            .await
            .unwrap()
    );
    let listing = client.list(&format!("{prefix}/")).await.unwrap();
    let keys: Vec<&str> = listing.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, [key.clone(), format!("{prefix}/b")]);
    assert_eq!(listing.entries[1].value, [0, 159, 255]);
    assert!(listing.index >= entry.modify_index);

    assert!(client.delete(&key, None).await.unwrap());
    assert_eq!(client.get(&key).await.unwrap(), None);

    // An empty prefix lists as empty, with an index to block on.
    let empty = client.list(&format!("{prefix}/nothing/")).await.unwrap();
    assert!(empty.entries.is_empty());
    assert!(empty.index > 0);
}

#[tokio::test]
async fn check_and_set() {
    let client = agent().client();
    let key = format!("{}/cas", unique_prefix("cas"));

    assert!(
        client.put(&key, b"v1", Some(0)).await.unwrap(),
        "cas=0 creates"
    );
    assert!(
        !client.put(&key, b"v2", Some(0)).await.unwrap(),
        "cas=0 never overwrites"
    );
    let first = client.get(&key).await.unwrap().unwrap();

    assert!(
        client
            .put(&key, b"v2", Some(first.modify_index))
            .await
            .unwrap()
    );
    assert!(
        !client
            .put(&key, b"v3", Some(first.modify_index))
            .await
            .unwrap(),
        "a stale index is refused"
    );
    assert_eq!(client.get(&key).await.unwrap().unwrap().value, b"v2");

    assert!(
        !client.delete(&key, Some(first.modify_index)).await.unwrap(),
        "a stale delete is refused"
    );
    let second = client.get(&key).await.unwrap().unwrap();
    assert!(
        client
            .delete(&key, Some(second.modify_index))
            .await
            .unwrap()
    );
    assert_eq!(client.get(&key).await.unwrap(), None);
}

#[tokio::test]
async fn a_put_wakes_a_blocked_list_long_before_the_wait() {
    let client = agent().client();
    let prefix = format!("{}/", unique_prefix("blocking"));
    let before = client.list(&prefix).await.unwrap();

    let writer = client.clone();
    let key = format!("{prefix}books");
    let write = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        writer.put(&key, b"hello", None).await.unwrap();
    });
    let started = Instant::now();
    // Consul may answer early when unrelated keys change (other tests write to this agent),
    // so keep blocking until the put shows, as any client must.
    let mut after = before.clone();
    while after.entries.is_empty() {
        after = client
            .list_blocking(&prefix, after.index, Duration::from_secs(60))
            .await
            .unwrap();
    }
    write.await.unwrap();

    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the put should wake the query well before its 60 s wait"
    );
    assert!(after.index > before.index);
    assert_eq!(after.entries.len(), 1);
    assert_eq!(after.entries[0].value, b"hello");
}

#[tokio::test]
async fn a_prefix_watch_yields_each_change() {
    let client = agent().client();
    let prefix = format!("{}/", unique_prefix("watch"));
    client.put(&format!("{prefix}a"), b"1", None).await.unwrap();

    let mut watch = PrefixWatch::new(client.clone(), prefix.clone(), Duration::from_secs(60));
    let first = watch.next().await.unwrap();
    assert!(!first.reset);
    assert_eq!(first.listing.entries.len(), 1);
    assert_eq!(watch.index(), first.listing.index);

    // A write under another prefix must not wake this watch with a "change"; a write under
    // this one must.
    let writer = client.clone();
    let other = format!("{}/", unique_prefix("watch-other"));
    let key = format!("{prefix}b");
    let write = tokio::spawn(async move {
        writer
            .put(&format!("{other}x"), b"noise", None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        writer.put(&key, b"2", None).await.unwrap();
    });
    let second = tokio::time::timeout(Duration::from_secs(30), watch.next())
        .await
        .expect("the watch should wake up on the put")
        .unwrap();
    write.await.unwrap();
    assert!(!second.reset);
    assert!(!watch.reset_pending());
    let keys: Vec<String> = second
        .listing
        .entries
        .iter()
        .map(|e| e.key.clone())
        .collect();
    assert_eq!(keys, [format!("{prefix}a"), format!("{prefix}b")]);
}

#[tokio::test]
async fn an_unreachable_agent_is_named_in_the_error() {
    let address = format!("127.0.0.1:{}", support::unused_port());
    let client = Client::new(&ConsulConfig {
        address: address.clone(),
        retry_timeout: Duration::from_secs(1),
        ..ConsulConfig::default()
    })
    .unwrap();
    let started = Instant::now();
    let error = client.get("cutover/services/books").await.unwrap_err();
    assert!(
        matches!(error, ConsulError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert_eq!(
        error.to_string(),
        format!(
            "cannot reach Consul at http://{address} (GET cutover/services/books): connection refused"
        )
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn the_store_reads_services_with_their_diagnostics() {
    let agent = agent();
    let prefix = unique_prefix("store");
    let store = agent.store(&prefix);
    let client = agent.client();

    let books = manifest("books", "books:1", 2);
    assert!(store.put_service("books", &books, 0).await.unwrap());
    client
        .put(&store.service_key("broken"), b"spec: [", None)
        .await
        .unwrap();
    client
        .put(&store.service_key("binary"), &[0xff, 0xfe], None)
        .await
        .unwrap();
    // Neither a nested key nor another folder is a service.
    client
        .put(&format!("{prefix}/services/nested/key"), b"x", None)
        .await
        .unwrap();
    client
        .put(&format!("{prefix}/status/books"), b"{}", None)
        .await
        .unwrap();

    let (services, index) = store.list_services().await.unwrap();
    assert!(index > 0);
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["binary", "books", "broken"]);

    let stored_books = &services[1];
    assert_eq!(stored_books.key, format!("{prefix}/services/books"));
    assert_eq!(stored_books.text, books);
    assert_eq!(stored_books.parsed.as_ref().unwrap().spec.replicas, 2);

    for invalid in [&services[0], &services[2]] {
        let diagnostics = invalid.parsed.as_ref().unwrap_err();
        assert_eq!(
            diagnostics.0[0].source, invalid.key,
            "the source is the KV key"
        );
    }

    let one = store.get_service("books").await.unwrap().unwrap();
    assert_eq!(one.modify_index, stored_books.modify_index);
    assert!(store.get_service("missing").await.unwrap().is_none());

    // Check-and-set through the store.
    assert!(!store.put_service("books", &books, 0).await.unwrap());
    assert!(
        !store
            .delete_service("books", one.modify_index + 1000)
            .await
            .unwrap()
    );
    assert!(
        store
            .delete_service("books", one.modify_index)
            .await
            .unwrap()
    );

    // Oversized values never reach Consul.
    let huge = "#".repeat(cutover::spec::MAX_VALUE_BYTES + 1);
    let error = store.put_service("huge", &huge, 0).await.unwrap_err();
    assert!(
        error.to_string().contains("more than Consul's limit"),
        "{error}"
    );
}

#[tokio::test]
async fn statuses_and_requests_round_trip() {
    let store = agent().store(&unique_prefix("status"));
    assert!(store.get_status("books").await.unwrap().is_none());

    let status = Status {
        observed_index: 12,
        phase: Some(Phase::Available),
        ..Status::default()
    };
    assert!(store.put_status("books", &status, None).await.unwrap());
    let read = store.get_status("books").await.unwrap().unwrap();
    assert_eq!(read.readable().unwrap().value, status);
    let listed = store.list_statuses().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, "books");

    let request = Request {
        id: "r1".to_owned(),
        action: Action::Promote,
        revision: "abc".to_owned(),
        requested_at: "2024-01-01T00:00:00Z".to_owned(),
    };
    assert!(store.get_request("books").await.unwrap().is_none());
    assert!(store.put_request("books", &request, Some(0)).await.unwrap());
    assert!(!store.put_request("books", &request, Some(0)).await.unwrap());
    assert_eq!(
        store
            .get_request("books")
            .await
            .unwrap()
            .unwrap()
            .into_readable()
            .unwrap()
            .value,
        request
    );
}

#[tokio::test]
async fn values_that_do_not_decode_are_unreadable_results_not_errors() {
    let store = agent().store(&unique_prefix("junk"));
    let good = Status {
        observed_index: 3,
        phase: Some(Phase::Available),
        ..Status::default()
    };
    assert!(store.put_status("books", &good, None).await.unwrap());
    let client = store.client();
    client
        .put(&store.status_key("users"), b"not json", None)
        .await
        .unwrap();
    client
        .put(&store.status_key("bytes"), &[0, 159, 255], None)
        .await
        .unwrap();
    client
        .put(
            &store.request_key("users"),
            br#"{"action": "launch"}"#,
            None,
        )
        .await
        .unwrap();

    // One bad status does not hide the others.
    let listed = store.list_statuses().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["books", "bytes", "users"]);
    assert_eq!(listed[0].1.readable().unwrap().value, good);
    for (name, stored) in &listed[1..] {
        let bad = stored.unreadable().expect("unreadable");
        assert_eq!(bad.key, store.status_key(name));
        assert!(bad.modify_index > 0);
    }

    let read = store.get_status("users").await.unwrap().unwrap();
    let bad = read.unreadable().expect("unreadable");
    let entry = client
        .get(&store.status_key("users"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bad.modify_index, entry.modify_index);
    assert_eq!(
        bad.to_string(),
        format!(
            "{} (index {}) does not hold a valid status: expected ident at line 1 column 2",
            store.status_key("users"),
            entry.modify_index
        )
    );

    let read = store.get_request("users").await.unwrap().unwrap();
    let bad = read.unreadable().expect("unreadable");
    assert_eq!(bad.key, store.request_key("users"));
    assert!(bad.error.starts_with("unknown variant `launch`"), "{bad}");
    assert!(store.get_request("books").await.unwrap().is_none());

    // Only Consul being unreachable is an error.
    let nowhere = Client::new(&ConsulConfig {
        address: format!("127.0.0.1:{}", support::unused_port()),
        retry_timeout: Duration::from_millis(200),
        ..ConsulConfig::default()
    })
    .unwrap();
    let unreachable = cutover::store::Store::new(nowhere, store.prefix()).unwrap();
    assert!(unreachable.get_status("users").await.is_err());
    assert!(unreachable.list_statuses().await.is_err());
    assert!(unreachable.get_request("users").await.is_err());
}

#[tokio::test]
async fn the_cas_loop_retries_when_another_writer_gets_in_between() {
    let agent = agent();
    let prefix = unique_prefix("cas-retry");
    let store = agent.store(&prefix);
    let ours = manifest("books", "books:2", 3);
    let theirs = TempDir::new();
    let theirs_file = theirs.write("books.yaml", &manifest("books", "books:9", 9));
    store
        .put_service("books", &manifest("books", "books:1", 1), 0)
        .await
        .unwrap();

    let mut decisions = 0;
    let updated = update_service(&store, "books", RetryPolicy::WRITE, |current| {
        decisions += 1;
        if decisions == 1 {
            // Another writer (the consul CLI) changes the key after we read it.
            agent.kv_put_file(&store.service_key("books"), &theirs_file);
        } else {
            let seen = current.expect("the key exists");
            assert!(
                seen.text.contains("books:9"),
                "the retry sees the other write"
            );
        }
        Ok(Decision::Write(ours.clone()))
    })
    .await
    .unwrap();

    assert_eq!(updated.outcome, Outcome::Configured);
    assert_eq!(updated.attempts, 2);
    assert_eq!(
        store.get_service("books").await.unwrap().unwrap().text,
        ours
    );
}

#[tokio::test]
async fn the_cas_loop_gives_up_clearly_when_it_always_loses() {
    let agent = agent();
    let store = agent.store(&unique_prefix("cas-fight"));
    // Consul ignores a put of the value already stored, so the other writer alternates.
    let other = TempDir::new();
    let other_files = [
        other.write("a.yaml", &manifest("books", "books:8", 8)),
        other.write("b.yaml", &manifest("books", "books:9", 9)),
    ];
    store
        .put_service("books", &manifest("books", "books:1", 1), 0)
        .await
        .unwrap();

    let mut round = 0;
    let policy = RetryPolicy {
        attempts: 3,
        first_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    };
    let error = update_service(&store, "books", policy, |_| {
        // Another writer always gets in between the read and the write.
        round += 1;
        agent.kv_put_file(&store.service_key("books"), &other_files[round % 2]);
        Ok(Decision::Write(manifest("books", "books:2", 2)))
    })
    .await
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{} kept changing while cutover tried to update it (3 attempts); \
             someone else is writing it, try again",
            store.service_key("books")
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_notices_a_consul_back_without_its_data_at_once() {
    // This test stops its own agent, so it does not share one.
    let own = support::Agent::start();
    let client = own.client();
    let prefix = format!("{}/", unique_prefix("watch-empty"));
    // Enough writes that the index of the agent started again empty stays below this one's.
    for i in 0..60 {
        client
            .put(&format!("{prefix}k{i:02}"), b"1", None)
            .await
            .unwrap();
    }
    let mut watch = PrefixWatch::new(client.clone(), prefix.clone(), Duration::from_secs(300));
    let first = watch.next().await.unwrap();
    assert_eq!(first.listing.entries.len(), 60);
    let old_index = watch.index();

    // The agent goes away while the watch blocks: the blocking read fails at once.
    let blocked = tokio::spawn(async move {
        let result = watch.next().await;
        (watch, result)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let own = tokio::task::spawn_blocking(move || {
        own.stop_losing_data();
        own
    })
    .await
    .unwrap();
    let (mut watch, result) = tokio::time::timeout(Duration::from_secs(30), blocked)
        .await
        .expect("a blocking read must fail when Consul goes away")
        .unwrap();
    assert!(result.is_err(), "{result:?}");

    // Back, empty, at a lower index: the next read does not block with the old index.
    let own = tokio::task::spawn_blocking(move || {
        own.start_again();
        own
    })
    .await
    .unwrap();
    client
        .put(&format!("{prefix}new"), b"2", None)
        .await
        .unwrap();
    let started = Instant::now();
    let update = tokio::time::timeout(Duration::from_secs(30), watch.next())
        .await
        .expect("the watch must not block on its old index")
        .unwrap();
    eprintln!("the watch answered {:?} after the write", started.elapsed());
    assert!(update.listing.index < old_index, "{update:?}");
    assert!(update.reset, "{update:?}");
    let keys: Vec<String> = update
        .listing
        .entries
        .iter()
        .map(|e| e.key.clone())
        .collect();
    assert_eq!(keys, [format!("{prefix}new")]);
    drop(own);
}

/// A Consul server on a data directory (not `-dev`), killed on drop.
struct Server {
    child: std::process::Child,
    dir: TempDir,
    ports: [u16; 4],
}

impl Server {
    fn start(dir: TempDir, ports: [u16; 4]) -> Server {
        let [http, serf_lan, serf_wan, server] = ports.map(|p| p.to_string());
        let child = std::process::Command::new("consul")
            .args([
                "agent",
                "-server",
                "-bootstrap-expect",
                "1",
                "-bind",
                "127.0.0.1",
            ])
            .args([
                "-client",
                "127.0.0.1",
                "-dns-port",
                "-1",
                "-grpc-port",
                "-1",
            ])
            .args(["-http-port", &http, "-serf-lan-port", &serf_lan])
            .args(["-serf-wan-port", &serf_wan, "-server-port", &server])
            .args(["-hcl", "performance { raft_multiplier = 1 }"])
            .arg("-data-dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("consul on PATH: run scripts/install-deps");
        Server { child, dir, ports }
    }

    /// A client that tries each request once (`retry_timeout` zero) or retries it.
    fn client(&self, retry_timeout: Duration) -> Client {
        Client::new(&ConsulConfig {
            address: format!("127.0.0.1:{}", self.ports[0]),
            retry_timeout,
            ..ConsulConfig::default()
        })
        .unwrap()
    }

    /// `kill -9`, then the same server again on its data.
    fn restart(mut self) -> Server {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, TempDir::new());
        Server::start(dir, self.ports)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Consul server restarted on its data replays its log after it elected itself; default
/// reads meanwhile see the data go back in time and forward again through every past write.
/// The reads cutover does without blocking are consistent: a watch (and a plain read)
/// after the restart sees only the last value, never an older one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_consul_restart_reads_never_go_back_in_time() {
    let ports = [
        support::unused_port(),
        support::unused_port(),
        support::unused_port(),
        support::unused_port(),
    ];
    let server = Server::start(TempDir::new(), ports);
    let client = server.client(Duration::from_secs(60));
    let prefix = format!("{}/", unique_prefix("replay"));
    let key = format!("{prefix}table");
    // A log long enough that its replay can be caught: other keys by eight writers, then
    // the key itself.
    const WRITES: u32 = 300;
    let others = unique_prefix("replay-others");
    let writers = (0..8).map(|w| {
        let (client, others) = (client.clone(), others.clone());
        async move {
            for i in 0..400 {
                client
                    .put(&format!("{others}/{w}-{i}"), &[b'x'; 512], None)
                    .await
                    .unwrap();
            }
        }
    });
    futures::future::join_all(writers).await;
    for i in 1..=WRITES {
        client
            .put(&key, i.to_string().as_bytes(), None)
            .await
            .unwrap();
    }
    let mut watch = PrefixWatch::new(client.clone(), prefix.clone(), Duration::from_secs(300));
    watch.next().await.unwrap();
    // The watch blocks on its index when the server dies, as the daemon's do.
    let blocked = tokio::spawn(async move {
        let result = watch.next().await;
        (watch, result)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let server = tokio::task::spawn_blocking(move || server.restart())
        .await
        .unwrap();
    let value =
        |entry: &cutover::consul::KvEntry| String::from_utf8_lossy(&entry.value).into_owned();
    // Plain reads by four readers as often as Consul answers them, from the moment it
    // listens again.
    let once = server.client(Duration::ZERO);
    let readers = (0..4).map(|_| {
        let (once, key) = (once.clone(), key.clone());
        async move {
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(90);
            while seen.len() < 100 && Instant::now() < deadline {
                match once.get(&key).await {
                    Ok(Some(entry)) => seen.push(value(&entry)),
                    Ok(None) => seen.push("(no such key)".to_owned()),
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
            seen
        }
    });
    let mut seen: Vec<String> = futures::future::join_all(readers)
        .await
        .into_iter()
        .flatten()
        .collect();
    // And the watch's first read after the restart (its blocking read failed).
    let (mut watch, result) = blocked.await.unwrap();
    assert!(
        result.is_err(),
        "the blocking read outlived the server: {result:?}"
    );
    let update = tokio::time::timeout(Duration::from_secs(90), watch.next())
        .await
        .expect("the watch reads within 90 s")
        .unwrap();
    seen.extend(update.listing.entries.iter().map(value));
    drop(server);
    assert!(!seen.is_empty(), "nothing read after the restart");
    let expected = WRITES.to_string();
    assert!(
        seen.iter().all(|v| *v == expected),
        "reads after the restart went back in time: {:?}",
        seen.iter().filter(|v| **v != expected).collect::<Vec<_>>()
    );
}
