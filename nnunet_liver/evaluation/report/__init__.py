"""``nnunet-liver report``: the paper's tables and figures from a results manifest (``results.json``).

``build_report`` renders one self-contained HTML page, the same as markdown with PNGs, and
``report_data.json`` with every number of the tables; ``load_manifest`` validates a manifest on its own.
"""
from nnunet_liver.evaluation.report.build import OUTPUTS, ReportResult, build_report
from nnunet_liver.evaluation.report.manifest import FORMAT, MANIFEST_NAME, Manifest, ManifestError, load_manifest

__all__ = ["FORMAT", "MANIFEST_NAME", "OUTPUTS", "Manifest", "ManifestError", "ReportResult", "build_report",
           "load_manifest"]
