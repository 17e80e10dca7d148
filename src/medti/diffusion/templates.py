"""Prompt templates a concept is trained with, per modality; textual inversion trains with them, and
samples and experiments use one of them, so they live below both."""

from __future__ import annotations

#: Prompt templates a concept is trained with; ``[1]`` is the one samples and experiments use, so it is
#: the modality's own caption prefix in the words a base was trained on (the phantom captions start
#: "axial prostate mri, ..." and "frontal chest radiograph, ..."). A word the base never saw in a caption
#: is a random direction the UNet never learned to read, and guidance against the plain caption amplifies
#: it into artefacts.
TEMPLATES: dict[str, list[str]] = {
    "prostate_mri": [
        "{}",
        "axial prostate mri, {}",
        "a t2 weighted adc dwi mri of {}",
        "an image of {}",
        "axial prostate mri of the pelvis, {}",
    ],
    "cxr": [
        "{}",
        "frontal chest radiograph, {}",
        "a chest radiograph of {}",
        "an image of {}",
        "frontal chest x-ray radiograph, {}",
    ],
    "default": ["{}", "an image of {}", "a photo of {}"],
}
