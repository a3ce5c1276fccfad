"""Data: the manifest and scan tables, splits, the synthetic cohort, ingestion, the cache, datasets."""
