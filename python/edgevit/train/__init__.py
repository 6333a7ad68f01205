"""Training: fine-tuning registered segmentation models on a labelled dataset.

The entry point is :func:`edgevit.train.finetune.finetune` (also ``python -m edgevit.train.finetune``).
Nothing is re-exported here: a package attribute named like its submodule would be shadowed by the
submodule, and ``python -m`` would import the module twice.
"""
