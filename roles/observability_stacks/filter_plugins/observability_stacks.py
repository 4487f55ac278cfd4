"""Why an image of the observability stacks cannot be used (empty string: it can)."""

from __future__ import annotations

from typing import Any


def observability_stacks_image_problem(result: dict[str, Any], images: dict[str, Any]) -> str:
    """`result` is one loop result of `docker image inspect --format {{.Id}} REF`."""
    name = result["item"]
    image = images[name]
    ref, pinned = image["ref"], image.get("id") or ""
    found = (result.get("stdout") or "").strip() if result.get("rc") == 0 else ""
    if not found:
        how = "its archive did not load it" if image.get("archive") else "no archive given"
        return f"image {ref} is not on this host ({how}; registries are not used)"
    if not pinned:
        return f"image {ref} is present as {found} but observability_stacks_images.{name}.id pins nothing"
    if found != pinned:
        return f"image {ref} is {found}, not the pinned {pinned}"
    return ""


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"observability_stacks_image_problem": observability_stacks_image_problem}
