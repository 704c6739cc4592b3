"""The run skeleton under fine-tuning (:mod:`t5peft.train`) and pretraining (:mod:`t5peft.pretrain`).

:mod:`.skeleton` (the named steps and the one training loop), :mod:`.step` (one training step), :mod:`.runtime`
(device, precision, compilation, seeds, the starting model), :mod:`.clock` (training time), :mod:`.state`
(checkpoints and the metrics log), :mod:`.layout` (the files of a run folder), :mod:`.settings` (what every
run's settings share; imports no torch) and :mod:`.env` (the machine a run used).

Nothing is imported here, so reading settings (``engine.settings``) stays cheap.
"""
