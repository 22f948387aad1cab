"""Metrics and outputs of an evaluation: top-k accuracy, confusion matrix PNG, results.json."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

RESULTS_FILE = 'results.json'


def aggregate_views(scores: np.ndarray, labels: np.ndarray, index: np.ndarray):
  """Average the class scores of the views of each record (multi-view testing).

  Args:
    scores: float [N, C] per view; labels: int [N]; index: int [N] record index.

  Returns:
    (scores float [R, C], labels int [R]) per distinct record, in index order.
  """
  records, inverse = np.unique(index, return_inverse=True)
  summed = np.zeros((records.shape[0], scores.shape[1]), np.float64)
  np.add.at(summed, inverse, scores)
  counts = np.bincount(inverse, minlength=records.shape[0])[:, None]
  record_labels = np.zeros(records.shape[0], labels.dtype)
  record_labels[inverse] = labels
  return (summed / counts).astype(np.float32), record_labels


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Percent of rows whose label is among the ``k`` highest scores (k clipped to C).

  Ties count against the label: a label is in the top k only if fewer than
  k classes score strictly higher and it wins ties with lower class ids.
  """
  k = min(k, scores.shape[1])
  top = np.argsort(-scores, axis=1, kind='stable')[:, :k]
  return float(100.0 * np.mean(np.any(top == labels[:, None], axis=1)))


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """int64 [C, C]: row = true class, column = predicted class."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, predictions), 1)
  return cm


def save_confusion_png(path: str, cm: np.ndarray, class_names: Sequence[str], title: str) -> str:
  """Row-normalised confusion matrix (recall per true class) as a PNG; counts in cells when small."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  c = cm.shape[0]
  rows = cm.sum(axis=1, keepdims=True)
  recall = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
  size = min(4.0 + 0.35 * c, 24.0)
  fig = Figure(figsize=(size + 1.5, size))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  image = ax.imshow(recall, cmap='Blues', vmin=0.0, vmax=1.0, interpolation='nearest')
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label='fraction of the true class')
  if c <= 50:
    ax.set_xticks(range(c), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(c), class_names, fontsize=8)
  if c <= 20:
    for i in range(c):
      for j in range(c):
        if cm[i, j]:
          colour = 'white' if recall[i, j] > 0.5 else 'black'
          ax.text(j, i, str(cm[i, j]), ha='center', va='center', color=colour, fontsize=8)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path, dpi=100)
  return path


def classification_metrics(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
  """top1 / top5 (percent; top-5 clipped to C), counts and the confusion matrix."""
  predictions = np.argmax(scores, axis=1)
  return {
    'top1': topk_accuracy(scores, labels, 1),
    'top5': topk_accuracy(scores, labels, 5),
    'top5_k': min(5, num_classes),
    'num_test': int(labels.shape[0]),
    'confusion': confusion_matrix(predictions, labels, num_classes),
  }


def publish(workdir: str, name: str, results: dict, class_names: Sequence[str], title: str) -> dict:
  """The end of a frozen-encoder evaluation: on process 0, ``results['confusion']`` drawn to
  ``workdir/results['confusion_png']`` with ``title`` and ``results`` stored under ``name`` in
  ``results.json``; on every process ``results['summary']`` logged. Returns ``results``."""
  import jax
  from absl import logging

  if jax.process_index() == 0:
    save_confusion_png(
      os.path.join(workdir, results['confusion_png']), results['confusion'], class_names, title
    )
    write_results(workdir, name, results)
  logging.info('%s', results['summary'])
  return results


def write_results(workdir: str, name: str, results: dict) -> str:
  """Store ``results`` under key ``name`` of ``workdir/results.json`` (other
  evaluators' entries in the file are kept)."""
  path = os.path.join(workdir, RESULTS_FILE)
  everything = {}
  if os.path.exists(path):
    with open(path) as f:
      everything = json.load(f)
  everything[name] = results
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(everything, f, indent=2, default=_jsonable)
  os.replace(tmp, path)
  return path


def _jsonable(value):
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, tuple):
    return list(value)
  raise TypeError(f'not JSON serialisable: {type(value)}')
