# A Consul agent for docker-compose.yml: cutover-consul:1.8.
#
#   docker build -f docker/consul.Dockerfile -t cutover-consul:1.8 docker/
#
# Debian bookworm has no consul package; bullseye has 1.8.7, a real Consul with the v1 HTTP
# API cutover uses. Its .deb is fetched with a private apt configuration that points at the
# same mirror as the base image's own sources (read at build time, never written here), and
# only the binary is kept.
ARG BASE=cutover-base:bookworm
FROM ${BASE}
RUN set -e; \
    uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources); \
    tmp=$(mktemp -d); mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/parts"; \
    printf 'Types: deb\nURIs: %s\nSuites: bullseye\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$uri" >"$tmp/parts/bullseye.sources"; \
    A="-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$tmp/parts -o Dir::State::Lists=$tmp/lists -o Dir::Cache=$tmp/cache"; \
    apt-get $A update -qq; \
    (cd "$tmp" && apt-get $A download -qq consul); \
    dpkg -x "$tmp"/consul_*.deb "$tmp/root"; \
    install -m 0755 "$tmp/root/usr/bin/consul" /usr/local/bin/consul; \
    rm -rf "$tmp"; \
    useradd --system --uid 10002 --user-group --home-dir /consul --create-home --shell /usr/sbin/nologin consul; \
    install -d -o consul -g consul /consul/data; \
    consul version
USER consul
EXPOSE 8500
ENTRYPOINT ["consul"]
CMD ["agent", "-dev", "-client", "0.0.0.0", "-bind", "127.0.0.1"]
