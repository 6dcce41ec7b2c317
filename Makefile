# memdb: everything a newcomer needs is a target here.
.PHONY: build start-servers stop-servers start-servers-local-replicas stop-servers-local-replicas \
	start-servers-ha stop-servers-ha start-servers-tls stop-servers-tls run-perf-ha perf run-perf run-perf-local-replicas \
	bench-http test test-python fmt clean

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

## A raft group: three voters on :8080 :8180 :8280 (automatic failover), a local
## replica beside each (:8081 :8181 :8281); waits for the election, prints who leads.
start-servers-ha: build
	scripts/cluster.sh start ha

stop-servers-ha:
	scripts/cluster.sh stop ha

## HTTPS everywhere: a leader on :8080, network replicas on :8081-8082 and a local
## replica on :8083; mutual TLS between nodes, a token, certificates from a throwaway CA
## (run/tls/certs, made on first start); prints the curl commands that work against it.
start-servers-tls: build
	scripts/cluster.sh start tls

stop-servers-tls:
	scripts/cluster.sh stop tls

## The load tool: ./target/release/memdb perf LEADER_URL REPLICA_URL...
perf: build

PERF_ARGS ?=
PERF_URLS = http://localhost:8080 http://localhost:8081 http://localhost:8082 http://localhost:8083

## Fresh cluster (data wiped), the Go original's perf run, cluster stopped; fails on any inconsistency.
run-perf: build
	scripts/run_perf.sh network $(PERF_ARGS)

run-perf-local-replicas: build
	scripts/run_perf.sh local $(PERF_ARGS)

## Fresh raft group, keyed writes through any voter, the leader SIGKILLed mid-run and
## restarted; fails unless every node and replica holds exactly what was acknowledged.
run-perf-ha: build
	scripts/run_perf.sh ha $(PERF_ARGS)

## wrk side by side: network vs local replicas (needs wrk).
bench-http: build
	scripts/bench_http.py

## fmt check, clippy (warnings are errors), benches compile, the Python binding's tests
## (a venv under target/), every Rust test and the C binding's (last, so its summary
## closes the output).
test:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) clippy --locked -p memdb-python -- -D warnings
	$(CARGO) bench --locked --no-run
	$(CARGO) build --locked
	scripts/test_python.sh
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked --no-fail-fast; \
	else \
		$(CARGO) test --locked --no-fail-fast; \
	fi

## Only the Python binding's tests.
test-python:
	$(CARGO) build --locked
	scripts/test_python.sh

fmt:
	$(CARGO) fmt --all

## Refuses while any cluster started from here still runs (its data is under run/).
clean:
	@for m in network local ha tls; do \
		if scripts/cluster.sh running $$m || MEMDB_RUN_DIR=run/perf scripts/cluster.sh running $$m; then \
			echo "a $$m cluster is running; stop it before 'make clean' deletes run/" >&2; exit 1; \
		fi; \
	done
	$(CARGO) clean
	rm -rf run
