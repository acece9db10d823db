# celeryd: every entry point a developer or CI needs.  All recipes run as root
# on a fresh Debian 12 machine and install what they need themselves.
PYTHON := /usr/bin/python3
PYTEST := $(PYTHON) -m pytest
# Tests run on Debian's python3, the one the packages run on (facts.md).
export PATH := /usr/sbin:/usr/bin:/sbin:/bin:$(PATH)
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends

RUNTIME_DEPS := python3-celery python3-kombu python3-amqp python3-sdnotify python3-yaml \
	python3-prometheus-client python3-systemd python3-redis
TEST_DEPS := python3-pytest python3-hypothesis rabbitmq-server redis-server util-linux time
BUILD_DEPS := debhelper dh-python python3-all python3-setuptools python3-stdeb \
	lintian fakeroot dpkg-dev build-essential
SYSTEM_DEPS := debootstrap systemd-container iproute2 qemu-system-x86 e2fsprogs

.PHONY: all deps test unit integration deb lint system demo bench clean

all: test

# rabbitmq-server and redis-server are installed without starting the host's services:
# the tests start their own private ones (policy-rc.d answers 101 for the install only).
deps:
	@missing=$$(for p in $(RUNTIME_DEPS) $(TEST_DEPS) $(BUILD_DEPS) $(SYSTEM_DEPS); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null; \
		had_policy=1; [ -e /usr/sbin/policy-rc.d ] || { had_policy=0; printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }; \
		$(APT_INSTALL) $$missing; rc=$$?; \
		[ $$had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi

unit: deps
	$(PYTEST) -q tests/unit

integration: deps
	$(PYTEST) -q tests/integration

# Everything, in one pytest run: unit, integration (a private RabbitMQ), and the system
# tests in booted Debian 13 and 12 containers, on the .debs built and linted just before.
test: deps
	$(MAKE) --no-print-directory deb lint
	CELERYD_DEBS_PREBUILT=1 $(PYTEST) -q -p no:cacheprovider --durations=30 tests

# Booted Debian 13 and 12 containers (tests/system/harness.py); rootfs cached in /var/cache/celeryd-test.
system: deps
	$(PYTEST) -q tests/system

# Install the debs as a user would (on the host if systemd is PID 1, else in a container) and add 4 4.
demo: deps deb
	$(PYTHON) -m tests.system.demo

# Speed against stock Celery measured in the same run; the table lands in build/bench.md.
bench: deps
	$(PYTHON) tests/bench/bench.py

clean:
	rm -rf build dist deb_dist .pytest_cache *.egg-info

# conf/celeryd.yaml, README.md's key table and celeryd-admin(8)'s CONFIGURATION section are
# generated from celeryd_pkg/schema.py; tests/unit/test_docgen.py fails when a copy drifts.
.PHONY: docs
docs:
	$(PYTHON) -m celeryd_pkg.docgen --write

# --- Debian packages (issue 4) -------------------------------------------
# deb: build the three binary packages from a copy of the tree (tracked and
# untracked-but-not-ignored files) in build/src, so neither the tree nor its
# parent gets build products; the .debs, .changes and .buildinfo land in
# build/debs.  lint: lintian on exactly those.  stdeb: the stdeb route, which
# builds python3-celeryd-pkg alone from setup.cfg [sdist_dsc], in build/stdeb.
DEB_VERSION := $(shell sed -n '1s/.*(\(.*\)).*/\1/p' debian/changelog)
DEB_SRC := build/src/celeryd-$(DEB_VERSION)

.PHONY: stdeb

deb: deps
	rm -rf build/src build/debs
	mkdir -p $(DEB_SRC) build/debs
	git ls-files -z -co --exclude-standard | \
		tar --null --no-recursion --ignore-failed-read -T - -cf - | tar -xf - -C $(DEB_SRC)
	cd $(DEB_SRC) && dpkg-buildpackage -us -uc -b
	mv build/src/*.deb build/src/*.changes build/src/*.buildinfo build/debs/
	ls -l build/debs

lint: deps
	lintian --fail-on error,warning build/debs/*.changes build/debs/*.deb

stdeb: deps
	rm -rf build/stdeb
	mkdir -p build/stdeb/src
	git ls-files -z -co --exclude-standard | \
		tar --null --no-recursion --ignore-failed-read -T - -cf - | tar -xf - -C build/stdeb/src
	cd build/stdeb/src && $(PYTHON) setup.py --command-packages=stdeb.command bdist_deb
	mv build/stdeb/src/deb_dist/*.deb build/stdeb/
	ls -l build/stdeb/*.deb
