# The README's two commands: `make repro` (the whole study) and `make test` (pytest + nbval).
# Both install into the project's own venv, $(VENV) (made from $(BASE_PYTHON) when missing), exactly as
# requirements.lock pins it; every recipe below runs that venv's python, dvc and pytest (its bin/ is first on
# PATH). To use another environment (a conda env, say): `make test VENV=$$CONDA_PREFIX`.
BASE_PYTHON ?= python3
VENV ?= .venv
export PATH := $(abspath $(VENV))/bin:$(PATH)
PYTHON := $(abspath $(VENV))/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export TQDM_DISABLE ?= 1
export MPLBACKEND ?= Agg
# nbval's reference outputs come from 2 intra-op threads (CI's 2 cores): a CPU reduction split over another
# number of threads can round differently, so the smoke runs use 2 on any machine.
NB_THREADS := OMP_NUM_THREADS=2
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg
# `make lock`'s tool, in a venv of its own (pip-tools resolves with pip's own resolver, the one `pip install`
# uses); PIP_CONFIG_FILE=/dev/null: the lock is resolved and hashed from PyPI alone, whatever pip.conf adds.
PIP_TOOLS := pip-tools==7.7.0
LOCK_VENV := .venv-lock
PIN_FLAGS := --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links

.PHONY: install lock browser data repro test notebooks lab

$(PYTHON):
	$(BASE_PYTHON) -m venv $(VENV)

# --require-hashes: every file pip fetches must have one of the lock's sha256s; --no-deps: the lock is the
# whole environment (imagecorruptions and torchattacks are in it without their dependencies, pyproject.toml
# says why); --no-build-isolation: the project is built with the lock's setuptools, not a fresh download.
# The Python/machine check before pip is check-env's first check (varmix.pipeline.envlock), done by hand: check-env
# needs the installed packages, and pip on another Python would first spend minutes installing the lock.
# A disk too small for the lock stops here, in one line, before pip unpacks gigabytes and dies with ENOSPC.
INSTALL_NEEDS_GIB := 8
install: $(PYTHON)  ## system data package + the locked environment + the project + the python3 Jupyter kernel
	@[ -d /usr/share/datasets/fashion-mnist ] || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }
	@$(PYTHON) -c 'import platform, sys; sys.exit(sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64")' || { \
		echo "error: $(VENV) runs Python $$($(PYTHON) -c 'import platform; print(platform.python_version(), "on", platform.machine())'); requirements.lock is for CPython 3.11 on x86-64 Linux: remove $(VENV) and run again with BASE_PYTHON=python3.11" >&2; exit 2; }
	@$(PYTHON) -c 'import torch' 2>/dev/null || $(PYTHON) -c 'import shutil, sys; free = shutil.disk_usage(sys.prefix).free; sys.exit(free < $(INSTALL_NEEDS_GIB) * 2**30 and print(f"error: {free / 2**30:.1f} GiB free under {sys.prefix}; the locked environment needs about $(INSTALL_NEEDS_GIB) GiB (PyPI'"'"'s x86-64 torch is a CUDA build, ~6.5 GiB installed): free some space and run again", file=sys.stderr) is None)'
	$(PYTHON) -m pip install -q --require-hashes --no-deps -r requirements.lock
	$(PYTHON) -m pip install -q --no-deps --no-build-isolation -e .
	$(PYTHON) -m varmix check-env
	$(PYTHON) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null

# Refreshing the lock is a deliberate act: it can change committed bytes (the site's pages, the executed
# notebooks, numbers), which are then regenerated (`dvc repro`, `make notebooks`) and committed with it.
lock:  ## re-resolve requirements.lock from pyproject.toml (+ requirements/pins.txt, requirements/nodeps.txt)
	[ -x $(LOCK_VENV)/bin/pip-compile ] || { $(BASE_PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q "$(PIP_TOOLS)"; }
	PIP_CONFIG_FILE=/dev/null $(LOCK_VENV)/bin/pip-compile -q $(PIN_FLAGS) --extra test \
		-c requirements/pins.txt -o requirements.lock pyproject.toml
	rm -rf $(LOCK_VENV)/nodeps && PIP_CONFIG_FILE=/dev/null $(LOCK_VENV)/bin/pip download -q --no-deps \
		--only-binary=:all: -d $(LOCK_VENV)/nodeps -r requirements/nodeps.txt
	{ echo "# installed without their dependencies: requirements/nodeps.txt"; for w in $(LOCK_VENV)/nodeps/*.whl; do \
		n=$$(basename $$w); echo "$$(echo $$n | cut -d- -f1)==$$(echo $$n | cut -d- -f2) \\"; \
		echo "    --hash=sha256:$$(sha256sum $$w | cut -d' ' -f1)"; echo "    # via -r requirements/nodeps.txt"; \
		done; } >> requirements.lock

# verify-data compares data/ with data.dvc's hash without writing; only data that matches is then stored in
# the DVC cache (`dvc commit` of identical bytes rewrites data.dvc unchanged), for `dvc push`/`dvc checkout`.
data: install  ## validate params.yaml, prepare the data and check it against the hash data.dvc pins
	$(PYTHON) -m varmix check-params
	$(PYTHON) -m varmix prepare-data
	$(PYTHON) -m varmix verify-data
	dvc commit -f -q data.dvc

repro: data  ## regenerate every result
	dvc repro

# The browser tests (tests/test_site_browser.py) drive Debian's chromium through Playwright, which downloads no
# browser of its own; when chromium cannot be installed they are skipped, and pytest says why.
browser:  ## Debian's chromium for the browser tests
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium could not be installed: the browser tests (tests/test_site_browser.py) will be skipped"

test: install browser  ## library tests, then nbval: re-execute notebooks/ (smoke) and compare with their stored outputs
	$(PYTHON) -m varmix prepare-data
	$(NB_THREADS) VARMIX_WORKDIR=$$(mktemp -d) $(PYTHON) -m pytest -q -p no:cacheprovider tests notebooks $(NBVAL)

notebooks:  ## after a change that alters results: re-execute notebooks/ in place (nbval's reference outputs)
	$(NB_THREADS) $(PYTHON) -m varmix refresh-notebooks

# Interactive runs write into scratch/ (git- and dvc-ignored), never into the pipeline's results/ or runs/:
# the kernels JupyterLab starts inherit VARMIX_WORKDIR, which varmix.pipeline.session.start routes every output to.
LAB_PORT ?= 8888
lab: install  ## JupyterLab on the project with the varmix kernel; notebooks write into scratch/
	$(PYTHON) -m varmix prepare-data
	mkdir -p scratch
	VARMIX_WORKDIR=$(CURDIR)/scratch $(PYTHON) -m jupyterlab --ServerApp.root_dir=$(CURDIR) --port=$(LAB_PORT) $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/01_vae.ipynb
