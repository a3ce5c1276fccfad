"""Ingestion of real data into scan tables (issue 3; DESIGN §3): RSNA, CQ500, a DICOM export and a NIfTI folder.

Each ingester writes ``<data root>/<dataset>/``: RAS NIfTI volumes under ``volumes/``, ``scans.csv``
(pseudonymous ids, 8:1:1 patient-level split, protocol and task columns), ``rejects.csv`` (source,
reason) and ``linkage.csv`` (the private pseudonym key table), and registers the dataset in the manifest.
Re-running resumes: volumes already written are not read again.
"""
from .cq500 import ingest_cq500
from .dicom_export import ingest_dicom
from .nifti import ingest_nifti
from .rsna import ingest_rsna

__all__ = ["ingest_rsna", "ingest_cq500", "ingest_dicom", "ingest_nifti"]
