# Zapora: the two commands that matter are `make lab` and `make test` (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV       := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_ROLES_PATH := $(CURDIR)/roles
export ANSIBLE_FORCE_COLOR := false
# The base image reference (content-hash tag) that molecule and the lab use.
export ZAPORA_BASE_IMAGE := $(shell images/base/build.sh --ref)

ROLES_WITH_SCENARIOS = $(sort $(patsubst roles/%/molecule/default/molecule.yml,%,$(wildcard roles/*/molecule/default/molecule.yml)))
# The longest scenarios start first, so that the last of them does not run alone at the end.
MOLECULE_LONGEST_FIRST = pgbackrest common firewall
ROLES_IN_RUN_ORDER = $(foreach r,$(MOLECULE_LONGEST_FIRST),$(filter $(r),$(ROLES_WITH_SCENARIOS))) \
  $(filter-out $(MOLECULE_LONGEST_FIRST),$(ROLES_WITH_SCENARIOS))
PY_DIRS = $(wildcard app tests bench scripts roles/app/files)
WORKFLOWS = $(wildcard .github/workflows/*.yml)
LAB_INVENTORY := inventory/lab
RESULTS := .cache/test-results

# pytest for one suite: $(call pytest,NAME,ARGS). Exit 5 ("no tests collected") is a
# failure here: a suite that runs nothing proves nothing.
define pytest
	@mkdir -p $(RESULTS)
	pytest --junitxml=$(RESULTS)/$(1).xml $(2); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests for $(1)"; exit 1; fi; exit $$rc
endef

.PHONY: help setup setup-test image api-image lab lab-up lab-down lab-status lint test test-unit test-rules test-app test-roles \
        test-role test-e2e test-e2e-suite test-e2e-full lock bench bench-lists bench-edge bench-rollout bench-autoscale bench-failover bench-failover-drill bench-backup clean \
        sast audit load-test openapi release-id smoke stage promote

help:  ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup:  ## install what the controller lacks (Docker engine, debootstrap, .venv); idempotent
	@scripts/setup.sh

setup-test:  ## setup, plus the test machine's servers (PostgreSQL, Redis, wrk; services left stopped)
	@scripts/setup.sh --test

image: setup  ## build the Debian 13 systemd base image if its recipe changed
	@images/base/build.sh >/dev/null
	@echo ">> base image $(ZAPORA_BASE_IMAGE)"

# RELEASE_OUTPUT=FILE: also append release=, image= and archive= lines to FILE (the CI
# workflow's step outputs).
api-image: image  ## build the API image and its release archive (scripts/build-release.sh) if its sources changed
	@built="$$(scripts/build-release.sh)"; \
	echo ">> API image $$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["image"])' "$$built")"; \
	if [ -n "$(RELEASE_OUTPUT)" ]; then \
	  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("\n".join(f"{k}={d[k]}" for k in ("release","image","archive")))' "$$built" >>"$(RELEASE_OUTPUT)"; \
	fi

lab: image  ## bring the whole appliance up on the local lab, deploy the checkout, print its URLs
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab-up.yml
	@# site.yml, unless these hosts were converged from the same sources (LAB_CONVERGE=1 forces it)
	scripts/lab-converge.sh $(LAB_INVENTORY)
	ansible-playbook -i $(LAB_INVENTORY) playbooks/deploy.yml
	@ansible-playbook -i $(LAB_INVENTORY) playbooks/lab-status.yml

lab-up: image  ## start the lab's hosts only (no site.yml)
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab-up.yml

lab-down: setup  ## remove every container, network and volume the lab made
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab-down.yml

lab-status: setup  ## show the lab's hosts and URLs
	@ansible-playbook -i $(LAB_INVENTORY) playbooks/lab-status.yml

# ansible-lint runs Ansible's own syntax check on every playbook (its syntax-check rule,
# unskippable): no second loop of ansible-playbook --syntax-check here.
lint: setup  ## ruff, mypy (strict, app/), yamllint, ansible-lint (with the syntax check of every playbook), actionlint (.github/workflows)
	ruff check $(PY_DIRS)
	ruff format --check $(PY_DIRS)
	mypy
	yamllint -s .
	ansible-lint
	actionlint -no-color $(WORKFLOWS)

# ansible-lint's rules with a security bearing run in make lint (the production profile, plus
# no-log-password enabled in .ansible-lint): one ansible-lint run per make test, not two.
sast: setup  ## SAST: bandit on app/ (ansible-lint's security rules run in make lint)
	bandit -q -r app/zapora -c pyproject.toml --severity-level medium --confidence-level medium -b app/bandit-baseline.json
	@echo ">> sast ok: bandit (app/zapora, baseline app/bandit-baseline.json)"

# pip-audit asks PyPI's vulnerability service about every pinned package of both locks. This
# machine may use PyPI only to install packages, so the audit runs where the network is
# open: the CI workflow and a laptop, with AUDIT_ONLINE=1. Without it the target says so and
# fails: it never reports a pass it did not earn.
audit: setup  ## dependency audit of the hashed locks (pip-audit; needs PyPI's advisory service: AUDIT_ONLINE=1)
	@if [ "$(AUDIT_ONLINE)" != 1 ]; then \
	  echo "NOT RUN: make audit queries PyPI's vulnerability service for every pinned package;"; \
	  echo "this machine may not. Run make audit AUDIT_ONLINE=1 where it may (the CI workflow does)."; \
	  exit 2; fi
	pip-audit --progress-spinner off --disable-pip --require-hashes -r requirements/app.txt
	pip-audit --progress-spinner off --disable-pip --require-hashes -r requirements/dev.txt

load-test: setup-test  ## short load on the hot routes (local API, PostgreSQL, Redis); fails over the p99 / error-rate thresholds
	python bench/load_check.py

openapi: setup  ## write the API's OpenAPI document to .cache/openapi.json (the CD workflow's ZAP scan reads it)
	@mkdir -p .cache
	zapora openapi >.cache/openapi.json
	@echo ">> .cache/openapi.json: $$(python3 -c 'import json; print(len(json.load(open(".cache/openapi.json"))["paths"]))' ) paths"

# The CD workflow downloads CI's release archive into .cache/releases and reads its id here.
release-id:  ## the release id of the one archive in .cache/releases (RELEASE_OUTPUT=FILE: append release=ID)
	@python3 scripts/release_id.py .cache/releases $(RELEASE_OUTPUT)

# The edge's CA of the lab (staging here) is trusted besides the system's when it exists.
SMOKE_CA = $(wildcard .lab/secrets/edge-ca/ca.crt)
smoke: setup  ## a customer's journey through the edge: make smoke URL=https://... (sign in, menu, order)
	@test -n "$(URL)" || { echo "usage: make smoke URL=<the API through the edge>"; exit 2; }
	$(VENV)/bin/python scripts/smoke.py $(URL) $(if $(SMOKE_CA),--ca $(SMOKE_CA))

# CD (docs/pipeline.md). The staging inventory; in this repository the lab is staging.
STAGING_INVENTORY = inventory/staging
define need_release
	@test -n "$(RELEASE)" || { echo "usage: make $@ RELEASE=<release id> $(1)"; exit 2; }
	@test -s .cache/releases/zapora-api-$(RELEASE).tar || { \
	  echo "no archive .cache/releases/zapora-api-$(RELEASE).tar: build it (make api-image) or fetch CI's"; exit 2; }
endef
DEPLOY_RELEASE = -e app_image_archive=$(CURDIR)/.cache/releases/zapora-api-$(RELEASE).tar \
  -e app_image=zapora/api:$(RELEASE) -e app_release=$(RELEASE)
stage: setup  ## deploy RELEASE's archive to staging (deploy.yml), make smoke URL=..., record the pass
	@test -n "$(URL)" || { echo "usage: make stage RELEASE=<release id> URL=<staging through its edge>"; exit 2; }
	$(call need_release,URL=<staging through its edge>)
	ansible-playbook -i $(STAGING_INVENTORY) playbooks/deploy.yml $(DEPLOY_RELEASE)
	$(MAKE) --no-print-directory smoke URL=$(URL)
	ansible-playbook -i $(STAGING_INVENTORY) playbooks/release-gate.yml -e app_release_gate=record -e app_release=$(RELEASE)

promote: setup  ## deploy RELEASE, which passed staging, to INVENTORY (the same archive, no rebuild)
	@test -n "$(RELEASE)" -a -n "$(INVENTORY)" || { echo "usage: make promote RELEASE=<release id> INVENTORY=<production inventory>"; exit 2; }
	@# The gate first: a release that has not passed staging is refused before anything else.
	ansible-playbook -i $(STAGING_INVENTORY) playbooks/release-gate.yml -e app_release_gate=check -e app_release=$(RELEASE)
	$(call need_release,INVENTORY=<production inventory>)
	ansible-playbook -i $(INVENTORY) playbooks/deploy.yml $(DEPLOY_RELEASE)

test-unit: setup  ## fast checks of the repository's own conventions
	$(call pytest,unit,tests/unit --timeout=420)

test-rules: setup-test  ## promtool check + unit tests of the alert rules (roles/prometheus/files/rules)
	$(call pytest,rules,tests/rules)

test-app: image setup-test  ## the API's tests against real PostgreSQL and Redis (and its image build)
	$(call pytest,app,tests/app --timeout=420 --cov=zapora --cov-report=term-missing:skip-covered --cov-report=xml:$(RESULTS)/coverage.xml --cov-fail-under=90)

test-role: image  ## molecule test for one role: make test-role ROLE=name
	@test -n "$(ROLE)" || { echo "usage: make test-role ROLE=<name>; roles with scenarios: $(ROLES_WITH_SCENARIOS)"; exit 2; }
	cd roles/$(ROLE) && molecule test

# Scenarios run side by side (each has its own containers and network); much of their time
# is apt, SSH and waiting, so 3 at a time fit 2 cores.
MOLECULE_JOBS ?= 3
test-roles: image  ## molecule test for every role with a scenario (MOLECULE_JOBS at a time)
	@test -n "$(ROLES_WITH_SCENARIOS)" || { echo "ERROR: no role has a molecule scenario: test-roles ran nothing"; exit 1; }
	@mkdir -p $(RESULTS); rm -f $(RESULTS)/molecule.txt
	@printf '%s\n' $(ROLES_IN_RUN_ORDER) | xargs -P $(MOLECULE_JOBS) -I{} scripts/molecule-role.sh {} $(RESULTS)

test-e2e-suite: setup  ## the end-to-end tests only (without the slow ones), against the lab as it runs now (the alert test beside the rest)
	scripts/e2e-suite.sh $(RESULTS)

test-e2e: lab  ## bring the lab up (make lab), then the end-to-end suite against it (without the slow ones)
	scripts/e2e-suite.sh $(RESULTS)

test-e2e-full: lab  ## make lab, then every end-to-end test, the slow ones too (the second and --check site.yml runs)
	scripts/e2e-suite.sh $(RESULTS) e2e

# Checks of the CI/CD workflows that cannot run on this machine (docs/pipeline.md), for the
# NOT RUN lines of make test's summary.
WORKFLOW_ONLY = \
  "pip-audit of the locks (make audit AUDIT_ONLINE=1, ci.yml's audit job): needs PyPI's vulnerability service, which this machine may not query" \
  "OWASP ZAP API scan (cd.yml, against staging): the scanner is a container image, and no image can be pulled here" \
  "image scan of the API image (Trivy, ci.yml's image job): the scanner and its vulnerability database come from the network"

# One step of `make test`: runs `make TARGET`, records "TARGET ok|FAILED SECONDS".
define step
	echo "==== make $(1)"; start=$$(date +%s); \
	if $(2) $(MAKE) --no-print-directory $(1); then s=ok; else s=FAILED; rc=1; fi; \
	echo "==== make $(1): $$s in $$(( $$(date +%s) - start )) s"; \
	mkdir -p $(RESULTS); echo "$(1) $$s $$(( $$(date +%s) - start ))" >>$(RESULTS)/targets.txt
endef

test:  ## every test: the lab and the end-to-end suite in the background from the start, beside lint, unit, rules, app and molecule; a summary
	@rm -rf $(RESULTS); mkdir -p $(RESULTS); rc=0; \
	export LAB_SITE_ARGS="--diff -v" ZAPORA_SITE_LOG_REQUIRED=1; \
	for t in setup-test image; do $(call step,$$t); done; \
	echo "==== make lab, then make test-e2e-suite, in the background from here on (logs: $(RESULTS)/lab.log, $(RESULTS)/e2e.log)"; \
	( start=$$(date +%s); \
	  if $(MAKE) --no-print-directory lab >$(RESULTS)/lab.log 2>&1; then s=ok; else s=FAILED; fi; \
	  echo $$s >$(RESULTS)/lab.rc; echo "lab $$s $$(( $$(date +%s) - start ))" >>$(RESULTS)/targets.txt; \
	  if [ $$s = ok ]; then ( $(call step,test-e2e-suite) ) >$(RESULTS)/e2e.log 2>&1; fi ) & lab_pid=$$!; \
	for t in api-image lint sast test-unit test-rules test-app test-roles; do $(call step,$$t,nice -n 10); done; \
	wait $$lab_pid || true; \
	if [ "$$(cat $(RESULTS)/lab.rc 2>/dev/null)" = ok ]; then \
	  echo "==== make lab: ok"; cat $(RESULTS)/e2e.log; \
	else \
	  echo "==== make lab: FAILED; last lines of its log:"; tail -n 40 $(RESULTS)/lab.log; \
	  echo "==== make lab: its failed tasks (fatal, FAILED!, ERROR!):"; \
	  grep -E -A8 '^fatal:|FAILED!|^ERROR!|^failed:' $(RESULTS)/lab.log | cut -c1-400 | tail -n 60; rc=1; \
	fi; \
	printf '%s\n' $(WORKFLOW_ONLY) >>$(RESULTS)/not-run.txt; \
	python3 scripts/test-summary.py $(RESULTS) || rc=1; exit $$rc

lock:  ## regenerate requirements/*.txt (pins and hashes, no index URLs) from pyproject.toml
	pip-compile -q --generate-hashes --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
	  --strip-extras --allow-unsafe --extra dev -o requirements/dev.txt pyproject.toml
	pip-compile -q --generate-hashes --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
	  --strip-extras --allow-unsafe -o requirements/app.txt pyproject.toml

bench: setup-test  ## API benchmarks (prints req/s, p50, p99)
	python bench/run.py

bench-lists: setup-test  ## list latency (p50/p99) of orders and audit events at 10k, 100k, 1M rows
	python bench/lists.py

bench-edge: setup  ## the edge's cost only: wrk on the edge host through TLS and the WAF vs straight to the active colour (the lab must be up)
	python bench/rollout.py --edge-only

bench-rollout: setup  ## 20 deploys under load through the lab's edge (the lab must be up)
	python bench/rollout.py

bench-autoscale: setup  ## a stepped login load (low, high, low) through the lab's edge: replicas over time, time to scale up and down, req/s and p99 per step, failed requests (the lab must be up)
	python bench/autoscale.py

bench-backup: setup  ## 1 GB database: full backup and restore time per repository, RPO under a trickle (the lab must be up)
	python bench/backup.py $(BENCH_ARGS)

# The lab by default; any Patroni cluster's inventory with BENCH_INVENTORY=...
BENCH_INVENTORY ?= $(LAB_INVENTORY)
bench-failover-drill: setup  ## 10 PostgreSQL primary kills per mode (sync, async) via failover-drill.yml: failover median/max, lost writes
	python bench/failover_drill.py --inventory $(BENCH_INVENTORY) $(BENCH_ARGS)

bench-failover: setup  ## faults of the lab's data tier under 4 order clients through the edge: longest client wait, failed requests, lost/doubled orders
	python bench/failover.py $(BENCH_ARGS)
