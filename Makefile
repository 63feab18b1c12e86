# keygate — `make run` tries it, `make test` proves it.
.PHONY: run test check fmt-check vet lint bench fuzz build

GO ?= go

run:
	./scripts/run-demo.sh

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/keygate ./cmd/keygate

# The whole test suite. Redis-backed tests start private redis-server
# processes and fail (never skip) when redis-server is missing.
test: fmt-check vet
	KEYGATE_TEST_REDIS=require $(GO) test -race -count=1 -p 2 ./...

check: test lint

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

lint: vet
	$(GO) run honnef.co/go/tools/cmd/staticcheck@2025.1.1 ./...

bench:
	KEYGATE_TEST_REDIS=require $(GO) test -run='^$$' -bench=. -benchmem -benchtime=2s ./quota/... ./proxy/...
	$(GO) run ./cmd/loadtest

fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzCredentialFrom -fuzztime=30s ./proxy
