"""Stage 3: the signatured SavedModel for TF Serving, and captioning from it."""

from preprocess import quiet

quiet.tensorflow()
