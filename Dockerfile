# check=error=true
# keygate image: a static binary on distroless, running as non-root.
# Build: docker build -t keygate .   Run: docker run keygate (= keygate serve)

FROM golang:1.26 AS build
WORKDIR /src
# Dependencies first, in their own layer, so a code change reuses the download.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static (no cgo) so it runs on distroless/static; -trimpath keeps build paths out.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /keygate ./cmd/keygate

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /keygate /keygate
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# 8000 data path, 9090 metrics and probes; the admin API stays on 127.0.0.1:9091.
EXPOSE 8000 9090
ENTRYPOINT ["/keygate"]
CMD ["serve"]
