"""One module per data kind, each a part of :class:`~anomaly.detectors.AutoencoderDetector`.

Every kind does the same four things its own way: prepare training data (validate, set bad rows
aside, split, fit its preprocessing on the training part only), prepare a scoring batch (series
carry context from batch to batch), fold element errors into one score per input row with
per-feature or per-pixel errors, and name the fitted state it saves. What they share (seeding,
building, training, calibrating, the member average of an ensemble) lives in
:mod:`anomaly.kinds.base`, so a fourth kind is a new module here and a branch in the façade.
"""
