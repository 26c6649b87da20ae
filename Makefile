# The two commands of the README:
#   make demo   set up, export a Mask R-CNN, serve it with a real Triton server, send images
#   make test   set up, run the whole test suite (what .ci/run runs)
# Python: 3.11, 3.12 or 3.10, whichever runs first, or PYTHON=... (envs/setup.sh).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Photos to send; a folder, files, or empty for generated scenes (see demo/walkthrough.py).
IMAGES ?=
# A torchvision Mask R-CNN state dict; empty: torchvision COCO weights when cached or
# quickly downloaded, else seeded random ones (demo/walkthrough.py).
CHECKPOINT ?=

.PHONY: setup demo test bench gpu-check clean FORCE
setup: $(STAMP)
# A named PYTHON always goes through envs/setup.sh, which remakes a venv of another version.
$(STAMP): requirements.txt envs/setup.sh $(if $(PYTHON),FORCE)
	envs/setup.sh

FORCE:

demo: $(STAMP)
	$(PY) -m demo $(if $(IMAGES),--images $(IMAGES)) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks.pipeline $(BENCH_ARGS)

# On a GPU machine: the CUDA tests, served device=cuda answers against references, and the
# real model's speed in fp32 and fp16 (benchmarks/gpu_check.py). Without a GPU it says so.
gpu-check: $(STAMP)
	$(PY) -m benchmarks.gpu_check $(foreach i,$(IMAGES),$(addprefix --image ,$(if \
	    $(wildcard $(i)/.),$(wildcard $(i)/*.jp*g $(i)/*.png),$(i)))) \
	    --json build/gpu-check/gpu_check.json $(GPU_CHECK_ARGS)

clean:
	rm -rf build .triton
