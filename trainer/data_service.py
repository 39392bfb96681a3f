r"""The tf.data service: its two servers (`python -m trainer.data_service`) and the trainer's
side, a training pipeline sent to them.

    python -m trainer.data_service --dispatcher --port=5050 [--work_dir=DIR]
    python -m trainer.data_service --worker --port=5051 --dispatcher_address=HOST:5050 \
        [--host=THIS_HOST]
    python -m trainer.task --data_service=grpc://HOST:5050 ...

The dispatcher splits each training epoch by shard file across the workers ("distributed_epoch":
every example once per epoch, in no fixed order); a worker reads, decodes, resizes, tokenises
and batches its shards and sends the batches to the trainer. Workers open the shards at the
paths the trainer names, so they must see the data dir at the same path (or bucket). A worker
that dies loses what it held, and the service waits for it to come back at its address; the
trainer gives that pass up after --data_service_timeout (`batches`). docs/data_service.md
says when to use it.
"""

from __future__ import annotations

import queue
import sys
import threading

import tensorflow as tf
from absl import app, flags

from trainer import cli, data

FLAGS = flags.FLAGS
PROCESSING_MODE = "distributed_epoch"
SERVICE = tf.data.experimental.service


@cli.command_flags
def define_flags() -> None:
    flags.DEFINE_bool("dispatcher", False, "Run the dispatcher (one per service).")
    flags.DEFINE_bool("worker", False, "Run a worker (any number; each registers itself).")
    flags.DEFINE_string(
        "dispatcher_address", "", "--worker: the dispatcher's HOST:PORT (no grpc:// prefix)."
    )
    cli.define_server_address("localhost", None)  # --worker's name; the port is required.
    flags.DEFINE_string(
        "work_dir",
        "",
        "--dispatcher: a directory (or bucket path) for its journal, so a restarted "
        "dispatcher resumes its jobs; empty: no journal.",
    )


def start_dispatcher(port: int, work_dir: str = "") -> SERVICE.DispatchServer:
    """A dispatcher on `port`, journaling to `work_dir` (fault-tolerant) if one is given."""
    config = SERVICE.DispatcherConfig(
        port=port,
        work_dir=work_dir or None,
        fault_tolerant_mode=bool(work_dir),
    )
    return SERVICE.DispatchServer(config)


def start_worker(port: int, dispatcher_address: str, host: str = "localhost"):
    """A worker on `port` that registers with the dispatcher at `dispatcher_address`."""
    config = SERVICE.WorkerConfig(
        dispatcher_address=dispatcher_address,
        worker_address=f"{host}:{port}",
        port=port,
        data_transfer_address=f"{host}:%dts_port%",
    )
    return SERVICE.WorkerServer(config)


def distribute(
    dataset: tf.data.Dataset, service: str, job_name: str, batch_size: int, drop_remainder: bool
) -> tf.data.Dataset:
    """The batches of `dataset` made by the service's workers, re-cut into `batch_size` ones.

    Each worker batches its own share of the epoch, so batches at the ends of its shards come
    short: `dataset` should keep its remainders (drop_remainder=False) and the trainer re-cuts
    them, so every example of the epoch trains, as locally. `job_name` must be new for every
    iteration: a name the dispatcher has already finished yields nothing.
    """
    dataset = dataset.apply(
        SERVICE.distribute(processing_mode=PROCESSING_MODE, service=service, job_name=job_name)
    )
    return dataset.rebatch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


class Stalled(data.DataError):
    """A pass through the service gave no batch at all: no worker is serving."""


def batches(make_pass, count: int, service: str, timeout: float, counts: dict):
    """`count` training batches from the service, `make_pass(n)` giving pass n's distributed
    dataset (each pass a new job): a pass that a lost worker ends early (losing what it held)
    is topped up from another pass. `counts` gets the epoch's batches of its first pass."""
    received, passes = 0, []
    while received < count:
        reader = BoundedReader(make_pass(len(passes)), timeout)
        passes.append(0)
        while received < count and (batch := reader.next()) is not None:
            passes[-1] += 1
            received += 1
            yield batch
        reader.close()
        if received < count:
            why = "timed out" if reader.timed_out else "ended"
            print(f"data service: the pass {why} after {passes[-1]} batches", flush=True)
        if not passes[-1]:
            raise Stalled(
                f"--data_service={service}: no batch in {timeout:g} s; are its workers running "
                "(python -m trainer.data_service --worker), and do they see --data_dir?"
            )
    extra = len(passes) - 1
    lost = f" ({count - passes[0]} lost; made up from {extra} new pass{'es' * (extra > 1)})"
    print(
        f"data service: {passes[0]} of {count} batches this epoch" + (lost if extra else ""),
        flush=True,
    )
    counts.update(data_service_batches=passes[0], expected_batches=count)


class BoundedReader:
    """The elements of an iterable, each awaited at most `timeout` seconds.

    A worker that dies mid-epoch and does not come back (at the same address) keeps its part of
    the epoch unfinished, and the service's iterator then waits for it forever; so a helper
    thread reads, and the trainer gives up on the epoch after `timeout` seconds without a batch.
    """

    def __init__(self, iterable, timeout: float):
        self.timeout = timeout
        self.timed_out = False
        self._wanted: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(iterable,), daemon=True).start()

    def _read(self, iterable) -> None:
        try:
            iterator = iter(iterable)  # Creating the job may wait for the dispatcher, too.
            while self._wanted.get():
                self._results.put(("element", next(iterator)))
        except StopIteration:
            self._results.put(("end", None))
        except Exception as error:  # Raised again in the trainer's thread.
            self._results.put(("error", error))

    def next(self):
        """The next element; None at the end, or after `timeout` seconds without one."""
        self._wanted.put(True)
        try:
            kind, value = self._results.get(timeout=self.timeout)
        except queue.Empty:
            self.timed_out = True
            return None
        if kind == "error":
            raise value
        return value if kind == "element" else None

    def close(self) -> None:
        """Let the thread end (once a pending read returns, if ever)."""
        self._wanted.put(False)


def _check_flags() -> None:
    if FLAGS.dispatcher == FLAGS.worker:
        raise app.UsageError("pass exactly one of --dispatcher and --worker")
    if FLAGS.port is None:
        raise app.UsageError("--port: required (the port this server listens on)")
    if FLAGS.worker and not FLAGS.dispatcher_address:
        raise app.UsageError("--worker needs --dispatcher_address=HOST:PORT of the dispatcher")
    if FLAGS.dispatcher_address.startswith("grpc://"):
        raise app.UsageError(
            f"--dispatcher_address={FLAGS.dispatcher_address}: drop the grpc:// prefix"
        )


def main(argv):
    del argv  # Everything comes from flags.
    cli.quiet_absl_logging()
    _check_flags()
    if FLAGS.dispatcher:
        server = start_dispatcher(FLAGS.port, FLAGS.work_dir)
        journal = f"; journal in {FLAGS.work_dir}" if FLAGS.work_dir else ""
        print(
            f"tf.data service dispatcher listening on port {FLAGS.port}{journal}: trainers pass "
            f"--data_service=grpc://HOST:{FLAGS.port}, workers --dispatcher_address=HOST:"
            f"{FLAGS.port}"
        )
    else:
        server = start_worker(FLAGS.port, FLAGS.dispatcher_address, FLAGS.host)
        print(
            f"tf.data service worker listening on port {FLAGS.port} (trainers reach it at "
            f"{FLAGS.host}:{FLAGS.port}), for the dispatcher at {FLAGS.dispatcher_address}"
        )
    sys.stdout.flush()
    server.join()  # Until the process is killed.


if __name__ == "__main__":
    define_flags()
    app.run(main)
