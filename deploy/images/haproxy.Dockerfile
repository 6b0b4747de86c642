# Stand-in for haproxy:2.6 where no registry is reachable (deploy/images/bootstrap): Debian
# bookworm's haproxy (2.6), reading the configuration where the official image does.
FROM debian:bookworm-slim
LABEL leasehold.bootstrapped=yes
RUN apt-get update && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /usr/local/etc/haproxy
STOPSIGNAL SIGUSR1
USER haproxy
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
