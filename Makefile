# The two commands in the README, and the pieces they are made of.
.PHONY: demo test setup lint build check-install bump

demo:           ## run every package's quickstart and print one summary table
	tools/demo.sh

test:           ## set up if needed, then lint, isolated installs, unit + integration tests
	tools/test.sh

setup:
	tools/setup.sh

lint: setup
	tools/lint.sh

build: setup
	tools/build.sh

check-install: build
	.venv/bin/python tools/check_isolated_install.py

bump:           ## make bump PKG=packages/token-rate PART=minor MSG="..."
	tools/bump_version.sh $(PKG) $(PART) "$(MSG)"
