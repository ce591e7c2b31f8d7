"""HF <-> megatron-core conversion for every model family (one framework; `models.registry` names the families).

  mapping.py       the two-way weight mapping: rules HF tensors <-> megatron tensors, TP / expert slicing
  weights.py       HF tensors into a built model (this rank's slices only) and an unsharded model back out
  architecture.py  what a family supplies (config, mapping, builder, reference, verify inputs)
  mcore_dir.py     HF directory <-> megatron dist-checkpoint directory (its meta file, any layout)
  verify.py        logits of a converted model against transformers', failing above a tolerance
  reference.py     transformers' own model of an HF directory (native class, or trusted remote code)
  hf_files.py      config.json, safetensors shards + index, small asset files
  output_dir.py    outputs that appear only when complete
"""
