# Every target creates .venv and installs the project into it when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint format clean encoder

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,eval]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m serving.demo

test: $(STAMP)
	$(PY) -m pytest -q tests

# Rebuilds the demo's shipped encoder weights (trainer/weights/README.md): an EfficientNetB0
# pretrained from random weights on the labels of 20,000 sample scenes of another seed than the
# demo's (seed 1 vs 0): which (colour, shape) objects each image holds, their sizes and centres.
ENCODER_OUT := encoder_out
ENCODER_FILE := trainer/weights/efficientnetb0_shapes64.weights.h5
ENCODER_EPOCHS := 18
encoder: $(STAMP)
	$(PY) -m preprocess.sample_data --output_dir=$(ENCODER_OUT)/sample --num_images=20000 --seed=1
	$(PY) -m preprocess.run --runner=DirectRunner --images_dir=$(ENCODER_OUT)/sample/flickr30k_images \
		--captions_file=$(ENCODER_OUT)/sample/results.csv --output_dir=$(ENCODER_OUT)/tfrecords \
		--image_size=64 --captions=all --overwrite
	$(PY) -m trainer.pretrain --data_dir=$(ENCODER_OUT)/tfrecords \
		--scenes=$(ENCODER_OUT)/sample/scenes.json --job_dir=$(ENCODER_OUT)/pretrain \
		--image_size=64 --epochs=$(ENCODER_EPOCHS) --learning_rate=2e-3 --output=$(ENCODER_FILE)

bench: $(STAMP)
	for bench in bench/[!_]*.py; do $(PY) $$bench || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info
