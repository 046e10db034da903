# `make demo` / `make test`: each sets up on first use a virtual environment with the project and its test
# extras (pip takes the pinned CPU torch from the machine's find-links), and reinstalls when pyproject.toml
# is newer than the install stamp. Extra pytest arguments: make test ARGS="-m 'not slow'".
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test

demo: $(STAMP)
	$(VENV)/bin/influcoder demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(ARGS)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e ".[test,ray]"
	touch $@
