"""The synthetic head-CT cohort: MNI152-atlas phantoms with known lesions (DESIGN §3, issue 4).

- ``atlas``: anatomical fields from the MNI152 templates in nilearn, cached per grid step;
- ``phantom``: one subject's noise-free HU volume (pose, deformation, tissue, skull, scalp);
- ``lesions``: the conditions, their masks and the labels they imply;
- ``scanner``: vendor kernels and noise, slice profile, field of view;
- ``cohort``: sites, prevalence, co-occurrence, files and ``scans.csv``;
- ``figure``: one slice per condition in brain and bone windows.
"""
from .cohort import DEFAULT_PREVALENCE, generate_cohort, plan_cohort, sample_conditions
from .dicom import write_phantom_dicom
from .lesions import CONDITIONS, HU_RANGES, LABEL_CODES, VENTRICLE_CODE
from .phantom import Phantom, SubjectParams, render, sample_subject
from .scanner import SCANNERS, acquire

__all__ = ["generate_cohort", "plan_cohort", "sample_conditions", "DEFAULT_PREVALENCE", "write_phantom_dicom",
           "CONDITIONS", "HU_RANGES", "LABEL_CODES", "VENTRICLE_CODE", "Phantom", "SubjectParams", "render",
           "sample_subject", "SCANNERS", "acquire"]
