# One image with the three edubrain binaries (edge, cloud, terminal agent), for
# deploy/compose and deploy/kubernetes. Build: docker build -t edubrain:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The workspace's one profile (dev, with its dependencies optimised) is what CI tests; release
# builds the same code with full optimisation for production.
RUN cargo build --locked --release -p edubrain-edge -p edubrain-cloud -p edubrain-agent \
 && cp target/release/edubrain-edge target/release/edubrain-cloud target/release/edubrain-agent /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/edubrain edubrain \
 && mkdir -p /var/lib/edubrain /etc/edubrain && chown edubrain /var/lib/edubrain
COPY --from=build /usr/local/bin/edubrain-* /usr/local/bin/
USER edubrain
WORKDIR /var/lib/edubrain
