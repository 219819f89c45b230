"""``nnunet-liver predict``: liver and tumour segmentation of a CT with nnU-Net's predictor, lesion measurements,
malignancy probabilities from the lesion classifier, and a findings report (see ``pipeline.py``)."""
