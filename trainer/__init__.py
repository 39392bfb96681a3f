"""Stage 2: the captioning model and its one distributed training loop."""

from preprocess import quiet

quiet.tensorflow()
