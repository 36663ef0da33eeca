"""modelgate's scoring service.

Public API (import from the submodules; this package imports nothing so that
``python -m app.serving`` can pin numeric threads before numpy loads):

* ``app.serving.app.create_scoring_app(model_dir, keys_file, *, max_body_bytes, loader)``
* ``app.serving.keys.generate_keys()``, ``write_keys_file(path, primary, secondary)``,
  ``KeyStore``
* ``app.serving.model.load_model(model_dir) -> ScoringModel``
* ``app.serving.fastpath.compile_pipeline(pipeline, field_names)``
* ``app.serving.validation.RecordValidator``, ``parse_body``
"""
