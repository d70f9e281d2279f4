"""The pipeline stages behind :mod:`quant.api`, one module per stage (docs/DESIGN.md, "Pipeline
module map"). Each module imports only the ones below it:

``prepare`` < ``staleness`` < ``calibrate`` < ``quantize`` < ``build``, ``sensitivity`` <
``report`` < ``layers`` < ``evaluate`` < ``run``; ``tensorrt`` sits on ``report``.

Import the public functions from :mod:`quant.api`; these modules are its implementation.
"""
