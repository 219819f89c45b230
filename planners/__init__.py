"""nnU-Net experiment planners of nnunet-liver (import nnunetv2 lazily: see ``hu_planner``)."""
