"""The storage side of the pre-label pipeline, one module per stage: :mod:`~storage.prelabel.plan` (job, pending
work, batches, failures), :mod:`~storage.prelabel.fetch` (S3 -> cache), :mod:`~storage.prelabel.predict` (model
output -> catalog, the model injected) and :mod:`~storage.prelabel.imports` (catalog -> annotation backend). The
Prefect tasks in ``tasks/prelabel.py`` are thin boundaries around these."""
