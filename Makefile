# memdb: everything a newcomer needs is a target here.
.PHONY: build start-servers stop-servers start-servers-local-replicas stop-servers-local-replicas test fmt clean

CARGO ?= cargo

build:
	$(CARGO) build --release --locked

## A leader on :8080 and network replicas on :8081-8083, in the background.
start-servers: build
	scripts/cluster.sh start network

stop-servers:
	scripts/cluster.sh stop network

## A leader on :8080 and local replicas (memory-mapped snapshot) on :8081-8083.
start-servers-local-replicas: build
	scripts/cluster.sh start local

stop-servers-local-replicas:
	scripts/cluster.sh stop local

## fmt check, clippy (warnings are errors), every test.
test:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked --no-fail-fast; \
	else \
		$(CARGO) test --locked --no-fail-fast; \
	fi

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf run
