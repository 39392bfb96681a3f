r"""Train → evaluate → export in one process, passing the live model: `python -m serving.workflow`.

    python -m serving.workflow --recipe=demo --strategy=mirrored --cpu_devices=2 \
        --job_dir=jobs/captioner --export_dir=exports

Every flag of `python -m trainer.task` and of `python -m serving.export`. It sits in serving/
because it runs all stages: data flows one way, preprocess ← trainer ← serving.
"""

from __future__ import annotations

import json
import sys
import time

from absl import app, flags

from serving import export
from trainer import cli, data, model, task

FLAGS = flags.FLAGS


@cli.command_flags
def define_flags() -> None:
    task.define_flags()
    export.define_flags()
    flags.adopt_module_key_flags(task)
    flags.adopt_module_key_flags(export)


def main(argv):
    del argv  # Everything comes from flags.
    cli.quiet_absl_logging()
    seconds = {}
    try:
        trained = task.train_and_evaluate(seconds)
    except (data.DataError, model.EncoderWeightsError, FileNotFoundError) as error:
        sys.exit(f"serving.workflow: error: {error}")
    if trained is None:
        return  # Another worker than the chief: it has nothing to export.
    config = trained[2]
    started = time.perf_counter()
    path = export.export(
        config.job_dir,
        FLAGS.export_dir,
        FLAGS.model_name,
        FLAGS.version,
        beam_size=FLAGS.beam_size,
        encoder_file=FLAGS.encoder_file,
        length_alpha=FLAGS.length_alpha,
        restored=trained,
        block_trigrams=FLAGS.block_trigrams,
    )
    seconds["export"] = round(time.perf_counter() - started, 1)
    print(f"exported {path}", flush=True)
    print(f"stage seconds: {json.dumps(seconds)}", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
