# A small Redis image for the counters several sandgate servers share, built without a registry
# by scripts/server-image.sh: Debian's own redis packages (downloaded on the host with
# `apt-get download`, the same bookworm release as the base, unpacked there with dpkg-deb) copied
# onto the base image.
ARG BASE=sandgate-rootfs:bookworm-pip
FROM ${BASE}
COPY root /
RUN mkdir -p /data && chown 65534:65534 /data && redis-server --version
USER 65534:65534
VOLUME /data
EXPOSE 6379
HEALTHCHECK --interval=10s --timeout=5s --retries=3 CMD ["redis-cli", "ping"]
CMD ["redis-server", "--dir", "/data", "--protected-mode", "no", "--appendonly", "yes"]
