//! The shape of a manifest, written as data: every field, its kind and its limits.
//!
//! The validator walks the YAML tree against [`MANIFEST`] and reports every mismatch with its
//! position. The rules that a single field cannot express (a timeout no longer than the
//! interval, routes that differ) live in `validate.rs` and run on the typed [`Service`].
//!
//! This table and the structs in `spec.rs` describe the same manifest and must agree: a tree
//! that passes this schema must deserialize into a `Service`. The corpus tests hold them
//! together. The limits are documented, field by field, in `docs/manifest.md`.
//!
//! [`Service`]: super::Service

use super::{API_VERSION, Duration, KIND, Memory};

/// Docker refuses a memory limit below 6 MiB (`linuxMinMemory` in dockerd).
pub const MIN_MEMORY: Memory = Memory::from_bytes(6 * 1024 * 1024);

/// A field of an object: its name as written (camelCase), its kind, and whether it must be
/// written at all.
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    /// For a required field, a line the user can copy, shown when the field is missing.
    pub required_example: Option<&'static str>,
}

const fn required(name: &'static str, kind: Kind, example: &'static str) -> Field {
    Field {
        name,
        kind,
        required_example: Some(example),
    }
}

const fn optional(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required_example: None,
    }
}

/// Checks the text of a string; `Err` holds the message that says what is wrong and how to
/// fix it.
pub type TextCheck = fn(&str) -> Result<(), String>;

/// What a field holds.
pub enum Kind {
    /// A string (quoted or plain, but not a plain number, boolean or null) that passes a check.
    Text(TextCheck),
    /// One of a few fixed words.
    Choice(&'static [&'static str]),
    /// A whole number within a range, both ends included.
    Integer {
        min: i128,
        max: i128,
    },
    /// A number, possibly fractional, within a range, both ends included.
    Number {
        min: f64,
        max: f64,
    },
    Bool,
    /// A [`Duration`] within a range, both ends included.
    Duration {
        min: Duration,
        max: Duration,
    },
    /// A [`Memory`] size of at least `min`.
    Memory {
        min: Memory,
    },
    /// A signal name as Docker accepts it (`SIGTERM`, `TERM`, `sigterm`), normalised to
    /// `SIGTERM`.
    Signal,
    /// A mapping of strings to strings, such as `env` or `labels`. `noun` names the values in
    /// messages ("env values must be strings").
    TextMap {
        noun: &'static str,
        key: TextCheck,
        value: TextCheck,
        /// Whether messages may quote a value. Env values may be secrets, so messages about
        /// them never repeat the value (it would end up in the status key and the logs).
        quote_values: bool,
    },
    /// A list of strings. `example` shows the expected shape when something else is written.
    TextList {
        noun: &'static str,
        item: TextCheck,
        example: &'static str,
        allow_empty: bool,
    },
    /// A mapping with known fields; any other key is an error.
    Object(&'static [Field]),
    /// A list of objects of one shape.
    ObjectList(&'static [Field]),
    /// A mapping with exactly one of the given fields, such as `strategy`.
    OneOf(&'static [Field]),
    /// A list, never empty, of mappings with exactly one of the given fields each, such as
    /// a canary's `steps`. `example` shows one item.
    OneOfList {
        fields: &'static [Field],
        example: &'static str,
    },
    /// A duration within a range, or no duration at all: `{}` or nothing (a canary's
    /// `pause`, which then waits for `cutover promote`).
    DurationOrEmpty {
        min: Duration,
        max: Duration,
    },
}

/// The whole manifest.
pub const MANIFEST: &[Field] = &[
    required(
        "apiVersion",
        Kind::Text(check_api_version),
        "apiVersion: cutover.dev/v1",
    ),
    required("kind", Kind::Text(check_kind), "kind: Service"),
    required(
        "metadata",
        Kind::Object(METADATA),
        "metadata: {name: books}",
    ),
    required("spec", Kind::Object(SPEC), "spec: {image: books:1.4.2}"),
];

const METADATA: &[Field] = &[
    required("name", Kind::Text(check_dns_label), "name: books"),
    optional(
        "labels",
        Kind::TextMap {
            noun: "label",
            key: check_label_key,
            value: check_label_value,
            quote_values: true,
        },
    ),
];

const SPEC: &[Field] = &[
    required("image", Kind::Text(check_image), "image: books:1.4.2"),
    optional("imagePullPolicy", Kind::Choice(&["IfNotPresent", "Always"])),
    optional("replicas", Kind::Integer { min: 0, max: 100 }),
    optional("port", Kind::Integer { min: 1, max: 65535 }),
    optional(
        "env",
        Kind::TextMap {
            noun: "env",
            key: check_env_name,
            value: accept_any_text,
            quote_values: false,
        },
    ),
    optional("command", COMMAND),
    optional("stopSignal", Kind::Signal),
    optional(
        "stopGracePeriod",
        Kind::Duration {
            min: Duration::from_millis(0),
            max: Duration::from_millis(3_600_000),
        },
    ),
    optional("resources", Kind::Object(RESOURCES)),
    optional("health", Kind::Object(HEALTH)),
    optional("routes", Kind::ObjectList(ROUTE)),
    optional("strategy", Kind::OneOf(STRATEGY)),
    optional("sideTargets", Kind::ObjectList(SIDE_TARGET)),
    // The security-sensitive fields: the schema accepts them, the daemon runs them only when
    // started with the matching --allow-* flag (`crate::security`).
    optional("privileged", Kind::Bool),
    optional("networkMode", Kind::Choice(&["bridge", "host"])),
    optional(
        "capAdd",
        Kind::TextList {
            noun: "capAdd",
            item: check_capability,
            example: r#"["NET_ADMIN"]"#,
            allow_empty: true,
        },
    ),
    optional(
        "volumes",
        Kind::TextList {
            noun: "volume",
            item: check_service_volume,
            example: r#"["books-cache:/cache", "/srv/books:/data:ro"]"#,
            allow_empty: true,
        },
    ),
];

/// The Linux capabilities Docker knows (`capabilities(7)` without the `CAP_` prefix), and
/// `ALL`.
pub const CAPABILITIES: &[&str] = &[
    "ALL",
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// The signals Docker accepts by name on Linux (`signal.SignalMap` in moby), without their
/// `SIG` prefix. The real-time signals are also accepted as `RTMIN+n` and `RTMAX-n`.
pub const SIGNALS: &[&str] = &[
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
    "PIPE", "POLL", "PROF", "PWR", "QUIT", "RTMAX", "RTMIN", "SEGV", "STKFLT", "STOP", "SYS",
    "TERM", "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU",
    "XFSZ",
];

/// The canonical `SIGxxx` name of a signal written with or without `SIG`, in any case, or
/// `None` when Docker does not know it.
pub fn signal_name(text: &str) -> Option<String> {
    let upper = text.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let real_time = |prefix: &str, sign: char, most: u32| {
        bare.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix(sign))
            .filter(|n| !n.starts_with('0'))
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| (1..=most).contains(&n))
    };
    let known =
        SIGNALS.contains(&bare) || real_time("RTMIN", '+', 15) || real_time("RTMAX", '-', 14);
    known.then(|| format!("SIG{bare}"))
}

const COMMAND: Kind = Kind::TextList {
    noun: "command",
    item: accept_any_text,
    example: r#"["/app", "--serve"]"#,
    allow_empty: false,
};

const RESOURCES: &[Field] = &[
    optional("memory", Kind::Memory { min: MIN_MEMORY }),
    optional(
        "cpus",
        Kind::Number {
            min: 0.01,
            max: 256.0,
        },
    ),
];

const HEALTH: &[Field] = &[
    optional("path", Kind::Text(check_health_path)),
    optional(
        "interval",
        Kind::Duration {
            min: Duration::from_millis(100),
            max: Duration::from_millis(5 * 60_000),
        },
    ),
    optional(
        "timeout",
        Kind::Duration {
            min: Duration::from_millis(1),
            max: Duration::from_millis(5 * 60_000),
        },
    ),
    optional("healthyThreshold", Kind::Integer { min: 1, max: 10 }),
    optional("unhealthyThreshold", Kind::Integer { min: 1, max: 10 }),
    optional(
        "startPeriod",
        Kind::Duration {
            min: Duration::from_millis(0),
            max: Duration::from_millis(10 * 60_000),
        },
    ),
    optional("host", Kind::Text(check_health_host)),
];

const ROUTE: &[Field] = &[
    optional("pathPrefix", Kind::Text(check_path_prefix)),
    optional("host", Kind::Text(check_host)),
];

const STRATEGY: &[Field] = &[
    optional("blueGreen", Kind::Object(BLUE_GREEN)),
    optional("recreate", Kind::Object(&[])),
    optional("canary", Kind::Object(CANARY)),
];

/// `scaleDownDelay`, shared by blue/green and canary.
const SCALE_DOWN_DELAY: Kind = Kind::Duration {
    min: Duration::from_millis(0),
    max: Duration::from_millis(3_600_000),
};

/// `progressDeadline`, shared by blue/green and canary.
const PROGRESS_DEADLINE: Kind = Kind::Duration {
    min: Duration::from_millis(5_000),
    max: Duration::from_millis(3_600_000),
};

/// `revisionHistoryLimit`, shared by blue/green and canary.
const REVISION_HISTORY_LIMIT: Kind = Kind::Integer { min: 0, max: 10 };

const CANARY_STEPS_EXAMPLE: &str = "steps: [{weight: 10}, {pause: 1m}]";

const CANARY: &[Field] = &[
    required(
        "steps",
        Kind::OneOfList {
            fields: CANARY_STEP,
            example: "- weight: 10",
        },
        CANARY_STEPS_EXAMPLE,
    ),
    optional("scaleDownDelay", SCALE_DOWN_DELAY),
    optional("progressDeadline", PROGRESS_DEADLINE),
    optional("revisionHistoryLimit", REVISION_HISTORY_LIMIT),
    optional("analysis", Kind::Object(ANALYSIS)),
];

/// The longest `pause` a canary step may take.
pub const MAX_PAUSE: Duration = Duration::from_millis(24 * 3_600_000);

const CANARY_STEP: &[Field] = &[
    optional("weight", Kind::Integer { min: 1, max: 99 }),
    optional(
        "pause",
        Kind::DurationOrEmpty {
            min: Duration::from_millis(1_000),
            max: MAX_PAUSE,
        },
    ),
    optional("analysis", Kind::Object(ANALYSIS)),
];

const BLUE_GREEN: &[Field] = &[
    optional("autoPromote", Kind::Bool),
    optional("previewReplicas", Kind::Integer { min: 1, max: 100 }),
    optional("scaleDownDelay", SCALE_DOWN_DELAY),
    optional("progressDeadline", PROGRESS_DEADLINE),
    optional("revisionHistoryLimit", REVISION_HISTORY_LIMIT),
    optional("analysis", Kind::Object(ANALYSIS)),
];

const ANALYSIS: &[Field] = &[
    required(
        "window",
        Kind::Duration {
            min: Duration::from_millis(1_000),
            max: Duration::from_millis(3_600_000),
        },
        "window: 30s",
    ),
    optional(
        "interval",
        Kind::Duration {
            min: Duration::from_millis(100),
            max: Duration::from_millis(10_000),
        },
    ),
    optional(
        "minRequests",
        Kind::Integer {
            min: 1,
            max: 1_000_000,
        },
    ),
    optional("maxErrorRatio", Kind::Number { min: 0.0, max: 1.0 }),
    optional(
        "maxResponseTime",
        Kind::Duration {
            min: Duration::from_millis(1),
            max: Duration::from_millis(60_000),
        },
    ),
];

const SIDE_TARGET: &[Field] = &[
    required("name", Kind::Text(check_dns_label), "name: db"),
    required("image", Kind::Text(check_image), "image: mongo:7"),
    optional(
        "env",
        Kind::TextMap {
            noun: "env",
            key: check_env_name,
            value: accept_any_text,
            quote_values: false,
        },
    ),
    optional("command", COMMAND),
    optional(
        "volumes",
        Kind::TextList {
            noun: "volume",
            item: check_volume,
            example: r#"["books-db:/data/db"]"#,
            allow_empty: true,
        },
    ),
];

fn accept_any_text(_text: &str) -> Result<(), String> {
    Ok(())
}

fn check_api_version(text: &str) -> Result<(), String> {
    if text == API_VERSION {
        Ok(())
    } else {
        Err(format!("must be {API_VERSION:?}, found {text:?}"))
    }
}

fn check_kind(text: &str) -> Result<(), String> {
    if text == KIND {
        Ok(())
    } else {
        Err(format!("must be {KIND:?}, found {text:?}"))
    }
}

/// Whether `text` is an RFC 1035 label: what service and side target names must be, since
/// they become container names and DNS names.
pub fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

fn check_dns_label(text: &str) -> Result<(), String> {
    if is_dns_label(text) {
        Ok(())
    } else {
        Err(format!(
            "{text:?} is not a DNS label: use lowercase letters, digits and \"-\", at most 63 \
             characters, starting with a letter and not ending with \"-\""
        ))
    }
}

/// Checks an image reference, `[registry/]name[:tag][@digest]`, the way `docker pull` reads it.
fn check_image(text: &str) -> Result<(), String> {
    let example = "such as books:1.4.2";
    if text.is_empty() {
        return Err(format!(
            "must not be empty, write an image reference {example}"
        ));
    }
    if text.chars().any(char::is_whitespace) {
        return Err(format!(
            "{text:?} contains a space, write the image reference alone, {example}; put \
             arguments in command"
        ));
    }
    let (reference, digest) = match text.split_once('@') {
        Some((reference, digest)) => (reference, Some(digest)),
        None => (text, None),
    };
    if let Some(digest) = digest {
        let valid = digest.split_once(':').is_some_and(|(algorithm, hex)| {
            !algorithm.is_empty()
                && algorithm
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
                && hex.len() >= 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if !valid {
            return Err(format!(
                "{text:?} has a malformed digest, write it as @sha256: followed by 64 hex digits"
            ));
        }
    }
    // A tag follows the last ":" that comes after the last "/" (a ":" before it is a port).
    let last_slash = reference.rfind('/').map_or(0, |at| at + 1);
    let (name, tag) = match reference[last_slash..].rfind(':') {
        Some(at) => (
            &reference[..last_slash + at],
            Some(&reference[last_slash + at + 1..]),
        ),
        None => (reference, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !valid {
            return Err(format!(
                "{text:?} has a malformed tag {tag:?}: use letters, digits, \"_\", \".\" and \
                 \"-\", at most 128 characters, {example}"
            ));
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    // The first component is a registry when it looks like a host: "localhost", or it has a
    // "." or a ":" (a port). Registry hosts may use capitals; repository names may not.
    if components.len() > 1 {
        let first = components[0];
        if first == "localhost" || first.contains(['.', ':']) {
            components.remove(0);
        }
    }
    for component in &components {
        if !is_repository_component(component) {
            let hint = if component.bytes().any(|b| b.is_ascii_uppercase()) {
                format!(", write it in lowercase: {:?}", text.to_ascii_lowercase())
            } else {
                String::new()
            };
            return Err(format!(
                "{text:?} is not an image reference: the name must be lowercase letters, \
                 digits and separators (\".\", \"_\", \"-\", \"/\"), {example}{hint}"
            ));
        }
    }
    Ok(())
}

/// One path component of a repository name: `[a-z0-9]+` runs joined by `.`, `_`, `__` or
/// dashes.
fn is_repository_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alphanumeric(&bytes[0]) || !alphanumeric(&bytes[bytes.len() - 1]) {
        return false;
    }
    // Separators: "." or "_" or "__" or any run of "-"; never two different ones in a row.
    let mut previous_separator: Option<u8> = None;
    let mut run = 0;
    for b in bytes {
        if alphanumeric(b) {
            previous_separator = None;
            run = 0;
            continue;
        }
        match (*b, previous_separator) {
            (b'-', None | Some(b'-')) => {}
            (b'.', None) => {}
            (b'_', None) => {}
            (b'_', Some(b'_')) if run == 1 => {}
            _ => return false,
        }
        previous_separator = Some(*b);
        run += 1;
    }
    true
}

/// Whether a character may be written as is in a URL path (RFC 3986: unreserved,
/// sub-delimiters, `:`, `@`, `/` and the `%` of a percent-encoding) and is safe in every place
/// a path goes in HAProxy: a map file (where whitespace and `#` end the key), a configuration
/// line (quotes, `\`, `#`) and a Runtime API command (`;` ends a command, `\` escapes). So
/// `;`, quotes, `\`, `#`, `<`, `>`, whitespace, control characters and anything not ASCII are
/// not.
fn is_safe_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&()*+,=:@/%".contains(c)
}

/// The first unsafe character of a path, with how to write the path instead.
fn check_path_chars(text: &str, query: bool) -> Result<(), String> {
    let unsafe_char = text
        .chars()
        .find(|c| !(is_safe_path_char(*c) || (query && *c == '?')));
    match unsafe_char {
        None => Ok(()),
        Some(c) => {
            let mut utf8 = [0; 4];
            let encoded: String = c
                .encode_utf8(&mut utf8)
                .bytes()
                .map(|b| format!("%{b:02X}"))
                .collect();
            Err(format!(
                "{text:?} contains {:?}, which is not allowed in a URL path and unsafe in \
                 HAProxy's maps and commands; write it percent-encoded ({encoded})",
                c.to_string()
            ))
        }
    }
}

fn check_health_path(text: &str) -> Result<(), String> {
    if !text.starts_with('/') {
        return Err(format!("{text:?} must start with \"/\", such as /health"));
    }
    if text.chars().any(char::is_whitespace) {
        return Err(format!(
            "{text:?} contains a space, write it URL-encoded (%20)"
        ));
    }
    if text.contains('#') {
        return Err(format!(
            "{text:?} contains \"#\"; a probe sends no fragment, remove it"
        ));
    }
    check_path_chars(text, true)
}

fn check_path_prefix(text: &str) -> Result<(), String> {
    if !text.starts_with('/') {
        return Err(format!("{text:?} must start with \"/\", such as /api"));
    }
    if text.chars().any(char::is_whitespace) {
        return Err(format!(
            "{text:?} contains a space, write it URL-encoded (%20)"
        ));
    }
    if text.contains(['?', '#']) {
        return Err(format!(
            "{text:?} contains \"?\" or \"#\"; a route matches the path only, remove the query \
             or fragment"
        ));
    }
    check_path_chars(text, false)
}

/// Hosts are exact DNS names in lowercase. Wildcards (`*.example.com`) are refused: the proxy
/// matches hosts exactly, so each host is written as its own route.
fn check_host(text: &str) -> Result<(), String> {
    if text.starts_with("*.") {
        return Err(format!(
            "{text:?}: wildcard hosts are not supported, write one route per host"
        ));
    }
    if text.contains(':') {
        return Err(format!(
            "{text:?}: write the host without a port or scheme, such as books.example.com"
        ));
    }
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "{text:?}: write the host in lowercase, {:?}",
            text.to_ascii_lowercase()
        ));
    }
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 63
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    };
    if text.len() > 253 || !text.split('.').all(label_ok) {
        return Err(format!(
            "{text:?} is not a host name: use lowercase letters, digits, \"-\" and \".\", such \
             as books.example.com"
        ));
    }
    Ok(())
}

/// The `Host` header of the health probes: a host name as routes write it, optionally with a
/// port, since it is also what HAProxy's check sends.
fn check_health_host(text: &str) -> Result<(), String> {
    let (name, port) = match text.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (text, None),
    };
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|port| port > 0);
        if !valid {
            return Err(format!(
                "{text:?}: the port after \":\" must be a number from 1 to 65535, such as \
                 books.example.com:8080"
            ));
        }
    }
    check_host(name)
}

fn check_env_name(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let valid = !bytes.is_empty()
        && (bytes[0].is_ascii_alphabetic() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{text:?} is not a valid environment variable name: use letters, digits and \"_\", \
             not starting with a digit, such as DB_HOST"
        ))
    }
}

/// A Kubernetes "name" part: at most 63 characters, alphanumeric at both ends, with "-", "_"
/// and "." inside.
fn is_label_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    let inner = |b: &u8| b.is_ascii_alphanumeric() || b"-_.".contains(b);
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes.iter().all(inner)
}

/// Label keys are Kubernetes-like: `name` or `prefix/name`, where the prefix is a DNS name.
/// Keys starting with `cutover.` are reserved: the controller labels its containers with them.
fn check_label_key(text: &str) -> Result<(), String> {
    if text.starts_with("cutover.") {
        return Err(format!(
            "{text:?}: label keys starting with \"cutover.\" are reserved for the controller, \
             choose another key"
        ));
    }
    let (prefix, name) = match text.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, text),
    };
    let prefix_ok = prefix.is_none_or(|prefix| check_host(prefix).is_ok());
    if prefix_ok && is_label_name(name) {
        Ok(())
    } else {
        Err(format!(
            "{text:?} is not a valid label key: write name or prefix/name, where name has at \
             most 63 letters, digits, \"-\", \"_\" or \".\" (starting and ending with a letter \
             or digit) and prefix is a DNS name, such as team or example.com/team"
        ))
    }
}

fn check_label_value(text: &str) -> Result<(), String> {
    if text.is_empty() || is_label_name(text) {
        Ok(())
    } else {
        Err(format!(
            "{text:?} is not a valid label value: use at most 63 letters, digits, \"-\", \"_\" \
             or \".\", starting and ending with a letter or digit"
        ))
    }
}

/// Side target volumes are `NAME:/container/path` or `NAME:/container/path:ro`, where NAME is
/// a Docker named volume. Host paths are refused: a side target cannot mount the host's files.
fn check_volume(text: &str) -> Result<(), String> {
    check_volume_text(text, false)
}

/// The service's own volumes also take an absolute host path, `/host/path:/container/path`.
/// The schema accepts it; the daemon mounts it only when started with `--allow-host-mounts`.
fn check_service_volume(text: &str) -> Result<(), String> {
    check_volume_text(text, true)
}

fn check_volume_text(text: &str, host_paths: bool) -> Result<(), String> {
    let example = if host_paths {
        "such as books-cache:/cache or /srv/books:/data:ro"
    } else {
        "such as books-db:/data/db"
    };
    let parts: Vec<&str> = text.split(':').collect();
    let source = parts[0];
    if !host_paths && source.starts_with(['/', '.', '~']) {
        return Err(format!(
            "{text:?}: host bind mounts are not allowed, use a named volume {example}"
        ));
    }
    if host_paths && source.starts_with(['.', '~']) {
        return Err(format!(
            "{text:?}: a host path must be absolute (it is read on the Docker host, not where \
             the manifest is), {example}"
        ));
    }
    if parts.len() < 2 || parts.len() > 3 {
        return Err(format!(
            "{text:?} is not a volume: write NAME:/path/in/container, optionally followed by \
             :ro, {example}"
        ));
    }
    if source.starts_with('/') {
        let clean = source.len() > 1
            && !source.ends_with('/')
            && source
                .split('/')
                .skip(1)
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !clean {
            return Err(format!(
                "{text:?}: the host path {source:?} must be absolute, not / itself, with no \
                 \".\" or \"..\" parts, no \"//\" and no trailing \"/\", {example}"
            ));
        }
    } else {
        let name_ok = source.len() >= 2
            && source.as_bytes()[0].is_ascii_alphanumeric()
            && source
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !name_ok {
            return Err(format!(
                "{text:?}: the volume name {source:?} must have at least 2 letters, digits, \
                 \"_\", \".\" or \"-\", starting with a letter or digit, {example}"
            ));
        }
    }
    if !parts[1].starts_with('/') {
        return Err(format!(
            "{text:?}: the path in the container must be absolute, {example}"
        ));
    }
    if let Some(mode) = parts.get(2) {
        if *mode != "ro" && *mode != "rw" {
            return Err(format!(
                "{text:?}: the mode after the path must be ro or rw, found {mode:?}"
            ));
        }
    }
    Ok(())
}

/// Capabilities are written as Docker and Kubernetes write them: `NET_ADMIN`, in capitals,
/// without the `CAP_` prefix, so that one capability has one spelling (and one revision).
fn check_capability(text: &str) -> Result<(), String> {
    if CAPABILITIES.contains(&text) {
        return Ok(());
    }
    let upper = text.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if CAPABILITIES.contains(&bare) {
        return Err(format!("{text:?}: write the capability as {bare:?}"));
    }
    Err(format!(
        "{text:?} is not a Linux capability: write a name from capabilities(7) without the \
         CAP_ prefix, such as NET_ADMIN or SYS_PTRACE"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        for (image, valid) in [
            ("books:1.4.2", true),
            ("books", true),
            ("mongo:7", true),
            ("library/mongo:7", true),
            ("cutover-demo:a", true),
            ("localhost:5000/books:1", true),
            ("registry.local/team/books:1", true),
            (
                "books@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                true,
            ),
            (
                "books:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                true,
            ),
            ("my__image:1", true),
            ("a--b:1", true),
            ("", false),
            ("books 1.4", false),
            ("Books:1", false),
            ("books:", false),
            ("books:-1", false),
            ("books@sha256:xyz", false),
            ("-books", false),
            ("books/", false),
            ("a._b", false),
            ("a___b", false),
        ] {
            assert_eq!(
                check_image(image).is_ok(),
                valid,
                "{image:?}: {:?}",
                check_image(image)
            );
        }
    }

    #[test]
    fn hosts_paths_and_names() {
        for (check, text, valid) in [
            (check_host as TextCheck, "books.example.com", true),
            (check_host, "localhost", true),
            (check_host, "*.example.com", false),
            (check_host, "Books.example.com", false),
            (check_host, "books.example.com:80", false),
            (check_host, "books..example.com", false),
            (check_host, "-books.example.com", false),
            (check_path_prefix, "/api/v1", true),
            (check_path_prefix, "/", true),
            (check_path_prefix, "api", false),
            (check_path_prefix, "/a b", false),
            (check_path_prefix, "/a?b", false),
            (check_dns_label, "books", true),
            (check_dns_label, "books-db2", true),
            (check_dns_label, "Books_1", false),
            (check_dns_label, "1books", false),
            (check_dns_label, "books-", false),
            (check_dns_label, &"a".repeat(64), false),
            (check_env_name, "DB_HOST", true),
            (check_env_name, "_x1", true),
            (check_env_name, "1X", false),
            (check_env_name, "A-B", false),
            (check_label_key, "team", true),
            (check_label_key, "example.com/team", true),
            (check_label_key, "cutover.dev/color", false),
            (check_label_key, "-team", false),
            (check_label_value, "", true),
            (check_label_value, "v1.2_3", true),
            (check_label_value, "a b", false),
            (check_volume, "books-db:/data/db", true),
            (check_volume, "books-db:/data/db:ro", true),
            (check_volume, "/srv/db:/data/db", false),
            (check_volume, "./db:/data/db", false),
            (check_volume, "db:data", false),
            (check_volume, "db:/data:rx", false),
            (check_volume, "db", false),
            (check_service_volume, "books-cache:/cache", true),
            (check_service_volume, "/srv/books:/data:ro", true),
            (
                check_service_volume,
                "/var/run/docker.sock:/var/run/docker.sock",
                true,
            ),
            (check_service_volume, "./db:/data", false),
            (check_service_volume, "~/db:/data", false),
            (check_service_volume, "/:/host", false),
            (check_service_volume, "/srv/../etc:/data", false),
            (check_service_volume, "/srv/books/:/data", false),
            (check_service_volume, "/srv/books:data", false),
            (check_service_volume, "/srv/books", false),
            (check_capability, "NET_ADMIN", true),
            (check_capability, "ALL", true),
            (check_capability, "net_admin", false),
            (check_capability, "CAP_NET_ADMIN", false),
            (check_capability, "NET_ADMINS", false),
        ] {
            assert_eq!(check(text).is_ok(), valid, "{text:?}: {:?}", check(text));
        }
    }
}
