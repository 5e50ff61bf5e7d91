# syntax=docker/dockerfile:1
#
# peerport broker (and agent) image.
#
#   docker build -t peerport --build-arg VERSION=$(git describe --always --dirty) .
#
# Run the broker; its key and token live in the volume, so the broker URL (and
# with it every agent's pin) survives a restart. The URL is printed on stdout:
#
#   docker run -d --name peerport-broker -p 7000:7000 -v peerport:/var/lib/peerport \
#       peerport --public-addr broker.example.com
#
# Run the agent instead:
#
#   docker run --rm -it -v peerport-agent:/var/lib/peerport --entrypoint agent \
#       peerport connect <ticket>
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
EXPOSE 7000/tcp
USER nonroot:nonroot
# --state-dir sits in the entrypoint, not in CMD, so arguments given to
# `docker run` add to it instead of replacing it.
ENTRYPOINT ["/usr/local/bin/broker", "--state-dir", "/var/lib/peerport"]
