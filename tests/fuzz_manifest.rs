//! A fuzz target for the manifest pipeline: bytes as a KV value holds them, through the UTF-8
//! check, the YAML tree, the schema, the typed spec and the cross-field rules
//! (`store::StoredService::from_bytes`, which calls `spec::parse_service`), then what the
//! daemon and the CLI do next with the result (the revision of a valid spec, its YAML, the
//! diagnostics' text).
//!
//! The inputs come from a seeded generator, so a run is deterministic: random bytes;
//! mutations (byte flips, inserts of YAML's special tokens, deletes, splices, duplicated
//! lines, indentation changes) of every manifest in `tests/fixtures/` and `manifests/`; and
//! the classic attacks (deep nesting, alias bombs, huge scalars and keys near the 512 KiB
//! cap, many keys, duplicate keys, tags, several documents, invalid UTF-8, a BOM, NUL bytes,
//! CRLF, very long lines).
//!
//! For every input it checks: no panic (the input is printed as a Rust byte string with its
//! seed, to replay it); bounded time ([`MAX_TIME`]); bounded memory (the peak of heap bytes
//! allocated while the input is processed, counted by this binary's global allocator, under
//! [`MAX_PEAK_BYTES`]). It reports the slowest input and the largest peak (run with
//! `-- --nocapture` to see them).
//!
//! `CUTOVER_FUZZ_INPUTS` (default 100,000) and `CUTOVER_FUZZ_SEED` (default 1) choose the
//! campaign; input `i` is generated from seed `SEED + i` alone, so
//! `CUTOVER_FUZZ_SEED=<its seed> CUTOVER_FUZZ_INPUTS=1` replays one input. See
//! `docs/reliability.md`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use cutover::spec::MAX_VALUE_BYTES;
use cutover::store::StoredService;

/// Generous: the slowest inputs (half a megabyte of list items or keys, at the 512 KiB cap)
/// take about 1 s in a debug build on an idle two-core machine, and twice that when other
/// builds share it. What this catches is work that grows faster than the text: a quadratic
/// step on such an input takes minutes.
const MAX_TIME: Duration = Duration::from_secs(5);
/// Generous: the largest input is 600 KB, and the slowest ones peak far below this.
const MAX_PEAK_BYTES: usize = 64 * 1024 * 1024;

/// Counts the heap bytes in use and their peak, for this test binary only.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn added(size: usize) {
    let now = IN_USE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed to the system allocator unchanged; the counters only watch.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, which we pass on as is.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            added(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(pointer, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            added(layout.size());
        }
        pointer
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
            added(new_size);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// SplitMix64: tiny, fast, and the same on every platform and release, unlike a library RNG
/// whose algorithm may change.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A number in `low..=high`, spread evenly over the orders of magnitude.
    fn log_between(&mut self, low: usize, high: usize) -> usize {
        let (low, high) = (low.max(1) as f64, high.max(1) as f64);
        let fraction = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (low * (high / low).powf(fraction)) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// What the mutations insert: YAML's special characters and tokens, and bytes that are not
/// text at all.
const TOKENS: &[&[u8]] = &[
    b"[",
    b"]",
    b"{",
    b"}",
    b":",
    b": ",
    b"- ",
    b",",
    b"&a ",
    b"*a",
    b"!!str ",
    b"!x ",
    b"---\n",
    b"...\n",
    b"\t",
    b"\"",
    b"'",
    b"#",
    b"\n",
    b"\r\n",
    b"|\n",
    b">-\n",
    b"? ",
    b"%YAML 1.2\n",
    b"~",
    b"null",
    b"true",
    b"0x1F",
    b"-.inf",
    b"1e309",
    b"99999999999999999999999",
    b"\0",
    b"\xef\xbb\xbf",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\\",
    b"\\u0000",
    b"<<",
    b";",
    b"  ",
    b"%",
    b"@",
    b"`",
];

/// Every manifest the repository has: valid and invalid fixtures, and the examples.
fn corpus() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for folder in [
        "tests/fixtures/valid",
        "tests/fixtures/invalid",
        "manifests",
    ] {
        let dir = root.join(folder);
        let mut paths: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
            .collect();
        paths.sort();
        files.extend(paths.into_iter().map(|path| fs::read(path).unwrap()));
    }
    assert!(files.len() > 50, "only {} corpus files", files.len());
    files
}

fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    let length = rng.log_between(1, 4096);
    // Half the time from a YAML-ish alphabet, so that the parser gets past its first byte.
    let alphabet: &[u8] = b"ab: -[]{},\n  #&*!'\"|>?%\t09.~";
    let yamlish = rng.chance(50);
    (0..length)
        .map(|_| {
            if yamlish {
                *rng.pick(alphabet)
            } else {
                rng.next() as u8
            }
        })
        .collect()
}

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = rng.pick(corpus).clone();
    for _ in 0..rng.log_between(1, 16) {
        let at = if bytes.is_empty() {
            0
        } else {
            rng.below(bytes.len() + 1)
        };
        match rng.below(7) {
            0 if !bytes.is_empty() => {
                let at = at.min(bytes.len() - 1);
                bytes[at] ^= 1 << rng.below(8);
            }
            1 => {
                let token = *rng.pick(TOKENS);
                bytes.splice(at..at, token.iter().copied());
            }
            2 if !bytes.is_empty() => {
                let end = (at + rng.log_between(1, 64)).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            3 => {
                let other = rng.pick(corpus);
                if !other.is_empty() {
                    let start = rng.below(other.len());
                    let end = (start + rng.log_between(1, 256)).min(other.len());
                    bytes.splice(at..at, other[start..end].iter().copied());
                }
            }
            4 => {
                // Duplicate a line, somewhere else.
                let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
                let line = rng.pick(&lines).to_vec();
                let mut line = line;
                line.push(b'\n');
                let line_starts: Vec<usize> = std::iter::once(0)
                    .chain(
                        bytes
                            .iter()
                            .enumerate()
                            .filter(|(_, b)| **b == b'\n')
                            .map(|(i, _)| i + 1),
                    )
                    .collect();
                let to = *rng.pick(&line_starts);
                bytes.splice(to..to, line);
            }
            5 => {
                // Indent or dedent a line by one or two spaces.
                let line_starts: Vec<usize> = std::iter::once(0)
                    .chain(
                        bytes
                            .iter()
                            .enumerate()
                            .filter(|(_, b)| **b == b'\n')
                            .map(|(i, _)| i + 1),
                    )
                    .collect();
                let start = *rng.pick(&line_starts);
                let width = 1 + rng.below(2);
                if rng.chance(50) {
                    bytes.splice(start..start, std::iter::repeat_n(b' ', width));
                } else {
                    let spaces = bytes[start..]
                        .iter()
                        .take(width)
                        .take_while(|b| **b == b' ')
                        .count();
                    bytes.drain(start..start + spaces);
                }
            }
            _ => {
                // Overwrite a byte with an arbitrary one.
                if !bytes.is_empty() {
                    let at = at.min(bytes.len() - 1);
                    bytes[at] = rng.next() as u8;
                }
            }
        }
    }
    bytes
}

const HEADER: &str =
    "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {name: fuzz}\nspec:\n  image: fuzz:1\n";

/// One of the classic attacks, about `budget` bytes long (the text may end a little past it).
fn attack(rng: &mut Rng, kind: usize, budget: usize) -> Vec<u8> {
    let repeat = |unit: &str| unit.repeat(budget / unit.len().max(1) + 1);
    let text: String = match kind {
        0 => format!("{HEADER}  command: {}", repeat("[")),
        1 => format!("{HEADER}  env: {}", repeat("{a: ")),
        2 => format!("{HEADER}  command:\n    {}x\n", repeat("- ")),
        3 => {
            let mut text = String::from(HEADER);
            let mut level = 0;
            while text.len() < budget {
                text.push_str(&" ".repeat(level));
                text.push_str("k:\n");
                level += 1 + rng.below(2);
            }
            text
        }
        4 => {
            // Billion laughs: each level refers to the one before ten times.
            let mut text = String::from(HEADER);
            text.push_str("  env: &l0 {A: lol}\n");
            let mut level = 1;
            while text.len() < budget && level < 64 {
                let refs = vec![format!("*l{}", level - 1); 10].join(", ");
                text.push_str(&format!("x{level}: &l{level} [{refs}]\n"));
                level += 1;
            }
            text
        }
        5 => format!("{HEADER}  command: [\"{}\"]\n", "x".repeat(budget)),
        6 => format!("{HEADER}  {}: 1\n", "k".repeat(budget)),
        7 => format!("{HEADER}  env: {{{}: v}}\n", "K".repeat(budget)),
        8 => {
            let mut text = String::from(HEADER);
            text.push_str("  env:\n");
            let mut i = 0;
            while text.len() < budget {
                text.push_str(&format!("    K{i}: \"v\"\n"));
                i += 1;
            }
            text
        }
        9 => {
            let mut text = String::from(HEADER);
            while text.len() < budget {
                text.push_str("  replicas: 1\n");
            }
            text
        }
        10 => {
            let mut text = String::from(HEADER);
            while text.len() < budget {
                text.push_str("  port: !!int 80\n  image: !custom x\n");
            }
            text
        }
        11 => {
            let mut text = String::new();
            while text.len() < budget {
                text.push_str("---\n");
                text.push_str(HEADER);
            }
            text
        }
        12 => {
            let mut bytes = HEADER.as_bytes().to_vec();
            while bytes.len() < budget {
                bytes.push(0xff);
                bytes.extend_from_slice(b"\xc3(\xed\xa0\x80");
            }
            return bytes;
        }
        13 => format!("\u{feff}{HEADER}\u{feff}  replicas: 2\n"),
        14 => format!(
            "{HEADER}  command: [\"a\0b\", \"{}\"]\n",
            "\0".repeat(budget)
        ),
        15 => HEADER.replace('\n', "\r\n") + &"  # comment\r\n".repeat(budget / 13 + 1),
        16 => format!("{HEADER}  command: [{}]\n", repeat("x, ")),
        17 => format!("{HEADER}  image: {}\n", "y".repeat(budget)),
        18 => format!(
            "{HEADER}  routes: [{}]\n",
            repeat("{pathPrefix: \"/x;show info\"}, ")
        ),
        _ => format!("{HEADER}  env: {{A: {}}}\n", repeat("*a ")),
    };
    text.into_bytes()
}

const ATTACKS: usize = 20;

/// Input `seed`: the same bytes for the same seed and corpus, on every machine.
fn input(seed: u64, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut rng = Rng(seed);
    match rng.below(1000) {
        0..=199 => random_bytes(&mut rng),
        200..=989 => mutate(&mut rng, corpus),
        _ => {
            let kind = rng.below(ATTACKS);
            // From a few bytes to a little over the 512 KiB cap.
            let budget = rng.log_between(16, MAX_VALUE_BYTES + 64 * 1024);
            attack(&mut rng, kind, budget)
        }
    }
}

/// The pipeline, as the daemon and the CLI run it on a KV value. Returns whether the bytes
/// were a valid spec.
fn pipeline(bytes: &[u8]) -> bool {
    let stored = StoredService::from_bytes(
        "fuzz",
        "cutover/services/fuzz".to_owned(),
        1,
        bytes.to_vec(),
    );
    match &stored.parsed {
        Ok(service) => {
            let _ = cutover::revision::of_service(service);
            let yaml = service.to_yaml();
            // A valid spec written back out (as `cutover scale` does) is the same spec again,
            // unless the longer block style took it over the size cap, which is refused.
            if yaml.len() <= MAX_VALUE_BYTES {
                match cutover::spec::parse_service("cutover/services/fuzz", &yaml) {
                    Ok(again) => assert!(again == *service, "changed through YAML:\n{yaml}"),
                    Err(diagnostics) => {
                        panic!("a valid spec's YAML does not parse again: {diagnostics}\n{yaml}")
                    }
                }
            }
        }
        Err(diagnostics) => {
            // What goes into the status key and the log.
            let text = diagnostics.to_string();
            assert!(!diagnostics.is_empty());
            assert!(
                text.len() < 128 * 1024,
                "{} bytes of diagnostics",
                text.len()
            );
        }
    }
    stored.parsed.is_ok()
}

/// `b"..."` with every byte that is not printable ASCII escaped. An input over 16 KiB is
/// shown by its first 16 KiB only (its seed replays it whole).
fn byte_literal(bytes: &[u8]) -> String {
    const SHOWN: usize = 16 * 1024;
    let escaped: String = bytes
        .iter()
        .take(SHOWN)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    if bytes.len() > SHOWN {
        format!(
            "b\"{escaped}\" (the first {SHOWN} bytes of {})",
            bytes.len()
        )
    } else {
        format!("b\"{escaped}\"")
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")),
        Err(_) => default,
    }
}

/// One campaign: the inputs, and the slowest and largest of them.
#[test]
fn the_manifest_pipeline_survives_hostile_bytes() {
    let inputs = env_number("CUTOVER_FUZZ_INPUTS", 100_000);
    let seed = env_number("CUTOVER_FUZZ_SEED", 1);
    let corpus = corpus();
    // The classic attacks just under the 512 KiB cap, once each, whatever the campaign
    // draws: the largest texts the parser ever reads.
    let fixed = (0..ATTACKS).map(|kind| {
        let mut rng = Rng(u64::MAX - kind as u64);
        let mut bytes = attack(&mut rng, kind, MAX_VALUE_BYTES - 4096);
        bytes.truncate(MAX_VALUE_BYTES);
        (format!("attack {kind} at the cap"), bytes)
    });

    let started = Instant::now();
    let mut slowest = (Duration::ZERO, String::new(), 0);
    let mut largest = (0, String::new(), 0);
    let mut valid = 0u64;
    let campaign = (0..inputs).map(|i| {
        let input_seed = seed.wrapping_add(i);
        (format!("seed {input_seed}"), input(input_seed, &corpus))
    });
    for (name, bytes) in fixed.chain(campaign) {
        let base = IN_USE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let start = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| pipeline(&bytes)));
        let took = start.elapsed();
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        let replay = || {
            format!(
                "{name} ({} bytes; replay with CUTOVER_FUZZ_SEED=<seed> CUTOVER_FUZZ_INPUTS=1):\n{}",
                bytes.len(),
                byte_literal(&bytes)
            )
        };
        let Ok(is_valid) = outcome else {
            panic!("the pipeline panicked on {}", replay());
        };
        assert!(took <= MAX_TIME, "{took:?} on {}", replay());
        assert!(
            peak <= MAX_PEAK_BYTES,
            "{peak} bytes at peak on {}",
            replay()
        );
        if took > slowest.0 {
            slowest = (took, name.clone(), bytes.len());
        }
        if peak > largest.0 {
            largest = (peak, name.clone(), bytes.len());
        }
        valid += u64::from(is_valid);
    }
    eprintln!(
        "fuzz: {inputs} inputs from seed {seed} plus {ATTACKS} full-size attacks in {:?}; \
         {valid} valid; slowest {:?} ({}, {} bytes); largest peak {} KiB ({}, {} bytes)",
        started.elapsed(),
        slowest.0,
        slowest.1,
        slowest.2,
        largest.0 / 1024,
        largest.1,
        largest.2
    );
}
