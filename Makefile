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
export ZAPORA_BASE_IMAGE = $(shell images/base/build.sh --ref)

ROLES_WITH_SCENARIOS = $(sort $(patsubst roles/%/molecule/default/molecule.yml,%,$(wildcard roles/*/molecule/default/molecule.yml)))
PLAYBOOKS = $(wildcard playbooks/*.yml)
LAB_INVENTORY := inventory/lab

.PHONY: help setup image lab lab-up lab-down lab-status lint test test-app test-roles \
        test-role test-e2e lock bench clean

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup:  ## install what the controller lacks (Docker engine, debootstrap, .venv); idempotent
	@scripts/setup.sh

image: setup  ## build the Debian 13 systemd base image if its recipe changed
	@images/base/build.sh >/dev/null
	@echo ">> base image $(ZAPORA_BASE_IMAGE)"

lab: image  ## bring the whole appliance up on the local lab and print its URLs
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab-up.yml
	ansible-playbook -i $(LAB_INVENTORY) playbooks/site.yml
	@ansible-playbook -i $(LAB_INVENTORY) playbooks/lab-status.yml

lab-up: image  ## start the lab's hosts only (no site.yml)
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab-up.yml

lab-down: setup  ## remove every container, network and volume the lab made
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab-down.yml

lab-status: setup  ## show the lab's hosts and URLs
	@ansible-playbook -i $(LAB_INVENTORY) playbooks/lab-status.yml

lint: setup  ## ruff, mypy (strict, app/), yamllint, ansible-lint, syntax-check of every playbook
	ruff check app tests bench
	ruff format --check app tests bench
	mypy
	yamllint -s .
	ansible-lint
	for pb in $(PLAYBOOKS); do ansible-playbook -i $(LAB_INVENTORY) --syntax-check "$$pb" >/dev/null || exit 1; done
	@echo ">> syntax-check ok: $(words $(PLAYBOOKS)) playbooks"

test-app: setup  ## the API's tests against real PostgreSQL and Redis
	pytest tests/app

test-role: image  ## molecule test for one role: make test-role ROLE=name
	@test -n "$(ROLE)" || { echo "usage: make test-role ROLE=<name>; roles with scenarios: $(ROLES_WITH_SCENARIOS)"; exit 2; }
	cd roles/$(ROLE) && molecule test

test-roles: image  ## molecule test for every role with a scenario
	@for r in $(ROLES_WITH_SCENARIOS); do \
	  echo ">> molecule: $$r"; start=$$(date +%s); \
	  (cd roles/$$r && molecule test) || exit 1; \
	  echo ">> molecule: $$r passed in $$(( $$(date +%s) - start )) s"; \
	done

test-e2e: lab  ## the end-to-end suite against the running lab
	pytest -m e2e tests/e2e

test: lint test-app test-roles test-e2e  ## every test: lint, app, molecule, end-to-end

lock:  ## regenerate requirements/*.txt (pins and hashes, no index URLs) from pyproject.toml
	pip-compile -q --generate-hashes --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
	  --strip-extras --allow-unsafe --extra dev -o requirements/dev.txt pyproject.toml
	pip-compile -q --generate-hashes --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
	  --strip-extras --allow-unsafe -o requirements/app.txt pyproject.toml

bench: setup  ## API benchmarks (prints req/s, p50, p99)
	python bench/run.py
