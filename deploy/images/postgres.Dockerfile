# Stand-in for postgres:15 where no registry is reachable (deploy/images/bootstrap): Debian's
# postgresql-15 with an entrypoint that honours what the compose file uses of the official image
# (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, the data volume at /var/lib/postgresql/data,
# pg_isready for the healthcheck). A machine with a registry pulls postgres:15 instead.
FROM debian:bookworm-slim
LABEL leasehold.bootstrapped=yes
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
USER postgres
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
