"""Activation steering: dial self-recognition without training (issue 17).

* :mod:`selfrec_ft.steering.hooks` — forward hooks on decoder layers run by the one scoring engine:
  :class:`~selfrec_ft.steering.hooks.Intervention` (add a vector at one summary's tokens, or scale the
  component along a direction) and :class:`~selfrec_ft.steering.hooks.Recorder` (mean activations
  over each request's summaries and answer position);
* :mod:`selfrec_ft.steering.directions` — ``selfrec steer fit``: directions from the training
  articles (authorship, readout, and the length / random controls), their held-out separation, and
  ``directions.safetensors`` + ``directions.json``;
* :mod:`selfrec_ft.steering.sweep` — ``selfrec steer sweep``: one resumable evaluation per steering
  value and domain, ``steer.json``, ``runs.json`` (a sweep directory for ``selfrec analyze``), a
  plot and a markdown table.

Nothing heavy is imported here.
"""
