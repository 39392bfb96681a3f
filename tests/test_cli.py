"""Shared flags: defined once, one default each, the same flag for every command that adopts it."""

from absl import flags

from trainer import cli, decoding


def test_definers_return_the_one_flag_however_often_called():
    first_beam, first_alpha = cli.define_decoding()
    again_beam, again_alpha = cli.define_decoding()
    assert first_beam is again_beam and first_alpha is again_alpha
    assert cli.define_job_dir() is cli.define_job_dir()


def test_defaults_are_the_library_defaults():
    beam, alpha = cli.define_decoding()
    assert beam.default == decoding.BEAM_SIZE and alpha.default == decoding.LENGTH_ALPHA
    assert flags.FLAGS["job_dir"].default == cli.DEFAULT_JOB_DIR


def test_commands_agree_on_the_decoding_defaults():
    import inspect

    from serving import export
    from trainer import evaluate

    for function in (evaluate.evaluate, export.export, decoding.caption):
        parameters = inspect.signature(function).parameters
        assert parameters["beam_size"].default == decoding.BEAM_SIZE, function.__name__
        assert parameters["length_alpha"].default == decoding.LENGTH_ALPHA, function.__name__
