"""TF Serving's files: the batching parameters parse as its proto, models.config lists every
exported model, versions count up."""

import os

import pytest

from serving import tf_serving


def batching_parameters_class():
    """TF Serving's BatchingParameters (session_bundle_config.proto), built from its field names
    and types; the tensorflow-serving-api wheel does not ship it."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="batching_test.proto",
        package="tensorflow.serving",
        dependency=["google/protobuf/wrappers.proto"],
        syntax="proto3",
    )
    message = file_proto.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    wrapped = {
        "max_batch_size": (1, ".google.protobuf.Int64Value"),
        "batch_timeout_micros": (2, ".google.protobuf.Int64Value"),
        "max_enqueued_batches": (3, ".google.protobuf.Int64Value"),
        "num_batch_threads": (4, ".google.protobuf.Int64Value"),
        "thread_pool_name": (5, ".google.protobuf.StringValue"),
        "pad_variable_length_inputs": (7, ".google.protobuf.BoolValue"),
    }
    for name, (number, type_name) in wrapped.items():
        message.field.add(
            name=name,
            number=number,
            type=field.TYPE_MESSAGE,
            type_name=type_name,
            label=field.LABEL_OPTIONAL,
        )
    message.field.add(
        name="allowed_batch_sizes", number=6, type=field.TYPE_INT64, label=field.LABEL_REPEATED
    )
    pool.Add(file_proto)
    descriptor = pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    return message_factory.GetMessageClass(descriptor)


def test_batching_parameters_are_tf_servings_text_format(tmp_path):
    from google.protobuf import text_format

    path = tf_serving.write_batching_parameters(str(tmp_path))
    parameters = text_format.Parse(open(path).read(), batching_parameters_class()())
    assert parameters.max_batch_size.value == tf_serving.BATCHING["max_batch_size"]
    assert parameters.num_batch_threads.value >= 1 and parameters.batch_timeout_micros.value > 0
    sizes = list(parameters.allowed_batch_sizes)
    assert sizes == sorted(sizes) and sizes[-1] == parameters.max_batch_size.value
    with pytest.raises(text_format.ParseError):  # Unknown fields fail: the check is real.
        text_format.Parse("max_batch_size: 32\n", batching_parameters_class()())


def test_models_config_lists_each_model_with_a_version_and_versions_count_up(tmp_path):
    for version_dir in ("captioner/1", "captioner/2", "other/1", "empty"):
        os.makedirs(tmp_path / version_dir)
    assert tf_serving.next_version(str(tmp_path / "captioner")) == 3
    assert tf_serving.next_version(str(tmp_path / "missing")) == 1
    config = open(tf_serving.write_models_config(str(tmp_path))).read()
    assert 'name: "captioner"' in config and 'base_path: "/models/other"' in config
    assert '"empty"' not in config  # No version: nothing for TF Serving to load.
    assert config.count("config {") == 2
