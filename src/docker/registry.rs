//! Registry credentials for pulls, found the way the docker CLI finds them.
//!
//! The image reference names the registry (no domain means Docker Hub); the client config
//! (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`) holds either the credentials
//! themselves (`auths`) or the name of a credential helper (`credHelpers` for one registry,
//! `credsStore` for all), a `docker-credential-<name>` program that answers `get` with JSON.
//!
//! Everything here except [`load_credentials`] and [`run_helper`] is pure, so the rules are
//! unit-tested without files or programs. No bollard type appears here: the adapter converts
//! [`RegistryAuth`] at the last moment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use base64::Engine as _;
use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;

/// The registry domain the docker CLI assumes for an image name without one.
pub const DOCKER_HUB_DOMAIN: &str = "docker.io";
/// The Hub's legacy domain. Users may still write it, and the docker CLI keys Hub
/// credentials by it (see [`auth_key`]).
const DOCKER_HUB_LEGACY_DOMAIN: &str = "index.docker.io";
/// The namespace of the Hub's official images: `busybox` is `library/busybox`.
const OFFICIAL_NAMESPACE: &str = "library";

/// An image reference taken apart as the docker CLI does (`reference.ParseNormalizedNamed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// The registry's host (and port), [`DOCKER_HUB_DOMAIN`] when the name has none.
    pub domain: String,
    /// The repository path within the registry, `library/` added for official Hub images.
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// Splits an image reference into registry, path, tag and digest.
///
/// The first path component is a registry only if it looks like a host: it contains a `.`
/// or a `:`, is `localhost`, or has an upper-case letter (repository names cannot).
pub fn parse_reference(image: &str) -> ImageReference {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest.to_owned())),
        None => (image, None),
    };
    // A tag follows the last `:` after the last `/`; a `:` before it is a registry's port.
    let last_component_start = name.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name[last_component_start..].rfind(':') {
        Some(i) => {
            let at = last_component_start + i;
            (&name[..at], Some(name[at + 1..].to_owned()))
        }
        None => (name, None),
    };
    let (domain, remainder) = match name.split_once('/') {
        Some((first, rest)) if looks_like_host(first) => (first.to_owned(), rest.to_owned()),
        _ => (DOCKER_HUB_DOMAIN.to_owned(), name.to_owned()),
    };
    let domain = if domain == DOCKER_HUB_LEGACY_DOMAIN {
        DOCKER_HUB_DOMAIN.to_owned()
    } else {
        domain
    };
    let path = if domain == DOCKER_HUB_DOMAIN && !remainder.contains('/') {
        format!("{OFFICIAL_NAMESPACE}/{remainder}")
    } else {
        remainder
    };
    ImageReference {
        domain,
        path,
        tag,
        digest,
    }
}

fn looks_like_host(component: &str) -> bool {
    component.contains(['.', ':'])
        || component == "localhost"
        || component.chars().any(|c| c.is_ascii_uppercase())
}

/// The key the docker CLI files a registry's credentials under: the host, except for the
/// Hub, whose credentials live under its legacy v1 index URL.
pub fn auth_key(domain: &str) -> String {
    if domain == DOCKER_HUB_DOMAIN {
        format!("https://{DOCKER_HUB_LEGACY_DOMAIN}/v1/")
    } else {
        domain.to_owned()
    }
}

/// The host part of a key in `auths`, which older CLIs wrote as a URL
/// (`https://host/v1/`): what the docker CLI's `ConvertToHostname` does.
fn hostname_of(key: &str) -> &str {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    without_scheme.split('/').next().unwrap_or(without_scheme)
}

/// The parts of the docker client config that matter for pulls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ClientConfig {
    #[serde(default)]
    pub auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    pub creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    pub cred_helpers: BTreeMap<String, String>,
}

/// One entry of `auths`: `auth` is base64 of `user:password`; newer logins write the parts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct AuthEntry {
    #[serde(default)]
    pub auth: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub identitytoken: Option<String>,
}

/// Credentials to send with a pull, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryAuth {
    pub username: Option<String>,
    pub password: Option<String>,
    pub identity_token: Option<String>,
    /// The key the credentials were found under, sent as the server address.
    pub server_address: String,
}

/// Where a registry's credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// Written in `auths`.
    Inline(RegistryAuth),
    /// Ask `docker-credential-<helper>`.
    Helper(String),
    /// Pull anonymously.
    Anonymous,
}

/// Decides where the credentials for `key` (see [`auth_key`]) come from, with the docker
/// CLI's precedence: a `credHelpers` entry for the registry, else `credsStore`, else `auths`.
pub fn credential_source(config: &ClientConfig, key: &str) -> Result<CredentialSource, String> {
    if let Some(helper) = config.cred_helpers.get(key) {
        return Ok(CredentialSource::Helper(helper.clone()));
    }
    if let Some(store) = config.creds_store.as_ref().filter(|s| !s.is_empty()) {
        return Ok(CredentialSource::Helper(store.clone()));
    }
    let entry = config.auths.get(key).or_else(|| {
        config
            .auths
            .iter()
            .find(|(k, _)| hostname_of(k) == hostname_of(key))
            .map(|(_, entry)| entry)
    });
    match entry {
        None => Ok(CredentialSource::Anonymous),
        Some(entry) => auth_from_entry(entry, key).map(CredentialSource::Inline),
    }
}

fn auth_from_entry(entry: &AuthEntry, key: &str) -> Result<RegistryAuth, String> {
    let mut auth = RegistryAuth {
        username: entry.username.clone(),
        password: entry.password.clone(),
        identity_token: entry.identitytoken.clone().filter(|t| !t.is_empty()),
        server_address: key.to_owned(),
    };
    if let Some(encoded) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| format!("the `auth` of {key} is not base64: {e}"))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| format!("the `auth` of {key} is not UTF-8 once decoded"))?;
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| format!("the `auth` of {key} does not decode to user:password"))?;
        auth.username = Some(user.to_owned());
        auth.password = Some(password.to_owned());
    }
    Ok(auth)
}

/// What a credential helper prints for `get`.
#[derive(Debug, Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Turns a helper's answer into credentials. A username of `<token>` means the secret is
/// an identity token, as in the docker CLI.
pub fn auth_from_helper_output(output: &str, key: &str) -> Result<RegistryAuth, String> {
    let answer: HelperAnswer = serde_json::from_str(output.trim())
        .map_err(|e| format!("its answer is not the expected JSON: {e}"))?;
    let auth = if answer.username == "<token>" {
        RegistryAuth {
            identity_token: Some(answer.secret),
            server_address: key.to_owned(),
            ..RegistryAuth::default()
        }
    } else {
        RegistryAuth {
            username: Some(answer.username),
            password: Some(answer.secret),
            server_address: key.to_owned(),
            ..RegistryAuth::default()
        }
    };
    Ok(auth)
}

/// The client config directory: `$DOCKER_CONFIG`, else `~/.docker`.
pub fn config_dir() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        Some(dir) => Some(PathBuf::from(dir)),
        None => std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|home| PathBuf::from(home).join(".docker")),
    }
}

/// Why credentials could not be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialError {
    /// The file or program that failed.
    pub source: String,
    pub message: String,
}

/// Finds the credentials for a pull from `domain`: reads the client config and runs a
/// helper if it names one. No config file means an anonymous pull, as in the docker CLI.
pub async fn load_credentials(domain: &str) -> Result<Option<RegistryAuth>, CredentialError> {
    let key = auth_key(domain);
    let Some(path) = config_dir().map(|dir| dir.join("config.json")) else {
        return Ok(None);
    };
    let config = match read_config(&path).await? {
        Some(config) => config,
        None => return Ok(None),
    };
    let source = credential_source(&config, &key).map_err(|message| CredentialError {
        source: path.display().to_string(),
        message,
    })?;
    match source {
        CredentialSource::Anonymous => Ok(None),
        CredentialSource::Inline(auth) => Ok(Some(auth)),
        CredentialSource::Helper(helper) => run_helper(&helper, &key).await,
    }
}

async fn read_config(path: &Path) -> Result<Option<ClientConfig>, CredentialError> {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CredentialError {
                source: path.display().to_string(),
                message: e.to_string(),
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| CredentialError {
            source: path.display().to_string(),
            message: format!("not a docker client config: {e}"),
        })
}

/// Runs `docker-credential-<helper> get` with the registry key on stdin. A helper that
/// knows no credentials for the registry means an anonymous pull.
pub async fn run_helper(helper: &str, key: &str) -> Result<Option<RegistryAuth>, CredentialError> {
    let program = format!("docker-credential-{helper}");
    run_helper_command(tokio::process::Command::new(&program), &program, key).await
}

/// Runs `<command> get`; `name` is what errors call the helper.
async fn run_helper_command(
    mut command: tokio::process::Command,
    name: &str,
    key: &str,
) -> Result<Option<RegistryAuth>, CredentialError> {
    let fail = |message: String| CredentialError {
        source: name.to_owned(),
        message,
    };
    let mut child = command
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(key.as_bytes())
            .await
            .map_err(|e| fail(format!("cannot write to it: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| fail(format!("it did not finish: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // docker-credential-helpers' `credentials.ErrCredentialsNotFound`.
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(fail(format!(
            "`get` failed ({}): {}",
            output.status,
            format!("{} {}", stdout.trim(), stderr.trim()).trim()
        )));
    }
    auth_from_helper_output(&stdout, key)
        .map(Some)
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(
        domain: &str,
        path: &str,
        tag: Option<&str>,
        digest: Option<&str>,
    ) -> ImageReference {
        ImageReference {
            domain: domain.to_owned(),
            path: path.to_owned(),
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        }
    }

    #[test]
    fn references_split_like_the_docker_cli() {
        let hub = DOCKER_HUB_DOMAIN;
        let cases = [
            ("busybox", reference(hub, "library/busybox", None, None)),
            (
                "busybox:1.36",
                reference(hub, "library/busybox", Some("1.36"), None),
            ),
            (
                "someone/app:2",
                reference(hub, "someone/app", Some("2"), None),
            ),
            (
                "index.docker.io/someone/app",
                reference(hub, "someone/app", None, None),
            ),
            (
                "registry.test:5000/team/app:1.0",
                reference("registry.test:5000", "team/app", Some("1.0"), None),
            ),
            ("localhost/app", reference("localhost", "app", None, None)),
            (
                "localhost:5000/app:x",
                reference("localhost:5000", "app", Some("x"), None),
            ),
            ("Upper/app", reference("Upper", "app", None, None)),
            (
                "registry.test/app@sha256:abc",
                reference("registry.test", "app", None, Some("sha256:abc")),
            ),
            (
                "app:1@sha256:abc",
                reference(hub, "library/app", Some("1"), Some("sha256:abc")),
            ),
            (
                "cutover-demo:a",
                reference(hub, "library/cutover-demo", Some("a"), None),
            ),
        ];
        for (image, want) in cases {
            assert_eq!(parse_reference(image), want, "{image}");
        }
    }

    #[test]
    fn hub_credentials_are_keyed_by_the_legacy_index_url() {
        let hub_key = auth_key(&parse_reference("busybox").domain);
        assert_eq!(hub_key, format!("https://{DOCKER_HUB_LEGACY_DOMAIN}/v1/"));
        assert_eq!(auth_key("registry.test:5000"), "registry.test:5000");
    }

    fn config(json: &str) -> ClientConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn inline_auth_is_decoded() {
        // base64("alice:s3cr:et"): the password may contain a colon.
        let c = config(r#"{"auths": {"registry.test": {"auth": "YWxpY2U6czNjcjpldA=="}}}"#);
        assert_eq!(
            credential_source(&c, "registry.test"),
            Ok(CredentialSource::Inline(RegistryAuth {
                username: Some("alice".into()),
                password: Some("s3cr:et".into()),
                identity_token: None,
                server_address: "registry.test".into(),
            }))
        );
    }

    #[test]
    fn username_password_and_identity_token_entries_are_used_as_written() {
        let c = config(
            r#"{"auths": {
                "a.test": {"username": "bob", "password": "pw"},
                "b.test": {"identitytoken": "tok"}
            }}"#,
        );
        let Ok(CredentialSource::Inline(a)) = credential_source(&c, "a.test") else {
            panic!("a.test has inline credentials");
        };
        assert_eq!(
            (a.username.as_deref(), a.password.as_deref()),
            (Some("bob"), Some("pw"))
        );
        let Ok(CredentialSource::Inline(b)) = credential_source(&c, "b.test") else {
            panic!("b.test has inline credentials");
        };
        assert_eq!(b.identity_token.as_deref(), Some("tok"));
    }

    #[test]
    fn url_keys_written_by_old_clients_match_the_host() {
        let c = config(
            r#"{"auths": {"https://registry.test:5000/v1/": {"username": "u", "password": "p"}}}"#,
        );
        assert!(matches!(
            credential_source(&c, "registry.test:5000"),
            Ok(CredentialSource::Inline(_))
        ));
        assert_eq!(
            credential_source(&c, "other.test"),
            Ok(CredentialSource::Anonymous)
        );
    }

    #[test]
    fn hub_credentials_are_found_for_a_bare_image_name() {
        let key = auth_key(&parse_reference("busybox").domain);
        let json = format!(r#"{{"auths": {{"{key}": {{"auth": "dTpw"}}}}}}"#);
        let Ok(CredentialSource::Inline(auth)) = credential_source(&config(&json), &key) else {
            panic!("hub credentials are inline");
        };
        assert_eq!(auth.username.as_deref(), Some("u"));
        assert_eq!(auth.server_address, key);
    }

    #[test]
    fn helpers_take_precedence_over_auths() {
        let c = config(
            r#"{"auths": {"registry.test": {"auth": "dTpw"}, "other.test": {"auth": "dTpw"}},
                "credsStore": "desktop",
                "credHelpers": {"registry.test": "ecr-login"}}"#,
        );
        assert_eq!(
            credential_source(&c, "registry.test"),
            Ok(CredentialSource::Helper("ecr-login".into()))
        );
        assert_eq!(
            credential_source(&c, "other.test"),
            Ok(CredentialSource::Helper("desktop".into()))
        );
    }

    #[test]
    fn bad_inline_auth_is_an_error_naming_the_registry() {
        let c = config(r#"{"auths": {"registry.test": {"auth": "not base64!"}}}"#);
        let error = credential_source(&c, "registry.test").unwrap_err();
        assert!(error.contains("registry.test"), "{error}");
    }

    #[test]
    fn helper_answers_become_credentials() {
        let auth = auth_from_helper_output(
            r#"{"ServerURL": "registry.test", "Username": "carol", "Secret": "pw"}"#,
            "registry.test",
        )
        .unwrap();
        assert_eq!(auth.username.as_deref(), Some("carol"));
        assert_eq!(auth.password.as_deref(), Some("pw"));
        let token =
            auth_from_helper_output(r#"{"Username": "<token>", "Secret": "t"}"#, "k").unwrap();
        assert_eq!(token.identity_token.as_deref(), Some("t"));
        assert_eq!(token.username, None);
        assert!(auth_from_helper_output("nope", "k").is_err());
    }

    #[tokio::test]
    async fn a_missing_helper_is_an_error_naming_the_program() {
        let error = run_helper("cutover-test-no-such-helper", "registry.test")
            .await
            .unwrap_err();
        assert_eq!(
            error.source,
            "docker-credential-cutover-test-no-such-helper"
        );
    }

    /// A helper played by `sh -c BODY`; `get` arrives as `$1`. (Running `sh` rather than a
    /// freshly written executable avoids "text file busy" while other tests fork.)
    fn helper(body: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("sh");
        command.arg("-c").arg(body).arg("helper");
        command
    }

    #[tokio::test]
    async fn a_helper_gets_the_registry_key_on_stdin() {
        let answers = helper(
            r#"[ "$1" = get ] || exit 2; read -r key; printf '{"Username":"user-%s","Secret":"pw"}' "$key""#,
        );
        let auth = run_helper_command(answers, "answers", "registry.test")
            .await
            .unwrap()
            .expect("the helper answered");
        assert_eq!(auth.username.as_deref(), Some("user-registry.test"));
        assert_eq!(auth.password.as_deref(), Some("pw"));
        assert_eq!(auth.server_address, "registry.test");
    }

    #[tokio::test]
    async fn a_helper_without_credentials_means_anonymous() {
        let not_found =
            helper("cat >/dev/null; echo 'credentials not found in native keychain'; exit 1");
        let auth = run_helper_command(not_found, "not-found", "registry.test").await;
        assert_eq!(auth, Ok(None));
        let broken = helper("cat >/dev/null; echo 'keychain locked' >&2; exit 1");
        let error = run_helper_command(broken, "broken", "registry.test")
            .await
            .unwrap_err();
        assert!(error.message.contains("keychain locked"), "{error:?}");
    }
}
