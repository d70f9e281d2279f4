"""quant.cache: calibration caches.

- :mod:`quant.cache.trt` (pure): TensorRT's text cache: header versions, writer, strict parser.
- :mod:`quant.cache.ort` (pure): ONNX Runtime's calibration.json / .flatbuffers / .cache.
- :mod:`quant.cache.detect` (pure): format detection by content, ``parse_cache_bytes``.
- :mod:`quant.cache.io`: ``write_cache`` (cache + ``<cache>.json`` sidecar), ``read_cache``,
  ``check_cache_against_model``.
- :mod:`quant.cache.inspect` (pure): tables and summaries for ``quant cache inspect``.

Nothing is imported here so that ``import quant.cache.trt`` stays minimal.
"""
