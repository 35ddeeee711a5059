# The README's two commands: `make repro` (the whole study) and `make test` (pytest + nbval).
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export TQDM_DISABLE ?= 1
export MPLBACKEND ?= Agg
# nbval's reference outputs come from 2 intra-op threads (CI's 2 cores): a CPU reduction split over another
# number of threads can round differently, so the smoke runs use 2 on any machine.
NB_THREADS := OMP_NUM_THREADS=2
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg

.PHONY: install browser data repro test notebooks lab

install:  ## system data package + the project with its test extra + the python3 Jupyter kernel
	@[ -d /usr/share/datasets/fashion-mnist ] || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }
	$(PYTHON) -m pip install -q -e ".[test]" && $(PYTHON) -m pip install -q --no-deps "imagecorruptions==1.1.2" "torchattacks==3.5.1"  # frost photographs; AutoAttack (pyproject.toml says why --no-deps)
	$(PYTHON) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (varmix)" >/dev/null

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
# the kernels JupyterLab starts inherit VARMIX_WORKDIR, which varmix.pipeline.start routes every output to.
LAB_PORT ?= 8888
lab: install  ## JupyterLab on the project with the varmix kernel; notebooks write into scratch/
	$(PYTHON) -m varmix prepare-data
	mkdir -p scratch
	VARMIX_WORKDIR=$(CURDIR)/scratch $(PYTHON) -m jupyterlab --ServerApp.root_dir=$(CURDIR) --port=$(LAB_PORT) $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/01_vae.ipynb
