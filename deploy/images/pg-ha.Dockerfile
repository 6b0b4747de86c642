# The database side of the HA stack (deploy/docker-compose.ha.yml): one image for the
# pg_auto_failover monitor, the two PostgreSQL nodes and the read-write HAProxy listener in front
# (with psql for its check). On top of postgres:15 — the official image (Debian with the PGDG
# repository) where a registry answers, deploy/images/bootstrap's Debian postgresql-15 where none
# does; both offer postgresql-15-auto-failover and haproxy from apt.
FROM postgres:15
USER root
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15-auto-failover haproxy \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/pgaf && chown -R postgres:postgres /var/lib/postgresql
COPY pg-ha-entrypoint.sh /usr/local/bin/pg-ha-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/pgaf \
    XDG_CONFIG_HOME=/var/lib/postgresql/pgaf/xdg-config XDG_DATA_HOME=/var/lib/postgresql/pgaf/xdg-data
VOLUME /var/lib/postgresql/pgaf
USER postgres
STOPSIGNAL SIGINT
ENTRYPOINT ["pg-ha-entrypoint.sh"]
