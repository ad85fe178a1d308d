# Cloudy: the entry points. The README names two of them: `make image` and `make test`.
SHELL := /bin/bash
BOARD ?= pc-686-pae
RECIPE ?= recipes/cloudy.toml
OUT ?= out
# rustup's cargo when there is one, else Debian's (cargo-web, installed by `make deps`).
CARGO ?= $(shell command -v cargo 2>/dev/null || echo /usr/bin/cargo)
IMAGE_BIN := target/release/cloudy-image

.PHONY: image boot test lint e2e bench deps deps-build tool fuzz

## image: install the host tools a build needs (only those), build the default board's ISO and
## boot it in QEMU until ready
image: deps-build tool
	$(IMAGE_BIN) build --board $(BOARD) --recipe $(RECIPE) --out $(OUT)

## boot: open the built image in QEMU with its console (and a root shell) in this terminal
boot: tool
	$(IMAGE_BIN) boot --board $(BOARD) --out $(OUT)

## test: format and lint checks, unit tests, then the end-to-end tests (builds and boots
## pc-686-pae for real; the e2e-only tests are listed as ignored)
test: lint deps tool
	$(CARGO) test --workspace --exclude cloudy-tests
	CLOUDY_IMAGE_BIN=$(CURDIR)/$(IMAGE_BIN) $(CARGO) test -p cloudy-tests --release --features e2e -- --test-threads=1

## lint: rustfmt and clippy over the whole workspace, warnings as errors
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## e2e: every end-to-end test, ignored ones included: every board, and UEFI boot of pc-amd64 (long).
## E2E_SKIP='--skip NAME' leaves tests out (the two updates over the VPN take ~80 min each under
## TCG: `make e2e E2E_SKIP='--skip updates_from_a_member_over_the_vpn'`).
E2E_SKIP ?=
e2e: deps tool
	CLOUDY_E2E_ALL=1 CLOUDY_IMAGE_BIN=$(CURDIR)/$(IMAGE_BIN) $(CARGO) test -p cloudy-tests --release --features e2e -- --include-ignored --test-threads=1 $(E2E_SKIP)

## bench: build/boot numbers against Debian's live-build, printed as one table
bench: deps tool
	bench/build.sh
	bench/agent.sh mesh
	bench/agent.sh discovery
	bench/agent.sh probe
	bench/boards.sh
	bench/agent.sh streaming
	bench/agent.sh services
	bench/agent.sh community
	bench/update.sh

## deps: the Debian packages the build and the tests need, and Tahoe-LAFS in /opt (root)
deps:
	ci/deps.sh test

## deps-build: only the Debian packages a build needs (root; what `make image` installs)
deps-build:
	ci/deps.sh build

tool:
	$(CARGO) build --release -p cloudy-image

## fuzz: cargo-fuzz on each target FUZZ_TIME seconds (default 600), one after the other, then a
## table (target / runs / result); fails on a crash (needs nightly + cargo-fuzz). A target is
## one line here, NAME:MAX_LEN, with agent/fuzz/fuzz_targets/NAME.rs and seeds in seeds/NAME.
FUZZ_TIME ?= 600
FUZZ_TARGETS += record:4096
FUZZ_TARGETS += control:16384
FUZZ_TARGETS += seed:65536
FUZZ_TARGETS += exchange:65536
fuzz:
	FUZZ_TIME=$(FUZZ_TIME) agent/fuzz/run.sh $(FUZZ_TARGETS)
