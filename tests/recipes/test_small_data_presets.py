"""The `small_data` presets (pre-training on a tools.make_eval_set set) are valid configs, and
the fine-tuning one reads the same set's digit labels."""

import importlib

import pytest

from mvm_jax import config as config_lib
from mvm_jax.evaluate import evaluators


def _preset(name: str, preset: str = 'small_data'):
  return importlib.import_module(f'configs.{name}').get_config(preset)


@pytest.mark.parametrize('name', ['mae_st', 'hpm', 'vic_mae', 'mae_hpm_infonce', 'vqvae', 'vimpac'])
def test_pretraining_presets_validate_and_read_the_eval_set(name):
  c = _preset(name)
  config_lib.validate(c)
  assert c.data.crop_size == 64
  if name != 'vimpac':  # VIMPAC reads its tokenizer's tokens of the same clips
    assert c.data.source == 'csv' and c.data.path == 'runs/eval_set/appearance/{split}.csv'


def test_the_mae_family_is_scored_by_knn_ridge_and_attentive_probes_on_both_label_families():
  c = _preset('mae_st')
  kinds = {name: section.kind for name, section in c.evaluators.items()}
  for family in ('appearance', 'motion'):
    assert {kinds[f'{k}_{family}'] for k in ('knn', 'probe', 'attentive')} == {
      'knn',
      'linear_probe',
      'attentive_probe',
    }
  evaluators.validate(c)


def test_the_finetuning_preset_reads_the_digit_labels_without_evaluators():
  from mvm_jax.evaluate import finetune

  c = _preset('finetune')
  finetune.validate(c)
  assert c.data.class_names_file == 'runs/eval_set/appearance/class_names.txt'
  assert len(c.evaluators) == 0 and not c.data.hflip
