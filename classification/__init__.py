"""Benign/malignant lesion classification on lesion-centred crops of nnU-Net's preprocessed data.

Modules (import what you need; nothing heavy is imported here):

- ``lesions``: the lesion table (CSV) and its join with the 3D tumour components of the preprocessed
  segmentations (every mismatch reported);
- ``crops``: lesion-centred cubes in mm with raw HU and the lesion mask, cached on disk with freshness checks;
- ``splits``: patient-level, class-stratified cross-validation folds with a validation part for early stopping;
- ``presets``: ``cpu`` and ``default`` training configurations;
- ``training``: the hybrid 3D network (and its no-attention ablation) and the ResNet-50/DenseNet-121 slice
  baselines: training with early stopping on validation AUC, resumable checkpoints, prediction;
- ``evaluation``: Table 2, ROC and metric figures, paired tests against the hybrid network, attention figure.

The command line is ``nnunet-liver classify extract|train|evaluate|predict``.
"""
