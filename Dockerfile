# syntax=docker/dockerfile:1
#
# peerport broker (and agent) image.
#
#   docker build -t peerport --build-arg VERSION=$(git describe --always --dirty) .
#
# Run the broker; its key and token live in the volume, so the broker URL (and
# with it every agent's pin) survives a restart. The URL is printed on stdout:
#
#   docker run -d --name peerport-broker --network host \
#       -v peerport:/var/lib/peerport \
#       peerport --public-addr broker.example.com
#
# Host networking, because the TURN relay binds one TCP port per allocation out
# of 49152-65535. With published ports instead, narrow that range in a mounted
# broker.yaml (turn: {relay_ports: 50000-50099}) and publish it:
#
#   docker run -d --name peerport-broker -p 7000:7000 \
#       -p 3478:3478/tcp -p 3478:3478/udp -p 3479:3479/tcp -p 3479:3479/udp \
#       -p 3480:3480 -p 50000-50099:50000-50099 \
#       -v peerport:/var/lib/peerport -v $PWD/broker.yaml:/etc/peerport/broker.yaml:ro \
#       peerport -c /etc/peerport/broker.yaml --public-addr broker.example.com
#
# Ports 3478 and 3479 (TCP and UDP) are the broker's STUN server, which tells
# agents their NAT type; TCP 3480 and the relay ports are its TURN relay, for
# agents that cannot punch a direct path. With --metrics-listen :9102 (and -p 9102:9102, kept
# off the public internet), Prometheus scrapes /metrics and /healthz.
#
# Run the agent instead, one-off:
#
#   docker run --rm -it -v peerport-agent:/var/lib/peerport --entrypoint agent \
#       peerport connect <ticket>
#
# or for good, with its forwards in a mounted agent.yaml (`agent up`; send
# SIGHUP with `docker kill -s HUP peerport-agent` after editing the file).
# --network host lets connects listen on the host's ports and shares reach its
# services at 127.0.0.1; keep the file readable by uid 65532 only:
#
#   docker run -d --name peerport-agent --restart unless-stopped --network host \
#       -v peerport-agent:/var/lib/peerport \
#       -v /etc/peerport/agent.yaml:/etc/peerport/agent.yaml:ro \
#       --entrypoint agent peerport up -c /etc/peerport/agent.yaml
#
# The final image is distroless (static, nonroot: uid 65532): no shell, no
# package manager, nothing but the two static binaries and CA certificates.

FROM golang:1.26-bookworm AS build
WORKDIR /src
ENV CGO_ENABLED=0
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/ ./cmd/agent ./cmd/broker
# The state dir must exist and belong to the nonroot user before the volume is
# mounted, so a fresh named volume inherits that owner; distroless has no shell
# to create it there.
RUN mkdir -p /out/state && chmod 0700 /out/state

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/agent /out/broker /usr/local/bin/
COPY --from=build --chown=65532:65532 /out/state /var/lib/peerport
# The agent finds its state here too when run with --entrypoint agent.
ENV PEERPORT_HOME=/var/lib/peerport
VOLUME ["/var/lib/peerport"]
# Control channel, then STUN (RFC 5389 and 5780: two ports, both networks).
EXPOSE 7000/tcp 3478/tcp 3478/udp 3479/tcp 3479/udp 3480/tcp
USER nonroot:nonroot
# --state-dir sits in the entrypoint, not in CMD, so arguments given to
# `docker run` add to it instead of replacing it.
ENTRYPOINT ["/usr/local/bin/broker", "--state-dir", "/var/lib/peerport"]
