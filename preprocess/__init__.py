"""Stage 1: Flickr30k images and captions → sharded TFRecords, vocab.txt, manifest.json."""

from preprocess import quiet

quiet.beam()
