# Tether's images for users who build with Docker; scripts/images.sh builds the same images
# without Docker (static glibc binaries, FROM scratch, user 65532, entrypoint /<binary>), and the
# helm suite (scripts/e2e/helm.sh) checks that this file and those images agree.
#
#   docker build --target tether-operator -t ghcr.io/tether-dev/tether-operator:0.1.0 .
#   docker build --target tether-relay    -t ghcr.io/tether-dev/tether-relay:0.1.0 .
#   docker build --target tether-agent    -t ghcr.io/tether-dev/tether-agent:0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Static glibc binaries: nothing to install in the image. --target keeps the flag off build
# scripts and proc macros.
RUN RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
      --target x86_64-unknown-linux-gnu -p tether-operator -p tether-relay -p tether-agent

FROM scratch AS tether-operator
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/tether-operator /tether-operator
USER 65532:65532
ENTRYPOINT ["/tether-operator"]

FROM scratch AS tether-relay
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/tether-relay /tether-relay
USER 65532:65532
ENTRYPOINT ["/tether-relay"]

FROM scratch AS tether-agent
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/tether-agent /tether-agent
USER 65532:65532
ENTRYPOINT ["/tether-agent"]
