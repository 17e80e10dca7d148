"""A blinded two-alternative forced-choice reader study: can experts tell set A from set B, and which do they prefer?

The reference work showed radiologists 50 pairs, a diffusion image beside a GAN image, and asked which looked
more real: diffusion was preferred in 36 of 50. Three steps, one file each:

- ``make``   ``make_study(MakeConfig) -> MakeResult``: draw n cases of each set (seeded), pair them, put A on a
             random half of the lefts, render the images afresh under neutral names (pair-017-left.png, no
             metadata), and write ``OUT/study/`` (served to readers) and ``OUT/key.json`` (kept by the organiser);
- ``serve``  ``serve_study(ServeConfig)``: a local web server (``http.server``) for the page in ``page``; each
             answer is written to ``study/answers/<reader>.json`` (temp file + rename) before the page moves on;
- ``score``  ``score_study(ScoreConfig) -> ScoreResult``: per reader and pooled, how often A was chosen, with the
             exact binomial test against 0.5 and its Clopper-Pearson interval; ``report.json`` + ``report.md``.

``files`` holds the three file formats (study.json, key.json, answers) and their checks.
"""

from __future__ import annotations
