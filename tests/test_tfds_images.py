"""Any tfds image classification dataset by name: builders written here, prepared as
array_record without TensorFlow, read with no code of theirs in the loader."""

import json
import os

import numpy as np
import PIL.Image
import pytest

from conftest import take
from conftest import tiny_config
from gwtn_jax import builders
from gwtn_jax import config_lib
from gwtn_jax import pipeline
from gwtn_jax.config import schema
from gwtn_jax.data import datasets
from gwtn_jax.data.images import build_image_data
from gwtn_jax.data.images import check_data_config
from gwtn_jax.data.images import tfds_image_info

tfds = pytest.importorskip('tensorflow_datasets')

FIXED, VARYING = 'gwtn_tiny_shapes', 'gwtn_tiny_photos'


def _image(rng, h, w):
  return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  """Two datasets: 12x12 RGB images of 3 classes (train, test), and RGB photos of varying
  sizes under other feature names (train, validation)."""
  rng = np.random.default_rng(0)
  fixed = {split: [(_image(rng, 12, 12), i % 3) for i in range(n)]
           for split, n in (('train', 24), ('test', 6))}
  varying = {split: [(_image(rng, 10 + 2 * i, 16 - i), i % 4) for i in range(n)]
             for split, n in (('train', 8), ('validation', 4))}

  class GwtnTinyShapes(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(12, 12, 3)),
          'label': tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {s: ((f'{s}{i}', {'image': PIL.Image.fromarray(x), 'label': y})
                  for i, (x, y) in enumerate(ex)) for s, ex in fixed.items()}

    def _generate_examples(self):
      raise NotImplementedError

  class GwtnTinyPhotos(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'picture': tfds.features.Image(shape=(None, None, 3)),
          'kind': tfds.features.ClassLabel(num_classes=4),
          'caption': tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {s: ((f'{s}{i}', {'picture': PIL.Image.fromarray(x), 'kind': y,
                               'caption': f'photo {i}'})
                  for i, (x, y) in enumerate(ex)) for s, ex in varying.items()}

    def _generate_examples(self):
      raise NotImplementedError

  assert (GwtnTinyShapes.name, GwtnTinyPhotos.name) == (FIXED, VARYING)
  data_dir = str(tmp_path_factory.mktemp('tfds_images'))
  for cls in (GwtnTinyShapes, GwtnTinyPhotos):
    cls(data_dir=data_dir, file_format='array_record').download_and_prepare()
  return data_dir, fixed


def _config(name, data_dir, **fields):
  config = schema.base_config().data
  config.update(dict(name=name, dir=data_dir, read_threads=1, prefetch=2, **fields))
  return config


def test_a_dataset_of_one_shape_is_read_as_stored(tfds_dir):
  data_dir, examples = tfds_dir
  config = _config(FIXED, data_dir, stats='cifar10')
  check_data_config(config)
  data = build_image_data(config)
  info = data.info
  assert (info.num_classes, info.image_shape, info.num_train, info.num_eval) == (3, (12, 12, 3),
                                                                                  24, 6)
  (batch,) = list(data.eval_batches(global_batch_size=6))  # eval_split '': its 'test'
  mean, std = (np.array(v) for v in datasets.STATS['cifar10'])
  pixels = np.round(batch['image'] * std + mean).astype(np.uint8)
  written = {x.tobytes(): y for x, y in examples['test']}
  assert [written[p.tobytes()] for p in pixels] == batch['label'].tolist()
  # Training augments (pad-crop-flip, 12 // 8 = 1 px) and stays resumable.
  full = take(data.train_batches(global_batch_size=8, seed=3), 3)
  assert full[0]['image'].shape == (8, 12, 12, 3)
  again = take(data.train_batches(global_batch_size=8, seed=3, start_step=1), 2)
  np.testing.assert_array_equal(again[0]['image'], full[1]['image'])
  # Its own statistics, from the config.
  own = build_image_data(_config(FIXED, data_dir, mean=(100.0, 110.0, 120.0),
                                 std=(50.0, 60.0, 70.0)))
  (batch,) = list(own.eval_batches(global_batch_size=6))
  pixels = np.round(batch['image'] * np.array([50.0, 60.0, 70.0]) + [100.0, 110.0, 120.0])
  assert [written[p.astype(np.uint8).tobytes()] for p in pixels] == batch['label'].tolist()


def test_images_of_varying_sizes_are_cropped_and_features_named_in_the_config(tfds_dir):
  data_dir, _ = tfds_dir
  config = _config(VARYING, data_dir, image_key='picture', label_key='kind', image_size=8,
                   stats='imagenet')
  data = build_image_data(config)
  info = data.info
  assert (info.num_classes, info.image_shape, info.num_train, info.num_eval) == (4, (8, 8, 3),
                                                                                  8, 4)
  batches = list(data.eval_batches(global_batch_size=4))  # eval_split '': its 'validation'
  assert batches[0]['image'].shape == (4, 8, 8, 3)
  assert sorted(batches[0]['label'].tolist()) == [0, 1, 2, 3]
  (train,) = take(data.train_batches(global_batch_size=4, seed=0), 1)
  assert train['image'].shape == (4, 8, 8, 3) and np.isfinite(train['image']).all()
  # The planner's shapes come from the builder's info, without reading the data.
  shape, classes = datasets.image_shape_and_classes(config, tfds_image_info)
  assert (shape, classes) == ((8, 8, 3), 4)


@pytest.mark.parametrize('fields, match', [
    (dict(name=FIXED), r"data.name='gwtn_tiny_shapes' has no known pixel statistics: set "
                       r'data.stats \(one of imagenet, cifar10'),
    (dict(name=FIXED, stats='mnist'), r"data.stats='mnist' has 1 channels; the images of "
                                      r"data.name='gwtn_tiny_shapes' have 3"),
    (dict(name=FIXED, stats='svhn'), r"data.stats='svhn' is unknown"),
    (dict(name=FIXED, mean=(1.0, 2.0, 3.0)), r'data.mean=.* and data.std=\(\): give both'),
    (dict(name=VARYING, stats='imagenet'), r"data.image_key='image': gwtn_tiny_photos has no "
                                           r"such feature; its features are \['caption', "
                                           r"'kind', 'picture'\]"),
    (dict(name=VARYING, stats='imagenet', image_key='picture', label_key='caption'),
     r"data.label_key='caption': the feature of gwtn_tiny_photos is Text, not a ClassLabel"),
    (dict(name=VARYING, stats='imagenet', image_key='picture', label_key='kind',
          eval_split='test'), r"data.eval_split='test': gwtn_tiny_photos .* has the splits "
                              r"\['train', 'validation'\]"),
])
def test_what_does_not_fit_is_refused_in_one_line(tfds_dir, fields, match):
  data_dir, _ = tfds_dir
  with pytest.raises(ValueError, match=match):
    check_data_config(_config(data_dir=data_dir, **fields))


def test_a_run_on_a_dataset_named_in_the_config(tfds_dir, tmp_path):
  data_dir, _ = tfds_dir
  config = tiny_config(**{'data.name': FIXED, 'data.dir': data_dir, 'data.stats': 'cifar10',
                          'stages': ('wide', 'thin_scratch')})
  info = builders.static_data_info(config)
  assert (info.image_shape, info.num_classes) == ((12, 12, 3), 3)
  config_lib.validate(config, None, data=False)  # the planner's check reads the info alone
  report = pipeline.run(config, str(tmp_path))
  assert set(report) == {'wide', 'thin_scratch'}
  assert 0.0 <= report['wide']['metrics']['accuracy'] <= 1.0
  saved = json.load(open(os.path.join(tmp_path, 'config.json')))
  assert saved['data']['name'] == FIXED
