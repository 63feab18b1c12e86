# keygate — `make run` tries it, `make test` proves it.
.PHONY: run build test unit deploy-test e2e-k8s fmt-check vet lint bench fuzz dashboard screenshots

GO ?= go
STATICCHECK = honnef.co/go/tools/cmd/staticcheck@v0.8.2

run:
	./scripts/run-demo.sh

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/keygate ./cmd/keygate

# The whole suite (scripts/test.sh, which CI runs too): formatting, vet,
# staticcheck, every Go test with -race (Redis-backed tests start private
# redis-server processes and a local Redis Cluster; a real Prometheus and
# promtool check the metrics and rules), the deploy checks (dashboard,
# manifests, kustomize, Dockerfile lint), and the end-to-end test against a
# real kube-apiserver. It installs redis-server, prometheus, etcd-server and
# nginx (the authorization recipe's test) with apt-get when they are missing.
test:
	./scripts/test.sh

unit:
	KEYGATE_TEST_REDIS=require KEYGATE_TEST_PROMETHEUS=require KEYGATE_TEST_BROWSER=require KEYGATE_TEST_NGINX=require $(GO) test -race -count=1 -p 1 ./...

deploy-test:
	cd deploy && $(GO) vet ./... && $(GO) test -count=1 ./...
	cd tools/deploytest && $(GO) vet ./... && $(GO) vet -tags e2ek8s ./... && $(GO) test -race -count=1 ./...

# Builds kube-apiserver from the Go module proxy on first use (~7 minutes on
# two cores, cached afterwards) and runs the injector against it.
e2e-k8s:
	./scripts/e2e-k8s.sh

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

lint:
	$(GO) run $(STATICCHECK) ./...

# The load test (cmd/loadtest, docs/performance.md) takes about two minutes
# with its defaults; LOADTEST_FLAGS passes flags, e.g. LOADTEST_FLAGS="-d 2s
# -leases off".
LOADTEST_FLAGS ?=
bench:
	KEYGATE_TEST_REDIS=require $(GO) test -run='^$$' -bench=. -benchmem -benchtime=2s ./quota/... ./proxy/... ./authz/...
	$(GO) run ./cmd/loadtest $(LOADTEST_FLAGS)

# Runs every fuzz target of the module for FUZZTIME each, one at a time (go
# test -fuzz takes one target of one package). Their seed corpora
# (testdata/fuzz/<Target>/) run as ordinary tests in every go test; a
# failure found here is written there, to be fixed and kept as a seed. Go
# before 1.27 may end a run with "context deadline exceeded" and no failing
# input (go.dev/issue/75804): that is reported and skipped, not a failure.
FUZZTIME ?= 1m
fuzz:
	@set -e; out=$$(mktemp); trap 'rm -f "$$out"' EXIT; \
	$(GO) list -f '{{.ImportPath}} {{.Dir}}' ./... | while read -r pkg dir; do \
	  for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$$dir"/*_test.go 2>/dev/null); do \
	    echo "== $$pkg $$t ($(FUZZTIME))"; \
	    seeds=$$(ls "$$dir/testdata/fuzz/$$t" 2>/dev/null | wc -l); \
	    if $(GO) test -run='^$$' -fuzz="^$$t\$$" -fuzztime=$(FUZZTIME) "$$pkg" >"$$out" 2>&1; then tail -n 3 "$$out"; continue; fi; \
	    cat "$$out"; \
	    if grep -q '^    context deadline exceeded$$' "$$out" && [ "$$(ls "$$dir/testdata/fuzz/$$t" 2>/dev/null | wc -l)" -eq "$$seeds" ]; then \
	      echo "warning: $$t stopped on the Go fuzzing deadline race, no failing input"; \
	    else exit 1; fi; \
	  done; \
	done

# Regenerates the screenshots of the web pages in docs/images (docs/console.md,
# docs/portal.md) by running the browser tests against a fresh keygate on
# the embedded store, with KEYGATE_SCREENSHOTS set (internal/browsertest.Shot);
# needs chromium.
screenshots:
	KEYGATE_SCREENSHOTS=$(CURDIR)/docs/images KEYGATE_TEST_BROWSER=require $(GO) test -count=1 -run 'TestConsoleInBrowser/memory|TestPortalInBrowser/memory' ./cmd/keygate

dashboard:
	cd deploy && $(GO) run ./grafana > grafana/keygate-quota.json

