# Stand-in for swift:6.3-bookworm where no registry is reachable (deploy/images/bootstrap): Debian
# bookworm with the packages the official image installs, the Swift toolchain of this machine
# under /usr as in the official image, and this machine's copies of the Swift packages with the
# git setting that reads them in place of github.com, exactly as on the host. The context (made by
# bootstrap) holds usr/, opt/swift-packages/ and etc/gitconfig; one COPY puts them in place (each
# step of a build copies the whole image under the vfs storage driver, so the big layer is last).
# A machine with a registry pulls swift:6.3-bookworm instead.
FROM debian:bookworm-slim
LABEL leasehold.bootstrapped=yes
RUN apt-get update && apt-get install -y --no-install-recommends \
        binutils git gnupg2 libc6-dev libcurl4-openssl-dev libedit2 libgcc-12-dev libpython3-dev \
        libsqlite3-0 libstdc++-12-dev libxml2-dev libncurses-dev libz3-dev pkg-config tzdata zlib1g-dev \
        unzip ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY . /
