"""The trainer's data, by role (as timm/data/ is laid out):

- `sources`: `build_data`, a config's data source as a `DataBundle` (digits, NPZ folders, custom
  code); `image_sources`: ImageFolder and CSV tables of image files;
- `datasets`: the per-file datasets (NPZ patches and masks), the bundle, per-channel normalisation;
- `packed`: a split read from its pack, a batch one gather; `packs`: finding and building packs;
- `loader`: the DataLoader the trainer iterates;
- `sampling`: targets read without decoding inputs, balanced weights, the DDP weighted sampler.

Every source yields `(input_tensor, target)` items: an int label, or an (H, W) mask of class ids.
"""
