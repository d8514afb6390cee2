# The course's two commands are `make lab` and `make test`; both install everything first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lab test notebooks translations slides slides-offline site pdf clean

install: $(STAMP)

# One virtual environment with the course, its notebooks' and its tests' dependencies (torch ~1-2 min).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

## Open the course in JupyterLab.
lab: install
	$(BIN)/jupyter lab notebooks/01_forward_process.ipynb

## Run every test: the library's unit tests and every notebook top to bottom (nbval).
test: install
	$(BIN)/python -m pytest

## Re-execute every notebook in place (outputs are committed) and strip widget state and timings.
notebooks: install
	$(BIN)/python -m tools.execute_notebooks notebooks/*.ipynb
	$(BIN)/python -m tools.translations build

## The Chinese edition: update the catalogs locale/zh_CN/LC_MESSAGES/*.po from the English notebooks (translate what
## they list as untranslated or fuzzy, with Poedit or any PO editor), then build notebooks/zh/ and check it.
translations: install
	$(BIN)/python -m tools.translations extract
	$(BIN)/python -m tools.translations build
	$(BIN)/python -m tools.translations check

## Export every notebook to a reveal.js deck, build/slides/NN_name.slides.html (reveal.js and MathJax from CDNs),
## and the Chinese edition's to build/slides/zh/.
slides: install
	$(BIN)/python tools/slides.py --out build/slides notebooks/*.ipynb
	$(BIN)/python tools/slides.py --out build/slides/zh notebooks/zh/*.ipynb

## The same decks for a room without internet: reveal.js and MathJax fetched with npm into build/slides/vendor/.
slides-offline: install
	$(BIN)/python tools/slides.py --offline --out build/slides notebooks/*.ipynb
	$(BIN)/python tools/slides.py --offline --out build/slides/zh notebooks/zh/*.ipynb

## The course website in English and Chinese, build/site/{en,zh}/ (Sphinx with myst-nb; the notebooks' committed
## outputs, the reading map, the math notes' PDFs when `make pdf` has built them, the decks, search); open
## build/site/index.html.
site: install
	$(BIN)/python -m tools.site

## Build the derivation notes in math/ to PDF (needs latexmk and TeX Live; see math/Makefile).
pdf:
	$(MAKE) -C math pdf

clean:
	rm -rf $(VENV) build .pytest_cache
	$(MAKE) -C math clean
