"""What images and the manifests that run them agree on: how an image is named (and which
names are acceptable), the port a version serves on inside its image, and its user.

Kept apart and light (no docker import): ``nbdeploy k8s`` and ``nbdeploy image`` both use it.
"""

from __future__ import annotations

import re

DEFAULT_REPOSITORY = "nbdeploy/{name}"  # the tag is the version: nbdeploy/churn:v3
SERVING_PORT = 3000  # where a version's image serves
IMAGE_USER = 10001  # the images' user (uid and gid)

# [registry[:port]/]path[:tag][@sha256:digest], as Docker reads image references: the first
# component is a registry only when it has a dot or a port, or is localhost.
_REFERENCE = re.compile(
    r"(?:(?:[a-zA-Z0-9-]+\.[a-zA-Z0-9.-]+|[a-zA-Z0-9.-]+:[0-9]+|localhost)/)?"
    r"[a-z0-9]+(?:[._-]{1,2}[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:[._-]{1,2}[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?"
)


def is_image_reference(value: str) -> bool:
    return len(value) <= 255 and _REFERENCE.fullmatch(value) is not None
