"""The shipped real-photo captioner as a SavedModel: what predict and the page use by default.

The shipped files (trainer/weights/flickr8k/, see trainer/pretrained.py) become a job dir and then
a SavedModel through the same `serving.export` as any trained job, once per set of files: the
export is kept under the user's cache (`$XDG_CACHE_HOME`, else ~/.cache) in a folder named by
the files' sha256s, so altered weights are refused, never served from a stale export.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from serving import export
from trainer import decoding, pretrained

DESCRIPTION = "the shipped Flickr8k captioner (trainer/weights/flickr8k/README.md)"


def cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "flickr-captioner")


def export_pretrained(
    export_dir: str,
    model_name: str = export.DEFAULT_MODEL_NAME,
    version: int = 0,
    beam_size: int = decoding.BEAM_SIZE,
    length_alpha: float = decoding.LENGTH_ALPHA,
    block_trigrams: bool = decoding.BLOCK_TRIGRAMS,
    directory: str = pretrained.PRETRAINED_DIR,
) -> str:
    """The shipped model → EXPORT_DIR/MODEL_NAME/VERSION, with models.config, batching
    parameters and warm-up requests, as `serving.export` writes them for a job dir."""
    with tempfile.TemporaryDirectory(prefix="pretrained_job_") as job_dir:
        pretrained.write_job_dir(job_dir, directory)
        return export.export(
            job_dir,
            export_dir,
            model_name,
            version,
            beam_size=beam_size,
            length_alpha=length_alpha,
            block_trigrams=block_trigrams,
        )


def saved_model_dir(directory: str = pretrained.PRETRAINED_DIR) -> str:
    """The shipped model's SavedModel version dir, exported on first use (then reused)."""
    model_dir = os.path.join(cache_root(), f"pretrained-{pretrained.fingerprint(directory)}")
    version_dir = os.path.join(model_dir, export.DEFAULT_MODEL_NAME, "1")
    if os.path.exists(os.path.join(version_dir, "saved_model.pb")):
        return version_dir
    print(f"exporting {DESCRIPTION} once, into {model_dir}", flush=True)
    os.makedirs(cache_root(), exist_ok=True)
    staging = tempfile.mkdtemp(prefix="pretrained-", dir=cache_root())
    try:
        export_pretrained(staging, version=1, directory=directory)
        try:
            os.rename(staging, model_dir)  # Atomic: a concurrent first use finds all or nothing.
        except OSError:
            if not os.path.exists(os.path.join(version_dir, "saved_model.pb")):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version_dir


# Real, freely licensed photos that scikit-image ships in its wheel (skimage.data): what `make
# demo` and the tests caption with the shipped model, and who or what a person would say each
# shows.
SAMPLE_PHOTOS = {"astronaut": "a woman", "coffee": "a cup", "chelsea": "a cat"}


def sample_photos(out_dir: str) -> list[str]:
    """SAMPLE_PHOTOS written as PNG files into `out_dir`; [] where scikit-image is missing."""
    try:
        from skimage import data as skimage_data
    except ImportError:
        return []
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name in SAMPLE_PHOTOS:
        path = os.path.join(out_dir, f"{name}.png")
        Image.fromarray(getattr(skimage_data, name)()).save(path)
        paths.append(path)
    return paths
