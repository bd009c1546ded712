"""Metric writers for training: `clu.metric_writers` when it imports, else a TensorBoard scalar
writer built on the `tensorboard` package alone.

clu 0.0.12 imports TensorFlow for its TensorBoard writer (`clu/metric_writers/__init__.py`), and
TensorFlow is not a dependency of this project; the fallback writes the same event files (scalars
and hyperparameters as text), which `tensorboard --logdir` reads.

Both are imported only when a writer is made (inside the functions below): clu's writers fail to
import without TensorFlow, and `tensorboard.summary` imports TensorFlow whenever it is installed,
which costs seconds that a run with metrics disabled (every process but 0) should not pay.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping

logger = logging.getLogger(__name__)


class TensorBoardScalarWriter:
    """The subset of clu's MetricWriter interface that training uses."""

    def __init__(self, logdir: str):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        os.makedirs(logdir, exist_ok=True)
        self._writer = EventFileWriter(logdir)

    def _event(self, step: int, values: list):
        from tensorboard.compat.proto import event_pb2, summary_pb2

        summary = summary_pb2.Summary(value=values)
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        from tensorboard.compat.proto import summary_pb2

        values = [
            summary_pb2.Summary.Value(tag=name, simple_value=float(value))
            for name, value in scalars.items()
        ]
        self._event(step, values)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2

        values = []
        for name, text in texts.items():
            tensor = tensor_pb2.TensorProto(
                dtype=7,  # DT_STRING
                string_val=[text.encode()],
                tensor_shape=tensor_shape_pb2.TensorShapeProto(),
            )
            metadata = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text")
            )
            values.append(summary_pb2.Summary.Value(tag=name, tensor=tensor, metadata=metadata))
        self._event(step, values)

    def write_hparams(self, hparams: Mapping[str, object]) -> None:
        self.write_texts(0, {"hparams": json.dumps(hparams, indent=1, default=str)})

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class NullWriter:
    """Processes other than 0 write nothing."""

    def write_scalars(self, step, scalars):
        pass

    def write_texts(self, step, texts):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def make_metric_writer(logdir: str, enabled: bool = True):
    """A writer with write_scalars / write_texts / write_hparams / flush / close."""
    if not enabled:
        return NullWriter()
    try:
        from clu import metric_writers

        return metric_writers.create_default_writer(logdir, asynchronous=False)
    except ImportError:
        logger.debug("clu.metric_writers unavailable (needs TensorFlow); using the fallback")
        return TensorBoardScalarWriter(logdir)
