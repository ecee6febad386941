"""Other frameworks' checkpoints in and out: Hugging Face BERTs, torchvision and timm ResNets.

- `tensors`: reading and writing flat name -> array files (safetensors without PyTorch; the
  pickled `.bin`/`.pth` of PyTorch with it), and `InteropError`, the one-line error of a
  file or directory that cannot be converted.
- `bert_hf`: a Hugging Face BERT directory <-> `gwtn_jax.models.Bert` variables.
- `resnet_torch`: a torchvision/timm ResNet state dict <-> `gwtn_jax.models.ResNet` variables.
- `teachers`: what a `teacher_dir` (or `thin_init`) holds, its architecture checked against
  the config's network, and its variables loaded into the mesh.

The converters work on numpy arrays and nested dicts only; nothing here trains.
"""
