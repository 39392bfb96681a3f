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
# trained from scratch on 10,000 sample scenes of another seed than the demo's (seed 1 vs 0).
ENCODER_OUT := encoder_out
ENCODER_FILE := trainer/weights/efficientnetb0_shapes64.weights.h5
encoder: $(STAMP)
	$(PY) -m preprocess.sample_data --output_dir=$(ENCODER_OUT)/sample --num_images=10000 --seed=1
	$(PY) -m preprocess.run --runner=DirectRunner --images_dir=$(ENCODER_OUT)/sample/flickr30k_images \
		--captions_file=$(ENCODER_OUT)/sample/results.csv --output_dir=$(ENCODER_OUT)/tfrecords \
		--image_size=64 --captions=all --overwrite
	# 11 epochs at a constant 2e-3, then resumed to 24 epochs on a cosine decay from 1e-3.
	$(PY) -m trainer.task --data_dir=$(ENCODER_OUT)/tfrecords --job_dir=$(ENCODER_OUT)/job \
		--encoder_weights=none --train_encoder --image_size=64 --batch_size=64 \
		--caption_sampling=random --beam_size=1 --noevaluate --learning_rate=2e-3 --epochs=11
	$(PY) -m trainer.task --data_dir=$(ENCODER_OUT)/tfrecords --job_dir=$(ENCODER_OUT)/job \
		--encoder_weights=none --train_encoder --image_size=64 --batch_size=64 \
		--caption_sampling=random --beam_size=1 --learning_rate=1e-3 --lr_schedule=cosine \
		--epochs=24
	$(PY) -m serving.export --job_dir=$(ENCODER_OUT)/job --export_dir=$(ENCODER_OUT)/exports \
		--encoder_file=$(ENCODER_FILE)

bench: $(STAMP)
	for bench in bench/*.py; do $(PY) $$bench || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info
